//! The archive of a cluster: one archive for every member, written by the
//! leader, and cut-offs applied by every member from the Raft log.
//!
//! Members flush on their own, so their segment files differ; what they
//! agree on is the log. A seal entry at index `B` has every member flush
//! and mark its local segments of the partitions it names with `B`: each
//! member's segments sealed at `B` then hold exactly the same rows (those
//! of the partition from entries up to `B` not sealed before), and
//! compaction never merges them with others. The leader uploads its own
//! sealed segments and proposes a cut-off naming the partition, the seal
//! and the objects; each member replaces its segments sealed at `B` of
//! that partition with references to the objects, once it has checked the
//! objects are there and hold as many rows.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use toplog_types::{Lsn, Micros, SegmentId};

use super::{Engine, SEGMENT_DIR, Segment, Stored, lock};
use crate::archive;
use crate::error::{EngineError, Result};
use crate::manifest;
use crate::segment::SegmentMeta;

/// One object of the cluster's archive: a copy of one of the leader's sealed
/// segments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchivedObject {
    pub key: String,
    pub bytes: u64,
    pub meta: SegmentMeta,
    /// The key it is encrypted under; none: plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
}

/// A partition's rows sealed at log index `seal`, now in the archive as
/// `objects`: what every member applying it drops from its own segments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveCutoff {
    pub partition_start: Micros,
    pub seal: u64,
    pub objects: Vec<ArchivedObject>,
}

impl ArchiveCutoff {
    fn rows(&self) -> u64 {
        self.objects.iter().map(|o| o.meta.rows).sum()
    }

    fn names(&self, key: &str) -> bool {
        self.objects.iter().any(|o| o.key == key)
    }
}

/// What [`Engine::adopt_cutoffs`] did with the cut-offs waiting.
#[derive(Debug, Default)]
pub struct Adopted {
    /// (partition start, seal) of the cut-offs now in force here.
    pub adopted: Vec<(Micros, u64)>,
    /// Cut-offs left waiting, with why (tried again at the next pass).
    pub waiting: Vec<String>,
}

/// The archive key of the `n`th object of upload `upload` at seal `seal`.
fn object_key(partition_start: Micros, seal: u64, upload: u64, n: usize) -> Result<String> {
    archive::cluster_segment_key(partition_start, seal, upload, n).ok_or_else(|| {
        EngineError::Archive {
            key: format!("raw/ (seal {seal}, object {n})"),
            reason: "past the object names this build makes".into(),
        }
    })
}

impl Engine {
    /// Applies a seal entry at replicated log index `index`: flushes every
    /// memtable, then marks each local segment not yet sealed of a partition
    /// that ends at or before `before` as sealed at `index`, and moves the
    /// flushed index to `index`, in one manifest store. Applied again after a
    /// crash (the flushed index was not moved), it does the same. Returns
    /// how many segments it sealed.
    pub fn seal_replicated(&self, index: u64, before: Micros) -> Result<usize> {
        self.flush()?;
        // Under the manifest lock no flush, compaction or purge changes the
        // segments: the state is read, the manifest stored, then the state
        // changed, so reads wait only for the last step.
        let mut manifest = lock(&self.inner.manifest);
        self.inner.check_writable()?;
        if index <= manifest.flushed_lsn.get() {
            return Ok(0);
        }
        let due = |s: &Segment| {
            s.sealed.is_none()
                && matches!(s.stored, Stored::Local(_))
                && s.meta
                    .partition_start
                    .saturating_add_micros(s.meta.partition_len_us)
                    <= before
        };
        let ids: Vec<SegmentId> = (self.inner.read().segments.iter())
            .filter(|s| due(s))
            .map(|s| s.id)
            .collect();
        let mut next = manifest.clone();
        for e in next.segments.iter_mut().filter(|e| ids.contains(&e.id)) {
            e.sealed = Some(index);
        }
        next.flushed_lsn = Lsn::new(index);
        self.inner.store_manifest(&next)?;
        *manifest = next;
        let mut st = self.inner.write();
        for s in st.segments.iter_mut().filter(|s| ids.contains(&s.id)) {
            if let Stored::Local(bytes) = &s.stored {
                *s = Arc::new(Segment {
                    id: s.id,
                    path: s.path.clone(),
                    meta: s.meta,
                    stored: Stored::Local(bytes.clone()),
                    sealed: Some(index),
                });
            }
        }
        st.flushed_lsn = Lsn::new(index);
        st.applied_lsn = Lsn::new(index);
        Ok(ids.len())
    }

    /// Whether rows of a partition that ends at or before `before` are here
    /// and not sealed: in local segments, or in memory not yet flushed.
    pub fn unsealed_before(&self, before: Micros) -> bool {
        let plen = self.inner.config.partition_us();
        let ends_by = |start: Micros, len: i64| start.saturating_add_micros(len) <= before;
        let st = self.inner.read();
        (st.active.keys())
            .chain(
                st.frozen
                    .iter()
                    .flat_map(|f| f.iter().map(|(start, _)| start)),
            )
            .any(|start| ends_by(Micros::new(*start), plen))
            || st.segments.iter().any(|s| {
                s.sealed.is_none()
                    && matches!(s.stored, Stored::Local(_))
                    && ends_by(s.meta.partition_start, s.meta.partition_len_us)
            })
    }

    /// Copies this member's segments of `partition_start` sealed at `seal`
    /// to the archive, each read back and compared row by row, under names
    /// no other cut-off uses; returns the cut-off to propose. Nothing here
    /// names the objects yet: a pass that stops before the cut-off is
    /// applied leaves them for the sweep.
    pub fn upload_sealed(
        &self,
        partition_start: Micros,
        seal: u64,
        upload: u64,
    ) -> Result<ArchiveCutoff> {
        let _one = lock(&self.inner.maintenance);
        self.inner.check_writable()?;
        let sealed: Vec<Arc<Segment>> = (self.inner.read().segments.iter())
            .filter(|s| {
                s.sealed == Some(seal)
                    && s.meta.partition_start == partition_start
                    && matches!(s.stored, Stored::Local(_))
            })
            .cloned()
            .collect();
        let mut objects = Vec::with_capacity(sealed.len());
        for (n, seg) in sealed.iter().enumerate() {
            let cols = self.inner.read_whole(seg)?;
            let key = object_key(partition_start, seal, upload, n)?;
            let copy = self.upload_checked(seg, seg.id, &cols, key, true)?;
            if let Stored::Archived { key, bytes, key_id } = copy.stored {
                objects.push(ArchivedObject {
                    key,
                    bytes,
                    meta: copy.meta,
                    key_id,
                });
            }
        }
        Ok(ArchiveCutoff {
            partition_start,
            seal,
            objects,
        })
    }

    /// Applies a cut-off entry: keeps it among the cut-offs waiting to be
    /// adopted ([`Engine::adopt_cutoffs`]), unless one for the same partition
    /// and seal is in force or waiting already (applied again after a
    /// restart, or proposed twice by two leaders: the first wins).
    pub fn record_cutoff(&self, cutoff: ArchiveCutoff) -> Result<()> {
        let mut manifest = lock(&self.inner.manifest);
        self.inner.check_writable()?;
        let same = |c: &ArchiveCutoff| {
            (c.partition_start, c.seal) == (cutoff.partition_start, cutoff.seal)
        };
        let in_force = manifest
            .segments
            .iter()
            .any(|e| e.archived.as_deref().is_some_and(|k| cutoff.names(k)));
        if in_force || manifest.pending_cutoffs.iter().any(same) {
            return Ok(());
        }
        let mut next = manifest.clone();
        next.pending_cutoffs.push(cutoff);
        self.inner.store_manifest(&next)?;
        *manifest = next;
        Ok(())
    }

    /// The cut-offs applied here and not yet adopted.
    pub fn pending_cutoffs(&self) -> Vec<ArchiveCutoff> {
        lock(&self.inner.manifest).pending_cutoffs.clone()
    }

    /// Puts each waiting cut-off in force: this member's segments of the
    /// partition sealed at its seal are replaced, in one manifest store, by
    /// references to its objects, once each object is found in the archive
    /// at its size, under a key this member holds, and the objects hold as
    /// many rows as those segments. A cut-off that fails a check waits (and
    /// the local rows stay); one with no such segments left (adopted before
    /// a crash, or purged) is dropped.
    pub fn adopt_cutoffs(&self) -> Result<Adopted> {
        let _one = lock(&self.inner.maintenance);
        self.inner.check_writable()?;
        let mut report = Adopted::default();
        for cutoff in self.pending_cutoffs() {
            let what = (cutoff.partition_start, cutoff.seal);
            let sealed: Vec<Arc<Segment>> = (self.inner.read().segments.iter())
                .filter(|s| {
                    s.sealed == Some(cutoff.seal)
                        && s.meta.partition_start == cutoff.partition_start
                        && matches!(s.stored, Stored::Local(_))
                })
                .cloned()
                .collect();
            if sealed.is_empty() {
                self.inner.settle_cutoff(&cutoff, &[], &[])?;
                continue;
            }
            if let Err(why) = self.check_cutoff(&cutoff, &sealed) {
                report.waiting.push(format!(
                    "the cut-off of partition {} sealed at {}: {why}",
                    cutoff.partition_start.to_rfc3339(),
                    cutoff.seal
                ));
                continue;
            }
            let mut added = Vec::with_capacity(cutoff.objects.len());
            {
                let mut manifest = lock(&self.inner.manifest);
                for o in &cutoff.objects {
                    let id = super::Inner::next_segment_id(&mut manifest)?;
                    added.push(Arc::new(Segment {
                        id,
                        path: self
                            .inner
                            .dir(SEGMENT_DIR)
                            .join(manifest::segment_file_name(id)),
                        meta: o.meta,
                        stored: Stored::Archived {
                            key: o.key.clone(),
                            bytes: o.bytes,
                            key_id: o.key_id.clone(),
                        },
                        sealed: Some(cutoff.seal),
                    }));
                }
            }
            let ids: Vec<SegmentId> = sealed.iter().map(|s| s.id).collect();
            match self.inner.settle_cutoff(&cutoff, &ids, &added) {
                Ok(()) => {}
                Err(EngineError::Maintenance(e)) => {
                    report.waiting.push(format!(
                        "the cut-off of partition {} sealed at {}: {e}",
                        cutoff.partition_start.to_rfc3339(),
                        cutoff.seal
                    ));
                    continue;
                }
                Err(e) => return Err(e),
            }
            for s in &sealed {
                self.inner
                    .remove_quietly(&s.path, "a segment now in the cluster's archive");
            }
            report.adopted.push(what);
        }
        Ok(report)
    }

    /// Why this member may not put `cutoff` in force in place of `sealed`.
    fn check_cutoff(
        &self,
        cutoff: &ArchiveCutoff,
        sealed: &[Arc<Segment>],
    ) -> std::result::Result<(), String> {
        let local: u64 = sealed.iter().map(|s| s.meta.rows).sum();
        if local != cutoff.rows() {
            return Err(format!(
                "its objects hold {} rows, this member's segments sealed there {local}",
                cutoff.rows()
            ));
        }
        let store = self.inner.archive_store().map_err(|e| e.to_string())?;
        for o in &cutoff.objects {
            if let Some(id) = &o.key_id
                && self.inner.config.cipher.key(id).is_none()
            {
                return Err(format!(
                    "{} is encrypted under key `{id}`, which this member does not hold",
                    o.key
                ));
            }
            match store.size(&o.key) {
                Ok(n) if n == o.bytes => {}
                Ok(n) => return Err(format!("{} is {n} bytes, not {}", o.key, o.bytes)),
                Err(e) => return Err(format!("{}: {e}", o.key)),
            }
        }
        Ok(())
    }
}

impl super::Inner {
    /// Stores a manifest without the cut-off `cutoff` waiting, without the
    /// segments `remove` and with `add`, then makes reads see the same.
    fn settle_cutoff(
        &self,
        cutoff: &ArchiveCutoff,
        remove: &[SegmentId],
        add: &[Arc<Segment>],
    ) -> Result<()> {
        let mut manifest = lock(&self.manifest);
        self.check_writable()?;
        // A purge from the log may have dropped some of them meanwhile: the
        // objects then hold rows this member no longer has; the cut-off waits.
        if let Some(gone) = remove
            .iter()
            .find(|id| !manifest.segments.iter().any(|e| e.id == **id))
        {
            return Err(crate::error::MaintenanceError::Changed(*gone).into());
        }
        let mut next = manifest.clone();
        next.pending_cutoffs.retain(|c| c != cutoff);
        next.segments.retain(|e| !remove.contains(&e.id));
        next.segments.extend(add.iter().map(|s| s.entry()));
        self.store_manifest(&next)?;
        *manifest = next;
        let mut st = self.write();
        st.segments.retain(|s| !remove.contains(&s.id));
        st.segments.extend(add.iter().cloned());
        drop(st);
        lock(&self.decoded).retain(|id, _| !remove.contains(id));
        Ok(())
    }
}
