//! What a cluster's Raft log entries hold: one byte saying what the entry
//! changes, then its body (docs/format.md, "Raft state").
//!
//! | kind | body |
//! |---|---|
//! | 0, an ingest batch | the payload the engine's own log would hold (sealed when encryption is on) |
//! | 1, the retention policy | the whole policy after the change, as `GET /api/v1/retention` shows it (JSON) |

use serde_json::Value;

const INGEST: u8 = 0;
const RETENTION: u8 = 1;

/// A decoded entry.
#[derive(Debug, PartialEq)]
pub(crate) enum Entry<'a> {
    Ingest(&'a [u8]),
    Retention(Value),
}

impl Entry<'_> {
    pub(crate) fn encode(&self) -> Vec<u8> {
        match self {
            Entry::Ingest(payload) => [&[INGEST][..], payload].concat(),
            Entry::Retention(policy) => {
                let mut out = vec![RETENTION];
                out.extend_from_slice(policy.to_string().as_bytes());
                out
            }
        }
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Entry<'_>, String> {
        match bytes.split_first() {
            Some((&INGEST, payload)) => Ok(Entry::Ingest(payload)),
            Some((&RETENTION, body)) => serde_json::from_slice(body)
                .map(Entry::Retention)
                .map_err(|e| format!("a retention entry that is not JSON: {e}")),
            Some((kind, _)) => Err(format!("an entry of unknown kind {kind}")),
            None => Err("an empty entry".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_unknown_ones_are_refused() {
        let ingest = Entry::Ingest(b"sealed batch");
        assert_eq!(Entry::decode(&ingest.encode()), Ok(ingest));
        let policy = Entry::Retention(serde_json::json!({"raw": {"keep_for": "30d"}}));
        assert_eq!(Entry::decode(&policy.encode()), Ok(policy));
        assert!(Entry::decode(&[7, 1, 2]).is_err());
        assert!(Entry::decode(&[]).is_err());
        assert!(Entry::decode(&[RETENTION, b'{']).is_err());
    }
}
