//! The HTTP server loop: accepts connections up to `max_connections` (the
//! rest wait in the kernel's backlog), speaks HTTP/1.1 (REST) or HTTP/2
//! (gRPC, and REST over h2c) on each as the client opens it, gives each
//! `header_timeout` to send a request's headers and `body_timeout` for its
//! body, and drains open connections on shutdown. axum's own `serve` has
//! neither limit nor timeout.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower_http::timeout::RequestBodyTimeoutLayer;

/// How the server treats connections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_connections: usize,
    pub(crate) header_timeout: Duration,
    pub(crate) body_timeout: Duration,
}

/// Serves `app` on `listener` until `shutdown` resolves, then waits for the
/// connections already open to finish their requests.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let app = app.layer(RequestBodyTimeoutLayer::new(limits.body_timeout));
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // A turn first: past the limit, new connections wait unaccepted.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off, do not spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let (app, watcher) = (app.clone(), graceful.watcher());
        tokio::spawn(async move {
            // Which protocol the client speaks, from its first bytes: a client
            // that sends nothing in time is let go like one with slow headers.
            let served = match sniff(&stream, limits.header_timeout).await {
                None => Ok(()),
                Some(Protocol::Http2) => {
                    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .timer(TokioTimer::new())
                        // Windows that grow with the link: a 1 MiB batch is not
                        // sent 64 KiB (the default window) per round trip.
                        .adaptive_window(true)
                        // A client that stops answering pings is let go.
                        .keep_alive_interval(limits.header_timeout)
                        .keep_alive_timeout(limits.header_timeout)
                        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
                    watcher.watch(conn).await
                }
                Some(Protocol::Http1) => {
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(limits.header_timeout)
                        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
                    watcher.watch(conn).await
                }
            };
            if let Err(e) = served {
                tracing::debug!(error = %e, "connection ended");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

enum Protocol {
    Http1,
    /// HTTP/2 with prior knowledge (gRPC, h2c).
    Http2,
}

/// The protocol of a new connection, from the bytes it sent first (peeked,
/// not consumed); `None` if it closed or sent too little before `timeout`.
async fn sniff(stream: &tokio::net::TcpStream, timeout: Duration) -> Option<Protocol> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = [0u8; PREFACE.len()];
    loop {
        let n = tokio::time::timeout_at(deadline, stream.peek(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        if buf[..n] != PREFACE[..n] {
            return Some(Protocol::Http1);
        }
        if n == PREFACE.len() {
            return Some(Protocol::Http2);
        }
        // Part of the preface so far: peek again once more may have come.
        tokio::time::sleep_until(
            deadline.min(tokio::time::Instant::now() + Duration::from_millis(5)),
        )
        .await;
    }
}
