//! Attack benchmark: each known HTTP/2 attack, sent by a raw-socket client written here, beside
//! a legitimate gRPC client, against partgate and nginx (the anchor) in the same run. For every
//! attack and proxy it reports the legitimate client's success rate, p50 and p99 during the
//! attack and its p99 in a quiet window just before, the proxy's peak memory and CPU during the
//! attack, and how the attack ended (GOAWAY with which code, a TCP close, or kept open). See
//! `bench/README.md` ("Attacks") and `bench/attack/run.sh`, which installs nginx and runs this.
//!
//! ```text
//! this bench ─ legit client: IsPowered at a steady rate, 4 h2c connections (tonic) ─┐
//!            └ attacker: raw HTTP/2 frames, hand-encoded HPACK (threads, std sockets) ─┤
//!                                                      partgate / nginx grpc_pass ◄────┘
//!                                                                 │
//!             backend (this binary re-executed, PARTGATE_COMPARE_ROLE=backend): part `bench`
//! ```
//!
//! The proxies and the backend are started exactly as the comparison bench starts them
//! (`benches/compare/{peers,backend,procs}.rs`), two workers each, all on 127.0.0.1.
//!
//! Environment: `PARTGATE_ATTACK_SECS` (default 4), `PARTGATE_ATTACK_QUIET_SECS` (2),
//! `PARTGATE_ATTACK_RATE` (legit calls/s, 200), `PARTGATE_ATTACK_LIST` (subset of the attack
//! keys), `PARTGATE_ATTACK_PROXIES` (`partgate,nginx`; `haproxy`, `envoy` and `partgate-spin`
//! work too), `PARTGATE_ATTACK_SLOW_CONNS` (500), `PARTGATE_ATTACK_RSS_CAP_MIB` (2048: an
//! attack is stopped when the proxy's memory passes it), `PARTGATE_ATTACK_FROM` (the attacker's
//! source address, another loopback address such as 127.0.0.2, so that the proxy sees another
//! client than the legitimate one; default 127.0.0.1 for both), `PARTGATE_ATTACK_KEEP=1`,
//! `PARTGATE_ATTACK_QUICK=1` or `--quick` (1 s per attack); the binaries as for the comparison
//! (`PARTGATE_COMPARE_PARTGATE`, `PARTGATE_COMPARE_NGINX`, ...).
//!
//! Exit status: 0 whatever the proxies did (the issue's target is reported, not asserted); 1 if
//! an attack could not even start against any proxy (the attack code is broken); 2 if the bench
//! could not set up (backend or a proxy did not start or answer); 3 if the watchdog stopped it.

#[path = "attack/attacks.rs"]
mod attacks;
#[path = "compare/backend.rs"]
mod backend;
#[path = "attack/h2raw.rs"]
mod h2raw;
// Shared with the comparison bench, which uses more of them than this one.
#[allow(dead_code)]
#[path = "common/load.rs"]
mod load;
#[allow(dead_code)]
#[path = "compare/peers.rs"]
mod peers;
#[path = "compare/procs.rs"]
mod procs;

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use partgate::proto::viam::component::motor::v1 as motor;
use tokio::time::Instant;
use tonic::transport::Channel;

use attacks::{Attack, AttackReport, SlowReport, Target};
use h2raw::ConnReport;
use peers::{Instance, Kind, Upstreams};
use procs::Procs;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Res<T> = Result<T, BoxError>;

/// Workers of every proxy, as in the comparison: nginx `worker_processes`, partgate
/// `gateway.worker_threads`.
pub const WORKERS: usize = 2;
/// The legitimate client's connections (calls go round robin over them).
const LEGIT_CONNS: usize = 4;
/// A legitimate call that takes longer than this has failed.
const LEGIT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the proxy's memory is read during an attack.
const RSS_EVERY: Duration = Duration::from_millis(50);
/// Memory growth during an attack that the table calls out.
const GREW_MIB: f64 = 16.0;
/// The issue's target for the legitimate client under attack.
const TARGET_SUCCESS: f64 = 99.0;
const TARGET_P99_RATIO: f64 = 10.0;

// ================================================================================================
// Options
// ================================================================================================

#[derive(Debug, Clone)]
struct Options {
    quick: bool,
    secs: f64,
    quiet_secs: f64,
    rate: f64,
    attacks: Vec<Attack>,
    proxies: Vec<Kind>,
    slow_conns: usize,
    rss_cap_mib: f64,
    keep: bool,
    /// The attacker's source address: another loopback address (`PARTGATE_ATTACK_FROM`), or
    /// the system's choice (127.0.0.1, the legitimate client's too).
    from: Option<IpAddr>,
    /// `PARTGATE_ATTACK_FROM` was set but is not a loopback address.
    bad_from: Option<String>,
}

fn env_on(key: &str) -> bool {
    std::env::var(key).is_ok_and(|v| !v.is_empty() && v != "0")
}

fn env_num(key: &str) -> Option<f64> {
    std::env::var(key)
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v > 0.0)
}

fn env_list(key: &str) -> Option<Vec<String>> {
    std::env::var(key)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .map(|v| v.split(',').map(|s| s.trim().to_owned()).collect())
}

impl Options {
    fn from_env() -> Self {
        let quick = std::env::args().any(|a| a == "--quick") || env_on("PARTGATE_ATTACK_QUICK");
        let (secs, quiet_secs) = if quick {
            (1.0, 0.5)
        } else {
            (
                env_num("PARTGATE_ATTACK_SECS")
                    .unwrap_or(4.0)
                    .clamp(0.5, 600.0),
                env_num("PARTGATE_ATTACK_QUIET_SECS")
                    .unwrap_or(2.0)
                    .clamp(0.5, 600.0),
            )
        };
        let attacks = match env_list("PARTGATE_ATTACK_LIST") {
            Some(wanted) => Attack::ALL
                .into_iter()
                .filter(|a| wanted.iter().any(|w| w == a.key()))
                .collect(),
            None => Attack::ALL.to_vec(),
        };
        let proxies = env_list("PARTGATE_ATTACK_PROXIES")
            .unwrap_or_else(|| vec!["partgate".into(), "nginx".into()])
            .iter()
            .filter_map(|w| Kind::ALL.into_iter().find(|k| k.name() == w))
            .collect();
        let (from, bad_from) = match std::env::var("PARTGATE_ATTACK_FROM") {
            Ok(v) if !v.trim().is_empty() => match v.trim().parse::<IpAddr>() {
                Ok(ip) if ip.is_loopback() => (Some(ip), None),
                _ => (None, Some(v)),
            },
            _ => (None, None),
        };
        Self {
            quick,
            secs,
            quiet_secs,
            rate: env_num("PARTGATE_ATTACK_RATE")
                .unwrap_or(200.0)
                .clamp(1.0, 5000.0),
            attacks,
            proxies,
            slow_conns: env_num("PARTGATE_ATTACK_SLOW_CONNS").map_or(500, |v| v as usize),
            rss_cap_mib: env_num("PARTGATE_ATTACK_RSS_CAP_MIB").unwrap_or(2048.0),
            keep: env_on("PARTGATE_ATTACK_KEEP"),
            from,
            bad_from,
        }
    }

    /// Generous upper bound on the whole run; the watchdog kills everything past it.
    fn hard_limit(&self) -> Duration {
        let per = self.quiet_secs + self.secs + LEGIT_TIMEOUT.as_secs_f64() + 45.0;
        Duration::from_secs_f64(per * (self.attacks.len() * self.proxies.len()) as f64 + 180.0)
    }
}

// ================================================================================================
// Entry point
// ================================================================================================

fn main() -> ExitCode {
    if backend::is_backend() {
        return match backend::run() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("attack backend: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let opts = Options::from_env();
    let procs = Procs::default();
    start_watchdog(procs.clone(), opts.hard_limit());
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("attack")
        .join(format!("run-{}", std::process::id()));
    let outcome = std::fs::create_dir_all(&dir)
        .map_err(BoxError::from)
        .and_then(|()| orchestrate(&opts, &procs, &dir));
    procs.stop_all();
    if opts.keep || !matches!(outcome, Ok(true)) {
        eprintln!("attack: configs and proxy logs kept in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("attack: {e}");
            ExitCode::from(2)
        }
    }
}

fn start_watchdog(procs: Procs, limit: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("attack: still running after {limit:?}; stopping children and giving up");
        procs.stop_all();
        std::process::exit(3);
    });
}

// ================================================================================================
// Proxies and the legitimate client
// ================================================================================================

struct Proxy {
    kind: Kind,
    inst: Instance,
    /// Not attacked yet (every attack gets a freshly started proxy).
    fresh: bool,
}

impl Proxy {
    fn target(&self, from: Option<IpAddr>) -> Target {
        Target {
            addr: self.inst.addr,
            prefixed: self.kind.is_partgate(),
            from,
        }
    }

    fn motor(&self) -> String {
        if self.kind.is_partgate() {
            "bench:motor1".into()
        } else {
            "motor1".into()
        }
    }
}

/// What the bench needs to start (and restart) a proxy.
struct Env<'a> {
    opts: &'a Options,
    procs: &'a Procs,
    ups: &'a Upstreams,
    dir: &'a Path,
    ticks: f64,
    backend: u32,
}

impl Env<'_> {
    fn restart(&self, proxy: &mut Proxy) -> Res<()> {
        self.procs.stop_one(proxy.inst.pid);
        proxy.inst = peers::start(proxy.kind, false, self.ups, self.dir, self.procs)?;
        eprintln!(
            "attack: {} started afresh, pid {} on {}",
            proxy.kind.name(),
            proxy.inst.pid,
            proxy.inst.addr
        );
        Ok(())
    }
}

async fn call(ch: Channel, name: &str) -> Result<Duration, String> {
    let began = Instant::now();
    let mut client = motor::motor_service_client::MotorServiceClient::new(ch);
    match tokio::time::timeout(
        LEGIT_TIMEOUT,
        client.is_powered(load::is_powered(name, None)),
    )
    .await
    {
        Ok(Ok(_)) => Ok(began.elapsed()),
        Ok(Err(status)) => Err(load::status_text(&status)),
        Err(_) => Err(format!("timed out ({} s)", LEGIT_TIMEOUT.as_secs())),
    }
}

/// The legitimate client's connections, each checked with one call (retried for up to 10 s).
async fn legit_channels(addr: SocketAddr, name: &str) -> Res<Vec<Channel>> {
    let mut out = Vec::with_capacity(LEGIT_CONNS);
    for _ in 0..LEGIT_CONNS {
        let ch = tokio::time::timeout(Duration::from_secs(10), load::connect(addr))
            .await
            .map_err(|_| "connect timed out")??;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match call(ch.clone(), name).await {
                Ok(_) => break,
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!("IsPowered({name}) never answered: {e}").into());
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        out.push(ch);
    }
    Ok(out)
}

/// One legitimate call: when it was sent, and how it went.
struct Call {
    at: Instant,
    result: Result<Duration, String>,
}

/// Open-loop load: one IsPowered call every `period` from `start` to `end`, each on its own
/// task (so a slow answer does not hold back the next call), round robin over the channels.
async fn legit_load(
    channels: Vec<Channel>,
    name: String,
    start: Instant,
    end: Instant,
    period: Duration,
) -> Vec<Call> {
    let max = ((end - start).as_secs_f64() / period.as_secs_f64()).ceil() as usize + 1;
    let mut tick = tokio::time::interval_at(start, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut handles = Vec::with_capacity(max);
    for i in 0..max {
        if tick.tick().await >= end || channels.is_empty() {
            break;
        }
        let ch = channels[i % channels.len()].clone();
        let name = name.clone();
        handles.push(tokio::spawn(async move {
            let at = Instant::now();
            Call {
                at,
                result: call(ch, &name).await,
            }
        }));
    }
    let mut calls = Vec::with_capacity(handles.len());
    let limit = Instant::now() + LEGIT_TIMEOUT + Duration::from_secs(5);
    for h in handles {
        let abort = h.abort_handle();
        match tokio::time::timeout_at(limit, h).await {
            Ok(Ok(c)) => calls.push(c),
            Ok(Err(e)) => calls.push(Call {
                at: start,
                result: Err(format!("call task failed: {e}")),
            }),
            Err(_) => {
                abort.abort();
                calls.push(Call {
                    at: end,
                    result: Err("call task did not finish".into()),
                });
            }
        }
    }
    calls
}

/// The legitimate client's calls in one window.
#[derive(Debug, Default, Clone)]
struct Legit {
    calls: usize,
    ok: usize,
    /// Latencies of the successful calls, sorted, in ns.
    latencies: Vec<u64>,
    first_error: Option<String>,
}

impl Legit {
    fn of<'a>(calls: impl Iterator<Item = &'a Call>) -> Self {
        let mut l = Legit::default();
        for c in calls {
            l.calls += 1;
            match &c.result {
                Ok(d) => {
                    l.ok += 1;
                    l.latencies
                        .push(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
                }
                Err(e) => {
                    l.first_error.get_or_insert_with(|| e.clone());
                }
            }
        }
        l.latencies.sort_unstable();
        l
    }

    fn success_pct(&self) -> f64 {
        if self.calls == 0 {
            f64::NAN
        } else {
            self.ok as f64 * 100.0 / self.calls as f64
        }
    }

    fn p(&self, q: f64) -> f64 {
        load::percentile_us(&self.latencies, q)
    }
}

// ================================================================================================
// One attack against one proxy
// ================================================================================================

struct Row {
    attack: Attack,
    kind: Kind,
    quiet: Legit,
    during: Legit,
    rss_quiet: Option<f64>,
    rss_peak: Option<f64>,
    rss_after: Option<f64>,
    cpu_quiet_pct: f64,
    cpu_pct: f64,
    report: AttackReport,
    capped: bool,
    exited: Option<String>,
    notes: Vec<String>,
    other_cores: f64,
}

impl Row {
    fn p99_ratio(&self) -> f64 {
        self.during.p(0.99) / self.quiet.p(0.99)
    }

    fn target_met(&self) -> bool {
        self.during.success_pct() >= TARGET_SUCCESS && self.p99_ratio() < TARGET_P99_RATIO
    }
}

/// CPU seconds of the proxy's tree, and of everything this bench runs (to tell other load).
fn cpu_reading(env: &Env<'_>, proxies: &[u32], target: u32) -> (f64, f64) {
    let map = procs::ProcMap::scan();
    let tree = |root: u32| procs::tree_cpu(&map.tree(root), env.ticks);
    let mut ours =
        procs::cpu_seconds(std::process::id(), env.ticks).unwrap_or(0.0) + tree(env.backend);
    for p in proxies {
        ours += tree(*p);
    }
    (tree(target), ours)
}

async fn run_one(env: &Env<'_>, attack: Attack, proxy: &mut Proxy, all: &[u32]) -> Res<Row> {
    let opts = env.opts;
    let mut notes = Vec::new();
    // Every attack meets a freshly started proxy, so that none inherits what an earlier one
    // left behind (memory the allocator kept, a part connection it broke).
    if !std::mem::replace(&mut proxy.fresh, false) {
        env.restart(proxy)?;
    }
    let channels = match legit_channels(proxy.inst.addr, &proxy.motor()).await {
        Ok(chs) => chs,
        Err(e) => {
            notes.push(format!("started twice: the first did not answer ({e})"));
            env.restart(proxy)?;
            legit_channels(proxy.inst.addr, &proxy.motor()).await?
        }
    };
    let pid = proxy.inst.pid;
    let mut all = all.to_vec();
    all.push(pid);
    let start = Instant::now() + Duration::from_millis(100);
    let quiet_end = start + Duration::from_secs_f64(opts.quiet_secs);
    let attack_end = quiet_end + Duration::from_secs_f64(opts.secs);
    let period = Duration::from_secs_f64(1.0 / opts.rate);
    let load = tokio::spawn(legit_load(
        channels,
        proxy.motor(),
        start,
        attack_end,
        period,
    ));

    tokio::time::sleep_until(start).await;
    let (cpu_q0, _) = cpu_reading(env, &all, pid);
    tokio::time::sleep_until(quiet_end).await;
    let (cpu_q1, ours0) = cpu_reading(env, &all, pid);
    let busy0 = procs::machine_seconds(env.ticks);
    let rss_quiet = procs::tree_rss(pid);

    let abort = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let end_std = attack_end.into_std();
    let attacker = {
        let (target, abort, done, slow) = (
            proxy.target(opts.from),
            abort.clone(),
            done.clone(),
            opts.slow_conns,
        );
        tokio::task::spawn_blocking(move || {
            let r = attacks::run(attack, &target, end_std, &abort, slow);
            done.store(true, Ordering::Relaxed);
            r
        })
    };
    let sampler = {
        let (abort, done) = (abort.clone(), done.clone());
        let cap = opts.rss_cap_mib * 1024.0 * 1024.0;
        tokio::task::spawn_blocking(move || {
            let mut peak = rss_quiet;
            let mut capped = false;
            while std::time::Instant::now() < end_std && !done.load(Ordering::Relaxed) {
                if let Some(rss) = procs::tree_rss(pid) {
                    peak = Some(peak.map_or(rss, |p: f64| p.max(rss)));
                    if rss > cap && !capped {
                        capped = true;
                        abort.store(true, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(RSS_EVERY);
            }
            (peak, capped)
        })
    };
    tokio::time::sleep_until(attack_end).await;
    let (cpu_a1, ours1) = cpu_reading(env, &all, pid);
    let busy1 = procs::machine_seconds(env.ticks);
    let report = attacker.await?;
    let (rss_peak, capped) = sampler.await?;
    let calls = load.await?;
    // Memory once the attacker is gone (what the attack left behind).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_after = procs::tree_rss(pid);
    let exited = env.procs.exited(pid);
    let quiet = Legit::of(calls.iter().filter(|c| c.at < quiet_end));
    let during = Legit::of(calls.iter().filter(|c| c.at >= quiet_end));
    if quiet.ok < quiet.calls {
        notes.push(format!(
            "quiet window {:.1}% ok ({})",
            quiet.success_pct(),
            quiet.first_error.as_deref().unwrap_or("")
        ));
    }
    if let Some(e) = &during.first_error {
        notes.push(format!("first legit error: {}", clip(e, 60)));
    }
    let other_cores = match (busy0, busy1) {
        (Some((b0, _)), Some((b1, _))) => ((b1 - b0) - (ours1 - ours0)).max(0.0) / opts.secs,
        _ => f64::NAN,
    };
    Ok(Row {
        attack,
        kind: proxy.kind,
        quiet,
        during,
        rss_quiet,
        rss_peak,
        rss_after,
        cpu_quiet_pct: (cpu_q1 - cpu_q0) / opts.quiet_secs * 100.0,
        cpu_pct: (cpu_a1 - cpu_q1) / opts.secs * 100.0,
        report,
        capped,
        exited,
        notes,
        other_cores,
    })
}

fn orchestrate(opts: &Options, procs: &Procs, dir: &Path) -> Res<bool> {
    if opts.attacks.is_empty() {
        let keys: Vec<&str> = Attack::ALL.iter().map(|a| a.key()).collect();
        return Err(format!(
            "PARTGATE_ATTACK_LIST names no known attack ({})",
            keys.join(",")
        )
        .into());
    }
    if let Some(v) = &opts.bad_from {
        return Err(format!(
            "PARTGATE_ATTACK_FROM={v}: not a loopback address (127.0.0.0/8 or ::1)"
        )
        .into());
    }
    if opts.proxies.is_empty() {
        return Err("PARTGATE_ATTACK_PROXIES names no known proxy".into());
    }
    // Slowloris holds hundreds of connections, the proxies as many again.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("attack: cannot raise the open-file limit: {e}");
    }
    let (backend_pid, ups) = backend::spawn(procs, 0)?;
    let mut proxies = Vec::new();
    let mut skipped = Vec::new();
    for kind in opts.proxies.iter().copied() {
        if kind.binary().is_none() {
            skipped.push(format!(
                "{}: not installed (run bench/attack/run.sh, or set {})",
                kind.name(),
                kind.env()
            ));
            continue;
        }
        let inst = peers::start(kind, false, &ups, dir, procs)?;
        eprintln!("attack: {} pid {} on {}", kind.name(), inst.pid, inst.addr);
        proxies.push(Proxy {
            kind,
            inst,
            fresh: true,
        });
    }
    let env = Env {
        opts,
        procs,
        ups: &ups,
        dir,
        ticks: procs::clock_ticks(),
        backend: backend_pid,
    };
    eprintln!(
        "attack: {} attack(s) x {} prox(ies){}: {} s quiet, then {} s of attack; legit client {} \
         calls/s over {LEGIT_CONNS} connections",
        opts.attacks.len(),
        proxies.len(),
        if opts.quick { " (quick)" } else { "" },
        opts.quiet_secs,
        opts.secs,
        opts.rate
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let rows = runtime.block_on(async {
        let mut rows = Vec::new();
        for (ai, attack) in opts.attacks.iter().copied().enumerate() {
            // Alternate which proxy goes first.
            let n = proxies.len();
            for j in 0..n {
                let pi = (ai + j) % n;
                let others: Vec<u32> = proxies
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != pi)
                    .map(|(_, p)| p.inst.pid)
                    .collect();
                let row = run_one(&env, attack, &mut proxies[pi], &others).await?;
                progress(&row);
                rows.push(row);
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
        Ok::<_, BoxError>(rows)
    })?;
    drop(runtime);
    Ok(report(opts, &rows, &skipped))
}

// ================================================================================================
// Report
// ================================================================================================

fn clip(s: &str, n: usize) -> String {
    let s = s.trim();
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let cut: String = s.chars().take(n).collect();
        format!("{cut}…")
    }
}

fn thousands(v: u64) -> String {
    let digits = v.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A latency given in µs.
fn lat(us: f64) -> String {
    if !us.is_finite() {
        "–".into()
    } else if us >= 1_000_000.0 {
        format!("{:.2} s", us / 1e6)
    } else if us >= 1000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

fn mib(b: Option<f64>) -> String {
    match b {
        Some(b) if b.is_finite() => format!("{:.1} MiB", b / (1024.0 * 1024.0)),
        _ => "–".into(),
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// How one attacker connection ended.
fn describe_conn(c: &ConnReport) -> String {
    let when = |at: Option<Duration>| at.map_or("(read after the attack)".into(), secs);
    let mut s = if let Some(g) = &c.seen.goaway {
        let mut s = format!("GOAWAY {}", h2raw::reason(g.code));
        match (g.at, &c.closed) {
            (Some(at), _) => s.push_str(&format!(" at {}", secs(at))),
            (None, Some((Some(at), _))) => {
                s = format!("closed at {} (its {s} read after the attack)", secs(*at));
            }
            _ => s.push_str(" (read after the attack)"),
        }
        if g.last_stream > 0 {
            s.push_str(&format!(" (last stream {})", g.last_stream));
        }
        if !g.debug.trim().is_empty() {
            s.push_str(&format!(" \"{}\"", clip(&g.debug, 40)));
        }
        s
    } else if let Some((at, how)) = &c.closed {
        format!("closed without GOAWAY ({how}) {}", when(*at))
    } else {
        "connection kept open".into()
    };
    s.push_str(&format!("; {:.1} MB written", c.bytes_sent as f64 / 1e6));
    let names = [
        (h2raw::DATA, "DATA"),
        (h2raw::HEADERS, "HEADERS"),
        (h2raw::SETTINGS, "SETTINGS"),
        (h2raw::PING, "PING"),
        (h2raw::WINDOW_UPDATE, "WINDOW_UPDATE"),
    ];
    let got: Vec<String> = names
        .iter()
        .filter_map(|(ty, name)| {
            let n = c.seen.by_type.get(ty).copied().unwrap_or(0);
            (n > 0).then(|| format!("{} {name}", thousands(n)))
        })
        .collect();
    if !got.is_empty() {
        s.push_str(&format!("; read back {}", got.join(", ")));
    }
    if let Some(first) = c.first_stall {
        s.push_str(&format!(
            "; proxy stopped reading at {} (writes blocked {:.1} s in all)",
            secs(first),
            c.stalled.as_secs_f64()
        ));
    }
    if !c.seen.resets.is_empty() {
        let total: u64 = c.seen.resets.values().sum();
        let codes: Vec<String> = c
            .seen
            .resets
            .iter()
            .map(|(code, n)| format!("{} {}", h2raw::reason(*code), thousands(*n)))
            .collect();
        s.push_str(&format!(
            "; proxy reset {} streams ({})",
            thousands(total),
            codes.join(", ")
        ));
    }
    s
}

fn describe_slow(s: &SlowReport) -> String {
    let mut out = format!("{} of {} connections opened", s.opened, s.wanted);
    if s.refused > 0 {
        out.push_str(&format!(
            ", {} refused ({})",
            s.refused,
            s.first_refusal.as_deref().unwrap_or("")
        ));
    }
    if s.closed > 0 {
        out.push_str(&format!(
            "; proxy closed {} (first at {})",
            s.closed,
            s.first_closed.map_or("?".into(), secs)
        ));
    }
    if s.closed_after > 0 {
        out.push_str(&format!("; {} found closed at the end", s.closed_after));
    }
    let open = s.opened - s.closed - s.closed_after;
    out.push_str(&format!("; {open} still open at the end"));
    if s.answered > 0 {
        out.push_str(&format!("; proxy answered on {}", s.answered));
    }
    out
}

/// The "how the attack ended" cell.
fn ending(row: &Row, cap_mib: f64) -> String {
    let mut parts: Vec<String> = Vec::new();
    if let Some(status) = &row.exited {
        parts.push(format!("**PROXY EXITED** ({status})"));
    }
    let r = &row.report;
    if let Some(f) = &r.failed {
        parts.push(format!("attack could not start: {}", clip(f, 60)));
    }
    for c in &r.conns {
        parts.push(describe_conn(c));
    }
    if let Some(s) = &r.slow {
        parts.push(describe_slow(s));
    } else if r.failed.is_none() {
        parts.push(format!("{} {}", thousands(r.sent), r.unit));
    }
    if let Some(n) = &r.note {
        parts.push(n.clone());
    }
    if row.capped {
        parts.push(format!("**stopped at the {cap_mib:.0} MiB memory cap**"));
    }
    if let (Some(peak), Some(quiet)) = (row.rss_peak, row.rss_quiet) {
        let grew = (peak - quiet) / (1024.0 * 1024.0);
        if grew >= GREW_MIB {
            parts.push(format!(
                "memory grew +{grew:.0} MiB ({} once the attacker left)",
                mib(row.rss_after)
            ));
        }
    }
    parts.extend(row.notes.iter().cloned());
    parts.join("; ").replace('|', "/")
}

fn progress(row: &Row) {
    eprintln!(
        "attack: {:<12} {:<8} legit {:>5.1}% ok ({} calls), p50 {:>8} p99 {:>8} (quiet p99 {}), \
         peak RSS {} (quiet {}), CPU {:.0}% (quiet {:.0}%)",
        row.attack.key(),
        row.kind.name(),
        row.during.success_pct(),
        row.during.calls,
        lat(row.during.p(0.5)),
        lat(row.during.p(0.99)),
        lat(row.quiet.p(0.99)),
        mib(row.rss_peak),
        mib(row.rss_quiet),
        row.cpu_pct,
        row.cpu_quiet_pct
    );
}

/// Prints the table; false if an attack could not start against any proxy (a broken bench).
fn report(opts: &Options, rows: &[Row], skipped: &[String]) -> bool {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let mut out = String::new();
    out.push_str(&format!(
        "\nHTTP/2 attacks beside a legitimate client: {} s of attack after {} s quiet, per attack \
         and proxy; legitimate client {} IsPowered calls/s over {LEGIT_CONNS} h2c connections \
         ({} s timeout); {WORKERS} workers per proxy; {cores} cores shared by everything{}{}\n\n",
        opts.secs,
        opts.quiet_secs,
        opts.rate,
        LEGIT_TIMEOUT.as_secs(),
        match opts.from {
            Some(ip) => format!("; the attacker connects from {ip}"),
            None => String::new(),
        },
        if opts.quick { "; quick mode" } else { "" }
    ));
    out.push_str(
        "| attack | proxy | legit ok | p50 | p99 | p99 ÷ quiet p99 | peak RSS (quiet) | proxy CPU (quiet) | target | how the attack ended |\n",
    );
    out.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
    let mut worst_other: f64 = 0.0;
    for row in rows {
        worst_other = worst_other.max(if row.other_cores.is_finite() {
            row.other_cores
        } else {
            0.0
        });
        out.push_str(&format!(
            "| {} | {} | {:.1}% of {} | {} | {} | {:.1}x (quiet {}) | {} ({}) | {:.0}% ({:.0}%) | {} | {} |\n",
            row.attack.label(),
            row.kind.name(),
            row.during.success_pct(),
            row.during.calls,
            lat(row.during.p(0.5)),
            lat(row.during.p(0.99)),
            row.p99_ratio(),
            lat(row.quiet.p(0.99)),
            mib(row.rss_peak),
            mib(row.rss_quiet),
            row.cpu_pct,
            row.cpu_quiet_pct,
            if row.target_met() { "met" } else { "**missed**" },
            ending(row, opts.rss_cap_mib)
        ));
    }
    out.push_str(&format!(
        "\nTarget (issue 26, reported, not asserted): the legitimate client keeps >= \
         {TARGET_SUCCESS}% success and p99 < {TARGET_P99_RATIO}x its quiet p99. Proxy CPU is in % \
         of one core (200% = both). Latencies are of successful calls.\n"
    ));
    for s in skipped {
        out.push_str(&format!("Skipped {s}\n"));
    }
    if worst_other > 0.2 {
        out.push_str(&format!(
            "\nWARNING: other processes used up to {worst_other:.2} cores during an attack \
             window; latencies and CPU are distorted.\n"
        ));
    } else {
        out.push_str(&format!(
            "\nOther load during the attack windows: at most {worst_other:.2} cores.\n"
        ));
    }
    print!("{out}");
    let _ = std::io::stdout().flush();
    // The bench is broken if an attack could not even start against any proxy.
    let mut ok = true;
    for attack in &opts.attacks {
        let tried: Vec<&Row> = rows.iter().filter(|r| r.attack == *attack).collect();
        if !tried.is_empty() && tried.iter().all(|r| r.report.failed.is_some()) {
            eprintln!(
                "attack: {} could not start against any proxy: {}",
                attack.key(),
                tried
                    .iter()
                    .filter_map(|r| r.report.failed.clone())
                    .collect::<Vec<_>>()
                    .join("; ")
            );
            ok = false;
        }
    }
    ok
}
