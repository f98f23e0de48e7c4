use thiserror::Error;

/// Why a replication step failed.
#[derive(Debug, Error)]
pub enum ReplicationError {
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error("a Raft entry does not decode: {0}")]
    Decode(#[from] protobuf::ProtobufError),
    /// Writes go to the leader; this node knows it (or 0: none known).
    #[error("this node does not lead (leader: {leader_id})")]
    NotLeader { leader_id: u64 },
    /// The leader did not take the proposal (a leadership transfer under way).
    #[error("the proposal was not taken; retry")]
    Dropped,
    /// Leadership changed before the entry was committed: it will never be
    /// applied.
    #[error("leadership changed before the write was committed; it was not applied: retry")]
    Lost,
    /// A snapshot covering the entry replaced this node's log before the
    /// entry was applied here: it may or may not have been committed.
    #[error(
        "the write's outcome is not known on this node (a snapshot replaced its log): retry it with its idempotency key"
    )]
    Unknown,
    /// A linearizable read found no leader confirmed by a quorum in time
    /// (or this node could not apply what it must see).
    #[error("no leader confirmed by a quorum answered in time (an election, or no quorum)")]
    NoQuorum,
    /// The node stopped before the proposal was decided.
    #[error("the Raft node stopped")]
    Stopped,
    /// Writing the Raft state failed: the node stops and is reopened.
    #[error("writing the Raft state failed: {0}")]
    Disk(String),
    #[error("inconsistent Raft state: {0}")]
    Inconsistent(String),
}

pub type Result<T, E = ReplicationError> = std::result::Result<T, E>;
