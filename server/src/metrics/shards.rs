//! A sharded cluster's metrics (docs/cluster.md, "Shards"): for each shard
//! this node holds a replica of, its Raft group's leader and indexes, the
//! replica's lag, size and events, and on the shard's leader each peer's
//! lag; for every shard, whether a replica is moving.

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Shard = [(&'static str, String); 1];
type ShardPeer = [(&'static str, String); 2];

/// The families, registered in their own registry (served by sharded
/// nodes only).
#[derive(Debug, Default)]
pub(super) struct ShardGauges {
    leader: Family<Shard, Gauge>,
    leading: Family<Shard, Gauge>,
    commit_index: Family<Shard, Gauge>,
    applied_index: Family<Shard, Gauge>,
    apply_lag: Family<Shard, Gauge>,
    events: Family<Shard, Gauge>,
    segment_bytes: Family<Shard, Gauge>,
    moving: Family<Shard, Gauge>,
    peer_lag: Family<ShardPeer, Gauge>,
}

impl ShardGauges {
    pub(super) fn register(&self, r: &mut Registry) {
        for (name, help, family) in [
            (
                "shard_leader",
                "By shard held here: the node leading its Raft group, as this replica knows (0: none known)",
                &self.leader,
            ),
            (
                "shard_leading",
                "By shard held here: 1 while this node leads its Raft group",
                &self.leading,
            ),
            (
                "shard_commit_index",
                "By shard held here: the last index of its Raft log a quorum holds",
                &self.commit_index,
            ),
            (
                "shard_applied_index",
                "By shard held here: the last index of its Raft log this replica applied",
                &self.applied_index,
            ),
            (
                "shard_apply_lag",
                "By shard held here: committed entries this replica has not applied yet",
                &self.apply_lag,
            ),
            (
                "shard_events",
                "By shard held here: events its store holds (segments and memory)",
                &self.events,
            ),
            (
                "shard_segment_bytes",
                "By shard held here: bytes of its store's segments",
                &self.segment_bytes,
            ),
            (
                "shard_moving",
                "By shard: 1 while one of its replicas moves to another node",
                &self.moving,
            ),
        ] {
            r.register(name, help, family.clone());
        }
        r.register(
            "shard_peer_lag",
            "On a shard's leader, by shard and peer: committed entries the peer's log does not hold yet",
            self.peer_lag.clone(),
        );
    }

    /// Sets them from the shards as this node holds them now.
    pub(super) fn set(&self, shards: &crate::cluster::Shards) {
        let set = |g: &Gauge, v: u64| {
            g.set(i64::try_from(v).unwrap_or(i64::MAX));
        };
        for family in [
            &self.leader,
            &self.leading,
            &self.commit_index,
            &self.applied_index,
            &self.apply_lag,
            &self.events,
            &self.segment_bytes,
            &self.moving,
        ] {
            family.clear();
        }
        self.peer_lag.clear();
        for (shard, p) in shards.map() {
            let label = [("shard", shard.to_string())];
            set(
                &self.moving.get_or_create(&label),
                u64::from(p.moving.is_some()),
            );
        }
        for r in shards.replicas() {
            let label = [("shard", r.shard.to_string())];
            let s = r.cluster.status();
            let stats = r.engine.stats();
            set(&self.leader.get_or_create(&label), s.leader_id);
            set(
                &self.leading.get_or_create(&label),
                u64::from(s.leader_id != 0 && s.leader_id == s.node_id),
            );
            set(&self.commit_index.get_or_create(&label), s.commit_index);
            set(&self.applied_index.get_or_create(&label), s.applied_index);
            set(
                &self.apply_lag.get_or_create(&label),
                s.commit_index.saturating_sub(s.applied_index),
            );
            set(
                &self.events.get_or_create(&label),
                stats.segment_rows + stats.memtable_rows as u64,
            );
            set(
                &self.segment_bytes.get_or_create(&label),
                stats.segment_bytes,
            );
            for (id, p) in s.peers.iter().filter(|(id, _)| **id != s.node_id) {
                let labels = [("shard", r.shard.to_string()), ("peer", id.to_string())];
                set(
                    &self.peer_lag.get_or_create(&labels),
                    s.commit_index.saturating_sub(p.matched),
                );
            }
        }
    }
}
