//! A DDSketch of latencies in microseconds with a guaranteed relative error of
//! at most 1%: each value falls in bin `ceil(log_gamma(v))`, and a quantile is
//! answered with the midpoint of its bin. Bins are kept sparse (sorted pairs),
//! so a cell with a handful of requests costs a handful of bins, and merging two
//! sketches is exact (counts add), which makes rollups mergeable at any tier.

/// Relative accuracy: every quantile is within 1% of the true value at its rank.
pub const SKETCH_RELATIVE_ERROR: f64 = 0.01;

fn gamma() -> f64 {
    (1.0 + SKETCH_RELATIVE_ERROR) / (1.0 - SKETCH_RELATIVE_ERROR)
}

/// The 0-based position in sorted order of the `q`-quantile of `n` values:
/// the nearest rank, `ceil(q * n)` counting from 1, as SQL's `quantile_disc`
/// and `percentile_disc` define it (ClickHouse's `quantileExact` agrees).
pub fn quantile_index(q: f64, n: u64) -> u64 {
    // The tolerance keeps `0.99 * 100` (99.00000000000001 in floating point) at rank 99.
    let rank = (q.clamp(0.0, 1.0) * n as f64 - 1e-9).ceil().max(1.0) as u64;
    rank.min(n).saturating_sub(1)
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LatencySketch {
    /// Values of 0 µs, which have no logarithm.
    zeros: u64,
    /// (bin key, count), sorted by key.
    bins: Vec<(i32, u64)>,
}

impl LatencySketch {
    /// The bin of a value, `None` for 0 µs. Computed once per request and
    /// handed to every sketch it goes into ([`LatencySketch::insert_bin`]).
    pub fn bin(us: u64) -> Option<i32> {
        (us > 0).then(|| ((us as f64).ln() / gamma().ln()).ceil() as i32)
    }

    pub fn insert(&mut self, us: u64) {
        self.insert_bin(Self::bin(us));
    }

    /// Inserts a value by its [`LatencySketch::bin`].
    pub fn insert_bin(&mut self, bin: Option<i32>) {
        let Some(key) = bin else {
            self.zeros += 1;
            return;
        };
        match self.bins.binary_search_by_key(&key, |(k, _)| *k) {
            Ok(i) => self.bins[i].1 += 1,
            Err(i) => self.bins.insert(i, (key, 1)),
        }
    }

    /// Adds `other`'s counts. Bins `self` already has are added in place; only
    /// new bins make it reallocate, so a sketch that accumulates many others
    /// (a query merging a bucket after another) rarely copies itself.
    pub fn merge(&mut self, other: &Self) {
        self.zeros += other.zeros;
        let mut new = Vec::new();
        let mut i = 0;
        for &(key, count) in &other.bins {
            while self.bins.get(i).is_some_and(|(k, _)| *k < key) {
                i += 1;
            }
            match self.bins.get_mut(i) {
                Some((k, c)) if *k == key => *c += count,
                _ => new.push((key, count)),
            }
        }
        if !new.is_empty() {
            self.bins = merge_sorted(&self.bins, &new);
        }
    }

    pub fn count(&self) -> u64 {
        self.zeros + self.bins.iter().map(|(_, c)| c).sum::<u64>()
    }

    /// The `q`-quantile (0 to 1) in microseconds: within 1% of the value at
    /// [`quantile_index`] in sorted order. `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = quantile_index(q, n);
        if rank < self.zeros {
            return Some(0.0);
        }
        let mut seen = self.zeros;
        for &(key, count) in &self.bins {
            seen += count;
            if seen > rank {
                let g = gamma();
                return Some(2.0 * g.powi(key) / (g + 1.0));
            }
        }
        None
    }

    /// (zeros, bins) for serialisation.
    pub(crate) fn parts(&self) -> (u64, &[(i32, u64)]) {
        (self.zeros, &self.bins)
    }

    /// Replaces the contents with `zeros` and `bins`, which must come sorted
    /// by key (as packed cells store them), keeping the allocation.
    pub(crate) fn refill(&mut self, zeros: u64, bins: impl Iterator<Item = (i32, u64)>) {
        self.zeros = zeros;
        self.bins.clear();
        self.bins.extend(bins);
    }

    /// Whether this is the sketch of the one value `us`.
    pub(crate) fn is_single(&self, us: u64) -> bool {
        match Self::bin(us) {
            None => self.zeros == 1 && self.bins.is_empty(),
            Some(b) => self.zeros == 0 && self.bins == [(b, 1)],
        }
    }

    /// Replaces the contents with the one value `us`, keeping the allocation.
    pub(crate) fn refill_single(&mut self, us: u64) {
        self.bins.clear();
        self.zeros = 0;
        self.insert(us);
    }

    /// Rebuilds a sketch from `parts`; `None` unless the bins are strictly sorted.
    pub(crate) fn from_parts(zeros: u64, bins: Vec<(i32, u64)>) -> Option<Self> {
        bins.windows(2)
            .all(|w| w[0].0 < w[1].0)
            .then_some(Self { zeros, bins })
    }
}

/// Many sketches added up, as a query merging hundreds of cells into one
/// group does: the bins in a dense array over the keys seen, so adding a
/// sketch costs a step per bin, however wide the sum has grown.
#[derive(Debug, Clone, Default)]
pub struct SketchSum {
    zeros: u64,
    /// The bin key of `counts[0]`.
    first: i32,
    counts: Vec<u64>,
}

impl SketchSum {
    pub fn add(&mut self, s: &LatencySketch) {
        self.zeros += s.zeros;
        let (Some(&(lo, _)), Some(&(hi, _))) = (s.bins.first(), s.bins.last()) else {
            return;
        };
        self.cover(lo, hi);
        for &(key, n) in &s.bins {
            if let Some(c) = self.counts.get_mut((key - self.first) as usize) {
                *c += n;
            }
        }
    }

    /// Grows `counts` to hold the keys `lo..=hi`.
    fn cover(&mut self, lo: i32, hi: i32) {
        if self.counts.is_empty() {
            self.first = lo;
            self.counts = vec![0; (hi - lo) as usize + 1];
            return;
        }
        if lo < self.first {
            let more = (self.first - lo) as usize;
            self.counts.splice(0..0, std::iter::repeat_n(0, more));
            self.first = lo;
        }
        let len = (hi - self.first) as usize + 1;
        if len > self.counts.len() {
            self.counts.resize(len, 0);
        }
    }

    /// The sum as one sketch, the same as merging every sketch added.
    pub fn sketch(&self) -> LatencySketch {
        LatencySketch {
            zeros: self.zeros,
            bins: (self.first..)
                .zip(&self.counts)
                .filter(|(_, n)| **n > 0)
                .map(|(k, n)| (k, *n))
                .collect(),
        }
    }
}

/// Two sorted bin lists with distinct keys, as one sorted list.
fn merge_sorted(a: &[(i32, u64)], b: &[(i32, u64)]) -> Vec<(i32, u64)> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i].0 < b[j].0 {
            out.push(a[i]);
            i += 1;
        } else {
            out.push(b[j]);
            j += 1;
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_index_is_the_nearest_rank() {
        // As DuckDB's quantile_disc answers for the values 1..=n.
        for (q, n, want) in [
            (0.99, 100, 98),
            (0.99, 137, 135),
            (0.99, 10, 9),
            (0.5, 10, 4),
            (0.5, 7, 3),
        ] {
            assert_eq!(quantile_index(q, n), want, "q={q} n={n}");
        }
        assert_eq!(quantile_index(0.0, 5), 0);
        assert_eq!(quantile_index(1.0, 5), 4);
        assert_eq!(quantile_index(0.99, 1), 0);
        assert_eq!(quantile_index(0.5, 0), 0);
    }
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn quantiles_are_within_one_percent_and_merge_is_exact(
            a in prop::collection::vec(0u64..100_000_000, 1..300),
            b in prop::collection::vec(1u64..5_000_000, 0..300),
            q in 0.0f64..=1.0,
        ) {
            let (mut sa, mut sb, mut all) = (LatencySketch::default(), LatencySketch::default(), LatencySketch::default());
            for &v in &a { sa.insert(v); all.insert(v); }
            for &v in &b { sb.insert(v); all.insert(v); }
            let mut sum = SketchSum::default();
            sum.add(&sb);
            sum.add(&sa);
            sum.add(&LatencySketch::default());
            sa.merge(&sb);
            prop_assert_eq!(&sa, &all);
            prop_assert_eq!(&sum.sketch(), &all);
            let mut sorted: Vec<u64> = a.iter().chain(&b).copied().collect();
            sorted.sort_unstable();
            let want = sorted[quantile_index(q, sorted.len() as u64) as usize] as f64;
            let got = sa.quantile(q).unwrap_or(f64::NAN);
            prop_assert!((got - want).abs() <= SKETCH_RELATIVE_ERROR * want + 1e-9, "q={} got {} want {}", q, got, want);
        }
    }
}
