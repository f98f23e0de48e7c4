//! Raft replication on raft-rs: the node loop ([`RaftNode`]), what it keeps
//! across restarts ([`Durable`]) and what it applies committed entries to
//! ([`StateMachine`]); and the placement rules of shards over nodes
//! ([`initial`], [`moves`], [`leaders`]). See docs/cluster.md.

mod driver;
mod durable;
mod error;
mod log_store;
mod node;
mod placement;
mod storage;

pub use driver::{Driver, NodeStatus, Outbound, PeerStatus, decode_message, encode_message};
pub use durable::{Durable, Persisted};
pub use error::{ReplicationError, Result};
pub use log_store::LogStore;
pub use node::{Outcome, RaftNode, StateMachine, Ticket, Timing, split_context};
pub use placement::{
    Move, NodeId, Placement, PlacementError, SLOTS, ShardId, finish, initial, leaders, moves,
    replica_counts, shard_of, slot_of, split,
};
pub use raft::prelude::{
    ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, Message, MessageType,
};
