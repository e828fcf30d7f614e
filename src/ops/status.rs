//! `/statusz`: the fleet as JSON, summary first (version, phase, counts), then the last reload,
//! then every part. Read from the pool and the metrics handles at request time (the same
//! numbers `/metrics` exports), so it costs nothing on a call's path.
//!
//! Receives the [`Admin`] state; hands back the document that scripts and the status page
//! ([`super::status_page`]) read.

use std::time::SystemTime;

use serde::Serialize;

use super::admin::Admin;
use crate::upstream::pool::{Part, PartState};

/// The whole `/statusz` document. Field order is the JSON order: serde writes a struct's
/// fields as declared (a `json!` map would sort them, burying the summary under `parts`).
#[derive(Debug, Serialize)]
pub struct Status {
    /// The gateway's version.
    pub version: &'static str,
    /// `starting`, `serving` or `draining`.
    pub phase: &'static str,
    /// What `/readyz` answers.
    pub ready: bool,
    /// What `/readyz?all_parts=1` answers.
    pub all_parts_connected: bool,
    /// Seconds since the gateway started.
    pub uptime_seconds: f64,
    /// The fleet in numbers.
    pub counts: Counts,
    /// Resources in the route table.
    pub resources: usize,
    /// The last configuration reload, if any.
    pub last_reload: Option<Reload>,
    /// Every part, in config order.
    pub parts: Vec<PartStatus>,
}

/// The fleet in numbers, for the summary bar.
#[derive(Debug, Serialize)]
pub struct Counts {
    /// Parts configured.
    pub parts_total: usize,
    /// Parts connected and answering their checks.
    pub parts_connected: usize,
    /// The others: connecting, disconnected, or connected but failing their checks.
    pub parts_down: usize,
    /// Calls to parts holding a slot of a part's concurrency limit.
    pub calls_in_flight: usize,
    /// Client sessions live (`partgate_sessions`).
    pub sessions: i64,
    /// WebRTC peers served (`partgate_webrtc_peers`).
    pub webrtc_peers: i64,
}

/// A configuration reload's outcome.
#[derive(Debug, Serialize)]
pub struct Reload {
    /// When, seconds since the Unix epoch.
    pub at_unix_seconds: f64,
    /// Applied, or rejected.
    pub ok: bool,
    /// Why it was rejected.
    pub error: Option<String>,
    /// Parts dialed for the first time.
    pub added: Vec<String>,
    /// Parts drained and closed.
    pub removed: Vec<String>,
    /// Parts whose settings changed.
    pub redialed: Vec<String>,
}

/// One part.
#[derive(Debug, Serialize)]
pub struct PartStatus {
    /// Its configured name.
    pub name: String,
    /// `host:port` as configured.
    pub address: String,
    /// Whether it is the main part (its resources keep their bare names).
    pub main: bool,
    /// Its name prefix, if configured.
    pub prefix: Option<String>,
    /// How the gateway reaches it: `http2` for every part today (dialed by the pool).
    pub transport: &'static str,
    /// Whether that connection is TLS (not `insecure`).
    pub tls: bool,
    /// `connecting`, `connected` or `disconnected`.
    pub state: &'static str,
    /// Connected and its last check answered.
    pub healthy: bool,
    /// The last connection or check error.
    pub last_error: Option<String>,
    /// Round trip of the last successful check's `ResourceNames` call, milliseconds.
    pub check_latency_ms: Option<f64>,
    /// Resources it listed at its last refresh.
    pub resources: Option<usize>,
    /// Seconds since that refresh.
    pub refresh_age_seconds: Option<f64>,
    /// Connections established since start.
    pub connects: u64,
    /// Connections that take new calls now (one per worker at most).
    pub open_connections: usize,
    /// Whether the gateway holds its own session with the part on a live connection (monitored
    /// calls carry it; the part stops what they drove if the gateway goes away).
    pub gateway_session: bool,
    /// Calls to the part in flight now.
    pub calls_in_flight: usize,
    /// Calls started since start.
    pub calls_total: u64,
    /// Calls that ended with a code other than OK.
    pub calls_failed_total: u64,
    /// Calls per second over the last minute.
    pub calls_per_second: f64,
    /// Failed calls per second over the last minute.
    pub errors_per_second: f64,
}

// === impl Status ===

impl Status {
    /// Reads the current state.
    pub fn read(admin: &Admin) -> Self {
        let snapshot = admin.pool().snapshot();
        let parts: Vec<PartStatus> = snapshot
            .parts()
            .iter()
            .map(|p| PartStatus::read(admin, p))
            .collect();
        let connected = parts.iter().filter(|p| p.healthy).count();
        let metrics = admin.metrics();
        let counts = Counts {
            parts_total: parts.len(),
            parts_connected: connected,
            parts_down: parts.len() - connected,
            calls_in_flight: parts.iter().map(|p| p.calls_in_flight).sum(),
            sessions: metrics.sessions().live.get(),
            webrtc_peers: metrics.webrtc().open_peers(),
        };
        Self {
            version: env!("CARGO_PKG_VERSION"),
            phase: admin.phase().as_str(),
            ready: admin.unready_reason(false).is_none(),
            all_parts_connected: admin.unready_reason(true).is_none(),
            uptime_seconds: round3(admin.uptime().as_secs_f64()),
            counts,
            resources: snapshot.table().listing().len(),
            last_reload: admin.last_reload().map(|r| Reload {
                at_unix_seconds: r
                    .at
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64()),
                ok: r.error.is_none(),
                error: r.error,
                added: r.changes.added,
                removed: r.changes.removed,
                redialed: r.changes.redialed,
            }),
            parts,
        }
    }

    /// Pretty JSON with a final newline.
    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        text
    }
}

// === impl PartStatus ===

impl PartStatus {
    fn read(admin: &Admin, part: &Part) -> Self {
        let (calls, failed) = part.metrics().totals();
        let (call_rate, error_rate) = admin.rates(part);
        let reported = part.reported();
        Self {
            name: part.name().to_owned(),
            address: part.spec.address.clone(),
            main: part.spec.main,
            prefix: part.spec.prefix.clone(),
            transport: "http2",
            tls: !part.spec.insecure,
            state: part.state().as_str(),
            healthy: healthy(part),
            last_error: part.last_error(),
            check_latency_ms: part
                .check_latency()
                .map(|d| round3(d.as_secs_f64() * 1000.0)),
            resources: reported.as_ref().map(|r| r.resources.len()),
            refresh_age_seconds: part.refresh_age().map(|a| round3(a.as_secs_f64())),
            connects: part.connects(),
            open_connections: part.open_connections(),
            // A lost connection's session is forgotten only once the part is redialed.
            gateway_session: part.state() == PartState::Connected && part.own_session().is_some(),
            calls_in_flight: part.calls_in_flight(),
            calls_total: calls,
            calls_failed_total: failed,
            calls_per_second: round3(call_rate),
            errors_per_second: round3(error_rate),
        }
    }
}

/// Connected, and its last check answered (a part that accepts connections but hangs is not).
pub fn healthy(part: &Part) -> bool {
    part.state() == PartState::Connected && part.last_error().is_none()
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}
