//! Stage `upstream`: the gateway's side of every part. [`pool`] holds a connection to each part
//! per worker (dialing, health checks, reconnects, route-table refreshes); [`sessions`] is the
//! gateway's own session with each part; [`stop`] sends a resource's `Stop`.

pub mod pool;
pub mod sessions;
pub mod stop;
