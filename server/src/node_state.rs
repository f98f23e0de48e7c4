//! The node's state besides the store's own files, by file: the list
//! ("Node state" in DESIGN.md) that encryption counts and backups copy.
//! The store's files (manifest, segments, key files, rollups) are the
//! engine's to list: a checkpoint holds them.

use std::path::{Path, PathBuf};

use toplog_crypt::{Cipher, KeyUse};
use toplog_engine::KeyUsage;

/// The node's id (never sealed).
pub(crate) const NODE_ID: &str = "NODE_ID";
/// A cluster member's cluster id (never sealed; `raft/`'s other files are
/// the old log's, which a restored node does not continue: `raft/PLACEMENT`,
/// a sharded cluster's map, names the old cluster's nodes, and a restored
/// node makes a new map of the same shards from its `--cluster` flag; each
/// shard's replica, `shards/<n>/`, is a store of its own that a backup
/// checkpoints beside this node's).
const CLUSTER_ID: &str = "raft/CLUSTER_ID";
/// Files each replaced whole (one envelope of JSON when sealed).
const WHOLE_FILES: [&str; 4] = [
    "retention.json",
    "keys.json",
    "cluster-keys.json",
    "alerting.json",
];
/// Append-only logs, one sealed line each.
const LOGS: [&str; 2] = ["audit.log", "alert-history.log"];
/// The directory of aggregation jobs, one file each.
const JOBS: &str = "jobs";

/// How a state file is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Plain,
    Whole,
    Lines,
}

/// Every state file the node has now (relative path, kind). `admin.key`
/// is left out: it is the operator's first key in plain text, and the
/// hash in `keys.json` is what the node checks.
pub(crate) fn files(data_dir: &Path) -> Vec<(String, Kind)> {
    let mut out: Vec<(String, Kind)> = Vec::new();
    let mut add = |rel: String, kind| {
        if data_dir.join(&rel).is_file() {
            out.push((rel, kind));
        }
    };
    add(NODE_ID.to_owned(), Kind::Plain);
    // A cluster member's cluster id: a cluster restored from its backup
    // keeps it, and with it its archive.
    add(CLUSTER_ID.to_owned(), Kind::Plain);
    for f in WHOLE_FILES {
        add(f.to_owned(), Kind::Whole);
    }
    for f in LOGS {
        add(f.to_owned(), Kind::Lines);
    }
    let mut jobs: Vec<String> = std::fs::read_dir(data_dir.join(JOBS))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".json"))
        .collect();
    jobs.sort();
    for name in jobs {
        add(format!("{JOBS}/{name}"), Kind::Whole);
    }
    out
}

/// Adds the keys the state files are under to `usage`, a file (or a log's
/// line) at a time. One that cannot be read is left out: the routes that
/// use it report why.
pub(crate) fn count_key_use(data_dir: &Path, usage: &mut KeyUsage) {
    let mut count = |used: Result<KeyUse, _>| {
        if let Ok(used) = used {
            *usage.entry(used).or_default() += 1;
        }
    };
    for (rel, kind) in files(data_dir) {
        let path: PathBuf = data_dir.join(rel);
        match kind {
            Kind::Plain => {}
            Kind::Whole => {
                if let Ok(bytes) = std::fs::read(&path) {
                    count(Cipher::key_use(&bytes));
                }
            }
            Kind::Lines => {
                if let Ok(text) = std::fs::read_to_string(&path) {
                    for line in text.lines() {
                        count(Cipher::line_key_use(line));
                    }
                }
            }
        }
    }
}
