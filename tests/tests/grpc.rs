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
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/grpc/every_rpc.py");
    let proto = concat!(env!("CARGO_MANIFEST_DIR"), "/../proto");
    let out = Command::new("python3")
        .args([script, server.base.trim_start_matches("http://"), proto])
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
    // u1: i % 3 == 1 among 0-4 and 10-21: 1, 4, 10, 13, 16, 19.
    assert_eq!(seen["count"], 6, "{seen}");
    let mut want: Vec<String> = (0..5).chain(10..22).map(|i| format!("g{i}")).collect();
    // Listed in time order: g<i> is at now - 60 s + i µs.
    want.sort_by_key(|id| id[1..].parse::<u32>().unwrap());
    assert_eq!(seen["list"], json!(want), "{seen}");
    assert_eq!(
        seen["reflection"],
        json!(["toplog.v1.Toplog", "grpc.health.v1.Health"]),
        "{seen}"
    );
}
