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
            let book = cluster.address_book();
            let ids: std::collections::BTreeSet<u64> = (s.voters.iter())
                .chain(&s.voters_outgoing)
                .chain(&s.learners)
                .copied()
                .collect();
            let members: Vec<_> = ids
                .iter()
                .map(|id| {
                    let role = if s.learners.contains(id) {
                        "learner"
                    } else if !s.voters.contains(id) {
                        "leaving"
                    } else {
                        "voter"
                    };
                    let mut m = json!({"id": id, "url": book.get(id), "role": role});
                    if let Some(p) = s.peers.get(id).filter(|_| *id != s.node_id) {
                        m["matched_index"] = json!(p.matched);
                        m["lag"] = json!(s.commit_index.saturating_sub(p.matched));
                        m["active"] = json!(p.active);
                        m["last_contact_ms"] = json!(p.last_contact_ms);
                    }
                    m
                })
                .collect();
            let shards = match app.shards.get() {
                Some(shards) => json!(shards.view().await),
                None => Value::Null,
            };
            json!({
                "clustered": true,
                "shards": shards,
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

/// This node's cluster, or `404` on a single node.
fn clustered(app: &AppState) -> ApiResult<Arc<crate::cluster::Cluster>> {
    app.cluster.get().cloned().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_clustered",
            "this node is not a member of a cluster".into(),
        )
    })
}

/// A JSON object body with only `known` fields.
fn object(body: Result<Json<Value>, JsonRejection>, known: &[&str]) -> ApiResult<Value> {
    let Json(body) = body.map_err(ApiError::from_json_body)?;
    let Value::Object(fields) = &body else {
        return Err(ApiError::parameter("body", "expected a JSON object".into()));
    };
    if let Some(unknown) = fields.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(ApiError::parameter(
            unknown,
            format!("unknown field (known: {})", known.join(", ")),
        ));
    }
    Ok(body)
}

/// `409` for a change sent to a node that does not lead.
fn not_leader(cluster: &crate::cluster::Cluster, e: impl std::fmt::Display) -> ApiError {
    let leader = cluster.status().leader_id;
    ApiError::new(
        StatusCode::CONFLICT,
        "not_leader",
        format!("{e}: send it to the leader (node {leader})"),
    )
}

/// A membership change's failure: `409` from a follower, `503` otherwise.
fn change_failed(
    cluster: &crate::cluster::Cluster,
    e: toplog_replication::ReplicationError,
) -> ApiError {
    match e {
        e @ toplog_replication::ReplicationError::NotLeader { .. } => not_leader(cluster, e),
        toplog_replication::ReplicationError::Dropped => ApiError::new(
            StatusCode::CONFLICT,
            "change_under_way",
            "another membership change is under way: retry once it is applied".into(),
        ),
        e => ApiError::unavailable(format!("the change was not made: {e}")),
    }
}

/// `POST /api/v1/cluster/members`: adds a node as a learner.
pub(super) async fn add_member(
    State(app): State<Arc<AppState>>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult {
    let cluster = clustered(&app)?;
    let body = object(body, &["node_id", "url"])?;
    let id = body["node_id"]
        .as_u64()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::parameter("node_id", "expected a node id (1, 2, ...)".into()))?;
    let url = body["url"]
        .as_str()
        .map(|u| u.trim_end_matches('/'))
        .filter(|u| {
            (u.starts_with("http://") || u.starts_with("https://"))
                && u.len() <= 2048
                && tonic::transport::Endpoint::from_shared(u.to_string()).is_ok()
        })
        .ok_or_else(|| {
            ApiError::parameter("url", "expected the node's http:// or https:// URL".into())
        })?;
    let s = cluster.status();
    if s.voters.contains(&id) || s.learners.contains(&id) || s.voters_outgoing.contains(&id) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_a_member",
            format!("node {id} is already a member"),
        ));
    }
    let index = cluster
        .add_member(id, url)
        .await
        .map_err(|e| change_failed(&cluster, e))?;
    Ok(Json(json!({"status": "success", "data": {
        "node_id": id, "role": "learner", "index": index,
        "note": "it becomes a voter once it has caught up (GET /api/v1/cluster shows its role)",
    }}))
    .into_response())
}

/// `DELETE /api/v1/cluster/members/{id}`.
pub(super) async fn remove_member(
    State(app): State<Arc<AppState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> ApiResult {
    let cluster = clustered(&app)?;
    let id: u64 = id
        .parse()
        .map_err(|_| ApiError::parameter("id", "expected a node id (1, 2, ...)".into()))?;
    let s = cluster.status();
    if !(s.voters.contains(&id) || s.learners.contains(&id)) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_a_member",
            format!("node {id} is not a member"),
        ));
    }
    if id == s.node_id {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "removing_the_leader",
            "a node does not remove itself: hand leadership to another member first (POST /api/v1/cluster/leader)".into(),
        ));
    }
    if s.voters == [id] {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "last_voter",
            format!("node {id} is the only voter"),
        ));
    }
    let index = cluster
        .remove_member(id)
        .await
        .map_err(|e| change_failed(&cluster, e))?;
    Ok(Json(json!({"status": "success", "data": {"node_id": id, "index": index}})).into_response())
}

pub(super) async fn transfer_leadership(
    State(app): State<Arc<AppState>>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult {
    let cluster = clustered(&app)?;
    let body = object(body, &["node_id"])?;
    let to = body["node_id"]
        .as_u64()
        .filter(|id| cluster.url_of(*id).is_some())
        .ok_or_else(|| ApiError::parameter("node_id", "expected the id of a member".into()))?;
    cluster
        .transfer_leadership(to)
        .await
        .map_err(|e| not_leader(&cluster, e))?;
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
