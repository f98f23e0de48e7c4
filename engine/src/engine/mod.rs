//! The engine: batches go to the WAL, are applied to per-partition memtables
//! on the WAL's writer thread in log order (so queries see them before the
//! client's acknowledgement), and are flushed together into segments. A flush
//! moves the manifest's `flushed_lsn` forward, then truncates the log.

mod cache;
mod checkpoint;
mod cold;
mod config;
mod cutoff;
mod lock_wait;
mod maintenance;
mod memtable;
mod open;
mod read;
mod rekey;
mod write;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use toplog_types::{Lsn, Micros, SegmentId};
use toplog_wal::{FileBytes, Fs, Wal};

use crate::archive::ArchiveStore;
use crate::columns::Columns;
use crate::error::{EngineError, Result};
use crate::idempotency::KeyIndex;
use crate::lru::Lru;
use crate::manifest::Manifest;
use crate::rollup::{Granularity, Rollups};
use crate::segment::SegmentMeta;

pub use config::{
    Cutoffs, DEFAULT_KEY_MEMORY_BYTES, DEFAULT_MAX_IDEMPOTENCY_KEYS, DEFAULT_MEMTABLE_MAX_BYTES,
    DEFAULT_ROLLUP_KEY_BUDGET, EngineConfig, Retention,
};
pub use cutoff::{Adopted, ArchiveCutoff, ArchivedObject};
pub use lock_wait::LockWaitStats;
pub use maintenance::{PurgeReport, RollupTier};
pub use read::StorageStats;
pub use rekey::{KeyUsage, RekeyReport};
pub use write::{IngestReceipt, Proposal};

const WAL_DIR: &str = "wal";
const SEGMENT_DIR: &str = "segments";
const KEY_DIR: &str = "idempotency";
const ROLLUP_DIR: &str = "rollups";

/// A stored segment, for operators and the maintenance policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    pub id: SegmentId,
    pub meta: SegmentMeta,
    /// Size of the local file, or of the archived object.
    pub bytes: u64,
    /// The object key when the segment lives in the archive.
    pub archived: Option<String>,
    /// In a cluster: the log index of the seal entry that closed this
    /// segment's rows off for the archive ([`Engine::seal_replicated`]).
    pub sealed: Option<u64>,
}

#[derive(Debug)]
struct Segment {
    id: SegmentId,
    path: PathBuf,
    meta: SegmentMeta,
    stored: Stored,
    /// See [`SegmentInfo::sealed`].
    sealed: Option<u64>,
}

#[derive(Debug)]
enum Stored {
    Local(FileBytes),
    Archived {
        key: String,
        bytes: u64,
        /// What the object is encrypted under; none: plaintext.
        key_id: Option<String>,
    },
}

impl Segment {
    fn info(&self) -> SegmentInfo {
        let (bytes, archived) = match &self.stored {
            Stored::Local(b) => (b.len() as u64, None),
            Stored::Archived { key, bytes, .. } => (*bytes, Some(key.clone())),
        };
        SegmentInfo {
            id: self.id,
            meta: self.meta,
            bytes,
            archived,
            sealed: self.sealed,
        }
    }
}

/// Memtables taken out by a flush: each partition start's chunks.
type Frozen = Arc<Vec<(i64, Vec<Arc<Columns>>)>>;

#[derive(Debug, Default)]
struct State {
    /// Open memtables by partition start.
    active: BTreeMap<i64, memtable::Memtable>,
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
    /// every flush (exactly what start-up rebuilds from the rollup files), of
    /// the days from `resident_from` on. Replaced, not changed, by a flush:
    /// the merge is done outside the lock.
    rollups: Arc<Rollups>,
    /// Per granularity, the first day `rollups` holds; the flushed cells of
    /// earlier days are in their tier files only (see `cold`).
    resident_from: [Micros; 3],
    /// The tier files the stored manifest lists.
    tiers: Arc<cold::TierIndex>,
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
    /// How long applying the log waited for the write lock.
    apply_waits: lock_wait::LockWaits,
    /// Flushes that wrote their memtables to segments.
    flushes: std::sync::atomic::AtomicU64,
    /// Set once after a failure that must not be retried; writes are refused from then on.
    poisoned: Mutex<Option<String>>,
    flusher: (Mutex<FlusherSignal>, Condvar),
    /// Least recently used first, with each entry's size.
    decoded: Mutex<Lru<SegmentId, Arc<Columns>>>,
    /// Decoded tier files of days not held in memory.
    cold: Mutex<Lru<String, cold::Cached>>,
    retention: RwLock<Retention>,
    /// Serialises compaction, archiving and purging against each other.
    maintenance: Mutex<()>,
}

#[derive(Debug, Default)]
struct FlusherSignal {
    wake: bool,
    /// Flush at the next wake even if no memtable is due.
    now: bool,
    stop: bool,
}

/// A single node's storage: open it, ingest batches, read events back.
#[derive(Debug)]
pub struct Engine {
    inner: Arc<Inner>,
    /// The engine's own log; `None` when the log is a Raft group's.
    wal: Option<Arc<Wal>>,
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

    /// [`Inner::write`] for applying the log, recording how long it waited.
    fn write_for_apply(&self) -> RwLockWriteGuard<'_, State> {
        if let Some(st) = self.state.try_write() {
            self.apply_waits.record(Duration::ZERO);
            return st;
        }
        let asked = Instant::now();
        let st = self.state.write();
        self.apply_waits.record(asked.elapsed());
        st
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
            Some(reason) => Err(EngineError::Stopped {
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    fn archive_store(&self) -> Result<Arc<dyn ArchiveStore>> {
        self.config.archive.clone().ok_or(EngineError::NoArchive)
    }

    fn cutoffs(&self) -> Cutoffs {
        self.retention.read().cutoffs(Micros::now())
    }

    fn next_segment_id(manifest: &mut Manifest) -> Result<SegmentId> {
        let id = manifest
            .last_segment_id
            .checked_next()
            .ok_or(EngineError::SegmentIdsExhausted)?;
        manifest.last_segment_id = id;
        Ok(id)
    }
}

const DAY_US: i64 = 86_400_000_000;

fn window_us(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}
