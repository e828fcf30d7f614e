//! The server side of the native HTTP/2: serves a client's connection (h2c prior knowledge, or
//! TLS with ALPN `h2`) on the shared connection core ([`super::conn`], server role).
//!
//! Receives the client's streams (decoded by the core's frame handling into `http::Request`
//! heads, see [`on_request_headers`]); hands each request with a [`RequestBody`] to the
//! [`Handler`], and writes the response back: HEADERS (with END_STREAM when the body is already
//! over: trailers-only gRPC answers), DATA as the client's windows allow, trailers.
//!
//! Shape, for speed: one task per connection polls the core (read, handle frames, write), takes
//! the streams the core accepted, and polls the calls (a `FuturesUnordered`): the handler's
//! future, then the response body. A call encodes its HEADERS, DATA and trailers straight into
//! the write queue under the connection lock; while the calls are polled, the task's own wake
//! is suppressed and it writes what they queued in the same poll, so calls that complete
//! together leave in one write.
//!
//! Cancellation: a client RST_STREAM before the response drops the handler's future (which
//! cancels the call at the part); after the response started, the pump stops and drops the
//! body. A response that ends before the request body does not reset the stream: the rest of
//! the request is discarded as it comes (its flow-control capacity released at once) until the
//! client ends or resets it; gRPC clients keep their request stream after the status (the
//! call's error is read from the response), and h2 did not reset while a part still held the
//! request body either.
//!
//! Rapid reset (CVE-2023-44487): a client that resets more than [`RESET_BUDGET`] streams it had
//! not yet been answered on within [`RESET_WINDOW`] gets GOAWAY(ENHANCE_YOUR_CALM) and the
//! connection is closed. (h2's `max_pending_accept_reset_streams(20)` bounded resets of streams
//! not yet accepted; here streams reset before the server took them are never handed to the
//! handler at all, and the budget bounds the resets of calls in progress, which are what cost
//! work at the parts.)

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use http_body::{Body as _, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::debug;

pub use super::conn::Error;
use super::conn::{
    self, Chunks, Config, Connection, SendEnd, Shared, State, Wake, Wakers, is_connection_specific,
    set_waker,
};
use super::frame::{self, ConnError, Reason};
use super::hpack;

/// What the server hands each request to: the application's side of the engine.
///
/// `call` gets the request head with its [`RequestBody`] and the client's address, and returns
/// the future of the response. The engine polls that future and then the response body on the
/// connection's own task; dropping either (the client reset the stream, the connection went)
/// cancels the call.
pub trait Handler: Send + 'static {
    /// The response body: data frames, then trailers. An error resets the stream (its text is
    /// logged at debug level, never sent).
    type Body: http_body::Body<Data = Bytes, Error: std::fmt::Display> + Send + Unpin + 'static;
    /// One call's response.
    type Future: Future<Output = Result<http::Response<Self::Body>, Infallible>>
        + Send
        + Unpin
        + 'static;

    /// Starts one call.
    fn call(&self, request: http::Request<RequestBody>, peer: SocketAddr) -> Self::Future;
}

/// A ping goes to the client this often; no answer within [`KEEPALIVE_TIMEOUT`] closes the
/// connection.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// See [`KEEPALIVE_INTERVAL`].
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Header list a client may send (SETTINGS_MAX_HEADER_LIST_SIZE), as hyper's server default.
pub const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;

/// A client connection with no call for this long is closed (GOAWAY, NO_ERROR): gRPC clients
/// reconnect when they next call. (nginx closes idle HTTP/2 connections after 75 s by default;
/// an SDK holding a session heartbeats every few seconds, so it is never idle.)
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Rapid-reset protection: resets of unanswered streams allowed per [`RESET_WINDOW`]. A gRPC
/// client cancels a call with a reset, so this is generous for real clients (hundreds of
/// cancellations per second) and tiny against a flood (hundreds of thousands per second).
pub const RESET_BUDGET: u32 = 1000;
/// See [`RESET_BUDGET`].
pub const RESET_WINDOW: Duration = Duration::from_secs(10);

/// Response body bytes a call takes from its body per turn before writing them.
const GATHER_BYTES: usize = 256 * 1024;

/// The connection settings we serve clients with.
pub fn config() -> Config {
    Config {
        initial_stream_window: 2 * 1024 * 1024,
        initial_conn_window: 8 * 1024 * 1024,
        max_frame_size: 64 * 1024,
        max_header_list_size: MAX_HEADER_LIST_SIZE,
        keepalive: Some((KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT)),
        idle_timeout: Some(IDLE_TIMEOUT),
    }
}

/// Serves one client connection until it closes, fails, stops answering pings, or (after
/// `shutdown` turned true and GOAWAY went out) its last open stream ends. `io`'s first bytes
/// are the client's preface (not yet consumed).
pub async fn serve_connection<I, H>(
    io: I,
    peer: SocketAddr,
    handler: H,
    max_streams: u32,
    config: Config,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Handler,
{
    let (shared, conn) = conn::start_server(io, config, max_streams);
    let turn = Arc::new(TurnWaker::default());
    let mut server = Server {
        conn,
        shared,
        calls: FuturesUnordered::new(),
        handler,
        peer,
        taken: Vec::new(),
        calls_waker: Waker::from(turn.clone()),
        turn,
    };
    if !*shutdown.borrow_and_update() {
        // The shutdown signal is polled only until its waker is registered and once it may
        // have changed (`has_changed` on a second receiver: an atomic load), not on every turn
        // of the connection, where `changed()` was a measurable share of a call at c=1.
        let probe = shutdown.clone();
        let mut changed = std::pin::pin!(shutdown.changed());
        let mut armed = false;
        let ended = poll_fn(|cx| {
            if let Poll::Ready(result) = server.poll(cx) {
                return Poll::Ready(Some(result));
            }
            // An error: the sender is gone, which also means the listener is shutting down.
            let may_have_changed = !armed || probe.has_changed().unwrap_or(true);
            if may_have_changed {
                armed = true;
                if changed.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(None);
                }
            }
            Poll::Pending
        })
        .await;
        if let Some(result) = ended {
            return result;
        }
    }
    server.goaway();
    poll_fn(|cx| server.poll(cx)).await
}

/// One connection's task: the core and the calls on it.
struct Server<I, H: Handler> {
    conn: Connection<I>,
    shared: Arc<Shared>,
    calls: FuturesUnordered<Call<H>>,
    handler: H,
    peer: SocketAddr,
    /// Requests taken from the core, kept between turns so taking them does not allocate.
    taken: Vec<(usize, http::Request<RequestBody>)>,
    /// The waker the calls are polled with (see [`TurnWaker`]).
    turn: Arc<TurnWaker>,
    calls_waker: Waker,
}

/// How many times one turn polls the calls again after `FuturesUnordered` yielded.
const CALL_REPOLLS: usize = 4;

/// The waker `FuturesUnordered` gets when the connection's task polls its calls.
///
/// `FuturesUnordered::poll_next` yields (wakes its parent and returns `Pending`) once it has
/// polled as many futures as it holds, and after two futures woke themselves. For the
/// connection's task that meant being polled again for nothing right after each turn: with one
/// call in flight, polling it once was enough. While the task polls its calls, a wake is only
/// noted here, and the task polls the calls again within its turn (bounded); any other wake
/// goes to the task.
#[derive(Default)]
struct TurnWaker {
    task: Mutex<Option<Waker>>,
    /// The connection's task is polling its calls now.
    polling: AtomicBool,
    /// Woken while `polling`.
    woken: AtomicBool,
}

impl TurnWaker {
    /// Keeps the task's waker to forward to.
    fn set_task(&self, cx: &Context<'_>) {
        let mut task = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if !task.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *task = Some(cx.waker().clone());
        }
    }

    fn begin(&self) {
        // A wake from before this poll has gone to the task already.
        self.woken.store(false, Ordering::SeqCst);
        self.polling.store(true, Ordering::SeqCst);
    }

    /// Ends a poll of the calls; whether something woke them meanwhile.
    fn end(&self) -> bool {
        // Store, then swap (and the waker: store, then load): a wake either sees `polling`
        // still set and its flag is seen here, or it sees it clear and goes to the task.
        self.polling.store(false, Ordering::SeqCst);
        self.woken.swap(false, Ordering::SeqCst)
    }

    fn forward(&self) {
        let task = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(w) = task.as_ref() {
            w.wake_by_ref();
        }
    }
}

impl std::task::Wake for TurnWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::SeqCst);
        if !self.polling.load(Ordering::SeqCst) {
            self.forward();
        }
    }
}

impl<I, H> Server<I, H>
where
    I: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    /// Graceful shutdown: GOAWAY(NO_ERROR) naming the last stream accepted; the open streams
    /// finish, then the core closes the connection.
    fn goaway(&mut self) {
        let wake = {
            let mut st = self.shared.lock();
            if st.local_goaway.is_some() || st.closed.is_some() {
                return;
            }
            let last = st.peer_last_id;
            st.local_goaway = Some(last);
            frame::put_goaway(st.write.scratch(), last, Reason::NO_ERROR, b"");
            st.wake_task()
        };
        if let Some(w) = wake {
            w.wake();
        }
    }

    /// Polls every call that is ready, again while polling them woke some (see
    /// [`TurnWaker`]), at most [`CALL_REPOLLS`] more times; then leaves a wake for the task.
    fn poll_calls(&mut self, cx: &mut Context<'_>) {
        self.turn.set_task(cx);
        let mut calls_cx = Context::from_waker(&self.calls_waker);
        for _ in 0..=CALL_REPOLLS {
            self.turn.begin();
            while let Poll::Ready(Some(())) = self.calls.poll_next_unpin(&mut calls_cx) {}
            if !self.turn.end() {
                return;
            }
        }
        cx.waker().wake_by_ref();
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        // Bounded: a busy connection yields to other tasks now and then, after 8 rounds or
        // once the core spent this turn's work budget (`conn::TURN_BUDGET`).
        self.conn.new_turn();
        for _ in 0..8 {
            if let Poll::Ready(result) = Pin::new(&mut self.conn).poll(cx) {
                return Poll::Ready(result);
            }
            let mut taken = std::mem::take(&mut self.taken);
            {
                let mut st = self.shared.lock();
                while let Some((idx, req)) = st.accepted.pop_front() {
                    if st.stream(idx).is_some_and(|s| s.error.is_none()) {
                        let body = RequestBody::new(self.shared.clone(), idx);
                        taken.push((idx, req.map(|()| body)));
                    } else {
                        // Reset before we took it: the handler never sees it.
                        st.drop_ref(idx);
                        st.drop_ref(idx);
                    }
                }
                // While the calls are polled, their wakes of this task are pointless: it
                // writes what they queue right after.
                st.task_woken = true;
            }
            for (idx, req) in taken.drain(..) {
                let call = self.handler.call(req, self.peer);
                self.calls.push(Call {
                    shared: self.shared.clone(),
                    idx,
                    state: CallState::Handler(call),
                    room: true,
                });
            }
            self.taken = taken;
            self.poll_calls(cx);
            if self.conn.spent() {
                // (The core left a wake for the task.)
                self.shared.lock().task_woken = false;
                return Poll::Pending;
            }
            let again = {
                let mut st = self.shared.lock();
                let again = !st.write.is_empty() || !st.accepted.is_empty();
                if !again {
                    st.task_woken = false;
                }
                again
            };
            if !again {
                return Poll::Pending;
            }
        }
        {
            self.shared.lock().task_woken = false;
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

// === new streams (called by the core, under the lock) ===

/// HEADERS on a stream the core does not know: a client opening a stream (odd id above every
/// earlier one), or trailers on a stream we already closed (ignored). Decodes the request into
/// an `http::Request` head and queues it in [`State::accepted`], or refuses / resets the stream.
pub(crate) fn on_request_headers(
    st: &mut State,
    decoder: &mut hpack::Decoder,
    stream: u32,
    block: &Bytes,
    end_stream: bool,
    wakers: &mut Wakers,
) -> Result<(), ConnError> {
    let _ = wakers;
    let max_list = st.config.max_header_list_size as usize;
    if stream.is_multiple_of(2) {
        return Err(ConnError {
            reason: Reason::PROTOCOL_ERROR,
            detail: "client opened an even stream id",
        });
    }
    if stream <= st.peer_last_id {
        // A stream we reset or refused lately: its trailers may still be in flight; decode
        // them anyway, to keep the HPACK table in step. Any other closed stream (ended, reset
        // by the peer, or an id the peer skipped) is the peer's error: RFC 9113 section 5.1.1
        // makes it a connection error (PROTOCOL_ERROR, as Go's server answers it).
        if !end_stream || !st.reset_ids.contains(stream) {
            return Err(ConnError {
                reason: Reason::PROTOCOL_ERROR,
                detail: "HEADERS on a closed stream, or a stream id not above the previous one",
            });
        }
        return match decoder.decode(block, max_list, |_, _| {}) {
            Ok(()) | Err(hpack::HpackError::ListTooLarge { .. }) => Ok(()),
            Err(e) => Err(conn::decode_error(&e)),
        };
    }
    st.peer_last_id = stream;
    let mut req = RequestDecoder::new();
    match decoder.decode(block, max_list, |n, v| req.field(n, v)) {
        Ok(()) => {}
        Err(hpack::HpackError::ListTooLarge { .. }) => {
            req.bad = Some("header list larger than SETTINGS_MAX_HEADER_LIST_SIZE");
        }
        Err(e) => return Err(conn::decode_error(&e)),
    }
    if st.local_goaway.is_some() || st.goaway.is_some() || st.closed.is_some() {
        refuse(st, stream, Reason::REFUSED_STREAM);
        return Ok(());
    }
    if st.active >= st.max_peer_streams {
        debug!(
            stream,
            "over SETTINGS_MAX_CONCURRENT_STREAMS; refusing the stream"
        );
        // (The client ignored our SETTINGS: its error.)
        st.peer_stream_error();
        refuse(st, stream, Reason::REFUSED_STREAM);
        return Ok(());
    }
    let head = match req.finish(&mut st.targets) {
        Ok(head) => head,
        Err(detail) => {
            debug!(stream, detail, "malformed request; resetting the stream");
            refuse(st, stream, Reason::PROTOCOL_ERROR);
            return Ok(());
        }
    };
    // (Well-formed: checked when decoded.)
    let expect_len = conn::content_length(head.headers());
    if end_stream && expect_len.is_some_and(|len| len > 0) {
        debug!(
            stream,
            "request ends before its content-length; resetting the stream"
        );
        refuse(st, stream, Reason::PROTOCOL_ERROR);
        return Ok(());
    }
    st.active += 1;
    st.budget -= conn::NEW_STREAM_COST;
    // Two handles: the call, and the request body.
    let idx = st.insert_stream_id(stream, 2);
    if let Some(s) = st.stream(idx) {
        s.head_received = true;
        s.recv_end = end_stream;
        s.expect_len = expect_len;
    }
    st.accepted.push_back((idx, head));
    Ok(())
}

/// Resets a stream before it was ever opened (refused, or malformed: PROTOCOL_ERROR, which
/// counts as the peer's error). Its in-flight frames are then ignored (see `ResetIds`).
fn refuse(st: &mut State, stream: u32, reason: Reason) {
    if reason == Reason::PROTOCOL_ERROR {
        st.peer_stream_error();
    }
    frame::put_rst_stream(st.write.scratch(), stream, reason);
    st.reset_ids.insert(stream);
}

/// A client reset stream `idx`: counts it against the rapid-reset budget unless it had been
/// answered already. Over the budget: a connection error (GOAWAY ENHANCE_YOUR_CALM).
pub(crate) fn count_reset(st: &mut State, idx: usize) -> Result<(), ConnError> {
    if st.stream(idx).is_none_or(|s| s.answered) {
        return Ok(());
    }
    let now = Instant::now();
    if now.duration_since(st.resets.0) > RESET_WINDOW {
        st.resets = (now, 0);
    }
    st.resets.1 += 1;
    if st.resets.1 > RESET_BUDGET {
        return Err(ConnError {
            reason: Reason::ENHANCE_YOUR_CALM,
            detail: "too many streams reset before their response",
        });
    }
    Ok(())
}

/// Pre-made names for the fields requests usually carry (no allocation, no parsing).
fn known_name(name: &[u8]) -> Option<HeaderName> {
    static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
    static GRPC_ENCODING: HeaderName = HeaderName::from_static("grpc-encoding");
    static GRPC_ACCEPT_ENCODING: HeaderName = HeaderName::from_static("grpc-accept-encoding");
    static VIAM_SID: HeaderName = HeaderName::from_static("viam-sid");
    static VIAM_CLIENT: HeaderName = HeaderName::from_static("viam-client");
    static X_GRPC_WEB: HeaderName = HeaderName::from_static("x-grpc-web");
    Some(match name {
        b"content-type" => header::CONTENT_TYPE,
        b"te" => header::TE,
        b"user-agent" => header::USER_AGENT,
        b"grpc-timeout" => GRPC_TIMEOUT.clone(),
        b"grpc-encoding" => GRPC_ENCODING.clone(),
        b"grpc-accept-encoding" => GRPC_ACCEPT_ENCODING.clone(),
        b"authorization" => header::AUTHORIZATION,
        b"viam-sid" => VIAM_SID.clone(),
        b"viam-client" => VIAM_CLIENT.clone(),
        b"x-grpc-web" => X_GRPC_WEB.clone(),
        b"content-length" => header::CONTENT_LENGTH,
        b"accept-encoding" => header::ACCEPT_ENCODING,
        b"accept" => header::ACCEPT,
        b"host" => header::HOST,
        b"origin" => header::ORIGIN,
        _ => return None,
    })
}

/// A request header block being decoded, or what was wrong with it (a stream error).
struct RequestDecoder {
    method: Option<Method>,
    scheme: Option<Bytes>,
    authority: Option<Bytes>,
    path: Option<Bytes>,
    headers: HeaderMap,
    regular: bool,
    bad: Option<&'static str>,
}

impl RequestDecoder {
    fn new() -> Self {
        Self {
            method: None,
            scheme: None,
            authority: None,
            path: None,
            // A reused map (see `maps`), else one with room for a gRPC request's fields.
            headers: super::maps::take_with_capacity(12),
            regular: false,
            bad: None,
        }
    }

    fn field(&mut self, name: Bytes, value: Bytes) {
        if self.bad.is_some() {
            return;
        }
        if let Some(pseudo) = name.strip_prefix(b":") {
            if self.regular {
                self.bad = Some("pseudo-header after a regular field");
                return;
            }
            let slot = match pseudo {
                b"method" => {
                    if self.method.is_some() {
                        self.bad = Some("duplicate :method");
                        return;
                    }
                    let method = match &value[..] {
                        b"POST" => Ok(Method::POST),
                        b"GET" => Ok(Method::GET),
                        other => Method::from_bytes(other),
                    };
                    match method {
                        Ok(m) => self.method = Some(m),
                        Err(_) => self.bad = Some("malformed :method"),
                    }
                    return;
                }
                b"scheme" => &mut self.scheme,
                b"authority" => &mut self.authority,
                b"path" => &mut self.path,
                _ => {
                    self.bad = Some("unknown pseudo-header in a request");
                    return;
                }
            };
            if slot.is_some() {
                self.bad = Some("duplicate pseudo-header");
            } else {
                *slot = Some(value);
            }
            return;
        }
        self.regular = true;
        let name = match known_name(&name) {
            Some(name) => name,
            None => match HeaderName::from_lowercase(&name) {
                Ok(name) => name,
                Err(_) => {
                    self.bad = Some("invalid or uppercase header name");
                    return;
                }
            },
        };
        if name == header::CONTENT_LENGTH {
            if value.is_empty() || !value.iter().all(u8::is_ascii_digit) || value.len() > 19 {
                self.bad = Some("malformed content-length");
                return;
            }
        } else if name == header::TE {
            if value != "trailers" {
                self.bad = Some("te other than \"trailers\"");
                return;
            }
        } else if name != header::HOST && is_connection_specific(&name) {
            self.bad = Some("connection-specific header field");
            return;
        }
        match HeaderValue::from_maybe_shared(value) {
            Ok(value) => {
                self.headers.append(name, value);
            }
            Err(_) => self.bad = Some("invalid header value"),
        }
    }

    fn finish(self, targets: &mut Targets) -> Result<http::Request<()>, &'static str> {
        if let Some(bad) = self.bad {
            return Err(bad);
        }
        let method = self.method.ok_or("missing :method")?;
        let path = self.path.ok_or("missing :path")?;
        // RFC 9113 section 8.3.1: every request but CONNECT carries :scheme.
        if self.scheme.is_none() && method != Method::CONNECT {
            return Err("missing :scheme");
        }
        if path.is_empty() {
            return Err("empty :path");
        }
        let mut parts = http::uri::Parts::default();
        if let Some(authority) = self.authority {
            let scheme = match self.scheme.as_deref() {
                None | Some(b"http") => Scheme::HTTP,
                Some(b"https") => Scheme::HTTPS,
                Some(other) => Scheme::try_from(other).map_err(|_| "malformed :scheme")?,
            };
            parts.scheme = Some(scheme);
            parts.authority = Some(targets.authority(&authority)?);
        }
        parts.path_and_query = Some(targets.path(&path)?);
        let uri = http::Uri::from_parts(parts).map_err(|_| "malformed request target")?;
        let mut req = http::Request::new(());
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.version_mut() = http::Version::HTTP_2;
        *req.headers_mut() = self.headers;
        Ok(req)
    }
}

/// Request targets parsed lately on this connection. A client calls the same few methods on
/// the same authority over and over, and http's parsers check every byte; a repeat costs a
/// comparison and a reference count instead. Entries
/// are parsed from copies, so they never pin a read buffer the raw strings may be slices of.
#[derive(Debug, Default)]
pub(crate) struct Targets {
    authority: Option<Authority>,
    /// Direct-mapped by `path_slot`.
    paths: [Option<PathAndQuery>; PATH_SLOTS],
}

/// A power of two: a few methods called in turn stay cached.
const PATH_SLOTS: usize = 4;

impl Targets {
    fn authority(&mut self, raw: &[u8]) -> Result<Authority, &'static str> {
        if let Some(a) = &self.authority
            && a.as_str().as_bytes() == raw
        {
            return Ok(a.clone());
        }
        let a = Authority::from_maybe_shared(Bytes::copy_from_slice(raw))
            .map_err(|_| "malformed :authority")?;
        self.authority = Some(a.clone());
        Ok(a)
    }

    fn path(&mut self, raw: &[u8]) -> Result<PathAndQuery, &'static str> {
        // The length and the last byte tell apart most method paths of one service.
        let slot = (raw.len() ^ usize::from(raw.last().copied().unwrap_or(0))) & (PATH_SLOTS - 1);
        if let Some(Some(p)) = self.paths.get(slot)
            && p.as_str().as_bytes() == raw
        {
            return Ok(p.clone());
        }
        let p = PathAndQuery::from_maybe_shared(Bytes::copy_from_slice(raw))
            .map_err(|_| "malformed :path")?;
        if let Some(entry) = self.paths.get_mut(slot) {
            *entry = Some(p.clone());
        }
        Ok(p)
    }
}

// === calls ===

/// One stream's call: the handler's future, then the response body pumped to the client.
/// Dropped before the response ended, the stream is reset (CANCEL).
struct Call<H: Handler> {
    shared: Arc<Shared>,
    idx: usize,
    state: CallState<H>,
    /// The stream's send buffer was empty when last seen (the body may give more).
    room: bool,
}

enum CallState<H: Handler> {
    Handler(H::Future),
    Body(H::Body),
    Done,
}

/// What a body had ready.
#[derive(Default)]
struct Gathered {
    data: Vec<Bytes>,
    /// `Some(None)`: ended without trailers; `Some(Some(_))`: ended with trailers.
    end: Option<Option<HeaderMap>>,
    failed: bool,
    /// The body is waiting (its waker registered).
    pending: bool,
}

impl Gathered {
    fn nothing(&self) -> bool {
        self.data.is_empty() && self.end.is_none() && !self.failed
    }
}

fn gather<B>(body: &mut B, cx: &mut Context<'_>, into: &mut Gathered)
where
    B: http_body::Body<Data = Bytes, Error: std::fmt::Display> + Unpin,
{
    let mut bytes = 0;
    while bytes < GATHER_BYTES {
        match Pin::new(&mut *body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    bytes += data.len();
                    if !data.is_empty() {
                        into.data.push(data);
                    }
                    if body.is_end_stream() {
                        into.end = Some(None);
                        return;
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        into.end = Some(Some(trailers));
                        return;
                    }
                }
            },
            Poll::Ready(Some(Err(error))) => {
                debug!(%error, "response body failed; resetting the stream");
                into.failed = true;
                return;
            }
            Poll::Ready(None) => {
                into.end = Some(None);
                return;
            }
            Poll::Pending => {
                into.pending = true;
                return;
            }
        }
    }
}

/// Encodes the response HEADERS into the write queue.
fn encode_response(st: &mut State, id: u32, head: &http::response::Parts, end_stream: bool) {
    let State {
        encoder,
        hbuf,
        write,
        peer_max_frame,
        ..
    } = st;
    hbuf.clear();
    encoder.begin_block(hbuf);
    encoder.encode(b":status", head.status.as_str().as_bytes(), false, hbuf);
    for (name, value) in &head.headers {
        if is_connection_specific(name) {
            continue;
        }
        encoder.encode(
            name.as_str().as_bytes(),
            value.as_bytes(),
            value.is_sensitive(),
            hbuf,
        );
    }
    frame::put_headers(write.scratch(), id, hbuf, end_stream, *peer_max_frame);
}

impl<H: Handler> Call<H> {
    /// Queues what a body gave (and the response HEADERS first, when `head` is given) under
    /// one lock. Returns whether the call is over (the response ended, or the stream is gone).
    fn commit(
        &mut self,
        head: Option<&http::response::Parts>,
        got: Gathered,
        cx: &mut Context<'_>,
    ) -> bool {
        let idx = self.idx;
        let mut wakers = Wakers::default();
        let ended = got.end.is_some();
        let over = {
            let mut st = self.shared.lock();
            let Some(s) = st.stream(idx) else {
                return true;
            };
            if s.error.is_some() || s.closed {
                return true;
            }
            // Registered again below while the call goes on.
            s.sender_running();
            let id = s.id;
            let header_end = got.data.is_empty() && matches!(got.end, Some(None)) && !got.failed;
            if let Some(head) = head {
                s.answered = true;
                encode_response(&mut st, id, head, header_end);
            }
            let Some(s) = st.stream(idx) else {
                return true;
            };
            if header_end && head.is_some() {
                s.send_end = SendEnd::Done;
            } else {
                for chunk in got.data {
                    s.send_buf.push_back(chunk);
                }
                if let Some(end) = got.end {
                    s.send_end = SendEnd::Pending(end);
                }
            }
            if got.failed {
                st.reset_stream(
                    idx,
                    Error::Local(Reason::CANCEL, "response body failed"),
                    Some(Reason::CANCEL),
                    &mut wakers,
                );
            } else {
                st.flush_stream(idx, usize::MAX);
                st.after_send(idx, &mut wakers);
            }
            wakers.extend(st.wake_task());
            match st.stream(idx) {
                Some(s) if !s.closed && s.error.is_none() && !ended => {
                    self.room = s.send_buf.is_empty();
                    set_waker(&mut s.send_waker, cx);
                    false
                }
                _ => true,
            }
        };
        wakers.wake_all();
        over
    }

    /// Whether the stream is still worth working on; registers for its reset (and for room in
    /// its send buffer). Sets `room`.
    fn check_stream(&mut self, cx: &mut Context<'_>) -> bool {
        let mut st = self.shared.lock();
        match st.stream(self.idx) {
            Some(s) if s.error.is_none() && !s.closed => {
                self.room = s.send_buf.is_empty();
                set_waker(&mut s.send_waker, cx);
                true
            }
            _ => false,
        }
    }

    fn poll_call(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match &mut self.state {
                CallState::Done => return Poll::Ready(()),
                CallState::Handler(call) => {
                    let resp = match Pin::new(call).poll(cx) {
                        Poll::Ready(Ok(resp)) => resp,
                        Poll::Ready(Err(never)) => match never {},
                        Poll::Pending => {
                            if self.check_stream(cx) {
                                return Poll::Pending;
                            }
                            debug!("client reset the stream before the response");
                            self.state = CallState::Done;
                            return Poll::Ready(());
                        }
                    };
                    let (mut head, mut body) = resp.into_parts();
                    // As hyper does: a body of known length gets its content-length (plain
                    // HTTP answers).
                    if let Some(len) = body.size_hint().exact()
                        && !head.headers.contains_key(header::CONTENT_LENGTH)
                    {
                        head.headers.insert(header::CONTENT_LENGTH, len.into());
                    }
                    let mut got = Gathered::default();
                    if body.is_end_stream() {
                        got.end = Some(None);
                    } else {
                        gather(&mut body, cx, &mut got);
                    }
                    let pending = got.pending;
                    let done = self.commit(Some(&head), got, cx);
                    super::maps::give(std::mem::take(&mut head.headers));
                    if done {
                        self.state = CallState::Done;
                        return Poll::Ready(());
                    }
                    self.state = CallState::Body(body);
                    if pending || !self.room {
                        return Poll::Pending;
                    }
                }
                CallState::Body(body) => {
                    if !self.room {
                        // Woken by room in the send buffer, a reset, or the body.
                        let mut st = self.shared.lock();
                        match st.stream(self.idx) {
                            Some(s) if s.error.is_none() && !s.closed => {
                                if s.send_buf.is_empty() {
                                    self.room = true;
                                } else {
                                    set_waker(&mut s.send_waker, cx);
                                    return Poll::Pending;
                                }
                            }
                            _ => {
                                drop(st);
                                self.state = CallState::Done;
                                return Poll::Ready(());
                            }
                        }
                    }
                    let mut got = Gathered::default();
                    gather(body, cx, &mut got);
                    if got.nothing() {
                        // Waiting for the body: still watch for a reset.
                        if self.check_stream(cx) {
                            return Poll::Pending;
                        }
                        debug!("client reset the stream during the response");
                        self.state = CallState::Done;
                        return Poll::Ready(());
                    }
                    let pending = got.pending;
                    if self.commit(None, got, cx) {
                        self.state = CallState::Done;
                        return Poll::Ready(());
                    }
                    if pending || !self.room {
                        return Poll::Pending;
                    }
                }
            }
        }
    }
}

impl<H: Handler> Future for Call<H> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.get_mut().poll_call(cx)
    }
}

impl<H: Handler> Drop for Call<H> {
    fn drop(&mut self) {
        // The handler's future or the body goes first (a part's stream is cancelled with it).
        self.state = CallState::Done;
        let mut wakers = Wakers::default();
        {
            let mut st = self.shared.lock();
            // Dropped before the response ended (the connection is going, or the handler's
            // future was dropped): the client learns the call is over.
            if let Some(s) = st.stream(self.idx)
                && !s.closed
                && matches!(s.send_end, SendEnd::Open)
            {
                st.reset_stream(
                    self.idx,
                    Error::Local(Reason::CANCEL, "call dropped"),
                    Some(Reason::CANCEL),
                    &mut wakers,
                );
                wakers.extend(st.wake_task());
            }
            st.drop_ref(self.idx);
        }
        wakers.wake_all();
    }
}

// === the request body ===

/// A request body straight off the client's stream: data as it arrives, then trailers.
/// Flow-control capacity goes back to the client only as data is taken from here, so a slow
/// consumer holds the client back. Dropped before the end, the rest of the body is discarded
/// as it arrives (the response may still go on).
pub struct RequestBody {
    shared: Option<Arc<Shared>>,
    idx: usize,
    /// Taken off the stream at its end in one go.
    data: Chunks,
    trailers: Option<HeaderMap>,
    /// Nothing more from the stream: what is left is in `data` and `trailers`.
    ended: bool,
    done: bool,
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestBody")
            .field("ended", &self.ended)
            .field("done", &self.done)
            .finish()
    }
}

impl RequestBody {
    fn new(shared: Arc<Shared>, idx: usize) -> Self {
        Self {
            shared: Some(shared),
            idx,
            data: Chunks::default(),
            trailers: None,
            ended: false,
            done: false,
        }
    }

    fn poll_stream(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let Some(shared) = self.shared.as_ref() else {
            self.ended = true;
            return Poll::Ready(None);
        };
        let idx = self.idx;
        let mut wake: Wake = None;
        let mut let_go = false;
        let polled = {
            let mut st = shared.lock();
            match st.stream(idx) {
                None => Poll::Ready(Some(Err(Error::Closed))),
                Some(s) if s.recv_end => {
                    // All of it is here: take it in one go and let go of the stream.
                    let mut data = std::mem::take(&mut s.recv_q);
                    self.trailers = s.trailers.take();
                    let len = data.len();
                    if len > 0 && st.release(idx, len) {
                        wake = st.wake_task();
                    }
                    self.ended = true;
                    let_go = true;
                    match data.pop_front() {
                        Some(first) => {
                            self.data = data;
                            Poll::Ready(Some(Ok(Frame::data(first))))
                        }
                        None => {
                            self.done = true;
                            Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
                        }
                    }
                }
                Some(s) => {
                    if let Some(data) = s.recv_q.pop_front() {
                        if st.release(idx, data.len()) {
                            wake = st.wake_task();
                        }
                        Poll::Ready(Some(Ok(Frame::data(data))))
                    } else if let Some(e) = &s.error {
                        let e = e.clone();
                        self.ended = true;
                        self.done = true;
                        let_go = true;
                        if matches!(e, Error::Reset(Reason::NO_ERROR)) {
                            Poll::Ready(None)
                        } else {
                            Poll::Ready(Some(Err(e)))
                        }
                    } else {
                        set_waker(&mut s.recv_waker, cx);
                        Poll::Pending
                    }
                }
            }
        };
        if let Some(w) = wake {
            w.wake();
        }
        if let_go {
            self.let_go();
        }
        polled
    }

    /// Drops the hold on the stream (after its end, or discarding the rest).
    fn let_go(&mut self) {
        let Some(shared) = self.shared.take() else {
            return;
        };
        let mut wake: Wake = None;
        {
            let mut st = shared.lock();
            let idx = self.idx;
            if let Some(s) = st.stream(idx)
                && !s.recv_end
                && !s.closed
            {
                s.recv_dropped = true;
                let unread = std::mem::take(&mut s.recv_q);
                let len = unread.len();
                if len > 0 && st.release(idx, len) {
                    wake = st.wake_task();
                }
            }
            st.drop_ref(idx);
        }
        if let Some(w) = wake {
            w.wake();
        }
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        self.let_go();
    }
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(data) = this.data.pop_front() {
            Poll::Ready(Some(Ok(Frame::data(data))))
        } else if this.ended {
            this.done = true;
            Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))))
        } else {
            let polled = this.poll_stream(cx);
            if matches!(polled, Poll::Ready(None)) {
                this.done = true;
            }
            polled
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || (self.ended && self.data.is_empty() && self.trailers.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        if self.is_end_stream() {
            SizeHint::with_exact(0)
        } else {
            SizeHint::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Count(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A wake while the calls are polled is noted, not sent to the task (the task polls them
    /// again itself); any other wake reaches the task.
    #[test]
    fn the_turn_waker_notes_wakes_during_a_poll_and_forwards_the_rest() {
        let count = Arc::new(Count::default());
        let task = Waker::from(count.clone());
        let turn = Arc::new(TurnWaker::default());
        let waker = Waker::from(turn.clone());
        turn.set_task(&Context::from_waker(&task));

        turn.begin();
        assert!(!turn.end(), "nothing woke the calls");

        turn.begin();
        waker.wake_by_ref();
        waker.wake_by_ref();
        assert!(turn.end(), "woken during the poll");
        assert_eq!(count.0.load(Ordering::SeqCst), 0, "not forwarded");

        waker.wake_by_ref();
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            1,
            "outside a poll: forwarded"
        );
        turn.begin();
        assert!(
            !turn.end(),
            "a forwarded wake does not count for the next poll"
        );

        // Woken from another thread while the calls are polled: seen either by `end` or by
        // the task, never lost.
        for _ in 0..200 {
            let before = count.0.load(Ordering::SeqCst);
            turn.begin();
            let remote = waker.clone();
            let t = std::thread::spawn(move || remote.wake());
            std::thread::yield_now();
            let noted = turn.end();
            t.join().unwrap();
            let forwarded = count.0.load(Ordering::SeqCst) > before;
            assert!(noted || forwarded, "a wake was lost");
        }
    }

    /// The target cache gives what parsing gives: for repeats, for paths sharing a slot, and
    /// it keeps refusing malformed targets.
    #[test]
    fn targets_parse_like_http() {
        let mut t = Targets::default();
        let paths: Vec<String> = (0..20)
            .map(|i| format!("/viam.robot.v1.RobotService/M{}?q={}", "x".repeat(i % 7), i))
            .collect();
        for _ in 0..3 {
            for p in &paths {
                let got = t.path(p.as_bytes()).unwrap();
                assert_eq!(got, PathAndQuery::from_maybe_shared(p.clone()).unwrap());
                assert_eq!(got.as_str(), p);
            }
        }
        assert!(t.path(b"/a b").is_err());
        assert!(t.path(b"/a b").is_err());
        for a in ["part-1.local:8080", "127.0.0.1:1", "part-1.local:8080"] {
            assert_eq!(t.authority(a.as_bytes()).unwrap().as_str(), a);
        }
        assert!(t.authority(b"a b").is_err());
        assert_eq!(t.authority(b"x:1").unwrap().as_str(), "x:1");
    }
}
