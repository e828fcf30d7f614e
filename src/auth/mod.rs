//! Stage `auth`: who is calling. Issues tokens for credentials (`AuthService/Authenticate`, with
//! viam-server's `robot-location-secret` and `api-key` handlers) and turns every other call's
//! `authorization: Bearer <token>` into a [`Principal`], or an UNAUTHENTICATED error.
//!
//! Receives the request headers and the peer address; hands the call stack a principal whose
//! part scope the route stage enforces.

pub mod rate;
pub mod token;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;

use crate::error::{AuthFailure, Clipped, GatewayError};
use crate::proto::rpc::v1 as rpc;

/// The identity signaling established, carried by every request of a WebRTC peer. Only the
/// WebRTC ingress creates it; requests from the HTTP listener never carry extensions from the
/// wire.
#[derive(Debug, Clone)]
pub struct ChannelPrincipal(pub(crate) Principal);

/// Credential type of a location secret.
pub const LOCATION_SECRET: &str = "robot-location-secret";
/// Credential type of an API key.
pub const API_KEY: &str = "api-key";

/// A secret string that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The secret itself, for comparison or sending; never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Validated authentication settings.
#[derive(Debug, Clone, Default)]
pub struct AuthSettings {
    /// Location secrets (several, for rotation); empty: no location-secret handler.
    pub location_secrets: Vec<Secret>,
    /// API keys by key id; empty: no api-key handler.
    pub api_keys: HashMap<String, Secret>,
    /// Parts each limited API key may reach (by key id); keys not listed reach every part.
    pub api_key_parts: HashMap<String, Vec<String>>,
    /// Host names accepted as the entity of a location secret, besides the listen addresses.
    pub entities: Vec<String>,
    /// Token audience and issuer.
    pub audience: String,
    /// Token lifetime; `None`: tokens do not expire.
    pub token_lifetime: Option<Duration>,
    /// PEM PKCS#8 Ed25519 signing key; `None`: generated at start.
    pub signing_key_pem: Option<Vec<u8>>,
}

/// The authenticated caller of a call.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The entity the token was issued to (`None` when the gateway has no authentication).
    pub entity: Option<String>,
    /// Parts this caller may reach; `None`: all.
    pub parts: Option<Arc<[String]>>,
}

/// The gateway's authenticator.
pub struct Auth {
    settings: AuthSettings,
    signer: token::Signer,
    limiter: rate::FailureLimiter,
    entities: Vec<String>,
}

/// The peer address of the connection a request came on (set by the listener).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

// === impl Principal ===

impl Principal {
    /// The caller of a gateway without authentication.
    pub const fn anonymous() -> Self {
        Self {
            entity: None,
            parts: None,
        }
    }

    /// Whether the caller may reach `part`.
    pub fn may_reach(&self, part: &str) -> bool {
        self.parts
            .as_ref()
            .is_none_or(|parts| parts.iter().any(|p| p == part))
    }
}

// === impl Auth ===

impl Auth {
    /// Builds the authenticator; `bind` is the configured listen address, `local` the bound one.
    pub fn new(
        settings: AuthSettings,
        bind: &str,
        local: SocketAddr,
    ) -> Result<Self, token::KeyError> {
        let signer = token::Signer::new(
            settings.signing_key_pem.as_deref(),
            &settings.audience,
            settings.token_lifetime,
        )?;
        let port = local.port();
        let mut entities = settings.entities.clone();
        entities.extend([
            bind.to_owned(),
            local.to_string(),
            format!("localhost:{port}"),
            format!("127.0.0.1:{port}"),
        ]);
        entities.sort();
        entities.dedup();
        Ok(Self {
            settings,
            signer,
            limiter: rate::FailureLimiter::default(),
            entities,
        })
    }

    /// Checks a call's `authorization` header (goutils' codes and messages).
    pub fn verify(&self, headers: &HeaderMap) -> Result<Principal, GatewayError> {
        let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return Err(GatewayError::Unauthenticated(AuthFailure::Missing));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(GatewayError::Unauthenticated(AuthFailure::Malformed))?;
        let claims = self
            .signer
            .verify(token)
            .map_err(GatewayError::Unauthenticated)?;
        let parts = match claims.rpc_creds_type.as_str() {
            API_KEY => self
                .settings
                .api_key_parts
                .get(&claims.sub)
                .map(|p| Arc::from(p.as_slice())),
            _ => None,
        };
        Ok(Principal {
            entity: Some(claims.sub),
            parts,
        })
    }

    /// Answers `AuthService/Authenticate`.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
        req: rpc::AuthenticateRequest,
    ) -> Result<rpc::AuthenticateResponse, GatewayError> {
        if headers.contains_key(http::header::AUTHORIZATION) {
            return Err(GatewayError::InvalidArgument(
                "already authenticated; cannot re-authenticate".into(),
            ));
        }
        let creds = req
            .credentials
            .ok_or_else(|| GatewayError::InvalidArgument("credentials required".into()))?;
        let known = match creds.r#type.as_str() {
            LOCATION_SECRET => !self.settings.location_secrets.is_empty(),
            API_KEY => !self.settings.api_keys.is_empty(),
            _ => false,
        };
        if !known {
            let kind = &creds.r#type;
            return Err(GatewayError::InvalidArgument(format!(
                "do not know how to handle credential type {kind:?}"
            )));
        }
        if let Some(peer) = peer
            && let Err(wait) = self.limiter.check(peer)
        {
            return Err(GatewayError::RateLimited(format!(
                "too many failed authentication attempts; retry in {} s",
                wait.as_secs().max(1)
            )));
        }
        if !self.credentials_match(&req.entity, &creds) {
            if let Some(peer) = peer {
                self.limiter.fail(peer);
            }
            tracing::info!(
                entity = %Clipped(&req.entity),
                creds_type = %Clipped(&creds.r#type),
                "authentication failed"
            );
            return Err(GatewayError::Unauthenticated(
                AuthFailure::InvalidCredentials,
            ));
        }
        let access_token = self
            .signer
            .issue(&req.entity, &creds.r#type)
            .map_err(|e| GatewayError::Internal(format!("cannot sign token: {e}")))?;
        Ok(rpc::AuthenticateResponse { access_token })
    }

    fn credentials_match(&self, entity: &str, creds: &rpc::Credentials) -> bool {
        let payload = creds.payload.as_bytes();
        match creds.r#type.as_str() {
            LOCATION_SECRET => {
                // Compare with every secret (no early exit), then check the entity.
                let any = self
                    .settings
                    .location_secrets
                    .iter()
                    .fold(false, |found, s| {
                        constant_time_eq(s.expose().as_bytes(), payload) | found
                    });
                any && self.entities.iter().any(|e| e == entity)
            }
            API_KEY => self
                .settings
                .api_keys
                .get(entity)
                .is_some_and(|key| constant_time_eq(key.expose().as_bytes(), payload)),
            _ => false,
        }
    }

    /// Host names accepted as a location secret's entity.
    pub fn entities(&self) -> &[String] {
        &self.entities
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

#[cfg(test)]
mod tests;
