//! Stage `upstream`, the pool: a multiplexed HTTP/2 connection to each part per worker (the
//! first dialed at start, each other worker's on its first call to the part), kept alive with
//! pings, redialed every `reconnect_interval` while down, and refreshed every
//! `connection_check_interval` (`ResourceNames` + `ResourceRPCSubtypes`) into the route table.
//!
//! Receives a routed request for part N; hands back the part's response (headers now, body and
//! trailers streaming), or fails fast with UNAVAILABLE when the part is not connected.
//!
//! The connections to parts run on the workspace's own HTTP/2 client ([`http2::client`]), not
//! on `h2`, whose client side was the largest cost of a proxied call (docs/perf/journal.md,
//! round 3).

use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderMap, HeaderValue};
use http_body::Body as _;
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore, watch};
use tracing::{debug, info, warn};

use crate::body::{CallSlot, ClientId, ClientShares, PartBody};
use crate::config::{PartSpec, Settings};
use crate::error::GatewayError;
use crate::metrics::{Metrics, PartMetrics};
use crate::proto::viam::robot::v1 as robot;
use crate::route::resource_name::Naming;
use crate::route::table::{PartInfo, Resource};
use crate::route::{PartResources, RouteTable};
use crate::tls::TrustSource;
use http2::client::{self as h2c, End};
use http2::conn::Chunks;
use http2::frame::Reason;

type Body = tonic::body::Body;
type Sender = Arc<Conn>;

/// One HTTP/2 connection to a part, driven by the native engine ([`http2::client`]): a
/// call writes its HEADERS and first message together and awaits the response in its own task,
/// with no dispatch task or per-call body task in between.
pub struct Conn {
    send: h2c::SendRequest,
    /// Set when the connection task ended.
    closed: Arc<AtomicBool>,
    /// Set when the connection refused a new stream (GOAWAY): calls already on it may finish.
    refused: AtomicBool,
}

impl Conn {
    /// Whether new calls must wait for another connection.
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
            || self.refused.load(Ordering::Acquire)
            || !self.send.is_accepting()
    }

    /// Whether the connection only stopped taking new calls (it drains by itself).
    fn is_draining(&self) -> bool {
        (self.refused.load(Ordering::Acquire) || !self.send.is_accepting())
            && !self.closed.load(Ordering::Acquire)
    }
}

/// Marks a connection closed when its connection task ends, however it ends (abort included).
struct ClosedOnDrop(Arc<AtomicBool>);

impl Drop for ClosedOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// How long one health check (`ResourceNames` + `ResourceRPCSubtypes`) may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// How many times a call is offered to a part's connections when they refuse it unprocessed.
const SEND_ATTEMPTS: usize = 3;
/// Consecutive failed checks after which a connection is dropped and redialed.
const CHECK_FAILURES_BEFORE_REDIAL: u32 = 3;

/// Connection state of a part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PartState {
    /// Never connected yet.
    Connecting = 0,
    /// Connected and answering.
    Connected = 1,
    /// Not connected; being redialed.
    Disconnected = 2,
}

impl PartState {
    /// `connecting`, `connected` or `disconnected` (metric labels, `/statusz`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connecting => "connecting",
            Self::Connected => "connected",
            Self::Disconnected => "disconnected",
        }
    }
}

/// Transport settings shared by every part.
#[derive(Clone)]
struct DialSettings {
    connect_timeout: Duration,
    keepalive_interval: Duration,
    keepalive_timeout: Duration,
    /// For parts without `insecure`: the system roots or `parts_ca_file`, or the part's own
    /// `ca_file` (see [`DialSettings::for_part`]).
    tls: Option<tokio_rustls::TlsConnector>,
}

/// One downstream part.
pub struct Part {
    /// Its configuration.
    pub spec: PartSpec,
    scheme_authority: (http::uri::Scheme, http::uri::Authority),
    dial: DialSettings,
    /// Lane 0: the part's connection, dialed, checked and redialed by `maintain`. Lane i > 0:
    /// worker i's own connection ([`Lane`]).
    lanes: Box<[Lane]>,
    generation: watch::Sender<u64>,
    settled: watch::Sender<bool>,
    state: AtomicU8,
    reported: ArcSwapOption<PartResources>,
    last_error: Mutex<Option<String>>,
    limit: Arc<Semaphore>,
    /// Each client's share of `limit` (`gateway.max_calls_per_client`).
    shares: Arc<ClientShares>,
    wake: Notify,
    /// Set while lane 0 is redialed because the part sent GOAWAY on it (the part is up): calls
    /// wait for the new connection instead of failing.
    rotating: AtomicBool,
    connects: AtomicU64,
    /// The gateway's own session with the part (`viam-sid`), with the `connects` count it was
    /// started under; kept by `session::upstream`, checked by `send`.
    own_session: ArcSwapOption<(u64, HeaderValue)>,
    last_refresh: Mutex<Option<Instant>>,
    /// Round trip of the last check's `ResourceNames`, microseconds (`u64::MAX`: none yet).
    check_latency_us: AtomicU64,
    /// The gateway's own access token for this part (never a client's).
    token: ArcSwapOption<HeaderValue>,
    /// Serialises re-authentication; counts tokens obtained.
    reauth: tokio::sync::Mutex<u64>,
    metrics: Arc<PartMetrics>,
    /// The configured concurrency limit (the semaphore follows it on reload).
    limit_total: AtomicUsize,
    /// Set when a reload removes or replaces the part: its maintenance stops.
    stop: watch::Sender<bool>,
    /// Set once a stopped part's drain time is over: calls still open end with UNAVAILABLE.
    closing: watch::Sender<bool>,
}

/// One of a part's connections. Each worker ([`runtime::workers`]) sends its calls on its own
/// lane so that a call never crosses threads: lane 0 is the part's main connection (worker 0's;
/// the one `maintain` dials, health-checks and redials); lane i > 0 is dialed by worker i
/// itself the first time it has a call for the part while lane 0 is up, and that call (and any
/// other until the dial completes) goes on lane 0 meanwhile. The other lanes follow lane 0:
/// never used without it, cleared when it is lost.
#[derive(Default)]
struct Lane {
    conn: ArcSwapOption<Conn>,
    /// Its connection task, aborted when the part is lost.
    driver: Mutex<Option<tokio::task::AbortHandle>>,
    /// Set while its worker dials it (and for `reconnect_interval` after a failed dial).
    dialing: AtomicBool,
}

/// Every part, and the route table built from what they report: one [`Snapshot`], swapped
/// whole on every refresh and reload.
pub struct Pool {
    current: ArcSwap<Snapshot>,
    rebuild: Mutex<()>,
    metrics: Arc<Metrics>,
    /// Connections per part (one per worker).
    lanes: usize,
}

/// The parts in force and the route table built from them. Route indices index `parts`, so a
/// call resolves its name and picks its part from the same snapshot.
pub struct Snapshot {
    parts: Vec<Arc<Part>>,
    table: RouteTable,
}

/// The current route table (derefs to [`RouteTable`]).
pub struct TableView(arc_swap::Guard<Arc<Snapshot>>);

/// The current parts, in config order (derefs to a slice).
pub struct PartsView(arc_swap::Guard<Arc<Snapshot>>);

/// What a reload changed in the pool, by part name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolChanges {
    /// Parts dialed for the first time.
    pub added: Vec<String>,
    /// Parts drained and closed.
    pub removed: Vec<String>,
    /// Parts whose settings changed: a new connection, the old one drained.
    pub redialed: Vec<String>,
    /// Parts left untouched (connection and in-flight calls kept).
    pub kept: Vec<String>,
}

/// A request to one part as a tower service, for the gateway's own calls (checks, fan-outs).
#[derive(Clone)]
pub struct PartChannel {
    part: Arc<Part>,
}

/// The stream window the gateway gives a part on each call (see `handshake`).
pub const PART_STREAM_WINDOW: u32 = 512 * 1024;

// === impl Part ===

impl Part {
    fn new(
        spec: PartSpec,
        dial: DialSettings,
        (limit, per_client): (usize, usize),
        lanes: usize,
        metrics: Arc<PartMetrics>,
    ) -> Result<Self, GatewayError> {
        let authority: http::uri::Authority = spec
            .address
            .parse()
            .map_err(|_| GatewayError::Internal(format!("bad part address {}", spec.address)))?;
        let scheme = if spec.insecure {
            http::uri::Scheme::HTTP
        } else {
            http::uri::Scheme::HTTPS
        };
        Ok(Self {
            spec,
            scheme_authority: (scheme, authority),
            dial,
            lanes: (0..lanes.max(1)).map(|_| Lane::default()).collect(),
            generation: watch::channel(0).0,
            settled: watch::channel(false).0,
            state: AtomicU8::new(PartState::Connecting as u8),
            reported: ArcSwapOption::empty(),
            last_error: Mutex::new(None),
            limit: Arc::new(Semaphore::new(limit)),
            shares: ClientShares::new(per_client),
            wake: Notify::new(),
            rotating: AtomicBool::new(false),
            connects: AtomicU64::new(0),
            own_session: ArcSwapOption::empty(),
            last_refresh: Mutex::new(None),
            check_latency_us: AtomicU64::new(u64::MAX),
            token: ArcSwapOption::empty(),
            reauth: tokio::sync::Mutex::new(0),
            metrics,
            limit_total: AtomicUsize::new(limit),
            stop: watch::channel(false).0,
            closing: watch::channel(false).0,
        })
    }

    /// How the route table names this part's resources.
    fn info(&self) -> PartInfo {
        PartInfo {
            name: self.spec.name.clone(),
            naming: match (&self.spec.prefix, self.spec.main) {
                (_, true) => Naming::Main,
                (Some(prefix), false) => Naming::Prefix(prefix.clone()),
                (None, false) => Naming::PartColon,
            },
        }
    }

    /// The part's metric handles.
    pub fn metrics(&self) -> &Arc<PartMetrics> {
        &self.metrics
    }

    /// Turns true when the part was removed or replaced and its drain time is over.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// Follows a reloaded concurrency limit: more slots at once, fewer as calls finish.
    fn set_limit(&self, limit: usize) {
        let old = self.limit_total.swap(limit, Ordering::Relaxed);
        if limit > old {
            self.limit.add_permits(limit - old);
        } else if limit < old {
            let missing = (old - limit) - self.limit.forget_permits(old - limit);
            if missing > 0 {
                let limit = self.limit.clone();
                let missing = u32::try_from(missing).unwrap_or(u32::MAX);
                tokio::spawn(async move {
                    if let Ok(permits) = limit.acquire_many_owned(missing).await {
                        permits.forget();
                    }
                });
            }
        }
    }

    /// Keeps the part connected until a reload stops it.
    async fn run(self: Arc<Self>, pool: std::sync::Weak<Pool>) {
        let mut stop = self.stop.subscribe();
        tokio::select! {
            _ = stop.wait_for(|s| *s) => {}
            _ = self.clone().maintain(pool) => {}
        }
        // Calls in flight keep their connections until they end (or `closing`).
        self.lanes[0].conn.store(None);
        self.clear_lanes(false);
        self.state
            .store(PartState::Disconnected as u8, Ordering::Relaxed);
        self.settled.send_replace(true);
    }

    /// Stops maintaining the part and drops its connection handle: calls in flight go on
    /// (the connection closes when the last one ends) for up to `drain`, then end with
    /// UNAVAILABLE.
    fn retire(self: &Arc<Self>, drain: Duration) {
        self.stop.send_replace(true);
        let part = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(drain).await;
            part.closing.send_replace(true);
        });
    }

    /// The part's configured name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Current connection state.
    pub fn state(&self) -> PartState {
        match self.state.load(Ordering::Relaxed) {
            1 => PartState::Connected,
            2 => PartState::Disconnected,
            _ => PartState::Connecting,
        }
    }

    /// The last connection or check error, if any.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    /// What the part reported at its last successful refresh.
    pub fn reported(&self) -> Option<Arc<PartResources>> {
        self.reported.load_full()
    }

    /// How many times a connection to the part was established. Also which connection is
    /// current: read after a call's connection was picked, it is at least that connection's
    /// number (it goes up before a connection is published).
    pub fn connects(&self) -> u64 {
        self.connects.load(Ordering::SeqCst)
    }

    /// Connections to the part that take new calls now: the main one and the workers' own.
    pub fn open_connections(&self) -> usize {
        self.lanes
            .iter()
            .filter(|l| l.conn.load().as_ref().is_some_and(|c| !c.is_closed()))
            .count()
    }

    /// Time since the resource list was last refreshed.
    pub fn refresh_age(&self) -> Option<Duration> {
        self.last_refresh
            .lock()
            .ok()
            .and_then(|t| t.map(|t| t.elapsed()))
    }

    /// The round trip of the last successful health check's `ResourceNames` call (`/statusz`).
    pub fn check_latency(&self) -> Option<Duration> {
        match self.check_latency_us.load(Ordering::Relaxed) {
            u64::MAX => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// Calls to the part holding a slot of its concurrency limit right now (`/statusz`).
    pub fn calls_in_flight(&self) -> usize {
        self.limit_total
            .load(Ordering::Relaxed)
            .saturating_sub(self.limit.available_permits())
    }

    /// Takes a slot of the per-part concurrency limit and of `client`'s share of it, or sheds
    /// the call (a client over its share first, so it never takes a slot it cannot use).
    pub fn admit(&self, client: Option<ClientId>) -> Result<CallSlot, GatewayError> {
        let share =
            match client {
                Some(client) => Some(self.shares.take(client).ok_or_else(|| {
                    GatewayError::ClientOverloaded {
                        part: self.spec.name.clone(),
                    }
                })?),
                None => None,
            };
        let permit =
            self.limit
                .clone()
                .try_acquire_owned()
                .map_err(|_| GatewayError::Overloaded {
                    part: self.spec.name.clone(),
                })?;
        Ok(CallSlot::new(permit, share))
    }

    /// Points a request at this part: absolute URI with the part's authority, HTTP/2.
    pub fn target(&self, req: &mut http::Request<Body>) {
        let (scheme, authority) = &self.scheme_authority;
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(scheme.clone());
        parts.authority = Some(authority.clone());
        parts.path_and_query = req.uri().path_and_query().cloned();
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
        *req.version_mut() = http::Version::HTTP_2;
    }

    /// Sends a targeted request on the part's connection. A request a connection refused
    /// before processing it (GOAWAY, REFUSED_STREAM, connection just closed) is sent again: on
    /// another connection that is up, or on the one `maintain` redials (waited for up to the
    /// connect timeout). A part that sends GOAWAY on all its connections at once reaches each
    /// of them at a slightly different moment, hence more than one retry.
    pub async fn send(
        self: &Arc<Self>,
        req: http::Request<Body>,
    ) -> Result<http::Response<PartBody>, GatewayError> {
        let unavailable = || GatewayError::PartUnavailable {
            part: self.spec.name.clone(),
        };
        let mut req = req;
        if let Some(token) = self.token.load().as_deref() {
            req.headers_mut()
                .insert(http::header::AUTHORIZATION, token.clone());
        }
        let mut generation = self.generation.subscribe();
        let mut sender = match self.sender() {
            Some(sender) => sender,
            // The part is replacing a connection it sent GOAWAY on: wait for the new one.
            None if self.rotating() => self
                .redialed(&mut generation)
                .await
                .ok_or_else(unavailable)?,
            None => return Err(unavailable()),
        };
        for _ in 0..SEND_ATTEMPTS - 1 {
            self.check_own_session(&mut req);
            req = match send_on(&sender, req).await {
                Ok(resp) => return Ok(resp),
                Err(SendError::Failed(e)) => {
                    debug!(part = %self.spec.name, error = %e, "request failed on the part's connection");
                    return Err(unavailable());
                }
                Err(SendError::Refused(req, e)) => {
                    debug!(part = %self.spec.name, error = %e, "connection refused a new stream; retrying");
                    *req
                }
            };
            sender.refused.store(true, Ordering::Release);
            self.drop_connection(&sender);
            let stale = sender;
            sender = match self.sender().filter(|other| !Arc::ptr_eq(other, &stale)) {
                Some(other) => other,
                None => self
                    .redialed(&mut generation)
                    .await
                    .ok_or_else(unavailable)?,
            };
        }
        self.check_own_session(&mut req);
        send_on(&sender, req).await.map_err(|e| {
            debug!(part = %self.spec.name, error = %e, "last retry failed");
            unavailable()
        })
    }

    /// Called once the connection for `req` is picked: a `viam-sid` on a request to a part is
    /// the gateway's own session (the session stage replaced the client's), and it goes only
    /// if the session was started on the current connection. A part that restarted knows no
    /// session, and would answer SESSION_EXPIRED in the gap before the gateway opens a new one.
    /// The connection was loaded before the epoch is read here, and the epoch goes up before a
    /// connection is published, so a new connection is never paired with an old session.
    fn check_own_session(&self, req: &mut http::Request<Body>) {
        let Some(sent) = req.headers().get(crate::proto::wire::SESSION_HEADER) else {
            return;
        };
        if self.own_session().as_ref() != Some(sent) {
            req.headers_mut().remove(crate::proto::wire::SESSION_HEADER);
        }
    }

    /// Waits (up to the connect timeout) for `maintain` to establish a new main connection,
    /// then picks a connection again.
    async fn redialed(self: &Arc<Self>, generation: &mut watch::Receiver<u64>) -> Option<Sender> {
        let wait = tokio::time::timeout(self.dial.connect_timeout, generation.changed()).await;
        if !matches!(wait, Ok(Ok(()))) {
            return None;
        }
        self.sender()
    }

    /// The connection for a call on this thread: the worker's own lane when it is up, else
    /// lane 0 (and the worker's lane is dialed); `None` while lane 0 is down.
    fn sender(self: &Arc<Self>) -> Option<Sender> {
        let main = self.lanes[0].conn.load();
        let main = main.as_ref()?;
        if main.is_closed() {
            self.wake.notify_one();
            return None;
        }
        let lane = runtime::workers::current() % self.lanes.len();
        if lane != 0 {
            if let Some(own) = self.lanes[lane].conn.load().as_ref() {
                if !own.is_closed() {
                    return Some(Sender::clone(own));
                }
                self.lanes[lane].clear_if(own, false);
            }
            self.dial_lane(lane);
        }
        Some(Sender::clone(main))
    }

    /// Whether lane 0 is being replaced because the part sent GOAWAY on it (or its stream ids
    /// ran out; see `rotating`), including the moment before `maintain` notices it.
    fn rotating(&self) -> bool {
        self.rotating.load(Ordering::Acquire)
            || self.lanes[0]
                .conn
                .load()
                .as_ref()
                .is_some_and(|c| c.send.went_away())
    }

    /// Dials worker `lane`'s connection on this worker (unless it is being dialed already).
    fn dial_lane(self: &Arc<Self>, lane: usize) {
        let Some(slot) = self.lanes.get(lane) else {
            return;
        };
        if slot.dialing.swap(true, Ordering::AcqRel) {
            return;
        }
        let part = self.clone();
        // Spawned here, so the socket and the connection task belong to this worker.
        tokio::spawn(async move {
            let main = part.lanes[0].conn.load_full();
            let slot = &part.lanes[lane];
            match part.connect().await {
                Ok((sender, driver)) => {
                    if let Ok(mut d) = slot.driver.lock() {
                        *d = Some(driver.abort_handle());
                    }
                    slot.conn.store(Some(sender.clone()));
                    // Lane 0 went (or was replaced) meanwhile: this lane follows it.
                    let current = part.lanes[0].conn.load();
                    let same = match (&main, current.as_ref()) {
                        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                        _ => false,
                    };
                    if !same {
                        slot.clear_if(&sender, true);
                    }
                }
                Err(e) => {
                    debug!(part = %part.spec.name, lane, error = %e, "cannot dial a worker's connection");
                    tokio::time::sleep(part.spec.reconnect_interval).await;
                }
            }
            slot.dialing.store(false, Ordering::Release);
        });
    }

    /// Clears lanes 1.. (lane 0 is gone). With `abort`, their connections are closed now
    /// unless they are draining by themselves; without, calls on them finish first.
    fn clear_lanes(&self, abort: bool) {
        for lane in self.lanes.iter().skip(1) {
            if let Some(conn) = lane.conn.load_full() {
                lane.clear_if(&conn, abort && !conn.is_draining());
            }
        }
    }

    /// A connection refused a call unprocessed: a worker's lane is emptied (redialed on its
    /// next call); lane 0 is `maintain`'s to replace, which this wakes.
    fn drop_connection(&self, stale: &Sender) {
        for lane in self.lanes.iter().skip(1) {
            lane.clear_if(stale, false);
        }
        self.wake.notify_one();
    }

    fn set_error(&self, error: Option<String>) {
        if let Ok(mut slot) = self.last_error.lock() {
            *slot = error;
        }
    }

    async fn connect(&self) -> Result<(Sender, tokio::task::JoinHandle<()>), String> {
        let address = &self.spec.address;
        let stream = tokio::time::timeout(self.dial.connect_timeout, TcpStream::connect(address))
            .await
            .map_err(|_| format!("timed out connecting to {address}"))?
            .map_err(|e| format!("cannot connect to {address}: {e}"))?;
        let _ = stream.set_nodelay(true);
        match (&self.dial.tls, self.spec.insecure) {
            (Some(connector), false) => {
                let host = self
                    .scheme_authority
                    .1
                    .host()
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                let name = rustls_pki_types::ServerName::try_from(host.to_owned())
                    .map_err(|_| format!("{host} is not a valid TLS server name"))?;
                let tls = tokio::time::timeout(
                    self.dial.connect_timeout,
                    connector.connect(name, stream),
                )
                .await
                .map_err(|_| format!("TLS handshake with {address} timed out"))?
                .map_err(|e| format!("TLS handshake with {address} failed: {}", tls_failure(&e)))?;
                self.handshake(tls).await
            }
            _ => self.handshake(stream).await,
        }
    }

    /// HTTP/2 over an established (plain or TLS) stream, with keepalive pings: a part that
    /// stops answering them within `keepalive_timeout` loses the connection, and calls in
    /// flight on it end with UNAVAILABLE.
    async fn handshake<I>(&self, io: I) -> Result<(Sender, tokio::task::JoinHandle<()>), String>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let config = h2c::Config {
            keepalive: Some((self.dial.keepalive_interval, self.dial.keepalive_timeout)),
            // What one call's answer may hold at the gateway while its client does not read
            // it (the connection window goes back as data arrives): 512 KiB, plus what waits
            // for the client's own window.
            initial_stream_window: PART_STREAM_WINDOW,
            ..h2c::Config::default()
        };
        let (send, conn) = h2c::handshake(io, config);
        let closed = Arc::new(AtomicBool::new(false));
        let on_end = ClosedOnDrop(closed.clone());
        let part = self.spec.name.clone();
        let driver = tokio::spawn(async move {
            let _on_end = on_end;
            if let Err(e) = conn.await {
                debug!(part = %part, error = %e, "part connection ended");
            }
        });
        let conn = Conn {
            send,
            closed,
            refused: AtomicBool::new(false),
        };
        Ok((Arc::new(conn), driver))
    }

    /// Authenticates on a fresh connection with the part's configured credentials and keeps
    /// the token for every call sent to it. A part without credentials needs nothing.
    async fn authenticate(self: &Arc<Self>, sender: &Sender) -> Result<(), String> {
        let Some(creds) = &self.spec.credentials else {
            return Ok(());
        };
        let part = self.clone();
        let sender = sender.clone();
        let service = tower::service_fn(move |mut req: http::Request<Body>| {
            part.target(&mut req);
            let sender = sender.clone();
            let part = part.spec.name.clone();
            async move {
                send_on(&sender, req).await.map_err(|e| {
                    debug!(part = %part, error = %e, "Authenticate could not be sent");
                    GatewayError::PartUnavailable { part }
                })
            }
        });
        let mut client =
            crate::proto::rpc::v1::auth_service_client::AuthServiceClient::new(service);
        let request = crate::proto::rpc::v1::AuthenticateRequest {
            entity: creds.entity.clone(),
            credentials: Some(crate::proto::rpc::v1::Credentials {
                r#type: creds.kind.clone(),
                payload: creds.payload.expose().to_owned(),
            }),
        };
        let resp = tokio::time::timeout(CHECK_TIMEOUT, client.authenticate(request))
            .await
            .map_err(|_| "Authenticate timed out".to_owned())?
            .map_err(|s| format!("Authenticate failed: {:?} {}", s.code(), s.message()))?;
        let value = HeaderValue::try_from(format!("Bearer {}", resp.into_inner().access_token))
            .map_err(|_| "part returned an unusable token".to_owned())?;
        self.token.store(Some(Arc::new(value)));
        Ok(())
    }

    /// Whether the gateway authenticates to this part.
    pub fn has_credentials(&self) -> bool {
        self.spec.credentials.is_some()
    }

    /// Re-authenticates after the part answered UNAUTHENTICATED (it restarted behind a proxy,
    /// or rotated its keys). Concurrent callers share one attempt: `seen` is the count of
    /// tokens obtained when the caller sent its request.
    pub async fn reauthenticate(self: &Arc<Self>, seen: u64) -> Result<(), String> {
        let mut obtained = self.reauth.lock().await;
        if *obtained != seen {
            return Ok(());
        }
        let sender = self
            .sender()
            .ok_or_else(|| format!("not connected to part {}", self.spec.name))?;
        self.authenticate(&sender).await?;
        *obtained += 1;
        Ok(())
    }

    /// How many times a token was re-obtained (for [`Part::reauthenticate`]).
    pub fn token_count(&self) -> u64 {
        self.reauth.try_lock().map(|g| *g).unwrap_or(u64::MAX)
    }

    /// One health check: `ResourceNames` and `ResourceRPCSubtypes` (UNIMPLEMENTED tolerated).
    async fn check(self: &Arc<Self>) -> Result<PartResources, String> {
        let mut client = robot::robot_service_client::RobotServiceClient::new(PartChannel {
            part: self.clone(),
        });
        let began = Instant::now();
        let names = tokio::time::timeout(
            CHECK_TIMEOUT,
            client.resource_names(robot::ResourceNamesRequest {}),
        )
        .await
        .map_err(|_| "ResourceNames timed out".to_owned())?
        .map_err(|s| format!("ResourceNames failed: {}", s.message()))?
        .into_inner();
        let micros = u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX - 1);
        self.check_latency_us.store(micros, Ordering::Relaxed);
        let subtypes = match tokio::time::timeout(
            CHECK_TIMEOUT,
            client.resource_rpc_subtypes(robot::ResourceRpcSubtypesRequest {}),
        )
        .await
        {
            Ok(Ok(resp)) => resp.into_inner().resource_rpc_subtypes,
            Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => Vec::new(),
            Ok(Err(status)) => {
                return Err(format!("ResourceRPCSubtypes failed: {}", status.message()));
            }
            Err(_) => return Err("ResourceRPCSubtypes timed out".to_owned()),
        };
        Ok(PartResources {
            resources: names.resources.into_iter().map(Resource::from).collect(),
            subtypes: subtypes
                .into_iter()
                .filter_map(|s| Some((Resource::from(s.subtype?), s.proto_service)))
                .collect(),
        })
    }

    /// Keeps the part connected for the life of the gateway.
    async fn maintain(self: Arc<Self>, pool: std::sync::Weak<Pool>) {
        loop {
            if self.connects() > 0 || self.last_error().is_some() {
                self.metrics.reconnect_attempt();
            }
            match self.connect().await {
                Ok((sender, mut driver)) => {
                    // A new connection may be a restarted part that forgot our token.
                    if let Err(e) = self.authenticate(&sender).await {
                        warn!(part = %self.spec.name, error = %e, "cannot authenticate to part");
                        self.rotating.store(false, Ordering::Release);
                        self.set_error(Some(e));
                        self.settled.send_replace(true);
                        driver.abort();
                        tokio::time::sleep(self.spec.reconnect_interval).await;
                        continue;
                    }
                    // Counted before the connection is published: a call that picks the new
                    // connection sees the new count, so it never carries per-connection state
                    // (our session id) that belongs to the old one (see `own_session`).
                    self.connects.fetch_add(1, Ordering::SeqCst);
                    self.lanes[0].conn.store(Some(sender.clone()));
                    self.state
                        .store(PartState::Connected as u8, Ordering::Relaxed);
                    self.metrics.connected();
                    self.generation.send_modify(|g| *g += 1);
                    self.set_error(None);
                    info!(part = %self.spec.name, address = %self.spec.address, "connected to part");
                    self.rotating.store(false, Ordering::Release);
                    let mut failures = 0;
                    let mut rotated = false;
                    loop {
                        let checked = self.check().await;
                        match checked {
                            Ok(report) => {
                                failures = 0;
                                if let Ok(mut t) = self.last_refresh.lock() {
                                    *t = Some(Instant::now());
                                }
                                let changed = self.reported.load().as_deref() != Some(&report);
                                if changed {
                                    self.reported.store(Some(Arc::new(report)));
                                    if let Some(pool) = pool.upgrade() {
                                        pool.rebuild_table();
                                    }
                                }
                            }
                            Err(e) => {
                                failures += 1;
                                warn!(part = %self.spec.name, error = %e, failures, "part check failed");
                                self.set_error(Some(e));
                                if failures >= CHECK_FAILURES_BEFORE_REDIAL {
                                    break;
                                }
                            }
                        }
                        // Settled only once the report is in the route table: the gateway
                        // waits for this before accepting its first client.
                        self.settled.send_replace(true);
                        let pause = if failures > 0 {
                            self.spec.reconnect_interval
                        } else {
                            self.spec.check_interval
                        };
                        tokio::select! {
                            // GOAWAY (or ids used up): redial now; the old connection finishes
                            // its calls. Also when it closed right after its GOAWAY; but a
                            // connection that broke (this wakes for that too) is a lost part.
                            _ = &mut driver => {
                                rotated = sender.send.went_away();
                                break;
                            }
                            () = sender.send.draining() => {
                                rotated = sender.send.went_away();
                                break;
                            }
                            _ = tokio::time::sleep(pause) => {}
                            _ = self.wake.notified() => {
                                if self.lanes[0].conn.load().as_ref().is_none_or(|c| c.is_closed()) {
                                    rotated = sender.send.went_away();
                                    break;
                                }
                            }
                        }
                    }
                    // A connection the part is going away from (GOAWAY) is left to finish the
                    // calls already on it; it ends when the part closes it, or by keepalive.
                    if !sender.is_draining() {
                        driver.abort();
                    }
                    self.metrics.disconnected();
                    if rotated {
                        // Not down: the part asked for a new connection. Calls wait for it;
                        // the workers' connections get their own GOAWAY (and are replaced on
                        // their next call), so calls on them are left to finish.
                        self.rotating.store(true, Ordering::Release);
                        self.lanes[0].conn.store(None);
                        info!(part = %self.spec.name, "part sent GOAWAY; redialing now");
                        continue;
                    }
                    self.lanes[0].conn.store(None);
                    self.clear_lanes(true);
                    self.state
                        .store(PartState::Disconnected as u8, Ordering::Relaxed);
                    if self.last_error().is_none() {
                        self.set_error(Some("connection closed".to_owned()));
                    }
                    warn!(part = %self.spec.name, address = %self.spec.address, "disconnected from part");
                }
                Err(e) => {
                    self.rotating.store(false, Ordering::Release);
                    if self.last_error().as_deref() != Some(e.as_str()) {
                        warn!(part = %self.spec.name, error = %e, "cannot reach part; retrying every {:?}", self.spec.reconnect_interval);
                    }
                    self.state
                        .store(PartState::Disconnected as u8, Ordering::Relaxed);
                    self.set_error(Some(e));
                    self.settled.send_replace(true);
                }
            }
            if pool.strong_count() == 0 {
                return;
            }
            tokio::time::sleep(self.spec.reconnect_interval).await;
        }
    }
}

impl Lane {
    /// Empties the lane if it still holds `conn`; with `abort`, also ends its connection task.
    fn clear_if(&self, conn: &Sender, abort: bool) {
        let previous = self.conn.compare_and_swap(conn, None::<Sender>);
        if previous.as_ref().is_some_and(|p| Arc::ptr_eq(p, conn)) {
            let driver = self.driver.lock().ok().and_then(|mut d| d.take());
            if abort && let Some(driver) = driver {
                driver.abort();
            }
        }
    }
}

impl From<crate::proto::viam::common::v1::ResourceName> for Resource {
    fn from(r: crate::proto::viam::common::v1::ResourceName) -> Self {
        Self {
            namespace: r.namespace,
            kind: r.r#type,
            subtype: r.subtype,
            name: r.name,
        }
    }
}

// === impl DialSettings ===

impl DialSettings {
    fn from_settings(settings: &Settings) -> Result<Self, GatewayError> {
        // The shared connector serves TLS parts without a `ca_file` of their own.
        let tls = if settings
            .parts
            .iter()
            .any(|p| !p.insecure && p.ca_pem.is_none())
        {
            let source = match settings.parts_ca_pem {
                Some(_) => TrustSource::File("gateway.parts_ca_file".into()),
                None => TrustSource::System,
            };
            let connector = crate::tls::part_connector(settings.parts_ca_pem.as_deref(), source)
                .map_err(|e| GatewayError::Internal(e.to_string()))?;
            Some(connector)
        } else {
            None
        };
        Ok(Self {
            connect_timeout: settings.connect_timeout,
            keepalive_interval: settings.keepalive_interval,
            keepalive_timeout: settings.keepalive_timeout,
            tls,
        })
    }

    /// The settings `spec` dials with: a TLS part with its own `remotes[].ca_file` trusts those
    /// certificates alone (a pin, not an addition to `parts_ca_file`).
    fn for_part(&self, spec: &PartSpec) -> Result<Self, GatewayError> {
        let mut dial = self.clone();
        if let (Some(pem), false) = (&spec.ca_pem, spec.insecure) {
            let source = TrustSource::File(format!("the ca_file of remote {}", spec.name));
            let connector = crate::tls::part_connector(Some(pem), source)
                .map_err(|e| GatewayError::Internal(e.to_string()))?;
            dial.tls = Some(connector);
        }
        Ok(dial)
    }
}

/// A failed TLS handshake with a part, for its `last_error`: a certificate the gateway refused
/// says why in its own words (`crate::tls::part`) rather than through rustls' `Debug` form.
fn tls_failure(e: &std::io::Error) -> String {
    let rustls = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls {
        Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(why))) => {
            why.0.to_string()
        }
        Some(other) => other.to_string(),
        None => e.to_string(),
    }
}

// === impl Pool ===

impl Pool {
    /// Creates the pool and starts maintaining every part's connection.
    ///
    /// `lanes`: connections per part, one for each worker ([`runtime::workers`]).
    pub fn start(
        settings: &Settings,
        metrics: Arc<Metrics>,
        lanes: usize,
    ) -> Result<Arc<Self>, GatewayError> {
        let dial = DialSettings::from_settings(settings)?;
        let parts = settings
            .parts
            .iter()
            .map(|spec| new_part(spec, &dial, settings, &metrics, lanes))
            .collect::<Result<Vec<_>, _>>()?;
        let pool = Arc::new(Self {
            current: ArcSwap::from_pointee(Snapshot {
                parts: Vec::new(),
                table: RouteTable::default(),
            }),
            rebuild: Mutex::new(()),
            metrics,
            lanes,
        });
        pool.install(Some(parts.clone()));
        pool.spawn(&parts);
        Ok(pool)
    }

    /// Applies reloaded settings: parts new by name are dialed, parts gone are drained (calls
    /// in flight may run for `drain`) and closed, parts whose settings changed (or all of them,
    /// with `redial_all`, when the transport settings changed) get a new connection while the
    /// old one drains, and the rest are kept with their connection and calls untouched.
    pub fn apply(
        self: &Arc<Self>,
        settings: &Settings,
        redial_all: bool,
        drain: Duration,
    ) -> Result<PoolChanges, GatewayError> {
        let dial = DialSettings::from_settings(settings)?;
        let limit = settings.max_concurrent_calls_per_part;
        let old = self.current.load_full();
        let mut changes = PoolChanges::default();
        let mut parts = Vec::with_capacity(settings.parts.len());
        let mut fresh = Vec::new();
        for spec in &settings.parts {
            let existing = old.parts.iter().find(|p| p.spec.name == spec.name);
            match existing {
                Some(part) if !redial_all && part.spec == *spec => {
                    part.set_limit(limit);
                    part.shares.set_limit(settings.max_calls_per_client);
                    changes.kept.push(spec.name.clone());
                    parts.push(part.clone());
                    continue;
                }
                Some(_) => changes.redialed.push(spec.name.clone()),
                None => changes.added.push(spec.name.clone()),
            }
            let part = new_part(spec, &dial, settings, &self.metrics, self.lanes)?;
            fresh.push(part.clone());
            parts.push(part);
        }
        self.install(Some(parts.clone()));
        self.spawn(&fresh);
        for part in &old.parts {
            if parts.iter().any(|p| Arc::ptr_eq(p, part)) {
                continue;
            }
            part.retire(drain);
            if !settings.parts.iter().any(|s| s.name == part.spec.name) {
                changes.removed.push(part.spec.name.clone());
                self.metrics.forget_part(&part.spec.name);
            }
        }
        Ok(changes)
    }

    /// Stops maintaining every part (at shutdown, once calls have drained).
    pub fn close(&self) {
        for part in self.current.load().parts.iter() {
            part.retire(Duration::ZERO);
        }
    }

    fn spawn(self: &Arc<Self>, parts: &[Arc<Part>]) {
        for part in parts {
            tokio::spawn(part.clone().run(Arc::downgrade(self)));
        }
    }

    /// Waits until every part has either answered its first check or failed its first dial,
    /// for at most `limit`, so that the first client sees the whole fleet. Returns the names
    /// of parts that had not settled in time.
    pub async fn wait_settled(&self, limit: Duration) -> Vec<String> {
        let parts = self.current.load().parts.clone();
        wait_settled(&parts, limit).await
    }

    /// Like [`Pool::wait_settled`], for the named parts only (those a reload added).
    pub async fn wait_settled_named(&self, names: &[String], limit: Duration) -> Vec<String> {
        let parts: Vec<_> = self
            .current
            .load()
            .parts
            .iter()
            .filter(|p| names.contains(&p.spec.name))
            .cloned()
            .collect();
        wait_settled(&parts, limit).await
    }

    /// The parts and route table in force, together (route indices index its parts).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// The current route table.
    pub fn table(&self) -> TableView {
        TableView(self.current.load())
    }

    /// Every part, in config order (the current table's part indices).
    pub fn parts(&self) -> PartsView {
        PartsView(self.current.load())
    }

    /// A tower service that sends to part `index` of the current snapshot (for the gateway's
    /// own calls).
    pub fn channel(&self, index: usize) -> Option<PartChannel> {
        self.current.load().channel(index)
    }

    /// Connections per part: one per worker.
    pub fn lanes(&self) -> usize {
        self.lanes
    }

    /// The metrics the parts record into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Rebuilds the route table from what the current parts last reported.
    fn rebuild_table(&self) {
        self.install(None);
    }

    /// Swaps in a snapshot of `parts` (`None`: the current ones) with a table built from their
    /// reports. Serialised, so a slow rebuild never overwrites a newer one, and a refresh racing
    /// with a reload never brings back the old parts.
    fn install(&self, parts: Option<Vec<Arc<Part>>>) {
        let Ok(_guard) = self.rebuild.lock() else {
            return;
        };
        let parts = parts.unwrap_or_else(|| self.current.load().parts.clone());
        let infos: Vec<PartInfo> = parts.iter().map(|p| p.info()).collect();
        let reported: Vec<_> = parts.iter().map(|p| p.reported()).collect();
        let table = RouteTable::build(&infos, &reported);
        self.current.store(Arc::new(Snapshot { parts, table }));
    }
}

fn new_part(
    spec: &PartSpec,
    dial: &DialSettings,
    settings: &Settings,
    metrics: &Metrics,
    lanes: usize,
) -> Result<Arc<Part>, GatewayError> {
    Part::new(
        spec.clone(),
        dial.for_part(spec)?,
        (
            settings.max_concurrent_calls_per_part,
            settings.max_calls_per_client,
        ),
        lanes,
        metrics.part(&spec.name),
    )
    .map(Arc::new)
}

async fn wait_settled(parts: &[Arc<Part>], limit: Duration) -> Vec<String> {
    let waits = parts.iter().map(|p| {
        let mut settled = p.settled.subscribe();
        async move {
            let _ = settled.wait_for(|s| *s).await;
        }
    });
    let _ = tokio::time::timeout(limit, futures_util::future::join_all(waits)).await;
    parts
        .iter()
        .filter(|p| !*p.settled.borrow())
        .map(|p| p.spec.name.clone())
        .collect()
}

// === impl Snapshot ===

impl Snapshot {
    /// The route table built from these parts.
    pub fn table(&self) -> &RouteTable {
        &self.table
    }

    /// The parts, in config order.
    pub fn parts(&self) -> &[Arc<Part>] {
        &self.parts
    }

    /// Part `index` (a route's part), if it exists.
    pub fn part(&self, index: usize) -> Option<&Arc<Part>> {
        self.parts.get(index)
    }

    /// A tower service that sends to part `index`.
    pub fn channel(&self, index: usize) -> Option<PartChannel> {
        self.parts
            .get(index)
            .map(|part| PartChannel { part: part.clone() })
    }
}

impl Deref for TableView {
    type Target = RouteTable;

    fn deref(&self) -> &RouteTable {
        &self.0.table
    }
}

impl Deref for PartsView {
    type Target = [Arc<Part>];

    fn deref(&self) -> &[Arc<Part>] {
        &self.0.parts
    }
}

// === impl PartChannel ===

impl PartChannel {
    /// The part this channel sends to.
    pub fn part(&self) -> &Arc<Part> {
        &self.part
    }
}

impl tower::Service<http::Request<Body>> for PartChannel {
    type Response = http::Response<PartBody>;
    type Error = GatewayError;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        let part = self.part.clone();
        Box::pin(async move {
            part.target(&mut req);
            part.send(req).await
        })
    }
}

// === accessors for the session module (issue 7) ===

impl Part {
    /// The gateway's session with the part, if it holds one on the current connection.
    pub fn own_session(&self) -> Option<HeaderValue> {
        let held = self.own_session.load();
        let (epoch, value) = held.as_deref()?;
        (*epoch == self.connects()).then(|| value.clone())
    }

    /// Records (or, with `None`, forgets) the gateway's session with the part, started under
    /// connection `epoch`.
    pub fn set_own_session(&self, session: Option<(u64, HeaderValue)>) {
        self.own_session.store(session.map(Arc::new));
    }

    /// Changes every time a new connection to the part is established, so per-connection state
    /// (the gateway's own session with the part) restarts with it.
    pub fn connections(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }
}

impl PartChannel {
    /// A channel to one part instance, for calls made outside a snapshot (sessions, stops).
    pub fn for_part(part: Arc<Part>) -> Self {
        Self { part }
    }
}

// === HTTP/2 plumbing ===

/// Why a request did not get a response.
#[derive(Debug, thiserror::Error)]
enum SendError {
    /// The connection did not process the stream (GOAWAY, REFUSED_STREAM, closed): the request
    /// comes back for a retry on another connection.
    #[error("connection refused the stream: {1}")]
    Refused(Box<http::Request<Body>>, h2c::Error),
    /// The request was sent (in part) and failed, or its body failed.
    #[error("{0}")]
    Failed(String),
}

/// Sends `req` (already targeted) on one connection and awaits the response headers. Whatever
/// of the body is ready now (the buffered first message, for forwarded calls) goes out with
/// the headers in one write; a body still streaming is pumped by its own task. A request the
/// part certainly did not process comes back whole as [`SendError::Refused`] when its body was
/// complete (or not started streaming).
async fn send_on(
    conn: &Conn,
    req: http::Request<Body>,
) -> Result<http::Response<PartBody>, SendError> {
    let (head, mut body) = req.into_parts();
    let (data, end) = take_ready(&mut body)
        .map_err(|s| SendError::Failed(format!("request body failed: {}", s.message())))?;
    let opening = match &end {
        None => End::Open,
        Some(None) => End::Done,
        Some(Some(trailers)) => End::Trailers(trailers),
    };
    let (response, tx) = match conn
        .send
        .send_request(&head, data.iter().cloned(), opening)
        .await
    {
        Ok(opened) => opened,
        Err(e) if e.is_refused() => {
            return Err(SendError::Refused(again(head, data, end, body), e));
        }
        Err(e) => return Err(SendError::Failed(e.to_string())),
    };
    let streaming = tx.is_some();
    if let Some(tx) = tx {
        tokio::spawn(RequestPump::new(body, tx));
    }
    match response.await {
        Ok(resp) => {
            // The request's fields are on the wire and no retry needs them.
            http2::maps::give(head.headers);
            Ok(resp)
        }
        // Refused after sending (GOAWAY below its id, REFUSED_STREAM): the part never saw it.
        Err(e) if e.is_refused() && !streaming => {
            Err(SendError::Refused(again(head, data, end, Body::empty()), e))
        }
        Err(e) => Err(SendError::Failed(e.to_string())),
    }
}

/// The request again, for a retry: its head, the chunks already taken, and the rest of its body
/// (or its trailers).
fn again(
    head: http::request::Parts,
    data: Chunks,
    end: Option<Option<HeaderMap>>,
    rest: Body,
) -> Box<http::Request<Body>> {
    let trailers = end.clone().flatten();
    let rest = if end.is_some() { Body::empty() } else { rest };
    let body = crate::body::ForwardBody::new(data.into_vec(), Bytes::new(), rest, trailers, None);
    Box::new(http::Request::from_parts(head, Body::new(body)))
}

/// Takes every frame of `body` that is ready without waiting: its data (empty chunks dropped,
/// see body.rs) and, when it has ended, `Some(trailers)`; `None` while it is still open.
fn take_ready(body: &mut Body) -> Result<(Chunks, Option<Option<HeaderMap>>), tonic::Status> {
    // A no-op waker: a pending body is polled again, with a real waker, by its pump task.
    let mut cx = Context::from_waker(Waker::noop());
    let mut data = Chunks::default();
    loop {
        if body.is_end_stream() {
            return Ok((data, Some(None)));
        }
        match Pin::new(&mut *body).poll_frame(&mut cx) {
            Poll::Pending => return Ok((data, None)),
            Poll::Ready(None) => return Ok((data, Some(None))),
            Poll::Ready(Some(Err(status))) => return Err(status),
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(chunk) if chunk.is_empty() => {}
                Ok(chunk) => data.push_back(chunk),
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        return Ok((data, Some(Some(trailers))));
                    }
                }
            },
        }
    }
}

/// Streams the rest of a request body to the part, one chunk at a time as the stream's send
/// buffer empties into the part's flow-control windows (the part's flow control is the
/// client's backpressure), until the body ends, the part resets the stream, or the body fails
/// (the stream is then reset).
struct RequestPump {
    body: Body,
    tx: h2c::SendStream,
    /// A chunk waiting for the stream to take it, and whether it ends the body.
    pending: Option<(Bytes, bool)>,
}

impl RequestPump {
    fn new(body: Body, tx: h2c::SendStream) -> Self {
        Self {
            body,
            tx,
            pending: None,
        }
    }
}

impl Future for RequestPump {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            if let Some((chunk, eos)) = this.pending.take() {
                match this.tx.poll_ready(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => {
                        debug!(error = %e, "part stream closed while sending the request body");
                        return Poll::Ready(());
                    }
                    Poll::Pending => {
                        this.pending = Some((chunk, eos));
                        return Poll::Pending;
                    }
                }
                if this.tx.send_data(chunk, eos).is_err() || eos {
                    return Poll::Ready(());
                }
                continue;
            }
            let frame = match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    // Also wake up if the part resets the stream meanwhile.
                    if let Poll::Ready(e) = this.tx.poll_reset(cx) {
                        debug!(error = %e, "part stream ended before the request body");
                        return Poll::Ready(());
                    }
                    return Poll::Pending;
                }
            };
            match frame {
                Some(Ok(frame)) => match frame.into_data() {
                    // Never an empty DATA frame without END_STREAM (see body.rs).
                    Ok(chunk) if chunk.is_empty() => {}
                    Ok(chunk) => this.pending = Some((chunk, this.body.is_end_stream())),
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            let _ = this.tx.send_trailers(trailers);
                            return Poll::Ready(());
                        }
                    }
                },
                Some(Err(status)) => {
                    debug!(error = %status.message(), "request body failed; resetting the stream");
                    this.tx.reset(Reason::CANCEL);
                    return Poll::Ready(());
                }
                None => {
                    // Ended without trailers: END_STREAM on an empty DATA frame.
                    let _ = this.tx.send_data(Bytes::new(), true);
                    return Poll::Ready(());
                }
            }
        }
    }
}

// === impl PartStates for Pool ===

impl crate::metrics::PartStates for Pool {
    fn part_states(&self) -> Vec<crate::metrics::PartStateReading> {
        self.parts()
            .iter()
            .map(|p| crate::metrics::PartStateReading {
                name: p.metrics().name().clone(),
                state: p.state().as_str(),
                refresh_age: p.refresh_age(),
                resources: p.reported().map(|r| r.resources.len()),
            })
            .collect()
    }
}
