//! What a notification says, in each channel's form: a webhook's JSON, a
//! readable text (Slack, email, SMS), and Alertmanager's alerts.

use serde_json::{Value, json};
use toplog_types::Micros;

use crate::outbox::Notification;

/// How long an alert Alertmanager was told about fires unless told again:
/// firing alerts are sent again each minute, as Prometheus does.
pub const ALERTMANAGER_HOLD_US: i64 = 4 * 60_000_000;

impl Notification {
    /// One line saying what happened: `[FIRING] 5xx (critical): GET /a`.
    pub fn title(&self) -> String {
        if self.state == "test" {
            return "[TEST] toplog test notification: this channel works".into();
        }
        let state = match (self.state.as_str(), self.repeat) {
            ("firing", true) => "FIRING, still".to_owned(),
            (s, _) => s.to_uppercase(),
        };
        let what = match self.alerts.as_slice() {
            [one] if one.key.is_empty() => "all requests".to_owned(),
            [one] => one.key.clone(),
            many => format!("{} series", many.len()),
        };
        format!("[{state}] {} ({}): {what}", self.rule, self.severity)
    }

    /// The title, then a line per alert.
    pub fn text(&self) -> String {
        let mut out = self.title();
        for a in &self.alerts {
            out.push_str("\n- ");
            out.push_str(&a.description);
        }
        if self.state == "test" {
            out.push_str(&format!("\nSent at {}.", self.at.to_rfc3339()));
        }
        out
    }

    /// A webhook's JSON body.
    pub fn webhook_json(&self) -> Value {
        let alerts: Vec<Value> = self
            .alerts
            .iter()
            .map(|a| {
                json!({"alert_id": a.fingerprint, "key": a.key, "value": a.value,
                       "threshold": a.threshold, "description": a.description, "labels": a.labels})
            })
            .collect();
        json!({"dedupe_id": self.id, "state": self.state, "repeat": self.repeat,
               "rule_id": self.rule_id, "rule": self.rule, "severity": self.severity,
               "at": self.at.to_rfc3339(), "title": self.title(), "alerts": alerts,
               "fallback_for": self.fallback_for})
    }

    /// A Slack message.
    pub fn slack_json(&self) -> Value {
        json!({"text": self.text()})
    }

    /// Alertmanager's alerts (API v2): firing ones held until `hold_until`
    /// (sent again before then while they fire), resolved ones ended at
    /// the transition. Each carries the dedupe id as an annotation.
    pub fn alertmanager_json(&self, hold_until: Micros) -> Value {
        let ends = if self.state == "resolved" {
            self.at
        } else {
            hold_until
        };
        if self.state == "test" {
            return json!([{"labels": {"alertname": "toplog_test", "severity": "info"},
                           "annotations": {"summary": self.title(), "toplog_dedupe_id": self.id},
                           "startsAt": self.at.to_rfc3339(), "endsAt": ends.to_rfc3339()}]);
        }
        let alerts: Vec<Value> = self
            .alerts
            .iter()
            .map(|a| {
                let mut annotations = json!({"summary": self.title(), "description": a.description,
                                             "toplog_dedupe_id": self.id});
                for (k, v) in [("value", a.value), ("threshold", a.threshold)] {
                    if let Some(v) = v {
                        annotations[k] = json!(v.to_string());
                    }
                }
                let mut alert = json!({"labels": a.labels, "annotations": annotations,
                                       "endsAt": ends.to_rfc3339()});
                if self.state == "firing" {
                    alert["startsAt"] = json!(self.at.to_rfc3339());
                }
                alert
            })
            .collect();
        Value::Array(alerts)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::Rule;
    use crate::outbox::Notified;

    #[test]
    fn a_group_reads_as_one_message_in_each_form() {
        let rule = Rule::parse(&json!({"name": "5xx", "metric": "errors", "by": "endpoint",
            "op": ">", "threshold": 5, "severity": "critical", "description": "{key}: {value} errors"}))
        .unwrap();
        let at = Micros::new(120_000_000);
        let alerts = vec![
            Notified::of(&rule, "r1", "GET /a", Some(9.0), Some(5.0)),
            Notified::of(&rule, "r1", "GET /b", Some(7.0), Some(5.0)),
        ];
        let n = Notification::of(&rule, "r1", "firing", false, at, alerts, "c1");
        assert_eq!(n.title(), "[FIRING] 5xx (critical): 2 series");
        assert_eq!(
            n.text(),
            "[FIRING] 5xx (critical): 2 series\n- GET /a: 9 errors\n- GET /b: 7 errors"
        );
        assert_eq!(n.webhook_json()["alerts"][1]["key"], "GET /b");
        let am = n.alertmanager_json(Micros::new(360_000_000));
        assert_eq!(am[0]["labels"]["alertname"], "5xx");
        assert_eq!(am[0]["labels"]["endpoint"], "GET /a");
        assert_eq!(am[0]["annotations"]["toplog_dedupe_id"], n.id.as_str());
        assert_eq!(am[0]["endsAt"], Micros::new(360_000_000).to_rfc3339());
        let resolved = Notification::of(&rule, "r1", "resolved", false, at, n.alerts.clone(), "c1");
        let am = resolved.alertmanager_json(Micros::new(360_000_000));
        assert_eq!(am[1]["endsAt"], at.to_rfc3339());
        assert!(am[1].get("startsAt").is_none());
    }
}
