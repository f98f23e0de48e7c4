//! Limits against the real binary: a client that never finishes its headers
//! is cut off after `header_timeout`; past `max_connections` new connections
//! wait unserved until one closes; past `key_memory_bytes` a batch bringing
//! new keys is refused whole while known keys are still taken.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use toplog_tests::{Server, all_events, client, now_ms};

fn healthz(server: &Server, timeout: Duration) -> Option<u16> {
    reqwest::blocking::Client::builder()
        .timeout(timeout)
        .build()
        .unwrap()
        .get(server.url("/healthz"))
        .send()
        .ok()
        .map(|r| r.status().as_u16())
}

/// Reads until the server closes the connection; how long that took.
fn until_closed(mut sock: TcpStream) -> Duration {
    let started = Instant::now();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match sock.read(&mut buf) {
            Ok(0) | Err(_) => return started.elapsed(),
            Ok(_) => {}
        }
    }
}

#[test]
fn slow_headers_are_cut_off_and_connections_beyond_the_limit_wait() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_ready(
        dir.path(),
        &["--header-timeout", "3s", "--max-connections", "2"],
    );
    let addr = server.base.trim_start_matches("http://").to_owned();
    // Two connections hold both turns: one sends half a request, one nothing.
    let mut half = TcpStream::connect(&addr).unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let silent = TcpStream::connect(&addr).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        healthz(&server, Duration::from_millis(1500)),
        None,
        "a third connection was served past max_connections = 2"
    );
    // Both are cut off once their headers are late; the server then serves again.
    let (a, b) = (until_closed(half), until_closed(silent));
    assert!(
        a < Duration::from_secs(25) && b < Duration::from_secs(25),
        "slow clients held their connections: {a:?}, {b:?}"
    );
    assert_eq!(healthz(&server, Duration::from_secs(10)), Some(200));
}

/// 1 MiB of distinct keys holds some 20,000 user ids: batches of new users
/// are taken until one does not fit, which is refused whole (`503
/// overloaded` naming the budget, none of its events stored), and events of
/// users the node already knows are still taken.
#[test]
fn new_keys_past_the_key_budget_are_refused_and_known_ones_still_taken() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_ready(dir.path(), &["--key-memory-bytes", "1048576"]);
    let now = now_ms();
    let batch = |tag: &str, users: std::ops::Range<usize>| -> Vec<Value> {
        users
            .map(|u| {
                json!({
                    "request_id": format!("{tag}-{u}"),
                    "timestamp": now - 1000,
                    "user_id": format!("user-with-a-longish-name-{u:08}"),
                    "endpoint": "GET /a",
                    "status_code": 200,
                    "latency_ms": 1.0,
                })
            })
            .collect()
    };
    let post = |events: &[Value]| {
        let r = client()
            .post(server.url("/api/v1/requests"))
            .json(events)
            .send()
            .unwrap();
        let status = r.status().as_u16();
        let retry = r.headers().get("retry-after").is_some();
        (status, retry, r.json::<Value>().unwrap())
    };
    let mut taken = 0;
    let refused = loop {
        assert!(taken < 100_000, "1 MiB of keys took {taken} users");
        let (status, retry, body) = post(&batch("new", taken..taken + 1000));
        match status {
            200 => taken += 1000,
            503 => break (retry, body),
            other => panic!("{other}: {body}"),
        }
    };
    // Each user id costs its 33 bytes and about 44 of entries: over 10,000 fit.
    assert!((10_000..=20_000).contains(&taken), "{taken} users taken");
    let (retry, body) = refused;
    assert!(retry, "{body}");
    assert_eq!(body["error"]["code"], "overloaded", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("key_memory_bytes") && message.contains("user_id"),
        "{body}"
    );
    // Known users are still taken; the refused batch left nothing behind.
    let (status, _, body) = post(&batch("again", 0..1000));
    assert_eq!(status, 200, "{body}");
    let stored = all_events(&server);
    assert_eq!(stored.len(), taken + 1000);
    assert!(
        stored.iter().all(|e| {
            let id = e["request_id"].as_str().unwrap();
            let n: usize = id.rsplit('-').next().unwrap().parse().unwrap();
            id.starts_with("again-") || n < taken
        }),
        "an event of the refused batch was stored"
    );
}
