//! Alert rules (`/api/v1/alerts/rules`) and the seed's alerts endpoint
//! (`/api/v1/requests/alerts`), over the node's alerting state
//! ([`crate::alerts`]). Changes go through the Raft log on a cluster.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::{Value, json};
use toplog_alerting::{Change, Rule, StoredRule};
use toplog_types::{Micros, Param, Shape};

use super::params::{Params, QuerySpec};
use super::workers::blocking;
use super::{ApiError, ApiResult, AppState};
use crate::alerts::{Alerting, ApplyError};

impl AppState {
    pub(super) fn alerting(&self) -> ApiResult<Arc<Alerting>> {
        self.engine()?;
        self.alerting
            .get()
            .cloned()
            .ok_or_else(|| ApiError::unavailable("recovering".into()))
    }

    /// Makes `change`: through the log on a cluster, here otherwise.
    pub(super) async fn alerting_change(&self, change: Change) -> ApiResult<()> {
        let alerting = self.alerting()?;
        if self.config.cluster.is_some() {
            // Checked here first, so a refusal is answered, not logged.
            alerting.state().apply(&change).map_err(refused)?;
            let cluster = self.cluster.get().cloned().ok_or_else(|| {
                ApiError::unavailable(
                    "recovering: the Raft node starts once the store is open".into(),
                )
            })?;
            cluster
                .submit(&crate::cluster::Entry::Alerting(change))
                .await
                .map_err(|e| ApiError::unavailable(e.to_string()))?;
            return Ok(());
        }
        blocking(move || alerting.apply(&change).map(drop).map_err(apply_error)).await
    }
}

pub(super) fn refused(e: toplog_alerting::StateError) -> ApiError {
    match e {
        toplog_alerting::StateError::Rule(r) => invalid_rule(r),
        toplog_alerting::StateError::NoRule(id) => not_found(&format!("no rule `{id}`")),
        toplog_alerting::StateError::NoChannel(id) => not_found(&format!("no channel `{id}`")),
        toplog_alerting::StateError::NoSilence(id) => not_found(&format!("no silence `{id}`")),
        e @ toplog_alerting::StateError::ChannelInUse { .. } => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "in_use", e.to_string())
        }
        toplog_alerting::StateError::NoAlert(id) => {
            not_found(&format!("no alert `{id}` is pending or firing"))
        }
        e @ toplog_alerting::StateError::TooMany { .. } => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "too_many", e.to_string())
        }
    }
}

fn apply_error(e: ApplyError) -> ApiError {
    match e {
        ApplyError::Refused(e) => refused(e),
        ApplyError::Store(e) => ApiError::internal(e),
    }
}

pub(super) fn not_found(message: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", message.to_owned())
}

/// A rule the checks refuse: `422`, naming the field (the document's
/// schema says the shapes; what it cannot say is checked here).
pub(super) fn invalid_rule(e: toplog_alerting::RuleError) -> ApiError {
    ApiError {
        field: Some(e.field.clone()),
        ..ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_rule",
            e.to_string(),
        )
    }
}

/// The rule in `body`, checked, and answerable from the rollups.
fn checked_rule(body: Result<Json<Value>, JsonRejection>) -> ApiResult<Value> {
    let Json(body) = body.map_err(ApiError::from_json_body)?;
    let rule = Rule::parse(&body).map_err(invalid_rule)?;
    rule.check_rollups().map_err(invalid_rule)?;
    Ok(rule.to_json())
}

fn rule_json(r: &StoredRule, judged_through: Option<Micros>) -> Value {
    json!({"id": r.id, "rule": r.rule, "created_at": r.created_at.to_rfc3339(),
           "updated_at": r.updated_at.to_rfc3339(),
           "judged_through": judged_through.map(Micros::to_rfc3339)})
}

pub(super) async fn list_rules(State(app): State<Arc<AppState>>) -> ApiResult {
    let state = app.alerting()?.state();
    let rules: Vec<Value> = (state.rules.values())
        .map(|r| rule_json(r, state.judged_through.get(&r.id).copied()))
        .collect();
    Ok(Json(json!({"status": "success", "data": rules})).into_response())
}

pub(super) async fn get_rule(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult {
    let state = app.alerting()?.state();
    let rule = state
        .rules
        .get(&id)
        .ok_or_else(|| not_found(&format!("no rule `{id}`")))?;
    let judged = state.judged_through.get(&id).copied();
    Ok(Json(json!({"status": "success", "data": rule_json(rule, judged)})).into_response())
}

pub(super) async fn create_rule(
    State(app): State<Arc<AppState>>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult {
    let rule = checked_rule(body)?;
    let now = crate::alerts::now();
    let stored = StoredRule {
        id: uuid::Uuid::now_v7().simple().to_string()[20..].to_owned(),
        rule,
        created_at: now,
        updated_at: now,
    };
    app.alerting_change(Change::PutRule(stored.clone())).await?;
    // On a cluster, another rule made at the same moment may have taken
    // the last place: the log refused this one everywhere.
    if !app.alerting()?.state().rules.contains_key(&stored.id) {
        return Err(refused(toplog_alerting::StateError::TooMany {
            what: "rules",
            max: toplog_alerting::state::MAX_RULES,
        }));
    }
    Ok((
        StatusCode::CREATED,
        Json(json!({"status": "success", "data": rule_json(&stored, None)})),
    )
        .into_response())
}

pub(super) async fn put_rule(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult {
    let rule = checked_rule(body)?;
    let created_at = (app.alerting()?.state().rules.get(&id))
        .map(|r| r.created_at)
        .ok_or_else(|| not_found(&format!("no rule `{id}`")))?;
    let stored = StoredRule {
        id,
        rule,
        created_at,
        updated_at: crate::alerts::now(),
    };
    app.alerting_change(Change::PutRule(stored.clone())).await?;
    Ok(Json(json!({"status": "success", "data": rule_json(&stored, None)})).into_response())
}

pub(super) async fn delete_rule(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult {
    app.alerting_change(Change::DeleteRule {
        id: id.clone(),
        at: crate::alerts::now(),
    })
    .await?;
    Ok(Json(json!({"status": "success", "deleted": id})).into_response())
}

/// `GET /api/v1/requests/alerts`.
pub(super) const ALERTS: QuerySpec = QuerySpec {
    params: &[Param {
        name: "severity",
        shape: Shape::Choice(&toplog_alerting::Severity::NAMES),
        doc: "Only alerts of this severity.",
    }],
    required: &[],
};

/// Alerts listed with example requests at most (each a small scan).
const EXAMPLES_FOR_ALERTS: usize = 100;
/// Example request ids per alert.
const EXAMPLE_REQUESTS: usize = 3;

/// The alerts pending or firing, in the seed's shape (`alert_id`,
/// `description`, `timestamp`) with the rest beside it.
pub(super) async fn list_alerts(
    State(app): State<Arc<AppState>>,
    raw: Result<
        axum::extract::Query<std::collections::HashMap<String, String>>,
        axum::extract::rejection::QueryRejection,
    >,
) -> ApiResult {
    let severity = Params::new(raw, ALERTS)?.choice("severity")?;
    let state = app.alerting()?.state();
    let mut alerts = Vec::new();
    for a in state.alerts.values() {
        let Some(rule) = state.rule(&a.rule_id) else {
            continue;
        };
        if severity.is_some_and(|s| s != rule.severity.name()) {
            continue;
        }
        let value = a.value.unwrap_or(f64::NAN);
        let threshold = a.threshold.unwrap_or(f64::NAN);
        let end = a.last_held;
        let start = end.saturating_sub_micros(i64::from(rule.window_minutes) * 60_000_000);
        let filters = rule.requests_filters(&a.key);
        // A few of the requests behind it (for the first alerts listed).
        let examples = if alerts.len() < EXAMPLES_FOR_ALERTS {
            let stores = app.stores(false, true, None).await?;
            let range = toplog_engine::TimeRange { start, end };
            let scanned = filters.clone();
            blocking(move || stores.scan(range, &scanned, None, EXAMPLE_REQUESTS))
                .await?
                .events
                .iter()
                .map(|e| e.request_id.clone())
                .collect()
        } else {
            Vec::new()
        };
        alerts.push(json!({
            "alert_id": a.fingerprint,
            "description": rule.describe(&a.key, value, threshold),
            "timestamp": a.started_at.unwrap_or(a.since).to_rfc3339(),
            "severity": rule.severity.name(),
            "state": a.state,
            "rule_id": a.rule_id,
            "rule": rule.name,
            "key": a.key,
            "value": a.value,
            "threshold": a.threshold,
            "started_at": a.started_at.map(Micros::to_rfc3339),
            "acknowledged": a.acked,
            "silenced": state.silenced(a, crate::alerts::now()),
            "labels": rule.labels,
            "requests": {"start": start.to_rfc3339(), "end": end.to_rfc3339(),
                         "filters": toplog_alerting::rule::filters_json(&filters), "example_request_ids": examples},
        }));
    }
    Ok(Json(json!({"status": "success", "alerts": alerts})).into_response())
}

pub(super) async fn ack_alert(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult {
    app.alerting_change(Change::Ack {
        fingerprint: id.clone(),
        at: crate::alerts::now(),
    })
    .await?;
    Ok(Json(json!({"status": "success", "acknowledged": id})).into_response())
}

/// Judges every rule as each minute closes, and sends what the outbox
/// holds, while this node leads (a single node always does); changes go
/// through the log on a cluster.
pub(crate) async fn evaluate_alerts(app: Arc<AppState>, alerting: Arc<Alerting>) {
    let leads = |app: Arc<AppState>| {
        move || match app.cluster.get() {
            Some(c) => c.status().role == "leader",
            None => app.config.cluster.is_none(),
        }
    };
    let decide = |app: Arc<AppState>, local: Arc<Alerting>| {
        move |change: Change| -> futures::future::BoxFuture<'static, Result<(), String>> {
            let (app, local) = (app.clone(), local.clone());
            app.metrics.alerting(&change);
            Box::pin(async move {
                match app.cluster.get() {
                    Some(c) => c
                        .submit(&crate::cluster::Entry::Alerting(change))
                        .await
                        .map(drop)
                        .map_err(|e| e.to_string()),
                    None => tokio::task::spawn_blocking(move || local.apply(&change))
                        .await
                        .map_err(|e| e.to_string())?
                        .map(drop)
                        .map_err(|e| e.to_string()),
                }
            })
        }
    };
    let grace = app.config.alert_grace;
    tokio::join!(
        crate::alerts::evaluate_every_minute(
            {
                let app = app.clone();
                move || -> futures::future::BoxFuture<'static, Result<super::stores::Stores, String>> {
                    let app = app.clone();
                    Box::pin(async move { app.stores(false, false, None).await.map_err(|e| e.message) })
                }
            },
            alerting.clone(),
            grace,
            leads(app.clone()),
            decide(app.clone(), alerting.clone()),
        ),
        crate::alerts::deliver_notifications(
            alerting.clone(),
            leads(app.clone()),
            decide(app.clone(), alerting.clone()),
        ),
    );
}

/// The largest `offset` into history.
const MAX_HISTORY_OFFSET: u64 = 100_000;

/// `GET /api/v1/alerts/history`.
pub(super) const HISTORY: QuerySpec = QuerySpec {
    params: &[
        Param {
            name: "start",
            shape: Shape::Time,
            doc: "Entries at or after this time (RFC 3339 or epoch milliseconds).",
        },
        Param {
            name: "end",
            shape: Shape::Time,
            doc: "Entries before this time.",
        },
        Param {
            name: "rule",
            shape: Shape::Text { min: 1, max: 64 },
            doc: "Only this rule's (its id).",
        },
        Param {
            name: "key",
            shape: Shape::Text { min: 1, max: 1024 },
            doc: "Only this key's (a transition's key, or a notification's alerts' keys).",
        },
        Param {
            name: "state",
            shape: Shape::Choice(&[
                "pending", "inactive", "firing", "resolved", "sent", "retrying", "failed", "error",
            ]),
            doc: "A transition's new state, or a delivery's outcome.",
        },
        Param {
            name: "kind",
            shape: Shape::Choice(&["transition", "notification", "test"]),
            doc: "Transitions, notification attempts, or channel tests.",
        },
        Param {
            name: "offset",
            shape: Shape::Int {
                min: 0,
                max: MAX_HISTORY_OFFSET,
            },
            doc: "Entries to skip, newest first (for the next page: the last offset plus the last limit).",
        },
        Param {
            name: "limit",
            shape: Shape::Int {
                min: 1,
                max: 10_000,
            },
            doc: "Most entries (1000 by default).",
        },
    ],
    required: &[],
};

/// Every transition, notification attempt and channel test, newest first,
/// filtered and paged.
pub(super) async fn history(
    State(app): State<Arc<AppState>>,
    raw: Result<
        axum::extract::Query<std::collections::HashMap<String, String>>,
        axum::extract::rejection::QueryRejection,
    >,
) -> ApiResult {
    let params = Params::new(raw, HISTORY)?;
    let limit = params.small("limit")?.unwrap_or(1000);
    let offset = params.small("offset")?.unwrap_or(0);
    let start = params.time("start")?;
    let end = params.time("end")?;
    let (rule, key) = (params.text("rule")?, params.text("key")?);
    let (state, kind) = (params.choice("state")?, params.choice("kind")?);
    let keep = move |line: &Value| {
        let at = line["at"].as_i64().unwrap_or(0);
        let has_key = |k: &str| {
            line["key"].as_str() == Some(k)
                || line["keys"]
                    .as_array()
                    .is_some_and(|ks| ks.iter().any(|x| x.as_str() == Some(k)))
        };
        start.is_none_or(|s| at >= s.get())
            && end.is_none_or(|e| at < e.get())
            && rule
                .as_deref()
                .is_none_or(|r| line["rule_id"].as_str() == Some(r))
            && key.as_deref().is_none_or(has_key)
            && kind.is_none_or(|k| line["kind"].as_str() == Some(k))
            && state.is_none_or(|s| {
                line["state"].as_str() == Some(s) && line["kind"] == "transition"
                    || line["outcome"].as_str() == Some(s)
            })
    };
    let alerting = app.alerting()?;
    let (entries, more) = blocking(move || {
        alerting
            .history(keep, offset, limit)
            .map_err(|e| ApiError::internal(format!("{e:#}")))
    })
    .await?;
    // A next page past the largest offset taken is not offered.
    let next = (more && offset + limit <= MAX_HISTORY_OFFSET as usize).then_some(offset + limit);
    Ok(Json(json!({"status": "success", "data": entries, "next_offset": next})).into_response())
}

/// The longest range a backtest runs over.
const BACKTEST_MAX_DAYS: i64 = 7;
/// Readings a backtest may keep at once (windows times series).
const BACKTEST_MAX_READINGS: i64 = 2_000_000;

/// `POST /api/v1/alerts/rules/backtest`: when a rule (learned or static)
/// would have fired over a past range, by the evaluator the live path uses.
pub(super) async fn backtest(
    State(app): State<Arc<AppState>>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult {
    let Json(body) = body.map_err(ApiError::from_json_body)?;
    let fields = body
        .as_object()
        .ok_or_else(|| ApiError::parameter("body", "expected a JSON object".into()))?;
    if let Some(k) = fields
        .keys()
        .find(|k| !["rule", "start", "end"].contains(&k.as_str()))
    {
        return Err(ApiError::parameter(
            k,
            "unknown field (known: rule, start, end)".into(),
        ));
    }
    let rule = Rule::parse(fields.get("rule").unwrap_or(&Value::Null)).map_err(|e| {
        invalid_rule(toplog_alerting::RuleError {
            field: format!("rule.{}", e.field),
            reason: e.reason,
        })
    })?;
    rule.check_rollups().map_err(invalid_rule)?;
    let conflicting = |field: &str, why: String| ApiError {
        field: Some(field.to_owned()),
        ..ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "conflicting_parameters",
            format!("`{field}`: {why}"),
        )
    };
    let time = |field: &str| -> ApiResult<Micros> {
        let text = match fields.get(field) {
            Some(Value::String(s)) => s.clone(),
            _ => {
                return Err(ApiError::parameter(
                    field,
                    "required: a string, RFC 3339 or epoch milliseconds".into(),
                ));
            }
        };
        Micros::parse(&text).map_err(|e| conflicting(field, e.to_string()))
    };
    let (start, end) = (time("start")?, time("end")?);
    let span = end.get() - start.get();
    if span <= 0 {
        return Err(conflicting("end", "must be after `start`".into()));
    }
    let too_large = |field: &str, why: String| ApiError {
        field: Some(field.to_owned()),
        ..ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "query_too_large",
            format!("`{field}`: {why}"),
        )
    };
    if span > BACKTEST_MAX_DAYS * 86_400_000_000 {
        return Err(too_large(
            "end",
            format!("a backtest covers at most {BACKTEST_MAX_DAYS} days"),
        ));
    }
    let history_minutes = match rule.threshold {
        toplog_alerting::Threshold::Static(_) => 0,
        toplog_alerting::Threshold::Learned(_) => {
            i64::from(toplog_alerting::baseline::HISTORY_DAYS) * 1440
        }
    };
    let series = if rule.by.is_some() {
        rule.max_series as i64
    } else {
        1
    };
    // Every minute's window of the range is kept, and of the history, the
    // windows its baselines read (one per window length, and neighbours).
    let windows = span / 60_000_000 + history_minutes / i64::from(rule.window_minutes) + 8;
    if windows * series > BACKTEST_MAX_READINGS {
        return Err(too_large(
            "rule.max_series",
            format!(
                "windows times series past {BACKTEST_MAX_READINGS}: fewer series or a shorter range"
            ),
        ));
    }
    let source = app.stores(false, false, None).await?;
    let firings = app
        .queries
        .run(move || {
            toplog_alerting::backtest(&rule, &source, start, end).map_err(ApiError::internal)
        })
        .await?;
    let firings: Vec<Value> = firings
        .iter()
        .map(|f| {
            json!({"key": f.key, "started_at": f.started_at.to_rfc3339(),
                   "resolved_at": f.resolved_at.map(Micros::to_rfc3339),
                   "value": f.value, "threshold": f.threshold})
        })
        .collect();
    Ok(Json(json!({"status": "success", "data": firings})).into_response())
}
