//! The gateway's own session with each part: opened when a connection to the part is
//! established (`StartSession`, resuming the previous id so a brief reconnect keeps the part's
//! monitored resources), heartbeated every `window / 5` by one task per part, and sent as
//! `viam-sid` on forwarded safety-monitored calls. If the gateway dies or loses the part, the
//! part's own expiry stops what was driven through it. A part that answers UNIMPLEMENTED has no
//! sessions until its next connection; the gateway's stop-on-expiry still covers it.
//!
//! New parts (added by a reload) are picked up within [`ADOPT_INTERVAL`]; a part's task ends
//! when the pool closes it.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::HeaderValue;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::proto::viam::robot::v1 as robot;
use crate::upstream::pool::{Part, PartChannel, PartState, Pool};

/// The heartbeat window the gateway grants (viam-server's default).
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(2);

/// How often the part list is re-read for parts a reload added.
const ADOPT_INTERVAL: Duration = Duration::from_secs(1);
/// How long one `StartSession` or heartbeat to a part may take at most.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause before retrying a `StartSession` that failed for a reason other than UNIMPLEMENTED.
const RETRY_PAUSE: Duration = Duration::from_millis(250);
/// The fastest heartbeat sent, whatever window a part grants.
const MIN_HEARTBEAT: Duration = Duration::from_millis(10);

type Client = robot::robot_service_client::RobotServiceClient<PartChannel>;

/// The gateway's sessions with its parts, by part name.
#[derive(Clone)]
pub struct PartSessions {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    by_part: Mutex<HashMap<String, Arc<PartSession>>>,
}

/// The gateway's session with one part (one part instance: a re-dialed part gets a new one).
struct PartSession {
    part: Weak<Part>,
    /// Resources the part said it safety-monitors for our session (`viam-smrn`).
    monitored: Mutex<BTreeSet<String>>,
}

/// Why a session with a part ended.
enum Ended {
    /// The part has no sessions (UNIMPLEMENTED): wait for the next connection.
    Unsupported,
    /// A new connection to the part: start again, resuming.
    Reconnected,
    /// The session or a call failed: start again after a pause.
    Failed,
}

// === impl PartSessions ===

impl PartSessions {
    /// Starts a session task for every current part, and a task adopting parts added later.
    pub fn start(pool: &Arc<Pool>) -> Self {
        let sessions = Self {
            inner: Arc::new(Inner::default()),
        };
        sessions.inner.adopt(&pool.parts());
        tokio::spawn(adopt_forever(
            Arc::downgrade(pool),
            Arc::downgrade(&sessions.inner),
        ));
        sessions
    }

    /// The `viam-sid` value for calls to `part`, if the gateway holds a session with it.
    pub fn header_for(&self, part: &Arc<Part>) -> Option<HeaderValue> {
        let by_part = self.inner.by_part.lock().ok()?;
        let session = by_part.get(part.name())?;
        if !std::ptr::eq(session.part.as_ptr(), Arc::as_ptr(part)) {
            return None;
        }
        // Only a session started on the current connection (checked again once the call's
        // connection is picked: `Part::send`). Until the session task has started one on a new
        // connection, calls go without a session rather than with one the part may not know.
        part.own_session()
    }

    /// The session id the gateway holds with the named part, if any (tests, `/statusz`).
    pub fn id_for(&self, part: &str) -> Option<String> {
        let by_part = self.inner.by_part.lock().ok()?;
        let id = by_part.get(part)?.part.upgrade()?.own_session()?;
        id.to_str().ok().map(str::to_owned)
    }

    /// Records the resources a part reported (`viam-smrn`) as monitored for our session.
    pub fn note_monitored(&self, part: &Part, names: Vec<String>) {
        let session = self
            .inner
            .by_part
            .lock()
            .ok()
            .and_then(|m| m.get(part.name()).cloned());
        let Some(session) = session else { return };
        let Ok(mut monitored) = session.monitored.lock() else {
            return;
        };
        for name in names {
            if monitored.insert(name.clone()) {
                debug!(part = %part.name(), resource = %name, "part safety-monitors resource for the gateway's session");
            }
        }
    }

    /// The resources a part reported as monitored for the gateway's session.
    pub fn monitored_by(&self, part: &str) -> Vec<String> {
        let session = self
            .inner
            .by_part
            .lock()
            .ok()
            .and_then(|m| m.get(part).cloned());
        session
            .and_then(|s| s.monitored.lock().ok().map(|m| m.iter().cloned().collect()))
            .unwrap_or_default()
    }
}

// === impl Inner ===

impl Inner {
    /// Starts a session task for every part instance not seen yet.
    fn adopt(&self, parts: &[Arc<Part>]) {
        let Ok(mut by_part) = self.by_part.lock() else {
            return;
        };
        for part in parts {
            let known = by_part
                .get(part.name())
                .is_some_and(|s| std::ptr::eq(s.part.as_ptr(), Arc::as_ptr(part)));
            if known {
                continue;
            }
            let session = Arc::new(PartSession {
                part: Arc::downgrade(part),
                monitored: Mutex::new(BTreeSet::new()),
            });
            by_part.insert(part.name().to_owned(), session.clone());
            tokio::spawn(session.maintain(part.clone()));
        }
    }
}

async fn adopt_forever(pool: Weak<Pool>, inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(ADOPT_INTERVAL).await;
        let (Some(pool), Some(inner)) = (pool.upgrade(), inner.upgrade()) else {
            return;
        };
        inner.adopt(&pool.parts());
    }
}

// === impl PartSession ===

impl PartSession {
    /// Keeps a session with the part for as long as the pool keeps the part.
    async fn maintain(self: Arc<Self>, part: Arc<Part>) {
        let mut closing = part.closing();
        tokio::select! {
            _ = closing.wait_for(|c| *c) => {}
            _ = self.run(&part) => {}
        }
        part.set_own_session(None);
    }

    async fn run(&self, part: &Arc<Part>) {
        let mut connections = part.connections();
        let mut resume = String::new();
        loop {
            connections.borrow_and_update();
            if part.state() != PartState::Connected {
                if connections.changed().await.is_err() {
                    return;
                }
                continue;
            }
            match self.session(part, &mut connections, &mut resume).await {
                Ended::Unsupported => {
                    if connections.changed().await.is_err() {
                        return;
                    }
                }
                Ended::Reconnected => {}
                Ended::Failed => tokio::time::sleep(RETRY_PAUSE).await,
            }
        }
    }

    /// One session: start (resuming `resume`), then heartbeat until it ends.
    async fn session(
        &self,
        part: &Arc<Part>,
        connections: &mut watch::Receiver<u64>,
        resume: &mut String,
    ) -> Ended {
        let mut client = Client::new(PartChannel::for_part(part.clone()));
        // Read before the call: if a new connection comes up meanwhile, this session is not
        // used (and the heartbeat loop starts another one at once).
        let epoch = part.connects();
        let request = robot::StartSessionRequest {
            resume: resume.clone(),
        };
        let started = match tokio::time::timeout(CALL_TIMEOUT, client.start_session(request)).await
        {
            Ok(Ok(resp)) => resp.into_inner(),
            Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => {
                info!(part = %part.name(), "part has no sessions; the gateway alone stops what expired client sessions drove");
                return Ended::Unsupported;
            }
            Ok(Err(status)) => {
                debug!(part = %part.name(), code = ?status.code(), error = %status.message(), "StartSession with part failed");
                return Ended::Failed;
            }
            Err(_) => return Ended::Failed,
        };
        let Ok(value) = HeaderValue::try_from(started.id.as_str()) else {
            warn!(part = %part.name(), "part returned an unusable session id");
            return Ended::Failed;
        };
        let window = started
            .heartbeat_window
            .and_then(|w| Duration::try_from(w).ok())
            .unwrap_or(DEFAULT_WINDOW);
        if *resume != started.id {
            info!(part = %part.name(), session = %started.id, window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX), "holding a session with part");
        }
        *resume = started.id.clone();
        part.set_own_session(Some((epoch, value)));
        let ended = heartbeat(&mut client, &started.id, window, connections).await;
        part.set_own_session(None);
        ended
    }
}

/// Heartbeats every `window / 5` until a heartbeat fails or the connection is replaced.
async fn heartbeat(
    client: &mut Client,
    id: &str,
    window: Duration,
    connections: &mut watch::Receiver<u64>,
) -> Ended {
    let mut ticks = tokio::time::interval((window / 5).max(MIN_HEARTBEAT));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = connections.changed() => {
                return if changed.is_ok() { Ended::Reconnected } else { Ended::Failed };
            }
            _ = ticks.tick() => {}
        }
        let request = robot::SendSessionHeartbeatRequest { id: id.to_owned() };
        match tokio::time::timeout(
            window.min(CALL_TIMEOUT),
            client.send_session_heartbeat(request),
        )
        .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(status)) => {
                debug!(session = %id, code = ?status.code(), error = %status.message(), "heartbeat to part failed");
                return Ended::Failed;
            }
            Err(_) => return Ended::Failed,
        }
    }
}
