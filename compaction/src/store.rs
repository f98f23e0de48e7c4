//! The archive on an `object_store` store: a local folder by default, S3 or any
//! S3-compatible server by configuration. Calls block the calling thread on a
//! small runtime of the archive's own, so the engine (which is synchronous)
//! can use it from any thread, inside an async context or not.

use std::io;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, RetryConfig,
    WriteMultipart,
};
use serde::{Deserialize, Serialize};
use toplog_engine::ArchiveStore;

/// Where the archive lives. `url` is a folder path (or `file://` URL) or
/// `s3://bucket/prefix`; the other fields apply to S3 and fall back to the
/// usual `AWS_*` environment variables.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveConfig {
    pub url: Option<String>,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub allow_http: Option<bool>,
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("archive `{field}`: {reason}")]
    Config { field: &'static str, reason: String },
    #[error("archive: {0}")]
    Io(#[from] io::Error),
}

/// An [`ArchiveStore`] over an `object_store` store.
#[derive(Debug)]
pub struct ObjectArchive {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    /// Human-readable location, for status pages.
    location: String,
    /// A folder in the node's data directory (the default): no other node
    /// can share it.
    in_data_dir: bool,
    /// Always `Some` until dropped.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for ObjectArchive {
    /// Without blocking, so the archive may be dropped inside an async context.
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl ObjectArchive {
    /// Opens the archive `config` names; a relative folder is under `data_dir`,
    /// and no `url` means `<data_dir>/archive`.
    pub fn open(config: &ArchiveConfig, data_dir: &std::path::Path) -> Result<Self, ArchiveError> {
        let url = config.url.clone().unwrap_or_else(|| "archive".into());
        let bad = |field, reason: String| ArchiveError::Config { field, reason };
        let (store, prefix, location): (Arc<dyn ObjectStore>, Path, String) =
            if let Some(rest) = url.strip_prefix("s3://") {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(bad("url", format!("`{url}` names no bucket")));
                }
                let mut b = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(RetryConfig {
                        backoff: BackoffConfig::default(),
                        max_retries: 3,
                        retry_timeout: Duration::from_secs(20),
                    })
                    .with_client_options(
                        ClientOptions::new()
                            .with_connect_timeout(Duration::from_secs(5))
                            .with_timeout(Duration::from_secs(60))
                            .with_allow_http(config.allow_http.unwrap_or(false)),
                    );
                if let Some(v) = &config.endpoint {
                    b = b.with_endpoint(v);
                }
                if let Some(v) = &config.region {
                    b = b.with_region(v);
                }
                if let Some(v) = &config.access_key_id {
                    b = b.with_access_key_id(v);
                }
                if let Some(v) = &config.secret_access_key {
                    b = b.with_secret_access_key(v);
                }
                if let Some(v) = config.allow_http {
                    b = b.with_allow_http(v);
                }
                let store = b.build().map_err(|e| bad("url", e.to_string()))?;
                let prefix =
                    Path::parse(prefix.trim_matches('/')).map_err(|e| bad("url", e.to_string()))?;
                (Arc::new(store), prefix, url.clone())
            } else if url.contains("://") && !url.starts_with("file://") {
                return Err(bad(
                    "url",
                    format!("`{url}`: use a folder, file:// or s3://bucket/prefix"),
                ));
            } else {
                let dir = PathBuf::from(url.trim_start_matches("file://"));
                let dir = if dir.is_absolute() {
                    dir
                } else {
                    data_dir.join(dir)
                };
                std::fs::create_dir_all(&dir)
                    .map_err(|e| bad("url", format!("cannot create {}: {e}", dir.display())))?;
                let store = LocalFileSystem::new_with_prefix(&dir)
                    .map_err(|e| bad("url", e.to_string()))?;
                (Arc::new(store), Path::default(), dir.display().to_string())
            };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("toplog-archive")
            .enable_all()
            .build()?;
        let in_data_dir = !url.starts_with("s3://") && std::path::Path::new(&url).is_relative();
        Ok(Self {
            store,
            prefix,
            location,
            in_data_dir,
            runtime: Some(runtime),
        })
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    /// Whether the archive is a folder in the node's data directory (no
    /// `url`, or a relative one), which no other node can share.
    pub fn in_data_dir(&self) -> bool {
        self.in_data_dir
    }

    /// Writes `key` from the file at `path`, read and sent a part at a
    /// time, so a large file is never held whole (at most two parts in
    /// flight). Unlike [`ArchiveStore::create`] it replaces an object of
    /// that name: for objects named by their contents.
    pub fn upload_file(&self, key: &str, path: &std::path::Path) -> io::Result<()> {
        use std::io::Read;
        const PART: usize = 8 << 20;
        let mut file = std::fs::File::open(path)?;
        let (store, dest) = (self.store.clone(), self.path(key));
        let failed = |e: io::Error| object_store::Error::Generic {
            store: "file",
            source: Box::new(e),
        };
        self.block(async move {
            let upload = store.put_multipart(&dest).await?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, PART);
            let mut buf = vec![0u8; PART];
            loop {
                let n = match file.read(&mut buf) {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = writer.abort().await;
                        return Err(failed(e));
                    }
                };
                if n == 0 {
                    break;
                }
                writer.wait_for_capacity(2).await?;
                writer.write(&buf[..n]);
            }
            writer.finish().await.map(drop)
        })
    }

    fn path(&self, key: &str) -> Path {
        key.split('/')
            .filter(|p| !p.is_empty())
            .fold(self.prefix.clone(), |p, part| p.clone().join(part))
    }

    /// Runs `fut` on the archive's runtime and waits for it.
    fn block<T: Send + 'static>(
        &self,
        fut: impl Future<Output = object_store::Result<T>> + Send + 'static,
    ) -> io::Result<T> {
        let Some(runtime) = &self.runtime else {
            return Err(io::Error::other("the archive is closed"));
        };
        let handle = runtime.spawn(fut);
        match futures::executor::block_on(handle) {
            Ok(r) => r.map_err(to_io),
            Err(e) => Err(io::Error::other(format!("archive task failed: {e}"))),
        }
    }
}

fn to_io(e: object_store::Error) -> io::Error {
    let kind = match &e {
        object_store::Error::NotFound { .. } => io::ErrorKind::NotFound,
        object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. } => {
            io::ErrorKind::AlreadyExists
        }
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e.to_string())
}

impl ArchiveStore for ObjectArchive {
    fn create(&self, key: &str, bytes: Bytes) -> io::Result<()> {
        let (store, path) = (self.store.clone(), self.path(key));
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        self.block(async move { store.put_opts(&path, bytes.into(), opts).await.map(|_| ()) })
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> io::Result<Bytes> {
        let (store, path) = (self.store.clone(), self.path(key));
        self.block(async move { store.get_range(&path, range).await })
    }

    fn size(&self, key: &str) -> io::Result<u64> {
        let (store, path) = (self.store.clone(), self.path(key));
        self.block(async move { store.head(&path).await.map(|m| m.size) })
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        use futures::TryStreamExt;
        let (store, path) = (self.store.clone(), self.path(prefix));
        let root = self.prefix.clone();
        self.block(async move {
            let metas: Vec<_> = store.list(Some(&path)).try_collect().await?;
            Ok(metas
                .into_iter()
                .filter_map(|m| {
                    let rel: Vec<String> = m
                        .location
                        .prefix_match(&root)?
                        .map(|p| p.as_ref().to_owned())
                        .collect();
                    Some(rel.join("/"))
                })
                .collect())
        })
    }

    fn delete(&self, key: &str) -> io::Result<()> {
        let (store, path) = (self.store.clone(), self.path(key));
        match self.block(async move { store.delete(&path).await }) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_file_larger_than_a_part_is_uploaded_whole() {
        let dir = tempfile::tempdir().unwrap();
        let config = ArchiveConfig {
            url: Some("objects".into()),
            ..ArchiveConfig::default()
        };
        let store = ObjectArchive::open(&config, dir.path()).unwrap();
        // Three parts of 8 MiB and a piece: bytes that differ by position.
        let bytes: Vec<u8> = (0..(25 << 20) + 123u32).map(|i| (i % 251) as u8).collect();
        let file = dir.path().join("big");
        std::fs::write(&file, &bytes).unwrap();
        store.upload_file("a/big", &file).unwrap();
        assert_eq!(store.size("a/big").unwrap(), bytes.len() as u64);
        let back = store.get_range("a/big", 0..bytes.len() as u64).unwrap();
        assert!(back == bytes, "the object's bytes differ from the file's");
        // Replacing an object of that name is allowed (objects named by contents).
        store.upload_file("a/big", &file).unwrap();
        assert!(matches!(
            store.upload_file("a/missing", &dir.path().join("none")),
            Err(e) if e.kind() == io::ErrorKind::NotFound
        ));
    }
}
