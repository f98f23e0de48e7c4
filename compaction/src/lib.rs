//! Keeping the store in shape over time: merging small segments, retention,
//! and tiering raw segments to object storage as Parquet. The engine does each
//! step atomically; this crate decides what to do and when, and owns the
//! object store.

pub mod cluster;
mod maintainer;
mod maintenance;
mod owner;
mod policy;
mod store;

pub use maintainer::{Maintainer, PassTotals, RekeyError};
pub use maintenance::{
    ArchiveAccess, Compaction, MAX_BYTES, MAX_MERGE, MIN_BYTES, MIN_MERGE, PurgedBuckets, Report,
    SegmentSummary, plan_compactions, run,
};
pub use owner::{
    ArchiveOwner, Claim, NODE_ID_FILE, NodeId, NodeIdError, OWNER_KEY, OwnerError, claim,
};
pub use policy::{Policy, PolicyError, PolicyErrorKind, format_duration};
pub use store::{ArchiveConfig, ArchiveError, ObjectArchive};
