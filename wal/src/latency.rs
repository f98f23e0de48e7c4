//! How long the log's fsyncs and group commits take, counted into fixed
//! buckets without a lock (the writer thread records, any thread reads):
//! what `/metrics` serves as histograms.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in seconds: 50 µs doubling to about 1.6 s
/// (slower ones count only in the total).
const BOUNDS_SECONDS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_2, 0.000_4, 0.000_8, 0.001_6, 0.003_2, 0.006_4, 0.012_8, 0.025_6,
    0.051_2, 0.102_4, 0.204_8, 0.409_6, 0.819_2, 1.638_4,
];

#[derive(Debug, Default)]
pub(crate) struct Latencies {
    /// Per bucket (not cumulative); the last counts what passes every bound.
    counts: [AtomicU64; BOUNDS_SECONDS.len() + 1],
    sum_ns: AtomicU64,
}

/// A histogram of latencies as read.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyHistogram {
    /// (upper bound in seconds, observations over the bound before it and
    /// at or under this one), ascending; the last bound is infinite.
    pub buckets: Vec<(f64, u64)>,
    pub sum_seconds: f64,
    pub count: u64,
}

/// The log's latencies.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLatencies {
    /// Each fsync of a log file.
    pub fsync: LatencyHistogram,
    /// Each group commit: framing, writing and (as the policy says)
    /// syncing every entry waiting, until they are durable.
    pub commit: LatencyHistogram,
}

impl Latencies {
    pub(crate) fn record(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        let bucket = (BOUNDS_SECONDS.iter())
            .position(|b| seconds <= *b)
            .unwrap_or(BOUNDS_SECONDS.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    pub(crate) fn read(&self) -> LatencyHistogram {
        let bounds = BOUNDS_SECONDS.iter().copied().chain([f64::INFINITY]);
        let buckets: Vec<(f64, u64)> = (bounds.zip(&self.counts))
            .map(|(bound, n)| (bound, n.load(Ordering::Relaxed)))
            .collect();
        LatencyHistogram {
            count: buckets.iter().map(|(_, n)| n).sum(),
            buckets,
            sum_seconds: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each observation lands in the first bucket whose bound holds it; the
    /// last, unbounded, takes what passed every bound.
    #[test]
    fn observations_land_in_their_buckets() {
        let l = Latencies::default();
        for us in [10, 50, 51, 3_000, 5_000_000] {
            l.record(Duration::from_micros(us));
        }
        let h = l.read();
        assert_eq!(h.count, 5);
        assert_eq!(h.buckets.len(), BOUNDS_SECONDS.len() + 1);
        assert_eq!(h.buckets[0], (0.000_05, 2));
        assert_eq!(h.buckets[1], (0.000_1, 1));
        assert_eq!(h.buckets[6], (0.003_2, 1));
        assert_eq!(h.buckets.last(), Some(&(f64::INFINITY, 1)));
        assert_eq!(h.buckets.iter().map(|(_, n)| n).sum::<u64>(), 5);
        assert!(
            (h.sum_seconds - 5.003_111).abs() < 1e-9,
            "{}",
            h.sum_seconds
        );
    }
}
