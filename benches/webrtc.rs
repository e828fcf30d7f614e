//! WebRTC ingress benchmark: the same calls over WebRTC and over direct gRPC (h2c) to the same
//! gateway, interleaved in one run, with the WebRTC/direct ratio; then fresh dials, signaling
//! start to first call answered, at the median and p99 (see `bench/README.md`).
//!
//! One process, three tokio runtimes with named threads, all traffic on 127.0.0.1:
//!
//! ```text
//! pg-client (load generator: tonic h2c channel | WebRTC caller Endpoint + WebRtcClient)
//!   └──► pg-gateway (Gateway::start: h2c listener + signaling + str0m endpoint) ──► pg-part (SimPart)
//! ```
//!
//! CPU per role is read from `/proc/self/task/*/{comm,stat}` before and after each window.
//!
//! Environment: `PARTGATE_BENCH_SECS` (seconds per case and side, default 3),
//! `PARTGATE_BENCH_ROUNDS` (default 2; direct and WebRTC alternate within each round),
//! `PARTGATE_BENCH_DIALS` (default 100), `PARTGATE_BENCH_QUICK=1` or `--quick` (0.3 s windows,
//! 10 dials). Exits 1 only on failures (a failed call, a dial that never connects), never on
//! timing.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use partgate::Gateway;
use partgate::config::{Config, GatewaySettings, NetworkConfig, RemoteConfig};
use partgate::ingress::webrtc::client::{ClientOptions, WebRtcClient};
use partgate::ingress::webrtc::signaling::{decode_sdp, encode_sdp};
use partgate::ingress::webrtc::transport::{Endpoint, TransportConfig};
use partgate::proto::acme::component::counter::v1 as counter;
use partgate::proto::rpc::webrtc::v1 as pb;
use partgate::proto::viam::component::motor::v1 as motor;
use partgate::proto::viam::component::testecho::v1 as echo;
use partgate::upstream::pool::PartState;
use sim::{PartSpec, SimPart};
use tokio_stream::StreamExt;
use tower::ServiceExt;
use tower::util::BoxCloneService;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, BoxError>;
type Body = tonic::body::Body;
/// Either transport, as one service type for tonic's generated clients.
type Svc = BoxCloneService<http::Request<Body>, http::Response<Body>, std::io::Error>;

const PART: &str = "bench";
const ECHO_BYTES: usize = 1 << 20;
const WATCH_COUNT: i32 = 100;
const CALL_TIMEOUT: Duration = Duration::from_secs(20);
const DIAL_TIMEOUT: Duration = Duration::from_secs(20);
/// Bounds so no loop runs away whatever the clock does.
const MAX_SAMPLES_PER_TASK: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Case {
    Unary1,
    Unary16,
    Watch,
    Echo1M,
}

impl Case {
    const ALL: [Case; 4] = [Case::Unary1, Case::Unary16, Case::Watch, Case::Echo1M];

    fn label(self) -> &'static str {
        match self {
            Case::Unary1 => "unary c=1",
            Case::Unary16 => "unary c=16",
            Case::Watch => "server-stream x100 c=1",
            Case::Echo1M => "1 MiB echo c=1",
        }
    }

    fn concurrency(self) -> usize {
        if self == Case::Unary16 { 16 } else { 1 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Side {
    Direct,
    WebRtc,
}

struct Options {
    quick: bool,
    secs: f64,
    rounds: usize,
    dials: usize,
}

fn options() -> Options {
    let quick = std::env::args().any(|a| a == "--quick")
        || std::env::var("PARTGATE_BENCH_QUICK").is_ok_and(|v| v == "1");
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<f64>().ok());
    Options {
        quick,
        secs: env("PARTGATE_BENCH_SECS").unwrap_or(if quick { 0.3 } else { 3.0 }),
        rounds: env("PARTGATE_BENCH_ROUNDS").map_or(if quick { 1 } else { 2 }, |v| v as usize),
        dials: env("PARTGATE_BENCH_DIALS").map_or(if quick { 10 } else { 100 }, |v| v as usize),
    }
}

// ================================================================================================
// CPU per role (thread-name prefix)
// ================================================================================================

/// CPU seconds used so far by this process's threads, by role (`pg-gateway`, `pg-part`, ...).
fn cpu_by_role() -> HashMap<String, f64> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in dir.flatten() {
        let path = task.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(path.join("stat")).unwrap_or_default();
        // Fields after the parenthesised comm: state is field 3; utime, stime are 14 and 15.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        let secs = (ticks(11) + ticks(12)) / 100.0;
        let role = comm.trim().to_owned();
        let role = ["pg-gateway", "pg-part", "pg-client"]
            .into_iter()
            .find(|r| role.starts_with(r))
            .unwrap_or("other");
        *out.entry(role.to_owned()).or_default() += secs;
    }
    out
}

fn cpu_delta(before: &HashMap<String, f64>, role: &str) -> f64 {
    let after = cpu_by_role();
    after.get(role).copied().unwrap_or(0.0) - before.get(role).copied().unwrap_or(0.0)
}

// ================================================================================================
// Setup
// ================================================================================================

fn runtime(name: &'static str, workers: usize) -> Res<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name(name)
        .enable_all()
        .build()?)
}

async fn start_part() -> Res<SimPart> {
    let spec = PartSpec {
        name: PART.into(),
        motors: vec!["motor1".into()],
        echoes: vec!["echo1".into()],
        counters: vec!["c1".into()],
        ..Default::default()
    };
    Ok(SimPart::start(spec, ([127, 0, 0, 1], 0).into()).await?)
}

async fn start_gateway(part: std::net::SocketAddr) -> Res<Gateway> {
    let config = Config {
        network: NetworkConfig {
            bind_address: "127.0.0.1:0".into(),
            ..NetworkConfig::default()
        },
        remotes: vec![RemoteConfig {
            name: PART.into(),
            address: part.to_string(),
            insecure: true,
            prefix: None,
            auth: None,
            secret: None,
            connection_check_interval: Some("2s".into()),
            reconnect_interval: Some("250ms".into()),
            ca_file: None,
        }],
        gateway: GatewaySettings {
            main_part: Some(PART.into()),
            ..GatewaySettings::default()
        },
        ..Config::default()
    };
    let gateway = Gateway::start(config.validate()?).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gateway
        .pool()
        .parts()
        .iter()
        .all(|p| p.state() == PartState::Connected && p.reported().is_some())
    {
        if Instant::now() > deadline {
            return Err("the part never connected".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(gateway)
}

async fn caller() -> Res<Endpoint> {
    Ok(Endpoint::bind(TransportConfig {
        bind_ip: [127, 0, 0, 1].into(),
        port_range: None,
        public_ips: Vec::new(),
        connect_timeout: DIAL_TIMEOUT,
        max_peers: 4,
    })
    .await?)
}

// ================================================================================================
// Dial with timings
// ================================================================================================

#[derive(Debug, Clone, Copy, Default)]
struct DialTimes {
    /// OptionalWebRTCConfig + Call until the answer (init) arrived.
    signaling: Duration,
    /// Answer applied until the data channel opened (ICE, DTLS, SCTP, DCEP).
    open: Duration,
    /// The first unary call on the new channel.
    first_call: Duration,
    total: Duration,
}

/// The SDK caller flow (`webrtc::client::dial`), with a clock on each stage, then a first call.
async fn timed_dial(endpoint: &Endpoint, gateway: &str) -> Res<(WebRtcClient, DialTimes)> {
    let host = gateway.to_owned();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{gateway}"))?
        .connect()
        .await?;
    let start = Instant::now();
    let mut signaling = pb::signaling_service_client::SignalingServiceClient::with_interceptor(
        channel,
        move |mut req: tonic::Request<()>| {
            if let Ok(v) = host.parse() {
                req.metadata_mut().insert("rpc-host", v);
            }
            Ok(req)
        },
    );
    signaling
        .optional_web_rtc_config(pb::OptionalWebRtcConfigRequest {})
        .await?;
    let offering = endpoint.offer()?;
    let peer = offering.peer.clone();
    let mut answers = signaling
        .call(pb::CallRequest {
            sdp: encode_sdp("offer", &offering.offer_sdp),
            disable_trickle: false,
        })
        .await?
        .into_inner();
    let first = answers.message().await?.ok_or("Call ended before init")?;
    let Some(pb::call_response::Stage::Init(init)) = first.stage else {
        return Err("first Call response is not init".into());
    };
    let answered = Instant::now();
    let opening = offering.answered(&decode_sdp(&init.sdp, "answer")?)?;
    signaling
        .call_update(pb::CallUpdateRequest {
            uuid: first.uuid.clone(),
            update: Some(pb::call_update_request::Update::Done(true)),
        })
        .await?;
    let exchange = async {
        while let Some(resp) = answers.message().await? {
            if let Some(pb::call_response::Stage::Update(u)) = resp.stage
                && let Some(c) = u.candidate
            {
                peer.add_remote_candidate(&c.candidate)?;
            }
        }
        Ok::<(), BoxError>(())
    };
    let open = async {
        let io = opening.wait().await;
        (io, Instant::now())
    };
    let (exchanged, (io, opened)) =
        tokio::time::timeout(DIAL_TIMEOUT, async { tokio::join!(exchange, open) })
            .await
            .map_err(|_| "the data channel never opened")?;
    exchanged?;
    let client = WebRtcClient::new(io?, ClientOptions::default());
    let before_call = Instant::now();
    tokio::time::timeout(
        CALL_TIMEOUT,
        motor::motor_service_client::MotorServiceClient::new(client.clone())
            .set_power(set_power(0.1)),
    )
    .await
    .map_err(|_| "first call timed out")??;
    let done = Instant::now();
    Ok((
        client,
        DialTimes {
            signaling: answered - start,
            open: opened - answered,
            first_call: done - before_call,
            total: done - start,
        },
    ))
}

// ================================================================================================
// Load
// ================================================================================================

fn set_power(p: f64) -> motor::SetPowerRequest {
    motor::SetPowerRequest {
        name: "motor1".into(),
        power_pct: p,
        extra: None,
    }
}

async fn one_call(svc: Svc, case: Case, payload: Arc<String>) -> Res<()> {
    match case {
        Case::Unary1 | Case::Unary16 => {
            motor::motor_service_client::MotorServiceClient::new(svc)
                .set_power(set_power(0.5))
                .await?;
        }
        Case::Watch => {
            let mut s = counter::counter_service_client::CounterServiceClient::new(svc)
                .watch(counter::WatchRequest {
                    name: "c1".into(),
                    count: WATCH_COUNT,
                })
                .await?
                .into_inner();
            let mut n = 0;
            while let Some(m) = s.next().await {
                m?;
                n += 1;
            }
            if n != WATCH_COUNT {
                return Err(format!("{n} of {WATCH_COUNT} stream messages").into());
            }
        }
        Case::Echo1M => {
            let r = echo::test_echo_service_client::TestEchoServiceClient::new(svc)
                .max_decoding_message_size(4 << 20)
                .echo(echo::EchoRequest {
                    name: "echo1".into(),
                    message: payload.as_str().to_owned(),
                })
                .await?
                .into_inner();
            if r.message.len() != payload.len() {
                return Err(BoxError::from(String::from("echo came back short")));
            }
        }
    }
    Ok(())
}

struct Window {
    calls: u64,
    errors: u64,
    first_error: Option<String>,
    latencies_us: Vec<u64>,
    secs: f64,
    gateway_cpu: f64,
    client_cpu: f64,
}

async fn run_window(svc: &Svc, case: Case, secs: f64, payload: Arc<String>) -> Window {
    let errors = Arc::new(AtomicU64::new(0));
    let cpu0 = cpu_by_role();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let tasks: Vec<_> = (0..case.concurrency())
        .map(|_| {
            let svc = svc.clone();
            let errors = errors.clone();
            let payload = payload.clone();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut first_error = None;
                while Instant::now() < deadline && lat.len() < MAX_SAMPLES_PER_TASK {
                    let t = Instant::now();
                    match tokio::time::timeout(
                        CALL_TIMEOUT,
                        one_call(svc.clone(), case, payload.clone()),
                    )
                    .await
                    {
                        Ok(Ok(())) => lat.push(t.elapsed().as_micros() as u64),
                        Ok(Err(e)) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            first_error.get_or_insert(e.to_string());
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            first_error.get_or_insert("call timed out".into());
                            break;
                        }
                    }
                    if errors.load(Ordering::Relaxed) > 20 {
                        break;
                    }
                }
                (lat, first_error)
            })
        })
        .collect();
    let mut latencies_us = Vec::new();
    let mut first_error = None;
    for t in tasks {
        match t.await {
            Ok((lat, e)) => {
                latencies_us.extend(lat);
                if first_error.is_none() {
                    first_error = e;
                }
            }
            Err(e) => {
                errors.fetch_add(1, Ordering::Relaxed);
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    Window {
        calls: latencies_us.len() as u64,
        errors: errors.load(Ordering::Relaxed),
        first_error,
        latencies_us,
        secs,
        gateway_cpu: cpu_delta(&cpu0, "pg-gateway"),
        client_cpu: cpu_delta(&cpu0, "pg-client"),
    }
}

#[derive(Default)]
struct Totals {
    calls: u64,
    errors: u64,
    secs: f64,
    lat: Vec<u64>,
    gateway_cpu: f64,
    client_cpu: f64,
}

impl Totals {
    fn add(&mut self, w: Window) {
        self.calls += w.calls;
        self.errors += w.errors;
        self.secs += w.secs;
        self.lat.extend(w.latencies_us);
        self.gateway_cpu += w.gateway_cpu;
        self.client_cpu += w.client_cpu;
    }
    fn rate(&self) -> f64 {
        self.calls as f64 / self.secs.max(1e-9)
    }
    /// Gateway CPU microseconds per call.
    fn gw_us_per_call(&self) -> f64 {
        self.gateway_cpu * 1e6 / (self.calls.max(1) as f64)
    }
}

fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64
}

fn ms(us: f64) -> String {
    if us.is_nan() {
        "-".into()
    } else {
        format!("{:.2}", us / 1000.0)
    }
}

// ================================================================================================
// Main
// ================================================================================================

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("webrtc bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Res<bool> {
    let opts = options();
    let part_rt = runtime("pg-part", 1)?;
    let gw_rt = runtime("pg-gateway", 2)?;
    let client_rt = runtime("pg-client", 2)?;
    let part = part_rt.block_on(start_part())?;
    let gateway = gw_rt.block_on(start_gateway(part.addr()))?;
    let addr = gateway.local_addr().to_string();
    let mut ok = true;

    let (direct, webrtc, _caller) = client_rt.block_on(async {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        let direct: Svc = BoxCloneService::new(ch.map_err(std::io::Error::other));
        let endpoint = caller().await?;
        let (client, _) = timed_dial(&endpoint, &addr).await?;
        let webrtc: Svc = BoxCloneService::new(
            client.map_err(|e: std::convert::Infallible| -> std::io::Error { match e {} }),
        );
        Ok::<_, BoxError>((direct, webrtc, endpoint))
    })?;

    let payload = Arc::new("x".repeat(ECHO_BYTES));
    let mut rows = Vec::new();
    // PARTGATE_BENCH_CASES=echo,stream: only the cases whose label contains one of the words.
    let filter = std::env::var("PARTGATE_BENCH_CASES").unwrap_or_default();
    let wanted = |case: &Case| {
        filter.is_empty()
            || filter
                .split(',')
                .any(|w| !w.is_empty() && case.label().contains(w.trim()))
    };
    for case in Case::ALL.into_iter().filter(wanted) {
        let mut totals = [Totals::default(), Totals::default()];
        for round in 0..opts.rounds {
            // Warm both paths, then alternate which side goes first.
            let order = if round % 2 == 0 {
                [Side::Direct, Side::WebRtc]
            } else {
                [Side::WebRtc, Side::Direct]
            };
            for side in order {
                let svc = if side == Side::Direct {
                    &direct
                } else {
                    &webrtc
                };
                let w = client_rt.block_on(async {
                    let _ = run_window(svc, case, opts.secs.min(0.3) / 3.0, payload.clone()).await;
                    run_window(svc, case, opts.secs, payload.clone()).await
                });
                if let Some(e) = &w.first_error {
                    eprintln!("{} {side:?}: {} errors, first: {e}", case.label(), w.errors);
                }
                totals[side as usize].add(w);
            }
        }
        for t in &mut totals {
            t.lat.sort_unstable();
            if t.errors > 0 || t.calls == 0 {
                ok = false;
            }
        }
        rows.push((case, totals));
    }

    // Fresh dials, each from its own caller endpoint.
    let mut dials = Vec::new();
    let mut dial_failures = 0;
    client_rt.block_on(async {
        for _ in 0..opts.dials {
            let endpoint = match caller().await {
                Ok(e) => e,
                Err(e) => {
                    eprintln!("caller endpoint: {e}");
                    dial_failures += 1;
                    continue;
                }
            };
            match timed_dial(&endpoint, &addr).await {
                Ok((_client, t)) => dials.push(t),
                Err(e) => {
                    eprintln!("dial failed: {e}");
                    dial_failures += 1;
                }
            }
            endpoint.close();
        }
    });
    if dial_failures > 0 || dials.is_empty() {
        ok = false;
    }

    // === report ===
    let mut out = String::new();
    out.push_str(&format!(
        "WebRTC vs direct gRPC through one gateway ({} s x {} round(s) per side; release={}; quick={})\n\n",
        opts.secs,
        opts.rounds,
        !cfg!(debug_assertions),
        opts.quick
    ));
    out.push_str("| case | path | calls/s | p50 ms | p99 ms | gw CPU µs/call | client CPU µs/call | errors | WebRTC/direct |\n");
    out.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for (case, totals) in &rows {
        let ratio = totals[1].rate() / totals[0].rate().max(1e-9);
        for (i, t) in totals.iter().enumerate() {
            out.push_str(&format!(
                "| {} | {} | {:.0} | {} | {} | {:.0} | {:.0} | {} | {} |\n",
                case.label(),
                if i == 0 { "direct h2c" } else { "WebRTC" },
                t.rate(),
                ms(percentile(&t.lat, 0.5)),
                ms(percentile(&t.lat, 0.99)),
                t.gw_us_per_call(),
                t.client_cpu * 1e6 / (t.calls.max(1) as f64),
                t.errors,
                if i == 1 {
                    format!("{ratio:.2}x")
                } else {
                    String::new()
                }
            ));
        }
    }
    let stage = |f: fn(&DialTimes) -> Duration| {
        let mut v: Vec<u64> = dials.iter().map(|d| f(d).as_micros() as u64).collect();
        v.sort_unstable();
        (percentile(&v, 0.5), percentile(&v, 0.99))
    };
    out.push_str(&format!(
        "\nFresh dials: {} connected, {} failed (each its own caller endpoint, one after another)\n\n",
        dials.len(),
        dial_failures
    ));
    out.push_str("| stage | median ms | p99 ms |\n|---|---:|---:|\n");
    for (name, f) in [
        (
            "signaling (OptionalWebRTCConfig + Call to answer)",
            (|d: &DialTimes| d.signaling) as fn(&DialTimes) -> Duration,
        ),
        ("ICE + DTLS + SCTP to data channel open", |d| d.open),
        ("first call", |d| d.first_call),
        ("total: signaling start to first call answered", |d| d.total),
    ] {
        let (p50, p99) = stage(f);
        out.push_str(&format!("| {name} | {} | {} |\n", ms(p50), ms(p99)));
    }
    println!("{out}");
    if !ok {
        eprintln!("webrtc bench: FAILED (errors above)");
    }
    drop((direct, webrtc));
    gw_rt.block_on(gateway.shutdown());
    drop(part);
    Ok(ok)
}
