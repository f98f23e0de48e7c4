//! The log handle. Appenders queue requests to one writer thread, which writes
//! every queued frame with one write, fsyncs once for the whole group, hands the
//! entries to `on_durable` in lsn order, then acknowledges them (group commit).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::oneshot;
use toplog_types::Lsn;

use crate::error::{Result, WalError};
use crate::format::MAX_PAYLOAD;
use crate::fs::Fs;
use crate::recovery;
use crate::writer::{Reply, Request, Shared, Writer};

/// When appended entries are fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// Every group is fsynced before it is acknowledged: nothing acknowledged is lost.
    #[default]
    Always,
    /// Acknowledged once written to the OS; fsynced at most once per interval (and on roll
    /// and close). A power cut loses up to one interval of acknowledged entries.
    Interval(Duration),
    /// Acknowledged once written to the OS; fsynced only on roll and close. A power cut
    /// loses everything the OS had not yet written back.
    Never,
}

/// How the log is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalOptions {
    pub fsync: FsyncPolicy,
    /// A new file is started once the current one has reached this size.
    pub segment_bytes: u64,
}

impl Default for WalOptions {
    fn default() -> Self {
        Self {
            fsync: FsyncPolicy::Always,
            segment_bytes: 64 * 1024 * 1024,
        }
    }
}

/// One log record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub lsn: Lsn,
    pub term: u64,
    pub payload: Vec<u8>,
}

/// Called on the writer thread for each newly appended entry once it is durable under the
/// policy and before its append is acknowledged, in lsn order, with what its appender
/// attached (see [`Wal::append_attached`]).
pub type OnDurable = Box<dyn FnMut(Lsn, &[u8], Option<Attachment>) + Send>;

/// Something an appender hands to `on_durable` along with its entry, for work it did
/// before appending that the writer thread need not do again. It is never written:
/// entries replayed from the log have none.
pub type Attachment = Box<dyn std::any::Any + Send>;

/// A segmented write-ahead log with group commit. Share it as `Arc<Wal>`.
#[derive(Debug)]
pub struct Wal {
    /// `None` once closed; appends then fail with `Closed`.
    requests: Mutex<Option<mpsc::Sender<Request>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    shared: Arc<Shared>,
    dir: PathBuf,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded values (a sender, a join handle) stay valid even if a holder panicked.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Wal {
    /// Opens (creating dir and first file if needed) and recovers the log in `dir`. Returns the
    /// handle and every entry with lsn > `after`, in order, for the caller to replay. The next
    /// appended entry gets lsn = max(last lsn in the log, after) + 1. `on_durable` is called on
    /// the writer thread for every newly appended entry, in lsn order, after it is durable under
    /// the policy and before its append is acknowledged.
    ///
    /// Fails with `Corrupt` if the log is damaged anywhere but a torn tail, or if it starts
    /// after `after + 1` (entries the caller needs are missing).
    pub fn open(
        fs: Arc<dyn Fs>,
        dir: &Path,
        options: WalOptions,
        after: Lsn,
        on_durable: OnDurable,
    ) -> Result<(Wal, Vec<Entry>)> {
        let recovered = recovery::recover(fs.as_ref(), dir, after)?;
        let last = Lsn::new(recovered.next_lsn.get() - 1);
        let shared = Arc::new(Shared::new(last));
        let (tx, rx) = mpsc::channel();
        let writer = Writer::new(
            fs,
            dir.to_path_buf(),
            options,
            recovered.segments,
            recovered.file,
            recovered.next_lsn,
            on_durable,
            Arc::clone(&shared),
        );
        let handle = std::thread::Builder::new()
            .name("toplog-wal-writer".to_owned())
            .spawn(move || writer.run(rx))
            .map_err(|e| WalError::io(dir, "spawn writer thread", e))?;
        let wal = Wal {
            requests: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(handle)),
            shared,
            dir: dir.to_path_buf(),
        };
        Ok((wal, recovered.entries))
    }

    /// Queues an entry (term 0). Resolves with its lsn once durable and passed to
    /// `on_durable`, or with an error (poisoned, closed, too large).
    pub fn append(&self, payload: Vec<u8>) -> oneshot::Receiver<Result<Lsn>> {
        self.append_with_term(0, payload)
    }

    /// Same as [`Wal::append`] with a term (for a Raft log).
    pub fn append_with_term(&self, term: u64, payload: Vec<u8>) -> oneshot::Receiver<Result<Lsn>> {
        let (tx, rx) = oneshot::channel();
        self.submit(term, payload, None, Reply::Async(tx));
        rx
    }

    /// Same as [`Wal::append`], handing `attachment` to `on_durable` with the entry.
    pub fn append_attached(
        &self,
        payload: Vec<u8>,
        attachment: Attachment,
    ) -> oneshot::Receiver<Result<Lsn>> {
        let (tx, rx) = oneshot::channel();
        self.submit(0, payload, Some(attachment), Reply::Async(tx));
        rx
    }

    /// Appends and waits for the result. For threads outside an async runtime (tests,
    /// benches); it blocks the calling thread.
    pub fn append_blocking(&self, payload: Vec<u8>) -> Result<Lsn> {
        let (tx, rx) = mpsc::channel();
        self.submit(0, payload, None, Reply::Blocking(tx));
        rx.recv().unwrap_or(Err(WalError::Closed))
    }

    /// Appends `frames` (term, payload) as one group: one write, one fsync
    /// (under `FsyncPolicy::Always`), nothing else between them. Blocks until
    /// they are durable; returns the lsn of the first. For a Raft log, whose
    /// entries of one Ready must become durable together.
    pub fn append_batch_blocking(&self, frames: Vec<(u64, Vec<u8>)>) -> Result<Lsn> {
        if let Some(big) = frames.iter().find(|(_, p)| p.len() > MAX_PAYLOAD) {
            return Err(WalError::TooLarge { len: big.1.len() });
        }
        let count = frames.len();
        if count == 0 {
            return Ok(Lsn::new(self.last_lsn().get().saturating_add(1)));
        }
        self.shared.check()?;
        let (tx, rx) = mpsc::channel();
        self.control(Request::AppendBatch { frames, reply: tx })?;
        let mut first = None;
        for _ in 0..count {
            let lsn = rx.recv().unwrap_or(Err(WalError::Closed))?;
            first.get_or_insert(lsn);
        }
        first.ok_or(WalError::Closed)
    }

    /// Removes every entry with lsn >= `from`; the next append gets `from`.
    /// For a Raft log, whose uncommitted tail a new leader's entries replace.
    /// Blocks; durable when it returns.
    pub fn truncate_suffix(&self, from: Lsn) -> Result<()> {
        self.shared.check()?;
        let (tx, rx) = mpsc::channel();
        self.control(Request::TruncateSuffix { from, reply: tx })?;
        rx.recv().unwrap_or(Err(WalError::Closed))
    }

    /// Hands `request` to the writer thread.
    fn control(&self, request: Request) -> Result<()> {
        let guard = lock(&self.requests);
        let sender = guard.as_ref().ok_or(WalError::Closed)?;
        sender.send(request).map_err(|_| WalError::Closed)
    }

    fn submit(&self, term: u64, payload: Vec<u8>, attachment: Option<Attachment>, reply: Reply) {
        if payload.len() > MAX_PAYLOAD {
            return reply.send(Err(WalError::TooLarge { len: payload.len() }));
        }
        if let Err(e) = self.shared.check() {
            return reply.send(Err(e));
        }
        let guard = lock(&self.requests);
        let Some(sender) = guard.as_ref() else {
            drop(guard);
            return reply.send(Err(WalError::Closed));
        };
        if let Err(mpsc::SendError(request)) = sender.send(Request::Append {
            term,
            payload,
            attachment,
            reply,
        }) {
            // The writer thread is gone (it only stops on close or a panic in on_durable).
            drop(guard);
            if let Request::Append { reply, .. } = request {
                reply.send(Err(WalError::Closed));
            }
        }
    }

    /// Deletes whole log files all of whose entries are <= `upto` (never the file being
    /// written), then fsyncs the directory.
    pub fn truncate_prefix(&self, upto: Lsn) -> Result<()> {
        self.shared.check()?;
        let (tx, rx) = mpsc::channel();
        self.control(Request::TruncatePrefix { upto, reply: tx })?;
        rx.recv().unwrap_or(Err(WalError::Closed))
    }

    /// Ends the file being written (if it holds an entry) and starts the next,
    /// so a later [`Wal::truncate_prefix`] can remove every entry written so far
    /// (a rekey does this to retire the key they were written under).
    pub fn roll(&self) -> Result<()> {
        self.shared.check()?;
        let (tx, rx) = mpsc::channel();
        self.control(Request::Roll { reply: tx })?;
        rx.recv().unwrap_or(Err(WalError::Closed))
    }

    /// Ok while healthy; after a failed write or fsync, the latched error as `Poisoned`.
    pub fn health(&self) -> Result<()> {
        self.shared.check()
    }

    /// The last lsn that is durable under the policy and was applied (acknowledged); right after
    /// open, the last lsn in the log or `after`, whichever is larger.
    pub fn last_lsn(&self) -> Lsn {
        Lsn::new(self.shared.last_lsn.load(Ordering::Acquire))
    }

    /// Number of fsyncs issued on log files since open (shared fsyncs show group commit).
    /// How long its fsyncs and group commits have taken.
    pub fn latencies(&self) -> crate::LogLatencies {
        crate::LogLatencies {
            fsync: self.shared.fsync.read(),
            commit: self.shared.commit.read(),
        }
    }

    pub fn sync_count(&self) -> u64 {
        self.shared.sync_count.load(Ordering::Relaxed)
    }

    /// The directory holding the log files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Waits for queued appends, fsyncs (under every policy), and stops the writer thread.
    /// Idempotent. Returns the latched error if the log is poisoned.
    pub fn close(&self) -> Result<()> {
        let sender = lock(&self.requests).take();
        if let Some(sender) = sender {
            let (tx, rx) = mpsc::channel();
            // Sent after every queued append (the channel is FIFO); a send error means the
            // writer already stopped, which the join below reports.
            let _ = sender.send(Request::Close { reply: tx });
            drop(sender);
            let result = rx.recv().unwrap_or(Ok(()));
            if let Some(handle) = lock(&self.writer).take()
                && handle.join().is_err()
            {
                return Err(WalError::Poisoned(
                    "the write-ahead log writer thread panicked".to_owned(),
                ));
            }
            result?;
        }
        self.shared.check()
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::warn!(dir = %self.dir.display(), error = %e, "closing the write-ahead log failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn wal_is_send_and_sync() {
        assert_send_sync::<Wal>();
        assert_send_sync::<crate::FileBytes>();
        assert_send_sync::<crate::SimFs>();
    }
}
