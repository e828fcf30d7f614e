//! Stage `ingress`, outermost: everything that turns bytes from a client into a gRPC call for
//! the [`crate::stack`]. TCP accept, TLS, h2c/HTTP/1.1 detection and gRPC-Web in [`listener`];
//! WebRTC signaling and data channels in [`webrtc`].

pub mod client_hello;
pub mod listener;
pub mod webrtc;
