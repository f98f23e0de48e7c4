//! TLS on the node's port, checked with Python's ssl module and grpcio:
//! certificates from `toplog cert`, REST and gRPC over TLS, plain HTTP to
//! the TLS port told so and let go, the certificate reloaded when its
//! files change and on SIGHUP, and client certificates required.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use toplog_tests::{Server, binary, manifest_dir, now_ms};

fn make_certs(dir: &Path) {
    toplog_tests::succeeded(
        Command::new(binary())
            .args(["cert", "--out"])
            .arg(dir)
            .args(["--host", "127.0.0.1"]),
    );
    for name in ["ca.pem", "node.pem", "node.key", "client.pem", "client.key"] {
        assert!(dir.join(name).exists(), "{name}");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("node.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "keys are private");
}

/// One request by Python's ssl module: `<status> <body>` or `error <what>`.
fn ask(url: &str, args: &[&Path]) -> String {
    ask_with(url, &[], args)
}

fn ask_with(url: &str, flags: &[&str], files: &[&Path]) -> String {
    let mut cmd = Command::new("python3");
    cmd.env("TOPLOG_API_KEY", toplog_tests::ADMIN_KEY);
    cmd.arg(manifest_dir().join("tls/ask.py"))
        .arg(url)
        .args(flags);
    // Files go as `--ca F`, `--cert F`, `--key F`, in that order.
    for (flag, file) in ["--ca", "--cert", "--key"].iter().zip(files) {
        cmd.arg(flag).arg(file);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "ask.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn https(server: &Server, path: &str) -> String {
    format!("{}{path}", server.base.replace("http://", "https://"))
}

/// Waits until `check` holds, for up to 20 s.
fn eventually(what: &str, mut check: impl FnMut() -> Option<String>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match check() {
            None => return,
            Some(last) => assert!(Instant::now() < deadline, "{what}: {last}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn install(from: &Path, to: &Path) {
    for name in ["node.pem", "node.key"] {
        std::fs::copy(from.join(name), to.join(name)).unwrap();
    }
}

#[test]
fn rest_and_grpc_over_tls_with_reload_and_plain_http_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, live) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("live"),
    );
    make_certs(&a);
    make_certs(&b);
    std::fs::create_dir_all(&live).unwrap();
    install(&a, &live);
    let (cert_file, key_file) = (live.join("node.pem"), live.join("node.key"));
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--tls-cert-file",
            cert_file.to_str().unwrap(),
            "--tls-key-file",
            key_file.to_str().unwrap(),
        ],
    );
    let ca_a = a.join("ca.pem");
    let ca_b = b.join("ca.pem");
    eventually("ready over TLS", || {
        let said = ask(&https(&server, "/readyz"), &[&ca_a]);
        (!said.starts_with("200")).then_some(said)
    });

    // REST over TLS, through the checks and the log as in plain HTTP.
    let event = format!(
        r#"[{{"timestamp":{},"endpoint":"GET /tls","status_code":200,"latency_ms":1}}]"#,
        now_ms() - 1000
    );
    let said = ask_with(
        &https(&server, "/api/v1/requests"),
        &["--post", &event],
        &[&ca_a],
    );
    assert!(said.starts_with("200"), "{said}");
    let said = ask(
        &https(&server, "/api/v1/requests/count?endpoint=GET%20/tls"),
        &[&ca_a],
    );
    assert!(said.starts_with(r#"200 {"count":1"#), "{said}");
    // gRPC over a TLS channel (ALPN h2): the health service answers SERVING.
    let target = server.base.trim_start_matches("http://");
    assert_eq!(ask_with(target, &["--grpc-health"], &[&ca_a]), "grpc 0801");

    // The CLI over TLS, trusting the node's CA with --ca-file.
    let out = toplog_tests::succeeded(
        Command::new(binary())
            .args([
                "history",
                "--days",
                "1",
                "--json",
                "--server",
                &https(&server, ""),
            ])
            .arg("--ca-file")
            .arg(&ca_a)
            .env("TOPLOG_API_KEY", toplog_tests::ADMIN_KEY),
    );
    let history: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(history["data"][0]["total_requests"], 1, "{history}");

    // A client that does not trust the node's CA is refused by its own check;
    // plain HTTP to the TLS port is told to use TLS, and the node goes on.
    let said = ask(&https(&server, "/healthz"), &[&ca_b]);
    assert!(said.contains("CERTIFICATE_VERIFY_FAILED"), "{said}");
    let said = ask(&server.url("/healthz"), &[]);
    assert!(said.starts_with("400 this port speaks TLS"), "{said}");
    assert!(ask(&https(&server, "/healthz"), &[&ca_a]).starts_with("200"));

    // New files in place: the node serves them within seconds, no restart.
    install(&b, &live);
    eventually("the changed certificate is served", || {
        let said = ask(&https(&server, "/healthz"), &[&ca_b]);
        (!said.starts_with("200")).then_some(said)
    });
    let said = ask(&https(&server, "/healthz"), &[&ca_a]);
    assert!(said.contains("CERTIFICATE_VERIFY_FAILED"), "{said}");

    // SIGHUP reloads too: the old files back, with the modification times
    // of the ones they replace, so only the signal can tell.
    let stamp = |p: &PathBuf| std::fs::metadata(p).unwrap().modified().unwrap();
    let (cert_time, key_time) = (stamp(&cert_file), stamp(&key_file));
    install(&a, &live);
    for (file, time) in [(&cert_file, cert_time), (&key_file, key_time)] {
        std::fs::File::options()
            .write(true)
            .open(file)
            .unwrap()
            .set_modified(time)
            .unwrap();
    }
    std::thread::sleep(Duration::from_secs(3));
    let said = ask(&https(&server, "/healthz"), &[&ca_b]);
    assert!(
        said.starts_with("200"),
        "no reload without a change or a signal: {said}"
    );
    // SAFETY: a signal to the node this test started.
    unsafe { libc::kill(server.pid() as i32, libc::SIGHUP) };
    eventually("SIGHUP reloads the certificate", || {
        let said = ask(&https(&server, "/healthz"), &[&ca_a]);
        (!said.starts_with("200")).then_some(said)
    });
}

#[test]
fn client_certificates_are_required_when_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    make_certs(&certs);
    let file = |name: &str| certs.join(name).to_str().unwrap().to_owned();
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--tls-cert-file",
            &file("node.pem"),
            "--tls-key-file",
            &file("node.key"),
            "--tls-client-ca-file",
            &file("ca.pem"),
            "--tls-require-client-cert",
            "true",
        ],
    );
    let (ca, cert, key) = (
        certs.join("ca.pem"),
        certs.join("client.pem"),
        certs.join("client.key"),
    );
    eventually("ready over mutual TLS", || {
        let said = ask(&https(&server, "/readyz"), &[&ca, &cert, &key]);
        (!said.starts_with("200")).then_some(said)
    });
    let said = ask(&https(&server, "/healthz"), &[&ca]);
    assert!(
        said.starts_with("error"),
        "a client without a certificate: {said}"
    );
    // A certificate from another CA is refused as well.
    let other = dir.path().join("other");
    make_certs(&other);
    let said = ask(
        &https(&server, "/healthz"),
        &[&ca, &other.join("client.pem"), &other.join("client.key")],
    );
    assert!(
        said.starts_with("error"),
        "a client certificate from another CA: {said}"
    );
    assert!(ask(&https(&server, "/healthz"), &[&ca, &cert, &key]).starts_with("200"));
}

#[test]
fn a_client_certificate_the_config_names_carries_its_role() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    make_certs(&certs);
    let config = dir.path().join("toplog.toml");
    std::fs::write(
        &config,
        format!(
            "[tls]\ncert_file = {:?}\nkey_file = {:?}\nclient_ca_file = {:?}\n\
             [tls.client_roles]\n\"toplog client\" = \"viewer\"\n",
            certs.join("node.pem"),
            certs.join("node.key"),
            certs.join("ca.pem"),
        ),
    )
    .unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let ca = certs.join("ca.pem");
    let (client_pem, client_key) = (certs.join("client.pem"), certs.join("client.key"));
    let client: [&Path; 3] = [&ca, &client_pem, &client_key];
    let count = https(&server, "/api/v1/requests/count?start=0");
    eventually("ready over TLS", || {
        let said = ask(&https(&server, "/readyz"), &[&ca]);
        (!said.starts_with("200")).then_some(said)
    });
    // No key: the certificate's role decides.
    let said = ask_with(&count, &["--no-key"], &client);
    assert!(
        said.starts_with("200 "),
        "a viewer's certificate reads: {said}"
    );
    let said = ask_with(
        &https(&server, "/api/v1/requests"),
        &["--no-key", "--post", "[]"],
        &client,
    );
    assert!(
        said.starts_with("403 ") && said.contains("insufficient_role"),
        "a viewer's certificate may not write: {said}"
    );
    // Without a certificate, or with one the map does not name: who are you?
    let said = ask_with(&count, &["--no-key"], &[&ca]);
    assert!(said.starts_with("401 "), "no certificate, no key: {said}");
    let (node_pem, node_key) = (certs.join("node.pem"), certs.join("node.key"));
    let node: [&Path; 3] = [&ca, &node_pem, &node_key];
    let said = ask_with(&count, &["--no-key"], &node);
    assert!(
        said.starts_with("401 "),
        "a certificate not in the map: {said}"
    );
    // A key still works beside a certificate, with the key's role.
    let said = ask_with(
        &https(&server, "/api/v1/requests"),
        &["--post", "[]"],
        &client,
    );
    assert!(
        !said.starts_with("401") && !said.starts_with("403"),
        "{said}"
    );
}
