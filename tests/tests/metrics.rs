//! `GET /metrics` against the real binary: the counters say exactly what
//! the node was sent and answered, `promtool check metrics` accepts the
//! text, only a key may read it, and a real Prometheus scrapes it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use toplog_tests::{Server, client, free_port, now_ms, utc};

/// A key of `role`, made through the API.
fn key_of(server: &Server, role: &str) -> String {
    let r = client()
        .post(server.url("/api/v1/keys"))
        .json(&json!({"name": format!("{role}-metrics"), "role": role}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let body: Value = r.json().unwrap();
    body["data"]["key"].as_str().unwrap().to_owned()
}

/// `/metrics` as the holder of `key` (if any), asking for `accept`: the
/// status, the content type and the text.
fn scrape(server: &Server, key: Option<&str>, accept: Option<&str>) -> (u16, String, String) {
    let mut req = reqwest::blocking::Client::new().get(server.url("/metrics"));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let r = req.send().unwrap();
    let status = r.status().as_u16();
    let content_type = (r.headers().get("content-type"))
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, content_type, r.text().unwrap())
}

/// Each sample of the text (series with its labels -> value).
fn samples(text: &str) -> HashMap<String, f64> {
    (text.lines())
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse().unwrap())
        })
        .collect()
}

/// `n` events, a second apart from `start_ms`, on two endpoints.
fn events(n: usize, start_ms: i64, tag: &str) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let (_, ts) = utc(start_ms + i as i64 * 1000);
            json!({"request_id": format!("{tag}-{i}"), "timestamp": ts,
                   "user_id": format!("u{}", i % 5),
                   "endpoint": if i % 3 == 0 { "GET /b" } else { "GET /a" },
                   "status_code": if i % 10 == 0 { 500 } else { 200 }, "latency_ms": 5 + i as u64})
        })
        .collect()
}

fn post(server: &Server, body: &Value, key: Option<&str>) -> u16 {
    let mut req = client().post(server.url("/api/v1/requests")).json(body);
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    req.send().unwrap().status().as_u16()
}

/// Sent: batches of 100, 50 and 7 events (the last with an idempotency
/// key, then again with it), one refused batch, one top-K and one page of
/// events. Each counter says exactly that; the text passes `promtool`.
#[test]
fn metrics_count_exactly_what_the_node_did_and_pass_promtool() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_ready(&dir.path().join("node"), &[]);
    let viewer = key_of(&server, "viewer");
    let start = now_ms() - 3_600_000;
    assert_eq!(post(&server, &json!(events(100, start, "a")), None), 200);
    assert_eq!(post(&server, &json!(events(50, start, "b")), None), 200);
    let last = json!(events(7, start, "c"));
    assert_eq!(post(&server, &last, Some("batch-c")), 200);
    assert_eq!(post(&server, &last, Some("batch-c")), 200);
    assert_eq!(post(&server, &json!([{"request_id": "x"}]), None), 400);
    let (from, to) = (utc(start - 60_000).1, utc(now_ms()).1);
    let top = reqwest::Url::parse_with_params(
        &server.url("/api/v1/requests/top-k"),
        [("k", "2"), ("metric", "frequency"), ("by", "endpoint")]
            .into_iter()
            .chain([("start", from.as_str()), ("end", to.as_str())]),
    )
    .unwrap();
    let top = client().get(top).send().unwrap();
    assert_eq!(top.status(), 200);
    let page = client()
        .get(server.url("/api/v1/requests?limit=10"))
        .send()
        .unwrap();
    assert_eq!(page.status(), 200);

    // Only a key may read it.
    assert_eq!(scrape(&server, None, None).0, 401);
    let (status, content_type, text) = scrape(&server, Some(&viewer), None);
    assert_eq!(status, 200, "{text}");
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let s = samples(&text);
    let get = |series: &str| {
        *s.get(series)
            .unwrap_or_else(|| panic!("{series} missing from:\n{text}"))
    };
    let http = |name: &str, outcome: &str| {
        get(&format!(
            "toplog_{name}_total{{transport=\"http\",outcome=\"{outcome}\"}}"
        ))
    };
    assert_eq!(http("ingest_batches", "accepted"), 3.0);
    assert_eq!(http("ingest_batches", "replayed"), 1.0);
    assert_eq!(http("ingest_batches", "refused"), 1.0);
    assert_eq!(http("ingest_events", "accepted"), 157.0);
    assert_eq!(http("ingest_events", "replayed"), 7.0);
    assert!(get("toplog_ingest_bytes_total{transport=\"http\"}") > 0.0);
    let rows = get("toplog_segment_rows{tier=\"local\"}") + get("toplog_memtable_rows");
    assert_eq!(rows, 157.0);
    assert_eq!(get("toplog_segments{tier=\"archive\"}"), 0.0);
    // Two endpoints and five users were sent.
    assert_eq!(get("toplog_interned_keys{dimension=\"endpoint\"}"), 2.0);
    assert_eq!(get("toplog_interned_keys{dimension=\"user_id\"}"), 5.0);
    // Nothing was flushed yet: the rows and their cells are all in memory.
    assert_eq!(get("toplog_memtable_rows"), 157.0);
    assert_eq!(get("toplog_rollup_buckets{granularity=\"rollup_1m\"}"), 0.0);
    // Three batches were written to the log (the replay was answered from
    // its key), one after another: three group commits, each fsynced once.
    assert_eq!(get("toplog_log_commit_duration_seconds_count"), 3.0);
    assert_eq!(get("toplog_log_fsync_duration_seconds_count"), 3.0);
    assert_eq!(
        get("toplog_log_fsync_duration_seconds_bucket{le=\"+Inf\"}"),
        3.0
    );
    assert!(get("toplog_log_bytes") > 0.0);
    assert_eq!(get("toplog_flushes_total"), 0.0);
    assert_eq!(get("toplog_idempotency_keys"), 1.0);
    assert_eq!(get("toplog_log_applied_index"), 3.0);
    let requests = |route: &str, method: &str, class: &str| {
        get(&format!(
            "toplog_http_request_duration_seconds_count{{route=\"{route}\",method=\"{method}\",class=\"{class}\"}}"
        ))
    };
    assert_eq!(requests("/api/v1/requests", "POST", "2xx"), 4.0);
    assert_eq!(requests("/api/v1/requests", "POST", "4xx"), 1.0);
    assert_eq!(requests("/api/v1/requests", "GET", "2xx"), 1.0);
    let reads: f64 = (s.iter())
        .filter(|(k, _)| {
            k.starts_with("toplog_read_duration_seconds_count{route=\"/api/v1/requests/top-k\"")
        })
        .map(|(_, v)| v)
        .sum();
    assert_eq!(reads, 1.0, "{text}");
    assert!(get("toplog_process_resident_memory_bytes") > 1e6);
    // A single node has no Raft state to show.
    assert!(!text.contains("toplog_raft_"), "{text}");

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (scripts/test.sh installs it)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // OpenMetrics to a client that asks for it, with the same samples.
    let (status, content_type, om) =
        scrape(&server, Some(&viewer), Some("application/openmetrics-text"));
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert_eq!(
        samples(&om)
            [&"toplog_ingest_events_total{transport=\"http\",outcome=\"accepted\"}".to_owned()],
        157.0
    );
}

/// A Prometheus process.
struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A real Prometheus, given a viewer key, scrapes the node every second;
/// its query API then answers the node's counts.
#[test]
fn a_real_prometheus_scrapes_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_ready(&dir.path().join("node"), &[]);
    let viewer = key_of(&server, "viewer");
    assert_eq!(
        post(&server, &json!(events(20, now_ms() - 60_000, "p")), None),
        200
    );
    let target = server.base.trim_start_matches("http://");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: toplog\n    metrics_path: /metrics\n\
             \x20   authorization:\n      credentials: {viewer}\n\
             \x20   static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let _prometheus = Prometheus(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (scripts/test.sh installs it)"),
    );
    let query = |q: &str| -> Option<f64> {
        let url = reqwest::Url::parse_with_params(
            &format!("http://127.0.0.1:{port}/api/v1/query"),
            [("query", q)],
        )
        .ok()?;
        let body: Value = reqwest::blocking::Client::new()
            .get(url)
            .send()
            .ok()?
            .json()
            .ok()?;
        body["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let events = loop {
        let up = query("up{job=\"toplog\"}");
        let events = query(
            "toplog_ingest_events_total{job=\"toplog\",transport=\"http\",outcome=\"accepted\"}",
        );
        if up == Some(1.0)
            && let Some(events) = events
        {
            break events;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not scrape the node within 60 s (up: {up:?})"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(events, 20.0);
    assert_eq!(
        query("toplog_memtable_rows + on(job) toplog_segment_rows{tier=\"local\"}"),
        Some(20.0)
    );
}
