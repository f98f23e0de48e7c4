//! toplog's gRPC API (`toplog.v1.Toplog`) from a client that is not toplog's
//! code: Python grpcio, its stubs made by grpcio-tools from the .proto, calls
//! every RPC on the REST port and server reflection lists the services.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use serde_json::{Value, json};
use toplog_tests::Server;

#[test]
fn a_grpcio_client_calls_every_rpc() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_ready(dir.path(), &[]);
    let script = toplog_tests::manifest_dir().join("grpc/every_rpc.py");
    let proto = toplog_tests::manifest_dir().join("../proto");
    let out = Command::new("python3")
        .env("TOPLOG_API_KEY", toplog_tests::ADMIN_KEY)
        .arg(&script)
        .arg(server.base.trim_start_matches("http://"))
        .arg(&proto)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "every_rpc.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    // 5 events, the same 5 again under their key (replayed, not applied), a
    // batch refused whole for its second event's status (named in the
    // details), 4 streamed batches of 3.
    assert_eq!(seen["ingest"], json!([5, false]), "{seen}");
    assert_eq!(seen["ingest_again"], json!([5, true]), "{seen}");
    assert_eq!(seen["bad"], json!(["INVALID_ARGUMENT", true]), "{seen}");
    assert_eq!(seen["stream"], json!([3, 3, 3, 3]), "{seen}");
    // 17 events g0-g4, g10-g21: even numbers are GET /a (9), odd POST /b/{id} (8).
    assert_eq!(
        seen["top_k"],
        json!([["GET /a", 9], ["POST /b/{id}", 8], true]),
        "{seen}"
    );
    assert_eq!(
        seen["top_k_bad"],
        json!(["INVALID_ARGUMENT", true]),
        "{seen}"
    );
    assert_eq!(
        seen["timeseries"],
        json!([["GET /a", 9], ["POST /b/{id}", 8]]),
        "{seen}"
    );
    let today = &seen["history"][0][0];
    assert_eq!(seen["history"], json!([[today, 17]]), "{seen}");
    assert_eq!(
        seen["history_bad"],
        json!(["INVALID_ARGUMENT", true]),
        "{seen}"
    );
    // u1: i % 3 == 1 among 0-4 and 10-21: 1, 4, 10, 13, 16, 19.
    assert_eq!(seen["count"], 6, "{seen}");
    let mut want: Vec<String> = (0..5).chain(10..22).map(|i| format!("g{i}")).collect();
    // Listed in time order: g<i> is at now - 60 s + i µs.
    want.sort_by_key(|id| id[1..].parse::<u32>().unwrap());
    assert_eq!(seen["list"], json!(want), "{seen}");
    // The 9 GET /a events, their latencies 1.5 + i ms for the even i.
    assert_eq!(
        seen["aggregation"],
        json!([
            "done",
            "endpoint",
            ["frequency", "latency"],
            "GET",
            true,
            [[
                "GET /a",
                9.0,
                [
                    "frequency",
                    "latency_avg",
                    "latency_p50",
                    "latency_p95",
                    "latency_p99"
                ],
                true
            ]]
        ]),
        "{seen}"
    );
    assert_eq!(
        seen["aggregations_listed"],
        json!([[true, "done", 0]]),
        "{seen}"
    );
    assert_eq!(
        seen["aggregation_bad"],
        json!([
            ["INVALID_ARGUMENT", true],
            ["INVALID_ARGUMENT", true],
            ["NOT_FOUND", true]
        ]),
        "{seen}"
    );
    assert_eq!(
        seen["reflection"],
        json!(["toplog.v1.Toplog", "grpc.health.v1.Health"]),
        "{seen}"
    );
}

/// The Rust client in `examples/` (built by scripts/test.sh) ingests with
/// a key, is told the retry was replayed, and reads the top endpoints.
#[test]
fn the_rust_client_example_ingests_and_asks_a_top_k() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_ready(dir.path(), &[]);
    let example = toplog_tests::binary()
        .parent()
        .unwrap()
        .join("examples/grpc_client");
    assert!(
        example.exists(),
        "{} not found: build it (`cargo build -p toplog-examples --example grpc_client`)",
        example.display()
    );
    let out = toplog_tests::succeeded(
        Command::new(&example)
            .env("TOPLOG_API_KEY", toplog_tests::ADMIN_KEY)
            .arg(&server.base),
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines[2..].sort_unstable();
    assert_eq!(
        lines,
        [
            "sent: 30 events, replayed: false",
            "sent again: 30 events, replayed: true",
            "GET /health\t10",
            "GET /items/{id}\t10",
            "POST /orders\t10"
        ]
    );
    let grpc = |outcome: &str, what: &str| {
        toplog_tests::metric(
            &server.base,
            &format!("toplog_ingest_{what}_total{{transport=\"grpc\",outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!(grpc("accepted", "events"), 30.0);
    assert_eq!(grpc("replayed", "events"), 30.0);
    assert_eq!(grpc("accepted", "batches"), 1.0);
    assert_eq!(grpc("replayed", "batches"), 1.0);
    // Two Ingest calls and one TopK, timed; the TopK as a read, by source.
    let m = |series: &str| toplog_tests::metric(&server.base, series);
    let calls = |method: &str| {
        m(&format!(
            "toplog_grpc_request_duration_seconds_count{{method=\"/toplog.v1.Toplog/{method}\"}}"
        ))
    };
    assert_eq!((calls("Ingest"), calls("TopK")), (2.0, 1.0));
    let reads: f64 = ["rollup", "raw"]
        .iter()
        .map(|source| {
            m(&format!(
                "toplog_grpc_read_duration_seconds_count{{method=\"/toplog.v1.Toplog/TopK\",source=\"{source}\"}}"
            ))
        })
        .sum();
    assert_eq!(reads, 1.0);
}

/// kill -9 while an IngestStream is sending: every batch acknowledged before
/// the kill is stored after the restart, and resending every batch with its
/// key stores none twice (acknowledged ones come back `replayed`).
#[test]
fn kill_9_during_an_ingest_stream_loses_no_acknowledged_batch_and_duplicates_none() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    const BATCHES: usize = 400;
    const SIZE: usize = 50;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_ready(dir.path(), &[]);
    let script = toplog_tests::manifest_dir().join("grpc/stream_batches.py");
    let proto = toplog_tests::manifest_dir().join("../proto");
    let base_us = (toplog_tests::now_ms() - 600_000) * 1000;
    let run = |server: &Server, mode: &str| {
        Command::new("python3")
            .env("TOPLOG_API_KEY", toplog_tests::ADMIN_KEY)
            .arg(&script)
            .arg(server.base.trim_start_matches("http://"))
            .arg(&proto)
            .args([mode, &BATCHES.to_string(), &SIZE.to_string()])
            .env("BASE_US", base_us.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3")
    };
    let mut streaming = run(&server, "stream");
    let mut lines = BufReader::new(streaming.stdout.take().unwrap()).lines();
    let mut acked = Vec::new();
    // Kill the node once some batches are acknowledged, the stream still going.
    while acked.len() < 40 {
        let line = lines.next().expect("stream ended early").unwrap();
        acked.push(line.parse::<usize>().expect(&line));
    }
    server.kill9();
    for line in lines {
        let line = line.unwrap();
        match line.parse::<usize>() {
            Ok(n) => acked.push(n),
            Err(_) => assert!(line.starts_with("broken"), "{line}"),
        }
    }
    streaming.wait().unwrap();
    assert!(
        acked.len() < BATCHES,
        "the kill came after the stream ended"
    );
    assert_eq!(acked, (0..acked.len()).collect::<Vec<_>>(), "acks in order");

    let server = Server::start_ready(dir.path(), &[]);
    let count = |server: &Server| {
        let body: Value = toplog_tests::client()
            .get(server.url("/api/v1/requests/count?start=0"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        body["count"].as_u64().unwrap() as usize
    };
    let stored = count(&server);
    assert!(
        stored >= acked.len() * SIZE,
        "{stored} stored, {} acknowledged",
        acked.len()
    );
    assert_eq!(stored % SIZE, 0, "a batch stored in part");

    let resend = run(&server, "resend").wait_with_output().unwrap();
    assert!(resend.status.success());
    for line in String::from_utf8(resend.stdout).unwrap().lines() {
        let f: Vec<usize> = line.split(' ').map(|x| x.parse().unwrap()).collect();
        assert_eq!(f[1], SIZE, "{line}");
        if f[0] < acked.len() {
            assert_eq!(f[2], 1, "acknowledged batch {} applied again", f[0]);
        }
    }
    assert_eq!(count(&server), BATCHES * SIZE, "every batch exactly once");
}
