//! The request event: one HTTP request a service served, and the rules a row
//! must pass before anything is written. Validation names the row and field.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::{Deserialize, Deserializer, de};
use serde_json::{Number, Value};

use crate::Micros;

pub const MAX_REQUEST_ID_LEN: usize = 128;
pub const MAX_USER_ID_LEN: usize = 128;
pub const MAX_ENDPOINT_LEN: usize = 256;
const MAX_METHOD_LEN: usize = 16;
/// What a method is: letters only, as the schema says it.
const METHOD_PATTERN: &str = "^[A-Za-z]{1,16}$";
/// Largest accepted latency: one day. Anything longer is a clock or unit bug.
pub const MAX_LATENCY_MS: f64 = 86_400_000.0;

/// One stored request. Latency is kept in whole microseconds.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Event {
    pub request_id: String,
    pub timestamp: Micros,
    pub user_id: String,
    pub endpoint: String,
    pub method: String,
    pub status_code: u16,
    pub latency_us: u64,
}

/// One row given with typed fields (a protobuf message's), before its
/// checks. Strings given owned are kept, not copied.
#[derive(Debug, Clone)]
pub struct TypedRow<'a> {
    /// `None`: a UUIDv7 is generated.
    pub request_id: Option<Cow<'a, str>>,
    pub timestamp_us: i64,
    pub user_id: Cow<'a, str>,
    pub endpoint: Cow<'a, str>,
    /// `None`: taken from the endpoint.
    pub method: Option<Cow<'a, str>>,
    pub status_code: u32,
    pub latency_ms: f64,
}

/// Why a row was rejected: the row (0-based), the field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("row {row}: field `{field}`: {message}")]
pub struct EventError {
    pub row: usize,
    pub field: String,
    pub message: String,
    /// The row is well formed but its timestamp is outside the window the
    /// node takes now (older than the raw retention, or too far ahead).
    pub out_of_window: bool,
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
        let Value::Object(obj) = value else {
            return Err(EventError::new(
                row,
                "",
                format!("expected a JSON object, found {}", kind(value)),
            ));
        };
        if let Some(unknown) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(EventError::new(
                row,
                unknown,
                format!("unknown field (known fields: {})", FIELDS.join(", ")),
            ));
        }
        let field = |name: &str| obj.get(name).and_then(Raw::of);
        Fields {
            request_id: field("request_id"),
            timestamp: field("timestamp"),
            user_id: field("user_id"),
            endpoint: field("endpoint"),
            method: field("method"),
            status_code: field("status_code"),
            latency_ms: field("latency_ms"),
        }
        .check(row, limits)
    }

    /// An event from typed fields (a protobuf message's), through the same
    /// checks as [`Event::from_json`]: the timestamp is checked as epoch
    /// milliseconds (`timestamp_us / 1000`, exact to the microsecond), a
    /// latency that is not finite is refused as a non-number would be.
    pub fn from_typed(
        row: TypedRow<'_>,
        index: usize,
        limits: &ValidationLimits,
    ) -> Result<Self, EventError> {
        let num = |f: f64| match Number::from_f64(f) {
            Some(n) => Raw::Num(n),
            None => Raw::Other("a number that is not finite"),
        };
        Fields {
            request_id: row.request_id.map(Raw::Str),
            timestamp: Some(num(row.timestamp_us as f64 / 1000.0)),
            user_id: Some(Raw::Str(row.user_id)),
            endpoint: Some(Raw::Str(row.endpoint)),
            method: row.method.map(Raw::Str),
            status_code: Some(Raw::Num(Number::from(row.status_code))),
            latency_ms: Some(num(row.latency_ms)),
        }
        .check(index, limits)
    }

    /// The event in the bytes of one JSON object, read straight from them
    /// (strings are copied once, no `Value` is built): ingest's fast path.
    /// `None` unless the bytes are one well-formed object of known fields,
    /// each named once, that passes every check; [`Event::from_json`] on the
    /// parsed value gives the answer then, and names what is wrong.
    pub fn from_json_slice(bytes: &[u8], limits: &ValidationLimits) -> Option<Self> {
        let fields: Fields<'_> = serde_json::from_slice(bytes).ok()?;
        fields.check(0, limits).ok()
    }

    /// The JSON Schema (OpenAPI 3.0) of an ingested event, from the limits
    /// the checks above apply. Optional fields take `null` as absent.
    pub fn json_schema() -> Value {
        let text = |min: usize, max: usize| serde_json::json!({"type": "string", "minLength": min, "maxLength": max});
        let optional = |mut schema: Value| {
            schema["nullable"] = Value::Bool(true);
            schema
        };
        let max_ms = crate::param::MAX_EPOCH_MS;
        serde_json::json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["timestamp", "endpoint", "status_code", "latency_ms"],
            "properties": {
                "request_id": optional(text(1, MAX_REQUEST_ID_LEN)),
                "timestamp": {"oneOf": [
                    {"type": "string", "format": "date-time"},
                    {"type": "string", "pattern": crate::param::EPOCH_MS_PATTERN},
                    {"type": "number", "minimum": 0, "maximum": max_ms},
                ]},
                "user_id": optional(text(0, MAX_USER_ID_LEN)),
                "endpoint": text(1, MAX_ENDPOINT_LEN),
                "method": optional(serde_json::json!({"type": "string", "pattern": METHOD_PATTERN})),
                "status_code": {"type": "integer", "minimum": 100, "maximum": 599},
                "latency_ms": {"type": "number", "minimum": 0, "maximum": MAX_LATENCY_MS},
            },
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

impl EventError {
    fn new(row: usize, field: &str, message: String) -> Self {
        Self {
            row,
            field: field.to_owned(),
            message,
            out_of_window: false,
        }
    }

    fn out_of_window(self) -> Self {
        Self {
            out_of_window: true,
            ..self
        }
    }
}

/// One field's value as sent, reduced to what the checks look at. Strings
/// without escapes are borrowed from the request body.
enum Raw<'a> {
    Str(Cow<'a, str>),
    Num(Number),
    /// Any other JSON value but null, by the name errors give its kind.
    Other(&'static str),
}

impl<'a> Raw<'a> {
    /// `None` for null, which every field takes as absent.
    fn of(v: &'a Value) -> Option<Self> {
        match v {
            Value::Null => None,
            Value::String(s) => Some(Raw::Str(Cow::Borrowed(s))),
            Value::Number(n) => Some(Raw::Num(n.clone())),
            other => Some(Raw::Other(kind(other))),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Raw::Str(_) => "a string",
            Raw::Num(_) => "a number",
            Raw::Other(kind) => kind,
        }
    }
}

/// Strings and numbers only: anything else fails the fast path, and the
/// `Value` path names it.
impl<'de: 'a, 'a> Deserialize<'de> for Raw<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> de::Visitor<'de> for Visit<'a> {
            type Value = Raw<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Raw<'a>, E> {
                Ok(Raw::Str(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Raw<'a>, E> {
                Ok(Raw::Str(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<Raw<'a>, E> {
                Ok(Raw::Str(Cow::Owned(s)))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Raw<'a>, E> {
                Ok(Raw::Num(n.into()))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Raw<'a>, E> {
                Ok(Raw::Num(n.into()))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Raw<'a>, E> {
                Number::from_f64(n)
                    .map(Raw::Num)
                    .ok_or_else(|| E::custom("not a finite number"))
            }
        }
        d.deserialize_any(Visit(PhantomData))
    }
}

/// A row's fields as sent (absent or null: `None`), before they are checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fields<'a> {
    #[serde(borrow)]
    request_id: Option<Raw<'a>>,
    #[serde(borrow)]
    timestamp: Option<Raw<'a>>,
    #[serde(borrow)]
    user_id: Option<Raw<'a>>,
    #[serde(borrow)]
    endpoint: Option<Raw<'a>>,
    #[serde(borrow)]
    method: Option<Raw<'a>>,
    #[serde(borrow)]
    status_code: Option<Raw<'a>>,
    #[serde(borrow)]
    latency_ms: Option<Raw<'a>>,
}

impl Fields<'_> {
    /// Every check, field by field in a fixed order; the first failure is the error.
    fn check(self, row: usize, limits: &ValidationLimits) -> Result<Event, EventError> {
        let err = |field: &str, message: String| EventError::new(row, field, message);
        let request_id = match self.request_id {
            None => uuid::Uuid::now_v7().to_string(),
            Some(v) => {
                bounded_string(v, 1, MAX_REQUEST_ID_LEN).map_err(|m| err("request_id", m))?
            }
        };
        let timestamp = parse_timestamp(required(self.timestamp).map_err(|m| err("timestamp", m))?)
            .map_err(|m| err("timestamp", m))?;
        let earliest = limits.now.saturating_sub_micros(limits.max_age_us);
        let latest = limits.now.saturating_add_micros(limits.max_future_us);
        if timestamp > latest {
            return Err(EventError::out_of_window(err(
                "timestamp",
                format!(
                    "{timestamp} is more than {}s in the future (server time {}); check the sender's clock",
                    limits.max_future_us / 1_000_000,
                    limits.now
                ),
            )));
        }
        if timestamp < earliest {
            return Err(EventError::out_of_window(err(
                "timestamp",
                format!(
                    "{timestamp} is older than the raw retention (earliest accepted: {earliest})"
                ),
            )));
        }
        let user_id = match self.user_id {
            None => String::new(),
            Some(v) => bounded_string(v, 0, MAX_USER_ID_LEN).map_err(|m| err("user_id", m))?,
        };
        let endpoint = bounded_string(
            required(self.endpoint).map_err(|m| err("endpoint", m))?,
            1,
            MAX_ENDPOINT_LEN,
        )
        .map_err(|m| err("endpoint", m))?;
        let method = match self.method {
            None => method_from_endpoint(&endpoint)
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
        let status_code = match required(self.status_code).map_err(|m| err("status_code", m))? {
            Raw::Num(n) => match n.as_u64() {
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
                    format!("expected an integer, found {}", other.kind()),
                ));
            }
        };
        let latency_us = match required(self.latency_ms).map_err(|m| err("latency_ms", m))? {
            Raw::Num(n) => match n.as_f64() {
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
                    format!("expected a number, found {}", other.kind()),
                ));
            }
        };
        Ok(Event {
            request_id,
            timestamp,
            user_id,
            endpoint,
            method,
            status_code,
            latency_us,
        })
    }
}

fn required(v: Option<Raw<'_>>) -> Result<Raw<'_>, String> {
    v.ok_or_else(|| "is required".to_owned())
}

fn bounded_string(v: Raw<'_>, min: usize, max: usize) -> Result<String, String> {
    let Raw::Str(s) = v else {
        return Err(format!("expected a string, found {}", v.kind()));
    };
    let n = s.chars().count();
    if n < min || n > max {
        return Err(format!("length {n} characters is outside {min} to {max}"));
    }
    Ok(s.into_owned())
}

fn parse_timestamp(v: Raw<'_>) -> Result<Micros, String> {
    let max = crate::param::MAX_EPOCH_MS as f64;
    match v {
        Raw::Str(s) => crate::param::parse_time(&s).ok_or_else(|| {
            format!("`{s}` is not an RFC 3339 timestamp (e.g. 2026-01-02T03:04:05Z) or epoch milliseconds")
        }),
        Raw::Num(n) => match n.as_f64() {
            Some(ms) if (0.0..=max).contains(&ms) => Ok(Micros::new((ms * 1000.0).round() as i64)),
            _ => Err(format!(
                "{n} is not epoch milliseconds (0 to {})",
                crate::param::MAX_EPOCH_MS
            )),
        },
        Raw::Other(kind) => Err(format!(
            "expected an RFC 3339 string or epoch milliseconds, found {kind}"
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
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn limits() -> ValidationLimits {
        ValidationLimits {
            now: Micros::parse("2026-01-10T00:00:00Z").unwrap_or_default(),
            max_future_us: 300_000_000,
            max_age_us: 30 * 86_400_000_000,
        }
    }

    /// Typed fields get the checks JSON rows get, with the same answers,
    /// and keep the timestamp to the microsecond.
    #[test]
    fn typed_rows_are_checked_as_json_rows_are() {
        let now = limits().now.get();
        let typed = |status: u32, latency_ms: f64, method: Option<&'static str>| TypedRow {
            request_id: Some("r-1".into()),
            timestamp_us: now - 123_457,
            user_id: "u".into(),
            endpoint: Cow::Owned("GET /a/{id}".to_owned()),
            method: method.map(Cow::Borrowed),
            status_code: status,
            latency_ms,
        };
        let e = Event::from_typed(typed(201, 2.5, None), 0, &limits()).unwrap();
        assert_eq!(e.timestamp.get(), now - 123_457);
        let json = serde_json::json!({"request_id": "r-1", "timestamp": Micros::new(now - 123_457).to_rfc3339(),
            "user_id": "u", "endpoint": "GET /a/{id}", "status_code": 201, "latency_ms": 2.5});
        assert_eq!(Event::from_json(&json, 0, &limits()).unwrap(), e);
        assert_eq!(e.method, "GET");
        for (row, field) in [
            (typed(99, 1.0, None), "status_code"),
            (typed(200, f64::NAN, None), "latency_ms"),
            (typed(200, -1.0, None), "latency_ms"),
            (typed(200, 1.0, Some("G3T")), "method"),
        ] {
            let err = Event::from_typed(row, 4, &limits()).unwrap_err();
            assert_eq!((err.row, err.field.as_str()), (4, field), "{err}");
        }
        let old = TypedRow {
            timestamp_us: now - 31 * 86_400_000_000,
            ..typed(200, 1.0, None)
        };
        let err = Event::from_typed(old, 0, &limits()).unwrap_err();
        assert!(err.out_of_window && err.field == "timestamp", "{err}");
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
            let bytes = serde_json::to_vec(&row).unwrap_or_default();
            assert_eq!(Event::from_json_slice(&bytes, &limits()), None, "{field}");
        }
    }

    /// The fast path reads exactly what the `Value` path reads, and refuses
    /// (so the `Value` path explains) what it refuses.
    #[test]
    fn the_fast_path_agrees_with_the_value_path() {
        let rows = [
            r#"{"request_id":"r1","timestamp":"2026-01-09T12:00:00Z","user_id":"u1","endpoint":"GET /items/{id}","status_code":200,"latency_ms":12.5}"#,
            r#"{"request_id":"r\"2\u00e9","timestamp":1767960000123,"endpoint":"POST /a\/b","status_code":503,"latency_ms":0}"#,
            r#"{"request_id":"r3","timestamp":1767960000123.6,"user_id":null,"endpoint":"/x","method":"patch","status_code":404,"latency_ms":86400000}"#,
            r#" {"request_id":"r4", "timestamp":"2026-01-09T12:00:00.5+01:00", "endpoint":"GET /", "status_code":101, "latency_ms":1e2} "#,
            r#"{"request_id":"r5","timestamp":1767960000123,"endpoint":"GET /","status_code":200.0,"latency_ms":1}"#,
            r#"{"request_id":"r6","timestamp":true,"endpoint":"GET /","status_code":200,"latency_ms":1}"#,
            r#"{"request_id":"r7","timestamp":1767960000123,"endpoint":"GET /","endpoint":"GET /b","status_code":200,"latency_ms":1}"#,
            r#"{"request_id":"r8","timestamp":1767960000123,"endpoint":["GET /"],"status_code":200,"latency_ms":1}"#,
            r#"{"request_id":"r9","timestamp":1767960000123,"endpoint":"GET /","status_code":200,"latency_ms":1} x"#,
            r#"[{"request_id":"r10"}]"#,
            r#"{"request_id":"r11","timestamp":1767960000123,"endpoint":"GET /","status_code":-1,"latency_ms":1}"#,
        ];
        for (i, text) in rows.iter().enumerate() {
            let slow = serde_json::from_str::<Value>(text)
                .ok()
                .and_then(|v| Event::from_json(&v, 0, &limits()).ok());
            let fast = Event::from_json_slice(text.as_bytes(), &limits());
            // Rows 0 to 3 are valid and read alike; the rest are refused by
            // the fast path, and all but the one naming a field twice (the
            // last value wins) by the `Value` path too.
            if i <= 3 {
                assert!(fast.is_some(), "row {i}: {text}");
                assert_eq!(fast, slow, "row {i}: {text}");
            } else {
                assert_eq!(fast, None, "row {i}: {text}");
                assert_eq!(slow.is_some(), i == 6, "row {i}: {text}");
            }
        }
    }
}
