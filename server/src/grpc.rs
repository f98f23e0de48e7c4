//! gRPC, on the same port as REST (HTTP/2 beside HTTP/1.1): toplog's own API
//! (`toplog.v1.Toplog`), OTLP/gRPC trace export
//! (`opentelemetry.proto.collector.trace.v1.TraceService/Export`), the
//! standard health service (`grpc.health.v1.Health`) and server reflection,
//! so grpcurl and load balancers need no .proto file. Every call goes
//! through the same checks, budgets and log as its REST twin: a request's
//! fields are handed to the REST parameter checks by name.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use axum::http::StatusCode;
use futures::Stream;
use prost::Message;
use tonic::Streaming;
use tonic::codec::CompressionEncoding;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};
use toplog_formats::otlp::{
    ExportTraceServiceRequest, ExportTraceServiceResponse, TraceService, TraceServiceServer,
};
use toplog_proto::v1::{
    self,
    toplog_server::{Toplog, ToplogServer},
};
use toplog_types::{Micros, TypedRow};

use crate::api::{ApiError, AppState, analytics, events, traces};

/// The gRPC services, as routes to merge into the REST router.
pub(crate) async fn router(state: Arc<AppState>) -> axum::Router {
    let limit = state.config.max_body_bytes;
    let traces = TraceServiceServer::new(Traces { app: state.clone() })
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd)
        .max_decoding_message_size(limit);
    let toplog = ToplogServer::new(Api { app: state })
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd)
        .max_decoding_message_size(limit);
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<TraceServiceServer<Traces>>().await;
    health.set_serving::<ToplogServer<Api>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(toplog_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1();
    // Mounted by service name, as tonic's own router does, but with no
    // fallback of their own: the REST router's answers every other path.
    let router = axum::Router::new()
        .route_service(&service_path::<ToplogServer<Api>>(), toplog)
        .route_service(&service_path::<TraceServiceServer<Traces>>(), traces)
        .route_service(
            &service_path::<tonic_health::pb::health_server::HealthServer<()>>(),
            health_service,
        );
    match reflection {
        Ok(service) => router.route_service(
            &service_path::<tonic_reflection::server::v1::ServerReflectionServer<()>>(),
            service,
        ),
        Err(e) => {
            tracing::error!(error = %e, "gRPC server reflection is off");
            router
        }
    }
}

/// `/<package.Service>/{*method}`: the paths of a service's calls.
fn service_path<S: tonic::server::NamedService>() -> String {
    format!("/{}/{{*method}}", S::NAME)
}

struct Traces {
    app: Arc<AppState>,
}

#[tonic::async_trait]
impl TraceService for Traces {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let partial = traces::export_message(&self.app, request.into_inner())
            .await
            .map_err(status)?;
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: partial,
        }))
    }
}

/// The gRPC status of an API error, with its message; a refused field (and
/// its row) in `google.rpc.BadRequest` details, named as the .proto names it.
fn status(e: ApiError) -> Status {
    let code = match e.status {
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => Code::InvalidArgument,
        StatusCode::PAYLOAD_TOO_LARGE => Code::ResourceExhausted,
        StatusCode::NOT_FOUND => Code::NotFound,
        StatusCode::SERVICE_UNAVAILABLE => Code::Unavailable,
        _ => Code::Internal,
    };
    let field = e.field.as_deref().map(|f| match (e.row, f) {
        (Some(row), "timestamp") => format!("events[{row}].timestamp_us"),
        (Some(row), f) => format!("events[{row}].{f}"),
        (None, "start") => "range.start_us".to_owned(),
        (None, "end") => "range.end_us".to_owned(),
        (None, f) => f.to_owned(),
    });
    match field {
        Some(field) => Status::with_error_details(
            code,
            e.message.clone(),
            ErrorDetails::with_bad_request_violation(field, e.message),
        ),
        None => Status::new(code, e.message),
    }
}

/// `toplog.v1.Toplog`.
struct Api {
    app: Arc<AppState>,
}

type Replies = Pin<Box<dyn Stream<Item = Result<v1::IngestReply, Status>> + Send>>;

#[tonic::async_trait]
impl Toplog for Api {
    async fn ingest(
        &self,
        request: Request<v1::IngestRequest>,
    ) -> Result<Response<v1::IngestReply>, Status> {
        ingest(&self.app, request.into_inner())
            .await
            .map(Response::new)
    }

    type IngestStreamStream = Replies;

    async fn ingest_stream(
        &self,
        request: Request<Streaming<v1::IngestRequest>>,
    ) -> Result<Response<Replies>, Status> {
        let app = self.app.clone();
        // One batch at a time, in order; the first refusal ends the stream.
        let replies =
            futures::stream::unfold(Some((request.into_inner(), app)), |state| async move {
                let (mut inbound, app) = state?;
                let reply = match inbound.message().await {
                    Ok(None) => return None,
                    Ok(Some(batch)) => ingest(&app, batch).await,
                    Err(e) => Err(e),
                };
                let next = reply.is_ok().then_some((inbound, app));
                Some((reply, next))
            });
        Ok(Response::new(Box::pin(replies)))
    }

    async fn top_k(
        &self,
        request: Request<v1::TopKRequest>,
    ) -> Result<Response<v1::TopKReply>, Status> {
        let r = request.into_inner();
        let mut values = range_and_filters(r.range, r.filters);
        values.insert("k".into(), r.k.to_string());
        values.insert("metric".into(), r.metric);
        if !r.by.is_empty() {
            values.insert("by".into(), r.by);
        }
        if r.min_count > 0 {
            values.insert("min_count".into(), r.min_count.to_string());
        }
        if r.ascending {
            values.insert("order".into(), "asc".into());
        }
        let answer = analytics::top_k_by_values(&self.app, values)
            .await
            .map_err(status)?;
        Ok(Response::new(v1::TopKReply {
            rows: answer
                .rows
                .into_iter()
                .map(|row| v1::TopKRow {
                    key: row.key,
                    value: row.value,
                    count: row.count,
                    lower: row.bounds.map(|b| b.0),
                    upper: row.bounds.map(|b| b.1),
                })
                .collect(),
            exact: answer.exact,
            sources: answer.sources.iter().map(|s| (*s).to_owned()).collect(),
            unlisted_max_count: answer.unlisted_max_count,
        }))
    }

    async fn timeseries(
        &self,
        request: Request<v1::TimeseriesRequest>,
    ) -> Result<Response<v1::TimeseriesReply>, Status> {
        let r = request.into_inner();
        let mut values = range_and_filters(r.range, r.filters);
        values.insert("metric".into(), r.metric);
        for (name, value) in [("interval", r.interval), ("by", r.by)] {
            if !value.is_empty() {
                values.insert(name.into(), value);
            }
        }
        if r.limit > 0 {
            values.insert("limit".into(), r.limit.to_string());
        }
        let answer = analytics::timeseries_by_values(&self.app, values)
            .await
            .map_err(status)?;
        Ok(Response::new(v1::TimeseriesReply {
            series: answer
                .series
                .into_iter()
                .map(|s| v1::Series {
                    key: s.key,
                    points: s
                        .points
                        .into_iter()
                        .map(|p| v1::Point {
                            time_us: p.start.get(),
                            value: p.value,
                            count: p.count,
                        })
                        .collect(),
                })
                .collect(),
            exact: answer.exact,
            sources: answer.sources.iter().map(|s| (*s).to_owned()).collect(),
        }))
    }

    async fn history(
        &self,
        request: Request<v1::HistoryRequest>,
    ) -> Result<Response<v1::HistoryReply>, Status> {
        let r = request.into_inner();
        let values = HashMap::from([
            ("start_date".to_owned(), r.start_date),
            ("end_date".to_owned(), r.end_date),
        ]);
        let rows = analytics::history_by_values(&self.app, values)
            .await
            .map_err(status)?;
        Ok(Response::new(v1::HistoryReply {
            days: rows
                .into_iter()
                .map(|d| v1::Day {
                    date: d.date.to_rfc3339().get(..10).unwrap_or_default().to_owned(),
                    total_requests: d.total_requests,
                    average_latency: d.average_latency,
                    error_rate: d.error_rate,
                    p99_latency: d.p99_latency,
                })
                .collect(),
        }))
    }

    async fn count(
        &self,
        request: Request<v1::CountRequest>,
    ) -> Result<Response<v1::CountReply>, Status> {
        let r = request.into_inner();
        let count = events::count_by_values(&self.app, range_and_filters(r.range, r.filters))
            .await
            .map_err(status)?;
        Ok(Response::new(v1::CountReply { count }))
    }

    async fn list_requests(
        &self,
        request: Request<v1::ListRequestsRequest>,
    ) -> Result<Response<v1::ListRequestsReply>, Status> {
        let r = request.into_inner();
        let mut values = range_and_filters(r.range, r.filters);
        if r.limit > 0 {
            values.insert("limit".into(), r.limit.to_string());
        }
        if !r.cursor.is_empty() {
            values.insert("cursor".into(), r.cursor);
        }
        let page = events::page_by_values(&self.app, values)
            .await
            .map_err(status)?;
        Ok(Response::new(v1::ListRequestsReply {
            events: page.events.into_iter().map(v1::Event::from).collect(),
            next_cursor: page.next.map(|c| c.encode()).unwrap_or_default(),
        }))
    }
}

/// A batch through the checks of `POST /api/v1/requests`, each event by
/// its typed fields ([`toplog_types::Event::from_typed`]).
async fn ingest(app: &AppState, batch: v1::IngestRequest) -> Result<v1::IngestReply, Status> {
    if batch.events.is_empty() {
        return Ok(v1::IngestReply::default());
    }
    let size = batch.encoded_len();
    let key = (!batch.idempotency_key.is_empty()).then_some(batch.idempotency_key);
    let events = batch.events;
    let receipt = events::ingest_checked(app, key, size, move |limits| {
        events
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                let row = TypedRow {
                    request_id: non_empty(e.request_id),
                    timestamp_us: e.timestamp_us,
                    user_id: e.user_id.into(),
                    endpoint: e.endpoint.into(),
                    method: non_empty(e.method),
                    status_code: e.status_code,
                    latency_ms: e.latency_ms,
                };
                toplog_types::Event::from_typed(row, i, limits)
            })
            .collect()
    })
    .await
    .map_err(status)?;
    Ok(v1::IngestReply {
        accepted: receipt.accepted,
        lsn: receipt.lsn.get(),
        replayed: receipt.replayed,
    })
}

/// An optional string field: proto3 sends an absent one as "".
fn non_empty(s: String) -> Option<std::borrow::Cow<'static, str>> {
    (!s.is_empty()).then_some(s.into())
}

/// A request's range and filters as the REST parameters they stand for.
fn range_and_filters(
    range: Option<v1::TimeRange>,
    filters: Option<v1::Filters>,
) -> HashMap<String, String> {
    let mut values = HashMap::new();
    let range = range.unwrap_or_default();
    let time = |us: i64| Micros::new(us).to_rfc3339();
    if let Some(start) = range.start_us {
        values.insert("start".into(), time(start));
    }
    if let Some(end) = range.end_us {
        values.insert("end".into(), time(end));
    }
    let f = filters.unwrap_or_default();
    let texts = [
        ("endpoint", f.endpoint),
        ("user_id", f.user_id),
        ("method", f.method),
        ("request_id", f.request_id),
    ];
    for (name, value) in texts {
        if let Some(v) = value {
            values.insert(name.into(), v);
        }
    }
    if let Some(s) = f.status_code {
        values.insert("status_code".into(), s.to_string());
    }
    if let Some(c) = f.status_class {
        values.insert("status_class".into(), c.to_string());
    }
    values
}
