//! Tests of the part verifier: a self-signed `openssl req -x509`-style certificate (CA:TRUE)
//! pinned by exact match, its name and dates still checked; chains to a CA as before; clear
//! errors for what is not trusted.

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{ServerName, UnixTime};

use super::*;

/// A certificate as `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -subj
/// /CN=part -addext subjectAltName=...` makes it: self-signed, P-256, `CA:TRUE`.
fn openssl_style(sans: &[&str]) -> rcgen::Certificate {
    let mut params =
        CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, "part");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.self_signed(&KeyPair::generate().unwrap()).unwrap()
}

fn name(host: &str) -> ServerName<'static> {
    ServerName::try_from(host.to_owned()).unwrap()
}

fn verify(
    verifier: &part::PartVerifier,
    cert: &rcgen::Certificate,
    host: &str,
) -> Result<(), rustls::Error> {
    verifier
        .verify_server_cert(cert.der(), &[], &name(host), &[], UnixTime::now())
        .map(|_| ())
}

fn file(key: &str) -> TrustSource {
    TrustSource::File(key.to_owned())
}

#[test]
fn webpki_alone_refuses_a_self_signed_ca_certificate_as_the_parts_own() {
    // Why the pin exists: the certificate is a trust anchor, and webpki still says no.
    let cert = openssl_style(&["localhost"]);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let webpki =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .unwrap();
    let err = webpki
        .verify_server_cert(cert.der(), &[], &name("localhost"), &[], UnixTime::now())
        .unwrap_err();
    assert!(format!("{err:?}").contains("CaUsedAsEndEntity"), "{err:?}");
}

#[test]
fn a_listed_self_signed_certificate_is_accepted_by_exact_match() {
    let cert = openssl_style(&["localhost", "127.0.0.1"]);
    let verifier =
        part_verifier(Some(cert.pem().as_bytes()), file("gateway.parts_ca_file")).unwrap();
    verify(&verifier, &cert, "localhost").expect("pinned, by DNS name");
    verify(&verifier, &cert, "127.0.0.1").expect("pinned, by IP address");
}

#[test]
fn a_pinned_certificate_must_still_name_the_host() {
    let cert = openssl_style(&["localhost"]);
    let verifier =
        part_verifier(Some(cert.pem().as_bytes()), file("gateway.parts_ca_file")).unwrap();
    let err = verify(&verifier, &cert, "part.example.com").unwrap_err();
    assert!(
        err.to_string()
            .contains("certificate not valid for name \"part.example.com\""),
        "{err}"
    );
}

#[test]
fn a_pinned_certificate_must_be_within_its_dates() {
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.not_before = rcgen::date_time_ymd(2000, 1, 1);
    params.not_after = rcgen::date_time_ymd(2001, 1, 1);
    let expired = params.self_signed(&KeyPair::generate().unwrap()).unwrap();
    let verifier = part_verifier(Some(expired.pem().as_bytes()), file("x")).unwrap();
    let err = verify(&verifier, &expired, "localhost").unwrap_err();
    assert!(
        matches!(
            err,
            rustls::Error::InvalidCertificate(rustls::CertificateError::ExpiredContext { .. })
        ),
        "{err:?}"
    );

    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2999, 1, 1);
    params.not_after = rcgen::date_time_ymd(3000, 1, 1);
    let future = params.self_signed(&KeyPair::generate().unwrap()).unwrap();
    let verifier = part_verifier(Some(future.pem().as_bytes()), file("x")).unwrap();
    let err = verify(&verifier, &future, "localhost").unwrap_err();
    assert!(
        matches!(
            err,
            rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidYetContext { .. })
        ),
        "{err:?}"
    );
}

#[test]
fn a_certificate_not_listed_is_refused_naming_its_fingerprint_and_the_file() {
    let listed = openssl_style(&["localhost"]);
    let presented = openssl_style(&["localhost"]);
    let verifier = part_verifier(
        Some(listed.pem().as_bytes()),
        file("the ca_file of remote arm"),
    )
    .unwrap();
    let err = verify(&verifier, &presented, "localhost").unwrap_err();
    let rustls::Error::InvalidCertificate(rustls::CertificateError::Other(why)) = &err else {
        panic!("{err:?}");
    };
    let text = why.0.to_string();
    assert!(text.contains(&part::fingerprint(presented.der())), "{text}");
    assert!(text.contains("the ca_file of remote arm"), "{text}");
    assert!(text.contains("CaUsedAsEndEntity"), "{text}");
    assert!(!text.contains(&part::fingerprint(listed.der())), "{text}");
}

#[test]
fn a_leaf_issued_by_a_listed_ca_still_verifies_by_chain() {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&KeyPair::generate().unwrap(), &ca)
        .unwrap();
    let verifier = part_verifier(Some(ca.pem().as_bytes()), file("gateway.parts_ca_file")).unwrap();
    verify(&verifier, &leaf, "localhost").expect("chain to the listed CA");
    let err = verify(&verifier, &leaf, "other.example").unwrap_err();
    assert!(err.to_string().contains("not valid for name"), "{err}");

    let other = openssl_style(&["localhost"]);
    let verifier = part_verifier(Some(other.pem().as_bytes()), file("f")).unwrap();
    let err = verify(&verifier, &leaf, "localhost").unwrap_err();
    assert!(format!("{err:?}").contains("UnknownIssuer"), "{err:?}");
}

#[test]
fn a_trust_file_without_certificates_is_an_error() {
    assert!(parse_certificates(b"").is_err());
    assert!(parse_certificates(b"not pem at all").is_err());
    let key = KeyPair::generate().unwrap().serialize_pem();
    assert!(parse_certificates(key.as_bytes()).is_err(), "a key alone");
    let cert = openssl_style(&["localhost"]);
    let both = format!("{key}{}", cert.pem());
    assert_eq!(parse_certificates(both.as_bytes()).unwrap().len(), 1);
    assert!(part_verifier(Some(b"nothing"), file("remotes[0].ca_file")).is_err());
}
