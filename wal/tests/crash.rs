//! Crash tests on the simulated disk: acknowledged entries survive power loss,
//! and the simulated disk itself loses exactly what it should.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use rand::{Rng, SeedableRng};
use toplog_types::Lsn;
use toplog_wal::{Fs, FsyncPolicy, SimFs, WalOptions};

#[test]
fn acknowledged_appends_survive_a_crash_during_concurrent_appends() {
    for seed in 0..12u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let fs = SimFs::new(seed);
        let (wal, _) = open(&fs, options(64 * 1024 * 1024), 0).unwrap();
        let wal = Arc::new(wal);
        let acked: Arc<Mutex<BTreeMap<u64, Vec<u8>>>> = Arc::default();
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                let (wal, acked) = (Arc::clone(&wal), Arc::clone(&acked));
                std::thread::spawn(move || {
                    let mut failures = 0;
                    for i in 0..300u32 {
                        let payload =
                            format!("thread {t} entry {i} {}", "x".repeat(i as usize % 50))
                                .into_bytes();
                        match wal.append_blocking(payload.clone()) {
                            Ok(lsn) => {
                                acked.lock().unwrap().insert(lsn.get(), payload);
                            }
                            Err(_) => failures += 1,
                        }
                    }
                    failures
                })
            })
            .collect();
        let target = rng.random_range(0..1000usize);
        while acked.lock().unwrap().len() < target && !threads.iter().all(|t| t.is_finished()) {
            std::thread::yield_now();
        }
        fs.crash();
        let failures: u32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        // Unless every append finished before the crash, the writer hit a dead handle and latched it.
        assert!(wal.health().is_err() || failures == 0, "seed {seed}");
        if failures > 0 {
            assert!(
                wal.append_blocking(b"late".to_vec()).is_err(),
                "a poisoned log must refuse appends"
            );
        }
        drop(wal);

        let (wal, replay) = open(&fs, options(64 * 1024 * 1024), 0).unwrap();
        let lsns: Vec<u64> = replay.iter().map(|e| e.lsn.get()).collect();
        assert_eq!(
            lsns,
            (1..=replay.len() as u64).collect::<Vec<_>>(),
            "seed {seed}: lsns not contiguous"
        );
        let distinct: BTreeSet<&Vec<u8>> = replay.iter().map(|e| &e.payload).collect();
        assert_eq!(
            distinct.len(),
            replay.len(),
            "seed {seed}: an entry appears twice"
        );
        let by_lsn: BTreeMap<u64, &Vec<u8>> =
            replay.iter().map(|e| (e.lsn.get(), &e.payload)).collect();
        let acked = acked.lock().unwrap();
        for (lsn, payload) in acked.iter() {
            assert_eq!(
                by_lsn.get(lsn),
                Some(&payload),
                "seed {seed}: acknowledged lsn {lsn} lost or changed"
            );
        }
        let next = wal.append_blocking(b"after crash".to_vec()).unwrap();
        assert_eq!(next, Lsn::new(replay.len() as u64 + 1));
    }
}

#[test]
fn crash_with_unsynced_tail_and_rolls_recovers_a_prefix() {
    // Policy Never: frames in the last file may be torn away, but older files were
    // fsynced at roll, so recovery never finds damage in them.
    for seed in 0..40u64 {
        let fs = SimFs::new(seed);
        let opts = WalOptions {
            fsync: FsyncPolicy::Never,
            segment_bytes: 150,
        };
        let (wal, _) = open(&fs, opts, 0).unwrap();
        let payloads: Vec<Vec<u8>> = (0..40u32)
            .map(|i| format!("entry-{i}-{}", "y".repeat((i * 7 % 31) as usize)).into_bytes())
            .collect();
        for p in &payloads {
            wal.append_blocking(p.clone()).unwrap();
        }
        let files_before = fs.list(&dir()).unwrap().len();
        assert!(files_before > 3);
        fs.crash();
        drop(wal);
        let (wal, replay) = open(&fs, opts, 0).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert_eq!(
            replay,
            expected_entries(&payloads[..replay.len()]),
            "seed {seed}"
        );
        // Everything before the last file was made durable by the roll.
        let last_first = fs.list(&dir()).unwrap().last().unwrap()[4..24]
            .parse::<usize>()
            .unwrap();
        assert!(
            replay.len() + 1 >= last_first,
            "seed {seed}: lost entries from a rolled file"
        );
        assert_eq!(
            wal.append_blocking(b"more".to_vec()).unwrap(),
            Lsn::new(replay.len() as u64 + 1)
        );
    }
}

#[test]
fn close_makes_never_policy_entries_durable() {
    let fs = SimFs::new(3);
    let opts = WalOptions {
        fsync: FsyncPolicy::Never,
        segment_bytes: 1 << 20,
    };
    let (wal, _) = open(&fs, opts, 0).unwrap();
    for i in 0..20u8 {
        wal.append_blocking(vec![i; 10]).unwrap();
    }
    assert_eq!(wal.sync_count(), 0, "Never must not fsync before close");
    wal.close().unwrap();
    assert_eq!(wal.sync_count(), 1);
    fs.crash();
    let (_wal, replay) = open(&fs, opts, 0).unwrap();
    assert_eq!(replay.len(), 20);
}

#[test]
fn sim_fs_loses_unsynced_names_and_bytes() {
    let fs = SimFs::new(9);
    let d = Path::new("/d");
    fs.create_dir_all(d).unwrap();
    let mut kept = fs.create(&d.join("kept")).unwrap();
    kept.write_all(b"durable").unwrap();
    kept.sync().unwrap();
    fs.sync_dir(d).unwrap();
    kept.write_all(&[7u8; 100]).unwrap();

    let mut lost = fs.create(&d.join("lost")).unwrap();
    lost.write_all(b"x").unwrap();
    lost.sync().unwrap(); // content synced, but the name never was
    fs.rename(&d.join("kept"), &d.join("renamed")).unwrap();
    assert_eq!(
        fs.list(d).unwrap(),
        vec!["lost".to_owned(), "renamed".to_owned()]
    );

    fs.crash();
    assert_eq!(
        fs.list(d).unwrap(),
        vec!["kept".to_owned()],
        "unsynced create and rename must be undone"
    );
    let bytes = fs.read(&d.join("kept")).unwrap();
    assert!(bytes.len() >= 7 && bytes.len() <= 107);
    assert_eq!(&bytes[..7], b"durable");
    assert!(
        bytes[7..].iter().all(|&b| b == 7),
        "torn write must keep a prefix of what was written"
    );
    assert!(
        kept.write_all(b"z").is_err(),
        "handles from before the crash must fail"
    );
    assert!(kept.sync().is_err());

    // A removal is undone unless the directory is synced.
    fs.remove_file(&d.join("kept")).unwrap();
    fs.crash();
    assert!(fs.exists(&d.join("kept")));
    fs.remove_file(&d.join("kept")).unwrap();
    fs.sync_dir(d).unwrap();
    fs.crash();
    assert!(!fs.exists(&d.join("kept")));
}

#[test]
fn sim_fs_tears_writes_at_varied_lengths() {
    let mut lengths = BTreeSet::new();
    for seed in 0..30 {
        let fs = SimFs::new(seed);
        fs.create_dir_all(Path::new("/d")).unwrap();
        let mut f = fs.create(Path::new("/d/f")).unwrap();
        fs.sync_dir(Path::new("/d")).unwrap();
        f.write_all(&[1u8; 64]).unwrap();
        fs.crash();
        lengths.insert(fs.read(Path::new("/d/f")).unwrap().len());
    }
    assert!(
        lengths.len() > 5,
        "crash should keep random prefixes, got {lengths:?}"
    );
}

#[test]
fn sim_fs_truncate_is_durable_and_faults_inject() {
    let fs = SimFs::new(4);
    let d = Path::new("/d");
    fs.create_dir_all(d).unwrap();
    let mut f = fs.create(&d.join("f")).unwrap();
    fs.sync_dir(d).unwrap();
    f.write_all(b"0123456789").unwrap();
    f.sync().unwrap();
    fs.truncate(&d.join("f"), 4).unwrap();
    fs.crash();
    assert_eq!(fs.read(&d.join("f")).unwrap(), b"0123");
    assert!(
        fs.create(&d.join("f")).is_err(),
        "create must not replace an existing file"
    );

    let mut f = fs.open_append(&d.join("f")).unwrap();
    assert_eq!(f.len(), 4);
    fs.fail_syncs_after(1);
    f.sync().unwrap();
    let err = f.sync().unwrap_err();
    assert_eq!(err.to_string(), "injected fsync failure");
    assert!(fs.sync_dir(d).is_err());
    fs.fail_writes(Some(std::io::ErrorKind::StorageFull));
    assert_eq!(
        f.write_all(b"x").unwrap_err().kind(),
        std::io::ErrorKind::StorageFull
    );
    fs.heal();
    f.write_all(b"x").unwrap();
    f.sync().unwrap();
    assert_eq!(fs.read(&d.join("f")).unwrap(), b"0123x");
    assert!(fs.map(&d.join("f")).unwrap().starts_with(b"0123"));
    let _ = Duration::ZERO;
}
