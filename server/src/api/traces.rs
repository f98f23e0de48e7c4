//! `POST /v1/traces`: OpenTelemetry traces over OTLP/HTTP, in protobuf
//! (`application/x-protobuf`) or OTLP/JSON (`application/json`), gzip or
//! zstd too, as the OTLP specification defines the endpoint. Each SERVER
//! span becomes an event ([`toplog_formats::otlp`]); spans that cannot be
//! used are counted in a partial success. A retried export (the same bytes)
//! is acknowledged without being stored twice.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prost::Message;
use toplog_engine::KeyedEvents;
use toplog_formats::otlp::{
    self, ExportTraceServiceRequest, ExportTraceServiceResponse, RpcStatus,
};

use super::events::{read_body, validation_limits};
use super::workers::parsing;
use super::{ApiError, ApiResult, AppState};
use crate::auth::Caller;
use crate::ingest::decode_body;
use crate::metrics::Ingested;

const PROTOBUF: &str = "application/x-protobuf";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Protobuf,
    Json,
}

pub(super) async fn export(
    State(app): State<Arc<AppState>>,
    caller: Option<axum::Extension<Caller>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let header = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let mime = header(header::CONTENT_TYPE).map(|ct| {
        ct.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    });
    let encoding = match mime.as_deref() {
        Some(PROTOBUF) => Encoding::Protobuf,
        Some("application/json") => Encoding::Json,
        _ => {
            return ApiError::unsupported(
                "unsupported_content_type",
                format!("OTLP/HTTP takes {PROTOBUF} or application/json"),
            )
            .into_response();
        }
    };
    let compression = header(header::CONTENT_ENCODING).map(str::to_owned);
    let caller = caller.map(|c| c.0);
    match accept(&app, caller.as_ref(), encoding, compression, body).await {
        Ok((partial, ingested)) => {
            let mut resp = respond(encoding, partial);
            if let Some(ingested) = ingested {
                resp.extensions_mut().insert(ingested);
            }
            resp
        }
        // Refusals of a protobuf request are a `google.rpc.Status` in protobuf.
        Err(e) if encoding == Encoding::Protobuf => {
            let status = RpcStatus {
                code: rpc_code(e.status),
                message: e.message.clone(),
            };
            let mut response = e.into_response();
            *response.body_mut() = status.encode_to_vec().into();
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROTOBUF));
            response
        }
        Err(e) => e.into_response(),
    }
}

/// Decodes, maps and stores the export; what it could not use.
async fn accept(
    app: &Arc<AppState>,
    caller: Option<&Caller>,
    encoding: Encoding,
    compression: Option<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(Option<otlp::ExportTracePartialSuccess>, Option<Ingested>)> {
    let limit = app.config.max_body_bytes;
    let body = read_body(app, body)?;
    app.engine()?;
    let _turn = app.ingest.admit(body.len()).await?;
    let limits = validation_limits(app);
    let (events, partial, key) = parsing(move || {
        let raw = decode_body(compression.as_deref(), &body, limit)?;
        let request = match encoding {
            Encoding::Protobuf => otlp::decode_protobuf(&raw),
            Encoding::Json => otlp::decode_json(&raw),
        }
        .map_err(|e| ApiError::bad_request("invalid_otlp", e.to_string()))?;
        mapped(&request, &raw, &limits)
    })
    .await?;
    let ingested = store(app, caller, events, key).await?;
    Ok((partial, ingested))
}

/// An export tonic has decoded (OTLP/gRPC): admitted by its encoded size,
/// mapped and stored as `POST /v1/traces` does; what it could not use.
pub(crate) async fn export_message(
    app: &Arc<AppState>,
    caller: Option<&Caller>,
    request: ExportTraceServiceRequest,
) -> ApiResult<Option<otlp::ExportTracePartialSuccess>> {
    let size = request.encoded_len();
    let result = export_decoded(app, caller, request).await;
    let (code, ingested) = match &result {
        Ok((_, ingested)) => (StatusCode::OK, *ingested),
        Err(e) => (e.status, None),
    };
    app.metrics.ingest("otlp_grpc", code, ingested, size as u64);
    result.map(|(partial, _)| partial)
}

/// The export mapped and stored: what it could not use, and what the store took.
async fn export_decoded(
    app: &Arc<AppState>,
    caller: Option<&Caller>,
    request: ExportTraceServiceRequest,
) -> ApiResult<(Option<otlp::ExportTracePartialSuccess>, Option<Ingested>)> {
    app.engine()?;
    let _turn = app.ingest.admit(request.encoded_len()).await?;
    let limits = validation_limits(app);
    // Re-encoded, the same message gives the same bytes: a retry, the same key.
    let (events, partial, key) =
        parsing(move || mapped(&request, &request.encode_to_vec(), &limits)).await?;
    let ingested = store(app, caller, events, key).await?;
    Ok((partial, ingested))
}

/// The events of an export's server spans, what could not be used, and the
/// export's idempotency key (from `bytes`, its encoding as received).
type Mapped = (KeyedEvents, Option<otlp::ExportTracePartialSuccess>, String);

fn mapped(
    request: &ExportTraceServiceRequest,
    bytes: &[u8],
    limits: &toplog_types::ValidationLimits,
) -> ApiResult<Mapped> {
    let spans = otlp::server_spans(request, limits);
    let partial = otlp::partial_success(&spans);
    Ok((
        KeyedEvents::new(spans.events)?,
        partial,
        otlp::idempotency_key(bytes),
    ))
}

/// Stores an export's events durably under its key (nothing if none),
/// spending one of the caller's ingest tokens each; what the store took.
async fn store(
    app: &AppState,
    caller: Option<&Caller>,
    events: KeyedEvents,
    key: String,
) -> ApiResult<Option<Ingested>> {
    if events.is_empty() {
        return Ok(None);
    }
    app.auth.spend_events(caller, events.len())?;
    let stored = super::events::store(app, events, Some(key)).await?;
    Ok(Some(Ingested {
        events: u64::from(stored.receipt.accepted),
        replayed: stored.receipt.replayed,
    }))
}

fn respond(encoding: Encoding, partial: Option<otlp::ExportTracePartialSuccess>) -> Response {
    match encoding {
        Encoding::Json => Json(otlp::response_json(partial.as_ref())).into_response(),
        Encoding::Protobuf => {
            let body = ExportTraceServiceResponse {
                partial_success: partial,
            }
            .encode_to_vec();
            ([(header::CONTENT_TYPE, PROTOBUF)], body).into_response()
        }
    }
}

/// The `google.rpc.Code` of an HTTP status, as OTLP/HTTP pairs them.
fn rpc_code(status: StatusCode) -> i32 {
    match status.as_u16() {
        400 | 415 | 422 => 3, // INVALID_ARGUMENT
        413 => 8,             // RESOURCE_EXHAUSTED
        503 => 14,            // UNAVAILABLE
        _ => 13,              // INTERNAL
    }
}
