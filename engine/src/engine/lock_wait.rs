//! How long the thread applying the log waited for the state's write lock:
//! the last [`SAMPLES`] waits, kept so their percentiles can be read at any
//! time. A long read holding the lock shows here first, as ingest stalls.

use std::sync::Mutex;
use std::time::Duration;

/// Waits kept (the most recent ones).
const SAMPLES: usize = 65_536;

/// The recent waits of one lock's writer.
#[derive(Debug, Default)]
pub(super) struct LockWaits {
    ring: Mutex<Ring>,
}

#[derive(Debug, Default)]
struct Ring {
    nanos: Vec<u64>,
    next: usize,
    total: u64,
}

/// Percentiles of the recent waits, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LockWaitStats {
    /// Waits recorded since the start.
    pub count: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

impl LockWaits {
    pub(super) fn record(&self, waited: Duration) {
        let mut ring = self
            .ring
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let ns = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
        if ring.nanos.len() < SAMPLES {
            ring.nanos.push(ns);
        } else {
            let at = ring.next;
            ring.nanos[at] = ns;
        }
        ring.next = (ring.next + 1) % SAMPLES;
        ring.total += 1;
    }

    pub(super) fn stats(&self) -> LockWaitStats {
        let (mut nanos, count) = {
            let ring = self
                .ring
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            (ring.nanos.clone(), ring.total)
        };
        if nanos.is_empty() {
            return LockWaitStats::default();
        }
        nanos.sort_unstable();
        let at = |q: f64| nanos[((nanos.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
        LockWaitStats {
            count,
            p50_us: at(0.5),
            p99_us: at(0.99),
            max_us: at(1.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_the_recent_waits() {
        let waits = LockWaits::default();
        assert_eq!(waits.stats(), LockWaitStats::default());
        for us in 1..=100u64 {
            waits.record(Duration::from_micros(us));
        }
        let s = waits.stats();
        assert_eq!(
            (s.count, s.p50_us, s.p99_us, s.max_us),
            (100, 51.0, 99.0, 100.0)
        );
        // Past the ring's size the oldest waits make room.
        for _ in 0..SAMPLES {
            waits.record(Duration::from_micros(7));
        }
        let s = waits.stats();
        assert_eq!(
            (s.count, s.p99_us, s.max_us),
            (100 + SAMPLES as u64, 7.0, 7.0)
        );
    }
}
