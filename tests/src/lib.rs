//! Harness for end-to-end tests: starts the real `toplog` binary on a free
//! port with its own data directory, and stops it cleanly or with `kill -9`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod cluster;
pub mod moto;
pub mod peers;
pub mod shards;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The `toplog` binary: `$TOPLOG_BIN`, or `target/<profile>/toplog` next to
/// this test; either way checked to be newer than every source file it is
/// built from, so a test never runs a stale build.
pub fn binary() -> PathBuf {
    static CHECKED: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    CHECKED
        .get_or_init(|| {
            let bin = match std::env::var_os("TOPLOG_BIN") {
                Some(p) => PathBuf::from(p),
                None => {
                    let exe = std::env::current_exe().expect("test executable path");
                    // target/<profile>/deps/<test> -> target/<profile>/toplog
                    exe.parent()
                        .and_then(Path::parent)
                        .map(|d| d.join("toplog"))
                        .expect("target dir")
                }
            };
            let built = std::fs::metadata(&bin).and_then(|m| m.modified()).unwrap_or_else(|_| {
                panic!(
                    "{} not found: build it first (`cargo build --bin toplog`) or set TOPLOG_BIN",
                    bin.display()
                )
            });
            let workspace = manifest_dir().join("..");
            if let Some(newer) = newest_source(&workspace).filter(|(t, _)| *t > built) {
                panic!(
                    "{} is older than {}: rebuild it (`cargo build --bin toplog`)",
                    bin.display(),
                    newer.1.display()
                );
            }
            bin
        })
        .clone()
}

/// This crate's directory in the checkout being tested: taken when the
/// test runs (cargo and nextest set it), so a target directory shared by
/// several checkouts never points a test at another checkout's files.
pub fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}

/// The most recently changed source file the binary is built from.
fn newest_source(workspace: &Path) -> Option<(std::time::SystemTime, PathBuf)> {
    fn visit(path: &Path, newest: &mut Option<(std::time::SystemTime, PathBuf)>) {
        if path.is_dir() {
            for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
                visit(&entry.path(), newest);
            }
        } else if path
            .extension()
            .is_some_and(|e| e == "rs" || e == "toml" || e == "lock")
            && let Ok(t) = std::fs::metadata(path).and_then(|m| m.modified())
            && newest.as_ref().is_none_or(|(n, _)| t > *n)
        {
            *newest = Some((t, path.to_path_buf()));
        }
    }
    let mut newest = None;
    for krate in ["types", "wal", "engine", "compaction", "query", "server"] {
        visit(&workspace.join(krate).join("src"), &mut newest);
        visit(&workspace.join(krate).join("Cargo.toml"), &mut newest);
    }
    visit(&workspace.join("Cargo.toml"), &mut newest);
    visit(&workspace.join("Cargo.lock"), &mut newest);
    newest
}

/// The admin API key every node the harness starts is given at first start
/// (`TOPLOG_ADMIN_KEY`), and that [`client`] shows; hand it to other
/// clients as `TOPLOG_API_KEY`.
pub const ADMIN_KEY: &str = "tlk_0000000a11ce_00000000000000000000000000000000000000ad";

/// A running node.
pub struct Server {
    child: Child,
    pub base: String,
    pub data_dir: PathBuf,
}

impl Server {
    /// Starts `toplog serve` on 127.0.0.1 with an OS-chosen port and waits until it listens.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Self {
        Self::start_with_env(data_dir, extra, &[])
    }

    /// [`Server::start`] with these environment variables set.
    pub fn start_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_listening("127.0.0.1:0", data_dir, extra, env)
    }

    /// [`Server::start_with_env`] on a given address (a cluster's members
    /// name each other's before they start).
    pub fn start_listening(
        listen: &str,
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let mut child = Command::new(binary())
            .args(["serve", "--listen", listen, "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env("TOPLOG_ADMIN_KEY", ADMIN_KEY)
            .envs(env.iter().copied())
            .env("TOPLOG_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start toplog");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("address=").nth(1) {
                    let _ = tx.send(addr.split_whitespace().next().unwrap_or("").to_owned());
                }
                if std::env::var_os("TOPLOG_TEST_LOGS").is_some() {
                    eprintln!("[toplog] {line}");
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("toplog did not report its address");
        Self {
            child,
            base: format!("http://{addr}"),
            data_dir: data_dir.to_path_buf(),
        }
    }

    /// Starts a node and waits for `/readyz`.
    pub fn start_ready(data_dir: &Path, extra: &[&str]) -> Self {
        let s = Self::start(data_dir, extra);
        s.wait_ready();
        s
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn wait_ready(&self) {
        let client = client();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = client.get(self.url("/readyz")).send()
                && r.status() == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "toplog at {} not ready after 60s",
                self.base
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no chance to flush or sync anything.
    pub fn kill9(mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("wait");
    }

    /// SIGTERM, then waits for the process to exit by itself.
    pub fn terminate(self) -> ExitStatus {
        self.stop_with(libc::SIGTERM)
    }

    /// SIGINT (Ctrl-C), which must stop the node as cleanly as SIGTERM.
    pub fn interrupt(self) -> ExitStatus {
        self.stop_with(libc::SIGINT)
    }

    fn stop_with(mut self, signal: libc::c_int) -> ExitStatus {
        // SAFETY: kill(2) with a pid we own and a valid signal number has no memory effects.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill -{signal} failed");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "toplog did not exit within 60s of signal {signal}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd` to its end; fails the test, with what it wrote to stderr,
/// unless it succeeded.
pub fn succeeded(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// An HTTP client that shows [`ADMIN_KEY`].
pub fn client() -> reqwest::blocking::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&format!("Bearer {ADMIN_KEY}")).expect("header"),
    );
    reqwest::blocking::Client::builder()
        .default_headers(headers)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

/// Every stored event, read page by page through `GET /api/v1/requests`.
pub fn all_events(server: &Server) -> Vec<Value> {
    let client = client();
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        // Cursors are URL-safe by construction.
        let page = match &cursor {
            Some(c) => format!("/api/v1/requests?limit=10000&cursor={c}"),
            None => "/api/v1/requests?limit=10000".to_owned(),
        };
        let body: Value = client
            .get(server.url(&page))
            .send()
            .expect("list")
            .json()
            .expect("json");
        assert_eq!(body["status"], "success", "{body}");
        out.extend(body["data"].as_array().expect("data").iter().cloned());
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return out,
        }
    }
}

/// Sends `events` in batches of 100 and checks each is acknowledged.
pub fn send_all(server: &Server, events: &[Value]) {
    for chunk in events.chunks(100) {
        let r = client()
            .post(server.url("/api/v1/requests"))
            .json(&chunk)
            .send()
            .unwrap_or_else(|e| panic!("send: {e}"));
        assert_eq!(r.status(), 200, "batch not acknowledged");
    }
}

/// Epoch milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A UTC instant in epoch milliseconds as `YYYY-MM-DD` and as the API's
/// RFC 3339 with microseconds (civil-from-days; no date crate needed).
pub fn utc(ms: i64) -> (String, String) {
    let secs = ms.div_euclid(1000);
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let date = format!("{y:04}-{m:02}-{d:02}");
    let time = format!(
        "{date}T{:02}:{:02}:{:02}.{:06}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60,
        ms.rem_euclid(1000) * 1000
    );
    (date, time)
}

/// The rows of a top-K answer as (key, value as a whole number): for counts.
pub fn count_rows(body: &Value) -> Vec<(String, u64)> {
    body["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|r| {
            (
                r["request_id"].as_str().expect("key").to_owned(),
                r["metric_value"].as_f64().expect("value") as u64,
            )
        })
        .collect()
}

/// Every file under `dir`, by its path relative to `dir`, with its bytes.
pub fn files(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).expect("list a directory") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                todo.push(path);
            } else {
                let rel = path
                    .strip_prefix(dir)
                    .unwrap_or(&path)
                    .display()
                    .to_string();
                out.insert(rel, std::fs::read(&path).expect("read a file"));
            }
        }
    }
    out
}

/// A port free on 127.0.0.1 now (the OS's choice; for a node that must
/// know its address before it starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `GET path` as the admin; fails the test unless it answers 200; the body.
pub fn get_ok(server: &Server, path: &str) -> Value {
    let r = client().get(server.url(path)).send().expect("GET");
    let status = r.status();
    let body: Value = r.json().expect("a JSON body");
    assert_eq!(status, 200, "{path}: {body}");
    body
}

/// 20 minutes of traffic from `base_ms` on two endpoints, 40 requests a
/// minute each, 1 in 40 failing; in minutes 10 to 14 half of `GET /a`'s
/// requests fail (what the alerting tests fire a rule on).
pub fn error_burst(base_ms: i64) -> Vec<Value> {
    let mut events = Vec::new();
    for m in 0..20i64 {
        for j in 0..40i64 {
            for (endpoint, burst) in [("GET /a", (10..15).contains(&m)), ("GET /b", false)] {
                let failed = (burst && j % 2 == 0) || j == 0;
                events.push(
                    serde_json::json!({"request_id": format!("{endpoint}-{m}-{j}"),
                    "timestamp": base_ms + m * 60_000 + j * 1000, "endpoint": endpoint,
                    "user_id": format!("u{}", j % 5), "method": "GET",
                    "status_code": if failed { 500 } else { 200 }, "latency_ms": 12.0}),
                );
            }
        }
    }
    events
}

/// An HTTP server on 127.0.0.1 that answers every request `200` and keeps
/// what it got: a webhook's receiving end.
pub struct Receiver {
    pub port: u16,
    got: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
}

/// A request a [`Receiver`] got: its headers (names in lower case) and its
/// body, parsed if JSON, else as a string.
pub type Received = (Vec<(String, String)>, Value);

impl Receiver {
    /// Listens on `port` (a free one, from [`free_port`]).
    pub fn start(port: u16) -> Self {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind the receiver");
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = got.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                // Headers, then as many body bytes as they announce.
                let (headers, body) = loop {
                    let Ok(n) = conn.read(&mut chunk) else {
                        break (Vec::new(), Vec::new());
                    };
                    if n == 0 {
                        break (Vec::new(), Vec::new());
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    let headers: Vec<(String, String)> = head
                        .lines()
                        .skip(1)
                        .filter_map(|l| l.split_once(':'))
                        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                        .collect();
                    let len: usize = headers
                        .iter()
                        .find(|(k, _)| k == "content-length")
                        .and_then(|(_, v)| v.parse().ok())
                        .unwrap_or(0);
                    while buf.len() < end + 4 + len {
                        match conn.read(&mut chunk) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body = buf[end + 4..(end + 4 + len).min(buf.len())].to_vec();
                    break (headers, body);
                };
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
                if !headers.is_empty() {
                    // JSON, or else the text as it came (a form).
                    let body = serde_json::from_slice(&body).unwrap_or_else(|_| {
                        Value::String(String::from_utf8_lossy(&body).into_owned())
                    });
                    keep.lock().unwrap().push((headers, body));
                }
            }
        });
        Self { port, got }
    }

    /// What it got so far: each request's headers (names in lower case) and JSON body.
    pub fn got(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }
}

/// Each sample of a `GET /metrics` text: series with its labels -> value.
pub fn samples(text: &str) -> std::collections::HashMap<String, f64> {
    (text.lines())
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().expect("a number")))
        })
        .collect()
}

/// The value of `series` (a name with its labels, as `GET /metrics` writes
/// it) on the node at `base` now; 0 if it shows no such series.
pub fn metric(base: &str, series: &str) -> f64 {
    let text = (client().get(format!("{base}/metrics")).send())
        .and_then(|r| r.text())
        .expect("GET /metrics");
    samples(&text).get(series).copied().unwrap_or(0.0)
}
