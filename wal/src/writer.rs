//! The writer thread: the only code that writes log files after open. It takes
//! every queued append at once, writes them with one `write_all`, issues one fsync
//! (policy `Always`), then applies and acknowledges them in lsn order. Any write or
//! fsync error latches the log as poisoned; nothing is ever retried.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::oneshot;
use toplog_types::Lsn;

use crate::error::{Result, WalError};
use crate::format::{self, HEADER_LEN};
use crate::fs::{Fs, FsFile};
use crate::latency::Latencies;
use crate::recovery::{self, Segment};
use crate::wal::{Attachment, FsyncPolicy, OnDurable, WalOptions};

/// Where an append's result goes.
#[derive(Debug)]
pub(crate) enum Reply {
    Async(oneshot::Sender<Result<Lsn>>),
    Blocking(mpsc::Sender<Result<Lsn>>),
}

impl Reply {
    pub(crate) fn send(self, result: Result<Lsn>) {
        // A caller that stopped waiting is not an error of the log.
        match self {
            Reply::Async(tx) => {
                let _ = tx.send(result);
            }
            Reply::Blocking(tx) => {
                let _ = tx.send(result);
            }
        }
    }
}

pub(crate) enum Request {
    Append {
        term: u64,
        payload: Vec<u8>,
        attachment: Option<Attachment>,
        reply: Reply,
    },
    /// Frames (term, payload) committed in one group, each answered on `reply`.
    AppendBatch {
        frames: Vec<(u64, Vec<u8>)>,
        reply: mpsc::Sender<Result<Lsn>>,
    },
    TruncatePrefix {
        upto: Lsn,
        reply: mpsc::Sender<Result<()>>,
    },
    TruncateSuffix {
        from: Lsn,
        reply: mpsc::Sender<Result<()>>,
    },
    Roll {
        reply: mpsc::Sender<Result<()>>,
    },
    Close {
        reply: mpsc::Sender<Result<()>>,
    },
}

/// State read by the handle while the writer thread runs.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The first write or fsync error, latched forever (fail-stop).
    poison: Mutex<Option<String>>,
    pub(crate) last_lsn: AtomicU64,
    pub(crate) sync_count: AtomicU64,
    pub(crate) fsync: Latencies,
    pub(crate) commit: Latencies,
}

impl Shared {
    pub(crate) fn new(last: Lsn) -> Self {
        Self {
            poison: Mutex::new(None),
            last_lsn: AtomicU64::new(last.get()),
            sync_count: AtomicU64::new(0),
            fsync: Latencies::default(),
            commit: Latencies::default(),
        }
    }

    pub(crate) fn check(&self) -> Result<()> {
        let poison = self.poison.lock().unwrap_or_else(|p| p.into_inner());
        match poison.as_ref() {
            Some(message) => Err(WalError::Poisoned(message.clone())),
            None => Ok(()),
        }
    }

    /// Latches `message` unless an earlier error is already latched.
    fn poison(&self, message: String) {
        let mut poison = self.poison.lock().unwrap_or_else(|p| p.into_inner());
        if poison.is_none() {
            tracing::error!(error = %message, "write-ahead log poisoned; refusing further writes");
            *poison = Some(message);
        }
    }
}

struct Pending {
    lsn: Lsn,
    payload: Vec<u8>,
    attachment: Option<Attachment>,
    reply: Reply,
}

/// An append waiting in a group: term, payload, attachment, reply.
type Queued = (u64, Vec<u8>, Option<Attachment>, Reply);

pub(crate) struct Writer {
    fs: Arc<dyn Fs>,
    dir: PathBuf,
    options: WalOptions,
    segments: Vec<Segment>,
    file: Box<dyn FsFile>,
    next_lsn: Lsn,
    on_durable: OnDurable,
    shared: Arc<Shared>,
    /// Bytes written since the last fsync of `file`.
    dirty: bool,
    last_sync: Instant,
    buf: Vec<u8>,
}

impl Writer {
    #[expect(
        clippy::too_many_arguments,
        reason = "built once, in Wal::open, from the recovered state"
    )]
    pub(crate) fn new(
        fs: Arc<dyn Fs>,
        dir: PathBuf,
        options: WalOptions,
        segments: Vec<Segment>,
        file: Box<dyn FsFile>,
        next_lsn: Lsn,
        on_durable: OnDurable,
        shared: Arc<Shared>,
    ) -> Self {
        Self {
            fs,
            dir,
            options,
            segments,
            file,
            next_lsn,
            on_durable,
            shared,
            dirty: false,
            last_sync: Instant::now(),
            buf: Vec::new(),
        }
    }

    pub(crate) fn run(mut self, requests: mpsc::Receiver<Request>) {
        loop {
            let first = match self.options.fsync {
                FsyncPolicy::Interval(interval) if self.dirty => {
                    let wait =
                        (self.last_sync + interval).saturating_duration_since(Instant::now());
                    match requests.recv_timeout(wait) {
                        Ok(request) => request,
                        Err(RecvTimeoutError::Timeout) => {
                            // Errors are latched in `shared`; later appends report them.
                            let _ = self.sync();
                            continue;
                        }
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                _ => match requests.recv() {
                    Ok(request) => request,
                    Err(_) => break,
                },
            };
            // Group commit: everything already queued goes into this group. A control
            // request ends the group so it sees every append queued before it.
            let mut group = Vec::new();
            let mut control = None;
            let mut next = Some(first);
            while let Some(request) = next.take() {
                match request {
                    Request::Append {
                        term,
                        payload,
                        attachment,
                        reply,
                    } => group.push((term, payload, attachment, reply)),
                    Request::AppendBatch { frames, reply } => {
                        for (term, payload) in frames {
                            group.push((term, payload, None, Reply::Blocking(reply.clone())));
                        }
                    }
                    other => {
                        control = Some(other);
                        break;
                    }
                }
                next = requests.try_recv().ok();
            }
            if !group.is_empty() {
                self.commit(group);
            }
            match control {
                None | Some(Request::Append { .. } | Request::AppendBatch { .. }) => {}
                Some(Request::TruncateSuffix { from, reply }) => {
                    let _ = reply.send(self.truncate_suffix(from));
                }
                Some(Request::TruncatePrefix { upto, reply }) => {
                    let _ = reply.send(self.truncate_prefix(upto));
                }
                Some(Request::Roll { reply }) => {
                    let _ = reply.send(self.roll_if_written());
                }
                Some(Request::Close { reply }) => {
                    let _ = reply.send(self.finish());
                    return;
                }
            }
        }
        // Every handle is gone without a close: still make what was written durable.
        let _ = self.finish();
    }

    fn current_path(&self) -> PathBuf {
        self.segments
            .last()
            .map(|s| s.path.clone())
            .unwrap_or_else(|| self.dir.clone())
    }

    /// Writes, syncs (per policy), applies and acknowledges one group.
    fn commit(&mut self, group: Vec<Queued>) {
        if self.shared.check().is_err() {
            for (_, _, _, reply) in group {
                reply.send(self.shared.check().map(|()| Lsn::ZERO));
            }
            return;
        }
        let started = Instant::now();
        let mut pending = Vec::with_capacity(group.len());
        let mut outcome = Ok(());
        self.buf.clear();
        for (term, payload, attachment, reply) in group {
            let lsn = self.next_lsn;
            if outcome.is_ok() {
                outcome = self.frame(lsn, term, &payload);
            }
            pending.push(Pending {
                lsn,
                payload,
                attachment,
                reply,
            });
        }
        if outcome.is_ok() {
            outcome = self.write_buf();
        }
        if outcome.is_ok() {
            outcome = match self.options.fsync {
                FsyncPolicy::Always => self.sync(),
                FsyncPolicy::Interval(interval) if self.last_sync.elapsed() >= interval => {
                    self.sync()
                }
                FsyncPolicy::Interval(_) | FsyncPolicy::Never => Ok(()),
            };
        }
        if let Err(message) = outcome {
            self.shared.poison(message);
            for p in pending {
                p.reply.send(self.shared.check().map(|()| Lsn::ZERO));
            }
            return;
        }
        self.shared.commit.record(started.elapsed());
        for p in pending {
            (self.on_durable)(p.lsn, &p.payload, p.attachment);
            self.shared.last_lsn.store(p.lsn.get(), Ordering::Release);
            p.reply.send(Ok(p.lsn));
        }
    }

    /// Adds the frame for `lsn` to the buffer, first rolling to a new file if the current one is full.
    fn frame(&mut self, lsn: Lsn, term: u64, payload: &[u8]) -> Result<(), String> {
        let size = self.file.len() + self.buf.len() as u64;
        if size >= self.options.segment_bytes && size > HEADER_LEN as u64 {
            self.write_buf()?;
            self.roll()?;
        }
        format::encode_frame(&mut self.buf, lsn, term, payload);
        self.next_lsn = lsn
            .checked_next()
            .ok_or_else(|| "lsn space exhausted".to_owned())?;
        Ok(())
    }

    fn write_buf(&mut self) -> Result<(), String> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let result = self.file.write_all(&self.buf);
        self.buf.clear();
        self.dirty = true;
        result.map_err(|e| format!("write to {} failed: {e}", self.current_path().display()))
    }

    fn sync(&mut self) -> Result<(), String> {
        if let Err(e) = self.shared.check() {
            // Nothing more will be written; stop the interval timer from firing.
            self.dirty = false;
            return Err(e.to_string());
        }
        let started = Instant::now();
        let result = self.file.sync();
        self.shared.fsync.record(started.elapsed());
        self.shared.sync_count.fetch_add(1, Ordering::Relaxed);
        self.last_sync = Instant::now();
        match result {
            Ok(()) => {
                self.dirty = false;
                Ok(())
            }
            Err(e) => {
                let message = format!("fsync of {} failed: {e}", self.current_path().display());
                self.shared.poison(message.clone());
                Err(message)
            }
        }
    }

    /// Starts a new file for `next_lsn`. The old file is fsynced first under every policy:
    /// recovery treats damage in any file but the last as corruption, so a file must be
    /// complete on disk before a newer one can exist.
    fn roll(&mut self) -> Result<(), String> {
        self.sync()?;
        let (segment, file) = recovery::create_segment(self.fs.as_ref(), &self.dir, self.next_lsn)
            .map_err(|e| format!("starting a new log file failed: {e}"))?;
        self.shared.sync_count.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(file = %segment.path.display(), "started a new write-ahead log file");
        self.segments.push(segment);
        self.file = file;
        Ok(())
    }

    /// Starts a new file unless the current one holds no entry yet.
    fn roll_if_written(&mut self) -> Result<()> {
        self.shared.check()?;
        let written = self
            .segments
            .last()
            .is_some_and(|s| s.first.get() < self.next_lsn.get());
        if written && let Err(e) = self.roll() {
            self.shared.poison(e);
            return self.shared.check();
        }
        Ok(())
    }

    /// Removes every frame with lsn >= `from`: later files go whole, the
    /// file holding `from` is cut at its frame (and fsynced); the next frame
    /// gets `from`.
    fn truncate_suffix(&mut self, from: Lsn) -> Result<()> {
        self.shared.check()?;
        if from >= self.next_lsn {
            return Ok(());
        }
        let result = self.cut_from(from);
        if let Err(e) = &result {
            self.shared
                .poison(format!("cutting the log's tail failed: {e}"));
        }
        result
    }

    fn cut_from(&mut self, from: Lsn) -> Result<()> {
        let Some(keep) = self.segments.iter().rposition(|s| s.first <= from) else {
            return Err(WalError::corrupt(
                &self.dir,
                0,
                format!("cannot cut the log at lsn {from}: it starts after it"),
            ));
        };
        self.sync().map_err(WalError::Poisoned)?;
        for segment in self.segments.drain(keep + 1..).rev() {
            self.fs
                .remove_file(&segment.path)
                .map_err(|e| WalError::io(&segment.path, "remove", e))?;
        }
        let path = self.segments[keep].path.clone();
        let bytes = self
            .fs
            .read(&path)
            .map_err(|e| WalError::io(&path, "read", e))?;
        let mut pos = HEADER_LEN;
        while pos < bytes.len() {
            let frame = format::decode_frame(&bytes, pos)
                .map_err(|e| WalError::corrupt(&path, pos as u64, e.to_string()))?;
            if frame.lsn >= from {
                break;
            }
            pos = frame.end;
        }
        self.fs
            .truncate(&path, pos as u64)
            .map_err(|e| WalError::io(&path, "truncate", e))?;
        self.file = self
            .fs
            .open_append(&path)
            .map_err(|e| WalError::io(&path, "open", e))?;
        self.fs
            .sync_dir(&self.dir)
            .map_err(|e| WalError::io(&self.dir, "fsync directory", e))?;
        self.next_lsn = from;
        self.shared
            .last_lsn
            .store(from.get().saturating_sub(1), Ordering::Release);
        Ok(())
    }

    fn truncate_prefix(&mut self, upto: Lsn) -> Result<()> {
        self.shared.check()?;
        let mut removed = 0;
        // A file holds lsns first..next_file.first-1; the last file is never removed.
        while let [oldest, next, ..] = self.segments.as_slice() {
            if next.first.get() - 1 > upto.get() {
                break;
            }
            let path = oldest.path.clone();
            self.fs
                .remove_file(&path)
                .map_err(|e| WalError::io(&path, "remove", e))?;
            self.segments.remove(0);
            removed += 1;
        }
        if removed > 0 {
            if let Err(e) = self.fs.sync_dir(&self.dir) {
                self.shared.poison(format!(
                    "fsync of directory {} failed: {e}",
                    self.dir.display()
                ));
                return self.shared.check();
            }
            tracing::debug!(removed, upto = upto.get(), "removed write-ahead log files");
        }
        Ok(())
    }

    /// Final fsync at close, under every policy.
    fn finish(&mut self) -> Result<()> {
        if self.dirty && self.shared.check().is_ok() {
            let _ = self.sync();
        }
        self.shared.check()
    }
}
