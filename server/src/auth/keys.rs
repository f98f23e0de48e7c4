//! API keys: `tlk_<id>_<secret>`, each with a name, a role and an optional
//! expiry, kept in `<data_dir>/keys.json` as the SHA-256 of their secret
//! only (written whole: a temporary file, fsync, rename). The secret is
//! shown once, when the key is made.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use toplog_crypt::{Cipher, load_state_file, store_state_file};
use toplog_types::Micros;

use super::{AuthError, Role};

/// The prefix every API key starts with.
pub(crate) const PREFIX: &str = "tlk_";
const ID_BYTES: usize = 6;
const SECRET_BYTES: usize = 20;

/// A key as stored: never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredKey {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) role: Role,
    pub(crate) created_at: i64,
    pub(crate) expires_at: Option<i64>,
    /// This key's own rate (`100/s`, or `none`), instead of its role's.
    #[serde(default)]
    pub(crate) rate_limit: Option<String>,
    /// Hex SHA-256 of the secret part.
    sha256: String,
}

impl StoredKey {
    /// The key as the API lists it (no secret), with when it was last used.
    pub(crate) fn to_json(&self, last_used: Option<Micros>) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "prefix": format!("{PREFIX}{}_", self.id),
            "name": self.name,
            "role": self.role,
            "created_at": Micros::new(self.created_at).to_rfc3339(),
            "expires_at": self.expires_at.map(|t| Micros::new(t).to_rfc3339()),
            "rate_limit": self.rate_limit,
            "last_used_at": last_used.map(Micros::to_rfc3339),
        })
    }
}

/// The node's API keys.
#[derive(Debug)]
pub(crate) struct KeyStore {
    path: PathBuf,
    cipher: Cipher,
    keys: RwLock<Vec<StoredKey>>,
    /// When each key was last used, since the node started (not persisted).
    last_used: Mutex<HashMap<String, Micros>>,
}

fn sha256_hex(bytes: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    hex(digest.as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn random_hex(n: usize) -> anyhow::Result<String> {
    let mut bytes = vec![0u8; n];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("no randomness from the system"))?;
    Ok(hex(&bytes))
}

/// The id and secret of a presented key, if it has the key's shape.
fn parts(presented: &str) -> Option<(&str, &str)> {
    let (id, secret) = presented.strip_prefix(PREFIX)?.split_once('_')?;
    let hexish = |s: &str, n: usize| s.len() == 2 * n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hexish(id, ID_BYTES) && hexish(secret, SECRET_BYTES)).then_some((id, secret))
}

/// A new key, not yet stored.
pub(crate) fn new_key() -> anyhow::Result<String> {
    Ok(format!(
        "{PREFIX}{}_{}",
        random_hex(ID_BYTES)?,
        random_hex(SECRET_BYTES)?
    ))
}

/// The id part of a key, if it has the key's shape.
pub(crate) fn id_of(key: &str) -> Option<&str> {
    parts(key).map(|(id, _)| id)
}

/// A key as it will be stored, from the whole key (made elsewhere, or given
/// at first start): its id and the hash of its secret.
pub(crate) fn stored_key(
    key: &str,
    name: &str,
    role: Role,
    expires_at: Option<Micros>,
    rate_limit: Option<String>,
) -> anyhow::Result<StoredKey> {
    let (id, secret) = parts(key).ok_or_else(|| {
        anyhow::anyhow!(
            "an API key is `{PREFIX}` then {} hex digits, `_` and {} hex digits",
            2 * ID_BYTES,
            2 * SECRET_BYTES
        )
    })?;
    Ok(StoredKey {
        id: id.to_owned(),
        name: name.to_owned(),
        role,
        created_at: Micros::now().get(),
        expires_at: expires_at.map(Micros::get),
        rate_limit,
        sha256: sha256_hex(secret.as_bytes()),
    })
}

impl KeyStore {
    /// The keys in `<data_dir>/keys.json` (none if it does not exist).
    pub(crate) fn open(data_dir: &Path, cipher: &Cipher) -> anyhow::Result<Self> {
        Self::open_file(&data_dir.join("keys.json"), cipher)
    }

    /// The keys in the file `path` (none if it does not exist).
    pub(crate) fn open_file(path: &Path, cipher: &Cipher) -> anyhow::Result<Self> {
        let path = path.to_path_buf();
        let keys = match load_state_file(&path, cipher)? {
            Some(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a key file toplog wrote", path.display()))?,
            None => Vec::new(),
        };
        Ok(Self {
            path,
            cipher: cipher.clone(),
            keys: RwLock::new(keys),
            last_used: Mutex::new(HashMap::new()),
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<StoredKey>> {
        self.keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Makes a key; returns it as stored and the whole key (shown once).
    pub(crate) fn create(
        &self,
        name: &str,
        role: Role,
        expires_at: Option<Micros>,
        rate_limit: Option<String>,
    ) -> anyhow::Result<(StoredKey, String)> {
        let key = new_key()?;
        let stored = self.add(&key, name, role, expires_at, rate_limit)?;
        Ok((stored, key))
    }

    /// Stores `key` (made elsewhere, e.g. given at first start).
    pub(crate) fn add(
        &self,
        key: &str,
        name: &str,
        role: Role,
        expires_at: Option<Micros>,
        rate_limit: Option<String>,
    ) -> anyhow::Result<StoredKey> {
        let stored = stored_key(key, name, role, expires_at, rate_limit)?;
        if !self.insert(stored.clone())? {
            anyhow::bail!("a key with id {} exists", stored.id);
        }
        Ok(stored)
    }

    /// Stores `stored`; `false` (and nothing changes) if its id is taken.
    pub(crate) fn insert(&self, stored: StoredKey) -> anyhow::Result<bool> {
        let mut keys = self
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if keys.iter().any(|k| k.id == stored.id) {
            return Ok(false);
        }
        let mut next = keys.clone();
        next.push(stored);
        self.save(&next)?;
        *keys = next;
        Ok(true)
    }

    /// Every key as stored.
    pub(crate) fn all(&self) -> Vec<StoredKey> {
        self.read().clone()
    }

    /// Replaces every key with `keys` (a snapshot's).
    pub(crate) fn replace_all(&self, keys: Vec<StoredKey>) -> anyhow::Result<()> {
        let mut held = self
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.save(&keys)?;
        *held = keys;
        Ok(())
    }

    /// Whether key `id` is here.
    pub(crate) fn contains(&self, id: &str) -> bool {
        self.read().iter().any(|k| k.id == id)
    }

    /// Revokes key `id` at once; `false` if there is none.
    pub(crate) fn revoke(&self, id: &str) -> anyhow::Result<bool> {
        let mut keys = self
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let next: Vec<StoredKey> = keys.iter().filter(|k| k.id != id).cloned().collect();
        if next.len() == keys.len() {
            return Ok(false);
        }
        self.save(&next)?;
        *keys = next;
        Ok(true)
    }

    /// Every key, as the API lists them.
    pub(crate) fn list(&self) -> Vec<serde_json::Value> {
        let used = self
            .last_used
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        self.read()
            .iter()
            .map(|k| k.to_json(used.get(&k.id).copied()))
            .collect()
    }

    /// The role of a presented key, and its own rate if it has one.
    pub(crate) fn verify(&self, presented: &str) -> Result<(Role, Option<String>), AuthError> {
        let (id, secret) = parts(presented).ok_or(AuthError::InvalidToken)?;
        let hash = sha256_hex(secret.as_bytes());
        let keys = self.read();
        let key = keys
            .iter()
            .find(|k| k.id == id)
            .ok_or(AuthError::InvalidToken)?;
        // Compared whole, whatever differs first.
        let same = key.sha256.len() == hash.len()
            && key
                .sha256
                .bytes()
                .zip(hash.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if !same {
            return Err(AuthError::InvalidToken);
        }
        let now = Micros::now();
        if key.expires_at.is_some_and(|t| t <= now.get()) {
            return Err(AuthError::ExpiredToken);
        }
        self.last_used
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key.id.clone(), now);
        Ok((key.role, key.rate_limit.clone()))
    }

    fn save(&self, keys: &[StoredKey]) -> anyhow::Result<()> {
        let plain = serde_json::to_vec_pretty(keys)?;
        store_state_file(&self.path, plain, &self.cipher)
            .with_context(|| format!("cannot write {}", self.path.display()))
    }

    /// Writes the keys again under the cipher's current key (a rekey).
    pub(crate) fn reseal(&self) -> anyhow::Result<()> {
        let keys = self
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if keys.is_empty() && !self.path.exists() {
            return Ok(());
        }
        self.save(&keys)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn keys_verify_by_secret_expire_survive_a_reopen_and_revoke_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::open(dir.path(), &Cipher::off()).unwrap();
        assert!(store.is_empty());
        let (viewer, key) = store.create("dash", Role::Viewer, None, None).unwrap();
        assert!(key.starts_with(PREFIX) && parts(&key).is_some());
        assert_eq!(store.verify(&key), Ok((Role::Viewer, None)));
        // Same id, another secret; garbage; an expired key.
        let forged = format!("{PREFIX}{}_{}", viewer.id, "0".repeat(2 * SECRET_BYTES));
        assert_eq!(store.verify(&forged), Err(AuthError::InvalidToken));
        assert_eq!(store.verify("tlk_nope"), Err(AuthError::InvalidToken));
        let (_, old) = store
            .create(
                "old",
                Role::Writer,
                Some(Micros::now().saturating_sub_micros(1)),
                None,
            )
            .unwrap();
        assert_eq!(store.verify(&old), Err(AuthError::ExpiredToken));
        let text = std::fs::read_to_string(dir.path().join("keys.json")).unwrap();
        assert!(
            !text.contains(&key[PREFIX.len() + 2 * ID_BYTES + 1..]),
            "no secret on disk"
        );
        let store = KeyStore::open(dir.path(), &Cipher::off()).unwrap();
        assert_eq!(store.verify(&key), Ok((Role::Viewer, None)));
        assert!(store.revoke(&viewer.id).unwrap());
        assert_eq!(store.verify(&key), Err(AuthError::InvalidToken));
        assert!(!store.revoke(&viewer.id).unwrap());
        assert_eq!(store.list().len(), 1);
    }
}
