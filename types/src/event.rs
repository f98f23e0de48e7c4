//! The request event: one HTTP request a service served, and the rules a row
//! must pass before anything is written. Validation names the row and field.

use serde_json::{Map, Value};

use crate::Micros;

pub const MAX_REQUEST_ID_LEN: usize = 128;
pub const MAX_USER_ID_LEN: usize = 128;
pub const MAX_ENDPOINT_LEN: usize = 256;
const MAX_METHOD_LEN: usize = 16;
/// Largest accepted latency: one day. Anything longer is a clock or unit bug.
pub const MAX_LATENCY_MS: f64 = 86_400_000.0;

/// One stored request. Latency is kept in whole microseconds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Event {
    pub request_id: String,
    pub timestamp: Micros,
    pub user_id: String,
    pub endpoint: String,
    pub method: String,
    pub status_code: u16,
    pub latency_us: u64,
}

/// Why a row was rejected: the row (0-based), the field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("row {row}: field `{field}`: {message}")]
pub struct EventError {
    pub row: usize,
    pub field: String,
    pub message: String,
}

/// The time window a row's timestamp must fall in, fixed once per batch.
#[derive(Debug, Clone, Copy)]
pub struct ValidationLimits {
    pub now: Micros,
    /// How far into the future a timestamp may be (clock skew allowance).
    pub max_future_us: i64,
    /// How far into the past a timestamp may be (the raw retention).
    pub max_age_us: i64,
}

const METHODS: [&str; 9] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE",
];

/// The HTTP method an endpoint template starts with (`GET /items` -> `GET`), if any.
pub fn method_from_endpoint(endpoint: &str) -> Option<&'static str> {
    let (first, _) = endpoint.split_once(' ')?;
    METHODS.iter().copied().find(|m| *m == first)
}

impl Event {
    /// Latency in milliseconds, as the API shows it.
    pub fn latency_ms(&self) -> f64 {
        self.latency_us as f64 / 1000.0
    }

    /// Builds an event from one JSON object of an ingest batch, checking every field.
    /// A missing `request_id` is generated (UUIDv7).
    pub fn from_json(
        value: &Value,
        row: usize,
        limits: &ValidationLimits,
    ) -> Result<Self, EventError> {
        let err = |field: &str, message: String| EventError {
            row,
            field: field.to_owned(),
            message,
        };
        let Value::Object(obj) = value else {
            return Err(err(
                "",
                format!("expected a JSON object, found {}", kind(value)),
            ));
        };
        if let Some(unknown) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(err(
                unknown,
                format!("unknown field (known fields: {})", FIELDS.join(", ")),
            ));
        }

        let request_id = match obj.get("request_id") {
            None | Some(Value::Null) => uuid::Uuid::now_v7().to_string(),
            Some(v) => {
                bounded_string(v, 1, MAX_REQUEST_ID_LEN).map_err(|m| err("request_id", m))?
            }
        };
        let timestamp =
            parse_timestamp(required(obj, "timestamp").map_err(|m| err("timestamp", m))?)
                .map_err(|m| err("timestamp", m))?;
        let earliest = limits.now.saturating_sub_micros(limits.max_age_us);
        let latest = limits.now.saturating_add_micros(limits.max_future_us);
        if timestamp > latest {
            return Err(err(
                "timestamp",
                format!(
                    "{timestamp} is more than {}s in the future (server time {}); check the sender's clock",
                    limits.max_future_us / 1_000_000,
                    limits.now
                ),
            ));
        }
        if timestamp < earliest {
            return Err(err(
                "timestamp",
                format!(
                    "{timestamp} is older than the raw retention (earliest accepted: {earliest})"
                ),
            ));
        }
        let user_id = match obj.get("user_id") {
            None | Some(Value::Null) => String::new(),
            Some(v) => bounded_string(v, 0, MAX_USER_ID_LEN).map_err(|m| err("user_id", m))?,
        };
        let endpoint = bounded_string(
            required(obj, "endpoint").map_err(|m| err("endpoint", m))?,
            1,
            MAX_ENDPOINT_LEN,
        )
        .map_err(|m| err("endpoint", m))?;
        let method = match obj.get("method") {
            None | Some(Value::Null) => method_from_endpoint(&endpoint)
                .unwrap_or_default()
                .to_owned(),
            Some(v) => {
                let m = bounded_string(v, 1, MAX_METHOD_LEN).map_err(|m| err("method", m))?;
                if !m.bytes().all(|b| b.is_ascii_alphabetic()) {
                    return Err(err(
                        "method",
                        format!("`{m}` is not an HTTP method (letters only)"),
                    ));
                }
                m.to_ascii_uppercase()
            }
        };
        let status_code = match required(obj, "status_code").map_err(|m| err("status_code", m))? {
            Value::Number(n) => match n.as_u64() {
                Some(code @ 100..=599) => code as u16,
                _ => {
                    return Err(err(
                        "status_code",
                        format!("{n} is not an HTTP status code (100 to 599)"),
                    ));
                }
            },
            other => {
                return Err(err(
                    "status_code",
                    format!("expected an integer, found {}", kind(other)),
                ));
            }
        };
        let latency_us = match required(obj, "latency_ms").map_err(|m| err("latency_ms", m))? {
            Value::Number(n) => match n.as_f64() {
                Some(ms) if (0.0..=MAX_LATENCY_MS).contains(&ms) => (ms * 1000.0).round() as u64,
                _ => {
                    return Err(err(
                        "latency_ms",
                        format!("{n} is out of range (0 to {MAX_LATENCY_MS} ms)"),
                    ));
                }
            },
            other => {
                return Err(err(
                    "latency_ms",
                    format!("expected a number, found {}", kind(other)),
                ));
            }
        };
        Ok(Self {
            request_id,
            timestamp,
            user_id,
            endpoint,
            method,
            status_code,
            latency_us,
        })
    }

    /// The event as the API returns it.
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "request_id": self.request_id,
            "timestamp": self.timestamp.to_rfc3339(),
            "user_id": self.user_id,
            "endpoint": self.endpoint,
            "method": self.method,
            "status_code": self.status_code,
            "latency_ms": self.latency_ms(),
        })
    }
}

const FIELDS: [&str; 7] = [
    "request_id",
    "timestamp",
    "user_id",
    "endpoint",
    "method",
    "status_code",
    "latency_ms",
];

fn required<'a>(obj: &'a Map<String, Value>, field: &str) -> Result<&'a Value, String> {
    match obj.get(field) {
        None | Some(Value::Null) => Err("is required".to_owned()),
        Some(v) => Ok(v),
    }
}

fn bounded_string(v: &Value, min: usize, max: usize) -> Result<String, String> {
    let Value::String(s) = v else {
        return Err(format!("expected a string, found {}", kind(v)));
    };
    if s.len() < min || s.len() > max {
        return Err(format!(
            "length {} bytes is outside {min} to {max}",
            s.len()
        ));
    }
    Ok(s.clone())
}

fn parse_timestamp(v: &Value) -> Result<Micros, String> {
    match v {
        Value::String(s) => Micros::parse(s).map_err(|e| e.to_string()),
        Value::Number(n) => {
            if let Some(ms) = n.as_i64() {
                Micros::from_millis(ms).map_err(|e| e.to_string())
            } else {
                match n.as_f64() {
                    Some(ms) if (0.0..253_402_300_800_000.0).contains(&ms) => {
                        Ok(Micros::new((ms * 1000.0).round() as i64))
                    }
                    _ => Err(format!("{n} is not a valid epoch-milliseconds timestamp")),
                }
            }
        }
        other => Err(format!(
            "expected an RFC 3339 string or epoch milliseconds, found {}",
            kind(other)
        )),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn limits() -> ValidationLimits {
        ValidationLimits {
            now: Micros::parse("2026-01-10T00:00:00Z").unwrap_or_default(),
            max_future_us: 300_000_000,
            max_age_us: 30 * 86_400_000_000,
        }
    }

    fn ok_row() -> Value {
        json!({"request_id":"r1","timestamp":"2026-01-09T12:00:00Z","user_id":"u1",
               "endpoint":"GET /items/{id}","status_code":200,"latency_ms":12.5})
    }

    #[test]
    fn accepts_a_full_row_and_takes_method_from_endpoint() {
        let e = Event::from_json(&ok_row(), 0, &limits()).map_err(|e| e.to_string());
        let e = e
            .as_ref()
            .map(|e| (e.method.as_str(), e.latency_us, e.status_code));
        assert_eq!(e, Ok(("GET", 12_500, 200)));
    }

    #[test]
    fn generates_request_id_when_absent() {
        let mut row = ok_row();
        if let Some(o) = row.as_object_mut() {
            o.remove("request_id");
        }
        let e = Event::from_json(&row, 0, &limits()).map(|e| e.request_id.len());
        assert_eq!(e, Ok(36));
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases = [
            ("status_code", json!(600)),
            ("status_code", json!("200")),
            ("latency_ms", json!(-1)),
            ("latency_ms", json!("fast")),
            ("endpoint", json!("")),
            ("request_id", json!("x".repeat(129))),
            ("user_id", json!(5)),
            ("timestamp", json!("2026-01-10T00:06:00Z")),
            ("timestamp", json!("2025-11-01T00:00:00Z")),
            ("timestamp", json!("not a time")),
            ("method", json!("G E T")),
            ("bogus", json!(1)),
        ];
        for (field, value) in cases {
            let mut row = ok_row();
            if let Some(o) = row.as_object_mut() {
                o.insert(field.to_owned(), value.clone());
            }
            let err = Event::from_json(&row, 7, &limits()).err();
            assert_eq!(
                err.as_ref().map(|e| (e.row, e.field.as_str())),
                Some((7, field)),
                "{field}={value}"
            );
        }
    }
}
