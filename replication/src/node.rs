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
//!
//! Snapshots: the log is compacted once the state machine keeps (durably)
//! more than [`Timing::log_keep`] entries past the log's start; a follower
//! the log no longer reaches is sent a snapshot the state machine makes
//! ([`StateMachine::snapshot`]) on the node's next turn. A snapshot a node
//! receives is installed in three durable steps (a note, the state machine,
//! the log), so a crash at any point resumes or abandons it whole.

use std::collections::BTreeMap;

use raft::prelude::*;
use raft::{ProgressState, SnapshotStatus, StateRole};

use crate::durable::Durable;
use crate::error::{ReplicationError, Result};
use crate::storage::NodeStorage;

/// Ticks a follower sent a snapshot may go without fetching any of it
/// before the leader takes the send as failed and offers it again.
const SNAPSHOT_SILENCE_TICKS: u32 = 100;
/// Ticks a new leader waits before it takes a learner it counts as holding
/// nothing for one that does (and sends it a snapshot).
const LEARNER_PATIENCE_TICKS: u32 = 5;

/// What a node applies committed entries to.
pub trait StateMachine {
    /// Applies the committed normal entry at `index` (entries without data,
    /// which a new leader appends, are not passed). Applying must be durable
    /// together with `index` as [`StateMachine::applied`], so that a restart
    /// neither applies an entry twice nor skips one.
    fn apply(&mut self, index: u64, data: &[u8]) -> Result<()>;
    /// The index of the last entry applied (and kept): where a restart resumes.
    fn applied(&self) -> u64;
    /// Makes a snapshot of what is kept, at an index of `at_least` or more
    /// and at most `applied` (the last entry applied, with or without data):
    /// that index and the snapshot's data (what a follower's
    /// [`StateMachine::install`] takes). `None` when it cannot yet (a flush
    /// is needed first): the node asks again later.
    fn snapshot(&mut self, at_least: u64, applied: u64) -> Result<Option<(u64, Vec<u8>)>>;
    /// Replaces everything with the snapshot made at `index` from `data`,
    /// durably: afterwards [`StateMachine::applied`] is `index`.
    fn install(&mut self, index: u64, data: &[u8]) -> Result<()>;
    /// Makes [`StateMachine::applied`] reach `applied` (the last entry
    /// applied) if it can at once: asked before the log is cut as far as it
    /// goes. Nothing by default.
    fn keep_applied(&mut self, _applied: u64) -> Result<()> {
        Ok(())
    }
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
    /// A snapshot covering its index was installed here: whether it was
    /// committed is not known here.
    Unknown,
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
    /// Entries the log keeps before the state machine's applied index, for
    /// followers a little behind; a follower further behind gets a
    /// snapshot. The log is compacted when it holds twice this many.
    pub log_keep: u64,
    /// ... and at most this many bytes of them (payloads), compacted when
    /// they weigh twice this: the log's entries are also held in memory,
    /// and ingest batches are large (a 10,000-event batch is about 0.7 MB).
    pub log_keep_bytes: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            election_ticks: 10,
            heartbeat_ticks: 2,
            fixed_election_ticks: None,
            log_keep: 1000,
            log_keep_bytes: 32 << 20,
        }
    }
}

/// One member of a Raft group.
pub struct RaftNode<D: Durable, M: StateMachine> {
    raw: RawNode<NodeStorage>,
    durable: D,
    machine: M,
    /// Proposals made here and not yet decided, by index.
    pending: BTreeMap<u64, u64>,
    outcomes: Vec<(Ticket, Outcome)>,
    /// Reads confirmed by a quorum: (the read's id, the commit index it
    /// must see applied).
    reads: Vec<(u64, u64)>,
    /// The entry whose application made the configuration in force.
    conf_index: u64,
    /// That configuration's context (see [`RaftNode::open`]).
    conf_context: Vec<u8>,
    log_keep: u64,
    log_keep_bytes: u64,
    /// Followers sent a snapshot: ticks since they last fetched a part of it.
    snapshots_out: BTreeMap<u64, u32>,
    /// Set when a configuration change applied removed this node while it leads.
    removed_leader: bool,
    /// Turns of `maintain` since this node became leader.
    ticks_leading: u32,
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
    /// yet starts with `voters` as its configuration if it is one of them
    /// (every first member is started with the same list, which bootstraps
    /// the group once), with `members` as its configuration's context (what
    /// the application keeps beside the ids, such as their addresses).
    /// Otherwise it is joining a running group: it has no configuration
    /// until a leader that added it sends it a snapshot.
    pub fn open(
        id: u64,
        voters: &[u64],
        members: &[u8],
        mut durable: D,
        machine: M,
        timing: Timing,
        logger: &slog::Logger,
    ) -> Result<Self> {
        let state = durable.load()?;
        let storage = NodeStorage::default();
        let mut conf_index = 0;
        let mut conf_context = Vec::new();
        {
            let mut core = storage.wl();
            match state {
                None if machine.applied() > 0 => {
                    // A store restored from a backup, and no Raft state:
                    // the first node of a new cluster, whose log starts
                    // after the store as if it had installed a snapshot of
                    // it. Alone: another first member's empty log could
                    // win an election and overwrite it.
                    let applied = machine.applied();
                    if voters != [id] {
                        return Err(ReplicationError::Inconsistent(format!(
                            "this node's store holds the log up to index {applied} but it has no Raft state: \
                             it can only start a new cluster of its own (`--cluster` naming it alone); add the others after"
                        )));
                    }
                    let mut meta = SnapshotMetadata {
                        index: applied,
                        term: 1,
                        ..SnapshotMetadata::default()
                    };
                    meta.set_conf_state(ConfState::from((voters.to_vec(), vec![])));
                    durable.finish_install(&meta, members)?;
                    core.restore(&meta);
                    conf_index = applied;
                    conf_context = members.to_vec();
                }
                None => {
                    // Kept at once: a node restarted without its first
                    // configuration would never stand for election.
                    let first = if voters.contains(&id) {
                        conf_context = members.to_vec();
                        ConfState::from((voters.to_vec(), vec![]))
                    } else {
                        ConfState::default()
                    };
                    durable.save_conf_state(&first, 0, &conf_context)?;
                    core.set_conf_state(first);
                }
                Some(p) => {
                    core.compact(p.start.0, p.start.1);
                    core.append(&p.entries)?;
                    core.set_hard_state(p.hard_state);
                    core.set_conf_state(p.conf_state);
                    conf_index = p.conf_index;
                    conf_context = p.conf_context;
                    if let Some((meta, context)) = p.installing {
                        // A restart during an install: the state machine
                        // says how far it got.
                        if machine.applied() >= meta.index {
                            durable.finish_install(&meta, &context)?;
                            core.restore(&meta);
                            conf_index = meta.index;
                            conf_context = context;
                        } else {
                            durable.abandon_install()?;
                        }
                    }
                }
            }
        }
        // Only committed entries are applied: an applied index past the
        // kept commit index (kept lazily) is committed.
        let applied = machine.applied();
        {
            let mut core = storage.wl();
            if applied > core.commit() {
                let last = core.last_index();
                if applied > last {
                    return Err(ReplicationError::Inconsistent(format!(
                        "the state machine has applied index {applied}, past the end of the Raft log ({last})"
                    )));
                }
                core.set_commit(applied);
            }
            if applied + 1 < core.first_index() {
                return Err(ReplicationError::Inconsistent(format!(
                    "the state machine has applied index {applied}, and the Raft log starts at {}",
                    core.first_index()
                )));
            }
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
            reads: Vec::new(),
            conf_index,
            conf_context,
            log_keep: timing.log_keep.max(1),
            log_keep_bytes: timing.log_keep_bytes.max(1),
            snapshots_out: BTreeMap::new(),
            removed_leader: false,
            ticks_leading: 0,
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

    /// The configuration in force: voters (incoming and outgoing, during a
    /// joint change) and learners.
    pub fn conf_state(&self) -> ConfState {
        self.raw.store().rl().conf_state().clone()
    }

    /// Whether this node has no configuration yet (joining, before the
    /// snapshot that brings it).
    fn uninitialized(&self) -> bool {
        let store = self.raw.store().rl();
        let cs = store.conf_state();
        cs.voters.is_empty() && cs.learners.is_empty()
    }

    /// The context of the configuration in force.
    pub fn conf_context(&self) -> &[u8] {
        &self.conf_context
    }

    /// What the leader knows of each member's log: the index it matched up
    /// to, and whether it was heard from within the last election timeout
    /// (empty on a follower).
    pub fn progress(&self) -> BTreeMap<u64, (u64, bool)> {
        if !self.is_leader() {
            return BTreeMap::new();
        }
        self.raw
            .raft
            .prs()
            .iter()
            .map(|(id, pr)| (*id, (pr.matched, pr.recent_active)))
            .collect()
    }

    /// Proposes a configuration change (joint consensus, left on its own
    /// once entered), with `context` as the new configuration's context;
    /// this node must lead. One change at a time: raft-rs drops a second
    /// while one is not yet applied.
    pub fn propose_conf_change(
        &mut self,
        change: ConfChangeV2,
        context: Vec<u8>,
    ) -> Result<Ticket> {
        let ticket = self.appended(|raw| raw.propose_conf_change(context, change))?;
        // raft-rs appends an empty entry in place of a change it ignores
        // (one is pending, or the configuration is joint): not this change.
        if self.raw.raft.pending_conf_index != ticket.index {
            self.pending.remove(&ticket.index);
            return Err(ReplicationError::Dropped);
        }
        Ok(ticket)
    }

    /// Runs `propose` on the leader and tracks the entry it appends.
    fn appended(
        &mut self,
        propose: impl FnOnce(&mut RawNode<NodeStorage>) -> raft::Result<()>,
    ) -> Result<Ticket> {
        if !self.is_leader() {
            return Err(ReplicationError::NotLeader {
                leader_id: self.leader_id(),
            });
        }
        let before = self.raw.raft.raft_log.last_index();
        match propose(&mut self.raw) {
            Ok(()) => {}
            Err(raft::Error::ProposalDropped) => return Err(ReplicationError::Dropped),
            Err(e) => return Err(e.into()),
        }
        let index = self.raw.raft.raft_log.last_index();
        if index != before + 1 {
            // raft-rs dropped it (a leadership transfer or a configuration
            // change under way, or the uncommitted-size limit) without an error.
            return Err(ReplicationError::Dropped);
        }
        let term = self.raw.raft.term;
        self.pending.insert(index, term);
        Ok(Ticket { index, term })
    }

    /// The first entry the log holds.
    pub fn first_index(&self) -> u64 {
        self.raw.store().rl().first_index()
    }

    /// Cuts the log up to what the state machine keeps, keeping nothing
    /// behind it, and withdraws the snapshot on offer: after a rekey, so no
    /// entry or snapshot sealed under a retired key is needed again (a
    /// follower behind is sent a new snapshot).
    pub fn compact_kept(&mut self) -> Result<()> {
        self.machine.keep_applied(self.applied_index())?;
        let kept = self.machine.applied().min(self.applied_index());
        if kept >= self.first_index() {
            let term = self.raw.raft.raft_log.term(kept)?;
            self.durable.compact(kept, term)?;
            self.raw.store().wl().compact(kept, term);
        }
        self.raw.store().wl().withdraw_offer();
        Ok(())
    }

    /// One tick of the logical clock. A follower sent a snapshot that has
    /// fetched none of it for a while is taken as failed (the message was
    /// lost, or the follower restarted): it is offered again.
    pub fn tick(&mut self) {
        self.raw.tick();
        let mut failed = Vec::new();
        let leading = self.is_leader();
        let prs = self.raw.raft.prs();
        self.snapshots_out.retain(|peer, silent| {
            let sending = leading
                && prs
                    .get(*peer)
                    .is_some_and(|p| p.state == ProgressState::Snapshot);
            *silent += 1;
            if sending && *silent > SNAPSHOT_SILENCE_TICKS {
                failed.push(*peer);
                return false;
            }
            sending
        });
        for peer in failed {
            self.raw.report_snapshot(peer, SnapshotStatus::Failure);
        }
    }

    /// The leader's transfer of a snapshot to `peer` ended (the last chunk
    /// went, or the transfer failed).
    pub fn report_snapshot(&mut self, peer: u64, sent: bool) {
        if self.snapshots_out.remove(&peer).is_some() && self.is_leader() {
            let status = if sent {
                SnapshotStatus::Finish
            } else {
                SnapshotStatus::Failure
            };
            self.raw.report_snapshot(peer, status);
        }
    }

    /// Follower `peer` fetched part of the snapshot it was sent.
    pub fn snapshot_fetched(&mut self, peer: u64) {
        if let Some(silent) = self.snapshots_out.get_mut(&peer) {
            *silent = 0;
        }
    }

    /// Makes the snapshot raft-rs asked for, and compacts the log up to what
    /// the state machine keeps. Called between turns (the driver does it
    /// each tick).
    pub fn maintain(&mut self) -> Result<()> {
        if self.is_leader() {
            self.ticks_leading = self.ticks_leading.saturating_add(1);
        } else {
            self.ticks_leading = 0;
        }
        // Once a new leader has had time to hear from every learner (a
        // caught-up one answers its first append within a tick or two).
        if self.is_leader() && self.ticks_leading > LEARNER_PATIENCE_TICKS {
            // A learner that holds nothing (one just added) starts from a
            // snapshot, which brings it the configuration too; the log from
            // index 1 would not.
            let learners = self.conf_state().learners;
            let sending: Vec<u64> = self.snapshots_out.keys().copied().collect();
            for (id, pr) in self.raw.raft.mut_prs().iter_mut() {
                if learners.contains(id)
                    && pr.matched == 0
                    && pr.state == ProgressState::Probe
                    && pr.pending_request_snapshot == raft::INVALID_INDEX
                    && !sending.contains(id)
                {
                    pr.pending_request_snapshot = 1;
                }
            }
        }
        let wanted = self.raw.store().wl().take_wanted();
        if wanted {
            let start = self.first_index() - 1;
            // The configuration sent is the one in force: made at or before the index.
            let at_least = start.max(self.conf_index);
            match self.machine.snapshot(at_least, self.applied_index())? {
                Some((index, data)) if index >= at_least && index <= self.applied_index() => {
                    let term = self.raw.raft.raft_log.term(index)?;
                    let mut snapshot = Snapshot {
                        data: with_context(&self.conf_context, &data).into(),
                        ..Snapshot::default()
                    };
                    let meta = snapshot.mut_metadata();
                    meta.index = index;
                    meta.term = term;
                    meta.set_conf_state(self.raw.store().rl().conf_state().clone());
                    self.raw.store().wl().offer(snapshot);
                }
                Some((index, _)) => {
                    return Err(ReplicationError::Inconsistent(format!(
                        "a snapshot was made at {index}, outside {at_least}..={}",
                        self.applied_index()
                    )));
                }
                // Asked again at the next turn.
                None => self.raw.store().wl().offer_later(),
            }
        }
        let kept = self.machine.applied().min(self.applied_index());
        let start = self.first_index() - 1;
        let by_count = (kept >= start + 2 * self.log_keep).then(|| kept - self.log_keep);
        let by_bytes = self.raw.store().rl().keep_bytes(kept, self.log_keep_bytes);
        if let Some(upto) = by_count.max(by_bytes).filter(|upto| *upto > start) {
            let term = self.raw.raft.raft_log.term(upto)?;
            self.durable.compact(upto, term)?;
            self.raw.store().wl().compact(upto, term);
        }
        Ok(())
    }

    /// A message from a peer (already authenticated and decoded).
    ///
    /// Two guards for a member that lost its disk and came back under its
    /// id (Raft assumes a node keeps what it acknowledged): as follower, a
    /// heartbeat that would commit past the end of its log commits nothing
    /// (raft-rs would panic); as leader, a follower's rejection naming a
    /// last entry before what it had acknowledged resets what the leader
    /// counts it as holding, so the leader probes it again from there and
    /// sends it a snapshot if its log no longer reaches that far.
    pub fn step(&mut self, mut message: Message) -> Result<()> {
        match message.get_msg_type() {
            // A node joining a group starts from a snapshot, which brings the
            // configuration; entries from the start of the log would not.
            MessageType::MsgAppend if self.uninitialized() => return Ok(()),
            MessageType::MsgHeartbeat if message.commit > self.raw.raft.raft_log.last_index() => {
                message.commit = self.commit_index();
            }
            MessageType::MsgAppendResponse if message.reject && self.is_leader() => {
                if let Some(pr) = self.raw.raft.mut_prs().get_mut(message.from)
                    && message.reject_hint < pr.matched
                    // Not a stale rejection: it answers an append at or past what it matched.
                    && message.index >= pr.matched
                {
                    tracing::warn!(
                        peer = message.from,
                        acknowledged = pr.matched,
                        holds = message.reject_hint,
                        "a follower lost entries it had acknowledged (a lost or replaced disk): sending it the log again"
                    );
                    pr.become_probe();
                    pr.matched = 0;
                    pr.next_idx = message.reject_hint + 1;
                    return Ok(());
                }
            }
            _ => {}
        }
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
        self.appended(|raw| raw.propose(vec![], data))
    }

    /// Asks the leader for the commit index a linearizable read must see
    /// applied (ReadIndex: the leader confirms with a quorum that it still
    /// leads). The answer comes from [`RaftNode::take_reads`] under `id`;
    /// none comes if no leader is known or leadership changes meanwhile.
    pub fn read_index(&mut self, id: u64) {
        self.raw.read_index(id.to_le_bytes().to_vec());
    }

    /// Reads confirmed since the last call: (id, index to wait for).
    pub fn take_reads(&mut self) -> Vec<(u64, u64)> {
        std::mem::take(&mut self.reads)
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
        for rs in ready.take_read_states() {
            if let Ok(id) = <[u8; 8]>::try_from(rs.request_ctx.as_slice()) {
                self.reads.push((u64::from_le_bytes(id), rs.index));
            }
        }
        if !ready.snapshot().is_empty() {
            self.install(ready.snapshot())?;
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
                core.set_hard_state(hs.clone());
            }
        }
        let committed = ready.take_committed_entries();
        self.apply(committed)?;
        out.extend(ready.take_persisted_messages());
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.durable.save_commit(commit)?;
            self.raw.store().wl().set_commit(commit);
        }
        out.extend(light.take_messages());
        let committed = light.take_committed_entries();
        self.apply(committed)?;
        self.raw.advance_apply();
        if std::mem::take(&mut self.removed_leader) && self.is_leader() {
            // Into the next term: the remaining voters elect one of their own.
            let term = self.raw.raft.term + 1;
            self.raw.raft.become_follower(term, raft::INVALID_ID);
        }
        for m in &out {
            if m.get_msg_type() == MessageType::MsgSnapshot {
                self.snapshots_out.insert(m.to, 0);
            }
        }
        Ok(out)
    }

    /// Installs a snapshot a leader sent (see the module's docs).
    fn install(&mut self, snapshot: &Snapshot) -> Result<()> {
        let meta = snapshot.get_metadata();
        let (context, data) = split_context(&snapshot.data).ok_or_else(|| {
            ReplicationError::Inconsistent(format!("snapshot {} does not decode", meta.index))
        })?;
        self.durable.begin_install(meta, context)?;
        self.machine.install(meta.index, data)?;
        self.durable.finish_install(meta, context)?;
        self.raw.store().wl().restore(meta);
        self.conf_index = meta.index;
        self.conf_context = context.to_vec();
        // Proposals it covers were committed or lost; which, this node
        // cannot tell.
        let covered: Vec<u64> = self.pending.range(..=meta.index).map(|(i, _)| *i).collect();
        for index in covered {
            if let Some(term) = self.pending.remove(&index) {
                self.outcomes
                    .push((Ticket { index, term }, Outcome::Unknown));
            }
        }
        Ok(())
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
                // A restart delivers again the entries after what the state
                // machine kept; a configuration change among them is already
                // in the configuration kept with its index.
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2
                    if entry.index <= self.conf_index => {}
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
                    if !entry.context.is_empty() {
                        self.conf_context = entry.context.to_vec();
                    }
                    self.durable
                        .save_conf_state(&cs, entry.index, &self.conf_context)?;
                    let voter =
                        cs.voters.contains(&self.id()) || cs.voters_outgoing.contains(&self.id());
                    self.raw.store().wl().set_conf_state(cs);
                    self.conf_index = entry.index;
                    // A leader the change removed steps down (raft-rs leaves
                    // it leading, and then fails), once this Ready is done.
                    self.removed_leader |= !voter && self.is_leader();
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

/// A snapshot's data as sent: the configuration's context (length first,
/// u32 little-endian) then the state machine's data.
fn with_context(context: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + context.len() + data.len());
    out.extend_from_slice(&(context.len() as u32).to_le_bytes());
    out.extend_from_slice(context);
    out.extend_from_slice(data);
    out
}

/// The parts [`with_context`] joined: a snapshot message's configuration
/// context, and the data the leader's state machine made (what a transport
/// reads to fetch what it describes).
pub fn split_context(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let context = bytes.get(4..4 + len)?;
    Some((context, &bytes[4 + len..]))
}
