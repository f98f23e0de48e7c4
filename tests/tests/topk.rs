//! `GET /api/v1/requests/top-k` on a real node: answers equal a brute-force
//! count of what was sent, survive `kill -9`, and every bad parameter is a 400
//! naming it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use serde_json::{Value, json};
use toplog_tests::{Server, client, count_rows, now_ms, send_all, utc};

fn get(server: &Server, path: &str) -> (u16, Value) {
    let resp = client().get(server.url(path)).send().unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or(Value::Null))
}

#[test]
fn top_k_answers_match_what_was_sent_and_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_ready(dir.path(), &["--partition", "1h"]);
    let now = now_ms();
    let endpoints = ["GET /a", "GET /b", "POST /c", "PUT /d"];
    let mut events = Vec::new();
    for i in 0..400usize {
        events.push(json!({
            "request_id": format!("t{i}"),
            // Spread over the last 50 minutes: minute buckets plus raw edges.
            "timestamp": now - (i as i64 * 7_919) % 3_000_000,
            "user_id": format!("user{}", i % 7),
            "endpoint": endpoints[(i * i + i / 3) % 4],
            "status_code": if i % 9 == 0 { 503 } else { 200 },
            "latency_ms": (i % 50) as f64 + 0.5,
        }));
    }
    send_all(&server, &events);
    let mut freq: HashMap<String, u64> = HashMap::new();
    let mut errors: HashMap<String, u64> = HashMap::new();
    for e in &events {
        *freq
            .entry(e["endpoint"].as_str().unwrap().to_owned())
            .or_default() += 1;
        if e["status_code"] == 503 {
            *errors
                .entry(e["endpoint"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
    }
    let mut want: Vec<(String, u64)> = freq.clone().into_iter().collect();
    want.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let ask = |server: &Server| {
        let (s, body) = get(server, "/api/v1/requests/top-k?k=3&metric=frequency");
        assert_eq!(s, 200, "{body}");
        assert_eq!(body["meta"]["exact"], true);
        count_rows(&body)
    };
    assert_eq!(ask(&server), want[..3].to_vec());
    // Errors by endpoint: every endpoint, most errors first, ties by key,
    // each with its request count, exactly as the model has them.
    let (s, body) = get(
        &server,
        "/api/v1/requests/top-k?k=10&metric=errors&by=endpoint",
    );
    assert_eq!(s, 200, "{body}");
    let mut want_errors: Vec<(String, u64, u64)> = freq
        .iter()
        .map(|(k, n)| (k.clone(), errors.get(k).copied().unwrap_or(0), *n))
        .collect();
    want_errors.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let got_errors: Vec<(String, u64, u64)> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            (
                row["request_id"].as_str().unwrap().to_owned(),
                row["metric_value"].as_f64().unwrap() as u64,
                row["count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got_errors, want_errors, "{body}");
    // p99 by user among users with at least 10 requests: each row's value
    // within 1% of the model's nearest-rank p99 and its bounds holding it,
    // its exact count, largest first, and no user left out whose p99 is
    // surely above a row's.
    let (s, body) = get(
        &server,
        "/api/v1/requests/top-k?k=2&metric=latency_p99&by=user_id&min_count=10",
    );
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["meta"]["exact"], false);
    let rows = body["data"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{body}");
    let mut user_latencies: HashMap<String, Vec<f64>> = HashMap::new();
    for e in &events {
        user_latencies
            .entry(e["user_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(e["latency_ms"].as_f64().unwrap());
    }
    let p99: HashMap<&str, f64> = user_latencies
        .iter()
        .map(|(u, l)| {
            let mut l = l.clone();
            l.sort_by(f64::total_cmp);
            let rank = (0.99 * l.len() as f64 - 1e-9).ceil() as usize;
            (u.as_str(), l[rank.max(1) - 1])
        })
        .collect();
    for row in rows {
        let (lo, hi) = (
            row["lower"].as_f64().unwrap(),
            row["upper"].as_f64().unwrap(),
        );
        let value = row["metric_value"].as_f64().unwrap();
        let user = row["request_id"].as_str().unwrap();
        let truth = p99[user];
        assert!(lo <= value && value <= hi, "{row}");
        assert!(lo <= truth && truth <= hi, "{row}: true p99 {truth}");
        assert!(
            (value - truth).abs() <= truth * 0.01,
            "{row}: true p99 {truth}"
        );
        assert_eq!(
            row["count"].as_u64(),
            Some(user_latencies[user].len() as u64),
            "{row}"
        );
    }
    assert!(
        rows[0]["metric_value"].as_f64() >= rows[1]["metric_value"].as_f64(),
        "largest first: {body}"
    );
    let listed: Vec<&str> = rows
        .iter()
        .map(|r| r["request_id"].as_str().unwrap())
        .collect();
    let last_upper = rows[1]["upper"].as_f64().unwrap();
    for (user, truth) in &p99 {
        assert!(
            listed.contains(user) || *truth <= last_upper * 1.01,
            "{user} (true p99 {truth}) left out of {body}"
        );
    }
    // The slowest requests: ties on latency by request id, each row whole.
    let (s, body) = get(
        &server,
        "/api/v1/requests/top-k?k=3&metric=latency_max&by=request",
    );
    assert_eq!(s, 200, "{body}");
    let mut slowest: Vec<(f64, String)> = events
        .iter()
        .map(|e| {
            (
                e["latency_ms"].as_f64().unwrap(),
                e["request_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    slowest.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    let got: Vec<(f64, String, u64)> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["metric_value"].as_f64().unwrap(),
                r["request_id"].as_str().unwrap().to_owned(),
                r["count"].as_u64().unwrap(),
            )
        })
        .collect();
    let want_slowest: Vec<(f64, String, u64)> = slowest[..3]
        .iter()
        .map(|(l, id)| (*l, id.clone(), 1))
        .collect();
    assert_eq!(got, want_slowest, "{body}");
    // Today's history row against the model: requests, mean latency and
    // error rate exactly, p99 within 1%.
    let today = toplog_tests::utc(now_ms()).0;
    let (s, body) = get(
        &server,
        &format!("/api/v1/requests/history?start_date={today}&end_date={today}"),
    );
    assert_eq!(s, 200, "{body}");
    let midnight = now.div_euclid(86_400_000) * 86_400_000;
    let mut in_today: Vec<(f64, bool)> = events
        .iter()
        .filter(|e| e["timestamp"].as_i64().unwrap() >= midnight)
        .map(|e| (e["latency_ms"].as_f64().unwrap(), e["status_code"] == 503))
        .collect();
    let day = &body["data"][0];
    assert_eq!(
        day["total_requests"].as_u64(),
        Some(in_today.len() as u64),
        "{body}"
    );
    let n = in_today.len() as f64;
    let mean = in_today.iter().map(|(l, _)| l).sum::<f64>() / n;
    let errors = in_today.iter().filter(|(_, e)| *e).count() as f64 / n;
    assert!(
        (day["average_latency"].as_f64().unwrap() - mean).abs() < 1e-9,
        "{body}: mean {mean}"
    );
    assert!(
        (day["error_rate"].as_f64().unwrap() - errors).abs() < 1e-12,
        "{body}: {errors}"
    );
    in_today.sort_by(|a, b| a.0.total_cmp(&b.0));
    let rank = (0.99 * n - 1e-9).ceil() as usize;
    let truth = in_today[rank.max(1) - 1].0;
    let got = day["p99_latency"].as_f64().unwrap();
    assert!(
        (got - truth).abs() <= truth * 0.01,
        "{body}: true p99 {truth}"
    );
    // The CLI asks the same node and prints the same ranking.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(toplog_tests::binary())
            .env("TOPLOG_API_KEY", toplog_tests::ADMIN_KEY)
            .args(args)
            .args(["--server", &server.base])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let table = cli(&[
        "top",
        "--k",
        "3",
        "--metric",
        "frequency",
        "--by",
        "endpoint",
        "--since",
        "1h",
    ]);
    let first_row = table
        .lines()
        .nth(2)
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert_eq!(
        first_row,
        format!("1 {} {} {}", want[0].0, want[0].1, want[0].1),
        "{table}"
    );
    let json: Value = serde_json::from_str(&cli(&["top", "--k", "3", "--json"])).unwrap();
    assert_eq!(json["data"][0]["request_id"], want[0].0.as_str());
    let history = cli(&["history", "--days", "2"]);
    assert_eq!(
        history.lines().count(),
        4,
        "header, rule and two days: {history}"
    );
    server.kill9();
    let server = Server::start_ready(dir.path(), &["--partition", "1h"]);
    assert_eq!(ask(&server), want[..3].to_vec(), "rollups after kill -9");
}

/// With a small key budget, top users come with bounds that hold the true
/// counts, the answer says it is not exact, and totals stay exact.
#[test]
fn over_budget_users_are_ranked_with_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_ready(dir.path(), &["--rollup-key-budget", "16"]);
    // One whole past hour, so the user cube's hour bucket answers (not raw rows).
    let hour = now_ms() / 3_600_000 * 3_600_000 - 2 * 3_600_000;
    let mut truth: HashMap<String, u64> = HashMap::new();
    let events: Vec<Value> = (0..1200usize)
        .map(|i| {
            // user0 in a third of the requests, user1 in a sixth, 300 others share the rest.
            let user = match i % 6 {
                0 | 1 => "user0".to_owned(),
                2 => "user1".to_owned(),
                _ => format!("user{}", 2 + (i * 7) % 300),
            };
            *truth.entry(user.clone()).or_default() += 1;
            json!({
                "request_id": format!("b{i}"),
                "timestamp": hour + (i as i64 * 2_999) % 3_600_000,
                "user_id": user,
                "endpoint": "GET /a",
                "status_code": 200,
                "latency_ms": 1.0,
            })
        })
        .collect();
    send_all(&server, &events);
    let (start, end) = (utc(hour).1, utc(hour + 3_600_000).1);
    let range = format!("start={start}&end={end}");
    let (s, body) = get(
        &server,
        &format!("/api/v1/requests/top-k?k=5&metric=frequency&by=user_id&{range}"),
    );
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["meta"]["exact"], false, "{body}");
    assert!(body["meta"]["unlisted_max_count"].as_u64().unwrap() > 0);
    let rows = body["data"].as_array().unwrap();
    assert_eq!(rows[0]["request_id"], "user0", "{body}");
    assert_eq!(rows[1]["request_id"], "user1", "{body}");
    for row in rows {
        let t = truth[row["request_id"].as_str().unwrap()] as f64;
        // A row without bounds is a key its buckets never missed: exact.
        let lo = row["lower"]
            .as_f64()
            .unwrap_or(row["count"].as_f64().unwrap());
        let hi = row["upper"].as_f64().unwrap_or(lo);
        assert!(lo <= t && t <= hi, "{row}: true count {t}");
        assert!(row["count"].as_f64().unwrap() <= t);
    }
    // The total over every user is still exact: evicted requests are kept in aggregate.
    let (s, body) = get(
        &server,
        &format!("/api/v1/requests/timeseries?metric=frequency&interval=1h&user_id=user0&{range}"),
    );
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["data"][0]["points"][0]["value"], 400.0, "{body}");
    let (s, body) = get(
        &server,
        &format!("/api/v1/requests/timeseries?metric=frequency&interval=1h&{range}"),
    );
    assert_eq!(s, 200, "{body}");
    let total: f64 = body["data"][0]["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["value"].as_f64().unwrap())
        .sum();
    assert_eq!(total, 1200.0, "{body}");
}

#[test]
fn every_bad_top_k_parameter_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_ready(dir.path(), &[]);
    let cases = [
        ("metric=frequency", "k", 400),
        ("k=0&metric=frequency", "k", 400),
        ("k=10001&metric=frequency", "k", 400),
        ("k=ten&metric=frequency", "k", 400),
        ("k=5", "metric", 400),
        ("k=5&metric=popularity", "metric", 400),
        ("k=5&metric=frequency&by=country", "by", 400),
        ("k=5&metric=frequency&order=sideways", "order", 400),
        ("k=5&metric=frequency&by=request", "metric", 422),
        (
            "k=5&metric=frequency&start=2026-01-02T00:00:00Z&end=2026-01-01T00:00:00Z",
            "start",
            422,
        ),
        ("k=5&metric=frequency&start=tuesday", "start", 400),
        ("k=5&metric=frequency&min_count=-1", "min_count", 400),
        ("k=5&metric=frequency&status_class=7", "status_class", 400),
        ("k=5&metric=frequency&colour=red", "colour", 400),
    ];
    // 400: a value the OpenAPI document does not allow; 422: allowed values
    // that do not make a question together (a reversed range) or ask too much.
    for (query, param, status) in cases {
        let (s, body) = get(&server, &format!("/api/v1/requests/top-k?{query}"));
        assert_eq!(s, status, "{query}: {body}");
        assert_eq!(body["error"]["field"], param, "{query}: {body}");
    }
    let (s, body) = get(&server, "/api/v1/requests/top-k?k=5&metric=frequency");
    assert_eq!((s, body["data"].as_array().map(Vec::len)), (200, Some(0)));

    let series = [
        ("interval=1m", "metric", 400),
        ("metric=frequency&interval=often", "interval", 400),
        (
            "metric=frequency&interval=1s&start=2026-01-01T00:00:00Z&end=2026-01-02T00:00:00Z",
            "interval",
            422,
        ),
        ("metric=frequency&by=colour", "by", 400),
        ("metric=frequency&by=endpoint&limit=0", "limit", 400),
    ];
    for (query, param, status) in series {
        let (s, body) = get(&server, &format!("/api/v1/requests/timeseries?{query}"));
        assert_eq!(s, status, "{query}: {body}");
        assert_eq!(body["error"]["field"], param, "{query}: {body}");
    }
    let (s, body) = get(
        &server,
        "/api/v1/requests/timeseries?metric=frequency&interval=10m",
    );
    assert_eq!(s, 200, "{body}");
    let points = body["data"][0]["points"].as_array().unwrap();
    assert!(
        (6..=7).contains(&points.len()),
        "an hour in 10-minute points: {body}"
    );

    let history = [
        ("end_date=2026-01-01", "start_date", 400),
        ("start_date=2026-01-01", "end_date", 400),
        (
            "start_date=2026-13-01&end_date=2026-12-31",
            "start_date",
            400,
        ),
        ("start_date=2026-01-02&end_date=2026-01-01", "end_date", 422),
        ("start_date=2025-01-01&end_date=2026-01-02", "end_date", 422),
    ];
    for (query, param, status) in history {
        let (s, body) = get(&server, &format!("/api/v1/requests/history?{query}"));
        assert_eq!(s, status, "{query}: {body}");
        assert_eq!(body["error"]["field"], param, "{query}: {body}");
    }
    // Days past the rollups' retention are empty rows (the bucket lookup once
    // panicked on the reversed range the retention cut made).
    let (s, body) = get(
        &server,
        "/api/v1/requests/history?start_date=2000-01-01&end_date=2000-01-01",
    );
    assert_eq!(
        (s, body["data"][0]["total_requests"].as_u64()),
        (200, Some(0)),
        "{body}"
    );
    // Nothing is stored before 1970: those days have no rows.
    let (s, body) = get(
        &server,
        "/api/v1/requests/history?start_date=1969-12-01&end_date=1970-01-02",
    );
    assert_eq!(
        (s, body["data"].as_array().map(Vec::len)),
        (200, Some(2)),
        "{body}"
    );
    assert_eq!(body["data"][0]["date"], "1970-01-01", "{body}");
    let (s, body) = get(
        &server,
        "/api/v1/requests/history?start_date=2025-01-01&end_date=2026-01-01",
    );
    assert_eq!((s, body["data"].as_array().map(Vec::len)), (200, Some(366)));
    assert_eq!(
        body["data"][0],
        json!({"date": "2025-01-01", "total_requests": 0, "average_latency": null, "error_rate": null, "p99_latency": null})
    );
}

/// A top-K that no cube covers (users filtered by method) aggregates raw
/// rows into groups charged to the read's memory (`query_memory_bytes`, here
/// 1 MiB; a group is a few hundred bytes): under it the answer is exact, past
/// it `422 query_too_large` naming the budget, never a partial answer.
#[test]
fn raw_groups_past_the_memory_budget_are_query_too_large() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_ready(dir.path(), &["--query-memory-bytes", "1048576"]);
    let now = now_ms();
    let users = |n: usize, method: &str| -> Vec<Value> {
        (0..n)
            .map(|i| {
                json!({
                    "request_id": format!("{method}{i}"),
                    "timestamp": now - 60_000 - i as i64,
                    "user_id": format!("user{i}"),
                    "endpoint": format!("{method} /items"),
                    "status_code": 200,
                    "latency_ms": 1.0 + i as f64,
                })
            })
            .collect()
    };
    send_all(&server, &users(1_000, "GET"));
    send_all(&server, &users(8_000, "POST"));
    let top = |method: &str| {
        get(
            &server,
            &format!(
                "/api/v1/requests/top-k?k=200&metric=frequency&by=user_id&method={method}&start={}",
                now - 600_000
            ),
        )
    };
    let (s, body) = top("GET");
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["data"].as_array().map(Vec::len), Some(200), "{body}");
    assert_eq!(body["meta"]["exact"], true, "{body}");
    let (s, body) = top("POST");
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (422, Some("query_too_large")),
        "{body}"
    );
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("query_memory_bytes"), "{body}");
}
