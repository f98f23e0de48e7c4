//! The Raft node loop, one step at a time: raft-rs's `RawNode` with the
//! node's durable Raft state and its state machine. Nothing here waits or
//! spawns: the caller ticks it, steps it with peers' messages, proposes, and
//! calls [`RaftNode::process_ready`] after each, sending what it returns. The
//! server drives it from one thread; the simulation drives many of them in
//! one deterministic loop.
//!
//! Each Ready is handled in the order raft-rs requires (its docs and
//! `examples/five_mem_node`), with one change: messages a leader may send
//! before persisting go first; new entries and the hard state are written in
//! one durable step; committed entries are applied after that write, not
//! before it (so a crash never leaves applied entries past the commit index
//! on disk, which the simulation found); then go the messages that depend on
//! the write; after `advance`, the light ready's commit index is recorded
//! before its committed entries are applied.

use std::collections::BTreeMap;

use raft::prelude::*;
use raft::storage::MemStorage;
use raft::{StateRole, Storage};

use crate::durable::{Durable, Persisted};
use crate::error::{ReplicationError, Result};

/// What a node applies committed entries to.
pub trait StateMachine {
    /// Applies the committed normal entry at `index` (entries without data,
    /// which a new leader appends, are not passed). Applying must be durable
    /// together with `index` as [`StateMachine::applied`], so that a restart
    /// neither applies an entry twice nor skips one.
    fn apply(&mut self, index: u64, data: &[u8]) -> Result<()>;
    /// The index of the last entry applied (and kept): where a restart resumes.
    fn applied(&self) -> u64;
}

/// A proposal as the log knows it: the index and term it was appended at.
/// It is committed if the entry applied at `index` has `term`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket {
    pub index: u64,
    pub term: u64,
}

/// How a proposal ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Committed by a quorum and applied here.
    Applied,
    /// Another entry took its index (leadership changed before it was
    /// committed): it will never be applied.
    Lost,
}

/// Timing, in ticks.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Ticks without a leader's message before a follower stands.
    pub election_ticks: usize,
    /// Ticks between a leader's heartbeats.
    pub heartbeat_ticks: usize,
    /// When set, this node's election timeout is exactly this (raft-rs
    /// otherwise draws it from a thread-local random source, which a
    /// deterministic simulation cannot replay).
    pub fixed_election_ticks: Option<usize>,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            election_ticks: 10,
            heartbeat_ticks: 2,
            fixed_election_ticks: None,
        }
    }
}

/// One member of a Raft group.
pub struct RaftNode<D: Durable, M: StateMachine> {
    raw: RawNode<MemStorage>,
    durable: D,
    machine: M,
    /// Proposals made here and not yet decided, by index.
    pending: BTreeMap<u64, u64>,
    outcomes: Vec<(Ticket, Outcome)>,
}

impl<D: Durable, M: StateMachine> std::fmt::Debug for RaftNode<D, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftNode")
            .field("id", &self.raw.raft.id)
            .field("term", &self.raw.raft.term)
            .field("role", &self.raw.raft.state)
            .field("commit", &self.raw.raft.raft_log.committed)
            .field("applied", &self.machine.applied())
            .finish()
    }
}

impl<D: Durable, M: StateMachine> RaftNode<D, M> {
    /// Opens node `id` from what `durable` holds. A node with no Raft state
    /// yet starts with `voters` as its configuration: every first member is
    /// started with the same list, which bootstraps the group once.
    pub fn open(
        id: u64,
        voters: &[u64],
        mut durable: D,
        machine: M,
        timing: Timing,
        logger: &slog::Logger,
    ) -> Result<Self> {
        let state = durable.load()?;
        let storage = MemStorage::new();
        {
            let mut core = storage.wl();
            match &state {
                None => {
                    // Kept at once: a node restarted without its first
                    // configuration would never stand for election.
                    let first = ConfState::from((voters.to_vec(), vec![]));
                    durable.save_conf_state(&first)?;
                    core.set_conf_state(first);
                }
                Some(Persisted {
                    hard_state,
                    conf_state,
                    entries,
                }) => {
                    core.set_conf_state(conf_state.clone());
                    core.append(entries)?;
                    core.set_hardstate(hard_state.clone());
                }
            }
        }
        // Only committed entries are applied: an applied index past the
        // kept commit index (kept lazily) is committed.
        let applied = machine.applied();
        let committed = storage.initial_state()?.hard_state.commit;
        if applied > committed {
            let last = storage.last_index()?;
            if applied > last {
                return Err(ReplicationError::Inconsistent(format!(
                    "the state machine has applied index {applied}, past the end of the Raft log ({last})"
                )));
            }
            storage.wl().mut_hard_state().set_commit(applied);
        }
        let mut config = Config {
            id,
            election_tick: timing.election_ticks,
            heartbeat_tick: timing.heartbeat_ticks,
            applied,
            check_quorum: true,
            pre_vote: true,
            read_only_option: ReadOnlyOption::Safe,
            max_size_per_msg: 4 << 20,
            max_inflight_msgs: 256,
            ..Config::default()
        };
        if let Some(ticks) = timing.fixed_election_ticks {
            config.election_tick = ticks;
            config.min_election_tick = ticks;
            config.max_election_tick = ticks + 1;
        }
        config.validate()?;
        let raw = RawNode::new(&config, storage, logger)?;
        Ok(Self {
            raw,
            durable,
            machine,
            pending: BTreeMap::new(),
            outcomes: Vec::new(),
        })
    }

    pub fn id(&self) -> u64 {
        self.raw.raft.id
    }

    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    /// `leader`, `candidate`, `pre_candidate` or `follower`.
    pub fn role_name(&self) -> &'static str {
        match self.raw.raft.state {
            StateRole::Leader => "leader",
            StateRole::Candidate => "candidate",
            StateRole::PreCandidate => "pre_candidate",
            StateRole::Follower => "follower",
        }
    }

    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// The leader this node knows of (0: none).
    pub fn leader_id(&self) -> u64 {
        self.raw.raft.leader_id
    }

    /// The last entry applied (in memory: the state machine may keep less).
    pub fn applied_index(&self) -> u64 {
        self.raw.raft.raft_log.applied
    }

    pub fn commit_index(&self) -> u64 {
        self.raw.raft.raft_log.committed
    }

    pub fn machine(&self) -> &M {
        &self.machine
    }

    pub fn durable(&self) -> &D {
        &self.durable
    }

    /// One tick of the logical clock.
    pub fn tick(&mut self) {
        self.raw.tick();
    }

    /// A message from a peer (already authenticated and decoded).
    pub fn step(&mut self, message: Message) -> Result<()> {
        match self.raw.step(message) {
            // A message from a peer no longer in the group, or from an old term.
            Ok(()) | Err(raft::Error::StepPeerNotFound | raft::Error::StepLocalMsg) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Hands leadership to `to` (a voter) once it has caught up; this node
    /// must lead. raft-rs aborts the transfer after an election timeout.
    pub fn transfer_leadership(&mut self, to: u64) -> Result<()> {
        if !self.is_leader() {
            return Err(ReplicationError::NotLeader {
                leader_id: self.leader_id(),
            });
        }
        self.raw.transfer_leader(to);
        Ok(())
    }

    /// Appends `data` to the log if this node leads; the ticket says where.
    pub fn propose(&mut self, data: Vec<u8>) -> Result<Ticket> {
        if !self.is_leader() {
            return Err(ReplicationError::NotLeader {
                leader_id: self.leader_id(),
            });
        }
        let before = self.raw.raft.raft_log.last_index();
        self.raw.propose(vec![], data)?;
        let index = self.raw.raft.raft_log.last_index();
        if index != before + 1 {
            // raft-rs dropped it (a leadership transfer under way, or the
            // uncommitted-size limit) without an error.
            return Err(ReplicationError::Dropped);
        }
        let term = self.raw.raft.term;
        self.pending.insert(index, term);
        Ok(Ticket { index, term })
    }

    /// How proposals made here ended, since the last call.
    pub fn take_outcomes(&mut self) -> Vec<(Ticket, Outcome)> {
        std::mem::take(&mut self.outcomes)
    }

    /// Handles what raft-rs has ready; returns the messages to send. After a
    /// durable-write error the node must not be driven further: it is
    /// reopened from its durable state (fail-stop).
    pub fn process_ready(&mut self) -> Result<Vec<Message>> {
        let mut out = Vec::new();
        if !self.raw.has_ready() {
            return Ok(out);
        }
        let mut ready = self.raw.ready();
        out.extend(ready.take_messages());
        if !ready.snapshot().is_empty() {
            return Err(ReplicationError::Inconsistent(
                "a snapshot arrived, and this node cannot install snapshots yet".into(),
            ));
        }
        // New entries and the hard state in one durable write, before any
        // message that says they are here, and before the entries this
        // Ready commits are applied: the commit index on disk never trails
        // what the state machine has applied.
        if !ready.entries().is_empty() || ready.hs().is_some() {
            self.durable.save(ready.entries(), ready.hs())?;
            let mut core = self.raw.store().wl();
            core.append(ready.entries())?;
            if let Some(hs) = ready.hs() {
                core.set_hardstate(hs.clone());
            }
        }
        let committed = ready.take_committed_entries();
        self.apply(committed)?;
        out.extend(ready.take_persisted_messages());
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.durable.save_commit(commit)?;
            self.raw.store().wl().mut_hard_state().set_commit(commit);
        }
        out.extend(light.take_messages());
        let committed = light.take_committed_entries();
        self.apply(committed)?;
        self.raw.advance_apply();
        Ok(out)
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<()> {
        for entry in entries {
            match entry.get_entry_type() {
                EntryType::EntryNormal => {
                    if !entry.data.is_empty() && entry.index > self.machine.applied() {
                        self.machine.apply(entry.index, &entry.data)?;
                    }
                }
                // The leave-joint entry of ConfChangeV2 has no data: it is
                // applied all the same.
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    let cs = if entry.get_entry_type() == EntryType::EntryConfChange {
                        let mut cc = ConfChange::default();
                        protobuf::Message::merge_from_bytes(&mut cc, &entry.data)?;
                        self.raw.apply_conf_change(&cc)?
                    } else {
                        let mut cc = ConfChangeV2::default();
                        protobuf::Message::merge_from_bytes(&mut cc, &entry.data)?;
                        self.raw.apply_conf_change(&cc)?
                    };
                    self.durable.save_conf_state(&cs)?;
                    self.raw.store().wl().set_conf_state(cs);
                }
            }
            if let Some(term) = self.pending.remove(&entry.index) {
                let ticket = Ticket {
                    index: entry.index,
                    term,
                };
                let outcome = if entry.term == term {
                    Outcome::Applied
                } else {
                    Outcome::Lost
                };
                self.outcomes.push((ticket, outcome));
            }
        }
        Ok(())
    }
}
