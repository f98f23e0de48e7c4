//! `moto_server`, a real S3-compatible server (scripts/test.sh installs it),
//! for the tests that tier to an archive.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{client, free_port};

/// `moto_server` on a free port, killed on drop.
pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Moto {
    pub fn start() -> Self {
        let port = free_port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "moto_server not found: scripts/test.sh installs it (pip install 'moto[server]')",
            );
        let moto = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while client().get(moto.url("/")).send().is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The config's `[archive]` table for `s3://<bucket>/toplog` on the
    /// server at `port` (moto's own, or a proxy's in front of it).
    pub fn archive_toml(bucket: &str, port: u16) -> String {
        format!(
            "[archive]\nurl = \"s3://{bucket}/toplog\"\nendpoint = \"http://127.0.0.1:{port}\"\n\
             region = \"us-east-1\"\naccess_key_id = \"test\"\nsecret_access_key = \"test\"\nallow_http = true\n"
        )
    }

    /// A config file in `dir` for a node that tiers within a test: minute
    /// partitions flushed within 300 ms, raw rows archived once a minute
    /// old (at the passes the test asks for) into `bucket` on moto.
    pub fn tiering_config(&self, dir: &std::path::Path, bucket: &str) -> std::path::PathBuf {
        let config = dir.join("toplog.toml");
        std::fs::write(
            &config,
            format!(
                "partition = \"1m\"\nmemtable_max_age = \"300ms\"\nmaintenance_interval = \"0s\"\n\
                 [retention.raw]\nlocal_for = \"60s\"\nkeep_for = \"1h\"\n{}",
                Self::archive_toml(bucket, self.port)
            ),
        )
        .expect("config file");
        config
    }

    /// Makes bucket `bucket`.
    pub fn create_bucket(&self, bucket: &str) {
        let r = client()
            .put(self.url(&format!("/{bucket}")))
            .send()
            .unwrap();
        assert_eq!(
            r.status(),
            200,
            "create bucket: {}",
            r.text().unwrap_or_default()
        );
    }

    /// Object keys in `bucket` (moto does not check signatures).
    pub fn keys(&self, bucket: &str) -> BTreeSet<String> {
        let body = client()
            .get(self.url(&format!("/{bucket}?list-type=2&max-keys=1000")))
            .send()
            .unwrap()
            .text()
            .unwrap();
        body.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next())
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
