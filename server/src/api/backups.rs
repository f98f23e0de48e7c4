//! Backups through the API (`POST /api/v1/admin/backups`), and the node's
//! own schedule (`[backup] every`): both take one the same way, one at a time.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::{Value, json};

use super::{ApiError, ApiResult, AppState};
use crate::backup::{self, Taken};

pub(super) async fn create(
    State(app): State<Arc<AppState>>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult {
    let Json(body) = body.map_err(ApiError::from_json_body)?;
    let Value::Object(fields) = &body else {
        return Err(ApiError::parameter("body", "expected a JSON object".into()));
    };
    if let Some(unknown) = fields.keys().find(|k| *k != "to") {
        return Err(ApiError::parameter(
            unknown,
            "unknown field (known: to)".into(),
        ));
    }
    let configured = app.backups.settings.url.clone();
    let url = match body.get("to") {
        None | Some(Value::Null) => configured.ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "no_backup_location",
                "no `to` given and no `[backup] url` configured".into(),
            )
        })?,
        Some(Value::String(to))
            if (to.starts_with("s3://") && to.len() > 5) || Some(to) == configured.as_ref() =>
        {
            to.clone()
        }
        Some(_) => {
            return Err(ApiError::parameter(
                "to",
                "expected an s3://bucket/prefix URL (a folder only as `[backup] url`, set by the operator)".into(),
            ));
        }
    };
    let taken = take(&app, url).await?;
    Ok(Json(json!({"status": "success", "data": taken})).into_response())
}

/// Takes a backup into `url` once any under way has ended, and counts it.
pub(crate) async fn take(app: &Arc<AppState>, url: String) -> ApiResult<Taken> {
    let engine = app.engine()?;
    let _turn = app.backups.turn().await;
    let applied = app.cluster.get().map(|c| c.status().applied_index);
    // Each shard's replica as of its group's applied index now.
    let shards: Vec<(u32, Arc<toplog_engine::Engine>, u64)> = (app.sharded()?.into_iter())
        .flat_map(|s| s.replicas())
        .map(|r| (r.shard, r.engine.clone(), r.cluster.status().applied_index))
        .collect();
    let state = app.clone();
    let result = tokio::task::spawn_blocking(move || {
        let store = state
            .backups
            .settings
            .open(&url, &state.config.data_dir)
            .map_err(|e| ApiError::parameter("to", format!("{e:#}")))?;
        let source = backup::Source {
            engine: &engine,
            applied,
            archive: &state.config.archive,
            copy_archive: state.backups.settings.archive.unwrap_or(true),
            shards: (shards.iter())
                .map(|(shard, engine, applied)| (*shard, &**engine, *applied))
                .collect(),
        };
        backup::take(&source, &store, &url)
            .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, "backup_failed", format!("{e:#}")))
    })
    .await
    .map_err(|e| ApiError::internal(format!("backup task failed: {e}")))?;
    app.metrics.backup(result.as_ref().ok());
    match &result {
        Ok(t) => {
            tracing::info!(id = %t.id, url = %t.url, index = t.index, files = t.files, copied_bytes = t.copied_bytes, took_ms = t.took_ms, "backup taken")
        }
        Err(e) => tracing::error!(error = %e.message, "backup failed"),
    }
    result
}

/// Takes a backup into `[backup] url` every `[backup] every`, then prunes
/// past `keep`.
pub(crate) async fn scheduled(app: Arc<AppState>) {
    let (Some(every), Some(url)) = (app.backups.every(), app.backups.settings.url.clone()) else {
        return;
    };
    backup::run_every(every, || {
        let (app, url) = (app.clone(), url.clone());
        async move {
            if take(&app, url.clone()).await.is_err() {
                return; // logged and counted
            }
            let keep = app.backups.keep();
            let state = app.clone();
            let pruned = tokio::task::spawn_blocking(move || {
                let store = state.backups.settings.open(&url, &state.config.data_dir)?;
                backup::prune(&store, keep)
            })
            .await;
            match pruned {
                Ok(Ok(p)) if !p.backups.is_empty() => {
                    tracing::info!(backups = ?p.backups, objects = p.objects, "old backups removed");
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %format!("{e:#}"), "old backups were not removed"),
                Err(e) => tracing::warn!(error = %e, "backup pruning failed"),
            }
        }
    })
    .await;
}
