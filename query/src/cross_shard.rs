//! Exact top-K across shards without shipping every key: the three-phase
//! uniform threshold algorithm (TPUT; Cao and Wang, "Efficient top-K query
//! calculation in distributed networks", PODC 2004), for values that add up
//! across shards (counts: `frequency`, `errors`), and its variant for values
//! whose whole is the largest part (`latency_max`).
//!
//! With `m` shards, each holding a part of every key's value:
//!
//! 1. Each shard sends its own top `k`. A key's parts seen so far bound its
//!    whole from below; `τ1` is the `k`th largest such bound.
//! 2. Each shard sends every key whose part is at least `T` (`τ1 / m` for a
//!    sum, `τ1` for a max). A key no shard sent has every part below `T`,
//!    so its whole is below `τ1`: it is not in the top `k`. A key some
//!    shards did not send has, there, a part below `T`: that bounds its
//!    whole from above. `τ2` is the `k`th largest lower bound now.
//! 3. Every key whose upper bound reaches `τ2` is asked of every shard
//!    that did not send it; the exact wholes of these candidates rank.
//!
//! Every key left out is strictly below `k` others, so ties at the
//! boundary are kept and ranked by key, as a single node ranks them. The
//! answer counts the keys the shards sent and were asked for.
//!
//! A metric whose whole is not a sum or maximum of parts (`error_rate`,
//! `latency_avg`, a quantile) is ranked from every key's cell: each shard
//! sends its [`KeyCells`], whose counts, sums, extremes and sketches add up
//! ([`top_k_of_cells`]).

use std::collections::{BTreeMap, HashMap};

use toplog_engine::{Cell, Dimension, Engine, Filters};

use crate::topk::{Grouping, Order, TopK, TopKAnswer, TopKRow, merged_cells, rank};
use crate::{Metric, Missed, QueryError, Result};

/// How a key's parts make its whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Combine {
    /// Counts: the whole is the sum of the parts (all at least 0).
    Sum,
    /// The whole is the largest part (`latency_max`).
    Max,
}

impl Combine {
    fn add(self, whole: f64, part: f64) -> f64 {
        match self {
            Self::Sum => whole + part,
            Self::Max => whole.max(part),
        }
    }
}

/// One key's part on one shard: the metric's value there and the requests
/// behind it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Part {
    pub value: f64,
    pub count: u64,
}

/// A shard's side of the exchange.
pub trait ShardKeys {
    type Error;
    /// Its `k` keys of the largest parts (ties by key, ascending), or all
    /// if it has fewer.
    fn top(&self, k: usize) -> Result<Vec<(String, Part)>, Self::Error>;
    /// Every key whose part is at least `threshold`.
    fn at_least(&self, threshold: f64) -> Result<Vec<(String, Part)>, Self::Error>;
    /// The parts of those of `keys` it holds.
    fn parts(&self, keys: &[String]) -> Result<Vec<(String, Part)>, Self::Error>;
}

/// The top `k` across every shard.
#[derive(Debug, Clone, PartialEq)]
pub struct CrossShardTopK {
    /// (key, whole) best first, ties by key ascending.
    pub rows: Vec<(String, Part)>,
    /// Keys the shards sent, in all three phases.
    pub keys_sent: usize,
    /// Keys the shards were asked for in the third phase.
    pub keys_asked: usize,
}

/// What is known of one key: its parts by shard.
#[derive(Default)]
struct Known(BTreeMap<usize, Part>);

impl Known {
    fn lower(&self, combine: Combine) -> f64 {
        (self.0.values()).fold(0.0, |w, p| combine.add(w, p.value))
    }

    /// Its whole is at most this, when every shard that did not send it
    /// holds a part below `below`.
    fn upper(&self, combine: Combine, shards: usize, below: f64) -> f64 {
        let missing = shards - self.0.len();
        match combine {
            Combine::Sum => self.lower(combine) + missing as f64 * below,
            Combine::Max if missing > 0 => self.lower(combine).max(below),
            Combine::Max => self.lower(combine),
        }
    }
}

/// The `k`th largest of `values` (0 when there are fewer).
fn kth_largest(mut values: Vec<f64>, k: usize) -> f64 {
    if values.len() < k || k == 0 {
        return 0.0;
    }
    values.sort_unstable_by(|a, b| b.total_cmp(a));
    values[k - 1]
}

/// The exact top `k` keys across `shards` by `combine` of their parts.
pub fn top_k_across<S: ShardKeys>(
    shards: &[S],
    k: usize,
    combine: Combine,
) -> Result<CrossShardTopK, S::Error> {
    let m = shards.len();
    let mut known: BTreeMap<String, Known> = BTreeMap::new();
    let mut keys_sent = 0;
    let mut note = |shard: usize, got: Vec<(String, Part)>, known: &mut BTreeMap<String, Known>| {
        keys_sent += got.len();
        for (key, part) in got {
            known.entry(key).or_default().0.insert(shard, part);
        }
    };
    // Phase 1.
    for (i, shard) in shards.iter().enumerate() {
        note(i, shard.top(k)?, &mut known);
    }
    let lowers = |known: &BTreeMap<String, Known>| -> Vec<f64> {
        known.values().map(|x| x.lower(combine)).collect()
    };
    let tau1 = kth_largest(lowers(&known), k);
    // Phase 2: a part at least `threshold` is sent; one below is not.
    let threshold = match combine {
        Combine::Sum => tau1 / m.max(1) as f64,
        Combine::Max => tau1,
    };
    for (i, shard) in shards.iter().enumerate() {
        note(i, shard.at_least(threshold)?, &mut known);
    }
    let tau2 = kth_largest(lowers(&known), k);
    // A shard that sent a key in phase 1 only may hold a part of it above
    // the threshold: what it sent is exact. One that never sent it holds a
    // part below the threshold (it would have sent it in phase 2).
    let candidates: Vec<String> = (known.iter())
        .filter(|(_, x)| x.upper(combine, m, threshold) >= tau2)
        .map(|(key, _)| key.clone())
        .collect();
    // Phase 3: each shard is asked for the candidates it has not sent.
    let mut keys_asked = 0;
    for (i, shard) in shards.iter().enumerate() {
        let ask: Vec<String> = (candidates.iter())
            .filter(|key| !known[*key].0.contains_key(&i))
            .cloned()
            .collect();
        if ask.is_empty() {
            continue;
        }
        keys_asked += ask.len();
        note(i, shard.parts(&ask)?, &mut known);
    }
    let mut rows: Vec<(String, Part)> = (candidates.into_iter())
        .map(|key| {
            let parts = &known[&key].0;
            let whole = Part {
                value: parts.values().fold(0.0, |w, p| combine.add(w, p.value)),
                count: parts.values().map(|p| p.count).sum(),
            };
            (key, whole)
        })
        .collect();
    rows.sort_by(|a, b| b.1.value.total_cmp(&a.1.value).then_with(|| a.0.cmp(&b.0)));
    rows.truncate(k);
    Ok(CrossShardTopK {
        rows,
        keys_sent,
        keys_asked,
    })
}

/// The single requests of `by=request` across shards: each shard's own top
/// K (its answer to `q`), ranked together. Exact: a request in the whole
/// top K is in its own shard's.
pub fn requests_across(parts: Vec<TopKAnswer>, q: &TopK) -> Result<TopKAnswer> {
    if q.by != Grouping::Request {
        return Err(QueryError::Invalid(
            "by",
            "only single requests are ranked from each shard's top K".into(),
        ));
    }
    let mut rows: Vec<TopKRow> = parts.into_iter().flat_map(|p| p.rows).collect();
    rank(&mut rows, q.k, q.order);
    Ok(TopKAnswer::of_requests(rows))
}

/// One shard's part of a top-K: every key's cell over the question's range
/// and filters, as its rollups and raw rows hold them.
#[derive(Debug, Clone)]
pub struct KeyCells {
    pub cells: Vec<(String, Cell)>,
    /// False when a rollup bucket over its key budget was read: its cells
    /// may miss requests.
    pub exact: bool,
    pub sources: Vec<&'static str>,
}

/// This shard's [`KeyCells`] for `q` (grouped by a dimension).
pub fn key_cells(engine: &Engine, q: &TopK) -> Result<KeyCells> {
    let Grouping::By(dim) = q.by else {
        return Err(QueryError::Invalid(
            "by",
            "single requests are ranked from each shard's slowest".into(),
        ));
    };
    let mut sources: Vec<&'static str> = Vec::new();
    let merged = merged_cells(engine, q.range, dim, &q.filters, q.metric, |s| {
        if !sources.contains(&s) {
            sources.push(s);
        }
    })?;
    Ok(KeyCells {
        cells: merged
            .groups()
            .map(|(key, g)| (key.to_owned(), g.cell.clone()))
            .collect(),
        exact: merged.exact(),
        sources,
    })
}

/// The top K of `q` from every shard's cells, merged by key.
pub fn top_k_of_cells(parts: Vec<KeyCells>, q: &TopK) -> Result<TopKAnswer> {
    if q.k == 0 {
        return Err(QueryError::Invalid("k", "must be at least 1".into()));
    }
    let mut merged: HashMap<String, Cell> = HashMap::new();
    let (mut exact, mut sources) = (q.metric.is_exact(), Vec::new());
    for part in parts {
        exact &= part.exact;
        for s in part.sources {
            if !sources.contains(&s) {
                sources.push(s);
            }
        }
        for (key, cell) in part.cells {
            match merged.get_mut(&key) {
                Some(whole) => whole.merge(&cell),
                None => {
                    merged.insert(key, cell);
                }
            }
        }
    }
    let min_count = q.min_count.max(1);
    let mut rows: Vec<TopKRow> = (merged.into_iter())
        .filter(|(_, cell)| cell.count >= min_count)
        .filter_map(|(key, cell)| {
            let (value, bounds) = q.metric.value_with(&cell, &Missed::default())?;
            Some(TopKRow {
                key,
                value,
                count: cell.count,
                bounds,
            })
        })
        .collect();
    rank(&mut rows, q.k, q.order);
    Ok(TopKAnswer {
        rows,
        exact,
        unlisted_max_count: 0,
        sources,
        retained_from: None,
    })
}

/// How TPUT ranks `q`, when it can: largest first, grouped, and each
/// key's whole a sum of its parts (`frequency`, `errors`) or their largest
/// (`latency_max`). `None`: rank from every key's cell
/// ([`top_k_of_cells`]).
pub fn combine_of(q: &TopK) -> Option<Combine> {
    if q.order != Order::Desc || !matches!(q.by, Grouping::By(_)) {
        return None;
    }
    match q.metric {
        // `min_count` leaves out the smallest counts: the top K's last.
        Metric::Frequency => Some(Combine::Sum),
        Metric::Errors if q.min_count <= 1 => Some(Combine::Sum),
        Metric::LatencyMax if q.min_count <= 1 => Some(Combine::Max),
        _ => None,
    }
}

/// One shard's side of [`top_k_across`] from its [`KeyCells`]: each key's
/// part is the metric's value on its cell.
#[derive(Debug, Clone)]
pub struct CellParts {
    /// Best first, ties by key ascending.
    best: Vec<(String, Part)>,
    at: HashMap<String, usize>,
}

impl CellParts {
    pub fn new(cells: &KeyCells, metric: Metric) -> Self {
        let mut best: Vec<(String, Part)> = (cells.cells.iter())
            .filter_map(|(key, cell)| {
                let (value, _) = metric.value(cell)?;
                Some((
                    key.clone(),
                    Part {
                        value,
                        count: cell.count,
                    },
                ))
            })
            .collect();
        best.sort_by(|a, b| b.1.value.total_cmp(&a.1.value).then_with(|| a.0.cmp(&b.0)));
        let at = (best.iter().enumerate())
            .map(|(i, (key, _))| (key.clone(), i))
            .collect();
        Self { best, at }
    }
}

impl ShardKeys for CellParts {
    type Error = std::convert::Infallible;

    fn top(&self, k: usize) -> std::result::Result<Vec<(String, Part)>, Self::Error> {
        Ok(self.best.iter().take(k).cloned().collect())
    }

    fn at_least(&self, threshold: f64) -> std::result::Result<Vec<(String, Part)>, Self::Error> {
        Ok((self.best.iter())
            .take_while(|(_, p)| p.value >= threshold)
            .cloned()
            .collect())
    }

    fn parts(&self, keys: &[String]) -> std::result::Result<Vec<(String, Part)>, Self::Error> {
        Ok((keys.iter())
            .filter_map(|key| self.at.get(key).map(|i| self.best[*i].clone()))
            .collect())
    }
}

/// One store's side of [`top_k_across`] for `frequency`, asked phase by
/// phase with the single store's top-K, whose threshold read over the
/// cubes' heaviest lists answers a small `k` without every key's cell
/// (what [`CellParts`] needs: a week of a million users' cells); the
/// keys asked in the third phase are read one at a time, each through
/// the cubes with a filter on it. Other metrics rank every key's cells
/// anyway: [`CellParts`] reads them once.
pub struct FrequencyParts<'a> {
    engine: &'a Engine,
    q: TopK,
    dim: Dimension,
    /// Whether every answer read was exact, and what they were read from.
    seen: std::cell::RefCell<(bool, Vec<&'static str>)>,
}

impl<'a> FrequencyParts<'a> {
    /// `None` unless `q` ranks groups by `frequency`, largest first.
    pub fn new(engine: &'a Engine, q: &TopK) -> Option<Self> {
        let Grouping::By(dim) = q.by else {
            return None;
        };
        let keyed = dim != Dimension::EndpointStatusClass;
        (keyed && q.metric == Metric::Frequency && q.order == Order::Desc).then(|| Self {
            engine,
            q: TopK {
                min_count: 0,
                ..q.clone()
            },
            dim,
            seen: std::cell::RefCell::new((true, Vec::new())),
        })
    }

    /// Whether every answer read was exact, and what they were read from.
    pub fn seen(&self) -> (bool, Vec<&'static str>) {
        self.seen.borrow().clone()
    }

    /// This store's top `k` of the question, with `filters`.
    fn ask(&self, k: usize, filters: Filters) -> Result<Vec<(String, Part)>> {
        let q = TopK {
            k,
            filters,
            ..self.q.clone()
        };
        let answer = crate::top_k(self.engine, &q)?;
        let mut seen = self.seen.borrow_mut();
        seen.0 &= answer.exact;
        for s in answer.sources {
            if !seen.1.contains(&s) {
                seen.1.push(s);
            }
        }
        Ok((answer.rows.into_iter())
            .map(|r| {
                let part = Part {
                    value: r.value,
                    count: r.count,
                };
                (r.key, part)
            })
            .collect())
    }

    /// The question's filters narrowed to `key` of the grouped dimension;
    /// `None` if they already name another.
    fn only(&self, key: &str) -> Option<Filters> {
        let mut f = self.q.filters.clone();
        let named = |slot: &mut Option<String>| match slot {
            Some(v) if v != key => false,
            _ => {
                *slot = Some(key.to_owned());
                true
            }
        };
        let fits = match self.dim {
            Dimension::Endpoint => named(&mut f.endpoint),
            Dimension::UserId => named(&mut f.user_id),
            Dimension::Method => named(&mut f.method),
            Dimension::StatusCode => match key.parse::<u16>() {
                Ok(code) if f.status_code.is_none_or(|c| c == code) => {
                    f.status_code = Some(code);
                    true
                }
                _ => false,
            },
            Dimension::EndpointStatusClass => false,
        };
        fits.then_some(f)
    }
}

impl ShardKeys for FrequencyParts<'_> {
    type Error = QueryError;

    fn top(&self, k: usize) -> Result<Vec<(String, Part)>> {
        self.ask(k, self.q.filters.clone())
    }

    fn at_least(&self, threshold: f64) -> Result<Vec<(String, Part)>> {
        // Wider top-Ks until one ends below the threshold.
        let mut k = (2 * self.q.k).max(16);
        loop {
            let rows = self.ask(k, self.q.filters.clone())?;
            let ended = rows.len() < k || rows.last().is_some_and(|(_, p)| p.value < threshold);
            if ended {
                return Ok(rows
                    .into_iter()
                    .filter(|(_, p)| p.value >= threshold)
                    .collect());
            }
            k = k.saturating_mul(4);
        }
    }

    fn parts(&self, keys: &[String]) -> Result<Vec<(String, Part)>> {
        let mut out = Vec::new();
        for key in keys {
            if let Some(filters) = self.only(key) {
                out.extend(self.ask(1, filters)?.into_iter().filter(|(k, _)| k == key));
            }
        }
        Ok(out)
    }
}

/// One store's side of [`top_k_across`]: [`FrequencyParts`] where it
/// applies, every key's [`CellParts`] otherwise.
pub enum StoreParts<'a> {
    Tops(FrequencyParts<'a>),
    Cells {
        parts: CellParts,
        exact: bool,
        sources: Vec<&'static str>,
    },
}

impl<'a> StoreParts<'a> {
    pub fn new(engine: &'a Engine, q: &TopK) -> Result<Self> {
        if let Some(tops) = FrequencyParts::new(engine, q) {
            return Ok(Self::Tops(tops));
        }
        let cells = key_cells(engine, q)?;
        Ok(Self::Cells {
            parts: CellParts::new(&cells, q.metric),
            exact: cells.exact,
            sources: cells.sources,
        })
    }

    /// Whether what it read was exact, and what it was read from.
    pub fn seen(&self) -> (bool, Vec<&'static str>) {
        match self {
            Self::Tops(t) => t.seen(),
            Self::Cells { exact, sources, .. } => (*exact, sources.clone()),
        }
    }
}

impl ShardKeys for StoreParts<'_> {
    type Error = QueryError;

    fn top(&self, k: usize) -> Result<Vec<(String, Part)>> {
        match self {
            Self::Tops(t) => t.top(k),
            Self::Cells { parts, .. } => Ok(sure(parts.top(k))),
        }
    }

    fn at_least(&self, threshold: f64) -> Result<Vec<(String, Part)>> {
        match self {
            Self::Tops(t) => t.at_least(threshold),
            Self::Cells { parts, .. } => Ok(sure(parts.at_least(threshold))),
        }
    }

    fn parts(&self, keys: &[String]) -> Result<Vec<(String, Part)>> {
        match self {
            Self::Tops(t) => t.parts(keys),
            Self::Cells { parts, .. } => Ok(sure(parts.parts(keys))),
        }
    }
}

/// What [`CellParts`] answers: it cannot fail.
fn sure<T>(r: std::result::Result<T, std::convert::Infallible>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => match e {},
    }
}

/// The answer to `q` from what [`top_k_across`] found; `exact` and
/// `sources` as the shards' cells said.
pub fn top_k_of_parts(
    found: &CrossShardTopK,
    q: &TopK,
    exact: bool,
    sources: Vec<&'static str>,
) -> TopKAnswer {
    let min_count = q.min_count.max(1);
    TopKAnswer {
        rows: (found.rows.iter())
            .filter(|(_, whole)| whole.count >= min_count)
            .map(|(key, whole)| TopKRow {
                key: key.clone(),
                value: whole.value,
                count: whole.count,
                bounds: None,
            })
            .collect(),
        exact: exact && q.metric.is_exact(),
        unlisted_max_count: 0,
        sources,
        retained_from: None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::cell::Cell;
    use std::convert::Infallible;

    use proptest::prelude::*;

    use super::*;

    /// A shard in memory, counting what it sends.
    struct Shard {
        parts: BTreeMap<String, Part>,
        sent: Cell<usize>,
    }

    impl Shard {
        fn new(parts: &[(&str, f64, u64)]) -> Self {
            Self {
                parts: (parts.iter())
                    .map(|(k, v, c)| {
                        (
                            (*k).to_owned(),
                            Part {
                                value: *v,
                                count: *c,
                            },
                        )
                    })
                    .collect(),
                sent: Cell::new(0),
            }
        }

        fn sending(&self, rows: Vec<(String, Part)>) -> Vec<(String, Part)> {
            self.sent.set(self.sent.get() + rows.len());
            rows
        }
    }

    impl ShardKeys for Shard {
        type Error = Infallible;
        fn top(&self, k: usize) -> Result<Vec<(String, Part)>, Infallible> {
            let mut all: Vec<(String, Part)> =
                self.parts.iter().map(|(k, p)| (k.clone(), *p)).collect();
            all.sort_by(|a, b| b.1.value.total_cmp(&a.1.value).then_with(|| a.0.cmp(&b.0)));
            all.truncate(k);
            Ok(self.sending(all))
        }
        fn at_least(&self, threshold: f64) -> Result<Vec<(String, Part)>, Infallible> {
            Ok(self.sending(
                (self.parts.iter())
                    .filter(|(_, p)| p.value >= threshold)
                    .map(|(k, p)| (k.clone(), *p))
                    .collect(),
            ))
        }
        fn parts(&self, keys: &[String]) -> Result<Vec<(String, Part)>, Infallible> {
            Ok(self.sending(
                (keys.iter())
                    .filter_map(|k| Some((k.clone(), *self.parts.get(k)?)))
                    .collect(),
            ))
        }
    }

    /// Every key's whole, ranked: the answer a single node gives.
    fn brute_force(shards: &[Shard], k: usize, combine: Combine) -> Vec<(String, Part)> {
        let mut all: BTreeMap<String, Part> = BTreeMap::new();
        for s in shards {
            for (key, p) in &s.parts {
                let w = all.entry(key.clone()).or_insert(Part {
                    value: if combine == Combine::Sum {
                        0.0
                    } else {
                        f64::MIN
                    },
                    count: 0,
                });
                w.value = combine.add(w.value, p.value);
                w.count += p.count;
            }
        }
        let mut rows: Vec<(String, Part)> = all.into_iter().collect();
        rows.sort_by(|a, b| b.1.value.total_cmp(&a.1.value).then_with(|| a.0.cmp(&b.0)));
        rows.truncate(k);
        rows
    }

    fn check(shards: &[Shard], k: usize, combine: Combine) -> CrossShardTopK {
        for s in shards {
            s.sent.set(0);
        }
        let got = top_k_across(shards, k, combine).unwrap();
        assert_eq!(got.rows, brute_force(shards, k, combine));
        let sent: usize = shards.iter().map(|s| s.sent.get()).sum();
        assert_eq!(got.keys_sent, sent);
        got
    }

    /// Counts of `keys` heavy keys on one shard and many light keys spread
    /// thin over all shards, one of which is heavy in total.
    fn adversarial(shards: usize) -> Vec<Shard> {
        (0..shards)
            .map(|s| {
                let mut parts: Vec<(String, f64, u64)> = Vec::new();
                // 500 light keys on every shard, 1 each; key "thin" has 30
                // on every shard: heavy in total, never in a shard's top 10.
                for i in 0..500 {
                    parts.push((format!("light-{i:03}"), 1.0, 1));
                }
                parts.push(("thin".into(), 30.0, 30));
                // 10 keys heavy on shard 0 only.
                if s == 0 {
                    for i in 0..10 {
                        parts.push((format!("heavy-{i}"), 100.0 + i as f64, 100 + i));
                    }
                }
                // 10 keys of 40 on each shard, another set per shard.
                for i in 0..10 {
                    parts.push((format!("local-{s}-{i}"), 40.0, 40));
                }
                let refs: Vec<(&str, f64, u64)> =
                    parts.iter().map(|(k, v, c)| (k.as_str(), *v, *c)).collect();
                Shard::new(&refs)
            })
            .collect()
    }

    #[test]
    fn a_key_spread_thin_over_every_shard_is_found_and_few_keys_move() {
        let shards = adversarial(4);
        let got = check(&shards, 10, Combine::Sum);
        // "thin" has 120 in all: second only to none of the heavy keys' ranks
        // past 109, and in no shard's own top 10.
        assert!(
            got.rows
                .iter()
                .any(|(k, p)| k == "thin" && p.value == 120.0),
            "{got:?}"
        );
        // Shipping every key would send 2,054 (key, part) pairs.
        let every: usize = shards.iter().map(|s| s.parts.len()).sum();
        assert_eq!(every, 2054);
        assert!(got.keys_sent + got.keys_asked < every / 5, "{got:?}");
        check(&shards, 10, Combine::Max);
    }

    #[test]
    fn ties_at_the_boundary_rank_by_key_as_one_node_does() {
        let shards = [
            Shard::new(&[("a", 5.0, 5), ("b", 5.0, 5), ("c", 5.0, 5)]),
            Shard::new(&[("c", 5.0, 5), ("d", 10.0, 10), ("b", 5.0, 5)]),
        ];
        for k in 1..=5 {
            check(&shards, k, Combine::Sum);
            check(&shards, k, Combine::Max);
        }
    }

    #[test]
    fn no_shards_or_no_keys_answer_nothing() {
        let none: [Shard; 0] = [];
        assert!(
            top_k_across(&none, 10, Combine::Sum)
                .unwrap()
                .rows
                .is_empty()
        );
        let empty = [Shard::new(&[]), Shard::new(&[])];
        assert_eq!(check(&empty, 3, Combine::Sum).keys_sent, 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn equals_the_brute_force_merge(
            shards in prop::collection::vec(
                prop::collection::btree_map(0u8..40, (0u32..50, 1u64..20), 0..30), 1..6),
            k in 1usize..12,
            max in any::<bool>(),
        ) {
            let shards: Vec<Shard> = shards.iter().map(|parts| {
                let rows: Vec<(String, f64, u64)> = parts.iter()
                    .map(|(key, (v, c))| (format!("k{key:02}"), f64::from(*v), *c))
                    .collect();
                let refs: Vec<(&str, f64, u64)> = rows.iter().map(|(k, v, c)| (k.as_str(), *v, *c)).collect();
                Shard::new(&refs)
            }).collect();
            check(&shards, k, if max { Combine::Max } else { Combine::Sum });
        }
    }
}
