//! Rollup cubes: per time bucket (1 minute, 1 hour, 1 day) and per value of a
//! dimension, the count, counts by status class, and latency sum/min/max with
//! a mergeable sketch. Cells are additive, so any set of buckets merges into
//! the same answer the raw rows would give.

use std::collections::{BTreeMap, HashMap};

use toplog_types::{Event, Micros};

use crate::sketch::LatencySketch;

/// A bucket length maintained by the cubes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Granularity {
    Minute,
    Hour,
    Day,
}

impl Granularity {
    /// Coarsest first.
    pub const ALL: [Granularity; 3] = [Granularity::Day, Granularity::Hour, Granularity::Minute];

    pub const fn len_us(self) -> i64 {
        match self {
            Granularity::Minute => 60_000_000,
            Granularity::Hour => 3_600_000_000,
            Granularity::Day => 86_400_000_000,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Granularity::Minute => "rollup_1m",
            Granularity::Hour => "rollup_1h",
            Granularity::Day => "rollup_1d",
        }
    }

    const fn index(self) -> usize {
        match self {
            Granularity::Minute => 0,
            Granularity::Hour => 1,
            Granularity::Day => 2,
        }
    }
}

/// What events are grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dimension {
    Endpoint,
    StatusCode,
    Method,
    UserId,
    /// Endpoint within a status class; the key is the class digit, a space,
    /// then the endpoint (`5 GET /items/{id}`), see [`Dimension::endpoint_class_key`].
    EndpointStatusClass,
}

impl Dimension {
    pub const ALL: [Dimension; 5] = [
        Dimension::Endpoint,
        Dimension::StatusCode,
        Dimension::Method,
        Dimension::UserId,
        Dimension::EndpointStatusClass,
    ];

    /// The key of `endpoint` in status class `class` (1 to 5) in the endpoint x class cube.
    pub fn endpoint_class_key(class: u16, endpoint: &str) -> String {
        format!("{class} {endpoint}")
    }

    /// Splits an endpoint x class key into (class digit, endpoint).
    pub fn split_endpoint_class_key(key: &str) -> Option<(u8, &str)> {
        let class = key.as_bytes().first()?.checked_sub(b'0')?;
        Some((class, key.get(2..)?))
    }

    const fn index(self) -> usize {
        match self {
            Dimension::Endpoint => 0,
            Dimension::StatusCode => 1,
            Dimension::Method => 2,
            Dimension::UserId => 3,
            Dimension::EndpointStatusClass => 4,
        }
    }

    /// The user cube keeps no sketch: its cardinality is far higher.
    const fn keeps_sketch(self) -> bool {
        !matches!(self, Dimension::UserId)
    }

    /// The granularities this dimension's cube is kept at, coarsest first. The
    /// user cube has no minute buckets: they were most of the rollups' memory,
    /// and the sub-hour edges of a user query are cheap to read from raw rows.
    pub const fn granularities(self) -> &'static [Granularity] {
        match self {
            Dimension::UserId => &[Granularity::Day, Granularity::Hour],
            _ => &Granularity::ALL,
        }
    }

    /// This dimension's value in an event.
    pub fn key_of(self, e: &Event) -> std::borrow::Cow<'_, str> {
        match self {
            Dimension::Endpoint => e.endpoint.as_str().into(),
            Dimension::StatusCode => e.status_code.to_string().into(),
            Dimension::Method => e.method.as_str().into(),
            Dimension::UserId => e.user_id.as_str().into(),
            Dimension::EndpointStatusClass => {
                Self::endpoint_class_key(e.status_code / 100, &e.endpoint).into()
            }
        }
    }
}

/// Aggregates of a set of requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    pub count: u64,
    /// Requests by status class: index 0 = 1xx ... 4 = 5xx.
    pub by_class: [u64; 5],
    pub latency_sum_us: u128,
    pub latency_min_us: u64,
    pub latency_max_us: u64,
    pub sketch: Option<LatencySketch>,
}

impl Cell {
    pub fn new(with_sketch: bool) -> Self {
        Self {
            count: 0,
            by_class: [0; 5],
            latency_sum_us: 0,
            latency_min_us: u64::MAX,
            latency_max_us: 0,
            sketch: with_sketch.then(LatencySketch::default),
        }
    }

    pub fn add(&mut self, status_code: u16, latency_us: u64) {
        self.count += 1;
        let class = usize::from(status_code / 100).clamp(1, 5) - 1;
        self.by_class[class] += 1;
        self.latency_sum_us += u128::from(latency_us);
        self.latency_min_us = self.latency_min_us.min(latency_us);
        self.latency_max_us = self.latency_max_us.max(latency_us);
        if let Some(s) = &mut self.sketch {
            s.insert(latency_us);
        }
    }

    pub fn merge(&mut self, other: &Cell) {
        self.count += other.count;
        for (a, b) in self.by_class.iter_mut().zip(other.by_class) {
            *a += b;
        }
        self.latency_sum_us += other.latency_sum_us;
        self.latency_min_us = self.latency_min_us.min(other.latency_min_us);
        self.latency_max_us = self.latency_max_us.max(other.latency_max_us);
        match (&mut self.sketch, &other.sketch) {
            (Some(a), Some(b)) => a.merge(b),
            // A cell without a sketch poisons quantiles for the merge: they cannot be answered.
            (Some(_), None) => self.sketch = None,
            _ => {}
        }
    }

    /// Server errors: status 500 to 599.
    pub fn errors(&self) -> u64 {
        self.by_class[4]
    }
}

/// One bucket: a cube per dimension.
#[derive(Debug, Default)]
struct Bucket {
    cubes: [HashMap<String, Cell>; 5],
}

/// Every bucket of every granularity.
#[derive(Debug, Default)]
pub(crate) struct Rollups {
    levels: [BTreeMap<i64, Bucket>; 3],
}

impl Rollups {
    pub(crate) fn add(&mut self, e: &Event) {
        for g in Granularity::ALL {
            let start = e.timestamp.floor_to(g.len_us()).get();
            let bucket = self.levels[g.index()].entry(start).or_default();
            for d in Dimension::ALL {
                if !d.granularities().contains(&g) {
                    continue;
                }
                let key = d.key_of(e);
                let cube = &mut bucket.cubes[d.index()];
                match cube.get_mut(key.as_ref()) {
                    Some(cell) => cell.add(e.status_code, e.latency_us),
                    None => {
                        let mut cell = Cell::new(d.keeps_sketch());
                        cell.add(e.status_code, e.latency_us);
                        cube.insert(key.into_owned(), cell);
                    }
                }
            }
        }
    }

    /// Calls `f` with every cell of `dim` in buckets of `g` starting in `[from, to)`.
    pub(crate) fn visit(
        &self,
        g: Granularity,
        from: Micros,
        to: Micros,
        dim: Dimension,
        mut f: impl FnMut(&str, &Cell),
    ) {
        for bucket in self.levels[g.index()]
            .range(from.get()..to.get())
            .map(|(_, b)| b)
        {
            for (k, cell) in &bucket.cubes[dim.index()] {
                f(k, cell);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_equals_adding_everything() {
        let mut a = Cell::new(true);
        let mut b = Cell::new(true);
        let mut all = Cell::new(true);
        for (i, lat) in [5u64, 0, 700, 12_000, 3].iter().enumerate() {
            let status = [200, 503, 404, 200, 101][i];
            if i % 2 == 0 {
                a.add(status, *lat)
            } else {
                b.add(status, *lat)
            }
            all.add(status, *lat);
        }
        a.merge(&b);
        assert_eq!(a, all);
        assert_eq!(
            (all.count, all.errors(), all.by_class),
            (5, 1, [1, 2, 0, 1, 1])
        );
    }
}
