//! How an engine is set up: where its data lives, partition length, fsync
//! policy, memtable limits, rollup key budget, archive; and the retention that
//! decides what reads still see ([`Cutoffs`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use toplog_crypt::Cipher;
use toplog_types::Micros;
use toplog_wal::FsyncPolicy;

use super::window_us;
use crate::archive::ArchiveStore;
use crate::rollup::Granularity;
use crate::scan::TimeRange;

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
    /// Most idempotency keys held; a batch with a new key past it is refused
    /// with [`EngineError::TooManyIdempotencyKeys`](crate::EngineError::TooManyIdempotencyKeys).
    pub max_idempotency_keys: usize,
    pub wal_segment_bytes: u64,
    /// Most keys one cube bucket keeps a cell for; past it the bucket keeps a
    /// heavy-hitter summary (see docs/rollups.md).
    pub rollup_key_budget: usize,
    /// Bytes the distinct keys (users, endpoints, ...) of the whole process
    /// may hold; past it a batch bringing a new key is refused with
    /// [`EngineError::KeysExhausted`](crate::EngineError::KeysExhausted).
    pub key_memory_bytes: usize,
    /// Where archived segments are kept and read from.
    pub archive: Option<Arc<dyn ArchiveStore>>,
    /// Encryption at rest: what every file, log entry and archived object is
    /// written under (off: plaintext).
    pub cipher: Cipher,
    /// The log is a Raft group's, not the engine's own: no local write-ahead
    /// log; batches arrive through [`Engine::apply_replicated`](super::Engine::apply_replicated)
    /// in log order, and after a restart the group delivers again every
    /// entry after [`Engine::flushed_index`](super::Engine::flushed_index).
    pub replicated: bool,
}

/// How long each kind of data stays visible to reads; `None` keeps it forever.
/// Reads hide data past it at once; [`Engine::purge`](super::Engine::purge) then removes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    pub raw: Option<Duration>,
    pub minute: Option<Duration>,
    pub hour: Option<Duration>,
    pub day: Option<Duration>,
}

/// The oldest instant each kind of data is kept from, at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

/// The default [`EngineConfig::max_idempotency_keys`]: about 100 MB of keys.
pub const DEFAULT_MAX_IDEMPOTENCY_KEYS: usize = 2_000_000;

/// The default [`EngineConfig::key_memory_bytes`]: 512 MiB, about 7 million
/// keys of 30 bytes.
pub const DEFAULT_KEY_MEMORY_BYTES: usize = 512 << 20;

/// The default [`EngineConfig::rollup_key_budget`].
pub const DEFAULT_ROLLUP_KEY_BUDGET: usize = 50_000;

/// Memtable bytes at which a flush starts. Rows are counted at what they
/// hold (about 100 bytes each with UUID request ids), so 40 MiB is about
/// 400,000 rows a flush: as many as 64 MiB was when a memtable chunk also
/// held a lookup by value of every name (BENCHMARKS.md, stop 25).
pub const DEFAULT_MEMTABLE_MAX_BYTES: usize = 40 << 20;

impl EngineConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            partition: Duration::from_secs(86_400),
            fsync: FsyncPolicy::Always,
            memtable_max_bytes: DEFAULT_MEMTABLE_MAX_BYTES,
            memtable_max_age: Duration::from_secs(300),
            idempotency_window: Duration::from_secs(86_400),
            max_idempotency_keys: DEFAULT_MAX_IDEMPOTENCY_KEYS,
            wal_segment_bytes: 64 << 20,
            rollup_key_budget: DEFAULT_ROLLUP_KEY_BUDGET,
            key_memory_bytes: DEFAULT_KEY_MEMORY_BYTES,
            archive: None,
            cipher: Cipher::off(),
            replicated: false,
        }
    }

    pub(super) fn partition_us(&self) -> i64 {
        i64::try_from(self.partition.as_micros())
            .unwrap_or(i64::MAX)
            .max(60_000_000)
    }
}
