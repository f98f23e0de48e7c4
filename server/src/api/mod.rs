//! The REST API under `/api/v1`, plus `/healthz` and `/readyz`. Handlers parse
//! and check parameters, then hand CPU work to blocking threads.

pub(crate) mod aggregations;
mod alert_channels;
mod alerts;
pub(crate) mod analytics;
mod backups;
mod cluster;
mod encryption;
mod error;
pub(crate) mod events;
mod health;
mod keys;
mod openapi;
mod params;
mod routes;
mod storage;
pub(crate) mod stores;
pub(crate) mod traces;
mod web;
mod workers;

use std::sync::{Arc, OnceLock};

use toplog_compaction::Maintainer;
use toplog_engine::Engine;

use crate::config::Config;
pub(crate) use aggregations::{JobRunner, JobSource, run_job};
pub(crate) use alerts::evaluate_alerts;
pub(crate) use backups::scheduled as scheduled_backups;
pub(crate) use error::ApiError;
use error::ApiResult;
pub(crate) use routes::router;
pub(crate) use workers::{IngestGate, QueryGate};

/// Shared by all handlers. The engine is set once recovery has finished.
#[derive(Debug)]
pub(crate) struct AppState {
    pub(crate) config: Config,
    pub(crate) engine: OnceLock<Arc<Engine>>,
    /// Set when opening the store failed: `/readyz` reports it.
    pub(crate) startup_error: OnceLock<String>,
    /// Aggregation jobs; opened with the engine.
    pub(crate) jobs: OnceLock<Arc<toplog_query::JobStore>>,
    /// Retention, compaction and tiering; set with the engine.
    pub(crate) maintainer: OnceLock<Arc<Maintainer>>,
    /// Turns for aggregation jobs to run; a job waits as `pending` for one.
    pub(crate) aggregations: Arc<tokio::sync::Semaphore>,
    /// Bytes of ingested batches in flight.
    pub(crate) ingest: workers::IngestGate,
    /// Admission and time budget of reads.
    pub(crate) queries: workers::QueryGate,
    /// The OpenAPI document; set with the router.
    pub(crate) openapi: OnceLock<serde_json::Value>,
    /// Who may do what.
    pub(crate) auth: Arc<crate::auth::Auth>,
    /// This node's Raft group, when it is one of a cluster; set once the
    /// engine is open.
    pub(crate) cluster: OnceLock<Arc<crate::cluster::Cluster>>,
    /// A sharded cluster's shards as this node holds them; set once the
    /// main group runs.
    pub(crate) shards: OnceLock<Arc<crate::cluster::Shards>>,
    /// Alert rules and alerts; opened with the engine.
    pub(crate) alerting: OnceLock<Arc<crate::alerts::Alerting>>,
    /// What `GET /metrics` serves.
    pub(crate) metrics: crate::metrics::Metrics,
    /// Where backups go, and the turn to take one.
    pub(crate) backups: crate::backup::Backups,
}

/// Where a read was served in a cluster: the node, and the Raft log index
/// its store had applied when the read began (after the wait a strong read
/// makes): the answer holds every write acknowledged up to there.
/// In a sharded cluster, `shards` says where each shard was read (and
/// what was left out): the main group's index says nothing of events.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ReadPoint {
    pub(crate) node_id: u64,
    pub(crate) applied_index: u64,
    pub(crate) shards: Option<serde_json::Value>,
}

impl ReadPoint {
    /// Adds itself to an answer's `meta`.
    pub(crate) fn add_to(point: Option<Self>, meta: &mut serde_json::Value) {
        let Some(p) = point else {
            return;
        };
        meta["node_id"] = p.node_id.into();
        match p.shards {
            Some(serde_json::Value::Object(shards)) => {
                for (k, v) in shards {
                    meta[k] = v;
                }
            }
            _ => meta["applied_index"] = p.applied_index.into(),
        }
    }
}

/// How long a strong read waits for the leader to confirm its index.
const STRONG_READ_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl AppState {
    /// Runs read `f` on the read threads, as `consistency` asks: at once
    /// (`eventual`, the default: this node's store as it is), or once this
    /// node has applied everything committed when the read arrived
    /// (`strong`: ReadIndex, linearizable). `f` gets the stores to read
    /// (this node's, or one replica of each shard) and, in a cluster, where
    /// the read is served.
    async fn read<T: Send + 'static>(
        &self,
        p: &params::Params,
        f: impl FnOnce(stores::Stores) -> ApiResult<T> + Send + 'static,
    ) -> ApiResult<T> {
        self.engine()?;
        let strong = p.choice("consistency")? == Some("strong");
        let allow_partial = p.choice("allow_partial")? == Some("true");
        let point = match self.cluster.get() {
            None if self.config.cluster.is_some() => {
                return Err(ApiError::unavailable(
                    "recovering: the Raft node starts once the store is open".into(),
                ));
            }
            None => None,
            Some(cluster) => {
                // A sharded read waits for each shard's leader instead.
                if strong && self.shards.get().is_none() {
                    cluster
                        .read_barrier(STRONG_READ_WAIT)
                        .await
                        .map_err(|e| ApiError::unavailable(format!("a strong read: {e}")))?;
                }
                let s = cluster.status();
                Some(ReadPoint {
                    node_id: s.node_id,
                    applied_index: s.applied_index,
                    shards: None,
                })
            }
        };
        let stores = self.stores(strong, allow_partial, point).await?;
        self.queries.run(move || f(stores)).await
    }

    /// What a read runs over now: this node's store, or one replica of
    /// each shard (caught up with its leader for a `strong` read).
    pub(crate) async fn stores(
        &self,
        strong: bool,
        allow_partial: bool,
        point: Option<ReadPoint>,
    ) -> ApiResult<stores::Stores> {
        let engine = self.engine()?;
        Ok(match (self.sharded()?, &self.config.cluster) {
            (Some(shards), Some(settings)) => stores::Stores::sharded(
                shards.read_replicas(strong).await,
                settings.clone(),
                strong,
                allow_partial,
                point,
            ),
            _ => stores::Stores::single(engine, point),
        })
    }

    /// A sharded cluster's shards (`None` for one store); `503` while they
    /// open: the node's own store holds none of the events.
    pub(crate) fn sharded(&self) -> ApiResult<Option<&Arc<crate::cluster::Shards>>> {
        let sharded = (self.config.cluster.as_ref()).is_some_and(|c| c.shards > 1);
        match self.shards.get() {
            Some(shards) => Ok(Some(shards)),
            None if sharded => Err(ApiError::unavailable(
                "recovering: this node's shards are opening".into(),
            )),
            None => Ok(None),
        }
    }

    fn maintainer(&self) -> ApiResult<Arc<Maintainer>> {
        self.engine()?;
        self.maintainer
            .get()
            .cloned()
            .ok_or_else(|| ApiError::unavailable("recovering".into()))
    }

    pub(crate) fn engine(&self) -> ApiResult<Arc<Engine>> {
        match self.engine.get() {
            Some(e) => Ok(e.clone()),
            None => Err(ApiError::unavailable(match self.startup_error.get() {
                Some(e) => format!("the store failed to open: {e}"),
                None => "recovering: replaying the write-ahead log".into(),
            })),
        }
    }
}
