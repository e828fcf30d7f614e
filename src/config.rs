//! Configuration: Viam-compatible JSON (`network`, `remotes[]`) plus a gateway-only `gateway` object.
//!
//! Receives a JSON document; hands a validated [`Config`] to the gateway, or every problem found
//! with its JSON path. Viam-owned objects tolerate unknown keys (a robot config's blocks paste in
//! unchanged); the gateway-owned `gateway` object rejects them.

use std::{collections::HashSet, net::SocketAddr, path::Path, time::Duration};

use serde::Deserialize;

use crate::error::{ConfigError, ConfigProblem};

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
}

/// A validated part, with durations parsed.
#[derive(Debug, Clone)]
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
fn default_drain_timeout() -> String {
    "30s".to_owned()
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            bind_address: default_bind(),
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
        }
    }
}

// === impl Config ===

impl Config {
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

        let bind = match self.network.bind_address.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                problem(
                    "network.bind_address".into(),
                    format!("{:?} is not an ip:port address", self.network.bind_address),
                );
                None
            }
        };

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
            parts.push(PartSpec {
                name: remote.name.clone(),
                address: remote.address.clone(),
                insecure: remote.insecure,
                prefix: remote.prefix.clone(),
                main: g.main_part.as_deref() == Some(remote.name.as_str()),
                check_interval,
                reconnect_interval,
            });
        }
        for (i, remote) in self.remotes.iter().enumerate() {
            if !remote.insecure {
                problem(
                    format!("remotes[{i}].insecure"),
                    "TLS to parts is not supported yet: set \"insecure\": true".into(),
                );
            }
        }
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
        if g.max_message_size < 1024 {
            problem(
                "gateway.max_message_size".into(),
                "must be at least 1024 bytes".into(),
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
            }),
            _ => Err(ConfigError::Invalid(problems)),
        }
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
