//! Top-K: merge cells by key over the plan's pieces, compute the metric, keep K.
//! Ties break by key in ascending byte order.

mod merge;
mod quantile;
mod request;
mod threshold;

use toplog_engine::{Dimension, Engine, Filters, TimeRange};

use crate::plan::retained;
use crate::{Metric, QueryError, Result};

pub(crate) use merge::cube_answers;
use merge::cube_read_for;
pub(crate) use merge::{Group, merged_cells, merged_cells_in};
use quantile::quantile_with_min_count;
use request::slowest;
use threshold::heaviest_first;

/// What rows are ranked: groups of requests by a dimension, or single requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Order {
    #[default]
    Desc,
    Asc,
}

/// A top-K question.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
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

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
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
pub(crate) fn rank(rows: &mut Vec<TopKRow>, k: usize, order: Order) {
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
