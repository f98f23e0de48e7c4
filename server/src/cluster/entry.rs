//! What a cluster's Raft log entries hold: one byte saying what the entry
//! changes, then its body (docs/format.md, "Raft state").
//!
//! | kind | body |
//! |---|---|
//! | 0, an ingest batch | the payload the engine's own log would hold (sealed when encryption is on) |
//! | 1, the retention policy | the whole policy after the change, as `GET /api/v1/retention` shows it (JSON) |
//! | 2, an API key made or revoked | `{"add": <the key as stored: id, name, role, hash of its secret, ...>}` or `{"revoke": "<id>"}` (JSON) |
//! | 3, an audit entry | the entry as `GET /api/v1/audit` shows it (JSON) |
//! | 4, an aggregation job submitted | the job as first stored: id, `pending`, submitted time, request (JSON) |
//! | 5, a maintenance decision | `{"purge": <cut-offs>}`, `{"seal": {"before": <µs>}}` or `{"cutoff": {"partition_start", "seal", "objects"}}` (JSON; docs/cluster.md, "The archive") |
//! | 6, the cluster's id | the id, a UUID (the first one applied stands) |
//! | 7, an alerting change | a rule made, changed or removed, a rule's series judged at a minute's end, an alert acknowledged (JSON; docs/format.md) |
//! | 8, a shard map change | a sharded cluster's first map (each shard's slots and replicas), a replica's move started or finished (JSON; docs/cluster.md, "Shards") |

use serde::{Deserialize, Serialize};
use serde_json::Value;

use toplog_compaction::cluster::Decision;

use crate::auth::StoredKey;

const INGEST: u8 = 0;
const RETENTION: u8 = 1;
const KEY: u8 = 2;
const AUDIT: u8 = 3;
const JOB: u8 = 4;
const MAINTENANCE: u8 = 5;
const CLUSTER_ID: u8 = 6;
const ALERTING: u8 = 7;
const PLACEMENT: u8 = 8;

/// A cluster's shared API keys, changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum KeyChange {
    Add(StoredKey),
    Revoke(String),
}

/// A decoded entry.
#[derive(Debug, PartialEq)]
pub(crate) enum Entry<'a> {
    Ingest(&'a [u8]),
    Retention(Value),
    Key(KeyChange),
    Audit(Value),
    Job(toplog_query::Job),
    Maintenance(Decision),
    ClusterId(String),
    Alerting(toplog_alerting::Change),
    Placement(super::shards::PlacementChange),
}

impl Entry<'_> {
    pub(crate) fn encode(&self) -> Vec<u8> {
        match self {
            Entry::Ingest(payload) => [&[INGEST][..], payload].concat(),
            Entry::Retention(policy) => json(RETENTION, policy),
            Entry::Key(change) => json(KEY, change),
            Entry::Audit(line) => json(AUDIT, line),
            Entry::Job(job) => json(JOB, job),
            Entry::Maintenance(decision) => json(MAINTENANCE, decision),
            Entry::ClusterId(id) => [&[CLUSTER_ID][..], id.as_bytes()].concat(),
            Entry::Alerting(change) => json(ALERTING, change),
            Entry::Placement(map) => json(PLACEMENT, map),
        }
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Entry<'_>, String> {
        match bytes.split_first() {
            Some((&INGEST, payload)) => Ok(Entry::Ingest(payload)),
            Some((&RETENTION, body)) => serde_json::from_slice(body)
                .map(Entry::Retention)
                .map_err(|e| format!("a retention entry that is not JSON: {e}")),
            Some((&KEY, body)) => serde_json::from_slice(body)
                .map(Entry::Key)
                .map_err(|e| format!("a key entry that does not decode: {e}")),
            Some((&AUDIT, body)) => serde_json::from_slice(body)
                .map(Entry::Audit)
                .map_err(|e| format!("an audit entry that is not JSON: {e}")),
            Some((&JOB, body)) => serde_json::from_slice(body)
                .map(Entry::Job)
                .map_err(|e| format!("a job entry that does not decode: {e}")),
            Some((&MAINTENANCE, body)) => serde_json::from_slice(body)
                .map(Entry::Maintenance)
                .map_err(|e| format!("a maintenance entry that does not decode: {e}")),
            Some((&CLUSTER_ID, body)) => std::str::from_utf8(body)
                .ok()
                .and_then(|id| uuid::Uuid::parse_str(id).ok())
                .map(|id| Entry::ClusterId(id.hyphenated().to_string()))
                .ok_or_else(|| "a cluster id entry that is not a UUID".into()),
            Some((&ALERTING, body)) => serde_json::from_slice(body)
                .map(Entry::Alerting)
                .map_err(|e| format!("an alerting entry that does not decode: {e}")),
            Some((&PLACEMENT, body)) => serde_json::from_slice(body)
                .map(Entry::Placement)
                .map_err(|e| format!("a shard map entry that does not decode: {e}")),
            Some((kind, _)) => Err(format!("an entry of unknown kind {kind}")),
            None => Err("an empty entry".into()),
        }
    }
}

/// `kind`, then `body` as JSON.
fn json(kind: u8, body: &impl Serialize) -> Vec<u8> {
    let mut out = vec![kind];
    // A `Value` or a derived type: serializing cannot fail.
    out.extend(serde_json::to_vec(body).unwrap_or_default());
    out
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
        let revoke = Entry::Key(KeyChange::Revoke("0a1b2c3d4e5f".into()));
        assert_eq!(Entry::decode(&revoke.encode()), Ok(revoke));
        let audit = Entry::Audit(serde_json::json!({"method": "PUT", "status": 200}));
        assert_eq!(Entry::decode(&audit.encode()), Ok(audit));
        let seal = Entry::Maintenance(Decision::Seal {
            before: toplog_types::Micros::new(1_764_547_200_000_000),
        });
        assert_eq!(Entry::decode(&seal.encode()), Ok(seal));
        let id = Entry::ClusterId("0193a0b4-7c2e-7d4a-9b1e-2f3c4d5e6f70".into());
        assert_eq!(Entry::decode(&id.encode()), Ok(id));
        assert!(Entry::decode(&[CLUSTER_ID, b'x']).is_err());
        assert!(Entry::decode(&[KEY, b'{', b'}']).is_err());
        assert!(Entry::decode(&[7, 1, 2]).is_err());
        assert!(Entry::decode(&[PLACEMENT, b'[']).is_err());
        let moved = Entry::Placement(super::super::shards::PlacementChange::Start {
            shard: 2,
            from: 1,
            to: 4,
        });
        assert_eq!(Entry::decode(&moved.encode()), Ok(moved));
        assert!(Entry::decode(&[]).is_err());
        assert!(Entry::decode(&[RETENTION, b'{']).is_err());
    }
}
