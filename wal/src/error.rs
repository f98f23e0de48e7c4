//! The one error type of the write-ahead log. Messages name the file, the byte
//! offset or the operation, so an operator can find the damage.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong opening, appending to or trimming the log.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// A file-system call failed outside the append path (open, recovery, truncate_prefix).
    #[error("write-ahead log: {op} of {path} failed: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// The bytes on disk are damaged somewhere other than a torn tail.
    #[error("write-ahead log {path} is corrupt at byte {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// A write or fsync failed earlier; the log refuses writes from then on (fail-stop).
    #[error("write-ahead log stopped taking writes after an I/O error: {0}")]
    Poisoned(String),
    /// The log was closed (or its writer thread stopped).
    #[error("write-ahead log is closed")]
    Closed,
    /// The payload is larger than the largest frame the format allows.
    #[error("write-ahead log entry of {len} bytes exceeds the limit of 268435456 bytes (256 MiB)")]
    TooLarge { len: usize },
}

/// Result with [`WalError`] as the default error.
pub type Result<T, E = WalError> = std::result::Result<T, E>;

impl WalError {
    pub(crate) fn io(path: impl Into<PathBuf>, op: &'static str, source: io::Error) -> Self {
        Self::Io {
            path: path.into(),
            op,
            source,
        }
    }

    pub(crate) fn corrupt(
        path: impl Into<PathBuf>,
        offset: u64,
        reason: impl Into<String>,
    ) -> Self {
        Self::Corrupt {
            path: path.into(),
            offset,
            reason: reason.into(),
        }
    }
}
