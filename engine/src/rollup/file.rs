//! The rollup file codec. Version 5: a header (magic, version, lengths,
//! CRC32C of the body), then the key names in per-dimension tables and the
//! buckets in blocks of an hour (the minute buckets of one hour, or one hour
//! or day bucket), each its own zstd frame (`streams.rs`), and an index of
//! the blocks last, so that a reader can decode the one block a query
//! reaches ([`BlockIndex`]). Version 4 (each cell in full) is still read by
//! block; versions 2 (a name in every cell) and 3 (one zstd frame for all)
//! whole.

use std::collections::{BTreeMap, HashMap};

use super::buckets::{Bucket, Rollups};
use super::dimension::{Dimension, Granularity};
use super::full_cells::{decode_buckets, put_bucket};
use super::streams::{Streams, class_endpoints, decode_streams};
use crate::codec::{CodecError, Reader, put_bytes, put_varint};
use crate::keys::{KeyId, Keys};

const FILE_MAGIC: &[u8; 8] = b"TPLGCUB\0";
/// zstd level of a flush's rollup file: written on the ingest path, read at
/// start-up only, and folded into day files by the next maintenance pass, so
/// it is compressed fast (level 3 took a tenth of ingest's CPU).
pub(crate) const FLUSH_FILE_LEVEL: i32 = 1;
/// zstd level of the day files maintenance keeps for a year.
pub(crate) const TIER_FILE_LEVEL: i32 = 3;
/// Version 5 writes a block's cells in their packed form, in streams by
/// kind, and an endpoint x class cell that equals its endpoint's as a flag;
/// version 4 (read, no longer written) compresses the buckets in blocks with
/// an index, each cell in full; version 3 in one frame after the tables;
/// version 2 named keys in every cell.
const FILE_VERSION: u32 = 5;
/// Bytes of a rollup file's header.
const FILE_HEADER: usize = 36;
/// Largest decompressed size a file or block may claim.
const MAX_RAW: u64 = 1 << 32;
const HOUR_US: i64 = 3_600_000_000;

/// Per dimension, key id -> position in the file's name table (`ABSENT` if unused).
pub(super) type Positions = [Vec<u32>; 5];
pub(super) const ABSENT: u32 = u32::MAX;

impl Rollups {
    /// Where each key the cells use goes in its dimension's name table: the
    /// tables list them in key id order, so nothing is sorted by name.
    pub(super) fn key_positions(&self) -> Positions {
        let mut positions: Positions = Default::default();
        for level in &self.levels {
            for bucket in level.values() {
                for (cube, pos) in bucket.cubes.iter().zip(&mut positions) {
                    cube.each_id(|id| {
                        let id = id as usize;
                        if id >= pos.len() {
                            pos.resize(id + 1, ABSENT);
                        }
                        pos[id] = 0;
                    });
                }
            }
        }
        for pos in &mut positions {
            for (next, p) in pos.iter_mut().filter(|p| **p != ABSENT).enumerate() {
                *p = next as u32;
            }
        }
        positions
    }

    /// Each dimension's table of the key names the cells use: a name is
    /// written once per file, not once per bucket.
    pub(super) fn put_tables(&self, positions: &Positions, out: &mut Vec<u8>) {
        for (d, pos) in Dimension::ALL.iter().zip(positions) {
            let ids: Vec<KeyId> = (pos.iter().enumerate())
                .filter(|(_, p)| **p != ABSENT)
                .map(|(id, _)| id as KeyId)
                .collect();
            put_varint(out, ids.len() as u64);
            Keys::of(*d).with_names(|name| {
                for id in &ids {
                    put_bytes(out, name(*id).as_bytes());
                }
            });
        }
    }

    /// Every bucket with its granularity and start, minute buckets first.
    pub(super) fn buckets_in_file_order(
        &self,
    ) -> impl Iterator<Item = (Granularity, i64, &Bucket)> {
        [Granularity::Minute, Granularity::Hour, Granularity::Day]
            .into_iter()
            .zip(&self.levels)
            .flat_map(|(g, level)| level.iter().map(move |(start, b)| (g, *start, &**b)))
    }

    /// A rollup file, version 5: header, the name tables and the buckets in
    /// blocks of an hour, each a zstd frame of [`Streams`], then the index of
    /// the blocks.
    ///
    /// | part | bytes |
    /// |---|---|
    /// | header | magic `TPLGCUB\0` (8), version u32 = 5, reserved u32 = 0, index_len u64, body_len u64, crc32c u32 of the two lengths then the body |
    /// | body | the tables' frame, each block's frame, then the index (`index_len` bytes, not compressed) |
    ///
    /// `level` is zstd's: [`FLUSH_FILE_LEVEL`] or [`TIER_FILE_LEVEL`].
    pub(crate) fn to_file(&self, level: i32) -> std::io::Result<Vec<u8>> {
        self.to_file_of_version(level, FILE_VERSION)
    }

    /// [`Rollups::to_file`] in `version`, 5 or 4 (written only by tests that
    /// check that files of version 4 still read).
    fn to_file_of_version(&self, level: i32, version: u32) -> std::io::Result<Vec<u8>> {
        let mut zstd = zstd::bulk::Compressor::new(level)?;
        let positions = self.key_positions();
        let class_endpoint = class_endpoints(&positions);
        let mut out = vec![0u8; FILE_HEADER];
        let (mut raw, mut index) = (Vec::new(), Vec::new());
        let mut streams = Streams::default();
        self.put_tables(&positions, &mut raw);
        let frame = zstd.compress(&raw)?;
        put_varint(&mut index, frame.len() as u64);
        put_varint(&mut index, raw.len() as u64);
        out.extend_from_slice(&frame);
        let blocks = self.blocks();
        put_varint(&mut index, blocks.len() as u64);
        for ((g, block), buckets) in blocks {
            raw.clear();
            if version >= 5 {
                streams.clear();
                put_varint(&mut streams.shape, buckets.len() as u64);
                for (start, bucket) in buckets {
                    streams.put_bucket(g, start, bucket, &positions, &class_endpoint);
                }
                streams.finish(&mut raw);
            } else {
                put_varint(&mut raw, buckets.len() as u64);
                for (start, bucket) in buckets {
                    put_bucket(&mut raw, g, start, bucket, &positions);
                }
            }
            let frame = zstd.compress(&raw)?;
            index.push(g.index() as u8);
            index.extend_from_slice(&block.to_le_bytes());
            put_varint(&mut index, frame.len() as u64);
            put_varint(&mut index, raw.len() as u64);
            out.extend_from_slice(&frame);
        }
        out.extend_from_slice(&index);
        let mut header = Vec::with_capacity(FILE_HEADER);
        header.extend_from_slice(FILE_MAGIC);
        header.extend_from_slice(&version.to_le_bytes());
        header.extend_from_slice(&0u32.to_le_bytes());
        header.extend_from_slice(&(index.len() as u64).to_le_bytes());
        header.extend_from_slice(&((out.len() - FILE_HEADER) as u64).to_le_bytes());
        let crc = checksum(&header[16..32], &out[FILE_HEADER..]);
        header.extend_from_slice(&crc.to_le_bytes());
        out[..FILE_HEADER].copy_from_slice(&header);
        Ok(out)
    }

    /// The buckets grouped in blocks: by granularity and the hour (minute
    /// buckets) or bucket (hour and day) they start in, in file order.
    #[allow(clippy::type_complexity)]
    fn blocks(&self) -> BTreeMap<(Granularity, i64), Vec<(i64, &Bucket)>> {
        let mut blocks: BTreeMap<(Granularity, i64), Vec<(i64, &Bucket)>> = BTreeMap::new();
        for (g, start, bucket) in self.buckets_in_file_order() {
            blocks
                .entry((g, block_of(g, start)))
                .or_default()
                .push((start, bucket));
        }
        blocks
    }

    /// Every cell of a rollup file of any version read.
    pub(crate) fn from_file(buf: &[u8], budget: usize) -> Result<Self, CodecError> {
        Self::from_checked(&check_file(buf)?, budget)
    }

    /// [`Rollups::from_file`] of a file already checked.
    pub(crate) fn from_checked(file: &CheckedFile<'_>, budget: usize) -> Result<Self, CodecError> {
        match open(file)? {
            Opened::Whole { version, raw } => Self::decode(&raw, version, budget),
            Opened::Blocks(index) => {
                let mut out = Rollups::new(budget);
                for b in &index.blocks {
                    let part = index.decode_block(file, b, budget)?;
                    for (level, buckets) in out.levels.iter_mut().zip(part.levels) {
                        for (start, bucket) in buckets {
                            if level.insert(start, bucket).is_some() {
                                return Err(CodecError("bucket listed twice".into()));
                            }
                        }
                    }
                }
                Ok(out)
            }
        }
    }
}

/// The start of the block holding the bucket of `g` at `start`.
fn block_of(g: Granularity, start: i64) -> i64 {
    match g {
        Granularity::Minute => start.div_euclid(HOUR_US) * HOUR_US,
        _ => start,
    }
}

/// What a version 4 file's blocks span from their start.
fn block_len(g: Granularity) -> i64 {
    match g {
        Granularity::Minute => HOUR_US,
        _ => g.len_us(),
    }
}

/// A file's contents once its header and checksum are checked.
enum Opened {
    /// Versions 2 and 3: the one frame, inflated.
    Whole {
        version: u32,
        raw: Vec<u8>,
    },
    Blocks(BlockIndex),
}

/// A rollup file whose header and checksum are right: what its header says,
/// and its body. Reading its index and its blocks needs no second check.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CheckedFile<'a> {
    version: u32,
    /// Version 4: the index's length; earlier: the raw length of the one frame.
    first_len: u64,
    body: &'a [u8],
}

/// Checks a rollup file's header and checksum, without decoding it.
pub(crate) fn check_file(buf: &[u8]) -> Result<CheckedFile<'_>, CodecError> {
    let bad = |m: &str| CodecError(m.to_owned());
    if buf.len() < FILE_HEADER || &buf[..8] != FILE_MAGIC {
        return Err(bad("not a rollup file (bad magic)"));
    }
    let mut r = Reader::new(&buf[8..FILE_HEADER]);
    let version = r.u32()?;
    if !(2..=FILE_VERSION).contains(&version) || r.u32()? != 0 {
        return Err(bad("unsupported rollup file version"));
    }
    let (first_len, body_len, crc) = (r.u64()?, r.u64()?, r.u32()?);
    let body = &buf[FILE_HEADER..];
    let sum = match version {
        4.. => checksum(&buf[16..32], body),
        _ => crc32c::crc32c(body),
    };
    if body.len() as u64 != body_len || sum != crc {
        return Err(bad("checksum or length mismatch"));
    }
    Ok(CheckedFile {
        version,
        first_len,
        body,
    })
}

/// A checked file's one frame inflated (versions 2 and 3), or its index and
/// name tables (version 4).
fn open(file: &CheckedFile<'_>) -> Result<Opened, CodecError> {
    let bad = |m: &str| CodecError(m.to_owned());
    let CheckedFile {
        version,
        first_len: raw_or_index_len,
        body,
    } = *file;
    if version < 4 {
        if raw_or_index_len > MAX_RAW {
            return Err(bad("raw length too large"));
        }
        let raw = inflate(body, raw_or_index_len)?;
        return Ok(Opened::Whole { version, raw });
    }
    let index_at = (body.len() as u64)
        .checked_sub(raw_or_index_len)
        .ok_or_else(|| bad("index longer than the file"))? as usize;
    let mut r = Reader::new(&body[index_at..]);
    let tables_frame = (r.varint()?, r.varint()?);
    // An entry takes at least 11 bytes: no more entries than that allows.
    let n = r.len(r.remaining() / 11)?;
    let mut blocks: Vec<Block> = Vec::with_capacity(n);
    let mut at = tables_frame.0;
    for _ in 0..n {
        let level = usize::from(r.u8()?);
        let g = *(Granularity::ALL.iter())
            .find(|g| g.index() == level)
            .ok_or_else(|| bad("unknown granularity"))?;
        let start = r.i64()?;
        let (comp, raw) = (r.varint()?, r.varint()?);
        // In file order: granularity (minute, hour, day), then start; no block twice.
        if blocks
            .last()
            .is_some_and(|b| (b.g.index(), b.start) >= (g.index(), start))
        {
            return Err(bad("blocks out of order in the index"));
        }
        blocks.push(Block {
            g,
            start,
            at,
            comp,
            raw,
        });
        at = at
            .checked_add(comp)
            .ok_or_else(|| bad("block past the index"))?;
    }
    if at != index_at as u64 || !r.is_empty() {
        return Err(bad("the blocks and the index disagree"));
    }
    let raw = inflate(frame(body, 0, tables_frame.0)?, tables_frame.1)?;
    let mut r = Reader::new(&raw);
    let tables = decode_tables(&mut r, raw.len())?;
    if !r.is_empty() {
        return Err(bad("trailing bytes after the name tables"));
    }
    Ok(Opened::Blocks(BlockIndex { tables, blocks }))
}

/// A version 4 file's checksum: CRC32C of its header's lengths, then of its body.
fn checksum(lengths: &[u8], body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(lengths), body)
}

fn frame(body: &[u8], at: u64, len: u64) -> Result<&[u8], CodecError> {
    let end = at.checked_add(len).filter(|e| *e <= body.len() as u64);
    end.map(|end| &body[at as usize..end as usize])
        .ok_or_else(|| CodecError("block past the file's end".into()))
}

fn inflate(comp: &[u8], raw_len: u64) -> Result<Vec<u8>, CodecError> {
    // A frame that says its size must say this one, before room is made for it.
    let said = zstd::zstd_safe::get_frame_content_size(comp).ok().flatten();
    if raw_len > MAX_RAW || said.is_some_and(|n| n != raw_len) {
        return Err(CodecError("raw length too large or not the frame's".into()));
    }
    let raw =
        zstd::bulk::decompress(comp, raw_len as usize).map_err(|e| CodecError(e.to_string()))?;
    if raw.len() as u64 != raw_len {
        return Err(CodecError("wrong decompressed length".into()));
    }
    Ok(raw)
}

/// One block of a version 4 file: where its frame is in the body.
#[derive(Debug, Clone)]
struct Block {
    g: Granularity,
    start: i64,
    at: u64,
    comp: u64,
    raw: u64,
}

/// What reading single blocks of a version 4 file needs besides the file:
/// its name tables (interned) and the index of its blocks.
#[derive(Debug)]
pub(crate) struct BlockIndex {
    tables: Tables,
    blocks: Vec<Block>,
}

impl BlockIndex {
    /// The index of `file`; `None` for a file of version 2 or 3 (one
    /// frame: read it whole).
    pub(crate) fn of(file: &CheckedFile<'_>) -> Result<Option<Self>, CodecError> {
        match open(file)? {
            Opened::Whole { .. } => Ok(None),
            Opened::Blocks(index) => Ok(Some(index)),
        }
    }

    /// The starts of the blocks of `g` that may hold buckets starting in `[from, to)`.
    pub(crate) fn reaching(&self, g: Granularity, from: i64, to: i64) -> Vec<i64> {
        (self.blocks.iter())
            .filter(|b| b.g == g && b.start < to && b.start.saturating_add(block_len(g)) > from)
            .map(|b| b.start)
            .collect()
    }

    /// The buckets of the block of `g` at `start` in `file` (the file this
    /// index was read from).
    pub(crate) fn read(
        &self,
        file: &CheckedFile<'_>,
        g: Granularity,
        start: i64,
        budget: usize,
    ) -> Result<Rollups, CodecError> {
        let b = (self.blocks.iter())
            .find(|b| b.g == g && b.start == start)
            .ok_or_else(|| CodecError("no such block".into()))?;
        if file.version < 4 {
            return Err(CodecError("not a file with blocks".into()));
        }
        self.decode_block(file, b, budget)
    }

    /// The buckets of block `b` of `file`, each checked to lie in it.
    fn decode_block(
        &self,
        file: &CheckedFile<'_>,
        b: &Block,
        budget: usize,
    ) -> Result<Rollups, CodecError> {
        let raw = inflate(frame(file.body, b.at, b.comp)?, b.raw)?;
        let mut out = Rollups::new(budget);
        if file.version >= 5 {
            decode_streams(&raw, &self.tables, &mut out)?;
        } else {
            let mut r = Reader::new(&raw);
            decode_buckets(&mut r, raw.len(), Some(&self.tables.ids), &mut out)?;
        }
        let end = b.start.saturating_add(block_len(b.g));
        let inside = (Granularity::ALL.iter()).all(|g| {
            (out.levels[g.index()].keys()).all(|s| *g == b.g && (b.start..end).contains(s))
        });
        if !inside {
            return Err(CodecError("a bucket outside its block".into()));
        }
        Ok(out)
    }

    /// Bytes it holds.
    pub(crate) fn heap_bytes(&self) -> usize {
        (self.tables.ids.iter().map(Vec::len).sum::<usize>() + self.tables.class_endpoint.len()) * 4
            + self.blocks.len() * std::mem::size_of::<Block>()
    }
}

/// A file's name tables, interned.
#[derive(Debug, Default)]
pub(super) struct Tables {
    /// Per dimension, the key at each position.
    pub(super) ids: [Vec<KeyId>; 5],
    /// Per position in the endpoint x class table, the position of its
    /// endpoint in the endpoint table (`ABSENT` if that table lacks it).
    pub(super) class_endpoint: Vec<u32>,
}

/// Each dimension's name table, interned.
pub(super) fn decode_tables(r: &mut Reader<'_>, limit: usize) -> Result<Tables, CodecError> {
    let mut tables = Tables::default();
    let mut endpoints: HashMap<&str, u32> = HashMap::new();
    for (d, table) in Dimension::ALL.iter().zip(&mut tables.ids) {
        let keys = Keys::of(*d);
        let n = r.len(limit)?;
        table.reserve(n);
        for at in 0..n {
            let name = r.str()?;
            table.push(keys.intern(name));
            match d {
                Dimension::Endpoint => {
                    endpoints.insert(name, at as u32);
                }
                Dimension::EndpointStatusClass => tables.class_endpoint.push(
                    Dimension::split_endpoint_class_key(name)
                        .and_then(|(_, e)| endpoints.get(e).copied())
                        .unwrap_or(ABSENT),
                ),
                _ => {}
            }
        }
        let mut sorted = table.clone();
        sorted.sort_unstable();
        if sorted.windows(2).any(|w| w[0] == w[1]) {
            return Err(CodecError("key name listed twice".into()));
        }
    }
    Ok(tables)
}

pub(super) fn put_bucket_start(out: &mut Vec<u8>, g: Granularity, start: i64) {
    out.push(g.index() as u8);
    out.extend_from_slice(&start.to_le_bytes());
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use toplog_types::{Event, Micros};

    /// A file of version 2 or 3, as earlier nodes wrote them: the header,
    /// then `raw` in one zstd frame.
    fn one_frame_file(version: u32, raw: &[u8]) -> Vec<u8> {
        let block = zstd::bulk::compress(raw, 3).unwrap();
        let mut file = FILE_MAGIC.to_vec();
        file.extend_from_slice(&version.to_le_bytes());
        file.extend_from_slice(&0u32.to_le_bytes());
        file.extend_from_slice(&(raw.len() as u64).to_le_bytes());
        file.extend_from_slice(&(block.len() as u64).to_le_bytes());
        file.extend_from_slice(&crc32c::crc32c(&block).to_le_bytes());
        file.extend_from_slice(&block);
        file
    }

    #[test]
    fn a_block_read_alone_holds_the_buckets_of_its_hour() {
        // Three hours of minutes, spread over two days.
        let t0 = 1_767_225_600_000_000 - 2 * HOUR_US;
        let mut all = Rollups::default();
        // One, two or three requests a minute: cells of two or three
        // requests are written without their sketches (user cells have
        // none), which are rebuilt from their latencies when read.
        for (i, j) in (0..180i64).flat_map(|i| (0..1 + i % 3).map(move |j| (i, j))) {
            all.add(&Event {
                request_id: format!("r{i}-{j}"),
                timestamp: Micros::new(t0 + i * 60_000_000 + 7 + j),
                user_id: format!("u{}", i % 11),
                endpoint: format!("GET /e{}", i % 4),
                method: "GET".into(),
                // Endpoint 3 has requests of two classes in an hour (and
                // with two or three a minute, in a minute) now and then:
                // its endpoint x class cells are not its endpoint's.
                status_code: if (i + j) % 12 == 3 { 503 } else { 200 },
                latency_us: 1000 + (i * 37 + j * 1000) as u64,
            });
        }
        let file = all.to_file(TIER_FILE_LEVEL).unwrap();
        let checked = check_file(&file).unwrap();
        let index = BlockIndex::of(&checked).unwrap().unwrap();
        let g = Granularity::Minute;
        // Minutes 30 to 90: the first two hours' blocks.
        let (from, to) = (t0 + 30 * 60_000_000, t0 + 90 * 60_000_000);
        let starts = index.reaching(g, from, to);
        assert_eq!(starts, vec![t0, t0 + HOUR_US]);
        let mut read = Rollups::default();
        for s in &starts {
            read.merge(&index.read(&checked, g, *s, 100).unwrap());
        }
        let want = all.slice(g, Micros::new(t0), Micros::new(t0 + 2 * HOUR_US));
        assert_eq!(read.encode(), want.encode());
        // The endpoint x class cells that are their endpoint's are a flag each.
        let v4 = all.to_file_of_version(TIER_FILE_LEVEL, 4).unwrap();
        assert!(
            file.len() < v4.len() * 3 / 4,
            "{} vs {}",
            file.len(),
            v4.len()
        );
        assert_eq!(index.reaching(Granularity::Day, from, to).len(), 1);
        assert!(index.read(&checked, g, t0 + 1, 100).is_err());
        let mut bad = file.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(check_file(&bad).is_err());
        // An index whose checksum is right but whose blocks are wrong: one
        // listed twice is refused on opening, one whose buckets lie outside
        // the hour it names is refused when read.
        let twice = with_block_start(&file, 2, t0 + HOUR_US);
        assert!(BlockIndex::of(&check_file(&twice).unwrap()).is_err());
        let moved = with_block_start(&file, 2, t0 + 5 * HOUR_US);
        let moved = check_file(&moved).unwrap();
        let index = BlockIndex::of(&moved).unwrap().unwrap();
        let err = index.read(&moved, g, t0 + 5 * HOUR_US, 100).unwrap_err();
        assert!(err.0.contains("outside its block"), "{err:?}");
    }

    /// `file` with block `i`'s start changed to `start` in its index, and
    /// its checksum made right again.
    fn with_block_start(file: &[u8], i: usize, start: i64) -> Vec<u8> {
        let mut out = file.to_vec();
        let index_len = u64::from_le_bytes(out[16..24].try_into().unwrap()) as usize;
        let index_at = out.len() - index_len;
        let mut r = Reader::new(&out[index_at..]);
        r.varint().unwrap();
        r.varint().unwrap();
        r.varint().unwrap();
        for _ in 0..i {
            r.u8().unwrap();
            r.i64().unwrap();
            r.varint().unwrap();
            r.varint().unwrap();
        }
        let at = index_at + r.position() + 1;
        out[at..at + 8].copy_from_slice(&start.to_le_bytes());
        let crc = checksum(&out[16..32], &out[FILE_HEADER..]);
        out[32..36].copy_from_slice(&crc.to_le_bytes());
        out
    }

    #[test]
    fn encoding_round_trips_and_merge_equals_adding() {
        // Small on purpose: every truncation and every byte flip is decoded.
        let events: Vec<Event> = (0..24u64)
            .map(|i| Event {
                request_id: format!("r{i}"),
                timestamp: Micros::new(1_767_225_600_000_000 + i as i64 * 7_000_000_000),
                user_id: format!("u{}", i % 7),
                endpoint: format!("GET /e{}", i % 5),
                method: "GET".into(),
                status_code: [200, 404, 503][(i % 3) as usize],
                latency_us: i * 997 % 100_000,
            })
            .collect();
        let (mut all, mut a, mut b) = (Rollups::default(), Rollups::default(), Rollups::default());
        for (i, e) in events.iter().enumerate() {
            all.add(e);
            if i % 2 == 0 { a.add(e) } else { b.add(e) }
        }
        let img = all.encode();
        let back = Rollups::decode(&img, 3, 100).map(|r| r.encode());
        assert_eq!(back.as_deref(), Ok(img.as_slice()));
        a.merge(&b);
        assert_eq!(a.encode(), img);
        for len in 0..img.len() {
            assert!(
                Rollups::decode(&img[..len], 3, 100).is_err(),
                "truncated to {len}"
            );
        }
        // A file of any version the node reads holds the same cells.
        let reads_back = |file: &[u8]| {
            let cells = Rollups::from_file(file, 100).map(|r| r.encode());
            assert_eq!(cells.as_deref(), Ok(img.as_slice()));
        };
        let file = all.to_file(TIER_FILE_LEVEL).unwrap();
        reads_back(&file);
        for at in 0..file.len() {
            let mut bad = file.clone();
            bad[at] ^= 0x21;
            assert!(Rollups::from_file(&bad, 100).is_err(), "flip at {at}");
        }
        // Files of version 2 (a name in every cell), which earlier nodes
        // wrote, load to the same cells.
        let v2 = all.encode_v2();
        assert_eq!(
            Rollups::decode(&v2, 2, 100).map(|r| r.encode()).as_deref(),
            Ok(img.as_slice())
        );
        for len in 0..v2.len() {
            assert!(
                Rollups::decode(&v2[..len], 2, 100).is_err(),
                "v2 cut at {len}"
            );
        }
        let v2_file = one_frame_file(2, &v2);
        reads_back(&v2_file);
        // Files of version 3 (one frame after the header), which earlier
        // nodes wrote, load to the same cells.
        let v3_file = one_frame_file(3, &img);
        reads_back(&v3_file);
        assert!(
            BlockIndex::of(&check_file(&v3_file).unwrap())
                .unwrap()
                .is_none()
        );
        // Files of version 4 (each cell in full, no copies of endpoint
        // cells), which earlier nodes wrote, load to the same cells.
        let v4_file = all.to_file_of_version(TIER_FILE_LEVEL, 4).unwrap();
        reads_back(&v4_file);
        // A version-3 table naming one key twice is refused.
        let mut twice = Vec::new();
        put_varint(&mut twice, 2);
        put_bytes(&mut twice, b"GET /twice");
        put_bytes(&mut twice, b"GET /twice");
        twice.extend_from_slice(&[0, 0, 0, 0, 0]);
        assert!(Rollups::decode(&twice, 3, 100).is_err());
    }
}
