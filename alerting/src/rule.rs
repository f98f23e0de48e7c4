//! An alert rule: what it watches, when it fires, whom it tells. Parsed from
//! the JSON of `POST /api/v1/alerts/rules`, every field checked, the first
//! fault named.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use toplog_engine::{Dimension, Filters};
use toplog_query::Metric;

/// Longest window, `for` and `keep_firing_for`.
pub const MAX_SPAN_MINUTES: u32 = 24 * 60;
/// Most series one rule may watch.
pub const MAX_SERIES: usize = 10_000;
/// Series watched when a rule does not say.
pub const DEFAULT_MAX_SERIES: usize = 100;
/// The words a description may name in braces.
pub const PLACEHOLDERS: [&str; 6] = ["rule", "key", "value", "threshold", "severity", "window"];

const FIELDS: [&str; 18] = [
    "name",
    "metric",
    "by",
    "max_series",
    "filters",
    "window",
    "op",
    "threshold",
    "min_count",
    "for",
    "keep_firing_for",
    "severity",
    "description",
    "labels",
    "channels",
    "fallback_channels",
    "no_data",
    "repeat_every",
];

/// A rule field that is not what it must be, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}`: {reason}")]
pub struct RuleError {
    pub field: String,
    pub reason: String,
}

pub(crate) fn fault(field: &str, reason: impl Into<String>) -> RuleError {
    RuleError {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Above,
    Below,
}

impl Op {
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Self::Above => value > threshold,
            Self::Below => value < threshold,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Above => ">",
            Self::Below => "<",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub const NAMES: [&'static str; 3] = ["critical", "warning", "info"];

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "critical" => Self::Critical,
            "warning" => Self::Warning,
            "info" => Self::Info,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Critical => "critical",
            Self::Warning => "warning",
            Self::Info => "info",
        }
    }
}

/// What the rule compares with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    Static(f64),
    /// A band around each series' own baseline ([`crate::baseline`]).
    Learned(crate::Sensitivity),
}

/// What a series that had data and has none in a window counts as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NoData {
    /// As a window where the condition does not hold (the default).
    #[default]
    Ok,
    /// As a window where it holds: "traffic dropped to nothing".
    Alert,
    /// As nothing: the series keeps its state.
    Keep,
}

impl NoData {
    fn name(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Alert => "alert",
            Self::Keep => "keep",
        }
    }
}

/// `f` as a rule's `filters` (and `/api/v1/requests`' parameters) say it.
pub fn filters_json(f: &Filters) -> Value {
    let mut out = Map::new();
    for (k, v) in [
        ("endpoint", f.endpoint.clone().map(Value::from)),
        ("user_id", f.user_id.clone().map(Value::from)),
        ("method", f.method.clone().map(Value::from)),
        ("status_code", f.status_code.map(Value::from)),
        ("status_class", f.status_class.map(Value::from)),
    ] {
        if let Some(v) = v {
            out.insert(k.into(), v);
        }
    }
    Value::Object(out)
}

/// A checked rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    pub metric: Metric,
    /// One series per key of this dimension; none: one series, the total.
    pub by: Option<Dimension>,
    pub max_series: usize,
    pub filters: Filters,
    pub window_minutes: u32,
    pub op: Op,
    pub threshold: Threshold,
    /// A series with fewer requests in a window is not judged by it (its
    /// state stays as it was).
    pub min_count: u64,
    pub for_minutes: u32,
    pub keep_firing_for_minutes: u32,
    pub severity: Severity,
    pub description: String,
    pub labels: BTreeMap<String, String>,
    pub channels: Vec<String>,
    pub fallback_channels: Vec<String>,
    pub no_data: NoData,
    /// A firing alert not acknowledged is notified again this often (0: never).
    pub repeat_every_minutes: u32,
}

/// Whole minutes in `field`'s duration, at most [`MAX_SPAN_MINUTES`].
pub(crate) fn minutes(
    field: &str,
    v: Option<&Value>,
    default: u32,
    least: u32,
) -> Result<u32, RuleError> {
    let Some(v) = v else {
        return Ok(default);
    };
    let s = v
        .as_str()
        .ok_or_else(|| fault(field, "expected a duration such as \"5m\""))?;
    // Minutes, hours or days, as the document's pattern says.
    let unit_ok = s.len() > 1
        && s.is_ascii()
        && s[..s.len() - 1].bytes().all(|c| c.is_ascii_digit())
        && matches!(s.as_bytes()[s.len() - 1], b'm' | b'h' | b'd');
    if !unit_ok {
        return Err(fault(
            field,
            format!("`{s}`: a whole number of minutes, hours or days, such as \"5m\", \"1h\""),
        ));
    }
    let d = toplog_types::parse_duration(s).map_err(|e| fault(field, e.to_string()))?;
    let secs = d.as_secs();
    if d.subsec_nanos() != 0 || secs % 60 != 0 {
        return Err(fault(
            field,
            format!(
                "`{s}` is not a whole number of minutes: rules are evaluated as each minute closes"
            ),
        ));
    }
    let m = u32::try_from(secs / 60).unwrap_or(u32::MAX);
    if m < least || m > MAX_SPAN_MINUTES {
        return Err(fault(
            field,
            format!("`{s}`: from {least}m to {MAX_SPAN_MINUTES}m (24h)"),
        ));
    }
    Ok(m)
}

pub(crate) fn string(field: &str, v: &Value, max: usize) -> Result<String, RuleError> {
    let s = v
        .as_str()
        .ok_or_else(|| fault(field, "expected a string"))?;
    if s.trim().is_empty() || s.len() > max {
        return Err(fault(field, format!("from 1 to {max} bytes, not blank")));
    }
    Ok(s.to_owned())
}

fn ids(field: &str, v: Option<&Value>) -> Result<Vec<String>, RuleError> {
    let Some(v) = v else {
        return Ok(Vec::new());
    };
    let items = v
        .as_array()
        .ok_or_else(|| fault(field, "expected an array of channel ids"))?;
    if items.len() > 16 {
        return Err(fault(field, "at most 16 channels"));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| string(&format!("{field}[{i}]"), item, 64))
        .collect()
}

fn filters(v: Option<&Value>) -> Result<Filters, RuleError> {
    let mut f = Filters::default();
    let Some(v) = v else {
        return Ok(f);
    };
    let fields = v
        .as_object()
        .ok_or_else(|| fault("filters", "expected an object"))?;
    for (name, value) in fields {
        let field = format!("filters.{name}");
        match name.as_str() {
            "endpoint" => f.endpoint = Some(string(&field, value, 1024)?),
            "user_id" => f.user_id = Some(string(&field, value, 1024)?),
            "method" => f.method = Some(string(&field, value, 32)?),
            "status_code" => {
                f.status_code = Some(
                    value
                        .as_u64()
                        .filter(|c| (100..=599).contains(c))
                        .and_then(|c| u16::try_from(c).ok())
                        .ok_or_else(|| fault(&field, "expected a status code, 100 to 599"))?,
                );
            }
            "status_class" => {
                f.status_class = Some(
                    value
                        .as_u64()
                        .filter(|c| (1..=5).contains(c))
                        .and_then(|c| u8::try_from(c).ok())
                        .ok_or_else(|| fault(&field, "expected 1 to 5 (1xx to 5xx)"))?,
                );
            }
            _ => {
                return Err(fault(
                    &field,
                    "unknown filter (known: endpoint, user_id, method, status_code, status_class)",
                ));
            }
        }
    }
    Ok(f)
}

fn threshold(v: Option<&Value>) -> Result<Threshold, RuleError> {
    let v = v.ok_or_else(|| fault("threshold", "required"))?;
    if let Some(n) = v.as_f64() {
        return if n.is_finite() {
            Ok(Threshold::Static(n))
        } else {
            Err(fault("threshold", "not a finite number"))
        };
    }
    let learned = v
        .as_object()
        .filter(|o| o.len() == 1)
        .and_then(|o| o.get("learned"))
        .and_then(Value::as_object)
        .ok_or_else(|| {
            fault(
                "threshold",
                "expected a number or {\"learned\": {\"sensitivity\": \"low\" | \"medium\" | \"high\"}}",
            )
        })?;
    if let Some(k) = learned.keys().find(|k| *k != "sensitivity") {
        return Err(fault(
            &format!("threshold.learned.{k}"),
            "unknown field (known: sensitivity)",
        ));
    }
    let sensitivity = match learned.get("sensitivity") {
        None => crate::Sensitivity::Medium,
        Some(s) => s
            .as_str()
            .and_then(crate::Sensitivity::parse)
            .ok_or_else(|| {
                fault(
                    "threshold.learned.sensitivity",
                    "expected \"low\", \"medium\" or \"high\"",
                )
            })?,
    };
    Ok(Threshold::Learned(sensitivity))
}

fn description(v: Option<&Value>) -> Result<String, RuleError> {
    let Some(v) = v else {
        return Ok("{rule}: {key} is {value} (threshold {threshold})".into());
    };
    let s = string("description", v, 2000)?;
    let mut rest = s.as_str();
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| fault("description", "a `{` without its `}`"))?;
        let word = &after[..close];
        if !PLACEHOLDERS.contains(&word) {
            return Err(fault(
                "description",
                format!(
                    "unknown placeholder {{{word}}} (known: {})",
                    PLACEHOLDERS.join(", ")
                ),
            ));
        }
        rest = &after[close + 1..];
    }
    Ok(s)
}

fn labels(v: Option<&Value>) -> Result<BTreeMap<String, String>, RuleError> {
    let Some(v) = v else {
        return Ok(BTreeMap::new());
    };
    let fields = v
        .as_object()
        .ok_or_else(|| fault("labels", "expected an object of strings"))?;
    if fields.len() > 32 {
        return Err(fault("labels", "at most 32 labels"));
    }
    fields
        .iter()
        .map(|(name, value)| {
            let field = format!("labels.{name}");
            let good = name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.len() <= 64
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !good {
                return Err(fault(
                    &field,
                    "a label name is a letter or `_`, then letters, digits or `_` (at most 64)",
                ));
            }
            Ok((name.clone(), string(&field, value, 1024)?))
        })
        .collect()
}

impl Rule {
    /// Checks `body` (a rule's JSON) field by field.
    pub fn parse(body: &Value) -> Result<Self, RuleError> {
        let fields = body
            .as_object()
            .ok_or_else(|| fault("body", "expected a JSON object"))?;
        if let Some(unknown) = fields.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(fault(
                unknown,
                format!("unknown field (known: {})", FIELDS.join(", ")),
            ));
        }
        let get = |k: &str| fields.get(k);
        let name = string(
            "name",
            get("name").ok_or_else(|| fault("name", "required"))?,
            200,
        )?;
        let metric = get("metric")
            .ok_or_else(|| fault("metric", "required"))?
            .as_str()
            .and_then(Metric::parse)
            .ok_or_else(|| {
                fault(
                    "metric",
                    format!("expected one of {}", Metric::NAMES.join(", ")),
                )
            })?;
        let by = match get("by") {
            None => None,
            Some(v) => Some(
                v.as_str()
                    .and_then(|s| match toplog_query::Grouping::parse(s) {
                        Some(toplog_query::Grouping::By(d)) => Some(d),
                        _ => None,
                    })
                    .ok_or_else(|| {
                        fault("by", "expected endpoint, user_id, status_code or method")
                    })?,
            ),
        };
        let max_series = match get("max_series") {
            None => DEFAULT_MAX_SERIES,
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .filter(|n| (1..=MAX_SERIES).contains(n))
                .ok_or_else(|| fault("max_series", format!("expected 1 to {MAX_SERIES}")))?,
        };
        if by.is_none() && get("max_series").is_some() {
            return Err(fault(
                "max_series",
                "only with `by`: without it the rule watches one series",
            ));
        }
        let op = match get("op").ok_or_else(|| fault("op", "required"))?.as_str() {
            Some(">") => Op::Above,
            Some("<") => Op::Below,
            _ => return Err(fault("op", "expected \">\" or \"<\"")),
        };
        let min_count = match get("min_count") {
            None => 0,
            Some(v) => v
                .as_u64()
                .ok_or_else(|| fault("min_count", "expected a whole number, 0 or more"))?,
        };
        let severity = match get("severity") {
            None => Severity::Warning,
            Some(v) => v.as_str().and_then(Severity::parse).ok_or_else(|| {
                fault(
                    "severity",
                    format!("expected one of {}", Severity::NAMES.join(", ")),
                )
            })?,
        };
        let no_data = match get("no_data").map(Value::as_str) {
            None => NoData::Ok,
            Some(Some("ok")) => NoData::Ok,
            Some(Some("alert")) => NoData::Alert,
            Some(Some("keep")) => NoData::Keep,
            Some(_) => return Err(fault("no_data", "expected \"ok\", \"alert\" or \"keep\"")),
        };
        let channels = ids("channels", get("channels"))?;
        let fallback_channels = ids("fallback_channels", get("fallback_channels"))?;
        if !fallback_channels.is_empty() && channels.is_empty() {
            return Err(fault(
                "fallback_channels",
                "a fallback needs `channels` first",
            ));
        }
        Ok(Self {
            name,
            metric,
            by,
            max_series,
            filters: filters(get("filters"))?,
            window_minutes: minutes("window", get("window"), 5, 1)?,
            op,
            threshold: threshold(get("threshold"))?,
            min_count,
            for_minutes: minutes("for", get("for"), 0, 0)?,
            keep_firing_for_minutes: minutes("keep_firing_for", get("keep_firing_for"), 0, 0)?,
            repeat_every_minutes: minutes("repeat_every", get("repeat_every"), 0, 0)?,
            severity,
            description: description(get("description"))?,
            labels: labels(get("labels"))?,
            channels,
            fallback_channels,
            no_data,
        })
    }

    /// The JSON Schema of a rule's body: the shapes [`Rule::parse`] takes
    /// (what it checks beyond them: blank strings, spans past a day, the
    /// description's placeholders, fields that need one another).
    pub fn schema() -> Value {
        let duration = json!({"type": "string", "pattern": "^[0-9]+[mhd]$",
                              "description": "Whole minutes, hours or days: `5m`, `1h`."});
        let text = |max: usize| json!({"type": "string", "minLength": 1, "maxLength": max});
        let ids = json!({"type": "array", "maxItems": 16, "items": text(64)});
        json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["name", "metric", "op", "threshold"],
            "properties": {
                "name": text(200),
                "metric": {"type": "string", "enum": Metric::NAMES},
                "by": {"type": "string", "enum": ["endpoint", "user_id", "status_code", "method"],
                       "description": "One series per key of this dimension; none: the total."},
                "max_series": {"type": "integer", "minimum": 1, "maximum": MAX_SERIES,
                               "description": "Series watched at most (with `by`), those nearest the threshold first."},
                "filters": {"type": "object", "additionalProperties": false, "properties": {
                    "endpoint": text(1024), "user_id": text(1024), "method": text(32),
                    "status_code": {"type": "integer", "minimum": 100, "maximum": 599},
                    "status_class": {"type": "integer", "minimum": 1, "maximum": 5},
                }},
                "window": duration,
                "op": {"type": "string", "enum": [">", "<"]},
                "threshold": {"oneOf": [
                    {"type": "number"},
                    {"type": "object", "additionalProperties": false, "required": ["learned"], "properties": {
                        "learned": {"type": "object", "additionalProperties": false, "properties": {
                            "sensitivity": {"type": "string", "enum": ["low", "medium", "high"]}}}}},
                ]},
                "min_count": {"type": "integer", "minimum": 0},
                "for": duration,
                "keep_firing_for": duration,
                "severity": {"type": "string", "enum": Severity::NAMES},
                "description": {"type": "string", "minLength": 1, "maxLength": 2000,
                                "description": "May name {rule}, {key}, {value}, {threshold}, {severity}, {window}."},
                "labels": {"type": "object", "maxProperties": 32,
                           "description": "Names: a letter or `_`, then letters, digits or `_` (at most 64).",
                           "additionalProperties": text(1024)},
                "channels": ids,
                "fallback_channels": ids,
                "no_data": {"type": "string", "enum": ["ok", "alert", "keep"]},
                "repeat_every": duration,
            },
        })
    }

    /// The rule as its JSON (what [`Rule::parse`] reads back the same).
    pub fn to_json(&self) -> Value {
        let filters = filters_json(&self.filters);
        let mut out = json!({
            "name": self.name,
            "metric": self.metric.name(),
            "filters": filters,
            "window": format!("{}m", self.window_minutes),
            "op": self.op.name(),
            "threshold": match self.threshold {
                Threshold::Static(n) => json!(n),
                Threshold::Learned(s) => json!({"learned": {"sensitivity": s.name()}}),
            },
            "min_count": self.min_count,
            "for": format!("{}m", self.for_minutes),
            "keep_firing_for": format!("{}m", self.keep_firing_for_minutes),
            "severity": self.severity.name(),
            "description": self.description,
            "labels": self.labels,
            "channels": self.channels,
            "fallback_channels": self.fallback_channels,
            "no_data": self.no_data.name(),
            "repeat_every": format!("{}m", self.repeat_every_minutes),
        });
        if let Some(d) = self.by {
            out["by"] = json!(d.name());
            out["max_series"] = json!(self.max_series);
        }
        out
    }

    /// Whether it sends to channel `id` (first or as a fallback).
    pub fn notifies(&self, id: &str) -> bool {
        self.channels
            .iter()
            .chain(&self.fallback_channels)
            .any(|c| c == id)
    }

    /// The filters that pick the requests behind its alert for `key`: its
    /// own, the key on its dimension, and for an error metric server errors.
    pub fn requests_filters(&self, key: &str) -> Filters {
        let mut f = self.filters.clone();
        match self.by {
            Some(Dimension::Endpoint) => f.endpoint = Some(key.to_owned()),
            Some(Dimension::UserId) => f.user_id = Some(key.to_owned()),
            Some(Dimension::Method) => f.method = Some(key.to_owned()),
            Some(Dimension::StatusCode) => f.status_code = key.parse().ok(),
            Some(Dimension::EndpointStatusClass) | None => {}
        }
        if matches!(self.metric, Metric::Errors | Metric::ErrorRate)
            && f.status_code.is_none()
            && f.status_class.is_none()
        {
            f.status_class = Some(5);
        }
        f
    }

    /// The description with its placeholders filled.
    pub fn describe(&self, key: &str, value: f64, threshold: f64) -> String {
        let number = |n: f64| {
            if n.fract() == 0.0 && n.abs() < 1e15 {
                format!("{n:.0}")
            } else {
                format!("{n:.4}")
            }
        };
        self.description
            .replace("{rule}", &self.name)
            .replace("{key}", if key.is_empty() { "all requests" } else { key })
            .replace("{value}", &number(value))
            .replace("{threshold}", &number(threshold))
            .replace("{severity}", self.severity.name())
            .replace("{window}", &format!("{}m", self.window_minutes))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn errors_rule() -> Value {
        json!({"name": "5xx on an endpoint", "metric": "errors", "by": "endpoint",
               "filters": {"status_class": 5}, "window": "5m", "op": ">", "threshold": 10,
               "for": "2m", "severity": "critical", "labels": {"team": "api"},
               "description": "{key}: {value} errors in {window} (over {threshold})",
               "channels": ["c1"], "fallback_channels": ["c2"]})
    }

    #[test]
    fn a_rule_reads_back_as_written() {
        let rule = Rule::parse(&errors_rule()).unwrap();
        assert_eq!(rule.by, Some(Dimension::Endpoint));
        assert_eq!(rule.filters.status_class, Some(5));
        assert_eq!((rule.window_minutes, rule.for_minutes), (5, 2));
        assert_eq!(Rule::parse(&rule.to_json()).unwrap(), rule);
        assert_eq!(
            rule.describe("GET /a", 12.0, 10.0),
            "GET /a: 12 errors in 5m (over 10)"
        );
        let learned = json!({"name": "drop", "metric": "frequency", "op": "<",
                             "threshold": {"learned": {"sensitivity": "high"}}, "no_data": "alert"});
        let rule = Rule::parse(&learned).unwrap();
        assert_eq!(rule.threshold, Threshold::Learned(crate::Sensitivity::High));
        assert_eq!(Rule::parse(&rule.to_json()).unwrap(), rule);
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases = [
            (json!({"metric": "nope"}), "metric"),
            (json!({"by": "request"}), "by"),
            (json!({"window": "90s"}), "window"),
            (json!({"window": "2d"}), "window"),
            (json!({"window": "60s"}), "window"),
            (json!({"window": " 5m"}), "window"),
            (json!({"by": null}), "by"),
            (json!({"op": ">="}), "op"),
            (json!({"threshold": "ten"}), "threshold"),
            (
                json!({"threshold": {"learned": {"sensitivity": "extreme"}}}),
                "threshold.learned.sensitivity",
            ),
            (
                json!({"filters": {"status_class": 9}}),
                "filters.status_class",
            ),
            (json!({"filters": {"colour": "red"}}), "filters.colour"),
            (json!({"description": "{key} is {vaule}"}), "description"),
            (json!({"labels": {"9lives": "x"}}), "labels.9lives"),
            (json!({"channels": [1]}), "channels[0]"),
            (json!({"for": "\u{80}"}), "for"),
            (json!({"max_series": 0}), "max_series"),
            (json!({"severity": "page"}), "severity"),
            (json!({"no_data": "maybe"}), "no_data"),
            (json!({"colour": "red"}), "colour"),
        ];
        for (change, field) in cases {
            let mut body = errors_rule();
            for (k, v) in change.as_object().unwrap() {
                body[k] = v.clone();
            }
            let err = Rule::parse(&body).unwrap_err();
            assert_eq!(err.field, field, "{change}: {err}");
        }
        let err = Rule::parse(&json!({"metric": "errors", "op": ">", "threshold": 1})).unwrap_err();
        assert_eq!(err.field, "name");
    }
}
