//! What a node keeps of its Raft state across restarts: the log, the hard
//! state (term, vote, commit) and the configuration. Each write is durable
//! (fsynced) when the call returns; a failed write leaves the previous state.

use raft::prelude::{ConfState, Entry, HardState};

use crate::error::Result;

/// The Raft state read back at start.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Persisted {
    pub hard_state: HardState,
    pub conf_state: ConfState,
    /// The log, in index order, from the first entry kept.
    pub entries: Vec<Entry>,
}

/// A node's durable Raft state.
///
/// The commit index may be kept lazily (written with the next term or vote
/// change): entries are applied only once committed, so a restart takes the
/// state machine's applied index as committed when the kept one is behind.
pub trait Durable {
    /// What was written, or `None` for a node that has never run.
    fn load(&mut self) -> Result<Option<Persisted>>;
    /// Appends `entries` (replacing any kept entry at their indexes or
    /// after: a new leader's log wins over an uncommitted tail) and makes
    /// the hard state's term and vote durable, before it returns.
    fn save(&mut self, entries: &[Entry], hard_state: Option<&HardState>) -> Result<()>;
    /// Notes a newer commit index (kept lazily, see above).
    fn save_commit(&mut self, commit: u64) -> Result<()>;
    /// Records a configuration applied from the log.
    fn save_conf_state(&mut self, conf_state: &ConfState) -> Result<()>;
}
