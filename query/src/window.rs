//! A metric over one window, per key or in total, from the rollups: what an
//! alert rule reads as each minute closes ([`window_values`]), and whether
//! the rollups can answer a rule at all ([`rollups_answer`]).

use toplog_engine::{Dimension, Engine, Filters, TimeRange};

use crate::topk::{cube_answers, merged_cells};
use crate::{Grouping, Metric, Order, QueryError, Result, TopK, TopKRow, top_k};

/// The cube a total of `filters` is read from: the one that applies them
/// (a filter on one dimension at most), or the one with fewest keys.
pub(crate) fn cube_dimension(f: &Filters) -> Dimension {
    if f.endpoint.is_some() {
        Dimension::Endpoint
    } else if f.user_id.is_some() {
        Dimension::UserId
    } else if f.status_code.is_some() {
        Dimension::StatusCode
    } else {
        Dimension::Method
    }
}

/// Whether `metric` by `by` (the total without it) under `filters` is read
/// from the rollups alone; the reason when it is not.
pub fn rollups_answer(by: Option<Dimension>, filters: &Filters, metric: Metric) -> Result<()> {
    let dim = by.unwrap_or_else(|| cube_dimension(filters));
    if cube_answers(dim, filters, metric) {
        return Ok(());
    }
    let why = if dim == Dimension::UserId && metric.quantile().is_some() {
        "the user cube keeps no latency sketch: a latency quantile by or of a user is read from raw rows"
            .to_owned()
    } else {
        format!(
            "no rollup of {} applies these filters (a filter on one dimension besides the grouped one, and a status class, at most; never a request id)",
            dim.name()
        )
    };
    Err(QueryError::Invalid("filters", why))
}

/// `metric` over `range` per key of `by`, the best `k` by `order`, or
/// without `by` the one total (key ""), and the sources read.
pub fn window_values(
    engine: &Engine,
    metric: Metric,
    by: Option<Dimension>,
    filters: &Filters,
    range: TimeRange,
    k: usize,
    order: Order,
) -> Result<(Vec<TopKRow>, Vec<&'static str>)> {
    let q = window_question(metric, by, filters, range, k, order)?;
    if by.is_some() {
        let answer = top_k(engine, &q)?;
        return Ok((answer.rows, answer.sources));
    }
    let mut sources = Vec::new();
    let merged = merged_cells(
        engine,
        range,
        cube_dimension(filters),
        filters,
        metric,
        |s| {
            if !sources.contains(&s) {
                sources.push(s);
            }
        },
    )?;
    let (total, missed) = merged.total();
    let rows = match metric.value_with(&total, &missed) {
        Some((value, bounds)) if total.count > 0 => vec![TopKRow {
            key: String::new(),
            value,
            count: total.count,
            bounds,
        }],
        _ => Vec::new(),
    };
    Ok((rows, sources))
}

/// The top-K question whose shards' [`KeyCells`](crate::KeyCells) make
/// [`window_values`] across shards: grouped by `by`, or, for the one
/// total, by the cube the total is read from.
pub fn window_question(
    metric: Metric,
    by: Option<Dimension>,
    filters: &Filters,
    range: TimeRange,
    k: usize,
    order: Order,
) -> Result<TopK> {
    rollups_answer(by, filters, metric)?;
    Ok(TopK {
        k,
        metric,
        by: Grouping::By(by.unwrap_or_else(|| cube_dimension(filters))),
        range,
        filters: filters.clone(),
        min_count: 0,
        order,
    })
}

/// [`window_values`] from every shard's key cells for `q` (a
/// [`window_question`]): the best keys, or (`grouped` false) the total of
/// every key's cells.
pub fn window_values_of_cells(
    parts: Vec<crate::KeyCells>,
    q: &TopK,
    grouped: bool,
) -> Result<(Vec<TopKRow>, Vec<&'static str>)> {
    if grouped {
        let answer = crate::top_k_of_cells(parts, q)?;
        return Ok((answer.rows, answer.sources));
    }
    let mut sources: Vec<&'static str> = Vec::new();
    let mut total: Option<toplog_engine::Cell> = None;
    for part in parts {
        for s in part.sources {
            if !sources.contains(&s) {
                sources.push(s);
            }
        }
        for (_, cell) in part.cells {
            match &mut total {
                Some(t) => t.merge(&cell),
                None => total = Some(cell),
            }
        }
    }
    let rows = match total {
        Some(total) if total.count > 0 => match q.metric.value(&total) {
            Some((value, bounds)) => vec![TopKRow {
                key: String::new(),
                value,
                count: total.count,
                bounds,
            }],
            None => Vec::new(),
        },
        _ => Vec::new(),
    };
    Ok((rows, sources))
}
