//! Learned thresholds: a series' baseline is the median of its metric over
//! windows at the same time of day (the window itself and its neighbours up
//! to [`NEIGHBOURS`] windows either side) on each of the past days, and its
//! spread the median absolute deviation (MAD), both robust to the anomalies
//! those days held. The band is the median plus or minus a number of
//! spreads the sensitivity sets; the spread is never below the noise the
//! metric has by its nature (a count's Poisson noise, a rate's binomial
//! noise over the requests of the window judged, a tenth of the median).

use toplog_query::Metric;

use crate::Op;

/// Days of history a learned rule reads.
pub const HISTORY_DAYS: u32 = 14;
/// Windows either side of the same time of day that each past day adds.
pub const NEIGHBOURS: i64 = 3;
/// Days with data a series needs before a learned rule may fire for it.
pub const MIN_DAYS: usize = 7;
/// MAD times this estimates the standard deviation of normal data.
const MAD_TO_SIGMA: f64 = 1.4826;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sensitivity {
    Low,
    Medium,
    High,
}

impl Sensitivity {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "low" => Self::Low,
            "medium" => Self::Medium,
            "high" => Self::High,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
        }
    }

    /// Spreads between the baseline and the threshold.
    fn spreads(self) -> f64 {
        match self {
            Self::Low => 8.0,
            Self::Medium => 6.0,
            Self::High => 4.0,
        }
    }
}

/// A series' baseline at one time of day.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Baseline {
    pub median: f64,
    /// The scaled MAD of the samples.
    pub spread: f64,
    /// Past days that had data.
    pub days: usize,
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

impl Baseline {
    /// From the samples of `days` past days with data; none with fewer than
    /// [`MIN_DAYS`].
    pub fn of(samples: &[f64], days: usize) -> Option<Self> {
        let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
        if days < MIN_DAYS || v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let m = median(&v);
        let mut dev: Vec<f64> = v.iter().map(|x| (x - m).abs()).collect();
        dev.sort_by(f64::total_cmp);
        Some(Self {
            median: m,
            spread: MAD_TO_SIGMA * median(&dev),
            days,
        })
    }

    /// The noise `metric` has by its nature around this baseline, for a
    /// window of `requests` requests: the least spread a band is made of.
    pub fn noise(&self, metric: Metric, requests: u64) -> f64 {
        let m = self.median.abs();
        let natural = match metric {
            Metric::Frequency | Metric::Errors => m.max(1.0).sqrt(),
            Metric::ErrorRate => {
                let p = m.clamp(0.0, 1.0);
                (p * (1.0 - p) / requests.max(1) as f64).sqrt()
            }
            _ => 0.0,
        };
        natural.max(0.1 * m)
    }

    /// The threshold a value is compared with under `op`, the spread at
    /// least `noise`.
    pub fn threshold(&self, op: Op, sensitivity: Sensitivity, noise: f64) -> f64 {
        let width = sensitivity.spreads() * self.spread.max(noise);
        match op {
            Op::Above => self.median + width,
            Op::Below => (self.median - width).max(0.0),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_baseline_ignores_a_past_anomaly_and_needs_a_weeks_history() {
        let mut days = vec![100.0, 104.0, 96.0, 101.0, 99.0, 103.0, 97.0, 100.0];
        let clean = Baseline::of(&days, days.len()).unwrap();
        days[3] = 5_000.0; // an outage's burst last week
        let with_anomaly = Baseline::of(&days, days.len()).unwrap();
        assert_eq!(clean.median, 100.0);
        assert!((with_anomaly.median - clean.median).abs() <= 1.0);
        let noise = with_anomaly.noise(Metric::Frequency, 100);
        assert!(with_anomaly.threshold(Op::Above, Sensitivity::Medium, noise) < 200.0);
        assert!(Baseline::of(&days, MIN_DAYS - 1).is_none());
        // Flat history: the metric's own noise keeps the band open.
        let flat = Baseline::of(&[50.0; 10], 10).unwrap();
        let noise = flat.noise(Metric::Frequency, 50);
        assert!(flat.threshold(Op::Above, Sensitivity::High, noise) > 60.0);
        let zero = Baseline::of(&[0.0; 10], 10).unwrap();
        assert_eq!(zero.threshold(Op::Below, Sensitivity::High, 0.0), 0.0);
        // A rate's noise shrinks as the window holds more requests.
        let rate = Baseline::of(&[0.02; 10], 10).unwrap();
        assert!(rate.noise(Metric::ErrorRate, 100) > rate.noise(Metric::ErrorRate, 10_000));
        // More sensitive: a narrower band.
        let b = Baseline::of(&days, days.len()).unwrap();
        assert!(
            b.threshold(Op::Above, Sensitivity::High, 1.0)
                < b.threshold(Op::Above, Sensitivity::Low, 1.0)
        );
    }
}
