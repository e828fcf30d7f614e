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

use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
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
use crate::body::H2Body;
use crate::listener::{Handler, MAX_CONCURRENT_STREAMS};

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
    let mut req = req.map(|recv| Body::new(H2Body::new(recv)));
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

// === h2 plumbing (the client-facing side stays on h2 for now) ===

/// Streams the rest of a body to the peer, one chunk at a time as the stream gets send capacity
/// (the receiver's flow control is the sender's backpressure), until the body ends, the peer
/// resets the stream, or the body fails (the stream is then reset). (A response body to a client; request
/// bodies to parts have the native engine's pump, `pool::RequestPump`.)
pub(crate) struct Pump {
    body: Body,
    tx: h2::SendStream<Bytes>,
    /// A chunk waiting for send capacity, and whether it ends the stream.
    pending: Option<(Bytes, bool)>,
}

impl Pump {
    /// Pipes `body` into `tx` (the headers are already sent, without END_STREAM).
    pub(crate) fn new(body: Body, tx: h2::SendStream<Bytes>) -> Self {
        Self {
            body,
            tx,
            pending: None,
        }
    }
}

impl Future for Pump {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            // Registered for RST_STREAM while waiting for the body or for capacity.
            if let Poll::Ready(reason) = this.tx.poll_reset(cx) {
                debug!(?reason, "peer reset the stream");
                return Poll::Ready(());
            }
            if let Some((chunk, eos)) = this.pending.take() {
                while this.tx.capacity() == 0 {
                    match this.tx.poll_capacity(cx) {
                        Poll::Ready(Some(Ok(0))) => {}
                        Poll::Ready(Some(Ok(_))) => break,
                        Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(()),
                        Poll::Pending => {
                            this.pending = Some((chunk, eos));
                            return Poll::Pending;
                        }
                    }
                }
                if this.tx.send_data(chunk, eos).is_err() || eos {
                    return Poll::Ready(());
                }
                continue;
            }
            match ready!(Pin::new(&mut this.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    // Never an empty DATA frame without END_STREAM (see body.rs).
                    Ok(chunk) if chunk.is_empty() => {}
                    Ok(chunk) => {
                        // Claim a little capacity, not the whole chunk: h2 raises the claim to
                        // what is buffered, and a large claim per waiting stream could starve
                        // the others on the connection window (as hyper does, hyper#4003).
                        this.tx.reserve_capacity(1);
                        this.pending = Some((chunk, this.body.is_end_stream()));
                    }
                    Err(frame) => {
                        this.tx.reserve_capacity(0);
                        if let Ok(trailers) = frame.into_trailers() {
                            let _ = this.tx.send_trailers(trailers);
                            return Poll::Ready(());
                        }
                    }
                },
                Some(Err(status)) => {
                    debug!(error = %status.message(), "body failed; resetting the stream");
                    this.tx.send_reset(h2::Reason::CANCEL);
                    return Poll::Ready(());
                }
                None => {
                    // Ended without trailers: END_STREAM on an empty DATA frame (allowed; only
                    // empty frames *without* END_STREAM count against a flood limit).
                    let _ = this.tx.send_data(Bytes::new(), true);
                    return Poll::Ready(());
                }
            }
        }
    }
}

/// Pings the part every `interval`; returns when a ping goes unanswered for `timeout` (or the
/// connection fails), which ends the connection task and so the connection.
pub(crate) async fn keepalive(pings: Option<h2::PingPong>, interval: Duration, timeout: Duration) {
    let Some(mut pings) = pings else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(interval).await;
        match tokio::time::timeout(timeout, pings.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                debug!(error = %e, "keepalive ping failed");
                return;
            }
            Err(_) => return,
        }
    }
}
