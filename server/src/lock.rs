//! Lock files: one process at a time holds a data directory, or an
//! importer's offset file.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

/// Opens (creating it) and locks `path` for as long as the returned file is
/// open; `None` if another process holds it.
pub(crate) fn try_lock(path: &Path) -> anyhow::Result<Option<File>> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
    // SAFETY: flock(2) on a descriptor this function owns, no memory involved.
    // (`File::try_lock` needs Rust 1.89; the workspace supports 1.88.)
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(Some(file));
    }
    match std::io::Error::last_os_error() {
        e if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(None),
        e => anyhow::bail!("cannot lock {}: {e}", path.display()),
    }
}
