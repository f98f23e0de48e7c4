//! Covers `[start, end)` with the coarsest aligned rollup buckets, then finer
//! buckets at the unaligned edges, then raw rows below one minute.

use toplog_engine::{Granularity, TimeRange};
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

/// The pieces covering `range`, disjoint and in no particular order.
pub fn plan(range: TimeRange) -> Vec<Piece> {
    let mut out = Vec::new();
    cover(range.start.get(), range.end.get(), 0, &mut out);
    out
}

fn cover(start: i64, end: i64, level: usize, out: &mut Vec<Piece>) {
    if start >= end {
        return;
    }
    let Some(&g) = Granularity::ALL.get(level) else {
        out.push(Piece::Raw(TimeRange {
            start: Micros::new(start),
            end: Micros::new(end),
        }));
        return;
    };
    let len = g.len_us();
    let (a, b) = (ceil_to(start, len), end.div_euclid(len) * len);
    if a < b {
        cover(start, a, level + 1, out);
        out.push(Piece::Buckets {
            granularity: g,
            from: Micros::new(a),
            to: Micros::new(b),
        });
        cover(b, end, level + 1, out);
    } else {
        cover(start, end, level + 1, out);
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
        fn pieces_tile_the_range_exactly(start in 0i64..10_000_000_000_000, len in 1i64..5_000_000_000_000) {
            let range = TimeRange { start: Micros::new(start), end: Micros::new(start + len) };
            let mut spans: Vec<(i64, i64)> = plan(range).iter().map(span).collect();
            spans.sort_unstable();
            let mut at = start;
            for (a, b) in &spans {
                prop_assert_eq!(*a, at);
                prop_assert!(a < b);
                at = *b;
            }
            prop_assert_eq!(at, start + len);
            for p in plan(range) {
                if let Piece::Raw(r) = p {
                    prop_assert!(r.end.get() - r.start.get() < 2 * 60_000_000);
                }
            }
        }
    }
}
