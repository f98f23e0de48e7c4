//! Notification channels: where a rule's notifications go, and how
//! ([`Delivery`]: a webhook, Slack, email, SMS or Prometheus Alertmanager).
//! A channel's secrets (a webhook's signing secret, an SMTP password, an
//! SMS gateway's token) are kept in the replicated state but never shown.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use toplog_types::Micros;

use crate::RuleError;
use crate::rule::{fault, minutes, string};

/// The kinds of channel.
pub const KINDS: [&str; 5] = ["webhook", "slack", "email", "sms", "alertmanager"];
/// Where an SMS channel sends unless it names its own gateway.
pub const TWILIO: &str = "https://api.twilio.com";
/// Fields that hold secrets: taken on writes, never shown.
const SECRETS: [&str; 3] = ["secret", "password", "token"];
/// Recipients of one email or SMS channel at most.
const MAX_RECIPIENTS: usize = 20;

/// How an SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tls {
    /// Plain, upgraded with STARTTLS (required).
    Starttls,
    /// TLS from the first byte.
    Tls,
    /// Plain text (a local relay).
    None,
}

impl Tls {
    const NAMES: [&str; 3] = ["starttls", "tls", "none"];

    /// The usual port: 587 (submission), 465 (submissions), 25.
    fn default_port(self) -> u16 {
        match self {
            Self::Starttls => 587,
            Self::Tls => 465,
            Self::None => 25,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Starttls => "starttls",
            Self::Tls => "tls",
            Self::None => "none",
        }
    }
}

/// How a channel delivers.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Delivery {
    /// A JSON POST; with a secret, signed (`X-Toplog-Signature`).
    Webhook {
        url: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secret: Option<String>,
    },
    /// A Slack incoming webhook: a readable message.
    Slack { url: String },
    /// Email over SMTP.
    Email(Email),
    /// An SMS gateway with Twilio's API (a form POST to
    /// `{base_url}/2010-04-01/Accounts/{account}/Messages.json`).
    Sms {
        base_url: String,
        account: String,
        token: String,
        from: String,
        to: Vec<String>,
    },
    /// Prometheus Alertmanager (`POST {url}/api/v2/alerts`).
    Alertmanager { url: String },
}

/// An SMTP server and the mail's sender and recipients.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Email {
    pub host: String,
    pub port: u16,
    pub tls: Tls,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    pub from: String,
    pub to: Vec<String>,
}

/// Shows the kind and where it sends, never a secret (nor a Slack URL).
impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Webhook { url, secret } => write!(
                f,
                "Webhook({}, signed: {})",
                shown_url(url),
                secret.is_some()
            ),
            Self::Slack { url } => write!(f, "Slack({})", shown_url(url)),
            Self::Email(Email { host, port, to, .. }) => {
                write!(f, "Email({host}:{port}, to {to:?})")
            }
            Self::Sms { base_url, to, .. } => write!(f, "Sms({}, to {to:?})", shown_url(base_url)),
            Self::Alertmanager { url } => write!(f, "Alertmanager({})", shown_url(url)),
        }
    }
}

/// A URL as shown: its scheme, host and port only (a path or query may
/// hold a token: a Slack webhook's does).
pub fn shown_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    // Credentials before an `@` are refused when a channel is made; cut anyway.
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    let cut = if host.len() + scheme.len() + 3 < url.len() {
        "/…"
    } else {
        ""
    };
    format!("{scheme}://{host}{cut}")
}

impl Delivery {
    /// The kind's name.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Webhook { .. } => "webhook",
            Self::Slack { .. } => "slack",
            Self::Email { .. } => "email",
            Self::Sms { .. } => "sms",
            Self::Alertmanager { .. } => "alertmanager",
        }
    }
}

/// The outcome of a channel's last test.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tested {
    pub at: Micros,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A notification channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Channel {
    pub id: String,
    pub name: String,
    #[serde(flatten)]
    pub delivery: Delivery,
    /// A test notification is sent this often (a heartbeat), if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_every_minutes: Option<u32>,
    /// A notification not delivered this long after it was due is given
    /// up (marked failed); a day if not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub give_up_after_minutes: Option<u32>,
    pub created_at: Micros,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_test: Option<Tested>,
}

/// The fields every kind takes.
const COMMON: [&str; 4] = ["name", "kind", "test_every", "give_up_after"];

/// The fields each kind takes besides [`COMMON`]'s.
fn kind_fields(kind: &str) -> &'static [&'static str] {
    match kind {
        "webhook" => &["url", "secret"],
        "slack" | "alertmanager" => &["url"],
        "email" => &["host", "port", "tls", "username", "password", "from", "to"],
        _ => &["base_url", "account", "token", "from", "to"],
    }
}

impl Channel {
    /// Checks a channel's JSON. A secret left out of a change of channel
    /// `old` is kept (`GET` does not show it) if the change still sends to
    /// the same place, and must be given again (or `null` for none) if not;
    /// `null` clears one. A Slack channel's URL is its secret: left out, it
    /// is kept.
    pub fn parse(
        id: &str,
        body: &Value,
        at: Micros,
        old: Option<&Channel>,
    ) -> Result<Self, RuleError> {
        let fields = body
            .as_object()
            .ok_or_else(|| fault("body", "expected a JSON object"))?;
        let name = string("name", fields.get("name").unwrap_or(&Value::Null), 200)?;
        let kind = match fields.get("kind").and_then(Value::as_str) {
            Some(k) if KINDS.contains(&k) => k,
            _ => {
                return Err(fault(
                    "kind",
                    format!("expected one of {}", KINDS.join(", ")),
                ));
            }
        };
        let known = kind_fields(kind);
        if let Some(k) = fields
            .keys()
            .find(|k| !COMMON.contains(&k.as_str()) && !known.contains(&k.as_str()))
        {
            return Err(fault(
                k,
                format!(
                    "unknown field for a {kind} channel (known: {}, {})",
                    COMMON.join(", "),
                    known.join(", ")
                ),
            ));
        }
        let text = |field: &str, max: usize| match fields.get(field) {
            None => Err(fault(field, "required")),
            Some(v) => string(field, v, max),
        };
        let optional =
            |field: &str, max: usize| fields.get(field).map(|v| string(field, v, max)).transpose();
        let was = old.map(|o| &o.delivery).filter(|d| d.kind() == kind);
        // A secret: given, `null` for none, or kept from the channel it
        // changes if that sends to the same place (`same`).
        let secret = |field: &str, same: bool| -> Result<Option<String>, RuleError> {
            let kept = match (was, field) {
                (Some(Delivery::Webhook { secret, .. }), "secret") => secret.clone(),
                (Some(Delivery::Email(Email { password, .. })), "password") => password.clone(),
                (Some(Delivery::Sms { token, .. }), "token") => Some(token.clone()),
                _ => None,
            };
            match fields.get(field) {
                Some(Value::Null) => Ok(None),
                Some(v) => string(field, v, 1024).map(Some),
                None if kept.is_some() && !same => Err(fault(
                    field,
                    "give it again (or null for none): where the channel sends changed",
                )),
                None => Ok(kept),
            }
        };
        let url = || -> Result<String, RuleError> {
            let url = text("url", 2048)?;
            web_address("url", &url)?;
            Ok(url)
        };
        let recipients = |field: &str, check: fn(&str, &str) -> Result<(), RuleError>| {
            let items = fields
                .get(field)
                .ok_or_else(|| fault(field, "required"))?
                .as_array()
                .filter(|a| !a.is_empty() && a.len() <= MAX_RECIPIENTS)
                .ok_or_else(|| {
                    fault(
                        field,
                        format!("expected an array of 1 to {MAX_RECIPIENTS} recipients"),
                    )
                })?;
            items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let field = format!("{field}[{i}]");
                    let s = string(&field, v, 254)?;
                    check(&field, &s)?;
                    Ok(s)
                })
                .collect::<Result<Vec<String>, RuleError>>()
        };
        let delivery = match kind {
            "webhook" => {
                let url = url()?;
                let same = matches!(was, Some(Delivery::Webhook { url: u, .. }) if *u == url);
                Delivery::Webhook {
                    secret: secret("secret", same)?,
                    url,
                }
            }
            "slack" => match (was, fields.contains_key("url")) {
                (Some(Delivery::Slack { url }), false) => Delivery::Slack { url: url.clone() },
                _ => Delivery::Slack { url: url()? },
            },
            "alertmanager" => Delivery::Alertmanager { url: url()? },
            "email" => {
                let host = text("host", 253)?;
                if host.contains(|c: char| c.is_whitespace() || c == '/' || c == ':') {
                    return Err(fault("host", "a host name or address, without a port"));
                }
                let tls = match fields.get("tls") {
                    None => Tls::Starttls,
                    Some(v) => match v.as_str() {
                        Some("starttls") => Tls::Starttls,
                        Some("tls") => Tls::Tls,
                        Some("none") => Tls::None,
                        _ => {
                            return Err(fault("tls", "expected \"starttls\", \"tls\" or \"none\""));
                        }
                    },
                };
                let port = match fields.get("port") {
                    None => tls.default_port(),
                    Some(v) => v
                        .as_u64()
                        .and_then(|p| u16::try_from(p).ok())
                        .filter(|p| *p > 0)
                        .ok_or_else(|| fault("port", "expected 1 to 65535"))?,
                };
                let username = optional("username", 256)?;
                let same = matches!(was, Some(Delivery::Email(Email { host: h, port: p, username: u, .. }))
                    if *h == host && *p == port && *u == username);
                let password = secret("password", same)?;
                if username.is_some() != password.is_some() {
                    return Err(fault(
                        if username.is_some() {
                            "password"
                        } else {
                            "username"
                        },
                        "`username` and `password` go together",
                    ));
                }
                let from = text("from", 254)?;
                address("from", &from)?;
                Delivery::Email(Email {
                    host,
                    port,
                    tls,
                    username,
                    password,
                    from,
                    to: recipients("to", address)?,
                })
            }
            _ => {
                let base_url = match fields.get("base_url") {
                    None => TWILIO.to_owned(),
                    Some(v) => {
                        let u = string("base_url", v, 2048)?;
                        web_address("base_url", &u)?;
                        u.trim_end_matches('/').to_owned()
                    }
                };
                let account = text("account", 64)?;
                if !account.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    return Err(fault("account", "letters and digits (an account SID)"));
                }
                let same = matches!(was, Some(Delivery::Sms { base_url: b, account: a, .. })
                    if *b == base_url && *a == account);
                let token = secret("token", same)?.ok_or_else(|| fault("token", "required"))?;
                let from = text("from", 32)?;
                phone("from", &from)?;
                Delivery::Sms {
                    base_url,
                    account,
                    token,
                    from,
                    to: recipients("to", phone)?,
                }
            }
        };
        let test_every_minutes = match fields.get("test_every") {
            None => None,
            Some(v) => Some(minutes("test_every", Some(v), 0, 1)?),
        };
        let give_up_after_minutes = match fields.get("give_up_after") {
            None => None,
            Some(v) => Some(minutes("give_up_after", Some(v), 0, 1)?),
        };
        Ok(Self {
            id: id.to_owned(),
            name,
            delivery,
            test_every_minutes,
            give_up_after_minutes,
            created_at: old.map_or(at, |o| o.created_at),
            last_test: old
                .filter(|o| o.delivery.kind() == kind)
                .and_then(|o| o.last_test.clone()),
        })
    }

    /// The URLs it sends to, by field (for the caller to check further).
    pub fn urls(&self) -> Vec<(&'static str, &str)> {
        match &self.delivery {
            Delivery::Webhook { url, .. }
            | Delivery::Slack { url }
            | Delivery::Alertmanager { url } => vec![("url", url)],
            Delivery::Sms { base_url, .. } => vec![("base_url", base_url)],
            Delivery::Email(_) => Vec::new(),
        }
    }

    /// The channel as `GET` shows it: its secrets left out, and named in
    /// `secrets` when set.
    pub fn to_json(&self) -> Value {
        let mut out = match serde_json::to_value(&self.delivery) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        };
        let mut secrets: Vec<&str> = SECRETS
            .into_iter()
            .filter(|s| out.remove(*s).is_some())
            .collect();
        // A Slack webhook's URL is its secret: shown cut short.
        if let Delivery::Slack { url } = &self.delivery {
            out.insert("url".into(), json!(shown_url(url)));
            secrets.push("url");
        }
        if let Delivery::Email(Email { tls, .. }) = &self.delivery {
            out.insert("tls".into(), json!(tls.name()));
        }
        out.insert("id".into(), json!(self.id));
        out.insert("name".into(), json!(self.name));
        out.insert("secrets".into(), json!(secrets));
        out.insert("created_at".into(), json!(self.created_at.to_rfc3339()));
        if let Some(m) = self.test_every_minutes {
            out.insert("test_every".into(), json!(format!("{m}m")));
        }
        if let Some(m) = self.give_up_after_minutes {
            out.insert("give_up_after".into(), json!(format!("{m}m")));
        }
        if let Some(t) = &self.last_test {
            out.insert(
                "last_test".into(),
                json!({"at": t.at.to_rfc3339(), "ok": t.error.is_none(), "error": t.error}),
            );
        }
        Value::Object(out)
    }

    /// Whether its heartbeat is due at `now`.
    pub fn test_due(&self, now: Micros) -> bool {
        self.test_every_minutes.is_some_and(|m| {
            let every = i64::from(m) * 60_000_000;
            let last = self.last_test.as_ref().map_or(self.created_at, |t| t.at);
            now.get() - last.get() >= every
        })
    }

    /// The JSON Schema of a channel's body, one shape per kind.
    pub fn schema() -> Value {
        let text = |max: usize| json!({"type": "string", "minLength": 1, "maxLength": max});
        let url =
            json!({"type": "string", "minLength": 8, "maxLength": 2048, "pattern": "^https?://"});
        let recipients =
            json!({"type": "array", "minItems": 1, "maxItems": MAX_RECIPIENTS, "items": text(254)});
        let common = |kind: &str, mut props: Value, required: &[&str]| {
            props["name"] = text(200);
            props["kind"] = json!({"type": "string", "enum": [kind]});
            props["test_every"] = json!({"type": "string", "pattern": "^[0-9]+[mhd]$",
                "description": "Send a test notification this often (a heartbeat): `1h`."});
            props["give_up_after"] = json!({"type": "string", "pattern": "^[0-9]+[mhd]$",
                "description": "Give a notification up (mark it failed) if not delivered this long after it was due: at most `24h`, the default."});
            let mut req = vec!["name", "kind"];
            req.extend_from_slice(required);
            json!({"type": "object", "additionalProperties": false, "required": req, "properties": props})
        };
        json!({"oneOf": [
            common("webhook", json!({"url": url, "secret": {"type": "string", "minLength": 1, "maxLength": 1024, "nullable": true,
                "description": "Signs each body: `X-Toplog-Signature: sha256=<hex HMAC-SHA256 of the body>`. Never shown."}}), &["url"]),
            common("slack", json!({"url": url}), &[]),
            common("email", json!({"host": text(253), "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                "tls": {"type": "string", "enum": Tls::NAMES}, "username": text(256),
                "password": {"type": "string", "minLength": 1, "maxLength": 1024, "nullable": true, "description": "Never shown."},
                "from": text(254), "to": recipients}), &["host", "from", "to"]),
            common("sms", json!({"base_url": url, "account": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": "^[A-Za-z0-9]+$"},
                "token": {"type": "string", "minLength": 1, "maxLength": 1024, "description": "Never shown."},
                "from": text(32), "to": {"type": "array", "minItems": 1, "maxItems": MAX_RECIPIENTS, "items": text(32)}}),
                &["account", "token", "from", "to"]),
            common("alertmanager", json!({"url": url}), &["url"]),
        ]})
    }
}

/// An http:// or https:// URL without spaces or control characters (the
/// caller parses it further).
fn web_address(field: &str, url: &str) -> Result<(), RuleError> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(fault(field, "an http:// or https:// URL"));
    }
    if url.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err(fault(field, "no spaces or control characters in a URL"));
    }
    Ok(())
}

/// An email address, as far as it can be told without sending.
fn address(field: &str, s: &str) -> Result<(), RuleError> {
    let ok = s.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty() && !domain.is_empty() && !domain.contains('@') && domain.contains('.')
    }) && !s
        .contains(|c: char| c.is_whitespace() || c.is_control() || "<>,;\"()[]\\".contains(c));
    if ok {
        Ok(())
    } else {
        Err(fault(field, format!("`{s}` is not an email address")))
    }
}

/// A phone number (`+` and digits) or an alphanumeric sender.
fn phone(field: &str, s: &str) -> Result<(), RuleError> {
    let digits = s.strip_prefix('+').unwrap_or(s);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(())
    } else {
        Err(fault(
            field,
            format!("`{s}`: a phone number such as +15551234567"),
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn each_kind_parses_and_never_shows_its_secret() {
        let at = Micros::new(1);
        let sms = json!({"name": "pager", "kind": "sms", "account": "AC1", "token": "t0ken",
                         "from": "+15550001", "to": ["+15550002"]});
        let c = Channel::parse("c1", &sms, at, None).unwrap();
        let shown = c.to_json();
        assert_eq!(shown["secrets"], json!(["token"]));
        assert!(!shown.to_string().contains("t0ken"), "{shown}");
        assert_eq!(shown["base_url"], TWILIO);
        // A change that leaves the token out keeps it.
        let mut change = sms.clone();
        change.as_object_mut().unwrap().remove("token");
        change["to"] = json!(["+15550003"]);
        let changed = Channel::parse("c1", &change, Micros::new(9), Some(&c)).unwrap();
        assert!(
            matches!(&changed.delivery, Delivery::Sms { token, to, .. } if token == "t0ken" && to == &["+15550003"])
        );
        assert_eq!(changed.created_at, at);
        // A change that sends elsewhere must give it again.
        change["base_url"] = json!("https://sms.example.com");
        assert_eq!(
            Channel::parse("c1", &change, at, Some(&c))
                .unwrap_err()
                .field,
            "token"
        );
        // A new channel without it is refused.
        assert_eq!(
            Channel::parse("c2", &change, at, None).unwrap_err().field,
            "token"
        );

        let email = json!({"name": "ops", "kind": "email", "host": "smtp.example.com", "tls": "tls",
                           "username": "u", "password": "pw", "from": "toplog@example.com",
                           "to": ["ops@example.com"], "test_every": "1h", "give_up_after": "2h"});
        let c = Channel::parse("c3", &email, at, None).unwrap();
        let shown = c.to_json();
        assert_eq!(
            (shown["port"].as_u64(), shown["tls"].as_str()),
            (Some(465), Some("tls"))
        );
        assert_eq!(
            (
                shown["test_every"].as_str(),
                shown["give_up_after"].as_str()
            ),
            (Some("60m"), Some("120m"))
        );
        assert!(shown.get("password").is_none());
        // Its JSON (as the state keeps it) reads back the same.
        let back: Channel = serde_json::from_value(serde_json::to_value(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        assert!(!c.test_due(Micros::new(59 * 60_000_000)));
        assert!(c.test_due(Micros::new(60 * 60_000_000 + 1)));
        assert!(!format!("{c:?}").contains("pw"), "{c:?}");
        // A Slack URL is its secret: shown cut short, never in Debug.
        let body = json!({"name": "s", "kind": "slack", "url": "https://hooks.slack.com/services/T0/B0/XYZ"});
        let slack = Channel::parse("c4", &body, at, None).unwrap();
        assert_eq!(slack.to_json()["url"], "https://hooks.slack.com/…");
        assert_eq!(slack.to_json()["secrets"], json!(["url"]));
        assert!(!format!("{slack:?}").contains("XYZ"));
        // Left out of a change, it is kept.
        let renamed = Channel::parse(
            "c4",
            &json!({"name": "t", "kind": "slack"}),
            at,
            Some(&slack),
        )
        .unwrap();
        assert_eq!(renamed.delivery, slack.delivery);
    }

    #[test]
    fn a_bad_channel_is_refused_naming_the_field() {
        let at = Micros::new(0);
        for (body, field) in [
            (json!({"name": "x", "kind": "pigeon"}), "kind"),
            (json!({"name": "x", "kind": "slack"}), "url"),
            (
                json!({"name": "x", "kind": "slack", "url": "ftp://x"}),
                "url",
            ),
            (
                json!({"name": "x", "kind": "slack", "url": "http://x", "secret": "s"}),
                "secret",
            ),
            (
                json!({"name": "x", "kind": "email", "host": "h", "from": "a@b.c", "to": []}),
                "to",
            ),
            (
                json!({"name": "x", "kind": "email", "host": "h", "from": "a@b.c", "to": ["nope"]}),
                "to[0]",
            ),
            (
                json!({"name": "x", "kind": "email", "host": "h", "from": "a@b.c", "to": ["o@b.c"], "username": "u"}),
                "password",
            ),
            (
                json!({"name": "x", "kind": "sms", "account": "AC", "token": "t", "from": "+1", "to": ["call me"]}),
                "to[0]",
            ),
            (
                json!({"name": "x", "kind": "webhook", "url": "http://x", "test_every": "30s"}),
                "test_every",
            ),
            (
                json!({"name": " ", "kind": "webhook", "url": "http://x"}),
                "name",
            ),
        ] {
            assert_eq!(
                Channel::parse("c", &body, at, None).unwrap_err().field,
                field,
                "{body}"
            );
        }
    }
}
