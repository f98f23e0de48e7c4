//! The engine: batches go to the WAL, are applied to per-partition memtables
//! on the WAL's writer thread in log order (so queries see them before the
//! client's acknowledgement), and are flushed together into segments. A flush
//! moves the manifest's `flushed_lsn` forward, then truncates the log.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use toplog_types::{Event, Lsn, Micros, SegmentId};
use toplog_wal::{FileBytes, Fs, FsyncPolicy, Wal, WalOptions};

use crate::batch::Batch;
use crate::columns::Columns;
use crate::error::{EngineError, Result, io_err};
use crate::idempotency::{self, KeyIndex, KeyRecord};
use crate::manifest::{self, KeyFileEntry, Manifest, SegmentEntry};
use crate::rollup::{Cell, Cube, Dimension, Granularity, Rollups};
use crate::scan::{self, Cursor, Filters, Page, TimeRange};
use crate::segment::{self, SegmentMeta};

const WAL_DIR: &str = "wal";
const SEGMENT_DIR: &str = "segments";
const KEY_DIR: &str = "idempotency";
const ROLLUP_DIR: &str = "rollups";
/// Events applied per hold of the write lock.
const APPLY_CHUNK: usize = 256;
/// Decoded segments kept for repeated reads (paging walks the same segments).
const DECODED_CACHE: usize = 8;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub data_dir: PathBuf,
    /// Length of a time partition (one UTC day by default).
    pub partition: Duration,
    pub fsync: FsyncPolicy,
    /// Flush when the memtables hold this many bytes...
    pub memtable_max_bytes: usize,
    /// ...or when their oldest row is this old.
    pub memtable_max_age: Duration,
    /// How long an idempotency key is remembered.
    pub idempotency_window: Duration,
    pub wal_segment_bytes: u64,
    /// Most keys one cube bucket keeps a cell for; past it the bucket keeps a
    /// heavy-hitter summary (see docs/rollups.md).
    pub rollup_key_budget: usize,
}

/// The default [`EngineConfig::rollup_key_budget`].
pub const DEFAULT_ROLLUP_KEY_BUDGET: usize = 50_000;

impl EngineConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            partition: Duration::from_secs(86_400),
            fsync: FsyncPolicy::Always,
            memtable_max_bytes: 64 << 20,
            memtable_max_age: Duration::from_secs(300),
            idempotency_window: Duration::from_secs(86_400),
            wal_segment_bytes: 64 << 20,
            rollup_key_budget: DEFAULT_ROLLUP_KEY_BUDGET,
        }
    }

    fn partition_us(&self) -> i64 {
        i64::try_from(self.partition.as_micros())
            .unwrap_or(i64::MAX)
            .max(60_000_000)
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

/// A summary of what is stored, for `/readyz` and operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageStats {
    pub segments: usize,
    pub segment_rows: u64,
    pub segment_bytes: u64,
    pub memtable_rows: usize,
    pub memtable_bytes: usize,
    pub applied_lsn: Lsn,
    pub flushed_lsn: Lsn,
    pub idempotency_keys: usize,
}

#[derive(Debug)]
struct Segment {
    id: SegmentId,
    path: PathBuf,
    meta: SegmentMeta,
    bytes: FileBytes,
}

/// Memtables taken out by a flush, by partition start.
type Frozen = Arc<Vec<(i64, Columns)>>;

#[derive(Debug, Default)]
struct State {
    /// Open memtables by partition start.
    active: BTreeMap<i64, Columns>,
    active_bytes: usize,
    oldest_unflushed: Option<Instant>,
    /// Memtables being written out; still served to reads until their segments are in.
    frozen: Vec<Frozen>,
    /// `flushed_lsn` of the stored manifest.
    flushed_lsn: Lsn,
    segments: Vec<Arc<Segment>>,
    applied_lsn: Lsn,
    keys: KeyIndex,
    /// Cubes over the flushed rows: the merge, in flush order, of the rollups of
    /// every flush (exactly what start-up rebuilds from the rollup files).
    /// Replaced, not changed, by a flush: the merge is done outside the lock.
    rollups: Arc<Rollups>,
    /// Cubes over the rows of the memtables being flushed.
    frozen_rollups: Vec<Arc<Rollups>>,
    /// Cubes over the rows of the open memtables, updated as batches are applied.
    active_rollups: Rollups,
}

#[derive(Debug)]
struct Inner {
    fs: Arc<dyn Fs>,
    config: EngineConfig,
    /// A fair lock (parking_lot): a query waiting for it is not overtaken by
    /// the apply thread taking it again and again for chunk after chunk.
    state: RwLock<State>,
    /// The manifest as last stored; holding this lock serialises flushes.
    manifest: Mutex<Manifest>,
    /// Held by an apply from start to end and by a flush while it takes the
    /// memtables, so a flush never splits a batch that is applied in chunks.
    apply_gate: Mutex<()>,
    /// Set once after a failure that must not be retried; writes are refused from then on.
    poisoned: Mutex<Option<String>>,
    flusher: (Mutex<FlusherSignal>, Condvar),
    decoded: Mutex<Vec<(SegmentId, Arc<Columns>)>>,
}

#[derive(Debug, Default)]
struct FlusherSignal {
    wake: bool,
    stop: bool,
}

/// A single node's storage: open it, ingest batches, read events back.
#[derive(Debug)]
pub struct Engine {
    inner: Arc<Inner>,
    wal: Arc<Wal>,
    flusher: Mutex<Option<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Inner {
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read()
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write()
    }

    fn dir(&self, sub: &str) -> PathBuf {
        self.config.data_dir.join(sub)
    }

    fn poison(&self, reason: String) {
        tracing::error!(%reason, "engine stops accepting writes");
        lock(&self.poisoned).get_or_insert(reason);
    }

    fn check_writable(&self) -> Result<()> {
        match lock(&self.poisoned).as_ref() {
            Some(reason) => Err(EngineError::Unavailable(reason.clone())),
            None => Ok(()),
        }
    }

    /// Applies one log entry. Deterministic: the same entries in the same order give the same state.
    /// The events go in by chunks, each under the write lock, so readers never
    /// wait for a whole large batch; they may see part of a batch not yet acknowledged.
    fn apply(&self, lsn: Lsn, payload: &[u8]) -> Result<(), String> {
        let batch = Batch::decode(payload).map_err(|e| format!("log entry {lsn}: {e}"))?;
        let plen = self.config.partition_us();
        let _gate = lock(&self.apply_gate);
        let window = window_us(self.config.idempotency_window);
        let duplicate = batch.idempotency_key.as_deref().is_some_and(|k| {
            self.read()
                .keys
                .get_within(k, batch.received_at, window)
                .is_some()
        });
        if !duplicate {
            for chunk in batch.events.chunks(APPLY_CHUNK) {
                let mut st = self.write();
                let mut added = 0;
                for e in chunk {
                    let part = e.timestamp.floor_to(plen).get();
                    added += st.active.entry(part).or_default().push(e);
                    st.active_rollups.add(e);
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
                accepted: batch.events.len() as u32,
                received_at: batch.received_at,
            };
            st.keys.insert(key, rec);
        }
        st.applied_lsn = lsn;
        let full = st.active_bytes >= self.config.memtable_max_bytes;
        drop(st);
        if full {
            self.wake_flusher();
        }
        Ok(())
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
    fn flush(&self, wal: &Wal) -> Result<()> {
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
            let parts: Frozen = Arc::new(std::mem::take(&mut st.active).into_iter().collect());
            let fresh = Rollups::new(self.config.rollup_key_budget);
            let cells = Arc::new(std::mem::replace(&mut st.active_rollups, fresh));
            st.active_bytes = 0;
            st.oldest_unflushed = None;
            st.frozen.push(parts.clone());
            st.frozen_rollups.push(cells.clone());
            (parts, cells, st.applied_lsn, st.keys.take_unflushed())
        };
        let result = self.write_flush(&mut manifest, &frozen, &cells, upto, &new_keys);
        let new_segments = match result {
            Ok(segs) => segs,
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
        merged.merge(&cells);
        {
            let mut st = self.write();
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
        wal.truncate_prefix(upto)?;
        Ok(())
    }

    fn write_flush(
        &self,
        manifest: &mut Manifest,
        parts: &[(i64, Columns)],
        cells: &Rollups,
        upto: Lsn,
        new_keys: &[(String, KeyRecord)],
    ) -> Result<Vec<Arc<Segment>>> {
        let plen = self.config.partition_us();
        let seg_dir = self.dir(SEGMENT_DIR);
        let key_dir = self.dir(KEY_DIR);
        let mut next = manifest.clone();
        let mut created = Vec::new();
        for (start, cols) in parts {
            if cols.len() == 0 {
                continue;
            }
            let id = next
                .last_segment_id
                .checked_next()
                .ok_or_else(|| EngineError::Unavailable("segment ids exhausted".into()))?;
            next.last_segment_id = id;
            let image = segment::encode(cols, Micros::new(*start), plen);
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
            });
            created.push((id, path, meta));
        }
        // The cells of exactly the rows this flush writes, built as they were applied:
        // with the files of earlier flushes and the log past `flushed_lsn`, they
        // rebuild every rollup.
        let rollup_dir = self.dir(ROLLUP_DIR);
        if !cells.is_empty() {
            let file = format!("{:020}.cube", upto.get());
            manifest::write_durable(&self.fs, &rollup_dir.join(&file), &cells.to_file())?;
            next.rollup_files.push(file);
        }
        if !new_keys.is_empty() {
            let file = format!("{:020}.keys", upto.get());
            let path = key_dir.join(&file);
            manifest::write_durable(&self.fs, &path, &idempotency::encode(new_keys))?;
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
        next.store(&self.fs, &self.config.data_dir)?;
        *manifest = next;
        for k in expired {
            let path = key_dir.join(&k.file);
            // The manifest no longer lists it; a failure here only leaves an orphan removed at start-up.
            if let Err(e) = self.fs.remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "could not remove expired key file");
            }
        }
        created
            .into_iter()
            .map(|(id, path, meta)| {
                let bytes = self.fs.map(&path).map_err(io_err("map", &path))?;
                Ok(Arc::new(Segment {
                    id,
                    path,
                    meta,
                    bytes,
                }))
            })
            .collect()
    }

    fn decoded(&self, seg: &Segment) -> Result<Arc<Columns>> {
        if let Some((_, cols)) = lock(&self.decoded).iter().find(|(id, _)| *id == seg.id) {
            return Ok(cols.clone());
        }
        let (_, cols) = segment::decode(&seg.bytes).map_err(|e| EngineError::Corrupt {
            path: seg.path.clone(),
            reason: e.to_string(),
        })?;
        let cols = Arc::new(cols);
        let mut cache = lock(&self.decoded);
        if cache.len() >= DECODED_CACHE {
            cache.remove(0);
        }
        cache.push((seg.id, cols.clone()));
        Ok(cols)
    }
}

fn window_us(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

impl Engine {
    /// Opens the store in `config.data_dir` (creating it if new) on the real disk.
    pub fn open(config: EngineConfig) -> Result<Self> {
        Self::open_with(Arc::new(toplog_wal::RealFs), config)
    }

    /// Opens the store through `fs`: loads the manifest, removes orphans of an
    /// interrupted flush, loads idempotency keys and replays the log past the
    /// manifest's `flushed_lsn`.
    pub fn open_with(fs: Arc<dyn Fs>, config: EngineConfig) -> Result<Self> {
        let root = config.data_dir.clone();
        for sub in [WAL_DIR, SEGMENT_DIR, KEY_DIR, ROLLUP_DIR] {
            let dir = root.join(sub);
            fs.create_dir_all(&dir)
                .map_err(io_err("create directory", &dir))?;
        }
        fs.sync_dir(&root)
            .map_err(io_err("fsync directory", &root))?;
        let manifest = match Manifest::load(&fs, &root)? {
            Some(m) => m,
            None => {
                // A store without a manifest must be empty: otherwise the manifest was lost
                // and "removing orphans" would delete the data it listed.
                for sub in [SEGMENT_DIR, KEY_DIR, ROLLUP_DIR] {
                    let dir = root.join(sub);
                    if !fs.list(&dir).map_err(io_err("list", &dir))?.is_empty() {
                        return Err(EngineError::Corrupt {
                            path: root.join(manifest::FILE),
                            reason: format!(
                                "missing, but {} holds files; restore the manifest or move the data away",
                                dir.display()
                            ),
                        });
                    }
                }
                // A new store gets its (empty) manifest at once, so that later a missing
                // manifest always means a lost one, never a first flush cut short.
                let fresh = Manifest::default();
                fresh.store(&fs, &root)?;
                fresh
            }
        };

        let seg_dir = root.join(SEGMENT_DIR);
        let names: Vec<&str> = manifest.segments.iter().map(|s| s.file.as_str()).collect();
        for path in manifest::remove_orphans(&fs, &seg_dir, &names)? {
            tracing::info!(path = %path.display(), "removed segment left by an interrupted flush");
        }
        let key_dir = root.join(KEY_DIR);
        let names: Vec<&str> = manifest.key_files.iter().map(|k| k.file.as_str()).collect();
        manifest::remove_orphans(&fs, &key_dir, &names)?;
        let rollup_dir = root.join(ROLLUP_DIR);
        let names: Vec<&str> = manifest.rollup_files.iter().map(String::as_str).collect();
        manifest::remove_orphans(&fs, &rollup_dir, &names)?;

        let budget = config.rollup_key_budget;
        let mut state = State {
            applied_lsn: manifest.flushed_lsn,
            flushed_lsn: manifest.flushed_lsn,
            rollups: Arc::new(Rollups::new(budget)),
            active_rollups: Rollups::new(budget),
            ..State::default()
        };
        for entry in &manifest.segments {
            let path = seg_dir.join(&entry.file);
            let bytes = fs.map(&path).map_err(io_err("map", &path))?;
            let corrupt = |reason: String| EngineError::Corrupt {
                path: path.clone(),
                reason,
            };
            let meta = segment::read_meta(&bytes).map_err(|e| corrupt(e.to_string()))?;
            if meta != entry.meta || bytes.len() as u64 != entry.bytes {
                return Err(corrupt("footer or size disagrees with the manifest".into()));
            }
            state.segments.push(Arc::new(Segment {
                id: entry.id,
                path,
                meta,
                bytes,
            }));
        }
        // Rollups of flushed rows come from their files; replay adds the rest.
        for file in &manifest.rollup_files {
            let path = rollup_dir.join(file);
            let buf = fs.read(&path).map_err(io_err("read", &path))?;
            let cells = Rollups::from_file(&buf, budget).map_err(|e| EngineError::Corrupt {
                path: path.clone(),
                reason: e.0,
            })?;
            Arc::make_mut(&mut state.rollups).merge(&cells);
        }
        // Every listed key is loaded, however old: replay judges a key's age against the
        // replayed batch's own receive time, so the outcome cannot depend on when we restart.
        for kf in &manifest.key_files {
            let path = key_dir.join(&kf.file);
            let buf = fs.read(&path).map_err(io_err("read", &path))?;
            let keys = idempotency::decode(&buf).map_err(|e| EngineError::Corrupt {
                path: path.clone(),
                reason: e.0,
            })?;
            for (k, rec) in keys {
                state.keys.load(k, rec);
            }
        }

        let flushed = manifest.flushed_lsn;
        let inner = Arc::new(Inner {
            fs: fs.clone(),
            config,
            state: RwLock::new(state),
            manifest: Mutex::new(manifest),
            apply_gate: Mutex::new(()),
            poisoned: Mutex::new(None),
            flusher: (Mutex::new(FlusherSignal::default()), Condvar::new()),
            decoded: Mutex::new(Vec::new()),
        });
        let applier = inner.clone();
        let on_durable: toplog_wal::OnDurable = Box::new(move |lsn, payload| {
            if let Err(reason) = applier.apply(lsn, payload) {
                applier.poison(reason);
            }
        });
        let wal_opts = WalOptions {
            fsync: inner.config.fsync,
            segment_bytes: inner.config.wal_segment_bytes,
        };
        let (wal, replay) = Wal::open(fs, &root.join(WAL_DIR), wal_opts, flushed, on_durable)?;
        let replayed = replay.len();
        for entry in replay {
            inner
                .apply(entry.lsn, &entry.payload)
                .map_err(|reason| EngineError::Corrupt {
                    path: root.join(WAL_DIR),
                    reason,
                })?;
        }
        tracing::info!(replayed, flushed_lsn = %flushed, "engine recovered");

        let wal = Arc::new(wal);
        let handle = {
            let (inner, wal) = (inner.clone(), wal.clone());
            std::thread::Builder::new()
                .name("toplog-flush".into())
                .spawn(move || flusher_loop(&inner, &wal))
                .map_err(io_err("spawn flusher thread", &root))?
        };
        Ok(Self {
            inner,
            wal,
            flusher: Mutex::new(Some(handle)),
        })
    }

    /// Appends a batch durably and applies it. Returns once the batch is durable
    /// under the fsync policy and visible to reads. A batch whose idempotency key
    /// is known is acknowledged again without being applied.
    pub async fn ingest(
        &self,
        events: Vec<Event>,
        idempotency_key: Option<String>,
    ) -> Result<IngestReceipt> {
        self.inner.check_writable()?;
        self.wal.health()?;
        if let Some(rec) = idempotency_key.as_deref().and_then(|k| {
            let window = window_us(self.inner.config.idempotency_window);
            self.inner.read().keys.get_within(k, Micros::now(), window)
        }) {
            return Ok(IngestReceipt {
                accepted: rec.accepted,
                lsn: rec.lsn,
                replayed: true,
            });
        }
        let accepted = events.len() as u32;
        let batch = Batch {
            received_at: Micros::now(),
            idempotency_key,
            events,
        };
        let lsn = self
            .wal
            .append(batch.encode())
            .await
            .map_err(|_| EngineError::Unavailable("the log writer has stopped".into()))??;
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
        self.wal.health()?;
        Ok(())
    }

    /// Flushes all memtables to segments now.
    pub fn flush(&self) -> Result<()> {
        self.inner.flush(&self.wal)
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
        let flushed = if self.inner.check_writable().is_ok() && self.wal.health().is_ok() {
            self.flush()
        } else {
            Ok(())
        };
        self.wal.close()?;
        flushed
    }

    /// Events in `range` matching `filters`, in (timestamp, request id) order, one page at a time.
    pub fn scan(
        &self,
        range: TimeRange,
        filters: &Filters,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Result<Page> {
        let want = limit
            .saturating_add(after.map_or(0, |c| c.skip as usize))
            .saturating_add(1);
        let (mut segments, frozen, mut candidates) = self.snapshot(&range, |cols| {
            scan::collect(cols, false, &range, filters, after, want)
        });
        for (_, cols) in frozen.iter().flat_map(|f| f.iter()) {
            candidates.extend(scan::collect(cols, false, &range, filters, after, want));
        }
        scan::keep_first(&mut candidates, want);
        // Visit segments by start time, and stop at the first that starts after the
        // `want`-th candidate: it, and every later one, can only add rows past the page.
        segments.sort_by_key(|s| s.meta.min_ts);
        for seg in segments {
            if after.is_some_and(|c| seg.meta.max_ts < c.ts) {
                continue;
            }
            if candidates.len() >= want
                && candidates
                    .last()
                    .is_some_and(|e| seg.meta.min_ts > e.timestamp)
            {
                break;
            }
            let cols = self.inner.decoded(&seg)?;
            candidates.extend(scan::collect(&cols, true, &range, filters, after, want));
            scan::keep_first(&mut candidates, want);
        }
        Ok(scan::page(candidates, after, limit))
    }

    /// The exact number of stored events in `range` matching `filters`.
    pub fn count(&self, range: TimeRange, filters: &Filters) -> Result<u64> {
        let (segments, frozen, active) = self.snapshot(&range, |cols| {
            vec![scan::count(cols, false, &range, filters)]
        });
        let mut total: u64 = active.iter().sum();
        for (_, cols) in frozen.iter().flat_map(|f| f.iter()) {
            total += scan::count(cols, false, &range, filters);
        }
        for seg in segments {
            if filters.is_empty() && range.contains_all(seg.meta.min_ts, seg.meta.max_ts) {
                total += seg.meta.rows;
            } else {
                total += scan::count(&*self.inner.decoded(&seg)?, true, &range, filters);
            }
        }
        Ok(total)
    }

    /// Under one read lock (so a concurrent flush is seen entirely or not at all):
    /// the segments overlapping `range`, the memtables being flushed, and what
    /// `on_active` makes of each open memtable.
    fn snapshot<T>(
        &self,
        range: &TimeRange,
        on_active: impl Fn(&Columns) -> Vec<T>,
    ) -> (Vec<Arc<Segment>>, Vec<Frozen>, Vec<T>) {
        let st = self.inner.read();
        let segs = st
            .segments
            .iter()
            .filter(|s| range.overlaps(s.meta.min_ts, s.meta.max_ts))
            .cloned()
            .collect();
        let active = st.active.values().flat_map(on_active).collect();
        (segs, st.frozen.clone(), active)
    }

    /// Calls `f` with the cube of `dim` of every bucket of `g` that starts in
    /// `[from, to)`. A bucket may come as several cubes (flushed rows, rows being
    /// flushed, open memtables): their cells add up.
    pub fn visit_rollups(
        &self,
        g: Granularity,
        from: Micros,
        to: Micros,
        dim: Dimension,
        f: impl FnMut(&Cube),
    ) {
        self.with_rollups(&[(g, from, to)], dim, |cubes| {
            cubes.iter().copied().for_each(f)
        })
    }

    /// Calls `f` once, under one read lock, with every cube [`Engine::visit_rollups`]
    /// would visit for each `(granularity, from, to)` of `pieces`, so they can be
    /// read side by side.
    pub fn with_rollups<R>(
        &self,
        pieces: &[(Granularity, Micros, Micros)],
        dim: Dimension,
        f: impl FnOnce(&[&Cube]) -> R,
    ) -> R {
        let st = self.inner.read();
        let mut cubes = Vec::new();
        for &(g, from, to) in pieces {
            st.rollups.visit(g, from, to, dim, |c| cubes.push(c));
            for r in &st.frozen_rollups {
                r.visit(g, from, to, dim, |c| cubes.push(c));
            }
            st.active_rollups.visit(g, from, to, dim, |c| cubes.push(c));
        }
        f(&cubes)
    }

    /// Aggregates the raw rows in `range` matching `filters` by `dim`, as the cubes would.
    pub fn aggregate_raw(
        &self,
        range: TimeRange,
        filters: &Filters,
        dim: Dimension,
    ) -> Result<std::collections::HashMap<String, Cell>> {
        let (segments, frozen, active) = self.snapshot(&range, |cols| {
            let mut out = std::collections::HashMap::new();
            scan::aggregate(cols, false, &range, filters, dim, &mut out);
            vec![out]
        });
        let mut out = std::collections::HashMap::new();
        for (_, cols) in frozen.iter().flat_map(|f| f.iter()) {
            scan::aggregate(cols, false, &range, filters, dim, &mut out);
        }
        for seg in segments {
            scan::aggregate(
                &*self.inner.decoded(&seg)?,
                true,
                &range,
                filters,
                dim,
                &mut out,
            );
        }
        for part in active {
            for (k, cell) in part {
                match out.get_mut(&k) {
                    Some(c) => c.merge(&cell),
                    None => {
                        out.insert(k, cell);
                    }
                }
            }
        }
        Ok(out)
    }

    /// The `k` slowest requests in `range` matching `filters` (fastest with `asc`),
    /// ties broken by request id.
    pub fn slowest(
        &self,
        range: TimeRange,
        filters: &Filters,
        k: usize,
        asc: bool,
    ) -> Result<Vec<Event>> {
        let (segments, frozen, mut out) = self.snapshot(&range, |cols| {
            scan::by_latency(cols, &range, filters, k, asc)
        });
        for (_, cols) in frozen.iter().flat_map(|f| f.iter()) {
            out.extend(scan::by_latency(cols, &range, filters, k, asc));
        }
        for seg in segments {
            out.extend(scan::by_latency(
                &*self.inner.decoded(&seg)?,
                &range,
                filters,
                k,
                asc,
            ));
        }
        out.sort_by(scan::latency_order(asc));
        out.truncate(k);
        Ok(out)
    }

    pub fn stats(&self) -> StorageStats {
        let st = self.inner.read();
        StorageStats {
            segments: st.segments.len(),
            segment_rows: st.segments.iter().map(|s| s.meta.rows).sum(),
            segment_bytes: st.segments.iter().map(|s| s.bytes.len() as u64).sum(),
            memtable_rows: st.active.values().map(Columns::len).sum(),
            memtable_bytes: st.active_bytes,
            applied_lsn: st.applied_lsn,
            flushed_lsn: st.flushed_lsn,
            idempotency_keys: st.keys.len(),
        }
    }

    pub fn data_dir(&self) -> &Path {
        &self.inner.config.data_dir
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

fn flusher_loop(inner: &Inner, wal: &Wal) {
    loop {
        {
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
        }
        if inner.check_writable().is_ok()
            && inner.flush_due()
            && let Err(e) = inner.flush(wal)
        {
            tracing::error!(error = %e, "flush failed");
        }
    }
}
