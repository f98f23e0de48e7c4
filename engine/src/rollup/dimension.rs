//! What cubes group by and bucket by: the [`Granularity`] of a bucket, the
//! [`Dimension`] of a cube, a dimension's interned [`Key`], and the ids of a
//! row's keys in every dimension ([`key_ids`]).

use std::collections::HashMap;

use toplog_types::Event;

use crate::columns::Row;
use crate::keys::{KeyId, Keys, Refused};

/// A bucket length maintained by the cubes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Granularity {
    Minute,
    Hour,
    Day,
}

impl Granularity {
    /// Coarsest first.
    pub const ALL: [Granularity; 3] = [Granularity::Day, Granularity::Hour, Granularity::Minute];

    pub const fn len_us(self) -> i64 {
        match self {
            Granularity::Minute => 60_000_000,
            Granularity::Hour => 3_600_000_000,
            Granularity::Day => 86_400_000_000,
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|g| g.name() == name)
    }

    pub const fn name(self) -> &'static str {
        match self {
            Granularity::Minute => "rollup_1m",
            Granularity::Hour => "rollup_1h",
            Granularity::Day => "rollup_1d",
        }
    }

    pub(crate) const fn index(self) -> usize {
        match self {
            Granularity::Minute => 0,
            Granularity::Hour => 1,
            Granularity::Day => 2,
        }
    }
}

/// What events are grouped by.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Dimension {
    Endpoint,
    StatusCode,
    Method,
    UserId,
    /// Endpoint within a status class; the key is the class digit, a space,
    /// then the endpoint (`5 GET /items/{id}`), see [`Dimension::endpoint_class_key`].
    EndpointStatusClass,
}

impl Dimension {
    pub const ALL: [Dimension; 5] = [
        Dimension::Endpoint,
        Dimension::StatusCode,
        Dimension::Method,
        Dimension::UserId,
        Dimension::EndpointStatusClass,
    ];

    /// The key of `endpoint` in status class `class` (1 to 5) in the endpoint x class cube.
    pub fn endpoint_class_key(class: u16, endpoint: &str) -> String {
        format!("{class} {endpoint}")
    }

    /// Splits an endpoint x class key into (class digit, endpoint).
    pub fn split_endpoint_class_key(key: &str) -> Option<(u8, &str)> {
        let class = key.as_bytes().first()?.checked_sub(b'0')?;
        Some((class, key.get(2..)?))
    }

    /// The dimension's name, as the API spells it.
    pub const fn name(self) -> &'static str {
        match self {
            Dimension::Endpoint => "endpoint",
            Dimension::StatusCode => "status_code",
            Dimension::Method => "method",
            Dimension::UserId => "user_id",
            Dimension::EndpointStatusClass => "endpoint_status_class",
        }
    }

    /// Keys of this dimension the process has interned (they are never
    /// freed; a restart starts again from what the rollups hold).
    pub fn interned_keys(self) -> usize {
        Keys::of(self).len()
    }

    pub(crate) const fn index(self) -> usize {
        match self {
            Dimension::Endpoint => 0,
            Dimension::StatusCode => 1,
            Dimension::Method => 2,
            Dimension::UserId => 3,
            Dimension::EndpointStatusClass => 4,
        }
    }

    /// The user cube keeps no sketch: its cardinality is far higher.
    pub(super) const fn keeps_sketch(self) -> bool {
        !matches!(self, Dimension::UserId)
    }

    /// The granularities this dimension's cube is kept at, coarsest first. The
    /// user cube has no minute buckets: they were most of the rollups' memory,
    /// and the sub-hour edges of a user query are cheap to read from raw rows.
    pub const fn granularities(self) -> &'static [Granularity] {
        match self {
            Dimension::UserId => &[Granularity::Day, Granularity::Hour],
            _ => &Granularity::ALL,
        }
    }

    /// `name` as a key of this dimension; `None` if no cube ever had it.
    pub fn key(self, name: &str) -> Option<Key> {
        Keys::of(self).id(name).map(|id| Key { dim: self, id })
    }

    /// `name` as a key of this dimension, interned if new.
    pub fn intern(self, name: &str) -> Key {
        Key {
            dim: self,
            id: Keys::of(self).intern(name),
        }
    }

    /// This dimension's value in an event.
    pub fn key_of(self, e: &Event) -> std::borrow::Cow<'_, str> {
        match self {
            Dimension::Endpoint => e.endpoint.as_str().into(),
            Dimension::StatusCode => e.status_code.to_string().into(),
            Dimension::Method => e.method.as_str().into(),
            Dimension::UserId => e.user_id.as_str().into(),
            Dimension::EndpointStatusClass => {
                Self::endpoint_class_key(e.status_code / 100, &e.endpoint).into()
            }
        }
    }
}

/// A key of one dimension, looked up once to be read in many cubes. Keys of
/// one dimension sort in the order cubes keep their cells
/// ([`Cube::cells_of`](super::Cube::cells_of)), not by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub(super) dim: Dimension,
    pub(super) id: KeyId,
}

impl Key {
    /// The key's value, as events spell it.
    pub fn name(self) -> &'static str {
        Keys::of(self.dim).with_names(|name| name(self.id))
    }
}

/// The ids of `r`'s keys, by [`Dimension::index`]. The keys made of numbers
/// (the status code, the endpoint x class) are remembered per thread by the
/// numbers, so no key string is built for them: ids never change.
pub(crate) fn key_ids(r: &Row<'_>) -> [KeyId; 5] {
    let interned: Result<_, std::convert::Infallible> =
        key_ids_with(r, |d, name| Ok(Keys::of(d).intern(name)));
    match interned {
        Ok(ids) => ids,
    }
}

/// [`key_ids`] of a new event's row: `Err` naming the dimension if one of its
/// keys is new and refused ([`Keys::admit`]).
pub(crate) fn admitted_key_ids(r: &Row<'_>) -> Result<[KeyId; 5], (Dimension, Refused)> {
    key_ids_with(r, |d, name| Keys::of(d).admit(name).map_err(|e| (d, e)))
}

/// Most entries a thread's derived-key map holds before it starts again
/// (it is a cache: every entry can be looked up again).
const MAX_DERIVED: usize = 1 << 16;

fn key_ids_with<E>(
    r: &Row<'_>,
    id: impl Fn(Dimension, &str) -> Result<KeyId, E>,
) -> Result<[KeyId; 5], E> {
    type Derived = HashMap<(KeyId, u16), KeyId, foldhash::fast::RandomState>;
    thread_local! {
        /// (u32::MAX, status code) -> status key; (endpoint, class) -> endpoint x class key.
        static DERIVED: std::cell::RefCell<Derived> = Default::default();
    }
    let endpoint = id(Dimension::Endpoint, r.endpoint)?;
    let class = r.status / 100;
    let derived = |key: (KeyId, u16), make: &dyn Fn() -> Result<KeyId, E>| {
        if let Some(id) = DERIVED.with_borrow(|d| d.get(&key).copied()) {
            return Ok(id);
        }
        let id = make()?;
        DERIVED.with_borrow_mut(|d| {
            if d.len() >= MAX_DERIVED {
                d.clear();
            }
            d.insert(key, id);
        });
        Ok(id)
    };
    let status = derived((KeyId::MAX, r.status), &|| {
        id(Dimension::StatusCode, &r.status.to_string())
    })?;
    let endpoint_class = derived((endpoint, class), &|| {
        id(
            Dimension::EndpointStatusClass,
            &Dimension::endpoint_class_key(class, r.endpoint),
        )
    })?;
    let mut ids = [0; 5];
    ids[Dimension::Endpoint.index()] = endpoint;
    ids[Dimension::StatusCode.index()] = status;
    ids[Dimension::Method.index()] = id(Dimension::Method, r.method)?;
    ids[Dimension::UserId.index()] = id(Dimension::UserId, r.user_id)?;
    ids[Dimension::EndpointStatusClass.index()] = endpoint_class;
    Ok(ids)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use toplog_types::Micros;

    /// The remembered ids of number keys are the ids of the keys' names, on
    /// first sight and after.
    #[test]
    fn key_ids_are_the_ids_of_the_key_names() {
        for round in 0..2 {
            for (i, status) in [200, 201, 404, 503, 599, 100].into_iter().enumerate() {
                let e = Event {
                    request_id: "r".into(),
                    timestamp: Micros::new(0),
                    user_id: format!("key-ids-user-{i}"),
                    endpoint: format!("GET /key-ids/{}", i % 3),
                    method: "GET".into(),
                    status_code: status,
                    latency_us: 5,
                };
                let by_name = Dimension::ALL.map(|d| Keys::of(d).intern(&d.key_of(&e)));
                assert_eq!(
                    key_ids(&Row::of(&e)),
                    by_name,
                    "round {round}, status {status}"
                );
            }
        }
    }
}
