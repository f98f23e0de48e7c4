//! Alert rules on a real node (issue 22, under way), on a test clock (the
//! node reads the time rules are judged by from `TOPLOG_TEST_CLOCK_FILE`):
//! a burst of 5xx on one endpoint fires a rule, shows in
//! `/api/v1/requests/alerts` in the seed's shape, survives a kill -9, and
//! resolves when the burst has left the window; history holds each
//! transition; bad rules are refused naming the field.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use toplog_tests::{Server, client, get_ok, now_ms, send_all};

const MIN_MS: i64 = 60_000;

fn set_clock(file: &std::path::Path, ms: i64) {
    std::fs::write(file, ms.to_string()).unwrap();
}

fn post(server: &Server, path: &str, body: &Value) -> (u16, Value) {
    let r = client().post(server.url(path)).json(body).send().unwrap();
    (r.status().as_u16(), r.json().unwrap_or(Value::Null))
}

/// Sets the clock to `ms` and waits until the rule has judged the minute
/// that closed by then.
fn judge_through(server: &Server, clock: &std::path::Path, rule: &str, ms: i64) {
    set_clock(clock, ms);
    let want = toplog_types::Micros::new((ms / MIN_MS * MIN_MS) * 1000).to_rfc3339();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = get_ok(server, &format!("/api/v1/alerts/rules/{rule}"))["data"]["judged_through"]
            .clone();
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "judged through {got}, want {want}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn alerts(server: &Server) -> Vec<Value> {
    get_ok(server, "/api/v1/requests/alerts")["alerts"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn a_burst_of_errors_fires_a_rule_that_survives_a_restart_and_resolves() {
    let dir = tempfile::tempdir().unwrap();
    let clock = dir.path().join("clock");
    // Half an hour ago, on a minute.
    let base = (now_ms() - 40 * MIN_MS) / MIN_MS * MIN_MS;
    set_clock(&clock, base);
    let env = [("TOPLOG_TEST_CLOCK_FILE", clock.to_str().unwrap())];
    let data = dir.path().join("data");
    let args = ["--alert-grace", "0s"];
    let server = Server::start_with_env(&data, &args, &env);
    server.wait_ready();

    // Refused, naming the field.
    for (body, field) in [
        (
            json!({"name": "x", "metric": "errors", "op": ">", "threshold": 1, "window": "90s"}),
            "window",
        ),
        (
            json!({"name": "x", "metric": "latency_p99", "by": "user_id", "op": ">", "threshold": 1}),
            "by",
        ),
        (
            json!({"name": "x", "metric": "errors", "op": ">", "threshold": 1, "description": "{nope}"}),
            "description",
        ),
    ] {
        let (status, answer) = post(&server, "/api/v1/alerts/rules", &body);
        assert_eq!(status, 422, "{answer}");
        assert_eq!(answer["error"]["field"], field, "{answer}");
    }
    // A webhook whose receiver is not up yet.
    let port = toplog_tests::free_port();
    let (status, channel) = post(
        &server,
        "/api/v1/alerts/channels",
        &json!({"name": "hook", "kind": "webhook", "url": format!("http://127.0.0.1:{port}/hook")}),
    );
    assert_eq!(status, 201, "{channel}");
    let channel = channel["data"]["id"].as_str().unwrap().to_owned();
    let (status, made) = post(
        &server,
        "/api/v1/alerts/rules",
        &json!({"name": "5xx", "metric": "error_rate", "by": "endpoint", "window": "5m",
                "op": ">", "threshold": 0.2, "for": "1m", "min_count": 10, "severity": "critical",
                "labels": {"team": "api"}, "channels": [channel],
                "description": "{key}: {value} of requests failed over {window}"}),
    );
    assert_eq!(status, 201, "{made}");
    let rule = made["data"]["id"].as_str().unwrap().to_owned();

    // Minutes 10 to 14 of GET /a fail half the time.
    let events = toplog_tests::error_burst(base);
    send_all(&server, &events);

    // A backtest of the same rule over the same minutes says what the live
    // path will do; a range past a week is refused.
    let rule_body =
        get_ok(&server, &format!("/api/v1/alerts/rules/{rule}"))["data"]["rule"].clone();
    let (status, answer) = post(
        &server,
        "/api/v1/alerts/rules/backtest",
        &json!({"rule": rule_body, "start": base.to_string(), "end": (base + 20 * MIN_MS).to_string()}),
    );
    assert_eq!(status, 200, "{answer}");
    let fired = answer["data"].as_array().unwrap();
    assert_eq!(fired.len(), 1, "{answer}");
    assert_eq!(fired[0]["key"], "GET /a");
    let minute_of = |v: &Value| {
        let at = toplog_types::Micros::parse(v.as_str().unwrap())
            .unwrap()
            .get()
            / 1000;
        (at - base) / MIN_MS
    };
    assert_eq!(minute_of(&fired[0]["started_at"]), 13, "{answer}");
    assert!(fired[0]["resolved_at"].is_string(), "{answer}");
    let (status, answer) = post(
        &server,
        "/api/v1/alerts/rules/backtest",
        &json!({"rule": rule_body, "start": "0", "end": base.to_string()}),
    );
    assert_eq!(
        (status, answer["error"]["field"].as_str()),
        (422, Some("end")),
        "{answer}"
    );

    for m in 1..=13 {
        judge_through(&server, &clock, &rule, base + m * MIN_MS + 1_000);
    }
    let firing = alerts(&server);
    assert_eq!(firing.len(), 1, "{firing:?}");
    let a = &firing[0];
    assert_eq!(
        (
            a["key"].as_str(),
            a["state"].as_str(),
            a["severity"].as_str()
        ),
        (Some("GET /a"), Some("firing"), Some("critical"))
    );
    assert!(
        a["description"].as_str().unwrap().starts_with("GET /a: 0."),
        "{a}"
    );
    assert_eq!(a["requests"]["filters"]["endpoint"], "GET /a");
    assert_eq!(a["labels"]["team"], "api");
    assert!(a["timestamp"].is_string() && a["alert_id"].is_string());

    // The firing is in the outbox, tried and not delivered (nobody listens).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let outbox = get_ok(&server, "/api/v1/alerts/notifications")["data"].clone();
        if outbox[0]["attempts"].as_u64().unwrap_or(0) >= 1 {
            assert_eq!(outbox.as_array().unwrap().len(), 1, "{outbox}");
            assert_eq!(outbox[0]["status"], "pending", "{outbox}");
            assert!(outbox[0]["last_error"].is_string(), "{outbox}");
            break;
        }
        assert!(Instant::now() < deadline, "never tried: {outbox}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Through a kill -9: the rule, its firing alert and the outbox are kept.
    server.kill9();
    let server = Server::start_with_env(&data, &args, &env);
    server.wait_ready();
    assert_eq!(alerts(&server).len(), 1);
    // The receiver comes up: the firing is delivered, with its dedupe id.
    let receiver = toplog_tests::Receiver::start(port);
    let wait_for = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(40);
        while receiver.got().len() < n {
            assert!(Instant::now() < deadline, "delivered {:?}", receiver.got());
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_for(1);
    for m in 14..=20 {
        judge_through(&server, &clock, &rule, base + m * MIN_MS + 1_000);
    }
    assert_eq!(
        alerts(&server),
        Vec::<Value>::new(),
        "resolved once the burst left the window"
    );
    wait_for(2);
    std::thread::sleep(Duration::from_secs(2));
    let got = receiver.got();
    let ids: Vec<String> = (got.iter())
        .map(|(headers, body)| {
            let header = headers
                .iter()
                .find(|(k, _)| k == "x-toplog-dedupe-id")
                .unwrap();
            assert_eq!(
                body["dedupe_id"].as_str(),
                Some(header.1.as_str()),
                "{body}"
            );
            header.1.clone()
        })
        .collect();
    let states: Vec<&str> = got
        .iter()
        .map(|(_, b)| b["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states,
        ["firing", "resolved"],
        "each notified once: {got:?}"
    );
    assert_ne!(ids[0], ids[1]);
    assert_eq!(got[0].1["key"], "GET /a");
    assert_eq!(got[0].1["severity"], "critical");
    let history = get_ok(&server, "/api/v1/alerts/history")["data"].clone();
    let states: Vec<(&str, &str)> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["key"].as_str().unwrap(), h["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        states,
        [
            ("GET /a", "pending"),
            ("GET /a", "firing"),
            ("GET /a", "resolved")
        ]
    );
}
