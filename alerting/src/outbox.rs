//! Notification channels and the durable outbox. A notified transition
//! (firing, resolved) of a rule's series puts one notification per channel
//! of the rule in the outbox, with an id every member derives alike (the
//! dedupe id receivers see). The leader sends what is due and records each
//! attempt's outcome as a change; a crash between sending and recording
//! sends again under the same id. Retried with backoff, given up after
//! [`GIVE_UP_AFTER_US`]; sent and failed ones are kept a day for history.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use toplog_types::Micros;
use twox_hash::XxHash3_128;

use crate::state::HistoryEntry;

/// A notification is given up this long after it was first due.
pub const GIVE_UP_AFTER_US: i64 = 24 * 3_600_000_000;
/// Sent and failed notifications are kept this long.
const KEEP_DONE_US: i64 = 24 * 3_600_000_000;
/// The first retry after this; doubling, at most [`MAX_BACKOFF_US`].
const FIRST_BACKOFF_US: i64 = 5_000_000;
const MAX_BACKOFF_US: i64 = 600_000_000;

/// Where notifications go. A webhook receives each as a JSON POST.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Channel {
    pub id: String,
    pub name: String,
    /// `webhook` (the one kind built so far).
    pub kind: String,
    pub url: String,
    pub created_at: Micros,
}

impl Channel {
    /// Checks a channel's JSON (`name`, `kind`, `url`).
    pub fn parse(id: &str, body: &Value, at: Micros) -> Result<Self, crate::RuleError> {
        let fault = |field: &str, reason: &str| crate::RuleError {
            field: field.into(),
            reason: reason.into(),
        };
        let fields = body
            .as_object()
            .ok_or_else(|| fault("body", "expected a JSON object"))?;
        if let Some(k) = fields
            .keys()
            .find(|k| !["name", "kind", "url"].contains(&k.as_str()))
        {
            return Err(fault(k, "unknown field (known: name, kind, url)"));
        }
        let text = |field: &str, max: usize| {
            fields
                .get(field)
                .and_then(Value::as_str)
                .filter(|s| !s.trim().is_empty() && s.len() <= max)
                .map(str::to_owned)
                .ok_or_else(|| {
                    fault(
                        field,
                        &format!("required: from 1 to {max} bytes, not blank"),
                    )
                })
        };
        let name = text("name", 200)?;
        let kind = text("kind", 32)?;
        if kind != "webhook" {
            return Err(fault("kind", "`webhook` (other kinds are not built yet)"));
        }
        let url = text("url", 2048)?;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(fault("url", "an http:// or https:// URL"));
        }
        Ok(Self {
            id: id.to_owned(),
            name,
            kind,
            url,
            created_at: at,
        })
    }

    /// The channel as `GET` shows it.
    pub fn to_json(&self) -> Value {
        json!({"id": self.id, "name": self.name, "kind": self.kind, "url": self.url,
               "created_at": self.created_at.to_rfc3339()})
    }
}

/// One notification of one transition to one channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// The dedupe id: the same on every member and across retries.
    pub id: String,
    pub channel_id: String,
    pub rule_id: String,
    pub fingerprint: String,
    pub key: String,
    /// `firing` or `resolved`.
    pub state: String,
    /// The minute end of the transition.
    pub at: Micros,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    pub attempts: u32,
    /// When it is due (again).
    pub next_at: Micros,
    /// `pending`, `sent` or `failed`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl Notification {
    /// The notification of `transition` to `channel_id`.
    pub fn of(transition: &HistoryEntry, channel_id: &str) -> Self {
        let seed = format!(
            "{}\0{}\0{}\0{channel_id}",
            transition.fingerprint,
            transition.state,
            transition.at.get()
        );
        Self {
            id: format!("{:032x}", XxHash3_128::oneshot(seed.as_bytes())),
            channel_id: channel_id.to_owned(),
            rule_id: transition.rule_id.clone(),
            fingerprint: transition.fingerprint.clone(),
            key: transition.key.clone(),
            state: transition.state.clone(),
            at: transition.at,
            value: transition.value,
            threshold: transition.threshold,
            attempts: 0,
            next_at: transition.at,
            status: "pending".into(),
            last_error: None,
        }
    }

    /// Records an attempt at `at`: sent, or failed with `error` (retried
    /// later, or given up).
    pub fn attempted(&mut self, at: Micros, error: Option<&str>) {
        self.attempts += 1;
        match error {
            None => {
                self.status = "sent".into();
                self.last_error = None;
            }
            Some(e) => {
                self.last_error = Some(e.chars().take(500).collect());
                let backoff = FIRST_BACKOFF_US
                    .saturating_mul(1 << self.attempts.min(20).saturating_sub(1))
                    .min(MAX_BACKOFF_US);
                self.next_at = at.saturating_add_micros(backoff);
                if at.get() - self.at.get() >= GIVE_UP_AFTER_US {
                    self.status = "failed".into();
                }
            }
        }
    }

    /// Whether it is kept at `now`: pending, or done within the last day.
    pub fn kept_at(&self, now: Micros) -> bool {
        self.status == "pending" || now.get() - self.next_at.get() < KEEP_DONE_US
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transition() -> HistoryEntry {
        HistoryEntry {
            at: Micros::new(60_000_000),
            fingerprint: "f".into(),
            rule_id: "r".into(),
            key: "GET /a".into(),
            state: "firing".into(),
            value: Some(1.0),
            threshold: Some(0.5),
        }
    }

    #[test]
    fn a_notification_has_one_id_per_transition_and_channel_and_backs_off() {
        let (a, b) = (
            Notification::of(&transition(), "c1"),
            Notification::of(&transition(), "c2"),
        );
        assert_ne!(a.id, b.id);
        assert_eq!(a.id, Notification::of(&transition(), "c1").id);
        let mut n = a;
        n.attempted(Micros::new(60_000_000), Some("connection refused"));
        assert_eq!((n.status.as_str(), n.attempts), ("pending", 1));
        assert_eq!(n.next_at.get(), 65_000_000);
        n.attempted(Micros::new(65_000_000), Some("again"));
        assert_eq!(n.next_at.get(), 75_000_000);
        n.attempted(Micros::new(75_000_000), None);
        assert_eq!(n.status, "sent");
        let mut late = Notification::of(&transition(), "c3");
        late.attempted(Micros::new(60_000_000 + GIVE_UP_AFTER_US), Some("down"));
        assert_eq!(late.status, "failed");
    }
}
