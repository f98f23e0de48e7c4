//! The member's maintenance in the cluster: what the leader's passes decide
//! goes through the log ([`toplog_compaction::cluster`]), and the cluster's
//! id, which owns the archive, is proposed once by a leader.

use std::sync::Weak;
use std::time::Duration;

use toplog_compaction::cluster::{Coordinator, Decision};

use super::{Cluster, Entry};

/// How long a pass waits for this member to catch up before it sweeps.
const CATCH_UP_WAIT: Duration = Duration::from_secs(5);

/// The maintenance passes' way to the log, from their blocking threads.
#[derive(Debug)]
pub(super) struct LogCoordinator {
    pub(super) cluster: Weak<Cluster>,
    pub(super) runtime: tokio::runtime::Handle,
}

impl LogCoordinator {
    fn cluster(&self) -> Result<std::sync::Arc<Cluster>, String> {
        self.cluster
            .upgrade()
            .ok_or_else(|| "the Raft node stopped".to_owned())
    }
}

impl Coordinator for LogCoordinator {
    fn leads(&self) -> bool {
        self.cluster
            .upgrade()
            .is_some_and(|c| c.status().role == "leader")
    }

    fn decide(&self, decision: Decision) -> Result<(), String> {
        let cluster = self.cluster()?;
        self.runtime
            .block_on(cluster.submit(&Entry::Maintenance(decision)))
            .map(drop)
            .map_err(|e| e.to_string())
    }

    fn catch_up(&self) -> Result<(), String> {
        let cluster = self.cluster()?;
        self.runtime
            .block_on(cluster.read_barrier(CATCH_UP_WAIT))
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

impl Cluster {
    /// On the leader of a cluster that has no id yet: proposes one (a UUID
    /// v7). Two leaders in turn may both propose; the first applied stands.
    pub(super) async fn name_cluster(&self) {
        if self.maintainer.owner().cluster().is_some() || self.status().role != "leader" {
            return;
        }
        let id = uuid::Uuid::now_v7().hyphenated().to_string();
        match self.submit(&Entry::ClusterId(id)).await {
            Ok(s) => tracing::debug!(index = s.index, "proposed the cluster's id"),
            Err(e) => tracing::debug!(error = %e, "the cluster's id not proposed; trying again"),
        }
    }
}
