//! Sending one batch to a node's `POST /api/v1/requests` under its
//! idempotency key, retrying what may pass later (the node unreachable,
//! restarting or overloaded) with the same key.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long one batch is retried before the import gives up.
const RETRY_FOR: Duration = Duration::from_secs(300);

/// What the node said of a batch.
#[derive(Debug)]
pub(super) enum Answer {
    /// Stored; `replayed`: it already was, under this key.
    Stored { replayed: bool },
    /// Refused for one row (0-based), which the node names; the rest was not stored.
    RowRefused { row: usize, message: String },
}

pub(super) struct Sender {
    client: reqwest::blocking::Client,
    url: String,
    target: crate::client::Target,
}

impl Sender {
    pub(super) fn new(target: crate::client::Target) -> anyhow::Result<Self> {
        Ok(Self {
            client: target.client(Duration::from_secs(120))?,
            url: format!("{}/api/v1/requests", target.server.trim_end_matches('/')),
            target,
        })
    }

    /// Sends `body` (NDJSON) under `key` until the node answers for good,
    /// or `stop` is set (the batch stays written down as being sent, and
    /// the next run sends it again under the same key).
    pub(super) fn send(
        &self,
        key: &str,
        body: Vec<u8>,
        stop: &AtomicBool,
    ) -> anyhow::Result<Answer> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(100);
        loop {
            let wait = match self.try_send(key, body.clone()) {
                Ok(answer) => return Ok(answer),
                Err(Failure::Final(why)) => anyhow::bail!("{why}"),
                Err(Failure::Transient { why, retry_after }) => {
                    if started.elapsed() > RETRY_FOR {
                        anyhow::bail!("gave up after {RETRY_FOR:?}: {why}");
                    }
                    if stop.load(Ordering::Relaxed) {
                        anyhow::bail!(
                            "stopped while the node could not take a batch ({why}); the next run sends it again"
                        );
                    }
                    tracing::debug!(%why, "retrying the batch");
                    retry_after.unwrap_or(pause)
                }
            };
            std::thread::sleep(wait);
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }

    fn try_send(&self, key: &str, body: Vec<u8>) -> Result<Answer, Failure> {
        let resp = self
            .target
            .authorize(self.client.post(&self.url))
            .header("Content-Type", "application/x-ndjson")
            .header("Idempotency-Key", key)
            .body(body)
            .send()
            .map_err(|e| Failure::Transient {
                why: format!("cannot reach {}: {e}", self.target.server),
                retry_after: None,
            })?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get("Retry-After")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .map(Duration::from_secs);
        let body: Value = resp.json().unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(Answer::Stored {
                replayed: body["replayed"] == true,
            });
        }
        let message = body["error"]["message"]
            .as_str()
            .unwrap_or("no message")
            .to_owned();
        match (status.as_u16(), body["error"]["row"].as_u64()) {
            (400 | 422, Some(row)) => Ok(Answer::RowRefused {
                row: row as usize,
                message,
            }),
            // Busy, restarting, or not ready yet: the same batch may pass later.
            (429 | 502 | 503 | 504, _) => Err(Failure::Transient {
                why: format!("{status}: {message}"),
                retry_after,
            }),
            // Refused for who is asking, or anything else that will not change.
            _ => Err(Failure::Final(format!("{status}: {message}"))),
        }
    }
}

enum Failure {
    /// The same batch may pass later.
    Transient {
        why: String,
        retry_after: Option<Duration>,
    },
    /// An answer that will not change.
    Final(String),
}
