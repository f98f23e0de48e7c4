//! `POST /api/v1/requests/aggregate` jobs on a real node: results equal a
//! brute-force count, a job left pending by a stop is finished after restart,
//! and every bad field is a 400 naming it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use toplog_tests::{Server, client, now_ms, send_all};

fn post(server: &Server, body: &Value) -> (u16, Value) {
    let r = client()
        .post(server.url("/api/v1/requests/aggregate"))
        .json(body)
        .send()
        .unwrap();
    (r.status().as_u16(), r.json().unwrap_or(Value::Null))
}

fn wait_done(server: &Server, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let body: Value = client()
            .get(server.url(&format!("/api/v1/requests/aggregate/{id}")))
            .send()
            .unwrap()
            .json()
            .unwrap();
        match body["data"]["state"].as_str() {
            Some("done") => return body["data"].clone(),
            Some("failed") => panic!("job failed: {body}"),
            _ => {}
        }
        assert!(Instant::now() < deadline, "job {id} not done: {body}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn aggregation_jobs_compute_exact_counts_and_survive_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_ready(dir.path(), &[]);
    // Ten minutes of traffic, aligned to the 5-minute intervals the API aligns to.
    let end = now_ms() / 300_000 * 300_000;
    let start = end - 10 * 60_000;
    let events: Vec<Value> = (0..300)
        .map(|i: i64| {
            json!({"request_id": format!("g{i}"), "timestamp": start + (i * 1_999) % (end - start),
                   "endpoint": if i % 3 == 0 { "GET /x" } else { "POST /y" },
                   "status_code": if i % 10 == 0 { 500 } else { 200 }, "latency_ms": i as f64})
        })
        .collect();
    send_all(&server, &events);
    let request = json!({"start_time": start, "end_time": end, "metrics": ["frequency", "error_rate", "latency"],
                         "interval": "5m", "group_by": "endpoint"});
    let (s, body) = post(&server, &request);
    assert_eq!(s, 202, "{body}");
    assert_eq!(body["message"], "Aggregation request submitted.");
    let id = body["aggregation_id"].as_str().unwrap().to_owned();
    let job = wait_done(&server, &id);
    let jobs = |state: &str| {
        toplog_tests::metric(
            &server.base,
            &format!("toplog_aggregation_jobs{{state=\"{state}\"}}"),
        )
    };
    assert_eq!(
        (jobs("done"), jobs("pending"), jobs("failed")),
        (1.0, 0.0, 0.0)
    );
    let mut latencies: BTreeMap<(i64, String), Vec<f64>> = BTreeMap::new();
    let mut want: BTreeMap<(i64, String), (u64, u64)> = BTreeMap::new();
    for e in &events {
        let t = e["timestamp"].as_i64().unwrap();
        let slot = want
            .entry((
                (t - start) / 300_000,
                e["endpoint"].as_str().unwrap().to_owned(),
            ))
            .or_default();
        slot.0 += 1;
        slot.1 += u64::from(e["status_code"] == 500);
        latencies
            .entry((
                (t - start) / 300_000,
                e["endpoint"].as_str().unwrap().to_owned(),
            ))
            .or_default()
            .push(e["latency_ms"].as_f64().unwrap());
    }
    let rows = job["result"].as_array().unwrap();
    assert_eq!(rows.len(), want.len(), "{job}");
    for ((slot, endpoint), (n, errors)) in &want {
        let row = rows
            .iter()
            .find(|r| {
                r["group"] == endpoint.as_str()
                    && r["start"].as_str().unwrap() == toplog_tests::utc(start + slot * 300_000).1
            })
            .unwrap_or_else(|| panic!("no row for {slot} {endpoint}: {job}"));
        assert_eq!(row["frequency"].as_u64(), Some(*n));
        // serde_json's default float parsing may be one ulp off the exact value.
        let rate = row["error_rate"].as_f64().unwrap();
        assert!((rate - *errors as f64 / *n as f64).abs() < 1e-12, "{row}");
        // The average is exact; quantiles come from a sketch with a 1%
        // relative error, around the value at the quantile's rank (bracketed
        // by the two usual rank conventions).
        let mut sorted = latencies[&(*slot, endpoint.clone())].clone();
        sorted.sort_by(f64::total_cmp);
        let avg = sorted.iter().sum::<f64>() / sorted.len() as f64;
        let got_avg = row["latency"]["avg"].as_f64().unwrap();
        assert!(
            (got_avg - avg).abs() < 1e-9 * avg.max(1.0),
            "avg {got_avg} != {avg}: {row}"
        );
        let n = sorted.len();
        for (name, q) in [("p50", 0.5), ("p95", 0.95), ("p99", 0.99)] {
            let a = (q * (n - 1) as f64).floor() as usize;
            let b = ((q * n as f64).ceil() as usize).saturating_sub(1);
            let (lo, hi) = (sorted[a.min(b)], sorted[a.max(b)]);
            let got = row["latency"][name].as_f64().unwrap();
            assert!(
                got >= lo / 1.01 - 1e-9 && got <= hi * 1.01 + 1e-9,
                "{name} {got} outside [{lo}, {hi}] +-1%: {row}"
            );
        }
    }
    let list: Value = client()
        .get(server.url("/api/v1/requests/aggregate"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(list["data"].as_array().map(Vec::len), Some(1));

    // A job the last process never ran (written while stopped) is run after the restart.
    server.kill9();
    let pending = json!({"aggregation_id": "0000-pending", "state": "pending", "submitted_at": 0, "finished_at": null,
                         "request": {"start_time": start, "end_time": end, "metrics": ["frequency"]},
                         "result": null, "error": null});
    std::fs::write(
        dir.path().join("jobs/0000-pending.json"),
        serde_json::to_vec(&pending).unwrap(),
    )
    .unwrap();
    let server = Server::start_ready(dir.path(), &[]);
    let resumed = wait_done(&server, "0000-pending");
    assert_eq!(
        resumed["result"][0]["frequency"].as_u64(),
        Some(events.len() as u64)
    );
    // The finished job and its result survived kill -9.
    assert_eq!(wait_done(&server, &id)["result"], job["result"]);
}

#[test]
fn every_bad_aggregation_field_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_ready(dir.path(), &[]);
    let ok = json!({"start_time": "2026-01-01T00:00:00Z", "end_time": "2026-01-02T00:00:00Z", "metrics": ["frequency"]});
    let with = |k: &str, v: Value| {
        let mut b = ok.clone();
        b[k] = v;
        b
    };
    let cases = [
        (with("metrics", json!([])), "metrics", 400),
        (with("metrics", json!(["popularity"])), "metrics", 400),
        (
            with("start_time", json!("2026-01-03T00:00:00Z")),
            "start_time",
            422,
        ),
        (with("end_time", json!("soon")), "end_time", 400),
        (with("interval", json!("1x")), "interval", 400),
        (with("interval", json!("1s")), "interval", 422),
        (with("group_by", json!("country")), "group_by", 400),
        (
            with("filters", json!({"status_code": 999})),
            "status_code",
            400,
        ),
        (with("filters", json!({"colour": "red"})), "colour", 400),
        (with("colour", json!("red")), "colour", 400),
    ];
    for (body, field, status) in cases {
        let (s, resp) = post(&server, &body);
        assert_eq!(s, status, "{body}: {resp}");
        assert_eq!(resp["error"]["field"], field, "{body}: {resp}");
    }
    let r = client()
        .post(server.url("/api/v1/requests/aggregate"))
        .header("Content-Type", "application/json")
        .body("{not json")
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = client()
        .get(server.url("/api/v1/requests/aggregate/nope"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
}
