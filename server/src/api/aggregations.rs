//! Background aggregation jobs: submit, run, list, fetch.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use toplog_engine::Engine;
use toplog_query::AggregationRequest;
use toplog_types::Micros;

use super::workers::blocking;
use super::{ApiError, ApiResult, AppState};

/// Jobs that may wait to run at once; past it a submission is `503 overloaded`.
const MAX_PENDING: usize = 1000;

/// What a job reads: this node's store, or in a sharded cluster every
/// shard (found when the job runs).
#[derive(Debug, Clone)]
pub(crate) enum JobSource {
    Store(Arc<Engine>),
    Shards(std::sync::Weak<AppState>),
}

/// How long a job run again at start-up waits for the node's shards to open.
const SHARDS_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

impl JobSource {
    pub(crate) fn of(app: &Arc<AppState>, engine: &Arc<Engine>) -> Self {
        match &app.config.cluster {
            Some(c) if c.shards > 1 => Self::Shards(Arc::downgrade(app)),
            _ => Self::Store(engine.clone()),
        }
    }

    async fn stores(&self) -> Result<super::stores::Stores, String> {
        let app = match self {
            Self::Store(engine) => return Ok(super::stores::Stores::single(engine.clone(), None)),
            Self::Shards(app) => app,
        };
        let deadline = std::time::Instant::now() + SHARDS_WAIT;
        loop {
            let app = app.upgrade().ok_or("the node is stopping")?;
            match app.stores(false, false, None).await {
                Ok(stores) => return Ok(stores),
                Err(e) if std::time::Instant::now() > deadline => return Err(e.message),
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(500)).await,
            }
        }
    }
}

/// Runs a job to completion once one of `turns` is free (it waits as
/// `pending` until then), recording each state change durably.
pub(crate) async fn run_job(
    source: JobSource,
    store: Arc<toplog_query::JobStore>,
    turns: Arc<Semaphore>,
    memory_bytes: usize,
    mut job: toplog_query::Job,
) {
    use toplog_query::JobState;
    let Ok(_turn) = turns.acquire_owned().await else {
        return;
    };
    let outcome = match (
        AggregationRequest::parse(&job.request),
        source.stores().await,
    ) {
        (Err(e), _) => Err(e.to_string()),
        (Ok(_), Err(e)) => Err(e),
        (Ok(request), Ok(stores)) => {
            job.state = JobState::Running;
            if let Err(e) = store.put(&job) {
                tracing::error!(error = %e, "cannot record job state");
            }
            super::workers::aggregating(memory_bytes, move || {
                stores
                    .aggregate(&request.spec)
                    .map(|rows| Value::Array(rows.iter().map(|r| request.row_json(r)).collect()))
                    .map_err(|e| e.message)
            })
            .await
            .unwrap_or_else(|e| Err(e.message))
        }
    };
    job.finished_at = Some(Micros::now());
    match outcome {
        Ok(result) => {
            job.state = JobState::Done;
            job.result = Some(result);
        }
        Err(e) => {
            job.state = JobState::Failed;
            job.error = Some(e);
        }
    }
    if let Err(e) = store.put(&job) {
        tracing::error!(error = %e, id = %job.aggregation_id, "cannot record job result");
    }
}

pub(super) async fn submit_aggregation(
    State(app): State<Arc<AppState>>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult {
    let Json(body) = body.map_err(ApiError::from_json_body)?;
    let id = submit(&app, body).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"status": "success", "message": "Aggregation request submitted.", "aggregation_id": id})),
    )
        .into_response())
}

/// What starting a job takes: shared by the API and a cluster's log, which
/// starts on every member each job submitted to any (results are derived).
#[derive(Debug, Clone)]
pub(crate) struct JobRunner {
    pub(crate) source: JobSource,
    pub(crate) store: Arc<toplog_query::JobStore>,
    pub(crate) turns: Arc<Semaphore>,
    pub(crate) memory_bytes: usize,
    /// How long finished jobs are kept, in microseconds.
    pub(crate) ttl_us: i64,
    pub(crate) runtime: tokio::runtime::Handle,
}

impl JobRunner {
    pub(crate) fn of(app: &AppState) -> ApiResult<Self> {
        Ok(Self {
            source: JobSource::Store(app.engine()?),
            store: jobs(app)?,
            turns: app.aggregations.clone(),
            memory_bytes: app.config.query_memory_bytes,
            ttl_us: super::events::micros(app.config.aggregation_ttl),
            runtime: tokio::runtime::Handle::current(),
        })
    }

    /// Records `job` (pending) and starts it; nothing if a job with its id
    /// is kept already. Expired jobs go first. Blocks on the disk.
    pub(crate) fn start(&self, job: toplog_query::Job) -> Result<(), toplog_query::QueryError> {
        self.store
            .expire(Micros::now().saturating_sub_micros(self.ttl_us))?;
        if self.store.get(&job.aggregation_id).is_some() {
            return Ok(());
        }
        self.store.put(&job)?;
        self.runtime.spawn(run_job(
            self.source.clone(),
            self.store.clone(),
            self.turns.clone(),
            self.memory_bytes,
            job,
        ));
        Ok(())
    }
}

/// A job as submitted: pending, with a new id.
pub(crate) fn new_job(request: Value) -> toplog_query::Job {
    toplog_query::Job {
        aggregation_id: uuid::Uuid::now_v7().to_string(),
        state: toplog_query::JobState::Pending,
        submitted_at: Micros::now(),
        finished_at: None,
        request,
        result: None,
        error: None,
    }
}

/// Checks an aggregation request (the body of `POST
/// /api/v1/requests/aggregate`), records the job and starts it (in a
/// cluster, on every member, through the Raft log); its id.
pub(crate) async fn submit(app: &AppState, body: Value) -> ApiResult<String> {
    AggregationRequest::parse(&body)?;
    let runner = JobRunner::of(app)?;
    if runner.store.pending() >= MAX_PENDING {
        return Err(ApiError::overloaded(
            format!("{MAX_PENDING} aggregation jobs already wait to run; try again later"),
            5,
        ));
    }
    let job = new_job(body);
    let id = job.aggregation_id.clone();
    match app.cluster.get() {
        Some(cluster) => {
            cluster
                .submit(&crate::cluster::Entry::Job(job))
                .await
                .map_err(|e| ApiError::unavailable(e.to_string()))?;
        }
        None if app.config.cluster.is_some() => {
            return Err(ApiError::unavailable(
                "recovering: the Raft node starts once the store is open".into(),
            ));
        }
        None => blocking(move || Ok(runner.start(job)?)).await?,
    }
    Ok(id)
}

fn jobs(app: &AppState) -> ApiResult<Arc<toplog_query::JobStore>> {
    app.jobs
        .get()
        .cloned()
        .ok_or_else(|| ApiError::unavailable("recovering".into()))
}

/// The job `id`; `404 not_found` if there is none (or it expired).
pub(crate) fn job(app: &AppState, id: &str) -> ApiResult<toplog_query::Job> {
    jobs(app)?.get(id).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no aggregation `{id}`"),
        )
    })
}

/// Every job kept.
pub(crate) fn all_jobs(app: &AppState) -> ApiResult<Vec<toplog_query::Job>> {
    Ok(jobs(app)?.list())
}

fn job_json(job: &toplog_query::Job, with_result: bool) -> Value {
    let mut v = json!({
        "aggregation_id": job.aggregation_id,
        "state": job.state,
        "submitted_at": job.submitted_at.to_rfc3339(),
        "finished_at": job.finished_at.map(Micros::to_rfc3339),
        "request": job.request,
    });
    if let Some(e) = &job.error {
        v["error"] = json!(e);
    }
    if with_result && let Some(r) = &job.result {
        v["result"] = r.clone();
    }
    v
}

pub(super) async fn get_aggregation(
    State(app): State<Arc<AppState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> ApiResult {
    let job = job(&app, &id)?;
    Ok(Json(json!({"status": "success", "data": job_json(&job, true)})).into_response())
}

pub(super) async fn list_aggregations(State(app): State<Arc<AppState>>) -> ApiResult {
    let jobs: Vec<Value> = all_jobs(&app)?.iter().map(|j| job_json(j, false)).collect();
    Ok(Json(json!({"status": "success", "data": jobs})).into_response())
}
