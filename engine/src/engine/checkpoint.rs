//! Checkpoints: the store as of a flushed log index, as files another node
//! installs in place of its own (a Raft snapshot). A checkpoint is the
//! manifest plus hard links to the files it lists (segments, idempotency
//! keys, rollups), none of which changes once written: making one copies no
//! data, and holds the manifest's lock only while the links are made.
//!
//! ```text
//! <dir>/MANIFEST            the manifest, as the store keeps it
//! <dir>/segments/<file>     each local segment it lists
//! <dir>/idempotency/<file>  each key file
//! <dir>/rollups/<file>      each rollup file and tier file
//! ```

use std::path::Path;

use super::open::{load_state, remove_unlisted};
use super::{Engine, KEY_DIR, ROLLUP_DIR, SEGMENT_DIR, lock};
use crate::error::{EngineError, Result, io_err};
use crate::manifest::{self, Manifest};

/// The directories of a store, and of a checkpoint, that hold listed files.
const LISTED_DIRS: [&str; 3] = [SEGMENT_DIR, KEY_DIR, ROLLUP_DIR];

/// Every local file `m` lists: (directory, name).
fn listed(m: &Manifest) -> Vec<(&'static str, &str)> {
    let segments = (m.segments.iter())
        .filter(|s| s.archived.is_none())
        .map(|s| (SEGMENT_DIR, s.file.as_str()));
    let keys = m.key_files.iter().map(|k| (KEY_DIR, k.file.as_str()));
    let flushes = m.rollup_files.iter().map(|f| (ROLLUP_DIR, f.as_str()));
    let tiers = m.rollup_tiers.iter().map(|t| (ROLLUP_DIR, t.file.as_str()));
    segments.chain(keys).chain(flushes).chain(tiers).collect()
}

/// `name` without the `i<index>-` an earlier install put in front of it.
fn untagged(name: &str) -> &str {
    match name.strip_prefix('i').and_then(|rest| rest.split_once('-')) {
        Some((digits, rest))
            if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) =>
        {
            rest
        }
        _ => name,
    }
}

impl Engine {
    /// Writes a checkpoint of the store into `dir` (new or empty) as of a
    /// log index of `at_least` or more: that index. It is the store's
    /// flushed index, or `applied` (the log index applied last, which the
    /// caller knows) when every batch applied is flushed: entries after the
    /// last batch (a replicated log's configuration changes) change nothing
    /// here. `None` when neither reaches `at_least` (a flush is asked for)
    /// or a flush is under way: ask again.
    pub fn checkpoint(&self, dir: &Path, at_least: u64, applied: u64) -> Result<Option<u64>> {
        let inner = &self.inner;
        let manifest = match inner.manifest.try_lock() {
            Ok(m) => m,
            Err(std::sync::TryLockError::WouldBlock) => return Ok(None),
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        };
        let flushed = manifest.flushed_lsn.get();
        let all_flushed = inner.read().applied_lsn.get() == flushed;
        let index = if all_flushed {
            flushed.max(applied)
        } else {
            flushed
        };
        if index < at_least {
            drop(manifest);
            inner.request_flush();
            return Ok(None);
        }
        let fs = &inner.fs;
        let root = &inner.config.data_dir;
        for sub in LISTED_DIRS {
            let to = dir.join(sub);
            fs.create_dir_all(&to)
                .map_err(io_err("create directory", &to))?;
        }
        for (sub, name) in listed(&manifest) {
            let (from, to) = (root.join(sub).join(name), dir.join(sub).join(name));
            fs.hard_link(&from, &to).map_err(io_err("link", &to))?;
        }
        let mut copy = manifest.clone();
        copy.flushed_lsn = toplog_types::Lsn::new(index);
        copy.store(fs, dir, &inner.config.cipher)?;
        for sub in LISTED_DIRS {
            let to = dir.join(sub);
            fs.sync_dir(&to).map_err(io_err("fsync directory", &to))?;
        }
        Ok(Some(index))
    }

    /// Replaces the whole store with the checkpoint in `dir` (made by
    /// [`Engine::checkpoint`] on a node with the same encryption keys):
    /// its files move into the store under new names, every one is checked
    /// as at start-up, and the manifest naming them replaces this store's
    /// at once, so a crash leaves the old store or the new one. Returns the
    /// checkpoint's index, from which the log is applied again.
    pub fn install_checkpoint(&self, dir: &Path) -> Result<u64> {
        let inner = &self.inner;
        let (fs, cipher) = (&inner.fs, &inner.config.cipher);
        let root = &inner.config.data_dir;
        let mut next = Manifest::load(fs, dir, cipher)?.ok_or_else(|| EngineError::Corrupt {
            path: dir.join(manifest::FILE),
            reason: "a checkpoint without its manifest".into(),
        })?;
        let _maintenance = lock(&inner.maintenance);
        let mut manifest = lock(&inner.manifest);
        let index = next.flushed_lsn.get();
        let tag = |name: &str| format!("i{index}-{}", untagged(name));
        let moves: Vec<(&str, String, String)> = listed(&next)
            .into_iter()
            .map(|(sub, name)| (sub, name.to_owned(), tag(name)))
            .collect();
        for (sub, from, to) in &moves {
            let (from, to) = (dir.join(sub).join(from), root.join(sub).join(to));
            fs.rename(&from, &to).map_err(io_err("move", &from))?;
        }
        for sub in LISTED_DIRS {
            let d = root.join(sub);
            fs.sync_dir(&d).map_err(io_err("fsync directory", &d))?;
        }
        for s in next.segments.iter_mut().filter(|s| s.archived.is_none()) {
            s.file = tag(&s.file);
        }
        for k in &mut next.key_files {
            k.file = tag(&k.file);
        }
        for f in next
            .rollup_files
            .iter_mut()
            .chain(&mut next.archived_rollups)
        {
            *f = tag(f);
        }
        for t in &mut next.rollup_tiers {
            t.file = tag(&t.file);
        }
        // Names this store makes from now on stay clear of both stores'.
        next.last_segment_id = next.last_segment_id.max(manifest.last_segment_id);
        next.rollup_generation = next.rollup_generation.max(manifest.rollup_generation);
        let state = load_state(fs, root, &next, &inner.config, true)?;
        next.store(fs, root, cipher)?;
        {
            let _gate = lock(&inner.apply_gate);
            *inner.write() = state;
        }
        // Segment ids of the old store may come back with other contents.
        lock(&inner.decoded).clear();
        lock(&inner.cold).clear();
        *manifest = next;
        remove_unlisted(fs, root, &manifest)?;
        Ok(index)
    }
}

#[cfg(test)]
mod tests {
    use super::untagged;

    #[test]
    fn an_installed_name_loses_only_its_own_tag() {
        assert_eq!(untagged("i42-0000000000000007.seg"), "0000000000000007.seg");
        assert_eq!(untagged("0000000000000007.seg"), "0000000000000007.seg");
        assert_eq!(untagged("i-x"), "i-x");
        assert_eq!(untagged("ix1-y"), "ix1-y");
    }
}
