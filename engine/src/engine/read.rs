//! Reads: every read sees one consistent view (segments, memtables being
//! flushed, open memtables' chunks, and their rollups) taken under a short
//! read lock, then scans it outside the lock, segments through the
//! decoded-segment cache. Data past retention is hidden from every read.

use std::path::Path;
use std::sync::Arc;

use toplog_types::{Event, Lsn, Micros};

use super::{Engine, Inner, Segment};
use crate::budget;
use crate::columns::Columns;
use crate::error::Result;
use crate::rollup::{Cube, Dimension, Granularity, Rollups};
use crate::scan::{self, Cursor, Filters, Page, RawCells, TimeRange};

/// What a read charges its memory budget per event it holds: the event and
/// its strings, estimated.
const EVENT_BYTES: usize = std::mem::size_of::<Event>() + 64;

/// A summary of what is stored, for `/readyz` and operators.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageStats {
    pub segments: usize,
    pub segment_rows: u64,
    pub segment_bytes: u64,
    pub memtable_rows: usize,
    pub memtable_bytes: usize,
    pub applied_lsn: Lsn,
    pub flushed_lsn: Lsn,
    pub idempotency_keys: usize,
    /// How long applying the log waited for the state's write lock, recently.
    pub apply_lock_wait: super::LockWaitStats,
    /// Bytes the process's distinct keys hold, and their budget.
    pub key_bytes: usize,
    pub key_budget: usize,
    /// Flushes since the process started.
    pub flushes: u64,
    /// Keys cube buckets evicted past `rollup_key_budget` since the
    /// process started.
    pub evicted_keys: u64,
}

impl Engine {
    /// Events in `range` matching `filters`, in (timestamp, request id) order, one page at a time.
    pub fn scan(
        &self,
        range: TimeRange,
        filters: &Filters,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Result<Page> {
        let range = self.inner.cutoffs().retained(&range);
        let want = limit
            .saturating_add(after.map_or(0, |c| c.skip as usize))
            .saturating_add(1);
        // Each source adds up to `want` candidates before they are cut back to `want`.
        budget::hold(want.saturating_mul(2).saturating_mul(EVENT_BYTES))?;
        let View {
            mut segments,
            memtables,
        } = self.inner.view(&range);
        let mut candidates = Vec::new();
        for cols in &memtables {
            budget::check_time()?;
            candidates.extend(scan::collect(cols, false, &range, filters, after, want));
            scan::keep_first(&mut candidates, want);
        }
        // Visit segments by start time, and stop at the first that starts after the
        // `want`-th candidate: it, and every later one, can only add rows past the page.
        segments.sort_by_key(|s| s.meta.min_ts);
        for seg in segments {
            if after.is_some_and(|c| seg.meta.max_ts < c.ts) {
                continue;
            }
            if candidates.len() >= want
                && candidates
                    .last()
                    .is_some_and(|e| seg.meta.min_ts > e.timestamp)
            {
                break;
            }
            budget::check_time()?;
            if !self.inner.may_match(&seg, filters)? {
                continue;
            }
            let cols = self.inner.decoded(&seg, Some(&range), true)?;
            candidates.extend(scan::collect(&cols, true, &range, filters, after, want));
            scan::keep_first(&mut candidates, want);
        }
        Ok(scan::page(candidates, after, limit))
    }

    /// The exact number of stored events in `range` matching `filters`.
    pub fn count(&self, range: TimeRange, filters: &Filters) -> Result<u64> {
        let range = self.inner.cutoffs().retained(&range);
        let View {
            segments,
            memtables,
        } = self.inner.view(&range);
        let mut total: u64 = memtables
            .iter()
            .map(|cols| scan::count(cols, false, &range, filters))
            .sum();
        for seg in segments {
            budget::check_time()?;
            if filters.is_empty() && range.contains_all(seg.meta.min_ts, seg.meta.max_ts) {
                total += seg.meta.rows;
            } else if self.inner.may_match(&seg, filters)? {
                let cols = self
                    .inner
                    .decoded(&seg, Some(&range), filters.request_id.is_some())?;
                total += scan::count(&cols, true, &range, filters);
            }
        }
        Ok(total)
    }

    /// Calls `f` with the cube of `dim` of every bucket of `g` that starts in
    /// `[from, to)`. A bucket may come as several cubes (flushed rows, rows being
    /// flushed, open memtables): their cells add up. Fails only when a day
    /// held on disk alone cannot be read.
    pub fn visit_rollups(
        &self,
        g: Granularity,
        from: Micros,
        to: Micros,
        dim: Dimension,
        f: impl FnMut(&Cube),
    ) -> Result<()> {
        self.with_rollups(&[(g, from, to)], dim, |cubes| {
            cubes.iter().copied().for_each(f)
        })
    }

    /// Calls `f` once, with every cube [`Engine::visit_rollups`] would visit
    /// for each `(granularity, from, to)` of `pieces`, as they stood at one
    /// instant, so they can be read side by side.
    pub fn with_rollups<R>(
        &self,
        pieces: &[(Granularity, Micros, Micros)],
        dim: Dimension,
        f: impl FnOnce(&[&Cube]) -> R,
    ) -> Result<R> {
        let view = self.inner.rollup_view(pieces)?;
        let mut cubes = Vec::new();
        view.visit(dim, |_, c| cubes.push(c));
        Ok(f(&cubes))
    }

    /// [`Engine::with_rollups`] a cube at a time, with the index in `pieces`
    /// of the piece it belongs to: one look at the state and the retention
    /// for many pieces (a time series reads a few per interval).
    pub fn each_rollup(
        &self,
        pieces: &[(Granularity, Micros, Micros)],
        dim: Dimension,
        f: impl FnMut(usize, &Cube),
    ) -> Result<()> {
        self.inner.rollup_view(pieces)?.visit(dim, f);
        Ok(())
    }

    /// Aggregates the raw rows in `range` matching `filters` by `dim`, as the
    /// cubes would; the cells have latency sketches only if `sketches`.
    pub fn aggregate_raw(
        &self,
        range: TimeRange,
        filters: &Filters,
        dim: Dimension,
        sketches: bool,
    ) -> Result<RawCells> {
        let range = self.inner.cutoffs().retained(&range);
        let by = scan::Grouping { dim, sketches };
        let View {
            segments,
            memtables,
        } = self.inner.view(&range);
        let mut out = RawCells::default();
        for cols in &memtables {
            budget::check_time()?;
            scan::aggregate(cols, false, &range, filters, by, &mut out)?;
        }
        for seg in segments {
            budget::check_time()?;
            if !self.inner.may_match(&seg, filters)? {
                continue;
            }
            scan::aggregate(
                &*self
                    .inner
                    .decoded(&seg, Some(&range), filters.request_id.is_some())?,
                true,
                &range,
                filters,
                by,
                &mut out,
            )?;
        }
        Ok(out)
    }

    /// The `k` slowest requests in `range` matching `filters` (fastest with `asc`),
    /// ties broken by request id.
    pub fn slowest(
        &self,
        range: TimeRange,
        filters: &Filters,
        k: usize,
        asc: bool,
    ) -> Result<Vec<Event>> {
        let range = self.inner.cutoffs().retained(&range);
        let View {
            segments,
            memtables,
        } = self.inner.view(&range);
        // Each part's k best merged in as it is read: a few k events held at a time.
        budget::hold(k.saturating_mul(2).saturating_mul(EVENT_BYTES))?;
        let mut best = Vec::new();
        for cols in &memtables {
            budget::check_time()?;
            let part = scan::by_latency(cols, &range, filters, k, asc);
            scan::keep_first_by_latency(&mut best, part, k, asc);
        }
        for seg in segments {
            budget::check_time()?;
            if !self.inner.may_match(&seg, filters)? {
                continue;
            }
            let cols = self.inner.decoded(&seg, Some(&range), true)?;
            let part = scan::by_latency(&cols, &range, filters, k, asc);
            scan::keep_first_by_latency(&mut best, part, k, asc);
        }
        Ok(best)
    }

    pub fn stats(&self) -> StorageStats {
        let st = self.inner.read();
        StorageStats {
            segments: st.segments.len(),
            segment_rows: st.segments.iter().map(|s| s.meta.rows).sum(),
            segment_bytes: st.segments.iter().map(|s| s.info().bytes).sum(),
            memtable_rows: st.active.values().map(|m| m.len()).sum(),
            memtable_bytes: st.active_bytes,
            applied_lsn: st.applied_lsn,
            flushed_lsn: st.flushed_lsn,
            idempotency_keys: st.keys.len(),
            apply_lock_wait: self.inner.apply_waits.stats(),
            key_bytes: crate::keys::bytes(),
            key_budget: self.inner.config.key_memory_bytes,
            flushes: (self.inner.flushes).load(std::sync::atomic::Ordering::Relaxed),
            evicted_keys: crate::rollup::evicted_keys(),
        }
    }

    /// How long the log's fsyncs and group commits take; `None` on a
    /// cluster's member, whose log is the Raft log.
    pub fn log_latencies(&self) -> Option<toplog_wal::LogLatencies> {
        self.wal.as_ref().map(|w| w.latencies())
    }

    /// Bytes of the log's files on disk.
    pub fn log_bytes(&self) -> u64 {
        let dir = self.inner.config.data_dir.join(super::WAL_DIR);
        (std::fs::read_dir(dir).into_iter().flatten().flatten())
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    }

    pub fn data_dir(&self) -> &Path {
        &self.inner.config.data_dir
    }
}

/// What a read of raw rows sees, taken under one short read lock (so a
/// concurrent flush is seen entirely or not at all) and read without it.
struct View {
    /// The segments overlapping the range.
    segments: Vec<Arc<Segment>>,
    /// Chunks of the memtables being flushed and of the open memtables, of
    /// the partitions overlapping the range.
    memtables: Vec<Arc<Columns>>,
}

impl Inner {
    fn view(&self, range: &TimeRange) -> View {
        let st = self.read();
        let segments = st
            .segments
            .iter()
            .filter(|s| range.overlaps(s.meta.min_ts, s.meta.max_ts))
            .cloned()
            .collect();
        let frozen = st
            .frozen
            .iter()
            .flat_map(|f| f.iter())
            .filter(|(start, _)| self.partition_overlaps(*start, range))
            .flat_map(|(_, chunks)| chunks.iter().cloned());
        let open = st
            .active
            .iter()
            .filter(|(start, _)| self.partition_overlaps(**start, range))
            .flat_map(|(_, m)| m.chunks());
        let memtables = frozen.chain(open).collect();
        View {
            segments,
            memtables,
        }
    }

    /// Whether the partition starting at `start` may hold rows in `range`:
    /// a read skips memtables of other partitions without scanning them.
    fn partition_overlaps(&self, start: i64, range: &TimeRange) -> bool {
        let last = start.saturating_add(self.config.partition_us() - 1);
        range.overlaps(Micros::new(start), Micros::new(last))
    }

    /// The rollups a read of `pieces` needs, taken under a short read lock:
    /// the flushed and being-flushed sets whole (immutable and shared), and
    /// of the open set only the buckets the pieces name (shared until the
    /// apply thread next changes one, which then copies it). The read itself
    /// holds no lock, so applying the log never waits for it. Buckets past
    /// their retention are left out, purged or not.
    fn rollup_view(&self, pieces: &[(Granularity, Micros, Micros)]) -> Result<RollupView> {
        let cutoffs = self.cutoffs();
        let pieces: Vec<(Granularity, Micros, Micros)> = pieces
            .iter()
            .map(|&(g, from, to)| (g, from.max(cutoffs.rollup(g)), to))
            .collect();
        // Each try lost a race with a flush or maintenance replacing a file.
        const MAX_TRIES: usize = 16;
        let mut tries = 0;
        loop {
            let (mut view, cold) = {
                let st = self.read();
                let view = RollupView {
                    flushed: st.rollups.clone(),
                    frozen: st.frozen_rollups.clone(),
                    open: pieces
                        .iter()
                        .map(|&(g, from, to)| st.active_rollups.slice(g, from, to))
                        .collect(),
                    cold: Vec::new(),
                    pieces: pieces.clone(),
                };
                let cold: Vec<(usize, String)> = (pieces.iter().enumerate())
                    .flat_map(|(i, &(g, from, to))| {
                        st.cold_files(g, from, to).into_iter().map(move |f| (i, f))
                    })
                    .collect();
                (view, cold)
            };
            // Read without the lock: a flush or maintenance may replace a
            // file meanwhile, and then the view is taken again.
            let mut read = || -> Result<()> {
                for (i, file) in &cold {
                    let (g, from, to) = pieces[*i];
                    let blocks = self.cold_blocks(file, g, from, to)?;
                    view.cold.extend(blocks.into_iter().map(|b| (*i, b)));
                }
                Ok(())
            };
            match read() {
                Ok(()) => {
                    // A read holding blocks the cache may let go of is charged for them.
                    budget::hold(view.cold.iter().map(|(_, b)| b.heap_bytes()).sum())?;
                    return Ok(view);
                }
                Err(_) if tries < MAX_TRIES && self.tiers_replaced(&cold) => {
                    budget::check_time()?;
                    tries += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether any of `files` is no longer listed (replaced since it was named).
    fn tiers_replaced(&self, files: &[(usize, String)]) -> bool {
        let st = self.read();
        let listed: std::collections::HashSet<&str> =
            st.tiers.values().map(|t| t.file.as_str()).collect();
        files.iter().any(|(_, f)| !listed.contains(f.as_str()))
    }
}

/// What [`Inner::rollup_view`] took: cubes to read without the state's lock.
struct RollupView {
    flushed: Arc<Rollups>,
    frozen: Vec<Arc<Rollups>>,
    /// Per piece, the open buckets it covers.
    open: Vec<Rollups>,
    /// Days only tier files hold, each with the index of its piece.
    cold: Vec<(usize, Arc<Rollups>)>,
    pieces: Vec<(Granularity, Micros, Micros)>,
}

impl RollupView {
    /// Calls `f` with every cube of `dim` in the pieces (and the piece's
    /// index): flushed, from tier files, being flushed, then open.
    fn visit<'a>(&'a self, dim: Dimension, mut f: impl FnMut(usize, &'a Cube)) {
        for (i, &(g, from, to)) in self.pieces.iter().enumerate() {
            self.flushed.visit(g, from, to, dim, |c| f(i, c));
            for (_, r) in self.cold.iter().filter(|(piece, _)| *piece == i) {
                r.visit(g, from, to, dim, |c| f(i, c));
            }
            for r in &self.frozen {
                r.visit(g, from, to, dim, |c| f(i, c));
            }
            self.open[i].visit(g, from, to, dim, |c| f(i, c));
        }
    }
}
