//! Every compaction, tiering and purge step, cut short by power loss: the
//! engine runs on a simulated disk whose N-th fsync fails, for every N the
//! step makes, and the store is then recovered from what a crash at that
//! moment leaves on disk. It must hold exactly the data it held before (or,
//! for a purge, before or after), list no file it lacks, keep no file it does
//! not list, and let the step run again to the end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng, rngs::StdRng};
use toplog_compaction::{ArchiveConfig, ObjectArchive, Policy, plan_compactions};
use toplog_engine::{
    ArchiveStore, Dimension, Engine, EngineConfig, Filters, Granularity, TimeRange,
};
use toplog_types::{Event, Micros};
use toplog_wal::{Fs, SimFs};

const HOUR_US: i64 = 3_600_000_000;
const DAY_US: i64 = 24 * HOUR_US;

fn config(archive: &Arc<ObjectArchive>) -> EngineConfig {
    let mut c = EngineConfig::new("/data");
    c.partition = Duration::from_secs(3600);
    c.memtable_max_age = Duration::from_secs(3600);
    c.archive = Some(archive.clone() as Arc<dyn ArchiveStore>);
    c
}

/// Events over two spans: three hours ending 3 days ago and three hours ending
/// 2 hours ago, so a 2-day retention purges exactly the first.
fn events(now: i64) -> Vec<Event> {
    let mut rng = StdRng::seed_from_u64(11);
    let endpoints = ["GET /a", "POST /b/{id}", "GET /c", "DELETE /d/{id}"];
    (0..600)
        .map(|i| {
            let base = if i % 2 == 0 {
                now - 3 * DAY_US
            } else {
                now - 2 * HOUR_US
            };
            Event {
                request_id: format!("r{i:04}"),
                timestamp: Micros::new(base - rng.random_range(0..3 * HOUR_US)),
                user_id: format!("u{}", rng.random_range(0..20)),
                endpoint: endpoints[rng.random_range(0..endpoints.len())].to_owned(),
                method: "GET".into(),
                status_code: [200, 200, 201, 404, 500][rng.random_range(0..5)],
                latency_us: rng.random_range(0..2_000_000),
            }
        })
        .collect()
}

/// A store on a fresh simulated disk, filled in 6 flushes (several segments per partition).
fn populate(archive: &Arc<ObjectArchive>, evs: &[Event]) -> (SimFs, Engine) {
    let fs = SimFs::new(5);
    let engine = Engine::open_with(Arc::new(fs.clone()), config(archive)).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for chunk in evs.chunks(100) {
        rt.block_on(engine.ingest(chunk.to_vec(), None)).unwrap();
        engine.flush().unwrap();
    }
    (fs, engine)
}

/// What a reader can see: every event, and every rollup granularity's counts by endpoint.
#[derive(Debug, PartialEq, Eq)]
struct View {
    events: Vec<Event>,
    rollups: BTreeMap<(&'static str, String), u64>,
}

fn view(engine: &Engine) -> View {
    let all = TimeRange {
        start: Micros::new(0),
        end: Micros::new(i64::MAX),
    };
    let mut events = engine
        .scan(all, &Filters::default(), None, 100_000)
        .unwrap()
        .events;
    events.sort_by(|a, b| a.request_id.cmp(&b.request_id));
    let mut rollups = BTreeMap::new();
    for g in Granularity::ALL {
        engine
            .visit_rollups(g, all.start, all.end, Dimension::Endpoint, |cube| {
                cube.cells(false, |k, cell| {
                    *rollups.entry((g.name(), k.to_owned())).or_default() += cell.count;
                });
            })
            .unwrap();
    }
    View { events, rollups }
}

fn files(fs: &SimFs, dir: &str) -> usize {
    fs.list(Path::new(dir)).unwrap().len()
}

/// Runs `step` with the `n`-th fsync failing for every `n` it makes, crashes,
/// recovers, and checks the recovered store against `before`/`after`.
fn crash_at_every_sync(name: &str, step: impl Fn(&Engine), retention: Option<Policy>) {
    let dir = tempfile::tempdir().unwrap();
    let now = Micros::now().get();
    let evs = events(now);
    let run_clean = |archive_dir: &Path| {
        let archive = Arc::new(
            ObjectArchive::open(
                &ArchiveConfig {
                    url: Some(archive_dir.display().to_string()),
                    ..ArchiveConfig::default()
                },
                archive_dir,
            )
            .unwrap(),
        );
        let (fs, engine) = populate(&archive, &evs);
        if let Some(p) = &retention {
            engine.set_retention(p.retention());
        }
        (archive, fs, engine)
    };
    // A clean run: how many syncs the step makes, and the views before and after.
    let (_archive, fs, engine) = run_clean(&dir.path().join("clean"));
    let before = view(&engine);
    let syncs = fs.sync_count();
    step(&engine);
    let syncs = fs.sync_count() - syncs;
    let after = view(&engine);
    assert!(syncs > 0, "{name}: the step made no fsync");
    assert!(!before.events.is_empty());
    drop(engine);

    for n in 0..=syncs {
        let (archive, fs, engine) = run_clean(&dir.path().join(format!("run{n}")));
        fs.fail_syncs_after(n);
        step(&engine);
        let disk = fs.crashed_copy();
        drop(engine);
        disk.heal();
        let recovered = Engine::open_with(Arc::new(disk.clone()), config(&archive)).unwrap();
        if let Some(p) = &retention {
            recovered.set_retention(p.retention());
        }
        let seen = view(&recovered);
        assert!(
            seen == before || seen == after,
            "{name}: a crash at fsync {n} of {syncs} changed what is stored"
        );
        let local = recovered
            .segments()
            .iter()
            .filter(|s| s.archived.is_none())
            .count();
        assert_eq!(
            files(&disk, "/data/segments"),
            local,
            "{name}: crash at fsync {n}: segment files and the manifest disagree"
        );
        // The step runs to the end on the recovered store, with the same outcome.
        step(&recovered);
        assert_eq!(
            view(&recovered),
            after,
            "{name}: retry after crash at fsync {n}"
        );
        recovered.close().unwrap();
        let reopened = Engine::open_with(Arc::new(disk.clone()), config(&archive)).unwrap();
        if let Some(p) = &retention {
            reopened.set_retention(p.retention());
        }
        assert_eq!(
            view(&reopened),
            after,
            "{name}: restart after the retry, crash at {n}"
        );
    }
}

#[test]
fn compaction_survives_a_crash_at_every_step() {
    crash_at_every_sync(
        "compaction",
        |engine| {
            let plans = plan_compactions(&engine.segments());
            for ids in plans {
                let _ = engine.compact(&ids);
            }
        },
        None,
    );
}

#[test]
fn archiving_survives_a_crash_at_every_step() {
    crash_at_every_sync(
        "archiving",
        |engine| {
            for s in engine.segments().iter().take(3) {
                let _ = engine.archive_segment(s.id);
            }
        },
        None,
    );
}

#[test]
fn purging_survives_a_crash_at_every_step() {
    let policy = Policy {
        raw_local_for: Duration::from_secs(2 * 86_400),
        raw_keep_for: Duration::from_secs(2 * 86_400),
        minute_keep_for: Duration::from_secs(2 * 86_400),
        hour_keep_for: Duration::from_secs(365 * 86_400),
        day_keep_for: Duration::from_secs(365 * 86_400),
    };
    crash_at_every_sync(
        "purge",
        |engine| {
            // One segment archived first, so the purge also deletes an object.
            if let Some(s) = engine.segments().first() {
                let _ = engine.archive_segment(s.id);
            }
            let _ = engine.purge();
            let _ = engine.archive_rollups();
        },
        Some(policy),
    );
}

#[test]
fn compaction_and_archiving_keep_every_row_and_answer() {
    let dir = tempfile::tempdir().unwrap();
    let archive = Arc::new(ObjectArchive::open(&ArchiveConfig::default(), dir.path()).unwrap());
    let now = Micros::now().get();
    let evs = events(now);
    let (_fs, engine) = populate(&archive, &evs);
    let before = view(&engine);
    assert_eq!(before.events.len(), evs.len());
    let segments = engine.segments().len();
    for ids in plan_compactions(&engine.segments()) {
        engine.compact(&ids).unwrap();
    }
    assert!(engine.segments().len() < segments, "nothing was compacted");
    assert_eq!(view(&engine), before);
    // A copy that is not the segment (here: left at its key by someone else)
    // is caught when read back: the segment stays local, the copy goes, and
    // the next attempt writes a good one.
    let first = engine.segments()[0].clone();
    let key = format!(
        "raw/day={}/{:016}.parquet",
        &first.meta.partition_start.to_rfc3339()[..10],
        first.id.get()
    );
    let path = dir.path().join("archive").join(&key);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, b"not this segment").unwrap();
    let err = engine.archive_segment(first.id).unwrap_err().to_string();
    assert!(err.contains(&key), "{err}");
    assert!(
        engine.segments()[0].archived.is_none(),
        "archived despite a bad copy"
    );
    assert!(!path.exists(), "the bad copy was left in the archive");
    assert_eq!(view(&engine), before);
    for s in engine.segments() {
        let info = engine.archive_segment(s.id).unwrap();
        let key = info.archived.unwrap();
        assert!(key.starts_with("raw/day="), "{key}");
        assert!(
            dir.path().join("archive").join(&key).exists(),
            "{key} not in the folder"
        );
    }
    assert!(engine.segments().iter().all(|s| s.archived.is_some()));
    assert_eq!(
        view(&engine),
        before,
        "answers changed when segments moved to the archive"
    );
    // Rollups are kept per granularity and day, and copied to the archive.
    engine.purge().unwrap();
    assert!(engine.archive_rollups().unwrap() > 0);
    let copies = std::fs::read_dir(dir.path().join("archive/rollups"))
        .unwrap()
        .count();
    assert!(
        copies >= 3,
        "one file per granularity and day at least: {copies}"
    );
    assert_eq!(engine.archive_rollups().unwrap(), 0, "nothing new to copy");
    assert_eq!(view(&engine), before);
    // An object nothing names (an upload cut short before its manifest store,
    // whose segment was compacted since) is swept; named ones stay.
    let orphan = dir
        .path()
        .join("archive/raw/day=2000-01-01/0000000000009999.parquet");
    std::fs::create_dir_all(orphan.parent().unwrap()).unwrap();
    std::fs::write(&orphan, b"left by a crash").unwrap();
    // Objects under the same folders with names a node never writes are not
    // its to delete.
    let strangers: Vec<_> = [
        "raw/day=2000-01-01/notes.txt",
        "raw/export.parquet",
        "rollups/by-hand.cube",
        "OWNER",
    ]
    .iter()
    .map(|k| dir.path().join("archive").join(k))
    .collect();
    for s in &strangers {
        std::fs::write(s, b"not written by a node").unwrap();
    }
    assert_eq!(
        engine.sweep_archive().unwrap(),
        vec!["raw/day=2000-01-01/0000000000009999.parquet".to_owned()]
    );
    assert!(!orphan.exists());
    for s in &strangers {
        assert!(s.exists(), "{} was swept", s.display());
        std::fs::remove_file(s).unwrap();
    }
    assert!(engine.sweep_archive().unwrap().is_empty());
    assert_eq!(view(&engine), before);
    // A narrow range reads only what it needs and still gets exactly its rows.
    let range = TimeRange {
        start: Micros::new(now - 3 * HOUR_US),
        end: Micros::new(now - 2 * HOUR_US - HOUR_US / 2),
    };
    let want = evs
        .iter()
        .filter(|e| e.timestamp >= range.start && e.timestamp < range.end)
        .count() as u64;
    assert!(want > 0);
    assert_eq!(engine.count(range, &Filters::default()).unwrap(), want);
}
