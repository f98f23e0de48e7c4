//! The alerting state a node keeps, changed only by [`Change`]s applied in
//! order (on a cluster, every member applies the same changes from the Raft
//! log): the rules, and each series' state. The leader reads its store and
//! proposes what each rule's series read at a minute's end
//! ([`Change::Evaluated`]); applying it steps the series, so every member
//! reaches the same alerts and the same history.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use toplog_types::Micros;

use crate::channel::{Channel, Tested};
use crate::evaluate::Evaluation;
use crate::outbox::{FALLBACK_AFTER_ATTEMPTS, GIVE_UP_AFTER_US, Notification};
use crate::series::{Series, SeriesState, Transition, fingerprint};
use crate::silence::Silence;
use crate::{Rule, RuleError};

mod notify;

/// Rules a node keeps at most.
pub const MAX_RULES: usize = 2_000;
/// Channels a node keeps at most.
pub const MAX_CHANNELS: usize = 200;
/// Silences a node keeps at most (expired ones are dropped a day after).
pub const MAX_SILENCES: usize = 1_000;
/// An expired silence is kept (shown) this long.
const KEEP_EXPIRED_US: i64 = 86_400_000_000;

/// A rule as kept: its id, its JSON as written (checked), and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredRule {
    pub id: String,
    pub rule: Value,
    pub created_at: Micros,
    pub updated_at: Micros,
}

/// A key's reading at a minute's end, as the leader proposes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Judged {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// None: no judgement (the series keeps its state).
    pub holds: Option<bool>,
}

impl From<Evaluation> for Judged {
    fn from(e: Evaluation) -> Self {
        Self {
            key: e.key,
            value: e.value,
            threshold: e.threshold,
            holds: e.holds,
        }
    }
}

/// A change of the alerting state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Change {
    PutRule(StoredRule),
    DeleteRule {
        id: String,
        /// When it was removed: its alerts end then.
        #[serde(default)]
        at: Micros,
    },
    /// Rule `rule_id`, as it stood when last changed at `rule_updated_at`,
    /// judged at minute end `at`; a judgement of a rule changed since is
    /// ignored.
    Evaluated {
        rule_id: String,
        #[serde(default)]
        rule_updated_at: Micros,
        at: Micros,
        judged: Vec<Judged>,
    },
    Ack {
        fingerprint: String,
        at: Micros,
    },
    PutChannel(Channel),
    DeleteChannel {
        id: String,
    },
    /// The leader tried to send notification `id` at `at`: sent, or the error.
    Attempt {
        id: String,
        at: Micros,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// Channel `channel_id` was sent a test at `at`: delivered, or the error.
    Tested {
        channel_id: String,
        at: Micros,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    PutSilence(Silence),
    /// Silence `id` ended (removed) at `at`.
    DeleteSilence {
        id: String,
        at: Micros,
    },
}

/// A series' alert, while it is pending or firing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub fingerprint: String,
    pub rule_id: String,
    pub key: String,
    pub state: String,
    /// When the series went pending (or firing, with no `for`).
    pub since: Micros,
    /// When it started firing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Micros>,
    /// The condition last held at.
    pub last_held: Micros,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    #[serde(default)]
    pub acked: bool,
    /// When a firing notification was last made for it (repeats go by it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notified_at: Option<Micros>,
}

/// One transition, as history keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub at: Micros,
    pub fingerprint: String,
    pub rule_id: String,
    pub key: String,
    /// `pending`, `inactive`, `firing` or `resolved`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// The silence that kept it from being notified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub silenced_by: Option<String>,
}

/// Why a change was not made (the state is as it was).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Rule(#[from] RuleError),
    #[error("no rule {0}")]
    NoRule(String),
    #[error("no alert {0} is pending or firing")]
    NoAlert(String),
    #[error("at most {max} {what}")]
    TooMany { what: &'static str, max: usize },
    #[error("no channel {0}")]
    NoChannel(String),
    #[error("no silence {0}")]
    NoSilence(String),
    #[error("channel {channel} is in use by rule {rule}: change the rule first")]
    ChannelInUse { channel: String, rule: String },
}

/// The rules and their series' alerts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AlertState {
    pub rules: BTreeMap<String, StoredRule>,
    /// Pending and firing series, by fingerprint.
    pub alerts: BTreeMap<String, Alert>,
    /// Per rule, the last minute end judged (a repeat is ignored).
    #[serde(default)]
    pub judged_through: BTreeMap<String, Micros>,
    #[serde(default)]
    pub channels: BTreeMap<String, Channel>,
    /// Notifications pending, and those sent or failed in the last day.
    #[serde(default)]
    pub outbox: BTreeMap<String, Notification>,
    #[serde(default)]
    pub silences: BTreeMap<String, Silence>,
}

impl AlertState {
    /// The rule `id`, checked.
    pub fn rule(&self, id: &str) -> Option<Rule> {
        self.rules.get(id).and_then(|r| Rule::parse(&r.rule).ok())
    }

    /// Applies `change`; the transitions it made.
    pub fn apply(&mut self, change: &Change) -> Result<Vec<HistoryEntry>, StateError> {
        match change {
            Change::PutRule(stored) => {
                let rule = Rule::parse(&stored.rule)?;
                self.check_channels(&rule)?;
                let exists = self.rules.contains_key(&stored.id);
                // A change of a rule removed meanwhile does not bring it back
                // (a rule made new has the same made and changed times).
                if !exists && stored.created_at != stored.updated_at {
                    return Err(StateError::NoRule(stored.id.clone()));
                }
                if !exists && self.rules.len() >= MAX_RULES {
                    return Err(StateError::TooMany {
                        what: "rules",
                        max: MAX_RULES,
                    });
                }
                // A changed rule starts its series afresh.
                let old = self.rule(&stored.id);
                let unannounced = self.unannounced(&stored.id);
                let mut ended = self.forget_series(&stored.id, stored.updated_at);
                if let Some(old) = old {
                    self.notify(&stored.id, &old, &mut ended, &unannounced);
                }
                self.rules.insert(stored.id.clone(), stored.clone());
                Ok(ended)
            }
            Change::DeleteRule { id, at } => {
                let old = self.rule(id);
                self.rules
                    .remove(id)
                    .ok_or_else(|| StateError::NoRule(id.clone()))?;
                let unannounced = self.unannounced(id);
                let mut ended = self.forget_series(id, *at);
                if let Some(old) = old {
                    self.notify(id, &old, &mut ended, &unannounced);
                }
                Ok(ended)
            }
            Change::PutChannel(channel) => {
                if !self.channels.contains_key(&channel.id) && self.channels.len() >= MAX_CHANNELS {
                    return Err(StateError::TooMany {
                        what: "channels",
                        max: MAX_CHANNELS,
                    });
                }
                self.channels.insert(channel.id.clone(), channel.clone());
                Ok(Vec::new())
            }
            Change::Tested {
                channel_id,
                at,
                error,
            } => {
                let channel = (self.channels.get_mut(channel_id))
                    .ok_or_else(|| StateError::NoChannel(channel_id.clone()))?;
                channel.last_test = Some(Tested {
                    at: *at,
                    error: error.clone(),
                });
                Ok(Vec::new())
            }
            Change::PutSilence(silence) => {
                if !self.silences.contains_key(&silence.id) && self.silences.len() >= MAX_SILENCES {
                    return Err(StateError::TooMany {
                        what: "silences",
                        max: MAX_SILENCES,
                    });
                }
                self.silences.insert(silence.id.clone(), silence.clone());
                Ok(Vec::new())
            }
            Change::DeleteSilence { id, .. } => {
                self.silences
                    .remove(id)
                    .ok_or_else(|| StateError::NoSilence(id.clone()))?;
                Ok(Vec::new())
            }
            Change::DeleteChannel { id } => {
                if !self.channels.contains_key(id) {
                    return Err(StateError::NoChannel(id.clone()));
                }
                if let Some((rule, _)) = (self.rules.iter())
                    .find(|(r, _)| self.rule(r).is_some_and(|rule| rule.notifies(id)))
                {
                    return Err(StateError::ChannelInUse {
                        channel: id.clone(),
                        rule: rule.clone(),
                    });
                }
                self.channels.remove(id);
                for n in self.outbox.values_mut() {
                    if n.channel_id == *id && n.status == "pending" {
                        n.status = "failed".into();
                        n.last_error = Some(format!("channel {id} was removed"));
                    }
                }
                Ok(Vec::new())
            }
            Change::Attempt { id, at, error } => {
                // A channel that keeps failing: the rule's fallbacks get it.
                let give_up = |channel: &str| {
                    (self.channels.get(channel))
                        .and_then(|c| c.give_up_after_minutes)
                        .map_or(GIVE_UP_AFTER_US, |m| i64::from(m) * 60_000_000)
                };
                let give_up_us = self.outbox.get(id).map(|n| give_up(&n.channel_id));
                let failing = match self.outbox.get_mut(id) {
                    Some(n) if n.status == "pending" => {
                        let give_up_us = give_up_us.unwrap_or(GIVE_UP_AFTER_US);
                        n.attempted(*at, error.as_deref(), give_up_us);
                        (error.is_some()
                            && (n.attempts == FALLBACK_AFTER_ATTEMPTS || n.status == "failed")
                            && n.fallback_for.is_none())
                        .then(|| n.clone())
                    }
                    _ => None,
                };
                if let Some(n) = failing
                    && let Some(rule) = self.rule(&n.rule_id)
                {
                    for channel in (rule.fallback_channels.iter()).filter(|c| **c != n.channel_id) {
                        self.enqueue(n.fallback(channel, *at));
                    }
                }
                self.outbox.retain(|_, n| n.kept_at(*at));
                Ok(Vec::new())
            }
            Change::Ack { fingerprint, .. } => {
                let alert = self
                    .alerts
                    .get_mut(fingerprint)
                    .ok_or_else(|| StateError::NoAlert(fingerprint.clone()))?;
                alert.acked = true;
                Ok(Vec::new())
            }
            Change::Evaluated {
                rule_id,
                rule_updated_at,
                at,
                judged,
            } => {
                let rule = self
                    .rule(rule_id)
                    .ok_or_else(|| StateError::NoRule(rule_id.clone()))?;
                let current = self.rules.get(rule_id).map(|r| r.updated_at);
                if current != Some(*rule_updated_at)
                    || self.judged_through.get(rule_id).is_some_and(|t| t >= at)
                {
                    return Ok(Vec::new());
                }
                self.judged_through.insert(rule_id.clone(), *at);
                self.silences
                    .retain(|_, s| at.get() - s.ends_at.get() < KEEP_EXPIRED_US);
                let unannounced = self.unannounced(rule_id);
                let mut made: Vec<HistoryEntry> = judged
                    .iter()
                    .filter_map(|j| self.step(rule_id, &rule, *at, j))
                    .collect();
                self.notify(rule_id, &rule, &mut made, &unannounced);
                self.remind(rule_id, &rule, *at);
                Ok(made)
            }
        }
    }

    /// Refuses a rule naming a channel that does not exist, naming the field.
    fn check_channels(&self, rule: &Rule) -> Result<(), RuleError> {
        for (field, ids) in [
            ("channels", &rule.channels),
            ("fallback_channels", &rule.fallback_channels),
        ] {
            if let Some((i, id)) =
                (ids.iter().enumerate()).find(|(_, id)| !self.channels.contains_key(*id))
            {
                return Err(RuleError {
                    field: format!("{field}[{i}]"),
                    reason: format!("no channel `{id}`: make it first (/api/v1/alerts/channels)"),
                });
            }
        }
        Ok(())
    }

    /// Drops the rule's series (changed or removed at `at`): history ends
    /// each alert, a firing one as resolved.
    fn forget_series(&mut self, rule_id: &str, at: Micros) -> Vec<HistoryEntry> {
        let (gone, kept): (BTreeMap<_, _>, BTreeMap<_, _>) = std::mem::take(&mut self.alerts)
            .into_iter()
            .partition(|(_, a)| a.rule_id == rule_id);
        self.alerts = kept;
        self.judged_through.remove(rule_id);
        gone.into_values()
            .map(|a| HistoryEntry {
                at,
                fingerprint: a.fingerprint,
                rule_id: a.rule_id,
                key: a.key,
                state: if a.started_at.is_some() {
                    Transition::Resolved.name()
                } else {
                    Transition::Cleared.name()
                }
                .to_owned(),
                value: None,
                threshold: None,
                silenced_by: None,
            })
            .collect()
    }

    /// Steps one series; the transition, if any.
    fn step(&mut self, rule_id: &str, rule: &Rule, at: Micros, j: &Judged) -> Option<HistoryEntry> {
        let fp = fingerprint(rule_id, &j.key);
        let mut series = Series {
            key: j.key.clone(),
            state: match self.alerts.get(&fp) {
                None => SeriesState::Inactive,
                Some(a) => match a.started_at {
                    Some(since) => SeriesState::Firing {
                        since,
                        last_held: a.last_held,
                    },
                    None => SeriesState::Pending { since: a.since },
                },
            },
        };
        let transition = series.step(at, j.holds, rule.for_minutes, rule.keep_firing_for_minutes);
        let before = self.alerts.get(&fp);
        // Set when a firing is put in the outbox (not if silenced).
        let notified_at = if transition == Some(Transition::Firing) {
            None
        } else {
            before.and_then(|a| a.notified_at)
        };
        let alert = |state: &str, since, started_at, last_held, value, acked| Alert {
            fingerprint: fp.clone(),
            rule_id: rule_id.to_owned(),
            key: j.key.clone(),
            state: state.into(),
            since,
            started_at,
            last_held,
            value,
            threshold: j.threshold,
            acked,
            notified_at,
        };
        let next = match series.state {
            SeriesState::Inactive => None,
            SeriesState::Pending { since } => {
                Some(alert("pending", since, None, at, j.value, false))
            }
            SeriesState::Firing { since, last_held } => Some(alert(
                "firing",
                before.map_or(since, |a| a.since),
                Some(since),
                last_held,
                j.value.or(before.and_then(|a| a.value)),
                before.is_some_and(|a| a.acked) && transition != Some(Transition::Firing),
            )),
        };
        match next {
            Some(a) => self.alerts.insert(fp.clone(), a),
            None => self.alerts.remove(&fp),
        };
        transition.map(|t| HistoryEntry {
            at,
            fingerprint: fp,
            rule_id: rule_id.to_owned(),
            key: j.key.clone(),
            state: t.name().to_owned(),
            value: j.value,
            threshold: j.threshold,
            silenced_by: None,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    pub(super) const MIN: i64 = 60_000_000;

    pub(super) fn put(id: &str, rule: Value) -> Change {
        Change::PutRule(StoredRule {
            id: id.into(),
            rule,
            created_at: Micros::new(0),
            updated_at: Micros::new(0),
        })
    }

    pub(super) fn judged(minute: i64, key: &str, value: f64) -> Change {
        Change::Evaluated {
            rule_id: "r1".into(),
            rule_updated_at: Micros::new(0),
            at: Micros::new(minute * MIN),
            judged: vec![Judged {
                key: key.into(),
                value: Some(value),
                threshold: Some(10.0),
                holds: Some(value > 10.0),
            }],
        }
    }

    #[test]
    fn applying_the_same_changes_reaches_the_same_alerts_and_history() {
        let rule = json!({"name": "e", "metric": "errors", "by": "endpoint", "op": ">",
                          "threshold": 10, "for": "1m"});
        let changes = vec![
            put("r1", rule),
            judged(1, "GET /a", 12.0),
            judged(2, "GET /a", 15.0),
            judged(2, "GET /a", 99.0), // a repeat of minute 2: ignored
            judged(3, "GET /a", 3.0),
        ];
        let run = || {
            let mut state = AlertState::default();
            let mut history = Vec::new();
            for c in &changes {
                history.extend(state.apply(c).unwrap());
            }
            (state, history)
        };
        let (a, history) = run();
        assert_eq!(run().0, a);
        let states: Vec<&str> = history.iter().map(|h| h.state.as_str()).collect();
        assert_eq!(states, ["pending", "firing", "resolved"]);
        assert!(a.alerts.is_empty());
        // Its JSON reads back the same.
        let back: AlertState = serde_json::from_value(serde_json::to_value(&a).unwrap()).unwrap();
        assert_eq!(back, a);
    }

    #[test]
    fn an_ack_holds_while_firing_and_a_bad_change_changes_nothing() {
        let mut state = AlertState::default();
        state
            .apply(&put(
                "r1",
                json!({"name": "e", "metric": "errors", "op": ">", "threshold": 10}),
            ))
            .unwrap();
        state.apply(&judged(1, "", 20.0)).unwrap();
        let fp = fingerprint("r1", "");
        assert_eq!(state.alerts[&fp].state, "firing");
        state
            .apply(&Change::Ack {
                fingerprint: fp.clone(),
                at: Micros::new(0),
            })
            .unwrap();
        state.apply(&judged(2, "", 30.0)).unwrap();
        assert!(state.alerts[&fp].acked);
        let before = state.clone();
        assert!(state.apply(&put("r2", json!({"name": "x"}))).is_err());
        assert!(
            state
                .apply(&Change::DeleteRule {
                    id: "nope".into(),
                    at: Micros::new(0),
                })
                .is_err()
        );
        assert_eq!(state, before);
        state
            .apply(&Change::DeleteRule {
                id: "r1".into(),
                at: Micros::new(0),
            })
            .unwrap();
        assert!(state.alerts.is_empty() && state.rules.is_empty());
    }

    #[test]
    fn a_judgement_of_a_rule_changed_since_is_ignored_and_a_removed_rule_stays_removed() {
        let mut state = AlertState::default();
        let rule = json!({"name": "e", "metric": "errors", "op": ">", "threshold": 10});
        state.apply(&put("r1", rule.clone())).unwrap();
        state.apply(&judged(1, "", 20.0)).unwrap();
        // Changed at minute 2: its firing alert ends in history, resolved.
        let changed = StoredRule {
            id: "r1".into(),
            rule: rule.clone(),
            created_at: Micros::new(0),
            updated_at: Micros::new(2 * MIN),
        };
        let ended = state.apply(&Change::PutRule(changed)).unwrap();
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].state, "resolved");
        // A judgement made under the rule as it was (updated at 0): ignored.
        assert!(state.apply(&judged(3, "", 20.0)).unwrap().is_empty());
        assert!(state.alerts.is_empty());
        // Removed, then a change that raced the removal: refused.
        state
            .apply(&Change::DeleteRule {
                id: "r1".into(),
                at: Micros::new(4 * MIN),
            })
            .unwrap();
        let late = StoredRule {
            id: "r1".into(),
            rule,
            created_at: Micros::new(0),
            updated_at: Micros::new(5 * MIN),
        };
        assert_eq!(
            state.apply(&Change::PutRule(late)),
            Err(StateError::NoRule("r1".into()))
        );
    }
}
