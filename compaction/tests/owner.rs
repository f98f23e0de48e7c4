//! One archive, one owner: a node's maintenance writes and deletes in the
//! archive only while its `OWNER` marker names the node. Handed to another
//! node while this one runs, the next pass leaves the archive as it is.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use toplog_compaction::{
    ArchiveConfig, ArchiveOwner, Maintainer, NodeId, OWNER_KEY, ObjectArchive, Policy, claim,
};
use toplog_engine::{ArchiveStore, Engine, EngineConfig};
use toplog_types::{Event, Micros};

const HOUR_US: i64 = 3_600_000_000;

/// Every file under `dir` with its bytes.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                let rel = path.strip_prefix(dir).unwrap().display().to_string();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

#[test]
fn a_pass_leaves_an_archive_owned_by_another_node_alone() {
    let dir = tempfile::tempdir().unwrap();
    let archive_dir = dir.path().join("archive");
    let archive = Arc::new(ObjectArchive::open(&ArchiveConfig::default(), dir.path()).unwrap());
    let mut config = EngineConfig::new(dir.path().join("data"));
    config.partition = Duration::from_secs(3600);
    config.archive = Some(archive.clone() as Arc<dyn ArchiveStore>);
    let engine = Arc::new(Engine::open(config).unwrap());
    let now = Micros::now().get();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let event = |i: i64, ts: i64| Event {
        request_id: format!("r{i}"),
        timestamp: Micros::new(ts),
        user_id: "u".into(),
        endpoint: "GET /a".into(),
        method: "GET".into(),
        status_code: 200,
        latency_us: 1000,
    };
    // Two hours ago: due for the archive under a 1-hour local_for.
    let old: Vec<Event> = (0..50).map(|i| event(i, now - 2 * HOUR_US - i)).collect();
    rt.block_on(engine.ingest(old, None)).unwrap();
    engine.flush().unwrap();

    let node = NodeId::generate();
    let owner = Arc::new(ArchiveOwner::new(
        archive.clone(),
        archive.location().to_owned(),
        node,
    ));
    let policy = Policy {
        raw_local_for: Duration::from_secs(3600),
        ..Policy::default()
    };
    let maintainer = Maintainer::new(
        engine.clone(),
        dir.path().join("data"),
        policy,
        owner.clone(),
    );
    let report = maintainer.run();
    assert!(report.errors.is_empty(), "{report:?}");
    assert_eq!(report.archived.len(), 1, "{report:?}");
    assert!(owner.is_confirmed());
    assert_eq!(maintainer.storage()["archive"]["owned"], true);

    // Handed to another node while this one runs; that node's orphan (an
    // upload cut short) lies there, named as this node would name one.
    std::fs::remove_file(archive_dir.join(OWNER_KEY)).unwrap();
    let other = NodeId::generate();
    claim(archive.as_ref(), archive.location(), other).unwrap();
    let theirs = archive_dir.join("raw/day=2000-01-01/0000000000000007.parquet");
    std::fs::create_dir_all(theirs.parent().unwrap()).unwrap();
    std::fs::write(&theirs, b"the other node's").unwrap();
    // More for this node to archive and a segment for it to purge.
    let more: Vec<Event> = (50..60).map(|i| event(i, now - 3 * HOUR_US - i)).collect();
    rt.block_on(engine.ingest(more, None)).unwrap();
    engine.flush().unwrap();
    let before = files(&archive_dir);
    let segments = engine.segments();
    let purging = Policy {
        raw_local_for: Duration::from_secs(60),
        raw_keep_for: Duration::from_secs(60),
        minute_keep_for: Duration::from_secs(60),
        ..Policy::default()
    };
    maintainer.set_policy(&purging.to_json()).unwrap();

    let report = maintainer.run();
    let text = format!("{:?}", report.errors);
    assert!(
        text.contains(&format!("belongs to node {other}")) && text.contains(&node.to_string()),
        "{report:?}"
    );
    assert!(report.archived.is_empty(), "{report:?}");
    assert!(report.purged_segments.is_empty(), "{report:?}");
    assert!(report.swept_objects.is_empty(), "{report:?}");
    assert_eq!(files(&archive_dir), before, "the pass changed the archive");
    assert_eq!(engine.segments().len(), segments.len());
    assert!(!owner.is_confirmed());
    let storage = maintainer.storage();
    assert_eq!(storage["archive"]["owned"], false);
    assert_eq!(storage["archive"]["status"], "failing");
    assert_eq!(storage["archive"]["node_id"], node.to_string());
    engine.close().unwrap();
}
