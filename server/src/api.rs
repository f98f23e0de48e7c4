//! The REST API under `/api/v1`, plus `/healthz` and `/readyz`. Handlers parse
//! and check parameters, then hand CPU work to blocking threads.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post, put};
use axum::{Json, Router};
use serde_json::{Value, json};
use toplog_compaction::Maintainer;
use toplog_engine::{Cursor, Engine, EngineError, Filters, KeyedEvents, TimeRange};
use toplog_types::{EventError, Micros, ValidationLimits};

use crate::config::Config;
use crate::ingest::{BodyFormat, decode_body, parse_events};
use crate::openapi::{Body, Operation};

const DEFAULT_LIMIT: usize = 1000;
const MAX_LIMIT: usize = 10_000;
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// An error as the API returns it: `{"status":"error","error":{"code","message",...}}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
    pub(crate) row: Option<usize>,
    pub(crate) field: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: String) -> Self {
        Self {
            status,
            code,
            message,
            row: None,
            field: None,
        }
    }

    pub(crate) fn bad_request(code: &'static str, message: String) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub(crate) fn too_large(message: String) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", message)
    }

    pub(crate) fn unsupported(code: &'static str, message: String) -> Self {
        Self::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, code, message)
    }

    fn unavailable(message: String) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    fn internal(message: String) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// A bad query parameter, named in `field`.
    fn parameter(name: &str, message: String) -> Self {
        Self {
            field: Some(name.to_owned()),
            ..Self::bad_request("invalid_parameter", format!("`{name}`: {message}"))
        }
    }

    pub(crate) fn with_row(mut self, row: usize) -> Self {
        self.row = Some(row);
        self
    }
}

impl From<EventError> for ApiError {
    fn from(e: EventError) -> Self {
        Self {
            row: Some(e.row),
            field: Some(e.field.clone()),
            ..Self::bad_request("invalid_event", e.to_string())
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Wal(toplog_wal::WalError::TooLarge { .. }) => {
                Self::too_large(e.to_string())
            }
            EngineError::Unavailable(_) | EngineError::Wal(_) | EngineError::Archive { .. } => {
                Self::unavailable(e.to_string())
            }
            EngineError::Invalid(m) => Self::bad_request("invalid_request", m),
            other => Self::internal(other.to_string()),
        }
    }
}

impl From<toplog_query::QueryError> for ApiError {
    fn from(e: toplog_query::QueryError) -> Self {
        match e {
            toplog_query::QueryError::Engine(e) => e.into(),
            toplog_query::QueryError::Invalid(param, m) => Self::parameter(param, m),
            toplog_query::QueryError::Storage(m) => Self::internal(m),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(row) = self.row {
            error["row"] = json!(row);
        }
        if let Some(field) = self.field {
            error["field"] = json!(field);
        }
        (
            self.status,
            Json(json!({"status": "error", "error": error})),
        )
            .into_response()
    }
}

type ApiResult<T = Response> = Result<T, ApiError>;

/// Shared by all handlers. The engine is set once recovery has finished.
#[derive(Debug)]
pub(crate) struct AppState {
    pub(crate) config: Config,
    pub(crate) engine: OnceLock<Arc<Engine>>,
    /// Set when opening the store failed: `/readyz` reports it.
    pub(crate) startup_error: OnceLock<String>,
    /// Aggregation jobs; opened with the engine.
    pub(crate) jobs: OnceLock<Arc<toplog_query::JobStore>>,
    /// Retention, compaction and tiering; set with the engine.
    pub(crate) maintainer: OnceLock<Arc<Maintainer>>,
}

impl AppState {
    fn maintainer(&self) -> ApiResult<Arc<Maintainer>> {
        self.engine()?;
        self.maintainer
            .get()
            .cloned()
            .ok_or_else(|| ApiError::unavailable("recovering".into()))
    }

    fn engine(&self) -> ApiResult<Arc<Engine>> {
        match self.engine.get() {
            Some(e) => Ok(e.clone()),
            None => Err(ApiError::unavailable(match self.startup_error.get() {
                Some(e) => format!("the store failed to open: {e}"),
                None => "recovering: replaying the write-ahead log".into(),
            })),
        }
    }
}

const LIST_PARAMS: [&str; 9] = [
    "start",
    "end",
    "endpoint",
    "user_id",
    "method",
    "status_code",
    "request_id",
    "limit",
    "cursor",
];
const HISTORY_PARAMS: [&str; 2] = ["start_date", "end_date"];

/// Every route: registered from this table and documented from it.
pub(crate) const OPERATIONS: [Operation; 16] = [
    Operation {
        method: "get",
        path: "/healthz",
        summary: "The process is alive.",
        query: &[],
        required: &[],
        body: None,
        ok: (200, "Health"),
        errors: &[],
    },
    Operation {
        method: "get",
        path: "/readyz",
        summary: "Recovered and accepting writes; 503 says why not.",
        query: &[],
        required: &[],
        body: None,
        ok: (200, "Health"),
        errors: &[503],
    },
    Operation {
        method: "post",
        path: "/api/v1/requests",
        summary: "Ingest a batch of request events; answered once durable.",
        query: &[],
        required: &[],
        body: Some(Body::Events),
        ok: (200, "Ack"),
        errors: &[400, 413, 415, 503],
    },
    Operation {
        method: "get",
        path: "/api/v1/requests",
        summary: "Stored events in time order, a page at a time.",
        query: &LIST_PARAMS,
        required: &[],
        body: None,
        ok: (200, "Events"),
        errors: &[400, 503],
    },
    Operation {
        method: "get",
        path: "/api/v1/requests/count",
        summary: "The exact number of stored events matching.",
        query: &FILTER_PARAMS,
        required: &[],
        body: None,
        ok: (200, "Count"),
        errors: &[400, 503],
    },
    Operation {
        method: "get",
        path: "/api/v1/requests/top-k",
        summary: "The top K keys (or requests) by a metric.",
        query: &TOP_K_PARAMS,
        required: &["k", "metric"],
        body: None,
        ok: (200, "TopK"),
        errors: &[400, 503],
    },
    Operation {
        method: "get",
        path: "/api/v1/requests/timeseries",
        summary: "Points per interval, for dashboards.",
        query: &TIMESERIES_PARAMS,
        required: &["metric"],
        body: None,
        ok: (200, "Timeseries"),
        errors: &[400, 503],
    },
    Operation {
        method: "get",
        path: "/api/v1/requests/history",
        summary: "One row per UTC day.",
        query: &HISTORY_PARAMS,
        required: &["start_date", "end_date"],
        body: None,
        ok: (200, "History"),
        errors: &[400, 503],
    },
    Operation {
        method: "post",
        path: "/api/v1/requests/aggregate",
        summary: "Submit a background aggregation.",
        query: &[],
        required: &[],
        body: Some(Body::Aggregation),
        ok: (202, "Submitted"),
        errors: &[400, 503],
    },
    Operation {
        method: "get",
        path: "/api/v1/requests/aggregate",
        summary: "Every aggregation job, without results.",
        query: &[],
        required: &[],
        body: None,
        ok: (200, "Jobs"),
        errors: &[503],
    },
    Operation {
        method: "get",
        path: "/api/v1/requests/aggregate/{id}",
        summary: "One aggregation job with its result.",
        query: &[],
        required: &[],
        body: None,
        ok: (200, "Job"),
        errors: &[404, 503],
    },
    Operation {
        method: "get",
        path: "/api/v1/storage",
        summary: "Partitions, segments, tiers with sizes and oldest data, the archive's state.",
        query: &[],
        required: &[],
        body: None,
        ok: (200, "Storage"),
        errors: &[503],
    },
    Operation {
        method: "post",
        path: "/api/v1/admin/maintenance",
        summary: "Run maintenance now (purge, compaction, tiering); returns what it did.",
        query: &[],
        required: &[],
        body: None,
        ok: (200, "Maintenance"),
        errors: &[503],
    },
    Operation {
        method: "get",
        path: "/api/v1/retention",
        summary: "The retention policy.",
        query: &[],
        required: &[],
        body: None,
        ok: (200, "Retention"),
        errors: &[503],
    },
    Operation {
        method: "put",
        path: "/api/v1/retention",
        summary: "Change any keys of the retention policy; persisted, obeyed at once.",
        query: &[],
        required: &[],
        body: Some(Body::Retention),
        ok: (200, "Retention"),
        errors: &[400, 503],
    },
    Operation {
        method: "get",
        path: "/api/v1/openapi.json",
        summary: "This document.",
        query: &[],
        required: &[],
        body: None,
        ok: (200, "OpenApi"),
        errors: &[],
    },
];

/// The handler of a documented operation.
fn handler(op: &Operation) -> MethodRouter<Arc<AppState>> {
    match (op.method, op.path) {
        ("get", "/healthz") => get(healthz),
        ("get", "/readyz") => get(readyz),
        ("post", "/api/v1/requests") => post(ingest),
        ("get", "/api/v1/requests") => get(list_requests),
        ("get", "/api/v1/requests/count") => get(count_requests),
        ("get", "/api/v1/requests/top-k") => get(top_k),
        ("get", "/api/v1/requests/timeseries") => get(timeseries),
        ("get", "/api/v1/requests/history") => get(history),
        ("post", "/api/v1/requests/aggregate") => post(submit_aggregation),
        ("get", "/api/v1/requests/aggregate") => get(list_aggregations),
        ("get", "/api/v1/requests/aggregate/{id}") => get(get_aggregation),
        ("get", "/api/v1/storage") => get(storage),
        ("post", "/api/v1/admin/maintenance") => post(run_maintenance),
        ("get", "/api/v1/retention") => get(get_retention),
        ("put", "/api/v1/retention") => put(put_retention),
        ("get", "/api/v1/openapi.json") => get(openapi),
        // A table entry without a handler answers 404; the OpenAPI test catches it.
        _ => get(not_found),
    }
}

pub(crate) fn router(state: Arc<AppState>) -> Router {
    let body_limit = state.config.max_body_bytes;
    OPERATIONS
        .iter()
        .fold(Router::new(), |r, op| r.route(op.path, handler(op)))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

async fn storage(State(app): State<Arc<AppState>>) -> ApiResult {
    let m = app.maintainer()?;
    let data = blocking(move || Ok(m.storage())).await?;
    Ok(Json(json!({"status": "success", "data": data})).into_response())
}

async fn run_maintenance(State(app): State<Arc<AppState>>) -> ApiResult {
    let m = app.maintainer()?;
    let report = blocking(move || Ok(m.run())).await?;
    Ok(Json(json!({"status": "success", "data": report})).into_response())
}

async fn get_retention(State(app): State<Arc<AppState>>) -> ApiResult {
    let policy = app.maintainer()?.policy();
    Ok(Json(json!({"status": "success", "data": policy.to_json()})).into_response())
}

async fn put_retention(
    State(app): State<Arc<AppState>>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult {
    let m = app.maintainer()?;
    let Json(change) = body.map_err(|e| ApiError::bad_request("invalid_body", e.body_text()))?;
    let policy = blocking(move || {
        m.set_policy(&change).map_err(|e| ApiError {
            field: Some(e.field.clone()),
            ..ApiError::bad_request("invalid_policy", e.to_string())
        })
    })
    .await?;
    Ok(Json(json!({"status": "success", "data": policy.to_json()})).into_response())
}

async fn openapi() -> Json<Value> {
    Json(crate::openapi::document(&OPERATIONS))
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method".into(),
    )
}

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(app): State<Arc<AppState>>) -> Response {
    let not_ready = |reason: String| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready", "reason": reason})),
        )
    };
    let engine = match app.engine() {
        Ok(e) => e,
        Err(e) => return not_ready(e.message).into_response(),
    };
    match engine.health() {
        Ok(()) => {
            let s = engine.stats();
            Json(json!({"status": "ready", "applied_lsn": s.applied_lsn.get(), "segments": s.segments})).into_response()
        }
        Err(e) => not_ready(e.to_string()).into_response(),
    }
}

/// Runs CPU-bound work off the async reactor.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("worker failed: {e}")))?
}

/// Threads for parsing ingested batches, at a lower scheduling priority
/// (nice 10) than the rest of the node: when ingest saturates the CPU,
/// queries and the thread applying the log still get it first, so answers
/// stay prompt and fresh (BENCHMARKS.md, freshness). `None` if they could
/// not be started; parsing then shares the query threads.
fn parse_threads() -> Option<&'static tokio::runtime::Runtime> {
    static POOL: OnceLock<Option<tokio::runtime::Runtime>> = OnceLock::new();
    POOL.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("toplog-parse")
            .on_thread_start(lower_priority)
            .build()
            .ok()
    })
    .as_ref()
}

/// Lowers the calling thread's priority (Linux applies nice per thread).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority has no memory effects; on failure the thread keeps its priority.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10);
    }
}

/// [`blocking`] on the parse threads.
async fn parsing<T: Send + 'static>(
    f: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    match parse_threads() {
        Some(pool) => pool
            .spawn_blocking(f)
            .await
            .map_err(|e| ApiError::internal(format!("parser failed: {e}")))?,
        None => blocking(f).await,
    }
}

async fn ingest(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let limit = app.config.max_body_bytes;
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::too_large(format!("body exceeds the limit of {limit} bytes"))
        }
        status => ApiError::new(status, "invalid_body", e.body_text()),
    })?;
    let engine = app.engine()?;
    let text = |name: header::HeaderName| -> ApiResult<Option<String>> {
        headers
            .get(&name)
            .map(|v| {
                v.to_str().map(str::to_owned).map_err(|_| {
                    ApiError::bad_request("invalid_header", format!("`{name}` is not ASCII"))
                })
            })
            .transpose()
    };
    let format = BodyFormat::from_content_type(text(header::CONTENT_TYPE)?.as_deref())?;
    let encoding = text(header::CONTENT_ENCODING)?;
    let key = text(header::HeaderName::from_static("idempotency-key"))?;
    if let Some(k) = &key
        && (k.is_empty()
            || k.len() > MAX_IDEMPOTENCY_KEY
            || !k.bytes().all(|b| b.is_ascii_graphic()))
    {
        return Err(ApiError::bad_request(
            "invalid_header",
            format!(
                "`Idempotency-Key` must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"
            ),
        ));
    }
    let cfg = &app.config;
    let limits = ValidationLimits {
        now: Micros::now(),
        max_future_us: micros(cfg.clock_skew),
        max_age_us: micros(
            app.maintainer
                .get()
                .map_or(cfg.policy, |m| m.policy())
                .raw_keep_for,
        ),
    };
    // The events' rollup keys are looked up on the parse thread too (see `KeyedEvents`).
    let events = parsing(move || {
        let raw = decode_body(encoding.as_deref(), &body, limit)?;
        parse_events(format, &raw, &limits).map(KeyedEvents::new)
    })
    .await?;
    if events.is_empty() {
        return Ok(Json(json!({"status": "success", "accepted": 0})).into_response());
    }
    let receipt = engine.ingest(events, key).await?;
    let mut resp = Json(
        json!({"status": "success", "accepted": receipt.accepted, "replayed": receipt.replayed}),
    )
    .into_response();
    if receipt.replayed {
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(resp)
}

fn micros(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Query parameters with typed accessors that name the parameter in errors.
struct Params(HashMap<String, String>);

impl Params {
    fn new(
        raw: Result<Query<HashMap<String, String>>, QueryRejection>,
        allowed: &[&str],
    ) -> ApiResult<Self> {
        let Query(raw) =
            raw.map_err(|e| ApiError::bad_request("invalid_parameter", e.body_text()))?;
        if let Some(bad) = raw.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(ApiError::parameter(
                bad,
                format!("unknown parameter (allowed: {})", allowed.join(", ")),
            ));
        }
        Ok(Self(raw))
    }

    fn string(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }

    fn time(&self, name: &str) -> ApiResult<Option<Micros>> {
        self.0
            .get(name)
            .map(|v| Micros::parse(v).map_err(|e| ApiError::parameter(name, e.to_string())))
            .transpose()
    }

    fn range(&self) -> ApiResult<TimeRange> {
        let start = self.time("start")?.unwrap_or(Micros::new(0));
        let end = self.time("end")?.unwrap_or(Micros::new(i64::MAX));
        if start >= end {
            return Err(ApiError::parameter(
                "start",
                format!("must be before `end` ({start} >= {end})"),
            ));
        }
        Ok(TimeRange { start, end })
    }

    /// `start`/`end` for analytics queries: the last hour by default.
    fn recent_range(&self) -> ApiResult<TimeRange> {
        let now = Micros::now().saturating_add_micros(1);
        let end = self.time("end")?.unwrap_or(now);
        let start = self
            .time("start")?
            .unwrap_or(end.saturating_sub_micros(3_600_000_000));
        if start >= end {
            return Err(ApiError::parameter(
                "start",
                format!("must be before `end` ({start} >= {end})"),
            ));
        }
        Ok(TimeRange { start, end })
    }

    /// The event filters plus `status_class`.
    fn query_filters(&self) -> ApiResult<Filters> {
        let mut filters = self.filters()?;
        filters.status_class = self.number("status_class", 1..=5)?;
        Ok(filters)
    }

    fn metric(&self) -> ApiResult<toplog_query::Metric> {
        use toplog_query::Metric;
        let names = Metric::NAMES.join(", ");
        match self.string("metric") {
            None => Err(ApiError::parameter(
                "metric",
                format!("is required (one of {names})"),
            )),
            Some(m) => Metric::parse(&m).ok_or_else(|| {
                ApiError::parameter("metric", format!("`{m}` is not one of {names}"))
            }),
        }
    }

    fn filters(&self) -> ApiResult<Filters> {
        let status_code = self
            .0
            .get("status_code")
            .map(|v| match v.parse::<u16>() {
                Ok(s @ 100..=599) => Ok(s),
                _ => Err(ApiError::parameter(
                    "status_code",
                    format!("`{v}` is not a status code (100 to 599)"),
                )),
            })
            .transpose()?;
        Ok(Filters {
            endpoint: self.string("endpoint"),
            user_id: self.string("user_id"),
            method: self.string("method"),
            status_code,
            status_class: None,
            request_id: self.string("request_id"),
        })
    }

    /// A whole number in `range`, or `None` when absent.
    fn number<T: std::str::FromStr + PartialOrd + std::fmt::Display>(
        &self,
        name: &str,
        range: std::ops::RangeInclusive<T>,
    ) -> ApiResult<Option<T>> {
        self.0
            .get(name)
            .map(|v| match v.parse::<T>() {
                Ok(n) if range.contains(&n) => Ok(n),
                _ => Err(ApiError::parameter(
                    name,
                    format!(
                        "`{v}` is not a whole number from {} to {}",
                        range.start(),
                        range.end()
                    ),
                )),
            })
            .transpose()
    }
}

const FILTER_PARAMS: [&str; 7] = [
    "start",
    "end",
    "endpoint",
    "user_id",
    "method",
    "status_code",
    "request_id",
];

async fn list_requests(
    State(app): State<Arc<AppState>>,
    raw: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> ApiResult {
    let p = Params::new(raw, &LIST_PARAMS)?;
    let range = p.range()?;
    let filters = p.filters()?;
    let limit = match p.string("limit") {
        None => DEFAULT_LIMIT,
        Some(v) => match v.parse::<usize>() {
            Ok(n @ 1..=MAX_LIMIT) => n,
            _ => {
                return Err(ApiError::parameter(
                    "limit",
                    format!("`{v}` is not a whole number from 1 to {MAX_LIMIT}"),
                ));
            }
        },
    };
    let cursor = p
        .string("cursor")
        .map(|c| {
            Cursor::decode(&c).ok_or_else(|| {
                ApiError::parameter("cursor", "not a cursor returned by this API".into())
            })
        })
        .transpose()?;
    let engine = app.engine()?;
    let page = blocking(move || Ok(engine.scan(range, &filters, cursor.as_ref(), limit)?)).await?;
    let data: Vec<Value> = page
        .events
        .iter()
        .map(toplog_types::Event::to_json)
        .collect();
    Ok(Json(
        json!({"status": "success", "data": data, "next_cursor": page.next.map(|c| c.encode())}),
    )
    .into_response())
}

async fn count_requests(
    State(app): State<Arc<AppState>>,
    raw: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> ApiResult {
    let p = Params::new(raw, &FILTER_PARAMS)?;
    let range = p.range()?;
    let filters = p.filters()?;
    let engine = app.engine()?;
    let count = blocking(move || Ok(engine.count(range, &filters)?)).await?;
    Ok(Json(json!({"status": "success", "count": count})).into_response())
}

const TOP_K_PARAMS: [&str; 12] = [
    "k",
    "metric",
    "by",
    "start",
    "end",
    "endpoint",
    "user_id",
    "status_code",
    "method",
    "status_class",
    "min_count",
    "order",
];
const MAX_K: usize = 10_000;

async fn top_k(
    State(app): State<Arc<AppState>>,
    raw: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> ApiResult {
    use toplog_query::{Grouping, Order, TopK};
    let started = std::time::Instant::now();
    let p = Params::new(raw, &TOP_K_PARAMS)?;
    let k = p
        .number("k", 1..=MAX_K)?
        .ok_or_else(|| ApiError::parameter("k", format!("is required (1 to {MAX_K})")))?;
    let metric = p.metric()?;
    let by = match p.string("by") {
        None => Grouping::parse("endpoint")
            .ok_or_else(|| ApiError::internal("no endpoint grouping".into()))?,
        Some(b) => Grouping::parse(&b).ok_or_else(|| {
            ApiError::parameter(
                "by",
                format!("`{b}` is not one of {}", Grouping::NAMES.join(", ")),
            )
        })?,
    };
    let order = match p.string("order").as_deref() {
        None | Some("desc") => Order::Desc,
        Some("asc") => Order::Asc,
        Some(o) => {
            return Err(ApiError::parameter(
                "order",
                format!("`{o}` is not asc or desc"),
            ));
        }
    };
    let range = p.recent_range()?;
    let filters = p.query_filters()?;
    let min_count = p.number("min_count", 0..=u64::MAX)?.unwrap_or(0);
    let q = TopK {
        k,
        metric,
        by,
        range,
        filters,
        min_count,
        order,
    };
    let engine = app.engine()?;
    let answer = blocking(move || Ok(toplog_query::top_k(&engine, &q)?)).await?;
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
    Ok(Json(json!({"status": "success", "data": data, "meta": meta})).into_response())
}

const MAX_HISTORY_DAYS: i64 = 366;

async fn history(
    State(app): State<Arc<AppState>>,
    raw: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> ApiResult {
    let p = Params::new(raw, &["start_date", "end_date"])?;
    let date = |name: &str| -> ApiResult<chrono::NaiveDate> {
        let v = p
            .string(name)
            .ok_or_else(|| ApiError::parameter(name, "is required (YYYY-MM-DD)".into()))?;
        chrono::NaiveDate::parse_from_str(&v, "%Y-%m-%d")
            .map_err(|_| ApiError::parameter(name, format!("`{v}` is not a date (YYYY-MM-DD)")))
    };
    let (first, last) = (date("start_date")?, date("end_date")?);
    let days = (last - first).num_days() + 1;
    if days < 1 {
        return Err(ApiError::parameter(
            "end_date",
            "must not be before `start_date`".into(),
        ));
    }
    if days > MAX_HISTORY_DAYS {
        return Err(ApiError::parameter(
            "end_date",
            format!("at most {MAX_HISTORY_DAYS} days per request"),
        ));
    }
    let first_day = first
        .and_hms_opt(0, 0, 0)
        .map(|d| d.and_utc().timestamp_micros())
        .filter(|us| *us >= 0)
        .ok_or_else(|| ApiError::parameter("start_date", "must be 1970-01-01 or later".into()))?;
    let engine = app.engine()?;
    let rows = blocking(move || {
        Ok(toplog_query::history(
            &engine,
            Micros::new(first_day),
            days as u32,
        ))
    })
    .await?;
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
    Ok(Json(json!({"status": "success", "data": data})).into_response())
}

const TIMESERIES_PARAMS: [&str; 12] = [
    "metric",
    "interval",
    "start",
    "end",
    "endpoint",
    "user_id",
    "status_code",
    "method",
    "status_class",
    "by",
    "limit",
    "request_id",
];
const MAX_SERIES: usize = 100;

async fn timeseries(
    State(app): State<Arc<AppState>>,
    raw: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> ApiResult {
    use toplog_engine::Dimension;
    let p = Params::new(raw, &TIMESERIES_PARAMS)?;
    let metric = p.metric()?;
    let interval = p.string("interval").unwrap_or_else(|| "1m".into());
    let interval_us = toplog_types::parse_duration(&interval)
        .map_err(|e| ApiError::parameter("interval", e.to_string()))
        .map(micros)?;
    let range = p.recent_range()?;
    let filters = p.query_filters()?;
    let by = match p.string("by").as_deref() {
        None => None,
        Some("endpoint") => Some(Dimension::Endpoint),
        Some("user_id") => Some(Dimension::UserId),
        Some("status_code") => Some(Dimension::StatusCode),
        Some("method") => Some(Dimension::Method),
        Some(other) => {
            return Err(ApiError::parameter(
                "by",
                format!("`{other}` is not one of endpoint, user_id, status_code, method"),
            ));
        }
    };
    let limit = p.number("limit", 1..=MAX_SERIES)?.unwrap_or(10);
    let q = toplog_query::TimeseriesQuery {
        metric,
        interval_us,
        range,
        filters,
        by,
        limit,
    };
    let engine = app.engine()?;
    let answer = blocking(move || Ok(toplog_query::timeseries(&engine, &q)?)).await?;
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
    let body = Body {
        data,
        meta,
        status: "success",
    };
    Ok(Json(body).into_response())
}

const AGGREGATE_FIELDS: [&str; 6] = [
    "start_time",
    "end_time",
    "metrics",
    "interval",
    "group_by",
    "filters",
];

fn field_time(body: &Value, name: &str) -> ApiResult<Micros> {
    match &body[name] {
        Value::Null => Err(ApiError::parameter(
            name,
            "is required (RFC 3339 or epoch milliseconds)".into(),
        )),
        Value::String(s) => Micros::parse(s).map_err(|e| ApiError::parameter(name, e.to_string())),
        Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| ApiError::parameter(name, format!("{n} is not epoch milliseconds")))
            .and_then(|ms| {
                Micros::from_millis(ms).map_err(|e| ApiError::parameter(name, e.to_string()))
            }),
        _ => Err(ApiError::parameter(
            name,
            "expected an RFC 3339 string or epoch milliseconds".into(),
        )),
    }
}

fn dimension(name: &str) -> Option<toplog_engine::Dimension> {
    use toplog_engine::Dimension;
    Some(match name {
        "endpoint" => Dimension::Endpoint,
        "user_id" => Dimension::UserId,
        "status_code" => Dimension::StatusCode,
        "method" => Dimension::Method,
        _ => return None,
    })
}

/// Checks an aggregation request; returns what to compute and the metric names asked for.
fn parse_aggregation(body: &Value) -> ApiResult<(toplog_query::AggregationSpec, Vec<String>)> {
    let Value::Object(obj) = body else {
        return Err(ApiError::bad_request(
            "invalid_body",
            "expected a JSON object".into(),
        ));
    };
    if let Some(bad) = obj.keys().find(|k| !AGGREGATE_FIELDS.contains(&k.as_str())) {
        return Err(ApiError::parameter(
            bad,
            format!("unknown field (known: {})", AGGREGATE_FIELDS.join(", ")),
        ));
    }
    let start = field_time(body, "start_time")?;
    let end = field_time(body, "end_time")?;
    if start >= end {
        return Err(ApiError::parameter(
            "start_time",
            "must be before `end_time`".into(),
        ));
    }
    let metrics: Vec<String> = match &body["metrics"] {
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .map(|m| match m.as_str() {
                // `latency` is avg, p50, p95 and p99 together; any top-K metric works alone.
                Some(name) if name == "latency" || toplog_query::Metric::parse(name).is_some() => {
                    Ok(name.to_owned())
                }
                _ => Err(ApiError::parameter(
                    "metrics",
                    format!(
                        "{m} is not latency or one of {}",
                        toplog_query::Metric::NAMES.join(", ")
                    ),
                )),
            })
            .collect::<ApiResult<_>>()?,
        _ => {
            return Err(ApiError::parameter(
                "metrics",
                "is required: a non-empty array of metric names".into(),
            ));
        }
    };
    let interval_us = match &body["interval"] {
        Value::Null => None,
        Value::String(s) => Some(
            toplog_types::parse_duration(s)
                .map(micros)
                .map_err(|e| ApiError::parameter("interval", e.to_string()))?,
        ),
        _ => {
            return Err(ApiError::parameter(
                "interval",
                "expected a duration such as \"1h\"".into(),
            ));
        }
    };
    let group_by = match &body["group_by"] {
        Value::Null => None,
        Value::String(s) => Some(dimension(s).ok_or_else(|| {
            ApiError::parameter(
                "group_by",
                format!("`{s}` is not one of endpoint, user_id, status_code, method"),
            )
        })?),
        _ => return Err(ApiError::parameter("group_by", "expected a string".into())),
    };
    let mut filters = Filters::default();
    match &body["filters"] {
        Value::Null => {}
        Value::Object(f) => {
            for (k, v) in f {
                let text = || {
                    v.as_str().map(str::to_owned).ok_or_else(|| {
                        ApiError::parameter("filters", format!("`{k}` must be a string"))
                    })
                };
                match k.as_str() {
                    "endpoint" => filters.endpoint = Some(text()?),
                    "user_id" => filters.user_id = Some(text()?),
                    "method" => filters.method = Some(text()?),
                    "status_code" => {
                        filters.status_code = Some(
                            v.as_u64()
                                .filter(|s| (100..=599).contains(s))
                                .map(|s| s as u16)
                                .ok_or_else(|| {
                                    ApiError::parameter(
                                        "filters",
                                        "`status_code` must be 100 to 599".into(),
                                    )
                                })?,
                        )
                    }
                    "status_class" => {
                        filters.status_class = Some(
                            v.as_u64()
                                .filter(|s| (1..=5).contains(s))
                                .map(|s| s as u8)
                                .ok_or_else(|| {
                                    ApiError::parameter(
                                        "filters",
                                        "`status_class` must be 1 to 5".into(),
                                    )
                                })?,
                        )
                    }
                    other => {
                        return Err(ApiError::parameter(
                            "filters",
                            format!("unknown filter `{other}`"),
                        ));
                    }
                }
            }
        }
        _ => return Err(ApiError::parameter("filters", "expected an object".into())),
    }
    let needs_quantiles = metrics
        .iter()
        .any(|m| m == "latency" || (m.starts_with("latency_p")));
    let spec = toplog_query::AggregationSpec {
        range: TimeRange { start, end },
        interval_us,
        group_by,
        filters,
        needs_quantiles,
    };
    spec.check()?;
    Ok((spec, metrics))
}

/// One result row with the requested metrics.
fn aggregate_row(row: &toplog_query::AggregateRow, metrics: &[String]) -> Value {
    use toplog_query::Metric;
    let value = |m: Metric| m.value(&row.cell).map(|(v, _)| v);
    let mut out = json!({"start": row.start.to_rfc3339(), "end": row.end.to_rfc3339()});
    if let Some(g) = &row.group {
        out["group"] = json!(g);
    }
    if row.missed.requests > 0 {
        // Read from a cube bucket over its key budget: the values are of the
        // requests it kept; up to this many more may belong to the group.
        out["exact"] = json!(false);
        out["missed_requests"] = json!(row.missed.requests);
    }
    for m in metrics {
        out[m.as_str()] = match m.as_str() {
            "latency" => json!({
                "avg": value(Metric::LatencyAvg),
                "p50": value(Metric::LatencyP50),
                "p95": value(Metric::LatencyP95),
                "p99": value(Metric::LatencyP99),
            }),
            // Counts are 0, not null, for an empty interval.
            "frequency" => json!(row.cell.count),
            "errors" => json!(row.cell.errors()),
            name => json!(Metric::parse(name).and_then(value)),
        };
    }
    out
}

/// Runs a job to completion, recording each state change durably.
pub(crate) async fn run_job(
    engine: Arc<Engine>,
    store: Arc<toplog_query::JobStore>,
    mut job: toplog_query::Job,
) {
    use toplog_query::JobState;
    let outcome = match parse_aggregation(&job.request) {
        Err(e) => Err(e.message),
        Ok((spec, metrics)) => {
            job.state = JobState::Running;
            if let Err(e) = store.put(&job) {
                tracing::error!(error = %e, "cannot record job state");
            }
            tokio::task::spawn_blocking(move || {
                toplog_query::aggregate(&engine, &spec)
                    .map(|rows| {
                        Value::Array(rows.iter().map(|r| aggregate_row(r, &metrics)).collect())
                    })
                    .map_err(|e| e.to_string())
            })
            .await
            .unwrap_or_else(|e| Err(format!("worker failed: {e}")))
        }
    };
    job.finished_at = Some(Micros::now());
    match outcome {
        Ok(result) => {
            job.state = JobState::Done;
            job.result = Some(result);
        }
        Err(e) => {
            job.state = JobState::Failed;
            job.error = Some(e);
        }
    }
    if let Err(e) = store.put(&job) {
        tracing::error!(error = %e, id = %job.aggregation_id, "cannot record job result");
    }
}

async fn submit_aggregation(
    State(app): State<Arc<AppState>>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult {
    let Json(body) = body.map_err(|e| ApiError::bad_request("malformed_json", e.body_text()))?;
    parse_aggregation(&body)?;
    let engine = app.engine()?;
    let store = app
        .jobs
        .get()
        .cloned()
        .ok_or_else(|| ApiError::unavailable("recovering".into()))?;
    let job = toplog_query::Job {
        aggregation_id: uuid::Uuid::now_v7().to_string(),
        state: toplog_query::JobState::Pending,
        submitted_at: Micros::now(),
        finished_at: None,
        request: body,
        result: None,
        error: None,
    };
    let id = job.aggregation_id.clone();
    {
        let (store, job) = (store.clone(), job.clone());
        blocking(move || Ok(store.put(&job)?)).await?;
    }
    tokio::spawn(run_job(engine, store, job));
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"status": "success", "message": "Aggregation request submitted.", "aggregation_id": id})),
    )
        .into_response())
}

fn job_json(job: &toplog_query::Job, with_result: bool) -> Value {
    let mut v = json!({
        "aggregation_id": job.aggregation_id,
        "state": job.state,
        "submitted_at": job.submitted_at.to_rfc3339(),
        "finished_at": job.finished_at.map(Micros::to_rfc3339),
        "request": job.request,
    });
    if let Some(e) = &job.error {
        v["error"] = json!(e);
    }
    if with_result && let Some(r) = &job.result {
        v["result"] = r.clone();
    }
    v
}

async fn get_aggregation(
    State(app): State<Arc<AppState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> ApiResult {
    let store = app
        .jobs
        .get()
        .cloned()
        .ok_or_else(|| ApiError::unavailable("recovering".into()))?;
    let job = store.get(&id).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no aggregation `{id}`"),
        )
    })?;
    Ok(Json(json!({"status": "success", "data": job_json(&job, true)})).into_response())
}

async fn list_aggregations(State(app): State<Arc<AppState>>) -> ApiResult {
    let store = app
        .jobs
        .get()
        .cloned()
        .ok_or_else(|| ApiError::unavailable("recovering".into()))?;
    let jobs: Vec<Value> = store.list().iter().map(|j| job_json(j, false)).collect();
    Ok(Json(json!({"status": "success", "data": jobs})).into_response())
}
