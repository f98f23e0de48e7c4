//! toplog's write-ahead log: segmented append-only files of CRC32C-framed records,
//! written by one thread with group commit, and recovered by cutting off only a torn
//! tail. Also home of the [`Fs`] trait every durable file goes through, with a real
//! disk ([`RealFs`]) and a crash-simulating one ([`SimFs`]).

mod error;
mod format;
mod fs;
mod latency;
mod recovery;
mod sim_fs;
mod wal;
mod writer;

pub use error::{Result, WalError};
pub use fs::{FileBytes, Fs, FsFile, RealFs};
pub use latency::{LatencyHistogram, LogLatencies};
pub use sim_fs::SimFs;
pub use wal::{Attachment, Entry, FsyncPolicy, OnDurable, Wal, WalOptions};
