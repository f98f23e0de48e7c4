//! `GET /metrics` and what each REST request adds to the metrics.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::api::AppState;

/// The content type of the OpenMetrics text format, which Prometheus asks for.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of Prometheus's own text format, for other clients
/// (`promtool check metrics`, curl).
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A batch's events as the store took them: a response extension the
/// ingest handlers set, which [`time_request`] counts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ingested {
    pub(crate) events: u64,
    pub(crate) replayed: bool,
}

/// Where a read's answer came from: `rollup` if only from rollups, else
/// `raw` (a response extension the read handlers set).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadSource(pub(crate) &'static str);

impl ReadSource {
    /// The source of an answer made from `sources` (`rollup_1m`, `raw`, ...).
    pub(crate) fn of(sources: &[&str]) -> Self {
        if sources.iter().all(|s| s.starts_with("rollup")) {
            Self("rollup")
        } else {
            Self("raw")
        }
    }
}

/// OpenMetrics text as Prometheus's own text format: a counter's HELP and
/// TYPE name its samples (`x_total`, where OpenMetrics names the family
/// `x`), and no `# EOF`.
fn prometheus_text(openmetrics: &str) -> String {
    let counters: Vec<&str> = (openmetrics.lines())
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines().filter(|l| *l != "# EOF") {
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|tag| {
            let rest = line.strip_prefix(tag)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(&name)
                .then(|| format!("{tag}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// `GET /metrics`: OpenMetrics to a client that asks for it (Prometheus
/// does), Prometheus's text format otherwise.
pub(crate) async fn scrape(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let text = app.metrics.render(&app);
    let openmetrics = (headers.get(header::ACCEPT))
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    let (body, content_type) = if openmetrics {
        (text, OPENMETRICS)
    } else {
        (prometheus_text(&text), PROMETHEUS_TEXT)
    };
    let mut resp = body.into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// Times each request to a route (`path`, its template), and counts ingest
/// requests by their outcome.
pub(crate) async fn time_request(
    State((app, path)): State<(Arc<AppState>, &'static str)>,
    req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let bytes = (req.headers().get(header::CONTENT_LENGTH))
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .unwrap_or(0);
    let resp = next.run(req).await;
    let took = started.elapsed().as_secs_f64();
    let status = resp.status();
    let class = match status.as_u16() / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    };
    let m = &app.metrics;
    (m.requests)
        .get_or_create(&[
            ("route", path),
            ("method", method_name(&method)),
            ("class", class),
        ])
        .observe(took);
    if let Some(ReadSource(source)) = resp.extensions().get::<ReadSource>() {
        (m.reads)
            .get_or_create(&[("route", path), ("source", source)])
            .observe(took);
    }
    if method == Method::POST {
        let transport = match path {
            "/api/v1/requests" => Some("http"),
            "/v1/traces" => Some("otlp_http"),
            _ => None,
        };
        if let Some(transport) = transport {
            m.ingest(
                transport,
                status,
                resp.extensions().get::<Ingested>().copied(),
                bytes,
            );
        }
    }
    resp
}

/// Times each gRPC call to toplog's services up to its response's headers
/// (for a unary call, all of it), by method; reads are timed by source too,
/// as REST reads are.
pub(crate) async fn time_grpc(
    State(app): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = grpc_method(req.uri().path());
    let resp = next.run(req).await;
    let Some(method) = method else {
        return resp;
    };
    let took = started.elapsed().as_secs_f64();
    let m = &app.metrics;
    (m.grpc_requests)
        .get_or_create(&[("method", method)])
        .observe(took);
    if let Some(ReadSource(source)) = resp.extensions().get::<ReadSource>() {
        (m.grpc_reads)
            .get_or_create(&[("method", method), ("source", source)])
            .observe(took);
    }
    resp
}

/// The calls [`time_grpc`] times: toplog.v1's and OTLP's trace export.
const GRPC_METHODS: [&str; 11] = [
    "/toplog.v1.Toplog/Ingest",
    "/toplog.v1.Toplog/IngestStream",
    "/toplog.v1.Toplog/TopK",
    "/toplog.v1.Toplog/Timeseries",
    "/toplog.v1.Toplog/History",
    "/toplog.v1.Toplog/Count",
    "/toplog.v1.Toplog/ListRequests",
    "/toplog.v1.Toplog/SubmitAggregation",
    "/toplog.v1.Toplog/GetAggregation",
    "/toplog.v1.Toplog/ListAggregations",
    "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
];

/// `path` as a method label, if it is one of [`GRPC_METHODS`].
fn grpc_method(path: &str) -> Option<&'static str> {
    GRPC_METHODS.iter().find(|m| **m == path).copied()
}

fn method_name(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::PATCH => "PATCH",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A counter's HELP and TYPE name its samples in Prometheus's text
    /// format; gauges and histograms are as OpenMetrics writes them.
    #[test]
    fn prometheus_text_names_counters_by_their_samples() {
        let om = "# HELP toplog_a Events.\n# TYPE toplog_a counter\ntoplog_a_total 3\n\
                  # HELP toplog_b Bytes.\n# TYPE toplog_b gauge\ntoplog_b 7\n# EOF\n";
        assert_eq!(
            prometheus_text(om),
            "# HELP toplog_a_total Events.\n# TYPE toplog_a_total counter\ntoplog_a_total 3\n\
             # HELP toplog_b Bytes.\n# TYPE toplog_b gauge\ntoplog_b 7\n"
        );
    }
}
