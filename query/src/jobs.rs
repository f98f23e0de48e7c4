//! Aggregation jobs: submitted, run in the background, and kept on disk so a
//! restart neither loses a job nor its result. Each job is one JSON file,
//! replaced atomically (temp file, fsync, rename, directory fsync); jobs found
//! pending or running at start-up are run again (they are pure reads).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use toplog_crypt::{Cipher, open_state, store_state_file};
use toplog_engine::{Cell, Dimension, Engine, Filters, TimeRange};
use toplog_types::Micros;

use crate::metric::Missed;
use crate::timeseries::MAX_POINTS;
use crate::topk::{Group, merged_cells};
use crate::{Metric, QueryError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Pending,
    Running,
    Done,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub aggregation_id: String,
    pub state: JobState,
    pub submitted_at: Micros,
    pub finished_at: Option<Micros>,
    /// The request as submitted.
    pub request: serde_json::Value,
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
}

/// Jobs on disk, with an in-memory index.
#[derive(Debug)]
pub struct JobStore {
    dir: PathBuf,
    cipher: Cipher,
    jobs: Mutex<BTreeMap<String, Job>>,
}

fn io(path: &Path, op: &str) -> impl FnOnce(std::io::Error) -> QueryError {
    let path = path.display().to_string();
    let op = op.to_owned();
    move |e| QueryError::Storage(format!("{op} {path}: {e}"))
}

impl JobStore {
    /// Opens (creating) the store in `dir`; returns it, the jobs to run
    /// again, and the files in `dir` that are not jobs (left as they are,
    /// each with why it was skipped: a stray file never stops a start).
    /// A job file under a key `cipher` lacks stops the open.
    pub fn open(dir: &Path, cipher: &Cipher) -> Result<(Self, Vec<Job>, Vec<String>)> {
        std::fs::create_dir_all(dir).map_err(io(dir, "create"))?;
        let mut jobs = BTreeMap::new();
        let mut skipped = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io(dir, "list"))? {
            let path = entry.map_err(io(dir, "list"))?.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                // An interrupted replace: the job file itself is intact.
                std::fs::remove_file(&path).map_err(io(&path, "remove"))?;
                continue;
            }
            let bytes = std::fs::read(&path).map_err(io(&path, "read"))?;
            let plain = open_state(&path, &bytes, cipher)
                .map_err(|e| QueryError::Storage(e.to_string()))?;
            let job = serde_json::from_slice::<Job>(&plain)
                .map_err(|e| e.to_string())
                .and_then(|job| {
                    let named =
                        path.file_name() == Some(format!("{}.json", job.aggregation_id).as_ref());
                    if named {
                        Ok(job)
                    } else {
                        Err(format!(
                            "holds job {} under another name",
                            job.aggregation_id
                        ))
                    }
                });
            match job {
                Ok(job) => {
                    jobs.insert(job.aggregation_id.clone(), job);
                }
                Err(why) => skipped.push(format!("{}: not a job file ({why})", path.display())),
            }
        }
        let unfinished = jobs
            .values()
            .filter(|j| matches!(j.state, JobState::Pending | JobState::Running))
            .cloned()
            .collect();
        Ok((
            Self {
                dir: dir.to_path_buf(),
                cipher: cipher.clone(),
                jobs: Mutex::new(jobs),
            },
            unfinished,
            skipped,
        ))
    }

    /// Stores `job` durably, replacing any earlier version.
    pub fn put(&self, job: &Job) -> Result<()> {
        let path = self.dir.join(format!("{}.json", job.aggregation_id));
        let bytes = serde_json::to_vec(job).map_err(|e| QueryError::Storage(e.to_string()))?;
        store_state_file(&path, bytes, &self.cipher).map_err(io(&path, "store"))?;
        self.jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(job.aggregation_id.clone(), job.clone());
        Ok(())
    }

    /// Writes every job again under the cipher's current key (a rekey);
    /// returns how many.
    pub fn reseal(&self) -> Result<usize> {
        let jobs = self.list();
        for job in &jobs {
            self.put(job)?;
        }
        Ok(jobs.len())
    }

    /// Deletes the jobs that finished before `before`, results and all;
    /// returns how many.
    pub fn expire(&self, before: Micros) -> Result<usize> {
        let mut jobs = self
            .jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let old: Vec<String> = jobs
            .values()
            .filter(|j| j.finished_at.is_some_and(|t| t < before))
            .map(|j| j.aggregation_id.clone())
            .collect();
        for id in &old {
            let path = self.dir.join(format!("{id}.json"));
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&path, "remove")(e)),
            }
            jobs.remove(id);
        }
        Ok(old.len())
    }

    /// How many jobs wait to run.
    pub fn pending(&self) -> usize {
        self.jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .filter(|j| j.state == JobState::Pending)
            .count()
    }

    pub fn get(&self, id: &str) -> Option<Job> {
        self.jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    /// How many jobs are in `state` (without copying them).
    pub fn count(&self, state: JobState) -> usize {
        (self
            .jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
        .values()
        .filter(|j| j.state == state)
        .count()
    }

    /// Every job, oldest first (ids are time-ordered).
    pub fn list(&self) -> Vec<Job> {
        self.jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }
}

/// What an aggregation computes.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AggregationSpec {
    pub range: TimeRange,
    /// `None`: one interval covering the whole range.
    pub interval_us: Option<i64>,
    pub group_by: Option<Dimension>,
    pub filters: Filters,
    /// Metrics whose values need a sketch (quantiles) force raw reads for users.
    pub needs_quantiles: bool,
}

/// One interval (and group) of an aggregation's result.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AggregateRow {
    pub start: Micros,
    pub end: Micros,
    pub group: Option<String>,
    pub cell: Cell,
    /// What `cell` may be missing (nothing unless the group came from a cube
    /// bucket over its key budget).
    pub missed: Missed,
}

/// At most this many rows per job.
pub const MAX_ROWS: usize = 100_000;

impl AggregationSpec {
    pub fn intervals(&self) -> i64 {
        match self.interval_us {
            None => 1,
            Some(i) => (self.range.end.get() - self.range.start.floor_to(i).get() + i - 1) / i,
        }
    }

    pub fn check(&self) -> Result<()> {
        if let Some(i) = self.interval_us
            && i < 1_000_000
        {
            return Err(QueryError::Invalid(
                "interval",
                "must be at least 1s".into(),
            ));
        }
        if self.intervals() > MAX_POINTS {
            return Err(QueryError::TooLarge(
                "interval",
                format!(
                    "the range holds {} intervals; at most {MAX_POINTS}",
                    self.intervals()
                ),
            ));
        }
        Ok(())
    }
}

/// Computes an aggregation: rows in time order, groups by key within an interval.
pub fn aggregate(engine: &Engine, spec: &AggregationSpec) -> Result<Vec<AggregateRow>> {
    spec.check()?;
    // The metric only says what the cells must hold: rows carry whole cells
    // (latencies for every aggregation, sketches when quantiles are asked).
    let metric = if spec.needs_quantiles {
        Metric::LatencyP50
    } else {
        Metric::LatencyAvg
    };
    let dim = spec.group_by.unwrap_or(Dimension::Method);
    let (start, end) = (spec.range.start.get(), spec.range.end.get());
    let step = spec.interval_us.unwrap_or(end - start);
    let mut t = spec
        .interval_us
        .map_or(start, |i| spec.range.start.floor_to(i).get());
    let mut rows = Vec::new();
    while t < end {
        let range = TimeRange {
            start: Micros::new(t.max(start)),
            end: Micros::new((t + step).min(end)),
        };
        let merged = merged_cells(engine, range, dim, &spec.filters, metric, |_| {})?;
        if spec.group_by.is_some() {
            let mut groups: Vec<(&str, &Group)> = merged.groups().collect();
            groups.sort_by(|a, b| a.0.cmp(b.0));
            for (k, g) in groups {
                rows.push(AggregateRow {
                    start: range.start,
                    end: range.end,
                    group: Some(k.to_owned()),
                    cell: g.cell.clone(),
                    missed: merged.missed(g),
                });
            }
        } else {
            let (cell, missed) = merged.total();
            rows.push(AggregateRow {
                start: range.start,
                end: range.end,
                group: None,
                cell,
                missed,
            });
        }
        if rows.len() > MAX_ROWS {
            return Err(QueryError::TooLarge(
                "group_by",
                format!(
                    "the result exceeds {MAX_ROWS} rows; narrow the range, widen the interval or filter"
                ),
            ));
        }
        t += step;
    }
    Ok(rows)
}

/// The result of an aggregation across shards, from each shard's
/// [`aggregate`] of the same spec: the rows of one interval and group
/// merged (their cells add up), in the order one store gives them.
pub fn merge_aggregates(parts: Vec<Vec<AggregateRow>>) -> Result<Vec<AggregateRow>> {
    let mut merged: BTreeMap<(i64, Option<String>), AggregateRow> = BTreeMap::new();
    for row in parts.into_iter().flatten() {
        match merged.entry((row.start.get(), row.group.clone())) {
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(row);
            }
            std::collections::btree_map::Entry::Occupied(mut o) => {
                let whole = o.get_mut();
                whole.cell.merge(&row.cell);
                whole.missed = whole.missed.and(&row.missed);
            }
        }
    }
    if merged.len() > MAX_ROWS {
        return Err(QueryError::TooLarge(
            "group_by",
            format!(
                "the result exceeds {MAX_ROWS} rows; narrow the range, widen the interval or filter"
            ),
        ));
    }
    Ok(merged.into_values().collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn job(id: &str, state: JobState, finished_at: Option<i64>) -> Job {
        Job {
            aggregation_id: id.into(),
            state,
            submitted_at: Micros::new(0),
            finished_at: finished_at.map(Micros::new),
            request: serde_json::json!({}),
            result: None,
            error: None,
        }
    }

    /// A stray file is reported and left alone, never a failed open;
    /// finished jobs past their time are deleted, unfinished ones never.
    #[test]
    fn stray_files_are_skipped_and_finished_jobs_expire() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _, skipped) = JobStore::open(dir.path(), &Cipher::off()).unwrap();
        assert!(skipped.is_empty());
        store.put(&job("old", JobState::Done, Some(10))).unwrap();
        store.put(&job("new", JobState::Failed, Some(30))).unwrap();
        store.put(&job("waiting", JobState::Pending, None)).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "hello").unwrap();
        std::fs::write(
            dir.path().join("renamed.json"),
            serde_json::to_vec(&job("other", JobState::Done, Some(1))).unwrap(),
        )
        .unwrap();
        drop(store);

        let (store, unfinished, skipped) = JobStore::open(dir.path(), &Cipher::off()).unwrap();
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        assert!(
            dir.path().join("notes.txt").exists(),
            "a stray file is not deleted"
        );
        assert_eq!(unfinished.len(), 1);
        assert_eq!(store.pending(), 1);
        assert_eq!(store.expire(Micros::new(20)).unwrap(), 1);
        let ids: Vec<String> = store.list().into_iter().map(|j| j.aggregation_id).collect();
        assert_eq!(ids, ["new", "waiting"]);
        assert!(!dir.path().join("old.json").exists());
        assert_eq!(store.expire(Micros::new(i64::MAX)).unwrap(), 1);
        assert_eq!(store.list().len(), 1, "a pending job never expires");
    }
}
