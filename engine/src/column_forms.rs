//! How segment version 2 lays out its columns before zstd (the request ids:
//! `request_ids.rs`). Each layout puts like next to like: timestamps as
//! deltas or deltas of deltas, whichever is shorter; dictionaries sorted by
//! value when the names are most of their bytes; a method that its
//! endpoint names as nothing at all; latencies in byte planes (byte 0 of
//! every row, then byte 1, ...).

use toplog_types::method_from_endpoint;

use crate::codec::{CodecError, Reader, put_bytes, put_varint, unzigzag, zigzag};
use crate::columns::{DictColumn, StrColumn};

const TS_DELTAS: u8 = 0;
const TS_DELTAS_OF_DELTAS: u8 = 1;
const METHOD_DICTIONARY: u8 = 0;
const METHOD_OF_ENDPOINT: u8 = 1;
/// See [`put_dictionary`].
const SORTED_PAST: usize = 8;

/// Timestamps in row order: form u8, then the first as i64 and the rest as
/// zigzag varints of either each one's delta (form 0) or, after the first
/// delta, each delta's change (form 1), whichever takes fewer bytes.
pub(crate) fn put_timestamps(ts: &[i64], out: &mut Vec<u8>) {
    // Each row's delta and that delta's change from the row before's.
    let steps = || {
        ts.windows(2).scan(0i64, |prev, w| {
            let delta = w[1].wrapping_sub(w[0]);
            let change = delta.wrapping_sub(*prev);
            *prev = delta;
            Some((zigzag(delta), zigzag(change)))
        })
    };
    // Bytes of a varint: one per 7 bits.
    let len = |v: u64| (64 - v.leading_zeros()).max(1).div_ceil(7) as usize;
    let (deltas, changes) = steps().fold((0, 0), |(d, c), (delta, change)| {
        (d + len(delta), c + len(change))
    });
    let form = if changes < deltas {
        TS_DELTAS_OF_DELTAS
    } else {
        TS_DELTAS
    };
    out.push(form);
    if let Some(first) = ts.first() {
        out.extend_from_slice(&first.to_le_bytes());
    }
    for (delta, change) in steps() {
        put_varint(out, if form == TS_DELTAS { delta } else { change });
    }
}

/// The `rows` timestamps [`put_timestamps`] wrote (`with_form`), or a
/// version 1 segment's (form 0 without its byte); every byte must be used.
pub(crate) fn read_timestamps(
    raw: &[u8],
    rows: usize,
    with_form: bool,
) -> Result<Vec<i64>, CodecError> {
    let mut r = Reader::new(raw);
    let form = if with_form { r.u8()? } else { TS_DELTAS };
    if form > TS_DELTAS_OF_DELTAS {
        return Err(CodecError("column `timestamp`: unknown form".into()));
    }
    let mut ts = Vec::with_capacity(rows);
    if rows > 0 {
        let (mut t, mut delta) = (r.i64()?, 0i64);
        ts.push(t);
        for _ in 1..rows {
            let v = unzigzag(r.varint()?);
            delta = if form == TS_DELTAS {
                v
            } else {
                delta.wrapping_add(v)
            };
            t = t.wrapping_add(delta);
            ts.push(t);
        }
    }
    done(&r, "timestamp")?;
    Ok(ts)
}

/// A dictionary column: varint count, the values (varint length + UTF-8),
/// then each of the `rows` rows' varint id (`ids`, into `values`). A
/// dictionary of more than one value per [`SORTED_PAST`] rows (users) is
/// written sorted: its names are most of its bytes, and sorted names share
/// their beginnings with their neighbours, which zstd finds. A smaller one
/// (endpoints) keeps the order values came in: the ids are most of its
/// bytes, and values that come early are mostly the frequent ones, whose
/// ids are then one byte.
pub(crate) fn put_dictionary(
    values: &[&str],
    ids: impl Iterator<Item = u32>,
    rows: usize,
    out: &mut Vec<u8>,
) {
    let mut sorted: Vec<u32> = (0..values.len() as u32).collect();
    if values.len() * SORTED_PAST > rows {
        sorted.sort_unstable_by(|a, b| values[*a as usize].cmp(values[*b as usize]));
    }
    let mut rank = vec![0u32; sorted.len()];
    for (r, id) in sorted.iter().enumerate() {
        rank[*id as usize] = r as u32;
    }
    put_varint(out, sorted.len() as u64);
    for id in &sorted {
        put_bytes(out, values[*id as usize].as_bytes());
    }
    for id in ids {
        put_varint(out, u64::from(rank[id as usize]));
    }
}

/// The method column: form u8 1 alone if every row's method is the one its
/// endpoint starts with (`GET /items`), else form 0 and a dictionary as
/// [`put_dictionary`] writes it. Each of `methods` and `endpoints` is a
/// dictionary's values and the rows' ids into them.
pub(crate) fn put_methods<'a>(
    (methods, method_ids): (&[&'a str], impl Iterator<Item = u32> + Clone),
    (endpoints, endpoint_ids): (&[&'a str], impl Iterator<Item = u32>),
    rows: usize,
    out: &mut Vec<u8>,
) {
    let named: Vec<Option<&str>> = endpoints.iter().map(|e| method_from_endpoint(e)).collect();
    let all_named = (method_ids.clone().zip(endpoint_ids))
        .all(|(m, e)| named[e as usize] == Some(methods[m as usize]));
    if all_named {
        out.push(METHOD_OF_ENDPOINT);
    } else {
        out.push(METHOD_DICTIONARY);
        put_dictionary(methods, method_ids, rows, out);
    }
}

/// The method column of a version 2 segment: its dictionary's bytes (read
/// by the caller, as a version 1 column), or `None` if every method is its
/// endpoint's.
pub(crate) fn method_dictionary(raw: &[u8]) -> Result<Option<&[u8]>, CodecError> {
    match raw.split_first() {
        Some((&METHOD_DICTIONARY, rest)) => Ok(Some(rest)),
        Some((&METHOD_OF_ENDPOINT, [])) => Ok(None),
        _ => Err(CodecError("column `method`: unknown form".into())),
    }
}

/// The methods the endpoints of `endpoint` start with, one per row.
pub(crate) fn methods_of(endpoint: &DictColumn) -> Result<DictColumn, CodecError> {
    let mut method_of = Vec::with_capacity(endpoint.values.len());
    let mut values = StrColumn::default();
    let mut found: Vec<&str> = Vec::new();
    for e in endpoint.values.iter() {
        let m = method_from_endpoint(e).ok_or_else(|| {
            CodecError(format!("column `method`: endpoint {e:?} names no method"))
        })?;
        let id = match found.iter().position(|f| *f == m) {
            Some(id) => id,
            None => {
                found.push(m);
                values.push(m);
                found.len() - 1
            }
        };
        method_of.push(id as u32);
    }
    let ids = (endpoint.ids.iter())
        .map(|e| method_of[*e as usize])
        .collect();
    Ok(DictColumn::from_parts(values, ids))
}

/// Unsigned numbers in row order: u8 width (bytes the largest needs, 0 to
/// 8), then that many planes of one byte per row, the low byte's first.
pub(crate) fn put_planes(values: impl Iterator<Item = u64> + Clone, out: &mut Vec<u8>) {
    let max = values.clone().max().unwrap_or(0);
    let width = 8 - (max.leading_zeros() / 8) as usize;
    out.push(width as u8);
    for plane in 0..width {
        out.extend(values.clone().map(|v| (v >> (8 * plane)) as u8));
    }
}

/// The `rows` numbers [`put_planes`] wrote.
pub(crate) fn read_planes(raw: &[u8], rows: usize, name: &str) -> Result<Vec<u64>, CodecError> {
    let mut r = Reader::new(raw);
    let width = usize::from(r.u8()?);
    if width > 8 {
        return Err(CodecError(format!("column `{name}`: width {width}")));
    }
    let planes = r.take(
        width
            .checked_mul(rows)
            .ok_or_else(|| CodecError("too long".into()))?,
    )?;
    done(&r, name)?;
    let mut values = vec![0u64; rows];
    for (p, plane) in planes.chunks_exact(rows.max(1)).enumerate().take(width) {
        for (v, b) in values.iter_mut().zip(plane) {
            *v |= u64::from(*b) << (8 * p);
        }
    }
    Ok(values)
}

/// Ok if `r` has read all of column `name`.
pub(crate) fn done(r: &Reader<'_>, name: &str) -> Result<(), CodecError> {
    if r.is_empty() {
        Ok(())
    } else {
        Err(CodecError(format!(
            "column `{name}`: trailing bytes at {}",
            r.position()
        )))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn timestamps_take_the_shorter_form_and_read_back() {
        let even: Vec<i64> = (0..100)
            .map(|i| 1_700_000_000_000_000 + i * 250_000)
            .collect();
        let ragged: Vec<i64> = (0..100i64).map(|i| i * i * 7919 % 1_000_003).collect();
        for (ts, form) in [(&even, TS_DELTAS_OF_DELTAS), (&ragged, TS_DELTAS)] {
            let mut raw = Vec::new();
            put_timestamps(ts, &mut raw);
            assert_eq!(raw[0], form);
            assert_eq!(&read_timestamps(&raw, ts.len(), true).unwrap(), ts);
            for cut in 0..raw.len() {
                assert!(
                    read_timestamps(&raw[..cut], ts.len(), true).is_err(),
                    "cut at {cut}"
                );
            }
        }
        let extremes = [i64::MIN, i64::MAX, 0, -1, i64::MAX];
        let mut raw = Vec::new();
        put_timestamps(&extremes, &mut raw);
        assert_eq!(read_timestamps(&raw, 5, true).unwrap(), extremes);
    }

    #[test]
    fn planes_are_as_wide_as_the_largest_value() {
        for values in [
            vec![],
            vec![0, 0],
            vec![200, 404, 503],
            vec![7, u64::MAX, 1 << 40],
        ] {
            let mut raw = Vec::new();
            put_planes(values.iter().copied(), &mut raw);
            let width = values
                .iter()
                .max()
                .map_or(0, |m| 8 - m.leading_zeros() as usize / 8);
            assert_eq!(raw.len(), 1 + width * values.len());
            assert_eq!(read_planes(&raw, values.len(), "x").unwrap(), values);
            for cut in 0..raw.len() {
                assert!(read_planes(&raw[..cut], values.len(), "x").is_err());
            }
            // A row more is refused, unless every value is 0 (no planes at all).
            assert_eq!(read_planes(&raw, values.len() + 1, "x").is_err(), width > 0);
        }
    }
}
