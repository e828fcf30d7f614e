//! The connection core of the native HTTP/2: one task per connection owns the socket, reads and
//! handles frames, and writes what everyone queued; callers share the rest of the state behind
//! one mutex and write their own frames into the write queue (RFC 9113 sections 5, 6.5, 6.7,
//! 6.8, 6.9).
//!
//! Receives bytes from the peer and frames queued by stream handles; hands on response heads,
//! data and trailers to the stream handles, and sends WINDOW_UPDATEs as they consume data.
//!
//! Shape, for speed (measurements in the workspace's docs/perf/journal.md):
//! - [`State`] holds the stream table (a slab indexed by a small handle, a map from stream id
//!   for incoming frames), both sides' flow-control windows, the peer's settings, the HPACK
//!   encoder and the [`WriteQueue`]. A caller encodes its HEADERS and DATA straight into the
//!   queue under the lock and wakes the connection task at most once (`task_woken`).
//! - The connection task reads as much as is ready, handles every frame of the batch under one
//!   lock acquisition, wakes the stream handles after unlocking (each at most once per batch),
//!   then writes the queue with vectored writes and flushes.
//!
//! The stream table, flow control, settings, ping and GOAWAY handling are role-neutral; what
//! is client-specific (stream ids are odd and ours, HEADERS carry a response) is marked, so a
//! server engine can reuse this core.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};
use tracing::debug;

use super::frame::{self, ConnError, Frame, FrameReader, Reason, WriteQueue, setting};
use super::hpack;

/// Connection settings (ours) and keepalive.
#[derive(Debug, Clone)]
pub struct Config {
    /// SETTINGS_INITIAL_WINDOW_SIZE we advertise: how much a peer may send on one stream
    /// before the consumer reads it.
    pub initial_stream_window: u32,
    /// The connection receive window (raised from 65,535 with a WINDOW_UPDATE at start).
    pub initial_conn_window: u32,
    /// SETTINGS_MAX_FRAME_SIZE we advertise.
    pub max_frame_size: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE we advertise (and enforce per stream).
    pub max_header_list_size: u32,
    /// PING every `.0`; no ACK within `.1` closes the connection.
    pub keepalive: Option<(Duration, Duration)>,
    /// [server role] A connection with no stream open, and none opened, for this long is
    /// closed with GOAWAY(NO_ERROR) (checked every half of it: closed after 1 to 1.5 times it).
    pub idle_timeout: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            initial_stream_window: 2 * 1024 * 1024,
            initial_conn_window: 8 * 1024 * 1024,
            max_frame_size: 64 * 1024,
            max_header_list_size: 16 * 1024 * 1024,
            keepalive: None,
            idle_timeout: None,
        }
    }
}

/// Why a stream or the connection failed. Display never includes header values.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The peer reset the stream.
    #[error("stream reset by the peer: {0}")]
    Reset(Reason),
    /// We reset the stream (a protocol error on it, or the caller cancelled it).
    #[error("stream reset: {0} ({1})")]
    Local(Reason, &'static str),
    /// The peer never processed the stream (GOAWAY before it, REFUSED_STREAM, or the
    /// connection was already going away or closed): it may be sent again elsewhere.
    #[error("stream refused: {0}")]
    Refused(&'static str),
    /// A connection error: ours (we sent GOAWAY) or the peer's GOAWAY closing the connection.
    #[error("connection error: {0}")]
    Conn(#[from] ConnError),
    /// The peer closed the connection with a GOAWAY carrying an error.
    #[error("connection closed by the peer: GOAWAY {0}")]
    GoAway(Reason),
    /// Reading or writing the socket failed.
    #[error("connection lost: {0}")]
    Io(std::io::ErrorKind),
    /// The connection ended (EOF, or its task was stopped).
    #[error("connection closed")]
    Closed,
    /// A keepalive PING went unanswered.
    #[error("keepalive ping unanswered")]
    KeepaliveTimeout,
}

impl Error {
    /// The HTTP/2 error code, when there is one.
    pub fn reason(&self) -> Option<Reason> {
        match self {
            Error::Reset(r) | Error::Local(r, _) | Error::GoAway(r) => Some(*r),
            Error::Refused(_) => Some(Reason::REFUSED_STREAM),
            Error::Conn(e) => Some(e.reason),
            Error::Io(_) | Error::Closed | Error::KeepaliveTimeout => None,
        }
    }

    /// Whether the peer certainly did not process the stream (safe to send again).
    pub fn is_refused(&self) -> bool {
        matches!(
            self,
            Error::Refused(_) | Error::Reset(Reason::REFUSED_STREAM)
        )
    }
}

/// Largest stream id (RFC 9113 section 5.1.1).
const MAX_STREAM_ID: u32 = (1 << 31) - 1;

/// A fresh keepalive PING payload: keyed SipHash output (std's per-process random keys), so a
/// peer cannot acknowledge pings it never read with a payload it guessed.
fn ping_payload() -> [u8; 8] {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(PINGS.fetch_add(1, Ordering::Relaxed));
    hasher.finish().to_be_bytes()
}

/// Keepalive pings sent by this process (mixed into each payload).
static PINGS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Socket reads per connection-task poll before the task yields (fairness with other tasks).
const READS_PER_POLL: usize = 8;

/// Replies the peer's frames made us queue (PING and SETTINGS acknowledgements, RST_STREAM)
/// while our previous writes were still waiting for the peer to read them. Past this the peer
/// is flooding us without reading (CVE-2019-9512, 9514, 9515): the connection is closed with
/// ENHANCE_YOUR_CALM instead of queueing more. A peer that reads keeps the count near zero.
pub const MAX_QUEUED_REPLIES: u32 = 1024;

/// Work one connection may do per turn of its task before it yields to the others (CPU
/// fairness): every frame costs 1, a new stream [`NEW_STREAM_COST`] more (its handler runs in
/// the same turn), a header block one more per [`HEADER_BYTES_PER_UNIT`] bytes. Frames left over stay in the read buffer for the next turn, and no more is
/// read meanwhile (see [`READ_AHEAD`]). A turn of 1,024 small frames is tens of microseconds.
pub const TURN_BUDGET: i32 = 1024;
/// Extra cost of a frame that opens a stream (see [`TURN_BUDGET`]).
pub const NEW_STREAM_COST: i32 = 15;
/// Header-block bytes that cost one more unit of [`TURN_BUDGET`].
pub const HEADER_BYTES_PER_UNIT: usize = 64;
/// Bytes read ahead of the frames handled: no socket read while this much waits in the read
/// buffer, so a peer that sends faster than its frames are handled waits in its own socket
/// buffer, not in our memory.
pub const READ_AHEAD: usize = 256 * 1024;
/// DATA frames in a row with no payload and no END_STREAM (CVE-2019-9518): each costs as much
/// to handle as a real one and delivers nothing. Past this many, GOAWAY(ENHANCE_YOUR_CALM), as
/// Envoy's `max_consecutive_inbound_frames_with_empty_payload` does (its default is 1).
pub const MAX_EMPTY_FRAMES: u32 = 64;
/// Streams we may reset because of the peer's errors (malformed requests, header lists over
/// the limit, DATA beyond a window or a content-length, frames on closed streams, streams over
/// the concurrency limit) per [`STREAM_ERROR_WINDOW`]; past it, GOAWAY(ENHANCE_YOUR_CALM). Each
/// costs a decode and a reply, and a client that makes them at a high rate is attacking (h2
/// bounds the same thing with `max_local_error_reset_streams`, default 1,024).
pub const STREAM_ERROR_BUDGET: u32 = 1000;
/// See [`STREAM_ERROR_BUDGET`].
pub const STREAM_ERROR_WINDOW: Duration = Duration::from_secs(10);

/// Payloads shorter than this that wait behind unread data are copied out of the shared read
/// buffer (see `on_data`); longer ones are most of a buffer, and stay in place.
pub const COPY_BELOW: usize = 32 * 1024;

/// A queue of chunks, the first one inline: a stream usually holds one chunk at a time, and
/// then the queue allocates nothing. The rest is made only when needed: dropping a `VecDeque`,
/// even an empty one, is not free, and a call drops four queues.
#[derive(Debug, Default)]
pub struct Chunks {
    /// Empty only when `rest` is empty too.
    first: Option<Bytes>,
    rest: Option<VecDeque<Bytes>>,
}

impl Chunks {
    #[inline]
    pub fn push_back(&mut self, chunk: Bytes) {
        if self.first.is_none() {
            self.first = Some(chunk);
        } else {
            self.push_rest(chunk);
        }
    }

    #[inline(never)]
    fn push_rest(&mut self, chunk: Bytes) {
        self.rest.get_or_insert_default().push_back(chunk);
    }

    pub(crate) fn pop_front(&mut self) -> Option<Bytes> {
        let first = self.first.take();
        if first.is_some() {
            self.first = self.rest.as_mut().and_then(VecDeque::pop_front);
        }
        first
    }

    pub(crate) fn front_mut(&mut self) -> Option<&mut Bytes> {
        self.first.as_mut()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    pub(crate) fn clear(&mut self) {
        self.first = None;
        if let Some(rest) = &mut self.rest {
            rest.clear();
        }
    }

    /// Total bytes queued.
    pub(crate) fn len(&self) -> usize {
        let rest = self
            .rest
            .as_ref()
            .map_or(0, |r| r.iter().map(Bytes::len).sum());
        self.first.as_ref().map_or(0, Bytes::len) + rest
    }

    /// The chunks in order.
    pub fn iter(&self) -> impl Iterator<Item = &Bytes> {
        let rest = self.rest.as_ref().map(VecDeque::iter).unwrap_or_default();
        self.first.iter().chain(rest)
    }

    pub fn into_vec(self) -> Vec<Bytes> {
        self.first
            .into_iter()
            .chain(self.rest.into_iter().flatten())
            .collect()
    }
}

/// How the sending half of a stream ends once its buffered data is out.
#[derive(Debug)]
pub(crate) enum SendEnd {
    /// More data may come.
    Open,
    /// END_STREAM after the buffered data: on the last DATA frame, or on trailers.
    Pending(Option<HeaderMap>),
    /// END_STREAM sent (or the stream is reset).
    Done,
}

/// One stream. Lives in [`State::streams`] until it is closed *and* no handle refers to it.
#[derive(Debug)]
pub(crate) struct Stream {
    pub(crate) id: u32,
    /// Live handles (receive half, send half).
    pub(crate) refs: u8,
    /// Closed at the protocol level: out of `ids` and of the concurrency count.
    pub(crate) closed: bool,
    /// Why the stream failed (reset either way, connection error, refused).
    pub(crate) error: Option<Error>,

    // Send half.
    pub(crate) send_window: i64,
    pub(crate) send_buf: Chunks,
    pub(crate) send_end: SendEnd,
    /// In `State::conn_blocked` (waiting for the connection window).
    pub(crate) conn_queued: bool,
    pub(crate) send_waker: Option<Waker>,

    // Receive half.
    /// What the peer may still send before our next WINDOW_UPDATE.
    pub(crate) recv_window: i64,
    /// Consumed bytes not yet returned to the peer in a WINDOW_UPDATE.
    pub(crate) unreleased: u32,
    pub(crate) recv_q: Chunks,
    /// The response head (client role), until the response future takes it.
    pub(crate) head: Option<http::Response<()>>,
    pub(crate) head_received: bool,
    pub(crate) trailers: Option<HeaderMap>,
    /// END_STREAM received.
    pub(crate) recv_end: bool,
    pub(crate) recv_waker: Option<Waker>,
    /// Nobody reads the response any more (its handle was dropped while the request body
    /// still streams): data is discarded as it arrives.
    pub(crate) recv_dropped: bool,

    // [server role] (see `super::server`)
    /// The response HEADERS went out (a reset before that counts against rapid resets).
    pub(crate) answered: bool,
    /// Body bytes still due by the content-length of the request (server role) or the
    /// response (client role) (RFC 9113 section 8.1.1).
    pub(crate) expect_len: Option<u64>,
}

impl Stream {
    fn new(id: u32, send_window: i64, recv_window: i64) -> Self {
        Self {
            id,
            refs: 0,
            closed: false,
            error: None,
            send_window,
            send_buf: Chunks::default(),
            send_end: SendEnd::Open,
            conn_queued: false,
            send_waker: None,
            recv_window,
            unreleased: 0,
            recv_q: Chunks::default(),
            head: None,
            head_received: false,
            trailers: None,
            recv_end: false,
            recv_waker: None,
            recv_dropped: false,
            answered: false,
            expect_len: None,
        }
    }

    fn send_done(&self) -> bool {
        matches!(self.send_end, SendEnd::Done)
    }

    /// The stream's sender is running and about to queue, flush or reset: the waker it left
    /// (for room in the send buffer, or a reset) is its own, and waking it from here would only
    /// poll it again for nothing. In `FuturesUnordered` (the server's calls) such a wake counts
    /// as a yield, and after two it stopped polling the connection's ready calls, which split
    /// bidi writes two messages at a time. The sender registers again before it waits.
    pub(crate) fn sender_running(&mut self) {
        self.send_waker = None;
    }
}

/// Everything shared between the connection task and the stream handles.
pub(crate) struct Shared {
    state: Mutex<State>,
    /// False once the connection takes no new streams (GOAWAY, closed, ids exhausted): read
    /// without the lock by the pool.
    accepting: AtomicBool,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn is_accepting(&self) -> bool {
        self.accepting.load(Ordering::Acquire)
    }
}

/// The connection state behind the mutex.
pub(crate) struct State {
    pub(crate) streams: Vec<Option<Stream>>,
    free: Vec<usize>,
    /// Occupied slots of `streams`.
    live: usize,
    /// Open streams by id (closed ones are removed at once).
    pub(crate) ids: IdMap,
    /// Client role: the next stream id we open (odd).
    pub(crate) next_id: u32,
    pub(crate) write: WriteQueue,
    pub(crate) encoder: hpack::Encoder,
    /// A header block being encoded (reused).
    pub(crate) hbuf: BytesMut,

    // Peer settings.
    pub(crate) peer_max_frame: u32,
    peer_initial_window: i64,
    peer_max_streams: usize,
    /// The peer's first SETTINGS arrived (new streams wait for it, to know the limits).
    settings_received: bool,

    // Flow control.
    conn_send_window: i64,
    /// Streams with data waiting for the connection window, served in turn.
    conn_blocked: VecDeque<usize>,
    conn_recv_window: i64,
    conn_unreleased: u32,
    pub(crate) config: Config,

    // Concurrency: open streams plus slots granted to waiters not yet claimed.
    pub(crate) active: usize,
    waiters: VecDeque<(u64, Waker)>,
    granted: Vec<u64>,
    next_waiter: u64,

    /// The peer's GOAWAY: last stream id it may process.
    pub(crate) goaway: Option<u32>,
    /// The connection ended (every stream failed with it).
    pub(crate) closed: Option<Error>,
    /// `SendRequest` handles alive; at 0 with no streams the connection closes.
    pub(crate) senders: usize,
    /// Woken when the connection stops accepting streams (the pool redials then).
    pub(crate) drain_waker: Option<Waker>,

    task_waker: Option<Waker>,
    /// The connection task was woken and has not polled since: no need to wake it again.
    pub(crate) task_woken: bool,

    // [server role] (see `super::server`); unused by the client role.
    pub(crate) role: Role,
    /// Highest stream id the peer opened.
    pub(crate) peer_last_id: u32,
    /// Streams the peer opened, with their request heads, not yet taken by the server.
    pub(crate) accepted: VecDeque<(usize, http::Request<()>)>,
    /// Our SETTINGS_MAX_CONCURRENT_STREAMS (over it a new stream is refused).
    pub(crate) max_peer_streams: usize,
    /// We sent GOAWAY (graceful shutdown): no new streams; the connection ends with the last.
    pub(crate) local_goaway: Option<u32>,
    /// Rapid-reset accounting: resets of unanswered streams in the window starting at `.0`.
    pub(crate) resets: (Instant, u32),
    /// Replies queued since the connection last handed its queue to the socket (see
    /// [`MAX_QUEUED_REPLIES`]).
    pub(crate) replies_queued: u32,
    /// The payload of our keepalive PING awaiting its ACK.
    pub(crate) ping_sent: Option<[u8; 8]>,
    /// Request targets parsed lately (a per-connection parse cache).
    pub(crate) targets: super::server::Targets,
    /// Streams we reset lately, whose in-flight frames are ignored (see [`ResetIds`]).
    pub(crate) reset_ids: ResetIds,
    /// Work left in this turn of the connection task (see [`TURN_BUDGET`]).
    pub(crate) budget: i32,
    /// DATA frames in a row with no payload (see [`MAX_EMPTY_FRAMES`]).
    empty_frames: u32,
    /// Stream errors the peer caused in the window starting at `.0` (see
    /// [`STREAM_ERROR_BUDGET`]).
    stream_errors: (Instant, u32),
    /// Why the peer must calm down: the connection closes with ENHANCE_YOUR_CALM.
    pub(crate) calm: Option<&'static str>,
}

/// The ids of the last [`ResetIds::CAP`] streams we reset or refused. After our RST_STREAM the
/// peer may still have frames for the stream in flight, which RFC 9113 section 5.1 says to
/// ignore; frames on any other closed stream are the peer's error (STREAM_CLOSED for DATA, a
/// connection error for HEADERS). Bounded: a stream evicted from here gets a harmless
/// RST_STREAM(STREAM_CLOSED) for a late DATA frame instead of silence, as h2 does.
#[derive(Debug, Default)]
pub(crate) struct ResetIds(VecDeque<u32>);

impl ResetIds {
    pub(crate) const CAP: usize = 512;

    pub(crate) fn insert(&mut self, id: u32) {
        if self.0.len() == Self::CAP {
            self.0.pop_front();
        }
        self.0.push_back(id);
    }

    pub(crate) fn contains(&self, id: u32) -> bool {
        // Newest first: in-flight frames follow their reset closely.
        self.0.iter().rev().any(|&i| i == id)
    }
}

/// Which end of the connection we are. [server role hook]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Client,
    Server,
}

/// A waker to wake once the lock is released.
pub(crate) type Wake = Option<Waker>;

/// Stores `cx`'s waker in `slot` unless the one there already wakes the same task (saves a
/// clone, and a drop, on every poll that finds nothing new).
pub(crate) fn set_waker(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

/// Wakers collected under the lock and woken after it: the first inline (usually the only one,
/// so collecting it allocates nothing).
#[derive(Default)]
pub(crate) struct Wakers {
    first: Option<Waker>,
    rest: Vec<Waker>,
}

impl Wakers {
    pub(crate) fn push(&mut self, waker: Waker) {
        if self.first.is_none() {
            self.first = Some(waker);
        } else {
            self.rest.push(waker);
        }
    }

    /// Wakes and forgets them all (keeps the allocation for reuse).
    pub(crate) fn wake_all(&mut self) {
        if let Some(w) = self.first.take() {
            w.wake();
        }
        for w in self.rest.drain(..) {
            w.wake();
        }
    }
}

impl Extend<Waker> for Wakers {
    fn extend<T: IntoIterator<Item = Waker>>(&mut self, iter: T) {
        for w in iter {
            self.push(w);
        }
    }
}

/// Hashes stream ids for the id map: a multiply and a fold (ids are small, sequential, odd;
/// SipHash would cost more than the rest of a frame's lookup).
#[derive(Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u32(u32::from(b) ^ (self.0 as u32).rotate_left(8));
        }
    }

    fn write_u32(&mut self, n: u32) {
        let h = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = h ^ (h >> 32);
    }
}

type IdMap = HashMap<u32, usize, BuildHasherDefault<IdHasher>>;

impl State {
    fn new(config: Config) -> Self {
        Self {
            streams: Vec::new(),
            free: Vec::new(),
            live: 0,
            ids: IdMap::default(),
            next_id: 1,
            write: WriteQueue::new(),
            encoder: hpack::Encoder::new(),
            hbuf: BytesMut::new(),
            peer_max_frame: frame::DEFAULT_MAX_FRAME_SIZE,
            peer_initial_window: i64::from(frame::DEFAULT_WINDOW),
            peer_max_streams: usize::MAX,
            settings_received: false,
            conn_send_window: i64::from(frame::DEFAULT_WINDOW),
            conn_blocked: VecDeque::new(),
            conn_recv_window: i64::from(config.initial_conn_window.max(frame::DEFAULT_WINDOW)),
            conn_unreleased: 0,
            config,
            active: 0,
            waiters: VecDeque::new(),
            granted: Vec::new(),
            next_waiter: 0,
            goaway: None,
            closed: None,
            senders: 1,
            drain_waker: None,
            task_waker: None,
            task_woken: false,
            role: Role::Client,
            peer_last_id: 0,
            accepted: VecDeque::new(),
            max_peer_streams: 0,
            local_goaway: None,
            resets: (Instant::now(), 0),
            replies_queued: 0,
            ping_sent: None,
            targets: Default::default(),
            reset_ids: ResetIds::default(),
            budget: TURN_BUDGET,
            empty_frames: 0,
            stream_errors: (Instant::now(), 0),
            calm: None,
        }
    }

    /// The connection task's waker, if it needs waking (at most once until it polls again).
    pub(crate) fn wake_task(&mut self) -> Wake {
        if self.task_woken {
            return None;
        }
        self.task_woken = true;
        self.task_waker.take()
    }

    pub(crate) fn stream(&mut self, idx: usize) -> Option<&mut Stream> {
        self.streams.get_mut(idx).and_then(Option::as_mut)
    }

    // === opening streams (client role) ===

    /// Whether new streams are refused for an orderly reason (the peer's GOAWAY, even if the
    /// connection closed since, or our stream ids ran out) rather than because it broke.
    pub(crate) fn went_away(&self) -> bool {
        self.goaway.is_some() || self.next_id > MAX_STREAM_ID
    }

    /// Why no new stream can be opened now, if it cannot ever be on this connection.
    pub(crate) fn refusal(&self) -> Option<Error> {
        if self.closed.is_some() {
            return Some(Error::Refused("connection closed"));
        }
        if self.goaway.is_some() {
            return Some(Error::Refused("connection going away (GOAWAY)"));
        }
        if self.next_id > MAX_STREAM_ID {
            return Some(Error::Refused("stream ids exhausted"));
        }
        None
    }

    /// Takes a concurrency slot now if one is free and nobody waits before us.
    pub(crate) fn try_reserve(&mut self) -> bool {
        if self.settings_received && self.waiters.is_empty() && self.active < self.peer_max_streams
        {
            self.active += 1;
            true
        } else {
            false
        }
    }

    /// Queues a caller for a slot; returns its ticket.
    pub(crate) fn enqueue_waiter(&mut self, waker: &Waker) -> u64 {
        let id = self.next_waiter;
        self.next_waiter += 1;
        self.waiters.push_back((id, waker.clone()));
        id
    }

    /// Whether waiter `id` was granted a slot (which it now owns).
    pub(crate) fn claim_grant(&mut self, id: u64) -> bool {
        match self.granted.iter().position(|&g| g == id) {
            Some(i) => {
                self.granted.swap_remove(i);
                true
            }
            None => false,
        }
    }

    /// Refreshes a queued waiter's waker.
    pub(crate) fn update_waiter(&mut self, id: u64, waker: &Waker) {
        if let Some((_, w)) = self.waiters.iter_mut().find(|(i, _)| *i == id)
            && !w.will_wake(waker)
        {
            *w = waker.clone();
        }
    }

    /// A waiter gave up (its future was dropped, or the connection refuses).
    pub(crate) fn cancel_waiter(&mut self, id: u64, wakers: &mut Wakers) {
        if self.claim_grant(id) {
            self.release_slot(wakers);
        } else if let Some(i) = self.waiters.iter().position(|(w, _)| *w == id) {
            self.waiters.remove(i);
        }
    }

    /// Gives a slot back and hands free slots to waiters, in order.
    pub(crate) fn release_slot(&mut self, wakers: &mut Wakers) {
        self.active = self.active.saturating_sub(1);
        self.grant(wakers);
    }

    fn grant(&mut self, wakers: &mut Wakers) {
        if !self.settings_received {
            return;
        }
        while self.active < self.peer_max_streams {
            let Some((id, waker)) = self.waiters.pop_front() else {
                return;
            };
            self.active += 1;
            self.granted.push(id);
            wakers.push(waker);
        }
    }

    /// Allocates the next stream id and a table slot for it (its slot already reserved).
    /// `refs`: the handles that will refer to it.
    pub(crate) fn insert_stream(&mut self, refs: u8) -> (usize, u32) {
        let id = self.next_id;
        self.next_id = self.next_id.saturating_add(2);
        (self.insert_stream_id(id, refs), id)
    }

    /// A table slot for stream `id` (either role; its concurrency slot already counted).
    pub(crate) fn insert_stream_id(&mut self, id: u32, refs: u8) -> usize {
        let mut stream = Stream::new(
            id,
            self.peer_initial_window,
            i64::from(self.config.initial_stream_window),
        );
        stream.refs = refs;
        self.live += 1;
        let idx = match self.free.pop() {
            Some(idx) => {
                self.streams[idx] = Some(stream);
                idx
            }
            None => {
                self.streams.push(Some(stream));
                self.streams.len() - 1
            }
        };
        self.ids.insert(id, idx);
        idx
    }

    // === sending ===

    /// Sends what the stream's windows allow of its buffered data (at most `budget` bytes),
    /// then its end. Returns whether anything was queued for writing.
    pub(crate) fn flush_stream(&mut self, idx: usize, mut budget: usize) -> bool {
        let max_frame = self.peer_max_frame as usize;
        let Some(s) = self.streams.get_mut(idx).and_then(Option::as_mut) else {
            return false;
        };
        if s.error.is_some() || s.send_done() {
            s.send_buf.clear();
            return false;
        }
        let mut wrote = false;
        while let Some(front) = s.send_buf.front_mut() {
            if front.is_empty() {
                s.send_buf.pop_front();
                continue;
            }
            let allowed = s.send_window.min(self.conn_send_window);
            if allowed <= 0 {
                if s.send_window > 0 && !s.conn_queued {
                    s.conn_queued = true;
                    self.conn_blocked.push_back(idx);
                }
                return wrote;
            }
            if budget == 0 {
                // Had its turn: to the back of the line.
                if !s.conn_queued {
                    s.conn_queued = true;
                    self.conn_blocked.push_back(idx);
                }
                return wrote;
            }
            let n = front
                .len()
                .min(max_frame)
                .min(budget)
                .min(usize::try_from(allowed).unwrap_or(usize::MAX));
            budget -= n;
            let chunk = if n == front.len() {
                s.send_buf.pop_front().unwrap_or_default()
            } else {
                front.split_to(n)
            };
            s.send_window -= n as i64;
            self.conn_send_window -= n as i64;
            let last = s.send_buf.is_empty() && matches!(s.send_end, SendEnd::Pending(None));
            self.write.put_data(s.id, chunk, last);
            wrote = true;
            if last {
                s.send_end = SendEnd::Done;
                return true;
            }
        }
        if !matches!(s.send_end, SendEnd::Pending(_)) {
            return wrote;
        }
        if let SendEnd::Pending(trailers) = std::mem::replace(&mut s.send_end, SendEnd::Done) {
            let id = s.id;
            match trailers {
                None => self.write.put_data(id, Bytes::new(), true),
                Some(trailers) => {
                    self.put_trailers(id, &trailers);
                    super::maps::give(trailers);
                }
            }
            wrote = true;
        }
        wrote
    }

    /// Encodes a trailers HEADERS frame (END_STREAM) into the write queue.
    pub(crate) fn put_trailers(&mut self, id: u32, trailers: &HeaderMap) {
        self.hbuf.clear();
        self.encoder.begin_block(&mut self.hbuf);
        for (name, value) in trailers {
            if is_connection_specific(name) {
                continue;
            }
            self.encoder.encode(
                name.as_str().as_bytes(),
                value.as_bytes(),
                value.is_sensitive(),
                &mut self.hbuf,
            );
        }
        frame::put_headers(
            self.write.scratch(),
            id,
            &self.hbuf,
            true,
            self.peer_max_frame,
        );
    }

    /// Serves streams waiting for the connection window, one frame each in turn.
    fn serve_conn_blocked(&mut self, wakers: &mut Wakers) {
        while self.conn_send_window > 0 {
            let Some(idx) = self.conn_blocked.pop_front() else {
                return;
            };
            let max_frame = self.peer_max_frame as usize;
            match self.stream(idx) {
                Some(s) if s.conn_queued => s.conn_queued = false,
                _ => continue,
            }
            self.flush_stream(idx, max_frame);
            self.after_send(idx, wakers);
        }
    }

    /// After sending on a stream: wakes a sender waiting for room, and closes the stream when
    /// both halves are done.
    pub(crate) fn after_send(&mut self, idx: usize, wakers: &mut Wakers) {
        let Some(s) = self.stream(idx) else {
            return;
        };
        if s.send_buf.is_empty()
            && let Some(w) = s.send_waker.take()
        {
            wakers.push(w);
        }
        if s.send_done() && s.recv_end && !s.closed {
            self.close_stream(idx, wakers);
        }
    }

    // === receiving ===

    /// The consumer took `len` bytes of the stream's data: they count as free again, and a
    /// WINDOW_UPDATE goes out once half a window is free (stream and connection separately;
    /// in the client role the connection's went back when the data arrived, see `on_data`).
    /// Returns whether a frame was queued.
    pub(crate) fn release(&mut self, idx: usize, len: usize) -> bool {
        let len = u32::try_from(len).unwrap_or(u32::MAX);
        let half_stream = self.config.initial_stream_window / 2;
        let mut wrote = false;
        if let Some(s) = self.streams.get_mut(idx).and_then(Option::as_mut) {
            s.unreleased = s.unreleased.saturating_add(len);
            if s.unreleased >= half_stream && !s.recv_end && !s.closed {
                frame::put_window_update(self.write.scratch(), s.id, s.unreleased);
                s.recv_window += i64::from(s.unreleased);
                s.unreleased = 0;
                wrote = true;
            }
        }
        (self.role != Role::Client && self.release_conn(len)) || wrote
    }

    /// Returns `len` bytes of connection window (data consumed or discarded).
    pub(crate) fn release_conn(&mut self, len: u32) -> bool {
        self.conn_unreleased = self.conn_unreleased.saturating_add(len);
        if self.conn_unreleased >= self.config.initial_conn_window / 2 {
            frame::put_window_update(self.write.scratch(), 0, self.conn_unreleased);
            self.conn_recv_window += i64::from(self.conn_unreleased);
            self.conn_unreleased = 0;
            return true;
        }
        false
    }

    // === closing ===

    /// The stream is closed at the protocol level: out of the id map and the concurrency count;
    /// freed now if no handle refers to it.
    pub(crate) fn close_stream(&mut self, idx: usize, wakers: &mut Wakers) {
        let Some(s) = self.streams.get_mut(idx).and_then(Option::as_mut) else {
            return;
        };
        if s.closed {
            return;
        }
        s.closed = true;
        s.send_buf.clear();
        wakers.extend(s.recv_waker.take());
        wakers.extend(s.send_waker.take());
        let (id, refs) = (s.id, s.refs);
        self.ids.remove(&id);
        self.release_slot(wakers);
        if refs == 0 {
            self.free_stream(idx);
        }
    }

    /// Counts a reply the peer's frames made us queue (see [`MAX_QUEUED_REPLIES`]).
    fn reply_queued(&mut self) {
        self.replies_queued = self.replies_queued.saturating_add(1);
        if self.replies_queued > MAX_QUEUED_REPLIES {
            self.calm
                .get_or_insert("too many replies queued to a peer that does not read them");
        }
    }

    /// [server role] Counts a stream error the peer caused (see [`STREAM_ERROR_BUDGET`]).
    pub(crate) fn peer_stream_error(&mut self) {
        if self.role != Role::Server {
            return;
        }
        let now = Instant::now();
        if now.duration_since(self.stream_errors.0) > STREAM_ERROR_WINDOW {
            self.stream_errors = (now, 0);
        }
        self.stream_errors.1 += 1;
        if self.stream_errors.1 > STREAM_ERROR_BUDGET {
            self.calm.get_or_insert("too many stream errors");
        }
    }

    /// Fails and closes a stream, sending RST_STREAM(reason) when `send_rst`.
    pub(crate) fn reset_stream(
        &mut self,
        idx: usize,
        error: Error,
        send_rst: Option<Reason>,
        wakers: &mut Wakers,
    ) {
        let Some(s) = self.streams.get_mut(idx).and_then(Option::as_mut) else {
            return;
        };
        if s.closed {
            return;
        }
        if s.error.is_none() {
            s.error = Some(error);
        }
        if let Some(reason) = send_rst {
            let id = s.id;
            frame::put_rst_stream(self.write.scratch(), id, reason);
            self.reply_queued();
            self.reset_ids.insert(id);
        }
        self.close_stream(idx, wakers);
    }

    /// A handle let go of a stream before its end. The last one to go resets a stream still
    /// open (CANCEL: the peer sees the call cancelled); an earlier one leaves it to the other
    /// half (a dropped response while the request body still streams discards the response's
    /// data as it comes). Returns whether a frame was queued.
    pub(crate) fn abandon(&mut self, idx: usize, recv: bool, wakers: &mut Wakers) -> bool {
        let Some(s) = self.stream(idx) else {
            return false;
        };
        let mut wrote = false;
        if !s.closed {
            if s.refs <= 1 {
                self.reset_stream(
                    idx,
                    Error::Local(Reason::CANCEL, "call dropped"),
                    Some(Reason::CANCEL),
                    wakers,
                );
                wrote = true;
            } else if recv && !s.recv_dropped {
                s.recv_dropped = true;
                let unread = std::mem::take(&mut s.recv_q).len();
                s.trailers = None;
                wrote = self.role != Role::Client
                    && self.release_conn(u32::try_from(unread).unwrap_or(u32::MAX));
            }
        }
        self.drop_ref(idx);
        wrote
    }

    /// A handle let go of a stream: frees it once closed and unreferenced.
    pub(crate) fn drop_ref(&mut self, idx: usize) {
        let Some(s) = self.stream(idx) else {
            return;
        };
        s.refs = s.refs.saturating_sub(1);
        if s.refs == 0 && s.closed {
            self.free_stream(idx);
        }
    }

    fn free_stream(&mut self, idx: usize) {
        let Some(slot) = self.streams.get_mut(idx) else {
            return;
        };
        let Some(s) = slot.as_ref() else {
            return;
        };
        // Data nobody will read still occupied the connection window.
        let unread = u32::try_from(s.recv_q.len()).unwrap_or(u32::MAX);
        // Dropped in place (a stream is a few hundred bytes: no move).
        *slot = None;
        if unread > 0 && self.role != Role::Client {
            self.release_conn(unread);
        }
        self.live -= 1;
        self.free.push(idx);
    }

    /// The connection ended: every stream and waiter fails with `error`.
    fn fail_all(&mut self, error: &Error, wakers: &mut Wakers) {
        if self.closed.is_none() {
            self.closed = Some(error.clone());
        }
        for (idx, slot) in self.streams.iter_mut().enumerate() {
            let Some(s) = slot else { continue };
            if s.closed {
                continue;
            }
            s.closed = true;
            if s.error.is_none() && !(s.recv_end && s.send_done()) {
                s.error = Some(error.clone());
            }
            s.send_buf.clear();
            wakers.extend(s.recv_waker.take());
            wakers.extend(s.send_waker.take());
            if s.refs == 0 {
                *slot = None;
                self.live -= 1;
                self.free.push(idx);
            }
        }
        self.ids.clear();
        self.conn_blocked.clear();
        self.active = 0;
        wakers.extend(self.waiters.drain(..).map(|(_, w)| w));
        self.granted.clear();
        wakers.extend(self.drain_waker.take());
    }

    /// Streams still referenced or open.
    fn has_streams(&self) -> bool {
        self.live > 0
    }
}

/// The body length a head's content-length announces (None: none, or not a number).
pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Header fields that are about one connection and never forwarded (RFC 9113 section 8.2.2).
pub(crate) fn is_connection_specific(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade" | "host"
    )
}

// === the connection task ===

/// Drives one connection: reads and handles frames, writes the queue, keeps it alive. Ends
/// (Ok) when the peer closed it cleanly or nothing uses it any more; Err on a connection error.
/// Dropped early, it fails every stream still open.
pub struct Connection<I> {
    io: I,
    shared: Arc<Shared>,
    reader: FrameReader,
    decoder: hpack::Decoder,
    out: WriteQueue,
    /// Written bytes not yet flushed.
    unflushed: bool,
    wakers: Wakers,
    keepalive: Option<Keepalive>,
    idle: Option<Idle>,
    /// Set once the connection failed or finished: write what is queued (GOAWAY), then end.
    ending: Option<Result<(), Error>>,
    /// [server role] the client's preface is still to be read.
    preface_pending: bool,
    /// The task's owner starts each turn (`new_turn`); otherwise every poll is a new turn.
    turns_managed: bool,
    /// A new turn starts at the next poll (the budget is refilled under the lock).
    turn_fresh: bool,
    /// This turn's budget is spent: the connection yields until the next turn.
    spent: bool,
}

/// [server role] The idle check (see [`Config::idle_timeout`]).
struct Idle {
    /// Half the timeout: how often the connection is looked at.
    period: Duration,
    sleep: Pin<Box<Sleep>>,
    /// `sleep` holds this task's waker.
    armed: bool,
    /// The highest stream id at the last look.
    last_id: u32,
    /// The last look found a stream open.
    busy: bool,
    /// Quiet looks in a row: no stream open at this look or the one before, none opened
    /// between them. Two in a row span at least two periods (the timeout) without a stream.
    quiet: u8,
}

impl Idle {
    const QUIET_LOOKS: u8 = 2;
}

struct Keepalive {
    interval: Duration,
    timeout: Duration,
    sleep: Pin<Box<Sleep>>,
    /// `sleep` was polled since it was made or reset: it holds this task's waker, and the
    /// timer driver wakes the task when it fires.
    armed: bool,
    /// A PING is in flight; `sleep` is its deadline.
    waiting: bool,
}

impl Keepalive {
    /// Whether the timer fired. The `Sleep` is polled only when that can tell something new:
    /// until it is armed, and once the driver took it off the wheel (`is_elapsed`, an atomic
    /// load), rather than on every turn of the connection loop, several turns per call.
    fn fired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.armed && !self.sleep.is_elapsed() {
            return false;
        }
        self.armed = true;
        self.sleep.as_mut().poll(cx).is_ready()
    }

    /// Moves the deadline and registers this task's waker for it.
    fn reset(&mut self, deadline: Instant, cx: &mut Context<'_>) {
        self.sleep.as_mut().reset(deadline);
        self.armed = true;
        let _ = self.sleep.as_mut().poll(cx);
    }
}

/// Our SETTINGS (`role_setting`, then the ones both roles send) and the WINDOW_UPDATE that
/// raises the connection window from the default to `config.initial_conn_window`.
fn put_local_settings(out: &mut BytesMut, role_setting: (u16, u32), config: &Config) {
    frame::put_settings(
        out,
        &[
            role_setting,
            (setting::INITIAL_WINDOW_SIZE, config.initial_stream_window),
            (setting::MAX_FRAME_SIZE, config.max_frame_size),
            (setting::MAX_HEADER_LIST_SIZE, config.max_header_list_size),
        ],
    );
    let extra = config
        .initial_conn_window
        .saturating_sub(frame::DEFAULT_WINDOW);
    if extra > 0 {
        frame::put_window_update(out, 0, extra);
    }
}

/// Starts a client connection over `io` (already connected, TLS done): queues the preface,
/// our SETTINGS and the connection WINDOW_UPDATE, which the connection task writes first.
pub(crate) fn start<I>(io: I, config: Config) -> (Arc<Shared>, Connection<I>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut state = State::new(config.clone());
    {
        let out = state.write.scratch();
        out.extend_from_slice(frame::PREFACE);
        put_local_settings(out, (setting::ENABLE_PUSH, 0), &config);
    }
    let shared = Arc::new(Shared {
        state: Mutex::new(state),
        accepting: AtomicBool::new(true),
    });
    let keepalive = config.keepalive.map(|(interval, timeout)| Keepalive {
        interval,
        timeout,
        sleep: Box::pin(tokio::time::sleep(interval)),
        armed: false,
        waiting: false,
    });
    let conn = Connection {
        io,
        shared: shared.clone(),
        // A block somewhat over the list limit is still decoded (to keep HPACK in step) and
        // refused for its stream alone; only a far larger one is a connection error.
        reader: FrameReader::new(
            config.max_frame_size,
            (config.max_header_list_size as usize)
                .saturating_mul(2)
                .max(64 * 1024),
        ),
        decoder: hpack::Decoder::new(4096),
        out: WriteQueue::new(),
        unflushed: false,
        wakers: Wakers::default(),
        keepalive,
        idle: None,
        ending: None,
        preface_pending: false,
        turns_managed: false,
        turn_fresh: true,
        spent: false,
    };
    (shared, conn)
}

/// [server role] Starts serving a client connection over `io`, whose first bytes are the
/// client's preface (checked by the connection task): queues our SETTINGS (no ENABLE_PUSH:
/// servers do not send it) and the connection WINDOW_UPDATE. `max_streams`: our
/// SETTINGS_MAX_CONCURRENT_STREAMS. New streams go to [`State::accepted`].
pub(crate) fn start_server<I>(
    io: I,
    config: Config,
    max_streams: u32,
) -> (Arc<Shared>, Connection<I>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (shared, mut conn) = start(io, config.clone());
    {
        let mut st = shared.lock();
        st.role = Role::Server;
        st.max_peer_streams = max_streams as usize;
        st.settings_received = true;
        let out = st.write.scratch();
        out.clear();
        put_local_settings(out, (setting::MAX_CONCURRENT_STREAMS, max_streams), &config);
    }
    conn.preface_pending = true;
    conn.turns_managed = true;
    conn.idle = config
        .idle_timeout
        .filter(|t| !t.is_zero())
        .map(|timeout| Idle {
            period: timeout / 2,
            sleep: Box::pin(tokio::time::sleep(timeout / 2)),
            armed: false,
            last_id: 0,
            busy: false,
            quiet: 0,
        });
    (shared, conn)
}

impl<I> Future for Connection<I>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    type Output = Result<(), Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if this.ending.is_some() {
            return this.poll_end(cx);
        }
        if !this.turns_managed {
            this.turn_fresh = true;
        }
        if this.turn_fresh {
            this.spent = false;
        }
        let mut rounds = 0;
        loop {
            rounds += 1;
            if rounds > 4 || this.spent {
                // Still busy: let other tasks run, and come back.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            // 1. Read whatever is ready (unless enough waits to be handled).
            let mut read_pending = false;
            let mut eof = false;
            let mut failed = None;
            for _ in 0..READS_PER_POLL {
                if this.reader.buffered() >= READ_AHEAD {
                    break;
                }
                let buf = this.reader.buf_mut();
                match tokio_util::io::poll_read_buf(Pin::new(&mut this.io), cx, buf) {
                    Poll::Ready(Ok(0)) => {
                        eof = true;
                        break;
                    }
                    Poll::Ready(Ok(_)) => crate::hooks::data_read(),
                    Poll::Ready(Err(e)) => {
                        failed = Some(Error::Io(e.kind()));
                        break;
                    }
                    Poll::Pending => {
                        read_pending = true;
                        break;
                    }
                }
            }
            // 2. Keepalive.
            let mut ping_due = false;
            if let Some(ka) = this.keepalive.as_mut()
                && ka.fired(cx)
            {
                if ka.waiting {
                    failed.get_or_insert(Error::KeepaliveTimeout);
                } else {
                    ping_due = true;
                    ka.waiting = true;
                    ka.reset(Instant::now() + ka.timeout, cx);
                }
            }
            // (Polled only until armed and once fired, as the keepalive timer.)
            let mut idle_look = false;
            if let Some(idle) = this.idle.as_mut()
                && (!idle.armed || idle.sleep.is_elapsed())
            {
                idle.armed = true;
                if idle.sleep.as_mut().poll(cx).is_ready() {
                    idle_look = true;
                    let next = Instant::now() + idle.period;
                    idle.sleep.as_mut().reset(next);
                    // (Registers the waker for the next look.)
                    let _ = idle.sleep.as_mut().poll(cx);
                }
            }
            // 3. Handle the frames, under one lock.
            let mut pong = false;
            let done = {
                let mut st = this.shared.lock();
                if std::mem::take(&mut this.turn_fresh) {
                    st.budget = TURN_BUDGET;
                }
                // [server role] the client's preface comes first.
                let preface = if this.preface_pending {
                    this.reader
                        .take_preface()
                        .inspect(|&taken| this.preface_pending = !taken)
                } else {
                    Ok(true)
                };
                let handled = match preface {
                    Ok(true) => handle_frames(
                        &mut st,
                        &mut this.reader,
                        &mut this.decoder,
                        &mut this.wakers,
                        &mut pong,
                    ),
                    Ok(false) => Ok(()),
                    Err(e) => Err(e),
                };
                if let Err(e) = handled {
                    debug!(error = %e, "HTTP/2 connection error; sending GOAWAY");
                    // [server role] GOAWAY names the last client stream we may have processed.
                    let last = match st.role {
                        Role::Client => 0,
                        Role::Server => st.peer_last_id,
                    };
                    frame::put_goaway(st.write.scratch(), last, e.reason, e.detail.as_bytes());
                    failed.get_or_insert(Error::Conn(e));
                }
                if idle_look && let Some(idle) = this.idle.as_mut() {
                    let busy = st.has_streams();
                    let quiet = !busy && !idle.busy && st.peer_last_id == idle.last_id;
                    idle.quiet = if quiet { idle.quiet + 1 } else { 0 };
                    (idle.last_id, idle.busy) = (st.peer_last_id, busy);
                    if idle.quiet >= Idle::QUIET_LOOKS && st.local_goaway.is_none() {
                        debug!("idle client connection; sending GOAWAY");
                        let last = st.peer_last_id;
                        st.local_goaway = Some(last);
                        frame::put_goaway(st.write.scratch(), last, Reason::NO_ERROR, b"idle");
                    }
                }
                if ping_due {
                    let payload = ping_payload();
                    st.ping_sent = Some(payload);
                    frame::put_ping(st.write.scratch(), false, payload);
                }
                if eof && failed.is_none() {
                    failed = Some(Error::Closed);
                }
                let mut done = None;
                if let Some(e) = failed.take() {
                    st.fail_all(&e, &mut this.wakers);
                    done = Some(if eof && !st.has_streams() {
                        Ok(())
                    } else {
                        Err(e)
                    });
                } else if (st.senders == 0 || st.goaway.is_some() || st.local_goaway.is_some())
                    && !st.has_streams()
                {
                    // Nobody can use the connection any more: say goodbye.
                    if st.goaway.is_none() && st.local_goaway.is_none() {
                        frame::put_goaway(st.write.scratch(), 0, Reason::NO_ERROR, b"");
                    }
                    st.fail_all(&Error::Closed, &mut this.wakers);
                    done = Some(Ok(()));
                }
                if st.refusal().is_some() {
                    if let Some(w) = st.drain_waker.take() {
                        this.wakers.push(w);
                    }
                    this.shared.accepting.store(false, Ordering::Release);
                }
                if this.out.is_empty() {
                    std::mem::swap(&mut this.out, &mut st.write);
                    // What was queued goes to the socket now: the peer is reading.
                    st.replies_queued = 0;
                }
                this.spent = st.budget <= 0;
                st.task_woken = false;
                set_waker(&mut st.task_waker, cx);
                done
            };
            if pong && let Some(ka) = this.keepalive.as_mut() {
                ka.waiting = false;
                ka.reset(Instant::now() + ka.interval, cx);
            }
            this.wakers.wake_all();
            if let Some(result) = done {
                if let Err(e) = &result {
                    debug!(error = %e, "HTTP/2 connection ended");
                }
                this.ending = Some(result);
                return this.poll_end(cx);
            }
            // 4. Write and flush.
            let mut write_pending = false;
            if !this.out.is_empty() {
                match this.out.poll_write(cx, Pin::new(&mut this.io)) {
                    Poll::Ready(Ok(())) => this.unflushed = true,
                    Poll::Ready(Err(e)) => {
                        this.fail(Error::Io(e.kind()));
                        return this.poll_end(cx);
                    }
                    Poll::Pending => write_pending = true,
                }
            }
            if this.unflushed && !write_pending {
                match Pin::new(&mut this.io).poll_flush(cx) {
                    Poll::Ready(Ok(())) => this.unflushed = false,
                    Poll::Ready(Err(e)) => {
                        this.fail(Error::Io(e.kind()));
                        return this.poll_end(cx);
                    }
                    Poll::Pending => {}
                }
            }
            if read_pending && !this.spent {
                // Callers that queued frames meanwhile woke us (task_woken was cleared).
                return Poll::Pending;
            }
        }
    }
}

impl<I> Connection<I>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    /// [server role] The task starts a new turn: the work budget is refilled at the next poll.
    pub(crate) fn new_turn(&mut self) {
        self.turn_fresh = true;
    }

    /// This turn's work budget is spent (the task should yield).
    pub(crate) fn spent(&self) -> bool {
        self.spent
    }

    fn fail(&mut self, error: Error) {
        {
            let mut st = self.shared.lock();
            st.fail_all(&error, &mut self.wakers);
        }
        self.shared.accepting.store(false, Ordering::Release);
        self.wakers.wake_all();
        self.ending = Some(Err(error));
    }

    /// Writes what is left (a GOAWAY) without waiting for a slow peer, then ends.
    fn poll_end(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.shared.accepting.store(false, Ordering::Release);
        {
            let mut st = self.shared.lock();
            if self.out.is_empty() {
                std::mem::swap(&mut self.out, &mut st.write);
            }
        }
        if !self.out.is_empty() {
            let _ = self.out.poll_write(cx, Pin::new(&mut self.io));
        }
        let _ = Pin::new(&mut self.io).poll_flush(cx);
        let _ = Pin::new(&mut self.io).poll_shutdown(cx);
        Poll::Ready(self.ending.take().unwrap_or(Ok(())))
    }
}

impl<I> Drop for Connection<I> {
    fn drop(&mut self) {
        self.shared.accepting.store(false, Ordering::Release);
        let mut wakers = Wakers::default();
        {
            let mut st = self.shared.lock();
            if st.closed.is_none() {
                st.fail_all(&Error::Closed, &mut wakers);
            }
        }
        wakers.wake_all();
    }
}

// === frame handling (under the lock) ===

fn handle_frames(
    st: &mut State,
    reader: &mut FrameReader,
    decoder: &mut hpack::Decoder,
    wakers: &mut Wakers,
    pong: &mut bool,
) -> Result<(), ConnError> {
    if st.closed.is_some() {
        return Ok(());
    }
    while st.budget > 0 {
        if let Some(detail) = st.calm {
            return Err(ConnError {
                reason: Reason::ENHANCE_YOUR_CALM,
                detail,
            });
        }
        let Some(frame) = reader.next()? else {
            break;
        };
        st.budget -= 1;
        match frame {
            Frame::Data {
                stream,
                data,
                end_stream,
                flow_len,
            } => {
                if flow_len == 0 && !end_stream {
                    st.empty_frames += 1;
                    if st.empty_frames > MAX_EMPTY_FRAMES {
                        st.calm.get_or_insert("too many empty DATA frames");
                    }
                } else {
                    st.empty_frames = 0;
                }
                on_data(st, stream, data, end_stream, flow_len, wakers)?;
            }
            Frame::Headers {
                stream,
                block,
                end_stream,
            } => {
                st.empty_frames = 0;
                // Decoding costs by the byte (an indexed field is one byte however large the
                // entry it names: an HPACK bomb is many such bytes).
                st.budget -= i32::try_from(block.len() / HEADER_BYTES_PER_UNIT).unwrap_or(i32::MAX);
                on_headers(st, decoder, stream, &block, end_stream, wakers)?;
            }
            Frame::Priority { .. } | Frame::Unknown => {}
            Frame::RstStream { stream, reason } => {
                check_not_idle(st, stream)?;
                if let Some(&idx) = st.ids.get(&stream) {
                    if st.role == Role::Server {
                        // [server role] rapid-reset protection.
                        super::server::count_reset(st, idx)?;
                    }
                    let error = if reason == Reason::REFUSED_STREAM {
                        Error::Refused("the peer refused the stream (REFUSED_STREAM)")
                    } else {
                        Error::Reset(reason)
                    };
                    st.reset_stream(idx, error, None, wakers);
                }
            }
            Frame::Settings { ack, params } => {
                if !ack {
                    on_settings(st, &params, wakers)?;
                }
            }
            Frame::PushPromise { .. } => {
                return Err(ConnError {
                    reason: Reason::PROTOCOL_ERROR,
                    detail: "PUSH_PROMISE with push disabled",
                });
            }
            Frame::Ping { ack, payload } => {
                if ack {
                    if st.ping_sent == Some(payload) {
                        st.ping_sent = None;
                        *pong = true;
                    }
                } else {
                    frame::put_ping(st.write.scratch(), true, payload);
                    st.reply_queued();
                }
            }
            Frame::GoAway {
                last_stream,
                reason,
                debug,
            } => on_goaway(st, last_stream, reason, &debug, wakers),
            Frame::WindowUpdate { stream, increment } => {
                on_window_update(st, stream, increment, wakers)?;
            }
        }
    }
    match st.calm {
        Some(detail) => Err(ConnError {
            reason: Reason::ENHANCE_YOUR_CALM,
            detail,
        }),
        None => Ok(()),
    }
}

/// Client role: a frame on a stream we never opened (or a server-initiated id) is a
/// connection error; on one we closed it is ignored.
fn check_not_idle(st: &State, stream: u32) -> Result<(), ConnError> {
    // [server role] the peer opens odd ids; beyond the highest it opened, a stream is idle.
    let idle = match st.role {
        Role::Client => stream.is_multiple_of(2) || stream >= st.next_id,
        Role::Server => stream.is_multiple_of(2) || stream > st.peer_last_id,
    };
    if idle {
        return Err(ConnError {
            reason: Reason::PROTOCOL_ERROR,
            detail: "frame on an idle stream",
        });
    }
    Ok(())
}

fn on_data(
    st: &mut State,
    stream: u32,
    data: Bytes,
    end_stream: bool,
    flow_len: u32,
    wakers: &mut Wakers,
) -> Result<(), ConnError> {
    st.conn_recv_window -= i64::from(flow_len);
    if st.conn_recv_window < 0 {
        return Err(ConnError {
            reason: Reason::FLOW_CONTROL_ERROR,
            detail: "DATA beyond the connection window",
        });
    }
    // Client role: the connection window goes back as data arrives, not as it is read, so a
    // stream whose reader stalls (a client that does not read its answer) holds only its own
    // stream window and never the connection other calls share. (Server role: a client's
    // streams share its own connection window; a slow part holds back only that client.)
    let conn_at_receipt = st.role == Role::Client;
    if conn_at_receipt {
        st.release_conn(flow_len);
    }
    let Some(&idx) = st.ids.get(&stream) else {
        check_not_idle(st, stream)?;
        // A stream already closed: the bytes still count, and are free at once.
        if !conn_at_receipt {
            st.release_conn(flow_len);
        }
        if !st.reset_ids.contains(stream) {
            // Closed by both ends' END_STREAM or by the peer's RST_STREAM: the peer broke the
            // protocol (RFC 9113 section 5.1). A stream error, then silence.
            frame::put_rst_stream(st.write.scratch(), stream, Reason::STREAM_CLOSED);
            st.reply_queued();
            st.peer_stream_error();
            st.reset_ids.insert(stream);
        }
        return Ok(());
    };
    let Some(s) = st.stream(idx) else {
        return Ok(());
    };
    let problem = if !s.head_received {
        Some((Reason::PROTOCOL_ERROR, "DATA before the response headers"))
    } else if s.recv_end {
        Some((Reason::STREAM_CLOSED, "DATA after END_STREAM"))
    } else {
        s.recv_window -= i64::from(flow_len);
        if s.recv_window < 0 {
            Some((Reason::FLOW_CONTROL_ERROR, "DATA beyond the stream window"))
        } else if let Some(left) = s.expect_len {
            let len = data.len() as u64;
            if len > left || (end_stream && len != left) {
                Some((
                    Reason::PROTOCOL_ERROR,
                    "data does not match the content-length",
                ))
            } else {
                s.expect_len = Some(left - len);
                None
            }
        } else {
            None
        }
    };
    if let Some((reason, detail)) = problem {
        if !conn_at_receipt {
            st.release_conn(flow_len);
        }
        st.peer_stream_error();
        st.reset_stream(idx, Error::Local(reason, detail), Some(reason), wakers);
        return Ok(());
    }
    if s.recv_dropped {
        // Nobody will read it: free at once, connection-wide.
        if end_stream {
            s.recv_end = true;
        }
        if !conn_at_receipt {
            st.release_conn(flow_len);
        }
        if end_stream {
            st.after_send(idx, wakers);
        }
        return Ok(());
    }
    let padding = flow_len.saturating_sub(u32::try_from(data.len()).unwrap_or(u32::MAX));
    if !data.is_empty() {
        // A payload is a slice of a read buffer that other frames share: kept waiting, a small
        // one would pin a buffer many times its size. Behind unread data (a reader that does
        // not keep up), a small payload is copied out, so what a stream holds is about what
        // its window says; a reader that keeps up, or a large payload (most of its buffer),
        // stays in place.
        let data = if s.recv_q.is_empty() || data.len() >= COPY_BELOW {
            data
        } else {
            Bytes::copy_from_slice(&data)
        };
        s.recv_q.push_back(data);
    }
    if end_stream {
        s.recv_end = true;
    }
    wakers.extend(s.recv_waker.take());
    if padding > 0 {
        st.release(idx, padding as usize);
    }
    if end_stream {
        st.after_send(idx, wakers);
    }
    Ok(())
}

/// Pre-made names for the fields responses usually carry (no allocation, no table lookup).
fn known_name(name: &[u8]) -> Option<HeaderName> {
    static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
    static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
    static GRPC_ENCODING: HeaderName = HeaderName::from_static("grpc-encoding");
    static GRPC_ACCEPT_ENCODING: HeaderName = HeaderName::from_static("grpc-accept-encoding");
    static GRPC_DETAILS: HeaderName = HeaderName::from_static("grpc-status-details-bin");
    Some(match name {
        b"content-type" => http::header::CONTENT_TYPE,
        b"grpc-status" => GRPC_STATUS.clone(),
        b"grpc-message" => GRPC_MESSAGE.clone(),
        b"grpc-encoding" => GRPC_ENCODING.clone(),
        b"grpc-accept-encoding" => GRPC_ACCEPT_ENCODING.clone(),
        b"grpc-status-details-bin" => GRPC_DETAILS.clone(),
        b"date" => http::header::DATE,
        b"server" => http::header::SERVER,
        b"content-length" => http::header::CONTENT_LENGTH,
        b"te" => http::header::TE,
        _ => return None,
    })
}

/// A decoded header block: the `:status` pseudo-header and the regular fields, or what was
/// wrong with it (a stream error).
#[derive(Default)]
struct Decoded {
    status: Option<StatusCode>,
    pseudo: bool,
    headers: HeaderMap,
    bad: Option<&'static str>,
}

impl Decoded {
    fn field(&mut self, name: Bytes, value: Bytes) {
        if self.bad.is_some() {
            return;
        }
        if let Some(pseudo) = name.strip_prefix(b":") {
            if !self.headers.is_empty() {
                self.bad = Some("pseudo-header after a regular field");
            } else if pseudo != b"status" || self.status.is_some() {
                self.bad = Some("unexpected pseudo-header in a response");
            } else {
                self.pseudo = true;
                match StatusCode::from_bytes(&value) {
                    Ok(status) => self.status = Some(status),
                    Err(_) => self.bad = Some("malformed :status"),
                }
            }
            return;
        }
        let name = match known_name(&name) {
            Some(name) => name,
            None => {
                if name.iter().any(u8::is_ascii_uppercase) {
                    self.bad = Some("uppercase header name");
                    return;
                }
                match HeaderName::from_bytes(&name) {
                    Ok(name) => name,
                    Err(_) => {
                        self.bad = Some("invalid header name");
                        return;
                    }
                }
            }
        };
        if is_connection_specific(&name) && name != http::header::HOST {
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
}

fn on_headers(
    st: &mut State,
    decoder: &mut hpack::Decoder,
    stream: u32,
    block: &Bytes,
    end_stream: bool,
    wakers: &mut Wakers,
) -> Result<(), ConnError> {
    let max_list = st.config.max_header_list_size as usize;
    if st.role == Role::Server && !st.ids.contains_key(&stream) {
        // [server role] a request opening a stream (or trailers on one we closed).
        return super::server::on_request_headers(st, decoder, stream, block, end_stream, wakers);
    }
    let Some(&idx) = st.ids.get(&stream) else {
        check_not_idle(st, stream)?;
        // A stream we closed: decode anyway, to keep the HPACK table in step.
        return match decoder.decode(block, max_list, |_, _| {}) {
            Ok(()) | Err(hpack::HpackError::ListTooLarge { .. }) => Ok(()),
            Err(e) => Err(decode_error(&e)),
        };
    };
    let mut decoded = Decoded {
        headers: super::maps::take(),
        ..Decoded::default()
    };
    match decoder.decode(block, max_list, |n, v| decoded.field(n, v)) {
        Ok(()) => {}
        Err(hpack::HpackError::ListTooLarge { .. }) => {
            decoded.bad = Some("header list larger than SETTINGS_MAX_HEADER_LIST_SIZE");
        }
        Err(e) => return Err(decode_error(&e)),
    }
    let Some(s) = st.stream(idx) else {
        return Ok(());
    };
    if s.head_received && s.recv_end {
        // Half-closed (remote), whatever the block says: RFC 9113 section 5.1's STREAM_CLOSED.
        st.peer_stream_error();
        st.reset_stream(
            idx,
            Error::Local(Reason::STREAM_CLOSED, "HEADERS after END_STREAM"),
            Some(Reason::STREAM_CLOSED),
            wakers,
        );
        return Ok(());
    }
    if decoded.bad.is_none() {
        if !s.head_received {
            match decoded.status {
                None => decoded.bad = Some("response without :status"),
                // Informational: the real response follows (101 is not allowed in HTTP/2).
                Some(status) if status.is_informational() => {
                    if end_stream || status == StatusCode::SWITCHING_PROTOCOLS {
                        decoded.bad = Some("informational response ends the stream");
                    } else {
                        return Ok(());
                    }
                }
                Some(status) => {
                    // (No body follows a 204 or 304, whatever content-length says.)
                    if status != StatusCode::NO_CONTENT && status != StatusCode::NOT_MODIFIED {
                        s.expect_len = content_length(&decoded.headers);
                        if end_stream && s.expect_len.is_some_and(|len| len > 0) {
                            decoded.bad = Some("response ends before its content-length");
                        }
                    }
                    let mut head = http::Response::new(());
                    *head.status_mut() = status;
                    *head.version_mut() = http::Version::HTTP_2;
                    *head.headers_mut() = std::mem::take(&mut decoded.headers);
                    s.head = Some(head);
                    s.head_received = true;
                }
            }
        } else if s.expect_len.is_some_and(|left| left > 0) {
            decoded.bad = Some("request data does not match its content-length");
        } else if !end_stream {
            decoded.bad = Some("trailers without END_STREAM");
        } else if decoded.pseudo {
            decoded.bad = Some("pseudo-header in trailers");
        } else {
            s.trailers = Some(std::mem::take(&mut decoded.headers));
        }
    }
    if let Some(detail) = decoded.bad {
        debug!(stream, detail, "bad header block; resetting the stream");
        st.peer_stream_error();
        st.reset_stream(
            idx,
            Error::Local(Reason::PROTOCOL_ERROR, detail),
            Some(Reason::PROTOCOL_ERROR),
            wakers,
        );
        return Ok(());
    }
    if end_stream {
        s.recv_end = true;
    }
    wakers.extend(s.recv_waker.take());
    if end_stream {
        st.after_send(idx, wakers);
    }
    Ok(())
}

/// The connection error for a header block that could not be decoded: COMPRESSION_ERROR, or
/// ENHANCE_YOUR_CALM for an HPACK bomb.
pub(crate) fn decode_error(e: &hpack::HpackError) -> ConnError {
    match e {
        hpack::HpackError::Bomb(_) => ConnError {
            reason: Reason::ENHANCE_YOUR_CALM,
            detail: "header list far over the limit (an HPACK bomb)",
        },
        _ => ConnError {
            reason: Reason::COMPRESSION_ERROR,
            detail: "undecodable header block",
        },
    }
}

fn on_settings(
    st: &mut State,
    params: &[(u16, u32)],
    wakers: &mut Wakers,
) -> Result<(), ConnError> {
    for &(id, value) in params {
        match id {
            setting::HEADER_TABLE_SIZE => st.encoder.set_max_table_size(value as usize),
            setting::MAX_CONCURRENT_STREAMS => {
                st.peer_max_streams = usize::try_from(value).unwrap_or(usize::MAX);
            }
            setting::INITIAL_WINDOW_SIZE => {
                let delta = i64::from(value) - st.peer_initial_window;
                st.peer_initial_window = i64::from(value);
                if delta != 0 {
                    for idx in 0..st.streams.len() {
                        let Some(s) = st.stream(idx) else { continue };
                        if s.closed {
                            continue;
                        }
                        s.send_window += delta;
                        if s.send_window > i64::from(frame::MAX_WINDOW) {
                            return Err(ConnError {
                                reason: Reason::FLOW_CONTROL_ERROR,
                                detail: "SETTINGS_INITIAL_WINDOW_SIZE overflows a window",
                            });
                        }
                        if delta > 0 && !s.send_buf.is_empty() {
                            st.flush_stream(idx, usize::MAX);
                            st.after_send(idx, wakers);
                        }
                    }
                }
            }
            setting::MAX_FRAME_SIZE => st.peer_max_frame = value,
            _ => {}
        }
    }
    frame::put_settings_ack(st.write.scratch());
    st.reply_queued();
    st.settings_received = true;
    st.grant(wakers);
    Ok(())
}

fn on_goaway(st: &mut State, last_stream: u32, reason: Reason, data: &[u8], wakers: &mut Wakers) {
    debug!(
        last_stream,
        %reason,
        debug_data = %String::from_utf8_lossy(&data[..data.len().min(256)]),
        "peer sent GOAWAY"
    );
    let last = st.goaway.map_or(last_stream, |l| l.min(last_stream));
    st.goaway = Some(last);
    if st.role == Role::Server {
        // [server role] the peer's last id is about streams we open (none): it only stops
        // opening new ones; the open ones finish.
        return;
    }
    let refused: Vec<usize> = st
        .ids
        .iter()
        .filter(|&(&id, _)| id > last)
        .map(|(_, &idx)| idx)
        .collect();
    for idx in refused {
        st.reset_stream(
            idx,
            Error::Refused("the peer sent GOAWAY before processing the stream"),
            None,
            wakers,
        );
    }
    // Waiters for a slot will never get one here.
    wakers.extend(st.waiters.drain(..).map(|(_, w)| w));
    wakers.extend(st.drain_waker.take());
}

fn on_window_update(
    st: &mut State,
    stream: u32,
    increment: u32,
    wakers: &mut Wakers,
) -> Result<(), ConnError> {
    if stream == 0 {
        st.conn_send_window += i64::from(increment);
        if st.conn_send_window > i64::from(frame::MAX_WINDOW) {
            return Err(ConnError {
                reason: Reason::FLOW_CONTROL_ERROR,
                detail: "connection window above 2^31-1",
            });
        }
        st.serve_conn_blocked(wakers);
        return Ok(());
    }
    let Some(&idx) = st.ids.get(&stream) else {
        return check_not_idle(st, stream);
    };
    let Some(s) = st.stream(idx) else {
        return Ok(());
    };
    if increment == 0 {
        st.reset_stream(
            idx,
            Error::Local(Reason::PROTOCOL_ERROR, "WINDOW_UPDATE of 0"),
            Some(Reason::PROTOCOL_ERROR),
            wakers,
        );
        return Ok(());
    }
    s.send_window += i64::from(increment);
    if s.send_window > i64::from(frame::MAX_WINDOW) {
        st.reset_stream(
            idx,
            Error::Local(Reason::FLOW_CONTROL_ERROR, "stream window above 2^31-1"),
            Some(Reason::FLOW_CONTROL_ERROR),
            wakers,
        );
        return Ok(());
    }
    if !s.send_buf.is_empty() || matches!(s.send_end, SendEnd::Pending(_)) {
        st.flush_stream(idx, usize::MAX);
        st.after_send(idx, wakers);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_keep_their_order_through_pushes_pops_and_clears() {
        let mut q = Chunks::default();
        assert!(q.is_empty());
        assert_eq!(q.pop_front(), None);
        for round in 0..3u8 {
            for i in 0..5u8 {
                q.push_back(Bytes::from(vec![round, i]));
            }
            assert_eq!(q.len(), 10);
            assert_eq!(q.iter().count(), 5);
            assert_eq!(q.front_mut().map(|b| b.to_vec()), Some(vec![round, 0]));
            assert_eq!(q.pop_front(), Some(Bytes::from(vec![round, 0])));
            assert_eq!(q.pop_front(), Some(Bytes::from(vec![round, 1])));
            q.push_back(Bytes::from(vec![round, 9]));
            let rest: Vec<_> = q.iter().map(|b| b[1]).collect();
            assert_eq!(rest, [2, 3, 4, 9]);
            if round == 2 {
                let all: Vec<_> = std::mem::take(&mut q).into_vec();
                assert_eq!(all.len(), 4);
                assert_eq!(all[3], Bytes::from(vec![2, 9]));
            } else {
                q.clear();
            }
            assert!(q.is_empty());
            assert_eq!(q.len(), 0);
            assert_eq!(q.pop_front(), None);
        }
    }
}
