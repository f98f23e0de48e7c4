//! Silences: label matchers and a time span. A silenced alert still moves
//! through its states and is kept in history, but notifies no one. An
//! alert's labels ([`alert_labels`]) are its rule's, and `alertname`,
//! `rule_id`, `severity`, `key` and the rule's dimension set to the key.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use toplog_types::Micros;

use crate::rule::{fault, string};
use crate::{Rule, RuleError};

/// Matchers one silence holds at most.
const MAX_MATCHERS: usize = 16;
/// A silence lasts at most this long.
const MAX_SPAN_US: i64 = 366 * 86_400_000_000;

/// How a matcher compares a label's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MatchOp {
    #[serde(rename = "=")]
    Equal,
    #[serde(rename = "!=")]
    NotEqual,
    #[serde(rename = "=~")]
    Matches,
    #[serde(rename = "!~")]
    NotMatches,
}

/// One label matcher (a label an alert lacks reads as empty).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Matcher {
    pub name: String,
    pub op: MatchOp,
    pub value: String,
    /// `value` compiled, the first time a regex matcher is used.
    #[serde(skip)]
    compiled: std::sync::OnceLock<Option<regex::Regex>>,
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Self) -> bool {
        (&self.name, self.op, &self.value) == (&other.name, other.op, &other.value)
    }
}

impl Eq for Matcher {}

/// A regex matcher's pattern: it matches the whole value, as
/// Alertmanager's do.
fn whole_value(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(1 << 20)
        .build()
}

impl Matcher {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let got = labels.get(&self.name).map_or("", String::as_str);
        // Checked when the silence was made; compiled once.
        let whole = || {
            (self.compiled.get_or_init(|| whole_value(&self.value).ok()))
                .as_ref()
                .is_some_and(|r| r.is_match(got))
        };
        match self.op {
            MatchOp::Equal => got == self.value,
            MatchOp::NotEqual => got != self.value,
            MatchOp::Matches => whole(),
            MatchOp::NotMatches => !whole(),
        }
    }
}

/// A silence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Silence {
    pub id: String,
    pub matchers: Vec<Matcher>,
    pub starts_at: Micros,
    pub ends_at: Micros,
    pub comment: String,
    pub created_at: Micros,
}

impl Silence {
    /// Checks a silence's JSON (`matchers`, `ends_at`, optional `starts_at`
    /// and `comment`; times in RFC 3339 or epoch milliseconds), made at `at`.
    pub fn parse(id: &str, body: &Value, at: Micros) -> Result<Self, RuleError> {
        let fields = body
            .as_object()
            .ok_or_else(|| fault("body", "expected a JSON object"))?;
        if let Some(k) = fields
            .keys()
            .find(|k| !["matchers", "starts_at", "ends_at", "comment"].contains(&k.as_str()))
        {
            return Err(fault(
                k,
                "unknown field (known: matchers, starts_at, ends_at, comment)",
            ));
        }
        let items = fields
            .get("matchers")
            .and_then(Value::as_array)
            .filter(|m| !m.is_empty() && m.len() <= MAX_MATCHERS)
            .ok_or_else(|| {
                fault(
                    "matchers",
                    format!("required: 1 to {MAX_MATCHERS} matchers"),
                )
            })?;
        let matchers = items
            .iter()
            .enumerate()
            .map(|(i, m)| matcher(&format!("matchers[{i}]"), m))
            .collect::<Result<Vec<_>, _>>()?;
        let time = |field: &str| -> Result<Option<Micros>, RuleError> {
            fields
                .get(field)
                .map(|v| {
                    let s = v.as_str().ok_or_else(|| {
                        fault(field, "expected a string: RFC 3339 or epoch milliseconds")
                    })?;
                    Micros::parse(s).map_err(|e| fault(field, e.to_string()))
                })
                .transpose()
        };
        let starts_at = time("starts_at")?.unwrap_or(at);
        let ends_at = time("ends_at")?.ok_or_else(|| fault("ends_at", "required"))?;
        if ends_at <= starts_at.max(at) {
            return Err(fault("ends_at", "must be after `starts_at` and after now"));
        }
        if ends_at.get() - starts_at.get() > MAX_SPAN_US {
            return Err(fault("ends_at", "a silence lasts at most 366 days"));
        }
        let comment = match fields.get("comment") {
            None => String::new(),
            Some(v) => string("comment", v, 1000)?,
        };
        Ok(Self {
            id: id.to_owned(),
            matchers,
            starts_at,
            ends_at,
            comment,
            created_at: at,
        })
    }

    /// Whether it silences an alert with `labels` at `at`.
    pub fn silences(&self, labels: &BTreeMap<String, String>, at: Micros) -> bool {
        self.starts_at <= at && at < self.ends_at && self.matchers.iter().all(|m| m.matches(labels))
    }

    /// The silence as `GET` shows it, with its state at `now`.
    pub fn to_json(&self, now: Micros) -> Value {
        let state = if now < self.starts_at {
            "pending"
        } else if now < self.ends_at {
            "active"
        } else {
            "expired"
        };
        json!({"id": self.id, "matchers": self.matchers, "starts_at": self.starts_at.to_rfc3339(),
               "ends_at": self.ends_at.to_rfc3339(), "comment": self.comment,
               "created_at": self.created_at.to_rfc3339(), "state": state})
    }

    /// The JSON Schema of a silence's body.
    pub fn schema() -> Value {
        let time = json!({"type": "string", "description": "RFC 3339 or epoch milliseconds."});
        json!({"type": "object", "additionalProperties": false, "required": ["matchers", "ends_at"],
            "properties": {
                "matchers": {"type": "array", "minItems": 1, "maxItems": MAX_MATCHERS, "items": {
                    "type": "object", "additionalProperties": false, "required": ["name", "value"],
                    "properties": {
                        "name": {"type": "string", "minLength": 1, "maxLength": 64},
                        "op": {"type": "string", "enum": ["=", "!=", "=~", "!~"],
                               "description": "`=` by default; `=~` and `!~` take a regular expression matching the whole value."},
                        "value": {"type": "string", "maxLength": 1024}}}},
                "starts_at": time, "ends_at": time,
                "comment": {"type": "string", "minLength": 1, "maxLength": 1000}}})
    }
}

fn matcher(field: &str, v: &Value) -> Result<Matcher, RuleError> {
    let m = v
        .as_object()
        .ok_or_else(|| fault(field, "expected {\"name\", \"op\", \"value\"}"))?;
    if let Some(k) = m
        .keys()
        .find(|k| !["name", "op", "value"].contains(&k.as_str()))
    {
        return Err(fault(
            &format!("{field}.{k}"),
            "unknown field (known: name, op, value)",
        ));
    }
    let name = string(
        &format!("{field}.name"),
        m.get("name").unwrap_or(&Value::Null),
        64,
    )?;
    let op = match m.get("op").map(Value::as_str) {
        None | Some(Some("=")) => MatchOp::Equal,
        Some(Some("!=")) => MatchOp::NotEqual,
        Some(Some("=~")) => MatchOp::Matches,
        Some(Some("!~")) => MatchOp::NotMatches,
        Some(_) => return Err(fault(&format!("{field}.op"), "expected =, !=, =~ or !~")),
    };
    let value = m
        .get("value")
        .and_then(Value::as_str)
        .filter(|s| s.len() <= 1024)
        .ok_or_else(|| {
            fault(
                &format!("{field}.value"),
                "expected a string of at most 1024 bytes",
            )
        })?
        .to_owned();
    let compiled = std::sync::OnceLock::new();
    if matches!(op, MatchOp::Matches | MatchOp::NotMatches) {
        let r = whole_value(&value).map_err(|e| {
            fault(
                &format!("{field}.value"),
                format!("not a regular expression: {e}"),
            )
        })?;
        let _ = compiled.set(Some(r));
    }
    Ok(Matcher {
        name,
        op,
        value,
        compiled,
    })
}

/// The labels of rule `rule_id`'s alert for `key`.
pub fn alert_labels(rule: &Rule, rule_id: &str, key: &str) -> BTreeMap<String, String> {
    let mut labels = rule.labels.clone();
    labels.insert("alertname".into(), rule.name.clone());
    labels.insert("rule_id".into(), rule_id.to_owned());
    labels.insert("severity".into(), rule.severity.name().to_owned());
    if !key.is_empty() {
        labels.insert("key".into(), key.to_owned());
        if let Some(d) = rule.by {
            labels.insert(d.name().to_owned(), key.to_owned());
        }
    }
    labels
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_silence_matches_by_label_within_its_span() {
        let rule = Rule::parse(&json!({"name": "5xx", "metric": "errors", "by": "endpoint",
            "op": ">", "threshold": 1, "labels": {"team": "api"}}))
        .unwrap();
        let labels = alert_labels(&rule, "r1", "GET /a");
        assert_eq!(labels["endpoint"], "GET /a");
        let s = Silence::parse(
            "s1",
            &json!({"matchers": [{"name": "team", "value": "api"},
                                 {"name": "endpoint", "op": "=~", "value": "GET /.*"}],
                    "ends_at": "3000", "comment": "deploy"}),
            Micros::new(1_000_000),
        )
        .unwrap();
        assert!(s.silences(&labels, Micros::new(2_000_000)));
        assert!(!s.silences(&labels, Micros::new(3_000_000)), "ended");
        assert!(!s.silences(
            &alert_labels(&rule, "r1", "POST /a"),
            Micros::new(2_000_000)
        ));
        for (body, field) in [
            (json!({"matchers": [], "ends_at": "3000"}), "matchers"),
            (
                json!({"matchers": [{"name": "a", "value": "b"}]}),
                "ends_at",
            ),
            (
                json!({"matchers": [{"name": "a", "value": "b"}], "ends_at": "500"}),
                "ends_at",
            ),
            (
                json!({"matchers": [{"name": "a", "op": "=~", "value": "("}], "ends_at": "3000"}),
                "matchers[0].value",
            ),
            (
                json!({"matchers": [{"name": "a", "op": "~", "value": "b"}], "ends_at": "3000"}),
                "matchers[0].op",
            ),
        ] {
            assert_eq!(
                Silence::parse("s", &body, Micros::new(1_000_000))
                    .unwrap_err()
                    .field,
                field,
                "{body}"
            );
        }
    }
}
