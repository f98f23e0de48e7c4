//! Covers `[start, end)` with the coarsest aligned rollup buckets, then finer
//! buckets at the unaligned edges, then raw rows below one minute.

use toplog_engine::{Cutoffs, Granularity, TimeRange};
use toplog_types::Micros;

/// One part of a plan: whole buckets of a granularity, or raw rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece {
    /// Buckets of `granularity` starting in `[from, to)` (both aligned).
    Buckets {
        granularity: Granularity,
        from: Micros,
        to: Micros,
    },
    Raw(TimeRange),
}

fn ceil_to(t: i64, len: i64) -> i64 {
    let f = t.div_euclid(len) * len;
    if f == t { t } else { f.saturating_add(len) }
}

/// The pieces covering `range` with buckets of `levels` (coarsest first) and
/// raw rows for the rest, disjoint and in no particular order.
pub fn plan(range: TimeRange, levels: &[Granularity]) -> Vec<Piece> {
    let mut out = Vec::new();
    cover(range.start.get(), range.end.get(), levels, &mut out);
    out
}

/// `range` from the earliest start at which every piece of its plan is still
/// kept under `cutoffs`: the part before it is past retention at the
/// granularity the plan would read it at. Answers over the result are exact
/// for it, with no hole where a coarser tier ended before a finer one.
pub(crate) fn retained(range: TimeRange, levels: &[Granularity], cutoffs: &Cutoffs) -> TimeRange {
    let mut start = range.start;
    loop {
        let r = TimeRange {
            start,
            end: range.end,
        };
        if r.start >= r.end {
            return r;
        }
        let mut next = start;
        for piece in plan(r, levels) {
            let (from, kept) = match piece {
                Piece::Buckets {
                    granularity, from, ..
                } => (from, cutoffs.rollup(granularity)),
                Piece::Raw(raw) => (raw.start, cutoffs.raw),
            };
            if from < kept {
                next = next.max(kept);
            }
        }
        // Strictly later each time round, and never past the end.
        if next == start {
            return r;
        }
        start = next.min(range.end);
    }
}

fn cover(start: i64, end: i64, levels: &[Granularity], out: &mut Vec<Piece>) {
    if start >= end {
        return;
    }
    let Some((&g, finer)) = levels.split_first() else {
        out.push(Piece::Raw(TimeRange {
            start: Micros::new(start),
            end: Micros::new(end),
        }));
        return;
    };
    let len = g.len_us();
    let (a, b) = (ceil_to(start, len), end.div_euclid(len) * len);
    if a < b {
        cover(start, a, finer, out);
        out.push(Piece::Buckets {
            granularity: g,
            from: Micros::new(a),
            to: Micros::new(b),
        });
        cover(b, end, finer, out);
    } else {
        cover(start, end, finer, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn span(p: &Piece) -> (i64, i64) {
        match p {
            Piece::Buckets { from, to, .. } => (from.get(), to.get()),
            Piece::Raw(r) => (r.start.get(), r.end.get()),
        }
    }

    proptest! {
        #[test]
        fn the_retained_range_reads_only_kept_pieces_and_is_a_suffix(
            start in 0i64..40_000_000_000_000,
            len in 1i64..5_000_000_000_000,
            keeps in proptest::collection::vec(60i64..3_000_000, 4),
        ) {
            use std::time::Duration;
            let mut keeps = keeps;
            keeps[1..].sort_unstable(); // minute <= hour <= day, as the policy requires
            let secs = |i: usize| Some(Duration::from_secs(keeps[i] as u64));
            let retention = toplog_engine::Retention { raw: secs(0), minute: secs(1), hour: secs(2), day: secs(3) };
            let now = Micros::new(start + len);
            let cutoffs = retention.cutoffs(now);
            let range = TimeRange { start: Micros::new(start), end: now };
            let kept = retained(range, &Granularity::ALL, &cutoffs);
            prop_assert_eq!(kept.end, range.end);
            prop_assert!(kept.start >= range.start);
            for p in plan(kept, &Granularity::ALL) {
                match p {
                    Piece::Buckets { granularity, from, .. } => prop_assert!(from >= cutoffs.rollup(granularity)),
                    Piece::Raw(r) => prop_assert!(r.start >= cutoffs.raw),
                }
            }
            // Nothing is cut that was kept at every granularity.
            let all_kept = [cutoffs.raw, cutoffs.rollup(Granularity::Minute), cutoffs.rollup(Granularity::Hour), cutoffs.rollup(Granularity::Day)]
                .into_iter().max().unwrap_or(range.start);
            prop_assert!(kept.start <= range.start.max(all_kept));
        }

        #[test]
        fn pieces_tile_the_range_exactly(start in 0i64..10_000_000_000_000, len in 1i64..5_000_000_000_000) {
            let range = TimeRange { start: Micros::new(start), end: Micros::new(start + len) };
            let mut spans: Vec<(i64, i64)> = plan(range, &Granularity::ALL).iter().map(span).collect();
            spans.sort_unstable();
            let mut at = start;
            for (a, b) in &spans {
                prop_assert_eq!(*a, at);
                prop_assert!(a < b);
                at = *b;
            }
            prop_assert_eq!(at, start + len);
            for p in plan(range, &Granularity::ALL) {
                if let Piece::Raw(r) = p {
                    prop_assert!(r.end.get() - r.start.get() < 2 * 60_000_000);
                }
            }
            // Without minute buckets the raw edges stay under an hour each.
            let coarse = [Granularity::Day, Granularity::Hour];
            let mut spans: Vec<(i64, i64)> = plan(range, &coarse).iter().map(span).collect();
            spans.sort_unstable();
            prop_assert_eq!(spans.first().map(|s| s.0), Some(start));
            prop_assert_eq!(spans.last().map(|s| s.1), Some(start + len));
            prop_assert!(spans.windows(2).all(|w| w[0].1 == w[1].0));
            for p in plan(range, &coarse) {
                if let Piece::Raw(r) = p {
                    prop_assert!(r.end.get() - r.start.get() < 2 * 3_600_000_000);
                }
            }
        }
    }
}
