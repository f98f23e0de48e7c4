//! The node's own backups: `[backup] every` takes one that often, and
//! `keep` removes the oldest past that many (with the objects only they
//! held). A backup asked for through the API waits for one under way.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use serde::Serialize;
use toplog_compaction::ObjectArchive;
use toplog_engine::ArchiveStore;

use super::{BackupSettings, list, manifest_key, object_key, read_manifest};

/// Backups kept when `keep` is not set.
const DEFAULT_KEEP: usize = 7;

/// The node's backup settings, and its one turn to take a backup.
#[derive(Debug)]
pub(crate) struct Backups {
    pub(crate) settings: BackupSettings,
    every: Option<Duration>,
    keep: usize,
    turn: tokio::sync::Mutex<()>,
}

impl Backups {
    /// Checks `[backup]`: `every` needs a `url`, `keep` is at least 1.
    pub(crate) fn new(settings: BackupSettings) -> anyhow::Result<Self> {
        let every = match &settings.every {
            None => None,
            Some(text) => Some(
                toplog_types::parse_duration(text)
                    .map_err(|e| anyhow::anyhow!("`backup.every`: {e}"))?,
            )
            .filter(|d| !d.is_zero()),
        };
        if let Some(url) = &settings.url
            && !(url.starts_with("s3://")
                || url.starts_with("file:///")
                || std::path::Path::new(url).is_absolute())
        {
            anyhow::bail!(
                "`backup.url` = `{url}`: an absolute folder, file:///... or s3://bucket/prefix (a backup inside the data directory would go with it)"
            );
        }
        if every.is_some() && settings.url.is_none() {
            anyhow::bail!("`backup.every` needs `backup.url`: where the backups go");
        }
        let keep = settings.keep.unwrap_or(DEFAULT_KEEP);
        if keep == 0 {
            anyhow::bail!("`backup.keep`: at least 1");
        }
        Ok(Self {
            settings,
            every,
            keep,
            turn: tokio::sync::Mutex::new(()),
        })
    }

    pub(crate) fn every(&self) -> Option<Duration> {
        self.every
    }

    pub(crate) fn keep(&self) -> usize {
        self.keep
    }

    /// Waits for any backup under way to end; one at a time while held.
    pub(crate) async fn turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.turn.lock().await
    }
}

/// What pruning removed.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Pruned {
    pub(crate) backups: Vec<String>,
    pub(crate) objects: usize,
}

/// Removes all but the newest `keep` backups at `store`, then every object
/// no kept backup holds. A kept manifest that cannot be read stops it
/// before any object goes: it might hold them.
pub(crate) fn prune(store: &ObjectArchive, keep: usize) -> anyhow::Result<Pruned> {
    let ids = list(store)?;
    let cut = ids.len().saturating_sub(keep);
    let (old, kept) = ids.split_at(cut);
    let mut held = BTreeSet::new();
    for id in kept {
        let m = read_manifest(store, id).map_err(|e| anyhow::anyhow!("{e}; nothing pruned"))?;
        held.extend(m.entries().map(|(_, f)| object_key(&f.sha256)));
    }
    let mut pruned = Pruned::default();
    for id in old {
        store.delete(&manifest_key(id))?;
        pruned.backups.push(id.clone());
    }
    for key in store.list("objects/")? {
        if !held.contains(&key) {
            store.delete(&key)?;
            pruned.objects += 1;
        }
    }
    Ok(pruned)
}

/// Runs `backup` every `every`, the first a period after start.
pub(crate) async fn run_every<F, Fut>(every: Duration, mut backup: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        backup().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: Option<&str>, every: Option<&str>, keep: Option<usize>) -> BackupSettings {
        BackupSettings {
            url: url.map(str::to_owned),
            every: every.map(str::to_owned),
            keep,
            ..BackupSettings::default()
        }
    }

    fn refused(s: BackupSettings) -> String {
        match Backups::new(s) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_settings_are_checked_naming_the_key() {
        assert!(refused(settings(Some("backups"), None, None)).contains("`backup.url`"));
        assert!(refused(settings(Some("./b"), Some("1h"), None)).contains("`backup.url`"));
        assert!(refused(settings(None, Some("1h"), None)).contains("needs `backup.url`"));
        assert!(refused(settings(Some("/b"), Some("often"), None)).contains("`backup.every`"));
        assert!(refused(settings(Some("/b"), Some("1h"), Some(0))).contains("`backup.keep`"));
        for url in ["/var/backups/toplog", "file:///var/b", "s3://bucket/prefix"] {
            let b = Backups::new(settings(Some(url), Some("6h"), None));
            assert!(b.as_ref().is_ok_and(|b| b.keep() == DEFAULT_KEEP), "{url}");
        }
        assert!(Backups::new(BackupSettings::default()).is_ok_and(|b| b.every().is_none()));
    }
}
