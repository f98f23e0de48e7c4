//! `toplog import`: access logs, NDJSON and Parquet files sent to a node in
//! batches.
//!
//! Each batch goes under an idempotency key made of the file's identity (a
//! hash of its first line) and the batch's byte range, and the importer's
//! offset file ([`offsets`]) records how far each file was stored, so a
//! re-run, an interrupted run, or a run long after the node's 24-hour
//! idempotency window never stores a line twice. `--follow` reads files as
//! they grow, across rotation by rename or by copy and truncate.

mod offsets;
mod progress;
mod send;
mod source;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;
use toplog_engine::parquet::{ParquetRow, ParquetRows};
use toplog_formats::access_log::LogFormat;
use toplog_formats::route::RouteRules;
use toplog_types::{Event, Micros, ValidationLimits};

use offsets::{Offsets, Position};
use progress::{Counts, Progress};
use send::{Answer, Sender};
use source::{Compression, Lines};

/// What to do with a line that is not an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum OnError {
    /// Report it (file and line) and go on without it.
    Skip,
    /// Report it and stop: a file (not followed) with such a line is not
    /// sent at all; a followed file is sent up to the line before it.
    Fail,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ImportArgs {
    /// Files to send: plain, gzip (`.gz`) or zstd (`.zst`).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    #[command(flatten)]
    target: crate::client::Target,
    /// nginx-timed (combined + $request_time), apache-combined (+ %D),
    /// ndjson (the events of POST /api/v1/requests, one per line), parquet
    /// (columns named as the archive's); nginx-combined is refused: it has
    /// no latency.
    #[arg(long, default_value = "nginx-timed")]
    format: String,
    /// Keep reading each file as it grows, across rotation (like `tail -F`),
    /// until SIGINT or SIGTERM.
    #[arg(long)]
    follow: bool,
    /// What to do with a line that is not an event.
    #[arg(long, value_enum, default_value_t = OnError::Fail)]
    on_error: OnError,
    /// The offset file: how far each file was stored (default
    /// `$XDG_STATE_HOME/toplog/import.json` or `~/.local/state/toplog/import.json`).
    #[arg(long, env = "TOPLOG_IMPORT_STATE")]
    state: Option<PathBuf>,
    /// The TOML file whose `[import]` table holds `route_rules`.
    #[arg(long, env = "TOPLOG_CONFIG")]
    config: Option<PathBuf>,
    /// Lines per batch.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    batch_lines: u32,
}

/// `[import]` in the configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportTable {
    /// Tried in order before the built-in templating (numbers, UUIDs, long hex).
    #[serde(default)]
    route_rules: Vec<RouteRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteRule {
    pattern: String,
    template: String,
}

/// How a file's records become events.
enum Parser {
    Log(LogFormat),
    Ndjson,
    /// Rows of a Parquet file ([`ParquetRows`]).
    Parquet,
}

/// Set by SIGINT or SIGTERM: finish the batch in hand and stop.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// How often a followed file is looked at when nothing new was there.
const POLL: Duration = Duration::from_millis(200);

/// Bad lines reported one by one; past it only counted.
const REPORTED_LINES: u64 = 20;

/// Runs the import; `Ok` holds the summary.
pub(crate) fn run(args: ImportArgs) -> anyhow::Result<String> {
    let parser = match args.format.as_str() {
        "ndjson" => Parser::Ndjson,
        "parquet" => Parser::Parquet,
        name => Parser::Log(LogFormat::named(name).context("--format")?),
    };
    if args.follow && matches!(parser, Parser::Parquet) {
        anyhow::bail!(
            "--follow reads growing text files; a Parquet file is complete: import it without --follow"
        );
    }
    if args.follow
        && args
            .files
            .iter()
            .any(|f| Compression::of(f) != Compression::None)
    {
        anyhow::bail!(
            "--follow reads plain files; a compressed file is complete: import it without --follow"
        );
    }
    let routes = route_rules(args.config.as_deref())?;
    let state = match args.state {
        Some(p) => p,
        None => Offsets::default_path()?,
    };
    let offsets = Offsets::open(&state)?;
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(signal, on_signal as *const () as libc::sighandler_t) };
    }
    let progress = Progress::start();
    let importer = Importer {
        sender: Sender::new(args.target.clone())?,
        offsets: Mutex::new(offsets),
        parser,
        routes,
        on_error: args.on_error,
        batch_lines: args.batch_lines as usize,
        counts: progress.counts.clone(),
        reported: AtomicU64::new(0),
    };
    let outcome = if args.follow {
        std::thread::scope(|s| {
            let followers: Vec<_> = args
                .files
                .iter()
                .map(|path| {
                    s.spawn(|| {
                        let followed = importer.follow(path);
                        if followed.is_err() {
                            // One file cannot go on: the import stops, with what it sent kept.
                            STOP.store(true, Ordering::Relaxed);
                        }
                        followed
                    })
                })
                .collect();
            followers
                .into_iter()
                .map(|f| {
                    f.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("a follower failed")))
                })
                .collect::<anyhow::Result<Vec<()>>>()
        })
        .map(drop)
    } else {
        for path in &args.files {
            if let Ok(m) = std::fs::metadata(path)
                && Compression::of(path) == Compression::None
            {
                importer
                    .counts
                    .total_bytes
                    .fetch_add(m.len(), Ordering::Relaxed);
            }
        }
        args.files.iter().try_for_each(|path| importer.import(path))
    };
    let summary = progress.finish();
    match outcome {
        Ok(()) => Ok(summary),
        Err(e) => Err(e.context(summary)),
    }
}

fn route_rules(config: Option<&Path>) -> anyhow::Result<RouteRules> {
    let Some(path) = config else {
        return Ok(RouteRules::default());
    };
    #[derive(Deserialize)]
    struct File {
        #[serde(default)]
        import: ImportTable,
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    // Only `[import]` is read here; the node's settings beside it are `serve`'s.
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("config file {}", path.display()))?;
    let file: File = toml::Value::Table(table)
        .try_into()
        .with_context(|| format!("config file {}: [import]", path.display()))?;
    Ok(RouteRules::new(
        file.import
            .route_rules
            .iter()
            .map(|r| (r.pattern.as_str(), r.template.as_str())),
    )?)
}

struct Importer {
    sender: Sender,
    offsets: Mutex<Offsets>,
    parser: Parser,
    routes: RouteRules,
    on_error: OnError,
    batch_lines: usize,
    counts: std::sync::Arc<Counts>,
    reported: AtomicU64,
}

/// One file being read: where it is stored up to, and the batch being built.
struct Reading<'p> {
    path: &'p Path,
    identity: String,
    /// Stored up to here.
    done: Position,
    /// Read up to here.
    at: Position,
    /// The range a run that stopped short was sending: sent again as it was.
    resend: Option<Position>,
    events: Vec<Event>,
    /// The line number of each event.
    lines: Vec<u64>,
}

impl Importer {
    fn limits() -> ValidationLimits {
        // The node checks the time window; here only the fields are.
        const CENTURY_US: i64 = 100 * 366 * 86_400 * 1_000_000;
        ValidationLimits {
            now: Micros::now(),
            max_future_us: CENTURY_US,
            max_age_us: CENTURY_US,
        }
    }

    /// The event of one line (of a line format).
    fn event(&self, line: &[u8], limits: &ValidationLimits) -> Result<Event, String> {
        let text =
            std::str::from_utf8(line).map_err(|_| "the line is not UTF-8 text".to_owned())?;
        let checked = match &self.parser {
            Parser::Log(format) => {
                let row = format
                    .parse(text, &self.routes)
                    .map_err(|e| e.to_string())?;
                Event::from_typed(row, 0, limits)
            }
            Parser::Ndjson => {
                let value: serde_json::Value =
                    serde_json::from_str(text).map_err(|e| format!("not a JSON object: {e}"))?;
                Event::from_json(&value, 0, limits)
            }
            Parser::Parquet => return Err("a Parquet file has no lines".into()),
        };
        checked.map_err(|e| format!("field `{}`: {}", e.field, e.message))
    }

    /// The event of one Parquet row.
    fn row_event(row: ParquetRow, limits: &ValidationLimits) -> Result<Event, String> {
        let row = row.map_err(|(field, why)| format!("field `{field}`: {why}"))?;
        Event::from_typed(row, 0, limits).map_err(|e| format!("field `{}`: {}", e.field, e.message))
    }

    /// Where record `n` (1-based) of `path` is, for messages.
    fn place(&self, path: &Path, n: u64) -> String {
        match self.parser {
            Parser::Parquet => format!("{}: row {n}", path.display()),
            _ => format!("{}:{n}", path.display()),
        }
    }

    /// Imports a whole file, from where earlier runs left it.
    fn import(&self, path: &Path) -> anyhow::Result<()> {
        if let Parser::Parquet = self.parser {
            return self.import_parquet(path);
        }
        let (identity, mut lines) = Lines::open(path)?;
        let Some(identity) = identity else {
            return Ok(()); // empty: nothing to send
        };
        let mut reading = self.reading(path, identity);
        if self.on_error == OnError::Fail {
            self.check_all(path, &reading)?;
        }
        if Compression::of(path) == Compression::None {
            lines = Lines::from_plain(File::open(path)?, reading.done.offset)?;
        } else {
            lines.skip_to(reading.done.offset, path)?;
        }
        self.pump(&mut reading, &mut lines, true)
    }

    fn reading<'p>(&self, path: &'p Path, identity: String) -> Reading<'p> {
        let (done, resend) = self.offsets().get(&identity);
        Reading {
            path,
            identity,
            done,
            at: done,
            resend,
            events: Vec::new(),
            lines: Vec::new(),
        }
    }

    fn offsets(&self) -> std::sync::MutexGuard<'_, Offsets> {
        self.offsets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reads the file to its end and refuses it, before anything is sent,
    /// if a line is not an event.
    fn check_all(&self, path: &Path, from: &Reading<'_>) -> anyhow::Result<()> {
        let (_, mut lines) = Lines::open(path)?;
        lines.skip_to(from.done.offset, path)?;
        let limits = Self::limits();
        let mut line_no = from.done.line;
        while let Some((line, _)) = lines.next_line(true)? {
            line_no += 1;
            if let Err(why) = self.event(&line, &limits) {
                anyhow::bail!(
                    "{}: {why}\nnothing from {} was sent (--on-error skip leaves such lines out)",
                    self.place(path, line_no),
                    path.display()
                );
            }
        }
        Ok(())
    }

    /// Sends every whole line there is now (with `last`, an unfinished last
    /// line too), a batch at a time.
    fn pump(&self, r: &mut Reading<'_>, lines: &mut Lines, last: bool) -> anyhow::Result<()> {
        let limits = Self::limits();
        while !STOP.load(Ordering::Relaxed) {
            let Some((line, end)) = lines.next_line(last)? else {
                break;
            };
            let n = r.at.line + 1;
            let event = self.event(&line, &limits);
            let to = Position {
                offset: end,
                line: n,
            };
            self.take(r, event, to, line.len() as u64 + 1)?;
        }
        self.ship(r)
    }

    /// Imports a Parquet file, a batch of rows at a time; its position is
    /// counted in rows.
    fn import_parquet(&self, path: &Path) -> anyhow::Result<()> {
        let open = |skip: u64| -> anyhow::Result<ParquetRows> {
            let file =
                File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
            let skip = usize::try_from(skip).unwrap_or(usize::MAX);
            ParquetRows::open(file, skip, self.batch_lines)
                .with_context(|| format!("{} is not a Parquet file of events", path.display()))
        };
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let identity = source::parquet_identity(&file)
            .with_context(|| format!("{} is not a Parquet file", path.display()))?;
        let mut reading = self.reading(path, identity);
        let limits = Self::limits();
        if self.on_error == OnError::Fail {
            let mut rows = open(reading.done.offset)?;
            let mut n = reading.done.line;
            while let Some(batch) = rows
                .next_rows()
                .with_context(|| format!("cannot read {}", path.display()))?
            {
                for row in batch {
                    n += 1;
                    if let Err(why) = Self::row_event(row, &limits) {
                        anyhow::bail!(
                            "{}: {why}\nnothing from {} was sent (--on-error skip leaves such rows out)",
                            self.place(path, n),
                            path.display()
                        );
                    }
                }
            }
        }
        let mut rows = open(reading.done.offset)?;
        while let Some(batch) = rows
            .next_rows()
            .with_context(|| format!("cannot read {}", path.display()))?
        {
            for row in batch {
                if STOP.load(Ordering::Relaxed) {
                    return Ok(());
                }
                let n = reading.at.line + 1;
                let event = Self::row_event(row, &limits);
                self.take(&mut reading, event, Position { offset: n, line: n }, 0)?;
            }
        }
        self.ship(&mut reading)
    }

    /// One record read, up to `to`: kept for the batch, or reported (and
    /// the import stopped, with `--on-error fail`); a full batch is sent.
    fn take(
        &self,
        r: &mut Reading<'_>,
        event: Result<Event, String>,
        to: Position,
        bytes: u64,
    ) -> anyhow::Result<()> {
        match event {
            Ok(event) => {
                r.events.push(event);
                r.lines.push(to.line);
            }
            Err(why) => match self.on_error {
                OnError::Fail => {
                    self.ship(r)?;
                    anyhow::bail!(
                        "{}: {why}\nwhat comes before it is stored; a run with --on-error skip goes on past it",
                        self.place(r.path, to.line)
                    );
                }
                OnError::Skip => self.report_skipped(r.path, to.line, &why),
            },
        }
        r.at = to;
        self.counts.bytes.fetch_add(bytes, Ordering::Relaxed);
        let resend_ends = r.resend.is_some_and(|end| r.at.offset >= end.offset);
        if r.events.len() >= self.batch_lines || resend_ends {
            self.ship(r)?;
        }
        Ok(())
    }

    fn report_skipped(&self, path: &Path, line: u64, why: &str) {
        self.counts.skipped_lines.fetch_add(1, Ordering::Relaxed);
        match self.reported.fetch_add(1, Ordering::Relaxed) {
            n if n < REPORTED_LINES => {
                eprintln!("toplog import: {}: skipped: {why}", self.place(path, line))
            }
            REPORTED_LINES => {
                eprintln!("toplog import: more bad lines skipped; the count is in the summary")
            }
            _ => {}
        }
    }

    /// Sends the lines read since the last batch (`done` to `at`) under the
    /// key of that range, and records them stored.
    fn ship(&self, r: &mut Reading<'_>) -> anyhow::Result<()> {
        if r.at == r.done {
            return Ok(());
        }
        if r.events.is_empty() {
            // Every line was skipped: nothing to send, but they are behind us.
            self.offsets().commit(&r.identity, r.path, r.at)?;
            r.done = r.at;
            return Ok(());
        }
        self.offsets().begin(&r.identity, r.path, r.at)?;
        let key = format!("import-{}-{}-{}", r.identity, r.done.offset, r.at.offset);
        loop {
            let mut body = Vec::with_capacity(r.events.len() * 160);
            for e in &r.events {
                serde_json::to_writer(&mut body, &e.to_json())?;
                body.push(b'\n');
            }
            match self.sender.send(&key, body, &STOP)? {
                Answer::Stored { replayed } => {
                    let n = r.events.len() as u64;
                    let counter = if replayed {
                        &self.counts.replayed
                    } else {
                        &self.counts.events
                    };
                    counter.fetch_add(n, Ordering::Relaxed);
                    break;
                }
                Answer::RowRefused { row, message } if row < r.events.len() => {
                    let line = r.lines[row];
                    if self.on_error == OnError::Fail {
                        anyhow::bail!(
                            "{}: the node refused it: {message}\nnothing from {} on was stored",
                            self.place(r.path, line),
                            self.place(r.path, r.done.line + 1)
                        );
                    }
                    self.report_skipped(r.path, line, &format!("the node refused it: {message}"));
                    r.events.remove(row);
                    r.lines.remove(row);
                    if r.events.is_empty() {
                        break;
                    }
                }
                Answer::RowRefused { message, .. } => {
                    anyhow::bail!("the node refused a batch: {message}")
                }
            }
        }
        self.offsets().commit(&r.identity, r.path, r.at)?;
        r.done = r.at;
        r.resend = None;
        r.events.clear();
        r.lines.clear();
        Ok(())
    }

    /// Follows `path` as `tail -F` does: what is there, then what is added;
    /// when the name points at a new file (rotation by rename) the old one is
    /// read to its end first; when the file shrinks or its first line
    /// changes (copy and truncate) it is read again from its start, as the
    /// new file it is.
    fn follow(&self, path: &Path) -> anyhow::Result<()> {
        'file: loop {
            let (file, identity) = loop {
                if STOP.load(Ordering::Relaxed) {
                    return Ok(());
                }
                match File::open(path) {
                    Ok(f) => {
                        if let Some(id) = source::plain_identity(&f)? {
                            break (f, id);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(e).with_context(|| format!("cannot open {}", path.display()));
                    }
                }
                std::thread::sleep(POLL);
            };
            let inode = source::inode_of(&file)?;
            let mut reading = self.reading(path, identity);
            let mut lines = Lines::from_plain(file.try_clone()?, reading.done.offset)?;
            loop {
                self.pump(&mut reading, &mut lines, false)?;
                if STOP.load(Ordering::Relaxed) {
                    return Ok(());
                }
                if source::inode_at(path).is_some_and(|now| now != inode) {
                    // Renamed away: what the server wrote before reopening
                    // its log is read, then the new file.
                    std::thread::sleep(POLL);
                    self.pump(&mut reading, &mut lines, true)?;
                    continue 'file;
                }
                let shrunk = file.metadata()?.len() < lines.offset();
                if shrunk || source::plain_identity(&file)?.as_deref() != Some(&reading.identity) {
                    continue 'file;
                }
                std::thread::sleep(POLL);
            }
        }
    }
}
