//! Who may do what. Every route and RPC names the role it needs (REST in
//! the route table, gRPC in [`RPCS`]); a caller shows an API key as
//! `Authorization: Bearer tlk_...` (gRPC: the same metadata). Only
//! `/healthz`, `/readyz` and the gRPC health service are open. A refusal is
//! `401` (`invalid_token`, `expired_token`: who are you?) or `403`
//! (`insufficient_role`), and says nothing more.

pub(crate) mod audit;
pub(crate) mod jwt;
pub(crate) mod keys;
pub(crate) mod limits;

use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::api::ApiError;
pub(crate) use jwt::JwtSettings;
pub(crate) use keys::{KeyStore, StoredKey};
use limits::{Left, RateLimits};
pub(crate) use limits::{Limited, RateSettings};

/// What a principal may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Role {
    /// Everything but the peers' own service.
    Admin,
    /// Ingest: REST, gRPC and OTLP.
    Writer,
    /// Every read.
    Viewer,
    /// A cluster node: the only principal allowed on the Raft service.
    Peer,
}

/// The roles' names, in the order of [`Role::ALL`].
pub(crate) const ROLE_NAMES: [&str; 4] = ["admin", "writer", "viewer", "peer"];

impl Role {
    pub(crate) const ALL: [Role; 4] = [Role::Admin, Role::Writer, Role::Viewer, Role::Peer];

    pub(crate) fn name(self) -> &'static str {
        ROLE_NAMES[self as usize]
    }

    pub(crate) fn named(name: &str) -> Option<Role> {
        Self::ALL.into_iter().find(|r| r.name() == name)
    }

    /// Whether this role may call what `needed` is asked for.
    pub(crate) fn may(self, needed: Role) -> bool {
        self == needed || (self == Role::Admin && needed != Role::Peer)
    }
}

/// What a route or RPC asks of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Anyone (health checks).
    Open,
    Needs(Role),
}

/// Why a caller is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthError {
    /// No credentials, or ones the node does not know.
    InvalidToken,
    ExpiredToken,
    InsufficientRole,
}

impl AuthError {
    fn code(self) -> &'static str {
        match self {
            AuthError::InvalidToken => "invalid_token",
            AuthError::ExpiredToken => "expired_token",
            AuthError::InsufficientRole => "insufficient_role",
        }
    }

    fn api_error(self) -> Response {
        let status = match self {
            AuthError::InsufficientRole => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        };
        let message = match self {
            AuthError::InvalidToken => "send a valid API key: `Authorization: Bearer tlk_...`",
            AuthError::ExpiredToken => "the API key has expired",
            AuthError::InsufficientRole => "the API key's role may not do this",
        };
        let mut response = ApiError::new(status, self.code(), message.into()).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }

    fn grpc_status(self) -> tonic::Status {
        match self {
            AuthError::InsufficientRole => tonic::Status::permission_denied(self.code()),
            _ => tonic::Status::unauthenticated(self.code()),
        }
    }
}

/// Who made a call: their key's id and own rate, if any (a request
/// extension, for the handlers that spend per event).
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub(crate) id: String,
    pub(crate) rate: Option<String>,
}

/// The address a connection comes from (a request extension).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientAddr(pub(crate) std::net::SocketAddr);

/// A connection's verified client certificate that the `[tls]`
/// `client_roles` map gives a role (a request extension).
#[derive(Debug, Clone)]
pub(crate) struct ClientCert {
    /// The certificate's name the map lists.
    pub(crate) name: String,
    pub(crate) role: Role,
}

/// Why a call is refused.
enum Refusal {
    Auth(AuthError),
    Limited(Limited),
}

/// The node's access control: its keys and rate limits, or none when
/// `auth = "off"`.
#[derive(Debug)]
pub(crate) struct Auth {
    keys: Option<KeyStore>,
    /// Bearer JWTs from an identity provider, when `[jwt]` is set.
    jwt: Option<jwt::Jwt>,
    limits: Option<RateLimits>,
    audit: Option<audit::AuditLog>,
    /// The secret a cluster's nodes present to each other: the `peer` role.
    cluster_secret: Option<String>,
    /// In a cluster, the keys made through the API, the same on every
    /// member (they come through the Raft log); `keys` then holds this
    /// node's own first admin key.
    cluster_keys: Option<KeyStore>,
    /// In a cluster, where audit entries go: through the Raft log, to every
    /// member's audit log (set once the Raft node runs).
    audit_sink: std::sync::OnceLock<AuditSink>,
}

/// Writes an audit entry through a cluster's log; an error if it could not.
pub(crate) struct AuditSink(
    pub(crate)  Box<
        dyn Fn(serde_json::Value) -> futures::future::BoxFuture<'static, Result<(), String>>
            + Send
            + Sync,
    >,
);

impl std::fmt::Debug for AuditSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditSink")
    }
}

impl Auth {
    /// Access control off: every call is allowed (loopback only; see config).
    pub(crate) fn off() -> Self {
        Self {
            keys: None,
            jwt: None,
            limits: None,
            audit: None,
            cluster_secret: None,
            cluster_keys: None,
            audit_sink: std::sync::OnceLock::new(),
        }
    }

    /// The keys in `data_dir`. With none yet, an admin key is made: the one
    /// given (`TOPLOG_ADMIN_KEY`, for provisioning), else a new one written
    /// to `<data_dir>/admin.key` (mode 0600) and logged where it is, once.
    pub(crate) fn open(
        data_dir: &Path,
        given: Option<&str>,
        rates: &RateSettings,
        jwt: &JwtSettings,
        cipher: &toplog_crypt::Cipher,
        cluster_secret: Option<&str>,
        clustered: bool,
    ) -> anyhow::Result<Self> {
        let limits = RateLimits::new(rates)?;
        let jwt = jwt::Jwt::new(jwt)?;
        let keys = KeyStore::open(data_dir, cipher)?;
        if keys.is_empty() {
            match given {
                Some(key) => {
                    keys.add(key, "admin", Role::Admin, None, None)
                        .map_err(|e| anyhow::anyhow!("TOPLOG_ADMIN_KEY: {e}"))?;
                    tracing::info!("the admin key is the one given in TOPLOG_ADMIN_KEY");
                }
                None => {
                    // The file first: a start that stops before storing the
                    // key leaves a file the next start takes, never a stored
                    // key nobody holds.
                    let path = data_dir.join("admin.key");
                    let key = match std::fs::read_to_string(&path) {
                        Ok(left) if keys::id_of(left.trim()).is_some() => left.trim().to_owned(),
                        _ => {
                            let key = keys::new_key()?;
                            crate::lock::write_private(&path, format!("{key}\n").as_bytes())?;
                            key
                        }
                    };
                    keys.add(&key, "admin", Role::Admin, None, None)?;
                    tracing::info!(path = %path.display(), "made an admin API key; it is in this file (mode 0600), and nowhere else");
                }
            }
        }
        Ok(Self {
            keys: Some(keys),
            jwt,
            limits: Some(limits),
            audit: Some(audit::AuditLog::open(data_dir, cipher)?),
            cluster_secret: cluster_secret.map(str::to_owned),
            cluster_keys: clustered
                .then(|| KeyStore::open_file(&data_dir.join("cluster-keys.json"), cipher))
                .transpose()?,
            audit_sink: std::sync::OnceLock::new(),
        })
    }

    /// Sends audit entries through a cluster's log from now on.
    pub(crate) fn set_audit_sink(&self, sink: AuditSink) {
        let _ = self.audit_sink.set(sink);
    }

    pub(crate) fn keys(&self) -> Option<&KeyStore> {
        self.keys.as_ref()
    }

    /// A cluster's shared keys (see the field).
    pub(crate) fn cluster_keys(&self) -> Option<&KeyStore> {
        self.cluster_keys.as_ref()
    }

    pub(crate) fn audit(&self) -> Option<&audit::AuditLog> {
        self.audit.as_ref()
    }

    /// Whether the caller of a request with `headers` and `extensions` (its
    /// key or token, else its client certificate's role) may do what
    /// `access` asks; a call not counted in events by its handler takes a
    /// token from the caller's bucket. An address that failed too often is
    /// refused whatever it shows.
    async fn admit(
        &self,
        headers: &HeaderMap,
        extensions: &axum::http::Extensions,
        access: Access,
    ) -> Result<(Option<Caller>, Option<Left>), Refusal> {
        let ip = client_ip(extensions);
        let cert = extensions.get::<ClientCert>();
        let spend = counted_per_call(access);
        let (Some(keys), Access::Needs(needed)) = (&self.keys, access) else {
            return Ok((None, None));
        };
        if let (Some(limits), Some(ip)) = (&self.limits, ip)
            && let Some(limited) = limits.blocked(ip)
        {
            return Err(Refusal::Limited(limited));
        }
        let token = bearer(headers);
        // An API key, or else a JWT when an identity provider is set; with
        // neither, a client certificate with a role.
        let is_cluster_secret = |t: &str| {
            self.cluster_secret.as_deref().is_some_and(|s| {
                aws_lc_rs::constant_time::verify_slices_are_equal(s.as_bytes(), t.as_bytes())
                    .is_ok()
            })
        };
        let verified = match (token, &self.jwt) {
            (Some(t), _) if is_cluster_secret(t) => {
                Ok(("peer:cluster-secret".to_owned(), vec![Role::Peer], None))
            }
            (None, _) => match cert {
                Some(c) => Ok((format!("cert:{}", c.name), vec![c.role], None)),
                None => Err(AuthError::InvalidToken),
            },
            (Some(t), _) if t.starts_with(keys::PREFIX) => (match &self.cluster_keys {
                // A cluster's shared keys, unless this node's own has the id.
                Some(shared) if !keys.contains(keys::id_of(t).unwrap_or_default()) => {
                    shared.verify(t)
                }
                _ => keys.verify(t),
            })
            .map(|(role, rate)| {
                (
                    keys::id_of(t).unwrap_or_default().to_owned(),
                    vec![role],
                    rate,
                )
            }),
            (Some(t), Some(jwt)) => jwt
                .verify(t)
                .await
                .map(|(subject, roles)| (format!("jwt:{subject}"), roles, None)),
            (Some(_), None) => Err(AuthError::InvalidToken),
        };
        let (id, roles, rate) = match verified {
            Ok(v) => v,
            Err(e) => {
                if let (Some(limits), Some(ip)) = (&self.limits, ip)
                    && let Some(limited) = limits.failed(ip)
                {
                    return Err(Refusal::Limited(limited));
                }
                return Err(Refusal::Auth(e));
            }
        };
        let Some(role) = roles.into_iter().find(|r| r.may(needed)) else {
            return Err(Refusal::Auth(AuthError::InsufficientRole));
        };
        let caller = Caller { id, rate };
        let left = match (&self.limits, spend) {
            (Some(limits), true) => limits
                .spend(&caller.id, role, caller.rate.as_deref(), 1)
                .map_err(Refusal::Limited)?,
            _ => None,
        };
        Ok((Some(caller), left))
    }

    /// Spends `events` tokens of the caller's ingest bucket (the writer
    /// rate, whatever the key's role).
    pub(crate) fn spend_events(
        &self,
        caller: Option<&Caller>,
        events: usize,
    ) -> Result<(), Limited> {
        match (&self.limits, caller) {
            (Some(limits), Some(c)) => limits
                .spend(
                    &c.id,
                    Role::Writer,
                    c.rate.as_deref(),
                    u32::try_from(events).unwrap_or(u32::MAX),
                )
                .map(drop),
            _ => Ok(()),
        }
    }
}

/// The address a request came from, as the server loop recorded it.
fn client_ip(extensions: &axum::http::Extensions) -> Option<std::net::IpAddr> {
    extensions.get::<ClientAddr>().map(|a| a.0.ip())
}

/// Ingest (the routes and RPCs that need the writer role) is counted in
/// events by its handler; every other call is counted here, as one.
fn counted_per_call(access: Access) -> bool {
    access != Access::Needs(Role::Writer)
}

/// `429 rate_limited` with `Retry-After` and `RateLimit-*` headers.
pub(crate) fn too_many(limited: Limited) -> ApiError {
    let mut e = match limited.retry_after {
        Some(wait) => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "over this key's rate ({} at once); try again later",
                limited.limit
            ),
        )
        .with_retry_after(wait.as_secs_f64().ceil().max(1.0) as u64),
        None => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "more events at once than this key's rate ever allows ({}): send smaller batches",
                limited.limit
            ),
        ),
    };
    e.rate_limit = Some((limited.limit, 0));
    e
}

fn with_left(mut response: Response, left: Option<Left>) -> Response {
    if let Some(left) = left {
        let headers = response.headers_mut();
        headers.insert("ratelimit-limit", left.limit.into());
        headers.insert("ratelimit-remaining", left.remaining.into());
    }
    response
}

/// The token of `Authorization: Bearer <token>`.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
}

/// The id of the API key a request shows, if it shows one.
pub(crate) fn key_id(headers: &HeaderMap) -> Option<&str> {
    keys::id_of(bearer(headers)?)
}

/// A REST route's check, before its handler.
pub(crate) async fn rest(
    State((auth, access)): State<(Arc<Auth>, Access)>,
    mut request: Request,
    next: Next,
) -> Response {
    let ip = client_ip(request.extensions());
    match auth
        .admit(request.headers(), request.extensions(), access)
        .await
    {
        Ok((caller, left)) => {
            // Admin routes that may change something are audited.
            let audited = (access == Access::Needs(Role::Admin)
                && request.method() != axum::http::Method::GET)
                .then(|| {
                    (
                        request.method().to_string(),
                        request.uri().path().to_owned(),
                    )
                });
            let key_id = caller.as_ref().map(|c| c.id.clone());
            if let Some(caller) = caller {
                request.extensions_mut().insert(caller);
            }
            let response = next.run(request).await;
            if let (Some((method, path)), Some(log)) = (audited, auth.audit()) {
                let line = audit::line(&audit::Entry {
                    key_id: key_id.as_deref().unwrap_or(""),
                    from: ip,
                    method: &method,
                    path: &path,
                    status: response.status().as_u16(),
                });
                // In a cluster, on every member through the log; here alone
                // if the log cannot take it (no quorum), so it is not lost.
                match auth.audit_sink.get() {
                    Some(sink) => {
                        if let Err(e) = (sink.0)(line.clone()).await {
                            tracing::warn!(error = %e, "an audit entry kept on this node only");
                            log.append_local_only(&line);
                        }
                    }
                    None => log.append(&line),
                }
            }
            with_left(response, left)
        }
        Err(Refusal::Auth(e)) => e.api_error(),
        Err(Refusal::Limited(l)) => too_many(l).into_response(),
    }
}

/// Every gRPC method served, and what it needs. A method not listed is
/// refused (`PERMISSION_DENIED`), so a new RPC cannot be served unguarded.
pub(crate) const RPCS: [(&str, Access); 18] = [
    ("/toplog.v1.Toplog/Ingest", Access::Needs(Role::Writer)),
    (
        "/toplog.v1.Toplog/IngestStream",
        Access::Needs(Role::Writer),
    ),
    ("/toplog.v1.Toplog/TopK", Access::Needs(Role::Viewer)),
    ("/toplog.v1.Toplog/Timeseries", Access::Needs(Role::Viewer)),
    ("/toplog.v1.Toplog/History", Access::Needs(Role::Viewer)),
    ("/toplog.v1.Toplog/Count", Access::Needs(Role::Viewer)),
    (
        "/toplog.v1.Toplog/ListRequests",
        Access::Needs(Role::Viewer),
    ),
    (
        "/toplog.v1.Toplog/SubmitAggregation",
        Access::Needs(Role::Viewer),
    ),
    (
        "/toplog.v1.Toplog/GetAggregation",
        Access::Needs(Role::Viewer),
    ),
    (
        "/toplog.v1.Toplog/ListAggregations",
        Access::Needs(Role::Viewer),
    ),
    (
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
        Access::Needs(Role::Writer),
    ),
    ("/toplog.raft.v1.Raft/Send", Access::Needs(Role::Peer)),
    ("/toplog.raft.v1.Raft/Propose", Access::Needs(Role::Peer)),
    (
        "/toplog.raft.v1.Raft/FetchSnapshot",
        Access::Needs(Role::Peer),
    ),
    ("/toplog.raft.v1.Raft/ReadShard", Access::Needs(Role::Peer)),
    ("/grpc.health.v1.Health/Check", Access::Open),
    ("/grpc.health.v1.Health/Watch", Access::Open),
    (
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        Access::Needs(Role::Viewer),
    ),
];

/// The gRPC services' check, by method path.
pub(crate) async fn grpc(
    State(auth): State<Arc<Auth>>,
    mut request: Request,
    next: Next,
) -> Response {
    let access = RPCS
        .iter()
        .find(|(path, _)| *path == request.uri().path())
        .map(|(_, access)| *access);
    let Some(access) = access else {
        return AuthError::InsufficientRole
            .grpc_status()
            .into_http::<axum::body::Body>();
    };
    match auth
        .admit(request.headers(), request.extensions(), access)
        .await
    {
        Ok((caller, left)) => {
            if let Some(caller) = caller {
                request.extensions_mut().insert(caller);
            }
            with_left(next.run(request).await, left)
        }
        Err(Refusal::Auth(e)) => e.grpc_status().into_http::<axum::body::Body>(),
        Err(Refusal::Limited(l)) => {
            tonic::Status::resource_exhausted(too_many(l).message).into_http::<axum::body::Body>()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_may_all_but_the_peers_service_and_the_others_their_own() {
        for role in Role::ALL {
            for needed in Role::ALL {
                let want = role == needed || (role == Role::Admin && needed != Role::Peer);
                assert_eq!(role.may(needed), want, "{role:?} for {needed:?}");
            }
            assert_eq!(Role::named(role.name()), Some(role));
            assert_eq!(serde_json::to_value(role).unwrap_or_default(), role.name());
        }
    }
}
