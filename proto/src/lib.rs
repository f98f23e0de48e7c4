//! toplog's gRPC API, `toplog.v1` (`proto/toplog/v1/toplog.proto`): the
//! messages, the `Toplog` service's server and client, and the file
//! descriptor set that server reflection serves; stored events convert to
//! the API's.

/// The generated `toplog.v1` package.
#[allow(clippy::all, clippy::pedantic, unreachable_pub)]
pub mod v1 {
    tonic::include_proto!("toplog.v1");
}

/// The generated `toplog.raft.v1` package: Raft traffic between nodes.
#[allow(clippy::all, clippy::pedantic, unreachable_pub)]
pub mod raft_v1 {
    tonic::include_proto!("toplog.raft.v1");
}

/// The encoded descriptors of `toplog.v1`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("toplog_descriptor");

/// A stored event as the API sends it.
impl From<toplog_types::Event> for v1::Event {
    fn from(e: toplog_types::Event) -> Self {
        Self {
            latency_ms: e.latency_ms(),
            request_id: e.request_id,
            timestamp_us: e.timestamp.get(),
            user_id: e.user_id,
            endpoint: e.endpoint,
            method: e.method,
            status_code: u32::from(e.status_code),
        }
    }
}
