//! toplog's gRPC API, `toplog.v1` (`proto/toplog/v1/toplog.proto`): the
//! messages, the `Toplog` service's server and client, and the file
//! descriptor set that server reflection serves.

/// The generated `toplog.v1` package.
#[allow(clippy::all, clippy::pedantic, unreachable_pub)]
pub mod v1 {
    tonic::include_proto!("toplog.v1");
}

/// The encoded descriptors of `toplog.v1`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("toplog_descriptor");
