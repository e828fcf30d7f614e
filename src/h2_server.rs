//! Stage `listener`, HTTP/2 half: serves a client's HTTP/2 connection (h2c prior knowledge, or
//! TLS with ALPN `h2`) with the native HTTP/2 engine ([`crate::http2::server`]), the same engine
//! that dials parts.
//!
//! Receives an accepted (and, for TLS, handshaken) stream whose first bytes are the HTTP/2
//! preface; hands each request, an `http::Request<Body>` and the client's address (which the
//! frontend stores as [`PeerAddr`] only for the calls that read it), to the same
//! [`Handler`] as the HTTP/1.1 path (the [`Frontend`](crate::listener::Frontend), so gRPC goes
//! to the one call stack and gRPC-Web and plain HTTP are served as before), and writes the
//! response back on the stream: headers, then the body as the client's flow control allows, then
//! trailers.
//!
//! Why not hyper's server (or h2's): per call they cost a connection-task dispatch, a stream
//! state machine, general-purpose HPACK and priority queues (see `bench/README.md`). Here a call
//! is one future, polled by the connection's own task: the handler's future, then the body.
//!
//! Cancellation: a client RST_STREAM before the response drops the handler's future (and with it
//! the part's stream, which is then reset); after the response started, the pump stops and drops
//! the body. Drain: when `shutdown` turns true the connection sends GOAWAY and keeps serving the
//! streams already open until they finish.
//!
//! [`PeerAddr`]: crate::auth::PeerAddr

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::http2::server;
use crate::listener::{Handler, MAX_CONCURRENT_STREAMS};

/// The HTTP/2 preface every h2c client sends first (RFC 9113 section 3.4).
pub const PREFACE: &[u8; 24] = crate::http2::frame::PREFACE;

/// Serves one client connection until it closes, fails, stops answering pings, or (after
/// `shutdown` turned true and GOAWAY went out) its last open stream ends.
///
/// Settings: SETTINGS_MAX_CONCURRENT_STREAMS [`MAX_CONCURRENT_STREAMS`], 2 MiB stream windows,
/// an 8 MiB connection window, 64 KiB frames, a 16 KiB header list; a keepalive PING every 20 s
/// (no answer within 10 s closes the connection).
pub async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    handler: Handler,
    shutdown: watch::Receiver<bool>,
) -> Result<(), server::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    server::serve_connection(
        io,
        peer,
        handler,
        MAX_CONCURRENT_STREAMS,
        server::config(),
        shutdown,
    )
    .await
}
