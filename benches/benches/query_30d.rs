//! The questions of issue 3 on 10,000,000 events spread over 30 days, in
//! process: top-10 endpoints by frequency over 1 h, 24 h and 30 d, top-10 users
//! over 7 d, top-10 endpoints by p99 over 24 h, and 30-day history. Prints the
//! load time and the resident memory once loaded. `TOPLOG_BENCH_EVENTS`
//! overrides the event count.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use toplog_benches::{loaded_engine, top10};
use toplog_engine::{Dimension, TimeRange};
use toplog_query::{Metric, history, top_k};
use toplog_types::Micros;

const DAY: i64 = 86_400_000_000;
const HOUR: i64 = 3_600_000_000;
/// 2026-01-01T00:00:00Z
const T0: i64 = 1_767_225_600_000_000;

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(str::to_owned)
        })
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn bench(c: &mut Criterion) {
    let n: usize = std::env::var("TOPLOG_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let started = Instant::now();
    let engine = loaded_engine(dir.path(), n, 100, Micros::new(T0), 30 * DAY);
    let stats = engine.stats();
    println!(
        "loaded {n} events over 30 days in {:.1} s ({:.0} events/s with rollups, fsync never); {} segments, {:.1} bytes/event on disk; RSS {:.0} MiB",
        started.elapsed().as_secs_f64(),
        n as f64 / started.elapsed().as_secs_f64(),
        stats.segments,
        stats.segment_bytes as f64 / n as f64,
        rss_mib()
    );
    let end = T0 + 30 * DAY;
    let range = |len: i64| TimeRange {
        start: Micros::new(end - len),
        end: Micros::new(end),
    };
    let q = |metric, by, len, min_count| top10(metric, by, range(len), min_count);
    let cases = [
        (
            "top10_endpoints_frequency_1h",
            q(Metric::Frequency, Dimension::Endpoint, HOUR, 0),
        ),
        (
            "top10_endpoints_frequency_24h",
            q(Metric::Frequency, Dimension::Endpoint, DAY, 0),
        ),
        (
            "top10_endpoints_frequency_30d",
            q(Metric::Frequency, Dimension::Endpoint, 30 * DAY, 0),
        ),
        (
            "top10_users_frequency_7d",
            q(Metric::Frequency, Dimension::UserId, 7 * DAY, 0),
        ),
        (
            "top10_endpoints_p99_24h",
            q(Metric::LatencyP99, Dimension::Endpoint, DAY, 100),
        ),
    ];
    let mut g = c.benchmark_group("issue3_10m_events_30d");
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    for (name, query) in cases {
        g.bench_function(name, |b| b.iter(|| top_k(&engine, black_box(&query))));
    }
    g.bench_function("history_30d", |b| {
        b.iter(|| history(&engine, Micros::new(T0), 30))
    });
    g.finish();
    drop(engine);
}

criterion_group!(benches, bench);
criterion_main!(benches);
