//! The REST API under `/api/v1`, plus `/healthz` and `/readyz`. Handlers parse
//! and check parameters, then hand CPU work to blocking threads.

pub(crate) mod aggregations;
pub(crate) mod analytics;
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
mod workers;

use std::sync::{Arc, OnceLock};

use toplog_compaction::Maintainer;
use toplog_engine::Engine;

use crate::config::Config;
pub(crate) use aggregations::run_job;
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
}

impl AppState {
    fn maintainer(&self) -> ApiResult<Arc<Maintainer>> {
        self.engine()?;
        self.maintainer
            .get()
            .cloned()
            .ok_or_else(|| ApiError::unavailable("recovering".into()))
    }

    fn engine(&self) -> ApiResult<Arc<Engine>> {
        match self.engine.get() {
            Some(e) => Ok(e.clone()),
            None => Err(ApiError::unavailable(match self.startup_error.get() {
                Some(e) => format!("the store failed to open: {e}"),
                None => "recovering: replaying the write-ahead log".into(),
            })),
        }
    }
}
