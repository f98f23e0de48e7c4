//! Events split over three engines (shards, by request id) against one
//! engine holding them all: every answer merged from the shards' parts
//! (top-K by any metric, the threshold exchange for counts, slowest
//! requests, counts, time series, history) equals the one engine's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use rand::{Rng, SeedableRng, rngs::StdRng};
use toplog_engine::Engine;
use toplog_query::{Grouping, Metric, Order, top_k};
use toplog_types::{Event, Micros};
use toplog_wal::SimFs;

mod common;
use common::{DAY, HOUR, MIN, T0, config, random_event, random_query};

/// Random events in one engine, and the same split over three engines
/// (each event on one, by its id); and the generator, to ask questions.
fn three_shards(seed: u64) -> (Engine, Vec<Engine>, StdRng) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut rng = StdRng::seed_from_u64(100 + seed);
    let open = |n: u64| Engine::open_with(Arc::new(SimFs::new(n)), config()).unwrap();
    let whole = open(seed * 10);
    let shards: Vec<Engine> = (1..=3).map(|i| open(seed * 10 + i)).collect();
    for b in 0..30 {
        let batch: Vec<Event> = (0..rng.random_range(1..80))
            .map(|i| random_event(&mut rng, b * 100 + i))
            .collect();
        rt.block_on(whole.ingest(batch.clone(), None)).unwrap();
        for (s, shard) in shards.iter().enumerate() {
            let shard_of = |e: &Event| e.request_id.bytes().map(usize::from).sum::<usize>() % 3;
            let part: Vec<Event> = (batch.iter())
                .filter(|e| shard_of(e) == s)
                .cloned()
                .collect();
            if !part.is_empty() {
                rt.block_on(shard.ingest(part, None)).unwrap();
            }
        }
        if b % 11 == 0 {
            whole.flush().unwrap();
            shards[b % 3].flush().unwrap();
        }
    }
    (whole, shards, rng)
}

/// The slowest single requests, and counts, across three shards: as one engine's.
#[test]
fn three_shards_slowest_requests_and_counts_answer_as_one_engine() {
    use toplog_query::requests_across;
    for seed in 0..3u64 {
        let (whole, shards, mut rng) = three_shards(seed);
        for _ in 0..40 {
            let (mut q, _) = random_query(&mut rng);
            q.by = Grouping::Request;
            q.metric = [Metric::LatencyMax, Metric::LatencyP99][rng.random_range(0..2)];
            q.k = rng.random_range(1..30);
            let one = top_k(&whole, &q).unwrap();
            let parts = shards.iter().map(|s| top_k(s, &q).unwrap()).collect();
            assert_eq!(
                requests_across(parts, &q).unwrap().rows,
                one.rows,
                "seed {seed}: {q:?}"
            );
            let count: u64 = shards
                .iter()
                .map(|s| s.count(q.range, &q.filters).unwrap())
                .sum();
            assert_eq!(count, whole.count(q.range, &q.filters).unwrap());
        }
    }
}

/// Series and days merged from three shards' cells equal one engine's.
#[test]
fn three_shards_merged_series_and_history_answer_as_one_engine() {
    use toplog_query::{
        TimeseriesQuery, day_cells, history, history_of_cells, key_cells, keys_question,
        series_cells, timeseries, timeseries_of_cells, top_k_of_cells,
    };
    for seed in 0..3u64 {
        let (whole, shards, mut rng) = three_shards(seed);
        let first_day = Micros::new(T0 - DAY);
        let one = history(&whole, first_day, 5).unwrap();
        let parts = shards
            .iter()
            .map(|s| day_cells(s, first_day, 5).unwrap())
            .collect();
        assert_eq!(history_of_cells(first_day, parts), one, "seed {seed}");
        assert!(one.iter().map(|d| d.total_requests).sum::<u64>() > 0);
        for _ in 0..30 {
            let (top, by) = random_query(&mut rng);
            let q = TimeseriesQuery {
                metric: top.metric,
                interval_us: [MIN, 15 * MIN, HOUR, DAY][rng.random_range(0..4)],
                range: top.range,
                filters: top.filters.clone(),
                by: rng.random_bool(0.5).then_some(by),
                limit: rng.random_range(1..4),
            };
            if (q.range.end.get() - q.range.start.get()) / q.interval_us > 2_000 {
                continue;
            }
            let one = timeseries(&whole, &q).unwrap();
            // The keys: the top `limit` across the shards, then each shard's cells of them.
            let keys: Vec<Option<String>> = match keys_question(&q) {
                None => vec![None],
                Some(best) => {
                    let parts = shards
                        .iter()
                        .map(|s| key_cells(s, &best).unwrap())
                        .collect();
                    (top_k_of_cells(parts, &best).unwrap().rows.into_iter())
                        .map(|r| Some(r.key))
                        .collect()
                }
            };
            let parts = shards
                .iter()
                .map(|s| series_cells(s, &q, &keys).unwrap())
                .collect();
            let merged = timeseries_of_cells(parts, &q);
            assert_eq!(merged.series, one.series, "seed {seed}: {q:?}");
        }
    }
}

/// Events split over three engines (shards, by request id): every top-K
/// merged from their key cells equals the answer of one engine holding
/// them all, rows, values, counts and quantile bounds alike; and by
/// `frequency` or `errors` the threshold exchange (TPUT) finds the same
/// rows without every key.
#[test]
fn three_shards_merged_answer_as_one_engine() {
    use toplog_query::{
        CellParts, Combine, FrequencyParts, KeyCells, Part, ShardKeys, key_cells, top_k_across,
        top_k_of_cells,
    };
    struct Shard(KeyCells, Metric);
    impl Shard {
        fn parts(&self) -> Vec<(String, Part)> {
            (self.0.cells.iter())
                .map(|(k, c)| {
                    let value = match self.1 {
                        Metric::Errors => c.by_class[4] as f64,
                        _ => c.count as f64,
                    };
                    (
                        k.clone(),
                        Part {
                            value,
                            count: c.count,
                        },
                    )
                })
                .collect()
        }
    }
    impl ShardKeys for Shard {
        type Error = std::convert::Infallible;
        fn top(&self, k: usize) -> Result<Vec<(String, Part)>, Self::Error> {
            let mut all = self.parts();
            all.sort_by(|a, b| b.1.value.total_cmp(&a.1.value).then_with(|| a.0.cmp(&b.0)));
            all.truncate(k);
            Ok(all)
        }
        fn at_least(&self, t: f64) -> Result<Vec<(String, Part)>, Self::Error> {
            Ok(self
                .parts()
                .into_iter()
                .filter(|(_, p)| p.value >= t)
                .collect())
        }
        fn parts(&self, keys: &[String]) -> Result<Vec<(String, Part)>, Self::Error> {
            Ok(self
                .parts()
                .into_iter()
                .filter(|(k, _)| keys.contains(k))
                .collect())
        }
    }

    let mut by_own_tops = 0;
    for seed in 0..4u64 {
        let (whole, shards, mut rng) = three_shards(seed);
        for _ in 0..80 {
            let (q, _) = random_query(&mut rng);
            let one = top_k(&whole, &q).unwrap();
            let parts: Vec<KeyCells> = shards.iter().map(|s| key_cells(s, &q).unwrap()).collect();
            let merged = top_k_of_cells(parts.clone(), &q).unwrap();
            assert_eq!(merged.rows, one.rows, "seed {seed}: {q:?}");
            assert_eq!(merged.exact, one.exact, "seed {seed}: {q:?}");
            let combine = match q.metric {
                Metric::Frequency | Metric::Errors => Combine::Sum,
                _ => continue,
            };
            if q.order != Order::Desc || q.min_count > 1 {
                continue;
            }
            // The library's sides answer as the test's own: every key's
            // cells, and for frequency the stores' own top-Ks.
            let cell_parts: Vec<CellParts> = (parts.iter())
                .map(|p| CellParts::new(p, q.metric))
                .collect();
            let by_cells = top_k_across(&cell_parts, q.k, combine).unwrap();
            if let Some(sides) = (shards.iter())
                .map(|s| FrequencyParts::new(s, &q))
                .collect::<Option<Vec<_>>>()
            {
                let by_tops = top_k_across(&sides, q.k, combine).unwrap();
                assert_eq!(by_tops.rows, by_cells.rows, "seed {seed}: {q:?}");
                by_own_tops += 1;
            }
            let shards: Vec<Shard> = parts.into_iter().map(|p| Shard(p, q.metric)).collect();
            let tput = top_k_across(&shards, q.k, combine).unwrap();
            assert_eq!(by_cells.rows, tput.rows, "seed {seed}: {q:?}");
            // A key with no requests of the metric's kind ranks in a single
            // node's answer only if it has requests at all: both list it.
            let got: Vec<(String, f64)> = (tput.rows.iter())
                .map(|(k, p)| (k.clone(), p.value))
                .collect();
            let want: Vec<(String, f64)> = (one.rows.iter())
                .map(|r| (r.key.clone(), r.value))
                .collect();
            assert_eq!(got, want, "seed {seed}: {q:?}");
        }
    }
    assert!(
        by_own_tops > 10,
        "only {by_own_tops} frequency questions by the stores' top-Ks"
    );
}

/// Pages of requests merged from three shards, walked with their cursors,
/// equal one engine's pages: the same events in the same order, page by
/// page, and the last page says there is no next.
#[test]
fn three_shards_pages_of_requests_walk_as_one_engine() {
    use toplog_engine::Page;
    for seed in 0..3u64 {
        let (whole, shards, mut rng) = three_shards(seed);
        for _ in 0..10 {
            let (q, _) = random_query(&mut rng);
            let limit = rng.random_range(1..40);
            let (mut after, mut pages) = (None, 0);
            loop {
                let one = whole
                    .scan(q.range, &q.filters, after.as_ref(), limit)
                    .unwrap();
                let parts = (shards.iter())
                    .map(|s| s.scan(q.range, &q.filters, after.as_ref(), limit).unwrap())
                    .collect();
                let merged = Page::merge(parts, after.as_ref(), limit);
                assert_eq!(merged, one, "seed {seed}, page {pages}: {q:?}");
                pages += 1;
                match merged.next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
        }
    }
}

/// An aggregation merged from three shards' rows equals one engine's: every
/// interval and group, its cell whole.
#[test]
fn three_shards_aggregations_merge_as_one_engine() {
    use toplog_engine::Dimension;
    use toplog_query::{AggregationSpec, aggregate, merge_aggregates};
    let mut compared = 0;
    for seed in 0..3u64 {
        let (whole, shards, mut rng) = three_shards(seed);
        for _ in 0..20 {
            let (q, _) = random_query(&mut rng);
            let spec = AggregationSpec {
                range: q.range,
                interval_us: [None, Some(MIN), Some(HOUR), Some(DAY)][rng.random_range(0..4)],
                group_by: [
                    None,
                    Some(Dimension::Endpoint),
                    Some(Dimension::UserId),
                    Some(Dimension::StatusCode),
                ][rng.random_range(0..4)],
                filters: q.filters.clone(),
                needs_quantiles: rng.random_bool(0.5),
            };
            let one = match aggregate(&whole, &spec) {
                Ok(rows) => rows,
                Err(_) => continue, // too many rows: refused alike
            };
            let parts = shards
                .iter()
                .map(|s| aggregate(s, &spec).unwrap())
                .collect();
            assert_eq!(
                merge_aggregates(parts).unwrap(),
                one,
                "seed {seed}: {spec:?}"
            );
            compared += usize::from(!one.is_empty());
        }
    }
    assert!(
        compared > 30,
        "only {compared} aggregations with rows compared"
    );
}
