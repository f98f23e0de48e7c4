//! Rollup cubes: per time bucket (1 minute, 1 hour, 1 day) and per value of a
//! dimension, the count, counts by status class, and latency sum/min/max with
//! a mergeable sketch. Cells are additive, so any set of buckets merges into
//! the same answer the raw rows would give.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

use toplog_types::{Event, Micros};

use crate::codec::{CodecError, Reader, put_bytes, put_varint, unzigzag, zigzag};
use crate::columns::Row;
use crate::keys::{KeyId, Keys};
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
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

    /// `name` as a key of this dimension; `None` if no cube ever had it.
    pub fn key(self, name: &str) -> Option<Key> {
        Keys::of(self).id(name).map(|id| Key { dim: self, id })
    }

    /// `name` as a key of this dimension, interned if new.
    pub fn intern(self, name: &str) -> Key {
        Key {
            dim: self,
            id: Keys::of(self).intern(name),
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

/// A key of one dimension, looked up once to be read in many cubes. Keys of
/// one dimension sort in the order cubes keep their cells
/// ([`Cube::cells_of`]), not by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    dim: Dimension,
    id: KeyId,
}

impl Key {
    /// The key's value, as events spell it.
    pub fn name(self) -> &'static str {
        Keys::of(self.dim).with_names(|name| name(self.id))
    }
}

/// Cells a cube lists in [`Cube::heaviest`].
pub const HEAVIEST_LISTED: usize = 64;

/// One dimension's cells in one bucket. A cube still being added to (the open
/// memtables' rows) holds a [`Cell`] per key; a cube of flushed rows is packed:
/// its cells sorted by key id, each a few bytes (see [`Packed`]).
#[derive(Debug, Clone)]
pub struct Cube {
    dim: Dimension,
    cells: Cells,
    /// Set once the bucket has had more keys than its budget.
    overflow: Option<Box<Overflow>>,
    /// Computed when first asked for and dropped whenever the cube changes
    /// or is packed, so a closed bucket ranks its cells once.
    ranked: OnceLock<Ranked>,
}

/// The order of (count, key) lists: most first, ties by key ascending (a
/// total order, keys being distinct in a list).
pub fn most_first(a: &(u64, &str), b: &(u64, &str)) -> std::cmp::Ordering {
    b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1))
}

/// The [`HEAVIEST_LISTED`] (count, name) of cells `ids` with `counts`, most
/// first, ties by name ascending. Only the cells that can be listed are
/// named and compared by name: those with at least the
/// [`HEAVIEST_LISTED`]-th largest count. A user hour holds thousands of
/// keys, most of them tied at a request or two, and naming and comparing
/// them all was most of ranking it.
fn heaviest_of(dim: Dimension, ids: &[KeyId], counts: &[u64]) -> Box<[(u64, &'static str)]> {
    let cut = if counts.len() > HEAVIEST_LISTED {
        let mut most_first = counts.to_vec();
        *most_first
            .select_nth_unstable_by(HEAVIEST_LISTED - 1, |a, b| b.cmp(a))
            .1
    } else {
        0
    };
    let mut listed: Vec<(u64, &'static str)> = Keys::of(dim).with_names(|name| {
        counts
            .iter()
            .zip(ids)
            .filter(|(n, _)| **n >= cut)
            .map(|(n, id)| (*n, name(*id)))
            .collect()
    });
    if listed.len() > HEAVIEST_LISTED {
        listed.select_nth_unstable_by(HEAVIEST_LISTED - 1, most_first);
        listed.truncate(HEAVIEST_LISTED);
    }
    listed.sort_unstable_by(most_first);
    listed.into_boxed_slice()
}

/// What a cube computes from its counts when first asked: [`Cube::heaviest`]
/// and, packed, the tables [`Cube::count`] and [`Cube::get_counts`] read.
#[derive(Debug, Clone)]
struct Ranked {
    heaviest: Box<[(u64, &'static str)]>,
    lookup: Option<Lookup>,
}

/// A packed cube's key ids to their cells without a search, and their counts
/// without reading the cells: a threshold top-K counts a few keys in every
/// cube of a range, and searching each cube's ids and heads was most of it.
#[derive(Debug, Clone)]
struct Lookup {
    /// When the cube holds at least a quarter of the ids in its span (an
    /// endpoint's day or hour): the position of key id `first + i` among the
    /// cells, plus 1, at `i` (0 for a key without a cell); at most 16 bytes
    /// per cell. Otherwise ids are searched.
    positions: Option<(KeyId, Box<[u32]>)>,
    /// Each cell's count, in cell order; `None` if one does not fit in 32 bits.
    counts: Option<Box<[u32]>>,
}

impl Lookup {
    /// The tables of a packed cube whose sorted key ids are `ids` and their
    /// counts `counts`.
    fn new(ids: &[KeyId], counts: &[u64]) -> Self {
        let counts = counts
            .iter()
            .map(|&n| u32::try_from(n).ok())
            .collect::<Option<Box<[u32]>>>();
        let positions = match (ids.first(), ids.last()) {
            (Some(&first), Some(&last)) if (last - first) as usize / 4 <= ids.len() => {
                let mut at = vec![0u32; (last - first) as usize + 1];
                for (i, id) in ids.iter().enumerate() {
                    at[(id - first) as usize] = i as u32 + 1;
                }
                Some((first, at.into_boxed_slice()))
            }
            _ => None,
        };
        Self { positions, counts }
    }
}

#[derive(Debug, Clone)]
enum Cells {
    Open(HashMap<KeyId, Cell, foldhash::fast::RandomState>),
    Packed(Packed),
}

impl Cube {
    fn new(dim: Dimension) -> Self {
        Self {
            dim,
            cells: Cells::Packed(Packed::default()),
            overflow: None,
            ranked: OnceLock::new(),
        }
    }

    /// Calls `f` with every cell and its key, in no particular order. Without
    /// `sketches`, packed cells come without their sketch (`None`), which is
    /// cheaper; open ones come as they are. `f` must not intern keys of this
    /// cube's dimension (their lock is held).
    pub fn cells(&self, sketches: bool, mut f: impl FnMut(&'static str, &Cell)) {
        Keys::of(self.dim).with_names(|name| self.cells_by_id(sketches, |id, c| f(name(id), c)));
    }

    /// [`Cube::cells`] with each key as a [`Key`], not named.
    pub fn cells_by_key(&self, sketches: bool, mut f: impl FnMut(Key, &Cell)) {
        let dim = self.dim;
        self.cells_by_id(sketches, |id, c| f(Key { dim, id }, c));
    }

    /// [`Cube::cells_by_key`] with each cell's counts alone, as
    /// [`Cube::get_counts`] reads them: a packed cube is read past its cells'
    /// heads, not their latencies.
    pub fn counts_by_key(&self, mut f: impl FnMut(Key, &Cell)) {
        let dim = self.dim;
        let mut cell = Cell::new(false);
        match &self.cells {
            Cells::Open(cells) => {
                for (id, c) in cells {
                    (cell.count, cell.by_class, cell.missed) = (c.count, c.by_class, c.missed);
                    f(Key { dim, id: *id }, &cell);
                }
            }
            Cells::Packed(p) => {
                let mut at = 0;
                for (i, id) in p.ids.iter().enumerate() {
                    let head = Head::read(p.heads.get(at..).unwrap_or_default());
                    at += head.len;
                    p.counts(i, &head, &mut cell);
                    f(Key { dim, id: *id }, &cell);
                }
            }
        }
    }

    /// Calls `f` with the id of every key the cube holds a cell for.
    fn each_id(&self, f: impl FnMut(KeyId)) {
        match &self.cells {
            Cells::Open(cells) => cells.keys().copied().for_each(f),
            Cells::Packed(p) => p.ids.iter().copied().for_each(f),
        }
    }

    fn cells_by_id(&self, sketches: bool, mut f: impl FnMut(KeyId, &Cell)) {
        match &self.cells {
            Cells::Open(cells) => cells.iter().for_each(|(id, c)| f(*id, c)),
            Cells::Packed(p) => p.each(sketches, f),
        }
    }

    /// The cell of `key` (a packed one without its sketch unless `sketches`).
    pub fn get(&self, key: Key, sketches: bool) -> Option<Cow<'_, Cell>> {
        if key.dim != self.dim {
            return None;
        }
        match &self.cells {
            Cells::Open(cells) => cells.get(&key.id).map(Cow::Borrowed),
            Cells::Packed(p) => {
                let i = p.ids.binary_search(&key.id).ok()?;
                let mut cell = Cell::new(false);
                p.unpack(i, sketches, &mut cell);
                Some(Cow::Owned(cell))
            }
        }
    }

    /// The cell of `key` with its counts alone (count, per status class, and
    /// what it may have missed; latencies and sketch left empty), read without
    /// the rest of it.
    pub fn get_counts(&self, key: Key) -> Option<Cell> {
        if key.dim != self.dim {
            return None;
        }
        let mut cell = Cell::new(false);
        match &self.cells {
            Cells::Open(cells) => {
                let c = cells.get(&key.id)?;
                (cell.count, cell.by_class, cell.missed) = (c.count, c.by_class, c.missed);
            }
            Cells::Packed(p) => {
                let i = self.position(p, key.id)?;
                p.counts(i, &p.head(i), &mut cell);
            }
        }
        Some(cell)
    }

    /// Calls `f` with the cells of `keys` (sorted, as [`Key`]s sort) that
    /// this cube has: for many keys, cheaper than a [`Cube::get`] each.
    pub fn cells_of(&self, keys: &[Key], sketches: bool, mut f: impl FnMut(Key, &Cell)) {
        let dim = self.dim;
        let ids = keys.iter().filter(|k| k.dim == dim).map(|k| k.id);
        match &self.cells {
            Cells::Open(cells) => {
                for id in ids {
                    if let Some(c) = cells.get(&id) {
                        f(Key { dim, id }, c);
                    }
                }
            }
            Cells::Packed(p) => p.each_of(ids, sketches, |id, c| f(Key { dim, id }, c)),
        }
    }

    /// The requests of `key` (0 without a cell).
    pub fn count(&self, key: Key) -> u64 {
        if key.dim != self.dim {
            return 0;
        }
        match &self.cells {
            Cells::Open(cells) => cells.get(&key.id).map_or(0, |c| c.count),
            Cells::Packed(p) => {
                let Some(i) = self.position(p, key.id) else {
                    return 0;
                };
                match self.lookup().and_then(|l| l.counts.as_deref()) {
                    Some(counts) => counts.get(i).map_or(0, |&n| u64::from(n)),
                    None => p.head(i).count(),
                }
            }
        }
    }

    /// The tables of a packed cube once [`Cube::heaviest`] has built them.
    fn lookup(&self) -> Option<&Lookup> {
        self.ranked.get().and_then(|r| r.lookup.as_ref())
    }

    /// Where the cell of `id` is among `p`'s cells (`p` is this cube's).
    fn position(&self, p: &Packed, id: KeyId) -> Option<usize> {
        match self.lookup().and_then(|l| l.positions.as_ref()) {
            Some((first, at)) => {
                let n = *at.get(id.checked_sub(*first)? as usize)?;
                (n as usize).checked_sub(1)
            }
            None => p.ids.binary_search(&id).ok(),
        }
    }

    fn contains(&self, id: KeyId) -> bool {
        match &self.cells {
            Cells::Open(cells) => cells.contains_key(&id),
            Cells::Packed(p) => p.ids.binary_search(&id).is_ok(),
        }
    }

    /// Keys with a cell.
    pub fn len(&self) -> usize {
        match &self.cells {
            Cells::Open(cells) => cells.len(),
            Cells::Packed(p) => p.ids.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// (count, key) of the [`HEAVIEST_LISTED`] cells with the most requests,
    /// most first, ties by key ascending: every cell when there are no more.
    pub fn heaviest(&self) -> &[(u64, &'static str)] {
        &self.ranked().heaviest
    }

    fn ranked(&self) -> &Ranked {
        self.ranked.get_or_init(|| {
            let mut ids: Vec<KeyId> = Vec::with_capacity(self.len());
            let mut counts: Vec<u64> = Vec::with_capacity(self.len());
            self.counts_by_key(|k, c| {
                ids.push(k.id);
                counts.push(c.count);
            });
            Ranked {
                heaviest: heaviest_of(self.dim, &ids, &counts),
                lookup: match &self.cells {
                    Cells::Open(_) => None,
                    Cells::Packed(p) => Some(Lookup::new(&p.ids, &counts)),
                },
            }
        })
    }

    /// `None` while every key of the bucket has its own exact cell.
    pub fn overflow(&self) -> Option<&Overflow> {
        self.overflow.as_deref()
    }

    /// No key absent from this cube has more requests in the bucket (0 while
    /// it never exceeded its budget).
    pub fn floor(&self) -> u64 {
        self.overflow.as_ref().map_or(0, |o| o.floor)
    }

    /// The cells, unpacked to be changed.
    fn open(&mut self) -> &mut HashMap<KeyId, Cell, foldhash::fast::RandomState> {
        self.ranked.take();
        if let Cells::Packed(p) = &self.cells {
            let mut cells = HashMap::with_capacity_and_hasher(p.ids.len(), Default::default());
            p.each(true, |id, cell| {
                cells.insert(id, cell.clone());
            });
            self.cells = Cells::Open(cells);
        }
        match &mut self.cells {
            Cells::Open(cells) => cells,
            Cells::Packed(_) => unreachable!("opened above"),
        }
    }

    /// Packs the cells: done with a cube once no more requests are added to it.
    fn pack(&mut self) {
        if let Cells::Open(cells) = &self.cells {
            self.ranked.take();
            let packed = Packed::new(cells.iter().map(|(k, c)| (*k, c)).collect());
            self.cells = Cells::Packed(packed);
        }
    }

    fn is_packed(&self) -> bool {
        matches!(self.cells, Cells::Packed(_))
    }

    /// Counts a request in the cell of `key`, created (with what it may have
    /// missed) if absent.
    fn add(&mut self, key: KeyId, sketch: bool, r: &Row<'_>, bin: Option<i32>, budget: usize) {
        let floor = self.floor();
        let cells = self.open();
        if let Some(cell) = cells.get_mut(&key) {
            cell.add_binned(r.status, r.latency_us, bin);
            return;
        }
        let mut cell = Cell::new(sketch);
        cell.missed = floor;
        cell.add_binned(r.status, r.latency_us, bin);
        cells.insert(key, cell);
        self.enforce_budget(budget, sketch);
    }

    /// Adds `other`'s cells. A key present on one side only may have up to the
    /// other side's floor of requests there, so its `missed` grows by that floor.
    fn merge(&mut self, other: &Cube, budget: usize, sketch: bool) {
        let (mine, theirs) = (self.floor(), other.floor());
        let cells = self.open();
        if theirs > 0 {
            for (k, c) in cells.iter_mut() {
                if !other.contains(*k) {
                    c.missed += theirs;
                }
            }
        }
        other.cells_by_id(true, |k, cell| match cells.get_mut(&k) {
            Some(c) => c.merge(cell),
            None => {
                let mut cell = cell.clone();
                cell.missed += mine;
                cells.insert(k, cell);
            }
        });
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
    /// key, so the outcome does not depend on hash or id order) down to 7/8 of
    /// the budget, so eviction costs O(1) per key amortised.
    fn enforce_budget(&mut self, budget: usize, sketch: bool) {
        if self.len() <= budget {
            return;
        }
        let keys = Keys::of(self.dim);
        let cells = self.open();
        let keep = (budget - budget / 8).max(1);
        let evict = cells.len() - keep;
        let victims: Vec<KeyId> = keys.with_names(|name| {
            let mut order: Vec<(u64, &str, KeyId)> = cells
                .iter()
                .map(|(k, c)| (c.count + c.missed, name(*k), *k))
                .collect();
            order.select_nth_unstable(evict - 1);
            order[..evict].iter().map(|(_, _, k)| *k).collect()
        });
        let overflow = self.overflow.get_or_insert_with(|| {
            Box::new(Overflow {
                floor: 0,
                evicted: Cell::new(sketch),
            })
        });
        let Cells::Open(cells) = &mut self.cells else {
            return;
        };
        for k in victims {
            if let Some(c) = cells.remove(&k) {
                overflow.floor = overflow.floor.max(c.count + c.missed);
                overflow.evicted.merge(&c);
            }
        }
        overflow.evicted.missed = 0;
        // Rehash without the tombstones the removals left, so the table keeps
        // the size of the budget instead of doubling past it.
        cells.shrink_to(budget);
    }
}

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
struct Packed {
    ids: Box<[KeyId]>,
    /// Where every [`MARK_EVERY`]-th cell's head and body start: the others
    /// are found by reading past the cells before them. Counting reads past
    /// heads only, a few bytes each.
    marks: Box<[(u32, u32)]>,
    heads: Box<[u8]>,
    bodies: Box<[u8]>,
}

/// Cells of a [`Packed`] per mark: a lookup reads past at most this many less one.
const MARK_EVERY: usize = 4;

impl Packed {
    /// Packs `cells` (owned or borrowed: sorting references moves 16 bytes a
    /// cell instead of the whole cell).
    fn new<C: std::borrow::Borrow<Cell>>(mut cells: Vec<(KeyId, C)>) -> Self {
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

    /// Sets `cell`'s counts (count, per status class, missed) to those of
    /// cell `i`, whose head is `head`, and its latencies to none.
    fn counts(&self, i: usize, head: &Head, cell: &mut Cell) {
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
    fn head(&self, i: usize) -> Head {
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
    fn unpack(&self, i: usize, sketches: bool, into: &mut Cell) {
        let mut at = self.mark(i);
        for _ in 0..i % MARK_EVERY {
            self.skip(&mut at);
        }
        self.read(&mut at, sketches, into);
    }

    /// Calls `f` with the cells of `ids` (ascending) that exist, walking the
    /// cells in order: a key is found from the previous one or from its mark,
    /// never reading past more than [`MARK_EVERY`] - 1 cells.
    fn each_of(
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
    fn each(&self, sketches: bool, mut f: impl FnMut(KeyId, &Cell)) {
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

fn pack_cell(heads: &mut Vec<u8>, bodies: &mut Vec<u8>, c: &Cell) {
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

/// A packed cell's head, read (bytes this process packed: a read past the end
/// gives 0, it never panics).
#[derive(Debug, Clone, Copy)]
struct Head {
    flags: u8,
    by_class: [u64; 5],
    /// A cell of one request (see [`pack_cell`]).
    single: bool,
    /// Bytes of the head.
    len: usize,
}

impl Head {
    fn read(bytes: &[u8]) -> Self {
        let flags = bytes.first().copied().unwrap_or(0);
        let mut r = Varints { bytes, pos: 1 };
        let mut by_class = [0; 5];
        let mut single = false;
        for (i, n) in by_class.iter_mut().enumerate() {
            if flags & (1 << i) != 0 {
                *n = match r.next() {
                    0 => {
                        single = true;
                        1
                    }
                    n => n,
                };
            }
        }
        Self {
            flags,
            by_class,
            single,
            len: r.pos,
        }
    }

    fn count(&self) -> u64 {
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

/// One bucket: a cube per dimension.
#[derive(Debug, Clone)]
struct Bucket {
    cubes: [Cube; 5],
}

impl Bucket {
    fn new() -> Self {
        Self {
            cubes: Dimension::ALL.map(Cube::new),
        }
    }

    /// An empty bucket whose cubes have room for `cells` cells each (by
    /// [`Dimension::index`]), so filling it does not grow its maps step by step.
    fn with_room(cells: [usize; 5]) -> Self {
        let mut bucket = Self::new();
        for (cube, n) in bucket.cubes.iter_mut().zip(cells) {
            if n > 0 {
                cube.cells = Cells::Open(HashMap::with_capacity_and_hasher(n, Default::default()));
            }
        }
        bucket
    }

    /// Cells per cube, by [`Dimension::index`].
    fn sizes(&self) -> [usize; 5] {
        [0, 1, 2, 3, 4].map(|i| self.cubes[i].len())
    }

    /// This bucket with every cube packed: itself if they are already.
    fn packed(bucket: &Arc<Bucket>) -> Arc<Bucket> {
        if bucket.is_packed() {
            return bucket.clone();
        }
        let mut b = Bucket::clone(bucket);
        b.pack();
        Arc::new(b)
    }

    fn is_packed(&self) -> bool {
        self.cubes.iter().all(Cube::is_packed)
    }

    fn pack(&mut self) {
        self.cubes.iter_mut().for_each(Cube::pack);
    }
}

/// Buckets per granularity that [`Rollups::add`] keeps open.
const OPEN_BUCKETS: usize = 4;

/// Every bucket of every granularity: the cubes of a set of requests.
/// Buckets are shared between clones and copied when first changed, so a
/// clone costs a pointer per bucket.
#[derive(Debug, Clone)]
pub struct Rollups {
    levels: [BTreeMap<i64, Arc<Bucket>>; 3],
    /// Most keys a cube bucket holds cells for.
    budget: usize,
    /// Per granularity, the starts of the buckets [`Rollups::add`] wrote to
    /// last, least recent first: every other bucket is packed.
    open: [Vec<i64>; 3],
    /// Per granularity, the cells per cube of the bucket packed last: the
    /// room a new bucket is made with.
    room: [[usize; 5]; 3],
}

impl Default for Rollups {
    fn default() -> Self {
        Self::new(crate::engine::DEFAULT_ROLLUP_KEY_BUDGET)
    }
}

/// The ids of `r`'s keys, by [`Dimension::index`]. The keys made of numbers
/// (the status code, the endpoint x class) are remembered per thread by the
/// numbers, so no key string is built for them: ids never change.
pub(crate) fn key_ids(r: &Row<'_>) -> [KeyId; 5] {
    type Derived = HashMap<(KeyId, u16), KeyId, foldhash::fast::RandomState>;
    thread_local! {
        /// (u32::MAX, status code) -> status key; (endpoint, class) -> endpoint x class key.
        static DERIVED: std::cell::RefCell<Derived> = Default::default();
    }
    let id = |d: Dimension, name: &str| Keys::of(d).intern(name);
    let endpoint = id(Dimension::Endpoint, r.endpoint);
    let class = r.status / 100;
    let (status, endpoint_class) = DERIVED.with_borrow_mut(|derived| {
        let status = *derived
            .entry((KeyId::MAX, r.status))
            .or_insert_with(|| id(Dimension::StatusCode, &r.status.to_string()));
        let endpoint_class = *derived.entry((endpoint, class)).or_insert_with(|| {
            id(
                Dimension::EndpointStatusClass,
                &Dimension::endpoint_class_key(class, r.endpoint),
            )
        });
        (status, endpoint_class)
    });
    let mut ids = [0; 5];
    ids[Dimension::Endpoint.index()] = endpoint;
    ids[Dimension::StatusCode.index()] = status;
    ids[Dimension::Method.index()] = id(Dimension::Method, r.method);
    ids[Dimension::UserId.index()] = id(Dimension::UserId, r.user_id);
    ids[Dimension::EndpointStatusClass.index()] = endpoint_class;
    ids
}

impl Rollups {
    /// Empty cubes whose buckets keep cells for at most `budget` keys each.
    pub fn new(budget: usize) -> Self {
        Self {
            levels: Default::default(),
            budget: budget.max(1),
            open: Default::default(),
            room: Default::default(),
        }
    }

    /// Counts `e` in the bucket of each granularity of each cube.
    pub fn add(&mut self, e: &Event) {
        let row = Row::of(e);
        self.add_keyed(&row, &key_ids(&row));
    }

    /// [`Rollups::add`] of a row borrowed from where it is stored (a log
    /// entry), whose keys' ids ([`key_ids`]) the caller looked up, once for
    /// all granularities and the memtable.
    pub(crate) fn add_keyed(&mut self, r: &Row<'_>, ids: &[KeyId; 5]) {
        let bin = LatencySketch::bin(r.latency_us);
        for g in Granularity::ALL {
            let start = Micros::new(r.ts).floor_to(g.len_us()).get();
            self.keep_open(g, start);
            let room = self.room[g.index()];
            let bucket = self.levels[g.index()]
                .entry(start)
                .or_insert_with(|| Arc::new(Bucket::with_room(room)));
            let bucket = Arc::make_mut(bucket);
            for d in Dimension::ALL {
                if d.granularities().contains(&g) {
                    bucket.cubes[d.index()].add(
                        ids[d.index()],
                        d.keeps_sketch(),
                        r,
                        bin,
                        self.budget,
                    );
                }
            }
        }
    }

    /// Notes that the bucket of `g` at `start` is written to. Of the buckets
    /// written to, the [`OPEN_BUCKETS`] most recent stay open and the one
    /// falling out is packed: requests arrive roughly in time order (a backfill
    /// and live traffic at once are two such streams), so a bucket left behind
    /// is done with, and packed its cells take a tenth of the memory. A late
    /// request unpacks it again.
    fn keep_open(&mut self, g: Granularity, start: i64) {
        let open = &mut self.open[g.index()];
        if open.last() == Some(&start) {
            return;
        }
        open.retain(|s| *s != start);
        open.push(start);
        if open.len() > OPEN_BUCKETS {
            let done = open.remove(0);
            if let Some(bucket) = self.levels[g.index()].get_mut(&done) {
                self.room[g.index()] = bucket.sizes();
                Arc::make_mut(bucket).pack();
            }
        }
    }

    /// Adds every cell of `other` to `self`, packing each bucket it changes:
    /// what is merged into is closed. A bucket `self` lacks is shared, not
    /// copied, once packed.
    pub fn merge(&mut self, other: &Rollups) {
        for (level, theirs) in self.levels.iter_mut().zip(&other.levels) {
            for (start, bucket) in theirs {
                let Some(mine) = level.get_mut(start) else {
                    level.insert(*start, Bucket::packed(bucket));
                    continue;
                };
                let mine = Arc::make_mut(mine);
                for (d, (cube, cells)) in Dimension::ALL
                    .iter()
                    .zip(mine.cubes.iter_mut().zip(&bucket.cubes))
                {
                    cube.merge(cells, self.budget, d.keeps_sketch());
                    cube.pack();
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

    /// The remembered ids of number keys are the ids of the keys' names, on
    /// first sight and after.
    #[test]
    fn key_ids_are_the_ids_of_the_key_names() {
        for round in 0..2 {
            for (i, status) in [200, 201, 404, 503, 599, 100].into_iter().enumerate() {
                let e = Event {
                    request_id: "r".into(),
                    timestamp: Micros::new(0),
                    user_id: format!("key-ids-user-{i}"),
                    endpoint: format!("GET /key-ids/{}", i % 3),
                    method: "GET".into(),
                    status_code: status,
                    latency_us: 5,
                };
                let by_name = Dimension::ALL.map(|d| Keys::of(d).intern(&d.key_of(&e)));
                assert_eq!(
                    key_ids(&Row::of(&e)),
                    by_name,
                    "round {round}, status {status}"
                );
            }
        }
    }

    /// A cube's heaviest list is the head of all its cells sorted by count
    /// (most first) then key, whatever the ties at the list's end.
    #[test]
    fn heaviest_lists_the_head_of_the_full_order() {
        let dim = Dimension::UserId;
        let mut seed = 7u64;
        for (n, spread) in [
            (0, 1),
            (1, 1),
            (63, 2),
            (64, 2),
            (65, 2),
            (500, 3),
            (5000, 3),
            (5000, 1000),
        ] {
            // Names interned out of name order, so id order is not name order.
            let ids: Vec<KeyId> = (0..n)
                .map(|i| {
                    Keys::of(dim).intern(&format!("heaviest-{spread}-{}", (i * 7919) % n.max(1)))
                })
                .collect();
            let counts: Vec<u64> = (0..n)
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (seed >> 33) % spread + 1
                })
                .collect();
            let mut want: Vec<(u64, &'static str)> = Keys::of(dim).with_names(|name| {
                counts
                    .iter()
                    .zip(&ids)
                    .map(|(c, id)| (*c, name(*id)))
                    .collect()
            });
            want.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
            want.truncate(HEAVIEST_LISTED);
            assert_eq!(
                &*heaviest_of(dim, &ids, &counts),
                &want[..],
                "{n} keys, counts 1 to {spread}"
            );
        }
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
                            match Dimension::UserId.key(u).and_then(|k| cube.get(k, false)) {
                                Some(c) => assert!(
                                    c.count <= *t && *t <= c.count + c.missed,
                                    "{u}: {t} vs {c:?}"
                                ),
                                None => assert!(*t <= floor, "{u}: {t} > floor {floor}"),
                            }
                        }
                        let mut held = cube.overflow().map_or(0, |o| o.evicted.count);
                        cube.cells(false, |_, c| held += c.count);
                        assert_eq!(held, users.values().sum::<u64>());
                        assert!(cube.len() <= 10);
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
                    let back = Rollups::from_file(&part.to_file(FLUSH_FILE_LEVEL).unwrap(), 10)
                        .map(|r| r.encode());
                    assert_eq!(back.as_deref(), Ok(part.encode().as_slice()));
                    merged.merge(&part);
                }
                check_bounds(&merged, &events);
                // The heaviest key survives: its count is far above any floor.
                let day = Micros::new(1_767_225_600_000_000);
                let to = Micros::new(day.get() + 1);
                merged.visit(Granularity::Day, day, to, Dimension::UserId, |cube| {
                    assert!(cube.count(Dimension::UserId.key("u1").unwrap()) > 0);
                });
            }
        }
    }

    #[test]
    fn a_ranked_cube_counts_as_its_cells_say() {
        // Endpoints, so the test's keys are interned apart from other tests'.
        let keys = Keys::of(Dimension::Endpoint);
        let ids: Vec<KeyId> = (0..400)
            .map(|i| keys.intern(&format!("GET /ranked/{i}")))
            .collect();
        let cell = |n: u64| {
            let mut c = Cell::new(false);
            for _ in 0..n.min(3) {
                c.add(200, n);
            }
            (c.count, c.by_class[1]) = (n, n);
            c
        };
        // Dense: every other id of a run (positions are tabled); sparse: every
        // 20th (ids are searched); a count past u32::MAX (read from the heads).
        let dense: Vec<KeyId> = ids[..200].iter().copied().step_by(2).collect();
        let sparse: Vec<KeyId> = ids.iter().copied().step_by(20).collect();
        for (which, present, big) in [
            ("dense", &dense, false),
            ("sparse", &sparse, false),
            ("dense, big", &dense, true),
            ("sparse, big", &sparse, true),
        ] {
            let counts = |i: usize| {
                if big && i == 3 {
                    5_000_000_000
                } else {
                    (i as u64 * 7) % 50 + 1
                }
            };
            let cells: Vec<(KeyId, Cell)> = present
                .iter()
                .enumerate()
                .map(|(i, id)| (*id, cell(counts(i))))
                .collect();
            let cube = Cube {
                dim: Dimension::Endpoint,
                cells: Cells::Packed(Packed::new(cells.clone())),
                overflow: None,
                ranked: OnceLock::new(),
            };
            let plain = cube.clone();
            let heaviest = cube.heaviest();
            assert_eq!(
                heaviest.len(),
                present.len().min(HEAVIEST_LISTED),
                "{which}"
            );
            assert!(heaviest.windows(2).all(|w| w[0].0 >= w[1].0), "{which}");
            let lookup = cube.lookup().unwrap();
            // Tabled when the ids span at most 4 per cell (keys other tests
            // intern in the same process can widen the span).
            let span = (present[present.len() - 1] - present[0]) as usize + 1;
            assert_eq!(
                lookup.positions.is_some(),
                span / 4 <= present.len(),
                "{which}"
            );
            assert_eq!(lookup.counts.is_none(), big, "{which}");
            // Every key, with a cell or not, and ids past either end of the span.
            for id in ids.iter().copied().chain([0, u32::MAX]) {
                let key = Key {
                    dim: Dimension::Endpoint,
                    id,
                };
                let want = cells.iter().find(|(k, _)| *k == id).map(|(_, c)| c.count);
                assert_eq!(cube.count(key), want.unwrap_or(0), "{which}: id {id}");
                assert_eq!(plain.count(key), want.unwrap_or(0), "{which}: id {id}");
                let got = cube.get_counts(key);
                assert_eq!(got.as_ref().map(|c| c.count), want, "{which}: id {id}");
                assert_eq!(
                    got.map(|c| c.by_class),
                    plain.get_counts(key).map(|c| c.by_class)
                );
            }
        }
    }

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
