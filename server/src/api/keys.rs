//! API keys: made, listed (never with their secret) and revoked by an admin.

use std::sync::Arc;

use axum::Json;
use std::collections::HashMap;

use axum::extract::Query;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::{Value, json};
use toplog_types::{Arg, Param, Shape};

use super::params::{Params, QuerySpec};
use super::{ApiError, ApiResult, AppState};
use crate::auth::{KeyStore, Role};

const NAME: Param = Param {
    name: "name",
    shape: Shape::Text { min: 1, max: 64 },
    doc: "What the key is for, for people reading the list.",
};
const ROLE: Param = Param {
    name: "role",
    shape: Shape::Choice(&crate::auth::ROLE_NAMES),
    doc: "admin: everything; writer: ingest; viewer: every read; peer: a cluster node.",
};
const RATE_LIMIT: Param = Param {
    name: "rate_limit",
    shape: Shape::Rate,
    doc: "This key's own rate (e.g. 100/s; `none`: no limit) instead of its role's ([rate_limits]).",
};
const EXPIRES_AT: Param = Param {
    name: "expires_at",
    shape: Shape::Time,
    doc: "When the key stops working: RFC 3339 or epoch milliseconds; absent: never.",
};

fn store(app: &AppState) -> ApiResult<&KeyStore> {
    app.auth.keys().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "auth_off",
            "access control is off (`auth = \"off\"`): there are no keys".into(),
        )
    })
}

/// The JSON Schema of a new key's body, from the same declarations.
pub(crate) fn schema() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["name", "role"],
        "properties": {"name": NAME.field_schema(), "role": ROLE.field_schema(),
                       "expires_at": EXPIRES_AT.optional_field_schema(),
                       "rate_limit": RATE_LIMIT.optional_field_schema()},
    })
}

pub(super) async fn create_key(
    State(app): State<Arc<AppState>>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult {
    let Json(body) = body.map_err(ApiError::from_json_body)?;
    let Value::Object(obj) = &body else {
        return Err(ApiError::parameter("body", "expected a JSON object".into()));
    };
    if let Some(unknown) = obj
        .keys()
        .find(|k| ![NAME.name, ROLE.name, EXPIRES_AT.name, RATE_LIMIT.name].contains(&k.as_str()))
    {
        return Err(ApiError::parameter(
            unknown,
            "unknown field (known: name, role, expires_at, rate_limit)".into(),
        ));
    }
    let required = |p: &Param| {
        obj.get(p.name)
            .filter(|v| !v.is_null())
            .ok_or_else(|| ApiError::parameter(p.name, "is required".into()))
            .and_then(|v| Ok(p.parse_json(v)?))
    };
    let (Arg::Text(name), Arg::Choice(role)) = (required(&NAME)?, required(&ROLE)?) else {
        return Err(ApiError::internal(
            "a key's name or role was read as another shape".into(),
        ));
    };
    let role =
        Role::named(role).ok_or_else(|| ApiError::parameter(ROLE.name, "unknown role".into()))?;
    let expires_at = match obj.get(EXPIRES_AT.name).filter(|v| !v.is_null()) {
        None => None,
        Some(v) => match EXPIRES_AT.parse_json(v)? {
            Arg::Time(t) => Some(t),
            _ => {
                return Err(ApiError::parameter(
                    EXPIRES_AT.name,
                    "an RFC 3339 time".into(),
                ));
            }
        },
    };
    let rate_limit = match obj.get(RATE_LIMIT.name).filter(|v| !v.is_null()) {
        None => None,
        Some(v) => match RATE_LIMIT.parse_json(v)? {
            Arg::Text(t) => Some(t),
            _ => {
                return Err(ApiError::parameter(
                    RATE_LIMIT.name,
                    "a rate such as 100/s".into(),
                ));
            }
        },
    };
    let internal = |e: anyhow::Error| ApiError::internal(format!("{e:#}"));
    let (stored, key) = match (app.auth.cluster_keys(), app.cluster.get()) {
        // In a cluster, on every member, through the Raft log (the hash
        // only; the secret is shown here, once).
        (Some(_), Some(cluster)) => {
            let key = crate::auth::keys::new_key().map_err(internal)?;
            let stored = crate::auth::keys::stored_key(&key, &name, role, expires_at, rate_limit)
                .map_err(internal)?;
            let change = crate::cluster::KeyChange::Add(stored.clone());
            cluster
                .submit(&crate::cluster::Entry::Key(change))
                .await
                .map_err(|e| ApiError::unavailable(e.to_string()))?;
            (stored, key)
        }
        (Some(_), None) => return Err(recovering()),
        (None, _) => store(&app)?
            .create(&name, role, expires_at, rate_limit)
            .map_err(internal)?,
    };
    let mut data = stored.to_json(None);
    data["key"] = json!(key);
    Ok((
        StatusCode::CREATED,
        Json(json!({"status": "success", "data": data})),
    )
        .into_response())
}

/// `503` while a cluster member's Raft node starts.
fn recovering() -> ApiError {
    ApiError::unavailable("recovering: the Raft node starts once the store is open".into())
}

pub(super) async fn list_keys(State(app): State<Arc<AppState>>) -> ApiResult {
    let mut keys = store(&app)?.list();
    if let Some(shared) = app.auth.cluster_keys() {
        keys.extend(shared.list());
    }
    Ok(Json(json!({"status": "success", "data": keys})).into_response())
}

/// Revokes a key at once. The key making the call cannot revoke itself,
/// so an admin cannot lock every admin out by mistake.
pub(super) async fn revoke_key(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
) -> ApiResult {
    if crate::auth::key_id(&headers) == Some(id.as_str()) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "own_key",
            "a key cannot revoke itself: revoke it with another admin key".into(),
        ));
    }
    let own = store(&app)?;
    let revoked = match (app.auth.cluster_keys(), app.cluster.get()) {
        // A cluster's shared key: revoked on every member through the log.
        (Some(shared), Some(cluster)) if !own.contains(&id) && shared.contains(&id) => {
            let change = crate::cluster::KeyChange::Revoke(id.clone());
            cluster
                .submit(&crate::cluster::Entry::Key(change))
                .await
                .map_err(|e| ApiError::unavailable(e.to_string()))?;
            true
        }
        _ => own
            .revoke(&id)
            .map_err(|e| ApiError::internal(format!("{e:#}")))?,
    };
    match revoked {
        true => Ok(Json(json!({"status": "success", "revoked": id})).into_response()),
        false => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no key `{id}`"),
        )),
    }
}

/// `GET /api/v1/audit`.
pub(super) const AUDIT: QuerySpec = QuerySpec {
    params: &[Param {
        name: "limit",
        shape: Shape::Int {
            min: 1,
            max: 10_000,
        },
        doc: "Most entries, the latest (1000 by default).",
    }],
    required: &[],
};

pub(super) async fn audit(
    State(app): State<Arc<AppState>>,
    raw: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> ApiResult {
    let limit = Params::new(raw, AUDIT)?.small("limit")?.unwrap_or(1000);
    let entries = super::workers::blocking(move || {
        let log = app.auth.audit().ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "auth_off",
                "access control is off (`auth = \"off\"`): nothing is audited".into(),
            )
        })?;
        log.last(limit)
            .map_err(|e| ApiError::internal(format!("{e:#}")))
    })
    .await?;
    Ok(Json(json!({"status": "success", "data": entries})).into_response())
}
