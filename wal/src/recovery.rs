//! Opening a log directory: reads every file in lsn order, checks headers,
//! checksums and lsn contiguity, and cuts off a torn tail of the last file. Damage
//! anywhere else (or damage followed by a valid frame) is a `Corrupt` error.

use std::path::{Path, PathBuf};

use toplog_types::Lsn;

use crate::error::{Result, WalError};
use crate::format::{self, FRAME_HEADER_LEN, HEADER_LEN};
use crate::fs::{Fs, FsFile};
use crate::wal::Entry;

/// One log file: the lsn of its first frame and its path.
#[derive(Debug, Clone)]
pub(crate) struct Segment {
    pub(crate) first: Lsn,
    pub(crate) path: PathBuf,
}

/// The state the writer starts from.
#[derive(Debug)]
pub(crate) struct Recovered {
    /// All log files, oldest first; the last one is `file`.
    pub(crate) segments: Vec<Segment>,
    /// Entries with lsn greater than the caller's `after`, in order.
    pub(crate) entries: Vec<Entry>,
    /// The lsn the next appended frame gets.
    pub(crate) next_lsn: Lsn,
    /// The last file, open for appending at its (possibly truncated) end.
    pub(crate) file: Box<dyn FsFile>,
}

pub(crate) fn recover(fs: &dyn Fs, dir: &Path, after: Lsn) -> Result<Recovered> {
    if !fs.exists(dir) {
        fs.create_dir_all(dir)
            .map_err(|e| WalError::io(dir, "create directory", e))?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs.sync_dir(parent)
                .map_err(|e| WalError::io(parent, "fsync directory", e))?;
        }
    }
    let names = fs
        .list(dir)
        .map_err(|e| WalError::io(dir, "list directory", e))?;
    let mut segments: Vec<Segment> = names
        .iter()
        .filter_map(|name| {
            format::parse_file_name(name).map(|first| Segment {
                first,
                path: dir.join(name),
            })
        })
        .collect();
    segments.sort_by_key(|s| s.first);

    let first_new = after
        .checked_next()
        .ok_or_else(|| WalError::corrupt(dir, 0, "lsn space exhausted"))?;
    if segments.is_empty() {
        return fresh_log(fs, dir, first_new);
    }

    let mut entries = Vec::new();
    let mut expected: Option<Lsn> = None;
    let mut reopened: Option<Box<dyn FsFile>> = None;
    let count = segments.len();
    for (i, segment) in segments.iter().enumerate() {
        let is_last = i + 1 == count;
        let path = &segment.path;
        if let Some(exp) = expected
            && segment.first != exp
        {
            return Err(WalError::corrupt(
                path,
                0,
                format!(
                    "file starts at lsn {} but the previous file ends at lsn {}",
                    segment.first,
                    exp.get() - 1
                ),
            ));
        }
        if expected.is_none() && segment.first > first_new {
            return Err(WalError::corrupt(
                path,
                0,
                format!(
                    "the log starts at lsn {} but entries after lsn {after} were asked for: lsns {}..{} are missing",
                    segment.first,
                    first_new,
                    segment.first.get() - 1
                ),
            ));
        }
        let bytes = fs.read(path).map_err(|e| WalError::io(path, "read", e))?;
        if bytes.len() < HEADER_LEN {
            if !is_last {
                return Err(WalError::corrupt(
                    path,
                    0,
                    format!("file header is torn ({} bytes)", bytes.len()),
                ));
            }
            // The file was created but its header never became durable: nothing in it was acknowledged.
            tracing::warn!(file = %path.display(), len = bytes.len(), "rewriting torn header of the last write-ahead log file");
            fs.truncate(path, 0)
                .map_err(|e| WalError::io(path, "truncate", e))?;
            let mut file = fs
                .open_append(path)
                .map_err(|e| WalError::io(path, "open", e))?;
            file.write_all(&format::encode_header(segment.first))
                .map_err(|e| WalError::io(path, "write", e))?;
            file.sync().map_err(|e| WalError::io(path, "fsync", e))?;
            reopened = Some(file);
            expected = Some(segment.first);
            break;
        }
        let header_first =
            format::decode_header(&bytes).map_err(|reason| WalError::corrupt(path, 0, reason))?;
        if header_first != segment.first {
            return Err(WalError::corrupt(
                path,
                16,
                format!(
                    "header says the first lsn is {header_first} but the file name says {}",
                    segment.first
                ),
            ));
        }
        let mut next = header_first;
        let mut pos = HEADER_LEN;
        while pos < bytes.len() {
            let problem = match format::decode_frame(&bytes, pos) {
                Ok(frame) if frame.lsn == next => {
                    if frame.lsn > after {
                        entries.push(Entry {
                            lsn: frame.lsn,
                            term: frame.term,
                            payload: frame.payload.to_vec(),
                        });
                    }
                    next = next.checked_next().ok_or_else(|| {
                        WalError::corrupt(path, pos as u64, "lsn space exhausted")
                    })?;
                    pos = frame.end;
                    continue;
                }
                Ok(frame) => format!("frame has lsn {}, expected {next}", frame.lsn),
                Err(e) => e.to_string(),
            };
            if !is_last {
                return Err(WalError::corrupt(path, pos as u64, problem));
            }
            if let Some(valid) = find_valid_frame(&bytes, pos + 1, next) {
                return Err(WalError::corrupt(
                    path,
                    pos as u64,
                    format!(
                        "{problem}; a valid frame follows at byte {valid}, so this is not a torn tail"
                    ),
                ));
            }
            tracing::warn!(
                file = %path.display(),
                offset = pos,
                dropped_bytes = bytes.len() - pos,
                reason = %problem,
                "truncating torn tail of the write-ahead log"
            );
            fs.truncate(path, pos as u64)
                .map_err(|e| WalError::io(path, "truncate", e))?;
            break;
        }
        expected = Some(next);
    }

    let next_in_log = expected.unwrap_or(first_new);
    if next_in_log < first_new {
        // Everything in the log is at or below `after` (the caller persisted it elsewhere) and the
        // log ends before `after`. Appending at after+1 would leave a gap, so start over.
        tracing::warn!(
            dir = %dir.display(),
            log_ends_at = next_in_log.get() - 1,
            after = after.get(),
            "write-ahead log ends before the requested position; starting a new log after it"
        );
        drop(reopened);
        for segment in &segments {
            fs.remove_file(&segment.path)
                .map_err(|e| WalError::io(&segment.path, "remove", e))?;
        }
        fs.sync_dir(dir)
            .map_err(|e| WalError::io(dir, "fsync directory", e))?;
        return fresh_log(fs, dir, first_new);
    }

    let file = match reopened {
        Some(file) => file,
        None => {
            let path = segments.last().map(|s| s.path.clone()).unwrap_or_default();
            fs.open_append(&path)
                .map_err(|e| WalError::io(&path, "open", e))?
        }
    };
    Ok(Recovered {
        segments,
        entries,
        next_lsn: next_in_log,
        file,
    })
}

/// Offset of the first frame at or after `from` that decodes cleanly with an lsn of at
/// least `min_lsn`: evidence that damage before it is not a torn tail.
fn find_valid_frame(bytes: &[u8], from: usize, min_lsn: Lsn) -> Option<usize> {
    let last_start = bytes.len().checked_sub(FRAME_HEADER_LEN)?;
    (from..=last_start)
        .find(|&q| matches!(format::decode_frame(bytes, q), Ok(f) if f.lsn >= min_lsn))
}

/// Creates `wal-<first>.log` with its header, fsyncs it, then fsyncs the directory.
pub(crate) fn create_segment(
    fs: &dyn Fs,
    dir: &Path,
    first: Lsn,
) -> Result<(Segment, Box<dyn FsFile>)> {
    let path = dir.join(format::file_name(first));
    let mut file = fs
        .create(&path)
        .map_err(|e| WalError::io(&path, "create", e))?;
    file.write_all(&format::encode_header(first))
        .map_err(|e| WalError::io(&path, "write", e))?;
    // Header durable before the name: a crash never leaves a named file with a torn header
    // (recovery still tolerates one in the last file).
    file.sync().map_err(|e| WalError::io(&path, "fsync", e))?;
    fs.sync_dir(dir)
        .map_err(|e| WalError::io(dir, "fsync directory", e))?;
    Ok((Segment { first, path }, file))
}

/// A log holding one new, empty file whose first entry will be `first`.
fn fresh_log(fs: &dyn Fs, dir: &Path, first: Lsn) -> Result<Recovered> {
    let (segment, file) = create_segment(fs, dir, first)?;
    Ok(Recovered {
        segments: vec![segment],
        entries: Vec::new(),
        next_lsn: first,
        file,
    })
}
