//! The backend process of the peer benches (`benches/compare.rs`, `benches/attack.rs`): the bench
//! binary re-executed with [`ROLE_ENV`] set, hosting the part `bench` (motor1, echo1, counter c1)
//! and a fleet of `fleet_parts` parts p0.. (motor1 each), every one a SimPart on its own port of
//! 127.0.0.1. It prints the addresses and serves until the parent closes its stdin (or dies).

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use sim::{PartSpec, SimPart};

use crate::peers::{self, Upstreams};
use crate::procs::Procs;
use crate::{BoxError, Res};

/// Set in the re-executed bench binary that plays the parts.
const ROLE_ENV: &str = "PARTGATE_COMPARE_ROLE";
/// How many fleet parts the backend starts (set by [`spawn`] alongside [`ROLE_ENV`]).
const FLEET_ENV: &str = "PARTGATE_COMPARE_BACKEND_FLEET";

/// Whether this process is the re-executed backend; `main` then calls [`run`] and nothing else.
pub fn is_backend() -> bool {
    std::env::var(ROLE_ENV).as_deref() == Ok("backend")
}

/// Runs the simulated parts until the parent closes our stdin (or dies).
pub fn run() -> Res<()> {
    let fleet_parts: usize = std::env::var(FLEET_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("{FLEET_ENV} is not set"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let single = SimPart::start(
            PartSpec {
                name: "bench".into(),
                motors: vec!["motor1".into()],
                echoes: vec!["echo1".into()],
                counters: vec!["c1".into()],
                ..Default::default()
            },
            any,
        )
        .await?;
        let mut parts = vec![single];
        for i in 0..fleet_parts {
            let spec = PartSpec {
                name: peers::part_name(i),
                motors: vec!["motor1".into()],
                ..Default::default()
            };
            parts.push(SimPart::start(spec, any).await?);
        }
        {
            let mut out = std::io::stdout().lock();
            for (i, part) in parts.iter().enumerate() {
                writeln!(out, "part {i} {}", part.addr())?;
            }
            writeln!(out, "ready")?;
            out.flush()?;
        }
        let (eof_tx, mut eof) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            let _ = eof_tx.send(());
        });
        // SimPart records every call (for tests); empty the logs so memory stays flat.
        let logs: Vec<_> = parts.iter().map(|p| p.log().clone()).collect();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = &mut eof => break,
                _ = tick.tick() => {
                    for log in &logs {
                        if let Ok(mut calls) = log.calls.lock() {
                            calls.clear();
                        }
                    }
                }
            }
        }
        Ok::<(), BoxError>(())
    })
}

/// Starts the backend with `fleet_parts` fleet parts; returns its PID and the part addresses
/// (single part, then the fleet).
pub fn spawn(procs: &Procs, fleet_parts: usize) -> Res<(u32, Upstreams)> {
    let mut child = Command::new(std::env::current_exe()?)
        .env(ROLE_ENV, "backend")
        .env(FLEET_ENV, fleet_parts.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("backend has no stdout")?;
    let pid = procs.add(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut addrs = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line == "ready" {
                let _ = tx.send(std::mem::take(&mut addrs));
                continue;
            }
            if let Some(addr) = line
                .split_whitespace()
                .nth(2)
                .and_then(|a| a.parse::<SocketAddr>().ok())
            {
                addrs.push(addr);
            }
        }
    });
    let addrs: Vec<SocketAddr> = rx
        .recv_timeout(Duration::from_secs(60))
        .map_err(|_| "backend did not report its parts within 60 s")?;
    let (single, fleet) = addrs.split_first().ok_or("backend reported no parts")?;
    if fleet.len() != fleet_parts {
        return Err(format!("backend reported {} fleet parts", fleet.len()).into());
    }
    Ok((
        pid,
        Upstreams {
            single: *single,
            fleet: fleet.to_vec(),
        },
    ))
}
