//! gRPC, on the same port as REST (HTTP/2 beside HTTP/1.1): OTLP/gRPC trace
//! export (`opentelemetry.proto.collector.trace.v1.TraceService/Export`) and
//! the standard health service (`grpc.health.v1.Health`). Exports go through
//! the same mapping, checks, ingest budget and log as `POST /v1/traces`.

use std::sync::Arc;

use axum::http::StatusCode;
use tonic::codec::CompressionEncoding;
use tonic::{Code, Request, Response, Status};
use toplog_formats::otlp::{
    ExportTraceServiceRequest, ExportTraceServiceResponse, TraceService, TraceServiceServer,
};

use crate::api::{ApiError, AppState, traces};

/// The gRPC services, as routes to merge into the REST router.
pub(crate) async fn router(state: Arc<AppState>) -> axum::Router {
    let limit = state.config.max_body_bytes;
    let traces = TraceServiceServer::new(Traces { app: state })
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd)
        .max_decoding_message_size(limit);
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<TraceServiceServer<Traces>>().await;
    // Mounted by service name, as tonic's own router does, but with no
    // fallback of their own: the REST router's answers every other path.
    axum::Router::new()
        .route_service(&service_path::<TraceServiceServer<Traces>>(), traces)
        .route_service(
            &service_path::<tonic_health::pb::health_server::HealthServer<()>>(),
            health_service,
        )
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

/// The gRPC status of an API error, with its message.
fn status(e: ApiError) -> Status {
    let code = match e.status {
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => Code::InvalidArgument,
        StatusCode::PAYLOAD_TOO_LARGE => Code::ResourceExhausted,
        StatusCode::NOT_FOUND => Code::NotFound,
        StatusCode::SERVICE_UNAVAILABLE => Code::Unavailable,
        _ => Code::Internal,
    };
    Status::new(code, e.message)
}
