//! An aggregation request as submitted (a JSON object): its declared fields,
//! how it is checked, and how its result rows are written. Jobs are re-parsed
//! from the stored request at restart, so this is the one place that reads it.

use serde_json::{Map, Value, json};
use toplog_engine::{Dimension, Filters, TimeRange};
use toplog_types::{Arg, Param, Shape};

use crate::{AggregateRow, AggregationSpec, Metric, QueryError, Result};

/// The names a request's `metrics` list takes: `latency` (avg, p50, p95 and
/// p99 together) and every top-K metric.
pub const AGGREGATION_METRICS: [&str; 10] = {
    let mut names = ["latency"; 10];
    let mut i = 0;
    while i < Metric::NAMES.len() {
        names[i + 1] = Metric::NAMES[i];
        i += 1;
    }
    names
};
/// Most names in `metrics`.
const MAX_METRICS: usize = 16;
/// Longest text filter, in characters (an endpoint's limit).
const MAX_FILTER_TEXT: usize = toplog_types::MAX_ENDPOINT_LEN;
const DIMENSIONS: [&str; 4] = ["endpoint", "user_id", "status_code", "method"];

const START: Param = Param {
    name: "start_time",
    shape: Shape::Time,
    doc: "Range start, inclusive: RFC 3339 or epoch milliseconds.",
};
const END: Param = Param {
    name: "end_time",
    shape: Shape::Time,
    doc: "Range end, exclusive: RFC 3339 or epoch milliseconds.",
};
const METRIC: Param = Param {
    name: "metrics",
    shape: Shape::Choice(&AGGREGATION_METRICS),
    doc: "Metrics to compute.",
};
const INTERVAL: Param = Param {
    name: "interval",
    shape: Shape::Duration,
    doc: "One row per interval (aligned to multiples of it); absent: one row for the range.",
};
const GROUP_BY: Param = Param {
    name: "group_by",
    shape: Shape::Choice(&DIMENSIONS),
    doc: "One row per key of this dimension in each interval.",
};
/// The `filters` object's fields.
const FILTERS: [Param; 5] = [
    Param {
        name: "endpoint",
        shape: Shape::Text {
            min: 0,
            max: MAX_FILTER_TEXT,
        },
        doc: "Only requests to this route template.",
    },
    Param {
        name: "user_id",
        shape: Shape::Text {
            min: 0,
            max: MAX_FILTER_TEXT,
        },
        doc: "Only requests of this user.",
    },
    Param {
        name: "method",
        shape: Shape::Text {
            min: 0,
            max: MAX_FILTER_TEXT,
        },
        doc: "Only requests with this HTTP method.",
    },
    Param {
        name: "status_code",
        shape: Shape::Int { min: 100, max: 599 },
        doc: "Only requests with this status code.",
    },
    Param {
        name: "status_class",
        shape: Shape::Int { min: 1, max: 5 },
        doc: "Only requests of this class: 1 to 5 for 1xx to 5xx.",
    },
];
const FIELDS: [&str; 6] = [
    "start_time",
    "end_time",
    "metrics",
    "interval",
    "group_by",
    "filters",
];
const FILTER_FIELDS: [&str; 5] = [
    "endpoint",
    "user_id",
    "method",
    "status_code",
    "status_class",
];

/// A checked aggregation request: what to compute, and the metric names asked for.
#[derive(Debug, Clone)]
pub struct AggregationRequest {
    pub spec: AggregationSpec,
    pub metrics: Vec<&'static str>,
}

impl AggregationRequest {
    /// Checks a request body against its declaration (every field, then the
    /// range and its size).
    pub fn parse(body: &Value) -> Result<Self> {
        let Value::Object(obj) = body else {
            return Err(QueryError::Invalid("body", "expected a JSON object".into()));
        };
        known_fields(obj, &FIELDS)?;
        let time = |p: &Param| match obj.get(p.name) {
            None | Some(Value::Null) => Err(QueryError::Invalid(
                p.name,
                "is required (RFC 3339 or epoch milliseconds)".into(),
            )),
            Some(v) => match p.parse_json(v)? {
                Arg::Time(t) => Ok(t),
                other => Err(mismatch(p, &other)),
            },
        };
        let (start, end) = (time(&START)?, time(&END)?);
        let metrics = match obj.get(METRIC.name) {
            Some(Value::Array(items)) if (1..=MAX_METRICS).contains(&items.len()) => items
                .iter()
                .map(|m| match METRIC.parse_json(m)? {
                    Arg::Choice(name) => Ok(name),
                    other => Err(mismatch(&METRIC, &other)),
                })
                .collect::<Result<Vec<_>>>()?,
            _ => {
                return Err(QueryError::Invalid(
                    METRIC.name,
                    format!("is required: an array of 1 to {MAX_METRICS} metric names"),
                ));
            }
        };
        let optional = |p: &Param| match obj.get(p.name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => p.parse_json(v).map(Some),
        };
        let interval_us = match optional(&INTERVAL)? {
            None => None,
            Some(Arg::Duration(us)) => Some(us),
            Some(other) => return Err(mismatch(&INTERVAL, &other)),
        };
        let group_by = match optional(&GROUP_BY)? {
            None => None,
            Some(Arg::Choice(name)) => Some(dimension(name)),
            Some(other) => return Err(mismatch(&GROUP_BY, &other)),
        };
        let filters = match obj.get("filters") {
            None | Some(Value::Null) => Filters::default(),
            Some(Value::Object(f)) => filters(f)?,
            Some(_) => return Err(QueryError::Invalid("filters", "expected an object".into())),
        };
        if start >= end {
            return Err(QueryError::Conflicting(
                START.name,
                format!("must be before `end_time` ({start} >= {end})"),
            ));
        }
        let needs_quantiles = metrics
            .iter()
            .any(|m| *m == "latency" || m.starts_with("latency_p"));
        let spec = AggregationSpec {
            range: TimeRange { start, end },
            interval_us,
            group_by,
            filters,
            needs_quantiles,
        };
        spec.check()?;
        Ok(Self { spec, metrics })
    }

    /// The request body's JSON Schema (OpenAPI 3.0), from the same declarations.
    pub fn schema() -> Value {
        let filters: Map<String, Value> = FILTERS
            .iter()
            .map(|p| (p.name.to_owned(), p.field_schema()))
            .collect();
        json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["start_time", "end_time", "metrics"],
            "properties": {
                "start_time": START.field_schema(),
                "end_time": END.field_schema(),
                "metrics": {"type": "array", "minItems": 1, "maxItems": MAX_METRICS,
                            "items": METRIC.schema(), "description": METRIC.doc},
                "interval": INTERVAL.optional_field_schema(),
                "group_by": GROUP_BY.optional_field_schema(),
                "filters": {"type": "object", "additionalProperties": false, "nullable": true,
                            "properties": filters},
            },
        })
    }

    /// One result row with the requested metrics.
    pub fn row_json(&self, row: &AggregateRow) -> Value {
        let value = |m: Metric| m.value(&row.cell).map(|(v, _)| v);
        let mut out = json!({"start": row.start.to_rfc3339(), "end": row.end.to_rfc3339()});
        if let Some(g) = &row.group {
            out["group"] = json!(g);
        }
        if row.missed.requests > 0 {
            // Read from a cube bucket over its key budget: the values are of the
            // requests it kept; up to this many more may belong to the group.
            out["exact"] = json!(false);
            out["missed_requests"] = json!(row.missed.requests);
        }
        for m in &self.metrics {
            out[*m] = match *m {
                "latency" => json!({
                    "avg": value(Metric::LatencyAvg),
                    "p50": value(Metric::LatencyP50),
                    "p95": value(Metric::LatencyP95),
                    "p99": value(Metric::LatencyP99),
                }),
                // Counts are 0, not null, for an empty interval.
                "frequency" => json!(row.cell.count),
                "errors" => json!(row.cell.errors()),
                name => json!(Metric::parse(name).and_then(value)),
            };
        }
        out
    }
}

fn known_fields(obj: &Map<String, Value>, known: &'static [&'static str]) -> Result<()> {
    match obj.keys().find(|k| !known.contains(&k.as_str())) {
        Some(field) => Err(QueryError::UnknownField {
            field: field.clone(),
            known,
        }),
        None => Ok(()),
    }
}

fn filters(f: &Map<String, Value>) -> Result<Filters> {
    known_fields(f, &FILTER_FIELDS)?;
    let mut filters = Filters::default();
    for p in &FILTERS {
        let Some(v) = f.get(p.name) else { continue };
        match (p.name, p.parse_json(v)?) {
            ("endpoint", Arg::Text(s)) => filters.endpoint = Some(s),
            ("user_id", Arg::Text(s)) => filters.user_id = Some(s),
            ("method", Arg::Text(s)) => filters.method = Some(s),
            ("status_code", Arg::Int(n)) => filters.status_code = u16::try_from(n).ok(),
            ("status_class", Arg::Int(n)) => filters.status_class = u8::try_from(n).ok(),
            (_, other) => return Err(mismatch(p, &other)),
        }
    }
    Ok(filters)
}

fn dimension(name: &str) -> Dimension {
    match name {
        "endpoint" => Dimension::Endpoint,
        "user_id" => Dimension::UserId,
        "status_code" => Dimension::StatusCode,
        _ => Dimension::Method,
    }
}

/// A declaration whose shape does not give the value its reader expects: a
/// bug in this file, reported rather than panicking.
fn mismatch(p: &Param, got: &Arg) -> QueryError {
    QueryError::Invalid(p.name, format!("internal: unexpected value {got:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_each_field_and_names_it() {
        let ok = json!({"start_time": 0, "end_time": "1970-01-02T00:00:00Z", "metrics": ["latency", "errors"],
                        "interval": "1h", "group_by": "endpoint", "filters": {"status_class": 5, "user_id": ""}});
        let r = AggregationRequest::parse(&ok).map_err(|e| e.to_string());
        assert_eq!(
            r.as_ref().map(|r| r.metrics.clone()),
            Ok(vec!["latency", "errors"])
        );
        let field = |body: Value| match AggregationRequest::parse(&body) {
            Err(
                QueryError::Invalid(f, _)
                | QueryError::Conflicting(f, _)
                | QueryError::TooLarge(f, _),
            ) => f.to_owned(),
            Err(QueryError::Param(e)) => e.name.to_owned(),
            Err(QueryError::UnknownField { field, .. }) => field,
            other => format!("{other:?}"),
        };
        let with = |k: &str, v: Value| {
            let mut b = ok.clone();
            b[k] = v;
            b
        };
        assert_eq!(field(with("metrics", json!([]))), "metrics");
        assert_eq!(field(with("metrics", json!(["nope"]))), "metrics");
        assert_eq!(field(with("interval", json!("0s"))), "interval");
        assert_eq!(field(with("interval", json!("106750000d"))), "interval");
        assert_eq!(field(with("group_by", json!("request"))), "group_by");
        assert_eq!(
            field(with("filters", json!({"status_code": 600}))),
            "status_code"
        );
        assert_eq!(field(with("filters", json!({"host": "a"}))), "host");
        assert_eq!(field(with("colour", json!(1))), "colour");
        assert_eq!(field(with("end_time", json!(0))), "start_time");
        assert_eq!(field(with("interval", json!("1s"))), "interval");
        let mut no_start = ok.clone();
        no_start.as_object_mut().map(|o| o.remove("start_time"));
        assert_eq!(field(no_start), "start_time");
    }
}
