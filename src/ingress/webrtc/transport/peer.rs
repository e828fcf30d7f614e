//! One peer's task: owns (behind a mutex its handles also use) the peer's `str0m::Rtc`, feeds it
//! the datagrams the demultiplexer queued and its timers, puts its transmits on the shared
//! socket, and turns its channel events into a [`ChannelIo`] for the protocol layer.

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use str0m::channel::ChannelId;
use str0m::net::{Protocol, Receive};
use str0m::{Event, IceConnectionState, Input, Output, Rtc};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

use super::demux::{self, Datagram};
use super::{
    BUFFER_THRESHOLD, IDLE_TIMEOUT, MAX_MESSAGE_SIZE, PeerShared, RECEIVE_BACKLOG,
    RECEIVE_BACKLOG_MAX, Shared, TransportError, lock,
};
use crate::ingress::webrtc::channel::{ChannelIo, TransportSide};

/// Messages written per wake-up before the task looks at its other inputs again.
const WRITE_BATCH: usize = 64;
/// Datagrams handled per wake-up before timers and writes get a turn.
const RECEIVE_BATCH: usize = 64;
/// str0m outputs (transmits, events) handled before the task yields to the runtime.
const OUTPUTS_PER_TURN: usize = 128;
/// How long a peer whose protocol side hung up waits for its last messages to be acknowledged.
const LINGER: Duration = Duration::from_secs(2);
/// Longest sleep between checks, whatever str0m asks for.
const MAX_SLEEP: Duration = Duration::from_secs(1);

/// Why a peer ended.
#[derive(Debug)]
enum End {
    /// `PeerHandle::close` or `Endpoint::close`.
    Local,
    /// The remote closed the `data` channel, the association or DTLS.
    Remote(&'static str),
    IceDisconnected,
    Idle,
    ConnectTimeout,
    /// The protocol side dropped its `ChannelIo` (or `Opening`).
    Abandoned,
    Error(String),
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::Local => f.write_str("closed locally"),
            End::Remote(what) => write!(f, "remote: {what}"),
            End::IceDisconnected => f.write_str("ICE disconnected"),
            End::Idle => write!(f, "nothing received for {IDLE_TIMEOUT:?}"),
            End::ConnectTimeout => f.write_str("connect timeout"),
            End::Abandoned => f.write_str("protocol side gone"),
            End::Error(e) => write!(f, "error: {e}"),
        }
    }
}

pub(super) struct PeerTask {
    peer: Arc<PeerShared>,
    endpoint: Arc<Shared>,
    datagrams: mpsc::Receiver<Datagram>,
    closed: watch::Receiver<bool>,
    data: ChannelId,
    negotiation: ChannelId,
    opening: Option<oneshot::Sender<Result<ChannelIo, TransportError>>>,
    started: Instant,
    /// Received messages go here (once open).
    deliver: Option<mpsc::Sender<Bytes>>,
    /// Messages to send come from here (once open; `None` again when the protocol hung up).
    to_send: Option<mpsc::Receiver<Bytes>>,
    /// Received messages the protocol side has not taken yet.
    backlog: VecDeque<Bytes>,
    backlog_bytes: usize,
    /// A message taken from `to_send` that str0m had no room for yet.
    pending: Option<Bytes>,
    /// The `data` channel's buffered amount is above the threshold: wait for it to drop.
    blocked: bool,
    last_received: Instant,
    remote: Option<SocketAddr>,
    dropped_for_backpressure: u64,
    /// The protocol side hung up: close when what it wrote is acknowledged, or at this time.
    linger_until: Option<Instant>,
    /// `poll_locked` stopped before str0m's output was drained.
    more_output: bool,
}

impl PeerTask {
    pub(super) fn new(
        peer: Arc<PeerShared>,
        endpoint: Arc<Shared>,
        datagrams: mpsc::Receiver<Datagram>,
        (data, negotiation): (ChannelId, ChannelId),
        opening: oneshot::Sender<Result<ChannelIo, TransportError>>,
    ) -> Self {
        let closed = endpoint.closed.subscribe();
        let now = Instant::now();
        PeerTask {
            peer,
            endpoint,
            datagrams,
            closed,
            data,
            negotiation,
            opening: Some(opening),
            started: now,
            deliver: None,
            to_send: None,
            backlog: VecDeque::new(),
            backlog_bytes: 0,
            pending: None,
            blocked: false,
            last_received: now,
            remote: None,
            dropped_for_backpressure: 0,
            linger_until: None,
            more_output: false,
        }
    }

    pub(super) async fn run(mut self) {
        let span = tracing::debug_span!("webrtc_peer", peer = self.peer.id);
        let end = self.drive().instrument(span.clone()).await;
        let _enter = span.enter();
        self.finish(end);
    }

    async fn drive(&mut self) -> End {
        loop {
            let next = match self.poll() {
                Ok(next) => next,
                Err(end) => return end,
            };
            if std::mem::take(&mut self.more_output) {
                tokio::task::yield_now().await;
            }
            if let Some(until) = self.linger_until
                && (Instant::now() >= until || self.flushed())
            {
                return End::Abandoned;
            }
            if let Err(end) = self.wait(next).await {
                return end;
            }
        }
    }

    /// Waits for the next input and handles it.
    async fn wait(&mut self, rtc_timeout: Instant) -> Result<(), End> {
        let deadline = self.deadline(rtc_timeout);
        let can_send = self.to_send.is_some() && !self.blocked && self.pending.is_none();
        let can_deliver = !self.backlog.is_empty();
        // An owned permit keeps `self` free for the other branches' handlers.
        let deliver = if can_deliver {
            self.deliver.clone()
        } else {
            None
        };
        // Unbiased on purpose: a steady stream of datagrams must not starve delivery to the
        // protocol side or writes (nor the other way round).
        tokio::select! {
            _ = self.peer.wake.notified() => {
                if self.peer.closing.load(Ordering::Acquire) {
                    return Err(End::Local);
                }
            }
            () = wait_closed(&mut self.closed) => return Err(End::Local),
            d = self.datagrams.recv() => match d {
                Some(d) => self.receive(d)?,
                None => return Err(End::Local),
            },
            permit = reserve(deliver), if can_deliver => match permit {
                Some(permit) => drain_backlog(
                    &mut self.backlog,
                    &mut self.backlog_bytes,
                    permit,
                    self.deliver.as_ref(),
                ),
                None => return Err(End::Abandoned),
            },
            m = recv(&mut self.to_send), if can_send => match m {
                Some(m) => {
                    self.pending = Some(m);
                    self.write()?;
                }
                None => {
                    // The protocol side dropped its sender: it is done with this peer. What it
                    // wrote last is still in flight; close once that is acknowledged.
                    self.to_send = None;
                    self.linger_until = Some(Instant::now() + LINGER);
                }
            },
            _ = tokio::time::sleep_until(deadline.into()) => self.timeout()?,
        }
        Ok(())
    }

    /// When to wake up at the latest: str0m's timer, the connect deadline, the idle deadline.
    fn deadline(&self, rtc_timeout: Instant) -> Instant {
        let now = Instant::now();
        let mut at = rtc_timeout.min(now + MAX_SLEEP);
        if let Some(until) = self.linger_until {
            at = at.min(until);
        }
        if self.opening.is_some() {
            at = at.min(self.started + self.endpoint.config.connect_timeout);
        } else {
            at = at.min(self.last_received + IDLE_TIMEOUT);
        }
        at
    }

    fn timeout(&mut self) -> Result<(), End> {
        let now = Instant::now();
        if let Some(opening) = &self.opening {
            if now >= self.started + self.endpoint.config.connect_timeout {
                return Err(End::ConnectTimeout);
            }
            if opening.is_closed() {
                // Nobody will take the channel: the `Opening` (or `Offering`) was dropped.
                return Err(End::Abandoned);
            }
        } else if now >= self.last_received + IDLE_TIMEOUT && self.datagrams.is_empty() {
            return Err(End::Idle);
        }
        let peer = self.peer.clone();
        let mut rtc = lock(&peer.rtc);
        rtc.handle_input(Input::Timeout(now))
            .map_err(|e| End::Error(format!("timer: {e}")))
    }

    /// Feeds one datagram (and whatever else is already queued) to the `Rtc`.
    fn receive(&mut self, first: Datagram) -> Result<(), End> {
        let peer = self.peer.clone();
        let mut rtc = lock(&peer.rtc);
        let mut next = Some(first);
        let mut handled = 0;
        while let Some(d) = next.take() {
            self.receive_one(&mut rtc, d)?;
            handled += 1;
            if handled < RECEIVE_BATCH {
                next = self.datagrams.try_recv().ok();
            }
        }
        if self.blocked && self.buffered(&mut rtc) <= BUFFER_THRESHOLD {
            self.blocked = false;
        }
        if self.pending.is_some() && !self.blocked {
            // Acknowledgements may have made room for a message str0m turned away.
            self.write_locked(&mut rtc)?;
        }
        Ok(())
    }

    fn receive_one(&mut self, rtc: &mut Rtc, d: Datagram) -> Result<(), End> {
        self.last_received = d.at;
        if self.backlog_bytes > RECEIVE_BACKLOG && !demux::is_stun(&d.data) && self.send_idle(rtc) {
            // The protocol side is not reading: let the remote retransmit this later. Only
            // while nothing of ours is in flight: these datagrams also carry the remote's
            // acknowledgements, and a reader waiting for its own send (an echo) would deadlock.
            self.dropped_for_backpressure += 1;
            return Ok(());
        }
        let destination = self.endpoint.destination_for(d.source);
        let Ok(receive) = Receive::new(Protocol::Udp, d.source, destination, &d.data) else {
            tracing::trace!(remote = %d.source, "unparseable datagram dropped");
            return Ok(());
        };
        let input = Input::Receive(d.at, receive);
        if !rtc.accepts(&input) {
            tracing::trace!(remote = %d.source, "datagram not accepted by the peer");
            return Ok(());
        }
        if let Err(e) = rtc.handle_input(input) {
            if !rtc.is_alive() {
                return Err(End::Error(format!("input: {e}")));
            }
            tracing::debug!(remote = %d.source, error = %e, "datagram rejected");
        }
        // Drain after every datagram: str0m's DTLS layer only queues a few records.
        self.poll_locked(rtc)?;
        if self.remote.is_none() && rtc.is_connected() {
            self.remote = Some(d.source);
        }
        Ok(())
    }

    /// Drains str0m's output: transmits, events. Returns when it next wants a timeout.
    fn poll(&mut self) -> Result<Instant, End> {
        let peer = self.peer.clone();
        let mut rtc = lock(&peer.rtc);
        self.poll_locked(&mut rtc)
    }

    fn poll_locked(&mut self, rtc: &mut Rtc) -> Result<Instant, End> {
        for _ in 0..OUTPUTS_PER_TURN {
            if !rtc.is_alive() {
                return Err(End::Remote("connection closed"));
            }
            let output = rtc
                .poll_output()
                .map_err(|e| End::Error(format!("poll: {e}")))?;
            match output {
                Output::Timeout(at) => return Ok(at),
                Output::Transmit(t) => self.transmit(t.destination, &t.contents),
                Output::Event(e) => self.event(rtc, e)?,
            }
        }
        // More output is waiting (an SCTP burst): come back at once, after the other tasks
        // (the socket's receive loop above all) had a turn.
        self.more_output = true;
        Ok(Instant::now())
    }

    fn transmit(&self, destination: SocketAddr, contents: &[u8]) {
        if let Err(e) = self.endpoint.socket.try_send_to(contents, destination) {
            // UDP: a full send buffer loses the datagram; ICE and SCTP retransmit.
            tracing::trace!(remote = %destination, error = %e, "transmit dropped");
        }
    }

    fn event(&mut self, rtc: &mut Rtc, event: Event) -> Result<(), End> {
        match event {
            Event::ChannelData(d) if d.id == self.data => self.received(d.data)?,
            Event::ChannelData(d) if d.id == self.negotiation => {
                tracing::debug!(len = d.data.len(), "negotiation channel message ignored");
            }
            Event::ChannelOpen(id, _) if id == self.data => self.opened(rtc)?,
            Event::ChannelOpen(id, label) => tracing::debug!(?id, %label, "channel open"),
            Event::ChannelClose(id) if id == self.data => {
                return Err(End::Remote("data channel closed"));
            }
            Event::ChannelClose(id) => tracing::debug!(?id, "channel closed"),
            Event::ChannelBufferedAmountLow(id) if id == self.data => {
                self.blocked = false;
                if self.pending.is_some() {
                    self.write_locked(rtc)?;
                }
            }
            Event::IceConnectionStateChange(state) => {
                tracing::debug!(?state, "ICE state");
                // Before the channel is open, trickled candidates may still come: the connect
                // timeout decides. After it, a lost connection is final (Viam clients redial).
                if state == IceConnectionState::Disconnected && self.opening.is_none() {
                    return Err(End::IceDisconnected);
                }
            }
            Event::Connected => {
                tracing::debug!(
                    elapsed_ms = millis(self.started.elapsed()),
                    "ICE and DTLS connected"
                );
            }
            Event::Closed => return Err(End::Remote("association closed")),
            other => tracing::trace!(event = ?other, "event ignored"),
        }
        Ok(())
    }

    /// The `data` channel opened: hand the protocol its end.
    fn opened(&mut self, rtc: &mut Rtc) -> Result<(), End> {
        if let Some(mut channel) = rtc.channel(self.data) {
            channel.set_buffered_amount_low_threshold(BUFFER_THRESHOLD);
        }
        let (io, TransportSide { deliver, to_send }) = ChannelIo::new();
        self.deliver = Some(deliver);
        self.to_send = Some(to_send);
        self.last_received = Instant::now();
        let Some(opening) = self.opening.take() else {
            return Ok(());
        };
        tracing::debug!(
            remote = self.remote.map(|r| r.to_string()),
            elapsed_ms = millis(self.started.elapsed()),
            "data channel open"
        );
        opening.send(Ok(io)).map_err(|_| End::Abandoned)
    }

    fn received(&mut self, data: Vec<u8>) -> Result<(), End> {
        let Some(deliver) = &self.deliver else {
            return Ok(());
        };
        let message = Bytes::from(data);
        if self.backlog.is_empty() {
            match deliver.try_send(message) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Full(m)) => self.push_backlog(m),
                // Noticed (and the peer closed) when the task next waits on `deliver`.
                Err(mpsc::error::TrySendError::Closed(m)) => self.push_backlog(m),
            }
        } else {
            self.push_backlog(message);
        }
        if self.backlog_bytes > RECEIVE_BACKLOG_MAX {
            return Err(End::Error(format!(
                "protocol side not reading: {} bytes queued",
                self.backlog_bytes
            )));
        }
        Ok(())
    }

    /// Everything written has been acknowledged.
    fn flushed(&self) -> bool {
        let peer = self.peer.clone();
        let mut rtc = lock(&peer.rtc);
        self.pending.is_none() && self.buffered(&mut rtc) == 0
    }

    /// Nothing of ours waits to be written or acknowledged.
    fn send_idle(&self, rtc: &mut Rtc) -> bool {
        self.pending.is_none()
            && self.to_send.as_ref().is_none_or(|rx| rx.is_empty())
            && self.buffered(rtc) == 0
    }

    fn push_backlog(&mut self, m: Bytes) {
        self.backlog_bytes += m.len();
        self.backlog.push_back(m);
    }

    fn write(&mut self) -> Result<(), End> {
        let peer = self.peer.clone();
        let mut rtc = lock(&peer.rtc);
        self.write_locked(&mut rtc)
    }

    /// Writes the pending message and more from `to_send` while the channel takes them.
    fn write_locked(&mut self, rtc: &mut Rtc) -> Result<(), End> {
        for _ in 0..WRITE_BATCH {
            if self.blocked {
                return Ok(());
            }
            let message = match self.pending.take() {
                Some(m) => m,
                None => match self.to_send.as_mut().map(|rx| rx.try_recv()) {
                    Some(Ok(m)) => m,
                    _ => return Ok(()),
                },
            };
            if message.len() > MAX_MESSAGE_SIZE {
                return Err(End::Error(format!(
                    "message of {} bytes exceeds the {MAX_MESSAGE_SIZE}-byte limit",
                    message.len()
                )));
            }
            let Some(mut channel) = rtc.channel(self.data) else {
                return Err(End::Remote("data channel not writable"));
            };
            match channel.write(true, &message) {
                Ok(true) => {
                    if channel.buffered_amount() > BUFFER_THRESHOLD {
                        self.blocked = true;
                    }
                }
                Ok(false) => {
                    // No room in str0m's send buffer yet: retried as acknowledgements arrive.
                    self.pending = Some(message);
                    return Ok(());
                }
                Err(e) => return Err(End::Error(format!("write: {e}"))),
            }
        }
        Ok(())
    }

    fn buffered(&self, rtc: &mut Rtc) -> usize {
        rtc.channel(self.data)
            .map(|mut c| c.buffered_amount())
            .unwrap_or(0)
    }

    /// Says goodbye where that makes sense, fails a waiting `Opening`, drops the protocol's
    /// channel ends and leaves the endpoint's tables.
    fn finish(mut self, end: End) {
        let goodbye = !matches!(end, End::Remote(_) | End::Idle | End::IceDisconnected);
        if goodbye {
            let peer = self.peer.clone();
            let mut rtc = lock(&peer.rtc);
            if rtc.is_alive() && rtc.close().is_ok() {
                // Flush the SCTP shutdown / DTLS close_notify; no waiting for replies.
                for _ in 0..32 {
                    match rtc.poll_output() {
                        Ok(Output::Transmit(t)) => self.transmit(t.destination, &t.contents),
                        Ok(Output::Event(_)) => {}
                        Ok(Output::Timeout(_)) | Err(_) => break,
                    }
                }
            }
            rtc.disconnect();
        } else {
            lock(&self.peer.rtc).disconnect();
        }
        self.peer.ended.store(true, Ordering::Release);
        if let Some(opening) = self.opening.take() {
            let err = match end {
                End::ConnectTimeout => {
                    TransportError::Timeout(self.endpoint.config.connect_timeout)
                }
                _ => TransportError::Closed,
            };
            let _ = opening.send(Err(err));
        }
        self.deliver = None;
        self.to_send = None;
        lock(&self.endpoint.table).remove(self.peer.id);
        let level_info = matches!(end, End::Local | End::Remote(_) | End::Abandoned);
        let remote = self.remote.map(|r| r.to_string()).unwrap_or_default();
        if level_info {
            tracing::info!(%remote, reason = %end, alive_ms = millis(self.started.elapsed()), "WebRTC peer ended");
        } else {
            tracing::warn!(%remote, reason = %end, alive_ms = millis(self.started.elapsed()), "WebRTC peer ended");
        }
        if self.dropped_for_backpressure > 0 {
            tracing::debug!(
                datagrams = self.dropped_for_backpressure,
                "datagrams dropped while the reader was behind"
            );
        }
    }
}

/// Hands queued messages to the protocol side: one through `permit`, then as many as fit.
fn drain_backlog(
    backlog: &mut VecDeque<Bytes>,
    bytes: &mut usize,
    permit: mpsc::OwnedPermit<Bytes>,
    deliver: Option<&mpsc::Sender<Bytes>>,
) {
    let Some(first) = backlog.pop_front() else {
        return;
    };
    *bytes -= first.len();
    permit.send(first);
    let Some(deliver) = deliver else {
        return;
    };
    while let Some(m) = backlog.pop_front() {
        let len = m.len();
        match deliver.try_send(m) {
            Ok(()) => *bytes -= len,
            Err(e) => {
                backlog.push_front(e.into_inner());
                break;
            }
        }
    }
}

/// Resolves once the endpoint is closed.
async fn wait_closed(closed: &mut watch::Receiver<bool>) {
    // An error means the endpoint is gone altogether: closed as well.
    let _ = closed.wait_for(|c| *c).await;
}

async fn reserve(tx: Option<mpsc::Sender<Bytes>>) -> Option<mpsc::OwnedPermit<Bytes>> {
    match tx {
        Some(tx) => tx.reserve_owned().await.ok(),
        None => std::future::pending().await,
    }
}

async fn recv(rx: &mut Option<mpsc::Receiver<Bytes>>) -> Option<Bytes> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// A duration in whole milliseconds: a number in JSON logs, where `as_millis()`'s u128 is not.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
