//! A sharded cluster (docs/cluster.md, "Shards"): its events spread over
//! `shards` Raft groups by the hash of their `request_id`, each group a
//! store of its own on three nodes. The node's main group is the metadata
//! group: beside the rest of the node's state, its log holds the shard map
//! ([`ShardState`]). This module hosts the node's replicas ([`Shards`]),
//! splits a batch over the shards, and finds each shard a replica to read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use anyhow::Context;
use toplog_compaction::Maintainer;
use toplog_engine::{Engine, EngineConfig, IngestReceipt, KeyedEvents};
use toplog_proto::raft_v1::Proposal;
use toplog_proto::raft_v1::raft_client::RaftClient;
use toplog_replication::{NodeId, Placement, ShardId};

use super::{AddressBook, Cluster, ClusterSettings, Entry, Group, NodeParts, SubmitError};

/// Shard → its slots, replicas and move under way.
pub(crate) type ShardMap = BTreeMap<ShardId, Placement>;

/// Replicas of each shard, when the cluster has as many nodes.
pub(crate) const REPLICAS: usize = 3;

/// The file under the main group's `raft/` that holds the shard map.
const PLACEMENT_FILE: &str = "PLACEMENT";

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A change of the shard map, as the metadata group's log holds it: each
/// is applied to the map in force, so changes proposed from several nodes
/// at once never undo each other.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum PlacementChange {
    /// The first map (the first applied stands).
    Set(ShardMap),
    /// A replica of `shard` starts moving from node `from` to node `to`.
    Start {
        shard: ShardId,
        from: NodeId,
        to: NodeId,
    },
    /// That move is carried out: `to` holds the replica, `from` no longer.
    Finish {
        shard: ShardId,
        from: NodeId,
        to: NodeId,
    },
}

/// What the metadata group's log says of the shards: the map (kept in
/// `raft/PLACEMENT`), and the shards' maintainers, which follow the
/// retention policy the main group sets.
#[derive(Debug)]
pub(crate) struct ShardState {
    file: PathBuf,
    map: RwLock<Option<ShardMap>>,
    maintainers: Mutex<Vec<std::sync::Weak<Maintainer>>>,
}

impl ShardState {
    /// Reads `raft/PLACEMENT` in `raft_dir` (none yet: no map).
    pub(crate) fn open(raft_dir: &Path) -> anyhow::Result<Self> {
        let file = raft_dir.join(PLACEMENT_FILE);
        let map = match std::fs::read(&file) {
            Ok(bytes) => Some(
                serde_json::from_slice(&bytes)
                    .with_context(|| format!("{} is not a shard map", file.display()))?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("{}", file.display())),
        };
        Ok(Self {
            file,
            map: RwLock::new(map),
            maintainers: Mutex::new(Vec::new()),
        })
    }

    /// The map the log set last, if it set one.
    pub(crate) fn map(&self) -> Option<ShardMap> {
        self.map
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Keeps `map` as the shard map (durably first): a snapshot's.
    pub(crate) fn set(&self, map: ShardMap) -> Result<(), String> {
        let mut held = self
            .map
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.store(&map)?;
        *held = Some(map);
        Ok(())
    }

    fn store(&self, map: &ShardMap) -> Result<(), String> {
        let bytes = serde_json::to_vec(map).map_err(|e| e.to_string())?;
        toplog_crypt::store_state_file(&self.file, bytes, &toplog_crypt::Cipher::off())
            .map_err(|e| format!("{}: {e}", self.file.display()))
    }

    /// Applies `change` from the log; one that does not fit the map in
    /// force (a second first map, a move of a shard already moving) is
    /// refused and changes nothing.
    pub(crate) fn apply(&self, change: PlacementChange) -> Result<(), String> {
        let mut held = self
            .map
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let map = match (&*held, change) {
            (Some(_), PlacementChange::Set(_)) => return Ok(()),
            (None, PlacementChange::Set(first)) => first,
            (None, _) => return Err("a move before the first shard map".into()),
            (Some(map), PlacementChange::Start { shard, from, to }) => {
                let mut map = map.clone();
                let p = map
                    .get_mut(&shard)
                    .ok_or_else(|| format!("no shard {shard}"))?;
                if p.moving.is_some() || !p.replicas.contains(&from) || p.replicas.contains(&to) {
                    return Err(format!(
                        "shard {shard} cannot move a replica from node {from} to node {to} now"
                    ));
                }
                p.moving = Some(toplog_replication::Move { from, to });
                map
            }
            (Some(map), PlacementChange::Finish { shard, from, to }) => {
                let mut map = map.clone();
                let p = map
                    .get_mut(&shard)
                    .ok_or_else(|| format!("no shard {shard}"))?;
                if p.moving != Some(toplog_replication::Move { from, to }) {
                    return Err(format!("shard {shard} is not moving from {from} to {to}"));
                }
                toplog_replication::finish(p);
                map
            }
        };
        self.store(&map)?;
        *held = Some(map);
        Ok(())
    }

    /// The retention policy the main group set, for every shard's store too.
    pub(crate) fn set_policy(&self, change: &serde_json::Value) {
        for m in lock(&self.maintainers)
            .iter()
            .filter_map(std::sync::Weak::upgrade)
        {
            if let Err(e) = m.set_policy(change) {
                tracing::error!(error = %e, "a shard's retention policy was not changed");
            }
        }
    }

    fn follow(&self, maintainer: &Arc<Maintainer>) {
        let mut held = lock(&self.maintainers);
        held.retain(|m| m.strong_count() > 0);
        held.push(Arc::downgrade(maintainer));
    }
}

/// A replica of one shard hosted on this node: its store and Raft group.
#[derive(Debug)]
pub(crate) struct Replica {
    pub(crate) shard: ShardId,
    pub(crate) engine: Arc<Engine>,
    pub(crate) maintainer: Arc<Maintainer>,
    pub(crate) cluster: Arc<Cluster>,
}

impl Replica {
    /// Whether a read may be answered from this replica as it is: it knows
    /// its group's leader, votes in the group (a learner still catching up,
    /// or a replica removed from the group, holds less than was
    /// acknowledged), and is not being replaced by a snapshot.
    pub(crate) fn readable(&self) -> bool {
        let s = self.cluster.status();
        s.leader_id != 0
            && s.voters.contains(&s.node_id)
            && s.stopped.is_none()
            && self.cluster.receiving_snapshot().is_none()
    }
}

/// What it takes to open a replica here.
pub(crate) struct Opener {
    pub(crate) data_dir: PathBuf,
    /// The node's store's settings; each shard's gets its own directory and
    /// a share of the memory budgets.
    pub(crate) engine_config: EngineConfig,
    pub(crate) owner: Arc<toplog_compaction::ArchiveOwner>,
    pub(crate) main: Arc<Maintainer>,
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) maintenance_every: Option<std::time::Duration>,
}

/// The shards of a sharded cluster, as this node sees them.
pub(crate) struct Shards {
    pub(super) settings: ClusterSettings,
    pub(super) state: Arc<ShardState>,
    /// The map the first members make, in force until the log sets one.
    pub(super) initial: ShardMap,
    hosted: RwLock<BTreeMap<ShardId, Arc<Replica>>>,
    opener: Opener,
    /// The node's main group: the metadata group.
    pub(super) main: Arc<Cluster>,
}

impl std::fmt::Debug for Shards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shards")
            .field("shards", &self.settings.shards)
            .finish_non_exhaustive()
    }
}

/// The directory of shard `shard`'s store (its Raft state in `raft/` inside).
pub(crate) fn shard_dir(data_dir: &Path, shard: ShardId) -> PathBuf {
    data_dir.join("shards").join(shard.to_string())
}

/// Where a read finds one shard.
#[derive(Debug, Clone)]
pub(crate) enum ReadReplica {
    /// Its replica here, as of `applied` in the shard's log.
    Here { engine: Arc<Engine>, applied: u64 },
    /// Replicas on other nodes (id, URL), to try in turn.
    There(Vec<(NodeId, String)>),
}

/// How long a strong read waits for a shard's leader to confirm its index.
const STRONG_READ_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// One part of a batch, stored by its shard.
#[derive(Debug, Clone)]
pub(crate) struct PartStored {
    pub(crate) shard: ShardId,
    pub(crate) receipt: IngestReceipt,
    /// The node that led the shard's group when it was written, if known.
    pub(crate) leader_id: Option<NodeId>,
}

/// Why a part was not stored: nothing of it acknowledged.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PartError {
    #[error("shard {shard}: {reason}")]
    NotWritten { shard: ShardId, reason: String },
    #[error("{0}")]
    Store(#[from] toplog_engine::EngineError),
}

impl Shards {
    /// Opens the replicas this node holds: those the map places here, and
    /// any whose directory is here from before (a move not finished).
    pub(crate) fn open(
        settings: &ClusterSettings,
        state: Arc<ShardState>,
        opener: Opener,
        main: Arc<Cluster>,
    ) -> anyhow::Result<Arc<Self>> {
        let first: Vec<NodeId> = settings.members.keys().copied().collect();
        let initial =
            toplog_replication::initial(&first, settings.shards, REPLICAS.min(first.len()))
                .context("the first shard map")?;
        let shards = Arc::new(Self {
            settings: settings.clone(),
            state,
            initial,
            hosted: RwLock::new(BTreeMap::new()),
            opener,
            main,
        });
        for (shard, placement) in shards.map() {
            let kept = shard_dir(&shards.opener.data_dir, shard)
                .join("raft")
                .exists();
            if shards.placed_here(&placement) || kept {
                shards.host(shard, &placement)?;
            }
        }
        Ok(shards)
    }

    /// The shard map in force.
    pub(crate) fn map(&self) -> ShardMap {
        self.state.map().unwrap_or_else(|| self.initial.clone())
    }

    /// The replica of `shard` hosted here, if one is.
    pub(crate) fn hosted(&self, shard: ShardId) -> Option<Arc<Replica>> {
        self.hosted
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&shard)
            .cloned()
    }

    /// Each shard as `GET /api/v1/cluster` shows it: its slots, replicas
    /// and move under way from the map; its leader, and this node's
    /// replica (role, indexes, size) when it holds one. A shard not held
    /// here is asked of a node that holds it.
    pub(crate) async fn view(&self) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        for (shard, p) in self.map() {
            let mut v = serde_json::json!({
                "shard": shard,
                "slots": [p.slots.start, p.slots.end],
                "replicas": p.replicas,
                "moving": p.moving.map(|m| serde_json::json!({"from": m.from, "to": m.to})),
            });
            match self.hosted(shard) {
                Some(r) => {
                    let s = r.cluster.status();
                    let stats = r.engine.stats();
                    v["leader_id"] = serde_json::json!((s.leader_id != 0).then_some(s.leader_id));
                    v["here"] = serde_json::json!({
                        "role": s.role,
                        "term": s.term,
                        "commit_index": s.commit_index,
                        "applied_index": s.applied_index,
                        "lag": s.commit_index.saturating_sub(s.applied_index),
                        "events": stats.segment_rows + stats.memtable_rows as u64,
                        "segment_bytes": stats.segment_bytes,
                        "maintenance_failing_in_a_row": r.maintainer.totals().failing_in_a_row,
                    });
                }
                None => {
                    let mut leader = None;
                    for node in &p.replicas {
                        let Some(url) = self.main.url_of(*node) else {
                            continue;
                        };
                        let asked = super::shard_reads::ask(
                            &self.settings,
                            &url,
                            shard,
                            &super::Question::Status,
                            false,
                        )
                        .await;
                        if let Ok((super::Answer::Status { leader_id }, _)) = asked {
                            leader = leader_id;
                            break;
                        }
                    }
                    v["leader_id"] = serde_json::json!(leader);
                }
            }
            out.push(v);
        }
        out
    }

    /// Every replica hosted here.
    pub(crate) fn replicas(&self) -> Vec<Arc<Replica>> {
        self.hosted
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// Whether the map places a replica of `placement`'s shard here (or
    /// one is moving here).
    pub(super) fn placed_here(&self, placement: &Placement) -> bool {
        let me = self.settings.node_id;
        placement.replicas.contains(&me) || placement.moving.is_some_and(|m| m.to == me)
    }

    /// Opens shard `shard`'s store and Raft group here: its first voters
    /// when this node is one of them, none otherwise (a leader adds it).
    pub(super) fn host(
        &self,
        shard: ShardId,
        placement: &Placement,
    ) -> anyhow::Result<Arc<Replica>> {
        let o = &self.opener;
        let dir = shard_dir(&o.data_dir, shard);
        std::fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
        let mut config = o.engine_config.clone();
        config.data_dir = dir.clone();
        config.replicated = true;
        // Each shard's archived files under its own prefix of the archive.
        config.archive = (config.archive.take()).map(|a| {
            Arc::new(toplog_engine::PrefixedArchive::new(
                a,
                format!("shard={shard}/"),
            )) as Arc<dyn toplog_engine::ArchiveStore>
        });
        // The node's memory budgets shared by every store it may hold.
        let share = usize::try_from(self.settings.shards).unwrap_or(1).max(1);
        config.memtable_max_bytes = (config.memtable_max_bytes / share).max(1 << 20);
        config.key_memory_bytes = (config.key_memory_bytes / share).max(1 << 20);
        let engine =
            Arc::new(Engine::open(config).with_context(|| format!("shard {shard}'s store"))?);
        let maintainer = Arc::new(Maintainer::new(
            engine.clone(),
            dir.clone(),
            o.main.policy(),
            o.owner.clone(),
        ));
        self.state.follow(&maintainer);
        if let Some(every) = o.maintenance_every {
            o.runtime.spawn(crate::cli::maintain_every(
                Arc::downgrade(&maintainer),
                every,
            ));
        }
        let members: AddressBook = if placement.replicas.contains(&self.settings.node_id) {
            (placement.replicas.iter())
                .filter_map(|id| self.main.url_of(*id).map(|url| (*id, url)))
                .collect()
        } else {
            AddressBook::new()
        };
        let cluster = Cluster::start(
            &self.settings,
            Group {
                id: group_of(shard),
                raft_dir: dir.join("raft"),
                members,
            },
            &o.runtime,
            NodeParts {
                engine: engine.clone(),
                maintainer: maintainer.clone(),
                shared: None,
            },
        )
        .with_context(|| format!("shard {shard}'s Raft group"))?;
        let replica = Arc::new(Replica {
            shard,
            engine,
            maintainer,
            cluster,
        });
        self.hosted
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(shard, replica.clone());
        tracing::info!(shard, "hosting a replica of the shard");
        Ok(replica)
    }

    /// Where a read finds each shard: its replica here when that one
    /// knows its leader (an eventual read) or has caught up with it (a
    /// strong one, ReadIndex); the other replicas' nodes otherwise.
    pub(crate) async fn read_replicas(&self, strong: bool) -> Vec<(ShardId, ReadReplica)> {
        let me = self.settings.node_id;
        let reads = self.map().into_iter().map(|(shard, placement)| {
            let others: Vec<(NodeId, String)> = (placement.replicas.iter())
                .filter(|n| **n != me)
                .filter_map(|n| self.main.url_of(*n).map(|url| (*n, url)))
                .collect();
            let replica = self.hosted(shard);
            async move {
                let usable = match &replica {
                    Some(r) if !r.readable() => false,
                    Some(r) if strong => r.cluster.read_barrier(STRONG_READ_WAIT).await.is_ok(),
                    Some(_) => true,
                    None => false,
                };
                let at = match replica {
                    Some(r) if usable => ReadReplica::Here {
                        applied: r.cluster.status().applied_index,
                        engine: r.engine.clone(),
                    },
                    _ => ReadReplica::There(others),
                };
                (shard, at)
            }
        });
        futures::future::join_all(reads).await
    }

    /// Closes the replica of `shard` here and deletes its store: the
    /// map no longer places it here, and its group has moved on without
    /// it. Its Raft node stops once the last read holding it ends.
    pub(super) fn drop_replica(&self, shard: ShardId) -> anyhow::Result<()> {
        let Some(replica) = self
            .hosted
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&shard)
        else {
            return Ok(());
        };
        replica
            .engine
            .close()
            .context("closing the shard's store")?;
        drop(replica);
        let dir = shard_dir(&self.opener.data_dir, shard);
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        tracing::info!(
            shard,
            "a replica of the shard moved away: its store here is removed"
        );
        Ok(())
    }

    /// Stores `events` split by shard, each part through its shard's Raft
    /// log (from this node, or from a node holding the shard), all at once;
    /// `Ok` once every part is committed by its shard's quorum. Each part
    /// carries the batch's idempotency key: a retry is applied once in each
    /// shard, whichever parts the first try stored. `encoder` makes the
    /// entries of parts whose shard is not here.
    pub(crate) async fn store(
        &self,
        encoder: &Engine,
        events: KeyedEvents,
        key: Option<String>,
    ) -> Result<Vec<PartStored>, PartError> {
        let map = self.map();
        let parts = events.split(|e| {
            toplog_replication::shard_of(&map, toplog_replication::slot_of(&e.request_id))
        });
        let writes = parts.into_iter().map(|(shard, part)| {
            let key = key.clone();
            let map = &map;
            async move {
                let Some(shard) = shard else {
                    return Err(PartError::NotWritten {
                        shard: ShardId::MAX,
                        reason: "the shard map leaves a slot without a shard".into(),
                    });
                };
                match self.hosted(shard) {
                    Some(replica) => write_here(&replica, part, key).await,
                    None => {
                        let replicas = map.get(&shard).map(|p| p.replicas.clone());
                        self.write_there(encoder, shard, replicas.unwrap_or_default(), part, key)
                            .await
                    }
                }
            }
        });
        futures::future::join_all(writes)
            .await
            .into_iter()
            .collect()
    }

    /// Writes a part of shard `shard`, not hosted here, through one of the
    /// nodes in `replicas` (the first that takes it).
    async fn write_there(
        &self,
        encoder: &Engine,
        shard: ShardId,
        replicas: Vec<NodeId>,
        part: KeyedEvents,
        key: Option<String>,
    ) -> Result<PartStored, PartError> {
        let mut proposal = match encoder.propose_payload(part, key)? {
            Ok(p) => p,
            Err(_) => {
                return Err(PartError::NotWritten {
                    shard,
                    reason: "this node's own store knows the idempotency key".into(),
                });
            }
        };
        let payload = Entry::Ingest(&proposal.take_payload()).encode();
        let mut last = format!("no node holds shard {shard}");
        for node in replicas {
            let Some(url) = self.main.url_of(node) else {
                continue;
            };
            let request = Proposal {
                payload: payload.clone(),
                group: group_of(shard),
                idempotency_key: proposal.idempotency_key().map(str::to_owned),
                accepted: proposal.accepted(),
            };
            match self.propose_at(&url, request).await {
                Ok(answer) => {
                    return Ok(PartStored {
                        shard,
                        receipt: IngestReceipt {
                            accepted: answer.accepted,
                            lsn: toplog_types::Lsn::new(if answer.replayed {
                                answer.applied_index
                            } else {
                                answer.index
                            }),
                            replayed: answer.replayed,
                        },
                        leader_id: None,
                    });
                }
                Err(status) => last = format!("node {node}: {}", status.message()),
            }
        }
        Err(PartError::NotWritten {
            shard,
            reason: last,
        })
    }

    async fn propose_at(
        &self,
        url: &str,
        proposal: Proposal,
    ) -> Result<toplog_proto::raft_v1::Proposed, tonic::Status> {
        let endpoint = (self.settings.endpoint(url))
            .map_err(tonic::Status::internal)?
            .timeout(super::FORWARD_TIMEOUT);
        let mut client = RaftClient::new(endpoint.connect_lazy());
        let mut request = tonic::Request::new(proposal);
        if let Some(bearer) = self.settings.bearer().map_err(tonic::Status::internal)? {
            request.metadata_mut().insert("authorization", bearer);
        }
        Ok(client.propose(request).await?.into_inner())
    }
}

/// Writes a part of a shard hosted here through its group's log.
async fn write_here(
    replica: &Replica,
    part: KeyedEvents,
    key: Option<String>,
) -> Result<PartStored, PartError> {
    let shard = replica.shard;
    let leader = replica.cluster.status().leader_id;
    let mut proposal = match replica.engine.propose_payload(part, key)? {
        Ok(p) => p,
        Err(known) => {
            return Ok(PartStored {
                shard,
                receipt: known,
                leader_id: (leader != 0).then_some(leader),
            });
        }
    };
    let payload = proposal.take_payload();
    let written = replica
        .cluster
        .submit(&Entry::Ingest(&payload))
        .await
        .map_err(|e: SubmitError| PartError::NotWritten {
            shard,
            reason: e.to_string(),
        })?;
    Ok(PartStored {
        shard,
        receipt: replica.engine.receipt(&proposal, written.index),
        leader_id: Some(written.leader_id),
    })
}

/// Shard `shard`'s Raft group id on the wire.
pub(crate) fn group_of(shard: ShardId) -> u64 {
    u64::from(shard) + 1
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The map the log sets: the first one stands, a move starts only on a
    /// shard not moving, from a replica to a node without one, and finishes
    /// only as it started; the file keeps what was applied.
    #[test]
    fn map_changes_apply_in_order_and_misfits_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let state = ShardState::open(dir.path()).unwrap();
        let start = |shard, from, to| PlacementChange::Start { shard, from, to };
        let finish = |shard, from, to| PlacementChange::Finish { shard, from, to };
        assert!(state.apply(start(0, 1, 4)).is_err(), "no map yet");
        let first = toplog_replication::initial(&[1, 2, 3], 4, 3).unwrap();
        state.apply(PlacementChange::Set(first.clone())).unwrap();
        let other = toplog_replication::initial(&[1, 2, 3], 2, 3).unwrap();
        state.apply(PlacementChange::Set(other)).unwrap();
        assert_eq!(state.map(), Some(first.clone()), "the first map stands");
        assert!(
            state.apply(start(0, 4, 1)).is_err(),
            "node 4 holds no replica"
        );
        assert!(state.apply(start(0, 1, 2)).is_err(), "node 2 holds one");
        assert!(state.apply(start(9, 1, 4)).is_err(), "no shard 9");
        state.apply(start(0, 1, 4)).unwrap();
        assert!(state.apply(start(0, 2, 4)).is_err(), "shard 0 is moving");
        assert!(state.apply(finish(0, 2, 4)).is_err(), "not that move");
        state.apply(finish(0, 1, 4)).unwrap();
        let map = state.map().unwrap();
        assert_eq!(map[&0].replicas, vec![4, 2, 3]);
        assert_eq!(map[&0].moving, None);
        assert_eq!(map[&1], first[&1]);
        let reopened = ShardState::open(dir.path()).unwrap();
        assert_eq!(reopened.map(), Some(map));
    }
}
