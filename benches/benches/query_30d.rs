//! The questions of issue 3 on 10,000,000 events spread over 30 days, in
//! process: top-10 endpoints by frequency over 1 h, 24 h and 30 d, top-10 users
//! over 7 d, top-10 endpoints by p99 over 24 h, and 30-day history. Prints the
//! load time and the resident memory once loaded. `TOPLOG_BENCH_EVENTS`
//! overrides the event count.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use toplog_benches::events_over;
use toplog_engine::{Dimension, Engine, EngineConfig, Filters, TimeRange};
use toplog_query::{Grouping, Metric, Order, TopK, history, top_k};
use toplog_types::Micros;
use toplog_wal::{FsyncPolicy, RealFs};

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
    let mut config = EngineConfig::new(dir.path());
    config.fsync = FsyncPolicy::Never;
    let engine =
        Engine::open_with(Arc::new(RealFs), config).unwrap_or_else(|e| panic!("open: {e}"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let started = Instant::now();
    // Generated a million at a time to keep the generator's own memory small.
    let chunk = 1_000_000;
    for part in 0..n.div_ceil(chunk) {
        let count = chunk.min(n - part * chunk);
        let span = 30 * DAY / n.div_ceil(chunk) as i64;
        let evs = events_over(
            count,
            100 + part as u64,
            Micros::new(T0 + part as i64 * span),
            span,
        );
        for batch in evs.chunks(10_000) {
            rt.block_on(engine.ingest(batch.to_vec(), None))
                .unwrap_or_else(|e| panic!("ingest: {e}"));
        }
    }
    engine.flush().unwrap_or_else(|e| panic!("flush: {e}"));
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
    let q = |metric, by, len, min_count| TopK {
        k: 10,
        metric,
        by: Grouping::By(by),
        range: range(len),
        filters: Filters::default(),
        min_count,
        order: Order::Desc,
    };
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
