//! Simulated parts: in-process Viam parts with motors, sensors, generic components, test-echo
//! and a custom (modular-style) counter API. `partgate demo` runs a fleet of them behind the
//! gateway; integration tests start them on `127.0.0.1:0`, kill and restart them.
//!
//! Receives gRPC calls like a viam-server part would; hands back answers that say which part
//! answered and which name it received (so a test can see the prefix was popped).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use prost_types::{Struct, Value, value::Kind};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tonic::server::NamedService;
use tonic::{Request, Response, Status, Streaming};
use tower::Service;

use proto::acme::component::counter::v1 as counter;
use proto::grpc::reflection::{v1 as reflection_v1, v1alpha as reflection_v1alpha};
use proto::reflection::{self, DescriptorIndex};
use proto::viam::common::v1 as common;
use proto::viam::component::generic::v1 as generic;
use proto::viam::component::motor::v1 as motor;
use proto::viam::component::sensor::v1 as sensor;
use proto::viam::component::testecho::v1 as echo;
use proto::viam::robot::v1 as robot;

type Body = tonic::body::Body;
/// Entries a simulated part's call log keeps (tests look at far fewer).
const MAX_LOGGED_CALLS: usize = 100_000;

/// viam-server's message size limit, which simulated parts share.
const MAX_MESSAGE: usize = 32 * 1024 * 1024;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// What a simulated part has.
#[derive(Debug, Clone, Default)]
pub struct PartSpec {
    /// The part's own name (reported in DoCommand answers).
    pub name: String,
    /// Motor names.
    pub motors: Vec<String>,
    /// Sensor names.
    pub sensors: Vec<String>,
    /// Generic component names.
    pub generics: Vec<String>,
    /// Test-echo component names.
    pub echoes: Vec<String>,
    /// Custom counter component names (API `acme:component:counter`).
    pub counters: Vec<String>,
    /// Delay before every unary answer (to simulate a slow part).
    pub delay: Option<Duration>,
    /// When set, the part requires a token obtained with this location secret, like a
    /// viam-server with an `auth` block.
    pub secret: Option<String>,
    /// Answer `StartSession` with UNIMPLEMENTED, like a part without session support.
    pub no_sessions: bool,
    /// The heartbeat window the part grants (default 2 s, viam-server's).
    pub session_window: Option<Duration>,
    /// Answer server reflection with UNIMPLEMENTED, like a part built without it.
    pub no_reflection: bool,
}

/// A session a simulated part granted: the motors driven under it are stopped when it expires.
#[derive(Debug, Clone)]
pub struct SimSession {
    deadline: tokio::time::Instant,
    /// Motors moved by safety-monitored calls carrying this session's id.
    pub motors: std::collections::BTreeSet<String>,
}

/// A simulated motor's state.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MotorState {
    /// Power in -1..1.
    pub power: f64,
    /// Position in revolutions.
    pub position: f64,
}

/// Observable state of a simulated part, shared with tests.
#[derive(Debug, Default)]
pub struct PartLog {
    /// Every call as (method, name received).
    pub calls: Mutex<Vec<(String, String)>>,
    /// Motor states by (unprefixed) name.
    pub motors: Mutex<HashMap<String, MotorState>>,
    /// Counter totals by name.
    pub counters: Mutex<HashMap<String, i64>>,
    /// Metadata of the last call (for header pass-through tests).
    pub last_metadata: Mutex<Option<tonic::metadata::MetadataMap>>,
    /// Tokens this part issued and still accepts.
    pub tokens: Mutex<Vec<String>>,
    /// Calls rejected for a missing or unknown token.
    pub rejected: std::sync::atomic::AtomicUsize,
    /// Connections accepted, over restarts.
    pub accepted: std::sync::atomic::AtomicUsize,
    /// Live sessions by id. An expired session's motors are stopped and logged in `calls` as
    /// ("SessionStop", motor), set apart from ("Stop", motor) calls received over gRPC.
    pub sessions: Mutex<HashMap<String, SimSession>>,
}

impl PartLog {
    /// Appends to the call log, keeping only the newest entries so a long-running
    /// `partgate demo` does not grow without bound.
    pub fn record_call(&self, method: impl Into<String>, name: impl Into<String>) {
        if let Ok(mut calls) = self.calls.lock() {
            if calls.len() >= MAX_LOGGED_CALLS {
                calls.drain(..MAX_LOGGED_CALLS / 2);
            }
            calls.push((method.into(), name.into()));
        }
    }

    /// Forgets every issued token, as a part restarted behind a proxy would.
    pub fn forget_tokens(&self) {
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.clear();
        }
    }

    /// Names received for a method.
    pub fn names_for(&self, method: &str) -> Vec<String> {
        self.calls
            .lock()
            .map(|c| {
                c.iter()
                    .filter(|(m, _)| m == method)
                    .map(|(_, n)| n.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Metadata of the last call the part received, if any.
    pub fn metadata(&self) -> Option<tonic::metadata::MetadataMap> {
        self.last_metadata.lock().ok().and_then(|m| m.clone())
    }

    /// A motor's state.
    pub fn motor(&self, name: &str) -> Option<MotorState> {
        self.motors.lock().ok().and_then(|m| m.get(name).copied())
    }

    /// The ids of the sessions this part holds.
    pub fn session_ids(&self) -> Vec<String> {
        self.sessions
            .lock()
            .map(|s| s.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn session_deadline(&self, id: &str) -> Option<tokio::time::Instant> {
        self.sessions.lock().ok()?.get(id).map(|s| s.deadline)
    }

    /// Expires the session if its deadline has passed: stops its motors like viam-server does.
    fn expire_if_due(&self, id: &str) -> bool {
        let Ok(mut sessions) = self.sessions.lock() else {
            return true;
        };
        if sessions
            .get(id)
            .is_some_and(|s| s.deadline > tokio::time::Instant::now())
        {
            return false;
        }
        let Some(session) = sessions.remove(id) else {
            return true;
        };
        drop(sessions);
        for motor in session.motors {
            if let Ok(mut motors) = self.motors.lock() {
                motors.entry(motor.clone()).or_default().power = 0.0;
            }
            self.record_call("SessionStop", motor);
        }
        true
    }
}

/// The service implementation shared by every API of one part.
#[derive(Clone)]
struct Sim {
    spec: Arc<PartSpec>,
    log: Arc<PartLog>,
    /// Turns true when the part is killed (its session watchdogs end with it).
    stopped: watch::Receiver<bool>,
}

/// A running simulated part.
pub struct SimPart {
    addr: SocketAddr,
    log: Arc<PartLog>,
    spec: PartSpec,
    stop: watch::Sender<bool>,
    /// Bumped by [`SimPart::goaway`].
    goaway: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

// === impl SimPart ===

impl SimPart {
    /// Starts a part on `addr` (use `127.0.0.1:0` for an ephemeral port).
    pub async fn start(spec: PartSpec, addr: SocketAddr) -> std::io::Result<Self> {
        Self::start_with_log(spec, addr, Arc::new(PartLog::default())).await
    }

    async fn start_with_log(
        spec: PartSpec,
        addr: SocketAddr,
        log: Arc<PartLog>,
    ) -> std::io::Result<Self> {
        {
            let mut motors = log
                .motors
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?;
            for m in &spec.motors {
                motors.entry(m.clone()).or_default();
            }
        }
        // A (re)started part remembers no sessions, like a restarted viam-server.
        if let Ok(mut sessions) = log.sessions.lock() {
            sessions.clear();
        }
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (stop, mut stopped) = watch::channel(false);
        let (goaway, goaway_rx) = watch::channel(0u64);
        let sim = Sim {
            spec: Arc::new(spec.clone()),
            log: log.clone(),
            stopped: stopped.clone(),
        };
        let task = tokio::spawn(async move {
            let builder = http_builder();
            let mut conns = JoinSet::new();
            loop {
                let (stream, _) = tokio::select! {
                    accepted = listener.accept() => match accepted { Ok(c) => c, Err(_) => continue },
                    _ = stopped.changed() => break,
                };
                let _ = stream.set_nodelay(true);
                sim.log
                    .accepted
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let sim = sim.clone();
                let service = hyper::service::service_fn(move |req| sim.clone().route(req));
                let conn = builder
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .into_owned();
                let mut goaway = goaway_rx.clone();
                goaway.mark_unchanged();
                conns.spawn(async move {
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => return,
                        _ = goaway.changed() => conn.as_mut().graceful_shutdown(),
                    }
                    let _ = conn.await;
                });
            }
            // A killed part drops every connection at once, like a crashed process.
            conns.abort_all();
        });
        Ok(Self {
            addr,
            log,
            spec,
            stop,
            goaway,
            task,
        })
    }

    /// The part's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The part's name (its spec's).
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// What the part has seen.
    pub fn log(&self) -> &Arc<PartLog> {
        &self.log
    }

    /// Sends GOAWAY on every open connection (they close once their calls finish) while still
    /// accepting new ones, like a server rotating its connections.
    pub fn goaway(&self) {
        self.goaway.send_modify(|n| *n += 1);
    }

    /// Kills the part: closes the listener and every connection at once.
    pub async fn kill(self) -> (PartSpec, SocketAddr, Arc<PartLog>) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        (self.spec, self.addr, self.log)
    }

    /// Starts a killed part again on the same address, keeping its log.
    pub async fn restart(killed: (PartSpec, SocketAddr, Arc<PartLog>)) -> std::io::Result<Self> {
        let (spec, addr, log) = killed;
        Self::start_with_log(spec, addr, log).await
    }
}

// === impl Sim ===

macro_rules! dispatch {
    ($req:ident, $sim:ident, $($server:ty),+) => {{
        let path = $req.uri().path();
        $(
            if path.get(1..).is_some_and(|p| p.starts_with(<$server as NamedService>::NAME) && p[<$server as NamedService>::NAME.len()..].starts_with('/')) {
                return <$server>::new($sim)
                    .max_decoding_message_size(MAX_MESSAGE)
                    .max_encoding_message_size(MAX_MESSAGE)
                    .call($req)
                    .await;
            }
        )+
        Ok(Status::unimplemented(format!("unknown service {path}")).into_http())
    }};
}

impl Sim {
    async fn route(
        self,
        req: http::Request<hyper::body::Incoming>,
    ) -> Result<http::Response<Body>, std::convert::Infallible> {
        let req = req.map(Body::new);
        let req = match self.check_auth(req).await {
            Ok(req) => req,
            Err(answer) => return Ok(answer),
        };
        if self.spec.no_reflection && req.uri().path().starts_with("/grpc.reflection.") {
            return Ok(Status::unimplemented("reflection is off").into_http());
        }
        let sim = self;
        dispatch!(
            req,
            sim,
            robot::robot_service_server::RobotServiceServer<Sim>,
            motor::motor_service_server::MotorServiceServer<Sim>,
            sensor::sensor_service_server::SensorServiceServer<Sim>,
            generic::generic_service_server::GenericServiceServer<Sim>,
            echo::test_echo_service_server::TestEchoServiceServer<Sim>,
            counter::counter_service_server::CounterServiceServer<Sim>,
            reflection_v1alpha::server_reflection_server::ServerReflectionServer<Sim>,
            reflection_v1::server_reflection_server::ServerReflectionServer<Sim>
        )
    }

    /// With a secret: answers `Authenticate` (checking the secret) and rejects calls without a
    /// token it issued. Hands the request back when it may proceed.
    async fn check_auth(
        &self,
        req: http::Request<Body>,
    ) -> Result<http::Request<Body>, http::Response<Body>> {
        let Some(secret) = self.spec.secret.clone() else {
            return Ok(req);
        };
        if req.uri().path() == proto::wire::AUTHENTICATE_PATH {
            return Err(self.issue_token(req, &secret).await);
        }
        let presented = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let token = presented.and_then(|v| v.strip_prefix("Bearer "));
        let known = token.is_some_and(|t| {
            self.log
                .tokens
                .lock()
                .is_ok_and(|tokens| tokens.iter().any(|k| k == t))
        });
        if known {
            return Ok(req);
        }
        self.log
            .rejected
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Err(Status::unauthenticated("authentication required").into_http())
    }

    async fn issue_token(&self, req: http::Request<Body>, secret: &str) -> http::Response<Body> {
        if req.headers().contains_key(http::header::AUTHORIZATION) {
            return Status::invalid_argument("already authenticated; cannot re-authenticate")
                .into_http();
        }
        let request: proto::rpc::v1::AuthenticateRequest =
            match proto::unary::decode(req.into_body(), MAX_MESSAGE).await {
                Ok(r) => r,
                Err(status) => return status.into_http(),
            };
        self.log.record_call("Authenticate", request.entity.clone());
        if request
            .credentials
            .as_ref()
            .is_none_or(|c| c.payload != secret)
        {
            return Status::unauthenticated("invalid credentials").into_http();
        }
        let token = format!("{}-token-{}", self.spec.name, uuid::Uuid::new_v4());
        if let Ok(mut tokens) = self.log.tokens.lock() {
            tokens.push(token.clone());
        }
        proto::unary::reply(&proto::rpc::v1::AuthenticateResponse {
            access_token: token,
        })
    }

    async fn record<T>(&self, method: &str, name: &str, req: &Request<T>) {
        self.log.record_call(method.to_owned(), name.to_owned());
        if let Ok(mut md) = self.log.last_metadata.lock() {
            *md = Some(req.metadata().clone());
        }
        if let Some(delay) = self.spec.delay {
            tokio::time::sleep(delay).await;
        }
    }

    /// Honours `viam-sid` on a safety-monitored motor call like viam-server: absent is fine, an
    /// unknown or expired id is SESSION_EXPIRED, a live one now monitors the motor.
    fn monitor<T>(&self, req: &Request<T>, motor: &str) -> Result<bool, Status> {
        let Some(value) = req.metadata().get(proto::wire::SESSION_HEADER.as_str()) else {
            return Ok(false);
        };
        let expired = || Status::invalid_argument("SESSION_EXPIRED");
        let id = value.to_str().map_err(|_| expired())?;
        let mut sessions = self
            .log
            .sessions
            .lock()
            .map_err(|_| Status::internal("poisoned"))?;
        let session = sessions
            .get_mut(id)
            .filter(|s| s.deadline > tokio::time::Instant::now())
            .ok_or_else(expired)?;
        if self.spec.motors.iter().any(|m| m == motor) {
            session.motors.insert(motor.to_owned());
        }
        Ok(true)
    }

    /// Expires a session once its heartbeats stop (ends with the part).
    fn watch_session(&self, id: String) {
        let log = self.log.clone();
        let mut stopped = self.stopped.clone();
        tokio::spawn(async move {
            while let Some(deadline) = log.session_deadline(&id) {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => {}
                    _ = stopped.wait_for(|s| *s) => return,
                }
                if log.expire_if_due(&id) {
                    return;
                }
            }
        });
    }

    fn has(list: &[String], name: &str, kind: &str) -> Result<(), Status> {
        if list.iter().any(|n| n == name) {
            Ok(())
        } else {
            Err(Status::not_found(format!("no {kind} named {name:?}")))
        }
    }

    fn with_motor<R>(&self, name: &str, f: impl FnOnce(&mut MotorState) -> R) -> Result<R, Status> {
        Self::has(&self.spec.motors, name, "motor")?;
        let mut motors = self
            .log
            .motors
            .lock()
            .map_err(|_| Status::internal("poisoned"))?;
        Ok(f(motors.entry(name.to_owned()).or_default()))
    }

    fn echo_command(&self, name: &str, command: Option<Struct>) -> common::DoCommandResponse {
        let mut fields = std::collections::BTreeMap::new();
        fields.insert("part".to_owned(), string_value(&self.spec.name));
        fields.insert("name".to_owned(), string_value(name));
        fields.insert(
            "command".to_owned(),
            Value {
                kind: Some(Kind::StructValue(command.unwrap_or_default())),
            },
        );
        common::DoCommandResponse {
            result: Some(Struct { fields }),
        }
    }

    fn resources(&self) -> Vec<common::ResourceName> {
        let groups: [(&str, &str, &str, &Vec<String>); 5] = [
            ("rdk", "motor", "", &self.spec.motors),
            ("rdk", "sensor", "", &self.spec.sensors),
            ("rdk", "generic", "", &self.spec.generics),
            ("rdk", "testecho", "", &self.spec.echoes),
            ("acme", "counter", "", &self.spec.counters),
        ];
        groups
            .iter()
            .flat_map(|(ns, subtype, _, names)| {
                names.iter().map(move |n| common::ResourceName {
                    namespace: (*ns).into(),
                    r#type: "component".into(),
                    subtype: (*subtype).into(),
                    name: n.clone(),
                    ..Default::default()
                })
            })
            .collect()
    }
}

/// A monitored call's answer; names the motor in `viam-smrn` when a session monitors it.
fn monitored_reply<T>(msg: T, motor: &str, monitored: bool) -> Response<T> {
    let mut resp = Response::new(msg);
    let value = format!("rdk:component:motor/{motor}");
    if let (true, Ok(value)) = (monitored, tonic::metadata::MetadataValue::try_from(value)) {
        resp.metadata_mut()
            .insert(proto::wire::MONITORED_NAME, value);
    }
    resp
}

fn string_value(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    }
}

fn number_value(n: f64) -> Value {
    Value {
        kind: Some(Kind::NumberValue(n)),
    }
}

#[tonic::async_trait]
impl robot::robot_service_server::RobotService for Sim {
    async fn resource_names(
        &self,
        _: Request<robot::ResourceNamesRequest>,
    ) -> Result<Response<robot::ResourceNamesResponse>, Status> {
        Ok(Response::new(robot::ResourceNamesResponse {
            resources: self.resources(),
        }))
    }

    async fn resource_rpc_subtypes(
        &self,
        _: Request<robot::ResourceRpcSubtypesRequest>,
    ) -> Result<Response<robot::ResourceRpcSubtypesResponse>, Status> {
        let api = |ns: &str, subtype: &str, service: &str| robot::ResourceRpcSubtype {
            subtype: Some(common::ResourceName {
                namespace: ns.into(),
                r#type: "component".into(),
                subtype: subtype.into(),
                ..Default::default()
            }),
            proto_service: service.into(),
        };
        // Like viam-server, report only the APIs this part actually has resources of.
        let spec = &self.spec;
        let apis = [
            (
                &spec.motors,
                "rdk",
                "motor",
                "viam.component.motor.v1.MotorService",
            ),
            (
                &spec.sensors,
                "rdk",
                "sensor",
                "viam.component.sensor.v1.SensorService",
            ),
            (
                &spec.generics,
                "rdk",
                "generic",
                "viam.component.generic.v1.GenericService",
            ),
            (
                &spec.echoes,
                "rdk",
                "testecho",
                "viam.component.testecho.v1.TestEchoService",
            ),
            (
                &spec.counters,
                "acme",
                "counter",
                "acme.component.counter.v1.CounterService",
            ),
        ];
        let resource_rpc_subtypes = apis
            .iter()
            .filter(|(names, ..)| !names.is_empty())
            .map(|(_, ns, subtype, service)| api(ns, subtype, service))
            .collect();
        Ok(Response::new(robot::ResourceRpcSubtypesResponse {
            resource_rpc_subtypes,
        }))
    }

    async fn stop_all(
        &self,
        req: Request<robot::StopAllRequest>,
    ) -> Result<Response<robot::StopAllResponse>, Status> {
        self.record("StopAll", "", &req).await;
        if let Ok(mut motors) = self.log.motors.lock() {
            motors.values_mut().for_each(|m| m.power = 0.0);
        }
        Ok(Response::new(robot::StopAllResponse {}))
    }

    async fn get_operations(
        &self,
        _: Request<robot::GetOperationsRequest>,
    ) -> Result<Response<robot::GetOperationsResponse>, Status> {
        Ok(Response::new(robot::GetOperationsResponse {
            operations: vec![robot::Operation {
                id: "op-1".into(),
                method: "/sim/Op".into(),
                ..Default::default()
            }],
        }))
    }

    async fn cancel_operation(
        &self,
        req: Request<robot::CancelOperationRequest>,
    ) -> Result<Response<robot::CancelOperationResponse>, Status> {
        let id = req.get_ref().id.clone();
        self.record("CancelOperation", &id, &req).await;
        Ok(Response::new(robot::CancelOperationResponse {}))
    }

    async fn get_machine_status(
        &self,
        _: Request<robot::GetMachineStatusRequest>,
    ) -> Result<Response<robot::GetMachineStatusResponse>, Status> {
        let resources = self
            .resources()
            .into_iter()
            .map(|name| robot::ResourceStatus {
                name: Some(name),
                state: robot::resource_status::State::Ready as i32,
                ..Default::default()
            })
            .collect();
        Ok(Response::new(robot::GetMachineStatusResponse {
            resources,
            state: robot::get_machine_status_response::State::Running as i32,
            ..Default::default()
        }))
    }

    async fn start_session(
        &self,
        req: Request<robot::StartSessionRequest>,
    ) -> Result<Response<robot::StartSessionResponse>, Status> {
        if self.spec.no_sessions {
            return Err(Status::unimplemented("this part has no sessions"));
        }
        let window = self.spec.session_window.unwrap_or(Duration::from_secs(2));
        let deadline = tokio::time::Instant::now() + window;
        let resume = req.into_inner().resume;
        let mut sessions = self
            .log
            .sessions
            .lock()
            .map_err(|_| Status::internal("poisoned"))?;
        let id = match sessions.get_mut(&resume) {
            Some(session) if session.deadline > tokio::time::Instant::now() => {
                session.deadline = deadline;
                resume
            }
            _ => {
                let id = uuid::Uuid::new_v4().to_string();
                let session = SimSession {
                    deadline,
                    motors: Default::default(),
                };
                sessions.insert(id.clone(), session);
                self.watch_session(id.clone());
                id
            }
        };
        Ok(Response::new(robot::StartSessionResponse {
            id,
            heartbeat_window: prost_types::Duration::try_from(window).ok(),
        }))
    }

    async fn send_session_heartbeat(
        &self,
        req: Request<robot::SendSessionHeartbeatRequest>,
    ) -> Result<Response<robot::SendSessionHeartbeatResponse>, Status> {
        let window = self.spec.session_window.unwrap_or(Duration::from_secs(2));
        let now = tokio::time::Instant::now();
        let mut sessions = self
            .log
            .sessions
            .lock()
            .map_err(|_| Status::internal("poisoned"))?;
        match sessions.get_mut(&req.get_ref().id) {
            Some(session) if session.deadline > now => session.deadline = now + window,
            _ => return Err(Status::invalid_argument("SESSION_EXPIRED")),
        }
        Ok(Response::new(robot::SendSessionHeartbeatResponse {}))
    }

    async fn frame_system_config(
        &self,
        req: Request<robot::FrameSystemConfigRequest>,
    ) -> Result<Response<robot::FrameSystemConfigResponse>, Status> {
        self.record("FrameSystemConfig", "", &req).await;
        Ok(Response::new(robot::FrameSystemConfigResponse::default()))
    }
}

#[tonic::async_trait]
impl motor::motor_service_server::MotorService for Sim {
    async fn set_power(
        &self,
        req: Request<motor::SetPowerRequest>,
    ) -> Result<Response<motor::SetPowerResponse>, Status> {
        self.record("SetPower", &req.get_ref().name, &req).await;
        let monitored = self.monitor(&req, &req.get_ref().name)?;
        let r = req.into_inner();
        self.with_motor(&r.name, |m| m.power = r.power_pct)?;
        Ok(monitored_reply(
            motor::SetPowerResponse {},
            &r.name,
            monitored,
        ))
    }

    async fn go_for(
        &self,
        req: Request<motor::GoForRequest>,
    ) -> Result<Response<motor::GoForResponse>, Status> {
        self.record("GoFor", &req.get_ref().name, &req).await;
        let monitored = self.monitor(&req, &req.get_ref().name)?;
        let r = req.into_inner();
        self.with_motor(&r.name, |m| m.position += r.revolutions * r.rpm.signum())?;
        Ok(monitored_reply(motor::GoForResponse {}, &r.name, monitored))
    }

    async fn go_to(
        &self,
        req: Request<motor::GoToRequest>,
    ) -> Result<Response<motor::GoToResponse>, Status> {
        self.record("GoTo", &req.get_ref().name, &req).await;
        let monitored = self.monitor(&req, &req.get_ref().name)?;
        let r = req.into_inner();
        self.with_motor(&r.name, |m| m.position = r.position_revolutions)?;
        Ok(monitored_reply(motor::GoToResponse {}, &r.name, monitored))
    }

    async fn set_rpm(
        &self,
        req: Request<motor::SetRpmRequest>,
    ) -> Result<Response<motor::SetRpmResponse>, Status> {
        self.record("SetRPM", &req.get_ref().name, &req).await;
        let monitored = self.monitor(&req, &req.get_ref().name)?;
        let r = req.into_inner();
        self.with_motor(&r.name, |m| m.power = r.rpm.signum())?;
        Ok(monitored_reply(
            motor::SetRpmResponse {},
            &r.name,
            monitored,
        ))
    }

    async fn reset_zero_position(
        &self,
        req: Request<motor::ResetZeroPositionRequest>,
    ) -> Result<Response<motor::ResetZeroPositionResponse>, Status> {
        self.record("ResetZeroPosition", &req.get_ref().name, &req)
            .await;
        let r = req.into_inner();
        self.with_motor(&r.name, |m| m.position = -r.offset)?;
        Ok(Response::new(motor::ResetZeroPositionResponse {}))
    }

    async fn get_position(
        &self,
        req: Request<motor::GetPositionRequest>,
    ) -> Result<Response<motor::GetPositionResponse>, Status> {
        self.record("GetPosition", &req.get_ref().name, &req).await;
        let position = self.with_motor(&req.get_ref().name, |m| m.position)?;
        Ok(Response::new(motor::GetPositionResponse { position }))
    }

    async fn get_properties(
        &self,
        req: Request<motor::GetPropertiesRequest>,
    ) -> Result<Response<motor::GetPropertiesResponse>, Status> {
        self.record("GetProperties", &req.get_ref().name, &req)
            .await;
        self.with_motor(&req.get_ref().name, |_| ())?;
        Ok(Response::new(motor::GetPropertiesResponse {
            position_reporting: true,
        }))
    }

    async fn stop(
        &self,
        req: Request<motor::StopRequest>,
    ) -> Result<Response<motor::StopResponse>, Status> {
        self.record("Stop", &req.get_ref().name, &req).await;
        self.with_motor(&req.get_ref().name, |m| m.power = 0.0)?;
        Ok(Response::new(motor::StopResponse {}))
    }

    async fn is_powered(
        &self,
        req: Request<motor::IsPoweredRequest>,
    ) -> Result<Response<motor::IsPoweredResponse>, Status> {
        self.record("IsPowered", &req.get_ref().name, &req).await;
        let power = self.with_motor(&req.get_ref().name, |m| m.power)?;
        Ok(Response::new(motor::IsPoweredResponse {
            is_on: power != 0.0,
            power_pct: power,
        }))
    }

    async fn is_moving(
        &self,
        req: Request<motor::IsMovingRequest>,
    ) -> Result<Response<motor::IsMovingResponse>, Status> {
        self.record("IsMoving", &req.get_ref().name, &req).await;
        let power = self.with_motor(&req.get_ref().name, |m| m.power)?;
        Ok(Response::new(motor::IsMovingResponse {
            is_moving: power != 0.0,
        }))
    }

    async fn do_command(
        &self,
        req: Request<common::DoCommandRequest>,
    ) -> Result<Response<common::DoCommandResponse>, Status> {
        self.record("DoCommand", &req.get_ref().name, &req).await;
        let r = req.into_inner();
        Self::has(&self.spec.motors, &r.name, "motor")?;
        Ok(Response::new(self.echo_command(&r.name, r.command)))
    }

    async fn get_geometries(
        &self,
        req: Request<common::GetGeometriesRequest>,
    ) -> Result<Response<common::GetGeometriesResponse>, Status> {
        Self::has(&self.spec.motors, &req.get_ref().name, "motor")?;
        Ok(Response::new(common::GetGeometriesResponse::default()))
    }
}

#[tonic::async_trait]
impl sensor::sensor_service_server::SensorService for Sim {
    async fn get_readings(
        &self,
        req: Request<common::GetReadingsRequest>,
    ) -> Result<Response<common::GetReadingsResponse>, Status> {
        self.record("GetReadings", &req.get_ref().name, &req).await;
        let name = req.into_inner().name;
        Self::has(&self.spec.sensors, &name, "sensor")?;
        let readings = HashMap::from([
            ("part".to_owned(), string_value(&self.spec.name)),
            ("name".to_owned(), string_value(&name)),
            ("value".to_owned(), number_value(42.0)),
        ]);
        Ok(Response::new(common::GetReadingsResponse { readings }))
    }

    async fn do_command(
        &self,
        req: Request<common::DoCommandRequest>,
    ) -> Result<Response<common::DoCommandResponse>, Status> {
        self.record("DoCommand", &req.get_ref().name, &req).await;
        let r = req.into_inner();
        Self::has(&self.spec.sensors, &r.name, "sensor")?;
        Ok(Response::new(self.echo_command(&r.name, r.command)))
    }
}

#[tonic::async_trait]
impl generic::generic_service_server::GenericService for Sim {
    async fn do_command(
        &self,
        req: Request<common::DoCommandRequest>,
    ) -> Result<Response<common::DoCommandResponse>, Status> {
        self.record("DoCommand", &req.get_ref().name, &req).await;
        let r = req.into_inner();
        Self::has(&self.spec.generics, &r.name, "generic component")?;
        if r.command
            .as_ref()
            .is_some_and(|c| c.fields.contains_key("fail"))
        {
            // Lets tests check that error details and custom trailers pass through.
            let mut status = Status::with_details(
                tonic::Code::Aborted,
                "asked to fail",
                bytes::Bytes::from_static(b"detail-bytes"),
            );
            status.metadata_mut().insert(
                "x-part-detail",
                tonic::metadata::MetadataValue::from_static("from-the-part"),
            );
            return Err(status);
        }
        let mut resp = Response::new(self.echo_command(&r.name, r.command));
        resp.metadata_mut().insert(
            "x-part-header",
            tonic::metadata::MetadataValue::from_static("hello"),
        );
        Ok(resp)
    }
}

#[tonic::async_trait]
impl echo::test_echo_service_server::TestEchoService for Sim {
    async fn echo(
        &self,
        req: Request<echo::EchoRequest>,
    ) -> Result<Response<echo::EchoResponse>, Status> {
        self.record("Echo", &req.get_ref().name, &req).await;
        let r = req.into_inner();
        Self::has(&self.spec.echoes, &r.name, "echo")?;
        Ok(Response::new(echo::EchoResponse { message: r.message }))
    }

    async fn echo_multiple(
        &self,
        req: Request<echo::EchoMultipleRequest>,
    ) -> Result<Response<BoxStream<echo::EchoMultipleResponse>>, Status> {
        self.record("EchoMultiple", &req.get_ref().name, &req).await;
        let r = req.into_inner();
        Self::has(&self.spec.echoes, &r.name, "echo")?;
        let chars: Vec<_> = r
            .message
            .chars()
            .map(|c| {
                Ok(echo::EchoMultipleResponse {
                    message: c.to_string(),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(futures_util::stream::iter(chars))))
    }

    async fn echo_bi_di(
        &self,
        req: Request<Streaming<echo::EchoBiDiRequest>>,
    ) -> Result<Response<BoxStream<echo::EchoBiDiResponse>>, Status> {
        let log = self.log.clone();
        let out = req.into_inner().map(move |msg| {
            let msg = msg?;
            log.record_call("EchoBiDi", msg.name.clone());
            Ok(echo::EchoBiDiResponse {
                message: msg.message,
            })
        });
        Ok(Response::new(Box::pin(out)))
    }

    async fn stop(
        &self,
        req: Request<echo::StopRequest>,
    ) -> Result<Response<echo::StopResponse>, Status> {
        self.record("Stop", &req.get_ref().name, &req).await;
        Ok(Response::new(echo::StopResponse {}))
    }
}

#[tonic::async_trait]
impl counter::counter_service_server::CounterService for Sim {
    async fn add(
        &self,
        req: Request<Streaming<counter::AddRequest>>,
    ) -> Result<Response<counter::AddResponse>, Status> {
        let mut stream = req.into_inner();
        let (mut name, mut total, mut count) = (String::new(), 0, 0);
        while let Some(msg) = stream.next().await {
            let msg = msg?;
            self.log.record_call("Add", msg.name.clone());
            Self::has(&self.spec.counters, &msg.name, "counter")?;
            name = msg.name;
            total += msg.value;
            count += 1;
        }
        if let Ok(mut totals) = self.log.counters.lock() {
            *totals.entry(name.clone()).or_default() += total;
        }
        Ok(Response::new(counter::AddResponse { name, total, count }))
    }

    async fn watch(
        &self,
        req: Request<counter::WatchRequest>,
    ) -> Result<Response<BoxStream<counter::WatchResponse>>, Status> {
        self.record("Watch", &req.get_ref().name, &req).await;
        let r = req.into_inner();
        Self::has(&self.spec.counters, &r.name, "counter")?;
        let name = r.name;
        let items = (0..r.count.max(0)).map(move |seq| {
            Ok(counter::WatchResponse {
                name: name.clone(),
                seq,
            })
        });
        Ok(Response::new(Box::pin(futures_util::stream::iter(items))))
    }

    async fn chat(
        &self,
        req: Request<Streaming<counter::ChatRequest>>,
    ) -> Result<Response<BoxStream<counter::ChatResponse>>, Status> {
        let log = self.log.clone();
        let out = req.into_inner().map(move |msg| {
            let msg = msg?;
            log.record_call("Chat", msg.name.clone());
            Ok(counter::ChatResponse {
                name: msg.name,
                text: msg.text,
            })
        });
        Ok(Response::new(Box::pin(out)))
    }

    async fn get(
        &self,
        req: Request<counter::GetRequest>,
    ) -> Result<Response<counter::GetResponse>, Status> {
        self.record("Get", &req.get_ref().name, &req).await;
        let name = req.into_inner().name;
        Self::has(&self.spec.counters, &name, "counter")?;
        let total = self
            .log
            .counters
            .lock()
            .ok()
            .and_then(|t| t.get(&name).copied())
            .unwrap_or(0);
        Ok(Response::new(counter::GetResponse { name, total }))
    }
}

// === reflection ===

/// Every file we compiled, for parts with the custom counter API.
static WITH_CUSTOM_API: LazyLock<DescriptorIndex> = LazyLock::new(|| {
    DescriptorIndex::new(proto::FILE_DESCRIPTOR_SET, |_| true).unwrap_or_default()
});
/// The same without the `acme.*` files: a part that does not run the module does not know them.
static WITHOUT_CUSTOM_API: LazyLock<DescriptorIndex> = LazyLock::new(|| {
    DescriptorIndex::new(proto::FILE_DESCRIPTOR_SET, |f| {
        !f.package().starts_with("acme.")
    })
    .unwrap_or_default()
});

impl Sim {
    /// The services this part serves, as reflection lists them.
    fn reflection_services(&self) -> Vec<String> {
        let mut names = vec![
            <robot::robot_service_server::RobotServiceServer<Sim> as NamedService>::NAME,
            <motor::motor_service_server::MotorServiceServer<Sim> as NamedService>::NAME,
            <sensor::sensor_service_server::SensorServiceServer<Sim> as NamedService>::NAME,
            <generic::generic_service_server::GenericServiceServer<Sim> as NamedService>::NAME,
            <echo::test_echo_service_server::TestEchoServiceServer<Sim> as NamedService>::NAME,
        ];
        if !self.spec.counters.is_empty() {
            names.push(
                <counter::counter_service_server::CounterServiceServer<Sim> as NamedService>::NAME,
            );
        }
        names.extend(reflection::SERVICE_NAMES);
        names.sort_unstable();
        names.into_iter().map(str::to_owned).collect()
    }

    /// Answers one reflection request, logged as (kind, argument), after the part's delay.
    async fn reflect(
        self,
        req: reflection_v1::ServerReflectionRequest,
    ) -> reflection_v1::ServerReflectionResponse {
        use reflection_v1::server_reflection_request::MessageRequest;
        let (kind, arg) = match &req.message_request {
            Some(MessageRequest::ListServices(_)) => ("ListServices", String::new()),
            Some(MessageRequest::FileByFilename(f)) => ("FileByFilename", f.clone()),
            Some(MessageRequest::FileContainingSymbol(s)) => ("FileContainingSymbol", s.clone()),
            Some(MessageRequest::FileContainingExtension(e)) => (
                "FileContainingExtension",
                format!("{}:{}", e.containing_type, e.extension_number),
            ),
            Some(MessageRequest::AllExtensionNumbersOfType(t)) => {
                ("AllExtensionNumbersOfType", t.clone())
            }
            None => ("ServerReflectionInfo", String::new()),
        };
        self.log.record_call(kind.to_owned(), arg);
        if let Some(delay) = self.spec.delay {
            tokio::time::sleep(delay).await;
        }
        let index: &DescriptorIndex = if self.spec.counters.is_empty() {
            &WITHOUT_CUSTOM_API
        } else {
            &WITH_CUSTOM_API
        };
        index.answer(&req, &self.reflection_services())
    }
}

#[tonic::async_trait]
impl reflection_v1::server_reflection_server::ServerReflection for Sim {
    async fn server_reflection_info(
        &self,
        req: Request<Streaming<reflection_v1::ServerReflectionRequest>>,
    ) -> Result<Response<BoxStream<reflection_v1::ServerReflectionResponse>>, Status> {
        let sim = self.clone();
        let out = req.into_inner().then(move |msg| {
            let sim = sim.clone();
            async move { Ok(sim.reflect(msg?).await) }
        });
        Ok(Response::new(Box::pin(out)))
    }
}

#[tonic::async_trait]
impl reflection_v1alpha::server_reflection_server::ServerReflection for Sim {
    async fn server_reflection_info(
        &self,
        req: Request<Streaming<reflection_v1alpha::ServerReflectionRequest>>,
    ) -> Result<Response<BoxStream<reflection_v1alpha::ServerReflectionResponse>>, Status> {
        let sim = self.clone();
        let out = req.into_inner().then(move |msg| {
            let sim = sim.clone();
            async move {
                let answer = sim.reflect(reflection::convert(&msg?)?).await;
                reflection::convert(&answer)
            }
        });
        Ok(Response::new(Box::pin(out)))
    }
}

// === the demo fleet ===

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// The demo fleet of docs/contracts.md: (part name, prefix, spec).
pub fn demo_fleet() -> Vec<(Option<&'static str>, PartSpec)> {
    vec![
        (
            None,
            PartSpec {
                name: "main".into(),
                motors: names(&["motor1", "wheel"]),
                sensors: names(&["temp"]),
                generics: names(&["gen1"]),
                echoes: names(&["echo1"]),
                ..Default::default()
            },
        ),
        (
            None,
            PartSpec {
                name: "sub1".into(),
                motors: names(&["motor1", "lift"]),
                sensors: names(&["imu"]),
                generics: names(&["gen1"]),
                echoes: names(&["echo1"]),
                counters: names(&["c1"]),
                ..Default::default()
            },
        ),
        (
            None,
            PartSpec {
                name: "sub2".into(),
                motors: names(&["lift"]),
                sensors: names(&["imu"]),
                ..Default::default()
            },
        ),
        (
            Some("cell-"),
            PartSpec {
                name: "cell".into(),
                motors: names(&["m1"]),
                sensors: names(&["temp"]),
                ..Default::default()
            },
        ),
    ]
}

/// Starts the demo fleet on ephemeral loopback ports: each part with its prefix (`main` is the
/// main part). The gateway's side (a config for these parts) is `partgate::config::Config::local_fleet`.
pub async fn start_demo() -> std::io::Result<Vec<(Option<&'static str>, SimPart)>> {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut parts = Vec::new();
    for (prefix, spec) in demo_fleet() {
        parts.push((prefix, SimPart::start(spec, loopback).await?));
    }
    Ok(parts)
}

/// The HTTP server a simulated part serves with (HTTP/1.1 and HTTP/2, viam-server's window
/// sizes and limits).
fn http_builder() -> hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor> {
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(4096)
        .initial_stream_window_size(2 * 1024 * 1024)
        .initial_connection_window_size(8 * 1024 * 1024)
        .max_frame_size(64 * 1024)
        .max_send_buf_size(1024 * 1024)
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(10));
    builder
}
