//! The rollup file codec: a header (magic, version, lengths, CRC32C) and one
//! zstd block of the cells, key names in per-dimension tables first. Version 2
//! files (a name in every cell) are still read.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::buckets::{Bucket, Rollups};
use super::cell::Cell;
use super::cube::{Cells, Overflow};
use super::dimension::{Dimension, Granularity};
use super::packed::Packed;
use crate::codec::{CodecError, Reader, put_bytes, put_varint, unzigzag, zigzag};
use crate::keys::{KeyId, Keys};
use crate::sketch::LatencySketch;

const FILE_MAGIC: &[u8; 8] = b"TPLGCUB\0";
/// zstd level of a flush's rollup file: written on the ingest path, read at
/// start-up only, and folded into day files by the next maintenance pass, so
/// it is compressed fast (level 3 took a tenth of ingest's CPU).
pub(crate) const FLUSH_FILE_LEVEL: i32 = 1;
/// zstd level of the day files maintenance keeps for a year.
pub(crate) const TIER_FILE_LEVEL: i32 = 3;
/// Version 3 names keys in per-dimension tables; version 2 (read, no longer
/// written) named them in every cell.
const FILE_VERSION: u32 = 3;
/// Bytes of a rollup file's header.
const FILE_HEADER: usize = 36;

impl Rollups {
    /// The cells as bytes (see docs/format.md, "Rollup file"): the same
    /// rollups always encode the same way within a process.
    #[cfg(test)]
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = self.encode_with(|piece| {
            out.extend_from_slice(piece);
            Ok(())
        });
        out
    }

    /// The encoding, handed to `emit` a cube at a time, so a large one is
    /// never held whole: first each dimension's table of the key names the
    /// cells use, in key id order, then every cube's cells in the same order,
    /// each naming its key by a gap in the table. A name is written once per
    /// file, not once per bucket, and nothing is sorted by name.
    fn encode_with(
        &self,
        mut emit: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        const ABSENT: u32 = u32::MAX;
        let mut out = Vec::new();
        // Per dimension: key id -> position in the table (ABSENT if unused).
        let mut positions: [Vec<u32>; 5] = Default::default();
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
        for (d, pos) in Dimension::ALL.iter().zip(&mut positions) {
            let mut table = Vec::new();
            for (id, p) in pos.iter_mut().enumerate() {
                if *p != ABSENT {
                    *p = table.len() as u32;
                    table.push(id as KeyId);
                }
            }
            put_varint(&mut out, table.len() as u64);
            Keys::of(*d).with_names(|name| {
                for id in &table {
                    put_bytes(&mut out, name(*id).as_bytes());
                }
            });
            emit(&out)?;
            out.clear();
        }
        self.put_bucket_count(&mut out);
        let mut open: Vec<(KeyId, &Cell)> = Vec::new();
        for (g, start, bucket) in self.buckets_in_file_order() {
            put_bucket_start(&mut out, g, start);
            for (cube, pos) in bucket.cubes.iter().zip(&positions) {
                put_varint(&mut out, cube.len() as u64);
                let mut next = 0;
                let mut put = |out: &mut Vec<u8>, id: KeyId, c: &Cell| {
                    let at = pos[id as usize];
                    put_varint(out, u64::from(at - next));
                    next = at + 1;
                    put_cell(out, c);
                };
                match &cube.cells {
                    Cells::Packed(p) => p.each(true, |id, c| put(&mut out, id, c)),
                    Cells::Open(cells) => {
                        open.clear();
                        open.extend(cells.iter().map(|(id, c)| (*id, c)));
                        open.sort_unstable_by_key(|(id, _)| *id);
                        for (id, c) in &open {
                            put(&mut out, *id, c);
                        }
                    }
                }
                put_overflow(&mut out, cube.overflow.as_deref());
                emit(&out)?;
                out.clear();
            }
        }
        emit(&out)
    }

    fn put_bucket_count(&self, out: &mut Vec<u8>) {
        let buckets: usize = self.levels.iter().map(BTreeMap::len).sum();
        put_varint(out, buckets as u64);
    }

    /// Every bucket with its granularity and start, minute buckets first.
    fn buckets_in_file_order(&self) -> impl Iterator<Item = (Granularity, i64, &Bucket)> {
        [Granularity::Minute, Granularity::Hour, Granularity::Day]
            .into_iter()
            .zip(&self.levels)
            .flat_map(|(g, level)| level.iter().map(move |(start, b)| (g, *start, &**b)))
    }

    /// [`Rollups::encode`] in version 2 of the format, which the node wrote
    /// before: tests check such files still load.
    #[cfg(test)]
    pub(crate) fn encode_v2(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.put_bucket_count(&mut out);
        for (g, start, bucket) in self.buckets_in_file_order() {
            put_bucket_start(&mut out, g, start);
            for cube in &bucket.cubes {
                let mut cells: Vec<(&str, Cell)> = Vec::with_capacity(cube.len());
                cube.cells(true, |k, c| cells.push((k, c.clone())));
                cells.sort_unstable_by(|a, b| a.0.cmp(b.0));
                put_varint(&mut out, cells.len() as u64);
                for (k, c) in &cells {
                    put_bytes(&mut out, k.as_bytes());
                    put_cell(&mut out, c);
                }
                put_overflow(&mut out, cube.overflow.as_deref());
            }
        }
        out
    }

    /// Rollups from the cells of a file of version `version` (2: each cell
    /// names its key; 3: the names come first, in tables, see [`Rollups::encode_with`]).
    pub(crate) fn decode(buf: &[u8], version: u32, budget: usize) -> Result<Self, CodecError> {
        let bad = |m: &str| CodecError(m.to_owned());
        let mut r = Reader::new(buf);
        let mut tables: [Vec<KeyId>; 5] = Default::default();
        if version >= 3 {
            for (d, table) in Dimension::ALL.iter().zip(&mut tables) {
                let keys = Keys::of(*d);
                let n = r.len(buf.len())?;
                table.reserve(n);
                for _ in 0..n {
                    table.push(keys.intern(r.str()?));
                }
                let mut sorted = table.clone();
                sorted.sort_unstable();
                if sorted.windows(2).any(|w| w[0] == w[1]) {
                    return Err(bad("key name listed twice"));
                }
            }
        }
        let mut out = Rollups::new(budget);
        let buckets = r.len(buf.len())?;
        for _ in 0..buckets {
            let level = usize::from(r.u8()?);
            if level > 2 {
                return Err(bad("unknown granularity"));
            }
            let start = r.i64()?;
            let mut bucket = Bucket::new();
            for (cube, table) in bucket.cubes.iter_mut().zip(&tables) {
                let keys = Keys::of(cube.dim);
                let n = r.len(buf.len())?;
                let mut cells = Vec::with_capacity(n);
                let mut next = 0u64;
                for _ in 0..n {
                    let key = if version >= 3 {
                        let at = next
                            .checked_add(r.varint()?)
                            .filter(|at| *at < table.len() as u64)
                            .ok_or_else(|| bad("key outside the name table"))?;
                        next = at + 1;
                        table[at as usize]
                    } else {
                        keys.intern(r.str()?)
                    };
                    cells.push((key, get_cell(&mut r, buf.len())?));
                }
                let packed = Packed::new(cells);
                if packed.ids.windows(2).any(|w| w[0] == w[1]) {
                    return Err(bad("key listed twice"));
                }
                cube.cells = Cells::Packed(packed);
                cube.overflow = match r.u8()? {
                    0 => None,
                    1 => Some(Box::new(Overflow {
                        floor: r.varint()?,
                        evicted: get_cell(&mut r, buf.len())?,
                    })),
                    _ => return Err(bad("bad overflow flag")),
                };
            }
            if out.levels[level].insert(start, Arc::new(bucket)).is_some() {
                return Err(bad("bucket listed twice"));
            }
        }
        if !r.is_empty() {
            return Err(bad("trailing bytes"));
        }
        Ok(out)
    }

    /// A rollup file: header, then the encoded cells as one zstd block.
    ///
    /// | part | bytes |
    /// |---|---|
    /// | header | magic `TPLGCUB\0` (8), version u32 = 2, reserved u32 = 0, raw_len u64, comp_len u64, crc32c u32 of the block |
    /// | block | zstd of [`Rollups::encode`] |
    ///
    /// `level` is zstd's: [`FLUSH_FILE_LEVEL`] or [`TIER_FILE_LEVEL`].
    pub(crate) fn to_file(&self, level: i32) -> std::io::Result<Vec<u8>> {
        use std::io::Write;
        // Compressed as it is encoded, after room for the header: the raw
        // encoding of a flush of a few days of history is hundreds of MiB.
        let mut zstd = zstd::stream::write::Encoder::new(vec![0u8; FILE_HEADER], level)?;
        let mut raw_len = 0u64;
        self.encode_with(|piece| {
            raw_len += piece.len() as u64;
            zstd.write_all(piece)
        })?;
        let mut out = zstd.finish()?;
        let comp = &out[FILE_HEADER..];
        let (comp_len, crc) = (comp.len() as u64, crc32c::crc32c(comp));
        let mut header = Vec::with_capacity(FILE_HEADER);
        header.extend_from_slice(FILE_MAGIC);
        header.extend_from_slice(&FILE_VERSION.to_le_bytes());
        header.extend_from_slice(&0u32.to_le_bytes());
        header.extend_from_slice(&raw_len.to_le_bytes());
        header.extend_from_slice(&comp_len.to_le_bytes());
        header.extend_from_slice(&crc.to_le_bytes());
        out[..FILE_HEADER].copy_from_slice(&header);
        Ok(out)
    }

    pub(crate) fn from_file(buf: &[u8], budget: usize) -> Result<Self, CodecError> {
        let bad = |m: &str| CodecError(m.to_owned());
        if buf.len() < FILE_HEADER || &buf[..8] != FILE_MAGIC {
            return Err(bad("not a rollup file (bad magic)"));
        }
        let mut r = Reader::new(&buf[8..FILE_HEADER]);
        let version = r.u32()?;
        if !(2..=FILE_VERSION).contains(&version) || r.u32()? != 0 {
            return Err(bad("unsupported rollup file version"));
        }
        let raw_len = usize::try_from(r.u64()?).map_err(|_| bad("raw length too large"))?;
        let comp_len = r.u64()?;
        let crc = r.u32()?;
        let comp = &buf[FILE_HEADER..];
        if comp.len() as u64 != comp_len || crc32c::crc32c(comp) != crc {
            return Err(bad("checksum or length mismatch"));
        }
        if raw_len > 1 << 32 {
            return Err(bad("raw length too large"));
        }
        let raw = zstd::bulk::decompress(comp, raw_len).map_err(|e| CodecError(e.to_string()))?;
        if raw.len() != raw_len {
            return Err(bad("wrong decompressed length"));
        }
        Self::decode(&raw, version, budget)
    }
}

fn put_bucket_start(out: &mut Vec<u8>, g: Granularity, start: i64) {
    out.push(g.index() as u8);
    out.extend_from_slice(&start.to_le_bytes());
}

/// A cube's overflow flag, and its floor and evicted cell if it overflowed.
fn put_overflow(out: &mut Vec<u8>, overflow: Option<&Overflow>) {
    match overflow {
        None => out.push(0),
        Some(o) => {
            out.push(1);
            put_varint(out, o.floor);
            put_cell(out, &o.evicted);
        }
    }
}

fn put_cell(out: &mut Vec<u8>, c: &Cell) {
    put_varint(out, c.count);
    for n in c.by_class {
        put_varint(out, n);
    }
    out.extend_from_slice(&c.latency_sum_us.to_le_bytes());
    put_varint(out, c.latency_min_us);
    put_varint(out, c.latency_max_us);
    put_varint(out, c.missed);
    match &c.sketch {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_varint(out, s.zeros());
            put_varint(out, s.bin_count() as u64);
            for (key, n) in s.bins() {
                put_varint(out, zigzag(i64::from(key)));
                put_varint(out, n);
            }
        }
    }
}

fn get_cell(r: &mut Reader<'_>, limit: usize) -> Result<Cell, CodecError> {
    let bad = |m: &str| CodecError(m.to_owned());
    let count = r.varint()?;
    let mut by_class = [0u64; 5];
    for c in &mut by_class {
        *c = r.varint()?;
    }
    let lo = r.u64()?;
    let hi = r.u64()?;
    let latency_sum_us = u128::from(lo) | (u128::from(hi) << 64);
    let latency_min_us = r.varint()?;
    let latency_max_us = r.varint()?;
    let missed = r.varint()?;
    let sketch = match r.u8()? {
        0 => None,
        1 => {
            let zeros = r.varint()?;
            let nbins = r.len(limit)?;
            let mut bins = Vec::with_capacity(nbins);
            for _ in 0..nbins {
                let key = i32::try_from(unzigzag(r.varint()?))
                    .map_err(|_| bad("sketch bin out of range"))?;
                bins.push((key, r.varint()?));
            }
            Some(
                LatencySketch::from_parts(zeros, bins)
                    .ok_or_else(|| bad("sketch bins out of order"))?,
            )
        }
        _ => return Err(bad("bad sketch flag")),
    };
    if by_class.iter().sum::<u64>() != count {
        return Err(bad("class counts disagree with the count"));
    }
    Ok(Cell {
        count,
        by_class,
        latency_sum_us,
        latency_min_us,
        latency_max_us,
        sketch,
        missed,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use toplog_types::{Event, Micros};

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
        let back = Rollups::decode(&img, FILE_VERSION, 100).map(|r| r.encode());
        assert_eq!(back.as_deref(), Ok(img.as_slice()));
        a.merge(&b);
        assert_eq!(a.encode(), img);
        for len in 0..img.len() {
            assert!(
                Rollups::decode(&img[..len], FILE_VERSION, 100).is_err(),
                "truncated to {len}"
            );
        }
        let file = all.to_file(TIER_FILE_LEVEL).unwrap();
        assert_eq!(
            Rollups::from_file(&file, 100)
                .map(|r| r.encode())
                .as_deref(),
            Ok(img.as_slice())
        );
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
        let block = zstd::bulk::compress(&v2, 3).unwrap();
        let mut v2_file = FILE_MAGIC.to_vec();
        v2_file.extend_from_slice(&2u32.to_le_bytes());
        v2_file.extend_from_slice(&0u32.to_le_bytes());
        v2_file.extend_from_slice(&(v2.len() as u64).to_le_bytes());
        v2_file.extend_from_slice(&(block.len() as u64).to_le_bytes());
        v2_file.extend_from_slice(&crc32c::crc32c(&block).to_le_bytes());
        v2_file.extend_from_slice(&block);
        assert_eq!(
            Rollups::from_file(&v2_file, 100)
                .map(|r| r.encode())
                .as_deref(),
            Ok(img.as_slice())
        );
        // A version-3 table naming one key twice is refused.
        let mut twice = Vec::new();
        put_varint(&mut twice, 2);
        put_bytes(&mut twice, b"GET /twice");
        put_bytes(&mut twice, b"GET /twice");
        twice.extend_from_slice(&[0, 0, 0, 0, 0]);
        assert!(Rollups::decode(&twice, 3, 100).is_err());
    }
}
