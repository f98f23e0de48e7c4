//! Points per interval for dashboards: one series for everything matching the
//! filters, or the top `limit` series of a grouping. Each point is planned like
//! any other range, so it is exact for exact metrics wherever its edges fall.

use toplog_engine::{Dimension, Engine, Filters, TimeRange};
use toplog_types::Micros;

use crate::topk::{Grouping, Order, TopK, merged_cells_in, retained_from, top_k};
use crate::{Metric, QueryError, Result};

/// At most this many points per series.
pub const MAX_POINTS: i64 = 10_000;

/// Intervals whose cells are read under one lock.
const INTERVALS_READ_TOGETHER: usize = 64;

#[derive(Debug, Clone)]
pub struct TimeseriesQuery {
    pub metric: Metric,
    /// Bucket length in microseconds; buckets are aligned to multiples of it.
    pub interval_us: i64,
    pub range: TimeRange,
    pub filters: Filters,
    /// Split into one series per value of this dimension (the top `limit` by `metric`).
    pub by: Option<Dimension>,
    pub limit: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub start: Micros,
    pub count: u64,
    /// `None` where the bucket has no requests.
    pub value: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The grouping value, or `None` for the single series of everything.
    pub key: Option<String>,
    pub points: Vec<Point>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TimeseriesAnswer {
    pub series: Vec<Series>,
    /// False when a value is approximate: a quantile, or a grouped value read
    /// from a cube bucket over its key budget (its point holds what the cube kept).
    pub exact: bool,
    pub sources: Vec<&'static str>,
    /// Set when the range starts before the data still kept: points before
    /// this instant hold only what is kept.
    pub retained_from: Option<Micros>,
}

pub fn timeseries(engine: &Engine, q: &TimeseriesQuery) -> Result<TimeseriesAnswer> {
    if q.interval_us < 1_000_000 {
        return Err(QueryError::Invalid(
            "interval",
            "must be at least 1s".into(),
        ));
    }
    let first = q.range.start.floor_to(q.interval_us).get();
    let end = q.range.end.get();
    let points = (end - first + q.interval_us - 1) / q.interval_us;
    if points > MAX_POINTS {
        return Err(QueryError::TooLarge(
            "interval",
            format!(
                "the range holds {points} intervals; at most {MAX_POINTS} per request (widen the interval)"
            ),
        ));
    }
    let mut sources: Vec<&'static str> = Vec::new();
    let mut exact = q.metric.is_exact();
    let keys: Vec<Option<String>> = match q.by {
        None => vec![None],
        Some(dim) => {
            let best = TopK {
                k: q.limit.max(1),
                metric: q.metric,
                by: Grouping::By(dim),
                range: q.range,
                filters: q.filters.clone(),
                min_count: 0,
                order: Order::Desc,
            };
            let answer = top_k(engine, &best)?;
            exact &= answer.exact;
            answer.rows.into_iter().map(|r| Some(r.key)).collect()
        }
    };
    let dim =
        q.by.unwrap_or_else(|| crate::window::cube_dimension(&q.filters));
    let mut series: Vec<Series> = keys
        .iter()
        .map(|k| Series {
            key: k.clone(),
            points: Vec::new(),
        })
        .collect();
    // (start, range) of each interval; the first starts before the range.
    let intervals: Vec<(i64, TimeRange)> = (0..points)
        .map(|i| first + i * q.interval_us)
        .map(|t| {
            let range = TimeRange {
                start: Micros::new(t.max(q.range.start.get())),
                end: Micros::new((t + q.interval_us).min(end)),
            };
            (t, range)
        })
        .collect();
    // Intervals are read a group at a time: one lock per group, and only a
    // group's merged cells (every key, for a grouped series) held at once.
    for group in intervals.chunks(INTERVALS_READ_TOGETHER) {
        let ranges: Vec<TimeRange> = group.iter().map(|(_, r)| *r).collect();
        let merged_cells = merged_cells_in(engine, &ranges, dim, &q.filters, q.metric, |s| {
            if !sources.contains(&s) {
                sources.push(s);
            }
        })?;
        for (&(t, _), merged) in group.iter().zip(merged_cells) {
            for s in &mut series {
                let cell = match &s.key {
                    Some(k) => {
                        exact &= merged.exact();
                        merged.get(k).map(|g| g.cell.clone())
                    }
                    None => {
                        let (total, missed) = merged.total();
                        exact &= missed.requests == 0;
                        Some(total)
                    }
                };
                let count = cell.as_ref().map_or(0, |c| c.count);
                let value = match cell.as_ref().and_then(|c| q.metric.value(c)) {
                    Some((v, _)) => Some(v),
                    // A count over no requests is 0; an average or rate of nothing is undefined.
                    None if matches!(q.metric, Metric::Frequency | Metric::Errors) => Some(0.0),
                    None => None,
                };
                s.points.push(Point {
                    start: Micros::new(t),
                    count,
                    value,
                });
            }
        }
    }
    Ok(TimeseriesAnswer {
        series,
        exact,
        sources,
        retained_from: retained_from(engine, q.range, Grouping::By(dim), &q.filters, q.metric),
    })
}
