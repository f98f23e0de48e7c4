//! Learned thresholds through a backtest, on three weeks of generated
//! traffic (fixed seed) with a daily cycle and injected anomalies of named
//! kinds: every anomaly is caught, and no rule raises more than one false
//! alert a day. The traffic is a model read minute by minute (the engine's
//! rollups stand in for it in the server's tests).
#![allow(clippy::unwrap_used)]

use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::json;
use toplog_alerting::evaluate::{Reading, Source};
use toplog_alerting::{Firing, Rule, backtest};
use toplog_query::Metric;
use toplog_types::Micros;

const MINUTE_US: i64 = 60_000_000;
const DAYS: usize = 21;
const MINUTES: usize = DAYS * 1440;
const ENDPOINTS: [&str; 4] = ["GET /a", "GET /b", "GET /c", "GET /d"];
/// Day 0 starts here (a Monday, 2026-11-02).
const T0: i64 = 1_762_041_600_000_000;

/// One minute of one endpoint.
#[derive(Clone, Copy, Default)]
struct Minute {
    count: u64,
    errors: u64,
    latency_sum_ms: f64,
}

/// An injected anomaly: the endpoint, the minutes it spans.
struct Anomaly {
    kind: &'static str,
    endpoint: usize,
    from: usize,
    to: usize,
}

const fn at(day: usize, hour: usize, minute: usize) -> usize {
    day * 1440 + hour * 60 + minute
}

const ANOMALIES: [Anomaly; 3] = [
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

struct Model {
    minutes: Vec<[Minute; 4]>,
}

fn normal(rng: &mut StdRng) -> f64 {
    // Box-Muller.
    let (u1, u2): (f64, f64) = (rng.random_range(1e-12..1.0), rng.random());
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

impl Model {
    fn generate() -> Self {
        let mut rng = StdRng::seed_from_u64(22);
        let minutes = (0..MINUTES)
            .map(|m| {
                let day = m / 1440;
                let cycle = 1.0 + 0.6 * (std::f64::consts::TAU * (m % 1440) as f64 / 1440.0).sin();
                let mut row = [Minute::default(); 4];
                for (e, slot) in row.iter_mut().enumerate() {
                    // Endpoint d drifts up 1% a day: no alert wanted.
                    let drift = if e == 3 { 1.0 + 0.01 * day as f64 } else { 1.0 };
                    let mean = 200.0 * cycle * drift;
                    let count = (mean + mean.sqrt() * normal(&mut rng)).round().max(0.0);
                    let mut error_rate = 0.02;
                    let mut latency = 100.0;
                    for a in &ANOMALIES {
                        if a.endpoint == e && (a.from..a.to).contains(&m) {
                            match a.kind {
                                "error-rate jump" => error_rate = 0.3,
                                "latency climb" => latency = 400.0,
                                _ => {}
                            }
                        }
                    }
                    let dropped = ANOMALIES.iter().any(|a| {
                        a.kind == "traffic drop to zero"
                            && a.endpoint == e
                            && (a.from..a.to).contains(&m)
                    });
                    if dropped {
                        continue;
                    }
                    let errors_mean = count * error_rate;
                    let errors = (errors_mean + errors_mean.sqrt() * normal(&mut rng))
                        .round()
                        .clamp(0.0, count);
                    let latency_mean = latency * (1.0 + 0.05 * normal(&mut rng));
                    *slot = Minute {
                        count: count as u64,
                        errors: errors as u64,
                        latency_sum_ms: latency_mean * count,
                    };
                }
                row
            })
            .collect();
        Self { minutes }
    }
}

impl Source for Model {
    fn readings(&self, rule: &Rule, start: Micros, end: Micros) -> Result<Vec<Reading>, String> {
        let index = |t: Micros| ((t.get() - T0) / MINUTE_US).clamp(0, MINUTES as i64) as usize;
        let (from, to) = (index(start), index(end));
        let mut out = Vec::new();
        for (e, name) in ENDPOINTS.iter().enumerate() {
            if rule.filters.endpoint.as_deref().is_some_and(|f| f != *name) {
                continue;
            }
            let mut sum = Minute::default();
            for m in &self.minutes[from..to] {
                sum.count += m[e].count;
                sum.errors += m[e].errors;
                sum.latency_sum_ms += m[e].latency_sum_ms;
            }
            if sum.count == 0 {
                continue;
            }
            let value = match rule.metric {
                Metric::Frequency => sum.count as f64,
                Metric::Errors => sum.errors as f64,
                Metric::ErrorRate => sum.errors as f64 / sum.count as f64,
                Metric::LatencyAvg => sum.latency_sum_ms / sum.count as f64,
                other => return Err(format!("the model has no {}", other.name())),
            };
            out.push(Reading {
                key: (*name).to_owned(),
                value,
                count: sum.count,
            });
        }
        Ok(out)
    }
}

fn rule(metric: &str, op: &str, no_data: &str) -> Rule {
    Rule::parse(
        &json!({"name": metric, "metric": metric, "by": "endpoint", "window": "5m",
        "op": op, "threshold": {"learned": {"sensitivity": "medium"}}, "min_count": 50,
        "no_data": no_data}),
    )
    .unwrap()
}

#[test]
fn learned_thresholds_catch_every_anomaly_with_at_most_one_false_alert_a_day() {
    let model = Model::generate();
    // Two weeks of history, then a week judged.
    let (from, to) = (
        Micros::new(T0 + at(14, 0, 0) as i64 * MINUTE_US),
        Micros::new(T0 + at(21, 0, 0) as i64 * MINUTE_US),
    );
    let rules = [
        ("error-rate jump", rule("error_rate", ">", "ok")),
        ("latency climb", rule("latency_avg", ">", "ok")),
        ("traffic drop to zero", rule("frequency", "<", "alert")),
        // A rise in traffic: only endpoint d's slow drift is there to tempt it.
        ("slow drift", rule("frequency", ">", "ok")),
    ];
    for (kind, rule) in &rules {
        let firings = backtest(rule, &model, from, to).unwrap();
        let anomaly = ANOMALIES.iter().find(|a| a.kind == *kind);
        let minute_of = |t: Micros| ((t.get() - T0) / MINUTE_US) as usize;
        let caught = |f: &Firing, a: &Anomaly| {
            f.key == ENDPOINTS[a.endpoint]
                && (a.from..=a.to + rule.window_minutes as usize).contains(&minute_of(f.started_at))
        };
        if let Some(a) = anomaly {
            assert!(
                firings.iter().any(|f| caught(f, a)),
                "{kind}: not caught; firings {firings:?}"
            );
        }
        let false_alerts: Vec<&Firing> = firings
            .iter()
            .filter(|f| !anomaly.is_some_and(|a| caught(f, a)))
            .collect();
        assert!(
            false_alerts.len() <= 7,
            "{kind}: {} false alerts in 7 days: {false_alerts:?}",
            false_alerts.len()
        );
        eprintln!(
            "{kind}: {} firings, {} false",
            firings.len(),
            false_alerts.len()
        );
    }
}

#[test]
fn a_static_rule_fires_for_its_window_and_resolves() {
    let model = Model::generate();
    let rule = Rule::parse(
        &json!({"name": "errors", "metric": "error_rate", "by": "endpoint",
        "window": "5m", "op": ">", "threshold": 0.1, "for": "2m", "min_count": 50}),
    )
    .unwrap();
    let a = &ANOMALIES[0];
    let (from, to) = (
        Micros::new(T0 + (a.from as i64 - 60) * MINUTE_US),
        Micros::new(T0 + (a.to as i64 + 60) * MINUTE_US),
    );
    let firings = backtest(&rule, &model, from, to).unwrap();
    assert_eq!(firings.len(), 1, "{firings:?}");
    let f = &firings[0];
    let minute_of = |t: Micros| (t.get() - T0) / MINUTE_US;
    assert_eq!(f.key, "GET /a");
    // The window needs about a third of its minutes past 10% before the
    // rate crosses it; then two more minutes of `for`.
    let started = minute_of(f.started_at) - a.from as i64;
    assert!((2..=6).contains(&started), "fired {started} minutes in");
    let resolved = minute_of(f.resolved_at.unwrap()) - a.to as i64;
    assert!(
        (1..=5).contains(&resolved),
        "resolved {resolved} minutes after"
    );
}
