//! The transport between members: a client per peer that batches what the
//! node sends, and the `toplog.raft.v1.Raft` service, which only the `peer`
//! role reaches (the auth layer checks the caller before a byte of a
//! message is decoded).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use toplog_proto::raft_v1::raft_client::RaftClient;
use toplog_proto::raft_v1::raft_server::Raft;
use toplog_proto::raft_v1::{
    Accepted, Messages, Proposal, Proposed, ShardAnswer, ShardQuestion, SnapshotChunk,
    SnapshotRequest,
};
use toplog_replication::{Message, ReplicationError, decode_message, encode_message};

use super::{ClusterSettings, Entry};

/// Sends what the node has for one peer, a batch per call, coalescing what
/// queued up meanwhile. A failed call is dropped: Raft sends again.
pub(super) async fn peer_loop(
    settings: ClusterSettings,
    url: String,
    (from, group): (u64, u64),
    mut rx: mpsc::Receiver<Vec<Message>>,
) {
    let (endpoint, bearer) = match (settings.endpoint(&url), settings.bearer()) {
        (Ok(e), Ok(b)) => (e.timeout(Duration::from_secs(5)), b),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(%url, error = %e, "cannot reach a peer");
            return;
        }
    };
    let mut client = RaftClient::new(endpoint.connect_lazy());
    while let Some(mut batch) = rx.recv().await {
        while let Ok(more) = rx.try_recv() {
            batch.extend(more);
        }
        let messages = batch
            .iter()
            .filter_map(|m| encode_message(m).ok())
            .collect();
        let mut request = tonic::Request::new(Messages {
            from,
            messages,
            group,
        });
        if let Some(bearer) = &bearer {
            request
                .metadata_mut()
                .insert("authorization", bearer.clone());
        }
        if let Err(e) = client.send(request).await {
            tracing::debug!(%url, error = %e, "Raft messages not delivered");
        }
    }
}

/// The `toplog.raft.v1.Raft` service: reached only by callers the auth layer
/// took for peers.
#[derive(Debug)]
pub(crate) struct RaftService {
    pub(crate) app: Arc<crate::api::AppState>,
}

impl RaftService {
    /// Group `group` on this node: the main one (0) or a shard's replica here.
    fn group(&self, group: u64) -> Result<Arc<super::Cluster>, tonic::Status> {
        let found = if group == 0 {
            self.app.cluster.get().cloned()
        } else {
            (self.app.shards.get())
                .and_then(|s| s.hosted(shard_of_group(group)))
                .map(|r| r.cluster.clone())
        };
        found.ok_or_else(|| {
            tonic::Status::unavailable(format!("Raft group {group} is not running here"))
        })
    }
}

/// The shard whose Raft group is `group` (not 0).
fn shard_of_group(group: u64) -> toplog_replication::ShardId {
    u32::try_from(group.saturating_sub(1)).unwrap_or(u32::MAX)
}

#[tonic::async_trait]
impl Raft for RaftService {
    async fn send(
        &self,
        request: tonic::Request<Messages>,
    ) -> Result<tonic::Response<Accepted>, tonic::Status> {
        let batch = request.into_inner();
        let cluster = self.group(batch.group)?;
        let me = cluster.settings.node_id;
        if cluster.url_of(batch.from).is_none() {
            return Err(tonic::Status::permission_denied(format!(
                "node {} is not a member",
                batch.from
            )));
        }
        for (i, bytes) in batch.messages.iter().enumerate() {
            let message = decode_message(bytes)
                .map_err(|e| tonic::Status::invalid_argument(format!("messages[{i}]: {e}")))?;
            if message.to != me || message.from != batch.from {
                return Err(tonic::Status::invalid_argument(format!(
                    "messages[{i}]: from {} to {}, in a batch from {} to {me}",
                    message.from, message.to, batch.from
                )));
            }
            if message.get_msg_type() == toplog_replication::MessageType::MsgSnapshot {
                cluster.receive_snapshot(message);
            } else {
                cluster.driver.step(message);
            }
        }
        Ok(tonic::Response::new(Accepted {}))
    }

    type FetchSnapshotStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<SnapshotChunk, tonic::Status>> + Send>>;

    async fn fetch_snapshot(
        &self,
        request: tonic::Request<SnapshotRequest>,
    ) -> Result<tonic::Response<Self::FetchSnapshotStream>, tonic::Status> {
        let SnapshotRequest { from, index, group } = request.into_inner();
        let cluster = self.group(group)?;
        let (tx, rx) = mpsc::channel(4);
        let (fetched, ended) = (cluster.clone(), cluster.clone());
        cluster.snapshots.send(
            index,
            tx,
            move || fetched.driver.snapshot_fetched(from),
            move |sent| ended.driver.report_snapshot(from, sent),
        )?;
        let chunks = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|chunk| (chunk, rx))
        });
        Ok(tonic::Response::new(Box::pin(chunks)))
    }

    async fn read_shard(
        &self,
        request: tonic::Request<ShardQuestion>,
    ) -> Result<tonic::Response<ShardAnswer>, tonic::Status> {
        let ShardQuestion {
            group,
            question,
            strong,
        } = request.into_inner();
        let replica = (self.app.shards.get())
            .and_then(|s| s.hosted(shard_of_group(group)))
            .ok_or_else(|| tonic::Status::unavailable(format!("Raft group {group} is not here")))?;
        let question: super::Question = serde_json::from_slice(&question)
            .map_err(|e| tonic::Status::invalid_argument(format!("question: {e}")))?;
        if matches!(question, super::Question::Status) {
            let s = replica.cluster.status();
            let answer = super::Answer::Status {
                leader_id: (s.leader_id != 0).then_some(s.leader_id),
            };
            return Ok(tonic::Response::new(ShardAnswer {
                answer: serde_json::to_vec(&answer)
                    .map_err(|e| tonic::Status::internal(e.to_string()))?,
                applied_index: s.applied_index,
            }));
        }
        if strong {
            replica
                .cluster
                .read_barrier(std::time::Duration::from_secs(5))
                .await
                .map_err(|e| tonic::Status::unavailable(format!("a strong read: {e}")))?;
        }
        if !replica.readable() {
            // Cut off from its leader, or still catching up: it may miss
            // acknowledged writes.
            return Err(tonic::Status::unavailable(
                "this replica cannot answer: it knows no leader, or is still catching up",
            ));
        }
        let applied_index = replica.cluster.status().applied_index;
        let engine = replica.engine.clone();
        let answer = self
            .app
            .queries
            .run(move || Ok(super::answer_shard(&engine, question)?))
            .await
            .map_err(|e| tonic::Status::unavailable(e.message))?;
        Ok(tonic::Response::new(ShardAnswer {
            answer: serde_json::to_vec(&answer)
                .map_err(|e| tonic::Status::internal(e.to_string()))?,
            applied_index,
        }))
    }

    async fn propose(
        &self,
        request: tonic::Request<Proposal>,
    ) -> Result<tonic::Response<Proposed>, tonic::Status> {
        let Proposal {
            payload,
            group,
            idempotency_key,
            accepted,
        } = request.into_inner();
        let cluster = self.group(group)?;
        // An entry every member could not apply would stop them all.
        let entry = Entry::decode(&payload).map_err(tonic::Status::invalid_argument)?;
        if group != 0 {
            // A shard's batch from a node that does not hold the shard:
            // written from here (handed to its leader if need be).
            if !matches!(entry, Entry::Ingest(_)) {
                return Err(tonic::Status::invalid_argument(
                    "a shard's log takes only ingest batches from other nodes",
                ));
            }
            let replica = (self.app.shards.get())
                .and_then(|s| s.hosted(shard_of_group(group)))
                .ok_or_else(|| tonic::Status::unavailable("the shard is not here"))?;
            let written = cluster
                .submit(&entry)
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            let receipt =
                (replica.engine).receipt_of(idempotency_key.as_deref(), accepted, written.index);
            return Ok(tonic::Response::new(Proposed {
                index: written.index,
                replayed: receipt.replayed,
                accepted: receipt.accepted,
                applied_index: receipt.lsn.get(),
            }));
        }
        match cluster.propose(payload).await {
            Ok(index) => Ok(tonic::Response::new(Proposed {
                index,
                ..Proposed::default()
            })),
            Err(ReplicationError::NotLeader { leader_id }) => {
                Err(tonic::Status::failed_precondition(format!(
                    "this node does not lead (leader: {leader_id})"
                )))
            }
            Err(
                e
                @ (ReplicationError::Lost | ReplicationError::Dropped | ReplicationError::Unknown),
            ) => Err(tonic::Status::aborted(e.to_string())),
            Err(e) => Err(tonic::Status::unavailable(e.to_string())),
        }
    }
}
