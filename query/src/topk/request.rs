//! `by=request`: single requests ranked by latency, read from raw rows, not
//! grouped.

use toplog_engine::Engine;

use super::{Order, TopK, TopKAnswer, TopKRow};
use crate::{Metric, QueryError, Result};

/// Single requests ranked by their latency (every latency metric is the request's latency).
pub(super) fn slowest(engine: &Engine, q: &TopK) -> Result<TopKAnswer> {
    if !matches!(
        q.metric,
        Metric::LatencyAvg
            | Metric::LatencyMax
            | Metric::LatencyP50
            | Metric::LatencyP90
            | Metric::LatencyP95
            | Metric::LatencyP99
    ) {
        return Err(QueryError::Conflicting(
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
    Ok(TopKAnswer::of_requests(rows))
}

impl TopKAnswer {
    /// An answer of single requests: exact, from raw rows.
    pub(crate) fn of_requests(rows: Vec<TopKRow>) -> Self {
        Self {
            rows,
            exact: true,
            unlisted_max_count: 0,
            sources: vec!["raw"],
            retained_from: None,
        }
    }
}
