//! A DDSketch of latencies in microseconds with a guaranteed relative error of
//! at most 1%: each value falls in bin `ceil(log_gamma(v))`, and a quantile is
//! answered with the midpoint of its bin. A sketch of a few values keeps its
//! bins sparse (sorted pairs), so a cell with a handful of requests costs a
//! handful of bins; one of many counts them in an array over its key range, so
//! a busy cell adds a request with an index. Merging two sketches is exact
//! (counts add), which makes rollups mergeable at any tier.

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

/// Bins a sketch keeps in a sorted list before it counts them in an array.
/// Past this many, finding a bin in the list (a binary search, a cache miss
/// a step in a cube of thousands of cells) and inserting into it cost more
/// than indexing an array, and the array, 8 bytes a key of its range, is
/// about the size the list was (16 bytes a bin).
const SPARSE_BINS: usize = 16;

/// Most keys a dense sketch spans: every latency from 1 µs to 2^64 µs falls
/// in fewer keys (0 to about 2,200). Keys read from a file beyond that range
/// stay in a list rather than sizing an array by them.
const DENSE_SPAN: i64 = 4096;

#[derive(Debug, Clone, Default)]
pub struct LatencySketch {
    /// Values of 0 µs, which have no logarithm.
    zeros: u64,
    bins: Bins,
}

#[derive(Debug, Clone)]
enum Bins {
    /// (bin key, count), sorted by key, every count above 0: a sketch of a
    /// few values.
    Sparse(Vec<(i32, u64)>),
    /// A sketch of many values (more than [`SPARSE_BINS`] bins).
    Dense(Dense),
}

impl Default for Bins {
    fn default() -> Self {
        Bins::Sparse(Vec::new())
    }
}

/// A count per bin key over the range of keys seen, 0 where no value fell:
/// adding to a bin is an index, however many bins there are.
#[derive(Debug, Clone, Default)]
struct Dense {
    /// The bin key of `counts[0]`.
    first: i32,
    counts: Vec<u64>,
}

impl Dense {
    /// The bins of `sparse` in an array; `None` if their keys span more than
    /// [`DENSE_SPAN`].
    fn of(sparse: &[(i32, u64)]) -> Option<Self> {
        let (&(lo, _), &(hi, _)) = (sparse.first()?, sparse.last()?);
        let mut d = Dense::default();
        d.cover(lo, hi)?;
        for &(key, n) in sparse {
            d.add(key, n);
        }
        Some(d)
    }

    /// Grows the range to hold the keys `lo..=hi`; `None` (unchanged) if it
    /// would span more than [`DENSE_SPAN`] keys.
    fn cover(&mut self, lo: i32, hi: i32) -> Option<()> {
        if self.counts.is_empty() {
            if i64::from(hi) - i64::from(lo) >= DENSE_SPAN {
                return None;
            }
            self.first = lo;
            self.counts = vec![0; (hi - lo) as usize + 1];
            return Some(());
        }
        let first = self.first.min(lo);
        let last = (i64::from(self.first) + self.counts.len() as i64 - 1).max(i64::from(hi));
        if last - i64::from(first) >= DENSE_SPAN {
            return None;
        }
        if first < self.first {
            let more = (self.first - first) as usize;
            self.counts.splice(0..0, std::iter::repeat_n(0, more));
            self.first = first;
        }
        self.counts
            .resize((last - i64::from(first)) as usize + 1, 0);
        Some(())
    }

    /// Adds `n` to bin `key`, which the range must cover (else nothing).
    fn add(&mut self, key: i32, n: u64) {
        let at = i64::from(key) - i64::from(self.first);
        if let Some(c) = usize::try_from(at)
            .ok()
            .and_then(|at| self.counts.get_mut(at))
        {
            *c += n;
        }
    }

    /// (key, count) of every bin with a count, by key.
    fn iter(&self) -> impl Iterator<Item = (i32, u64)> + '_ {
        // Offsets, not a range of keys from `first`: that range would step
        // past i32::MAX after a last key there. Every key held fits an i32.
        let first = i64::from(self.first);
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(move |(i, n)| ((first + i as i64) as i32, *n))
    }
}

impl PartialEq for LatencySketch {
    /// Sketches of the same values are equal however their bins are kept.
    fn eq(&self, other: &Self) -> bool {
        self.zeros == other.zeros && self.bins().eq(other.bins())
    }
}

impl Eq for LatencySketch {}

impl LatencySketch {
    /// The bin of a value, `None` for 0 µs. Computed once per request and
    /// handed to every sketch it goes into ([`LatencySketch::insert_bin`]).
    pub fn bin(us: u64) -> Option<i32> {
        (us > 0).then(|| ((us as f64).ln() / gamma().ln()).ceil() as i32)
    }

    pub fn insert(&mut self, us: u64) {
        self.insert_bin(Self::bin(us));
    }

    /// Bytes its bins hold on the heap.
    pub fn heap_bytes(&self) -> usize {
        match &self.bins {
            Bins::Sparse(bins) => bins.capacity() * std::mem::size_of::<(i32, u64)>(),
            Bins::Dense(d) => d.counts.capacity() * std::mem::size_of::<u64>(),
        }
    }

    /// Inserts a value by its [`LatencySketch::bin`].
    pub fn insert_bin(&mut self, bin: Option<i32>) {
        match bin {
            Some(key) => self.add(key, 1),
            None => self.zeros += 1,
        }
    }

    /// Adds `n` values to bin `key`.
    fn add(&mut self, key: i32, n: u64) {
        match &mut self.bins {
            Bins::Dense(d) => {
                if d.cover(key, key).is_some() {
                    d.add(key, n);
                    return;
                }
                // Only keys from a file can be this far apart: back to a list.
                self.bins = Bins::Sparse(d.iter().collect());
                self.add(key, n);
            }
            Bins::Sparse(bins) => {
                match bins.binary_search_by_key(&key, |(k, _)| *k) {
                    Ok(i) => bins[i].1 += n,
                    Err(i) => bins.insert(i, (key, n)),
                }
                self.densify(SPARSE_BINS);
            }
        }
    }

    /// Moves a list of more than `past` bins to an array, if their keys allow
    /// it. Done after an insert with [`SPARSE_BINS`]: a list read from a
    /// packed cell stays one until added to.
    fn densify(&mut self, past: usize) {
        if let Bins::Sparse(bins) = &self.bins
            && bins.len() > past
            && let Some(d) = Dense::of(bins)
        {
            self.bins = Bins::Dense(d);
        }
    }

    /// Adds `other`'s counts. Two lists merge in place where `self` already
    /// has the bins, so a sketch that accumulates many others (a query
    /// merging a bucket after another) rarely copies itself.
    pub fn merge(&mut self, other: &Self) {
        self.zeros += other.zeros;
        let (Bins::Sparse(mine), Bins::Sparse(theirs)) = (&mut self.bins, &other.bins) else {
            if other.bins.len() > SPARSE_BINS {
                self.densify(0);
            }
            for (key, n) in other.bins() {
                self.add(key, n);
            }
            return;
        };
        let mut new = Vec::new();
        let mut i = 0;
        for &(key, count) in theirs {
            while mine.get(i).is_some_and(|(k, _)| *k < key) {
                i += 1;
            }
            match mine.get_mut(i) {
                Some((k, c)) if *k == key => *c += count,
                _ => new.push((key, count)),
            }
        }
        if !new.is_empty() {
            *mine = merge_sorted(mine, &new);
            self.densify(SPARSE_BINS);
        }
    }

    pub fn count(&self) -> u64 {
        self.zeros + self.bins().map(|(_, c)| c).sum::<u64>()
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
        for (key, count) in self.bins() {
            seen += count;
            if seen > rank {
                let g = gamma();
                return Some(2.0 * g.powi(key) / (g + 1.0));
            }
        }
        None
    }

    /// Values of 0 µs.
    pub(crate) fn zeros(&self) -> u64 {
        self.zeros
    }

    /// (bin key, count) of every bin with a count, by key.
    pub(crate) fn bins(&self) -> impl Iterator<Item = (i32, u64)> + '_ {
        let (sparse, dense): (&[(i32, u64)], _) = match &self.bins {
            Bins::Sparse(bins) => (bins, None),
            Bins::Dense(d) => (&[], Some(d)),
        };
        sparse
            .iter()
            .copied()
            .chain(dense.into_iter().flat_map(Dense::iter))
    }

    /// Bins with a count.
    pub(crate) fn bin_count(&self) -> usize {
        match &self.bins {
            Bins::Sparse(bins) => bins.len(),
            Bins::Dense(d) => d.counts.iter().filter(|n| **n > 0).count(),
        }
    }

    /// The lowest and highest bin keys with a count.
    fn key_range(&self) -> Option<(i32, i32)> {
        match &self.bins {
            Bins::Sparse(bins) => Some((bins.first()?.0, bins.last()?.0)),
            Bins::Dense(d) => {
                let mut keys = d.iter().map(|(k, _)| k);
                let lo = keys.next()?;
                Some((lo, keys.last().unwrap_or(lo)))
            }
        }
    }

    /// Replaces the contents with `zeros` and `bins`, which must come sorted
    /// by key with counts above 0 (as packed cells store them), keeping the
    /// allocation of a list. The bins stay a list, however many: a cell read
    /// from a packed cube is mostly read, not added to, and an array is made
    /// by the first value added ([`LatencySketch::insert_bin`]).
    pub(crate) fn refill(&mut self, zeros: u64, bins: impl Iterator<Item = (i32, u64)>) {
        self.zeros = zeros;
        match &mut self.bins {
            Bins::Sparse(list) => {
                list.clear();
                list.extend(bins);
            }
            Bins::Dense(_) => self.bins = Bins::Sparse(bins.collect()),
        }
    }

    /// Whether this is the sketch of the one value `us`.
    pub(crate) fn is_single(&self, us: u64) -> bool {
        let mut bins = self.bins();
        match Self::bin(us) {
            None => self.zeros == 1 && bins.next().is_none(),
            Some(b) => self.zeros == 0 && bins.next() == Some((b, 1)) && bins.next().is_none(),
        }
    }

    /// Replaces the contents with the one value `us`, keeping the allocation.
    pub(crate) fn refill_single(&mut self, us: u64) {
        self.refill(0, std::iter::empty());
        self.insert(us);
    }

    /// Rebuilds a sketch from `parts`; `None` unless the bins are strictly
    /// sorted. Bins with no count are dropped.
    pub(crate) fn from_parts(zeros: u64, mut bins: Vec<(i32, u64)>) -> Option<Self> {
        if !bins.windows(2).all(|w| w[0].0 < w[1].0) {
            return None;
        }
        bins.retain(|(_, n)| *n > 0);
        Some(Self {
            zeros,
            bins: Bins::Sparse(bins),
        })
    }
}

impl Bins {
    /// At least the number of bins with a count (exact for a list).
    fn len(&self) -> usize {
        match self {
            Bins::Sparse(bins) => bins.len(),
            Bins::Dense(d) => d.counts.len(),
        }
    }
}

/// Many sketches added up, as a query merging hundreds of cells into one
/// group does: the bins in a dense array over the keys seen, so adding a
/// sketch costs a step per bin, however wide the sum has grown.
#[derive(Debug, Clone, Default)]
pub struct SketchSum {
    zeros: u64,
    /// Bins whose keys are too far apart for an array (only from a damaged
    /// file) are kept as a sketch instead.
    dense: Dense,
    far: LatencySketch,
}

impl SketchSum {
    pub fn add(&mut self, s: &LatencySketch) {
        let Some((lo, hi)) = s.key_range() else {
            self.zeros += s.zeros;
            return;
        };
        if self.dense.cover(lo, hi).is_none() {
            self.far.merge(s);
            return;
        }
        self.zeros += s.zeros;
        for (key, n) in s.bins() {
            self.dense.add(key, n);
        }
    }

    /// The sum as one sketch, the same as merging every sketch added.
    pub fn sketch(&self) -> LatencySketch {
        let mut s = LatencySketch::default();
        s.refill(self.zeros, self.dense.iter());
        s.merge(&self.far);
        s
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
    #![allow(clippy::unwrap_used)]
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

    /// Keys as far apart as a damaged file could hold them stay in a list,
    /// and every operation still counts them.
    #[test]
    fn far_apart_keys_are_counted_in_a_list() {
        let mut bins: Vec<(i32, u64)> = (0..40).map(|k| (k * 100, 1)).collect();
        bins.insert(0, (i32::MIN, 2));
        bins.push((i32::MAX, 3));
        let far = LatencySketch::from_parts(1, bins.clone()).unwrap();
        assert_eq!(far.bins().collect::<Vec<_>>(), bins);
        assert_eq!(far.count(), 1 + 40 + 2 + 3);

        // Into a dense sketch: it goes back to a list.
        let mut dense = LatencySketch::default();
        (1..=200u64).for_each(|v| dense.insert(v * 1000));
        assert!(matches!(dense.bins, Bins::Dense(_)));
        let mut merged = dense.clone();
        merged.merge(&far);
        assert_eq!(merged.count(), dense.count() + far.count());
        assert_eq!(merged.bins().next(), Some((i32::MIN, 2)));

        let mut sum = SketchSum::default();
        sum.add(&dense);
        sum.add(&far);
        assert_eq!(sum.sketch(), merged);
        assert_eq!(LatencySketch::from_parts(0, vec![(2, 1), (1, 1)]), None);

        // Keys at the very top of the range, close enough for an array.
        let top: Vec<(i32, u64)> = (i32::MAX - 20..=i32::MAX).map(|k| (k, 2)).collect();
        let mut s = LatencySketch::from_parts(0, top.clone()).unwrap();
        s.insert_bin(Some(i32::MAX));
        assert!(matches!(s.bins, Bins::Dense(_)));
        let mut want = top;
        want[20].1 += 1;
        assert_eq!(s.bins().collect::<Vec<_>>(), want);
        let mut sum = SketchSum::default();
        sum.add(&s);
        assert_eq!(sum.sketch(), s);
    }

    #[test]
    fn a_sketch_of_many_values_counts_them_in_an_array() {
        let mut s = LatencySketch::default();
        let values: Vec<u64> = (1..=1000u64).map(|v| v * 997 % 50_000 + 1).collect();
        for (i, &v) in values.iter().enumerate() {
            s.insert(v);
            if i == 0 {
                assert!(matches!(s.bins, Bins::Sparse(_)));
            }
        }
        assert!(matches!(s.bins, Bins::Dense(_)));
        let list = LatencySketch::from_parts(0, s.bins().collect()).unwrap();
        assert_eq!(list, s);
        assert_eq!(s.count(), 1000);
        assert_eq!(s.bin_count(), s.bins().count());
        let mut sorted = values.clone();
        sorted.sort_unstable();
        for q in [0.0, 0.5, 0.99, 1.0] {
            let want = sorted[quantile_index(q, 1000) as usize] as f64;
            let got = s.quantile(q).unwrap();
            assert!((got - want).abs() <= SKETCH_RELATIVE_ERROR * want, "q={q}");
        }
        // Refilled with a single value, it is that value's sketch again.
        s.refill_single(42);
        assert!(s.is_single(42));
        assert_eq!(s.count(), 1);
    }

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
