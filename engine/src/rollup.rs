//! Rollup cubes: per time bucket (1 minute, 1 hour, 1 day) and per value of a
//! dimension, the count, counts by status class, and latency sum/min/max with
//! a mergeable sketch. Cells are additive, so any set of buckets merges into
//! the same answer the raw rows would give.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

use toplog_types::{Event, Micros};

use crate::codec::{CodecError, Reader, put_bytes, put_varint, unzigzag, zigzag};
use crate::sketch::LatencySketch;

/// A bucket length maintained by the cubes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Granularity {
    Minute,
    Hour,
    Day,
}

impl Granularity {
    /// Coarsest first.
    pub const ALL: [Granularity; 3] = [Granularity::Day, Granularity::Hour, Granularity::Minute];

    pub const fn len_us(self) -> i64 {
        match self {
            Granularity::Minute => 60_000_000,
            Granularity::Hour => 3_600_000_000,
            Granularity::Day => 86_400_000_000,
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|g| g.name() == name)
    }

    pub const fn name(self) -> &'static str {
        match self {
            Granularity::Minute => "rollup_1m",
            Granularity::Hour => "rollup_1h",
            Granularity::Day => "rollup_1d",
        }
    }

    pub(crate) const fn index(self) -> usize {
        match self {
            Granularity::Minute => 0,
            Granularity::Hour => 1,
            Granularity::Day => 2,
        }
    }
}

/// What events are grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dimension {
    Endpoint,
    StatusCode,
    Method,
    UserId,
    /// Endpoint within a status class; the key is the class digit, a space,
    /// then the endpoint (`5 GET /items/{id}`), see [`Dimension::endpoint_class_key`].
    EndpointStatusClass,
}

impl Dimension {
    pub const ALL: [Dimension; 5] = [
        Dimension::Endpoint,
        Dimension::StatusCode,
        Dimension::Method,
        Dimension::UserId,
        Dimension::EndpointStatusClass,
    ];

    /// The key of `endpoint` in status class `class` (1 to 5) in the endpoint x class cube.
    pub fn endpoint_class_key(class: u16, endpoint: &str) -> String {
        format!("{class} {endpoint}")
    }

    /// Splits an endpoint x class key into (class digit, endpoint).
    pub fn split_endpoint_class_key(key: &str) -> Option<(u8, &str)> {
        let class = key.as_bytes().first()?.checked_sub(b'0')?;
        Some((class, key.get(2..)?))
    }

    pub(crate) const fn index(self) -> usize {
        match self {
            Dimension::Endpoint => 0,
            Dimension::StatusCode => 1,
            Dimension::Method => 2,
            Dimension::UserId => 3,
            Dimension::EndpointStatusClass => 4,
        }
    }

    /// The user cube keeps no sketch: its cardinality is far higher.
    const fn keeps_sketch(self) -> bool {
        !matches!(self, Dimension::UserId)
    }

    /// The granularities this dimension's cube is kept at, coarsest first. The
    /// user cube has no minute buckets: they were most of the rollups' memory,
    /// and the sub-hour edges of a user query are cheap to read from raw rows.
    pub const fn granularities(self) -> &'static [Granularity] {
        match self {
            Dimension::UserId => &[Granularity::Day, Granularity::Hour],
            _ => &Granularity::ALL,
        }
    }

    /// This dimension's value in an event.
    pub fn key_of(self, e: &Event) -> std::borrow::Cow<'_, str> {
        match self {
            Dimension::Endpoint => e.endpoint.as_str().into(),
            Dimension::StatusCode => e.status_code.to_string().into(),
            Dimension::Method => e.method.as_str().into(),
            Dimension::UserId => e.user_id.as_str().into(),
            Dimension::EndpointStatusClass => {
                Self::endpoint_class_key(e.status_code / 100, &e.endpoint).into()
            }
        }
    }
}

/// Aggregates of a set of requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    pub count: u64,
    /// Requests by status class: index 0 = 1xx ... 4 = 5xx.
    pub by_class: [u64; 5],
    pub latency_sum_us: u128,
    pub latency_min_us: u64,
    pub latency_max_us: u64,
    pub sketch: Option<LatencySketch>,
    /// At most this many requests of this key are not in the cell: they came
    /// before its cube bucket admitted the key and were counted under keys the
    /// bucket has since evicted (see [`Overflow`]). 0 in a bucket that never overflowed.
    pub missed: u64,
}

impl Cell {
    pub fn new(with_sketch: bool) -> Self {
        Self {
            count: 0,
            by_class: [0; 5],
            latency_sum_us: 0,
            latency_min_us: u64::MAX,
            latency_max_us: 0,
            sketch: with_sketch.then(LatencySketch::default),
            missed: 0,
        }
    }

    pub fn add(&mut self, status_code: u16, latency_us: u64) {
        self.add_binned(status_code, latency_us, LatencySketch::bin(latency_us));
    }

    /// [`Cell::add`] with the latency's sketch bin already computed.
    fn add_binned(&mut self, status_code: u16, latency_us: u64, bin: Option<i32>) {
        self.count += 1;
        let class = usize::from(status_code / 100).clamp(1, 5) - 1;
        self.by_class[class] += 1;
        self.latency_sum_us += u128::from(latency_us);
        self.latency_min_us = self.latency_min_us.min(latency_us);
        self.latency_max_us = self.latency_max_us.max(latency_us);
        if let Some(s) = &mut self.sketch {
            s.insert_bin(bin);
        }
    }

    pub fn merge(&mut self, other: &Cell) {
        self.count += other.count;
        for (a, b) in self.by_class.iter_mut().zip(other.by_class) {
            *a += b;
        }
        self.latency_sum_us += other.latency_sum_us;
        self.latency_min_us = self.latency_min_us.min(other.latency_min_us);
        self.latency_max_us = self.latency_max_us.max(other.latency_max_us);
        self.missed += other.missed;
        match (&mut self.sketch, &other.sketch) {
            (Some(a), Some(b)) => a.merge(b),
            // A cell without a sketch poisons quantiles for the merge: they cannot be answered.
            (Some(_), None) => self.sketch = None,
            _ => {}
        }
    }

    /// Server errors: status 500 to 599.
    pub fn errors(&self) -> u64 {
        self.by_class[4]
    }
}

const FILE_MAGIC: &[u8; 8] = b"TPLGCUB\0";
const FILE_VERSION: u32 = 2;

/// What a cube bucket keeps of the keys it evicted once it held more keys
/// than its budget (a Space-Saving summary, evicting in batches).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overflow {
    /// No key absent from the bucket has more than this many requests in it.
    pub floor: u64,
    /// The requests of every evicted key, aggregated: bucket totals stay exact,
    /// and the latencies a cell missed lie within this cell's min and max.
    pub evicted: Cell,
}

/// Cells a cube lists in [`Cube::heaviest`].
pub const HEAVIEST_LISTED: usize = 64;

/// One dimension's cells in one bucket.
#[derive(Debug, Clone, Default)]
pub struct Cube {
    cells: HashMap<String, Cell, foldhash::fast::RandomState>,
    /// Set once the bucket has had more keys than its budget.
    overflow: Option<Overflow>,
    /// [`Cube::heaviest`], computed when first asked for and dropped whenever
    /// the cube changes, so a closed bucket sorts its cells once.
    heaviest: OnceLock<Vec<(u64, String)>>,
}

impl Cube {
    /// The cells, one per key, in no particular order.
    pub fn cells(&self) -> impl Iterator<Item = (&str, &Cell)> {
        self.cells.iter().map(|(k, c)| (k.as_str(), c))
    }

    pub fn get(&self, key: &str) -> Option<&Cell> {
        self.cells.get(key)
    }

    /// Keys with a cell.
    pub fn len(&self) -> usize {
        self.cells.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    /// (count, key) of the [`HEAVIEST_LISTED`] cells with the most requests,
    /// most first, ties by key ascending: every cell when there are no more.
    pub fn heaviest(&self) -> &[(u64, String)] {
        self.heaviest.get_or_init(|| {
            let mut all: Vec<(u64, &str)> = self
                .cells
                .iter()
                .map(|(k, c)| (c.count, k.as_str()))
                .collect();
            let order = |a: &(u64, &str), b: &(u64, &str)| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1));
            if all.len() > HEAVIEST_LISTED {
                all.select_nth_unstable_by(HEAVIEST_LISTED - 1, order);
                all.truncate(HEAVIEST_LISTED);
            }
            all.sort_unstable_by(order);
            all.into_iter().map(|(c, k)| (c, k.to_owned())).collect()
        })
    }

    /// `None` while every key of the bucket has its own exact cell.
    pub fn overflow(&self) -> Option<&Overflow> {
        self.overflow.as_ref()
    }

    /// No key absent from this cube has more requests in the bucket (0 while
    /// it never exceeded its budget).
    pub fn floor(&self) -> u64 {
        self.overflow.as_ref().map_or(0, |o| o.floor)
    }

    /// Counts a request in the cell of `key`, created (with what it may have
    /// missed) if absent.
    fn add(&mut self, key: &str, sketch: bool, e: &Event, bin: Option<i32>, budget: usize) {
        self.heaviest.take();
        if let Some(cell) = self.cells.get_mut(key) {
            cell.add_binned(e.status_code, e.latency_us, bin);
            return;
        }
        let mut cell = Cell::new(sketch);
        cell.missed = self.floor();
        cell.add_binned(e.status_code, e.latency_us, bin);
        self.cells.insert(key.to_owned(), cell);
        self.enforce_budget(budget, sketch);
    }

    /// Adds `other`'s cells. A key present on one side only may have up to the
    /// other side's floor of requests there, so its `missed` grows by that floor.
    fn merge(&mut self, other: &Cube, budget: usize, sketch: bool) {
        self.heaviest.take();
        let (mine, theirs) = (self.floor(), other.floor());
        if theirs > 0 {
            for (k, c) in &mut self.cells {
                if !other.cells.contains_key(k) {
                    c.missed += theirs;
                }
            }
        }
        for (k, cell) in &other.cells {
            match self.cells.get_mut(k) {
                Some(c) => c.merge(cell),
                None => {
                    let mut cell = cell.clone();
                    cell.missed += mine;
                    self.cells.insert(k.clone(), cell);
                }
            }
        }
        self.overflow = match (self.overflow.take(), &other.overflow) {
            (Some(mut a), Some(b)) => {
                a.floor += b.floor;
                a.evicted.merge(&b.evicted);
                Some(a)
            }
            (a, b) => a.or_else(|| b.clone()),
        };
        self.enforce_budget(budget, sketch);
    }

    /// Over budget, evicts the keys with the smallest `count + missed` (ties by
    /// key, so the outcome does not depend on hash order) down to 7/8 of the
    /// budget, so eviction costs O(1) per key amortised.
    fn enforce_budget(&mut self, budget: usize, sketch: bool) {
        if self.cells.len() <= budget {
            return;
        }
        let keep = (budget - budget / 8).max(1);
        let evict = self.cells.len() - keep;
        let mut order: Vec<(u64, &String)> = self
            .cells
            .iter()
            .map(|(k, c)| (c.count + c.missed, k))
            .collect();
        order.select_nth_unstable(evict - 1);
        let victims: Vec<String> = order[..evict].iter().map(|(_, k)| (*k).clone()).collect();
        let overflow = self.overflow.get_or_insert_with(|| Overflow {
            floor: 0,
            evicted: Cell::new(sketch),
        });
        for k in victims {
            if let Some(c) = self.cells.remove(&k) {
                overflow.floor = overflow.floor.max(c.count + c.missed);
                overflow.evicted.merge(&c);
            }
        }
        overflow.evicted.missed = 0;
        // Rehash without the tombstones the removals left, so the table keeps
        // the size of the budget instead of doubling past it.
        self.cells.shrink_to(budget);
    }
}

/// One bucket: a cube per dimension.
#[derive(Debug, Clone, Default)]
struct Bucket {
    cubes: [Cube; 5],
}

/// Every bucket of every granularity: the cubes of a set of requests.
/// Buckets are shared between clones and copied when first changed, so a
/// clone costs a pointer per bucket.
#[derive(Debug, Clone)]
pub struct Rollups {
    levels: [BTreeMap<i64, Arc<Bucket>>; 3],
    /// Most keys a cube bucket holds cells for.
    budget: usize,
}

impl Default for Rollups {
    fn default() -> Self {
        Self::new(crate::engine::DEFAULT_ROLLUP_KEY_BUDGET)
    }
}

impl Rollups {
    /// Empty cubes whose buckets keep cells for at most `budget` keys each.
    pub fn new(budget: usize) -> Self {
        Self {
            levels: Default::default(),
            budget: budget.max(1),
        }
    }

    /// Counts `e` in the bucket of each granularity of each cube.
    pub fn add(&mut self, e: &Event) {
        let bin = LatencySketch::bin(e.latency_us);
        // Keys derived from the event, built once instead of once per granularity.
        let status = e.status_code.to_string();
        let class = Dimension::endpoint_class_key(e.status_code / 100, &e.endpoint);
        for g in Granularity::ALL {
            let start = e.timestamp.floor_to(g.len_us()).get();
            let bucket = Arc::make_mut(self.levels[g.index()].entry(start).or_default());
            for d in Dimension::ALL {
                if !d.granularities().contains(&g) {
                    continue;
                }
                let key = match d {
                    Dimension::Endpoint => &e.endpoint,
                    Dimension::StatusCode => &status,
                    Dimension::Method => &e.method,
                    Dimension::UserId => &e.user_id,
                    Dimension::EndpointStatusClass => &class,
                };
                bucket.cubes[d.index()].add(key, d.keeps_sketch(), e, bin, self.budget);
            }
        }
    }

    /// Adds every cell of `other` to `self`. A bucket `self` lacks is shared,
    /// not copied.
    pub fn merge(&mut self, other: &Rollups) {
        for (level, theirs) in self.levels.iter_mut().zip(&other.levels) {
            for (start, bucket) in theirs {
                let Some(mine) = level.get_mut(start) else {
                    level.insert(*start, bucket.clone());
                    continue;
                };
                let mine = Arc::make_mut(mine);
                for (d, (cube, cells)) in Dimension::ALL
                    .iter()
                    .zip(mine.cubes.iter_mut().zip(&bucket.cubes))
                {
                    cube.merge(cells, self.budget, d.keeps_sketch());
                }
            }
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.levels.iter().all(BTreeMap::is_empty)
    }

    /// Drops the buckets of `g` that start before `cutoff`; returns how many.
    pub(crate) fn drop_before(&mut self, g: Granularity, cutoff: Micros) -> usize {
        let level = &mut self.levels[g.index()];
        let kept = level.split_off(&cutoff.get());
        let dropped = level.len();
        *level = kept;
        dropped
    }

    /// The buckets of `g` starting in `[from, to)` (shared, not copied).
    pub(crate) fn slice(&self, g: Granularity, from: Micros, to: Micros) -> Rollups {
        let mut out = Rollups::new(self.budget);
        out.levels[g.index()] = self.levels[g.index()]
            .range(from.get()..to.get())
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        out
    }

    /// Each granularity with the start of every bucket it holds.
    pub(crate) fn bucket_starts(&self) -> impl Iterator<Item = (Granularity, Micros)> + '_ {
        Granularity::ALL.into_iter().flat_map(move |g| {
            self.levels[g.index()]
                .keys()
                .map(move |s| (g, Micros::new(*s)))
        })
    }

    /// Buckets of `g` held, and the start of the oldest.
    pub(crate) fn extent(&self, g: Granularity) -> (usize, Option<Micros>) {
        let level = &self.levels[g.index()];
        (level.len(), level.keys().next().map(|s| Micros::new(*s)))
    }

    /// The cells as bytes (see docs/format.md, "Rollup file"); keys sorted so the
    /// same rollups always encode the same way.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let buckets: usize = self.levels.iter().map(BTreeMap::len).sum();
        put_varint(&mut out, buckets as u64);
        for (g, level) in [Granularity::Minute, Granularity::Hour, Granularity::Day]
            .iter()
            .zip(&self.levels)
        {
            for (start, bucket) in level {
                out.push(g.index() as u8);
                out.extend_from_slice(&start.to_le_bytes());
                for cube in &bucket.cubes {
                    let mut keys: Vec<&String> = cube.cells.keys().collect();
                    keys.sort();
                    put_varint(&mut out, keys.len() as u64);
                    for k in keys {
                        put_bytes(&mut out, k.as_bytes());
                        put_cell(&mut out, &cube.cells[k]);
                    }
                    match &cube.overflow {
                        None => out.push(0),
                        Some(o) => {
                            out.push(1);
                            put_varint(&mut out, o.floor);
                            put_cell(&mut out, &o.evicted);
                        }
                    }
                }
            }
        }
        out
    }

    pub(crate) fn decode(buf: &[u8], budget: usize) -> Result<Self, CodecError> {
        let bad = |m: &str| CodecError(m.to_owned());
        let mut r = Reader::new(buf);
        let mut out = Rollups::new(budget);
        let buckets = r.len(buf.len())?;
        for _ in 0..buckets {
            let level = usize::from(r.u8()?);
            if level > 2 {
                return Err(bad("unknown granularity"));
            }
            let start = r.i64()?;
            let mut bucket = Bucket::default();
            for cube in &mut bucket.cubes {
                let n = r.len(buf.len())?;
                for _ in 0..n {
                    let key = r.string()?;
                    let cell = get_cell(&mut r, buf.len())?;
                    if cube.cells.insert(key, cell).is_some() {
                        return Err(bad("key listed twice"));
                    }
                }
                cube.overflow = match r.u8()? {
                    0 => None,
                    1 => Some(Overflow {
                        floor: r.varint()?,
                        evicted: get_cell(&mut r, buf.len())?,
                    }),
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
    pub(crate) fn to_file(&self) -> Vec<u8> {
        let raw = self.encode();
        let comp = zstd::bulk::compress(&raw, 3).unwrap_or_default();
        let mut out = Vec::with_capacity(36 + comp.len());
        out.extend_from_slice(FILE_MAGIC);
        out.extend_from_slice(&FILE_VERSION.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(raw.len() as u64).to_le_bytes());
        out.extend_from_slice(&(comp.len() as u64).to_le_bytes());
        out.extend_from_slice(&crc32c::crc32c(&comp).to_le_bytes());
        out.extend_from_slice(&comp);
        out
    }

    pub(crate) fn from_file(buf: &[u8], budget: usize) -> Result<Self, CodecError> {
        let bad = |m: &str| CodecError(m.to_owned());
        if buf.len() < 36 || &buf[..8] != FILE_MAGIC {
            return Err(bad("not a rollup file (bad magic)"));
        }
        let mut r = Reader::new(&buf[8..36]);
        if r.u32()? != FILE_VERSION || r.u32()? != 0 {
            return Err(bad("unsupported rollup file version"));
        }
        let raw_len = usize::try_from(r.u64()?).map_err(|_| bad("raw length too large"))?;
        let comp_len = r.u64()?;
        let crc = r.u32()?;
        let comp = &buf[36..];
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
        Self::decode(&raw, budget)
    }

    /// Calls `f` with the cube of `dim` of every bucket of `g` starting in `[from, to)`.
    pub fn visit<'a>(
        &'a self,
        g: Granularity,
        from: Micros,
        to: Micros,
        dim: Dimension,
        mut f: impl FnMut(&'a Cube),
    ) {
        for (_, bucket) in self.levels[g.index()].range(from.get()..to.get()) {
            f(&bucket.cubes[dim.index()]);
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
            let (zeros, bins) = s.parts();
            put_varint(out, zeros);
            put_varint(out, bins.len() as u64);
            for (key, n) in bins {
                put_varint(out, zigzag(i64::from(*key)));
                put_varint(out, *n);
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
    use super::*;

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
        let back = Rollups::decode(&img, 100).map(|r| r.encode());
        assert_eq!(back.as_deref(), Ok(img.as_slice()));
        a.merge(&b);
        assert_eq!(a.encode(), img);
        for len in 0..img.len() {
            assert!(
                Rollups::decode(&img[..len], 100).is_err(),
                "truncated to {len}"
            );
        }
        let file = all.to_file();
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
    }

    fn zipf_events(n: u64, seed: u64) -> Vec<Event> {
        let mut x = seed;
        let mut next = move || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            x >> 33
        };
        (0..n)
            .map(|i| {
                // Half from a few heavy keys (u1 about a quarter of all), half a long tail.
                let user = match next() % 2 {
                    0 => 1000 / (next() % 1000 + 1),
                    _ => 10_000 + next() % 5_000,
                };
                Event {
                    request_id: format!("r{i}"),
                    timestamp: Micros::new(
                        1_767_225_600_000_000 + (next() % 7_200) as i64 * 1_000_000,
                    ),
                    user_id: format!("u{user}"),
                    endpoint: format!("GET /e{}", user % 5),
                    method: "GET".into(),
                    status_code: [200, 404, 503][(next() % 3) as usize],
                    latency_us: next() % 50_000,
                }
            })
            .collect()
    }

    /// Every key's true count lies within what its bucket says: within
    /// `[count, count + missed]` when present, at most `floor` when absent; and
    /// the cells plus the evicted aggregate hold every request.
    fn check_bounds(r: &Rollups, events: &[Event]) -> usize {
        let mut overflowed = 0;
        for g in [Granularity::Hour, Granularity::Day] {
            let mut truth: HashMap<i64, HashMap<&str, u64>> = HashMap::new();
            for e in events {
                let b = e.timestamp.floor_to(g.len_us()).get();
                *truth.entry(b).or_default().entry(&e.user_id).or_default() += 1;
            }
            for (b, users) in &truth {
                r.visit(
                    g,
                    Micros::new(*b),
                    Micros::new(b + 1),
                    Dimension::UserId,
                    |cube| {
                        let floor = cube.floor();
                        overflowed += usize::from(floor > 0);
                        for (u, t) in users {
                            match cube.get(u) {
                                Some(c) => assert!(
                                    c.count <= *t && *t <= c.count + c.missed,
                                    "{u}: {t} vs {c:?}"
                                ),
                                None => assert!(*t <= floor, "{u}: {t} > floor {floor}"),
                            }
                        }
                        let held: u64 = cube.cells().map(|(_, c)| c.count).sum::<u64>()
                            + cube.overflow().map_or(0, |o| o.evicted.count);
                        assert_eq!(held, users.values().sum::<u64>());
                        assert!(cube.cells.len() <= 10);
                    },
                );
            }
        }
        overflowed
    }

    #[test]
    fn over_budget_buckets_keep_bounds_on_every_key() {
        for seed in 0..12 {
            let events = zipf_events(3_000, seed);
            let mut live = Rollups::new(10);
            for e in &events {
                live.add(e);
            }
            assert!(
                check_bounds(&live, &events) > 0,
                "the test must overflow buckets"
            );
            // Merged from partials as flushes and start-up do: same invariants, and the
            // encoding (overflow included) round-trips.
            for chunk_len in [37, 400] {
                let mut merged = Rollups::new(10);
                for chunk in events.chunks(chunk_len) {
                    let mut part = Rollups::new(10);
                    for e in chunk {
                        part.add(e);
                    }
                    let back = Rollups::from_file(&part.to_file(), 10).map(|r| r.encode());
                    assert_eq!(back.as_deref(), Ok(part.encode().as_slice()));
                    merged.merge(&part);
                }
                check_bounds(&merged, &events);
                // The heaviest key survives: its count is far above any floor.
                let day = Micros::new(1_767_225_600_000_000);
                let to = Micros::new(day.get() + 1);
                merged.visit(Granularity::Day, day, to, Dimension::UserId, |cube| {
                    assert!(cube.get("u1").is_some());
                });
            }
        }
    }

    #[test]
    fn merge_equals_adding_everything() {
        let mut a = Cell::new(true);
        let mut b = Cell::new(true);
        let mut all = Cell::new(true);
        for (i, lat) in [5u64, 0, 700, 12_000, 3].iter().enumerate() {
            let status = [200, 503, 404, 200, 101][i];
            if i % 2 == 0 {
                a.add(status, *lat)
            } else {
                b.add(status, *lat)
            }
            all.add(status, *lat);
        }
        a.merge(&b);
        assert_eq!(a, all);
        assert_eq!(
            (all.count, all.errors(), all.by_class),
            (5, 1, [1, 2, 0, 1, 1])
        );
    }
}
