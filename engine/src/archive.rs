//! The archive tier as the engine sees it: named, create-only blobs in an
//! object store. The engine writes a segment there as Parquet (see
//! docs/operations.md, "Archive layout"), verifies the copy, and reads it back
//! for queries, fetching only the row groups whose time statistics overlap the
//! range asked for. Which store, and its credentials, is the caller's business.

use std::io;
use std::ops::Range;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, TimestampMicrosecondType, UInt16Type};
use bytes::{Buf, Bytes};
use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
use parquet::encryption::decrypt::{FileDecryptionProperties, KeyRetriever};
use parquet::errors::ParquetError;
use parquet::file::reader::{ChunkReader, Length};
use parquet::file::statistics::Statistics;
use toplog_crypt::Cipher;
use toplog_types::Micros;

use crate::columns::{Columns, Row};
use crate::parquet::{ParquetEventWriter, event_schema};
use crate::scan::TimeRange;
use crate::{EngineError, Result};

/// An object store holding archived segments.
pub trait ArchiveStore: Send + Sync + std::fmt::Debug {
    /// Creates `key` holding `bytes`; fails with [`io::ErrorKind::AlreadyExists`]
    /// if `key` exists. Never overwrites.
    fn create(&self, key: &str, bytes: Bytes) -> io::Result<()>;
    /// The bytes of `key` in `range`.
    fn get_range(&self, key: &str, range: Range<u64>) -> io::Result<Bytes>;
    /// The size of `key`; [`io::ErrorKind::NotFound`] if it does not exist.
    fn size(&self, key: &str) -> io::Result<u64>;
    /// Removes `key`; removing a missing key is not an error.
    fn delete(&self, key: &str) -> io::Result<()>;
    /// Every key starting with `prefix`.
    fn list(&self, prefix: &str) -> io::Result<Vec<String>>;
}

/// Another store's objects under `prefix` (a sharded cluster's shard
/// `n` archives under `shard=<n>/`: one Hive-partitioned table, and no
/// shard's sweep sees another's objects).
#[derive(Debug)]
pub struct PrefixedArchive {
    inner: std::sync::Arc<dyn ArchiveStore>,
    prefix: String,
}

impl PrefixedArchive {
    pub fn new(inner: std::sync::Arc<dyn ArchiveStore>, prefix: String) -> Self {
        Self { inner, prefix }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

impl ArchiveStore for PrefixedArchive {
    fn create(&self, key: &str, bytes: Bytes) -> io::Result<()> {
        self.inner.create(&self.key(key), bytes)
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> io::Result<Bytes> {
        self.inner.get_range(&self.key(key), range)
    }

    fn size(&self, key: &str) -> io::Result<u64> {
        self.inner.size(&self.key(key))
    }

    fn delete(&self, key: &str) -> io::Result<()> {
        self.inner.delete(&self.key(key))
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        Ok((self.inner.list(&self.key(prefix))?.into_iter())
            .filter_map(|k| k.strip_prefix(&self.prefix).map(str::to_owned))
            .collect())
    }
}

/// The object key of an archived segment: `raw/day=YYYY-MM-DD/<segment id>.parquet`,
/// the day being the UTC day its partition starts in.
pub(crate) fn segment_key(partition_start: Micros, id: u64) -> String {
    format!("raw/day={}/{id:016}.parquet", partition_start.utc_date())
}

/// The object key of the `n`th object of one upload (`upload`, a number no
/// other upload draws) of a cluster's partition starting at
/// `partition_start` as sealed at log index `seal`:
/// `raw/day=YYYY-MM-DD/<seal, 16 digits>-<µs into the day, 11 digits>-<upload, 16 hex digits>-<n, 4 digits>.parquet`.
/// Two leaders uploading the same rows never write to one name.
pub(crate) fn cluster_segment_key(
    partition_start: Micros,
    seal: u64,
    upload: u64,
    n: usize,
) -> Option<String> {
    let into_day = partition_start.get() - partition_start.floor_to(DAY_US).get();
    (seal < 10u64.pow(16) && n < 10_000).then(|| {
        format!(
            "raw/day={}/{seal:016}-{into_day:011}-{upload:016x}-{n:04}.parquet",
            partition_start.utc_date()
        )
    })
}

/// The partition start and seal a [`cluster_segment_key`] names.
pub(crate) fn parse_cluster_key(key: &str) -> Option<(Micros, u64)> {
    let rest = key.strip_prefix("raw/day=")?;
    let (day, file) = rest.split_once('/')?;
    let parts: Vec<&str> = file.strip_suffix(".parquet")?.split('-').collect();
    let [seal, into_day, upload, n] = parts[..] else {
        return None;
    };
    let digits = |s: &str, len: usize| s.len() == len && s.bytes().all(|c| c.is_ascii_digit());
    if !(digits(seal, 16) && digits(into_day, 11) && digits(n, 4))
        || upload.len() != 16
        || !upload.bytes().all(|c| c.is_ascii_hexdigit())
    {
        return None;
    }
    let day_start = Micros::parse(&format!("{day}T00:00:00Z")).ok()?;
    Some((
        day_start.saturating_add_micros(into_day.parse().ok()?),
        seal.parse().ok()?,
    ))
}

const DAY_US: i64 = 86_400_000_000;

/// Whether `key` has the form of an object a node writes: a segment copy
/// (`raw/day=YYYY-MM-DD/<16 digits>.parquet`, or a cluster's, as
/// [`cluster_segment_key`] makes it) or a rollup tier copy
/// (`rollups/<granularity>-YYYY-MM-DD-g<generation>.cube`). The sweep deletes
/// nothing else, whatever else lies under the prefix.
pub(crate) fn is_node_key(key: &str) -> bool {
    fn is_date(s: &str) -> bool {
        let b = s.as_bytes();
        b.len() == 10
            && b.iter().enumerate().all(|(i, c)| match i {
                4 | 7 => *c == b'-',
                _ => c.is_ascii_digit(),
            })
    }
    fn is_digits(s: &str) -> bool {
        !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit())
    }
    if let Some(rest) = key.strip_prefix("raw/day=") {
        let Some((day, file)) = rest.split_once('/') else {
            return false;
        };
        let Some(id) = file.strip_suffix(".parquet") else {
            return false;
        };
        return is_date(day)
            && (id.len() == 16 && is_digits(id) || parse_cluster_key(key).is_some());
    }
    if let Some(file) = key.strip_prefix("rollups/") {
        let Some(stem) = file.strip_suffix(".cube") else {
            return false;
        };
        let Some((name, rest)) = stem.split_once('-') else {
            return false;
        };
        let Some((day, generation)) = rest.split_once("-g") else {
            return false;
        };
        return crate::Granularity::from_name(name).is_some()
            && is_date(day)
            && is_digits(generation);
    }
    false
}

/// The rows of `cols`, in their order, as a Parquet file.
/// Encrypted (Parquet modular encryption) under `cipher`'s current key, if any.
pub(crate) fn to_parquet(cols: &Columns, cipher: &Cipher) -> Result<Vec<u8>> {
    let mut w = match cipher.current_key() {
        Some((id, key)) => ParquetEventWriter::encrypted(Vec::new(), id, key)?,
        None => ParquetEventWriter::new(Vec::new())?,
    };
    for i in 0..cols.len() {
        w.write(&cols.event(i))?;
    }
    w.finish()
}

/// A remote object read through ranged gets, as the Parquet reader wants it.
struct Remote {
    store: Arc<dyn ArchiveStore>,
    key: String,
    len: u64,
}

impl Length for Remote {
    fn len(&self) -> u64 {
        self.len
    }
}

impl ChunkReader for Remote {
    type T = bytes::buf::Reader<Bytes>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        let len = self.len.saturating_sub(start);
        Ok(self.get_bytes(start, len as usize)?.reader())
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        let end = start.saturating_add(length as u64);
        let bytes = self
            .store
            .get_range(&self.key, start..end)
            .map_err(|e| ParquetError::External(Box::new(e)))?;
        if bytes.len() != length {
            return Err(ParquetError::EOF(format!(
                "{}: asked for {length} bytes at {start}, got {}",
                self.key,
                bytes.len()
            )));
        }
        Ok(bytes)
    }
}

/// Whether object `key` (of `len` bytes) is Parquet with an encrypted
/// footer (it ends with `PARE`; a plaintext footer ends with `PAR1`).
pub(crate) fn is_encrypted(store: &Arc<dyn ArchiveStore>, key: &str, len: u64) -> io::Result<bool> {
    if len < 4 {
        return Ok(false);
    }
    Ok(&store.get_range(key, len - 4..len)?[..] == b"PARE")
}

/// The object's encryption key, found by the id its footer names.
struct Keys(Cipher);

impl KeyRetriever for Keys {
    fn retrieve_key(&self, key_metadata: &[u8]) -> parquet::errors::Result<Vec<u8>> {
        let id = String::from_utf8_lossy(key_metadata);
        match self.0.key(&id) {
            Some(key) => Ok(key.to_vec()),
            None => Err(ParquetError::General(format!(
                "encrypted under key `{id}`, which the node's keys do not list"
            ))),
        }
    }
}

/// Reads the rows of archived object `key` (of `len` bytes) from the row groups
/// whose timestamp statistics overlap `range` (all of them for `None`). An
/// object written encrypted (`encrypted`) is opened with `cipher`'s keys.
pub(crate) fn read(
    store: &Arc<dyn ArchiveStore>,
    key: &str,
    len: u64,
    range: Option<&TimeRange>,
    encrypted: Option<&Cipher>,
) -> Result<Columns> {
    let remote = Remote {
        store: store.clone(),
        key: key.to_owned(),
        len,
    };
    let mut options = ArrowReaderOptions::new();
    if let Some(cipher) = encrypted {
        let keys =
            FileDecryptionProperties::with_key_retriever(Arc::new(Keys(cipher.clone()))).build()?;
        options = options.with_file_decryption_properties(keys);
    }
    let builder = ParquetRecordBatchReaderBuilder::try_new_with_options(remote, options)?;
    if builder.schema().fields() != event_schema().fields() {
        return Err(EngineError::Parquet(ParquetError::General(format!(
            "{key}: not an events file (columns differ)"
        ))));
    }
    let groups: Vec<usize> = builder
        .metadata()
        .row_groups()
        .iter()
        .enumerate()
        .filter(|(_, rg)| {
            let Some(range) = range else { return true };
            match rg.column(1).statistics() {
                Some(Statistics::Int64(s)) => match (s.min_opt(), s.max_opt()) {
                    (Some(min), Some(max)) => range.overlaps(Micros::new(*min), Micros::new(*max)),
                    _ => true,
                },
                _ => true,
            }
        })
        .map(|(i, _)| i)
        .collect();
    let reader = builder.with_row_groups(groups).build()?;
    let mut cols = Columns::default();
    for batch in reader {
        let batch = batch.map_err(|e| EngineError::Parquet(e.into()))?;
        rows_of(&batch, |r| {
            cols.push_row(r);
        })?;
    }
    Ok(cols)
}

/// The events of a record batch with [`event_schema`].
#[cfg(test)]
pub(crate) fn events_of(b: &RecordBatch) -> Result<Vec<toplog_types::Event>> {
    let mut out = Vec::with_capacity(b.num_rows());
    rows_of(b, |r| {
        out.push(toplog_types::Event {
            request_id: r.request_id.into(),
            timestamp: Micros::new(r.ts),
            user_id: r.user_id.into(),
            endpoint: r.endpoint.into(),
            method: r.method.into(),
            status_code: r.status,
            latency_us: r.latency_us,
        })
    })?;
    Ok(out)
}

/// Calls `f` with each row of a record batch with [`event_schema`], borrowed
/// from its arrays.
fn rows_of(b: &RecordBatch, mut f: impl FnMut(Row<'_>)) -> Result<()> {
    let bad = |m: &str| EngineError::Parquet(ParquetError::General(m.to_owned()));
    let s = |i: usize| {
        b.column(i)
            .as_string_opt::<i32>()
            .ok_or_else(|| bad("a string column is not utf8"))
    };
    let (rid, uid, ep, m) = (s(0)?, s(2)?, s(3)?, s(4)?);
    let ts = b
        .column(1)
        .as_primitive_opt::<TimestampMicrosecondType>()
        .ok_or_else(|| bad("timestamp is not in microseconds"))?;
    let st = b
        .column(5)
        .as_primitive_opt::<UInt16Type>()
        .ok_or_else(|| bad("status_code is not u16"))?;
    let lat = b
        .column(6)
        .as_primitive_opt::<Float64Type>()
        .ok_or_else(|| bad("latency_ms is not f64"))?;
    if b.columns().iter().any(|c| c.null_count() > 0) {
        return Err(bad("null values in an events file"));
    }
    for r in 0..b.num_rows() {
        f(Row {
            ts: ts.value(r),
            request_id: rid.value(r),
            user_id: uid.value(r),
            endpoint: ep.value(r),
            method: m.value(r),
            status: st.value(r),
            latency_us: (lat.value(r) * 1000.0).round() as u64,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// An object store in memory that counts the bytes it hands out.
    #[derive(Debug, Default)]
    struct Memory {
        objects: Mutex<HashMap<String, Bytes>>,
        served: Mutex<u64>,
    }

    impl ArchiveStore for Memory {
        fn create(&self, key: &str, bytes: Bytes) -> io::Result<()> {
            self.objects.lock().unwrap().insert(key.to_owned(), bytes);
            Ok(())
        }
        fn get_range(&self, key: &str, range: Range<u64>) -> io::Result<Bytes> {
            let objects = self.objects.lock().unwrap();
            let b = objects.get(key).ok_or(io::ErrorKind::NotFound)?;
            *self.served.lock().unwrap() += range.end - range.start;
            Ok(b.slice(range.start as usize..range.end as usize))
        }
        fn size(&self, key: &str) -> io::Result<u64> {
            let objects = self.objects.lock().unwrap();
            Ok(objects.get(key).ok_or(io::ErrorKind::NotFound)?.len() as u64)
        }
        fn delete(&self, key: &str) -> io::Result<()> {
            self.objects.lock().unwrap().remove(key);
            Ok(())
        }
        fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
            let objects = self.objects.lock().unwrap();
            Ok(objects
                .keys()
                .filter(|k| k.starts_with(prefix))
                .cloned()
                .collect())
        }
    }

    #[test]
    fn node_keys_are_exactly_the_names_a_node_writes() {
        let day = Micros::new(86_400_000_000 * 20_000);
        assert!(is_node_key(&segment_key(day, 42)));
        let hour = day.saturating_add_micros(13 * 3_600_000_000);
        let key = cluster_segment_key(hour, 1234, 0xab, 7).unwrap();
        assert!(
            key.ends_with("/0000000000001234-46800000000-00000000000000ab-0007.parquet"),
            "{key}"
        );
        assert!(is_node_key(&key));
        assert_eq!(parse_cluster_key(&key), Some((hour, 1234)));
        assert!(!is_node_key(
            "raw/day=2026-11-24/0000000000001234-4680-0007.parquet"
        ));
        assert_eq!(parse_cluster_key(&segment_key(day, 42)), None);
        for key in [
            "raw/day=2026-11-24/0000000000000001.parquet",
            "rollups/rollup_1m-2026-11-24-g7.cube",
            "rollups/rollup_1h-2026-11-24-g12.cube",
            "rollups/rollup_1d-2026-11-24-g1.cube",
        ] {
            assert!(is_node_key(key), "{key}");
        }
        for key in [
            "OWNER",
            "raw/notes.txt",
            "raw/day=2026-11-24/1.parquet",
            "raw/day=2026-11-24/0000000000000001.parquet.bak",
            "raw/day=2026-11-24/sub/0000000000000001.parquet",
            "raw/day=2026-1-24/0000000000000001.parquet",
            "raw2/day=2026-11-24/0000000000000001.parquet",
            "rollups/rollup_5m-2026-11-24-g1.cube",
            "rollups/rollup_1m-2026-11-24-g.cube",
            "rollups/rollup_1m-2026-11-24.cube",
            "rollups/00000000000000000001.cube",
            "other/raw/day=2026-11-24/0000000000000001.parquet",
        ] {
            assert!(!is_node_key(key), "{key}");
        }
    }

    #[test]
    fn a_range_reads_only_the_row_groups_it_overlaps() {
        // 10 row groups of 100 rows, one second of timestamps each.
        let mut cols = Columns::default();
        for i in 0..1000i64 {
            cols.push(&toplog_types::Event {
                request_id: format!("r{i:04}"),
                timestamp: Micros::new(i * 10_000),
                user_id: format!("u{}", i % 37),
                endpoint: format!("GET /e/{}", i % 5),
                method: "GET".into(),
                status_code: 200 + (i % 3) as u16 * 100,
                latency_us: (i as u64) * 1_001,
            });
        }
        let mut w =
            crate::parquet::ParquetEventWriter::with_row_groups_of(Vec::new(), 100).unwrap();
        for i in 0..cols.len() {
            w.write(&cols.event(i)).unwrap();
        }
        let store: Arc<dyn ArchiveStore> = Arc::new(Memory::default());
        let bytes = Bytes::from(w.finish().unwrap());
        let len = bytes.len() as u64;
        store.create("raw/x.parquet", bytes).unwrap();

        let all = read(&store, "raw/x.parquet", len, None, None).unwrap();
        assert!(all.same_rows(&cols), "the whole file reads back as written");

        // Rows 350..420 lie in row groups 3 and 4.
        let range = TimeRange {
            start: Micros::new(350 * 10_000),
            end: Micros::new(420 * 10_000),
        };
        let part = read(&store, "raw/x.parquet", len, Some(&range), None).unwrap();
        assert_eq!(part.len(), 200);
        assert_eq!(part.ts.first(), Some(&3_000_000));
        assert_eq!(part.ts.last(), Some(&4_990_000));
        for i in 0..part.len() {
            assert_eq!(part.event(i), cols.event(300 + i));
        }
    }

    #[test]
    fn an_encrypted_copy_hides_its_rows_and_opens_only_with_its_key() {
        let cols = sample(300);
        let key = |id: &str, first: &str| {
            Cipher::new(
                toplog_crypt::Keyring::from_env_value(&format!("{id}:{}", first.repeat(32)))
                    .unwrap(),
            )
        };
        let k1 = key("k1", "a1");
        let bytes = Bytes::from(to_parquet(&cols, &k1).unwrap());
        assert!(
            !bytes.windows(7).any(|w| w == b"/secret"),
            "no endpoint in plaintext"
        );
        assert!(
            !bytes.windows(9).any(|w| w == b"user-0001"),
            "no user id in plaintext"
        );
        let store: Arc<dyn ArchiveStore> = Arc::new(Memory::default());
        let len = bytes.len() as u64;
        store.create("raw/x.parquet", bytes).unwrap();
        let back = read(&store, "raw/x.parquet", len, None, Some(&k1)).unwrap();
        assert!(back.same_rows(&cols));
        // Rotated: the old key still listed reads it.
        let rotated = Cipher::new(
            toplog_crypt::Keyring::from_env_value(&format!(
                "k2:{},k1:{}",
                "b2".repeat(32),
                "a1".repeat(32)
            ))
            .unwrap(),
        );
        assert!(
            read(&store, "raw/x.parquet", len, None, Some(&rotated))
                .unwrap()
                .same_rows(&cols)
        );
        let unknown = read(&store, "raw/x.parquet", len, None, Some(&key("k9", "11"))).unwrap_err();
        assert!(unknown.to_string().contains("key `k1`"), "{unknown}");
        let wrong = key("k1", "22");
        assert!(read(&store, "raw/x.parquet", len, None, Some(&wrong)).is_err());
        assert!(read(&store, "raw/x.parquet", len, None, None).is_err());
    }

    fn sample(n: i64) -> Columns {
        let mut cols = Columns::default();
        for i in 0..n {
            cols.push(&toplog_types::Event {
                request_id: format!("r{i:04}"),
                timestamp: Micros::new(i * 10_000),
                user_id: format!("user-{:04}", i % 37),
                endpoint: format!("/secret/{}", i % 5),
                method: "GET".into(),
                status_code: 200,
                latency_us: (i as u64) * 1_001,
            });
        }
        cols
    }
}
