//! Rollup keys interned once per process and dimension. A cube cell names its
//! key by a 4-byte id instead of owning a `String`, so a month of cells costs
//! a fraction of the memory and cells are merged without touching key bytes.
//!
//! Names are never freed: the set of ids grows with the distinct keys a
//! process has seen (a restart starts again from what the rollups still
//! hold). Each name is stored once, shared by every bucket that has it.

use std::collections::HashMap;
use std::sync::LazyLock;

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

impl Keys {
    /// The keys of `dim`'s cubes.
    pub(crate) fn of(dim: Dimension) -> &'static Keys {
        &KEYS[dim.index()]
    }

    /// The id of `name`, if it was ever interned.
    pub(crate) fn id(&self, name: &str) -> Option<KeyId> {
        self.inner.read_recursive().ids.get(name).copied()
    }

    /// The id of `name`, given one if new.
    pub(crate) fn intern(&self, name: &str) -> KeyId {
        if let Some(id) = self.id(name) {
            return id;
        }
        let mut names = self.inner.write();
        if let Some(id) = names.ids.get(name) {
            return *id;
        }
        // 2^32 distinct keys would need hundreds of GiB of names before this
        // saturates; the id space is not the limit.
        let id = KeyId::try_from(names.by_id.len()).unwrap_or(KeyId::MAX);
        let name: &'static str = Box::leak(name.into());
        names.by_id.push(name);
        names.ids.insert(name, id);
        id
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
}
