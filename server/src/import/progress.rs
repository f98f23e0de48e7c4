//! The import's progress on standard error: a line redrawn in place on a
//! terminal (events, events/s, bytes, ETA), a plain line every ten seconds
//! otherwise, and a summary at the end.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Counts the importing threads add to.
#[derive(Debug, Default)]
pub(super) struct Counts {
    pub(super) events: AtomicU64,
    /// Events of batches the node already held (a re-sent batch).
    pub(super) replayed: AtomicU64,
    pub(super) skipped_lines: AtomicU64,
    /// Bytes read past what earlier runs had stored.
    pub(super) bytes: AtomicU64,
    /// Bytes to read in all, when known (plain files, not followed).
    pub(super) total_bytes: AtomicU64,
}

/// Draws the progress until dropped.
pub(super) struct Progress {
    pub(super) counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
    drawer: Option<std::thread::JoinHandle<()>>,
    started: Instant,
}

impl Progress {
    pub(super) fn start() -> Self {
        let counts = Arc::new(Counts::default());
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let terminal = std::io::stderr().is_terminal();
        let drawer = {
            let (counts, stop) = (counts.clone(), stop.clone());
            std::thread::Builder::new()
                .name("toplog-progress".into())
                .spawn(move || {
                    let every = if terminal {
                        Duration::from_millis(250)
                    } else {
                        Duration::from_secs(10)
                    };
                    let mut next = Instant::now() + every;
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(50));
                        if Instant::now() < next {
                            continue;
                        }
                        next += every;
                        let line = describe(&counts, started.elapsed());
                        let mut err = std::io::stderr().lock();
                        let _ = if terminal {
                            write!(err, "\r\x1b[2K{line}")
                        } else {
                            writeln!(err, "{line}")
                        };
                        let _ = err.flush();
                    }
                    if terminal {
                        let _ = write!(std::io::stderr(), "\r\x1b[2K");
                    }
                })
                .ok()
        };
        Self {
            counts,
            stop,
            drawer,
            started,
        }
    }

    /// Stops drawing and returns the summary line.
    pub(super) fn finish(mut self) -> String {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(d) = self.drawer.take() {
            let _ = d.join();
        }
        let c = &self.counts;
        let replayed = c.replayed.load(Ordering::Relaxed);
        let skipped = c.skipped_lines.load(Ordering::Relaxed);
        format!(
            "imported {} events in {:.1} s{}{}",
            c.events.load(Ordering::Relaxed),
            self.started.elapsed().as_secs_f64(),
            if replayed > 0 {
                format!("; {replayed} were already stored")
            } else {
                String::new()
            },
            if skipped > 0 {
                format!("; {skipped} bad lines skipped")
            } else {
                String::new()
            },
        )
    }
}

fn describe(c: &Counts, elapsed: Duration) -> String {
    let events = c.events.load(Ordering::Relaxed);
    let bytes = c.bytes.load(Ordering::Relaxed);
    let total = c.total_bytes.load(Ordering::Relaxed);
    let secs = elapsed.as_secs_f64().max(1e-3);
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let mut line = format!(
        "{events} events  {:.0} events/s  {:.1} MiB",
        events as f64 / secs,
        mib(bytes)
    );
    if total > 0 && bytes > 0 && bytes <= total {
        let eta = secs * (total - bytes) as f64 / bytes as f64;
        line.push_str(&format!(
            " of {:.1} MiB  ETA {}:{:02}",
            mib(total),
            eta as u64 / 60,
            eta as u64 % 60
        ));
    }
    line
}
