//! The API's one error type and how each layer's errors map to a status and code.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use toplog_engine::EngineError;
use toplog_types::EventError;

/// `Retry-After` when the idempotency keys are full: keys leave the window
/// over time, so a minute brings room back at any steady rate.
const IDEMPOTENCY_RETRY_SECS: u64 = 60;

/// An error as the API returns it: `{"status":"error","error":{"code","message",...}}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
    pub(crate) row: Option<usize>,
    pub(crate) field: Option<String>,
    /// Seconds for `Retry-After` (busy, not failed).
    pub(crate) retry_after: Option<u64>,
    /// `RateLimit-Limit` and `RateLimit-Remaining`, for `429 rate_limited`.
    pub(crate) rate_limit: Option<(u32, u32)>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: String) -> Self {
        Self {
            status,
            code,
            message,
            row: None,
            field: None,
            retry_after: None,
            rate_limit: None,
        }
    }

    /// The same error, telling the caller to retry after `secs`.
    pub(crate) fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
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

    pub(crate) fn unavailable(message: String) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// `503 overloaded`: the node is busy, not broken; retry after `secs`.
    pub(crate) fn overloaded(message: String, secs: u64) -> Self {
        Self {
            retry_after: Some(secs),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", message)
        }
    }

    pub(crate) fn internal(message: String) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// A bad query parameter, named in `field`.
    pub(crate) fn parameter(name: &str, message: String) -> Self {
        Self {
            field: Some(name.to_owned()),
            ..Self::bad_request("invalid_parameter", format!("`{name}`: {message}"))
        }
    }

    /// A JSON body that could not be read: too large (`413`), not declared
    /// as JSON (`415`), or not well-formed (`400`).
    pub(crate) fn from_json_body(e: axum::extract::rejection::JsonRejection) -> Self {
        use axum::extract::rejection::JsonRejection;
        match &e {
            JsonRejection::MissingJsonContentType(_) => Self::unsupported(
                "unsupported_media_type",
                "the body must be sent as `Content-Type: application/json`".into(),
            ),
            _ if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Self::too_large(e.body_text()),
            _ => Self::bad_request("malformed_json", e.body_text()),
        }
    }

    pub(crate) fn with_row(mut self, row: usize) -> Self {
        self.row = Some(row);
        self
    }
}

impl From<crate::auth::Limited> for ApiError {
    fn from(l: crate::auth::Limited) -> Self {
        crate::auth::too_many(l)
    }
}

impl From<EventError> for ApiError {
    /// A malformed row is `400 invalid_event`; a well-formed one whose time
    /// the node does not take now is `422 timestamp_out_of_window`.
    fn from(e: EventError) -> Self {
        let (status, code) = if e.out_of_window {
            (StatusCode::UNPROCESSABLE_ENTITY, "timestamp_out_of_window")
        } else {
            (StatusCode::BAD_REQUEST, "invalid_event")
        };
        Self {
            row: Some(e.row),
            field: Some(e.field.clone()),
            ..Self::new(status, code, e.to_string())
        }
    }
}

impl From<toplog_types::ParamError> for ApiError {
    fn from(e: toplog_types::ParamError) -> Self {
        Self::parameter(e.name, e.message)
    }
}

impl From<EngineError> for ApiError {
    /// Busy or stopped is `503`; damage found on disk is `500` (a retry
    /// will not mend it); a read over its budget is `422 query_too_large`.
    fn from(e: EngineError) -> Self {
        use toplog_wal::WalError;
        match e {
            EngineError::Wal(WalError::TooLarge { .. }) => Self::too_large(e.to_string()),
            EngineError::QueryTimeout { limit } => {
                Self::overloaded(format!("{e}; try again later"), limit.as_secs().max(1))
            }
            EngineError::QueryMemory { .. } => Self {
                field: None,
                ..Self::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "query_too_large",
                    e.to_string(),
                )
            },
            EngineError::TooManyIdempotencyKeys { .. } | EngineError::KeysExhausted { .. } => {
                Self::overloaded(e.to_string(), IDEMPOTENCY_RETRY_SECS)
            }
            EngineError::Wal(WalError::Corrupt { .. }) | EngineError::Corrupt { .. } => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "corrupt", e.to_string())
            }
            EngineError::Stopped { .. }
            | EngineError::LogWriterStopped
            | EngineError::NoArchive
            | EngineError::SegmentIdsExhausted
            | EngineError::Wal(_)
            | EngineError::Archive { .. } => Self::unavailable(e.to_string()),
            EngineError::Maintenance(_) => Self::bad_request("invalid_request", e.to_string()),
            other => Self::internal(other.to_string()),
        }
    }
}

impl From<toplog_query::QueryError> for ApiError {
    fn from(e: toplog_query::QueryError) -> Self {
        use toplog_query::QueryError;
        let named = |status, code, field: &str, message: String| Self {
            field: Some(field.to_owned()),
            ..Self::new(status, code, message)
        };
        match e {
            QueryError::Engine(e) => e.into(),
            QueryError::Invalid(param, m) => Self::parameter(param, m),
            QueryError::Param(e) => e.into(),
            QueryError::UnknownField { ref field, .. } => named(
                StatusCode::BAD_REQUEST,
                "invalid_parameter",
                field,
                e.to_string(),
            ),
            QueryError::Conflicting(param, _) => named(
                StatusCode::UNPROCESSABLE_ENTITY,
                "conflicting_parameters",
                param,
                e.to_string(),
            ),
            QueryError::TooLarge(param, _) => named(
                StatusCode::UNPROCESSABLE_ENTITY,
                "query_too_large",
                param,
                e.to_string(),
            ),
            QueryError::Storage(m) => Self::internal(m),
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
        let mut response = (
            self.status,
            Json(json!({"status": "error", "error": error})),
        )
            .into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        if let Some((limit, remaining)) = self.rate_limit {
            let headers = response.headers_mut();
            headers.insert("ratelimit-limit", limit.into());
            headers.insert("ratelimit-remaining", remaining.into());
        }
        response
    }
}

pub(crate) type ApiResult<T = Response> = Result<T, ApiError>;
