//! Reading ingest rows: 10,000 NDJSON lines of the loadgen workload, through
//! `serde_json::Value` (the path that names a bad row's field) and straight
//! from the bytes (ingest's path for valid rows).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use toplog_benches::workload::{Generator, Workload, ndjson_line};
use toplog_types::{Event, Micros, ValidationLimits};

const DAY: i64 = 86_400_000_000;
/// 2026-01-01T00:00:00Z
const T0: i64 = 1_767_225_600_000_000;

fn parse(c: &mut Criterion) {
    let end = Micros::new(T0 + 30 * DAY);
    let lines: Vec<String> = Generator::new(
        Workload {
            seed: 1,
            endpoints: 2_000,
            users: 1_000_000,
            end,
            span_us: 30 * DAY,
        },
        10_000,
    )
    .map(|e| {
        let mut line = String::new();
        ndjson_line(&e, &mut line);
        line
    })
    .collect();
    let limits = ValidationLimits {
        now: end,
        max_future_us: 300_000_000,
        max_age_us: 31 * DAY,
    };
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Elements(lines.len() as u64));
    g.bench_function("value_path_10k_rows", |b| {
        b.iter(|| {
            lines
                .iter()
                .map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).ok()?;
                    Event::from_json(&v, 0, &limits).ok()
                })
                .collect::<Option<Vec<_>>>()
        })
    });
    g.bench_function("fast_path_10k_rows", |b| {
        b.iter(|| {
            lines
                .iter()
                .map(|l| Event::from_json_slice(black_box(l.as_bytes()), &limits))
                .collect::<Option<Vec<_>>>()
        })
    });
    g.finish();
}

criterion_group!(benches, parse);
criterion_main!(benches);
