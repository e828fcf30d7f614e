//! Configuration: Viam-compatible JSON (`network`, `remotes[]`) plus a gateway-only `gateway` object.
//!
//! Receives a JSON document; hands a validated [`Config`] to the gateway, or every problem found
//! with its JSON path. Viam-owned objects tolerate unknown keys (a robot config's blocks paste in
//! unchanged); the gateway-owned `gateway` object rejects them.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    path::Path,
    time::Duration,
};

use serde::Deserialize;

use crate::auth::{API_KEY, AuthSettings, LOCATION_SECRET, Secret};
use crate::error::{ConfigError, ConfigProblem};
pub use crate::tls::TlsFiles;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct Config {
    /// Listening settings (Viam's `network` block).
    #[serde(default)]
    pub network: NetworkConfig,
    /// The downstream parts (Viam's `remotes` entries; a sub-part is a remote too).
    #[serde(default)]
    pub remotes: Vec<RemoteConfig>,
    /// Gateway-only settings.
    #[serde(default)]
    pub gateway: GatewaySettings,
    /// Client authentication (Viam's `auth` block); absent: no authentication.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// Top-level keys of a full robot config (`components`, `services`, ...): logged and ignored.
    #[serde(flatten)]
    pub ignored: serde_json::Map<String, serde_json::Value>,
}

/// Viam's `network` block.
#[derive(Debug, Clone, Deserialize)]
pub struct NetworkConfig {
    /// Address the gateway listens on.
    #[serde(default = "default_bind")]
    pub bind_address: String,
    /// The gateway's host name: token audience and a valid location-secret entity.
    #[serde(default)]
    pub fqdn: Option<String>,
    /// PEM certificate chain; with `tls_key_file` the port speaks TLS instead of h2c.
    #[serde(default)]
    pub tls_cert_file: Option<String>,
    /// PEM private key for `tls_cert_file`.
    #[serde(default)]
    pub tls_key_file: Option<String>,
}

/// Viam's `auth` block.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct AuthConfig {
    /// Credential handlers (`robot-location-secret`, `api-key`).
    #[serde(default)]
    pub handlers: Vec<AuthHandlerConfig>,
}

/// One entry of `auth.handlers`.
#[derive(Debug, Clone, Deserialize)]
pub struct AuthHandlerConfig {
    /// `robot-location-secret` or `api-key`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Handler config: `{"secret": ..}`/`{"secrets": [..]}`, or `{"<key id>": "<key>", ..}`.
    #[serde(default)]
    pub config: serde_json::Map<String, serde_json::Value>,
}

/// One downstream part, with Viam's remote keys.
#[derive(Debug, Clone, Deserialize)]
pub struct RemoteConfig {
    /// Part name, `^[a-zA-Z0-9][-\w]*$`, unique; clients address its resources as `name:resource`.
    pub name: String,
    /// `host:port` of the part's gRPC listener.
    pub address: String,
    /// Plaintext h2c to the part (otherwise TLS).
    #[serde(default)]
    pub insecure: bool,
    /// When set, the part's resources are named `prefix + name` instead of `part:name`.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Credentials the gateway uses with this part.
    #[serde(default)]
    pub auth: Option<RemoteAuth>,
    /// Shorthand for a `robot-location-secret` credential.
    #[serde(default)]
    pub secret: Option<String>,
    /// How often a connected part is checked and its resource list refreshed (Go duration).
    #[serde(default)]
    pub connection_check_interval: Option<String>,
    /// How often a disconnected part is redialed (Go duration).
    #[serde(default)]
    pub reconnect_interval: Option<String>,
    /// Gateway-only: PEM certificates trusted for this part alone, instead of
    /// `gateway.parts_ca_file` or the system roots: CAs, or the part's own (self-signed)
    /// certificate, pinned.
    #[serde(default)]
    pub ca_file: Option<String>,
}

/// A remote's `auth` block.
#[derive(Debug, Clone, Deserialize)]
pub struct RemoteAuth {
    /// The entity to authenticate as.
    #[serde(default)]
    pub entity: Option<String>,
    /// The credential.
    #[serde(default)]
    pub credentials: Option<RemoteCredentials>,
}

/// A remote's `auth.credentials` block.
#[derive(Clone, Deserialize)]
pub struct RemoteCredentials {
    /// `robot-location-secret` or `api-key`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The secret itself.
    pub payload: String,
}

impl std::fmt::Debug for RemoteCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a secret, not even in debug output.
        f.debug_struct("RemoteCredentials")
            .field("type", &self.kind)
            .finish_non_exhaustive()
    }
}

/// Gateway-only settings (the `gateway` object). Unknown keys are errors.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySettings {
    /// The remote whose resources need no prefix and which takes single-computer methods.
    #[serde(default)]
    pub main_part: Option<String>,
    /// Deadline for a call's response headers when the client sets none (Go duration).
    #[serde(default = "default_timeout")]
    pub default_timeout: String,
    /// Calls in flight per part before new ones are shed with RESOURCE_EXHAUSTED.
    #[serde(default = "default_concurrency")]
    pub max_concurrent_calls_per_part: usize,
    /// Largest client message the gateway buffers, in bytes.
    #[serde(default = "default_message_size")]
    pub max_message_size: usize,
    /// How long dialing a part may take (Go duration).
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: String,
    /// HTTP/2 keepalive ping interval to parts; a dead part is noticed within interval + timeout.
    #[serde(default = "default_keepalive_interval")]
    pub keepalive_interval: String,
    /// How long a keepalive ping may go unanswered before the connection is dropped.
    #[serde(default = "default_keepalive_timeout")]
    pub keepalive_timeout: String,
    /// How long in-flight calls may run after SIGTERM before the gateway exits.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout: String,
    /// How long a client has, from connecting, to send its first request head (the HTTP/2
    /// preface, or an HTTP/1.1 request head; each later HTTP/1.1 head too) before the
    /// connection is closed, like nginx's `client_header_timeout`. Read at start.
    #[serde(default = "default_client_header_timeout")]
    pub client_header_timeout: String,
    /// An HTTP/2 client connection with no call for this long is closed with GOAWAY (gRPC
    /// clients reconnect on their next call); "0s" keeps idle connections open. Read at start.
    #[serde(default = "default_client_idle_timeout")]
    pub client_idle_timeout: String,
    /// Calls one client (an authenticated entity, else an address) may have in flight to one
    /// part; past it the client's new calls to that part get RESOURCE_EXHAUSTED, so one client
    /// cannot take all of `max_concurrent_calls_per_part` from the others. Reloadable.
    #[serde(default = "default_max_calls_per_client")]
    pub max_calls_per_client: usize,
    /// Bytes of unfinished first messages (read to find the resource name) one client
    /// connection may have the gateway hold; a call past it gets RESOURCE_EXHAUSTED. Read at
    /// start.
    #[serde(default = "default_max_buffered_per_connection")]
    pub max_buffered_per_connection: usize,
    /// The same bound for all clients together. Read at start.
    #[serde(default = "default_max_buffered_total")]
    pub max_buffered_total: usize,
    /// Client connections open at once on each listener; one accepted beyond it is closed at
    /// once. The gateway raises its open-file limit to the hard limit at start; keep this below
    /// that, with room for the parts' connections.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Extra `ip:port` serving only `/metrics`, `/healthz`, `/readyz` and `/statusz` (from the
    /// moment the config is loaded, before the parts are); absent: only the main port serves them.
    #[serde(default)]
    pub admin_address: Option<String>,
    /// `/readyz` answers 503 unless every part is connected (also per probe: `?all_parts=1`).
    #[serde(default)]
    pub ready_requires_all_parts: bool,
    /// Extra host names accepted as the entity of a location secret.
    #[serde(default)]
    pub auth_entities: Vec<String>,
    /// Parts an API key may reach, by key id; keys not listed reach every part.
    #[serde(default)]
    pub api_key_parts: HashMap<String, Vec<String>>,
    /// Lifetime of issued tokens (Go duration); absent or `"0"`: tokens never expire.
    #[serde(default)]
    pub token_lifetime: Option<String>,
    /// PEM PKCS#8 Ed25519 key that signs tokens (share it between replicas); absent: generated.
    #[serde(default)]
    pub signing_key_file: Option<String>,
    /// PEM CA bundle for verifying TLS parts, instead of the system roots.
    #[serde(default)]
    pub parts_ca_file: Option<String>,
    /// Worker threads, each a single-threaded runtime with its own connection to every part
    /// (read at start, not reloaded); absent: one per core (crates/runtime, `workers`).
    #[serde(default)]
    pub worker_threads: Option<usize>,
    /// How long an idle worker keeps polling its sockets after the last data it read before it
    /// sleeps (Go duration, at most `1ms`; `"0s"`: never, the default). Cuts the latency of
    /// calls at low concurrency on virtual machines, at the cost of CPU; see README "Spinning
    /// (opt-in)".
    #[serde(default = "default_idle_spin")]
    pub idle_spin: String,
    /// How long a worker that has sent a request to a part polls for the answer before it
    /// sleeps (Go duration, at most `1ms`; `"0s"`: never, the default). Busy polling: off by
    /// default so a gateway on a small box spends no CPU waiting; see README "Spinning
    /// (opt-in)".
    #[serde(default = "default_answer_spin")]
    pub answer_spin: String,
    /// WebRTC ingress: signaling on the main port, gRPC over data channels on UDP.
    #[serde(default)]
    pub webrtc: WebRtcConfig,
}

/// The `gateway.webrtc` object. Unknown keys are errors.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebRtcConfig {
    /// Serve `SignalingService` and accept WebRTC peers (the SDKs' preferred transport).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// IP the UDP socket binds; absent: the IP of `network.bind_address`.
    #[serde(default)]
    pub udp_bind_ip: Option<String>,
    /// Inclusive UDP port range, `"50000-50100"`; absent: any free port.
    #[serde(default)]
    pub udp_port_range: Option<String>,
    /// Addresses advertised instead of the bound one (NAT 1:1, containers).
    #[serde(default)]
    pub public_ips: Vec<String>,
    /// STUN/TURN servers handed to callers by `OptionalWebRTCConfig` (credentials are secrets:
    /// `${env:VAR}` / `${file:/path}` work, and they are never logged).
    #[serde(default)]
    pub ice_servers: Vec<IceServerConfig>,
    /// Extra `rpc-host` values accepted by signaling besides `network.fqdn` and the listen
    /// addresses.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// WebRTC peers at once; further offers fail with RESOURCE_EXHAUSTED.
    #[serde(default = "default_max_peers")]
    pub max_peers: usize,
    /// Time a caller has from its offer to an open data channel (Go duration).
    #[serde(default = "default_webrtc_connect_timeout")]
    pub connect_timeout: String,
}

/// One entry of `gateway.webrtc.ice_servers` (the shape of `proto.rpc.webrtc.v1.ICEServer`).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IceServerConfig {
    /// `stun:` / `turn:` / `turns:` URLs.
    pub urls: Vec<String>,
    /// TURN user name.
    #[serde(default)]
    pub username: Option<String>,
    /// TURN credential (a secret).
    #[serde(default)]
    pub credential: Option<String>,
}

impl std::fmt::Debug for IceServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a credential, not even in debug output.
        f.debug_struct("IceServerConfig")
            .field("urls", &self.urls)
            .finish_non_exhaustive()
    }
}

/// How the WebRTC UDP endpoint binds and what it advertises.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// IP the UDP socket binds (unspecified = every interface).
    pub bind_ip: IpAddr,
    /// Inclusive UDP port range to bind in; `None`: any free port.
    pub port_range: Option<(u16, u16)>,
    /// Addresses advertised as host candidates instead of the bound ones (NAT 1:1, Docker).
    pub public_ips: Vec<IpAddr>,
    /// Time a peer has from its offer/answer to an open `data` channel.
    pub connect_timeout: Duration,
    /// Peers at once; further offers fail (the transport's `TooManyPeers`).
    pub max_peers: usize,
}

/// Validated WebRTC settings (present only when enabled).
#[derive(Debug, Clone)]
pub struct WebRtcSettings {
    /// How the UDP endpoint binds and what it advertises.
    pub transport: TransportConfig,
    /// ICE servers for callers.
    pub ice_servers: Vec<IceServer>,
    /// Extra accepted `rpc-host` values (`network.fqdn` included).
    pub hosts: Vec<String>,
}

/// A validated ICE server.
#[derive(Debug, Clone)]
pub struct IceServer {
    /// URLs.
    pub urls: Vec<String>,
    /// TURN user name (empty: none).
    pub username: String,
    /// TURN credential.
    pub credential: Secret,
}

/// A validated part, with durations parsed. Equal specs mean a reload keeps the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartSpec {
    /// Part name.
    pub name: String,
    /// `host:port`.
    pub address: String,
    /// Plaintext h2c.
    pub insecure: bool,
    /// Name prefix string, if any.
    pub prefix: Option<String>,
    /// Whether this is the main part.
    pub main: bool,
    /// Check/refresh interval.
    pub check_interval: Duration,
    /// Redial interval.
    pub reconnect_interval: Duration,
    /// Credentials the gateway presents to this part.
    pub credentials: Option<PartCredentials>,
    /// Contents of `remotes[].ca_file`: the certificates trusted for this part alone (so a
    /// reload that changes them re-dials it); `None`: `parts_ca_pem` or the system roots.
    pub ca_pem: Option<Vec<u8>>,
}

/// What the gateway authenticates to a part with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartCredentials {
    /// Entity (defaults to the part's address, as Viam clients do).
    pub entity: String,
    /// Credential type.
    pub kind: String,
    /// The secret.
    pub payload: Secret,
}

/// Validated, typed settings the gateway runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Listen address.
    pub bind: SocketAddr,
    /// Parts, in config order.
    pub parts: Vec<PartSpec>,
    /// Default response-header deadline.
    pub default_timeout: Duration,
    /// Per-part concurrency limit.
    pub max_concurrent_calls_per_part: usize,
    /// Message size limit.
    pub max_message_size: usize,
    /// Dial timeout.
    pub connect_timeout: Duration,
    /// Keepalive interval.
    pub keepalive_interval: Duration,
    /// Keepalive timeout.
    pub keepalive_timeout: Duration,
    /// Drain timeout on shutdown.
    pub drain_timeout: Duration,
    /// Time a client has to send a request head.
    pub client_header_timeout: Duration,
    /// An HTTP/2 client connection idle this long is closed (zero: never).
    pub client_idle_timeout: Duration,
    /// Calls one client may have in flight to one part.
    pub max_calls_per_client: usize,
    /// Unfinished first-message bytes held per client connection.
    pub max_buffered_per_connection: usize,
    /// Unfinished first-message bytes held in all.
    pub max_buffered_total: usize,
    /// Client connections open at once per listener.
    pub max_connections: usize,
    /// Address of the separate operations listener, if any.
    pub admin: Option<SocketAddr>,
    /// `/readyz` requires every part to be connected.
    pub ready_requires_all_parts: bool,
    /// The bind address as written (a valid location-secret entity).
    pub bind_text: String,
    /// Client authentication; `None`: none.
    pub auth: Option<AuthSettings>,
    /// TLS on the listener; `None`: h2c.
    pub tls: Option<TlsFiles>,
    /// PEM CA bundle for TLS parts; `None`: system roots.
    pub parts_ca_pem: Option<Vec<u8>>,
    /// Worker threads (crates/runtime, `workers`); `None`: one per core. Only read at start.
    pub worker_threads: Option<usize>,
    /// Idle workers' spin window (crates/runtime, `workers`); zero: off. Reloadable.
    pub idle_spin: Duration,
    /// How long a worker waits awake for a part's answer (crates/runtime, `workers`); zero: off.
    /// Reloadable.
    pub answer_spin: Duration,
    /// WebRTC ingress; `None`: disabled. Only read at start.
    pub webrtc: Option<WebRtcSettings>,
}

fn default_bind() -> String {
    "0.0.0.0:8080".to_owned()
}
fn default_timeout() -> String {
    "10m".to_owned()
}
fn default_concurrency() -> usize {
    4096
}
fn default_message_size() -> usize {
    32 * 1024 * 1024
}
fn default_connect_timeout() -> String {
    "5s".to_owned()
}
fn default_keepalive_interval() -> String {
    "5s".to_owned()
}
fn default_keepalive_timeout() -> String {
    "5s".to_owned()
}
fn default_idle_spin() -> String {
    "0s".to_owned()
}
fn default_answer_spin() -> String {
    "0s".to_owned()
}

/// The longest `gateway.idle_spin` or `gateway.answer_spin` accepted: past this a worker burns
/// CPU for no latency gain (a reply that takes longer than a millisecond is no wake-up away).
pub const MAX_SPIN: Duration = Duration::from_millis(1);

fn default_drain_timeout() -> String {
    "30s".to_owned()
}
fn default_client_header_timeout() -> String {
    "10s".to_owned()
}
fn default_client_idle_timeout() -> String {
    "5m".to_owned()
}
fn default_max_calls_per_client() -> usize {
    256
}
fn default_max_buffered_per_connection() -> usize {
    64 * 1024 * 1024
}
fn default_max_buffered_total() -> usize {
    512 * 1024 * 1024
}
fn default_max_connections() -> usize {
    10_000
}
fn default_true() -> bool {
    true
}
fn default_max_peers() -> usize {
    256
}
fn default_webrtc_connect_timeout() -> String {
    "10s".to_owned()
}

impl Default for WebRtcConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            udp_bind_ip: None,
            udp_port_range: None,
            public_ips: Vec::new(),
            ice_servers: Vec::new(),
            hosts: Vec::new(),
            max_peers: default_max_peers(),
            connect_timeout: default_webrtc_connect_timeout(),
        }
    }
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            bind_address: default_bind(),
            fqdn: None,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

impl Default for GatewaySettings {
    fn default() -> Self {
        Self {
            main_part: None,
            default_timeout: default_timeout(),
            max_concurrent_calls_per_part: default_concurrency(),
            max_message_size: default_message_size(),
            connect_timeout: default_connect_timeout(),
            keepalive_interval: default_keepalive_interval(),
            keepalive_timeout: default_keepalive_timeout(),
            drain_timeout: default_drain_timeout(),
            client_header_timeout: default_client_header_timeout(),
            client_idle_timeout: default_client_idle_timeout(),
            max_calls_per_client: default_max_calls_per_client(),
            max_buffered_per_connection: default_max_buffered_per_connection(),
            max_buffered_total: default_max_buffered_total(),
            max_connections: default_max_connections(),
            idle_spin: default_idle_spin(),
            answer_spin: default_answer_spin(),
            admin_address: None,
            ready_requires_all_parts: false,
            auth_entities: Vec::new(),
            api_key_parts: HashMap::new(),
            token_lifetime: None,
            signing_key_file: None,
            parts_ca_file: None,
            worker_threads: None,
            webrtc: WebRtcConfig::default(),
        }
    }
}

// === impl Config ===

impl Config {
    /// A gateway config for parts on this machine, served plainly (h2c), with `main` as the
    /// main part: what `partgate demo` and the tests run. Each part is (name, address, prefix).
    pub fn local_fleet<'a>(
        bind: &str,
        main: &str,
        parts: impl IntoIterator<Item = (&'a str, SocketAddr, Option<&'a str>)>,
    ) -> Config {
        let remotes = parts
            .into_iter()
            .map(|(name, addr, prefix)| RemoteConfig {
                name: name.to_owned(),
                address: addr.to_string(),
                insecure: true,
                prefix: prefix.map(str::to_owned),
                auth: None,
                secret: None,
                connection_check_interval: Some("2s".into()),
                reconnect_interval: Some("250ms".into()),
                ca_file: None,
            })
            .collect();
        Config {
            network: NetworkConfig {
                bind_address: bind.to_owned(),
                ..NetworkConfig::default()
            },
            remotes,
            gateway: GatewaySettings {
                main_part: Some(main.to_owned()),
                ..GatewaySettings::default()
            },
            ..Config::default()
        }
    }

    /// Reads and parses a config file (not yet validated).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parses a config document; shape errors carry the JSON path where they are.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let de = &mut serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|err| {
            let path = err.path().to_string();
            let inner = err.into_inner();
            ConfigError::Parse {
                path,
                message: inner.to_string(),
            }
        })
    }

    /// Checks every semantic rule and returns typed settings, or every problem found.
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        let mut problems = Vec::new();
        let mut problem =
            |path: String, message: String| problems.push(ConfigProblem { path, message });

        let bind = parse_listen_address(&self.network.bind_address)
            .map_err(|e| problem("network.bind_address".into(), e))
            .ok();

        let g = &self.gateway;
        let mut duration = |path: &str, value: &str| match parse_go_duration(value) {
            Ok(d) => d,
            Err(e) => {
                problem(path.to_owned(), e);
                Duration::ZERO
            }
        };
        let default_timeout = duration("gateway.default_timeout", &g.default_timeout);
        let connect_timeout = duration("gateway.connect_timeout", &g.connect_timeout);
        let keepalive_interval = duration("gateway.keepalive_interval", &g.keepalive_interval);
        let keepalive_timeout = duration("gateway.keepalive_timeout", &g.keepalive_timeout);
        let drain_timeout = duration("gateway.drain_timeout", &g.drain_timeout);
        let client_header_timeout =
            duration("gateway.client_header_timeout", &g.client_header_timeout);
        let client_idle_timeout = duration("gateway.client_idle_timeout", &g.client_idle_timeout);
        let idle_spin = duration("gateway.idle_spin", &g.idle_spin);
        let answer_spin = duration("gateway.answer_spin", &g.answer_spin);
        for (path, spin) in [
            ("gateway.idle_spin", idle_spin),
            ("gateway.answer_spin", answer_spin),
        ] {
            if spin > MAX_SPIN {
                problem(
                    path.into(),
                    "must be at most 1ms (\"0s\" turns it off)".into(),
                );
            }
        }
        if g.max_connections == 0 {
            problem(
                "gateway.max_connections".into(),
                "must be at least 1".into(),
            );
        }
        if client_header_timeout.is_zero() && parse_go_duration(&g.client_header_timeout).is_ok() {
            problem(
                "gateway.client_header_timeout".into(),
                "must be longer than 0s".into(),
            );
        }

        let mut parts = Vec::with_capacity(self.remotes.len());
        let mut seen = HashSet::new();
        for (i, remote) in self.remotes.iter().enumerate() {
            let at = |key: &str| format!("remotes[{i}].{key}");
            if !valid_name(&remote.name) {
                problem(
                    at("name"),
                    format!(
                        "{:?} must match ^[a-zA-Z0-9][-\\w]*$ and be at most 60 characters",
                        remote.name
                    ),
                );
            } else if !seen.insert(remote.name.as_str()) {
                problem(at("name"), format!("duplicate part name {:?}", remote.name));
            }
            if !valid_address(&remote.address) {
                problem(
                    at("address"),
                    format!("{:?} is not a host:port address", remote.address),
                );
            }
            if let Some(prefix) = &remote.prefix
                && (prefix.is_empty() || prefix.contains(':'))
            {
                problem(
                    at("prefix"),
                    "must be non-empty and must not contain ':'".into(),
                );
            }
            let check_interval = remote.connection_check_interval.as_deref().unwrap_or("10s");
            let reconnect_interval = remote.reconnect_interval.as_deref().unwrap_or("1s");
            let mut positive = |key: &str, value: &str| match parse_go_duration(value) {
                Ok(d) if d.is_zero() => {
                    problem(at(key), "must be greater than zero".into());
                    d
                }
                Ok(d) => d,
                Err(e) => {
                    problem(at(key), e);
                    Duration::ZERO
                }
            };
            let check_interval = positive("connection_check_interval", check_interval);
            let reconnect_interval = positive("reconnect_interval", reconnect_interval);
            let ca_pem = remote
                .ca_file
                .as_deref()
                .and_then(|path| read_certificates(path, at("ca_file"), &mut problem));
            if remote.insecure && remote.ca_file.is_some() {
                problem(
                    at("ca_file"),
                    "only for parts reached over TLS: remove it or \"insecure\"".into(),
                );
            }
            parts.push(PartSpec {
                name: remote.name.clone(),
                address: remote.address.clone(),
                insecure: remote.insecure,
                prefix: remote.prefix.clone(),
                main: g.main_part.as_deref() == Some(remote.name.as_str()),
                check_interval,
                reconnect_interval,
                credentials: part_credentials(remote, &mut problem, i),
                ca_pem,
            });
        }
        let auth = self.auth_settings(&mut problem);
        let tls = self.tls_files(&mut problem);
        self.refuse_placeholder_secrets(&mut problem);
        let parts_ca_pem = g
            .parts_ca_file
            .as_deref()
            .and_then(|path| read_certificates(path, "gateway.parts_ca_file".into(), &mut problem));
        let admin = self.admin_address(bind, &mut problem);
        let webrtc = self.webrtc_settings(bind, &mut problem);
        let mut prefixes: Vec<(usize, &str)> = self
            .remotes
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.prefix.as_deref().map(|p| (i, p)))
            .collect();
        prefixes.sort_by_key(|(_, p)| *p);
        for pair in prefixes.windows(2) {
            if pair[0].1 == pair[1].1 {
                problem(
                    format!("remotes[{}].prefix", pair[1].0),
                    format!("prefix {:?} is used by another remote", pair[1].1),
                );
            }
        }
        if let Some(main) = &g.main_part {
            match self.remotes.iter().find(|r| &r.name == main) {
                None => problem(
                    "gateway.main_part".into(),
                    format!("{main:?} is not the name of a remote"),
                ),
                Some(r) if r.prefix.is_some() => problem(
                    "gateway.main_part".into(),
                    "the main part's resources are unprefixed: remove its prefix".into(),
                ),
                Some(_) => {}
            }
        }
        if g.max_concurrent_calls_per_part == 0 {
            problem(
                "gateway.max_concurrent_calls_per_part".into(),
                "must be greater than zero".into(),
            );
        }
        if g.worker_threads == Some(0) {
            problem(
                "gateway.worker_threads".into(),
                "must be at least 1 (or absent for one per core)".into(),
            );
        }
        if g.max_message_size < 1024 {
            problem(
                "gateway.max_message_size".into(),
                "must be at least 1024 bytes".into(),
            );
        }
        if g.max_calls_per_client == 0 {
            problem(
                "gateway.max_calls_per_client".into(),
                "must be at least 1".into(),
            );
        }
        if g.max_buffered_per_connection < g.max_message_size {
            problem(
                "gateway.max_buffered_per_connection".into(),
                "must be at least gateway.max_message_size (one whole message)".into(),
            );
        }
        if g.max_buffered_total < g.max_buffered_per_connection {
            problem(
                "gateway.max_buffered_total".into(),
                "must be at least gateway.max_buffered_per_connection".into(),
            );
        }

        match bind {
            Some(bind) if problems.is_empty() => Ok(Settings {
                bind,
                parts,
                default_timeout,
                max_concurrent_calls_per_part: g.max_concurrent_calls_per_part,
                max_message_size: g.max_message_size,
                connect_timeout,
                keepalive_interval,
                keepalive_timeout,
                drain_timeout,
                client_header_timeout,
                client_idle_timeout,
                max_calls_per_client: g.max_calls_per_client,
                max_buffered_per_connection: g.max_buffered_per_connection,
                max_buffered_total: g.max_buffered_total,
                max_connections: g.max_connections,
                admin,
                ready_requires_all_parts: g.ready_requires_all_parts,
                bind_text: self.network.bind_address.clone(),
                auth,
                tls,
                parts_ca_pem,
                worker_threads: g.worker_threads,
                idle_spin,
                answer_spin,
                webrtc,
            }),
            _ => Err(ConfigError::Invalid(problems)),
        }
    }
}

type Problem<'a> = &'a mut dyn FnMut(String, String);

// === impl Config: operations ===

impl Config {
    /// `gateway.admin_address`: a listen address (as `network.bind_address`) other than the main
    /// listener's.
    fn admin_address(&self, bind: Option<SocketAddr>, problem: Problem<'_>) -> Option<SocketAddr> {
        let text = self.gateway.admin_address.as_deref()?;
        let addr = parse_listen_address(text)
            .map_err(|e| problem("gateway.admin_address".into(), e))
            .ok()?;
        if bind.is_some_and(|b| b.port() != 0 && b.port() == addr.port() && b.ip() == addr.ip()) {
            problem(
                "gateway.admin_address".into(),
                "must differ from network.bind_address".into(),
            );
        }
        Some(addr)
    }
}

// === impl Config: WebRTC ===

impl Config {
    /// Validates `gateway.webrtc`; `None` when disabled.
    fn webrtc_settings(
        &self,
        bind: Option<SocketAddr>,
        problem: Problem<'_>,
    ) -> Option<WebRtcSettings> {
        let w = &self.gateway.webrtc;
        if !w.enabled {
            return None;
        }
        let at = |key: &str| format!("gateway.webrtc.{key}");
        let bind_ip = match &w.udp_bind_ip {
            Some(text) => text
                .parse::<IpAddr>()
                .map_err(|_| problem(at("udp_bind_ip"), format!("{text:?} is not an IP address"))),
            None => Ok(bind.map_or(IpAddr::from([0, 0, 0, 0]), |b| b.ip())),
        };
        let port_range = match w.udp_port_range.as_deref().map(parse_port_range) {
            None => Ok(None),
            Some(Ok(range)) => Ok(Some(range)),
            Some(Err(e)) => {
                problem(at("udp_port_range"), e);
                Err(())
            }
        };
        let mut public_ips = Vec::with_capacity(w.public_ips.len());
        for (i, text) in w.public_ips.iter().enumerate() {
            match text.parse::<IpAddr>() {
                Ok(ip) => public_ips.push(ip),
                Err(_) => problem(
                    format!("gateway.webrtc.public_ips[{i}]"),
                    format!("{text:?} is not an IP address"),
                ),
            }
        }
        let ice_servers = ice_servers(&w.ice_servers, problem);
        for (i, host) in w.hosts.iter().enumerate() {
            if host.is_empty() || host.chars().any(char::is_whitespace) {
                problem(
                    format!("gateway.webrtc.hosts[{i}]"),
                    "must be a non-empty host name without spaces".into(),
                );
            }
        }
        if w.max_peers == 0 {
            problem(at("max_peers"), "must be greater than zero".into());
        }
        let connect_timeout = match parse_go_duration(&w.connect_timeout) {
            Ok(d) if d.is_zero() => {
                problem(at("connect_timeout"), "must be greater than zero".into());
                Err(())
            }
            Ok(d) => Ok(d),
            Err(e) => {
                problem(at("connect_timeout"), e);
                Err(())
            }
        };
        let hosts = self.network.fqdn.iter().chain(&w.hosts).cloned().collect();
        Some(WebRtcSettings {
            transport: TransportConfig {
                bind_ip: bind_ip.ok()?,
                port_range: port_range.ok()?,
                public_ips,
                connect_timeout: connect_timeout.ok()?,
                max_peers: w.max_peers,
            },
            ice_servers,
            hosts,
        })
    }
}

fn ice_servers(list: &[IceServerConfig], problem: Problem<'_>) -> Vec<IceServer> {
    let mut out = Vec::with_capacity(list.len());
    for (i, server) in list.iter().enumerate() {
        let at = |key: &str| format!("gateway.webrtc.ice_servers[{i}].{key}");
        if server.urls.is_empty() {
            problem(at("urls"), "needs at least one URL".into());
        }
        for (j, url) in server.urls.iter().enumerate() {
            if !["stun:", "stuns:", "turn:", "turns:"]
                .iter()
                .any(|scheme| url.starts_with(scheme))
            {
                problem(
                    format!("gateway.webrtc.ice_servers[{i}].urls[{j}]"),
                    format!("{url:?} must start with stun:, stuns:, turn: or turns:"),
                );
            }
        }
        // Error messages name the reference, never the credential.
        let credential = match server.credential.as_deref().map(resolve_secret) {
            None => String::new(),
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                problem(at("credential"), e);
                String::new()
            }
        };
        out.push(IceServer {
            urls: server.urls.clone(),
            username: server.username.clone().unwrap_or_default(),
            credential: Secret::new(credential),
        });
    }
    out
}

/// `"50000-50100"` (inclusive, low <= high, no port 0).
fn parse_port_range(text: &str) -> Result<(u16, u16), String> {
    let bad = || format!("{text:?} is not a port range like \"50000-50100\"");
    let (low, high) = text.split_once('-').ok_or_else(bad)?;
    let low: u16 = low.trim().parse().map_err(|_| bad())?;
    let high: u16 = high.trim().parse().map_err(|_| bad())?;
    if low == 0 || low > high {
        return Err(bad());
    }
    Ok((low, high))
}

// === impl Config: auth and TLS ===

impl Config {
    /// Validates `auth` and the gateway's auth settings; `None` without an `auth` block.
    fn auth_settings(&self, problem: Problem<'_>) -> Option<AuthSettings> {
        let g = &self.gateway;
        let token_lifetime = match g.token_lifetime.as_deref().map(parse_go_duration) {
            None => None,
            Some(Ok(d)) if d.is_zero() => None,
            Some(Ok(d)) => Some(d),
            Some(Err(e)) => {
                problem("gateway.token_lifetime".into(), e);
                None
            }
        };
        let signing_key_pem = g.signing_key_file.as_deref().and_then(|path| {
            let read = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"));
            let checked = read.and_then(|pem| {
                crate::auth::token::Signer::new(Some(&pem), "check", None)
                    .map(|_| pem)
                    .map_err(|e| format!("{path} is {e}"))
            });
            checked
                .map_err(|e| problem("gateway.signing_key_file".into(), e))
                .ok()
        });
        let auth = self.auth.as_ref()?;
        let mut settings = AuthSettings {
            entities: self
                .network
                .fqdn
                .iter()
                .chain(&g.auth_entities)
                .cloned()
                .collect(),
            audience: self
                .network
                .fqdn
                .clone()
                .unwrap_or_else(|| "partgate".to_owned()),
            token_lifetime,
            signing_key_pem,
            ..AuthSettings::default()
        };
        for (i, handler) in auth.handlers.iter().enumerate() {
            let at = format!("auth.handlers[{i}]");
            match handler.kind.as_str() {
                LOCATION_SECRET => location_secrets(&handler.config, &at, &mut settings, problem),
                API_KEY => api_keys(&handler.config, &at, &mut settings, problem),
                other => problem(
                    format!("{at}.type"),
                    format!("unsupported handler type {other:?}"),
                ),
            }
        }
        if auth.handlers.is_empty() {
            problem(
                "auth.handlers".into(),
                "an auth block needs at least one handler".into(),
            );
        }
        for (key, parts) in &g.api_key_parts {
            let at = format!("gateway.api_key_parts.{key}");
            if !settings.api_keys.contains_key(key) {
                problem(at.clone(), "not the id of a configured API key".into());
            }
            for part in parts
                .iter()
                .filter(|p| !self.remotes.iter().any(|r| &&r.name == p))
            {
                problem(at.clone(), format!("{part:?} is not the name of a remote"));
            }
        }
        settings.api_key_parts = g.api_key_parts.clone();
        Some(settings)
    }

    fn tls_files(&self, problem: Problem<'_>) -> Option<TlsFiles> {
        let n = &self.network;
        match (&n.tls_cert_file, &n.tls_key_file) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                let files = TlsFiles {
                    cert: cert.into(),
                    key: key.into(),
                };
                match crate::tls::load_server_config(&files) {
                    Ok(_) => Some(files),
                    Err(e) => {
                        problem("network.tls_cert_file".into(), e.to_string());
                        None
                    }
                }
            }
            _ => {
                problem(
                    "network".into(),
                    "tls_cert_file and tls_key_file go together".into(),
                );
                None
            }
        }
    }
}

fn location_secrets(config: &Map, at: &str, settings: &mut AuthSettings, problem: Problem<'_>) {
    let listed = config
        .get("secrets")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten();
    for (j, value) in config.get("secret").into_iter().chain(listed).enumerate() {
        match value.as_str().map(resolve_secret) {
            Some(Ok(secret)) if !secret.is_empty() => {
                settings.location_secrets.push(Secret::new(secret))
            }
            Some(Err(e)) => problem(format!("{at}.config.secrets[{j}]"), e),
            _ => problem(
                format!("{at}.config.secrets[{j}]"),
                "must be a non-empty string".into(),
            ),
        }
    }
    if settings.location_secrets.is_empty() {
        problem(
            format!("{at}.config"),
            "needs \"secret\" or \"secrets\"".into(),
        );
    }
}

fn api_keys(config: &Map, at: &str, settings: &mut AuthSettings, problem: Problem<'_>) {
    // Like viam-server: every key but `keys`/`key` is a key id mapping to its key.
    for (id, value) in config
        .iter()
        .filter(|(id, _)| *id != "keys" && *id != "key")
    {
        match value.as_str().map(resolve_secret) {
            Some(Ok(key)) if !key.is_empty() => {
                settings.api_keys.insert(id.clone(), Secret::new(key));
            }
            Some(Err(e)) => problem(format!("{at}.config.{id}"), e),
            _ => problem(
                format!("{at}.config.{id}"),
                "must be a non-empty string".into(),
            ),
        }
    }
    if settings.api_keys.is_empty() {
        problem(
            format!("{at}.config"),
            "needs at least one \"<key id>\": \"<key>\" entry".into(),
        );
    }
}

type Map = serde_json::Map<String, serde_json::Value>;

/// A PEM file of trusted certificates (`gateway.parts_ca_file`, `remotes[].ca_file`): its
/// contents, or a problem at `at` when it cannot be read or holds no certificate.
fn read_certificates(path: &str, at: String, problem: Problem<'_>) -> Option<Vec<u8>> {
    let pem = std::fs::read(path)
        .map_err(|e| problem(at.clone(), format!("cannot read {path}: {e}")))
        .ok()?;
    match crate::tls::parse_certificates(&pem) {
        Ok(_) => Some(pem),
        Err(e) => {
            problem(at, format!("{path}: {e}"));
            None
        }
    }
}

/// A remote's credentials: `auth.credentials`, or the `secret` shorthand (a location secret).
/// The entity defaults to the part's address, as Viam's own clients do.
fn part_credentials(
    remote: &RemoteConfig,
    problem: Problem<'_>,
    i: usize,
) -> Option<PartCredentials> {
    let entity = remote
        .auth
        .as_ref()
        .and_then(|a| a.entity.clone())
        .unwrap_or_else(|| remote.address.clone());
    let (kind, payload, at) = match (
        remote.auth.as_ref().and_then(|a| a.credentials.as_ref()),
        &remote.secret,
    ) {
        (Some(c), _) => (
            c.kind.clone(),
            c.payload.clone(),
            format!("remotes[{i}].auth.credentials.payload"),
        ),
        (None, Some(secret)) => (
            LOCATION_SECRET.to_owned(),
            secret.clone(),
            format!("remotes[{i}].secret"),
        ),
        (None, None) => return None,
    };
    match resolve_secret(&payload) {
        Ok(payload) if !payload.is_empty() => Some(PartCredentials {
            entity,
            kind,
            payload: Secret::new(payload),
        }),
        Ok(_) => {
            problem(at, "must not be empty".into());
            None
        }
        Err(e) => {
            problem(at, e);
            None
        }
    }
}

/// A secret as written, or read from `${env:VAR}` / `${file:/path}` so it stays out of images.
/// Error messages name the reference, never the value.
pub fn resolve_secret(text: &str) -> Result<String, String> {
    let Some(reference) = text.strip_prefix("${").and_then(|r| r.strip_suffix('}')) else {
        return Ok(text.to_owned());
    };
    if let Some(var) = reference.strip_prefix("env:") {
        return std::env::var(var).map_err(|_| format!("environment variable {var} is not set"));
    }
    if let Some(path) = reference.strip_prefix("file:") {
        return std::fs::read_to_string(path)
            .map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
            .map_err(|e| format!("cannot read secret file {path}: {e}"));
    }
    Err(format!(
        "unknown secret reference ${{{reference}}}; use ${{env:VAR}} or ${{file:/path}}"
    ))
}

/// A listen address in the forms viam-server (Go's `net.Listen`) accepts: `ip:port`,
/// `[v6]:port`, `:port`, or `host:port` with a host name (`localhost`) resolved now.
///
/// `:port` is every IPv4 interface (`0.0.0.0`, like the default), not Go's dual-stack `[::]`:
/// it then also works on hosts and containers without IPv6; write `[::]:port` for both
/// families. Like Go, a name with several addresses listens on one of them: the first IPv4
/// address, else the first (so `localhost` is `127.0.0.1` where /etc/hosts also lists `::1`).
pub fn parse_listen_address(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let bad =
        || format!("{text:?} is not a listen address (ip:port, [ipv6]:port, :port or host:port)");
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() {
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    // An IP literal that failed to parse above (a bare IPv6 address, a bad bracket) is no name.
    if host.contains([':', '[', ']']) || host.chars().any(char::is_whitespace) {
        return Err(bad());
    }
    let resolved: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .map_err(|e| format!("{text:?}: cannot resolve {host:?}: {e}"))?
        .collect();
    resolved
        .iter()
        .find(|a| a.is_ipv4())
        .or(resolved.first())
        .copied()
        .ok_or_else(|| format!("{text:?}: {host:?} resolves to no address"))
}

/// The shortest secret the gateway accepts from clients (API keys, location secrets): 16 bytes
/// of random characters are past guessing, and `deploy/secrets/generate.sh` makes 48.
pub const MIN_CLIENT_SECRET_LEN: usize = 16;

/// Where a secret came from, for a message that must not show the secret itself.
fn secret_source(text: &str) -> String {
    if text.starts_with("${") {
        format!(" (from {text})")
    } else {
        String::new()
    }
}

// === impl Config: placeholder secrets ===

impl Config {
    /// Refuses secrets left as an example's placeholder (`REPLACE-ME`, `CHANGE-ME`, ...), so a
    /// deployment never runs on a credential printed in this repository; secrets clients present
    /// (API keys, location secrets) must also be at least [`MIN_CLIENT_SECRET_LEN`] bytes.
    /// Credentials the gateway presents to parts and ICE credentials are chosen by their owners,
    /// so only placeholders are refused there. Empty and unreadable secrets are reported where
    /// they are resolved. Messages name the JSON path and reference, never the value.
    fn refuse_placeholder_secrets(&self, problem: Problem<'_>) {
        let mut check = |at: String, text: &str, from_clients: bool| {
            let Ok(value) = resolve_secret(text) else {
                return;
            };
            let from = secret_source(text);
            if crate::auth::token::placeholder(&value).is_some() {
                problem(
                    at,
                    format!(
                        "is an example placeholder{from}, not a secret: put the real one there"
                    ),
                );
            } else if from_clients && !value.is_empty() && value.len() < MIN_CLIENT_SECRET_LEN {
                problem(
                    at,
                    format!(
                        "is shorter than {MIN_CLIENT_SECRET_LEN} bytes{from}: use a long random \
                         secret (deploy/secrets/generate.sh makes one)"
                    ),
                );
            }
        };
        for (i, handler) in self.auth.iter().flat_map(|a| a.handlers.iter().enumerate()) {
            let at = format!("auth.handlers[{i}].config");
            let c = &handler.config;
            let entries: Vec<(String, &serde_json::Value)> = match handler.kind.as_str() {
                LOCATION_SECRET => {
                    let listed = c.get("secrets").and_then(|v| v.as_array());
                    let all = c
                        .get("secret")
                        .into_iter()
                        .chain(listed.into_iter().flatten());
                    all.enumerate()
                        .map(|(j, v)| (format!("{at}.secrets[{j}]"), v))
                        .collect()
                }
                API_KEY => c
                    .iter()
                    .filter(|(id, _)| *id != "keys" && *id != "key")
                    .map(|(id, v)| (format!("{at}.{id}"), v))
                    .collect(),
                _ => Vec::new(),
            };
            for (path, value) in entries {
                if let Some(text) = value.as_str() {
                    check(path, text, true);
                }
            }
        }
        for (i, remote) in self.remotes.iter().enumerate() {
            if let Some(secret) = &remote.secret {
                check(format!("remotes[{i}].secret"), secret, false);
            }
            let credentials = remote.auth.as_ref().and_then(|a| a.credentials.as_ref());
            if let Some(c) = credentials {
                let at = format!("remotes[{i}].auth.credentials.payload");
                check(at, &c.payload, false);
            }
        }
        let ice = self.gateway.webrtc.ice_servers.iter().enumerate();
        for (i, server) in ice {
            if let Some(credential) = &server.credential {
                let at = format!("gateway.webrtc.ice_servers[{i}].credential");
                check(at, credential, false);
            }
        }
        // A placeholder in gateway.signing_key_file is named by the key's own parser
        // (auth::token), with the rest of what can be wrong with that file.
    }
}

/// Viam's name rule: `^[a-zA-Z0-9][-\w]*$`, at most 60 characters.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 60
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c == '-' || c == '_' || c.is_alphanumeric())
}

fn valid_address(address: &str) -> bool {
    match address.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0),
        None => false,
    }
}

/// Parses a Go duration string (`"1s"`, `"1m30s"`, `"250ms"`, `"1.5h"`, `"0"`).
pub fn parse_go_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration (examples: \"500ms\", \"10s\", \"1m30s\")");
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.is_empty() {
        return Err(bad());
    }
    let mut rest = text;
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if num_len == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += value * scale;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

#[cfg(test)]
#[path = "config/tests.rs"]
mod tests;
