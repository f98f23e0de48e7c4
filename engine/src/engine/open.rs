//! Opening a store, and recovery after a crash: the manifest is loaded (or a
//! new store given an empty one), orphans of an interrupted flush removed,
//! segments mapped and checked, rollups and idempotency keys loaded, and the
//! log replayed past `flushed_lsn`, before the flusher thread starts.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};

use parking_lot::RwLock;

use toplog_types::Micros;
use toplog_wal::{Fs, Wal, WalOptions};

use super::write::{dirty_days, flusher_loop};
use super::{
    DAY_US, Engine, EngineConfig, FlusherSignal, Inner, KEY_DIR, ROLLUP_DIR, Retention,
    SEGMENT_DIR, Segment, State, Stored, WAL_DIR, cold,
};
use crate::error::{EngineError, Result, codec_err, io_err, sealed_err, segment_err};
use crate::idempotency;
use crate::keys::KeyId;
use crate::lru::Lru;
use crate::manifest::{self, Manifest};
use crate::rollup::{Granularity, Rollups};
use crate::segment;

impl Engine {
    /// Opens the store in `config.data_dir` (creating it if new) on the real disk.
    pub fn open(config: EngineConfig) -> Result<Self> {
        Self::open_with(Arc::new(toplog_wal::RealFs), config)
    }

    /// Opens the store through `fs`: loads the manifest, removes orphans of an
    /// interrupted flush, loads idempotency keys and replays the log past the
    /// manifest's `flushed_lsn`.
    pub fn open_with(fs: Arc<dyn Fs>, config: EngineConfig) -> Result<Self> {
        crate::keys::set_budget(config.key_memory_bytes);
        let root = config.data_dir.clone();
        for sub in [WAL_DIR, SEGMENT_DIR, KEY_DIR, ROLLUP_DIR] {
            let dir = root.join(sub);
            fs.create_dir_all(&dir)
                .map_err(io_err("create directory", &dir))?;
        }
        fs.sync_dir(&root)
            .map_err(io_err("fsync directory", &root))?;
        let manifest = match Manifest::load(&fs, &root, &config.cipher)? {
            Some(m) => m,
            None => {
                // A store without a manifest must be empty: otherwise the manifest was lost
                // and "removing orphans" would delete the data it listed.
                for sub in [SEGMENT_DIR, KEY_DIR, ROLLUP_DIR] {
                    let dir = root.join(sub);
                    if !fs.list(&dir).map_err(io_err("list", &dir))?.is_empty() {
                        return Err(EngineError::Corrupt {
                            path: root.join(manifest::FILE),
                            reason: format!(
                                "missing, but {} holds files; restore the manifest or move the data away",
                                dir.display()
                            ),
                        });
                    }
                }
                // A new store gets its (empty) manifest at once, so that later a missing
                // manifest always means a lost one, never a first flush cut short.
                let fresh = Manifest::default();
                fresh.store(&fs, &root, &config.cipher)?;
                fresh
            }
        };

        remove_unlisted(&fs, &root, &manifest)?;
        let state = load_state(&fs, &root, &manifest, &config, false)?;

        let flushed = manifest.flushed_lsn;
        let inner = Arc::new(Inner {
            fs: fs.clone(),
            config,
            state: RwLock::new(state),
            manifest: Mutex::new(manifest),
            apply_gate: Mutex::new(()),
            apply_waits: Default::default(),
            flushes: Default::default(),
            poisoned: Mutex::new(None),
            flusher: (Mutex::new(FlusherSignal::default()), Condvar::new()),
            decoded: Mutex::new(Lru::new(super::cache::DECODED_CACHE_BYTES)),
            cold: Mutex::new(Lru::new(cold::COLD_CACHE_BYTES)),
            retention: RwLock::new(Retention::default()),
            maintenance: Mutex::new(()),
        });
        if inner.config.replicated {
            refuse_unread_log(&fs, &root, flushed)?;
            tracing::info!(flushed_lsn = %flushed, "engine recovered; the replicated log delivers the rest");
            return Self::with_flusher(inner, None, &root);
        }
        let applier = inner.clone();
        let on_durable: toplog_wal::OnDurable = Box::new(move |lsn, payload, attachment| {
            let ids = attachment
                .and_then(|a| a.downcast::<Vec<[KeyId; 5]>>().ok())
                .map(|ids| *ids);
            if let Err(reason) = applier.apply(lsn, payload, ids) {
                applier.poison(reason);
            }
        });
        let wal_opts = WalOptions {
            fsync: inner.config.fsync,
            segment_bytes: inner.config.wal_segment_bytes,
        };
        let (wal, replay) = Wal::open(fs, &root.join(WAL_DIR), wal_opts, flushed, on_durable)?;
        let replayed = replay.len();
        for entry in replay {
            inner
                .apply(entry.lsn, &entry.payload, None)
                .map_err(|reason| EngineError::Corrupt {
                    path: root.join(WAL_DIR),
                    reason,
                })?;
        }
        tracing::info!(replayed, flushed_lsn = %flushed, "engine recovered");

        Self::with_flusher(inner, Some(Arc::new(wal)), &root)
    }

    fn with_flusher(
        inner: Arc<Inner>,
        wal: Option<Arc<Wal>>,
        root: &std::path::Path,
    ) -> Result<Self> {
        let handle = {
            let (inner, wal) = (inner.clone(), wal.clone());
            std::thread::Builder::new()
                .name("toplog-flush".into())
                .spawn(move || flusher_loop(&inner, wal.as_deref()))
                .map_err(io_err("spawn flusher thread", root))?
        };
        Ok(Self {
            inner,
            wal,
            flusher: Mutex::new(Some(handle)),
        })
    }
}

/// Removes the files in the store's directories that `manifest` does not
/// list: leftovers of a flush, compaction or snapshot install cut short.
pub(super) fn remove_unlisted(fs: &Arc<dyn Fs>, root: &Path, manifest: &Manifest) -> Result<()> {
    let seg_dir = root.join(SEGMENT_DIR);
    let names: Vec<&str> = manifest
        .segments
        .iter()
        .filter(|s| s.archived.is_none())
        .map(|s| s.file.as_str())
        .collect();
    for path in manifest::remove_orphans(fs, &seg_dir, &names)? {
        tracing::info!(path = %path.display(), "removed segment left by an interrupted flush");
    }
    let key_dir = root.join(KEY_DIR);
    let names: Vec<&str> = manifest.key_files.iter().map(|k| k.file.as_str()).collect();
    manifest::remove_orphans(fs, &key_dir, &names)?;
    let rollup_dir = root.join(ROLLUP_DIR);
    let names: Vec<&str> = (manifest.rollup_files.iter().map(String::as_str))
        .chain(manifest.rollup_tiers.iter().map(|t| t.file.as_str()))
        .collect();
    manifest::remove_orphans(fs, &rollup_dir, &names)?;

    Ok(())
}

/// The in-memory state of the store `manifest` describes: its segments
/// mapped and checked, its rollups and idempotency keys loaded. The tier
/// files of days left on disk are checked too, each read whole if
/// `check_whole` (a snapshot just received), else one per key.
pub(super) fn load_state(
    fs: &Arc<dyn Fs>,
    root: &Path,
    manifest: &Manifest,
    config: &EngineConfig,
    check_whole: bool,
) -> Result<State> {
    let seg_dir = root.join(SEGMENT_DIR);
    let key_dir = root.join(KEY_DIR);
    let rollup_dir = root.join(ROLLUP_DIR);
    let budget = config.rollup_key_budget;
    let mut state = State {
        applied_lsn: manifest.flushed_lsn,
        flushed_lsn: manifest.flushed_lsn,
        rollups: Arc::new(Rollups::new(budget)),
        active_rollups: Rollups::new(budget),
        ..State::default()
    };
    let mut keys_checked = Vec::new();
    for entry in &manifest.segments {
        let path = seg_dir.join(&entry.file);
        if let Some(key) = &entry.archived {
            // Its key is checked here, not at the first query that reads it.
            if let Some(id) = &entry.archive_key_id
                && config.cipher.key(id).is_none()
            {
                return Err(EngineError::Archive {
                    key: key.clone(),
                    reason: match config.cipher.keyring() {
                        Some(ring) => format!(
                            "encrypted under key `{id}`, which {} does not list",
                            ring.origin()
                        ),
                        None => format!(
                            "encrypted under key `{id}`, and no encryption key is configured"
                        ),
                    },
                });
            }
            state.segments.push(Arc::new(Segment {
                id: entry.id,
                path,
                meta: entry.meta,
                stored: Stored::Archived {
                    key: key.clone(),
                    bytes: entry.bytes,
                    key_id: entry.archive_key_id.clone(),
                },
                sealed: entry.sealed,
            }));
            continue;
        }
        let bytes = fs.map(&path).map_err(io_err("map", &path))?;
        let corrupt = |reason: String| EngineError::Corrupt {
            path: path.clone(),
            reason,
        };
        let meta = segment::read_meta(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if meta != entry.meta || bytes.len() as u64 != entry.bytes {
            return Err(corrupt("footer or size disagrees with the manifest".into()));
        }
        // A key missing or wrong stops the start here, naming the file,
        // not the first query that reads it: one block is opened per key.
        let used = segment::key_use(&bytes).map_err(|e| segment_err(&path, e))?;
        if !keys_checked.contains(&used) {
            segment::check_key(&bytes, &config.cipher).map_err(|e| segment_err(&path, e))?;
            keys_checked.push(used);
        }
        state.segments.push(Arc::new(Segment {
            id: entry.id,
            path,
            meta,
            stored: Stored::Local(bytes),
            sealed: entry.sealed,
        }));
    }
    // Rollups of flushed rows come from their files; replay adds the rest.
    // Tier files of the days held in memory first (they hold disjoint
    // buckets), then later flushes in order: the same merges, in the same
    // order, as the running node made. A flush file reaching back before the
    // hot window brings the tier files of the days between into memory first.
    let read =
        |file: &str| cold::read_rollup_file(fs, &rollup_dir.join(file), &config.cipher, budget);
    let tiers = cold::tier_index(manifest);
    let load_days = |state: &mut State, g: Granularity, from: Micros, to: Micros| {
        for (_, t) in tiers.range((g, from)..(g, to)) {
            Arc::make_mut(&mut state.rollups).merge(&read(&t.file)?);
        }
        Ok::<_, EngineError>(())
    };
    state.resident_from = cold::hot_days_from(Micros::now());
    for g in Granularity::ALL {
        let from = state.resident_from[g.index()];
        load_days(&mut state, g, from, Micros::new(i64::MAX))?;
    }
    for file in &manifest.rollup_files {
        let cells = read(file)?;
        for g in Granularity::ALL {
            let from = &mut state.resident_from[g.index()];
            if let (_, Some(first)) = cells.extent(g)
                && first.floor_to(DAY_US) < *from
            {
                let (first, to) = (first.floor_to(DAY_US), *from);
                *from = first;
                load_days(&mut state, g, first, to)?;
            }
        }
        state.dirty_tiers.extend(dirty_days(&cells));
        Arc::make_mut(&mut state.rollups).merge(&cells);
    }
    let (from, cipher) = (&state.resident_from, &config.cipher);
    cold::check_cold_files(fs, &rollup_dir, &tiers, from, cipher, check_whole)?;
    state.tiers = tiers;
    // Every listed key is loaded, however old: replay judges a key's age against the
    // replayed batch's own receive time, so the outcome cannot depend on when we restart.
    for kf in &manifest.key_files {
        let path = key_dir.join(&kf.file);
        let sealed = fs.read(&path).map_err(io_err("read", &path))?;
        let buf = config.cipher.open(&sealed).map_err(sealed_err(&path))?;
        let keys = idempotency::decode(&buf).map_err(codec_err(&path))?;
        for (k, rec) in keys {
            state.keys.load(&k, rec);
        }
    }

    Ok(state)
}

/// A replicated store takes its batches from the Raft log, never from its
/// own `wal/`: a single node's log holding batches past the flushed index
/// (a node stopped by a crash, then started as a cluster member) would be
/// lost without a word. Refused, saying how to flush it.
fn refuse_unread_log(fs: &Arc<dyn Fs>, root: &Path, flushed: toplog_types::Lsn) -> Result<()> {
    let dir = root.join(WAL_DIR);
    if fs.list(&dir).map_err(io_err("list", &dir))?.is_empty() {
        return Ok(());
    }
    let (wal, left) = Wal::open(
        fs.clone(),
        &dir,
        WalOptions::default(),
        flushed,
        Box::new(|_, _, _| {}),
    )?;
    wal.close()?;
    match left.first() {
        None => Ok(()),
        Some(first) => Err(EngineError::Corrupt {
            path: dir,
            reason: format!(
                "it holds {} batches a single node acknowledged but did not flush (from index {}): a cluster member does not read them. Start the node once without --cluster and stop it (a stop flushes them), then start it as a member",
                left.len(),
                first.lsn
            ),
        }),
    }
}
