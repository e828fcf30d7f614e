//! partgate: a gateway that presents a fleet of Viam robot parts as one machine.
//!
//! The library holds the whole gateway so integration tests can start it in-process; the
//! binary (`src/main.rs`) is a thin CLI over [`Gateway`].

pub mod admin;
pub mod auth;
pub mod body;
pub mod config;
pub mod demo;
pub mod error;
pub mod gateway;
pub mod listener;
pub mod metrics;
pub mod pool;
pub mod proto;
pub mod reload;
pub mod robot;
pub mod route;
pub mod session;
pub mod stack;
pub mod tls;
pub mod webrtc;

pub use gateway::Gateway;
