//! Segment encode and decode speed, and bytes per event on disk.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use toplog_benches::events;
use toplog_engine::{check_segment, decode_segment_events, encode_segment_events};
use toplog_types::Micros;

const ROWS: usize = 100_000;
const DAY_US: i64 = 86_400_000_000;

fn segment(c: &mut Criterion) {
    let start = Micros::new(1_767_225_600_000_000);
    let evs = events(ROWS, 42, start);
    let image = encode_segment_events(&evs, start, DAY_US);
    println!(
        "segment: {ROWS} events -> {} bytes = {:.2} bytes/event",
        image.len(),
        image.len() as f64 / ROWS as f64
    );
    let mut g = c.benchmark_group("segment");
    g.throughput(Throughput::Elements(ROWS as u64));
    g.bench_function("encode_100k", |b| {
        b.iter(|| encode_segment_events(black_box(&evs), start, DAY_US))
    });
    g.bench_function("decode_100k", |b| {
        b.iter(|| decode_segment_events(black_box(&image)))
    });
    // Into columns only, as reads decode a segment (no `Event` per row).
    g.bench_function("decode_columns_100k", |b| {
        b.iter(|| check_segment(black_box(&image)))
    });
    g.finish();
}

criterion_group!(benches, segment);
criterion_main!(benches);
