//! Ingest, and the stored events: list and count.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use serde_json::{Value, json};
use toplog_engine::{Cursor, KeyedEvents};
use toplog_types::{Micros, ValidationLimits};

use super::params::{self, Params, QuerySpec};
use super::workers::parsing;
use super::{ApiError, ApiResult, AppState, ReadPoint};
use crate::auth::Caller;
use crate::ingest::{BodyFormat, decode_body, parse_events};
use toplog_types::{Param, Shape};

const DEFAULT_LIMIT: usize = 1000;
const MAX_LIMIT: u64 = 10_000;
const MAX_IDEMPOTENCY_KEY: usize = 255;
/// What an `Idempotency-Key` may be, as the OpenAPI document says it.
pub(super) const IDEMPOTENCY_KEY_PATTERN: &str = "^[!-~]{1,255}$";

/// Refuses an idempotency key that is not 1 to 255 visible ASCII characters,
/// naming `what` (a header or a field) with `code`.
fn check_idempotency_key(key: Option<&str>, code: &'static str, what: &str) -> ApiResult<()> {
    match key {
        Some(k)
            if k.is_empty()
                || k.len() > MAX_IDEMPOTENCY_KEY
                || !k.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Err(ApiError::bad_request(
                code,
                format!("`{what}` must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"),
            ))
        }
        _ => Ok(()),
    }
}

/// Ingests the events `check` makes of a request (a gRPC request's typed
/// events, each through [`toplog_types::Event::from_typed`]) on the parse
/// threads; `size` is what the request weighs against `ingest_queue_bytes`.
pub(crate) async fn ingest_checked(
    app: &AppState,
    caller: Option<&Caller>,
    key: Option<String>,
    size: usize,
    check: impl FnOnce(&ValidationLimits) -> Result<Vec<toplog_types::Event>, toplog_types::EventError>
    + Send
    + 'static,
) -> ApiResult<toplog_engine::IngestReceipt> {
    check_idempotency_key(key.as_deref(), "invalid_parameter", "idempotency_key")?;
    app.engine()?;
    let _turn = app.ingest.admit(size).await?;
    let limits = validation_limits(app);
    let events = parsing(move || Ok(KeyedEvents::new(check(&limits)?)?)).await?;
    app.auth.spend_events(caller, events.len())?;
    Ok(store(app, events, key).await?.receipt)
}

/// A batch stored: its receipt, and in a cluster the node that led when it
/// was written (the one it was proposed through).
pub(crate) struct Stored {
    pub(crate) receipt: toplog_engine::IngestReceipt,
    pub(crate) leader_id: Option<u64>,
    /// In a sharded cluster: each shard's part (the receipt sums them).
    pub(crate) parts: Vec<crate::cluster::PartStored>,
}

/// Stores a checked batch: in the engine's own log on a single node, through
/// the Raft log in a cluster (applied on every member; acknowledged once a
/// quorum holds it and this node has applied it). Every ingest path ends
/// here.
pub(crate) async fn store(
    app: &AppState,
    events: KeyedEvents,
    key: Option<String>,
) -> ApiResult<Stored> {
    let engine = app.engine()?;
    if app.config.cluster.is_none() {
        return Ok(Stored {
            receipt: engine.ingest(events, key).await?,
            leader_id: None,
            parts: Vec::new(),
        });
    }
    if let Some(shards) = app.sharded()? {
        let parts = shards.store(&engine, events, key).await.map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_written",
                format!("{e}; the batch was not acknowledged (an idempotency key makes the retry safe, whatever parts were stored)"),
            )
        })?;
        return Ok(Stored {
            receipt: toplog_engine::IngestReceipt {
                accepted: parts.iter().map(|p| p.receipt.accepted).sum(),
                lsn: toplog_types::Lsn::new(0),
                replayed: !parts.is_empty() && parts.iter().all(|p| p.receipt.replayed),
            },
            leader_id: None,
            parts,
        });
    }
    let cluster = app.cluster.get().cloned().ok_or_else(|| {
        ApiError::unavailable("recovering: the Raft node starts once the store is open".into())
    })?;
    let status = cluster.status();
    let leader_id = status.leader_id;
    let mut proposal = match engine.propose_payload(events, key)? {
        Ok(proposal) => proposal,
        Err(known) => {
            return Ok(Stored {
                receipt: known,
                leader_id: (leader_id != 0).then_some(leader_id),
                parts: Vec::new(),
            });
        }
    };
    let payload = proposal.take_payload();
    let written = cluster
        .submit(&crate::cluster::Entry::Ingest(&payload))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_written",
                format!("{e} (an idempotency key makes the retry safe)"),
            )
        })?;
    Ok(Stored {
        receipt: engine.receipt(&proposal, written.index),
        leader_id: Some(written.leader_id),
        parts: Vec::new(),
    })
}

/// The body of an ingest request, or the error for one too large or cut short.
pub(super) fn read_body(app: &AppState, body: Result<Bytes, BytesRejection>) -> ApiResult<Bytes> {
    let limit = app.config.max_body_bytes;
    body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::too_large(format!("body exceeds the limit of {limit} bytes"))
        }
        status => ApiError::new(status, "invalid_body", e.body_text()),
    })
}

/// The window ingested timestamps must fall in, now.
pub(super) fn validation_limits(app: &AppState) -> ValidationLimits {
    let cfg = &app.config;
    ValidationLimits {
        now: Micros::now(),
        max_future_us: micros(cfg.clock_skew),
        max_age_us: micros(
            app.maintainer
                .get()
                .map_or(cfg.policy, |m| m.policy())
                .raw_keep_for,
        ),
    }
}

pub(super) async fn ingest(
    State(app): State<Arc<AppState>>,
    caller: Option<axum::Extension<Caller>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let limit = app.config.max_body_bytes;
    let body = read_body(&app, body)?;
    // Refused at once while the store recovers, before the body is parsed.
    app.engine()?;
    // Held until the batch is acknowledged: it bounds what waits to be parsed,
    // written to the log and applied.
    let _turn = app.ingest.admit(body.len()).await?;
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
    check_idempotency_key(key.as_deref(), "invalid_header", "Idempotency-Key")?;
    let limits = validation_limits(&app);
    // The events' rollup keys are looked up on the parse thread too (see `KeyedEvents`).
    let events = parsing(move || {
        let raw = decode_body(encoding.as_deref(), &body, limit)?;
        let events = parse_events(format, &raw, &limits)?;
        Ok(KeyedEvents::new(events)?)
    })
    .await?;
    if events.is_empty() {
        return Ok(Json(json!({"status": "success", "accepted": 0})).into_response());
    }
    app.auth
        .spend_events(caller.as_ref().map(|c| &c.0), events.len())?;
    let Stored {
        receipt,
        leader_id,
        parts,
    } = store(&app, events, key).await?;
    let mut body =
        json!({"status": "success", "accepted": receipt.accepted, "replayed": receipt.replayed});
    if let Some(leader_id) = leader_id {
        // In a cluster: the node that led, and the batch's Raft log index
        // (a read answered with `applied_index` at or past it holds it).
        body["leader_id"] = json!(leader_id);
        body["index"] = json!(receipt.lsn.get());
    }
    if !parts.is_empty() {
        // In a sharded cluster: each shard's part, its Raft log index and
        // the node that led its group.
        body["shards"] = parts
            .iter()
            .map(|p| {
                json!({
                    "shard": p.shard,
                    "accepted": p.receipt.accepted,
                    "replayed": p.receipt.replayed,
                    "index": p.receipt.lsn.get(),
                    "leader_id": p.leader_id,
                })
            })
            .collect();
    }
    let mut resp = Json(body).into_response();
    resp.extensions_mut().insert(crate::metrics::Ingested {
        events: u64::from(receipt.accepted),
        replayed: receipt.replayed,
    });
    if receipt.replayed {
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(resp)
}

pub(super) fn micros(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// `GET /api/v1/requests`.
pub(super) const LIST: QuerySpec = QuerySpec {
    params: &[
        params::CONSISTENCY,
        params::ALLOW_PARTIAL,
        params::START,
        params::END,
        params::ENDPOINT,
        params::USER_ID,
        params::METHOD,
        params::STATUS_CODE,
        params::REQUEST_ID,
        Param {
            name: "limit",
            shape: Shape::Int {
                min: 1,
                max: MAX_LIMIT,
            },
            doc: "Most events to return (1000 by default).",
        },
        Param {
            name: "cursor",
            shape: Shape::Cursor,
            doc: "`next_cursor` of the previous page.",
        },
    ],
    required: &[],
};

/// `GET /api/v1/requests/count`.
pub(super) const COUNT: QuerySpec = QuerySpec {
    params: &[
        params::CONSISTENCY,
        params::ALLOW_PARTIAL,
        params::START,
        params::END,
        params::ENDPOINT,
        params::USER_ID,
        params::METHOD,
        params::STATUS_CODE,
        params::REQUEST_ID,
    ],
    required: &[],
};

pub(super) async fn list_requests(
    State(app): State<Arc<AppState>>,
    raw: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> ApiResult {
    let (page, point) = page_of(&app, Params::new(raw, LIST)?).await?;
    let data: Vec<Value> = page
        .events
        .iter()
        .map(toplog_types::Event::to_json)
        .collect();
    let mut body =
        json!({"status": "success", "data": data, "next_cursor": page.next.map(|c| c.encode())});
    add_meta(&mut body, point);
    Ok(Json(body).into_response())
}

/// A page of events given by parameter values (a gRPC request's), checked
/// as the query string is.
pub(crate) async fn page_by_values(
    app: &AppState,
    values: HashMap<String, String>,
) -> ApiResult<(toplog_engine::Page, Option<ReadPoint>)> {
    page_of(app, Params::from_values(values, LIST)?).await
}

async fn page_of(app: &AppState, p: Params) -> ApiResult<(toplog_engine::Page, Option<ReadPoint>)> {
    let range = p.range()?;
    let filters = p.filters()?;
    let limit = p.small("limit")?.unwrap_or(DEFAULT_LIMIT);
    let cursor = p
        .text("cursor")?
        .map(|c| {
            Cursor::decode(&c).ok_or_else(|| {
                ApiError::parameter("cursor", "not a cursor returned by this API".into())
            })
        })
        .transpose()?;
    app.read(&p, move |stores| {
        let page = stores.scan(range, &filters, cursor.as_ref(), limit)?;
        Ok((page, stores.point()))
    })
    .await
}

/// Adds where a read was served to an answer without a `meta` of its own.
fn add_meta(body: &mut Value, point: Option<ReadPoint>) {
    if point.is_some() {
        let mut meta = json!({});
        ReadPoint::add_to(point, &mut meta);
        body["meta"] = meta;
    }
}

pub(super) async fn count_requests(
    State(app): State<Arc<AppState>>,
    raw: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> ApiResult {
    let (count, point) = count_of(&app, Params::new(raw, COUNT)?).await?;
    let mut body = json!({"status": "success", "count": count});
    add_meta(&mut body, point);
    Ok(Json(body).into_response())
}

/// A count given by parameter values (a gRPC request's), checked as the
/// query string is.
pub(crate) async fn count_by_values(
    app: &AppState,
    values: HashMap<String, String>,
) -> ApiResult<(u64, Option<ReadPoint>)> {
    count_of(app, Params::from_values(values, COUNT)?).await
}

async fn count_of(app: &AppState, p: Params) -> ApiResult<(u64, Option<ReadPoint>)> {
    let range = p.range()?;
    let filters = p.filters()?;
    app.read(&p, move |stores| {
        Ok((stores.count(range, &filters)?, stores.point()))
    })
    .await
}
