//! An ingest batch as one WAL entry: the events, the server time it was
//! received, and the client's idempotency key, so replay can deduplicate.
//!
//! | field          | encoding                                              |
//! |----------------|-------------------------------------------------------|
//! | version        | u8 = 1                                                |
//! | received_at    | i64 LE, microseconds                                  |
//! | key            | varint length + UTF-8 (length 0 = no key)            |
//! | count          | varint                                                |
//! | per event      | request_id, user_id, endpoint, method (varint length  |
//! |                | + UTF-8 each), timestamp i64 LE, status u16 LE,       |
//! |                | latency_us varint                                     |

use toplog_types::{Event, Micros};

use crate::codec::{CodecError, Reader, put_bytes, put_varint};
use crate::columns::Row;
use crate::error::{EngineError, Result};
use crate::keys::{KeyId, Refused};
use crate::rollup::admitted_key_ids;

const VERSION: u8 = 1;

/// Events to ingest, with their rollup keys' ids ([`key_ids`]) looked up
/// where this is made. The server makes it on its parse threads: the log
/// writer's thread applies batches one after another, so it bounds the
/// ingest rate, and it no longer looks the keys up (hashing and comparing
/// each event's user id in a map of up to millions).
#[derive(Debug, Clone, Default)]
pub struct KeyedEvents {
    pub(crate) events: Vec<Event>,
    /// `key_ids` of each event, in order.
    pub(crate) ids: Vec<[KeyId; 5]>,
}

impl KeyedEvents {
    /// The events with their keys' ids; `Err` if one brings a new key the
    /// node has no room for (see [`EngineError::KeysExhausted`]): then no
    /// event of the batch is taken.
    pub fn new(events: Vec<Event>) -> Result<Self> {
        let ids = events
            .iter()
            .map(|e| {
                admitted_key_ids(&Row::of(e)).map_err(|(dim, refused)| match refused {
                    Refused::Budget(budget) => EngineError::KeysExhausted {
                        dimension: dim.name(),
                        budget: Some(budget),
                    },
                    Refused::Ids => EngineError::KeysExhausted {
                        dimension: dim.name(),
                        budget: None,
                    },
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self { events, ids })
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// The events by `part` of each (each part's in their order), their
    /// keys' ids with them.
    pub fn split<K: Ord>(self, part: impl Fn(&Event) -> K) -> std::collections::BTreeMap<K, Self> {
        let mut parts: std::collections::BTreeMap<K, Self> = std::collections::BTreeMap::new();
        for (event, ids) in self.events.into_iter().zip(self.ids) {
            let into = parts.entry(part(&event)).or_default();
            into.events.push(event);
            into.ids.push(ids);
        }
        parts
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

impl From<Vec<Event>> for KeyedEvents {
    /// Events whose keys the log writer's thread looks up as it applies
    /// them, outside the key budget: for tools and tests that write to an
    /// engine directly. The node's own ingest goes through [`KeyedEvents::new`].
    fn from(events: Vec<Event>) -> Self {
        Self {
            events,
            ids: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Batch {
    pub(crate) received_at: Micros,
    pub(crate) idempotency_key: Option<String>,
    pub(crate) events: Vec<Event>,
}

impl Batch {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.events.len() * 96);
        out.push(VERSION);
        out.extend_from_slice(&self.received_at.get().to_le_bytes());
        put_bytes(
            &mut out,
            self.idempotency_key.as_deref().unwrap_or("").as_bytes(),
        );
        put_varint(&mut out, self.events.len() as u64);
        for e in &self.events {
            put_bytes(&mut out, e.request_id.as_bytes());
            put_bytes(&mut out, e.user_id.as_bytes());
            put_bytes(&mut out, e.endpoint.as_bytes());
            put_bytes(&mut out, e.method.as_bytes());
            out.extend_from_slice(&e.timestamp.get().to_le_bytes());
            out.extend_from_slice(&e.status_code.to_le_bytes());
            put_varint(&mut out, e.latency_us);
        }
        out
    }
}

/// A batch as the log holds it, its rows borrowed from the entry: applying
/// it copies each value once, into the memtable, and allocates nothing per row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Logged<'a> {
    pub(crate) received_at: Micros,
    pub(crate) idempotency_key: Option<&'a str>,
    pub(crate) rows: Vec<Row<'a>>,
}

impl<'a> Logged<'a> {
    pub(crate) fn decode(buf: &'a [u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(buf);
        let version = r.u8()?;
        if version != VERSION {
            return Err(CodecError(format!("unsupported batch version {version}")));
        }
        let received_at = Micros::new(r.i64()?);
        let key = r.str()?;
        // Each event takes at least 14 bytes, which bounds a corrupt count.
        let n = r.len(buf.len() / 14)?;
        let mut rows = Vec::with_capacity(n);
        for _ in 0..n {
            let request_id = r.str()?;
            let user_id = r.str()?;
            let endpoint = r.str()?;
            let method = r.str()?;
            let ts = r.i64()?;
            let status = r.u16()?;
            let latency_us = r.varint()?;
            rows.push(Row {
                ts,
                request_id,
                user_id,
                endpoint,
                method,
                status,
                latency_us,
            });
        }
        if !r.is_empty() {
            return Err(CodecError(format!(
                "{} trailing bytes after the batch",
                buf.len() - r.position()
            )));
        }
        Ok(Self {
            received_at,
            idempotency_key: (!key.is_empty()).then_some(key),
            rows,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trips(n in 0usize..20, key in proptest::option::of("[a-z]{1,10}"), seed: i64) {
            let events: Vec<Event> = (0..n).map(|i| Event {
                request_id: format!("r{i}"),
                timestamp: Micros::new(seed.wrapping_add(i as i64)),
                user_id: if i % 2 == 0 { String::new() } else { format!("u{i}") },
                endpoint: "GET /x".into(),
                method: "GET".into(),
                status_code: 200 + i as u16,
                latency_us: i as u64 * 1000,
            }).collect();
            let b = Batch { received_at: Micros::new(seed), idempotency_key: key, events };
            let img = b.encode();
            let back = Logged::decode(&img).unwrap();
            prop_assert_eq!(back.received_at, b.received_at);
            prop_assert_eq!(back.idempotency_key, b.idempotency_key.as_deref());
            prop_assert_eq!(back.rows, b.events.iter().map(Row::of).collect::<Vec<_>>());
            for len in 0..img.len() {
                prop_assert!(Logged::decode(&img[..len]).is_err());
            }
        }
    }
}
