//! A member's cluster settings (`node_id`, `cluster`, the peers' proof,
//! `raft_log_keep`, `ready_lag`), checked at start, and how it reaches its
//! peers: a connection per member URL, proving the `peer` role with the
//! cluster secret or, with `https://` members, its certificate.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use toplog_replication::Timing;

/// `ready_lag` when none is set.
const DEFAULT_READY_LAG: u64 = 1_000;
/// Most shards a cluster may have: each is a Raft group and a store on
/// three nodes.
const MAX_SHARDS: u32 = 256;
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
    pub(super) log_keep: u64,
    /// Committed entries this node may trail by and still be ready.
    ready_lag: u64,
    /// Shards the cluster's events are spread over (1: the main group
    /// holds them).
    pub(crate) shards: u32,
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
        shards: Option<u32>,
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
        let shards = shards.unwrap_or(1);
        if !(1..=MAX_SHARDS).contains(&shards) {
            anyhow::bail!("`shards` must be 1 to {MAX_SHARDS}, not {shards}");
        }
        Ok(Some(Self {
            node_id,
            members,
            proof,
            log_keep,
            ready_lag: ready_lag.unwrap_or(DEFAULT_READY_LAG),
            shards,
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
    pub(super) fn endpoint(&self, url: &str) -> Result<tonic::transport::Endpoint, String> {
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
    pub(super) fn bearer(
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
    pub(super) fn bootstraps(&self) -> bool {
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
