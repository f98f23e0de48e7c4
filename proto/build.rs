//! Generates the toplog.v1 messages and services, with protoc from
//! protoc-bin-vendored (no system install), and the file descriptor set the
//! server's reflection serves.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: the build script is single-threaded; protoc is found through PROTOC.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("toplog_descriptor.bin"))
        .compile_protos(&["toplog/v1/toplog.proto"], &["."])?;
    // The cluster's own service: not in the descriptor set reflection serves.
    tonic_prost_build::configure().compile_protos(&["toplog/raft/v1/raft.proto"], &["."])?;
    println!("cargo:rerun-if-changed=toplog/v1/toplog.proto");
    println!("cargo:rerun-if-changed=toplog/raft/v1/raft.proto");
    Ok(())
}
