//! Property tests of recovery against the model "the log is exactly the appended
//! entries": round trip, every truncation point, every single-byte flip.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use toplog_types::Lsn;
use toplog_wal::{Entry, WalError};

fn payloads(max_len: usize, max_count: usize) -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(prop::collection::vec(any::<u8>(), 0..max_len), 0..max_count)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn round_trip(payloads in payloads(300, 24), terms in prop::collection::vec(any::<u64>(), 24), segment_bytes in 64u64..2048, after in 0usize..30) {
        let fs = toplog_wal::SimFs::new(7);
        let (wal, replay) = open(&fs, options(segment_bytes), 0).unwrap();
        prop_assert!(replay.is_empty());
        let mut expected = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            let lsn = wal.append_with_term(terms[i], p.clone()).blocking_recv().unwrap().unwrap();
            prop_assert_eq!(lsn, Lsn::new(i as u64 + 1));
            expected.push(Entry { lsn, term: terms[i], payload: p.clone() });
        }
        wal.close().unwrap();
        drop(wal);
        // Everything was fsynced and the directory synced on every roll: a crash loses nothing.
        fs.crash();
        let (wal, replay) = open(&fs, options(segment_bytes), 0).unwrap();
        prop_assert_eq!(&replay, &expected);
        drop(wal);
        let after = after.min(expected.len());
        let (wal, replay) = open(&fs, options(segment_bytes), after as u64).unwrap();
        prop_assert_eq!(&replay[..], &expected[after..]);
        prop_assert_eq!(wal.append_blocking(b"next".to_vec()).unwrap(), Lsn::new(expected.len() as u64 + 1));
    }

    #[test]
    fn every_truncation_point_recovers_the_complete_frames(payloads in payloads(40, 8)) {
        let source = write_log(&payloads, u64::MAX);
        let files = log_files(&source);
        prop_assert_eq!(files.len(), 1);
        let (name, bytes) = &files[0];
        let ends = frame_ends(&payloads);
        prop_assert_eq!(bytes.len(), *ends.last().unwrap_or(&HEADER_LEN));
        let all = expected_entries(&payloads);
        for len in 0..=bytes.len() {
            let fs = disk_with(&[(name.clone(), bytes[..len].to_vec())]);
            let (wal, replay) = open(&fs, options(u64::MAX), 0)
                .unwrap_or_else(|e| panic!("open after truncation to {len} bytes failed: {e}"));
            let complete = ends.iter().filter(|&&end| end <= len).count();
            prop_assert_eq!(&replay[..], &all[..complete], "truncated to {} bytes", len);
            let lsn = wal.append_blocking(b"after".to_vec()).unwrap();
            prop_assert_eq!(lsn, Lsn::new(complete as u64 + 1));
            wal.close().unwrap();
            drop(wal);
            let (_wal, replay) = open(&fs, options(u64::MAX), 0).unwrap();
            prop_assert_eq!(replay.len(), complete + 1);
            prop_assert_eq!(&replay[complete].payload, &b"after".to_vec());
        }
    }

    #[test]
    fn every_byte_flip_is_detected(payloads in payloads(40, 6).prop_filter("need two entries", |p| p.len() >= 2), seed in any::<u64>()) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let source = write_log(&payloads, u64::MAX);
        let (name, bytes) = log_files(&source).remove(0);
        let path = path_of(&name);
        let ends = frame_ends(&payloads);
        let all = expected_entries(&payloads);
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= rng.random_range(1..=255u8);
            let fs = disk_with(&[(name.clone(), damaged)]);
            let frame = ends.iter().position(|&end| at < end && at >= HEADER_LEN);
            match (open(&fs, options(u64::MAX), 0), frame) {
                // The header: every field is checked.
                (Err(e), None) => prop_assert!(matches!(e, WalError::Corrupt { .. }), "flip at {}: {}", at, e),
                // A frame followed by a valid frame: not a torn tail, error at that frame.
                (Err(e), Some(k)) if k + 1 < all.len() => {
                    let start = if k == 0 { HEADER_LEN } else { ends[k - 1] };
                    prop_assert!(is_corrupt_at(&e, &path, start as u64), "flip at {}: {}", at, e);
                }
                // The last frame: indistinguishable from a torn write; only that frame is dropped.
                (Ok((_wal, replay)), Some(k)) if k + 1 == all.len() => {
                    prop_assert_eq!(&replay[..], &all[..k], "flip at {}", at);
                }
                (Ok((_wal, replay)), _) => {
                    prop_assert!(false, "flip at {} (frame {:?}) returned {} entries", at, frame, replay.len());
                }
                (Err(e), _) => prop_assert!(false, "flip at {} in the last frame failed: {}", at, e),
            }
        }
    }

    #[test]
    fn a_flip_in_an_older_file_is_an_error(payloads in payloads(30, 10).prop_filter("need several files", |p| p.len() >= 4), seed in any::<u64>()) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        // Small segments: every file holds one or two frames.
        let source = write_log(&payloads, 60);
        let files = log_files(&source);
        prop_assert!(files.len() >= 2);
        for victim in 0..files.len() - 1 {
            for at in 0..files[victim].1.len() {
                let mut damaged = files.clone();
                damaged[victim].1[at] ^= rng.random_range(1..=255u8);
                let fs = disk_with(&damaged);
                match open(&fs, options(60), 0) {
                    Err(WalError::Corrupt { path, .. }) => prop_assert_eq!(path, path_of(&files[victim].0)),
                    Err(e) => prop_assert!(false, "flip at {} of {}: wrong error {}", at, files[victim].0, e),
                    Ok((_, replay)) => prop_assert!(false, "flip at {} of {} not detected ({} entries)", at, files[victim].0, replay.len()),
                }
            }
        }
        // Sanity: the undamaged files open and give everything back.
        let (_wal, replay) = open(&disk_with(&files), options(60), 0).unwrap();
        prop_assert_eq!(replay, expected_entries(&payloads));
    }
}
