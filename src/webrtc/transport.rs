//! CONTRACT STUB (replaced by the transport work; the signatures below are the agreed API).
//!
//! The WebRTC transport: ICE, DTLS, SCTP for data-channel-only peers, every peer served from one
//! UDP socket per endpoint. Each peer gets the two pre-negotiated ordered channels Viam uses
//! (`data` id 0, `negotiation` id 1); the `data` channel is handed out as a [`ChannelIo`].

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::channel::ChannelIo;

/// How an endpoint binds and what it advertises.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// IP the UDP socket binds (unspecified = every interface).
    pub bind_ip: IpAddr,
    /// Inclusive UDP port range to bind in; `None`: any free port.
    pub port_range: Option<(u16, u16)>,
    /// Addresses advertised as host candidates instead of the bound ones (NAT 1:1, Docker).
    pub public_ips: Vec<IpAddr>,
    /// Time a peer has from its offer/answer to an open `data` channel.
    pub connect_timeout: Duration,
    /// Peers at once; further offers fail with [`TransportError::TooManyPeers`].
    pub max_peers: usize,
}

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

/// One UDP socket and every peer on it. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Endpoint {}

/// A handle on one peer, for trickled candidates and closing. Cheap to clone.
#[derive(Clone, Debug)]
pub struct PeerHandle {}

/// Resolves once the peer's `data` channel is open.
#[derive(Debug)]
pub struct Opening {}

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
#[derive(Debug)]
pub struct Offering {
    /// SDP text of the offer.
    pub offer_sdp: String,
    /// The new peer.
    pub peer: PeerHandle,
}

impl Endpoint {
    /// Binds the UDP socket and starts the endpoint's driver task.
    pub async fn bind(config: TransportConfig) -> Result<Self, TransportError> {
        let _ = config;
        Err(TransportError::Closed)
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    /// Answers a remote offer (SDP text): the answering side of a WebRTC connection.
    pub fn accept(&self, offer_sdp: &str) -> Result<Accepted, TransportError> {
        let _ = offer_sdp;
        Err(TransportError::Closed)
    }

    /// Starts an offer: the caller side (test client; dialing parts later).
    pub fn offer(&self) -> Result<Offering, TransportError> {
        Err(TransportError::Closed)
    }

    /// Peers currently on this endpoint.
    pub fn peers(&self) -> usize {
        0
    }

    /// Closes every peer; their channels end.
    pub fn close(&self) {}
}

impl Offering {
    /// Applies the remote answer (SDP text).
    pub fn answered(self, answer_sdp: &str) -> Result<Opening, TransportError> {
        let _ = answer_sdp;
        Err(TransportError::Closed)
    }
}

impl PeerHandle {
    /// A number unique within the endpoint, for logs and metrics.
    pub fn id(&self) -> u64 {
        0
    }

    /// Adds a trickled remote candidate (`candidate:...`, with or without the `a=` prefix).
    pub fn add_remote_candidate(&self, candidate: &str) -> Result<(), TransportError> {
        let _ = candidate;
        Err(TransportError::Closed)
    }

    /// Closes the peer: its channels end and its state is dropped.
    pub fn close(&self) {}
}

impl Opening {
    /// Waits until the `data` channel is open (or the peer failed, or `connect_timeout` passed).
    pub async fn wait(self) -> Result<ChannelIo, TransportError> {
        Err(TransportError::Closed)
    }
}
