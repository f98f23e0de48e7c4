//! The audit log: every call an admin route answers for an admin key that
//! may change something (any method but GET), with who, what, when, from
//! where and the answer's status. One JSON object per line in
//! `<data_dir>/audit.log`, appended and synced before the answer goes out.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context;
use serde_json::{Value, json};
use toplog_crypt::{Cipher, OpenError};
use toplog_types::Micros;

/// The audit file, opened for appending.
#[derive(Debug)]
pub(crate) struct AuditLog {
    path: PathBuf,
    cipher: Cipher,
    file: Mutex<std::fs::File>,
    /// Ids of the lines a cluster member kept here alone when the log
    /// could not take them; the same line committed later is not written
    /// again (until a restart, when it may be: with the same `id`).
    local_only: Mutex<std::collections::HashSet<String>>,
}

fn append_to(path: &Path) -> anyhow::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))
}

/// An entry as the log keeps it (before it is sealed).
pub(crate) fn line(entry: &Entry<'_>) -> Value {
    json!({
        "id": uuid::Uuid::now_v7().simple().to_string(),
        "time": Micros::now().to_rfc3339(),
        "key_id": entry.key_id,
        "from": entry.from.map(|ip| ip.to_string()),
        "method": entry.method,
        "path": entry.path,
        "status": entry.status,
    })
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
    pub(crate) fn open(data_dir: &Path, cipher: &Cipher) -> anyhow::Result<Self> {
        Self::open_file(data_dir.join("audit.log"), cipher)
    }

    /// A log of the same form at `path` (the alert history is one).
    pub(crate) fn open_file(path: PathBuf, cipher: &Cipher) -> anyhow::Result<Self> {
        let file = append_to(&path)?;
        Ok(Self {
            path,
            cipher: cipher.clone(),
            file: Mutex::new(file),
            local_only: Mutex::new(Default::default()),
        })
    }

    /// Appends `line` on this member alone (the cluster's log did not take
    /// it), marked `"local_only": true`.
    pub(crate) fn append_local_only(&self, line: &Value) {
        let mut marked = line.clone();
        marked["local_only"] = Value::Bool(true);
        if let Some(id) = line["id"].as_str() {
            (self.local_only.lock())
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(id.to_owned());
        }
        self.append(&marked);
    }

    /// Appends `line`, committed through a cluster's log, unless this
    /// member wrote it already as [`AuditLog::append_local_only`].
    pub(crate) fn append_committed(&self, line: &Value) {
        let known = line["id"].as_str().is_some_and(|id| {
            (self.local_only.lock())
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(id)
        });
        if !known {
            self.append(line);
        }
    }

    /// Appends `line` (an entry as [`line`] makes it) and syncs it.
    pub(crate) fn append(&self, line: &Value) {
        let mut file = self
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let sealed = self.cipher.seal_line(&line.to_string());
        let written = writeln!(file, "{sealed}").and_then(|()| file.sync_data());
        if let Err(e) = written {
            tracing::error!(error = %e, path = %self.path.display(), ?line, "cannot write the audit log");
        }
    }

    /// The file's path (a snapshot copies it).
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces every entry with those in the file `from` (a snapshot's,
    /// sealed under the same keys), which is moved into place.
    pub(crate) fn replace_with(&self, from: &Path) -> anyhow::Result<()> {
        let mut file = self
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        std::fs::rename(from, &self.path).with_context(|| {
            format!("cannot move {} to {}", from.display(), self.path.display())
        })?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        *file = append_to(&self.path)?;
        Ok(())
    }

    /// The last `limit` entries, oldest first.
    pub(crate) fn last(&self, limit: usize) -> anyhow::Result<Vec<Value>> {
        let mut out = std::collections::VecDeque::with_capacity(limit.min(10_000));
        self.scan(|v| {
            if out.len() == limit {
                out.pop_front();
            }
            out.push_back(v);
        })?;
        Ok(out.into())
    }

    /// Every entry, oldest first.
    fn entries(&self) -> anyhow::Result<Vec<Value>> {
        let mut out = Vec::new();
        self.scan(|v| out.push(v))?;
        Ok(out)
    }

    /// Calls `each` with every entry, oldest first, reading a line at a
    /// time. A line cut by a crash mid-write (only the last line can be) is
    /// left out; a line under a key the node lacks is an error naming the
    /// file.
    pub(crate) fn scan(&self, mut each: impl FnMut(Value)) -> anyhow::Result<()> {
        let file = std::fs::File::open(&self.path)
            .with_context(|| format!("cannot read {}", self.path.display()))?;
        let mut lines = std::io::BufReader::new(file).lines().enumerate().peekable();
        while let Some((n, line)) = lines.next() {
            let line = line?;
            let last = lines.peek().is_none();
            let parsed = match self.cipher.open_line(&line) {
                Ok(text) => serde_json::from_str::<Value>(&text).ok(),
                // Torn: cut short, or its tag cut off.
                Err(OpenError::Malformed(_) | OpenError::WrongKey { .. }) if last => None,
                Err(e) => anyhow::bail!("{} line {}: {e}", self.path.display(), n + 1),
            };
            match parsed {
                Some(v) => each(v),
                None if last => {}
                None => anyhow::bail!("{} line {}: not an audit entry", self.path.display(), n + 1),
            }
        }
        Ok(())
    }

    /// Writes every entry again under the cipher's current key (a rekey):
    /// a new file, synced, renamed over the old one.
    pub(crate) fn reseal(&self) -> anyhow::Result<()> {
        let mut file = self
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut text = String::new();
        for v in self.entries()? {
            text.push_str(&self.cipher.seal_line(&v.to_string()));
            text.push('\n');
        }
        toplog_crypt::store_state_file(&self.path, text.into_bytes(), &toplog_crypt::Cipher::off())
            .with_context(|| format!("cannot write {}", self.path.display()))?;
        *file = append_to(&self.path)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_line_kept_here_alone_is_not_written_again_when_committed() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), &Cipher::off()).unwrap();
        let entry = |path| Entry {
            key_id: "0a1b2c3d4e5f",
            from: None,
            method: "PUT",
            path,
            status: 200,
        };
        let (kept, other) = (
            line(&entry("/api/v1/retention")),
            line(&entry("/api/v1/keys")),
        );
        log.append_local_only(&kept);
        log.append_committed(&kept);
        log.append_committed(&other);
        let lines = log.last(10).unwrap();
        let ids: Vec<&str> = lines.iter().map(|l| l["id"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), 2, "{lines:?}");
        assert!(ids.contains(&kept["id"].as_str().unwrap()));
        assert!(ids.contains(&other["id"].as_str().unwrap()));
        let marked = lines.iter().find(|l| l["id"] == kept["id"]).unwrap();
        assert_eq!(marked["local_only"], true);
    }
}
