//! The OpenAPI 3 document, made from the route table: every query parameter it
//! documents comes from the lists the handlers validate against, so the two
//! cannot drift.

use crate::auth::Access;
use serde_json::{Map, Value, json};

use super::events::IDEMPOTENCY_KEY_PATTERN;
use super::routes::{Body, Route};

/// Events a documented batch holds at most: a bound for generated clients and
/// fuzzers, not the limit of the server (that is `max_body_bytes`).
const MAX_DOCUMENTED_BATCH: usize = 1000;

fn schemas() -> Value {
    // OpenAPI 3.0 wants `required` absent rather than empty.
    let obj = |props: Value, required: &[&str]| {
        let mut o = json!({"type": "object", "properties": props});
        if !required.is_empty() {
            o["required"] = json!(required);
        }
        o
    };
    let num = json!({"type": "number"});
    let int = json!({"type": "integer"});
    let string = json!({"type": "string"});
    let nullable_num = json!({"type": "number", "nullable": true});
    // Where a read was served (in a cluster), and in a sharded cluster each
    // shard's replica, what was left out and the keys a top-K exchanged.
    let read_point = json!({
        "node_id": {"type": "integer", "description": "In a cluster: the node that answered."},
        "applied_index": {"type": "integer", "description": "In a cluster of one group: the Raft log index the answer holds every write up to."},
        "shards": {"type": "array", "description": "In a sharded cluster: where each shard was read, at which index of its log.",
            "items": obj(json!({"shard": int, "node_id": int, "applied_index": int}), &["shard", "node_id", "applied_index"])},
        "partial": {"type": "boolean", "description": "With `allow_partial=true`: shards were left out (`missing_shards`)."},
        "missing_shards": {"type": "array", "items": obj(json!({"shard": int, "reason": string}), &["shard", "reason"])},
        "keys_exchanged": obj(json!({"sent": int, "asked": int}), &["sent", "asked"]),
    });
    let mut top_k_meta = json!({"exact": {"type": "boolean"}, "sources": {"type": "array", "items": string}, "took_ms": num, "unlisted_max_count": int, "retained_from": {"type": "string", "format": "date-time"}});
    if let (Some(m), Some(r)) = (top_k_meta.as_object_mut(), read_point.as_object()) {
        m.extend(r.clone());
    }
    let replica_here = obj(
        json!({"role": string, "term": int, "commit_index": int, "applied_index": int, "lag": int,
               "events": int, "segment_bytes": int, "maintenance_failing_in_a_row": int}),
        &["role"],
    );
    let shard_view = obj(
        json!({"shard": int, "slots": {"type": "array", "items": int}, "replicas": {"type": "array", "items": int},
               "leader_id": {"type": "integer", "nullable": true},
               "moving": {"type": "object", "nullable": true, "properties": {"from": int, "to": int}},
               "here": replica_here}),
        &["shard", "slots", "replicas"],
    );
    let mut schemas = json!({
        "Error": obj(json!({
            "status": {"type": "string", "enum": ["error"]},
            "error": obj(json!({"code": string, "message": string, "row": {"type": "integer", "minimum": 0}, "field": string}), &["code", "message"]),
        }), &["status", "error"]),
        "Event": obj(json!({
            "request_id": string, "timestamp": {"type": "string", "format": "date-time"}, "user_id": string,
            "endpoint": string, "method": string, "status_code": int, "latency_ms": num,
        }), &["request_id", "timestamp", "endpoint", "status_code", "latency_ms"]),
        "EventIn": toplog_types::Event::json_schema(),
        "TracesAck": obj(json!({"partialSuccess": obj(json!({"rejectedSpans": string, "errorMessage": string}), &[])}), &[]),
        "TracesIn": obj(json!({"resourceSpans": {"type": "array", "nullable": true, "items": {"type": "object"}}}), &[]),
        "Ack": obj(json!({"status": string, "accepted": int, "replayed": {"type": "boolean"},
            "leader_id": {"type": "integer", "description": "In a cluster: the node that led when the batch was written."},
            "index": {"type": "integer", "description": "In a cluster: the batch's Raft log index."},
            "shards": {"type": "array", "description": "In a sharded cluster: each shard's part of the batch, its index in the shard's log and the node that led the shard.",
                "items": obj(json!({"shard": int, "accepted": int, "index": int, "replayed": {"type": "boolean"},
                    "leader_id": {"type": "integer", "nullable": true}}), &["shard", "accepted", "index", "replayed"])}}), &["status", "accepted"]),
        "Events": obj(json!({
            "status": string, "data": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
            "next_cursor": {"type": "string", "nullable": true},
            "meta": obj(read_point.clone(), &[]),
        }), &["status", "data"]),
        "Count": obj(json!({"status": string, "count": int, "meta": obj(read_point.clone(), &[])}), &["status", "count"]),
        "TopK": obj(json!({
            "status": string,
            "data": {"type": "array", "items": obj(json!({
                "request_id": string, "metric_value": num, "count": int, "lower": num, "upper": num,
            }), &["request_id", "metric_value", "count"])},
            "meta": obj(top_k_meta, &["exact", "sources"]),
        }), &["status", "data", "meta"]),
        "History": obj(json!({
            "status": string,
            "data": {"type": "array", "items": obj(json!({
                "date": string, "total_requests": int, "average_latency": nullable_num,
                "error_rate": nullable_num, "p99_latency": nullable_num,
            }), &["date", "total_requests"])},
            "meta": obj(read_point.clone(), &[]),
        }), &["status", "data"]),
        "Timeseries": obj(json!({
            "status": string,
            "data": {"type": "array", "items": obj(json!({
                "key": {"type": "string", "nullable": true},
                "points": {"type": "array", "items": obj(json!({"time": string, "value": nullable_num, "count": int}), &["time", "count"])},
            }), &["points"])},
            "meta": obj(read_point.clone(), &[]),
        }), &["status", "data"]),
        "Aggregation": toplog_query::AggregationRequest::schema(),
        "RetentionChange": toplog_compaction::Policy::change_schema(),
        "Submitted": obj(json!({"status": string, "message": string, "aggregation_id": string}), &["status", "aggregation_id"]),
        "JobInfo": obj(json!({
            "aggregation_id": string,
            "state": {"type": "string", "enum": ["pending", "running", "done", "failed"]},
            "submitted_at": {"type": "string", "format": "date-time"},
            "finished_at": {"type": "string", "format": "date-time", "nullable": true},
            "request": {"type": "object"},
            "error": string,
            "result": {"type": "array", "items": {"type": "object"}},
        }), &["aggregation_id", "state", "submitted_at", "finished_at", "request"]),
        "Job": obj(json!({"status": string, "data": {"$ref": "#/components/schemas/JobInfo"}}), &["status", "data"]),
        "KeyIn": super::keys::schema(),
        "KeyInfo": obj(json!({"id": string, "prefix": string, "name": string, "role": string,
            "created_at": string, "expires_at": {"type": "string", "nullable": true},
            "last_used_at": {"type": "string", "nullable": true}, "key": string}), &["id", "name", "role"]),
        "KeyCreated": obj(json!({"status": string, "data": {"$ref": "#/components/schemas/KeyInfo"}}), &["status", "data"]),
        "Keys": obj(json!({"status": string, "data": {"type": "array", "items": {"$ref": "#/components/schemas/KeyInfo"}}}), &["status", "data"]),
        "Audit": obj(json!({"status": string, "data": {"type": "array", "items": obj(json!({
            "id": string, "time": string, "key_id": string, "from": {"type": "string", "nullable": true},
            "method": string, "path": string, "status": int,
            "local_only": {"type": "boolean", "description": "A cluster member kept this entry alone: the cluster's log did not take it (no quorum)."}}),
            &["time", "key_id", "method", "path", "status"])}}), &["status", "data"]),
        "KeyRevoked": obj(json!({"status": string, "revoked": string}), &["status", "revoked"]),
        "Jobs": obj(json!({"status": string, "data": {"type": "array", "items": {"$ref": "#/components/schemas/JobInfo"}}}), &["status", "data"]),
        "Health": obj(json!({"status": {"type": "string", "enum": ["ok", "ready", "not_ready"]}, "reason": string, "applied_lsn": int, "segments": int}), &["status"]),
        "RetentionPolicy": obj(json!({
            "raw": obj(json!({"local_for": string, "keep_for": string}), &[]),
            "rollups": obj(json!({"minute_keep_for": string, "hour_keep_for": string, "day_keep_for": string}), &[]),
        }), &[]),
        "Retention": obj(json!({"status": string, "data": {"$ref": "#/components/schemas/RetentionPolicy"}}), &["status", "data"]),
        "Storage": obj(json!({"status": string, "data": obj(json!({
            "partitions": {"type": "array", "items": {"type": "object"}},
            "segments": {"type": "array", "items": {"type": "object"}},
            "tiers": {"type": "object"}, "kept_from": {"type": "object"}, "archive": {"type": "object"},
            "memtable": {"type": "object"}, "retention": {"$ref": "#/components/schemas/RetentionPolicy"},
            "maintenance": {"type": "object"},
        }), &["partitions", "segments", "tiers"])}), &["status", "data"]),
        "Maintenance": obj(json!({"status": string, "data": obj(json!({
            "started_at": string, "took_ms": num,
            "purged_segments": {"type": "array", "items": {"type": "object"}},
            "purged_buckets": {"type": "object"},
            "compacted": {"type": "array", "items": {"type": "object"}},
            "archived": {"type": "array", "items": {"type": "object"}},
            "errors": {"type": "array", "items": string},
        }), &["compacted", "archived", "errors"])}), &["status", "data"]),
        "OpenApi": {"type": "object"},
    });
    let encryption = json!({
        "EncryptionState": obj(json!({
            "enabled": {"type": "boolean"}, "current_key": {"type": "string", "nullable": true},
            "keys": {"type": "array", "items": string},
            "files_by_key": {"type": "object", "additionalProperties": int},
            "plaintext_files": int,
            "retirable_keys": {"type": "array", "items": string},
        }), &["enabled", "current_key", "keys", "files_by_key", "plaintext_files", "retirable_keys"]),
        "LeaderIn": {"type": "object", "additionalProperties": false, "required": ["node_id"],
                     "properties": {"node_id": {"type": "integer", "minimum": 1, "description": "The member to lead."}}},
        "Leader": obj(json!({"status": string, "leader_id": int}), &["status", "leader_id"]),
        "MemberIn": {"type": "object", "additionalProperties": false, "required": ["node_id", "url"],
                     "properties": {"node_id": {"type": "integer", "minimum": 1, "description": "The new node's id."},
                                    "url": {"type": "string", "pattern": "^https?://", "maxLength": 2048, "description": "The URL the new node listens on."}}},
        "MemberAdded": obj(json!({"status": string, "data": obj(json!({"node_id": int, "role": string, "index": int, "note": string}), &["node_id", "role", "index"])}), &["status", "data"]),
        "MemberRemoved": obj(json!({"status": string, "data": obj(json!({"node_id": int, "index": int}), &["node_id", "index"])}), &["status", "data"]),
        "Cluster": obj(json!({"status": string, "data": obj(json!({
            "clustered": {"type": "boolean"}, "node_id": int,
            "leader_id": {"type": "integer", "nullable": true}, "term": int,
            "role": {"type": "string", "enum": ["leader", "candidate", "pre_candidate", "follower"]},
            "commit_index": int, "applied_index": int,
            "log_first_index": int, "receiving_snapshot": {"type": "integer", "nullable": true},
            "stopped": {"type": "string", "nullable": true},
            "shards": {"type": "array", "nullable": true, "description": "In a sharded cluster: each shard's slots, replicas, leader and move under way, and this node's replica when it holds one.",
                "items": shard_view},
            "members": {"type": "array", "items": obj(json!({"id": int, "url": {"type": "string", "nullable": true},
                "role": {"type": "string", "enum": ["voter", "learner", "leaving"]},
                "matched_index": int, "lag": int, "active": {"type": "boolean"},
                "last_contact_ms": {"type": "integer", "nullable": true}}), &["id", "role"])},
        }), &["clustered"])}), &["status", "data"]),
        "Encryption": obj(json!({"status": string, "data": {"$ref": "#/components/schemas/EncryptionState"}}), &["status", "data"]),
        "Rekey": obj(json!({"status": string, "data": obj(json!({
            "rewritten": obj(json!({"segments": int, "archived_segments": int, "cluster_objects_kept": int,
                    "rollup_files": int, "key_files": int, "jobs": int}),
                &["segments", "archived_segments", "cluster_objects_kept", "rollup_files", "key_files", "jobs"]),
            "encryption": {"$ref": "#/components/schemas/EncryptionState"},
        }), &["rewritten", "encryption"])}), &["status", "data"]),
    });
    let alerting = json!({
        "AlertRuleIn": toplog_alerting::Rule::schema(),
        "BacktestIn": {"type": "object", "additionalProperties": false, "required": ["rule", "start", "end"],
            "properties": {"rule": {"$ref": "#/components/schemas/AlertRuleIn"},
                "start": {"type": "string", "description": "RFC 3339 or epoch milliseconds."},
                "end": {"type": "string", "description": "RFC 3339 or epoch milliseconds; at most 7 days after `start`."}}},
        "Backtest": obj(json!({"status": string, "data": {"type": "array", "items": obj(json!({
            "key": string, "started_at": string, "resolved_at": {"type": "string", "nullable": true},
            "value": nullable_num, "threshold": nullable_num}), &["key", "started_at"])}}), &["status", "data"]),
        "AlertRule": obj(json!({"status": string, "data": {"$ref": "#/components/schemas/StoredAlertRule"}}), &["status", "data"]),
        "AlertRules": obj(json!({"status": string, "data": {"type": "array", "items": {"$ref": "#/components/schemas/StoredAlertRule"}}}), &["status", "data"]),
        "StoredAlertRule": obj(json!({"id": string, "rule": {"$ref": "#/components/schemas/AlertRuleIn"},
            "created_at": string, "updated_at": string,
            "judged_through": {"type": "string", "nullable": true, "description": "The last minute end its series were judged at."}}),
            &["id", "rule", "created_at", "updated_at"]),
        "AlertRuleDeleted": obj(json!({"status": string, "deleted": string}), &["status", "deleted"]),
        "AlertAcked": obj(json!({"status": string, "acknowledged": string}), &["status", "acknowledged"]),
        "Alerts": obj(json!({"status": string, "alerts": {"type": "array", "items": obj(json!({
            "alert_id": string, "description": string, "timestamp": string,
            "severity": {"type": "string", "enum": toplog_alerting::Severity::NAMES},
            "state": {"type": "string", "enum": ["pending", "firing"]},
            "rule_id": string, "rule": string, "key": string, "value": nullable_num, "threshold": nullable_num,
            "started_at": {"type": "string", "nullable": true}, "acknowledged": {"type": "boolean"},
            "silenced": {"type": "boolean", "description": "A silence keeps it from notifying."},
            "labels": {"type": "object", "additionalProperties": string},
            "requests": obj(json!({"start": string, "end": string, "filters": {"type": "object"},
                "example_request_ids": {"type": "array", "items": string, "description": "A few of the requests behind the alert."}}),
                &["start", "end", "filters", "example_request_ids"]),
        }), &["alert_id", "description", "timestamp", "severity", "state", "rule_id", "key"])}}), &["status", "alerts"]),
        "AlertHistory": obj(json!({"status": string, "data": {"type": "array", "items": obj(json!({
            "kind": {"type": "string", "enum": ["transition", "notification", "test"]},
            "at": {"type": "integer", "description": "Microseconds since the epoch."},
            "fingerprint": string, "rule_id": string, "key": string,
            "state": {"type": "string", "description": "A transition's new state (pending, inactive, firing, resolved), or the state a notification told of."},
            "value": num, "threshold": num,
            "silenced_by": {"type": "string", "description": "The silence that kept a transition from being notified."},
            "dedupe_id": string, "channel_id": string, "keys": {"type": "array", "items": string},
            "attempt": int, "outcome": {"type": "string", "enum": ["sent", "retrying", "failed", "error"]},
            "error": {"type": "string", "nullable": true},
        }), &["kind", "at"])}, "next_offset": {"type": "integer", "nullable": true,
            "description": "The offset of the next (older) page, if any."}}), &["status", "data"]),
    });
    let delivery = json!({
        "ChannelIn": toplog_alerting::Channel::schema(),
        "ChannelOut": obj(json!({"id": string, "name": string,
            "kind": {"type": "string", "enum": toplog_alerting::channel::KINDS},
            "secrets": {"type": "array", "items": string, "description": "The secrets set (never shown)."},
            "test_every": string, "give_up_after": string, "created_at": string,
            "last_test": obj(json!({"at": string, "ok": {"type": "boolean"}, "error": {"type": "string", "nullable": true}}), &["at", "ok"])}),
            &["id", "name", "kind", "secrets", "created_at"]),
        "AlertChannel": obj(json!({"status": string, "data": {"$ref": "#/components/schemas/ChannelOut"}}), &["status", "data"]),
        "AlertChannels": obj(json!({"status": string, "data": {"type": "array", "items": {"$ref": "#/components/schemas/ChannelOut"}}}), &["status", "data"]),
        "ChannelTest": obj(json!({"status": string, "data": obj(json!({"channel_id": string, "dedupe_id": string,
            "at": string, "delivered": {"type": "boolean"}, "error": {"type": "string", "nullable": true}}),
            &["channel_id", "dedupe_id", "at", "delivered"])}), &["status", "data"]),
        "AlertNotifications": obj(json!({"status": string, "data": {"type": "array", "items": obj(json!({
            "dedupe_id": string, "channel_id": string, "rule_id": string,
            "state": {"type": "string", "enum": ["firing", "resolved"]}, "repeat": {"type": "boolean"},
            "fallback_for": {"type": "string", "nullable": true},
            "alerts": {"type": "array", "items": obj(json!({"alert_id": string, "key": string}), &["alert_id", "key"])},
            "at": string, "status": {"type": "string", "enum": ["pending", "sent", "failed"]},
            "attempts": int, "next_at": string, "last_error": {"type": "string", "nullable": true}}),
            &["dedupe_id", "channel_id", "state", "alerts", "status", "attempts"])}}), &["status", "data"]),
        "SilenceIn": toplog_alerting::Silence::schema(),
        "SilenceOut": obj(json!({"id": string, "matchers": {"type": "array", "items": obj(json!({
                "name": string, "op": {"type": "string", "enum": ["=", "!=", "=~", "!~"]}, "value": string}), &["name", "op", "value"])},
            "starts_at": string, "ends_at": string, "comment": string, "created_at": string,
            "state": {"type": "string", "enum": ["pending", "active", "expired"]}}),
            &["id", "matchers", "starts_at", "ends_at", "state"]),
        "AlertSilence": obj(json!({"status": string, "data": {"$ref": "#/components/schemas/SilenceOut"}}), &["status", "data"]),
        "AlertSilences": obj(json!({"status": string, "data": {"type": "array", "items": {"$ref": "#/components/schemas/SilenceOut"}}}), &["status", "data"]),
    });
    let operations = json!({
        "Metrics": {"type": "string", "description": "The node's metrics as text: OpenMetrics to a client that asks for it, Prometheus's text format 0.0.4 otherwise (docs/operations.md lists them)."},
        "BackupIn": {"type": "object", "additionalProperties": false,
                     "properties": {"to": {"type": "string", "nullable": true, "description": "An s3://bucket/prefix URL (or `[backup] url`); absent: `[backup] url`."}}},
        "Backup": obj(json!({"status": string, "data": obj(json!({
            "id": string, "url": string, "index": int, "files": int, "bytes": int,
            "copied_files": int, "copied_bytes": int,
            "key_ids": {"type": "array", "items": string}, "took_ms": int,
        }), &["id", "url", "index", "files", "bytes", "copied_files", "copied_bytes", "key_ids", "took_ms"])}), &["status", "data"]),
    });
    for more in [encryption, alerting, delivery, operations] {
        if let (Value::Object(all), Value::Object(more)) = (&mut schemas, more) {
            all.extend(more);
        }
    }
    schemas
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "Success",
        202 => "Accepted: the job runs in the background",
        400 => "Bad input: the error names the row, field or parameter",
        404 => "Not found",
        413 => "Body too large",
        502 => "The backup location failed (unreachable, refused, or full): the error says how",
        415 => "Unsupported content type or encoding",
        422 => {
            "Each value is valid but together they ask what cannot be answered: a range that ends before it starts, or a question over the node's limits (`query_too_large`, naming the limit)"
        }
        503 => {
            "Busy (`overloaded`, with `Retry-After`), recovering, or not accepting writes: the error says which"
        }
        _ => "Other",
    }
}

/// The OpenAPI 3 document for `routes`.
pub(crate) fn document(routes: &[Route]) -> Value {
    let mut paths = Map::new();
    for route in routes {
        let mut params: Vec<Value> = route
            .query
            .params
            .iter()
            .map(|p| {
                json!({"name": p.name, "in": "query", "required": route.query.required.contains(&p.name),
                       "description": p.doc, "schema": p.schema()})
            })
            .collect();
        if route.path.contains("{id}") {
            let doc = if route.path.starts_with("/api/v1/keys") {
                "The key's id."
            } else if route.path.starts_with("/api/v1/alerts/rules") {
                "The rule's id."
            } else if route.path.starts_with("/api/v1/alerts/channels") {
                "The channel's id."
            } else if route.path.starts_with("/api/v1/alerts/silences") {
                "The silence's id."
            } else if route.path.starts_with("/api/v1/requests/alerts") {
                "The alert's id (`alert_id`)."
            } else {
                "The aggregation_id returned on submission."
            };
            params.push(
                json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string"},
                               "description": doc}),
            );
        }
        if route.body == Some(Body::Events) {
            params.push(json!({"name": "Idempotency-Key", "in": "header", "required": false,
                               "schema": {"type": "string", "pattern": IDEMPOTENCY_KEY_PATTERN},
                               "description": "A retried batch with the same key (kept 24 hours) is acknowledged without being applied twice."}));
        }
        // `/readyz` answers 503 with its own body, saying why it is not ready.
        let error_schema = if route.ok.1 == "Health" {
            "Health"
        } else {
            "Error"
        };
        let mut responses = Map::new();
        let mut ok = json!({"description": reason(route.ok.0), "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{}", route.ok.1)}}}});
        if route.ok.1 == super::routes::METRICS {
            let schema = json!({"$ref": "#/components/schemas/Metrics"});
            ok["content"] = json!({
                "application/openmetrics-text": {"schema": schema},
                "text/plain": {"schema": schema},
            });
        }
        if !route.links.is_empty() {
            let links: Map<String, Value> = route
                .links
                .iter()
                .map(|l| {
                    let params: Map<String, Value> = l
                        .parameters
                        .iter()
                        .map(|(name, expr)| ((*name).to_owned(), json!(expr)))
                        .collect();
                    let link = json!({"operationId": l.operation, "parameters": params, "description": l.description});
                    (l.name.to_owned(), link)
                })
                .collect();
            ok["links"] = Value::Object(links);
        }
        if route.body == Some(Body::Traces) {
            // OTLP/HTTP answers in the request's encoding.
            ok["content"]["application/x-protobuf"] =
                json!({"schema": {"type": "string", "format": "binary"}});
        }
        responses.insert(route.ok.0.to_string(), ok);
        for code in route.errors {
            let mut response = json!({"description": reason(*code), "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{error_schema}")}}}});
            if *code == 503 && error_schema == "Error" {
                response["headers"] = json!({"Retry-After": {
                    "description": "With `overloaded`: seconds after which to try again.",
                    "required": false,
                    "schema": {"type": "integer", "minimum": 1},
                }});
            }
            if route.body == Some(Body::Traces) {
                response["content"]["application/x-protobuf"] = json!({"schema": {"type": "string", "format": "binary",
                    "description": "A google.rpc.Status, for a protobuf request"}});
            }
            responses.insert(code.to_string(), response);
        }
        let (security, role) = match route.access {
            Access::Open => (json!([]), None),
            Access::Needs(role) => {
                for (code, why) in [
                    (401, "invalid_token or expired_token"),
                    (403, "insufficient_role"),
                ] {
                    responses.insert(code.to_string(), json!({"description": why,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}));
                }
                responses.insert("429".into(), json!({
                    "description": "rate_limited: over the key's rate, or too many failed logins from this address",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                    "headers": {
                        "Retry-After": {"description": "Seconds after which to try again.", "required": false,
                                        "schema": {"type": "integer", "minimum": 1}},
                        "RateLimit-Limit": {"description": "The key's bucket size.", "required": false, "schema": {"type": "integer"}},
                        "RateLimit-Remaining": {"description": "Tokens left.", "required": false, "schema": {"type": "integer"}},
                    },
                }));
                (json!([{"apiKey": []}]), Some(role.name()))
            }
        };
        let mut operation = json!({"operationId": route.id, "summary": route.summary,
                                   "parameters": params, "responses": responses, "security": security});
        if let Some(role) = role {
            // The role it needs, for people and for the access tests.
            operation["x-toplog-role"] = json!(role);
        }
        let body = |schema: &str| {
            json!({"required": true, "content": {
                "application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}},
            }})
        };
        match route.body {
            Some(Body::Events) => {
                let array = json!({"type": "array", "maxItems": MAX_DOCUMENTED_BATCH,
                                   "items": {"$ref": "#/components/schemas/EventIn"}});
                operation["requestBody"] = json!({"required": true, "content": {
                    "application/json": {"schema": {"oneOf": [array, {"type": "object", "additionalProperties": false,
                                                                      "properties": {"events": array}, "required": ["events"]}]}},
                    "application/x-ndjson": {"schema": array},
                }});
            }
            Some(Body::Traces) => {
                operation["requestBody"] = json!({"required": true, "content": {
                    "application/x-protobuf": {"schema": {"type": "string", "format": "binary"}},
                    "application/json": {"schema": {"$ref": "#/components/schemas/TracesIn"}},
                }});
            }
            Some(Body::Aggregation) => operation["requestBody"] = body("Aggregation"),
            Some(Body::Retention) => operation["requestBody"] = body("RetentionChange"),
            Some(Body::Key) => operation["requestBody"] = body("KeyIn"),
            Some(Body::Leader) => operation["requestBody"] = body("LeaderIn"),
            Some(Body::Member) => operation["requestBody"] = body("MemberIn"),
            Some(Body::AlertRule) => operation["requestBody"] = body("AlertRuleIn"),
            Some(Body::Backtest) => operation["requestBody"] = body("BacktestIn"),
            Some(Body::Channel) => operation["requestBody"] = body("ChannelIn"),
            Some(Body::Silence) => operation["requestBody"] = body("SilenceIn"),
            Some(Body::Backup) => operation["requestBody"] = body("BackupIn"),
            None => {}
        }
        let entry = paths
            .entry(route.path.to_owned())
            .or_insert_with(|| json!({}));
        entry[route.method] = operation;
    }
    json!({
        "openapi": "3.0.3",
        "info": {"title": "toplog", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Time-series store for HTTP request analytics. A request whose parameters or body do not match this document is refused with 400, naming the field; one that matches but cannot be answered is refused with 422. NDJSON bodies (application/x-ndjson) hold the same events, one JSON object per line."},
        "paths": paths,
        "components": {"schemas": schemas(), "securitySchemes": {"apiKey": {
            "type": "http", "scheme": "bearer",
            "description": "An API key (`tlk_...`) as `Authorization: Bearer <key>`; `<data_dir>/admin.key` holds the first one.",
        }}},
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::routes::ROUTES;

    #[test]
    fn every_route_is_unique_and_its_parameters_declared() {
        let mut seen = std::collections::HashSet::new();
        let mut ids = std::collections::HashSet::new();
        for route in &ROUTES {
            assert!(
                seen.insert((route.method, route.path)) && ids.insert(route.id),
                "{} {} ({}) listed twice",
                route.method,
                route.path,
                route.id
            );
            for link in route.links {
                assert!(
                    ROUTES.iter().any(|r| r.id == link.operation),
                    "{}: link {} leads to no operation",
                    route.id,
                    link.name
                );
            }
            for r in route.query.required {
                assert!(
                    route.query.params.iter().any(|p| p.name == *r),
                    "{} {}: required `{r}` is not a parameter",
                    route.method,
                    route.path
                );
            }
        }
        let doc = document(&ROUTES);
        let schemas = &doc["components"]["schemas"];
        for route in &ROUTES {
            assert!(
                schemas.get(route.ok.1).is_some(),
                "{} {}: no schema {}",
                route.method,
                route.path,
                route.ok.1
            );
        }
    }
}
