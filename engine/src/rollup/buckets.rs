//! The bucket set: every bucket of every granularity, a cube per dimension
//! each, shared between clones and copied on first change. Requests are
//! added to the few most recent buckets, which stay open; the rest are packed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use toplog_types::{Event, Micros};

use super::cube::{Cells, Cube};
use super::dimension::{Dimension, Granularity, key_ids};
use crate::columns::Row;
use crate::keys::KeyId;
use crate::sketch::LatencySketch;

/// One bucket: a cube per dimension.
#[derive(Debug, Clone)]
pub(super) struct Bucket {
    pub(super) cubes: [Cube; 5],
}

impl Bucket {
    pub(super) fn new() -> Self {
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
    pub(super) levels: [BTreeMap<i64, Arc<Bucket>>; 3],
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
        self.take_before(g, cutoff).levels[g.index()].len()
    }

    /// Takes out the buckets of `g` that start before `cutoff` (shared, not copied).
    pub(crate) fn take_before(&mut self, g: Granularity, cutoff: Micros) -> Rollups {
        let mut cutoffs = [Micros::new(i64::MIN); 3];
        cutoffs[g.index()] = cutoff;
        self.take_before_each(cutoffs)
    }

    /// Takes out the buckets of every granularity that start before its
    /// cutoff, by [`Granularity::index`] (shared, not copied).
    pub(crate) fn take_before_each(&mut self, cutoffs: [Micros; 3]) -> Rollups {
        let mut out = Rollups::new(self.budget);
        for ((level, taken), cutoff) in self.levels.iter_mut().zip(&mut out.levels).zip(cutoffs) {
            let kept = level.split_off(&cutoff.get());
            *taken = std::mem::replace(level, kept);
        }
        out
    }

    /// Bytes its buckets hold, cells included.
    pub(crate) fn heap_bytes(&self) -> usize {
        let buckets = self.levels.iter().flat_map(BTreeMap::values);
        buckets
            .map(|b| b.cubes.iter().map(Cube::heap_bytes).sum::<usize>() + 64)
            .sum()
    }

    /// The buckets of `g` starting in `[from, to)` (shared, not copied).
    pub(crate) fn slice(&self, g: Granularity, from: Micros, to: Micros) -> Rollups {
        let mut out = Rollups::new(self.budget);
        out.levels[g.index()] = self.levels[g.index()]
            .range(from.get()..to.get().max(from.get()))
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

    /// Calls `f` with the cube of `dim` of every bucket of `g` starting in `[from, to)`.
    pub fn visit<'a>(
        &'a self,
        g: Granularity,
        from: Micros,
        to: Micros,
        dim: Dimension,
        mut f: impl FnMut(&'a Cube),
    ) {
        // Empty when `from >= to` (a range wholly past retention): the map's
        // range lookup would panic on a reversed range.
        for (_, bucket) in self.levels[g.index()].range(from.get()..to.get().max(from.get())) {
            f(&bucket.cubes[dim.index()]);
        }
    }
}
