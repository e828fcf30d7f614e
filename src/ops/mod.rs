//! Stage `ops`: what operators see and do. The admin endpoints (`/metrics`, `/healthz`,
//! `/readyz`, `/statusz`) in [`admin`], and config reloads in [`reload`]. Reads the pool and the
//! metrics registry; never on a call's path.

pub mod admin;
pub mod reload;
