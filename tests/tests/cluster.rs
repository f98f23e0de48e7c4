//! A Raft cluster of real toplog processes on loopback (issue 21; the
//! harness is `toplog_tests::cluster`):
//! - elections across kill -9, a frozen (SIGSTOP) leader replaced and
//!   stepping down, leadership handed over, a minority refusing writes;
//! - peers proving themselves (the cluster secret, or certificates over
//!   mutual TLS) before a Raft message is decoded;
//! - ingest through the log: every acknowledged batch on every node once,
//!   across ten leader kills under concurrent writers and a rolling restart;
//!   strong reads; a write sent to a follower written through the leader;
//! - a wiped node caught up by snapshot; a node added, promoted and made
//!   leader, and a member removed, with the rest of the node's state (policy,
//!   keys, audit, jobs) on every member; an encrypted cluster rekeyed.
//!
//! The cluster's archive is tested in cluster_archive.rs, its alerting in
//! cluster_alerts.rs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use toplog_tests::cluster::*;
use toplog_tests::{ADMIN_KEY, Server, binary, client, free_port};

/// A raw gRPC call to the Raft service with `body` and `authorization`:
/// the status code's name.
fn raft_call(port: u16, authorization: Option<&str>, body: &[u8]) -> String {
    let script = r#"
import sys, grpc
port, auth, body = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3])
channel = grpc.insecure_channel(f"127.0.0.1:{port}")
send = channel.unary_unary("/toplog.raft.v1.Raft/Send",
                           request_serializer=lambda b: b, response_deserializer=lambda b: b)
metadata = [("authorization", auth)] if auth else []
try:
    send(body, metadata=metadata, timeout=10)
    print("OK")
except grpc.RpcError as e:
    print(e.code().name)
"#;
    let hex: String = body.iter().map(|b| format!("{b:02x}")).collect();
    let out = Command::new("python3")
        .args([
            "-c",
            script,
            &port.to_string(),
            authorization.unwrap_or(""),
            &hex,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "grpcio (scripts/test.sh installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn three_nodes_elect_one_leader_and_another_each_time_it_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3);
    let (mut leader, mut term) = cluster.agreed_leader(Duration::from_secs(20));

    for round in 0..3 {
        cluster.kill9(leader);
        let (next, next_term) = cluster.agreed_leader(Duration::from_secs(10));
        assert_ne!(next, leader, "round {round}");
        assert!(
            next_term > term,
            "round {round}: term {next_term} after {term}"
        );
        // The killed node comes back as a follower of the new leader.
        cluster.restart(leader);
        let (again, again_term) = cluster.agreed_leader(Duration::from_secs(10));
        assert_eq!(
            (again, again_term),
            (next, next_term),
            "round {round}: the rejoin moved the leader"
        );
        (leader, term) = (next, next_term);
    }

    // Each member's /metrics shows the Raft state: one leader, one term, and
    // on the leader each peer's lag.
    for id in 1..=3 {
        let m = |series: &str| toplog_tests::metric(&cluster.url(id), series);
        assert_eq!(
            m("toplog_raft_leader"),
            f64::from(u8::from(id == leader)),
            "node {id}"
        );
        assert_eq!(m("toplog_raft_term"), term as f64, "node {id}");
        let role = if id == leader { "leader" } else { "follower" };
        for r in ["leader", "follower", "candidate", "pre_candidate"] {
            let series = format!("toplog_raft_role{{role=\"{r}\"}}");
            assert_eq!(
                m(&series),
                f64::from(u8::from(r == role)),
                "node {id}: {series}"
            );
        }
        assert!(m("toplog_raft_commit_index") >= m("toplog_raft_applied_index"));
        let text = (client().get(format!("{}/metrics", cluster.url(id))).send())
            .and_then(|r| r.text())
            .unwrap();
        for peer in (1..=3).filter(|p| *p != id) {
            let shown = text.contains(&format!("toplog_raft_peer_lag{{peer=\"{peer}\"}}"));
            assert_eq!(shown, id == leader, "node {id}, peer {peer}:\n{text}");
        }
    }

    // The Raft service: nothing for callers who are not peers, and bytes are
    // decoded only for a peer (garbage from one is a clean refusal).
    let port = cluster.ports[0];
    let garbage = [0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f];
    assert_eq!(raft_call(port, None, &garbage), "UNAUTHENTICATED");
    assert_eq!(
        raft_call(port, Some("Bearer not-the-secret-of-the-cluster"), &garbage),
        "UNAUTHENTICATED"
    );
    assert_eq!(
        raft_call(port, Some(&format!("Bearer {ADMIN_KEY}")), &garbage),
        "PERMISSION_DENIED"
    );
    assert_eq!(
        raft_call(port, Some(&format!("Bearer {SECRET}")), &garbage),
        "INVALID_ARGUMENT"
    );
    assert_eq!(
        cluster.agreed_leader(Duration::from_secs(10)),
        (leader, term),
        "a refused call changed nothing"
    );

    // Leadership handed over on request, to a member the leader names.
    let to = cluster.live().into_iter().find(|id| *id != leader).unwrap();
    let node = cluster.nodes[(leader - 1) as usize].as_ref().unwrap();
    let r = client()
        .post(node.url("/api/v1/cluster/leader"))
        .json(&serde_json::json!({"node_id": to}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text());
    let (now, now_term) = cluster.agreed_leader(Duration::from_secs(10));
    assert_eq!(now, to);
    assert!(now_term >= term);
    leader = now;
    let r = client()
        .post(node.url("/api/v1/cluster/leader"))
        .json(&serde_json::json!({"node_id": 1}))
        .send()
        .unwrap();
    assert_eq!(
        r.status(),
        409,
        "a follower does not transfer: {:?}",
        r.text()
    );

    // Every member takes traffic (a load balancer asks /readyz).
    for id in cluster.live() {
        let node = cluster.nodes[(id - 1) as usize].as_ref().unwrap();
        assert_eq!(
            client().get(node.url("/readyz")).send().unwrap().status(),
            200
        );
    }

    // Two nodes killed: the one left elects no one, and says it is not ready.
    let others: Vec<u64> = cluster
        .live()
        .into_iter()
        .filter(|id| *id != leader)
        .collect();
    let alone = others[0];
    cluster.kill9(leader);
    cluster.kill9(others[1]);
    let node = cluster.nodes[(alone - 1) as usize].as_ref().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let body: Value = loop {
        let r = client().get(node.url("/readyz")).send().unwrap();
        if r.status() == 503 {
            break r.json().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "a node alone still says it is ready"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        body["reason"].as_str().unwrap().contains("no leader"),
        "{body}"
    );
    // A minority refuses writes, soon and with a reason; it acknowledges none.
    let asked = Instant::now();
    let r = client()
        .post(node.url("/api/v1/requests"))
        .json(&batch(999, 5))
        .send()
        .unwrap();
    assert_eq!(r.status(), 503, "{:?}", r.text());
    assert!(asked.elapsed() < Duration::from_secs(10));
    let body: Value = r.json().unwrap();
    assert!(
        body["error"]["message"].as_str().unwrap().contains("retry"),
        "{body}"
    );
    // A strong read cannot be served by a minority; an eventual one is.
    let r = client()
        .get(node.url("/api/v1/requests/count?start=0&consistency=strong"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 503, "{:?}", r.text());
    let r = client()
        .get(node.url("/api/v1/requests/count?start=0"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text());
    let status = cluster.status(alone).unwrap();
    assert_ne!(status["role"], "leader", "{status}");
}

#[test]
fn a_cluster_member_without_a_way_to_prove_peers_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .args([
            "--node-id",
            "1",
            "--cluster",
            "1=http://127.0.0.1:1,2=http://127.0.0.1:2",
        ])
        .env("TOPLOG_ADMIN_KEY", ADMIN_KEY)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("needs `cluster_secret_file`"), "{stderr}");
    // Without access control nothing would keep others off the Raft service.
    std::fs::write(dir.path().join("secret"), SECRET).unwrap();
    let out = Command::new(binary())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--auth",
            "off",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .args([
            "--node-id",
            "1",
            "--cluster",
            "1=http://127.0.0.1:1",
            "--cluster-secret-file",
        ])
        .arg(dir.path().join("secret"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("a cluster needs access control on"),
        "{stderr}"
    );
}

#[test]
fn every_acknowledged_batch_is_on_every_node_once_across_leader_kills() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3);
    let (mut leader, _) = cluster.agreed_leader(Duration::from_secs(20));
    const PER_BATCH: usize = 40;
    let mut acked = std::collections::BTreeSet::new();
    let mut next = 0;
    for round in 0..3 {
        let mut last_index = 0;
        for _ in 0..10 {
            let (status, body) = send(&cluster, leader, next, PER_BATCH);
            assert_eq!(status, 200, "round {round}, batch {next}: {body}");
            assert_eq!(body["accepted"], PER_BATCH);
            assert_eq!(body["leader_id"], leader, "{body}");
            last_index = body["index"].as_u64().unwrap();
            acked.insert(next);
            next += 1;
        }
        // A strong read on any member sees every acknowledged write, and
        // says where it was served.
        for id in cluster.live() {
            let r = get(
                &cluster,
                id,
                "/api/v1/requests/count?start=0&consistency=strong",
            );
            assert_eq!(r["count"], acked.len() * PER_BATCH, "node {id}: {r}");
            assert_eq!(r["meta"]["node_id"], id, "{r}");
            assert!(
                r["meta"]["applied_index"].as_u64().unwrap() >= last_index,
                "{r}"
            );
        }
        // A write sent to a follower goes through the leader unnoticed,
        // and the follower answers once it has applied it.
        let follower = cluster.live().into_iter().find(|id| *id != leader).unwrap();
        let (status, body) = send(&cluster, follower, next, PER_BATCH);
        assert_eq!(status, 200, "forwarded batch {next}: {body}");
        assert_eq!(body["accepted"], PER_BATCH);
        let seen = get(
            &cluster,
            follower,
            &format!("/api/v1/requests?request_id=b{next}-0"),
        );
        assert_eq!(
            seen["data"].as_array().map(Vec::len),
            Some(1),
            "read your write: {seen}"
        );
        acked.insert(next);
        next += 1;

        cluster.kill9(leader);
        let (new_leader, _) = cluster.agreed_leader(Duration::from_secs(15));
        // Everything sent again under its key: acknowledged, stored once.
        for b in acked.clone() {
            let (status, body) = send(&cluster, new_leader, b, PER_BATCH);
            assert_eq!(status, 200, "resend of batch {b}: {body}");
            assert_eq!(body["accepted"], PER_BATCH, "{body}");
        }
        cluster.restart(leader);
        leader = new_leader;
        cluster.agreed_leader(Duration::from_secs(15));
    }
    // Every node, once it has applied all the leader committed, holds every
    // acknowledged event exactly once and answers alike.
    let want = acked.len() * PER_BATCH;
    converged(&cluster, want, Duration::from_secs(30));
    let events = toplog_tests::all_events(cluster.nodes[0].as_ref().unwrap());
    let ids: std::collections::BTreeSet<&str> = events
        .iter()
        .map(|e| e["request_id"].as_str().unwrap())
        .collect();
    assert_eq!((ids.len(), events.len()), (want, want), "each event once");
}

#[test]
fn a_frozen_leader_is_replaced_and_steps_down_when_it_wakes_without_acknowledging_alone() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), 3);
    let (leader, term) = cluster.agreed_leader(Duration::from_secs(20));
    let (status, body) = send(&cluster, leader, 0, 20);
    assert_eq!(status, 200, "{body}");

    cluster.signal(leader, libc::SIGSTOP);
    let frozen_at = Instant::now();
    let others: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    // Three of the longest election timeouts (20 ticks of 100 ms each).
    let (next, next_term) = cluster.agreed_leader_among(&others, Duration::from_secs(6));
    assert!(frozen_at.elapsed() < Duration::from_secs(6));
    assert!(
        next != leader && next_term > term,
        "{next} in {next_term} after {leader} in {term}"
    );
    let (status, body) = send(&cluster, next, 1, 20);
    assert_eq!(status, 200, "{body}");

    // A write the frozen leader takes when it wakes: it may be written
    // through the new leader, or refused; never acknowledged by the old
    // leader alone.
    let late = {
        let node = cluster.nodes[(leader - 1) as usize].as_ref().unwrap();
        let url = node.url("/api/v1/requests");
        std::thread::spawn(move || {
            let r = client()
                .post(url)
                .header("idempotency-key", "batch-2")
                .json(&batch(2, 20))
                .send()
                .unwrap();
            r.status().as_u16()
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    cluster.signal(leader, libc::SIGCONT);
    let late_status = late.join().unwrap();
    assert!(late_status == 200 || late_status == 503, "{late_status}");

    // It steps down: one leader, the new one, for all three.
    let (after, after_term) = cluster.agreed_leader(Duration::from_secs(10));
    assert_ne!(after, leader, "the woken leader took over again");
    assert!(after_term >= next_term);
    let want = if late_status == 200 { 60 } else { 40 };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let counts: Vec<Value> = (1..=3)
            .map(|id| get(&cluster, id, "/api/v1/requests/count?start=0")["count"].clone())
            .collect();
        // A refused write may still have been committed by the new leader
        // (then it is there once); an acknowledged one must be.
        if counts
            .iter()
            .all(|c| *c == want || (late_status == 503 && *c == 60))
            && counts.windows(2).all(|w| w[0] == w[1])
        {
            break;
        }
        assert!(Instant::now() < deadline, "counts {counts:?}, want {want}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_wiped_node_catches_up_by_snapshot_and_keeps_it_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    const PER_BATCH: usize = 40;
    let (mut cluster, leader) = short_log_cluster(dir.path(), 20, PER_BATCH);
    // A follower's disk is lost: killed, its data directory wiped.
    let lost = cluster.live().into_iter().find(|id| *id != leader).unwrap();
    cluster.kill9(lost);
    std::fs::remove_dir_all(cluster.data_dir(lost)).unwrap();
    for b in 20..40 {
        let (status, body) = send(&cluster, leader, b, PER_BATCH);
        assert_eq!(status, 200, "batch {b}: {body}");
    }
    // The leader's log no longer starts at the beginning.
    let deadline = Instant::now() + Duration::from_secs(20);
    while cluster.status(leader).unwrap()["log_first_index"]
        .as_u64()
        .unwrap()
        <= 1
    {
        assert!(
            Instant::now() < deadline,
            "the leader's log was never compacted"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.restart(lost);
    let top = converged(&cluster, 40 * PER_BATCH, Duration::from_secs(30));
    let status = cluster.status(lost).unwrap();
    assert!(
        status["log_first_index"].as_u64().unwrap() > 1,
        "node {lost} caught up without a snapshot: {status}"
    );
    let events = toplog_tests::all_events(cluster.nodes[(lost - 1) as usize].as_ref().unwrap());
    let ids: std::collections::BTreeSet<&str> = events
        .iter()
        .map(|e| e["request_id"].as_str().unwrap())
        .collect();
    assert_eq!((ids.len(), events.len()), (40 * PER_BATCH, 40 * PER_BATCH));

    // What it installed survives kill -9, and it follows the log on from it.
    cluster.kill9(lost);
    cluster.restart(lost);
    for b in 40..45 {
        let (status, body) = send(&cluster, leader, b, PER_BATCH);
        assert_eq!(status, 200, "batch {b}: {body}");
    }
    let after = converged(&cluster, 45 * PER_BATCH, Duration::from_secs(30));
    assert_ne!(after, top, "five more batches changed no count");
    // It can lead: the group keeps going with it and one other.
    cluster.kill9(leader);
    let (next, _) = cluster.agreed_leader(Duration::from_secs(15));
    let (status, body) = send(&cluster, next, 45, PER_BATCH);
    assert_eq!(status, 200, "{body}");
    converged(&cluster, 46 * PER_BATCH, Duration::from_secs(30));
}

#[test]
fn a_fourth_node_joins_as_a_learner_becomes_a_voter_and_a_member_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    const PER_BATCH: usize = 30;
    let (mut cluster, leader) = short_log_cluster(dir.path(), 15, PER_BATCH);
    // A retention change sent to a follower is in force on every member
    // (through the log); a bad one is refused where it is sent.
    let follower = cluster.live().into_iter().find(|id| *id != leader).unwrap();
    let put = |id: u64, body: Value| call(&cluster, id, "PUT", "/api/v1/retention", &body);
    let (status, body) = put(follower, serde_json::json!({"raw": {"keep_for": "20d"}}));
    assert_eq!(status, 200, "{body}");
    let (status, body) = put(follower, serde_json::json!({"raw": {"keep_for": "20x"}}));
    assert_eq!(status, 400, "{body}");
    let keep_for = |cluster: &Cluster, id| {
        get(cluster, id, "/api/v1/retention")["data"]["raw"]["keep_for"].clone()
    };
    for id in 1..=3 {
        assert_eq!(keep_for(&cluster, id), "20d", "node {id}");
    }

    // An API key made on one member works on every member (it goes through
    // the log); one revoked on another stops working everywhere. Both
    // changes are in every member's audit log.
    let r = client()
        .post(
            cluster.nodes[(follower - 1) as usize]
                .as_ref()
                .unwrap()
                .url("/api/v1/keys"),
        )
        .json(&serde_json::json!({"name": "dashboards", "role": "viewer"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text());
    let made: Value = r.json().unwrap();
    let (viewer, viewer_id) = (
        made["data"]["key"].as_str().unwrap().to_owned(),
        made["data"]["id"].as_str().unwrap().to_owned(),
    );
    let count_as = |cluster: &Cluster, id: u64, key: &str| {
        let node = cluster.nodes[(id - 1) as usize].as_ref().unwrap();
        reqwest::blocking::Client::new()
            .get(node.url("/api/v1/requests/count?start=0"))
            .bearer_auth(key)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    for id in 1..=3 {
        assert_eq!(count_as(&cluster, id, &viewer), 200, "node {id}");
    }
    // An aggregation job submitted to one member is kept, run and answered
    // by every member (its definition goes through the log).
    let now = toplog_tests::now_ms() / 300_000 * 300_000;
    let r = client()
        .post(
            cluster.nodes[(follower - 1) as usize]
                .as_ref()
                .unwrap()
                .url("/api/v1/requests/aggregate"),
        )
        .json(
            &serde_json::json!({"start_time": now - 3_600_000, "end_time": now + 300_000,
            "metrics": ["frequency"], "interval": "5m", "group_by": "endpoint"}),
        )
        .send()
        .unwrap();
    assert_eq!(r.status(), 202, "{:?}", r.text());
    let job_id = r.json::<Value>().unwrap()["aggregation_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let job_result = |cluster: &Cluster, id: u64| -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let body = get(cluster, id, &format!("/api/v1/requests/aggregate/{job_id}"));
            if body["data"]["state"] == "done" {
                return body["data"]["result"].clone();
            }
            assert!(Instant::now() < deadline, "node {id}: {body}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let result = job_result(&cluster, 1);
    assert!(!result.as_array().unwrap().is_empty(), "{result}");
    for id in 2..=3 {
        assert_eq!(job_result(&cluster, id), result, "node {id}");
    }

    // Node 4 starts knowing the first members only: it is not one yet.
    cluster.start_joining(4);
    let node4 = cluster.nodes[3].as_ref().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = client().get(node4.url("/readyz")).send().unwrap();
        assert_eq!(r.status(), 503);
        let body: Value = r.json().unwrap();
        if body["reason"]
            .as_str()
            .unwrap()
            .contains("not a member yet")
        {
            break;
        }
        assert!(Instant::now() < deadline, "{body}");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Only the leader changes membership; bad input is refused by name.
    let follower = cluster
        .live()
        .into_iter()
        .find(|id| *id != leader && *id != 4)
        .unwrap();
    let post = |id: u64, body: Value| call(&cluster, id, "POST", "/api/v1/cluster/members", &body);
    let add = serde_json::json!({"node_id": 4, "url": cluster.url(4)});
    assert_eq!(post(follower, add.clone()).0, 409);
    let (status, body) = post(leader, serde_json::json!({"node_id": 4, "url": "ftp://x"}));
    assert_eq!(
        (status, body["error"]["field"].clone()),
        (400, "url".into()),
        "{body}"
    );
    let (status, body) = post(
        leader,
        serde_json::json!({"node_id": 2, "url": cluster.url(2)}),
    );
    assert_eq!(status, 409, "{body}");
    let (status, body) = post(leader, add);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["role"], "learner");

    // It gets everything (by snapshot: the log was compacted), then votes.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (voters, learners) = voters_and_learners(&cluster.status(leader).unwrap());
        if voters == [1, 2, 3, 4] && learners.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 4 not promoted: voters {voters:?}, learners {learners:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    converged(&cluster, 15 * PER_BATCH, Duration::from_secs(30));
    let status4 = cluster.status(4).unwrap();
    assert_eq!(status4["leader_id"], leader, "{status4}");
    assert_eq!(
        keep_for(&cluster, 4),
        "20d",
        "the snapshot brought the policy"
    );
    assert_eq!(
        count_as(&cluster, 4, &viewer),
        200,
        "the snapshot brought the key"
    );
    assert_eq!(
        job_result(&cluster, 4),
        result,
        "the snapshot brought the job"
    );
    let audited = |id: u64| -> Vec<(String, String)> {
        get(&cluster, id, "/api/v1/audit")["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["method"].as_str().unwrap().to_owned(),
                    e["path"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let want = [("PUT", "/api/v1/retention"), ("POST", "/api/v1/keys")];
    for id in 1..=4 {
        let seen = audited(id);
        for (method, path) in want {
            assert!(
                seen.iter().any(|(m, p)| m == method && p == path),
                "node {id}'s audit log lacks {method} {path}: {seen:?}"
            );
        }
    }
    let node = cluster.nodes[(leader - 1) as usize].as_ref().unwrap();
    let r = client()
        .delete(node.url(&format!("/api/v1/keys/{viewer_id}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text());
    for id in 1..=4 {
        assert_eq!(
            count_as(&cluster, id, &viewer),
            401,
            "node {id} still takes a revoked key"
        );
    }
    assert_eq!(voters_and_learners(&status4).0, [1, 2, 3, 4]);

    // It can lead.
    let node = cluster.nodes[(leader - 1) as usize].as_ref().unwrap();
    let r = client()
        .post(node.url("/api/v1/cluster/leader"))
        .json(&serde_json::json!({"node_id": 4}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text());
    let (leader, _) = cluster.agreed_leader(Duration::from_secs(10));
    assert_eq!(leader, 4);

    // A member removed: the rest go on without it, and a majority of three
    // is two again (one more node down still leaves a quorum).
    let gone = 1;
    let node = cluster.nodes[(leader - 1) as usize].as_ref().unwrap();
    let r = client()
        .delete(node.url(&format!("/api/v1/cluster/members/{gone}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text());
    let r = client()
        .delete(node.url("/api/v1/cluster/members/9"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = client()
        .delete(node.url(&format!("/api/v1/cluster/members/{leader}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), 409);
    // Done once the joint configuration is left: no member is leaving.
    let deadline = Instant::now() + Duration::from_secs(10);
    while {
        let status = cluster.status(leader).unwrap();
        voters_and_learners(&status).0 != [2, 3, 4]
            || status["members"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["role"] == "leaving")
    } {
        assert!(Instant::now() < deadline, "node {gone} still a voter");
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.kill9(gone);
    let other = [2, 3].into_iter().find(|id| *id != leader).unwrap();
    cluster.kill9(other);
    let (status, body) = send(&cluster, leader, 15, PER_BATCH);
    assert_eq!(status, 200, "two of three voters: {body}");
    converged(&cluster, 16 * PER_BATCH, Duration::from_secs(30));
}

#[test]
fn the_leader_killed_ten_times_under_concurrent_ingest_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start_with(
        dir.path(),
        3,
        &["--raft-log-keep", "50", "--memtable-max-age", "300ms"],
    );
    cluster.agreed_leader(Duration::from_secs(20));
    let load = Load::start(&cluster.ports, 3);
    for round in 0..10 {
        let (leader, term) = cluster.agreed_leader(Duration::from_secs(15));
        std::thread::sleep(Duration::from_millis(300));
        cluster.kill9(leader);
        let (next, next_term) = cluster.agreed_leader(Duration::from_secs(15));
        assert!(next != leader && next_term > term, "round {round}");
        cluster.restart(leader);
    }
    load.finish_and_check(&cluster, 20);
}

#[test]
fn a_rolling_restart_under_load_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start_with(
        dir.path(),
        3,
        &["--raft-log-keep", "50", "--memtable-max-age", "300ms"],
    );
    cluster.agreed_leader(Duration::from_secs(20));
    let load = Load::start(&cluster.ports, 2);
    for id in 1..=3 {
        std::thread::sleep(Duration::from_millis(500));
        let node = cluster.nodes[(id - 1) as usize].take().unwrap();
        assert!(node.terminate().success(), "node {id} stopped uncleanly");
        cluster.restart(id);
        // The next goes once this one is back in the group.
        cluster.agreed_leader(Duration::from_secs(15));
    }
    load.finish_and_check(&cluster, 10);
}

#[test]
fn members_over_mutual_tls_prove_themselves_with_certificates_and_need_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    toplog_tests::succeeded(
        Command::new(binary())
            .args(["cert", "--out"])
            .arg(&certs)
            .args(["--host", "127.0.0.1"]),
    );
    // Every member has a certificate from one CA, whose name maps to `peer`.
    let config = dir.path().join("toplog.toml");
    let tls = format!(
        "[tls]\ncert_file = {:?}\nkey_file = {:?}\nclient_ca_file = {:?}\n",
        certs.join("node.pem"),
        certs.join("node.key"),
        certs.join("ca.pem")
    );
    std::fs::write(
        &config,
        format!("{tls}[tls.client_roles]\n\"toplog node\" = \"peer\"\n"),
    )
    .unwrap();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let spec = (ports.iter().enumerate())
        .map(|(i, p)| format!("{}=https://127.0.0.1:{p}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let nodes: Vec<Server> = (1..=3)
        .map(|id| {
            Server::start_listening(
                &format!("127.0.0.1:{}", ports[id - 1]),
                &dir.path().join(format!("node{id}")),
                &[
                    "--node-id",
                    &id.to_string(),
                    "--cluster",
                    &spec,
                    "--config",
                    config.to_str().unwrap(),
                ],
                &[],
            )
        })
        .collect();
    let ca = reqwest::Certificate::from_pem(&std::fs::read(certs.join("ca.pem")).unwrap()).unwrap();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {ADMIN_KEY}").parse().unwrap(),
    );
    let https = reqwest::blocking::Client::builder()
        .add_root_certificate(ca)
        .default_headers(headers)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let url = |i: usize, path: &str| format!("https://127.0.0.1:{}{path}", ports[i]);
    let status = |i: usize| -> Option<Value> {
        let body: Value = https
            .get(url(i, "/api/v1/cluster"))
            .send()
            .ok()?
            .json()
            .ok()?;
        Some(body["data"].clone())
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let leader = loop {
        let leaders: Vec<Option<u64>> = (0..3)
            .map(|i| status(i).and_then(|s| s["leader_id"].as_u64()))
            .collect();
        if let Some(Some(l)) = leaders.first()
            && leaders.iter().all(|x| *x == Some(*l))
        {
            break *l;
        }
        assert!(
            Instant::now() < deadline,
            "no agreed leader over mutual TLS: {leaders:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // A write to a follower goes to the leader over mutual TLS.
    let follower = (0..3).find(|i| *i as u64 + 1 != leader).unwrap();
    let r = https
        .post(url(follower, "/api/v1/requests"))
        .json(&batch(1, 25))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text());
    assert_eq!(r.json::<Value>().unwrap()["leader_id"], leader);
    for i in 0..3 {
        let r: Value = https
            .get(url(i, "/api/v1/requests/count?start=0&consistency=strong"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(r["count"], 25, "node {}: {r}", i + 1);
    }
    drop(nodes);

    // https:// members without a certificate name mapped to `peer`, or a
    // mix of schemes, do not start.
    std::fs::write(&config, &tls).unwrap();
    let refused = |spec: &str| {
        let out = Command::new(binary())
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--node-id",
                "1",
                "--cluster",
                spec,
                "--config",
            ])
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.path().join("refused"))
            .env("TOPLOG_ADMIN_KEY", ADMIN_KEY)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let stderr = refused("1=https://127.0.0.1:1,2=https://127.0.0.1:2");
    assert!(stderr.contains("mapped to \"peer\""), "{stderr}");
    let stderr = refused("1=https://127.0.0.1:1,2=http://127.0.0.1:2");
    assert!(stderr.contains("not a mix"), "{stderr}");
}

#[test]
fn an_encrypted_cluster_rekeyed_on_every_member_needs_its_old_key_no_more() {
    const K1: &str = "6b31000000000000000000000000000000000000000000000000000000000001";
    const K2: &str = "6b32000000000000000000000000000000000000000000000000000000000002";
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    let write_keys = |current: &str, listed: &[(&str, &str)]| {
        let mut text = format!("current = \"{current}\"\n[keys]\n");
        for (id, hex) in listed {
            text.push_str(&format!("{id} = \"{hex}\"\n"));
        }
        std::fs::write(&keys, text).unwrap();
    };
    write_keys("k1", &[("k1", K1)]);
    let keys_arg = keys.to_str().unwrap().to_owned();
    let mut cluster = Cluster::start_with(
        dir.path(),
        3,
        &[
            "--encryption-key-file",
            &keys_arg,
            "--raft-log-keep",
            "4",
            "--memtable-max-age",
            "100ms",
        ],
    );
    let (leader, _) = cluster.agreed_leader(Duration::from_secs(20));
    const PER_BATCH: usize = 20;
    for b in 0..12 {
        let (status, body) = send(&cluster, leader, b, PER_BATCH);
        assert_eq!(status, 200, "{body}");
    }
    // Rotation: k2 current, k1 still listed; every member restarted.
    write_keys("k2", &[("k1", K1), ("k2", K2)]);
    for id in 1..=3 {
        cluster.kill9(id);
        cluster.restart(id);
    }
    let (leader, _) = cluster.agreed_leader(Duration::from_secs(20));
    for b in 12..16 {
        let (status, body) = send(&cluster, leader, b, PER_BATCH);
        assert_eq!(status, 200, "{body}");
    }
    converged(&cluster, 16 * PER_BATCH, Duration::from_secs(30));
    // Envelopes sealed under k1 in a member's Raft directory (the header
    // names the key: magic, version 1, scheme 1, length 2, "k1").
    let under_k1 = |id: u64| -> usize {
        let needle = b"TPLGENC\0\x01\x01\x02k1";
        toplog_tests::files(&cluster.data_dir(id).join("raft"))
            .values()
            .map(|bytes| bytes.windows(needle.len()).filter(|w| w == needle).count())
            .sum()
    };
    assert!(
        (1..=3).map(under_k1).sum::<usize>() > 0,
        "the Raft logs hold no entry under k1: the check below proves nothing"
    );
    // Each member rekeyed: nothing it keeps needs k1 any more, its Raft
    // log and snapshots on offer included.
    for id in 1..=3 {
        let (status, body) = call(&cluster, id, "POST", "/api/v1/admin/rekey", &Value::Null);
        assert_eq!(status, 200, "node {id}: {body}");
        let state = get(&cluster, id, "/api/v1/admin/encryption");
        assert_eq!(
            state["data"]["retirable_keys"],
            serde_json::json!(["k1"]),
            "node {id}: {state}"
        );
        assert_eq!(under_k1(id), 0, "node {id}'s Raft directory still needs k1");
    }
    // k1 gone: every member starts, the group goes on, nothing is lost.
    write_keys("k2", &[("k2", K2)]);
    for id in 1..=3 {
        cluster.kill9(id);
        cluster.restart(id);
    }
    let (leader, _) = cluster.agreed_leader(Duration::from_secs(20));
    let (status, body) = send(&cluster, leader, 16, PER_BATCH);
    assert_eq!(status, 200, "{body}");
    converged(&cluster, 17 * PER_BATCH, Duration::from_secs(30));
}
