//! Alerting on a 3-node cluster (issue 22): rules and alert states go
//! through the Raft log, a new leader carries on, and a webhook sees each
//! notification's dedupe id at most twice.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use serde_json::Value;
use toplog_tests::cluster::*;
use toplog_tests::free_port;

#[test]
fn alert_rules_and_states_go_through_the_log_and_a_new_leader_carries_on() {
    const MIN: i64 = 60_000;
    let dir = tempfile::tempdir().unwrap();
    let clock = dir.path().join("clock");
    let base = (toplog_tests::now_ms() - 40 * MIN) / MIN * MIN;
    std::fs::write(&clock, base.to_string()).unwrap();
    let mut cluster = Cluster::start_with_env(
        dir.path(),
        3,
        &["--alert-grace", "0s"],
        &[("TOPLOG_TEST_CLOCK_FILE", clock.to_str().unwrap())],
    );
    let (leader, _) = cluster.agreed_leader(Duration::from_secs(20));
    let all = [1, 2, 3];
    let follower = *all.iter().find(|id| **id != leader).unwrap();

    // A webhook, and a rule made on a follower: through the log to every member.
    let receiver = toplog_tests::Receiver::start(free_port());
    let (status, channel) = call(
        &cluster,
        follower,
        "POST",
        "/api/v1/alerts/channels",
        &serde_json::json!({"name": "hook", "kind": "webhook",
            "url": format!("http://127.0.0.1:{}/hook", receiver.port)}),
    );
    assert_eq!(status, 201, "{channel}");
    let (status, made) = call(
        &cluster,
        follower,
        "POST",
        "/api/v1/alerts/rules",
        &serde_json::json!({"name": "5xx", "metric": "error_rate", "by": "endpoint", "window": "5m",
            "op": ">", "threshold": 0.2, "for": "1m", "min_count": 10,
            "channels": [channel["data"]["id"]]}),
    );
    assert_eq!(status, 201, "{made}");
    let rule = made["data"]["id"].as_str().unwrap().to_owned();

    let events = toplog_tests::error_burst(base);
    let (status, body) = call(
        &cluster,
        leader,
        "POST",
        "/api/v1/requests",
        &Value::Array(events),
    );
    assert_eq!(status, 200, "{body}");
    converged(&cluster, 1600, Duration::from_secs(30));

    for m in 1..=13 {
        judge_through(&cluster, &all, &clock, &rule, base + m * MIN + 1_000);
    }
    let firing: Vec<Value> = (all.iter())
        .map(|id| get(&cluster, *id, "/api/v1/requests/alerts")["alerts"].clone())
        .collect();
    assert!(firing.windows(2).all(|w| w[0] == w[1]), "{firing:?}");
    assert_eq!(firing[0].as_array().unwrap().len(), 1, "{firing:?}");
    assert_eq!(firing[0][0]["key"], "GET /a");
    assert_eq!(firing[0][0]["state"], "firing");

    let delivered = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while receiver.got().len() < n {
            assert!(Instant::now() < deadline, "delivered {:?}", receiver.got());
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    delivered(1);

    // The leader dies while the alert fires; the next one judges on.
    cluster.kill9(leader);
    let live: Vec<u64> = all.iter().copied().filter(|id| *id != leader).collect();
    cluster.agreed_leader_among(&live, Duration::from_secs(20));
    for m in 14..=20 {
        judge_through(&cluster, &live, &clock, &rule, base + m * MIN + 1_000);
    }
    let histories: Vec<Value> = (live.iter())
        .map(|id| get(&cluster, *id, "/api/v1/alerts/history?kind=transition")["data"].clone())
        .collect();
    assert!(histories.windows(2).all(|w| w[0] == w[1]), "{histories:?}");
    let states: Vec<&str> = (histories[0].as_array().unwrap().iter())
        .map(|h| h["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["resolved", "firing", "pending"], "newest first");
    for id in &live {
        assert_eq!(
            get(&cluster, *id, "/api/v1/requests/alerts")["alerts"],
            serde_json::json!([])
        );
    }
    // The new leader notified the resolution; each notification's dedupe
    // id reached the receiver at most twice (once more if a leader died
    // between sending and recording).
    delivered(2);
    std::thread::sleep(Duration::from_secs(2));
    let mut by_id: std::collections::BTreeMap<String, (String, usize)> = Default::default();
    for (_, body) in receiver.got() {
        let entry = by_id
            .entry(body["dedupe_id"].as_str().unwrap().to_owned())
            .or_insert((body["state"].as_str().unwrap().to_owned(), 0));
        entry.1 += 1;
    }
    let states: Vec<&str> = by_id.values().map(|(s, _)| s.as_str()).collect();
    assert_eq!(states.len(), 2, "{by_id:?}");
    assert!(
        states.contains(&"firing") && states.contains(&"resolved"),
        "{by_id:?}"
    );
    assert!(by_id.values().all(|(_, n)| *n <= 2), "{by_id:?}");
}
