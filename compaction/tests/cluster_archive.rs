//! One archive for three replicated stores (what a cluster's members are):
//! the same log applied to each, flushed at different moments so their
//! segment files differ, with the leader's maintenance decisions applied to
//! all three at their place in the log. Every member must then hold the same
//! events (the model's), name the same archived objects, and keep local
//! anything a cut-off does not cover.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use toplog_compaction::cluster::{self, Coordinator, Decision};
use toplog_compaction::{ArchiveAccess, ArchiveConfig, ObjectArchive, Policy};
use toplog_engine::{ArchiveStore, Engine, EngineConfig, Filters, TimeRange};
use toplog_types::{Event, Micros};

const HOUR_US: i64 = 3_600_000_000;
const DAY_US: i64 = 24 * HOUR_US;

/// Three members applying one log; member 0 leads.
#[derive(Debug)]
struct Group {
    members: Vec<Arc<Engine>>,
    index: Mutex<u64>,
    /// Members that apply nothing more (cut off from the log).
    behind: Mutex<Vec<usize>>,
}

impl Group {
    /// `n` members in `dir`, on `store`.
    fn of(n: usize, dir: &Path, store: &Arc<ObjectArchive>) -> Self {
        Self {
            members: (0..n)
                .map(|i| member(&dir.join(format!("m{i}")), store))
                .collect(),
            index: Mutex::new(0),
            behind: Mutex::new(Vec::new()),
        }
    }

    fn append(&self, apply: impl Fn(&Engine, u64)) {
        let mut index = self.index.lock().unwrap();
        *index += 1;
        let behind = self.behind.lock().unwrap().clone();
        for (n, m) in self.members.iter().enumerate() {
            if !behind.contains(&n) {
                apply(m, *index);
            }
        }
    }

    fn ingest(&self, events: &[Event]) {
        let payload = self.members[0]
            .propose_payload(events.to_vec(), None)
            .unwrap()
            .unwrap()
            .take_payload();
        self.append(|m, i| m.apply_replicated(i, &payload).unwrap());
    }
}

/// The leader's way to the log in this test: each decision applied by every
/// member at the next index.
#[derive(Debug)]
struct Leading<'a>(&'a Group);

impl Coordinator for Leading<'_> {
    fn leads(&self) -> bool {
        true
    }
    fn decide(&self, decision: Decision) -> Result<(), String> {
        self.0.append(|m, i| decision.apply(m, i).unwrap());
        Ok(())
    }
    fn catch_up(&self) -> Result<(), String> {
        Ok(())
    }
}

#[derive(Debug)]
struct Following;

impl Coordinator for Following {
    fn leads(&self) -> bool {
        false
    }
    fn decide(&self, _: Decision) -> Result<(), String> {
        Err("not the leader".into())
    }
    fn catch_up(&self) -> Result<(), String> {
        Ok(())
    }
}

fn archive(dir: &Path) -> Arc<ObjectArchive> {
    Arc::new(
        ObjectArchive::open(
            &ArchiveConfig {
                url: Some(dir.display().to_string()),
                ..ArchiveConfig::default()
            },
            dir,
        )
        .unwrap(),
    )
}

fn member(dir: &Path, archive: &Arc<ObjectArchive>) -> Arc<Engine> {
    let mut c = EngineConfig::new(dir);
    c.replicated = true;
    c.partition = Duration::from_secs(3600);
    c.memtable_max_age = Duration::from_secs(3600);
    c.archive = Some(archive.clone() as Arc<dyn ArchiveStore>);
    Arc::new(Engine::open(c).unwrap())
}

fn event(i: usize, ts: i64) -> Event {
    Event {
        request_id: format!("r{i:05}"),
        timestamp: Micros::new(ts),
        user_id: format!("u{}", i % 13),
        endpoint: format!("GET /e/{}", i % 5),
        method: "GET".into(),
        status_code: 200,
        latency_us: i as u64,
    }
}

fn ids(engine: &Engine) -> Vec<String> {
    let all = TimeRange {
        start: Micros::new(0),
        end: Micros::new(i64::MAX),
    };
    let mut ids: Vec<String> = engine
        .scan(all, &Filters::default(), None, 1_000_000)
        .unwrap()
        .events
        .into_iter()
        .map(|e| e.request_id)
        .collect();
    ids.sort();
    ids
}

/// The archived object keys a member names, sorted.
fn objects(engine: &Engine) -> Vec<String> {
    let mut keys: Vec<String> = engine
        .segments()
        .into_iter()
        .filter_map(|s| s.archived)
        .collect();
    keys.sort();
    keys
}

/// Local segments of partitions that end before `t`.
fn local_before(engine: &Engine, t: i64) -> usize {
    engine
        .segments()
        .iter()
        .filter(|s| {
            s.archived.is_none() && s.meta.partition_start.get() + s.meta.partition_len_us <= t
        })
        .count()
}

fn policy() -> Policy {
    Policy::default()
        .updated(&serde_json::json!({"raw": {"local_for": "1d", "keep_for": "30d"}}))
        .unwrap()
}

#[test]
fn every_member_drops_exactly_what_the_leader_archived() {
    let tmp = tempfile::tempdir().unwrap();
    let store = archive(&tmp.path().join("archive"));
    let group = Group::of(3, tmp.path(), &store);
    let now = Micros::now().get();
    let old = now - 3 * DAY_US;
    let mut model = Vec::new();
    // Old and recent rows, in batches; each member flushes at its own moments.
    for b in 0..12usize {
        let batch: Vec<Event> = (0..50)
            .map(|j| {
                let i = b * 50 + j;
                let ts = if i % 3 == 0 {
                    now - HOUR_US / 2 - i as i64
                } else {
                    old - (i as i64 % 4) * HOUR_US - i as i64
                };
                event(i, ts)
            })
            .collect();
        model.extend(batch.iter().map(|e| e.request_id.clone()));
        group.ingest(&batch);
        for (n, m) in group.members.iter().enumerate() {
            if b % (n + 2) == 0 {
                m.flush().unwrap();
            }
        }
    }
    model.sort();
    let layouts: Vec<usize> = group.members.iter().map(|m| m.segments().len()).collect();
    assert!(
        layouts[0] != layouts[1] || layouts[1] != layouts[2],
        "the members' segment files should differ: {layouts:?}"
    );

    let owned = ArchiveAccess::Owned;
    let report = cluster::run(&group.members[0], &policy(), &owned, &Leading(&group));
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(!report.archived.is_empty());
    for m in &group.members[1..] {
        let report = cluster::run(m, &policy(), &owned, &Following);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
    }
    let leader_objects = objects(&group.members[0]);
    assert!(!leader_objects.is_empty());
    for (n, m) in group.members.iter().enumerate() {
        assert_eq!(ids(m), model, "member {n}'s events");
        assert_eq!(objects(m), leader_objects, "member {n}'s archived objects");
        assert_eq!(
            local_before(m, now - DAY_US),
            0,
            "member {n} kept old segments"
        );
        assert!(m.pending_cutoffs().is_empty());
    }
    let in_archive: Vec<String> = {
        let mut keys = store.list("raw/").unwrap();
        keys.sort();
        keys
    };
    assert_eq!(
        in_archive, leader_objects,
        "the archive holds what is named"
    );

    // Late rows for an archived partition: kept local until the next seal,
    // then archived too; nothing is lost or doubled on any member.
    let late: Vec<Event> = (0..30).map(|i| event(90_000 + i, old - i as i64)).collect();
    model.extend(late.iter().map(|e| e.request_id.clone()));
    model.sort();
    group.ingest(&late);
    group.members[1].flush().unwrap();
    for (n, m) in group.members.iter().enumerate() {
        assert_eq!(ids(m), model, "member {n} before the second pass");
    }
    let report = cluster::run(&group.members[0], &policy(), &owned, &Leading(&group));
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    for m in &group.members[1..] {
        cluster::run(m, &policy(), &owned, &Following);
    }
    let second = objects(&group.members[0]);
    assert!(second.len() > leader_objects.len());
    for (n, m) in group.members.iter().enumerate() {
        assert_eq!(ids(m), model, "member {n}'s events after the second pass");
        assert_eq!(
            objects(m),
            second,
            "member {n}'s objects after the second pass"
        );
        assert_eq!(local_before(m, now - DAY_US), 0);
    }
}

#[test]
fn a_cutoff_that_does_not_match_waits_and_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let store = archive(&tmp.path().join("archive"));
    let group = Group::of(2, tmp.path(), &store);
    let old = Micros::now().get() - 3 * DAY_US;
    let batch: Vec<Event> = (0..40).map(|i| event(i, old + i as i64)).collect();
    group.ingest(&batch);
    let before = Micros::new(Micros::now().get() - DAY_US);
    Leading(&group).decide(Decision::Seal { before }).unwrap();
    // Sealing again at a later index (a restart's replay, or a second seal)
    // seals nothing more.
    let seal = *group.index.lock().unwrap();
    let sealed = |m: &Engine| {
        m.segments()
            .iter()
            .filter(|s| s.sealed == Some(seal))
            .count()
    };
    assert_eq!(group.members[1].seal_replicated(seal, before).unwrap(), 0);
    assert!(sealed(&group.members[1]) > 0);

    let partition = group.members[0].segments()[0].meta.partition_start;
    let mut cutoff = group.members[0].upload_sealed(partition, seal, 1).unwrap();
    // One row short: no member may drop its segments for it.
    cutoff.objects[0].meta.rows -= 1;
    Leading(&group)
        .decide(Decision::Cutoff(cutoff.clone()))
        .unwrap();
    for m in &group.members {
        let adopted = m.adopt_cutoffs().unwrap();
        assert!(adopted.adopted.is_empty());
        assert!(adopted.waiting[0].contains("rows"), "{:?}", adopted.waiting);
        assert_eq!(ids(m).len(), 40);
        assert_eq!(m.pending_cutoffs().len(), 1);
        assert!(objects(m).is_empty());
    }
    // The same cut-off applied again (a restart's replay) is kept once.
    group.members[1].record_cutoff(cutoff.clone()).unwrap();
    assert_eq!(group.members[1].pending_cutoffs().len(), 1);

    // An object missing from the archive: the local rows stay too.
    let tmp2 = tempfile::tempdir().unwrap();
    let other = member(&tmp2.path().join("m"), &store);
    other
        .apply_replicated(
            1,
            &group.members[0]
                .propose_payload(batch.clone(), None)
                .unwrap()
                .unwrap()
                .take_payload(),
        )
        .unwrap();
    other.seal_replicated(2, before).unwrap();
    let mut fine = cutoff.clone();
    fine.objects[0].meta.rows += 1;
    fine.seal = 2;
    for o in &fine.objects {
        store.delete(&o.key).unwrap();
    }
    other.record_cutoff(fine).unwrap();
    let adopted = other.adopt_cutoffs().unwrap();
    assert!(adopted.adopted.is_empty());
    assert_eq!(adopted.waiting.len(), 1, "{:?}", adopted.waiting);
    assert_eq!(ids(&other).len(), 40);
}

#[test]
fn a_second_upload_of_the_same_rows_is_swept_and_the_first_stands() {
    let tmp = tempfile::tempdir().unwrap();
    let store = archive(&tmp.path().join("archive"));
    let group = Group::of(2, tmp.path(), &store);
    let old = Micros::now().get() - 3 * DAY_US;
    group.ingest(
        &(0..40)
            .map(|i| event(i, old + i as i64))
            .collect::<Vec<_>>(),
    );
    let before = Micros::new(Micros::now().get() - DAY_US);
    Leading(&group).decide(Decision::Seal { before }).unwrap();
    let seal = *group.index.lock().unwrap();
    let partition = group.members[0].segments()[0].meta.partition_start;
    // Two leaders in turn upload the same rows, each under its own names.
    let first = group.members[0].upload_sealed(partition, seal, 1).unwrap();
    let second = group.members[1].upload_sealed(partition, seal, 2).unwrap();
    assert!((first.objects.iter()).all(|o| second.objects.iter().all(|p| p.key != o.key)));
    Leading(&group)
        .decide(Decision::Cutoff(first.clone()))
        .unwrap();
    Leading(&group)
        .decide(Decision::Cutoff(second.clone()))
        .unwrap();
    // Another leader's upload for a seal not yet applied here.
    let in_flight = "raw/day=2026-01-01/9999999999999999-00000000000-0000000000000003-0000.parquet";
    store
        .create(in_flight, bytes::Bytes::from_static(b"x"))
        .unwrap();
    let keys = |c: &toplog_engine::ArchiveCutoff| -> Vec<String> {
        let mut k: Vec<String> = c.objects.iter().map(|o| o.key.clone()).collect();
        k.sort();
        k
    };
    for m in &group.members {
        assert_eq!(m.adopt_cutoffs().unwrap().adopted.len(), 1);
        assert_eq!(objects(m), keys(&first), "the first cut-off applied stands");
        assert!(m.pending_cutoffs().is_empty());
        assert_eq!(ids(m).len(), 40);
    }
    let mut swept = group.members[0].sweep_archive().unwrap();
    swept.sort();
    assert_eq!(swept, keys(&second));
    let mut left = store.list("raw/").unwrap();
    left.sort();
    let mut want = keys(&first);
    want.push(in_flight.to_owned());
    want.sort();
    assert_eq!(left, want);
}
