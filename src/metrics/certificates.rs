//! Metrics, certificate expiry: `partgate_tls_certificate_expiry_timestamp_seconds{role}` for
//! the listener's certificate chain (`role="listener"`, `network.tls_cert_file`) and the CA
//! bundle parts are checked against (`role="parts_ca"`, `gateway.parts_ca_file`).
//!
//! Receives the files' paths and bytes at start and on every applied reload; hands the scrape
//! the earliest notAfter (Unix seconds) among each file's certificates, the moment the chain or
//! the bundle stops being whole. The listener's file is read again only when its modification time
//! changes (the TLS layer reloads it on the same signal), so a scrape costs one `stat`; the
//! bundle is read from the bytes the config loaded. TLS itself is untouched: nothing here
//! decides what is served.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use x509_cert::der::Decode;

/// The certificate files the scrape reports on.
#[derive(Debug, Default)]
pub(super) struct Certificates {
    listener: Mutex<Option<ListenerFile>>,
    parts_ca: Mutex<Option<f64>>,
}

/// The listener's certificate file and what was read from it at its last modification time.
#[derive(Debug)]
struct ListenerFile {
    path: PathBuf,
    modified: Option<SystemTime>,
    not_after: Option<f64>,
}

// === impl Certificates ===

impl Certificates {
    /// Follows the listener's certificate file and the parts' CA bundle (the listener's path
    /// is kept across reloads, which do not change it; the bundle is re-read from the reloaded
    /// bytes).
    pub(super) fn watch(&self, listener: Option<&Path>, parts_ca: Option<&[u8]>) {
        if let Ok(mut slot) = self.listener.lock()
            && slot.as_ref().map(|l| l.path.as_path()) != listener
        {
            *slot = listener.map(|path| ListenerFile {
                path: path.to_owned(),
                modified: None,
                not_after: None,
            });
        }
        if let Ok(mut ca) = self.parts_ca.lock() {
            *ca = parts_ca.and_then(earliest_not_after);
        }
    }

    /// `(role, notAfter)` of every file that holds a readable certificate.
    pub(super) fn readings(&self) -> Vec<(&'static str, f64)> {
        let mut out = Vec::with_capacity(2);
        if let Ok(mut slot) = self.listener.lock()
            && let Some(file) = slot.as_mut()
        {
            let modified = std::fs::metadata(&file.path)
                .and_then(|m| m.modified())
                .ok();
            if modified.is_none() || modified != file.modified {
                file.modified = modified;
                file.not_after = std::fs::read(&file.path)
                    .ok()
                    .and_then(|pem| earliest_not_after(&pem));
            }
            out.extend(file.not_after.map(|t| ("listener", t)));
        }
        if let Some(t) = self.parts_ca.lock().ok().and_then(|ca| *ca) {
            out.push(("parts_ca", t));
        }
        out
    }
}

/// The earliest notAfter, in Unix seconds, among the PEM certificates in `pem`; `None` if
/// none parses.
fn earliest_not_after(pem: &[u8]) -> Option<f64> {
    CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .filter_map(|der| x509_cert::Certificate::from_der(der.as_ref()).ok())
        .map(|cert| {
            cert.tbs_certificate()
                .validity()
                .not_after
                .to_unix_duration()
                .as_secs_f64()
        })
        .min_by(f64::total_cmp)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate valid until midnight UTC of that day of January 2031.
    fn cert_pem(day: u8) -> String {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 1, day);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().pem()
    }

    /// Unix time of midnight UTC, `day` January 2031.
    fn january_2031(day: u8) -> f64 {
        1_924_992_000.0 + f64::from(day - 1) * 86_400.0
    }

    #[test]
    fn the_earliest_certificate_of_a_file_decides() {
        assert_eq!(
            earliest_not_after(cert_pem(1).as_bytes()),
            Some(january_2031(1))
        );
        let bundle = format!("{}{}{}", cert_pem(30), cert_pem(3), cert_pem(20));
        assert_eq!(earliest_not_after(bundle.as_bytes()), Some(january_2031(3)));
        assert_eq!(earliest_not_after(b""), None);
        assert_eq!(earliest_not_after(b"REPLACE-ME"), None);
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert_eq!(earliest_not_after(garbage.as_bytes()), None);
    }

    #[test]
    fn the_listener_file_is_read_again_when_it_changes() {
        let dir = std::env::temp_dir().join(format!("partgate-certs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cert.pem");
        std::fs::write(&path, cert_pem(10)).unwrap();
        let certs = Certificates::default();
        let bundle = cert_pem(5);
        certs.watch(Some(&path), Some(bundle.as_bytes()));
        assert_eq!(
            certs.readings(),
            vec![
                ("listener", january_2031(10)),
                ("parts_ca", january_2031(5))
            ]
        );
        // A renewed certificate (a later modification time) is picked up by the next scrape.
        std::fs::write(&path, cert_pem(25)).unwrap();
        let later = SystemTime::now() + std::time::Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert_eq!(certs.readings()[0], ("listener", january_2031(25)));
        // A reload without a bundle drops its series; the listener's file stays.
        certs.watch(Some(&path), None);
        assert_eq!(certs.readings(), vec![("listener", january_2031(25))]);
        // A file that went missing reports nothing rather than a stale date.
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(certs.readings(), vec![]);
    }
}
