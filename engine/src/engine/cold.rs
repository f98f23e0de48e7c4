//! Rollup days past the hot window. Minute buckets before yesterday and hour
//! buckets before the last seven days are not held in memory: their day's
//! tier file is the one copy, read a block (an hour) at a time through a
//! small least-recently-used cache when a query reaches back that far. Day buckets stay in memory for their
//! whole retention (one bucket a day). A flush adds the cells of such a day
//! straight to its tier file; maintenance moves days out of memory as the
//! clock passes them. So memory holds the recent buckets, whatever the
//! retention, and a year of hour buckets costs disk, not memory.

use std::collections::BTreeMap;
use std::sync::Arc;

use toplog_types::Micros;

use super::{DAY_US, Inner, ROLLUP_DIR, State, lock};
use crate::budget;
use crate::error::{Result, codec_err, io_err, sealed_err};
use crate::manifest::{self, Manifest, RollupTierFile};
use crate::rollup::{self, BlockIndex, Granularity, Rollups};

/// Per granularity (by [`Granularity::index`]: minute, hour, day), the whole
/// UTC days before today whose buckets stay in memory; `None`: all of them.
/// Yesterday's minutes serve the last 24 hours at minute resolution, the last
/// week's hours a 7-day range's partial days.
const HOT_DAYS: [Option<i64>; 3] = [Some(1), Some(7), None];

/// Bytes of decoded blocks (and file indexes) kept for repeated reads.
pub(super) const COLD_CACHE_BYTES: usize = 64 << 20;

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

/// What the cold cache holds of a tier file: its index, or a block of its
/// buckets read.
#[derive(Debug, Clone)]
pub(super) enum Cached {
    File(Arc<TierFile>),
    Block(Arc<Rollups>),
}

impl Cached {
    fn heap_bytes(&self) -> usize {
        match self {
            Cached::File(f) => match &**f {
                TierFile::Blocks(index) => index.heap_bytes(),
                TierFile::Whole(cells) => cells.heap_bytes(),
            },
            Cached::Block(cells) => cells.heap_bytes(),
        }
    }
}

/// A tier file opened for reading a block at a time.
#[derive(Debug)]
pub(super) enum TierFile {
    Blocks(BlockIndex),
    /// A file of an earlier version (one frame): all its cells.
    Whole(Arc<Rollups>),
}

/// The cache's key of block `start` of `g` in `file`.
fn block_key(file: &str, g: Granularity, start: i64) -> String {
    format!("{file}#{}:{start}", g.name())
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
    /// The blocks of the tier file `file` that may hold buckets of `g`
    /// starting in `[from, to)` (of a file of an earlier version: all its
    /// cells), from the cache or read and decoded.
    pub(super) fn cold_blocks(
        &self,
        file: &str,
        g: Granularity,
        from: Micros,
        to: Micros,
    ) -> Result<Vec<Arc<Rollups>>> {
        let path = self.dir(ROLLUP_DIR).join(file);
        let corrupt = codec_err(&path);
        let budget = self.config.rollup_key_budget;
        let cached = lock(&self.cold).get(file);
        let (opened, mut bytes) = match cached {
            Some(Cached::File(f)) => (f, None),
            _ => {
                let bytes = self.read_sealed(&path)?;
                let checked = rollup::check_file(&bytes).map_err(&corrupt)?;
                let opened = Arc::new(match BlockIndex::of(&checked).map_err(&corrupt)? {
                    Some(index) => TierFile::Blocks(index),
                    None => TierFile::Whole(Arc::new(
                        Rollups::from_checked(&checked, budget).map_err(&corrupt)?,
                    )),
                });
                let entry = Cached::File(opened.clone());
                let size = entry.heap_bytes();
                lock(&self.cold).put(file.to_owned(), entry, size);
                (opened, Some(bytes))
            }
        };
        let index = match &*opened {
            TierFile::Whole(cells) => return Ok(vec![cells.clone()]),
            TierFile::Blocks(index) => index,
        };
        let mut out = Vec::new();
        let mut missed = Vec::new();
        for start in index.reaching(g, from.get(), to.get()) {
            match lock(&self.cold).get(&block_key(file, g, start)) {
                Some(Cached::Block(cells)) => out.push(cells),
                _ => missed.push(start),
            }
        }
        if missed.is_empty() {
            return Ok(out);
        }
        // The file read (and checked) once for every block missed.
        let bytes = match bytes.take() {
            Some(b) => b,
            None => self.read_sealed(&path)?,
        };
        let checked = rollup::check_file(&bytes).map_err(&corrupt)?;
        for start in missed {
            budget::check_time()?;
            let cells = Arc::new(index.read(&checked, g, start, budget).map_err(&corrupt)?);
            let size = cells.heap_bytes();
            lock(&self.cold).put(
                block_key(file, g, start),
                Cached::Block(cells.clone()),
                size,
            );
            out.push(cells);
        }
        Ok(out)
    }

    /// Drops what the cold cache holds of `file` (replaced or removed).
    pub(super) fn forget_tier(&self, file: &str) {
        let blocks = format!("{file}#");
        lock(&self.cold).retain(|k, _| k != file && !k.starts_with(&blocks));
    }

    /// Every cell of the tier file `file`, read and decoded (not cached).
    pub(super) fn tier_cells(&self, file: &str) -> Result<Rollups> {
        let (cipher, budget) = (&self.config.cipher, self.config.rollup_key_budget);
        read_rollup_file(&self.fs, &self.dir(ROLLUP_DIR).join(file), cipher, budget)
    }

    fn read_sealed(&self, path: &std::path::Path) -> Result<Vec<u8>> {
        read_sealed(&self.fs, path, &self.config.cipher)
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
            buckets: buckets as u64,
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
                Some(i) => self.tier_cells(&next.rollup_tiers[i].file)?,
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
    let buf = read_sealed(fs, path, cipher)?;
    Rollups::from_file(&buf, budget).map_err(codec_err(path))
}

/// The file at `path`, read and opened with the store's cipher.
fn read_sealed(
    fs: &Arc<dyn toplog_wal::Fs>,
    path: &std::path::Path,
    cipher: &toplog_crypt::Cipher,
) -> Result<Vec<u8>> {
    let sealed = fs.read(path).map_err(io_err("read", path))?;
    // Not encrypted: the file as read, not a copy.
    let opened = match cipher.open(&sealed).map_err(sealed_err(path))? {
        std::borrow::Cow::Owned(plain) => Some(plain),
        std::borrow::Cow::Borrowed(_) => None,
    };
    Ok(opened.unwrap_or(sealed))
}

/// Checks the tier files of the days start-up leaves on disk (before
/// `resident_from`): each is there and sealed under a key the store has, one
/// file per key opened whole (as segments are checked); with `whole` (a
/// snapshot just received), every one is opened and its checksum checked.
/// What start-up would have found reading them all, it finds now, not at the
/// first query or flush that reaches them.
pub(super) fn check_cold_files(
    fs: &Arc<dyn toplog_wal::Fs>,
    dir: &std::path::Path,
    tiers: &TierIndex,
    resident_from: &[Micros; 3],
    cipher: &toplog_crypt::Cipher,
    whole: bool,
) -> Result<()> {
    let mut opened_under = Vec::new();
    for ((g, day), t) in tiers {
        if *day >= resident_from[g.index()] {
            continue;
        }
        let path = dir.join(&t.file);
        let used = {
            let bytes = fs.map(&path).map_err(io_err("map", &path))?;
            toplog_crypt::Cipher::key_use(&bytes).map_err(sealed_err(&path))?
        };
        if whole || !opened_under.contains(&used) {
            let buf = read_sealed(fs, &path, cipher)?;
            rollup::check_file(&buf).map_err(codec_err(&path))?;
            opened_under.push(used);
        }
    }
    Ok(())
}
