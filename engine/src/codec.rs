//! Little-endian and LEB128 varint primitives shared by the on-disk codecs.
//! Readers never panic: running off the end is a `CodecError`.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct CodecError(pub(crate) String);

pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(crate) fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

pub(crate) fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

pub(crate) fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// A cursor over a byte slice with bounds-checked reads.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.buf.len())
            .ok_or_else(|| {
                CodecError(format!(
                    "unexpected end of data at byte {} (wanted {n} more)",
                    self.pos
                ))
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, CodecError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, CodecError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, CodecError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }

    pub(crate) fn i64(&mut self) -> Result<i64, CodecError> {
        Ok(self.u64()? as i64)
    }

    /// A LEB128 varint of at most 10 bytes whose value fits in 64 bits.
    /// Reads from the slice left without a bounds-checked read per byte:
    /// most of a segment's decode is varints.
    pub(crate) fn varint(&mut self) -> Result<u64, CodecError> {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let mut v: u64 = 0;
        for (i, &b) in rest.iter().take(10).enumerate() {
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                if i == 9 && b > 1 {
                    break;
                }
                self.pos += i + 1;
                return Ok(v);
            }
        }
        if rest.len() < 10 && rest.iter().all(|b| b & 0x80 != 0) {
            return Err(CodecError(format!(
                "unexpected end of data at byte {} (in a varint)",
                self.buf.len()
            )));
        }
        Err(CodecError(format!("malformed varint at byte {}", self.pos)))
    }

    /// A varint used as a length or count: must not exceed what is left to read / `max`.
    pub(crate) fn len(&mut self, max: usize) -> Result<usize, CodecError> {
        let v = self.varint()?;
        usize::try_from(v)
            .ok()
            .filter(|v| *v <= max)
            .ok_or_else(|| {
                CodecError(format!(
                    "length {v} exceeds the limit {max} at byte {}",
                    self.pos
                ))
            })
    }

    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos.min(self.buf.len())
    }

    pub(crate) fn bytes(&mut self) -> Result<&'a [u8], CodecError> {
        let n = self.len(self.remaining())?;
        self.take(n)
    }

    pub(crate) fn string(&mut self) -> Result<String, CodecError> {
        self.str().map(str::to_owned)
    }

    /// A string borrowed from the buffer.
    pub(crate) fn str(&mut self) -> Result<&'a str, CodecError> {
        let b = self.bytes()?;
        std::str::from_utf8(b)
            .map_err(|_| CodecError(format!("invalid UTF-8 before byte {}", self.pos)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn varint_round_trips(v: u64, z: i64) {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            put_varint(&mut out, zigzag(z));
            let mut r = Reader::new(&out);
            prop_assert_eq!(r.varint(), Ok(v));
            prop_assert_eq!(r.varint().map(unzigzag), Ok(z));
            prop_assert!(r.is_empty());
        }

        /// Any bytes: a varint is read whole or not at all, and one read
        /// agrees with decoding LEB128 a byte at a time.
        #[test]
        fn varint_reads_what_leb128_says(bytes in prop::collection::vec(any::<u8>(), 0..12)) {
            let mut want: Option<(u64, usize)> = None;
            let mut v: u64 = 0;
            for (i, &b) in bytes.iter().enumerate().take(10) {
                v |= u64::from(b & 0x7f) << (7 * i);
                if b & 0x80 == 0 {
                    if !(i == 9 && b > 1) {
                        want = Some((v, i + 1));
                    }
                    break;
                }
            }
            let mut r = Reader::new(&bytes);
            match (r.varint(), want) {
                (Ok(got), Some((v, used))) => {
                    prop_assert_eq!(got, v);
                    prop_assert_eq!(r.position(), used);
                }
                (Err(_), None) => prop_assert_eq!(r.position(), 0),
                (got, want) => prop_assert!(false, "{:?} against {:?}", got, want),
            }
        }
    }
}
