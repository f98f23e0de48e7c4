//! The built-in web page in a real headless browser: `tests/web/check_page.py`
//! drives the system Chromium (Selenium, chromium-driver; scripts/test.sh
//! installs them) against a node serving the page from its binary. It
//! checks sign-in, the top-K tables against the API's answers for the same
//! range, the charts, the range picker, filtering by a key, live refresh
//! (within 10 s), no horizontal scroll at 375 px, no console errors, and
//! sign-out; this test checks what the node sends with the page.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use toplog_tests::{ADMIN_KEY, Server, client, manifest_dir};

#[test]
fn the_page_is_served_from_the_binary_with_a_strict_policy() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_ready(&dir.path().join("data"), &[]);
    // Open to anyone: the page asks for a key before it shows anything.
    let page = reqwest::blocking::get(server.url("/")).unwrap();
    assert_eq!(page.status(), 200);
    let headers = page.headers().clone();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(headers["cache-control"], "no-cache");
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'self'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    let html = page.text().unwrap();
    let script = html
        .split("src=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_owned();
    assert!(
        script.starts_with("/ui/") && script.ends_with("/app.js"),
        "{script}"
    );
    let js = reqwest::blocking::get(server.url(&script)).unwrap();
    assert_eq!(js.status(), 200);
    assert!(
        js.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("immutable")
    );
    assert!(
        js.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    // An asset of another version, or another name, is not there.
    for path in ["/ui/000000000000/app.js", &script.replace("app.js", "x.js")] {
        assert_eq!(
            reqwest::blocking::get(server.url(path)).unwrap().status(),
            404,
            "{path}"
        );
    }
    // The API stays closed without a key.
    let r = reqwest::blocking::get(server.url("/api/v1/requests/count")).unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        client()
            .get(server.url("/api/v1/requests/count"))
            .send()
            .unwrap()
            .status(),
        200
    );
}

#[test]
fn the_page_shows_what_the_api_answers_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_ready(&dir.path().join("data"), &[]);
    let script = manifest_dir().join("web/check_page.py");
    let mut cmd = Command::new("python3");
    cmd.arg(&script)
        .args(["--base", &server.base, "--key", ADMIN_KEY]);
    if let Ok(shots) = std::env::var("TOPLOG_SCREENSHOTS") {
        cmd.args(["--screenshots", &shots]);
    }
    let out = cmd.output().expect("run python3");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the page check failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("ok"), "{text}");
}
