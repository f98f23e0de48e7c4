//! The command line: `toplog serve` starts a node.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};

use anyhow::Context;
use clap::{Parser, Subcommand};
use toplog_compaction::{
    ArchiveOwner, Claim, Maintainer, NodeId, ObjectArchive, OwnerError, Policy,
};
use toplog_engine::Engine;

use crate::api::{AppState, router};
use crate::config::{Config, Settings};

#[derive(Debug, Parser)]
#[command(
    name = "toplog",
    version,
    about = "Time-series store for HTTP request analytics"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a node.
    Serve {
        /// TOML file with the same keys as the flags (flags and TOPLOG_* variables win).
        #[arg(long, env = "TOPLOG_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        settings: Box<Settings>,
    },
    /// Print the top K keys of a running node by a metric.
    Top {
        #[arg(long, default_value_t = 10)]
        k: usize,
        /// frequency, errors, error_rate, latency_avg, latency_p50/p90/p95/p99, latency_max.
        #[arg(long, default_value = "frequency")]
        metric: String,
        /// endpoint, user_id, status_code, method or request.
        #[arg(long, default_value = "endpoint")]
        by: String,
        /// How far back from now, e.g. 15m, 1h, 7d.
        #[arg(long, default_value = "1h")]
        since: String,
        #[command(flatten)]
        target: crate::client::Target,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Send access logs (nginx, Apache) or NDJSON files to a node, each line
    /// once, however often it is run; `--follow` tails them across rotation.
    Import(crate::import::ImportArgs),
    /// Write a self-signed CA and certificates for trying TLS out: ca.pem,
    /// node.pem and client.pem with their keys (mode 0600).
    Cert {
        /// Where to write them.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Names and addresses the node certificate is for.
        #[arg(long = "host", default_values_t = ["localhost".to_owned(), "127.0.0.1".to_owned()])]
        hosts: Vec<String>,
    },
    /// Take a backup of a running node (`--to` an s3:// URL, or its
    /// `[backup] url`), or check backups: `toplog backup verify URL`.
    Backup(crate::backup::BackupArgs),
    /// Rebuild a node's data directory from a backup.
    Restore(crate::backup::RestoreArgs),
    /// Print one row per day: requests, average and p99 latency, error rate.
    History {
        #[arg(long, default_value_t = 30)]
        days: u32,
        #[command(flatten)]
        target: crate::client::Target,
        #[arg(long)]
        json: bool,
    },
}

/// Entry point of the `toplog` binary.
pub fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TOPLOG_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let printed = |out: anyhow::Result<String>| match out {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("toplog: {e:#}");
            ExitCode::FAILURE
        }
    };
    match cli.command {
        Command::Top {
            k,
            metric,
            by,
            since,
            target,
            json,
        } => {
            let since = match toplog_types::parse_duration(&since) {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("toplog: --since: {e}");
                    return ExitCode::from(2);
                }
            };
            let args = crate::client::TopArgs {
                target: &target,
                k,
                metric: &metric,
                by: &by,
                since,
                json,
            };
            printed(crate::client::top(&args))
        }
        Command::Import(args) => printed(crate::import::run(args)),
        Command::Backup(args) => printed(crate::backup::backup(&args)),
        Command::Restore(args) => printed(crate::backup::restore_command(&args)),
        Command::Cert { out, hosts } => {
            printed(crate::tls::write_certificates(&out, &hosts).map(|written| {
                let names: Vec<String> =
                    written.0.iter().map(|p| p.display().to_string()).collect();
                format!(
                    "wrote {}\nserve with: --tls-cert-file {} --tls-key-file {}",
                    names.join(", "),
                    out.join("node.pem").display(),
                    out.join("node.key").display()
                )
            }))
        }
        Command::History { days, target, json } => {
            printed(crate::client::history(&target, days, json))
        }
        Command::Serve { config, settings } => {
            let config = match Config::resolve(*settings, config.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("toplog: configuration error: {e}");
                    return ExitCode::from(2);
                }
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("toplog: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(serve(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("toplog: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Locks `<data_dir>/LOCK` (creating the directory if need be) for as long as
/// the returned file is open; fails if another process holds it.
fn lock_data_dir(dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    std::fs::create_dir_all(dir)
        .map_err(|e| anyhow::anyhow!("cannot create the data directory {}: {e}", dir.display()))?;
    match crate::lock::try_lock(&dir.join("LOCK"))? {
        Some(file) => Ok(file),
        None => anyhow::bail!(
            "the data directory {} is in use by another toplog process",
            dir.display()
        ),
    }
}

/// How long a batch waits for room among the batches in flight before `503`.
const INGEST_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs a node until SIGINT or SIGTERM, then drains requests and closes the store.
async fn serve(config: Config) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let local = listener.local_addr()?;
    let mut engine_config = config.engine_config();
    // Held until the node stops: two nodes on one directory would undo each
    // other's flushes and maintenance.
    let _lock = lock_data_dir(&engine_config.data_dir)?;
    let node_id = NodeId::load_or_create(&engine_config.data_dir)?;
    let archive = Arc::new(ObjectArchive::open(
        &config.archive,
        &engine_config.data_dir,
    )?);
    // A cluster's members share one archive, the cluster's (docs/cluster.md).
    let owner = Arc::new(if config.cluster.is_some() {
        ArchiveOwner::for_cluster(
            archive.clone(),
            archive.location().to_owned(),
            node_id,
            !archive.in_data_dir(),
        )
    } else {
        ArchiveOwner::new(archive.clone(), archive.location().to_owned(), node_id)
    });
    engine_config.archive = Some(archive);
    // A policy changed through the API outlives restarts and wins over the config.
    let policy = match Policy::load(&engine_config.data_dir, &engine_config.cipher) {
        Ok(Some(p)) => p,
        Ok(None) => config.policy,
        Err(e) => anyhow::bail!("retention.json: {e}"),
    };
    let interval = config.maintenance_interval;
    let tls = match &config.tls {
        None => None,
        Some(settings) => {
            let tls = crate::tls::Tls::load(settings.clone())?;
            tokio::spawn(tls.clone().watch());
            Some(tls)
        }
    };
    let config_tls = tls.is_some();
    let auth = Arc::new(if config.auth {
        crate::auth::Auth::open(
            &engine_config.data_dir,
            std::env::var("TOPLOG_ADMIN_KEY")
                .ok()
                .filter(|k| !k.is_empty())
                .as_deref(),
            &config.rate_limits,
            &config.jwt,
            &engine_config.cipher,
            config.cluster.as_ref().and_then(|c| c.secret()),
            config.cluster.is_some(),
        )?
    } else {
        tracing::warn!(
            "access control is off (`auth = \"off\"`): anyone who can reach this node may do anything"
        );
        crate::auth::Auth::off()
    });
    // A cluster member's engine takes its batches from the Raft log.
    engine_config.replicated = config.cluster.is_some();
    let limits = crate::listen::Limits {
        max_connections: config.max_connections,
        header_timeout: config.header_timeout,
        body_timeout: config.body_timeout,
    };
    let backups = crate::backup::Backups::new(config.backup.clone())?;
    let state = Arc::new(AppState {
        queries: crate::api::QueryGate::new(
            config.max_concurrent_queries,
            config.read_threads,
            config.query_timeout,
            config.query_memory_bytes,
        ),
        aggregations: Arc::new(tokio::sync::Semaphore::new(config.max_running_aggregations)),
        ingest: crate::api::IngestGate::new(config.ingest_queue_bytes, INGEST_WAIT),
        config,
        engine: OnceLock::new(),
        startup_error: OnceLock::new(),
        jobs: OnceLock::new(),
        maintainer: OnceLock::new(),
        openapi: OnceLock::new(),
        auth,
        cluster: OnceLock::new(),
        shards: OnceLock::new(),
        alerting: OnceLock::new(),
        metrics: crate::metrics::Metrics::new(),
        backups,
    });
    tracing::info!(address = %local, tls = config_tls, data_dir = %engine_config.data_dir.display(), node_id = %node_id, "listening");

    // Recovery runs while /healthz already answers and /readyz says "recovering".
    let opener = {
        let state = state.clone();
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let jobs_dir = engine_config.data_dir.join("jobs");
            let cipher = engine_config.cipher.clone();
            // Claimed while recovery runs; nothing touches the archive before
            // both end. A cluster's member claims it for the cluster once the
            // log names it, at its first maintenance pass.
            let claim = (state.config.cluster.is_none()).then(|| claim_archive(owner.clone()));
            let shard_opener = {
                let (engine_config, owner, runtime) =
                    (engine_config.clone(), owner.clone(), runtime.clone());
                move |main| crate::cluster::Opener {
                    data_dir: engine_config.data_dir.clone(),
                    engine_config,
                    owner,
                    main,
                    runtime,
                    maintenance_every: interval,
                }
            };
            let opened = Engine::open(engine_config)
                .context("cannot open the store")
                .and_then(|engine| {
                    let jobs =
                        toplog_query::JobStore::open(&jobs_dir, &cipher).context("cannot open the store")?;
                    Ok((engine, jobs))
                })
                .and_then(|(engine, jobs)| match claim.map_or(Ok(()), PendingClaim::wait) {
                    Ok(()) => Ok((engine, jobs)),
                    Err(e) => {
                        if let Err(closing) = engine.close() {
                            tracing::warn!(error = %closing, "closing the store after a refused start");
                        }
                        Err(e.into())
                    }
                });
            match opened {
                Ok((engine, (store, unfinished, skipped))) => {
                    for why in skipped {
                        tracing::warn!("aggregation jobs: skipped {why}");
                    }
                    let (engine, store) = (Arc::new(engine), Arc::new(store));
                    let alerting =
                        match crate::alerts::Alerting::open(engine.data_dir(), engine.cipher()) {
                            Ok(a) => Arc::new(a),
                            Err(e) => {
                                let e = e.context("cannot open the alerting state");
                                let _ = state.startup_error.set(format!("{e:#}"));
                                return Err(e);
                            }
                        };
                    let _ = state.alerting.set(alerting.clone());
                    let maintainer = Arc::new(Maintainer::new(
                        engine.clone(),
                        engine.data_dir().to_path_buf(),
                        policy,
                        owner,
                    ));
                    let _ = state.maintainer.set(maintainer.clone());
                    if let Some(every) = interval {
                        runtime.spawn(maintain_every(Arc::downgrade(&maintainer), every));
                    }
                    let _ = state.jobs.set(store.clone());
                    let _ = state.engine.set(engine.clone());
                    // A sharded cluster's jobs read every shard.
                    let job_source = crate::api::JobSource::of(&state, &engine);
                    // Jobs cut short by the last stop run again: they only read.
                    for job in unfinished {
                        runtime.spawn(crate::api::run_job(
                            job_source.clone(),
                            store.clone(),
                            state.aggregations.clone(),
                            state.config.query_memory_bytes,
                            job,
                        ));
                    }
                    // A cluster member's Raft node delivers what the engine
                    // has not flushed, then its new entries.
                    if let Some(settings) = &state.config.cluster {
                        let started = start_cluster(
                            &state,
                            settings,
                            &runtime,
                            crate::cluster::NodeParts {
                                engine: engine.clone(),
                                maintainer: maintainer.clone(),
                                shared: None,
                            },
                            crate::api::JobRunner {
                                source: job_source,
                                store: store.clone(),
                                turns: state.aggregations.clone(),
                                memory_bytes: state.config.query_memory_bytes,
                                ttl_us: i64::try_from(state.config.aggregation_ttl.as_micros())
                                    .unwrap_or(i64::MAX),
                                runtime: runtime.clone(),
                            },
                            alerting.clone(),
                            shard_opener,
                        );
                        if let Err(e) = started {
                            let _ = state.startup_error.set(format!("{e:#}"));
                            return Err(e);
                        }
                    }
                    runtime.spawn(crate::api::scheduled_backups(state.clone()));
                    runtime.spawn(crate::api::evaluate_alerts(state.clone(), alerting));
                    tracing::info!("ready");
                    Ok(())
                }
                Err(e) => {
                    let _ = state.startup_error.set(format!("{e:#}"));
                    Err(e)
                }
            }
        })
    };

    // gRPC first: its routes answer by content type (`application/grpc`)
    // under their own paths; everything else is the REST router's.
    let app = crate::grpc::router(state.clone())
        .await
        .merge(router(state.clone()));
    let server = tokio::spawn(crate::listen::serve(
        listener,
        app,
        limits,
        tls,
        shutdown_signal(),
    ));
    let opened = opener
        .await
        .map_err(|e| anyhow::anyhow!("recovery task failed: {e}"))?;
    if let Err(e) = opened {
        server.abort();
        return Err(e);
    }
    server
        .await
        .map_err(|e| anyhow::anyhow!("server task failed: {e}"))?;
    // Requests have drained; nothing can append any more.
    if let Some(engine) = state.engine.get().cloned() {
        tokio::task::spawn_blocking(move || engine.close())
            .await
            .map_err(|e| anyhow::anyhow!("close task failed: {e}"))??;
    }
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Starts the node's main Raft group and, in a sharded cluster, the
/// replicas of the shards it holds.
#[allow(clippy::too_many_arguments)]
fn start_cluster(
    state: &Arc<AppState>,
    settings: &crate::cluster::ClusterSettings,
    runtime: &tokio::runtime::Handle,
    mut parts: crate::cluster::NodeParts,
    jobs: crate::api::JobRunner,
    alerting: Arc<crate::alerts::Alerting>,
    opener: impl FnOnce(Arc<Maintainer>) -> crate::cluster::Opener,
) -> anyhow::Result<()> {
    let raft_dir = parts.engine.data_dir().join("raft");
    std::fs::create_dir_all(&raft_dir).with_context(|| format!("{}", raft_dir.display()))?;
    let shard_state = Arc::new(crate::cluster::ShardState::open(&raft_dir)?);
    let main = parts.maintainer.clone();
    parts.shared = Some(crate::cluster::SharedParts {
        auth: state.auth.clone(),
        jobs,
        alerting,
        shard_state: shard_state.clone(),
    });
    let cluster = crate::cluster::Cluster::start(
        settings,
        crate::cluster::Group {
            id: 0,
            raft_dir,
            members: settings.members.clone(),
        },
        runtime,
        parts,
    )
    .context("cannot start the cluster's Raft node")?;
    tracing::info!(node_id = settings.node_id, members = ?settings.members, shards = settings.shards, "a member of a Raft cluster");
    let _ = state.cluster.set(cluster.clone());
    if settings.shards > 1 {
        let shards = crate::cluster::Shards::open(settings, shard_state, opener(main), cluster)
            .context("cannot open this node's shards")?;
        runtime.spawn(crate::cluster::rebalance(Arc::downgrade(&shards)));
        let _ = state.shards.set(shards);
    }
    Ok(())
}

/// How long start-up waits for the archive to say who owns it.
const CLAIM_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// The archive claim under way on a thread of its own.
struct PendingClaim(std::sync::mpsc::Receiver<Result<Claim, OwnerError>>);

/// Starts claiming the archive for this node (see docs/operations.md, "One
/// archive, one owner").
fn claim_archive(owner: Arc<ArchiveOwner>) -> PendingClaim {
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("toplog-claim".into())
        .spawn(move || {
            let _ = tx.send(owner.claim());
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the archive claim; maintenance will claim it");
    }
    PendingClaim(rx)
}

impl PendingClaim {
    /// Waits for the claim: another owner refuses the start. A store that
    /// fails or does not answer in time does not (reads of local data and
    /// ingest need no archive); maintenance then claims the archive before
    /// it writes or deletes anything there.
    fn wait(self) -> Result<(), OwnerError> {
        match self.0.recv_timeout(CLAIM_WAIT) {
            Ok(Ok(claim)) => {
                tracing::debug!(?claim, "the archive is this node's");
                Ok(())
            }
            Ok(Err(e)) if e.is_store() => {
                tracing::warn!(error = %e, "archive owner unknown; maintenance leaves the archive alone until it is");
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                tracing::warn!(
                    "the archive claim ended without an answer; maintenance will claim it"
                );
                Ok(())
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                tracing::warn!(
                    "no answer from the archive in {CLAIM_WAIT:?}; maintenance leaves it alone until it answers"
                );
                Ok(())
            }
        }
    }
}

/// Runs maintenance every `every`, off the async threads.
/// Runs `maintainer`'s passes every `every`, for as long as its store is
/// held elsewhere (a shard's replica removed from this node ends them).
pub(crate) async fn maintain_every(
    maintainer: std::sync::Weak<Maintainer>,
    every: std::time::Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate: give start-up a period first
    loop {
        tick.tick().await;
        let Some(m) = maintainer.upgrade() else {
            return;
        };
        match tokio::task::spawn_blocking(move || m.run()).await {
            Ok(report) if !report.errors.is_empty() => {
                tracing::warn!(errors = ?report.errors, "maintenance left work for the next pass");
            }
            Ok(report) => tracing::debug!(took_ms = report.took_ms, "maintenance done"),
            Err(e) => tracing::error!(error = %e, "maintenance task failed"),
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! { () = ctrl_c => {}, () = term => {} }
    tracing::info!("shutting down: draining requests");
}
