//! Storage, maintenance and retention routes.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::{Value, json};
use toplog_compaction::PolicyErrorKind;

use super::workers::blocking;
use super::{ApiError, ApiResult, AppState};

/// The shards' replicas this node holds, each with its maintainer.
fn replicas(app: &AppState) -> ApiResult<Vec<Arc<crate::cluster::Replica>>> {
    Ok((app.sharded()?.into_iter())
        .flat_map(|s| s.replicas())
        .collect())
}

/// This node's store; in a sharded cluster, also each replica it holds
/// (`shards`: its store the same way, by shard).
pub(super) async fn storage(State(app): State<Arc<AppState>>) -> ApiResult {
    let m = app.maintainer()?;
    let replicas = replicas(&app)?;
    let data = blocking(move || {
        let mut data = m.storage();
        if !replicas.is_empty() {
            data["shards"] = (replicas.iter())
                .map(|r| json!({"shard": r.shard, "storage": r.maintainer.storage()}))
                .collect();
        }
        Ok(data)
    })
    .await?;
    Ok(Json(json!({"status": "success", "data": data})).into_response())
}

/// A maintenance pass now: this node's store's, then each replica's it
/// holds in a sharded cluster (`shards`: each pass's report).
pub(super) async fn run_maintenance(State(app): State<Arc<AppState>>) -> ApiResult {
    let m = app.maintainer()?;
    let replicas = replicas(&app)?;
    let report = blocking(move || {
        let mut report =
            serde_json::to_value(m.run()).map_err(|e| ApiError::internal(e.to_string()))?;
        if !replicas.is_empty() {
            let mut shards = Vec::new();
            for r in &replicas {
                shards.push(json!({"shard": r.shard, "report": r.maintainer.run()}));
            }
            report["shards"] = Value::Array(shards);
        }
        Ok(report)
    })
    .await?;
    Ok(Json(json!({"status": "success", "data": report})).into_response())
}

pub(super) async fn get_retention(State(app): State<Arc<AppState>>) -> ApiResult {
    let policy = app.maintainer()?.policy();
    Ok(Json(json!({"status": "success", "data": policy.to_json()})).into_response())
}

pub(super) async fn put_retention(
    State(app): State<Arc<AppState>>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult {
    let m = app.maintainer()?;
    let Json(change) = body.map_err(ApiError::from_json_body)?;
    let refused = |e: toplog_compaction::PolicyError| {
        let (status, code) = match e.kind {
            PolicyErrorKind::Invalid => (StatusCode::BAD_REQUEST, "invalid_policy"),
            PolicyErrorKind::Conflicting => {
                (StatusCode::UNPROCESSABLE_ENTITY, "conflicting_parameters")
            }
            PolicyErrorKind::Storage => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError {
            field: Some(e.field.clone()),
            ..ApiError::new(status, code, e.to_string())
        }
    };
    if app.config.cluster.is_some() {
        // Checked here, then put in force on every member through the log
        // (the whole policy: the last change applied wins).
        let next = m.policy().updated(&change).map_err(refused)?;
        let cluster = app.cluster.get().cloned().ok_or_else(|| {
            ApiError::unavailable("recovering: the Raft node starts once the store is open".into())
        })?;
        cluster
            .submit(&crate::cluster::Entry::Retention(next.to_json()))
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?;
        let policy = m.policy();
        return Ok(Json(json!({"status": "success", "data": policy.to_json()})).into_response());
    }
    let policy = blocking(move || m.set_policy(&change).map_err(refused)).await?;
    Ok(Json(json!({"status": "success", "data": policy.to_json()})).into_response())
}
