//! Reading stored events back: a time range, equality filters, and keyset
//! paging in (timestamp, request id) order across segments and memtables.

use toplog_types::{Event, Micros};

use crate::columns::Columns;

/// `[start, end)` in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TimeRange {
    pub start: Micros,
    pub end: Micros,
}

impl TimeRange {
    pub fn overlaps(&self, min: Micros, max: Micros) -> bool {
        min < self.end && max >= self.start
    }

    pub fn contains_all(&self, min: Micros, max: Micros) -> bool {
        min >= self.start && max < self.end
    }
}

/// Equality filters; `None` matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Filters {
    pub endpoint: Option<String>,
    pub user_id: Option<String>,
    pub method: Option<String>,
    pub status_code: Option<u16>,
    /// Status class: 1 to 5 for 1xx to 5xx.
    pub status_class: Option<u8>,
    pub request_id: Option<String>,
}

impl Filters {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

const MAX_CURSOR_SKIP: u64 = 1_000_000;

/// Where the next page starts: after `skip` rows with exactly this (timestamp, request id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub ts: Micros,
    pub request_id: String,
    pub skip: u64,
}

impl Cursor {
    /// An opaque, URL-safe token: `<ts>.<skip>.<hex of request id>`.
    pub fn encode(&self) -> String {
        let hex: String = self
            .request_id
            .bytes()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("{}.{}.{}", self.ts.get(), self.skip, hex)
    }

    pub fn decode(s: &str) -> Option<Self> {
        let mut parts = s.splitn(3, '.');
        let ts = parts.next()?.parse().ok()?;
        let skip: u64 = parts.next()?.parse().ok()?;
        // Only rows sharing one timestamp and request id are skipped; a larger number
        // is not a cursor this API made, and would make the next page read everything.
        if skip > MAX_CURSOR_SKIP {
            return None;
        }
        let hex = parts.next()?;
        if hex.len() % 2 != 0 {
            return None;
        }
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        Some(Self {
            ts: Micros::new(ts),
            // Any well-formed cursor is a position, even one this API did not
            // make: bytes that are not UTF-8 stand for the nearest string.
            request_id: String::from_utf8_lossy(&bytes).into_owned(),
            skip,
        })
    }
}

/// One page of events in (timestamp, request id) order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub events: Vec<Event>,
    pub next: Option<Cursor>,
}

/// Filters resolved against one source's dictionaries.
struct Matcher<'a> {
    cols: &'a Columns,
    endpoint: Option<u32>,
    user_id: Option<u32>,
    method: Option<u32>,
    filters: &'a Filters,
}

impl<'a> Matcher<'a> {
    /// `None` when a filtered value is absent from this source, so nothing can match.
    fn new(cols: &'a Columns, filters: &'a Filters) -> Option<Self> {
        let resolve = |want: &Option<String>, dict: &crate::columns::DictColumn| match want {
            None => Some(None),
            Some(v) => dict.id_of(v).map(Some),
        };
        Some(Self {
            cols,
            endpoint: resolve(&filters.endpoint, &cols.endpoint)?,
            user_id: resolve(&filters.user_id, &cols.user_id)?,
            method: resolve(&filters.method, &cols.method)?,
            filters,
        })
    }

    fn matches(&self, i: usize) -> bool {
        let c = self.cols;
        self.endpoint.is_none_or(|id| c.endpoint.ids[i] == id)
            && self.user_id.is_none_or(|id| c.user_id.ids[i] == id)
            && self.method.is_none_or(|id| c.method.ids[i] == id)
            && self.filters.status_code.is_none_or(|s| c.status[i] == s)
            && self
                .filters
                .status_class
                .is_none_or(|k| c.status[i] / 100 == u16::from(k))
            && self
                .filters
                .request_id
                .as_deref()
                .is_none_or(|r| c.request_id.get(i) == r)
    }
}

/// The rows that may lie in `range`: a binary-searched slice of a sorted source.
fn candidate_rows(cols: &Columns, sorted: bool, range: &TimeRange) -> std::ops::Range<usize> {
    if sorted {
        let first = cols.ts.partition_point(|&t| t < range.start.get());
        let end = cols.ts.partition_point(|&t| t < range.end.get());
        first..end.max(first)
    } else {
        0..cols.len()
    }
}

/// Raw rows aggregated by a dimension's key, as [`crate::Engine::aggregate_raw`]
/// returns them.
pub type RawCells =
    std::collections::HashMap<String, crate::rollup::Cell, foldhash::fast::RandomState>;

/// How raw rows are grouped: by `dim`, new cells with a latency sketch if
/// `sketches` (quantiles by user are answered from raw rows; counts need
/// none).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Grouping {
    pub(crate) dim: crate::rollup::Dimension,
    pub(crate) sketches: bool,
}

/// What a group of [`RawCells`] holds besides its key's bytes and its cell:
/// the key's `String` and the map's slot.
const GROUP_OVERHEAD: usize = std::mem::size_of::<String>() + 16;

/// Adds the rows of `cols` in `range` passing `filters` to `out`, grouped as
/// `by` says, charging each new group and each sketch's growth to the
/// running read's memory budget (`Err` past it).
pub(crate) fn aggregate(
    cols: &Columns,
    sorted: bool,
    range: &TimeRange,
    filters: &Filters,
    by: Grouping,
    out: &mut RawCells,
) -> crate::Result<()> {
    let Grouping { dim, sketches } = by;
    use crate::rollup::{Cell, Dimension};
    let Some(m) = Matcher::new(cols, filters) else {
        return Ok(());
    };
    let (start, end) = (range.start.get(), range.end.get());
    let rows = candidate_rows(cols, sorted, range);
    if sorted {
        // At most a key per row: room made once instead of the map doubling
        // (and moving its cells) a dozen times over a partial hour's users.
        out.reserve(rows.len().min(1 << 16));
    }
    let mut status_key;
    for i in rows {
        if !(start..end).contains(&cols.ts[i]) || !m.matches(i) {
            continue;
        }
        let key: &str = match dim {
            Dimension::Endpoint => cols.endpoint.get(i),
            Dimension::Method => cols.method.get(i),
            Dimension::UserId => cols.user_id.get(i),
            Dimension::StatusCode => {
                status_key = cols.status[i].to_string();
                &status_key
            }
            Dimension::EndpointStatusClass => {
                status_key =
                    Dimension::endpoint_class_key(cols.status[i] / 100, cols.endpoint.get(i));
                &status_key
            }
        };
        let (status, latency) = (cols.status[i], cols.latency_us[i]);
        match out.get_mut(key) {
            Some(cell) if sketches => {
                let before = cell.bytes();
                cell.add(status, latency);
                crate::budget::hold(cell.bytes().saturating_sub(before))?;
            }
            Some(cell) => cell.add(status, latency),
            None => {
                let mut cell = Cell::new(sketches);
                cell.add(status, latency);
                crate::budget::hold(GROUP_OVERHEAD + key.len() + cell.bytes())?;
                out.insert(key.to_owned(), cell);
            }
        }
    }
    Ok(())
}

/// Orders requests for "slowest first" (or fastest with `asc`), ties by request id.
pub(crate) fn latency_order(asc: bool) -> impl Fn(&Event, &Event) -> std::cmp::Ordering {
    move |a, b| {
        let by = if asc {
            a.latency_us.cmp(&b.latency_us)
        } else {
            b.latency_us.cmp(&a.latency_us)
        };
        by.then_with(|| a.request_id.cmp(&b.request_id))
            .then_with(|| page_order(a, b))
    }
}

/// The `k` slowest (or fastest) rows of `cols` in `range` passing `filters`,
/// in [`latency_order`]: exactly `k` (fewer if fewer match), however many
/// rows tie with the k-th on latency, so a read holds at most `k` events a
/// segment whatever the latency resolution.
pub(crate) fn by_latency(
    cols: &Columns,
    range: &TimeRange,
    filters: &Filters,
    k: usize,
    asc: bool,
) -> Vec<Event> {
    let Some(m) = Matcher::new(cols, filters) else {
        return Vec::new();
    };
    let (start, end) = (range.start.get(), range.end.get());
    let mut rows: Vec<usize> = (0..cols.len())
        .filter(|&i| (start..end).contains(&cols.ts[i]) && m.matches(i))
        .collect();
    let key = |i: usize| {
        if asc {
            cols.latency_us[i]
        } else {
            u64::MAX - cols.latency_us[i]
        }
    };
    // [`latency_order`] on row numbers: whole events are built only for rows
    // tied on latency and request id.
    let order = |&a: &usize, &b: &usize| {
        key(a)
            .cmp(&key(b))
            .then_with(|| cols.request_id.get(a).cmp(cols.request_id.get(b)))
            .then_with(|| page_order(&cols.event(a), &cols.event(b)))
    };
    if k == 0 {
        return Vec::new();
    }
    if rows.len() > k {
        rows.select_nth_unstable_by(k - 1, order);
        rows.truncate(k);
    }
    rows.sort_unstable_by(order);
    rows.into_iter().map(|i| cols.event(i)).collect()
}

/// Merges `more` into `best`, the `k` first in [`latency_order`].
pub(crate) fn keep_first_by_latency(best: &mut Vec<Event>, more: Vec<Event>, k: usize, asc: bool) {
    best.extend(more);
    best.sort_by(latency_order(asc));
    best.truncate(k);
}

/// Number of rows of `cols` in `range` passing `filters`.
pub(crate) fn count(cols: &Columns, sorted: bool, range: &TimeRange, filters: &Filters) -> u64 {
    let Some(m) = Matcher::new(cols, filters) else {
        return 0;
    };
    let (start, end) = (range.start.get(), range.end.get());
    candidate_rows(cols, sorted, range)
        .filter(|&i| (start..end).contains(&cols.ts[i]) && m.matches(i))
        .count() as u64
}

/// Up to `want` rows of `cols` in `range` passing `filters`, at or after `from` in
/// (timestamp, request id) order, returned in that order.
pub(crate) fn collect(
    cols: &Columns,
    sorted: bool,
    range: &TimeRange,
    filters: &Filters,
    from: Option<&Cursor>,
    want: usize,
) -> Vec<Event> {
    let Some(m) = Matcher::new(cols, filters) else {
        return Vec::new();
    };
    let start = from.map_or(range.start.get(), |c| c.ts.get().max(range.start.get()));
    let end = range.end.get();
    let at_or_after = |i: usize| match from {
        Some(c) if cols.ts[i] == c.ts.get() => cols.request_id.get(i) >= c.request_id.as_str(),
        _ => true,
    };
    let key = |i: usize| (cols.ts[i], cols.request_id.get(i));
    let mut rows: Vec<usize> = Vec::new();
    if sorted {
        let first = cols.ts.partition_point(|&t| t < start);
        for i in first..cols.len() {
            if cols.ts[i] >= end {
                break;
            }
            // Past `want`, keep going only through rows tied with the last one kept, so
            // the caller can order ties fully.
            if rows.len() >= want && rows.last().is_none_or(|&l| key(l) != key(i)) {
                break;
            }
            if at_or_after(i) && m.matches(i) {
                rows.push(i);
            }
        }
    } else {
        rows = (0..cols.len())
            .filter(|&i| (start..end).contains(&cols.ts[i]) && at_or_after(i) && m.matches(i))
            .collect();
        let full = |i: usize| {
            let c = cols;
            (
                key(i),
                c.endpoint.get(i),
                c.user_id.get(i),
                c.method.get(i),
                c.status[i],
                c.latency_us[i],
            )
        };
        rows.sort_by(|&a, &b| full(a).cmp(&full(b)));
        rows.truncate(want);
    }
    rows.into_iter().map(|i| cols.event(i)).collect()
}

/// The order of rows in pages: (timestamp, request id), then the other fields, so
/// that rows sharing a timestamp and request id come in the same order on every call.
fn page_order(a: &Event, b: &Event) -> std::cmp::Ordering {
    (
        a.timestamp,
        &a.request_id,
        &a.endpoint,
        &a.user_id,
        &a.method,
        a.status_code,
        a.latency_us,
    )
        .cmp(&(
            b.timestamp,
            &b.request_id,
            &b.endpoint,
            &b.user_id,
            &b.method,
            b.status_code,
            b.latency_us,
        ))
}

/// Sorts `rows` into page order and keeps the first `n`.
pub(crate) fn keep_first(rows: &mut Vec<Event>, n: usize) {
    rows.sort_by(page_order);
    rows.truncate(n);
}

/// Cuts one page from candidates gathered from every source.
pub(crate) fn page(mut rows: Vec<Event>, from: Option<&Cursor>, limit: usize) -> Page {
    rows.sort_by(page_order);
    let mut rows = rows.into_iter().peekable();
    if let Some(c) = from {
        let mut skipped = 0;
        while skipped < c.skip
            && rows
                .peek()
                .is_some_and(|e| e.timestamp == c.ts && e.request_id == c.request_id)
        {
            rows.next();
            skipped += 1;
        }
    }
    let events: Vec<Event> = rows.by_ref().take(limit).collect();
    let next = match rows.peek() {
        Some(_) => cursor_after(&events, from),
        None => None,
    };
    Page { events, next }
}

/// Where the page after `events` (read from `from` on) starts: past its
/// last row, and past the rows before it sharing that row's timestamp and
/// request id.
fn cursor_after(events: &[Event], from: Option<&Cursor>) -> Option<Cursor> {
    let last = events.last()?;
    let same = |e: &&Event| e.timestamp == last.timestamp && e.request_id == last.request_id;
    let mut skip = events.iter().filter(same).count() as u64;
    if let Some(c) = from
        && c.ts == last.timestamp
        && c.request_id == last.request_id
    {
        skip += c.skip;
    }
    Some(Cursor {
        ts: last.timestamp,
        request_id: last.request_id.clone(),
        skip,
    })
}

impl Page {
    /// One page of `limit` from the pages several stores answered for the
    /// same `from` and `limit`, when every request id is in one store only
    /// (a sharded cluster's): each store skipped its own rows at the
    /// cursor, so the pages' rows are all past it.
    pub fn merge(pages: Vec<Page>, from: Option<&Cursor>, limit: usize) -> Page {
        let more = pages.iter().any(|p| p.next.is_some());
        let mut events: Vec<Event> = pages.into_iter().flat_map(|p| p.events).collect();
        events.sort_by(page_order);
        let more = more || events.len() > limit;
        events.truncate(limit);
        let next = if more {
            cursor_after(&events, from)
        } else {
            None
        };
        Page { events, next }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips() {
        let c = Cursor {
            ts: Micros::new(42),
            request_id: "a.b/ü".into(),
            skip: 3,
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        assert_eq!(Cursor::decode("x"), None);
        assert_eq!(Cursor::decode("1.2.zz"), None);
    }

    /// Exactly k rows however many tie with the k-th on latency (every row
    /// tied once came back, a segment's worth for a coarse latency), and
    /// they are the first k of the full order.
    #[test]
    fn by_latency_keeps_exactly_k_of_heavy_ties() {
        let mut cols = Columns::default();
        let events: Vec<Event> = (0..500u64)
            .map(|i| Event {
                request_id: format!("r{:03}", (i * 7919) % 500),
                timestamp: Micros::new(1_000 + i as i64),
                user_id: String::new(),
                endpoint: "GET /a".into(),
                method: "GET".into(),
                status_code: 200,
                latency_us: (i % 2) * 1000,
            })
            .collect();
        for e in &events {
            cols.push(e);
        }
        let range = TimeRange {
            start: Micros::new(0),
            end: Micros::new(10_000),
        };
        for (k, asc) in [
            (1, true),
            (10, false),
            (249, true),
            (251, false),
            (600, true),
        ] {
            let got = by_latency(&cols, &range, &Filters::default(), k, asc);
            let mut want = events.clone();
            want.sort_by(latency_order(asc));
            want.truncate(k);
            assert_eq!(got, want, "k = {k}, asc = {asc}");
        }
    }
}
