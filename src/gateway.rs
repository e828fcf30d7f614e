//! The gateway as a whole: config -> pool + call stack + listener; bound address; shutdown.
//!
//! Receives validated [`Settings`]; hands back a running [`Gateway`] handle that tests and the
//! binary use alike.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::Settings;
use crate::error::{GatewayError, StartError};
use crate::listener::{self, Frontend, Handler};
use crate::pool::Pool;
use crate::stack::CallStack;

/// Extra start-up wait beyond the dial timeout for a part's first `ResourceNames`.
const STARTUP_CHECK_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// A running gateway.
pub struct Gateway {
    addr: SocketAddr,
    pool: Arc<Pool>,
    stop: watch::Sender<bool>,
    server: JoinHandle<()>,
}

impl Gateway {
    /// Binds the listener, starts dialing every part and serves until [`Gateway::shutdown`].
    pub async fn start(settings: Settings) -> Result<Self, StartError> {
        let listener = listener::bind(settings.bind).await?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: settings.bind.to_string(),
            source,
        })?;
        let pool = Pool::start(&settings).map_err(|e| match e {
            GatewayError::Internal(message) => {
                StartError::Config(crate::error::ConfigError::Parse {
                    path: "remotes".into(),
                    message,
                })
            }
            other => StartError::Config(crate::error::ConfigError::Parse {
                path: "remotes".into(),
                message: other.to_string(),
            }),
        })?;
        // Accept only once every part has been dialed and listed (or failed), so the first
        // client never sees a half-empty fleet. Connections queue in the backlog meanwhile.
        let pending = pool
            .wait_settled(settings.connect_timeout + STARTUP_CHECK_GRACE)
            .await;
        if !pending.is_empty() {
            warn!(parts = ?pending, "parts still connecting at start-up; serving without them for now");
        }
        let frontend = Frontend::new(CallStack::new(pool.clone(), &settings));
        let handler: Handler = Arc::new(move |req| Box::pin(frontend.clone().serve(req)));
        let (stop, stopped) = watch::channel(false);
        let server = tokio::spawn(listener::serve(
            listener,
            handler,
            stopped,
            settings.drain_timeout,
        ));
        info!("listening on {addr}");
        Ok(Self {
            addr,
            pool,
            stop,
            server,
        })
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
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.server.await;
    }
}
