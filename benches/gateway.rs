//! Gateway overhead benchmark: the same calls, in one run, sent directly to a part and through
//! the gateway, reported as ratios (see `bench/README.md`).
//!
//! Three processes on one machine, all traffic on 127.0.0.1:
//!
//! ```text
//! this bench (load generator, tonic clients)
//!   ├── direct ───────────────────────────────► backend part (this binary re-executed with
//!   └── via ──► gateway (`partgate run`) ──────►   PARTGATE_BENCH_ROLE=backend: a SimPart)
//! ```
//!
//! Gateway and backend are separate processes so their CPU time can be read from
//! `/proc/<pid>/stat` before and after each measured window.
//!
//! Environment: `PARTGATE_BENCH_SECS` (measured seconds per case and side, default 3),
//! `PARTGATE_BENCH_ROUNDS` (default 1; medians over rounds), `PARTGATE_BENCH_QUICK=1` or the
//! `--quick` argument (0.5 s per case; exits non-zero only on gross regressions or errors).
//! Experiments: `PARTGATE_BENCH_CASES`, `PARTGATE_BENCH_GATEWAY_WORKERS`,
//! `PARTGATE_BENCH_IDLE_SPIN` and `PARTGATE_BENCH_ANSWER_SPIN` (the gateway's `idle_spin` and
//! `answer_spin`),
//! `PARTGATE_BENCH_GATEWAY_BIN` (another gateway binary), and `PARTGATE_BENCH_CALLGRIND=N`
//! (instead of the timed run: gateway instructions per operation under callgrind, N operations
//! per case), or `PARTGATE_BENCH_SYSCALLS=N` (the gateway's system calls and context switches
//! per operation, `perf stat` tracepoints over N operations per case).

#[path = "common/load.rs"]
mod load;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use partgate::proto::viam::component::motor::v1 as motor;
use sim::{PartSpec, SimPart};
use tokio::time::Instant;
use tonic::transport::Channel;

use load::{
    CALL_TIMEOUT, ECHO_BYTES, TaskStats, WATCH_COUNT, Window, chat_task, connect, echo_task,
    join_tasks, percentile_us, spawn_tasks, status_text, unary_task, watch_task,
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, BoxError>;

/// Set in the re-executed bench binary that plays the part.
const ROLE_ENV: &str = "PARTGATE_BENCH_ROLE";
/// The backend part's name in the gateway config: clients say `bench:motor1` through the gateway.
const PART: &str = "bench";
const MOTOR: &str = "motor1";
const ECHO: &str = "echo1";
const COUNTER: &str = "c1";

/// Client connections per side (tasks are spread over them round-robin).
const CONNECTIONS: usize = 4;
/// How long after its window a side's tasks may take to finish before they are aborted.
const JOIN_GRACE: Duration = Duration::from_secs(CALL_TIMEOUT.as_secs() + 10);
/// Quick-mode failure threshold for unary c=64 (via / direct calls per second).
// Far below the measured ~0.45x so that only a real breakage (a lock, a copy per byte, a lost
// connection pool) trips it on a noisy, shared CI machine, never ordinary noise.
const QUICK_MIN_RATIO: f64 = 0.25;
/// Extra attempts at unary c=64 in quick mode before a low ratio fails the run.
const QUICK_RETRIES: usize = 2;

// ================================================================================================
// Options
// ================================================================================================

#[derive(Debug, Clone)]
struct Options {
    quick: bool,
    secs: f64,
    warmup: f64,
    rounds: usize,
    /// Cases to run (`PARTGATE_BENCH_CASES=c1,c64,echo,watch,chat`; default all).
    cases: Vec<Case>,
}

impl Options {
    fn from_env() -> Self {
        let quick = std::env::args().any(|a| a == "--quick")
            || std::env::var("PARTGATE_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let env_f64 = |key: &str| {
            std::env::var(key)
                .ok()
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|v| v.is_finite() && *v > 0.0)
        };
        let secs = if quick {
            0.5
        } else {
            env_f64("PARTGATE_BENCH_SECS").unwrap_or(3.0)
        };
        // Keep a single case bounded even if someone asks for hours.
        let secs = secs.clamp(0.1, 600.0);
        let rounds = if quick {
            1
        } else {
            std::env::var("PARTGATE_BENCH_ROUNDS")
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(1)
                .clamp(1, 25)
        };
        let warmup = if quick { 0.2 } else { 0.5 };
        let cases = match std::env::var("PARTGATE_BENCH_CASES") {
            Ok(list) if !quick && !list.trim().is_empty() => {
                let wanted: Vec<&str> = list.split(',').map(str::trim).collect();
                Case::ALL
                    .into_iter()
                    .filter(|c| wanted.contains(&c.key()))
                    .collect()
            }
            _ => Case::ALL.to_vec(),
        };
        Self {
            quick,
            secs,
            warmup,
            rounds,
            cases,
        }
    }

    /// Generous upper bound on the whole run; the watchdog kills everything past it.
    fn hard_limit(&self) -> Duration {
        // Warm-up, window, and the longest a side may take to wind down (see `measure`).
        let per_side = self.warmup + self.secs + JOIN_GRACE.as_secs_f64() + 1.0;
        let retries = if self.quick { QUICK_RETRIES } else { 0 };
        let sides = self.rounds * self.cases.len() * 2 + retries * 2;
        let planned = sides as f64 * per_side;
        Duration::from_secs_f64(planned + 120.0)
    }
}

// ================================================================================================
// Entry point
// ================================================================================================

fn main() -> ExitCode {
    if std::env::var(ROLE_ENV).as_deref() == Ok("backend") {
        return match backend() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench backend: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let opts = Options::from_env();
    let procs = Procs::default();
    start_watchdog(procs.clone(), opts.hard_limit());
    let outcome = match (callgrind_ops(), syscall_ops()) {
        (Some(ops), _) => instructions(&opts, &procs, ops, Counter::Callgrind),
        (None, Some(ops)) => instructions(&opts, &procs, ops, Counter::Syscalls),
        (None, None) => orchestrate(&opts, &procs),
    };
    procs.kill_all();
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::from(2)
        }
    }
}

// ================================================================================================
// The backend part (re-executed bench binary)
// ================================================================================================

/// Runs a simulated part until the parent closes our stdin (or dies).
fn backend() -> Res<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let spec = PartSpec {
            name: PART.into(),
            motors: vec![MOTOR.into()],
            echoes: vec![ECHO.into()],
            counters: vec![COUNTER.into()],
            ..Default::default()
        };
        let part = SimPart::start(spec, SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "backend listening on {}", part.addr())?;
            out.flush()?;
        }
        let (eof_tx, mut eof) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            let _ = eof_tx.send(());
        });
        // SimPart records every call in an unbounded Vec (for tests); empty it regularly so
        // memory stays flat and no reallocation of a huge Vec lands inside a measurement.
        let log = part.log().clone();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = &mut eof => break,
                _ = tick.tick() => {
                    if let Ok(mut calls) = log.calls.lock() {
                        calls.clear();
                    }
                }
            }
        }
        Ok::<(), BoxError>(())
    })
}

// ================================================================================================
// Child processes
// ================================================================================================

/// The processes this bench started; killed by PID at the end, on error, or by the watchdog.
#[derive(Clone, Default)]
struct Procs(Arc<Mutex<Vec<Child>>>);

impl Procs {
    fn add(&self, child: Child) -> u32 {
        let pid = child.id();
        if let Ok(mut list) = self.0.lock() {
            list.push(child);
        }
        pid
    }

    fn kill_all(&self) {
        if let Ok(mut list) = self.0.lock() {
            // Newest first: the gateway goes before the part it is connected to.
            for child in list.iter_mut().rev() {
                let _ = child.kill();
                let _ = child.wait();
            }
            list.clear();
        }
    }
}

fn start_watchdog(procs: Procs, limit: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("bench: still running after {limit:?}; killing children and giving up");
        procs.kill_all();
        std::process::exit(3);
    });
}

/// Spawns a thread that reads `reader` line by line, reports the first address after `marker`,
/// and keeps draining (optionally echoing lines to stderr with `echo_prefix`).
fn watch_lines(
    reader: impl std::io::Read + Send + 'static,
    marker: &'static str,
    echo_prefix: Option<&'static str>,
    echoed: Arc<AtomicU64>,
) -> std::sync::mpsc::Receiver<SocketAddr> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut found = false;
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if !found
                && let Some(addr) = line
                    .split_once(marker)
                    .and_then(|(_, rest)| rest.split_whitespace().next())
                    .and_then(|token| token.parse::<SocketAddr>().ok())
            {
                found = true;
                let _ = tx.send(addr);
                continue;
            }
            if let Some(prefix) = echo_prefix {
                echoed.fetch_add(1, Ordering::Relaxed);
                eprintln!("{prefix}{line}");
            }
        }
    });
    rx
}

fn spawn_backend(procs: &Procs) -> Res<(u32, SocketAddr)> {
    let mut child = Command::new(std::env::current_exe()?)
        .env(ROLE_ENV, "backend")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("backend has no stdout")?;
    let pid = procs.add(child);
    let addr = watch_lines(
        stdout,
        "backend listening on ",
        None,
        Arc::new(AtomicU64::new(0)),
    )
    .recv_timeout(Duration::from_secs(30))
    .map_err(|_| "backend part did not report its address within 30 s")?;
    Ok((pid, addr))
}

fn spawn_gateway(
    procs: &Procs,
    config: &PathBuf,
    log_lines: Arc<AtomicU64>,
    callgrind_out: Option<&PathBuf>,
) -> Res<(u32, SocketAddr)> {
    // Experiments: another build of the gateway (e.g. the previous commit's) against the same
    // load generator and part.
    let binary = std::env::var_os("PARTGATE_BENCH_GATEWAY_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_partgate")),
        PathBuf::from,
    );
    let mut command = match callgrind_out {
        None => Command::new(&binary),
        Some(out) => {
            let mut c = Command::new("valgrind");
            c.arg("--tool=callgrind")
                .arg(format!("--callgrind-out-file={}", out.display()))
                .arg(&binary);
            c
        }
    };
    let mut child = command
        .arg("run")
        .arg("--config")
        .arg(config)
        // warn everywhere; info only for the module that prints the one `listening on` line.
        .env("PARTGATE_LOG", "warn,partgate::gateway=info")
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().ok_or("gateway has no stderr")?;
    let pid = procs.add(child);
    let addr = watch_lines(stderr, "listening on ", Some("[gateway] "), log_lines)
        .recv_timeout(Duration::from_secs(30))
        .map_err(|_| "gateway did not log `listening on ADDR` within 30 s")?;
    Ok((pid, addr))
}

fn write_config(backend: SocketAddr) -> Res<PathBuf> {
    let path = std::env::temp_dir().join(format!("partgate-bench-{}.json", std::process::id()));
    let config = serde_json::json!({
        "network": { "bind_address": "127.0.0.1:0" },
        "remotes": [{
            "name": PART,
            "address": backend.to_string(),
            "insecure": true,
            "connection_check_interval": "10s",
        }],
        "gateway": gateway_settings(),
    });
    std::fs::write(&path, serde_json::to_vec_pretty(&config)?)?;
    Ok(path)
}

/// The `gateway` object of the bench's config. Experiments: `PARTGATE_BENCH_GATEWAY_WORKERS`
/// (`worker_threads`; default one per core), `PARTGATE_BENCH_ANSWER_SPIN` (`answer_spin`, a Go
/// duration; default off) and `PARTGATE_BENCH_IDLE_SPIN` (`idle_spin`; default off).
fn gateway_settings() -> serde_json::Value {
    let mut gateway = serde_json::json!({});
    if let Some(n) = std::env::var("PARTGATE_BENCH_GATEWAY_WORKERS")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
    {
        gateway["worker_threads"] = n.into();
    }
    if let Ok(spin) = std::env::var("PARTGATE_BENCH_ANSWER_SPIN") {
        gateway["answer_spin"] = spin.into();
    }
    if let Ok(spin) = std::env::var("PARTGATE_BENCH_IDLE_SPIN") {
        gateway["idle_spin"] = spin.into();
    }
    gateway
}

// ================================================================================================
// CPU accounting
// ================================================================================================

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// utime + stime of a process (all threads, live and exited), in seconds.
fn cpu_seconds(stat_path: &str, ticks: f64) -> Option<f64> {
    let text = std::fs::read_to_string(stat_path).ok()?;
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let after = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks)
}

#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    gateway: f64,
    backend: f64,
    loadgen: f64,
    /// Whole machine: busy (user, nice, system, irq, softirq) and stolen by the hypervisor.
    machine_busy: f64,
    machine_steal: f64,
}

impl Cpu {
    fn since(&self, before: &Cpu) -> Cpu {
        Cpu {
            gateway: self.gateway - before.gateway,
            backend: self.backend - before.backend,
            loadgen: self.loadgen - before.loadgen,
            machine_busy: self.machine_busy - before.machine_busy,
            machine_steal: self.machine_steal - before.machine_steal,
        }
    }

    /// CPU seconds used by processes other than the three of the benchmark.
    fn others(&self) -> f64 {
        // Tick-based accounting makes small negative residues; they mean "nothing else ran".
        (self.machine_busy - self.gateway - self.backend - self.loadgen).max(0.0)
    }
}

/// (busy, steal) seconds of the whole machine from the first line of /proc/stat.
fn machine_seconds(ticks: f64) -> Option<(f64, f64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?;
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0.0))
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let at = |i: usize| v.get(i).copied().unwrap_or(0.0);
    let busy = at(0) + at(1) + at(2) + at(5) + at(6);
    Some((busy / ticks, at(7) / ticks))
}

#[derive(Clone)]
struct CpuProbe {
    gateway: String,
    backend: String,
    ticks: f64,
}

impl CpuProbe {
    fn read(&self) -> Cpu {
        let machine = machine_seconds(self.ticks);
        Cpu {
            gateway: cpu_seconds(&self.gateway, self.ticks).unwrap_or(f64::NAN),
            backend: cpu_seconds(&self.backend, self.ticks).unwrap_or(f64::NAN),
            loadgen: cpu_seconds("/proc/self/stat", self.ticks).unwrap_or(f64::NAN),
            machine_busy: machine.map_or(f64::NAN, |m| m.0),
            machine_steal: machine.map_or(f64::NAN, |m| m.1),
        }
    }
}

// ================================================================================================
// Cases
// ================================================================================================

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    UnaryC1,
    UnaryC64,
    Echo1M,
    Watch,
    Chat,
}

impl Case {
    const ALL: [Case; 5] = [
        Case::UnaryC1,
        Case::UnaryC64,
        Case::Echo1M,
        Case::Watch,
        Case::Chat,
    ];

    fn label(self) -> &'static str {
        match self {
            Case::UnaryC1 => "unary small (Motor.IsPowered), c=1",
            Case::UnaryC64 => "unary small (Motor.IsPowered), c=64 / 4 conns",
            Case::Echo1M => "unary 1 MiB (TestEcho.Echo), c=4 / 4 conns",
            Case::Watch => "server stream (Counter.Watch x100), c=16 / 4 conns",
            Case::Chat => "bidi ping-pong (Counter.Chat), 64 streams / 4 conns",
        }
    }

    /// Name in `PARTGATE_BENCH_CASES`.
    fn key(self) -> &'static str {
        match self {
            Case::UnaryC1 => "c1",
            Case::UnaryC64 => "c64",
            Case::Echo1M => "echo",
            Case::Watch => "watch",
            Case::Chat => "chat",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Case::UnaryC1 => "unary c=1",
            Case::UnaryC64 => "unary c=64",
            Case::Echo1M => "echo 1 MiB c=4",
            Case::Watch => "watch c=16",
            Case::Chat => "chat 64",
        }
    }

    /// Unit of the rate: calls or messages per second.
    fn unit(self) -> &'static str {
        match self {
            Case::UnaryC1 | Case::UnaryC64 | Case::Echo1M => "calls/s",
            Case::Watch | Case::Chat => "msgs/s",
        }
    }

    fn tasks(self) -> usize {
        match self {
            Case::UnaryC1 => 1,
            Case::UnaryC64 | Case::Chat => 64,
            Case::Echo1M => 4,
            Case::Watch => 16,
        }
    }
}

/// One side of the comparison: where the clients connect and how they name resources.
struct Side {
    via: bool,
    channels: Vec<Channel>,
    prefix: &'static str,
}

impl Side {
    fn name(&self, resource: &str) -> String {
        format!("{}{resource}", self.prefix)
    }

    fn label(&self) -> &'static str {
        if self.via { "via gateway" } else { "direct" }
    }
}

async fn side(addr: SocketAddr, via: bool) -> Res<Side> {
    let mut channels = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        channels.push(connect(addr).await?);
    }
    Ok(Side {
        via,
        channels,
        prefix: if via { "bench:" } else { "" },
    })
}

/// Result of one case on one side in one round.
#[derive(Debug, Clone)]
struct Sample {
    rate: f64,
    ops: u64,
    errors: u64,
    first_error: Option<String>,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    cpu: Cpu,
    /// Length of the measured window.
    seconds: f64,
}

impl Sample {
    fn failed(why: &str) -> Self {
        Self {
            rate: f64::NAN,
            ops: 0,
            errors: 1,
            first_error: Some(why.to_owned()),
            p50_us: f64::NAN,
            p99_us: f64::NAN,
            p999_us: f64::NAN,
            cpu: Cpu::default(),
            seconds: f64::NAN,
        }
    }

    /// Keeps the errors of another attempt at the same measurement.
    fn absorb_errors(&mut self, other: &Sample) {
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
    }

    /// CPU microseconds per operation.
    fn per_op(&self, seconds: f64) -> f64 {
        if self.ops == 0 {
            f64::NAN
        } else {
            seconds * 1e6 / self.ops as f64
        }
    }
}

async fn measure(
    case: Case,
    side: &Side,
    opts: &Options,
    probe: &CpuProbe,
    payload: &Arc<String>,
) -> Sample {
    let now = Instant::now();
    let start = now + Duration::from_secs_f64(opts.warmup);
    let w = Window::new(start, start + Duration::from_secs_f64(opts.secs));
    let ch = |i: usize| side.channels[i % side.channels.len()].clone();
    let handles = match case {
        Case::UnaryC1 | Case::UnaryC64 => {
            spawn_tasks(case.tasks(), |i| unary_task(ch(i), side.name(MOTOR), w))
        }
        Case::Echo1M => spawn_tasks(case.tasks(), |i| {
            echo_task(ch(i), side.name(ECHO), payload.clone(), w)
        }),
        Case::Watch => spawn_tasks(case.tasks(), |i| watch_task(ch(i), side.name(COUNTER), w)),
        Case::Chat => spawn_tasks(case.tasks(), |i| chat_task(ch(i), side.name(COUNTER), w)),
    };
    tokio::time::sleep_until(w.start).await;
    let before = probe.read();
    tokio::time::sleep_until(w.end).await;
    let after = probe.read();

    let total = join_tasks(handles, JOIN_GRACE).await;
    let seconds = (w.end - w.start).as_secs_f64();
    Sample {
        rate: total.ops as f64 / seconds,
        ops: total.ops,
        errors: total.errors,
        first_error: total.first_error,
        p50_us: percentile_us(&total.latencies_ns, 0.50),
        p99_us: percentile_us(&total.latencies_ns, 0.99),
        p999_us: percentile_us(&total.latencies_ns, 0.999),
        cpu: after.since(&before),
        seconds,
    }
}

/// Measures one case on both paths, in the given order; returns (direct, via).
async fn measure_pair(
    case: Case,
    order: [&Side; 2],
    round: usize,
    opts: &Options,
    probe: &CpuProbe,
    payload: &Arc<String>,
) -> (Sample, Sample) {
    let mut direct = None;
    let mut via = None;
    for s in order {
        let sample = measure(case, s, opts, probe, payload).await;
        eprintln!(
            "bench: round {} {:<16} {:<12} {:>10.0} {}  p50 {:>9}  p99 {:>9}  errors {}  other load \
             {:.2} cores",
            round + 1,
            case.short(),
            s.label(),
            sample.rate,
            case.unit(),
            us(sample.p50_us),
            us(sample.p99_us),
            sample.errors,
            sample.cpu.others() / sample.seconds
        );
        if s.via {
            via = Some(sample);
        } else {
            direct = Some(sample);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let missing = || Sample::failed("path not measured");
    (direct.unwrap_or_else(missing), via.unwrap_or_else(missing))
}

/// Calls IsPowered until it answers (bounded), so that both paths are known to work.
async fn wait_ready(side: &Side) -> Res<()> {
    let mut client = motor::motor_service_client::MotorServiceClient::new(side.channels[0].clone());
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = String::new();
    for _ in 0..1000 {
        if Instant::now() >= deadline {
            break;
        }
        let req = motor::IsPoweredRequest {
            name: side.name(MOTOR),
            extra: None,
        };
        match tokio::time::timeout(Duration::from_secs(2), client.is_powered(req)).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(status)) => last = status_text(&status),
            Err(_) => last = "timed out".into(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("{} path never answered IsPowered: {last}", side.label()).into())
}

// ================================================================================================
// Orchestration and report
// ================================================================================================

fn orchestrate(opts: &Options, procs: &Procs) -> Res<bool> {
    if opts.cases.is_empty() {
        return Err("PARTGATE_BENCH_CASES names no known case (c1,c64,echo,watch,chat)".into());
    }
    let (backend_pid, backend_addr) = spawn_backend(procs)?;
    let config = write_config(backend_addr)?;
    let gateway_log_lines = Arc::new(AtomicU64::new(0));
    let started = spawn_gateway(procs, &config, gateway_log_lines.clone(), None);
    let _ = std::fs::remove_file(&config);
    let (gateway_pid, gateway_addr) = started?;
    eprintln!(
        "bench: backend part pid {backend_pid} on {backend_addr}, gateway pid {gateway_pid} on \
         {gateway_addr}; {} s per case and side after {} s warm-up, {} round(s){}",
        opts.secs,
        opts.warmup,
        opts.rounds,
        if opts.quick { " (quick)" } else { "" }
    );
    let probe = CpuProbe {
        gateway: format!("/proc/{gateway_pid}/stat"),
        backend: format!("/proc/{backend_pid}/stat"),
        ticks: clock_ticks(),
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let results = runtime.block_on(async {
        let direct = side(backend_addr, false).await?;
        let via = side(gateway_addr, true).await?;
        wait_ready(&direct).await?;
        wait_ready(&via).await?;
        let payload = Arc::new("x".repeat(ECHO_BYTES));
        // results[case][round] = (direct, via), cases in `opts.cases` order
        let mut results: Vec<Vec<(Sample, Sample)>> = vec![Vec::new(); opts.cases.len()];
        for round in 0..opts.rounds {
            for (ci, case) in opts.cases.iter().copied().enumerate() {
                let order: [&Side; 2] = if round % 2 == 0 {
                    [&direct, &via]
                } else {
                    [&via, &direct]
                };
                let mut pair = measure_pair(case, order, round, opts, &probe, &payload).await;
                // Quick mode gates on this case: before calling a low ratio a regression, measure
                // again (twice at most) so that a burst of other load cannot fail CI. Errors of
                // every attempt still count.
                if opts.quick && case == Case::UnaryC64 {
                    for _ in 0..QUICK_RETRIES {
                        let ratio = pair.1.rate / pair.0.rate;
                        if ratio >= QUICK_MIN_RATIO {
                            break;
                        }
                        eprintln!(
                            "bench: unary c=64 at {ratio:.2}x (< {QUICK_MIN_RATIO}x); measuring again \
                             to rule out noise"
                        );
                        let mut again =
                            measure_pair(case, order, round, opts, &probe, &payload).await;
                        again.0.absorb_errors(&pair.0);
                        again.1.absorb_errors(&pair.1);
                        if again.1.rate / again.0.rate > ratio || ratio.is_nan() {
                            pair = again;
                        } else {
                            pair.0.absorb_errors(&again.0);
                            pair.1.absorb_errors(&again.1);
                        }
                    }
                }
                results[ci].push(pair);
            }
        }
        Ok::<_, BoxError>(results)
    })?;
    // Client connections close with the runtime before the children are killed.
    drop(runtime);

    let gateway_lines = gateway_log_lines.load(Ordering::Relaxed);
    Ok(report(opts, &results, gateway_lines))
}

// ================================================================================================
// Instruction counts (PARTGATE_BENCH_CALLGRIND=N)
// ================================================================================================

/// `PARTGATE_BENCH_CALLGRIND=N`: operations per case for the instruction-count mode.
fn callgrind_ops() -> Option<u64> {
    std::env::var("PARTGATE_BENCH_CALLGRIND")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|n| *n > 0)
        .map(|n| n.min(1_000_000))
}

/// `PARTGATE_BENCH_SYSCALLS=N`: operations per case for the system-call count mode.
fn syscall_ops() -> Option<u64> {
    std::env::var("PARTGATE_BENCH_SYSCALLS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|n| *n > 0)
        .map(|n| n.min(1_000_000))
}

/// What [`instructions`] counts around each case's N operations.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Counter {
    /// User-space instructions: the gateway runs under callgrind.
    Callgrind,
    /// System calls and context switches of the (uninstrumented) gateway, with `perf stat`
    /// tracepoints, which do not slow the traced process the way `strace` does.
    Syscalls,
}

/// The system calls counted in syscall mode, then context switches.
const SYSCALL_EVENTS: [(&str, &str); 7] = [
    ("writev", "syscalls:sys_enter_writev"),
    ("write", "syscalls:sys_enter_write"),
    ("recvfrom", "syscalls:sys_enter_recvfrom"),
    ("epoll_wait", "syscalls:sys_enter_epoll_wait"),
    ("futex", "syscalls:sys_enter_futex"),
    ("all syscalls", "raw_syscalls:sys_enter"),
    ("switches", "context-switches"),
];

/// Starts `perf stat` on `pid` with [`SYSCALL_EVENTS`], writing CSV to `out`.
fn start_perf(pid: u32, out: &std::path::Path) -> Res<Child> {
    let events: Vec<&str> = SYSCALL_EVENTS.iter().map(|(_, e)| *e).collect();
    let child = Command::new("perf")
        .args(["stat", "-x", ",", "-o"])
        .arg(out)
        .args(["-e", &events.join(","), "-p", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    // perf needs a moment to attach before the counted operations start.
    std::thread::sleep(Duration::from_millis(300));
    Ok(child)
}

/// Stops `perf` (SIGINT, by its pid) and reads its counts in [`SYSCALL_EVENTS`] order.
fn stop_perf(mut perf: Child, out: &std::path::Path) -> Res<Vec<u64>> {
    let status = Command::new("kill")
        .args(["-INT", &perf.id().to_string()])
        .status()?;
    if !status.success() {
        let _ = perf.kill();
    }
    perf.wait()?;
    let text = std::fs::read_to_string(out)?;
    let _ = std::fs::remove_file(out);
    SYSCALL_EVENTS
        .iter()
        .map(|(_, event)| {
            text.lines()
                .find(|l| l.split(',').nth(2) == Some(*event))
                .and_then(|l| l.split(',').next())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| format!("perf counted no {event} (perf stat output: {text})").into())
        })
        .collect()
}

/// Runs `callgrind_control ARGS PID` and waits for it (bounded by vgdb's own timeouts).
fn callgrind_control(args: &[&str], pid: u32) -> Res<()> {
    let status = Command::new("callgrind_control")
        .args(args)
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        return Err(format!("callgrind_control {args:?} failed: {status}").into());
    }
    Ok(())
}

/// The `totals:` (instructions) of the newest callgrind dump whose name starts with `base`.
fn newest_dump_total(base: &std::path::Path) -> Res<u64> {
    let dir = base.parent().ok_or("callgrind output has no directory")?;
    let stem = base
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or("callgrind output name")?;
    let mut newest: Option<(u64, PathBuf)> = None;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        // Dumps are named `<base>.<n>`; the final one (at exit) is `<base>` itself.
        let Some(n) = name
            .strip_prefix(stem)
            .and_then(|rest| rest.strip_prefix('.'))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        if newest.as_ref().is_none_or(|(m, _)| n > *m) {
            newest = Some((n, path));
        }
    }
    let (_, path) = newest.ok_or("no callgrind dump found")?;
    let text = std::fs::read_to_string(&path)?;
    eprintln!("bench: profile in {} (callgrind_annotate)", path.display());
    text.lines()
        .find_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
        })
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| format!("no totals in {}", path.display()).into())
}

/// Instruction-count mode: the gateway runs under `valgrind --tool=callgrind`; for each case a
/// fixed number of operations goes through it (after a warm-up), between a zeroing and a dump of
/// its counters, and the report is gateway instructions per operation. Unlike CPU time this is
/// repeatable on a loaded machine (valgrind serialises the gateway's threads, so the figure is
/// work, not parallelism). Only the via path runs; the part is not instrumented.
fn instructions(opts: &Options, procs: &Procs, ops: u64, counter: Counter) -> Res<bool> {
    let (_, backend_addr) = spawn_backend(procs)?;
    let config = write_config(backend_addr)?;
    let base =
        std::env::temp_dir().join(format!("partgate-bench-{}.callgrind", std::process::id()));
    let perf_out = std::env::temp_dir().join(format!("partgate-bench-{}.perf", std::process::id()));
    let callgrind = (counter == Counter::Callgrind).then_some(&base);
    let started = spawn_gateway(procs, &config, Arc::new(AtomicU64::new(0)), callgrind);
    let _ = std::fs::remove_file(&config);
    let (gateway_pid, gateway_addr) = started?;
    eprintln!("bench: gateway pid {gateway_pid}; {ops} operations per case");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let payload = Arc::new("x".repeat(ECHO_BYTES));
    let mut out = match counter {
        Counter::Callgrind => String::from(
            "\n| case | operations | gateway instructions per operation | errors |\n|---|---|---|---|\n",
        ),
        Counter::Syscalls => {
            let names: Vec<&str> = SYSCALL_EVENTS.iter().map(|(n, _)| *n).collect();
            format!(
                "\n| case | operations | {} (gateway, per operation) | errors |\n|---|---|{}---|\n",
                names.join(" | "),
                "---|".repeat(names.len())
            )
        }
    };
    let mut errors = 0;
    runtime.block_on(async {
        let via = side(gateway_addr, true).await?;
        wait_ready(&via).await?;
        for case in opts.cases.iter().copied() {
            // Per task: a Watch call is WATCH_COUNT operations; the 1 MiB echo is expensive.
            let per_op = if case == Case::Watch {
                WATCH_COUNT as u64
            } else {
                1
            };
            let scaled = if case == Case::Echo1M { ops / 100 } else { ops };
            let per_task = (scaled / per_op / case.tasks() as u64).max(1);
            let run = |per_task: u64| {
                let now = Instant::now();
                let w = Window {
                    limit: per_task,
                    ..Window::new(now, now + Duration::from_secs(3600))
                };
                let ch = |i: usize| via.channels[i % via.channels.len()].clone();
                let handles = match case {
                    Case::UnaryC1 | Case::UnaryC64 => {
                        spawn_tasks(case.tasks(), |i| unary_task(ch(i), via.name(MOTOR), w))
                    }
                    Case::Echo1M => spawn_tasks(case.tasks(), |i| {
                        echo_task(ch(i), via.name(ECHO), payload.clone(), w)
                    }),
                    Case::Watch => {
                        spawn_tasks(case.tasks(), |i| watch_task(ch(i), via.name(COUNTER), w))
                    }
                    Case::Chat => {
                        spawn_tasks(case.tasks(), |i| chat_task(ch(i), via.name(COUNTER), w))
                    }
                };
                async move {
                    let mut total = TaskStats::default();
                    for handle in handles {
                        match handle.await {
                            Ok(stats) => total.merge(stats),
                            Err(e) => total.error(format!("load task failed: {e}")),
                        }
                    }
                    total
                }
            };
            let warm = run((per_task / 10).max(1)).await;
            let perf = match counter {
                Counter::Callgrind => {
                    callgrind_control(&["-z"], gateway_pid)?;
                    None
                }
                Counter::Syscalls => Some(start_perf(gateway_pid, &perf_out)?),
            };
            let total = run(per_task).await;
            let per_op = |n: u64| n as f64 / total.ops.max(1) as f64;
            let counted = match perf {
                None => {
                    callgrind_control(&["--dump"], gateway_pid)?;
                    thousands(per_op(newest_dump_total(&base)?))
                }
                Some(perf) => stop_perf(perf, &perf_out)?
                    .into_iter()
                    .map(|n| format!("{:.2}", per_op(n)))
                    .collect::<Vec<_>>()
                    .join(" | "),
            };
            let errs = warm.errors + total.errors;
            errors += errs;
            if let Some(e) = total.first_error.as_ref().or(warm.first_error.as_ref()) {
                eprintln!("bench: {}: {e}", case.short());
            }
            let line = format!(
                "| {} | {} | {} | {} |\n",
                case.label(),
                total.ops,
                counted,
                errs
            );
            eprint!("bench: {line}");
            out.push_str(&line);
        }
        Ok::<(), BoxError>(())
    })?;
    drop(runtime);
    print!("{out}");
    let _ = std::io::stdout().flush();
    Ok(errors == 0)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|v| !v.is_nan());
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Medians over rounds of one side's numbers.
struct Summary {
    rate: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    gw_cpu: f64,
    be_cpu: f64,
    lg_cpu: f64,
    /// Worst CPU (in cores) used by other processes, and stolen, during any round's window.
    other_cores: f64,
    steal_cores: f64,
    errors: u64,
    first_error: Option<String>,
}

fn summarize<'a>(samples: impl Iterator<Item = &'a Sample> + Clone) -> Summary {
    let pick = |f: fn(&Sample) -> f64| median(samples.clone().map(f).collect());
    Summary {
        rate: pick(|s| s.rate),
        p50: pick(|s| s.p50_us),
        p99: pick(|s| s.p99_us),
        p999: pick(|s| s.p999_us),
        gw_cpu: pick(|s| s.per_op(s.cpu.gateway)),
        be_cpu: pick(|s| s.per_op(s.cpu.backend)),
        lg_cpu: pick(|s| s.per_op(s.cpu.loadgen)),
        other_cores: samples
            .clone()
            .map(|s| s.cpu.others() / s.seconds)
            .fold(f64::NAN, f64::max),
        steal_cores: samples
            .clone()
            .map(|s| s.cpu.machine_steal / s.seconds)
            .fold(f64::NAN, f64::max),
        errors: samples.clone().map(|s| s.errors).sum(),
        first_error: samples.clone().find_map(|s| s.first_error.clone()),
    }
}

fn thousands(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    let n = v.round() as u64;
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn us(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.0} µs")
    } else {
        "n/a".into()
    }
}

fn signed_us(v: f64) -> String {
    if v.is_finite() {
        format!("{v:+.0} µs")
    } else {
        "n/a".into()
    }
}

fn cpu_us(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.1}")
    } else {
        "n/a".into()
    }
}

/// Prints the tables; returns false only for quick-mode gross regressions or any error.
fn report(opts: &Options, results: &[Vec<(Sample, Sample)>], gateway_log_lines: u64) -> bool {
    let mut out = String::new();
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    out.push_str(&format!(
        "\npartgate gateway benchmark: {} s per case and side, {} round(s), {} cores shared by \
         load generator, gateway and part{}\n\n",
        opts.secs,
        opts.rounds,
        cores,
        if opts.quick { ", quick mode" } else { "" }
    ));
    out.push_str(
        "| case | direct | via gateway | ratio | added p50 | added p99 | gateway CPU µs/call |\n",
    );
    out.push_str("|---|---|---|---|---|---|---|\n");
    let mut details = String::new();
    details.push_str(
        "| case | path | rate | p50 | p99 | p99.9 | errors | gateway CPU µs/op | part CPU µs/op \
         | load-gen CPU µs/op | other load (cores) |\n",
    );
    details.push_str("|---|---|---|---|---|---|---|---|---|---|---|\n");
    let mut busiest_other: f64 = 0.0;
    let mut busiest_steal: f64 = 0.0;

    let mut errors = 0;
    let mut failures: Vec<String> = Vec::new();
    for (case, rounds) in opts.cases.iter().copied().zip(results) {
        let d = summarize(rounds.iter().map(|(d, _)| d));
        let v = summarize(rounds.iter().map(|(_, v)| v));
        let ratio = median(rounds.iter().map(|(d, v)| v.rate / d.rate).collect());
        let rate = |s: &Summary| {
            if case == Case::UnaryC1 {
                format!(
                    "{} {} (p50 {}, p99 {}, p99.9 {})",
                    thousands(s.rate),
                    case.unit(),
                    us(s.p50),
                    us(s.p99),
                    us(s.p999)
                )
            } else {
                format!("{} {}", thousands(s.rate), case.unit())
            }
        };
        let (added50, added99) = if case == Case::UnaryC1 {
            (signed_us(v.p50 - d.p50), signed_us(v.p99 - d.p99))
        } else {
            ("–".to_owned(), "–".to_owned())
        };
        out.push_str(&format!(
            "| {} | {} | {} | {:.2}x | {} | {} | {} |\n",
            case.label(),
            rate(&d),
            rate(&v),
            ratio,
            added50,
            added99,
            cpu_us(v.gw_cpu)
        ));
        for (path, s) in [("direct", &d), ("via gateway", &v)] {
            details.push_str(&format!(
                "| {} | {} | {} {} | {} | {} | {} | {} | {} | {} | {} | {:.2} |\n",
                case.short(),
                path,
                thousands(s.rate),
                case.unit(),
                us(s.p50),
                us(s.p99),
                us(s.p999),
                s.errors,
                cpu_us(s.gw_cpu),
                cpu_us(s.be_cpu),
                cpu_us(s.lg_cpu),
                s.other_cores
            ));
            busiest_other = busiest_other.max(s.other_cores);
            busiest_steal = busiest_steal.max(s.steal_cores);
            if s.errors > 0 {
                errors += s.errors;
                failures.push(format!(
                    "{} {}: {} error(s), first: {}",
                    case.short(),
                    path,
                    s.errors,
                    s.first_error.as_deref().unwrap_or("?")
                ));
            }
        }
        if case == Case::UnaryC64 && (ratio.is_nan() || ratio < QUICK_MIN_RATIO) {
            failures.push(format!(
                "unary c=64 through the gateway is {ratio:.2}x direct (gross regression below \
                 {QUICK_MIN_RATIO}x)"
            ));
        }
    }
    out.push_str(
        "\nPer path (medians over rounds; CPU from /proc/<pid>/stat during the window):\n\n",
    );
    out.push_str(&details);
    if busiest_other > 0.2 || busiest_steal > 0.1 {
        out.push_str(&format!(
            "\nWARNING: other processes used up to {busiest_other:.2} cores (hypervisor steal up to \
             {busiest_steal:.2}) during a measured window; the numbers above are distorted. Re-run on \
             an idle machine.\n"
        ));
    }
    if gateway_log_lines > 0 {
        out.push_str(&format!(
            "\nThe gateway logged {gateway_log_lines} line(s) at warn or above (echoed to stderr).\n"
        ));
    }
    print!("{out}");
    let _ = std::io::stdout().flush();

    for f in &failures {
        eprintln!("bench: {f}");
    }
    if opts.quick {
        if failures.is_empty() {
            eprintln!("bench: quick check passed");
        } else {
            eprintln!("bench: quick check FAILED");
        }
        failures.is_empty()
    } else {
        // A full run reports; it fails only if calls failed, never on speed.
        errors == 0
    }
}
