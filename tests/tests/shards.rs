//! A sharded cluster end to end (issue 25, docs/cluster.md "Shards"): three
//! real nodes holding four shards on loopback. Batches go in under
//! idempotency keys through every node while nodes are killed with
//! `kill -9`; every batch sent is then in the cluster exactly once, and
//! every query of the comparison mix (benches/compare.py) equals DuckDB's
//! answer over the same events, on every node. A fourth node takes its
//! share of replicas under ingest, and the answers stay DuckDB's. Two nodes
//! killed cost some shards their quorum: the reads that need them answer
//! `503 partial_data`, or, when the caller allows it, what the other shards
//! hold, marked partial; a batch touching them is not acknowledged.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use toplog_tests::cluster::{Cluster, call, counts_reach, get, judge_through};
use toplog_tests::shards::*;
use toplog_tests::{all_events, client, now_ms};

/// A backup of node 2 holds each of its shards as of that shard's log
/// index; restored, it starts a one-node cluster of the same four shards
/// holding every event, each once.
fn backup_restores_every_shard(
    cluster: &Cluster,
    dir: &std::path::Path,
    backups: &std::path::Path,
    model: &BTreeMap<String, Value>,
) {
    let (status, taken) = call(cluster, 2, "POST", "/api/v1/admin/backups", &json!({}));
    assert_eq!(status, 200, "{taken}");
    let shards = taken["data"]["shards"].as_object().unwrap();
    let indexes: Vec<u64> = (0..4)
        .map(|s| shards[&s.to_string()].as_u64().unwrap())
        .collect();
    assert!(indexes.iter().all(|i| *i > 0), "{taken}");
    let restored = dir.join("restored");
    let out = std::process::Command::new(toplog_tests::binary())
        .args(["restore", "--from", backups.to_str().unwrap(), "--data-dir"])
        .arg(&restored)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = toplog_tests::free_port();
    let spec = format!("1=http://127.0.0.1:{port}");
    let secret = dir.join("secret");
    let node = toplog_tests::Server::start_listening(
        &format!("127.0.0.1:{port}"),
        &restored,
        &[
            "--node-id",
            "1",
            "--cluster",
            &spec,
            "--cluster-secret-file",
            secret.to_str().unwrap(),
            "--shards",
            "4",
        ],
        &[],
    );
    node.wait_ready();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let body: Value = client()
            .get(node.url("/api/v1/requests/count?start=0"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        if body["count"] == model.len() {
            let read: Vec<u64> = (body["meta"]["shards"].as_array().unwrap().iter())
                .map(|s| s["applied_index"].as_u64().unwrap())
                .collect();
            // Each shard's log goes on from the backup's index: the one
            // entry after it is its first leader's (empty) one.
            let after: Vec<u64> = indexes.iter().map(|i| i + 1).collect();
            assert_eq!(read, after, "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "restored: {body}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let events = all_events(&node);
    let ids: BTreeSet<&str> = events
        .iter()
        .map(|e| e["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), model.len());
    assert!(model.keys().all(|k| ids.contains(k.as_str())));
    node.kill9();
}

/// An aggregation job submitted to node `id` (through the log, run by every
/// member over every shard): its rows per endpoint equal the model's
/// requests and errors, on node `id` and on node 2.
fn aggregation_equals_the_model(
    cluster: &Cluster,
    id: u64,
    end_us: i64,
    model: &BTreeMap<String, Value>,
) {
    let start_ms = end_us / 1000 - 4 * DAY_MS;
    let (status, body) = call(
        cluster,
        id,
        "POST",
        "/api/v1/requests/aggregate",
        &json!({"start_time": start_ms, "end_time": end_us / 1000,
                "metrics": ["frequency", "errors"], "group_by": "endpoint"}),
    );
    assert_eq!(status, 202, "{body}");
    let job = body["aggregation_id"].as_str().unwrap().to_owned();
    let mut want: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for e in model.values() {
        let w = want
            .entry(e["endpoint"].as_str().unwrap().to_owned())
            .or_default();
        w.0 += 1;
        w.1 += u64::from(e["status_code"].as_u64().unwrap() >= 500);
    }
    for on in [id, 2] {
        let deadline = Instant::now() + Duration::from_secs(60);
        let result = loop {
            let got =
                get(cluster, on, &format!("/api/v1/requests/aggregate/{job}"))["data"].clone();
            match got["state"].as_str() {
                Some("done") => break got["result"].clone(),
                Some("failed") => panic!("node {on}: {got}"),
                _ => {}
            }
            assert!(Instant::now() < deadline, "node {on}: {got}");
            std::thread::sleep(Duration::from_millis(100));
        };
        let got: BTreeMap<String, (u64, u64)> = (result.as_array().unwrap().iter())
            .map(|r| {
                (
                    r["group"].as_str().unwrap().to_owned(),
                    (
                        r["frequency"].as_u64().unwrap(),
                        r["errors"].as_u64().unwrap(),
                    ),
                )
            })
            .collect();
        assert_eq!(
            got, want,
            "node {on}: the aggregation's requests and errors by endpoint"
        );
    }
}

/// Adds node `id` at `url` through the main group's leader.
fn add_member(cluster: &Cluster, id: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for via in cluster.live() {
            let (status, body) = call(
                cluster,
                via,
                "POST",
                "/api/v1/cluster/members",
                &json!({"node_id": id, "url": cluster.url(id)}),
            );
            if status == 200 {
                return;
            }
            assert!(Instant::now() < deadline, "{status} {body}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn three_nodes_four_shards_exactly_once_equal_to_duckdb_rebalanced_and_partial_when_a_quorum_is_lost()
 {
    let dir = tempfile::tempdir().unwrap();
    let t0 = now_ms();
    // Ranges end on the minute after the last event; memtables flush
    // within a second, so segments and rollups answer too.
    let end_us = (t0 / 60_000 + 1) * 60_000_000;
    // Backups go to a folder the operator names.
    let backups = dir.path().join("backups");
    let config = dir.path().join("toplog.toml");
    std::fs::write(
        &config,
        format!("[backup]\nurl = \"{}\"\n", backups.display()),
    )
    .unwrap();
    let mut cluster = Cluster::start_with(
        dir.path(),
        3,
        &[
            "--shards",
            "4",
            "--memtable-max-age",
            "1s",
            "--config",
            config.to_str().unwrap(),
        ],
    );
    let shards = shards_settled(&cluster, 1, 4, Duration::from_secs(60));
    for s in &shards {
        assert_eq!(s["replicas"].as_array().unwrap().len(), 3, "{s}");
    }
    leaderships_spread(&cluster, 3);

    // Ingest through every node while each is killed with kill -9 in turn.
    let mut model = BTreeMap::new();
    let writers = Writers::start(&cluster, t0, 0, 3);
    for victim in [2u64, 3, 1] {
        std::thread::sleep(Duration::from_millis(1500));
        cluster.kill9(victim);
        std::thread::sleep(Duration::from_millis(1500));
        cluster.restart(victim);
        cluster.nodes[(victim - 1) as usize]
            .as_ref()
            .unwrap()
            .wait_ready();
    }
    std::thread::sleep(Duration::from_millis(1000));
    let sent = writers.finish();
    settle(&cluster, t0, &sent, &mut model);
    assert!(model.len() > 100 * BATCH, "only {} events", model.len());
    counts_reach(&cluster, model.len(), Duration::from_secs(60));
    holds_exactly(&cluster, 1, &model);
    mix_equals_duckdb(&cluster, &[1, 2, 3], end_us, &model);
    backup_restores_every_shard(&cluster, dir.path(), &backups, &model);

    // A fourth node takes three of the twelve replicas under ingest.
    let writers = Writers::start(&cluster, t0, 1_000_000, 2);
    cluster.start_joining(4);
    add_member(&cluster, 4);
    let deadline = Instant::now() + Duration::from_secs(120);
    let placed = loop {
        let shards = view(&cluster, 1)["shards"].clone();
        let list = shards.as_array().unwrap().clone();
        let per_node = |n: u64| {
            (list.iter())
                .filter(|s| s["replicas"].as_array().unwrap().contains(&json!(n)))
                .count()
        };
        if list.iter().all(|s| s["moving"].is_null()) && (1..=4).all(|n| per_node(n) == 3) {
            break list;
        }
        assert!(Instant::now() < deadline, "not rebalanced: {shards}");
        std::thread::sleep(Duration::from_millis(300));
    };
    let sent = writers.finish();
    settle(&cluster, t0, &sent, &mut model);
    counts_reach(&cluster, model.len(), Duration::from_secs(60));
    holds_exactly(&cluster, 4, &model);
    aggregation_equals_the_model(&cluster, 4, end_us, &model);
    // A strong read, on the node lacking a shard, holds every batch
    // acknowledged before it.
    let strong = get(
        &cluster,
        4,
        "/api/v1/requests/count?start=0&consistency=strong",
    );
    assert_eq!(strong["count"], model.len(), "{strong}");
    let slots: Vec<(u64, u64, u64)> = (placed.iter())
        .map(|s| {
            (
                s["shard"].as_u64().unwrap(),
                s["slots"][0].as_u64().unwrap(),
                s["slots"][1].as_u64().unwrap(),
            )
        })
        .collect();
    let shard_of = |id: &str| {
        let slot = u64::from(toplog_replication::slot_of(id));
        slots
            .iter()
            .find(|(_, a, b)| (*a..*b).contains(&slot))
            .unwrap()
            .0
    };
    mix_equals_duckdb(&cluster, &[4, 2], end_us, &model);
    // /metrics on node 4: each of its three shards' leader, lag and size.
    let text = client()
        .get(cluster.nodes[3].as_ref().unwrap().url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let samples = toplog_tests::samples(&text);
    let held: Vec<u64> = (placed.iter())
        .filter(|s| s["replicas"].as_array().unwrap().contains(&json!(4)))
        .map(|s| s["shard"].as_u64().unwrap())
        .collect();
    assert_eq!(held.len(), 3);
    let mut events = 0.0;
    for s in &held {
        let leader = samples[&format!("toplog_shard_leader{{shard=\"{s}\"}}")];
        assert!((1.0..=4.0).contains(&leader), "{text}");
        assert_eq!(
            samples[&format!("toplog_shard_apply_lag{{shard=\"{s}\"}}")],
            0.0
        );
        events += samples[&format!("toplog_shard_events{{shard=\"{s}\"}}")];
    }
    let on_4 = model
        .keys()
        .filter(|id| held.contains(&shard_of(id)))
        .count();
    assert_eq!(events as usize, on_4, "{text}");
    // Node 4 lacks one shard: it read that one on another node.
    let count = get(&cluster, 4, "/api/v1/requests/count?start=0");
    let elsewhere = count["meta"]["shards"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["node_id"] != 4)
        .count();
    assert_eq!(elsewhere, 1, "{count}");

    // Two nodes killed: the shards with both among their replicas lose
    // their quorum, the others keep theirs.
    let (x, y) = (1u64, 4u64);
    let lost: BTreeSet<u64> = (placed.iter())
        .filter(|s| {
            let r = s["replicas"].as_array().unwrap();
            r.contains(&json!(x)) && r.contains(&json!(y))
        })
        .map(|s| s["shard"].as_u64().unwrap())
        .collect();
    assert!(!lost.is_empty() && lost.len() < 4, "{placed:?}");
    cluster.kill9(x);
    cluster.kill9(y);
    let deadline = Instant::now() + Duration::from_secs(30);
    let refused = loop {
        let node = cluster.nodes[1].as_ref().unwrap();
        let r = client()
            .get(node.url("/api/v1/requests/count?start=0"))
            .send()
            .unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().unwrap();
        if status == 503 {
            break body;
        }
        assert_eq!(status, 200, "{body}");
        assert!(Instant::now() < deadline, "still answered whole: {body}");
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(refused["error"]["code"], "partial_data", "{refused}");
    let named = refused["error"]["message"].as_str().unwrap();
    assert!(
        lost.iter()
            .any(|s| named.starts_with(&format!("shard {s} "))),
        "{named}, lost {lost:?}"
    );
    // Allowed partial: the other shards' events exactly, marked partial.
    let kept = model
        .keys()
        .filter(|id| !lost.contains(&shard_of(id)))
        .count();
    for path in [
        "/api/v1/requests/count?start=0&allow_partial=true",
        "/api/v1/requests/top-k?k=3&metric=frequency&by=endpoint&start=0&allow_partial=true",
    ] {
        // Each lost shard's replicas notice within an election timeout or
        // two; a shard that kept its quorum is never left out.
        let deadline = Instant::now() + Duration::from_secs(30);
        let body = loop {
            let body = get(&cluster, 2, path);
            assert_eq!(body["status"], "success", "{path}: {body}");
            let meta = &body["meta"];
            assert_eq!(meta["partial"], true, "{meta}");
            let missing: BTreeSet<u64> = (meta["missing_shards"].as_array().unwrap().iter())
                .map(|m| m["shard"].as_u64().unwrap())
                .collect();
            assert!(missing.is_subset(&lost), "{meta}, lost {lost:?}");
            if missing == lost {
                break body;
            }
            assert!(Instant::now() < deadline, "{meta}, lost {lost:?}");
            std::thread::sleep(Duration::from_millis(300));
        };
        if path.contains("count") {
            assert_eq!(body["count"], kept, "{body}");
        }
    }
    // A batch with events in a shard without quorum is not acknowledged;
    // the parts of the other shards are kept.
    let (status, body) = send(&cluster.url(2), t0, 9_000_000);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "not_written", "{body}");
    // Quorum back: the retry under the same key is applied once in every
    // shard, skipped where the first try's part was.
    cluster.restart(x);
    cluster.restart(y);
    let deadline = Instant::now() + Duration::from_secs(60);
    let body = loop {
        let (status, body) = send(&cluster.url(2), t0, 9_000_000);
        if status == 200 {
            break body;
        }
        assert!(Instant::now() < deadline, "{status} {body}");
        std::thread::sleep(Duration::from_millis(300));
    };
    // The parts the first try stored are skipped; a lost shard's part may
    // have been committed after all once its quorum came back (it was not
    // acknowledged, and "may yet be committed"), or be applied now.
    for part in body["shards"].as_array().unwrap() {
        let shard = part["shard"].as_u64().unwrap();
        if !lost.contains(&shard) {
            assert_eq!(part["replayed"], true, "{body}");
        }
    }
    for e in batch(t0, 9_000_000) {
        model.insert(e["request_id"].as_str().unwrap().to_owned(), e);
    }
    counts_reach(&cluster, model.len(), Duration::from_secs(60));
    holds_exactly(&cluster, 3, &model);

    // Node 4 stopped for good and removed from the cluster (what an
    // operator does with a lost node): its replicas move back onto the
    // other three, and they answer for every event.
    cluster.kill9(4);
    let deadline = Instant::now() + Duration::from_secs(30);
    'removed: loop {
        for via in [1u64, 2, 3] {
            let (status, _) = call(
                &cluster,
                via,
                "DELETE",
                "/api/v1/cluster/members/4",
                &Value::Null,
            );
            if status == 200 {
                break 'removed;
            }
        }
        assert!(Instant::now() < deadline, "node 4 not removed");
        std::thread::sleep(Duration::from_millis(300));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let shards = view(&cluster, 1)["shards"].clone();
        let list = shards.as_array().unwrap();
        let off_4 = list.iter().all(|s| {
            s["moving"].is_null() && !s["replicas"].as_array().unwrap().contains(&json!(4))
        });
        if off_4 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replicas not moved off node 4: {shards}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    counts_reach(&cluster, model.len(), Duration::from_secs(60));
    holds_exactly(&cluster, 1, &model);
}

/// Waits until the nodes lead the shards as evenly as they can: with
/// `nodes` nodes holding every shard, each leads `shards / nodes` or one
/// more.
fn leaderships_spread(cluster: &Cluster, nodes: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let shards = view(cluster, 1)["shards"].clone();
        let mut led = vec![0usize; nodes];
        for s in shards.as_array().unwrap() {
            if let Some(l) = s["leader_id"].as_u64() {
                led[(l - 1) as usize] += 1;
            }
        }
        let (lo, hi) = (led.iter().min().unwrap(), led.iter().max().unwrap());
        if led.iter().sum::<usize>() == 4 && hi - lo <= 1 {
            return;
        }
        assert!(Instant::now() < deadline, "leaderships {led:?}: {shards}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Downloads the archive's raw objects with boto3 (as any S3 client would),
/// keeping their paths, and reads them with DuckDB as one Hive-partitioned
/// table (the glob docs/cluster.md gives for httpfs): rows per shard.
/// Arguments: endpoint, bucket, prefix, work folder.
const DUCKDB_READS_THE_SHARDS: &str = r#"
import sys, json, os, boto3, duckdb
endpoint, bucket, prefix, work = sys.argv[1:5]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id="test", aws_secret_access_key="test")
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
    for o in page.get("Contents", []):
        path = os.path.join(work, o["Key"])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        s3.download_file(bucket, o["Key"], path)
glob = os.path.join(work, prefix, "shard=*/raw/day=*/*.parquet")
rows = duckdb.sql(f"select shard, count(*), count(distinct request_id) from read_parquet('{glob}', hive_partitioning = true) group by 1").fetchall()
print(json.dumps({str(r[0]): [r[1], r[2]] for r in rows}))
"#;

#[test]
fn each_shard_archives_under_its_prefix_and_duckdb_reads_them_as_one_table() {
    use toplog_tests::moto::Moto;
    const BUCKET: &str = "sharded-archive";
    let moto = Moto::start();
    moto.create_bucket(BUCKET);
    let dir = tempfile::tempdir().unwrap();
    let config = moto.tiering_config(dir.path(), BUCKET);
    let cluster = Cluster::start_with(
        dir.path(),
        3,
        &["--config", config.to_str().unwrap(), "--shards", "2"],
    );
    let shards = shards_settled(&cluster, 1, 2, Duration::from_secs(60));
    let t0 = now_ms();
    let event = |i: usize, ts: i64| {
        json!({"request_id": format!("a{i}"), "timestamp": ts, "endpoint": format!("/a/{}", i % 4),
               "user_id": format!("u{}", i % 9), "method": "GET", "status_code": 200, "latency_ms": 2.0})
    };
    // 200 rows three minutes old (due for the archive), 50 recent.
    let old: Vec<Value> = (0..200)
        .map(|i| event(i, t0 - 200_000 + i as i64 * 100))
        .collect();
    let recent: Vec<Value> = (200..250)
        .map(|i| event(i, t0 - 10_000 + i as i64))
        .collect();
    for (key, batch) in [("old", &old), ("recent", &recent)] {
        send_until_taken(&cluster, 2, key, &json!(batch));
    }
    counts_reach(&cluster, 250, Duration::from_secs(30));
    // Passes on every node until every replica holds the old rows in the
    // archive (each shard's leader uploads; its followers adopt the cut-off).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for id in 1..=3 {
            let (status, body) = call(
                &cluster,
                id,
                "POST",
                "/api/v1/admin/maintenance",
                &Value::Null,
            );
            assert_eq!(status, 200, "{body}");
        }
        let archived: Vec<u64> = (1..=3)
            .map(|id| {
                let storage = get(&cluster, id, "/api/v1/storage")["data"].clone();
                (storage["shards"].as_array().unwrap().iter())
                    .map(|s| {
                        s["storage"]["tiers"]["raw_archive"]["rows"]
                            .as_u64()
                            .unwrap()
                    })
                    .sum()
            })
            .collect();
        if archived.iter().all(|a| *a == 200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "archived rows by node {archived:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Reads still answer every row, archived ones included.
    counts_reach(&cluster, 250, Duration::from_secs(10));
    let keys = moto.keys(BUCKET);
    let raw: Vec<&String> = keys.iter().filter(|k| k.contains("/raw/")).collect();
    assert!(
        raw.iter().all(|k| k.starts_with("toplog/shard=0/raw/day=")
            || k.starts_with("toplog/shard=1/raw/day=")),
        "{raw:?}"
    );
    let work = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            DUCKDB_READS_THE_SHARDS,
            &format!("http://127.0.0.1:{}", moto.port),
            BUCKET,
            "toplog",
        ])
        .arg(work.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let by_shard: BTreeMap<String, (u64, u64)> = serde_json::from_slice(&out.stdout).unwrap();
    // Each shard's archived rows are exactly the old rows its slots own.
    let mut want: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for e in &old {
        let slot = u64::from(toplog_replication::slot_of(
            e["request_id"].as_str().unwrap(),
        ));
        let shard = (shards.iter())
            .find(|s| {
                (s["slots"][0].as_u64().unwrap()..s["slots"][1].as_u64().unwrap()).contains(&slot)
            })
            .unwrap()["shard"]
            .to_string();
        let n = want.entry(shard).or_default();
        n.0 += 1;
        n.1 += 1;
    }
    assert_eq!(by_shard, want, "DuckDB's rows per shard");
}

/// An alert rule reads every shard: a count of errors that only the whole
/// reaches (each shard holds about half) fires, on the key that has them.
#[test]
fn an_alert_rule_judges_what_every_shard_holds_together() {
    const MIN: i64 = 60_000;
    let dir = tempfile::tempdir().unwrap();
    let clock = dir.path().join("clock");
    let base = (now_ms() - 40 * MIN) / MIN * MIN;
    std::fs::write(&clock, base.to_string()).unwrap();
    let cluster = Cluster::start_with_env(
        dir.path(),
        3,
        &["--alert-grace", "0s", "--shards", "2"],
        &[("TOPLOG_TEST_CLOCK_FILE", clock.to_str().unwrap())],
    );
    shards_settled(&cluster, 1, 2, Duration::from_secs(60));
    // Rules go through the metadata group: it has a leader too.
    cluster.agreed_leader(Duration::from_secs(20));
    // GET /a fails 20 times a minute for 5 minutes, once a minute otherwise:
    // 100 errors in 5 minutes at the peak, about 50 in each shard.
    let (status, made) = call(
        &cluster,
        2,
        "POST",
        "/api/v1/alerts/rules",
        &json!({"name": "errors", "metric": "errors", "by": "endpoint", "window": "5m",
                "op": ">", "threshold": 80, "for": "1m"}),
    );
    assert_eq!(status, 201, "{made}");
    let rule = made["data"]["id"].as_str().unwrap().to_owned();
    let events = toplog_tests::error_burst(base);
    let body = send_until_taken(&cluster, 3, "burst", &Value::Array(events));
    let parts: Vec<u64> = (body["shards"].as_array().unwrap().iter())
        .map(|p| p["accepted"].as_u64().unwrap())
        .collect();
    assert!(parts.len() == 2 && parts.iter().all(|n| *n > 500), "{body}");
    counts_reach(&cluster, 1600, Duration::from_secs(30));
    // Minutes 10 to 14 hold the burst: the window closing at 15 holds 100.
    for m in 1..=15 {
        judge_through(
            &cluster,
            &cluster.live(),
            &clock,
            &rule,
            base + m * MIN + 1_000,
        );
    }
    for id in cluster.live() {
        let alerts = get(&cluster, id, "/api/v1/requests/alerts")["alerts"].clone();
        let fired: Vec<&Value> = (alerts.as_array().unwrap().iter())
            .filter(|a| a["rule_id"] == rule.as_str())
            .collect();
        assert_eq!(fired.len(), 1, "node {id}: {alerts}");
        assert_eq!(fired[0]["key"], "GET /a", "{alerts}");
        assert_eq!(fired[0]["state"], "firing", "{alerts}");
    }
}
