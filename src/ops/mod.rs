//! Stage `ops`: what operators see and do. The admin endpoints (`/metrics`, `/healthz`,
//! `/readyz`, `/statusz`, the status page) in [`admin`], what `/statusz` reports in [`status`],
//! the page itself in [`status_page`], config reloads in [`reload`], and the JSON log format
//! in [`logs`]. Reads the pool and the metrics registry; never on a call's path.

pub mod admin;
pub mod logs;
pub mod reload;
pub mod status;
pub mod status_page;
