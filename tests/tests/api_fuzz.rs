//! An outside API fuzzer against real nodes: Schemathesis (pinned to 4.32,
//! installed by scripts/test.sh) runs every check with its coverage, fuzzing
//! and stateful phases, a fixed seed and a bounded number of examples per
//! operation, and any finding fails the test. Routes that change or delete
//! data run against a throwaway node of their own, so the main run's node
//! keeps its data. Longer runs: `TOPLOG_FUZZ_EXAMPLES=2000 TOPLOG_FUZZ_SEED=7`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use serde_json::{Value, json};
use toplog_tests::{Server, now_ms, send_all};

/// Routes whose calls change retention or delete data.
const DESTRUCTIVE: [&str; 2] = ["/api/v1/retention", "/api/v1/admin/maintenance"];
/// Routes left out: a backup's answer depends on an outside object store
/// (a made-up `s3://` location is a 502). tests/tests/backup.rs checks
/// its bad input.
const OUTSIDE: [&str; 1] = ["/api/v1/admin/backups"];

fn setting(name: &str, default: u64) -> String {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(default)
        .to_string()
}

/// Runs Schemathesis against `server` on the operations `scope` selects.
fn schemathesis(server: &Server, scope: &[&str]) {
    let config = toplog_tests::manifest_dir().join("schemathesis.toml");
    let out = Command::new("st")
        .args(["--no-color", "--config-file"])
        .arg(&config)
        .arg("run")
        .arg(server.url("/api/v1/openapi.json"))
        .args(["--checks", "all"])
        .args([
            "--header",
            &format!("Authorization: Bearer {}", toplog_tests::ADMIN_KEY),
        ])
        .args(["--phases", "examples,coverage,fuzzing,stateful"])
        .args(["--max-examples", &setting("TOPLOG_FUZZ_EXAMPLES", 200)])
        .args(["--seed", &setting("TOPLOG_FUZZ_SEED", 1)])
        .args(["--workers", "1", "--request-timeout", "30"])
        // No example database: a run depends on its seed alone, and leaves no files.
        .args([
            "--generation-database",
            "none",
            "--output-sanitize",
            "false",
        ])
        .args(scope)
        .output()
        .expect("run `st` (Schemathesis; scripts/test.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "Schemathesis found problems (exit {:?}):\n{text}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    // A run that tested nothing would pass too: it must have reached every operation selected.
    assert!(
        text.contains("passed") && !text.contains("Tested: 0"),
        "no operation was tested:\n{text}"
    );
}

/// A few days of traffic over a handful of endpoints and users, so queries
/// read rollups at every granularity and raw rows.
fn traffic() -> Vec<Value> {
    let now = now_ms();
    (0..4000i64)
        .map(|i| {
            let status = [200, 200, 201, 404, 500][(i % 5) as usize];
            json!({
                "request_id": format!("r{i}"),
                "timestamp": now - (i * 97_003) % (3 * 86_400_000),
                "endpoint": format!("GET /api/items/{}", i % 13),
                "user_id": format!("u{}", i % 211),
                "status_code": status,
                "latency_ms": (i % 1000) as f64 / 7.0,
            })
        })
        .collect()
}

/// A node whose guessing limit lets the fuzzer's many unauthenticated
/// calls (its `ignored_auth` check) through.
fn fuzzed_node(dir: &std::path::Path) -> Server {
    let config = dir.join("toplog.toml");
    // Alert channels may send only here: the fuzzer's made-up hosts (and
    // an SMS channel's default, Twilio) are refused, not called.
    std::fs::write(
        &config,
        "alert_hosts = \"127.0.0.1\"\n[rate_limits]\nfailed_auth = \"100000/s\"\n",
    )
    .unwrap();
    Server::start_ready(&dir.join("data"), &["--config", config.to_str().unwrap()])
}

#[test]
fn schemathesis_finds_nothing_on_a_node_with_data() {
    let dir = tempfile::tempdir().unwrap();
    let server = fuzzed_node(dir.path());
    send_all(&server, &traffic());
    let mut scope = Vec::new();
    for path in DESTRUCTIVE.iter().chain(&OUTSIDE) {
        scope.extend(["--exclude-path", path]);
    }
    schemathesis(&server, &scope);
}

#[test]
fn schemathesis_finds_nothing_on_the_destructive_routes() {
    let dir = tempfile::tempdir().unwrap();
    let server = fuzzed_node(dir.path());
    send_all(&server, &traffic());
    let mut scope = Vec::new();
    for path in DESTRUCTIVE {
        scope.extend(["--include-path", path]);
    }
    schemathesis(&server, &scope);
}
