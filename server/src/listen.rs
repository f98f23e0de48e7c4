//! The HTTP server loop: accepts connections up to `max_connections` (the
//! rest wait in the kernel's backlog), speaks HTTP/1.1 (REST) or HTTP/2
//! (gRPC, and REST over h2c) on each as the client opens it, gives each
//! `header_timeout` to send a request's headers and `body_timeout` for its
//! body, and drains open connections on shutdown; with TLS, the handshake
//! comes first (within `header_timeout` too). axum's own `serve` has
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

use crate::auth::{ClientAddr, ClientCert};
use crate::tls::Tls;

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
    tls: Option<Arc<Tls>>,
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
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
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
        let (watcher, tls, app) = (graceful.watcher(), tls.clone(), app.clone());
        tokio::spawn(async move {
            // Which protocol the client speaks: from its first bytes, or
            // with TLS from the handshake (ALPN). A client that sends
            // nothing in time is let go like one with slow headers.
            let served = match tls {
                None => match sniff(&stream, limits.header_timeout).await {
                    None => Ok(()),
                    Some(protocol) => {
                        let app = for_client(app, peer, None);
                        serve_connection(stream, protocol, app, limits, watcher).await
                    }
                },
                Some(tls) => match handshake(stream, &tls, limits.header_timeout).await {
                    None => Ok(()),
                    Some((stream, protocol)) => {
                        let cert = (stream.get_ref().1.peer_certificates())
                            .and_then(|chain| tls.client_identity(chain));
                        let app = for_client(app, peer, cert);
                        serve_connection(stream, protocol, app, limits, watcher).await
                    }
                },
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

/// `app` for one connection: each request knows the address it came from
/// (rate limits on failed logins) and the role of the client certificate
/// the connection showed, if it has one.
fn for_client(
    app: Router,
    peer: std::net::SocketAddr,
    cert: Option<ClientCert>,
) -> impl tower::Service<
    axum::http::Request<hyper::body::Incoming>,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    tower::ServiceExt::map_request(
        app,
        move |mut r: axum::http::Request<hyper::body::Incoming>| {
            r.extensions_mut().insert(ClientAddr(peer));
            if let Some(cert) = &cert {
                r.extensions_mut().insert(cert.clone());
            }
            r
        },
    )
}

/// Serves one connection in `protocol` until it ends or the server drains.
async fn serve_connection<I, S>(
    io: I,
    protocol: Protocol,
    app: S,
    limits: Limits,
    watcher: hyper_util::server::graceful::Watcher,
) -> Result<(), hyper::Error>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<
            axum::http::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    match protocol {
        Protocol::Http2 => {
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                // Windows that grow with the link: a 1 MiB batch is not
                // sent 64 KiB (the default window) per round trip.
                .adaptive_window(true)
                // A client that stops answering pings is let go.
                .keep_alive_interval(limits.header_timeout)
                .keep_alive_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(io), TowerToHyperService::new(app));
            watcher.watch(conn).await
        }
        Protocol::Http1 => {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(io), TowerToHyperService::new(app));
            watcher.watch(conn).await
        }
    }
}

/// The TLS handshake of a new connection, within `timeout`, and the
/// protocol its client chose (ALPN `h2`, else HTTP/1.1). A client that
/// speaks plain HTTP to the TLS port is told so in plain text and let go.
async fn handshake(
    mut stream: tokio::net::TcpStream,
    tls: &Tls,
    timeout: Duration,
) -> Option<(
    tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    Protocol,
)> {
    /// The first byte of a TLS record carrying a handshake.
    const HANDSHAKE: u8 = 0x16;
    let mut first = [0u8; 1];
    match tokio::time::timeout(timeout, stream.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == HANDSHAKE => {}
        Ok(Ok(1)) => {
            use tokio::io::AsyncWriteExt;
            const BODY: &str = "this port speaks TLS: use https:// (gRPC: a TLS channel)\n";
            let answer = format!(
                "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{BODY}",
                BODY.len()
            );
            let _ = tokio::time::timeout(timeout, stream.write_all(answer.as_bytes())).await;
            let _ = stream.shutdown().await;
            return None;
        }
        _ => return None,
    }
    let stream = match tokio::time::timeout(timeout, tls.acceptor().accept(stream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            return None;
        }
        Err(_) => return None,
    };
    let protocol = match stream.get_ref().1.alpn_protocol() {
        Some(b"h2") => Protocol::Http2,
        _ => Protocol::Http1,
    };
    Some((stream, protocol))
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
