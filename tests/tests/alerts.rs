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

/// A clock file in `dir` set 40 minutes ago, on a minute; and that time.
fn test_clock(dir: &std::path::Path) -> (std::path::PathBuf, i64) {
    let clock = dir.join("clock");
    let base = (now_ms() - 40 * MIN_MS) / MIN_MS * MIN_MS;
    set_clock(&clock, base);
    (clock, base)
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
    let (clock, base) = test_clock(dir.path());
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
    let m = |series: &str| toplog_tests::metric(&server.base, series);
    assert_eq!(m("toplog_alerts{state=\"firing\"}"), 1.0);
    assert_eq!(m("toplog_alerts{state=\"pending\"}"), 0.0);
    let rules = get_ok(&server, "/api/v1/alerts/rules")["data"]
        .as_array()
        .map(Vec::len);
    assert_eq!(Some(m("toplog_alert_rules") as usize), rules);
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
    assert_eq!(a["requests"]["filters"]["status_class"], 5);
    // A few of the requests behind it: failures of GET /a in its window.
    let examples = a["requests"]["example_request_ids"].as_array().unwrap();
    assert_eq!(examples.len(), 3, "{a}");
    for id in examples {
        let id = id.as_str().unwrap();
        assert!(
            id.starts_with("GET /a-")
                && id.split('-').nth(2).unwrap().parse::<u32>().unwrap() % 2 == 0,
            "{id}"
        );
    }
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
    // Counted since the restart: both deliveries, and one judgement of the
    // one rule for each minute that closes.
    let m = |series: &str| toplog_tests::metric(&server.base, series);
    assert_eq!(
        m("toplog_alert_notification_attempts_total{outcome=\"sent\"}"),
        2.0
    );
    let judged = m("toplog_alert_rule_evaluations_total");
    judge_through(&server, &clock, &rule, base + 21 * MIN_MS + 1_000);
    assert_eq!(m("toplog_alert_rule_evaluations_total"), judged + 1.0);
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
    assert_eq!(got[0].1["alerts"][0]["key"], "GET /a");
    assert_eq!(got[0].1["severity"], "critical");
    let history = get_ok(&server, "/api/v1/alerts/history?kind=transition")["data"].clone();
    let states: Vec<(&str, &str)> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["key"].as_str().unwrap(), h["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        states,
        [
            ("GET /a", "resolved"),
            ("GET /a", "firing"),
            ("GET /a", "pending")
        ],
        "newest first"
    );
    // Each delivery attempt is in history with its outcome: the firing
    // failed while the receiver was down, then both were sent.
    let sent = get_ok(
        &server,
        "/api/v1/alerts/history?kind=notification&state=sent",
    )["data"]
        .clone();
    let sent: Vec<(&str, &str)> = (sent.as_array().unwrap().iter())
        .map(|h| {
            (
                h["state"].as_str().unwrap(),
                h["dedupe_id"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        sent,
        [("resolved", ids[1].as_str()), ("firing", ids[0].as_str())]
    );
    let retried = get_ok(
        &server,
        "/api/v1/alerts/history?kind=notification&state=retrying&limit=1",
    )
    .clone();
    assert_eq!(
        retried["data"][0]["dedupe_id"],
        ids[0].as_str(),
        "{retried}"
    );
    assert!(retried["data"][0]["error"].is_string(), "{retried}");
}

/// Waits until `count()` reaches `n`, showing the outbox if it does not.
fn wait_until(server: &Server, what: &str, n: usize, count: impl Fn() -> usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while count() < n {
        assert!(
            Instant::now() < deadline,
            "{what}: {} of {n}; outbox: {}",
            count(),
            get_ok(server, "/api/v1/alerts/notifications")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The bodies a receiver got other than channel tests.
fn notified(receiver: &toplog_tests::Receiver) -> Vec<toplog_tests::Received> {
    (receiver.got().into_iter())
        .filter(|(_, body)| !is_test(body))
        .collect()
}

/// Whether a webhook's, Slack's or the SMS gateway's body is a channel test.
fn is_test(body: &Value) -> bool {
    body["state"] == "test"
        || body["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("[TEST]"))
        || body.as_str().is_some_and(|b| b.contains("%5BTEST%5D"))
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
    (headers.iter())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {name} in {headers:?}"))
}

#[test]
fn every_kind_of_channel_is_notified_once_per_change_and_a_silence_stops_notifications() {
    use toplog_tests::peers::{Alertmanager, Smtp};
    use toplog_tests::{Receiver, free_port};
    let dir = tempfile::tempdir().unwrap();
    let (clock, base) = test_clock(dir.path());
    let env = [("TOPLOG_TEST_CLOCK_FILE", clock.to_str().unwrap())];
    // Channels may send only to this machine.
    let args = ["--alert-grace", "0s", "--alert-hosts", "127.0.0.1"];
    let server = Server::start_with_env(&dir.path().join("data"), &args, &env);
    let (smtp, am) = (Smtp::start(), Alertmanager::start());
    let (hook, slack, sms) = (
        Receiver::start(free_port()),
        Receiver::start(free_port()),
        Receiver::start(free_port()),
    );
    server.wait_ready();
    let make = |body: Value| -> String {
        let (status, made) = post(&server, "/api/v1/alerts/channels", &body);
        assert_eq!(status, 201, "{made}");
        made["data"]["id"].as_str().unwrap().to_owned()
    };
    let webhook = make(json!({"name": "hook", "kind": "webhook",
        "url": format!("http://127.0.0.1:{}/hook", hook.port), "secret": "s3cret"}));
    let channels = [
        webhook.clone(),
        // A heartbeat every 10 minutes, by the test clock.
        make(json!({"name": "chat", "kind": "slack", "test_every": "10m",
            "url": format!("http://127.0.0.1:{}/services/T0/B0/x", slack.port)})),
        make(
            json!({"name": "mail", "kind": "email", "host": "127.0.0.1", "port": smtp.port,
            "tls": "none", "from": "toplog@example.com", "to": ["oncall@example.com"]}),
        ),
        make(
            json!({"name": "pager", "kind": "sms", "base_url": format!("http://127.0.0.1:{}", sms.port),
            "account": "AC123", "token": "t0k3n", "from": "+15550001", "to": ["+15550002"]}),
        ),
        make(json!({"name": "am", "kind": "alertmanager", "url": am.url("")})),
    ];
    // Secrets are never shown; which are set is.
    let listed = get_ok(&server, "/api/v1/alerts/channels");
    assert!(
        !listed.to_string().contains("s3cret") && !listed.to_string().contains("t0k3n"),
        "{listed}"
    );
    let shown = (listed["data"].as_array().unwrap().iter())
        .find(|c| c["id"] == webhook.as_str())
        .unwrap();
    assert_eq!(shown["secrets"], json!(["secret"]), "{listed}");
    // A host outside alert_hosts is refused.
    let (status, answer) = post(
        &server,
        "/api/v1/alerts/channels",
        &json!({"name": "x", "kind": "slack", "url": "https://hooks.slack.com/services/T/B/X"}),
    );
    assert_eq!(
        (status, answer["error"]["field"].as_str()),
        (422, Some("url")),
        "{answer}"
    );
    // A URL with credentials in it is refused: they would be shown.
    let (status, answer) = post(
        &server,
        "/api/v1/alerts/channels",
        &json!({"name": "x", "kind": "webhook", "url": "http://user:pw@127.0.0.1:1/"}),
    );
    assert_eq!(
        (status, answer["error"]["field"].as_str()),
        (422, Some("url")),
        "{answer}"
    );
    // A test send says whether it was delivered, and the channel keeps it.
    let dead = make(json!({"name": "dead", "kind": "webhook",
        "url": format!("http://127.0.0.1:{}/", free_port())}));
    let (status, tested) = post(
        &server,
        &format!("/api/v1/alerts/channels/{dead}/test"),
        &json!({}),
    );
    assert_eq!(
        (status, &tested["data"]["delivered"]),
        (200, &json!(false)),
        "{tested}"
    );
    assert!(tested["data"]["error"].is_string(), "{tested}");
    let shown = get_ok(&server, &format!("/api/v1/alerts/channels/{dead}"));
    assert_eq!(shown["data"]["last_test"]["ok"], false, "{shown}");
    let (status, tested) = post(
        &server,
        &format!("/api/v1/alerts/channels/{webhook}/test"),
        &json!({}),
    );
    assert_eq!(
        (status, &tested["data"]["delivered"]),
        (200, &json!(true)),
        "{tested}"
    );
    assert_eq!(hook.got()[0].1["state"], "test");

    // One rule notifies every channel; another, labelled team=quiet, is
    // silenced before it fires.
    let rule = |name: &str, labels: Value, channels: &[String]| -> String {
        let (status, made) = post(
            &server,
            "/api/v1/alerts/rules",
            &json!({"name": name, "metric": "error_rate", "by": "endpoint", "window": "5m",
                    "op": ">", "threshold": 0.2, "for": "1m", "min_count": 10,
                    "severity": "critical", "labels": labels, "channels": channels,
                    "description": "{key}: {value} of requests failed"}),
        );
        assert_eq!(status, 201, "{made}");
        made["data"]["id"].as_str().unwrap().to_owned()
    };
    let loud = rule("5xx", json!({"team": "api"}), &channels);
    let quiet = rule("quiet", json!({"team": "quiet"}), &channels[..1]);
    let (status, silence) = post(
        &server,
        "/api/v1/alerts/silences",
        &json!({"matchers": [{"name": "team", "value": "quiet"}],
                "ends_at": (base + 60 * MIN_MS).to_string(), "comment": "known"}),
    );
    assert_eq!(status, 201, "{silence}");
    assert_eq!(silence["data"]["state"], "active");
    let silence = silence["data"]["id"].as_str().unwrap().to_owned();

    send_all(&server, &toplog_tests::error_burst(base));
    for m in 1..=13 {
        judge_through(&server, &clock, &loud, base + m * MIN_MS + 1_000);
        judge_through(&server, &clock, &quiet, base + m * MIN_MS + 1_000);
    }
    // The clock passed 10 minutes: the heartbeat reached Slack, and the
    // channel says so.
    wait_until(&server, "heartbeat", 1, || {
        slack.got().iter().filter(|(_, b)| is_test(b)).count()
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while get_ok(&server, &format!("/api/v1/alerts/channels/{}", channels[1]))["data"]["last_test"]
        ["ok"]
        != true
    {
        assert!(Instant::now() < deadline, "the heartbeat was not recorded");
        std::thread::sleep(Duration::from_millis(100));
    }

    let firing = alerts(&server);
    let silenced: Vec<(&str, bool)> = (firing.iter())
        .map(|a| {
            (
                a["rule"].as_str().unwrap(),
                a["silenced"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(silenced.len(), 2, "{firing:?}");
    assert!(silenced.contains(&("5xx", false)) && silenced.contains(&("quiet", true)));
    let am_alerts = |name: &str| -> Vec<Value> {
        (am.alerts().into_iter())
            .filter(|a| a["labels"]["alertname"] == name)
            .collect()
    };
    wait_until(&server, "webhook", 1, || notified(&hook).len());
    wait_until(&server, "slack", 1, || notified(&slack).len());
    wait_until(&server, "sms", 1, || notified(&sms).len());
    wait_until(&server, "email", 1, || smtp.mail().len());
    wait_until(&server, "alertmanager", 1, || am_alerts("5xx").len());
    let held = &am_alerts("5xx")[0];
    assert_eq!(held["labels"]["endpoint"], "GET /a", "{held}");
    assert_eq!(held["labels"]["team"], "api", "{held}");
    assert_eq!(held["status"]["state"], "active", "{held}");
    assert!(
        held["annotations"]["toplog_dedupe_id"].is_string(),
        "{held}"
    );

    for m in 14..=20 {
        judge_through(&server, &clock, &loud, base + m * MIN_MS + 1_000);
        judge_through(&server, &clock, &quiet, base + m * MIN_MS + 1_000);
    }
    wait_until(&server, "webhook resolution", 2, || notified(&hook).len());
    wait_until(&server, "slack resolution", 2, || notified(&slack).len());
    wait_until(&server, "sms resolution", 2, || notified(&sms).len());
    wait_until(&server, "email resolution", 2, || smtp.mail().len());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !am_alerts("5xx").is_empty() {
        assert!(Instant::now() < deadline, "still active in Alertmanager");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));

    // Each channel got the firing and the resolution once, nothing of the
    // silenced rule, each with its dedupe id.
    let got = notified(&hook);
    let states: Vec<(&str, &str)> = (got.iter())
        .map(|(_, b)| (b["rule"].as_str().unwrap(), b["state"].as_str().unwrap()))
        .collect();
    assert_eq!(states, [("5xx", "firing"), ("5xx", "resolved")], "{got:?}");
    for (headers, body) in &got {
        assert_eq!(header(headers, "x-toplog-dedupe-id"), body["dedupe_id"]);
        // The signature is the HMAC-SHA256 of the body as sent.
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, b"s3cret");
        let tag = aws_lc_rs::hmac::sign(&key, &serde_json::to_vec(body).unwrap());
        let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            header(headers, "x-toplog-signature"),
            format!("sha256={hex}")
        );
    }
    let texts: Vec<String> = (notified(&slack).iter())
        .map(|(_, b)| b["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(texts.len(), 2);
    assert!(
        texts[0].starts_with("[FIRING] 5xx (critical): GET /a\n- GET /a: 0."),
        "{texts:?}"
    );
    assert!(
        texts[1].starts_with("[RESOLVED] 5xx (critical): GET /a"),
        "{texts:?}"
    );
    let mail = smtp.mail();
    assert_eq!(mail.len(), 2, "{mail:?}");
    assert_eq!(
        mail[0].header("subject"),
        Some("[FIRING] 5xx (critical): GET /a")
    );
    assert_eq!(mail[0].header("to"), Some("oncall@example.com"));
    let id = mail[0].header("x-toplog-dedupe-id").unwrap();
    assert_eq!(
        mail[0].header("message-id"),
        Some(format!("<{id}@toplog>").as_str())
    );
    assert!(mail[1].body.contains("GET /a"), "{mail:?}");
    for (headers, body) in notified(&sms) {
        assert_eq!(header(&headers, "authorization"), "Basic QUMxMjM6dDBrM24=");
        assert!(header(&headers, "x-toplog-dedupe-id").len() == 32);
        let form = body.as_str().unwrap();
        assert!(
            form.contains("To=%2B15550002") && form.contains("From=%2B15550001"),
            "{form}"
        );
    }
    // The silenced rule's transitions are kept, marked with the silence.
    let history = get_ok(
        &server,
        &format!("/api/v1/alerts/history?rule={quiet}&kind=transition"),
    );
    let marks: Vec<(&str, Option<&str>)> = (history["data"].as_array().unwrap().iter())
        .map(|h| (h["state"].as_str().unwrap(), h["silenced_by"].as_str()))
        .collect();
    assert_eq!(
        marks,
        [
            ("resolved", Some(silence.as_str())),
            ("firing", Some(silence.as_str())),
            ("pending", None)
        ],
        "{history}"
    );
    // Every delivery is in history: 5 channels, firing and resolved, sent.
    let sent = get_ok(
        &server,
        &format!("/api/v1/alerts/history?rule={loud}&kind=notification&state=sent"),
    );
    assert_eq!(sent["data"].as_array().unwrap().len(), 10, "{sent}");
    // A page of one, then the next.
    let page = get_ok(
        &server,
        &format!("/api/v1/alerts/history?rule={loud}&kind=notification&limit=4"),
    );
    assert_eq!(page["next_offset"], 4, "{page}");
    let (status, _) = post(
        &server,
        &format!("/api/v1/alerts/silences/{silence}"),
        &json!({}),
    );
    assert_eq!(status, 405);
    let r = client()
        .delete(server.url(&format!("/api/v1/alerts/silences/{silence}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        get_ok(&server, "/api/v1/alerts/silences")["data"],
        json!([])
    );
    // A channel a rule sends to cannot be removed; a rule using it (both
    // do) is named.
    let r = client()
        .delete(server.url(&format!("/api/v1/alerts/channels/{webhook}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), 422);
    let answer: Value = r.json().unwrap();
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&loud) || message.contains(&quiet),
        "{answer}"
    );
}
