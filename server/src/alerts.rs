//! The node's alerting (toplog-alerting): its state, kept in
//! `<data_dir>/alerting.json` and changed only by changes applied in order
//! (on a cluster, from the Raft log), and the history of transitions in
//! `<data_dir>/alert-history.log`; and, on the node that leads (or a single
//! node), the evaluation of every rule as each minute closes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use toplog_alerting::evaluate::{Readings, evaluate};
use toplog_alerting::{AlertState, Change, HistoryEntry, StateError};
use toplog_crypt::Cipher;
use toplog_types::Micros;

use crate::auth::audit::AuditLog;

mod deliver;

pub(crate) use deliver::{Sender, deliver_notifications};

const STATE_FILE: &str = "alerting.json";
const HISTORY_FILE: &str = "alert-history.log";
const MINUTE_US: i64 = 60_000_000;

/// The alerting state and its history.
#[derive(Debug)]
pub(crate) struct Alerting {
    state: Mutex<AlertState>,
    path: PathBuf,
    cipher: Cipher,
    history: AuditLog,
    /// Woken when the outbox changes (the leader sends at once).
    outbox_changed: tokio::sync::Notify,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Alerting {
    pub(crate) fn open(data_dir: &Path, cipher: &Cipher) -> anyhow::Result<Self> {
        let path = data_dir.join(STATE_FILE);
        let state = match toplog_crypt::load_state_file(&path, cipher)? {
            None => AlertState::default(),
            Some(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not the alerting state", path.display()))?,
        };
        Ok(Self {
            state: Mutex::new(state),
            history: AuditLog::open_file(data_dir.join(HISTORY_FILE), cipher)?,
            path,
            cipher: cipher.clone(),
            outbox_changed: tokio::sync::Notify::new(),
        })
    }

    /// The state now.
    pub(crate) fn state(&self) -> AlertState {
        lock(&self.state).clone()
    }

    /// Applies `change`, stores the state and appends its transitions to
    /// the history; nothing changes if it is refused or cannot be stored.
    pub(crate) fn apply(&self, change: &Change) -> Result<Vec<HistoryEntry>, ApplyError> {
        let mut state = lock(&self.state);
        let mut next = state.clone();
        let made = next.apply(change)?;
        // Stored when a rule, an alert, a channel or the outbox changed. A
        // judgement that changed none (most minutes) is not: judged again
        // after a restart, the same minutes change nothing either.
        if next.rules != state.rules
            || next.alerts != state.alerts
            || next.channels != state.channels
            || next.outbox != state.outbox
            || next.silences != state.silences
        {
            let bytes = serde_json::to_vec(&next).map_err(|e| ApplyError::Store(e.to_string()))?;
            toplog_crypt::store_state_file(&self.path, bytes, &self.cipher)
                .map_err(|e| ApplyError::Store(format!("{}: {e}", self.path.display())))?;
        }
        let delivery = delivery_line(change, &state, &next);
        if next.outbox != state.outbox {
            self.outbox_changed.notify_one();
        }
        *state = next;
        drop(state);
        for entry in &made {
            if let Ok(mut line) = serde_json::to_value(entry) {
                line["kind"] = "transition".into();
                self.history.append(&line);
            }
        }
        if let Some(line) = delivery {
            self.history.append(&line);
        }
        Ok(made)
    }

    /// Replaces the state whole (a snapshot's).
    pub(crate) fn replace(&self, next: AlertState) -> Result<(), ApplyError> {
        let mut state = lock(&self.state);
        let bytes = serde_json::to_vec(&next).map_err(|e| ApplyError::Store(e.to_string()))?;
        toplog_crypt::store_state_file(&self.path, bytes, &self.cipher)
            .map_err(|e| ApplyError::Store(format!("{}: {e}", self.path.display())))?;
        *state = next;
        Ok(())
    }

    /// Writes the state and the history again under the cipher's current
    /// key (a rekey).
    pub(crate) fn reseal(&self) -> anyhow::Result<()> {
        let state = lock(&self.state);
        let bytes = serde_json::to_vec(&*state)?;
        toplog_crypt::store_state_file(&self.path, bytes, &self.cipher)
            .with_context(|| format!("{}", self.path.display()))?;
        drop(state);
        self.history.reseal()
    }

    /// The history (transitions, delivery attempts, tests) that `keep`
    /// keeps, newest first: `limit` of them after skipping `offset`; and
    /// whether older ones matched.
    pub(crate) fn history(
        &self,
        keep: impl Fn(&serde_json::Value) -> bool,
        offset: usize,
        limit: usize,
    ) -> anyhow::Result<(Vec<serde_json::Value>, bool)> {
        // The newest `offset + limit + 1` entries kept, read a line at a time.
        let want = offset.saturating_add(limit).saturating_add(1);
        let mut newest = std::collections::VecDeque::with_capacity(want.min(10_000));
        self.history.scan(|mut line| {
            if line.get("kind").is_none() {
                line["kind"] = "transition".into();
            }
            if keep(&line) {
                if newest.len() == want {
                    newest.pop_front();
                }
                newest.push_back(line);
            }
        })?;
        let mut page: Vec<serde_json::Value> = newest
            .into_iter()
            .rev()
            .skip(offset)
            .take(limit + 1)
            .collect();
        let more = page.len() > limit;
        page.truncate(limit);
        Ok((page, more))
    }
}

/// The history line of a delivery `change` made (an attempt at a
/// notification still pending `before`, or a channel's test).
fn delivery_line(
    change: &Change,
    before: &AlertState,
    after: &AlertState,
) -> Option<serde_json::Value> {
    match change {
        Change::Attempt { id, at, error } => {
            let was = before.outbox.get(id).filter(|n| n.status == "pending")?;
            let n = after.outbox.get(id).unwrap_or(was);
            let outcome = match (error, n.status.as_str()) {
                (None, _) => "sent",
                (Some(_), "failed") => "failed",
                (Some(_), _) => "retrying",
            };
            let keys: Vec<&str> = n.alerts.iter().map(|a| a.key.as_str()).collect();
            Some(
                serde_json::json!({"kind": "notification", "at": at, "dedupe_id": id,
                "channel_id": n.channel_id, "rule_id": n.rule_id, "state": n.state,
                "repeat": n.repeat, "fallback_for": n.fallback_for, "keys": keys,
                "attempt": n.attempts, "outcome": outcome, "error": error}),
            )
        }
        Change::Tested {
            channel_id,
            at,
            error,
        } => Some(
            serde_json::json!({"kind": "test", "at": at, "channel_id": channel_id,
            "outcome": if error.is_none() { "sent" } else { "error" }, "error": error}),
        ),
        _ => None,
    }
}

/// Why a change was not made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApplyError {
    #[error(transparent)]
    Refused(#[from] StateError),
    #[error("cannot store the alerting state: {0}")]
    Store(String),
}

/// The time rules are evaluated by: the system's, or in tests the
/// milliseconds in the file `TOPLOG_TEST_CLOCK_FILE` names (a time source
/// only the machine's own user can set).
pub(crate) fn now() -> Micros {
    if let Some(path) = std::env::var_os("TOPLOG_TEST_CLOCK_FILE")
        && let Ok(text) = std::fs::read_to_string(path)
        && let Ok(ms) = text.trim().parse::<i64>()
    {
        return Micros::new(ms.saturating_mul(1_000));
    }
    Micros::now()
}

/// How far back a leader catches up on minutes it did not judge (a restart,
/// a new leader): older ones are skipped.
const CATCH_UP_MINUTES: i64 = 10;

/// Judges every rule as each minute closes, `grace` after it, while this
/// node leads (`leads`); proposes each judgement through `decide`.
pub(crate) async fn evaluate_every_minute(
    stores: impl Fn() -> futures::future::BoxFuture<'static, Result<crate::api::stores::Stores, String>>
    + Send
    + 'static,
    alerting: Arc<Alerting>,
    grace: Duration,
    leads: impl Fn() -> bool + Send + 'static,
    decide: impl Fn(Change) -> futures::future::BoxFuture<'static, Result<(), String>> + Send + 'static,
) {
    let grace_us = i64::try_from(grace.as_micros()).unwrap_or(i64::MAX);
    // Keys each rule (as last changed) had data for lately, for `no_data`.
    let mut seen: HashMap<(String, Micros), HashMap<String, Micros>> = HashMap::new();
    // The last minute every rule was judged through (here, as leader).
    let mut done = Micros::new(i64::MIN);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        if !leads() {
            done = Micros::new(i64::MIN);
            continue;
        }
        let closed = now().saturating_sub_micros(grace_us).floor_to(MINUTE_US);
        let state = alerting.state();
        // Nothing new to judge: no minute closed since, and no rule behind.
        let behind = |id: &String| state.judged_through.get(id).is_none_or(|t| *t < closed);
        if closed <= done && !state.rules.keys().any(behind) {
            continue;
        }
        seen.retain(|(id, at), _| state.rules.get(id).is_some_and(|r| r.updated_at == *at));
        let mut all_judged = true;
        for (id, stored) in &state.rules {
            let Some(rule) = state.rule(id) else { continue };
            let after = state
                .judged_through
                .get(id)
                .copied()
                .unwrap_or(Micros::new(i64::MIN))
                .max(stored.updated_at.floor_to(MINUTE_US))
                .max(closed.saturating_sub_micros(CATCH_UP_MINUTES * MINUTE_US));
            let mut at = after.saturating_add_micros(MINUTE_US);
            while at <= closed {
                let keys = seen.entry((id.clone(), stored.updated_at)).or_default();
                keys.retain(|_, last| {
                    at.get() - last.get() <= toplog_alerting::evaluate::NO_DATA_WATCH_US
                });
                let mut watched: Vec<String> = keys.keys().cloned().collect();
                watched.extend(
                    (state.alerts.values())
                        .filter(|a| &a.rule_id == id && !keys.contains_key(&a.key))
                        .map(|a| a.key.clone()),
                );
                // A sharded cluster's rule reads every shard; one that
                // cannot be read leaves the minute unjudged (tried again),
                // never judged on part of the data.
                let source = match stores().await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(rule = %id, error = %e, "a rule could not be evaluated");
                        all_judged = false;
                        break;
                    }
                };
                let (rule2, watched2) = (rule.clone(), watched);
                let judged = tokio::task::spawn_blocking(move || {
                    let mut readings = Readings::new(&rule2, &source);
                    evaluate(&rule2, &mut readings, at, &watched2)
                })
                .await;
                let judged = match judged {
                    Ok(Ok(j)) => j,
                    Ok(Err(e)) => {
                        tracing::warn!(rule = %id, error = %e, "a rule could not be evaluated");
                        all_judged = false;
                        break;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "rule evaluation failed");
                        all_judged = false;
                        break;
                    }
                };
                for j in &judged {
                    if j.value.is_some() {
                        keys.insert(j.key.clone(), at);
                    }
                }
                let change = Change::Evaluated {
                    rule_id: id.clone(),
                    rule_updated_at: stored.updated_at,
                    at,
                    judged: judged.into_iter().map(Into::into).collect(),
                };
                if let Err(e) = decide(change).await {
                    tracing::warn!(rule = %id, error = %e, "a rule's judgement was not recorded");
                    all_judged = false;
                    break;
                }
                at = at.saturating_add_micros(MINUTE_US);
            }
        }
        if all_judged {
            done = closed;
        }
    }
}
