//! The route table and the OpenAPI 3 document made from it. Every route is
//! registered from this table, and every query parameter it documents comes
//! from the lists the handlers validate against, so the two cannot drift.

use serde_json::{Map, Value, json};

/// What a route takes in its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Body {
    Events,
    Aggregation,
    Retention,
}

/// One documented operation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Operation {
    pub(crate) method: &'static str,
    pub(crate) path: &'static str,
    pub(crate) summary: &'static str,
    /// Query parameters the handler accepts (its validation list).
    pub(crate) query: &'static [&'static str],
    pub(crate) required: &'static [&'static str],
    pub(crate) body: Option<Body>,
    /// Success status and the component schema of its body.
    pub(crate) ok: (u16, &'static str),
    pub(crate) errors: &'static [u16],
}

/// Type and description of a query parameter, by name.
pub(crate) fn describe(name: &str) -> Option<(&'static str, &'static str)> {
    Some(match name {
        "start" => (
            "string",
            "Range start, inclusive: RFC 3339 or epoch milliseconds.",
        ),
        "end" => (
            "string",
            "Range end, exclusive: RFC 3339 or epoch milliseconds.",
        ),
        "endpoint" => ("string", "Only requests to this route template."),
        "user_id" => ("string", "Only requests of this user."),
        "method" => ("string", "Only requests with this HTTP method."),
        "status_code" => (
            "integer",
            "Only requests with this status code (100 to 599).",
        ),
        "status_class" => (
            "integer",
            "Only requests of this status class: 1 to 5 for 1xx to 5xx.",
        ),
        "request_id" => ("string", "Only the request with this id."),
        "limit" => ("integer", "Most rows (or series) to return."),
        "cursor" => ("string", "`next_cursor` of the previous page."),
        "k" => ("integer", "How many rows to return, 1 to 10000."),
        "metric" => (
            "string",
            "frequency, errors, error_rate, latency_avg, latency_p50, latency_p90, latency_p95, latency_p99 or latency_max.",
        ),
        "by" => (
            "string",
            "Grouping: endpoint, user_id, status_code, method (top-k also: request).",
        ),
        "min_count" => ("integer", "Leave out groups with fewer requests."),
        "order" => ("string", "desc (default) or asc."),
        "interval" => (
            "string",
            "Point spacing with a unit, e.g. 1m, 1h; points align to multiples of it.",
        ),
        "start_date" => ("string", "First day, YYYY-MM-DD (UTC)."),
        "end_date" => (
            "string",
            "Last day, YYYY-MM-DD (UTC), inclusive; at most 366 days.",
        ),
        _ => return None,
    })
}

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
    json!({
        "Error": obj(json!({
            "status": {"type": "string", "enum": ["error"]},
            "error": obj(json!({"code": string, "message": string, "row": int, "field": string}), &["code", "message"]),
        }), &["status", "error"]),
        "Event": obj(json!({
            "request_id": string, "timestamp": {"type": "string", "format": "date-time"}, "user_id": string,
            "endpoint": string, "method": string, "status_code": int, "latency_ms": num,
        }), &["request_id", "timestamp", "endpoint", "status_code", "latency_ms"]),
        "EventIn": obj(json!({
            "request_id": string, "timestamp": {"oneOf": [string, int]}, "user_id": string,
            "endpoint": string, "method": string, "status_code": int, "latency_ms": num,
        }), &["timestamp", "endpoint", "status_code", "latency_ms"]),
        "Ack": obj(json!({"status": string, "accepted": int, "replayed": {"type": "boolean"}}), &["status", "accepted"]),
        "Events": obj(json!({
            "status": string, "data": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
            "next_cursor": {"type": "string", "nullable": true},
        }), &["status", "data"]),
        "Count": obj(json!({"status": string, "count": int}), &["status", "count"]),
        "TopK": obj(json!({
            "status": string,
            "data": {"type": "array", "items": obj(json!({
                "request_id": string, "metric_value": num, "count": int, "lower": num, "upper": num,
            }), &["request_id", "metric_value", "count"])},
            "meta": obj(json!({"exact": {"type": "boolean"}, "sources": {"type": "array", "items": string}, "took_ms": num, "unlisted_max_count": int, "retained_from": {"type": "string", "format": "date-time"}}), &["exact", "sources"]),
        }), &["status", "data", "meta"]),
        "History": obj(json!({
            "status": string,
            "data": {"type": "array", "items": obj(json!({
                "date": string, "total_requests": int, "average_latency": nullable_num,
                "error_rate": nullable_num, "p99_latency": nullable_num,
            }), &["date", "total_requests"])},
        }), &["status", "data"]),
        "Timeseries": obj(json!({
            "status": string,
            "data": {"type": "array", "items": obj(json!({
                "key": {"type": "string", "nullable": true},
                "points": {"type": "array", "items": obj(json!({"time": string, "value": nullable_num, "count": int}), &["time", "count"])},
            }), &["points"])},
            "meta": {"type": "object"},
        }), &["status", "data"]),
        "Aggregation": obj(json!({
            "start_time": {"oneOf": [string, int]}, "end_time": {"oneOf": [string, int]},
            "metrics": {"type": "array", "items": string, "minItems": 1},
            "interval": string, "group_by": string,
            "filters": obj(json!({"endpoint": string, "user_id": string, "method": string, "status_code": int, "status_class": int}), &[]),
        }), &["start_time", "end_time", "metrics"]),
        "Submitted": obj(json!({"status": string, "message": string, "aggregation_id": string}), &["status", "aggregation_id"]),
        "Job": obj(json!({"status": string, "data": {"type": "object"}}), &["status", "data"]),
        "Jobs": obj(json!({"status": string, "data": {"type": "array", "items": {"type": "object"}}}), &["status", "data"]),
        "Health": obj(json!({"status": string}), &["status"]),
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
    })
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "Success",
        202 => "Accepted: the job runs in the background",
        400 => "Bad input: the error names the row, field or parameter",
        404 => "Not found",
        413 => "Body too large",
        415 => "Unsupported content type or encoding",
        503 => "Not ready, or not accepting writes (the error says why)",
        _ => "Other",
    }
}

/// The OpenAPI 3 document for `ops`.
pub(crate) fn document(ops: &[Operation]) -> Value {
    let mut paths = Map::new();
    for op in ops {
        let mut params: Vec<Value> = op
            .query
            .iter()
            .map(|name| {
                let (kind, description) = describe(name).unwrap_or(("string", ""));
                json!({"name": name, "in": "query", "required": op.required.contains(name),
                       "description": description, "schema": {"type": kind}})
            })
            .collect();
        if op.path.contains("{id}") {
            params.push(
                json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string"},
                               "description": "The aggregation_id returned on submission."}),
            );
        }
        let mut responses = Map::new();
        responses.insert(
            op.ok.0.to_string(),
            json!({"description": reason(op.ok.0), "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{}", op.ok.1)}}}}),
        );
        for code in op.errors {
            responses.insert(
                code.to_string(),
                json!({"description": reason(*code), "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}),
            );
        }
        let mut operation =
            json!({"summary": op.summary, "parameters": params, "responses": responses});
        match op.body {
            Some(Body::Events) => {
                let array =
                    json!({"type": "array", "items": {"$ref": "#/components/schemas/EventIn"}});
                operation["requestBody"] = json!({"required": true, "content": {
                    "application/json": {"schema": {"oneOf": [array, {"type": "object", "properties": {"events": array}, "required": ["events"]}]}},
                    "application/x-ndjson": {"schema": {"type": "string", "description": "One event object per line."}},
                }});
            }
            Some(Body::Aggregation) => {
                operation["requestBody"] = json!({"required": true, "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Aggregation"}},
                }});
            }
            Some(Body::Retention) => {
                operation["requestBody"] = json!({"required": true, "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/RetentionPolicy"}},
                }});
            }
            None => {}
        }
        let entry = paths.entry(op.path.to_owned()).or_insert_with(|| json!({}));
        entry[op.method] = operation;
    }
    json!({
        "openapi": "3.0.3",
        "info": {"title": "toplog", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Time-series store for HTTP request analytics."},
        "paths": paths,
        "components": {"schemas": schemas()},
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::OPERATIONS;

    #[test]
    fn every_operation_is_unique_and_every_parameter_described() {
        let mut seen = std::collections::HashSet::new();
        for op in &OPERATIONS {
            assert!(
                seen.insert((op.method, op.path)),
                "{} {} listed twice",
                op.method,
                op.path
            );
            for p in op.query {
                assert!(
                    describe(p).is_some(),
                    "{} {}: parameter `{p}` has no description",
                    op.method,
                    op.path
                );
            }
            for r in op.required {
                assert!(
                    op.query.contains(r),
                    "{} {}: required `{r}` is not a parameter",
                    op.method,
                    op.path
                );
            }
        }
        let doc = document(&OPERATIONS);
        let schemas = &doc["components"]["schemas"];
        for op in &OPERATIONS {
            assert!(
                schemas.get(op.ok.1).is_some(),
                "{} {}: no schema {}",
                op.method,
                op.path,
                op.ok.1
            );
        }
    }
}
