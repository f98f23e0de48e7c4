//! The node as a member of a Raft cluster: its settings, its Raft node on a
//! thread of its own (toplog-replication), and the transport between nodes:
//! the `toplog.raft.v1.Raft` gRPC service on the node's one port, which only
//! the `peer` role may call (the auth layer checks the caller before a byte
//! of the message is decoded), and a client per peer that batches what the
//! node sends.
//!
//! In progress (issue 21): ingest batches go through the log and every
//! member applies them to its engine; a write sent to a follower is handed
//! to the leader (`Propose`); the log is compacted behind what the engine
//! has flushed, and a member it no longer reaches gets a snapshot
//! ([`snapshot`]); the rest of the node's state does not go through the log
//! yet, and peers authenticate with the cluster secret only.

mod entry;
mod snapshot;

pub(crate) use entry::{Entry, KeyChange};

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use toplog_engine::Engine;
use toplog_proto::raft_v1::raft_client::RaftClient;
use toplog_proto::raft_v1::raft_server::Raft;
use toplog_proto::raft_v1::{
    Accepted, Messages, Proposal, Proposed, SnapshotChunk, SnapshotRequest,
};
use toplog_replication::{
    ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, Driver, LogStore,
    Message, NodeStatus, RaftNode, ReplicationError, StateMachine, Timing, decode_message,
    encode_message,
};

use snapshot::{Descriptor, SnapshotDirs};

/// The Raft clock: elections after 10 to 20 ticks without a leader.
const TICK: Duration = Duration::from_millis(100);
/// Batches queued for one peer before newer ones are dropped (Raft resends).
const PEER_QUEUE: usize = 1024;
/// How long a forwarded write may take, and its applying here after.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// `ready_lag` when none is set.
const DEFAULT_READY_LAG: u64 = 1_000;
/// Shortest cluster secret taken.
const MIN_SECRET_LEN: usize = 16;

/// `node_id`, `cluster` and `cluster_secret_file`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClusterSettings {
    pub(crate) node_id: u64,
    /// The first members (id and the URL each listens on), or, for a node
    /// not among them, members to find the cluster by: it joins once a
    /// leader adds it (`POST /api/v1/cluster/members`). Once the group runs,
    /// its members are what the Raft log says.
    pub(crate) members: BTreeMap<u64, String>,
    /// How this node proves its `peer` role to the others.
    proof: PeerProof,
    /// Raft log entries kept behind what the store has flushed.
    log_keep: u64,
    /// Committed entries this node may trail by and still be ready.
    ready_lag: u64,
}

/// How members prove their `peer` role to each other.
#[derive(Clone, PartialEq, Eq)]
enum PeerProof {
    /// The cluster secret as a bearer token (`http://` members).
    Secret(String),
    /// This node's certificate, which the others map to `peer`, over mutual
    /// TLS (`https://` members); the CA that signed the members' certificates.
    Certificate {
        cert_pem: Vec<u8>,
        key_pem: Vec<u8>,
        ca_pem: Vec<u8>,
    },
}

impl std::fmt::Debug for PeerProof {
    /// Neither the secret nor the key is shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PeerProof::Secret(_) => "Secret(..)",
            PeerProof::Certificate { .. } => "Certificate(..)",
        })
    }
}

impl ClusterSettings {
    /// `None` for a single node; an error names the setting that is wrong.
    pub(crate) fn resolve(
        node_id: Option<u64>,
        cluster: Option<&str>,
        secret_file: Option<&Path>,
        log_keep: Option<u64>,
        ready_lag: Option<u64>,
        tls: Option<&crate::tls::TlsSettings>,
    ) -> anyhow::Result<Option<Self>> {
        let (node_id, cluster) = match (node_id, cluster) {
            (None, None) => return Ok(None),
            (Some(_), None) => anyhow::bail!("`node_id` is set but `cluster` is not"),
            (None, Some(_)) => anyhow::bail!("`cluster` is set but `node_id` is not"),
            (Some(id), Some(c)) => (id, c),
        };
        let mut members = BTreeMap::new();
        for item in cluster.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (id, url) = item
                .split_once('=')
                .with_context(|| format!("`cluster`: `{item}` is not `<id>=<url>`"))?;
            let id: u64 = id
                .trim()
                .parse()
                .ok()
                .filter(|id| *id > 0)
                .with_context(|| format!("`cluster`: `{id}` is not a node id (1, 2, ...)"))?;
            let url = url.trim().trim_end_matches('/');
            if !url.starts_with("http://") && !url.starts_with("https://") {
                anyhow::bail!("`cluster`: node {id}'s URL `{url}` is not http:// or https://");
            }
            if members.insert(id, url.to_owned()).is_some() {
                anyhow::bail!("`cluster`: node {id} is listed twice");
            }
        }
        if members.is_empty() {
            anyhow::bail!("`cluster` lists no node");
        }
        let https = members
            .values()
            .filter(|u| u.starts_with("https://"))
            .count();
        let proof = if https == 0 {
            PeerProof::Secret(read_secret(secret_file)?)
        } else if https == members.len() {
            peer_certificate(tls)?
        } else {
            anyhow::bail!(
                "`cluster`: every member's URL must be https:// (peers prove themselves with certificates) or every one http:// (with the cluster secret), not a mix"
            );
        };
        let log_keep = log_keep.unwrap_or(Timing::default().log_keep);
        if log_keep == 0 {
            anyhow::bail!("`raft_log_keep` must be 1 or more");
        }
        Ok(Some(Self {
            node_id,
            members,
            proof,
            log_keep,
            ready_lag: ready_lag.unwrap_or(DEFAULT_READY_LAG),
        }))
    }

    /// Committed entries this node may trail by and still answer `/readyz`.
    pub(crate) fn ready_lag(&self) -> u64 {
        self.ready_lag
    }

    /// The cluster secret, if peers prove themselves with it.
    pub(crate) fn secret(&self) -> Option<&str> {
        match &self.proof {
            PeerProof::Secret(s) => Some(s),
            PeerProof::Certificate { .. } => None,
        }
    }

    /// A connection to the member at `url`, proving this node a peer.
    fn endpoint(&self, url: &str) -> Result<tonic::transport::Endpoint, String> {
        let endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())
            .map_err(|e| format!("{url}: {e}"))?
            .connect_timeout(Duration::from_secs(1));
        match &self.proof {
            PeerProof::Secret(_) => Ok(endpoint),
            PeerProof::Certificate {
                cert_pem,
                key_pem,
                ca_pem,
            } => endpoint
                .tls_config(
                    tonic::transport::ClientTlsConfig::new()
                        .ca_certificate(tonic::transport::Certificate::from_pem(ca_pem))
                        .identity(tonic::transport::Identity::from_pem(cert_pem, key_pem)),
                )
                .map_err(|e| format!("{url}: {e}")),
        }
    }

    /// What a call to a peer carries besides: the secret as a bearer token
    /// (nothing with certificates).
    fn bearer(
        &self,
    ) -> Result<Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>, String> {
        self.secret()
            .map(|s| {
                format!("Bearer {s}")
                    .parse()
                    .map_err(|_| "the cluster secret is not a header value".to_owned())
            })
            .transpose()
    }

    /// Whether this node is one of the first members (or joins a running group).
    fn bootstraps(&self) -> bool {
        self.members.contains_key(&self.node_id)
    }
}

/// The cluster secret in `secret_file`, checked.
fn read_secret(secret_file: Option<&Path>) -> anyhow::Result<String> {
    let Some(secret_file) = secret_file else {
        anyhow::bail!(
            "a node started with `cluster` needs `cluster_secret_file`: peers prove their `peer` role with it (or, with https:// members, with certificates)"
        );
    };
    let secret = std::fs::read_to_string(secret_file)
        .with_context(|| format!("`cluster_secret_file` {}", secret_file.display()))?
        .trim()
        .to_owned();
    if secret.len() < MIN_SECRET_LEN || secret.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        anyhow::bail!(
            "`cluster_secret_file` {}: the secret must be {MIN_SECRET_LEN} or more printable characters without spaces",
            secret_file.display()
        );
    }
    Ok(secret)
}

/// This node's proof for https:// members: its own certificate (which the
/// others' `[tls.client_roles]` map to `peer`), verified against the CA in
/// `[tls] client_ca_file`, which signs every member's certificate.
fn peer_certificate(tls: Option<&crate::tls::TlsSettings>) -> anyhow::Result<PeerProof> {
    let needs = "https:// members prove themselves with certificates: they need `[tls]` `cert_file`, `key_file`, `client_ca_file` (the CA that signed every member's certificate) and a `[tls.client_roles]` name mapped to \"peer\"";
    let tls = tls.with_context(|| needs)?;
    let (Some(cert), Some(key), Some(ca)) = (&tls.cert_file, &tls.key_file, &tls.client_ca_file)
    else {
        anyhow::bail!("{needs}");
    };
    let maps_peer = (tls.client_roles.iter().flatten()).any(|(_, role)| role == "peer");
    if !maps_peer {
        anyhow::bail!("{needs}");
    }
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("`[tls]` {}", p.display()));
    Ok(PeerProof::Certificate {
        cert_pem: read(cert)?,
        key_pem: read(key)?,
        ca_pem: read(ca)?,
    })
}

/// The members' addresses, as the Raft configuration's context carries them.
type AddressBook = BTreeMap<u64, String>;

fn encode_book(book: &AddressBook) -> Vec<u8> {
    serde_json::to_vec(book).unwrap_or_default()
}

fn decode_book(bytes: &[u8]) -> Option<AddressBook> {
    serde_json::from_slice(bytes).ok()
}

/// The addresses a node sends to: what the configuration says, and the
/// `cluster` flag's for members it does not name (a joining node's way in).
#[derive(Debug, Default)]
struct Addresses {
    /// The configuration's context the book was read from.
    from: Vec<u8>,
    book: AddressBook,
}

/// The cluster's log applies to the engine: each entry an ingest batch, as
/// the engine's own log holds them. What the engine has flushed is what
/// survives a restart; the log delivers the rest again. A snapshot is a
/// checkpoint of the engine ([`snapshot`]).
struct EngineMachine {
    engine: Arc<Engine>,
    maintainer: Arc<toplog_compaction::Maintainer>,
    auth: Arc<crate::auth::Auth>,
    jobs: crate::api::JobRunner,
    snapshots: SnapshotDirs,
    /// Where the index of the last entry applied to the node's state
    /// besides the store (policy, keys, audit) is kept: a restart delivers
    /// again the entries after the store's flushed index, and none of those
    /// is applied twice.
    state_index: std::path::PathBuf,
}

impl EngineMachine {
    fn applied_state(&self) -> u64 {
        std::fs::read_to_string(&self.state_index)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    fn set_applied_state(&self, index: u64) -> toplog_replication::Result<()> {
        toplog_crypt::store_state_file(
            &self.state_index,
            index.to_string().into_bytes(),
            &toplog_crypt::Cipher::off(),
        )
        .map_err(|e| ReplicationError::Disk(format!("{}: {e}", self.state_index.display())))
    }

    /// Applies entry `index`, a change of the node's state besides the store.
    fn apply_state(&self, index: u64, entry: Entry<'_>) -> toplog_replication::Result<()> {
        if index <= self.applied_state() {
            return Ok(());
        }
        // The proposer checked the change; a member that cannot make it says
        // so and goes on (the log stays in step).
        let made = match entry {
            Entry::Ingest(_) => Err("an ingest batch is the store's".into()),
            Entry::Retention(policy) => (self.maintainer.set_policy(&policy))
                .map(drop)
                .map_err(|e| e.to_string()),
            Entry::Key(change) => match self.auth.cluster_keys() {
                Some(keys) => match change {
                    KeyChange::Add(key) => keys.insert(key).map(drop),
                    KeyChange::Revoke(id) => keys.revoke(&id).map(drop),
                }
                .map_err(|e| format!("{e:#}")),
                None => Err("access control is off: no keys".into()),
            },
            Entry::Audit(line) => {
                if let Some(log) = self.auth.audit() {
                    log.append(&line);
                }
                Ok(())
            }
            Entry::Job(job) => self.jobs.start(job).map_err(|e| e.to_string()),
        };
        if let Err(e) = made {
            tracing::error!(index, error = %e, "a change from the Raft log was not made here");
        }
        self.set_applied_state(index)
    }
}

impl StateMachine for EngineMachine {
    fn apply(&mut self, index: u64, data: &[u8]) -> toplog_replication::Result<()> {
        match Entry::decode(data) {
            Ok(Entry::Ingest(payload)) => self
                .engine
                .apply_replicated(index, payload)
                .map_err(|e| ReplicationError::Inconsistent(format!("entry {index}: {e}"))),
            Ok(entry) => self.apply_state(index, entry),
            Err(e) => Err(ReplicationError::Inconsistent(format!(
                "entry {index}: {e}"
            ))),
        }
    }

    fn applied(&self) -> u64 {
        self.engine.flushed_index()
    }

    /// With every batch flushed, the entries after the store's flushed index
    /// hold none (the others are durable once applied): the store is marked
    /// as of `applied`.
    fn keep_applied(&mut self, applied: u64) -> toplog_replication::Result<()> {
        self.engine
            .mark_flushed_through(applied)
            .map_err(|e| ReplicationError::Disk(e.to_string()))
    }

    fn snapshot(
        &mut self,
        at_least: u64,
        applied: u64,
    ) -> toplog_replication::Result<Option<(u64, Vec<u8>)>> {
        let state = snapshot::NodeState {
            retention: self.maintainer.policy().to_json(),
            keys: self
                .auth
                .cluster_keys()
                .map(|k| k.all())
                .unwrap_or_default(),
            audit: self.auth.audit().map(|a| a.path().to_path_buf()),
            jobs: (self.jobs.store.list().into_iter())
                .map(|job| toplog_query::Job {
                    state: toplog_query::JobState::Pending,
                    finished_at: None,
                    result: None,
                    error: None,
                    ..job
                })
                .collect(),
        };
        self.snapshots
            .make(&self.engine, at_least, applied, state)
            .map_err(ReplicationError::Disk)
    }

    fn install(&mut self, index: u64, data: &[u8]) -> toplog_replication::Result<()> {
        let descriptor = Descriptor::parse(data).map_err(ReplicationError::Disk)?;
        // The node's state first, then the store: a crash before the store
        // is replaced leaves the old store, whose log entries up to `index`
        // then change none of that state again.
        let disk = |e: String| ReplicationError::Disk(format!("snapshot {index}: {e}"));
        if let Err(e) = self.maintainer.set_policy(&descriptor.retention) {
            tracing::error!(index, error = %e, "a snapshot's retention policy was not applied");
        }
        if let Some(keys) = self.auth.cluster_keys() {
            keys.replace_all(descriptor.keys.clone())
                .map_err(|e| disk(format!("{e:#}")))?;
        }
        if let (Some(log), Some(file)) = (self.auth.audit(), self.snapshots.received_audit(index)) {
            log.replace_with(&file)
                .map_err(|e| disk(format!("{e:#}")))?;
        }

        self.set_applied_state(index)?;
        self.snapshots
            .install(&self.engine, index, &descriptor)
            .map_err(ReplicationError::Disk)?;
        // Its jobs run here too, over the store just installed (results are
        // derived; a crash before this point loses only their re-runs).
        for job in descriptor.jobs {
            if let Err(e) = self.jobs.start(job) {
                tracing::error!(index, error = %e, "a snapshot's aggregation job was not started");
            }
        }
        Ok(())
    }
}

/// This node's place in its cluster.
#[derive(Debug)]
pub(crate) struct Cluster {
    settings: ClusterSettings,
    driver: Driver,
    snapshots: SnapshotDirs,
    /// The snapshot being fetched, if one is.
    receiving: std::sync::Mutex<Option<u64>>,
    addresses: Arc<std::sync::RwLock<Addresses>>,
}

/// A write through the log: its index, and the node that led.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Submitted {
    pub(crate) index: u64,
    pub(crate) leader_id: u64,
}

/// Why a write through the log was not acknowledged.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SubmitError {
    #[error("{0}; nothing was acknowledged: retry")]
    NotTaken(String),
    #[error(
        "no quorum committed the write within {WRITE_WAIT:?} (members down or cut off); it was not acknowledged and may yet be committed: retry"
    )]
    NoQuorum,
}

/// How long a write waits for a quorum before it is refused: a few
/// election timeouts.
const WRITE_WAIT: Duration = Duration::from_secs(6);

/// A learner is made a voter once it is this close to the leader's commit index.
const PROMOTE_LAG: u64 = 10;
/// How often membership is looked at: addresses refreshed, learners promoted.
const MEMBERSHIP_EVERY: Duration = Duration::from_millis(200);

impl Cluster {
    /// Opens the Raft state in `<data_dir>/raft` and starts the node and its
    /// clients to the peers (on `runtime`).
    pub(crate) fn start(
        settings: &ClusterSettings,
        data_dir: &Path,
        runtime: &tokio::runtime::Handle,
        engine: Arc<Engine>,
        maintainer: Arc<toplog_compaction::Maintainer>,
        auth: Arc<crate::auth::Auth>,
        jobs: crate::api::JobRunner,
    ) -> anyhow::Result<Arc<Self>> {
        let raft_dir = data_dir.join("raft");
        let store = LogStore::open(
            Arc::new(toplog_wal::RealFs),
            &raft_dir,
            toplog_wal::WalOptions::default(),
        )?;
        let snapshots = SnapshotDirs::open(&raft_dir)
            .with_context(|| format!("snapshot directories in {}", raft_dir.display()))?;
        let voters: Vec<u64> = settings.members.keys().copied().collect();
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let node = RaftNode::open(
            settings.node_id,
            &voters,
            &encode_book(&settings.members),
            store,
            EngineMachine {
                engine,
                maintainer,
                auth: auth.clone(),
                jobs,
                snapshots: snapshots.clone(),
                state_index: raft_dir.join("STATE_INDEX"),
            },
            Timing {
                log_keep: settings.log_keep,
                ..Timing::default()
            },
            &logger,
        )?;
        if !settings.bootstraps() && node.conf_state().voters.is_empty() {
            tracing::info!(
                node_id = settings.node_id,
                "not a member yet: waiting for a leader to add this node (POST /api/v1/cluster/members)"
            );
        }
        let addresses = Arc::new(std::sync::RwLock::new(Addresses {
            from: Vec::new(),
            book: settings.members.clone(),
        }));
        let outbound = {
            let addresses = addresses.clone();
            let runtime = runtime.clone();
            let (me, peers_settings) = (settings.node_id, settings.clone());
            let mut peers: BTreeMap<u64, (String, mpsc::Sender<Vec<Message>>)> = BTreeMap::new();
            Box::new(move |messages: Vec<Message>| {
                let mut by_peer: BTreeMap<u64, Vec<Message>> = BTreeMap::new();
                for m in messages {
                    by_peer.entry(m.to).or_default().push(m);
                }
                let book = addresses
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                for (to, batch) in by_peer {
                    let Some(url) = book.book.get(&to) else {
                        continue;
                    };
                    // A client per peer and address, made when first needed.
                    if peers.get(&to).is_none_or(|(u, _)| u != url) {
                        let (tx, rx) = mpsc::channel(PEER_QUEUE);
                        runtime.spawn(peer_loop(peers_settings.clone(), url.clone(), me, rx));
                        peers.insert(to, (url.clone(), tx));
                    }
                    if let Some((_, tx)) = peers.get(&to) {
                        // A full queue drops the batch: Raft sends again.
                        let _ = tx.try_send(batch);
                    }
                }
            })
        };
        let driver = Driver::spawn(node, TICK, outbound)?;
        let cluster = Arc::new(Self {
            settings: settings.clone(),
            driver,
            snapshots,
            receiving: std::sync::Mutex::new(None),
            addresses,
        });
        cluster.refresh_addresses();
        runtime.spawn(watch_membership(Arc::downgrade(&cluster)));
        let through = Arc::downgrade(&cluster);
        auth.set_audit_sink(crate::auth::AuditSink(Box::new(move |line| {
            let through = through.clone();
            Box::pin(async move {
                let cluster = through.upgrade().ok_or("the Raft node stopped")?;
                cluster
                    .submit(&Entry::Audit(line))
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            })
        })));
        Ok(cluster)
    }

    /// Proposes `payload` through this node; the entry's index once it is
    /// applied here.
    pub(crate) async fn propose(&self, payload: Vec<u8>) -> toplog_replication::Result<u64> {
        self.driver.propose(payload).await
    }

    /// Writes `entry` through the Raft log from this node: proposed here if
    /// it leads (or knows no leader), handed to the leader otherwise (the
    /// caller does not notice). Answered once a quorum holds it and this
    /// node has applied it, or refused within [`WRITE_WAIT`]; never
    /// acknowledged without a quorum.
    pub(crate) async fn submit(&self, entry: &Entry<'_>) -> Result<Submitted, SubmitError> {
        let status = self.status();
        let leader_id = status.leader_id;
        let forwarded = leader_id != 0 && leader_id != status.node_id;
        let payload = entry.encode();
        let written = async {
            if forwarded {
                self.forward(leader_id, payload).await.map_err(|s| {
                    SubmitError::NotTaken(format!(
                        "the leader (node {leader_id}) did not take the write: {}",
                        s.message()
                    ))
                })
            } else {
                self.propose(payload).await.map_err(|e| match e {
                    ReplicationError::NotLeader { .. } => SubmitError::NotTaken(
                        "no leader is known (an election, or no quorum)".into(),
                    ),
                    other => SubmitError::NotTaken(other.to_string()),
                })
            }
        };
        match tokio::time::timeout(WRITE_WAIT, written).await {
            Ok(index) => Ok(Submitted {
                index: index?,
                leader_id: if forwarded { leader_id } else { status.node_id },
            }),
            Err(_) => Err(SubmitError::NoQuorum),
        }
    }

    /// Hands `payload` to leader `leader_id` to propose (a write this
    /// follower took), then waits until the entry is applied here too; its
    /// index.
    pub(crate) async fn forward(
        &self,
        leader_id: u64,
        payload: Vec<u8>,
    ) -> Result<u64, tonic::Status> {
        let url = self.url_of(leader_id).ok_or_else(|| {
            tonic::Status::unavailable(format!("node {leader_id} is not a member"))
        })?;
        let endpoint = (self.settings.endpoint(&url))
            .map_err(tonic::Status::internal)?
            .timeout(FORWARD_TIMEOUT);
        let mut client = RaftClient::new(endpoint.connect_lazy());
        let mut request = tonic::Request::new(Proposal { payload });
        if let Some(bearer) = self.settings.bearer().map_err(tonic::Status::internal)? {
            request.metadata_mut().insert("authorization", bearer);
        }
        let index = client.propose(request).await?.into_inner().index;
        if self.driver.wait_applied(index, FORWARD_TIMEOUT).await {
            Ok(index)
        } else {
            Err(tonic::Status::deadline_exceeded(format!(
                "entry {index} is committed, and not yet applied on this node"
            )))
        }
    }

    /// After a rekey: the Raft log cut up to what the store has flushed (all
    /// of it, the rekey flushed), and the snapshots on offer removed, so no
    /// entry or file sealed under a retired key is kept here.
    pub(crate) async fn retire_sealed(&self) -> Result<(), String> {
        self.driver
            .compact_kept()
            .await
            .map_err(|e| e.to_string())?;
        self.snapshots.withdraw().map_err(|e| e.to_string())
    }

    /// Whether a snapshot is being fetched or installed here.
    pub(crate) fn receiving_snapshot(&self) -> Option<u64> {
        *self
            .receiving
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A leader's message offering a snapshot: its files are fetched from
    /// that leader, then the message goes to the Raft node, which installs
    /// it. One at a time; an offer that arrives meanwhile is dropped (the
    /// leader offers again).
    fn receive_snapshot(self: &Arc<Self>, message: Message) {
        let data = toplog_replication::split_context(&message.get_snapshot().data)
            .map_or(&[][..], |(_, data)| data);
        let descriptor = match Descriptor::parse(data) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(from = message.from, error = %e, "a snapshot offer refused");
                return;
            }
        };
        {
            let mut receiving = self
                .receiving
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if receiving.is_some() {
                return;
            }
            *receiving = Some(descriptor.index);
        }
        let cluster = self.clone();
        tokio::spawn(async move {
            let from = message.from;
            let started = std::time::Instant::now();
            let fetched = cluster.fetch_snapshot(from, &descriptor).await;
            match fetched {
                Ok(()) => {
                    tracing::info!(
                        from,
                        index = descriptor.index,
                        bytes = descriptor.bytes(),
                        seconds = started.elapsed().as_secs_f64(),
                        "snapshot received"
                    );
                    cluster.driver.step(message);
                    // Installed on the Raft thread at its next turn.
                    let _ = cluster
                        .driver
                        .wait_applied(descriptor.index, Duration::from_secs(60))
                        .await;
                }
                Err(e) => {
                    tracing::warn!(from, index = descriptor.index, error = %e, "snapshot not received")
                }
            }
            *cluster
                .receiving
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        });
    }

    async fn fetch_snapshot(&self, from: u64, descriptor: &Descriptor) -> Result<(), String> {
        let url = self
            .url_of(from)
            .ok_or_else(|| format!("node {from} is not a member"))?;
        let endpoint = self.settings.endpoint(&url)?;
        let mut client = RaftClient::new(endpoint.connect_lazy());
        let bearer = self.settings.bearer()?;
        snapshot::fetch(
            &mut client,
            bearer.as_ref(),
            self.settings.node_id,
            descriptor,
            &self.snapshots,
        )
        .await
    }

    /// Waits until this node has applied every write committed when it was
    /// called (ReadIndex), for at most `limit`.
    pub(crate) async fn read_barrier(&self, limit: Duration) -> toplog_replication::Result<u64> {
        self.driver.read_barrier(limit).await
    }

    /// Hands leadership to member `to` (this node must lead).
    pub(crate) async fn transfer_leadership(&self, to: u64) -> toplog_replication::Result<()> {
        self.driver.transfer_leadership(to).await
    }

    /// The URL of node `id`, if it is a member (or, to a node that is not
    /// one yet, one of the nodes it was given to find the cluster by).
    pub(crate) fn url_of(&self, id: u64) -> Option<String> {
        self.addresses
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .book
            .get(&id)
            .cloned()
    }

    /// Reads the members' addresses from the configuration in force, if it changed.
    fn refresh_addresses(&self) {
        let context = self.status().conf_context;
        let mut addresses = self
            .addresses
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if addresses.from == context {
            return;
        }
        if let Some(book) = decode_book(&context) {
            let mut merged = self.settings.members.clone();
            merged.extend(book);
            addresses.book = merged;
        }
        addresses.from = context;
    }

    /// The members' addresses as the configuration in force says.
    pub(crate) fn address_book(&self) -> AddressBook {
        let status = self.status();
        decode_book(&status.conf_context).unwrap_or_default()
    }

    /// Adds node `id`, listening at `url`, as a learner (joint consensus);
    /// it becomes a voter once it has caught up. This node must lead. The
    /// entry's index once applied here.
    pub(crate) async fn add_member(&self, id: u64, url: &str) -> toplog_replication::Result<u64> {
        let mut book = self.address_book();
        book.insert(id, url.to_owned());
        self.change(ConfChangeType::AddLearnerNode, id, book).await
    }

    /// Removes member `id` (joint consensus); this node must lead.
    pub(crate) async fn remove_member(&self, id: u64) -> toplog_replication::Result<u64> {
        let mut book = self.address_book();
        book.remove(&id);
        self.change(ConfChangeType::RemoveNode, id, book).await
    }

    async fn change(
        &self,
        kind: ConfChangeType,
        id: u64,
        book: AddressBook,
    ) -> toplog_replication::Result<u64> {
        let mut single = ConfChangeSingle::default();
        single.set_change_type(kind);
        single.node_id = id;
        let mut change = ConfChangeV2::default();
        change.set_transition(ConfChangeTransition::Implicit);
        change.changes = vec![single].into();
        let index = self
            .driver
            .change_membership(change, encode_book(&book))
            .await?;
        self.refresh_addresses();
        Ok(index)
    }

    pub(crate) fn status(&self) -> NodeStatus {
        self.driver.status()
    }
}

/// Keeps the addresses current and, on the leader, makes each learner that
/// has caught up a voter; ends with the cluster.
async fn watch_membership(cluster: std::sync::Weak<Cluster>) {
    loop {
        tokio::time::sleep(MEMBERSHIP_EVERY).await;
        let Some(cluster) = cluster.upgrade() else {
            return;
        };
        cluster.refresh_addresses();
        let s = cluster.status();
        if s.role != "leader" || !s.voters_outgoing.is_empty() {
            continue;
        }
        let ready = s.learners.iter().copied().find(|id| {
            s.peers
                .get(id)
                .is_some_and(|p| p.matched > 0 && p.matched + PROMOTE_LAG >= s.commit_index)
        });
        if let Some(id) = ready {
            let book = cluster.address_book();
            match cluster.change(ConfChangeType::AddNode, id, book).await {
                Ok(index) => tracing::info!(
                    node_id = id,
                    index,
                    "a learner caught up and is now a voter"
                ),
                Err(e) => {
                    tracing::debug!(node_id = id, error = %e, "promotion not made; trying again")
                }
            }
        }
    }
}

/// Sends what the node has for one peer, a batch per call, coalescing what
/// queued up meanwhile. A failed call is dropped: Raft sends again.
async fn peer_loop(
    settings: ClusterSettings,
    url: String,
    from: u64,
    mut rx: mpsc::Receiver<Vec<Message>>,
) {
    let (endpoint, bearer) = match (settings.endpoint(&url), settings.bearer()) {
        (Ok(e), Ok(b)) => (e.timeout(Duration::from_secs(5)), b),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(%url, error = %e, "cannot reach a peer");
            return;
        }
    };
    let mut client = RaftClient::new(endpoint.connect_lazy());
    while let Some(mut batch) = rx.recv().await {
        while let Ok(more) = rx.try_recv() {
            batch.extend(more);
        }
        let messages = batch
            .iter()
            .filter_map(|m| encode_message(m).ok())
            .collect();
        let mut request = tonic::Request::new(Messages { from, messages });
        if let Some(bearer) = &bearer {
            request
                .metadata_mut()
                .insert("authorization", bearer.clone());
        }
        if let Err(e) = client.send(request).await {
            tracing::debug!(%url, error = %e, "Raft messages not delivered");
        }
    }
}

/// The `toplog.raft.v1.Raft` service: reached only by callers the auth layer
/// took for peers.
#[derive(Debug)]
pub(crate) struct RaftService {
    pub(crate) app: Arc<crate::api::AppState>,
}

#[tonic::async_trait]
impl Raft for RaftService {
    async fn send(
        &self,
        request: tonic::Request<Messages>,
    ) -> Result<tonic::Response<Accepted>, tonic::Status> {
        let Some(cluster) = self.app.cluster.get() else {
            return Err(tonic::Status::unavailable("the Raft node is starting"));
        };
        let me = cluster.settings.node_id;
        let batch = request.into_inner();
        if cluster.url_of(batch.from).is_none() {
            return Err(tonic::Status::permission_denied(format!(
                "node {} is not a member",
                batch.from
            )));
        }
        for (i, bytes) in batch.messages.iter().enumerate() {
            let message = decode_message(bytes)
                .map_err(|e| tonic::Status::invalid_argument(format!("messages[{i}]: {e}")))?;
            if message.to != me || message.from != batch.from {
                return Err(tonic::Status::invalid_argument(format!(
                    "messages[{i}]: from {} to {}, in a batch from {} to {me}",
                    message.from, message.to, batch.from
                )));
            }
            if message.get_msg_type() == toplog_replication::MessageType::MsgSnapshot {
                cluster.receive_snapshot(message);
            } else {
                cluster.driver.step(message);
            }
        }
        Ok(tonic::Response::new(Accepted {}))
    }

    type FetchSnapshotStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<SnapshotChunk, tonic::Status>> + Send>>;

    async fn fetch_snapshot(
        &self,
        request: tonic::Request<SnapshotRequest>,
    ) -> Result<tonic::Response<Self::FetchSnapshotStream>, tonic::Status> {
        let Some(cluster) = self.app.cluster.get() else {
            return Err(tonic::Status::unavailable("the Raft node is starting"));
        };
        let SnapshotRequest { from, index } = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let (fetched, ended) = (cluster.clone(), cluster.clone());
        cluster.snapshots.send(
            index,
            tx,
            move || fetched.driver.snapshot_fetched(from),
            move |sent| ended.driver.report_snapshot(from, sent),
        )?;
        let chunks = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|chunk| (chunk, rx))
        });
        Ok(tonic::Response::new(Box::pin(chunks)))
    }

    async fn propose(
        &self,
        request: tonic::Request<Proposal>,
    ) -> Result<tonic::Response<Proposed>, tonic::Status> {
        let Some(cluster) = self.app.cluster.get() else {
            return Err(tonic::Status::unavailable("the Raft node is starting"));
        };
        let payload = request.into_inner().payload;
        // An entry every member could not apply would stop them all.
        Entry::decode(&payload).map_err(tonic::Status::invalid_argument)?;
        match cluster.propose(payload).await {
            Ok(index) => Ok(tonic::Response::new(Proposed { index })),
            Err(ReplicationError::NotLeader { leader_id }) => {
                Err(tonic::Status::failed_precondition(format!(
                    "this node does not lead (leader: {leader_id})"
                )))
            }
            Err(
                e
                @ (ReplicationError::Lost | ReplicationError::Dropped | ReplicationError::Unknown),
            ) => Err(tonic::Status::aborted(e.to_string())),
            Err(e) => Err(tonic::Status::unavailable(e.to_string())),
        }
    }
}
