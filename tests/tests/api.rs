//! The REST API of a real node: every accepted body shape and encoding, every
//! rejection with its status code and named row/field/parameter, and proof
//! that a rejected batch writes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;

use serde_json::{Value, json};
use toplog_tests::{Server, all_events, client, now_ms};

fn event(id: &str, ts_ms: i64) -> Value {
    json!({"request_id": id, "timestamp": ts_ms, "user_id": "u1", "endpoint": "GET /items/{id}",
           "status_code": 200, "latency_ms": 12.5})
}

fn count(server: &Server, query: &str) -> u64 {
    let body: Value = client()
        .get(server.url(&format!("/api/v1/requests/count{query}")))
        .send()
        .unwrap()
        .json()
        .unwrap();
    body["count"]
        .as_u64()
        .unwrap_or_else(|| panic!("no count in {body}"))
}

fn post(
    server: &Server,
    content_type: Option<&str>,
    encoding: Option<&str>,
    body: Vec<u8>,
) -> (u16, Value) {
    let mut req = client().post(server.url("/api/v1/requests")).body(body);
    if let Some(ct) = content_type {
        req = req.header("Content-Type", ct);
    }
    if let Some(enc) = encoding {
        req = req.header("Content-Encoding", enc);
    }
    let resp = req.send().unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or(Value::Null))
}

fn get(server: &Server, path: &str) -> (u16, Value) {
    let resp = client().get(server.url(path)).send().unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or(Value::Null))
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(b).unwrap();
    gz.finish().unwrap()
}

#[test]
fn accepts_every_body_shape_and_encoding_and_reads_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_ready(dir.path(), &[]);
    let t = now_ms() - 60_000;
    let json_array = serde_json::to_vec(&vec![event("a1", t), event("a2", t + 1)]).unwrap();
    let wrapped = serde_json::to_vec(&json!({"events": [event("b1", t + 2)]})).unwrap();
    let ndjson = format!("{}\n{}\n", event("c1", t + 3), event("c2", t + 4)).into_bytes();
    let cases = [
        (Some("application/json"), None, json_array, 2),
        (Some("application/json; charset=utf-8"), None, wrapped, 1),
        (Some("application/x-ndjson"), None, ndjson.clone(), 2),
        (Some("application/x-ndjson"), Some("gzip"), gzip(&ndjson), 2),
        (
            Some("application/json"),
            Some("zstd"),
            zstd::bulk::compress(&serde_json::to_vec(&vec![event("d1", t + 5)]).unwrap(), 3)
                .unwrap(),
            1,
        ),
    ];
    for (ct, enc, body, n) in cases {
        let (status, resp) = post(&server, ct, enc, body);
        assert_eq!(status, 200, "{ct:?} {enc:?}: {resp}");
        assert_eq!(
            resp,
            json!({"status": "success", "accepted": n, "replayed": false})
        );
    }
    // The gzip case re-sent c1/c2 without a key: stored twice, as sent.
    assert_eq!(count(&server, ""), 8);
    // Concatenated gzip members (`cat a.gz b.gz`) are one body: every row counts.
    let mut two = gzip(format!("{}\n", event("e1", t + 6)).as_bytes());
    two.extend(gzip(format!("{}\n", event("e2", t + 7)).as_bytes()));
    let (status, resp) = post(&server, Some("application/x-ndjson"), Some("gzip"), two);
    assert_eq!(
        (status, resp["accepted"].clone()),
        (200, json!(2)),
        "{resp}"
    );
    assert_eq!(count(&server, ""), 10);
    let events = all_events(&server);
    let first = events.iter().find(|e| e["request_id"] == "a1").unwrap();
    assert_eq!(first["method"], "GET");
    assert_eq!(first["latency_ms"], 12.5);
    assert_eq!(first["status_code"], 200);
    assert_eq!(first["endpoint"], "GET /items/{id}");
    // Filters and the [start, end) range.
    let (s, body) = get(
        &server,
        &format!(
            "/api/v1/requests?request_id=a2&start={}&end={}",
            t + 1,
            t + 2
        ),
    );
    assert_eq!((s, body["data"].as_array().map(Vec::len)), (200, Some(1)));
    assert_eq!(
        count(&server, &format!("?start={}&end={}", t + 1, t + 2)),
        1
    );
    assert_eq!(
        count(
            &server,
            "?endpoint=GET%20/items/%7Bid%7D&status_code=200&user_id=u1"
        ),
        10
    );
    assert_eq!(count(&server, "?user_id=nobody"), 0);
    // Paging returns everything once.
    let mut ids = Vec::new();
    let mut cursor = String::new();
    loop {
        let (s, body) = get(&server, &format!("/api/v1/requests?limit=3{cursor}"));
        assert_eq!(s, 200);
        ids.extend(
            body["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["request_id"].as_str().unwrap().to_owned()),
        );
        match body["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    ids.sort();
    assert_eq!(
        ids,
        ["a1", "a2", "b1", "c1", "c1", "c2", "c2", "d1", "e1", "e2"]
    );
}

#[test]
fn idempotency_key_applies_a_retried_batch_once_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_ready(dir.path(), &[]);
    let body = serde_json::to_vec(&vec![event("k1", now_ms()), event("k2", now_ms())]).unwrap();
    let send = |server: &Server| {
        let r = client()
            .post(server.url("/api/v1/requests"))
            .header("Content-Type", "application/json")
            .header("Idempotency-Key", "batch-42")
            .body(body.clone())
            .send()
            .unwrap();
        let replayed = r.headers().get("idempotent-replayed").is_some();
        (r.status().as_u16(), replayed, r.json::<Value>().unwrap())
    };
    assert_eq!(send(&server).0, 200);
    let (status, replayed, resp) = send(&server);
    assert_eq!(
        (status, replayed, resp["accepted"].clone()),
        (200, true, json!(2))
    );
    server.kill9();
    let server = Server::start_ready(dir.path(), &[]);
    assert!(send(&server).1, "a retry after kill -9 is a replay");
    assert_eq!(count(&server, ""), 2);
    let (s, e) = {
        let r = client()
            .post(server.url("/api/v1/requests"))
            .header("Content-Type", "application/json")
            .header("Idempotency-Key", "bad key with spaces")
            .body(body.clone())
            .send()
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().unwrap())
    };
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (400, Some("invalid_header"))
    );
}

/// name, content type, content encoding, body, expected status, error code, named field.
type BadCase<'a> = (
    &'a str,
    Option<&'a str>,
    Option<&'a str>,
    Vec<u8>,
    u16,
    &'a str,
    Option<&'a str>,
);

#[test]
fn every_bad_input_gets_a_clear_error_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_ready(
        dir.path(),
        &[
            "--max-body-bytes",
            "20000",
            "--clock-skew",
            "5m",
            "--raw-keep-for",
            "30d",
        ],
    );
    let now = now_ms();
    let good = |i: usize| event(&format!("ok-{i}"), now - 1000);
    let with = |field: &str, v: Value| {
        let mut rows = vec![good(0), good(1)];
        let mut bad = good(2);
        bad[field] = v;
        rows.push(bad);
        serde_json::to_vec(&rows).unwrap()
    };
    let json_ct = Some("application/json");
    let cases: Vec<BadCase> = vec![
        (
            "malformed JSON",
            json_ct,
            None,
            b"[{\"request_id\": ".to_vec(),
            400,
            "malformed_json",
            None,
        ),
        (
            "not an array",
            json_ct,
            None,
            b"{\"rows\": []}".to_vec(),
            400,
            "invalid_body",
            None,
        ),
        (
            "unknown content type",
            Some("text/csv"),
            None,
            b"a,b".to_vec(),
            415,
            "unsupported_content_type",
            None,
        ),
        (
            "no content type",
            None,
            None,
            with("status_code", json!(200)),
            415,
            "unsupported_content_type",
            None,
        ),
        (
            "unknown encoding",
            json_ct,
            Some("br"),
            b"xx".to_vec(),
            415,
            "unsupported_encoding",
            None,
        ),
        (
            "corrupt gzip",
            json_ct,
            Some("gzip"),
            b"not gzip at all".to_vec(),
            400,
            "invalid_encoding",
            None,
        ),
        (
            "body over the limit",
            json_ct,
            None,
            vec![b' '; 30_000],
            413,
            "body_too_large",
            None,
        ),
        (
            "gzip bomb",
            json_ct,
            Some("gzip"),
            gzip(&vec![b' '; 200_000]),
            413,
            "body_too_large",
            None,
        ),
        (
            "future timestamp",
            json_ct,
            None,
            with("timestamp", json!(now + 6 * 60_000)),
            422,
            "timestamp_out_of_window",
            Some("timestamp"),
        ),
        (
            "too old",
            json_ct,
            None,
            with("timestamp", json!(now - 31 * 86_400_000)),
            422,
            "timestamp_out_of_window",
            Some("timestamp"),
        ),
        (
            "bad timestamp",
            json_ct,
            None,
            with("timestamp", json!("yesterday")),
            400,
            "invalid_event",
            Some("timestamp"),
        ),
        (
            "bad status",
            json_ct,
            None,
            with("status_code", json!(700)),
            400,
            "invalid_event",
            Some("status_code"),
        ),
        (
            "negative latency",
            json_ct,
            None,
            with("latency_ms", json!(-3)),
            400,
            "invalid_event",
            Some("latency_ms"),
        ),
        (
            "missing endpoint",
            json_ct,
            None,
            with("endpoint", Value::Null),
            400,
            "invalid_event",
            Some("endpoint"),
        ),
        (
            "long request id",
            json_ct,
            None,
            with("request_id", json!("x".repeat(200))),
            400,
            "invalid_event",
            Some("request_id"),
        ),
        (
            "unknown field",
            json_ct,
            None,
            with("lantency_ms", json!(1)),
            400,
            "invalid_event",
            Some("lantency_ms"),
        ),
    ];
    for (name, ct, enc, body, status, code, field) in cases {
        let (got, resp) = post(&server, ct, enc, body);
        assert_eq!(got, status, "{name}: {resp}");
        assert_eq!(resp["status"], "error", "{name}: {resp}");
        assert_eq!(resp["error"]["code"], code, "{name}: {resp}");
        assert!(
            !resp["error"]["message"].as_str().unwrap_or("").is_empty(),
            "{name}: no message"
        );
        if let Some(field) = field {
            assert_eq!(resp["error"]["field"], field, "{name}: {resp}");
            assert_eq!(
                resp["error"]["row"], 2,
                "{name}: the bad row is the third: {resp}"
            );
        }
    }
    // NDJSON names the row of a line that does not parse.
    let nd = format!("{}\n{{broken\n", good(0)).into_bytes();
    let (s, resp) = post(&server, Some("application/x-ndjson"), None, nd);
    assert_eq!((s, resp["error"]["row"].clone()), (400, json!(1)));
    // Nothing of any rejected batch was written, not even its good rows.
    assert_eq!(count(&server, ""), 0);

    let bad_params = [
        ("/api/v1/requests?limit=0", "limit", 400),
        ("/api/v1/requests?limit=10001", "limit", 400),
        ("/api/v1/requests?limit=ten", "limit", 400),
        ("/api/v1/requests?cursor=garbage", "cursor", 400),
        (
            "/api/v1/requests?start=2026-01-02T00:00:00Z&end=2026-01-01T00:00:00Z",
            "start",
            422,
        ),
        ("/api/v1/requests?start=last-tuesday", "start", 400),
        ("/api/v1/requests/count?status_code=99", "status_code", 400),
        ("/api/v1/requests/count?colour=blue", "colour", 400),
    ];
    for (path, param, status) in bad_params {
        let (s, resp) = get(&server, path);
        assert_eq!(s, status, "{path}: {resp}");
        assert_eq!(resp["error"]["field"], param, "{path}: {resp}");
    }
    let (s, body) = get(&server, "/api/v1/nope");
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let r = client().put(server.url("/api/v1/requests")).send().unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(
        r.json::<Value>().unwrap()["error"]["code"],
        "method_not_allowed"
    );
    // The node is still healthy after all that.
    assert_eq!(get(&server, "/readyz").0, 200);
    assert_eq!(get(&server, "/healthz").0, 200);
}

#[test]
fn config_file_and_environment_are_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("toplog.toml");
    std::fs::write(&cfg, "partition = \"1h\"\nmax_body_bytes = 1000\n").unwrap();
    let data = dir.path().join("data");
    let server = Server::start_ready(&data, &["--config", cfg.to_str().unwrap()]);
    let (s, _) = post(&server, Some("application/json"), None, vec![b' '; 2000]);
    assert_eq!(s, 413, "max_body_bytes from the config file");
    let (s, _) = post(
        &server,
        Some("application/json"),
        None,
        serde_json::to_vec(&vec![event("x", now_ms())]).unwrap(),
    );
    assert_eq!(s, 200);
    assert!(data.join("MANIFEST").exists() || data.join("wal").exists());
}

/// Each `TOPLOG_*` variable is read, checked through what it changes.
#[test]
fn every_toplog_variable_takes_effect() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = dir.path().join("elsewhere");
    let server = Server::start_with_env(
        &dir.path().join("data"),
        &[],
        &[
            ("TOPLOG_PARTITION", "1h"),
            ("TOPLOG_MAX_BODY_BYTES", "20000"),
            ("TOPLOG_CLOCK_SKEW", "1m"),
            ("TOPLOG_RAW_KEEP_FOR", "2d"),
            ("TOPLOG_RAW_LOCAL_FOR", "1d"),
            ("TOPLOG_ARCHIVE_URL", elsewhere.to_str().unwrap()),
            ("TOPLOG_MEMTABLE_MAX_AGE", "1s"),
            ("TOPLOG_ROLLUP_KEY_BUDGET", "16"),
            ("TOPLOG_MAINTENANCE_INTERVAL", "0s"),
        ],
    );
    server.wait_ready();
    let now = now_ms();
    let send = |events: Vec<Value>| {
        post(
            &server,
            Some("application/json"),
            None,
            serde_json::to_vec(&events).unwrap(),
        )
        .0
    };
    assert_eq!(
        post(&server, Some("application/json"), None, vec![b' '; 30_000]).0,
        413,
        "TOPLOG_MAX_BODY_BYTES"
    );
    assert_eq!(
        send(vec![event("ahead", now + 120_000)]),
        422,
        "TOPLOG_CLOCK_SKEW"
    );
    assert_eq!(
        send(vec![event("old", now - 3 * 86_400_000)]),
        422,
        "TOPLOG_RAW_KEEP_FOR"
    );
    // Forty users in one minute, over a budget of 16 keys, in two hours.
    let minute = (now - 600_000).div_euclid(60_000) * 60_000;
    let mut batch: Vec<Value> = (0..40)
        .map(|i| {
            let mut e = event(&format!("u{i}"), minute + i);
            e["endpoint"] = json!(format!("GET /e{i}"));
            e
        })
        .collect();
    batch.push(event("earlier", now - 5_400_000));
    assert_eq!(send(batch), 200);
    let (_, retention) = get(&server, "/api/v1/retention");
    assert_eq!(
        (
            &retention["data"]["raw"]["keep_for"],
            &retention["data"]["raw"]["local_for"]
        ),
        (&json!("2d"), &json!("1d")),
        "TOPLOG_RAW_KEEP_FOR, TOPLOG_RAW_LOCAL_FOR"
    );
    let (_, top) = get(
        &server,
        &format!(
            "/api/v1/requests/top-k?k=3&metric=frequency&by=endpoint&start={minute}&end={}",
            minute + 60_000
        ),
    );
    assert_eq!(
        top["meta"]["exact"], false,
        "TOPLOG_ROLLUP_KEY_BUDGET: {top}"
    );
    // The memtables flush on their own within seconds, into hour partitions.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let storage = loop {
        let (_, storage) = get(&server, "/api/v1/storage");
        let in_segments: u64 = storage["data"]["partitions"]
            .as_array()
            .map(|ps| ps.iter().filter_map(|p| p["rows"].as_u64()).sum())
            .unwrap_or(0);
        if storage["data"]["memtable"]["rows"] == 0 && in_segments == 41 {
            break storage;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "TOPLOG_MEMTABLE_MAX_AGE: {storage}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let data = &storage["data"];
    let parts = data["partitions"].as_array().unwrap();
    assert!(parts.len() >= 2, "{data}");
    for p in parts {
        // `YYYY-MM-DDTHH:00:00.000000Z` to the next hour.
        let hour = |k: &str| {
            let t = p[k].as_str().unwrap();
            assert!(t.ends_with(":00:00.000000Z"), "TOPLOG_PARTITION: {p}");
            t[11..13].parse::<u32>().unwrap()
        };
        assert_eq!(
            (hour("start") + 1) % 24,
            hour("end"),
            "TOPLOG_PARTITION: {p}"
        );
    }
    assert!(
        data["archive"]["location"]
            .as_str()
            .unwrap()
            .contains("elsewhere"),
        "TOPLOG_ARCHIVE_URL: {data}"
    );
    assert_eq!(
        data["maintenance"]["last"],
        Value::Null,
        "TOPLOG_MAINTENANCE_INTERVAL: {data}"
    );
}

#[test]
fn a_second_node_on_the_same_data_directory_is_refused_and_the_first_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let first = Server::start_ready(dir.path(), &[]);
    let resp = client()
        .post(first.url("/api/v1/requests"))
        .json(&vec![event("lock-1", now_ms())])
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut second = std::process::Command::new(toplog_tests::binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            second.kill().unwrap();
            panic!("a second node on the same data directory kept running");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(!status.success(), "the second node must not start");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.contains("in use by another toplog process"),
        "stderr: {stderr}"
    );
    // The first node still serves and keeps what it acknowledged, across a
    // restart after SIGTERM and one after SIGINT.
    assert_eq!(all_events(&first).len(), 1);
    let status = first.terminate();
    assert!(status.success());
    let again = Server::start_ready(dir.path(), &[]);
    assert_eq!(all_events(&again).len(), 1);
    assert!(again.interrupt().success(), "SIGINT stops the node cleanly");
    let after_interrupt = Server::start_ready(dir.path(), &[]);
    assert_eq!(all_events(&after_interrupt).len(), 1);
}

/// The node turns transparent huge pages off for itself (see
/// docs/operations.md): the kernel reports it in the process's status.
#[test]
#[cfg(target_os = "linux")]
fn a_node_runs_without_transparent_huge_pages() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_ready(dir.path(), &[]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    let thp = status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .map(str::trim);
    // Kernels before 5.0 do not report the flag; there is nothing to check then.
    if let Some(thp) = thp {
        assert_eq!(thp, "0", "{status}");
    }
}

/// Past `max_idempotency_keys`, a batch with a new key is `503 overloaded`
/// with `Retry-After` (nothing written); known keys still replay.
#[test]
fn new_idempotency_keys_past_the_limit_are_refused_not_evicted() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_ready(dir.path(), &["--max-idempotency-keys", "1"]);
    let send = |key: &str, id: &str| {
        client()
            .post(server.url("/api/v1/requests"))
            .header("Idempotency-Key", key)
            .json(&vec![event(id, now_ms())])
            .send()
            .unwrap()
    };
    assert_eq!(send("k1", "a").status(), 200);
    let refused = send("k2", "b");
    assert_eq!(refused.status(), 503);
    assert_eq!(
        refused
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("60")
    );
    let body: Value = refused.json().unwrap();
    assert_eq!(body["error"]["code"], "overloaded", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_idempotency_keys"),
        "{body}"
    );
    let replay = send("k1", "a");
    assert_eq!(replay.status(), 200);
    assert_eq!(replay.json::<Value>().unwrap()["replayed"], true);
    assert_eq!(
        all_events(&server).len(),
        1,
        "the refused batch wrote nothing"
    );
}

/// `fsync = interval` and `never` end to end: batches are acknowledged, a
/// clean stop syncs them, and a killed process loses none of them either
/// (the log's writes reach the OS before the acknowledgement; only a crash
/// of the machine can lose what was not yet synced, as the README says).
#[test]
fn interval_and_never_fsync_keep_every_acknowledged_batch_across_a_process_crash() {
    for policy in [
        &["--fsync", "interval", "--fsync-interval", "50ms"][..],
        &["--fsync", "never"],
    ] {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start_ready(dir.path(), policy);
        let now = now_ms();
        for b in 0..20 {
            let batch: Vec<Value> = (0..50)
                .map(|i| event(&format!("{b}-{i}"), now - i))
                .collect();
            let (s, body) = post(
                &server,
                Some("application/json"),
                None,
                serde_json::to_vec(&batch).unwrap(),
            );
            assert_eq!(s, 200, "{policy:?}: {body}");
        }
        server.kill9();
        let again = Server::start_ready(dir.path(), policy);
        assert_eq!(all_events(&again).len(), 1000, "{policy:?} after kill -9");
        assert!(again.terminate().success());
        let last = Server::start_ready(dir.path(), policy);
        assert_eq!(
            all_events(&last).len(),
            1000,
            "{policy:?} after a clean stop"
        );
    }
}
