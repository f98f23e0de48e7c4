//! `GET /metrics`: what the node does and holds, in the OpenMetrics text
//! format that Prometheus scrapes (docs/operations.md says what each metric
//! means). Counters and histograms are kept as requests are served; what
//! the node holds (segments, memtables, keys, memory, Raft state) is read
//! when a scrape asks.

mod http;
mod read;
mod shards;

use axum::http::StatusCode;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use toplog_wal::LatencyHistogram;

pub(crate) use http::{Ingested, ReadSource, scrape, time_grpc, time_request};
use read::Read;

use crate::api::AppState;

/// Label sets: (name, value) pairs, the names fixed here.
type Labels<const N: usize> = [(&'static str, &'static str); N];
type Histograms<const N: usize> = Family<Labels<N>, Histogram, fn() -> Histogram>;

/// Seconds, from 100 µs to 13 s by doubling.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_1, 2.0, 18))
}

/// Every metric the node serves.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    /// Served by clustered nodes only.
    raft: Registry,
    /// Served by a sharded cluster's nodes only.
    shard_registry: Registry,
    shard_gauges: shards::ShardGauges,
    ingest_batches: Family<Labels<2>, Counter>,
    ingest_events: Family<Labels<2>, Counter>,
    ingest_bytes: Family<Labels<1>, Counter>,
    requests: Histograms<3>,
    reads: Histograms<2>,
    /// gRPC calls by method (the path), and reads by method and source.
    grpc_requests: Histograms<1>,
    grpc_reads: Histograms<2>,
    backups: Backups,
    /// Rules judged at a minute's end (this node deciding: the leader).
    rule_evaluations: Counter,
    /// Notifications sent or failed, by outcome.
    notification_attempts: Family<Labels<1>, Counter>,
    held: Held,
}

/// Backups taken, as they end.
#[derive(Debug, Default)]
struct Backups {
    /// By outcome: done or failed.
    taken: Family<Labels<1>, Counter>,
    copied_bytes: Counter,
    last_success_seconds: Gauge,
    last_index: Gauge,
}

/// What the node holds, set at each scrape.
#[derive(Debug, Default)]
struct Held {
    /// By tier: `local` or `archive`.
    segments: Family<Labels<1>, Gauge>,
    segment_rows: Family<Labels<1>, Gauge>,
    segment_bytes: Family<Labels<1>, Gauge>,
    /// By granularity.
    rollup_buckets: Family<Labels<1>, Gauge>,
    rollup_buckets_in_memory: Family<Labels<1>, Gauge>,
    /// By dimension.
    interned_keys: Family<Labels<1>, Gauge>,
    memtable_rows: Gauge,
    memtable_bytes: Gauge,
    applied_index: Gauge,
    flushed_index: Gauge,
    idempotency_keys: Gauge,
    key_bytes: Gauge,
    key_budget_bytes: Gauge,
    resident_bytes: Gauge,
    log_bytes: Gauge,
    flushes: Read<u64>,
    evicted_keys: Read<u64>,
    log_fsync: Read<LatencyHistogram>,
    log_commit: Read<LatencyHistogram>,
    data_dir_available_bytes: Gauge,
    maintenance_passes: Read<u64>,
    maintenance_failed_passes: Read<u64>,
    maintenance_failing_in_a_row: Gauge,
    archive_errors: Read<u64>,
    archived_segments: Read<u64>,
    archive_backlog_segments: Gauge,
    /// By state.
    aggregation_jobs: Family<Labels<1>, Gauge>,
    alert_rules: Gauge,
    /// By state: pending or firing.
    alerts: Family<Labels<1>, Gauge>,
    /// By status: pending, sent or failed.
    alert_notifications: Family<Labels<1>, Gauge>,
    purged_segments: Read<u64>,
    compactions: Read<u64>,
    raft_term: Gauge,
    raft_commit_index: Gauge,
    raft_applied_index: Gauge,
    raft_leader: Gauge,
    /// 1 for the role this node has, 0 for the others.
    raft_role: Family<Labels<1>, Gauge>,
    /// On the leader, by peer: entries its log lacks of the committed ones.
    raft_peer_lag: Family<[(&'static str, String); 1], Gauge>,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("toplog");
        let ingest_batches = Family::default();
        registry.register(
            "ingest_batches",
            "Ingest requests by transport and outcome (accepted, replayed, refused, unavailable, failed)",
            ingest_batches.clone(),
        );
        let ingest_events = Family::default();
        registry.register(
            "ingest_events",
            "Events of ingest requests the store took, by transport and outcome (accepted, replayed)",
            ingest_events.clone(),
        );
        let ingest_bytes = Family::default();
        registry.register(
            "ingest_bytes",
            "Bytes of ingest request bodies received, by transport",
            ingest_bytes.clone(),
        );
        let requests: Histograms<3> = Family::new_with_constructor(latency_histogram);
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request, by route, method and status class",
            requests.clone(),
        );
        let reads: Histograms<2> = Family::new_with_constructor(latency_histogram);
        registry.register(
            "read_duration_seconds",
            "Time to answer a read, by route and source (rollup: rollups alone; raw: raw rows too)",
            reads.clone(),
        );
        let rule_evaluations = Counter::default();
        registry.register(
            "alert_rule_evaluations",
            "Alert rules judged at a minute's end by this node (the leader, in a cluster)",
            rule_evaluations.clone(),
        );
        let notification_attempts = Family::default();
        registry.register(
            "alert_notification_attempts",
            "Notifications this node tried to deliver, by outcome (sent, failed: tried again until given up)",
            notification_attempts.clone(),
        );
        let grpc_requests: Histograms<1> = Family::new_with_constructor(latency_histogram);
        registry.register(
            "grpc_request_duration_seconds",
            "Time to answer a gRPC call of toplog.v1.Toplog or OTLP's TraceService (to its response headers: all of a unary call), by method",
            grpc_requests.clone(),
        );
        let grpc_reads: Histograms<2> = Family::new_with_constructor(latency_histogram);
        registry.register(
            "grpc_read_duration_seconds",
            "Time to answer a gRPC read (TopK, Timeseries, History), by method and source (rollup: rollups alone; raw: raw rows too)",
            grpc_reads.clone(),
        );
        let backups = Backups::default();
        // Every outcome from the start, so a rate over them is 0, not absent.
        for outcome in ["done", "failed"] {
            let _ = backups.taken.get_or_create(&[("outcome", outcome)]);
        }
        for outcome in ["sent", "failed"] {
            let _ = notification_attempts.get_or_create(&[("outcome", outcome)]);
        }
        registry.register(
            "backups",
            "Backups taken (by the schedule or the API), by outcome (done, failed)",
            backups.taken.clone(),
        );
        registry.register(
            "backup_copied_bytes",
            "Bytes backups copied (files the backup location did not hold yet)",
            backups.copied_bytes.clone(),
        );
        registry.register(
            "backup_last_success_timestamp_seconds",
            "When the last backup that succeeded ended (Unix time; 0: none since start)",
            backups.last_success_seconds.clone(),
        );
        registry.register(
            "backup_last_index",
            "The log index the last backup that succeeded holds the store at",
            backups.last_index.clone(),
        );
        let held = Held::default();
        let shard_gauges = shards::ShardGauges::default();
        let mut shard_registry = Registry::with_prefix("toplog");
        shard_gauges.register(&mut shard_registry);
        let mut raft = Registry::with_prefix("toplog");
        for (name, help, gauge) in [
            ("raft_term", "This node's Raft term", &held.raft_term),
            (
                "raft_commit_index",
                "The last Raft log index a quorum holds",
                &held.raft_commit_index,
            ),
            (
                "raft_applied_index",
                "The last Raft log index this node applied",
                &held.raft_applied_index,
            ),
            (
                "raft_leader",
                "1 while this node leads its Raft group",
                &held.raft_leader,
            ),
        ] {
            raft.register(name, help, gauge.clone());
        }
        raft.register(
            "raft_role",
            "1 for this node's Raft role (leader, follower, candidate, pre_candidate), 0 for the others",
            held.raft_role.clone(),
        );
        raft.register(
            "raft_peer_lag",
            "On the leader, by peer: committed entries the peer's log does not hold yet",
            held.raft_peer_lag.clone(),
        );
        for (name, help, family) in [
            (
                "segments",
                "Segments, by tier (local disk or the archive)",
                &held.segments,
            ),
            (
                "segment_rows",
                "Events in segments, by tier",
                &held.segment_rows,
            ),
            (
                "segment_bytes",
                "Bytes of segments, by tier",
                &held.segment_bytes,
            ),
            (
                "rollup_buckets",
                "Rollup buckets kept, by granularity",
                &held.rollup_buckets,
            ),
            (
                "rollup_buckets_in_memory",
                "Rollup buckets held in memory, by granularity (the others are read from their day's tier file)",
                &held.rollup_buckets_in_memory,
            ),
            (
                "interned_keys",
                "Distinct keys held, by dimension",
                &held.interned_keys,
            ),
            (
                "aggregation_jobs",
                "Background aggregation jobs kept, by state (pending, running, done, failed)",
                &held.aggregation_jobs,
            ),
            (
                "alerts",
                "Alerts of rules' series, by state (pending, firing)",
                &held.alerts,
            ),
            (
                "alert_notifications",
                "Notifications in the outbox (pending, and those sent or failed in the last day), by status",
                &held.alert_notifications,
            ),
        ] {
            registry.register(name, help, family.clone());
        }
        for (name, help, gauge) in [
            (
                "memtable_rows",
                "Events in memtables, not yet in a segment",
                &held.memtable_rows,
            ),
            (
                "memtable_bytes",
                "Bytes memtables hold (a flush starts at memtable_max_bytes)",
                &held.memtable_bytes,
            ),
            (
                "log_applied_index",
                "The last log entry applied to memtables and rollups",
                &held.applied_index,
            ),
            (
                "log_flushed_index",
                "The last log entry whose events are in segments",
                &held.flushed_index,
            ),
            (
                "idempotency_keys",
                "Idempotency keys kept (each 24 hours)",
                &held.idempotency_keys,
            ),
            (
                "interned_key_bytes",
                "Bytes the distinct keys (users, endpoints, ...) hold",
                &held.key_bytes,
            ),
            (
                "interned_key_budget_bytes",
                "The most the distinct keys may hold (key_memory_bytes)",
                &held.key_budget_bytes,
            ),
            (
                "process_resident_memory_bytes",
                "Resident memory of the process (VmRSS)",
                &held.resident_bytes,
            ),
            ("alert_rules", "Alert rules defined", &held.alert_rules),
            (
                "log_bytes",
                "Bytes of the write-ahead log's files (single node; a cluster's log is Raft's)",
                &held.log_bytes,
            ),
            (
                "data_dir_available_bytes",
                "Bytes free to this process on the data directory's file system",
                &held.data_dir_available_bytes,
            ),
            (
                "maintenance_failing_in_a_row",
                "Maintenance passes in a row, up to the last, with a failed step",
                &held.maintenance_failing_in_a_row,
            ),
            (
                "archive_backlog_segments",
                "Local segments older than raw.local_for, not yet in the archive",
                &held.archive_backlog_segments,
            ),
        ] {
            registry.register(name, help, gauge.clone());
        }
        for (name, help, histogram) in [
            (
                "log_fsync_duration_seconds",
                "Time each fsync of the write-ahead log took",
                &held.log_fsync,
            ),
            (
                "log_commit_duration_seconds",
                "Time each group commit took: framing, writing and syncing the batches waiting, until durable",
                &held.log_commit,
            ),
        ] {
            registry.register(name, help, histogram.clone());
        }
        for (name, help, counter) in [
            (
                "flushes",
                "Flushes of memtables to segments since the process started",
                &held.flushes,
            ),
            (
                "rollup_evicted_keys",
                "Keys rollup buckets evicted past rollup_key_budget (their counts live on in the bucket's error bounds)",
                &held.evicted_keys,
            ),
            (
                "maintenance_passes",
                "Maintenance passes (retention, compaction, archiving)",
                &held.maintenance_passes,
            ),
            (
                "maintenance_failed_passes",
                "Maintenance passes with a failed step (tried again at the next)",
                &held.maintenance_failed_passes,
            ),
            (
                "archive_errors",
                "Archive steps that failed (copying a segment or tier file, the archive's marker or manifest)",
                &held.archive_errors,
            ),
            (
                "archived_segments",
                "Segments copied to the archive",
                &held.archived_segments,
            ),
            (
                "purged_segments",
                "Segments deleted past raw.keep_for",
                &held.purged_segments,
            ),
            (
                "compactions",
                "Compactions of small segments into one",
                &held.compactions,
            ),
        ] {
            registry.register(name, help, counter.clone());
        }
        Self {
            registry,
            raft,
            shard_registry,
            shard_gauges,
            ingest_batches,
            ingest_events,
            ingest_bytes,
            requests,
            reads,
            grpc_requests,
            grpc_reads,
            backups,
            rule_evaluations,
            notification_attempts,
            held,
        }
    }

    /// Counts what an alerting change decided: a rule judged, a delivery tried.
    pub(crate) fn alerting(&self, change: &toplog_alerting::Change) {
        match change {
            toplog_alerting::Change::Evaluated { .. } => {
                self.rule_evaluations.inc();
            }
            toplog_alerting::Change::Attempt { error, .. } => {
                let outcome = if error.is_none() { "sent" } else { "failed" };
                (self.notification_attempts)
                    .get_or_create(&[("outcome", outcome)])
                    .inc();
            }
            _ => {}
        }
    }

    /// Counts a backup that ended: what it took, or `None` if it failed.
    pub(crate) fn backup(&self, taken: Option<&crate::backup::Taken>) {
        let b = &self.backups;
        let outcome = if taken.is_some() { "done" } else { "failed" };
        b.taken.get_or_create(&[("outcome", outcome)]).inc();
        if let Some(t) = taken {
            b.copied_bytes.inc_by(t.copied_bytes);
            b.last_success_seconds.set(chrono::Utc::now().timestamp());
            b.last_index.set(i64::try_from(t.index).unwrap_or(i64::MAX));
        }
    }

    /// Counts an ingest request over `transport` that ended with `status`
    /// (and, if the store took it, what it took), of `bytes` bytes.
    pub(crate) fn ingest(
        &self,
        transport: &'static str,
        status: StatusCode,
        ingested: Option<Ingested>,
        bytes: u64,
    ) {
        let outcome = match ingested {
            Some(Ingested { replayed: true, .. }) => "replayed",
            Some(_) => "accepted",
            None if status == StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            None if status.is_server_error() => "failed",
            None if status.is_success() => "accepted",
            None => "refused",
        };
        let labels = [("transport", transport), ("outcome", outcome)];
        self.ingest_batches.get_or_create(&labels).inc();
        if let Some(i) = ingested {
            self.ingest_events.get_or_create(&labels).inc_by(i.events);
        }
        (self.ingest_bytes)
            .get_or_create(&[("transport", transport)])
            .inc_by(bytes);
    }

    /// The OpenMetrics text a scrape answers: what is counted, and what the
    /// node holds now.
    pub(super) fn render(&self, app: &AppState) -> String {
        let h = &self.held;
        let set = |g: &Gauge, v: u64| {
            g.set(i64::try_from(v).unwrap_or(i64::MAX));
        };
        if let Ok(engine) = app.engine() {
            // A sharded node's stores: its own and its shards' replicas.
            let stores: Vec<std::sync::Arc<toplog_engine::Engine>> =
                std::iter::once(engine.clone())
                    .chain(
                        (app.shards.get().into_iter())
                            .flat_map(|s| s.replicas())
                            .map(|r| r.engine.clone()),
                    )
                    .collect();
            let segments: Vec<_> = stores.iter().flat_map(|e| e.segments()).collect();
            if let Some(m) = app.maintainer.get() {
                let backlog = m.archive_backlog(&segments);
                set(&h.archive_backlog_segments, backlog as u64);
            }
            for tier in ["local", "archive"] {
                let of_tier = || {
                    (segments.iter()).filter(move |g| g.archived.is_some() == (tier == "archive"))
                };
                let label = [("tier", tier)];
                set(&h.segments.get_or_create(&label), of_tier().count() as u64);
                set(
                    &h.segment_rows.get_or_create(&label),
                    of_tier().map(|g| g.meta.rows).sum(),
                );
                set(
                    &h.segment_bytes.get_or_create(&label),
                    of_tier().map(|g| g.bytes).sum(),
                );
            }
            let mut tiers: std::collections::BTreeMap<&'static str, (u64, u64)> =
                std::collections::BTreeMap::new();
            for t in stores.iter().flat_map(|e| e.rollup_tiers()) {
                let tier = tiers.entry(t.granularity.name()).or_default();
                tier.0 += t.buckets as u64;
                tier.1 += t.in_memory as u64;
            }
            for (name, (buckets, in_memory)) in tiers {
                let label = [("granularity", name)];
                set(&h.rollup_buckets.get_or_create(&label), buckets);
                set(&h.rollup_buckets_in_memory.get_or_create(&label), in_memory);
            }
            for d in toplog_engine::Dimension::ALL {
                set(
                    &h.interned_keys.get_or_create(&[("dimension", d.name())]),
                    d.interned_keys() as u64,
                );
            }
            let s = engine.stats();
            let all: Vec<_> = stores.iter().map(|e| e.stats()).collect();
            let sum = |f: fn(&toplog_engine::StorageStats) -> u64| all.iter().map(f).sum::<u64>();
            set(&h.memtable_rows, sum(|s| s.memtable_rows as u64));
            set(&h.memtable_bytes, sum(|s| s.memtable_bytes as u64));
            set(&h.applied_index, s.applied_lsn.get());
            set(&h.flushed_index, s.flushed_lsn.get());
            set(&h.idempotency_keys, sum(|s| s.idempotency_keys as u64));
            set(&h.key_bytes, s.key_bytes as u64);
            set(&h.key_budget_bytes, s.key_budget as u64);
            h.flushes.set(sum(|s| s.flushes));
            h.evicted_keys.set(sum(|s| s.evicted_keys));
            if let Some(l) = engine.log_latencies() {
                set(&h.log_bytes, engine.log_bytes());
                h.log_fsync.set(l.fsync);
                h.log_commit.set(l.commit);
            }
        }
        if let Some(m) = app.maintainer.get() {
            let t = m.totals();
            h.maintenance_passes.set(t.passes);
            h.maintenance_failed_passes.set(t.failed_passes);
            set(&h.maintenance_failing_in_a_row, t.failing_in_a_row);
            h.archive_errors.set(t.archive_errors);
            h.archived_segments.set(t.archived_segments);
            h.purged_segments.set(t.purged_segments);
            h.compactions.set(t.compactions);
        }
        if let Some(jobs) = app.jobs.get() {
            use toplog_query::JobState;
            for (name, state) in [
                ("pending", JobState::Pending),
                ("running", JobState::Running),
                ("done", JobState::Done),
                ("failed", JobState::Failed),
            ] {
                let label = [("state", name)];
                set(
                    &h.aggregation_jobs.get_or_create(&label),
                    jobs.count(state) as u64,
                );
            }
        }
        if let Some(alerting) = app.alerting.get() {
            let st = alerting.state();
            set(&h.alert_rules, st.rules.len() as u64);
            for state in ["pending", "firing"] {
                let n = st.alerts.values().filter(|a| a.state == state).count();
                set(&h.alerts.get_or_create(&[("state", state)]), n as u64);
            }
            for status in ["pending", "sent", "failed"] {
                let n = st.outbox.values().filter(|n| n.status == status).count();
                set(
                    &h.alert_notifications.get_or_create(&[("status", status)]),
                    n as u64,
                );
            }
        }
        if let Some(free) = available_bytes(&app.config.data_dir) {
            set(&h.data_dir_available_bytes, free);
        }
        if let Some(rss) = resident_bytes() {
            h.resident_bytes.set(i64::try_from(rss).unwrap_or(i64::MAX));
        }
        if let Some(cluster) = app.cluster.get() {
            let st = cluster.status();
            set(&h.raft_term, st.term);
            set(&h.raft_commit_index, st.commit_index);
            set(&h.raft_applied_index, st.applied_index);
            set(
                &h.raft_leader,
                u64::from(st.leader_id != 0 && st.leader_id == st.node_id),
            );
            for role in ["leader", "follower", "candidate", "pre_candidate"] {
                set(
                    &h.raft_role.get_or_create(&[("role", role)]),
                    u64::from(st.role == role),
                );
            }
            h.raft_peer_lag.clear();
            for (id, p) in st.peers.iter().filter(|(id, _)| **id != st.node_id) {
                let lag = st.commit_index.saturating_sub(p.matched);
                set(
                    &h.raft_peer_lag.get_or_create(&[("peer", id.to_string())]),
                    lag,
                );
            }
        }
        let mut out = String::new();
        // Writing to a `String` does not fail.
        let _ = encode_registry(&mut out, &self.registry);
        if app.cluster.get().is_some() {
            let _ = encode_registry(&mut out, &self.raft);
        }
        if let Some(shards) = app.shards.get() {
            self.shard_gauges.set(shards);
            let _ = encode_registry(&mut out, &self.shard_registry);
        }
        let _ = encode_eof(&mut out);
        out
    }
}

/// Bytes free to an unprivileged writer on the file system holding `dir`.
fn available_bytes(dir: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs(3) fills the zeroed struct it is given for a
    // NUL-terminated path, and touches nothing else.
    let st = unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        (libc::statvfs(path.as_ptr(), &mut st) == 0).then_some(st)
    }?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// The process's resident memory, from `/proc/self/statm` (Linux).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}
