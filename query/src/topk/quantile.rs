//! Quantile top-K with a `min_count`: counts first, then sketches merged only
//! for the keys that can reach `min_count`.

use std::collections::HashMap;

use toplog_engine::{Dimension, Engine, Key, budget};

use super::TopK;
use super::merge::{CubeRead, Merged, cube_read_for, merge_keys, note_sources, split_plan};
use crate::Result;

/// A quantile top-K with a `min_count`, read from whole cubes: a first pass
/// merges counts only, then the keys that can reach `min_count` (with what
/// they may have missed) are looked up in each bucket and only their sketches
/// merged. Sketch merges are most of a quantile query's cost, and most keys of
/// a skewed range miss `min_count`. `None` when it does not apply.
pub(super) fn quantile_with_min_count(
    engine: &Engine,
    q: &TopK,
    dim: Dimension,
    note: &mut impl FnMut(&'static str),
) -> Result<Option<Merged>> {
    if q.metric.quantile().is_none()
        || q.min_count <= 1
        || cube_read_for(dim, &q.filters, q.metric) != Some(CubeRead::Direct { key: None })
    {
        return Ok(None);
    }
    let (pieces, raw) = split_plan(engine, &engine.cutoffs(), q.range, dim, &q.filters, true)?;
    let merged = engine.with_rollups(&pieces, dim, |cubes| {
        // Per key: its requests and what its cells may have missed, and the
        // floors of the over-budget buckets it has a cell in (what
        // [`Merged::missed`] adds up, without merging whole cells).
        let mut counts: HashMap<Key, (u64, u64), foldhash::fast::RandomState> = HashMap::default();
        // The keys each cube adds are charged to the read's memory.
        const ENTRY_BYTES: usize = std::mem::size_of::<(Key, (u64, u64))>() + 8;
        let mut floor = 0;
        for cube in cubes {
            budget::check_time()?;
            let f = cube.floor();
            floor += f;
            let before = counts.len();
            cube.counts_by_key(|k, c| {
                let (n, seen) = counts.entry(k).or_default();
                (*n, *seen) = (*n + c.count + c.missed, *seen + f);
            });
            budget::hold((counts.len() - before) * ENTRY_BYTES)?;
        }
        for part in &raw {
            for (k, cell) in part {
                counts.entry(dim.intern(k)).or_default().0 += cell.count + cell.missed;
            }
        }
        let reaching: Vec<String> = counts
            .iter()
            .filter(|(_, (n, seen))| n + (floor - (*seen).min(floor)) >= q.min_count)
            .map(|(k, _)| k.name().to_owned())
            .collect();
        merge_keys(dim, cubes, &raw, &reaching, true)
    })??;
    note_sources(&pieces, &raw, note);
    Ok(Some(merged))
}
