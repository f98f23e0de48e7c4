//! OpenTelemetry traces in, over OTLP/HTTP and OTLP/gRPC on the REST port:
//! the real Python SDK and its exporters send spans (plain and gzip) and the
//! node stores one event per SERVER span, equal to what was sent; OTLP/JSON as the
//! specification writes it is taken too, with a partial success for spans
//! that cannot be used; a retried export is stored once; bad input of each
//! kind gets its documented error and stores nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use serde_json::{Value, json};
use toplog_tests::{Server, all_events, client};

fn sent_by_the_sdk(
    server: &Server,
    spans: usize,
    compression: &str,
    transport: &str,
) -> Vec<Value> {
    let script = toplog_tests::manifest_dir().join("otel/send_spans.py");
    let out = Command::new("python3")
        .env("TOPLOG_API_KEY", toplog_tests::ADMIN_KEY)
        .arg(&script)
        .args([&server.base, &spans.to_string(), compression, transport])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "send_spans.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("expected events")
}

fn by_id(mut events: Vec<Value>) -> Vec<Value> {
    events.sort_by(|a, b| a["request_id"].as_str().cmp(&b["request_id"].as_str()));
    events
}

fn post(server: &Server, content_type: &str, body: Vec<u8>) -> reqwest::blocking::Response {
    client()
        .post(server.url("/v1/traces"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .unwrap()
}

#[test]
fn spans_from_the_sdk_and_otlp_json_become_the_events_sent() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_ready(dir.path(), &["--max-body-bytes", "65536"]);

    // The SDK's exporters, HTTP (protobuf) and gRPC, plain and gzip: every
    // server span with a method and status is stored as sent; the rest is not.
    let mut want = sent_by_the_sdk(&server, 300, "none", "http");
    want.extend(sent_by_the_sdk(&server, 200, "gzip", "http"));
    let over_http = want.len();
    want.extend(sent_by_the_sdk(&server, 300, "none", "grpc"));
    want.extend(sent_by_the_sdk(&server, 200, "gzip", "grpc"));
    assert_eq!(by_id(all_events(&server)), by_id(want.clone()));
    // Counted by transport as stored.
    let events = |transport: &str| {
        toplog_tests::metric(
            &server.base,
            &format!(
                "toplog_ingest_events_total{{transport=\"{transport}\",outcome=\"accepted\"}}"
            ),
        )
    };
    assert_eq!(events("otlp_http"), over_http as f64);
    assert_eq!(events("otlp_grpc"), (want.len() - over_http) as f64);

    // OTLP/JSON as the specification writes it: hex ids, 64-bit integers as
    // decimal strings. One span is used, one has no method (rejected, named
    // in the partial success), one is a client span (skipped).
    let start_ns: u64 = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        - 2_000_000_000) as u64;
    let kv = |k: &str, v: Value| json!({"key": k, "value": v});
    let span = |span_id: &str, kind: u8, attrs: Value| {
        json!({
            "traceId": "0af7651916cd43dd8448eb211c80319c",
            "spanId": span_id,
            "name": "checkout",
            "kind": kind,
            "startTimeUnixNano": start_ns.to_string(),
            "endTimeUnixNano": (start_ns + 2_500_000).to_string(),
            "attributes": attrs,
        })
    };
    let doc = json!({"resourceSpans": [{
        "resource": {"attributes": [kv("service.name", json!({"stringValue": "cart"}))]},
        "scopeSpans": [{"scope": {"name": "manual"}, "spans": [
            span("b7ad6b7169203331", 2, json!([
                kv("http.request.method", json!({"stringValue": "POST"})),
                kv("http.route", json!({"stringValue": "/cart/checkout"})),
                kv("http.response.status_code", json!({"intValue": "502"})),
                kv("user.id", json!({"stringValue": "u-42"})),
            ])),
            span("b7ad6b7169203332", 2, json!([
                kv("http.route", json!({"stringValue": "/cart"})),
                kv("http.response.status_code", json!({"intValue": "200"})),
            ])),
            span("b7ad6b7169203333", 3, json!([])),
        ]}],
    }]});
    let body = serde_json::to_vec(&doc).unwrap();
    for attempt in 0..2 {
        // The second is an exporter's retry of the same bytes: stored once.
        let r = post(&server, "application/json", body.clone());
        assert_eq!(r.status(), 200, "attempt {attempt}");
        let answer: Value = r.json().unwrap();
        assert_eq!(
            answer["partialSuccess"]["rejectedSpans"], "1",
            "attempt {attempt}: {answer}"
        );
        let message = answer["partialSuccess"]["errorMessage"].as_str().unwrap();
        assert!(message.contains("http.request.method"), "{answer}");
    }
    let stored = all_events(&server);
    let checkout: Vec<&Value> = stored
        .iter()
        .filter(|e| e["request_id"] == "0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331")
        .collect();
    assert_eq!(checkout.len(), 1, "stored once: {checkout:?}");
    let e = checkout[0];
    assert_eq!(
        (
            &e["endpoint"],
            &e["method"],
            &e["status_code"],
            &e["user_id"],
            &e["latency_ms"]
        ),
        (
            &json!("POST /cart/checkout"),
            &json!("POST"),
            &json!(502),
            &json!("u-42"),
            &json!(2.5)
        )
    );
    let stored_count = stored.len();
    assert_eq!(stored_count, want.len() + 1);

    // Bad input, each with its documented answer, none storing anything.
    let r = post(&server, "application/x-protobuf", vec![0xff, 0xff, 0xff]);
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "application/x-protobuf"
    );
    let status = r.bytes().unwrap();
    // google.rpc.Status: field 1 (code) = 3, INVALID_ARGUMENT; then the message.
    assert_eq!(&status[..2], &[0x08, 0x03]);
    assert!(String::from_utf8_lossy(&status).contains("not an OTLP trace export"));

    let mut bad = doc.clone();
    bad["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"] = json!("not hex");
    let r = post(
        &server,
        "application/json",
        serde_json::to_vec(&bad).unwrap(),
    );
    assert_eq!(r.status(), 400);
    let answer: Value = r.json().unwrap();
    assert_eq!(answer["error"]["code"], "invalid_otlp", "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("resourceSpans[0].scopeSpans[0].spans[0].traceId"),
        "{answer}"
    );
    let r = post(
        &server,
        "application/json",
        b"{\"resourceSpans\": [".to_vec(),
    );
    assert_eq!(r.status(), 400);
    let r = post(&server, "text/plain", body.clone());
    assert_eq!(r.status(), 415);
    let r = post(&server, "application/x-protobuf", vec![0; 100_000]);
    assert_eq!(r.status(), 413);
    assert_eq!(all_events(&server).len(), stored_count);
}

/// The standard gRPC health service answers on the REST port: the node, and
/// the trace service by name, are SERVING; an unknown service is NOT_FOUND.
/// A malformed message is refused with `INVALID_ARGUMENT`, one past
/// `max_body_bytes` with `RESOURCE_EXHAUSTED`, on OTLP's Export and on
/// toplog's Ingest and IngestStream alike, and none stores anything.
#[test]
fn grpc_health_answers_on_the_rest_port_and_bad_exports_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_ready(dir.path(), &["--max-body-bytes", "65536"]);
    let script = r#"
import os, sys, grpc
channel = grpc.insecure_channel(sys.argv[1])
key = [("authorization", "Bearer " + os.environ["TOPLOG_API_KEY"])]
check = channel.unary_unary("/grpc.health.v1.Health/Check",
                            request_serializer=lambda b: b, response_deserializer=lambda b: b)
def name(s):
    raw = s.encode()
    return (b"\x0a" + bytes([len(raw)]) + raw) if raw else b""
for service in ["", "opentelemetry.proto.collector.trace.v1.TraceService"]:
    print(check(name(service), timeout=10).hex())
try:
    check(name("no.such.Service"), timeout=10)
    print("answered")
except grpc.RpcError as e:
    print(e.code().name)
export = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                             request_serializer=lambda b: b, response_deserializer=lambda b: b)
ingest = channel.unary_unary("/toplog.v1.Toplog/Ingest",
                             request_serializer=lambda b: b, response_deserializer=lambda b: b)
stream = channel.stream_stream("/toplog.v1.Toplog/IngestStream",
                               request_serializer=lambda b: b, response_deserializer=lambda b: b)
# Not protobuf; then a well-formed 100,000-byte message (one unknown field).
for call in [export, ingest, lambda body, timeout, metadata: list(stream(iter([body]), timeout=timeout, metadata=metadata))]:
    for body in [b"\xff\xff\xff", b"\x7a" + bytes([0xa0, 0x8d, 0x06]) + b"x" * 100000]:
        try:
            call(body, timeout=10, metadata=key)
            print("answered")
        except grpc.RpcError as e:
            print(e.code().name)
"#;
    let out = toplog_tests::succeeded(
        Command::new("python3")
            .env("TOPLOG_API_KEY", toplog_tests::ADMIN_KEY)
            .args(["-c", script, server.base.trim_start_matches("http://")]),
    );
    // HealthCheckResponse { status: SERVING (1) } is the bytes 08 01.
    assert_eq!(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .collect::<Vec<_>>(),
        [
            "0801",
            "0801",
            "NOT_FOUND",
            "INVALID_ARGUMENT",
            "RESOURCE_EXHAUSTED",
            "INVALID_ARGUMENT",
            "RESOURCE_EXHAUSTED",
            "INVALID_ARGUMENT",
            "RESOURCE_EXHAUSTED"
        ]
    );
    assert!(all_events(&server).is_empty());
}
