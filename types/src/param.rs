//! Every parameter a query takes, declared once: its name, its shape and what
//! it means. A shape both checks a value (a query-string text or a JSON body
//! field) and describes itself as JSON Schema, so what the server refuses and
//! what its OpenAPI document allows come from the same declaration.

use crate::Micros;
use serde_json::{Value, json};

/// A value its parameter's declaration does not allow: the parameter and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{name}`: {message}")]
pub struct ParamError {
    pub name: &'static str,
    pub message: String,
}

type Result<T> = std::result::Result<T, ParamError>;

/// The largest epoch-milliseconds value a time takes: 14 digits (year 5138),
/// so that the schema's pattern for digit strings says exactly this.
pub(crate) const MAX_EPOCH_MS: u64 = 99_999_999_999_999;
/// The pattern of epoch milliseconds written as a string.
pub(crate) const EPOCH_MS_PATTERN: &str = "^(0|[1-9][0-9]{0,13})$";
/// The last instant RFC 3339 times clamp to: the end of year 9999.
const MAX_MICROS: i64 = 253_402_300_799_999_999;
/// Digits a duration may have: `999999d` is its largest, far from overflowing
/// microseconds, so arithmetic on it needs no further check.
const MAX_DURATION_DIGITS: usize = 6;

/// What values a parameter takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// An instant: RFC 3339 (any year; a query clamps it to 1970..9999) or
    /// epoch milliseconds.
    Time,
    /// A UTC day, `YYYY-MM-DD`.
    Date,
    /// A duration: 1 to 6 digits, no leading zero, and a unit `s`, `m`, `h`
    /// or `d` (`90s`, `1h`, `7d`).
    Duration,
    /// A whole number from `min` to `max`, written in plain digits.
    Int { min: u64, max: u64 },
    /// One of these names.
    Choice(&'static [&'static str]),
    /// A string of `min` to `max` characters.
    Text { min: usize, max: usize },
    /// A `next_cursor` of an earlier page: a position, any well-formed one
    /// is valid.
    Cursor,
    /// A rate: 1 to 9 digits, `/` and a unit `s`, `m` or `h` (`100/s`), or
    /// `none`.
    Rate,
}

/// One parameter: its name, shape and meaning.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    pub name: &'static str,
    pub shape: Shape,
    pub doc: &'static str,
}

/// A checked value.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Time(Micros),
    /// Days since 1970-01-01 (negative before it).
    Date(i64),
    /// Microseconds.
    Duration(i64),
    Int(u64),
    Choice(&'static str),
    Text(String),
}

impl Param {
    /// Checks a value sent as text (a query string).
    pub fn parse(&self, text: &str) -> Result<Arg> {
        let bad = |message: String| ParamError {
            name: self.name,
            message,
        };
        match self.shape {
            Shape::Time => parse_time(text).map(Arg::Time).ok_or_else(|| {
                bad(format!(
                    "`{text}` is not an RFC 3339 time (e.g. 2026-01-02T03:04:05Z) or epoch milliseconds (0 to {MAX_EPOCH_MS})"
                ))
            }),
            Shape::Date => parse_date(text)
                .map(Arg::Date)
                .ok_or_else(|| bad(format!("`{text}` is not a date (YYYY-MM-DD)"))),
            Shape::Duration => parse_duration(text).map(Arg::Duration).ok_or_else(|| {
                bad(format!(
                    "`{text}` is not a duration: 1 to {MAX_DURATION_DIGITS} digits without a leading zero and a unit s, m, h or d (e.g. 90s, 1h, 7d)"
                ))
            }),
            Shape::Int { min, max } => digits(text)
                .filter(|n| (min..=max).contains(n))
                .map(Arg::Int)
                .ok_or_else(|| bad(format!("`{text}` is not a whole number from {min} to {max}"))),
            Shape::Choice(names) => names
                .iter()
                .find(|n| **n == text)
                .map(|n| Arg::Choice(n))
                .ok_or_else(|| bad(format!("`{text}` is not one of {}", names.join(", ")))),
            Shape::Text { min, max } => {
                let n = text.chars().count();
                if (min..=max).contains(&n) {
                    Ok(Arg::Text(text.to_owned()))
                } else {
                    Err(bad(format!("is {n} characters long; {min} to {max} are allowed")))
                }
            }
            Shape::Cursor => parse_cursor(text)
                .map(|()| Arg::Text(text.to_owned()))
                .ok_or_else(|| bad("is not a `next_cursor` this API returned".into())),
            Shape::Rate => is_rate(text)
                .then(|| Arg::Text(text.to_owned()))
                .ok_or_else(|| bad(format!("`{text}` is not a rate like 100/s, 6000/m or 100000/h, or `none`"))),
        }
    }

    /// Checks a value sent in a JSON body: times and whole numbers as JSON
    /// numbers (times also as strings), everything else as strings.
    pub fn parse_json(&self, value: &Value) -> Result<Arg> {
        let bad = |message: String| ParamError {
            name: self.name,
            message,
        };
        match (self.shape, value) {
            (Shape::Time | Shape::Int { .. }, Value::Number(n)) => match n.as_u64() {
                Some(n) => self.parse(&n.to_string()),
                None => Err(bad(format!("{n} is not a whole number in range"))),
            },
            (Shape::Int { .. }, _) => Err(bad(format!("expected a whole number, found {value}"))),
            // As the schema says: in JSON, epoch milliseconds are a number.
            (Shape::Time, Value::String(s))
                if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) =>
            {
                Err(bad(format!(
                    "`{s}` is a string: give epoch milliseconds as a number, or an RFC 3339 time"
                )))
            }
            (_, Value::String(s)) => self.parse(s),
            _ => Err(bad(format!("expected a string, found {value}"))),
        }
    }

    /// [`Param::schema`] with the parameter's meaning as its description:
    /// a field of a JSON body.
    pub fn field_schema(&self) -> Value {
        let mut s = self.schema();
        s["description"] = json!(self.doc);
        s
    }

    /// [`Param::field_schema`] of an optional field, which may be `null`.
    pub fn optional_field_schema(&self) -> Value {
        let mut s = self.field_schema();
        s["nullable"] = json!(true);
        s
    }

    /// The parameter's schema, as OpenAPI 3.0 writes JSON Schema.
    pub fn schema(&self) -> Value {
        match self.shape {
            Shape::Time => json!({"oneOf": [
                {"type": "string", "format": "date-time"},
                {"type": "integer", "minimum": 0, "maximum": MAX_EPOCH_MS},
            ]}),
            Shape::Date => json!({"type": "string", "format": "date"}),
            Shape::Duration => json!({"type": "string", "pattern": DURATION_PATTERN}),
            Shape::Int { min, max } => json!({"type": "integer", "minimum": min, "maximum": max}),
            Shape::Choice(names) => json!({"type": "string", "enum": names}),
            Shape::Text { min, max } => {
                json!({"type": "string", "minLength": min, "maxLength": max})
            }
            Shape::Cursor => json!({"type": "string", "pattern": CURSOR_PATTERN}),
            Shape::Rate => json!({"type": "string", "pattern": RATE_PATTERN}),
        }
    }
}

const DURATION_PATTERN: &str = "^[1-9][0-9]{0,5}(s|m|h|d)$";
/// A cursor: a time, a count of rows at that time already read (below the
/// engine's limit of a million) and the hex of a request id (up to 128
/// characters, so 512 bytes).
const RATE_PATTERN: &str = "^(none|[1-9][0-9]{0,8}/[smh])$";

/// Whether `text` matches [`RATE_PATTERN`].
fn is_rate(text: &str) -> bool {
    if text == "none" {
        return true;
    }
    let Some((count, unit)) = text.split_once('/') else {
        return false;
    };
    (1..=9).contains(&count.len())
        && !count.starts_with('0')
        && count.bytes().all(|b| b.is_ascii_digit())
        && matches!(unit, "s" | "m" | "h")
}

const CURSOR_PATTERN: &str = "^(0|[1-9][0-9]{0,17})\\.(0|[1-9][0-9]{0,5})\\.([0-9a-f]{2}){0,512}$";

/// Plain decimal digits, no sign and no leading zero (what JSON Schema's
/// `integer` serializes to): `+5` and `007` are not whole numbers here.
fn digits(text: &str) -> Option<u64> {
    let plain = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    if plain { text.parse().ok() } else { None }
}

/// RFC 3339 (clamped to the years 1970 to 9999) or epoch milliseconds
/// (plain digits, at most [`MAX_EPOCH_MS`]).
pub(crate) fn parse_time(text: &str) -> Option<Micros> {
    if let Some(ms) = digits(text) {
        return (ms <= MAX_EPOCH_MS).then(|| Micros::new(ms as i64 * 1000));
    }
    let us = chrono::DateTime::parse_from_rfc3339(text)
        .ok()?
        .timestamp_micros();
    Some(Micros::new(us.clamp(0, MAX_MICROS)))
}

fn parse_date(text: &str) -> Option<i64> {
    // chrono takes `+12345-01-01` and one-digit months; the format is exactly 10 characters.
    if text.len() != 10 || text.as_bytes()[4] != b'-' || text.as_bytes()[7] != b'-' {
        return None;
    }
    let date = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?;
    Some((date - epoch).num_days())
}

/// The API's narrower form of [`crate::parse_duration`]: its pattern first
/// (no `ms`, no leading zero, at most 6 digits), then the one parser.
fn parse_duration(text: &str) -> Option<i64> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = text.split_at(split);
    let fits = (1..=MAX_DURATION_DIGITS).contains(&n.len())
        && !n.starts_with('0')
        && matches!(unit, "s" | "m" | "h" | "d");
    if !fits {
        return None;
    }
    i64::try_from(crate::parse_duration(text).ok()?.as_micros()).ok()
}

fn parse_cursor(text: &str) -> Option<()> {
    let mut parts = text.splitn(3, '.');
    let (ts, skip, hex) = (parts.next()?, parts.next()?, parts.next()?);
    let ok = digits(ts).is_some_and(|_| ts.len() <= 18)
        && digits(skip).is_some_and(|_| skip.len() <= 6)
        && hex.len() % 2 == 0
        && hex.len() <= 1024
        && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    ok.then_some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(shape: Shape) -> Param {
        Param {
            name: "x",
            shape,
            doc: "",
        }
    }

    #[test]
    fn whole_numbers_are_plain_digits_in_range() {
        let k = p(Shape::Int { min: 1, max: 10 });
        assert_eq!(k.parse("10").ok(), Some(Arg::Int(10)));
        for bad in ["0", "11", "+5", "05", "-1", "1.0", "", " 1", "1e1"] {
            assert!(k.parse(bad).is_err(), "{bad}");
        }
        assert!(k.parse_json(&json!(3)).is_ok());
        assert!(k.parse_json(&json!("3")).is_err());
        assert!(k.parse_json(&json!(3.5)).is_err());
    }

    #[test]
    fn a_json_time_is_an_rfc_3339_string_or_a_number_of_milliseconds() {
        let t = p(Shape::Time);
        assert_eq!(
            t.parse_json(&json!(4)).ok(),
            Some(Arg::Time(Micros::new(4_000)))
        );
        assert!(t.parse_json(&json!("2026-01-02T03:04:05Z")).is_ok());
        // The query string's "4" is a number; in JSON, "4" is a string.
        assert!(t.parse("4").is_ok());
        let err = t.parse_json(&json!("4")).map(|_| ()).err();
        assert!(
            err.as_ref()
                .is_some_and(|e| e.message.contains("as a number")),
            "{err:?}"
        );
    }

    #[test]
    fn durations_match_their_pattern_and_cannot_overflow() {
        let d = p(Shape::Duration);
        assert_eq!(d.parse("90s").ok(), Some(Arg::Duration(90_000_000)));
        assert_eq!(
            d.parse("999999d").ok(),
            Some(Arg::Duration(999_999 * 86_400_000_000))
        );
        for bad in [
            "0s",
            "01m",
            "1000000d",
            "106750000d",
            "1ms",
            "1 h",
            "h",
            "1y",
            "",
        ] {
            assert!(d.parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn times_take_both_forms_and_clamp_years() {
        let t = p(Shape::Time);
        assert_eq!(
            t.parse("2026-01-02T03:04:05.5Z").ok(),
            t.parse("1767323045500").ok()
        );
        assert_eq!(
            t.parse("1900-01-01T00:00:00Z").ok(),
            Some(Arg::Time(Micros::new(0)))
        );
        for bad in [
            "yesterday",
            "-5",
            "100000000000000",
            "2026-01-02",
            " 5",
            "05",
        ] {
            assert!(t.parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dates_are_exactly_year_month_day() {
        let d = p(Shape::Date);
        assert_eq!(d.parse("1970-01-02").ok(), Some(Arg::Date(1)));
        assert_eq!(d.parse("1969-12-31").ok(), Some(Arg::Date(-1)));
        for bad in ["1970-1-02", "+1970-01-02", "1970-02-30", "19700102"] {
            assert!(d.parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn text_counts_characters_and_cursors_are_positions() {
        let t = p(Shape::Text { min: 1, max: 2 });
        assert!(t.parse("éé").is_ok());
        assert!(t.parse("").is_err() && t.parse("abc").is_err());
        let c = p(Shape::Cursor);
        assert!(c.parse("1767323045500000.0.6162").is_ok());
        assert!(c.parse("0.0.").is_ok());
        for bad in ["1.2", "1.2.abc", "1.2.AB", "-1.0.", "1.0000001.", "01.0."] {
            assert!(c.parse(bad).is_err(), "{bad}");
        }
    }
}
