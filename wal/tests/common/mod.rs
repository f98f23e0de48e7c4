//! Helpers shared by the integration tests.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use toplog_types::Lsn;
use toplog_wal::{Entry, Fs, FsyncPolicy, SimFs, Wal, WalError, WalOptions};

pub const HEADER_LEN: usize = 24;
pub const FRAME_HEADER_LEN: usize = 25;

pub fn dir() -> PathBuf {
    PathBuf::from("/data/wal")
}

pub fn options(segment_bytes: u64) -> WalOptions {
    WalOptions {
        fsync: FsyncPolicy::Always,
        segment_bytes,
    }
}

/// Lsns passed to on_durable, in call order.
#[derive(Clone, Default)]
pub struct Applied(pub Arc<Mutex<Vec<AppliedEntry>>>);

pub type AppliedEntry = (Lsn, Vec<u8>);

impl Applied {
    pub fn callback(&self) -> toplog_wal::OnDurable {
        let seen = Arc::clone(&self.0);
        Box::new(move |lsn, payload, _| seen.lock().unwrap().push((lsn, payload.to_vec())))
    }
    pub fn lsns(&self) -> Vec<u64> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(l, _)| l.get())
            .collect()
    }
}

pub fn open(fs: &SimFs, opts: WalOptions, after: u64) -> Result<(Wal, Vec<Entry>), WalError> {
    Wal::open(
        Arc::new(fs.clone()),
        &dir(),
        opts,
        Lsn::new(after),
        Box::new(|_, _, _| {}),
    )
}

/// Appends every payload on a fresh SimFs and closes the log.
pub fn write_log(payloads: &[Vec<u8>], segment_bytes: u64) -> SimFs {
    let fs = SimFs::new(1);
    let (wal, _) = open(&fs, options(segment_bytes), 0).unwrap();
    for (i, p) in payloads.iter().enumerate() {
        assert_eq!(
            wal.append_blocking(p.clone()).unwrap(),
            Lsn::new(i as u64 + 1)
        );
    }
    wal.close().unwrap();
    fs
}

/// The log files in `dir()` with their contents, oldest first.
pub fn log_files(fs: &SimFs) -> Vec<(String, Vec<u8>)> {
    fs.list(&dir())
        .unwrap()
        .into_iter()
        .map(|n| (n.clone(), fs.read(&dir().join(&n)).unwrap()))
        .collect()
}

/// A fresh disk holding exactly these files in `dir()`, all durable.
pub fn disk_with(files: &[(String, Vec<u8>)]) -> SimFs {
    let fs = SimFs::new(2);
    fs.create_dir_all(&dir()).unwrap();
    for (name, bytes) in files {
        let mut f = fs.create(&dir().join(name)).unwrap();
        f.write_all(bytes).unwrap();
        f.sync().unwrap();
    }
    fs.sync_dir(&dir()).unwrap();
    fs
}

/// Entries the payloads become when appended from lsn 1.
pub fn expected_entries(payloads: &[Vec<u8>]) -> Vec<Entry> {
    payloads
        .iter()
        .enumerate()
        .map(|(i, p)| Entry {
            lsn: Lsn::new(i as u64 + 1),
            term: 0,
            payload: p.clone(),
        })
        .collect()
}

/// End offset of every frame of a single-file log holding these payloads.
pub fn frame_ends(payloads: &[Vec<u8>]) -> Vec<usize> {
    let mut end = HEADER_LEN;
    payloads
        .iter()
        .map(|p| {
            end += FRAME_HEADER_LEN + p.len();
            end
        })
        .collect()
}

pub fn path_of(name: &str) -> PathBuf {
    dir().join(name)
}

pub fn is_corrupt_at(err: &WalError, file: &Path, at: u64) -> bool {
    matches!(err, WalError::Corrupt { path, offset, .. } if path == file && *offset == at)
}
