//! Runs a [`RaftNode`] on a thread of its own: messages from peers and
//! proposals arrive on a channel, the logical clock ticks every `tick`, and
//! what the node sends goes to the transport's callback. What the node is
//! (leader, term, commit) is published for the API after every turn.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use raft::prelude::Message;
use tokio::sync::{oneshot, watch};

use crate::durable::Durable;
use crate::error::{ReplicationError, Result};
use crate::node::{Outcome, RaftNode, StateMachine, Ticket};

/// What the leader knows of a member.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PeerStatus {
    /// The last log index the member is known to hold.
    pub matched: u64,
    /// Heard from within the last election timeout.
    pub active: bool,
    /// Milliseconds since a message from it last arrived here (none yet: `None`).
    pub last_contact_ms: Option<u64>,
}

/// What a node is, as last published.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct NodeStatus {
    pub node_id: u64,
    /// 0: no leader known.
    pub leader_id: u64,
    pub term: u64,
    pub role: &'static str,
    pub commit_index: u64,
    pub applied_index: u64,
    /// The first entry its log holds (those before are compacted away).
    pub first_index: u64,
    /// The configuration in force (incoming voters, during a joint change).
    pub voters: Vec<u64>,
    /// Voters of the outgoing configuration while a joint change is under way.
    pub voters_outgoing: Vec<u64>,
    pub learners: Vec<u64>,
    /// The configuration's context (the members' addresses).
    pub conf_context: Vec<u8>,
    /// On the leader: each member's progress.
    pub peers: BTreeMap<u64, PeerStatus>,
    /// Why the node stopped, if it did (a failed disk write: fail-stop).
    pub stopped: Option<String>,
}

enum Input {
    Message(Message),
    Propose(Vec<u8>, oneshot::Sender<Result<u64>>),
    TransferLeadership(u64, oneshot::Sender<Result<()>>),
    SnapshotFetched(u64),
    ReadIndex(oneshot::Sender<u64>),
    ConfChange(
        raft::prelude::ConfChangeV2,
        Vec<u8>,
        oneshot::Sender<Result<u64>>,
    ),
    ReportSnapshot(u64, bool),
    CompactKept(oneshot::Sender<Result<()>>),
    Stop,
}

/// A running node. Dropping it stops the thread.
pub struct Driver {
    inputs: mpsc::Sender<Input>,
    status: Arc<Mutex<NodeStatus>>,
    /// The last entry applied here.
    applied: watch::Receiver<u64>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("status", &self.status())
            .finish()
    }
}

/// Where a node's outgoing messages go.
pub type Outbound = Box<dyn FnMut(Vec<Message>) + Send>;

impl Driver {
    /// Starts `node` on its own thread (named `name`), ticking every `tick`.
    pub fn spawn<D, M>(
        name: String,
        mut node: RaftNode<D, M>,
        tick: Duration,
        mut outbound: Outbound,
    ) -> Result<Self>
    where
        D: Durable + Send + 'static,
        M: StateMachine + Send + 'static,
    {
        let (inputs, rx) = mpsc::channel();
        let status = Arc::new(Mutex::new(status_of(&node, &BTreeMap::new(), None)));
        let published = status.clone();
        let (applied_tx, applied) = watch::channel(node.applied_index());
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                let mut next_tick = Instant::now() + tick;
                // Proposals made here, answered when applied here or lost.
                let mut waiting: BTreeMap<Ticket, oneshot::Sender<Result<u64>>> = BTreeMap::new();
                // Reads waiting for their index, by id.
                let mut reads: BTreeMap<u64, oneshot::Sender<u64>> = BTreeMap::new();
                let mut next_read = 0u64;
                // When a message from each peer last arrived.
                let mut heard: BTreeMap<u64, Instant> = BTreeMap::new();
                loop {
                    let wait = next_tick.saturating_duration_since(Instant::now());
                    let turn = match rx.recv_timeout(wait) {
                        Ok(Input::Message(m)) => {
                            heard.insert(m.from, Instant::now());
                            node.step(m)
                        }
                        Ok(Input::ConfChange(change, context, reply)) => {
                            match node.propose_conf_change(change, context) {
                                Ok(ticket) => {
                                    waiting.insert(ticket, reply);
                                }
                                Err(e) => {
                                    let _ = reply.send(Err(e));
                                }
                            }
                            Ok(())
                        }
                        Ok(Input::CompactKept(reply)) => {
                            let _ = reply.send(node.compact_kept());
                            Ok(())
                        }
                        Ok(Input::ReportSnapshot(peer, sent)) => {
                            node.report_snapshot(peer, sent);
                            Ok(())
                        }
                        Ok(Input::TransferLeadership(to, reply)) => {
                            let _ = reply.send(node.transfer_leadership(to));
                            Ok(())
                        }
                        Ok(Input::Propose(data, reply)) => {
                            match node.propose(data) {
                                Ok(ticket) => {
                                    waiting.insert(ticket, reply);
                                }
                                Err(e) => {
                                    let _ = reply.send(Err(e));
                                }
                            }
                            Ok(())
                        }
                        Ok(Input::ReadIndex(reply)) => {
                            next_read += 1;
                            node.read_index(next_read);
                            reads.insert(next_read, reply);
                            Ok(())
                        }
                        Ok(Input::SnapshotFetched(peer)) => {
                            node.snapshot_fetched(peer);
                            Ok(())
                        }
                        Ok(Input::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                        Err(RecvTimeoutError::Timeout) => {
                            node.tick();
                            next_tick = Instant::now() + tick;
                            // A read whose caller gave up is forgotten.
                            reads.retain(|_, reply| !reply.is_closed());
                            node.maintain()
                        }
                    };
                    let turn = turn.and_then(|()| node.process_ready());
                    match turn {
                        Ok(messages) => {
                            if !messages.is_empty() {
                                outbound(messages);
                            }
                            applied_tx.send_if_modified(|a| {
                                let now = node.applied_index();
                                (*a != now).then(|| *a = now).is_some()
                            });
                            for (id, index) in node.take_reads() {
                                if let Some(reply) = reads.remove(&id) {
                                    let _ = reply.send(index);
                                }
                            }
                            for (ticket, outcome) in node.take_outcomes() {
                                if let Some(reply) = waiting.remove(&ticket) {
                                    let _ = reply.send(match outcome {
                                        Outcome::Applied => Ok(ticket.index),
                                        Outcome::Lost => Err(ReplicationError::Lost),
                                        Outcome::Unknown => Err(ReplicationError::Unknown),
                                    });
                                }
                            }
                            publish(&published, status_of(&node, &heard, None));
                        }
                        Err(e) => {
                            // Fail-stop: the node is reopened from disk by a restart.
                            tracing::error!(error = %e, "the Raft node stopped");
                            publish(&published, status_of(&node, &heard, Some(e.to_string())));
                            return;
                        }
                    }
                }
            })
            .map_err(|e| ReplicationError::Disk(format!("cannot start the Raft thread: {e}")))?;
        Ok(Self {
            inputs,
            status,
            applied,
            thread: Some(thread),
        })
    }

    /// A message from a peer, already authenticated and decoded.
    pub fn step(&self, message: Message) {
        let _ = self.inputs.send(Input::Message(message));
    }

    /// Proposes `data` to the group through this node, which must lead.
    /// Resolves with the entry's index once it is applied here (a quorum
    /// holds it durably); [`ReplicationError::Lost`] if another entry took
    /// its index, `NotLeader` from a follower, `Stopped` if the node stops
    /// first.
    pub async fn propose(&self, data: Vec<u8>) -> Result<u64> {
        let (tx, rx) = oneshot::channel();
        if self.inputs.send(Input::Propose(data, tx)).is_err() {
            return Err(ReplicationError::Stopped);
        }
        rx.await.unwrap_or(Err(ReplicationError::Stopped))
    }

    /// Proposes configuration change `change` with `context` through this
    /// node, which must lead; resolves with its index once applied here.
    pub async fn change_membership(
        &self,
        change: raft::prelude::ConfChangeV2,
        context: Vec<u8>,
    ) -> Result<u64> {
        let (tx, rx) = oneshot::channel();
        if self
            .inputs
            .send(Input::ConfChange(change, context, tx))
            .is_err()
        {
            return Err(ReplicationError::Stopped);
        }
        rx.await.unwrap_or(Err(ReplicationError::Stopped))
    }

    /// Cuts the log up to what the state machine keeps and withdraws the
    /// snapshot on offer (see [`RaftNode::compact_kept`]).
    pub async fn compact_kept(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        if self.inputs.send(Input::CompactKept(tx)).is_err() {
            return Err(ReplicationError::Stopped);
        }
        rx.await.unwrap_or(Err(ReplicationError::Stopped))
    }

    /// This leader's transfer of a snapshot to `peer` ended: every chunk
    /// went (`sent`), or it failed.
    pub fn report_snapshot(&self, peer: u64, sent: bool) {
        let _ = self.inputs.send(Input::ReportSnapshot(peer, sent));
    }

    /// Follower `peer` fetched part of the snapshot this leader sent it (so
    /// the send is not yet taken as failed).
    pub fn snapshot_fetched(&self, peer: u64) {
        let _ = self.inputs.send(Input::SnapshotFetched(peer));
    }

    /// Starts handing leadership to node `to`; this node must lead. The
    /// status shows when `to` leads.
    pub async fn transfer_leadership(&self, to: u64) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        if self.inputs.send(Input::TransferLeadership(to, tx)).is_err() {
            return Err(ReplicationError::Stopped);
        }
        rx.await.unwrap_or(Err(ReplicationError::Stopped))
    }

    /// A linearizable read's wait (ReadIndex): resolves once this node has
    /// applied everything committed when the read arrived, as the leader
    /// confirmed with a quorum; the index it waited for. Waits at most
    /// `limit`: without a leader or a quorum, [`ReplicationError::NoQuorum`].
    pub async fn read_barrier(&self, limit: Duration) -> Result<u64> {
        let deadline = tokio::time::Instant::now() + limit;
        let (tx, rx) = oneshot::channel();
        if self.inputs.send(Input::ReadIndex(tx)).is_err() {
            return Err(ReplicationError::Stopped);
        }
        let index = match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(index)) => index,
            Ok(Err(_)) => return Err(ReplicationError::Stopped),
            Err(_) => return Err(ReplicationError::NoQuorum),
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if self.wait_applied(index, left).await {
            Ok(index)
        } else {
            Err(ReplicationError::NoQuorum)
        }
    }

    /// Waits until entry `index` is applied here, for at most `limit`;
    /// whether it was.
    pub async fn wait_applied(&self, index: u64, limit: Duration) -> bool {
        let mut applied = self.applied.clone();
        let reached = applied.wait_for(|a| *a >= index);
        matches!(tokio::time::timeout(limit, reached).await, Ok(Ok(_)))
    }

    pub fn status(&self) -> NodeStatus {
        self.status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.inputs.send(Input::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn publish(to: &Mutex<NodeStatus>, status: NodeStatus) {
    *to.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = status;
}

fn status_of<D: Durable, M: StateMachine>(
    node: &RaftNode<D, M>,
    heard: &BTreeMap<u64, Instant>,
    stopped: Option<String>,
) -> NodeStatus {
    let conf = node.conf_state();
    let peers = (node.progress().into_iter())
        .map(|(id, (matched, active))| {
            let last_contact_ms = heard
                .get(&id)
                .map(|t| u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX));
            (
                id,
                PeerStatus {
                    matched,
                    active,
                    last_contact_ms,
                },
            )
        })
        .collect();
    NodeStatus {
        voters: conf.voters,
        voters_outgoing: conf.voters_outgoing,
        learners: conf.learners,
        conf_context: node.conf_context().to_vec(),
        peers,
        node_id: node.id(),
        leader_id: node.leader_id(),
        term: node.term(),
        role: node.role_name(),
        commit_index: node.commit_index(),
        applied_index: node.applied_index(),
        first_index: node.first_index(),
        stopped,
    }
}

/// A Raft message as it travels between nodes (rust-protobuf 2 bytes).
pub fn encode_message(message: &Message) -> Result<Vec<u8>> {
    Ok(protobuf::Message::write_to_bytes(message)?)
}

/// A Raft message from a peer's bytes. Call only for authenticated peers:
/// rust-protobuf 2 has an advisory (RUSTSEC-2024-0437) for crafted input.
pub fn decode_message(bytes: &[u8]) -> Result<Message> {
    Ok(protobuf::Message::parse_from_bytes(bytes)?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::{LogStore, Timing};
    use std::sync::OnceLock;
    use toplog_wal::{SimFs, WalOptions};

    /// What was applied (index and data), in order, after the index the
    /// store started at (0: a new one; more: one restored from a backup).
    #[derive(Clone, Default)]
    struct Applied(Arc<Mutex<Vec<AppliedEntry>>>, u64);

    /// An entry applied: its index and data.
    type AppliedEntry = (u64, Vec<u8>);

    impl Applied {
        fn values(&self) -> Vec<Vec<u8>> {
            self.0
                .lock()
                .unwrap()
                .iter()
                .map(|(_, v)| v.clone())
                .collect()
        }
    }

    impl StateMachine for Applied {
        fn apply(&mut self, index: u64, data: &[u8]) -> Result<()> {
            self.0.lock().unwrap().push((index, data.to_vec()));
            Ok(())
        }
        fn applied(&self) -> u64 {
            self.0.lock().unwrap().last().map_or(self.1, |(i, _)| *i)
        }
        fn snapshot(&mut self, _at_least: u64, _applied: u64) -> Result<Option<(u64, Vec<u8>)>> {
            Ok(None)
        }
        fn install(&mut self, index: u64, _data: &[u8]) -> Result<()> {
            Err(ReplicationError::Inconsistent(format!(
                "no snapshot expected (at {index})"
            )))
        }
    }

    #[test]
    fn proposals_to_the_leader_are_applied_everywhere_and_a_follower_names_the_leader() {
        let registry: Arc<OnceLock<BTreeMap<u64, Driver>>> = Arc::new(OnceLock::new());
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let mut drivers = BTreeMap::new();
        let mut applied = BTreeMap::new();
        for id in 1..=3u64 {
            let store = LogStore::open(
                Arc::new(SimFs::new(id)),
                std::path::Path::new("/raft"),
                WalOptions::default(),
            )
            .unwrap();
            let machine = Applied::default();
            applied.insert(id, machine.clone());
            let timing = Timing {
                fixed_election_ticks: Some(10 + 5 * id as usize),
                ..Timing::default()
            };
            let node =
                RaftNode::open(id, &[1, 2, 3], b"", store, machine, timing, &logger).unwrap();
            let peers = registry.clone();
            let outbound: Outbound = Box::new(move |messages| {
                for m in messages {
                    if let Some(to) = peers.get().and_then(|d| d.get(&m.to)) {
                        to.step(m);
                    }
                }
            });
            drivers.insert(
                id,
                Driver::spawn("raft".into(), node, Duration::from_millis(5), outbound).unwrap(),
            );
        }
        let _ = registry.set(drivers);
        let drivers = registry.get().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let leader = loop {
            if let Some((id, _)) = drivers.iter().find(|(_, d)| d.status().role == "leader") {
                break *id;
            }
            assert!(Instant::now() < deadline, "no leader");
            std::thread::sleep(Duration::from_millis(10));
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let values: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i; 3]).collect();
        let mut last = 0;
        for v in &values {
            let index = rt.block_on(drivers[&leader].propose(v.clone())).unwrap();
            assert!(index > last, "{index} after {last}");
            last = index;
        }
        let follower = (1..=3).find(|id| *id != leader).unwrap();
        // A linearizable read on a follower sees every write acknowledged before it.
        let index = rt
            .block_on(drivers[&follower].read_barrier(Duration::from_secs(10)))
            .unwrap();
        assert!(index >= last, "read at {index}, last write at {last}");
        assert_eq!(applied[&follower].values(), values);
        match rt.block_on(drivers[&follower].propose(vec![9])) {
            Err(ReplicationError::NotLeader { leader_id }) => assert_eq!(leader_id, leader),
            other => panic!("a follower took a proposal: {other:?}"),
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while applied.values().any(|a| a.values() != values) {
            assert!(Instant::now() < deadline, "not applied everywhere");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_restored_store_starts_a_cluster_of_its_own_whose_log_follows_it() {
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let open = |fs: &Arc<SimFs>, voters: &[u64], machine: Applied| {
            let store = LogStore::open(
                fs.clone(),
                std::path::Path::new("/raft"),
                WalOptions::default(),
            )
            .unwrap();
            RaftNode::open(1, voters, b"{}", store, machine, Timing::default(), &logger)
        };
        let fs = Arc::new(SimFs::new(7));
        // Beside empty members, one of which could win and overwrite it: refused.
        match open(&fs, &[1, 2, 3], Applied(Arc::default(), 40)) {
            Err(ReplicationError::Inconsistent(why)) => assert!(why.contains("index 40"), "{why}"),
            other => panic!("started among others: {:?}", other.map(|_| ())),
        }
        let machine = Applied(Arc::default(), 40);
        let node = open(&fs, &[1], machine.clone()).unwrap();
        let driver = Driver::spawn(
            "raft".into(),
            node,
            Duration::from_millis(5),
            Box::new(|_| {}),
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while driver.status().role != "leader" {
            assert!(Instant::now() < deadline, "no leader");
            std::thread::sleep(Duration::from_millis(10));
        }
        let status = driver.status();
        assert_eq!((status.first_index, status.voters.clone()), (41, vec![1]));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let index = rt.block_on(driver.propose(b"x".to_vec())).unwrap();
        assert!(index > 40, "{index}");
        assert_eq!(*machine.0.lock().unwrap(), [(index, b"x".to_vec())]);
    }
}
