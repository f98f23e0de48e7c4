//! What the rollups of one busy day cost in memory, measured with a counting
//! allocator: `TOPLOG_BENCH_EVENTS` events (default 3,000,000) over one day
//! from `TOPLOG_BENCH_USERS` distinct users (default 1,000,000, uniform, so
//! nearly all of them appear), with the default key budget and without one.
//! Also times adding events to the cubes, and checks the top-10 users by
//! frequency against the exact counts. A last run with one crowd user (only
//! the heavy ones vary) gives the cost of the other cubes, so the user cube's
//! share can be read off. Prints a table for BENCHMARKS.md.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use toplog_benches::workload::{Generator, Workload};
use toplog_benches::{SplitMix, events_over};
use toplog_engine::{DEFAULT_ROLLUP_KEY_BUDGET, Dimension, Granularity, Rollups};
use toplog_types::Micros;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only a counter is kept.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract for `layout` is passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` with this `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: as for `alloc` and `dealloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const DAY: i64 = 86_400_000_000;
/// 2026-01-01T00:00:00Z
const T0: i64 = 1_767_225_600_000_000;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; anything else (e.g. `cargo test`) only checks it builds.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let n = env("TOPLOG_BENCH_EVENTS", 3_000_000);
    let users = env("TOPLOG_BENCH_USERS", 1_000_000) as u64;
    println!(
        "| distinct users | budget | open cubes: heap | per event | packed: heap | per event | cube updates/s | user keys kept (day) | top-10 users exact? |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (users, budget) in [
        (users, DEFAULT_ROLLUP_KEY_BUDGET),
        (users, usize::MAX),
        (1, DEFAULT_ROLLUP_KEY_BUDGET),
    ] {
        run(n, users, budget);
    }
    month(env("TOPLOG_BENCH_MONTH_EVENTS", 10_000_000) as u64);
}

/// The rollups a node keeps for issue 4's workload (`loadgen`'s: 2,000
/// endpoints, 1,000,000 users, 30 days), built as the engine builds them: open
/// cubes for a memtable's worth of events, merged (packed) into the flushed
/// rollups at each flush.
fn month(n: u64) {
    let w = Workload {
        seed: 1,
        endpoints: 2_000,
        users: 1_000_000,
        end: Micros::new(T0 + 30 * DAY),
        span_us: 30 * DAY,
    };
    let before = LIVE.load(Ordering::Relaxed);
    let started = Instant::now();
    let mut flushed = Rollups::default();
    let mut open = Rollups::default();
    let mut peak = 0;
    for (i, e) in Generator::new(w, n).enumerate() {
        open.add(&e);
        if (i + 1) % 500_000 == 0 {
            peak = peak.max(LIVE.load(Ordering::Relaxed) - before);
            flushed.merge(&std::mem::take(&mut open));
        }
    }
    flushed.merge(&open);
    drop(open);
    let secs = started.elapsed().as_secs_f64();
    let bytes = (LIVE.load(Ordering::Relaxed) - before) as f64;
    println!();
    println!(
        "| events (30 days) | rollups heap, flushed (keys included) | per event | peak while adding | events/s added |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| {n} | {:.0} MiB | {:.0} B | {:.0} MiB | {:.0} K |",
        bytes / (1 << 20) as f64,
        bytes / n as f64,
        peak.max(bytes as isize) as f64 / (1 << 20) as f64,
        n as f64 / secs / 1e3,
    );
}

fn run(n: usize, users: u64, budget: usize) {
    let mut events = events_over(n, 5, Micros::new(T0), DAY);
    let mut rng = SplitMix::new(9);
    // A few heavy users on top of a uniform crowd, so the top 10 is meaningful.
    for e in &mut events {
        let u = match rng.next_u64() % 10 {
            0 => rng.skewed(1_000),
            _ => 1_000 + rng.next_u64() % users,
        };
        e.user_id = format!("user-{u}");
    }
    let mut truth: HashMap<&str, u64> = HashMap::new();
    for e in &events {
        *truth.entry(&e.user_id).or_default() += 1;
    }
    let distinct = truth.len();
    let mut exact: Vec<(&str, u64)> = truth.into_iter().collect();
    exact.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    {
        let before = LIVE.load(Ordering::Relaxed);
        let started = Instant::now();
        let mut r = Rollups::new(budget);
        for e in &events {
            r.add(e);
        }
        let secs = started.elapsed().as_secs_f64();
        let bytes = (LIVE.load(Ordering::Relaxed) - before) as f64;
        // What the engine keeps once the rows are flushed: the cubes packed.
        let mut packed = Rollups::new(budget);
        packed.merge(&r);
        drop(r);
        let r = packed;
        let packed_bytes = (LIVE.load(Ordering::Relaxed) - before) as f64;
        let mut kept = 0;
        let mut top: Vec<(String, u64, u64)> = Vec::new();
        r.visit(
            Granularity::Day,
            Micros::new(T0),
            Micros::new(T0 + 1),
            Dimension::UserId,
            |cube| {
                kept = cube.len();
                cube.cells(false, |k, c| top.push((k.to_owned(), c.count, c.missed)));
            },
        );
        top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        top.truncate(10);
        let same = top
            .iter()
            .zip(&exact)
            .all(|((k, c, m), (tk, tc))| k == tk && c <= tc && *tc <= c + m);
        println!(
            "| {distinct} | {} | {:.0} MiB | {:.0} B | {:.0} MiB | {:.0} B | {:.2} M | {kept} | {} |",
            if budget == usize::MAX {
                "none".to_owned()
            } else {
                budget.to_string()
            },
            bytes / (1 << 20) as f64,
            bytes / n as f64,
            packed_bytes / (1 << 20) as f64,
            packed_bytes / n as f64,
            n as f64 / secs / 1e6,
            if same { "yes, within bounds" } else { "NO" },
        );
    }
}
