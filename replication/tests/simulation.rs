//! Deterministic simulation of a Raft group's node loop: three (or five)
//! [`RaftNode`]s in one loop over a simulated network that loses, delays,
//! duplicates and reorders messages and partitions the group, with nodes
//! crashing at any step and disks failing writes; a seed replays a run.
//! Checked as it runs: at most one leader per term, every node applies the
//! same entry at each index, a snapshot a node installs extends what it had
//! applied, and a linearizable read (ReadIndex) asked of any node answers
//! an index no lower than any write acknowledged before it was asked.
//! Checked at the end, after the faults stop:
//! the durable logs match where they overlap, every node applied the same
//! sequence, and every acknowledged proposal is in it exactly once.
//!
//!     TOPLOG_SIM_SEEDS=100000 cargo test -p toplog-replication --release --test simulation
//!     TOPLOG_SIM_SEED=1234 cargo test -p toplog-replication --test simulation   # one seed
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use raft::prelude::{ConfState, Entry, HardState, SnapshotMetadata};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use toplog_replication::{
    ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, Durable, LogStore,
    Message, Outcome, Persisted, RaftNode, ReplicationError, Result, StateMachine, Ticket, Timing,
};
use toplog_wal::{FsyncPolicy, SimFs, WalOptions};

/// A disk: what was written survives a crash; it can be told to fail.
#[derive(Debug, Default)]
struct Disk {
    state: Option<Persisted>,
    failing: bool,
}

#[derive(Debug, Clone, Default)]
struct SimDurable(Arc<Mutex<Disk>>);

impl SimDurable {
    fn write(&mut self, f: impl FnOnce(&mut Persisted)) -> Result<()> {
        let mut disk = self.0.lock().unwrap();
        if disk.failing {
            return Err(ReplicationError::Disk("simulated write failure".into()));
        }
        f(disk.state.get_or_insert_with(Persisted::default));
        Ok(())
    }
}

impl Durable for SimDurable {
    fn load(&mut self) -> Result<Option<Persisted>> {
        Ok(self.0.lock().unwrap().state.clone())
    }

    fn save(&mut self, entries: &[Entry], hard_state: Option<&HardState>) -> Result<()> {
        self.write(|p| {
            if let Some(first) = entries.first() {
                p.entries.retain(|e| e.index < first.index);
                p.entries.extend_from_slice(entries);
            }
            // Term and vote at once; the commit index lazily, with them,
            // as the wal-backed store keeps it.
            if let Some(hs) = hard_state
                && (hs.term, hs.vote) != (p.hard_state.term, p.hard_state.vote)
            {
                p.hard_state = hs.clone();
            }
        })
    }

    fn save_commit(&mut self, _commit: u64) -> Result<()> {
        self.write(|_| {})
    }

    fn save_conf_state(
        &mut self,
        conf_state: &ConfState,
        index: u64,
        context: &[u8],
    ) -> Result<()> {
        self.write(|p| {
            p.conf_state = conf_state.clone();
            p.conf_index = index;
            p.conf_context = context.to_vec();
        })
    }

    fn compact(&mut self, index: u64, term: u64) -> Result<()> {
        self.write(|p| {
            p.entries.retain(|e| e.index > index);
            p.start = (index, term);
        })
    }

    fn begin_install(&mut self, meta: &SnapshotMetadata, context: &[u8]) -> Result<()> {
        self.write(|p| p.installing = Some((meta.clone(), context.to_vec())))
    }

    fn finish_install(&mut self, meta: &SnapshotMetadata, context: &[u8]) -> Result<()> {
        self.write(|p| {
            p.conf_context = context.to_vec();
            p.entries.clear();
            p.start = (meta.index, meta.term);
            p.conf_state = meta.get_conf_state().clone();
            p.conf_index = meta.index;
            p.hard_state.term = p.hard_state.term.max(meta.term);
            p.hard_state.commit = p.hard_state.commit.max(meta.index);
            p.installing = None;
        })
    }

    fn abandon_install(&mut self) -> Result<()> {
        self.write(|p| p.installing = None)
    }
}

/// Linearizable reads answered (and checked), by every run of the process.
static READS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Configuration changes proposed, by every run of the process.
static CHANGES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Snapshots installed, by every run of the process.
static INSTALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Applied entries: (index, data), in order.
type AppliedLog = Vec<(u64, Vec<u8>)>;

/// The applied entries, kept across crashes as the engine keeps its own,
/// and the log index the state is as of (entries without data, such as
/// configuration changes, change nothing here but may be what a snapshot
/// is taken at). A snapshot is the whole list and that index.
#[derive(Debug, Clone, Default)]
struct Applied {
    log: Arc<Mutex<AppliedLog>>,
    through: Arc<std::sync::atomic::AtomicU64>,
}

impl StateMachine for Applied {
    fn apply(&mut self, index: u64, data: &[u8]) -> Result<()> {
        let mut log = self.log.lock().unwrap();
        assert!(
            log.last().is_none_or(|(last, _)| *last < index),
            "entry {index} applied out of order after {:?}",
            log.last().map(|(i, _)| i)
        );
        log.push((index, data.to_vec()));
        self.through
            .store(index, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    fn applied(&self) -> u64 {
        self.through.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn snapshot(&mut self, at_least: u64, applied: u64) -> Result<Option<(u64, Vec<u8>)>> {
        // Every entry up to `applied` is applied here (at once, in order).
        if applied < at_least {
            return Ok(None);
        }
        let log = self.log.lock().unwrap();
        Ok(Some((applied, serde_json::to_vec(&*log).unwrap())))
    }

    fn install(&mut self, index: u64, data: &[u8]) -> Result<()> {
        let theirs: AppliedLog = serde_json::from_slice(data).unwrap();
        assert!(
            theirs.last().map_or(0, |(i, _)| *i) <= index,
            "a snapshot at {index} holds entries past it"
        );
        let mut mine = self.log.lock().unwrap();
        assert!(
            theirs.starts_with(&mine),
            "a snapshot at {index} does not extend what this node applied (up to {:?})",
            mine.last().map(|(i, _)| i)
        );
        *mine = theirs;
        self.through
            .store(index, std::sync::atomic::Ordering::SeqCst);
        INSTALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

/// A node's Raft state: in memory (fast, for many seeds), or the real
/// [`LogStore`] on the wal crate over a simulated disk that loses unsynced
/// bytes on a crash and fails writes and fsyncs when told to.
enum Store {
    Memory(SimDurable),
    Log(Box<LogStore>),
}

impl Durable for Store {
    fn load(&mut self) -> Result<Option<Persisted>> {
        match self {
            Store::Memory(d) => d.load(),
            Store::Log(d) => d.load(),
        }
    }

    fn save(&mut self, entries: &[Entry], hard_state: Option<&HardState>) -> Result<()> {
        match self {
            Store::Memory(d) => d.save(entries, hard_state),
            Store::Log(d) => d.save(entries, hard_state),
        }
    }

    fn save_commit(&mut self, commit: u64) -> Result<()> {
        match self {
            Store::Memory(d) => d.save_commit(commit),
            Store::Log(d) => d.save_commit(commit),
        }
    }

    fn save_conf_state(
        &mut self,
        conf_state: &ConfState,
        index: u64,
        context: &[u8],
    ) -> Result<()> {
        match self {
            Store::Memory(d) => d.save_conf_state(conf_state, index, context),
            Store::Log(d) => d.save_conf_state(conf_state, index, context),
        }
    }

    fn compact(&mut self, index: u64, term: u64) -> Result<()> {
        match self {
            Store::Memory(d) => d.compact(index, term),
            Store::Log(d) => d.compact(index, term),
        }
    }

    fn begin_install(&mut self, meta: &SnapshotMetadata, context: &[u8]) -> Result<()> {
        match self {
            Store::Memory(d) => d.begin_install(meta, context),
            Store::Log(d) => d.begin_install(meta, context),
        }
    }

    fn finish_install(&mut self, meta: &SnapshotMetadata, context: &[u8]) -> Result<()> {
        match self {
            Store::Memory(d) => d.finish_install(meta, context),
            Store::Log(d) => d.finish_install(meta, context),
        }
    }

    fn abandon_install(&mut self) -> Result<()> {
        match self {
            Store::Memory(d) => d.abandon_install(),
            Store::Log(d) => d.abandon_install(),
        }
    }
}

type Node = RaftNode<Store, Applied>;

struct InFlight {
    at: u64,
    seq: u64,
    msg: Message,
}

/// How hostile a run is.
#[derive(Clone, Copy)]
struct Faults {
    loss: f64,
    duplicate: f64,
    max_delay: u64,
    crash: f64,
    disk_failure: f64,
    partition: f64,
}

struct World {
    rng: StdRng,
    seed: u64,
    /// Every node, the spare included.
    ids: Vec<u64>,
    /// The first voters (the group's bootstrap list).
    first: Vec<u64>,
    /// A node not among the first, added and removed as the run goes.
    spare: Option<u64>,
    /// Configuration changes committed (a run's membership churn).
    changes: u64,
    timing: Vec<Timing>,
    nodes: BTreeMap<u64, Option<Node>>,
    disks: BTreeMap<u64, SimDurable>,
    /// With the wal-backed store: each node's simulated disk.
    fses: Option<BTreeMap<u64, SimFs>>,
    applied: BTreeMap<u64, Applied>,
    down_until: BTreeMap<u64, u64>,
    network: Vec<InFlight>,
    seq: u64,
    now: u64,
    /// Nodes on the same side of the partition have the same number.
    side: BTreeMap<u64, u8>,
    partition_until: u64,
    leaders: BTreeMap<u64, u64>,
    /// What was applied at each index, by anyone.
    chosen: BTreeMap<u64, Vec<u8>>,
    tickets: BTreeMap<(u64, Ticket), Vec<u8>>,
    acked: BTreeSet<Vec<u8>>,
    /// The highest index of a write acknowledged so far.
    acked_index: u64,
    /// Linearizable reads asked and not answered: (node, read id) → the
    /// index of the last write acknowledged before the read was asked,
    /// which its answer must reach.
    reads: BTreeMap<(u64, u64), u64>,
    next_read: u64,
    proposed: u64,
    /// How many of each node's applied entries `observe` has checked.
    checked: BTreeMap<u64, usize>,
    logger: slog::Logger,
}

impl World {
    fn new(seed: u64, size: u64, on_wal: bool, with_spare: bool) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let first: Vec<u64> = (1..=size).collect();
        let spare = with_spare.then_some(size + 1);
        let ids: Vec<u64> = first.iter().copied().chain(spare).collect();
        // Distinct election timeouts, in an order the seed picks: raft-rs
        // would draw them from a random source the seed does not govern.
        // Short logs: nodes down or cut off for a while need a snapshot.
        let log_keep = rng.random_range(3..30);
        // A third of the runs keep a log by bytes, down to a few entries.
        let log_keep_bytes = if seed.is_multiple_of(3) {
            64
        } else {
            u64::MAX / 4
        };
        let mut slots: Vec<usize> = (0..ids.len()).collect();
        for i in (1..slots.len()).rev() {
            slots.swap(i, rng.random_range(0..=i));
        }
        let timing = slots
            .iter()
            .map(|slot| Timing {
                election_ticks: 10,
                heartbeat_ticks: 2,
                fixed_election_ticks: Some(10 + 4 * slot),
                log_keep,
                log_keep_bytes,
            })
            .collect();
        let mut world = Self {
            rng,
            seed,
            ids: ids.clone(),
            first,
            spare,
            changes: 0,
            timing,
            nodes: BTreeMap::new(),
            disks: ids.iter().map(|id| (*id, SimDurable::default())).collect(),
            fses: on_wal.then(|| ids.iter().map(|id| (*id, SimFs::new(seed ^ id))).collect()),
            applied: ids.iter().map(|id| (*id, Applied::default())).collect(),
            down_until: BTreeMap::new(),
            network: Vec::new(),
            seq: 0,
            now: 0,
            side: BTreeMap::new(),
            partition_until: 0,
            leaders: BTreeMap::new(),
            chosen: BTreeMap::new(),
            tickets: BTreeMap::new(),
            acked: BTreeSet::new(),
            acked_index: 0,
            reads: BTreeMap::new(),
            next_read: 0,
            proposed: 0,
            checked: BTreeMap::new(),
            logger: slog::Logger::root(slog::Discard, slog::o!()),
        };
        for id in ids {
            world.start(id);
        }
        world
    }

    fn start(&mut self, id: u64) {
        let store = match &self.fses {
            None => Ok(Store::Memory(self.disks[&id].clone())),
            Some(fses) => LogStore::open(
                Arc::new(fses[&id].clone()),
                std::path::Path::new("/raft"),
                WalOptions {
                    fsync: FsyncPolicy::Always,
                    segment_bytes: 4096,
                },
            )
            .map(|s| Store::Log(Box::new(s))),
        };
        let opened = store.and_then(|store| {
            RaftNode::open(
                id,
                &self.first,
                b"members",
                store,
                self.applied[&id].clone(),
                self.timing[(id - 1) as usize],
                &self.logger,
            )
        });
        match opened {
            Ok(node) => {
                self.nodes.insert(id, Some(node));
            }
            // A disk failing while the node starts (finishing an install,
            // say): it stays down and starts again later.
            Err(ReplicationError::Disk(_)) => {
                self.disks[&id].0.lock().unwrap().failing = false;
                self.crash(id, 5);
            }
            Err(e) => panic!("seed {}: node {id} does not reopen: {e}", self.seed),
        }
    }

    fn crash(&mut self, id: u64, for_ticks: u64) {
        // Reads asked there are never answered.
        self.reads.retain(|(node, _), _| *node != id);
        // Power lost first: the stopped node's threads write nothing more.
        if let Some(fs) = self.fses.as_ref().and_then(|f| f.get(&id)) {
            fs.heal();
            fs.crash();
        }
        self.nodes.insert(id, None);
        self.down_until.insert(id, self.now + for_ticks);
    }

    fn connected(&self, a: u64, b: u64) -> bool {
        self.now >= self.partition_until || self.side.get(&a) == self.side.get(&b)
    }

    fn send(&mut self, msgs: Vec<Message>, faults: &Faults) {
        for msg in msgs {
            if self.rng.random_bool(faults.loss) {
                continue;
            }
            let copies = if self.rng.random_bool(faults.duplicate) {
                2
            } else {
                1
            };
            for _ in 0..copies {
                let at = self.now + self.rng.random_range(0..=faults.max_delay);
                self.seq += 1;
                self.network.push(InFlight {
                    at,
                    seq: self.seq,
                    msg: msg.clone(),
                });
            }
        }
    }

    /// Runs node `id`'s ready loop; a failed disk write crashes it.
    fn ready(&mut self, id: u64, faults: &Faults) {
        let Some(Some(node)) = self.nodes.get_mut(&id) else {
            return;
        };
        let turn = node.process_ready();
        self.after_turn(id, turn, faults);
    }

    /// What node `id`'s turn sent and decided; a failed disk write crashes it.
    fn after_turn(&mut self, id: u64, turn: Result<Vec<Message>>, faults: &Faults) {
        let Some(Some(node)) = self.nodes.get_mut(&id) else {
            return;
        };
        match turn {
            Ok(msgs) => {
                let outcomes = node.take_outcomes();
                let reads = node.take_reads();
                self.observe(id);
                for (ticket, outcome) in outcomes {
                    if let Some(value) = self.tickets.remove(&(id, ticket))
                        && outcome == Outcome::Applied
                    {
                        self.acked.insert(value);
                        self.acked_index = self.acked_index.max(ticket.index);
                    }
                }
                for (read, index) in reads {
                    if let Some(floor) = self.reads.remove(&(id, read)) {
                        assert!(
                            index >= floor,
                            "seed {}: node {id}'s linearizable read got index {index}, and a write at {floor} was acknowledged before it was asked",
                            self.seed
                        );
                        READS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                self.send(msgs, faults);
            }
            Err(ReplicationError::Disk(_)) => {
                self.disks[&id].0.lock().unwrap().failing = false;
                self.crash(id, 5);
            }
            Err(e) => panic!("seed {}: node {id}: {e}", self.seed),
        }
    }

    /// Checks what node `id` now shows against what the others showed.
    fn observe(&mut self, id: u64) {
        let Some(Some(node)) = self.nodes.get(&id) else {
            return;
        };
        if node.is_leader() {
            let term = node.term();
            if let Some(other) = self.leaders.insert(term, id)
                && other != id
            {
                panic!(
                    "seed {}: two leaders in term {term}: {other} and {id}",
                    self.seed
                );
            }
        }
        let log = self.applied[&id].log.lock().unwrap();
        let from = self.checked.get(&id).copied().unwrap_or(0);
        self.checked.insert(id, log.len());
        for (index, data) in &log[from..] {
            match self.chosen.get(index) {
                Some(d) if d != data => panic!(
                    "seed {}: index {index} applied as {:?} and as {:?}",
                    self.seed,
                    String::from_utf8_lossy(d),
                    String::from_utf8_lossy(data)
                ),
                Some(_) => {}
                None => {
                    self.chosen.insert(*index, data.clone());
                }
            }
        }
    }

    fn step(&mut self, faults: &Faults, client: bool) {
        self.now += 1;
        // Restarts.
        let due: Vec<u64> = (self.down_until.iter())
            .filter(|(_, until)| **until <= self.now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.down_until.remove(&id);
            self.start(id);
        }
        // Faults.
        for id in self.ids.clone() {
            if self.nodes[&id].is_some() && self.rng.random_bool(faults.crash) {
                let down = self.rng.random_range(1..60);
                self.crash(id, down);
            } else if self.rng.random_bool(faults.disk_failure) {
                match self.fses.as_ref().and_then(|f| f.get(&id)) {
                    Some(fs) => fs.fail_syncs_after(self.rng.random_range(0..3)),
                    None => self.disks[&id].0.lock().unwrap().failing = true,
                }
            }
        }
        if self.now >= self.partition_until && self.rng.random_bool(faults.partition) {
            for id in self.ids.clone() {
                let side = self.rng.random_range(0..2u8);
                self.side.insert(id, side);
            }
            self.partition_until = self.now + self.rng.random_range(10..120);
        }
        // Deliveries due now, in a seeded order.
        let (due, later): (Vec<InFlight>, Vec<InFlight>) = std::mem::take(&mut self.network)
            .into_iter()
            .partition(|m| m.at <= self.now);
        self.network = later;
        let mut due = due;
        due.sort_by_key(|m| (m.at, m.seq));
        for m in due {
            let (from, to) = (m.msg.from, m.msg.to);
            if !self.connected(from, to) {
                continue;
            }
            if let Some(Some(node)) = self.nodes.get_mut(&to) {
                node.step(m.msg)
                    .unwrap_or_else(|e| panic!("seed {}: node {to} step: {e}", self.seed));
                self.ready(to, faults);
            }
        }
        // The clock.
        for id in self.ids.clone() {
            if let Some(Some(node)) = self.nodes.get_mut(&id) {
                node.tick();
                let turn = node.maintain().map(|()| Vec::new());
                self.after_turn(id, turn, faults);
                self.ready(id, faults);
            }
        }
        // A linearizable read, asked of any node.
        if client && self.now.is_multiple_of(5) {
            let id = self.ids[self.rng.random_range(0..self.ids.len())];
            if let Some(Some(node)) = self.nodes.get_mut(&id) {
                self.next_read += 1;
                node.read_index(self.next_read);
                self.reads.insert((id, self.next_read), self.acked_index);
                self.ready(id, faults);
            }
        }
        // Now and then, the spare's next membership change.
        if client && self.now.is_multiple_of(40) {
            self.change_membership(faults);
        }
        // A client proposing to whoever leads.
        if client && self.now.is_multiple_of(3) {
            let leaders: Vec<u64> = (self.nodes.iter())
                .filter_map(|(id, n)| n.as_ref().filter(|n| n.is_leader()).map(|_| *id))
                .collect();
            if !leaders.is_empty() {
                let id = leaders[self.rng.random_range(0..leaders.len())];
                self.proposed += 1;
                let value = format!("v{}", self.proposed).into_bytes();
                if let Some(Some(node)) = self.nodes.get_mut(&id) {
                    match node.propose(value.clone()) {
                        Ok(ticket) => {
                            self.tickets.insert((id, ticket), value);
                        }
                        Err(ReplicationError::NotLeader { .. } | ReplicationError::Dropped) => {}
                        Err(e) => panic!("seed {}: propose: {e}", self.seed),
                    }
                }
                self.ready(id, faults);
            }
        }
    }

    /// Has the leader propose the spare's next change: added as a learner,
    /// made a voter once caught up, removed (which a later turn undoes).
    fn change_membership(&mut self, faults: &Faults) {
        let Some(spare) = self.spare else {
            return;
        };
        let Some((id, node)) = (self.nodes.iter_mut())
            .find_map(|(id, n)| n.as_mut().filter(|n| n.is_leader()).map(|n| (*id, n)))
        else {
            return;
        };
        let conf = node.conf_state();
        if !conf.voters_outgoing.is_empty() {
            return; // a joint change still under way
        }
        let kind = if conf.learners.contains(&spare) {
            let caught_up = node
                .progress()
                .get(&spare)
                .is_some_and(|(matched, _)| *matched + 2 >= node.commit_index());
            if !caught_up {
                return;
            }
            ConfChangeType::AddNode
        } else if conf.voters.contains(&spare) {
            if spare == id {
                return; // the leader is not removed
            }
            ConfChangeType::RemoveNode
        } else {
            ConfChangeType::AddLearnerNode
        };
        let mut single = ConfChangeSingle::default();
        single.set_change_type(kind);
        single.node_id = spare;
        let mut change = ConfChangeV2::default();
        change.set_transition(ConfChangeTransition::Implicit);
        change.changes = vec![single].into();
        match node.propose_conf_change(change, b"members".to_vec()) {
            Ok(_) => self.changes += 1,
            Err(ReplicationError::NotLeader { .. } | ReplicationError::Dropped) => {}
            Err(e) => panic!("seed {}: a configuration change: {e}", self.seed),
        }
        self.ready(id, faults);
    }

    /// The members of the configuration the leader (if any) has applied.
    fn members(&self) -> Vec<u64> {
        let leader = (self.nodes.values())
            .flatten()
            .filter(|n| n.is_leader())
            .max_by_key(|n| n.term());
        match leader {
            Some(n) => {
                let conf = n.conf_state();
                let mut ids: Vec<u64> = (conf.voters.iter())
                    .chain(&conf.voters_outgoing)
                    .chain(&conf.learners)
                    .copied()
                    .collect();
                ids.sort_unstable();
                ids.dedup();
                ids
            }
            None => self.ids.clone(),
        }
    }

    /// After the faults: every node up, everything delivered, until all
    /// have applied the same; then the end checks.
    fn settle(&mut self) {
        let calm = Faults {
            loss: 0.0,
            duplicate: 0.0,
            max_delay: 1,
            crash: 0.0,
            disk_failure: 0.0,
            partition: 0.0,
        };
        for disk in self.disks.values() {
            disk.0.lock().unwrap().failing = false;
        }
        for fs in self.fses.iter().flat_map(|f| f.values()) {
            fs.heal();
        }
        self.partition_until = 0;
        for id in self.ids.clone() {
            if self.nodes[&id].is_none() {
                self.down_until.remove(&id);
                self.start(id);
            }
        }
        // Proposals keep coming for a while: a leader commits its term's
        // entries, and with them everything before.
        for _ in 0..200 {
            self.step(&calm, true);
        }
        let mut quiet = 0;
        for _ in 0..2_000 {
            self.step(&calm, false);
            // Same length and same entries at each index (observe checked
            // the entries): the same sequence, on every member.
            let members = self.members();
            let lens: Vec<usize> = (self.applied.iter())
                .filter(|(id, _)| members.contains(id))
                .map(|(_, a)| a.log.lock().unwrap().len())
                .collect();
            if lens.windows(2).all(|w| w[0] == w[1]) {
                quiet += 1;
                if quiet > 50 {
                    break;
                }
            } else {
                quiet = 0;
            }
        }
        let members = self.members();
        let lists: Vec<AppliedLog> = (self.applied.iter())
            .filter(|(id, _)| members.contains(id))
            .map(|(_, a)| a.log.lock().unwrap().clone())
            .collect();
        assert!(
            lists.windows(2).all(|w| w[0] == w[1]),
            "seed {}: the members {members:?} did not converge: applied {:?}, nodes {:?}, the leader's view {:?}",
            self.seed,
            lists.iter().map(Vec::len).collect::<Vec<_>>(),
            self.nodes.values().collect::<Vec<_>>(),
            (self.nodes.values().flatten())
                .filter(|n| n.is_leader())
                .map(|n| (n.conf_state(), n.progress(), n.first_index()))
                .collect::<Vec<_>>()
        );
        // A node removed applied a prefix of what the members did.
        for (id, a) in self.applied.iter().filter(|(id, _)| !members.contains(id)) {
            let theirs = a.log.lock().unwrap();
            assert!(
                lists[0].starts_with(&theirs),
                "seed {}: removed node {id} applied what the members did not",
                self.seed
            );
        }
        let values: Vec<&Vec<u8>> = lists[0].iter().map(|(_, v)| v).collect();
        let distinct: BTreeSet<&Vec<u8>> = values.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            values.len(),
            "seed {}: a value applied twice",
            self.seed
        );
        for value in &self.acked {
            assert!(
                distinct.contains(value),
                "seed {}: acknowledged {:?} was lost",
                self.seed,
                String::from_utf8_lossy(value)
            );
        }
        // Log matching: an index with the same term holds the same entry
        // everywhere (checked on the in-memory stores, which keep every entry).
        let mut seen: BTreeMap<(u64, u64), Vec<u8>> = BTreeMap::new();
        for disk in self.disks.values() {
            let disk = disk.0.lock().unwrap();
            for e in disk.state.iter().flat_map(|p| &p.entries) {
                if let Some(data) = seen.insert((e.index, e.term), e.data.to_vec()) {
                    assert_eq!(
                        data,
                        e.data.to_vec(),
                        "seed {}: log matching at {}",
                        self.seed,
                        e.index
                    );
                }
            }
        }
        assert!(
            !self.acked.is_empty() || self.proposed == 0,
            "seed {}: nothing acknowledged",
            self.seed
        );
    }
}

fn run(seed: u64, on_wal: bool) -> (usize, u64) {
    let size = if seed % 4 == 3 { 5 } else { 3 };
    let mut world = World::new(seed, size, on_wal, seed % 3 == 1);
    let faults = Faults {
        loss: 0.05,
        duplicate: 0.02,
        max_delay: 4,
        crash: 0.002,
        disk_failure: 0.001,
        partition: 0.01,
    };
    for _ in 0..600 {
        world.step(&faults, true);
    }
    world.settle();
    CHANGES.fetch_add(world.changes, std::sync::atomic::Ordering::Relaxed);
    (world.acked.len(), world.proposed)
}

fn seeds() -> Vec<u64> {
    if let Some(seed) = std::env::var("TOPLOG_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![seed];
    }
    let n = std::env::var("TOPLOG_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000);
    (0..n).collect()
}

/// Runs `seeds`; fails if a quarter or less of the proposals were
/// acknowledged (runs that acknowledged nothing pass the checks vacuously).
/// The acknowledged and proposed counts.
fn run_all(seeds: impl IntoIterator<Item = u64>, on_wal: bool) -> (u64, u64) {
    let (mut acked, mut proposed) = (0, 0);
    for seed in seeds {
        let (a, p) = run(seed, on_wal);
        acked += a as u64;
        proposed += p;
    }
    assert!(
        acked * 4 > proposed,
        "only {acked} of {proposed} proposals acknowledged"
    );
    (acked, proposed)
}

#[test]
fn raft_groups_keep_every_acknowledged_write_under_faults() {
    let (acked, proposed) = run_all(seeds(), false);
    let installs = INSTALLS.load(std::sync::atomic::Ordering::Relaxed);
    let changes = CHANGES.load(std::sync::atomic::Ordering::Relaxed);
    let reads = READS.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "{acked} of {proposed} proposals acknowledged; {installs} snapshots installed; {changes} membership changes proposed; {reads} linearizable reads checked"
    );
    if seeds().len() >= 100 {
        assert!(installs > 0, "no run needed a snapshot");
        assert!(changes > 0, "no run changed its membership");
        assert!(reads > 0, "no linearizable read was answered");
    }
}

/// The same runs with each node's Raft state in the wal-backed [`LogStore`]
/// on a simulated disk: crashes lose what was not fsynced, and fsyncs fail.
#[test]
fn raft_groups_on_the_wal_store_keep_every_acknowledged_write_under_faults() {
    run_all(seeds().into_iter().take(wal_seeds()), true);
}

/// Seeds of the wal-backed runs (each node a writer thread): a tenth of the rest.
fn wal_seeds() -> usize {
    (seeds().len() / 10).max(1)
}
