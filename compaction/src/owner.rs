//! One archive, one owner. A node has a stable id, made once (UUID v7) and kept
//! in `<data_dir>/NODE_ID`; the archive prefix holds an `OWNER` object naming
//! the node that writes there (or, for a cluster's members, the cluster's
//! id, which the Raft log carries). The
//! marker is created create-only, so of two nodes racing for a new prefix one
//! wins and the other finds the winner's id: segment copies of two nodes have
//! the same names, and each would otherwise sweep or overwrite the other's.

use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use toplog_engine::ArchiveStore;
use toplog_types::Micros;

/// The file in the data directory holding the node's id.
pub const NODE_ID_FILE: &str = "NODE_ID";
/// The object at the root of the archive prefix naming its owner.
pub const OWNER_KEY: &str = "OWNER";
/// The version of both files' JSON; a reader refuses any other.
const VERSION: u32 = 1;

/// A node's id: a UUID v7, made on the node's first start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodeId(uuid::Uuid);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NodeIdError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "{path} is not a node id file ({reason}); it must hold {{\"version\":1,\"node_id\":\"<uuid>\"}}"
    )]
    Malformed { path: PathBuf, reason: String },
    #[error("cannot store {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeIdFile {
    version: u32,
    node_id: String,
}

impl NodeId {
    /// A new id, unique to this node.
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7())
    }

    /// The id in `<data_dir>/NODE_ID`, made and stored (temp file, fsync,
    /// rename, directory fsync) on the first start.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, NodeIdError> {
        let path = data_dir.join(NODE_ID_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => Self::decode(&bytes).map_err(|reason| NodeIdError::Malformed {
                path: path.clone(),
                reason,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let id = Self::generate();
                id.store(data_dir).map_err(|source| NodeIdError::Write {
                    path: path.clone(),
                    source,
                })?;
                tracing::info!(node_id = %id, path = %path.display(), "made this node's id");
                Ok(id)
            }
            Err(source) => Err(NodeIdError::Read { path, source }),
        }
    }

    fn decode(bytes: &[u8]) -> Result<Self, String> {
        let file: NodeIdFile = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if file.version != VERSION {
            return Err(format!("version {} (this build reads 1)", file.version));
        }
        uuid::Uuid::parse_str(&file.node_id)
            .map(Self)
            .map_err(|e| format!("node_id `{}`: {e}", file.node_id))
    }

    fn store(&self, data_dir: &Path) -> io::Result<()> {
        let tmp = data_dir.join(format!("{NODE_ID_FILE}.tmp"));
        let file = NodeIdFile {
            version: VERSION,
            node_id: self.to_string(),
        };
        let mut f = std::fs::File::create(&tmp)?;
        serde_json::to_writer(&mut f, &file)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, data_dir.join(NODE_ID_FILE))?;
        std::fs::File::open(data_dir)?.sync_all()
    }
}

/// The `OWNER` object's JSON.
#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    version: u32,
    /// `node` today; `cluster` once replication exists.
    kind: String,
    owner: String,
    /// When the owner claimed the prefix; informative only.
    #[serde(default)]
    claimed_at: Option<String>,
}

/// Why this node may not write to the archive.
#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    #[error(
        "the archive at {location} belongs to {owner_kind} {owner} (its {OWNER_KEY} object says so), \
         not to this {what} ({ours}). Two owners of one archive delete each other's objects. \
         Point this {what} at another archive, or, to hand this archive over on purpose, \
         stop its owner and delete {location}/{OWNER_KEY} \
         (docs/operations.md, \"One archive, one owner\")"
    )]
    Foreign {
        location: String,
        /// What owns it: `node` or `cluster`.
        owner_kind: String,
        owner: String,
        /// `node`, or `cluster` for a cluster member.
        what: &'static str,
        ours: String,
    },
    #[error(
        "this member does not know its cluster's id yet (the leader proposes it): \
         the archive at {location} is left alone until it does"
    )]
    ClusterUnknown { location: String },
    #[error(
        "a cluster's members share one archive, and this member's is a folder in its own \
         data directory ({location}): nothing is archived, every member keeps its rows. Set \
         [archive] url to the same store (s3://...) on every member (docs/cluster.md, \"The archive\")"
    )]
    NotShared { location: String },
    #[error(
        "the archive at {location} has an {OWNER_KEY} object this build cannot read ({reason}); \
         it is left alone and the archive is not used (docs/format.md, \"Archive owner\")"
    )]
    Malformed { location: String, reason: String },
    #[error("cannot read or create {location}/{OWNER_KEY}: {source}")]
    Store { location: String, source: io::Error },
}

impl OwnerError {
    /// The store failed: who owns the prefix is not known, not known to be someone else.
    pub fn is_store(&self) -> bool {
        matches!(self, Self::Store { .. })
    }
}

/// How a claim went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The prefix had no owner; it is this node's now.
    Created,
    /// The prefix was already this node's.
    Ours,
}

/// Makes the archive `store` (at `location`, for messages) this node's, or says
/// whose it is: reads the marker, and creates it (create-only) if absent. A
/// node that loses the race to create it reads the winner's.
pub fn claim(store: &dyn ArchiveStore, location: &str, node: NodeId) -> Result<Claim, OwnerError> {
    claim_as(store, location, "node", &node.to_string())
}

/// [`claim`] for an owner of kind `what` (`node` or `cluster`) and id `ours`.
fn claim_as(
    store: &dyn ArchiveStore,
    location: &str,
    what: &'static str,
    ours: &str,
) -> Result<Claim, OwnerError> {
    let failed = |source| OwnerError::Store {
        location: location.to_owned(),
        source,
    };
    // Two rounds: absent, lost the race to create it, then read the winner.
    for _ in 0..2 {
        match read_marker(store, location)? {
            Some(m) if m.owner == ours && m.kind == what => return Ok(Claim::Ours),
            Some(m) => {
                return Err(OwnerError::Foreign {
                    location: location.to_owned(),
                    owner_kind: m.kind,
                    owner: m.owner,
                    what,
                    ours: ours.to_owned(),
                });
            }
            None => {}
        }
        let marker = Marker {
            version: VERSION,
            kind: what.into(),
            owner: ours.to_owned(),
            claimed_at: Some(Micros::now().to_rfc3339()),
        };
        let mut bytes = serde_json::to_vec(&marker).map_err(|e| failed(e.into()))?;
        bytes.push(b'\n');
        match store.create(OWNER_KEY, Bytes::from(bytes)) {
            Ok(()) => {
                tracing::info!(%location, owner = %ours, kind = what, "claimed the archive");
                return Ok(Claim::Created);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(failed(e)),
        }
    }
    Err(failed(io::Error::other(
        "the marker was created and removed again while this node claimed it; try again",
    )))
}

fn read_marker(store: &dyn ArchiveStore, location: &str) -> Result<Option<Marker>, OwnerError> {
    let failed = |source| OwnerError::Store {
        location: location.to_owned(),
        source,
    };
    let malformed = |reason: String| OwnerError::Malformed {
        location: location.to_owned(),
        reason,
    };
    let size = match store.size(OWNER_KEY) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(failed(e)),
    };
    if size == 0 || size > 64 * 1024 {
        return Err(malformed(format!("{size} bytes")));
    }
    let bytes = match store.get_range(OWNER_KEY, 0..size) {
        Ok(b) => b,
        // Removed between the two calls.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(failed(e)),
    };
    let marker: Marker = serde_json::from_slice(&bytes).map_err(|e| malformed(e.to_string()))?;
    if marker.version != VERSION {
        return Err(malformed(format!(
            "version {} (this build reads 1)",
            marker.version
        )));
    }
    if marker.owner.trim().is_empty() {
        return Err(malformed("no owner".into()));
    }
    Ok(Some(marker))
}

/// This node's claim on its archive, checked again before every maintenance
/// pass: the marker may have been handed to another node since.
#[derive(Debug)]
pub struct ArchiveOwner {
    store: Arc<dyn ArchiveStore>,
    location: String,
    node: NodeId,
    /// A cluster member's: the prefix is the cluster's, `cluster` its id
    /// once the Raft log has said it.
    in_cluster: bool,
    /// Whether other nodes can reach the archive (not a folder in this
    /// node's data directory); a cluster member needs one they can.
    shared: bool,
    cluster: std::sync::Mutex<Option<String>>,
    /// The marker was last read (or made) naming this node.
    confirmed: AtomicBool,
}

impl ArchiveOwner {
    pub fn new(store: Arc<dyn ArchiveStore>, location: String, node: NodeId) -> Self {
        Self {
            store,
            location,
            node,
            in_cluster: false,
            shared: false,
            cluster: std::sync::Mutex::new(None),
            confirmed: AtomicBool::new(false),
        }
    }

    /// A cluster member's claim: on the cluster's archive, once it knows the
    /// cluster's id ([`ArchiveOwner::set_cluster`]); never on one in its
    /// own data directory (`shared` false), which the others cannot read.
    pub fn for_cluster(
        store: Arc<dyn ArchiveStore>,
        location: String,
        node: NodeId,
        shared: bool,
    ) -> Self {
        Self {
            in_cluster: true,
            shared,
            ..Self::new(store, location, node)
        }
    }

    /// The cluster's id, as the Raft log says it.
    pub fn set_cluster(&self, id: &str) {
        *self
            .cluster
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(id.to_owned());
    }

    /// The cluster's id, once known.
    pub fn cluster(&self) -> Option<String> {
        self.cluster
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn node(&self) -> NodeId {
        self.node
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    /// Whether the marker, when last read, named this node.
    pub fn is_confirmed(&self) -> bool {
        self.confirmed.load(Ordering::SeqCst)
    }

    /// Claims the archive (see [`claim`]) and remembers the answer.
    pub fn claim(&self) -> Result<Claim, OwnerError> {
        let r = if self.in_cluster && !self.shared {
            Err(OwnerError::NotShared {
                location: self.location.clone(),
            })
        } else if self.in_cluster {
            match self.cluster() {
                Some(id) => claim_as(self.store.as_ref(), &self.location, "cluster", &id),
                None => Err(OwnerError::ClusterUnknown {
                    location: self.location.clone(),
                }),
            }
        } else {
            claim(self.store.as_ref(), &self.location, self.node)
        };
        match &r {
            Ok(_) => self.confirmed.store(true, Ordering::SeqCst),
            Err(e) if !e.is_store() => self.confirmed.store(false, Ordering::SeqCst),
            Err(_) => {}
        }
        r
    }

    /// Whether a maintenance pass may write and delete in the archive now:
    /// yes if the marker names this node; also yes if the store cannot be read
    /// but the marker named this node before (the pass's own calls then meet
    /// the same failure and delete nothing); no otherwise.
    pub fn check(&self) -> Result<(), OwnerError> {
        match self.claim() {
            Ok(_) => Ok(()),
            Err(e) if e.is_store() && self.is_confirmed() => {
                tracing::warn!(error = %e, "archive owner not checked; it was this node's before");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::HashMap;
    use std::ops::Range;
    use std::sync::{Barrier, Mutex};

    /// An object store in memory, create-only like the real ones, that can be
    /// made to fail.
    #[derive(Debug, Default)]
    struct Memory {
        objects: Mutex<HashMap<String, Bytes>>,
        down: AtomicBool,
    }

    impl Memory {
        fn up(&self) -> io::Result<()> {
            if self.down.load(Ordering::SeqCst) {
                return Err(io::Error::other("connection refused"));
            }
            Ok(())
        }
    }

    impl ArchiveStore for Memory {
        fn create(&self, key: &str, bytes: Bytes) -> io::Result<()> {
            self.up()?;
            let mut objects = self.objects.lock().unwrap();
            if objects.contains_key(key) {
                return Err(io::ErrorKind::AlreadyExists.into());
            }
            objects.insert(key.to_owned(), bytes);
            Ok(())
        }
        fn get_range(&self, key: &str, range: Range<u64>) -> io::Result<Bytes> {
            self.up()?;
            let objects = self.objects.lock().unwrap();
            let b = objects.get(key).ok_or(io::ErrorKind::NotFound)?;
            Ok(b.slice(range.start as usize..range.end as usize))
        }
        fn size(&self, key: &str) -> io::Result<u64> {
            self.up()?;
            let objects = self.objects.lock().unwrap();
            Ok(objects.get(key).ok_or(io::ErrorKind::NotFound)?.len() as u64)
        }
        fn delete(&self, key: &str) -> io::Result<()> {
            self.up()?;
            self.objects.lock().unwrap().remove(key);
            Ok(())
        }
        fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
            self.up()?;
            let objects = self.objects.lock().unwrap();
            Ok(objects
                .keys()
                .filter(|k| k.starts_with(prefix))
                .cloned()
                .collect())
        }
    }

    fn marker_of(store: &Memory) -> serde_json::Value {
        serde_json::from_slice(&store.objects.lock().unwrap()[OWNER_KEY]).unwrap()
    }

    #[test]
    fn absent_is_claimed_ours_is_fine_theirs_is_refused() {
        let store = Memory::default();
        let (a, b) = (NodeId::generate(), NodeId::generate());
        assert_eq!(claim(&store, "s3://x/p", a).unwrap(), Claim::Created);
        let m = marker_of(&store);
        assert_eq!(m["owner"], a.to_string());
        assert_eq!(m["kind"], "node");
        assert_eq!(m["version"], 1);
        assert_eq!(claim(&store, "s3://x/p", a).unwrap(), Claim::Ours);

        let err = claim(&store, "s3://x/p", b).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, OwnerError::Foreign { .. }), "{err:?}");
        for part in ["s3://x/p", &a.to_string(), &b.to_string(), "OWNER"] {
            assert!(text.contains(part), "`{part}` missing from: {text}");
        }
        assert_eq!(marker_of(&store)["owner"], a.to_string(), "left as it was");

        // Handed over on purpose: the marker deleted, the next node claims it.
        store.delete(OWNER_KEY).unwrap();
        assert_eq!(claim(&store, "s3://x/p", b).unwrap(), Claim::Created);
        assert!(matches!(
            claim(&store, "s3://x/p", a),
            Err(OwnerError::Foreign { .. })
        ));
    }

    #[test]
    fn of_nodes_racing_for_a_new_prefix_exactly_one_wins() {
        for _ in 0..20 {
            let store = Arc::new(Memory::default());
            let nodes: Vec<NodeId> = (0..4).map(|_| NodeId::generate()).collect();
            let start = Arc::new(Barrier::new(nodes.len()));
            let results: Vec<(NodeId, Result<Claim, OwnerError>)> = std::thread::scope(|s| {
                let handles: Vec<_> = nodes
                    .iter()
                    .map(|&n| {
                        let (store, start) = (store.clone(), start.clone());
                        s.spawn(move || {
                            start.wait();
                            (n, claim(store.as_ref(), "p", n))
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let winners: Vec<NodeId> = results
                .iter()
                .filter(|(_, r)| matches!(r, Ok(Claim::Created)))
                .map(|(n, _)| *n)
                .collect();
            assert_eq!(winners.len(), 1, "{results:?}");
            let winner = winners[0].to_string();
            assert_eq!(marker_of(&store)["owner"], winner);
            for (n, r) in &results {
                if *n != winners[0] {
                    match r {
                        Err(OwnerError::Foreign { owner, ours, .. }) => {
                            assert_eq!(owner, &winner);
                            assert_eq!(*ours, n.to_string());
                        }
                        other => panic!("a loser got {other:?}"),
                    }
                }
            }
        }
    }

    #[test]
    fn a_marker_it_cannot_read_is_refused_and_left_alone() {
        let store = Memory::default();
        store.create(OWNER_KEY, Bytes::from_static(b"me")).unwrap();
        let err = claim(&store, "p", NodeId::generate()).unwrap_err();
        assert!(matches!(err, OwnerError::Malformed { .. }), "{err:?}");
        store.delete(OWNER_KEY).unwrap();
        let v2 = br#"{"version":2,"kind":"cluster","owner":"c1"}"#;
        store.create(OWNER_KEY, Bytes::from_static(v2)).unwrap();
        let err = claim(&store, "p", NodeId::generate()).unwrap_err();
        assert!(err.to_string().contains("version 2"), "{err}");
        assert_eq!(&store.objects.lock().unwrap()[OWNER_KEY][..], &v2[..]);
    }

    #[test]
    fn a_failing_store_fences_only_a_node_that_never_confirmed() {
        let store = Arc::new(Memory::default());
        let owner = ArchiveOwner::new(store.clone(), "p".into(), NodeId::generate());
        store.down.store(true, Ordering::SeqCst);
        let err = owner.check().unwrap_err();
        assert!(err.is_store(), "{err:?}");
        assert!(!owner.is_confirmed());
        store.down.store(false, Ordering::SeqCst);
        owner.check().unwrap();
        assert!(owner.is_confirmed());
        // A blip after the claim: the pass goes on (its own calls fail alike).
        store.down.store(true, Ordering::SeqCst);
        owner.check().unwrap();
        store.down.store(false, Ordering::SeqCst);
        // Handed to another node while this one runs: fenced from then on.
        store.delete(OWNER_KEY).unwrap();
        claim(store.as_ref(), "p", NodeId::generate()).unwrap();
        assert!(matches!(owner.check(), Err(OwnerError::Foreign { .. })));
        assert!(!owner.is_confirmed());
        store.down.store(true, Ordering::SeqCst);
        assert!(owner.check().is_err(), "not ours, even with the store down");
    }

    #[test]
    fn the_node_id_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let id = NodeId::load_or_create(dir.path()).unwrap();
        assert_eq!(id.0.get_version_num(), 7);
        assert_eq!(NodeId::load_or_create(dir.path()).unwrap(), id);
        let text = std::fs::read_to_string(dir.path().join(NODE_ID_FILE)).unwrap();
        assert_eq!(text, format!("{{\"version\":1,\"node_id\":\"{id}\"}}\n"));
        assert!(!dir.path().join("NODE_ID.tmp").exists());
        std::fs::write(dir.path().join(NODE_ID_FILE), b"{\"version\":1}").unwrap();
        let err = NodeId::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, NodeIdError::Malformed { .. }), "{err}");
    }

    #[test]
    fn a_cluster_claims_a_shared_archive_once_it_knows_its_id() {
        let store = Arc::new(Memory::default());
        let local =
            ArchiveOwner::for_cluster(store.clone(), "archive".into(), NodeId::generate(), false);
        local.set_cluster("c1");
        assert!(matches!(local.check(), Err(OwnerError::NotShared { .. })));
        assert!(
            read_marker(store.as_ref(), "p").unwrap().is_none(),
            "nothing claimed"
        );

        let a =
            ArchiveOwner::for_cluster(store.clone(), "s3://b/p".into(), NodeId::generate(), true);
        assert!(matches!(a.check(), Err(OwnerError::ClusterUnknown { .. })));
        a.set_cluster("c1");
        assert_eq!(a.claim().unwrap(), Claim::Created);
        // Another member of the same cluster: the prefix is its too.
        let b =
            ArchiveOwner::for_cluster(store.clone(), "s3://b/p".into(), NodeId::generate(), true);
        b.set_cluster("c1");
        assert_eq!(b.claim().unwrap(), Claim::Ours);
        let marker = read_marker(store.as_ref(), "p").unwrap().unwrap();
        assert_eq!(
            (marker.kind.as_str(), marker.owner.as_str()),
            ("cluster", "c1")
        );
        // Another cluster, or a single node, finds it taken.
        let other =
            ArchiveOwner::for_cluster(store.clone(), "s3://b/p".into(), NodeId::generate(), true);
        other.set_cluster("c2");
        assert!(matches!(other.check(), Err(OwnerError::Foreign { .. })));
        let node = ArchiveOwner::new(store, "s3://b/p".into(), NodeId::generate());
        assert!(matches!(node.check(), Err(OwnerError::Foreign { .. })));
    }
}
