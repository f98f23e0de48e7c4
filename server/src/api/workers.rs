//! Where handlers run their CPU work: blocking threads for queries, a small
//! low-priority pool for parsing ingested batches.

use std::sync::OnceLock;

use super::{ApiError, ApiResult};

/// Runs CPU-bound work off the async reactor.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("worker failed: {e}")))?
}

/// Threads for parsing ingested batches, at a lower scheduling priority
/// (nice 10) than the rest of the node: when ingest saturates the CPU,
/// queries and the thread applying the log still get it first, so answers
/// stay prompt and fresh (BENCHMARKS.md, freshness). `None` if they could
/// not be started; parsing then shares the query threads.
fn parse_threads() -> Option<&'static tokio::runtime::Runtime> {
    static POOL: OnceLock<Option<tokio::runtime::Runtime>> = OnceLock::new();
    POOL.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("toplog-parse")
            .on_thread_start(lower_priority)
            .build()
            .ok()
    })
    .as_ref()
}

/// Lowers the calling thread's priority (Linux applies nice per thread).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority has no memory effects; on failure the thread keeps its priority.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10);
    }
}

/// [`blocking`] on the parse threads.
pub(super) async fn parsing<T: Send + 'static>(
    f: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    match parse_threads() {
        Some(pool) => pool
            .spawn_blocking(f)
            .await
            .map_err(|e| ApiError::internal(format!("parser failed: {e}")))?,
        None => blocking(f).await,
    }
}
