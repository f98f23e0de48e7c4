//! Top-K answers against a brute-force model over random events (late ones
//! included) and random ranges, aligned and not, across minute, hour and day
//! boundaries: exact metrics equal, quantiles within the sketch's bound; and
//! the same answers after a clean restart and after a crash.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;

use rand::{Rng, SeedableRng, rngs::StdRng};
use toplog_engine::{Dimension, Engine, Filters, SKETCH_RELATIVE_ERROR, TimeRange, quantile_index};
use toplog_query::{Grouping, Metric, Order, TopK, top_k};
use toplog_types::{Event, Micros};
use toplog_wal::SimFs;

mod common;
use common::{DAY, HOUR, MIN, T0, config, random_event, random_query};

fn key(e: &Event, by: Dimension) -> String {
    by.key_of(e).into_owned()
}

/// The answer computed from the events themselves: (key, value, count), exact.
fn model(events: &[Event], q: &TopK, by: Dimension) -> Vec<(String, f64, u64)> {
    let f = &q.filters;
    let mut groups: HashMap<String, Vec<&Event>> = HashMap::new();
    for e in events
        .iter()
        .filter(|e| q.range.start <= e.timestamp && e.timestamp < q.range.end)
    {
        if f.endpoint.as_deref().is_some_and(|x| x != e.endpoint)
            || f.user_id.as_deref().is_some_and(|x| x != e.user_id)
            || f.method.as_deref().is_some_and(|x| x != e.method)
            || f.status_code.is_some_and(|x| x != e.status_code)
            || f.status_class
                .is_some_and(|c| e.status_code / 100 != u16::from(c))
        {
            continue;
        }
        groups.entry(key(e, by)).or_default().push(e);
    }
    let mut rows: Vec<(String, f64, u64)> = groups
        .into_iter()
        .filter(|(_, v)| v.len() as u64 >= q.min_count.max(1))
        .map(|(k, v)| {
            let n = v.len() as f64;
            let errors = v.iter().filter(|e| e.status_code >= 500).count() as f64;
            let mut lat: Vec<u64> = v.iter().map(|e| e.latency_us).collect();
            lat.sort_unstable();
            let sum: u128 = lat.iter().map(|&l| u128::from(l)).sum();
            let value = match q.metric {
                Metric::Frequency => n,
                Metric::Errors => errors,
                Metric::ErrorRate => errors / n,
                Metric::LatencyAvg => sum as f64 / n / 1000.0,
                Metric::LatencyMax => lat[lat.len() - 1] as f64 / 1000.0,
                m => {
                    lat[quantile_index(m.quantile().unwrap(), lat.len() as u64) as usize] as f64
                        / 1000.0
                }
            };
            (k, value, v.len() as u64)
        })
        .collect();
    rows.sort_by(|a, b| {
        let by_value = match q.order {
            Order::Desc => b.1.total_cmp(&a.1),
            Order::Asc => a.1.total_cmp(&b.1),
        };
        by_value.then_with(|| a.0.cmp(&b.0))
    });
    rows
}

fn check(engine: &Engine, events: &[Event], q: &TopK, by: Dimension, ctx: &str) {
    let got = top_k(engine, q).unwrap();
    let want = model(events, q, by);
    if q.metric.is_exact() {
        assert!(got.exact, "{ctx}");
        let got_rows: Vec<(String, f64, u64)> = got
            .rows
            .iter()
            .map(|r| (r.key.clone(), r.value, r.count))
            .collect();
        let want_rows: Vec<(String, f64, u64)> = want.into_iter().take(q.k).collect();
        assert_eq!(
            got_rows, want_rows,
            "{ctx}: {q:?} sources {:?}",
            got.sources
        );
    } else {
        assert!(!got.exact, "{ctx}");
        let truth: HashMap<&str, (f64, u64)> = want
            .iter()
            .map(|(k, v, n)| (k.as_str(), (*v, *n)))
            .collect();
        assert_eq!(got.rows.len(), want.len().min(q.k), "{ctx}: {q:?}");
        for r in &got.rows {
            let (v, n) = truth[r.key.as_str()];
            assert_eq!(r.count, n, "{ctx}: {q:?}");
            assert!(
                (r.value - v).abs() <= SKETCH_RELATIVE_ERROR * v + 1e-9,
                "{ctx}: {} got {} want {v}: {q:?}",
                r.key,
                r.value
            );
            let (lo, hi) = r.bounds.unwrap();
            assert!(
                lo <= v + 1e-9 && v <= hi + 1e-9,
                "{ctx}: bounds [{lo}, {hi}] miss {v}"
            );
        }
    }
}

#[test]
fn top_k_matches_a_brute_force_model_before_and_after_restarts() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for seed in 0..6u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let fs = SimFs::new(seed);
        let engine = Engine::open_with(Arc::new(fs.clone()), config()).unwrap();
        let mut events = Vec::new();
        for b in 0..40 {
            let batch: Vec<Event> = (0..rng.random_range(1..60))
                .map(|i| random_event(&mut rng, b * 100 + i))
                .collect();
            rt.block_on(engine.ingest(batch.clone(), None)).unwrap();
            events.extend(batch);
            if b % 13 == 0 {
                engine.flush().unwrap();
            }
        }
        let queries: Vec<(TopK, Dimension)> = (0..60).map(|_| random_query(&mut rng)).collect();
        for (q, by) in &queries {
            check(&engine, &events, q, *by, &format!("seed {seed} live"));
        }
        // After a crash (power loss now) and after a clean restart, the same answers.
        let crashed = fs.crashed_copy();
        engine.close().unwrap();
        drop(engine);
        for (name, disk) in [("clean restart", fs.clone()), ("crash", crashed)] {
            let reopened = Engine::open_with(Arc::new(disk), config()).unwrap();
            for (q, by) in queries.iter().take(20) {
                check(&reopened, &events, q, *by, &format!("seed {seed} {name}"));
            }
            reopened.close().unwrap();
        }
    }
}

/// A quantile top-K with a `min_count` keeps a key whose listed cells fall
/// short of it when the buckets that evicted it may hold the rest: here the
/// key's 9 requests are listed in one hour bucket only (3), and two others
/// evicted it under a budget of 4 keys (floor 10 each).
#[test]
fn min_count_counts_what_over_budget_buckets_may_hold() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut budget = config();
    budget.rollup_key_budget = 4;
    let fs = SimFs::new(7);
    let engine = Engine::open_with(Arc::new(fs.clone()), budget.clone()).unwrap();
    let mut rng = StdRng::seed_from_u64(7);
    let mut events = Vec::new();
    for hour in 0..3 {
        let mut add = |endpoint: &str, n: usize| {
            for _ in 0..n {
                let mut e = random_event(&mut rng, events.len());
                e.timestamp = Micros::new(T0 + hour * HOUR + events.len() as i64 * 1_000_000);
                e.endpoint = endpoint.to_owned();
                e.method = "GET".into();
                events.push(e);
            }
        };
        // First, so that the keys added past the budget evict it once
        // their floor passes its 3 requests.
        add("GET /t", 3);
        let others = if hour < 2 { 5 } else { 3 };
        for p in 0..others {
            add(&format!("GET /p{p}"), 10);
        }
    }
    rt.block_on(engine.ingest(events.clone(), None)).unwrap();
    let q = TopK {
        k: 100,
        metric: Metric::LatencyP99,
        by: Grouping::By(Dimension::Endpoint),
        range: TimeRange {
            start: Micros::new(T0),
            end: Micros::new(T0 + 3 * HOUR),
        },
        filters: Filters::default(),
        min_count: 9,
        order: Order::Desc,
    };
    let check = |engine: &Engine, state: &str| {
        let got = top_k(engine, &q).unwrap();
        assert!(!got.exact, "{state}: the budget must have evicted keys");
        let t = got.rows.iter().find(|r| r.key == "GET /t");
        let t = t.unwrap_or_else(|| panic!("{state}: GET /t left out: {:?}", got.rows));
        assert_eq!(t.count, 3, "{state}: the listed requests of GET /t");
        assert!(
            t.bounds.is_some(),
            "{state}: GET /t's p99 is bounded, not exact"
        );
    };
    check(&engine, "live");
    engine.flush().unwrap();
    check(&engine, "flushed");
    engine.close().unwrap();
    drop(engine);
    let reopened = Engine::open_with(Arc::new(fs), budget).unwrap();
    check(&reopened, "restarted");
    reopened.close().unwrap();
}

/// Cube buckets over a tiny key budget: every value an answer gives lies
/// within its bounds, exact values are exact, and a flushed store answers the
/// same after a clean restart (and within bounds after a crash).
#[test]
fn over_budget_cubes_give_sound_bounds() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let budget_config = || {
        let mut c = config();
        c.rollup_key_budget = 4;
        c
    };
    let mut approximate = 0;
    for seed in 0..4u64 {
        let mut rng = StdRng::seed_from_u64(100 + seed);
        let fs = SimFs::new(seed);
        let engine = Engine::open_with(Arc::new(fs.clone()), budget_config()).unwrap();
        let mut events = Vec::new();
        for b in 0..40 {
            let batch: Vec<Event> = (0..rng.random_range(1..60))
                .map(|i| {
                    let mut e = random_event(&mut rng, b * 100 + i);
                    // Skewed users: u0 often, then a long tail.
                    let u: u32 = rng.random_range(0..40);
                    e.user_id = format!("u{}", u * u / 40);
                    e
                })
                .collect();
            rt.block_on(engine.ingest(batch.clone(), None)).unwrap();
            events.extend(batch);
            if b % 13 == 0 {
                engine.flush().unwrap();
            }
        }
        let queries: Vec<(TopK, Dimension)> = (0..80).map(|_| random_query(&mut rng)).collect();
        let mut check_bounds = |engine: &Engine, ctx: &str| {
            let mut answers = Vec::new();
            for (q, by) in &queries {
                let got = top_k(engine, q).unwrap();
                let all = TopK {
                    min_count: 0,
                    ..q.clone()
                };
                let truth: HashMap<String, (f64, u64)> = model(&events, &all, *by)
                    .into_iter()
                    .map(|(k, v, n)| (k, (v, n)))
                    .collect();
                for r in &got.rows {
                    let (v, n) = truth[&r.key];
                    assert!(r.count <= n, "{ctx}: {} count {} > {n}", r.key, r.count);
                    match r.bounds {
                        Some((lo, hi)) => assert!(
                            lo <= v + 1e-9 && v <= hi + 1e-9,
                            "{ctx}: {} bounds [{lo}, {hi}] miss {v}: {q:?}",
                            r.key
                        ),
                        None => assert!(
                            got.exact || r.value == v,
                            "{ctx}: {} {} != {v}",
                            r.key,
                            r.value
                        ),
                    }
                }
                if got.exact {
                    assert_eq!(got.unlisted_max_count, 0);
                } else {
                    approximate += 1;
                }
                answers.push(got);
            }
            answers
        };
        check_bounds(&engine, &format!("seed {seed} live"));
        engine.flush().unwrap();
        let flushed = check_bounds(&engine, &format!("seed {seed} flushed"));
        let crashed = fs.crashed_copy();
        engine.close().unwrap();
        drop(engine);
        let reopened = Engine::open_with(Arc::new(fs.clone()), budget_config()).unwrap();
        let again = check_bounds(&reopened, &format!("seed {seed} clean restart"));
        for (a, b) in flushed.iter().zip(&again) {
            assert_eq!(
                a.rows, b.rows,
                "seed {seed}: answers changed across a clean restart"
            );
        }
        reopened.close().unwrap();
        let reopened = Engine::open_with(Arc::new(crashed), budget_config()).unwrap();
        check_bounds(&reopened, &format!("seed {seed} crash"));
        reopened.close().unwrap();
    }
    assert!(
        approximate > 50,
        "the budget must make answers approximate ({approximate})"
    );
}

#[test]
fn slowest_requests_are_ranked_by_latency_then_id() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut rng = StdRng::seed_from_u64(99);
    let engine = Engine::open_with(Arc::new(SimFs::new(99)), config()).unwrap();
    let events: Vec<Event> = (0..300).map(|i| random_event(&mut rng, i)).collect();
    rt.block_on(engine.ingest(events[..150].to_vec(), None))
        .unwrap();
    engine.flush().unwrap();
    rt.block_on(engine.ingest(events[150..].to_vec(), None))
        .unwrap();
    let range = TimeRange {
        start: Micros::new(T0),
        end: Micros::new(T0 + 2 * DAY),
    };
    let q = TopK {
        k: 10,
        metric: Metric::LatencyMax,
        by: Grouping::Request,
        range,
        filters: Filters::default(),
        min_count: 0,
        order: Order::Desc,
    };
    let got: Vec<String> = top_k(&engine, &q)
        .unwrap()
        .rows
        .into_iter()
        .map(|r| r.key)
        .collect();
    let mut want: Vec<&Event> = events
        .iter()
        .filter(|e| range.start <= e.timestamp && e.timestamp < range.end)
        .collect();
    want.sort_by(|a, b| {
        b.latency_us
            .cmp(&a.latency_us)
            .then_with(|| a.request_id.cmp(&b.request_id))
    });
    let want: Vec<String> = want.iter().take(10).map(|e| e.request_id.clone()).collect();
    assert_eq!(got, want);
}

/// Latencies at a coarse resolution tie by the thousand: `by=request` still
/// answers exactly k rows, the first k by latency then request id, from
/// memtables and segments alike (it once kept every row tied with the k-th).
#[test]
fn slowest_requests_with_heavy_ties_are_exactly_k_by_latency_then_id() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut rng = StdRng::seed_from_u64(7);
    let engine = Engine::open_with(Arc::new(SimFs::new(7)), config()).unwrap();
    let events: Vec<Event> = (0..3000)
        .map(|i| {
            let mut e = random_event(&mut rng, i);
            e.latency_us = rng.random_range(0..3) * 1000;
            e
        })
        .collect();
    for part in events.chunks(1000) {
        rt.block_on(engine.ingest(part.to_vec(), None)).unwrap();
        if part.len() == 1000 && part[0].request_id != "r2000" {
            engine.flush().unwrap();
        }
    }
    let range = TimeRange {
        start: Micros::new(T0),
        end: Micros::new(T0 + 3 * DAY),
    };
    for (k, order) in [
        (1, Order::Asc),
        (7, Order::Desc),
        (50, Order::Asc),
        (999, Order::Desc),
    ] {
        let q = TopK {
            k,
            metric: Metric::LatencyMax,
            by: Grouping::Request,
            range,
            filters: Filters::default(),
            min_count: 0,
            order,
        };
        let got: Vec<String> = top_k(&engine, &q)
            .unwrap()
            .rows
            .into_iter()
            .map(|r| r.key)
            .collect();
        let mut want: Vec<&Event> = events
            .iter()
            .filter(|e| range.start <= e.timestamp && e.timestamp < range.end)
            .collect();
        want.sort_by(|a, b| {
            let by = if order == Order::Asc {
                a.latency_us.cmp(&b.latency_us)
            } else {
                b.latency_us.cmp(&a.latency_us)
            };
            by.then_with(|| a.request_id.cmp(&b.request_id))
        });
        let want: Vec<String> = want.iter().take(k).map(|e| e.request_id.clone()).collect();
        assert_eq!(got.len(), k, "k = {k}");
        assert_eq!(got, want, "k = {k}, {order:?}");
    }
}

#[test]
fn history_has_a_row_per_day_matching_the_events() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut rng = StdRng::seed_from_u64(4);
    let engine = Engine::open_with(Arc::new(SimFs::new(4)), config()).unwrap();
    let events: Vec<Event> = (0..500).map(|i| random_event(&mut rng, i)).collect();
    rt.block_on(engine.ingest(events[..200].to_vec(), None))
        .unwrap();
    engine.flush().unwrap();
    rt.block_on(engine.ingest(events[200..].to_vec(), None))
        .unwrap();
    // One day before the data, three days of data, one after.
    let rows = toplog_query::history(&engine, Micros::new(T0 - DAY), 5).unwrap();
    assert_eq!(rows.len(), 5);
    for (i, row) in rows.iter().enumerate() {
        let start = T0 - DAY + i as i64 * DAY;
        assert_eq!(row.date, Micros::new(start));
        let day: Vec<&Event> = events
            .iter()
            .filter(|e| (start..start + DAY).contains(&e.timestamp.get()))
            .collect();
        assert_eq!(row.total_requests, day.len() as u64, "day {i}");
        if day.is_empty() {
            assert_eq!(
                (row.average_latency, row.error_rate, row.p99_latency),
                (None, None, None)
            );
            continue;
        }
        let n = day.len() as f64;
        let sum: u128 = day.iter().map(|e| u128::from(e.latency_us)).sum();
        assert_eq!(row.average_latency, Some(sum as f64 / 1000.0 / n));
        let errors = day.iter().filter(|e| e.status_code >= 500).count() as f64;
        assert_eq!(row.error_rate, Some(errors / n));
        let mut lat: Vec<u64> = day.iter().map(|e| e.latency_us).collect();
        lat.sort_unstable();
        let p99 = lat[quantile_index(0.99, lat.len() as u64) as usize] as f64 / 1000.0;
        let got = row.p99_latency.unwrap();
        assert!(
            (got - p99).abs() <= SKETCH_RELATIVE_ERROR * p99 + 1e-9,
            "day {i}: p99 {got} vs {p99}"
        );
    }
}

#[test]
fn timeseries_points_match_the_events_in_each_interval() {
    use toplog_query::{TimeseriesQuery, timeseries};
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut rng = StdRng::seed_from_u64(8);
    let engine = Engine::open_with(Arc::new(SimFs::new(8)), config()).unwrap();
    let events: Vec<Event> = (0..600).map(|i| random_event(&mut rng, i)).collect();
    rt.block_on(engine.ingest(events[..300].to_vec(), None))
        .unwrap();
    engine.flush().unwrap();
    rt.block_on(engine.ingest(events[300..].to_vec(), None))
        .unwrap();
    for (interval, by, filters) in [
        (7 * MIN + 13_000_000, None, Filters::default()),
        (HOUR, Some(Dimension::Endpoint), Filters::default()),
        (
            DAY / 4,
            None,
            Filters {
                user_id: Some("u3".into()),
                ..Filters::default()
            },
        ),
        (
            HOUR,
            Some(Dimension::StatusCode),
            Filters {
                method: Some("GET".into()),
                ..Filters::default()
            },
        ),
        // One endpoint per minute: thousands of intervals, read in groups.
        (
            MIN,
            None,
            Filters {
                endpoint: Some("GET /b/{id}".into()),
                ..Filters::default()
            },
        ),
    ] {
        let range = TimeRange {
            start: Micros::new(T0 + 17 * MIN + 5),
            end: Micros::new(T0 + 2 * DAY + 3 * HOUR),
        };
        let q = TimeseriesQuery {
            metric: Metric::Errors,
            interval_us: interval,
            range,
            filters: filters.clone(),
            by,
            limit: 3,
        };
        let series = timeseries(&engine, &q).unwrap().series;
        assert_eq!(series.len(), if by.is_some() { 3 } else { 1 });
        for s in &series {
            for p in &s.points {
                let from = p.start.get().max(range.start.get());
                let to = (p.start.get() + interval).min(range.end.get());
                let matching: Vec<&Event> = events
                    .iter()
                    .filter(|e| (from..to).contains(&e.timestamp.get()))
                    .filter(|e| filters.user_id.as_deref().is_none_or(|u| e.user_id == u))
                    .filter(|e| filters.method.as_deref().is_none_or(|m| e.method == m))
                    .filter(|e| filters.endpoint.as_deref().is_none_or(|x| e.endpoint == x))
                    .filter(|e| match (&s.key, by) {
                        (Some(k), Some(d)) => key(e, d) == *k,
                        _ => true,
                    })
                    .collect();
                assert_eq!(p.count, matching.len() as u64, "{:?} at {}", s.key, p.start);
                let errors = matching.iter().filter(|e| e.status_code >= 500).count() as f64;
                assert_eq!(
                    p.value,
                    Some(errors),
                    "a count is 0, not null, in an empty interval"
                );
            }
        }
    }
    let too_many = TimeseriesQuery {
        metric: Metric::Frequency,
        interval_us: 1_000_000,
        range: TimeRange {
            start: Micros::new(T0),
            end: Micros::new(T0 + DAY),
        },
        filters: Filters::default(),
        by: None,
        limit: 1,
    };
    assert!(matches!(
        timeseries(&engine, &too_many),
        Err(toplog_query::QueryError::TooLarge("interval", _))
    ));
}

/// Top-K by frequency over buckets with many more keys than a cube lists as
/// its heaviest, with heavy ties: the threshold algorithm must stop only when
/// no unseen key can still beat (or tie and precede) the k-th, and fall back
/// to merging every cell when the lists run out. Answers equal brute force,
/// live and after a restart.
#[test]
fn frequency_top_k_over_many_keys_matches_the_model() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for seed in 0..4u64 {
        let mut rng = StdRng::seed_from_u64(500 + seed);
        let fs = SimFs::new(seed);
        let engine = Engine::open_with(Arc::new(fs.clone()), config()).unwrap();
        let mut events = Vec::new();
        for b in 0..30 {
            let batch: Vec<Event> = (0..rng.random_range(50..200))
                .map(|i| {
                    let mut e = random_event(&mut rng, b * 1000 + i);
                    // Half skewed over a few keys, half uniform over hundreds
                    // (many ties at small counts).
                    let (u, p) = if rng.random_bool(0.5) {
                        let x: u32 = rng.random_range(0..30);
                        (x * x / 30, rng.random_range(0..8))
                    } else {
                        (rng.random_range(0..400), rng.random_range(0..300))
                    };
                    e.user_id = format!("u{u}");
                    e.endpoint = format!("GET /p{p}");
                    e.method = "GET".into();
                    e
                })
                .collect();
            rt.block_on(engine.ingest(batch.clone(), None)).unwrap();
            events.extend(batch);
            if b % 11 == 0 {
                engine.flush().unwrap();
            }
        }
        let queries: Vec<(TopK, Dimension)> = (0..60)
            .map(|_| {
                let (mut q, _) = random_query(&mut rng);
                let by = [Dimension::UserId, Dimension::Endpoint][rng.random_range(0..2)];
                q.by = Grouping::By(by);
                q.metric = Metric::Frequency;
                q.order = Order::Desc;
                q.filters = Filters::default();
                q.min_count = 0;
                q.k = [1, 3, 10, 32][rng.random_range(0..4)];
                (q, by)
            })
            .collect();
        for (q, by) in &queries {
            check(&engine, &events, q, *by, &format!("seed {seed} live"));
        }
        engine.close().unwrap();
        drop(engine);
        let reopened = Engine::open_with(Arc::new(fs.clone()), config()).unwrap();
        for (q, by) in &queries {
            check(&reopened, &events, q, *by, &format!("seed {seed} restart"));
        }
        reopened.close().unwrap();
    }
}

/// Partial hours of user queries are read from raw rows; here each holds
/// hundreds of users, skewed, with ties, so a top-K reads far down their
/// ranked lists (which are put in order a chunk at a time as reading reaches
/// them). Answers equal brute force live, flushed and after a restart.
#[test]
fn user_top_k_over_crowded_partial_hours_matches_the_model() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut rng = StdRng::seed_from_u64(900);
    let fs = SimFs::new(9);
    let engine = Engine::open_with(Arc::new(fs.clone()), config()).unwrap();
    let mut events = Vec::new();
    for b in 0..8 {
        let batch: Vec<Event> = (0..600)
            .map(|i| {
                let mut e = random_event(&mut rng, b * 1000 + i);
                e.timestamp = Micros::new(T0 + rng.random_range(0..3 * HOUR));
                let x: u32 = rng.random_range(0..1200);
                e.user_id = format!("u{}", if x < 600 { x * x / 1200 } else { x });
                e
            })
            .collect();
        rt.block_on(engine.ingest(batch.clone(), None)).unwrap();
        events.extend(batch);
    }
    let queries: Vec<TopK> = [1, 10, 100, 300]
        .into_iter()
        .flat_map(|k| {
            [(7, 173), (0, 150), (31, 180), (59, 61)].map(|(from, to)| TopK {
                k,
                metric: Metric::Frequency,
                by: Grouping::By(Dimension::UserId),
                range: TimeRange {
                    start: Micros::new(T0 + from * MIN),
                    end: Micros::new(T0 + to * MIN),
                },
                filters: Filters::default(),
                min_count: 0,
                order: Order::Desc,
            })
        })
        .collect();
    let check_all = |engine: &Engine, state: &str| {
        for q in &queries {
            check(engine, &events, q, Dimension::UserId, state);
        }
    };
    check_all(&engine, "live");
    engine.flush().unwrap();
    check_all(&engine, "flushed");
    engine.close().unwrap();
    drop(engine);
    let reopened = Engine::open_with(Arc::new(fs), config()).unwrap();
    check_all(&reopened, "restarted");
    reopened.close().unwrap();
}
