//! The Raft log as raft-rs reads it: what [`Durable`](crate::Durable) holds,
//! mirrored in memory (the entries after the last compaction, the term of
//! the entry before them, the hard state and the configuration), and the
//! snapshot offered to followers the log no longer reaches.
//!
//! raft-rs asks [`Storage::snapshot`] from inside a step; a snapshot is
//! never made there. The request is noted and answered "temporarily
//! unavailable"; the node loop makes the snapshot on its next turn and
//! offers it, and raft-rs asks again at the follower's next heartbeat.

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use raft::prelude::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::util::limit_size;
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

#[derive(Debug, Default)]
pub(crate) struct Core {
    /// Entries after `start`, in index order.
    entries: Vec<Entry>,
    /// The entry before the first kept: its index and term (0, 0: none).
    start: (u64, u64),
    hard_state: HardState,
    conf_state: ConfState,
    /// The snapshot followers are sent, once made.
    offered: Option<Snapshot>,
    /// Set when raft-rs asked for a snapshot that is not offered yet.
    wanted: bool,
}

impl Core {
    pub(crate) fn first_index(&self) -> u64 {
        self.start.0 + 1
    }

    pub(crate) fn last_index(&self) -> u64 {
        self.entries.last().map_or(self.start.0, |e| e.index)
    }

    /// Where to compact so that the entries up to `kept` weigh at most
    /// `budget` bytes of payload, when they weigh more than twice that
    /// (`None` otherwise): the last index to drop.
    pub(crate) fn keep_bytes(&self, kept: u64, budget: u64) -> Option<u64> {
        let upto = usize::try_from(kept.saturating_sub(self.start.0)).ok()?;
        let held = self.entries.get(..upto.min(self.entries.len()))?;
        let weight = |e: &Entry| e.data.len() as u64 + e.context.len() as u64;
        if held.iter().map(weight).sum::<u64>() <= 2 * budget {
            return None;
        }
        let mut sum = 0;
        let newest_kept = held.iter().rev().take_while(|e| {
            sum += weight(e);
            sum <= budget
        });
        let keep = newest_kept.count();
        held.get(held.len() - keep - 1).map(|e| e.index)
    }

    /// Appends `entries`, replacing any kept entry at their indexes or after.
    pub(crate) fn append(&mut self, entries: &[Entry]) -> raft::Result<()> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        if first.index < self.first_index() || first.index > self.last_index() + 1 {
            return Err(raft::Error::Store(StorageError::Other(
                format!(
                    "entries from {} do not join the log {}..={}",
                    first.index,
                    self.first_index(),
                    self.last_index()
                )
                .into(),
            )));
        }
        let keep = (first.index - self.first_index()) as usize;
        self.entries.truncate(keep);
        self.entries.extend_from_slice(entries);
        Ok(())
    }

    /// Drops the entries up to `index` (which must be kept), remembering its term.
    pub(crate) fn compact(&mut self, index: u64, term: u64) {
        if index <= self.start.0 {
            return;
        }
        let drop = ((index - self.start.0) as usize).min(self.entries.len());
        self.entries.drain(..drop);
        self.start = (index, term);
    }

    /// Replaces the log with an installed snapshot's position.
    pub(crate) fn restore(&mut self, meta: &SnapshotMetadata) {
        self.entries.clear();
        self.start = (meta.index, meta.term);
        self.hard_state.term = self.hard_state.term.max(meta.term);
        self.hard_state.commit = self.hard_state.commit.max(meta.index);
        self.conf_state = meta.get_conf_state().clone();
        self.offered = None;
    }

    pub(crate) fn set_hard_state(&mut self, hs: HardState) {
        self.hard_state = hs;
    }

    pub(crate) fn set_commit(&mut self, commit: u64) {
        self.hard_state.commit = commit;
    }

    pub(crate) fn commit(&self) -> u64 {
        self.hard_state.commit
    }

    pub(crate) fn set_conf_state(&mut self, cs: ConfState) {
        self.conf_state = cs;
    }

    pub(crate) fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    pub(crate) fn offer(&mut self, snapshot: Snapshot) {
        self.offered = Some(snapshot);
    }

    /// Offers no snapshot until the next is made.
    pub(crate) fn withdraw_offer(&mut self) {
        self.offered = None;
    }

    /// Asks for a snapshot again at the next turn (the last one could not be made).
    pub(crate) fn offer_later(&mut self) {
        self.wanted = true;
    }

    /// Whether raft-rs asked for a snapshot since the last call.
    pub(crate) fn take_wanted(&mut self) -> bool {
        std::mem::take(&mut self.wanted)
    }
}

/// Shared between the node and raft-rs's `RawNode`.
#[derive(Debug, Clone, Default)]
pub(crate) struct NodeStorage(Arc<RwLock<Core>>);

impl NodeStorage {
    pub(crate) fn rl(&self) -> RwLockReadGuard<'_, Core> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn wl(&self) -> RwLockWriteGuard<'_, Core> {
        self.0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Storage for NodeStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let core = self.rl();
        Ok(RaftState::new(
            core.hard_state.clone(),
            core.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let core = self.rl();
        if low < core.first_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > core.last_index() + 1 || low > high {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let offset = core.first_index();
        let mut out = core.entries[(low - offset) as usize..(high - offset) as usize].to_vec();
        limit_size(&mut out, max_size.into());
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let core = self.rl();
        if idx == core.start.0 {
            return Ok(core.start.1);
        }
        if idx < core.start.0 {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > core.last_index() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(core.entries[(idx - core.first_index()) as usize].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.rl().first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.rl().last_index())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let mut core = self.wl();
        // A follower sent it resumes from the log right after it.
        let usable = |s: &Snapshot| {
            let index = s.get_metadata().index;
            index >= request_index && index + 1 >= core.first_index()
        };
        match &core.offered {
            Some(s) if usable(s) => Ok(s.clone()),
            _ => {
                core.wanted = true;
                Err(raft::Error::Store(
                    StorageError::SnapshotTemporarilyUnavailable,
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn entry(index: u64, bytes: usize) -> Entry {
        Entry {
            index,
            term: 1,
            data: vec![0; bytes].into(),
            ..Entry::default()
        }
    }

    #[test]
    fn the_log_kept_behind_the_applied_index_is_bounded_by_bytes() {
        let mut core = Core::default();
        let entries: Vec<Entry> = (1..=10).map(|i| entry(i, 100)).collect();
        core.append(&entries).unwrap();
        // 800 bytes up to index 8: under twice 500, nothing to drop.
        assert_eq!(core.keep_bytes(8, 500), None);
        // Up to 10 (1,000 bytes), over twice 450: keep 400 bytes (7..=10), drop up to 6.
        assert_eq!(core.keep_bytes(10, 450), Some(6));
        core.compact(6, 1);
        assert_eq!(core.first_index(), 7);
        assert_eq!(core.keep_bytes(10, 450), None);
        // An entry heavier than the budget alone: everything up to the
        // applied index goes (a follower behind gets a snapshot).
        core.append(&[entry(11, 5_000)]).unwrap();
        assert_eq!(core.keep_bytes(11, 450), Some(11));
        // Entries past the applied index are never counted or dropped.
        core.append(&[entry(12, 5_000)]).unwrap();
        assert_eq!(core.keep_bytes(11, 450), Some(11));
        assert_eq!(core.keep_bytes(10, 450), None);
    }
}
