//! Liveness, readiness, the OpenAPI document, and the answers for unknown routes.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{ApiError, AppState};

/// The document made once from the route table when the router was built
/// (the table holds this handler, so the handler cannot name the table).
pub(super) async fn openapi(State(app): State<Arc<AppState>>) -> Json<Value> {
    Json(app.openapi.get().cloned().unwrap_or(Value::Null))
}

pub(super) async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route".into())
}

pub(super) async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method".into(),
    )
}

pub(super) async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// A cluster member takes traffic while it knows a leader and has applied
/// what it knows committed, within `ready_lag` entries.
fn cluster_ready(app: &AppState) -> Result<(), String> {
    let Some(settings) = &app.config.cluster else {
        return Ok(());
    };
    let Some(cluster) = app.cluster.get() else {
        return Err("the Raft node is starting".into());
    };
    let s = cluster.status();
    if let Some(why) = s.stopped {
        return Err(format!("the Raft node stopped: {why}"));
    }
    if s.voters.is_empty() && s.learners.is_empty() {
        return Err(
            "not a member yet: a leader adds this node with POST /api/v1/cluster/members".into(),
        );
    }
    if let Some(index) = cluster.receiving_snapshot() {
        return Err(format!(
            "installing a snapshot (at index {index}) from the leader"
        ));
    }
    if s.leader_id == 0 {
        return Err("no leader is known: an election, or no quorum".into());
    }
    let behind = s.commit_index.saturating_sub(s.applied_index);
    if behind > settings.ready_lag() {
        return Err(format!(
            "applying the log: {behind} committed entries not applied yet"
        ));
    }
    // A sharded node: each replica it holds knows its leader and keeps up
    // (one being filled by a snapshot is not ready yet either).
    if let Some(shards) = app.sharded().map_err(|e| e.message)? {
        for r in shards.replicas() {
            let s = r.cluster.status();
            let shard = r.shard;
            if let Some(why) = s.stopped {
                return Err(format!("shard {shard}: the Raft node stopped: {why}"));
            }
            if let Some(index) = r.cluster.receiving_snapshot() {
                return Err(format!(
                    "shard {shard}: installing a snapshot (at index {index})"
                ));
            }
            if s.leader_id == 0 {
                return Err(format!(
                    "shard {shard}: no leader is known: an election, or no quorum"
                ));
            }
            let behind = s.commit_index.saturating_sub(s.applied_index);
            if behind > settings.ready_lag() {
                return Err(format!(
                    "shard {shard}: applying the log: {behind} committed entries not applied yet"
                ));
            }
            r.engine
                .health()
                .map_err(|e| format!("shard {shard}: {e}"))?;
        }
    }
    Ok(())
}

pub(super) async fn readyz(State(app): State<Arc<AppState>>) -> Response {
    let not_ready = |reason: String| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready", "reason": reason})),
        )
    };
    let engine = match app.engine() {
        Ok(e) => e,
        Err(e) => return not_ready(e.message).into_response(),
    };
    if let Err(reason) = cluster_ready(&app) {
        return not_ready(reason).into_response();
    }
    match engine.health() {
        Ok(()) => {
            let s = engine.stats();
            Json(json!({"status": "ready", "applied_lsn": s.applied_lsn.get(), "segments": s.segments})).into_response()
        }
        Err(e) => not_ready(e.to_string()).into_response(),
    }
}
