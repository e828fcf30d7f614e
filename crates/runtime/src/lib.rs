//! partgate's thread-per-core runtime: the pieces the call path runs on, with nothing of gRPC or
//! Viam in them.
//!
//! [`workers`] runs N single-threaded tokio runtimes and hands connections to them in turn, with
//! the park hook that can wait awake for a due answer or after a read ([`workers::request_sent`],
//! [`workers::Active`]); [`recycle`] reuses the heap slots of finished call futures per worker;
//! [`deadline`] is the coarse deadline table that replaces a timer per call.

pub mod deadline;
pub mod recycle;
pub mod workers;
