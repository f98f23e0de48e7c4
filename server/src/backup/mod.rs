//! Backups of a node's state (docs/operations.md, "Backups"): taken online
//! from a running node, checked, and restored into a new data directory.
//!
//! A backup location (a folder or `s3://bucket/prefix`) holds:
//!
//! ```text
//! objects/<sha256 of the bytes>   each file's bytes, once whatever backups hold it
//! backups/<id>.manifest           one backup: the first line `toplog-backup sha256:<hex>`
//!                                 over the JSON that follows (a [`Manifest`])
//! ```
//!
//! Files are stored by the SHA-256 of their bytes, so a backup copies only
//! what no earlier backup there holds: segments never change once written,
//! so a second backup of an idle node copies none. Bytes are copied as the
//! node keeps them: what is encrypted at rest stays so, and the manifest
//! names the keys a restore needs.

mod command;
mod restore;
mod schedule;
mod take;

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use toplog_compaction::{ArchiveConfig, ObjectArchive};

pub(crate) use command::{BackupArgs, RestoreArgs, backup, restore as restore_command};
pub(crate) use restore::{restore, verify};
pub(crate) use schedule::{Backups, prune, run_every};
pub(crate) use take::{Source, Taken, take};

/// The manifest format this build writes and reads.
const FORMAT: u32 = 1;
/// The first line of a manifest object, before the checksum.
const MAGIC: &str = "toplog-backup sha256:";
const MANIFESTS: &str = "backups/";
const MANIFEST_SUFFIX: &str = ".manifest";

/// `[backup]` in the config file: where backups go, how often the node takes
/// one and how many it keeps; the other keys are S3's, as for `[archive]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BackupSettings {
    pub(crate) url: Option<String>,
    /// How often the node backs itself up (`6h`); unset: only when asked.
    pub(crate) every: Option<String>,
    /// How many backups the schedule keeps (default 7); older ones, and the
    /// objects only they held, are removed after each scheduled backup.
    pub(crate) keep: Option<usize>,
    /// Whether an archive outside the data directory (S3) is copied into
    /// each backup too (default true; its objects once each).
    pub(crate) archive: Option<bool>,
    pub(crate) endpoint: Option<String>,
    pub(crate) region: Option<String>,
    pub(crate) access_key_id: Option<String>,
    pub(crate) secret_access_key: Option<String>,
    pub(crate) allow_http: Option<bool>,
}

impl BackupSettings {
    /// The location at `url`, reached with these S3 settings.
    pub(crate) fn open(&self, url: &str, base: &Path) -> anyhow::Result<ObjectArchive> {
        let config = ArchiveConfig {
            url: Some(url.to_owned()),
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret_access_key.clone(),
            allow_http: self.allow_http,
        };
        ObjectArchive::open(&config, base)
            .map_err(|e| anyhow::anyhow!("backup location `{url}`: {e}"))
    }
}

/// One file of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileEntry {
    /// Lowercase hex; also the name of its object.
    pub(crate) sha256: String,
    pub(crate) bytes: u64,
}

/// What one backup holds (docs/format.md, "Backups").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Manifest {
    pub(crate) format: u32,
    pub(crate) id: String,
    pub(crate) created_at: String,
    pub(crate) toplog_version: String,
    /// The node it was taken from (`NODE_ID`).
    pub(crate) node_id: String,
    /// The log index the store stands at: every batch acknowledged up to it,
    /// nothing after.
    pub(crate) index: u64,
    /// A sharded node's backup: each shard it holds, and the index of the
    /// shard's log its files (under `shards/<n>/`) hold the store at.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) shards: BTreeMap<u32, u64>,
    /// The encryption keys (ids) a restored node needs.
    pub(crate) key_ids: Vec<String>,
    /// An archive outside the data directory (S3) that the store's archived
    /// segments are in. `None`: the archive is a folder of the data
    /// directory, and in `files`.
    pub(crate) external_archive: Option<String>,
    /// Path in the data directory → its bytes.
    pub(crate) files: BTreeMap<String, FileEntry>,
    /// The external archive's objects, by key, when copied (a restore puts
    /// them into a new archive with `--archive-to`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) archive_objects: BTreeMap<String, FileEntry>,
}

impl Manifest {
    /// The object's text: the checksum line, then the JSON.
    fn encode(&self) -> anyhow::Result<Vec<u8>> {
        let json = serde_json::to_vec_pretty(self)?;
        let mut out = format!("{MAGIC}{}\n", sha256_hex(&json)).into_bytes();
        out.extend_from_slice(&json);
        Ok(out)
    }

    /// Reads a manifest object, refusing one whose checksum or format is wrong.
    fn decode(id: &str, bytes: &[u8]) -> Result<Self, String> {
        let damaged = |why: &str| format!("backup {id}: the manifest is damaged ({why})");
        let newline =
            (bytes.iter().position(|b| *b == b'\n')).ok_or_else(|| damaged("no header line"))?;
        let header = std::str::from_utf8(&bytes[..newline]).map_err(|_| damaged("header"))?;
        let want = header
            .strip_prefix(MAGIC)
            .ok_or_else(|| damaged("not a toplog backup manifest"))?;
        let json = &bytes[newline + 1..];
        if sha256_hex(json) != want {
            return Err(damaged("checksum mismatch"));
        }
        let m: Self = serde_json::from_slice(json).map_err(|e| damaged(&e.to_string()))?;
        if m.format != FORMAT {
            return Err(format!(
                "backup {id}: format {} (this build reads {FORMAT})",
                m.format
            ));
        }
        if m.id != id {
            return Err(damaged(&format!("it names itself {}", m.id)));
        }
        if let Some(bad) = (m.files.keys().chain(m.archive_objects.keys())).find(|p| !safe_path(p))
        {
            return Err(damaged(&format!("it names the file `{bad}`")));
        }
        Ok(m)
    }

    pub(crate) fn bytes(&self) -> u64 {
        (self.files.values().chain(self.archive_objects.values()))
            .map(|f| f.bytes)
            .sum()
    }

    /// Every file and archive object, each with what names it.
    pub(crate) fn entries(&self) -> impl Iterator<Item = (String, &FileEntry)> {
        let files = self.files.iter().map(|(p, e)| (p.clone(), e));
        let archive =
            (self.archive_objects.iter()).map(|(k, e)| (format!("archive object {k}"), e));
        files.chain(archive)
    }
}

fn manifest_key(id: &str) -> String {
    format!("{MANIFESTS}{id}{MANIFEST_SUFFIX}")
}

fn object_key(sha256: &str) -> String {
    format!("objects/{sha256}")
}

/// The ids of every backup at a location, oldest first (ids sort by time).
pub(crate) fn list(store: &ObjectArchive) -> std::io::Result<Vec<String>> {
    use toplog_engine::ArchiveStore;
    let mut ids: Vec<String> = (store.list(MANIFESTS)?.into_iter())
        .filter_map(|k| {
            let name = k.rsplit('/').next()?;
            Some(name.strip_suffix(MANIFEST_SUFFIX)?.to_owned())
        })
        .collect();
    ids.sort();
    Ok(ids)
}

/// Backup `id`'s manifest, checked.
pub(crate) fn read_manifest(store: &ObjectArchive, id: &str) -> Result<Manifest, String> {
    let key = manifest_key(id);
    let bytes = read_object(store, &key).map_err(|e| format!("backup {id}: {key}: {e}"))?;
    Manifest::decode(id, &bytes)
}

/// The whole of object `key` (a manifest: small).
fn read_object(store: &ObjectArchive, key: &str) -> std::io::Result<bytes::Bytes> {
    use toplog_engine::ArchiveStore;
    let size = store.size(key)?;
    if size == 0 {
        return Ok(bytes::Bytes::new());
    }
    store.get_range(key, 0..size)
}

/// Bytes read or written at a time: large files are never held whole.
const PIECE: u64 = 8 << 20;

/// Copies object `key` into `out` a piece at a time: its SHA-256 and size.
fn copy_object(
    store: &ObjectArchive,
    key: &str,
    out: &mut impl std::io::Write,
) -> std::io::Result<(String, u64)> {
    use toplog_engine::ArchiveStore;
    let size = store.size(key)?;
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut at = 0;
    while at < size {
        let piece = store.get_range(key, at..size.min(at + PIECE))?;
        if piece.is_empty() {
            return Err(std::io::Error::other(format!(
                "{key}: ends at {at} of {size} bytes"
            )));
        }
        ctx.update(&piece);
        out.write_all(&piece)?;
        at += piece.len() as u64;
    }
    Ok((hex(ctx.finish().as_ref()), size))
}

/// The SHA-256 of a file's bytes and its length, read a piece at a time.
fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
        len += n as u64;
    }
    Ok((hex(ctx.finish().as_ref()), len))
}

/// A relative path in a data directory, with no way out of it.
fn safe_path(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && path.split('/').all(|part| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'='))
        })
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            format: FORMAT,
            id: "20261205T120000000Z-00000000000000000042".into(),
            created_at: "2026-12-05T12:00:00Z".into(),
            toplog_version: "0.1.0".into(),
            node_id: "n".into(),
            index: 42,
            shards: BTreeMap::new(),
            key_ids: vec![],
            external_archive: None,
            archive_objects: BTreeMap::new(),
            files: BTreeMap::from([(
                "MANIFEST".into(),
                FileEntry {
                    sha256: sha256_hex(b"m"),
                    bytes: 1,
                },
            )]),
        }
    }

    #[test]
    fn a_manifest_reads_back_and_any_changed_byte_is_refused() {
        let m = manifest();
        let bytes = m.encode().unwrap();
        assert_eq!(Manifest::decode(&m.id, &bytes).unwrap(), m);
        for i in [0, MAGIC.len() + 3, bytes.len() / 2, bytes.len() - 2] {
            let mut bad = bytes.clone();
            bad[i] ^= 1;
            let err = Manifest::decode(&m.id, &bad).unwrap_err();
            assert!(err.contains("damaged"), "byte {i}: {err}");
        }
        assert!(
            Manifest::decode("other", &bytes)
                .unwrap_err()
                .contains("names itself")
        );
    }

    #[test]
    fn an_object_is_copied_and_hashed_a_piece_at_a_time() {
        use toplog_engine::ArchiveStore;
        let dir = tempfile::tempdir().unwrap();
        let store = BackupSettings::default()
            .open("location", dir.path())
            .unwrap();
        let bytes: Vec<u8> = (0..(2 * PIECE + 77)).map(|i| (i % 253) as u8).collect();
        store.create("objects/x", bytes.clone().into()).unwrap();
        let mut out = Vec::new();
        let (sha, size) = copy_object(&store, "objects/x", &mut out).unwrap();
        assert_eq!((sha, size), (sha256_hex(&bytes), bytes.len() as u64));
        assert!(out == bytes);
        let file = dir.path().join("f");
        std::fs::write(&file, &bytes).unwrap();
        assert_eq!(
            sha256_file(&file).unwrap(),
            (sha256_hex(&bytes), bytes.len() as u64)
        );
    }

    #[test]
    fn only_paths_inside_the_data_directory_are_taken() {
        for ok in [
            "MANIFEST",
            "segments/0001.seg",
            "archive/raw/day=2026-12-01/1.parquet",
            "jobs/x.json",
        ] {
            assert!(safe_path(ok), "{ok}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "./a",
            "a/b c",
        ] {
            assert!(!safe_path(bad), "{bad}");
        }
    }
}
