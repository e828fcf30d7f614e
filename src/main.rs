//! The `partgate` command: `run --config FILE`, `demo`, `check-config --config FILE`,
//! `healthcheck` (the container's probe).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use partgate::Gateway;
use partgate::config::Config;
use sim::SimPart;
use tracing::{error, info, warn};

/// A gateway that presents a fleet of Viam robot parts as one machine.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format on stderr: `human` (default) or `json` (one object per line).
    #[arg(long, global = true, env = "PARTGATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
}

/// How log lines are written.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Readable lines (colored on a terminal unless `NO_COLOR` is set).
    Human,
    /// One JSON object per line, fields flattened.
    Json,
}

/// How often `run` checks its config file for changes.
const CONFIG_POLL: Duration = Duration::from_secs(2);

#[derive(Subcommand)]
enum Command {
    /// Run the gateway for the fleet described by a config file.
    Run {
        /// JSON config file (see examples/).
        #[arg(long, short, env = "PARTGATE_CONFIG")]
        config: PathBuf,
    },
    /// Run the gateway in front of a built-in simulated fleet.
    Demo {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        bind: String,
    },
    /// Print a new Ed25519 token-signing key (PEM PKCS#8) for `gateway.signing_key_file`.
    Keygen,
    /// Validate a config file and print every problem with its JSON path.
    CheckConfig {
        /// JSON config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run one simulated part of the demo fleet on its own: a stand-in robot for trying a
    /// deployment (deploy/docker-compose.yml) without real hardware.
    SimPart {
        /// Which demo part: main, sub1, sub2 or cell.
        #[arg(long, default_value = "main")]
        name: String,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8081")]
        bind: std::net::SocketAddr,
    },
    /// Probe a gateway's HTTP endpoint (the container HEALTHCHECK; no curl needed): exit 0 on a
    /// 2xx answer, 1 otherwise.
    Healthcheck {
        /// URL to GET (`http://host:port/path`).
        #[arg(
            long,
            env = "PARTGATE_HEALTHCHECK_URL",
            default_value = "http://127.0.0.1:8080/healthz"
        )]
        url: String,
        /// How long connecting and answering may take, in seconds.
        #[arg(long, default_value_t = 3.0)]
        timeout: f64,
    },
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PARTGATE_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        // Typed fields (numbers, lists): see partgate::ops::logs.
        LogFormat::Json => builder
            .event_format(partgate::ops::logs::JsonLines)
            .fmt_fields(partgate::ops::logs::JsonLines)
            .init(),
        LogFormat::Human => {
            let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            builder.with_ansi(ansi).init();
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match cli.command {
        Command::Healthcheck { url, timeout } => healthcheck(&url, timeout),
        Command::SimPart { name, bind } => sim_part(&name, bind),
        Command::Keygen => match partgate::auth::token::generate_pem() {
            Ok(pem) => {
                print!("{pem}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::CheckConfig { config } => match Config::load(&config).and_then(|c| c.validate()) {
            Ok(settings) => {
                println!(
                    "{}: ok ({} parts, listening on {})",
                    config.display(),
                    settings.parts.len(),
                    settings.bind
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", config.display());
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => {
            let loaded = Config::load(&config).and_then(|c| {
                for key in c.ignored.keys() {
                    warn!(key = %key, "ignoring top-level config key the gateway does not use");
                }
                c.validate()
            });
            match loaded {
                Ok(settings) => run(
                    async move {
                        Gateway::start(settings)
                            .await
                            .map(|g| (g, Vec::<SimPart>::new()))
                    },
                    Some(config),
                ),
                Err(e) => {
                    error!("{}: {e}", config.display());
                    ExitCode::FAILURE
                }
            }
        }
        Command::Demo { bind } => run(
            async move {
                let parts = sim::start_demo().await.map_err(|source| {
                    partgate::error::StartError::Bind {
                        addr: "127.0.0.1:0".into(),
                        source,
                    }
                })?;
                let fleet = parts
                    .iter()
                    .map(|(prefix, part)| (part.name(), part.addr(), *prefix));
                let settings = Config::local_fleet(&bind, "main", fleet).validate()?;
                let parts: Vec<SimPart> = parts.into_iter().map(|(_, part)| part).collect();
                let gateway = Gateway::start(settings).await?;
                let addr = gateway.local_addr();
                info!("demo fleet: parts main (main part), sub1, sub2, cell (prefix \"cell-\")");
                println!("{}", demo_banner(addr));
                Ok((gateway, parts))
            },
            None,
        ),
    }
}

/// `partgate sim-part`: serves one demo part until SIGINT/SIGTERM.
fn sim_part(name: &str, bind: std::net::SocketAddr) -> ExitCode {
    let Some((_, spec)) = sim::demo_fleet()
        .into_iter()
        .find(|(_, spec)| spec.name == name)
    else {
        eprintln!("no demo part named {name:?}: choose main, sub1, sub2 or cell");
        return ExitCode::FAILURE;
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let mut signals = Signals::install();
        match SimPart::start(spec, bind).await {
            Ok(part) => {
                info!(part = name, "simulated part listening on {}", part.addr());
                while signals.next_is_reload().await {}
                ExitCode::SUCCESS
            }
            Err(e) => {
                error!("cannot listen on {bind}: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// `partgate healthcheck`: GET `url`, exit 0 on 2xx.
fn healthcheck(url: &str, timeout: f64) -> ExitCode {
    let timeout = Duration::try_from_secs_f64(timeout).unwrap_or(Duration::from_secs(3));
    match partgate::ops::admin::probe(url, timeout) {
        Ok(status) if (200..300).contains(&status) => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("{url}: HTTP {status}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{url}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the gateway until SIGINT/SIGTERM, then drains. With a config file, SIGHUP and changes
/// of the file reload it.
fn run<F, T>(start: F, config: Option<PathBuf>) -> ExitCode
where
    F: std::future::Future<Output = Result<(Gateway, T), partgate::error::StartError>>,
{
    raise_fd_limit();
    // Worker 0 of the gateway's thread-per-core runtimes (`gateway.worker_threads`, one per
    // core by default): the gateway starts the others itself (crates/runtime).
    let runtime = match runtime::workers::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        // Installed first: SIGHUP's default action would end the process.
        let mut signals = Signals::install();
        let (gateway, _keep) = match start.await {
            Ok(started) => started,
            Err(e) => {
                error!("{e}");
                return ExitCode::FAILURE;
            }
        };
        if let Some(path) = &config {
            gateway.watch_config(path.clone(), CONFIG_POLL);
        }
        signals.serve(&gateway, config.as_deref()).await;
        info!("shutting down: draining in-flight calls");
        gateway.shutdown().await;
        info!("stopped");
        ExitCode::SUCCESS
    })
}

/// Raises the open-file soft limit to the hard limit. Every client and part connection is a
/// descriptor, and the usual soft limit of 1,024 locks new clients out long before the hard
/// limit (often a million) would; `gateway.max_connections` is the gateway's own bound.
fn raise_fd_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => info!(limit, "open-file limit"),
        Err(e) => warn!(error = %e, "cannot raise the open-file limit"),
    }
}

/// The signals `run` reacts to: SIGINT/SIGTERM stop, SIGHUP reloads.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    hup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Self {
                term: signal(SignalKind::terminate()).ok(),
                hup: signal(SignalKind::hangup()).ok(),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// Returns on SIGINT or SIGTERM; reloads `config` on each SIGHUP meanwhile.
    async fn serve(&mut self, gateway: &Gateway, config: Option<&Path>) {
        while self.next_is_reload().await {
            match config {
                Some(path) => {
                    info!(path = %path.display(), "SIGHUP: reloading the configuration");
                    // A rejected config is logged and counted by the reload itself.
                    let _ = gateway.reload_from_file(path).await;
                }
                None => info!("SIGHUP ignored: the demo has no config file"),
            }
        }
    }

    /// Waits for the next signal: `true` for SIGHUP, `false` for SIGINT/SIGTERM.
    #[cfg(unix)]
    async fn next_is_reload(&mut self) -> bool {
        async fn recv(signal: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
            match signal {
                Some(signal) => signal.recv().await,
                None => std::future::pending().await,
            }
        }
        let Self { term, hup } = self;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => false,
            Some(()) = recv(term) => false,
            Some(()) = recv(hup) => true,
        }
    }

    #[cfg(not(unix))]
    async fn next_is_reload(&mut self) -> bool {
        let _ = tokio::signal::ctrl_c().await;
        false
    }
}

fn demo_banner(addr: std::net::SocketAddr) -> String {
    format!(
        r#"
partgate demo: a simulated fleet of 4 parts behind one gateway at {addr}

Connect with the Python SDK (pip install viam-sdk):

    import asyncio
    from viam.robot.client import RobotClient
    from viam.rpc.dial import DialOptions
    from viam.components.motor import Motor

    async def main():
        opts = RobotClient.Options(dial_options=DialOptions(insecure=True, disable_webrtc=True))
        robot = await RobotClient.at_address("{addr}", opts)
        print(robot.resource_names)
        motor = Motor.from_robot(robot, "sub1:motor1")
        await motor.set_power(0.5)
        print(await motor.is_powered())
        await robot.close()

    asyncio.run(main())
"#
    )
}
