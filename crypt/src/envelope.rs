//! The sealed envelope: how an encrypted file or record is laid out.
//!
//! | field      | bytes                                                    |
//! |------------|----------------------------------------------------------|
//! | magic      | `TPLGENC\0` (8)                                          |
//! | version    | u8 = 1                                                   |
//! | scheme     | u8 = 1: AES-256-GCM, a 96-bit nonce drawn at random      |
//! | key id     | u8 length, then the id (ASCII)                           |
//! | nonce      | 12 bytes from the system's random source, new each seal  |
//! | ciphertext | AES-256-GCM of the plaintext, same length                |
//! | tag        | 16 bytes; the header (magic to nonce) is the associated data |
//!
//! A nonce is never chosen twice on purpose: each seal draws 96 fresh random
//! bits, so a key may seal 2^32 envelopes before a repeat becomes likelier
//! than one in 2^32 (NIST SP 800-38D); rotation starts a new key's count.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use aws_lc_rs::aead::{Aad, NONCE_LEN, Nonce};

use crate::keyring::{KEY_BYTES, Keyring};

const MAGIC: &[u8; 8] = b"TPLGENC\0";
const VERSION: u8 = 1;
/// AES-256-GCM with a random 96-bit nonce per envelope.
const SCHEME_AES_256_GCM_RANDOM_NONCE: u8 = 1;
const TAG_LEN: usize = 16;
const HEX: &[u8; 16] = b"0123456789abcdef";
/// The magic in hex: how a sealed line starts.
const HEX_MAGIC: &str = "54504c47454e4300";

/// Why an envelope did not open. Callers add the file or record it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("it is encrypted under key `{key_id}`, and no encryption key is configured")]
    NoKeys { key_id: String },
    #[error("it is encrypted under key `{key_id}`, which {origin} does not list")]
    UnknownKey { key_id: String, origin: String },
    #[error(
        "key `{key_id}` from {origin} does not decrypt it: that id names another key than the one it was written with, or the bytes are damaged"
    )]
    WrongKey { key_id: String, origin: String },
    #[error("its encryption header is damaged ({0})")]
    Malformed(&'static str),
}

/// What a stored thing is written under.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeyUse {
    /// Not encrypted.
    Plain,
    /// An envelope under this key id.
    Key(String),
}

/// Seals under the current key and opens under any listed one; without keys,
/// passes bytes through. Cheap to clone.
#[derive(Clone, Default)]
pub struct Cipher(Option<Arc<Keyring>>);

impl fmt::Debug for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            None => f.write_str("Cipher(off)"),
            Some(ring) => write!(f, "Cipher({ring:?})"),
        }
    }
}

struct Header<'a> {
    key_id: &'a str,
    nonce: [u8; NONCE_LEN],
    /// Bytes of the header: the associated data.
    len: usize,
}

fn header(bytes: &[u8]) -> Result<Option<Header<'_>>, OpenError> {
    if !is_sealed(bytes) {
        return Ok(None);
    }
    let rest = &bytes[MAGIC.len()..];
    let (&version, rest) = rest
        .split_first()
        .ok_or(OpenError::Malformed("no version"))?;
    if version != VERSION {
        return Err(OpenError::Malformed("unknown version"));
    }
    let (&scheme, rest) = rest
        .split_first()
        .ok_or(OpenError::Malformed("no scheme"))?;
    if scheme != SCHEME_AES_256_GCM_RANDOM_NONCE {
        return Err(OpenError::Malformed("unknown cipher or nonce scheme"));
    }
    let (&id_len, rest) = rest
        .split_first()
        .ok_or(OpenError::Malformed("no key id"))?;
    let id_len = usize::from(id_len);
    if rest.len() < id_len + NONCE_LEN + TAG_LEN {
        return Err(OpenError::Malformed("cut short"));
    }
    let key_id =
        std::str::from_utf8(&rest[..id_len]).map_err(|_| OpenError::Malformed("key id"))?;
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&rest[id_len..id_len + NONCE_LEN]);
    Ok(Some(Header {
        key_id,
        nonce,
        len: MAGIC.len() + 3 + id_len + NONCE_LEN,
    }))
}

/// Whether `bytes` start like an envelope (no toplog plaintext format does).
pub fn is_sealed(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

impl Cipher {
    /// A cipher that writes plaintext (and still names sealed bytes it meets).
    pub fn off() -> Self {
        Self(None)
    }

    pub fn new(keys: Keyring) -> Self {
        Self(Some(Arc::new(keys)))
    }

    /// Whether new data is encrypted.
    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    pub fn keyring(&self) -> Option<&Keyring> {
        self.0.as_deref()
    }

    /// `plain` sealed under the current key, or `plain` itself when off.
    pub fn seal(&self, plain: Vec<u8>) -> Vec<u8> {
        let Some(ring) = &self.0 else {
            return plain;
        };
        let key = ring.current();
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce);
        let mut out =
            Vec::with_capacity(MAGIC.len() + 3 + key.id.len() + NONCE_LEN + plain.len() + TAG_LEN);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(SCHEME_AES_256_GCM_RANDOM_NONCE);
        out.push(key.id.len() as u8);
        out.extend_from_slice(key.id.as_bytes());
        out.extend_from_slice(&nonce);
        let header_len = out.len();
        out.extend_from_slice(&plain);
        let (aad, body) = out.split_at_mut(header_len);
        let tag = seal_in_place(key, nonce, aad, body);
        out.extend_from_slice(&tag);
        out
    }

    /// The plaintext of `bytes`: opened if they are an envelope, as they are
    /// otherwise.
    pub fn open<'a>(&self, bytes: &'a [u8]) -> Result<Cow<'a, [u8]>, OpenError> {
        let Some(h) = header(bytes)? else {
            return Ok(Cow::Borrowed(bytes));
        };
        let Some(ring) = &self.0 else {
            return Err(OpenError::NoKeys {
                key_id: h.key_id.to_string(),
            });
        };
        let key = ring.get(h.key_id).ok_or_else(|| OpenError::UnknownKey {
            key_id: h.key_id.to_string(),
            origin: ring.origin().to_string(),
        })?;
        let mut body = bytes[h.len..].to_vec();
        let plain_len = key
            .aead
            .open_in_place(
                Nonce::assume_unique_for_key(h.nonce),
                Aad::from(&bytes[..h.len]),
                &mut body,
            )
            .map_err(|_| OpenError::WrongKey {
                key_id: h.key_id.to_string(),
                origin: ring.origin().to_string(),
            })?
            .len();
        body.truncate(plain_len);
        Ok(Cow::Owned(body))
    }

    /// `line` (one line of a text log, no newline) as written under the
    /// current key: the envelope in lowercase hex, or `line` itself when off.
    pub fn seal_line(&self, line: &str) -> String {
        if !self.is_on() {
            return line.to_string();
        }
        let sealed = self.seal(line.as_bytes().to_vec());
        let mut out = String::with_capacity(sealed.len() * 2);
        for b in sealed {
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
        out
    }

    /// A line [`Cipher::seal_line`] wrote: opened if it is hex of an
    /// envelope, as it is otherwise.
    pub fn open_line<'a>(&self, line: &'a str) -> Result<Cow<'a, str>, OpenError> {
        let Some(sealed) = unhex_line(line)? else {
            return Ok(Cow::Borrowed(line));
        };
        let plain = self.open(&sealed)?.into_owned();
        String::from_utf8(plain)
            .map(Cow::Owned)
            .map_err(|_| OpenError::Malformed("not UTF-8"))
    }

    /// Which key a line [`Cipher::seal_line`] wrote is under.
    pub fn line_key_use(line: &str) -> Result<KeyUse, OpenError> {
        match unhex_line(line)? {
            None => Ok(KeyUse::Plain),
            Some(sealed) => Self::key_use(&sealed),
        }
    }

    /// Which key `bytes` are under (read from the header only).
    pub fn key_use(bytes: &[u8]) -> Result<KeyUse, OpenError> {
        Ok(match header(bytes)? {
            None => KeyUse::Plain,
            Some(h) => KeyUse::Key(h.key_id.to_string()),
        })
    }

    /// What new data is written under.
    pub fn writes(&self) -> KeyUse {
        match &self.0 {
            None => KeyUse::Plain,
            Some(ring) => KeyUse::Key(ring.current_id().to_string()),
        }
    }

    /// Whether `bytes` are under something other than what new data is
    /// written under: a rekey rewrites them.
    pub fn is_stale(&self, bytes: &[u8]) -> bool {
        Self::key_use(bytes).map_or(true, |used| used != self.writes())
    }

    /// A cipher with the current key alone: what reads of something just
    /// written under it use, so a copy under an older key is not taken for it.
    pub fn current_only(&self) -> Self {
        Self(self.0.as_ref().map(|r| Arc::new(r.current_only())))
    }

    /// The raw current key and its id, for formats that encrypt themselves
    /// (Parquet modular encryption).
    pub fn current_key(&self) -> Option<(&str, &[u8; KEY_BYTES])> {
        self.0.as_ref().map(|r| {
            let k = r.current();
            (k.id.as_str(), &k.bytes)
        })
    }

    /// The raw key named `id`, for formats that encrypt themselves.
    pub fn key(&self, id: &str) -> Option<&[u8; KEY_BYTES]> {
        self.0.as_ref()?.get(id).map(|k| &k.bytes)
    }
}

/// The envelope in a sealed line; `None` for a plaintext line.
fn unhex_line(line: &str) -> Result<Option<Vec<u8>>, OpenError> {
    if !line.starts_with(HEX_MAGIC) {
        return Ok(None);
    }
    let bytes = line.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return Err(OpenError::Malformed("odd hex length"));
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    bytes
        .chunks(2)
        .map(|p| Some((digit(p[0])? << 4) | digit(p[1])?))
        .collect::<Option<Vec<u8>>>()
        .map(Some)
        .ok_or(OpenError::Malformed("not hex"))
}

#[expect(
    clippy::expect_used,
    reason = "the system random source failing leaves no safe nonce to use: stopping is the only safe answer"
)]
fn fill_random(nonce: &mut [u8; NONCE_LEN]) {
    aws_lc_rs::rand::fill(nonce).expect("the system random source failed");
}

#[expect(
    clippy::expect_used,
    reason = "AES-GCM sealing fails only past 64 GiB in one message; no toplog record comes near"
)]
fn seal_in_place(
    key: &crate::keyring::Key,
    nonce: [u8; NONCE_LEN],
    aad: &[u8],
    body: &mut [u8],
) -> [u8; TAG_LEN] {
    let tag = key
        .aead
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), body)
        .expect("AES-256-GCM seal");
    let mut out = [0u8; TAG_LEN];
    out.copy_from_slice(tag.as_ref());
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use proptest::prelude::*;

    const A: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const B: &str = "ff0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn cipher(spec: &str) -> Cipher {
        Cipher::new(Keyring::from_env_value(spec).unwrap())
    }

    #[test]
    fn sealed_bytes_hide_the_plaintext_and_name_their_key() {
        let c = cipher(&format!("k1:{A}"));
        let plain = b"/api/v1/users/alice-secret-endpoint".repeat(3);
        let sealed = c.seal(plain.clone());
        assert!(!sealed.windows(5).any(|w| w == b"alice"));
        assert_eq!(Cipher::key_use(&sealed).unwrap(), KeyUse::Key("k1".into()));
        assert_eq!(&*c.open(&sealed).unwrap(), &plain[..]);
        assert_ne!(c.seal(plain.clone()), sealed, "a fresh nonce each seal");
    }

    #[test]
    fn plaintext_passes_through_and_off_writes_plaintext() {
        let off = Cipher::off();
        assert_eq!(off.seal(b"abc".to_vec()), b"abc");
        assert_eq!(&*off.open(b"abc").unwrap(), b"abc");
        assert_eq!(&*cipher(&format!("k1:{A}")).open(b"abc").unwrap(), b"abc");
        assert!(cipher(&format!("k1:{A}")).is_stale(b"abc"));
        assert!(!off.is_stale(b"abc"));
    }

    #[test]
    fn a_missing_unknown_or_wrong_key_is_named() {
        let sealed = cipher(&format!("k1:{A}")).seal(b"payload".to_vec());
        assert_eq!(
            Cipher::off().open(&sealed).unwrap_err(),
            OpenError::NoKeys {
                key_id: "k1".into()
            }
        );
        let unknown = cipher(&format!("k2:{B}"))
            .open(&sealed)
            .unwrap_err()
            .to_string();
        assert!(
            unknown.contains("key `k1`, which TOPLOG_ENCRYPTION_KEY does not list"),
            "{unknown}"
        );
        let wrong = cipher(&format!("k1:{B}"))
            .open(&sealed)
            .unwrap_err()
            .to_string();
        assert!(
            wrong.starts_with("key `k1` from TOPLOG_ENCRYPTION_KEY does not decrypt it"),
            "{wrong}"
        );
    }

    #[test]
    fn rotation_reads_old_keys_and_writes_the_current() {
        let old = cipher(&format!("k1:{A}"));
        let rotated = cipher(&format!("k2:{B},k1:{A}"));
        let before = old.seal(b"before".to_vec());
        assert_eq!(&*rotated.open(&before).unwrap(), b"before");
        assert!(rotated.is_stale(&before));
        let after = rotated.seal(b"after".to_vec());
        assert!(!rotated.is_stale(&after));
        assert_eq!(Cipher::key_use(&after).unwrap(), KeyUse::Key("k2".into()));
    }

    #[test]
    fn a_sealed_line_is_hex_and_opens_back() {
        let c = cipher(&format!("k1:{A}"));
        let line = r#"{"path":"/api/v1/keys","key_id":"abc"}"#;
        let sealed = c.seal_line(line);
        assert!(sealed.bytes().all(|b| b.is_ascii_hexdigit()) && !sealed.contains("keys"));
        assert_eq!(c.open_line(&sealed).unwrap(), line);
        assert_eq!(Cipher::off().seal_line(line), line);
        assert_eq!(c.open_line(line).unwrap(), line);
        assert!(c.open_line(&sealed[..sealed.len() - 3]).is_err());
    }

    proptest! {
        #[test]
        fn every_cut_and_every_flip_is_refused(plain in prop::collection::vec(any::<u8>(), 0..200), at in any::<prop::sample::Index>()) {
            let c = cipher(&format!("k1:{A}"));
            let sealed = c.seal(plain.clone());
            let cut = at.index(sealed.len());
            prop_assert!(c.open(&sealed[..cut.max(MAGIC.len())]).is_err());
            let mut flipped = sealed.clone();
            flipped[cut] ^= 0x40;
            prop_assert!(c.open(&flipped).map(|p| p.into_owned() != plain).unwrap_or(true));
        }
    }
}
