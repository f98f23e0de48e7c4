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

/// Runs a job to completion once one of `turns` is free (it waits as
/// `pending` until then), recording each state change durably.
pub(crate) async fn run_job(
    engine: Arc<Engine>,
    store: Arc<toplog_query::JobStore>,
    turns: Arc<Semaphore>,
    memory_bytes: usize,
    mut job: toplog_query::Job,
) {
    use toplog_query::JobState;
    let Ok(_turn) = turns.acquire_owned().await else {
        return;
    };
    let outcome = match AggregationRequest::parse(&job.request) {
        Err(e) => Err(e.to_string()),
        Ok(request) => {
            job.state = JobState::Running;
            if let Err(e) = store.put(&job) {
                tracing::error!(error = %e, "cannot record job state");
            }
            super::workers::aggregating(memory_bytes, move || {
                toplog_query::aggregate(&engine, &request.spec)
                    .map(|rows| Value::Array(rows.iter().map(|r| request.row_json(r)).collect()))
                    .map_err(|e| e.to_string())
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

/// Checks an aggregation request (the body of `POST
/// /api/v1/requests/aggregate`), records the job and starts it; its id.
pub(crate) async fn submit(app: &AppState, body: Value) -> ApiResult<String> {
    AggregationRequest::parse(&body)?;
    let engine = app.engine()?;
    let store = jobs(app)?;
    if store.pending() >= MAX_PENDING {
        return Err(ApiError::overloaded(
            format!("{MAX_PENDING} aggregation jobs already wait to run; try again later"),
            5,
        ));
    }
    let job = toplog_query::Job {
        aggregation_id: uuid::Uuid::now_v7().to_string(),
        state: toplog_query::JobState::Pending,
        submitted_at: Micros::now(),
        finished_at: None,
        request: body,
        result: None,
        error: None,
    };
    let id = job.aggregation_id.clone();
    {
        let (store, job) = (store.clone(), job.clone());
        let ttl = super::events::micros(app.config.aggregation_ttl);
        blocking(move || {
            store.expire(Micros::now().saturating_sub_micros(ttl))?;
            Ok(store.put(&job)?)
        })
        .await?;
    }
    tokio::spawn(run_job(
        engine,
        store,
        app.aggregations.clone(),
        app.config.query_memory_bytes,
        job,
    ));
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
