//! A small least-recently-used list of values by key, bounded by the bytes
//! the caller says each value holds: the decoded-segment cache and the cold
//! rollup cache. A few hundred entries at most, so a scan is cheaper than a
//! map beside the order.

/// Values by key, least recently used first.
#[derive(Debug)]
pub(crate) struct Lru<K, V> {
    entries: Vec<(K, V, usize)>,
    bytes: usize,
    limit: usize,
}

impl<K: PartialEq, V: Clone> Lru<K, V> {
    /// An empty list that keeps at most `limit` bytes (and always the newest entry).
    pub(crate) const fn new(limit: usize) -> Self {
        Self {
            entries: Vec::new(),
            bytes: 0,
            limit,
        }
    }

    /// The value of `key`, made the most recently used.
    pub(crate) fn get<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: PartialEq<Q>,
        Q: ?Sized,
    {
        let at = self.entries.iter().position(|(k, _, _)| k == key)?;
        let hit = self.entries.remove(at);
        let value = hit.1.clone();
        self.entries.push(hit);
        Some(value)
    }

    /// The value of `key`, left where it is in the order.
    pub(crate) fn peek<Q>(&self, key: &Q) -> Option<&V>
    where
        K: PartialEq<Q>,
        Q: ?Sized,
    {
        self.entries
            .iter()
            .find(|(k, _, _)| k == key)
            .map(|(_, v, _)| v)
    }

    /// Puts `value` under `key` (in place of any value it had) as the most
    /// recently used, then lets the least recently used go past the limit.
    pub(crate) fn put(&mut self, key: K, value: V, bytes: usize) {
        self.retain(|k, _| *k != key);
        self.bytes += bytes;
        self.entries.push((key, value, bytes));
        while self.bytes > self.limit && self.entries.len() > 1 {
            let (_, _, size) = self.entries.remove(0);
            self.bytes -= size;
        }
    }

    /// Keeps only the entries `keep` says yes to.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&K, &V) -> bool) {
        let mut freed = 0;
        self.entries.retain(|(k, v, size)| {
            let kept = keep(k, v);
            if !kept {
                freed += size;
            }
            kept
        });
        self.bytes -= freed;
    }

    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_go_first_past_the_limit() {
        let mut lru: Lru<String, i32> = Lru::new(10);
        lru.put("a".to_owned(), 1, 4);
        lru.put("b".to_owned(), 2, 4);
        assert_eq!(lru.get("a"), Some(1));
        lru.put("c".to_owned(), 3, 4);
        assert_eq!(
            (lru.peek("a"), lru.peek("b"), lru.peek("c")),
            (Some(&1), None, Some(&3))
        );
        lru.put("a".to_owned(), 5, 4);
        assert_eq!(lru.get("a"), Some(5));
        lru.retain(|k, _| k != "c");
        assert_eq!(lru.peek("c"), None);
        lru.put("big".to_owned(), 9, 100);
        assert_eq!((lru.peek("a"), lru.peek("big")), (None, Some(&9)));
        lru.clear();
        assert_eq!(lru.peek("big"), None);
    }
}
