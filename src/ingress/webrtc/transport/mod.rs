//! The WebRTC transport: ICE, DTLS and SCTP for data-channel-only peers, on `str0m`, every peer of
//! an endpoint served from ONE UDP socket. Receives SDP offers or answers and trickled candidates
//! (as text, from signaling); hands on, per peer, the `data` channel as a [`ChannelIo`].
//!
//! ```text
//!                    +-------------------- Endpoint (one UDP socket) ---------------------+
//!  UDP datagrams --> | receive task: demux by local ICE ufrag (STUN USERNAME) or by remote |
//!                    | address --> bounded queue of the peer task that owns the str0m Rtc   |
//!                    +----------------------------------------------------------------------+
//!  peer task: Rtc input/timers, transmits on the shared socket, channel events:
//!    data (id 0)        <-> ChannelIo (incoming / outgoing, backpressured)
//!    negotiation (id 1) --> read and ignored (debug log)
//! ```
//!
//! * **Demultiplexing.** A STUN binding request carries `USERNAME = <our ufrag>:<their ufrag>`;
//!   the receive task routes it by our (per-peer, random) ufrag and pins its source address to
//!   that peer. Every other datagram (STUN responses, DTLS) is routed by source address: pinned
//!   by a STUN request, else claimed by a remote candidate from the SDP or trickle (a weaker claim
//!   that a request overrides). The peer task then asks `Rtc::accepts` before feeding it. A
//!   datagram nobody claims is dropped. Two peers between the same *pair of endpoints* would
//!   share one 5-tuple, which DTLS cannot tell apart: the first claim wins and the second peer
//!   times out. Browsers, pion and webrtc-rs bind a socket per connection, so this only bites two
//!   of *our* endpoints talking to each other more than once; use an endpoint per remote there.
//! * **Candidates.** Host candidates only (no mDNS, no STUN): `public_ips` if configured (NAT
//!   1:1), else the bound IP, else (wildcard bind) 127.0.0.1 plus the primary outbound IPv4. With a
//!   wildcard bind the kernel does not tell us the destination of a datagram, so the one handed
//!   to ICE is the loopback candidate for loopback sources and the first other candidate of the
//!   source's family otherwise.
//! * **Backpressure.** Outgoing: a message from `outgoing` is written only while the `data`
//!   channel's buffered (unacknowledged) amount is at most [`BUFFER_THRESHOLD`]; above it the
//!   task stops taking from the queue until str0m reports the buffered amount low again, so a
//!   sender waits in `outgoing.send`. Incoming: str0m acknowledges SCTP data as it parses it, so
//!   there is no receive window to close. When the protocol side stops reading, received messages
//!   queue in the peer task up to [`RECEIVE_BACKLOG`] bytes; beyond that, while nothing of our
//!   own is in flight, the task drops the peer's DTLS datagrams (still answering STUN, so the
//!   connection stays alive) and the remote SCTP retransmits them later, which stalls the remote
//!   sender through its own buffered amount. While our own data is in flight those datagrams
//!   carry the acknowledgements it needs (an echo would deadlock), so they are taken and the
//!   backlog may grow, up to [`RECEIVE_BACKLOG_MAX`], where the peer is closed. Resuming after a
//!   long stall waits for the remote's SCTP retransmission timer, which backs off (up to 60 s).
//! * **Lifecycle.** [`Opening::wait`] resolves when the `data` channel opens, or fails on close or
//!   after `connect_timeout`. An open peer ends when its channel or association closes, when ICE
//!   reports it disconnected, when nothing arrived from it for [`IDLE_TIMEOUT`] (str0m sends a
//!   consent check about every second, so a live peer is never quiet that long), on
//!   [`PeerHandle::close`] or [`Endpoint::close`] (both send an SCTP shutdown and a DTLS
//!   close_notify), or when the protocol side drops its [`ChannelIo`] (after at most 2 s for what
//!   it wrote last to be acknowledged). A dropped [`Opening`] or unanswered [`Offering`] ends its
//!   peer within a second. Then the task drops its `TransportSide` (the protocol sees `incoming`
//!   end, `outgoing` sends fail) and leaves the endpoint's tables.
//! * **Fairness.** A peer task handles at most 128 str0m outputs per turn and then yields, so one
//!   peer's retransmission burst cannot starve the socket's receive loop or the other peers.
//!
//! Measured on loopback (2 shared cores, debug build; `cargo test --test webrtc_transport --
//! --nocapture` prints them): connect (offer to both sides open) 10-170 ms; echo round trip
//! about 0.8 ms; 1 KiB messages echoed at 300-1300 msg/s each way (about 2700 msg/s with str0m
//! and its protocol crates optimised); 50 fresh connections with an immediate first message in
//! 0.5-3.5 s; a caller killed without goodbye noticed after about 4.7 s.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::channel::{ChannelConfig, ChannelId};
use str0m::{Candidate, Rtc};
use tokio::net::UdpSocket;
use tokio::sync::{Notify, mpsc, oneshot, watch};

use super::channel::ChannelIo;
use crate::ops::logs::List;

mod addrs;
mod demux;
mod peer;
#[cfg(test)]
mod tests;

/// While the `data` channel has more than this many bytes buffered (written but not yet
/// acknowledged), no further message is taken from `outgoing` (Go's `bufferThreshold` is 1 MiB).
/// Smaller than Go's on purpose: sctp-proto scans its whole in-flight queue (a hash lookup per
/// chunk) for every packet it sends, so its CPU grows with the square of the bytes in flight; at
/// 1 MiB a 1 MiB echo took ~90 ms CPU per side on loopback, at 256 KiB ~45 ms. It still lets a
/// 50 ms round trip carry ~5 MB/s.
pub const BUFFER_THRESHOLD: usize = 256 * 1024;

/// Largest data-channel message sent or accepted, in bytes (Chrome's default limit; Viam
/// chunks gRPC messages to about 16 KiB, Go to 60 KiB at most).
pub const MAX_MESSAGE_SIZE: usize = 256 * 1024;

/// Received bytes queued for a protocol side that is not reading before the transport stops
/// taking the peer's DTLS datagrams.
pub const RECEIVE_BACKLOG: usize = 1024 * 1024;

/// Received bytes queued for a protocol side that is not reading at which the peer is closed:
/// the bound when dropping datagrams is not safe (our own data is in flight, see module docs).
pub const RECEIVE_BACKLOG_MAX: usize = 16 * 1024 * 1024;

/// An open peer from which nothing (not even a STUN consent response) arrived for this long is
/// taken as gone.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// SCTP stream id and label of the channel that carries gRPC.
const DATA_CHANNEL: (u16, &str) = (0, "data");
/// SCTP stream id and label of the renegotiation channel (read and ignored).
const NEGOTIATION_CHANNEL: (u16, &str) = (1, "negotiation");

pub use crate::config::TransportConfig;

/// What can go wrong in the transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The remote description could not be parsed or used.
    #[error("invalid session description: {0}")]
    InvalidSdp(String),
    /// A trickled candidate could not be parsed.
    #[error("invalid ICE candidate: {0}")]
    InvalidCandidate(String),
    /// The peer closed or failed before its `data` channel opened.
    #[error("peer connection closed before the data channel opened")]
    Closed,
    /// The peer did not open its `data` channel in time.
    #[error("peer connection did not open within {0:?}")]
    Timeout(Duration),
    /// `max_peers` reached.
    #[error("too many WebRTC peers")]
    TooManyPeers,
    /// The UDP socket.
    #[error("UDP socket: {0}")]
    Io(#[from] std::io::Error),
}

/// One UDP socket and every peer on it. Cheap to clone; when the last clone is dropped the
/// endpoint closes as by [`Endpoint::close`].
#[derive(Clone)]
pub struct Endpoint {
    owner: Arc<Owner>,
}

/// A handle on one peer, for trickled candidates and closing. Cheap to clone.
#[derive(Clone)]
pub struct PeerHandle {
    peer: Arc<PeerShared>,
    endpoint: Arc<Shared>,
}

/// Resolves once the peer's `data` channel is open.
#[derive(Debug)]
pub struct Opening {
    rx: oneshot::Receiver<Result<ChannelIo, TransportError>>,
    timeout: Duration,
}

/// The answer to a remote offer.
#[derive(Debug)]
pub struct Accepted {
    /// SDP text of the answer (`v=0...`, not base64/JSON), with the local candidates in it.
    pub answer_sdp: String,
    /// The local candidates as `candidate:...` attribute values, for trickle `update`s.
    pub candidates: Vec<String>,
    /// The new peer.
    pub peer: PeerHandle,
    /// Its `data` channel, once open.
    pub opening: Opening,
}

/// A local offer waiting for the remote answer (the caller side).
pub struct Offering {
    /// SDP text of the offer.
    pub offer_sdp: String,
    /// The new peer.
    pub peer: PeerHandle,
    pending: SdpPendingOffer,
    /// Dropping the offering unanswered drops this receiver, which ends the peer.
    opening: Opening,
}

/// Closes the endpoint when the last [`Endpoint`] clone goes.
struct Owner {
    shared: Arc<Shared>,
}

/// What the endpoint's tasks and handles share.
struct Shared {
    socket: Arc<UdpSocket>,
    local_addr: SocketAddr,
    /// Advertised host candidate addresses (with the bound port).
    host_addrs: Vec<SocketAddr>,
    config: TransportConfig,
    table: Mutex<demux::Table>,
    next_id: AtomicU64,
    closed: watch::Sender<bool>,
    /// Where peer tasks run: the gateway's workers in turn, or the runtime that bound.
    workers: Option<runtime::workers::Workers>,
    runtime: tokio::runtime::Handle,
}

/// One peer's state shared between its task and its handles.
struct PeerShared {
    id: u64,
    rtc: Mutex<Rtc>,
    /// Wakes the task after a handle touched the `Rtc` or asked it to close.
    wake: Notify,
    closing: AtomicBool,
    ended: AtomicBool,
}

/// What a new peer task starts with.
struct PeerStart {
    rtc: Rtc,
    data: ChannelId,
    negotiation: ChannelId,
    ufrag: String,
    remote_addrs: Vec<SocketAddr>,
}

/// Locks a mutex, ignoring poisoning (no code here panics while holding one).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn channel_config((id, label): (u16, &str)) -> ChannelConfig {
    ChannelConfig {
        label: label.to_owned(),
        ordered: true,
        negotiated: Some(id),
        ..ChannelConfig::default()
    }
}

// === impl Endpoint ===

impl Endpoint {
    /// Binds the UDP socket and starts the endpoint's driver task; peers run on this runtime.
    pub async fn bind(config: TransportConfig) -> Result<Self, TransportError> {
        Self::bind_on(config, None).await
    }

    /// Like [`Endpoint::bind`], with each new peer's task on the next of `workers` (the UDP
    /// socket's receive loop stays on this runtime and hands packets to the peers).
    pub async fn bind_on(
        config: TransportConfig,
        workers: Option<runtime::workers::Workers>,
    ) -> Result<Self, TransportError> {
        let socket = addrs::bind_socket(config.bind_ip, config.port_range).await?;
        let local_addr = socket.local_addr()?;
        let host_addrs = addrs::advertised(&config, local_addr);
        tracing::info!(%local_addr, candidates = %List(&host_addrs), "WebRTC endpoint bound");
        let (closed, closed_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            socket: Arc::new(socket),
            local_addr,
            host_addrs,
            config,
            table: Mutex::new(demux::Table::default()),
            next_id: AtomicU64::new(1),
            closed,
            workers,
            runtime: tokio::runtime::Handle::current(),
        });
        tokio::spawn(demux::receive_loop(shared.clone(), closed_rx));
        Ok(Endpoint {
            owner: Arc::new(Owner { shared }),
        })
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.owner.shared.local_addr
    }

    /// The addresses advertised as host candidates (with the bound port).
    pub fn candidate_addrs(&self) -> &[SocketAddr] {
        &self.owner.shared.host_addrs
    }

    /// Answers a remote offer (SDP text): the answering side of a WebRTC connection.
    pub fn accept(&self, offer_sdp: &str) -> Result<Accepted, TransportError> {
        let shared = &self.owner.shared;
        shared.admit()?;
        let offer = SdpOffer::from_sdp_string(offer_sdp)
            .map_err(|e| TransportError::InvalidSdp(e.to_string()))?;
        if !offer_sdp.lines().any(|l| l.starts_with("m=application")) {
            return Err(TransportError::InvalidSdp(
                "no m=application section (data channels) in the offer".into(),
            ));
        }
        let (mut rtc, candidates) = shared.new_rtc();
        // The channels exist before SCTP starts, so data the caller sends as soon as its own
        // side opens finds its stream.
        let mut api = rtc.direct_api();
        let data = api.create_data_channel(channel_config(DATA_CHANNEL));
        let negotiation = api.create_data_channel(channel_config(NEGOTIATION_CHANNEL));
        let ufrag = api.local_ice_credentials().ufrag;
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| TransportError::InvalidSdp(e.to_string()))?;
        let start = PeerStart {
            rtc,
            data,
            negotiation,
            ufrag,
            remote_addrs: addrs::sdp_candidate_addrs(offer_sdp),
        };
        let (peer, opening) = shared.start_peer(start)?;
        Ok(Accepted {
            answer_sdp: answer.to_sdp_string(),
            candidates,
            peer,
            opening,
        })
    }

    /// Starts an offer: the caller side (test client; dialing parts later).
    pub fn offer(&self) -> Result<Offering, TransportError> {
        let shared = &self.owner.shared;
        shared.admit()?;
        let (mut rtc, _) = shared.new_rtc();
        let mut api = rtc.sdp_api();
        let data = api.add_channel_with_config(channel_config(DATA_CHANNEL));
        let negotiation = api.add_channel_with_config(channel_config(NEGOTIATION_CHANNEL));
        let Some((offer, pending)) = api.apply() else {
            return Err(TransportError::InvalidSdp("no offer was generated".into()));
        };
        let ufrag = rtc.direct_api().local_ice_credentials().ufrag;
        let start = PeerStart {
            rtc,
            data,
            negotiation,
            ufrag,
            remote_addrs: Vec::new(),
        };
        let (peer, opening) = shared.start_peer(start)?;
        Ok(Offering {
            offer_sdp: offer.to_sdp_string(),
            peer,
            pending,
            opening,
        })
    }

    /// Peers currently on this endpoint.
    pub fn peers(&self) -> usize {
        lock(&self.owner.shared.table).len()
    }

    /// Closes every peer; their channels end. Later `accept`/`offer` calls fail with
    /// [`TransportError::Closed`].
    pub fn close(&self) {
        self.owner.shared.close();
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("local_addr", &self.owner.shared.local_addr)
            .field("peers", &self.peers())
            .finish()
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.shared.close();
    }
}

// === impl Shared ===

impl Shared {
    fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Fails early (before any crypto work) when no peer can be added.
    fn admit(&self) -> Result<(), TransportError> {
        if self.is_closed() {
            return Err(TransportError::Closed);
        }
        if lock(&self.table).len() >= self.config.max_peers {
            return Err(TransportError::TooManyPeers);
        }
        Ok(())
    }

    /// A fresh `Rtc` with our host candidates, and those candidates as attribute values.
    fn new_rtc(&self) -> (Rtc, Vec<String>) {
        let mut builder = Rtc::builder()
            .set_stats_interval(None)
            .set_sctp_max_buffered_amount(BUFFER_THRESHOLD + MAX_MESSAGE_SIZE)
            .set_sctp_max_message_size(MAX_MESSAGE_SIZE as u32);
        // A consent check at least every second, and a pair given up after 5 unanswered ones
        // (str0m defaults: 3 s and 9), so ICE notices a vanished peer sooner.
        builder.set_max_stun_rto(Duration::from_secs(1));
        builder.set_max_stun_retransmits(5);
        let mut rtc = builder.build(Instant::now());
        let mut candidates = Vec::new();
        for addr in &self.host_addrs {
            match Candidate::host(*addr, "udp") {
                Ok(c) => {
                    if let Some(added) = rtc.add_local_candidate(c) {
                        candidates.push(added.to_sdp_string());
                    }
                }
                Err(e) => tracing::warn!(%addr, error = %e, "host candidate rejected"),
            }
        }
        (rtc, candidates)
    }

    /// Registers the peer (enforcing `max_peers`) and spawns its task.
    fn start_peer(
        self: &Arc<Self>,
        start: PeerStart,
    ) -> Result<(PeerHandle, Opening), TransportError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(demux::PEER_QUEUE);
        {
            let mut table = lock(&self.table);
            if self.is_closed() {
                return Err(TransportError::Closed);
            }
            if table.len() >= self.config.max_peers {
                return Err(TransportError::TooManyPeers);
            }
            table.insert(id, tx, start.ufrag.clone());
            for addr in &start.remote_addrs {
                table.claim(*addr, id, false);
            }
        }
        let peer = Arc::new(PeerShared {
            id,
            rtc: Mutex::new(start.rtc),
            wake: Notify::new(),
            closing: AtomicBool::new(false),
            ended: AtomicBool::new(false),
        });
        let (open_tx, open_rx) = oneshot::channel();
        let task = peer::PeerTask::new(
            peer.clone(),
            self.clone(),
            rx,
            (start.data, start.negotiation),
            open_tx,
        );
        let runtime = self.workers.as_ref().map_or(&self.runtime, |w| w.next());
        drop(runtime.spawn(task.run()));
        tracing::debug!(peer = id, "WebRTC peer started");
        let handle = PeerHandle {
            peer,
            endpoint: self.clone(),
        };
        let opening = Opening {
            rx: open_rx,
            timeout: self.config.connect_timeout,
        };
        Ok((handle, opening))
    }

    fn close(&self) {
        if self.closed.send_replace(true) {
            return;
        }
        // Each peer task and the receive task watch `closed` and end on their own (the peer
        // tasks with a goodbye to their remote).
        tracing::info!(local_addr = %self.local_addr, "WebRTC endpoint closing");
    }

    /// The local candidate address a datagram from `source` is taken to have arrived on.
    fn destination_for(&self, source: SocketAddr) -> SocketAddr {
        addrs::destination_for(&self.host_addrs, source).unwrap_or(self.local_addr)
    }
}

// === impl Offering ===

impl Offering {
    /// Applies the remote answer (SDP text).
    pub fn answered(self, answer_sdp: &str) -> Result<Opening, TransportError> {
        let Offering {
            peer,
            pending,
            opening,
            ..
        } = self;
        match peer.apply_answer(pending, answer_sdp) {
            Ok(()) => Ok(opening),
            Err(e) => {
                peer.close();
                Err(e)
            }
        }
    }
}

impl fmt::Debug for Offering {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Offering")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

// === impl PeerHandle ===

impl PeerHandle {
    /// A number unique within the endpoint, for logs and metrics.
    pub fn id(&self) -> u64 {
        self.peer.id
    }

    /// Adds a trickled remote candidate (`candidate:...`, with or without the `a=` prefix). An
    /// empty candidate (end of candidates), TCP candidates and mDNS (`.local`) host names are
    /// accepted and ignored: this transport cannot use them.
    pub fn add_remote_candidate(&self, candidate: &str) -> Result<(), TransportError> {
        let Some(candidate) = addrs::parse_remote_candidate(candidate)? else {
            return Ok(());
        };
        if self.peer.ended.load(Ordering::Acquire) {
            return Err(TransportError::Closed);
        }
        lock(&self.endpoint.table).claim(candidate.addr(), self.peer.id, false);
        lock(&self.peer.rtc).add_remote_candidate(candidate);
        self.peer.wake.notify_one();
        Ok(())
    }

    fn apply_answer(
        &self,
        pending: SdpPendingOffer,
        answer_sdp: &str,
    ) -> Result<(), TransportError> {
        if self.peer.ended.load(Ordering::Acquire) {
            return Err(TransportError::Closed);
        }
        let answer = SdpAnswer::from_sdp_string(answer_sdp)
            .map_err(|e| TransportError::InvalidSdp(e.to_string()))?;
        lock(&self.peer.rtc)
            .sdp_api()
            .accept_answer(pending, answer)
            .map_err(|e| TransportError::InvalidSdp(e.to_string()))?;
        {
            let mut table = lock(&self.endpoint.table);
            for addr in addrs::sdp_candidate_addrs(answer_sdp) {
                table.claim(addr, self.peer.id, false);
            }
        }
        self.peer.wake.notify_one();
        Ok(())
    }

    /// Closes the peer: its channels end and its state is dropped.
    pub fn close(&self) {
        self.peer.closing.store(true, Ordering::Release);
        self.peer.wake.notify_one();
    }

    /// Whether the peer's task has ended.
    pub fn is_closed(&self) -> bool {
        self.peer.ended.load(Ordering::Acquire)
    }
}

impl fmt::Debug for PeerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerHandle")
            .field("id", &self.peer.id)
            .finish()
    }
}

// === impl Opening ===

impl Opening {
    /// Waits until the `data` channel is open (or the peer failed, or `connect_timeout` passed).
    pub async fn wait(self) -> Result<ChannelIo, TransportError> {
        // The peer task enforces the timeout; this one only guards against a stuck task.
        let guard = self.timeout + Duration::from_secs(1);
        match tokio::time::timeout(guard, self.rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(TransportError::Closed),
            Err(_) => Err(TransportError::Timeout(self.timeout)),
        }
    }
}
