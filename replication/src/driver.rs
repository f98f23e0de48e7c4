//! Runs a [`RaftNode`] on a thread of its own: messages from peers and
//! proposals arrive on a channel, the logical clock ticks every `tick`, and
//! what the node sends goes to the transport's callback. What the node is
//! (leader, term, commit) is published for the API after every turn.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use raft::prelude::Message;

use crate::durable::Durable;
use crate::error::{ReplicationError, Result};
use crate::node::{RaftNode, StateMachine};

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
    /// Why the node stopped, if it did (a failed disk write: fail-stop).
    pub stopped: Option<String>,
}

enum Input {
    Message(Message),
    Stop,
}

/// A running node. Dropping it stops the thread.
pub struct Driver {
    inputs: mpsc::Sender<Input>,
    status: Arc<Mutex<NodeStatus>>,
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
    /// Starts `node` on its own thread, ticking every `tick`.
    pub fn spawn<D, M>(
        mut node: RaftNode<D, M>,
        tick: Duration,
        mut outbound: Outbound,
    ) -> Result<Self>
    where
        D: Durable + Send + 'static,
        M: StateMachine + Send + 'static,
    {
        let (inputs, rx) = mpsc::channel();
        let status = Arc::new(Mutex::new(status_of(&node, None)));
        let published = status.clone();
        let thread = std::thread::Builder::new()
            .name(format!("toplog-raft-{}", node.id()))
            .spawn(move || {
                let mut next_tick = Instant::now() + tick;
                loop {
                    let wait = next_tick.saturating_duration_since(Instant::now());
                    let turn = match rx.recv_timeout(wait) {
                        Ok(Input::Message(m)) => node.step(m),
                        Ok(Input::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                        Err(RecvTimeoutError::Timeout) => {
                            node.tick();
                            next_tick = Instant::now() + tick;
                            Ok(())
                        }
                    };
                    let turn = turn.and_then(|()| node.process_ready());
                    match turn {
                        Ok(messages) => {
                            if !messages.is_empty() {
                                outbound(messages);
                            }
                            publish(&published, status_of(&node, None));
                        }
                        Err(e) => {
                            // Fail-stop: the node is reopened from disk by a restart.
                            tracing::error!(error = %e, "the Raft node stopped");
                            publish(&published, status_of(&node, Some(e.to_string())));
                            return;
                        }
                    }
                }
            })
            .map_err(|e| ReplicationError::Disk(format!("cannot start the Raft thread: {e}")))?;
        Ok(Self {
            inputs,
            status,
            thread: Some(thread),
        })
    }

    /// A message from a peer, already authenticated and decoded.
    pub fn step(&self, message: Message) {
        let _ = self.inputs.send(Input::Message(message));
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
    stopped: Option<String>,
) -> NodeStatus {
    NodeStatus {
        node_id: node.id(),
        leader_id: node.leader_id(),
        term: node.term(),
        role: node.role_name(),
        commit_index: node.commit_index(),
        applied_index: node.machine().applied(),
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
