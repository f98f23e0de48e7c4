//! Turning an ingest request body into validated events: content encoding
//! (gzip, zstd), content type (JSON array, `{"events":[...]}`, NDJSON), then
//! every row checked before anything is written.

use std::borrow::Cow;
use std::io::Read;

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use toplog_types::{Event, ValidationLimits};

use crate::api::ApiError;

/// Undoes `Content-Encoding`, refusing to inflate past `limit` bytes.
pub(crate) fn decode_body<'a>(
    encoding: Option<&str>,
    body: &'a [u8],
    limit: usize,
) -> Result<Cow<'a, [u8]>, ApiError> {
    let inflate = |mut reader: Box<dyn Read + '_>, name: &str| {
        let mut out = Vec::new();
        reader
            .by_ref()
            .take(limit as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| {
                ApiError::bad_request("invalid_encoding", format!("body is not valid {name}: {e}"))
            })?;
        if out.len() > limit {
            return Err(ApiError::too_large(format!(
                "decompressed body exceeds the limit of {limit} bytes"
            )));
        }
        Ok(Cow::Owned(out))
    };
    match encoding.map(|e| e.trim().to_ascii_lowercase()).as_deref() {
        None | Some("") | Some("identity") => Ok(Cow::Borrowed(body)),
        Some("gzip") | Some("x-gzip") => {
            inflate(Box::new(flate2::read::MultiGzDecoder::new(body)), "gzip")
        }
        Some("zstd") => {
            let decoder = zstd::stream::read::Decoder::new(body).map_err(|e| {
                ApiError::bad_request("invalid_encoding", format!("body is not valid zstd: {e}"))
            })?;
            inflate(Box::new(decoder), "zstd")
        }
        Some(other) => Err(ApiError::unsupported(
            "unsupported_encoding",
            format!("Content-Encoding `{other}` is not supported (use gzip, zstd or none)"),
        )),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyFormat {
    Json,
    NdJson,
}

impl BodyFormat {
    pub(crate) fn from_content_type(ct: Option<&str>) -> Result<Self, ApiError> {
        let Some(ct) = ct else {
            return Err(ApiError::unsupported(
                "unsupported_content_type",
                "missing Content-Type (use application/json or application/x-ndjson)".into(),
            ));
        };
        let mime = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match mime.as_str() {
            "application/json" => Ok(Self::Json),
            "application/x-ndjson" | "application/ndjson" | "application/jsonlines" => {
                Ok(Self::NdJson)
            }
            _ => Err(ApiError::unsupported(
                "unsupported_content_type",
                format!(
                    "Content-Type `{ct}` is not supported (use application/json or application/x-ndjson)"
                ),
            )),
        }
    }
}

/// Parses and validates every row; the first bad row rejects the batch.
pub(crate) fn parse_events(
    format: BodyFormat,
    body: &[u8],
    limits: &ValidationLimits,
) -> Result<Vec<Event>, ApiError> {
    match read_valid(format, body, limits) {
        Some(events) => Ok(events),
        None => explain(format, body, limits),
    }
}

/// The events of a body whose every row is well-formed and valid, read
/// straight from its bytes ([`Event::from_json_slice`]); `None` for any other
/// body, which [`explain`] then reads through `Value`s to answer the same
/// events or name the first fault.
fn read_valid(format: BodyFormat, body: &[u8], limits: &ValidationLimits) -> Option<Vec<Event>> {
    /// `{"events": [...]}`, nothing else.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Wrapped<'a> {
        #[serde(borrow)]
        events: Vec<&'a RawValue>,
    }
    let rows: Vec<&[u8]> = match format {
        BodyFormat::NdJson => lines(body)
            .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
            .collect(),
        BodyFormat::Json => {
            let rows = match body.iter().find(|b| !b.is_ascii_whitespace()) {
                Some(b'[') => serde_json::from_slice::<Vec<&RawValue>>(body).ok()?,
                _ => serde_json::from_slice::<Wrapped<'_>>(body).ok()?.events,
            };
            rows.into_iter().map(|r| r.get().as_bytes()).collect()
        }
    };
    rows.into_iter()
        .map(|row| Event::from_json_slice(row, limits))
        .collect()
}

/// The lines of an NDJSON body, without their `\n`; as `split` on `\n`
/// gives them, a body ending in `\n` included, found with `memchr`'s
/// vector search instead of a byte at a time.
fn lines(body: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    memchr::memchr_iter(b'\n', body)
        .map(Some)
        .chain(std::iter::once(None))
        .map(move |end| {
            let end = end.unwrap_or(body.len());
            let line = &body[start..end];
            start = end + 1;
            line
        })
}

/// [`parse_events`] through `Value`s: slower, and names the row and the
/// field of the first fault.
fn explain(
    format: BodyFormat,
    body: &[u8],
    limits: &ValidationLimits,
) -> Result<Vec<Event>, ApiError> {
    let rows: Vec<Value> = match format {
        BodyFormat::Json => match serde_json::from_slice::<Value>(body) {
            Ok(Value::Array(rows)) => rows,
            Ok(Value::Object(mut obj)) => match obj.remove("events") {
                Some(Value::Array(rows)) if obj.is_empty() => rows,
                Some(Value::Array(_)) => {
                    let extra = obj.keys().next().cloned().unwrap_or_default();
                    return Err(ApiError::bad_request(
                        "invalid_body",
                        format!("unexpected top-level field `{extra}`"),
                    ));
                }
                _ => {
                    return Err(ApiError::bad_request(
                        "invalid_body",
                        "expected a JSON array of events or an object {\"events\": [...]}".into(),
                    ));
                }
            },
            Ok(_) => {
                return Err(ApiError::bad_request(
                    "invalid_body",
                    "expected a JSON array of events or an object {\"events\": [...]}".into(),
                ));
            }
            Err(e) => {
                return Err(ApiError::bad_request(
                    "malformed_json",
                    format!("body is not valid JSON: {e}"),
                ));
            }
        },
        BodyFormat::NdJson => {
            let mut rows = Vec::new();
            for (line_no, line) in lines(body).enumerate() {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let row = rows.len();
                let v = serde_json::from_slice(line).map_err(|e| {
                    ApiError::bad_request(
                        "malformed_json",
                        format!("row {row} (line {}) is not valid JSON: {e}", line_no + 1),
                    )
                    .with_row(row)
                })?;
                rows.push(v);
            }
            rows
        }
    };
    rows.iter()
        .enumerate()
        .map(|(row, v)| Event::from_json(v, row, limits).map_err(ApiError::from))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::Write;
    use toplog_types::Micros;

    fn limits() -> ValidationLimits {
        ValidationLimits {
            now: Micros::now(),
            max_future_us: 300_000_000,
            max_age_us: 86_400_000_000,
        }
    }

    /// A valid row; its timestamp is one fixed minute ago, so rows built at
    /// different moments of a test are equal.
    fn row(id: &str) -> String {
        static AT: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
        let ms = AT.get_or_init(|| Micros::now().get() / 1000 - 60_000);
        format!(
            r#"{{"request_id":"{id}","timestamp":{ms},"endpoint":"GET /a","status_code":200,"latency_ms":1.5}}"#
        )
    }

    #[test]
    fn three_body_shapes_parse_alike() {
        let arr = format!("[{},{}]", row("a"), row("b"));
        let obj = format!(r#"{{"events":[{},{}]}}"#, row("a"), row("b"));
        let nd = format!("{}\n\n{}\n", row("a"), row("b"));
        let a = parse_events(BodyFormat::Json, arr.as_bytes(), &limits()).unwrap();
        let b = parse_events(BodyFormat::Json, obj.as_bytes(), &limits()).unwrap();
        let c = parse_events(BodyFormat::NdJson, nd.as_bytes(), &limits()).unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a, b);
        assert_eq!(a, c);
        // Valid bodies take the fast path, and it reads what the `Value` path reads.
        for (format, body) in [
            (BodyFormat::Json, &arr),
            (BodyFormat::Json, &obj),
            (BodyFormat::NdJson, &nd),
        ] {
            let fast = read_valid(format, body.as_bytes(), &limits());
            assert_eq!(fast.as_ref(), Some(&a));
            assert_eq!(explain(format, body.as_bytes(), &limits()).ok(), fast);
        }
        // A body with a fault anywhere is left to the `Value` path.
        let extra = format!(r#"{{"events":[{}],"more":1}}"#, row("a"));
        let bad_row = format!("{}\n{{\"request_id\":\"x\"}}\n", row("a"));
        assert_eq!(
            read_valid(BodyFormat::Json, extra.as_bytes(), &limits()),
            None
        );
        assert_eq!(
            read_valid(BodyFormat::NdJson, bad_row.as_bytes(), &limits()),
            None
        );
        let e = parse_events(BodyFormat::NdJson, bad_row.as_bytes(), &limits())
            .err()
            .unwrap();
        assert_eq!((e.row, e.status.as_u16()), (Some(1), 400));
    }

    #[test]
    fn gzip_and_zstd_bodies_and_bombs() {
        let body = row("a");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(body.as_bytes()).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(
            decode_body(Some("gzip"), &gz, 1 << 20).unwrap(),
            body.as_bytes()
        );
        let zs = zstd::bulk::compress(body.as_bytes(), 3).unwrap();
        assert_eq!(
            decode_body(Some("zstd"), &zs, 1 << 20).unwrap(),
            body.as_bytes()
        );
        let bomb = zstd::bulk::compress(&vec![b' '; 10_000], 3).unwrap();
        assert_eq!(
            decode_body(Some("zstd"), &bomb, 1000)
                .err()
                .map(|e| e.status.as_u16()),
            Some(413)
        );
        assert_eq!(
            decode_body(Some("br"), b"x", 10)
                .err()
                .map(|e| e.status.as_u16()),
            Some(415)
        );
        assert_eq!(
            decode_body(Some("gzip"), b"not gzip", 10)
                .err()
                .map(|e| e.status.as_u16()),
            Some(400)
        );
    }

    #[test]
    fn lines_are_what_split_gives() {
        for body in [
            &b""[..],
            b"\n",
            b"\n\n",
            b"a",
            b"a\n",
            b"a\nb",
            b"a\r\n\nbc\n \n",
            b"\na\n\n",
        ] {
            let split: Vec<&[u8]> = body.split(|b| *b == b'\n').collect();
            assert_eq!(lines(body).collect::<Vec<_>>(), split, "{body:?}");
        }
    }

    #[test]
    fn ndjson_error_names_row() {
        let nd = format!("{}\n{{oops\n", row("a"));
        let e = parse_events(BodyFormat::NdJson, nd.as_bytes(), &limits())
            .err()
            .unwrap();
        assert_eq!((e.code, e.row), ("malformed_json", Some(1)));
    }
}
