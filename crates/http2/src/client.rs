//! The client side of the native HTTP/2, as the pool uses it: open a stream with the request
//! head and whatever of its body is ready in one step, await the response head, read the body,
//! and pump a still-streaming request body with backpressure.
//!
//! Receives `http` request heads and `Bytes` bodies from the pool; hands back `http` responses
//! whose body ([`RecvBody`]) is an `http_body::Body` of the part's data and trailers.
//!
//! One call costs: one lock to open the stream and queue HEADERS + DATA (+ END_STREAM) with one
//! wake of the connection task; one lock per response poll (a unary response that arrived whole
//! is taken in one go, data and trailers included, and the stream let go of at once).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::hooks::AnswerDue;

use super::conn::{
    self, Chunks, SendEnd, Shared, State, Wakers, is_connection_specific, set_waker,
};
pub use super::conn::{Config, Connection, Error};
use super::frame::{self, Reason};

/// Starts HTTP/2 over an established connection to a server: returns the handle to send
/// requests with and the connection future to spawn (it ends when the connection does).
/// Nothing is awaited here: the preface and our SETTINGS are the first bytes the connection
/// task writes, and the first request waits for the server's SETTINGS.
pub fn handshake<I>(io: I, config: Config) -> (SendRequest, Connection<I>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (shared, conn) = conn::start(io, config);
    (SendRequest { shared }, conn)
}

/// Sends requests on one connection. Cheap to clone; the connection closes (GOAWAY) once every
/// handle and every stream is gone.
pub struct SendRequest {
    shared: Arc<Shared>,
}

impl Clone for SendRequest {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for SendRequest {
    fn drop(&mut self) {
        let waker = {
            let mut st = self.shared.lock();
            st.senders = st.senders.saturating_sub(1);
            if st.senders == 0 {
                st.wake_task()
            } else {
                None
            }
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl std::fmt::Debug for SendRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendRequest")
            .field("accepting", &self.is_accepting())
            .finish()
    }
}

/// How a request body ends, as far as known when the request is sent.
#[derive(Debug, Clone, Copy)]
pub enum End<'a> {
    /// The body goes on: a [`SendStream`] comes back to send the rest.
    Open,
    /// The data given is the whole body.
    Done,
    /// The data given is the whole body, then these trailers.
    Trailers(&'a HeaderMap),
}

impl SendRequest {
    /// Whether the connection still takes new streams (false after GOAWAY, once closed, or
    /// when stream ids ran out).
    pub fn is_accepting(&self) -> bool {
        self.shared.is_accepting()
    }

    /// Resolves once the connection stops taking new streams. One waiter at a time.
    pub fn poll_draining(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = self.shared.lock();
        if st.refusal().is_some() {
            return Poll::Ready(());
        }
        set_waker(&mut st.drain_waker, cx);
        Poll::Pending
    }

    /// Resolves once the connection stops taking new streams.
    pub fn draining(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| self.poll_draining(cx))
    }

    /// Whether the connection stopped taking new streams in order: the server sent GOAWAY (it
    /// may have closed the connection since) or the stream ids ran out. False while it takes
    /// streams, and when it broke (lost, keepalive unanswered) without a GOAWAY.
    pub fn went_away(&self) -> bool {
        self.shared.lock().went_away()
    }

    /// Opens a stream for `head` (method, URI with scheme and authority, headers) and queues
    /// its HEADERS, the `data` chunks and, per `end`, END_STREAM or trailers, all in one write
    /// of the connection task. Data beyond the server's windows is buffered and sent as the
    /// windows open, so this never waits for flow control; it waits only for a stream slot
    /// when the server's SETTINGS_MAX_CONCURRENT_STREAMS are in use (and, on a fresh
    /// connection, for the server's first SETTINGS).
    ///
    /// Fails with a refused error ([`Error::is_refused`]) when the connection takes no new
    /// streams; nothing was sent then.
    pub fn send_request<'a, D>(
        &'a self,
        head: &'a http::request::Parts,
        data: D,
        end: End<'a>,
    ) -> Opening<'a, D>
    where
        D: IntoIterator<Item = Bytes>,
    {
        Opening {
            shared: &self.shared,
            head,
            data: Some(data),
            end,
            waiter: None,
        }
    }
}

/// A request waiting to open its stream (see [`SendRequest::send_request`]).
pub struct Opening<'a, D> {
    shared: &'a Arc<Shared>,
    head: &'a http::request::Parts,
    data: Option<D>,
    end: End<'a>,
    /// Our place in the queue for a stream slot.
    waiter: Option<u64>,
}

impl<D> Unpin for Opening<'_, D> {}

impl<D> Future for Opening<'_, D>
where
    D: IntoIterator<Item = Bytes>,
{
    type Output = Result<(ResponseFuture, Option<SendStream>), Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut wakers = Wakers::default();
        let result = {
            let mut st = this.shared.lock();
            this.try_open(&mut st, cx, &mut wakers)
        };
        wakers.wake_all();
        result
    }
}

impl<D> Opening<'_, D>
where
    D: IntoIterator<Item = Bytes>,
{
    fn try_open(
        &mut self,
        st: &mut State,
        cx: &mut Context<'_>,
        wakers: &mut Wakers,
    ) -> Poll<Result<(ResponseFuture, Option<SendStream>), Error>> {
        if let Some(refused) = st.refusal() {
            if let Some(id) = self.waiter.take() {
                st.cancel_waiter(id, wakers);
            }
            return Poll::Ready(Err(refused));
        }
        let slot = match self.waiter {
            None => st.try_reserve(),
            Some(id) => st.claim_grant(id),
        };
        if !slot {
            match self.waiter {
                None => self.waiter = Some(st.enqueue_waiter(cx.waker())),
                Some(id) => st.update_waiter(id, cx.waker()),
            }
            return Poll::Pending;
        }
        self.waiter = None;
        let streaming = matches!(self.end, End::Open);
        let (idx, id) = st.insert_stream(1 + u8::from(streaming));
        if let Some(s) = st.stream(idx) {
            for chunk in self.data.take().into_iter().flatten() {
                if !chunk.is_empty() {
                    s.send_buf.push_back(chunk);
                }
            }
            // A body that is over and empty still ends with an empty DATA frame, not with
            // END_STREAM on the HEADERS: legal either way, but grpc-go servers before 2026 never
            // end `Recv()` on the latter, and nginx, HAProxy and Envoy forward the DATA frame.
            s.send_end = match self.end {
                End::Open => SendEnd::Open,
                End::Done => SendEnd::Pending(None),
                End::Trailers(t) => SendEnd::Pending(Some(t.clone())),
            };
        }
        encode_request(st, id, self.head);
        st.flush_stream(idx, usize::MAX);
        wakers.extend(st.wake_task());
        let shared = self.shared.clone();
        let send = streaming.then(|| SendStream {
            shared: shared.clone(),
            idx,
        });
        let recv = RecvRef {
            shared,
            idx,
            live: true,
        };
        let response = ResponseFuture {
            stream: recv,
            awaited: Some(AnswerDue::new()),
        };
        Poll::Ready(Ok((response, send)))
    }
}

impl<D> Drop for Opening<'_, D> {
    fn drop(&mut self) {
        if let Some(id) = self.waiter.take() {
            let mut wakers = Wakers::default();
            self.shared.lock().cancel_waiter(id, &mut wakers);
            wakers.wake_all();
        }
    }
}

/// Encodes the request's HEADERS (pseudo-headers first) into the write queue, never with
/// END_STREAM: a request's end is always a DATA frame or trailers (see `send_request`).
fn encode_request(st: &mut State, id: u32, head: &http::request::Parts) {
    let State {
        encoder,
        hbuf,
        write,
        peer_max_frame,
        ..
    } = st;
    hbuf.clear();
    encoder.begin_block(hbuf);
    encoder.encode(b":method", head.method.as_str().as_bytes(), false, hbuf);
    encoder.encode(
        b":scheme",
        head.uri.scheme_str().unwrap_or("http").as_bytes(),
        false,
        hbuf,
    );
    if let Some(authority) = head.uri.authority() {
        encoder.encode(b":authority", authority.as_str().as_bytes(), false, hbuf);
    }
    let path = head.uri.path_and_query().map_or("/", |p| p.as_str());
    encoder.encode(b":path", path.as_bytes(), false, hbuf);
    for (name, value) in &head.headers {
        if is_connection_specific(name) {
            continue;
        }
        if name == http::header::TE && value != "trailers" {
            continue;
        }
        let never_index = value.is_sensitive()
            || name == http::header::AUTHORIZATION
            || name == http::header::PROXY_AUTHORIZATION
            || name == http::header::COOKIE;
        encoder.encode(
            name.as_str().as_bytes(),
            value.as_bytes(),
            never_index,
            hbuf,
        );
    }
    frame::put_headers(write.scratch(), id, hbuf, false, *peer_max_frame);
}

/// The receiving half's hold on its stream: dropped before the response ended (and with no
/// request body still streaming), it resets the stream (CANCEL), so the server sees the call
/// cancelled.
struct RecvRef {
    shared: Arc<Shared>,
    idx: usize,
    /// False once let go of under a lock already held.
    live: bool,
}

impl Drop for RecvRef {
    fn drop(&mut self) {
        if !self.live {
            return;
        }
        let mut wakers = Wakers::default();
        {
            let mut st = self.shared.lock();
            if st.abandon(self.idx, true, &mut wakers) {
                wakers.extend(st.wake_task());
            }
        }
        wakers.wake_all();
    }
}

/// The response head to come. Dropped before it resolves, the stream is reset (CANCEL).
pub struct ResponseFuture {
    stream: RecvRef,
    /// Lets this worker wait awake for the head (`gateway.answer_spin`); let go when it comes.
    awaited: Option<AnswerDue>,
}

impl Future for ResponseFuture {
    type Output = Result<http::Response<RecvBody>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let idx = this.stream.idx;
        let mut wake = None;
        let polled = {
            let mut st = this.stream.shared.lock();
            let Some(s) = st.stream(idx) else {
                return Poll::Ready(Err(Error::Closed));
            };
            if let Some(head) = s.head.take() {
                let body = if s.recv_end {
                    // The whole response is here (a unary call, usually): take it all and let
                    // go of the stream now, so the body needs no lock any more.
                    let data = std::mem::take(&mut s.recv_q);
                    let trailers = s.trailers.take();
                    let len = data.len();
                    if st.release(idx, len) {
                        wake = st.wake_task();
                    }
                    this.stream.live = false;
                    st.drop_ref(idx);
                    RecvBody {
                        stream: None,
                        data,
                        trailers,
                        ended: true,
                        done: false,
                    }
                } else {
                    RecvBody {
                        stream: None,
                        data: Chunks::default(),
                        trailers: None,
                        ended: false,
                        done: false,
                    }
                };
                Poll::Ready(Ok(head.map(|()| body)))
            } else if let Some(e) = &s.error {
                Poll::Ready(Err(e.clone()))
            } else {
                set_waker(&mut s.recv_waker, cx);
                Poll::Pending
            }
        };
        if let Some(w) = wake {
            w.wake();
        }
        if polled.is_ready() {
            this.awaited = None;
        }
        match polled {
            Poll::Ready(Ok(mut resp)) => {
                if !resp.body().ended {
                    // Hand the stream over to the body.
                    let stream = RecvRef {
                        shared: this.stream.shared.clone(),
                        idx,
                        live: true,
                    };
                    this.stream.live = false;
                    resp.body_mut().stream = Some(stream);
                }
                Poll::Ready(Ok(resp))
            }
            other => other,
        }
    }
}

/// A response body off a stream: data as the server sends it, then trailers. Flow-control
/// capacity goes back to the server only as data is taken from here, so a slow reader holds
/// the server back. A reset before END_STREAM fails it, RST_STREAM(NO_ERROR) too: RFC 9113
/// section 8.1 allows that one only after a complete response (which then reads to its end).
/// Dropped before the end, the stream is reset (CANCEL).
pub struct RecvBody {
    stream: Option<RecvRef>,
    /// Data already taken off the stream.
    data: Chunks,
    trailers: Option<HeaderMap>,
    /// The stream has nothing more: what is left is in `data` and `trailers`.
    ended: bool,
    done: bool,
}

impl std::fmt::Debug for RecvBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBody")
            .field("ended", &self.ended)
            .field("done", &self.done)
            .finish()
    }
}

impl RecvBody {
    /// A body with nothing in it (tests, placeholders).
    pub fn empty() -> Self {
        Self {
            stream: None,
            data: Chunks::default(),
            trailers: None,
            ended: true,
            done: true,
        }
    }

    fn poll_stream(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let Some(stream) = self.stream.as_mut() else {
            self.ended = true;
            return Poll::Ready(None);
        };
        let idx = stream.idx;
        let mut wake = None;
        let polled = {
            let mut st = stream.shared.lock();
            match st.stream(idx) {
                None => Poll::Ready(Some(Err(Error::Closed))),
                Some(s) => {
                    if let Some(data) = s.recv_q.pop_front() {
                        let ended = s.recv_q.is_empty() && s.recv_end;
                        if ended {
                            self.trailers = s.trailers.take();
                        }
                        if st.release(idx, data.len()) {
                            wake = st.wake_task();
                        }
                        if ended {
                            self.ended = true;
                            stream.live = false;
                            st.drop_ref(idx);
                        }
                        Poll::Ready(Some(Ok(Frame::data(data))))
                    } else if s.recv_end {
                        let trailers = s.trailers.take();
                        self.ended = true;
                        self.done = trailers.is_none();
                        stream.live = false;
                        st.drop_ref(idx);
                        Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))))
                    } else if let Some(e) = &s.error {
                        let e = e.clone();
                        self.ended = true;
                        self.done = true;
                        // The reset stream is closed: nothing to cancel.
                        stream.live = false;
                        st.drop_ref(idx);
                        Poll::Ready(Some(Err(e)))
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
        if self.ended {
            self.stream = None;
        }
        polled
    }
}

impl http_body::Body for RecvBody {
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
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if this.ended {
            this.done = true;
            return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
        }
        let polled = this.poll_stream(cx);
        if matches!(polled, Poll::Ready(None)) {
            this.done = true;
        }
        polled
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

/// The sending half of a stream whose request body was still streaming when it opened.
/// Dropped while the response is no longer read either, the stream is reset (CANCEL).
pub struct SendStream {
    shared: Arc<Shared>,
    idx: usize,
}

impl SendStream {
    /// Ready when the stream can take another chunk: what was sent before has left for the
    /// server's windows (so at most one chunk waits for flow control). Fails when the stream
    /// was reset or the connection lost.
    pub fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let mut st = self.shared.lock();
        let Some(s) = st.stream(self.idx) else {
            return Poll::Ready(Err(Error::Closed));
        };
        if let Some(e) = &s.error {
            return Poll::Ready(Err(e.clone()));
        }
        if s.closed || matches!(s.send_end, SendEnd::Done) {
            return Poll::Ready(Err(Error::Closed));
        }
        if s.send_buf.is_empty() {
            return Poll::Ready(Ok(()));
        }
        set_waker(&mut s.send_waker, cx);
        Poll::Pending
    }

    /// Ready with the reason once the stream was reset or closed; registers for it otherwise.
    pub fn poll_reset(&mut self, cx: &mut Context<'_>) -> Poll<Error> {
        let mut st = self.shared.lock();
        let Some(s) = st.stream(self.idx) else {
            return Poll::Ready(Error::Closed);
        };
        if let Some(e) = &s.error {
            return Poll::Ready(e.clone());
        }
        if s.closed {
            return Poll::Ready(Error::Closed);
        }
        set_waker(&mut s.send_waker, cx);
        Poll::Pending
    }

    /// Queues a chunk (`end`: the last one, END_STREAM goes with it).
    pub fn send_data(&mut self, data: Bytes, end: bool) -> Result<(), Error> {
        self.send(|s| {
            if !data.is_empty() {
                s.send_buf.push_back(data);
            }
            if end {
                s.send_end = SendEnd::Pending(None);
            }
        })
    }

    /// Ends the body with trailers.
    pub fn send_trailers(&mut self, trailers: HeaderMap) -> Result<(), Error> {
        self.send(|s| s.send_end = SendEnd::Pending(Some(trailers)))
    }

    fn send(&mut self, update: impl FnOnce(&mut conn::Stream)) -> Result<(), Error> {
        let mut wakers = Wakers::default();
        let result = {
            let mut st = self.shared.lock();
            match st.stream(self.idx) {
                None => Err(Error::Closed),
                Some(s) if s.error.is_some() => Err(s.error.clone().unwrap_or(Error::Closed)),
                Some(s) if s.closed || !matches!(s.send_end, SendEnd::Open) => Err(Error::Closed),
                Some(s) => {
                    update(s);
                    // The waker is this handle's own (`poll_ready`/`poll_reset` take `&mut
                    // self`), so its caller is the one sending.
                    s.sender_running();
                    if st.flush_stream(self.idx, usize::MAX) {
                        wakers.extend(st.wake_task());
                    }
                    st.after_send(self.idx, &mut wakers);
                    Ok(())
                }
            }
        };
        wakers.wake_all();
        result
    }

    /// Resets the stream (the request body failed).
    pub fn reset(&mut self, reason: Reason) {
        let mut wakers = Wakers::default();
        {
            let mut st = self.shared.lock();
            st.reset_stream(
                self.idx,
                Error::Local(reason, "request body failed"),
                Some(reason),
                &mut wakers,
            );
            wakers.extend(st.wake_task());
        }
        wakers.wake_all();
    }
}

impl Drop for SendStream {
    fn drop(&mut self) {
        let mut wakers = Wakers::default();
        {
            let mut st = self.shared.lock();
            if st.abandon(self.idx, false, &mut wakers) {
                wakers.extend(st.wake_task());
            }
        }
        wakers.wake_all();
    }
}
