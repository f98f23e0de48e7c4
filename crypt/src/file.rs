//! Small node-state files replaced whole (retention policy, jobs, API keys):
//! sealed with the node's cipher, written owner-only to a temporary file,
//! fsynced, renamed over the old one, and the directory fsynced, so a crash
//! leaves the old file or the new one.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::{Cipher, OpenError};

/// Why a state file could not be read: the file and what went wrong.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error("{path}: {reason}")]
    Io {
        path: PathBuf,
        reason: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Sealed { path: PathBuf, reason: OpenError },
}

/// Replaces `path` with `plain`, sealed under `cipher`'s current key.
pub fn store_state_file(path: &Path, plain: Vec<u8>, cipher: &Cipher) -> std::io::Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!("{}.tmp", name.unwrap_or_default()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&cipher.seal(plain))?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    std::fs::File::open(dir.unwrap_or(Path::new(".")))?.sync_all()
}

/// The plaintext of `path` (opened if sealed); `None` if it does not exist.
pub fn load_state_file(path: &Path, cipher: &Cipher) -> Result<Option<Vec<u8>>, StateFileError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(reason) => {
            return Err(StateFileError::Io {
                path: path.to_path_buf(),
                reason,
            });
        }
    };
    open_state(path, &bytes, cipher).map(Some)
}

/// The plaintext of bytes read from `path`.
pub fn open_state(path: &Path, bytes: &[u8], cipher: &Cipher) -> Result<Vec<u8>, StateFileError> {
    cipher
        .open(bytes)
        .map(|p| p.into_owned())
        .map_err(|reason| StateFileError::Sealed {
            path: path.to_path_buf(),
            reason,
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_state_file_round_trips_sealed_and_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.json");
        let cipher = Cipher::new(
            crate::Keyring::from_env_value(
                "k1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
            )
            .unwrap(),
        );
        assert!(load_state_file(&path, &cipher).unwrap().is_none());
        store_state_file(&path, b"{\"endpoint\":\"/secret\"}".to_vec(), &cipher).unwrap();
        let raw = std::fs::read(&path).unwrap();
        assert!(!raw.windows(6).any(|w| w == b"secret"));
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            load_state_file(&path, &cipher).unwrap().unwrap(),
            b"{\"endpoint\":\"/secret\"}"
        );
        let err = load_state_file(&path, &Cipher::off())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("policy.json: it is encrypted under key `k1`"),
            "{err}"
        );
    }
}
