//! What one read may spend: memory for what it builds (groups, candidate
//! rows) and time until a deadline. The caller runs a read under a
//! [`ReadBudget`] on its thread; the scans and merges it calls charge the
//! memory they keep as they grow ([`hold`]) and look at the clock between
//! sources ([`check_time`]), so a read past either budget stops where it is
//! and answers an error naming the budget, never a partial answer. Code
//! running outside a budgeted read is never refused.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use crate::error::{EngineError, Result};

/// The budget of one read.
#[derive(Debug, Clone, Copy)]
pub struct ReadBudget {
    /// Bytes the read may hold in what it builds.
    pub memory_bytes: usize,
    /// When the read must have ended (`None`: it may take its time).
    pub deadline: Option<Instant>,
    /// The configured time budget, for the error's message.
    pub timeout: Duration,
}

#[derive(Debug)]
struct Running {
    budget: ReadBudget,
    held: usize,
}

thread_local! {
    static RUNNING: RefCell<Option<Running>> = const { RefCell::new(None) };
}

/// Takes the running read off the thread when it ends, however it ends.
struct Ends(Option<Running>);

impl Drop for Ends {
    fn drop(&mut self) {
        RUNNING.with(|r| *r.borrow_mut() = self.0.take());
    }
}

impl ReadBudget {
    /// Runs `f` as a read under this budget on this thread (within a read
    /// already running, the inner one's budget applies until it ends).
    pub fn run<R>(self, f: impl FnOnce() -> R) -> R {
        let outer = RUNNING.with(|r| {
            r.borrow_mut().replace(Running {
                budget: self,
                held: 0,
            })
        });
        let _ends = Ends(outer);
        f()
    }
}

/// Charges `bytes` more to the running read: `Err` naming the memory budget
/// once it holds more than that.
pub fn hold(bytes: usize) -> Result<()> {
    RUNNING.with(|r| match r.borrow_mut().as_mut() {
        None => Ok(()),
        Some(run) => {
            run.held = run.held.saturating_add(bytes);
            if run.held > run.budget.memory_bytes {
                Err(EngineError::QueryMemory {
                    limit: run.budget.memory_bytes,
                })
            } else {
                Ok(())
            }
        }
    })
}

/// `Err` naming the time budget once the running read is past its deadline.
pub fn check_time() -> Result<()> {
    RUNNING.with(|r| match r.borrow().as_ref() {
        Some(run) if run.budget.deadline.is_some_and(|d| Instant::now() >= d) => {
            Err(EngineError::QueryTimeout {
                limit: run.budget.timeout,
            })
        }
        _ => Ok(()),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn budget(memory_bytes: usize, timeout: Duration) -> ReadBudget {
        ReadBudget {
            memory_bytes,
            deadline: Some(Instant::now() + timeout),
            timeout,
        }
    }

    /// Charges count against the running read only, up to its limit
    /// inclusive; outside a read,
    /// nothing is refused; the thread is clean after a read, even one that
    /// panicked.
    #[test]
    fn holds_count_within_the_running_read_only() {
        assert!(hold(usize::MAX).is_ok());
        budget(100, Duration::from_secs(60)).run(|| {
            hold(60).unwrap();
            hold(40).unwrap();
            assert!(matches!(
                hold(1),
                Err(EngineError::QueryMemory { limit: 100 })
            ));
            // A nested read has a budget of its own, and the outer one resumes.
            budget(10, Duration::from_secs(60)).run(|| assert!(hold(11).is_err()));
            assert!(hold(1).is_err());
        });
        assert!(hold(usize::MAX).is_ok());
        let panicked = std::panic::catch_unwind(|| {
            budget(1, Duration::from_secs(60)).run(|| panic!("a read fails"))
        });
        assert!(panicked.is_err());
        assert!(hold(usize::MAX).is_ok());
        assert!(check_time().is_ok());
    }

    /// A read past its deadline is told so, naming its time budget.
    #[test]
    fn time_runs_out_at_the_deadline() {
        budget(1, Duration::from_secs(3600)).run(|| assert!(check_time().is_ok()));
        budget(1, Duration::ZERO).run(|| {
            assert!(matches!(
                check_time(),
                Err(EngineError::QueryTimeout { limit }) if limit == Duration::ZERO
            ))
        });
    }
}
