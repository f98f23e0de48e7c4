//! A gRPC client of toplog in a few lines: sends a batch of requests (with
//! an idempotency key, so a retry is stored once), then asks for the top
//! endpoints by request count over the last hour.
//!
//! ```sh
//! TOPLOG_API_KEY=$(cat toplog-data/admin.key) \
//!   cargo run -p toplog-examples --example grpc_client -- http://127.0.0.1:8080
//! ```

use std::time::{SystemTime, UNIX_EPOCH};

use toplog_proto::v1::{Event, IngestRequest, TimeRange, TopKRequest, toplog_client::ToplogClient};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:8080".into());
    // Every call shows the API key, as `authorization: Bearer tlk_...`.
    let key: tonic::metadata::MetadataValue<_> =
        format!("Bearer {}", std::env::var("TOPLOG_API_KEY")?).parse()?;
    let channel = tonic::transport::Endpoint::from_shared(server)?
        .connect()
        .await?;
    let mut toplog =
        ToplogClient::with_interceptor(channel, move |mut request: tonic::Request<()>| {
            request.metadata_mut().insert("authorization", key.clone());
            Ok(request)
        });

    let now_us = i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH)?.as_micros())?;
    let events: Vec<Event> = (0..30)
        .map(|i| Event {
            timestamp_us: now_us - 1_000 * i,
            user_id: format!("user-{}", i % 4),
            endpoint: ["GET /items/{id}", "POST /orders", "GET /health"][i as usize % 3].into(),
            status_code: if i % 10 == 0 { 503 } else { 200 },
            latency_ms: 2.5 + i as f64,
            ..Event::default()
        })
        .collect();
    let key = format!("example-{now_us}");
    for attempt in ["sent", "sent again"] {
        let reply = toplog
            .ingest(IngestRequest {
                events: events.clone(),
                idempotency_key: key.clone(),
            })
            .await?
            .into_inner();
        println!(
            "{attempt}: {} events, replayed: {}",
            reply.accepted, reply.replayed
        );
    }

    let top = toplog
        .top_k(TopKRequest {
            k: 3,
            metric: "frequency".into(),
            by: "endpoint".into(),
            range: Some(TimeRange {
                start_us: Some(now_us - 3_600_000_000),
                end_us: None,
            }),
            ..TopKRequest::default()
        })
        .await?
        .into_inner();
    for row in top.rows {
        println!("{}\t{}", row.key, row.count);
    }
    Ok(())
}
