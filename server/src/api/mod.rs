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
pub(crate) mod traces;
mod web;
mod workers;

use std::sync::{Arc, OnceLock};

use toplog_compaction::Maintainer;
use toplog_engine::Engine;

use crate::config::Config;
pub(crate) use aggregations::{JobRunner, run_job};
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReadPoint {
    pub(crate) node_id: u64,
    pub(crate) applied_index: u64,
}

impl ReadPoint {
    /// Adds itself to an answer's `meta`.
    pub(crate) fn add_to(point: Option<Self>, meta: &mut serde_json::Value) {
        if let Some(p) = point {
            meta["node_id"] = p.node_id.into();
            meta["applied_index"] = p.applied_index.into();
        }
    }
}

/// How long a strong read waits for the leader to confirm its index.
const STRONG_READ_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl AppState {
    /// Runs read `f` on the read threads, as `consistency` asks: at once
    /// (`eventual`, the default: this node's store as it is), or once this
    /// node has applied everything committed when the read arrived
    /// (`strong`: ReadIndex, linearizable). `f` gets the store and, in a
    /// cluster, where the read is served.
    async fn read<T: Send + 'static>(
        &self,
        p: &params::Params,
        f: impl FnOnce(Arc<Engine>, Option<ReadPoint>) -> ApiResult<T> + Send + 'static,
    ) -> ApiResult<T> {
        let engine = self.engine()?;
        let strong = p.choice("consistency")? == Some("strong");
        let point = match self.cluster.get() {
            None if self.config.cluster.is_some() => {
                return Err(ApiError::unavailable(
                    "recovering: the Raft node starts once the store is open".into(),
                ));
            }
            None => None,
            Some(cluster) => {
                if strong {
                    cluster
                        .read_barrier(STRONG_READ_WAIT)
                        .await
                        .map_err(|e| ApiError::unavailable(format!("a strong read: {e}")))?;
                }
                let s = cluster.status();
                Some(ReadPoint {
                    node_id: s.node_id,
                    applied_index: s.applied_index,
                })
            }
        };
        self.queries.run(move || f(engine, point)).await
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
