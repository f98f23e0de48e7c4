//! `toplog top` and `toplog history`: ask a running node and print a table (or JSON).

use std::time::Duration;

use serde_json::Value;

/// The node a command talks to, and the API key it shows.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Target {
    #[arg(long, env = "TOPLOG_SERVER", default_value = "http://127.0.0.1:8080")]
    pub(crate) server: String,
    /// An API key (`tlk_...`); without it, `<data-dir>/admin.key` if there is one.
    #[arg(long, env = "TOPLOG_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// The node's data directory, whose `admin.key` is the key when none is given.
    #[arg(long, env = "TOPLOG_DATA_DIR", default_value = "./toplog-data")]
    data_dir: std::path::PathBuf,
    /// A CA certificate (PEM) to trust for an `https://` server, besides the system's.
    #[arg(long, env = "TOPLOG_CA_FILE")]
    ca_file: Option<std::path::PathBuf>,
}

impl Target {
    /// The key to show: the one given, else the node's first admin key
    /// when this runs where the node keeps its data.
    pub(crate) fn api_key(&self) -> Option<String> {
        self.api_key.clone().or_else(|| {
            std::fs::read_to_string(self.data_dir.join("admin.key"))
                .ok()
                .map(|k| k.trim().to_owned())
        })
    }

    /// An HTTP client that trusts `--ca-file` too, with `timeout`.
    pub(crate) fn client(&self, timeout: Duration) -> anyhow::Result<reqwest::blocking::Client> {
        let mut builder = reqwest::blocking::Client::builder().timeout(timeout);
        if let Some(file) = &self.ca_file {
            let pem = std::fs::read(file)
                .map_err(|e| anyhow::anyhow!("--ca-file {}: {e}", file.display()))?;
            let ca = reqwest::Certificate::from_pem(&pem).map_err(|e| {
                anyhow::anyhow!("--ca-file {}: not a PEM certificate: {e}", file.display())
            })?;
            builder = builder.add_root_certificate(ca);
        }
        Ok(builder.build()?)
    }

    /// `request` with the key as `Authorization: Bearer`, if there is one.
    pub(crate) fn authorize(
        &self,
        request: reqwest::blocking::RequestBuilder,
    ) -> reqwest::blocking::RequestBuilder {
        match self.api_key() {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }
}

/// Fetches `path` from the node; an API error becomes a readable message.
fn fetch(target: &Target, path: &str) -> anyhow::Result<Value> {
    let client = target.client(Duration::from_secs(60))?;
    let url = format!("{}{path}", target.server.trim_end_matches('/'));
    target.answer(client.get(url))
}

impl Target {
    /// Sends `request` with the key; the JSON answer, or the API's error
    /// as a readable message.
    pub(crate) fn answer(
        &self,
        request: reqwest::blocking::RequestBuilder,
    ) -> anyhow::Result<Value> {
        let server = &self.server;
        let resp = self
            .authorize(request)
            .send()
            .map_err(|e| anyhow::anyhow!("cannot reach {server}: {e}"))?;
        let (status, url) = (resp.status(), resp.url().clone());
        let body: Value = resp
            .json()
            .map_err(|e| anyhow::anyhow!("{url}: not a JSON answer ({status}): {e}"))?;
        if !status.is_success() {
            let msg = body["error"]["message"].as_str().unwrap_or("unknown error");
            anyhow::bail!("{status}: {msg}");
        }
        Ok(body)
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Left-aligned columns sized to their widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = vec![line(header.iter().map(|h| (*h).to_owned()).collect())];
    out.push(line(widths.iter().map(|w| "-".repeat(*w)).collect()));
    out.extend(rows.iter().map(|r| line(r.clone())));
    out.join("\n")
}

fn number(v: &Value) -> String {
    match v.as_f64() {
        None => "-".into(),
        Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{f:.0}"),
        Some(f) => format!("{f:.3}"),
    }
}

pub(crate) struct TopArgs<'a> {
    pub(crate) target: &'a Target,
    pub(crate) k: usize,
    pub(crate) metric: &'a str,
    pub(crate) by: &'a str,
    pub(crate) since: std::time::Duration,
    pub(crate) json: bool,
}

pub(crate) fn top(a: &TopArgs<'_>) -> anyhow::Result<String> {
    let end = toplog_types::Micros::now();
    let start = end.saturating_sub_micros(i64::try_from(a.since.as_micros()).unwrap_or(i64::MAX));
    let path = format!(
        "/api/v1/requests/top-k?k={}&metric={}&by={}&start={}&end={}",
        a.k,
        encode(a.metric),
        encode(a.by),
        start.get() / 1000,
        end.get() / 1000 + 1
    );
    let body = fetch(a.target, &path)?;
    if a.json {
        return Ok(serde_json::to_string_pretty(&body)?);
    }
    let rows: Vec<Vec<String>> = body["data"]
        .as_array()
        .map(|d| {
            d.iter()
                .enumerate()
                .map(|(i, r)| {
                    vec![
                        (i + 1).to_string(),
                        r["request_id"].as_str().unwrap_or("").to_owned(),
                        number(&r["metric_value"]),
                        number(&r["count"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    let exact = if body["meta"]["exact"] == true {
        "exact"
    } else {
        "approximate (within 1%)"
    };
    Ok(format!(
        "{}\n{} rows, {exact}",
        table(&["#", a.by, a.metric, "count"], &rows),
        rows.len()
    ))
}

pub(crate) fn history(target: &Target, days: u32, json: bool) -> anyhow::Result<String> {
    let today = chrono::Utc::now().date_naive();
    let first = today - chrono::Days::new(u64::from(days.max(1)) - 1);
    let body = fetch(
        target,
        &format!("/api/v1/requests/history?start_date={first}&end_date={today}"),
    )?;
    if json {
        return Ok(serde_json::to_string_pretty(&body)?);
    }
    let rows: Vec<Vec<String>> = body["data"]
        .as_array()
        .map(|d| {
            d.iter()
                .map(|r| {
                    vec![
                        r["date"].as_str().unwrap_or("").to_owned(),
                        number(&r["total_requests"]),
                        number(&r["average_latency"]),
                        number(&r["error_rate"]),
                        number(&r["p99_latency"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(table(
        &["date", "requests", "avg_ms", "error_rate", "p99_ms"],
        &rows,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_urls_encode() {
        let t = table(&["a", "bb"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "a    bb\n---  --\nxyz  1");
        assert_eq!(encode("GET /x{id}"), "GET%20%2Fx%7Bid%7D");
        assert_eq!(number(&serde_json::json!(3.0)), "3");
        assert_eq!(number(&serde_json::json!(0.12345)), "0.123");
    }
}
