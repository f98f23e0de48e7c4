//! Where handlers run their CPU work: reads on low-priority threads behind a
//! gate that bounds how many run at once and how long each may take, and a
//! small low-priority pool for parsing ingested batches.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use toplog_engine::ReadBudget;

use super::{ApiError, ApiResult};

/// Reads admitted at once, the threads they run on, and the time (waiting
/// included) and memory budgets of each.
#[derive(Debug)]
pub(crate) struct QueryGate {
    permits: Arc<Semaphore>,
    limit: usize,
    budget: Duration,
    memory_bytes: usize,
    threads: Pool,
}

impl QueryGate {
    /// `threads` reads compute at once (`read_threads`); the others admitted
    /// (up to `limit`) wait for one of them, on the same time budget.
    pub(crate) fn new(limit: usize, threads: usize, budget: Duration, memory_bytes: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            budget,
            memory_bytes,
            threads: Pool::new("toplog-read", threads),
        }
    }

    /// Runs a read on a read thread once one of the gate's turns is free,
    /// under a [`ReadBudget`]. Past the time budget, waiting or running, the
    /// caller gets `503 overloaded` naming it, and the read stops at its next
    /// look at the clock (between sources), holding its turn until then so
    /// the gate still bounds what runs.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> ApiResult<T> + Send + 'static,
    ) -> ApiResult<T> {
        let started = Instant::now();
        let budget = self.budget;
        let over = |what: String| {
            ApiError::overloaded(
                format!("{what} (the budget `query_timeout` is {budget:?}); try again later"),
                budget.as_secs().max(1),
            )
        };
        let permit = tokio::time::timeout(budget, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| {
                over(format!(
                    "all {} query turns (`max_concurrent_queries`) stayed busy",
                    self.limit
                ))
            })?
            .map_err(|_| ApiError::internal("the query gate is closed".into()))?;
        let read = ReadBudget {
            memory_bytes: self.memory_bytes,
            deadline: Some(started + budget),
            timeout: budget,
        };
        let work = self.threads.run(move || {
            let out = read.run(f);
            drop(permit);
            out
        });
        let left = budget.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, work).await {
            Ok(joined) => joined?,
            Err(_) => Err(over("the query ran past its time budget".into())),
        }
    }
}

/// Runs CPU-bound work off the async reactor.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("worker failed: {e}")))?
}

/// Bytes of ingested batches admitted at once (parsing, queued for the log,
/// or being applied), counted in KiB so a semaphore's permits can hold them.
#[derive(Debug)]
pub(crate) struct IngestGate {
    kib: Arc<Semaphore>,
    limit_kib: u32,
    wait: Duration,
}

impl IngestGate {
    pub(crate) fn new(limit_bytes: usize, wait: Duration) -> Self {
        let limit_kib = u32::try_from(limit_bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, Semaphore::MAX_PERMITS as u32);
        Self {
            kib: Arc::new(Semaphore::new(limit_kib as usize)),
            limit_kib,
            wait,
        }
    }

    /// A turn for a body of `bytes`, held until the batch is acknowledged;
    /// when the node already holds its limit, waits up to the gate's wait
    /// and then answers `503 overloaded` with `Retry-After`.
    pub(super) async fn admit(&self, bytes: usize) -> ApiResult<tokio::sync::OwnedSemaphorePermit> {
        let kib = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, self.limit_kib);
        match tokio::time::timeout(self.wait, self.kib.clone().acquire_many_owned(kib)).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(ApiError::internal("the ingest gate is closed".into())),
            Err(_) => Err(ApiError::overloaded(
                format!(
                    "{} MiB of batches are already being written (the budget `ingest_queue_bytes`); try again shortly",
                    self.limit_kib / 1024
                ),
                1,
            )),
        }
    }
}

/// A pool of threads at a lower scheduling priority than the thread
/// applying the log and the network threads ([`toplog_types::run_in_background`]).
#[derive(Debug)]
struct Pool {
    name: &'static str,
    threads: usize,

    runtime: OnceLock<Option<tokio::runtime::Runtime>>,
}

impl Pool {
    const fn new(name: &'static str, threads: usize) -> Self {
        Self {
            name,
            threads,
            runtime: OnceLock::new(),
        }
    }

    /// Runs `f` on one of the pool's threads; on the shared blocking threads
    /// if the pool could not be started.
    async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> ApiResult<T> {
        let runtime = self.runtime.get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                // A fixed pool: work past it waits its turn, it never adds threads.
                .max_blocking_threads(self.threads)
                .thread_name(self.name)
                .on_thread_start(toplog_types::run_in_background)
                .build()
                .ok()
        });
        let joined = match runtime {
            Some(rt) => rt.spawn_blocking(f).await,
            None => tokio::task::spawn_blocking(f).await,
        };
        joined.map_err(|e| ApiError::internal(format!("{} failed: {e}", self.name)))
    }
}

impl Drop for Pool {
    /// Its threads are left to end on their own: a runtime may not wait for
    /// them from inside another.
    fn drop(&mut self) {
        if let Some(Some(runtime)) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Threads parsing ingested batches at once.
static PARSE: Pool = Pool::new("toplog-parse", 2);

/// Threads running aggregation jobs: as many as could be admitted
/// (`max_running_aggregations` bounds what runs).
static JOBS: Pool = Pool::new("toplog-job", crate::config::MAX_CONCURRENCY);

/// [`blocking`] on the parse threads.
pub(super) async fn parsing<T: Send + 'static>(
    f: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    PARSE.run(f).await?
}

/// An aggregation job's work, on the read threads, with a memory budget of
/// `memory_bytes` and no time budget.
pub(super) async fn aggregating<T: Send + 'static>(
    memory_bytes: usize,
    f: impl FnOnce() -> T + Send + 'static,
) -> ApiResult<T> {
    let budget = ReadBudget {
        memory_bytes,
        deadline: None,
        timeout: Duration::MAX,
    };
    JOBS.run(move || budget.run(f)).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use axum::http::StatusCode;

    /// A gate of one turn: while a read holds it, the next waits its budget
    /// out and is told `503 overloaded` with `Retry-After`; a read running
    /// past its budget is answered the same and keeps its turn until it ends.
    #[test]
    fn a_busy_or_slow_read_gets_overloaded_with_retry_after() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let gate = Arc::new(QueryGate::new(1, 1, Duration::from_millis(200), 1 << 20));
            let (release, held) = std::sync::mpsc::channel::<()>();
            let slow = {
                let gate = gate.clone();
                tokio::spawn(async move {
                    gate.run(move || {
                        held.recv().ok();
                        Ok(1)
                    })
                    .await
                })
            };
            // The slow read is past its budget: its caller hears so.
            let e = slow.await.unwrap().unwrap_err();
            assert_eq!(
                (e.status, e.code),
                (StatusCode::SERVICE_UNAVAILABLE, "overloaded")
            );
            assert!(e.message.contains("time budget"), "{}", e.message);
            // It still runs and holds the one turn: the next read waits and is refused.
            let e = gate.run(|| Ok(2)).await.unwrap_err();
            assert_eq!((e.code, e.retry_after), ("overloaded", Some(1)));
            assert!(
                e.message.contains("max_concurrent_queries"),
                "{}",
                e.message
            );
            // Once it ends, reads run again.
            release.send(()).unwrap();
            let mut answered = None;
            for _ in 0..50 {
                if let Ok(n) = gate.run(|| Ok(3)).await {
                    answered = Some(n);
                    break;
                }
            }
            assert_eq!(answered, Some(3));
        });
    }

    /// Reads admitted past `read_threads` wait for a thread: with one, a
    /// second read runs only once the first ends; with two, at once.
    #[test]
    fn reads_past_read_threads_wait_for_a_thread() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            for threads in [1, 2] {
                let gate = Arc::new(QueryGate::new(4, threads, Duration::from_secs(30), 1 << 20));
                let (release, held) = std::sync::mpsc::channel::<()>();
                let first = {
                    let gate = gate.clone();
                    tokio::spawn(async move {
                        gate.run(move || {
                            held.recv().ok();
                            Ok(1)
                        })
                        .await
                    })
                };
                tokio::time::sleep(Duration::from_millis(100)).await;
                let second = {
                    let gate = gate.clone();
                    tokio::spawn(async move { gate.run(|| Ok(2)).await })
                };
                let early = tokio::time::timeout(Duration::from_millis(500), second).await;
                match (threads, early) {
                    (1, Err(_)) => {
                        release.send(()).unwrap();
                        assert_eq!(first.await.unwrap().unwrap(), 1);
                    }
                    (2, Ok(answer)) => {
                        assert_eq!(answer.unwrap().unwrap(), 2);
                        release.send(()).unwrap();
                        assert_eq!(first.await.unwrap().unwrap(), 1);
                    }
                    (threads, early) => panic!("{threads} read threads: {early:?}"),
                }
            }
        });
    }

    /// Batches in flight hold the gate's bytes until acknowledged; one more
    /// waits, then gets `503 overloaded` with `Retry-After`; room frees as
    /// batches end. A body larger than the whole budget still gets in alone.
    #[test]
    fn ingest_waits_for_room_then_is_overloaded() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let gate = IngestGate::new(2048, Duration::from_millis(50));
            let held = gate.admit(2048).await.unwrap();
            let e = gate.admit(1).await.unwrap_err();
            assert_eq!((e.code, e.retry_after), ("overloaded", Some(1)));
            assert!(e.message.contains("ingest_queue_bytes"), "{}", e.message);
            drop(held);
            let a = gate.admit(1000).await.unwrap();
            let b = gate.admit(1000).await.unwrap();
            drop((a, b));
            assert!(
                gate.admit(10 << 20).await.is_ok(),
                "a large body gets in alone"
            );
        });
    }
}
