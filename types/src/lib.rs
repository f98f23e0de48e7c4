//! The vocabulary every toplog crate shares: the request event and its
//! validation, microsecond timestamps, typed ids and durations with units.
//! Nothing here does I/O.

mod duration;
mod event;
mod ids;
mod time;

pub use duration::{DurationError, parse_duration};
pub use event::{
    Event, EventError, MAX_ENDPOINT_LEN, MAX_LATENCY_MS, MAX_REQUEST_ID_LEN, MAX_USER_ID_LEN,
    ValidationLimits, method_from_endpoint,
};
pub use ids::{Lsn, SegmentId};
pub use time::{Micros, TimeError};
