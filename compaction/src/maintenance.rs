//! One maintenance pass: purge what is past retention, compact small segments,
//! move segments older than `raw.local_for` to the archive.
//!
//! Compaction is size-tiered, per partition: local segments fall in tiers by
//! size (tier n holds sizes in `[MIN_BYTES * 4^n, MIN_BYTES * 4^(n+1))`, all
//! smaller ones in tier 0); a tier with [`MIN_MERGE`] segments or more has up
//! to [`MAX_MERGE`] of its smallest merged into one, as long as the result stays
//! under [`MAX_BYTES`]. Each segment is rewritten O(log n) times over its life.

use std::time::{Duration, Instant};

use serde::Serialize;
use toplog_engine::{Engine, EngineError, SegmentInfo};
use toplog_types::{Micros, SegmentId};

use crate::policy::Policy;

/// Segments below this size share the lowest tier.
pub const MIN_BYTES: u64 = 1 << 20;
/// Segments merged together at least...
pub const MIN_MERGE: usize = 4;
/// ...and at most.
pub const MAX_MERGE: usize = 32;
/// A merge never makes a segment larger than this.
pub const MAX_BYTES: u64 = 1 << 30;

/// What one pass did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub started_at: String,
    pub took_ms: f64,
    pub purged_segments: Vec<SegmentSummary>,
    /// Rollup buckets dropped: minute, hour, day.
    pub purged_buckets: PurgedBuckets,
    pub compacted: Vec<Compaction>,
    pub archived: Vec<SegmentSummary>,
    /// Rollup tier files copied to the archive.
    pub archived_rollup_files: usize,
    /// Archive objects nothing names any more, deleted.
    pub swept_objects: Vec<String>,
    /// Steps that failed; they are tried again on the next pass.
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PurgedBuckets {
    pub minute: usize,
    pub hour: usize,
    pub day: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct SegmentSummary {
    pub id: u64,
    pub rows: u64,
    pub bytes: u64,
    pub min_ts: String,
    pub max_ts: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
}

impl From<&SegmentInfo> for SegmentSummary {
    fn from(s: &SegmentInfo) -> Self {
        Self {
            id: s.id.get(),
            rows: s.meta.rows,
            bytes: s.bytes,
            min_ts: s.meta.min_ts.to_rfc3339(),
            max_ts: s.meta.max_ts.to_rfc3339(),
            object: s.archived.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Compaction {
    pub from: Vec<u64>,
    pub into: SegmentSummary,
}

/// The size tier of a segment of `bytes`.
fn tier(bytes: u64) -> u32 {
    (bytes.max(MIN_BYTES) / MIN_BYTES).ilog2() / 2
}

/// Groups of local segments to merge, by the size-tiered policy above.
pub fn plan_compactions(segments: &[SegmentInfo]) -> Vec<Vec<SegmentId>> {
    let mut local: Vec<&SegmentInfo> = segments.iter().filter(|s| s.archived.is_none()).collect();
    // Segments sealed at different entries (or one sealed, one not) are never
    // merged: a cluster's cut-offs replace each seal's segments whole.
    local.sort_by_key(|s| {
        (
            s.meta.partition_start,
            s.meta.partition_len_us,
            s.sealed,
            tier(s.bytes),
            s.bytes,
            s.id,
        )
    });
    let mut out = Vec::new();
    for group in local.chunk_by(|a, b| {
        (
            a.meta.partition_start,
            a.meta.partition_len_us,
            a.sealed,
            tier(a.bytes),
        ) == (
            b.meta.partition_start,
            b.meta.partition_len_us,
            b.sealed,
            tier(b.bytes),
        )
    }) {
        let mut pick = Vec::new();
        let mut total = 0u64;
        for s in group.iter().take(MAX_MERGE) {
            if total.saturating_add(s.bytes) > MAX_BYTES {
                break;
            }
            total += s.bytes;
            pick.push(s.id);
        }
        if pick.len() >= MIN_MERGE {
            out.push(pick);
        }
    }
    out
}

/// Whether a pass may write and delete in the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveAccess {
    /// The archive's owner marker names this node.
    Owned,
    /// It does not, or could not be read (the reason): the pass only compacts.
    Fenced(String),
}

/// Runs one pass over `engine` under `policy` at the current time. A pass
/// `Fenced` from the archive skips every step that writes or deletes there
/// (purge deletes archived objects, so it waits too; reads hide expired rows
/// meanwhile) and reports why as an archive error.
pub fn run(engine: &Engine, policy: &Policy, archive: &ArchiveAccess) -> Report {
    let clock = Instant::now();
    let mut report = Report {
        started_at: Micros::now().to_rfc3339(),
        ..Report::default()
    };
    engine.set_retention(policy.retention());
    if let ArchiveAccess::Fenced(reason) = archive {
        report.errors.push(format!("archiving: {reason}"));
        compact(engine, &mut report);
        report.took_ms = clock.elapsed().as_secs_f64() * 1000.0;
        return report;
    }
    match engine.purge() {
        Ok(p) => {
            report.purged_segments = p.segments.iter().map(SegmentSummary::from).collect();
            report.purged_buckets = PurgedBuckets {
                minute: p.buckets[0],
                hour: p.buckets[1],
                day: p.buckets[2],
            };
            for key in p.leftover_objects {
                report
                    .errors
                    .push(format!("purged object {key} could not be deleted"));
            }
        }
        Err(e) => report.errors.push(format!("purge: {e}")),
    }
    compact(engine, &mut report);
    let local_cutoff = Micros::now().saturating_sub_micros(micros(policy.raw_local_for));
    let mut due: Vec<SegmentInfo> = engine
        .segments()
        .into_iter()
        .filter(|s| s.archived.is_none() && s.meta.max_ts < local_cutoff)
        .collect();
    due.sort_by_key(|s| s.meta.max_ts);
    for s in due {
        match engine.archive_segment(s.id) {
            Ok(info) => report.archived.push(SegmentSummary::from(&info)),
            Err(e) => {
                report
                    .errors
                    .push(format!("archiving segment {}: {e}", s.id));
                // The store is failing; the rest waits for the next pass.
                if matches!(e, EngineError::Archive { .. }) {
                    break;
                }
            }
        }
    }
    match engine.archive_rollups() {
        Ok(n) => report.archived_rollup_files = n,
        Err(e) => report.errors.push(format!("archiving rollups: {e}")),
    }
    // Only on a pass the store answered well: a failing store gets no extra calls.
    if report.errors.is_empty() {
        match engine.sweep_archive() {
            Ok(keys) => report.swept_objects = keys,
            Err(e) => report.errors.push(format!("archiving (sweep): {e}")),
        }
    }
    report.took_ms = clock.elapsed().as_secs_f64() * 1000.0;
    report
}

/// Merges what [`plan_compactions`] picks.
pub(crate) fn compact(engine: &Engine, report: &mut Report) {
    for ids in plan_compactions(&engine.segments()) {
        match engine.compact(&ids) {
            Ok(info) => report.compacted.push(Compaction {
                from: ids.iter().map(|id| id.get()).collect(),
                into: SegmentSummary::from(&info),
            }),
            Err(e) => report.errors.push(format!("compaction of {ids:?}: {e}")),
        }
    }
}

pub(crate) fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use toplog_engine::SegmentMeta;

    fn seg(id: u64, part: i64, bytes: u64) -> SegmentInfo {
        SegmentInfo {
            id: SegmentId::new(id),
            meta: SegmentMeta {
                rows: 1,
                min_ts: Micros::new(part),
                max_ts: Micros::new(part),
                partition_start: Micros::new(part),
                partition_len_us: 86_400_000_000,
            },
            bytes,
            archived: None,
            sealed: None,
        }
    }

    #[test]
    fn merges_only_full_tiers_of_one_partition() {
        let mut segs: Vec<SegmentInfo> = (1..=5).map(|i| seg(i, 0, 1000 + i)).collect();
        // Three in another partition: not enough to merge.
        segs.extend((6..=8).map(|i| seg(i, 86_400_000_000, 1000)));
        // Big ones are a tier of their own.
        segs.extend((9..=11).map(|i| seg(i, 0, 64 << 20)));
        let plan = plan_compactions(&segs);
        assert_eq!(plan, vec![(1..=5).map(SegmentId::new).collect::<Vec<_>>()]);
        segs[2].sealed = Some(40);
        assert_eq!(
            plan_compactions(&segs),
            vec![[1, 2, 4, 5].map(SegmentId::new).to_vec()],
            "a sealed segment is merged only with segments sealed at the same entry"
        );
        segs[2].sealed = None;
        segs[0].archived = Some("raw/x.parquet".into());
        segs[1].archived = Some("raw/y.parquet".into());
        assert!(
            plan_compactions(&segs).is_empty(),
            "archived segments are never merged"
        );
    }

    #[test]
    fn a_merge_stays_under_the_size_cap() {
        let segs: Vec<SegmentInfo> = (1..=40).map(|i| seg(i, 0, MAX_BYTES / 5)).collect();
        let plan = plan_compactions(&segs);
        assert_eq!(plan.len(), 1);
        assert_eq!(plan[0].len(), 5);
    }
}
