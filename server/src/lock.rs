//! Lock files (one process at a time holds a data directory, or an
//! importer's offset file) and files only their owner may read.

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

/// Writes `bytes` to `path` (replacing it), readable by its owner only
/// (mode 0600, also when the file was there before), and syncs it.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(bytes)?;
        f.sync_all()
    };
    write().map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
}
