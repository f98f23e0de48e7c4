//! The `toplog` binary's library: configuration, the REST API over the engine
//! (and the web page on it), gRPC, `/metrics`, cluster membership, backups,
//! and the command line (`toplog import`, `backup`, `restore` among its
//! commands). No storage logic lives here.

mod alerts;
mod api;
mod auth;
mod backup;
mod cli;
mod client;
mod cluster;
mod config;
mod grpc;
mod import;
mod ingest;
mod listen;
mod lock;
mod metrics;
mod node_state;
mod tls;

pub use cli::main;
pub use config::Config;
