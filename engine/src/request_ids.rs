//! A segment's request id column (segment version 2 on): an id in the
//! canonical UUID form (36 characters, lowercase hex, hyphens at 8, 13, 18
//! and 23) is stored as its 16 bytes, and the bytes of all such ids are laid
//! out in 16 planes (byte 0 of every id, then byte 1, ...), so that zstd sees
//! a version nibble or a time prefix as the run it is. Any other id is kept
//! as text. The layout (before the block's zstd):
//!
//! | part | bytes |
//! |---|---|
//! | form | u8 = 1 |
//! | text ids | varint count; per id, ascending by row: varint rows skipped since the last text id (or from row 0), varint length + UTF-8 |
//! | UUIDs | the rows that are not text ids, in row order: 16 planes of one byte per id |

use crate::codec::{CodecError, Reader, put_bytes, put_varint};
use crate::columns::StrColumn;

const FORM_UUID_PLANES: u8 = 1;
const UUID_TEXT_LEN: usize = 36;
const HYPHENS: [usize; 4] = [8, 13, 18, 23];

/// Appends the column of `ids` (in row order) to `out`.
pub(crate) fn encode<'a>(ids: impl ExactSizeIterator<Item = &'a str>, out: &mut Vec<u8>) {
    let rows = ids.len();
    let mut uuids: Vec<[u8; 16]> = Vec::with_capacity(rows);
    let mut texts = Vec::new();
    let mut text_count = 0u64;
    let mut last_text = 0usize;
    for (row, id) in ids.enumerate() {
        match parse(id) {
            Some(bytes) => uuids.push(bytes),
            None => {
                put_varint(&mut texts, (row - last_text) as u64);
                put_bytes(&mut texts, id.as_bytes());
                last_text = row + 1;
                text_count += 1;
            }
        }
    }
    out.push(FORM_UUID_PLANES);
    put_varint(out, text_count);
    out.extend_from_slice(&texts);
    out.reserve(uuids.len() * 16);
    for plane in 0..16 {
        out.extend(uuids.iter().map(|u| u[plane]));
    }
}

/// The column of `rows` ids encoded by [`encode`]; every byte must be used.
pub(crate) fn decode(raw: &[u8], rows: usize) -> Result<StrColumn, CodecError> {
    let bad = |m: &str| CodecError(format!("column `request_id`: {m}"));
    let mut r = Reader::new(raw);
    if r.u8()? != FORM_UUID_PLANES {
        return Err(bad("unknown form"));
    }
    // A text id takes two bytes or more (its gap and its length).
    let text_count = r.len(rows.min(r.remaining() / 2))?;
    // (row, text) of each text id.
    let mut texts = Vec::with_capacity(text_count);
    let mut next = 0usize;
    for _ in 0..text_count {
        let row = next
            .checked_add(r.len(rows)?)
            .filter(|row| *row < rows)
            .ok_or_else(|| bad("a text id past the last row"))?;
        texts.push((row, r.bytes()?));
        next = row + 1;
    }
    let uuid_rows = rows - text_count;
    let planes = r.take(uuid_rows * 16)?;
    if !r.is_empty() {
        return Err(bad("trailing bytes"));
    }
    let text_bytes: usize = texts.iter().map(|(_, t)| t.len()).sum();
    let mut data = Vec::with_capacity(uuid_rows * UUID_TEXT_LEN + text_bytes);
    let mut ends = Vec::with_capacity(rows);
    let mut texts = texts.into_iter().peekable();
    let mut uuid = 0;
    for row in 0..rows {
        match texts.next_if(|(at, _)| *at == row) {
            Some((_, text)) => data.extend_from_slice(text),
            None => {
                let mut bytes = [0u8; 16];
                for (plane, b) in bytes.iter_mut().enumerate() {
                    *b = planes[plane * uuid_rows + uuid];
                }
                uuid += 1;
                format(&bytes, &mut data);
            }
        }
        ends.push(u32::try_from(data.len()).map_err(|_| bad("too long"))?);
    }
    StrColumn::from_utf8(data, ends).ok_or_else(|| bad("invalid UTF-8"))
}

/// The 16 bytes of `id` if it is a UUID in canonical form (lowercase).
fn parse(id: &str) -> Option<[u8; 16]> {
    let s = id.as_bytes();
    if s.len() != UUID_TEXT_LEN || HYPHENS.iter().any(|at| s[*at] != b'-') {
        return None;
    }
    let mut digits = s
        .iter()
        .enumerate()
        .filter(|(at, _)| !HYPHENS.contains(at))
        .map(|(_, c)| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        });
    let mut out = [0u8; 16];
    for b in &mut out {
        *b = (digits.next()?? << 4) | digits.next()??;
    }
    Some(out)
}

/// Appends the canonical text of the UUID `bytes`.
fn format(bytes: &[u8; 16], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push(b'-');
        }
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 15)]);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn uuids_take_16_bytes_and_every_other_id_round_trips_as_text() {
        let ids = [
            "0190f3a2-7c4e-7d21-8f00-123456789abc",
            "",
            "0190F3A2-7C4E-7D21-8F00-123456789ABC",
            "req-42",
            "0190f3a2-7c4e-7d21-8f00-123456789abd",
            "0190f3a2-7c4e-7d21-8f00-123456789ab",
            "0190f3a2x7c4e-7d21-8f00-123456789abc",
            "0190f3a2-7c4e-7d21-8f00-123456789abg",
            "ü190f3a2-7c4e-7d21-8f00-123456789ab",
            "ffffffff-ffff-ffff-ffff-ffffffffffff",
        ];
        let mut raw = Vec::new();
        encode(ids.iter().copied(), &mut raw);
        let back = decode(&raw, ids.len()).unwrap();
        assert_eq!(back.iter().collect::<Vec<_>>(), ids);
        let texts: usize = ids[1..4]
            .iter()
            .chain(&ids[5..9])
            .map(|s| s.len() + 1)
            .sum();
        // Form, text count, a gap per text id, the texts, 16 bytes per UUID.
        assert_eq!(raw.len(), 1 + 1 + 7 + texts + 3 * 16);
        for cut in 0..raw.len() {
            assert!(decode(&raw[..cut], ids.len()).is_err(), "cut at {cut}");
        }
        assert!(decode(&raw, ids.len() + 1).is_err());
        let mut all_uuids = Vec::new();
        encode(ids[..1].iter().copied(), &mut all_uuids);
        assert_eq!(all_uuids.len(), 2 + 16);
        let mut none = Vec::new();
        encode(std::iter::empty(), &mut none);
        assert_eq!(decode(&none, 0).unwrap().len(), 0);
    }
}
