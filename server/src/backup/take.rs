//! Taking a backup of a running node: the store as a checkpoint (hard links
//! to its files as of a flushed log index, taken while ingest goes on), the
//! node's state files beside it, and the archive when it is a folder of the
//! data directory; each file copied unless the location already holds its
//! bytes, the manifest last.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use toplog_compaction::{ArchiveConfig, ObjectArchive};
use toplog_crypt::KeyUse;
use toplog_engine::{ArchiveStore, Engine};

use super::{
    FORMAT, FileEntry, Manifest, manifest_key, object_key, safe_path, sha256_file, sha256_hex,
};

/// Where the checkpoint a backup copies is linked, in the data directory.
const STAGING: &str = "backup-checkpoint";
/// How long a backup waits for the store to flush up to the index applied
/// when it began.
const FLUSH_WAIT: Duration = Duration::from_secs(120);

/// What a backup did.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Taken {
    pub(crate) id: String,
    pub(crate) url: String,
    /// The log index the backup holds the store at.
    pub(crate) index: u64,
    /// A sharded node's: each shard it holds a replica of, and the index of
    /// the shard's log the backup holds that replica's store at.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) shards: BTreeMap<u32, u64>,
    pub(crate) files: usize,
    pub(crate) bytes: u64,
    /// Files whose bytes the location did not hold yet, and their bytes.
    pub(crate) copied_files: usize,
    pub(crate) copied_bytes: u64,
    pub(crate) key_ids: Vec<String>,
    pub(crate) took_ms: u64,
}

/// The node a backup is taken of.
pub(crate) struct Source<'a> {
    pub(crate) engine: &'a Engine,
    /// A cluster member's last applied Raft index; `None` on a single node
    /// (the store's own).
    pub(crate) applied: Option<u64>,
    pub(crate) archive: &'a ArchiveConfig,
    /// Whether an archive outside the data directory is copied too.
    pub(crate) copy_archive: bool,
    /// A sharded node's replicas: (shard, its store, its group's last
    /// applied index), each copied as of that index under `shards/<n>/`.
    pub(crate) shards: Vec<(u32, &'a Engine, u64)>,
}

/// Takes a backup of `source` into `store` (at `url`).
pub(crate) fn take(source: &Source, store: &ObjectArchive, url: &str) -> anyhow::Result<Taken> {
    let started = Instant::now();
    let engine = source.engine;
    let data_dir = engine.data_dir();
    let staging = data_dir.join(STAGING);
    let result = (|| {
        let index = checkpoint(engine, &staging, source.applied)?;
        // The store's files and the archive's never change once written;
        // the state files may change while they are read: each is read
        // whole (they are small), and the bytes read are the ones kept.
        let mut files: Vec<(String, PathBuf)> = Vec::new();
        walk(&staging, &staging, &mut files)?;
        // Each shard's replica as of its own log's index: a shard is
        // consistent in itself (shards share no batch order).
        let mut shards = BTreeMap::new();
        for (shard, store, applied) in &source.shards {
            let rel = crate::cluster::shard_dir(Path::new(""), *shard);
            let dir = staging.join(&rel);
            std::fs::create_dir_all(&dir)?;
            shards.insert(*shard, checkpoint(store, &dir, Some(*applied))?);
            let mut of_shard = Vec::new();
            walk(&dir, &dir, &mut of_shard)?;
            files.extend(
                (of_shard.into_iter())
                    .map(|(name, path)| (format!("{}/{name}", rel.display()), path)),
            );
        }
        let state: Vec<String> = (crate::node_state::files(data_dir).into_iter())
            .map(|(rel, _)| rel)
            .collect();
        let external_archive = match archive_folder(source.archive, data_dir) {
            Ok(folder) => {
                if folder.is_dir() {
                    walk(data_dir, &folder, &mut files)?;
                }
                None
            }
            Err(location) => Some(location),
        };
        let mut taken = Taken {
            id: String::new(),
            url: url.to_owned(),
            index,
            shards: shards.clone(),
            files: 0,
            bytes: 0,
            copied_files: 0,
            copied_bytes: 0,
            key_ids: key_ids(engine, &source.shards, data_dir)?,
            took_ms: 0,
        };
        let (mut entries, mut archive_objects) = (BTreeMap::new(), BTreeMap::new());
        let mut keep = |to: &mut BTreeMap<String, FileEntry>,
                        rel: String,
                        (entry, copied): (FileEntry, bool)| {
            if copied {
                taken.copied_files += 1;
                taken.copied_bytes += entry.bytes;
            }
            taken.files += 1;
            taken.bytes += entry.bytes;
            to.insert(rel, entry);
        };
        for rel in state {
            let path = data_dir.join(&rel);
            let bytes = match std::fs::read(&path) {
                Ok(bytes) => bytes,
                // Gone since it was listed (an aggregation job past its TTL).
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => anyhow::bail!("reading {}: {e}", path.display()),
            };
            keep(&mut entries, rel, put_bytes(store, bytes)?);
        }
        for (rel, path) in files {
            match put_file(store, &path) {
                Ok(put) => keep(&mut entries, rel, put),
                // An archived object purged since it was listed.
                Err(e) if e.kind() == ErrorKind::NotFound && rel.starts_with("archive/") => {}
                Err(e) => anyhow::bail!("{}: {e}", path.display()),
            }
        }
        if external_archive.is_some() && source.copy_archive {
            let archive = ObjectArchive::open(source.archive, data_dir)?;
            let scratch = staging.join(".archive-object");
            for (key, put) in copy_archive(&archive, store, &scratch)? {
                keep(&mut archive_objects, key, put);
            }
        }
        let now = chrono::Utc::now();
        taken.id = format!("{}-{index:020}", now.format("%Y%m%dT%H%M%S%3fZ"));
        let manifest = Manifest {
            format: FORMAT,
            id: taken.id.clone(),
            created_at: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            toplog_version: env!("CARGO_PKG_VERSION").to_owned(),
            node_id: node_id(data_dir),
            index,
            shards,
            key_ids: taken.key_ids.clone(),
            external_archive,
            files: entries,
            archive_objects,
        };
        let key = manifest_key(&manifest.id);
        store
            .create(&key, manifest.encode()?.into())
            .map_err(|e| anyhow::anyhow!("writing {key}: {e}"))?;
        taken.took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        Ok(taken)
    })();
    if staging.exists()
        && let Err(e) = std::fs::remove_dir_all(&staging)
    {
        tracing::warn!(error = %e, path = %staging.display(), "the backup's checkpoint links were not removed");
    }
    result
}

/// Links a checkpoint of the store into `dir`, as of the index applied now
/// (or later): the store is flushed that far first. Its index.
fn checkpoint(engine: &Engine, dir: &Path, applied: Option<u64>) -> anyhow::Result<u64> {
    let at_least = applied.unwrap_or_else(|| engine.applied_index());
    let deadline = Instant::now() + FLUSH_WAIT;
    loop {
        if dir.exists() {
            std::fs::remove_dir_all(dir)
                .map_err(|e| anyhow::anyhow!("removing {}: {e}", dir.display()))?;
        }
        let applied_now = applied.unwrap_or_else(|| engine.applied_index());
        if let Some(index) = engine.checkpoint(dir, at_least, applied_now)? {
            return Ok(index);
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "the store did not flush up to index {at_least} in {FLUSH_WAIT:?}; no backup was taken"
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every file under `dir`, as (path relative to `root`, path); names the
/// manifest could not hold (an object store's temporary files) are left out.
fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) -> anyhow::Result<()> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| anyhow::anyhow!("listing {}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            walk(root, &path, out)?;
        } else if let Some(rel) = path
            .strip_prefix(root)
            .ok()
            .and_then(|r| r.to_str())
            .filter(|r| safe_path(r))
        {
            out.push((rel.to_owned(), path.clone()));
        }
    }
    Ok(())
}

/// The archive's folder when it is in the data directory (then it is
/// backed up with it); otherwise its location, which the backup names.
fn archive_folder(config: &ArchiveConfig, data_dir: &Path) -> Result<PathBuf, String> {
    let url = config.url.clone().unwrap_or_else(|| "archive".into());
    if url.contains("://") || Path::new(&url).is_absolute() {
        return Err(url);
    }
    Ok(data_dir.join(url))
}

/// Whether the location lacks `entry`'s object (a copy of another size,
/// damaged, is removed first).
fn lacks(store: &ObjectArchive, entry: &FileEntry) -> std::io::Result<bool> {
    let key = object_key(&entry.sha256);
    match store.size(&key) {
        Ok(size) if size == entry.bytes => Ok(false),
        Ok(_) => store.delete(&key).map(|()| true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e),
    }
}

/// Stores `bytes` unless the location holds them: their entry, and whether
/// they were copied.
fn put_bytes(store: &ObjectArchive, bytes: Vec<u8>) -> anyhow::Result<(FileEntry, bool)> {
    let entry = FileEntry {
        sha256: sha256_hex(&bytes),
        bytes: bytes.len() as u64,
    };
    let key = object_key(&entry.sha256);
    if !lacks(store, &entry).map_err(|e| anyhow::anyhow!("{key}: {e}"))? {
        return Ok((entry, false));
    }
    match store.create(&key, bytes.into()) {
        Ok(()) => Ok((entry, true)),
        // Written meanwhile by a backup of the same bytes.
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok((entry, false)),
        Err(e) => Err(anyhow::anyhow!("writing {key}: {e}")),
    }
}

/// Stores the file at `path` (which does not change) unless the location
/// holds its bytes, reading it a piece at a time: its entry, and whether it
/// was copied.
fn put_file(store: &ObjectArchive, path: &Path) -> std::io::Result<(FileEntry, bool)> {
    let (sha256, bytes) = sha256_file(path)?;
    put_known(store, path, FileEntry { sha256, bytes })
}

/// Every object of an outside archive, each copied into `store` unless it
/// holds its bytes (read through the file `scratch`): (key, its entry and
/// whether it was copied). An object the last backup there holds under the
/// same key and size is not read again: archive objects are written once.
fn copy_archive(
    archive: &ObjectArchive,
    store: &ObjectArchive,
    scratch: &Path,
) -> anyhow::Result<Vec<(String, (FileEntry, bool))>> {
    let last: BTreeMap<String, FileEntry> = (super::list(store)?.last())
        .and_then(|id| super::read_manifest(store, id).ok())
        .map(|m| m.archive_objects)
        .unwrap_or_default();
    let mut out = Vec::new();
    for key in archive.list("")?.into_iter().filter(|k| safe_path(k)) {
        let size = match archive.size(&key) {
            Ok(size) => size,
            Err(e) if e.kind() == ErrorKind::NotFound => continue, // purged meanwhile
            Err(e) => anyhow::bail!("archive object {key}: {e}"),
        };
        if let Some(entry) = last.get(&key).filter(|e| e.bytes == size)
            && !lacks(store, entry)?
        {
            out.push((key, (entry.clone(), false)));
            continue;
        }
        let mut file = std::io::BufWriter::new(std::fs::File::create(scratch)?);
        let (sha256, bytes) = match super::copy_object(archive, &key, &mut file) {
            Ok(got) => got,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => anyhow::bail!("archive object {key}: {e}"),
        };
        file.into_inner().map_err(|e| e.into_error())?;
        out.push((key, put_known(store, scratch, FileEntry { sha256, bytes })?));
    }
    Ok(out)
}

/// [`put_file`] of a file whose entry is known.
fn put_known(
    store: &ObjectArchive,
    path: &Path,
    entry: FileEntry,
) -> std::io::Result<(FileEntry, bool)> {
    if !lacks(store, &entry)? {
        return Ok((entry, false));
    }
    let key = object_key(&entry.sha256);
    if entry.bytes > super::PIECE {
        store.upload_file(&key, path)?;
        return Ok((entry, true));
    }
    match store.create(&key, std::fs::read(path)?.into()) {
        Ok(()) => Ok((entry, true)),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok((entry, false)),
        Err(e) => Err(e),
    }
}

/// The encryption keys the stores and the state files are under.
fn key_ids(
    engine: &Engine,
    shards: &[(u32, &Engine, u64)],
    data_dir: &Path,
) -> anyhow::Result<Vec<String>> {
    let mut usage = engine.key_usage()?;
    for (_, store, _) in shards {
        for (key, n) in store.key_usage()? {
            *usage.entry(key).or_default() += n;
        }
    }
    crate::node_state::count_key_use(data_dir, &mut usage);
    let mut ids: Vec<String> = (usage.into_keys())
        .filter_map(|k| match k {
            KeyUse::Key(id) => Some(id),
            KeyUse::Plain => None,
        })
        .collect();
    ids.sort();
    Ok(ids)
}

fn node_id(data_dir: &Path) -> String {
    toplog_compaction::NodeId::load_or_create(data_dir)
        .map(|id| id.to_string())
        .unwrap_or_default()
}
