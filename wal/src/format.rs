//! The on-disk layout of log files (also in `docs/format.md`). All integers
//! little-endian.
//!
//! File header (24 bytes):
//! | offset | size | field     | value                          |
//! |--------|------|-----------|--------------------------------|
//! | 0      | 8    | magic     | `b"TPLGWAL\0"`                 |
//! | 8      | 4    | version   | u32, 1                         |
//! | 12     | 4    | reserved  | u32, 0                         |
//! | 16     | 8    | first_lsn | u64, lsn of the file's first frame |
//!
//! Frame (25-byte header + payload):
//! | offset | size | field       | notes                                    |
//! |--------|------|-------------|------------------------------------------|
//! | 0      | 4    | payload_len | u32, at most 256 MiB                     |
//! | 4      | 4    | crc32c      | over bytes 0..4 and 8..25+payload_len    |
//! | 8      | 1    | type        | 1 = entry                                |
//! | 9      | 8    | lsn         | u64                                      |
//! | 17     | 8    | term        | u64                                      |
//! | 25     | len  | payload     |                                          |

use toplog_types::Lsn;

pub(crate) const MAGIC: [u8; 8] = *b"TPLGWAL\0";
pub(crate) const VERSION: u32 = 1;
pub(crate) const HEADER_LEN: usize = 24;
pub(crate) const FRAME_HEADER_LEN: usize = 25;
pub(crate) const MAX_PAYLOAD: usize = 256 * 1024 * 1024;
const TYPE_ENTRY: u8 = 1;

const FILE_PREFIX: &str = "wal-";
const FILE_SUFFIX: &str = ".log";
const LSN_DIGITS: usize = 20;

/// `wal-<first lsn, 20 digits>.log`.
pub(crate) fn file_name(first: Lsn) -> String {
    format!("{FILE_PREFIX}{:020}{FILE_SUFFIX}", first.get())
}

/// The first lsn encoded in a log file's name, or `None` if it is not a log file.
pub(crate) fn parse_file_name(name: &str) -> Option<Lsn> {
    let digits = name.strip_prefix(FILE_PREFIX)?.strip_suffix(FILE_SUFFIX)?;
    if digits.len() != LSN_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(Lsn::new)
}

pub(crate) fn encode_header(first: Lsn) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&0u32.to_le_bytes());
    h[16..24].copy_from_slice(&first.get().to_le_bytes());
    h
}

/// Checks magic, version and reserved field; returns the header's first lsn.
pub(crate) fn decode_header(bytes: &[u8]) -> Result<Lsn, String> {
    if bytes.len() < HEADER_LEN {
        return Err(format!(
            "file header is {} bytes, expected {HEADER_LEN}",
            bytes.len()
        ));
    }
    if bytes[0..8] != MAGIC {
        return Err("bad magic: not a toplog write-ahead log file".to_owned());
    }
    let version = read_u32(bytes, 8);
    if version != VERSION {
        return Err(format!(
            "unsupported format version {version} (this build reads version {VERSION})"
        ));
    }
    let reserved = read_u32(bytes, 12);
    if reserved != 0 {
        return Err(format!("reserved header field is {reserved}, expected 0"));
    }
    Ok(Lsn::new(read_u64(bytes, 16)))
}

/// Appends one entry frame to `buf`. The caller has checked `payload.len() <= MAX_PAYLOAD`.
pub(crate) fn encode_frame(buf: &mut Vec<u8>, lsn: Lsn, term: u64, payload: &[u8]) {
    let start = buf.len();
    // The length fits: MAX_PAYLOAD < u32::MAX and callers reject larger payloads.
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&[0u8; 4]);
    buf.push(TYPE_ENTRY);
    buf.extend_from_slice(&lsn.get().to_le_bytes());
    buf.extend_from_slice(&term.to_le_bytes());
    buf.extend_from_slice(payload);
    let crc = frame_crc(&buf[start..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// One decoded frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Frame<'a> {
    pub(crate) lsn: Lsn,
    pub(crate) term: u64,
    pub(crate) payload: &'a [u8],
    /// Offset just past the frame.
    pub(crate) end: usize,
}

/// Why the bytes at an offset are not a valid frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameError {
    IncompleteHeader { available: usize },
    TooLarge { len: usize },
    PastEnd { len: usize },
    Checksum { stored: u32, computed: u32 },
    UnknownType(u8),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::IncompleteHeader { available } => {
                write!(
                    f,
                    "incomplete frame header ({available} of {FRAME_HEADER_LEN} bytes)"
                )
            }
            Self::TooLarge { len } => write!(
                f,
                "payload length {len} exceeds the {MAX_PAYLOAD}-byte limit"
            ),
            Self::PastEnd { len } => write!(
                f,
                "frame with a {len}-byte payload runs past the end of the file"
            ),
            Self::Checksum { stored, computed } => {
                write!(
                    f,
                    "checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
                )
            }
            Self::UnknownType(t) => write!(f, "unknown frame type {t}"),
        }
    }
}

/// Decodes the frame at `pos`, or says why the bytes there are not a valid frame.
pub(crate) fn decode_frame(bytes: &[u8], pos: usize) -> Result<Frame<'_>, FrameError> {
    let available = bytes.len().saturating_sub(pos);
    if available < FRAME_HEADER_LEN {
        return Err(FrameError::IncompleteHeader { available });
    }
    let len = read_u32(bytes, pos) as usize;
    if len > MAX_PAYLOAD {
        return Err(FrameError::TooLarge { len });
    }
    let end = pos + FRAME_HEADER_LEN + len;
    if end > bytes.len() {
        return Err(FrameError::PastEnd { len });
    }
    let frame = &bytes[pos..end];
    let stored = read_u32(frame, 4);
    let computed = frame_crc(frame);
    if stored != computed {
        return Err(FrameError::Checksum { stored, computed });
    }
    match frame[8] {
        TYPE_ENTRY => {}
        other => return Err(FrameError::UnknownType(other)),
    }
    Ok(Frame {
        lsn: Lsn::new(read_u64(frame, 9)),
        term: read_u64(frame, 17),
        payload: &frame[FRAME_HEADER_LEN..],
        end,
    })
}

/// CRC32C over the whole frame except the crc field itself (bytes 4..8).
fn frame_crc(frame: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&frame[0..4]);
    crc32c::crc32c_append(crc, &frame[8..])
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn frame_round_trips_with_exact_layout() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, Lsn::new(7), 3, b"abc");
        assert_eq!(buf.len(), FRAME_HEADER_LEN + 3);
        assert_eq!(&buf[0..4], &3u32.to_le_bytes());
        assert_eq!(buf[8], 1);
        assert_eq!(&buf[9..17], &7u64.to_le_bytes());
        assert_eq!(&buf[17..25], &3u64.to_le_bytes());
        let f = decode_frame(&buf, 0).unwrap();
        assert_eq!(
            (f.lsn, f.term, f.payload, f.end),
            (Lsn::new(7), 3, &b"abc"[..], buf.len())
        );
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x40;
            assert!(decode_frame(&bad, 0).is_err(), "flip at {i} not detected");
        }
        assert!(decode_frame(&buf[..buf.len() - 1], 0).is_err());
    }

    #[test]
    fn header_and_names() {
        let h = encode_header(Lsn::new(42));
        assert_eq!(&h[0..8], b"TPLGWAL\0");
        assert_eq!(decode_header(&h).unwrap(), Lsn::new(42));
        let name = file_name(Lsn::new(42));
        assert_eq!(name, "wal-00000000000000000042.log");
        assert_eq!(parse_file_name(&name), Some(Lsn::new(42)));
        assert_eq!(parse_file_name("wal-42.log"), None);
        assert_eq!(parse_file_name("wal-0000000000000000004x.log"), None);
        let mut bad = h;
        bad[8] = 2;
        assert!(decode_header(&bad).unwrap_err().contains("version 2"));
    }
}
