//! partgate: a gateway that presents a fleet of Viam robot parts as one machine.
//!
//! The library holds the whole gateway so integration tests can start it in-process; the
//! binary (`src/main.rs`) is a thin CLI over [`Gateway`]. The modules are layers, each importing
//! only those below it: gateway, ingress, ops, stack, robot, upstream, body, metrics, route,
//! config, auth, tls, error (checked by `scripts/layers.py`; docs/architecture.md).

pub mod auth;
pub mod body;
pub mod config;
pub mod error;
pub mod gateway;
pub mod ingress;
pub mod metrics;
pub mod ops;
pub mod robot;
pub mod route;
pub mod stack;
pub mod tls;
pub mod upstream;

/// The Viam API subset partgate speaks (generated code, descriptor set), from `crates/proto`.
pub use proto;

pub use gateway::Gateway;
