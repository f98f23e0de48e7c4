//! Backups end to end, with the real binary: `toplog backup` while a writer
//! keeps sending, into a real S3-compatible server (moto); `toplog backup
//! verify`; `toplog restore` into a new directory and a node started on it,
//! which must hold exactly the batches up to the backup's log index and
//! answer as the original did. A damaged backup is named by verify and
//! refused by restore; encrypted files stay encrypted; the node's own
//! schedule keeps `keep` backups.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use toplog_tests::moto::Moto;
use toplog_tests::{ADMIN_KEY, Server, all_events, binary, client, get_ok, metric, now_ms};

const SERVER_ARGS: [&str; 6] = [
    "--partition",
    "1h",
    "--memtable-max-bytes",
    "200000",
    "--memtable-max-age",
    "1s",
];

/// Batch `n` (from 1): 40 events, ids `b<n>-<i>`, over the last 3 hours.
fn batch(n: u64) -> Vec<Value> {
    let now = now_ms();
    (0..40u64)
        .map(|i| {
            let k = n * 40 + i;
            json!({
                "request_id": format!("b{n}-{i}"),
                "timestamp": now - ((k * 7_919_993) % 10_800_000) as i64,
                "endpoint": format!("GET /api/items/{}", k % 17),
                "user_id": format!("user-{}", k % 97),
                "status_code": ([200, 200, 201, 404, 503])[(k % 5) as usize],
                "latency_ms": (k % 1000) as f64 / 3.0,
            })
        })
        .collect()
}

fn send(server: &Server, n: u64) -> Value {
    let r = client()
        .post(server.url("/api/v1/requests"))
        .header("Idempotency-Key", format!("batch-{n}"))
        .json(&batch(n))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "batch {n}");
    r.json().unwrap()
}

/// `toplog <args>`, which must succeed: its stdout.
fn toplog(args: &[&str]) -> String {
    let out = Command::new(binary()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "toplog {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `POST /api/v1/admin/backups` with `body`: the status and the answer.
fn post_backup(server: &Server, body: &Value) -> (u16, Value) {
    let r = client()
        .post(server.url("/api/v1/admin/backups"))
        .json(body)
        .send()
        .unwrap();
    (r.status().as_u16(), r.json().unwrap())
}

/// `toplog backup` of `server` with `extra` arguments: what it took.
fn cli_backup(server: &Server, extra: &[&str]) -> Value {
    let mut args = vec![
        "backup",
        "--server",
        &server.base,
        "--api-key",
        ADMIN_KEY,
        "--json",
    ];
    args.extend(extra);
    let out: Value = serde_json::from_str(&toplog(&args)).unwrap();
    out["data"].clone()
}

/// `toplog <args>`, which must fail: its stderr.
fn toplog_fails(args: &[&str]) -> String {
    let out = Command::new(binary()).args(args).output().unwrap();
    assert!(
        !out.status.success(),
        "toplog {args:?} succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}

fn backup_toml(url: &str, moto_port: Option<u16>) -> String {
    let mut t = format!("[backup]\nurl = \"{url}\"\n");
    if let Some(port) = moto_port {
        t += &format!(
            "endpoint = \"http://127.0.0.1:{port}\"\nregion = \"us-east-1\"\naccess_key_id = \"test\"\n\
             secret_access_key = \"test\"\nallow_http = true\n"
        );
    }
    t
}

/// moto with bucket `bucket`, and a config file in `dir` whose `[backup]`
/// is `s3://<bucket>/node` there: (moto, the URL, the config's path).
fn s3_location(dir: &Path, bucket: &str) -> (Moto, String, String) {
    let moto = Moto::start();
    moto.create_bucket(bucket);
    let config = dir.join("toplog.toml");
    let url = format!("s3://{bucket}/node");
    std::fs::write(&config, backup_toml(&url, Some(moto.port))).unwrap();
    (moto, url, config.to_str().unwrap().to_owned())
}

/// Backup `id`'s manifest, read from moto's bucket `bucket`.
fn s3_manifest(moto: &Moto, bucket: &str, id: &Value) -> Value {
    let key = format!("/{bucket}/node/backups/{}.manifest", id.as_str().unwrap());
    manifest_json(
        &client()
            .get(moto.url(&key))
            .send()
            .unwrap()
            .bytes()
            .unwrap(),
    )
}

/// A manifest's JSON (after its checksum line).
fn manifest_json(bytes: &[u8]) -> Value {
    let text = std::str::from_utf8(bytes).unwrap();
    let (header, json) = text.split_once('\n').unwrap();
    assert!(header.starts_with("toplog-backup sha256:"), "{header}");
    serde_json::from_str(json).unwrap()
}

/// What the answers a dashboard asks for are, without timings.
fn answers(server: &Server) -> BTreeMap<String, Value> {
    let (start, end) = (now_ms() - 4 * 3_600_000, now_ms() + 60_000);
    let mut out = BTreeMap::new();
    for q in [
        "top-k?k=10&metric=frequency&by=endpoint".to_owned(),
        "top-k?k=10&metric=errors&by=user_id".to_owned(),
        "top-k?k=5&metric=latency_p99&by=endpoint".to_owned(),
        "top-k?k=5&metric=latency_max&by=request".to_owned(),
        "timeseries?metric=frequency&interval=10m".to_owned(),
        "timeseries?metric=error_rate&interval=1h&by=endpoint&limit=3".to_owned(),
        "count?status_code=503".to_owned(),
    ] {
        let sep = if q.contains('?') { '&' } else { '?' };
        let body = get_ok(
            server,
            &format!("/api/v1/requests/{q}{sep}start={start}&end={end}"),
        );
        let mut body = body.as_object().unwrap().clone();
        body.remove("meta");
        out.insert(q, Value::Object(body));
    }
    out
}

#[test]
fn a_backup_under_ingest_restores_the_batches_up_to_its_index_and_answers_as_the_original() {
    let dir = tempfile::tempdir().unwrap();
    let (moto, url, cfg) = s3_location(dir.path(), "backups");
    let (url, cfg) = (url.as_str(), cfg.as_str());
    let mut args = SERVER_ARGS.to_vec();
    args.extend(["--config", cfg]);
    let server = Arc::new(Server::start_ready(&dir.path().join("data"), &args));

    // One writer, one batch at a time: batch n is log entry n.
    let acked = Arc::new(Mutex::new(0u64));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (server, acked, stop) = (server.clone(), acked.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                send(&server, n);
                *acked.lock().unwrap() = n;
            }
        })
    };
    while *acked.lock().unwrap() < 30 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let acked_before = *acked.lock().unwrap();
    let first = cli_backup(&server, &["--to", url]);
    let first = &first;
    let acked_after = *acked.lock().unwrap();
    // Let ingest run on past the backup, then stop it.
    while *acked.lock().unwrap() < acked_after + 20 {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let sent = *acked.lock().unwrap();
    let index = first["index"].as_u64().unwrap();
    assert!(
        (acked_before..=acked_after).contains(&index),
        "index {index}: batches {acked_before} were acknowledged before the backup began, {acked_after} when it ended"
    );
    // Into an empty location every byte is copied (files that share their
    // bytes, such as two empty logs, once).
    assert!(first["copied_bytes"].as_u64().unwrap() > 0, "{first}");
    assert_eq!(first["copied_bytes"], first["bytes"], "{first}");
    assert_eq!(
        metric(&server.base, "toplog_backups_total{outcome=\"done\"}"),
        1.0
    );
    assert_eq!(
        metric(&server.base, "toplog_backup_last_index"),
        index as f64
    );

    // Ingest stopped: a backup, and another with nothing changed between.
    let take = || -> Value {
        let (status, answer) = post_backup(&server, &json!({}));
        assert_eq!(status, 200, "{answer}");
        answer["data"].clone()
    };
    let second = take();
    let third = take();
    assert_eq!(second["index"], sent, "{second}");
    assert_eq!(third["index"], sent, "{third}");
    let (m2, m3) = (
        s3_manifest(&moto, "backups", &second["id"]),
        s3_manifest(&moto, "backups", &third["id"]),
    );
    assert_eq!(m3["index"], sent);
    let segments = |m: &Value| -> BTreeMap<String, Value> {
        (m["files"].as_object().unwrap().iter())
            .filter(|(p, _)| p.starts_with("segments/"))
            .map(|(p, f)| (p.clone(), f.clone()))
            .collect()
    };
    assert!(!segments(&m2).is_empty());
    assert_eq!(segments(&m2), segments(&m3));
    // The only change between them is the audit line of the second backup.
    let changed: Vec<&String> = (m3["files"].as_object().unwrap().iter())
        .filter(|(p, f)| m2["files"].get(p.as_str()) != Some(*f))
        .map(|(p, _)| p)
        .collect();
    assert_eq!(changed, ["audit.log"]);
    assert_eq!(third["copied_files"], 1, "{third}");
    assert_eq!(third["copied_bytes"], m3["files"]["audit.log"]["bytes"]);

    // Bad input is refused, naming the field; nothing is taken.
    for (body, field) in [
        (json!({"to": 5}), "to"),
        (json!({"to": "/etc"}), "to"),
        (json!({"to": "s3://"}), "to"),
        (json!({"where": url}), "where"),
        (json!([url]), "body"),
    ] {
        let (status, answer) = post_backup(&server, &body);
        assert_eq!(status, 400, "{body}");
        assert_eq!(answer["error"]["field"], field, "{body}");
    }
    assert_eq!(
        metric(&server.base, "toplog_backups_total{outcome=\"done\"}"),
        3.0
    );
    // A location that cannot be reached is a 502 that says so, and counted.
    let (status, answer) = post_backup(&server, &json!({"to": "s3://no-such-bucket/x"}));
    assert_eq!(status, 502, "{answer}");
    assert_eq!(answer["error"]["code"], "backup_failed");
    assert_eq!(
        metric(&server.base, "toplog_backups_total{outcome=\"failed\"}"),
        1.0
    );

    let verified = toplog(&["backup", "verify", url, "--config", cfg]);
    assert!(
        verified.contains("3 backup(s)") && verified.contains("all match"),
        "{verified}"
    );

    // The backup taken under ingest: exactly batches 1..=index, whole.
    let restored_dir = dir.path().join("restored");
    let out = toplog(&[
        "restore",
        "--from",
        url,
        "--id",
        first["id"].as_str().unwrap(),
        "--data-dir",
        restored_dir.to_str().unwrap(),
        "--config",
        cfg,
    ]);
    assert!(out.contains(&format!("log index {index}")), "{out}");
    assert!(
        !restored_dir.join("admin.key").exists(),
        "the first admin key in plain text is not backed up"
    );
    let restored = Server::start_ready(&restored_dir, &SERVER_ARGS);
    let mut held: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for e in all_events(&restored) {
        let id = e["request_id"].as_str().unwrap();
        let n: u64 = id[1..id.find('-').unwrap()].parse().unwrap();
        assert!(
            held.entry(n).or_default().insert(id.to_owned()),
            "{id} twice"
        );
    }
    assert_eq!(
        held.keys().copied().collect::<Vec<_>>(),
        (1..=index).collect::<Vec<_>>(),
        "the restored node holds batches other than 1..={index}"
    );
    assert!(held.values().all(|ids| ids.len() == 40), "a batch in part");
    assert_eq!(
        metric(&restored.base, "toplog_log_applied_index"),
        index as f64
    );
    // Its idempotency keys came too: a batch it holds is not applied again;
    // one after the backup is new to it.
    assert_eq!(send(&restored, 1)["replayed"], true);
    assert_eq!(send(&restored, index + 1)["replayed"], false);
    assert_eq!(
        get_ok(&restored, "/api/v1/requests/count")["count"],
        (index + 1) * 40
    );
    drop(restored);

    // The backup taken at rest answers exactly as the original does.
    let at_rest = dir.path().join("at-rest");
    toplog(&[
        "restore",
        "--from",
        url,
        "--id",
        second["id"].as_str().unwrap(),
        "--data-dir",
        at_rest.to_str().unwrap(),
        "--config",
        cfg,
    ]);
    let copy = Server::start_ready(&at_rest, &SERVER_ARGS);
    assert_eq!(get_ok(&copy, "/api/v1/requests/count")["count"], sent * 40);
    assert_eq!(answers(&copy), answers(&server));
    // The same API keys (as hashes; when each was last used moves on) and
    // retention policy.
    let keys = |s: &Server| {
        let mut keys = get_ok(s, "/api/v1/keys")["data"].clone();
        for k in keys.as_array_mut().unwrap() {
            k.as_object_mut().unwrap().remove("last_used_at");
        }
        keys
    };
    assert_eq!(keys(&copy), keys(&server));
    assert_eq!(
        get_ok(&copy, "/api/v1/retention"),
        get_ok(&server, "/api/v1/retention")
    );
}

/// Starts a node on `data_dir` without keys, which must refuse to start
/// within 60 s: what it wrote to stderr.
fn refused_start(data_dir: &Path) -> String {
    let mut child = Command::new(binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("a node without the backup's key started");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Flips one byte of `path`.
fn damage(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x20;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn an_encrypted_backup_stays_encrypted_and_a_damaged_one_is_named_and_refused() {
    let dir = tempfile::tempdir().unwrap();
    let location = dir.path().join("backups");
    let config = dir.path().join("toplog.toml");
    std::fs::write(&config, backup_toml(location.to_str().unwrap(), None)).unwrap();
    let key = format!("k-2026:{}", "3c".repeat(32));
    let env = [("TOPLOG_ENCRYPTION_KEY", key.as_str())];
    let mut args = SERVER_ARGS.to_vec();
    args.extend(["--config", config.to_str().unwrap()]);
    let server = Server::start_with_env(&dir.path().join("data"), &args, &env);
    server.wait_ready();
    for n in 1..=20 {
        send(&server, n);
    }
    let loc = location.to_str().unwrap();
    let out = toplog(&["backup", "--server", &server.base, "--api-key", ADMIN_KEY]);
    assert!(out.contains("a restore needs the keys k-2026"), "{out}");
    let id = toplog_tests::files(&location.join("backups"))
        .into_keys()
        .next()
        .unwrap()
        .trim_end_matches(".manifest")
        .to_owned();
    let m = manifest_json(&std::fs::read(location.join(format!("backups/{id}.manifest"))).unwrap());
    assert_eq!(m["key_ids"], json!(["k-2026"]));
    // Every stored event file is still sealed: no endpoint name in the clear.
    let (segment, entry) = (m["files"].as_object().unwrap().iter())
        .find(|(p, _)| p.starts_with("segments/"))
        .unwrap();
    let object = location.join(format!("objects/{}", entry["sha256"].as_str().unwrap()));
    let bytes = std::fs::read(&object).unwrap();
    assert!(
        !bytes.windows(13).any(|w| w == b"GET /api/item"),
        "{segment} holds plaintext"
    );

    // A restored copy needs the key to start, and answers with it.
    let copy_dir = dir.path().join("copy");
    toplog(&[
        "restore",
        "--from",
        loc,
        "--data-dir",
        copy_dir.to_str().unwrap(),
    ]);
    let refused = refused_start(&copy_dir);
    assert!(refused.contains("k-2026"), "{refused}");
    let copy = Server::start_with_env(&copy_dir, &SERVER_ARGS, &env);
    copy.wait_ready();
    assert_eq!(answers(&copy), answers(&server));
    drop(copy);

    // One damaged segment: verify names it, restore refuses and writes nothing.
    damage(&object);
    let err = toplog_fails(&["backup", "verify", loc]);
    assert!(
        err.contains(&format!("backup {id}: {segment}")) && err.contains("checksum mismatch"),
        "{err}"
    );
    let target = dir.path().join("refused");
    let err = toplog_fails(&[
        "restore",
        "--from",
        loc,
        "--data-dir",
        target.to_str().unwrap(),
    ]);
    assert!(
        err.contains(segment.as_str()) && err.contains("nothing restored"),
        "{err}"
    );
    assert!(!target.exists());
    assert_eq!(
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains("restoring")
            })
            .count(),
        0,
        "a partial restore was left behind"
    );
    // A missing object is named too.
    std::fs::remove_file(&object).unwrap();
    let err = toplog_fails(&["backup", "verify", loc]);
    assert!(
        err.contains(&format!("{segment} (objects/")) && err.contains("missing"),
        "{err}"
    );
    // The next backup puts the missing object back.
    toplog(&["backup", "--server", &server.base, "--api-key", ADMIN_KEY]);
    toplog(&["backup", "verify", loc]);
    // A damaged manifest is named, and refused.
    let manifest = location.join(format!("backups/{id}.manifest"));
    damage(&manifest);
    let err = toplog_fails(&["backup", "verify", loc, "--id", &id]);
    assert!(
        err.contains(&format!("backup {id}: the manifest is damaged")),
        "{err}"
    );
    let err = toplog_fails(&[
        "restore",
        "--from",
        loc,
        "--id",
        &id,
        "--data-dir",
        target.to_str().unwrap(),
    ]);
    assert!(err.contains("the manifest is damaged"), "{err}");
    assert!(!target.exists());
    // A restore into a directory in use is refused.
    let err = toplog_fails(&[
        "restore",
        "--from",
        loc,
        "--data-dir",
        server.data_dir.to_str().unwrap(),
    ]);
    assert!(err.contains("is not empty"), "{err}");
}

#[test]
fn the_schedule_takes_backups_and_keeps_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let location = dir.path().join("backups");
    let config = dir.path().join("toplog.toml");
    std::fs::write(
        &config,
        backup_toml(location.to_str().unwrap(), None) + "every = \"2s\"\nkeep = 2\n",
    )
    .unwrap();
    let mut args = SERVER_ARGS.to_vec();
    args.extend(["--config", config.to_str().unwrap()]);
    let server = Server::start_ready(&dir.path().join("data"), &args);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut n = 0;
    while metric(&server.base, "toplog_backups_total{outcome=\"done\"}") < 4.0 {
        assert_eq!(
            metric(&server.base, "toplog_backups_total{outcome=\"failed\"}"),
            0.0
        );
        assert!(Instant::now() < deadline, "fewer than 4 backups in 60 s");
        n += 1;
        send(&server, n); // something new for each
        std::thread::sleep(Duration::from_millis(200));
    }
    // Pruning follows the fourth backup; the fifth starts 2 s after it.
    std::thread::sleep(Duration::from_millis(400));
    server.terminate();
    let manifests = toplog_tests::files(&location.join("backups"));
    assert_eq!(manifests.len(), 2, "{:?}", manifests.keys());
    // The objects are exactly those the two kept backups hold.
    let mut held = BTreeSet::new();
    for bytes in manifests.values() {
        let m = manifest_json(bytes);
        for f in m["files"].as_object().unwrap().values() {
            held.insert(f["sha256"].as_str().unwrap().to_owned());
        }
    }
    let objects: BTreeSet<String> = toplog_tests::files(&location.join("objects"))
        .into_keys()
        .collect();
    assert_eq!(objects, held);
    let out = toplog(&["backup", "verify", location.to_str().unwrap()]);
    assert!(
        out.contains("2 backup(s)") && out.contains("all match"),
        "{out}"
    );
}

#[test]
fn a_cluster_members_backup_starts_a_new_cluster_that_grows() {
    use toplog_tests::cluster::{Cluster, call, converged, send};
    let dir = tempfile::tempdir().unwrap();
    let location = dir.path().join("backups");
    let config = dir.path().join("toplog.toml");
    std::fs::write(&config, backup_toml(location.to_str().unwrap(), None)).unwrap();
    let old_dir = dir.path().join("old");
    std::fs::create_dir(&old_dir).unwrap();
    let old = Cluster::start_with(&old_dir, 3, &["--config", config.to_str().unwrap()]);
    let (leader, _) = old.agreed_leader(Duration::from_secs(30));
    for b in 0..10 {
        assert_eq!(send(&old, leader, b, 50).0, 200);
    }
    converged(&old, 500, Duration::from_secs(30));
    // A follower's backup, at the Raft index it had applied.
    let follower = if leader == 1 { 2 } else { 1 };
    // The leader names the cluster soon after it leads (its membership watch): the
    // follower has applied that name before its backup is taken.
    let id_file = old.data_dir(follower).join("raft/CLUSTER_ID");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !id_file.exists() {
        assert!(Instant::now() < deadline, "the cluster was never named");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, taken) = call(&old, follower, "POST", "/api/v1/admin/backups", &json!({}));
    assert_eq!(status, 200, "{taken}");
    let cluster_id = std::fs::read_to_string(&id_file).unwrap();
    drop(old);

    // Restored as node 1 of a new cluster of one, then grown to two.
    let new_dir = dir.path().join("new");
    std::fs::create_dir(&new_dir).unwrap();
    toplog(&[
        "restore",
        "--from",
        location.to_str().unwrap(),
        "--data-dir",
        new_dir.join("node1").to_str().unwrap(),
    ]);
    let mut new = Cluster::start_with(&new_dir, 1, &[]);
    new.agreed_leader(Duration::from_secs(30));
    assert_eq!(
        converged(&new, 500, Duration::from_secs(30))
            .as_array()
            .unwrap()
            .len(),
        5
    );
    assert_eq!(
        std::fs::read_to_string(new.data_dir(1).join("raft/CLUSTER_ID")).unwrap(),
        cluster_id,
        "the cluster keeps its id (and so its archive)"
    );
    // Its idempotency keys came too; new batches follow the restored ones.
    assert_eq!(send(&new, 1, 3, 50).1["replayed"], true);
    for b in 10..15 {
        assert_eq!(send(&new, 1, b, 50).0, 200);
    }
    new.start_joining(2);
    let (status, added) = call(
        &new,
        1,
        "POST",
        "/api/v1/cluster/members",
        &json!({"node_id": 2, "url": new.url(2)}),
    );
    assert_eq!(status, 200, "{added}");
    converged(&new, 750, Duration::from_secs(60));
}

#[test]
fn a_segment_larger_than_a_part_goes_to_s3_in_parts_and_comes_back_whole() {
    let moto = Moto::start();
    moto.create_bucket("big");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("toplog.toml");
    let url = "s3://big/node";
    std::fs::write(&config, backup_toml(url, Some(moto.port))).unwrap();
    let cfg = config.to_str().unwrap();
    let server = Server::start_ready(
        &dir.path().join("data"),
        &["--memtable-max-bytes", "268435456", "--config", cfg],
    );
    // 600,000 events with random-looking ids: one segment of over 8 MiB.
    let now = now_ms();
    for b in 0..60u64 {
        let body: String = (0..10_000u64)
            .map(|i| {
                let n = b * 10_000 + i;
                format!(
                    "{{\"request_id\":\"{:016x}{:016x}\",\"timestamp\":{},\"endpoint\":\"GET /e/{}\",\"user_id\":\"u{}\",\"status_code\":200,\"latency_ms\":{}}}\n",
                    n.wrapping_mul(0x9e37_79b9_7f4a_7c15),
                    n.wrapping_mul(0xc2b2_ae3d_27d4_eb4f).rotate_left(17),
                    now - (n % 3_600_000) as i64,
                    n % 50,
                    n % 1000,
                    n % 997
                )
            })
            .collect();
        let r = client()
            .post(server.url("/api/v1/requests"))
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let m = s3_manifest(&moto, "big", &cli_backup(&server, &[])["id"]);
    let largest = (m["files"].as_object().unwrap().values())
        .map(|f| f["bytes"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(largest > 8 << 20, "the largest file is {largest} bytes");
    toplog(&["backup", "verify", url, "--config", cfg]);
    let restored = dir.path().join("restored");
    toplog(&[
        "restore",
        "--from",
        url,
        "--data-dir",
        restored.to_str().unwrap(),
        "--config",
        cfg,
    ]);
    let copy = Server::start_ready(&restored, &[]);
    assert_eq!(
        get_ok(&copy, "/api/v1/requests/count?start=0")["count"],
        600_000
    );
}

#[test]
fn a_lost_s3_archive_comes_back_from_the_backup_into_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let (moto, url, cfg) = s3_location(dir.path(), "bkp");
    for bucket in ["arch", "arch2"] {
        moto.create_bucket(bucket);
    }
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text += &Moto::archive_toml("arch", moto.port);
    std::fs::write(&cfg, text).unwrap();
    let args = [
        "--partition",
        "1m",
        "--memtable-max-age",
        "1s",
        "--raw-local-for",
        "30s",
        "--maintenance-interval",
        "0s",
        "--config",
        &cfg,
    ];
    let server = Server::start_ready(&dir.path().join("data"), &args);
    // Two minutes ago: flushed within a second, archived by a maintenance pass.
    let at = |n: u64, ms: i64| -> Vec<Value> {
        (batch(n).into_iter())
            .map(|mut e| {
                e["timestamp"] = json!(ms);
                e
            })
            .collect()
    };
    let old: Vec<Value> = (1..=5).flat_map(|n| at(n, now_ms() - 120_000)).collect();
    toplog_tests::send_all(&server, &old);
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&server.base, "toplog_memtable_rows") > 0.0 {
        assert!(Instant::now() < deadline, "not flushed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = client()
        .post(server.url("/api/v1/admin/maintenance"))
        .send()
        .unwrap();
    let report: Value = r.json().unwrap();
    assert_eq!(report["data"]["errors"], json!([]), "{report}");
    assert!(metric(&server.base, "toplog_segments{tier=\"archive\"}") > 0.0);
    toplog_tests::send_all(&server, &at(6, now_ms() - 5_000)); // and a batch that stays local
    let total = get_ok(&server, "/api/v1/requests/count?start=0")["count"].clone();
    assert_eq!(total, 240);

    let taken = cli_backup(&server, &[]);
    let m = s3_manifest(&moto, "bkp", &taken["id"]);
    let objects = m["archive_objects"].as_object().unwrap();
    assert!(objects.contains_key("OWNER"), "{m}");
    assert!(objects.keys().any(|k| k.ends_with(".parquet")), "{m}");
    // A second backup reads none of them again, and copies none.
    let again = cli_backup(&server, &[]);
    assert_eq!(again["copied_files"], 1, "{again}"); // the audit line
    drop(server);

    // The archive is lost: the copy goes into a new, empty one, the only
    // archive the restored node is told of.
    assert!(moto.keys("arch2").is_empty());
    let restored = dir.path().join("restored");
    let out = toplog(&[
        "restore",
        "--from",
        &url,
        "--data-dir",
        restored.to_str().unwrap(),
        "--archive-to",
        "s3://arch2/toplog",
        "--config",
        &cfg,
    ]);
    assert!(out.contains("archive objects put into"), "{out}");
    let old_keys: BTreeSet<String> = (moto.keys("arch").into_iter())
        .map(|k| k.replacen("toplog/", "", 1))
        .collect();
    let new_keys: BTreeSet<String> = (moto.keys("arch2").into_iter())
        .map(|k| k.replacen("toplog/", "", 1))
        .collect();
    assert_eq!(new_keys, old_keys);
    let new_cfg = dir.path().join("new.toml");
    std::fs::write(&new_cfg, Moto::archive_toml("arch2", moto.port)).unwrap();
    let copy = Server::start_ready(
        &restored,
        &[
            "--raw-local-for",
            "30s",
            "--config",
            new_cfg.to_str().unwrap(),
        ],
    );
    assert_eq!(
        get_ok(&copy, "/api/v1/requests/count?start=0")["count"],
        total
    );
    // The archived events are read from the new archive.
    let (start, end) = (now_ms() - 600_000, now_ms() - 60_000);
    let archived = get_ok(
        &copy,
        &format!("/api/v1/requests?start={start}&end={end}&limit=1000"),
    );
    assert_eq!(archived["data"].as_array().unwrap().len(), 200);
}
