//! Starts the real binary, writes from several connections at once, `kill -9`s
//! it at random moments (20 times), and checks after every restart that each
//! acknowledged event is stored exactly once. Batches whose outcome was unknown
//! are retried with their idempotency key and must not be applied twice.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::{Value, json};
use toplog_tests::{Server, all_events, client, now_ms};

const WRITERS: usize = 4;
const ROUNDS: usize = 20;
const SERVER_ARGS: [&str; 6] = [
    "--partition",
    "1h",
    "--memtable-max-bytes",
    "300000",
    "--memtable-max-age",
    "1s",
];

#[derive(Default)]
struct Ledger {
    /// request id -> batch, for every batch acknowledged with 200.
    acked: HashSet<String>,
    /// Keyed batches sent whose outcome is unknown; retried after the restart.
    pending: Vec<(String, Vec<Value>)>,
}

fn batch(rng: &mut StdRng, tag: &str) -> Vec<Value> {
    let endpoints = [
        "GET /api/items/{id}",
        "POST /api/orders",
        "GET /health",
        "PUT /api/users/{id}",
    ];
    (0..rng.random_range(1..30))
        .map(|i| {
            json!({
                "request_id": format!("{tag}-{i}"),
                // Three hours: several 1h partitions per flush, without thousands of tiny segments.
                "timestamp": now_ms() - rng.random_range(0..3 * 3_600_000i64),
                "user_id": format!("user-{}", rng.random_range(0..50)),
                "endpoint": endpoints[rng.random_range(0..endpoints.len())],
                "status_code": ([200, 200, 200, 404, 503])[rng.random_range(0..5)],
                "latency_ms": rng.random_range(0.0..900.0),
            })
        })
        .collect()
}

/// Sends one batch; `Some(true)` = acknowledged, `Some(false)` = rejected, `None` = unknown (connection died).
fn send(
    client: &reqwest::blocking::Client,
    server: &str,
    key: Option<&str>,
    events: &[Value],
) -> Option<bool> {
    let mut req = client
        .post(format!("{server}/api/v1/requests"))
        .json(&events);
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    match req.send() {
        Ok(r) if r.status() == 200 => Some(true),
        Ok(r) if r.status().is_server_error() => None,
        Ok(r) => panic!(
            "unexpected {} for a valid batch: {}",
            r.status(),
            r.text().unwrap_or_default()
        ),
        Err(_) => None,
    }
}

fn verify(server: &Server, ledger: &Ledger, round: usize) -> usize {
    let events = all_events(server);
    let mut seen: HashMap<String, usize> = HashMap::new();
    for e in &events {
        *seen
            .entry(e["request_id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let dup: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(
        dup.is_empty(),
        "round {round}: events stored more than once: {dup:?}"
    );
    let lost: Vec<_> = ledger
        .acked
        .iter()
        .filter(|id| !seen.contains_key(*id))
        .take(5)
        .collect();
    assert!(
        lost.is_empty(),
        "round {round}: acknowledged events lost: {lost:?} (of {})",
        ledger.acked.len()
    );
    let count: Value = client()
        .get(server.url("/api/v1/requests/count"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        count["count"].as_u64(),
        Some(events.len() as u64),
        "round {round}: count disagrees with the listing"
    );
    eprintln!(
        "round {round}: {} events stored, {} acknowledged so far",
        events.len(),
        ledger.acked.len()
    );
    events.len()
}

#[test]
fn kill_9_at_random_moments_loses_no_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut rng = StdRng::seed_from_u64(0x7091);
    let mut batch_no = 0usize;
    for round in 0..ROUNDS {
        let server = Server::start_ready(dir.path(), &SERVER_ARGS);
        verify(&server, &ledger.lock().unwrap(), round);

        // Retry batches whose fate the last crash hid: exactly-once thanks to their keys.
        let pending = std::mem::take(&mut ledger.lock().unwrap().pending);
        let c = client();
        for (key, events) in pending {
            assert_eq!(
                send(&c, &server.base, Some(&key), &events),
                Some(true),
                "retry of {key} failed"
            );
            ledger.lock().unwrap().acked.extend(
                events
                    .iter()
                    .map(|e| e["request_id"].as_str().unwrap().to_owned()),
            );
        }

        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (ledger, stop, base) = (ledger.clone(), stop.clone(), server.base.clone());
                let seed = rng.random::<u64>();
                let first = batch_no + w * 100_000;
                std::thread::spawn(move || {
                    let mut rng = StdRng::seed_from_u64(seed);
                    let c = client();
                    for n in first.. {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        // Paced so that twenty rounds stay a few tens of thousands of events:
                        // each restart re-reads everything over HTTP.
                        std::thread::sleep(Duration::from_millis(15));
                        let tag = format!("r{round}-w{w}-b{n}");
                        let events = batch(&mut rng, &tag);
                        let key = rng.random_bool(0.5).then(|| tag.clone());
                        match send(&c, &base, key.as_deref(), &events) {
                            Some(true) => ledger.lock().unwrap().acked.extend(
                                events
                                    .iter()
                                    .map(|e| e["request_id"].as_str().unwrap().to_owned()),
                            ),
                            Some(false) => unreachable!(),
                            None => {
                                if let Some(k) = key {
                                    ledger.lock().unwrap().pending.push((k, events));
                                }
                                return;
                            }
                        }
                    }
                })
            })
            .collect();
        batch_no += WRITERS * 100_000;
        std::thread::sleep(Duration::from_millis(rng.random_range(50..1500)));
        server.kill9();
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.join().unwrap();
        }
    }

    // Finally a clean stop: SIGTERM exits 0, and a restart serves the same events.
    let server = Server::start_ready(dir.path(), &SERVER_ARGS);
    let c = client();
    let pending = std::mem::take(&mut ledger.lock().unwrap().pending);
    for (key, events) in pending {
        assert_eq!(send(&c, &server.base, Some(&key), &events), Some(true));
        ledger.lock().unwrap().acked.extend(
            events
                .iter()
                .map(|e| e["request_id"].as_str().unwrap().to_owned()),
        );
    }
    let ledger = ledger.lock().unwrap();
    let before = verify(&server, &ledger, ROUNDS);
    assert!(
        ledger.acked.len() > 1000,
        "the writers acknowledged too little to mean anything: {}",
        ledger.acked.len()
    );
    let listing = all_events(&server);
    assert!(server.terminate().success(), "SIGTERM must exit cleanly");
    let server = Server::start_ready(dir.path(), &SERVER_ARGS);
    assert_eq!(verify(&server, &ledger, ROUNDS + 1), before);
    assert_eq!(
        all_events(&server),
        listing,
        "a clean restart must serve identical events"
    );
}
