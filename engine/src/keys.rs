//! Rollup keys interned once per process and dimension. A cube cell names its
//! key by a 4-byte id instead of owning a `String`, so a month of cells costs
//! a fraction of the memory and cells are merged without touching key bytes.
//!
//! Names are never freed: the set of ids grows with the distinct keys a
//! process has seen (a restart starts again from what the rollups still
//! hold). Each name is stored once, shared by every bucket that has it, in
//! blocks of names laid end to end (no allocation of its own), and found by
//! a table of ids alone: about 36 bytes a 12-byte user name where a
//! boxed name and a map of (name, id) took 70 (BENCHMARKS.md, stop 25).
//!
//! What new events bring is bounded: [`Keys::admit`] refuses a new key once
//! every dimension's names together hold the process's budget
//! ([`set_budget`]), or once a dimension's ids would run out, rather than
//! give two keys one id. Keys read back from the store (replay, rollup files,
//! raw rows) are interned whatever the budget: they were admitted once.

use std::hash::BuildHasher;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use hashbrown::HashTable;
use parking_lot::RwLock;

use crate::rollup::Dimension;

/// A key's id in its dimension's [`Keys`].
pub(crate) type KeyId = u32;

/// One dimension's interned keys: id -> name and name -> id.
#[derive(Debug, Default)]
pub(crate) struct Keys {
    inner: RwLock<Names>,
}

#[derive(Default)]
struct Names {
    by_id: Vec<&'static str>,
    /// Ids, hashed by their names.
    ids: HashTable<KeyId>,
    hasher: foldhash::fast::RandomState,
    /// What is left of the block names are copied into.
    block: &'static mut [u8],
}

impl std::fmt::Debug for Names {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Names")
            .field("keys", &self.by_id.len())
            .finish()
    }
}

/// Bytes of a block of names.
const BLOCK_BYTES: usize = 64 << 10;

impl Names {
    fn find(&self, name: &str) -> Option<KeyId> {
        let by_id = &self.by_id;
        (self.ids)
            .find(self.hasher.hash_one(name), |&id| by_id[id as usize] == name)
            .copied()
    }

    /// Gives `name` the next id (`name` must be new).
    fn insert(&mut self, name: &str, id: KeyId) {
        let name = self.store(name);
        self.by_id.push(name);
        let Names {
            by_id, ids, hasher, ..
        } = self;
        ids.insert_unique(hasher.hash_one(name), id, |&id| {
            hasher.hash_one(by_id[id as usize])
        });
    }

    /// A copy of `name` that lives as long as the process: at the end of
    /// the current block, or in a new one when it does not fit (a name
    /// longer than a quarter of a block gets an allocation of its own).
    fn store(&mut self, name: &str) -> &'static str {
        if name.len() > self.block.len() {
            if name.len() > BLOCK_BYTES / 4 {
                return Box::leak(name.into());
            }
            self.block = Box::leak(vec![0; BLOCK_BYTES].into_boxed_slice());
        }
        let (head, rest) = std::mem::take(&mut self.block).split_at_mut(name.len());
        self.block = rest;
        head.copy_from_slice(name.as_bytes());
        // The bytes of a `str`, copied whole, are UTF-8.
        std::str::from_utf8(head).unwrap_or_else(|_| Box::leak(name.into()))
    }
}

static KEYS: LazyLock<[Keys; 5]> = LazyLock::new(Default::default);

/// Bytes the names of every dimension hold, with their entries.
static BYTES: AtomicUsize = AtomicUsize::new(0);
/// The most [`BYTES`] new keys may take it to.
static BUDGET: AtomicUsize = AtomicUsize::new(usize::MAX);

/// What a key costs beyond its name: its `&str` in the id list and its id
/// in the table, with the table's control byte and room to spare.
const ENTRY_BYTES: usize = 16 + 8;

/// Sets the bytes new keys may take the names to (the last engine opened sets it).
pub(crate) fn set_budget(bytes: usize) {
    BUDGET.store(bytes, Ordering::Relaxed);
}

/// Bytes the interned names hold, with their entries.
pub(crate) fn bytes() -> usize {
    BYTES.load(Ordering::Relaxed)
}

/// Why a new key was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The names hold the budget.
    Budget(usize),
    /// The dimension has given out every id.
    Ids,
}

impl Keys {
    /// The keys of `dim`'s cubes.
    pub(crate) fn of(dim: Dimension) -> &'static Keys {
        &KEYS[dim.index()]
    }

    /// The id of `name`, if it was ever interned.
    pub(crate) fn id(&self, name: &str) -> Option<KeyId> {
        self.inner.read_recursive().find(name)
    }

    /// The id of `name`, given one if new: for keys read back from the
    /// store, which were admitted when their events came. Past the last id
    /// (2^32 names, hundreds of GiB, which the budget keeps far off) the
    /// last id is shared.
    pub(crate) fn intern(&self, name: &str) -> KeyId {
        self.intern_within(name, usize::MAX).unwrap_or(KeyId::MAX)
    }

    /// The id of `name` for a new event: a new key is refused if the names
    /// hold their budget or the ids ran out.
    pub(crate) fn admit(&self, name: &str) -> Result<KeyId, Refused> {
        self.intern_within(name, BUDGET.load(Ordering::Relaxed))
    }

    fn intern_within(&self, name: &str, budget: usize) -> Result<KeyId, Refused> {
        if let Some(id) = self.id(name) {
            return Ok(id);
        }
        let mut names = self.inner.write();
        if let Some(id) = names.find(name) {
            return Ok(id);
        }
        let cost = name.len() + ENTRY_BYTES;
        if bytes().saturating_add(cost) > budget {
            return Err(Refused::Budget(budget));
        }
        let id = KeyId::try_from(names.by_id.len()).map_err(|_| Refused::Ids)?;
        names.insert(name, id);
        BYTES.fetch_add(cost, Ordering::Relaxed);
        Ok(id)
    }

    /// How many keys were interned (the ids given out).
    pub(crate) fn len(&self) -> usize {
        self.inner.read_recursive().by_id.len()
    }

    /// Calls `f` with a way to name ids ("" for an id never given, which no
    /// cube holds), under one lock for all. `f` must not intern.
    pub(crate) fn with_names<R>(&self, f: impl FnOnce(&dyn Fn(KeyId) -> &'static str) -> R) -> R {
        // Recursive: a reader already holding the lock (a query naming keys
        // within a visit) is not blocked behind a waiting writer.
        let names = self.inner.read_recursive();
        f(&|id| names.by_id.get(id as usize).copied().unwrap_or(""))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn interning_is_stable_and_per_dimension() {
        let keys = Keys::of(Dimension::Method);
        let a = keys.intern("KEYS-TEST-A");
        let b = keys.intern("KEYS-TEST-B");
        assert_ne!(a, b);
        assert_eq!(keys.intern("KEYS-TEST-A"), a);
        assert_eq!(keys.id("KEYS-TEST-B"), Some(b));
        assert_eq!(keys.with_names(|name| name(a)), "KEYS-TEST-A");
        assert_eq!(Keys::of(Dimension::Endpoint).id("KEYS-TEST-A"), None);
        assert_eq!(keys.id("never interned"), None);
    }

    /// Names laid end to end over many blocks, long ones alone, each
    /// read back as given and found by its id and its name.
    #[test]
    fn names_over_many_blocks_read_back() {
        let keys = Keys::of(Dimension::Endpoint);
        let names: Vec<String> = (0..20_000)
            .map(|i| match i % 1000 {
                7 => format!("BLOCK-TEST-long-{i}-{}", "x".repeat(BLOCK_BYTES / 3)),
                8 => format!("BLOCK-TEST-{i}-用户-é"),
                _ => format!("BLOCK-TEST-{i}"),
            })
            .collect();
        let ids: Vec<KeyId> = names.iter().map(|n| keys.intern(n)).collect();
        for (name, id) in names.iter().zip(&ids) {
            assert_eq!(keys.id(name), Some(*id));
            assert_eq!(keys.with_names(|n| n(*id)), name);
        }
        assert_eq!(keys.id("BLOCK-TEST-20000"), None);
    }

    /// A new key is refused when its bytes would pass the budget, and takes
    /// nothing then; a known key is found whatever the budget.
    #[test]
    fn new_keys_past_the_budget_are_refused_and_known_ones_are_found() {
        let keys = Keys::of(Dimension::UserId);
        let known = keys.intern("BUDGET-TEST-KNOWN");
        let now = bytes();
        assert_eq!(
            keys.intern_within("BUDGET-TEST-NEW", now),
            Err(Refused::Budget(now))
        );
        assert_eq!(keys.id("BUDGET-TEST-NEW"), None);
        assert_eq!(bytes(), now);
        assert_eq!(keys.intern_within("BUDGET-TEST-KNOWN", 0), Ok(known));
        let cost = "BUDGET-TEST-NEW".len() + ENTRY_BYTES;
        let id = keys.intern_within("BUDGET-TEST-NEW", now + cost).unwrap();
        assert_eq!(keys.id("BUDGET-TEST-NEW"), Some(id));
        assert_eq!(bytes(), now + cost);
    }
}
