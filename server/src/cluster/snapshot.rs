//! Snapshots between members: what a leader offers a follower its log no
//! longer reaches, and how the follower gets it (docs/format.md).
//!
//! A snapshot is an engine checkpoint ([`Engine::checkpoint`]) kept in
//! `<data>/raft/snapshots/<index>`; the Raft message that offers it carries
//! only its descriptor (the index, and each file's path and size, as JSON).
//! The follower fetches the files from the node that sent the message
//! (`FetchSnapshot`) into `<data>/raft/incoming/<index>.partial`, checking
//! each chunk's CRC-32C and offset and each file's size; syncs them; renames
//! the directory to `<index>`; and only then steps the message into its Raft
//! node, which installs the checkpoint ([`Engine::install_checkpoint`]) in
//! place of the whole store. Neither side's Raft thread waits for the
//! transfer, and the leader's ingest never does.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use toplog_engine::Engine;
use toplog_proto::raft_v1::raft_client::RaftClient;
use toplog_proto::raft_v1::{SnapshotChunk, SnapshotRequest};

/// Bytes per chunk sent.
const CHUNK: usize = 1 << 20;
/// Snapshots a node keeps on offer (each holds links to the files it
/// lists, so it keeps their space while it is kept).
const KEEP_OFFERED: usize = 2;
const FORMAT: u32 = 1;
/// The directories inside a snapshot (as in the store).
const SUBDIRS: [&str; 3] = ["segments", "idempotency", "rollups"];
const MANIFEST: &str = "MANIFEST";
/// The audit log, beside the store's files in a snapshot.
const AUDIT: &str = "audit.log";

/// What a Raft snapshot message carries: where the files are, not them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Descriptor {
    format: u32,
    pub(crate) index: u64,
    /// Path inside the snapshot → size in bytes.
    files: BTreeMap<String, u64>,
    /// The retention policy in force at `index` (small: it travels in the
    /// Raft message itself).
    pub(crate) retention: serde_json::Value,
    /// The cluster's shared API keys at `index` (hashes, never secrets).
    #[serde(default)]
    pub(crate) keys: Vec<crate::auth::StoredKey>,
    /// The aggregation jobs kept at `index`, as submitted (their results
    /// are derived: the receiver runs them).
    #[serde(default)]
    pub(crate) jobs: Vec<toplog_query::Job>,
    /// The log index the node's state above (policy, keys, audit, jobs) is
    /// as of: at or past `index` (the store may have flushed less than was
    /// applied). The receiver applies no such change up to it again.
    #[serde(default)]
    pub(crate) state_index: u64,
    /// The cluster's id, once the log has said it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) cluster_id: Option<String>,
    /// The alerting state (rules, alerts) at `state_index`.
    #[serde(default)]
    pub(crate) alerting: toplog_alerting::AlertState,
    /// A sharded cluster's shard map at `state_index`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) placement: Option<super::shards::ShardMap>,
}

/// The node's state besides the store, as a snapshot carries it.
pub(crate) struct NodeState {
    pub(crate) retention: serde_json::Value,
    pub(crate) keys: Vec<crate::auth::StoredKey>,
    /// The audit log's file, copied into the snapshot.
    pub(crate) audit: Option<PathBuf>,
    pub(crate) jobs: Vec<toplog_query::Job>,
    /// The log index this state is as of.
    pub(crate) index: u64,
    pub(crate) cluster_id: Option<String>,
    pub(crate) alerting: toplog_alerting::AlertState,
    pub(crate) placement: Option<super::shards::ShardMap>,
}

impl Descriptor {
    pub(crate) fn parse(data: &[u8]) -> Result<Self, String> {
        let d: Self = serde_json::from_slice(data)
            .map_err(|e| format!("a snapshot descriptor that does not parse: {e}"))?;
        if d.format != FORMAT {
            return Err(format!(
                "snapshot format {} (this build reads {FORMAT})",
                d.format
            ));
        }
        if let Some(bad) = d.files.keys().find(|p| checked_path(p).is_none()) {
            return Err(format!("a snapshot names the file `{bad}`"));
        }
        if !d.files.contains_key(MANIFEST) {
            return Err("a snapshot without its manifest".into());
        }
        Ok(d)
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.files.values().sum()
    }
}

/// `path` as a relative path inside a snapshot, if it is one of its files:
/// `MANIFEST`, or `<subdir>/<name>` with a plain name.
fn checked_path(path: &str) -> Option<PathBuf> {
    if path == MANIFEST || path == AUDIT {
        return Some(PathBuf::from(path));
    }
    let (sub, name) = path.split_once('/')?;
    let plain = !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    (SUBDIRS.contains(&sub) && plain).then(|| Path::new(sub).join(name))
}

/// Where a node keeps snapshots it offers and snapshots it receives.
#[derive(Debug, Clone)]
pub(crate) struct SnapshotDirs {
    raft_dir: PathBuf,
}

impl SnapshotDirs {
    /// In `raft_dir`; what an interrupted transfer left is removed.
    pub(crate) fn open(raft_dir: &Path) -> std::io::Result<Self> {
        let dirs = Self {
            raft_dir: raft_dir.to_path_buf(),
        };
        for d in [dirs.offered_root(), dirs.incoming_root()] {
            if d.exists() {
                std::fs::remove_dir_all(&d)?;
            }
            std::fs::create_dir_all(&d)?;
        }
        Ok(dirs)
    }

    fn offered_root(&self) -> PathBuf {
        self.raft_dir.join("snapshots")
    }

    fn incoming_root(&self) -> PathBuf {
        self.raft_dir.join("incoming")
    }

    fn offered(&self, index: u64) -> PathBuf {
        self.offered_root().join(index.to_string())
    }

    pub(crate) fn incoming(&self, index: u64) -> PathBuf {
        self.incoming_root().join(index.to_string())
    }

    /// The audit log received with snapshot `index`, if it came with one.
    pub(crate) fn received_audit(&self, index: u64) -> Option<PathBuf> {
        Some(self.incoming(index).join(AUDIT)).filter(|p| p.exists())
    }

    /// Makes a snapshot of `engine` at index `at_least` or later, and offers
    /// it: its index and descriptor. `None` until the engine has flushed
    /// that far.
    pub(crate) fn make(
        &self,
        engine: &Engine,
        at_least: u64,
        applied: u64,
        state: NodeState,
    ) -> Result<Option<(u64, Vec<u8>)>, String> {
        let making = self.offered_root().join("making");
        if making.exists() {
            std::fs::remove_dir_all(&making).map_err(|e| format!("{}: {e}", making.display()))?;
        }
        let Some(index) = engine
            .checkpoint(&making, at_least, applied)
            .map_err(|e| e.to_string())?
        else {
            return Ok(None);
        };
        let dir = self.offered(index);
        let io = |e: std::io::Error| format!("{}: {e}", dir.display());
        if let Some(audit) = state.audit.as_deref().filter(|a| a.exists()) {
            std::fs::copy(audit, making.join(AUDIT)).map_err(io)?;
        }
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io)?;
        }
        std::fs::rename(&making, &dir).map_err(io)?;
        self.prune_offered().map_err(io)?;
        let descriptor = Descriptor {
            format: FORMAT,
            index,
            files: list(&dir).map_err(io)?,
            retention: state.retention,
            keys: state.keys,
            jobs: state.jobs,
            state_index: state.index,
            cluster_id: state.cluster_id,
            alerting: state.alerting,
            placement: state.placement,
        };
        tracing::info!(
            index,
            bytes = descriptor.bytes(),
            files = descriptor.files.len(),
            "snapshot offered"
        );
        let data = serde_json::to_vec(&descriptor).map_err(|e| e.to_string())?;
        Ok(Some((index, data)))
    }

    /// Removes every snapshot on offer (a rekey: they link files sealed
    /// under a retired key). The next is made when a follower needs one.
    pub(crate) fn withdraw(&self) -> std::io::Result<()> {
        let root = self.offered_root();
        std::fs::remove_dir_all(&root)?;
        std::fs::create_dir_all(&root)
    }

    /// Keeps the newest snapshots on offer, removing the rest.
    fn prune_offered(&self) -> std::io::Result<()> {
        let mut indexes: Vec<u64> = std::fs::read_dir(self.offered_root())?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        indexes.sort_unstable();
        let drop = indexes.len().saturating_sub(KEEP_OFFERED);
        for index in &indexes[..drop] {
            std::fs::remove_dir_all(self.offered(*index))?;
        }
        Ok(())
    }

    /// Replaces `engine`'s store with received snapshot `index` (described
    /// by `descriptor`), then removes its files.
    pub(crate) fn install(
        &self,
        engine: &Engine,
        index: u64,
        descriptor: &Descriptor,
    ) -> Result<(), String> {
        if descriptor.index != index {
            return Err(format!(
                "snapshot {index}'s descriptor says index {}",
                descriptor.index
            ));
        }
        let dir = self.incoming(index);
        if !dir.exists() {
            return Err(format!(
                "snapshot {index} was not received ({} is missing)",
                dir.display()
            ));
        }
        let installed = engine.install_checkpoint(&dir).map_err(|e| e.to_string())?;
        if installed != index {
            return Err(format!(
                "snapshot {index} holds the store at index {installed}"
            ));
        }
        std::fs::remove_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        tracing::info!(index, "snapshot installed");
        Ok(())
    }

    /// Streams offered snapshot `index` chunk by chunk into `tx` (on a
    /// blocking thread); `fetched` is called as each chunk goes, and
    /// `ended` once with whether every chunk went.
    pub(crate) fn send(
        &self,
        index: u64,
        tx: mpsc::Sender<Result<SnapshotChunk, tonic::Status>>,
        fetched: impl Fn() + Send + 'static,
        ended: impl FnOnce(bool) + Send + 'static,
    ) -> Result<(), tonic::Status> {
        let dir = self.offered(index);
        let files = list(&dir).map_err(|_| {
            tonic::Status::not_found(format!("snapshot {index} is not on offer here"))
        })?;
        tokio::task::spawn_blocking(move || {
            for path in files.keys() {
                let full = dir.join(path);
                match send_file(path, &full, &tx, &fetched) {
                    Ok(true) => {}
                    Ok(false) => return ended(false),
                    Err(e) => {
                        let _ = tx.blocking_send(Err(tonic::Status::internal(format!(
                            "reading {}: {e}",
                            full.display()
                        ))));
                        return ended(false);
                    }
                }
            }
            ended(true);
        });
        Ok(())
    }
}

/// Sends one file (a file of no bytes is one empty chunk); false if the
/// caller went away.
fn send_file(
    path: &str,
    full: &Path,
    tx: &mpsc::Sender<Result<SnapshotChunk, tonic::Status>>,
    fetched: &impl Fn(),
) -> std::io::Result<bool> {
    let mut file = std::fs::File::open(full)?;
    let mut offset = 0u64;
    loop {
        let mut data = Vec::with_capacity(CHUNK);
        (&mut file).take(CHUNK as u64).read_to_end(&mut data)?;
        let len = data.len() as u64;
        if len == 0 && offset > 0 {
            return Ok(true);
        }
        let chunk = SnapshotChunk {
            path: path.to_owned(),
            offset,
            crc32c: crc32c::crc32c(&data),
            data,
        };
        if tx.blocking_send(Ok(chunk)).is_err() {
            return Ok(false);
        }
        fetched();
        offset += len;
        if len < CHUNK as u64 {
            return Ok(true);
        }
    }
}

/// Every file of the snapshot in `dir`: path inside it → size.
fn list(dir: &Path) -> std::io::Result<BTreeMap<String, u64>> {
    let mut files = BTreeMap::new();
    files.insert(
        MANIFEST.to_owned(),
        std::fs::metadata(dir.join(MANIFEST))?.len(),
    );
    if let Ok(audit) = std::fs::metadata(dir.join(AUDIT)) {
        files.insert(AUDIT.to_owned(), audit.len());
    }
    for sub in SUBDIRS {
        for entry in std::fs::read_dir(dir.join(sub))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            files.insert(format!("{sub}/{name}"), entry.metadata()?.len());
        }
    }
    Ok(files)
}

/// Fetches snapshot `descriptor` from the node `client` reaches into
/// `dirs.incoming(index)`, every chunk and file checked (see the module's docs).
pub(crate) async fn fetch(
    client: &mut RaftClient<tonic::transport::Channel>,
    bearer: Option<&tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    (me, group): (u64, u64),
    descriptor: &Descriptor,
    dirs: &SnapshotDirs,
) -> Result<(), String> {
    let index = descriptor.index;
    let done = dirs.incoming(index);
    let partial = dirs.incoming_root().join(format!("{index}.partial"));
    let io = |what: &str, path: &Path, e: std::io::Error| format!("{what} {}: {e}", path.display());
    if tokio::fs::try_exists(&partial).await.unwrap_or(false) {
        tokio::fs::remove_dir_all(&partial)
            .await
            .map_err(|e| io("remove", &partial, e))?;
    }
    for sub in SUBDIRS {
        let d = partial.join(sub);
        tokio::fs::create_dir_all(&d)
            .await
            .map_err(|e| io("create", &d, e))?;
    }
    let mut request = tonic::Request::new(SnapshotRequest {
        from: me,
        index,
        group,
    });
    if let Some(bearer) = bearer {
        request
            .metadata_mut()
            .insert("authorization", bearer.clone());
    }
    let mut stream = client
        .fetch_snapshot(request)
        .await
        .map_err(|e| format!("asking for snapshot {index}: {}", e.message()))?
        .into_inner();
    let mut complete: BTreeMap<String, u64> = BTreeMap::new();
    let mut open: Option<(String, tokio::fs::File, u64)> = None;
    while let Some(chunk) = stream
        .message()
        .await
        .map_err(|e| format!("receiving snapshot {index}: {}", e.message()))?
    {
        let Some(&size) = descriptor.files.get(&chunk.path) else {
            return Err(format!(
                "snapshot {index}: a chunk of `{}`, which it does not list",
                chunk.path
            ));
        };
        if crc32c::crc32c(&chunk.data) != chunk.crc32c {
            return Err(format!(
                "snapshot {index}: `{}` at offset {}: checksum mismatch",
                chunk.path, chunk.offset
            ));
        }
        if open.as_ref().is_none_or(|(p, _, _)| *p != chunk.path) {
            if let Some((path, file, written)) = open.take() {
                finish(&path, file, written, &descriptor.files, &mut complete).await?;
            }
            if complete.contains_key(&chunk.path) {
                return Err(format!("snapshot {index}: `{}` sent twice", chunk.path));
            }
            let rel = checked_path(&chunk.path).ok_or("a checked path")?;
            let full = partial.join(rel);
            let file = tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&full)
                .await
                .map_err(|e| io("create", &full, e))?;
            open = Some((chunk.path.clone(), file, 0));
        }
        let Some((path, file, written)) = open.as_mut() else {
            return Err("no file open".into());
        };
        if chunk.offset != *written || *written + chunk.data.len() as u64 > size {
            return Err(format!(
                "snapshot {index}: `{path}`: a chunk at offset {} of {} bytes, with {written} of {size} written",
                chunk.offset,
                chunk.data.len()
            ));
        }
        file.write_all(&chunk.data)
            .await
            .map_err(|e| format!("writing `{path}`: {e}"))?;
        *written += chunk.data.len() as u64;
    }
    if let Some((path, file, written)) = open.take() {
        finish(&path, file, written, &descriptor.files, &mut complete).await?;
    }
    if complete.len() != descriptor.files.len() {
        let missing: Vec<&String> = (descriptor.files.keys())
            .filter(|p| !complete.contains_key(*p))
            .collect();
        return Err(format!("snapshot {index}: files not sent: {missing:?}"));
    }
    for d in SUBDIRS
        .iter()
        .map(|s| partial.join(s))
        .chain([partial.clone()])
    {
        sync_dir(&d).await.map_err(|e| io("fsync", &d, e))?;
    }
    tokio::fs::rename(&partial, &done)
        .await
        .map_err(|e| io("rename", &partial, e))?;
    sync_dir(&dirs.incoming_root())
        .await
        .map_err(|e| io("fsync", &dirs.incoming_root(), e))
}

/// Ends a received file: its size must be the descriptor's; it is synced.
async fn finish(
    path: &str,
    mut file: tokio::fs::File,
    written: u64,
    sizes: &BTreeMap<String, u64>,
    complete: &mut BTreeMap<String, u64>,
) -> Result<(), String> {
    let size = sizes.get(path).copied().unwrap_or_default();
    if written != size {
        return Err(format!("`{path}`: {written} bytes received of {size}"));
    }
    file.flush().await.map_err(|e| format!("`{path}`: {e}"))?;
    file.sync_all()
        .await
        .map_err(|e| format!("`{path}`: {e}"))?;
    complete.insert(path.to_owned(), written);
    Ok(())
}

async fn sync_dir(dir: &Path) -> std::io::Result<()> {
    tokio::fs::File::open(dir).await?.sync_all().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_files_of_a_snapshot_are_named() {
        assert!(checked_path("MANIFEST").is_some());
        assert!(checked_path("audit.log").is_some());
        assert!(checked_path("segments/i30-0000000000000001.seg").is_some());
        assert!(checked_path("rollups/00000000000000000030.cube").is_some());
        for bad in [
            "../MANIFEST",
            "segments/../../etc/passwd",
            "segments/",
            "segments/.hidden",
            "wal/x",
            "/segments/x",
            "segments/a/b",
            "MANIFEST.tmp",
        ] {
            assert!(checked_path(bad).is_none(), "{bad}");
        }
    }
}
