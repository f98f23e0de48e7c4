//! Cells merged by key over a range: the plan's coarsest rollup buckets (or
//! only the keys a filter names) and raw rows at its edges, with what
//! over-budget buckets leave uncertain. The other top-K paths share its
//! helpers, so every path merges the same cells the same way.

use std::borrow::Cow;
use std::collections::HashMap;
use std::collections::hash_map::Entry;

use toplog_engine::{
    Cell, Cube, Cutoffs, Dimension, Engine, EngineError, Filters, Granularity, Key, RawCells,
    SketchSum, TimeRange, budget,
};

use crate::metric::Missed;
use crate::plan::{Piece, plan, retained};
use crate::{Metric, Result};

/// How a cube can answer a grouping under some filters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum CubeRead {
    /// The grouping's own cube, keeping only `key` when the grouped dimension is filtered.
    Direct { key: Option<String> },
    /// Endpoints within one status class, from the endpoint x class cube.
    EndpointInClass { class: u8, endpoint: Option<String> },
}

/// `None` when no cube applies the filters (the raw rows must be read).
pub(super) fn cube_read(dim: Dimension, f: &Filters) -> Option<CubeRead> {
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
pub(super) fn cube_read_for(dim: Dimension, f: &Filters, metric: Metric) -> Option<CubeRead> {
    cube_read(dim, f).filter(|_| !(dim == Dimension::UserId && metric.quantile().is_some()))
}

/// Whether the rollups of `dim` answer `metric` under `f` (no raw rows read).
pub(crate) fn cube_answers(dim: Dimension, f: &Filters, metric: Metric) -> bool {
    cube_read_for(dim, f, metric).is_some()
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
    /// Why the merge stopped: the read's memory or time ran out
    /// ([`Merged::finish`] answers it).
    over: Option<EngineError>,
}

/// What a read is charged per merged group: its key, its cell and a map slot.
pub(super) const GROUP_BYTES: usize = std::mem::size_of::<(Key, Group)>() + 16;

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
            over: None,
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
        if self.over.is_some() {
            return;
        }
        let g = match self.groups.entry(key) {
            Entry::Occupied(g) => g.into_mut(),
            Entry::Vacant(slot) => {
                if let Err(e) = budget::hold(GROUP_BYTES) {
                    self.over = Some(e);
                    return;
                }
                slot.insert(Group {
                    cell: Cell::new(false),
                    floors_seen: 0,
                    sketches: self.sketches.then(SketchSum::default),
                })
            }
        };
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

    /// Stops the merge if the read is past its time: called between cubes.
    fn check_time(&mut self) {
        if self.over.is_none()
            && let Err(e) = budget::check_time()
        {
            self.over = Some(e);
        }
    }

    /// Puts each group's summed sketch in its cell: done once every cell is
    /// in. `Err` if the merge stopped past the read's budget.
    fn finish(mut self) -> Result<Self> {
        if let Some(e) = self.over.take() {
            return Err(e.into());
        }
        for g in self.groups.values_mut() {
            g.cell.sketch = g.sketches.take().map(|sum| sum.sketch());
        }
        Ok(self)
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
        return outs.into_iter().map(Merged::finish).collect();
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
        out.check_time();
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
    })?;
    for (out, raw) in outs.iter_mut().zip(&raws) {
        for part in raw {
            for (k, cell) in part {
                out.add(k, cell, 0);
            }
        }
    }
    outs.into_iter().map(Merged::finish).collect()
}

/// Bucket pieces of a cube, as `(granularity, from, to)`.
pub(super) type BucketPieces = Vec<(Granularity, toplog_types::Micros, toplog_types::Micros)>;

/// The plan of `range` for `dim`: its bucket pieces, and its raw pieces
/// aggregated by `dim` (with latency sketches if `sketches`).
pub(super) fn split_plan(
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

pub(super) fn note_sources(
    pieces: &BucketPieces,
    raw: &[RawCells],
    note: &mut impl FnMut(&'static str),
) {
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
pub(super) fn merge_keys<'k>(
    dim: Dimension,
    cubes: &[&Cube],
    raw: &[RawCells],
    keys: impl IntoIterator<Item = &'k String> + Clone,
    quantile: bool,
) -> Result<Merged> {
    let mut out = Merged::new(dim, quantile);
    let mut ids: Vec<Key> = keys
        .clone()
        .into_iter()
        .filter_map(|k| dim.key(k))
        .collect();
    ids.sort_unstable();
    for cube in cubes {
        out.check_time();
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
