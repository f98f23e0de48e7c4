//! Cells in full, as rollup files of versions 2 to 4 hold them (version 5
//! holds them packed: `streams.rs`): each cell's count, counts by class,
//! latency sum, min, max, `missed` and sketch, one after another. Read for
//! the files earlier nodes wrote; written by version 4's writer, which only
//! tests use, and by the in-memory encoding tests compare cells with.

#[cfg(test)]
use std::collections::BTreeMap;
use std::sync::Arc;

use super::buckets::{Bucket, Rollups};
use super::cell::Cell;
use super::cube::{Cells, Overflow};
use super::dimension::Granularity;
use super::file::{Positions, decode_tables, put_bucket_start};
use super::packed::Packed;
use super::streams::cells_in_id_order;
#[cfg(test)]
use crate::codec::put_bytes;
use crate::codec::{CodecError, Reader, put_varint, unzigzag, zigzag};
use crate::keys::{KeyId, Keys};
use crate::sketch::LatencySketch;

impl Rollups {
    /// The cells as bytes, version 3 (see docs/format.md, "Rollup file"): the
    /// same rollups always encode the same way within a process.
    #[cfg(test)]
    pub(crate) fn encode(&self) -> Vec<u8> {
        let positions = self.key_positions();
        let mut out = Vec::new();
        self.put_tables(&positions, &mut out);
        self.put_bucket_count(&mut out);
        for (g, start, bucket) in self.buckets_in_file_order() {
            put_bucket(&mut out, g, start, bucket, &positions);
        }
        out
    }

    #[cfg(test)]
    fn put_bucket_count(&self, out: &mut Vec<u8>) {
        let buckets: usize = self.levels.iter().map(BTreeMap::len).sum();
        put_varint(out, buckets as u64);
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
    /// names its key; 3: the names come first, in tables, see [`Rollups::encode`]).
    pub(crate) fn decode(buf: &[u8], version: u32, budget: usize) -> Result<Self, CodecError> {
        let mut r = Reader::new(buf);
        let tables = if version >= 3 {
            decode_tables(&mut r, buf.len())?.ids
        } else {
            Default::default()
        };
        let mut out = Rollups::new(budget);
        decode_buckets(
            &mut r,
            buf.len(),
            (version >= 3).then_some(&tables),
            &mut out,
        )?;
        Ok(out)
    }
}

/// A bucket count, then the buckets (version 3 and on: keys by their
/// position in `tables`; version 2, `None`: by name), into `out`; nothing
/// may follow.
pub(super) fn decode_buckets(
    r: &mut Reader<'_>,
    limit: usize,
    tables: Option<&[Vec<KeyId>; 5]>,
    out: &mut Rollups,
) -> Result<(), CodecError> {
    let bad = |m: &str| CodecError(m.to_owned());
    let buckets = r.len(limit)?;
    for _ in 0..buckets {
        let level = usize::from(r.u8()?);
        if level > 2 {
            return Err(bad("unknown granularity"));
        }
        let start = r.i64()?;
        let mut bucket = Bucket::new();
        for (i, cube) in bucket.cubes.iter_mut().enumerate() {
            let keys = Keys::of(cube.dim);
            // With tables, keys strictly increase in them: no more cells than names.
            let n = r.len(tables.map_or(limit, |t| t[i].len()))?;
            let mut cells = Vec::with_capacity(n);
            let mut next = 0u64;
            for _ in 0..n {
                let key = match tables {
                    Some(tables) => {
                        let table = &tables[i];
                        let at = next
                            .checked_add(r.varint()?)
                            .filter(|at| *at < table.len() as u64)
                            .ok_or_else(|| bad("key outside the name table"))?;
                        next = at + 1;
                        table[at as usize]
                    }
                    None => keys.intern(r.str()?),
                };
                cells.push((key, get_cell(r, limit)?));
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
                    evicted: get_cell(r, limit)?,
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
    Ok(())
}

/// A bucket's start, then each cube's cells in key id order, each naming its
/// key by a gap in its dimension's table, and its overflow.
pub(super) fn put_bucket(
    out: &mut Vec<u8>,
    g: Granularity,
    start: i64,
    bucket: &Bucket,
    positions: &Positions,
) {
    put_bucket_start(out, g, start);
    for (cube, pos) in bucket.cubes.iter().zip(positions) {
        put_varint(out, cube.len() as u64);
        let mut next = 0;
        cells_in_id_order(cube, |id, c| {
            let at = pos[id as usize];
            put_varint(out, u64::from(at - next));
            next = at + 1;
            put_cell(out, c);
        });
        put_overflow(out, cube.overflow.as_deref());
    }
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
