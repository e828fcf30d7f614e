//! Stage `auth`, tokens: the gateway's Ed25519 signing key and the access tokens it issues and
//! checks (EdDSA JWTs with viam-server's claims: `sub`, `aud`, `iss`, `iat`, `jti`,
//! `rpc_creds_type`; `exp` only when a lifetime is configured).
//!
//! Receives an entity and credential type (issue) or an `authorization` header (verify); hands
//! back a token or the verified claims.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};

use crate::error::AuthFailure;

/// The claims of a gateway access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The authenticated entity (API key id, or the host name used with a location secret).
    pub sub: String,
    /// Audience: the gateway's name.
    pub aud: Vec<String>,
    /// Issuer: the gateway's name.
    pub iss: String,
    /// Issued at, seconds since the epoch.
    pub iat: u64,
    /// Unique token id.
    pub jti: String,
    /// The credential type that was presented (`api-key`, `robot-location-secret`).
    pub rpc_creds_type: String,
    /// Expiry, only with a configured lifetime (SDKs never refresh tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
}

/// Why a signing key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file is not PEM PKCS#8.
    #[error("signing key is not a PEM PKCS#8 private key: {0}")]
    Pem(String),
    /// The key is not Ed25519.
    #[error("signing key is not an Ed25519 key")]
    NotEd25519,
    /// Key generation failed.
    #[error("cannot generate a signing key")]
    Generate,
}

/// Signs and verifies the gateway's tokens.
pub struct Signer {
    encoding: EncodingKey,
    decoding: DecodingKey,
    kid: String,
    audience: String,
    lifetime: Option<Duration>,
    validation: Validation,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("kid", &self.kid)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

/// A fresh Ed25519 key as PKCS#8 PEM (for `partgate keygen`).
pub fn generate_pem() -> Result<String, KeyError> {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let der = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| KeyError::Generate)?;
    let body = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect();
    Ok(format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        lines.join("\n")
    ))
}

// === impl Signer ===

impl Signer {
    /// A signer from a PEM PKCS#8 Ed25519 key, or a fresh key when `pem` is `None`.
    pub fn new(
        pem: Option<&[u8]>,
        audience: &str,
        lifetime: Option<Duration>,
    ) -> Result<Self, KeyError> {
        let pkcs8: Vec<u8> = match pem {
            Some(pem) => rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(pem)
                .map_err(|e| KeyError::Pem(e.to_string()))?
                .secret_pkcs8_der()
                .to_vec(),
            None => {
                let rng = aws_lc_rs::rand::SystemRandom::new();
                Ed25519KeyPair::generate_pkcs8(&rng)
                    .map_err(|_| KeyError::Generate)?
                    .as_ref()
                    .to_vec()
            }
        };
        let pair = Ed25519KeyPair::from_pkcs8(&pkcs8)
            .or_else(|_| Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8))
            .map_err(|_| KeyError::NotEd25519)?;
        // Like viam-server: the key id is the base64url raw public key.
        let kid =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
        let decoding = DecodingKey::from_ed_components(&kid).map_err(|_| KeyError::NotEd25519)?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_audience(&[audience]);
        validation.set_issuer(&[audience]);
        validation.set_required_spec_claims(if lifetime.is_some() {
            &["sub", "aud", "exp"][..]
        } else {
            &["sub", "aud"][..]
        });
        validation.validate_exp = true;
        validation.leeway = 0;
        Ok(Self {
            encoding: EncodingKey::from_ed_der(&pkcs8),
            decoding,
            kid,
            audience: audience.to_owned(),
            lifetime,
            validation,
        })
    }

    /// Issues a token for an authenticated entity.
    pub fn issue(
        &self,
        entity: &str,
        creds_type: &str,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let claims = Claims {
            sub: entity.to_owned(),
            aud: vec![self.audience.clone()],
            iss: self.audience.clone(),
            iat: now.as_secs(),
            jti: uuid::Uuid::new_v4().to_string(),
            rpc_creds_type: creds_type.to_owned(),
            exp: self.lifetime.map(|l| (now + l).as_secs()),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.encoding)
    }

    /// Verifies a token; the error text follows goutils' messages.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthFailure> {
        // goutils' "unauthenticated: <reason>", without echoing decoder internals to clients.
        let invalid = || AuthFailure::InvalidToken("unauthenticated: invalid token");
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid())?;
        if header.kid.as_deref() != Some(self.kid.as_str()) {
            return Err(AuthFailure::InvalidToken(
                "unauthenticated: token was not signed by this gateway",
            ));
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidAudience => {
                    AuthFailure::InvalidToken("invalid audience")
                }
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthFailure::Expired,
                _ => invalid(),
            })?;
        if data.claims.sub.is_empty() {
            return Err(AuthFailure::InvalidToken("expected entity (sub) in claims"));
        }
        Ok(data.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_verify_and_carry_viam_claims() {
        let signer = Signer::new(None, "gw", None).unwrap();
        let token = signer.issue("key-id", "api-key").unwrap();
        let claims = signer.verify(&token).unwrap();
        assert_eq!(
            (claims.sub.as_str(), claims.rpc_creds_type.as_str()),
            ("key-id", "api-key")
        );
        assert_eq!(claims.aud, vec!["gw"]);
        assert!(
            claims.exp.is_none(),
            "no expiry by default: SDKs never refresh"
        );
    }

    #[test]
    fn foreign_and_tampered_tokens_are_rejected() {
        let a = Signer::new(None, "gw", None).unwrap();
        let b = Signer::new(None, "gw", None).unwrap();
        let token = b.issue("x", "api-key").unwrap();
        assert!(a.verify(&token).is_err(), "another gateway's key");
        let mut tampered = a.issue("x", "api-key").unwrap();
        tampered.push('A');
        assert!(a.verify(&tampered).is_err());
        assert!(a.verify("not a jwt").is_err());
    }

    #[test]
    fn a_shared_key_file_lets_replicas_accept_each_others_tokens() {
        let pem = generate_pem().unwrap();
        let a = Signer::new(Some(pem.as_bytes()), "gw", None).unwrap();
        let b = Signer::new(Some(pem.as_bytes()), "gw", None).unwrap();
        assert!(b.verify(&a.issue("x", "api-key").unwrap()).is_ok());
        let other_audience = Signer::new(Some(pem.as_bytes()), "other", None).unwrap();
        assert!(
            other_audience
                .verify(&a.issue("x", "api-key").unwrap())
                .is_err()
        );
    }

    #[test]
    fn expiry_applies_only_with_a_lifetime() {
        let signer = Signer::new(None, "gw", Some(Duration::from_secs(3600))).unwrap();
        let claims = signer
            .verify(&signer.issue("x", "api-key").unwrap())
            .unwrap();
        assert!(claims.exp.is_some());
        let expired = Signer::new(None, "gw", Some(Duration::ZERO)).unwrap();
        let token = expired.issue("x", "api-key").unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        assert!(expired.verify(&token).is_err());
    }

    #[test]
    fn bad_key_files_are_errors() {
        assert!(Signer::new(Some(b"garbage"), "gw", None).is_err());
    }
}
