//! The whole retention lifecycle against a real S3-compatible server
//! (`moto_server`, which scripts/test.sh installs), with durations of seconds:
//! ingest, tier to the archive, purge, restart. Every step's row counts and
//! query answers are checked against a brute-force model, DuckDB reads the
//! archived Parquet files, and the store is cut off in the middle of an upload
//! by a proxy in front of it: nothing is lost, ingest goes on, and tiering
//! resumes once the store is back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use toplog_tests::moto::Moto;
use toplog_tests::{Server, binary, client, count_rows, get_ok, now_ms, send_all};

const BUCKET: &str = "toplog-lifecycle";
/// Bytes of a request a cut proxy lets through: the headers and part of a body.
const CUT_AFTER: usize = 1024;

/// A TCP proxy in front of the store. Cut, it forwards at most 1 KiB of each
/// request body on and then drops the connection: the store is gone in the
/// middle of an upload.
struct Proxy {
    port: u16,
    cut: Arc<AtomicBool>,
    /// Down, it drops every connection at once.
    down: Arc<AtomicBool>,
}

impl Proxy {
    fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let down = Arc::new(AtomicBool::new(false));
        let (flag, is_down) = (cut.clone(), down.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(down) = conn else { continue };
                if is_down.load(Ordering::SeqCst) {
                    drop(down);
                    continue;
                }
                let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let (d2, u2) = (down.try_clone().unwrap(), up.try_clone().unwrap());
                let flag = flag.clone();
                std::thread::spawn(move || pump(down, up, Some(flag)));
                std::thread::spawn(move || pump(u2, d2, None));
            }
        });
        Self { port, cut, down }
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, cut: Option<Arc<AtomicBool>>) {
    let mut buf = [0u8; 8192];
    let mut sent_while_cut = 0usize;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let is_cut = cut.as_ref().is_some_and(|c| c.load(Ordering::SeqCst));
        let n = if is_cut {
            n.min(CUT_AFTER - sent_while_cut)
        } else {
            n
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        if is_cut {
            sent_while_cut += n;
            if sent_while_cut >= CUT_AFTER {
                let _ = from.shutdown(Shutdown::Both);
                let _ = to.shutdown(Shutdown::Both);
                return;
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Downloads the objects with boto3 (as any S3 client would) and counts rows
/// per endpoint with DuckDB. Arguments: endpoint, bucket, work folder, keys.
const DUCKDB_READS_THE_ARCHIVE: &str = r#"
import sys, json, os, boto3, duckdb
endpoint, bucket, work, keys = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id="test", aws_secret_access_key="test")
files = []
for i, key in enumerate(keys):
    path = os.path.join(work, f"archived{i}.parquet")
    s3.download_file(bucket, key, path)
    files.append(path)
rows = duckdb.sql(f"select endpoint, count(*) from read_parquet({files!r}) group by 1").fetchall()
print(json.dumps({r[0]: r[1] for r in rows}))
"#;

fn event(i: usize, ts: i64) -> Value {
    let endpoints = [
        "GET /a",
        "GET /b/{id}",
        "POST /c",
        "DELETE /d/{id}",
        "GET /e",
    ];
    json!({
        "request_id": format!("r{i:05}"),
        "timestamp": ts,
        "user_id": format!("u{}", i % 13),
        // Skewed, so the top endpoints are clear.
        "endpoint": endpoints[(i * i + i / 3) % 7 % 5],
        "status_code": if i.is_multiple_of(9) { 500 } else { 200 },
        // Unique latencies: no ties among the slowest.
        "latency_ms": (i * 7919 % 10_007) as f64 + 0.25,
    })
}

/// `n` events evenly spread over `[from, from + 10 s)`.
fn group(first: usize, n: usize, from: i64) -> Vec<Value> {
    (0..n)
        .map(|k| event(first + k, from + (k as i64) * 10_000 / n as i64))
        .collect()
}

fn maintenance(server: &Server) -> Value {
    let r = client()
        .post(server.url("/api/v1/admin/maintenance"))
        .timeout(Duration::from_secs(120))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json::<Value>().unwrap()["data"].clone()
}

/// Waits until all `rows` are in segments (local or archived).
fn wait_flushed(server: &Server, rows: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = storage(server);
        let stored = s["tiers"]["raw_local"]["rows"].as_u64().unwrap()
            + s["tiers"]["raw_archive"]["rows"].as_u64().unwrap();
        if stored == rows as u64 {
            return;
        }
        assert!(Instant::now() < deadline, "memtables not flushed: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ts(e: &Value) -> i64 {
    e["timestamp"].as_i64().unwrap()
}

/// Checks the node's answers against the model: the events it should still hold.
fn check_answers(server: &Server, model: &[Value], rollup_from: i64, step: &str) {
    let count = get_ok(server, "/api/v1/requests/count?start=0")["count"].clone();
    assert_eq!(count, model.len(), "{step}: count of everything");

    // Raw scan with filters.
    let want = model
        .iter()
        .filter(|e| e["endpoint"] == "GET /a" && e["status_code"] == 500)
        .count();
    let got = get_ok(
        server,
        "/api/v1/requests/count?start=0&endpoint=GET%20/a&status_code=500",
    );
    assert_eq!(got["count"], want, "{step}: filtered count");

    // The 10 slowest requests: raw rows, from local segments and the archive.
    let mut slow: Vec<&Value> = model.iter().collect();
    slow.sort_by(|a, b| {
        b["latency_ms"]
            .as_f64()
            .unwrap()
            .total_cmp(&a["latency_ms"].as_f64().unwrap())
    });
    let want: Vec<&Value> = slow.iter().take(10).map(|e| &e["request_id"]).collect();
    let body = get_ok(
        server,
        "/api/v1/requests/top-k?k=10&metric=latency_max&by=request&start=0",
    );
    let got: Vec<&Value> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["request_id"])
        .collect();
    assert_eq!(got, want, "{step}: slowest requests");

    // Top endpoints by frequency from a minute boundary on: the rollups.
    let want = ranked_endpoints(model.iter().filter(|e| ts(e) >= rollup_from));
    let body = get_ok(
        server,
        &format!("/api/v1/requests/top-k?k=5&metric=frequency&by=endpoint&start={rollup_from}"),
    );
    let got = count_rows(&body);
    assert_eq!(got, want, "{step}: top endpoints from {rollup_from}");
}

/// The model's endpoints by request count, best first (ties by name).
fn ranked_endpoints<'a>(events: impl Iterator<Item = &'a Value>) -> Vec<(String, u64)> {
    let mut by_endpoint: BTreeMap<String, u64> = BTreeMap::new();
    for e in events {
        *by_endpoint
            .entry(e["endpoint"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let mut ranked: Vec<(String, u64)> = by_endpoint.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    ranked
}

fn storage(server: &Server) -> Value {
    get_ok(server, "/api/v1/storage")["data"].clone()
}

#[test]
fn lifecycle_on_s3_ingest_tier_purge_with_the_store_failing_mid_upload() {
    let moto = Moto::start();
    moto.create_bucket(BUCKET);
    let proxy = Proxy::start(moto.port);

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("toplog.toml");
    std::fs::write(
        &config,
        format!(
            "partition = \"1m\"\nmemtable_max_age = \"1s\"\nmaintenance_interval = \"0s\"\n\
             [retention.raw]\nlocal_for = \"60s\"\nkeep_for = \"240s\"\n\
             [retention.rollups]\nminute_keep_for = \"240s\"\n{}",
            Moto::archive_toml(BUCKET, proxy.port)
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let args = ["--config", config.to_str().unwrap()];
    let server = Server::start_ready(&data, &args);

    let policy = get_ok(&server, "/api/v1/retention")["data"].clone();
    assert_eq!(policy["raw"], json!({"local_for": "1m", "keep_for": "4m"}));

    // Four groups of 100 events, 10 s each; the oldest group is 70 s clear of
    // the next, so one moment of the purge cutoff falls between them.
    let t0 = now_ms();
    let a = group(0, 100, t0 - 200_000);
    let b = group(100, 100, t0 - 120_000);
    let c = group(200, 100, t0 - 40_000);
    let d = group(300, 100, t0 - 10_000);
    let mut model: Vec<Value> = [a.clone(), b, c, d].concat();
    send_all(&server, &model);
    wait_flushed(&server, model.len());
    // A minute boundary after group B, before group C.
    let rollup_from = (t0 - 100_000).div_euclid(60_000) * 60_000 + 60_000;
    check_answers(&server, &model, rollup_from, "after ingest");

    // The store goes away in the middle of the first upload.
    proxy.cut.store(true, Ordering::SeqCst);
    let failing = {
        let base = server.base.clone();
        std::thread::spawn(move || {
            client()
                .post(format!("{base}/api/v1/admin/maintenance"))
                .timeout(Duration::from_secs(120))
                .send()
                .unwrap()
                .json::<Value>()
                .unwrap()
        })
    };
    // Ingest does not wait for the archive.
    let e = group(400, 20, t0 - 20_000);
    send_all(&server, &e);
    model.extend(e);
    let report = failing.join().unwrap()["data"].clone();
    assert_eq!(report["archived"], json!([]), "{report}");
    let errors = report["errors"].as_array().unwrap();
    assert!(
        errors
            .iter()
            .any(|e| e.as_str().unwrap().starts_with("archiving")),
        "{report}"
    );
    wait_flushed(&server, model.len());
    let s = storage(&server);
    assert_eq!(s["archive"]["status"], "failing", "{s}");
    assert_eq!(s["tiers"]["raw_archive"]["segments"], 0);
    assert_eq!(s["tiers"]["raw_local"]["rows"], model.len());
    check_answers(&server, &model, rollup_from, "after the failed upload");

    // The store is back: tiering resumes.
    proxy.cut.store(false, Ordering::SeqCst);
    let report = maintenance(&server);
    assert_eq!(report["errors"], json!([]), "{report}");
    let archived = report["archived"].as_array().unwrap();
    assert!(!archived.is_empty(), "nothing archived: {report}");
    let s = storage(&server);
    assert_eq!(s["archive"]["status"], "ok");
    let archived_rows: u64 = archived.iter().map(|a| a["rows"].as_u64().unwrap()).sum();
    assert_eq!(s["tiers"]["raw_archive"]["rows"], archived_rows);
    assert_eq!(
        s["tiers"]["raw_local"]["rows"].as_u64().unwrap() + archived_rows,
        model.len() as u64
    );
    let keys = moto.keys(BUCKET);
    for seg in archived {
        let key = format!("toplog/{}", seg["object"].as_str().unwrap());
        assert!(key.contains("/raw/day="), "{key}");
        assert!(keys.contains(&key), "{key} not in the bucket: {keys:?}");
    }
    assert!(
        keys.iter()
            .any(|k| k.starts_with("toplog/rollups/rollup_1m-")),
        "no rollup copies in the bucket: {keys:?}"
    );
    check_answers(&server, &model, rollup_from, "after tiering");

    // With the store down, a read that needs archived rows says so (503);
    // ingest and reads of local data go on. (Restarted, so no archived
    // segment is in the decoded cache.)
    proxy.down.store(true, Ordering::SeqCst);
    assert!(server.terminate().success());
    let server = Server::start_ready(&data, &args);
    let r = client()
        .get(server.url(&format!(
            "/api/v1/requests/top-k?k=3&metric=latency_max&by=request&start={}",
            t0 - 200_000 + 1
        )))
        .send()
        .unwrap();
    assert_eq!(r.status(), 503, "a read of the unreachable archive");
    let body: Value = r.json().unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("archive object"),
        "{body}"
    );
    let late = group(500, 10, t0 - 5_000);
    send_all(&server, &late);
    model.extend(late);
    let recent = get_ok(
        &server,
        &format!("/api/v1/requests/count?start={}", t0 - 15_000),
    );
    let want = model.iter().filter(|e| ts(e) >= t0 - 15_000).count();
    assert_eq!(recent["count"], want);
    proxy.down.store(false, Ordering::SeqCst);
    wait_flushed(&server, model.len());
    check_answers(&server, &model, rollup_from, "with the store back");

    // DuckDB reads the archived files: same rows, same counts per endpoint.
    let keys: Vec<String> = archived
        .iter()
        .map(|seg| format!("toplog/{}", seg["object"].as_str().unwrap()))
        .collect();
    let out = Command::new("python3")
        .args(["-c", DUCKDB_READS_THE_ARCHIVE, &moto.url(""), BUCKET])
        .arg(dir.path())
        .args(&keys)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "duckdb failed (scripts/test.sh installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: BTreeMap<String, u64> = serde_json::from_slice(&out.stdout).unwrap();
    let parts: BTreeSet<String> = archived
        .iter()
        .map(|s| s["min_ts"].as_str().unwrap()[..16].to_owned())
        .collect();
    let in_archive = |e: &Value| {
        let (_, time) = toplog_tests::utc(ts(e));
        parts.contains(&time[..16])
    };
    let want: BTreeMap<String, u64> = ranked_endpoints(model.iter().filter(|e| in_archive(e)))
        .into_iter()
        .collect();
    assert_eq!(got, want, "DuckDB's per-endpoint counts of the archive");
    assert_eq!(got.values().sum::<u64>(), archived_rows);
    // ...and toplog's own counts over the same minutes agree.
    let minutes: BTreeSet<i64> = model
        .iter()
        .filter(|e| in_archive(e))
        .map(|e| ts(e).div_euclid(60_000) * 60_000)
        .collect();
    for (endpoint, n) in &want {
        let mut total = 0;
        for m in &minutes {
            let path = format!(
                "/api/v1/requests/count?start={m}&end={}&endpoint={}",
                m + 60_000,
                endpoint.replace(' ', "%20")
            );
            total += get_ok(&server, &path)["count"].as_u64().unwrap();
        }
        assert_eq!(
            total, *n,
            "toplog's count of {endpoint} in the archived minutes"
        );
    }

    // Retention: bad keys are named; a change is persisted.
    let r = client()
        .put(server.url("/api/v1/retention"))
        .json(&json!({"raw": {"keep_for": "soon"}}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().unwrap()["error"]["field"], "raw.keep_for");
    let r = client()
        .put(server.url("/api/v1/retention"))
        .json(&json!({"rollups": {"day_keep_for": "400d"}}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);

    // Purge: wait until the raw cutoff (now - 240 s) lies between groups A and B.
    let purge_at = t0 + 75_000;
    let wait = purge_at - now_ms();
    assert!(
        wait > 0,
        "the steps above took too long for the timeline ({}ms late)",
        -wait
    );
    std::thread::sleep(Duration::from_millis(wait as u64));
    let report = maintenance(&server);
    assert_eq!(report["errors"], json!([]), "{report}");
    let purged = report["purged_segments"].as_array().unwrap();
    let purged_rows: u64 = purged.iter().map(|p| p["rows"].as_u64().unwrap()).sum();
    assert_eq!(
        purged_rows,
        a.len() as u64,
        "exactly group A's segments go: {report}"
    );
    let keys = moto.keys(BUCKET);
    for p in purged {
        if let Some(obj) = p["object"].as_str() {
            assert!(
                !keys.contains(&format!("toplog/{obj}")),
                "{obj} still in the bucket"
            );
        }
    }
    let cutoff = t0 - 200_000 + 10_000;
    model.retain(|e| ts(e) >= cutoff);
    check_answers(&server, &model, rollup_from, "after the purge");
    // A range reaching past retention is answered from where the data is
    // complete, and says so: exact from that instant.
    let body = get_ok(
        &server,
        &format!(
            "/api/v1/requests/top-k?k=5&metric=frequency&by=endpoint&start={}",
            t0 - 300_000
        ),
    );
    let from = body["meta"]["retained_from"]
        .as_str()
        .unwrap_or_else(|| panic!("no retained_from: {body}"))
        .to_owned();
    let want = ranked_endpoints(model.iter().filter(|e| toplog_tests::utc(ts(e)).1 >= from));
    assert_eq!(count_rows(&body), want, "top endpoints from {from}");
    // A time series over the same range says the same.
    let body = get_ok(
        &server,
        &format!(
            "/api/v1/requests/timeseries?metric=frequency&interval=1m&start={}",
            t0 - 300_000
        ),
    );
    let series_from = body["meta"]["retained_from"].as_str().unwrap_or_default();
    assert!(series_from >= from.as_str(), "{body}");
    let points: u64 = body["data"][0]["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["count"].as_u64().unwrap())
        .sum();
    let kept = model
        .iter()
        .filter(|e| toplog_tests::utc(ts(e)).1.as_str() >= series_from)
        .count() as u64;
    assert!(
        points >= kept,
        "the series holds {points} requests, {kept} after {series_from}"
    );

    // A restart reads the archive back and keeps the changed policy.
    assert!(server.terminate().success());
    let server = Server::start_ready(&data, &args);
    let policy = get_ok(&server, "/api/v1/retention")["data"].clone();
    assert_eq!(policy["rollups"]["day_keep_for"], "400d");
    check_answers(&server, &model, rollup_from, "after a restart");

    // A shorter raw retention hides older rows at once, before any purge,
    // and ingest turns away events older than it.
    let r = client()
        .put(server.url("/api/v1/retention"))
        .json(&json!({"raw": {"keep_for": "30s", "local_for": "30s"}}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    // Exactly the rows at or after the cutoff at the moment of the read,
    // which lies between the two instants around it.
    let earliest_cutoff = now_ms() - 30_000;
    let count = get_ok(&server, "/api/v1/requests/count?start=0")["count"]
        .as_u64()
        .unwrap();
    let latest_cutoff = now_ms() - 30_000;
    let kept = |cutoff: i64| model.iter().filter(|e| ts(e) >= cutoff).count() as u64;
    assert!(
        (kept(latest_cutoff)..=kept(earliest_cutoff)).contains(&count),
        "{count} rows visible, {}..={} under the new policy",
        kept(latest_cutoff),
        kept(earliest_cutoff)
    );
    let old = [event(9_999, now_ms() - 60_000)];
    let r = client()
        .post(server.url("/api/v1/requests"))
        .json(&old)
        .send()
        .unwrap();
    assert_eq!(r.status(), 422, "an event older than raw.keep_for");
    assert_eq!(
        r.json::<Value>().unwrap()["error"]["code"],
        "timestamp_out_of_window"
    );

    // One archive, one owner: the prefix names this node, and a second node
    // pointed at it refuses to start and touches nothing.
    let keys = moto.keys(BUCKET);
    assert!(keys.contains("toplog/OWNER"), "no owner marker: {keys:?}");
    let node_id = storage(&server)["archive"]["node_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let stderr = refused_start(&dir.path().join("other-node"), &args);
    assert!(
        stderr.contains(&format!("belongs to node {node_id}"))
            && stderr.contains("s3://toplog-lifecycle/toplog"),
        "{stderr}"
    );
    assert_eq!(
        moto.keys(BUCKET),
        keys,
        "the refused node changed the bucket"
    );
}

/// Starts `toplog serve` on `data` with `args`, expecting it to refuse:
/// exit non-zero within 30 s. Returns what it wrote to stderr.
fn refused_start(data: &Path, args: &[&str]) -> String {
    let mut child = Command::new(binary())
        .env("TOPLOG_ADMIN_KEY", toplog_tests::ADMIN_KEY)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .args(args)
        .env("TOPLOG_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "a second node on the same archive did not refuse to start: {}",
                reader.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = reader.join().unwrap();
    assert_eq!(status.code(), Some(1), "{text}");
    text
}

#[test]
fn a_second_node_on_the_same_archive_refuses_to_start_and_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("shared-archive");
    let url = format!("file://{}", archive.display());
    let common = [
        "--partition",
        "1m",
        "--memtable-max-age",
        "1s",
        "--raw-local-for",
        "30s",
        "--archive-url",
        &url,
    ];
    let a_args = [&common[..], &["--maintenance-interval", "0s"]].concat();
    let a_data = dir.path().join("a");
    let a = Server::start_ready(&a_data, &a_args);
    let events = group(0, 200, now_ms() - 120_000);
    send_all(&a, &events);
    wait_flushed(&a, events.len());
    let report = maintenance(&a);
    assert_eq!(report["errors"], json!([]), "{report}");
    assert!(
        !report["archived"].as_array().unwrap().is_empty(),
        "{report}"
    );

    // The node's id is kept in its data directory and named by the marker.
    let s = storage(&a);
    let a_id = s["archive"]["node_id"].as_str().unwrap().to_owned();
    assert_eq!(s["archive"]["owned"], true, "{s}");
    let node_file: Value =
        serde_json::from_slice(&std::fs::read(a_data.join("NODE_ID")).unwrap()).unwrap();
    assert_eq!(node_file, json!({"version": 1, "node_id": a_id}));
    let marker: Value =
        serde_json::from_slice(&std::fs::read(archive.join("OWNER")).unwrap()).unwrap();
    assert_eq!(marker["owner"], a_id.as_str(), "{marker}");
    assert_eq!(marker["kind"], "node");
    // An orphan of A's (an upload a crash cut short): only A's sweep may take it.
    let orphan = "raw/day=2000-01-01/0000000000009999.parquet";
    std::fs::create_dir_all(archive.join("raw/day=2000-01-01")).unwrap();
    std::fs::write(archive.join(orphan), b"left by a crash").unwrap();
    let before = toplog_tests::files(&archive);
    assert!(
        before.keys().filter(|k| k.ends_with(".parquet")).count() > 1,
        "{:?}",
        before.keys()
    );

    // B: its own data directory, the same archive, maintenance every second.
    let b_data = dir.path().join("b");
    let b_args = [&common[..], &["--maintenance-interval", "1s"]].concat();
    let stderr = refused_start(&b_data, &b_args);
    let b_file: Value =
        serde_json::from_slice(&std::fs::read(b_data.join("NODE_ID")).unwrap()).unwrap();
    let b_id = b_file["node_id"].as_str().unwrap();
    assert_ne!(b_id, a_id);
    for part in [
        format!("belongs to node {a_id}"),
        format!("not to this node ({b_id})"),
        archive.display().to_string(),
        "OWNER".to_owned(),
    ] {
        assert!(stderr.contains(&part), "`{part}` not in stderr: {stderr}");
    }
    assert_eq!(
        toplog_tests::files(&archive),
        before,
        "B changed A's archive"
    );

    // A goes on as before, and its own sweep takes its orphan.
    let report = maintenance(&a);
    assert_eq!(report["errors"], json!([]), "{report}");
    assert_eq!(report["swept_objects"], json!([orphan]), "{report}");
    let count = get_ok(&a, "/api/v1/requests/count?start=0")["count"].clone();
    assert_eq!(count, events.len());

    // Restarted on its data directory, A is still the owner.
    assert!(a.terminate().success());
    let a = Server::start_ready(&a_data, &a_args);
    let s = storage(&a);
    assert_eq!(s["archive"]["node_id"], a_id.as_str());
    let report = maintenance(&a);
    assert_eq!(report["errors"], json!([]), "{report}");
    assert_eq!(storage(&a)["archive"]["owned"], true);
    let count = get_ok(&a, "/api/v1/requests/count?start=0")["count"].clone();
    assert_eq!(
        count,
        events.len(),
        "archived rows read back after a restart"
    );

    // Handed over on purpose: with A stopped and the marker deleted, B starts
    // and owns the archive.
    assert!(a.terminate().success());
    std::fs::remove_file(archive.join("OWNER")).unwrap();
    let b = Server::start_ready(&b_data, &b_args);
    let deadline = Instant::now() + Duration::from_secs(30);
    while storage(&b)["archive"]["owned"] != true {
        assert!(Instant::now() < deadline, "B did not claim the archive");
        std::thread::sleep(Duration::from_millis(100));
    }
    let marker: Value =
        serde_json::from_slice(&std::fs::read(archive.join("OWNER")).unwrap()).unwrap();
    assert_eq!(marker["owner"], b_id, "{marker}");
    let stderr = refused_start(&a_data, &a_args);
    assert!(
        stderr.contains(&format!("belongs to node {b_id}")),
        "{stderr}"
    );
}

#[test]
fn the_scheduler_tiers_to_the_default_folder_archive_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start_ready(
        &data,
        &[
            "--partition",
            "1m",
            "--memtable-max-age",
            "1s",
            "--maintenance-interval",
            "1s",
            "--raw-local-for",
            "30s",
        ],
    );
    // Two minutes ago: past raw.local_for as soon as it is flushed.
    let t0 = now_ms();
    let events = group(0, 200, t0 - 120_000);
    send_all(&server, &events);
    let deadline = Instant::now() + Duration::from_secs(60);
    let s = loop {
        let s = storage(&server);
        if s["tiers"]["raw_archive"]["rows"] == events.len() {
            break s;
        }
        assert!(Instant::now() < deadline, "not tiered by the schedule: {s}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(s["tiers"]["raw_local"]["rows"], 0);
    assert_eq!(s["archive"]["status"], "ok");
    assert_eq!(
        s["archive"]["location"],
        data.join("archive").display().to_string()
    );
    for seg in s["segments"].as_array().unwrap() {
        let object = data.join("archive").join(seg["object"].as_str().unwrap());
        assert!(object.exists(), "{}", object.display());
    }
    assert!(!s["maintenance"]["last"].is_null(), "no pass recorded: {s}");
    let count = get_ok(&server, "/api/v1/requests/count?start=0")["count"].clone();
    assert_eq!(count, events.len());
}
