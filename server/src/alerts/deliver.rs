//! Sending notifications: each kind of channel in its own form (a signed
//! webhook, Slack, email over SMTP, an SMS gateway, Alertmanager), and the
//! leader's loop that sends the outbox's due notifications, the channels'
//! heartbeats, and the firing alerts Alertmanager must hear again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use lettre::AsyncTransport;
use toplog_alerting::message::ALERTMANAGER_HOLD_US;
use toplog_alerting::{Change, Channel, Delivery, Notification};
use toplog_types::Micros;

use super::Alerting;

/// How long one request (HTTP or SMTP) may take.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one delivery may take, all its requests together.
const SEND_WITHIN: Duration = Duration::from_secs(30);
/// A send whose outcome could not be recorded (no quorum) is not made
/// again for this long; nor a heartbeat.
const UNRECORDED_HOLD: Duration = Duration::from_secs(60);
/// An SMS body is cut to this many characters.
const SMS_MAX_CHARS: usize = 1_600;
/// Firing alerts are sent to Alertmanager again this often.
const ALERTMANAGER_RESEND: Duration = Duration::from_secs(60);

/// Sends notifications.
pub(crate) struct Sender {
    http: reqwest::Client,
}

impl Sender {
    pub(crate) fn new() -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder().timeout(SEND_TIMEOUT).build()?,
        })
    }

    /// [`Sender::send`], given up after [`SEND_WITHIN`].
    pub(crate) async fn send_within(
        &self,
        channel: &Channel,
        n: &Notification,
    ) -> Result<(), String> {
        match tokio::time::timeout(SEND_WITHIN, self.send(channel, n)).await {
            Ok(sent) => sent,
            Err(_) => Err(format!("not delivered within {}s", SEND_WITHIN.as_secs())),
        }
    }

    /// Sends `n` to `channel`: delivered, or why not.
    pub(crate) async fn send(&self, channel: &Channel, n: &Notification) -> Result<(), String> {
        match &channel.delivery {
            Delivery::Webhook { url, secret } => {
                let body = serde_json::to_vec(&n.webhook_json()).map_err(|e| e.to_string())?;
                let mut request = self
                    .http
                    .post(url)
                    .header("content-type", "application/json")
                    .header("x-toplog-dedupe-id", &n.id);
                if let Some(secret) = secret {
                    request = request.header("x-toplog-signature", signature(secret, &body));
                }
                answered(url, request.body(body).send().await)
            }
            Delivery::Slack { url } => {
                let request = self.http.post(url).json(&n.slack_json());
                answered(url, request.send().await)
            }
            Delivery::Alertmanager { url } => {
                let hold = Micros::now().saturating_add_micros(ALERTMANAGER_HOLD_US);
                self.alertmanager(url, &n.alertmanager_json(hold)).await
            }
            Delivery::Sms {
                base_url,
                account,
                token,
                from,
                to,
            } => {
                let url = format!("{base_url}/2010-04-01/Accounts/{account}/Messages.json");
                let text: String = n.text().chars().take(SMS_MAX_CHARS).collect();
                // A notification goes to its one recipient; a test to all.
                let to = n
                    .recipient
                    .as_ref()
                    .map_or(to.as_slice(), std::slice::from_ref);
                for number in to {
                    let form = [("To", number.as_str()), ("From", from), ("Body", &text)];
                    let request = (self.http.post(&url))
                        .basic_auth(account, Some(token))
                        .header("x-toplog-dedupe-id", &n.id)
                        .form(&form);
                    answered(&url, request.send().await)?;
                }
                Ok(())
            }
            Delivery::Email(smtp) => email(smtp, n).await,
        }
    }

    async fn alertmanager(&self, url: &str, alerts: &serde_json::Value) -> Result<(), String> {
        let url = format!("{}/api/v2/alerts", url.trim_end_matches('/'));
        answered(&url, self.http.post(&url).json(alerts).send().await)
    }
}

/// The outcome of a request to `url`, saying where without the URL's path
/// or query (a Slack webhook's path is its secret).
fn answered(url: &str, sent: reqwest::Result<reqwest::Response>) -> Result<(), String> {
    let to = toplog_alerting::channel::shown_url(url);
    match sent {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!("{to} answered {}", r.status())),
        Err(e) => Err(format!("{to}: {}", e.without_url())),
    }
}

/// `sha256=` and the hex HMAC-SHA256 of `body` under `secret`.
fn signature(secret: &str, body: &[u8]) -> String {
    use std::fmt::Write;
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = aws_lc_rs::hmac::sign(&key, body);
    let mut out = String::from("sha256=");
    for b in tag.as_ref() {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Sends `n` as an email: the title as the subject, the text as the body,
/// the dedupe id in `X-Toplog-Dedupe-Id` and the `Message-ID`.
async fn email(smtp: &toplog_alerting::channel::Email, n: &Notification) -> Result<(), String> {
    let toplog_alerting::channel::Email {
        host,
        port,
        tls,
        username,
        password,
        from,
        to,
    } = smtp;
    let mailbox = |a: &str| {
        a.parse::<lettre::message::Mailbox>()
            .map_err(|e| format!("`{a}`: {e}"))
    };
    let mut builder = lettre::Message::builder()
        .from(mailbox(from)?)
        .subject(n.title())
        .message_id(Some(format!("<{}@toplog>", n.id)));
    for a in to {
        builder = builder.to(mailbox(a)?);
    }
    let mut message = builder.body(n.text()).map_err(|e| e.to_string())?;
    message
        .headers_mut()
        .insert_raw(lettre::message::header::HeaderValue::new(
            lettre::message::header::HeaderName::new_from_ascii_str("X-Toplog-Dedupe-Id"),
            n.id.clone(),
        ));
    type Smtp = lettre::AsyncSmtpTransport<lettre::Tokio1Executor>;
    let builder = match tls {
        toplog_alerting::Tls::None => Smtp::builder_dangerous(host.as_str()),
        toplog_alerting::Tls::Starttls => Smtp::starttls_relay(host).map_err(|e| e.to_string())?,
        toplog_alerting::Tls::Tls => Smtp::relay(host).map_err(|e| e.to_string())?,
    };
    let mut builder = builder.port(*port).timeout(Some(SEND_TIMEOUT));
    if let (Some(u), Some(p)) = (username, password) {
        builder = builder.credentials(lettre::transport::smtp::authentication::Credentials::new(
            u.clone(),
            p.clone(),
        ));
    }
    builder
        .build()
        .send(message)
        .await
        .map(drop)
        .map_err(|e| format!("{host}:{port}: {e}"))
}

/// Sends the outbox's due notifications while this node leads, and records
/// each attempt through `decide`; sends each channel's heartbeat when due,
/// and tells Alertmanager again of the alerts still firing. Retries go by
/// the system's clock (not the test clock rules are judged by). At least
/// once: a crash between sending and recording sends again, under the same
/// dedupe id.
pub(crate) async fn deliver_notifications(
    alerting: Arc<Alerting>,
    leads: impl Fn() -> bool + Send + 'static,
    decide: impl Fn(Change) -> BoxFuture<'static, Result<(), String>> + Send + 'static,
) {
    let sender = match Sender::new() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "no HTTP client: notifications are not sent");
            return;
        }
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut reminded = Instant::now();
    // Sends made here whose outcome is not in the state yet (a recording
    // that failed, a heartbeat): not made again before the time noted.
    let mut held: HashMap<String, Instant> = HashMap::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = alerting.outbox_changed.notified() => {}
        }
        held.retain(|_, until| *until > Instant::now());
        if !leads() {
            continue;
        }
        let state = alerting.state();
        for n in state.due(Micros::now()) {
            if held.contains_key(&n.id) || !leads() {
                continue;
            }
            let error = match state.channels.get(&n.channel_id) {
                None => Some(format!("channel {} was removed", n.channel_id)),
                Some(channel) => sender.send_within(channel, &n).await.err(),
            };
            if let Some(e) = &error {
                tracing::warn!(notification = %n.id, error = %e, "a notification was not delivered; retried later");
            }
            let attempt = Change::Attempt {
                id: n.id.clone(),
                at: Micros::now(),
                error,
            };
            if let Err(e) = decide(attempt).await {
                tracing::warn!(notification = %n.id, error = %e, "a delivery was not recorded; it is sent again later");
                held.insert(n.id.clone(), Instant::now() + UNRECORDED_HOLD);
            }
        }
        // Heartbeats go by the clock rules are judged by.
        let now = super::now();
        for channel in state.channels.values() {
            let key = format!("test {}", channel.id);
            if !channel.test_due(now) || held.contains_key(&key) || !leads() {
                continue;
            }
            held.insert(key, Instant::now() + UNRECORDED_HOLD);
            let test = Notification::test(&channel.id, now);
            let error = sender.send_within(channel, &test).await.err();
            let tested = Change::Tested {
                channel_id: channel.id.clone(),
                at: now,
                error,
            };
            if let Err(e) = decide(tested).await {
                tracing::warn!(channel = %channel.id, error = %e, "a heartbeat was not recorded");
            }
        }
        if reminded.elapsed() >= ALERTMANAGER_RESEND && leads() {
            reminded = Instant::now();
            remind_alertmanagers(&sender, &state).await;
        }
    }
}

/// Tells each Alertmanager channel again of the alerts that still fire
/// (not silenced) of the rules that notify it, so it keeps them active.
async fn remind_alertmanagers(sender: &Sender, state: &toplog_alerting::AlertState) {
    let now = Micros::now();
    let hold = now.saturating_add_micros(ALERTMANAGER_HOLD_US);
    for channel in state.channels.values() {
        let Delivery::Alertmanager { url } = &channel.delivery else {
            continue;
        };
        let mut alerts = Vec::new();
        for a in state.alerts.values() {
            let Some(rule) = state.rule(&a.rule_id) else {
                continue;
            };
            if a.state != "firing" || !rule.channels.contains(&channel.id) || state.silenced(a, now)
            {
                continue;
            }
            let at = a.started_at.unwrap_or(a.since);
            let notified =
                toplog_alerting::Notified::of(&rule, &a.rule_id, &a.key, a.value, a.threshold);
            let n = Notification::of(
                &rule,
                &a.rule_id,
                "firing",
                false,
                at,
                vec![notified],
                &channel.id,
            );
            if let serde_json::Value::Array(mut more) = n.alertmanager_json(hold) {
                alerts.append(&mut more);
            }
        }
        if !alerts.is_empty()
            && let Err(e) = tokio::time::timeout(
                SEND_WITHIN,
                sender.alertmanager(url, &serde_json::Value::Array(alerts)),
            )
            .await
            .unwrap_or_else(|_| Err("timed out".into()))
        {
            tracing::warn!(channel = %channel.id, error = %e, "Alertmanager was not told again of firing alerts");
        }
    }
}
