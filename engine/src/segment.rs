//! The segment format: an immutable file of one partition's events, sorted by
//! (timestamp, request id), stored column by column, each column a zstd block
//! with its own CRC32C. Layout (all integers little-endian; see docs/format.md):
//!
//! | part    | bytes                                                            |
//! |---------|------------------------------------------------------------------|
//! | header  | magic `TPLGSEG\0` (8), version u32 = 2, reserved u32 = 0         |
//! | blocks  | one zstd frame per column, back to back, in column-id order;     |
//! |         | with encryption on, each frame sealed in its own envelope        |
//! | footer  | rows u64, min_ts i64, max_ts i64, partition_start i64,           |
//! |         | partition_len i64, ncols u8, per column: id u8, offset u64,      |
//! |         | comp_len u32, raw_len u32, crc32c u32 (of the compressed block), |
//! |         | header_crc u32, footer_crc u32 (of the footer bytes before it)   |
//! | trailer | footer_len u32, magic `TPLGEND\0` (8)                            |
//!
//! Sealing each block on its own keeps segments memory-mapped: a read opens
//! only the blocks it decodes. The footer holds no stored value, only counts,
//! times and offsets, and stays plain so start-up reads it without a key.

use toplog_crypt::{Cipher, KeyUse, OpenError};
use toplog_types::{Event, Micros, method_from_endpoint};

use crate::codec::{CodecError, Reader, put_bytes, put_varint, zigzag};
use crate::column_forms;
use crate::columns::{Columns, DictColumn, StrColumn};
use crate::sorted_rows::SortedRows;

const MAGIC: &[u8; 8] = b"TPLGSEG\0";
const END_MAGIC: &[u8; 8] = b"TPLGEND\0";
/// Version 2 stores UUID request ids as bytes (`request_ids.rs`);
/// version 1, still read, stored every request id as text.
const VERSION: u32 = 2;
const HEADER_LEN: usize = 16;
const TRAILER_LEN: usize = 12;
const COLUMN_ENTRY_LEN: usize = 21;
/// zstd level of every column block. The columns are already delta and
/// dictionary encoded, so a higher level barely shrinks them: on segments of
/// loadgen's events level 1 compressed 31.4 MB of columns to 16.25 MB at
/// 366 MB/s, level 3 to 16.61 MB at 113 MB/s.
const ZSTD_LEVEL: i32 = 1;
/// No column block may claim to decompress to more than this (guards corrupt lengths).
const MAX_RAW_BLOCK: u32 = 1 << 30;

const COL_TS: u8 = 0;
const COL_REQUEST_ID: u8 = 1;
const COL_USER_ID: u8 = 2;
const COL_ENDPOINT: u8 = 3;
const COL_METHOD: u8 = 4;
const COL_STATUS: u8 = 5;
const COL_LATENCY: u8 = 6;
const NCOLS: u8 = 7;

/// What a segment's footer says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SegmentMeta {
    pub rows: u64,
    pub min_ts: Micros,
    pub max_ts: Micros,
    pub partition_start: Micros,
    pub partition_len_us: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    #[error("not a toplog segment (bad magic)")]
    BadMagic,
    #[error("unsupported segment version {0} (this build reads versions 1 to {VERSION})")]
    UnsupportedVersion(u32),
    #[error("checksum mismatch in {0}")]
    Checksum(String),
    #[error("malformed segment: {0}")]
    Malformed(String),
    #[error("column `{column}`: {reason}")]
    Encryption {
        column: &'static str,
        reason: OpenError,
    },
}

impl From<CodecError> for SegmentError {
    fn from(e: CodecError) -> Self {
        Self::Malformed(e.0)
    }
}

/// Encodes the rows of `cols` (in sorted order) as a segment file image.
pub(crate) fn encode(
    cols: &Columns,
    partition_start: Micros,
    partition_len_us: i64,
    cipher: &Cipher,
) -> Vec<u8> {
    encode_parts(&[cols], partition_start, partition_len_us, cipher)
}

/// [`encode`] of the rows of every part together (a memtable's chunks, the
/// segments a compaction merges), read where they are.
pub(crate) fn encode_parts(
    parts: &[&Columns],
    partition_start: Micros,
    partition_len_us: i64,
    cipher: &Cipher,
) -> Vec<u8> {
    encode_as(parts, partition_start, partition_len_us, cipher, VERSION)
}

/// [`encode_parts`] in format `version`: 2, or 1 (written only by tests that
/// check that files of version 1 still read).
fn encode_as(
    parts: &[&Columns],
    partition_start: Micros,
    partition_len_us: i64,
    cipher: &Cipher,
    version: u32,
) -> Vec<u8> {
    let rows = SortedRows::new(parts);
    let n = rows.len();
    let mut blocks: Vec<(u8, Vec<u8>)> = Vec::with_capacity(usize::from(NCOLS));

    if version >= 2 {
        encode_columns(&rows, &mut blocks);
    } else {
        encode_columns_v1(&rows, &mut blocks);
    }

    let mut out = Vec::with_capacity(HEADER_LEN + n * 16);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    let header_crc = crc32c::crc32c(&out[..HEADER_LEN]);

    let mut entries = Vec::with_capacity(blocks.len());
    for (id, raw) in blocks {
        // zstd on an in-memory buffer only fails on allocation failure; store the block raw then.
        let comp = zstd::bulk::compress(&raw, ZSTD_LEVEL).unwrap_or_else(|_| raw.clone());
        let raw_len = raw.len() as u32;
        drop(raw);
        let comp = cipher.seal(comp);
        let offset = out.len() as u64;
        entries.push((
            id,
            offset,
            comp.len() as u32,
            raw_len,
            crc32c::crc32c(&comp),
        ));
        out.extend_from_slice(&comp);
    }

    let (min, max) = rows.min_max_ts().unwrap_or((0, 0));
    let footer_start = out.len();
    out.extend_from_slice(&(n as u64).to_le_bytes());
    out.extend_from_slice(&min.to_le_bytes());
    out.extend_from_slice(&max.to_le_bytes());
    out.extend_from_slice(&partition_start.get().to_le_bytes());
    out.extend_from_slice(&partition_len_us.to_le_bytes());
    out.push(NCOLS);
    for (id, offset, comp_len, raw_len, crc) in entries {
        out.push(id);
        out.extend_from_slice(&offset.to_le_bytes());
        out.extend_from_slice(&comp_len.to_le_bytes());
        out.extend_from_slice(&raw_len.to_le_bytes());
        out.extend_from_slice(&crc.to_le_bytes());
    }
    out.extend_from_slice(&header_crc.to_le_bytes());
    let footer_crc = crc32c::crc32c(&out[footer_start..]);
    out.extend_from_slice(&footer_crc.to_le_bytes());
    let footer_len = (out.len() - footer_start) as u32;
    out.extend_from_slice(&footer_len.to_le_bytes());
    out.extend_from_slice(END_MAGIC);
    out
}

fn user_id(c: &Columns) -> &DictColumn {
    &c.user_id
}

fn endpoint(c: &Columns) -> &DictColumn {
    &c.endpoint
}

fn method(c: &Columns) -> &DictColumn {
    &c.method
}

/// The columns in version 2's layouts (`column_forms.rs`, `request_ids.rs`).
fn encode_columns(rows: &SortedRows<'_>, blocks: &mut Vec<(u8, Vec<u8>)>) {
    let n = rows.len();
    let ts: Vec<i64> = rows.iter().map(|(c, i)| c.ts[i]).collect();
    let mut raw = Vec::with_capacity(n * 2);
    column_forms::put_timestamps(&ts, &mut raw);
    drop(ts);
    blocks.push((COL_TS, raw));

    let mut raw = Vec::with_capacity(n * 17);
    crate::request_ids::encode(rows.iter().map(|(c, i)| c.request_id.get(i)), &mut raw);
    blocks.push((COL_REQUEST_ID, raw));

    let endpoints = rows.dictionary(endpoint);
    for (id, dict, column) in [
        (
            COL_USER_ID,
            &rows.dictionary(user_id),
            user_id as fn(&Columns) -> &DictColumn,
        ),
        (COL_ENDPOINT, &endpoints, endpoint),
    ] {
        let mut raw = Vec::with_capacity(n * 2);
        column_forms::put_dictionary(&dict.values, rows.ids(dict, column), n, &mut raw);
        blocks.push((id, raw));
    }
    let methods = rows.dictionary(method);
    let mut raw = Vec::new();
    column_forms::put_methods(
        (&methods.values, rows.ids(&methods, method)),
        (&endpoints.values, rows.ids(&endpoints, endpoint)),
        n,
        &mut raw,
    );
    blocks.push((COL_METHOD, raw));

    put_status(rows, blocks);

    let mut raw = Vec::with_capacity(n * 3);
    column_forms::put_planes(rows.iter().map(|(c, i)| c.latency_us[i]), &mut raw);
    blocks.push((COL_LATENCY, raw));
}

/// The status codes, u16 per row (both versions).
fn put_status(rows: &SortedRows<'_>, blocks: &mut Vec<(u8, Vec<u8>)>) {
    let mut raw = Vec::with_capacity(rows.len() * 2);
    for (c, i) in rows.iter() {
        raw.extend_from_slice(&c.status[i].to_le_bytes());
    }
    blocks.push((COL_STATUS, raw));
}

/// The columns in version 1's layouts (docs/format.md).
fn encode_columns_v1(rows: &SortedRows<'_>, blocks: &mut Vec<(u8, Vec<u8>)>) {
    let n = rows.len();
    let mut raw = Vec::with_capacity(n * 2);
    let mut prev = 0i64;
    for (k, (c, i)) in rows.iter().enumerate() {
        let t = c.ts[i];
        if k == 0 {
            raw.extend_from_slice(&t.to_le_bytes());
        } else {
            put_varint(&mut raw, zigzag(t.wrapping_sub(prev)));
        }
        prev = t;
    }
    blocks.push((COL_TS, raw));

    let mut raw = Vec::with_capacity(n * 17);
    for (c, i) in rows.iter() {
        put_bytes(&mut raw, c.request_id.get(i).as_bytes());
    }
    blocks.push((COL_REQUEST_ID, raw));

    for (id, column) in [
        (COL_USER_ID, user_id as fn(&Columns) -> &DictColumn),
        (COL_ENDPOINT, endpoint),
        (COL_METHOD, method),
    ] {
        let dict = rows.dictionary(column);
        let mut raw = Vec::with_capacity(n * 2);
        put_varint(&mut raw, dict.values.len() as u64);
        for v in &dict.values {
            put_bytes(&mut raw, v.as_bytes());
        }
        for id in rows.ids(&dict, column) {
            put_varint(&mut raw, u64::from(id));
        }
        blocks.push((id, raw));
    }

    put_status(rows, blocks);

    let mut raw = Vec::with_capacity(n * 2);
    for (c, i) in rows.iter() {
        put_varint(&mut raw, c.latency_us[i]);
    }
    blocks.push((COL_LATENCY, raw));
}

struct BlockRef {
    offset: usize,
    comp_len: usize,
    raw_len: u32,
    crc: u32,
}

/// Reads and checks the header, trailer and footer; returns the meta, the
/// column blocks and the format version.
fn read_footer(buf: &[u8]) -> Result<(SegmentMeta, Vec<BlockRef>, u32), SegmentError> {
    if buf.len() < HEADER_LEN + TRAILER_LEN || &buf[..8] != MAGIC {
        return Err(SegmentError::BadMagic);
    }
    if &buf[buf.len() - 8..] != END_MAGIC {
        return Err(SegmentError::Malformed(
            "missing end magic (file truncated?)".into(),
        ));
    }
    let mut h = Reader::new(&buf[8..HEADER_LEN]);
    let version = h.u32()?;
    if !(1..=VERSION).contains(&version) {
        return Err(SegmentError::UnsupportedVersion(version));
    }
    let mut t = Reader::new(&buf[buf.len() - TRAILER_LEN..]);
    let footer_len = t.u32()? as usize;
    let footer_end = buf.len() - TRAILER_LEN;
    let footer_start = footer_end
        .checked_sub(footer_len)
        .filter(|s| *s >= HEADER_LEN && footer_len >= 4)
        .ok_or_else(|| {
            SegmentError::Malformed(format!("footer length {footer_len} does not fit the file"))
        })?;
    let footer = &buf[footer_start..footer_end];
    let (body, crc) = footer.split_at(footer.len() - 4);
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32c::crc32c(body) != stored {
        return Err(SegmentError::Checksum("footer".into()));
    }
    let mut r = Reader::new(body);
    let rows = r.u64()?;
    let min_ts = Micros::new(r.i64()?);
    let max_ts = Micros::new(r.i64()?);
    let partition_start = Micros::new(r.i64()?);
    let partition_len_us = r.i64()?;
    let ncols = r.u8()?;
    if ncols != NCOLS || body.len() != 41 + usize::from(ncols) * COLUMN_ENTRY_LEN + 4 {
        return Err(SegmentError::Malformed(format!(
            "expected {NCOLS} columns, footer lists {ncols}"
        )));
    }
    let mut blocks = Vec::with_capacity(usize::from(ncols));
    let mut expected_offset = HEADER_LEN;
    for want in 0..ncols {
        let id = r.u8()?;
        let offset = r.u64()?;
        let comp_len = r.u32()? as usize;
        let raw_len = r.u32()?;
        let crc = r.u32()?;
        if id != want || offset != expected_offset as u64 || raw_len > MAX_RAW_BLOCK {
            return Err(SegmentError::Malformed(format!(
                "column {want}: bad directory entry"
            )));
        }
        expected_offset += comp_len;
        blocks.push(BlockRef {
            offset: offset as usize,
            comp_len,
            raw_len,
            crc,
        });
    }
    if expected_offset != footer_start {
        return Err(SegmentError::Malformed(
            "column blocks do not fill the space before the footer".into(),
        ));
    }
    if r.u32()? != crc32c::crc32c(&buf[..HEADER_LEN]) {
        return Err(SegmentError::Checksum("header".into()));
    }
    Ok((
        SegmentMeta {
            rows,
            min_ts,
            max_ts,
            partition_start,
            partition_len_us,
        },
        blocks,
        version,
    ))
}

/// Reads only the footer (cheap): used when opening segments at start-up.
pub(crate) fn read_meta(buf: &[u8]) -> Result<SegmentMeta, SegmentError> {
    read_footer(buf).map(|(meta, _, _)| meta)
}

/// A segment's column blocks, checked and decompressed one at a time into
/// one buffer: a block is done with once its column is built, and fresh
/// memory for each (tens of MB for a day's segment) costs a page fault per
/// 4 KiB on a segment's first read.
struct Blocks<'a> {
    file: &'a [u8],
    cipher: &'a Cipher,
    refs: Vec<BlockRef>,
    zstd: zstd::bulk::Decompressor<'static>,
    raw: Vec<u8>,
}

impl<'a> Blocks<'a> {
    fn new(file: &'a [u8], refs: Vec<BlockRef>, cipher: &'a Cipher) -> Result<Self, SegmentError> {
        let zstd = zstd::bulk::Decompressor::new()
            .map_err(|e| SegmentError::Malformed(format!("zstd: {e}")))?;
        let most = refs.iter().map(|b| b.raw_len as usize).max().unwrap_or(0);
        Ok(Self {
            file,
            cipher,
            refs,
            zstd,
            raw: Vec::with_capacity(most),
        })
    }

    /// Column `id`'s compressed bytes, after checking their CRC.
    fn check(&self, id: u8, name: &str) -> Result<&'a [u8], SegmentError> {
        let b = &self.refs[usize::from(id)];
        let comp = &self.file[b.offset..b.offset + b.comp_len];
        if crc32c::crc32c(comp) != b.crc {
            return Err(SegmentError::Checksum(format!("column `{name}`")));
        }
        Ok(comp)
    }

    /// Column `id`'s bytes, after checking its CRC and its length.
    fn read(&mut self, id: u8, name: &'static str) -> Result<&[u8], SegmentError> {
        let b = &self.refs[usize::from(id)];
        let stored = self.check(id, name)?;
        let comp = self
            .cipher
            .open(stored)
            .map_err(|reason| SegmentError::Encryption {
                column: name,
                reason,
            })?;
        self.raw.clear();
        self.raw.reserve(b.raw_len as usize);
        self.zstd
            .decompress_to_buffer(&comp, &mut self.raw)
            .map_err(|e| SegmentError::Malformed(format!("column `{name}`: {e}")))?;
        if self.raw.len() != b.raw_len as usize {
            return Err(SegmentError::Malformed(format!(
                "column `{name}`: wrong decompressed length"
            )));
        }
        Ok(&self.raw)
    }
}

fn finish(r: &Reader<'_>, name: &str) -> Result<(), SegmentError> {
    Ok(column_forms::done(r, name)?)
}

/// `n` length-prefixed strings of column `name`, read into one buffer.
fn strings(r: &mut Reader<'_>, n: usize, name: &str) -> Result<StrColumn, SegmentError> {
    // At most what is left to read, less a byte of length per string.
    let mut data = Vec::with_capacity(r.remaining().saturating_sub(n));
    let mut ends = Vec::with_capacity(n);
    for _ in 0..n {
        data.extend_from_slice(r.bytes()?);
        ends.push(data.len() as u32);
    }
    StrColumn::from_utf8(data, ends)
        .ok_or_else(|| SegmentError::Malformed(format!("column `{name}`: invalid UTF-8")))
}

fn dict(raw: &[u8], name: &str, rows: usize) -> Result<DictColumn, SegmentError> {
    let mut r = Reader::new(raw);
    let n = r.len(raw.len())?;
    let values = strings(&mut r, n, name)?;
    let mut ids = Vec::with_capacity(rows);
    for _ in 0..rows {
        let id = r.varint()?;
        if id >= n as u64 {
            return Err(SegmentError::Malformed(format!(
                "column `{name}`: dictionary id {id} out of range"
            )));
        }
        ids.push(id as u32);
    }
    finish(&r, name)?;
    Ok(DictColumn::from_parts(values, ids))
}

/// A dictionary-encoded column, for [`dictionary_holds`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DictColumnId {
    UserId,
    Endpoint,
    Method,
}

/// Whether the segment in `buf` has a row whose `column` is `value`: reads
/// that column's block (checksum checked) and compares its dictionary, not
/// its rows. A point filter skips the segments where this is false without
/// decoding them.
pub(crate) fn dictionary_holds(
    buf: &[u8],
    column: DictColumnId,
    value: &str,
    cipher: &Cipher,
) -> Result<bool, SegmentError> {
    let (id, name) = match column {
        DictColumnId::UserId => (COL_USER_ID, "user_id"),
        DictColumnId::Endpoint => (COL_ENDPOINT, "endpoint"),
        DictColumnId::Method => (COL_METHOD, "method"),
    };
    let (_, refs, version) = read_footer(buf)?;
    let mut blocks = Blocks::new(buf, refs, cipher)?;
    let mut raw = blocks.read(id, name)?;
    if version >= 2 && column == DictColumnId::Method {
        match column_forms::method_dictionary(raw)? {
            Some(dictionary) => raw = dictionary,
            None => {
                // Every row's method is its endpoint's.
                let raw = blocks.read(COL_ENDPOINT, "endpoint")?;
                let mut r = Reader::new(raw);
                for _ in 0..r.len(raw.len())? {
                    if method_from_endpoint(r.str()?) == Some(value) {
                        return Ok(true);
                    }
                }
                return Ok(false);
            }
        }
    }
    let mut r = Reader::new(raw);
    for _ in 0..r.len(raw.len())? {
        if r.bytes()? == value.as_bytes() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Decodes a whole segment, checking every checksum. Without
/// `request_ids`, the request id column's checksum is checked but the
/// column is left out (see [`Columns::has_request_ids`]).
pub(crate) fn decode(
    buf: &[u8],
    request_ids: bool,
    cipher: &Cipher,
) -> Result<(SegmentMeta, Columns), SegmentError> {
    let (meta, refs, version) = read_footer(buf)?;
    // Every row after the first takes a byte or more of the timestamp
    // column, which has the first's eight and more: no more rows than its
    // bytes (however well the rows compress; at most 2^30).
    let ts_bytes = refs[usize::from(COL_TS)].raw_len as usize;
    let rows = usize::try_from(meta.rows)
        .ok()
        .filter(|r| *r <= ts_bytes)
        .ok_or_else(|| SegmentError::Malformed(format!("row count {} is impossible", meta.rows)))?;

    let mut blocks = Blocks::new(buf, refs, cipher)?;
    let raw = blocks.read(COL_TS, "timestamp")?;
    let ts = column_forms::read_timestamps(raw, rows, version >= 2)?;

    let request_id = if request_ids {
        let raw = blocks.read(COL_REQUEST_ID, "request_id")?;
        if version >= 2 {
            Some(crate::request_ids::decode(raw, rows)?)
        } else {
            let mut r = Reader::new(raw);
            let column = strings(&mut r, rows, "request_id")?;
            finish(&r, "request_id")?;
            Some(column)
        }
    } else {
        blocks.check(COL_REQUEST_ID, "request_id")?;
        None
    };

    let user_id = dict(blocks.read(COL_USER_ID, "user_id")?, "user_id", rows)?;
    let endpoint = dict(blocks.read(COL_ENDPOINT, "endpoint")?, "endpoint", rows)?;
    let raw = blocks.read(COL_METHOD, "method")?;
    let method = if version < 2 {
        dict(raw, "method", rows)?
    } else {
        match column_forms::method_dictionary(raw)? {
            Some(raw) => dict(raw, "method", rows)?,
            None => column_forms::methods_of(&endpoint)?,
        }
    };

    let raw = blocks.read(COL_STATUS, "status_code")?;
    let mut r = Reader::new(raw);
    let status = (0..rows).map(|_| r.u16()).collect::<Result<Vec<_>, _>>()?;
    finish(&r, "status_code")?;

    let raw = blocks.read(COL_LATENCY, "latency")?;
    let latency_us = if version >= 2 {
        column_forms::read_planes(raw, rows, "latency")?
    } else {
        let mut r = Reader::new(raw);
        let latency_us = (0..rows)
            .map(|_| r.varint())
            .collect::<Result<Vec<_>, _>>()?;
        finish(&r, "latency")?;
        latency_us
    };

    let cols = Columns::from_parts(
        ts,
        request_id.unwrap_or_default(),
        user_id,
        endpoint,
        method,
        status,
        latency_us,
    );
    if let Some((min, max)) = cols.min_max_ts()
        && (min != meta.min_ts.get() || max != meta.max_ts.get())
    {
        return Err(SegmentError::Malformed(
            "timestamps disagree with the footer's min/max".into(),
        ));
    }
    Ok((meta, cols))
}

/// What the segment in `buf` is written under (its first block's envelope;
/// every block of a segment is sealed under the same key). Reads the header
/// only.
pub(crate) fn key_use(buf: &[u8]) -> Result<KeyUse, SegmentError> {
    let (_, refs, _) = read_footer(buf)?;
    let first = &refs[usize::from(COL_TS)];
    Cipher::key_use(&buf[first.offset..first.offset + first.comp_len]).map_err(|reason| {
        SegmentError::Encryption {
            column: "timestamp",
            reason,
        }
    })
}

/// Opens the segment's timestamp block: whether `cipher` has the key the
/// segment is written under, checked without decoding the segment.
pub(crate) fn check_key(buf: &[u8], cipher: &Cipher) -> Result<(), SegmentError> {
    let (_, refs, _) = read_footer(buf)?;
    Blocks::new(buf, refs, cipher)?
        .read(COL_TS, "timestamp")
        .map(|_| ())
}

/// Encodes events as a segment image (for benchmarks and tools).
pub fn encode_segment_events(
    events: &[Event],
    partition_start: Micros,
    partition_len_us: i64,
) -> Vec<u8> {
    let mut cols = Columns::default();
    for e in events {
        cols.push(e);
    }
    encode(&cols, partition_start, partition_len_us, &Cipher::off())
}

/// Decodes a whole segment image into columns, checking every checksum and
/// every column, and returns what its footer says (for tools and benchmarks:
/// reads decode the same way).
pub fn check_segment(buf: &[u8]) -> Result<SegmentMeta, SegmentError> {
    decode(buf, true, &Cipher::off()).map(|(meta, _)| meta)
}

/// Decodes a segment image into events in stored order.
pub fn decode_segment_events(buf: &[u8]) -> Result<Vec<Event>, SegmentError> {
    let (_, cols) = decode(buf, true, &Cipher::off())?;
    Ok((0..cols.len()).map(|i| cols.event(i)).collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use proptest::prelude::*;

    fn arb_event() -> impl Strategy<Value = Event> {
        (
            prop_oneof![
                "[a-z0-9-]{1,40}",
                "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
            ],
            0i64..4_000_000_000_000_000,
            "[a-z]{0,6}",
            prop::sample::select(vec!["GET /a", "POST /b/{id}", "/c", "DELETE /d"]),
            100u16..600,
            0u64..100_000_000,
            // Mostly the method the endpoint names, as ingest sets it; now
            // and then another (the column keeps a dictionary then).
            prop::bool::weighted(0.05),
        )
            .prop_map(|(rid, ts, user, ep, status, lat, other_method)| Event {
                request_id: rid,
                timestamp: Micros::new(ts),
                user_id: user,
                endpoint: ep.to_owned(),
                method: if other_method {
                    "PATCH".to_owned()
                } else {
                    method_from_endpoint(ep).unwrap_or("").to_owned()
                },
                status_code: status,
                latency_us: lat,
            })
    }

    fn sorted(mut v: Vec<Event>) -> Vec<Event> {
        v.sort_by(|a, b| {
            a.timestamp
                .cmp(&b.timestamp)
                .then_with(|| a.request_id.cmp(&b.request_id))
        });
        v
    }

    proptest! {
        /// A segment's dictionaries say exactly which users, endpoints and
        /// methods its rows have (a point filter skips it on their word).
        #[test]
        fn dictionaries_hold_exactly_the_values_of_the_rows(
            events in prop::collection::vec(arb_event(), 0..60),
            probe in "[a-z]{0,6}",
        ) {
            let img = encode_segment_events(&events, Micros::new(0), 86_400_000_000);
            for (column, value_of) in [
                (DictColumnId::UserId, (|e: &Event| e.user_id.clone()) as fn(&Event) -> String),
                (DictColumnId::Endpoint, |e: &Event| e.endpoint.clone()),
                (DictColumnId::Method, |e: &Event| e.method.clone()),
            ] {
                for e in &events {
                    prop_assert!(dictionary_holds(&img, column, &value_of(e), &Cipher::off()).unwrap());
                }
                let anywhere = events.iter().any(|e| value_of(e) == probe);
                prop_assert_eq!(dictionary_holds(&img, column, &probe, &Cipher::off()).unwrap(), anywhere);
            }
        }

        #[test]
        fn round_trips_sorted(events in prop::collection::vec(arb_event(), 0..200)) {
            let img = encode_segment_events(&events, Micros::new(0), 86_400_000_000);
            let back = decode_segment_events(&img).unwrap();
            let meta = read_meta(&img).unwrap();
            prop_assert_eq!(meta.rows, events.len() as u64);
            prop_assert_eq!(check_segment(&img), Ok(meta));
            // Left out, the request ids are all that differs.
            let (_, without) = decode(&img, false, &Cipher::off()).unwrap();
            prop_assert!(without.request_id.len() == 0);
            prop_assert!(events.is_empty() || !without.has_request_ids());
            let (_, with) = decode(&img, true, &Cipher::off()).unwrap();
            prop_assert!(with.has_request_ids());
            let rows = |c: &Columns| -> Vec<_> {
                (0..c.len())
                    .map(|i| (c.ts[i], c.user_id.get(i).to_owned(), c.endpoint.get(i).to_owned(), c.method.get(i).to_owned(), c.status[i], c.latency_us[i]))
                    .collect()
            };
            prop_assert_eq!(rows(&without), rows(&with));
            // A stable sort keeps equal keys in arrival order, as the encoder does.
            prop_assert_eq!(&back, &sorted(events.clone()));
            // Version 1 (every request id as text), which earlier nodes wrote, reads the same.
            let mut cols = Columns::default();
            for e in &events {
                cols.push(e);
            }
            let v1 = encode_as(&[&cols], Micros::new(0), 86_400_000_000, &Cipher::off(), 1);
            prop_assert_eq!(decode_segment_events(&v1).unwrap(), back);
        }

        /// Rows in several parts (a memtable's chunks) make the very file
        /// that the same rows in one set of columns make.
        #[test]
        fn parts_encode_as_their_rows_in_one(
            events in prop::collection::vec(arb_event(), 0..200),
            cuts in prop::collection::vec(0usize..200, 0..4),
        ) {
            let mut whole = Columns::default();
            events.iter().for_each(|e| { whole.push(e); });
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(events.len())).collect();
            cuts.sort_unstable();
            let mut parts = Vec::new();
            let mut from = 0;
            for to in cuts.into_iter().chain([events.len()]) {
                let mut part = Columns::default();
                events[from..to].iter().for_each(|e| { part.push(e); });
                parts.push(part);
                from = to;
            }
            let refs: Vec<&Columns> = parts.iter().collect();
            let (start, len, off) = (Micros::new(0), 86_400_000_000, Cipher::off());
            prop_assert_eq!(encode_parts(&refs, start, len, &off), encode(&whole, start, len, &off));
        }

        #[test]
        fn every_truncation_and_every_byte_flip_is_detected(
            events in prop::collection::vec(arb_event(), 1..30),
            flip in 1u8..=255,
        ) {
            let img = encode_segment_events(&events, Micros::new(0), 86_400_000_000);
            for len in 0..img.len() {
                prop_assert!(check_segment(&img[..len]).is_err(), "truncation to {} accepted", len);
            }
            for at in 0..img.len() {
                let mut bad = img.clone();
                bad[at] ^= flip;
                prop_assert!(check_segment(&bad).is_err(), "flip at {} of {} accepted", at, img.len());
                prop_assert!(decode(&bad, false, &Cipher::off()).is_err(), "flip at {} of {} accepted without request ids", at, img.len());
            }
        }
    }

    fn cipher(spec: &str) -> Cipher {
        Cipher::new(toplog_crypt::Keyring::from_env_value(spec).unwrap())
    }

    #[test]
    fn rows_that_compress_to_less_than_a_byte_each_read_back() {
        let same = Event {
            request_id: "retry".into(),
            timestamp: Micros::new(1_700_000_000_000_000),
            user_id: "u".into(),
            endpoint: "GET /a".into(),
            method: "GET".into(),
            status_code: 200,
            latency_us: 0,
        };
        let events = vec![same; 20_000];
        let img = encode_segment_events(&events, Micros::new(0), 86_400_000_000);
        assert!(img.len() < events.len(), "{} bytes", img.len());
        assert_eq!(decode_segment_events(&img).unwrap(), events);
    }

    #[test]
    fn an_encrypted_segment_seals_every_block_and_opens_only_with_its_key() {
        let events: Vec<Event> = (0..200)
            .map(|i| Event {
                request_id: format!("req-needle-{i}"),
                timestamp: Micros::new(1_000_000 + i),
                user_id: format!("needle-user-{}", i % 7),
                endpoint: format!("/secret-endpoint/{}", i % 3),
                method: "GET".into(),
                status_code: 200,
                latency_us: 1_000 + i as u64,
            })
            .collect();
        let mut cols = Columns::default();
        for e in &events {
            cols.push(e);
        }
        let k1 = cipher(&format!("k1:{}", "a1".repeat(32)));
        let img = encode(&cols, Micros::new(0), 86_400_000_000, &k1);
        for needle in ["req-needle", "needle-user", "secret-endpoint"] {
            assert!(
                !img.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{needle}"
            );
        }
        assert_eq!(key_use(&img).unwrap(), KeyUse::Key("k1".into()));
        // The footer stays plain: start-up reads it without a key.
        assert_eq!(read_meta(&img).unwrap().rows, 200);
        let (_, back) = decode(&img, true, &k1).unwrap();
        assert_eq!(
            (0..back.len()).map(|i| back.event(i)).collect::<Vec<_>>(),
            sorted(events)
        );
        assert!(dictionary_holds(&img, DictColumnId::UserId, "needle-user-3", &k1).unwrap());
        check_key(&img, &k1).unwrap();
        // Rotated, the old key still listed: it reads.
        let rotated = cipher(&format!("k2:{},k1:{}", "b2".repeat(32), "a1".repeat(32)));
        assert!(decode(&img, false, &rotated).is_ok());
        for (other, want) in [
            (Cipher::off(), "no encryption key is configured"),
            (cipher(&format!("k2:{}", "b2".repeat(32))), "does not list"),
            (
                cipher(&format!("k1:{}", "c3".repeat(32))),
                "does not decrypt it",
            ),
        ] {
            let err = check_key(&img, &other).unwrap_err().to_string();
            assert!(
                err.starts_with("column `timestamp`: ") && err.contains(want),
                "{err}"
            );
            assert!(decode(&img, false, &other).is_err());
        }
    }
}
