//! Rollup cubes: per time bucket (1 minute, 1 hour, 1 day) and per value of a
//! dimension, the count, counts by status class, and latency sum/min/max with
//! a mergeable sketch. Cells are additive, so any set of buckets merges into
//! the same answer the raw rows would give.

mod buckets;
mod cell;
mod cube;
mod dimension;
mod file;
mod full_cells;
mod packed;
mod streams;

pub use buckets::Rollups;
pub use cell::Cell;
pub(crate) use cube::evicted_keys;
pub use cube::{Cube, HEAVIEST_LISTED, Overflow, most_first};
pub use dimension::{Dimension, Granularity, Key};
pub(crate) use dimension::{admitted_key_ids, key_ids};
pub(crate) use file::{BlockIndex, FLUSH_FILE_LEVEL, TIER_FILE_LEVEL, check_file};
