//! Microseconds since the Unix epoch, UTC: the one time unit stored anywhere.

use chrono::{DateTime, SecondsFormat, Utc};

/// A point in time as microseconds since 1970-01-01T00:00:00Z.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
pub struct Micros(i64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error("`{0}` is not an RFC 3339 timestamp (e.g. 2026-01-02T03:04:05Z) or epoch milliseconds")]
    Unparsable(String),
    #[error("timestamp {0} is out of the supported range (years 1970 to 9999)")]
    OutOfRange(String),
}

/// Earliest storable instant (the epoch) and latest (end of year 9999).
const MIN_MICROS: i64 = 0;
const MAX_MICROS: i64 = 253_402_300_799_999_999;

impl Micros {
    pub const fn new(us: i64) -> Self {
        Self(us)
    }

    pub const fn get(self) -> i64 {
        self.0
    }

    pub fn now() -> Self {
        Self(Utc::now().timestamp_micros())
    }

    pub fn from_millis(ms: i64) -> Result<Self, TimeError> {
        let us = ms
            .checked_mul(1000)
            .filter(|us| (MIN_MICROS..=MAX_MICROS).contains(us))
            .ok_or_else(|| TimeError::OutOfRange(ms.to_string()))?;
        Ok(Self(us))
    }

    /// Parses RFC 3339 (any offset, converted to UTC) or a string of epoch milliseconds.
    pub fn parse(s: &str) -> Result<Self, TimeError> {
        let s = s.trim();
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            let ms: i64 = s.parse().map_err(|_| TimeError::OutOfRange(s.to_owned()))?;
            return Self::from_millis(ms);
        }
        let dt =
            DateTime::parse_from_rfc3339(s).map_err(|_| TimeError::Unparsable(s.to_owned()))?;
        let us = dt.timestamp_micros();
        if !(MIN_MICROS..=MAX_MICROS).contains(&us) {
            return Err(TimeError::OutOfRange(s.to_owned()));
        }
        Ok(Self(us))
    }

    /// RFC 3339 in UTC with microseconds, e.g. `2026-01-02T03:04:05.123456Z`.
    /// The UTC date, `YYYY-MM-DD` (the raw number if out of range).
    pub fn utc_date(self) -> String {
        match DateTime::<Utc>::from_timestamp_micros(self.0) {
            Some(dt) => dt.format("%Y-%m-%d").to_string(),
            None => self.0.to_string(),
        }
    }

    pub fn to_rfc3339(self) -> String {
        match DateTime::<Utc>::from_timestamp_micros(self.0) {
            Some(dt) => dt.to_rfc3339_opts(SecondsFormat::Micros, true),
            None => self.0.to_string(),
        }
    }

    pub fn saturating_add_micros(self, us: i64) -> Self {
        Self(self.0.saturating_add(us))
    }

    pub fn saturating_sub_micros(self, us: i64) -> Self {
        Self(self.0.saturating_sub(us))
    }

    /// Start of the partition of length `len_us` holding this instant (the
    /// earliest instant if that start is before it).
    pub fn floor_to(self, len_us: i64) -> Self {
        let len = len_us.max(1);
        Self(self.0.div_euclid(len).checked_mul(len).unwrap_or(i64::MIN))
    }
}

impl std::fmt::Display for Micros {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_forms() {
        let a = Micros::parse("2026-01-02T03:04:05.5Z").unwrap_or_default();
        let b = Micros::parse("1767323045500").unwrap_or_default();
        assert_eq!(a, b);
        assert_eq!(a.get(), 1_767_323_045_500_000);
        assert_eq!(Micros::parse("2026-01-02T04:04:05.5+01:00"), Ok(a));
        assert_eq!(a.to_rfc3339(), "2026-01-02T03:04:05.500000Z");
    }

    #[test]
    fn rejects_garbage_and_out_of_range() {
        assert!(matches!(
            Micros::parse("yesterday"),
            Err(TimeError::Unparsable(_))
        ));
        assert!(matches!(
            Micros::parse("1969-12-31T23:59:59Z"),
            Err(TimeError::OutOfRange(_))
        ));
        assert!(Micros::parse("99999999999999999999").is_err());
    }

    #[test]
    fn floors_to_partition() {
        let day = 86_400_000_000;
        assert_eq!(Micros::new(day + 5).floor_to(day), Micros::new(day));
    }
}
