//! Stage `listener`, TLS: the listening port's rustls config (ALPN `h2` and `http/1.1`, so gRPC,
//! gRPC-Web and signaling share it), re-read when the certificate files change, and the client
//! config used to reach parts over TLS ([`part`]: chains and pinned certificates). One crypto
//! provider: aws-lc-rs.
//!
//! Receives certificate files; hands the listener an acceptor for each new connection (open
//! connections keep the config they started with) and the pool a connector per trust source.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tracing::{info, warn};

pub mod part;

pub use part::TrustSource;

/// Certificate and key files of the TLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// How often certificate files are checked for changes.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// Why a TLS config could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or parsed.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// rustls refused the certificate/key pair or the CA set.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The trusted certificates make no verifier.
    #[error("TLS verifier: {0}")]
    Verifier(#[from] rustls::client::VerifierBuilderError),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn file_error(path: &std::path::Path, message: impl ToString) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// Builds the listener's rustls config from PEM files.
pub fn load_server_config(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| file_error(&files.cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(&files.cert, e))?;
    if certs.is_empty() {
        return Err(file_error(&files.cert, "no certificate in file"));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| file_error(&files.key, e))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The listener's TLS acceptor, swapped when the certificate files change.
pub struct ReloadingAcceptor {
    files: TlsFiles,
    current: ArcSwap<ServerConfig>,
}

impl ReloadingAcceptor {
    /// Loads the files once; fails if they are invalid.
    pub fn new(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let config = load_server_config(&files)?;
        Ok(Arc::new(Self {
            files,
            current: ArcSwap::from_pointee(config),
        }))
    }

    /// An acceptor with the current config.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load_full())
    }

    /// Re-reads the files; on error the old config stays and the reason is logged.
    pub fn reload(&self) -> bool {
        match load_server_config(&self.files) {
            Ok(config) => {
                self.current.store(Arc::new(config));
                info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                warn!(error = %e, "TLS certificate reload failed; keeping the previous certificate");
                false
            }
        }
    }

    /// Watches the files and reloads when their modification time changes, until dropped.
    pub fn watch(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let stamp = |files: &TlsFiles| {
            let m = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
            (m(&files.cert), m(&files.key))
        };
        let mut last: (Option<SystemTime>, Option<SystemTime>) = stamp(&self.files);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(WATCH_INTERVAL).await;
                let Some(this) = weak.upgrade() else { return };
                let now = stamp(&this.files);
                if now != last {
                    last = now;
                    this.reload();
                }
            }
        });
    }
}

/// The certificates in a PEM file's text (other PEM sections are skipped); an error when there
/// is none or one is malformed.
pub fn parse_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate file: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate (-----BEGIN CERTIFICATE-----) in the file".into());
    }
    Ok(certs)
}

/// A connector for parts reached over TLS. With `trusted` (a PEM file's text, from the config
/// key `source` names), its certificates are the trust anchors, and each is also accepted as
/// the part's own certificate when it is exactly the one the part presents (see [`part`]);
/// without, the system roots.
pub fn part_connector(
    trusted: Option<&[u8]>,
    source: TrustSource,
) -> Result<TlsConnector, TlsError> {
    let verifier = part_verifier(trusted, source)?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// The verifier of [`part_connector`].
fn part_verifier(
    trusted: Option<&[u8]>,
    source: TrustSource,
) -> Result<part::PartVerifier, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    let mut pinned = Vec::new();
    match trusted {
        Some(pem) => {
            pinned = parse_certificates(pem).map_err(|message| TlsError::File {
                path: source.to_string(),
                message,
            })?;
            for cert in &pinned {
                roots.add(cert.clone())?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                // Skip the odd unparsable system certificate rather than fail start-up.
                let _ = roots.add(cert);
            }
        }
    }
    let provider = provider();
    // webpki refuses an empty root store; with nothing to chain to, only a pin can verify.
    let chain = if roots.is_empty() {
        None
    } else {
        Some(
            rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider.clone(),
            )
            .build()?,
        )
    };
    Ok(part::PartVerifier::new(
        chain,
        pinned,
        source,
        provider.signature_verification_algorithms,
    ))
}

#[cfg(test)]
#[path = "tls/tests.rs"]
mod tests;
