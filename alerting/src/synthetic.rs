//! Generated traffic for trying learned thresholds (the backtest test and
//! `benches`' `alert_backtest`): four endpoints over whole days, a daily
//! cycle, Poisson-like noise from a fixed seed, and anomalies of named
//! kinds injected at known minutes. Endpoint `GET /d` drifts up 1% a day,
//! which no rule should take for an anomaly.

use toplog_types::{Event, Micros};

pub const ENDPOINTS: [&str; 4] = ["GET /a", "GET /b", "GET /c", "GET /d"];
const MINUTE_US: i64 = 60_000_000;

/// One endpoint's requests in one minute.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MinuteLoad {
    pub count: u64,
    pub errors: u64,
    /// Mean latency, ms.
    pub latency_ms: f64,
}

/// An injected anomaly: its kind, the endpoint (index), the minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Anomaly {
    pub kind: &'static str,
    pub endpoint: usize,
    pub from: usize,
    pub to: usize,
}

/// Minute `minute` of hour `hour` of day `day`, counted from the start.
pub const fn at(day: usize, hour: usize, minute: usize) -> usize {
    day * 1440 + hour * 60 + minute
}

/// The anomalies, in the third week.
pub const ANOMALIES: [Anomaly; 3] = [
    Anomaly {
        kind: "error-rate jump",
        endpoint: 0,
        from: at(16, 10, 0),
        to: at(16, 10, 30),
    },
    Anomaly {
        kind: "latency climb",
        endpoint: 1,
        from: at(17, 14, 0),
        to: at(17, 15, 0),
    },
    Anomaly {
        kind: "traffic drop to zero",
        endpoint: 2,
        from: at(18, 3, 0),
        to: at(18, 3, 40),
    },
];

/// Generated traffic: per minute, per endpoint.
#[derive(Debug, Clone)]
pub struct Traffic {
    pub start: Micros,
    pub minutes: Vec<[MinuteLoad; 4]>,
}

/// A small generator (SplitMix64) with normal draws, so the traffic is the
/// same on every machine and build.
struct Draws(u64);

impl Draws {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A standard normal draw (Box-Muller).
    fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-12);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

impl Traffic {
    /// `days` days from `start` (a midnight), `per_minute` requests a minute
    /// per endpoint on average, from `seed`.
    pub fn generate(start: Micros, days: usize, per_minute: f64, seed: u64) -> Self {
        let mut draws = Draws(seed);
        let minutes = (0..days * 1440)
            .map(|m| {
                let day = m / 1440;
                let cycle = 1.0 + 0.6 * (std::f64::consts::TAU * (m % 1440) as f64 / 1440.0).sin();
                let mut row = [MinuteLoad::default(); 4];
                for (e, slot) in row.iter_mut().enumerate() {
                    let drift = if e == 3 { 1.0 + 0.01 * day as f64 } else { 1.0 };
                    let mean = per_minute * cycle * drift;
                    let count = (mean + mean.sqrt() * draws.normal()).round().max(0.0);
                    let (mut error_rate, mut latency) = (0.02, 100.0);
                    let mut dropped = false;
                    for a in ANOMALIES
                        .iter()
                        .filter(|a| a.endpoint == e && (a.from..a.to).contains(&m))
                    {
                        match a.kind {
                            "error-rate jump" => error_rate = 0.3,
                            "latency climb" => latency = 400.0,
                            _ => dropped = true,
                        }
                    }
                    let errors_mean = count * error_rate;
                    let errors = (errors_mean + errors_mean.sqrt() * draws.normal())
                        .round()
                        .clamp(0.0, count);
                    let latency_ms = latency * (1.0 + 0.05 * draws.normal());
                    if !dropped {
                        *slot = MinuteLoad {
                            count: count as u64,
                            errors: errors as u64,
                            latency_ms,
                        };
                    }
                }
                row
            })
            .collect();
        Self { start, minutes }
    }

    /// The start of minute `m`.
    pub fn minute_start(&self, m: usize) -> Micros {
        self.start.saturating_add_micros(m as i64 * MINUTE_US)
    }

    /// Minute `m`'s requests as events, spread over the minute; the first
    /// of each endpoint's are its errors.
    pub fn events(&self, m: usize) -> Vec<Event> {
        let mut out = Vec::new();
        for (e, load) in self.minutes[m].iter().enumerate() {
            for i in 0..load.count {
                let offset = (i * 59_000_000 / load.count.max(1)) as i64;
                out.push(Event {
                    request_id: format!("m{m}-e{e}-{i}"),
                    timestamp: self.minute_start(m).saturating_add_micros(offset),
                    user_id: format!("u{}", i % 17),
                    endpoint: ENDPOINTS[e].to_owned(),
                    method: "GET".into(),
                    status_code: if i < load.errors { 500 } else { 200 },
                    latency_us: (load.latency_ms * 1000.0).round().max(0.0) as u64,
                });
            }
        }
        out
    }
}
