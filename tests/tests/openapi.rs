//! The OpenAPI document of a real node: valid OpenAPI 3 (checked by
//! openapi-spec-validator, which scripts/test.sh installs), and every route it
//! lists is served.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use toplog_tests::{Server, client};

#[test]
fn openapi_document_validates_and_lists_only_served_routes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_ready(dir.path(), &[]);
    let doc: Value = client()
        .get(server.url("/api/v1/openapi.json"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(doc["openapi"], "3.0.3");
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 10, "{doc}");
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            let url = server.url(&path.replace("{id}", "no-such-job"));
            let resp = match method.as_str() {
                "get" => client().get(&url).send().unwrap(),
                "post" => client()
                    .post(&url)
                    .header("Content-Type", "application/json")
                    .body("{}")
                    .send()
                    .unwrap(),
                "put" => client()
                    .put(&url)
                    .header("Content-Type", "application/json")
                    .body("{}")
                    .send()
                    .unwrap(),
                "delete" => client().delete(&url).send().unwrap(),
                other => panic!("unexpected method {other}"),
            };
            let status = resp.status().as_u16();
            let body: Value = resp.json().unwrap_or(Value::Null);
            // 404 only where the route exists and the id does not.
            let missing_route = status == 404 && body["error"]["message"] == "no such route";
            assert!(
                !missing_route && status != 405,
                "{method} {path}: {status} {body}"
            );
        }
    }
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, serde_json::to_vec(&doc).unwrap()).unwrap();
    let out = std::process::Command::new("python3")
        .args(["-c", "import sys, json; from openapi_spec_validator import validate; validate(json.load(open(sys.argv[1]))); print('valid')"])
        .arg(&file)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "openapi-spec-validator rejected the document (is it installed? scripts/test.sh installs it):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
