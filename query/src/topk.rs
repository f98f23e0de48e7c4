//! Top-K: merge cells by key over the plan's pieces, compute the metric, keep K.
//! Ties break by key in ascending byte order.

use std::collections::HashMap;

use toplog_engine::{Cell, Dimension, Engine, Filters, TimeRange};

use crate::plan::{Piece, plan};
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
    /// Which sources were read: `rollup_1d`, `rollup_1h`, `rollup_1m`, `raw`.
    pub sources: Vec<&'static str>,
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

/// Merges `cell` into `out[key]`. Without `sketches` the merged cell drops its
/// sketch, so count-only metrics never copy or merge bins.
fn merge_into(out: &mut HashMap<String, Cell>, key: &str, cell: &Cell, sketches: bool) {
    match out.get_mut(key) {
        Some(c) => c.merge(cell),
        None if sketches => {
            out.insert(key.to_owned(), cell.clone());
        }
        None => {
            let mut c = Cell::new(false);
            c.merge(cell);
            out.insert(key.to_owned(), c);
        }
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
    mut note: impl FnMut(&'static str),
) -> Result<HashMap<String, Cell>> {
    // The user cube keeps no sketch: quantiles by user are read from raw rows.
    let cubes_usable = !(dim == Dimension::UserId && metric.quantile().is_some());
    let Some(read) = cube_read(dim, filters).filter(|_| cubes_usable) else {
        note("raw");
        return Ok(engine.aggregate_raw(range, filters, dim)?);
    };
    let sketches = metric.quantile().is_some();
    let mut out = HashMap::new();
    for piece in plan(range, dim.granularities()) {
        match piece {
            Piece::Buckets {
                granularity,
                from,
                to,
            } => {
                note(granularity.name());
                match &read {
                    CubeRead::Direct { key } => {
                        engine.visit_rollups(granularity, from, to, dim, |k, cell| {
                            if key.as_deref().is_none_or(|f| f == k) {
                                merge_into(&mut out, k, cell, sketches);
                            }
                        })
                    }
                    CubeRead::EndpointInClass { class, endpoint } => {
                        let cube = Dimension::EndpointStatusClass;
                        engine.visit_rollups(granularity, from, to, cube, |k, cell| {
                            if let Some((c, ep)) = Dimension::split_endpoint_class_key(k)
                                && c == *class
                                && endpoint.as_deref().is_none_or(|f| f == ep)
                            {
                                merge_into(&mut out, ep, cell, sketches);
                            }
                        })
                    }
                }
            }
            Piece::Raw(r) => {
                note("raw");
                for (k, cell) in engine.aggregate_raw(r, filters, dim)? {
                    merge_into(&mut out, &k, &cell, sketches);
                }
            }
        }
    }
    Ok(out)
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
    let dim = match q.by {
        Grouping::Request => return slowest(engine, q),
        Grouping::By(d) => d,
    };
    let merged = merged_cells(engine, q.range, dim, &q.filters, q.metric, &mut note)?;
    let mut rows: Vec<TopKRow> = merged
        .into_iter()
        .filter(|(_, c)| c.count >= q.min_count.max(1))
        .filter_map(|(key, cell)| {
            let (value, bounds) = q.metric.value(&cell)?;
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
        exact: q.metric.is_exact(),
        sources,
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
        sources: vec!["raw"],
    })
}
