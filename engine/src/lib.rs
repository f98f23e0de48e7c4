//! The storage engine: time-partitioned columnar memtables fed from the WAL,
//! immutable segments in toplog's own format, the manifest that says which
//! segments exist, idempotency keys, and recovery after a crash.

mod archive;
mod batch;
pub mod budget;
mod codec;
mod column_forms;
mod columns;
mod engine;
mod error;
mod idempotency;
mod keys;
mod lru;
mod manifest;
pub mod parquet;
mod request_ids;
mod rollup;
mod scan;
mod segment;
mod sketch;
mod sorted_rows;

pub use archive::{ArchiveStore, PrefixedArchive};
pub use batch::KeyedEvents;
pub use budget::ReadBudget;
pub use engine::{
    Adopted, ArchiveCutoff, ArchivedObject, Cutoffs, DEFAULT_KEY_MEMORY_BYTES,
    DEFAULT_MAX_IDEMPOTENCY_KEYS, DEFAULT_MEMTABLE_MAX_BYTES, DEFAULT_ROLLUP_KEY_BUDGET, Engine,
    EngineConfig, IngestReceipt, KeyUsage, LockWaitStats, Proposal, PurgeReport, RekeyReport,
    Retention, RollupTier, SegmentInfo, StorageStats,
};
pub use error::{EngineError, MaintenanceError, Result};
pub use rollup::{
    Cell, Cube, Dimension, Granularity, HEAVIEST_LISTED, Key, Overflow, Rollups, most_first,
};
pub use scan::{Cursor, Filters, Page, RawCells, TimeRange};
pub use segment::{
    SegmentError, SegmentMeta, check_segment, decode_segment_events, encode_segment_events,
};
pub use sketch::{LatencySketch, SKETCH_RELATIVE_ERROR, SketchSum, quantile_index};
