//! The `partgate` command: `run --config FILE`, `demo`, `check-config --config FILE`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use partgate::Gateway;
use partgate::config::Config;
use tracing::{error, info, warn};

/// A gateway that presents a fleet of Viam robot parts as one machine.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

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
    /// Validate a config file and print every problem with its JSON path.
    CheckConfig {
        /// JSON config file.
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PARTGATE_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match cli.command {
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
                Ok(settings) => run(async move {
                    Gateway::start(settings)
                        .await
                        .map(|g| (g, Vec::<partgate::demo::SimPart>::new()))
                }),
                Err(e) => {
                    error!("{}: {e}", config.display());
                    ExitCode::FAILURE
                }
            }
        }
        Command::Demo { bind } => run(async move {
            let (parts, config) = partgate::demo::start_demo(&bind).await.map_err(|source| {
                partgate::error::StartError::Bind {
                    addr: "127.0.0.1:0".into(),
                    source,
                }
            })?;
            let settings = config.validate()?;
            let gateway = Gateway::start(settings).await?;
            let addr = gateway.local_addr();
            info!("demo fleet: parts main (main part), sub1, sub2, cell (prefix \"cell-\")");
            println!("{}", demo_banner(addr));
            Ok((gateway, parts))
        }),
    }
}

/// Runs the gateway until SIGINT/SIGTERM, then drains.
fn run<F, T>(start: F) -> ExitCode
where
    F: std::future::Future<Output = Result<(Gateway, T), partgate::error::StartError>>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let (gateway, _keep) = match start.await {
            Ok(started) => started,
            Err(e) => {
                error!("{e}");
                return ExitCode::FAILURE;
            }
        };
        wait_for_signal().await;
        info!("shutting down: draining in-flight calls");
        gateway.shutdown().await;
        info!("stopped");
        ExitCode::SUCCESS
    })
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
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
