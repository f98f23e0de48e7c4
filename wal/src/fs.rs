//! The small file-system trait every durable toplog file goes through, and its
//! real-disk implementation. Tests swap in [`crate::SimFs`], which loses unsynced
//! bytes and directory entries on a simulated power cut.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// File-system operations used by the log, segments and manifests.
pub trait Fs: Send + Sync + fmt::Debug + 'static {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Creates a new, empty file (error AlreadyExists if present), open for appending.
    fn create(&self, path: &Path) -> io::Result<Box<dyn FsFile>>;
    /// Opens an existing file for appending at its end.
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn FsFile>>;
    /// The whole file's current contents.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// A read-only view of the whole file: memory-mapped (memmap2) on the real disk.
    fn map(&self, path: &Path) -> io::Result<FileBytes>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Gives the file at `from` a second name `to` (error AlreadyExists if
    /// present); durable once `to`'s directory is synced.
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Cuts the file to `len` bytes and fsyncs it.
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()>;
    /// File names (not paths) directly inside `dir`, sorted.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// fsyncs the directory so creates, renames and removes inside it are durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    fn exists(&self, path: &Path) -> bool;
}

/// A file open for appending.
pub trait FsFile: Send + fmt::Debug {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Makes everything written so far durable (fdatasync on the real disk).
    fn sync(&mut self) -> io::Result<()>;
    /// Bytes in the file: its length when opened plus everything written through this handle.
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Immutable bytes of a whole file; derefs to `[u8]`; cheap to clone.
#[derive(Clone)]
pub struct FileBytes(Arc<Backing>);

enum Backing {
    Owned(Vec<u8>),
    Mapped(memmap2::Mmap),
}

impl FileBytes {
    pub fn from_vec(bytes: Vec<u8>) -> Self {
        Self(Arc::new(Backing::Owned(bytes)))
    }
}

impl Deref for FileBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &*self.0 {
            Backing::Owned(v) => v,
            Backing::Mapped(m) => m,
        }
    }
}

impl fmt::Debug for FileBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &*self.0 {
            Backing::Owned(_) => "owned",
            Backing::Mapped(_) => "mapped",
        };
        f.debug_struct("FileBytes")
            .field("len", &self.len())
            .field("backing", &kind)
            .finish()
    }
}

/// The real disk: `std::fs` plus memmap2.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

#[derive(Debug)]
struct RealFile {
    file: File,
    path: PathBuf,
    len: u64,
}

impl FsFile for RealFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file.write_all(buf)?;
        self.len += buf.len() as u64;
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data().map_err(|e| {
            io::Error::new(e.kind(), format!("fdatasync {}: {e}", self.path.display()))
        })
    }

    fn len(&self) -> u64 {
        self.len
    }
}

impl Fs for RealFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(path)?;
        Ok(Box::new(RealFile {
            file,
            path: path.to_path_buf(),
            len: 0,
        }))
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let file = OpenOptions::new().append(true).open(path)?;
        let len = file.metadata()?.len();
        Ok(Box::new(RealFile {
            file,
            path: path.to_path_buf(),
            len,
        }))
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn map(&self, path: &Path) -> io::Result<FileBytes> {
        let file = File::open(path)?;
        if file.metadata()?.len() == 0 {
            // mmap of zero bytes fails (EINVAL) on Linux; an empty file is just empty bytes.
            return Ok(FileBytes::from_vec(Vec::new()));
        }
        // SAFETY: toplog only maps files that are complete and never written,
        // truncated or replaced in place while mapped (segments and manifests are
        // written once, then renamed into place; deletion keeps the mapped inode
        // alive). Another process modifying the file would break this; the data
        // directory is owned by one toplog process.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        Ok(FileBytes(Arc::new(Backing::Mapped(map))))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::hard_link(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let file = OpenOptions::new().write(true).open(path)?;
        file.set_len(len)?;
        file.sync_all()
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            // Names that are not UTF-8 are not toplog's files; skip them.
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
}
