//! Stage `listener`: accept TCP connections and serve HTTP/1.1 and HTTP/2 (h2c prior knowledge,
//! or TLS with ALPN) on one port; the front door then splits gRPC, gRPC-Web (+CORS) and plain
//! HTTP.
//!
//! Receives sockets; after the TLS handshake (if any), HTTP/2 connections go to the native
//! engine ([`http2::server`], the same engine that dials parts) and the rest to hyper-util's auto
//! server. Either way each request reaches
//! the [`Frontend`] as an `http::Request<Body>` with the client's address, and the Frontend hands gRPC to
//! the call stack.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::Either;
use http::{HeaderValue, Method, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tower::{Layer, ServiceExt};
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};
use tracing::{debug, info, warn};

use crate::auth::PeerAddr;
use crate::ingress::client_hello;
use crate::stack::CallStack;
use crate::tls::ReloadingAcceptor;
use http2::frame::PREFACE;
use runtime::workers::Workers;

type Body = tonic::body::Body;

/// How long a client may take to complete its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Concurrent streams a client may open on one HTTP/2 connection (Go's HTTP/2 server allows
/// 250, nginx 128). With what one call may hold unread, this bounds what one connection can
/// make the gateway hold; a client that needs more calls at once opens more connections.
pub const MAX_CONCURRENT_STREAMS: u32 = 256;

/// The first service a request meets: routes by content type to gRPC, gRPC-Web or plain HTTP.
#[derive(Clone)]
pub struct Frontend {
    grpc: CallStack,
    /// Behind an `Arc`: the front door is cloned per request, and only gRPC-Web requests need
    /// their own copy of the CORS service (its clone copies several header values).
    web: Arc<tower_http::cors::Cors<tonic_web::GrpcWebService<CallStack>>>,
    admin: Option<Arc<crate::ops::admin::Admin>>,
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
        let web = Arc::new(cors.layer(tonic_web::GrpcWebLayer::new().layer(grpc.clone())));
        Self {
            grpc,
            web,
            admin: None,
        }
    }

    /// Serves `/metrics`, `/readyz` and `/statusz` (see [`crate::ops::admin`]) besides `/healthz`.
    pub fn with_admin(mut self, admin: Arc<crate::ops::admin::Admin>) -> Self {
        self.admin = Some(admin);
        self
    }

    /// Serves one request from the client at `peer`. A gRPC call's future is the call stack's
    /// own (no `async` layer of ours around it that would copy the request once more); the rest
    /// go through [`Frontend::serve_other`].
    pub fn serve(
        self,
        req: http::Request<Body>,
        peer: SocketAddr,
    ) -> impl Future<Output = Result<http::Response<Body>, Infallible>> + Send + use<> {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .map(HeaderValue::as_bytes)
            .unwrap_or_default();
        let web = content_type.starts_with(b"application/grpc-web") || is_preflight(&req);
        if !web && content_type.starts_with(b"application/grpc") {
            return Either::Left(self.grpc.serve(req, peer).map(Ok));
        }
        Either::Right(self.serve_other(req, peer, web))
    }

    /// gRPC-Web and CORS preflights (`web`, as `serve` classified the request), else plain HTTP.
    async fn serve_other(
        self,
        mut req: http::Request<Body>,
        peer: SocketAddr,
        web: bool,
    ) -> Result<http::Response<Body>, Infallible> {
        if web {
            req.extensions_mut().insert(PeerAddr(peer));
            let web = tower_http::cors::Cors::clone(&self.web);
            // Boxed: browsers' calls are few, and every call's future is as large as this one.
            return Box::pin(web.oneshot(req)).await.map(|r| r.map(Body::new));
        }
        // Plain gRPC never gets here (see `serve`), so this future stays small.
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

/// hyper's server for what is not HTTP/2 (HTTP/1.1: gRPC-Web, CORS, plain HTTP). HTTP/1.1
/// only: HTTP/2 is always the native engine's, so the gateway has one HTTP/2 front door. A
/// request head must arrive within `header_timeout` of the connection or the last response.
pub fn http_builder(header_timeout: Duration) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    builder
}

/// A boxed per-request handler. Both server paths (hyper for HTTP/1.1, [`http2::server`] for HTTP/2)
/// hand it requests with a [`Body`], and the client's address. (The address is not put in the
/// request's extensions here: that costs three allocations, and only the few calls the gateway
/// answers itself read it. [`Frontend::serve`] adds it where it is read.)
pub type Handler = std::sync::Arc<
    dyn Fn(
            http::Request<Body>,
            SocketAddr,
        )
            -> Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>
        + Send
        + Sync,
>;

/// The [`Handler`] as the HTTP/2 engine's request handler: the engine's request body becomes
/// a [`Body`] like hyper's.
struct H2Handler(Handler);

impl http2::server::Handler for H2Handler {
    type Body = Body;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

    fn call(
        &self,
        request: http::Request<http2::server::RequestBody>,
        peer: SocketAddr,
    ) -> Self::Future {
        (self.0)(request.map(Body::new), peer)
    }
}

/// How long and how many: the listener's bounds on its clients.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// After shutdown, how long open calls may finish.
    pub drain: Duration,
    /// How long a client has to send a request head (see [`http_builder`], [`is_h2c`]).
    pub header_timeout: Duration,
    /// An HTTP/2 connection with no call for this long is closed (zero: never).
    pub idle_timeout: Duration,
    /// Client connections open at once; a connection accepted beyond it is closed at once.
    pub max_connections: usize,
}

/// Accepts connections until `shutdown` turns true, then lets open calls finish for up to
/// `limits.drain` (sending GOAWAY so clients stop opening new streams) before returning.
///
/// HTTP/2 (the h2c preface, or TLS with ALPN `h2`) is served by [`http2::server`]; anything
/// else (HTTP/1.1: gRPC-Web, CORS preflights, plain HTTP) by hyper-util's auto server.
///
/// With `workers`, each accepted connection is served on the next worker in turn (its socket
/// re-registered with that worker's I/O driver); without, on the current runtime.
pub async fn serve(
    listener: TcpListener,
    handler: Handler,
    mut shutdown: watch::Receiver<bool>,
    limits: Limits,
    tls: Option<Arc<ReloadingAcceptor>>,
    workers: Option<Workers>,
) {
    let Limits {
        drain,
        header_timeout,
        idle_timeout,
        max_connections,
    } = limits;
    let builder = Arc::new(http_builder(header_timeout));
    // Every connection task holds a clone; when all are gone, every connection has ended.
    let (open, mut all_closed) = mpsc::channel::<()>(1);
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
        // One sender clone per open connection, plus the loop's own.
        if open.strong_count() > max_connections {
            debug!(peer = %peer, max_connections, "connection limit reached; closing a new connection");
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let conn = Connection {
            peer,
            handler: handler.clone(),
            builder: builder.clone(),
            shutdown: shutdown.clone(),
            idle_timeout,
            _open: open.clone(),
        };
        // The TLS handshake runs in the connection's own task, so a slow or silent client
        // never holds up the accept loop. Each way of serving is boxed so that the task is only
        // as large as the way it takes (not the largest of the four).
        let acceptor = tls.as_ref().map(|t| t.acceptor());
        let serve = move |stream: TcpStream| async move {
            match acceptor {
                None => match tokio::time::timeout(header_timeout, is_h2c(&stream)).await {
                    Ok(Ok(Some(Speaks::Http2))) => Box::pin(conn.serve_h2(stream)).await,
                    Ok(Ok(Some(Speaks::Http1))) => Box::pin(conn.serve_hyper(stream)).await,
                    Ok(Ok(None)) => debug!(peer = %peer, "neither HTTP/2 nor HTTP/1.x; closing"),
                    Ok(Err(e)) => debug!(peer = %peer, error = %e, "client connection failed"),
                    Err(_) => debug!(peer = %peer, "no request within the header timeout"),
                },
                Some(acceptor) => {
                    // The server name is peeked first only to explain a refusal (see
                    // `client_hello`); rustls reads the same bytes.
                    let handshake = async {
                        let name = client_hello::peek_server_name(&stream).await;
                        (name, acceptor.accept(stream).await)
                    };
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, handshake).await {
                        Ok((_, Ok(tls))) if tls.get_ref().1.alpn_protocol() == Some(b"h2") => {
                            Box::pin(conn.serve_h2(tls)).await
                        }
                        Ok((_, Ok(tls))) => Box::pin(conn.serve_hyper(tls)).await,
                        Ok((name, Err(e))) => client_hello::log_handshake_failure(peer, &name, &e),
                        Err(_) => debug!(peer = %peer, "TLS handshake timed out"),
                    }
                }
            }
        };
        match &workers {
            Some(workers) => on_worker(workers.next(), stream, serve),
            None => drop(tokio::spawn(serve(stream))),
        }
    }
    drop(listener);
    drop(open);
    tokio::select! {
        _ = all_closed.recv() => info!("all connections drained"),
        _ = tokio::time::sleep(drain) => warn!("drain timeout reached; closing remaining connections"),
    }
}

/// Serves an accepted connection on `worker`. A socket is registered with the I/O driver of the
/// runtime that accepted it, so one handed to another worker moves there first (or every read
/// would be woken by the accepting thread).
fn on_worker<F, Fut>(worker: &tokio::runtime::Handle, stream: TcpStream, serve: F)
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    if tokio::runtime::Handle::try_current().is_ok_and(|h| h.id() == worker.id()) {
        drop(worker.spawn(serve(stream)));
        return;
    }
    let std = match stream.into_std() {
        Ok(std) => std,
        Err(e) => {
            debug!(error = %e, "cannot hand a connection to a worker");
            return;
        }
    };
    drop(worker.spawn(async move {
        match TcpStream::from_std(std) {
            Ok(stream) => serve(stream).await,
            Err(e) => debug!(error = %e, "cannot hand a connection to a worker"),
        }
    }));
}

/// What a connection task needs besides its stream.
struct Connection {
    peer: SocketAddr,
    handler: Handler,
    builder: Arc<auto::Builder<TokioExecutor>>,
    shutdown: watch::Receiver<bool>,
    idle_timeout: Duration,
    /// Dropped when the connection ends (see `serve`'s drain).
    _open: mpsc::Sender<()>,
}

impl Connection {
    async fn serve_h2<I>(self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let peer = self.peer;
        let served = http2::server::serve_connection(
            io,
            peer,
            H2Handler(self.handler),
            MAX_CONCURRENT_STREAMS,
            http2::conn::Config {
                idle_timeout: Some(self.idle_timeout),
                ..http2::server::config()
            },
            self.shutdown,
        );
        if let Err(e) = served.await {
            debug!(peer = %peer, error = %e, "client connection ended with an error");
        }
    }

    async fn serve_hyper<I>(mut self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (peer, handler) = (self.peer, self.handler);
        let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
            handler(req.map(Body::new), peer)
        });
        // Our HTTP/2 notes its reads for the idle spin itself; hyper's HTTP/1.1 cannot.
        let io = TokioIo::new(runtime::workers::Active(io));
        let conn = self.builder.serve_connection(io, service);
        tokio::pin!(conn);
        let draining = *self.shutdown.borrow_and_update();
        if draining {
            conn.as_mut().graceful_shutdown();
        }
        let result = tokio::select! {
            result = conn.as_mut() => result,
            _ = self.shutdown.changed(), if !draining => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            debug!(peer = %peer, error = %e, "client connection ended with an error");
        }
    }
}

/// What a plaintext client's first bytes say it speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Speaks {
    /// The HTTP/2 preface, whole.
    Http2,
    /// An HTTP/1.x request line (or one longer than [`REQUEST_LINE_PEEK`], for hyper to refuse).
    Http1,
}

/// Longest request line looked at before the connection is handed to hyper anyway (which
/// answers an overlong one itself).
const REQUEST_LINE_PEEK: usize = 8 * 1024;

/// Reads a plaintext client's first bytes without consuming them. `None` when the client closed
/// first or sent neither HTTP/2 nor HTTP/1.x (an invalid preface: RFC 9113 section 3.4 says to
/// close; a first line that is no HTTP/1.x request is one). A preface or request line that
/// arrives in pieces is waited for however slowly it comes (the caller bounds the wait with the
/// header timeout), so HTTP/2 is always served by the one engine.
async fn is_h2c(stream: &TcpStream) -> std::io::Result<Option<Speaks>> {
    let mut head = [0u8; 24];
    let preface = peek_until(stream, &mut head, |seen| {
        if !PREFACE.starts_with(seen) {
            Some(false)
        } else {
            (seen.len() == PREFACE.len()).then_some(true)
        }
    });
    match preface.await? {
        None => Ok(None),
        Some(true) => Ok(Some(Speaks::Http2)),
        Some(false) => {
            // On the heap, and only here: the connection's future keeps no 8 KiB buffer.
            let mut line = vec![0u8; REQUEST_LINE_PEEK];
            let request = peek_until(stream, &mut line, |seen| {
                let Some(end) = seen.iter().position(|&b| b == b'\n') else {
                    return (seen.len() == REQUEST_LINE_PEEK).then_some(Some(Speaks::Http1));
                };
                let line = seen.get(..end).unwrap_or_default();
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                let http1 = line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0");
                Some(http1.then_some(Speaks::Http1))
            });
            Ok(request.await?.flatten())
        }
    }
}

/// Peeks into `buf` until `decide` returns an answer for the bytes seen so far; `None` when the
/// client closes first. Polls with a growing pause: a slow client costs a few wake-ups a second.
async fn peek_until<T>(
    stream: &TcpStream,
    buf: &mut [u8],
    decide: impl Fn(&[u8]) -> Option<T>,
) -> std::io::Result<Option<T>> {
    let mut pause = Duration::from_millis(1);
    loop {
        let n = stream.peek(buf).await?;
        if n == 0 {
            return Ok(None);
        }
        if let Some(answer) = decide(buf.get(..n).unwrap_or_default()) {
            return Ok(Some(answer));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
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
