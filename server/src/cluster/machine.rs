//! What a member applies its Raft log to: the store (ingest batches), and
//! the rest of the node's state (retention policy, shared API keys, audit
//! log, aggregation jobs), each change once; its snapshots and their install.

use std::sync::Arc;

use toplog_engine::Engine;
use toplog_replication::{ReplicationError, StateMachine};

use super::snapshot::{self, Descriptor, SnapshotDirs};
use super::{Entry, KeyChange};

/// The cluster's log applies to the engine: each entry an ingest batch, as
/// the engine's own log holds them. What the engine has flushed is what
/// survives a restart; the log delivers the rest again. A snapshot is a
/// checkpoint of the engine ([`snapshot`]).
pub(super) struct EngineMachine {
    engine: Arc<Engine>,
    maintainer: Arc<toplog_compaction::Maintainer>,
    /// The node's state besides the store: the main group's only.
    shared: Option<super::SharedParts>,
    snapshots: SnapshotDirs,
    /// Where the index of the last entry applied to the node's state
    /// besides the store (policy, keys, audit, jobs) is kept: a restart
    /// delivers again the entries after the store's flushed index, and none
    /// of those is applied twice.
    state_index: std::path::PathBuf,
    /// What `state_index` holds.
    state_applied: u64,
    /// Where the cluster's id is kept, once the log has said it.
    cluster_id: std::path::PathBuf,
}

/// The file under `raft/` holding the cluster's id.
const CLUSTER_ID_FILE: &str = "CLUSTER_ID";

impl EngineMachine {
    /// Reads `raft/STATE_INDEX` in `raft_dir` (none yet: 0).
    pub(super) fn open(
        parts: super::NodeParts,
        snapshots: SnapshotDirs,
        raft_dir: &std::path::Path,
    ) -> anyhow::Result<Self> {
        use anyhow::Context;
        let super::NodeParts {
            engine,
            maintainer,
            shared,
        } = parts;
        let state_index = raft_dir.join("STATE_INDEX");
        let cluster_id = raft_dir.join(CLUSTER_ID_FILE);
        match std::fs::read_to_string(&cluster_id) {
            Ok(id) => maintainer.owner().set_cluster(id.trim()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("{}", cluster_id.display())),
        }
        let state_applied = match std::fs::read_to_string(&state_index) {
            Ok(text) => text
                .trim()
                .parse()
                .with_context(|| format!("{} is not a log index", state_index.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e).with_context(|| format!("{}", state_index.display())),
        };
        Ok(Self {
            engine,
            maintainer,
            shared,
            snapshots,
            state_index,
            state_applied,
            cluster_id,
        })
    }

    /// Keeps `id` as the cluster's, unless it has one: the first applied stands.
    fn set_cluster_id(&self, id: &str) -> Result<(), String> {
        if self.maintainer.owner().cluster().is_some() {
            return Ok(());
        }
        toplog_crypt::store_state_file(
            &self.cluster_id,
            id.as_bytes().to_vec(),
            &toplog_crypt::Cipher::off(),
        )
        .map_err(|e| format!("{}: {e}", self.cluster_id.display()))?;
        self.maintainer.owner().set_cluster(id);
        tracing::info!(cluster_id = id, "the cluster's id");
        Ok(())
    }

    fn set_applied_state(&mut self, index: u64) -> toplog_replication::Result<()> {
        toplog_crypt::store_state_file(
            &self.state_index,
            index.to_string().into_bytes(),
            &toplog_crypt::Cipher::off(),
        )
        .map_err(|e| ReplicationError::Disk(format!("{}: {e}", self.state_index.display())))?;
        self.state_applied = index;
        Ok(())
    }

    /// Applies entry `index`, a change of the node's state besides the store.
    fn apply_state(&mut self, index: u64, entry: Entry<'_>) -> toplog_replication::Result<()> {
        if index <= self.state_applied {
            return Ok(());
        }
        // The proposer checked the change; a member that cannot make it says
        // so and goes on (the log stays in step).
        let Some(shared) = &self.shared else {
            tracing::error!(
                index,
                "a shard's log holds a change of the node's state: ignored"
            );
            return Ok(());
        };
        let made = match entry {
            Entry::Ingest(_) | Entry::Maintenance(_) => Err("an entry for the store".into()),
            Entry::ClusterId(id) => self.set_cluster_id(&id),
            Entry::Placement(change) => shared.shard_state.apply(change),
            Entry::Alerting(change) => shared
                .alerting
                .apply(&change)
                .map(drop)
                .map_err(|e| e.to_string()),
            Entry::Retention(policy) => {
                shared.shard_state.set_policy(&policy);
                (self.maintainer.set_policy(&policy))
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
            Entry::Key(change) => match shared.auth.cluster_keys() {
                Some(keys) => match change {
                    KeyChange::Add(key) => keys.insert(key).map(drop),
                    KeyChange::Revoke(id) => keys.revoke(&id).map(drop),
                }
                .map_err(|e| format!("{e:#}")),
                None => Err("access control is off: no keys".into()),
            },
            Entry::Audit(line) => {
                if let Some(log) = shared.auth.audit() {
                    log.append_committed(&line);
                }
                Ok(())
            }
            Entry::Job(job) => shared.jobs.start(job).map_err(|e| e.to_string()),
        };
        if let Err(e) = made {
            tracing::error!(index, error = %e, "a change from the Raft log was not made here");
        }
        self.set_applied_state(index)
    }
}

impl StateMachine for EngineMachine {
    fn apply(&mut self, index: u64, data: &[u8]) -> toplog_replication::Result<()> {
        match Entry::decode(data) {
            Ok(Entry::Ingest(payload)) => self
                .engine
                .apply_replicated(index, payload)
                .map_err(|e| ReplicationError::Inconsistent(format!("entry {index}: {e}"))),
            // Applied again after a restart when the store had not flushed
            // past it: each decision does the same the second time.
            Ok(Entry::Maintenance(decision)) => decision
                .apply(&self.engine, index)
                .map_err(|e| ReplicationError::Inconsistent(format!("entry {index}: {e}"))),
            Ok(entry) => self.apply_state(index, entry),
            Err(e) => Err(ReplicationError::Inconsistent(format!(
                "entry {index}: {e}"
            ))),
        }
    }

    fn applied(&self) -> u64 {
        self.engine.flushed_index()
    }

    /// With every batch flushed, the entries after the store's flushed index
    /// hold none (the others are durable once applied): the store is marked
    /// as of `applied`.
    fn keep_applied(&mut self, applied: u64) -> toplog_replication::Result<()> {
        self.engine
            .mark_flushed_through(applied)
            .map_err(|e| ReplicationError::Disk(e.to_string()))
    }

    fn snapshot(
        &mut self,
        at_least: u64,
        applied: u64,
    ) -> toplog_replication::Result<Option<(u64, Vec<u8>)>> {
        let shared = self.shared.as_ref();
        let state = snapshot::NodeState {
            retention: self.maintainer.policy().to_json(),
            keys: (shared.and_then(|s| s.auth.cluster_keys()))
                .map(|k| k.all())
                .unwrap_or_default(),
            audit: (shared.and_then(|s| s.auth.audit())).map(|a| a.path().to_path_buf()),
            jobs: (shared.map(|s| s.jobs.store.list()).unwrap_or_default())
                .into_iter()
                .map(|job| toplog_query::Job {
                    state: toplog_query::JobState::Pending,
                    finished_at: None,
                    result: None,
                    error: None,
                    ..job
                })
                .collect(),
            index: applied,
            cluster_id: self.maintainer.owner().cluster(),
            alerting: shared.map(|s| s.alerting.state()).unwrap_or_default(),
            placement: shared.and_then(|s| s.shard_state.map()),
        };
        self.snapshots
            .make(&self.engine, at_least, applied, state)
            .map_err(ReplicationError::Disk)
    }

    fn install(&mut self, index: u64, data: &[u8]) -> toplog_replication::Result<()> {
        let descriptor = Descriptor::parse(data).map_err(ReplicationError::Disk)?;
        // The node's state first, then the store: a crash before the store
        // is replaced leaves the old store, whose log entries up to `index`
        // then change none of that state again.
        let disk = |e: String| ReplicationError::Disk(format!("snapshot {index}: {e}"));
        if let Err(e) = self.maintainer.set_policy(&descriptor.retention) {
            tracing::error!(index, error = %e, "a snapshot's retention policy was not applied");
        }
        if let Some(shared) = &self.shared {
            if let Some(keys) = shared.auth.cluster_keys() {
                keys.replace_all(descriptor.keys.clone())
                    .map_err(|e| disk(format!("{e:#}")))?;
            }
            if let (Some(log), Some(file)) =
                (shared.auth.audit(), self.snapshots.received_audit(index))
            {
                log.replace_with(&file)
                    .map_err(|e| disk(format!("{e:#}")))?;
            }
            shared
                .alerting
                .replace(descriptor.alerting.clone())
                .map_err(|e| disk(e.to_string()))?;
            if let Some(map) = descriptor.placement.clone() {
                shared.shard_state.set(map).map_err(disk)?;
            }
        }
        if let Some(id) = &descriptor.cluster_id {
            self.set_cluster_id(id).map_err(disk)?;
        }
        self.set_applied_state(index.max(descriptor.state_index))?;
        self.snapshots
            .install(&self.engine, index, &descriptor)
            .map_err(ReplicationError::Disk)?;
        // Its jobs run here too, over the store just installed (results are
        // derived; a crash before this point loses only their re-runs).
        if let Some(shared) = &self.shared {
            for job in descriptor.jobs {
                if let Err(e) = shared.jobs.start(job) {
                    tracing::error!(index, error = %e, "a snapshot's aggregation job was not started");
                }
            }
        }
        Ok(())
    }
}
