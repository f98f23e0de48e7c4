//! Rules over a real store: a burst of 5xx on one endpoint, read from the
//! rollups alone, fires a static rule within its window and resolves after
//! it; a rule the rollups cannot answer is refused with the reason.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use toplog_alerting::evaluate::Source;
use toplog_alerting::{Rule, StoreSource, backtest};
use toplog_engine::{Engine, EngineConfig};
use toplog_types::{Event, Micros};
use toplog_wal::SimFs;

const MIN: i64 = 60_000_000;
/// 2026-01-01T00:00:00Z
const T0: i64 = 1_767_225_600_000_000;

fn event(i: usize, minute: i64, endpoint: &str, status: u16) -> Event {
    Event {
        request_id: format!("r{i}"),
        timestamp: Micros::new(T0 + minute * MIN + (i as i64 % 50) * 1_000_000),
        user_id: format!("u{}", i % 7),
        endpoint: endpoint.to_owned(),
        method: "GET".into(),
        status_code: status,
        latency_us: 20_000 + (i as u64 % 100) * 100,
    }
}

#[test]
fn a_burst_of_errors_fires_from_the_rollups_and_resolves() {
    let mut config = EngineConfig::new("/data");
    config.partition = Duration::from_secs(3600);
    config.memtable_max_age = Duration::from_secs(3600);
    let engine = Engine::open_with(Arc::new(SimFs::new(1)), config).unwrap();
    // An hour of steady traffic on two endpoints, 2% errors; minutes 30 to
    // 34 of GET /a answer 5xx to half its requests.
    let mut events = Vec::new();
    for minute in 0..60 {
        for j in 0..100 {
            let i = events.len();
            let burst = (30..35).contains(&minute) && j % 2 == 0;
            let status = if burst || j % 50 == 0 { 500 } else { 200 };
            events.push(event(i, minute, "GET /a", status));
            events.push(event(
                i + 1_000_000,
                minute,
                "GET /b",
                if j % 50 == 0 { 503 } else { 200 },
            ));
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for batch in events.chunks(2_000) {
        rt.block_on(engine.ingest(batch.to_vec(), None)).unwrap();
    }
    engine.flush().unwrap();

    let rule = Rule::parse(
        &json!({"name": "5xx", "metric": "error_rate", "by": "endpoint",
        "window": "5m", "op": ">", "threshold": 0.2, "for": "1m", "min_count": 100}),
    )
    .unwrap();
    rule.check_rollups().unwrap();
    let source = StoreSource { engine: &engine };
    let firings = backtest(&rule, &source, Micros::new(T0), Micros::new(T0 + 60 * MIN)).unwrap();
    assert_eq!(firings.len(), 1, "{firings:?}");
    let f = &firings[0];
    assert_eq!(f.key, "GET /a");
    let minute = |t: Micros| (t.get() - T0) / MIN;
    // The 5-minute rate passes 20% once two burst minutes are in it (window
    // ending at 32), then one more minute of `for`.
    assert_eq!(minute(f.started_at), 33);
    assert!(f.value.unwrap() > 0.2);
    // Below 20% once at most one burst minute is left in the window (ending
    // at 39), resolved at once (no keep_firing_for).
    assert_eq!(minute(f.resolved_at.unwrap()), 39);

    // The same window's readings come from the rollups alone.
    let (_, sources) = toplog_query::window_values(
        &engine,
        rule.metric,
        rule.by,
        &rule.filters,
        toplog_engine::TimeRange {
            start: Micros::new(T0 + 30 * MIN),
            end: Micros::new(T0 + 35 * MIN),
        },
        10,
        toplog_query::Order::Desc,
    )
    .unwrap();
    assert_eq!(sources, ["rollup_1m"]);
    // The total, without `by`.
    let total = Rule::parse(
        &json!({"name": "all", "metric": "frequency", "window": "1m",
        "op": "<", "threshold": 1}),
    )
    .unwrap();
    let r = source
        .readings(
            &total,
            Micros::new(T0 + 10 * MIN),
            Micros::new(T0 + 11 * MIN),
        )
        .unwrap();
    assert_eq!((r.len(), r[0].key.as_str(), r[0].value), (1, "", 200.0));
}

#[test]
fn a_rule_the_rollups_cannot_answer_is_refused() {
    let by_user_p99 = Rule::parse(&json!({"name": "slow users", "metric": "latency_p99",
        "by": "user_id", "op": ">", "threshold": 1000}))
    .unwrap();
    let err = by_user_p99.check_rollups().unwrap_err();
    assert_eq!(err.field, "by");
    assert!(err.reason.contains("sketch"), "{err}");
    let two_filters = Rule::parse(&json!({"name": "x", "metric": "errors", "by": "method",
        "filters": {"endpoint": "GET /a", "user_id": "u1"}, "op": ">", "threshold": 1}))
    .unwrap();
    assert_eq!(two_filters.check_rollups().unwrap_err().field, "filters");
}
