//! Parts served over TLS with a self-signed certificate, as `openssl req -x509` makes one
//! (`CA:TRUE`): trusted when listed in `gateway.parts_ca_file`, or pinned for one part with
//! `remotes[].ca_file`; a pin that does not hold the part's certificate is refused with an
//! error that says so on `/statusz`.
//!
//! The TLS part is a real one: a partgate gateway serving TLS with that certificate in front of
//! a simulated part (motor `m`), reached by the gateway under test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use partgate::Gateway;
use partgate::config::Config;
use partgate::upstream::pool::PartState;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use serde_json::{Value, json};
use support::*;

/// A self-signed certificate and key, written as PEM files in a directory of their own.
struct SelfSigned {
    cert: PathBuf,
    key: PathBuf,
    fingerprint: String,
}

/// Like `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj
/// /CN=part -addext subjectAltName=DNS:localhost,IP:127.0.0.1`: P-256, self-signed, CA:TRUE.
fn openssl_style(tag: &str, sans: &[&str]) -> SelfSigned {
    let dir = std::env::temp_dir().join(format!("partgate-part-tls-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut params =
        CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, "part");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    SelfSigned {
        cert: cert_path,
        key: key_path,
        fingerprint: partgate::tls::part::fingerprint(cert.der()),
    }
}

/// A TLS part: a gateway serving TLS with `cert`, whose one part has motor `m`.
struct TlsPart {
    gateway: Gateway,
    sim: SimPart,
}

impl TlsPart {
    async fn start(cert: &SelfSigned) -> Self {
        let sim = sim(spec("inner", &["m"])).await;
        let mut config = Config::local_fleet(LOOPBACK, "inner", [("inner", sim.addr(), None)]);
        config.network.tls_cert_file = Some(cert.cert.display().to_string());
        config.network.tls_key_file = Some(cert.key.display().to_string());
        config.gateway.webrtc.enabled = false;
        let gateway = Gateway::start(config.validate().unwrap()).await.unwrap();
        Self { gateway, sim }
    }

    fn port(&self) -> u16 {
        self.gateway.local_addr().port()
    }

    fn power(&self) -> Option<f64> {
        self.sim.log().motor("m").map(|m| m.power)
    }
}

/// A remote reached over TLS (no `insecure`), with its own `ca_file` if given.
fn tls_remote(name: &str, address: String, ca_file: Option<&Path>) -> Value {
    json!({
        "name": name, "address": address, "ca_file": ca_file,
        "connection_check_interval": "1s", "reconnect_interval": "100ms"
    })
}

fn front_config(remotes: Vec<Value>, parts_ca_file: Option<&Path>) -> Config {
    let config = json!({
        "network": { "bind_address": LOOPBACK },
        "remotes": remotes,
        "gateway": { "parts_ca_file": parts_ca_file, "webrtc": { "enabled": false } }
    });
    Config::parse(&config.to_string()).unwrap()
}

/// The gateway's part `name`: its state and last error once its first dial has settled.
async fn settled(gateway: &Gateway, name: &str) -> (PartState, Option<String>) {
    let part = || {
        gateway
            .pool()
            .parts()
            .iter()
            .find(|p| p.name() == name)
            .cloned()
            .unwrap()
    };
    wait_for(&format!("{name} settled"), Duration::from_secs(10), || {
        let p = part();
        p.state() == PartState::Connected || p.last_error().is_some()
    })
    .await;
    let p = part();
    (p.state(), p.last_error())
}

async fn set_power_through(gateway: &Gateway, name: &str, power: f64) -> Result<(), tonic::Status> {
    let ch = channel(gateway.local_addr()).await;
    motor_client(&ch)
        .set_power(set_power(name, power))
        .await
        .map(|_| ())
}

#[tokio::test]
async fn a_self_signed_part_listed_in_parts_ca_file_is_reached_by_name_and_by_ip() {
    let cert = openssl_style("listed", &["localhost", "127.0.0.1"]);
    let part = TlsPart::start(&cert).await;
    let config = front_config(
        vec![
            tls_remote("byname", format!("localhost:{}", part.port()), None),
            tls_remote("byip", format!("127.0.0.1:{}", part.port()), None),
        ],
        Some(&cert.cert),
    );
    let gateway = Gateway::start(config.validate().unwrap()).await.unwrap();
    for name in ["byname", "byip"] {
        let (state, error) = settled(&gateway, name).await;
        assert_eq!(state, PartState::Connected, "{name}: {error:?}");
    }
    set_power_through(&gateway, "byname:m", 0.3).await.unwrap();
    assert_eq!(part.power(), Some(0.3));
    set_power_through(&gateway, "byip:m", 0.6).await.unwrap();
    assert_eq!(part.power(), Some(0.6));
}

#[tokio::test]
async fn a_parts_ca_file_pins_that_part_alone_and_a_wrong_pin_is_refused_clearly() {
    let (cert1, cert2) = (
        openssl_style("pin-1", &["localhost"]),
        openssl_style("pin-2", &["localhost"]),
    );
    let (part1, part2) = (TlsPart::start(&cert1).await, TlsPart::start(&cert2).await);
    // parts_ca_file trusts part 2; "wrong" pins part 1's certificate for part 2 instead, and
    // the pin replaces parts_ca_file for that part.
    let config = front_config(
        vec![
            tls_remote(
                "one",
                format!("localhost:{}", part1.port()),
                Some(&cert1.cert),
            ),
            tls_remote("two", format!("localhost:{}", part2.port()), None),
            tls_remote(
                "wrong",
                format!("localhost:{}", part2.port()),
                Some(&cert1.cert),
            ),
        ],
        Some(&cert2.cert),
    );
    let gateway = Gateway::start(config.validate().unwrap()).await.unwrap();
    assert_eq!(settled(&gateway, "one").await.0, PartState::Connected);
    assert_eq!(settled(&gateway, "two").await.0, PartState::Connected);
    let (state, error) = settled(&gateway, "wrong").await;
    assert_ne!(state, PartState::Connected);
    let error = error.unwrap();
    for expected in [
        "is not trusted",
        "the ca_file of remote wrong",
        cert2.fingerprint.as_str(),
    ] {
        assert!(error.contains(expected), "{expected:?} not in {error}");
    }
    assert!(!error.contains(&cert1.fingerprint), "{error}");

    let (status, body) = http_get(gateway.local_addr(), "/statusz").await;
    assert_eq!(status, http::StatusCode::OK);
    let json: Value = serde_json::from_str(&body).unwrap();
    let wrong = json["parts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "wrong")
        .unwrap();
    assert_eq!(wrong["last_error"].as_str(), Some(error.as_str()));

    set_power_through(&gateway, "one:m", 0.4).await.unwrap();
    assert_eq!(part1.power(), Some(0.4));
    set_power_through(&gateway, "two:m", 0.5).await.unwrap();
    assert_eq!(part2.power(), Some(0.5));
    let refused = set_power_through(&gateway, "wrong:m", 0.9)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    assert_eq!(part2.power(), Some(0.5));
}

#[tokio::test]
async fn a_pinned_certificate_must_name_the_address_host() {
    let cert = openssl_style("other-name", &["part.example.com"]);
    let part = TlsPart::start(&cert).await;
    let config = front_config(
        vec![tls_remote(
            "p",
            format!("localhost:{}", part.port()),
            Some(&cert.cert),
        )],
        None,
    );
    let gateway = Gateway::start(config.validate().unwrap()).await.unwrap();
    let (state, error) = settled(&gateway, "p").await;
    assert_ne!(state, PartState::Connected);
    let error = error.unwrap();
    assert!(
        error.contains("certificate not valid for name \"localhost\""),
        "{error}"
    );
}

#[tokio::test]
async fn a_reload_rereads_a_changed_ca_file_and_redials_that_part() {
    let (right, wrong) = (
        openssl_style("reload-right", &["localhost"]),
        openssl_style("reload-wrong", &["localhost"]),
    );
    let part = TlsPart::start(&right).await;
    let pin = right.cert.with_file_name("pin.pem");
    std::fs::copy(&wrong.cert, &pin).unwrap();
    let config = front_config(
        vec![tls_remote(
            "p",
            format!("localhost:{}", part.port()),
            Some(&pin),
        )],
        None,
    );
    let gateway = Gateway::start(config.validate().unwrap()).await.unwrap();
    assert_ne!(settled(&gateway, "p").await.0, PartState::Connected);

    std::fs::copy(&right.cert, &pin).unwrap();
    let outcome = gateway.reload(config.validate().unwrap()).await.unwrap();
    assert_eq!(outcome.changes.redialed, vec!["p".to_owned()]);
    let (state, error) = settled(&gateway, "p").await;
    assert_eq!(state, PartState::Connected, "{error:?}");
    set_power_through(&gateway, "p:m", 0.7).await.unwrap();
    assert_eq!(part.power(), Some(0.7));
}

#[test]
fn check_config_names_each_ca_file_problem_by_its_path() {
    let cert = openssl_style("check", &["localhost"]);
    let not_pem = cert.cert.with_file_name("not-pem.txt");
    std::fs::write(&not_pem, "hello").unwrap();
    let missing = cert.cert.with_file_name("missing.pem");
    let mut insecure = tls_remote("c", "localhost:1".into(), Some(&cert.cert));
    insecure["insecure"] = json!(true);
    let document = json!({
        "remotes": [
            tls_remote("a", "localhost:1".into(), Some(&missing)),
            tls_remote("b", "localhost:1".into(), Some(&not_pem)),
            insecure,
            tls_remote("d", "localhost:1".into(), Some(&cert.cert)),
        ],
        // A key file: PEM, but no certificate in it.
        "gateway": { "parts_ca_file": cert.key },
    });
    let path = cert.cert.with_file_name("config.json");
    std::fs::write(&path, document.to_string()).unwrap();

    let problems = match Config::load(&path).unwrap().validate() {
        Err(partgate::error::ConfigError::Invalid(problems)) => problems,
        other => panic!("{other:?}"),
    };
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "remotes[0].ca_file",
            "remotes[1].ca_file",
            "remotes[2].ca_file",
            "gateway.parts_ca_file"
        ]
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_partgate"))
        .args(["check-config", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "remotes[0].ca_file: cannot read",
        "remotes[1].ca_file:",
        "no certificate",
        "remotes[2].ca_file: only for parts reached over TLS",
        "gateway.parts_ca_file:",
    ] {
        assert!(stderr.contains(expected), "{expected:?} not in {stderr}");
    }
}
