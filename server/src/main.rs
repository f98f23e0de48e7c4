//! The `toplog` binary.

/// mimalloc instead of the system allocator: cells and keys of the rollups are
/// many small allocations, freed and made again as buckets are flushed, merged
/// and evicted; glibc's malloc fragments under that churn (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    toplog_server::main()
}
