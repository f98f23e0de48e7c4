//! A least-recently-used map of values by key, bounded by the bytes the
//! caller says each value holds: the decoded-segment cache and the cold
//! rollup cache (whose lookups come several per alert rule evaluation).

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

/// Values by key, with the order of their last use.
#[derive(Debug)]
pub(crate) struct Lru<K, V> {
    /// Each value, its bytes, and the tick of its last use.
    map: HashMap<K, (V, usize, u64)>,
    /// Keys by the tick of their last use, least recent first.
    order: BTreeMap<u64, K>,
    tick: u64,
    bytes: usize,
    limit: usize,
}

impl<K: Hash + Eq + Clone, V: Clone> Lru<K, V> {
    /// An empty map that keeps at most `limit` bytes (and always the newest entry).
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: BTreeMap::new(),
            tick: 0,
            bytes: 0,
            limit,
        }
    }

    /// The value of `key`, made the most recently used.
    pub(crate) fn get<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (value, _, used) = self.map.get_mut(key)?;
        self.tick += 1;
        if let Some(k) = self.order.remove(used) {
            self.order.insert(self.tick, k);
        }
        *used = self.tick;
        Some(value.clone())
    }

    /// The value of `key`, left where it is in the order.
    pub(crate) fn peek<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.get(key).map(|(v, _, _)| v)
    }

    /// Puts `value` under `key` (in place of any value it had) as the most
    /// recently used, then lets the least recently used go past the limit.
    pub(crate) fn put(&mut self, key: K, value: V, bytes: usize) {
        self.tick += 1;
        self.order.insert(self.tick, key.clone());
        if let Some((_, size, used)) = self.map.insert(key, (value, bytes, self.tick)) {
            self.order.remove(&used);
            self.bytes -= size;
        }
        self.bytes += bytes;
        while self.bytes > self.limit && self.map.len() > 1 {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            if let Some((_, size, _)) = self.map.remove(&oldest) {
                self.bytes -= size;
            }
        }
    }

    /// Keeps only the entries `keep` says yes to.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&K, &V) -> bool) {
        let (order, bytes) = (&mut self.order, &mut self.bytes);
        self.map.retain(|k, (v, size, used)| {
            let kept = keep(k, v);
            if !kept {
                order.remove(used);
                *bytes -= *size;
            }
            kept
        });
    }

    pub(crate) fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
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
        // Replaced, not added: 8 bytes held, both kept.
        assert_eq!((lru.peek("a"), lru.peek("c")), (Some(&5), Some(&3)));
        assert_eq!(lru.get("a"), Some(5));
        lru.retain(|k, _| k != "c");
        assert_eq!(lru.peek("c"), None);
        lru.put("big".to_owned(), 9, 100);
        assert_eq!((lru.peek("a"), lru.peek("big")), (None, Some(&9)));
        lru.clear();
        assert_eq!(lru.peek("big"), None);
    }
}
