//! The rows a segment is written from, read in place: one or more sets of
//! columns (a memtable's chunks, or the segments a compaction merges) seen as
//! one, in the order a segment stores them, without copying them into one
//! set first. A flush of a 64 MiB memtable made that copy, about as large
//! again, for every flush (BENCHMARKS.md, stop 25).

use std::hash::BuildHasher;

use hashbrown::HashTable;

use crate::columns::{Columns, DictColumn};

/// Rows of `parts`, each named (part, row), sorted by (timestamp, request id).
pub(crate) struct SortedRows<'a> {
    parts: &'a [&'a Columns],
    order: Vec<(u32, u32)>,
}

/// One dictionary column over every part: each distinct value once, in the
/// order the parts first hold them, and each part's ids renumbered into it.
pub(crate) struct MergedDictionary<'a> {
    pub(crate) values: Vec<&'a str>,
    /// Per part, its dictionary id -> the merged id.
    renumber: Vec<Vec<u32>>,
}

impl<'a> SortedRows<'a> {
    pub(crate) fn new(parts: &'a [&'a Columns]) -> Self {
        let mut order: Vec<(u32, u32)> = (parts.iter().enumerate())
            .flat_map(|(p, c)| (0..c.len() as u32).map(move |r| (p as u32, r)))
            .collect();
        order.sort_by(|&(pa, ra), &(pb, rb)| {
            let (a, b) = (parts[pa as usize], parts[pb as usize]);
            let (ra, rb) = (ra as usize, rb as usize);
            a.ts[ra]
                .cmp(&b.ts[rb])
                .then_with(|| a.request_id.get(ra).cmp(b.request_id.get(rb)))
        });
        Self { parts, order }
    }

    pub(crate) fn len(&self) -> usize {
        self.order.len()
    }

    /// Each row's columns and index in them, in order.
    pub(crate) fn iter(&self) -> impl ExactSizeIterator<Item = (&'a Columns, usize)> + Clone + '_ {
        let parts = self.parts;
        (self.order.iter()).map(move |&(p, r)| (parts[p as usize], r as usize))
    }

    /// The first and last timestamp (rows are sorted by it).
    pub(crate) fn min_max_ts(&self) -> Option<(i64, i64)> {
        let ts = |&(p, r): &(u32, u32)| self.parts[p as usize].ts[r as usize];
        Some((ts(self.order.first()?), ts(self.order.last()?)))
    }

    /// The dictionary column `column` picks, merged over the parts.
    pub(crate) fn dictionary(&self, column: fn(&Columns) -> &DictColumn) -> MergedDictionary<'a> {
        let hasher = foldhash::fast::FixedState::default();
        let hash = |s: &str| hasher.hash_one(s);
        let mut values: Vec<&'a str> = Vec::new();
        let mut index: HashTable<u32> = HashTable::new();
        let renumber = (self.parts.iter())
            .map(|part| {
                (column(part).values.iter())
                    .map(|v| {
                        let h = hash(v);
                        if let Some(&id) = index.find(h, |&id| values[id as usize] == v) {
                            return id;
                        }
                        let id = values.len() as u32;
                        values.push(v);
                        index.insert_unique(h, id, |&id| hash(values[id as usize]));
                        id
                    })
                    .collect()
            })
            .collect();
        MergedDictionary { values, renumber }
    }

    /// Each row's merged id in `dict`, which `column` made.
    pub(crate) fn ids<'s>(
        &'s self,
        dict: &'s MergedDictionary<'a>,
        column: fn(&Columns) -> &DictColumn,
    ) -> impl Iterator<Item = u32> + Clone + 's {
        (self.order.iter()).map(move |&(p, r)| {
            let local = column(self.parts[p as usize]).ids[r as usize];
            dict.renumber[p as usize][local as usize]
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::columns::Row;

    /// Rows split over parts read back as the rows of one set of columns
    /// sorted the same way, dictionaries included.
    #[test]
    fn parts_read_as_one_sorted_set() {
        let users = ["u3", "u1", "u2", "u1", "u9", "u3", "u2"];
        let mut parts: [Columns; 3] = Default::default();
        let mut whole = Columns::default();
        for (i, user) in users.iter().enumerate() {
            let id = format!("r{}", i % 3);
            let row = Row {
                ts: [5, 1, 5, 3, 2, 1, 4][i],
                request_id: &id,
                user_id: user,
                endpoint: "GET /a",
                method: "GET",
                status: 200,
                latency_us: i as u64,
            };
            parts[i % 3].push_row(row);
            whole.push_row(row);
        }
        let refs: Vec<&Columns> = parts.iter().collect();
        let rows = SortedRows::new(&refs);
        let mut expect: Vec<usize> = (0..whole.len()).collect();
        expect.sort_by(|&a, &b| {
            (whole.ts[a], whole.request_id.get(a)).cmp(&(whole.ts[b], whole.request_id.get(b)))
        });
        let got: Vec<_> = rows.iter().map(|(c, r)| c.row(r)).collect();
        let want: Vec<_> = expect.iter().map(|&i| whole.row(i)).collect();
        assert_eq!(got, want);
        assert_eq!(rows.min_max_ts(), Some((1, 5)));
        fn user(c: &Columns) -> &DictColumn {
            &c.user_id
        }
        let dict = rows.dictionary(user);
        assert_eq!(dict.values, ["u3", "u1", "u2", "u9"]);
        let named: Vec<&str> = rows
            .ids(&dict, user)
            .map(|id| dict.values[id as usize])
            .collect();
        let want: Vec<&str> = expect.iter().map(|&i| whole.user_id.get(i)).collect();
        assert_eq!(named, want);
        assert_eq!(SortedRows::new(&[]).min_max_ts(), None);
    }
}
