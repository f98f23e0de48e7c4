//! Rollup days past the hot window. Minute buckets before yesterday and hour
//! buckets before the last seven days are not held in memory: their day's
//! tier file is the one copy, read through a small least-recently-used cache
//! when a query reaches back that far. Day buckets stay in memory for their
//! whole retention (one bucket a day). A flush adds the cells of such a day
//! straight to its tier file; maintenance moves days out of memory as the
//! clock passes them. So memory holds the recent buckets, whatever the
//! retention, and a year of hour buckets costs disk, not memory.

use std::collections::BTreeMap;
use std::sync::Arc;

use toplog_types::Micros;

use super::{DAY_US, Inner, ROLLUP_DIR, State, lock};
use crate::error::{EngineError, Result, io_err, sealed_err};
use crate::manifest::{self, Manifest, RollupTierFile};
use crate::rollup::{self, Granularity, Rollups};

/// Per granularity (by [`Granularity::index`]: minute, hour, day), the whole
/// UTC days before today whose buckets stay in memory; `None`: all of them.
/// Yesterday's minutes serve the last 24 hours at minute resolution, the last
/// week's hours a 7-day range's partial days.
const HOT_DAYS: [Option<i64>; 3] = [Some(1), Some(7), None];

/// Bytes of decoded cold tier files kept for repeated reads.
const COLD_CACHE_BYTES: usize = 64 << 20;

/// The tier files the manifest lists, by granularity and day.
pub(super) type TierIndex = BTreeMap<(Granularity, Micros), RollupTierFile>;

pub(super) fn tier_index(m: &Manifest) -> Arc<TierIndex> {
    Arc::new(
        m.rollup_tiers
            .iter()
            .filter_map(|t| Some(((Granularity::from_name(&t.granularity)?, t.day), t.clone())))
            .collect(),
    )
}

/// The first day whose buckets of `g` are held in memory at `now`.
pub(super) fn hot_from(g: Granularity, now: Micros) -> Micros {
    match HOT_DAYS[g.index()] {
        Some(days) => now
            .floor_to(DAY_US)
            .saturating_sub_micros(days.saturating_mul(DAY_US)),
        None => Micros::new(i64::MIN),
    }
}

/// [`hot_from`] of every granularity.
pub(super) fn hot_days_from(now: Micros) -> [Micros; 3] {
    [Granularity::Minute, Granularity::Hour, Granularity::Day].map(|g| hot_from(g, now))
}

/// Decoded cold tier files, least recently used first, with their sizes.
#[derive(Debug, Default)]
pub(super) struct ColdCache {
    entries: Vec<(String, Arc<Rollups>, usize)>,
    bytes: usize,
}

impl ColdCache {
    fn get(&mut self, file: &str) -> Option<Arc<Rollups>> {
        let at = self.entries.iter().position(|(f, _, _)| f == file)?;
        let hit = self.entries.remove(at);
        let cells = hit.1.clone();
        self.entries.push(hit);
        Some(cells)
    }

    fn put(&mut self, file: String, cells: Arc<Rollups>) {
        self.forget(&file);
        let size = cells.heap_bytes();
        self.bytes += size;
        self.entries.push((file, cells, size));
        while self.bytes > COLD_CACHE_BYTES && self.entries.len() > 1 {
            let (_, _, size) = self.entries.remove(0);
            self.bytes -= size;
        }
    }

    pub(super) fn forget(&mut self, file: &str) {
        if let Some(at) = self.entries.iter().position(|(f, _, _)| f == file) {
            let (_, _, size) = self.entries.remove(at);
            self.bytes -= size;
        }
    }

    pub(super) fn clear(&mut self) {
        *self = Self::default();
    }
}

impl State {
    /// The tier files of the days of `g` in `[from, to)` that only their file
    /// holds (none of their buckets are in memory).
    pub(super) fn cold_files(&self, g: Granularity, from: Micros, to: Micros) -> Vec<String> {
        let first = from.floor_to(DAY_US);
        let end = to.min(self.resident_from[g.index()]);
        if first >= end {
            return Vec::new();
        }
        self.tiers
            .range((g, first)..(g, end))
            .map(|(_, t)| t.file.clone())
            .collect()
    }
}

impl Inner {
    /// The cells of the tier file `file`, from the cache or read and decoded.
    pub(super) fn cold_tier(&self, file: &str) -> Result<Arc<Rollups>> {
        if let Some(hit) = lock(&self.cold).get(file) {
            return Ok(hit);
        }
        let path = self.dir(ROLLUP_DIR).join(file);
        let (cipher, budget) = (&self.config.cipher, self.config.rollup_key_budget);
        let cells = Arc::new(read_rollup_file(&self.fs, &path, cipher, budget)?);
        lock(&self.cold).put(file.to_owned(), cells.clone());
        Ok(cells)
    }

    /// Writes `part`, the buckets of `g` on `day`, as a tier file of
    /// `generation`, durably (the directory's fsync is the caller's).
    pub(super) fn write_tier(
        &self,
        g: Granularity,
        day: Micros,
        generation: u64,
        part: &Rollups,
    ) -> Result<RollupTierFile> {
        let file = format!("{}-{}-g{generation}.cube", g.name(), day.utc_date());
        let path = self.dir(ROLLUP_DIR).join(&file);
        let image = part
            .to_file(rollup::TIER_FILE_LEVEL)
            .map_err(io_err("encoding rollups for", &path))?;
        manifest::write_durable(&self.fs, &path, &self.config.cipher.seal(image))?;
        let (buckets, oldest) = part.extent(g);
        Ok(RollupTierFile {
            file,
            granularity: g.name().to_owned(),
            day,
            buckets,
            oldest,
        })
    }

    /// Adds `cold`, cells of days that only tier files hold, to those files:
    /// each day's file is read, merged with its cells (as memory would have
    /// merged them) and written anew under the next generation, in `next`.
    /// Returns the files replaced, to remove once `next` is stored.
    pub(super) fn fold_cold(&self, next: &mut Manifest, cold: &Rollups) -> Result<Vec<String>> {
        if cold.is_empty() {
            return Ok(Vec::new());
        }
        next.rollup_generation += 1;
        let mut replaced = Vec::new();
        for (g, day) in super::write::dirty_days(cold) {
            let at = next
                .rollup_tiers
                .iter()
                .position(|t| t.granularity == g.name() && t.day == day);
            let mut cells = match at {
                Some(i) => Rollups::clone(&*self.cold_tier(&next.rollup_tiers[i].file)?),
                None => Rollups::new(self.config.rollup_key_budget),
            };
            cells.merge(&cold.slice(g, day, day.saturating_add_micros(DAY_US)));
            // Not cached: a query may never come back this far, and a
            // backfill writes day after day (cached, they took 64 MiB).
            let tier = self.write_tier(g, day, next.rollup_generation, &cells)?;
            match at {
                Some(i) => replaced.push(std::mem::replace(&mut next.rollup_tiers[i], tier).file),
                None => next.rollup_tiers.push(tier),
            }
        }
        Ok(replaced)
    }
}

/// Reads and decodes the rollup file (tier or flush) at `path`.
pub(super) fn read_rollup_file(
    fs: &Arc<dyn toplog_wal::Fs>,
    path: &std::path::Path,
    cipher: &toplog_crypt::Cipher,
    budget: usize,
) -> Result<Rollups> {
    let sealed = fs.read(path).map_err(io_err("read", path))?;
    let buf = cipher.open(&sealed).map_err(sealed_err(path))?;
    Rollups::from_file(&buf, budget).map_err(|e| EngineError::Corrupt {
        path: path.to_path_buf(),
        reason: e.0,
    })
}
