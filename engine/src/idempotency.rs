//! Idempotency keys: a retried batch with a known key is acknowledged again
//! without being applied twice. Keys live in the WAL entry of their batch and,
//! once flushed, in immutable key files listed by the manifest.
//!
//! Key file: magic `TPLGKEY\0` (8), version u32 = 1, count u32, then per key:
//! varint length + UTF-8 key, lsn u64, accepted u32, received_at i64; then the
//! crc32c u32 of everything before it.

use std::collections::HashMap;

use toplog_types::{Lsn, Micros};

use crate::codec::{CodecError, Reader, put_bytes};

const MAGIC: &[u8; 8] = b"TPLGKEY\0";
const VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeyRecord {
    pub(crate) lsn: Lsn,
    pub(crate) accepted: u32,
    pub(crate) received_at: Micros,
}

/// Known keys, and those not yet written to a key file. A known key is
/// held as a 128-bit hash of it (two 64-bit hashes seeded at random when the
/// process starts, so collisions cannot be aimed), not as its text: a full
/// day of keys in about 48 bytes each instead of up to 300.
#[derive(Debug, Default)]
pub(crate) struct KeyIndex {
    known: HashMap<u128, KeyRecord>,
    unflushed: Vec<(String, KeyRecord)>,
    hashers: KeyHashers,
}

#[derive(Debug, Default)]
struct KeyHashers(
    foldhash::quality::RandomState,
    foldhash::quality::RandomState,
);

impl KeyHashers {
    fn of(&self, key: &str) -> u128 {
        use std::hash::BuildHasher;
        (u128::from(self.0.hash_one(key)) << 64) | u128::from(self.1.hash_one(key))
    }
}

impl KeyIndex {
    pub(crate) fn get(&self, key: &str) -> Option<KeyRecord> {
        self.known.get(&self.hashers.of(key)).copied()
    }

    /// The key's record if it was received no more than `window_us` before `at`.
    pub(crate) fn get_within(&self, key: &str, at: Micros, window_us: i64) -> Option<KeyRecord> {
        self.get(key)
            .filter(|r| r.received_at >= at.saturating_sub_micros(window_us))
    }

    /// Records a key seen in a key file (already durable outside the log).
    pub(crate) fn load(&mut self, key: &str, rec: KeyRecord) {
        self.known.insert(self.hashers.of(key), rec);
    }

    /// Records a key applied from the log.
    pub(crate) fn insert(&mut self, key: String, rec: KeyRecord) {
        self.known.insert(self.hashers.of(&key), rec);
        self.unflushed.push((key, rec));
    }

    pub(crate) fn take_unflushed(&mut self) -> Vec<(String, KeyRecord)> {
        std::mem::take(&mut self.unflushed)
    }

    /// Forgets keys received before `cutoff`.
    pub(crate) fn expire(&mut self, cutoff: Micros) {
        self.known.retain(|_, r| r.received_at >= cutoff);
    }

    pub(crate) fn len(&self) -> usize {
        self.known.len()
    }
}

pub(crate) fn encode(keys: &[(String, KeyRecord)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + keys.len() * 48);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(keys.len() as u32).to_le_bytes());
    for (k, r) in keys {
        put_bytes(&mut out, k.as_bytes());
        out.extend_from_slice(&r.lsn.get().to_le_bytes());
        out.extend_from_slice(&r.accepted.to_le_bytes());
        out.extend_from_slice(&r.received_at.get().to_le_bytes());
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

pub(crate) fn decode(buf: &[u8]) -> Result<Vec<(String, KeyRecord)>, CodecError> {
    if buf.len() < 20 || &buf[..8] != MAGIC {
        return Err(CodecError("bad magic".into()));
    }
    let (body, crc) = buf.split_at(buf.len() - 4);
    if crc32c::crc32c(body) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
        return Err(CodecError("checksum mismatch".into()));
    }
    let mut r = Reader::new(&body[8..]);
    let version = r.u32()?;
    if version != VERSION {
        return Err(CodecError(format!(
            "unsupported key file version {version}"
        )));
    }
    let n = r.u32()? as usize;
    let mut keys = Vec::with_capacity(n.min(body.len() / 21));
    for _ in 0..n {
        let key = r.string()?;
        let lsn = Lsn::new(r.u64()?);
        let accepted = r.u32()?;
        let received_at = Micros::new(r.i64()?);
        keys.push((
            key,
            KeyRecord {
                lsn,
                accepted,
                received_at,
            },
        ));
    }
    if !r.is_empty() {
        return Err(CodecError("trailing bytes".into()));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_detects_damage() {
        let keys = vec![
            (
                "a".to_owned(),
                KeyRecord {
                    lsn: Lsn::new(3),
                    accepted: 10,
                    received_at: Micros::new(5),
                },
            ),
            (
                "bb".to_owned(),
                KeyRecord {
                    lsn: Lsn::new(4),
                    accepted: 0,
                    received_at: Micros::new(6),
                },
            ),
        ];
        let img = encode(&keys);
        assert_eq!(decode(&img), Ok(keys));
        for at in 0..img.len() {
            let mut bad = img.clone();
            bad[at] ^= 0x40;
            assert!(decode(&bad).is_err(), "flip at {at}");
        }
    }
}
