//! Stage `upstream`, TLS: how a part's certificate is verified. A chain to the trusted
//! certificates (webpki), or, as Go's crypto/x509 (viam-server's) does, a certificate that is
//! itself one of the trusted ones: pinned by exact DER match.
//!
//! Receives the part's certificate chain from rustls; hands back "verified" or an error that
//! says what was trusted and what the part presented (the pool shows it as the part's
//! `last_error`). webpki alone refuses a self-signed `openssl req -x509` certificate as a
//! server's own even when it is a trust anchor (`CaUsedAsEndEntity`: such a certificate says
//! `CA:TRUE`); a pinned certificate skips chain building and is still checked for its dates
//! and for the part's host name (its subjectAltName), like Go; the handshake signature is
//! verified with the crypto provider either way.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};

/// Where a part's trusted certificates come from, for error messages.
#[derive(Debug, Clone)]
pub enum TrustSource {
    /// The system's root store (no `gateway.parts_ca_file`, no `remotes[].ca_file`).
    System,
    /// A configured PEM file, named by its config key (`gateway.parts_ca_file`, ...).
    File(String),
}

impl std::fmt::Display for TrustSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::System => f.write_str("the system roots"),
            Self::File(key) => f.write_str(key),
        }
    }
}

/// A part's certificate is not trusted: neither one of the trusted certificates nor issued by
/// one of them.
#[derive(Debug, thiserror::Error)]
#[error(
    "the part's certificate (SHA-256 {fingerprint}) is not trusted: it is not one of the \
     certificates in {trusted} and no chain leads from it to one of them ({reason}); add the \
     part's own certificate or its CA's to {trusted}"
)]
pub struct NotTrusted {
    /// SHA-256 of the part's certificate, as `openssl x509 -fingerprint -sha256` prints it.
    pub fingerprint: String,
    /// Where the trusted certificates come from.
    pub trusted: TrustSource,
    /// What webpki said about the chain (`UnknownIssuer`, `CaUsedAsEndEntity`, ...).
    pub reason: String,
}

/// Verifies a part's certificate against `chain` (absent when nothing is trusted) and `pinned`.
#[derive(Debug)]
pub struct PartVerifier {
    chain: Option<Arc<WebPkiServerVerifier>>,
    pinned: Vec<CertificateDer<'static>>,
    source: TrustSource,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PartVerifier {
    /// A verifier trusting chains to `chain`'s roots and exactly the `pinned` certificates.
    pub fn new(
        chain: Option<Arc<WebPkiServerVerifier>>,
        pinned: Vec<CertificateDer<'static>>,
        source: TrustSource,
        algorithms: WebPkiSupportedAlgorithms,
    ) -> Self {
        Self {
            chain,
            pinned,
            source,
            algorithms,
        }
    }

    /// Says which certificate was refused and against what, for the errors a wrong or missing
    /// trust anchor gives; other errors (a wrong name, an expired certificate) speak for
    /// themselves.
    fn explain(&self, end_entity: &CertificateDer<'_>, error: rustls::Error) -> rustls::Error {
        // rustls maps webpki's chain-building errors it has no variant for (`CaUsedAsEndEntity`,
        // `EndEntityUsedAsCa`, path length or name constraints) to `Other`.
        let reason = match &error {
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
                "UnknownIssuer".to_owned()
            }
            rustls::Error::InvalidCertificate(CertificateError::BadSignature) => {
                "BadSignature".to_owned()
            }
            rustls::Error::InvalidCertificate(CertificateError::Other(other)) => other.to_string(),
            _ => return error,
        };
        let not_trusted = NotTrusted {
            fingerprint: fingerprint(end_entity),
            trusted: self.source.clone(),
            reason,
        };
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
            not_trusted,
        ))))
    }
}

impl ServerCertVerifier for PartVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self
            .pinned
            .iter()
            .any(|c| c.as_ref() == end_entity.as_ref())
        {
            verify_pinned(end_entity, server_name, now)?;
            return Ok(ServerCertVerified::assertion());
        }
        let verified = match &self.chain {
            Some(chain) => {
                chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            }
            None => Err(CertificateError::UnknownIssuer.into()),
        };
        verified.map_err(|e| self.explain(end_entity, e))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// What Go checks of a leaf that is itself a trusted certificate: its dates and that it names
/// the host (subjectAltName DNS or IP entries). Not checked: the CA flag, key usages.
fn verify_pinned(
    cert: &CertificateDer<'_>,
    server_name: &ServerName<'_>,
    now: UnixTime,
) -> Result<(), rustls::Error> {
    let parsed = rustls::server::ParsedCertificate::try_from(cert)?;
    verify_dates(cert, now)?;
    rustls::client::verify_server_name(&parsed, server_name)
}

/// The certificate's notBefore/notAfter against `now` (webpki checks them only while building
/// a chain, which a pinned certificate skips).
fn verify_dates(cert: &CertificateDer<'_>, now: UnixTime) -> Result<(), rustls::Error> {
    use x509_cert::der::Decode;
    let cert = x509_cert::Certificate::from_der(cert.as_ref())
        .map_err(|_| CertificateError::BadEncoding)?;
    let validity = cert.tbs_certificate().validity();
    let (not_before, not_after) = (
        validity.not_before.to_unix_duration(),
        validity.not_after.to_unix_duration(),
    );
    let time = Duration::from_secs(now.as_secs());
    if time < not_before {
        return Err(CertificateError::NotValidYetContext {
            time: now,
            not_before: UnixTime::since_unix_epoch(not_before),
        }
        .into());
    }
    if time > not_after {
        return Err(CertificateError::ExpiredContext {
            time: now,
            not_after: UnixTime::since_unix_epoch(not_after),
        }
        .into());
    }
    Ok(())
}

/// SHA-256 of a certificate as `AB:CD:..`, the form `openssl x509 -fingerprint -sha256` prints.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cert.as_ref());
    let hex: Vec<String> = digest.as_ref().iter().map(|b| format!("{b:02X}")).collect();
    hex.join(":")
}
