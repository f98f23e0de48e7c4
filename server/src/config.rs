//! Node configuration: built-in defaults, overridden by a TOML file, overridden
//! by `TOPLOG_*` environment variables and command-line flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toplog_compaction::{ArchiveConfig, Policy};
use toplog_crypt::{Cipher, Keyring};
use toplog_types::parse_duration;
use toplog_wal::FsyncPolicy;

/// Segment columns are addressed with 32-bit offsets; memtables stay far below that.
const MAX_MEMTABLE_BYTES: usize = 512 << 20;
const MAX_ROLLUP_KEY_BUDGET: usize = 10_000_000;
/// Most memory one read may be allowed.
const MAX_QUERY_MEMORY_BYTES: usize = 64 << 30;
/// Most memory the distinct keys may be allowed.
const MAX_KEY_MEMORY_BYTES: usize = 1 << 40;
/// The default memory budget of a read.
const DEFAULT_QUERY_MEMORY_BYTES: usize = 128 << 20;
/// Most reads or aggregation jobs a node runs at once.
pub(crate) const MAX_CONCURRENCY: usize = 256;
/// Most bytes of ingested batches a node holds in flight.
const MAX_INGEST_QUEUE_BYTES: usize = 4 << 30;
/// Most idempotency keys a node may be told to hold.
const MAX_IDEMPOTENCY_KEYS: usize = 100_000_000;
/// Most client connections a node holds open (each is a file descriptor).
const MAX_CONNECTIONS: usize = 65_536;
/// One batch is one log entry, which the log caps at 256 MiB.
const MAX_BODY_BYTES: usize = 256 << 20;

/// Settings as they may appear in the TOML file or on the command line (all optional).
#[derive(Debug, Clone, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub(crate) struct Settings {
    /// Directory holding the log, segments and manifest.
    #[arg(long, env = "TOPLOG_DATA_DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Address for the REST API.
    #[arg(long, env = "TOPLOG_LISTEN")]
    pub(crate) listen: Option<SocketAddr>,
    /// Length of a time partition, from `1m` to `1d`, dividing a day evenly.
    #[arg(long, env = "TOPLOG_PARTITION")]
    pub(crate) partition: Option<String>,
    /// `always` (default: every acknowledged batch is on disk), `interval`
    /// (fsync every `fsync_interval`: a crash may lose that much) or `never`
    /// (the OS decides: a crash may lose anything not yet written back).
    #[arg(long, env = "TOPLOG_FSYNC")]
    pub(crate) fsync: Option<String>,
    /// Period of the `interval` fsync policy.
    #[arg(long, env = "TOPLOG_FSYNC_INTERVAL")]
    pub(crate) fsync_interval: Option<String>,
    /// Largest accepted request body, compressed or not, in bytes.
    #[arg(long, env = "TOPLOG_MAX_BODY_BYTES")]
    pub(crate) max_body_bytes: Option<usize>,
    /// How far in the future an event's timestamp may be.
    #[arg(long, env = "TOPLOG_CLOCK_SKEW")]
    pub(crate) clock_skew: Option<String>,
    /// How long raw events are kept (`retention.raw.keep_for`); older events
    /// are rejected at ingest.
    #[arg(long, env = "TOPLOG_RAW_KEEP_FOR")]
    pub(crate) raw_keep_for: Option<String>,
    /// How long raw segments stay on local disk before moving to the archive
    /// (`retention.raw.local_for`).
    #[arg(long, env = "TOPLOG_RAW_LOCAL_FOR")]
    pub(crate) raw_local_for: Option<String>,
    /// The archive: a folder (relative to the data directory), `file://` URL or
    /// `s3://bucket/prefix` (`archive.url`).
    #[arg(long, env = "TOPLOG_ARCHIVE_URL")]
    pub(crate) archive_url: Option<String>,
    /// How often maintenance (purge, compaction, tiering) runs; `0s` turns the
    /// schedule off (`POST /api/v1/admin/maintenance` still runs it).
    #[arg(long, env = "TOPLOG_MAINTENANCE_INTERVAL")]
    pub(crate) maintenance_interval: Option<String>,
    /// How long after a minute closes alert rules judge it (late events).
    #[arg(long, env = "TOPLOG_ALERT_GRACE")]
    pub(crate) alert_grace: Option<String>,
    /// The hosts alert channels may send to, comma-separated (exact names
    /// or addresses); unset: any. Keeps channels off internal services.
    #[arg(long, env = "TOPLOG_ALERT_HOSTS")]
    pub(crate) alert_hosts: Option<String>,
    /// `[retention]` in the file: `raw.local_for`, `raw.keep_for`,
    /// `rollups.minute_keep_for`, `rollups.hour_keep_for`, `rollups.day_keep_for`.
    #[arg(skip)]
    pub(crate) retention: Option<toml::Table>,
    /// The node's TLS certificate chain (PEM); with `tls_key_file`, the port
    /// speaks TLS only (`[tls] cert_file` in the file).
    #[arg(long, env = "TOPLOG_TLS_CERT_FILE")]
    pub(crate) tls_cert_file: Option<PathBuf>,
    /// Its private key (PEM) (`[tls] key_file`).
    #[arg(long, env = "TOPLOG_TLS_KEY_FILE")]
    pub(crate) tls_key_file: Option<PathBuf>,
    /// CAs of client certificates to verify (`[tls] client_ca_file`).
    #[arg(long, env = "TOPLOG_TLS_CLIENT_CA_FILE")]
    pub(crate) tls_client_ca_file: Option<PathBuf>,
    /// Refuse clients without a verified certificate (`[tls] require_client_cert`).
    #[arg(long, env = "TOPLOG_TLS_REQUIRE_CLIENT_CERT")]
    pub(crate) tls_require_client_cert: Option<bool>,
    /// `[tls]` in the file: `cert_file`, `key_file`, `client_ca_file`,
    /// `require_client_cert`.
    #[arg(skip)]
    pub(crate) tls: Option<crate::tls::TlsSettings>,
    /// `on` (default): every route but the health checks needs an API key.
    /// `off`: no checks at all, for local experiments; refused unless the
    /// node listens on a loopback address.
    #[arg(long, env = "TOPLOG_AUTH")]
    pub(crate) auth: Option<String>,
    /// `[rate_limits]` in the file: `admin`, `writer` (events), `viewer`,
    /// `peer` and `failed_auth` (per client address), each a rate such as
    /// `100/s` or `none`.
    #[arg(skip)]
    pub(crate) rate_limits: Option<crate::auth::RateSettings>,
    /// `[jwt]` in the file: bearer JWTs from an identity provider.
    #[arg(skip)]
    pub(crate) jwt: Option<crate::auth::JwtSettings>,
    /// The encryption key file (TOML: `current = "<id>"` and `[keys]` of
    /// `<id> = "<64 hex digits>"`); with it, everything the node stores is
    /// encrypted (`[encryption] key_file` in the file). `TOPLOG_ENCRYPTION_KEY`
    /// (`<id>:<64 hex digits>`, current first) gives the keys themselves instead.
    #[arg(long, env = "TOPLOG_ENCRYPTION_KEY_FILE")]
    pub(crate) encryption_key_file: Option<PathBuf>,
    /// `[encryption]` in the file: `key_file`.
    #[arg(skip)]
    pub(crate) encryption: Option<EncryptionSettings>,
    /// This node's id in its cluster (1, 2, ...); with `cluster`.
    #[arg(long, env = "TOPLOG_NODE_ID")]
    pub(crate) node_id: Option<u64>,
    /// The cluster's first members, `<id>=<url>,...` (each node's one listen
    /// URL); it bootstraps the Raft group once.
    #[arg(long, env = "TOPLOG_CLUSTER")]
    pub(crate) cluster: Option<String>,
    /// A file holding the secret every node of the cluster presents to the
    /// others (without mutual TLS, the proof of the `peer` role).
    #[arg(long, env = "TOPLOG_CLUSTER_SECRET_FILE")]
    pub(crate) cluster_secret_file: Option<PathBuf>,
    /// Raft log entries a member keeps behind what its store has flushed,
    /// for followers a little behind (default 1000); one further behind is
    /// sent a snapshot.
    #[arg(long, env = "TOPLOG_RAFT_LOG_KEEP")]
    pub(crate) raft_log_keep: Option<u64>,
    /// Committed entries a cluster member may not have applied yet and
    /// still answer `/readyz` with 200 (default 1000).
    #[arg(long, env = "TOPLOG_READY_LAG")]
    pub(crate) ready_lag: Option<u64>,
    /// Shards a new cluster spreads its events over, each a Raft group of
    /// its own on 3 of the nodes (default 1: one group holds everything).
    /// Set when the cluster is made; every first member must say the same.
    #[arg(long, env = "TOPLOG_SHARDS")]
    pub(crate) shards: Option<u32>,
    /// `[import]` in the file: `toplog import`'s, not the node's.
    #[arg(skip)]
    pub(crate) import: Option<toml::Table>,
    /// `[archive]` in the file.
    #[arg(skip)]
    pub(crate) archive: Option<ArchiveConfig>,
    /// `[backup]` in the file.
    #[arg(skip)]
    pub(crate) backup: Option<crate::backup::BackupSettings>,
    /// Flush memtables to segments at this many bytes.
    #[arg(long, env = "TOPLOG_MEMTABLE_MAX_BYTES")]
    pub(crate) memtable_max_bytes: Option<usize>,
    /// Flush memtables whose oldest row is this old.
    #[arg(long, env = "TOPLOG_MEMTABLE_MAX_AGE")]
    pub(crate) memtable_max_age: Option<String>,
    /// Most keys a rollup cube bucket keeps exact cells for; past it the bucket
    /// keeps the heaviest keys with error bounds.
    #[arg(long, env = "TOPLOG_ROLLUP_KEY_BUDGET")]
    pub(crate) rollup_key_budget: Option<usize>,
    /// Bytes one read (or aggregation job) may hold in what it builds:
    /// groups, merged keys, candidate rows. Past it the read stops with
    /// `422 query_too_large`.
    #[arg(long, env = "TOPLOG_QUERY_MEMORY_BYTES")]
    pub(crate) query_memory_bytes: Option<usize>,
    /// Bytes the distinct keys (users, endpoints, methods, status codes)
    /// may hold in memory; past it a batch bringing a new key is `503
    /// overloaded` (known keys are still taken).
    #[arg(long, env = "TOPLOG_KEY_MEMORY_BYTES")]
    pub(crate) key_memory_bytes: Option<usize>,
    /// Reads (queries, listings, counts) that run at once; more wait for a turn.
    #[arg(long, env = "TOPLOG_MAX_CONCURRENT_QUERIES")]
    pub(crate) max_concurrent_queries: Option<usize>,
    /// Threads computing reads (default: one fewer than the cores, at least
    /// one), so that reads never take every core from ingest; reads admitted
    /// past it wait for a thread.
    #[arg(long, env = "TOPLOG_READ_THREADS")]
    pub(crate) read_threads: Option<usize>,
    /// A read's time budget, waiting for its turn included: past it the
    /// caller gets `503 overloaded` with `Retry-After`.
    #[arg(long, env = "TOPLOG_QUERY_TIMEOUT")]
    pub(crate) query_timeout: Option<String>,
    /// Bytes of ingested batches in flight (parsing, queued for the log, being
    /// applied); a batch past it waits up to 5 s, then gets `503 overloaded`.
    #[arg(long, env = "TOPLOG_INGEST_QUEUE_BYTES")]
    pub(crate) ingest_queue_bytes: Option<usize>,
    /// Most idempotency keys held (24 hours of them); a batch with a new key
    /// past it is `503 overloaded` with `Retry-After`, never an old key forgotten.
    #[arg(long, env = "TOPLOG_MAX_IDEMPOTENCY_KEYS")]
    pub(crate) max_idempotency_keys: Option<usize>,
    /// Open client connections at once; more wait, unaccepted, until one closes.
    #[arg(long, env = "TOPLOG_MAX_CONNECTIONS")]
    pub(crate) max_connections: Option<usize>,
    /// How long a connection may take to send a request's headers.
    #[arg(long, env = "TOPLOG_HEADER_TIMEOUT")]
    pub(crate) header_timeout: Option<String>,
    /// How long a request may take to send its body.
    #[arg(long, env = "TOPLOG_BODY_TIMEOUT")]
    pub(crate) body_timeout: Option<String>,
    /// Aggregation jobs that run at once; more wait as `pending`.
    #[arg(long, env = "TOPLOG_MAX_RUNNING_AGGREGATIONS")]
    pub(crate) max_running_aggregations: Option<usize>,
    /// How long a finished aggregation job (and its result) is kept.
    #[arg(long, env = "TOPLOG_AGGREGATION_TTL")]
    pub(crate) aggregation_ttl: Option<String>,
}

impl Settings {
    /// Fills every unset field of `self` from `other`.
    fn or(self, other: Settings) -> Settings {
        Settings {
            data_dir: self.data_dir.or(other.data_dir),
            listen: self.listen.or(other.listen),
            partition: self.partition.or(other.partition),
            fsync: self.fsync.or(other.fsync),
            fsync_interval: self.fsync_interval.or(other.fsync_interval),
            max_body_bytes: self.max_body_bytes.or(other.max_body_bytes),
            clock_skew: self.clock_skew.or(other.clock_skew),
            raw_keep_for: self.raw_keep_for.or(other.raw_keep_for),
            raw_local_for: self.raw_local_for.or(other.raw_local_for),
            archive_url: self.archive_url.or(other.archive_url),
            maintenance_interval: self.maintenance_interval.or(other.maintenance_interval),
            alert_grace: self.alert_grace.or(other.alert_grace),
            alert_hosts: self.alert_hosts.or(other.alert_hosts),
            retention: self.retention.or(other.retention),
            archive: self.archive.or(other.archive),
            backup: self.backup.or(other.backup),
            import: self.import.or(other.import),
            auth: self.auth.or(other.auth),
            rate_limits: self.rate_limits.or(other.rate_limits),
            jwt: self.jwt.or(other.jwt),
            encryption_key_file: self.encryption_key_file.or(other.encryption_key_file),
            encryption: self.encryption.or(other.encryption),
            node_id: self.node_id.or(other.node_id),
            cluster: self.cluster.or(other.cluster),
            cluster_secret_file: self.cluster_secret_file.or(other.cluster_secret_file),
            raft_log_keep: self.raft_log_keep.or(other.raft_log_keep),
            ready_lag: self.ready_lag.or(other.ready_lag),
            shards: self.shards.or(other.shards),
            tls_cert_file: self.tls_cert_file.or(other.tls_cert_file),
            tls_key_file: self.tls_key_file.or(other.tls_key_file),
            tls_client_ca_file: self.tls_client_ca_file.or(other.tls_client_ca_file),
            tls_require_client_cert: self
                .tls_require_client_cert
                .or(other.tls_require_client_cert),
            tls: self.tls.or(other.tls),
            memtable_max_bytes: self.memtable_max_bytes.or(other.memtable_max_bytes),
            memtable_max_age: self.memtable_max_age.or(other.memtable_max_age),
            rollup_key_budget: self.rollup_key_budget.or(other.rollup_key_budget),
            max_concurrent_queries: self.max_concurrent_queries.or(other.max_concurrent_queries),
            read_threads: self.read_threads.or(other.read_threads),
            query_memory_bytes: self.query_memory_bytes.or(other.query_memory_bytes),
            key_memory_bytes: self.key_memory_bytes.or(other.key_memory_bytes),
            query_timeout: self.query_timeout.or(other.query_timeout),
            max_running_aggregations: self
                .max_running_aggregations
                .or(other.max_running_aggregations),
            aggregation_ttl: self.aggregation_ttl.or(other.aggregation_ttl),
            max_connections: self.max_connections.or(other.max_connections),
            max_idempotency_keys: self.max_idempotency_keys.or(other.max_idempotency_keys),
            ingest_queue_bytes: self.ingest_queue_bytes.or(other.ingest_queue_bytes),
            header_timeout: self.header_timeout.or(other.header_timeout),
            body_timeout: self.body_timeout.or(other.body_timeout),
        }
    }
}

/// `[encryption]` in the config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EncryptionSettings {
    key_file: Option<PathBuf>,
}

/// The key ring from the key file (flag, variable or `[encryption]`) or from
/// `TOPLOG_ENCRYPTION_KEY`; off without either. Both at once is refused: which
/// one holds the current key would be a guess.
fn cipher(s: &Settings) -> anyhow::Result<Cipher> {
    let file = (s.encryption_key_file.clone())
        .or_else(|| s.encryption.as_ref().and_then(|e| e.key_file.clone()));
    let value = std::env::var("TOPLOG_ENCRYPTION_KEY")
        .ok()
        .filter(|v| !v.is_empty());
    let keys = match (file, value) {
        (None, None) => return Ok(Cipher::off()),
        (Some(_), Some(_)) => anyhow::bail!(
            "both an encryption key file and TOPLOG_ENCRYPTION_KEY are set; give the keys one way"
        ),
        (Some(path), None) => Keyring::load(&path)?,
        (None, Some(value)) => Keyring::from_env_value(&value)?,
    };
    Ok(Cipher::new(keys))
}

/// The resolved configuration of a node.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub partition: Duration,
    pub fsync: FsyncPolicy,
    pub max_body_bytes: usize,
    pub clock_skew: Duration,
    /// The retention policy before any change made through the API.
    pub policy: Policy,
    pub archive: ArchiveConfig,
    /// `[backup]`: where backups go, how often, how many are kept.
    pub(crate) backup: crate::backup::BackupSettings,
    /// `None`: plain TCP.
    pub tls: Option<crate::tls::TlsSettings>,
    /// Whether every call but the health checks needs an API key.
    pub auth: bool,
    pub rate_limits: crate::auth::RateSettings,
    pub jwt: crate::auth::JwtSettings,
    /// What the node's files are written under (off: plaintext).
    pub cipher: Cipher,
    /// `None`: a single node.
    pub(crate) cluster: Option<crate::cluster::ClusterSettings>,
    /// `None`: maintenance runs only when asked.
    pub maintenance_interval: Option<Duration>,
    /// How long after a minute closes alert rules judge it.
    pub alert_grace: Duration,
    /// The hosts alert channels may send to (lower case); `None`: any.
    pub alert_hosts: Option<Vec<String>>,
    pub memtable_max_bytes: usize,
    pub memtable_max_age: Duration,
    pub rollup_key_budget: usize,
    pub max_concurrent_queries: usize,
    pub read_threads: usize,
    pub query_memory_bytes: usize,
    pub key_memory_bytes: usize,
    pub query_timeout: Duration,
    pub max_running_aggregations: usize,
    pub aggregation_ttl: Duration,
    pub max_connections: usize,
    pub max_idempotency_keys: usize,
    pub ingest_queue_bytes: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
}

/// `value` (or `default` when unset), refused naming `name` outside `range`.
fn within(
    name: &str,
    value: Option<usize>,
    default: usize,
    range: std::ops::RangeInclusive<usize>,
) -> anyhow::Result<usize> {
    let value = value.unwrap_or(default);
    if !range.contains(&value) {
        anyhow::bail!(
            "`{name}`: must be from {} to {}",
            range.start(),
            range.end()
        );
    }
    Ok(value)
}

/// The policy from the `[retention]` table, with the flags over it. A
/// `raw_keep_for` under the default `raw.local_for` lowers that to match.
fn policy(
    table: &Option<toml::Table>,
    keep_for: Option<String>,
    local_for: Option<String>,
) -> anyhow::Result<Policy> {
    let mut change = match table {
        Some(t) => serde_json::to_value(t)?,
        None => serde_json::json!({}),
    };
    if let Some(v) = keep_for {
        change["raw"]["keep_for"] = v.into();
    }
    if let Some(v) = local_for {
        change["raw"]["local_for"] = v.into();
    }
    let default = Policy::default();
    let lowered = change["raw"]["keep_for"]
        .as_str()
        .and_then(|k| parse_duration(k).ok())
        .filter(|k| *k < default.raw_local_for && change["raw"]["local_for"].is_null());
    if let Some(k) = lowered {
        change["raw"]["local_for"] = toplog_compaction::format_duration(k).into();
    }
    default
        .updated(&change)
        .map_err(|e| anyhow::anyhow!("`retention.{}`: {}", e.field, e.reason))
}

fn duration(key: &str, value: Option<String>, default: &str) -> anyhow::Result<Duration> {
    let text = value.unwrap_or_else(|| default.to_owned());
    parse_duration(&text).map_err(|e| anyhow::anyhow!("`{key}`: {e}"))
}

impl Config {
    /// Resolves flags/env over the file at `file` (if any) over the defaults.
    pub(crate) fn resolve(flags: Settings, file: Option<&std::path::Path>) -> anyhow::Result<Self> {
        let from_file = match file {
            None => Settings::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    anyhow::anyhow!("cannot read config file {}: {e}", path.display())
                })?;
                toml::from_str(&text)
                    .map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))?
            }
        };
        let s = flags.or(from_file);
        let cipher = cipher(&s)?;
        let partition = duration("partition", s.partition, "1d")?;
        let day = Duration::from_secs(86_400);
        if partition < Duration::from_secs(60)
            || partition > day
            || !day.as_secs().is_multiple_of(partition.as_secs().max(1))
        {
            anyhow::bail!(
                "`partition`: must be between 1m and 1d and divide a day evenly (e.g. 1m, 15m, 1h, 1d)"
            );
        }
        let fsync = match s.fsync.as_deref().unwrap_or("always") {
            "always" => FsyncPolicy::Always,
            "never" => FsyncPolicy::Never,
            "interval" => {
                FsyncPolicy::Interval(duration("fsync_interval", s.fsync_interval, "100ms")?)
            }
            other => anyhow::bail!("`fsync`: `{other}` is not one of always, interval, never"),
        };
        let memtable_max_bytes = within(
            "memtable_max_bytes",
            s.memtable_max_bytes,
            toplog_engine::DEFAULT_MEMTABLE_MAX_BYTES,
            1..=MAX_MEMTABLE_BYTES,
        )?;
        let rollup_key_budget = within(
            "rollup_key_budget",
            s.rollup_key_budget,
            toplog_engine::DEFAULT_ROLLUP_KEY_BUDGET,
            16..=MAX_ROLLUP_KEY_BUDGET,
        )?;
        let max_concurrent_queries = within(
            "max_concurrent_queries",
            s.max_concurrent_queries,
            4,
            1..=MAX_CONCURRENCY,
        )?;
        let read_threads = within(
            "read_threads",
            s.read_threads,
            std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1)),
            1..=MAX_CONCURRENCY,
        )?;
        let query_memory_bytes = within(
            "query_memory_bytes",
            s.query_memory_bytes,
            DEFAULT_QUERY_MEMORY_BYTES,
            1 << 20..=MAX_QUERY_MEMORY_BYTES,
        )?;
        let key_memory_bytes = within(
            "key_memory_bytes",
            s.key_memory_bytes,
            toplog_engine::DEFAULT_KEY_MEMORY_BYTES,
            1 << 20..=MAX_KEY_MEMORY_BYTES,
        )?;
        let max_running_aggregations = within(
            "max_running_aggregations",
            s.max_running_aggregations,
            2,
            1..=MAX_CONCURRENCY,
        )?;
        let max_idempotency_keys = within(
            "max_idempotency_keys",
            s.max_idempotency_keys,
            toplog_engine::DEFAULT_MAX_IDEMPOTENCY_KEYS,
            1..=MAX_IDEMPOTENCY_KEYS,
        )?;
        let max_connections = within(
            "max_connections",
            s.max_connections,
            1024,
            1..=MAX_CONNECTIONS,
        )?;
        let header_timeout = duration("header_timeout", s.header_timeout, "10s")?;
        let body_timeout = duration("body_timeout", s.body_timeout, "60s")?;
        for (key, d) in [
            ("header_timeout", header_timeout),
            ("body_timeout", body_timeout),
        ] {
            if d < Duration::from_millis(100) {
                anyhow::bail!("`{key}`: must be at least 100ms");
            }
        }
        let query_timeout = duration("query_timeout", s.query_timeout, "30s")?;
        if query_timeout < Duration::from_millis(10) {
            anyhow::bail!("`query_timeout`: must be at least 10ms");
        }
        let max_body_bytes = within(
            "max_body_bytes",
            s.max_body_bytes,
            64 << 20,
            1..=MAX_BODY_BYTES,
        )?;
        let ingest_queue_bytes = s.ingest_queue_bytes.unwrap_or(256 << 20);
        if !(max_body_bytes..=MAX_INGEST_QUEUE_BYTES).contains(&ingest_queue_bytes) {
            anyhow::bail!(
                "`ingest_queue_bytes`: must be from `max_body_bytes` ({max_body_bytes}) to {MAX_INGEST_QUEUE_BYTES} (4 GiB)"
            );
        }
        let tls = crate::tls::TlsSettings {
            cert_file: s.tls_cert_file,
            key_file: s.tls_key_file,
            client_ca_file: s.tls_client_ca_file,
            require_client_cert: s.tls_require_client_cert,
            client_roles: None,
        }
        .or(s.tls.unwrap_or_default());
        let tls = tls.check()?.then_some(tls);
        let listen = s
            .listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
        let auth = match s.auth.as_deref().unwrap_or("on") {
            "on" => true,
            "off" if listen.ip().is_loopback() => false,
            "off" => anyhow::bail!(
                "`auth = \"off\"` is for local experiments: it needs a loopback `listen` address, not {listen}"
            ),
            other => anyhow::bail!("`auth`: `{other}` is not one of on, off"),
        };
        let cluster = crate::cluster::ClusterSettings::resolve(
            s.node_id,
            s.cluster.as_deref(),
            s.cluster_secret_file.as_deref(),
            s.raft_log_keep,
            s.ready_lag,
            s.shards,
            tls.as_ref(),
        )?;
        if cluster.is_some() && !auth {
            anyhow::bail!(
                "a cluster needs access control on: only the `peer` role may send Raft messages (`auth = \"off\"` is for a single node)"
            );
        }
        Ok(Self {
            cluster,
            cipher,
            tls,
            auth,
            rate_limits: s.rate_limits.clone().unwrap_or_default(),
            jwt: s.jwt.clone().unwrap_or_default(),
            data_dir: s.data_dir.unwrap_or_else(|| PathBuf::from("./toplog-data")),
            listen,
            partition,
            fsync,
            max_body_bytes,
            clock_skew: duration("clock_skew", s.clock_skew, "5m")?,
            policy: policy(&s.retention, s.raw_keep_for, s.raw_local_for)?,
            archive: ArchiveConfig {
                url: s
                    .archive_url
                    .or(s.archive.as_ref().and_then(|a| a.url.clone())),
                ..s.archive.clone().unwrap_or_default()
            },
            backup: {
                let settings = s.backup.clone().unwrap_or_default();
                crate::backup::Backups::new(settings.clone())?;
                settings
            },
            maintenance_interval: Some(duration(
                "maintenance_interval",
                s.maintenance_interval,
                "5m",
            )?)
            .filter(|d| !d.is_zero()),
            alert_grace: duration("alert_grace", s.alert_grace, "10s")?,
            alert_hosts: s.alert_hosts.as_deref().map(|list| {
                list.split(',')
                    .map(|h| h.trim().to_ascii_lowercase())
                    .filter(|h| !h.is_empty())
                    .collect()
            }),
            memtable_max_bytes,
            memtable_max_age: duration("memtable_max_age", s.memtable_max_age, "5m")?,
            rollup_key_budget,
            max_concurrent_queries,
            read_threads,
            query_memory_bytes,
            key_memory_bytes,
            query_timeout,
            max_running_aggregations,
            aggregation_ttl: duration("aggregation_ttl", s.aggregation_ttl, "24h")?,
            max_connections,
            max_idempotency_keys,
            ingest_queue_bytes,
            header_timeout,
            body_timeout,
        })
    }

    pub(crate) fn engine_config(&self) -> toplog_engine::EngineConfig {
        let mut c = toplog_engine::EngineConfig::new(&self.data_dir);
        c.partition = self.partition;
        c.fsync = self.fsync;
        c.memtable_max_bytes = self.memtable_max_bytes;
        c.memtable_max_age = self.memtable_max_age;
        c.rollup_key_budget = self.rollup_key_budget;
        c.max_idempotency_keys = self.max_idempotency_keys;
        c.key_memory_bytes = self.key_memory_bytes;
        c.cipher = self.cipher.clone();
        c
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn flags_override_file_override_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("toplog.toml");
        std::fs::write(
            &file,
            "partition = \"1h\"\nlisten = \"127.0.0.1:9999\"\nfsync = \"never\"\n",
        )
        .unwrap();
        let flags = Settings {
            partition: Some("15m".into()),
            ..Settings::default()
        };
        let c = Config::resolve(flags, Some(&file)).unwrap();
        assert_eq!(c.partition, Duration::from_secs(900));
        assert_eq!(c.listen.port(), 9999);
        assert_eq!(c.fsync, FsyncPolicy::Never);
        assert_eq!(c.policy, Policy::default());
        assert_eq!(c.maintenance_interval, Some(Duration::from_secs(300)));
    }

    #[test]
    fn rejects_bad_values_by_key() {
        let bad = |s: Settings| {
            Config::resolve(s, None)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(
            bad(Settings {
                partition: Some("7m".into()),
                ..Settings::default()
            })
            .contains("partition")
        );
        assert!(
            bad(Settings {
                fsync: Some("sometimes".into()),
                ..Settings::default()
            })
            .contains("fsync")
        );
        assert!(
            bad(Settings {
                clock_skew: Some("5x".into()),
                ..Settings::default()
            })
            .contains("clock_skew")
        );
        assert!(
            bad(Settings {
                rollup_key_budget: Some(3),
                ..Settings::default()
            })
            .contains("rollup_key_budget")
        );
    }

    #[test]
    fn retention_and_archive_come_from_their_tables() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("toplog.toml");
        std::fs::write(
            &file,
            "[retention.raw]\nlocal_for = \"90s\"\nkeep_for = \"20m\"\n\
             [retention.rollups]\nminute_keep_for = \"1h\"\n\
             [archive]\nurl = \"s3://bucket/toplog\"\nendpoint = \"http://127.0.0.1:9000\"\nallow_http = true\n",
        )
        .unwrap();
        let c = Config::resolve(Settings::default(), Some(&file)).unwrap();
        assert_eq!(c.policy.raw_local_for, Duration::from_secs(90));
        assert_eq!(c.policy.raw_keep_for, Duration::from_secs(1200));
        assert_eq!(c.policy.minute_keep_for, Duration::from_secs(3600));
        assert_eq!(c.archive.url.as_deref(), Some("s3://bucket/toplog"));
        assert_eq!(c.archive.allow_http, Some(true));
        // A flag beats the file; a short raw retention pulls local_for down with it.
        let flags = Settings {
            archive_url: Some("elsewhere".into()),
            raw_keep_for: Some("1d".into()),
            maintenance_interval: Some("0s".into()),
            ..Settings::default()
        };
        let c = Config::resolve(flags, None).unwrap();
        assert_eq!(c.archive.url.as_deref(), Some("elsewhere"));
        assert_eq!(c.policy.raw_local_for, Duration::from_secs(86_400));
        assert_eq!(c.maintenance_interval, None);
        std::fs::write(&file, "[retention.raw]\nkeep_for = \"forever\"\n").unwrap();
        let err = Config::resolve(Settings::default(), Some(&file))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("retention.raw.keep_for"), "{err}");
    }

    #[test]
    fn unknown_file_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("toplog.toml");
        std::fs::write(&file, "partiton = \"1h\"\n").unwrap();
        let err = Config::resolve(Settings::default(), Some(&file))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("partiton"), "{err}");
    }
}
