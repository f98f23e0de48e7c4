//! The cluster as this node sees it: its id, the leader it knows, term,
//! role, commit and applied index, and the members.

use std::sync::Arc;

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::{Value, json};

use super::{ApiError, ApiResult, AppState};

/// How long a leadership transfer may take before it is reported failed
/// (raft-rs gives up after an election timeout).
const TRANSFER_WAIT: Duration = Duration::from_secs(10);

pub(super) async fn cluster(State(app): State<Arc<AppState>>) -> ApiResult {
    let data = match app.cluster.get() {
        None if app.config.cluster.is_some() => {
            return Err(super::ApiError::unavailable(
                "recovering: the Raft node starts once the store is open".into(),
            ));
        }
        None => json!({"clustered": false}),
        Some(cluster) => {
            let s = cluster.status();
            let members: Vec<_> = (cluster.members().iter())
                .map(|(id, url)| json!({"id": id, "url": url}))
                .collect();
            json!({
                "clustered": true,
                "node_id": s.node_id,
                "leader_id": (s.leader_id != 0).then_some(s.leader_id),
                "term": s.term,
                "role": s.role,
                "commit_index": s.commit_index,
                "applied_index": s.applied_index,
                "log_first_index": s.first_index,
                "receiving_snapshot": cluster.receiving_snapshot(),
                "stopped": s.stopped,
                "members": members,
            })
        }
    };
    Ok(Json(json!({"status": "success", "data": data})).into_response())
}

pub(super) async fn transfer_leadership(
    State(app): State<Arc<AppState>>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult {
    let Json(body) = body.map_err(ApiError::from_json_body)?;
    let Some(cluster) = app.cluster.get() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_clustered",
            "this node is not a member of a cluster".into(),
        ));
    };
    let Value::Object(fields) = &body else {
        return Err(ApiError::parameter("body", "expected a JSON object".into()));
    };
    if let Some(unknown) = fields.keys().find(|k| *k != "node_id") {
        return Err(ApiError::parameter(
            unknown,
            "unknown field (known: node_id)".into(),
        ));
    }
    let to = body["node_id"]
        .as_u64()
        .filter(|id| cluster.url_of(*id).is_some())
        .ok_or_else(|| ApiError::parameter("node_id", "expected the id of a member".into()))?;
    cluster.transfer_leadership(to).await.map_err(|e| {
        let leader = cluster.status().leader_id;
        ApiError::new(
            StatusCode::CONFLICT,
            "not_leader",
            format!("{e}: send it to the leader (node {leader})"),
        )
    })?;
    let deadline = Instant::now() + TRANSFER_WAIT;
    loop {
        let s = cluster.status();
        if s.leader_id == to {
            return Ok(Json(json!({"status": "success", "leader_id": to})).into_response());
        }
        if Instant::now() >= deadline {
            return Err(ApiError::unavailable(format!(
                "node {to} did not take over within {TRANSFER_WAIT:?} (leader: node {}); a member that lags or is down cannot",
                s.leader_id
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
