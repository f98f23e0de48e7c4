//! Answers top-K questions: plans a time range over the coarsest aligned rollup
//! buckets with finer buckets and raw rows at the edges, merges cells by key,
//! computes the metric and keeps the best K.

mod aggregation;
mod cross_shard;
mod history;
mod jobs;
mod metric;
mod plan;
mod timeseries;
mod topk;
mod window;

pub use aggregation::{AGGREGATION_METRICS, AggregationRequest};
pub use cross_shard::{
    CellParts, Combine, CrossShardTopK, FrequencyParts, KeyCells, Part, ShardKeys, StoreParts,
    combine_of, key_cells, requests_across, top_k_across, top_k_of_cells, top_k_of_parts,
};
pub use history::{DayRow, day_cells, history, history_of_cells};
pub use jobs::{
    AggregateRow, AggregationSpec, Job, JobState, JobStore, MAX_ROWS, aggregate, merge_aggregates,
};
pub use metric::{Metric, Missed};
pub use plan::{Piece, plan};
pub use timeseries::{
    MAX_POINTS, Point, Series, SeriesCells, TimeseriesAnswer, TimeseriesQuery, keys_question,
    series_cells, timeseries, timeseries_of_cells,
};
pub use topk::{Grouping, Order, TopK, TopKAnswer, TopKRow, top_k};
pub use window::{rollups_answer, window_question, window_values, window_values_of_cells};

/// Why a query could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Engine(#[from] toplog_engine::EngineError),
    /// A parameter whose value its declaration does not allow, and why.
    #[error("`{0}`: {1}")]
    Invalid(&'static str, String),
    #[error(transparent)]
    Param(#[from] toplog_types::ParamError),
    /// A field no declaration names.
    #[error("`{field}`: unknown field (known: {})", known.join(", "))]
    UnknownField {
        field: String,
        known: &'static [&'static str],
    },
    /// Values that are each allowed but do not make a question together
    /// (a range that ends before it starts), and why.
    #[error("`{0}`: {1}")]
    Conflicting(&'static str, String),
    /// A question larger than a request may ask (too many points or rows),
    /// naming the limit.
    #[error("`{0}`: {1}")]
    TooLarge(&'static str, String),
    /// The job store could not be read or written.
    #[error("job store: {0}")]
    Storage(String),
}

pub type Result<T, E = QueryError> = std::result::Result<T, E>;
