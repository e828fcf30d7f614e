//! Metrics: the Prometheus registry the gateway owns, and the cheap handles the call path uses.
//!
//! Receives events from every stage (a call started, routed, finished with a code; bytes moved; a
//! part connected or dropped; a reload; an authentication result); hands the registry to
//! `GET /metrics` as OpenMetrics or Prometheus text ([`exposition`]). Every name is
//! `partgate_<noun>_<unit>` (the process metrics keep the standard `process_*` names every
//! dashboard knows).
//!
//! Label values are bounded: `part` is a configured part name or `none`, `method` a method from
//! the compiled protos or the Viam API list below, else `other`; codes, reasons and sources are
//! fixed sets. The hot path allocates nothing: a call looks its method up once (a hash of the
//! path), then clones an `Arc` to a handle cached per (part, method) that holds every series it
//! touches.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use tonic::Code;
use tracing::{debug, info};

use crate::config::Settings;
use crate::error::GatewayError;
pub use crate::route::methods::{MethodId, MethodTable, OTHER_METHOD};

mod certificates;
pub mod exposition;

pub use exposition::Format;

/// The `part` label of calls that reached no part (answered by the gateway, or rejected).
pub const NO_PART: &str = "none";

/// Call duration buckets, seconds: sub-millisecond proxying up to five-minute streams.
const DURATION_BUCKETS: [f64; 17] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
];

/// Canonical gRPC code names, indexed by code.
const CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    part: Arc<str>,
    method: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FinishedLabels {
    part: Arc<str>,
    method: Arc<str>,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectedLabels {
    part: Arc<str>,
    reason: &'static str,
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartLabels {
    part: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
    reason: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric family, shared by the per-part handles.
#[derive(Debug)]
struct Families {
    started: Family<CallLabels, Counter>,
    finished: Family<FinishedLabels, Counter>,
    duration: HistogramFamily<CallLabels>,
    in_flight: Family<CallLabels, Gauge>,
    request_bytes: Family<CallLabels, Counter>,
    response_bytes: Family<CallLabels, Counter>,
    rejected: Family<RejectedLabels, Counter>,
    connects: Family<PartLabels, Counter>,
    disconnects: Family<PartLabels, Counter>,
    reconnect_attempts: Family<PartLabels, Counter>,
    auth: Family<ResultLabels, Counter>,
    reloads: Family<ResultLabels, Counter>,
    config_ok: Gauge,
    config_timestamp: Gauge<f64, std::sync::atomic::AtomicU64>,
}

/// The gateway's metrics: an explicit registry plus the handles the stages record into.
pub struct Metrics {
    registry: Registry,
    methods: MethodTable,
    families: Arc<Families>,
    parts: Mutex<HashMap<String, Arc<PartMetrics>>>,
    none: Arc<PartMetrics>,
    pool: Arc<OnceLock<Weak<dyn PartStates>>>,
    certificates: Arc<certificates::Certificates>,
    sessions: SessionMetrics,
    webrtc: WebRtcMetrics,
}

/// The WebRTC ingress families. Calls carried over WebRTC are counted by the per-call families
/// like any other call (they go through the same stack); these count what is WebRTC-only.
#[derive(Debug, Clone, Default)]
pub struct WebRtcMetrics {
    peers: Gauge,
    streams: Gauge,
    streams_opened: Counter,
    signaling: Family<SignalingLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SignalingLabels {
    method: &'static str,
    code: &'static str,
}

/// Keeps a gauge raised while it lives (a peer, a stream task).
#[derive(Debug)]
pub struct GaugeGuard(Gauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl WebRtcMetrics {
    fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "partgate_webrtc_peers",
            "WebRTC peers whose data channel is being served",
            m.peers.clone(),
        );
        registry.register(
            "partgate_webrtc_streams",
            "Data-channel streams (calls) open on WebRTC peers, including ones still ending",
            m.streams.clone(),
        );
        registry.register(
            "partgate_webrtc_streams_opened",
            "Data-channel streams accepted",
            m.streams_opened.clone(),
        );
        registry.register(
            "partgate_webrtc_signaling_calls",
            "Signaling calls by method and gRPC code",
            m.signaling.clone(),
        );
        m
    }

    /// A peer is being served until the guard drops.
    pub fn peer(&self) -> GaugeGuard {
        self.peers.inc();
        GaugeGuard(self.peers.clone())
    }

    /// A stream is open until the guard drops.
    pub fn stream(&self) -> GaugeGuard {
        self.streams.inc();
        self.streams_opened.inc();
        GaugeGuard(self.streams.clone())
    }

    /// Streams open right now (tests use it to prove that nothing leaks).
    pub fn open_streams(&self) -> i64 {
        self.streams.get()
    }

    /// Peers served right now.
    pub fn open_peers(&self) -> i64 {
        self.peers.get()
    }

    /// Counts one signaling call; `method` is a fixed name.
    pub fn signaling(&self, method: &'static str, code: Code) {
        self.signaling
            .get_or_create(&SignalingLabels {
                method,
                code: code_name(code),
            })
            .inc();
    }
}

/// One part's handles: connection counters and per-method call handles (created on first use).
#[derive(Debug)]
pub struct PartMetrics {
    name: Arc<str>,
    /// False for the `none` handles.
    forwarded: bool,
    families: Arc<Families>,
    method_names: Arc<[Arc<str>]>,
    methods: Box<[OnceLock<Arc<MethodMetrics>>]>,
    connects: Counter,
    disconnects: Counter,
    reconnect_attempts: Counter,
}

/// Every series one (part, method) pair touches.
#[derive(Debug)]
pub struct MethodMetrics {
    labels: CallLabels,
    forwarded: bool,
    families: Arc<Families>,
    started: Counter,
    in_flight: Gauge,
    duration: Histogram,
    request_bytes: Counter,
    response_bytes: Counter,
    finished: [OnceLock<Counter>; 17],
}

/// One call in flight to a part: records its end (code, duration) exactly once. Dropped
/// without [`CallGuard::finish`], the client went away: the call counts as `CANCELLED`.
#[derive(Debug)]
pub struct CallGuard {
    metrics: Arc<MethodMetrics>,
    path: Arc<str>,
    started: Instant,
    done: bool,
}

/// Scrape-time metrics read from the pool, the certificate files and `/proc/self`.
#[derive(Debug)]
struct ScrapeCollector {
    pool: Arc<OnceLock<Weak<dyn PartStates>>>,
    certificates: Arc<certificates::Certificates>,
}

// === impl Families ===

impl Families {
    fn new(registry: &mut Registry) -> Self {
        let families = Self {
            started: Family::default(),
            finished: Family::default(),
            duration: Family::new_with_constructor(|| Histogram::new(DURATION_BUCKETS)),
            in_flight: Family::default(),
            request_bytes: Family::default(),
            response_bytes: Family::default(),
            rejected: Family::default(),
            connects: Family::default(),
            disconnects: Family::default(),
            reconnect_attempts: Family::default(),
            auth: Family::default(),
            reloads: Family::default(),
            config_ok: Gauge::default(),
            config_timestamp: Gauge::default(),
        };
        families.register(registry);
        families
    }

    fn register(&self, r: &mut Registry) {
        r.register(
            "partgate_calls_started",
            "Calls that reached the call stack, by part and method",
            self.started.clone(),
        );
        r.register(
            "partgate_calls_finished",
            "Calls ended, by part, method and gRPC code",
            self.finished.clone(),
        );
        r.register(
            "partgate_call_duration_seconds",
            "Call duration from arrival to the last trailer, by part and method",
            self.duration.clone(),
        );
        r.register(
            "partgate_calls_in_flight",
            "Calls and streams currently open to a part",
            self.in_flight.clone(),
        );
        r.register(
            "partgate_request_bytes",
            "Request body bytes sent to parts",
            self.request_bytes.clone(),
        );
        r.register(
            "partgate_response_bytes",
            "Response body bytes received from parts",
            self.response_bytes.clone(),
        );
        r.register("partgate_calls_rejected", "Calls the gateway ended itself, by reason and whose fault (source = client|gateway|part)", self.rejected.clone());
        r.register(
            "partgate_part_connects",
            "Connections established to a part",
            self.connects.clone(),
        );
        r.register(
            "partgate_part_disconnects",
            "Connections to a part that were lost or dropped",
            self.disconnects.clone(),
        );
        r.register(
            "partgate_part_reconnect_attempts",
            "Dial attempts after the first, per part",
            self.reconnect_attempts.clone(),
        );
        r.register(
            "partgate_auth_attempts",
            "Client authentication results, by result and reason",
            self.auth.clone(),
        );
        r.register(
            "partgate_config_reloads",
            "Configuration reloads, by result and reason",
            self.reloads.clone(),
        );
        r.register(
            "partgate_config_last_reload_successful",
            "1 if the last configuration reload was applied, 0 if it was rejected",
            self.config_ok.clone(),
        );
        r.register(
            "partgate_config_last_reload_success_timestamp_seconds",
            "When the configuration was last loaded successfully (Unix time)",
            self.config_timestamp.clone(),
        );
    }
}

// === impl Metrics ===

impl Metrics {
    /// A fresh registry with every family registered (nothing is shared between gateways).
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::default();
        let families = Arc::new(Families::new(&mut registry));
        let pool = Arc::new(OnceLock::new());
        registry.register(
            "partgate_build",
            "The gateway's version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        let certificates = Arc::new(certificates::Certificates::default());
        registry.register_collector(Box::new(ScrapeCollector {
            pool: pool.clone(),
            certificates: certificates.clone(),
        }));
        families.config_ok.set(1);
        families.config_timestamp.set(unix_now());
        let sessions = SessionMetrics::register(&mut registry);
        let webrtc = WebRtcMetrics::register(&mut registry);
        let methods = MethodTable::known();
        let method_names: Arc<[Arc<str>]> = methods.names().into();
        let mut none = PartMetrics::new(NO_PART.into(), &families, &method_names);
        none.forwarded = false;
        let none = Arc::new(none);
        Arc::new(Self {
            registry,
            methods,
            families,
            parts: Mutex::new(HashMap::new()),
            none,
            pool,
            certificates,
            sessions,
            webrtc,
        })
    }

    /// Lets the scrape read part state, cache ages and resource counts from the pool.
    pub fn attach_pool<P: PartStates>(&self, pool: &Arc<P>) {
        let weak: Weak<dyn PartStates> = Arc::downgrade(pool) as Weak<dyn PartStates>;
        let _ = self.pool.set(weak);
    }

    /// Reports the expiry of the TLS files in `settings` (at start and after each reload).
    pub fn watch_certificates(&self, settings: &Settings) {
        self.certificates.watch(
            settings.tls.as_ref().map(|files| files.cert.as_path()),
            settings.parts_ca_pem.as_deref(),
        );
    }

    /// The OpenMetrics text exposition of everything.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            debug!(error = %e, "metrics encoding failed");
        }
        out
    }

    /// The exposition of everything in `format` (see [`Format::negotiate`]).
    pub fn encode_as(&self, format: Format) -> String {
        match format {
            Format::OpenMetrics => self.encode(),
            Format::Text => exposition::to_text(&self.encode()),
        }
    }

    /// The session families (`partgate_sessions`, `partgate_session_stops`, ...).
    pub fn sessions(&self) -> &SessionMetrics {
        &self.sessions
    }

    /// The WebRTC families.
    pub fn webrtc(&self) -> &WebRtcMetrics {
        &self.webrtc
    }

    /// The method table (bounded `method` label values).
    pub fn methods(&self) -> &MethodTable {
        &self.methods
    }

    /// The handles of a configured part (created on first use, kept across re-dials).
    pub fn part(&self, name: &str) -> Arc<PartMetrics> {
        let Ok(mut parts) = self.parts.lock() else {
            return self.none.clone();
        };
        parts
            .entry(name.to_owned())
            .or_insert_with(|| {
                // A part's stop series exist at 0 from the start, so the first failed stop is
                // an increase an alert sees (a series born at 1 shows none).
                for result in STOP_RESULTS {
                    let labels = StopLabels {
                        part: name.to_owned(),
                        result,
                    };
                    self.sessions.stops.get_or_create_owned(&labels);
                }
                Arc::new(PartMetrics::new(
                    name.into(),
                    &self.families,
                    &self.none.method_names,
                ))
            })
            .clone()
    }

    /// The handles of calls that reached no part.
    pub fn no_part(&self) -> &Arc<PartMetrics> {
        &self.none
    }

    /// Drops every series of a part removed from the config.
    pub fn forget_part(&self, name: &str) {
        let removed = self.parts.lock().ok().and_then(|mut p| p.remove(name));
        if let Some(part) = removed {
            part.remove_series();
            for result in STOP_RESULTS {
                self.sessions.stops.remove(&StopLabels {
                    part: name.to_owned(),
                    result,
                });
            }
        }
    }

    /// Counts a call the gateway ended itself.
    pub fn rejected(&self, part: &Arc<str>, err: &GatewayError) {
        let (_, fault, reason) = err.row();
        let labels = RejectedLabels {
            part: part.clone(),
            reason,
            source: fault.label(),
        };
        self.families.rejected.get_or_create(&labels).inc();
    }

    /// Counts one client authentication: `reason` is a fixed word (`token`, `api_key`,
    /// `location_secret` on success; `missing`, `invalid_token`, `expired`, `bad_secret`, ...
    /// on failure), never anything the client sent.
    pub fn auth_result(&self, success: bool, reason: &'static str) {
        let result = if success { "success" } else { "failure" };
        self.families
            .auth
            .get_or_create(&ResultLabels { result, reason })
            .inc();
    }

    /// Records a reload: applied (`reason` "applied" or "unchanged") or rejected (`reason`
    /// "invalid", "unreadable", "failed").
    pub fn reload_result(&self, applied: bool, reason: &'static str) {
        let result = if applied { "success" } else { "failure" };
        self.families
            .reloads
            .get_or_create(&ResultLabels { result, reason })
            .inc();
        self.families.config_ok.set(i64::from(applied));
        if applied {
            self.families.config_timestamp.set(unix_now());
        }
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The canonical name of a gRPC code (`OK`, `NOT_FOUND`, ...).
pub fn code_name(code: Code) -> &'static str {
    CODE_NAMES.get(code as usize).copied().unwrap_or("UNKNOWN")
}

// === impl PartMetrics ===

impl PartMetrics {
    fn new(name: Arc<str>, families: &Arc<Families>, method_names: &Arc<[Arc<str>]>) -> Self {
        let labels = PartLabels { part: name.clone() };
        Self {
            connects: families.connects.get_or_create_owned(&labels),
            disconnects: families.disconnects.get_or_create_owned(&labels),
            reconnect_attempts: families.reconnect_attempts.get_or_create_owned(&labels),
            methods: method_names.iter().map(|_| OnceLock::new()).collect(),
            method_names: method_names.clone(),
            families: families.clone(),
            forwarded: true,
            name,
        }
    }

    /// The `part` label value.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Calls started and calls failed (ended with a code other than OK) since start, summed
    /// from the series at read time so the call path pays nothing extra.
    pub fn totals(&self) -> (u64, u64) {
        let mut started = 0;
        let mut failed = 0;
        for m in self.methods.iter().filter_map(OnceLock::get) {
            started += m.started.get();
            failed += m
                .finished
                .iter()
                .skip(1)
                .filter_map(OnceLock::get)
                .map(Counter::get)
                .sum::<u64>();
        }
        (started, failed)
    }

    /// Starts a call: counts it and puts it in flight until the guard finishes or drops.
    pub fn start(&self, method: MethodId, path: Arc<str>, started: Instant) -> CallGuard {
        let metrics = self.method(method);
        metrics.started.inc();
        metrics.in_flight.inc();
        CallGuard {
            metrics,
            path,
            started,
            done: false,
        }
    }

    /// Counts a call that started and ended at once (answered or rejected by the gateway).
    pub fn record(&self, method: MethodId, code: Code, started: Instant) {
        let metrics = self.method(method);
        metrics.started.inc();
        metrics.finish(code, started);
    }

    /// A connection to the part was established.
    pub fn connected(&self) {
        self.connects.inc();
    }

    /// A connection to the part was lost or dropped.
    pub fn disconnected(&self) {
        self.disconnects.inc();
    }

    /// The part is being dialed again.
    pub fn reconnect_attempt(&self) {
        self.reconnect_attempts.inc();
    }

    fn method(&self, id: MethodId) -> Arc<MethodMetrics> {
        let index = id.index().min(self.methods.len().saturating_sub(1));
        match self.methods.get(index) {
            Some(slot) => slot
                .get_or_init(|| Arc::new(self.new_method(index)))
                .clone(),
            None => Arc::new(self.new_method(0)),
        }
    }

    fn new_method(&self, index: usize) -> MethodMetrics {
        let method = self
            .method_names
            .get(index)
            .cloned()
            .unwrap_or_else(|| Arc::from(OTHER_METHOD));
        let labels = CallLabels {
            part: self.name.clone(),
            method,
        };
        let f = &self.families;
        MethodMetrics {
            started: f.started.get_or_create_owned(&labels),
            in_flight: f.in_flight.get_or_create_owned(&labels),
            duration: f.duration.get_or_create_owned(&labels),
            request_bytes: f.request_bytes.get_or_create_owned(&labels),
            response_bytes: f.response_bytes.get_or_create_owned(&labels),
            finished: Default::default(),
            families: f.clone(),
            forwarded: self.forwarded,
            labels,
        }
    }

    fn remove_series(&self) {
        let f = &self.families;
        let part = PartLabels {
            part: self.name.clone(),
        };
        f.connects.remove(&part);
        f.disconnects.remove(&part);
        f.reconnect_attempts.remove(&part);
        for m in self.methods.iter().filter_map(OnceLock::get) {
            f.started.remove(&m.labels);
            f.in_flight.remove(&m.labels);
            f.duration.remove(&m.labels);
            f.request_bytes.remove(&m.labels);
            f.response_bytes.remove(&m.labels);
            for code in CODE_NAMES {
                f.finished.remove(&m.finished_labels(code));
            }
        }
        for reason in crate::error::REASONS {
            for source in ["client", "gateway", "part"] {
                f.rejected.remove(&RejectedLabels {
                    part: self.name.clone(),
                    reason,
                    source,
                });
            }
        }
    }
}

// === impl MethodMetrics ===

impl MethodMetrics {
    fn finished_labels(&self, code: &'static str) -> FinishedLabels {
        FinishedLabels {
            part: self.labels.part.clone(),
            method: self.labels.method.clone(),
            code,
        }
    }

    fn finish(&self, code: Code, started: Instant) {
        let index = (code as usize).min(CODE_NAMES.len() - 1);
        if let Some(slot) = self.finished.get(index) {
            slot.get_or_init(|| {
                let labels = self.finished_labels(code_name(code));
                self.families.finished.get_or_create_owned(&labels)
            })
            .inc();
        }
        self.duration.observe(started.elapsed().as_secs_f64());
    }
}

// === impl CallGuard ===

impl CallGuard {
    /// The counter of request bytes sent to the part for this call.
    pub fn request_bytes(&self) -> Counter {
        self.metrics.request_bytes.clone()
    }

    /// Counts response bytes sent to the client.
    pub fn response_bytes(&self, n: u64) {
        self.metrics.response_bytes.inc_by(n);
    }

    /// The part's label value.
    pub fn part(&self) -> &Arc<str> {
        &self.metrics.labels.part
    }

    /// Whether the call reached a part (not answered by the gateway itself).
    pub fn forwarded(&self) -> bool {
        self.metrics.forwarded
    }

    /// Records the call's end with `code` (no log: the caller logs gateway errors itself).
    pub fn finish(mut self, code: Code) {
        self.end(code);
    }

    /// Records the end of a forwarded call with the part's status, logging it once if it
    /// failed: at info for codes that mean the part or the gateway is in trouble, at debug for
    /// answers about the request itself (the part's NOT_FOUND, INVALID_ARGUMENT, ...).
    pub fn finish_forwarded(mut self, code: Code, message: Option<&str>) {
        if code != Code::Ok {
            let part = &self.metrics.labels.part;
            let method = &self.path;
            let code_name = code_name(code);
            let message = message.unwrap_or("");
            if server_side(code) {
                info!(part = %part, method = %method, code = code_name, message, "forwarded call failed");
            } else {
                debug!(part = %part, method = %method, code = code_name, message, "forwarded call failed");
            }
        }
        self.end(code);
    }

    fn end(&mut self, code: Code) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        self.metrics.in_flight.dec();
        self.metrics.finish(code, self.started);
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if !self.done {
            debug!(part = %self.metrics.labels.part, method = %self.path, "call cancelled before the part finished it");
            self.end(Code::Cancelled);
        }
    }
}

/// Codes that say the part or the path to it is in trouble, not that the request was wrong.
fn server_side(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

/// `grpc-status`, pre-parsed: a lookup by a `&str` name parses the name on every call.
pub const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
/// `grpc-message`, pre-parsed (see [`GRPC_STATUS`]).
pub const GRPC_MESSAGE: http::HeaderName = http::HeaderName::from_static("grpc-message");

/// Reads `grpc-status` from trailers (or trailers-only headers).
pub fn grpc_status(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers.get(&GRPC_STATUS)?;
    let code = match value.as_bytes() {
        b"0" => 0,
        other => std::str::from_utf8(other).ok()?.parse::<i32>().ok()?,
    };
    Some(Code::from_i32(code))
}

// === impl ScrapeCollector ===

impl Collector for ScrapeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(pool) = self.pool.get().and_then(Weak::upgrade) {
            encode_parts(pool.as_ref(), &mut encoder)?;
        }
        let certificates = self.certificates.readings();
        if !certificates.is_empty() {
            gauge_family(
                &mut encoder,
                "partgate_tls_certificate_expiry_timestamp_seconds",
                "When the earliest certificate of a TLS file expires (Unix time), by role (listener|parts_ca)",
                certificates
                    .into_iter()
                    .map(|(role, not_after)| (RoleLabels { role }, not_after)),
            )?;
        }
        let spins = [
            (
                "partgate_worker_idle_spin_seconds",
                "Time the workers spent polling idle sockets instead of sleeping (gateway.idle_spin)",
                runtime::workers::idle_spin_seconds(),
            ),
            (
                "partgate_worker_answer_spin_seconds",
                "Time the workers spent polling for parts' answers instead of sleeping (gateway.answer_spin)",
                runtime::workers::answer_spin_seconds(),
            ),
        ];
        for (name, help, seconds) in spins {
            ConstCounter::new(seconds).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Counter,
            )?)?;
        }
        encode_process(&mut encoder)
    }
}

fn gauge_family<'a, L: EncodeLabelSet + 'a, V: prometheus_client::encoding::EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, V)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in series {
        ConstGauge::new(value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabels {
    role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartStateLabels {
    part: Arc<str>,
    state: &'static str,
}

/// What the scrape reads from the pool (the upstream layer implements it; metrics sits below).
pub trait PartStates: Send + Sync + 'static {
    /// Every part, as the scrape reports it.
    fn part_states(&self) -> Vec<PartStateReading>;
}

/// One part at scrape time.
#[derive(Debug, Clone)]
pub struct PartStateReading {
    /// The part's name.
    pub name: Arc<str>,
    /// Its connection state: one of [`PART_STATES`].
    pub state: &'static str,
    /// Time since its resource names were last refreshed.
    pub refresh_age: Option<Duration>,
    /// Resources it listed at its last refresh.
    pub resources: Option<usize>,
}

/// The connection states a part can be in, as the `state` label spells them.
pub const PART_STATES: [&str; 3] = ["connecting", "connected", "disconnected"];

fn encode_parts(
    pool: &dyn PartStates,
    encoder: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    let parts = pool.part_states();
    let label = |p: &PartStateReading| PartLabels {
        part: p.name.clone(),
    };
    gauge_family(
        encoder,
        "partgate_part_connected",
        "1 if the gateway holds a working connection to the part",
        parts
            .iter()
            .map(|p| (label(p), i64::from(p.state == "connected"))),
    )?;
    gauge_family(
        encoder,
        "partgate_part_state",
        "The part's connection state (1 for the current one of connecting|connected|disconnected)",
        parts.iter().flat_map(|p| {
            PART_STATES.into_iter().map(move |s| {
                let labels = PartStateLabels {
                    part: p.name.clone(),
                    state: s,
                };
                (labels, i64::from(s == p.state))
            })
        }),
    )?;
    gauge_family(
        encoder,
        "partgate_part_resource_names_age_seconds",
        "Time since the part's ResourceNames cache was last refreshed",
        parts
            .iter()
            .filter_map(|p| p.refresh_age.map(|age| (label(p), age.as_secs_f64()))),
    )?;
    gauge_family(
        encoder,
        "partgate_part_resources",
        "Resources the part listed at its last refresh",
        parts.iter().filter_map(|p| {
            p.resources
                .map(|n| (label(p), i64::try_from(n).unwrap_or(i64::MAX)))
        }),
    )
}

/// CPU seconds, resident memory, open and maximum file descriptors and start time, from
/// `/proc/self` (Linux; elsewhere these series are simply absent).
fn encode_process(encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let Some(stats) = crate::metrics::process::read() else {
        return Ok(());
    };
    let counter = ConstCounter::new(stats.cpu_seconds);
    counter.encode(encoder.encode_descriptor(
        "process_cpu_seconds",
        "Total user and system CPU time spent in seconds",
        None,
        MetricType::Counter,
    )?)?;
    let gauges = [
        (
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            stats.resident_bytes,
        ),
        (
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            stats.virtual_bytes,
        ),
        (
            "process_open_fds",
            "Number of open file descriptors",
            stats.open_fds,
        ),
        (
            "process_max_fds",
            "Maximum number of open file descriptors",
            stats.max_fds,
        ),
        (
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch in seconds",
            stats.start_time_seconds,
        ),
    ];
    for (name, help, value) in gauges {
        if let Some(value) = value {
            ConstGauge::new(value).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Gauge,
            )?)?;
        }
    }
    Ok(())
}

/// Reading process statistics from `/proc/self`.
mod process {
    /// Clock ticks per second of `/proc/<pid>/stat` times (USER_HZ, 100 on every Linux ABI).
    const TICKS_PER_SECOND: f64 = 100.0;
    const PAGE_SIZE: f64 = 4096.0;

    /// One reading.
    pub(super) struct Stats {
        pub(super) cpu_seconds: f64,
        pub(super) resident_bytes: Option<f64>,
        pub(super) virtual_bytes: Option<f64>,
        pub(super) open_fds: Option<f64>,
        pub(super) max_fds: Option<f64>,
        pub(super) start_time_seconds: Option<f64>,
    }

    pub(super) fn read() -> Option<Stats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name, which is in parentheses and may contain spaces.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
        let cpu_seconds = (field(14)? + field(15)?) / TICKS_PER_SECOND;
        let start_time_seconds = field(22)
            .zip(boot_time())
            .map(|(ticks, boot)| boot + ticks / TICKS_PER_SECOND);
        Some(Stats {
            cpu_seconds,
            resident_bytes: field(24).map(|pages| pages * PAGE_SIZE),
            virtual_bytes: field(23),
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|d| d.count() as f64),
            max_fds: max_fds(),
            start_time_seconds,
        })
    }

    fn boot_time() -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        stat.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse().ok())
    }

    fn max_fds() -> Option<f64> {
        let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
        let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
        line.split_whitespace().nth(3)?.parse().ok()
    }
}

/// Session metrics, registered on the gateway's registry.
#[derive(Debug, Default)]
pub struct SessionMetrics {
    pub(crate) live: Gauge,
    pub(crate) expired: Counter,
    pub(crate) stops: Family<StopLabels, Counter>,
}

/// The `result` values of `partgate_session_stops_total`.
const STOP_RESULTS: [&str; 2] = ["ok", "failed"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StopLabels {
    pub(crate) part: String,
    pub(crate) result: &'static str,
}

// === impl SessionMetrics ===

impl SessionMetrics {
    /// Creates the session families and registers them.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "partgate_sessions",
            "Client sessions currently live",
            metrics.live.clone(),
        );
        registry.register(
            "partgate_sessions_expired",
            "Client sessions that expired (heartbeats stopped)",
            metrics.expired.clone(),
        );
        registry.register(
            "partgate_session_stops",
            "Stop calls sent for resources of expired sessions, by part and result (ok|failed)",
            metrics.stops.clone(),
        );
        metrics
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_counted_by_code_and_dropped_guards_count_as_cancelled() {
        let metrics = Metrics::new();
        let part = metrics.part("p1");
        let id = metrics
            .methods()
            .id("/viam.component.motor.v1.MotorService/SetPower");
        let path: Arc<str> = "/viam.component.motor.v1.MotorService/SetPower".into();
        part.start(id, path.clone(), Instant::now())
            .finish(Code::Ok);
        drop(part.start(id, path, Instant::now()));
        metrics
            .no_part()
            .record(MethodId::OTHER, Code::NotFound, Instant::now());
        let text = metrics.encode();
        let m = r#"method="/viam.component.motor.v1.MotorService/SetPower""#;
        assert!(
            text.contains(&format!(
                r#"partgate_calls_started_total{{part="p1",{m}}} 2"#
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                r#"partgate_calls_finished_total{{part="p1",{m},code="OK"}} 1"#
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                r#"partgate_calls_finished_total{{part="p1",{m},code="CANCELLED"}} 1"#
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(r#"partgate_calls_in_flight{{part="p1",{m}}} 0"#)),
            "{text}"
        );
        assert!(
            text.contains(
                r#"partgate_calls_finished_total{part="none",method="other",code="NOT_FOUND"} 1"#
            ),
            "{text}"
        );
        assert_eq!(part.totals(), (2, 1));
    }

    #[test]
    fn forgotten_parts_leave_no_series() {
        let metrics = Metrics::new();
        let part = metrics.part("gone");
        metrics.rejected(
            part.name(),
            &GatewayError::Overloaded {
                part: "gone".into(),
            },
        );
        part.connected();
        part.record(MethodId::OTHER, Code::Ok, Instant::now());
        assert!(metrics.encode().contains(r#"part="gone""#));
        assert!(
            metrics
                .encode()
                .contains(r#"partgate_session_stops_total{part="gone",result="failed"} 0"#)
        );
        metrics.forget_part("gone");
        assert!(!metrics.encode().contains(r#"part="gone""#));
    }

    #[test]
    fn grpc_status_parses_trailers() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(grpc_status(&headers), None);
        headers.insert("grpc-status", http::HeaderValue::from_static("0"));
        assert_eq!(grpc_status(&headers), Some(Code::Ok));
        headers.insert("grpc-status", http::HeaderValue::from_static("14"));
        assert_eq!(grpc_status(&headers), Some(Code::Unavailable));
        assert_eq!(code_name(Code::Unavailable), "UNAVAILABLE");
    }

    #[test]
    fn process_metrics_are_read_from_proc() {
        let stats = process::read().expect("linux /proc");
        assert!(stats.cpu_seconds >= 0.0);
        assert!(stats.resident_bytes.is_some_and(|b| b > 0.0));
        assert!(stats.open_fds.is_some_and(|n| n >= 3.0));
    }
}
