//! An open partition's rows, in chunks a reader can share: the log's apply
//! thread appends to the open chunk and seals it every [`CHUNK_ROWS`] rows;
//! sealed chunks never change again. A read takes the sealed chunks (a
//! pointer each) and a copy of the open one under the state's read lock, and
//! scans them after letting it go, so how long a read takes never holds up
//! the apply thread.

use std::sync::Arc;

use crate::columns::{Columns, Row};
use crate::keys::KeyId;

/// Rows per chunk: the most a read copies under the lock, per open partition.
const CHUNK_ROWS: usize = 4096;

#[derive(Debug, Default)]
pub(super) struct Memtable {
    sealed: Vec<Arc<Columns>>,
    open: Columns,
    rows: usize,
}

impl Memtable {
    /// Appends a row (see [`Columns::push_row_keyed`]); returns the bytes it added.
    pub(super) fn push_row_keyed(&mut self, row: Row<'_>, keys: [KeyId; 3]) -> usize {
        let added = self.open.push_row_keyed(row, keys);
        self.rows += 1;
        if self.open.len() >= CHUNK_ROWS {
            self.seal_open();
        }
        added
    }

    fn seal_open(&mut self) {
        if self.open.len() > 0 {
            let mut chunk = std::mem::take(&mut self.open);
            chunk.seal();
            self.sealed.push(Arc::new(chunk));
        }
    }

    pub(super) fn len(&self) -> usize {
        self.rows
    }

    /// Every row, as chunks a reader keeps without the lock: the sealed ones
    /// shared, the open one copied.
    pub(super) fn chunks(&self) -> impl Iterator<Item = Arc<Columns>> + '_ {
        let open = (self.open.len() > 0).then(|| Arc::new(self.open.copy_rows()));
        self.sealed.iter().cloned().chain(open)
    }

    /// The chunks of a memtable that takes no more rows.
    pub(super) fn freeze(mut self) -> Vec<Arc<Columns>> {
        self.seal_open();
        self.sealed
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// However the rows fall into chunks, a reader sees each pushed row once,
    /// in push order, and what it took stays as it was while pushes go on.
    #[test]
    fn chunks_hold_every_row_once_and_stay_put() {
        let users: Vec<String> = (0..97).map(|i| format!("u{i}")).collect();
        let row = |i: usize| Row {
            ts: i as i64,
            request_id: "r",
            user_id: &users[i % users.len()],
            endpoint: "GET /a",
            method: "GET",
            status: 200,
            latency_us: i as u64,
        };
        let mut m = Memtable::default();
        let mut plain = Columns::default();
        let n = 2 * CHUNK_ROWS + 5;
        let mut taken = Vec::new();
        for i in 0..n {
            m.push_row_keyed(row(i), [(i % users.len()) as KeyId, 0, 0]);
            plain.push_row(row(i));
            if i == CHUNK_ROWS - 1 || i == CHUNK_ROWS + 3 {
                taken.push((i + 1, m.chunks().collect::<Vec<_>>()));
            }
        }
        assert_eq!(m.len(), n);
        fn rows_of(chunks: &[Arc<Columns>]) -> Vec<Row<'_>> {
            (chunks.iter())
                .flat_map(|c| (0..c.len()).map(|i| c.row(i)))
                .collect()
        }
        let plain: Vec<Row<'_>> = (0..n).map(|i| plain.row(i)).collect();
        assert_eq!(rows_of(&m.chunks().collect::<Vec<_>>()), plain);
        for (rows, chunks) in taken {
            assert_eq!(rows_of(&chunks), plain[..rows]);
        }
        assert_eq!(rows_of(&m.freeze()), plain);
    }
}
