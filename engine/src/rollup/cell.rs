//! A cell: the aggregates of a set of requests (count, counts by status
//! class, latency sum/min/max and a mergeable sketch), additive so that any
//! cells of one key merge into what its raw rows would give.

use crate::sketch::LatencySketch;

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
    /// At most this many requests of this key are not in the cell: they came
    /// before its cube bucket admitted the key and were counted under keys the
    /// bucket has since evicted (see [`Overflow`](super::Overflow)). 0 in a bucket that never overflowed.
    pub missed: u64,
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
            missed: 0,
        }
    }

    /// Bytes it holds, its sketch's bins included.
    pub fn bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.sketch.as_ref().map_or(0, LatencySketch::heap_bytes)
    }

    pub fn add(&mut self, status_code: u16, latency_us: u64) {
        self.add_binned(status_code, latency_us, LatencySketch::bin(latency_us));
    }

    /// [`Cell::add`] with the latency's sketch bin already computed.
    pub(super) fn add_binned(&mut self, status_code: u16, latency_us: u64, bin: Option<i32>) {
        self.count += 1;
        let class = usize::from(status_code / 100).clamp(1, 5) - 1;
        self.by_class[class] += 1;
        self.latency_sum_us += u128::from(latency_us);
        self.latency_min_us = self.latency_min_us.min(latency_us);
        self.latency_max_us = self.latency_max_us.max(latency_us);
        if let Some(s) = &mut self.sketch {
            s.insert_bin(bin);
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
        self.missed += other.missed;
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

/// A cell's fields as they travel between nodes (a shard's part of an
/// answer), checked as a file's cells are when read back.
#[derive(serde::Serialize, serde::Deserialize)]
struct CellFields {
    count: u64,
    by_class: [u64; 5],
    /// The sum's low and high 64 bits (a `u128` does not pass through
    /// every JSON reader).
    latency_sum_us: [u64; 2],
    latency_min_us: u64,
    latency_max_us: u64,
    missed: u64,
    /// (zeros, (bin key, count) ascending).
    sketch: Option<(u64, Vec<(i32, u64)>)>,
}

impl serde::Serialize for Cell {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        CellFields {
            count: self.count,
            by_class: self.by_class,
            latency_sum_us: [
                self.latency_sum_us as u64,
                (self.latency_sum_us >> 64) as u64,
            ],
            latency_min_us: self.latency_min_us,
            latency_max_us: self.latency_max_us,
            missed: self.missed,
            sketch: (self.sketch.as_ref()).map(|k| (k.zeros(), k.bins().collect())),
        }
        .serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for Cell {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let f = CellFields::deserialize(d)?;
        if f.by_class.iter().sum::<u64>() != f.count {
            return Err(D::Error::custom("class counts disagree with the count"));
        }
        let sketch = match f.sketch {
            None => None,
            Some((zeros, bins)) => Some(
                LatencySketch::from_parts(zeros, bins)
                    .ok_or_else(|| D::Error::custom("sketch bins out of order"))?,
            ),
        };
        Ok(Cell {
            count: f.count,
            by_class: f.by_class,
            latency_sum_us: u128::from(f.latency_sum_us[0])
                | (u128::from(f.latency_sum_us[1]) << 64),
            latency_min_us: f.latency_min_us,
            latency_max_us: f.latency_max_us,
            sketch,
            missed: f.missed,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
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

    #[test]
    fn cells_cross_as_json_and_come_back_equal_or_refused() {
        let mut dense = Cell::new(true);
        for i in 0..5_000u64 {
            dense.add([200, 500, 404][(i % 3) as usize], i * i % 9_000_001);
        }
        dense.latency_sum_us = u128::from(u64::MAX) * 3 + 7;
        dense.missed = 4;
        let mut plain = Cell::new(false);
        plain.add(200, 12);
        for cell in [dense, plain, Cell::new(true)] {
            let json = serde_json::to_string(&cell).unwrap();
            assert_eq!(serde_json::from_str::<Cell>(&json).unwrap(), cell, "{json}");
        }
        let mut v: serde_json::Value = serde_json::to_value(Cell::new(false)).unwrap();
        v["count"] = 3.into();
        assert!(
            serde_json::from_value::<Cell>(v).is_err(),
            "counts disagree"
        );
        let mut v: serde_json::Value = serde_json::to_value(Cell::new(false)).unwrap();
        v["sketch"] = serde_json::json!([0, [[5, 1], [2, 1]]]);
        assert!(
            serde_json::from_value::<Cell>(v).is_err(),
            "bins out of order"
        );
    }
}
