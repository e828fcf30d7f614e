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

/// Why a signing key could not be loaded. The text says what the file holds instead, in the
/// gateway's words (a line number, a PEM label, a key type), never a byte of the key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file does not hold a PEM PKCS#8 Ed25519 private key.
    #[error("not a PEM Ed25519 private key (PKCS#8): {0}")]
    NotEd25519Pem(String),
    /// Key generation failed.
    #[error("cannot generate a signing key")]
    Generate,
}

/// What the signing-key file tells people to put there.
const HOW_TO_MAKE_ONE: &str = "make one with `partgate keygen`";
/// Words the examples, deploy files and secret templates put where a secret goes: a value
/// containing one (in any case) is never a real secret. The one list for the signing key and
/// for the config's secrets (`config`'s placeholder check).
const PLACEHOLDERS: [&str; 6] = [
    "REPLACE-ME",
    "REPLACE_ME",
    "REPLACEME",
    "CHANGE-ME",
    "CHANGE_ME",
    "CHANGEME",
];

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
            Some(pem) => pkcs8_from_pem(pem)?,
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
            .map_err(|_| not_ed25519(&pkcs8))?;
        // Like viam-server: the key id is the base64url raw public key.
        let kid =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
        let decoding = DecodingKey::from_ed_components(&kid)
            .map_err(|_| KeyError::NotEd25519Pem("its public key is unusable".into()))?;
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

// === the signing-key file ===

/// The PKCS#8 DER of the one `PRIVATE KEY` block of a PEM file, or what is wrong with the file.
fn pkcs8_from_pem(pem: &[u8]) -> Result<Vec<u8>, KeyError> {
    let bad = |why: String| Err(KeyError::NotEd25519Pem(why));
    let Ok(text) = std::str::from_utf8(pem) else {
        return bad("the file is binary, not PEM text (a DER key? PEM is expected)".into());
    };
    if text.trim().is_empty() {
        return bad(format!("the file is empty; {HOW_TO_MAKE_ONE}"));
    }
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let Some(begin) = lines.iter().position(|l| l.starts_with("-----BEGIN ")) else {
        return bad(match placeholder(text) {
            Some(word) => {
                format!("found placeholder text ({word}) instead of a key; {HOW_TO_MAKE_ONE}")
            }
            None => format!("no -----BEGIN PRIVATE KEY----- line; {HOW_TO_MAKE_ONE}"),
        });
    };
    let label = lines[begin]
        .strip_prefix("-----BEGIN ")
        .and_then(|l| l.strip_suffix("-----"))
        .unwrap_or("");
    if label != "PRIVATE KEY" {
        return bad(other_block(label));
    }
    let Some(end) = lines[begin..]
        .iter()
        .position(|l| *l == "-----END PRIVATE KEY-----")
        .map(|i| begin + i)
    else {
        return bad("the PRIVATE KEY block has no -----END PRIVATE KEY----- line".into());
    };
    let mut body = String::new();
    for (i, line) in lines.iter().enumerate().take(end).skip(begin + 1) {
        if let Some(c) = line.chars().find(|c| !is_base64(*c)) {
            // Line numbers count from 1, as editors show them.
            let n = i + 1;
            return bad(match placeholder(line) {
                Some(word) => format!(
                    "line {n} holds placeholder text ({word}), not base64; {HOW_TO_MAKE_ONE}"
                ),
                None => format!("line {n} is not base64 (it has {})", describe(c)),
            });
        }
        body.push_str(line);
    }
    match base64::engine::general_purpose::STANDARD.decode(&body) {
        Ok(der) if !der.is_empty() => Ok(der),
        Ok(_) => bad("the PRIVATE KEY block is empty".into()),
        Err(_) => {
            bad("the base64 text of the PRIVATE KEY block is cut short or badly padded".into())
        }
    }
}

/// What a PEM block other than `PRIVATE KEY` is, and what to do about it.
fn other_block(label: &str) -> String {
    match label {
        "RSA PRIVATE KEY" => format!(
            "found an RSA private key (PKCS#1); tokens are signed with Ed25519: {HOW_TO_MAKE_ONE}"
        ),
        "EC PRIVATE KEY" => format!(
            "found an EC private key (SEC1); tokens are signed with Ed25519: {HOW_TO_MAKE_ONE}"
        ),
        "OPENSSH PRIVATE KEY" => format!("found an OpenSSH private key; {HOW_TO_MAKE_ONE}"),
        "ENCRYPTED PRIVATE KEY" => {
            "found an encrypted private key; the gateway needs it unencrypted".into()
        }
        "CERTIFICATE" | "PUBLIC KEY" => {
            format!("found a {label}, not a private key; {HOW_TO_MAKE_ONE}")
        }
        // A label is PEM framing, not key material; still, only a short, plain one is repeated.
        other if other.len() <= 40 && other.chars().all(|c| c.is_ascii_uppercase() || c == ' ') => {
            format!("found a {other} block, not a PRIVATE KEY; {HOW_TO_MAKE_ONE}")
        }
        _ => format!("the first PEM block is not a PRIVATE KEY; {HOW_TO_MAKE_ONE}"),
    }
}

/// What a PKCS#8 key that is not Ed25519 holds (`aws-lc-rs` tells the key types apart).
fn not_ed25519(pkcs8: &[u8]) -> KeyError {
    use aws_lc_rs::signature::{
        ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING, EcdsaKeyPair, RsaKeyPair,
    };
    let kind = if RsaKeyPair::from_pkcs8(pkcs8).is_ok() {
        "found an RSA key"
    } else if EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8).is_ok()
        || EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_ASN1_SIGNING, pkcs8).is_ok()
    {
        "found an EC key"
    } else {
        "the PRIVATE KEY block holds no Ed25519 key (another algorithm, or damaged)"
    };
    KeyError::NotEd25519Pem(format!(
        "{kind}; tokens are signed with Ed25519: {HOW_TO_MAKE_ONE}"
    ))
}

/// The first placeholder word in `text` (any case), if it holds one.
pub fn placeholder(text: &str) -> Option<&'static str> {
    let upper = text.to_ascii_uppercase();
    PLACEHOLDERS.into_iter().find(|w| upper.contains(w))
}

fn is_base64(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=')
}

/// A character that is not base64, named without repeating anything that could be a key.
fn describe(c: char) -> String {
    match c {
        ' ' | '\t' => "a space".into(),
        c if c.is_ascii_graphic() => format!("a '{c}'"),
        c if c.is_control() => "a control character".into(),
        _ => "a non-ASCII character".into(),
    }
}

#[cfg(test)]
mod tests;
