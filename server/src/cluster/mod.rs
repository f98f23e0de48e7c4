//! The node as a member of a Raft cluster (docs/cluster.md): its Raft node
//! on a thread of its own (toplog-replication); writes through the log from
//! any member ([`Cluster::submit`], a follower handing them to the leader);
//! linearizable reads; membership (members' addresses live in the log,
//! learners are promoted once caught up); and snapshots received.
//!
//! - [`settings`]: the cluster settings and how peers prove themselves;
//! - [`entry`]: what a log entry changes;
//! - [`machine`]: what entries are applied to, and snapshots made and installed;
//! - [`snapshot`]: snapshot files, their transfer and their install;
//! - [`transport`]: the clients to peers and the `toplog.raft.v1.Raft` service;
//! - [`maintenance`]: maintenance decisions through the log, and the cluster's id.

mod entry;
mod machine;
mod maintenance;
mod rebalance;
mod settings;
mod shard_reads;
mod shards;
mod snapshot;
mod transport;

pub(crate) use entry::{Entry, KeyChange};
pub(crate) use rebalance::rebalance;
pub(crate) use settings::ClusterSettings;
pub(crate) use shard_reads::{Answer, Question, answer as answer_shard, ask as ask_shard};
pub(crate) use shards::{Opener, PartStored, ReadReplica, Replica, ShardState, Shards, shard_dir};
pub(crate) use transport::RaftService;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use toplog_engine::Engine;
use toplog_proto::raft_v1::Proposal;
use toplog_proto::raft_v1::raft_client::RaftClient;
use toplog_replication::{
    ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, Driver, LogStore,
    Message, NodeStatus, RaftNode, ReplicationError, Timing,
};

use machine::EngineMachine;
use snapshot::{Descriptor, SnapshotDirs};
use transport::peer_loop;

/// The Raft clock: elections after 10 to 20 ticks without a leader.
const TICK: Duration = Duration::from_millis(100);
/// Batches queued for one peer before newer ones are dropped (Raft resends).
const PEER_QUEUE: usize = 1024;
/// How long a forwarded write may take, and its applying here after.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

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

/// What a group's log is applied to: a store, and in the node's main
/// group the rest of the node's state.
pub(crate) struct NodeParts {
    pub(crate) engine: Arc<Engine>,
    pub(crate) maintainer: Arc<toplog_compaction::Maintainer>,
    /// None in a shard's group.
    pub(crate) shared: Option<SharedParts>,
}

/// The node's state besides the store, which the main group's log changes.
pub(crate) struct SharedParts {
    pub(crate) auth: Arc<crate::auth::Auth>,
    pub(crate) jobs: crate::api::JobRunner,
    pub(crate) alerting: Arc<crate::alerts::Alerting>,
    /// A sharded cluster's shard map, as the log last set it.
    pub(crate) shard_state: Arc<ShardState>,
}

/// One Raft group a node takes part in: its id on the wire (0 the main
/// group, 1 + n shard n's), where its Raft state is kept, and its first
/// voters with their addresses (none when this node is not among them: it
/// waits to be added).
pub(crate) struct Group {
    pub(crate) id: u64,
    pub(crate) raft_dir: std::path::PathBuf,
    pub(crate) members: AddressBook,
}

/// This node's place in its cluster.
#[derive(Debug)]
pub(crate) struct Cluster {
    settings: ClusterSettings,
    /// The group's id on the wire.
    group: u64,
    driver: Driver,
    snapshots: SnapshotDirs,
    /// The snapshot being fetched, if one is.
    receiving: std::sync::Mutex<Option<u64>>,
    addresses: Arc<std::sync::RwLock<Addresses>>,
    maintainer: Arc<toplog_compaction::Maintainer>,
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

/// How long a write waits for a leader to be known before it is refused
/// (within [`WRITE_WAIT`] of the call).
const LEADER_WAIT: Duration = Duration::from_secs(2);

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
        group: Group,
        runtime: &tokio::runtime::Handle,
        node: NodeParts,
    ) -> anyhow::Result<Arc<Self>> {
        let auth = node.shared.as_ref().map(|s| s.auth.clone());
        let maintainer = node.maintainer.clone();
        let Group {
            id: group,
            raft_dir,
            members,
        } = group;
        let store = LogStore::open(
            Arc::new(toplog_wal::RealFs),
            &raft_dir,
            toplog_wal::WalOptions::default(),
        )?;
        let snapshots = SnapshotDirs::open(&raft_dir)
            .with_context(|| format!("snapshot directories in {}", raft_dir.display()))?;
        let voters: Vec<u64> = members.keys().copied().collect();
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let node = RaftNode::open(
            settings.node_id,
            &voters,
            &encode_book(&members),
            store,
            EngineMachine::open(node, snapshots.clone(), &raft_dir)?,
            Timing {
                log_keep: settings.log_keep,
                ..Timing::default()
            },
            &logger,
        )?;
        if group == 0 && !settings.bootstraps() && node.conf_state().voters.is_empty() {
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
                        runtime.spawn(peer_loop(
                            peers_settings.clone(),
                            url.clone(),
                            (me, group),
                            rx,
                        ));
                        peers.insert(to, (url.clone(), tx));
                    }
                    if let Some((_, tx)) = peers.get(&to) {
                        // A full queue drops the batch: Raft sends again.
                        let _ = tx.try_send(batch);
                    }
                }
            })
        };
        // `raft-g<group>`: a shard's serial work (its log, applying it)
        // shows as its thread's CPU time.
        let driver = Driver::spawn(format!("raft-g{group}"), node, TICK, outbound)?;
        let cluster = Arc::new(Self {
            settings: settings.clone(),
            group,
            driver,
            snapshots,
            receiving: std::sync::Mutex::new(None),
            addresses,
            maintainer: maintainer.clone(),
        });
        maintainer.join_cluster(Arc::new(maintenance::LogCoordinator {
            cluster: Arc::downgrade(&cluster),
            runtime: runtime.clone(),
        }));
        cluster.refresh_addresses();
        runtime.spawn(watch_membership(Arc::downgrade(&cluster)));
        let Some(auth) = auth else {
            return Ok(cluster);
        };
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
        // A leadership handed over (or an election) leaves the group without
        // a leader for a moment: nothing is proposed yet, so waiting for one
        // is safe, and spares the caller a retry.
        let waiting = tokio::time::Instant::now() + LEADER_WAIT;
        let mut status = self.status();
        while status.leader_id == 0 && tokio::time::Instant::now() < waiting {
            tokio::time::sleep(Duration::from_millis(50)).await;
            status = self.status();
        }
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
        let mut request = tonic::Request::new(Proposal {
            payload,
            group: self.group,
            ..Proposal::default()
        });
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
            (self.settings.node_id, self.group),
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

/// Keeps the addresses current and, on the leader, names the cluster and
/// makes each learner that has caught up a voter; ends with the cluster.
async fn watch_membership(cluster: std::sync::Weak<Cluster>) {
    loop {
        tokio::time::sleep(MEMBERSHIP_EVERY).await;
        let Some(cluster) = cluster.upgrade() else {
            return;
        };
        cluster.refresh_addresses();
        if cluster.group == 0 {
            cluster.name_cluster().await;
        }
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
