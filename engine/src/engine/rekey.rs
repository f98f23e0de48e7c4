//! Rekeying: what is stored under which encryption key, and rewriting
//! everything stored under another key than the current one (or in
//! plaintext), so an old key can leave the key file.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use toplog_crypt::{Cipher, KeyUse};
use toplog_wal::Fs;

use super::{Engine, Inner, KEY_DIR, ROLLUP_DIR, Segment, Stored, lock};
use crate::error::{Result, io_err, sealed_err, segment_err};
use crate::manifest;
use crate::rollup::Granularity;
use crate::segment;

/// How many stored files and archived objects are under each key.
pub type KeyUsage = BTreeMap<KeyUse, usize>;

/// What [`Engine::rekey`] rewrote.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RekeyReport {
    /// Local segments written again.
    pub segments: usize,
    /// Archived segments copied to new objects.
    pub archived_segments: usize,
    /// Archived objects a cluster's member left under their key (see
    /// docs/cluster.md, "The archive").
    pub cluster_objects_kept: usize,
    /// Rollup files folded into new tier files (and their archive copies).
    pub rollup_files: usize,
    /// Idempotency key files written again in place.
    pub key_files: usize,
}

fn header_of(fs: &Arc<dyn Fs>, path: &Path) -> Result<KeyUse> {
    let bytes = fs.map(path).map_err(io_err("map", path))?;
    Cipher::key_use(&bytes).map_err(sealed_err(path))
}

impl Segment {
    fn key_use(&self) -> Result<KeyUse> {
        match &self.stored {
            Stored::Local(bytes) => segment::key_use(bytes).map_err(|e| segment_err(&self.path, e)),
            Stored::Archived { key_id, .. } => {
                Ok(key_id.clone().map_or(KeyUse::Plain, KeyUse::Key))
            }
        }
    }
}

impl Inner {
    /// How every rollup file the manifest lists is sealed, read under the
    /// manifest's lock: a flush replaces tier files of days memory no longer
    /// holds, and would otherwise take one away between listing and reading.
    fn rollup_key_uses(&self) -> Result<Vec<KeyUse>> {
        let m = lock(&self.manifest);
        let dir = self.dir(ROLLUP_DIR);
        (m.rollup_files.iter())
            .chain(m.rollup_tiers.iter().map(|t| &t.file))
            .map(|file| header_of(&self.fs, &dir.join(file)))
            .collect()
    }

    /// Writes each idempotency key file not under the current key again, in
    /// place: a sealed copy, fsynced, renamed over it. A crash leaves the old
    /// file or the new (start-up removes a leftover `.tmp`).
    fn reseal_key_files(&self) -> Result<usize> {
        let manifest = lock(&self.manifest);
        let dir = self.dir(KEY_DIR);
        let cipher = &self.config.cipher;
        let mut rewritten = 0;
        for kf in &manifest.key_files {
            let path = dir.join(&kf.file);
            let stored = self.fs.read(&path).map_err(io_err("read", &path))?;
            if !cipher.is_stale(&stored) {
                continue;
            }
            let plain = cipher
                .open(&stored)
                .map_err(sealed_err(&path))?
                .into_owned();
            let tmp = dir.join(format!("{}.tmp", kf.file));
            if self.fs.exists(&tmp) {
                self.fs.remove_file(&tmp).map_err(io_err("remove", &tmp))?;
            }
            manifest::write_durable(&self.fs, &tmp, &cipher.seal(plain))?;
            self.fs
                .rename(&tmp, &path)
                .map_err(io_err("rename", &tmp))?;
            rewritten += 1;
        }
        if rewritten > 0 {
            self.fs
                .sync_dir(&dir)
                .map_err(io_err("fsync directory", &dir))?;
        }
        Ok(rewritten)
    }

    /// Marks every day that has a tier file as changed, so the next
    /// [`Inner::rewrite_rollups`] writes them all again.
    fn mark_all_tiers_dirty(&self) {
        let m = lock(&self.manifest);
        let mut st = self.write();
        st.dirty_tiers.extend(
            m.rollup_tiers
                .iter()
                .filter_map(|t| Some((Granularity::from_name(&t.granularity)?, t.day))),
        );
    }
}

impl Engine {
    /// How many of the stored files (manifest, segments, rollup files, key
    /// files) and archived objects are under each key, or plaintext. The log
    /// is not counted: a rekey ends its files and removes those it has flushed.
    pub fn key_usage(&self) -> Result<KeyUsage> {
        let inner = &self.inner;
        let mut usage = KeyUsage::new();
        let mut count = |used: KeyUse| *usage.entry(used).or_default() += 1;
        count(header_of(
            &inner.fs,
            &inner.config.data_dir.join(manifest::FILE),
        )?);
        let segments = inner.read().segments.clone();
        for seg in &segments {
            count(seg.key_use()?);
        }
        for used in inner.rollup_key_uses()? {
            count(used);
        }
        let key_dir = inner.dir(KEY_DIR);
        let key_files: Vec<String> = (lock(&inner.manifest).key_files.iter())
            .map(|k| k.file.clone())
            .collect();
        for file in key_files {
            count(header_of(&inner.fs, &key_dir.join(file))?);
        }
        Ok(usage)
    }

    /// Writes everything stored under another key than the current one (or
    /// in plaintext) again under the current key: the log (its file is ended,
    /// everything flushed, and the flushed files removed), local segments
    /// (each rewritten and checked like a compaction), archived segments
    /// (copied to new objects and checked row by row), rollup files (folded
    /// into new tier files, copied to the archive if it holds copies), key
    /// files and the manifest. Each step is atomic like the maintenance step
    /// it borrows; after a crash, a rekey run again finishes the work.
    pub fn rekey(&self) -> Result<RekeyReport> {
        let _one = lock(&self.inner.maintenance);
        self.inner.check_writable()?;
        let writes = self.inner.config.cipher.writes();
        let mut report = RekeyReport::default();

        if let Some(wal) = &self.wal {
            wal.roll()?;
        }
        self.flush()?;
        let flushed = lock(&self.inner.manifest).flushed_lsn;
        if let Some(wal) = &self.wal {
            wal.truncate_prefix(flushed)?;
        }

        let segments = self.inner.read().segments.clone();
        for seg in segments {
            if seg.key_use()? == writes {
                continue;
            }
            match seg.stored {
                Stored::Local(_) => {
                    self.rewrite_segments(std::slice::from_ref(&seg))?;
                    report.segments += 1;
                }
                // A cluster's member writes nothing to the archive on its
                // own: every member names the cluster's objects.
                Stored::Archived { .. } if self.inner.config.replicated => {
                    report.cluster_objects_kept += 1;
                }
                Stored::Archived { .. } => {
                    self.rearchive_segment(&seg)?;
                    report.archived_segments += 1;
                }
            }
        }

        report.rollup_files = (self.inner.rollup_key_uses()?.iter())
            .filter(|used| **used != writes)
            .count();
        if report.rollup_files > 0 {
            self.inner.mark_all_tiers_dirty();
            self.inner.rewrite_rollups(&self.inner.cutoffs())?;
            if !self.inner.config.replicated
                && !lock(&self.inner.manifest).archived_rollups.is_empty()
            {
                self.archive_rollups_locked()?;
            }
        }

        report.key_files = self.inner.reseal_key_files()?;
        let mut manifest = lock(&self.inner.manifest);
        let next = manifest.clone();
        self.inner.store_manifest(&next)?;
        *manifest = next;
        Ok(report)
    }
}
