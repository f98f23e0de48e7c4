//! Column vectors for a set of events: the memtable of a partition while it
//! fills, and the decoded form of a segment. Strings that repeat (user,
//! endpoint, method) are dictionary-encoded; request ids are stored inline.

use std::collections::HashMap;
use std::sync::OnceLock;

use toplog_types::{Event, Micros};

use crate::keys::KeyId;

/// Strings stored back to back, addressed by end offsets.
#[derive(Debug, Default, Clone)]
pub(crate) struct StrColumn {
    data: String,
    ends: Vec<u32>,
}

impl StrColumn {
    /// A column of the strings laid end to end in `data`, string `i` ending
    /// at `ends[i]` (ascending, the last at `data`'s end); `None` unless the
    /// bytes are UTF-8 and every end falls between characters. One check of
    /// the whole instead of one per string: decoding a segment makes
    /// hundreds of thousands of them.
    pub(crate) fn from_utf8(mut data: Vec<u8>, ends: Vec<u32>) -> Option<Self> {
        let in_order = ends.windows(2).all(|w| w[0] <= w[1])
            && ends.last().map_or(0, |e| *e as usize) == data.len();
        if !in_order {
            return None;
        }
        if data.capacity() - data.len() > data.len() / 8 {
            data.shrink_to_fit();
        }
        let data = String::from_utf8(data).ok()?;
        ends.iter()
            .all(|e| data.is_char_boundary(*e as usize))
            .then_some(Self { data, ends })
    }

    pub(crate) fn push(&mut self, s: &str) {
        self.data.push_str(s);
        self.ends.push(self.data.len() as u32);
    }

    pub(crate) fn get(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.data[start..self.ends[i] as usize]
    }

    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &str> {
        (0..self.len()).map(|i| self.get(i))
    }

    /// Bytes of the strings, all together.
    pub(crate) fn bytes(&self) -> usize {
        self.data.len()
    }

    /// Gives back room no string took, if that is more than an eighth.
    fn shrink(&mut self) {
        if self.data.capacity() - self.data.len() > self.data.len() / 8 {
            self.data.shrink_to_fit();
        }
        if self.ends.capacity() - self.ends.len() > self.ends.len() / 8 {
            self.ends.shrink_to_fit();
        }
    }
}

type Lookup = HashMap<String, u32, foldhash::fast::RandomState>;

/// What a value new to a column costs beyond its bytes when pushed with its
/// key: its end offset and its entry by key (dropped when the chunk is sealed).
const KEYED_VALUE_BYTES: usize = 4 + 20;

/// A dictionary of distinct strings and one dictionary id per row.
#[derive(Debug, Default, Clone)]
pub(crate) struct DictColumn {
    pub(crate) values: StrColumn,
    /// Value -> dictionary id. Kept up to date by pushes; a column decoded
    /// from a segment builds it only when a filter first looks a value up
    /// (most reads only name ids, and a segment's users are a copy of every
    /// name to hash).
    lookup: OnceLock<Lookup>,
    /// Interned key id -> dictionary id, for values pushed with their key.
    by_key: HashMap<KeyId, u32, foldhash::fast::RandomState>,
    pub(crate) ids: Vec<u32>,
}

impl DictColumn {
    /// Builds a column from a decoded dictionary and row ids (ids already checked in range).
    pub(crate) fn from_parts(values: StrColumn, ids: Vec<u32>) -> Self {
        Self {
            values,
            lookup: OnceLock::new(),
            by_key: HashMap::default(),
            ids,
        }
    }

    fn index(values: &StrColumn) -> Lookup {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| (v.to_owned(), i as u32))
            .collect()
    }

    /// Appends a row; returns the bytes newly retained (0 when the value was known).
    pub(crate) fn push(&mut self, s: &str) -> usize {
        self.push_value(s).1
    }

    /// [`DictColumn::push`] of a value interned as `key` (a rollup key):
    /// found again by the key's number, without hashing or comparing the
    /// string. A key names one value, so a new key is a new value: the
    /// column keeps no lookup by value for it (a memtable's chunks, which
    /// only take keyed rows, would hold a copy of every name in one).
    pub(crate) fn push_keyed(&mut self, s: &str, key: KeyId) -> usize {
        if key == KeyId::MAX {
            // The id every name past the last one shares (keys.rs).
            return self.push(s);
        }
        if let Some(&id) = self.by_key.get(&key) {
            self.ids.push(id);
            return 0;
        }
        let id = if self.lookup.get().is_some() {
            self.push_value(s).0
        } else {
            let id = self.values.len() as u32;
            self.values.push(s);
            self.ids.push(id);
            id
        };
        self.by_key.insert(key, id);
        s.len() + KEYED_VALUE_BYTES
    }

    /// The row's dictionary id and the bytes newly retained.
    fn push_value(&mut self, s: &str) -> (u32, usize) {
        if self.lookup.get().is_none() {
            let _ = self.lookup.set(Self::index(&self.values));
        }
        let Some(lookup) = self.lookup.get_mut() else {
            unreachable!("set above")
        };
        if let Some(&id) = lookup.get(s) {
            self.ids.push(id);
            return (id, 0);
        }
        let id = self.values.len() as u32;
        lookup.insert(s.to_owned(), id);
        self.values.push(s);
        self.ids.push(id);
        (id, 2 * s.len() + 64)
    }

    pub(crate) fn get(&self, i: usize) -> &str {
        self.values.get(self.ids[i] as usize)
    }

    pub(crate) fn id_of(&self, s: &str) -> Option<u32> {
        self.lookup
            .get_or_init(|| Self::index(&self.values))
            .get(s)
            .copied()
    }
}

/// Events as columns. Row `i` of every column belongs to the same event.
#[derive(Debug, Default, Clone)]
pub(crate) struct Columns {
    pub(crate) ts: Vec<i64>,
    /// Empty in a segment decoded for reads that never name a request
    /// (counts and aggregates without a request id filter): the ids are most
    /// of a segment's bytes and of the time to decode it.
    pub(crate) request_id: StrColumn,
    pub(crate) user_id: DictColumn,
    pub(crate) endpoint: DictColumn,
    pub(crate) method: DictColumn,
    pub(crate) status: Vec<u16>,
    pub(crate) latency_us: Vec<u64>,
}

/// One row's values, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Row<'a> {
    pub(crate) ts: i64,
    pub(crate) request_id: &'a str,
    pub(crate) user_id: &'a str,
    pub(crate) endpoint: &'a str,
    pub(crate) method: &'a str,
    pub(crate) status: u16,
    pub(crate) latency_us: u64,
}

impl<'a> Row<'a> {
    pub(crate) fn of(e: &'a Event) -> Self {
        Row {
            ts: e.timestamp.get(),
            request_id: &e.request_id,
            user_id: &e.user_id,
            endpoint: &e.endpoint,
            method: &e.method,
            status: e.status_code,
            latency_us: e.latency_us,
        }
    }
}

/// Fixed per-row cost: ts, request id end offset, three dict ids, status, latency.
const ROW_BYTES: usize = 8 + 4 + 3 * 4 + 2 + 8;

impl Columns {
    pub(crate) fn from_parts(
        ts: Vec<i64>,
        request_id: StrColumn,
        user_id: DictColumn,
        endpoint: DictColumn,
        method: DictColumn,
        status: Vec<u16>,
        latency_us: Vec<u64>,
    ) -> Self {
        Self {
            ts,
            request_id,
            user_id,
            endpoint,
            method,
            status,
            latency_us,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.ts.len()
    }

    /// Whether every row's request id is here (see `request_id`).
    pub(crate) fn has_request_ids(&self) -> bool {
        self.request_id.len() == self.len()
    }

    /// Appends one event; returns the bytes it added.
    pub(crate) fn push(&mut self, e: &Event) -> usize {
        self.push_row(Row::of(e))
    }

    /// Appends one row given by parts; returns the bytes it added.
    pub(crate) fn push_row(&mut self, r: Row<'_>) -> usize {
        let mut added = self.push_fixed(&r);
        added += self.user_id.push(r.user_id);
        added += self.endpoint.push(r.endpoint);
        added += self.method.push(r.method);
        added
    }

    /// [`Columns::push_row`] of a row whose user, endpoint and method are
    /// interned as `[user, endpoint, method]` (see [`DictColumn::push_keyed`]).
    pub(crate) fn push_row_keyed(
        &mut self,
        r: Row<'_>,
        [user, endpoint, method]: [KeyId; 3],
    ) -> usize {
        let mut added = self.push_fixed(&r);
        added += self.user_id.push_keyed(r.user_id, user);
        added += self.endpoint.push_keyed(r.endpoint, endpoint);
        added += self.method.push_keyed(r.method, method);
        added
    }

    /// The row's columns but the dictionary ones; the bytes they add.
    fn push_fixed(&mut self, r: &Row<'_>) -> usize {
        self.ts.push(r.ts);
        self.request_id.push(r.request_id);
        self.status.push(r.status);
        self.latency_us.push(r.latency_us);
        ROW_BYTES + r.request_id.len()
    }

    /// Row `i`'s values, borrowed.
    #[cfg(test)]
    pub(crate) fn row(&self, i: usize) -> Row<'_> {
        Row {
            ts: self.ts[i],
            request_id: self.request_id.get(i),
            user_id: self.user_id.get(i),
            endpoint: self.endpoint.get(i),
            method: self.method.get(i),
            status: self.status[i],
            latency_us: self.latency_us[i],
        }
    }

    /// The same rows, without the lookups kept for pushing: what a reader
    /// needs of columns that go on growing (their lookups are rebuilt if a
    /// filter asks).
    pub(crate) fn copy_rows(&self) -> Columns {
        let dict = |d: &DictColumn| DictColumn::from_parts(d.values.clone(), d.ids.clone());
        Columns {
            ts: self.ts.clone(),
            request_id: self.request_id.clone(),
            user_id: dict(&self.user_id),
            endpoint: dict(&self.endpoint),
            method: dict(&self.method),
            status: self.status.clone(),
            latency_us: self.latency_us.clone(),
        }
    }

    /// Drops what only pushes use, and the room no string took (columns of
    /// strings grow by doubling, and a chunk's request ids would leave close
    /// to half of theirs unused), once no more rows will come.
    pub(crate) fn seal(&mut self) {
        self.request_id.shrink();
        for d in [&mut self.user_id, &mut self.endpoint, &mut self.method] {
            d.by_key = HashMap::default();
            d.values.shrink();
        }
    }

    pub(crate) fn event(&self, i: usize) -> Event {
        Event {
            request_id: self.request_id.get(i).to_owned(),
            timestamp: Micros::new(self.ts[i]),
            user_id: self.user_id.get(i).to_owned(),
            endpoint: self.endpoint.get(i).to_owned(),
            method: self.method.get(i).to_owned(),
            status_code: self.status[i],
            latency_us: self.latency_us[i],
        }
    }

    /// Bytes held on the heap, roughly (for cache budgets).
    pub(crate) fn heap_bytes(&self) -> usize {
        let dict = |d: &DictColumn| 4 * d.ids.len() + 2 * d.values.bytes() + 64 * d.values.len();
        (8 + 4 + 2 + 8) * self.len()
            + self.request_id.data.len()
            + dict(&self.user_id)
            + dict(&self.endpoint)
            + dict(&self.method)
    }

    /// Whether `other` holds the same rows in the same order.
    pub(crate) fn same_rows(&self, other: &Columns) -> bool {
        self.len() == other.len()
            && (0..self.len()).all(|i| {
                self.ts[i] == other.ts[i]
                    && self.status[i] == other.status[i]
                    && self.latency_us[i] == other.latency_us[i]
                    && self.request_id.get(i) == other.request_id.get(i)
                    && self.user_id.get(i) == other.user_id.get(i)
                    && self.endpoint.get(i) == other.endpoint.get(i)
                    && self.method.get(i) == other.method.get(i)
            })
    }

    pub(crate) fn min_max_ts(&self) -> Option<(i64, i64)> {
        let min = self.ts.iter().min()?;
        let max = self.ts.iter().max()?;
        Some((*min, *max))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A column built from bytes and ends holds exactly the strings pushed
    /// one by one, and bytes that are not whole UTF-8 strings are refused.
    #[test]
    fn strings_from_bytes_are_checked_whole() {
        let words = ["", "GET /a", "é", "", "用户-7", "x"];
        let (mut data, mut ends, mut pushed) = (Vec::new(), Vec::new(), StrColumn::default());
        for w in words {
            data.extend_from_slice(w.as_bytes());
            ends.push(data.len() as u32);
            pushed.push(w);
        }
        let built = StrColumn::from_utf8(data.clone(), ends.clone()).unwrap();
        assert!(built.iter().eq(words));
        assert!(built.iter().eq(pushed.iter()));
        assert_eq!(built.len(), words.len());

        // An end inside "é" (2 bytes after "GET /a"): each part alone is not UTF-8.
        let mut split = ends.clone();
        split[2] -= 1;
        assert!(StrColumn::from_utf8(data.clone(), split).is_none());
        // Invalid bytes, ends out of order, ends short of the data.
        let mut bad = data.clone();
        bad[6] = 0xff;
        assert!(StrColumn::from_utf8(bad, ends.clone()).is_none());
        let mut swapped = ends.clone();
        swapped.swap(1, 2);
        assert!(StrColumn::from_utf8(data.clone(), swapped).is_none());
        let short = ends[..ends.len() - 1].to_vec();
        assert!(StrColumn::from_utf8(data, short).is_none());
        assert!(
            StrColumn::from_utf8(Vec::new(), Vec::new())
                .unwrap()
                .iter()
                .eq([] as [&str; 0])
        );
    }

    /// Rows pushed with their keys' ids make the same columns as rows pushed
    /// by value, whatever mix of the two a memtable saw.
    #[test]
    fn keyed_pushes_equal_plain_pushes() {
        let users = ["u1", "u2", "", "u1", "u3", "u2"];
        let endpoints = ["GET /a", "GET /b", "GET /a", "POST /c", "GET /a", "GET /b"];
        let (mut plain, mut keyed) = (Columns::default(), Columns::default());
        let (mut added_plain, mut added_keyed) = (0, 0);
        for (i, (u, ep)) in users.iter().zip(endpoints).enumerate() {
            let row = Row {
                ts: i as i64,
                request_id: "r",
                user_id: u,
                endpoint: ep,
                method: "GET",
                status: 200,
                latency_us: 7,
            };
            added_plain += plain.push_row(row);
            // Ids stand for the values: the same value, the same id.
            let id = |v: &str, all: &[&str]| all.iter().position(|x| *x == v).unwrap_or(0) as KeyId;
            added_keyed += if i == 3 {
                keyed.push_row(row)
            } else {
                keyed.push_row_keyed(row, [id(u, &users), id(ep, &endpoints), 0])
            };
        }
        assert!(plain.same_rows(&keyed));
        assert!(plain.user_id.values.iter().eq(keyed.user_id.values.iter()));
        // Keyed values keep no copy of themselves for a lookup by value.
        assert!(added_keyed < added_plain);
    }

    /// A column that only ever took keyed values builds no lookup by value
    /// until a filter asks for one, and then finds each of them.
    #[test]
    fn keyed_values_are_found_by_value_when_asked() {
        let mut d = DictColumn::default();
        for (v, key) in [
            ("a", 1),
            ("b", 2),
            ("a", 1),
            ("c", 3),
            ("z", KeyId::MAX),
            ("y", KeyId::MAX),
        ] {
            d.push_keyed(v, key);
        }
        assert_eq!(
            (d.values.iter()).collect::<Vec<_>>(),
            ["a", "b", "c", "z", "y"]
        );
        assert_eq!(d.ids, [0, 1, 0, 2, 3, 4]);
        assert_eq!(d.id_of("c"), Some(2));
        assert_eq!(d.id_of("y"), Some(4));
        assert_eq!(d.id_of("nope"), None);
    }
}
