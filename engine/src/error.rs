use std::path::PathBuf;

use toplog_crypt::OpenError;
use toplog_types::SegmentId;
use toplog_wal::WalError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error("{op} {path}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    #[error("{path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    /// A stored file or log entry is encrypted under a key the node does not
    /// have, or that does not decrypt it.
    #[error("{path}: {reason}")]
    Encryption { path: PathBuf, reason: OpenError },
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// The engine stopped taking writes after a failure it will not retry
    /// (the failure's own message).
    #[error("not accepting writes: {reason}")]
    Stopped { reason: String },
    /// The engine's log is a Raft group's: batches are proposed there.
    #[error("this engine's log is replicated: batches go through the cluster")]
    Replicated,
    /// The thread writing the log is gone (the engine is closing).
    #[error("not accepting writes: the log writer has stopped")]
    LogWriterStopped,
    /// Segments are archived but no archive is configured to read them from.
    #[error("segments are archived but no archive is configured")]
    NoArchive,
    /// Every segment id has been used.
    #[error("not accepting writes: segment ids exhausted")]
    SegmentIdsExhausted,
    /// The object store failed or holds something other than what was written.
    #[error("archive object {key}: {reason}")]
    Archive { key: String, reason: String },
    /// A read would hold more memory than its budget (see [`crate::ReadBudget`]).
    #[error(
        "the read would hold more than {limit} bytes (the budget `query_memory_bytes`); narrow the range, filter, or ask for fewer rows"
    )]
    QueryMemory { limit: usize },
    /// A read ran past its time budget and stopped.
    #[error("the read ran past its time budget (`query_timeout` is {limit:?}) and stopped")]
    QueryTimeout { limit: std::time::Duration },
    /// The node holds as many idempotency keys as it may; new keys wait for
    /// old ones to leave the window.
    #[error(
        "the node holds {limit} idempotency keys (the limit `max_idempotency_keys`); a batch with a new key can be taken once older keys leave the 24-hour window, or send it without a key"
    )]
    TooManyIdempotencyKeys { limit: usize },
    /// A batch brings a key the node cannot take: the interned names of all
    /// dimensions hold `budget` bytes, or (`None`) the dimension has used
    /// every id.
    #[error("{}", keys_exhausted(dimension, budget))]
    KeysExhausted {
        dimension: &'static str,
        budget: Option<usize>,
    },
    /// A maintenance request that does not apply to the store as it is.
    #[error(transparent)]
    Maintenance(#[from] MaintenanceError),
}

/// Why a maintenance request does not apply to the store as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaintenanceError {
    #[error("no segment {0}")]
    NoSuchSegment(SegmentId),
    #[error("compaction needs two segments or more")]
    TooFewToCompact,
    #[error("segment {0} is archived")]
    Archived(SegmentId),
    #[error("segments {0} and {1} are in different partitions")]
    DifferentPartitions(SegmentId, SegmentId),
    #[error("segments {0} and {1} are sealed for the cluster's archive at different entries")]
    DifferentSeals(SegmentId, SegmentId),
    #[error("segment {0} was purged or sealed meanwhile; the step is tried again at the next pass")]
    Changed(SegmentId),
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

fn keys_exhausted(dimension: &str, budget: &Option<usize>) -> String {
    match budget {
        Some(b) => format!(
            "a new `{dimension}` is refused: the node's distinct keys hold {b} bytes (the budget `key_memory_bytes`); events with known keys are still taken. A restart frees the keys no retained data holds"
        ),
        None => format!(
            "a new `{dimension}` is refused: every one of its 2^32 ids is in use; events with known keys are still taken"
        ),
    }
}

/// A segment's error with its file: encryption errors as such, the rest as corruption.
pub(crate) fn segment_err(path: &std::path::Path, e: crate::SegmentError) -> EngineError {
    match e {
        crate::SegmentError::Encryption { reason, .. } => EngineError::Encryption {
            path: path.to_path_buf(),
            reason,
        },
        e => EngineError::Corrupt {
            path: path.to_path_buf(),
            reason: e.to_string(),
        },
    }
}

/// A file's contents that do not decode: corruption, naming the file.
pub(crate) fn codec_err(
    path: &std::path::Path,
) -> impl Fn(crate::codec::CodecError) -> EngineError {
    let path = path.to_path_buf();
    move |e| EngineError::Corrupt {
        path: path.clone(),
        reason: e.0,
    }
}

/// Wraps an [`OpenError`] with the file it came from.
pub(crate) fn sealed_err(path: &std::path::Path) -> impl FnOnce(OpenError) -> EngineError {
    let path = path.to_path_buf();
    move |reason| EngineError::Encryption { path, reason }
}

/// Wraps an `io::Error` with the operation and path it came from.
pub(crate) fn io_err(
    op: &'static str,
    path: &std::path::Path,
) -> impl FnOnce(std::io::Error) -> EngineError {
    let path = path.to_path_buf();
    move |source| EngineError::Io { path, op, source }
}
