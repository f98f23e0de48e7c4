//! Load generator for a running toplog node. With `TOPLOG_API_KEY` set, it
//! shows that key (a node with access control on).
//!
//! - `loadgen generate --events N --out FILE`: the workload as NDJSON, or as
//!   Parquet when FILE ends in `.parquet`.
//! - `loadgen send --server URL --events N`: sends the workload over HTTP
//!   (NDJSON batches on N connections; `--protocol grpc`: toplog.v1 `Ingest`
//!   calls on N HTTP/2 connections) and reports acknowledged events/s,
//!   acknowledgement latency, freshness (acknowledged -> visible in a top-K
//!   answer), then runs the query mix.
//! - `loadgen query --server URL`: the query mix alone: per query, p50/p99 of
//!   the latency seen by the client and of the server's own `took_ms`.
//!
//! `--end` (workload) and `--now` (query mix) fix the instants the workload
//! and the query ranges end at, so a comparison can load the same events
//! elsewhere and ask the same questions; `--report FILE` writes every query's
//! range, answer and latencies as JSON.
//!
//! With `--server-pid`, the node's peak and current resident memory are
//! read from /proc and reported.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use toplog_proto::v1;

use clap::{Args, Parser, Subcommand};
use toplog_benches::workload::{Generator, Workload, ndjson_line};
use toplog_engine::parquet::ParquetEventWriter;
use toplog_types::Micros;

const HOUR_US: i64 = 3_600_000_000;
const DAY_US: i64 = 24 * HOUR_US;

#[derive(Parser)]
#[command(about = "Generates request traffic for toplog and measures it")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Protocol {
    Http,
    Grpc,
}

#[derive(Subcommand)]
enum Cmd {
    /// Writes the workload to an NDJSON file, or Parquet if it ends in `.parquet`.
    Generate {
        #[command(flatten)]
        w: WorkloadArgs,
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Sends the workload to a node, then runs the query mix.
    Send {
        #[command(flatten)]
        w: WorkloadArgs,
        #[command(flatten)]
        q: QueryArgs,
        /// Concurrent connections.
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// Events per request.
        #[arg(long, default_value_t = 10_000)]
        batch: usize,
        /// Freshness probes sent while loading (each adds one event under the
        /// endpoint `GET /loadgen/probe/<n>`); 0 for none.
        #[arg(long, default_value_t = 100)]
        probes: usize,
        /// How batches go: NDJSON over HTTP, or toplog.v1 `Ingest` over gRPC
        /// (same port, one HTTP/2 connection per `--connections`).
        #[arg(long, value_enum, default_value_t = Protocol::Http)]
        protocol: Protocol,
    },
    /// Runs the query mix against a loaded node.
    Query {
        #[command(flatten)]
        q: QueryArgs,
    },
}

#[derive(Args, Clone)]
struct WorkloadArgs {
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Days of traffic, ending now.
    #[arg(long, default_value_t = 30.0)]
    days: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = 2_000)]
    endpoints: usize,
    #[arg(long, default_value_t = 1_000_000)]
    users: u64,
    /// Unix seconds the traffic ends at (default: a minute ago).
    #[arg(long)]
    end: Option<i64>,
}

#[derive(Args, Clone)]
struct QueryArgs {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Times each query of the mix is run.
    #[arg(long, default_value_t = 50)]
    repeat: usize,
    /// The node's process id, to report its memory.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Unix seconds the query ranges end at (default: now).
    #[arg(long)]
    now: Option<i64>,
    /// Writes each query's parameters, answer and latencies to this JSON file.
    #[arg(long)]
    report: Option<std::path::PathBuf>,
}

impl WorkloadArgs {
    fn generator(&self) -> Generator {
        // By default a minute short of now, so no event is "in the future" for the node.
        let end = self.end.map_or_else(
            || Micros::now().saturating_sub_micros(60_000_000),
            |s| Micros::new(s * 1_000_000),
        );
        Generator::new(
            Workload {
                seed: self.seed,
                endpoints: self.endpoints,
                users: self.users,
                end,
                // 15 minutes short of the span, so events generated first are still
                // inside a 30-day retention when they are sent.
                span_us: (self.days * DAY_US as f64) as i64 - 15 * 60_000_000,
            },
            self.events,
        )
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn summary(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (percentile(&v, 0.5), percentile(&v, 0.99))
}

/// CPU seconds (user and system) process `pid` has used since it started.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces), from field 3 on.
    let mut rest = stat.rsplit_once(')')?.1.split_whitespace();
    let utime: f64 = rest.nth(11)?.parse().ok()?;
    let stime: f64 = rest.next()?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime + stime) / tick)
}

fn memory(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match cli.cmd {
        Cmd::Generate { w, out } => {
            let started = Instant::now();
            let file = std::io::BufWriter::new(std::fs::File::create(&out)?);
            if out.extension().is_some_and(|x| x == "parquet") {
                let mut writer = ParquetEventWriter::new(file)?;
                for e in w.generator() {
                    writer.write(&e)?;
                }
                writer.finish()?.flush()?;
            } else {
                let mut file = file;
                let mut line = String::new();
                for e in w.generator() {
                    line.clear();
                    ndjson_line(&e, &mut line);
                    line.push('\n');
                    file.write_all(line.as_bytes())?;
                }
                file.flush()?;
            }
            eprintln!(
                "wrote {} events to {} in {:.1} s",
                w.events,
                out.display(),
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Cmd::Send {
            w,
            q,
            connections,
            batch,
            probes,
            protocol,
        } => rt.block_on(async move {
            let ingest = send(&w, &q, connections, batch, probes, protocol).await?;
            query_mix(&q, ingest).await
        }),
        Cmd::Query { q } => rt.block_on(query_mix(&q, serde_json::Value::Null)),
    }
}

async fn send(
    w: &WorkloadArgs,
    q: &QueryArgs,
    connections: usize,
    batch: usize,
    probes: usize,
    protocol: Protocol,
) -> anyhow::Result<serde_json::Value> {
    let started = Instant::now();
    let mut bodies: Vec<Vec<u8>> = Vec::new();
    let mut body = String::new();
    let mut in_body = 0;
    let mut requests: Vec<v1::IngestRequest> = Vec::new();
    let mut request = v1::IngestRequest::default();
    for e in w.generator() {
        match protocol {
            Protocol::Http => {
                ndjson_line(&e, &mut body);
                body.push('\n');
            }
            Protocol::Grpc => request.events.push(e.into()),
        }
        in_body += 1;
        if in_body == batch {
            bodies.push(std::mem::take(&mut body).into_bytes());
            requests.push(std::mem::take(&mut request));
            in_body = 0;
        }
    }
    if in_body > 0 {
        bodies.push(body.into_bytes());
        requests.push(request);
    }
    let bytes: usize = match protocol {
        Protocol::Http => bodies.iter().map(Vec::len).sum(),
        Protocol::Grpc => requests.iter().map(prost::Message::encoded_len).sum(),
    };
    eprintln!(
        "generated {} events in {} requests ({:.0} MiB of {}) in {:.1} s",
        w.events,
        bodies.len(),
        bytes as f64 / (1 << 20) as f64,
        match protocol {
            Protocol::Http => "NDJSON",
            Protocol::Grpc => "protobuf",
        },
        started.elapsed().as_secs_f64()
    );
    // Each request is sent once: taken, not cloned (a clone of 10,000 events
    // is client work the NDJSON path does not do).
    let requests: Arc<Vec<std::sync::Mutex<Option<v1::IngestRequest>>>> = Arc::new(
        requests
            .into_iter()
            .map(|r| std::sync::Mutex::new(Some(r)))
            .collect(),
    );
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(connections * 2)
        .timeout(Duration::from_secs(300))
        .default_headers(api_key_header()?)
        .build()?;
    let url = format!("{}/api/v1/requests", q.server);
    let bodies = Arc::new(bodies);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (client, url, bodies, next) =
            (client.clone(), url.clone(), bodies.clone(), next.clone());
        let requests = requests.clone();
        let server = q.server.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            if protocol == Protocol::Grpc {
                let mut grpc = v1::toplog_client::ToplogClient::connect(server)
                    .await?
                    .max_encoding_message_size(usize::MAX);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(slot) = requests.get(i) else {
                        break;
                    };
                    let request = slot
                        .lock()
                        .map_err(|_| anyhow::anyhow!("batch {i}: lock poisoned"))?
                        .take()
                        .unwrap_or_default();
                    let mut request = tonic::Request::new(request);
                    if let Ok(key) = std::env::var("TOPLOG_API_KEY") {
                        let bearer = format!("Bearer {key}").parse()?;
                        request.metadata_mut().insert("authorization", bearer);
                    }
                    let t = Instant::now();
                    grpc.ingest(request)
                        .await
                        .map_err(|e| anyhow::anyhow!("batch {i}: {e}"))?;
                    latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                }
                return Ok(latencies);
            }
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(i) else { break };
                let t = Instant::now();
                let resp = client
                    .post(&url)
                    .header("content-type", "application/x-ndjson")
                    .body(body.clone())
                    .send()
                    .await?;
                let status = resp.status();
                let text = resp.text().await?;
                if !status.is_success() {
                    anyhow::bail!("batch {i}: {status}: {text}");
                }
                latencies.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let prober = tokio::spawn(freshness(
        client.clone(),
        q.server.clone(),
        probes,
        next.clone(),
        bodies.len(),
    ));
    let mut acks = Vec::new();
    for t in tasks {
        acks.extend(t.await??);
    }
    let secs = started.elapsed().as_secs_f64();
    let fresh = prober.await??;
    let (a50, a99) = summary(acks);
    let mut stats = serde_json::json!({
        "events": w.events, "seconds": secs, "events_per_s": w.events as f64 / secs,
        "ack_ms": {"p50": a50, "p99": a99},
    });
    println!(
        "ingest ({}): {} events in {secs:.1} s = {:.0} events/s acknowledged ({connections} connections, {batch} per request); ack latency p50 {a50:.1} ms, p99 {a99:.1} ms",
        match protocol {
            Protocol::Http => "NDJSON over HTTP",
            Protocol::Grpc => "gRPC",
        },
        w.events,
        w.events as f64 / secs
    );
    if !fresh.is_empty() {
        let n = fresh.len();
        let (f50, f99) = summary(fresh);
        println!("freshness ({n} probes): p50 {f50:.2} ms, p99 {f99:.2} ms");
        stats["freshness_ms"] = serde_json::json!({"p50": f50, "p99": f99});
    }
    if let Some((hwm, rss)) = q.server_pid.and_then(memory) {
        println!("server memory after load: peak RSS {hwm:.0} MiB, RSS {rss:.0} MiB");
        stats["peak_rss_mib"] = serde_json::json!(hwm);
    }
    if let Some(cpu) = q.server_pid.and_then(cpu_seconds) {
        let per = cpu / w.events as f64 * 1e6;
        println!("server CPU through the load: {cpu:.1} s, {per:.2} us per event");
        stats["server_cpu_s"] = serde_json::json!(cpu);
    }
    Ok(stats)
}

/// While batches are being sent, sends one probe event at a time and polls
/// top-K until it shows: the time from its acknowledgement to its visibility.
async fn freshness(
    client: reqwest::Client,
    server: String,
    probes: usize,
    sent: Arc<AtomicUsize>,
    total: usize,
) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::new();
    let every = total / probes.max(1);
    let mut n = 0;
    while n < probes && sent.load(Ordering::Relaxed) < total {
        if sent.load(Ordering::Relaxed) < n * every {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let endpoint = format!("GET /loadgen/probe/{n}");
        let now = Micros::now();
        let event = serde_json::json!([{
            "timestamp": now.to_rfc3339(), "endpoint": endpoint, "user_id": "loadgen",
            "status_code": 200, "latency_ms": 1.0,
        }]);
        let resp = client
            .post(format!("{server}/api/v1/requests"))
            .json(&event)
            .send()
            .await?;
        anyhow::ensure!(resp.status().is_success(), "probe {n}: {}", resp.status());
        let acked = Instant::now();
        let start = now.saturating_sub_micros(60_000_000).to_rfc3339();
        let end = now.saturating_add_micros(60_000_000).to_rfc3339();
        loop {
            let body: serde_json::Value = client
                .get(format!(
                    "{server}/api/v1/requests/top-k?k=1&metric=frequency&{}&start={start}&end={end}",
                    param("endpoint", &endpoint)
                ))
                .send()
                .await?
                .json()
                .await?;
            if body["data"].as_array().is_some_and(|d| !d.is_empty()) {
                out.push(acked.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            anyhow::ensure!(
                acked.elapsed() < Duration::from_secs(30),
                "probe {n} never showed"
            );
        }
        n += 1;
    }
    Ok(out)
}

/// One query of the mix: what it asks, as the comparison script needs to ask
/// it elsewhere, and its URL path.
struct MixQuery {
    name: &'static str,
    /// `top_k`, `history` or `timeseries`.
    kind: &'static str,
    metric: &'static str,
    by: &'static str,
    min_count: u64,
    /// `[start, end)` in microseconds (history: whole UTC days from the start's to the end's).
    start_us: i64,
    end_us: i64,
    endpoint: Option<String>,
    path: String,
}

/// `Authorization: Bearer $TOPLOG_API_KEY` when the variable is set (a node
/// with access control on); no header otherwise.
fn api_key_header() -> anyhow::Result<reqwest::header::HeaderMap> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Ok(key) = std::env::var("TOPLOG_API_KEY") {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {key}").parse()?,
        );
    }
    Ok(headers)
}

/// The query mix, each run `repeat` times over ranges ending at `--now`.
async fn query_mix(q: &QueryArgs, ingest: serde_json::Value) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .default_headers(api_key_header()?)
        .build()?;
    let now = q
        .now
        .map_or_else(Micros::now, |s| Micros::new(s * 1_000_000));
    let top = |name, metric, by, len: i64, min_count| {
        let start = now.saturating_sub_micros(len);
        MixQuery {
            name,
            kind: "top_k",
            metric,
            by,
            min_count,
            start_us: start.get(),
            end_us: now.get(),
            endpoint: None,
            path: format!(
                "/api/v1/requests/top-k?k=10&metric={metric}&by={by}&min_count={min_count}&start={}&end={}",
                start.to_rfc3339(),
                now.to_rfc3339()
            ),
        }
    };
    // The busiest endpoint, for the per-minute series.
    let busiest: serde_json::Value = client
        .get(format!(
            "{}{}",
            q.server,
            top("", "frequency", "endpoint", 30 * DAY_US, 0).path
        ))
        .send()
        .await?
        .json()
        .await?;
    let endpoint = busiest["data"][0]["request_id"]
        .as_str()
        .unwrap_or("GET /")
        .to_owned();
    // Whole days up to yesterday: today also holds the freshness probes, sent
    // after `now`, which a comparison loading the workload alone does not have.
    let yesterday = now.floor_to(DAY_US).saturating_sub_micros(DAY_US);
    let month_ago = yesterday.saturating_sub_micros(29 * DAY_US);
    let day_ago = now.saturating_sub_micros(DAY_US);
    let mix = [
        top(
            "top-10 endpoints by frequency, 1 h",
            "frequency",
            "endpoint",
            HOUR_US,
            0,
        ),
        top(
            "top-10 endpoints by frequency, 24 h",
            "frequency",
            "endpoint",
            DAY_US,
            0,
        ),
        top(
            "top-10 endpoints by frequency, 30 d",
            "frequency",
            "endpoint",
            30 * DAY_US,
            0,
        ),
        top(
            "top-10 users by frequency, 7 d",
            "frequency",
            "user_id",
            7 * DAY_US,
            0,
        ),
        top(
            "top-10 endpoints by p99, 24 h (min_count 100)",
            "latency_p99",
            "endpoint",
            DAY_US,
            100,
        ),
        top(
            "top-10 endpoints by error rate, 24 h (min_count 100)",
            "error_rate",
            "endpoint",
            DAY_US,
            100,
        ),
        MixQuery {
            name: "history, 30 days",
            kind: "history",
            metric: "",
            by: "",
            min_count: 0,
            start_us: month_ago.get(),
            end_us: yesterday.get() + DAY_US,
            endpoint: None,
            path: format!(
                "/api/v1/requests/history?start_date={}&end_date={}",
                chrono_date(month_ago),
                chrono_date(yesterday)
            ),
        },
        MixQuery {
            name: "one endpoint per minute, 24 h",
            kind: "timeseries",
            metric: "frequency",
            by: "",
            min_count: 0,
            start_us: day_ago.get(),
            end_us: now.get(),
            path: format!(
                "/api/v1/requests/timeseries?metric=frequency&interval=1m&{}&start={}&end={}",
                param("endpoint", &endpoint),
                day_ago.to_rfc3339(),
                now.to_rfc3339()
            ),
            endpoint: Some(endpoint),
        },
    ];
    println!("| query | over HTTP p50 | p99 | inside the server p50 | p99 |");
    println!("|---|---|---|---|---|");
    let mut report = Vec::new();
    for m in mix {
        let url = format!("{}{}", q.server, m.path);
        let (mut outside, mut inside) = (Vec::new(), Vec::new());
        let mut answer = serde_json::Value::Null;
        for _ in 0..q.repeat {
            let t = Instant::now();
            let resp = client.get(&url).send().await?;
            let status = resp.status();
            let body: serde_json::Value = resp.json().await?;
            outside.push(t.elapsed().as_secs_f64() * 1000.0);
            anyhow::ensure!(status.is_success(), "{}: {status}: {body}", m.name);
            if let Some(ms) = body["meta"]["took_ms"].as_f64() {
                inside.push(ms);
            }
            answer = body;
        }
        let (o50, o99) = summary(outside);
        let (i50, i99) = summary(inside);
        let shown = |v: f64| {
            if v.is_nan() {
                "n/a".to_owned()
            } else {
                format!("{v:.3} ms")
            }
        };
        println!(
            "| {} | {} | {} | {} | {} |",
            m.name,
            shown(o50),
            shown(o99),
            shown(i50),
            shown(i99)
        );
        report.push(serde_json::json!({
            "name": m.name, "kind": m.kind, "metric": m.metric, "by": m.by,
            "min_count": m.min_count, "start_us": m.start_us, "end_us": m.end_us,
            "endpoint": m.endpoint, "path": m.path,
            "http_ms": {"p50": o50, "p99": o99},
            "inside_ms": (!i50.is_nan()).then(|| serde_json::json!({"p50": i50, "p99": i99})),
            "answer": answer,
        }));
    }
    let memory = q.server_pid.and_then(memory);
    if let Some((hwm, rss)) = memory {
        println!("server memory: peak RSS {hwm:.0} MiB, RSS {rss:.0} MiB");
    }
    if let Some(path) = &q.report {
        let doc = serde_json::json!({
            "now_us": now.get(),
            "server_peak_rss_mib": memory.map(|m| m.0),
            "ingest": ingest,
            "queries": report,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&doc)?)?;
    }
    Ok(())
}

/// `YYYY-MM-DD` of an instant.
fn chrono_date(t: Micros) -> String {
    t.to_rfc3339().chars().take(10).collect()
}

/// `name=value` form-encoded, for a query string.
fn param(name: &str, value: &str) -> String {
    reqwest::Url::parse_with_params("http://localhost/", [(name, value)])
        .ok()
        .and_then(|u| u.query().map(str::to_owned))
        .unwrap_or_default()
}
