//! Rollup days past the hot window (minutes before yesterday, hours before
//! the last week) live in their tier files, not in memory: a flush adds to
//! them at once, reads reach them through the cold cache, and every bucket
//! answers the events' own counts, after a second flush into the same days,
//! a restart and a maintenance pass alike.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use toplog_engine::{Dimension, Engine, EngineConfig, Granularity, Retention};
use toplog_types::{Event, Micros};

const DAY_US: i64 = 86_400_000_000;
const ENDPOINTS: [&str; 3] = ["GET /a", "POST /b", "GET /c"];

/// Events on days `days` back from `today` (0 is today, before `now`), a
/// few per hour in several minutes.
fn events(today: Micros, now: Micros, days: &[i64], salt: usize) -> Vec<Event> {
    let mut out = Vec::new();
    for &d in days {
        for i in 0..200usize {
            let ts = today.get() - d * DAY_US + (i as i64 * 7_919_000_000) % DAY_US;
            if ts >= now.get() {
                continue;
            }
            out.push(Event {
                request_id: format!("r{salt}-{d}-{i}"),
                timestamp: Micros::new(ts),
                user_id: format!("u{}", i % 17),
                endpoint: ENDPOINTS[(i + salt) % 3].into(),
                method: "GET".into(),
                status_code: [200, 503, 404][i % 3],
                latency_us: 1000 + i as u64,
            });
        }
    }
    out
}

/// Requests per (granularity, bucket start, endpoint), as the cubes must hold them.
type Model = BTreeMap<(Granularity, i64, String), u64>;

fn model(events: &[Event]) -> Model {
    let mut m = Model::new();
    for e in events {
        for g in Granularity::ALL {
            let start = e.timestamp.floor_to(g.len_us()).get();
            *m.entry((g, start, e.endpoint.clone())).or_default() += 1;
        }
    }
    m
}

/// What the engine's cubes hold for every bucket the model has.
fn stored(engine: &Engine, expected: &Model) -> Model {
    let buckets: BTreeSet<(Granularity, i64)> = expected.keys().map(|(g, s, _)| (*g, *s)).collect();
    let mut out = Model::new();
    for (g, start) in buckets {
        let (from, to) = (Micros::new(start), Micros::new(start + g.len_us()));
        engine
            .visit_rollups(g, from, to, Dimension::Endpoint, |cube| {
                cube.cells(false, |k, c| {
                    *out.entry((g, start, k.to_owned())).or_default() += c.count;
                });
            })
            .unwrap();
    }
    out
}

/// Checks the engine's cubes against the model, naming the first buckets that differ.
fn check(engine: &Engine, expected: &Model) {
    let got = stored(engine, expected);
    let keys: BTreeSet<_> = got.keys().chain(expected.keys()).collect();
    let wrong: Vec<_> = keys
        .into_iter()
        .filter(|k| got.get(*k) != expected.get(*k))
        .map(|k| (k, got.get(k), expected.get(k)))
        .take(5)
        .collect();
    assert!(wrong.is_empty(), "(bucket, stored, expected): {wrong:?}");
}

/// Tier files on disk per granularity name, and flush files.
fn files(dir: &std::path::Path) -> (BTreeMap<String, usize>, usize) {
    let mut tiers = BTreeMap::new();
    let mut flushes = 0;
    for f in std::fs::read_dir(dir.join("rollups")).unwrap() {
        let name = f.unwrap().file_name().into_string().unwrap();
        match name.split_once('-') {
            Some((g, _)) if g.starts_with("rollup_") => {
                *tiers.entry(g.to_owned()).or_default() += 1
            }
            _ => flushes += 1,
        }
    }
    (tiers, flushes)
}

fn open(dir: &std::path::Path) -> Engine {
    let mut c = EngineConfig::new(dir);
    c.partition = Duration::from_secs(86_400);
    c.memtable_max_age = Duration::from_secs(3600);
    Engine::open(c).unwrap()
}

#[test]
fn days_past_the_hot_window_are_read_from_their_tier_files_with_every_count() {
    let dir = tempfile::tempdir().unwrap();
    let now = Micros::now();
    let today = now.floor_to(DAY_US);
    // 10 days back: minutes and hours cold; 3 days back: minutes cold;
    // yesterday and today: held in memory.
    let days = [10, 3, 1, 0];
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let engine = open(dir.path());
    let first = events(today, now, &days, 0);
    rt.block_on(engine.ingest(first.clone(), None)).unwrap();
    engine.flush().unwrap();
    let mut all = first;
    let expected = model(&all);
    check(&engine, &expected);
    // The cold days went straight to tier files: the minutes of 10 and 3 days
    // back, the hours of 10 days back; the rest is in the flush's file.
    let (tiers, flushes) = files(dir.path());
    assert_eq!(tiers.get("rollup_1m"), Some(&2), "{tiers:?}");
    assert_eq!(tiers.get("rollup_1h"), Some(&1), "{tiers:?}");
    assert_eq!(tiers.get("rollup_1d"), None, "{tiers:?}");
    assert_eq!(flushes, 1);

    // A second flush into the same days replaces their tier files.
    let second = events(today, now, &days, 1);
    rt.block_on(engine.ingest(second.clone(), None)).unwrap();
    engine.flush().unwrap();
    all.extend(second);
    let expected = model(&all);
    check(&engine, &expected);
    let (tiers, flushes) = files(dir.path());
    assert_eq!(
        (tiers.get("rollup_1m"), tiers.get("rollup_1h")),
        (Some(&2), Some(&1))
    );
    assert_eq!(flushes, 2);

    let check_tiers = |engine: &Engine| {
        let hot_from = |g: Granularity| match g {
            Granularity::Minute => today.get() - DAY_US,
            Granularity::Hour => today.get() - 7 * DAY_US,
            Granularity::Day => i64::MIN,
        };
        for t in engine.rollup_tiers() {
            let g = t.granularity;
            let buckets: BTreeSet<i64> = (expected.keys())
                .filter(|(eg, _, _)| *eg == g)
                .map(|(_, s, _)| *s)
                .collect();
            let held = buckets.iter().filter(|s| **s >= hot_from(g)).count();
            assert_eq!((t.buckets, t.in_memory), (buckets.len(), held), "{g:?}");
            assert_eq!(t.oldest.map(Micros::get), buckets.first().copied(), "{g:?}");
        }
    };
    check_tiers(&engine);

    // A restart reads the hot days back, and leaves the cold ones on disk.
    let restart = |engine: Engine| {
        engine.close().unwrap();
        drop(engine);
        let engine = open(dir.path());
        check(&engine, &expected);
        check_tiers(&engine);
        engine
    };
    let engine = restart(engine);

    // Maintenance folds the flush files into tier files for every day.
    engine.purge().unwrap();
    let (tiers, flushes) = files(dir.path());
    assert_eq!(flushes, 0);
    assert_eq!(
        (
            tiers.get("rollup_1m"),
            tiers.get("rollup_1h"),
            tiers.get("rollup_1d")
        ),
        (Some(&4), Some(&4), Some(&4)),
        "{tiers:?}"
    );
    check(&engine, &expected);
    check_tiers(&engine);
    let engine = restart(engine);

    // Retention passing the oldest day drops it from its file alone, and
    // says how many buckets went.
    let before = engine.rollup_tiers();
    engine.set_retention(Retention {
        minute: Some(Duration::from_secs(5 * 86_400)),
        ..engine.retention()
    });
    let report = engine.purge().unwrap();
    let oldest_day = today.get() - 10 * DAY_US;
    let dropped = (expected.keys())
        .filter(|(g, s, _)| *g == Granularity::Minute && *s < oldest_day + DAY_US)
        .map(|(_, s, _)| *s)
        .collect::<BTreeSet<_>>()
        .len();
    assert_eq!(report.buckets[0], dropped);
    let minutes = |tiers: &[toplog_engine::RollupTier]| tiers[0].buckets;
    assert_eq!(minutes(&engine.rollup_tiers()), minutes(&before) - dropped);
}

#[test]
fn a_damaged_tier_file_of_a_day_on_disk_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let now = Micros::now();
    let today = now.floor_to(DAY_US);
    let engine = open(dir.path());
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(engine.ingest(events(today, now, &[10], 0), None))
        .unwrap();
    engine.flush().unwrap();
    engine.close().unwrap();
    drop(engine);
    // The minute file of 10 days ago is read by no start-up and no query yet.
    let file = std::fs::read_dir(dir.path().join("rollups"))
        .unwrap()
        .map(|f| f.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("rollup_1m-")
        })
        .unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&file, bytes).unwrap();
    let mut c = EngineConfig::new(dir.path());
    c.partition = Duration::from_secs(86_400);
    let err = Engine::open(c).unwrap_err().to_string();
    assert!(err.contains("rollup_1m-"), "{err}");
}
