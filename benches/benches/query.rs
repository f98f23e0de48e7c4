//! Rollup cell updates, sketch merges, and top-K over one day of 1,000,000
//! events held in the engine (rollups in memory, raw rows in segments).

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use toplog_benches::workload::{Generator, Workload};
use toplog_benches::{events_over, loaded_engine, top10};
use toplog_engine::{Cell, DEFAULT_ROLLUP_KEY_BUDGET, Dimension, Rollups, TimeRange};
use toplog_query::{Metric, top_k};
use toplog_types::Micros;

const DAY: i64 = 86_400_000_000;
const HOUR: i64 = 3_600_000_000;
/// 2026-01-01T00:00:00Z
const T0: i64 = 1_767_225_600_000_000;
const EVENTS: usize = 1_000_000;

fn cells(c: &mut Criterion) {
    let evs = events_over(10_000, 7, Micros::new(T0), HOUR);
    let mut g = c.benchmark_group("cube");
    g.throughput(Throughput::Elements(evs.len() as u64));
    g.bench_function("cell_add_with_sketch_10k", |b| {
        b.iter(|| {
            let mut cell = Cell::new(true);
            for e in &evs {
                cell.add(e.status_code, e.latency_us);
            }
            cell
        })
    });
    let (mut a, mut other) = (Cell::new(true), Cell::new(true));
    for (i, e) in evs.iter().enumerate() {
        if i % 2 == 0 {
            a.add(e.status_code, e.latency_us)
        } else {
            other.add(e.status_code, e.latency_us)
        }
    }
    g.throughput(Throughput::Elements(1));
    g.bench_function("cell_merge_5k_each", |b| {
        b.iter(|| black_box(a.clone()).merge(black_box(&other)))
    });
    // Every cube at every granularity, as applying a batch does.
    g.throughput(Throughput::Elements(evs.len() as u64));
    g.bench_function("rollups_add_10k_events", |b| {
        b.iter(|| {
            let mut r = Rollups::new(DEFAULT_ROLLUP_KEY_BUDGET);
            for e in &evs {
                r.add(e);
            }
            r
        })
    });
    // The loadgen workload (10 M events over 30 days): every cube at every
    // granularity as ingest adds them, with a million users and sketches
    // spread wider than one hour's.
    let loadgen: Vec<_> = Generator::new(
        Workload {
            seed: 1,
            endpoints: 2_000,
            users: 1_000_000,
            end: Micros::new(T0 + 30 * DAY),
            span_us: 30 * DAY,
        },
        10_000_000,
    )
    .take(100_000)
    .collect();
    g.throughput(Throughput::Elements(loadgen.len() as u64));
    g.bench_function("rollups_add_100k_loadgen_events", |b| {
        b.iter(|| {
            let mut r = Rollups::new(DEFAULT_ROLLUP_KEY_BUDGET);
            for e in &loadgen {
                r.add(e);
            }
            r
        })
    });
    // A flush merging its part into the flushed rollups.
    let (mut first, mut second) = (
        Rollups::new(DEFAULT_ROLLUP_KEY_BUDGET),
        Rollups::new(DEFAULT_ROLLUP_KEY_BUDGET),
    );
    for (i, e) in evs.iter().enumerate() {
        if i % 2 == 0 {
            first.add(e)
        } else {
            second.add(e)
        }
    }
    g.bench_function("rollups_merge_5k_into_5k_events", |b| {
        b.iter(|| black_box(first.clone()).merge(black_box(&second)))
    });
    g.finish();
}

fn queries(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let engine = loaded_engine(dir.path(), EVENTS, 11, Micros::new(T0), DAY);
    let day = TimeRange {
        start: Micros::new(T0),
        end: Micros::new(T0 + DAY),
    };
    // Unaligned edges: raw rows are scanned for the partial minutes.
    let unaligned = TimeRange {
        start: Micros::new(T0 + 1_234_567),
        end: Micros::new(T0 + DAY - 7_654_321),
    };
    let hour = TimeRange {
        start: Micros::new(T0 + 5 * HOUR),
        end: Micros::new(T0 + 6 * HOUR),
    };
    let q = top10;
    let cases = [
        (
            "top10_endpoints_frequency_1h",
            q(Metric::Frequency, Dimension::Endpoint, hour, 0),
        ),
        (
            "top10_endpoints_frequency_24h",
            q(Metric::Frequency, Dimension::Endpoint, day, 0),
        ),
        (
            "top10_endpoints_frequency_24h_unaligned",
            q(Metric::Frequency, Dimension::Endpoint, unaligned, 0),
        ),
        (
            "top10_endpoints_p99_24h",
            q(Metric::LatencyP99, Dimension::Endpoint, day, 100),
        ),
        (
            "top10_users_frequency_24h",
            q(Metric::Frequency, Dimension::UserId, day, 0),
        ),
    ];
    let mut g = c.benchmark_group("top_k_1m_events_1d");
    g.sample_size(20).measurement_time(Duration::from_secs(4));
    for (name, query) in cases {
        g.bench_function(name, |b| b.iter(|| top_k(&engine, black_box(&query))));
    }
    g.finish();
    if let Err(e) = engine.close() {
        panic!("close: {e}");
    }
}

criterion_group!(benches, cells, queries);
criterion_main!(benches);
