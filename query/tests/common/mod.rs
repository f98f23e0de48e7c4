//! What the query crate's model tests share: the engine's settings, random
//! events over three days and random top-K questions about them.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use rand::{Rng, rngs::StdRng};
use toplog_engine::{Dimension, EngineConfig, Filters, TimeRange};
use toplog_query::{Grouping, Metric, Order, TopK};
use toplog_types::{Event, Micros};

pub(crate) const MIN: i64 = 60_000_000;
pub(crate) const HOUR: i64 = 60 * MIN;
pub(crate) const DAY: i64 = 24 * HOUR;
/// 2026-01-01T00:00:00Z
pub(crate) const T0: i64 = 1_767_225_600_000_000;

pub(crate) fn config() -> EngineConfig {
    let mut c = EngineConfig::new("/data");
    c.partition = Duration::from_secs(3600);
    c.memtable_max_bytes = 20_000;
    c.memtable_max_age = Duration::from_secs(3600);
    c
}

pub(crate) fn random_event(rng: &mut StdRng, i: usize) -> Event {
    let endpoints = ["GET /a", "GET /b/{id}", "POST /c", "DELETE /d", "PUT /e"];
    let endpoint = endpoints[rng.random_range(0..endpoints.len())];
    // Mostly within three days, with bursts on boundaries.
    let ts = match rng.random_range(0..4) {
        0 => T0 + rng.random_range(0..3) * DAY + rng.random_range(-2 * MIN..2 * MIN),
        1 => T0 + rng.random_range(0..72) * HOUR + rng.random_range(-5_000_000..5_000_000),
        _ => T0 + rng.random_range(0..3 * DAY),
    };
    Event {
        request_id: format!("r{i}"),
        timestamp: Micros::new(ts.max(T0)),
        user_id: format!("u{}", rng.random_range(0..12)),
        endpoint: endpoint.to_owned(),
        method: toplog_types::method_from_endpoint(endpoint)
            .unwrap_or("")
            .to_owned(),
        status_code: [200, 200, 201, 404, 500, 503][rng.random_range(0..6)],
        latency_us: if rng.random_bool(0.05) {
            0
        } else {
            rng.random_range(1..3_000_000)
        },
    }
}

pub(crate) fn random_query(rng: &mut StdRng) -> (TopK, Dimension) {
    let metrics = [
        Metric::Frequency,
        Metric::Errors,
        Metric::ErrorRate,
        Metric::LatencyAvg,
        Metric::LatencyMax,
        Metric::LatencyP50,
        Metric::LatencyP99,
    ];
    let dims = [
        Dimension::Endpoint,
        Dimension::UserId,
        Dimension::StatusCode,
        Dimension::Method,
    ];
    let by = dims[rng.random_range(0..dims.len())];
    // Aligned to days, hours, minutes, or not at all.
    let align = [DAY, HOUR, MIN, 1][rng.random_range(0..4)];
    let a = (T0 - HOUR + rng.random_range(0..3 * DAY + 2 * HOUR)) / align * align;
    let b = (T0 - HOUR + rng.random_range(0..3 * DAY + 2 * HOUR)) / align * align;
    let range = TimeRange {
        start: Micros::new(a.min(b)),
        end: Micros::new(a.max(b) + align),
    };
    let filters = match rng.random_range(0..8) {
        // Served by the endpoint x status class cube when grouping by endpoint.
        5 => Filters {
            status_class: Some(5),
            ..Filters::default()
        },
        6 => Filters {
            endpoint: Some("GET /b/{id}".into()),
            status_class: Some(2),
            ..Filters::default()
        },
        0 => Filters {
            endpoint: Some("GET /a".into()),
            ..Filters::default()
        },
        1 => Filters {
            user_id: Some(format!("u{}", rng.random_range(0..12))),
            ..Filters::default()
        },
        2 => Filters {
            status_code: Some(500),
            ..Filters::default()
        },
        // No cube covers a method filter but by method: raw rows, whose
        // segments a method absent from their dictionary skips.
        3 => Filters {
            method: Some(["GET", "POST", "DELETE", "PATCH"][rng.random_range(0..4)].into()),
            ..Filters::default()
        },
        4 => Filters {
            method: Some("GET".into()),
            user_id: Some(format!("u{}", rng.random_range(0..12))),
            ..Filters::default()
        },
        _ => Filters::default(),
    };
    let q = TopK {
        k: rng.random_range(1..8),
        metric: metrics[rng.random_range(0..metrics.len())],
        by: Grouping::By(by),
        range,
        filters,
        min_count: [0, 0, 2, 5][rng.random_range(0..4)],
        order: if rng.random_bool(0.2) {
            Order::Asc
        } else {
            Order::Desc
        },
    };
    (q, by)
}
