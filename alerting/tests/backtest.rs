//! Learned thresholds through a backtest, on three weeks of generated
//! traffic (`toplog_alerting::synthetic`: fixed seed, a daily cycle,
//! injected anomalies of named kinds): every anomaly is caught, and no rule
//! raises more than one false alert a day. The traffic is read minute by
//! minute from the generator; `benches`' `alert_backtest` runs the same
//! rules over a real store holding it.
#![allow(clippy::unwrap_used)]

use serde_json::json;
use toplog_alerting::evaluate::{Reading, Source};
use toplog_alerting::synthetic::{ANOMALIES, Anomaly, ENDPOINTS, MinuteLoad, Traffic, at};
use toplog_alerting::{Firing, Rule, backtest};
use toplog_query::Metric;
use toplog_types::Micros;

const MINUTE_US: i64 = 60_000_000;
/// Day 0 starts here (2026-11-02, a Monday).
const T0: i64 = 1_762_041_600_000_000;

struct Model(Traffic);

impl Source for Model {
    fn readings(&self, rule: &Rule, start: Micros, end: Micros) -> Result<Vec<Reading>, String> {
        let minutes = self.0.minutes.len() as i64;
        let index = |t: Micros| ((t.get() - T0) / MINUTE_US).clamp(0, minutes) as usize;
        let mut out = Vec::new();
        for (e, name) in ENDPOINTS.iter().enumerate() {
            if rule.filters.endpoint.as_deref().is_some_and(|f| f != *name) {
                continue;
            }
            let (mut count, mut errors, mut latency_sum) = (0u64, 0u64, 0.0);
            for m in &self.0.minutes[index(start)..index(end)] {
                let MinuteLoad {
                    count: c,
                    errors: x,
                    latency_ms,
                } = m[e];
                count += c;
                errors += x;
                latency_sum += latency_ms * c as f64;
            }
            if count == 0 {
                continue;
            }
            let value = match rule.metric {
                Metric::Frequency => count as f64,
                Metric::Errors => errors as f64,
                Metric::ErrorRate => errors as f64 / count as f64,
                Metric::LatencyAvg => latency_sum / count as f64,
                other => return Err(format!("the model has no {}", other.name())),
            };
            out.push(Reading {
                key: (*name).to_owned(),
                value,
                count,
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

fn minute(t: Micros) -> usize {
    ((t.get() - T0) / MINUTE_US) as usize
}

/// Whether `f` is the rule's catch of `a`: its key, firing within the
/// anomaly or one window after.
fn caught(f: &Firing, a: &Anomaly, rule: &Rule) -> bool {
    f.key == ENDPOINTS[a.endpoint]
        && (a.from..=a.to + rule.window_minutes as usize).contains(&minute(f.started_at))
}

#[test]
fn learned_thresholds_catch_every_anomaly_with_at_most_one_false_alert_a_day() {
    let model = Model(Traffic::generate(Micros::new(T0), 21, 200.0, 22));
    // Two weeks of history, then a week judged.
    let from = Micros::new(T0 + at(14, 0, 0) as i64 * MINUTE_US);
    let to = Micros::new(T0 + at(21, 0, 0) as i64 * MINUTE_US);
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
        if let Some(a) = anomaly {
            assert!(
                firings.iter().any(|f| caught(f, a, rule)),
                "{kind}: not caught; firings {firings:?}"
            );
        }
        let false_alerts: Vec<&Firing> = firings
            .iter()
            .filter(|f| !anomaly.is_some_and(|a| caught(f, a, rule)))
            .collect();
        assert!(
            false_alerts.len() <= 7,
            "{kind}: {} false alerts in 7 days: {false_alerts:?}",
            false_alerts.len()
        );
    }
}

#[test]
fn a_static_rule_fires_for_its_window_and_resolves() {
    let model = Model(Traffic::generate(Micros::new(T0), 21, 200.0, 22));
    let rule = Rule::parse(
        &json!({"name": "errors", "metric": "error_rate", "by": "endpoint",
        "window": "5m", "op": ">", "threshold": 0.1, "for": "2m", "min_count": 50}),
    )
    .unwrap();
    let a = &ANOMALIES[0];
    let from = Micros::new(T0 + (a.from as i64 - 60) * MINUTE_US);
    let to = Micros::new(T0 + (a.to as i64 + 60) * MINUTE_US);
    let firings = backtest(&rule, &model, from, to).unwrap();
    assert_eq!(firings.len(), 1, "{firings:?}");
    let f = &firings[0];
    assert_eq!(f.key, "GET /a");
    // The window needs about a third of its minutes past 10% before the
    // rate crosses it; then two more minutes of `for`.
    let started = minute(f.started_at) as i64 - a.from as i64;
    assert!((2..=6).contains(&started), "fired {started} minutes in");
    let resolved = minute(f.resolved_at.unwrap()) as i64 - a.to as i64;
    assert!(
        (1..=5).contains(&resolved),
        "resolved {resolved} minutes after"
    );
}
