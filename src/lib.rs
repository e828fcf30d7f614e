//! partgate: a gateway that presents a fleet of Viam robot parts as one machine.
//!
//! The library holds the whole gateway so integration tests can start it in-process; the
//! binary (`src/main.rs`) is a thin CLI over [`Gateway`].

pub mod body;
pub mod config;
pub mod demo;
pub mod error;
pub mod gateway;
pub mod listener;
pub mod pool;
pub mod proto;
pub mod robot;
pub mod route;
pub mod stack;

pub use gateway::Gateway;
