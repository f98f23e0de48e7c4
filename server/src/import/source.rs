//! Reading a file line by line with byte offsets: plain, gzip (`.gz`) or
//! zstd (`.zst`, offsets in the decompressed bytes), and the file's identity,
//! a hash of its first line. Following a growing file across rotation
//! (`tail -F`) is built from [`Lines`] and the checks here.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use anyhow::Context;

/// The longest first line hashed for a file's identity.
const IDENTITY_BYTES: usize = 64 << 10;

/// The identity of content whose first line (newline included) is `first`.
fn identity_of(first: &[u8]) -> String {
    format!("{:032x}", twox_hash::XxHash3_128::oneshot(first))
}

/// The identity of a plain file read at its start through `file` (without
/// moving its cursor): `None` until its first line is whole.
pub(super) fn plain_identity(file: &File) -> std::io::Result<Option<String>> {
    let mut buf = vec![0; 4096];
    let mut have = 0;
    loop {
        let n = file.read_at(&mut buf[have..], have as u64)?;
        if let Some(nl) = memchr::memchr(b'\n', &buf[have..have + n]) {
            return Ok(Some(identity_of(&buf[..have + nl + 1])));
        }
        have += n;
        if n == 0 || have >= IDENTITY_BYTES {
            // No newline yet: an unfinished first line, or a first line too
            // long to wait for (hashed as far as it goes).
            return Ok((have >= IDENTITY_BYTES).then(|| identity_of(&buf[..have])));
        }
        if have == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
    }
}

/// The identity of a Parquet file: a hash of its footer (the metadata and
/// its length), which names every row group's place and statistics.
pub(super) fn parquet_identity(file: &File) -> std::io::Result<String> {
    let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_owned());
    let len = file.metadata()?.len();
    let mut tail = [0u8; 8];
    if len < 12 {
        return Err(bad("too short to be Parquet"));
    }
    file.read_exact_at(&mut tail, len - 8)?;
    let meta_len = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
    if &tail[4..] != b"PAR1" || meta_len + 12 > len {
        return Err(bad("no Parquet footer"));
    }
    let mut footer = vec![0u8; meta_len as usize + 8];
    file.read_exact_at(&mut footer, len - 8 - meta_len)?;
    Ok(identity_of(&footer))
}

/// How a file's bytes are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub(super) fn of(path: &Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some("gz") => Self::Gzip,
            Some("zst") => Self::Zstd,
            _ => Self::None,
        }
    }
}

/// Complete lines of a file with the offset after each, from a position.
pub(super) struct Lines {
    reader: Box<dyn BufRead + Send>,
    /// Offset (decompressed) of the next byte to read.
    offset: u64,
    /// A line read only in part (no newline yet), kept until it is whole.
    partial: Vec<u8>,
}

impl Lines {
    /// Opens `path` and returns its identity (`None`: the file has no whole
    /// first line yet) and its lines from the start.
    pub(super) fn open(path: &Path) -> anyhow::Result<(Option<String>, Self)> {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        match Compression::of(path) {
            Compression::None => {
                let identity = plain_identity(&file)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                Ok((identity, Self::from_plain(file, 0)?))
            }
            compression => {
                let mut reader = decoder(file, compression, path)?;
                let mut first = Vec::new();
                reader
                    .by_ref()
                    .take(IDENTITY_BYTES as u64)
                    .read_until(b'\n', &mut first)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                let identity = (!first.is_empty()).then(|| identity_of(&first));
                Ok((
                    identity,
                    Self {
                        reader,
                        offset: first.len() as u64,
                        partial: first,
                    },
                ))
            }
        }
    }

    /// Lines of an open plain file from `offset`.
    pub(super) fn from_plain(mut file: File, offset: u64) -> anyhow::Result<Self> {
        file.seek(SeekFrom::Start(offset))?;
        Ok(Self {
            reader: Box::new(BufReader::with_capacity(1 << 20, file)),
            offset,
            partial: Vec::new(),
        })
    }

    /// Reads and drops the bytes before `offset` (a line's end).
    pub(super) fn skip_to(&mut self, offset: u64, path: &Path) -> anyhow::Result<()> {
        let held = self.partial.len() as u64;
        if offset <= self.offset - held {
            return Ok(());
        }
        if offset <= self.offset {
            self.partial
                .drain(..(offset - (self.offset - held)) as usize);
            return Ok(());
        }
        self.partial.clear();
        let want = offset - self.offset;
        let skipped = std::io::copy(&mut self.reader.by_ref().take(want), &mut std::io::sink())
            .with_context(|| format!("cannot read {}", path.display()))?;
        self.offset += skipped;
        if skipped < want {
            anyhow::bail!(
                "{} holds {} bytes, fewer than the {offset} already imported from it",
                path.display(),
                self.offset
            );
        }
        Ok(())
    }

    /// The next whole line (its newline dropped) and the offset after it;
    /// `None` at the end of what is there now. With `last`, an unfinished
    /// last line counts as whole (the file is complete).
    pub(super) fn next_line(&mut self, last: bool) -> std::io::Result<Option<(Vec<u8>, u64)>> {
        let mut line = std::mem::take(&mut self.partial);
        if line.last() != Some(&b'\n') {
            // Not the whole first line held since `open`: read on.
            let n = self.reader.read_until(b'\n', &mut line)?;
            self.offset += n as u64;
        }
        if line.last() == Some(&b'\n') {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Ok(Some((line, self.offset)));
        }
        if last && !line.is_empty() {
            return Ok(Some((line, self.offset)));
        }
        self.partial = line;
        Ok(None)
    }

    /// Offset just past the last whole line returned.
    pub(super) fn offset(&self) -> u64 {
        self.offset - self.partial.len() as u64
    }
}

fn decoder(
    file: File,
    compression: Compression,
    path: &Path,
) -> anyhow::Result<Box<dyn BufRead + Send>> {
    let file = BufReader::with_capacity(1 << 20, file);
    Ok(match compression {
        Compression::None => Box::new(file),
        Compression::Gzip => Box::new(BufReader::with_capacity(
            1 << 20,
            flate2::bufread::MultiGzDecoder::new(file),
        )),
        Compression::Zstd => Box::new(BufReader::with_capacity(
            1 << 20,
            zstd::stream::read::Decoder::with_buffer(file)
                .with_context(|| format!("{} is not zstd", path.display()))?,
        )),
    })
}

/// (device, inode) of the file at `path` now, if there is one.
pub(super) fn inode_at(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// (device, inode) of an open file.
pub(super) fn inode_of(file: &File) -> std::io::Result<(u64, u64)> {
    file.metadata().map(|m| (m.dev(), m.ino()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::Write;

    fn lines_of(path: &Path, from: u64) -> (Option<String>, Vec<(String, u64)>) {
        let (id, mut lines) = Lines::open(path).unwrap();
        lines.skip_to(from, path).unwrap();
        let mut out = Vec::new();
        while let Some((l, end)) = lines.next_line(true).unwrap() {
            out.push((String::from_utf8(l).unwrap(), end));
        }
        (id, out)
    }

    /// Plain, gzip and zstd copies of one log have one identity and the same
    /// offsets, so a rotated and compressed log is known as the same file.
    #[test]
    fn compressed_copies_are_the_same_file_at_the_same_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let text = "first line\nsecond\r\nthird";
        let plain = dir.path().join("a.log");
        std::fs::write(&plain, text).unwrap();
        let gz = dir.path().join("a.log.1.gz");
        let mut enc =
            flate2::write::GzEncoder::new(File::create(&gz).unwrap(), flate2::Compression::fast());
        enc.write_all(text.as_bytes()).unwrap();
        enc.finish().unwrap();
        let zst = dir.path().join("a.log.2.zst");
        std::fs::write(&zst, zstd::encode_all(text.as_bytes(), 1).unwrap()).unwrap();
        let want = vec![
            ("first line".to_owned(), 11),
            ("second".into(), 19),
            ("third".into(), 24),
        ];
        let (id, got) = lines_of(&plain, 0);
        assert_eq!(got, want);
        for path in [&gz, &zst] {
            assert_eq!(
                lines_of(path, 0),
                (id.clone(), want.clone()),
                "{}",
                path.display()
            );
            assert_eq!(lines_of(path, 11).1, want[1..], "{}", path.display());
            assert_eq!(lines_of(path, 19).1, want[2..], "{}", path.display());
        }
        assert_eq!(lines_of(&plain, 19).1, want[2..]);
    }

    /// A line still being written is held back until its newline arrives.
    #[test]
    fn an_unfinished_line_waits_for_its_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("growing.log");
        std::fs::write(&path, "partial").unwrap();
        let (id, mut lines) = Lines::open(&path).unwrap();
        assert_eq!(id, None, "no identity before the first line is whole");
        assert_eq!(lines.next_line(false).unwrap(), None);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b" line\nnext").unwrap();
        assert_eq!(
            lines.next_line(false).unwrap(),
            Some((b"partial line".to_vec(), 13))
        );
        assert_eq!(lines.next_line(false).unwrap(), None);
        assert_eq!(lines.offset(), 13);
        assert!(
            plain_identity(&File::open(&path).unwrap())
                .unwrap()
                .is_some()
        );
    }
}
