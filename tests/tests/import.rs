//! `toplog import` against a real nginx driven by wrk: the node's count per
//! endpoint and status equals the log's, while `--follow` tails the log
//! across rotation by rename (nginx reopening its log), a kill -9 and
//! restart of the importer, and copy-and-truncate rotation; a re-run over
//! every file, compressed or not, stores nothing twice; bad lines are
//! reported by file and line, and refused or skipped as asked; the
//! operator's route rules apply; Parquet from DuckDB is imported once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use toplog_tests::{Server, binary, client};

/// nginx on a free loopback port, logging with `$request_time`, until dropped.
struct Nginx {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Nginx {
    fn start(dir: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let d = dir.display();
        let conf = format!(
            r#"
daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 64; }}
http {{
    log_format timed_combined '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent" $request_time';
    access_log {d}/access.log timed_combined;
    client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp;
    uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;
    server {{
        listen 127.0.0.1:{port};
        location = /health {{ return 200 "ok"; }}
        location ~ ^/items/[0-9]+$ {{ return 200 "item"; }}
        location = /orders {{ return 201; }}
        location /orders/ {{ return 200 "lines"; }}
        location = /boom {{ return 500; }}
        location /u/ {{ return 200 "avatar"; }}
        location / {{ return 404; }}
    }}
}}
"#
        );
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let child = Command::new("nginx")
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-p")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx (apt-get install nginx)");
        let nginx = Self {
            child,
            port,
            dir: dir.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not start: {}",
                nginx.errors()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        nginx
    }

    fn errors(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    fn log(&self) -> PathBuf {
        self.dir.join("access.log")
    }

    /// `nginx -s reopen`: the log is opened again by its name.
    fn reopen(&self) {
        // SAFETY: a signal to a child this test started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGUSR1) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.log().exists() {
            assert!(Instant::now() < deadline, "nginx did not reopen its log");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// wrk for `seconds`, two connections, over the routes of traffic.lua.
    fn traffic(&self, seconds: u32) {
        let out = Command::new("wrk")
            .args(["-t1", "-c2", &format!("-d{seconds}s"), "-s"])
            .arg(toplog_tests::manifest_dir().join("nginx/traffic.lua"))
            .arg(format!("http://127.0.0.1:{}", self.port))
            .output()
            .expect("wrk (apt-get install wrk)");
        assert!(
            out.status.success(),
            "wrk: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Nginx {
    /// SIGTERM: the master stops its worker too (a SIGKILL would leave it).
    fn drop(&mut self) {
        // SAFETY: a signal to a child this test started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// The endpoint toplog should make of a request line's method and target.
fn endpoint(method: &str, target: &str) -> String {
    let path = target.split('?').next().unwrap();
    let template = match path {
        "/items/1" | "/items/22" | "/items/333" => "/items/{id}",
        "/orders/9/lines" => "/orders/{id}/lines",
        p if p.starts_with("/u/") => "/u/{id}/avatar",
        p => p,
    };
    format!("{method} {template}")
}

/// Requests per (endpoint, status) in nginx's logs, read independently of toplog.
fn counted(logs: &[PathBuf]) -> BTreeMap<(String, u16), u64> {
    let mut out = BTreeMap::new();
    for log in logs {
        for line in std::fs::read_to_string(log).unwrap().lines() {
            // ... "GET /items/1 HTTP/1.1" 200 4 "-" "-" 0.000
            let (_, rest) = line.split_once('"').unwrap();
            let (request, rest) = rest.split_once('"').unwrap();
            let mut req = request.split(' ');
            let (method, target) = (req.next().unwrap(), req.next().unwrap());
            let status: u16 = rest.split_whitespace().next().unwrap().parse().unwrap();
            *out.entry((endpoint(method, target), status)).or_default() += 1;
        }
    }
    out
}

fn lines_in(logs: &[PathBuf]) -> u64 {
    logs.iter()
        .map(|l| std::fs::read_to_string(l).unwrap().lines().count() as u64)
        .sum()
}

fn stored(server: &Server, query: &str) -> u64 {
    let body: serde_json::Value = client()
        .get(server.url(&format!("/api/v1/requests/count{query}")))
        .send()
        .unwrap()
        .json()
        .unwrap();
    body["count"].as_u64().unwrap_or_else(|| panic!("{body}"))
}

/// Waits until the node holds as many events as `logs` have lines (the
/// importer caught up). nginx writes a request's line after answering it,
/// so the logs may still grow a little after wrk ends: the count is taken
/// again at each look, and the node may be ahead of it only briefly.
fn wait_for(server: &Server, logs: &[PathBuf], importer: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut ahead_since = None;
    let mut last = None;
    loop {
        let n = lines_in(logs);
        let have = stored(server, "");
        if have == n && last == Some(n) {
            return;
        }
        last = Some(n);
        if have > n {
            let since = *ahead_since.get_or_insert_with(Instant::now);
            assert!(
                since.elapsed() < Duration::from_secs(2),
                "the node holds {have} events, more than the {n} logged"
            );
        } else {
            ahead_since = None;
        }
        assert!(
            importer.try_wait().unwrap().is_none(),
            "the importer stopped"
        );
        assert!(
            Instant::now() < deadline,
            "the node holds {have} of {n} events"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn import(server: &Server, state: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(binary());
    cmd.env("TOPLOG_API_KEY", toplog_tests::ADMIN_KEY);
    cmd.arg("import")
        .args(["--server", &server.base, "--state"])
        .arg(state)
        .args(args)
        .env_remove("TOPLOG_CONFIG");
    cmd
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn followed_nginx_logs_are_stored_once_across_rotation_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_ready(&dir.path().join("data"), &[]);
    let nginx = Nginx::start(&dir.path().join("nginx"));
    let log = nginx.log();
    let state = dir.path().join("import-state.json");
    let follow = || {
        import(&server, &state, &["--follow"])
            .arg(&log)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut importer = follow();

    nginx.traffic(1);
    wait_for(&server, std::slice::from_ref(&log), &mut importer);

    // Rotation by rename: nginx writes on into the renamed file until it
    // reopens its log; the importer reads that file to its end, then the new one.
    let rotated = log.with_extension("log.1");
    std::fs::rename(&log, &rotated).unwrap();
    nginx.traffic(1);
    nginx.reopen();
    nginx.traffic(1);
    wait_for(&server, &[rotated.clone(), log.clone()], &mut importer);

    // kill -9 of the importer while requests come in; the next one resumes
    // from its offset file, and sends again what was in flight under its key.
    std::thread::scope(|s| {
        s.spawn(|| nginx.traffic(2));
        std::thread::sleep(Duration::from_millis(800));
        importer.kill().unwrap();
        importer.wait().unwrap();
    });
    importer = follow();
    wait_for(&server, &[rotated.clone(), log.clone()], &mut importer);

    // Rotation by copy and truncate: the file shrinks under the importer,
    // which reads it again from its start as the new file it is.
    let copied = log.with_extension("log.2");
    std::fs::copy(&log, &copied).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(0)
        .unwrap();
    nginx.traffic(1);
    let logs = [rotated.clone(), copied.clone(), log.clone()];
    wait_for(&server, &logs, &mut importer);

    // SIGTERM ends a follow cleanly.
    // SAFETY: a signal to a child this test started.
    unsafe { libc::kill(importer.id() as i32, libc::SIGTERM) };
    let out = importer.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));

    // Every (endpoint, status) as the log has it, and nothing else.
    let want = counted(&logs);
    assert_eq!(want.len(), 7, "wrk reached every route: {want:?}");
    for ((endpoint, status), n) in &want {
        let q = format!(
            "?endpoint={}&status_code={status}",
            endpoint
                .replace(' ', "%20")
                .replace('{', "%7B")
                .replace('}', "%7D")
        );
        assert_eq!(stored(&server, &q), *n, "{endpoint} {status}");
    }
    let total = lines_in(&logs);
    assert_eq!(stored(&server, ""), total);
    assert_eq!(
        stored(&server, "?user_id=alice") + stored(&server, "?user_id=bob"),
        total,
        "$remote_user is the user"
    );

    // A re-run over every file, one of them compressed as logrotate would,
    // sends nothing: the offset file knows them by their first line.
    let gz = dir.path().join("access.log.2.gz");
    let mut enc = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz).unwrap(),
        flate2::Compression::fast(),
    );
    std::io::copy(&mut std::fs::File::open(&copied).unwrap(), &mut enc).unwrap();
    enc.finish().unwrap();
    let out = run(import(&server, &state, &[]).args([&rotated, &gz, &log]));
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("imported 0 events"), "{}", text(&out));
    assert_eq!(stored(&server, ""), total);
}

#[test]
fn bad_lines_are_named_and_refused_or_skipped_and_formats_without_latency_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_ready(&dir.path().join("data"), &[]);
    let state = dir.path().join("state.json");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // nginx's $time_local, from the test's own clock, in UTC.
    let stamp = {
        let out = Command::new("date")
            .args(["-u", "-d", &format!("@{now}"), "+%d/%b/%Y:%H:%M:%S +0000"])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let line = |path: &str, status: u16| {
        format!(
            r#"127.0.0.1 - carol [{stamp}] "GET {path} HTTP/1.1" {status} 5 "-" "curl/8" 0.012"#
        )
    };
    let log = dir.path().join("access.log");
    let lines = [
        line("/a/1", 200),
        line("/a/2", 404),
        "\\x16\\x03\\x01 garbage from a TLS probe".to_owned(),
        line("/b", 200),
    ];
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();

    // fail (the default): the file is refused whole, naming file and line.
    let out = run(import(&server, &state, &[]).arg(&log));
    assert!(!out.status.success());
    let said = text(&out);
    assert!(said.contains(&format!("{}:3:", log.display())), "{said}");
    assert!(said.contains("nothing from"), "{said}");
    assert_eq!(stored(&server, ""), 0);

    // skip: the other lines are stored, the bad one is named.
    let out = run(import(&server, &state, &["--on-error", "skip"]).arg(&log));
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains(&format!("{}:3: skipped", log.display())),
        "{said}"
    );
    assert!(said.contains("1 bad lines skipped"), "{said}");
    assert_eq!(stored(&server, ""), 3);
    assert_eq!(
        stored(&server, "?endpoint=GET%20/a/%7Bid%7D&status_code=404"),
        1
    );
    assert_eq!(stored(&server, "?user_id=carol"), 3);

    // A line the node refuses (older than its raw retention) is named too.
    let old = dir.path().join("old.log");
    std::fs::write(
        &old,
        format!(
            "{}\n{}\n",
            line("/c", 200),
            line("/c", 200).replace(&stamp[7..11], "2001")
        ),
    )
    .unwrap();
    let out = run(import(&server, &state, &["--on-error", "skip"]).arg(&old));
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "{}:2: skipped: the node refused it",
            old.display()
        )),
        "{}",
        text(&out)
    );
    assert_eq!(stored(&server, ""), 4);

    // nginx's stock combined format has no latency: refused, naming the line to add.
    let out = run(import(&server, &state, &["--format", "nginx-combined"]).arg(&log));
    assert!(!out.status.success());
    assert!(
        text(&out).contains("log_format timed_combined"),
        "{}",
        text(&out)
    );
    // And combined lines given as nginx-timed say what is missing.
    let combined = dir.path().join("combined.log");
    std::fs::write(&combined, line("/d", 200).replace(" 0.012", "") + "\n").unwrap();
    let out = run(import(&server, &state, &[]).arg(&combined));
    assert!(!out.status.success());
    assert!(
        text(&out).contains(&format!("{}:1: field `request_time`", combined.display())),
        "{}",
        text(&out)
    );
    assert_eq!(stored(&server, ""), 4);

    // Without the offset file, the same file sent twice (zstd the second
    // time) is stored once: its batches' keys come from the file itself.
    let many = dir.path().join("many.log");
    let text_of_many: String = (0..12_000)
        .map(|i| line(&format!("/m/{i}"), 200) + "\n")
        .collect();
    std::fs::write(&many, text_of_many).unwrap();
    let out = run(import(&server, &dir.path().join("a.json"), &[]).arg(&many));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(stored(&server, ""), 12_004);
    let zst = dir.path().join("many.log.zst");
    std::fs::write(
        &zst,
        zstd::encode_all(std::fs::File::open(&many).unwrap(), 1).unwrap(),
    )
    .unwrap();
    let out = run(import(&server, &dir.path().join("b.json"), &[]).arg(&zst));
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("12000 were already stored"),
        "{}",
        text(&out)
    );
    assert_eq!(stored(&server, ""), 12_004);

    // The operator's route rules, from the `[import]` table of the config
    // file, come before the built-in templates.
    let config = dir.path().join("toplog.toml");
    std::fs::write(
        &config,
        "[import]\nroute_rules = [{ pattern = \"^/users/[^/]+/avatar$\", template = \"/users/{name}/avatar\" }]\n",
    )
    .unwrap();
    let users = dir.path().join("users.log");
    let text_of_users = [
        line("/users/alice/avatar", 200),
        line("/users/bob/avatar?s=64", 200),
        line("/users/42", 200),
    ]
    .join("\n")
        + "\n";
    std::fs::write(&users, text_of_users).unwrap();
    let out = run(import(&server, &state, &["--config"])
        .arg(&config)
        .arg(&users));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        stored(&server, "?endpoint=GET%20/users/%7Bname%7D/avatar"),
        2
    );
    assert_eq!(stored(&server, "?endpoint=GET%20/users/%7Bid%7D"), 1);
}

/// Parquet written by another tool (DuckDB, with its own column types) is
/// imported row by row; a row with a null endpoint is named by its row,
/// refused with the file or skipped; a second import of the same file,
/// without the offset file, stores nothing again.
#[test]
fn parquet_from_duckdb_is_imported_once_and_bad_rows_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_ready(&dir.path().join("data"), &[]);
    let file = dir.path().join("events.parquet");
    let script = format!(
        r#"
import duckdb
duckdb.sql("""COPY (SELECT 'd' || i AS request_id, now() - INTERVAL (i) SECOND AS timestamp,
    'u' || (i % 5) AS user_id, CASE WHEN i = 7 THEN NULL ELSE 'GET /p/' || (i % 3) END AS endpoint,
    (200 + (i % 2) * 300)::INTEGER AS status_code, (i % 50)::DOUBLE / 4 AS latency_ms
    FROM range(3000) t(i)) TO '{}' (FORMAT parquet, ROW_GROUP_SIZE 1000)""")
"#,
        file.display()
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(out.status.success(), "duckdb: {}", text(&out));
    let parquet = |state: &str, on_error: &str| {
        run(import(
            &server,
            &dir.path().join(state),
            &[
                "--format",
                "parquet",
                "--on-error",
                on_error,
                "--batch-lines",
                "1000",
            ],
        )
        .arg(&file))
    };

    let out = parquet("a.json", "fail");
    assert!(!out.status.success());
    assert!(
        text(&out).contains(&format!(
            "{}: row 8: field `endpoint`: is null",
            file.display()
        )),
        "{}",
        text(&out)
    );
    assert_eq!(stored(&server, ""), 0);

    let out = parquet("a.json", "skip");
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("row 8: skipped"), "{}", text(&out));
    assert_eq!(stored(&server, ""), 2999);
    assert_eq!(stored(&server, "?endpoint=GET%20/p/0"), 1000);
    assert_eq!(stored(&server, "?status_code=500"), 1499);
    assert_eq!(stored(&server, "?user_id=u3"), 600);

    let out = parquet("b.json", "skip");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("2999 were already stored"),
        "{}",
        text(&out)
    );
    assert_eq!(stored(&server, ""), 2999);
}
