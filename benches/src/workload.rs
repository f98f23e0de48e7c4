//! Realistic request traffic, deterministic from a seed: about 2,000 route
//! templates with methods drawn Zipf-like, about a million users drawn
//! Zipf-like, a daily traffic cycle, a status mix with a few error-prone
//! endpoints, and log-normal latencies with a few slow endpoints.

use toplog_types::{Event, Micros};

use crate::{SplitMix, uuid_like};

const DAY_US: i64 = 86_400_000_000;
const RESOURCES: [&str; 20] = [
    "users", "orders", "items", "carts", "payments", "invoices", "sessions", "products", "reviews",
    "search", "accounts", "teams", "projects", "files", "messages", "events", "reports",
    "settings", "tokens", "webhooks",
];
const ACTIONS: [&str; 10] = [
    "",
    "/{id}",
    "/{id}/history",
    "/{id}/items",
    "/{id}/status",
    "/export",
    "/{id}/comments",
    "/bulk",
    "/{id}/refund",
    "/{id}/share",
];

/// The shape of the traffic.
#[derive(Debug, Clone)]
pub struct Workload {
    pub seed: u64,
    /// Distinct route templates (with their methods).
    pub endpoints: usize,
    /// Distinct users to draw from.
    pub users: u64,
    /// Events are spread over `[end - span_us, end)`.
    pub end: Micros,
    pub span_us: i64,
}

/// One route template with its character.
#[derive(Debug, Clone)]
struct Route {
    endpoint: String,
    method: &'static str,
    /// Share of requests that fail with a 5xx.
    error_rate: f64,
    /// Median latency in milliseconds.
    median_ms: f64,
}

/// Draws events of a [`Workload`] in time order.
#[derive(Debug)]
pub struct Generator {
    w: Workload,
    rng: SplitMix,
    routes: Vec<Route>,
    /// Cumulative Zipf weights of `routes`.
    cdf: Vec<f64>,
    next: u64,
    total: u64,
}

impl Generator {
    /// A generator of `total` events.
    pub fn new(w: Workload, total: u64) -> Self {
        let mut rng = SplitMix::new(w.seed);
        let mut routes = Vec::with_capacity(w.endpoints);
        for i in 0..w.endpoints {
            let resource = RESOURCES[i % RESOURCES.len()];
            let action = ACTIONS[(i / RESOURCES.len()) % ACTIONS.len()];
            let version = i / (RESOURCES.len() * ACTIONS.len()) + 1;
            let method = match rng.next_u64() % 10 {
                0..=5 => "GET",
                6 | 7 => "POST",
                8 => "PUT",
                _ => "DELETE",
            };
            // A few error-prone and a few slow endpoints.
            let error_rate = if rng.next_u64().is_multiple_of(50) {
                0.15
            } else {
                0.005
            };
            let median_ms = if rng.next_u64().is_multiple_of(40) {
                400.0
            } else {
                8.0 + (rng.next_u64() % 40) as f64
            };
            routes.push(Route {
                endpoint: format!("{method} /api/v{version}/{resource}{action}"),
                method,
                error_rate,
                median_ms,
            });
        }
        let mut acc = 0.0;
        let cdf = (0..routes.len())
            .map(|i| {
                acc += 1.0 / (i as f64 + 1.0).powf(1.1);
                acc
            })
            .collect();
        Self {
            w,
            rng,
            routes,
            cdf,
            next: 0,
            total,
        }
    }

    /// The instant of event `i` of `total`: events are spaced so that traffic
    /// follows a daily cycle (busiest at 15:00 UTC, a third of that at 03:00).
    fn timestamp(&self, i: u64) -> Micros {
        let start = self.w.end.get() - self.w.span_us;
        // Invert the cumulative traffic of the cycle numerically: position in
        // "traffic units" -> time. One day holds 1.0 unit; rate(t) = 1 + 0.5 sin(...).
        let frac = (i as f64 + 0.5) / self.total.max(1) as f64;
        let mut t = frac * self.w.span_us as f64;
        let omega = std::f64::consts::TAU / DAY_US as f64;
        let peak = 15.0 * 3_600_000_000.0;
        let phase = |t: f64| (start as f64 + t - peak) * omega + std::f64::consts::FRAC_PI_2;
        // cumulative(t) = t - (0.5 / omega) (cos(phase(t)) - cos(phase(0))); solve cumulative(t) = target.
        let target = t;
        for _ in 0..8 {
            let c = t - 0.5 / omega * ((phase(t)).cos() - phase(0.0).cos());
            let rate = 1.0 + 0.5 * phase(t).sin();
            t -= (c - target) / rate;
            t = t.clamp(0.0, (self.w.span_us - 1) as f64);
        }
        Micros::new(start + t as i64)
    }

    fn normal(&mut self) -> f64 {
        (0..6).map(|_| self.rng.unit()).sum::<f64>() - 3.0
    }
}

impl Iterator for Generator {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        if self.next >= self.total {
            return None;
        }
        let i = self.next;
        self.next += 1;
        let u = self.rng.unit() * self.cdf[self.cdf.len() - 1];
        let r = self
            .cdf
            .partition_point(|c| *c < u)
            .min(self.routes.len() - 1);
        let user = self.rng.skewed(self.w.users);
        let (a, b) = (self.rng.next_u64(), self.rng.next_u64());
        let route = &self.routes[r];
        let (error_rate, median_ms) = (route.error_rate, route.median_ms);
        let roll = self.rng.unit();
        let status = if roll < error_rate {
            [500, 502, 503, 504][(a % 4) as usize]
        } else {
            match (roll * 1000.0) as u32 % 100 {
                0..=2 => 404,
                3 => 400,
                4 => 401,
                5 => 429,
                6..=8 => 201,
                9 => 304,
                _ => 200,
            }
        };
        let latency_ms = median_ms * (0.6 * self.normal()).exp();
        let route = &self.routes[r];
        Some(Event {
            request_id: uuid_like(a, b),
            timestamp: self.timestamp(i),
            user_id: format!("user-{user:07}"),
            endpoint: route.endpoint.clone(),
            method: route.method.to_owned(),
            status_code: status,
            latency_us: (latency_ms * 1000.0).max(1.0) as u64,
        })
    }
}

/// One event as an NDJSON line of the ingest API (no trailing newline).
pub fn ndjson_line(e: &Event, out: &mut String) {
    use std::fmt::Write;
    let _ = write!(
        out,
        r#"{{"request_id":"{}","timestamp":"{}","user_id":"{}","endpoint":"{}","method":"{}","status_code":{},"latency_ms":{}}}"#,
        e.request_id,
        e.timestamp.to_rfc3339(),
        e.user_id,
        e.endpoint,
        e.method,
        e.status_code,
        e.latency_ms()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_in_time_order_and_within_the_span() {
        let w = Workload {
            seed: 3,
            endpoints: 2_000,
            users: 1_000_000,
            end: Micros::new(1_767_225_600_000_000),
            span_us: 30 * DAY_US,
        };
        let a: Vec<Event> = Generator::new(w.clone(), 5_000).collect();
        let b: Vec<Event> = Generator::new(w.clone(), 5_000).collect();
        assert_eq!(a, b);
        assert!(a.windows(2).all(|p| p[0].timestamp <= p[1].timestamp));
        let start = w.end.get() - w.span_us;
        assert!(
            a.iter()
                .all(|e| start <= e.timestamp.get() && e.timestamp < w.end)
        );
        let errors = a.iter().filter(|e| e.status_code >= 500).count();
        assert!((10..500).contains(&errors), "{errors} errors in 5,000");
        let mut line = String::new();
        ndjson_line(&a[0], &mut line);
        let limits = toplog_types::ValidationLimits {
            now: w.end,
            max_future_us: 0,
            max_age_us: w.span_us,
        };
        let value: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        let back = Event::from_json(&value, 0, &limits).map_err(|e| e.to_string());
        assert_eq!(back, Ok(a[0].clone()));
    }
}
