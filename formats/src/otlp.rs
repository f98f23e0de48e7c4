//! OpenTelemetry traces (OTLP) in: an export request, in protobuf or in the
//! OTLP/JSON encoding, becomes one event per span of kind SERVER.
//!
//! | event field  | from the span                                                         |
//! |--------------|-----------------------------------------------------------------------|
//! | request_id   | trace id and span id, hex: `<32 hex>-<16 hex>`                        |
//! | timestamp    | start time                                                            |
//! | latency_ms   | end minus start                                                       |
//! | method       | `http.request.method`, else `http.method`                              |
//! | endpoint     | method and `http.route`, else the route template of `url.path`, `http.target` or `http.url` |
//! | status_code  | `http.response.status_code`, else `http.status_code`                   |
//! | user_id      | `enduser.id`, else `user.id` (none: empty)                            |
//!
//! Each span's event then passes the same checks as a row of
//! `POST /api/v1/requests`. A server span without a usable method, status or
//! path, or whose event fails a check, is rejected (counted, with the first
//! reason, for the OTLP partial success), never guessed. Client, internal,
//! producer and consumer spans are skipped: they are not requests this
//! service served.

pub use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use serde_json::{Map, Value, json};
use toplog_types::{Event, ValidationLimits};

/// The gRPC service OTLP/gRPC exporters call (`TraceService/Export`).
pub use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
pub use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceResponse,
};

/// Why an export request could not be read at all (nothing of it is taken).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OtlpError {
    #[error("not an OTLP trace export in protobuf: {0}")]
    Protobuf(String),
    #[error("not an OTLP trace export in JSON: `{path}`: {message}")]
    Json { path: String, message: String },
}

/// Decodes an `ExportTraceServiceRequest` in protobuf.
pub fn decode_protobuf(bytes: &[u8]) -> Result<ExportTraceServiceRequest, OtlpError> {
    prost::Message::decode(bytes).map_err(|e| OtlpError::Protobuf(e.to_string()))
}

/// What a request's spans became.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ServerSpans {
    pub events: Vec<Event>,
    /// Server spans that could not be used.
    pub rejected: u64,
    /// Why the first of them was rejected.
    pub first_rejection: Option<String>,
    /// Spans of other kinds, left out.
    pub skipped: u64,
}

/// The events of the SERVER spans of `request`, each checked as an ingested
/// row is; rows are numbered across the request in the order spans come.
pub fn server_spans(request: &ExportTraceServiceRequest, limits: &ValidationLimits) -> ServerSpans {
    let mut out = ServerSpans::default();
    let spans = request
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans);
    for (row, span) in spans.enumerate() {
        if span.kind != SpanKind::Server as i32 {
            out.skipped += 1;
            continue;
        }
        match event_of(span, row, limits) {
            Ok(e) => out.events.push(e),
            Err(reason) => {
                out.rejected += 1;
                out.first_rejection.get_or_insert(reason);
            }
        }
    }
    out
}

/// The partial success to answer, if any span was rejected.
pub fn partial_success(spans: &ServerSpans) -> Option<ExportTracePartialSuccess> {
    (spans.rejected > 0).then(|| ExportTracePartialSuccess {
        rejected_spans: i64::try_from(spans.rejected).unwrap_or(i64::MAX),
        error_message: format!(
            "{} server span(s) rejected; the first: {}",
            spans.rejected,
            spans.first_rejection.as_deref().unwrap_or("")
        ),
    })
}

/// The response in OTLP/JSON.
pub fn response_json(partial: Option<&ExportTracePartialSuccess>) -> Value {
    match partial {
        None => json!({}),
        Some(p) => json!({"partialSuccess": {
            "rejectedSpans": p.rejected_spans.to_string(),
            "errorMessage": p.error_message,
        }}),
    }
}

/// `google.rpc.Status`: what OTLP/HTTP answers a refused protobuf request with.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcStatus {
    /// A `google.rpc.Code`.
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

/// An idempotency key for a request: the same bytes sent again (an
/// exporter's retry) are recognised and not stored twice.
pub fn idempotency_key(body: &[u8]) -> String {
    format!(
        "otlp-{:032x}",
        twox_hash::XxHash3_128::oneshot_with_seed(0, body)
    )
}

fn event_of(span: &Span, row: usize, limits: &ValidationLimits) -> Result<Event, String> {
    let attr = |names: &[&str]| {
        names.iter().find_map(|n| {
            span.attributes
                .iter()
                .find(|kv| kv.key == *n)
                .and_then(|kv| kv.value.as_ref())
                .and_then(|v| v.value.as_ref())
        })
    };
    let text = |v: &Any| match v {
        Any::StringValue(s) => Some(s.clone()),
        Any::IntValue(i) => Some(i.to_string()),
        _ => None,
    };
    let which = format!("span {row} ({})", span.name);
    let method = attr(&["http.request.method", "http.method"])
        .and_then(text)
        .ok_or_else(|| format!("{which}: no `http.request.method` (or `http.method`)"))?;
    let status: u64 = attr(&["http.response.status_code", "http.status_code"])
        .and_then(|v| match v {
            Any::IntValue(i) => u64::try_from(*i).ok(),
            Any::StringValue(s) => s.parse().ok(),
            _ => None,
        })
        .ok_or_else(|| {
            format!("{which}: no usable `http.response.status_code` (or `http.status_code`)")
        })?;
    let route = match attr(&["http.route"]).and_then(text) {
        Some(r) => r,
        None => attr(&["url.path", "http.target", "http.url"])
            .and_then(text)
            .map(|p| crate::route::template(&p))
            .ok_or_else(|| {
                format!("{which}: no `http.route`, `url.path`, `http.target` or `http.url`")
            })?,
    };
    let ids = format!("{}-{}", hex(&span.trace_id), hex(&span.span_id));
    let start_us = span.start_time_unix_nano / 1000;
    // A span ending before it starts has a negative latency, which the checks refuse.
    let latency_us =
        (i128::from(span.end_time_unix_nano) - i128::from(span.start_time_unix_nano)) / 1000;
    let mut fields = Map::new();
    fields.insert("request_id".into(), json!(ids));
    fields.insert("timestamp".into(), json!(start_us as f64 / 1000.0));
    fields.insert("latency_ms".into(), json!(latency_us as f64 / 1000.0));
    fields.insert("method".into(), json!(method));
    fields.insert("endpoint".into(), json!(format!("{method} {route}")));
    fields.insert("status_code".into(), json!(status));
    if let Some(user) = attr(&["enduser.id", "user.id"]).and_then(text) {
        fields.insert("user_id".into(), json!(user));
    }
    Event::from_json(&Value::Object(fields), row, limits).map_err(|e| format!("{which}: {e}"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Decodes an `ExportTraceServiceRequest` in OTLP/JSON: field names in
/// lowerCamelCase (snake_case accepted too), trace and span ids in hex,
/// 64-bit integers as numbers or decimal strings, enums as numbers or names.
/// Unknown fields are ignored, as the specification asks.
pub fn decode_json(bytes: &[u8]) -> Result<ExportTraceServiceRequest, OtlpError> {
    let root: Value = serde_json::from_slice(bytes).map_err(|e| OtlpError::Json {
        path: String::new(),
        message: e.to_string(),
    })?;
    let mut p = Path(String::new());
    let root = p.object(&root)?;
    let resource_spans = p.each(root, "resourceSpans", |p, v| {
        let rs = p.object(v)?;
        Ok(ResourceSpans {
            scope_spans: p.each(rs, "scopeSpans", |p, v| {
                let ss = p.object(v)?;
                Ok(ScopeSpans {
                    spans: p.each(ss, "spans", span_json)?,
                    ..Default::default()
                })
            })?,
            ..Default::default()
        })
    })?;
    Ok(ExportTraceServiceRequest { resource_spans })
}

fn span_json(p: &mut Path, v: &Value) -> Result<Span, OtlpError> {
    let s = p.object(v)?;
    Ok(Span {
        trace_id: p
            .field(s, "traceId", |p, v| p.hex(v, 16))?
            .unwrap_or_default(),
        span_id: p
            .field(s, "spanId", |p, v| p.hex(v, 8))?
            .unwrap_or_default(),
        name: p.field(s, "name", |p, v| p.string(v))?.unwrap_or_default(),
        kind: p.field(s, "kind", |p, v| p.kind(v))?.unwrap_or_default(),
        start_time_unix_nano: p
            .field(s, "startTimeUnixNano", |p, v| p.uint(v))?
            .unwrap_or_default(),
        end_time_unix_nano: p
            .field(s, "endTimeUnixNano", |p, v| p.uint(v))?
            .unwrap_or_default(),
        attributes: p.each(s, "attributes", |p, v| {
            let kv = p.object(v)?;
            Ok(KeyValue {
                key: p.field(kv, "key", |p, v| p.string(v))?.unwrap_or_default(),
                value: p.field(kv, "value", any_json)?,
                ..Default::default()
            })
        })?,
        ..Default::default()
    })
}

fn any_json(p: &mut Path, v: &Value) -> Result<AnyValue, OtlpError> {
    let o = p.object(v)?;
    let value = if let Some(s) = p.field(o, "stringValue", |p, v| p.string(v))? {
        Some(Any::StringValue(s))
    } else if let Some(i) = p.field(o, "intValue", |p, v| p.int(v))? {
        Some(Any::IntValue(i))
    } else if let Some(b) = p.field(o, "boolValue", |p, v| p.bool(v))? {
        Some(Any::BoolValue(b))
    } else {
        // Arrays, maps and bytes are never a method, status, route or user.
        p.field(o, "doubleValue", |p, v| p.double(v))?
            .map(Any::DoubleValue)
    };
    Ok(AnyValue { value })
}

/// Where in the document a value is, for errors.
struct Path(String);

type Object = Map<String, Value>;

impl Path {
    fn err(&self, message: impl Into<String>) -> OtlpError {
        OtlpError::Json {
            path: self.0.clone(),
            message: message.into(),
        }
    }

    fn object<'v>(&self, v: &'v Value) -> Result<&'v Object, OtlpError> {
        v.as_object().ok_or_else(|| self.err("expected an object"))
    }

    /// `name` (or its snake_case spelling) of `o`, read by `read` if present and not null.
    fn field<T>(
        &mut self,
        o: &Object,
        name: &str,
        read: impl FnOnce(&mut Self, &Value) -> Result<T, OtlpError>,
    ) -> Result<Option<T>, OtlpError> {
        let snake = snake_case(name);
        let Some(v) = o
            .get(name)
            .or_else(|| o.get(&snake))
            .filter(|v| !v.is_null())
        else {
            return Ok(None);
        };
        let len = self.0.len();
        if !self.0.is_empty() {
            self.0.push('.');
        }
        self.0.push_str(name);
        let out = read(self, v);
        self.0.truncate(len);
        out.map(Some)
    }

    /// Every element of the array `name` of `o`, read by `read`.
    fn each<T>(
        &mut self,
        o: &Object,
        name: &str,
        mut read: impl FnMut(&mut Self, &Value) -> Result<T, OtlpError>,
    ) -> Result<Vec<T>, OtlpError> {
        self.field(o, name, |p, v| {
            let items = v.as_array().ok_or_else(|| p.err("expected an array"))?;
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let len = p.0.len();
                p.0.push_str(&format!("[{i}]"));
                let r = read(p, item);
                p.0.truncate(len);
                out.push(r?);
            }
            Ok(out)
        })
        .map(Option::unwrap_or_default)
    }

    fn string(&self, v: &Value) -> Result<String, OtlpError> {
        v.as_str()
            .map(str::to_owned)
            .ok_or_else(|| self.err("expected a string"))
    }

    fn bool(&self, v: &Value) -> Result<bool, OtlpError> {
        v.as_bool()
            .ok_or_else(|| self.err("expected true or false"))
    }

    fn double(&self, v: &Value) -> Result<f64, OtlpError> {
        match v {
            Value::String(s) => s.parse().ok(),
            _ => v.as_f64(),
        }
        .ok_or_else(|| self.err("expected a number"))
    }

    fn int(&self, v: &Value) -> Result<i64, OtlpError> {
        match v {
            Value::String(s) => s.parse().ok(),
            _ => v.as_i64(),
        }
        .ok_or_else(|| self.err("expected a 64-bit integer (a number or a decimal string)"))
    }

    fn uint(&self, v: &Value) -> Result<u64, OtlpError> {
        match v {
            Value::String(s) => s.parse().ok(),
            _ => v.as_u64(),
        }
        .ok_or_else(|| {
            self.err("expected an unsigned 64-bit integer (a number or a decimal string)")
        })
    }

    /// Bytes written as hex, `len` of them (an empty string: none).
    fn hex(&self, v: &Value, len: usize) -> Result<Vec<u8>, OtlpError> {
        let s = v
            .as_str()
            .ok_or_else(|| self.err("expected a hex string"))?;
        if s.is_empty() {
            return Ok(Vec::new());
        }
        let bytes: Option<Vec<u8>> = (s.len() == 2 * len && s.is_ascii())
            .then(|| {
                (0..len)
                    .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
                    .collect()
            })
            .flatten();
        bytes.ok_or_else(|| self.err(format!("expected {} hex digits", 2 * len)))
    }

    fn kind(&self, v: &Value) -> Result<i32, OtlpError> {
        match v {
            Value::String(s) => SpanKind::from_str_name(s).map(|k| k as i32),
            _ => v.as_i64().and_then(|k| i32::try_from(k).ok()),
        }
        .ok_or_else(|| {
            self.err("expected a span kind (a number or a name such as SPAN_KIND_SERVER)")
        })
    }
}

fn snake_case(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 4);
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use toplog_types::Micros;

    const NOW_NS: u64 = 1_764_000_000_123_456_789;

    fn limits() -> ValidationLimits {
        ValidationLimits {
            now: Micros::new((NOW_NS / 1000) as i64),
            max_future_us: 60_000_000,
            max_age_us: 86_400_000_000,
        }
    }

    /// An export as the specification writes OTLP/JSON: hex ids, 64-bit
    /// integers as decimal strings, the kind as a number, plus a span of
    /// each case the mapping must tell apart.
    fn export() -> Value {
        let span = |n: u8, kind: Value, attrs: Value| {
            json!({
                "traceId": "5b8efff798038103d269b633813fc60c",
                "spanId": format!("eee19b7ec3c1b1{n:02x}"),
                "name": format!("span {n}"),
                "kind": kind,
                "startTimeUnixNano": (NOW_NS - 5_000_000_000).to_string(),
                "endTimeUnixNano": NOW_NS - 5_000_000_000 + 12_345_678,
                "attributes": attrs,
                "droppedAttributesCount": 0,
                "unknownFieldsAreIgnored": {"x": 1},
            })
        };
        let kv = |k: &str, v: Value| json!({"key": k, "value": v});
        json!({"resourceSpans": [{
            "resource": {"attributes": [kv("service.name", json!({"stringValue": "shop"}))]},
            "scopeSpans": [{
                "scope": {"name": "test"},
                "spans": [
                    span(1, json!(2), json!([
                        kv("http.request.method", json!({"stringValue": "GET"})),
                        kv("http.route", json!({"stringValue": "/items/{id}"})),
                        kv("http.response.status_code", json!({"intValue": "200"})),
                        kv("enduser.id", json!({"stringValue": "u-7"})),
                    ])),
                    // Old attribute names, a path to template, the kind by name.
                    span(2, json!("SPAN_KIND_SERVER"), json!([
                        kv("http.method", json!({"stringValue": "POST"})),
                        kv("http.target", json!({"stringValue": "/orders/991?x=1"})),
                        kv("http.status_code", json!({"intValue": 503})),
                    ])),
                    // A client span: skipped.
                    span(3, json!(3), json!([])),
                    // A server span without a status: rejected.
                    span(4, json!(2), json!([
                        kv("http.request.method", json!({"stringValue": "GET"})),
                        kv("http.route", json!({"stringValue": "/a"})),
                    ])),
                ],
            }],
        }]})
    }

    #[test]
    fn server_spans_become_events_and_the_rest_is_told_apart() {
        let request = decode_json(export().to_string().as_bytes()).unwrap();
        let spans = server_spans(&request, &limits());
        let start_us = ((NOW_NS - 5_000_000_000) / 1000) as i64;
        let want = |n: u8, endpoint: &str, method: &str, status: u16, user: &str| Event {
            request_id: format!("5b8efff798038103d269b633813fc60c-eee19b7ec3c1b1{n:02x}"),
            timestamp: Micros::new(start_us),
            user_id: user.into(),
            endpoint: endpoint.into(),
            method: method.into(),
            status_code: status,
            // 12,345,678 ns: whole microseconds.
            latency_us: 12_345,
        };
        assert_eq!(
            spans.events,
            vec![
                want(1, "GET /items/{id}", "GET", 200, "u-7"),
                want(2, "POST /orders/{id}", "POST", 503, ""),
            ]
        );
        assert_eq!((spans.rejected, spans.skipped), (1, 1));
        let reason = spans.first_rejection.clone().unwrap();
        assert!(
            reason.contains("span 3 (span 4)") && reason.contains("status_code"),
            "{reason}"
        );
        let partial = partial_success(&spans).unwrap();
        assert_eq!(partial.rejected_spans, 1);
        assert_eq!(
            response_json(Some(&partial))["partialSuccess"]["rejectedSpans"],
            "1"
        );

        // The same request in protobuf gives the same events.
        let bytes = prost::Message::encode_to_vec(&request);
        assert_eq!(
            server_spans(&decode_protobuf(&bytes).unwrap(), &limits()),
            spans
        );
        assert_eq!(idempotency_key(&bytes), idempotency_key(&bytes.clone()));
        assert_ne!(idempotency_key(&bytes), idempotency_key(&bytes[1..]));
    }

    /// A span the event checks refuse (it ends before it starts; it is older
    /// than the window) is rejected naming the field; a request that is not
    /// OTLP is an error naming where.
    #[test]
    fn bad_spans_are_rejected_and_bad_documents_named() {
        let mut doc = export();
        doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["endTimeUnixNano"] = json!("1");
        let spans = server_spans(&decode_json(doc.to_string().as_bytes()).unwrap(), &limits());
        assert_eq!((spans.events.len(), spans.rejected), (1, 2));
        assert!(spans.first_rejection.unwrap().contains("latency_ms"));

        for (doc, path) in [
            (json!({"resourceSpans": {}}), "resourceSpans"),
            (
                json!({"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "xyz"}]}]}]}),
                "resourceSpans[0].scopeSpans[0].spans[0].traceId",
            ),
            (
                json!({"resourceSpans": [{"scopeSpans": [{"spans": [{"startTimeUnixNano": "-4"}]}]}]}),
                "resourceSpans[0].scopeSpans[0].spans[0].startTimeUnixNano",
            ),
        ] {
            match decode_json(doc.to_string().as_bytes()) {
                Err(OtlpError::Json { path: p, .. }) => assert_eq!(p, path, "{doc}"),
                other => panic!("{doc}: {other:?}"),
            }
        }
        assert!(matches!(decode_json(b"{"), Err(OtlpError::Json { .. })));
        assert!(matches!(
            decode_protobuf(&[0xff, 0xff, 0xff]),
            Err(OtlpError::Protobuf(_))
        ));
        // Empty and unknown-only documents are valid, empty exports.
        assert_eq!(
            decode_json(b"{}").unwrap(),
            ExportTraceServiceRequest::default()
        );
        assert_eq!(
            decode_json(br#"{"somethingNew": 1}"#).unwrap(),
            ExportTraceServiceRequest::default()
        );
    }
}
