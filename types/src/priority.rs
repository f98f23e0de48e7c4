//! Who gets the CPU first when it is short. The node's work, most urgent
//! first: applying the log and acknowledging writes (and the network
//! threads) at the default priority; parsing ingested batches and writing
//! memtables out; then reads. A read as heavy as it likes then slows other
//! reads, never ingest (BENCHMARKS.md, "Ingest while heavy queries run").

/// A scheduling priority for one of the node's own threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// Parsing ingested batches; flushing memtables to segments.
    Ingest,
    /// Queries and aggregation jobs.
    Read,
}

impl Priority {
    /// The nice value: Linux weighs a nice-10 thread about 3x a nice-15 one,
    /// and a nice-0 one about 9x a nice-10 one.
    pub const fn nice(self) -> i32 {
        match self {
            Priority::Ingest => 10,
            Priority::Read => 15,
        }
    }

    /// Lowers the calling thread to this priority (Linux applies nice per
    /// thread; elsewhere, and if the call fails, the thread keeps its own).
    pub fn apply_to_this_thread(self) {
        #[cfg(target_os = "linux")]
        // SAFETY: setpriority has no memory effects; gettid has none at all.
        unsafe {
            libc::setpriority(
                libc::PRIO_PROCESS,
                libc::gettid() as libc::id_t,
                self.nice(),
            );
        }
    }
}
