//! A cube: one dimension's cells in one bucket, open (a map being added to)
//! or packed; its ranking (the heaviest keys, and lookup tables for counting
//! a few keys fast), and its key budget, past which it evicts the lightest
//! keys into an [`Overflow`] summary.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use super::cell::Cell;
use super::dimension::{Dimension, Key};
use super::packed::{Head, Packed};
use crate::columns::Row;
use crate::keys::{KeyId, Keys};

/// Keys evicted from cube buckets past their budget, since the process started.
static EVICTED: AtomicU64 = AtomicU64::new(0);

/// Keys evicted from cube buckets past their key budget since the process
/// started (their counts live on in the bucket's overflow bounds).
pub(crate) fn evicted_keys() -> u64 {
    EVICTED.load(Ordering::Relaxed)
}

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

/// One dimension's cells in one bucket. A cube still being added to (the open
/// memtables' rows) holds a [`Cell`] per key; a cube of flushed rows is packed:
/// its cells sorted by key id, each a few bytes (see [`Packed`]).
#[derive(Debug, Clone)]
pub struct Cube {
    pub(super) dim: Dimension,
    pub(super) cells: Cells,
    /// Set once the bucket has had more keys than its budget.
    pub(super) overflow: Option<Box<Overflow>>,
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
pub(super) enum Cells {
    Open(HashMap<KeyId, Cell, foldhash::fast::RandomState>),
    Packed(Packed),
}

impl Cube {
    pub(super) fn new(dim: Dimension) -> Self {
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
    pub(super) fn each_id(&self, f: impl FnMut(KeyId)) {
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
    pub(super) fn pack(&mut self) {
        if let Cells::Open(cells) = &self.cells {
            self.ranked.take();
            let packed = Packed::new(cells.iter().map(|(k, c)| (*k, c)).collect());
            self.cells = Cells::Packed(packed);
        }
    }

    /// Bytes it holds, its cells' included (not the tables ranking adds).
    pub(super) fn heap_bytes(&self) -> usize {
        match &self.cells {
            Cells::Open(cells) => cells.values().map(|c| c.bytes() + 16).sum(),
            Cells::Packed(p) => p.heap_bytes(),
        }
    }

    pub(super) fn is_packed(&self) -> bool {
        matches!(self.cells, Cells::Packed(_))
    }

    /// Counts a request in the cell of `key`, created (with what it may have
    /// missed) if absent.
    pub(super) fn add(
        &mut self,
        key: KeyId,
        sketch: bool,
        r: &Row<'_>,
        bin: Option<i32>,
        budget: usize,
    ) {
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
    pub(super) fn merge(&mut self, other: &Cube, budget: usize, sketch: bool) {
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
        EVICTED.fetch_add(victims.len() as u64, Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use toplog_types::{Event, Micros};

    use crate::rollup::{FLUSH_FILE_LEVEL, Granularity, Rollups};

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
}
