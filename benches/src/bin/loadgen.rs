//! Load generator for a running toplog node.
//!
//! - `loadgen generate --events N --out FILE`: the workload as NDJSON.
//! - `loadgen send --server URL --events N`: sends the workload over HTTP
//!   (NDJSON batches on N connections) and reports acknowledged events/s,
//!   acknowledgement latency, freshness (acknowledged -> visible in a top-K
//!   answer), then runs the query mix.
//! - `loadgen query --server URL`: the query mix alone: per query, p50/p99 of
//!   the latency seen by the client and of the server's own `took_ms`.
//!
//! With `--server-pid`, the node's peak and current resident memory are
//! read from /proc and reported.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use toplog_benches::workload::{Generator, Workload, ndjson_line};
use toplog_types::Micros;

const HOUR_US: i64 = 3_600_000_000;
const DAY_US: i64 = 24 * HOUR_US;

#[derive(Parser)]
#[command(about = "Generates request traffic for toplog and measures it")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Writes the workload to an NDJSON file.
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
}

impl WorkloadArgs {
    fn generator(&self) -> Generator {
        // A minute short of now, so no event is "in the future" for the node.
        let end = Micros::now().saturating_sub_micros(60_000_000);
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
            let mut file = std::io::BufWriter::new(std::fs::File::create(&out)?);
            let mut line = String::new();
            for e in w.generator() {
                line.clear();
                ndjson_line(&e, &mut line);
                line.push('\n');
                file.write_all(line.as_bytes())?;
            }
            file.flush()?;
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
        } => rt.block_on(async move {
            send(&w, &q, connections, batch, probes).await?;
            query_mix(&q).await
        }),
        Cmd::Query { q } => rt.block_on(query_mix(&q)),
    }
}

async fn send(
    w: &WorkloadArgs,
    q: &QueryArgs,
    connections: usize,
    batch: usize,
    probes: usize,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut bodies: Vec<Vec<u8>> = Vec::new();
    let mut body = String::new();
    let mut in_body = 0;
    for e in w.generator() {
        ndjson_line(&e, &mut body);
        body.push('\n');
        in_body += 1;
        if in_body == batch {
            bodies.push(std::mem::take(&mut body).into_bytes());
            in_body = 0;
        }
    }
    if in_body > 0 {
        bodies.push(body.into_bytes());
    }
    let bytes: usize = bodies.iter().map(Vec::len).sum();
    eprintln!(
        "generated {} events in {} requests ({:.0} MiB of NDJSON) in {:.1} s",
        w.events,
        bodies.len(),
        bytes as f64 / (1 << 20) as f64,
        started.elapsed().as_secs_f64()
    );
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(connections * 2)
        .timeout(Duration::from_secs(300))
        .build()?;
    let url = format!("{}/api/v1/requests", q.server);
    let bodies = Arc::new(bodies);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (client, url, bodies, next) =
            (client.clone(), url.clone(), bodies.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
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
    println!(
        "ingest: {} events in {secs:.1} s = {:.0} events/s acknowledged ({connections} connections, {batch} per request); ack latency p50 {a50:.1} ms, p99 {a99:.1} ms",
        w.events,
        w.events as f64 / secs
    );
    if !fresh.is_empty() {
        let n = fresh.len();
        let (f50, f99) = summary(fresh);
        println!("freshness ({n} probes): p50 {f50:.2} ms, p99 {f99:.2} ms");
    }
    if let Some((hwm, rss)) = q.server_pid.and_then(memory) {
        println!("server memory after load: peak RSS {hwm:.0} MiB, RSS {rss:.0} MiB");
    }
    Ok(())
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

/// The query mix, each run `repeat` times over the last 30 days ending now.
async fn query_mix(q: &QueryArgs) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let now = Micros::now();
    let ago = |us: i64| now.saturating_sub_micros(us).to_rfc3339();
    let end = now.to_rfc3339();
    let top = |metric: &str, by: &str, len: i64, min_count: u32| {
        format!(
            "/api/v1/requests/top-k?k=10&metric={metric}&by={by}&min_count={min_count}&start={}&end={end}",
            ago(len)
        )
    };
    let today = chrono_date(now);
    let month_ago = chrono_date(now.saturating_sub_micros(29 * DAY_US));
    // The busiest endpoint, for the per-minute series.
    let busiest: serde_json::Value = client
        .get(format!(
            "{}{}",
            q.server,
            top("frequency", "endpoint", 30 * DAY_US, 0)
        ))
        .send()
        .await?
        .json()
        .await?;
    let endpoint = busiest["data"][0]["request_id"]
        .as_str()
        .unwrap_or("GET /")
        .to_owned();
    let mix = [
        (
            "top-10 endpoints by frequency, 1 h",
            top("frequency", "endpoint", HOUR_US, 0),
        ),
        (
            "top-10 endpoints by frequency, 24 h",
            top("frequency", "endpoint", DAY_US, 0),
        ),
        (
            "top-10 endpoints by frequency, 30 d",
            top("frequency", "endpoint", 30 * DAY_US, 0),
        ),
        (
            "top-10 users by frequency, 7 d",
            top("frequency", "user_id", 7 * DAY_US, 0),
        ),
        (
            "top-10 endpoints by p99, 24 h (min_count 100)",
            top("latency_p99", "endpoint", DAY_US, 100),
        ),
        (
            "top-10 endpoints by error rate, 24 h (min_count 100)",
            top("error_rate", "endpoint", DAY_US, 100),
        ),
        (
            "history, 30 days",
            format!("/api/v1/requests/history?start_date={month_ago}&end_date={today}"),
        ),
        (
            "one endpoint per minute, 24 h",
            format!(
                "/api/v1/requests/timeseries?metric=frequency&interval=1m&{}&start={}&end={end}",
                param("endpoint", &endpoint),
                ago(DAY_US)
            ),
        ),
    ];
    println!("| query | over HTTP p50 | p99 | inside the server p50 | p99 |");
    println!("|---|---|---|---|---|");
    for (name, path) in mix {
        let url = format!("{}{path}", q.server);
        let (mut outside, mut inside) = (Vec::new(), Vec::new());
        for _ in 0..q.repeat {
            let t = Instant::now();
            let resp = client.get(&url).send().await?;
            let status = resp.status();
            let body: serde_json::Value = resp.json().await?;
            outside.push(t.elapsed().as_secs_f64() * 1000.0);
            anyhow::ensure!(status.is_success(), "{name}: {status}: {body}");
            if let Some(ms) = body["meta"]["took_ms"].as_f64() {
                inside.push(ms);
            }
        }
        let (o50, o99) = summary(outside);
        let inside = if inside.is_empty() {
            "| n/a | n/a |".to_owned()
        } else {
            let (i50, i99) = summary(inside);
            format!("| {i50:.3} ms | {i99:.3} ms |")
        };
        println!("| {name} | {o50:.3} ms | {o99:.3} ms {inside}");
    }
    if let Some((hwm, rss)) = q.server_pid.and_then(memory) {
        println!("server memory: peak RSS {hwm:.0} MiB, RSS {rss:.0} MiB");
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
