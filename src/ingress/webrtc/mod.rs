//! Ingress over WebRTC: SDK clients signal on the gateway's own port
//! (`proto.rpc.webrtc.v1.SignalingService`), then carry gRPC over a pre-negotiated data channel.
//! Every call that arrives that way becomes the same `http::Request` a direct call is, with the
//! caller's identity from signaling, and goes through the one call stack (`crate::stack`).
//!
//! ```text
//! signaling  Call / CallUpdate / OptionalWebRTCConfig: offer in, answer + candidates out
//! transport  ICE, DTLS, SCTP (str0m, one UDP socket for every peer); yields a ChannelIo per peer
//! protocol   Request/Response packets <-> per-stream state machines (headers, eom, eos, rst)
//! server     each stream -> http::Request -> CallStack -> headers, messages, trailers back
//! client     the caller side of the same protocol (tests today; dialing parts later)
//! ```
//!
//! Files: `signaling` (the service), `server` (answering side of the data-channel protocol),
//! `client` (caller side + `dial`), `wire` (packets, framing, metadata/status translation),
//! `cardinality` (which methods take one request: built-in descriptors, custom APIs learned
//! by reflection from the part that serves them), `channel` (the seam), `transport` (str0m).
//!
//! [`channel::ChannelIo`] is the seam between the transport and the protocol layers: the
//! protocol never sees ICE or SCTP, and its tests run on [`channel::ChannelIo::pair`].

pub mod cardinality;
pub mod channel;
pub mod client;
pub mod server;
pub mod signaling;
pub mod transport;
pub mod wire;
