//! Points per interval for dashboards: one series for everything matching the
//! filters, or the top `limit` series of a grouping. Each point is planned like
//! any other range, so it is exact for exact metrics wherever its edges fall.

use toplog_engine::{Cell, Dimension, Engine, Filters, TimeRange};
use toplog_types::Micros;

use crate::topk::{Grouping, Order, TopK, merged_cells_in, retained_from, top_k};
use crate::{Metric, QueryError, Result};

/// At most this many points per series.
pub const MAX_POINTS: i64 = 10_000;

/// Intervals whose cells are read under one lock.
const INTERVALS_READ_TOGETHER: usize = 64;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
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
    intervals(q)?;
    let (keys, keys_exact) = match keys_question(q) {
        None => (vec![None], true),
        Some(best) => {
            let answer = top_k(engine, &best)?;
            let keys = answer.rows.into_iter().map(|r| Some(r.key)).collect();
            (keys, answer.exact)
        }
    };
    let mut answer = timeseries_of_cells(vec![series_cells(engine, q, &keys)?], q);
    answer.exact &= keys_exact;
    Ok(answer)
}

/// The top-K question that picks a grouped series' keys (the top `limit` by
/// the metric over the whole range); `None` for the single series. Across
/// shards it is asked of them all.
pub fn keys_question(q: &TimeseriesQuery) -> Option<TopK> {
    q.by.map(|dim| TopK {
        k: q.limit.max(1),
        metric: q.metric,
        by: Grouping::By(dim),
        range: q.range,
        filters: q.filters.clone(),
        min_count: 0,
        order: Order::Desc,
    })
}

/// One shard's part of a time series: for each series (by key, or the one
/// of everything), its cell in each interval.
#[derive(Debug, Clone)]
pub struct SeriesCells {
    pub starts: Vec<Micros>,
    pub series: Vec<(Option<String>, Vec<Option<Cell>>)>,
    /// False when a cell read from a bucket over its key budget may miss requests.
    pub exact: bool,
    pub sources: Vec<&'static str>,
    pub retained_from: Option<Micros>,
}

/// (start, range) of each interval of `q`; the first starts before the
/// range. Refused past [`MAX_POINTS`] or under a second.
fn intervals(q: &TimeseriesQuery) -> Result<Vec<(i64, TimeRange)>> {
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
    Ok((0..points)
        .map(|i| first + i * q.interval_us)
        .map(|t| {
            let range = TimeRange {
                start: Micros::new(t.max(q.range.start.get())),
                end: Micros::new((t + q.interval_us).min(end)),
            };
            (t, range)
        })
        .collect())
}

/// This engine's cells of the series `keys` (`None`: everything matching).
pub fn series_cells(
    engine: &Engine,
    q: &TimeseriesQuery,
    keys: &[Option<String>],
) -> Result<SeriesCells> {
    let intervals = intervals(q)?;
    let dim =
        q.by.unwrap_or_else(|| crate::window::cube_dimension(&q.filters));
    let mut out = SeriesCells {
        starts: intervals.iter().map(|(t, _)| Micros::new(*t)).collect(),
        series: keys.iter().map(|k| (k.clone(), Vec::new())).collect(),
        exact: true,
        sources: Vec::new(),
        retained_from: retained_from(engine, q.range, Grouping::By(dim), &q.filters, q.metric),
    };
    let sources = &mut out.sources;
    // Intervals are read a group at a time: one lock per group, and only a
    // group's merged cells (every key, for a grouped series) held at once.
    for group in intervals.chunks(INTERVALS_READ_TOGETHER) {
        let ranges: Vec<TimeRange> = group.iter().map(|(_, r)| *r).collect();
        let merged_cells = merged_cells_in(engine, &ranges, dim, &q.filters, q.metric, |s| {
            if !sources.contains(&s) {
                sources.push(s);
            }
        })?;
        for merged in merged_cells {
            for (key, cells) in &mut out.series {
                let cell = match key {
                    Some(k) => {
                        out.exact &= merged.exact();
                        merged.get(k).map(|g| g.cell.clone())
                    }
                    None => {
                        let (total, missed) = merged.total();
                        out.exact &= missed.requests == 0;
                        Some(total)
                    }
                };
                cells.push(cell);
            }
        }
    }
    Ok(out)
}

/// The series of every shard's [`SeriesCells`] (for the same keys and
/// intervals), their cells added up.
pub fn timeseries_of_cells(parts: Vec<SeriesCells>, q: &TimeseriesQuery) -> TimeseriesAnswer {
    let mut parts = parts.into_iter();
    let Some(mut whole) = parts.next() else {
        return TimeseriesAnswer {
            series: Vec::new(),
            exact: q.metric.is_exact(),
            sources: Vec::new(),
            retained_from: None,
        };
    };
    for part in parts {
        whole.exact &= part.exact;
        for s in part.sources {
            if !whole.sources.contains(&s) {
                whole.sources.push(s);
            }
        }
        whole.retained_from = whole.retained_from.max(part.retained_from);
        for ((_, cells), (_, more)) in whole.series.iter_mut().zip(part.series) {
            for (cell, other) in cells.iter_mut().zip(more) {
                match (cell.as_mut(), other) {
                    (Some(c), Some(o)) => c.merge(&o),
                    (None, Some(o)) => *cell = Some(o),
                    (_, None) => {}
                }
            }
        }
    }
    let series = (whole.series.into_iter())
        .map(|(key, cells)| Series {
            key,
            points: (whole.starts.iter().zip(cells))
                .map(|(start, cell)| {
                    let count = cell.as_ref().map_or(0, |c| c.count);
                    let value = match cell.as_ref().and_then(|c| q.metric.value(c)) {
                        Some((v, _)) => Some(v),
                        // A count over no requests is 0; an average or rate of nothing is undefined.
                        None if matches!(q.metric, Metric::Frequency | Metric::Errors) => Some(0.0),
                        None => None,
                    };
                    Point {
                        start: *start,
                        count,
                        value,
                    }
                })
                .collect(),
        })
        .collect();
    TimeseriesAnswer {
        series,
        exact: q.metric.is_exact() && whole.exact,
        sources: whole.sources,
        retained_from: whole.retained_from,
    }
}
