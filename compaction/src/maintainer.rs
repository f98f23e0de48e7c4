//! The running node's maintenance: the live policy, one pass at a time
//! (scheduled or asked for), the last pass's report, and what is stored in
//! each tier for `GET /api/v1/storage`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Value, json};
use toplog_engine::{Engine, EngineError, RekeyReport, SegmentInfo};
use toplog_types::Micros;

use crate::cluster::Coordinator;
use crate::maintenance::{self, ArchiveAccess, Report};
use crate::owner::ArchiveOwner;
use crate::policy::{Policy, PolicyError, PolicyErrorKind};

/// Why a rekey stopped; what it finished stays done, and running it again
/// finishes the rest.
#[derive(Debug, thiserror::Error)]
pub enum RekeyError {
    #[error("the archive is not this node's to write: {0}")]
    Fenced(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("{0}")]
    Policy(String),
}

/// What maintenance passes have done since the process started (for
/// `/metrics`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassTotals {
    pub passes: u64,
    /// Passes with at least one failed step (tried again at the next).
    pub failed_passes: u64,
    /// Passes in a row, up to the last, with a failed step.
    pub failing_in_a_row: u64,
    /// Archive steps that failed (copying a segment or tier file, writing
    /// the archive's marker or manifest).
    pub archive_errors: u64,
    pub archived_segments: u64,
    pub purged_segments: u64,
    pub compactions: u64,
}

#[derive(Debug)]
pub struct Maintainer {
    engine: Arc<Engine>,
    data_dir: PathBuf,
    /// Checked before every pass: only the archive's owner writes there.
    owner: Arc<ArchiveOwner>,
    policy: Mutex<Policy>,
    last: Mutex<Option<Report>>,
    /// Passes in a row that ended with errors.
    failing_passes: Mutex<u64>,
    /// What every pass since the start did.
    totals: Mutex<PassTotals>,
    /// Held for a whole pass, so passes never overlap.
    running: Mutex<()>,
    /// A cluster member's way to propose what its leader decides.
    cluster: std::sync::OnceLock<Arc<dyn Coordinator>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Maintainer {
    /// Maintains `engine` under `policy`, which reads obey from now on.
    pub fn new(
        engine: Arc<Engine>,
        data_dir: PathBuf,
        policy: Policy,
        owner: Arc<ArchiveOwner>,
    ) -> Self {
        engine.set_retention(policy.retention());
        Self {
            engine,
            data_dir,
            owner,
            policy: Mutex::new(policy),
            last: Mutex::new(None),
            failing_passes: Mutex::new(0),
            totals: Mutex::new(PassTotals::default()),
            running: Mutex::new(()),
            cluster: std::sync::OnceLock::new(),
        }
    }

    /// Makes this node's passes a cluster member's ([`crate::cluster`]).
    pub fn join_cluster(&self, cluster: Arc<dyn Coordinator>) {
        let _ = self.cluster.set(cluster);
    }

    /// The archive's owner, whose cluster id a member sets from the log.
    pub fn owner(&self) -> &ArchiveOwner {
        &self.owner
    }

    pub fn policy(&self) -> Policy {
        *lock(&self.policy)
    }

    /// Applies `change` (any subset of the policy's JSON), persists it, and
    /// makes reads obey it at once.
    pub fn set_policy(&self, change: &Value) -> Result<Policy, PolicyError> {
        let mut policy = lock(&self.policy);
        let next = policy.updated(change)?;
        next.store(&self.data_dir, self.engine.cipher())
            .map_err(|e| PolicyError {
                field: "retention.json".into(),
                reason: format!("cannot persist the policy: {e}"),
                kind: PolicyErrorKind::Storage,
            })?;
        *policy = next;
        self.engine.set_retention(next.retention());
        Ok(next)
    }

    /// What every pass since the start did.
    pub fn totals(&self) -> PassTotals {
        *lock(&self.totals)
    }

    /// Of `segments` (the engine's, as the caller read them), the local
    /// ones whose rows are all older than `raw.local_for`: the archive's
    /// backlog (none while the archive keeps up).
    pub fn archive_backlog(&self, segments: &[SegmentInfo]) -> usize {
        let local_for = lock(&self.policy).raw_local_for;
        let cutoff = Micros::now()
            .saturating_sub_micros(i64::try_from(local_for.as_micros()).unwrap_or(i64::MAX));
        (segments.iter())
            .filter(|s| s.archived.is_none() && s.meta.max_ts < cutoff)
            .count()
    }

    /// One pass now (after any pass under way). Blocks: call it off the async threads.
    pub fn run(&self) -> Report {
        let _one = lock(&self.running);
        let access = match self.owner.check() {
            Ok(()) => ArchiveAccess::Owned,
            Err(e) => ArchiveAccess::Fenced(e.to_string()),
        };
        let report = match self.cluster.get() {
            Some(cluster) => {
                crate::cluster::run(&self.engine, &self.policy(), &access, cluster.as_ref())
            }
            None => maintenance::run(&self.engine, &self.policy(), &access),
        };
        {
            let mut failing = lock(&self.failing_passes);
            *failing = if report.errors.is_empty() {
                0
            } else {
                *failing + 1
            };
            let mut t = lock(&self.totals);
            t.passes += 1;
            t.failed_passes += u64::from(!report.errors.is_empty());
            t.failing_in_a_row = *failing;
            t.archive_errors += (report.errors.iter())
                .filter(|e| e.starts_with("archiving"))
                .count() as u64;
            t.archived_segments += report.archived.len() as u64;
            t.purged_segments += report.purged_segments.len() as u64;
            t.compactions += report.compacted.len() as u64;
        }
        *lock(&self.last) = Some(report.clone());
        report
    }

    /// Writes everything the store and the stored retention policy hold
    /// under another key than the current one again (see [`Engine::rekey`]),
    /// between maintenance passes and only while this node owns its archive
    /// (a cluster's member rewrites its own files alone, whatever the archive).
    pub fn rekey(&self) -> Result<RekeyReport, RekeyError> {
        let _one = lock(&self.running);
        // A cluster's member leaves the archive alone in a rekey.
        if self.cluster.get().is_none() {
            self.owner
                .check()
                .map_err(|e| RekeyError::Fenced(e.to_string()))?;
        }
        let report = self.engine.rekey()?;
        let policy = lock(&self.policy);
        if Policy::is_stored(&self.data_dir) {
            policy
                .store(&self.data_dir, self.engine.cipher())
                .map_err(|e| RekeyError::Policy(format!("cannot store retention.json: {e}")))?;
        }
        Ok(report)
    }

    /// Partitions, segments, tiers with their sizes and oldest data, the archive's
    /// state, the policy and the last pass.
    pub fn storage(&self) -> Value {
        let segments = self.engine.segments();
        let stats = self.engine.stats();
        let mut partitions: BTreeMap<(i64, i64), Vec<&SegmentInfo>> = BTreeMap::new();
        for s in &segments {
            let start = s.meta.partition_start.get();
            partitions
                .entry((start, start.saturating_add(s.meta.partition_len_us)))
                .or_default()
                .push(s);
        }
        let tier_of = |s: &SegmentInfo| {
            if s.archived.is_some() {
                "archive"
            } else {
                "local"
            }
        };
        let partitions: Vec<Value> = partitions
            .iter()
            .map(|((start, end), segs)| {
                let count = |tier: &str| segs.iter().filter(|s| tier_of(s) == tier).count();
                json!({
                    "start": Micros::new(*start).to_rfc3339(),
                    "end": Micros::new(*end).to_rfc3339(),
                    "segments": segs.len(),
                    "local_segments": count("local"),
                    "archived_segments": count("archive"),
                    "rows": segs.iter().map(|s| s.meta.rows).sum::<u64>(),
                    "bytes": segs.iter().map(|s| s.bytes).sum::<u64>(),
                })
            })
            .collect();
        let raw_tier = |tier: &str| {
            let segs: Vec<&SegmentInfo> = segments.iter().filter(|s| tier_of(s) == tier).collect();
            json!({
                "segments": segs.len(),
                "rows": segs.iter().map(|s| s.meta.rows).sum::<u64>(),
                "bytes": segs.iter().map(|s| s.bytes).sum::<u64>(),
                "oldest": segs.iter().map(|s| s.meta.min_ts).min().map(Micros::to_rfc3339),
            })
        };
        let mut tiers = serde_json::Map::new();
        tiers.insert("raw_local".into(), raw_tier("local"));
        tiers.insert("raw_archive".into(), raw_tier("archive"));
        for t in self.engine.rollup_tiers() {
            tiers.insert(
                t.granularity.name().into(),
                json!({
                    "buckets": t.buckets,
                    "in_memory": t.in_memory,
                    "oldest": t.oldest.map(Micros::to_rfc3339),
                }),
            );
        }
        let cutoffs = self.engine.cutoffs();
        let last = lock(&self.last).clone();
        let failing = *lock(&self.failing_passes);
        let archive_errors: Vec<&String> = last
            .as_ref()
            .map(|r| {
                r.errors
                    .iter()
                    .filter(|e| e.starts_with("archiving"))
                    .collect()
            })
            .unwrap_or_default();
        json!({
            "partitions": partitions,
            "segments": segments.iter().map(|s| json!({
                "id": s.id.get(),
                "tier": tier_of(s),
                "object": s.archived,
                "partition_start": s.meta.partition_start.to_rfc3339(),
                "min_ts": s.meta.min_ts.to_rfc3339(),
                "max_ts": s.meta.max_ts.to_rfc3339(),
                "rows": s.meta.rows,
                "bytes": s.bytes,
                "sealed": s.sealed,
            })).collect::<Vec<_>>(),
            "memtable": {"rows": stats.memtable_rows, "bytes": stats.memtable_bytes},
            "interned_keys": toplog_engine::Dimension::ALL
                .iter()
                .map(|d| (d.name().to_owned(), json!(d.interned_keys())))
                .collect::<serde_json::Map<String, Value>>(),
            "interned_key_bytes": stats.key_bytes,
            "key_memory_bytes": stats.key_budget,
            "ingest": {"apply_lock_wait_us": {
                "count": stats.apply_lock_wait.count,
                "p50": stats.apply_lock_wait.p50_us,
                "p99": stats.apply_lock_wait.p99_us,
                "max": stats.apply_lock_wait.max_us,
            }},
            "tiers": tiers,
            "kept_from": {
                "raw": cutoffs.raw.to_rfc3339(),
                "rollup_1m": cutoffs.rollup(toplog_engine::Granularity::Minute).to_rfc3339(),
                "rollup_1h": cutoffs.rollup(toplog_engine::Granularity::Hour).to_rfc3339(),
                "rollup_1d": cutoffs.rollup(toplog_engine::Granularity::Day).to_rfc3339(),
            },
            "archive": {
                "location": self.owner.location(),
                "node_id": self.owner.node().to_string(),
                "owned": self.owner.is_confirmed(),
                "cluster_id": self.owner.cluster(),
                "pending_cutoffs": self.engine.pending_cutoffs().len(),
                "status": if archive_errors.is_empty() { "ok" } else { "failing" },
                "last_errors": archive_errors,
            },
            "retention": self.policy().to_json(),
            "maintenance": {"failing_passes": failing, "last": last},
        })
    }
}
