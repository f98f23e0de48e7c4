//! What a node keeps of its Raft state across restarts: the log, the hard
//! state (term, vote, commit), the configuration, and where the log starts
//! (after a compaction or an installed snapshot). Each write is durable
//! (fsynced) when the call returns; a failed write leaves the previous state.

use raft::prelude::{ConfState, Entry, HardState, SnapshotMetadata};

use crate::error::Result;

/// The Raft state read back at start.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Persisted {
    pub hard_state: HardState,
    pub conf_state: ConfState,
    /// The index of the entry whose application made `conf_state`
    /// (0: the first configuration, or one a snapshot brought).
    pub conf_index: u64,
    /// What the application keeps beside the configuration's ids (the
    /// members' addresses): given at bootstrap, then carried by each
    /// configuration change and snapshot.
    pub conf_context: Vec<u8>,
    /// The entry before the first one kept: its index and term ((0, 0) for
    /// a log that was never compacted).
    pub start: (u64, u64),
    /// The log, in index order, from `start.0 + 1`.
    pub entries: Vec<Entry>,
    /// A snapshot whose installation began and did not finish: the state
    /// machine says whether it got it (see [`Durable::begin_install`]).
    pub installing: Option<(SnapshotMetadata, Vec<u8>)>,
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
    /// Records the configuration made by applying entry `index`, and its context.
    fn save_conf_state(&mut self, conf_state: &ConfState, index: u64, context: &[u8])
    -> Result<()>;
    /// Drops the entries up to `index` (applied, and kept by the state
    /// machine), remembering `term`, the term of entry `index`.
    fn compact(&mut self, index: u64, term: u64) -> Result<()>;
    /// Notes, before the state machine installs it, that snapshot `meta` is
    /// being installed: a restart finds the note and asks the state machine
    /// whether the install finished ([`Durable::finish_install`]) or not
    /// ([`Durable::abandon_install`]).
    fn begin_install(&mut self, meta: &SnapshotMetadata, context: &[u8]) -> Result<()>;
    /// The state machine holds snapshot `meta`: the log is emptied and
    /// starts after it, its configuration (and `context`) is the
    /// snapshot's, and the note is cleared.
    fn finish_install(&mut self, meta: &SnapshotMetadata, context: &[u8]) -> Result<()>;
    /// The install noted did not reach the state machine: the note is cleared.
    fn abandon_install(&mut self) -> Result<()>;
}
