//! Top-K, time series and daily history.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use toplog_query::{Grouping, Order, TopK};
use toplog_types::Micros;
use toplog_types::{Param, Shape};

use super::params::{self, Params, QuerySpec};
use super::{ApiError, ApiResult, AppState, ReadPoint};
use crate::metrics::ReadSource;

/// `GET /api/v1/requests/top-k`.
/// The required `metric`.
fn metric(p: &Params) -> ApiResult<toplog_query::Metric> {
    p.choice("metric")?
        .and_then(toplog_query::Metric::parse)
        .ok_or_else(|| ApiError::internal("`metric` is required".into()))
}

pub(super) const TOP_K: QuerySpec = QuerySpec {
    params: &[
        params::CONSISTENCY,
        params::ALLOW_PARTIAL,
        Param {
            name: "k",
            shape: Shape::Int { min: 1, max: MAX_K },
            doc: "How many rows to return.",
        },
        params::METRIC,
        Param {
            name: "by",
            shape: Shape::Choice(&Grouping::NAMES),
            doc: "What to rank: keys of a dimension, or single requests (`request`). Default: endpoint.",
        },
        params::START,
        params::END,
        params::ENDPOINT,
        params::USER_ID,
        params::STATUS_CODE,
        params::METHOD,
        params::STATUS_CLASS,
        Param {
            name: "min_count",
            shape: Shape::Int {
                min: 0,
                max: u64::MAX,
            },
            doc: "Leave out groups with fewer requests.",
        },
        Param {
            name: "order",
            shape: Shape::Choice(&["desc", "asc"]),
            doc: "Largest first (default) or smallest first.",
        },
    ],
    required: &["k", "metric"],
};
const MAX_K: u64 = 10_000;

pub(super) async fn top_k(
    State(app): State<Arc<AppState>>,
    raw: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> ApiResult {
    let started = std::time::Instant::now();
    let p = Params::new(raw, TOP_K)?;
    let q = top_k_query(&p)?;
    // The answer is rendered on the read thread too: a top-10,000 is a
    // megabyte of JSON, work for a read's priority, not the network threads'.
    app.read(&p, move |stores| {
        let answer = stores.top_k(&q)?;
        Ok(top_k_body(&answer, started, stores.point()))
    })
    .await
}

/// A top-K given by parameter values (a gRPC request's), checked as the
/// query string is, and answered.
pub(crate) async fn top_k_by_values(
    app: &AppState,
    values: HashMap<String, String>,
) -> ApiResult<(toplog_query::TopKAnswer, Option<ReadPoint>)> {
    let p = Params::from_values(values, TOP_K)?;
    let q = top_k_query(&p)?;
    app.read(&p, move |stores| Ok((stores.top_k(&q)?, stores.point())))
        .await
}

fn top_k_query(p: &Params) -> ApiResult<TopK> {
    let k = p
        .small("k")?
        .ok_or_else(|| ApiError::internal("`k` is required".into()))?;
    let metric = metric(p)?;
    let by = Grouping::parse(p.choice("by")?.unwrap_or("endpoint"))
        .ok_or_else(|| ApiError::internal("`by` declares an unknown grouping".into()))?;
    let order = match p.choice("order")? {
        Some("asc") => Order::Asc,
        _ => Order::Desc,
    };
    let range = p.recent_range()?;
    let filters = p.query_filters()?;
    let min_count = p.int("min_count")?.unwrap_or(0);
    Ok(TopK {
        k,
        metric,
        by,
        range,
        filters,
        min_count,
        order,
    })
}

fn top_k_body(
    answer: &toplog_query::TopKAnswer,
    started: std::time::Instant,
    point: Option<ReadPoint>,
) -> Response {
    let data: Vec<Value> = answer
        .rows
        .iter()
        .map(|r| {
            let mut row = json!({"request_id": r.key, "metric_value": r.value, "count": r.count});
            if let Some((lo, hi)) = r.bounds {
                row["lower"] = json!(lo);
                row["upper"] = json!(hi);
            }
            row
        })
        .collect();
    let mut meta = json!({
        "exact": answer.exact,
        "sources": answer.sources,
        "took_ms": started.elapsed().as_secs_f64() * 1000.0,
    });
    if answer.unlisted_max_count > 0 {
        meta["unlisted_max_count"] = json!(answer.unlisted_max_count);
    }
    if let Some(t) = answer.retained_from {
        meta["retained_from"] = json!(t.to_rfc3339());
    }
    ReadPoint::add_to(point, &mut meta);
    let mut resp = Json(json!({"status": "success", "data": data, "meta": meta})).into_response();
    resp.extensions_mut()
        .insert(ReadSource::of(&answer.sources));
    resp
}

const MAX_HISTORY_DAYS: i64 = 366;
const DAY_US: i64 = 86_400_000_000;

/// `GET /api/v1/requests/history`.
pub(super) const HISTORY: QuerySpec = QuerySpec {
    params: &[
        params::CONSISTENCY,
        params::ALLOW_PARTIAL,
        Param {
            name: "start_date",
            shape: Shape::Date,
            doc: "First day (UTC).",
        },
        Param {
            name: "end_date",
            shape: Shape::Date,
            doc: "Last day (UTC), inclusive; at most 366 days after `start_date`.",
        },
    ],
    required: &["start_date", "end_date"],
};

pub(super) async fn history(
    State(app): State<Arc<AppState>>,
    raw: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> ApiResult {
    let (rows, point) = history_of(&app, Params::new(raw, HISTORY)?).await?;
    let data: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "date": r.date.to_rfc3339().get(..10),
                "total_requests": r.total_requests,
                "average_latency": r.average_latency,
                "error_rate": r.error_rate,
                "p99_latency": r.p99_latency,
            })
        })
        .collect();
    let mut meta = json!({});
    ReadPoint::add_to(point, &mut meta);
    let mut resp = Json(json!({"status": "success", "data": data, "meta": meta})).into_response();
    // A day's row comes from its day rollup.
    resp.extensions_mut().insert(ReadSource("rollup"));
    Ok(resp)
}

/// A history given by parameter values (a gRPC request's), checked as the
/// query string is.
pub(crate) async fn history_by_values(
    app: &AppState,
    values: HashMap<String, String>,
) -> ApiResult<(Vec<toplog_query::DayRow>, Option<ReadPoint>)> {
    history_of(app, Params::from_values(values, HISTORY)?).await
}

async fn history_of(
    app: &AppState,
    p: Params,
) -> ApiResult<(Vec<toplog_query::DayRow>, Option<ReadPoint>)> {
    use toplog_query::QueryError;
    let required =
        |d: Option<i64>| d.ok_or_else(|| ApiError::internal("a date is required".into()));
    let (first, last) = (
        required(p.date("start_date")?)?,
        required(p.date("end_date")?)?,
    );
    let days = last - first + 1;
    if days < 1 {
        return Err(
            QueryError::Conflicting("end_date", "must not be before `start_date`".into()).into(),
        );
    }
    if days > MAX_HISTORY_DAYS {
        return Err(QueryError::TooLarge(
            "end_date",
            format!("at most {MAX_HISTORY_DAYS} days per request"),
        )
        .into());
    }
    // Nothing is stored before 1970: days before it have no row.
    let first = first.max(0);
    let days = u32::try_from(last - first + 1).unwrap_or(0);
    let first_day = first * DAY_US;
    app.read(&p, move |stores| {
        Ok((
            stores.history(Micros::new(first_day), days)?,
            stores.point(),
        ))
    })
    .await
}

/// `GET /api/v1/requests/timeseries`.
pub(super) const TIMESERIES: QuerySpec = QuerySpec {
    params: &[
        params::CONSISTENCY,
        params::ALLOW_PARTIAL,
        params::METRIC,
        Param {
            name: "interval",
            shape: Shape::Duration,
            doc: "Point spacing (1m by default); points align to multiples of it.",
        },
        params::START,
        params::END,
        params::ENDPOINT,
        params::USER_ID,
        params::STATUS_CODE,
        params::METHOD,
        params::STATUS_CLASS,
        Param {
            name: "by",
            shape: Shape::Choice(&DIMENSIONS),
            doc: "One series per key of this dimension (the `limit` largest by the metric).",
        },
        Param {
            name: "limit",
            shape: Shape::Int {
                min: 1,
                max: MAX_SERIES,
            },
            doc: "Most series with `by` (10 by default).",
        },
        params::REQUEST_ID,
    ],
    required: &["metric"],
};
const MAX_SERIES: u64 = 100;
const DIMENSIONS: [&str; 4] = ["endpoint", "user_id", "status_code", "method"];
/// `interval` when none is given: a minute.
const DEFAULT_INTERVAL_US: i64 = 60_000_000;

pub(super) async fn timeseries(
    State(app): State<Arc<AppState>>,
    raw: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> ApiResult {
    let p = Params::new(raw, TIMESERIES)?;
    let q = timeseries_query(&p)?;
    app.read(&p, move |stores| {
        let answer = stores.timeseries(&q)?;
        Ok(timeseries_body(&answer, stores.point()))
    })
    .await
}

/// A time series given by parameter values (a gRPC request's), checked as
/// the query string is, and answered.
pub(crate) async fn timeseries_by_values(
    app: &AppState,
    values: HashMap<String, String>,
) -> ApiResult<(toplog_query::TimeseriesAnswer, Option<ReadPoint>)> {
    let p = Params::from_values(values, TIMESERIES)?;
    let q = timeseries_query(&p)?;
    app.read(&p, move |stores| {
        Ok((stores.timeseries(&q)?, stores.point()))
    })
    .await
}

fn timeseries_query(p: &Params) -> ApiResult<toplog_query::TimeseriesQuery> {
    use toplog_engine::Dimension;
    let metric = metric(p)?;
    let interval_us = p.duration("interval")?.unwrap_or(DEFAULT_INTERVAL_US);
    let range = p.recent_range()?;
    let filters = p.query_filters()?;
    let by = p.choice("by")?.map(|d| match d {
        "endpoint" => Dimension::Endpoint,
        "user_id" => Dimension::UserId,
        "status_code" => Dimension::StatusCode,
        _ => Dimension::Method,
    });
    let limit = p.small("limit")?.unwrap_or(10);
    Ok(toplog_query::TimeseriesQuery {
        metric,
        interval_us,
        range,
        filters,
        by,
        limit,
    })
}

fn timeseries_body(answer: &toplog_query::TimeseriesAnswer, point: Option<ReadPoint>) -> Response {
    let source = ReadSource::of(&answer.sources);
    // Typed rows, not `json!` maps: a day of minutes is 1,440 points, and
    // building a map per point cost as much as answering the query.
    #[derive(serde::Serialize)]
    struct PointRow {
        count: u64,
        time: String,
        value: Option<f64>,
    }
    #[derive(serde::Serialize)]
    struct SeriesRow<'a> {
        key: Option<&'a str>,
        points: Vec<PointRow>,
    }
    let data: Vec<SeriesRow<'_>> = answer
        .series
        .iter()
        .map(|s| SeriesRow {
            key: s.key.as_deref(),
            points: s
                .points
                .iter()
                .map(|pt| PointRow {
                    count: pt.count,
                    time: pt.start.to_rfc3339(),
                    value: pt.value,
                })
                .collect(),
        })
        .collect();
    #[derive(serde::Serialize)]
    struct Body<'a> {
        data: Vec<SeriesRow<'a>>,
        meta: Value,
        status: &'static str,
    }
    let mut meta = json!({"exact": answer.exact, "sources": answer.sources});
    if let Some(t) = answer.retained_from {
        meta["retained_from"] = json!(t.to_rfc3339());
    }
    ReadPoint::add_to(point, &mut meta);
    let body = Body {
        data,
        meta,
        status: "success",
    };
    let mut resp = Json(body).into_response();
    resp.extensions_mut().insert(source);
    resp
}
