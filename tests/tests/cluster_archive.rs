//! One archive for a 3-node cluster (issue 21) on moto: the leader uploads,
//! every member drops the same rows, across a leader kill, late rows, a
//! member caught up by snapshot, and a purge that deletes the objects.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use serde_json::Value;
use toplog_tests::client;
use toplog_tests::cluster::*;
use toplog_tests::moto::Moto;

/// What node `id`'s `/api/v1/storage` says.
fn storage(cluster: &Cluster, id: u64) -> Value {
    get(cluster, id, "/api/v1/storage")["data"].clone()
}

/// A maintenance pass on node `id`: its report.
fn maintenance(cluster: &Cluster, id: u64) -> Value {
    let (status, body) = call(
        cluster,
        id,
        "POST",
        "/api/v1/admin/maintenance",
        &Value::Null,
    );
    assert_eq!(status, 200, "{body}");
    body["data"].clone()
}

/// The archived objects node `id` names.
fn archived(cluster: &Cluster, id: u64) -> std::collections::BTreeSet<String> {
    (storage(cluster, id)["segments"].as_array().unwrap().iter())
        .filter_map(|s| s["object"].as_str().map(str::to_owned))
        .collect()
}

/// Waits until each of `ids` holds `local` rows in local segments and
/// `archive` rows in the archive.
fn tiers_hold(cluster: &Cluster, ids: &[u64], local: u64, archive: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for id in ids {
        loop {
            let tiers = storage(cluster, *id)["tiers"].clone();
            let got = (
                tiers["raw_local"]["rows"].as_u64().unwrap(),
                tiers["raw_archive"]["rows"].as_u64().unwrap(),
            );
            if got == (local, archive) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {id}: (local, archive) rows {got:?}, want {:?}",
                (local, archive)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `n` events from `from` (ms), 100 ms apart.
fn events_from(first: usize, n: usize, from: i64) -> Value {
    (0..n)
        .map(|k| {
            serde_json::json!({"request_id": format!("a{}", first + k), "timestamp": from + k as i64 * 100,
                "endpoint": format!("/a/{}", (first + k) % 4), "user_id": format!("u{}", k % 9),
                "method": "GET", "status_code": 200, "latency_ms": 2.0})
        })
        .collect()
}

#[test]
fn the_leader_archives_for_the_cluster_and_every_member_drops_the_same_rows() {
    const BUCKET: &str = "cluster-archive";
    let moto = Moto::start();
    moto.create_bucket(BUCKET);
    let dir = tempfile::tempdir().unwrap();
    let config = moto.tiering_config(dir.path(), BUCKET);
    // A short log: a member that loses its disk is sent a snapshot.
    let mut cluster = Cluster::start_with(
        dir.path(),
        3,
        &["--config", config.to_str().unwrap(), "--raft-log-keep", "4"],
    );
    let (leader, _) = cluster.agreed_leader(Duration::from_secs(20));
    let all = [1, 2, 3];

    // The leader names the cluster; every member learns its id from the log.
    let deadline = Instant::now() + Duration::from_secs(20);
    let cluster_id = loop {
        let ids: Vec<Value> = (all.iter())
            .map(|id| storage(&cluster, *id)["archive"]["cluster_id"].clone())
            .collect();
        if ids[0].is_string() && ids.windows(2).all(|w| w[0] == w[1]) {
            break ids[0].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "cluster ids {ids:?}");
        std::thread::sleep(Duration::from_millis(100));
    };

    // Rows three minutes old (due for the archive) through a follower, recent
    // ones through the leader.
    let follower = *all.iter().find(|id| **id != leader).unwrap();
    let t0 = toplog_tests::now_ms();
    let old = events_from(0, 120, t0 - 200_000);
    let recent = events_from(1000, 60, t0 - 10_000);
    for (id, batch) in [(follower, &old), (leader, &recent)] {
        let (status, body) = call(&cluster, id, "POST", "/api/v1/requests", batch);
        assert_eq!(status, 200, "{body}");
    }
    let top = converged(&cluster, 180, Duration::from_secs(30));
    tiers_hold(&cluster, &all, 180, 0);

    // The leader seals, uploads and proposes the cut-offs; every member
    // puts them in force at its own pass.
    let report = maintenance(&cluster, leader);
    assert_eq!(report["errors"], serde_json::json!([]), "{report}");
    for id in all.iter().filter(|id| **id != leader) {
        let report = maintenance(&cluster, *id);
        assert_eq!(
            report["errors"],
            serde_json::json!([]),
            "node {id}: {report}"
        );
    }
    tiers_hold(&cluster, &all, 60, 120);
    let objects = archived(&cluster, leader);
    assert!(!objects.is_empty());
    for id in all {
        assert_eq!(archived(&cluster, id), objects, "node {id}'s objects");
    }
    let in_bucket = |moto: &Moto| -> std::collections::BTreeSet<String> {
        (moto.keys(BUCKET).into_iter())
            .filter_map(|k| k.strip_prefix("toplog/").map(str::to_owned))
            .filter(|k| k.starts_with("raw/"))
            .collect()
    };
    assert_eq!(
        in_bucket(&moto),
        objects,
        "the bucket holds what the members name"
    );
    let owner: Value = client()
        .get(moto.url(&format!("/{BUCKET}/toplog/OWNER")))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(owner["kind"], "cluster");
    assert_eq!(owner["owner"], cluster_id.as_str());
    assert_eq!(converged(&cluster, 180, Duration::from_secs(10)), top);

    // The leader dies; late rows for the archived minutes arrive; the next
    // leader archives them as well.
    cluster.kill9(leader);
    let live: Vec<u64> = all.iter().copied().filter(|id| *id != leader).collect();
    let (second, _) = cluster.agreed_leader_among(&live, Duration::from_secs(20));
    let late = events_from(2000, 30, t0 - 195_000);
    let (status, body) = call(&cluster, second, "POST", "/api/v1/requests", &late);
    assert_eq!(status, 200, "{body}");
    converged(&cluster, 210, Duration::from_secs(30));
    let report = maintenance(&cluster, second);
    assert_eq!(report["errors"], serde_json::json!([]), "{report}");
    for id in live.iter().filter(|id| **id != second) {
        maintenance(&cluster, *id);
    }
    tiers_hold(&cluster, &live, 60, 150);
    let more = archived(&cluster, second);
    assert!(more.is_superset(&objects) && more.len() > objects.len());

    // The dead leader comes back, catches up from the log and puts the
    // second cut-off in force too.
    cluster.restart(leader);
    converged(&cluster, 210, Duration::from_secs(30));
    maintenance(&cluster, leader);
    tiers_hold(&cluster, &all, 60, 150);
    for id in all {
        assert_eq!(archived(&cluster, id), more, "node {id}'s objects");
    }
    assert_eq!(in_bucket(&moto), more);

    // A member that lost its disk is sent a snapshot naming the same objects.
    let wiped = *all.iter().find(|id| **id != second).unwrap();
    cluster.kill9(wiped);
    std::fs::remove_dir_all(cluster.data_dir(wiped)).unwrap();
    for b in 0..6 {
        let (status, body) = call(
            &cluster,
            second,
            "POST",
            "/api/v1/requests",
            &events_from(3000 + b * 5, 5, t0 - 8_000),
        );
        assert_eq!(status, 200, "{body}");
    }
    cluster.restart(wiped);
    converged(&cluster, 240, Duration::from_secs(30));
    let status = cluster.status(wiped).unwrap();
    assert!(
        status["log_first_index"].as_u64().unwrap() > 1,
        "node {wiped} caught up without a snapshot: {status}"
    );
    tiers_hold(&cluster, &all, 90, 150);
    assert_eq!(archived(&cluster, wiped), more);

    // A shorter retention: the purge goes through the log, every member
    // drops the old rows, and the leader deletes the objects no member names.
    let (status, body) = call(
        &cluster,
        second,
        "PUT",
        "/api/v1/retention",
        &serde_json::json!({"raw": {"keep_for": "150s"}}),
    );
    assert_eq!(status, 200, "{body}");
    converged(&cluster, 90, Duration::from_secs(30));
    let report = maintenance(&cluster, second);
    assert_eq!(report["errors"], serde_json::json!([]), "{report}");
    tiers_hold(&cluster, &all, 90, 0);
    assert_eq!(
        in_bucket(&moto),
        Default::default(),
        "purged objects deleted"
    );
}
