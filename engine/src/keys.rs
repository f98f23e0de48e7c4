//! Rollup keys interned once per process and dimension. A cube cell names its
//! key by a 4-byte id instead of owning a `String`, so a month of cells costs
//! a fraction of the memory and cells are merged without touching key bytes.
//!
//! Names are never freed: the set of ids grows with the distinct keys a
//! process has seen (a restart starts again from what the rollups still
//! hold). Each name is stored once, shared by every bucket that has it.
//!
//! What new events bring is bounded: [`Keys::admit`] refuses a new key once
//! every dimension's names together hold the process's budget
//! ([`set_budget`]), or once a dimension's ids would run out, rather than
//! give two keys one id. Keys read back from the store (replay, rollup files,
//! raw rows) are interned whatever the budget: they were admitted once.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::RwLock;

use crate::rollup::Dimension;

/// A key's id in its dimension's [`Keys`].
pub(crate) type KeyId = u32;

/// One dimension's interned keys: id -> name and name -> id.
#[derive(Debug, Default)]
pub(crate) struct Keys {
    inner: RwLock<Names>,
}

#[derive(Debug, Default)]
struct Names {
    by_id: Vec<&'static str>,
    ids: HashMap<&'static str, KeyId, foldhash::fast::RandomState>,
}

static KEYS: LazyLock<[Keys; 5]> = LazyLock::new(Default::default);

/// Bytes the names of every dimension hold, with their entries.
static BYTES: AtomicUsize = AtomicUsize::new(0);
/// The most [`BYTES`] new keys may take it to.
static BUDGET: AtomicUsize = AtomicUsize::new(usize::MAX);

/// What a key costs beyond its name: its `&str` in the id list and its entry
/// in the lookup map.
const ENTRY_BYTES: usize = 16 + 16 + 4 + 8;

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
        self.inner.read_recursive().ids.get(name).copied()
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
        if let Some(id) = names.ids.get(name) {
            return Ok(*id);
        }
        let cost = name.len() + ENTRY_BYTES;
        if bytes().saturating_add(cost) > budget {
            return Err(Refused::Budget(budget));
        }
        let id = KeyId::try_from(names.by_id.len()).map_err(|_| Refused::Ids)?;
        let name: &'static str = Box::leak(name.into());
        names.by_id.push(name);
        names.ids.insert(name, id);
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
