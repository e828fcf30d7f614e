//! Shared helpers for integration tests: simulated parts and the gateway in-process on
//! `127.0.0.1:0`, and clients that talk real gRPC to them over loopback.
#![allow(
    dead_code,
    unused_imports,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::net::SocketAddr;
use std::time::Duration;

use partgate::Gateway;
use partgate::config::{Config, GatewaySettings, NetworkConfig, RemoteConfig};
use partgate::upstream::pool::PartState;
pub use sim::{PartSpec, SimPart};
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
pub type Killed = (PartSpec, SocketAddr, std::sync::Arc<sim::PartLog>);

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
        ca_file: None,
    }
}

/// Starts the demo fleet behind a gateway and waits until every part is connected.
pub async fn demo() -> Fleet {
    let parts = sim::start_demo().await.expect("demo parts start");
    let fleet = parts
        .iter()
        .map(|(prefix, part)| (part.name(), part.addr(), *prefix));
    let config = Config::local_fleet(LOOPBACK, "main", fleet);
    start(parts.into_iter().map(|(_, part)| part).collect(), config).await
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
            ..NetworkConfig::default()
        },
        remotes,
        gateway: GatewaySettings {
            main_part: main.map(Into::into),
            ..GatewaySettings::default()
        },
        ..Config::default()
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
                let Ok(outbound) = tokio::net::TcpStream::connect(target).await else {
                    continue;
                };
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

/// A throwaway CA and a server certificate for `localhost` and `127.0.0.1`, as PEM files.
pub struct TestPki {
    pub dir: std::path::PathBuf,
    pub ca_pem: String,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

pub fn pki(tag: &str) -> TestPki {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("partgate-pki-{}-{tag}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    TestPki {
        dir,
        ca_pem: ca.pem(),
        cert: cert_path,
        key: key_path,
    }
}

/// A TLS channel to `localhost:port` trusting `ca_pem`.
pub async fn tls_channel(port: u16, ca_pem: &str) -> Result<Channel, tonic::transport::Error> {
    use tonic::transport::{Certificate, ClientTlsConfig};
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    Endpoint::from_shared(format!("https://localhost:{port}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(pub Option<String>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        Ok(req)
    }
}

// === operations helpers (metrics, health, reload) ===

/// A plain HTTP/1.1 GET: status and body text.
pub async fn http_get(addr: SocketAddr, path: &str) -> (http::StatusCode, String) {
    let resp = http_get_accepting(addr, path, None).await;
    (
        resp.status,
        String::from_utf8_lossy(&resp.body).into_owned(),
    )
}

/// A plain HTTP/1.1 GET with an `Accept` header when `accept` is given: the whole response.
pub async fn http_get_accepting(addr: SocketAddr, path: &str, accept: Option<&str>) -> RawResponse {
    let mut req =
        http::Request::get(format!("http://{addr}{path}")).header("host", addr.to_string());
    if let Some(accept) = accept {
        req = req.header("accept", accept);
    }
    let req = req
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    raw_call(addr, false, req).await
}

/// One sample of the exposition: name, labels, value.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed OpenMetrics/Prometheus text exposition.
#[derive(Debug, Clone)]
pub struct Exposition {
    pub samples: Vec<Sample>,
    pub text: String,
}

impl Exposition {
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|line| parse_sample(line).unwrap_or_else(|| panic!("bad sample line: {line}")))
            .collect();
        Self {
            samples,
            text: text.to_owned(),
        }
    }

    /// The value of the one sample of `name` whose labels include all of `labels`.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<_> = self.matching(name, labels).collect();
        match matching.as_slice() {
            [] => None,
            [one] => Some(one.value),
            many => panic!(
                "{} samples of {name} match {labels:?}: {many:?}",
                many.len()
            ),
        }
    }

    /// The sum over every sample of `name` whose labels include all of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// Every value of `label` across the samples of `name`.
    pub fn label_values(&self, name: &str, label: &str) -> std::collections::BTreeSet<String> {
        self.matching(name, &[])
            .filter_map(|s| s.labels.get(label).cloned())
            .collect()
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (head, value) = match line.find('{') {
        Some(_) => {
            let close = line.rfind('}')?;
            (&line[..close + 1], line[close + 1..].trim())
        }
        None => line.split_once(' ')?,
    };
    let value = value.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    let (name, labels) = match head.split_once('{') {
        Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}')?)?),
        None => (head, Default::default()),
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

fn parse_labels(text: &str) -> Option<std::collections::BTreeMap<String, String>> {
    let mut out = std::collections::BTreeMap::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => value.push(chars.next()?.1),
                '"' => break i,
                c => value.push(c),
            }
        };
        out.insert(key.trim_start_matches(',').to_owned(), value);
        rest = after[end + 1..].trim_start_matches(',');
    }
    Some(out)
}

/// Scrapes `GET /metrics` from `addr`.
pub async fn scrape(addr: SocketAddr) -> Exposition {
    let (status, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, http::StatusCode::OK, "{body}");
    Exposition::parse(&body)
}

/// A port that was free a moment ago (for a child process's listeners).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts one simulated part on loopback.
pub async fn sim(spec: PartSpec) -> SimPart {
    SimPart::start(spec, LOOPBACK.parse().unwrap())
        .await
        .expect("part starts")
}

/// The fleet's config with different remotes, validated.
pub fn with_remotes(config: &Config, remotes: Vec<RemoteConfig>) -> partgate::config::Settings {
    let mut config = config.clone();
    config.remotes = remotes;
    config.validate().expect("valid config")
}

/// A child process (the `partgate` binary) whose stderr lines arrive on a channel, signalled by
/// its own pid (never by name) and killed when dropped.
pub struct Spawned {
    pub child: std::process::Child,
    pub lines: std::sync::mpsc::Receiver<String>,
}

impl Spawned {
    /// Spawns `cmd` with stderr read line by line on a thread, stdout discarded.
    pub fn spawn(cmd: &mut std::process::Command) -> Self {
        use std::io::{BufRead, BufReader};
        let mut child = cmd
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawns");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self { child, lines }
    }

    /// Sends signal `name` (`HUP`, `TERM`, ...) by this child's pid.
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the child to exit, failing the test after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "did not exit in {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
