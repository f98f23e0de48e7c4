//! Reads under a [`ReadBudget`]: within it they answer in full, past its
//! memory or its time they stop with the error naming that budget, whether
//! the rows are in open memtables or in segments.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use toplog_engine::{
    Cursor, Dimension, Engine, EngineConfig, EngineError, Filters, ReadBudget, TimeRange,
};
use toplog_types::{Event, Micros};
use toplog_wal::SimFs;

const USERS: usize = 6_000;

fn everything() -> TimeRange {
    TimeRange {
        start: Micros::new(0),
        end: Micros::new(i64::MAX),
    }
}

/// An engine holding one event per user, half flushed to segments and half
/// in the open memtables.
fn engine() -> Engine {
    let mut c = EngineConfig::new("/data");
    c.partition = Duration::from_secs(3600);
    let engine = Engine::open_with(Arc::new(SimFs::new(1)), c).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let events = |from: usize, to: usize| -> Vec<Event> {
        (from..to)
            .map(|i| Event {
                request_id: format!("r{i}"),
                timestamp: Micros::new(1_000_000 + i as i64),
                user_id: format!("user-{i}"),
                endpoint: "GET /a".into(),
                method: "GET".into(),
                status_code: 200,
                latency_us: 1 + i as u64,
            })
            .collect()
    };
    rt.block_on(engine.ingest(events(0, USERS / 2), None))
        .unwrap();
    engine.flush().unwrap();
    rt.block_on(engine.ingest(events(USERS / 2, USERS), None))
        .unwrap();
    engine
}

fn memory(bytes: usize) -> ReadBudget {
    ReadBudget {
        memory_bytes: bytes,
        deadline: None,
        timeout: Duration::MAX,
    }
}

#[test]
fn reads_stop_past_their_memory_or_time_and_answer_whole_within_them() {
    let engine = engine();
    let by_user = |sketches| {
        engine.aggregate_raw(
            everything(),
            &Filters::default(),
            Dimension::UserId,
            sketches,
        )
    };

    // Within the budget: every group, exactly.
    let cells = memory(64 << 20).run(|| by_user(true)).unwrap();
    assert_eq!(cells.len(), USERS);
    assert!(cells.values().all(|c| c.count == 1));

    // 6,000 groups take well over 512 KiB (each is its key, a cell and a
    // slot): the read stops, naming its budget.
    for sketches in [false, true] {
        let err = memory(512 << 10).run(|| by_user(sketches)).unwrap_err();
        assert!(
            matches!(err, EngineError::QueryMemory { limit } if limit == 512 << 10),
            "{err}"
        );
        assert!(err.to_string().contains("query_memory_bytes"), "{err}");
    }

    // A page asks for what it keeps: a cursor skipping a million rows
    // sharing one (timestamp, request id) is refused up front.
    let page = memory(8 << 20)
        .run(|| engine.scan(everything(), &Filters::default(), None, 1000))
        .unwrap();
    assert_eq!(page.events.len(), 1000);
    let far = Cursor {
        ts: Micros::new(1_000_000),
        request_id: "r0".into(),
        skip: 1_000_000,
    };
    let err = memory(8 << 20)
        .run(|| engine.scan(everything(), &Filters::default(), Some(&far), 1000))
        .unwrap_err();
    assert!(matches!(err, EngineError::QueryMemory { .. }), "{err}");

    // Past the deadline every raw read stops at its first source.
    let late = ReadBudget {
        memory_bytes: 64 << 20,
        deadline: Some(Instant::now()),
        timeout: Duration::from_millis(10),
    };
    let timed_out = |r: Result<(), EngineError>| {
        let err = r.unwrap_err();
        assert!(
            matches!(err, EngineError::QueryTimeout { limit } if limit == Duration::from_millis(10)),
            "{err}"
        );
        assert!(err.to_string().contains("query_timeout"), "{err}");
    };
    let user = Filters {
        user_id: Some("user-7".into()),
        ..Filters::default()
    };
    timed_out(late.run(|| by_user(false).map(drop)));
    timed_out(late.run(|| engine.scan(everything(), &user, None, 10).map(drop)));
    timed_out(late.run(|| engine.count(everything(), &user).map(drop)));
    timed_out(late.run(|| engine.slowest(everything(), &user, 10, false).map(drop)));
    // The same reads with time left answer.
    assert_eq!(engine.count(everything(), &user).unwrap(), 1);
}
