//! The metrics a query ranks by, computed from a merged cell.

use toplog_engine::{Cell, SKETCH_RELATIVE_ERROR};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Metric {
    Frequency,
    Errors,
    ErrorRate,
    LatencyAvg,
    LatencyP50,
    LatencyP90,
    LatencyP95,
    LatencyP99,
    LatencyMax,
}

impl Metric {
    pub const NAMES: [&'static str; 9] = [
        "frequency",
        "errors",
        "error_rate",
        "latency_avg",
        "latency_p50",
        "latency_p90",
        "latency_p95",
        "latency_p99",
        "latency_max",
    ];

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "frequency" => Self::Frequency,
            "errors" => Self::Errors,
            "error_rate" => Self::ErrorRate,
            "latency_avg" => Self::LatencyAvg,
            "latency_p50" => Self::LatencyP50,
            "latency_p90" => Self::LatencyP90,
            "latency_p95" => Self::LatencyP95,
            "latency_p99" => Self::LatencyP99,
            "latency_max" => Self::LatencyMax,
            _ => return None,
        })
    }

    /// The metric's name, as [`Metric::parse`] reads it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Frequency => "frequency",
            Self::Errors => "errors",
            Self::ErrorRate => "error_rate",
            Self::LatencyAvg => "latency_avg",
            Self::LatencyP50 => "latency_p50",
            Self::LatencyP90 => "latency_p90",
            Self::LatencyP95 => "latency_p95",
            Self::LatencyP99 => "latency_p99",
            Self::LatencyMax => "latency_max",
        }
    }

    /// The quantile, for sketch-based metrics.
    pub fn quantile(self) -> Option<f64> {
        match self {
            Self::LatencyP50 => Some(0.5),
            Self::LatencyP90 => Some(0.9),
            Self::LatencyP95 => Some(0.95),
            Self::LatencyP99 => Some(0.99),
            _ => None,
        }
    }

    /// Whether the metric is a function of a cell's counts alone (requests
    /// by status class, and what the cell may have missed), so cells can be
    /// read without their latencies.
    pub fn counts_only(self) -> bool {
        matches!(self, Self::Frequency | Self::Errors | Self::ErrorRate)
    }

    pub fn is_exact(self) -> bool {
        self.quantile().is_none()
    }

    /// The metric's value for a cell that may have missed some requests of its
    /// key: the value of what the cell holds, with bounds on the true value that
    /// hold whatever the missed requests were.
    pub fn value_with(self, cell: &Cell, missed: &Missed) -> Option<(f64, Option<(f64, f64)>)> {
        let (value, bounds) = self.value(cell)?;
        if missed.requests == 0 {
            return Some((value, bounds));
        }
        let (lo, hi) = bounds.unwrap_or((value, value));
        let (c, m) = (cell.count as f64, missed.requests as f64);
        let e = cell.errors() as f64;
        let (a, b) = (missed.latency_min_ms(), missed.latency_max_ms());
        let bounds = match self {
            Self::Frequency => (c, c + m),
            Self::Errors => (e, e + m),
            Self::ErrorRate => (e / (c + m), (e + m) / (c + m)),
            // The mean moves monotonically as missed requests at one extreme are added.
            Self::LatencyAvg => {
                let s = cell.latency_sum_us as f64 / 1000.0;
                (lo.min((s + m * a) / (c + m)), hi.max((s + m * b) / (c + m)))
            }
            Self::LatencyMax => (value, value.max(b)),
            // Added requests move a rank's value no further than their own extremes.
            _ => (lo.min(a), hi.max(b)),
        };
        Some((value, Some(bounds)))
    }

    /// The metric's value for a cell (latencies in milliseconds), with bounds
    /// when it is approximate. `None` for an empty cell or a cell without a sketch.
    pub fn value(self, cell: &Cell) -> Option<(f64, Option<(f64, f64)>)> {
        if cell.count == 0 {
            return None;
        }
        let n = cell.count as f64;
        let exact = |v: f64| Some((v, None));
        match self {
            Self::Frequency => exact(n),
            Self::Errors => exact(cell.errors() as f64),
            Self::ErrorRate => exact(cell.errors() as f64 / n),
            Self::LatencyAvg => exact(cell.latency_sum_us as f64 / n / 1000.0),
            Self::LatencyMax => exact(cell.latency_max_us as f64 / 1000.0),
            Self::LatencyP50 | Self::LatencyP90 | Self::LatencyP95 | Self::LatencyP99 => {
                let q = self.quantile()?;
                let v = cell.sketch.as_ref()?.quantile(q)? / 1000.0;
                let a = SKETCH_RELATIVE_ERROR;
                Some((v, Some((v / (1.0 + a), v / (1.0 - a)))))
            }
        }
    }
}

/// Requests of a key that its merged cell may not hold (see
/// [`Cell::missed`](toplog_engine::Cell)): at most `requests` of them, each with a
/// latency in `[latency_min_us, latency_max_us]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Missed {
    pub requests: u64,
    pub latency_min_us: u64,
    pub latency_max_us: u64,
}

impl Missed {
    /// What two parts of one key may miss together.
    pub fn and(&self, other: &Missed) -> Missed {
        match (self.requests, other.requests) {
            (0, _) => *other,
            (_, 0) => *self,
            _ => Missed {
                requests: self.requests + other.requests,
                latency_min_us: self.latency_min_us.min(other.latency_min_us),
                latency_max_us: self.latency_max_us.max(other.latency_max_us),
            },
        }
    }

    fn latency_min_ms(&self) -> f64 {
        self.latency_min_us as f64 / 1000.0
    }

    fn latency_max_ms(&self) -> f64 {
        self.latency_max_us as f64 / 1000.0
    }
}
