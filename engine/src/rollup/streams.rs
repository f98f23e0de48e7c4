//! The blocks of a rollup file of version 5 (docs/format.md, "Rollup
//! file"): a block's cells in their packed form, written in parts by kind
//! ([`Streams`]), an endpoint x class cell that is its endpoint's as a flag,
//! and a sketch that the latencies of a cell of two or three requests give
//! as a flag.

use std::ops::Range;
use std::sync::Arc;

use super::buckets::{Bucket, Rollups};
use super::cell::Cell;
use super::cube::{Cells, Cube, Overflow};
use super::dimension::{Dimension, Granularity};
use super::file::{ABSENT, Positions, Tables, put_bucket_start};
use super::packed::{Packed, pack_cell, read_cell};
use crate::codec::{CodecError, Reader, put_varint};
use crate::keys::{KeyId, Keys};
use crate::sketch::LatencySketch;

const ENDPOINT: usize = Dimension::Endpoint.index();
const ENDPOINT_CLASS: usize = Dimension::EndpointStatusClass.index();

/// Per endpoint x class key the file names, in table order, its endpoint's
/// position in the endpoint table (`ABSENT` if no cell of the file has it).
pub(super) fn class_endpoints(positions: &Positions) -> Vec<u32> {
    let endpoint_keys = Keys::of(Dimension::Endpoint);
    let endpoints = &positions[ENDPOINT];
    Keys::of(Dimension::EndpointStatusClass).with_names(|name| {
        (positions[ENDPOINT_CLASS].iter().enumerate())
            .filter(|(_, p)| **p != ABSENT)
            .map(|(id, _)| {
                Dimension::split_endpoint_class_key(name(id as KeyId))
                    .and_then(|(_, e)| endpoint_keys.id(e))
                    .and_then(|e| endpoints.get(e as usize).copied())
                    .unwrap_or(ABSENT)
            })
            .collect()
    })
}

/// A version 5 block: its parts written apart, so that zstd sees like next
/// to like. The frame holds varint lengths of `shape`, `keys`, `same`,
/// `derived` and `heads`, then the six parts, `bodies` last.
#[derive(Debug, Default)]
pub(super) struct Streams {
    /// The bucket count; per bucket its granularity and start, and per cube
    /// its cell count, overflow flag and floor.
    pub(super) shape: Vec<u8>,
    /// Each cell's key, as a gap in its dimension's table.
    keys: Vec<u8>,
    /// Per endpoint x class cell, 1 if it is its endpoint's cell (the
    /// endpoint had requests of that class alone in the bucket), else 0.
    same: Vec<u8>,
    /// Per cell of two or three requests packed without a sketch, 1 if its
    /// sketch is that of its latencies (min, max and what the sum leaves),
    /// rebuilt when read, else 0 (it has none).
    derived: Vec<u8>,
    /// The packed cells' heads and bodies (see `packed.rs`), each cube's
    /// overflow cell after its cells.
    heads: Vec<u8>,
    bodies: Vec<u8>,
}

impl Streams {
    pub(super) fn clear(&mut self) {
        for part in [
            &mut self.shape,
            &mut self.keys,
            &mut self.same,
            &mut self.derived,
            &mut self.heads,
            &mut self.bodies,
        ] {
            part.clear();
        }
    }

    pub(super) fn finish(&self, out: &mut Vec<u8>) {
        let parts = [
            &self.shape,
            &self.keys,
            &self.same,
            &self.derived,
            &self.heads,
            &self.bodies,
        ];
        for part in &parts[..5] {
            put_varint(out, part.len() as u64);
        }
        for part in parts {
            out.extend_from_slice(part);
        }
    }

    /// A bucket's start, then each cube's cells in key id order.
    pub(super) fn put_bucket(
        &mut self,
        g: Granularity,
        start: i64,
        bucket: &Bucket,
        positions: &Positions,
        class_endpoint: &[u32],
    ) {
        put_bucket_start(&mut self.shape, g, start);
        let mut endpoints: Vec<WrittenEndpoint> = Vec::new();
        let (mut head, mut body) = (Vec::new(), Vec::new());
        for (d, (cube, pos)) in bucket.cubes.iter().zip(positions).enumerate() {
            put_varint(&mut self.shape, cube.len() as u64);
            let mut next = 0;
            cells_in_id_order(cube, |id, c| {
                let at = pos[id as usize];
                put_varint(&mut self.keys, u64::from(at - next));
                next = at + 1;
                if d != ENDPOINT_CLASS {
                    let (h, b) = (self.heads.len(), self.bodies.len());
                    let derived = Self::pack(c, &mut self.heads, &mut self.bodies);
                    self.derived.extend(derived);
                    if d == ENDPOINT {
                        endpoints.push((at, h..self.heads.len(), b..self.bodies.len(), derived));
                    }
                    return;
                }
                head.clear();
                body.clear();
                let derived = Self::pack(c, &mut head, &mut body);
                let same = (endpoints.binary_search_by_key(&class_endpoint[at as usize], |e| e.0))
                    .is_ok_and(|i| {
                        let (_, h, b, flag) = &endpoints[i];
                        self.heads[h.clone()] == head[..]
                            && self.bodies[b.clone()] == body[..]
                            && *flag == derived
                    });
                self.same.push(u8::from(same));
                if !same {
                    self.heads.extend_from_slice(&head);
                    self.bodies.extend_from_slice(&body);
                    self.derived.extend(derived);
                }
            });
            match cube.overflow.as_deref() {
                None => self.shape.push(0),
                Some(o) => {
                    self.shape.push(1);
                    put_varint(&mut self.shape, o.floor);
                    let derived = Self::pack(&o.evicted, &mut self.heads, &mut self.bodies);
                    self.derived.extend(derived);
                }
            }
        }
    }

    /// Packs `c`, without its sketch if that is the sketch of its latencies
    /// ([`latencies`]); returns the cell's `derived` flag, if it has one.
    fn pack(c: &Cell, heads: &mut Vec<u8>, bodies: &mut Vec<u8>) -> Option<u8> {
        if !matches!(c.count, 2 | 3) {
            pack_cell(heads, bodies, c);
            return None;
        }
        let Some(sketch) = &c.sketch else {
            // No sketch to leave out: the flag says so.
            pack_cell(heads, bodies, c);
            return Some(0);
        };
        if !latencies(c).is_some_and(|l| sketch_of(&l) == *sketch) {
            // Packed with its sketch: no flag.
            pack_cell(heads, bodies, c);
            return None;
        }
        pack_cell(heads, bodies, &Cell { sketch: None, ..*c });
        Some(1)
    }
}

/// The latencies of a cell of two or three requests: its min and max, and
/// for three what its sum leaves between them.
fn latencies(c: &Cell) -> Option<Vec<u64>> {
    let (min, max) = (c.latency_min_us, c.latency_max_us);
    let ends = u128::from(min) + u128::from(max);
    match c.count {
        2 if c.latency_sum_us == ends => Some(vec![min, max]),
        3 => {
            let mid = u64::try_from(c.latency_sum_us.checked_sub(ends)?).ok()?;
            (min..=max).contains(&mid).then(|| vec![min, mid, max])
        }
        _ => None,
    }
}

fn sketch_of(latencies: &[u64]) -> LatencySketch {
    let mut s = LatencySketch::default();
    for l in latencies {
        s.insert(*l);
    }
    s
}

/// An endpoint cell of the bucket being written: its position in the
/// table, where its head and body are, and its `derived` flag.
type WrittenEndpoint = (u32, Range<usize>, Range<usize>, Option<u8>);

/// Calls `f` with each of `cube`'s cells in key id order.
pub(super) fn cells_in_id_order(cube: &Cube, mut f: impl FnMut(KeyId, &Cell)) {
    match &cube.cells {
        Cells::Packed(p) => p.each(true, f),
        Cells::Open(cells) => {
            let mut open: Vec<(KeyId, &Cell)> = cells.iter().map(|(id, c)| (*id, c)).collect();
            open.sort_unstable_by_key(|(id, _)| *id);
            for (id, c) in open {
                f(id, c);
            }
        }
    }
}

/// The buckets of a version 5 block (see [`Streams`]) into `out`; every
/// part must be read to its end.
pub(super) fn decode_streams(
    raw: &[u8],
    tables: &Tables,
    out: &mut Rollups,
) -> Result<(), CodecError> {
    let bad = |m: &str| CodecError(m.to_owned());
    let mut r = Reader::new(raw);
    let mut lens = [0usize; 5];
    for len in &mut lens {
        *len = r.len(raw.len())?;
    }
    let mut shape = Reader::new(r.take(lens[0])?);
    let mut keys = Reader::new(r.take(lens[1])?);
    let mut same = Reader::new(r.take(lens[2])?);
    let mut derived = Reader::new(r.take(lens[3])?);
    let mut heads = Reader::new(r.take(lens[4])?);
    let mut bodies = Reader::new(r.take(r.remaining())?);
    let mut read = || -> Result<Cell, CodecError> {
        let mut c = read_cell(&mut heads, &mut bodies)?;
        if matches!(c.count, 2 | 3) && c.sketch.is_none() {
            c.sketch = match derived.u8()? {
                0 => None,
                1 => Some(sketch_of(
                    &latencies(&c).ok_or_else(|| bad("a sketch that cannot be rebuilt"))?,
                )),
                _ => return Err(bad("bad derived-sketch flag")),
            };
        }
        Ok(c)
    };
    let limit = raw.len();
    for _ in 0..shape.len(limit)? {
        let level = usize::from(shape.u8()?);
        if level > 2 {
            return Err(bad("unknown granularity"));
        }
        let start = shape.i64()?;
        let mut bucket = Bucket::new();
        // The endpoint cube's cells by position, for the endpoint x class cells that copy them.
        let mut endpoints: Vec<(u32, KeyId, Cell)> = Vec::new();
        for (d, cube) in bucket.cubes.iter_mut().enumerate() {
            let table = &tables.ids[d];
            // Keys strictly increase in their table: no more cells than it has names.
            let n = shape.len(table.len())?;
            let mut cells = Vec::with_capacity(if d == ENDPOINT { 0 } else { n });
            let mut next = 0u64;
            for _ in 0..n {
                let at = next
                    .checked_add(keys.varint()?)
                    .filter(|at| *at < table.len() as u64)
                    .ok_or_else(|| bad("key outside the name table"))?;
                next = at + 1;
                let key = table[at as usize];
                let copied = d == ENDPOINT_CLASS
                    && match same.u8()? {
                        0 => false,
                        1 => true,
                        _ => return Err(bad("bad same-cell flag")),
                    };
                let cell = if copied {
                    let endpoint = tables.class_endpoint[at as usize];
                    let i = (endpoints.binary_search_by_key(&endpoint, |e| e.0))
                        .map_err(|_| bad("a copy of an endpoint cell the bucket lacks"))?;
                    endpoints[i].2.clone()
                } else {
                    read()?
                };
                if d == ENDPOINT {
                    endpoints.push((at as u32, key, cell));
                } else {
                    cells.push((key, cell));
                }
            }
            if d != ENDPOINT {
                cube.cells = Cells::Packed(Packed::new(cells));
            }
            cube.overflow = match shape.u8()? {
                0 => None,
                1 => Some(Box::new(Overflow {
                    floor: shape.varint()?,
                    evicted: read()?,
                })),
                _ => return Err(bad("bad overflow flag")),
            };
        }
        let endpoint_cells = endpoints.iter().map(|(_, k, c)| (*k, c)).collect();
        bucket.cubes[ENDPOINT].cells = Cells::Packed(Packed::new(endpoint_cells));
        if out.levels[level].insert(start, Arc::new(bucket)).is_some() {
            return Err(bad("bucket listed twice"));
        }
    }
    if [&shape, &keys, &same, &derived, &heads, &bodies]
        .iter()
        .any(|part| !part.is_empty())
    {
        return Err(bad("trailing bytes"));
    }
    Ok(())
}
