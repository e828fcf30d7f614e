//! partgate's HTTP/2 (RFC 9113 + RFC 7541): a small engine specialised for gRPC proxying, client
//! and server. It knows nothing of gRPC routing or Viam: the application hands it a [`server::Handler`]
//! and, optionally, [`hooks`] that tell a runtime what the connections are doing.
//!
//! Layers: [`frame`] splits bytes into validated frames and writes frames without copying
//! payloads; [`hpack`] encodes and decodes header blocks (raw strings out, table-driven Huffman
//! in). [`conn`] is the role-neutral connection core (IO loop, stream table, flow control,
//! settings, ping, GOAWAY); [`client`] dials peers with it, [`server`] serves them with it.
//! [`maps`] keeps decoded header maps for reuse.
//!
//! Why not `h2`: general-purpose HPACK, a stream store, priority queues and large frame enums
//! made it the largest cost of a proxied call; see the crate README.

pub mod client;
pub mod conn;
pub mod frame;
pub mod hooks;
pub mod hpack;
mod huffman;
pub mod maps;
pub mod server;
