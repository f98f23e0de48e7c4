//! Top-K: merge cells by key over the plan's pieces, compute the metric, keep K.
//! Ties break by key in ascending byte order.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use toplog_engine::{
    Cell, Cube, Cutoffs, Dimension, Engine, Filters, Granularity, HEAVIEST_LISTED, Key, RawCells,
    SketchSum, TimeRange, most_first,
};

use crate::metric::Missed;
use crate::plan::{Piece, plan, retained};
use crate::{Metric, QueryError, Result};

/// What rows are ranked: groups of requests by a dimension, or single requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grouping {
    By(Dimension),
    Request,
}

impl Grouping {
    pub const NAMES: [&'static str; 5] =
        ["endpoint", "user_id", "status_code", "method", "request"];

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "endpoint" => Self::By(Dimension::Endpoint),
            "user_id" => Self::By(Dimension::UserId),
            "status_code" => Self::By(Dimension::StatusCode),
            "method" => Self::By(Dimension::Method),
            "request" => Self::Request,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    #[default]
    Desc,
    Asc,
}

/// A top-K question.
#[derive(Debug, Clone)]
pub struct TopK {
    pub k: usize,
    pub metric: Metric,
    pub by: Grouping,
    pub range: TimeRange,
    pub filters: Filters,
    /// Groups with fewer requests are left out.
    pub min_count: u64,
    pub order: Order,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TopKRow {
    pub key: String,
    pub value: f64,
    pub count: u64,
    /// Bounds of the true value when `value` is approximate.
    pub bounds: Option<(f64, f64)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TopKAnswer {
    pub rows: Vec<TopKRow>,
    pub exact: bool,
    /// When cube buckets over their key budget were read, a key missing from the
    /// whole answer has at most this many requests in the range (0 otherwise).
    pub unlisted_max_count: u64,
    /// Which sources were read: `rollup_1d`, `rollup_1h`, `rollup_1m`, `raw`.
    pub sources: Vec<&'static str>,
    /// Set when the range starts before the data still kept: the answer is
    /// for the range from this instant on.
    pub retained_from: Option<toplog_types::Micros>,
}

/// How a cube can answer a grouping under some filters.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CubeRead {
    /// The grouping's own cube, keeping only `key` when the grouped dimension is filtered.
    Direct { key: Option<String> },
    /// Endpoints within one status class, from the endpoint x class cube.
    EndpointInClass { class: u8, endpoint: Option<String> },
}

/// `None` when no cube applies the filters (the raw rows must be read).
fn cube_read(dim: Dimension, f: &Filters) -> Option<CubeRead> {
    if f.request_id.is_some() {
        return None;
    }
    let others = |own: Dimension| {
        [
            (Dimension::Endpoint, f.endpoint.is_some()),
            (Dimension::UserId, f.user_id.is_some()),
            (Dimension::Method, f.method.is_some()),
            (Dimension::StatusCode, f.status_code.is_some()),
        ]
        .iter()
        .any(|(d, set)| *set && *d != own)
    };
    if others(dim) {
        return None;
    }
    match (dim, f.status_class) {
        (Dimension::Endpoint, Some(class)) => Some(CubeRead::EndpointInClass {
            class,
            endpoint: f.endpoint.clone(),
        }),
        (_, Some(_)) => None,
        (Dimension::Endpoint, None) => Some(CubeRead::Direct {
            key: f.endpoint.clone(),
        }),
        (Dimension::UserId, None) => Some(CubeRead::Direct {
            key: f.user_id.clone(),
        }),
        (Dimension::Method, None) => Some(CubeRead::Direct {
            key: f.method.clone(),
        }),
        (Dimension::StatusCode, None) => Some(CubeRead::Direct {
            key: f.status_code.map(|s| s.to_string()),
        }),
        (Dimension::EndpointStatusClass, None) => Some(CubeRead::Direct { key: None }),
    }
}

/// [`cube_read`] for a metric: `None` also when it asks quantiles of the user
/// cube, which keeps no sketch (they are read from raw rows).
fn cube_read_for(dim: Dimension, f: &Filters, metric: Metric) -> Option<CubeRead> {
    cube_read(dim, f).filter(|_| !(dim == Dimension::UserId && metric.quantile().is_some()))
}

/// Cells merged by key over a range, and what over-budget cube buckets left uncertain.
#[derive(Debug)]
pub(crate) struct Merged {
    /// The dimension grouped by.
    dim: Dimension,
    /// By key, raw rows' keys interned as the cubes' are.
    groups: HashMap<Key, Group, foldhash::fast::RandomState>,
    /// Sum of the floors of every over-budget cube bucket read: a key absent from
    /// all of them has at most this many requests in the range.
    floor: u64,
    /// The requests of keys those buckets evicted.
    evicted: Option<Cell>,
    /// Whether any group could have a sketch (quantile metrics).
    sketches: bool,
    /// Whether cube cells are read for their counts alone (the metric needs
    /// no latency): a packed cube is then read past its cells' heads only.
    counts_only: bool,
    /// Only some keys of the cubes were read (a filter on the grouped
    /// dimension or a status class): the evicted cells also hold other keys.
    subset: bool,
}

#[derive(Debug)]
pub(crate) struct Group {
    pub(crate) cell: Cell,
    /// Floors of the over-budget buckets this key was present in.
    floors_seen: u64,
    /// With sketches: the cells' sketches added up, `None` once a cell
    /// without one was merged (quantiles cannot be answered). Moved into
    /// `cell` by [`Merged::finish`].
    sketches: Option<SketchSum>,
}

impl Merged {
    fn new(dim: Dimension, sketches: bool) -> Self {
        Self {
            dim,
            groups: HashMap::default(),
            floor: 0,
            evicted: None,
            sketches,
            counts_only: false,
            subset: false,
        }
    }

    /// The groups, by key value, in no particular order.
    pub(crate) fn groups(&self) -> impl Iterator<Item = (&str, &Group)> {
        self.groups.iter().map(|(k, g)| (k.name(), g))
    }

    /// The group of the key `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&Group> {
        self.groups.get(&self.dim.key(name)?)
    }

    /// Merges `cell` into the group of the key `name` (interned if new: raw
    /// rows may hold a key no cube has, such as one a budget evicted before a
    /// restart).
    fn add(&mut self, name: &str, cell: &Cell, floor: u64) {
        let key = self.dim.intern(name);
        self.add_to(key, cell, floor);
    }

    /// Merges `cell` into `key`'s group. Without sketches the merged cell drops
    /// its sketch, so count-only metrics never copy or merge bins.
    fn add_to(&mut self, key: Key, cell: &Cell, floor: u64) {
        let g = self.groups.entry(key).or_insert_with(|| Group {
            cell: Cell::new(false),
            floors_seen: 0,
            sketches: self.sketches.then(SketchSum::default),
        });
        // The sketch is summed apart: `Cell::merge` leaves a cell without one as it is.
        g.cell.merge(cell);
        g.floors_seen += floor;
        if let Some(sum) = &mut g.sketches {
            match &cell.sketch {
                Some(s) => sum.add(s),
                None => g.sketches = None,
            }
        }
    }

    /// Puts each group's summed sketch in its cell: done once every cell is in.
    fn finish(mut self) -> Self {
        for g in self.groups.values_mut() {
            g.cell.sketch = g.sketches.take().map(|sum| sum.sketch());
        }
        self
    }

    /// Reads every cell of a cube of the grouped dimension.
    fn add_whole_cube(&mut self, cube: &Cube) {
        let floor = cube.floor();
        if self.counts_only {
            cube.counts_by_key(|k, cell| self.add_to(k, cell, floor));
        } else {
            cube.cells_by_key(self.sketches, |k, cell| self.add_to(k, cell, floor));
        }
        self.note_overflow(cube);
    }

    /// Reads one cube bucket: `pick` maps a cube key to the group it counts for, if any.
    fn add_cube(
        &mut self,
        cube: &Cube,
        mut pick: impl FnMut(&'static str) -> Option<&'static str>,
    ) {
        let floor = cube.floor();
        cube.cells(self.sketches, |k, cell| {
            if let Some(group) = pick(k) {
                self.add(group, cell, floor);
            }
        });
        self.note_overflow(cube);
    }

    fn note_overflow(&mut self, cube: &Cube) {
        if let Some(o) = cube.overflow() {
            self.floor += o.floor;
            self.evicted
                .get_or_insert_with(|| Cell::new(self.sketches))
                .merge(&o.evicted);
        }
    }

    /// True when no over-budget bucket was read: every cell is exact.
    pub(crate) fn exact(&self) -> bool {
        self.floor == 0
    }

    /// At most this many requests of a key absent from `groups`.
    pub(crate) fn unlisted_max(&self) -> u64 {
        self.floor
    }

    /// What `g`'s cell may be missing.
    pub(crate) fn missed(&self, g: &Group) -> Missed {
        let requests = g.cell.missed + (self.floor - g.floors_seen.min(self.floor));
        let (latency_min_us, latency_max_us) = self
            .evicted
            .as_ref()
            .filter(|e| e.count > 0)
            .map_or((0, 0), |e| (e.latency_min_us, e.latency_max_us));
        Missed {
            requests,
            latency_min_us,
            latency_max_us,
        }
    }

    /// Every request in the range that matches, and what it may be missing.
    /// Reading whole cubes it is exact: the evicted cells hold every request
    /// of an evicted key. Reading some keys only, the matching requests of
    /// evicted keys are among the evicted ones, which bounds what is missing.
    pub(crate) fn total(&self) -> (Cell, Missed) {
        let mut total = Cell::new(self.sketches);
        for g in self.groups.values() {
            total.merge(&g.cell);
        }
        let mut missed = Missed::default();
        if let Some(e) = &self.evicted {
            if self.subset {
                missed = Missed {
                    requests: e.count,
                    latency_min_us: e.latency_min_us,
                    latency_max_us: e.latency_max_us,
                };
            } else {
                total.merge(e);
            }
        }
        total.missed = 0;
        (total, missed)
    }
}

/// Cells of `dim` over `range` matching `filters`, merged by key from the
/// coarsest rollups that cover the range and raw rows at its edges (or from raw
/// rows alone when no cube can apply the filters). `note` hears each source used.
pub(crate) fn merged_cells(
    engine: &Engine,
    range: TimeRange,
    dim: Dimension,
    filters: &Filters,
    metric: Metric,
    note: impl FnMut(&'static str),
) -> Result<Merged> {
    let one = merged_cells_in(engine, &[range], dim, filters, metric, note)?;
    // One range in, one merge out.
    let sketches = metric.quantile().is_some();
    Ok(one
        .into_iter()
        .next()
        .unwrap_or_else(|| Merged::new(dim, sketches)))
}

/// [`merged_cells`] for each of `ranges`, the cubes of all of them read under
/// one lock: a time series reads a few cubes per interval, and the plan,
/// lock and retention look per interval had cost as much as the cells.
pub(crate) fn merged_cells_in(
    engine: &Engine,
    ranges: &[TimeRange],
    dim: Dimension,
    filters: &Filters,
    metric: Metric,
    mut note: impl FnMut(&'static str),
) -> Result<Vec<Merged>> {
    let sketches = metric.quantile().is_some();
    let read = cube_read_for(dim, filters, metric);
    let subset = !matches!(read, Some(CubeRead::Direct { key: None }) | None);
    let mut outs: Vec<Merged> = ranges
        .iter()
        .map(|_| {
            let mut out = Merged::new(dim, sketches);
            out.subset = subset;
            out.counts_only = metric.counts_only();
            out
        })
        .collect();
    let Some(read) = read else {
        note("raw");
        for (out, range) in outs.iter_mut().zip(ranges) {
            for (k, cell) in engine.aggregate_raw(*range, filters, dim, sketches)? {
                out.add(&k, &cell, 0);
            }
        }
        return Ok(outs.into_iter().map(Merged::finish).collect());
    };
    let cutoffs = engine.cutoffs();
    // Every range's bucket pieces, each with the index of its range.
    let (mut pieces, mut owners, mut raws) = (Vec::new(), Vec::new(), Vec::new());
    for (i, range) in ranges.iter().enumerate() {
        let (p, raw) = split_plan(engine, &cutoffs, *range, dim, filters, sketches)?;
        note_sources(&p, &raw, &mut note);
        owners.extend(std::iter::repeat_n(i, p.len()));
        pieces.extend(p);
        raws.push(raw);
    }
    let cube_dim = match read {
        CubeRead::EndpointInClass { .. } => Dimension::EndpointStatusClass,
        CubeRead::Direct { .. } => dim,
    };
    // A key no cube was ever given has no cells; one given after this lookup
    // came with requests acknowledged after the query began.
    let only = match &read {
        CubeRead::Direct { key: Some(key) } => cube_dim.key(key),
        _ => None,
    };
    engine.each_rollup(&pieces, cube_dim, |piece, cube| {
        let out = &mut outs[owners[piece]];
        match &read {
            CubeRead::Direct { key: None } => out.add_whole_cube(cube),
            CubeRead::Direct { key: Some(_) } => {
                let cell = only.and_then(|k| match out.counts_only {
                    true => Some((k, Cow::Owned(cube.get_counts(k)?))),
                    false => Some((k, cube.get(k, sketches)?)),
                });
                if let Some((k, cell)) = cell {
                    out.add_to(k, &cell, cube.floor());
                }
                out.note_overflow(cube);
            }
            CubeRead::EndpointInClass { class, endpoint } => out.add_cube(cube, |k| {
                Dimension::split_endpoint_class_key(k)
                    .filter(|(c, ep)| c == class && endpoint.as_deref().is_none_or(|f| f == *ep))
                    .map(|(_, ep)| ep)
            }),
        }
    });
    for (out, raw) in outs.iter_mut().zip(&raws) {
        for part in raw {
            for (k, cell) in part {
                out.add(k, cell, 0);
            }
        }
    }
    Ok(outs.into_iter().map(Merged::finish).collect())
}

/// The `k` keys with the most requests, found without merging every cell:
/// Fagin's threshold algorithm over each cube's [`Cube::heaviest`] list. Going
/// down the lists a level at a time, every key met is counted in full (a
/// lookup per cube); a key not met yet has at most the sum of the counts at
/// the current level, so once the k-th best count exceeds that sum the answer
/// is final. Zipf-like traffic ends within a few levels instead of merging
/// every key of every bucket. The cells of the winners are then merged as
/// [`merged_cells`] would merge them, so answers are identical.
///
/// `None` when it does not apply (another metric or order, a filter, a
/// `min_count`, a large k) or the lists ran out before the answer was final.
fn heaviest_first(
    engine: &Engine,
    q: &TopK,
    dim: Dimension,
    note: &mut impl FnMut(&'static str),
) -> Result<Option<Merged>> {
    let applies = q.metric == Metric::Frequency
        && q.order == Order::Desc
        && q.min_count <= 1
        && q.k <= HEAVIEST_LISTED / 2
        && cube_read(dim, &q.filters) == Some(CubeRead::Direct { key: None });
    if !applies {
        return Ok(None);
    }
    let (pieces, raw) = split_plan(engine, &engine.cutoffs(), q.range, dim, &q.filters, false)?;
    let merged = engine.with_rollups(&pieces, dim, |cubes| {
        let winners = threshold_top(dim, cubes, &raw, q.k)?;
        Some(merge_keys(dim, cubes, &raw, &winners, false))
    });
    if merged.is_some() {
        note_sources(&pieces, &raw, note);
    }
    Ok(merged)
}

/// Bucket pieces of a cube, as `(granularity, from, to)`.
type BucketPieces = Vec<(Granularity, toplog_types::Micros, toplog_types::Micros)>;

/// The plan of `range` for `dim`: its bucket pieces, and its raw pieces
/// aggregated by `dim` (with latency sketches if `sketches`).
fn split_plan(
    engine: &Engine,
    cutoffs: &Cutoffs,
    range: TimeRange,
    dim: Dimension,
    filters: &Filters,
    sketches: bool,
) -> Result<(BucketPieces, Vec<RawCells>)> {
    let mut pieces = Vec::new();
    let mut raw = Vec::new();
    let levels = dim.granularities();
    for piece in plan(retained(range, levels, cutoffs), levels) {
        match piece {
            Piece::Buckets {
                granularity,
                from,
                to,
            } => pieces.push((granularity, from, to)),
            Piece::Raw(r) => raw.push(engine.aggregate_raw(r, filters, dim, sketches)?),
        }
    }
    Ok((pieces, raw))
}

fn note_sources(pieces: &BucketPieces, raw: &[RawCells], note: &mut impl FnMut(&'static str)) {
    for (g, _, _) in pieces {
        note(g.name());
    }
    if !raw.is_empty() {
        note("raw");
    }
}

/// The cells of `keys` alone, looked up in each cube and raw part, merged as
/// [`merged_cells`] merges them (with every cube's overflow noted): with their
/// sketches for a quantile, else with their counts alone (the cubes' cells
/// are read no further).
fn merge_keys<'k>(
    dim: Dimension,
    cubes: &[&Cube],
    raw: &[RawCells],
    keys: impl IntoIterator<Item = &'k String> + Clone,
    quantile: bool,
) -> Merged {
    let mut out = Merged::new(dim, quantile);
    let mut ids: Vec<Key> = keys
        .clone()
        .into_iter()
        .filter_map(|k| dim.key(k))
        .collect();
    ids.sort_unstable();
    for cube in cubes {
        let floor = cube.floor();
        if quantile {
            cube.cells_of(&ids, true, |k, cell| out.add_to(k, cell, floor));
        } else {
            for id in &ids {
                if let Some(cell) = cube.get_counts(*id) {
                    out.add_to(*id, &cell, floor);
                }
            }
        }
        out.note_overflow(cube);
    }
    for part in raw {
        for key in keys.clone() {
            if let Some(cell) = part.get(key.as_str()) {
                out.add(key, cell, 0);
            }
        }
    }
    out.finish()
}

/// The keys of the `k` largest total counts over `cubes` and `raw` (ties by
/// key ascending), or `None` if the cubes' heaviest lists end too soon to tell.
///
/// The lists are read one entry at a time, always from the list whose next
/// count is largest: that lowers the threshold (the sum of every list's next
/// count) the most per key met. Small buckets (a partial hour's minutes) hold
/// a few requests per key, so they are rarely read past their first entries
/// and do not bring in keys that could never win, each of which would cost a
/// lookup in every cube.
fn threshold_top(
    dim: Dimension,
    cubes: &[&Cube],
    raw: &[RawCells],
    k: usize,
) -> Option<Vec<String>> {
    /// A ranked list: (count, key), most first; `complete` if it holds every
    /// key of its source; `read` entries of it met so far. Only
    /// `ranked[..sorted]` is in order (and holds the largest entries): a raw
    /// part's thousands of keys are put in order a chunk at a time, as reading
    /// reaches them, and reading rarely goes past the first.
    struct List<'a> {
        ranked: Vec<(u64, &'a str)>,
        complete: bool,
        read: usize,
        sorted: usize,
    }
    impl List<'_> {
        /// Orders the next chunk of entries if reading has reached the end of
        /// those in order. Chunks double, so reading a whole list costs about
        /// one sort of it.
        fn settle(&mut self) {
            if self.read < self.sorted || self.sorted == self.ranked.len() {
                return;
            }
            let rest = &mut self.ranked[self.sorted..];
            let n = rest.len().min(self.sorted.max(64));
            if n < rest.len() {
                rest.select_nth_unstable_by(n - 1, most_first);
            }
            rest[..n].sort_unstable_by(most_first);
            self.sorted += n;
        }
        /// The most requests a key not met in this list yet can have in it: the
        /// next count down (an incomplete list's last count bounds the keys it
        /// leaves out).
        fn bound(&self) -> u64 {
            match self.ranked.get(self.read) {
                Some(&(n, _)) => n,
                None if self.complete => 0,
                None => self.ranked.last().map_or(0, |&(n, _)| n),
            }
        }
    }
    let mut lists: Vec<List<'_>> = cubes
        .iter()
        .map(|c| {
            let heaviest = c.heaviest();
            List {
                ranked: heaviest.to_vec(),
                complete: heaviest.len() == c.len(),
                read: 0,
                sorted: heaviest.len(),
            }
        })
        .collect();
    for part in raw {
        let mut list = List {
            ranked: part.iter().map(|(k, c)| (c.count, k.as_str())).collect(),
            complete: true,
            read: 0,
            sorted: 0,
        };
        list.settle();
        lists.push(list);
    }
    let total = |key: &str| -> u64 {
        let cubed: u64 = dim
            .key(key)
            .map_or(0, |id| cubes.iter().map(|c| c.count(id)).sum());
        cubed
            + raw
                .iter()
                .filter_map(|p| p.get(key))
                .map(|c| c.count)
                .sum::<u64>()
    };
    // Lists with entries left to read, by their next count.
    let mut next: std::collections::BinaryHeap<(u64, usize)> = lists
        .iter()
        .enumerate()
        .filter(|(_, l)| !l.ranked.is_empty())
        .map(|(i, l)| (l.bound(), i))
        .collect();
    let mut threshold: u64 = lists.iter().map(List::bound).sum();
    let mut seen: HashSet<&str, foldhash::fast::RandomState> = HashSet::default();
    // The best k met so far, most first.
    let mut best: Vec<(u64, &str)> = Vec::with_capacity(k + 1);
    loop {
        let kth = (best.len() == k).then(|| best.last()).flatten();
        if threshold == 0 || kth.is_some_and(|b| b.0 > threshold) {
            // No key not met yet can reach the k-th best (or every key with
            // a request has been met).
            return Some(best.iter().map(|(_, key)| (*key).to_owned()).collect());
        }
        // Every list is read to its end: complete ones have shown every key
        // (then the threshold is 0), incomplete ones leave the answer open.
        let (_, i) = next.pop()?;
        let list = &mut lists[i];
        let (_, key) = list.ranked[list.read];
        let before = list.bound();
        list.read += 1;
        list.settle();
        let after = list.bound();
        threshold = threshold - before + after;
        if list.read < list.ranked.len() {
            next.push((after, i));
        }
        if seen.insert(key) {
            let met = (total(key), key);
            let at = best.partition_point(|b| most_first(b, &met).is_lt());
            if at < k {
                best.insert(at, met);
                best.truncate(k);
            }
        }
    }
}

/// A quantile top-K with a `min_count`, read from whole cubes: a first pass
/// merges counts only, then the keys that can reach `min_count` (with what
/// they may have missed) are looked up in each bucket and only their sketches
/// merged. Sketch merges are most of a quantile query's cost, and most keys of
/// a skewed range miss `min_count`. `None` when it does not apply.
fn quantile_with_min_count(
    engine: &Engine,
    q: &TopK,
    dim: Dimension,
    note: &mut impl FnMut(&'static str),
) -> Result<Option<Merged>> {
    if q.metric.quantile().is_none()
        || q.min_count <= 1
        || cube_read_for(dim, &q.filters, q.metric) != Some(CubeRead::Direct { key: None })
    {
        return Ok(None);
    }
    let (pieces, raw) = split_plan(engine, &engine.cutoffs(), q.range, dim, &q.filters, true)?;
    let merged = engine.with_rollups(&pieces, dim, |cubes| {
        // Per key: its requests and what its cells may have missed, and the
        // floors of the over-budget buckets it has a cell in (what
        // [`Merged::missed`] adds up, without merging whole cells).
        let mut counts: HashMap<Key, (u64, u64), foldhash::fast::RandomState> = HashMap::default();
        let mut floor = 0;
        for cube in cubes {
            let f = cube.floor();
            floor += f;
            cube.counts_by_key(|k, c| {
                let (n, seen) = counts.entry(k).or_default();
                (*n, *seen) = (*n + c.count + c.missed, *seen + f);
            });
        }
        for part in &raw {
            for (k, cell) in part {
                counts.entry(dim.intern(k)).or_default().0 += cell.count + cell.missed;
            }
        }
        let reaching: Vec<String> = counts
            .iter()
            .filter(|(_, (n, seen))| n + (floor - (*seen).min(floor)) >= q.min_count)
            .map(|(k, _)| k.name().to_owned())
            .collect();
        merge_keys(dim, cubes, &raw, &reaching, true)
    });
    note_sources(&pieces, &raw, note);
    Ok(Some(merged))
}

/// When `range` starts before the data a read of `by` would use is kept (past
/// retention at the granularity it would be read at), the instant from which
/// the answer is complete.
pub(crate) fn retained_from(
    engine: &Engine,
    range: TimeRange,
    by: Grouping,
    filters: &Filters,
    metric: Metric,
) -> Option<toplog_types::Micros> {
    let levels = match by {
        Grouping::By(d) if cube_read_for(d, filters, metric).is_some() => d.granularities(),
        _ => &[],
    };
    let kept = retained(range, levels, &engine.cutoffs()).start;
    (kept > range.start).then_some(kept)
}

/// Answers `q` from the engine's rollups and raw rows.
pub fn top_k(engine: &Engine, q: &TopK) -> Result<TopKAnswer> {
    if q.k == 0 {
        return Err(QueryError::Invalid("k", "must be at least 1".into()));
    }
    let mut sources: Vec<&'static str> = Vec::new();
    let mut note = |s: &'static str| {
        if !sources.contains(&s) {
            sources.push(s);
        }
    };
    let retained_from = retained_from(engine, q.range, q.by, &q.filters, q.metric);
    let dim = match q.by {
        Grouping::Request => {
            let mut answer = slowest(engine, q)?;
            answer.retained_from = retained_from;
            return Ok(answer);
        }
        Grouping::By(d) => d,
    };
    let merged = match heaviest_first(engine, q, dim, &mut note)? {
        Some(merged) => merged,
        None => match quantile_with_min_count(engine, q, dim, &mut note)? {
            Some(merged) => merged,
            None => merged_cells(engine, q.range, dim, &q.filters, q.metric, &mut note)?,
        },
    };
    let min_count = q.min_count.max(1);
    let mut rows: Vec<TopKRow> = merged
        .groups()
        .filter_map(|(key, g)| {
            let missed = merged.missed(g);
            // A group that may reach `min_count` with what it missed stays, with its bounds.
            if g.cell.count + missed.requests < min_count {
                return None;
            }
            let (value, bounds) = q.metric.value_with(&g.cell, &missed)?;
            Some(TopKRow {
                key: key.to_owned(),
                value,
                count: g.cell.count,
                bounds,
            })
        })
        .collect();
    rank(&mut rows, q.k, q.order);
    Ok(TopKAnswer {
        rows,
        exact: q.metric.is_exact() && merged.exact(),
        unlisted_max_count: merged.unlisted_max(),
        sources,
        retained_from,
    })
}

/// Sorts best first (ties by key ascending) and keeps `k`.
fn rank(rows: &mut Vec<TopKRow>, k: usize, order: Order) {
    let cmp = |a: &TopKRow, b: &TopKRow| {
        let by_value = match order {
            Order::Desc => b.value.total_cmp(&a.value),
            Order::Asc => a.value.total_cmp(&b.value),
        };
        by_value.then_with(|| a.key.as_bytes().cmp(b.key.as_bytes()))
    };
    if rows.len() > k {
        rows.select_nth_unstable_by(k - 1, cmp);
        rows.truncate(k);
    }
    rows.sort_by(cmp);
}

/// Single requests ranked by their latency (every latency metric is the request's latency).
fn slowest(engine: &Engine, q: &TopK) -> Result<TopKAnswer> {
    if !matches!(
        q.metric,
        Metric::LatencyAvg
            | Metric::LatencyMax
            | Metric::LatencyP50
            | Metric::LatencyP90
            | Metric::LatencyP95
            | Metric::LatencyP99
    ) {
        return Err(QueryError::Invalid(
            "metric",
            "`by=request` ranks single requests by latency: use a latency metric".into(),
        ));
    }
    let events = engine.slowest(q.range, &q.filters, q.k, q.order == Order::Asc)?;
    let rows = events
        .into_iter()
        .map(|e| TopKRow {
            key: e.request_id.clone(),
            value: e.latency_ms(),
            count: 1,
            bounds: None,
        })
        .collect();
    Ok(TopKAnswer {
        rows,
        exact: true,
        unlisted_max_count: 0,
        sources: vec!["raw"],
        retained_from: None,
    })
}
