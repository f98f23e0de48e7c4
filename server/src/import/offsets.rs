//! The importer's own record of how far it got in each file, so that a
//! re-run (even after the node's 24-hour idempotency window) sends nothing
//! twice. A file is known by its identity (a hash of its first line), not by
//! its name: a log renamed by rotation, or compressed, is the same file.
//!
//! Before a batch is sent its range is written down as `sending`; once the
//! node acknowledges it, `done` moves past it. A run that finds a `sending`
//! range (the last one died between the two) sends exactly that range again,
//! under the same idempotency key, so the node stores it once.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// Where one file stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Position {
    /// Bytes (of the decompressed content) or rows already stored.
    pub(super) offset: u64,
    /// Lines already read, so errors past `offset` name the right line.
    pub(super) line: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Entry {
    /// The name the file had when last read (for people reading the file).
    path: PathBuf,
    done: Position,
    /// A batch sent but not known to be stored: from `done` to this.
    sending: Option<Position>,
}

/// The offset file, rewritten whole (write, fsync, rename) at each change,
/// and locked for as long as this value lives.
#[derive(Debug)]
pub(super) struct Offsets {
    path: PathBuf,
    files: BTreeMap<String, Entry>,
    _lock: std::fs::File,
}

impl Offsets {
    /// The default place: `$XDG_STATE_HOME/toplog/import.json`, else
    /// `~/.local/state/toplog/import.json`.
    pub(super) fn default_path() -> anyhow::Result<PathBuf> {
        let state = match std::env::var_os("XDG_STATE_HOME") {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => PathBuf::from(
                std::env::var_os("HOME")
                    .context("neither XDG_STATE_HOME nor HOME is set; give --state")?,
            )
            .join(".local/state"),
        };
        Ok(state.join("toplog/import.json"))
    }

    /// Opens (or starts) the offset file at `path`, refusing if another
    /// import holds it.
    pub(super) fn open(path: &Path) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let Some(lock) = crate::lock::try_lock(&path.with_extension("lock"))? else {
            anyhow::bail!(
                "another `toplog import` is using the offset file {} (give each its own with --state)",
                path.display()
            );
        };
        let files = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
                format!("the offset file {} is not one toplog wrote", path.display())
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        Ok(Self {
            path: path.to_owned(),
            files,
            _lock: lock,
        })
    }

    /// How far the file `identity` was stored, and the range (to its end)
    /// that was being sent when the last run stopped, if any.
    pub(super) fn get(&self, identity: &str) -> (Position, Option<Position>) {
        self.files
            .get(identity)
            .map_or_else(Default::default, |e| (e.done, e.sending))
    }

    /// Writes down that the batch from the file's `done` to `to` is being sent.
    pub(super) fn begin(
        &mut self,
        identity: &str,
        path: &Path,
        to: Position,
    ) -> anyhow::Result<()> {
        let entry = self.files.entry(identity.to_owned()).or_default();
        entry.path = path.to_owned();
        entry.sending = Some(to);
        self.save()
    }

    /// Writes down that the file is stored up to `to`.
    pub(super) fn commit(
        &mut self,
        identity: &str,
        path: &Path,
        to: Position,
    ) -> anyhow::Result<()> {
        let entry = self.files.entry(identity.to_owned()).or_default();
        entry.path = path.to_owned();
        entry.done = to;
        entry.sending = None;
        self.save()
    }

    fn save(&self) -> anyhow::Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(&self.files).map_err(std::io::Error::other)?)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().with_context(|| format!("cannot write the offset file {}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn positions_survive_a_reopen_and_one_importer_holds_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/import.json");
        let at = |offset, line| Position { offset, line };
        {
            let mut o = Offsets::open(&path).unwrap();
            assert!(
                Offsets::open(&path).is_err(),
                "a second importer is refused"
            );
            o.commit("a", Path::new("access.log"), at(100, 4)).unwrap();
            o.begin("a", Path::new("access.log"), at(250, 9)).unwrap();
            o.commit("b", Path::new("other.log"), at(7, 1)).unwrap();
        }
        let o = Offsets::open(&path).unwrap();
        assert_eq!(o.get("a"), (at(100, 4), Some(at(250, 9))));
        assert_eq!(o.get("b"), (at(7, 1), None));
        assert_eq!(o.get("c"), (Position::default(), None));
    }
}
