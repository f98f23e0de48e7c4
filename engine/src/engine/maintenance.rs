//! Maintenance, one step at a time under one lock: compaction of a
//! partition's segments, archiving segments and rollup files, sweeping the
//! archive, and purging what is past retention (which also folds per-flush
//! rollup files into one per granularity and day).

use std::path::Path;
use std::sync::Arc;

use toplog_types::{Micros, SegmentId};

use super::{
    Cutoffs, DAY_US, Engine, Inner, ROLLUP_DIR, Retention, SEGMENT_DIR, Segment, SegmentInfo,
    Stored, cold, lock,
};
use crate::archive;
use crate::columns::Columns;
use crate::error::{EngineError, MaintenanceError, Result, io_err, segment_err};
use crate::manifest::{self, Manifest, SegmentEntry};
use crate::rollup::{Granularity, Rollups};
use crate::segment;

/// What [`Engine::purge`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PurgeReport {
    pub segments: Vec<SegmentInfo>,
    /// Buckets dropped per granularity: minute, hour, day.
    pub buckets: [usize; 3],
    /// Archived objects that could not be deleted (now unreferenced).
    pub leftover_objects: Vec<String>,
}

/// Buckets of one granularity held in the rollups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RollupTier {
    pub granularity: Granularity,
    pub buckets: usize,
    pub oldest: Option<Micros>,
    /// Of `buckets`, those of flushed rows held in memory; the others are
    /// read from their day's tier file when a query reaches them.
    pub in_memory: usize,
}

impl Segment {
    pub(super) fn entry(&self) -> SegmentEntry {
        let info = self.info();
        SegmentEntry {
            id: self.id,
            file: manifest::segment_file_name(self.id),
            bytes: info.bytes,
            meta: self.meta,
            archived: info.archived,
            archive_key_id: match &self.stored {
                Stored::Archived { key_id, .. } => key_id.clone(),
                Stored::Local(_) => None,
            },
            sealed: self.sealed,
        }
    }
}

impl Inner {
    fn find_segments(&self, ids: &[SegmentId]) -> Result<Vec<Arc<Segment>>> {
        let st = self.read();
        ids.iter()
            .map(|id| {
                st.segments
                    .iter()
                    .find(|s| s.id == *id)
                    .cloned()
                    .ok_or(EngineError::Maintenance(MaintenanceError::NoSuchSegment(
                        *id,
                    )))
            })
            .collect()
    }

    /// Stores a manifest without the segments `remove` and with `add` (replacing
    /// any of the same id), then makes reads see the same, under one lock.
    fn swap_segments(&self, remove: &[SegmentId], add: &[Arc<Segment>]) -> Result<()> {
        self.swap_segments_if(remove, add, &[])
    }

    /// [`Inner::swap_segments`] if each of `unchanged` is still listed as it
    /// was read (sealed or not): a purge or a seal that a replicated log
    /// applied meanwhile (neither waits for maintenance) wins, and the step
    /// that read them is tried again at the next pass.
    fn swap_segments_if(
        &self,
        remove: &[SegmentId],
        add: &[Arc<Segment>],
        unchanged: &[Arc<Segment>],
    ) -> Result<()> {
        let mut manifest = lock(&self.manifest);
        self.check_writable()?;
        for s in unchanged {
            if !manifest
                .segments
                .iter()
                .any(|e| e.id == s.id && e.sealed == s.sealed)
            {
                return Err(MaintenanceError::Changed(s.id).into());
            }
        }
        let gone = |id: &SegmentId| remove.contains(id) || add.iter().any(|a| a.id == *id);
        let mut next = manifest.clone();
        let at = next.segments.iter().position(|e| gone(&e.id));
        next.segments.retain(|e| !gone(&e.id));
        let at = at.unwrap_or(next.segments.len()).min(next.segments.len());
        next.segments.splice(at..at, add.iter().map(|s| s.entry()));
        self.store_manifest(&next)?;
        *manifest = next;
        let mut st = self.write();
        st.segments.retain(|s| !gone(&s.id));
        st.segments.extend(add.iter().cloned());
        drop(st);
        lock(&self.decoded).retain(|id, _| !gone(id));
        Ok(())
    }

    /// Stores `next` as the manifest (the caller holds the manifest lock).
    /// On failure the rename may or may not have happened: which manifest a
    /// restart finds is unknown, so this process stops taking writes.
    pub(super) fn store_manifest(&self, next: &Manifest) -> Result<()> {
        next.store(&self.fs, &self.config.data_dir, &self.config.cipher)
            .inspect_err(|e| {
                self.poison(format!("storing the manifest failed: {e}"));
            })
    }

    /// Whether the stored manifest lists `file` as a tier file.
    fn lists_tier(&self, file: &str) -> bool {
        self.read().tiers.values().any(|t| t.file == file)
    }

    pub(super) fn remove_quietly(&self, path: &Path, what: &str) {
        // The manifest no longer names it: a failure leaves an orphan, removed at start-up.
        if let Err(e) = self.fs.remove_file(path) {
            tracing::warn!(path = %path.display(), error = %e, "could not remove {what}");
        }
    }

    /// Writes the changed (granularity, day) buckets to their tier files, drops
    /// the days wholly past retention, stores a manifest listing only tier
    /// files, and lets go of the days the hot window has passed (their tier
    /// files hold them now, see `cold`). Returns the buckets dropped per
    /// granularity.
    pub(super) fn rewrite_rollups(&self, cutoffs: &Cutoffs) -> Result<[usize; 3]> {
        let mut manifest = lock(&self.manifest);
        self.check_writable()?;
        // Under the manifest lock no flush can change `rollups`, `dirty_tiers`
        // or `resident_from`.
        let (mut kept, dirty, resident_from, tiers) = {
            let st = self.read();
            let rollups = Rollups::clone(&st.rollups);
            (
                rollups,
                st.dirty_tiers.clone(),
                st.resident_from,
                st.tiers.clone(),
            )
        };
        let mut dropped = [0; 3];
        // Whole days only: a day's file goes when its last bucket is past retention.
        let expired_before = |g: Granularity| cutoffs.rollup(g).floor_to(DAY_US);
        for g in Granularity::ALL {
            dropped[g.index()] = kept.drop_before(g, expired_before(g));
            // And the days only their files hold.
            let cold_before = expired_before(g).min(resident_from[g.index()]);
            for (_, t) in tiers.range((g, Micros::new(i64::MIN))..(g, cold_before)) {
                dropped[g.index()] += t.buckets as usize;
            }
        }
        let expired = |g: Granularity, day: Micros| day < expired_before(g);
        let tier_expired = |t: &manifest::RollupTierFile| {
            Granularity::from_name(&t.granularity).is_none_or(|g| expired(g, t.day))
        };
        let stale_tiers = manifest.rollup_tiers.iter().any(tier_expired);
        let mut next = manifest.clone();
        let mut old_files = Vec::new();
        if !dirty.is_empty() || !manifest.rollup_files.is_empty() || stale_tiers {
            next.rollup_generation += 1;
            let mut written = Vec::new();
            for &(g, day) in dirty.iter().filter(|(g, day)| !expired(*g, *day)) {
                let part = if day >= resident_from[g.index()] {
                    kept.slice(g, day, day.saturating_add_micros(DAY_US))
                } else {
                    // A day only its file holds (a rekey marks every file changed).
                    match tiers.get(&(g, day)) {
                        Some(t) => self.tier_cells(&t.file)?,
                        None => continue,
                    }
                };
                written.push(self.write_tier(g, day, next.rollup_generation, &part)?);
            }
            let dir = self.dir(ROLLUP_DIR);
            self.fs
                .sync_dir(&dir)
                .map_err(io_err("fsync directory", &dir))?;
            let replaced = |t: &manifest::RollupTierFile| {
                written
                    .iter()
                    .any(|w| w.granularity == t.granularity && w.day == t.day)
                    || tier_expired(t)
            };
            let (old, kept_tiers): (Vec<_>, Vec<_>) =
                next.rollup_tiers.drain(..).partition(|t| replaced(t));
            next.rollup_tiers = kept_tiers;
            next.rollup_tiers.extend(written);
            old_files = (old.into_iter().map(|t| t.file))
                .chain(std::mem::take(&mut next.rollup_files))
                .collect();
            self.store_manifest(&next)?;
            *manifest = next;
        }
        // Every day held in memory is in a tier file now: those the hot
        // window has passed need not be held any more.
        let mut from = resident_from;
        for (g, hot) in Granularity::ALL
            .into_iter()
            .map(|g| (g, cold::hot_from(g, Micros::now())))
        {
            if hot > from[g.index()] {
                kept.take_before(g, hot);
                from[g.index()] = hot;
            }
        }
        {
            let mut st = self.write();
            st.rollups = Arc::new(kept);
            st.resident_from = from;
            st.tiers = cold::tier_index(&manifest);
            st.dirty_tiers.clear();
        }
        drop(manifest);
        let dir = self.dir(ROLLUP_DIR);
        for file in old_files {
            self.forget_tier(&file);
            self.remove_quietly(&dir.join(&file), "an old rollup file");
        }
        Ok(dropped)
    }
}

impl Engine {
    /// What this engine's files are written under, for the node's other
    /// state files to use the same.
    pub fn cipher(&self) -> &toplog_crypt::Cipher {
        &self.inner.config.cipher
    }

    /// Every stored segment, local or archived.
    pub fn segments(&self) -> Vec<SegmentInfo> {
        self.inner
            .read()
            .segments
            .iter()
            .map(|s| s.info())
            .collect()
    }

    /// Buckets held per granularity (minute, hour, day) and the oldest of each.
    pub fn rollup_tiers(&self) -> Vec<RollupTier> {
        let st = self.inner.read();
        [Granularity::Minute, Granularity::Hour, Granularity::Day]
            .into_iter()
            .map(|g| {
                let (in_memory, mut oldest) = st.rollups.extent(g);
                let mut buckets = in_memory;
                // Days held only in their tier files, by what the manifest recorded.
                let resident_from = st.resident_from[g.index()];
                for (_, t) in st
                    .tiers
                    .range((g, Micros::new(i64::MIN))..(g, resident_from))
                {
                    buckets += t.buckets as usize;
                    let first = t.oldest.unwrap_or(t.day);
                    oldest = Some(oldest.map_or(first, |o| o.min(first)));
                }
                RollupTier {
                    granularity: g,
                    buckets,
                    oldest,
                    in_memory,
                }
            })
            .collect()
    }

    pub fn retention(&self) -> Retention {
        *self.inner.retention.read()
    }

    /// Changes what reads see at once; [`Engine::purge`] removes the rest.
    pub fn set_retention(&self, retention: Retention) {
        *self.inner.retention.write() = retention;
    }

    /// The cutoffs of the current retention, now.
    pub fn cutoffs(&self) -> Cutoffs {
        self.inner.cutoffs()
    }

    /// Merges the local segments `ids` of one partition into one segment, rows in
    /// time order. The new file is written, fsynced, read back and checked (row
    /// count, time span, every checksum) before one manifest store swaps it for
    /// the old ones, which are deleted last. A crash at any step leaves either the
    /// old segments or the new one listed, and start-up removes the other's files.
    pub fn compact(&self, ids: &[SegmentId]) -> Result<SegmentInfo> {
        let _one = lock(&self.inner.maintenance);
        self.inner.check_writable()?;
        let olds = self.inner.find_segments(ids)?;
        if olds.len() < 2 {
            return Err(MaintenanceError::TooFewToCompact.into());
        }
        self.rewrite_segments(&olds)
    }

    /// Writes the rows of the local segments `olds` (one partition's, one at
    /// least) as one new segment under the current key, checked as
    /// [`Engine::compact`] says, and swaps it for them. The caller holds the
    /// maintenance lock.
    pub(super) fn rewrite_segments(&self, olds: &[Arc<Segment>]) -> Result<SegmentInfo> {
        let [first, ..] = olds else {
            return Err(MaintenanceError::TooFewToCompact.into());
        };
        for s in olds {
            if matches!(s.stored, Stored::Archived { .. }) {
                return Err(MaintenanceError::Archived(s.id).into());
            }
            if (s.meta.partition_start, s.meta.partition_len_us)
                != (first.meta.partition_start, first.meta.partition_len_us)
            {
                return Err(MaintenanceError::DifferentPartitions(first.id, s.id).into());
            }
            // Rows sealed at one entry stay apart from the others: every
            // member holds exactly those rows under that seal.
            if s.sealed != first.sealed {
                return Err(MaintenanceError::DifferentSeals(first.id, s.id).into());
            }
        }
        let whole = (olds.iter())
            .map(|s| self.inner.read_whole(s))
            .collect::<Result<Vec<_>>>()?;
        let parts: Vec<&Columns> = whole.iter().map(|c| &**c).collect();
        let ids: Vec<SegmentId> = olds.iter().map(|s| s.id).collect();
        let rows: u64 = olds.iter().map(|s| s.meta.rows).sum();
        let min_ts = olds.iter().map(|s| s.meta.min_ts).min();
        let max_ts = olds.iter().map(|s| s.meta.max_ts).max();
        let cipher = &self.inner.config.cipher;
        let image = segment::encode_parts(
            &parts,
            first.meta.partition_start,
            first.meta.partition_len_us,
            cipher,
        );
        drop(parts);
        drop(whole);
        let id = Inner::next_segment_id(&mut lock(&self.inner.manifest))?;
        let seg_dir = self.inner.dir(SEGMENT_DIR);
        let path = seg_dir.join(manifest::segment_file_name(id));
        manifest::write_durable(&self.inner.fs, &path, &image)?;
        self.inner
            .fs
            .sync_dir(&seg_dir)
            .map_err(io_err("fsync directory", &seg_dir))?;
        // Check what the disk holds, not what was meant to be written.
        let checked = self
            .inner
            .fs
            .read(&path)
            .map_err(io_err("read", &path))
            .and_then(|back| {
                let (meta, _) =
                    segment::decode(&back, true, cipher).map_err(|e| segment_err(&path, e))?;
                if back.len() != image.len()
                    || meta.rows != rows
                    || Some(meta.min_ts) != min_ts
                    || Some(meta.max_ts) != max_ts
                {
                    return Err(EngineError::Corrupt {
                        path: path.clone(),
                        reason: format!(
                            "compacted segment holds {} rows, expected {rows}, or its size or time span differs",
                            meta.rows
                        ),
                    });
                }
                Ok(meta)
            });
        let meta = match checked {
            Ok(meta) => meta,
            Err(e) => {
                self.inner
                    .remove_quietly(&path, "a compacted segment that failed its check");
                return Err(e);
            }
        };
        let bytes = self.inner.fs.map(&path).map_err(io_err("map", &path))?;
        let merged = Arc::new(Segment {
            id,
            path,
            meta,
            stored: Stored::Local(bytes),
            sealed: first.sealed,
        });
        if let Err(e) = (self.inner).swap_segments_if(&ids, std::slice::from_ref(&merged), olds) {
            self.inner
                .remove_quietly(&merged.path, "a compacted segment not listed");
            return Err(e);
        }
        for s in olds {
            self.inner.remove_quietly(&s.path, "a compacted segment");
        }
        Ok(merged.info())
    }

    /// Copies local segment `id` to the archive as Parquet, reads the copy back
    /// and compares every row, then lists the segment as archived and deletes the
    /// local file. A store that fails leaves the segment local and untouched.
    pub fn archive_segment(&self, id: SegmentId) -> Result<SegmentInfo> {
        let _one = lock(&self.inner.maintenance);
        self.inner.check_writable()?;
        self.inner.archive_store()?;
        let seg = self
            .inner
            .find_segments(&[id])?
            .pop()
            .ok_or(EngineError::Maintenance(MaintenanceError::NoSuchSegment(
                id,
            )))?;
        if matches!(seg.stored, Stored::Archived { .. }) {
            return Ok(seg.info());
        }
        let cols = self.inner.read_whole(&seg)?;
        let key = archive::segment_key(seg.meta.partition_start, id.get());
        let archived = Arc::new(self.upload_checked(&seg, id, &cols, key, false)?);
        self.inner
            .swap_segments(&[], std::slice::from_ref(&archived))?;
        self.inner
            .remove_quietly(&seg.path, "an archived segment's local file");
        Ok(archived.info())
    }

    /// Copies archived segment `seg` (stored under an old key) to a new object
    /// under the current key, as segment `id` anew, checked row by row; then
    /// lists the copy instead and deletes the old object (one the sweep
    /// removes if that fails). The caller holds the maintenance lock.
    pub(super) fn rearchive_segment(&self, seg: &Segment) -> Result<SegmentInfo> {
        let cols = self.inner.read_whole(seg)?;
        let id = Inner::next_segment_id(&mut lock(&self.inner.manifest))?;
        let key = archive::segment_key(seg.meta.partition_start, id.get());
        let copy = Arc::new(self.upload_checked(seg, id, &cols, key, false)?);
        self.inner
            .swap_segments(&[seg.id], std::slice::from_ref(&copy))?;
        if let Stored::Archived { key, .. } = &seg.stored
            && let Err(e) = self.inner.archive_store()?.delete(key)
        {
            tracing::warn!(%key, error = %e, "could not delete an archived segment's old copy");
        }
        Ok(copy.info())
    }

    /// Writes `cols` (the rows of `seg`) to the archive as Parquet under
    /// `key`, as segment `id`, under the current key, reads the copy back and compares
    /// every row. Returns the segment as archived there; nothing lists it yet.
    pub(super) fn upload_checked(
        &self,
        seg: &Segment,
        id: SegmentId,
        cols: &Columns,
        key: String,
        fresh_only: bool,
    ) -> Result<Segment> {
        let store = self.inner.archive_store()?;
        let cipher = &self.inner.config.cipher;
        let failed = |e: std::io::Error| EngineError::Archive {
            key: key.clone(),
            reason: e.to_string(),
        };
        let bytes = bytes::Bytes::from(archive::to_parquet(cols, cipher)?);
        match store.create(&key, bytes.clone()) {
            Ok(()) => {}
            // Left by an attempt that stopped before the manifest named it:
            // checked below like a new copy. A name only one upload makes
            // is never someone else's to check or delete.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && !fresh_only => {
                tracing::info!(%key, "archive object exists from an earlier attempt; verifying it");
            }
            Err(e) => return Err(failed(e)),
        }
        let size = store.size(&key).map_err(failed)?;
        // Read back with the current key alone: a copy left under an older
        // key (or in plaintext) is not taken for one under the current key.
        let current = cipher.current_only();
        let encrypted = cipher.is_on().then_some(&current);
        let same = archive::is_encrypted(&store, &key, size).map_err(failed)? == cipher.is_on()
            && match archive::read(&store, &key, size, None, encrypted) {
                Ok(back) => back.same_rows(cols),
                Err(e) => {
                    tracing::warn!(%key, error = %e, "archived copy unreadable");
                    false
                }
            };
        if !same {
            // Nothing names it: remove it so the next attempt writes it afresh.
            let _ = store.delete(&key);
            return Err(EngineError::Archive {
                key,
                reason: format!(
                    "the copy read back differs from segment {}; the segment is kept as it was",
                    seg.id
                ),
            });
        }
        Ok(Segment {
            id,
            path: self
                .inner
                .dir(SEGMENT_DIR)
                .join(manifest::segment_file_name(id)),
            meta: seg.meta,
            stored: Stored::Archived {
                key,
                bytes: size,
                key_id: cipher.current_key().map(|(id, _)| id.to_owned()),
            },
            sealed: seg.sealed,
        })
    }

    /// Copies every rollup tier file to the archive as `rollups/<file>` (read
    /// back and compared byte for byte), then deletes the copies of files that
    /// have since been replaced or purged. Returns how many files it copied.
    pub fn archive_rollups(&self) -> Result<usize> {
        let _one = lock(&self.inner.maintenance);
        self.archive_rollups_locked()
    }

    /// [`Engine::archive_rollups`] for a caller holding the maintenance lock.
    pub(super) fn archive_rollups_locked(&self) -> Result<usize> {
        self.inner.check_writable()?;
        let store = self.inner.archive_store()?;
        let (tiers, copied) = {
            let m = lock(&self.inner.manifest);
            let files: Vec<String> = m.rollup_tiers.iter().map(|t| t.file.clone()).collect();
            (files, m.archived_rollups.clone())
        };
        if tiers == copied {
            return Ok(0);
        }
        let dir = self.inner.dir(ROLLUP_DIR);
        let mut uploaded = 0;
        // Files a flush replaced since they were listed (adding to a day
        // memory no longer holds): their successors go in the next pass.
        let mut gone = Vec::new();
        for file in tiers.iter().filter(|f| !copied.contains(f)) {
            let path = dir.join(file);
            let bytes = match self.inner.fs.read(&path) {
                Ok(b) => bytes::Bytes::from(b),
                Err(e)
                    if e.kind() == std::io::ErrorKind::NotFound && !self.inner.lists_tier(file) =>
                {
                    gone.push(file.clone());
                    continue;
                }
                Err(e) => return Err(io_err("read", &path)(e)),
            };
            let key = format!("rollups/{file}");
            let failed = |reason: String| EngineError::Archive {
                key: key.clone(),
                reason,
            };
            match store.create(&key, bytes.clone()) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(failed(e.to_string())),
            }
            let back = store
                .get_range(&key, 0..bytes.len() as u64)
                .map_err(|e| failed(e.to_string()))?;
            if back != bytes
                || store.size(&key).map_err(|e| failed(e.to_string()))? != bytes.len() as u64
            {
                let _ = store.delete(&key);
                return Err(failed(
                    "the copy read back differs from the local file".into(),
                ));
            }
            uploaded += 1;
        }
        {
            let mut manifest = lock(&self.inner.manifest);
            let mut next = manifest.clone();
            next.archived_rollups = tiers
                .iter()
                .filter(|f| !gone.contains(f))
                .cloned()
                .collect();
            self.inner.store_manifest(&next)?;
            *manifest = next;
        }
        for file in copied.iter().filter(|f| !tiers.contains(f)) {
            let key = format!("rollups/{file}");
            if let Err(e) = store.delete(&key) {
                tracing::warn!(%key, error = %e, "could not delete a replaced rollup copy");
            }
        }
        Ok(uploaded)
    }

    /// Deletes the objects under `raw/` and `rollups/` in the archive that the
    /// manifest does not name: copies left by a step a crash cut short before
    /// the manifest named them (whose segment was since compacted or purged),
    /// or whose deletion failed. Every upload runs under the same lock, so no
    /// object in flight is taken for an orphan. Only names a node writes are
    /// candidates (anything else found there is left alone), and the archive's
    /// prefix must belong to this node alone: the caller checks its owner
    /// marker first (toplog-compaction's `ArchiveOwner`), since another node's
    /// segment copies have the same names as this node's.
    pub fn sweep_archive(&self) -> Result<Vec<String>> {
        let _one = lock(&self.inner.maintenance);
        self.inner.check_writable()?;
        let store = self.inner.archive_store()?;
        let mut named: std::collections::HashSet<String> = self
            .inner
            .read()
            .segments
            .iter()
            .filter_map(|s| s.info().archived)
            .collect();
        {
            let manifest = lock(&self.inner.manifest);
            named.extend((manifest.archived_rollups.iter()).map(|f| format!("rollups/{f}")));
            // A cut-off applied here and not yet in force names its objects.
            named.extend(
                (manifest.pending_cutoffs.iter())
                    .flat_map(|c| c.objects.iter().map(|o| o.key.clone())),
            );
        }
        let mut swept = Vec::new();
        for prefix in ["raw/", "rollups/"] {
            let failed = |e: std::io::Error| EngineError::Archive {
                key: prefix.to_owned(),
                reason: e.to_string(),
            };
            for key in store.list(prefix).map_err(failed)? {
                if !named.contains(&key) && archive::is_node_key(&key) && self.settled(&key) {
                    store.delete(&key).map_err(failed)?;
                    swept.push(key);
                }
            }
        }
        Ok(swept)
    }

    /// Whether an object no manifest here names may go: any a single node
    /// wrote; in a cluster, one of a partition and seal whose rows this
    /// member has sealed and no longer holds locally, whole or waiting for
    /// a cut-off (the cut-off in force names other objects: this one is a
    /// second upload's, or purged). One of a seal not yet applied here is
    /// another leader's upload in flight.
    fn settled(&self, key: &str) -> bool {
        if !self.inner.config.replicated {
            return true;
        }
        let Some((partition, seal)) = archive::parse_cluster_key(key) else {
            return true;
        };
        let st = self.inner.read();
        seal <= st.flushed_lsn.get()
            && !st.segments.iter().any(|s| {
                s.sealed == Some(seal)
                    && s.meta.partition_start == partition
                    && s.info().archived.is_none()
            })
            && !(lock(&self.inner.manifest).pending_cutoffs.iter())
                .any(|c| (c.partition_start, c.seal) == (partition, seal))
    }

    /// Removes what is past retention: segments whose newest row is older than
    /// the raw cutoff (and their archived objects), rollup days wholly past their
    /// granularity's cutoff. Also folds the per-flush rollup files into one file
    /// per granularity and day.
    pub fn purge(&self) -> Result<PurgeReport> {
        let _one = lock(&self.inner.maintenance);
        self.purge_at(self.inner.cutoffs(), true)
    }

    /// Applies a purge entry of a replicated log: [`Engine::purge`] at
    /// `cutoffs` (the leader's, when it proposed it), leaving the archived
    /// objects dropped, which are the cluster's (the leader's sweep deletes
    /// them once no member names them). It does not wait for a maintenance
    /// step under way (the log is applied on), which finds its segments
    /// changed and stops.
    pub fn purge_replicated(&self, cutoffs: Cutoffs) -> Result<PurgeReport> {
        self.purge_at(cutoffs, false)
    }

    fn purge_at(&self, cutoffs: Cutoffs, delete_archived: bool) -> Result<PurgeReport> {
        self.inner.check_writable()?;
        let expired: Vec<Arc<Segment>> = self
            .inner
            .read()
            .segments
            .iter()
            .filter(|s| s.meta.max_ts < cutoffs.raw)
            .cloned()
            .collect();
        let mut report = PurgeReport::default();
        if !expired.is_empty() {
            let ids: Vec<SegmentId> = expired.iter().map(|s| s.id).collect();
            self.inner.swap_segments(&ids, &[])?;
            for s in &expired {
                match &s.stored {
                    Stored::Local(_) => self.inner.remove_quietly(&s.path, "a purged segment"),
                    Stored::Archived { .. } if !delete_archived => {}
                    Stored::Archived { key, .. } => {
                        let deleted = self.inner.archive_store().and_then(|store| {
                            store.delete(key).map_err(|e| EngineError::Archive {
                                key: key.clone(),
                                reason: e.to_string(),
                            })
                        });
                        if let Err(e) = deleted {
                            tracing::warn!(error = %e, "purged archive object not deleted");
                            report.leftover_objects.push(key.clone());
                        }
                    }
                }
                report.segments.push(s.info());
            }
        }
        report.buckets = self.inner.rewrite_rollups(&cutoffs)?;
        Ok(report)
    }
}
