//! The route table: every route with its handler and what the OpenAPI
//! document says of it. Routes are registered from this table and documented
//! from it, so a route cannot be served undocumented or documented unserved.

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{MethodRouter, delete, get, post, put};

use super::params::QuerySpec;
use super::{
    AppState, aggregations, analytics, cluster, encryption, events, health, keys, storage, traces,
};
use crate::auth::{Access, Role};

/// What a route takes in its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Body {
    Events,
    /// An OTLP trace export, in protobuf or JSON.
    Traces,
    Aggregation,
    Retention,
    /// A new API key's name, role and expiry.
    Key,
    /// The member to hand leadership to.
    Leader,
    /// A node to add: its id and URL.
    Member,
}

/// A follow-up call the success response makes possible (an OpenAPI link):
/// clients and the fuzzer's stateful phase follow it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Link {
    pub(crate) name: &'static str,
    /// The `operationId` it leads to.
    pub(crate) operation: &'static str,
    /// Its parameters, each from a runtime expression on the response.
    pub(crate) parameters: &'static [(&'static str, &'static str)],
    pub(crate) description: &'static str,
}

/// One route: its handler and its documentation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Route {
    pub(crate) method: &'static str,
    pub(crate) path: &'static str,
    /// The OpenAPI `operationId`.
    pub(crate) id: &'static str,
    pub(crate) handler: fn() -> MethodRouter<Arc<AppState>>,
    pub(crate) summary: &'static str,
    /// Query parameters the handler accepts (its validation list).
    pub(crate) query: QuerySpec,
    pub(crate) body: Option<Body>,
    /// Success status and the component schema of its body.
    pub(crate) ok: (u16, &'static str),
    pub(crate) errors: &'static [u16],
    pub(crate) links: &'static [Link],
    /// Who may call it.
    pub(crate) access: Access,
}

/// Every route: registered from this table and documented from it.
pub(crate) const ROUTES: [Route; 27] = [
    Route {
        method: "get",
        path: "/healthz",
        id: "healthz",
        handler: || get(health::healthz),
        summary: "The process is alive.",
        query: QuerySpec::NONE,
        body: None,
        ok: (200, "Health"),
        errors: &[],
        links: &[],
        access: Access::Open,
    },
    Route {
        method: "get",
        path: "/readyz",
        id: "readyz",
        handler: || get(health::readyz),
        summary: "Recovered and accepting writes; 503 says why not.",
        query: QuerySpec::NONE,
        body: None,
        ok: (200, "Health"),
        errors: &[503],
        links: &[],
        access: Access::Open,
    },
    Route {
        method: "post",
        path: "/api/v1/requests",
        id: "ingest",
        handler: || post(events::ingest),
        summary: "Ingest a batch of request events; answered once durable.",
        query: QuerySpec::NONE,
        body: Some(Body::Events),
        ok: (200, "Ack"),
        errors: &[400, 413, 415, 422, 503],
        links: &[],
        access: Access::Needs(Role::Writer),
    },
    Route {
        method: "post",
        path: "/v1/traces",
        id: "exportTraces",
        handler: || post(traces::export),
        summary: "OpenTelemetry traces (OTLP/HTTP, protobuf or JSON): each SERVER span becomes an event; answered once durable.",
        query: QuerySpec::NONE,
        body: Some(Body::Traces),
        ok: (200, "TracesAck"),
        errors: &[400, 413, 415, 503],
        links: &[],
        access: Access::Needs(Role::Writer),
    },
    Route {
        method: "get",
        path: "/api/v1/requests",
        id: "listRequests",
        handler: || get(events::list_requests),
        summary: "Stored events in time order, a page at a time.",
        query: events::LIST,
        body: None,
        ok: (200, "Events"),
        errors: &[400, 422, 503],
        links: &[],
        access: Access::Needs(Role::Viewer),
    },
    Route {
        method: "get",
        path: "/api/v1/requests/count",
        id: "countRequests",
        handler: || get(events::count_requests),
        summary: "The exact number of stored events matching.",
        query: events::COUNT,
        body: None,
        ok: (200, "Count"),
        errors: &[400, 422, 503],
        links: &[],
        access: Access::Needs(Role::Viewer),
    },
    Route {
        method: "get",
        path: "/api/v1/requests/top-k",
        id: "topK",
        handler: || get(analytics::top_k),
        summary: "The top K keys (or requests) by a metric.",
        query: analytics::TOP_K,
        body: None,
        ok: (200, "TopK"),
        errors: &[400, 422, 503],
        links: &[],
        access: Access::Needs(Role::Viewer),
    },
    Route {
        method: "get",
        path: "/api/v1/requests/timeseries",
        id: "timeseries",
        handler: || get(analytics::timeseries),
        summary: "Points per interval, for dashboards.",
        query: analytics::TIMESERIES,
        body: None,
        ok: (200, "Timeseries"),
        errors: &[400, 422, 503],
        links: &[],
        access: Access::Needs(Role::Viewer),
    },
    Route {
        method: "get",
        path: "/api/v1/requests/history",
        id: "history",
        handler: || get(analytics::history),
        summary: "One row per UTC day.",
        query: analytics::HISTORY,
        body: None,
        ok: (200, "History"),
        errors: &[400, 422, 503],
        links: &[],
        access: Access::Needs(Role::Viewer),
    },
    Route {
        method: "post",
        path: "/api/v1/requests/aggregate",
        id: "submitAggregation",
        handler: || post(aggregations::submit_aggregation),
        summary: "Submit a background aggregation.",
        query: QuerySpec::NONE,
        body: Some(Body::Aggregation),
        ok: (202, "Submitted"),
        errors: &[400, 413, 415, 422, 503],
        links: &[Link {
            name: "GetAggregation",
            operation: "getAggregation",
            parameters: &[("id", "$response.body#/aggregation_id")],
            description: "The job just submitted, with its result once done.",
        }],
        access: Access::Needs(Role::Viewer),
    },
    Route {
        method: "get",
        path: "/api/v1/requests/aggregate",
        id: "listAggregations",
        handler: || get(aggregations::list_aggregations),
        summary: "Every aggregation job, without results.",
        query: QuerySpec::NONE,
        body: None,
        ok: (200, "Jobs"),
        errors: &[503],
        links: &[],
        access: Access::Needs(Role::Viewer),
    },
    Route {
        method: "get",
        path: "/api/v1/requests/aggregate/{id}",
        id: "getAggregation",
        handler: || get(aggregations::get_aggregation),
        summary: "One aggregation job with its result.",
        query: QuerySpec::NONE,
        body: None,
        ok: (200, "Job"),
        errors: &[404, 503],
        links: &[],
        access: Access::Needs(Role::Viewer),
    },
    Route {
        method: "get",
        path: "/api/v1/storage",
        id: "storage",
        handler: || get(storage::storage),
        summary: "Partitions, segments, tiers with sizes and oldest data, the archive's state.",
        query: QuerySpec::NONE,
        body: None,
        ok: (200, "Storage"),
        errors: &[503],
        links: &[],
        access: Access::Needs(Role::Viewer),
    },
    Route {
        method: "post",
        path: "/api/v1/admin/maintenance",
        id: "runMaintenance",
        handler: || post(storage::run_maintenance),
        summary: "Run maintenance now (purge, compaction, tiering); returns what it did.",
        query: QuerySpec::NONE,
        body: None,
        ok: (200, "Maintenance"),
        errors: &[503],
        links: &[],
        access: Access::Needs(Role::Admin),
    },
    Route {
        method: "get",
        path: "/api/v1/cluster",
        id: "cluster",
        handler: || get(cluster::cluster),
        summary: "The cluster as this node sees it: its id, the leader it knows, term, role, commit and applied index, and the members (`clustered: false` for a single node).",
        query: QuerySpec::NONE,
        body: None,
        ok: (200, "Cluster"),
        errors: &[],
        links: &[],
        access: Access::Needs(Role::Admin),
    },
    Route {
        method: "post",
        path: "/api/v1/cluster/leader",
        id: "transferLeadership",
        handler: || post(cluster::transfer_leadership),
        summary: "Hand leadership to another member (send it to the leader); answered once that member leads. 404 on a single node.",
        query: QuerySpec::NONE,
        body: Some(Body::Leader),
        ok: (200, "Leader"),
        errors: &[400, 404, 409, 413, 415, 503],
        links: &[],
        access: Access::Needs(Role::Admin),
    },
    Route {
        method: "post",
        path: "/api/v1/cluster/members",
        id: "addMember",
        handler: || post(cluster::add_member),
        summary: "Add a node to the cluster (send it to the leader): a learner at once, by joint consensus, and a voter once it has caught up. Start the node first with its own `--node-id` and `--cluster` naming members to find the cluster by.",
        query: QuerySpec::NONE,
        body: Some(Body::Member),
        ok: (200, "MemberAdded"),
        errors: &[400, 404, 409, 413, 415, 503],
        links: &[],
        access: Access::Needs(Role::Admin),
    },
    Route {
        method: "delete",
        path: "/api/v1/cluster/members/{id}",
        id: "removeMember",
        handler: || delete(cluster::remove_member),
        summary: "Remove a member (send it to the leader; a leader hands leadership over before it is removed), by joint consensus.",
        query: QuerySpec::NONE,
        body: None,
        ok: (200, "MemberRemoved"),
        errors: &[400, 404, 409, 503],
        links: &[],
        access: Access::Needs(Role::Admin),
    },
    Route {
        method: "get",
        path: "/api/v1/admin/encryption",
        id: "encryption",
        handler: || get(encryption::status),
        summary: "Encryption at rest: the current key, the keys listed, how many stored files are under each (and in plaintext), and which keys no file needs any more.",
        query: QuerySpec::NONE,
        body: None,
        ok: (200, "Encryption"),
        errors: &[503],
        links: &[],
        access: Access::Needs(Role::Admin),
    },
    Route {
        method: "post",
        path: "/api/v1/admin/rekey",
        id: "rekey",
        handler: || post(encryption::rekey),
        summary: "Write everything stored under an old key (or in plaintext) again under the current key, archive included, so an old key can leave the key file.",
        query: QuerySpec::NONE,
        body: None,
        ok: (200, "Rekey"),
        errors: &[409, 503],
        links: &[Link {
            name: "Encryption",
            operation: "encryption",
            parameters: &[],
            description: "Which keys the stored data is under now.",
        }],
        access: Access::Needs(Role::Admin),
    },
    Route {
        method: "get",
        path: "/api/v1/retention",
        id: "getRetention",
        handler: || get(storage::get_retention),
        summary: "The retention policy.",
        query: QuerySpec::NONE,
        body: None,
        ok: (200, "Retention"),
        errors: &[503],
        links: &[],
        access: Access::Needs(Role::Viewer),
    },
    Route {
        method: "put",
        path: "/api/v1/retention",
        id: "putRetention",
        handler: || put(storage::put_retention),
        summary: "Change any keys of the retention policy; persisted, obeyed at once.",
        query: QuerySpec::NONE,
        body: Some(Body::Retention),
        ok: (200, "Retention"),
        errors: &[400, 413, 415, 422, 503],
        links: &[Link {
            name: "GetRetention",
            operation: "getRetention",
            parameters: &[],
            description: "The policy now in force.",
        }],
        access: Access::Needs(Role::Admin),
    },
    Route {
        method: "get",
        path: "/api/v1/openapi.json",
        id: "openapi",
        handler: || get(health::openapi),
        summary: "This document.",
        query: QuerySpec::NONE,
        body: None,
        ok: (200, "OpenApi"),
        errors: &[],
        links: &[],
        access: Access::Needs(Role::Viewer),
    },
    Route {
        method: "post",
        path: "/api/v1/keys",
        id: "createKey",
        handler: || post(keys::create_key),
        summary: "Make an API key with a name, role and optional expiry; its secret is in this answer only.",
        query: QuerySpec::NONE,
        body: Some(Body::Key),
        ok: (201, "KeyCreated"),
        errors: &[400, 409, 413, 415],
        links: &[Link {
            name: "RevokeKey",
            operation: "revokeKey",
            parameters: &[("id", "$response.body#/data/id")],
            description: "Revoke the key just made.",
        }],
        access: Access::Needs(Role::Admin),
    },
    Route {
        method: "get",
        path: "/api/v1/keys",
        id: "listKeys",
        handler: || get(keys::list_keys),
        summary: "Every API key, without secrets: id, prefix, name, role, created, last used, expiry.",
        query: QuerySpec::NONE,
        body: None,
        ok: (200, "Keys"),
        errors: &[409],
        links: &[],
        access: Access::Needs(Role::Admin),
    },
    Route {
        method: "delete",
        path: "/api/v1/keys/{id}",
        id: "revokeKey",
        handler: || delete(keys::revoke_key),
        summary: "Revoke an API key; calls with it are refused at once.",
        query: QuerySpec::NONE,
        body: None,
        ok: (200, "KeyRevoked"),
        errors: &[404, 409],
        links: &[],
        access: Access::Needs(Role::Admin),
    },
    Route {
        method: "get",
        path: "/api/v1/audit",
        id: "audit",
        handler: || get(keys::audit),
        summary: "The last changes made through admin routes: who (key id), what, when, from where, with what answer.",
        query: keys::AUDIT,
        body: None,
        ok: (200, "Audit"),
        errors: &[400, 409],
        links: &[],
        access: Access::Needs(Role::Admin),
    },
];

pub(crate) fn router(state: Arc<AppState>) -> Router {
    let body_limit = state.config.max_body_bytes;
    let _ = state.openapi.set(super::openapi::document(&ROUTES));
    ROUTES
        .iter()
        .fold(Router::new(), |r, route| {
            let guard = axum::middleware::from_fn_with_state(
                (state.auth.clone(), route.access),
                crate::auth::rest,
            );
            r.route(route.path, (route.handler)().route_layer(guard))
        })
        .fallback(health::not_found)
        .method_not_allowed_fallback(health::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}
