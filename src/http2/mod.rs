//! A small native HTTP/2 (RFC 9113 + RFC 7541) specialised for gRPC proxying, replacing the
//! `h2` crate on the hot path: `h2` spends ~50k instructions per proxied call (general-purpose
//! HPACK, stream store, priority queues, large frame enums moved around).
//!
//! Layers: [`frame`] splits bytes into validated frames and writes frames without copying
//! payloads; [`hpack`] encodes and decodes header blocks (raw strings out, table-driven Huffman
//! in). The connection engine on top owns streams and flow control.
//!
//! [`conn`] is the role-neutral connection core (IO loop, stream table, flow control, settings,
//! ping, GOAWAY); [`client`] dials parts with it (the pool), [`server`] serves clients with it
//! (`h2_server`, the listener's HTTP/2 path). [`maps`] keeps decoded header maps for reuse.

pub mod client;
pub mod conn;
pub mod frame;
pub mod hpack;
mod huffman;
pub mod maps;
pub mod server;
