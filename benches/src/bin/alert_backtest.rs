//! Alert rules over a real store: `toplog_alerting::synthetic`'s three
//! weeks of generated traffic ingested into an engine in a temporary
//! directory, then each rule backtested over the third week (the first two
//! are its history): which injected anomalies it caught, how many false
//! alerts it raised, and what one evaluation costs, from which the CPU
//! share of 500 rules evaluated once a minute follows.
//!
//!   cargo run --release -p toplog-benches --bin alert_backtest -- [--per-minute 50]

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use serde_json::json;
use toplog_alerting::synthetic::{ANOMALIES, ENDPOINTS, Traffic, at};
use toplog_alerting::{Rule, StoreSource, backtest};
use toplog_engine::{Engine, EngineConfig};
use toplog_types::Micros;

#[derive(Parser)]
struct Args {
    /// Requests a minute per endpoint, on average (four endpoints).
    #[arg(long, default_value_t = 50.0)]
    per_minute: f64,
    #[arg(long, default_value_t = 22)]
    seed: u64,
}

const MINUTE_US: i64 = 60_000_000;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Three weeks ending at the last midnight, so the store keeps them all.
    let today = Micros::now().floor_to(1_440 * MINUTE_US);
    let start = today.saturating_sub_micros(21 * 1_440 * MINUTE_US);
    let traffic = Traffic::generate(start, 21, args.per_minute, args.seed);
    let dir = tempfile::tempdir()?;
    let engine = Arc::new(Engine::open(EngineConfig::new(dir.path())).context("open the store")?);
    let rt = tokio::runtime::Runtime::new()?;
    let clock = Instant::now();
    let mut events = 0usize;
    let mut batch = Vec::new();
    for m in 0..traffic.minutes.len() {
        batch.extend(traffic.events(m));
        if batch.len() >= 20_000 {
            events += batch.len();
            rt.block_on(engine.ingest(std::mem::take(&mut batch), None))?;
        }
    }
    events += batch.len();
    rt.block_on(engine.ingest(batch, None))?;
    engine.flush()?;
    println!(
        "ingested {events} events (21 days, {} endpoints, {} a minute each on average) in {:.1} s",
        ENDPOINTS.len(),
        args.per_minute,
        clock.elapsed().as_secs_f64()
    );

    let from = traffic.minute_start(at(14, 0, 0));
    let to = traffic.minute_start(at(21, 0, 0));
    let minutes = (to.get() - from.get()) / MINUTE_US;
    let source = StoreSource { engine: &engine };
    let learned = |metric: &str, op: &str, no_data: &str| {
        json!({"name": metric, "metric": metric, "by": "endpoint", "window": "5m", "op": op,
               "threshold": {"learned": {"sensitivity": "medium"}}, "min_count": 50, "no_data": no_data})
    };
    let rules = [
        ("error-rate jump", learned("error_rate", ">", "ok")),
        ("latency climb", learned("latency_avg", ">", "ok")),
        ("traffic drop to zero", learned("frequency", "<", "alert")),
        ("slow drift (none wanted)", learned("frequency", ">", "ok")),
        (
            "error-rate jump, static threshold of 10%",
            json!({"name": "static", "metric": "error_rate", "by": "endpoint",
            "window": "5m", "op": ">", "threshold": 0.1, "for": "2m", "min_count": 50}),
        ),
    ];
    println!("| rule | anomaly caught | false alerts in 7 days | backtest | per evaluation |");
    println!("|---|---|---|---|---|");
    for (kind, body) in rules {
        let rule = Rule::parse(&body)?;
        rule.check_rollups()?;
        let clock = Instant::now();
        let firings = backtest(&rule, &source, from, to).map_err(anyhow::Error::msg)?;
        let took = clock.elapsed();
        let minute = |t: Micros| ((t.get() - traffic.start.get()) / MINUTE_US) as usize;
        let anomaly = ANOMALIES.iter().find(|a| kind.starts_with(a.kind));
        let caught = |f: &toplog_alerting::Firing| {
            anomaly.is_some_and(|a| {
                f.key == ENDPOINTS[a.endpoint]
                    && (a.from..=a.to + rule.window_minutes as usize)
                        .contains(&minute(f.started_at))
            })
        };
        let hit = match anomaly {
            None => "-".to_owned(),
            Some(a) => match firings.iter().find(|f| caught(f)) {
                Some(f) => format!(
                    "yes, {} min in",
                    minute(f.started_at) as i64 - a.from as i64
                ),
                None => "**no**".to_owned(),
            },
        };
        let false_alerts = firings.iter().filter(|f| !caught(f)).count();
        println!(
            "| {kind} | {hit} | {false_alerts} | {:.1} s | {:.0} µs |",
            took.as_secs_f64(),
            took.as_secs_f64() * 1e6 / minutes as f64
        );
    }
    live_cost(&engine, &traffic)?;
    Ok(())
}

/// 500 rules judged at one minute's end the way the live path judges them
/// (fresh readings per rule: a learned rule reads its 98 past windows
/// again): the time it takes, and so the share of a core once a minute.
fn live_cost(engine: &Engine, traffic: &Traffic) -> anyhow::Result<()> {
    let kinds = [
        json!({"name": "static 5xx rate", "metric": "error_rate", "by": "endpoint", "window": "5m",
               "op": ">", "threshold": 0.1, "min_count": 50}),
        json!({"name": "learned 5xx rate", "metric": "error_rate", "by": "endpoint", "window": "5m",
               "op": ">", "threshold": {"learned": {"sensitivity": "medium"}}, "min_count": 50}),
        json!({"name": "learned traffic", "metric": "frequency", "window": "5m", "op": "<",
               "threshold": {"learned": {"sensitivity": "medium"}}, "no_data": "alert"}),
        json!({"name": "static p99", "metric": "latency_p99", "by": "endpoint", "window": "5m",
               "op": ">", "threshold": 250}),
    ];
    let rules: Vec<Rule> = (0..500)
        .map(|i| Rule::parse(&kinds[i % kinds.len()]))
        .collect::<Result<_, _>>()?;
    let source = StoreSource { engine };
    let at = traffic.minute_start(at(20, 12, 0));
    for round in 0..3 {
        let clock = Instant::now();
        for rule in &rules {
            let mut readings = toplog_alerting::evaluate::Readings::new(rule, &source);
            toplog_alerting::evaluate(rule, &mut readings, at, &[]).map_err(anyhow::Error::msg)?;
        }
        let took = clock.elapsed().as_secs_f64();
        println!(
            "500 rules (125 each: static and learned 5xx rate by endpoint, learned total traffic, static p99 by endpoint), round {}: {:.1} ms, {:.2}% of a core once a minute",
            round + 1,
            took * 1e3,
            took / 60.0 * 100.0
        );
    }
    Ok(())
}
