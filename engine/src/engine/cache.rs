//! Decoded segments kept for repeated reads: a small least-recently-used list
//! of whole segments by size, shared by every read. A partial read of an
//! archived segment is never cached, and maintenance reads do not fill it.

use std::sync::Arc;

use toplog_types::SegmentId;

use super::{Inner, Segment, Stored, lock};
use crate::archive;
use crate::columns::Columns;
use crate::error::{EngineError, Result, segment_err};
use crate::scan::{Filters, TimeRange};
use crate::segment;

/// Bytes of decoded segments kept for repeated reads (paging walks the same
/// segments; raw queries over a span read the same ones again), least
/// recently used out first.
pub(super) const DECODED_CACHE_BYTES: usize = 256 << 20;

impl Inner {
    /// A decoded segment from the cache, made the most recently used.
    fn cached(&self, id: SegmentId) -> Option<Arc<Columns>> {
        lock(&self.decoded).get(&id)
    }

    /// Decodes `seg`, checksums checked; of an archived segment, only the row
    /// groups that may hold rows in `range` (`None`: all). Also says whether
    /// all of the segment was read.
    fn load(
        &self,
        seg: &Segment,
        range: Option<&TimeRange>,
        request_ids: bool,
    ) -> Result<(Columns, bool)> {
        match &seg.stored {
            Stored::Local(bytes) => {
                let (_, cols) = segment::decode(bytes, request_ids, &self.config.cipher)
                    .map_err(|e| segment_err(&seg.path, e))?;
                Ok((cols, true))
            }
            Stored::Archived { key, bytes, key_id } => {
                let encrypted = key_id.as_ref().map(|_| &self.config.cipher);
                // A range over the whole segment reads all of it.
                let range = range.filter(|r| !r.contains_all(seg.meta.min_ts, seg.meta.max_ts));
                let cols = archive::read(&self.archive_store()?, key, *bytes, range, encrypted)
                    .map_err(|e| EngineError::Archive {
                        key: key.clone(),
                        reason: format!("reading segment {}: {e}", seg.id),
                    })?;
                Ok((cols, range.is_none()))
            }
        }
    }

    /// The rows of `seg` (see [`Inner::load`]) for reads, with their
    /// request ids if `request_ids` (a local segment decoded without them
    /// is decoded again, whole, for the first read that needs them): whole
    /// segments are kept in the cache, least recently used out first.
    pub(super) fn decoded(
        &self,
        seg: &Segment,
        range: Option<&TimeRange>,
        request_ids: bool,
    ) -> Result<Arc<Columns>> {
        let enough = |cols: &Columns| !request_ids || cols.has_request_ids();
        if let Some(cols) = self.cached(seg.id).filter(|c| enough(c)) {
            return Ok(cols);
        }
        let (cols, whole) = self.load(seg, range, request_ids)?;
        let cols = Arc::new(cols);
        if !whole {
            return Ok(cols);
        }
        let mut cache = lock(&self.decoded);
        // Another reader may have decoded it meanwhile: theirs is kept unless
        // only ours has the request ids.
        if let Some(theirs) = cache.peek(&seg.id)
            && (theirs.has_request_ids() || !cols.has_request_ids())
        {
            return Ok(theirs.clone());
        }
        cache.put(seg.id, cols.clone(), cols.heap_bytes());
        Ok(cols)
    }

    /// Whether `seg` may hold rows matching the exact-value filters of
    /// `filters` (user, endpoint, method): a local segment not decoded yet
    /// answers from its dictionaries alone, so a point filter over a month
    /// decodes only the segments that can match. Others say yes.
    pub(super) fn may_match(&self, seg: &Segment, filters: &Filters) -> Result<bool> {
        use crate::segment::DictColumnId;
        let values = [
            (DictColumnId::UserId, &filters.user_id),
            (DictColumnId::Endpoint, &filters.endpoint),
            (DictColumnId::Method, &filters.method),
        ];
        if values.iter().all(|(_, v)| v.is_none()) {
            return Ok(true);
        }
        let Stored::Local(bytes) = &seg.stored else {
            return Ok(true);
        };
        if lock(&self.decoded).peek(&seg.id).is_some() {
            return Ok(true);
        }
        for (column, value) in values {
            let Some(value) = value else { continue };
            let holds = segment::dictionary_holds(bytes, column, value, &self.config.cipher)
                .map_err(|e| segment_err(&seg.path, e))?;
            if !holds {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// All rows of `seg` for a maintenance step about to replace it: from the
    /// cache if there, but not added to it.
    pub(super) fn read_whole(&self, seg: &Segment) -> Result<Arc<Columns>> {
        match self.cached(seg.id).filter(|c| c.has_request_ids()) {
            Some(cols) => Ok(cols),
            None => Ok(Arc::new(self.load(seg, None, true)?.0)),
        }
    }
}
