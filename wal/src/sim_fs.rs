//! An in-memory disk for crash tests. Each file has current and durable bytes;
//! directory entries become durable only on `sync_dir`. `crash()` throws away
//! what was not synced, keeping a random prefix of unsynced appends (torn write).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::fs::{FileBytes, Fs, FsFile};

/// Simulated disk; clones share the same disk.
#[derive(Clone)]
pub struct SimFs {
    state: Arc<Mutex<SimState>>,
}

#[derive(Clone)]
struct Inode {
    current: Vec<u8>,
    /// Always a prefix of `current`: writes only append, truncate cuts both.
    durable: Vec<u8>,
}

#[derive(Clone)]
struct SimState {
    rng: StdRng,
    inodes: HashMap<u64, Inode>,
    next_inode: u64,
    /// Path -> inode as the running process sees it.
    names: BTreeMap<PathBuf, u64>,
    /// Path -> inode as it would be found after a crash.
    durable_names: BTreeMap<PathBuf, u64>,
    /// Directories are treated as durable once created.
    dirs: BTreeSet<PathBuf>,
    /// Bumped by `crash`; handles from an older generation fail.
    generation: u64,
    /// `Some(n)`: n more syncs succeed, then every sync fails.
    syncs_left: Option<u64>,
    write_fault: Option<io::ErrorKind>,
    sync_count: u64,
    sync_latency: Duration,
}

fn lock(state: &Mutex<SimState>) -> MutexGuard<'_, SimState> {
    // A panic while holding the lock (in a test thread) must not hide the disk from others.
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file", path.display()),
    )
}

fn parent_of(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

impl SimFs {
    /// An empty disk whose torn writes are drawn from `seed`.
    pub fn new(seed: u64) -> Self {
        let state = SimState {
            rng: StdRng::seed_from_u64(seed),
            inodes: HashMap::new(),
            next_inode: 0,
            names: BTreeMap::new(),
            durable_names: BTreeMap::new(),
            dirs: BTreeSet::new(),
            generation: 0,
            syncs_left: None,
            write_fault: None,
            sync_count: 0,
            sync_latency: Duration::ZERO,
        };
        Self {
            state: Arc::new(Mutex::new(state)),
        }
    }

    /// Simulates power loss: unsynced directory changes are undone, every file keeps its
    /// durable bytes plus a random prefix of what was appended since its last sync, and
    /// every open handle fails from now on.
    pub fn crash(&self) {
        let mut s = lock(&self.state);
        s.generation += 1;
        s.names = s.durable_names.clone();
        let live: BTreeSet<u64> = s.names.values().copied().collect();
        s.inodes.retain(|id, _| live.contains(id));
        let SimState { rng, inodes, .. } = &mut *s;
        let mut ids: Vec<u64> = inodes.keys().copied().collect();
        ids.sort_unstable(); // deterministic tearing for a given seed
        for id in ids {
            if let Some(inode) = inodes.get_mut(&id) {
                let unsynced = inode.current.len() - inode.durable.len();
                let kept = rng.random_range(0..=unsynced);
                inode.current.truncate(inode.durable.len() + kept);
                inode.durable = inode.current.clone();
            }
        }
    }

    /// An independent disk holding what this one would hold after power loss now,
    /// while this one carries on. Lets a test "crash" a store whose threads are
    /// still running without them writing into the recovered copy.
    pub fn crashed_copy(&self) -> Self {
        let copy = Self {
            state: Arc::new(Mutex::new(lock(&self.state).clone())),
        };
        copy.crash();
        copy
    }

    /// After `n` more successful syncs (file or directory), every sync fails with
    /// "injected fsync failure".
    pub fn fail_syncs_after(&self, n: u64) {
        lock(&self.state).syncs_left = Some(n);
    }

    /// While `Some`, every `write_all` fails with this kind and writes nothing.
    pub fn fail_writes(&self, kind: Option<io::ErrorKind>) {
        lock(&self.state).write_fault = kind;
    }

    /// Clears injected faults.
    pub fn heal(&self) {
        let mut s = lock(&self.state);
        s.syncs_left = None;
        s.write_fault = None;
    }

    /// Successful file and directory syncs so far.
    pub fn sync_count(&self) -> u64 {
        lock(&self.state).sync_count
    }

    /// Bytes written to files but not yet synced: what a crash now would lose.
    pub fn unsynced_bytes(&self) -> u64 {
        lock(&self.state)
            .inodes
            .values()
            .map(|i| (i.current.len() - i.durable.len()) as u64)
            .sum()
    }

    /// Makes every sync take this long (outside the disk lock), like a real fsync;
    /// used to make group commit observable.
    pub fn set_sync_latency(&self, latency: Duration) {
        lock(&self.state).sync_latency = latency;
    }

    /// Counts a sync, or fails it if a fault is armed.
    fn take_sync(&self) -> io::Result<Duration> {
        let mut s = lock(&self.state);
        if let Some(left) = s.syncs_left {
            if left == 0 {
                return Err(io::Error::other("injected fsync failure"));
            }
            s.syncs_left = Some(left - 1);
        }
        s.sync_count += 1;
        Ok(s.sync_latency)
    }

    fn check_dir(s: &SimState, dir: &Path) -> io::Result<()> {
        if dir.as_os_str().is_empty() || s.dirs.contains(dir) {
            Ok(())
        } else {
            Err(not_found(dir))
        }
    }
}

impl fmt::Debug for SimFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = lock(&self.state);
        f.debug_struct("SimFs")
            .field("files", &s.names.keys().collect::<Vec<_>>())
            .field("generation", &s.generation)
            .field("sync_count", &s.sync_count)
            .finish()
    }
}

#[derive(Debug)]
struct SimFile {
    fs: SimFs,
    path: PathBuf,
    inode: u64,
    generation: u64,
    len: u64,
}

impl SimFile {
    fn check_generation(&self, s: &SimState) -> io::Result<()> {
        if s.generation == self.generation {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "{}: handle lost in simulated crash",
                self.path.display()
            )))
        }
    }
}

impl FsFile for SimFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut s = lock(&self.fs.state);
        self.check_generation(&s)?;
        if let Some(kind) = s.write_fault {
            return Err(io::Error::new(kind, "injected write failure"));
        }
        let inode = s
            .inodes
            .get_mut(&self.inode)
            .ok_or_else(|| not_found(&self.path))?;
        inode.current.extend_from_slice(buf);
        self.len += buf.len() as u64;
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        self.check_generation(&lock(&self.fs.state))?;
        let latency = self.fs.take_sync()?;
        if !latency.is_zero() {
            std::thread::sleep(latency);
        }
        let mut s = lock(&self.fs.state);
        self.check_generation(&s)?;
        let inode = s
            .inodes
            .get_mut(&self.inode)
            .ok_or_else(|| not_found(&self.path))?;
        inode.durable = inode.current.clone();
        Ok(())
    }

    fn len(&self) -> u64 {
        self.len
    }
}

impl Fs for SimFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut s = lock(&self.state);
        for ancestor in dir.ancestors() {
            if !ancestor.as_os_str().is_empty() {
                s.dirs.insert(ancestor.to_path_buf());
            }
        }
        Ok(())
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let mut s = lock(&self.state);
        Self::check_dir(&s, &parent_of(path))?;
        if s.names.contains_key(path) || s.dirs.contains(path) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{}: already exists", path.display()),
            ));
        }
        let id = s.next_inode;
        s.next_inode += 1;
        s.inodes.insert(
            id,
            Inode {
                current: Vec::new(),
                durable: Vec::new(),
            },
        );
        s.names.insert(path.to_path_buf(), id);
        let generation = s.generation;
        Ok(Box::new(SimFile {
            fs: self.clone(),
            path: path.to_path_buf(),
            inode: id,
            generation,
            len: 0,
        }))
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let s = lock(&self.state);
        let id = *s.names.get(path).ok_or_else(|| not_found(path))?;
        let len = s.inodes.get(&id).map_or(0, |i| i.current.len() as u64);
        let generation = s.generation;
        Ok(Box::new(SimFile {
            fs: self.clone(),
            path: path.to_path_buf(),
            inode: id,
            generation,
            len,
        }))
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let s = lock(&self.state);
        let id = s.names.get(path).ok_or_else(|| not_found(path))?;
        s.inodes
            .get(id)
            .map(|i| i.current.clone())
            .ok_or_else(|| not_found(path))
    }

    fn map(&self, path: &Path) -> io::Result<FileBytes> {
        self.read(path).map(FileBytes::from_vec)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = lock(&self.state);
        Self::check_dir(&s, &parent_of(to))?;
        let id = s.names.remove(from).ok_or_else(|| not_found(from))?;
        s.names.insert(to.to_path_buf(), id);
        Ok(())
    }

    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = lock(&self.state);
        Self::check_dir(&s, &parent_of(to))?;
        if s.names.contains_key(to) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "exists"));
        }
        let id = *s.names.get(from).ok_or_else(|| not_found(from))?;
        s.names.insert(to.to_path_buf(), id);
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut s = lock(&self.state);
        s.names
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| not_found(path))
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut s = lock(&self.state);
        let id = *s.names.get(path).ok_or_else(|| not_found(path))?;
        let len = usize::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "length too large"))?;
        let inode = s.inodes.get_mut(&id).ok_or_else(|| not_found(path))?;
        inode.current.resize(len, 0);
        inode.durable = inode.current.clone();
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let s = lock(&self.state);
        Self::check_dir(&s, dir)?;
        let mut names: Vec<String> = s
            .names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_owned))
            .collect();
        names.sort();
        Ok(names)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        Self::check_dir(&lock(&self.state), dir)?;
        let latency = self.take_sync()?;
        if !latency.is_zero() {
            std::thread::sleep(latency);
        }
        let mut s = lock(&self.state);
        let in_dir = |p: &PathBuf| p.parent() == Some(dir);
        s.durable_names.retain(|p, _| !in_dir(p));
        let entries: Vec<(PathBuf, u64)> = s
            .names
            .iter()
            .filter(|(p, _)| in_dir(p))
            .map(|(p, id)| (p.clone(), *id))
            .collect();
        s.durable_names.extend(entries);
        Ok(())
    }

    fn exists(&self, path: &Path) -> bool {
        let s = lock(&self.state);
        s.names.contains_key(path) || s.dirs.contains(path)
    }
}
