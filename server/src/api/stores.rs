//! What a read runs over ([`Stores`]): this node's store; or, in a sharded
//! cluster, one replica of each shard, here or on another node, whose
//! parts the query layer merges (docs/cluster.md, "Reads across shards").
//! A shard no replica answers for is never left out silently: the read
//! fails with `503 partial_data` naming it, or, when the caller allows
//! partial answers, is answered without it and marked so.

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use toplog_engine::{Cell, Engine, Filters, Page, TimeRange};
use toplog_query::{
    Part, SeriesCells, ShardKeys, TimeseriesAnswer, TimeseriesQuery, TopK, TopKAnswer,
};
use toplog_replication::{NodeId, ShardId};
use toplog_types::Micros;

use super::{ApiError, ApiResult, ReadPoint};
use crate::cluster::{ClusterSettings, Question, ReadReplica as Replica, ask_shard};

/// One shard of a read, and where it was read.
#[derive(Debug, Clone)]
struct ShardRead {
    shard: ShardId,
    replica: Replica,
    /// (node, applied index) of the replica that answered.
    read_at: Option<(NodeId, u64)>,
}

/// A sharded read's state: its shards, those left out, keys exchanged.
#[derive(Debug, Default)]
struct Progress {
    shards: Vec<ShardRead>,
    missing: Vec<(ShardId, String)>,
    /// A cross-shard top-K's (keys sent, keys asked).
    exchanged: Option<(usize, usize)>,
}

/// A read's stores.
#[derive(Debug)]
pub(crate) struct Stores {
    single: Option<Arc<Engine>>,
    progress: Mutex<Progress>,
    allow_partial: bool,
    strong: bool,
    settings: Option<ClusterSettings>,
    runtime: Option<tokio::runtime::Handle>,
    point: Option<ReadPoint>,
}

/// Why a sharded read failed.
enum Failed {
    /// A store's own error (bad question, budget): the answer's.
    Api(ApiError),
    /// No replica of the shard answered.
    Shard(ShardId, String),
}

impl From<toplog_query::QueryError> for Failed {
    fn from(e: toplog_query::QueryError) -> Self {
        Failed::Api(e.into())
    }
}

impl From<toplog_engine::EngineError> for Failed {
    fn from(e: toplog_engine::EngineError) -> Self {
        Failed::Api(e.into())
    }
}

impl Stores {
    /// One node's store.
    pub(crate) fn single(engine: Arc<Engine>, point: Option<ReadPoint>) -> Self {
        Self {
            single: Some(engine),
            progress: Mutex::new(Progress::default()),
            allow_partial: false,
            strong: false,
            settings: None,
            runtime: None,
            point,
        }
    }

    /// Every shard, each where `replicas` says.
    pub(crate) fn sharded(
        replicas: Vec<(ShardId, Replica)>,
        settings: ClusterSettings,
        strong: bool,
        allow_partial: bool,
        point: Option<ReadPoint>,
    ) -> Self {
        let node_id = settings.node_id;
        let shards = (replicas.into_iter())
            .map(|(shard, replica)| ShardRead {
                read_at: match &replica {
                    Replica::Here { applied, .. } => Some((node_id, *applied)),
                    Replica::There(_) => None,
                },
                shard,
                replica,
            })
            .collect();
        Self {
            single: None,
            progress: Mutex::new(Progress {
                shards,
                ..Progress::default()
            }),
            allow_partial,
            strong,
            settings: Some(settings),
            runtime: tokio::runtime::Handle::try_current().ok(),
            point,
        }
    }

    fn progress(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Where the read was served, with each shard's replica and index, the
    /// shards left out, and the keys a cross-shard top-K exchanged.
    pub(crate) fn point(&self) -> Option<ReadPoint> {
        if self.single.is_some() {
            return self.point.clone();
        }
        let p = self.progress();
        let shards: Vec<Value> = (p.shards.iter())
            .map(|s| {
                let (node, applied) = s.read_at.unwrap_or((0, 0));
                json!({"shard": s.shard, "node_id": node, "applied_index": applied})
            })
            .collect();
        let mut meta = json!({"shards": shards});
        if !p.missing.is_empty() {
            meta["partial"] = json!(true);
            meta["missing_shards"] = (p.missing.iter())
                .map(|(s, why)| json!({"shard": s, "reason": why}))
                .collect();
        }
        if let Some((sent, asked)) = p.exchanged {
            meta["keys_exchanged"] = json!({"sent": sent, "asked": asked});
        }
        let mut point = self.point.clone().unwrap_or_default();
        point.shards = Some(meta);
        Some(point)
    }

    /// Runs `op` over the shards; a shard no replica answers for fails the
    /// read, or, when partial answers are allowed, is left out and `op`
    /// runs again without it.
    fn over_shards<T>(&self, op: impl Fn(&[ShardRead]) -> Result<T, Failed>) -> ApiResult<T> {
        loop {
            let shards = self.progress().shards.clone();
            match op(&shards) {
                Ok(v) => return Ok(v),
                Err(Failed::Api(e)) => return Err(e),
                Err(Failed::Shard(shard, why)) => {
                    let mut p = self.progress();
                    if !self.allow_partial {
                        return Err(partial_data(shard, &why));
                    }
                    p.shards.retain(|s| s.shard != shard);
                    p.missing.push((shard, why));
                    if p.shards.is_empty() {
                        return Err(partial_data(shard, "no shard can be read"));
                    }
                }
            }
        }
    }

    /// Asks shard `s` `question` on another node: the first of its replicas
    /// there that answers.
    fn ask(&self, s: &ShardRead, question: &Question) -> Result<crate::cluster::Answer, Failed> {
        let Replica::There(nodes) = &s.replica else {
            return Err(Failed::Api(ApiError::internal(
                "a shard held here was asked over the network".into(),
            )));
        };
        let (Some(settings), Some(runtime)) = (&self.settings, &self.runtime) else {
            return Err(Failed::Shard(s.shard, "not in a cluster".into()));
        };
        let mut why = "no other node holds it".to_owned();
        for (node, url) in nodes {
            match runtime.block_on(ask_shard(settings, url, s.shard, question, self.strong)) {
                Ok((answer, applied)) => {
                    let mut p = self.progress();
                    if let Some(r) = p.shards.iter_mut().find(|r| r.shard == s.shard) {
                        r.read_at = Some((*node, applied));
                    }
                    return Ok(answer);
                }
                Err(e) => why = format!("node {node}: {e}"),
            }
        }
        Err(Failed::Shard(
            s.shard,
            format!("no replica answered (last: {why})"),
        ))
    }

    /// Each shard's part: from its store here, or asked of another node.
    fn parts<T>(
        &self,
        shards: &[ShardRead],
        here: impl Fn(&Engine) -> Result<T, Failed>,
        question: impl Fn() -> Question,
        there: impl Fn(crate::cluster::Answer) -> Result<T, String>,
    ) -> Result<Vec<T>, Failed> {
        (shards.iter())
            .map(|s| match &s.replica {
                Replica::Here { engine, .. } => here(engine),
                Replica::There(_) => {
                    there(self.ask(s, &question())?).map_err(|e| Failed::Shard(s.shard, e))
                }
            })
            .collect()
    }

    /// The top K of `q`: across shards by TPUT where it applies (counts and
    /// maxima, largest first), from every key's cells otherwise.
    pub(crate) fn top_k(&self, q: &TopK) -> ApiResult<TopKAnswer> {
        if let Some(engine) = &self.single {
            return Ok(toplog_query::top_k(engine, q)?);
        }
        if q.k == 0 {
            return Err(toplog_query::QueryError::Invalid("k", "must be at least 1".into()).into());
        }
        if q.by == toplog_query::Grouping::Request {
            return self.over_shards(|shards| {
                let parts = self.parts(
                    shards,
                    |e| Ok(toplog_query::top_k(e, q)?),
                    || Question::Requests { q: q.clone() },
                    crate::cluster::Answer::into_requests,
                )?;
                Ok(toplog_query::requests_across(parts, q)?)
            });
        }
        match toplog_query::combine_of(q) {
            Some(combine) => self.over_shards(|shards| {
                let sides: Vec<Side<'_>> = (shards.iter())
                    .map(|s| match &s.replica {
                        Replica::Here { engine, .. } => {
                            Ok(Side::Here(toplog_query::StoreParts::new(engine, q)?))
                        }
                        Replica::There(_) => Ok(Side::There {
                            stores: self,
                            shard: s,
                            q,
                            seen: Mutex::new((true, Vec::new())),
                        }),
                    })
                    .collect::<Result<_, Failed>>()?;
                let found = toplog_query::top_k_across(&sides, q.k, combine)?;
                let (mut exact, mut sources) = (true, Vec::new());
                for side in &sides {
                    let (e, s) = side.seen();
                    exact &= e;
                    for s in s {
                        if !sources.contains(&s) {
                            sources.push(s);
                        }
                    }
                }
                self.progress().exchanged = Some((found.keys_sent, found.keys_asked));
                Ok(toplog_query::top_k_of_parts(&found, q, exact, sources))
            }),
            None => self.over_shards(|shards| {
                let parts = self.parts(
                    shards,
                    |e| Ok(toplog_query::key_cells(e, q)?),
                    || Question::KeyCells { q: q.clone() },
                    crate::cluster::Answer::into_key_cells,
                )?;
                Ok(toplog_query::top_k_of_cells(parts, q)?)
            }),
        }
    }

    /// The time series of `q`: a grouped series' keys are the top `limit`
    /// across every shard.
    pub(crate) fn timeseries(&self, q: &TimeseriesQuery) -> ApiResult<TimeseriesAnswer> {
        if let Some(engine) = &self.single {
            return Ok(toplog_query::timeseries(engine, q)?);
        }
        let (keys, keys_exact) = match toplog_query::keys_question(q) {
            None => (vec![None], true),
            Some(best) => {
                let answer = self.top_k(&best)?;
                let keys = answer.rows.into_iter().map(|r| Some(r.key)).collect();
                (keys, answer.exact)
            }
        };
        self.over_shards(|shards| {
            let parts: Vec<SeriesCells> = self.parts(
                shards,
                |e| Ok(toplog_query::series_cells(e, q, &keys)?),
                || Question::SeriesCells {
                    q: q.clone(),
                    keys: keys.clone(),
                },
                crate::cluster::Answer::into_series_cells,
            )?;
            let mut answer = toplog_query::timeseries_of_cells(parts, q);
            answer.exact &= keys_exact;
            Ok(answer)
        })
    }

    /// `days` days of history from `first_day`.
    pub(crate) fn history(
        &self,
        first_day: Micros,
        days: u32,
    ) -> ApiResult<Vec<toplog_query::DayRow>> {
        if let Some(engine) = &self.single {
            return Ok(toplog_query::history(engine, first_day, days)?);
        }
        self.over_shards(|shards| {
            let parts: Vec<Vec<Cell>> = self.parts(
                shards,
                |e| Ok(toplog_query::day_cells(e, first_day, days)?),
                || Question::DayCells { first_day, days },
                crate::cluster::Answer::into_day_cells,
            )?;
            Ok(toplog_query::history_of_cells(first_day, parts))
        })
    }

    /// One page of the events in `range` matching `filters`, in (timestamp,
    /// request id) order, after `after`.
    pub(crate) fn scan(
        &self,
        range: TimeRange,
        filters: &Filters,
        after: Option<&toplog_engine::Cursor>,
        limit: usize,
    ) -> ApiResult<Page> {
        if let Some(engine) = &self.single {
            return Ok(engine.scan(range, filters, after, limit)?);
        }
        self.over_shards(|shards| {
            let pages = self.parts(
                shards,
                |e| Ok(e.scan(range, filters, after, limit)?),
                || Question::Scan {
                    range,
                    filters: filters.clone(),
                    after: after.map(toplog_engine::Cursor::encode),
                    limit,
                },
                crate::cluster::Answer::into_page,
            )?;
            Ok(Page::merge(pages, after, limit))
        })
    }

    /// `metric` over `range` per key of `by` (the best `k` by `order`),
    /// or without `by` the one total: what an alert rule reads.
    pub(crate) fn window_values(
        &self,
        metric: toplog_query::Metric,
        by: Option<toplog_engine::Dimension>,
        filters: &Filters,
        range: TimeRange,
        k: usize,
        order: toplog_query::Order,
    ) -> ApiResult<Vec<toplog_query::TopKRow>> {
        if let Some(engine) = &self.single {
            let (rows, _) =
                toplog_query::window_values(engine, metric, by, filters, range, k, order)?;
            return Ok(rows);
        }
        let q = toplog_query::window_question(metric, by, filters, range, k, order)?;
        self.over_shards(|shards| {
            let parts = self.parts(
                shards,
                |e| Ok(toplog_query::key_cells(e, &q)?),
                || Question::KeyCells { q: q.clone() },
                crate::cluster::Answer::into_key_cells,
            )?;
            Ok(toplog_query::window_values_of_cells(parts, &q, by.is_some())?.0)
        })
    }

    /// An aggregation job's rows: each shard's merged by interval and group.
    pub(crate) fn aggregate(
        &self,
        spec: &toplog_query::AggregationSpec,
    ) -> ApiResult<Vec<toplog_query::AggregateRow>> {
        if let Some(engine) = &self.single {
            return Ok(toplog_query::aggregate(engine, spec)?);
        }
        self.over_shards(|shards| {
            let parts = self.parts(
                shards,
                |e| Ok(toplog_query::aggregate(e, spec)?),
                || Question::Aggregate { spec: spec.clone() },
                crate::cluster::Answer::into_aggregate,
            )?;
            Ok(toplog_query::merge_aggregates(parts)?)
        })
    }

    /// The events in `range` matching `filters`.
    pub(crate) fn count(&self, range: TimeRange, filters: &Filters) -> ApiResult<u64> {
        if let Some(engine) = &self.single {
            return Ok(engine.count(range, filters)?);
        }
        self.over_shards(|shards| {
            let counts = self.parts(
                shards,
                |e| Ok(e.count(range, filters)?),
                || Question::Count {
                    range,
                    filters: filters.clone(),
                },
                crate::cluster::Answer::into_count,
            )?;
            Ok(counts.into_iter().sum())
        })
    }
}

/// One shard's side of a cross-shard top-K.
enum Side<'a> {
    /// Its replica here.
    Here(toplog_query::StoreParts<'a>),
    /// A replica on another node, asked phase by phase.
    There {
        stores: &'a Stores,
        shard: &'a ShardRead,
        q: &'a TopK,
        /// Whether its cells were exact, and what they were read from.
        seen: Mutex<(bool, Vec<&'static str>)>,
    },
}

impl Side<'_> {
    fn seen(&self) -> (bool, Vec<&'static str>) {
        match self {
            Side::Here(parts) => parts.seen(),
            Side::There { seen, .. } => seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        }
    }

    fn phase(
        &self,
        here: impl Fn(&toplog_query::StoreParts<'_>) -> toplog_query::Result<Vec<(String, Part)>>,
        question: impl Fn(TopK) -> Question,
    ) -> Result<Vec<(String, Part)>, Failed> {
        match self {
            Side::Here(parts) => Ok(here(parts)?),
            Side::There {
                stores,
                shard,
                q,
                seen,
            } => {
                let answer = stores.ask(shard, &question((*q).clone()))?;
                let (parts, exact, sources) = answer
                    .into_parts()
                    .map_err(|e| Failed::Shard(shard.shard, e))?;
                let mut seen = seen
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                seen.0 &= exact;
                for s in sources {
                    if !seen.1.contains(&s) {
                        seen.1.push(s);
                    }
                }
                Ok(parts)
            }
        }
    }
}

impl ShardKeys for Side<'_> {
    type Error = Failed;

    fn top(&self, k: usize) -> Result<Vec<(String, Part)>, Failed> {
        self.phase(|p| p.top(k), |q| Question::Top { q, k })
    }

    fn at_least(&self, threshold: f64) -> Result<Vec<(String, Part)>, Failed> {
        self.phase(
            |p| p.at_least(threshold),
            |q| Question::AtLeast { q, threshold },
        )
    }

    fn parts(&self, keys: &[String]) -> Result<Vec<(String, Part)>, Failed> {
        self.phase(
            |p| p.parts(keys),
            |q| Question::Parts {
                q,
                keys: keys.to_vec(),
            },
        )
    }
}

/// `503 partial_data`: a shard the answer needs cannot be read.
fn partial_data(shard: ShardId, why: &str) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "partial_data",
        format!(
            "shard {shard} cannot be read ({why}): the answer would miss its events; retry, or ask with `allow_partial=true` for an answer marked partial"
        ),
    )
}

/// An alert rule's readings, from this node's store or every shard's.
impl toplog_alerting::Source for Stores {
    fn readings(
        &self,
        rule: &toplog_alerting::Rule,
        start: Micros,
        end: Micros,
    ) -> Result<Vec<toplog_alerting::evaluate::Reading>, String> {
        let rows = self
            .window_values(
                rule.metric,
                rule.by,
                &rule.filters,
                TimeRange { start, end },
                rule.max_series,
                rule.series_order(),
            )
            .map_err(|e| e.message)?;
        Ok(toplog_alerting::evaluate::Reading::of_rows(rows))
    }
}
