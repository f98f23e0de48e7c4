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
    Accepted, Messages, Proposal, Proposed, SnapshotChunk, SnapshotRequest,
};
use toplog_replication::{Message, ReplicationError, decode_message, encode_message};

use super::{ClusterSettings, Entry};

/// Sends what the node has for one peer, a batch per call, coalescing what
/// queued up meanwhile. A failed call is dropped: Raft sends again.
pub(super) async fn peer_loop(
    settings: ClusterSettings,
    url: String,
    from: u64,
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
        let mut request = tonic::Request::new(Messages { from, messages });
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

#[tonic::async_trait]
impl Raft for RaftService {
    async fn send(
        &self,
        request: tonic::Request<Messages>,
    ) -> Result<tonic::Response<Accepted>, tonic::Status> {
        let Some(cluster) = self.app.cluster.get() else {
            return Err(tonic::Status::unavailable("the Raft node is starting"));
        };
        let me = cluster.settings.node_id;
        let batch = request.into_inner();
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
        let Some(cluster) = self.app.cluster.get() else {
            return Err(tonic::Status::unavailable("the Raft node is starting"));
        };
        let SnapshotRequest { from, index } = request.into_inner();
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

    async fn propose(
        &self,
        request: tonic::Request<Proposal>,
    ) -> Result<tonic::Response<Proposed>, tonic::Status> {
        let Some(cluster) = self.app.cluster.get() else {
            return Err(tonic::Status::unavailable("the Raft node is starting"));
        };
        let payload = request.into_inner().payload;
        // An entry every member could not apply would stop them all.
        Entry::decode(&payload).map_err(tonic::Status::invalid_argument)?;
        match cluster.propose(payload).await {
            Ok(index) => Ok(tonic::Response::new(Proposed { index })),
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
