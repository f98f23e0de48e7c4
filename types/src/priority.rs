//! Who gets the CPU first when it is short. Applying the log (which
//! acknowledges writes), the flusher and the network threads run at the
//! default priority; the heavy work around them (parsing ingested batches,
//! reads and aggregation jobs) runs on threads lowered to nice 10, where they
//! share what is left evenly: a burst of heavy reads slows ingest no more
//! than a burst of ingest slows reads (BENCHMARKS.md, "Ingest while heavy
//! queries run" and freshness).

/// The nice value of the node's background threads: Linux weighs a nice-0
/// thread about 9x a nice-10 one.
const BACKGROUND_NICE: i32 = 10;

/// Lowers the calling thread to [`BACKGROUND_NICE`] (Linux applies nice per
/// thread; elsewhere, and if the call fails, the thread keeps its priority).
pub fn run_in_background() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority has no memory effects; gettid has none at all.
    unsafe {
        libc::setpriority(
            libc::PRIO_PROCESS,
            libc::gettid() as libc::id_t,
            BACKGROUND_NICE,
        );
    }
}
