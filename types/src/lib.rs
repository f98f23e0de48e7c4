//! The vocabulary every toplog crate shares: the request event and its
//! validation, microsecond timestamps, typed ids, durations with units, and
//! the declarations of API parameters (checked and described as JSON Schema),
//! and the scheduling priorities of the node's threads. Nothing here does I/O.

mod duration;
mod event;
mod ids;
mod param;
mod priority;
mod time;

pub use duration::{DurationError, parse_duration};
pub use event::{
    Event, EventError, MAX_ENDPOINT_LEN, MAX_LATENCY_MS, MAX_REQUEST_ID_LEN, MAX_USER_ID_LEN,
    TypedRow, ValidationLimits, method_from_endpoint,
};
pub use ids::{Lsn, SegmentId};
pub use param::{Arg, Param, ParamError, Shape};
pub use priority::run_in_background;
pub use time::{Micros, TimeError};
