//! How the state's changes notify: a rule's transitions in one minute
//! grouped into one notification per channel (silenced ones marked and
//! left out), reminders of alerts still firing, and the outbox they go in
//! (an SMS channel's once per recipient).

use std::collections::BTreeSet;

use toplog_types::Micros;

use super::{Alert, AlertState, HistoryEntry};
use crate::Rule;
use crate::channel::Delivery;
use crate::outbox::{Notification, Notified};

impl AlertState {
    /// Rule `rule_id`'s alerts whose firing no one was told of (it was
    /// silenced): their resolution is not told either.
    pub(super) fn unannounced(&self, rule_id: &str) -> BTreeSet<String> {
        (self.alerts.values())
            .filter(|a| a.rule_id == rule_id && a.started_at.is_some() && a.notified_at.is_none())
            .map(|a| a.fingerprint.clone())
            .collect()
    }

    /// Puts the transitions in `made` (one rule's, at one time) that are
    /// notified (firing, resolved) and not silenced in the outbox: one
    /// notification per state for each of `rule`'s channels that exists.
    /// Marks the silenced ones; leaves out the resolutions of alerts in
    /// `unannounced`.
    pub(super) fn notify(
        &mut self,
        rule_id: &str,
        rule: &Rule,
        made: &mut [HistoryEntry],
        unannounced: &BTreeSet<String>,
    ) {
        for state in ["firing", "resolved"] {
            let mut alerts = Vec::new();
            let mut at = None;
            for h in made.iter_mut().filter(|h| h.state == state) {
                let n = Notified::of(rule, rule_id, &h.key, h.value, h.threshold);
                if let Some(s) = self.silences.values().find(|s| s.silences(&n.labels, h.at)) {
                    h.silenced_by = Some(s.id.clone());
                    continue;
                }
                if state == "resolved" && unannounced.contains(&h.fingerprint) {
                    continue;
                }
                if let Some(a) = self.alerts.get_mut(&h.fingerprint) {
                    a.notified_at = Some(h.at);
                }
                at = Some(h.at);
                alerts.push(n);
            }
            if let Some(at) = at {
                self.send(rule_id, rule, state, false, at, &alerts);
            }
        }
    }

    /// Tells of `rule`'s alerts that still fire and are not silenced at
    /// `at`: those no one was told of (silenced when they fired), and, with
    /// `repeat_every`, those not acknowledged told of at least that long
    /// before (a reminder).
    pub(super) fn remind(&mut self, rule_id: &str, rule: &Rule, at: Micros) {
        let every = i64::from(rule.repeat_every_minutes) * 60_000_000;
        let (mut first, mut again) = (Vec::new(), Vec::new());
        for a in self.alerts.values_mut() {
            if a.rule_id != rule_id || a.state != "firing" {
                continue;
            }
            let untold = a.notified_at.is_none();
            let owed =
                every > 0 && !a.acked && a.notified_at.is_some_and(|t| at.get() - t.get() >= every);
            if !untold && !owed {
                continue;
            }
            let n = Notified::of(rule, rule_id, &a.key, a.value, a.threshold);
            if self.silences.values().any(|s| s.silences(&n.labels, at)) {
                continue;
            }
            a.notified_at = Some(at);
            if untold { first.push(n) } else { again.push(n) }
        }
        for (repeat, alerts) in [(false, first), (true, again)] {
            if !alerts.is_empty() {
                self.send(rule_id, rule, "firing", repeat, at, &alerts);
            }
        }
    }

    fn send(
        &mut self,
        rule_id: &str,
        rule: &Rule,
        state: &str,
        repeat: bool,
        at: Micros,
        alerts: &[Notified],
    ) {
        for channel in &rule.channels {
            self.enqueue(Notification::of(
                rule,
                rule_id,
                state,
                repeat,
                at,
                alerts.to_vec(),
                channel,
            ));
        }
    }

    /// Puts `n` in the outbox, once; an SMS channel's once per recipient.
    /// Nothing if its channel is gone.
    pub(super) fn enqueue(&mut self, n: Notification) {
        let recipients = match self.channels.get(&n.channel_id).map(|c| &c.delivery) {
            None => return,
            Some(Delivery::Sms { to, .. }) => to.clone(),
            Some(_) => Vec::new(),
        };
        let all = if recipients.is_empty() {
            vec![n]
        } else {
            recipients.iter().map(|r| n.for_recipient(r)).collect()
        };
        for n in all {
            self.outbox.entry(n.id.clone()).or_insert(n);
        }
    }

    /// Whether the alert `a` is silenced at `at`.
    pub fn silenced(&self, a: &Alert, at: Micros) -> bool {
        self.rule(&a.rule_id).is_some_and(|rule| {
            let labels = crate::silence::alert_labels(&rule, &a.rule_id, &a.key);
            self.silences.values().any(|s| s.silences(&labels, at))
        })
    }

    /// The notifications due at `now`, oldest first.
    pub fn due(&self, now: Micros) -> Vec<Notification> {
        let mut due: Vec<Notification> = (self.outbox.values())
            .filter(|n| n.status == "pending" && n.next_at <= now)
            .cloned()
            .collect();
        due.sort_by_key(|n| (n.next_at, n.id.clone()));
        due
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;
    use toplog_types::Micros;

    use super::super::tests::{MIN, judged, put};
    use crate::channel::Channel;
    use crate::fingerprint;
    use crate::silence::Silence;
    use crate::state::{AlertState, Change, Judged, StateError};

    #[test]
    fn notifications_group_by_minute_repeat_until_acked_skip_silences_and_fall_back() {
        let mut state = AlertState::default();
        for id in ["c1", "c2"] {
            let body = json!({"name": id, "kind": "webhook", "url": "http://127.0.0.1:1/"});
            let c = Channel::parse(id, &body, Micros::new(0), None).unwrap();
            state.apply(&Change::PutChannel(c)).unwrap();
        }
        let rule = json!({"name": "e", "metric": "errors", "by": "endpoint", "op": ">",
                          "threshold": 10, "channels": ["c1"], "fallback_channels": ["c2"],
                          "repeat_every": "2m"});
        // A rule naming a channel that is not there is refused, naming it.
        let mut unknown = rule.clone();
        unknown["fallback_channels"] = json!(["c9"]);
        match state.apply(&put("r1", unknown)) {
            Err(StateError::Rule(e)) => assert_eq!(e.field, "fallback_channels[0]"),
            other => panic!("{other:?}"),
        }
        state.apply(&put("r1", rule)).unwrap();
        // A channel a rule uses cannot be removed.
        assert!(matches!(
            state.apply(&Change::DeleteChannel { id: "c2".into() }),
            Err(StateError::ChannelInUse { .. })
        ));
        let minute = |m: i64, keys: &[(&str, f64)]| Change::Evaluated {
            rule_id: "r1".into(),
            rule_updated_at: Micros::new(0),
            at: Micros::new(m * MIN),
            judged: keys
                .iter()
                .map(|(k, v)| Judged {
                    key: (*k).into(),
                    value: Some(*v),
                    threshold: Some(10.0),
                    holds: Some(*v > 10.0),
                })
                .collect(),
        };
        // Two series fire in one minute: one message.
        state
            .apply(&minute(1, &[("GET /a", 20.0), ("GET /b", 30.0)]))
            .unwrap();
        assert_eq!(state.outbox.len(), 1);
        let first = state.outbox.values().next().unwrap().clone();
        assert_eq!((first.state.as_str(), first.alerts.len()), ("firing", 2));
        // Still firing two minutes on: a reminder; acknowledged, no more.
        state
            .apply(&minute(2, &[("GET /a", 20.0), ("GET /b", 30.0)]))
            .unwrap();
        assert_eq!(state.outbox.len(), 1);
        state
            .apply(&minute(3, &[("GET /a", 20.0), ("GET /b", 30.0)]))
            .unwrap();
        let repeats: Vec<_> = state.outbox.values().filter(|n| n.repeat).collect();
        assert_eq!((repeats.len(), repeats[0].alerts.len()), (1, 2));
        state
            .apply(&Change::Ack {
                fingerprint: fingerprint("r1", "GET /a"),
                at: Micros::new(0),
            })
            .unwrap();
        state
            .apply(&minute(5, &[("GET /a", 20.0), ("GET /b", 30.0)]))
            .unwrap();
        let repeats: Vec<_> = state
            .outbox
            .values()
            .filter(|n| n.repeat && n.at.get() == 5 * MIN)
            .collect();
        assert_eq!(
            repeats[0]
                .alerts
                .iter()
                .map(|a| a.key.as_str())
                .collect::<Vec<_>>(),
            ["GET /b"]
        );
        // A silence on GET /a: its resolution is kept in history, marked, and
        // notifies no one; GET /b's does.
        let silence = Silence::parse(
            "s1",
            &json!({"matchers": [{"name": "endpoint", "value": "GET /a"}],
                                                  "ends_at": (10 * MIN / 1000).to_string()}),
            Micros::new(5 * MIN),
        )
        .unwrap();
        state.apply(&Change::PutSilence(silence)).unwrap();
        let made = state
            .apply(&minute(6, &[("GET /a", 1.0), ("GET /b", 1.0)]))
            .unwrap();
        let silenced: Vec<_> = made
            .iter()
            .map(|h| (h.key.as_str(), h.silenced_by.as_deref()))
            .collect();
        assert_eq!(silenced, [("GET /a", Some("s1")), ("GET /b", None)]);
        let resolved: Vec<_> = state
            .outbox
            .values()
            .filter(|n| n.state == "resolved")
            .collect();
        assert_eq!(resolved.len(), 1);
        assert_eq!(
            resolved[0]
                .alerts
                .iter()
                .map(|a| a.key.as_str())
                .collect::<Vec<_>>(),
            ["GET /b"]
        );
        // c1 fails three times: c2 gets the message, once.
        let id = first.id.clone();
        for n in 0..4 {
            let failed = Change::Attempt {
                id: id.clone(),
                at: Micros::new((7 + n) * MIN),
                error: Some("down".into()),
            };
            state.apply(&failed).unwrap();
        }
        let fallbacks: Vec<_> = state
            .outbox
            .values()
            .filter(|n| n.fallback_for.is_some())
            .collect();
        assert_eq!(fallbacks.len(), 1);
        assert_eq!(
            (fallbacks[0].channel_id.as_str(), fallbacks[0].alerts.len()),
            ("c2", 2)
        );
    }

    #[test]
    fn a_firing_silenced_is_told_once_the_silence_ends_and_sms_goes_per_recipient() {
        let mut state = AlertState::default();
        let sms = json!({"name": "pager", "kind": "sms", "account": "AC1", "token": "t",
                         "from": "+1555", "to": ["+1556", "+1557"]});
        let c = Channel::parse("c1", &sms, Micros::new(0), None).unwrap();
        state.apply(&Change::PutChannel(c)).unwrap();
        let hook = json!({"name": "hook", "kind": "webhook", "url": "http://127.0.0.1:1/",
                          "give_up_after": "1m"});
        let c = Channel::parse("c2", &hook, Micros::new(0), None).unwrap();
        state.apply(&Change::PutChannel(c)).unwrap();
        let rule = json!({"name": "e", "metric": "errors", "op": ">", "threshold": 10,
                          "channels": ["c2", "c1"], "fallback_channels": ["c1"]});
        state.apply(&put("r1", rule)).unwrap();
        let silence = Silence::parse(
            "s1",
            &json!({"matchers": [{"name": "alertname", "value": "e"}],
                    "ends_at": (3 * MIN / 1000).to_string()}),
            Micros::new(0),
        )
        .unwrap();
        state.apply(&Change::PutSilence(silence)).unwrap();
        let made = state.apply(&judged(1, "", 20.0)).unwrap();
        assert_eq!(made[0].silenced_by.as_deref(), Some("s1"));
        assert!(state.outbox.is_empty());
        state.apply(&judged(2, "", 20.0)).unwrap();
        assert!(state.outbox.is_empty(), "still silenced");
        // The silence ended: the firing is told, once, to each recipient.
        state.apply(&judged(3, "", 20.0)).unwrap();
        state.apply(&judged(4, "", 20.0)).unwrap();
        let told: Vec<(&str, Option<&str>, bool)> = (state.outbox.values())
            .map(|n| (n.channel_id.as_str(), n.recipient.as_deref(), n.repeat))
            .collect();
        assert_eq!(told.len(), 3, "{told:?}");
        assert!(
            told.contains(&("c1", Some("+1556"), false))
                && told.contains(&("c1", Some("+1557"), false))
        );
        // The webhook gives up after a minute: the fallback (the SMS
        // channel) gets it under ids of its own, one per recipient.
        let hook_n = state
            .outbox
            .values()
            .find(|n| n.channel_id == "c2")
            .unwrap()
            .id
            .clone();
        let failed = Change::Attempt {
            id: hook_n,
            at: Micros::new(5 * MIN),
            error: Some("down".into()),
        };
        state.apply(&failed).unwrap();
        let fallbacks = state
            .outbox
            .values()
            .filter(|n| n.fallback_for.as_deref() == Some("c2"))
            .count();
        assert_eq!(fallbacks, 2);
    }
}
