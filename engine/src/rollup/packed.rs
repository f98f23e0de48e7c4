//! The packed cell format: a closed cube's cells as a few bytes each, heads
//! (what a count needs) apart from bodies (latencies and sketch), with marks
//! every few cells so a key's cell is found by reading past a handful.

use std::convert::Infallible;

use super::cell::Cell;
use crate::codec::{CodecError, Reader, put_varint, unzigzag, zigzag};
use crate::keys::KeyId;
use crate::sketch::LatencySketch;

/// A closed cube's cells: key ids ascending, and each cell packed in two
/// parts, its head (what a count needs) in `heads` and the rest in `bodies`:
///
/// | part | field | bytes |
/// |---|---|---|
/// | head | flags | u8: bits 0-4 a non-zero count in status class 1xx-5xx, bit 5 a sketch, bit 6 a latency sum of 2^64 µs or more, bit 7 a non-zero `missed` |
/// | head | count per class | varint per bit set among bits 0-4 (`count` is their sum); 0 for a cell of one request |
/// | body | latency | a cell of one request: its latency (the sum, min, max and the sketch's one value), then `missed` if bit 7, and nothing else |
/// | body | latency sum | varint of its low 64 bits; then the high 64 bits if bit 6 |
/// | body | latency min, max - min | varints (wrapping) |
/// | body | missed | varint, if bit 7 |
/// | body | sketch | if bit 5: zeros, bin count, then per bin the key (zigzag for the first, the gap minus 1 after) and the count, varints |
///
/// A cell of a minute bucket with one request takes 4 to 6 bytes, with a few
/// about 20, where a [`Cell`] with its sketch and key took about 300.
#[derive(Debug, Clone, Default)]
pub(super) struct Packed {
    pub(super) ids: Box<[KeyId]>,
    /// Where every [`MARK_EVERY`]-th cell's head and body start: the others
    /// are found by reading past the cells before them. Counting reads past
    /// heads only, a few bytes each.
    marks: Box<[(u32, u32)]>,
    pub(super) heads: Box<[u8]>,
    bodies: Box<[u8]>,
}

/// Cells of a [`Packed`] per mark: a lookup reads past at most this many less one.
const MARK_EVERY: usize = 4;

impl Packed {
    /// Packs `cells` (owned or borrowed: sorting references moves 16 bytes a
    /// cell instead of the whole cell).
    pub(super) fn new<C: std::borrow::Borrow<Cell>>(mut cells: Vec<(KeyId, C)>) -> Self {
        cells.sort_unstable_by_key(|(k, _)| *k);
        let (mut heads, mut bodies) = (Vec::new(), Vec::new());
        let mut marks = Vec::with_capacity(cells.len().div_ceil(MARK_EVERY));
        let offset = |v: &Vec<u8>| u32::try_from(v.len()).unwrap_or(u32::MAX);
        for (i, (_, c)) in cells.iter().enumerate() {
            if i % MARK_EVERY == 0 {
                marks.push((offset(&heads), offset(&bodies)));
            }
            pack_cell(&mut heads, &mut bodies, c.borrow());
        }
        Self {
            ids: cells.iter().map(|(k, _)| *k).collect(),
            marks: marks.into_boxed_slice(),
            heads: heads.into_boxed_slice(),
            bodies: bodies.into_boxed_slice(),
        }
    }

    /// Bytes it holds on the heap.
    pub(super) fn heap_bytes(&self) -> usize {
        self.ids.len() * std::mem::size_of::<KeyId>()
            + self.marks.len() * std::mem::size_of::<(u32, u32)>()
            + self.heads.len()
            + self.bodies.len()
    }

    /// Sets `cell`'s counts (count, per status class, missed) to those of
    /// cell `i`, whose head is `head`, and its latencies to none.
    pub(super) fn counts(&self, i: usize, head: &Head, cell: &mut Cell) {
        if head.flags & HAS_MISSED != 0 {
            // Only in a bucket that went over its budget: read it whole.
            self.unpack(i, false, cell);
        } else {
            (cell.count, cell.by_class, cell.missed) = (head.count(), head.by_class, 0);
        }
        (
            cell.latency_sum_us,
            cell.latency_min_us,
            cell.latency_max_us,
        ) = (0, u64::MAX, 0);
    }

    /// The head of cell `i`, found reading past heads alone.
    pub(super) fn head(&self, i: usize) -> Head {
        let mut at = self.mark(i).head;
        for _ in 0..i % MARK_EVERY {
            at += Head::read(self.heads.get(at..).unwrap_or_default()).len;
        }
        Head::read(self.heads.get(at..).unwrap_or_default())
    }

    /// Where the cells from the mark of cell `i` on start.
    fn mark(&self, i: usize) -> At {
        self.marks
            .get(i / MARK_EVERY)
            .map_or(At::default(), |&(h, b)| At {
                head: h as usize,
                body: b as usize,
            })
    }

    /// Moves `at` past the cell there, without decoding its body.
    fn skip(&self, at: &mut At) {
        let h = Head::read(self.heads.get(at.head..).unwrap_or_default());
        at.head += h.len;
        at.body += h.body_len(self.bodies.get(at.body..).unwrap_or_default());
    }

    /// Reads the cell at `at` into `into` (reusing its sketch's allocation)
    /// and moves `at` past it.
    fn read(&self, at: &mut At, sketches: bool, into: &mut Cell) {
        let h = Head::read(self.heads.get(at.head..).unwrap_or_default());
        at.head += h.len;
        at.body += h.unpack(
            self.bodies.get(at.body..).unwrap_or_default(),
            sketches,
            into,
        );
    }

    /// Cell `i` into `into` (reusing its sketch's allocation).
    pub(super) fn unpack(&self, i: usize, sketches: bool, into: &mut Cell) {
        let mut at = self.mark(i);
        for _ in 0..i % MARK_EVERY {
            self.skip(&mut at);
        }
        self.read(&mut at, sketches, into);
    }

    /// Calls `f` with the cells of `ids` (ascending) that exist, walking the
    /// cells in order: a key is found from the previous one or from its mark,
    /// never reading past more than [`MARK_EVERY`] - 1 cells.
    pub(super) fn each_of(
        &self,
        ids: impl Iterator<Item = KeyId>,
        sketches: bool,
        mut f: impl FnMut(KeyId, &Cell),
    ) {
        let mut cell = Cell::new(false);
        // The next cell and where it starts.
        let (mut next, mut at) = (0, At::default());
        for id in ids {
            let Ok(found) = self.ids[next.min(self.ids.len())..].binary_search(&id) else {
                continue;
            };
            let i = next + found;
            if i / MARK_EVERY != next / MARK_EVERY {
                at = self.mark(i);
                next = i - i % MARK_EVERY;
            }
            for _ in next..i {
                self.skip(&mut at);
            }
            self.read(&mut at, sketches, &mut cell);
            next = i + 1;
            f(id, &cell);
        }
    }

    /// Calls `f` with every cell in key id order.
    pub(super) fn each(&self, sketches: bool, mut f: impl FnMut(KeyId, &Cell)) {
        let mut cell = Cell::new(false);
        let mut at = At::default();
        for id in &self.ids {
            self.read(&mut at, sketches, &mut cell);
            f(*id, &cell);
        }
    }
}

/// A position in a [`Packed`]'s heads and bodies.
#[derive(Debug, Clone, Copy, Default)]
struct At {
    head: usize,
    body: usize,
}

const HAS_SKETCH: u8 = 1 << 5;
const HIGH_SUM: u8 = 1 << 6;
const HAS_MISSED: u8 = 1 << 7;

/// Packs `c`: its head onto `heads`, the rest onto `bodies`. Rollup files
/// (version 5 on) store cells in this form too, so a change to it is a new
/// file version (docs/format.md, "Rollup file").
pub(super) fn pack_cell(heads: &mut Vec<u8>, bodies: &mut Vec<u8>, c: &Cell) {
    let mut flags = 0u8;
    for (i, n) in c.by_class.iter().enumerate() {
        if *n > 0 {
            flags |= 1 << i;
        }
    }
    let high = (c.latency_sum_us >> 64) as u64;
    if c.sketch.is_some() {
        flags |= HAS_SKETCH;
    }
    if high > 0 {
        flags |= HIGH_SUM;
    }
    if c.missed > 0 {
        flags |= HAS_MISSED;
    }
    heads.push(flags);
    let single = c.count == 1
        && c.latency_sum_us == u128::from(c.latency_min_us)
        && c.latency_min_us == c.latency_max_us
        && c.sketch
            .as_ref()
            .is_none_or(|s| s.is_single(c.latency_min_us));
    if single {
        put_varint(heads, 0);
        put_varint(bodies, c.latency_min_us);
        if c.missed > 0 {
            put_varint(bodies, c.missed);
        }
        return;
    }
    for n in c.by_class.into_iter().filter(|n| *n > 0) {
        put_varint(heads, n);
    }
    put_varint(bodies, c.latency_sum_us as u64);
    if high > 0 {
        put_varint(bodies, high);
    }
    put_varint(bodies, c.latency_min_us);
    put_varint(bodies, c.latency_max_us.wrapping_sub(c.latency_min_us));
    if c.missed > 0 {
        put_varint(bodies, c.missed);
    }
    if let Some(s) = &c.sketch {
        put_varint(bodies, s.zeros());
        put_varint(bodies, s.bin_count() as u64);
        let mut last = None;
        for (key, n) in s.bins() {
            match last {
                None => put_varint(bodies, zigzag(i64::from(key))),
                Some(prev) => put_varint(bodies, (i64::from(key) - i64::from(prev) - 1) as u64),
            }
            put_varint(bodies, n);
            last = Some(key);
        }
    }
}

/// Reads back a cell [`pack_cell`] wrote, from bytes that may be damaged:
/// every read is bounds-checked and what `pack_cell` never writes is refused.
pub(super) fn read_cell(
    heads: &mut Reader<'_>,
    bodies: &mut Reader<'_>,
) -> Result<Cell, CodecError> {
    let bad = |m: &str| CodecError(format!("packed cell: {m}"));
    let flags = heads.u8()?;
    let (by_class, single) = class_counts(flags, || heads.varint())?;
    let count = by_class
        .iter()
        .try_fold(0u64, |a, n| a.checked_add(*n))
        .ok_or_else(|| bad("count overflows"))?;
    if single && (count != 1 || flags & HIGH_SUM != 0) {
        return Err(bad("a cell of one request with more"));
    }
    let mut c = Cell::new(false);
    (c.count, c.by_class) = (count, by_class);
    if single {
        let latency = bodies.varint()?;
        c.latency_sum_us = u128::from(latency);
        (c.latency_min_us, c.latency_max_us) = (latency, latency);
        if flags & HAS_MISSED != 0 {
            c.missed = bodies.varint()?;
        }
        if flags & HAS_SKETCH != 0 {
            let mut s = LatencySketch::default();
            s.insert(latency);
            c.sketch = Some(s);
        }
        return Ok(c);
    }
    let low = bodies.varint()?;
    let high = if flags & HIGH_SUM != 0 {
        bodies.varint()?
    } else {
        0
    };
    c.latency_sum_us = u128::from(low) | (u128::from(high) << 64);
    c.latency_min_us = bodies.varint()?;
    c.latency_max_us = c.latency_min_us.wrapping_add(bodies.varint()?);
    if flags & HAS_MISSED != 0 {
        c.missed = bodies.varint()?;
    }
    if flags & HAS_SKETCH != 0 {
        let zeros = bodies.varint()?;
        // A bin takes at least two bytes.
        let n = bodies.len(bodies.remaining() / 2)?;
        let mut bins = Vec::with_capacity(n);
        let mut key = 0i64;
        for i in 0..n {
            let v = bodies.varint()?;
            key = if i == 0 {
                unzigzag(v)
            } else {
                i64::try_from(v)
                    .ok()
                    .and_then(|gap| key.checked_add(gap)?.checked_add(1))
                    .ok_or_else(|| bad("sketch bin out of range"))?
            };
            let key = i32::try_from(key).map_err(|_| bad("sketch bin out of range"))?;
            bins.push((key, bodies.varint()?));
        }
        c.sketch = Some(
            LatencySketch::from_parts(zeros, bins)
                .ok_or_else(|| bad("sketch bins out of order"))?,
        );
    }
    Ok(c)
}

/// The counts by status class of a head with `flags`, each read by `next`
/// (a 0 is a cell of one request), and whether it is such a cell.
fn class_counts<E>(
    flags: u8,
    mut next: impl FnMut() -> Result<u64, E>,
) -> Result<([u64; 5], bool), E> {
    let mut by_class = [0u64; 5];
    let mut single = false;
    for (i, n) in by_class.iter_mut().enumerate() {
        if flags & (1 << i) != 0 {
            *n = match next()? {
                0 => {
                    single = true;
                    1
                }
                n => n,
            };
        }
    }
    Ok((by_class, single))
}

/// A packed cell's head, read (bytes this process packed: a read past the end
/// gives 0, it never panics).
#[derive(Debug, Clone, Copy)]
pub(super) struct Head {
    flags: u8,
    by_class: [u64; 5],
    /// A cell of one request (see [`pack_cell`]).
    single: bool,
    /// Bytes of the head.
    pub(super) len: usize,
}

impl Head {
    pub(super) fn read(bytes: &[u8]) -> Self {
        let flags = bytes.first().copied().unwrap_or(0);
        let mut r = Varints { bytes, pos: 1 };
        let (by_class, single) = match class_counts(flags, || Ok::<_, Infallible>(r.next())) {
            Ok(counts) => counts,
            Err(never) => match never {},
        };
        Self {
            flags,
            by_class,
            single,
            len: r.pos,
        }
    }

    pub(super) fn count(&self) -> u64 {
        self.by_class.iter().sum()
    }

    fn has(&self, bit: u8) -> usize {
        usize::from(self.flags & bit != 0)
    }

    /// The length of this cell's body at the start of `body`, found without
    /// decoding it.
    fn body_len(&self, body: &[u8]) -> usize {
        let mut r = Varints {
            bytes: body,
            pos: 0,
        };
        if self.single {
            r.skip(1 + self.has(HAS_MISSED));
            return r.pos;
        }
        // Sum (and its high half), min, max - min, missed.
        r.skip(3 + self.has(HIGH_SUM) + self.has(HAS_MISSED));
        if self.flags & HAS_SKETCH != 0 {
            r.skip(1);
            let bins = r.next();
            r.skip(usize::try_from(bins.saturating_mul(2)).unwrap_or(usize::MAX));
        }
        r.pos
    }

    /// The cell, its body read from the start of `body`; returns the body's length.
    fn unpack(&self, body: &[u8], sketches: bool, c: &mut Cell) -> usize {
        let mut r = Varints {
            bytes: body,
            pos: 0,
        };
        c.by_class = self.by_class;
        c.count = self.count();
        if self.single {
            let latency = r.next();
            c.latency_sum_us = u128::from(latency);
            (c.latency_min_us, c.latency_max_us) = (latency, latency);
            c.missed = if self.flags & HAS_MISSED != 0 {
                r.next()
            } else {
                0
            };
            c.sketch = (self.flags & HAS_SKETCH != 0 && sketches).then(|| {
                let mut s = c.sketch.take().unwrap_or_default();
                s.refill_single(latency);
                s
            });
            return r.pos;
        }
        let low = r.next();
        let high = if self.flags & HIGH_SUM != 0 {
            r.next()
        } else {
            0
        };
        c.latency_sum_us = u128::from(low) | (u128::from(high) << 64);
        c.latency_min_us = r.next();
        c.latency_max_us = c.latency_min_us.wrapping_add(r.next());
        c.missed = if self.flags & HAS_MISSED != 0 {
            r.next()
        } else {
            0
        };
        if self.flags & HAS_SKETCH == 0 {
            c.sketch = None;
            return r.pos;
        }
        let zeros = r.next();
        let n = r.next();
        if !sketches {
            c.sketch = None;
            r.skip(usize::try_from(n.saturating_mul(2)).unwrap_or(usize::MAX));
            return r.pos;
        }
        let sketch = c.sketch.get_or_insert_with(LatencySketch::default);
        let mut key = 0i64;
        sketch.refill(
            zeros,
            (0..n).map(|i| {
                let v = r.next();
                key = if i == 0 {
                    unzigzag(v)
                } else {
                    key + v as i64 + 1
                };
                (key as i32, r.next())
            }),
        );
        r.pos
    }
}

/// Varints read from packed bytes.
struct Varints<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Varints<'_> {
    /// Moves past `n` varints.
    fn skip(&mut self, mut n: usize) {
        while n > 0 {
            let Some(b) = self.bytes.get(self.pos) else {
                return;
            };
            self.pos += 1;
            n -= usize::from(*b < 0x80);
        }
    }

    fn next(&mut self) -> u64 {
        let mut v = 0u64;
        let mut shift = 0;
        while let Some(&b) = self.bytes.get(self.pos) {
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift.min(63);
            shift += 7;
            if b < 0x80 {
                break;
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn packed_cells_read_back_whole() {
        let mut cells = vec![(7, Cell::new(true)), (3, Cell::new(false))];
        for (i, lat) in [0u64, 1, 2, 999_999_999, u64::MAX, 42, 42]
            .iter()
            .enumerate()
        {
            cells[0].1.add([200, 301, 404, 503, 101, 200, 200][i], *lat);
        }
        cells[0].1.missed = 5;
        cells[1].1.add(500, 12);
        let mut huge = Cell::new(true);
        huge.add(200, u64::MAX);
        huge.add(200, u64::MAX);
        let mut empty_sketch = Cell::new(true);
        empty_sketch.latency_sum_us = 1 << 70;
        cells.push((1, huge));
        cells.push((9, empty_sketch));
        cells.push((4, Cell::new(false)));
        // Cells of one request, packed short: with and without a sketch, a zero
        // latency, and what was missed.
        for (id, sketch, latency, missed) in
            [(20, true, 1234, 0), (21, false, 99, 3), (22, true, 0, 7)]
        {
            let mut c = Cell::new(sketch);
            c.add(404, latency);
            c.missed = missed;
            cells.push((id, c));
        }
        // Past the first mark: cells found by reading past others.
        for id in 30..50u32 {
            let mut c = Cell::new(id % 2 == 0);
            for j in 0..u64::from(id % 5) + 1 {
                c.add(200 + (j as u16 % 4) * 100, j * 1000 + u64::from(id));
            }
            cells.push((id, c));
        }
        let packed = Packed::new(cells.clone());
        assert_eq!(&packed.ids[..8], &[1, 3, 4, 7, 9, 20, 21, 22]);
        let mut all = Vec::new();
        packed.each(true, |id, c| all.push((id, c.clone())));
        let mut scratch = Cell::new(true);
        // Every body's length, found without decoding it, is the length decoding reads.
        let (mut head, mut body) = (0, 0);
        for _ in 0..packed.ids.len() {
            let h = Head::read(&packed.heads[head..]);
            let len = h.unpack(&packed.bodies[body..], false, &mut scratch);
            assert_eq!(h.body_len(&packed.bodies[body..]), len);
            (head, body) = (head + h.len, body + len);
        }
        assert_eq!((head, body), (packed.heads.len(), packed.bodies.len()));
        cells.sort_by_key(|(id, _)| *id);
        assert_eq!(all, cells);
        // The checked reader (rollup files) reads the same cells and ends
        // where the bytes do; cut short anywhere, it errs.
        let (mut heads, mut bodies) = (Reader::new(&packed.heads), Reader::new(&packed.bodies));
        for (_, want) in &cells {
            assert_eq!(&read_cell(&mut heads, &mut bodies).unwrap(), want);
        }
        assert!(heads.is_empty() && bodies.is_empty());
        for cut in 0..packed.bodies.len() {
            let (mut heads, mut bodies) = (
                Reader::new(&packed.heads),
                Reader::new(&packed.bodies[..cut]),
            );
            assert!(
                (0..cells.len()).any(|_| read_cell(&mut heads, &mut bodies).is_err()),
                "bodies cut at {cut}"
            );
        }
        // Cell 5: one request of 1,234 µs: a flags byte and a 0 in the head, two bytes of body.
        let At { head: h, body: b } = packed.mark(4);
        let head5 = h + Head::read(&packed.heads[h..]).len;
        let body5 = b + Head::read(&packed.heads[h..]).body_len(&packed.bodies[b..]);
        let five = Head::read(&packed.heads[head5..]);
        assert_eq!((five.len, five.body_len(&packed.bodies[body5..])), (2, 2));
        // Any ascending subset, found by walking: the same cells; absent ids skipped.
        for step in 1..6 {
            let wanted: Vec<KeyId> = (0..60).step_by(step).collect();
            let mut got = Vec::new();
            packed.each_of(wanted.iter().copied(), true, |id, c| {
                got.push((id, c.clone()))
            });
            let want: Vec<(KeyId, Cell)> = cells
                .iter()
                .filter(|(id, _)| wanted.contains(id))
                .cloned()
                .collect();
            assert_eq!(got, want, "every {step}th id");
        }
        for (i, id) in packed.ids.iter().enumerate() {
            let want = &cells.iter().find(|(k, _)| k == id).map(|(_, c)| c.clone());
            packed.unpack(i, true, &mut scratch);
            assert_eq!(Some(&scratch), want.as_ref(), "cell {id}");
            packed.unpack(i, false, &mut scratch);
            assert_eq!(scratch.sketch, None);
            assert_eq!(scratch.count, want.as_ref().map_or(0, |c| c.count));
            assert_eq!(packed.head(i).count(), scratch.count);
            assert_eq!(packed.head(i).by_class, scratch.by_class);
        }
    }
}
