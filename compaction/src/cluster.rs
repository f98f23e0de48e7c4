//! A maintenance pass on a cluster's member. What changes which data exists
//! (purges, seals for the archive, the archive's cut-offs) the leader
//! decides and proposes through the Raft log; every member applies each
//! decision at the same point of the log ([`Decision::apply`]). Every
//! member compacts its own segments and puts the cut-offs it has applied in
//! force; only the leader writes to (and sweeps) the cluster's archive.
//! See docs/cluster.md, "The archive".

use std::collections::BTreeSet;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use toplog_engine::{ArchiveCutoff, Cutoffs, Engine, EngineError};
use toplog_types::Micros;

use crate::maintenance::{self, ArchiveAccess, PurgedBuckets, Report, SegmentSummary};
use crate::policy::Policy;

/// A maintenance decision every member applies from the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Decision {
    /// Drop what is older than these cut-offs (the leader's retention, when
    /// it proposed the purge).
    Purge(Cutoffs),
    /// Flush, and seal every local segment of a partition that ends at or
    /// before `before` for the archive.
    Seal { before: Micros },
    /// A partition's rows sealed at an entry are in the archive as these
    /// objects.
    Cutoff(ArchiveCutoff),
}

impl Decision {
    /// Applies the decision at log index `index` to this member's store.
    pub fn apply(&self, engine: &Engine, index: u64) -> Result<(), EngineError> {
        match self {
            Decision::Purge(cutoffs) => engine.purge_replicated(*cutoffs).map(drop),
            Decision::Seal { before } => engine.seal_replicated(index, *before).map(drop),
            Decision::Cutoff(cutoff) => engine.record_cutoff(cutoff.clone()),
        }
    }
}

/// The member's way to the cluster, for its maintenance.
pub trait Coordinator: Send + Sync + std::fmt::Debug {
    /// Whether this member leads now.
    fn leads(&self) -> bool;
    /// Proposes `decision` through the log and waits until this member has
    /// applied it.
    fn decide(&self, decision: Decision) -> Result<(), String>;
    /// Waits until this member has applied everything committed now.
    fn catch_up(&self) -> Result<(), String>;
}

/// One pass on a cluster member (see the module's notes).
pub fn run(
    engine: &Engine,
    policy: &Policy,
    archive: &ArchiveAccess,
    cluster: &dyn Coordinator,
) -> Report {
    let clock = Instant::now();
    let mut report = Report {
        started_at: Micros::now().to_rfc3339(),
        ..Report::default()
    };
    engine.set_retention(policy.retention());
    adopt(engine, &mut report);
    maintenance::compact(engine, &mut report);
    if cluster.leads() {
        // A purge deletes no object (the sweep does): it needs no archive.
        purge(engine, cluster, &mut report);
        match archive {
            ArchiveAccess::Fenced(reason) => report.errors.push(format!("archiving: {reason}")),
            ArchiveAccess::Owned => archive_sealed(engine, policy, cluster, &mut report),
        }
    }
    report.took_ms = clock.elapsed().as_secs_f64() * 1000.0;
    report
}

/// The leader's purge, through the log.
fn purge(engine: &Engine, cluster: &dyn Coordinator, report: &mut Report) {
    let cutoffs = engine.cutoffs();
    let expired: Vec<_> = (engine.segments().into_iter())
        .filter(|s| s.meta.max_ts < cutoffs.raw)
        .collect();
    let buckets_before = engine.rollup_tiers();
    match cluster.decide(Decision::Purge(cutoffs)) {
        Ok(()) => {
            let left = engine.segments();
            report.purged_segments = (expired.iter())
                .filter(|s| !left.iter().any(|l| l.id == s.id))
                .map(SegmentSummary::from)
                .collect();
            let after = engine.rollup_tiers();
            let dropped = |i: usize| {
                let (b, a) = (buckets_before.get(i), after.get(i));
                b.zip(a)
                    .map_or(0, |(b, a)| b.buckets.saturating_sub(a.buckets))
            };
            report.purged_buckets = PurgedBuckets {
                minute: dropped(0),
                hour: dropped(1),
                day: dropped(2),
            };
        }
        Err(e) => report.errors.push(format!("purge: {e}")),
    }
}

/// The leader's archiving: seal, upload, cut-offs, then the sweep.
fn archive_sealed(
    engine: &Engine,
    policy: &Policy,
    cluster: &dyn Coordinator,
    report: &mut Report,
) {
    // What this member holds must be what the log says first: a cut-off
    // proposed before (it may have timed out and committed since) is
    // applied here before the sealed segments still local are counted.
    if let Err(e) = cluster.catch_up() {
        report.errors.push(format!("archiving (catching up): {e}"));
        return;
    }
    let local_cutoff =
        Micros::now().saturating_sub_micros(maintenance::micros(policy.raw_local_for));
    if engine.unsealed_before(local_cutoff)
        && let Err(e) = cluster.decide(Decision::Seal {
            before: local_cutoff,
        })
    {
        report.errors.push(format!("archiving (seal): {e}"));
        return;
    }

    // Every sealed group still local here, whoever sealed it: one a leader
    // before this one sealed and did not finish goes too.
    let waiting: BTreeSet<(Micros, u64)> = (engine.pending_cutoffs().iter())
        .map(|c| (c.partition_start, c.seal))
        .collect();
    let groups: BTreeSet<(Micros, u64)> = (engine.segments().into_iter())
        .filter(|s| s.archived.is_none())
        .filter_map(|s| Some((s.meta.partition_start, s.sealed?)))
        .filter(|g| !waiting.contains(g))
        .collect();
    for (partition, seal) in groups {
        // Leadership may have moved during the pass: the next leader uploads.
        if !cluster.leads() {
            return;
        }
        // A number no other upload draws: two leaders' copies of the same
        // rows never share a name, so neither deletes the other's.
        let upload = uuid::Uuid::now_v7().as_u64_pair().1;
        let done = engine
            .upload_sealed(partition, seal, upload)
            .map_err(|e| e.to_string())
            .and_then(|cutoff| cluster.decide(Decision::Cutoff(cutoff)));
        if let Err(e) = done {
            report.errors.push(format!(
                "archiving partition {} sealed at {seal}: {e}",
                partition.to_rfc3339()
            ));
            // The store is failing, or the log did not take the cut-off (it
            // may yet): the rest waits for the next pass.
            break;
        }
    }
    adopt(engine, report);

    // Only on a pass the store answered well, and after everything committed
    // is applied here: an object a committed cut-off names is never taken
    // for an orphan.
    if report.errors.is_empty() && cluster.leads() {
        let swept = cluster
            .catch_up()
            .and_then(|()| engine.sweep_archive().map_err(|e| e.to_string()));
        match swept {
            Ok(keys) => report.swept_objects = keys,
            Err(e) => report.errors.push(format!("archiving (sweep): {e}")),
        }
    }
}

/// Puts the cut-offs applied here in force, noting what it archived.
fn adopt(engine: &Engine, report: &mut Report) {
    match engine.adopt_cutoffs() {
        Ok(done) => {
            if !done.adopted.is_empty() {
                report.archived.extend(
                    (engine.segments().iter())
                        .filter(|s| {
                            s.archived.is_some()
                                && s.sealed.is_some_and(|seal| {
                                    done.adopted.contains(&(s.meta.partition_start, seal))
                                })
                        })
                        .map(SegmentSummary::from),
                );
            }
            for why in done.waiting {
                report.errors.push(format!("archiving: {why}"));
            }
        }
        Err(e) => report.errors.push(format!("archiving (cut-offs): {e}")),
    }
}
