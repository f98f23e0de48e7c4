//! The durable outbox. The notified transitions (firing, resolved) of a
//! rule's series in one minute put one notification per channel of the rule
//! in the outbox, with an id every member derives alike (the dedupe id
//! receivers see). The leader sends what is due and records each
//! attempt's outcome as a change; a crash between sending and recording
//! sends again under the same id. Retried with backoff, given up after
//! [`GIVE_UP_AFTER_US`]; sent and failed ones are kept a day for history.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use toplog_types::Micros;
use twox_hash::XxHash3_128;

use crate::silence::alert_labels;
use crate::{Rule, fingerprint};

/// A notification is given up this long after it was first due, unless
/// its channel says otherwise (`give_up_after`).
pub const GIVE_UP_AFTER_US: i64 = 24 * 3_600_000_000;
/// A rule's fallback channels get a notification its channel failed this
/// many times.
pub const FALLBACK_AFTER_ATTEMPTS: u32 = 3;
/// Sent and failed notifications are kept this long.
const KEEP_DONE_US: i64 = 24 * 3_600_000_000;
/// The first retry after this; doubling, at most [`MAX_BACKOFF_US`].
const FIRST_BACKOFF_US: i64 = 5_000_000;
const MAX_BACKOFF_US: i64 = 600_000_000;

/// One alert in a notification, as it stood when the notification was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notified {
    pub fingerprint: String,
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    pub description: String,
    pub labels: BTreeMap<String, String>,
}

impl Notified {
    /// Rule `rule_id`'s alert for `key`.
    pub fn of(
        rule: &Rule,
        rule_id: &str,
        key: &str,
        value: Option<f64>,
        threshold: Option<f64>,
    ) -> Self {
        Self {
            fingerprint: fingerprint(rule_id, key),
            key: key.to_owned(),
            value,
            threshold,
            description: rule.describe(
                key,
                value.unwrap_or(f64::NAN),
                threshold.unwrap_or(f64::NAN),
            ),
            labels: alert_labels(rule, rule_id, key),
        }
    }
}

/// One message to one channel: the alerts of one rule that changed state
/// alike in one minute (grouped), a repeat of those still firing, or a
/// channel's test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// The dedupe id: the same on every member and across retries.
    pub id: String,
    pub channel_id: String,
    pub rule_id: String,
    /// The rule's name and severity when it was made.
    #[serde(default)]
    pub rule: String,
    #[serde(default)]
    pub severity: String,
    /// `firing`, `resolved` or `test`.
    pub state: String,
    /// A reminder of alerts still firing.
    #[serde(default)]
    pub repeat: bool,
    /// The minute end of the transition.
    pub at: Micros,
    #[serde(default)]
    pub alerts: Vec<Notified>,
    /// The channel this one stands in for (a rule's fallback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_for: Option<String>,
    /// The one recipient of an SMS channel it goes to (each has its own
    /// notification, so a retry texts only who did not get it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    pub attempts: u32,
    /// When it is due (again).
    pub next_at: Micros,
    /// `pending`, `sent` or `failed`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl Notification {
    /// The notification of rule `rule_id`'s `alerts`, which went `state` at
    /// `at` (or, `repeat`, still fire), to `channel_id`.
    pub fn of(
        rule: &Rule,
        rule_id: &str,
        state: &str,
        repeat: bool,
        at: Micros,
        alerts: Vec<Notified>,
        channel_id: &str,
    ) -> Self {
        let mut n = Self {
            rule_id: rule_id.to_owned(),
            rule: rule.name.clone(),
            severity: rule.severity.name().to_owned(),
            state: state.to_owned(),
            repeat,
            alerts,
            ..Self::pending(channel_id, at)
        };
        n.id = n.derive_id();
        n
    }

    /// Its dedupe id, from what it tells (rule, state, minute, alerts) and
    /// where it goes (channel, as a fallback or not, recipient): the same
    /// on every member. A fallback's does not depend on the channel that
    /// failed, so two that fail send one.
    fn derive_id(&self) -> String {
        let mut seed = format!(
            "{}\0{}\0{}\0{}",
            self.rule_id,
            self.state,
            self.repeat,
            self.at.get()
        );
        for a in &self.alerts {
            seed.push('\0');
            seed.push_str(&a.fingerprint);
        }
        seed.push_str(&format!("\0{}", self.channel_id));
        if self.fallback_for.is_some() {
            seed.push_str("\0fallback");
        }
        if let Some(r) = &self.recipient {
            seed.push_str(&format!("\0to\0{r}"));
        }
        format!("{:032x}", XxHash3_128::oneshot(seed.as_bytes()))
    }

    /// This notification to one `recipient` of its channel.
    pub fn for_recipient(&self, recipient: &str) -> Self {
        let mut n = Self {
            recipient: Some(recipient.to_owned()),
            ..self.clone()
        };
        n.id = n.derive_id();
        n
    }

    /// A test of channel `channel_id` at `at` (not kept in the outbox).
    pub fn test(channel_id: &str, at: Micros) -> Self {
        let mut n = Self {
            rule: "toplog test".into(),
            severity: "info".into(),
            state: "test".into(),
            ..Self::pending(channel_id, at)
        };
        n.id = n.derive_id();
        n
    }

    /// Nothing yet, to `channel_id`, due at `at`.
    fn pending(channel_id: &str, at: Micros) -> Self {
        Self {
            id: String::new(),
            channel_id: channel_id.to_owned(),
            rule_id: String::new(),
            rule: String::new(),
            severity: String::new(),
            state: String::new(),
            repeat: false,
            at,
            alerts: Vec::new(),
            fallback_for: None,
            recipient: None,
            attempts: 0,
            next_at: at,
            status: "pending".into(),
            last_error: None,
        }
    }

    /// This notification sent instead to fallback channel `channel_id`,
    /// due at `at`.
    pub fn fallback(&self, channel_id: &str, at: Micros) -> Self {
        let mut n = Self {
            channel_id: channel_id.to_owned(),
            fallback_for: Some(self.channel_id.clone()),
            recipient: None,
            attempts: 0,
            next_at: at,
            status: "pending".into(),
            last_error: None,
            ..self.clone()
        };
        n.id = n.derive_id();
        n
    }

    /// Records an attempt at `at`: sent, or failed with `error` (retried
    /// later, or given up `give_up_us` after it was first due).
    pub fn attempted(&mut self, at: Micros, error: Option<&str>, give_up_us: i64) {
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
                if at.get() - self.at.get() >= give_up_us {
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
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn notification(channel: &str) -> Notification {
        let rule = Rule::parse(
            &serde_json::json!({"name": "e", "metric": "errors", "by": "endpoint",
                                                   "op": ">", "threshold": 0.5}),
        )
        .unwrap();
        let alerts = vec![Notified::of(&rule, "r", "GET /a", Some(1.0), Some(0.5))];
        Notification::of(
            &rule,
            "r",
            "firing",
            false,
            Micros::new(60_000_000),
            alerts,
            channel,
        )
    }

    #[test]
    fn a_notification_has_one_id_per_transition_and_channel_and_backs_off() {
        let (a, b) = (notification("c1"), notification("c2"));
        assert_ne!(a.id, b.id);
        assert_eq!(a.id, notification("c1").id);
        assert_eq!(a.alerts[0].labels["endpoint"], "GET /a");
        let fallback = a.fallback("c2", Micros::new(0));
        assert_ne!(
            (fallback.id.as_str(), fallback.fallback_for.as_deref()),
            (b.id.as_str(), None)
        );
        let mut n = a;
        n.attempted(
            Micros::new(60_000_000),
            Some("connection refused"),
            GIVE_UP_AFTER_US,
        );
        assert_eq!((n.status.as_str(), n.attempts), ("pending", 1));
        assert_eq!(n.next_at.get(), 65_000_000);
        n.attempted(Micros::new(65_000_000), Some("again"), GIVE_UP_AFTER_US);
        assert_eq!(n.next_at.get(), 75_000_000);
        n.attempted(Micros::new(75_000_000), None, GIVE_UP_AFTER_US);
        assert_eq!(n.status, "sent");
        let mut late = notification("c3");
        late.attempted(
            Micros::new(60_000_000 + GIVE_UP_AFTER_US),
            Some("down"),
            GIVE_UP_AFTER_US,
        );
        let mut soon = notification("c4");
        soon.attempted(Micros::new(120_000_000), Some("down"), 60_000_000);
        assert_eq!(soon.status, "failed"); // the channel gives up after a minute
        assert_eq!(late.status, "failed");
    }
}
