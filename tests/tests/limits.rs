//! Connection limits against the real binary: a client that never finishes
//! its headers is cut off after `header_timeout`, and past
//! `max_connections` new connections wait unserved until one closes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use toplog_tests::Server;

fn healthz(server: &Server, timeout: Duration) -> Option<u16> {
    reqwest::blocking::Client::builder()
        .timeout(timeout)
        .build()
        .unwrap()
        .get(server.url("/healthz"))
        .send()
        .ok()
        .map(|r| r.status().as_u16())
}

/// Reads until the server closes the connection; how long that took.
fn until_closed(mut sock: TcpStream) -> Duration {
    let started = Instant::now();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match sock.read(&mut buf) {
            Ok(0) | Err(_) => return started.elapsed(),
            Ok(_) => {}
        }
    }
}

#[test]
fn slow_headers_are_cut_off_and_connections_beyond_the_limit_wait() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_ready(
        dir.path(),
        &["--header-timeout", "3s", "--max-connections", "2"],
    );
    let addr = server.base.trim_start_matches("http://").to_owned();
    // Two connections hold both turns: one sends half a request, one nothing.
    let mut half = TcpStream::connect(&addr).unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let silent = TcpStream::connect(&addr).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        healthz(&server, Duration::from_millis(1500)),
        None,
        "a third connection was served past max_connections = 2"
    );
    // Both are cut off once their headers are late; the server then serves again.
    let (a, b) = (until_closed(half), until_closed(silent));
    assert!(
        a < Duration::from_secs(25) && b < Duration::from_secs(25),
        "slow clients held their connections: {a:?}, {b:?}"
    );
    assert_eq!(healthz(&server, Duration::from_secs(10)), Some(200));
}
