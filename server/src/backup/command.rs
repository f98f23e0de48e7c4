//! `toplog backup`, `toplog backup verify` and `toplog restore`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use super::BackupSettings;
use crate::client::Target;

/// How long `toplog backup` waits for the node's answer.
const BACKUP_WAIT: Duration = Duration::from_secs(3600);

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct BackupArgs {
    #[command(subcommand)]
    check: Option<Check>,
    /// Where to: an s3://bucket/prefix URL; without it, the node's `[backup] url`.
    #[arg(long)]
    to: Option<String>,
    #[command(flatten)]
    target: Target,
    /// Print the API's JSON instead of a summary.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Subcommand)]
enum Check {
    /// Check every file of the backups at URL (or only `--id`) against
    /// their manifests; names each damaged or missing file.
    Verify {
        url: String,
        #[arg(long)]
        id: Option<String>,
        #[command(flatten)]
        location: Location,
    },
}

#[derive(Debug, clap::Args)]
pub(crate) struct RestoreArgs {
    /// The backup location: a folder or s3://bucket/prefix.
    #[arg(long)]
    from: String,
    /// The new node's data directory: it must not exist or be empty.
    #[arg(long)]
    data_dir: PathBuf,
    /// Which backup (the newest without it).
    #[arg(long)]
    id: Option<String>,
    /// Put the backup's copy of the node's S3 archive into this new archive
    /// (an s3://bucket/prefix URL, reached with `--config`'s `[archive]`
    /// settings), for a node whose archive was lost.
    #[arg(long)]
    archive_to: Option<String>,
    #[command(flatten)]
    location: Location,
}

/// How to reach an S3 location: `[backup]`'s endpoint, region and keys in
/// a config file, else the `AWS_*` environment variables.
#[derive(Debug, clap::Args)]
struct Location {
    /// A node config file whose `[backup]` has the S3 settings.
    #[arg(long, env = "TOPLOG_CONFIG")]
    config: Option<PathBuf>,
}

impl Location {
    /// The config file's table `name` (`backup` or `archive`), if any.
    fn table<T: serde::de::DeserializeOwned + Default>(&self, name: &str) -> anyhow::Result<T> {
        let Some(path) = &self.config else {
            return Ok(T::default());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let table: toml::Table =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        match table.get(name) {
            None => Ok(T::default()),
            Some(t) => t
                .clone()
                .try_into()
                .map_err(|e| anyhow::anyhow!("{}: [{name}]: {e}", path.display())),
        }
    }

    /// The backup location at `url`, with `[backup]`'s S3 settings.
    fn open(&self, url: &str) -> anyhow::Result<toplog_compaction::ObjectArchive> {
        self.table::<BackupSettings>("backup")?
            .open(url, Path::new("."))
    }

    /// The archive at `url`, with `[archive]`'s S3 settings.
    fn open_archive(&self, url: &str) -> anyhow::Result<toplog_compaction::ObjectArchive> {
        let config = toplog_compaction::ArchiveConfig {
            url: Some(url.to_owned()),
            ..self.table("archive")?
        };
        toplog_compaction::ObjectArchive::open(&config, Path::new("."))
            .map_err(|e| anyhow::anyhow!("--archive-to {url}: {e}"))
    }
}

/// `toplog backup`: asks the node to take one and waits for it (or checks
/// a location, with `verify`). The text to print, or why it failed.
pub(crate) fn backup(args: &BackupArgs) -> anyhow::Result<String> {
    if let Some(Check::Verify { url, id, location }) = &args.check {
        return verify(url, id.as_deref(), location);
    }
    let target = &args.target;
    let client = target.client(BACKUP_WAIT)?;
    let server = target.server.trim_end_matches('/');
    let body = match &args.to {
        Some(to) => json!({"to": to}),
        None => json!({}),
    };
    let answer = target.answer(
        client
            .post(format!("{server}/api/v1/admin/backups"))
            .json(&body),
    )?;
    if args.json {
        return Ok(answer.to_string());
    }
    let d = &answer["data"];
    let mut text = format!(
        "backup {} at log index {} in {}: {} files, {} bytes, {} files ({} bytes) copied, in {} ms",
        d["id"].as_str().unwrap_or_default(),
        d["index"],
        d["url"].as_str().unwrap_or_default(),
        d["files"],
        d["bytes"],
        d["copied_files"],
        d["copied_bytes"],
        d["took_ms"],
    );
    if let Some(keys) = d["key_ids"].as_array().filter(|k| !k.is_empty()) {
        let keys: Vec<&str> = keys.iter().filter_map(Value::as_str).collect();
        text += &format!("\nencrypted: a restore needs the keys {}", keys.join(", "));
    }
    Ok(text)
}

fn verify(url: &str, id: Option<&str>, location: &Location) -> anyhow::Result<String> {
    let store = location.open(url)?;
    let v = super::verify(&store, id)?;
    let summary = format!(
        "{} backup(s), {} files, {} bytes checked",
        v.backups.len(),
        v.files,
        v.bytes
    );
    if v.problems.is_empty() {
        return Ok(format!("{summary}: all match their manifests"));
    }
    anyhow::bail!(
        "{summary}: {} do not match:\n{}",
        v.problems.len(),
        v.problems.join("\n")
    )
}

/// `toplog restore`.
pub(crate) fn restore(args: &RestoreArgs) -> anyhow::Result<String> {
    let store = args.location.open(&args.from)?;
    let archive = match &args.archive_to {
        Some(url) => Some(args.location.open_archive(url)?),
        None => None,
    };
    super::restore(&store, args.id.as_deref(), &args.data_dir, archive.as_ref())
}
