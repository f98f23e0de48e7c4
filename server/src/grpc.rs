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
use serde_json::{Value, json};
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

use toplog_proto::raft_v1::raft_server::RaftServer;

use crate::api::{ApiError, AppState, aggregations, analytics, events, traces};
use crate::auth::Caller;

/// Largest batch of Raft messages a peer may send (entries of 4 MiB at most each).
const RAFT_BATCH_BYTES: usize = 512 << 20;

/// The gRPC services, as routes to merge into the REST router.
pub(crate) async fn router(state: Arc<AppState>) -> axum::Router {
    let limit = state.config.max_body_bytes;
    let auth = state.auth.clone();
    let state_cluster = state.config.cluster.is_some().then(|| state.clone());
    let metrics_state = state.clone();
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
    // A cluster's Raft traffic: only the peer role reaches it (RPCS).
    let router = match state_cluster {
        Some(app) => router.route_service(
            &service_path::<RaftServer<crate::cluster::RaftService>>(),
            RaftServer::new(crate::cluster::RaftService { app })
                .max_decoding_message_size(RAFT_BATCH_BYTES),
        ),
        None => router,
    };
    let router = match reflection {
        Ok(service) => router.route_service(
            &service_path::<tonic_reflection::server::v1::ServerReflectionServer<()>>(),
            service,
        ),
        Err(e) => {
            tracing::error!(error = %e, "gRPC server reflection is off");
            router
        }
    };
    router
        .layer(axum::middleware::from_fn_with_state(
            auth,
            crate::auth::grpc,
        ))
        .layer(axum::middleware::from_fn_with_state(
            metrics_state,
            crate::metrics::time_grpc,
        ))
        .layer(axum::middleware::map_response(refusal_codes))
}

/// gRPC's own refusals of a message, before any handler sees it, in the
/// codes toplog answers for the same faults in a message it reads:
/// `INVALID_ARGUMENT` for bytes that are not the message (tonic says
/// `INTERNAL`), `RESOURCE_EXHAUSTED` for one past `max_body_bytes` (tonic
/// says `OUT_OF_RANGE`). Both in the headers of a trailers-only answer and
/// in the trailers of a stream.
async fn refusal_codes(response: axum::response::Response) -> axum::response::Response {
    use http_body_util::BodyExt;
    let (mut parts, body) = response.into_parts();
    recode(&mut parts.headers);
    let body = body.map_frame(|frame| match frame.into_trailers() {
        Ok(mut trailers) => {
            recode(&mut trailers);
            http_body::Frame::trailers(trailers)
        }
        Err(frame) => frame,
    });
    axum::response::Response::from_parts(parts, axum::body::Body::new(body))
}

fn recode(headers: &mut axum::http::HeaderMap) {
    let code = headers.get("grpc-status").and_then(|v| v.to_str().ok());
    let message = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .replace("%20", " ");
    let recoded = match code {
        Some("13") if message.starts_with("failed to decode Protobuf message") => {
            Code::InvalidArgument
        }
        Some("11") if message.contains("decoded message length too large") => {
            Code::ResourceExhausted
        }
        _ => return,
    };
    headers.insert("grpc-status", axum::http::HeaderValue::from(recoded as i32));
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
        let caller = request.extensions().get::<Caller>().cloned();
        let partial = traces::export_message(&self.app, caller.as_ref(), request.into_inner())
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
        StatusCode::PAYLOAD_TOO_LARGE | StatusCode::TOO_MANY_REQUESTS => Code::ResourceExhausted,
        StatusCode::NOT_FOUND => Code::NotFound,
        StatusCode::SERVICE_UNAVAILABLE => Code::Unavailable,
        _ => Code::Internal,
    };
    let field = e.field.as_deref().map(|f| match (e.row, f) {
        (Some(row), "timestamp") => format!("events[{row}].timestamp_us"),
        (Some(row), f) => format!("events[{row}].{f}"),
        (None, "start") => "range.start_us".to_owned(),
        (None, "end") => "range.end_us".to_owned(),
        (None, "start_time") => "start_us".to_owned(),
        (None, "end_time") => "end_us".to_owned(),
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
        let caller = request.extensions().get::<Caller>().cloned();
        ingest(&self.app, caller.as_ref(), request.into_inner())
            .await
            .map(Response::new)
    }

    type IngestStreamStream = Replies;

    async fn ingest_stream(
        &self,
        request: Request<Streaming<v1::IngestRequest>>,
    ) -> Result<Response<Replies>, Status> {
        let app = self.app.clone();
        let caller = request.extensions().get::<Caller>().cloned();
        // One batch at a time, in order; the first refusal ends the stream.
        let replies = futures::stream::unfold(
            Some((request.into_inner(), app, caller)),
            |state| async move {
                let (mut inbound, app, caller) = state?;
                let reply = match inbound.message().await {
                    Ok(None) => return None,
                    Ok(Some(batch)) => ingest(&app, caller.as_ref(), batch).await,
                    Err(e) => Err(e),
                };
                let next = reply.is_ok().then_some((inbound, app, caller));
                Some((reply, next))
            },
        );
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
        consistency(&mut values, r.consistency);
        let (answer, point) = analytics::top_k_by_values(&self.app, values)
            .await
            .map_err(status)?;
        Ok(read(
            point,
            crate::metrics::ReadSource::of(&answer.sources),
            v1::TopKReply {
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
            },
        ))
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
        consistency(&mut values, r.consistency);
        let (answer, point) = analytics::timeseries_by_values(&self.app, values)
            .await
            .map_err(status)?;
        Ok(read(
            point,
            crate::metrics::ReadSource::of(&answer.sources),
            v1::TimeseriesReply {
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
            },
        ))
    }

    async fn history(
        &self,
        request: Request<v1::HistoryRequest>,
    ) -> Result<Response<v1::HistoryReply>, Status> {
        let r = request.into_inner();
        let mut values = HashMap::from([
            ("start_date".to_owned(), r.start_date),
            ("end_date".to_owned(), r.end_date),
        ]);
        consistency(&mut values, r.consistency);
        let (rows, point) = analytics::history_by_values(&self.app, values)
            .await
            .map_err(status)?;
        Ok(read(
            point,
            crate::metrics::ReadSource("rollup"),
            v1::HistoryReply {
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
            },
        ))
    }

    async fn count(
        &self,
        request: Request<v1::CountRequest>,
    ) -> Result<Response<v1::CountReply>, Status> {
        let r = request.into_inner();
        let mut values = range_and_filters(r.range, r.filters);
        consistency(&mut values, r.consistency);
        let (count, point) = events::count_by_values(&self.app, values)
            .await
            .map_err(status)?;
        Ok(served(point, v1::CountReply { count }))
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
        consistency(&mut values, r.consistency);
        let (page, point) = events::page_by_values(&self.app, values)
            .await
            .map_err(status)?;
        Ok(served(
            point,
            v1::ListRequestsReply {
                events: page.events.into_iter().map(v1::Event::from).collect(),
                next_cursor: page.next.map(|c| c.encode()).unwrap_or_default(),
            },
        ))
    }

    async fn submit_aggregation(
        &self,
        request: Request<v1::SubmitAggregationRequest>,
    ) -> Result<Response<v1::SubmitAggregationReply>, Status> {
        let body = aggregation_body(&request.into_inner());
        let aggregation_id = aggregations::submit(&self.app, body)
            .await
            .map_err(status)?;
        Ok(Response::new(v1::SubmitAggregationReply { aggregation_id }))
    }

    async fn get_aggregation(
        &self,
        request: Request<v1::GetAggregationRequest>,
    ) -> Result<Response<v1::Aggregation>, Status> {
        let id = request.into_inner().aggregation_id;
        let job = aggregations::job(&self.app, &id).map_err(status)?;
        Ok(Response::new(aggregation(&job, true)))
    }

    async fn list_aggregations(
        &self,
        _: Request<v1::ListAggregationsRequest>,
    ) -> Result<Response<v1::ListAggregationsReply>, Status> {
        let jobs = aggregations::all_jobs(&self.app).map_err(status)?;
        Ok(Response::new(v1::ListAggregationsReply {
            aggregations: jobs.iter().map(|j| aggregation(j, false)).collect(),
        }))
    }
}

/// The REST body of an aggregation request, for its one checker
/// ([`toplog_query::AggregationRequest::parse`]).
fn aggregation_body(r: &v1::SubmitAggregationRequest) -> Value {
    let mut body = json!({
        "start_time": Micros::new(r.start_us).to_rfc3339(),
        "end_time": Micros::new(r.end_us).to_rfc3339(),
        "metrics": r.metrics,
    });
    if !r.interval.is_empty() {
        body["interval"] = json!(r.interval);
    }
    if !r.group_by.is_empty() {
        body["group_by"] = json!(r.group_by);
    }
    if let Some(f) = &r.filters {
        let mut filters = serde_json::Map::new();
        let texts = [
            ("endpoint", &f.endpoint),
            ("user_id", &f.user_id),
            ("method", &f.method),
            ("request_id", &f.request_id),
        ];
        for (name, value) in texts {
            if let Some(v) = value {
                filters.insert(name.into(), json!(v));
            }
        }
        for (name, value) in [
            ("status_code", f.status_code),
            ("status_class", f.status_class),
        ] {
            if let Some(v) = value {
                filters.insert(name.into(), json!(v));
            }
        }
        body["filters"] = Value::Object(filters);
    }
    body
}

/// A job as gRPC shows it; its rows only `with_rows`.
fn aggregation(job: &toplog_query::Job, with_rows: bool) -> v1::Aggregation {
    let request = &job.request;
    let time = |v: &Value| match v {
        Value::String(s) => Micros::parse(s).map_or(0, Micros::get),
        v => v.as_f64().map_or(0, |ms| (ms * 1000.0).round() as i64),
    };
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let f = &request["filters"];
    let filter_text = |name: &str| f[name].as_str().map(str::to_owned);
    let filter_number = |name: &str| f[name].as_u64().and_then(|n| u32::try_from(n).ok());
    let rows = match (&job.result, with_rows) {
        (Some(Value::Array(rows)), true) => rows.iter().map(aggregate_row).collect(),
        _ => Vec::new(),
    };
    v1::Aggregation {
        aggregation_id: job.aggregation_id.clone(),
        state: text(&json!(job.state)),
        submitted_at_us: job.submitted_at.get(),
        finished_at_us: job.finished_at.map_or(0, Micros::get),
        error: job.error.clone().unwrap_or_default(),
        request: Some(v1::SubmitAggregationRequest {
            start_us: time(&request["start_time"]),
            end_us: time(&request["end_time"]),
            metrics: request["metrics"]
                .as_array()
                .map(|m| m.iter().map(text).collect())
                .unwrap_or_default(),
            interval: text(&request["interval"]),
            group_by: text(&request["group_by"]),
            filters: f.is_object().then(|| v1::Filters {
                endpoint: filter_text("endpoint"),
                user_id: filter_text("user_id"),
                method: filter_text("method"),
                status_code: filter_number("status_code"),
                status_class: filter_number("status_class"),
                request_id: None,
            }),
        }),
        rows,
    }
}

/// One result row, as `GET /api/v1/requests/aggregate/{id}` shows it, in
/// typed fields: `latency` becomes `latency_avg`, `latency_p50`, ...
fn aggregate_row(row: &Value) -> v1::AggregateRow {
    let time = |k: &str| {
        row[k]
            .as_str()
            .and_then(|s| Micros::parse(s).ok())
            .map_or(0, Micros::get)
    };
    let mut values = HashMap::new();
    for (name, v) in row.as_object().into_iter().flatten() {
        match (name.as_str(), v) {
            ("start" | "end" | "group" | "exact" | "missed_requests", _) => {}
            ("latency", Value::Object(parts)) => {
                for (part, v) in parts {
                    if let Some(x) = v.as_f64() {
                        values.insert(format!("latency_{part}"), x);
                    }
                }
            }
            (name, v) => {
                if let Some(x) = v.as_f64() {
                    values.insert(name.to_owned(), x);
                }
            }
        }
    }
    v1::AggregateRow {
        start_us: time("start"),
        end_us: time("end"),
        group: match &row["group"] {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        },
        values,
        exact: row["exact"].as_bool().unwrap_or(true),
        missed_requests: row["missed_requests"].as_u64().unwrap_or(0),
    }
}
/// A batch through the checks of `POST /api/v1/requests`, each event by
/// its typed fields ([`toplog_types::Event::from_typed`]).
async fn ingest(
    app: &AppState,
    caller: Option<&Caller>,
    batch: v1::IngestRequest,
) -> Result<v1::IngestReply, Status> {
    if batch.events.is_empty() {
        return Ok(v1::IngestReply::default());
    }
    let size = batch.encoded_len();
    let key = (!batch.idempotency_key.is_empty()).then_some(batch.idempotency_key);
    let events = batch.events;
    let stored = events::ingest_checked(app, caller, key, size, move |limits| {
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
    .await;
    let ingested = stored.as_ref().ok().map(|r| crate::metrics::Ingested {
        events: u64::from(r.accepted),
        replayed: r.replayed,
    });
    let code = stored
        .as_ref()
        .map_or_else(|e| e.status, |_| StatusCode::OK);
    app.metrics.ingest("grpc", code, ingested, size as u64);
    let receipt = stored.map_err(status)?;
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

/// A read's `consistency` as its query-string value (absent: eventual).
fn consistency(values: &mut HashMap<String, String>, c: i32) {
    if c == v1::Consistency::Strong as i32 {
        values.insert("consistency".into(), "strong".into());
    }
}

/// A read's reply, with where a cluster served it in the metadata.
/// A read's reply: [`served`], and where its answer came from (for the
/// read latency metrics).
fn read<T>(
    point: Option<crate::api::ReadPoint>,
    source: crate::metrics::ReadSource,
    reply: T,
) -> Response<T> {
    let mut response = served(point, reply);
    response.extensions_mut().insert(source);
    response
}

fn served<T>(point: Option<crate::api::ReadPoint>, reply: T) -> Response<T> {
    let mut response = Response::new(reply);
    if let Some(p) = point {
        let meta = response.metadata_mut();
        meta.insert("toplog-node-id", p.node_id.into());
        meta.insert("toplog-applied-index", p.applied_index.into());
    }
    response
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
