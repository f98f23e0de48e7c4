//! WAL append throughput with `fsync = "always"` on the real disk, by batch
//! size, for one writer and for 8 concurrent writers sharing fsyncs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use toplog_types::Lsn;
use toplog_wal::{FsyncPolicy, RealFs, Wal, WalOptions};

/// About what one encoded event takes in a log entry.
const EVENT_BYTES: usize = 90;

fn open(dir: &std::path::Path) -> Wal {
    let opts = WalOptions {
        fsync: FsyncPolicy::Always,
        ..WalOptions::default()
    };
    match Wal::open(
        Arc::new(RealFs),
        dir,
        opts,
        Lsn::ZERO,
        Box::new(|_, _, _| {}),
    ) {
        Ok((wal, _)) => wal,
        Err(e) => panic!("open wal: {e}"),
    }
}

fn append(c: &mut Criterion) {
    let mut g = c.benchmark_group("wal_append_fsync_always");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    for events in [1usize, 100, 1_000, 10_000] {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let wal = open(dir.path());
        let payload = vec![0x5au8; events * EVENT_BYTES];
        g.throughput(Throughput::Elements(events as u64));
        g.bench_with_input(BenchmarkId::new("1_writer", events), &events, |b, _| {
            b.iter(|| {
                wal.append_blocking(payload.clone())
                    .unwrap_or_else(|e| panic!("append: {e}"))
            })
        });
        let _ = wal.close();
    }
    for events in [100usize, 1_000] {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let wal = Arc::new(open(dir.path()));
        let payload = vec![0x5au8; events * EVENT_BYTES];
        g.throughput(Throughput::Elements(8 * events as u64));
        g.bench_with_input(BenchmarkId::new("8_writers", events), &events, |b, _| {
            b.iter_custom(|iters| {
                let t = Instant::now();
                std::thread::scope(|s| {
                    for _ in 0..8 {
                        let (wal, payload) = (&wal, &payload);
                        s.spawn(move || {
                            for _ in 0..iters {
                                wal.append_blocking(payload.clone())
                                    .unwrap_or_else(|e| panic!("append: {e}"));
                            }
                        });
                    }
                });
                t.elapsed()
            })
        });
        let _ = wal.close();
    }
    g.finish();
}

criterion_group!(benches, append);
criterion_main!(benches);
