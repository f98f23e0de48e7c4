//! `GET /metrics` against the real binary: the counters say exactly what
//! the node was sent and answered, `promtool check metrics` accepts the
//! text, only a key may read it, and a real Prometheus scrapes it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use toplog_tests::{Server, client, free_port, now_ms, samples, utc};

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
    assert_eq!(get("toplog_rollup_evicted_keys_total"), 0.0);
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
/// its query API then answers the node's counts. Every panel of the Grafana
/// dashboard (deploy/grafana/toplog.json) answers too: each PromQL query
/// through that Prometheus, each request-analytics query from the node
/// itself, as Grafana's JSON API data source would send it.
#[test]
fn a_real_prometheus_scrapes_the_node_and_every_dashboard_panel_answers() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("toplog.toml");
    let backups = dir.path().join("backups");
    std::fs::write(
        &config,
        format!("[backup]\nurl = \"{}\"\n", backups.display()),
    )
    .unwrap();
    let server = Server::start_ready(
        &dir.path().join("node"),
        &["--config", config.to_str().unwrap()],
    );
    let viewer = key_of(&server, "viewer");
    // 200 events over the last 5 minutes: two endpoints of 67 and 133
    // requests, one in ten failing; and one batch refused.
    let sent = json!(events(200, now_ms() - 300_000, "p"));
    assert_eq!(post(&server, &sent, None), 200);
    assert_eq!(post(&server, &json!([{"request_id": "x"}]), None), 400);
    // gRPC calls (30 events, the same again, a top-K) from the Rust client
    // example, and a backup, for the panels of both.
    let example = toplog_tests::binary()
        .parent()
        .unwrap()
        .join("examples/grpc_client");
    toplog_tests::succeeded(
        Command::new(&example)
            .env("TOPLOG_API_KEY", toplog_tests::ADMIN_KEY)
            .arg(&server.base),
    );
    let r = client()
        .post(server.url("/api/v1/admin/backups"))
        .json(&json!({}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);

    // The request-analytics panels, each as the JSON API data source sends
    // it (Grafana's time macros filled in) and each field's JSON path read.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(
            toplog_tests::manifest_dir().join("../deploy/grafana/toplog.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let panels: Vec<&Value> = (dashboard["panels"].as_array().unwrap().iter())
        .filter(|p| p["type"] != "row")
        .collect();
    let mut prometheus_queries = Vec::new();
    for panel in &panels {
        let title = panel["title"].as_str().unwrap();
        for target in panel["targets"].as_array().unwrap() {
            match target["datasource"]["type"].as_str().unwrap() {
                "prometheus" => prometheus_queries.push((title, target["expr"].as_str().unwrap())),
                "marcusolsson-json-datasource" => {
                    let span_ms = match panel["timeFrom"].as_str() {
                        Some("30d") => 30 * 86_400_000,
                        None => 3_600_000,
                        Some(other) => panic!("{title}: timeFrom {other}"),
                    };
                    let (to, from) = (now_ms(), now_ms() - span_ms);
                    let params = (target["queryParams"].as_str().unwrap())
                        .replace("${__from:date:iso}", &utc(from).1)
                        .replace("${__to:date:iso}", &utc(to).1)
                        .replace("${__from:date:YYYY-MM-DD}", &utc(from).0)
                        .replace("${__to:date:YYYY-MM-DD}", &utc(to).0);
                    assert!(!params.contains("${"), "{title}: {params}");
                    let url = format!(
                        "{}?{params}",
                        server.url(target["urlPath"].as_str().unwrap())
                    );
                    let r = reqwest::blocking::Client::new()
                        .get(&url)
                        .bearer_auth(&viewer)
                        .send()
                        .unwrap();
                    assert_eq!(r.status(), 200, "{title}: {url}");
                    let body: Value = r.json().unwrap();
                    // Each field picks as many values as the others (null
                    // where a minute had no requests), and some values.
                    let fields: Vec<Vec<Value>> = (target["fields"].as_array().unwrap().iter())
                        .map(|f| json_path(&body, f["jsonPath"].as_str().unwrap()))
                        .collect();
                    assert!(
                        (fields.iter())
                            .all(|f| f.len() == fields[0].len() && f.iter().any(|v| !v.is_null())),
                        "{title}: {body}"
                    );
                }
                other => panic!("{title}: data source {other}"),
            }
        }
    }
    assert!(prometheus_queries.len() >= 10, "{prometheus_queries:?}");

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
    // The query's result (a vector), or why not.
    let query = |q: &str| -> Result<Vec<Value>, String> {
        let url = reqwest::Url::parse_with_params(
            &format!("http://127.0.0.1:{port}/api/v1/query"),
            [("query", q)],
        )
        .map_err(|e| e.to_string())?;
        let body: Value = (reqwest::blocking::Client::new().get(url).send())
            .and_then(|r| r.json())
            .map_err(|e| e.to_string())?;
        match body["status"].as_str() {
            Some("success") => Ok(body["data"]["result"]
                .as_array()
                .cloned()
                .unwrap_or_default()),
            _ => Err(body.to_string()),
        }
    };
    let value =
        |q: &str| -> Option<f64> { query(q).ok()?.first()?["value"][1].as_str()?.parse().ok() };
    // Rates need two scrapes in their window: wait for five.
    let deadline = Instant::now() + Duration::from_secs(60);
    while value("count_over_time(up{job=\"toplog\"}[1m])").unwrap_or(0.0) < 5.0 {
        assert!(
            Instant::now() < deadline,
            "Prometheus did not scrape the node 5 times within 60 s (up: {:?})",
            value("up{job=\"toplog\"}")
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(value("up{job=\"toplog\"}"), Some(1.0));
    assert_eq!(
        value("toplog_ingest_events_total{job=\"toplog\",transport=\"http\",outcome=\"accepted\"}"),
        Some(200.0)
    );
    assert_eq!(
        value("toplog_memtable_rows + on(job) toplog_segment_rows{tier=\"local\"}"),
        Some(230.0)
    );
    for (title, expr) in prometheus_queries {
        let q = expr.replace("$__rate_interval", "1m");
        let result = query(&q).unwrap_or_else(|e| panic!("{title}: {q}: {e}"));
        // Raft series exist on cluster members only.
        assert!(
            !result.is_empty() || q.contains("toplog_raft_"),
            "{title}: {q} has no series"
        );
    }
}

/// The values a JSON API data source's path picks: `$.a[*].b` or
/// `$.a[0].b[*].c` (the forms the dashboard uses).
fn json_path(body: &Value, path: &str) -> Vec<Value> {
    let mut at = vec![body.clone()];
    for step in path.trim_start_matches("$.").split('.') {
        let (name, index) = match step.split_once('[') {
            Some((n, i)) => (n, Some(i.trim_end_matches(']'))),
            None => (step, None),
        };
        at = (at.iter())
            .flat_map(|v| {
                let v = &v[name];
                match index {
                    None => vec![v.clone()],
                    Some("*") => v.as_array().cloned().unwrap_or_default(),
                    Some(i) => vec![v[i.parse::<usize>().unwrap()].clone()],
                }
            })
            .collect();
    }
    at
}

/// `promtool` in `dir` with `args`; fails the test unless it succeeds.
fn promtool(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "promtool {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The health alert rules are valid, each fires in its unit test as
/// written (`promtool test rules`), and every metric they name is one a
/// node serves (a Raft one, one a cluster member registers).
#[test]
fn the_alert_rules_pass_their_tests_and_name_served_metrics() {
    let deploy = toplog_tests::manifest_dir().join("../deploy/prometheus");
    promtool(&deploy, &["check", "rules", "toplog-alerts.yml"]);
    promtool(&deploy, &["test", "rules", "toplog-alerts.test.yml"]);

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_ready(&dir.path().join("node"), &[]);
    // A family shows once it has a sample: take in a batch, refuse one.
    assert_eq!(
        post(&server, &json!(events(3, now_ms() - 60_000, "r")), None),
        200
    );
    assert_eq!(post(&server, &json!([{"request_id": "x"}]), None), 400);
    let text = client()
        .get(server.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let served: Vec<(&str, &str)> = (text.lines())
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split_once(' '))
        .collect();
    let metrics_rs =
        std::fs::read_to_string(toplog_tests::manifest_dir().join("../server/src/metrics/mod.rs"))
            .unwrap();
    let rules = std::fs::read_to_string(deploy.join("toplog-alerts.yml")).unwrap();
    let mut named: Vec<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("toplog_"))
        .collect();
    named.sort_unstable();
    named.dedup();
    assert!(named.len() >= 10, "{named:?}");
    for name in named {
        let histogram = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|base| served.contains(&(*base, "histogram")));
        let known = histogram.is_some()
            || served.iter().any(|(n, _)| *n == name)
            || (name.starts_with("toplog_raft_")
                && metrics_rs.contains(&format!("\"{}\"", &name["toplog_".len()..])));
        assert!(
            known,
            "the rules name {name}, which no node serves:\n{text}"
        );
    }
}

/// 40 users in one minute against a key budget of 16: the user cube's hour
/// and day buckets (users have no minute buckets, docs/rollups.md) each
/// keep 16 and evict 24 (down to 14 when the 17th comes, then 3 more at
/// every third), and the metric counts all 48; a top-K over the hour says
/// it is not exact.
#[test]
fn keys_evicted_past_the_budget_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_ready(&dir.path().join("node"), &["--rollup-key-budget", "16"]);
    let minute = (now_ms() - 120_000) / 60_000 * 60_000;
    let sent: Vec<Value> = (0..40)
        .map(|i| {
            json!({"request_id": format!("e{i}"), "timestamp": utc(minute + i * 1000).1,
                   "user_id": format!("user-{i:02}"), "endpoint": "GET /a",
                   "status_code": 200, "latency_ms": 3})
        })
        .collect();
    assert_eq!(post(&server, &json!(sent), None), 200);
    assert_eq!(
        toplog_tests::metric(&server.base, "toplog_rollup_evicted_keys_total"),
        48.0
    );
    let top = reqwest::Url::parse_with_params(
        &server.url("/api/v1/requests/top-k"),
        [
            ("k", "3"),
            ("metric", "frequency"),
            ("by", "user_id"),
            // The whole hour: its user bucket answers (a part of an hour
            // would be read from raw rows, exactly).
            ("start", utc(minute / 3_600_000 * 3_600_000).1.as_str()),
            (
                "end",
                utc(minute / 3_600_000 * 3_600_000 + 3_600_000).1.as_str(),
            ),
        ],
    )
    .unwrap();
    let body: Value = client().get(top).send().unwrap().json().unwrap();
    assert_eq!(body["meta"]["exact"], false, "{body}");
}
