//! Bodies of a forwarded call: the first client message read off the wire, the request body
//! streamed to the part (names rewritten message by message when needed), and the response body
//! streamed back (holding the part's concurrency slot, enforcing the client's deadline), and
//! every call's response metered: its end is recorded when the trailers go out.
//!
//! Receives hyper/tonic bodies; hands on bodies that forward bytes without decoding messages.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio::time::Sleep;

use crate::error::GatewayError;
use crate::metrics::{CallGuard, grpc_status};
use crate::route::frame::{self, FrameHeader, HEADER_LEN};

type Body = tonic::body::Body;

/// The first message of a call, and whatever the client sent after it in the same reads.
#[derive(Debug)]
pub struct FirstMessage {
    /// The message's frame header.
    pub header: FrameHeader,
    /// The message itself (header stripped); for a large message read with
    /// [`read_first_message_routed`], only its head (see [`FirstMessage::tail`]).
    pub message: Bytes,
    /// The rest of a large message after its head, as received (not copied): empty unless the
    /// message was large and arrived in several reads.
    pub tail: Vec<Bytes>,
    /// Bytes already read past the first message.
    pub rest: Bytes,
    /// Trailers the client sent, if the body already ended with them.
    pub trailers: Option<HeaderMap>,
}

impl FirstMessage {
    /// Length of [`FirstMessage::tail`].
    pub fn tail_len(&self) -> usize {
        self.tail.iter().map(Bytes::len).sum()
    }
}

/// A bound on the bytes of first messages held while their resource name is read (a client
/// that declares a large message and sends it slowly, or never finishes it, holds them): per
/// client connection and for the whole gateway. A message that arrives in one read is not
/// counted (nothing waits). Reservations go back when the message is complete or the call ends.
#[derive(Debug)]
pub struct BufferBudget {
    total: AtomicUsize,
    total_limit: usize,
    /// Bytes held per client connection (its address).
    per_conn: KeyedCounts<SocketAddr>,
    conn_limit: usize,
}

impl BufferBudget {
    /// A budget of `conn_limit` bytes per client connection and `total_limit` in all.
    pub fn new(conn_limit: usize, total_limit: usize) -> Self {
        Self {
            total: AtomicUsize::new(0),
            total_limit,
            per_conn: KeyedCounts::default(),
            conn_limit,
        }
    }

    /// An empty reservation for a call from `peer` (None: counted gateway-wide only).
    pub fn hold(&self, peer: Option<SocketAddr>) -> Held<'_> {
        Held {
            budget: self,
            peer,
            bytes: 0,
        }
    }

    fn take(&self, peer: Option<SocketAddr>, n: usize) -> Result<(), GatewayError> {
        let before = self.total.fetch_add(n, Ordering::Relaxed);
        if before + n > self.total_limit {
            self.total.fetch_sub(n, Ordering::Relaxed);
            return Err(GatewayError::BufferFull {
                per_connection: false,
            });
        }
        if let Some(peer) = peer
            && !self.per_conn.try_add(peer, n, self.conn_limit)
        {
            self.total.fetch_sub(n, Ordering::Relaxed);
            return Err(GatewayError::BufferFull {
                per_connection: true,
            });
        }
        Ok(())
    }

    fn give_back(&self, peer: Option<SocketAddr>, n: usize) {
        self.total.fetch_sub(n, Ordering::Relaxed);
        if let Some(peer) = peer {
            self.per_conn.sub(&peer, n);
        }
    }
}

/// Amounts held per key, under one lock; a key's entry goes when its amount is back at zero,
/// so the map holds only the keys holding something (memory returned when calls end).
#[derive(Debug)]
struct KeyedCounts<K>(Mutex<HashMap<K, usize>>);

impl<K> Default for KeyedCounts<K> {
    fn default() -> Self {
        Self(Mutex::new(HashMap::new()))
    }
}

impl<K: std::hash::Hash + Eq + Copy> KeyedCounts<K> {
    /// Adds `n` to `key`'s amount unless that takes it past `limit`.
    fn try_add(&self, key: K, n: usize, limit: usize) -> bool {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let held = map.get(&key).copied().unwrap_or(0);
        if held + n > limit {
            return false;
        }
        map.insert(key, held + n);
        true
    }

    /// Takes `n` off `key`'s amount.
    fn sub(&self, key: &K, n: usize) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(held) = map.get_mut(key) {
            *held = held.saturating_sub(n);
            if *held == 0 {
                map.remove(key);
            }
        }
    }
}

/// Who a call is for, when a part's call slots are shared out (see [`ClientShares`]): the
/// authenticated entity, else the client's address. A keyed hash (per-process random keys), so
/// a client cannot aim its key at another's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientId(u64);

impl ClientId {
    fn keyed(tag: u8, what: impl std::hash::Hash) -> Self {
        use std::hash::BuildHasher;
        static KEYS: std::sync::OnceLock<std::hash::RandomState> = std::sync::OnceLock::new();
        let keys = KEYS.get_or_init(std::hash::RandomState::new);
        Self(keys.hash_one((tag, what)))
    }

    /// An authenticated entity (API key id, location secret's entity).
    pub fn entity(entity: &str) -> Self {
        Self::keyed(0, entity)
    }

    /// A client known only by its address.
    pub fn addr(addr: std::net::IpAddr) -> Self {
        Self::keyed(1, addr)
    }
}

/// One part's calls in flight per client, against `gateway.max_calls_per_client`: one client
/// (many connections from one address, or one entity) cannot take every call slot of a part
/// and leave the others `RESOURCE_EXHAUSTED`.
#[derive(Debug)]
pub struct ClientShares {
    counts: KeyedCounts<ClientId>,
    limit: AtomicUsize,
}

impl ClientShares {
    /// Shares of at most `limit` calls per client.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            counts: KeyedCounts::default(),
            limit: AtomicUsize::new(limit),
        })
    }

    /// Follows a reloaded limit (calls over a lowered one finish as they are).
    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// A slot of `client`'s share, or None when it holds its whole share already.
    pub fn take(self: &Arc<Self>, client: ClientId) -> Option<ClientShare> {
        let limit = self.limit.load(Ordering::Relaxed);
        self.counts.try_add(client, 1, limit).then(|| ClientShare {
            shares: self.clone(),
            client,
        })
    }
}

/// One call of a client's share; given back when dropped (the entry goes at zero).
#[derive(Debug)]
pub struct ClientShare {
    shares: Arc<ClientShares>,
    client: ClientId,
}

impl Drop for ClientShare {
    fn drop(&mut self) {
        self.shares.counts.sub(&self.client, 1);
    }
}

/// A call's slots at its part, held until its response ends: one of the part's concurrent
/// calls, and one of its client's share of them.
#[derive(Debug)]
pub struct CallSlot {
    _permit: OwnedSemaphorePermit,
    _share: Option<ClientShare>,
}

impl CallSlot {
    /// The slots `permit` and `share` (None: a call counted for no client).
    pub fn new(permit: OwnedSemaphorePermit, share: Option<ClientShare>) -> Self {
        Self {
            _permit: permit,
            _share: share,
        }
    }
}

/// Bytes one call holds against a [`BufferBudget`]; given back when dropped.
#[derive(Debug)]
pub struct Held<'a> {
    budget: &'a BufferBudget,
    peer: Option<SocketAddr>,
    bytes: usize,
}

impl Held<'_> {
    /// Holds `n` more bytes, or fails (RESOURCE_EXHAUSTED) when over either bound.
    pub fn take(&mut self, n: usize) -> Result<(), GatewayError> {
        self.budget.take(self.peer, n)?;
        self.bytes += n;
        Ok(())
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.give_back(self.peer, self.bytes);
        }
    }
}

/// Messages up to this size that arrive in several reads are copied into one buffer; larger
/// ones are kept as received, and only their head is copied (see [`read_first_message_routed`]).
const COPY_LIMIT: usize = 64 * 1024;

/// Reads exactly the first gRPC message of `body`, buffering nothing beyond the frames that
/// carried it. `Ok(None)` when the body ends with no message at all. The message is whole and
/// contiguous in [`FirstMessage::message`].
pub async fn read_first_message(
    body: &mut Body,
    limit: usize,
) -> Result<Option<FirstMessage>, GatewayError> {
    read_first_message_routed(body, limit, None, None).await
}

/// [`read_first_message`] for a message whose routing field is top-level field `field`: a large
/// message that arrived in several reads is not copied whole. Its top-level fields are walked in
/// place, and only its head, up to the end of the last occurrence of `field` (where the name
/// lives), is copied into [`FirstMessage::message`]; the rest stays in [`FirstMessage::tail`] as
/// the received chunks. The head reads and rewrites exactly as the whole message would.
///
/// A message that takes several reads holds its bytes against `held` (a [`BufferBudget`])
/// until it is complete; over the budget the call fails with RESOURCE_EXHAUSTED.
pub async fn read_first_message_routed(
    body: &mut Body,
    limit: usize,
    field: Option<u32>,
    mut held: Option<&mut Held<'_>>,
) -> Result<Option<FirstMessage>, GatewayError> {
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut have = 0usize;
    let mut header: Option<FrameHeader> = None;
    let mut trailers = None;
    loop {
        if header.is_none() && have >= HEADER_LEN {
            let mut head = [0u8; HEADER_LEN];
            copy_prefix(&chunks, &mut head);
            let parsed = FrameHeader::parse(&head)
                .ok_or(GatewayError::MalformedFrame("short frame header"))?;
            if parsed.len > limit {
                return Err(GatewayError::MessageTooLarge {
                    size: parsed.len,
                    limit,
                });
            }
            header = Some(parsed);
        }
        if let Some(header) = header
            && have >= HEADER_LEN + header.len
        {
            return Ok(Some(assemble(chunks, header, field, trailers)));
        }
        if trailers.is_some() {
            break;
        }
        match body.frame().await {
            Some(Ok(frame)) => match frame.into_data() {
                // Same as ForwardBody: empty DATA frames carry nothing.
                Ok(data) if data.is_empty() => {}
                Ok(data) if chunks.is_empty() && whole_message(&data, limit) => {
                    // Common case: one read holds the whole first message; no copy, no list.
                    return split_whole(data).map(Some);
                }
                Ok(data) => {
                    if let Some(held) = held.as_deref_mut() {
                        held.take(data.len())?;
                    }
                    have += data.len();
                    // A small chunk is copied: it is a slice of a read buffer other streams'
                    // frames share, and a message that waits for its next read would pin all
                    // of it (the budget counts the bytes held). A large one is most of its
                    // buffer, and is kept as received (no copy of a large message).
                    if data.len() < http2::conn::COPY_BELOW {
                        chunks.push(Bytes::copy_from_slice(&data));
                    } else {
                        chunks.push(data);
                    }
                }
                Err(frame) => trailers = frame.into_trailers().ok(),
            },
            Some(Err(status)) => {
                return Err(GatewayError::ClientStream(status.message().to_owned()));
            }
            None => break,
        }
    }
    if have == 0 {
        Ok(None)
    } else {
        Err(GatewayError::MalformedFrame(
            "request body ended inside a message",
        ))
    }
}

fn whole_message(data: &Bytes, limit: usize) -> bool {
    FrameHeader::parse(data).is_some_and(|h| h.len <= limit && data.len() >= HEADER_LEN + h.len)
}

fn split_whole(mut data: Bytes) -> Result<FirstMessage, GatewayError> {
    let header =
        FrameHeader::parse(&data).ok_or(GatewayError::MalformedFrame("short frame header"))?;
    data.advance(HEADER_LEN);
    let message = data.split_to(header.len);
    Ok(FirstMessage {
        header,
        message,
        tail: Vec::new(),
        rest: data,
        trailers: None,
    })
}

/// Copies the first `out.len()` bytes of `chunks` (the caller checked there are that many).
fn copy_prefix(chunks: &[Bytes], out: &mut [u8]) {
    let mut filled = 0;
    for chunk in chunks {
        let n = chunk.len().min(out.len() - filled);
        out[filled..filled + n].copy_from_slice(&chunk[..n]);
        filled += n;
        if filled == out.len() {
            break;
        }
    }
}

/// Splits received chunks holding at least one whole frame into the message and what follows.
fn assemble(
    mut chunks: Vec<Bytes>,
    header: FrameHeader,
    field: Option<u32>,
    trailers: Option<HeaderMap>,
) -> FirstMessage {
    let end = HEADER_LEN + header.len;
    // Only the last chunk can reach past the message: nothing more is read once it is whole.
    let mut rest = Bytes::new();
    let total: usize = chunks.iter().map(Bytes::len).sum();
    if let Some(last) = chunks.last_mut()
        && total > end
    {
        rest = last.split_off(last.len() - (total - end));
    }
    // Common case: one read held the whole message; no copy.
    if let [only] = chunks.as_mut_slice() {
        only.advance(HEADER_LEN);
        return FirstMessage {
            header,
            message: std::mem::take(only),
            tail: Vec::new(),
            rest,
            trailers,
        };
    }
    let mut message: Vec<Bytes> = Vec::with_capacity(chunks.len());
    let mut skip = HEADER_LEN;
    for mut chunk in chunks {
        if skip >= chunk.len() {
            skip -= chunk.len();
            continue;
        }
        chunk.advance(skip);
        skip = 0;
        message.push(chunk);
    }
    let head_len = match field {
        Some(field) if header.len > COPY_LIMIT && !header.compressed => {
            frame::locate_end_in_chunks(&message, field).unwrap_or(header.len)
        }
        _ => header.len,
    };
    let mut head = BytesMut::with_capacity(head_len);
    let mut tail = Vec::new();
    for mut chunk in message {
        let want = head_len - head.len();
        if want >= chunk.len() {
            head.extend_from_slice(&chunk);
        } else {
            head.extend_from_slice(&chunk[..want]);
            chunk.advance(want);
            tail.push(chunk);
        }
    }
    FirstMessage {
        header,
        message: head.freeze(),
        tail,
        rest,
        trailers,
    }
}

/// Rewrites the name in every later client message of a stream that still carries the name the
/// client used in its first message.
#[derive(Debug)]
pub struct StreamRewrite {
    path: &'static [u32],
    /// The name as the client sent it: a slice of its first message (no copy).
    original: Bytes,
    strip: usize,
    buf: BytesMut,
}

impl StreamRewrite {
    /// Rewrites `original` (as sent by the client) by dropping `strip` leading bytes.
    pub fn new(path: &'static [u32], original: Bytes, strip: usize) -> Self {
        Self {
            path,
            original,
            strip,
            buf: BytesMut::new(),
        }
    }

    /// Appends client bytes and moves every complete message to `out`, rewritten if it names
    /// the same resource. Compressed or unreadable messages pass through untouched.
    fn push(&mut self, data: &Bytes, out: &mut VecDeque<Bytes>) {
        if self.buf.is_empty() {
            // Usual case: whole messages in one chunk, taken as slices of it (no copy).
            let mut data = data.clone();
            while let Some(header) = FrameHeader::parse(&data) {
                if data.len() < HEADER_LEN + header.len {
                    break;
                }
                let framed = data.split_to(HEADER_LEN + header.len);
                self.forward(header, framed, out);
            }
            self.buf.extend_from_slice(&data);
            return;
        }
        self.buf.extend_from_slice(data);
        while let Some(header) = FrameHeader::parse(&self.buf) {
            if self.buf.len() < HEADER_LEN + header.len {
                break;
            }
            let framed = self.buf.split_to(HEADER_LEN + header.len).freeze();
            self.forward(header, framed, out);
        }
    }

    /// Passes on one whole framed message, rewritten if it names the same resource.
    fn forward(&self, header: FrameHeader, framed: Bytes, out: &mut VecDeque<Bytes>) {
        if header.compressed
            || !frame::restrip_framed(
                &framed.slice(HEADER_LEN..),
                self.path,
                &self.original,
                self.strip,
                out,
            )
        {
            out.push_back(framed);
        }
    }

    /// Leftover bytes of an incomplete message when the client ends its stream.
    fn leftover(&mut self) -> Option<Bytes> {
        (!self.buf.is_empty()).then(|| self.buf.split().freeze())
    }
}

/// The request body sent to a part: already-read bytes first, then the rest of the client's
/// stream (passed through frame by frame, or re-framed when names must be rewritten).
pub struct ForwardBody {
    queued: VecDeque<Bytes>,
    inner: Option<Body>,
    trailers: Option<HeaderMap>,
    rewrite: Option<StreamRewrite>,
    bytes: Option<Counter>,
    /// Bytes sent but not yet added to `bytes` (see [`BYTES_FLUSH`]).
    unflushed: u64,
    replay: Option<Arc<ReplayWatch>>,
}

/// Byte counters are updated every this many bytes and at the end of a body, rather than on
/// every frame: one shared atomic per unary call instead of one per frame in each direction.
const BYTES_FLUSH: u64 = 64 * 1024;

/// Whether a forwarded request could be sent again: the client's stream ended and carried
/// nothing beyond the first message (so the already-buffered bytes are the whole request).
#[derive(Debug, Default)]
pub struct ReplayWatch {
    ended: std::sync::atomic::AtomicBool,
    more: std::sync::atomic::AtomicBool,
}

impl ReplayWatch {
    /// True once the client's stream ended with nothing but the first message.
    pub fn replayable(&self) -> bool {
        use std::sync::atomic::Ordering;
        self.ended.load(Ordering::Acquire) && !self.more.load(Ordering::Acquire)
    }
}

impl ForwardBody {
    /// `first` is the (possibly rewritten) first message including its frame header.
    pub fn new(
        first: Vec<Bytes>,
        rest: Bytes,
        inner: Body,
        trailers: Option<HeaderMap>,
        mut rewrite: Option<StreamRewrite>,
    ) -> Self {
        let mut queued: VecDeque<Bytes> = first.into();
        match &mut rewrite {
            Some(rw) if !rest.is_empty() => rw.push(&rest, &mut queued),
            _ if !rest.is_empty() => queued.push_back(rest),
            _ => {}
        }
        let inner = if trailers.is_some() {
            None
        } else {
            Some(inner)
        };
        Self {
            queued,
            inner,
            trailers,
            rewrite,
            bytes: None,
            unflushed: 0,
            replay: None,
        }
    }

    /// Records whether the request stays replayable (see [`ReplayWatch`]).
    pub fn watch_replay(mut self, watch: Arc<ReplayWatch>) -> Self {
        if self.inner.is_none() {
            watch
                .ended
                .store(true, std::sync::atomic::Ordering::Release);
        }
        self.replay = Some(watch);
        self
    }

    fn note(&self, more: bool) {
        if let Some(watch) = &self.replay {
            let flag = if more { &watch.more } else { &watch.ended };
            flag.store(true, std::sync::atomic::Ordering::Release);
        }
    }

    /// Counts every byte sent to the part (the `partgate_request_bytes` of the call).
    pub fn count_bytes(mut self, counter: Counter) -> Self {
        self.bytes = Some(counter);
        self
    }

    fn sent(&mut self, data: Bytes) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        self.unflushed += data.len() as u64;
        if self.unflushed >= BYTES_FLUSH {
            self.flush_bytes();
        }
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn flush_bytes(&mut self) {
        if let Some(counter) = &self.bytes
            && self.unflushed > 0
        {
            counter.inc_by(std::mem::take(&mut self.unflushed));
        }
    }
}

impl Drop for ForwardBody {
    fn drop(&mut self) {
        self.flush_bytes();
    }
}

impl http_body::Body for ForwardBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        loop {
            if let Some(data) = this.queued.pop_front() {
                return this.sent(data);
            }
            let Some(inner) = this.inner.as_mut() else {
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            };
            match ready!(Pin::new(inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    // hyper surfaces a client's empty END_STREAM DATA frame as an empty chunk.
                    // Forwarded, it becomes an empty DATA frame *without* END_STREAM, which h2
                    // servers count as a flood (GOAWAY ENHANCE_YOUR_CALM after ~100 of them).
                    Ok(data) if data.is_empty() => {}
                    Ok(data) => match (this.note(true), &mut this.rewrite).1 {
                        Some(rw) => rw.push(&data, &mut this.queued),
                        None => return this.sent(data),
                    },
                    Err(frame) => {
                        this.note(false);
                        this.inner = None;
                        this.trailers = frame.into_trailers().ok();
                        this.queued
                            .extend(this.rewrite.as_mut().and_then(StreamRewrite::leftover));
                    }
                },
                Some(Err(status)) => return Poll::Ready(Some(Err(status))),
                None => {
                    this.note(false);
                    this.inner = None;
                    this.queued
                        .extend(this.rewrite.as_mut().and_then(StreamRewrite::leftover));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.queued.is_empty() && self.inner.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.inner, &self.rewrite) {
            (None, _) => SizeHint::with_exact(self.queued.iter().map(|b| b.len() as u64).sum()),
            _ => SizeHint::default(),
        }
    }
}

/// The response body streamed back from a part. Holds the part's concurrency slot until the
/// call ends, ends the call with DEADLINE_EXCEEDED when the client's deadline passes, and turns
/// a connection lost mid-call into an UNAVAILABLE status instead of a bare stream reset.
pub struct ResponseBody {
    inner: PartBody,
    deadline: Option<Pin<Box<Sleep>>>,
    part: Arc<str>,
    done: bool,
    closing: Closing,
    _slot: CallSlot,
}

/// The reload signal a response body watches. Registering a waker with it boxes a future, so
/// that happens only once the body has to wait for the part: a unary response, which usually
/// arrives whole, just reads the signal's version (one atomic load). Once registered, a poll
/// with the same waker (the usual case: a stream's later messages) reads the version too, and
/// polls the registration again only for another waker.
enum Closing {
    /// Not watched.
    Off,
    /// Read on every poll, no waker registered yet.
    Idle(watch::Receiver<bool>),
    /// Registered: `changed` wakes `waker` when the signal changes.
    Armed {
        rx: watch::Receiver<bool>,
        changed: Pin<Box<dyn Future<Output = bool> + Send>>,
        waker: Option<Waker>,
    },
}

impl Closing {
    /// A registration for the next change of `rx` (whose current version has been read): the
    /// future ends with `false` when the sender is gone.
    fn armed(rx: watch::Receiver<bool>) -> Self {
        let mut next = rx.clone();
        Self::Armed {
            rx,
            changed: Box::pin(async move { next.changed().await.is_ok() }),
            waker: None,
        }
    }
}

/// Any response body on its way to the client, metered: bytes counted, and the call's end
/// recorded once with the `grpc-status` of its trailers (or of its headers, for a trailers-only
/// response). Dropped before the end, the call counts as cancelled.
pub struct MeteredBody<B: http_body::Body = Body> {
    inner: B,
    call: Option<CallGuard>,
    header_code: Option<tonic::Code>,
    /// Response bytes not yet added to the call's counter (see [`BYTES_FLUSH`]).
    unflushed: u64,
}

impl ResponseBody {
    /// Wraps a part's response body.
    pub fn new(
        inner: PartBody,
        slot: CallSlot,
        deadline: Option<Pin<Box<Sleep>>>,
        part: Arc<str>,
    ) -> Self {
        Self {
            inner,
            deadline,
            part,
            done: false,
            closing: Closing::Off,
            _slot: slot,
        }
    }

    /// Ends the call with UNAVAILABLE when `closing` turns true (the part was removed or
    /// replaced by a reload and its drain time is over).
    pub fn close_on(mut self, closing: watch::Receiver<bool>) -> Self {
        self.closing = Closing::Idle(closing);
        self
    }

    /// Whether the reload signal says the call must end now. Registers for the next change
    /// only once armed (see [`Closing`]).
    fn closed(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            let (rx, armed) = match &mut self.closing {
                Closing::Off => return false,
                Closing::Idle(rx) => (rx, None),
                Closing::Armed { rx, changed, waker } => (rx, Some((changed, waker))),
            };
            match rx.has_changed() {
                Ok(true) => {
                    if *rx.borrow_and_update() {
                        return true;
                    }
                    // A change back to false: register afresh (the old future has fired).
                    if armed.is_some() {
                        let rx = rx.clone();
                        self.closing = Closing::armed(rx);
                    }
                    continue;
                }
                Ok(false) => {}
                // The part is gone without closing: nothing will ever signal.
                Err(_) => {
                    self.closing = Closing::Off;
                    return false;
                }
            }
            let Some((changed, waker)) = armed else {
                return false;
            };
            if waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                return false;
            }
            match changed.as_mut().poll(cx) {
                Poll::Pending => {
                    *waker = Some(cx.waker().clone());
                    return false;
                }
                // Changed meanwhile: the next turn reads it.
                Poll::Ready(true) => {
                    let rx = rx.clone();
                    self.closing = Closing::armed(rx);
                }
                Poll::Ready(false) => {
                    self.closing = Closing::Off;
                    return false;
                }
            }
        }
    }

    /// The body is about to wait for the part: from now on the reload signal must wake it.
    /// Returns whether the signal already says to close.
    fn arm_closing(&mut self, cx: &mut Context<'_>) -> bool {
        if let Closing::Idle(_) = self.closing
            && let Closing::Idle(rx) = std::mem::replace(&mut self.closing, Closing::Off)
        {
            self.closing = Closing::armed(rx);
            return self.closed(cx);
        }
        false
    }

    fn end_closing(&mut self) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let part = self.part.to_string();
        self.end_with(&GatewayError::PartRemoved { part })
    }

    /// Ends the answer with `err`'s trailers (the one error table's code and message).
    fn end_with(
        &mut self,
        err: &GatewayError,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        self.done = true;
        Poll::Ready(Some(Ok(Frame::trailers(err.trailers()))))
    }
}

/// Never yields an error: a failure on the part's side ends the call with trailers.
impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(deadline) = this.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            let part = this.part.to_string();
            return this.end_with(&GatewayError::StreamDeadline { part });
        }
        if this.closed(cx) {
            return this.end_closing();
        }
        let polled = loop {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                // Same as requests: never pass on an empty DATA frame (see ForwardBody).
                Poll::Ready(Some(Ok(frame))) if frame.data_ref().is_some_and(Bytes::is_empty) => {
                    continue;
                }
                Poll::Ready(other) => break other,
                Poll::Pending => {
                    if this.arm_closing(cx) {
                        return this.end_closing();
                    }
                    return Poll::Pending;
                }
            }
        };
        match polled {
            Some(Err(err)) => {
                tracing::debug!(part = %this.part, error = %err, "part stream failed mid-call");
                let part = this.part.to_string();
                this.end_with(&GatewayError::PartLost { part })
            }
            Some(Ok(frame)) => Poll::Ready(Some(Ok(frame))),
            None => {
                this.done = true;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A part's response body, straight off a stream of the native HTTP/2 engine: data as it
/// arrives, then trailers; flow-control capacity goes back to the part as each chunk is
/// handed on (see [`http2::client::RecvBody`]).
pub type PartBody = http2::client::RecvBody;

// === impl MeteredBody ===

impl<B: http_body::Body> MeteredBody<B> {
    /// Meters `inner`; `header_code` is the `grpc-status` of the response headers, if any.
    pub fn new(inner: B, call: CallGuard, header_code: Option<tonic::Code>) -> Self {
        Self {
            inner,
            call: Some(call),
            header_code,
            unflushed: 0,
        }
    }

    fn flush_bytes(&mut self) {
        if let Some(call) = &self.call
            && self.unflushed > 0
        {
            call.response_bytes(std::mem::take(&mut self.unflushed));
        }
    }

    fn finish(&mut self, code: tonic::Code, message: Option<&str>) {
        self.flush_bytes();
        if let Some(call) = self.call.take() {
            if call.forwarded() {
                call.finish_forwarded(code, message);
            } else {
                call.finish(code);
            }
        }
    }
}

/// Generic so that a part's [`ResponseBody`] is metered in place: one box per response body.
impl<B> http_body::Body for MeteredBody<B>
where
    B: http_body::Body<Data = Bytes, Error = tonic::Status> + Unpin,
{
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &polled {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.unflushed += data.len() as u64;
                    if this.unflushed >= BYTES_FLUSH {
                        this.flush_bytes();
                    }
                } else if let Some(trailers) = frame.trailers_ref() {
                    let code = grpc_status(trailers).unwrap_or(tonic::Code::Unknown);
                    let message = trailers
                        .get(&crate::metrics::GRPC_MESSAGE)
                        .and_then(|v| v.to_str().ok());
                    this.finish(code, message);
                }
            }
            Some(Err(status)) => this.finish(status.code(), Some(status.message())),
            None => {
                let code = this.header_code.unwrap_or(tonic::Code::Unknown);
                this.finish(code, None);
            }
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: http_body::Body> Drop for MeteredBody<B> {
    fn drop(&mut self) {
        self.flush_bytes();
        // A trailers-only response is never polled: its status is in the headers. Anything else
        // dropped before its end was cancelled (the guard's own drop counts that).
        if http_body::Body::is_end_stream(&self.inner) {
            let code = self.header_code.unwrap_or(tonic::Code::Unknown);
            self.finish(code, None);
        }
    }
}

/// Parses a `grpc-timeout` header value (`"100m"`, `"5S"`, ...).
pub fn parse_grpc_timeout(value: &HeaderValue) -> Option<std::time::Duration> {
    let text = value.to_str().ok()?;
    if text.len() < 2 || text.len() > 9 {
        return None;
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    let n: u64 = digits.parse().ok()?;
    use std::time::Duration;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;

    fn framed(msg: &[u8]) -> Vec<u8> {
        let mut out = FrameHeader::encode(msg.len()).to_vec();
        out.extend_from_slice(msg);
        out
    }

    fn name_msg(name: &str) -> Vec<u8> {
        let mut out = vec![0x0a, name.len() as u8];
        out.extend_from_slice(name.as_bytes());
        out
    }

    fn body_of(chunks: Vec<Vec<u8>>) -> Body {
        let frames = chunks
            .into_iter()
            .map(|c| Ok::<_, tonic::Status>(Frame::data(Bytes::from(c))));
        Body::new(StreamBody::new(futures_util::stream::iter(frames)))
    }

    #[tokio::test]
    async fn first_message_split_across_reads() {
        let whole = framed(&name_msg("sub1:motor1"));
        let (a, b) = whole.split_at(3);
        let mut tail = b.to_vec();
        tail.extend(framed(&name_msg("next")));
        let mut body = body_of(vec![a.to_vec(), tail]);
        let first = read_first_message(&mut body, 1024)
            .await
            .expect("ok")
            .expect("some");
        assert_eq!(
            frame::read_name(&first.message, &[1]),
            Ok(Some("sub1:motor1"))
        );
        assert_eq!(first.rest.len(), 5 + 6);
    }

    /// A message `{1: name, 2: payload}` (payload `big` bytes), framed.
    fn big_msg(name: &str, big: usize) -> Vec<u8> {
        let mut msg = name_msg(name);
        msg.push(0x12);
        let mut n = big;
        while n >= 0x80 {
            msg.push((n as u8 & 0x7f) | 0x80);
            n >>= 7;
        }
        msg.push(n as u8);
        msg.extend((0..big).map(|i| i as u8));
        msg
    }

    /// The first message as the part would get it: frame header + head pieces + tail.
    fn forwarded(first: &FirstMessage, strip: usize) -> Vec<u8> {
        let (segments, len) = frame::strip_name(&first.message, &[1], strip).expect("strip");
        let mut out = Vec::new();
        for piece in frame::frame_segments(segments, len + first.tail_len()) {
            out.extend_from_slice(&piece);
        }
        for piece in &first.tail {
            out.extend_from_slice(piece);
        }
        out
    }

    #[tokio::test]
    async fn large_first_message_is_not_copied_past_its_name() {
        let msg = big_msg("sub1:echo1", 300_000);
        let mut whole = framed(&msg);
        whole.extend(framed(&name_msg("next")));
        let chunks: Vec<Vec<u8>> = whole.chunks(65_536).map(<[u8]>::to_vec).collect();
        let mut body = body_of(chunks.clone());
        let first = read_first_message_routed(&mut body, 1 << 20, Some(1), None)
            .await
            .expect("ok")
            .expect("some");
        assert_eq!(
            first.message.len(),
            2 + "sub1:echo1".len(),
            "only the head is copied"
        );
        assert_eq!(first.message.len() + first.tail_len(), msg.len());
        assert_eq!(first.rest.len(), 5 + 6);
        assert_eq!(
            frame::read_name(&first.message, &[1]),
            Ok(Some("sub1:echo1"))
        );
        // Rewritten, it is exactly what rewriting the whole message gives.
        let mut body = body_of(chunks);
        let copied = read_first_message(&mut body, 1 << 20)
            .await
            .expect("ok")
            .expect("some");
        assert!(copied.tail.is_empty());
        assert_eq!(forwarded(&first, 5), forwarded(&copied, 5));
        assert_eq!(forwarded(&first, 0), framed(&msg));
    }

    #[tokio::test]
    async fn large_first_message_head_reaches_the_last_name_and_malformed_is_copied() {
        // The name field repeated after the payload: the last one counts, so the head ends there.
        let mut msg = big_msg("a:x", 200_000);
        msg.extend(name_msg("b:y"));
        let chunks: Vec<Vec<u8>> = framed(&msg).chunks(50_000).map(<[u8]>::to_vec).collect();
        let first = read_first_message_routed(&mut body_of(chunks), 1 << 20, Some(1), None)
            .await
            .expect("ok")
            .expect("some");
        assert!(first.tail.is_empty());
        assert_eq!(frame::read_name(&first.message, &[1]), Ok(Some("b:y")));
        // A bad tag after the payload: copied whole, so read_name reports it as before.
        let mut bad = big_msg("a:x", 200_000);
        bad.push(0x07);
        let chunks: Vec<Vec<u8>> = framed(&bad).chunks(50_000).map(<[u8]>::to_vec).collect();
        let first = read_first_message_routed(&mut body_of(chunks), 1 << 20, Some(1), None)
            .await
            .expect("ok")
            .expect("some");
        assert_eq!(first.message.len(), bad.len());
        assert_eq!(
            frame::read_name(&first.message, &[1]),
            Err(frame::FrameError::BadTag)
        );
    }

    #[tokio::test]
    async fn oversized_and_truncated_first_messages() {
        let mut body = body_of(vec![FrameHeader::encode(4096).to_vec()]);
        assert!(matches!(
            read_first_message(&mut body, 1024).await,
            Err(GatewayError::MessageTooLarge { .. })
        ));
        let mut body = body_of(vec![framed(b"abc")[..6].to_vec()]);
        assert!(matches!(
            read_first_message(&mut body, 1024).await,
            Err(GatewayError::MalformedFrame(_))
        ));
        let mut body = body_of(vec![]);
        assert!(matches!(
            read_first_message(&mut body, 1024).await,
            Ok(None)
        ));
    }

    /// Whatever the client's chunks (one byte, a few, several messages in one, messages cut
    /// anywhere), every whole message is rewritten exactly when it names the same resource.
    #[tokio::test]
    async fn stream_rewrite_touches_only_the_same_name() {
        let mut input = framed(&name_msg("sub1:echo"));
        input.extend(framed(&name_msg("other")));
        let mut compressed = framed(&name_msg("sub1:echo"));
        compressed[0] = 1;
        input.extend(&compressed);
        input.extend(framed(&name_msg("sub1:echo")));
        let mut expected = framed(&name_msg("echo"));
        expected.extend(framed(&name_msg("other")));
        expected.extend(&compressed);
        expected.extend(framed(&name_msg("echo")));
        for chunk in [1, 4, 7, 16, input.len()] {
            let inner = body_of(input.chunks(chunk).map(<[u8]>::to_vec).collect());
            let body = ForwardBody::new(
                vec![],
                Bytes::new(),
                inner,
                None,
                Some(StreamRewrite::new(
                    &[1],
                    Bytes::from_static(b"sub1:echo"),
                    5,
                )),
            );
            let out = body.collect().await.expect("ok").to_bytes();
            assert_eq!(out.to_vec(), expected, "chunks of {chunk}");
        }
    }

    #[test]
    fn grpc_timeouts() {
        use std::time::Duration;
        let parse = |s: &str| parse_grpc_timeout(&HeaderValue::from_str(s).expect("ascii"));
        assert_eq!(parse("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("99999999n"), Some(Duration::from_nanos(99_999_999)));
        assert_eq!(parse("5"), None);
        assert_eq!(parse("5x"), None);
        assert_eq!(parse("1234567890S"), None);
    }
}
