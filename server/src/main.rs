//! The `toplog` binary.

/// mimalloc instead of the system allocator: the rollups are many small
/// allocations (a key, a cell and sketch bins per cell), made on the ingest
/// path. Measured: 1.8x the ingest rate over HTTP on 10M events (BENCHMARKS.md).
/// The `system-allocator` feature leaves it out, for heap profilers that
/// follow malloc (heaptrack; docs/operations.md).
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    disable_transparent_huge_pages();
    toplog_server::main()
}

/// Transparent huge pages off for this process. mimalloc asks for them on
/// its arenas, and then every first touch of a 2 MiB page zeroes all of it:
/// on 3 M ingested events that was 7 to 11% of the server's CPU in the
/// kernel's `clear_page_erms`, and the peak RSS 680 MiB against 606 MiB
/// without (BENCHMARKS.md). The flag also covers mappings made before it.
fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl(PR_SET_THP_DISABLE) only sets a flag on this process's
    // memory map; on failure (an old kernel) the process keeps huge pages.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}
