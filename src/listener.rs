//! Stage `listener`: accept TCP connections and serve HTTP/1.1 and HTTP/2 (h2c prior knowledge)
//! on one port; the front door then splits gRPC, gRPC-Web (+CORS) and plain HTTP.
//!
//! Receives sockets; hands each request to the [`Frontend`], which hands gRPC to the call stack.
//! TLS (with the auth work) slots in by wrapping the accepted stream before `serve_connection`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::{Layer, Service, ServiceExt};
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};
use tracing::{debug, info, warn};

use crate::auth::PeerAddr;
use crate::stack::CallStack;
use crate::tls::ReloadingAcceptor;

type Body = tonic::body::Body;

/// How long a client may take to complete its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Concurrent streams a client may open on one HTTP/2 connection.
pub const MAX_CONCURRENT_STREAMS: u32 = 4096;

/// The first service a request meets: routes by content type to gRPC, gRPC-Web or plain HTTP.
#[derive(Clone)]
pub struct Frontend {
    grpc: CallStack,
    web: tower_http::cors::Cors<tonic_web::GrpcWebService<CallStack>>,
    admin: Option<Arc<crate::admin::Admin>>,
}

impl Frontend {
    /// Puts gRPC-Web conversion and CORS in front of the call stack.
    pub fn new(grpc: CallStack) -> Self {
        let cors = CorsLayer::new()
            .allow_origin(AllowOrigin::mirror_request())
            .allow_headers(AllowHeaders::mirror_request())
            .allow_methods([Method::POST, Method::OPTIONS])
            .allow_credentials(true)
            .expose_headers([
                header::HeaderName::from_static("grpc-status"),
                header::HeaderName::from_static("grpc-message"),
                header::HeaderName::from_static("grpc-status-details-bin"),
                header::HeaderName::from_static("viam-smrn"),
            ])
            .max_age(Duration::from_secs(24 * 3600));
        let web = cors.layer(tonic_web::GrpcWebLayer::new().layer(grpc.clone()));
        Self {
            grpc,
            web,
            admin: None,
        }
    }

    /// Serves `/metrics`, `/readyz` and `/statusz` (see [`crate::admin`]) besides `/healthz`.
    pub fn with_admin(mut self, admin: Arc<crate::admin::Admin>) -> Self {
        self.admin = Some(admin);
        self
    }

    /// Serves one request.
    pub async fn serve(
        self,
        req: http::Request<Incoming>,
    ) -> Result<http::Response<Body>, Infallible> {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .map(HeaderValue::as_bytes)
            .unwrap_or_default();
        if content_type.starts_with(b"application/grpc-web") || is_preflight(&req) {
            return self.web.oneshot(req).await.map(|r| r.map(Body::new));
        }
        if content_type.starts_with(b"application/grpc") {
            return self.grpc.clone().call(req.map(Body::new)).await;
        }
        match &self.admin {
            Some(admin) => Ok(admin.serve_main(&req)),
            None => Ok(plain_http(&req)),
        }
    }
}

fn is_preflight<B>(req: &http::Request<B>) -> bool {
    req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

fn plain_http<B>(req: &http::Request<B>) -> http::Response<Body> {
    let (status, text) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => (StatusCode::OK, "ok\n"),
        (&Method::GET, "/") => (
            StatusCode::OK,
            "partgate: a gRPC gateway for Viam robot fleets\n",
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "not found: this port serves gRPC and gRPC-Web\n",
        ),
    };
    let mut resp = http::Response::new(Body::new(http_body_util::Full::new(
        bytes::Bytes::from_static(text.as_bytes()),
    )));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// The HTTP server settings used for both the gateway and simulated parts.
pub fn http_builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .initial_stream_window_size(2 * 1024 * 1024)
        .initial_connection_window_size(8 * 1024 * 1024)
        .max_frame_size(64 * 1024)
        .max_send_buf_size(1024 * 1024)
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(10));
    builder
}

/// A boxed per-request handler.
pub type Handler = std::sync::Arc<
    dyn Fn(
            http::Request<Incoming>,
        )
            -> Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>
        + Send
        + Sync,
>;

/// Accepts connections until `shutdown` turns true, then lets open calls finish for up to
/// `drain` (sending GOAWAY so clients stop opening new streams) before returning.
pub async fn serve(
    listener: TcpListener,
    handler: Handler,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
    tls: Option<Arc<ReloadingAcceptor>>,
) {
    let builder = Arc::new(http_builder());
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let service = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
            req.extensions_mut().insert(PeerAddr(peer));
            handler(req)
        });
        let watcher = graceful.watcher();
        let builder = builder.clone();
        // The TLS handshake runs in the connection's own task, so a slow or silent client
        // never holds up the accept loop.
        let acceptor = tls.as_ref().map(|t| t.acceptor());
        tokio::spawn(async move {
            let result = match acceptor {
                None => {
                    let conn = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .into_owned();
                    watcher.watch(conn).await
                }
                Some(acceptor) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        Ok(Ok(tls)) => {
                            let conn = builder
                                .serve_connection(TokioIo::new(tls), service)
                                .into_owned();
                            watcher.watch(conn).await
                        }
                        Ok(Err(e)) => {
                            return debug!(peer = %peer, error = %e, "TLS handshake failed");
                        }
                        Err(_) => return debug!(peer = %peer, "TLS handshake timed out"),
                    }
                }
            };
            if let Err(e) = result {
                debug!(peer = %peer, error = %e, "client connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => info!("all connections drained"),
        _ = tokio::time::sleep(drain) => warn!("drain timeout reached; closing remaining connections"),
    }
}

/// Binds `addr`, mapping the error to a start-up error.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, crate::error::StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| crate::error::StartError::Bind {
            addr: addr.to_string(),
            source,
        })
}
