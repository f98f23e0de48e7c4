//! Answers top-K questions: plans a time range over the coarsest aligned rollup
//! buckets with finer buckets and raw rows at the edges, merges cells by key,
//! computes the metric and keeps the best K.

mod history;
mod jobs;
mod metric;
mod plan;
mod timeseries;
mod topk;

pub use history::{DayRow, history};
pub use jobs::{AggregateRow, AggregationSpec, Job, JobState, JobStore, MAX_ROWS, aggregate};
pub use metric::{Metric, Missed};
pub use plan::{Piece, plan};
pub use timeseries::{MAX_POINTS, Point, Series, TimeseriesAnswer, TimeseriesQuery, timeseries};
pub use topk::{Grouping, Order, TopK, TopKAnswer, TopKRow, top_k};

/// Why a query could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Engine(#[from] toplog_engine::EngineError),
    /// A parameter that cannot be answered, and why.
    #[error("`{0}`: {1}")]
    Invalid(&'static str, String),
    /// The job store could not be read or written.
    #[error("job store: {0}")]
    Storage(String),
}

pub type Result<T, E = QueryError> = std::result::Result<T, E>;
