//! Encryption at rest, for admins: which keys the stored data is under, and
//! the rekey that moves all of it to the current key so an old key can go.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::{Value, json};
use toplog_compaction::RekeyError;
use toplog_crypt::{Cipher, KeyUse};
use toplog_engine::KeyUsage;

use super::workers::blocking;
use super::{ApiError, ApiResult, AppState};

/// The keys the node's files are under: its store's, its shards'
/// replicas', and its state files'.
fn key_usage(
    engine: &toplog_engine::Engine,
    replicas: &[Arc<crate::cluster::Replica>],
    data_dir: &std::path::Path,
) -> ApiResult<KeyUsage> {
    let mut usage = engine.key_usage()?;
    for r in replicas {
        for (key, n) in r.engine.key_usage()? {
            *usage.entry(key).or_default() += n;
        }
    }
    crate::node_state::count_key_use(data_dir, &mut usage);
    Ok(usage)
}

/// The shards' replicas this node holds (none on a node without shards).
fn replicas(app: &AppState) -> ApiResult<Vec<Arc<crate::cluster::Replica>>> {
    Ok((app.sharded()?.into_iter())
        .flat_map(|s| s.replicas())
        .collect())
}

pub(super) async fn status(State(app): State<Arc<AppState>>) -> ApiResult {
    let engine = app.engine()?;
    let replicas = replicas(&app)?;
    let data_dir = app.config.data_dir.clone();
    let cipher = app.config.cipher.clone();
    let usage = blocking(move || key_usage(&engine, &replicas, &data_dir)).await?;
    Ok(Json(json!({"status": "success", "data": describe(&cipher, &usage)})).into_response())
}

pub(super) async fn rekey(State(app): State<Arc<AppState>>) -> ApiResult {
    // With encryption off there is nothing to do but flush: a node that
    // started without keys holds nothing sealed.
    let cipher = app.config.cipher.clone();
    let maintainer = app.maintainer()?;
    let engine = app.engine()?;
    let replicas = replicas(&app)?;
    let held = replicas.clone();
    let jobs = app.jobs.get().cloned();
    let state = app.clone();
    let data_dir = app.config.data_dir.clone();
    let data = blocking(move || {
        let rekey = |m: &toplog_compaction::Maintainer| {
            m.rekey().map_err(|e| match e {
                RekeyError::Engine(e) => ApiError::from(e),
                RekeyError::Fenced(why) => {
                    ApiError::new(StatusCode::CONFLICT, "archive_fenced", why)
                }
                RekeyError::Policy(why) => ApiError::internal(why),
            })
        };
        let mut store = rekey(&maintainer)?;
        for r in &held {
            let shard = rekey(&r.maintainer)?;
            store.segments += shard.segments;
            store.archived_segments += shard.archived_segments;
            store.cluster_objects_kept += shard.cluster_objects_kept;
            store.rollup_files += shard.rollup_files;
            store.key_files += shard.key_files;
        }
        let jobs = match jobs {
            Some(jobs) => jobs.reseal().map_err(ApiError::from)?,
            None => 0,
        };
        for keys in [state.auth.keys(), state.auth.cluster_keys()]
            .into_iter()
            .flatten()
        {
            keys.reseal()
                .map_err(|e| ApiError::internal(format!("{e:#}")))?;
        }
        if let Some(audit) = state.auth.audit() {
            audit
                .reseal()
                .map_err(|e| ApiError::internal(format!("{e:#}")))?;
        }
        if let Some(alerting) = state.alerting.get() {
            alerting
                .reseal()
                .map_err(|e| ApiError::internal(format!("{e:#}")))?;
        }
        let usage = key_usage(&engine, &held, &data_dir)?;
        Ok(json!({
            "rewritten": {
                "segments": store.segments,
                "archived_segments": store.archived_segments,
                "cluster_objects_kept": store.cluster_objects_kept,
                "rollup_files": store.rollup_files,
                "key_files": store.key_files,
                "jobs": jobs,
            },
            "encryption": describe(&cipher, &usage),
        }))
    })
    .await?;
    // A cluster member's Raft log and snapshots on offer hold what the
    // rekey did not rewrite: cut and removed (the rekey flushed the store).
    let groups =
        (app.cluster.get().cloned().into_iter()).chain(replicas.iter().map(|r| r.cluster.clone()));
    for cluster in groups {
        cluster.retire_sealed().await.map_err(|e| {
            ApiError::internal(format!("the Raft log was not cut after the rekey: {e}"))
        })?;
    }
    Ok(Json(json!({"status": "success", "data": data})).into_response())
}

fn describe(cipher: &Cipher, usage: &KeyUsage) -> Value {
    let mut by_key = BTreeMap::new();
    let mut plaintext = 0;
    for (used, n) in usage {
        match used {
            KeyUse::Plain => plaintext += n,
            KeyUse::Key(id) => {
                by_key.insert(id.clone(), *n);
            }
        }
    }
    let keys: Vec<&str> = cipher
        .keyring()
        .map(|k| k.ids().collect())
        .unwrap_or_default();
    let retirable: Vec<&str> = keys
        .iter()
        .copied()
        .filter(|id| Some(*id) != cipher.current_key().map(|(c, _)| c) && !by_key.contains_key(*id))
        .collect();
    json!({
        "enabled": cipher.is_on(),
        "current_key": cipher.current_key().map(|(id, _)| id),
        "keys": keys,
        "files_by_key": by_key,
        "plaintext_files": plaintext,
        "retirable_keys": retirable,
    })
}
