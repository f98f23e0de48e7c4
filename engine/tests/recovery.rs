//! Crash and restart tests of the engine on a simulated disk that loses
//! unsynced writes: every acknowledged batch survives exactly once, no batch is
//! half-applied, and a clean restart gives back the same store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng, rngs::StdRng};
use toplog_engine::{Engine, EngineConfig, Filters, TimeRange};
use toplog_types::{Event, Micros};
use toplog_wal::{Fs, SimFs};

const HOUR_US: i64 = 3_600_000_000;

fn config() -> EngineConfig {
    let mut c = EngineConfig::new("/data");
    c.partition = Duration::from_secs(3600);
    // Small memtables so flushes (segments, manifest swaps, log truncation) happen mid-test.
    c.memtable_max_bytes = 6_000;
    c.memtable_max_age = Duration::from_millis(20);
    c.wal_segment_bytes = 8_192;
    c
}

fn event(rng: &mut StdRng, id: String, base: i64) -> Event {
    let endpoints = ["GET /a", "POST /b/{id}", "GET /c", "DELETE /d/{id}"];
    Event {
        request_id: id,
        // Spread over 5 hours so batches touch several partitions.
        timestamp: Micros::new(base + rng.random_range(0..5 * HOUR_US)),
        user_id: format!("u{}", rng.random_range(0..20)),
        endpoint: endpoints[rng.random_range(0..endpoints.len())].to_owned(),
        method: String::new(),
        status_code: [200, 200, 201, 404, 500][rng.random_range(0..5)],
        latency_us: rng.random_range(0..2_000_000),
    }
}

fn everything() -> TimeRange {
    TimeRange {
        start: Micros::new(0),
        end: Micros::new(i64::MAX),
    }
}

/// All stored events, read back page by page.
fn read_all(engine: &Engine) -> Vec<Event> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = engine
            .scan(everything(), &Filters::default(), cursor.as_ref(), 37)
            .unwrap();
        out.extend(page.events);
        match page.next {
            Some(c) => cursor = Some(c),
            None => return out,
        }
    }
}

type Acked = Arc<Mutex<Vec<(String, Vec<Event>)>>>;

/// Writers ingest batches until stopped; returns the batches they sent and those acknowledged.
fn run_writers(
    engine: Arc<Engine>,
    seed: u64,
    writers: usize,
    acked: Acked,
    sent: Acked,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..writers)
        .map(|w| {
            let (engine, acked, sent) = (engine.clone(), acked.clone(), sent.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                let mut rng = StdRng::seed_from_u64(seed * 100 + w as u64);
                let base = 1_700_000_000_000_000;
                for b in 0..400 {
                    let key = format!("w{w}-b{b}");
                    let n = rng.random_range(1..12);
                    let events: Vec<Event> = (0..n)
                        .map(|i| event(&mut rng, format!("{key}-e{i}"), base))
                        .collect();
                    sent.lock().unwrap().push((key.clone(), events.clone()));
                    let idem = rng.random_bool(0.5).then(|| key.clone());
                    match rt.block_on(engine.ingest(events.clone(), idem)) {
                        Ok(r) => {
                            assert!(!r.replayed);
                            acked.lock().unwrap().push((key, events));
                        }
                        Err(_) => return, // the disk "lost power"; stop writing
                    }
                }
            })
        })
        .collect()
}

#[test]
fn simulated_crashes_lose_no_acknowledged_batch_and_apply_none_twice_or_in_part() {
    for seed in 0..25u64 {
        let fs = SimFs::new(seed);
        let engine = Arc::new(Engine::open_with(Arc::new(fs.clone()), config()).unwrap());
        let acked: Acked = Arc::default();
        let sent: Acked = Arc::default();
        let handles = run_writers(engine.clone(), seed, 3, acked.clone(), sent.clone());
        let mut rng = StdRng::seed_from_u64(seed);
        std::thread::sleep(Duration::from_millis(rng.random_range(5..120)));
        // Everything acknowledged before the copy was durable when the copy was taken.
        let acked_before: Vec<(String, Vec<Event>)> = acked.lock().unwrap().clone();
        let crashed = fs.crashed_copy();
        fs.fail_writes(Some(std::io::ErrorKind::Other));
        for h in handles {
            h.join().unwrap();
        }
        let _ = engine.close();

        let recovered = Engine::open_with(Arc::new(crashed.clone()), config()).unwrap();
        let stored = read_all(&recovered);
        let mut by_id: BTreeMap<&str, &Event> = BTreeMap::new();
        for e in &stored {
            assert!(
                by_id.insert(&e.request_id, e).is_none(),
                "seed {seed}: {} stored twice",
                e.request_id
            );
        }
        for (key, events) in &acked_before {
            for e in events {
                assert_eq!(
                    by_id.get(e.request_id.as_str()),
                    Some(&e),
                    "seed {seed}: acknowledged batch {key} lost"
                );
            }
        }
        // Whole batches or nothing: a batch is either entirely present or entirely absent.
        let mut seen_batches = 0;
        for (key, events) in sent.lock().unwrap().iter() {
            let present = events
                .iter()
                .filter(|e| by_id.contains_key(e.request_id.as_str()))
                .count();
            assert!(
                present == 0 || present == events.len(),
                "seed {seed}: batch {key} half applied ({present}/{})",
                events.len()
            );
            seen_batches += usize::from(present > 0);
        }
        assert_eq!(
            recovered.count(everything(), &Filters::default()).unwrap(),
            stored.len() as u64
        );
        assert!(seen_batches >= acked_before.len());
        recovered.close().unwrap();
    }
}

#[test]
fn clean_restart_and_crash_after_close_give_identical_stores() {
    let fs = SimFs::new(7);
    let engine = Arc::new(Engine::open_with(Arc::new(fs.clone()), config()).unwrap());
    let acked: Acked = Arc::default();
    for h in run_writers(engine.clone(), 7, 2, acked.clone(), Arc::default()) {
        h.join().unwrap();
    }
    let before = read_all(&engine);
    assert_eq!(
        before.len(),
        acked
            .lock()
            .unwrap()
            .iter()
            .map(|(_, e)| e.len())
            .sum::<usize>()
    );
    engine.close().unwrap();
    drop(engine);
    // Closed, everything is in segments: the log keeps no entry (one file of
    // a header alone, 24 bytes, to go on from).
    let wal = std::path::Path::new("/data/wal");
    let logs = fs.list(wal).unwrap();
    let sizes: Vec<usize> = (logs.iter())
        .map(|f| fs.read(&wal.join(f)).unwrap().len())
        .collect();
    assert_eq!(sizes, vec![24], "{logs:?}");

    let reopened = Engine::open_with(Arc::new(fs.clone()), config()).unwrap();
    assert_eq!(read_all(&reopened), before);
    reopened.close().unwrap();
    // Power loss right after a clean close loses nothing either.
    let crashed = fs.crashed_copy();
    let again = Engine::open_with(Arc::new(crashed), config()).unwrap();
    assert_eq!(read_all(&again), before);
}

#[test]
fn idempotency_keys_survive_restarts_and_flushes() {
    let fs = SimFs::new(3);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut rng = StdRng::seed_from_u64(3);
    let batch: Vec<Event> = (0..5)
        .map(|i| event(&mut rng, format!("k-{i}"), 1_700_000_000_000_000))
        .collect();
    let engine = Engine::open_with(Arc::new(fs.clone()), config()).unwrap();
    let first = rt
        .block_on(engine.ingest(batch.clone(), Some("key-1".into())))
        .unwrap();
    assert!(!first.replayed);
    let again = rt
        .block_on(engine.ingest(batch.clone(), Some("key-1".into())))
        .unwrap();
    assert_eq!((again.replayed, again.accepted), (true, 5));
    // Crash before any flush: the key comes back from the log.
    let crashed = fs.crashed_copy();
    engine.close().unwrap();
    let e2 = Engine::open_with(Arc::new(crashed.clone()), config()).unwrap();
    assert!(
        rt.block_on(e2.ingest(batch.clone(), Some("key-1".into())))
            .unwrap()
            .replayed
    );
    // After a flush the log is truncated: the key comes back from the key file.
    e2.flush().unwrap();
    e2.close().unwrap();
    let e3 = Engine::open_with(Arc::new(crashed), config()).unwrap();
    assert!(
        rt.block_on(e3.ingest(batch.clone(), Some("key-1".into())))
            .unwrap()
            .replayed
    );
    assert_eq!(e3.count(everything(), &Filters::default()).unwrap(), 5);
    // A different key is a different batch.
    assert!(
        !rt.block_on(e3.ingest(batch, Some("key-2".into())))
            .unwrap()
            .replayed
    );
    assert_eq!(e3.count(everything(), &Filters::default()).unwrap(), 10);
}

/// A key is remembered for its window and no longer; past the limit of keys
/// a batch with a new key is refused (a known key still replays, a batch
/// without a key still goes in), and room comes back as keys leave the window.
#[test]
fn idempotency_keys_expire_after_their_window_and_new_ones_stop_at_the_limit() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut rng = StdRng::seed_from_u64(5);
    let mut c = config();
    c.idempotency_window = Duration::from_millis(300);
    c.max_idempotency_keys = 2;
    let engine = Engine::open_with(Arc::new(SimFs::new(5)), c).unwrap();
    let base = Micros::now().get() - HOUR_US;
    let batch = |rng: &mut StdRng, tag: &str| -> Vec<Event> {
        (0..3)
            .map(|i| event(rng, format!("{tag}-{i}"), base))
            .collect()
    };
    let mut send = |key: Option<&str>, tag: &str| {
        let events = batch(&mut rng, tag);
        rt.block_on(engine.ingest(events, key.map(str::to_owned)))
    };
    assert!(!send(Some("k1"), "a").unwrap().replayed);
    assert!(!send(Some("k2"), "b").unwrap().replayed);
    assert!(matches!(
        send(Some("k3"), "c"),
        Err(toplog_engine::EngineError::TooManyIdempotencyKeys { limit: 2 })
    ));
    assert!(
        send(Some("k1"), "a").unwrap().replayed,
        "a known key still replays"
    );
    assert!(
        !send(None, "d").unwrap().replayed,
        "a batch without a key goes in"
    );
    assert_eq!(engine.count(everything(), &Filters::default()).unwrap(), 9);
    std::thread::sleep(Duration::from_millis(400));
    // Past the window: k1 is a new batch again, and there is room for k3.
    assert!(!send(Some("k1"), "e").unwrap().replayed);
    assert!(!send(Some("k3"), "f").unwrap().replayed);
    assert_eq!(engine.count(everything(), &Filters::default()).unwrap(), 15);
}

#[test]
fn failed_fsync_stops_writes_and_loses_nothing_acknowledged() {
    let fs = SimFs::new(11);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut rng = StdRng::seed_from_u64(11);
    let engine = Engine::open_with(Arc::new(fs.clone()), config()).unwrap();
    let mut acked = Vec::new();
    for i in 0..5 {
        let b = vec![event(&mut rng, format!("f-{i}"), 1_700_000_000_000_000)];
        rt.block_on(engine.ingest(b.clone(), None)).unwrap();
        acked.extend(b);
    }
    fs.fail_syncs_after(0);
    let err = rt.block_on(engine.ingest(
        vec![event(&mut rng, "f-x".into(), 1_700_000_000_000_000)],
        None,
    ));
    assert!(err.is_err());
    assert!(engine.health().is_err(), "a failed fsync must stop writes");
    fs.heal();
    // Never retried: still refused after the disk "recovers".
    assert!(
        rt.block_on(engine.ingest(
            vec![event(&mut rng, "f-y".into(), 1_700_000_000_000_000)],
            None
        ))
        .is_err()
    );
    let crashed = fs.crashed_copy();
    let recovered = Engine::open_with(Arc::new(crashed), config()).unwrap();
    let ids: BTreeSet<String> = read_all(&recovered)
        .into_iter()
        .map(|e| e.request_id)
        .collect();
    for e in &acked {
        assert!(ids.contains(&e.request_id));
    }
    assert!(!ids.contains("f-y"));
}

#[test]
fn filters_ranges_and_paging_match_a_brute_force_model() {
    let fs = SimFs::new(5);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut rng = StdRng::seed_from_u64(5);
    let engine = Engine::open_with(Arc::new(fs), config()).unwrap();
    let base = 1_700_000_000_000_000;
    let mut all = Vec::new();
    for b in 0..60 {
        let mut events: Vec<Event> = (0..10)
            .map(|i| event(&mut rng, format!("p{b}-{i}"), base))
            .collect();
        // Duplicate (timestamp, request id) pairs must page correctly too.
        if b % 7 == 0 {
            let dup = events[0].clone();
            events.push(dup.clone());
            events.push(dup);
        }
        for e in &mut events {
            e.method = toplog_types::method_from_endpoint(&e.endpoint)
                .unwrap_or("")
                .to_owned();
        }
        rt.block_on(engine.ingest(events.clone(), None)).unwrap();
        all.extend(events);
        if b % 20 == 0 {
            engine.flush().unwrap();
        }
    }
    for _ in 0..40 {
        let a = base + rng.random_range(0..5 * HOUR_US);
        let b = base + rng.random_range(0..5 * HOUR_US);
        let range = TimeRange {
            start: Micros::new(a.min(b)),
            end: Micros::new(a.max(b) + 1),
        };
        let filters = Filters {
            endpoint: rng.random_bool(0.3).then(|| "GET /a".to_owned()),
            user_id: rng
                .random_bool(0.3)
                .then(|| format!("u{}", rng.random_range(0..20))),
            status_code: rng.random_bool(0.3).then_some(200),
            // Counts without a request id read segments decoded without
            // their request ids; with one, and pages, decode them again.
            request_id: rng
                .random_bool(0.2)
                .then(|| all[rng.random_range(0..all.len())].request_id.clone()),
            ..Filters::default()
        };
        let mut want: Vec<&Event> = all
            .iter()
            .filter(|e| range.start <= e.timestamp && e.timestamp < range.end)
            .filter(|e| {
                filters
                    .request_id
                    .as_deref()
                    .is_none_or(|x| e.request_id == x)
            })
            .filter(|e| filters.endpoint.as_deref().is_none_or(|x| e.endpoint == x))
            .filter(|e| filters.user_id.as_deref().is_none_or(|x| e.user_id == x))
            .filter(|e| filters.status_code.is_none_or(|x| e.status_code == x))
            .collect();
        want.sort_by(|x, y| (x.timestamp, &x.request_id).cmp(&(y.timestamp, &y.request_id)));
        assert_eq!(engine.count(range, &filters).unwrap(), want.len() as u64);
        let mut got = Vec::new();
        let mut cursor = None;
        loop {
            let page = engine
                .scan(range, &filters, cursor.as_ref(), rng.random_range(1..9))
                .unwrap();
            got.extend(page.events);
            match page.next {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        let got_keys: Vec<(Micros, &str)> = got
            .iter()
            .map(|e| (e.timestamp, e.request_id.as_str()))
            .collect();
        let want_keys: Vec<(Micros, &str)> = want
            .iter()
            .map(|e| (e.timestamp, e.request_id.as_str()))
            .collect();
        assert_eq!(got_keys, want_keys);
    }
}

#[test]
fn orphan_segments_from_an_interrupted_flush_are_removed() {
    let fs = SimFs::new(9);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut rng = StdRng::seed_from_u64(9);
    let engine = Engine::open_with(Arc::new(fs.clone()), config()).unwrap();
    let batch = vec![event(&mut rng, "o-1".into(), 1_700_000_000_000_000)];
    rt.block_on(engine.ingest(batch, None)).unwrap();
    engine.close().unwrap();
    let orphan = std::path::Path::new("/data/segments/0000000000000099.seg");
    let mut f = fs.create(orphan).unwrap();
    f.write_all(b"half a segment").unwrap();
    f.sync().unwrap();
    fs.sync_dir(std::path::Path::new("/data/segments")).unwrap();
    drop(f);
    let engine = Engine::open_with(Arc::new(fs.clone()), config()).unwrap();
    assert!(!fs.exists(orphan));
    assert_eq!(engine.count(everything(), &Filters::default()).unwrap(), 1);
    engine.close().unwrap();
}

#[test]
fn a_lost_manifest_refuses_to_open_instead_of_deleting_segments() {
    let fs = SimFs::new(13);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut rng = StdRng::seed_from_u64(13);
    let engine = Engine::open_with(Arc::new(fs.clone()), config()).unwrap();
    let batch = vec![event(&mut rng, "m-1".into(), 1_700_000_000_000_000)];
    rt.block_on(engine.ingest(batch, None)).unwrap();
    engine.flush().unwrap();
    engine.close().unwrap();
    drop(engine);
    fs.remove_file(std::path::Path::new("/data/MANIFEST"))
        .unwrap();
    let err = Engine::open_with(Arc::new(fs.clone()), config())
        .err()
        .map(|e| e.to_string());
    assert!(
        err.as_deref().is_some_and(|e| e.contains("MANIFEST")),
        "{err:?}"
    );
    assert!(
        !fs.list(std::path::Path::new("/data/segments"))
            .unwrap()
            .is_empty(),
        "segments must survive"
    );
}

#[test]
fn a_crash_at_any_step_of_the_first_flush_recovers_everything() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    // Fail the n-th sync of the flush (segment, rollup and key files, directories,
    // manifest), then lose power: the store must open with every acknowledged event.
    for n in 0..12u64 {
        let fs = SimFs::new(100 + n);
        let mut rng = StdRng::seed_from_u64(n);
        let engine = Engine::open_with(Arc::new(fs.clone()), config()).unwrap();
        let batch: Vec<Event> = (0..7)
            .map(|i| event(&mut rng, format!("ff{n}-{i}"), 1_700_000_000_000_000))
            .collect();
        rt.block_on(engine.ingest(batch.clone(), Some(format!("key-{n}"))))
            .unwrap();
        fs.fail_syncs_after(n);
        let _ = engine.flush();
        let crashed = fs.crashed_copy();
        crashed.heal();
        drop(engine);
        let recovered = Engine::open_with(Arc::new(crashed), config()).unwrap_or_else(|e| {
            panic!("sync {n} failed, then power loss: store does not open: {e}")
        });
        assert_eq!(
            recovered.count(everything(), &Filters::default()).unwrap(),
            7,
            "sync {n}"
        );
        let again = rt
            .block_on(recovered.ingest(batch, Some(format!("key-{n}"))))
            .unwrap();
        assert!(again.replayed, "sync {n}: the key must survive");
    }
}

/// A single node's log with batches it acknowledged but did not flush is
/// not silently dropped when the store is opened as a Raft member (which
/// reads only the Raft log): refused, until the node has flushed them.
#[test]
fn a_replicated_open_refuses_a_single_nodes_unflushed_log() {
    let fs = SimFs::new(41);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut rng = StdRng::seed_from_u64(41);
    let engine = Engine::open_with(Arc::new(fs.clone()), config()).unwrap();
    let batch: Vec<Event> = (0..5)
        .map(|i| event(&mut rng, format!("u-{i}"), 1_700_000_000_000_000))
        .collect();
    rt.block_on(engine.ingest(batch, None)).unwrap();
    // Power loss: the batch is in the log only.
    let crashed = fs.crashed_copy();
    drop(engine);
    let replicated = || {
        let mut c = config();
        c.replicated = true;
        c
    };
    let Err(err) = Engine::open_with(Arc::new(crashed.clone()), replicated()) else {
        panic!("a member opened a store whose log holds unflushed batches");
    };
    assert!(err.to_string().contains("did not flush"), "{err}");
    // Opened as the single node it was, it replays and (closed) flushes them;
    // then the member opens and holds them.
    let single = Engine::open_with(Arc::new(crashed.clone()), config()).unwrap();
    assert_eq!(read_all(&single).len(), 5);
    single.close().unwrap();
    let member = Engine::open_with(Arc::new(crashed), replicated()).unwrap();
    assert_eq!(read_all(&member).len(), 5);
}
