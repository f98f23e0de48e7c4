//! The key ring: keys by id, one current, loaded from the key file (TOML) or
//! from `TOPLOG_ENCRYPTION_KEY`.
//!
//! ```toml
//! current = "2026-12"
//! [keys]
//! "2026-11" = "<64 hex digits>"
//! "2026-12" = "<64 hex digits>"
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use aws_lc_rs::aead::{AES_256_GCM, LessSafeKey, UnboundKey};
use serde::Deserialize;

/// Bytes in a key: AES-256.
pub const KEY_BYTES: usize = 32;

/// Longest key id, in bytes (the envelope stores its length in one byte).
const MAX_ID_LEN: usize = 64;

/// Why a key file or `TOPLOG_ENCRYPTION_KEY` was refused; the message names
/// where the keys came from and which key.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {reason}")]
pub struct KeyFileError {
    origin: String,
    reason: String,
}

pub(crate) struct Key {
    pub(crate) id: String,
    pub(crate) bytes: [u8; KEY_BYTES],
    pub(crate) aead: LessSafeKey,
}

/// The node's encryption keys. Debug output names the ids, never the keys.
pub struct Keyring {
    keys: Vec<Arc<Key>>,
    current: usize,
    origin: String,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("current", &self.current_id())
            .field("ids", &self.ids().collect::<Vec<_>>())
            .field("origin", &self.origin)
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    current: String,
    keys: BTreeMap<String, String>,
}

impl Keyring {
    /// Reads a key file (see the module docs).
    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        let origin = format!("encryption key file {}", path.display());
        let text = std::fs::read_to_string(path).map_err(|e| KeyFileError {
            origin: origin.clone(),
            reason: e.to_string(),
        })?;
        Self::parse(&text, origin)
    }

    /// Parses a key file's text; `origin` names it in errors.
    pub fn parse(text: &str, origin: String) -> Result<Self, KeyFileError> {
        let fail = |reason: String| KeyFileError {
            origin: origin.clone(),
            reason,
        };
        let file: KeyFile = toml::from_str(text).map_err(|e| fail(e.message().to_string()))?;
        let pairs = file.keys.into_iter().collect::<Vec<_>>();
        Self::from_pairs(pairs, &file.current, origin.clone())
    }

    /// Parses `TOPLOG_ENCRYPTION_KEY`: `<id>:<64 hex digits>`, or several
    /// separated by commas, the first current.
    pub fn from_env_value(value: &str) -> Result<Self, KeyFileError> {
        let origin = "TOPLOG_ENCRYPTION_KEY".to_string();
        let mut pairs = Vec::new();
        for (n, item) in value.split(',').enumerate() {
            let Some((id, hex)) = item.trim().split_once(':') else {
                return Err(KeyFileError {
                    origin,
                    reason: format!("item {} is not `<id>:<64 hex digits>`", n + 1),
                });
            };
            pairs.push((id.to_string(), hex.to_string()));
        }
        let current = pairs.first().map(|(id, _)| id.clone()).unwrap_or_default();
        Self::from_pairs(pairs, &current, origin)
    }

    fn from_pairs(
        pairs: Vec<(String, String)>,
        current: &str,
        origin: String,
    ) -> Result<Self, KeyFileError> {
        let fail = |reason: String| KeyFileError {
            origin: origin.clone(),
            reason,
        };
        let mut keys: Vec<Arc<Key>> = Vec::with_capacity(pairs.len());
        for (id, hex) in pairs {
            check_id(&id).map_err(&fail)?;
            if keys.iter().any(|k| k.id == id) {
                return Err(fail(format!("key `{id}` is listed twice")));
            }
            let bytes = parse_hex(hex.trim())
                .ok_or_else(|| fail(format!("key `{id}` is not 64 hex digits (256 bits)")))?;
            if bytes.iter().all(|b| *b == 0) {
                return Err(fail(format!("key `{id}` is all zeros")));
            }
            if let Some(same) = keys.iter().find(|k| k.bytes == bytes) {
                return Err(fail(format!(
                    "keys `{}` and `{id}` are the same key",
                    same.id
                )));
            }
            let aead = UnboundKey::new(&AES_256_GCM, &bytes)
                .map(LessSafeKey::new)
                .map_err(|_| fail(format!("key `{id}` is not an AES-256 key")))?;
            keys.push(Arc::new(Key { id, bytes, aead }));
        }
        let current = keys
            .iter()
            .position(|k| k.id == current)
            .ok_or_else(|| fail(format!("the current key `{current}` is not listed")))?;
        Ok(Self {
            keys,
            current,
            origin,
        })
    }

    /// This ring with its current key alone.
    pub(crate) fn current_only(&self) -> Self {
        Self {
            keys: vec![self.keys[self.current].clone()],
            current: 0,
            origin: self.origin.clone(),
        }
    }

    /// The id new data is written under.
    pub fn current_id(&self) -> &str {
        &self.keys[self.current].id
    }

    /// Every listed id, current or not.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| k.id.as_str())
    }

    /// Where the keys came from, for messages ("encryption key file ...").
    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub(crate) fn current(&self) -> &Key {
        &self.keys[self.current]
    }

    pub(crate) fn get(&self, id: &str) -> Option<&Key> {
        self.keys.iter().find(|k| k.id == id).map(|k| &**k)
    }
}

fn check_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "key id `{id}` must be 1 to {MAX_ID_LEN} letters, digits, `-`, `_` or `.`"
        ))
    }
}

fn parse_hex(s: &str) -> Option<[u8; KEY_BYTES]> {
    if s.len() != KEY_BYTES * 2 {
        return None;
    }
    let mut out = [0u8; KEY_BYTES];
    for (i, pair) in s.as_bytes().chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    const A: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const B: &str = "ff0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn a_key_file_names_its_current_key() {
        let text = format!("current = \"k2\"\n[keys]\nk1 = \"{A}\"\nk2 = \"{B}\"\n");
        let ring = Keyring::parse(&text, "test".into()).unwrap();
        assert_eq!(ring.current_id(), "k2");
        assert_eq!(ring.ids().collect::<Vec<_>>(), ["k1", "k2"]);
        assert!(!format!("{ring:?}").contains(A), "Debug shows no key");
    }

    #[test]
    fn bad_key_files_are_refused_naming_the_key() {
        let cases = [
            (
                format!("current = \"k3\"\n[keys]\nk1 = \"{A}\"\n"),
                "`k3` is not listed",
            ),
            (
                "current = \"k1\"\n[keys]\nk1 = \"abcd\"\n".to_string(),
                "`k1` is not 64 hex",
            ),
            (
                format!("current = \"k1\"\n[keys]\nk1 = \"{A}\"\nk2 = \"{A}\"\n"),
                "are the same key",
            ),
            (
                format!("current = \"a b\"\n[keys]\n\"a b\" = \"{A}\"\n"),
                "key id `a b`",
            ),
            (
                format!("current = \"z\"\n[keys]\nz = \"{}\"\n", "0".repeat(64)),
                "all zeros",
            ),
        ];
        for (text, want) in cases {
            let err = Keyring::parse(&text, "keys.toml".into())
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("keys.toml: "), "{err}");
            assert!(err.contains(want), "{err} lacks {want}");
        }
    }

    #[test]
    fn the_environment_lists_keys_current_first() {
        let ring = Keyring::from_env_value(&format!("new:{B},old:{A}")).unwrap();
        assert_eq!(ring.current_id(), "new");
        assert!(ring.get("old").is_some());
        let err = Keyring::from_env_value(A).unwrap_err().to_string();
        assert!(err.contains("TOPLOG_ENCRYPTION_KEY: item 1"), "{err}");
    }
}
