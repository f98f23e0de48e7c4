//! Behaviour of the log handle: group commit, fail-stop, trimming, policies, the real disk.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use toplog_types::Lsn;
use toplog_wal::{Fs, FsyncPolicy, RealFs, SimFs, Wal, WalError, WalOptions};

#[test]
fn concurrent_appends_share_fsyncs() {
    let fs = SimFs::new(5);
    // A real fsync takes time; so must the simulated one, or each append finds an idle writer.
    fs.set_sync_latency(Duration::from_micros(300));
    let applied = Applied::default();
    let (wal, _) = Wal::open(
        Arc::new(fs.clone()),
        &dir(),
        options(1 << 30),
        Lsn::ZERO,
        applied.callback(),
    )
    .unwrap();
    let wal = Arc::new(wal);
    let threads: Vec<_> = (0..8u32)
        .map(|t| {
            let wal = Arc::clone(&wal);
            std::thread::spawn(move || {
                (0..200u32)
                    .map(|i| {
                        wal.append_blocking(format!("{t}:{i}").into_bytes())
                            .unwrap()
                            .get()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all = BTreeSet::new();
    for t in threads {
        let lsns = t.join().unwrap();
        assert!(
            lsns.windows(2).all(|w| w[0] < w[1]),
            "one thread's appends must get increasing lsns"
        );
        all.extend(lsns);
    }
    assert_eq!(all, (1..=1600).collect::<BTreeSet<u64>>());
    assert_eq!(
        applied.lsns(),
        (1..=1600).collect::<Vec<u64>>(),
        "on_durable must run in lsn order"
    );
    assert_eq!(wal.last_lsn(), Lsn::new(1600));
    let syncs = wal.sync_count();
    assert!(
        syncs < 1600,
        "expected shared fsyncs, got {syncs} for 1600 appends"
    );
    // on_durable saw the exact payloads.
    let payloads: BTreeSet<Vec<u8>> = applied
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|(_, p)| p.clone())
        .collect();
    assert_eq!(payloads.len(), 1600);
}

#[test]
fn failed_fsync_poisons_the_log() {
    let fs = SimFs::new(6);
    let applied = Applied::default();
    let (wal, _) = Wal::open(
        Arc::new(fs.clone()),
        &dir(),
        options(1 << 20),
        Lsn::ZERO,
        applied.callback(),
    )
    .unwrap();
    assert_eq!(wal.append_blocking(b"ok".to_vec()).unwrap(), Lsn::new(1));
    fs.fail_syncs_after(0);
    let err = wal.append_blocking(b"lost".to_vec()).unwrap_err();
    let WalError::Poisoned(message) = &err else {
        panic!("expected Poisoned, got {err}")
    };
    assert!(
        message.contains("injected fsync failure")
            && message.contains("wal-00000000000000000001.log"),
        "{message}"
    );
    assert!(matches!(wal.health(), Err(WalError::Poisoned(m)) if m == *message));
    // Fail-stop: healing the disk does not bring the log back; nothing is retried.
    fs.heal();
    let syncs = wal.sync_count();
    assert!(matches!(
        wal.append_blocking(b"later".to_vec()),
        Err(WalError::Poisoned(_))
    ));
    let rx = wal.append(b"async".to_vec());
    assert!(matches!(
        rx.blocking_recv().unwrap(),
        Err(WalError::Poisoned(_))
    ));
    assert_eq!(
        wal.sync_count(),
        syncs,
        "a poisoned log must not fsync again"
    );
    assert_eq!(
        applied.lsns(),
        vec![1],
        "on_durable must not see failed appends"
    );
    assert_eq!(wal.last_lsn(), Lsn::new(1));
    assert!(wal.close().is_err());
    assert!(wal.truncate_prefix(Lsn::new(1)).is_err());
}

#[test]
fn failed_fsync_after_some_groups() {
    let fs = SimFs::new(7);
    let applied = Applied::default();
    let (wal, _) = Wal::open(
        Arc::new(fs.clone()),
        &dir(),
        options(1 << 20),
        Lsn::ZERO,
        applied.callback(),
    )
    .unwrap();
    fs.fail_syncs_after(3);
    let results: Vec<_> = (0..6u8).map(|i| wal.append_blocking(vec![i])).collect();
    assert!(results[..3].iter().all(|r| r.is_ok()));
    assert!(
        results[3..]
            .iter()
            .all(|r| matches!(r, Err(WalError::Poisoned(_))))
    );
    assert_eq!(applied.lsns(), vec![1, 2, 3]);
}

#[test]
fn full_disk_poisons_the_log() {
    let fs = SimFs::new(8);
    let applied = Applied::default();
    let (wal, _) = Wal::open(
        Arc::new(fs.clone()),
        &dir(),
        options(1 << 20),
        Lsn::ZERO,
        applied.callback(),
    )
    .unwrap();
    wal.append_blocking(b"first".to_vec()).unwrap();
    fs.fail_writes(Some(io::ErrorKind::StorageFull));
    let err = wal.append_blocking(b"no space".to_vec()).unwrap_err();
    assert!(
        matches!(&err, WalError::Poisoned(m) if m.contains("write to") && m.contains("injected write failure")),
        "{err}"
    );
    fs.heal();
    assert!(wal.append_blocking(b"after heal".to_vec()).is_err());
    assert!(wal.health().is_err());
    assert_eq!(applied.lsns(), vec![1]);
    drop(wal);
    // The disk still holds a valid log with the acknowledged entry.
    let (wal, replay) = open(&fs, options(1 << 20), 0).unwrap();
    assert_eq!(replay.len(), 1);
    assert_eq!(wal.append_blocking(b"again".to_vec()).unwrap(), Lsn::new(2));
}

#[test]
fn truncate_prefix_removes_whole_old_files_only() {
    let fs = SimFs::new(10);
    let (wal, _) = open(&fs, options(200), 0).unwrap();
    for i in 0..30u8 {
        wal.append_blocking(vec![i; 50]).unwrap();
    }
    let before: Vec<u64> = fs
        .list(&dir())
        .unwrap()
        .iter()
        .map(|n| n[4..24].parse().unwrap())
        .collect();
    assert!(before.len() > 4, "{before:?}");
    wal.truncate_prefix(Lsn::new(20)).unwrap();
    let after: Vec<u64> = fs
        .list(&dir())
        .unwrap()
        .iter()
        .map(|n| n[4..24].parse().unwrap())
        .collect();
    // Kept: the file holding lsn 21 and everything newer.
    let keep_from = before.iter().rposition(|&first| first <= 21).unwrap();
    assert_eq!(after, before[keep_from..].to_vec());
    assert!(after[0] <= 21 && after.len() < before.len());
    wal.close().unwrap();
    drop(wal);
    fs.crash(); // the removal was made durable by the directory fsync

    assert_eq!(fs.list(&dir()).unwrap().len(), after.len());
    let (wal, replay) = open(&fs, options(200), 20).unwrap();
    assert_eq!(
        replay.iter().map(|e| e.lsn.get()).collect::<Vec<_>>(),
        (21..=30).collect::<Vec<_>>()
    );
    assert_eq!(wal.append_blocking(b"31".to_vec()).unwrap(), Lsn::new(31));
    // Trimming everything keeps the file being written.
    wal.truncate_prefix(Lsn::new(1000)).unwrap();
    assert_eq!(fs.list(&dir()).unwrap().len(), 1);
    drop(wal);
    let (wal, _) = open(&fs, options(200), 31).unwrap();
    assert_eq!(wal.append_blocking(b"32".to_vec()).unwrap(), Lsn::new(32));
    drop(wal);
    // Asking for entries that were trimmed away is an error, not a silent gap.
    assert!(matches!(
        open(&fs, options(200), 5),
        Err(WalError::Corrupt { .. })
    ));
}

#[test]
fn a_cut_tail_is_gone_after_a_crash_and_numbering_resumes_at_the_cut() {
    // Small files: the cuts fall inside a file, at a file's first frame, and
    // take whole later files with them.
    for cut in [1u64, 7, 12, 13, 29, 30] {
        let fs = SimFs::new(cut);
        let (wal, _) = open(&fs, options(200), 0).unwrap();
        for i in 1..=30u8 {
            wal.append_blocking(vec![i; 50]).unwrap();
        }
        wal.truncate_suffix(Lsn::new(cut)).unwrap();
        assert_eq!(wal.last_lsn(), Lsn::new(cut - 1));
        // A Raft leader's entries replace the tail, in one group.
        let first = wal
            .append_batch_blocking(vec![(7, vec![200; 40]), (7, vec![201; 40])])
            .unwrap();
        assert_eq!(first, Lsn::new(cut));
        wal.close().unwrap();
        drop(wal);
        fs.crash();
        let (wal, replay) = open(&fs, options(200), 0).unwrap();
        let got: Vec<(u64, u64, u8)> = replay
            .iter()
            .map(|e| (e.lsn.get(), e.term, e.payload[0]))
            .collect();
        let mut want: Vec<(u64, u64, u8)> = (1..cut).map(|i| (i, 0, i as u8)).collect();
        want.extend([(cut, 7, 200), (cut + 1, 7, 201)]);
        assert_eq!(got, want, "cut at {cut}");
        assert_eq!(wal.append_blocking(vec![9]).unwrap(), Lsn::new(cut + 2));
    }
}

#[test]
fn a_batch_is_one_group_with_one_fsync() {
    let fs = SimFs::new(3);
    let (wal, _) = open(&fs, options(1 << 30), 0).unwrap();
    let before = wal.sync_count();
    let first = wal
        .append_batch_blocking((0..50u8).map(|i| (3, vec![i; 10])).collect())
        .unwrap();
    assert_eq!(first, Lsn::new(1));
    assert_eq!(wal.last_lsn(), Lsn::new(50));
    assert_eq!(wal.sync_count() - before, 1, "fifty entries, one fsync");
}

#[test]
fn numbering_continues_past_after_when_the_log_is_behind() {
    let fs = SimFs::new(11);
    let (wal, _) = open(&fs, options(1 << 20), 0).unwrap();
    for i in 0..3u8 {
        wal.append_blocking(vec![i]).unwrap();
    }
    drop(wal);
    // The caller has state up to lsn 10 (e.g. its own snapshot): the log must not reuse 4..=10.
    let (wal, replay) = open(&fs, options(1 << 20), 10).unwrap();
    assert!(replay.is_empty());
    assert_eq!(wal.last_lsn(), Lsn::new(10));
    assert_eq!(
        wal.append_blocking(b"eleven".to_vec()).unwrap(),
        Lsn::new(11)
    );
    drop(wal);
    fs.crash();
    let (_wal, replay) = open(&fs, options(1 << 20), 10).unwrap();
    assert_eq!(replay.len(), 1);
    assert_eq!(replay[0].lsn, Lsn::new(11));
    // A fresh directory starts after `after` too.
    let fresh = SimFs::new(12);
    let (wal, _) = open(&fresh, options(1 << 20), 41).unwrap();
    assert_eq!(wal.append_blocking(b"x".to_vec()).unwrap(), Lsn::new(42));
}

#[test]
fn damaged_headers_are_errors_naming_the_file() {
    let source = write_log(&(0..6u8).map(|i| vec![i; 40]).collect::<Vec<_>>(), 100);
    let files = log_files(&source);
    assert!(files.len() >= 2);
    let mut bad = files.clone();
    bad[0].1[0] = b'X';
    match open(&disk_with(&bad), options(100), 0) {
        Err(WalError::Corrupt {
            path,
            offset: 0,
            reason,
        }) => {
            assert_eq!(path, path_of(&files[0].0));
            assert!(reason.contains("magic"), "{reason}");
        }
        other => panic!("expected Corrupt, got {:?}", other.map(|(_, r)| r.len())),
    }
    // A missing middle file is a gap.
    let mut gap = files.clone();
    gap.remove(1);
    assert!(matches!(
        open(&disk_with(&gap), options(100), 0),
        Err(WalError::Corrupt { .. })
    ));
    // A torn header in the last file is rewritten; nothing in it was acknowledged.
    let mut torn = files.clone();
    let last = torn.len() - 1;
    torn[last].1.truncate(10);
    let (wal, replay) = open(&disk_with(&torn), options(100), 0).unwrap();
    let first_of_last: u64 = files[last].0[4..24].parse().unwrap();
    assert_eq!(replay.len() as u64, first_of_last - 1);
    assert_eq!(
        wal.append_blocking(b"n".to_vec()).unwrap(),
        Lsn::new(first_of_last)
    );
}

#[test]
fn oversized_entries_and_closed_log_are_rejected() {
    let fs = SimFs::new(13);
    let (wal, _) = open(&fs, options(1 << 20), 0).unwrap();
    let err = wal
        .append_blocking(vec![0; 256 * 1024 * 1024 + 1])
        .unwrap_err();
    assert!(matches!(err, WalError::TooLarge { len } if len == 256 * 1024 * 1024 + 1));
    assert!(
        wal.health().is_ok(),
        "a rejected entry does not poison the log"
    );
    assert_eq!(wal.append_blocking(b"fine".to_vec()).unwrap(), Lsn::new(1));
    wal.close().unwrap();
    wal.close().unwrap();
    assert!(matches!(
        wal.append_blocking(b"late".to_vec()),
        Err(WalError::Closed)
    ));
    assert!(matches!(
        wal.truncate_prefix(Lsn::new(1)),
        Err(WalError::Closed)
    ));
}

/// Under `fsync = interval`, appends are acknowledged before any fsync (a
/// crash then loses them), and the timer fsyncs a dirty log with no further
/// appends. Each check waits on what the disk holds, not on the clock.
#[test]
fn interval_policy_acknowledges_before_fsync() {
    // An interval no test outlives: 50 appends are acknowledged, none fsynced.
    let fs = SimFs::new(14);
    let hour = WalOptions {
        fsync: FsyncPolicy::Interval(Duration::from_secs(3600)),
        segment_bytes: 1 << 20,
    };
    let (wal, _) = open(&fs, hour, 0).unwrap();
    let synced = wal.sync_count();
    for i in 0..50u8 {
        wal.append_blocking(vec![i]).unwrap();
    }
    assert_eq!(
        wal.sync_count(),
        synced,
        "interval policy fsynced an append"
    );
    assert!(fs.unsynced_bytes() > 0);
    // A crash keeps any prefix of what was never fsynced (the disk may have
    // written some of it): whole entries, in order, from the first.
    fs.crash();
    drop(wal);
    let (_wal, replay) = open(&fs, hour, 0).unwrap();
    assert!(replay.len() <= 50);
    assert!(
        replay
            .iter()
            .enumerate()
            .all(|(i, e)| e.payload == vec![i as u8]),
        "a crash kept something other than a prefix of the appends"
    );

    // A short interval: the timer makes the log durable without another append.
    let fs = SimFs::new(15);
    let short = WalOptions {
        fsync: FsyncPolicy::Interval(Duration::from_millis(50)),
        segment_bytes: 1 << 20,
    };
    let (wal, _) = open(&fs, short, 0).unwrap();
    for i in 0..50u8 {
        wal.append_blocking(vec![i]).unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while fs.unsynced_bytes() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the timer left the log unsynced"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    fs.crash();
    drop(wal);
    let (_wal, replay) = open(&fs, short, 0).unwrap();
    assert_eq!(
        replay.len(),
        50,
        "entries fsynced by the interval timer survive"
    );
}

#[test]
fn real_disk_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let fs: Arc<dyn Fs> = Arc::new(RealFs);
    let applied = Applied::default();
    let (wal, replay) = Wal::open(
        Arc::clone(&fs),
        &dir,
        options(300),
        Lsn::ZERO,
        applied.callback(),
    )
    .unwrap();
    assert!(replay.is_empty());
    for i in 0..20u8 {
        assert_eq!(
            wal.append_blocking(vec![i; 30]).unwrap(),
            Lsn::new(u64::from(i) + 1)
        );
    }
    wal.close().unwrap();
    assert_eq!(applied.lsns(), (1..=20).collect::<Vec<_>>());
    let names = fs.list(&dir).unwrap();
    assert!(
        names.len() > 1 && names[0] == "wal-00000000000000000001.log",
        "{names:?}"
    );
    let mapped = fs.map(&dir.join(&names[0])).unwrap();
    assert_eq!(&mapped[..], &fs.read(&dir.join(&names[0])).unwrap()[..]);
    assert_eq!(&mapped[..8], b"TPLGWAL\0");
    drop(wal);

    let (wal, replay) = Wal::open(
        Arc::clone(&fs),
        &dir,
        options(300),
        Lsn::ZERO,
        Box::new(|_, _, _| {}),
    )
    .unwrap();
    assert_eq!(replay.len(), 20);
    assert!(
        replay
            .iter()
            .enumerate()
            .all(|(i, e)| e.payload == vec![i as u8; 30])
    );
    assert_eq!(wal.append_blocking(b"21".to_vec()).unwrap(), Lsn::new(21));

    // Map of an empty file is empty bytes, not an mmap error.
    let empty = tmp.path().join("empty");
    drop(fs.create(&empty).unwrap());
    assert!(fs.map(&empty).unwrap().is_empty());
    assert_eq!(
        fs.create(&empty).unwrap_err().kind(),
        io::ErrorKind::AlreadyExists
    );
}

/// What an appender attaches reaches `on_durable` with its own entry; an entry
/// appended without one, and every replayed entry, comes with none.
#[test]
fn attachments_reach_on_durable_with_their_entry() {
    type Seen = Arc<std::sync::Mutex<Vec<(u64, Vec<u8>, Option<u32>)>>>;
    let fs = SimFs::new(3);
    let seen: Seen = Arc::default();
    let callback = |seen: &Seen| -> toplog_wal::OnDurable {
        let seen = Arc::clone(seen);
        Box::new(move |lsn, payload, attachment| {
            let tag = attachment
                .and_then(|a| a.downcast::<u32>().ok())
                .map(|b| *b);
            seen.lock()
                .unwrap()
                .push((lsn.get(), payload.to_vec(), tag));
        })
    };
    let (wal, _) = Wal::open(
        Arc::new(fs.clone()),
        &dir(),
        options(1 << 20),
        Lsn::ZERO,
        callback(&seen),
    )
    .unwrap();
    let receivers: Vec<_> = (0..20u32)
        .map(|i| {
            let payload = format!("entry {i}").into_bytes();
            if i % 3 == 0 {
                wal.append(payload)
            } else {
                wal.append_attached(payload, Box::new(i))
            }
        })
        .collect();
    for rx in receivers {
        rx.blocking_recv().unwrap().unwrap();
    }
    let got = seen.lock().unwrap().clone();
    let want: Vec<_> = (0..20u32)
        .map(|i| {
            let tag = (i % 3 != 0).then_some(i);
            (u64::from(i) + 1, format!("entry {i}").into_bytes(), tag)
        })
        .collect();
    assert_eq!(got, want);
    wal.close().unwrap();

    let replayed: Seen = Arc::default();
    let (wal, entries) = Wal::open(
        Arc::new(fs),
        &dir(),
        options(1 << 20),
        Lsn::ZERO,
        callback(&replayed),
    )
    .unwrap();
    assert_eq!(
        entries.len(),
        20,
        "the log holds the payloads, not the attachments"
    );
    wal.append_blocking(b"after".to_vec()).unwrap();
    assert_eq!(
        replayed.lock().unwrap().clone(),
        vec![(21, b"after".to_vec(), None)]
    );
}
