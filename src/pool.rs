//! Stage `pool`: one multiplexed HTTP/2 connection per part, dialed at start, kept alive with
//! pings, redialed every `reconnect_interval` while down, and refreshed every
//! `connection_check_interval` (`ResourceNames` + `ResourceRPCSubtypes`) into the route table.
//!
//! Receives a routed request for part N; hands back the part's response (headers now, body and
//! trailers streaming), or fails fast with UNAVAILABLE when the part is not connected.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use futures_util::future::BoxFuture;
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tracing::{debug, info, warn};

use crate::config::{PartSpec, Settings};
use crate::error::GatewayError;
use crate::proto::viam::robot::v1 as robot;
use crate::route::resource_name::Naming;
use crate::route::table::{PartInfo, Resource};
use crate::route::{PartResources, RouteTable};

type Body = tonic::body::Body;
type Sender = http2::SendRequest<Body>;

/// How long one health check (`ResourceNames` + `ResourceRPCSubtypes`) may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
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

/// Transport settings shared by every part.
#[derive(Debug, Clone)]
struct DialSettings {
    connect_timeout: Duration,
    keepalive_interval: Duration,
    keepalive_timeout: Duration,
}

/// One downstream part.
pub struct Part {
    /// Its configuration.
    pub spec: PartSpec,
    scheme_authority: (http::uri::Scheme, http::uri::Authority),
    dial: DialSettings,
    conn: ArcSwapOption<Sender>,
    generation: watch::Sender<u64>,
    settled: watch::Sender<bool>,
    state: AtomicU8,
    reported: ArcSwapOption<PartResources>,
    last_error: Mutex<Option<String>>,
    limit: Arc<Semaphore>,
    wake: Notify,
    connects: AtomicU64,
    last_refresh: Mutex<Option<Instant>>,
}

/// Every part, and the route table built from what they report.
pub struct Pool {
    parts: Vec<Arc<Part>>,
    table: ArcSwap<RouteTable>,
    rebuild: Mutex<()>,
}

/// A request to one part as a tower service, for the gateway's own calls (checks, fan-outs).
#[derive(Clone)]
pub struct PartChannel {
    part: Arc<Part>,
}

// === impl Part ===

impl Part {
    fn new(spec: PartSpec, dial: DialSettings, limit: usize) -> Result<Self, GatewayError> {
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
            conn: ArcSwapOption::empty(),
            generation: watch::channel(0).0,
            settled: watch::channel(false).0,
            state: AtomicU8::new(PartState::Connecting as u8),
            reported: ArcSwapOption::empty(),
            last_error: Mutex::new(None),
            limit: Arc::new(Semaphore::new(limit)),
            wake: Notify::new(),
            connects: AtomicU64::new(0),
            last_refresh: Mutex::new(None),
        })
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

    /// How many times a connection to the part was established.
    pub fn connects(&self) -> u64 {
        self.connects.load(Ordering::Relaxed)
    }

    /// Time since the resource list was last refreshed.
    pub fn refresh_age(&self) -> Option<Duration> {
        self.last_refresh
            .lock()
            .ok()
            .and_then(|t| t.map(|t| t.elapsed()))
    }

    /// Takes a slot of the per-part concurrency limit, or sheds the call.
    pub fn admit(&self) -> Result<OwnedSemaphorePermit, GatewayError> {
        self.limit
            .clone()
            .try_acquire_owned()
            .map_err(|_| GatewayError::Overloaded {
                part: self.spec.name.clone(),
            })
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

    /// Sends a targeted request on the part's connection. A request the connection refused
    /// before sending it (GOAWAY, connection just closed) is retried once on a fresh connection.
    pub async fn send(
        &self,
        req: http::Request<Body>,
    ) -> Result<http::Response<Incoming>, GatewayError> {
        let unavailable = || GatewayError::PartUnavailable {
            part: self.spec.name.clone(),
        };
        let mut sender = self.sender().ok_or_else(unavailable)?;
        let mut generation = self.generation.subscribe();
        let err = match sender.try_send_request(req).await {
            Ok(resp) => return Ok(resp),
            Err(err) => err,
        };
        let mut err = err;
        let Some(req) = err.take_message() else {
            debug!(part = %self.spec.name, error = %err.error(), "request failed on the part's connection");
            return Err(unavailable());
        };
        // Not sent: the connection is going away. Wait briefly for the redial, then retry once.
        self.drop_connection(&sender);
        let wait = tokio::time::timeout(self.dial.connect_timeout, generation.changed()).await;
        if !matches!(wait, Ok(Ok(()))) {
            return Err(unavailable());
        }
        sender = self.sender().ok_or_else(unavailable)?;
        sender.send_request(req).await.map_err(|e| {
            debug!(part = %self.spec.name, error = %e, "retry failed");
            unavailable()
        })
    }

    fn sender(&self) -> Option<Sender> {
        let guard = self.conn.load();
        let sender = guard.as_ref()?;
        if sender.is_closed() {
            self.wake.notify_one();
            return None;
        }
        Some(Sender::clone(sender))
    }

    fn drop_connection(&self, stale: &Sender) {
        let current = self.conn.load();
        if current
            .as_ref()
            .is_some_and(|c| c.is_closed() || stale.is_closed())
        {
            self.conn.store(None);
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
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(self.dial.keepalive_interval)
            .keep_alive_timeout(self.dial.keepalive_timeout)
            .keep_alive_while_idle(true)
            .initial_stream_window_size(2 * 1024 * 1024)
            .initial_connection_window_size(8 * 1024 * 1024)
            .max_frame_size(64 * 1024)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP/2 handshake with {address} failed: {e}"))?;
        let part = self.spec.name.clone();
        let driver = tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(part = %part, error = %e, "part connection ended");
            }
        });
        Ok((sender, driver))
    }

    /// One health check: `ResourceNames` and `ResourceRPCSubtypes` (UNIMPLEMENTED tolerated).
    async fn check(self: &Arc<Self>) -> Result<PartResources, String> {
        let mut client = robot::robot_service_client::RobotServiceClient::new(PartChannel {
            part: self.clone(),
        });
        let names = tokio::time::timeout(
            CHECK_TIMEOUT,
            client.resource_names(robot::ResourceNamesRequest {}),
        )
        .await
        .map_err(|_| "ResourceNames timed out".to_owned())?
        .map_err(|s| format!("ResourceNames failed: {}", s.message()))?
        .into_inner();
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
            match self.connect().await {
                Ok((sender, mut driver)) => {
                    self.conn.store(Some(Arc::new(sender)));
                    self.state
                        .store(PartState::Connected as u8, Ordering::Relaxed);
                    self.connects.fetch_add(1, Ordering::Relaxed);
                    self.generation.send_modify(|g| *g += 1);
                    self.set_error(None);
                    info!(part = %self.spec.name, address = %self.spec.address, "connected to part");
                    let mut failures = 0;
                    loop {
                        let checked = self.check().await;
                        self.settled.send_replace(true);
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
                        let pause = if failures > 0 {
                            self.spec.reconnect_interval
                        } else {
                            self.spec.check_interval
                        };
                        tokio::select! {
                            _ = &mut driver => break,
                            _ = tokio::time::sleep(pause) => {}
                            _ = self.wake.notified() => {
                                if self.conn.load().as_ref().is_none_or(|c| c.is_closed()) { break; }
                            }
                        }
                    }
                    driver.abort();
                    self.conn.store(None);
                    self.state
                        .store(PartState::Disconnected as u8, Ordering::Relaxed);
                    if self.last_error().is_none() {
                        self.set_error(Some("connection closed".to_owned()));
                    }
                    warn!(part = %self.spec.name, address = %self.spec.address, "disconnected from part");
                }
                Err(e) => {
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

// === impl Pool ===

impl Pool {
    /// Creates the pool and starts maintaining every part's connection.
    pub fn start(settings: &Settings) -> Result<Arc<Self>, GatewayError> {
        let dial = DialSettings {
            connect_timeout: settings.connect_timeout,
            keepalive_interval: settings.keepalive_interval,
            keepalive_timeout: settings.keepalive_timeout,
        };
        let parts = settings
            .parts
            .iter()
            .map(|spec| {
                Part::new(
                    spec.clone(),
                    dial.clone(),
                    settings.max_concurrent_calls_per_part,
                )
                .map(Arc::new)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let pool = Arc::new(Self {
            parts,
            table: ArcSwap::from_pointee(RouteTable::default()),
            rebuild: Mutex::new(()),
        });
        pool.rebuild_table();
        for part in &pool.parts {
            tokio::spawn(part.clone().maintain(Arc::downgrade(&pool)));
        }
        Ok(pool)
    }

    /// Waits until every part has either answered its first check or failed its first dial,
    /// for at most `limit`, so that the first client sees the whole fleet. Returns the names
    /// of parts that had not settled in time.
    pub async fn wait_settled(&self, limit: Duration) -> Vec<String> {
        let waits = self.parts.iter().map(|p| {
            let mut settled = p.settled.subscribe();
            async move {
                let _ = settled.wait_for(|s| *s).await;
            }
        });
        let _ = tokio::time::timeout(limit, futures_util::future::join_all(waits)).await;
        self.parts
            .iter()
            .filter(|p| !*p.settled.borrow())
            .map(|p| p.spec.name.clone())
            .collect()
    }

    /// The current route table.
    pub fn table(&self) -> arc_swap::Guard<Arc<RouteTable>> {
        self.table.load()
    }

    /// Every part, in config order (the table's part indices).
    pub fn parts(&self) -> &[Arc<Part>] {
        &self.parts
    }

    /// A tower service that sends to part `index` (for the gateway's own calls).
    pub fn channel(&self, index: usize) -> Option<PartChannel> {
        self.parts
            .get(index)
            .map(|part| PartChannel { part: part.clone() })
    }

    fn rebuild_table(&self) {
        // Serialise rebuilds so a slow one never overwrites a newer one.
        let Ok(_guard) = self.rebuild.lock() else {
            return;
        };
        let infos: Vec<PartInfo> = self
            .parts
            .iter()
            .map(|p| PartInfo {
                name: p.spec.name.clone(),
                naming: match (&p.spec.prefix, p.spec.main) {
                    (_, true) => Naming::Main,
                    (Some(prefix), false) => Naming::Prefix(prefix.clone()),
                    (None, false) => Naming::PartColon,
                },
            })
            .collect();
        let reported: Vec<_> = self.parts.iter().map(|p| p.reported()).collect();
        self.table
            .store(Arc::new(RouteTable::build(&infos, &reported)));
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
    type Response = http::Response<Incoming>;
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
