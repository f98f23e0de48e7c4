//! The manifest: which segments and idempotency-key files make up the store,
//! and up to which log position their contents reach. Replaced atomically
//! (temp file, fsync, rename, directory fsync), so a crash leaves the old or
//! the new one, never a mix.
//!
//! File: magic `TPLGMAN\0` (8), version u32 = 1, payload length u32,
//! payload crc32c u32, then the payload as JSON.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use toplog_crypt::Cipher;
use toplog_types::{Lsn, Micros, SegmentId};
use toplog_wal::Fs;

use crate::error::{EngineError, Result, io_err, sealed_err};
use crate::segment::SegmentMeta;

const MAGIC: &[u8; 8] = b"TPLGMAN\0";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 20;
pub(crate) const FILE: &str = "MANIFEST";
const TMP_FILE: &str = "MANIFEST.tmp";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Manifest {
    /// Every log entry up to here is in the segments below.
    pub(crate) flushed_lsn: Lsn,
    pub(crate) last_segment_id: SegmentId,
    pub(crate) segments: Vec<SegmentEntry>,
    pub(crate) key_files: Vec<KeyFileEntry>,
    /// Rollup files, one per flush: the cells of the rows that flush wrote.
    #[serde(default)]
    pub(crate) rollup_files: Vec<String>,
    /// Rollups persisted per granularity and UTC day, each the whole of its
    /// buckets when written; `rollup_files` then holds only later flushes.
    #[serde(default)]
    pub(crate) rollup_tiers: Vec<RollupTierFile>,
    /// Bumped by each rewrite of tier files, so a new file never takes the
    /// name of one the manifest lists.
    #[serde(default)]
    pub(crate) rollup_generation: u64,
    /// Tier files whose copy in the archive has been written and verified.
    #[serde(default)]
    pub(crate) archived_rollups: Vec<String>,
    /// In a cluster: cut-offs applied from the log whose objects have not yet
    /// taken the place of this member's sealed segments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) pending_cutoffs: Vec<crate::engine::ArchiveCutoff>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RollupTierFile {
    pub(crate) file: String,
    /// `rollup_1m`, `rollup_1h` or `rollup_1d`.
    pub(crate) granularity: String,
    /// Start of the UTC day whose buckets the file holds.
    pub(crate) day: Micros,
    /// Buckets it holds, and the start of the first (for the storage
    /// report without reading it; 0 and `None` in files listed before these
    /// were recorded).
    #[serde(default)]
    pub(crate) buckets: u64,
    #[serde(default)]
    pub(crate) oldest: Option<Micros>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SegmentEntry {
    pub(crate) id: SegmentId,
    pub(crate) file: String,
    pub(crate) bytes: u64,
    pub(crate) meta: SegmentMeta,
    /// The object key once the segment is in the archive; `file` is then gone
    /// and `bytes` is the object's size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) archived: Option<String>,
    /// The id of the key the archived object is encrypted under; none: plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) archive_key_id: Option<String>,
    /// In a cluster: the index of the seal entry that closed the segment
    /// off for the cluster's archive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) sealed: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KeyFileEntry {
    pub(crate) file: String,
    /// Receive time of the newest key in the file; the file expires with it.
    pub(crate) newest: Micros,
}

pub(crate) fn segment_file_name(id: SegmentId) -> String {
    format!("{:016}.seg", id.get())
}

impl Manifest {
    /// Reads the manifest in `dir`; `None` for a new store.
    pub(crate) fn load(fs: &Arc<dyn Fs>, dir: &Path, cipher: &Cipher) -> Result<Option<Self>> {
        let path = dir.join(FILE);
        let sealed = match fs.read(&path) {
            Ok(buf) => buf,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        let buf = cipher.open(&sealed).map_err(sealed_err(&path))?;
        let corrupt = |reason: String| EngineError::Corrupt {
            path: path.clone(),
            reason,
        };
        if buf.len() < HEADER_LEN || &buf[..8] != MAGIC {
            return Err(corrupt("bad magic or short header".into()));
        }
        let word = |at: usize| u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
        if word(8) != VERSION {
            return Err(corrupt(format!("unsupported manifest version {}", word(8))));
        }
        let len = word(12) as usize;
        let payload = buf
            .get(HEADER_LEN..)
            .filter(|p| p.len() == len)
            .ok_or_else(|| corrupt("length mismatch".into()))?;
        if crc32c::crc32c(payload) != word(16) {
            return Err(corrupt("checksum mismatch".into()));
        }
        serde_json::from_slice(payload)
            .map(Some)
            .map_err(|e| corrupt(e.to_string()))
    }

    /// Atomically replaces the manifest in `dir` with `self`.
    pub(crate) fn store(&self, fs: &Arc<dyn Fs>, dir: &Path, cipher: &Cipher) -> Result<()> {
        let payload = serde_json::to_vec(self).map_err(|e| EngineError::Corrupt {
            path: dir.join(FILE),
            reason: format!("cannot serialize manifest: {e}"),
        })?;
        let mut buf = Vec::with_capacity(HEADER_LEN + payload.len());
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&VERSION.to_le_bytes());
        buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        buf.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
        buf.extend_from_slice(&payload);
        let tmp = dir.join(TMP_FILE);
        if fs.exists(&tmp) {
            fs.remove_file(&tmp).map_err(io_err("remove", &tmp))?;
        }
        write_durable(fs, &tmp, &cipher.seal(buf))?;
        let path = dir.join(FILE);
        fs.rename(&tmp, &path).map_err(io_err("rename", &tmp))?;
        fs.sync_dir(dir).map_err(io_err("fsync directory", dir))
    }
}

/// Creates `path` with `bytes` and fsyncs it (the caller fsyncs the directory).
pub(crate) fn write_durable(fs: &Arc<dyn Fs>, path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = fs.create(path).map_err(io_err("create", path))?;
    f.write_all(bytes).map_err(io_err("write", path))?;
    f.sync().map_err(io_err("fsync", path))
}

/// Removes files in `dir` that `keep` does not name: leftovers of a flush that
/// crashed before its manifest was written.
pub(crate) fn remove_orphans(fs: &Arc<dyn Fs>, dir: &Path, keep: &[&str]) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for name in fs.list(dir).map_err(io_err("list", dir))? {
        if !keep.contains(&name.as_str()) {
            let path = dir.join(&name);
            fs.remove_file(&path).map_err(io_err("remove", &path))?;
            removed.push(path);
        }
    }
    if !removed.is_empty() {
        fs.sync_dir(dir).map_err(io_err("fsync directory", dir))?;
    }
    Ok(removed)
}
