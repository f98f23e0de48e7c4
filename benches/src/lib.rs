//! Shared helpers for toplog's benchmarks: deterministic, realistic-looking events.

use toplog_types::{Event, Micros};

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
                request_id: format!(
                    "{:08x}-{:04x}-7{:03x}-{:04x}-{:012x}",
                    a >> 32,
                    (a >> 16) & 0xffff,
                    a & 0xfff,
                    (b >> 48) | 0x8000,
                    b & 0xffff_ffff_ffff
                ),
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
