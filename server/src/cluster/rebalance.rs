//! A sharded cluster's placement at work (docs/cluster.md, "Shards"). On
//! every node, twice a second:
//!
//! - the replicas the shard map places here are opened, and those it no
//!   longer places here are closed and their stores removed;
//! - the metadata group's leader writes the first map, then starts a move
//!   whenever the spread can narrow ([`toplog_replication::moves`]), one at
//!   a time across the cluster;
//! - each shard's leader carries out its shard's move: the new node added
//!   as a learner, which catches up (a snapshot) and is promoted
//!   ([`super::watch_membership`]); the old replica removed (leadership
//!   handed over first if it was this one); the move finished in the map;
//! - each shard's leader hands its leadership to the node the map's
//!   spread of leaderships wants ([`toplog_replication::leaders`]), once
//!   that node has caught up.
//!
//! Ingest goes on throughout: every step is a Raft configuration change or
//! a leadership transfer of one shard's group.

use std::sync::Weak;
use std::time::Duration;

use toplog_replication::{Move, NodeStatus};

use super::shards::{PlacementChange, Replica, Shards};
use super::{Entry, PROMOTE_LAG};

/// How often each node looks at the map.
const EVERY: Duration = Duration::from_millis(500);

/// Carries out the shard map on this node until the node stops.
pub(crate) async fn rebalance(shards: Weak<Shards>) {
    loop {
        tokio::time::sleep(EVERY).await;
        let Some(shards) = shards.upgrade() else {
            return;
        };
        shards.host_placed();
        shards.plan().await;
        for replica in shards.replicas() {
            shards.carry_out(&replica).await;
        }
    }
}

impl Shards {
    /// Opens the replicas the map places here, and removes those it does
    /// not (once the log has set a map: the first members' own is not
    /// the log's word).
    fn host_placed(&self) {
        let logged = self.state.map().is_some();
        for (shard, placement) in self.map() {
            let held = self.hosted(shard).is_some();
            let placed = self.placed_here(&placement);
            let done = if placed && !held {
                self.host(shard, &placement).map(drop)
            } else if !placed && held && logged {
                self.drop_replica(shard)
            } else {
                Ok(())
            };
            if let Err(e) = done {
                tracing::warn!(shard, error = %format!("{e:#}"), "a shard's replica here not changed; trying again");
            }
        }
    }

    /// On the metadata group's leader: the first map into the log, then a
    /// move when no other is under way and one narrows the spread over the
    /// group's voters.
    async fn plan(&self) {
        let status = self.main.status();
        if status.role != "leader" {
            return;
        }
        let change = match self.state.map() {
            None => PlacementChange::Set(self.initial.clone()),
            Some(map) => {
                if map.values().any(|p| p.moving.is_some()) {
                    return;
                }
                let Some((shard, Move { from, to })) =
                    toplog_replication::moves(&map, &status.voters, 1).pop()
                else {
                    return;
                };
                tracing::info!(shard, from, to, "moving a replica of the shard");
                PlacementChange::Start { shard, from, to }
            }
        };
        if let Err(e) = self.main.submit(&Entry::Placement(change)).await {
            tracing::debug!(error = %e, "a shard map change not written; trying again");
        }
    }

    /// On a shard's leader: the next step of its move, or its leadership
    /// handed to where the map wants it.
    async fn carry_out(&self, replica: &Replica) {
        let status = replica.cluster.status();
        if status.role != "leader" || !status.voters_outgoing.is_empty() {
            return;
        }
        let map = self.map();
        let Some(placement) = map.get(&replica.shard) else {
            return;
        };
        let main = self.main.status();
        let member = main.voters.contains(&main.node_id) || main.learners.contains(&main.node_id);
        let step = match placement.moving {
            // Removed from the cluster (as far as it learned): its shards'
            // leaderships go to replicas that stay, which carry the moves out.
            _ if !member && !main.voters.is_empty() => {
                match (status.voters.iter())
                    .find(|id| **id != status.node_id && caught_up(&status, **id))
                {
                    Some(to) => {
                        (replica.cluster.transfer_leadership(*to).await).map_err(|e| e.to_string())
                    }
                    None => Ok(()),
                }
            }
            Some(m) => self.move_step(replica, &status, m).await,
            None => {
                let target = toplog_replication::leaders(&map)
                    .get(&replica.shard)
                    .copied();
                match target {
                    Some(to) if to != status.node_id && caught_up(&status, to) => {
                        (replica.cluster.transfer_leadership(to).await).map_err(|e| e.to_string())
                    }
                    _ => Ok(()),
                }
            }
        };
        if let Err(e) = step {
            tracing::debug!(shard = replica.shard, error = %e, "a placement step not taken; trying again");
        }
    }

    async fn move_step(&self, replica: &Replica, s: &NodeStatus, m: Move) -> Result<(), String> {
        let voter = |id: u64| s.voters.contains(&id);
        let shard = replica.shard;
        if !voter(m.to) && !s.learners.contains(&m.to) {
            let url = (self.main.url_of(m.to))
                .ok_or_else(|| format!("node {} has no address yet", m.to))?;
            let index =
                (replica.cluster.add_member(m.to, &url).await).map_err(|e| e.to_string())?;
            tracing::info!(
                shard,
                node_id = m.to,
                index,
                "a learner added to the shard's group"
            );
        } else if voter(m.to) && voter(m.from) {
            if m.from == s.node_id {
                // The leaving replica leads: another one takes over first.
                (replica.cluster.transfer_leadership(m.to).await).map_err(|e| e.to_string())?;
            } else {
                let index =
                    (replica.cluster.remove_member(m.from).await).map_err(|e| e.to_string())?;
                tracing::info!(
                    shard,
                    node_id = m.from,
                    index,
                    "the old replica removed from the shard's group"
                );
            }
        } else if voter(m.to) && !voter(m.from) {
            let change = PlacementChange::Finish {
                shard,
                from: m.from,
                to: m.to,
            };
            (self.main.submit(&Entry::Placement(change)).await).map_err(|e| e.to_string())?;
            tracing::info!(
                shard,
                from = m.from,
                to = m.to,
                "a replica of the shard moved"
            );
        }
        Ok(())
    }
}

/// Whether member `id` of the group `s` leads has caught up with it.
fn caught_up(s: &NodeStatus, id: u64) -> bool {
    s.voters.contains(&id)
        && (s.peers.get(&id))
            .is_some_and(|p| p.matched > 0 && p.matched + PROMOTE_LAG >= s.commit_index)
}
