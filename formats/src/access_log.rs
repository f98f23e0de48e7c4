//! Web servers' access logs: one line per served request, in nginx's or
//! Apache's combined format with the request's duration added at the end
//! (nginx `$request_time`, Apache `%D`). A format without a duration is
//! refused up front, naming the line to add to the server's configuration:
//! toplog never guesses a latency.

use std::borrow::Cow;

use toplog_types::TypedRow;

use crate::route::RouteRules;

/// The nginx `log_format` line that gives what `nginx-timed` reads.
pub const NGINX_TIMED_LOG_FORMAT: &str = "log_format timed_combined '$remote_addr - $remote_user [$time_local] \"$request\" $status $body_bytes_sent \"$http_referer\" \"$http_user_agent\" $request_time';";

/// The Apache `LogFormat` line that gives what `apache-combined` reads.
pub const APACHE_TIMED_LOG_FORMAT: &str = "LogFormat \"%h %l %u %t \\\"%r\\\" %>s %b \\\"%{Referer}i\\\" \\\"%{User-agent}i\\\" %D\" combined_timed";

/// An access-log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// nginx's `combined` followed by `$request_time` (seconds, to the
    /// millisecond); fields nginx writes after it (`$upstream_response_time`,
    /// `$pipe`, ...) are ignored.
    NginxTimed,
    /// Apache's `combined` followed by `%D` (microseconds).
    ApacheCombined,
}

/// Why a format cannot be imported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error(
        "nginx's `combined` format has no request duration, so toplog cannot know the latency; add to nginx.conf\n    {NGINX_TIMED_LOG_FORMAT}\n    access_log /var/log/nginx/access.log timed_combined;\nand import those logs with --format nginx-timed"
    )]
    NoLatency,
    #[error("unknown format `{0}` (known: nginx-timed, nginx-combined, apache-combined)")]
    Unknown(String),
}

impl LogFormat {
    /// The format named on the command line.
    pub fn named(name: &str) -> Result<Self, FormatError> {
        match name {
            "nginx-timed" => Ok(Self::NginxTimed),
            "apache-combined" => Ok(Self::ApacheCombined),
            "nginx-combined" => Err(FormatError::NoLatency),
            other => Err(FormatError::Unknown(other.to_owned())),
        }
    }

    /// The row one line stands for, before the event checks. `Err` names the
    /// field that could not be read.
    pub fn parse<'a>(&self, line: &'a str, routes: &RouteRules) -> Result<TypedRow<'a>, LineError> {
        let mut rest = line.trim_end_matches(['\r', '\n']);
        // $remote_addr / %h, the identity (`-`), then the user.
        let _client = word(&mut rest, "remote_addr")?;
        let _ident = word(&mut rest, "ident")?;
        let user = word(&mut rest, "remote_user")?;
        let time = bracketed(&mut rest, "time_local")?;
        let request = quoted(&mut rest, "request")?;
        let status = word(&mut rest, "status")?;
        let _bytes = word(&mut rest, "body_bytes_sent")?;
        let _referer = quoted(&mut rest, "http_referer")?;
        let _agent = quoted(&mut rest, "http_user_agent")?;
        let duration = match self {
            Self::NginxTimed => "request_time",
            Self::ApacheCombined => "%D",
        };
        let latency = word(&mut rest, duration)
            .map_err(|_| LineError::new(duration, self.missing_latency()))?;
        let latency_ms = match self {
            Self::NginxTimed => seconds(latency).map(|s| s * 1000.0),
            Self::ApacheCombined => latency.parse::<u64>().ok().map(|us| us as f64 / 1000.0),
        }
        .ok_or_else(|| LineError::new(duration, format!("`{latency}` is not a duration")))?;
        let (method, target) = request_line(request)?;
        let status_code = status
            .parse::<u32>()
            .map_err(|_| LineError::new("status", format!("`{status}` is not a status code")))?;
        let timestamp_us = clf_time(time).ok_or_else(|| {
            LineError::new(
                "time_local",
                format!("`{time}` is not a time like 10/Oct/2026:13:55:36 +0000"),
            )
        })?;
        Ok(TypedRow {
            request_id: None,
            timestamp_us,
            user_id: Cow::Borrowed(if user == "-" { "" } else { user }),
            endpoint: Cow::Owned(format!("{method} {}", routes.template(target))),
            method: Some(Cow::Borrowed(method)),
            status_code,
            latency_ms,
        })
    }

    fn missing_latency(&self) -> String {
        match self {
            Self::NginxTimed => format!(
                "the line ends before `$request_time`; nginx must log with\n    {NGINX_TIMED_LOG_FORMAT}"
            ),
            Self::ApacheCombined => format!(
                "the line ends before `%D`; Apache's combined format has no request duration; log with\n    {APACHE_TIMED_LOG_FORMAT}"
            ),
        }
    }
}

/// What is wrong with one line: the field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {message}")]
pub struct LineError {
    pub field: &'static str,
    pub message: String,
}

impl LineError {
    fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

fn word<'a>(rest: &mut &'a str, field: &'static str) -> Result<&'a str, LineError> {
    let s = rest.trim_start_matches(' ');
    let end = s.find(' ').unwrap_or(s.len());
    if end == 0 {
        return Err(LineError::new(field, "the line ends before it"));
    }
    *rest = &s[end..];
    Ok(&s[..end])
}

fn bracketed<'a>(rest: &mut &'a str, field: &'static str) -> Result<&'a str, LineError> {
    let s = rest.trim_start_matches(' ');
    let inner = s
        .strip_prefix('[')
        .and_then(|s| s.split_once(']'))
        .ok_or_else(|| LineError::new(field, "expected `[...]`"))?;
    *rest = inner.1;
    Ok(inner.0)
}

/// A double-quoted field, with nginx's `\"` and `\x22` escapes left as they are.
fn quoted<'a>(rest: &mut &'a str, field: &'static str) -> Result<&'a str, LineError> {
    let s = rest.trim_start_matches(' ');
    let body = s
        .strip_prefix('"')
        .ok_or_else(|| LineError::new(field, "expected a double-quoted field"))?;
    let bytes = body.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => {
                *rest = &body[i + 1..];
                return Ok(&body[..i]);
            }
            _ => i += 1,
        }
    }
    Err(LineError::new(field, "the closing quote is missing"))
}

/// `GET /items/12?x=1 HTTP/1.1` -> (`GET`, `/items/12?x=1`).
fn request_line(request: &str) -> Result<(&str, &str), LineError> {
    let mut parts = request.split(' ');
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Err(LineError::new(
            "request",
            format!(
                "`{}` is not a request line like `GET /path HTTP/1.1`",
                shorten(request)
            ),
        ));
    };
    if method.is_empty()
        || !method.bytes().all(|b| b.is_ascii_uppercase())
        || !target.starts_with('/')
    {
        return Err(LineError::new(
            "request",
            format!(
                "`{}` is not a request line like `GET /path HTTP/1.1`",
                shorten(request)
            ),
        ));
    }
    Ok((method, target))
}

fn shorten(s: &str) -> Cow<'_, str> {
    match s.char_indices().nth(80) {
        Some((i, _)) => Cow::Owned(format!("{}...", &s[..i])),
        None => Cow::Borrowed(s),
    }
}

/// `0.003` seconds; nginx writes `-` for none.
fn seconds(s: &str) -> Option<f64> {
    let v: f64 = s.parse().ok()?;
    (v.is_finite() && v >= 0.0 && s.bytes().all(|b| b.is_ascii_digit() || b == b'.')).then_some(v)
}

/// Common Log Format time, `10/Oct/2026:13:55:36 +0200`, as epoch microseconds.
fn clf_time(s: &str) -> Option<i64> {
    let (date_time, zone) = s.split_once(' ')?;
    let mut it = date_time.splitn(4, [':', '/']);
    let day: u32 = it.next()?.parse().ok()?;
    let month = it.next()?;
    let year: i32 = it.next()?.parse().ok()?;
    let clock = it.next()?;
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| *m == month)? as u32 + 1;
    let mut hms = clock.split(':').map(|p| p.parse::<u32>().ok());
    let (h, m, sec) = (hms.next()??, hms.next()??, hms.next()??);
    if hms.next().is_some() || h > 23 || m > 59 || sec > 60 || !(1..=31).contains(&day) {
        return None;
    }
    let zone = zone.as_bytes();
    if zone.len() != 5
        || !matches!(zone[0], b'+' | b'-')
        || !zone[1..].iter().all(u8::is_ascii_digit)
    {
        return None;
    }
    let digits = |a: usize| i64::from(zone[a] - b'0') * 10 + i64::from(zone[a + 1] - b'0');
    let offset_s = (digits(1) * 3600 + digits(3) * 60) * if zone[0] == b'-' { -1 } else { 1 };
    let days = days_from_civil(year, month, day)?;
    let local = days * 86_400 + i64::from(h * 3600 + m * 60 + sec);
    Some((local - offset_s) * 1_000_000)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// algorithm); `None` for a day the month does not have.
fn days_from_civil(year: i32, month: u32, day: u32) -> Option<i64> {
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if day > month_days[month as usize - 1] {
        return None;
    }
    let y = i64::from(year) - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(month) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const NGINX: &str = r#"127.0.0.1 - alice [04/Dec/2026:17:02:55 +0100] "GET /items/123?x=1 HTTP/1.1" 200 612 "-" "curl/8.5.0" 0.003"#;

    #[test]
    fn an_nginx_timed_line_becomes_a_row() {
        let row = LogFormat::NginxTimed
            .parse(NGINX, &RouteRules::default())
            .unwrap();
        assert_eq!(row.endpoint, "GET /items/{id}");
        assert_eq!(row.method.as_deref(), Some("GET"));
        assert_eq!(row.user_id, "alice");
        assert_eq!(row.status_code, 200);
        assert!((row.latency_ms - 3.0).abs() < 1e-9);
        // 2026-12-04T16:02:55Z
        assert_eq!(row.timestamp_us, 1_796_400_175_000_000);
        // Fields nginx may write after $request_time are ignored; `-` is no user.
        let more = NGINX
            .replace("alice", "-")
            .replace(" 0.003", " 0.250 0.249 .");
        let row = LogFormat::NginxTimed
            .parse(&more, &RouteRules::default())
            .unwrap();
        assert_eq!((row.user_id.as_ref(), row.latency_ms), ("", 250.0));
    }

    #[test]
    fn an_apache_line_takes_microseconds() {
        let line = r#"10.0.0.1 - - [29/Feb/2024:23:59:59 -0500] "POST /orders HTTP/1.1" 503 0 "https://x/" "Mozilla/5.0 \"quoted\"" 1500"#;
        let row = LogFormat::ApacheCombined
            .parse(line, &RouteRules::default())
            .unwrap();
        assert_eq!(row.endpoint, "POST /orders");
        assert_eq!((row.status_code, row.latency_ms), (503, 1.5));
        // 2024-03-01T04:59:59Z
        assert_eq!(row.timestamp_us, 1_709_269_199_000_000);
    }

    #[test]
    fn formats_without_a_duration_are_refused_with_the_line_to_add() {
        let e = LogFormat::named("nginx-combined").unwrap_err().to_string();
        assert!(
            e.contains("$request_time") && e.contains("log_format timed_combined"),
            "{e}"
        );
        let combined = NGINX.trim_end_matches(" 0.003");
        let e = LogFormat::NginxTimed
            .parse(combined, &RouteRules::default())
            .unwrap_err();
        assert_eq!(e.field, "request_time");
        assert!(e.message.contains("log_format"), "{e}");
        let e = LogFormat::ApacheCombined
            .parse(combined, &RouteRules::default())
            .unwrap_err();
        assert!(e.message.contains("%D"), "{e}");
    }

    #[test]
    fn garbage_names_the_field() {
        let routes = RouteRules::default();
        for (line, field) in [
            ("", "remote_addr"),
            ("hello world", "remote_user"),
            (
                r#"1.2.3.4 - - 04/Dec/2026:17:02:55 +0100 "GET / HTTP/1.1" 200 1 "-" "-" 0.1"#,
                "time_local",
            ),
            (
                r#"1.2.3.4 - - [31/Nov/2026:17:02:55 +0100] "GET / HTTP/1.1" 200 1 "-" "-" 0.1"#,
                "time_local",
            ),
            (
                r#"1.2.3.4 - - [04/Dec/2026:17:02:55 +0100] "\x16\x03\x01" 400 1 "-" "-" 0.1"#,
                "request",
            ),
            (
                r#"1.2.3.4 - - [04/Dec/2026:17:02:55 +0100] "GET / HTTP/1.1" OK 1 "-" "-" 0.1"#,
                "status",
            ),
            (
                r#"1.2.3.4 - - [04/Dec/2026:17:02:55 +0100] "GET / HTTP/1.1" 200 1 "-" "-" -"#,
                "request_time",
            ),
            (
                r#"1.2.3.4 - - [04/Dec/2026:17:02:55 +0100] "GET / HTTP/1.1 200 1 "-" "-"#,
                "http_referer",
            ),
        ] {
            let e = LogFormat::NginxTimed.parse(line, &routes).unwrap_err();
            assert_eq!(e.field, field, "{line}: {e}");
        }
    }
}
