//! The gateway as a whole: config -> pool + call stack + listeners; bound addresses; live
//! reload; graceful shutdown.
//!
//! Receives validated [`Settings`]; hands back a running [`Gateway`] handle that tests and the
//! binary use alike.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::auth::Auth;
use crate::config::{Settings, WebRtcSettings};
use crate::error::StartError;
use crate::ingress::listener::{self, Frontend, Handler};
use crate::ingress::webrtc::signaling::Signaling;
use crate::ingress::webrtc::transport::Endpoint;
use crate::metrics::Metrics;
use crate::ops::admin::{Admin, Phase};
use crate::ops::logs::List;
use crate::ops::reload::{ReloadError, ReloadOutcome, Reloader};
use crate::stack::CallStack;
use crate::tls::ReloadingAcceptor;
use crate::upstream::pool::Pool;
use runtime::recycle::Recycler;
use runtime::workers::{Workers, default_count};

/// Extra start-up wait beyond the dial timeout for a part's first `ResourceNames`.
const STARTUP_CHECK_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// A running gateway.
pub struct Gateway {
    addr: SocketAddr,
    pool: Arc<Pool>,
    stop: watch::Sender<bool>,
    server: JoinHandle<()>,
    ops: Operations,
    tls: Option<Arc<ReloadingAcceptor>>,
    stack: CallStack,
    webrtc: Option<Endpoint>,
    /// The data-plane runtimes; they stop when the gateway is shut down or dropped.
    workers: Workers,
}

/// The operations side of a running gateway: endpoints, their listener, reloads, samplers.
struct Operations {
    admin: Arc<Admin>,
    admin_addr: Option<SocketAddr>,
    admin_stop: watch::Sender<bool>,
    admin_server: Option<JoinHandle<()>>,
    reloader: Arc<Reloader>,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl Gateway {
    /// Binds the listener, starts dialing every part and serves until [`Gateway::shutdown`].
    pub async fn start(settings: Settings) -> Result<Self, StartError> {
        let listener = listener::bind(settings.bind).await?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: settings.bind.to_string(),
            source,
        })?;
        let auth = match &settings.auth {
            Some(auth) => Some(Arc::new(
                Auth::new(auth.clone(), &settings.bind_text, addr)
                    .map_err(|e| StartError::Setup(e.to_string()))?,
            )),
            None => {
                if !addr.ip().is_loopback() {
                    warn!(
                        "NO AUTHENTICATION: anyone who can reach {addr} can drive every part of the fleet; \
                         add an \"auth\" block to the config"
                    );
                }
                None
            }
        };
        let tls = match &settings.tls {
            Some(files) => {
                let acceptor = ReloadingAcceptor::new(files.clone())
                    .map_err(|e| StartError::Setup(e.to_string()))?;
                acceptor.watch();
                Some(acceptor)
            }
            None => None,
        };
        let workers = Workers::start(settings.worker_threads.unwrap_or_else(default_count))
            .map_err(|e| StartError::Setup(format!("cannot start the worker threads: {e}")))?;
        // The HTTP/2 engine tells the workers when a part's answer is due and when a read
        // brought bytes (the spins' signals). Once per process; later gateways share them.
        http2::hooks::install(http2::hooks::Hooks {
            request_sent: runtime::workers::request_sent,
            answer_arrived: runtime::workers::answer_arrived,
            data_read: runtime::workers::note_activity,
        });
        runtime::workers::set_idle_spin(settings.idle_spin);
        runtime::workers::set_answer_spin(settings.answer_spin);
        let metrics = Metrics::new();
        metrics.watch_certificates(&settings);
        let pool = Pool::start(&settings, metrics.clone(), workers.len())
            .map_err(|e| StartError::Setup(e.to_string()))?;
        metrics.attach_pool(&pool);
        let admin = Admin::new(metrics, pool.clone(), &settings);
        let (admin_addr, admin_stop, admin_server) = start_admin(&settings, &admin).await?;
        // Accept only once every part has been dialed and listed (or failed), so the first
        // client never sees a half-empty fleet. Connections queue in the backlog meanwhile.
        let pending = pool
            .wait_settled(settings.connect_timeout + STARTUP_CHECK_GRACE)
            .await;
        if !pending.is_empty() {
            warn!(parts = %List(&pending), "parts still connecting at start-up; serving without them for now");
        }
        let stack = CallStack::new(pool.clone(), &settings, auth);
        let webrtc = match &settings.webrtc {
            Some(w) => start_webrtc(w, &settings, addr, &stack, pool.metrics(), &workers).await,
            None => None,
        };
        let frontend = Frontend::new(stack.clone()).with_admin(admin.clone());
        // Each call's ~4 KiB future goes into a reused slot (see `recycle`); the handler's own
        // box is then a small one.
        let slots = Recycler::new(workers.len());
        let handler: Handler =
            Arc::new(move |req, peer| Box::pin(slots.wrap(frontend.clone().serve(req, peer))));
        let (stop, stopped) = watch::channel(false);
        let server = tokio::spawn(listener::serve(
            listener,
            handler,
            stopped,
            listener::Limits {
                drain: settings.drain_timeout,
                header_timeout: settings.client_header_timeout,
                idle_timeout: settings.client_idle_timeout,
                max_connections: settings.max_connections,
            },
            tls.clone(),
            Some(workers.clone()),
        ));
        admin.set_phase(Phase::Serving);
        info!("listening on {addr}");
        let sampler = tokio::spawn(sample_calls(admin.clone()));
        let reloader = Arc::new(Reloader::new(
            settings,
            pool.clone(),
            stack.clone(),
            admin.clone(),
        ));
        Ok(Self {
            addr,
            pool,
            stop,
            server,
            ops: Operations {
                admin,
                admin_addr,
                admin_stop,
                admin_server,
                reloader,
                tasks: std::sync::Mutex::new(vec![sampler]),
            },
            tls,
            stack,
            webrtc,
            workers,
        })
    }

    /// The call stack every ingress uses (the WebRTC data-channel server hands it its calls).
    pub fn stack(&self) -> CallStack {
        self.stack.clone()
    }

    /// The WebRTC transport endpoint, if it is running.
    pub fn webrtc_endpoint(&self) -> Option<&Endpoint> {
        self.webrtc.as_ref()
    }

    /// The address of the operations listener (`gateway.admin_address`), if configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.ops.admin_addr
    }

    /// The gateway's metrics registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        self.pool.metrics()
    }

    /// The operations endpoints' state (phase, readiness).
    pub fn admin(&self) -> &Arc<Admin> {
        &self.ops.admin
    }

    /// Applies new settings live: parts added, removed or re-dialed as needed, unchanged parts
    /// and their calls untouched. Restart-only settings (listen addresses, drain timeout, TLS
    /// and auth) are logged and kept.
    pub async fn reload(&self, settings: Settings) -> Result<ReloadOutcome, ReloadError> {
        self.ops.reloader.apply(settings).await
    }

    /// Loads, validates and applies a config file (SIGHUP); an invalid file is logged, counted
    /// in `partgate_config_reloads_total` and shown on `/statusz`, and the running config stays.
    /// SIGHUP also re-reads the TLS certificate files (they are watched for changes as well).
    pub async fn reload_from_file(&self, path: &Path) -> Result<ReloadOutcome, ReloadError> {
        self.reload_tls();
        self.ops.reloader.apply_file(path).await
    }

    /// Re-reads the listener's certificate files now; false (and the old certificate kept)
    /// if they are invalid or the port speaks h2c.
    pub fn reload_tls(&self) -> bool {
        self.tls.as_ref().is_some_and(|tls| tls.reload())
    }

    /// Reloads whenever the contents of `path` change (polled every `every`).
    pub fn watch_config(&self, path: PathBuf, every: Duration) {
        let task = self.ops.reloader.watch(path, every);
        if let Ok(mut tasks) = self.ops.tasks.lock() {
            tasks.push(task);
        }
    }

    /// How many workers serve client connections (`gateway.worker_threads`).
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// The address the gateway accepts connections on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The parts and their route table.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Stops accepting, sends GOAWAY, waits for in-flight calls (up to the drain timeout).
    /// `/readyz` answers 503 "draining" meanwhile; then the parts and the operations listener
    /// are closed.
    pub async fn shutdown(self) {
        self.ops.admin.set_phase(Phase::Draining);
        if let Ok(mut tasks) = self.ops.tasks.lock() {
            tasks.drain(..).for_each(|t| t.abort());
        }
        let _ = self.stop.send(true);
        let _ = self.server.await;
        // Closing the endpoint ends every peer's channel, which cancels its streams.
        if let Some(endpoint) = &self.webrtc {
            endpoint.close();
        }
        self.pool.close();
        let _ = self.ops.admin_stop.send(true);
        if let Some(server) = self.ops.admin_server {
            let _ = server.await;
        }
    }
}

/// Binds the WebRTC endpoint and installs signaling in the stack. A transport that cannot
/// start is logged, not fatal: signaling then answers `Call` with UNIMPLEMENTED and every SDK
/// falls back to direct gRPC on this same port.
async fn start_webrtc(
    webrtc: &WebRtcSettings,
    settings: &Settings,
    addr: SocketAddr,
    stack: &CallStack,
    metrics: &Arc<Metrics>,
    workers: &Workers,
) -> Option<Endpoint> {
    let endpoint = match Endpoint::bind_on(webrtc.transport.clone(), Some(workers.clone())).await {
        Ok(endpoint) => {
            info!("WebRTC on udp {}", endpoint.local_addr());
            Some(endpoint)
        }
        Err(e) => {
            warn!(error = %e, "WebRTC transport did not start; serving direct gRPC only");
            None
        }
    };
    let signaling = Signaling::new(
        endpoint.clone(),
        Signaling::hosts_for(settings, addr),
        webrtc.ice_servers.clone(),
        webrtc.transport.connect_timeout,
        metrics.webrtc().clone(),
    );
    stack.set_signaling(signaling);
    endpoint
}

type AdminListener = (
    Option<SocketAddr>,
    watch::Sender<bool>,
    Option<JoinHandle<()>>,
);

/// Binds and serves `gateway.admin_address` at once, so probes and scrapes work while the
/// parts are still being dialed (`/readyz` says "starting" until they are).
async fn start_admin(settings: &Settings, admin: &Arc<Admin>) -> Result<AdminListener, StartError> {
    let (stop, stopped) = watch::channel(false);
    let Some(bind) = settings.admin else {
        return Ok((None, stop, None));
    };
    let listener = listener::bind(bind).await?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: bind.to_string(),
        source,
    })?;
    let admin = admin.clone();
    let handler: Handler = Arc::new(move |req, _peer| {
        let resp = admin.serve(&req);
        Box::pin(async move { Ok(resp) })
    });
    let server = tokio::spawn(listener::serve(
        listener,
        handler,
        stopped,
        listener::Limits {
            drain: Duration::from_secs(1),
            header_timeout: settings.client_header_timeout,
            idle_timeout: settings.client_idle_timeout,
            max_connections: settings.max_connections,
        },
        None,
        None,
    ));
    info!("operations endpoints on {addr}");
    Ok((Some(addr), stop, Some(server)))
}

/// Samples every part's call totals for the rates on `/statusz`.
async fn sample_calls(admin: Arc<Admin>) {
    let mut ticks = tokio::time::interval(crate::ops::admin::SAMPLE_INTERVAL);
    loop {
        ticks.tick().await;
        admin.sample();
    }
}
