//! Access control against the real binary: every route (from the served
//! OpenAPI document, which the route table writes) and every gRPC method
//! answers each kind of caller as its role says; API keys are made, used,
//! listed without their secret, revoked at once and expire; the first start
//! writes an admin key only its owner can read; `auth = "off"` is refused
//! off loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use serde_json::{Value, json};
use toplog_tests::{ADMIN_KEY, Server, binary, client, manifest_dir};

/// A key of `role` made through the API.
fn make_key(
    server: &Server,
    name: &str,
    role: &str,
    expires_at: Option<String>,
) -> (String, String) {
    let r = client()
        .post(server.url("/api/v1/keys"))
        .json(&json!({"name": name, "role": role, "expires_at": expires_at}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let body: Value = r.json().unwrap();
    let key = body["data"]["key"].as_str().unwrap().to_owned();
    let id = body["data"]["id"].as_str().unwrap().to_owned();
    assert!(key.starts_with(&format!("tlk_{id}_")), "{body}");
    (id, key)
}

/// A client that shows `key` (or nothing).
fn as_caller(key: Option<&str>) -> reqwest::blocking::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(k) = key {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {k}").parse().unwrap(),
        );
    }
    reqwest::blocking::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

/// The status of `GET path` as the holder of `key` (or of none).
fn get_status(server: &Server, key: Option<&str>, path: &str) -> u16 {
    as_caller(key)
        .get(server.url(path))
        .send()
        .unwrap()
        .status()
        .as_u16()
}

fn may(caller: &str, needed: &str) -> bool {
    caller == needed || (caller == "admin" && needed != "peer")
}

#[test]
fn every_route_and_rpc_answers_each_caller_as_its_role_says() {
    let dir = tempfile::tempdir().unwrap();
    // Many refused calls from one address: let them through the guessing limit.
    let config = dir.path().join("toplog.toml");
    std::fs::write(&config, "[rate_limits]\nfailed_auth = \"100000/s\"\n").unwrap();
    let server = Server::start_ready(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let mut callers: Vec<(&str, Option<String>)> = vec![
        ("none", None),
        (
            "bad",
            Some(format!("{}ff", &ADMIN_KEY[..ADMIN_KEY.len() - 2])),
        ),
        ("admin", Some(ADMIN_KEY.to_owned())),
    ];
    for role in ["viewer", "writer", "peer"] {
        callers.push((role, Some(make_key(&server, role, role, None).1)));
    }
    let doc: Value = client()
        .get(server.url("/api/v1/openapi.json"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let mut checked = 0;
    for (path, methods) in doc["paths"].as_object().unwrap() {
        for (method, op) in methods.as_object().unwrap() {
            let needed = op["x-toplog-role"].as_str();
            assert_eq!(
                op["security"].as_array().unwrap().is_empty(),
                needed.is_none(),
                "{method} {path}: `security` and the role disagree"
            );
            let url = server.url(&path.replace("{id}", "no-such-id"));
            for (caller, key) in &callers {
                let c = as_caller(key.as_deref());
                let request = match method.as_str() {
                    "get" => c.get(&url),
                    "post" => c.post(&url),
                    "put" => c.put(&url),
                    "delete" => c.delete(&url),
                    other => panic!("{other} {path}"),
                };
                let r = request.send().unwrap();
                let status = r.status().as_u16();
                let body: Value = r.json().unwrap_or(Value::Null);
                let code = body["error"]["code"].as_str().unwrap_or("");
                let want = match (needed, *caller) {
                    (None, _) => None,
                    (Some(_), "none" | "bad") => Some((401, "invalid_token")),
                    (Some(role), c) if may(c, role) => None,
                    (Some(_), _) => Some((403, "insufficient_role")),
                };
                match want {
                    Some(w) => assert_eq!((status, code), w, "{method} {path} as {caller}"),
                    None => assert!(
                        status != 401 && status != 403,
                        "{method} {path} as {caller}: {status} {body}"
                    ),
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 48 * callers.len(), "every route, every caller");

    // gRPC: every method of toplog.v1.Toplog (from the .proto), OTLP's
    // Export and the health check, each caller.
    let keys: Value = callers
        .iter()
        .map(|(name, key)| (name.to_string(), json!(key)))
        .collect::<serde_json::Map<_, _>>()
        .into();
    let out = toplog_tests::succeeded(
        Command::new("python3")
            .arg(manifest_dir().join("grpc/each_caller.py"))
            .arg(server.base.trim_start_matches("http://"))
            .arg(manifest_dir().join("../proto"))
            .arg(keys.to_string()),
    );
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    let methods = seen.as_object().unwrap();
    assert_eq!(
        methods.len(),
        12,
        "10 toplog.v1 methods, Export, Check: {seen}"
    );
    for (method, answers) in methods {
        let needed = if method.ends_with("/Check") {
            None
        } else if method.ends_with("/Ingest")
            || method.ends_with("/IngestStream")
            || method.ends_with("/Export")
        {
            Some("writer")
        } else {
            Some("viewer")
        };
        for (caller, _) in &callers {
            let got = answers[*caller].as_str().unwrap();
            let want = match (needed, *caller) {
                (None, _) => None,
                (Some(_), "none" | "bad") => Some("UNAUTHENTICATED"),
                (Some(role), c) if may(c, role) => None,
                (Some(_), _) => Some("PERMISSION_DENIED"),
            };
            match want {
                Some(w) => assert_eq!(got, w, "{method} as {caller}"),
                None => assert!(
                    got != "UNAUTHENTICATED" && got != "PERMISSION_DENIED",
                    "{method} as {caller}: {got}"
                ),
            }
        }
    }
}

#[test]
fn api_keys_are_made_listed_without_secrets_revoked_and_expire() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_ready(dir.path(), &[]);
    let soon = toplog_tests::utc(toplog_tests::now_ms() + 3_000).1;
    let (viewer_id, viewer) = make_key(&server, "dashboard", "viewer", None);
    let (_, brief) = make_key(&server, "brief", "viewer", Some(soon));
    let (_, writer) = make_key(&server, "shipper", "writer", None);
    let count = |key: &str| get_status(&server, Some(key), "/api/v1/requests/count");
    assert_eq!(
        (count(&viewer), count(&brief), count(&writer)),
        (200, 200, 403)
    );

    // Listed with id, prefix, name, role and when last used; never a secret.
    let listed = client()
        .get(server.url("/api/v1/keys"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    for key in [&viewer, &brief, &writer, &ADMIN_KEY.to_owned()] {
        assert!(!listed.contains(&key[18..]), "a secret is listed: {listed}");
    }
    let listed: Value = serde_json::from_str(&listed).unwrap();
    let row = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == json!(viewer_id))
        .unwrap()
        .clone();
    assert_eq!(
        (&row["name"], &row["role"]),
        (&json!("dashboard"), &json!("viewer"))
    );
    assert!(row["last_used_at"].is_string(), "{row}");
    assert_eq!(listed["data"].as_array().unwrap().len(), 4);
    // A viewer may not make keys.
    let r = as_caller(Some(&viewer))
        .post(server.url("/api/v1/keys"))
        .json(&json!({"name": "x", "role": "admin"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);

    // A key cannot revoke itself (no admin locks every admin out).
    let r = client()
        .delete(server.url(&format!("/api/v1/keys/{}", &ADMIN_KEY[4..16])))
        .send()
        .unwrap();
    assert_eq!(r.status(), 409);
    // Revoked: refused at once. Expired: refused as expired.
    let r = client()
        .delete(server.url(&format!("/api/v1/keys/{viewer_id}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(count(&viewer), 401);
    std::thread::sleep(std::time::Duration::from_millis(3_200));
    let r = as_caller(Some(&brief))
        .get(server.url("/api/v1/requests/count"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().unwrap()["error"]["code"], "expired_token");

    // Keys outlive a restart.
    server.terminate();
    let server = Server::start_ready(dir.path(), &[]);
    let r = as_caller(Some(&writer))
        .post(server.url("/api/v1/requests"))
        .json(&json!([{"timestamp": toplog_tests::now_ms(), "endpoint": "GET /k", "status_code": 200, "latency_ms": 1}]))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        get_status(&server, Some(viewer.as_str()), "/api/v1/requests/count"),
        401
    );

    // The audit log kept every change an admin made, across the restart:
    // who, what, from where, with what answer (the viewer's refused try is
    // not a change).
    let audit: Value = client()
        .get(server.url("/api/v1/audit"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let seen: Vec<(String, String, u64)> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert_eq!(
                (&e["key_id"], &e["from"]),
                (&json!("0000000a11ce"), &json!("127.0.0.1")),
                "{e}"
            );
            (
                e["method"].as_str().unwrap().to_owned(),
                e["path"].as_str().unwrap().to_owned(),
                e["status"].as_u64().unwrap(),
            )
        })
        .collect();
    let own = format!("/api/v1/keys/{}", &ADMIN_KEY[4..16]);
    let revoked = format!("/api/v1/keys/{viewer_id}");
    assert_eq!(
        seen,
        [
            ("POST".to_owned(), "/api/v1/keys".to_owned(), 201),
            ("POST".into(), "/api/v1/keys".into(), 201),
            ("POST".into(), "/api/v1/keys".into(), 201),
            ("DELETE".into(), own, 409),
            ("DELETE".into(), revoked, 200),
        ]
    );
}

#[test]
fn the_first_start_writes_a_private_admin_key_and_auth_off_needs_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // No key given: the node makes one and writes it where only its owner reads.
    let server = Server::start_with_env(&data, &[], &[("TOPLOG_ADMIN_KEY", "")]);
    server.wait_ready();
    let file = data.join("admin.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let key = std::fs::read_to_string(&file).unwrap().trim().to_owned();
    assert!(key.starts_with("tlk_") && key != ADMIN_KEY, "{key}");
    assert_eq!(get_status(&server, None, "/api/v1/keys"), 401);
    assert_eq!(get_status(&server, Some(key.as_str()), "/api/v1/keys"), 200);
    assert!(
        !std::fs::read_to_string(data.join("keys.json"))
            .unwrap()
            .contains(&key[18..])
    );
    // The CLI on the node's own data directory finds the key by itself.
    toplog_tests::succeeded(
        Command::new(binary())
            .args([
                "history",
                "--days",
                "1",
                "--server",
                &server.base,
                "--data-dir",
            ])
            .arg(&data)
            .env_remove("TOPLOG_API_KEY"),
    );
    // A restart keeps the key, and writes no other.
    server.terminate();
    let server = Server::start_with_env(&data, &[], &[("TOPLOG_ADMIN_KEY", "")]);
    server.wait_ready();
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), key);
    assert_eq!(get_status(&server, Some(key.as_str()), "/api/v1/keys"), 200);
    drop(server);

    // `auth = "off"`: only on loopback, and then nothing is asked.
    let out = Command::new(binary())
        .args([
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--auth",
            "off",
            "--data-dir",
        ])
        .arg(dir.path().join("open"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("loopback"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let open = Server::start_ready(&dir.path().join("open"), &["--auth", "off"]);
    assert_eq!(get_status(&open, None, "/api/v1/requests/count"), 200);
}

/// Sends `n` events as the key's holder; the status.
fn ingest(server: &Server, key: &str, n: usize) -> reqwest::blocking::Response {
    let now = toplog_tests::now_ms();
    let events: Vec<Value> = (0..n)
        .map(|i| json!({"timestamp": now - i as i64, "endpoint": "GET /rl", "status_code": 200, "latency_ms": 1}))
        .collect();
    as_caller(Some(key))
        .post(server.url("/api/v1/requests"))
        .json(&events)
        .send()
        .unwrap()
}

#[test]
fn rate_limits_refuse_with_retry_after_recover_and_slow_key_guessing() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("toplog.toml");
    std::fs::write(
        &config,
        "[rate_limits]\nviewer = \"5/s\"\nwriter = \"1000/m\"\nfailed_auth = \"3/m\"\n",
    )
    .unwrap();
    let server = Server::start_ready(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let (_, viewer) = make_key(&server, "dash", "viewer", None);
    let (_, writer) = make_key(&server, "shipper", "writer", None);

    // Calls: a bucket of 5, each call one token, the headers saying so.
    let count = || {
        as_caller(Some(&viewer))
            .get(server.url("/api/v1/requests/count"))
            .send()
            .unwrap()
    };
    for left in (0..5).rev() {
        let r = count();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["ratelimit-limit"], "5");
        assert_eq!(
            r.headers()["ratelimit-remaining"],
            left.to_string().as_str()
        );
    }
    let r = count();
    assert_eq!(r.status(), 429);
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&wait), "Retry-After {wait}");
    assert_eq!(r.headers()["ratelimit-remaining"], "0");
    assert_eq!(r.json::<Value>().unwrap()["error"]["code"], "rate_limited");
    std::thread::sleep(std::time::Duration::from_secs(wait));
    assert_eq!(count().status(), 200, "the bucket refills");

    // A key with a rate of its own: 2 at once, whatever its role's.
    let r = client()
        .post(server.url("/api/v1/keys"))
        .json(&json!({"name": "slow", "role": "viewer", "rate_limit": "2/s"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let body: Value = r.json().unwrap();
    assert_eq!(body["data"]["rate_limit"], "2/s");
    let slow = body["data"]["key"].as_str().unwrap().to_owned();
    let statuses: Vec<u16> = (0..3)
        .map(|_| get_status(&server, Some(slow.as_str()), "/api/v1/requests/count"))
        .collect();
    assert_eq!(statuses, [200, 200, 429]);
    let r = client()
        .post(server.url("/api/v1/keys"))
        .json(&json!({"name": "bad", "role": "viewer", "rate_limit": "fast"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);

    // Ingest counts events: 600 of 1000, then 600 more is over; a batch
    // larger than the bucket could ever pass is told so, without Retry-After.
    assert_eq!(ingest(&server, &writer, 600).status(), 200);
    let r = ingest(&server, &writer, 600);
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let r = ingest(&server, &writer, 1001);
    assert_eq!(r.status(), 429);
    assert!(!r.headers().contains_key("retry-after"));
    assert!(r.text().unwrap().contains("smaller batches"));
    // gRPC: over the rate is RESOURCE_EXHAUSTED.
    let (_, grpc_viewer) = make_key(&server, "grpc", "viewer", None);
    let script = r#"
import sys, grpc
channel = grpc.insecure_channel(sys.argv[1])
count = channel.unary_unary("/toplog.v1.Toplog/Count", request_serializer=lambda b: b, response_deserializer=lambda b: b)
for _ in range(6):
    try:
        count(b"", timeout=10, metadata=[("authorization", "Bearer " + sys.argv[2])])
        print("OK")
    except grpc.RpcError as e:
        print(e.code().name)
"#;
    let out = toplog_tests::succeeded(Command::new("python3").args([
        "-c",
        script,
        server.base.trim_start_matches("http://"),
        &grpc_viewer,
    ]));
    assert_eq!(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .collect::<Vec<_>>(),
        ["OK", "OK", "OK", "OK", "OK", "RESOURCE_EXHAUSTED"]
    );

    // Guessing keys from one address: 3 failures, then that address is
    // refused whatever it sends; another address is not.
    let from = |ip: [u8; 4], key: &str| {
        reqwest::blocking::Client::builder()
            .local_address(std::net::IpAddr::from(ip))
            .build()
            .unwrap()
            .get(server.url("/api/v1/requests/count"))
            .bearer_auth(key)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    let guess = "tlk_0123456789ab_0123456789abcdef0123456789abcdef01234567";
    let tries: Vec<u16> = (0..4).map(|_| from([127, 0, 0, 7], guess)).collect();
    assert_eq!(tries, [401, 401, 401, 429]);
    let (_, fresh) = make_key(&server, "fresh", "viewer", None);
    assert_eq!(
        from([127, 0, 0, 7], &fresh),
        429,
        "the guessing address is slowed down"
    );
    assert_eq!(from([127, 0, 0, 1], &fresh), 200, "other addresses are not");
}
