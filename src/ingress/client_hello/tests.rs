//! Tests of the ClientHello server-name reader: real ClientHellos (Python's `ssl`, rustls'
//! client), cut short and with lying lengths, and rustls' own verdict on the same bytes.
//!
//! The `python-*.bin` files are what Python 3 `ssl` (OpenSSL 3.0) sent, with the Viam Python
//! SDK's context (`ssl._create_unverified_context`, ALPN `h2`, TLS 1.2+), to a socket that
//! kept the bytes, for `server_hostname` `localhost:1234`, `127.0.0.1:1234` and `localhost`.

use std::sync::Arc;

use super::*;

const PYTHON_LOCALHOST_PORT: &[u8] = include_bytes!("python-localhost-1234.bin");
const PYTHON_IP_PORT: &[u8] = include_bytes!("python-127.0.0.1-1234.bin");
const PYTHON_LOCALHOST: &[u8] = include_bytes!("python-localhost.bin");

fn refused(name: &str) -> ServerName {
    ServerName::Refused(name.to_owned())
}

/// The ClientHello a rustls client sends to `name`.
fn rustls_client_hello(name: &str) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
    let mut client = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut bytes = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut bytes).unwrap();
    }
    bytes
}

/// What a rustls server makes of `bytes` as a connection's first flight.
fn rustls_server_verdict(bytes: &[u8]) -> Result<(), rustls::Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)
        .unwrap();
    let mut server = rustls::ServerConnection::new(Arc::new(config)).unwrap();
    let mut reader = bytes;
    server.read_tls(&mut reader).unwrap();
    server.process_new_packets().map(|_| ())
}

#[test]
fn python_host_port_server_names_are_refused_ones() {
    assert_eq!(
        server_name(PYTHON_LOCALHOST_PORT),
        refused("localhost:1234")
    );
    assert_eq!(server_name(PYTHON_IP_PORT), refused("127.0.0.1:1234"));
    assert_eq!(server_name(PYTHON_LOCALHOST), ServerName::Acceptable);
}

#[test]
fn rustls_refuses_exactly_what_the_reader_calls_refused() {
    // The reader predicts rustls: if a rustls release starts accepting these names, this test
    // fails and the log line (and README's advice) must change with it.
    for hello in [PYTHON_LOCALHOST_PORT, PYTHON_IP_PORT] {
        let err = rustls_server_verdict(hello).unwrap_err();
        assert_eq!(
            err,
            rustls::Error::PeerMisbehaved(rustls::PeerMisbehaved::ServerNameMustContainOneHostName)
        );
    }
    rustls_server_verdict(PYTHON_LOCALHOST).expect("a DNS name is fine");
}

#[test]
fn rustls_client_hellos_are_acceptable() {
    for name in ["localhost", "part.example.com", "127.0.0.1", "::1"] {
        let hello = rustls_client_hello(name);
        assert_eq!(server_name(&hello), ServerName::Acceptable, "{name}");
        rustls_server_verdict(&hello).expect("rustls accepts its own client");
    }
}

#[test]
fn not_tls_is_unknown() {
    for bytes in [
        &b""[..],
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"GET / HTTP/1.1\r\n",
        &[22],
        &[22, 3, 1],
        // An alert record, and a handshake record holding a ServerHello (type 2).
        &[21, 3, 3, 0, 2, 2, 40],
        &[22, 3, 3, 0, 4, 2, 0, 0, 0],
    ] {
        assert_eq!(server_name(bytes), ServerName::Unknown, "{bytes:?}");
    }
}

#[test]
fn a_hello_cut_short_is_unknown_until_its_server_name_is_whole() {
    // Python's OpenSSL sends the server name first among the extensions: once it is whole the
    // verdict is known, before that it is not, and no prefix panics or says otherwise.
    let mut known_from = None;
    for n in 0..=PYTHON_LOCALHOST_PORT.len() {
        match server_name(&PYTHON_LOCALHOST_PORT[..n]) {
            ServerName::Unknown => assert!(known_from.is_none(), "unknown again at {n}"),
            verdict => {
                assert_eq!(verdict, refused("localhost:1234"), "prefix {n}");
                known_from.get_or_insert(n);
            }
        }
    }
    assert!(known_from.is_some_and(|n| n < 200), "{known_from:?}");
    for hello in [PYTHON_LOCALHOST, &rustls_client_hello("localhost")[..]] {
        for n in 0..hello.len() {
            let verdict = server_name(&hello[..n]);
            assert!(!matches!(verdict, ServerName::Refused(_)), "prefix {n}");
        }
    }
}

#[test]
fn a_hello_split_across_records_is_read_whole() {
    // RFC 8446 5.1: a handshake message may be fragmented over several records.
    let record = PYTHON_LOCALHOST_PORT;
    let fragment = &record[5..];
    for cut in [1, 4, 40, 100, fragment.len() - 1] {
        let mut split = Vec::new();
        for part in [&fragment[..cut], &fragment[cut..]] {
            split.extend_from_slice(&record[..3]);
            split.extend_from_slice(&u16::try_from(part.len()).unwrap().to_be_bytes());
            split.extend_from_slice(part);
        }
        assert_eq!(server_name(&split), refused("localhost:1234"), "cut {cut}");
    }
}

#[test]
fn lying_lengths_never_panic() {
    // Every length field of the real ClientHello (and every other byte) set to a few values:
    // the reader may answer anything but must not panic.
    for hello in [
        PYTHON_LOCALHOST_PORT,
        PYTHON_LOCALHOST,
        &rustls_client_hello("localhost")[..],
    ] {
        let mut bytes = hello.to_vec();
        for i in 0..bytes.len() {
            let original = bytes[i];
            for value in [0x00, 0x01, 0x7f, 0xfe, 0xff, original.wrapping_add(1)] {
                bytes[i] = value;
                let _ = server_name(&bytes);
                let _ = server_name(&bytes[..bytes.len() / 2]);
            }
            bytes[i] = original;
        }
    }
}

#[test]
fn pseudo_random_mutations_never_panic() {
    // A fixed xorshift sequence: reproducible, no dependency.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..20_000 {
        let mut bytes = PYTHON_LOCALHOST_PORT.to_vec();
        for _ in 0..(next() % 8 + 1) {
            let i = (next() as usize) % bytes.len();
            bytes[i] = next() as u8;
        }
        let len = (next() as usize) % (bytes.len() + 1);
        let _ = server_name(&bytes[..len]);
    }
}

#[test]
fn a_refused_name_is_shown_lossy_and_bounded() {
    let name = [b'a'; 300]
        .iter()
        .chain(b":1\xff")
        .copied()
        .collect::<Vec<u8>>();
    let mut data = Vec::new();
    data.extend_from_slice(&u16::try_from(name.len() + 3).unwrap().to_be_bytes());
    data.push(0);
    data.extend_from_slice(&u16::try_from(name.len()).unwrap().to_be_bytes());
    data.extend_from_slice(&name);
    assert_eq!(judge(&data), ServerName::Refused("a".repeat(255)));
    let short = b"\x00\x0c\x00\x00\x09[::1]:443";
    assert_eq!(judge(short), refused("[::1]:443"));
    let other_type = b"\x00\x04\x01\x00\x01x";
    assert_eq!(judge(other_type), refused("(a name of type 1)"));
}

#[test]
fn notices_are_limited_per_minute() {
    let start = Instant::now() + Duration::from_secs(3600);
    // The window is process-wide: start a fresh one far from any other test's.
    let allowed = (0..20)
        .filter(|i| notice_allowed(start + Duration::from_millis(*i)))
        .count();
    assert_eq!(allowed, NOTICES_PER_MINUTE as usize);
    assert!(notice_allowed(start + Duration::from_secs(61)));
}
