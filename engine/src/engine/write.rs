//! The write path: a batch is appended to the WAL, applied to the memtables on
//! the log's writer thread in log order, and later flushed (by the flusher
//! thread, [`Engine::flush`] or [`Engine::close`]) into segments, rollup and
//! idempotency-key files under a new manifest, after which the log is truncated.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLockWriteGuard;

use toplog_types::{Lsn, Micros};
use toplog_wal::Wal;

use super::{
    DAY_US, Engine, Frozen, Inner, KEY_DIR, ROLLUP_DIR, SEGMENT_DIR, Segment, Stored, cold, lock,
    window_us,
};
use crate::batch::{Batch, KeyedEvents, Logged};
use crate::columns::Columns;
use crate::error::{EngineError, Result, io_err};
use crate::idempotency::{self, KeyRecord};
use crate::keys::KeyId;
use crate::manifest::{self, KeyFileEntry, Manifest, SegmentEntry};
use crate::rollup::{self, Dimension, Granularity, Rollups};
use crate::segment;

/// Events applied per hold of the write lock.
const APPLY_CHUNK: usize = 256;

/// A batch made into an entry for a replicated log.
#[derive(Debug, Clone)]
pub struct Proposal {
    payload: Vec<u8>,
    accepted: u32,
    idempotency_key: Option<String>,
}

impl Proposal {
    /// The entry's bytes, taken out to propose (the rest stays for the receipt).
    pub fn take_payload(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.payload)
    }

    /// Its events.
    pub fn accepted(&self) -> u32 {
        self.accepted
    }

    /// Its idempotency key.
    pub fn idempotency_key(&self) -> Option<&str> {
        self.idempotency_key.as_deref()
    }
}

/// What the engine did with an ingested batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestReceipt {
    pub accepted: u32,
    pub lsn: Lsn,
    /// True when the idempotency key was already known and nothing new was applied.
    pub replayed: bool,
}

impl Engine {
    /// Appends a batch durably and applies it. Returns once the batch is durable
    /// under the fsync policy and visible to reads. A batch whose idempotency key
    /// is known is acknowledged again without being applied. `events` is a
    /// `Vec<Event>` or, to look their keys up on the caller's thread rather
    /// than the log writer's, [`KeyedEvents`].
    pub async fn ingest(
        &self,
        events: impl Into<KeyedEvents>,
        idempotency_key: Option<String>,
    ) -> Result<IngestReceipt> {
        let KeyedEvents { events, ids } = events.into();
        self.inner.check_writable()?;
        let wal = self.wal.as_ref().ok_or(EngineError::Replicated)?;
        wal.health()?;
        if let Some(key) = idempotency_key.as_deref() {
            let window = window_us(self.inner.config.idempotency_window);
            let st = self.inner.read();
            if let Some(rec) = st.keys.get_within(key, Micros::now(), window) {
                return Ok(IngestReceipt {
                    accepted: rec.accepted,
                    lsn: rec.lsn,
                    replayed: true,
                });
            }
            // A new key past the limit is refused, never an old one forgotten:
            // a retry inside the window must not be applied twice.
            let limit = self.inner.config.max_idempotency_keys;
            if st.keys.len() >= limit {
                drop(st);
                // Keys past the window count no more: forget them first.
                let mut st = self.inner.write();
                st.keys.expire(Micros::now().saturating_sub_micros(window));
                if st.keys.len() >= limit {
                    return Err(EngineError::TooManyIdempotencyKeys { limit });
                }
            }
        }
        let accepted = events.len() as u32;
        let batch = Batch {
            received_at: Micros::now(),
            idempotency_key,
            events,
        };
        let lsn = wal
            .append_attached(self.inner.config.cipher.seal(batch.encode()), Box::new(ids))
            .await
            .map_err(|_| EngineError::LogWriterStopped)??;
        // Two concurrent batches with one key both reach the log; apply kept the first.
        let first = batch
            .idempotency_key
            .as_deref()
            .and_then(|k| self.inner.read().keys.get(k));
        Ok(match first {
            Some(rec) if rec.lsn != lsn => IngestReceipt {
                accepted: rec.accepted,
                lsn: rec.lsn,
                replayed: true,
            },
            _ => IngestReceipt {
                accepted,
                lsn,
                replayed: false,
            },
        })
    }

    /// Why the engine refuses writes, if it does.
    pub fn health(&self) -> Result<()> {
        self.inner.check_writable()?;
        if let Some(wal) = &self.wal {
            wal.health()?;
        }
        Ok(())
    }

    /// Flushes all memtables to segments now.
    pub fn flush(&self) -> Result<()> {
        self.inner.flush(self.wal.as_deref())
    }

    /// Applies entry `index` of a replicated log (the engine opened with
    /// `replicated`): `payload` is what [`Engine::propose_payload`] made.
    /// Entries come in index order, each once; after a restart, from
    /// [`Engine::flushed_index`] + 1.
    pub fn apply_replicated(&self, index: u64, payload: &[u8]) -> Result<()> {
        self.inner.check_writable()?;
        self.inner
            .apply(Lsn::new(index), payload, None)
            .map_err(|reason| {
                self.inner.poison(reason.clone());
                EngineError::Stopped { reason }
            })
    }

    /// The last log index whose effects are in segments on disk: what a
    /// replicated log must deliver again after it, at a restart.
    pub fn flushed_index(&self) -> u64 {
        self.inner.read().flushed_lsn.get()
    }

    /// The last log index applied (to memtables or segments).
    pub fn applied_index(&self) -> u64 {
        self.inner.read().applied_lsn.get()
    }

    /// Marks the store as of replicated log index `index` when every batch
    /// applied is flushed (so the entries up to `index` hold no batch it
    /// lacks): the manifest's flushed index moves there, and a restart
    /// resumes after it. Nothing changes otherwise.
    pub fn mark_flushed_through(&self, index: u64) -> Result<()> {
        let mut manifest = lock(&self.inner.manifest);
        let mut st = self.inner.write();
        if st.applied_lsn != manifest.flushed_lsn || index <= manifest.flushed_lsn.get() {
            return Ok(());
        }
        let mut next = manifest.clone();
        next.flushed_lsn = Lsn::new(index);
        next.store(
            &self.inner.fs,
            &self.inner.config.data_dir,
            &self.inner.config.cipher,
        )?;
        *manifest = next;
        st.flushed_lsn = Lsn::new(index);
        st.applied_lsn = Lsn::new(index);
        Ok(())
    }

    /// A batch as an entry of a replicated log, after the checks
    /// [`Engine::ingest`] makes first; or, for an idempotency key already
    /// known, its receipt (nothing to propose).
    pub fn propose_payload(
        &self,
        events: impl Into<KeyedEvents>,
        idempotency_key: Option<String>,
    ) -> Result<std::result::Result<Proposal, IngestReceipt>> {
        let KeyedEvents { events, .. } = events.into();
        self.inner.check_writable()?;
        if let Some(key) = idempotency_key.as_deref() {
            let window = window_us(self.inner.config.idempotency_window);
            if let Some(rec) = self
                .inner
                .read()
                .keys
                .get_within(key, Micros::now(), window)
            {
                return Ok(Err(IngestReceipt {
                    accepted: rec.accepted,
                    lsn: rec.lsn,
                    replayed: true,
                }));
            }
        }
        let accepted = events.len() as u32;
        let batch = Batch {
            received_at: Micros::now(),
            idempotency_key,
            events,
        };
        Ok(Ok(Proposal {
            payload: self.inner.config.cipher.seal(batch.encode()),
            accepted,
            idempotency_key: batch.idempotency_key,
        }))
    }

    /// The receipt of `proposal`, applied here at `index`.
    pub fn receipt(&self, proposal: &Proposal, index: u64) -> IngestReceipt {
        self.receipt_of(
            proposal.idempotency_key.as_deref(),
            proposal.accepted,
            index,
        )
    }

    /// The receipt of a batch of `accepted` events with `idempotency_key`,
    /// applied here at `index` (proposed on another node).
    pub fn receipt_of(
        &self,
        idempotency_key: Option<&str>,
        accepted: u32,
        index: u64,
    ) -> IngestReceipt {
        let lsn = Lsn::new(index);
        // Two proposals with one key: apply kept the first.
        let first = idempotency_key.and_then(|k| self.inner.read().keys.get(k));
        match first {
            Some(rec) if rec.lsn != lsn => IngestReceipt {
                accepted: rec.accepted,
                lsn: rec.lsn,
                replayed: true,
            },
            _ => IngestReceipt {
                accepted,
                lsn,
                replayed: false,
            },
        }
    }

    /// Stops the flusher, flushes what is in memory, and closes the log.
    /// Nothing acknowledged is lost even if the flush fails: the log keeps it.
    pub fn close(&self) -> Result<()> {
        {
            lock(&self.inner.flusher.0).stop = true;
            self.inner.flusher.1.notify_all();
        }
        if let Some(h) = lock(&self.flusher).take()
            && h.join().is_err()
        {
            tracing::error!("flusher thread panicked");
        }
        let healthy = self.wal.as_ref().is_none_or(|w| w.health().is_ok());
        let flushed = if self.inner.check_writable().is_ok() && healthy {
            self.flush()
        } else {
            Ok(())
        };
        if let Some(wal) = &self.wal {
            wal.close()?;
        }
        flushed
    }
}

impl Drop for Engine {
    /// An engine dropped without `close` (a test, a failed start) still stops its flusher;
    /// the log keeps everything acknowledged.
    fn drop(&mut self) {
        lock(&self.inner.flusher.0).stop = true;
        self.inner.flusher.1.notify_all();
    }
}

impl Inner {
    /// Applies log entry `lsn`. Deterministic: the same entries in the same order give the same state.
    /// The events go in by chunks, each under the write lock, so readers never
    /// wait for a whole large batch; they may see part of a batch not yet acknowledged.
    /// `ids` are its rows' [`rollup::key_ids`] if the appender looked them up
    /// (see [`KeyedEvents`]); a replayed entry has none, and they are looked up here.
    pub(super) fn apply(
        &self,
        lsn: Lsn,
        payload: &[u8],
        ids: Option<Vec<[KeyId; 5]>>,
    ) -> Result<(), String> {
        let payload = (self.config.cipher)
            .open(payload)
            .map_err(|e| format!("log entry {lsn}: {e}"))?;
        let batch = Logged::decode(&payload).map_err(|e| format!("log entry {lsn}: {e}"))?;
        let ids = ids.filter(|ids| ids.len() == batch.rows.len());
        let plen = self.config.partition_us();
        let _gate = lock(&self.apply_gate);
        let window = window_us(self.config.idempotency_window);
        let duplicate = batch.idempotency_key.is_some_and(|k| {
            self.read()
                .keys
                .get_within(k, batch.received_at, window)
                .is_some()
        });
        if !duplicate {
            for (c, chunk) in batch.rows.chunks(APPLY_CHUNK).enumerate() {
                let mut st = self.write_for_apply();
                let mut added = 0;
                for (i, row) in (c * APPLY_CHUNK..).zip(chunk) {
                    let part = Micros::new(row.ts).floor_to(plen).get();
                    let ids = match &ids {
                        Some(ids) => ids[i],
                        None => rollup::key_ids(row),
                    };
                    let key = |d: Dimension| ids[d.index()];
                    let dict_keys = [
                        key(Dimension::UserId),
                        key(Dimension::Endpoint),
                        key(Dimension::Method),
                    ];
                    let memtable = st.active.entry(part).or_default();
                    added += memtable.push_row_keyed(*row, dict_keys);
                    st.active_rollups.add_keyed(row, &ids);
                }
                st.active_bytes += added;
                if st.oldest_unflushed.is_none() {
                    st.oldest_unflushed = Some(Instant::now());
                }
                // Hand the lock to any query waiting for it, instead of taking
                // it straight back for the next chunk.
                RwLockWriteGuard::unlock_fair(st);
            }
        }
        let mut st = self.write();
        if !duplicate && let Some(key) = batch.idempotency_key {
            let rec = KeyRecord {
                lsn,
                accepted: batch.rows.len() as u32,
                received_at: batch.received_at,
            };
            st.keys.insert(key.to_owned(), rec);
        }
        st.applied_lsn = lsn;
        let full = st.active_bytes >= self.config.memtable_max_bytes;
        drop(st);
        if full {
            self.wake_flusher();
        }
        Ok(())
    }

    /// Has the flusher flush what is in memory, due or not.
    pub(super) fn request_flush(&self) {
        lock(&self.flusher.0).now = true;
        self.wake_flusher();
    }

    fn wake_flusher(&self) {
        lock(&self.flusher.0).wake = true;
        self.flusher.1.notify_one();
    }

    fn flush_due(&self) -> bool {
        let st = self.read();
        st.active_bytes >= self.config.memtable_max_bytes
            || st
                .oldest_unflushed
                .is_some_and(|t| t.elapsed() >= self.config.memtable_max_age)
    }

    /// Writes every memtable to a segment, stores the manifest, truncates the log.
    fn flush(&self, wal: Option<&Wal>) -> Result<()> {
        let mut manifest = lock(&self.manifest);
        // Checked under the manifest lock: a flush that failed before this one left its
        // rows frozen and out of any segment, so no later flush may move `flushed_lsn`.
        self.check_writable()?;
        let (frozen, cells, upto, new_keys) = {
            let _gate = lock(&self.apply_gate);
            let mut st = self.write();
            if st.active.is_empty() && st.applied_lsn == manifest.flushed_lsn {
                return Ok(());
            }
            let parts: Frozen = Arc::new(
                std::mem::take(&mut st.active)
                    .into_iter()
                    .map(|(start, m)| (start, m.freeze()))
                    .collect(),
            );
            let fresh = Rollups::new(self.config.rollup_key_budget);
            let cells = Arc::new(std::mem::replace(&mut st.active_rollups, fresh));
            st.active_bytes = 0;
            st.oldest_unflushed = None;
            st.frozen.push(parts.clone());
            st.frozen_rollups.push(cells.clone());
            (parts, cells, st.applied_lsn, st.keys.take_unflushed())
        };
        // Cells of days memory no longer holds go to their tier files; only
        // maintenance (under the manifest lock too) moves `resident_from`.
        let mut hot = Rollups::clone(&cells);
        let cold = hot.take_before_each(self.read().resident_from);
        let result = self.write_flush(&mut manifest, &frozen, &hot, &cold, upto, &new_keys);
        let (new_segments, replaced_tiers) = match result {
            Ok(written) => {
                self.flushes
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                written
            }
            Err(e) => {
                self.poison(format!("flush failed: {e}"));
                return Err(e);
            }
        };
        // The same merge, in the same order, as start-up's over the rollup files,
        // into a copy that shares every bucket the flush does not touch, so
        // ingest and queries do not wait for it. Only flushes (serialised by the
        // manifest lock) replace `rollups`.
        let mut merged = Rollups::clone(&self.read().rollups);
        merged.merge(&hot);
        {
            let mut st = self.write();
            st.dirty_tiers.extend(dirty_days(&hot));
            st.tiers = cold::tier_index(&manifest);
            // One lock for all, so a reader sees these rows in the segments or the
            // frozen memtables, never both or neither, and their cells once.
            st.segments.extend(new_segments);
            st.frozen.retain(|f| !Arc::ptr_eq(f, &frozen));
            st.frozen_rollups.retain(|r| !Arc::ptr_eq(r, &cells));
            st.rollups = Arc::new(merged);
            st.flushed_lsn = upto;
            let cutoff =
                Micros::now().saturating_sub_micros(window_us(self.config.idempotency_window));
            st.keys.expire(cutoff);
        }
        drop(manifest);
        for file in replaced_tiers {
            self.forget_tier(&file);
            self.remove_quietly(&self.dir(ROLLUP_DIR).join(&file), "a replaced tier file");
        }
        if let Some(wal) = wal {
            // Every entry written is flushed (a node closing, or idle): end the
            // file being written so that it goes too, not only the ones before it.
            if wal.last_lsn() <= upto {
                wal.roll()?;
            }
            wal.truncate_prefix(upto)?;
        }
        Ok(())
    }

    fn write_flush(
        &self,
        manifest: &mut Manifest,
        parts: &[(i64, Vec<Arc<Columns>>)],
        cells: &Rollups,
        cold: &Rollups,
        upto: Lsn,
        new_keys: &[(String, KeyRecord)],
    ) -> Result<(Vec<Arc<Segment>>, Vec<String>)> {
        let plen = self.config.partition_us();
        let seg_dir = self.dir(SEGMENT_DIR);
        let key_dir = self.dir(KEY_DIR);
        let mut next = manifest.clone();
        let mut created = Vec::new();
        for (start, chunks) in parts {
            let chunks: Vec<&Columns> = chunks.iter().map(|c| &**c).collect();
            if chunks.iter().all(|c| c.len() == 0) {
                continue;
            }
            let id = Self::next_segment_id(&mut next)?;
            let image =
                segment::encode_parts(&chunks, Micros::new(*start), plen, &self.config.cipher);
            let file = manifest::segment_file_name(id);
            let path = seg_dir.join(&file);
            manifest::write_durable(&self.fs, &path, &image)?;
            let meta = segment::read_meta(&image).map_err(|e| EngineError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            next.segments.push(SegmentEntry {
                id,
                file,
                bytes: image.len() as u64,
                meta,
                archived: None,
                archive_key_id: None,
                sealed: None,
            });
            created.push((id, path, meta));
        }
        // The cells of exactly the rows this flush writes, built as they were applied:
        // with the files of earlier flushes and the log past `flushed_lsn`, they
        // rebuild every rollup.
        let rollup_dir = self.dir(ROLLUP_DIR);
        if !cells.is_empty() {
            let file = format!("{:020}.cube", upto.get());
            let path = rollup_dir.join(&file);
            let image = cells
                .to_file(rollup::FLUSH_FILE_LEVEL)
                .map_err(io_err("encoding rollups for", &path))?;
            manifest::write_durable(&self.fs, &path, &self.config.cipher.seal(image))?;
            next.rollup_files.push(file);
        }
        let replaced_tiers = self.fold_cold(&mut next, cold)?;
        if !new_keys.is_empty() {
            let file = format!("{:020}.keys", upto.get());
            let path = key_dir.join(&file);
            let image = self.config.cipher.seal(idempotency::encode(new_keys));
            manifest::write_durable(&self.fs, &path, &image)?;
            let newest = new_keys
                .iter()
                .map(|(_, r)| r.received_at)
                .max()
                .unwrap_or_default();
            next.key_files.push(KeyFileEntry { file, newest });
        }
        let cutoff = Micros::now().saturating_sub_micros(window_us(self.config.idempotency_window));
        let (expired, kept): (Vec<_>, Vec<_>) =
            next.key_files.drain(..).partition(|k| k.newest < cutoff);
        next.key_files = kept;
        self.fs
            .sync_dir(&seg_dir)
            .map_err(io_err("fsync directory", &seg_dir))?;
        self.fs
            .sync_dir(&rollup_dir)
            .map_err(io_err("fsync directory", &rollup_dir))?;
        self.fs
            .sync_dir(&key_dir)
            .map_err(io_err("fsync directory", &key_dir))?;
        next.flushed_lsn = upto;
        next.store(&self.fs, &self.config.data_dir, &self.config.cipher)?;
        *manifest = next;
        for k in expired {
            let path = key_dir.join(&k.file);
            // The manifest no longer lists it; a failure here only leaves an orphan removed at start-up.
            if let Err(e) = self.fs.remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "could not remove expired key file");
            }
        }
        let segments = created
            .into_iter()
            .map(|(id, path, meta)| {
                let bytes = self.fs.map(&path).map_err(io_err("map", &path))?;
                Ok(Arc::new(Segment {
                    id,
                    path,
                    meta,
                    stored: Stored::Local(bytes),
                    sealed: None,
                }))
            })
            .collect::<Result<_>>()?;
        Ok((segments, replaced_tiers))
    }
}

/// The (granularity, UTC day) of every bucket in `cells`.
pub(super) fn dirty_days(cells: &Rollups) -> Vec<(Granularity, Micros)> {
    let mut out: Vec<_> = cells
        .bucket_starts()
        .map(|(g, start)| (g, start.floor_to(DAY_US)))
        .collect();
    out.dedup();
    out
}

pub(super) fn flusher_loop(inner: &Inner, wal: Option<&Wal>) {
    loop {
        let asked = {
            let (m, cv) = &inner.flusher;
            let mut sig = lock(m);
            if !sig.stop && !sig.wake {
                sig = cv
                    .wait_timeout(sig, Duration::from_millis(250))
                    .map(|(g, _)| g)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
            if sig.stop {
                return;
            }
            sig.wake = false;
            std::mem::take(&mut sig.now)
        };
        if inner.check_writable().is_ok()
            && (asked || inner.flush_due())
            && let Err(e) = inner.flush(wal)
        {
            tracing::error!(error = %e, "flush failed");
        }
    }
}
