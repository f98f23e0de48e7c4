//! Metrics the store keeps itself (counters, the log's latency
//! histograms), shown as read at each scrape.

use std::sync::Arc;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use toplog_wal::LatencyHistogram;

/// A counter or histogram the store keeps, as read at the last scrape
/// (the store counts; this shows what it read). Left out while unset.
#[derive(Debug, Clone)]
pub(super) struct Read<T>(Arc<std::sync::RwLock<Option<T>>>);

impl<T> Default for Read<T> {
    fn default() -> Self {
        Self(Arc::new(std::sync::RwLock::new(None)))
    }
}

impl<T> Read<T> {
    pub(super) fn set(&self, value: T) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Some(value);
    }

    fn with<R>(&self, f: impl FnOnce(Option<&T>) -> R) -> R {
        f(self.0.read().unwrap_or_else(|p| p.into_inner()).as_ref())
    }
}

impl EncodeMetric for Read<u64> {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let value = self.with(|v| v.copied().unwrap_or(0));
        encoder.encode_counter::<NoLabelSet, _, u64>(&value, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }

    fn is_empty(&self) -> bool {
        self.with(|v| v.is_none())
    }
}

impl EncodeMetric for Read<LatencyHistogram> {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.with(|h| match h {
            // Per-bucket counts, the last unbounded: the encoder adds them up.
            Some(h) => {
                encoder.encode_histogram::<NoLabelSet>(h.sum_seconds, h.count, &h.buckets, None)
            }
            None => Ok(()),
        })
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }

    fn is_empty(&self) -> bool {
        self.with(|v| v.is_none())
    }
}
