//! A rule judged as a minute closes: its metric over the window that ends
//! there, per key, against its threshold (static, or learned from the same
//! window on past days). The live path and a backtest over a past range run
//! the same code, minute by minute.

use std::collections::{BTreeMap, HashMap};

use toplog_types::Micros;

use crate::baseline::{Baseline, HISTORY_DAYS, NEIGHBOURS};
use crate::series::{Series, SeriesState, Transition};
use crate::{NoData, Rule, Threshold};

const MINUTE_US: i64 = 60_000_000;
const DAY_US: i64 = 1_440 * MINUTE_US;
/// How long a key that had data is watched for `no_data` after it stops.
pub const NO_DATA_WATCH_US: i64 = DAY_US;

/// A key's value of the rule's metric over one window.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// A key of the rule's `by`; empty without one.
    pub key: String,
    pub value: f64,
    /// Requests in the window.
    pub count: u64,
}

/// Where a rule's readings come from (the store's rollups, or a model).
pub trait Source {
    /// The rule's metric over `[start, end)` per key of its `by` (one
    /// reading, key "", without one), at most `rule.max_series` keys, those
    /// nearest the threshold's side first.
    fn readings(&self, rule: &Rule, start: Micros, end: Micros) -> Result<Vec<Reading>, String>;
}

/// A rule's readings by the minute their window ends, each read once: a
/// learned threshold reads the same window on past days, which a backtest
/// (or the live path, day after day) has read before.
pub struct Readings<'a> {
    rule: &'a Rule,
    source: &'a dyn Source,
    by_end: HashMap<i64, Vec<Reading>>,
    /// Learned baselines by key, per window-aligned slot end: made once per
    /// slot, not per minute.
    baselines: HashMap<i64, HashMap<String, Baseline>>,
}

impl<'a> Readings<'a> {
    pub fn new(rule: &'a Rule, source: &'a dyn Source) -> Self {
        Self {
            rule,
            source,
            by_end: HashMap::new(),
            baselines: HashMap::new(),
        }
    }

    /// The baselines by key at the slot ending at `slot_end`: from the
    /// windows ending at the same time of day on each past day, and their
    /// neighbours.
    fn load_baselines(&mut self, slot_end: Micros) -> Result<(), String> {
        if !self.baselines.contains_key(&slot_end.get()) {
            let window_us = i64::from(self.rule.window_minutes) * MINUTE_US;
            let past = |d: i64, n: i64| slot_end.saturating_sub_micros(d * DAY_US - n * window_us);
            for d in 1..=i64::from(HISTORY_DAYS) {
                for n in -NEIGHBOURS..=NEIGHBOURS {
                    self.at(past(d, n))?;
                }
            }
            // Values by key, and the days that had any, as bits.
            let mut history: HashMap<&str, (Vec<f64>, u32)> = HashMap::new();
            for d in 1..=i64::from(HISTORY_DAYS) {
                for n in -NEIGHBOURS..=NEIGHBOURS {
                    for r in self.get(past(d, n)) {
                        let (values, days) = history.entry(r.key.as_str()).or_default();
                        values.push(r.value);
                        *days |= 1 << d;
                    }
                }
            }
            let made: HashMap<String, Baseline> = (history.into_iter())
                .filter_map(|(key, (values, days))| {
                    Some((
                        key.to_owned(),
                        Baseline::of(&values, days.count_ones() as usize)?,
                    ))
                })
                .collect();
            self.baselines.insert(slot_end.get(), made);
        }
        Ok(())
    }

    /// What [`Readings::load_baselines`] made for `slot_end`.
    fn baselines(&self, slot_end: Micros) -> Option<&HashMap<String, Baseline>> {
        self.baselines.get(&slot_end.get())
    }

    /// Reads the window that ends at `end`, unless read before.
    fn at(&mut self, end: Micros) -> Result<(), String> {
        if !self.by_end.contains_key(&end.get()) {
            let start = end.saturating_sub_micros(i64::from(self.rule.window_minutes) * MINUTE_US);
            let read = self.source.readings(self.rule, start, end)?;
            self.by_end.insert(end.get(), read);
        }
        Ok(())
    }

    /// What [`Readings::at`] read for `end` (nothing if it was not read).
    fn get(&self, end: Micros) -> &[Reading] {
        self.by_end.get(&end.get()).map_or(&[], Vec::as_slice)
    }

    /// Forgets readings of windows that end before `before`.
    pub fn forget_before(&mut self, before: Micros) {
        self.by_end.retain(|end, _| *end >= before.get());
        self.baselines.retain(|end, _| *end >= before.get());
    }
}

/// A key judged at one minute's end.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub key: String,
    /// None: no data in the window.
    pub value: Option<f64>,
    /// None: a learned threshold without enough history.
    pub threshold: Option<f64>,
    /// Whether the condition holds; None: no judgement (no data, `keep`).
    pub holds: Option<bool>,
}

/// Judges `rule` at minute end `end`: each key read, and each key of
/// `watched` (series seen before) with no data now, as `no_data` says.
pub fn evaluate(
    rule: &Rule,
    readings: &mut Readings<'_>,
    end: Micros,
    watched: &[String],
) -> Result<Vec<Evaluation>, String> {
    let slot = end.floor_to(i64::from(rule.window_minutes) * MINUTE_US);
    if let Threshold::Learned(_) = rule.threshold {
        readings.load_baselines(slot)?;
    }
    readings.at(end)?;
    let readings = &*readings;
    let threshold_for = |key: &str, requests: u64| match rule.threshold {
        Threshold::Static(t) => Some(t),
        Threshold::Learned(sensitivity) => readings
            .baselines(slot)?
            .get(key)
            .map(|b| b.threshold(rule.op, sensitivity, b.noise(rule.metric, requests))),
    };
    let now = readings.get(end);
    let mut out: Vec<Evaluation> = now
        .iter()
        .map(|r| {
            let threshold = threshold_for(&r.key, r.count);
            // Fewer requests than `min_count`: not judged (the state stays).
            let holds = (r.count >= rule.min_count)
                .then(|| threshold.is_some_and(|t| rule.op.holds(r.value, t)));
            Evaluation {
                key: r.key.clone(),
                value: Some(r.value),
                threshold,
                holds,
            }
        })
        .collect();
    // A watched key missing from a full list (`max_series` read) may have
    // data past the cap: only a list with room says a key has none.
    let complete = rule.by.is_none() || now.len() < rule.max_series;
    let read: std::collections::HashSet<&str> = now.iter().map(|r| r.key.as_str()).collect();
    for key in watched.iter().filter(|k| !read.contains(k.as_str())) {
        out.push(Evaluation {
            key: key.clone(),
            value: None,
            threshold: threshold_for(key, 0),
            holds: match rule.no_data {
                _ if !complete => None,
                NoData::Ok => Some(false),
                NoData::Alert => Some(true),
                NoData::Keep => None,
            },
        });
    }
    Ok(out)
}

/// When a series of a backtested rule fired.
#[derive(Debug, Clone, PartialEq)]
pub struct Firing {
    pub key: String,
    pub started_at: Micros,
    /// None: still firing at the end of the range.
    pub resolved_at: Option<Micros>,
    /// The value and threshold when it fired.
    pub value: Option<f64>,
    pub threshold: Option<f64>,
}

/// Runs `rule` over `[from, to)` minute by minute, as the live path would
/// have: when each series would have fired and resolved.
pub fn backtest(
    rule: &Rule,
    source: &dyn Source,
    from: Micros,
    to: Micros,
) -> Result<Vec<Firing>, String> {
    let mut readings = Readings::new(rule, source);
    let mut series: BTreeMap<String, Series> = BTreeMap::new();
    // When each key last had data: watched for `no_data` for a day after.
    let mut seen: BTreeMap<String, Micros> = BTreeMap::new();
    let mut open: BTreeMap<String, usize> = BTreeMap::new();
    let mut firings = Vec::new();
    let first = from.floor_to(MINUTE_US).get() + MINUTE_US;
    let window_us = i64::from(rule.window_minutes) * MINUTE_US;
    for end in (first..=to.get()).step_by(MINUTE_US as usize) {
        let end = Micros::new(end);
        seen.retain(|_, last| end.get() - last.get() <= NO_DATA_WATCH_US);
        let watched: Vec<String> = seen.keys().cloned().collect();
        for e in evaluate(rule, &mut readings, end, &watched)? {
            if e.value.is_some() {
                seen.insert(e.key.clone(), end);
            }
            let s = series
                .entry(e.key.clone())
                .or_insert_with(|| Series::new(&e.key));
            match s.step(end, e.holds, rule.for_minutes, rule.keep_firing_for_minutes) {
                Some(Transition::Firing) => {
                    open.insert(e.key.clone(), firings.len());
                    firings.push(Firing {
                        key: e.key,
                        started_at: end,
                        resolved_at: None,
                        value: e.value,
                        threshold: e.threshold,
                    });
                }
                Some(Transition::Resolved) => {
                    if let Some(i) = open.remove(&e.key) {
                        firings[i].resolved_at = Some(end);
                    }
                }
                _ => {}
            }
        }
        // Series inactive and no longer watched are dropped; learned
        // history older than it needs is forgotten.
        series.retain(|key, s| s.state != SeriesState::Inactive || seen.contains_key(key));
        if end.get() % (60 * MINUTE_US) == 0 {
            let oldest = i64::from(HISTORY_DAYS) * DAY_US + (NEIGHBOURS + 1) * window_us;
            readings.forget_before(end.saturating_sub_micros(oldest));
        }
    }
    Ok(firings)
}
