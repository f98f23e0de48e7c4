//! Notification channels (`/api/v1/alerts/channels`, with a test send),
//! silences (`/api/v1/alerts/silences`) and the outbox
//! (`/api/v1/alerts/notifications`). Changes go through the Raft log on a
//! cluster.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::{Value, json};
use toplog_alerting::{Change, Channel, Notification, RuleError, Silence};
use toplog_types::Micros;

use super::alerts::{invalid_rule, not_found};
use super::{ApiError, ApiResult, AppState};

/// A short random id.
fn new_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()[20..].to_owned()
}

pub(super) async fn list_channels(State(app): State<Arc<AppState>>) -> ApiResult {
    let state = app.alerting()?.state();
    let channels: Vec<Value> = state.channels.values().map(Channel::to_json).collect();
    Ok(Json(json!({"status": "success", "data": channels})).into_response())
}

pub(super) async fn get_channel(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult {
    let state = app.alerting()?.state();
    let channel =
        (state.channels.get(&id)).ok_or_else(|| not_found(&format!("no channel `{id}`")))?;
    Ok(Json(json!({"status": "success", "data": channel.to_json()})).into_response())
}

/// The channel `body` says, made at `at` (or a change of `old`); its URLs
/// must parse and name a host.
fn checked_channel(
    app: &AppState,
    id: &str,
    body: Result<Json<Value>, JsonRejection>,
    at: Micros,
    old: Option<&Channel>,
) -> ApiResult<Channel> {
    let Json(body) = body.map_err(ApiError::from_json_body)?;
    let channel = Channel::parse(id, &body, at, old).map_err(invalid_rule)?;
    let allowed = |field: &str, host: &str| match &app.config.alert_hosts {
        Some(hosts) if !hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) => {
            Err(invalid_rule(RuleError {
                field: field.into(),
                reason: format!(
                    "`{host}` is not one of the hosts alert channels may send to (alert_hosts)"
                ),
            }))
        }
        _ => Ok(()),
    };
    if let toplog_alerting::Delivery::Email(smtp) = &channel.delivery {
        allowed("host", &smtp.host)?;
    }
    for (field, url) in channel.urls() {
        let fault = |reason: String| {
            invalid_rule(RuleError {
                field: field.into(),
                reason,
            })
        };
        match reqwest::Url::parse(url) {
            Ok(u) if !u.username().is_empty() || u.password().is_some() => {
                return Err(fault(
                    "no user or password in the URL: it would be shown".into(),
                ));
            }
            Ok(u) if u.host_str().is_some_and(|h| !h.is_empty()) => {
                allowed(field, u.host_str().unwrap_or_default())?;
            }
            Ok(_) => return Err(fault("names no host".into())),
            Err(e) => return Err(fault(format!("not a URL: {e}"))),
        }
    }
    Ok(channel)
}

pub(super) async fn create_channel(
    State(app): State<Arc<AppState>>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult {
    let channel = checked_channel(&app, &new_id(), body, crate::alerts::now(), None)?;
    app.alerting_change(Change::PutChannel(channel.clone()))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"status": "success", "data": channel.to_json()})),
    )
        .into_response())
}

pub(super) async fn put_channel(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult {
    let state = app.alerting()?.state();
    let old = (state.channels.get(&id)).ok_or_else(|| not_found(&format!("no channel `{id}`")))?;
    let channel = checked_channel(&app, &id, body, crate::alerts::now(), Some(old))?;
    app.alerting_change(Change::PutChannel(channel.clone()))
        .await?;
    Ok(Json(json!({"status": "success", "data": channel.to_json()})).into_response())
}

pub(super) async fn delete_channel(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult {
    app.alerting_change(Change::DeleteChannel { id: id.clone() })
        .await?;
    Ok(Json(json!({"status": "success", "deleted": id})).into_response())
}

/// `POST /api/v1/alerts/channels/{id}/test`: sends a test notification
/// now, records the outcome on the channel and in history, and answers it.
pub(super) async fn test_channel(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult {
    let state = app.alerting()?.state();
    let channel = (state.channels.get(&id))
        .cloned()
        .ok_or_else(|| not_found(&format!("no channel `{id}`")))?;
    let at = crate::alerts::now();
    let test = Notification::test(&id, at);
    let sender = crate::alerts::Sender::new().map_err(|e| ApiError::internal(e.to_string()))?;
    let error = sender.send_within(&channel, &test).await.err();
    app.alerting_change(Change::Tested {
        channel_id: id.clone(),
        at,
        error: error.clone(),
    })
    .await?;
    Ok(Json(json!({"status": "success", "data": {
        "channel_id": id, "dedupe_id": test.id, "at": at.to_rfc3339(),
        "delivered": error.is_none(), "error": error}}))
    .into_response())
}

/// The outbox: notifications pending, and those sent or given up in the
/// last day, with their attempts.
pub(super) async fn notifications(State(app): State<Arc<AppState>>) -> ApiResult {
    let state = app.alerting()?.state();
    let all: Vec<Value> = (state.outbox.values())
        .map(|n| {
            let alerts: Vec<Value> = (n.alerts.iter())
                .map(|a| json!({"alert_id": a.fingerprint, "key": a.key}))
                .collect();
            json!({"dedupe_id": n.id, "channel_id": n.channel_id, "rule_id": n.rule_id,
                   "state": n.state, "repeat": n.repeat, "fallback_for": n.fallback_for,
                   "alerts": alerts, "at": n.at.to_rfc3339(), "status": n.status,
                   "attempts": n.attempts, "next_at": n.next_at.to_rfc3339(),
                   "last_error": n.last_error})
        })
        .collect();
    Ok(Json(json!({"status": "success", "data": all})).into_response())
}

pub(super) async fn list_silences(State(app): State<Arc<AppState>>) -> ApiResult {
    let state = app.alerting()?.state();
    let now = crate::alerts::now();
    let all: Vec<Value> = state.silences.values().map(|s| s.to_json(now)).collect();
    Ok(Json(json!({"status": "success", "data": all})).into_response())
}

/// Makes a silence; times are read on the clock rules are judged by.
pub(super) async fn create_silence(
    State(app): State<Arc<AppState>>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult {
    let Json(body) = body.map_err(ApiError::from_json_body)?;
    let now = crate::alerts::now();
    let silence = Silence::parse(&new_id(), &body, now).map_err(invalid_rule)?;
    app.alerting_change(Change::PutSilence(silence.clone()))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"status": "success", "data": silence.to_json(now)})),
    )
        .into_response())
}

pub(super) async fn delete_silence(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult {
    app.alerting_change(Change::DeleteSilence {
        id: id.clone(),
        at: crate::alerts::now(),
    })
    .await?;
    Ok(Json(json!({"status": "success", "deleted": id})).into_response())
}
