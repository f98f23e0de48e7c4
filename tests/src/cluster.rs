//! A Raft cluster of real toplog processes on loopback, for the cluster
//! tests (tests/tests/cluster.rs): starting, restarting, killing and
//! signalling its nodes, asking who leads, writing batches under
//! idempotency keys, concurrent writers, and the checks that every node
//! holds every acknowledged event once and answers alike.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{Server, client, free_port};

pub const SECRET: &str = "a-cluster-secret-of-thirty-two-c";

pub struct Cluster {
    pub dir: PathBuf,
    pub spec: String,
    pub ports: Vec<u16>,
    pub nodes: Vec<Option<Server>>,
    /// Flags every node gets besides its cluster's.
    pub extra: Vec<String>,
    /// Environment every node gets.
    pub env: Vec<(String, String)>,
}

impl Cluster {
    pub fn start(dir: &Path, size: usize) -> Self {
        Self::start_with(dir, size, &[])
    }

    pub fn start_with(dir: &Path, size: usize, extra: &[&str]) -> Self {
        Self::start_with_env(dir, size, extra, &[])
    }

    /// [`Cluster::start_with`], every node with `env` in its environment.
    pub fn start_with_env(dir: &Path, size: usize, extra: &[&str], env: &[(&str, &str)]) -> Self {
        std::fs::write(dir.join("secret"), format!("{SECRET}\n")).unwrap();
        let ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let spec = (ports.iter().enumerate())
            .map(|(i, p)| format!("{}=http://127.0.0.1:{p}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Self {
            dir: dir.to_path_buf(),
            spec,
            ports,
            nodes: (0..size).map(|_| None).collect(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: (env.iter())
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        for id in 1..=size as u64 {
            cluster.restart(id);
        }
        cluster
    }

    /// Starts node `id` (one past the last, or a stopped one) to join the
    /// running group: `--cluster` names the first members only.
    pub fn start_joining(&mut self, id: u64) {
        if self.nodes.len() < id as usize {
            self.ports.push(free_port());
            self.nodes.push(None);
        }
        self.restart(id);
    }

    pub fn url(&self, id: u64) -> String {
        format!("http://127.0.0.1:{}", self.ports[(id - 1) as usize])
    }

    pub fn restart(&mut self, id: u64) {
        let i = (id - 1) as usize;
        let secret = self.dir.join("secret");
        let id_arg = id.to_string();
        let mut args = vec![
            "--node-id",
            &id_arg,
            "--cluster",
            &self.spec,
            "--cluster-secret-file",
            secret.to_str().unwrap(),
        ];
        args.extend(self.extra.iter().map(String::as_str));
        let env: Vec<(&str, &str)> = (self.env.iter())
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let server = Server::start_listening(
            &format!("127.0.0.1:{}", self.ports[i]),
            &self.data_dir(id),
            &args,
            &env,
        );
        self.nodes[i] = Some(server);
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node{id}"))
    }

    /// Sends `signal` to node `id`'s process (SIGSTOP freezes it, SIGCONT
    /// resumes it).
    pub fn signal(&self, id: u64, signal: libc::c_int) {
        let pid = self.nodes[(id - 1) as usize].as_ref().unwrap().pid();
        // SAFETY: kill(2) with a pid this test started and a valid signal.
        assert_eq!(unsafe { libc::kill(pid as libc::pid_t, signal) }, 0);
    }

    pub fn kill9(&mut self, id: u64) {
        if let Some(node) = self.nodes[(id - 1) as usize].take() {
            node.kill9();
        }
    }

    pub fn status(&self, id: u64) -> Option<Value> {
        let node = self.nodes[(id - 1) as usize].as_ref()?;
        let r = client().get(node.url("/api/v1/cluster")).send().ok()?;
        let body: Value = r.json().ok()?;
        Some(body["data"].clone())
    }

    pub fn live(&self) -> Vec<u64> {
        (1..=self.nodes.len() as u64)
            .filter(|id| self.nodes[(id - 1) as usize].is_some())
            .collect()
    }

    /// Waits until every live node names the same leader in the same term;
    /// returns (leader, term).
    pub fn agreed_leader(&self, within: Duration) -> (u64, u64) {
        self.agreed_leader_among(&self.live(), within)
    }

    /// [`Cluster::agreed_leader`] among `ids` only.
    pub fn agreed_leader_among(&self, ids: &[u64], within: Duration) -> (u64, u64) {
        let deadline = Instant::now() + within;
        loop {
            let seen: Vec<Option<Value>> = ids.iter().map(|id| self.status(*id)).collect();
            let views: Vec<(Option<u64>, u64)> = seen
                .iter()
                .flatten()
                .map(|s| (s["leader_id"].as_u64(), s["term"].as_u64().unwrap_or(0)))
                .collect();
            if views.len() == ids.len()
                && let Some((Some(leader), term)) = views.first().copied()
                && views.iter().all(|v| *v == (Some(leader), term))
                && ids.contains(&leader)
            {
                let role = self.status(leader).unwrap()["role"].clone();
                if role == "leader" {
                    return (leader, term);
                }
            }
            assert!(Instant::now() < deadline, "no agreed leader: {seen:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `n` events of batch `b`, timestamped a minute ago.
pub fn batch(b: usize, n: usize) -> Vec<Value> {
    let t = crate::now_ms() - 60_000;
    (0..n)
        .map(|i| {
            serde_json::json!({"request_id": format!("b{b}-{i}"), "timestamp": t + i as i64,
                "endpoint": format!("/e/{}", (b + i) % 5), "user_id": format!("u{}", i % 7),
                "method": "GET", "status_code": if i % 10 == 0 { 500 } else { 200 }, "latency_ms": 1.5})
        })
        .collect()
}

/// Sends batch `b` under its idempotency key to node `id`: the answer.
pub fn send(cluster: &Cluster, id: u64, b: usize, n: usize) -> (u16, Value) {
    let node = cluster.nodes[(id - 1) as usize].as_ref().unwrap();
    let r = client()
        .post(node.url("/api/v1/requests"))
        .header("idempotency-key", format!("batch-{b}"))
        .json(&batch(b, n))
        .send()
        .unwrap();
    (r.status().as_u16(), r.json().unwrap_or(Value::Null))
}

/// `method path` with JSON `body` to node `id`: the status and the body.
pub fn call(cluster: &Cluster, id: u64, method: &str, path: &str, body: &Value) -> (u16, Value) {
    let node = cluster.nodes[(id - 1) as usize].as_ref().unwrap();
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let r = client()
        .request(method, node.url(path))
        .json(body)
        .send()
        .unwrap();
    (r.status().as_u16(), r.json().unwrap_or(Value::Null))
}

pub fn get(cluster: &Cluster, id: u64, path: &str) -> Value {
    let node = cluster.nodes[(id - 1) as usize].as_ref().unwrap();
    client().get(node.url(path)).send().unwrap().json().unwrap()
}

/// Waits until every live node counts `want` events.
pub fn counts_reach(cluster: &Cluster, want: usize, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let counts: Vec<Value> = (cluster.live().iter())
            .map(|id| get(cluster, *id, "/api/v1/requests/count?start=0")["count"].clone())
            .collect();
        if counts.iter().all(|c| *c == want) {
            return;
        }
        assert!(Instant::now() < deadline, "counts {counts:?}, want {want}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until every live node holds `want` events and answers a top-K and
/// the count alike; the answers' top-K.
pub fn converged(cluster: &Cluster, want: usize, within: Duration) -> Value {
    counts_reach(cluster, want, within);
    let top = "/api/v1/requests/top-k?k=5&metric=frequency&by=endpoint&start=0";
    let answers: Vec<Value> = (cluster.live().iter())
        .map(|id| get(cluster, *id, top)["data"].clone())
        .collect();
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
    answers[0].clone()
}

/// Three nodes with a short log, flushed often (it is compacted within a
/// test), and `batches` batches written through the leader: the cluster and
/// its leader.
pub fn short_log_cluster(dir: &Path, batches: usize, per_batch: usize) -> (Cluster, u64) {
    let cluster = Cluster::start_with(
        dir,
        3,
        &["--raft-log-keep", "4", "--memtable-max-age", "100ms"],
    );
    let (leader, _) = cluster.agreed_leader(Duration::from_secs(20));
    for b in 0..batches {
        let (status, body) = send(&cluster, leader, b, per_batch);
        assert_eq!(status, 200, "batch {b}: {body}");
    }
    (cluster, leader)
}

pub fn voters_and_learners(status: &Value) -> (Vec<u64>, Vec<u64>) {
    let mut voters = Vec::new();
    let mut learners = Vec::new();
    for m in status["members"].as_array().unwrap() {
        let id = m["id"].as_u64().unwrap();
        match m["role"].as_str().unwrap() {
            "voter" => voters.push(id),
            "learner" => learners.push(id),
            _ => {}
        }
    }
    (voters, learners)
}

/// Writers sending batches under idempotency keys to every node in turn
/// (a follower forwards), each retrying a refused batch under its key.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    writers: Vec<std::thread::JoinHandle<(Vec<usize>, Vec<usize>)>>,
}

/// Events per batch of [`Load`].
pub const LOAD_BATCH: usize = 20;

impl Load {
    pub fn start(ports: &[u16], writers: usize) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writers = (0..writers)
            .map(|w| {
                let stop = stop.clone();
                let urls: Vec<String> = ports
                    .iter()
                    .map(|p| format!("http://127.0.0.1:{p}/api/v1/requests"))
                    .collect();
                std::thread::spawn(move || {
                    let mut acked = Vec::new();
                    let mut attempted = Vec::new();
                    let mut turn = w;
                    let mut seq = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let b = w * 1_000_000 + seq;
                        attempted.push(b);
                        for _ in 0..50 {
                            turn += 1;
                            let sent = client()
                                .post(&urls[turn % urls.len()])
                                .header("idempotency-key", format!("batch-{b}"))
                                .json(&batch(b, LOAD_BATCH))
                                .send();
                            if sent.is_ok_and(|r| r.status() == 200) {
                                acked.push(b);
                                break;
                            }
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        seq += 1;
                    }
                    (acked, attempted)
                })
            })
            .collect();
        Self { stop, writers }
    }

    /// Stops the writers after half a second more, and checks what they
    /// wrote: more than `at_least` batches acknowledged, every one on every
    /// live node once (see [`every_acknowledged_write_once_everywhere`]).
    pub fn finish_and_check(self, cluster: &Cluster, at_least: usize) {
        std::thread::sleep(Duration::from_millis(500));
        let (acked, attempted) = self.finish();
        assert!(
            acked.len() > at_least,
            "only {} batches acknowledged",
            acked.len()
        );
        every_acknowledged_write_once_everywhere(cluster, &acked, &attempted);
    }

    /// Stops the writers: the batches acknowledged, and all those sent.
    pub fn finish(self) -> (Vec<usize>, std::collections::BTreeSet<usize>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut acked = Vec::new();
        let mut attempted = std::collections::BTreeSet::new();
        for w in self.writers {
            let (a, t) = w.join().unwrap();
            acked.extend(a);
            attempted.extend(t);
        }
        (acked, attempted)
    }
}

/// Once every live node has applied all the leader committed: each holds
/// every acknowledged event exactly once, nothing that was not sent, and
/// answers a count, a top-K and a history alike.
pub fn every_acknowledged_write_once_everywhere(
    cluster: &Cluster,
    acked: &[usize],
    attempted: &std::collections::BTreeSet<usize>,
) {
    eprintln!(
        "{} batches acknowledged of {} sent",
        acked.len(),
        attempted.len()
    );
    let (leader, _) = cluster.agreed_leader(Duration::from_secs(15));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let commit = cluster.status(leader).unwrap()["commit_index"]
            .as_u64()
            .unwrap();
        let applied: Vec<u64> = (cluster.live().iter())
            .map(|id| {
                cluster.status(*id).unwrap()["applied_index"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        if applied.iter().all(|a| *a == commit) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "applied {applied:?}, commit {commit}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut answers = Vec::new();
    for id in cluster.live() {
        let node = cluster.nodes[(id - 1) as usize].as_ref().unwrap();
        let events = crate::all_events(node);
        let ids: std::collections::BTreeSet<&str> = events
            .iter()
            .map(|e| e["request_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids.len(), events.len(), "node {id}: an event stored twice");
        for b in acked {
            for i in 0..LOAD_BATCH {
                assert!(
                    ids.contains(format!("b{b}-{i}").as_str()),
                    "node {id}: acknowledged b{b}-{i} lost"
                );
            }
        }
        for rid in &ids {
            let b: usize = rid[1..rid.find('-').unwrap()].parse().unwrap();
            assert!(attempted.contains(&b), "node {id}: {rid} was never sent");
        }
        let (today, _) = crate::utc(crate::now_ms());
        answers.push((
            get(cluster, id, "/api/v1/requests/count?start=0")["count"].clone(),
            get(
                cluster,
                id,
                "/api/v1/requests/top-k?k=5&metric=p99_latency&by=endpoint&start=0",
            )["data"]
                .clone(),
            get(
                cluster,
                id,
                &format!("/api/v1/requests/history?start_date={today}&end_date={today}"),
            )["data"]
                .clone(),
        ));
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
    assert!(answers[0].0.as_u64().unwrap() >= (acked.len() * LOAD_BATCH) as u64);
}

/// Sets the test clock in `file` to `ms` and waits until every node of
/// `ids` has applied alert rule `rule`'s judgement of the minute closed by
/// then.
pub fn judge_through(cluster: &Cluster, ids: &[u64], file: &Path, rule: &str, ms: i64) {
    std::fs::write(file, ms.to_string()).unwrap();
    let want = toplog_types::Micros::new(ms / 60_000 * 60_000 * 1000).to_rfc3339();
    let deadline = Instant::now() + Duration::from_secs(20);
    for id in ids {
        loop {
            let got = get(cluster, *id, &format!("/api/v1/alerts/rules/{rule}"))["data"]
                ["judged_through"]
                .clone();
            if got == want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {id}: judged through {got}, want {want}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
