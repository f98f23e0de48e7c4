//! Bearer JWTs from an identity provider: a stand-in provider (Python,
//! `cryptography` and PyJWT) serves its JWKS over HTTP and mints tokens;
//! the node accepts valid ones with the mapped role and refuses every
//! forgery, stale or foreign token with `401`, and picks up a rotated key.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};
use toplog_tests::{Server, manifest_dir};

struct Provider {
    child: Child,
    base: String,
}

impl Provider {
    fn start() -> Self {
        let mut child = Command::new("python3")
            .arg(manifest_dir().join("jwt/provider.py"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut port = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut port)
            .unwrap();
        assert!(
            !port.trim().is_empty(),
            "the provider did not start (pip install pyjwt[crypto])"
        );
        Self {
            child,
            base: format!("http://127.0.0.1:{}", port.trim()),
        }
    }

    fn get(&self, path: &str) -> String {
        reqwest::blocking::get(format!("{}{path}", self.base))
            .unwrap()
            .text()
            .unwrap()
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Status and error code of `method path` with `token`.
fn call(server: &Server, method: &str, path: &str, token: &str) -> (u16, String) {
    let c = reqwest::blocking::Client::new();
    let request = match method {
        "GET" => c.get(server.url(path)),
        _ => c.post(server.url(path)).json(&json!([{
            "timestamp": toplog_tests::now_ms(), "endpoint": "GET /jwt", "status_code": 200, "latency_ms": 1
        }])),
    };
    let r = request.bearer_auth(token).send().unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().unwrap_or(Value::Null);
    (
        status,
        body["error"]["code"].as_str().unwrap_or("").to_owned(),
    )
}

#[test]
fn tokens_from_the_provider_are_checked_and_a_rotated_key_is_picked_up() {
    let provider = Provider::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("toplog.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[jwt]
issuer = "https://idp.test"
audience = "toplog"
algorithms = ["RS256"]
jwks_url = "{}/jwks.json"
roles_claim = "realm_access.roles"
role_map = {{ "toplog-viewer" = "viewer", "toplog-writer" = "writer" }}
jwks_refetch_interval = "1s"

[rate_limits]
failed_auth = "100000/s"
"#,
            provider.base
        ),
    )
    .unwrap();
    let server = Server::start_ready(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let token = |case: &str| provider.get(&format!("/token/{case}"));

    // Valid tokens, with the roles the claim maps to.
    let viewer = token("viewer");
    assert_eq!(
        call(&server, "GET", "/api/v1/requests/count", &viewer),
        (200, String::new())
    );
    assert_eq!(call(&server, "POST", "/api/v1/requests", &viewer).0, 403);
    let writer = token("writer");
    assert_eq!(call(&server, "POST", "/api/v1/requests", &writer).0, 200);
    assert_eq!(
        call(&server, "GET", "/api/v1/requests/count", &writer).0,
        403
    );
    assert_eq!(
        call(&server, "GET", "/api/v1/requests/count", &token("no_role")),
        (403, "insufficient_role".into())
    );

    // Forged, stale or foreign: 401, saying no more than that.
    for case in [
        "alg_none",
        "key_confusion",
        "not_yet",
        "no_exp",
        "wrong_iss",
        "wrong_aud",
        "unknown_kid",
        "tampered",
        "too_big",
    ] {
        assert_eq!(
            call(&server, "GET", "/api/v1/requests/count", &token(case)),
            (401, "invalid_token".into()),
            "{case}"
        );
    }
    assert_eq!(
        call(&server, "GET", "/api/v1/requests/count", &token("expired")),
        (401, "expired_token".into())
    );
    assert!(token("too_big").len() > 8192);

    // The provider rotates its key: tokens signed with the new one are taken
    // once the node fetches the set again (unknown kid, a second apart).
    let rotated = token("rotated");
    provider.get("/rotate");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(
        call(&server, "GET", "/api/v1/requests/count", &rotated).0,
        200
    );
    // API keys still work beside JWTs.
    assert_eq!(
        call(
            &server,
            "GET",
            "/api/v1/requests/count",
            toplog_tests::ADMIN_KEY
        )
        .0,
        200
    );
}
