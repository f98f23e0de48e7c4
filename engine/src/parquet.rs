//! Events as Apache Parquet, readable by DuckDB, ClickHouse, Spark or Athena:
//! zstd, dictionary-encoded strings, `timestamp` as microseconds since the
//! epoch in UTC, latency in milliseconds as the ingest API takes it. And
//! rows read back from such files, whoever wrote them ([`ParquetRows`]).

use std::io::Write;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float64Builder, StringBuilder, TimestampMicrosecondBuilder, UInt16Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::encryption::encrypt::FileEncryptionProperties;
use parquet::file::properties::{WriterProperties, WriterPropertiesBuilder};
use toplog_crypt::KEY_BYTES;
use toplog_types::{Event, TypedRow};

use crate::{EngineError, Result};

/// Rows per row group: large enough for scans, small enough that time-range
/// pruning by row-group statistics skips most of a day's file.
pub const ROW_GROUP_ROWS: usize = 1 << 20;
/// Rows per row group of an encrypted file, whose column chunks are one page each.
const ENCRYPTED_ROW_GROUP_ROWS: usize = 100_000;
/// Rows buffered before they are handed to the Parquet writer.
const BATCH_ROWS: usize = 1 << 16;

/// The columns of an events file, in order.
pub fn event_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("request_id", DataType::Utf8, false),
        Field::new(
            "timestamp",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("user_id", DataType::Utf8, false),
        Field::new("endpoint", DataType::Utf8, false),
        Field::new("method", DataType::Utf8, false),
        Field::new("status_code", DataType::UInt16, false),
        Field::new("latency_ms", DataType::Float64, false),
    ]))
}

/// Streams events into a Parquet file.
pub struct ParquetEventWriter<W: Write + Send> {
    writer: ArrowWriter<W>,
    pending: Vec<Event>,
}

impl<W: Write + Send> ParquetEventWriter<W> {
    pub fn new(out: W) -> Result<Self> {
        Self::with_row_groups_of(out, ROW_GROUP_ROWS)
    }

    /// A writer whose row groups hold at most `rows` rows.
    pub(crate) fn with_row_groups_of(out: W, rows: usize) -> Result<Self> {
        Self::with_properties(
            out,
            WriterProperties::builder().set_max_row_group_row_count(Some(rows.max(1))),
        )
    }

    /// A writer of a file encrypted with Parquet modular encryption: AES-GCM,
    /// footer and every column under `key`, the key's id as the footer's key
    /// metadata. DuckDB (1.5.6 and later) reads it given the key: it decrypts
    /// only the first data page of a column chunk, so each chunk is written
    /// as one page, in row groups small enough (`ENCRYPTED_ROW_GROUP_ROWS`)
    /// to keep a page bounded. No bloom filters and no AAD prefix, which
    /// DuckDB cannot read either.
    pub fn encrypted(out: W, key_id: &str, key: &[u8; KEY_BYTES]) -> Result<Self> {
        let encryption = FileEncryptionProperties::builder(key.to_vec())
            .with_footer_key_metadata(key_id.as_bytes().to_vec())
            .build()?;
        Self::with_properties(
            out,
            WriterProperties::builder()
                .with_file_encryption_properties(encryption)
                .set_max_row_group_row_count(Some(ENCRYPTED_ROW_GROUP_ROWS))
                .set_data_page_row_count_limit(usize::MAX)
                .set_data_page_size_limit(usize::MAX)
                .set_dictionary_page_size_limit(usize::MAX),
        )
    }

    fn with_properties(out: W, props: WriterPropertiesBuilder) -> Result<Self> {
        let props = props
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
            .build();
        let writer = ArrowWriter::try_new(out, event_schema(), Some(props))?;
        Ok(Self {
            writer,
            pending: Vec::with_capacity(BATCH_ROWS),
        })
    }

    pub fn write(&mut self, e: &Event) -> Result<()> {
        self.pending.push(e.clone());
        if self.pending.len() == BATCH_ROWS {
            self.write_pending()?;
        }
        Ok(())
    }

    fn write_pending(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = record_batch(&self.pending)?;
        self.pending.clear();
        self.writer.write(&batch).map_err(EngineError::from)
    }

    /// Writes what is buffered and the footer; returns the sink.
    pub fn finish(mut self) -> Result<W> {
        self.write_pending()?;
        self.writer.into_inner().map_err(EngineError::from)
    }
}

/// The events as one Arrow record batch with [`event_schema`].
fn record_batch(events: &[Event]) -> Result<RecordBatch> {
    let n = events.len();
    let mut request_id = StringBuilder::with_capacity(n, n * 36);
    let mut timestamp = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut user_id = StringBuilder::with_capacity(n, n * 16);
    let mut endpoint = StringBuilder::with_capacity(n, n * 24);
    let mut method = StringBuilder::with_capacity(n, n * 4);
    let mut status = UInt16Builder::with_capacity(n);
    let mut latency = Float64Builder::with_capacity(n);
    for e in events {
        request_id.append_value(&e.request_id);
        timestamp.append_value(e.timestamp.get());
        user_id.append_value(&e.user_id);
        endpoint.append_value(&e.endpoint);
        method.append_value(&e.method);
        status.append_value(e.status_code);
        latency.append_value(e.latency_ms());
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(request_id.finish()),
        Arc::new(timestamp.finish()),
        Arc::new(user_id.finish()),
        Arc::new(endpoint.finish()),
        Arc::new(method.finish()),
        Arc::new(status.finish()),
        Arc::new(latency.finish()),
    ];
    RecordBatch::try_new(event_schema(), columns).map_err(|e| EngineError::Parquet(e.into()))
}

/// Rows of a Parquet file with the columns of [`event_schema`] by name,
/// written by toplog or by another tool: any timestamp unit (or an integer
/// of microseconds), any integer status, any numeric latency, any string
/// encoding. `request_id`, `user_id` and `method` may be missing or null;
/// the other columns are required. Each row comes back unchecked, as a
/// [`TypedRow`], or as the field that could not be read.
pub struct ParquetRows {
    batches: parquet::arrow::arrow_reader::ParquetRecordBatchReader,
    total_rows: u64,
}

/// One row, or the field that made it unreadable and why.
pub type ParquetRow = std::result::Result<TypedRow<'static>, (&'static str, String)>;

impl ParquetRows {
    /// Rows from `file`, after skipping its first `skip` rows, `batch` at a time.
    pub fn open(file: std::fs::File, skip: usize, batch: usize) -> Result<Self> {
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)?;
        let names: Vec<String> = builder
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        for required in ["timestamp", "endpoint", "status_code", "latency_ms"] {
            if !names.iter().any(|n| n == required) {
                return Err(EngineError::Parquet(
                    parquet::errors::ParquetError::General(format!(
                        "no `{required}` column (the columns are {})",
                        names.join(", ")
                    )),
                ));
            }
        }
        let total_rows = u64::try_from(builder.metadata().file_metadata().num_rows()).unwrap_or(0);
        let batches = builder
            .with_offset(skip)
            .with_batch_size(batch.max(1))
            .build()?;
        Ok(Self {
            batches,
            total_rows,
        })
    }

    /// Rows in the whole file, from its footer.
    pub fn total_rows(&self) -> u64 {
        self.total_rows
    }

    /// The next rows, or `None` at the end.
    pub fn next_rows(&mut self) -> Result<Option<Vec<ParquetRow>>> {
        let Some(batch) = self.batches.next() else {
            return Ok(None);
        };
        let batch = batch.map_err(|e| EngineError::Parquet(e.into()))?;
        Ok(Some(typed_rows(&batch)))
    }
}

/// The rows of one record batch, each column cast to the type the checks take.
fn typed_rows(b: &RecordBatch) -> Vec<ParquetRow> {
    use arrow::array::{Array, AsArray};
    use arrow::compute::cast;
    use arrow::datatypes::{Float64Type, Int64Type};
    let n = b.num_rows();
    let column = |name: &'static str,
                  to: &DataType|
     -> std::result::Result<Option<ArrayRef>, (&'static str, String)> {
        let Some(col) = b.column_by_name(name) else {
            return Ok(None);
        };
        let col = match col.data_type() {
            DataType::Timestamp(..) if *to == DataType::Int64 => {
                let us = cast(col, &DataType::Timestamp(TimeUnit::Microsecond, None));
                us.and_then(|c| cast(&c, &DataType::Int64))
            }
            _ => cast(col, to),
        };
        col.map(Some)
            .map_err(|e| (name, format!("cannot be read as {to}: {e}")))
    };
    let columns = (|| {
        Ok::<_, (&'static str, String)>((
            column("request_id", &DataType::Utf8)?,
            column("timestamp", &DataType::Int64)?,
            column("user_id", &DataType::Utf8)?,
            column("endpoint", &DataType::Utf8)?,
            column("method", &DataType::Utf8)?,
            column("status_code", &DataType::Int64)?,
            column("latency_ms", &DataType::Float64)?,
        ))
    })();
    let (rid, ts, uid, ep, m, st, lat) = match columns {
        Ok(c) => c,
        Err(e) => return vec![Err(e); n],
    };
    let text = |c: &Option<ArrayRef>, r: usize| {
        c.as_ref()
            .map(|c| c.as_string::<i32>())
            .filter(|c| c.is_valid(r))
            .map(|c| c.value(r).to_owned())
    };
    let (Some(ts), Some(ep), Some(st), Some(lat)) = (&ts, &ep, &st, &lat) else {
        return vec![Err(("", "a required column is missing".into())); n];
    };
    let (ts, st, lat) = (
        ts.as_primitive::<Int64Type>(),
        st.as_primitive::<Int64Type>(),
        lat.as_primitive::<Float64Type>(),
    );
    let ep = ep.as_string::<i32>();
    (0..n)
        .map(|r| {
            let required = |valid: bool, name: &'static str| {
                if valid {
                    Ok(())
                } else {
                    Err((name, "is null".to_owned()))
                }
            };
            required(ts.is_valid(r), "timestamp")?;
            required(ep.is_valid(r), "endpoint")?;
            required(st.is_valid(r), "status_code")?;
            required(lat.is_valid(r), "latency_ms")?;
            Ok(TypedRow {
                request_id: text(&rid, r).map(Into::into),
                timestamp_us: ts.value(r),
                user_id: text(&uid, r).unwrap_or_default().into(),
                endpoint: ep.value(r).to_owned().into(),
                method: text(&m, r).map(Into::into),
                status_code: u32::try_from(st.value(r)).unwrap_or(u32::MAX),
                latency_ms: lat.value(r),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use toplog_types::Micros;

    fn event(i: u64) -> Event {
        Event {
            request_id: format!("r{i}"),
            timestamp: Micros::new(1_767_225_600_000_000 + i as i64 * 1_000),
            user_id: format!("u{}", i % 7),
            endpoint: format!("GET /items/{}", i % 3),
            method: "GET".into(),
            status_code: 200 + (i % 4) as u16 * 100,
            latency_us: 1_000 + i * 17,
        }
    }

    #[test]
    fn events_round_trip_through_parquet() -> Result<()> {
        // More than one internal batch, so buffering and the tail are both exercised.
        let events: Vec<Event> = (0..(BATCH_ROWS as u64 + 123)).map(event).collect();
        let mut w = ParquetEventWriter::new(Vec::new())?;
        for e in &events {
            w.write(e)?;
        }
        let bytes = bytes::Bytes::from(w.finish()?);
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()?;
        let mut back = Vec::new();
        for batch in reader {
            let b = batch.map_err(|e| EngineError::Parquet(e.into()))?;
            assert_eq!(b.schema(), event_schema());
            back.extend(crate::archive::events_of(&b)?);
        }
        assert_eq!(back, events);
        Ok(())
    }
}
