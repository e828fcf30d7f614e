//! Operations endpoints: `/metrics`, `/healthz`, `/readyz`, `/statusz` and the status page
//! (`/status`, and `/` for a browser), served on the main port (plain HTTP, ahead of the
//! gRPC-Web layer) and on `gateway.admin_address` if set.
//!
//! Receives plain HTTP requests and the gateway's lifecycle events (parts settled, serving,
//! draining, a reload applied or rejected); hands back text, OpenMetrics, JSON or HTML answers
//! for probes, Prometheus and humans.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, header};

use super::status::{Status, healthy};
use super::status_page;
use crate::config::Settings;
use crate::metrics::{self, Metrics};
use crate::upstream::pool::{Part, Pool, PoolChanges};

type Body = tonic::body::Body;

/// How often call totals are sampled for the rates on `/statusz`.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);
/// The window the rates on `/statusz` are averaged over.
const RATE_WINDOW: Duration = Duration::from_secs(60);

/// Where the gateway is in its life, as `/readyz` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Config loaded; waiting for every part's first check before accepting clients.
    Starting = 0,
    /// Accepting clients.
    Serving = 1,
    /// SIGTERM/SIGINT: no new connections, in-flight calls finishing.
    Draining = 2,
}

/// The outcome of the last configuration reload, for `/statusz`.
#[derive(Debug, Clone)]
pub struct ReloadStatus {
    /// When it happened.
    pub at: SystemTime,
    /// `None` if applied, else why it was rejected.
    pub error: Option<String>,
    /// What it changed (empty when rejected).
    pub changes: PoolChanges,
}

/// The state behind the operations endpoints (shared by both listeners).
pub struct Admin {
    metrics: Arc<Metrics>,
    pool: Arc<Pool>,
    phase: AtomicU8,
    all_parts_required: AtomicBool,
    /// With client auth on, `/statusz` and the status page (part addresses, errors) stay off
    /// the main port.
    status_on_main_port: bool,
    started: Instant,
    last_reload: Mutex<Option<ReloadStatus>>,
    samples: Mutex<VecDeque<Sample>>,
}

/// Call totals of every part at one instant.
struct Sample {
    at: Instant,
    totals: HashMap<String, (u64, u64)>,
}

// === impl Phase ===

impl Phase {
    /// `starting`, `serving` or `draining`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Serving => "serving",
            Self::Draining => "draining",
        }
    }
}

// === impl Admin ===

impl Admin {
    /// The endpoints over a gateway's metrics and pool, in phase [`Phase::Starting`].
    pub fn new(metrics: Arc<Metrics>, pool: Arc<Pool>, settings: &Settings) -> Arc<Self> {
        Arc::new(Self {
            metrics,
            pool,
            phase: AtomicU8::new(Phase::Starting as u8),
            all_parts_required: AtomicBool::new(settings.ready_requires_all_parts),
            status_on_main_port: settings.auth.is_none(),
            started: Instant::now(),
            last_reload: Mutex::new(None),
            samples: Mutex::new(VecDeque::new()),
        })
    }

    /// Moves to another phase.
    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Relaxed) {
            1 => Phase::Serving,
            2 => Phase::Draining,
            _ => Phase::Starting,
        }
    }

    /// Applies reloadable settings (`ready_requires_all_parts`).
    pub fn apply(&self, settings: &Settings) {
        self.all_parts_required
            .store(settings.ready_requires_all_parts, Ordering::Relaxed);
    }

    /// Records a reload's outcome for `/statusz`.
    pub fn record_reload(&self, status: ReloadStatus) {
        if let Ok(mut slot) = self.last_reload.lock() {
            *slot = Some(status);
        }
    }

    /// Serves one plain HTTP request that arrived on the main port (anything that is not gRPC
    /// or gRPC-Web): as [`Admin::serve`], except that with client authentication on, `/statusz`
    /// and the status page (which show part addresses) are only served on
    /// `gateway.admin_address`.
    pub fn serve_main<B>(&self, req: &http::Request<B>) -> http::Response<Body> {
        let path = req.uri().path();
        if !self.status_on_main_port && (path == "/statusz" || status_page::PATHS.contains(&path)) {
            return text(
                StatusCode::NOT_FOUND,
                format!(
                    "{path} is served on gateway.admin_address when client authentication is on\n"
                ),
            );
        }
        self.route(req, self.status_on_main_port)
    }

    /// Serves one plain HTTP request on the operations port.
    pub fn serve<B>(&self, req: &http::Request<B>) -> http::Response<Body> {
        self.route(req, true)
    }

    /// `status`: whether `/` may answer a browser with the status page.
    fn route<B>(&self, req: &http::Request<B>, status: bool) -> http::Response<Body> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "only GET is served here\n".into(),
            );
        }
        if let Some(page) = status_page::asset(req.uri().path()) {
            return page;
        }
        match req.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok\n".into()),
            "/readyz" => self.readyz(req.uri().query().unwrap_or("")),
            "/statusz" => self.statusz(),
            "/metrics" => {
                // OpenMetrics for scrapers that ask for it, the Prometheus text format otherwise.
                let format = metrics::Format::negotiate(req.headers());
                let mut resp = text(StatusCode::OK, self.metrics.encode_as(format));
                let headers = resp.headers_mut();
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(format.content_type()),
                );
                headers.insert(header::VARY, HeaderValue::from_static("accept"));
                resp
            }
            "/" if status && status_page::wants_html(req) => status_page::page(),
            "/" => text(
                StatusCode::OK,
                "partgate: a gRPC gateway for Viam robot fleets\n\
                 operations: /healthz /readyz /statusz /status /metrics\n"
                    .into(),
            ),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: this port serves gRPC, gRPC-Web, /healthz, /readyz, /statusz, /status and /metrics\n"
                    .into(),
            ),
        }
    }

    /// 200 once serving (and, if required, with every part connected); 503 with the reason.
    fn readyz(&self, query: &str) -> http::Response<Body> {
        let all_parts = self.all_parts_required.load(Ordering::Relaxed)
            || query
                .split('&')
                .any(|kv| matches!(kv, "all_parts=1" | "all_parts=true" | "all_parts"));
        match self.unready_reason(all_parts) {
            None => text(StatusCode::OK, "ready\n".into()),
            Some(reason) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {reason}\n"),
            ),
        }
    }

    /// Why the gateway is not ready, if it is not.
    pub fn unready_reason(&self, all_parts: bool) -> Option<String> {
        match self.phase() {
            Phase::Starting => return Some("starting: waiting for the parts' first check".into()),
            Phase::Draining => return Some("draining: shutting down".into()),
            Phase::Serving => {}
        }
        if !all_parts {
            return None;
        }
        let down: Vec<String> = self
            .pool
            .parts()
            .iter()
            .filter(|p| !healthy(p))
            .map(|p| p.name().to_owned())
            .collect();
        (!down.is_empty())
            .then(|| format!("parts not connected or not answering: {}", down.join(", ")))
    }

    /// Takes one sample of every part's call totals (every [`SAMPLE_INTERVAL`]).
    pub fn sample(&self) {
        let totals = self
            .pool
            .parts()
            .iter()
            .map(|p| (p.name().to_owned(), totals(p)))
            .collect();
        let Ok(mut samples) = self.samples.lock() else {
            return;
        };
        let now = Instant::now();
        samples.push_back(Sample { at: now, totals });
        while samples
            .front()
            .is_some_and(|s| now.duration_since(s.at) > RATE_WINDOW + SAMPLE_INTERVAL)
        {
            samples.pop_front();
        }
    }

    /// Calls and failures per second of a part over the last minute (since start if younger).
    pub(super) fn rates(&self, part: &Part) -> (f64, f64) {
        let (calls, failed) = totals(part);
        let (since, base) = self
            .samples
            .lock()
            .ok()
            .and_then(|s| {
                let oldest = s
                    .iter()
                    .find(|s| s.at.elapsed() <= RATE_WINDOW + SAMPLE_INTERVAL)?;
                Some((
                    oldest.at,
                    oldest.totals.get(part.name()).copied().unwrap_or((0, 0)),
                ))
            })
            .unwrap_or((self.started, (0, 0)));
        let seconds = since.elapsed().as_secs_f64().max(1.0);
        let rate = |now: u64, then: u64| now.saturating_sub(then) as f64 / seconds;
        (rate(calls, base.0), rate(failed, base.1))
    }

    fn statusz(&self) -> http::Response<Body> {
        let mut resp = text(StatusCode::OK, Status::read(self).to_json());
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }

    /// The pool whose parts `/statusz` shows.
    pub(super) fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// The registry `/metrics` encodes (`/statusz` reads the same handles).
    pub(super) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Time since the gateway started.
    pub(super) fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The last reload's outcome, if there was one.
    pub(super) fn last_reload(&self) -> Option<ReloadStatus> {
        self.last_reload.lock().ok().and_then(|r| r.clone())
    }
}

fn totals(part: &Part) -> (u64, u64) {
    part.metrics().totals()
}

fn text(status: StatusCode, body: String) -> http::Response<Body> {
    let mut resp = http::Response::new(Body::new(http_body_util::Full::new(Bytes::from(body))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Why [`probe`] could not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Only `http://host:port/path` URLs are probed.
    #[error("not an http://host:port/path URL")]
    BadUrl,
    /// Connecting, sending or reading failed (or timed out).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The answer is not HTTP.
    #[error("the answer is not an HTTP response")]
    NotHttp,
}

/// GETs `url` with a blocking HTTP/1.1 request and returns the status code: the container
/// HEALTHCHECK (`partgate healthcheck`), which must work in an image without curl.
pub fn probe(url: &str, timeout: Duration) -> Result<u16, ProbeError> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    let rest = url.strip_prefix("http://").ok_or(ProbeError::BadUrl)?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    let addr = authority
        .to_socket_addrs()?
        .next()
        .ok_or(ProbeError::BadUrl)?;
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nUser-Agent: partgate-healthcheck\r\n\r\n"
    )?;
    let mut head = [0u8; 64];
    let mut read = 0;
    while read < 12 {
        match stream.read(&mut head[read..])? {
            0 => break,
            n => read += n,
        }
    }
    let line = std::str::from_utf8(&head[..read]).map_err(|_| ProbeError::NotHttp)?;
    line.strip_prefix("HTTP/1.")
        .and_then(|l| l.get(2..5))
        .and_then(|code| code.parse().ok())
        .ok_or(ProbeError::NotHttp)
}
