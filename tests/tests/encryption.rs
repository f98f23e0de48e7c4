//! Encryption at rest against the real binary: with a key file, nothing a
//! user sent (endpoints, user ids, request ids) is found in plaintext anywhere
//! in the data directory or the archive (log, segments, rollups, key files,
//! manifest, Parquet archive, jobs, API keys, audit log); DuckDB reads the
//! archive with the key; a restart with a missing or wrong key stops with the
//! file and key id named; and rotation, then rekey, then removal of the old
//! key leaves every answer unchanged.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use toplog_tests::{ADMIN_KEY, Server, binary, client, get_ok, now_ms, send_all};

const K1: &str = "6b31000000000000000000000000000000000000000000000000000000000001";
const K1_WRONG: &str = "6b310000000000000000000000000000000000000000000000000000000000ff";
const K2: &str = "6b32000000000000000000000000000000000000000000000000000000000002";
/// Parts of what was sent that must never be found on disk in plaintext.
const NEEDLES: [&str; 3] = ["secret-endpoint", "needle-user", "req-needle"];

fn key_file(dir: &Path, name: &str, current: &str, keys: &[(&str, &str)]) -> PathBuf {
    let path = dir.join(name);
    let mut text = format!("current = \"{current}\"\n[keys]\n");
    for (id, hex) in keys {
        text.push_str(&format!("{id} = \"{hex}\"\n"));
    }
    std::fs::write(&path, text).unwrap();
    path
}

fn start(data: &Path, keys: &Path) -> Server {
    Server::start_ready(
        data,
        &[
            "--encryption-key-file",
            keys.to_str().unwrap(),
            "--memtable-max-age",
            "1s",
            "--raw-local-for",
            "30m",
        ],
    )
}

/// A start that must fail: its exit status and what it wrote to stderr.
fn refused_start(data: &Path, extra: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .args(extra)
        .env("TOPLOG_ADMIN_KEY", ADMIN_KEY)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "the node started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn post(server: &Server, path: &str, body: &Value) -> (u16, Value) {
    let r = client().post(server.url(path)).json(body).send().unwrap();
    (r.status().as_u16(), r.json().unwrap())
}

fn events(n: usize, t0: i64, tag: &str) -> Vec<Value> {
    (0..n)
        .map(|i| {
            json!({
                "request_id": format!("req-needle-{tag}-{i}"),
                "timestamp": t0 + i as i64 * 7,
                "user_id": format!("needle-user-{}", i % 13),
                "endpoint": format!("/secret-endpoint/{}", i % 7),
                "method": if i % 4 == 0 { "POST" } else { "GET" },
                "status_code": if i % 9 == 0 { 503 } else { 200 },
                "latency_ms": (i % 50) as f64 + 0.25,
            })
        })
        .collect()
}

/// What a user would ask: top endpoints and users over all time, slowest
/// requests, error rates, the count, and every event.
fn answers(server: &Server) -> Vec<Value> {
    let (from, _) = toplog_tests::utc(now_ms() - 86_400_000);
    let (to, _) = toplog_tests::utc(now_ms());
    let history = format!("/api/v1/requests/history?start_date={from}&end_date={to}");
    let mut out: Vec<Value> = [
        "/api/v1/requests/top-k?k=10&metric=frequency&by=endpoint&start=0",
        "/api/v1/requests/top-k?k=20&metric=latency_p99&by=user_id&start=0",
        "/api/v1/requests/top-k?k=10&metric=error_rate&by=endpoint&start=0",
        "/api/v1/requests/top-k?k=25&metric=latency_max&by=request&start=0",
        &history,
        "/api/v1/requests/count?start=0",
    ]
    .iter()
    .map(|p| {
        let mut body = get_ok(server, p);
        // Which node and sources answered may differ; the answer may not.
        if let Some(o) = body.as_object_mut() {
            o.remove("meta");
        }
        body
    })
    .collect();
    let mut all = toplog_tests::all_events(server);
    all.sort_by_key(|e| e["request_id"].as_str().unwrap_or_default().to_owned());
    out.push(Value::Array(all));
    out
}

/// Fails naming the first answer that differs.
fn assert_same(now: &[Value], then: &[Value]) {
    assert_eq!(now.len(), then.len());
    for (i, (a, b)) in now.iter().zip(then).enumerate() {
        if a != b {
            let cut = |v: &Value| v.to_string().chars().take(3000).collect::<String>();
            panic!("answer {i} differs:\nnow:  {}\nthen: {}", cut(a), cut(b));
        }
    }
}

/// Every file under `dir` holding one of the needles, with the needle.
fn plaintext_hits(dir: &Path) -> Vec<String> {
    let mut hits = Vec::new();
    for (path, bytes) in toplog_tests::files(dir) {
        for needle in NEEDLES {
            if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                hits.push(format!("{path} holds {needle}"));
            }
        }
    }
    hits
}

fn wait_archived(server: &Server, rows: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, report) = post(server, "/api/v1/admin/maintenance", &json!({}));
        assert_eq!(status, 200, "{report}");
        let s = get_ok(server, "/api/v1/storage")["data"].clone();
        if s["tiers"]["raw_archive"]["rows"] == rows {
            return;
        }
        assert!(Instant::now() < deadline, "not archived: {s}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn encryption(server: &Server) -> Value {
    get_ok(server, "/api/v1/admin/encryption")["data"].clone()
}

/// DuckDB reads every archived Parquet file with the key: the count per endpoint.
fn duckdb_counts(archive: &Path, key_hex: &str) -> Value {
    let script = r#"
import sys, json, base64, glob, duckdb
files = sorted(glob.glob(sys.argv[1] + "/raw/**/*.parquet", recursive=True))
key = base64.b64encode(bytes.fromhex(sys.argv[2])).decode()
con = duckdb.connect()
con.execute(f"PRAGMA add_parquet_key('k', '{key}')")
# DuckDB 1.5/2.0 cannot decrypt filter columns pushed into an encrypted scan.
con.execute("SET disabled_optimizers = 'filter_pushdown,top_n,join_filter_pushdown'")
rows = con.execute(
    f"select endpoint, count(*) from read_parquet({files!r}, encryption_config = {{footer_key: 'k'}}) group by 1 order by 1"
).fetchall()
print(json.dumps({e: n for e, n in rows}))
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(archive)
        .arg(key_hex)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "duckdb failed (scripts/test.sh installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Count per endpoint of `events`, as DuckDB answers it.
fn model_counts(events: &[Value]) -> Value {
    let mut counts = std::collections::BTreeMap::<String, u64>::new();
    for e in events {
        *counts
            .entry(e["endpoint"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    json!(counts)
}

fn put(server: &Server, path: &str, body: &Value) -> Value {
    let r = client().put(server.url(path)).json(body).send().unwrap();
    let status = r.status();
    let body: Value = r.json().unwrap();
    assert_eq!(status, 200, "{path}: {body}");
    body
}

#[test]
fn encrypted_at_rest_rotated_and_rekeyed_with_every_answer_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let archive = data.join("archive");
    let only_k1 = key_file(dir.path(), "k1.toml", "k1", &[("k1", K1)]);
    let server = start(&data, &only_k1);

    // Every kind of node state, each holding something the user sent.
    // Two hours old: archived as Parquet as soon as it is flushed.
    let t0 = now_ms() - 2 * 3_600_000;
    let mut sent = events(600, t0, "a");
    send_all(&server, &sent);
    put(
        &server,
        "/api/v1/retention",
        &json!({"raw": {"keep_for": "30d"}}),
    );
    let (status, job) = post(
        &server,
        "/api/v1/requests/aggregate",
        &json!({"start_time": t0, "end_time": t0 + 3_600_000, "metrics": ["frequency"], "group_by": "endpoint"}),
    );
    assert_eq!(status, 202, "{job}");
    let (status, key) = post(
        &server,
        "/api/v1/keys",
        &json!({"name": "reader", "role": "viewer"}),
    );
    assert_eq!(status, 201, "{key}");
    // Audited with its path, which holds a needle.
    let r = client()
        .delete(server.url("/api/v1/keys/req-needle"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    wait_archived(&server, sent.len());
    // And some that stays in the log and the memtables.
    let fresh = events(50, now_ms() - 60_000, "fresh");
    send_all(&server, &fresh);
    sent.extend(fresh);
    let before = answers(&server);
    assert_eq!(before[5]["count"], sent.len(), "{}", before[5]);
    let state = encryption(&server);
    assert_eq!(state["current_key"], "k1", "{state}");
    assert_eq!(state["plaintext_files"], 0, "{state}");
    let audit = get_ok(&server, "/api/v1/audit")["data"].clone();
    assert!(
        audit.to_string().contains("/api/v1/keys/req-needle"),
        "{audit}"
    );

    assert_eq!(plaintext_hits(&data), Vec::<String>::new());
    assert!(
        std::fs::read_dir(archive.join("raw"))
            .unwrap()
            .next()
            .is_some()
    );
    let archived: Vec<Value> = sent[..600].to_vec();
    assert_eq!(duckdb_counts(&archive, K1), model_counts(&archived));
    assert!(server.terminate().success());
    assert_eq!(
        plaintext_hits(&data),
        Vec::<String>::new(),
        "after the final flush"
    );

    // Without the key, with another key under its id, or without its id: no start.
    let args = |keys: &Path| -> Vec<String> {
        vec!["--encryption-key-file".into(), keys.display().to_string()]
    };
    let none = refused_start(&data, &[], &[]);
    assert!(
        none.contains("is encrypted under key `k1`, and no encryption key is configured"),
        "{none}"
    );
    let wrong = key_file(dir.path(), "wrong.toml", "k1", &[("k1", K1_WRONG)]);
    let wrong_args = args(&wrong);
    let err = refused_start(
        &data,
        &wrong_args.iter().map(String::as_str).collect::<Vec<_>>(),
        &[],
    );
    assert!(
        err.contains(&format!(
            "key `k1` from encryption key file {} does not decrypt it",
            wrong.display()
        )),
        "{err}"
    );
    assert!(
        err.contains(&data.display().to_string()),
        "names the file: {err}"
    );
    let only_k2 = key_file(dir.path(), "k2.toml", "k2", &[("k2", K2)]);
    let k2_args = args(&only_k2);
    let err = refused_start(
        &data,
        &k2_args.iter().map(String::as_str).collect::<Vec<_>>(),
        &[],
    );
    assert!(
        err.contains(&format!(
            "is encrypted under key `k1`, which encryption key file {} does not list",
            only_k2.display()
        )),
        "{err}"
    );

    // Rotation: k2 current, k1 still listed. Old data reads; new data is under k2.
    let rotated = key_file(dir.path(), "rotated.toml", "k2", &[("k1", K1), ("k2", K2)]);
    let server = start(&data, &rotated);
    assert_same(&answers(&server), &before);
    let more = events(300, t0 + 10_000, "b");
    send_all(&server, &more);
    sent.extend(more);
    wait_archived(&server, 900);
    let state = encryption(&server);
    assert_eq!(state["current_key"], "k2", "{state}");
    assert!(state["files_by_key"]["k1"].as_u64().unwrap() > 0, "{state}");
    assert!(state["files_by_key"]["k2"].as_u64().unwrap() > 0, "{state}");
    assert_eq!(state["retirable_keys"], json!([]), "{state}");
    let rotated_answers = answers(&server);

    // Rekey: everything under k2, so k1 can go.
    let (status, rekey) = post(&server, "/api/v1/admin/rekey", &json!({}));
    assert_eq!(status, 200, "{rekey}");
    let rewritten = &rekey["data"]["rewritten"];
    assert!(
        rewritten["archived_segments"].as_u64().unwrap() > 0,
        "{rekey}"
    );
    assert_eq!(rewritten["jobs"], 1, "{rekey}");
    let state = &rekey["data"]["encryption"];
    assert_eq!(
        state["files_by_key"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["k2"],
        "{rekey}"
    );
    assert_eq!(state["plaintext_files"], 0, "{rekey}");
    assert_eq!(state["retirable_keys"], json!(["k1"]), "{rekey}");
    assert_same(&answers(&server), &rotated_answers);
    assert!(server.terminate().success());

    // The old key removed: every answer as before, DuckDB reads with k2 alone.
    let server = start(&data, &only_k2);
    assert_same(&answers(&server), &rotated_answers);
    let job_id = job["aggregation_id"].as_str().unwrap();
    let job = get_ok(&server, &format!("/api/v1/requests/aggregate/{job_id}"));
    assert_eq!(job["data"]["state"], "done", "{job}");
    let audit = get_ok(&server, "/api/v1/audit")["data"].clone();
    assert!(audit.to_string().contains("/api/v1/admin/rekey"), "{audit}");
    assert_eq!(
        duckdb_counts(&archive, K2),
        model_counts(
            &sent[..600]
                .iter()
                .chain(&sent[650..])
                .cloned()
                .collect::<Vec<_>>()
        )
    );
    assert!(server.terminate().success());
    assert_eq!(plaintext_hits(&data), Vec::<String>::new());
}
