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

use crate::archive::{self, ArchiveStore};
use crate::batch::{Batch, KeyedEvents, Logged};
use crate::columns::Columns;
use crate::error::{EngineError, Result, io_err};
use crate::idempotency::{self, KeyIndex, KeyRecord};
use crate::keys::KeyId;
use crate::manifest::{self, KeyFileEntry, Manifest, SegmentEntry};
use crate::rollup::{self, Cube, Dimension, Granularity, Rollups};
use crate::scan::{self, Cursor, Filters, Page, RawCells, TimeRange};
use crate::segment::{self, SegmentMeta};

const WAL_DIR: &str = "wal";
const SEGMENT_DIR: &str = "segments";
const KEY_DIR: &str = "idempotency";
const ROLLUP_DIR: &str = "rollups";
/// Events applied per hold of the write lock.
const APPLY_CHUNK: usize = 256;
/// Bytes of decoded segments kept for repeated reads (paging walks the same
/// segments; raw queries over a span read the same ones again), least
/// recently used out first.
const DECODED_CACHE_BYTES: usize = 256 << 20;

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
    /// Where archived segments are kept and read from.
    pub archive: Option<Arc<dyn ArchiveStore>>,
}

/// How long each kind of data stays visible to reads; `None` keeps it forever.
/// Reads hide data past it at once; [`Engine::purge`] then removes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    pub raw: Option<Duration>,
    pub minute: Option<Duration>,
    pub hour: Option<Duration>,
    pub day: Option<Duration>,
}

/// The oldest instant each kind of data is kept from, at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cutoffs {
    /// Raw rows older than this are gone.
    pub raw: Micros,
    minute: Micros,
    hour: Micros,
    day: Micros,
}

impl Retention {
    /// The cutoffs at `now`. Raw rows are kept from exactly `now - raw`; a rollup
    /// bucket is kept only if it starts at or after `now - keep`, so no bucket
    /// holds anything older than its retention.
    pub fn cutoffs(&self, now: Micros) -> Cutoffs {
        let at = |keep: Option<Duration>| match keep {
            None => Micros::new(i64::MIN),
            Some(d) => now.saturating_sub_micros(window_us(d)),
        };
        let bucket = |keep: Option<Duration>, g: Granularity| {
            let t = at(keep);
            if keep.is_none() {
                return t;
            }
            let floor = t.floor_to(g.len_us());
            if floor == t {
                t
            } else {
                floor.saturating_add_micros(g.len_us())
            }
        };
        Cutoffs {
            raw: at(self.raw),
            minute: bucket(self.minute, Granularity::Minute),
            hour: bucket(self.hour, Granularity::Hour),
            day: bucket(self.day, Granularity::Day),
        }
    }
}

impl Cutoffs {
    /// Buckets of `g` starting before this are gone.
    pub fn rollup(&self, g: Granularity) -> Micros {
        match g {
            Granularity::Minute => self.minute,
            Granularity::Hour => self.hour,
            Granularity::Day => self.day,
        }
    }

    /// `range` without the part past raw retention.
    pub fn retained(&self, range: &TimeRange) -> TimeRange {
        TimeRange {
            start: range.start.max(self.raw),
            end: range.end,
        }
    }
}

/// A stored segment, for operators and the maintenance policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    pub id: SegmentId,
    pub meta: SegmentMeta,
    /// Size of the local file, or of the archived object.
    pub bytes: u64,
    /// The object key when the segment lives in the archive.
    pub archived: Option<String>,
}

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
            archive: None,
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
    stored: Stored,
}

#[derive(Debug)]
enum Stored {
    Local(FileBytes),
    Archived { key: String, bytes: u64 },
}

impl Segment {
    fn info(&self) -> SegmentInfo {
        let (bytes, archived) = match &self.stored {
            Stored::Local(b) => (b.len() as u64, None),
            Stored::Archived { key, bytes } => (*bytes, Some(key.clone())),
        };
        SegmentInfo {
            id: self.id,
            meta: self.meta,
            bytes,
            archived,
        }
    }
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
    /// (granularity, UTC day) whose buckets changed since their tier file was written.
    dirty_tiers: std::collections::BTreeSet<(Granularity, Micros)>,
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
    /// Least recently used first, with each entry's size.
    decoded: Mutex<Vec<(SegmentId, Arc<Columns>, usize)>>,
    retention: RwLock<Retention>,
    /// Serialises compaction, archiving and purging against each other.
    maintenance: Mutex<()>,
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

    /// Applies log entry `lsn`. Deterministic: the same entries in the same order give the same state.
    /// The events go in by chunks, each under the write lock, so readers never
    /// wait for a whole large batch; they may see part of a batch not yet acknowledged.
    /// `ids` are its rows' [`rollup::key_ids`] if the appender looked them up
    /// (see [`KeyedEvents`]); a replayed entry has none, and they are looked up here.
    fn apply(&self, lsn: Lsn, payload: &[u8], ids: Option<Vec<[KeyId; 5]>>) -> Result<(), String> {
        let batch = Logged::decode(payload).map_err(|e| format!("log entry {lsn}: {e}"))?;
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
                let mut st = self.write();
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

    fn wake_flusher(&self) {
        lock(&self.flusher.0).wake = true;
        self.flusher.1.notify_one();
    }

    /// Whether the partition starting at `start` may hold rows in `range`:
    /// a read skips memtables of other partitions without scanning them.
    fn partition_overlaps(&self, start: i64, range: &TimeRange) -> bool {
        let last = start.saturating_add(self.config.partition_us() - 1);
        range.overlaps(Micros::new(start), Micros::new(last))
    }

    /// Calls `f` with every cube of `dim` in `pieces` (and the piece's
    /// index): flushed, being flushed, then open. Buckets past their retention
    /// are not read, purged or not.
    fn visit_pieces<'s>(
        &self,
        st: &'s State,
        pieces: &[(Granularity, Micros, Micros)],
        dim: Dimension,
        mut f: impl FnMut(usize, &'s Cube),
    ) {
        let cutoffs = self.cutoffs();
        for (i, &(g, from, to)) in pieces.iter().enumerate() {
            let from = from.max(cutoffs.rollup(g));
            st.rollups.visit(g, from, to, dim, |c| f(i, c));
            for r in &st.frozen_rollups {
                r.visit(g, from, to, dim, |c| f(i, c));
            }
            st.active_rollups.visit(g, from, to, dim, |c| f(i, c));
        }
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
            st.dirty_tiers.extend(dirty_days(&cells));
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
            let id = Self::next_segment_id(&mut next)?;
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
                archived: None,
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
            manifest::write_durable(&self.fs, &path, &image)?;
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
                    stored: Stored::Local(bytes),
                }))
            })
            .collect()
    }

    fn archive_store(&self) -> Result<Arc<dyn ArchiveStore>> {
        self.config.archive.clone().ok_or_else(|| {
            EngineError::Unavailable("segments are archived but no archive is configured".into())
        })
    }

    fn cutoffs(&self) -> Cutoffs {
        self.retention.read().cutoffs(Micros::now())
    }

    fn next_segment_id(manifest: &mut Manifest) -> Result<SegmentId> {
        let id = manifest
            .last_segment_id
            .checked_next()
            .ok_or_else(|| EngineError::Unavailable("segment ids exhausted".into()))?;
        manifest.last_segment_id = id;
        Ok(id)
    }

    /// A decoded segment from the cache, made the most recently used.
    fn cached(&self, id: SegmentId) -> Option<Arc<Columns>> {
        let mut cache = lock(&self.decoded);
        let at = cache.iter().position(|(cached, _, _)| *cached == id)?;
        let hit = cache.remove(at);
        let cols = hit.1.clone();
        cache.push(hit);
        Some(cols)
    }

    /// Decodes `seg`, checksums checked; of an archived segment, only the row
    /// groups that may hold rows in `range` (`None`: all). Also says whether
    /// all of the segment was read.
    fn load(
        &self,
        seg: &Segment,
        range: Option<&TimeRange>,
        request_ids: bool,
    ) -> Result<(Columns, bool)> {
        match &seg.stored {
            Stored::Local(bytes) => {
                let (_, cols) =
                    segment::decode(bytes, request_ids).map_err(|e| EngineError::Corrupt {
                        path: seg.path.clone(),
                        reason: e.to_string(),
                    })?;
                Ok((cols, true))
            }
            Stored::Archived { key, bytes } => {
                // A range over the whole segment reads all of it.
                let range = range.filter(|r| !r.contains_all(seg.meta.min_ts, seg.meta.max_ts));
                let cols =
                    archive::read(&self.archive_store()?, key, *bytes, range).map_err(|e| {
                        EngineError::Archive {
                            key: key.clone(),
                            reason: format!("reading segment {}: {e}", seg.id),
                        }
                    })?;
                Ok((cols, range.is_none()))
            }
        }
    }

    /// The rows of `seg` (see [`Inner::load`]) for reads, with their
    /// request ids if `request_ids` (a local segment decoded without them
    /// is decoded again, whole, for the first read that needs them): whole
    /// segments are kept in the cache, least recently used out first.
    fn decoded(
        &self,
        seg: &Segment,
        range: Option<&TimeRange>,
        request_ids: bool,
    ) -> Result<Arc<Columns>> {
        let enough = |cols: &Columns| !request_ids || cols.has_request_ids();
        if let Some(cols) = self.cached(seg.id).filter(|c| enough(c)) {
            return Ok(cols);
        }
        let (cols, whole) = self.load(seg, range, request_ids)?;
        let cols = Arc::new(cols);
        if !whole {
            return Ok(cols);
        }
        let mut cache = lock(&self.decoded);
        // Another reader may have decoded it meanwhile: theirs is kept unless
        // only ours has the request ids.
        if let Some(at) = cache.iter().position(|(id, _, _)| *id == seg.id) {
            let theirs = &cache[at].1;
            if theirs.has_request_ids() || !cols.has_request_ids() {
                return Ok(theirs.clone());
            }
            cache.remove(at);
        }
        cache.push((seg.id, cols.clone(), cols.heap_bytes()));
        let mut held: usize = cache.iter().map(|e| e.2).sum();
        while held > DECODED_CACHE_BYTES && cache.len() > 1 {
            held -= cache.remove(0).2;
        }
        Ok(cols)
    }

    /// All rows of `seg` for a maintenance step about to replace it: from the
    /// cache if there, but not added to it.
    fn read_whole(&self, seg: &Segment) -> Result<Arc<Columns>> {
        match self.cached(seg.id).filter(|c| c.has_request_ids()) {
            Some(cols) => Ok(cols),
            None => Ok(Arc::new(self.load(seg, None, true)?.0)),
        }
    }
}

/// The (granularity, UTC day) of every bucket in `cells`.
fn dirty_days(cells: &Rollups) -> Vec<(Granularity, Micros)> {
    let mut out: Vec<_> = cells
        .bucket_starts()
        .map(|(g, start)| (g, start.floor_to(DAY_US)))
        .collect();
    out.dedup();
    out
}

const DAY_US: i64 = 86_400_000_000;

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
        let names: Vec<&str> = manifest
            .segments
            .iter()
            .filter(|s| s.archived.is_none())
            .map(|s| s.file.as_str())
            .collect();
        for path in manifest::remove_orphans(&fs, &seg_dir, &names)? {
            tracing::info!(path = %path.display(), "removed segment left by an interrupted flush");
        }
        let key_dir = root.join(KEY_DIR);
        let names: Vec<&str> = manifest.key_files.iter().map(|k| k.file.as_str()).collect();
        manifest::remove_orphans(&fs, &key_dir, &names)?;
        let rollup_dir = root.join(ROLLUP_DIR);
        let names: Vec<&str> = (manifest.rollup_files.iter().map(String::as_str))
            .chain(manifest.rollup_tiers.iter().map(|t| t.file.as_str()))
            .collect();
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
            if let Some(key) = &entry.archived {
                state.segments.push(Arc::new(Segment {
                    id: entry.id,
                    path,
                    meta: entry.meta,
                    stored: Stored::Archived {
                        key: key.clone(),
                        bytes: entry.bytes,
                    },
                }));
                continue;
            }
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
                stored: Stored::Local(bytes),
            }));
        }
        // Rollups of flushed rows come from their files; replay adds the rest.
        // Tier files first (they hold disjoint buckets), then later flushes in order:
        // the same merges, in the same order, as the running node made.
        let tier_files = manifest.rollup_tiers.iter().map(|t| (&t.file, false));
        let flush_files = manifest.rollup_files.iter().map(|f| (f, true));
        for (file, from_flush) in tier_files.chain(flush_files) {
            let path = rollup_dir.join(file);
            let buf = fs.read(&path).map_err(io_err("read", &path))?;
            let cells = Rollups::from_file(&buf, budget).map_err(|e| EngineError::Corrupt {
                path: path.clone(),
                reason: e.0,
            })?;
            if from_flush {
                state.dirty_tiers.extend(dirty_days(&cells));
            }
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
            retention: RwLock::new(Retention::default()),
            maintenance: Mutex::new(()),
        });
        let applier = inner.clone();
        let on_durable: toplog_wal::OnDurable = Box::new(move |lsn, payload, attachment| {
            let ids = attachment
                .and_then(|a| a.downcast::<Vec<[KeyId; 5]>>().ok())
                .map(|ids| *ids);
            if let Err(reason) = applier.apply(lsn, payload, ids) {
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
                .apply(entry.lsn, &entry.payload, None)
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
            .append_attached(batch.encode(), Box::new(ids))
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
        let range = self.inner.cutoffs().retained(&range);
        let want = limit
            .saturating_add(after.map_or(0, |c| c.skip as usize))
            .saturating_add(1);
        let (mut segments, frozen, mut candidates) = self.snapshot(&range, |cols| {
            scan::collect(cols, false, &range, filters, after, want)
        });
        for (_, cols) in self.frozen_in(&frozen, &range) {
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
            let cols = self.inner.decoded(&seg, Some(&range), true)?;
            candidates.extend(scan::collect(&cols, true, &range, filters, after, want));
            scan::keep_first(&mut candidates, want);
        }
        Ok(scan::page(candidates, after, limit))
    }

    /// The exact number of stored events in `range` matching `filters`.
    pub fn count(&self, range: TimeRange, filters: &Filters) -> Result<u64> {
        let range = self.inner.cutoffs().retained(&range);
        let (segments, frozen, active) = self.snapshot(&range, |cols| {
            vec![scan::count(cols, false, &range, filters)]
        });
        let mut total: u64 = active.iter().sum();
        for (_, cols) in self.frozen_in(&frozen, &range) {
            total += scan::count(cols, false, &range, filters);
        }
        for seg in segments {
            if filters.is_empty() && range.contains_all(seg.meta.min_ts, seg.meta.max_ts) {
                total += seg.meta.rows;
            } else {
                let cols = self
                    .inner
                    .decoded(&seg, Some(&range), filters.request_id.is_some())?;
                total += scan::count(&cols, true, &range, filters);
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
        let active = st
            .active
            .iter()
            .filter(|(start, _)| self.inner.partition_overlaps(**start, range))
            .flat_map(|(_, cols)| on_active(cols))
            .collect();
        (segs, st.frozen.clone(), active)
    }

    /// The memtables among `frozen` whose partition overlaps `range`.
    fn frozen_in<'a>(
        &'a self,
        frozen: &'a [Frozen],
        range: &'a TimeRange,
    ) -> impl Iterator<Item = &'a (i64, Columns)> + 'a {
        frozen
            .iter()
            .flat_map(|f| f.iter())
            .filter(move |(start, _)| self.inner.partition_overlaps(*start, range))
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
        self.inner
            .visit_pieces(&st, pieces, dim, |_, c| cubes.push(c));
        f(&cubes)
    }

    /// [`Engine::with_rollups`] a cube at a time, with the index in `pieces`
    /// of the piece it belongs to: one lock and one look at the retention for
    /// many pieces (a time series reads a few per interval).
    pub fn each_rollup(
        &self,
        pieces: &[(Granularity, Micros, Micros)],
        dim: Dimension,
        f: impl FnMut(usize, &Cube),
    ) {
        let st = self.inner.read();
        self.inner.visit_pieces(&st, pieces, dim, f);
    }

    /// Aggregates the raw rows in `range` matching `filters` by `dim`, as the
    /// cubes would; the cells have latency sketches only if `sketches`.
    pub fn aggregate_raw(
        &self,
        range: TimeRange,
        filters: &Filters,
        dim: Dimension,
        sketches: bool,
    ) -> Result<RawCells> {
        let range = self.inner.cutoffs().retained(&range);
        let (segments, frozen, active) = self.snapshot(&range, |cols| {
            let mut out = RawCells::default();
            scan::aggregate(cols, false, &range, filters, dim, sketches, &mut out);
            vec![out]
        });
        let mut out = RawCells::default();
        for (_, cols) in self.frozen_in(&frozen, &range) {
            scan::aggregate(cols, false, &range, filters, dim, sketches, &mut out);
        }
        for seg in segments {
            scan::aggregate(
                &*self
                    .inner
                    .decoded(&seg, Some(&range), filters.request_id.is_some())?,
                true,
                &range,
                filters,
                dim,
                sketches,
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
        let range = self.inner.cutoffs().retained(&range);
        let (segments, frozen, mut out) = self.snapshot(&range, |cols| {
            scan::by_latency(cols, &range, filters, k, asc)
        });
        for (_, cols) in self.frozen_in(&frozen, &range) {
            out.extend(scan::by_latency(cols, &range, filters, k, asc));
        }
        for seg in segments {
            out.extend(scan::by_latency(
                &*self.inner.decoded(&seg, Some(&range), true)?,
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
            segment_bytes: st.segments.iter().map(|s| s.info().bytes).sum(),
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

impl Segment {
    fn entry(&self) -> SegmentEntry {
        let info = self.info();
        SegmentEntry {
            id: self.id,
            file: manifest::segment_file_name(self.id),
            bytes: info.bytes,
            meta: self.meta,
            archived: info.archived,
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
                    .ok_or_else(|| EngineError::Invalid(format!("no segment {id}")))
            })
            .collect()
    }

    /// Stores a manifest without the segments `remove` and with `add` (replacing
    /// any of the same id), then makes reads see the same, under one lock.
    fn swap_segments(&self, remove: &[SegmentId], add: &[Arc<Segment>]) -> Result<()> {
        let mut manifest = lock(&self.manifest);
        self.check_writable()?;
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
        lock(&self.decoded).retain(|(id, _, _)| !gone(id));
        Ok(())
    }

    /// Stores `next` as the manifest (the caller holds the manifest lock).
    /// On failure the rename may or may not have happened: which manifest a
    /// restart finds is unknown, so this process stops taking writes.
    fn store_manifest(&self, next: &Manifest) -> Result<()> {
        next.store(&self.fs, &self.config.data_dir)
            .inspect_err(|e| {
                self.poison(format!("storing the manifest failed: {e}"));
            })
    }

    fn remove_quietly(&self, path: &Path, what: &str) {
        // The manifest no longer names it: a failure leaves an orphan, removed at start-up.
        if let Err(e) = self.fs.remove_file(path) {
            tracing::warn!(path = %path.display(), error = %e, "could not remove {what}");
        }
    }

    /// Writes the changed (granularity, day) buckets to their tier files, drops
    /// the days wholly past retention, and stores a manifest listing only tier
    /// files. Returns the buckets dropped per granularity.
    fn rewrite_rollups(&self, cutoffs: &Cutoffs) -> Result<[usize; 3]> {
        let mut manifest = lock(&self.manifest);
        self.check_writable()?;
        // Under the manifest lock no flush can change `rollups` or `dirty_tiers`.
        let (mut kept, dirty) = {
            let st = self.read();
            (Rollups::clone(&st.rollups), st.dirty_tiers.clone())
        };
        let mut dropped = [0; 3];
        // Whole days only: a day's file goes when its last bucket is past retention.
        let expired_before = |g: Granularity| cutoffs.rollup(g).floor_to(DAY_US);
        for g in Granularity::ALL {
            dropped[g.index()] = kept.drop_before(g, expired_before(g));
        }
        let expired = |g: Granularity, day: Micros| day < expired_before(g);
        let tier_expired = |t: &manifest::RollupTierFile| {
            Granularity::from_name(&t.granularity).is_none_or(|g| expired(g, t.day))
        };
        let stale_tiers = manifest.rollup_tiers.iter().any(tier_expired);
        if dirty.is_empty() && manifest.rollup_files.is_empty() && !stale_tiers {
            return Ok(dropped);
        }
        let dir = self.dir(ROLLUP_DIR);
        let mut next = manifest.clone();
        next.rollup_generation += 1;
        let mut written = Vec::new();
        for &(g, day) in dirty.iter().filter(|(g, day)| !expired(*g, *day)) {
            let part = kept.slice(g, day, day.saturating_add_micros(DAY_US));
            let file = format!(
                "{}-{}-g{}.cube",
                g.name(),
                day.utc_date(),
                next.rollup_generation
            );
            let path = dir.join(&file);
            let image = part
                .to_file(rollup::TIER_FILE_LEVEL)
                .map_err(io_err("encoding rollups for", &path))?;
            manifest::write_durable(&self.fs, &path, &image)?;
            written.push(manifest::RollupTierFile {
                file,
                granularity: g.name().to_owned(),
                day,
            });
        }
        self.fs
            .sync_dir(&dir)
            .map_err(io_err("fsync directory", &dir))?;
        let replaced = |t: &manifest::RollupTierFile| {
            written
                .iter()
                .any(|w| w.granularity == t.granularity && w.day == t.day)
                || tier_expired(t)
        };
        let (old_tiers, kept_tiers): (Vec<_>, Vec<_>) =
            next.rollup_tiers.drain(..).partition(|t| replaced(t));
        next.rollup_tiers = kept_tiers;
        next.rollup_tiers.extend(written);
        let old_files = std::mem::take(&mut next.rollup_files);
        self.store_manifest(&next)?;
        *manifest = next;
        {
            let mut st = self.write();
            st.rollups = Arc::new(kept);
            st.dirty_tiers.clear();
        }
        drop(manifest);
        for file in old_files.iter().chain(old_tiers.iter().map(|t| &t.file)) {
            self.remove_quietly(&dir.join(file), "an old rollup file");
        }
        Ok(dropped)
    }
}

impl Engine {
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
                let (buckets, oldest) = st.rollups.extent(g);
                RollupTier {
                    granularity: g,
                    buckets,
                    oldest,
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
        let [first, rest @ ..] = olds.as_slice() else {
            return Err(EngineError::Invalid("nothing to compact".into()));
        };
        if rest.is_empty() {
            return Err(EngineError::Invalid(
                "compaction needs two segments or more".into(),
            ));
        }
        for s in &olds {
            if matches!(s.stored, Stored::Archived { .. }) {
                return Err(EngineError::Invalid(format!(
                    "segment {} is archived",
                    s.id
                )));
            }
            if (s.meta.partition_start, s.meta.partition_len_us)
                != (first.meta.partition_start, first.meta.partition_len_us)
            {
                return Err(EngineError::Invalid(format!(
                    "segments {} and {} are in different partitions",
                    first.id, s.id
                )));
            }
        }
        let mut cols = Columns::default();
        for s in &olds {
            let part = self.inner.read_whole(s)?;
            for i in 0..part.len() {
                cols.push(&part.event(i));
            }
        }
        let rows: u64 = olds.iter().map(|s| s.meta.rows).sum();
        let min_ts = olds.iter().map(|s| s.meta.min_ts).min();
        let max_ts = olds.iter().map(|s| s.meta.max_ts).max();
        let image = segment::encode(
            &cols,
            first.meta.partition_start,
            first.meta.partition_len_us,
        );
        drop(cols);
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
                let meta = segment::check_segment(&back).map_err(|e| EngineError::Corrupt {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
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
        });
        self.inner
            .swap_segments(ids, std::slice::from_ref(&merged))?;
        for s in &olds {
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
        let store = self.inner.archive_store()?;
        let seg = self
            .inner
            .find_segments(&[id])?
            .pop()
            .ok_or_else(|| EngineError::Invalid(format!("no segment {id}")))?;
        if matches!(seg.stored, Stored::Archived { .. }) {
            return Ok(seg.info());
        }
        let cols = self.inner.read_whole(&seg)?;
        let key = archive::segment_key(seg.meta.partition_start, id.get());
        let failed = |e: std::io::Error| EngineError::Archive {
            key: key.clone(),
            reason: e.to_string(),
        };
        match store.create(&key, bytes::Bytes::from(archive::to_parquet(&cols)?)) {
            Ok(()) => {}
            // Left by an attempt that stopped before the manifest named it:
            // checked below like a new copy.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                tracing::info!(%key, "archive object exists from an earlier attempt; verifying it");
            }
            Err(e) => return Err(failed(e)),
        }
        let size = store.size(&key).map_err(failed)?;
        let same = match archive::read(&store, &key, size, None) {
            Ok(back) => back.same_rows(&cols),
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
                    "the copy read back differs from segment {id}; the local file is kept"
                ),
            });
        }
        let archived = Arc::new(Segment {
            id,
            path: seg.path.clone(),
            meta: seg.meta,
            stored: Stored::Archived { key, bytes: size },
        });
        self.inner
            .swap_segments(&[], std::slice::from_ref(&archived))?;
        self.inner
            .remove_quietly(&seg.path, "an archived segment's local file");
        Ok(archived.info())
    }

    /// Copies every rollup tier file to the archive as `rollups/<file>` (read
    /// back and compared byte for byte), then deletes the copies of files that
    /// have since been replaced or purged. Returns how many files it copied.
    pub fn archive_rollups(&self) -> Result<usize> {
        let _one = lock(&self.inner.maintenance);
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
        for file in tiers.iter().filter(|f| !copied.contains(f)) {
            let path = dir.join(file);
            let bytes =
                bytes::Bytes::from(self.inner.fs.read(&path).map_err(io_err("read", &path))?);
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
            next.archived_rollups = tiers.clone();
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
    /// object in flight is taken for an orphan. The archive's prefix must
    /// belong to this node alone.
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
        named.extend(
            lock(&self.inner.manifest)
                .archived_rollups
                .iter()
                .map(|f| format!("rollups/{f}")),
        );
        let mut swept = Vec::new();
        for prefix in ["raw/", "rollups/"] {
            let failed = |e: std::io::Error| EngineError::Archive {
                key: prefix.to_owned(),
                reason: e.to_string(),
            };
            for key in store.list(prefix).map_err(failed)? {
                if !named.contains(&key) {
                    store.delete(&key).map_err(failed)?;
                    swept.push(key);
                }
            }
        }
        Ok(swept)
    }

    /// Removes what is past retention: segments whose newest row is older than
    /// the raw cutoff (and their archived objects), rollup days wholly past their
    /// granularity's cutoff. Also folds the per-flush rollup files into one file
    /// per granularity and day.
    pub fn purge(&self) -> Result<PurgeReport> {
        let _one = lock(&self.inner.maintenance);
        self.inner.check_writable()?;
        let cutoffs = self.inner.cutoffs();
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
