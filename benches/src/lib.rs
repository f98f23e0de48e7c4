//! Shared helpers for toplog's benchmarks: deterministic, realistic-looking events.

pub mod workload;

use std::path::Path;
use std::sync::Arc;

use toplog_engine::{Dimension, Engine, EngineConfig, Filters, TimeRange};
use toplog_query::{Grouping, Metric, Order, TopK};
use toplog_types::{Event, Micros};
use toplog_wal::{FsyncPolicy, RealFs};

/// A small deterministic generator (SplitMix64) so benches need no RNG crate.
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Roughly Zipf-distributed index in `[0, n)`: small indices are far more common.
    pub fn skewed(&mut self, n: u64) -> u64 {
        let u = self.unit();
        ((n as f64).powf(u) - 1.0) as u64 % n.max(1)
    }
}

/// A UUIDv7-shaped request id from two random words.
pub fn uuid_like(a: u64, b: u64) -> String {
    format!(
        "{:08x}-{:04x}-7{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        (b >> 48) | 0x8000,
        b & 0xffff_ffff_ffff
    )
}

const METHODS: [&str; 4] = ["GET", "POST", "PUT", "DELETE"];

/// `n` events one millisecond apart from `start`: UUID-shaped request ids,
/// 500 route templates, 50,000 users, log-normal-ish latencies, 2% errors.
pub fn events(n: usize, seed: u64, start: Micros) -> Vec<Event> {
    events_over(n, seed, start, n as i64 * 1000)
}

/// `n` such events spread evenly over `span_us` from `start`.
pub fn events_over(n: usize, seed: u64, start: Micros, span_us: i64) -> Vec<Event> {
    let step = span_us as f64 / n.max(1) as f64;
    let mut rng = SplitMix::new(seed);
    (0..n)
        .map(|i| {
            let route = rng.skewed(500);
            let method = METHODS[(route % 4) as usize];
            let a = rng.next_u64();
            let b = rng.next_u64();
            let status = match rng.next_u64() % 100 {
                0 | 1 => 500,
                2..=5 => 404,
                6 => 201,
                _ => 200,
            };
            // exp of a roughly normal variable: sum of uniforms.
            let normal = (0..4).map(|_| rng.unit()).sum::<f64>() - 2.0;
            let latency_ms = (3.0 + 1.2 * normal).exp();
            Event {
                request_id: uuid_like(a, b),
                timestamp: Micros::new(start.get() + (i as f64 * step) as i64),
                user_id: format!("user-{}", rng.skewed(50_000)),
                endpoint: format!("{method} /api/v1/resource{route}/{{id}}"),
                method: method.to_owned(),
                status_code: status,
                latency_us: (latency_ms * 1000.0) as u64,
            }
        })
        .collect()
}

/// An engine in `dir` (`fsync = "never"`) holding `n` generated events spread
/// over `span_us` from `start`, ingested in batches of 10,000 and flushed.
/// Events are generated a million at a time to keep the generator's memory small.
pub fn loaded_engine(dir: &Path, n: usize, seed: u64, start: Micros, span_us: i64) -> Engine {
    let mut config = EngineConfig::new(dir);
    config.fsync = FsyncPolicy::Never;
    let engine =
        Engine::open_with(Arc::new(RealFs), config).unwrap_or_else(|e| panic!("open: {e}"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let chunk = 1_000_000;
    let parts = n.div_ceil(chunk).max(1);
    let part_span = span_us / parts as i64;
    for part in 0..parts {
        let count = chunk.min(n - part * chunk);
        let from = Micros::new(start.get() + part as i64 * part_span);
        for batch in events_over(count, seed + part as u64, from, part_span).chunks(10_000) {
            rt.block_on(engine.ingest(batch.to_vec(), None))
                .unwrap_or_else(|e| panic!("ingest: {e}"));
        }
    }
    engine.flush().unwrap_or_else(|e| panic!("flush: {e}"));
    engine
}

/// Top 10 of `by` by `metric` over `range`, best first.
pub fn top10(metric: Metric, by: Dimension, range: TimeRange, min_count: u64) -> TopK {
    TopK {
        k: 10,
        metric,
        by: Grouping::By(by),
        range,
        filters: Filters::default(),
        min_count,
        order: Order::Desc,
    }
}
