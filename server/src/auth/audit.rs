//! The audit log: every call an admin route answers for an admin key that
//! may change something (any method but GET), with who, what, when, from
//! where and the answer's status. One JSON object per line in
//! `<data_dir>/audit.log`, appended and synced before the answer goes out.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context;
use serde_json::{Value, json};
use toplog_types::Micros;

/// The audit file, opened for appending.
#[derive(Debug)]
pub(crate) struct AuditLog {
    path: PathBuf,
    file: Mutex<std::fs::File>,
}

/// One change.
pub(crate) struct Entry<'a> {
    pub(crate) key_id: &'a str,
    pub(crate) from: Option<std::net::IpAddr>,
    pub(crate) method: &'a str,
    pub(crate) path: &'a str,
    pub(crate) status: u16,
}

impl AuditLog {
    pub(crate) fn open(data_dir: &Path) -> anyhow::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = data_dir.join("audit.log");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(Self {
            path,
            file: Mutex::new(file),
        })
    }

    /// Appends `entry` and syncs it.
    pub(crate) fn record(&self, entry: &Entry<'_>) {
        let line = json!({
            "time": Micros::now().to_rfc3339(),
            "key_id": entry.key_id,
            "from": entry.from.map(|ip| ip.to_string()),
            "method": entry.method,
            "path": entry.path,
            "status": entry.status,
        });
        let mut file = self
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let written = writeln!(file, "{line}").and_then(|()| file.sync_data());
        if let Err(e) = written {
            tracing::error!(error = %e, path = %self.path.display(), ?line, "cannot write the audit log");
        }
    }

    /// The last `limit` entries, oldest first.
    pub(crate) fn last(&self, limit: usize) -> anyhow::Result<Vec<Value>> {
        let file = std::fs::File::open(&self.path)
            .with_context(|| format!("cannot read {}", self.path.display()))?;
        let mut out = std::collections::VecDeque::with_capacity(limit.min(10_000));
        for line in std::io::BufReader::new(file).lines() {
            let line = line?;
            // A line cut by a crash mid-write is left out, not an error.
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if out.len() == limit {
                    out.pop_front();
                }
                out.push_back(v);
            }
        }
        Ok(out.into())
    }
}
