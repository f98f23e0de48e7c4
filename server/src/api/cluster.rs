//! The cluster as this node sees it: its id, the leader it knows, term,
//! role, commit and applied index, and the members.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use serde_json::json;

use super::{ApiResult, AppState};

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
                "stopped": s.stopped,
                "members": members,
            })
        }
    };
    Ok(Json(json!({"status": "success", "data": data})).into_response())
}
