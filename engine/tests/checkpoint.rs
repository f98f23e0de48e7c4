//! A checkpoint of one replicated store installed in place of another (what
//! a Raft snapshot does): the second then holds exactly the first's events
//! and idempotency keys, applies the log on from the checkpoint's index, and
//! keeps all of it across a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use toplog_engine::{Engine, EngineConfig, Filters, TimeRange};
use toplog_types::{Event, Micros};

fn open(dir: &Path) -> Engine {
    let mut c = EngineConfig::new(dir);
    c.replicated = true;
    c.partition = Duration::from_secs(3600);
    c.memtable_max_age = Duration::from_secs(3600);
    Engine::open(c).unwrap()
}

fn batch(tag: &str, n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| Event {
            request_id: format!("{tag}-{i}"),
            timestamp: Micros::new(1_700_000_000_000_000 + (i as i64) * 7_000_000_000),
            user_id: format!("u{}", i % 7),
            endpoint: format!("GET /{tag}/{}", i % 3),
            method: "GET".into(),
            status_code: 200,
            latency_us: i as u64 * 10,
        })
        .collect()
}

/// Batch `i` of a log, as the leader proposes it.
fn payload(engine: &Engine, tag: &str, i: u64) -> Vec<u8> {
    let key = Some(format!("{tag}-key-{i}"));
    let mut proposal = engine
        .propose_payload(batch(&format!("{tag}{i}"), 40), key)
        .unwrap()
        .unwrap();
    proposal.take_payload()
}

fn all(engine: &Engine) -> Vec<String> {
    let range = TimeRange {
        start: Micros::new(0),
        end: Micros::new(i64::MAX),
    };
    let page = engine
        .scan(range, &Filters::default(), None, 1_000_000)
        .unwrap();
    let mut ids: Vec<String> = page.events.into_iter().map(|e| e.request_id).collect();
    ids.sort();
    ids
}

#[test]
fn an_installed_checkpoint_replaces_the_store_and_the_log_goes_on_from_it() {
    let tmp = tempfile::tempdir().unwrap();
    let leader = open(&tmp.path().join("leader"));
    let log: Vec<Vec<u8>> = (1..=35).map(|i| payload(&leader, "a", i)).collect();
    for (i, p) in log.iter().enumerate().take(30) {
        leader.apply_replicated(i as u64 + 1, p).unwrap();
    }
    leader.flush().unwrap();
    for (i, p) in log.iter().enumerate().skip(30) {
        leader.apply_replicated(i as u64 + 1, p).unwrap();
    }
    let ck = tmp.path().join("checkpoint");
    assert_eq!(leader.checkpoint(&ck, 20, 35).unwrap(), Some(30));
    // One asked past the flushed index starts a flush, and is made after it.
    let later = tmp.path().join("later");
    assert_eq!(leader.checkpoint(&later, 31, 35).unwrap(), None);
    let mut made = None;
    for _ in 0..500 {
        made = leader.checkpoint(&later, 31, 35).unwrap();
        if made.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(made, Some(35));
    // With every batch flushed, entries after the last one (a replicated
    // log's configuration changes) change nothing: the checkpoint is as of
    // the index applied last.
    let conf = tmp.path().join("conf");
    assert_eq!(leader.checkpoint(&conf, 37, 37).unwrap(), Some(37));

    // A follower whose own store diverged (entries a new leader replaced).
    let dir = tmp.path().join("follower");
    let follower = open(&dir);
    for i in 1..=10 {
        let p = payload(&follower, "stale", i);
        follower.apply_replicated(i, &p).unwrap();
    }
    follower.flush().unwrap();
    assert_eq!(follower.install_checkpoint(&ck).unwrap(), 30);
    assert_eq!(follower.flushed_index(), 30);
    let upto_30: Vec<String> = {
        let mut ids: Vec<String> = (1..=30)
            .flat_map(|i| batch(&format!("a{i}"), 40))
            .map(|e| e.request_id)
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(all(&follower), upto_30);
    // Its idempotency keys came with it.
    let again = follower
        .propose_payload(batch("a5", 40), Some("a-key-5".into()))
        .unwrap();
    assert!(again.is_err(), "key a-key-5 not known after the install");
    for (i, p) in log.iter().enumerate().skip(30) {
        follower.apply_replicated(i as u64 + 1, p).unwrap();
    }
    assert_eq!(all(&follower), all(&leader));
    // The old store's files are gone; only the installed ones are left.
    let names = std::fs::read_dir(dir.join("segments")).unwrap();
    for name in names {
        let name = name.unwrap().file_name().into_string().unwrap();
        assert!(name.starts_with("i30-"), "{name} left behind");
    }
    follower.close().unwrap();
    drop(follower);
    let follower = open(&dir);
    assert_eq!(follower.flushed_index(), 35);
    assert_eq!(all(&follower), all(&leader));
}
