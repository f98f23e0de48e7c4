//! The threshold algorithm (Fagin's) for the most frequent keys: walks the
//! cubes' heaviest lists until no key not met yet can reach the k-th best,
//! then merges the winners' cells alone.

use std::collections::HashSet;

use toplog_engine::{Cube, Dimension, Engine, HEAVIEST_LISTED, RawCells, most_first};

use super::merge::{CubeRead, Merged, cube_read, merge_keys, note_sources, split_plan};
use super::{Order, TopK};
use crate::{Metric, Result};

/// The `k` keys with the most requests, found without merging every cell:
/// Fagin's threshold algorithm over each cube's [`Cube::heaviest`] list. Going
/// down the lists a level at a time, every key met is counted in full (a
/// lookup per cube); a key not met yet has at most the sum of the counts at
/// the current level, so once the k-th best count exceeds that sum the answer
/// is final. Zipf-like traffic ends within a few levels instead of merging
/// every key of every bucket. The cells of the winners are then merged as
/// [`merged_cells`](super::merged_cells) would merge them, so answers are identical.
///
/// `None` when it does not apply (another metric or order, a filter, a
/// `min_count`, a large k) or the lists ran out before the answer was final.
pub(super) fn heaviest_first(
    engine: &Engine,
    q: &TopK,
    dim: Dimension,
    note: &mut impl FnMut(&'static str),
) -> Result<Option<Merged>> {
    let applies = q.metric == Metric::Frequency
        && q.order == Order::Desc
        && q.min_count <= 1
        && q.k <= HEAVIEST_LISTED / 2
        && cube_read(dim, &q.filters) == Some(CubeRead::Direct { key: None });
    if !applies {
        return Ok(None);
    }
    let (pieces, raw) = split_plan(engine, &engine.cutoffs(), q.range, dim, &q.filters, false)?;
    let merged = engine
        .with_rollups(&pieces, dim, |cubes| {
            let winners = threshold_top(dim, cubes, &raw, q.k)?;
            Some(merge_keys(dim, cubes, &raw, &winners, false))
        })?
        .transpose()?;
    if merged.is_some() {
        note_sources(&pieces, &raw, note);
    }
    Ok(merged)
}

/// The keys of the `k` largest total counts over `cubes` and `raw` (ties by
/// key ascending), or `None` if the cubes' heaviest lists end too soon to tell.
///
/// The lists are read one entry at a time, always from the list whose next
/// count is largest: that lowers the threshold (the sum of every list's next
/// count) the most per key met. Small buckets (a partial hour's minutes) hold
/// a few requests per key, so they are rarely read past their first entries
/// and do not bring in keys that could never win, each of which would cost a
/// lookup in every cube.
fn threshold_top(
    dim: Dimension,
    cubes: &[&Cube],
    raw: &[RawCells],
    k: usize,
) -> Option<Vec<String>> {
    /// A ranked list: (count, key), most first; `complete` if it holds every
    /// key of its source; `read` entries of it met so far. Only
    /// `ranked[..sorted]` is in order (and holds the largest entries): a raw
    /// part's thousands of keys are put in order a chunk at a time, as reading
    /// reaches them, and reading rarely goes past the first.
    struct List<'a> {
        ranked: Vec<(u64, &'a str)>,
        complete: bool,
        read: usize,
        sorted: usize,
    }
    impl List<'_> {
        /// Orders the next chunk of entries if reading has reached the end of
        /// those in order. Chunks double, so reading a whole list costs about
        /// one sort of it.
        fn settle(&mut self) {
            if self.read < self.sorted || self.sorted == self.ranked.len() {
                return;
            }
            let rest = &mut self.ranked[self.sorted..];
            let n = rest.len().min(self.sorted.max(64));
            if n < rest.len() {
                rest.select_nth_unstable_by(n - 1, most_first);
            }
            rest[..n].sort_unstable_by(most_first);
            self.sorted += n;
        }
        /// The most requests a key not met in this list yet can have in it: the
        /// next count down (an incomplete list's last count bounds the keys it
        /// leaves out).
        fn bound(&self) -> u64 {
            match self.ranked.get(self.read) {
                Some(&(n, _)) => n,
                None if self.complete => 0,
                None => self.ranked.last().map_or(0, |&(n, _)| n),
            }
        }
    }
    let mut lists: Vec<List<'_>> = cubes
        .iter()
        .map(|c| {
            let heaviest = c.heaviest();
            List {
                ranked: heaviest.to_vec(),
                complete: heaviest.len() == c.len(),
                read: 0,
                sorted: heaviest.len(),
            }
        })
        .collect();
    for part in raw {
        let mut list = List {
            ranked: part.iter().map(|(k, c)| (c.count, k.as_str())).collect(),
            complete: true,
            read: 0,
            sorted: 0,
        };
        list.settle();
        lists.push(list);
    }
    let total = |key: &str| -> u64 {
        let cubed: u64 = dim
            .key(key)
            .map_or(0, |id| cubes.iter().map(|c| c.count(id)).sum());
        cubed
            + raw
                .iter()
                .filter_map(|p| p.get(key))
                .map(|c| c.count)
                .sum::<u64>()
    };
    // Lists with entries left to read, by their next count.
    let mut next: std::collections::BinaryHeap<(u64, usize)> = lists
        .iter()
        .enumerate()
        .filter(|(_, l)| !l.ranked.is_empty())
        .map(|(i, l)| (l.bound(), i))
        .collect();
    let mut threshold: u64 = lists.iter().map(List::bound).sum();
    let mut seen: HashSet<&str, foldhash::fast::RandomState> = HashSet::default();
    // The best k met so far, most first.
    let mut best: Vec<(u64, &str)> = Vec::with_capacity(k + 1);
    loop {
        let kth = (best.len() == k).then(|| best.last()).flatten();
        if threshold == 0 || kth.is_some_and(|b| b.0 > threshold) {
            // No key not met yet can reach the k-th best (or every key with
            // a request has been met).
            return Some(best.iter().map(|(_, key)| (*key).to_owned()).collect());
        }
        // Every list is read to its end: complete ones have shown every key
        // (then the threshold is 0), incomplete ones leave the answer open.
        let (_, i) = next.pop()?;
        let list = &mut lists[i];
        let (_, key) = list.ranked[list.read];
        let before = list.bound();
        list.read += 1;
        list.settle();
        let after = list.bound();
        threshold = threshold - before + after;
        if list.read < list.ranked.len() {
            next.push((after, i));
        }
        if seen.insert(key) {
            let met = (total(key), key);
            let at = best.partition_point(|b| most_first(b, &met).is_lt());
            if at < k {
                best.insert(at, met);
                best.truncate(k);
            }
        }
    }
}
