//! The Raft state on disk, with the project's `wal` crate.
//!
//! ```text
//! <dir>/log/wal-<index>.log   the Raft log: one frame per entry, lsn = the
//!                             entry's index, term = its term (docs/format.md)
//! <dir>/STATE                 term, vote, commit index, configuration, and
//!                             where the log starts (after a compaction or
//!                             an installed snapshot)
//! ```
//!
//! The entries of one Ready go to the log as one group: one write, one
//! fsync. A new leader's entries that replace an uncommitted tail first cut
//! the log at their first index. `STATE` is replaced whole (temp file,
//! fsync, rename, directory fsync) when the term, the vote or the
//! configuration changes, which is rare; the commit index rides along then
//! (see [`Durable`] on why that is enough). A compaction writes `STATE`
//! first, then deletes the log files it covers (a crash between leaves
//! entries the next open skips); installing a snapshot notes it in `STATE`,
//! and once the state machine holds it, empties the log, then writes
//! `STATE` with the log's new start.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use raft::prelude::{ConfState, Entry, EntryType, HardState, SnapshotMetadata};
use serde::{Deserialize, Serialize};
use toplog_types::Lsn;
use toplog_wal::{Fs, Wal, WalOptions};

use crate::durable::{Durable, Persisted};
use crate::error::{ReplicationError, Result};

const STATE: &str = "STATE";
const STATE_TMP: &str = "STATE.tmp";
const STATE_VERSION: u32 = 1;

/// `STATE`, as JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    term: u64,
    vote: u64,
    commit: u64,
    #[serde(flatten)]
    conf: ConfFields,
    /// The entry whose application made the configuration above.
    #[serde(default)]
    conf_index: u64,
    /// The configuration's context (the members' addresses), as UTF-8.
    #[serde(default)]
    conf_context: String,
    /// The entry before the log's first: index and term.
    #[serde(default)]
    start_index: u64,
    #[serde(default)]
    start_term: u64,
    /// A snapshot being installed.
    #[serde(default)]
    installing: Option<InstallNote>,
}

/// A configuration, as `STATE` spells it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct ConfFields {
    voters: Vec<u64>,
    learners: Vec<u64>,
    voters_outgoing: Vec<u64>,
    learners_next: Vec<u64>,
    auto_leave: bool,
}

impl ConfFields {
    fn of(cs: &ConfState) -> Self {
        Self {
            voters: cs.voters.clone(),
            learners: cs.learners.clone(),
            voters_outgoing: cs.voters_outgoing.clone(),
            learners_next: cs.learners_next.clone(),
            auto_leave: cs.auto_leave,
        }
    }

    fn conf_state(&self) -> ConfState {
        ConfState {
            voters: self.voters.clone(),
            learners: self.learners.clone(),
            voters_outgoing: self.voters_outgoing.clone(),
            learners_next: self.learners_next.clone(),
            auto_leave: self.auto_leave,
            ..ConfState::default()
        }
    }
}

/// A snapshot's position and configuration, noted while it is installed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct InstallNote {
    index: u64,
    term: u64,
    context: String,
    conf: ConfFields,
    /// Set once the state machine holds the snapshot and the log is being
    /// emptied.
    #[serde(default)]
    emptying_log: bool,
}

impl InstallNote {
    fn of(meta: &SnapshotMetadata, context: &[u8]) -> Result<Self> {
        Ok(Self {
            index: meta.index,
            term: meta.term,
            context: utf8(context)?,
            conf: ConfFields::of(meta.get_conf_state()),
            emptying_log: false,
        })
    }

    fn meta(&self) -> SnapshotMetadata {
        let mut meta = SnapshotMetadata {
            index: self.index,
            term: self.term,
            ..SnapshotMetadata::default()
        };
        meta.set_conf_state(self.conf.conf_state());
        meta
    }
}

impl StateFile {
    fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.commit,
            ..HardState::default()
        }
    }
}

/// A node's Raft state in `<dir>`.
pub struct LogStore {
    fs: Arc<dyn Fs>,
    dir: PathBuf,
    options: WalOptions,
    wal: Wal,
    state: StateFile,
    /// Index of the last entry in the log.
    last_index: u64,
    /// What was read at open, until [`Durable::load`] takes it.
    loaded: Option<Persisted>,
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("dir", &self.dir)
            .field("last_index", &self.last_index)
            .field("state", &self.state)
            .finish()
    }
}

fn disk(what: &str, path: &Path, e: impl std::fmt::Display) -> ReplicationError {
    ReplicationError::Disk(format!("{what} {}: {e}", path.display()))
}

fn encode(entry: &Entry) -> Vec<u8> {
    let kind = match entry.get_entry_type() {
        EntryType::EntryNormal => 0u8,
        EntryType::EntryConfChange => 1,
        EntryType::EntryConfChangeV2 => 2,
    };
    let mut out = Vec::with_capacity(5 + entry.context.len() + entry.data.len());
    out.push(kind);
    out.extend_from_slice(&(entry.context.len() as u32).to_le_bytes());
    out.extend_from_slice(&entry.context);
    out.extend_from_slice(&entry.data);
    out
}

fn decode(index: u64, term: u64, payload: &[u8]) -> Option<Entry> {
    let (&kind, rest) = payload.split_first()?;
    let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let context = rest.get(4..4 + len)?;
    let data = rest.get(4 + len..)?;
    let mut entry = Entry::default();
    entry.set_entry_type(match kind {
        0 => EntryType::EntryNormal,
        1 => EntryType::EntryConfChange,
        2 => EntryType::EntryConfChangeV2,
        _ => return None,
    });
    entry.index = index;
    entry.term = term;
    entry.context = context.to_vec().into();
    entry.data = data.to_vec().into();
    Some(entry)
}

impl LogStore {
    /// Opens (creating) the Raft state in `dir` and reads it back.
    pub fn open(fs: Arc<dyn Fs>, dir: &Path, options: WalOptions) -> Result<Self> {
        fs.create_dir_all(dir).map_err(|e| disk("create", dir, e))?;
        let state_path = dir.join(STATE);
        let state = match fs.read(&state_path) {
            Ok(bytes) => {
                let state: StateFile = serde_json::from_slice(&bytes).map_err(|e| {
                    ReplicationError::Inconsistent(format!("{}: {e}", state_path.display()))
                })?;
                if state.version != STATE_VERSION {
                    return Err(ReplicationError::Inconsistent(format!(
                        "{}: version {} (this build reads {STATE_VERSION})",
                        state_path.display(),
                        state.version
                    )));
                }
                Some(state)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(disk("read", &state_path, e)),
        };
        let log_dir = dir.join("log");
        let mut start = state.as_ref().map_or(0, |s| s.start_index);
        // An install stopped while it emptied the log: finish emptying it;
        // it starts after the snapshot (the note is then finished again).
        if let Some(note) = state.as_ref().and_then(|s| s.installing.as_ref())
            && note.emptying_log
        {
            empty_dir(&fs, &log_dir)?;
            start = note.index;
        }
        let (wal, frames) = open_log(&fs, &log_dir, options, start)?;
        let mut entries = Vec::with_capacity(frames.len());
        for f in frames {
            let entry = decode(f.lsn.get(), f.term, &f.payload).ok_or_else(|| {
                ReplicationError::Inconsistent(format!(
                    "{}: entry {} does not decode",
                    log_dir.display(),
                    f.lsn
                ))
            })?;
            entries.push(entry);
        }
        let last_index = entries.last().map_or(start, |e| e.index);
        let loaded = match &state {
            None if entries.is_empty() => None,
            None => {
                return Err(ReplicationError::Inconsistent(format!(
                    "{} holds entries but {} is missing",
                    log_dir.display(),
                    state_path.display()
                )));
            }
            Some(s) => Some(Persisted {
                hard_state: {
                    let mut hs = s.hard_state();
                    // Kept lazily, it may name entries a crash cut off the
                    // tail: only what the log holds can be known committed.
                    hs.commit = hs.commit.min(last_index);
                    hs
                },
                conf_state: s.conf.conf_state(),
                conf_index: s.conf_index,
                conf_context: s.conf_context.clone().into_bytes(),
                start: (s.start_index, s.start_term),
                entries,
                installing: (s.installing.as_ref())
                    .map(|n| (n.meta(), n.context.clone().into_bytes())),
            }),
        };
        Ok(Self {
            fs,
            dir: dir.to_path_buf(),
            options,
            wal,
            state: state.unwrap_or(StateFile {
                version: STATE_VERSION,
                ..StateFile::default()
            }),
            last_index,
            loaded,
        })
    }

    fn log_dir(&self) -> PathBuf {
        self.dir.join("log")
    }

    fn store_state(&mut self) -> Result<()> {
        let bytes = serde_json::to_vec(&self.state)
            .map_err(|e| ReplicationError::Inconsistent(e.to_string()))?;
        let tmp = self.dir.join(STATE_TMP);
        let path = self.dir.join(STATE);
        if self.fs.exists(&tmp) {
            self.fs
                .remove_file(&tmp)
                .map_err(|e| disk("remove", &tmp, e))?;
        }
        let mut f = self.fs.create(&tmp).map_err(|e| disk("create", &tmp, e))?;
        f.write_all(&bytes).map_err(|e| disk("write", &tmp, e))?;
        f.sync().map_err(|e| disk("fsync", &tmp, e))?;
        self.fs
            .rename(&tmp, &path)
            .map_err(|e| disk("rename", &tmp, e))?;
        self.fs
            .sync_dir(&self.dir)
            .map_err(|e| disk("fsync", &self.dir, e))
    }
}

impl Durable for LogStore {
    fn load(&mut self) -> Result<Option<Persisted>> {
        Ok(self.loaded.take())
    }

    fn save(&mut self, entries: &[Entry], hard_state: Option<&HardState>) -> Result<()> {
        if let Some(first) = entries.first() {
            if first.index <= self.last_index {
                self.wal
                    .truncate_suffix(Lsn::new(first.index))
                    .map_err(|e| disk("cut the Raft log in", &self.dir, e))?;
                self.last_index = first.index - 1;
            }
            if first.index != self.last_index + 1 {
                return Err(ReplicationError::Inconsistent(format!(
                    "entries from {} do not follow the log's last entry {}",
                    first.index, self.last_index
                )));
            }
            let frames = entries.iter().map(|e| (e.term, encode(e))).collect();
            let at = self
                .wal
                .append_batch_blocking(frames)
                .map_err(|e| disk("append to the Raft log in", &self.dir, e))?;
            if at.get() != first.index {
                return Err(ReplicationError::Inconsistent(format!(
                    "entry {} was written at {at}",
                    first.index
                )));
            }
            self.last_index = entries.last().map_or(self.last_index, |e| e.index);
        }
        if let Some(hs) = hard_state {
            let changed = (hs.term, hs.vote) != (self.state.term, self.state.vote);
            self.state.commit = hs.commit.min(self.last_index);
            if changed {
                self.state.term = hs.term;
                self.state.vote = hs.vote;
                self.store_state()?;
            }
        }
        Ok(())
    }

    fn save_commit(&mut self, commit: u64) -> Result<()> {
        self.state.commit = commit.min(self.last_index);
        Ok(())
    }

    fn save_conf_state(
        &mut self,
        conf_state: &ConfState,
        index: u64,
        context: &[u8],
    ) -> Result<()> {
        self.state.conf = ConfFields::of(conf_state);
        self.state.conf_index = index;
        self.state.conf_context = utf8(context)?;
        self.store_state()
    }

    fn compact(&mut self, index: u64, term: u64) -> Result<()> {
        if index <= self.state.start_index {
            return Ok(());
        }
        if index > self.last_index {
            return Err(ReplicationError::Inconsistent(format!(
                "compacting to entry {index}, past the log's last entry {}",
                self.last_index
            )));
        }
        self.state.start_index = index;
        self.state.start_term = term;
        self.store_state()?;
        if index == self.last_index {
            // The whole log: the file being written goes too.
            self.wal
                .roll()
                .map_err(|e| disk("compact the Raft log in", &self.dir, e))?;
        }
        self.wal
            .truncate_prefix(Lsn::new(index))
            .map_err(|e| disk("compact the Raft log in", &self.dir, e))
    }

    fn begin_install(&mut self, meta: &SnapshotMetadata, context: &[u8]) -> Result<()> {
        self.state.installing = Some(InstallNote::of(meta, context)?);
        self.store_state()
    }

    fn finish_install(&mut self, meta: &SnapshotMetadata, context: &[u8]) -> Result<()> {
        // The note says the log is being emptied first: a crash while its
        // files go (or before `STATE` is written at the end) leaves a log
        // the next open empties, then the note is found and finished again.
        let mut note = InstallNote::of(meta, context)?;
        note.emptying_log = true;
        self.state.installing = Some(note);
        self.store_state()?;
        let log_dir = self.log_dir();
        self.wal
            .close()
            .map_err(|e| disk("close the Raft log in", &log_dir, e))?;
        empty_dir(&self.fs, &log_dir)?;
        let (wal, _) = open_log(&self.fs, &log_dir, self.options, meta.index)?;
        self.wal = wal;
        self.last_index = meta.index;
        self.state.conf = ConfFields::of(meta.get_conf_state());
        self.state.conf_index = meta.index;
        self.state.conf_context = utf8(context)?;
        self.state.start_index = meta.index;
        self.state.start_term = meta.term;
        self.state.term = self.state.term.max(meta.term);
        self.state.commit = self.state.commit.max(meta.index);
        self.state.installing = None;
        self.store_state()
    }

    fn abandon_install(&mut self) -> Result<()> {
        if self.state.installing.take().is_some() {
            self.store_state()?;
        }
        Ok(())
    }
}

/// Removes every file in `dir` (if it exists) and fsyncs it.
fn empty_dir(fs: &Arc<dyn Fs>, dir: &Path) -> Result<()> {
    let names = match fs.list(dir) {
        Ok(names) => names,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(disk("list", dir, e)),
    };
    for name in names {
        let path = dir.join(name);
        fs.remove_file(&path)
            .map_err(|e| disk("remove", &path, e))?;
    }
    fs.sync_dir(dir).map_err(|e| disk("fsync", dir, e))
}

/// A configuration's context as `STATE` keeps it.
fn utf8(context: &[u8]) -> Result<String> {
    String::from_utf8(context.to_vec()).map_err(|_| {
        ReplicationError::Inconsistent("a configuration's context is not UTF-8".into())
    })
}

fn open_log(
    fs: &Arc<dyn Fs>,
    dir: &Path,
    options: WalOptions,
    after: u64,
) -> Result<(Wal, Vec<toplog_wal::Entry>)> {
    Wal::open(
        fs.clone(),
        dir,
        options,
        Lsn::new(after),
        Box::new(|_, _, _| {}),
    )
    .map_err(|e| disk("open the Raft log in", dir, e))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use toplog_wal::SimFs;

    fn entry(index: u64, term: u64, data: &str) -> Entry {
        Entry {
            index,
            term,
            data: data.as_bytes().to_vec().into(),
            ..Entry::default()
        }
    }

    fn hs(term: u64, vote: u64, commit: u64) -> HardState {
        HardState {
            term,
            vote,
            commit,
            ..HardState::default()
        }
    }

    fn open(fs: &SimFs) -> LogStore {
        LogStore::open(
            Arc::new(fs.clone()),
            Path::new("/raft"),
            WalOptions::default(),
        )
        .unwrap()
    }

    #[test]
    fn a_replaced_tail_term_vote_and_configuration_survive_a_crash() {
        let fs = SimFs::new(1);
        let mut store = open(&fs);
        assert!(store.load().unwrap().is_none(), "a new node");
        store
            .save_conf_state(&ConfState::from((vec![1, 2, 3], vec![])), 0, b"")
            .unwrap();
        let first: Vec<Entry> = (1..=5).map(|i| entry(i, 1, &format!("a{i}"))).collect();
        store.save(&first, Some(&hs(1, 2, 0))).unwrap();
        store.save_commit(3).unwrap();
        // A new leader in term 2 replaces the uncommitted 4 and 5.
        let second = [entry(4, 2, "b4"), entry(5, 2, "b5"), entry(6, 2, "b6")];
        store.save(&second, Some(&hs(2, 3, 3))).unwrap();
        drop(store);
        fs.crash();

        let mut store = open(&fs);
        let back = store.load().unwrap().expect("state");
        let got: Vec<(u64, u64, Vec<u8>)> = back
            .entries
            .iter()
            .map(|e| (e.index, e.term, e.data.to_vec()))
            .collect();
        let want: Vec<(u64, u64, Vec<u8>)> = [
            (1, 1, "a1"),
            (2, 1, "a2"),
            (3, 1, "a3"),
            (4, 2, "b4"),
            (5, 2, "b5"),
            (6, 2, "b6"),
        ]
        .iter()
        .map(|(i, t, d)| (*i, *t, d.as_bytes().to_vec()))
        .collect();
        assert_eq!(got, want);
        assert_eq!(
            (
                back.hard_state.term,
                back.hard_state.vote,
                back.hard_state.commit
            ),
            (2, 3, 3)
        );
        assert_eq!(back.conf_state.voters, vec![1, 2, 3]);
    }

    #[test]
    fn compaction_and_an_installed_snapshot_move_the_log_start_across_crashes() {
        let fs = SimFs::new(2);
        let mut store = open(&fs);
        store.load().unwrap();
        store
            .save_conf_state(&ConfState::from((vec![1, 2, 3], vec![])), 0, b"")
            .unwrap();
        let entries: Vec<Entry> = (1..=300).map(|i| entry(i, 1, &format!("e{i}"))).collect();
        store.save(&entries, Some(&hs(1, 1, 300))).unwrap();
        store.compact(250, 1).unwrap();
        drop(store);
        fs.crash();

        let mut store = open(&fs);
        let back = store.load().unwrap().expect("state");
        assert_eq!(back.start, (250, 1));
        let indexes: Vec<u64> = back.entries.iter().map(|e| e.index).collect();
        assert_eq!(indexes, (251..=300).collect::<Vec<_>>());

        // An install noted, then a crash before the state machine had it.
        let mut meta = SnapshotMetadata {
            index: 500,
            term: 3,
            ..SnapshotMetadata::default()
        };
        meta.set_conf_state(ConfState::from((vec![1, 2, 3, 4], vec![])));
        store.begin_install(&meta, b"{\"4\":\"x\"}").unwrap();
        drop(store);
        fs.crash();
        let mut store = open(&fs);
        let back = store.load().unwrap().expect("state");
        assert_eq!(back.installing.as_ref().map(|m| m.0.index), Some(500));
        assert_eq!(
            back.entries.len(),
            50,
            "the log is untouched until the install finishes"
        );

        store.finish_install(&meta, b"{\"4\":\"x\"}").unwrap();
        store
            .save(&[entry(501, 3, "after")], Some(&hs(3, 0, 501)))
            .unwrap();
        drop(store);
        fs.crash();
        let mut store = open(&fs);
        let back = store.load().unwrap().expect("state");
        assert_eq!(back.installing, None);
        assert_eq!(back.start, (500, 3));
        assert_eq!(back.conf_state.voters, vec![1, 2, 3, 4]);
        assert_eq!(back.conf_index, 500);
        assert_eq!(back.conf_context, b"{\"4\":\"x\"}");
        let got: Vec<(u64, u64)> = back.entries.iter().map(|e| (e.index, e.term)).collect();
        assert_eq!(got, vec![(501, 3)]);
        assert_eq!(back.hard_state.term, 3);
    }

    #[test]
    fn an_install_cut_short_while_the_log_is_emptied_is_finished_at_the_next_open() {
        let fs = SimFs::new(3);
        let mut store = LogStore::open(
            Arc::new(fs.clone()),
            Path::new("/raft"),
            WalOptions {
                segment_bytes: 256,
                ..WalOptions::default()
            },
        )
        .unwrap();
        store.load().unwrap();
        let entries: Vec<Entry> = (1..=60).map(|i| entry(i, 1, &format!("e{i:03}"))).collect();
        store.save(&entries, Some(&hs(1, 1, 60))).unwrap();
        let mut meta = SnapshotMetadata {
            index: 900,
            term: 4,
            ..SnapshotMetadata::default()
        };
        meta.set_conf_state(ConfState::from((vec![1, 2, 3], vec![])));
        store.begin_install(&meta, b"ctx").unwrap();
        // The state machine holds it; emptying the log begins, and the
        // power goes after the first file is gone.
        let mut note = InstallNote::of(&meta, b"ctx").unwrap();
        note.emptying_log = true;
        store.state.installing = Some(note);
        store.store_state().unwrap();
        let files = fs.list(Path::new("/raft/log")).unwrap();
        assert!(files.len() > 2, "{files:?}");
        let first = Path::new("/raft/log").join(&files[0]);
        fs.remove_file(&first).unwrap();
        fs.sync_dir(Path::new("/raft/log")).unwrap();
        drop(store);
        fs.crash();

        let mut store = LogStore::open(
            Arc::new(fs.clone()),
            Path::new("/raft"),
            WalOptions::default(),
        )
        .unwrap();
        let back = store.load().unwrap().expect("state");
        assert!(back.entries.is_empty(), "the log is emptied at open");
        let (pending, context) = back.installing.expect("the note");
        assert_eq!((pending.index, context.as_slice()), (900, &b"ctx"[..]));
        store.finish_install(&pending, &context).unwrap();
        store
            .save(&[entry(901, 4, "after")], Some(&hs(4, 0, 901)))
            .unwrap();
        drop(store);
        fs.crash();
        let mut store = open(&fs);
        let back = store.load().unwrap().expect("state");
        assert_eq!(back.start, (900, 4));
        let got: Vec<u64> = back.entries.iter().map(|e| e.index).collect();
        assert_eq!(got, vec![901]);
        assert_eq!(back.installing, None);
    }
}
