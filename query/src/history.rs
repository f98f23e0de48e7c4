//! One row per UTC day from the daily rollups: total requests, average
//! latency, error rate and p99 latency. Days without traffic are included.

use toplog_engine::{Cell, Dimension, Engine, Granularity};
use toplog_types::Micros;

use crate::Result;

#[derive(Debug, Clone, PartialEq)]
pub struct DayRow {
    /// Start of the UTC day.
    pub date: Micros,
    pub total_requests: u64,
    /// Milliseconds; `None` on a day without traffic.
    pub average_latency: Option<f64>,
    pub error_rate: Option<f64>,
    /// Milliseconds, within the sketch's 1% bound.
    pub p99_latency: Option<f64>,
}

/// `days` rows starting with the day that starts at `first_day` (aligned to UTC midnight).
pub fn history(engine: &Engine, first_day: Micros, days: u32) -> Result<Vec<DayRow>> {
    Ok(history_of_cells(
        first_day,
        vec![day_cells(engine, first_day, days)?],
    ))
}

/// Each day's total, as a cell (counts, sums and sketch add up across shards).
pub fn day_cells(engine: &Engine, first_day: Micros, days: u32) -> Result<Vec<Cell>> {
    let day = Granularity::Day.len_us();
    (0..i64::from(days))
        .map(|i| {
            let start = first_day.saturating_add_micros(i * day);
            let mut total = Cell::new(true);
            // The method cube has a handful of keys: the cheapest way to a day's total.
            engine.visit_rollups(
                Granularity::Day,
                start,
                start.saturating_add_micros(day),
                Dimension::Method,
                |cube| {
                    cube.cells(true, |_, c| total.merge(c));
                    // Requests of keys a bucket evicted still count towards its day.
                    if let Some(o) = cube.overflow() {
                        total.merge(&o.evicted);
                    }
                },
            )?;
            Ok(total)
        })
        .collect()
}

/// The rows of every shard's [`day_cells`] (for the same days), added up.
pub fn history_of_cells(first_day: Micros, parts: Vec<Vec<Cell>>) -> Vec<DayRow> {
    let day = Granularity::Day.len_us();
    let mut parts = parts.into_iter();
    let mut totals = parts.next().unwrap_or_default();
    for part in parts {
        for (total, cell) in totals.iter_mut().zip(&part) {
            total.merge(cell);
        }
    }
    (totals.into_iter().zip(0i64..))
        .map(|(total, i)| {
            let n = total.count;
            let per = |v: f64| (n > 0).then(|| v / n as f64);
            DayRow {
                date: first_day.saturating_add_micros(i * day),
                total_requests: n,
                average_latency: per(total.latency_sum_us as f64 / 1000.0),
                error_rate: per(total.errors() as f64),
                p99_latency: total
                    .sketch
                    .as_ref()
                    .and_then(|s| s.quantile(0.99))
                    .map(|us| us / 1000.0),
            }
        })
        .collect()
}
