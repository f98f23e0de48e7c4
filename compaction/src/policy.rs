//! The retention policy: how long raw segments stay on local disk, how long
//! raw data and each rollup granularity are kept. Durations carry units
//! (`90s`, `20m`, `7d`, `365d`). Changed at run time and persisted in
//! `<data_dir>/retention.json` (temp file, fsync, rename, directory fsync).

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use toplog_crypt::{Cipher, load_state_file, store_state_file};
use toplog_engine::Retention;
use toplog_types::{Arg, Param, Shape};

const FILE: &str = "retention.json";
const DAY: u64 = 86_400;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Raw segments older than this move to the archive.
    pub raw_local_for: Duration,
    /// Raw data older than this is purged.
    pub raw_keep_for: Duration,
    pub minute_keep_for: Duration,
    pub hour_keep_for: Duration,
    pub day_keep_for: Duration,
}

impl Default for Policy {
    /// DESIGN.md's tiers: raw 7 days local and 30 days in all, 1-minute rollups
    /// 30 days, 1-hour and 1-day rollups a year.
    fn default() -> Self {
        Self {
            raw_local_for: Duration::from_secs(7 * DAY),
            raw_keep_for: Duration::from_secs(30 * DAY),
            minute_keep_for: Duration::from_secs(30 * DAY),
            hour_keep_for: Duration::from_secs(365 * DAY),
            day_keep_for: Duration::from_secs(365 * DAY),
        }
    }
}

/// A policy key that cannot be taken, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}`: {reason}")]
pub struct PolicyError {
    pub field: String,
    pub reason: String,
    pub kind: PolicyErrorKind,
}

/// What kind of fault a [`PolicyError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyErrorKind {
    /// A key or value the policy does not take.
    Invalid,
    /// Each value is allowed, but they do not fit together (a tier kept
    /// longer than the one after it).
    Conflicting,
    /// The policy could not be read or persisted.
    Storage,
}

fn err(field: &str, reason: impl Into<String>) -> PolicyError {
    PolicyError {
        field: field.to_owned(),
        reason: reason.into(),
        kind: PolicyErrorKind::Invalid,
    }
}

fn conflict(field: &str, reason: &str) -> PolicyError {
    PolicyError {
        kind: PolicyErrorKind::Conflicting,
        ..err(field, reason)
    }
}

/// Every policy value: a duration of 1 to 6 digits and a unit `s`, `m`, `h`
/// or `d`, so at least a second and far from overflowing any arithmetic.
const DURATION: Param = Param {
    name: "duration",
    shape: Shape::Duration,
    doc: "How long data is kept (or kept locally), e.g. `7d`.",
};
const SECTIONS: [(&str, &[&str]); 2] = [
    ("raw", &["local_for", "keep_for"]),
    (
        "rollups",
        &["minute_keep_for", "hour_keep_for", "day_keep_for"],
    ),
];

/// `d` in the largest unit that divides it: `7d`, `20m`, `90s`.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    for (unit, len) in [("d", DAY), ("h", 3600), ("m", 60)] {
        if s > 0 && s.is_multiple_of(len) {
            return format!("{}{unit}", s / len);
        }
    }
    format!("{s}s")
}

impl Policy {
    /// What reads may see under this policy.
    pub fn retention(&self) -> Retention {
        Retention {
            raw: Some(self.raw_keep_for),
            minute: Some(self.minute_keep_for),
            hour: Some(self.hour_keep_for),
            day: Some(self.day_keep_for),
        }
    }

    pub fn to_json(&self) -> Value {
        let f = |d| Value::String(format_duration(d));
        json!({
            "raw": {"local_for": f(self.raw_local_for), "keep_for": f(self.raw_keep_for)},
            "rollups": {
                "minute_keep_for": f(self.minute_keep_for),
                "hour_keep_for": f(self.hour_keep_for),
                "day_keep_for": f(self.day_keep_for),
            },
        })
    }

    /// `self` with the keys `change` names replaced (any subset of
    /// [`Policy::to_json`]'s shape), checked as a whole.
    pub fn updated(&self, change: &Value) -> Result<Policy, PolicyError> {
        let mut next = *self;
        let top = change.as_object().ok_or_else(|| {
            err(
                "body",
                "expected an object like {\"raw\": {\"keep_for\": \"30d\"}}",
            )
        })?;
        for (section, body) in top {
            let fields: Vec<(&str, &mut Duration)> = match section.as_str() {
                "raw" => vec![
                    ("local_for", &mut next.raw_local_for),
                    ("keep_for", &mut next.raw_keep_for),
                ],
                "rollups" => vec![
                    ("minute_keep_for", &mut next.minute_keep_for),
                    ("hour_keep_for", &mut next.hour_keep_for),
                    ("day_keep_for", &mut next.day_keep_for),
                ],
                other => return Err(err(other, "unknown section; expected `raw` or `rollups`")),
            };
            let body = body
                .as_object()
                .ok_or_else(|| err(section, "expected an object"))?;
            let known: Vec<&str> = fields.iter().map(|(k, _)| *k).collect();
            if let Some(k) = body.keys().find(|k| !known.contains(&k.as_str())) {
                return Err(err(
                    &format!("{section}.{k}"),
                    format!("unknown key; expected one of {}", known.join(", ")),
                ));
            }
            for (key, slot) in fields {
                let Some(v) = body.get(key) else {
                    continue;
                };
                let name = format!("{section}.{key}");
                *slot = match DURATION.parse_json(v) {
                    Ok(Arg::Duration(us)) => Duration::from_micros(us.unsigned_abs()),
                    _ => {
                        return Err(err(
                            &name,
                            format!(
                                "{v} is not a duration: 1 to 6 digits without a leading zero and a unit s, m, h or d (e.g. \"90s\", \"30d\")"
                            ),
                        ));
                    }
                };
            }
        }
        next.check()?;
        Ok(next)
    }

    /// The JSON Schema (OpenAPI 3.0) of a change: any subset of the policy's keys.
    pub fn change_schema() -> Value {
        let mut top = serde_json::Map::new();
        for (section, keys) in SECTIONS {
            let mut props = serde_json::Map::new();
            for key in keys {
                let mut schema = DURATION.schema();
                schema["description"] = json!(DURATION.doc);
                props.insert((*key).to_owned(), schema);
            }
            top.insert(
                section.to_owned(),
                json!({"type": "object", "additionalProperties": false, "properties": props}),
            );
        }
        json!({"type": "object", "additionalProperties": false, "properties": top})
    }

    fn check(&self) -> Result<(), PolicyError> {
        if self.raw_local_for > self.raw_keep_for {
            return Err(conflict("raw.local_for", "must not exceed raw.keep_for"));
        }
        // Coarser rollups outlive finer ones, so a query past a finer tier's
        // retention loses only its oldest edge, never a middle part.
        if self.minute_keep_for > self.hour_keep_for {
            return Err(conflict(
                "rollups.minute_keep_for",
                "must not exceed rollups.hour_keep_for",
            ));
        }
        if self.hour_keep_for > self.day_keep_for {
            return Err(conflict(
                "rollups.hour_keep_for",
                "must not exceed rollups.day_keep_for",
            ));
        }
        Ok(())
    }

    /// Whether a policy changed through the API is stored in `data_dir`.
    pub fn is_stored(data_dir: &Path) -> bool {
        data_dir.join(FILE).exists()
    }

    /// The policy persisted in `data_dir`, if any.
    pub fn load(data_dir: &Path, cipher: &Cipher) -> Result<Option<Policy>, PolicyError> {
        let path = data_dir.join(FILE);
        let text = match load_state_file(&path, cipher) {
            Ok(Some(t)) => t,
            Ok(None) => return Ok(None),
            Err(e) => {
                return Err(PolicyError {
                    kind: PolicyErrorKind::Storage,
                    ..err(&path.display().to_string(), e.to_string())
                });
            }
        };
        let value: Value = serde_json::from_slice(&text)
            .map_err(|e| err(&path.display().to_string(), e.to_string()))?;
        Policy::default().updated(&value).map(Some)
    }

    /// Persists the policy in `data_dir` atomically.
    pub fn store(&self, data_dir: &Path, cipher: &Cipher) -> std::io::Result<()> {
        let plain = self.to_json().to_string().into_bytes();
        store_state_file(&data_dir.join(FILE), plain, cipher)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_change_keeps_the_rest_and_round_trips() -> Result<(), PolicyError> {
        let p =
            Policy::default().updated(&json!({"raw": {"local_for": "90s", "keep_for": "20m"}}))?;
        assert_eq!(p.raw_local_for, Duration::from_secs(90));
        assert_eq!(p.raw_keep_for, Duration::from_secs(1200));
        assert_eq!(p.hour_keep_for, Policy::default().hour_keep_for);
        assert_eq!(Policy::default().updated(&p.to_json())?, p);
        assert_eq!(p.to_json()["raw"]["local_for"], "90s");
        assert_eq!(
            Policy::default().to_json()["rollups"]["day_keep_for"],
            "365d"
        );
        Ok(())
    }

    #[test]
    fn bad_keys_are_named() {
        let field = |v: Value| Policy::default().updated(&v).err().map(|e| e.field);
        assert_eq!(
            field(json!({"raw": {"keep_for": "soon"}})).as_deref(),
            Some("raw.keep_for")
        );
        assert_eq!(
            field(json!({"raw": {"keep": "1d"}})).as_deref(),
            Some("raw.keep")
        );
        assert_eq!(field(json!({"cold": {}})).as_deref(), Some("cold"));
        assert_eq!(
            field(json!({"raw": {"keep_for": 30}})).as_deref(),
            Some("raw.keep_for")
        );
        assert_eq!(
            field(json!({"raw": {"local_for": "40d"}})).as_deref(),
            Some("raw.local_for")
        );
        assert_eq!(
            field(json!({"rollups": {"minute_keep_for": "400d"}})).as_deref(),
            Some("rollups.minute_keep_for")
        );
    }
}
