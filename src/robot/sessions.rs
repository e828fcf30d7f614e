//! Sessions and safety: a client that vanishes stops the resources it was driving.
//!
//! Clients open sessions with the gateway (`StartSession`, `SendSessionHeartbeat`,
//! `GetSessions`) and put `viam-sid: <id>` on safety-monitored calls (protocol notes 3.3, 4.4).
//! The gateway records which resources (part, part-local name, API service) each session drove,
//! and when a session's heartbeats stop for longer than its window it calls the API's `Stop` on
//! exactly those resources, on their parts, concurrently ([`stop`]).
//!
//! A session is owned by the authenticated entity ([`Principal::entity`]); without
//! authentication every caller is the same anonymous owner. Sessions are not tied to the client's
//! HTTP/2 connection (the Python SDK heartbeats over a second connection): a client that goes away
//! is noticed when its heartbeats stop, within the window plus the expiry task's wake-up.
//!
//! The client's `viam-sid` is never forwarded. The gateway holds one session of its own with each
//! part that supports sessions ([`crate::upstream::sessions`]) and sends that id on forwarded monitored calls, so
//! a gateway that dies leaves the part's own expiry to stop the resources.
//!
//! Receives the call stack's monitored calls and the session methods; hands back session answers
//! and the headers to forward.

#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::future::join_all;
use http::{HeaderMap, HeaderValue};
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::auth::Principal;
use crate::error::GatewayError;
use crate::proto::viam::robot::v1 as robot;
use crate::upstream::pool::{Part, Pool};

pub use crate::metrics::SessionMetrics;
use crate::proto::wire::{MONITORED_HEADER, SESSION_HEADER};
pub use crate::upstream::sessions::{DEFAULT_WINDOW, PartSessions};
use crate::upstream::stop;

/// At most this many sessions are live at once (viam-server's limit).
pub const MAX_SESSIONS: usize = 1024;
/// How long one `Stop` sent on a session's expiry may take.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Safety-monitored methods (`safety_heartbeat_monitored`, protocol notes 3.3) by service, and
/// whether the API has a `Stop(StopRequest{name = 1})` to call when a session expires.
const MONITORED: [(&str, &[&str], bool); 9] = [
    (
        "viam.component.arm.v1.ArmService",
        &[
            "MoveToPosition",
            "MoveToJointPositions",
            "MoveThroughJointPositions",
            "MoveThroughJointPositionsStreamed",
        ],
        true,
    ),
    (
        "viam.component.base.v1.BaseService",
        &["MoveStraight", "Spin", "SetPower", "SetVelocity"],
        true,
    ),
    ("viam.component.button.v1.ButtonService", &["Push"], false),
    (
        "viam.component.gantry.v1.GantryService",
        &["MoveToPosition"],
        true,
    ),
    (
        "viam.component.gripper.v1.GripperService",
        &["Open", "Grab", "GoToInputs"],
        true,
    ),
    (
        "viam.component.motor.v1.MotorService",
        &["SetPower", "GoFor", "GoTo", "SetRPM"],
        true,
    ),
    ("viam.component.servo.v1.ServoService", &["Move"], true),
    (
        "viam.component.switch.v1.SwitchService",
        &["SetPosition"],
        false,
    ),
    (
        "viam.component.testecho.v1.TestEchoService",
        &["EchoMultiple"],
        true,
    ),
];

/// Whose sessions these are: the authenticated entity, or `None` for every anonymous caller of
/// a gateway without authentication.
type Owner = Option<String>;

/// A resource a session drove through a safety-monitored method.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Driven {
    /// The part's configured name.
    pub part: String,
    /// The resource's name on that part (prefix popped).
    pub name: String,
    /// The API's gRPC service, `package.Service` (its `Stop` is called on expiry).
    pub service: String,
}

/// Every client session, the expiry task's wake-up, and the gateway's own part sessions.
pub struct Sessions {
    table: Mutex<Table>,
    wake: Arc<Notify>,
    window: Duration,
    pool: Arc<Pool>,
    parts: PartSessions,
}

#[derive(Default)]
struct Table {
    sessions: HashMap<Uuid, Session>,
    /// Every live session's deadline, earliest first.
    deadlines: BTreeSet<(Instant, Uuid)>,
}

struct Session {
    owner: Owner,
    deadline: Instant,
    peer: Option<SocketAddr>,
    driven: HashSet<Driven>,
}

/// A safety-monitored method: its service, and whether that API can be stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Monitored {
    /// `package.Service`.
    pub service: &'static str,
    /// Whether the API has `Stop`.
    pub stoppable: bool,
}

// === impl Sessions ===

impl Sessions {
    /// Creates the session table over a pool and starts its expiry task and the gateway's own
    /// sessions with the parts.
    pub fn start(pool: Arc<Pool>) -> Arc<Self> {
        let wake = Arc::new(Notify::new());
        let sessions = Arc::new(Self {
            table: Mutex::new(Table::default()),
            wake: wake.clone(),
            window: DEFAULT_WINDOW,
            parts: PartSessions::start(&pool),
            pool,
        });
        tokio::spawn(expire_forever(Arc::downgrade(&sessions), wake));
        sessions
    }

    /// The gateway's sessions with its parts.
    pub fn parts(&self) -> &PartSessions {
        &self.parts
    }

    /// `StartSession`: resumes the caller's live session named by `resume`, else opens a new one.
    pub fn start_session(
        &self,
        req: &robot::StartSessionRequest,
        principal: &Principal,
        peer: Option<SocketAddr>,
    ) -> Result<robot::StartSessionResponse, GatewayError> {
        let owner = &principal.entity;
        let now = Instant::now();
        let deadline = now + self.window;
        let mut table = self.table.lock().map_err(|_| poisoned())?;
        let resumed = Uuid::parse_str(&req.resume)
            .ok()
            .filter(|id| table.live(id, owner, now))
            .inspect(|id| table.extend(*id, deadline));
        let id = match resumed {
            Some(id) => id,
            None => {
                if table.sessions.len() >= MAX_SESSIONS {
                    return Err(GatewayError::TooManySessions(MAX_SESSIONS));
                }
                let id = Uuid::new_v4();
                let session = Session {
                    owner: owner.clone(),
                    deadline,
                    peer,
                    driven: HashSet::new(),
                };
                table.sessions.insert(id, session);
                table.deadlines.insert((deadline, id));
                id
            }
        };
        self.metrics().live.set(gauge_value(table.sessions.len()));
        drop(table);
        self.wake.notify_one();
        debug!(session = %id, resumed = resumed.is_some(), "session started");
        Ok(robot::StartSessionResponse {
            id: id.to_string(),
            heartbeat_window: prost_types::Duration::try_from(self.window).ok(),
        })
    }

    /// `SendSessionHeartbeat`: extends the caller's live session, else SESSION_EXPIRED.
    pub fn heartbeat(&self, id: &str, principal: &Principal) -> Result<(), GatewayError> {
        let id = Uuid::parse_str(id).map_err(|_| GatewayError::SessionExpired)?;
        let now = Instant::now();
        let mut table = self.table.lock().map_err(|_| poisoned())?;
        if !table.live(&id, &principal.entity, now) {
            return Err(GatewayError::SessionExpired);
        }
        table.extend(id, now + self.window);
        Ok(())
    }

    /// `GetSessions`: the caller's live sessions, with the peer that started each.
    pub fn list(&self, principal: &Principal) -> robot::GetSessionsResponse {
        let now = Instant::now();
        let Ok(table) = self.table.lock() else {
            return robot::GetSessionsResponse::default();
        };
        let sessions = table
            .sessions
            .iter()
            .filter(|(_, s)| s.owner == principal.entity && s.deadline > now)
            .map(|(id, s)| robot::Session {
                id: id.to_string(),
                peer_connection_info: s.peer.map(|peer| robot::PeerConnectionInfo {
                    r#type: robot::PeerConnectionType::Grpc as i32,
                    remote_address: Some(peer.to_string()),
                    local_address: None,
                }),
            })
            .collect();
        robot::GetSessionsResponse { sessions }
    }

    /// The session hook of a call routed by name to `part`: on a safety-monitored method,
    /// validates the client's `viam-sid` (absent is fine) and records the resource with its
    /// session. Then replaces the client's id with the gateway's own session with the part
    /// (monitored calls only), so the part never sees an id it did not issue.
    pub fn on_call(
        &self,
        path: &str,
        headers: &mut HeaderMap,
        principal: &Principal,
        part: &Arc<Part>,
        local_name: &str,
    ) -> Result<(), GatewayError> {
        let Some(monitored) = monitored(path) else {
            headers.remove(SESSION_HEADER);
            return Ok(());
        };
        if let Some(id) = session_id(headers)? {
            let driven = monitored.stoppable.then(|| Driven {
                part: part.name().to_owned(),
                name: local_name.to_owned(),
                service: monitored.service.to_owned(),
            });
            self.drive(id, &principal.entity, driven)?;
        }
        headers.remove(SESSION_HEADER);
        if let Some(own) = self.parts.header_for(part) {
            headers.insert(SESSION_HEADER, own);
        }
        Ok(())
    }

    /// Reads (and removes: the names are part-local) the `viam-smrn` headers of a part's answer.
    pub fn on_response(&self, part: &Part, headers: &mut HeaderMap) {
        if !headers.contains_key(MONITORED_HEADER) {
            return;
        }
        let names: Vec<String> = headers
            .get_all(MONITORED_HEADER)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect();
        headers.remove(MONITORED_HEADER);
        self.parts.note_monitored(part, names);
    }

    fn drive(&self, id: Uuid, owner: &Owner, driven: Option<Driven>) -> Result<(), GatewayError> {
        let now = Instant::now();
        let mut table = self.table.lock().map_err(|_| poisoned())?;
        if !table.live(&id, owner, now) {
            return Err(GatewayError::SessionExpired);
        }
        if let (Some(session), Some(driven)) = (table.sessions.get_mut(&id), driven) {
            session.driven.insert(driven);
        }
        Ok(())
    }

    fn metrics(&self) -> &SessionMetrics {
        self.pool.metrics().sessions()
    }

    /// Removes every session past its deadline, stops what each drove (in the background), and
    /// returns the next deadline.
    fn expire_due(self: &Arc<Self>) -> Option<Instant> {
        let now = Instant::now();
        let mut expired = Vec::new();
        let next = {
            let Ok(mut table) = self.table.lock() else {
                return None;
            };
            while let Some(&(at, id)) = table.deadlines.first() {
                if at > now {
                    break;
                }
                table.deadlines.pop_first();
                if let Some(session) = table.sessions.remove(&id) {
                    expired.push((id, session));
                }
            }
            self.metrics().live.set(gauge_value(table.sessions.len()));
            table.deadlines.first().map(|(at, _)| *at)
        };
        for (id, session) in expired {
            self.metrics().expired.inc();
            let late = now.saturating_duration_since(session.deadline);
            info!(session = %id, resources = session.driven.len(), late_ms = u64::try_from(late.as_millis()).unwrap_or(u64::MAX), "session expired; stopping what it drove");
            let this = self.clone();
            tokio::spawn(async move { this.stop_driven(id, session.driven).await });
        }
        next
    }

    /// Calls `Stop` on every resource a session drove, on its part, concurrently.
    async fn stop_driven(&self, id: Uuid, driven: HashSet<Driven>) {
        let calls = driven.into_iter().map(|d| async move {
            let part = self.pool.parts().iter().find(|p| p.name() == d.part).cloned();
            let result = match part {
                Some(part) => tokio::time::timeout(STOP_TIMEOUT, stop::stop(part, &d.service, &d.name))
                    .await
                    .unwrap_or_else(|_| Err("timed out".to_owned())),
                None => Err("part is no longer configured".to_owned()),
            };
            match &result {
                Ok(()) => info!(session = %id, part = %d.part, resource = %d.name, service = %d.service, "stopped resource of expired session"),
                Err(e) => warn!(session = %id, part = %d.part, resource = %d.name, service = %d.service, error = %e, "could not stop resource of expired session"),
            }
            let labels = crate::metrics::StopLabels { part: d.part, result: if result.is_ok() { "ok" } else { "failed" } };
            self.metrics().stops.get_or_create(&labels).inc();
        });
        join_all(calls).await;
    }
}

impl Drop for Sessions {
    fn drop(&mut self) {
        // Lets the expiry task see the table is gone and end.
        self.wake.notify_one();
    }
}

/// Wakes at the next deadline (or when a session starts) until the table is dropped.
async fn expire_forever(sessions: Weak<Sessions>, wake: Arc<Notify>) {
    loop {
        let next = match sessions.upgrade() {
            Some(sessions) => sessions.expire_due(),
            None => return,
        };
        match next {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

// === impl Table ===

impl Table {
    fn live(&self, id: &Uuid, owner: &Owner, now: Instant) -> bool {
        self.sessions
            .get(id)
            .is_some_and(|s| &s.owner == owner && s.deadline > now)
    }

    fn extend(&mut self, id: Uuid, deadline: Instant) {
        if let Some(session) = self.sessions.get_mut(&id) {
            self.deadlines.remove(&(session.deadline, id));
            session.deadline = deadline;
            self.deadlines.insert((deadline, id));
        }
    }
}

/// The service of a safety-monitored method, or `None`.
pub fn monitored(path: &str) -> Option<Monitored> {
    let (service, method) = crate::route::method::split_path(path.strip_prefix('/')?);
    let method = method?;
    MONITORED
        .iter()
        .find(|(s, methods, _)| *s == service && methods.contains(&method))
        .map(|(service, _, stoppable)| Monitored {
            service,
            stoppable: *stoppable,
        })
}

/// The client's session id: none, or exactly one UUID (anything else is SESSION_EXPIRED).
fn session_id(headers: &HeaderMap) -> Result<Option<Uuid>, GatewayError> {
    let mut values = headers.get_all(SESSION_HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(GatewayError::SessionExpired);
    }
    parse_id(value)
        .map(Some)
        .ok_or(GatewayError::SessionExpired)
}

fn parse_id(value: &HeaderValue) -> Option<Uuid> {
    value
        .to_str()
        .ok()
        .and_then(|s| Uuid::parse_str(s.trim()).ok())
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn poisoned() -> GatewayError {
    GatewayError::Internal("session table lock poisoned".into())
}
