//! Stage `listener`, HTTP/2 half: serves a client's HTTP/2 connection (h2c prior knowledge, or
//! TLS with ALPN `h2`) with `h2::server` directly, the way parts are dialed with `h2::client`.
//!
//! Receives an accepted (and, for TLS, handshaken) stream whose first bytes are the HTTP/2
//! preface; hands each request, as an `http::Request<Body>` carrying [`PeerAddr`], to the same
//! [`Handler`] as the HTTP/1.1 path (the [`Frontend`](crate::listener::Frontend), so gRPC goes
//! to the one call stack and gRPC-Web and plain HTTP are served as before), and writes the
//! response back on the stream: headers, then the body as the client's flow control allows, then
//! trailers.
//!
//! Why not hyper's server: per call it costs a connection-task dispatch, a stream task with its
//! own state machine and a body pipe (see `bench/README.md`). Here a call is one future, polled
//! by the connection's own task: the handler's future, then the pipe.
//!
//! Cancellation: a client RST_STREAM before the response drops the handler's future (and with it
//! the part's stream, which h2 then resets); after the response started, the pipe stops and drops
//! the body. Drain: when `shutdown` turns true the connection sends GOAWAY and keeps serving the
//! streams already open until they finish.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use http::header;
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tracing::debug;

use crate::auth::PeerAddr;
use crate::body::PartBody;
use crate::listener::{Handler, MAX_CONCURRENT_STREAMS};
use crate::pool::{Pump, keepalive};

type Body = tonic::body::Body;

/// The HTTP/2 preface every h2c client sends first (RFC 9113 section 3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A ping goes to the client this often; no answer within [`KEEPALIVE_TIMEOUT`] closes the
/// connection (as hyper's `keep_alive_interval` / `keep_alive_timeout` did).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Header block a client may send, as hyper's server default (16 KiB).
const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;

/// Streams a client may reset before the server accepts them (hyper's default).
const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;

fn builder() -> h2::server::Builder {
    let mut builder = h2::server::Builder::new();
    builder
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .initial_window_size(2 * 1024 * 1024)
        .initial_connection_window_size(8 * 1024 * 1024)
        .max_frame_size(64 * 1024)
        .max_send_buffer_size(1024 * 1024)
        .max_header_list_size(MAX_HEADER_LIST_SIZE)
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESET_STREAMS);
    builder
}

/// Serves one client connection until it closes, fails, stops answering pings, or (after
/// `shutdown` turned true and GOAWAY went out) its last open stream ends.
pub async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    handler: Handler,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), h2::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut conn = builder().handshake::<_, Bytes>(io).await?;
    let pings = keepalive(conn.ping_pong(), KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT);
    tokio::pin!(pings);
    let mut draining = *shutdown.borrow_and_update();
    if draining {
        conn.graceful_shutdown();
    }
    // The connection's calls run inside its task rather than one spawned task each: a response
    // from a part then wakes one task, which writes it and flushes the connection in the same
    // poll, and calls that complete together leave in one write.
    let mut calls = FuturesUnordered::new();
    loop {
        tokio::select! {
            next = conn.accept() => match next {
                Some(Ok((req, respond))) => {
                    calls.push(serve_stream(req, respond, peer, handler.clone()));
                }
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            },
            Some(()) = calls.next(), if !calls.is_empty() => {}
            _ = shutdown.changed(), if !draining => {
                // Also when the sender is gone: either way the listener is shutting down.
                draining = true;
                conn.graceful_shutdown();
            }
            () = &mut pings => {
                debug!(peer = %peer, "keepalive ping unanswered; closing the client connection");
                return Ok(());
            }
        }
    }
}

/// One request: the handler's answer, then its body piped to the client.
async fn serve_stream(
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    peer: SocketAddr,
    handler: Handler,
) {
    let mut req = req.map(|recv| Body::new(PartBody::new(recv)));
    req.extensions_mut().insert(PeerAddr(peer));
    let call = handler(req);
    let resp = tokio::select! {
        biased;
        resp = call => match resp {
            Ok(resp) => resp,
            Err(never) => match never {},
        },
        reason = poll_fn(|cx| respond.poll_reset(cx)) => {
            debug!(peer = %peer, ?reason, "client reset the stream before the response");
            return;
        }
    };
    let (mut head, body) = resp.into_parts();
    // As hyper does: a body of known length gets its content-length (plain HTTP answers).
    if let Some(len) = body.size_hint().exact()
        && !head.headers.contains_key(header::CONTENT_LENGTH)
    {
        head.headers.insert(header::CONTENT_LENGTH, len.into());
    }
    let end = body.is_end_stream();
    match respond.send_response(http::Response::from_parts(head, ()), end) {
        Ok(tx) if !end => Pump::new(body, tx).await,
        Ok(_) => {}
        Err(e) => debug!(peer = %peer, error = %e, "could not send response headers"),
    }
}
