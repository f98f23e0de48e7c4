//! A sharded cluster's test helpers (tests/tests/shards.rs): batches of
//! varied events written under idempotency keys by concurrent writers,
//! the batches that were not acknowledged completed by their retries, the
//! shard map as a node shows it, a node's events checked against the
//! model, and the comparison mix asked of a node and judged against
//! DuckDB's answers over the model (tests/shards/duckdb_mix.py).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cluster::{Cluster, get};
use crate::{all_events, client, utc};

/// Events per batch.
pub const BATCH: usize = 40;
pub const DAY_MS: i64 = 86_400_000;

/// splitmix64: the fields of event `i` of batch `b`, the same every time.
pub fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Batch `b`: its events, timestamped before `t0` (half in the last hour,
/// most of the rest in the last day, some up to three days back), over a
/// few busy endpoints and many quiet ones, 300 users, some errors.
pub fn batch(t0: i64, b: usize) -> Vec<Value> {
    (0..BATCH)
        .map(|i| {
            let h = splitmix((b * 1000 + i) as u64);
            let back = match h % 10 {
                0..=4 => (h >> 8) % 3_600_000,
                5..=8 => (h >> 8) % DAY_MS as u64,
                _ => (h >> 8) % (3 * DAY_MS as u64),
            } as i64;
            // Each endpoint its own latency scale (10% apart), so that a
            // ranking by p99 is not decided inside the sketch's error.
            let (endpoint, scale) = if (h >> 40).is_multiple_of(2) {
                let k = (h >> 41) % 5;
                (format!("GET /hot/{k}"), 40 + k)
            } else {
                let k = (h >> 41) % 40;
                (format!("GET /cold/{k}"), k)
            };
            let latency_us =
                (((h >> 32) % 400_000) as f64 * 1.1f64.powi(scale as i32)) as u64 + 500;
            json!({
                "request_id": format!("s{b}-{i}"),
                "timestamp": t0 - 1 - back,
                "endpoint": endpoint,
                "user_id": format!("u{}", (h >> 20) % 300),
                "method": "GET",
                "status_code": match h % 17 { 0 => 500, 1 => 503, 2 => 404, _ => 200 },
                "latency_ms": latency_us as f64 / 1000.0,
            })
        })
        .collect()
}

/// Sends batch `b` under its key to the node at `url`: whether it was
/// acknowledged.
pub fn send(url: &str, t0: i64, b: usize) -> (u16, Value) {
    match client()
        .post(format!("{url}/api/v1/requests"))
        .header("idempotency-key", format!("shards-{b}"))
        .json(&batch(t0, b))
        .send()
    {
        Ok(r) => (r.status().as_u16(), r.json().unwrap_or(Value::Null)),
        Err(_) => (0, Value::Null),
    }
}

/// Sends `batch` to node `id` under idempotency key `key` until it is
/// acknowledged (a shard's leadership may be changing hands just after
/// start-up): the answer.
pub fn send_until_taken(cluster: &Cluster, id: u64, key: &str, batch: &Value) -> Value {
    let node = cluster.nodes[(id - 1) as usize].as_ref().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = client()
            .post(node.url("/api/v1/requests"))
            .header("idempotency-key", key)
            .json(batch)
            .send()
            .unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().unwrap_or(Value::Null);
        if status == 200 {
            return body;
        }
        assert_eq!(status, 503, "{body}");
        assert!(Instant::now() < deadline, "{body}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Writers sending batches through every node in turn, each until one
/// acknowledges it or it has tried a while.
pub struct Writers {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Vec<(usize, bool)>>>,
}

impl Writers {
    pub fn start(cluster: &Cluster, t0: i64, first: usize, writers: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..writers)
            .map(|w| {
                let stop = stop.clone();
                let urls: Vec<String> = (1..=cluster.ports.len() as u64)
                    .map(|id| cluster.url(id))
                    .collect();
                std::thread::spawn(move || {
                    let mut sent = Vec::new();
                    let mut b = first + w;
                    let mut turn = w;
                    while !stop.load(Ordering::Relaxed) {
                        let mut acked = false;
                        for _ in 0..20 {
                            turn += 1;
                            if send(&urls[turn % urls.len()], t0, b).0 == 200 {
                                acked = true;
                                break;
                            }
                            std::thread::sleep(Duration::from_millis(100));
                        }
                        sent.push((b, acked));
                        b += writers;
                    }
                    sent
                })
            })
            .collect();
        Self { stop, threads }
    }

    /// Stops them: every batch sent, and whether it was acknowledged.
    pub fn finish(self) -> Vec<(usize, bool)> {
        self.stop.store(true, Ordering::Relaxed);
        (self.threads.into_iter())
            .flat_map(|t| t.join().unwrap())
            .collect()
    }
}

/// Every batch of `sent` acknowledged: those that were not are sent again
/// under their keys until they are (the parts stored the first time are
/// applied once). The events the cluster then holds.
pub fn settle(
    cluster: &Cluster,
    t0: i64,
    sent: &[(usize, bool)],
    model: &mut BTreeMap<String, Value>,
) {
    let unacked = sent.iter().filter(|(_, a)| !a).count();
    eprintln!("{} batches sent, {unacked} sent again", sent.len());
    for (b, acked) in sent {
        if !acked {
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut turn = *b;
            loop {
                turn += 1;
                let id = cluster.live()[turn % cluster.live().len()];
                let (status, body) = send(&cluster.url(id), t0, *b);
                if status == 200 {
                    break;
                }
                assert!(Instant::now() < deadline, "batch {b}: {status} {body}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        for e in batch(t0, *b) {
            model.insert(e["request_id"].as_str().unwrap().to_owned(), e);
        }
    }
}

/// The cluster's view from node `id` (admin-only `GET /api/v1/cluster`).
pub fn view(cluster: &Cluster, id: u64) -> Value {
    get(cluster, id, "/api/v1/cluster")["data"].clone()
}

/// Waits until every shard has a leader as node `id` sees it, and no move
/// is under way; the shards.
pub fn shards_settled(cluster: &Cluster, id: u64, count: usize, within: Duration) -> Vec<Value> {
    let deadline = Instant::now() + within;
    loop {
        let shards = view(cluster, id)["shards"].clone();
        if let Some(list) = shards.as_array()
            && list.len() == count
            && list
                .iter()
                .all(|s| s["leader_id"].is_u64() && s["moving"].is_null())
        {
            return list.clone();
        }
        assert!(Instant::now() < deadline, "shards not settled: {shards}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Node `id` holds exactly the events of `model`: each once, nothing else.
pub fn holds_exactly(cluster: &Cluster, id: u64, model: &BTreeMap<String, Value>) {
    let node = cluster.nodes[(id - 1) as usize].as_ref().unwrap();
    let events = all_events(node);
    let ids: BTreeSet<&str> = events
        .iter()
        .map(|e| e["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), events.len(), "node {id}: an event stored twice");
    let want: BTreeSet<&str> = model.keys().map(String::as_str).collect();
    assert_eq!(
        ids.difference(&want).count() + want.difference(&ids).count(),
        0,
        "node {id}: {} events not sent, {} sent and missing",
        ids.difference(&want).count(),
        want.difference(&ids).count()
    );
}

pub fn rfc3339(us: i64) -> String {
    utc(us / 1000).1
}

/// The comparison mix (benches/compare.py's query shapes), over ranges
/// ending at `end_us`, as node `id` answers it.
pub fn mix_answers(cluster: &Cluster, id: u64, end_us: i64) -> Vec<Value> {
    let day = DAY_MS * 1000;
    let top = |metric: &str, by: &str, len: i64, min_count: u64| {
        let start = end_us - len;
        let path = format!(
            "/api/v1/requests/top-k?k=10&metric={metric}&by={by}&min_count={min_count}&start={}&end={}",
            rfc3339(start),
            rfc3339(end_us)
        );
        json!({"kind": "top_k", "metric": metric, "by": by, "min_count": min_count,
               "start_us": start, "end_us": end_us, "path": path})
    };
    let first_day = (end_us / day - 3) * day;
    let mut mix = vec![
        top("frequency", "endpoint", 3_600_000_000, 0),
        top("frequency", "endpoint", day, 0),
        top("frequency", "endpoint", 3 * day + 3_600_000_000, 0),
        top("frequency", "user_id", 3 * day + 3_600_000_000, 0),
        top("errors", "user_id", day, 0),
        top("latency_max", "endpoint", day, 0),
        top("latency_p99", "endpoint", day, 100),
        top("error_rate", "endpoint", day, 100),
        json!({"kind": "history", "start_us": first_day, "end_us": end_us / day * day + day,
               "path": format!("/api/v1/requests/history?start_date={}&end_date={}",
                               utc(first_day / 1000).0, utc(end_us / 1000).0)}),
        json!({"kind": "timeseries", "metric": "frequency", "endpoint": "GET /hot/1",
               "start_us": end_us - day, "end_us": end_us,
               "path": format!("/api/v1/requests/timeseries?metric=frequency&interval=1m&endpoint=GET%20/hot/1&start={}&end={}",
                               rfc3339(end_us - day), rfc3339(end_us))}),
    ];
    for q in &mut mix {
        let answer = get(cluster, id, q["path"].as_str().unwrap());
        assert_eq!(answer["status"], "success", "node {id}: {q}: {answer}");
        q["answer"] = answer;
    }
    mix
}

/// Every query of the mix, as each of `ids` answers it, equals DuckDB's
/// answer over `model` (quantiles within 2%); the nodes answer alike.
pub fn mix_equals_duckdb(
    cluster: &Cluster,
    ids: &[u64],
    end_us: i64,
    model: &BTreeMap<String, Value>,
) {
    let work = tempfile::tempdir().unwrap();
    let events = work.path().join("events.ndjson");
    let lines: Vec<String> = model.values().map(Value::to_string).collect();
    std::fs::write(&events, lines.join("\n")).unwrap();
    let mut first: Option<Vec<Value>> = None;
    for id in ids {
        let mix = mix_answers(cluster, *id, end_us);
        let queries = work.path().join(format!("queries-{id}.json"));
        std::fs::write(&queries, serde_json::to_vec(&mix).unwrap()).unwrap();
        let out = std::process::Command::new("python3")
            .arg(crate::manifest_dir().join("shards/duckdb_mix.py"))
            .arg(&events)
            .arg(&queries)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "duckdb_mix.py (scripts/test.sh installs duckdb): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let agreements: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
        for (q, a) in mix.iter().zip(&agreements) {
            let ok =
                a == "exact" || (q["metric"] == "latency_p99" && a == "10/10 keys, p99 within 2%");
            assert!(ok, "node {id}: {}: {a}: {}", q["path"], q["answer"]);
        }
        let data: Vec<Value> = mix.iter().map(|q| q["answer"]["data"].clone()).collect();
        match &first {
            None => first = Some(data),
            Some(f) => assert_eq!(f, &data, "node {id} answers otherwise than node {}", ids[0]),
        }
        let top = &mix[0]["answer"]["meta"];
        assert!(top["keys_exchanged"]["sent"].as_u64().unwrap() > 0, "{top}");
        eprintln!(
            "node {id}: the mix equals DuckDB's ({agreements:?}); a top-K exchanged {}",
            top["keys_exchanged"]
        );
    }
}
