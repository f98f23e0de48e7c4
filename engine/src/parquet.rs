//! Events as Apache Parquet, readable by DuckDB, ClickHouse, Spark or Athena:
//! zstd, dictionary-encoded strings, `timestamp` as microseconds since the
//! epoch in UTC, latency in milliseconds as the ingest API takes it.

use std::io::Write;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float64Builder, StringBuilder, TimestampMicrosecondBuilder, UInt16Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use toplog_types::Event;

use crate::{EngineError, Result};

/// Rows per row group: large enough for scans, small enough that time-range
/// pruning by row-group statistics skips most of a day's file.
pub const ROW_GROUP_ROWS: usize = 1 << 20;
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
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
            .set_max_row_group_row_count(Some(rows.max(1)))
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
