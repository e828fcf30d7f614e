//! Shared helpers for integration tests: simulated parts and the gateway in-process on
//! `127.0.0.1:0`, and clients that talk real gRPC to them over loopback.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::Duration;

use partgate::Gateway;
use partgate::config::{Config, GatewaySettings, NetworkConfig, RemoteConfig};
pub use partgate::demo::{PartSpec, SimPart};
use partgate::pool::PartState;
use tonic::transport::{Channel, Endpoint};

pub use partgate::proto::acme::component::counter::v1 as counter;
pub use partgate::proto::viam::common::v1 as common;
pub use partgate::proto::viam::component::generic::v1 as generic;
pub use partgate::proto::viam::component::motor::v1 as motor;
pub use partgate::proto::viam::component::sensor::v1 as sensor;
pub use partgate::proto::viam::component::testecho::v1 as echo;
pub use partgate::proto::viam::robot::v1 as robot;

pub const LOOPBACK: &str = "127.0.0.1:0";

/// What `SimPart::kill` hands back for a restart.
pub type Killed = (
    PartSpec,
    SocketAddr,
    std::sync::Arc<partgate::demo::PartLog>,
);

/// A gateway with its parts.
pub struct Fleet {
    pub gateway: Gateway,
    pub parts: Vec<Option<SimPart>>,
    pub config: Config,
}

pub fn spec(name: &str, motors: &[&str]) -> PartSpec {
    PartSpec {
        name: name.into(),
        motors: motors.iter().map(|s| (*s).into()).collect(),
        ..Default::default()
    }
}

pub fn remote(name: &str, addr: SocketAddr, prefix: Option<&str>) -> RemoteConfig {
    RemoteConfig {
        name: name.into(),
        address: addr.to_string(),
        insecure: true,
        prefix: prefix.map(Into::into),
        auth: None,
        secret: None,
        connection_check_interval: Some("1s".into()),
        reconnect_interval: Some("100ms".into()),
    }
}

/// Starts the demo fleet behind a gateway and waits until every part is connected.
pub async fn demo() -> Fleet {
    let (parts, config) = partgate::demo::start_demo(LOOPBACK)
        .await
        .expect("demo parts start");
    start(parts, config).await
}

/// Starts parts from specs (name, prefix) with the first one as main part unless `main` is None.
pub async fn fleet(
    specs: Vec<(PartSpec, Option<&str>)>,
    main: Option<&str>,
    tweak: impl FnOnce(&mut Config),
) -> Fleet {
    let mut parts = Vec::new();
    let mut remotes = Vec::new();
    for (spec, prefix) in specs {
        let part = SimPart::start(spec.clone(), LOOPBACK.parse().unwrap())
            .await
            .expect("part starts");
        remotes.push(remote(&spec.name, part.addr(), prefix));
        parts.push(part);
    }
    let mut config = Config {
        network: NetworkConfig {
            bind_address: LOOPBACK.into(),
        },
        remotes,
        gateway: GatewaySettings {
            main_part: main.map(Into::into),
            ..GatewaySettings::default()
        },
        ignored: Default::default(),
    };
    tweak(&mut config);
    start(parts, config).await
}

pub async fn start(parts: Vec<SimPart>, config: Config) -> Fleet {
    let settings = config.validate().expect("valid config");
    let gateway = Gateway::start(settings).await.expect("gateway starts");
    let fleet = Fleet {
        gateway,
        parts: parts.into_iter().map(Some).collect(),
        config,
    };
    fleet.wait_connected().await;
    fleet
}

impl Fleet {
    pub fn addr(&self) -> SocketAddr {
        self.gateway.local_addr()
    }

    /// Waits until every part is connected and has reported its resources.
    pub async fn wait_connected(&self) {
        wait_for("all parts connected", Duration::from_secs(10), || {
            self.gateway
                .pool()
                .parts()
                .iter()
                .all(|p| p.state() == PartState::Connected && p.reported().is_some())
        })
        .await;
    }

    pub async fn channel(&self) -> Channel {
        channel(self.addr()).await
    }

    /// Index of a part in config order (the gateway's part index too).
    pub fn index(&self, name: &str) -> usize {
        self.config
            .remotes
            .iter()
            .position(|r| r.name == name)
            .expect("part exists")
    }

    /// A running part by name.
    pub fn part(&self, name: &str) -> &SimPart {
        self.parts[self.index(name)]
            .as_ref()
            .expect("part is running")
    }

    /// Kills a part and waits until the gateway has noticed.
    pub async fn kill(&mut self, name: &str) -> Killed {
        let i = self.index(name);
        let killed = self.parts[i].take().expect("part is running").kill().await;
        wait_for("part marked down", Duration::from_secs(5), || {
            self.gateway.pool().parts()[i].state() == PartState::Disconnected
        })
        .await;
        killed
    }

    /// Restarts a killed part on its old address.
    pub async fn restart(&mut self, name: &str, killed: Killed) {
        let i = self.index(name);
        self.parts[i] = Some(
            SimPart::restart(killed)
                .await
                .expect("restart on the same port"),
        );
    }
}

pub async fn channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connect to gateway")
}

pub async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn motor_client(ch: &Channel) -> motor::motor_service_client::MotorServiceClient<Channel> {
    motor::motor_service_client::MotorServiceClient::new(ch.clone())
}

pub fn robot_client(ch: &Channel) -> robot::robot_service_client::RobotServiceClient<Channel> {
    robot::robot_service_client::RobotServiceClient::new(ch.clone())
}

pub fn set_power(name: &str, power: f64) -> motor::SetPowerRequest {
    motor::SetPowerRequest {
        name: name.into(),
        power_pct: power,
        extra: None,
    }
}

pub fn do_command(name: &str) -> common::DoCommandRequest {
    common::DoCommandRequest {
        name: name.into(),
        command: Some(prost_types::Struct::default()),
    }
}

/// A string field of a DoCommand result.
pub fn field(resp: &common::DoCommandResponse, key: &str) -> String {
    match resp
        .result
        .as_ref()
        .and_then(|s| s.fields.get(key))
        .and_then(|v| v.kind.clone())
    {
        Some(prost_types::value::Kind::StringValue(s)) => s,
        other => panic!("field {key} is {other:?}"),
    }
}

pub async fn listed_names(ch: &Channel) -> Vec<String> {
    robot_client(ch)
        .resource_names(robot::ResourceNamesRequest {})
        .await
        .expect("ResourceNames")
        .into_inner()
        .resources
        .into_iter()
        .map(|r| r.name)
        .collect()
}

/// What a raw HTTP call returned.
#[derive(Debug)]
pub struct RawResponse {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: bytes::Bytes,
    pub trailers: Option<http::HeaderMap>,
}

impl RawResponse {
    /// `grpc-status` from the trailers, or from the headers of a trailers-only response.
    pub fn grpc_status(&self) -> Option<i32> {
        let from = |h: &http::HeaderMap| {
            h.get("grpc-status")
                .and_then(|v| v.to_str().ok()?.parse().ok())
        };
        self.trailers
            .as_ref()
            .and_then(from)
            .or_else(|| from(&self.headers))
    }
}

/// Frames a message the gRPC way.
pub fn grpc_frame(compressed: bool, msg: &[u8]) -> Vec<u8> {
    let mut out = vec![u8::from(compressed)];
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(msg);
    out
}

/// Sends one raw request (HTTP/2 prior knowledge, or HTTP/1.1) and reads the whole answer.
pub async fn raw_call(
    addr: SocketAddr,
    h2: bool,
    req: http::Request<http_body_util::Full<bytes::Bytes>>,
) -> RawResponse {
    use http_body_util::BodyExt;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let resp = if h2 {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .expect("h2 handshake");
        tokio::spawn(conn);
        send.send_request(req).await.expect("response")
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("h1 handshake");
        tokio::spawn(conn);
        send.send_request(req).await.expect("response")
    };
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.expect("body");
    let trailers = collected.trailers().cloned();
    RawResponse {
        status: parts.status,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    }
}

/// A raw gRPC request over HTTP/2.
pub fn grpc_request(
    addr: SocketAddr,
    path: &str,
    body: Vec<u8>,
) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap()
}

/// Encodes a prost message.
pub fn encode<M: prost::Message>(msg: &M) -> Vec<u8> {
    msg.encode_to_vec()
}

/// A TCP relay in front of a part that can freeze: sockets stay open but no byte moves, like a
/// part whose process hung or whose network silently drops packets.
pub struct Relay {
    pub addr: SocketAddr,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn start(target: SocketAddr) -> Self {
        use std::sync::atomic::AtomicBool;
        let listener = tokio::net::TcpListener::bind(LOOPBACK).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let frozen = std::sync::Arc::new(AtomicBool::new(false));
        let flag = frozen.clone();
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = tokio::net::TcpStream::connect(target).await else { continue };
                let (ri, wi) = inbound.into_split();
                let (ro, wo) = outbound.into_split();
                tokio::spawn(pump(ri, wo, flag.clone()));
                tokio::spawn(pump(ro, wi, flag.clone()));
            }
        });
        Self { addr, frozen, task }
    }

    pub fn freeze(&self, on: bool) {
        self.frozen.store(on, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        while frozen.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Bytes read just before a freeze are held back until it ends.
        while frozen.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
