//! Authentication and TLS, on both sides of the gateway, with real TLS and real tokens.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashMap;
use std::time::Duration;

use partgate::proto::rpc::v1 as rpc;
use support::*;
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

const KEY_ALL: &str = "7d4b2c3a-0000-4000-8000-000000000001";
const KEY_SUB1: &str = "7d4b2c3a-0000-4000-8000-000000000002";

fn auth_config(config: &mut partgate::config::Config, lifetime: Option<&str>) {
    let handlers = serde_json::json!({
        "handlers": [
            { "type": "robot-location-secret", "config": { "secrets": ["old-location-secret", "new-location-secret"] } },
            { "type": "api-key", "config": { KEY_ALL: "api-key-all-parts", KEY_SUB1: "api-key-sub1-only" } }
        ]
    });
    config.auth = Some(serde_json::from_value(handlers).unwrap());
    config.gateway.api_key_parts = HashMap::from([(KEY_SUB1.to_owned(), vec!["sub1".to_owned()])]);
    config.gateway.token_lifetime = lifetime.map(Into::into);
}

async fn secured(tls: Option<&TestPki>, lifetime: Option<&str>) -> Fleet {
    let specs = vec![
        (spec("main", &["motor1"]), None),
        (spec("sub1", &["motor1"]), None),
        (spec("sub2", &["lift"]), None),
    ];
    let (cert, key) = tls
        .map(|p| (p.cert.display().to_string(), p.key.display().to_string()))
        .unzip();
    fleet(specs, Some("main"), |c| {
        auth_config(c, lifetime);
        c.network.tls_cert_file = cert;
        c.network.tls_key_file = key;
    })
    .await
}

async fn authenticate(
    ch: &Channel,
    entity: &str,
    kind: &str,
    payload: &str,
) -> Result<String, tonic::Status> {
    let mut client = rpc::auth_service_client::AuthServiceClient::new(ch.clone());
    let creds = rpc::Credentials {
        r#type: kind.into(),
        payload: payload.into(),
    };
    let req = rpc::AuthenticateRequest {
        entity: entity.into(),
        credentials: Some(creds),
    };
    client
        .authenticate(req)
        .await
        .map(|r| r.into_inner().access_token)
}

type Motors = motor::motor_service_client::MotorServiceClient<InterceptedService<Channel, Bearer>>;

fn motors(ch: &Channel, token: Option<&str>) -> Motors {
    motor::motor_service_client::MotorServiceClient::with_interceptor(
        ch.clone(),
        Bearer(token.map(Into::into)),
    )
}

#[tokio::test]
async fn location_secrets_rotate_and_tokens_drive_the_fleet() {
    let fleet = secured(None, None).await;
    let ch = fleet.channel().await;
    let entity = format!("localhost:{}", fleet.addr().port());
    for secret in ["old-location-secret", "new-location-secret"] {
        let token = authenticate(&ch, &entity, "robot-location-secret", secret)
            .await
            .expect("valid secret");
        motors(&ch, Some(&token))
            .set_power(set_power("sub1:motor1", 0.5))
            .await
            .expect("authorized call");
    }
    let seen = fleet.part("sub1").log().metadata().unwrap();
    assert!(
        seen.get("authorization").is_none(),
        "the client's token is never forwarded"
    );
    for (entity, secret) in [
        (entity.as_str(), "wrong"),
        ("evil.example.com:1", "new-location-secret"),
    ] {
        let err = authenticate(&ch, entity, "robot-location-secret", secret)
            .await
            .expect_err("rejected");
        assert_eq!(
            (err.code(), err.message()),
            (Code::Unauthenticated, "invalid credentials")
        );
    }
}

#[tokio::test]
async fn calls_without_a_valid_token_never_reach_a_part() {
    let fleet = secured(None, None).await;
    let ch = fleet.channel().await;
    let err = motors(&ch, None)
        .set_power(set_power("sub1:motor1", 0.5))
        .await
        .expect_err("no token");
    assert_eq!(
        (err.code(), err.message()),
        (Code::Unauthenticated, "authentication required")
    );
    let err = motors(&ch, Some("garbage"))
        .set_power(set_power("sub1:motor1", 0.5))
        .await
        .expect_err("bad token");
    assert_eq!(err.code(), Code::Unauthenticated);
    // A token from another gateway (another signing key) is foreign here.
    let other = secured(None, None).await;
    let other_ch = other.channel().await;
    let foreign = authenticate(&other_ch, KEY_ALL, "api-key", "api-key-all-parts")
        .await
        .unwrap();
    let err = motors(&ch, Some(&foreign))
        .set_power(set_power("sub1:motor1", 0.5))
        .await
        .expect_err("foreign");
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = robot_client(&ch)
        .resource_names(robot::ResourceNamesRequest {})
        .await
        .expect_err("listing too");
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(fleet.part("sub1").log().names_for("SetPower").is_empty());
}

#[tokio::test]
async fn expired_tokens_are_rejected_when_a_lifetime_is_set() {
    let fleet = secured(None, Some("1s")).await;
    let ch = fleet.channel().await;
    let token = authenticate(&ch, KEY_ALL, "api-key", "api-key-all-parts")
        .await
        .unwrap();
    motors(&ch, Some(&token))
        .set_power(set_power("motor1", 0.1))
        .await
        .expect("fresh token");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let err = motors(&ch, Some(&token))
        .set_power(set_power("motor1", 0.1))
        .await
        .expect_err("expired");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
}

#[tokio::test]
async fn api_keys_can_be_limited_to_some_parts() {
    let fleet = secured(None, None).await;
    let ch = fleet.channel().await;
    let token = authenticate(&ch, KEY_SUB1, "api-key", "api-key-sub1-only")
        .await
        .unwrap();
    motors(&ch, Some(&token))
        .set_power(set_power("sub1:motor1", 0.3))
        .await
        .expect("allowed part");
    let err = motors(&ch, Some(&token))
        .set_power(set_power("sub2:lift", 0.3))
        .await
        .expect_err("other part");
    assert_eq!(err.code(), Code::PermissionDenied);
    let mut robot = robot::robot_service_client::RobotServiceClient::with_interceptor(
        ch.clone(),
        Bearer(Some(token)),
    );
    let names: Vec<String> = robot
        .resource_names(robot::ResourceNamesRequest {})
        .await
        .unwrap()
        .into_inner()
        .resources
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(
        names,
        vec!["sub1:motor1"],
        "the listing shows only what the key may reach"
    );
    let err = authenticate(&ch, KEY_SUB1, "api-key", "api-key-all-parts")
        .await
        .expect_err("key of another id");
    assert_eq!(err.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn repeated_failures_are_slowed_down() {
    let fleet = secured(None, None).await;
    let ch = fleet.channel().await;
    for _ in 0..10 {
        let err = authenticate(&ch, KEY_ALL, "api-key", "wrong")
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
    }
    let err = authenticate(&ch, KEY_ALL, "api-key", "api-key-all-parts")
        .await
        .expect_err("slowed down");
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(!err.message().contains("api-key-all-parts"));
}

#[tokio::test]
async fn without_an_auth_block_authenticate_is_unimplemented() {
    let fleet = demo().await;
    let err = authenticate(&fleet.channel().await, "x", "api-key", "y")
        .await
        .expect_err("no auth");
    assert_eq!(err.code(), Code::Unimplemented);
}

#[tokio::test]
async fn tls_listener_serves_grpc_and_refuses_plaintext() {
    let certs = pki("listener");
    let fleet = secured(Some(&certs), None).await;
    let port = fleet.addr().port();
    let ch = tls_channel(port, &certs.ca_pem)
        .await
        .expect("TLS connects");
    let token = authenticate(
        &ch,
        &format!("localhost:{port}"),
        "robot-location-secret",
        "new-location-secret",
    )
    .await
    .unwrap();
    motors(&ch, Some(&token))
        .set_power(set_power("sub1:motor1", 0.2))
        .await
        .expect("call over TLS");
    let plain = tokio::time::timeout(Duration::from_secs(5), async {
        let ch = Channel::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect()
            .await?;
        robot_client(&ch)
            .resource_names(robot::ResourceNamesRequest {})
            .await
            .map_err(|e| e.to_string())
            .ok();
        Ok::<_, tonic::transport::Error>(())
    })
    .await
    .expect("plaintext fails fast, no hang");
    let _ = plain;
    let untrusted = pki("untrusted");
    assert!(
        tls_channel(port, &untrusted.ca_pem).await.is_err(),
        "a client with another CA refuses us"
    );
}

#[tokio::test]
async fn certificates_reload_when_the_files_change_without_dropping_connections() {
    let first = pki("first");
    let fleet = secured(Some(&first), None).await;
    let port = fleet.addr().port();
    let old = tls_channel(port, &first.ca_pem).await.unwrap();
    let token = authenticate(&old, KEY_ALL, "api-key", "api-key-all-parts")
        .await
        .unwrap();
    let second = pki("second");
    std::fs::copy(&second.cert, &first.cert).unwrap();
    std::fs::copy(&second.key, &first.key).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tls_channel(port, &second.ca_pem).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "new certificate never served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    motors(&old, Some(&token))
        .set_power(set_power("motor1", 0.2))
        .await
        .expect("old connection still works");
}

/// Gateway B (TLS + auth) in front of a part acts as a TLS part with credentials for gateway A.
#[tokio::test]
async fn gateway_authenticates_to_parts_over_tls_and_reauthenticates_invisibly() {
    let pki = pki("parts");
    let mut secret_part = spec("inner", &["m"]);
    secret_part.secret = Some("part-secret".into());
    let inner = SimPart::start(secret_part, LOOPBACK.parse().unwrap())
        .await
        .unwrap();
    // B: TLS listener, no client auth, its one remote requires a location secret.
    let mut b_config = partgate::config::Config::default();
    b_config.network.bind_address = LOOPBACK.into();
    b_config.network.tls_cert_file = Some(pki.cert.display().to_string());
    b_config.network.tls_key_file = Some(pki.key.display().to_string());
    let mut remote_inner = remote("inner", inner.addr(), None);
    remote_inner.secret = Some("part-secret".into());
    b_config.remotes = vec![remote_inner];
    b_config.gateway.main_part = Some("inner".into());
    auth_config(&mut b_config, None);
    b_config.gateway.api_key_parts.clear();
    let b = partgate::Gateway::start(b_config.validate().unwrap())
        .await
        .unwrap();
    // A: h2c for clients, reaches B over TLS (trusting the test CA) with B's API key.
    let ca_file = pki.dir.join("ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    let b_addr = format!("localhost:{}", b.local_addr().port());
    let remote_b: partgate::config::RemoteConfig = serde_json::from_value(serde_json::json!({
        "name": "b", "address": b_addr, "insecure": false,
        "auth": { "entity": KEY_ALL, "credentials": { "type": "api-key", "payload": "api-key-all-parts" } },
        "connection_check_interval": "1s", "reconnect_interval": "100ms"
    }))
    .unwrap();
    let mut a_config = partgate::config::Config::default();
    a_config.network.bind_address = LOOPBACK.into();
    a_config.remotes = vec![remote_b];
    a_config.gateway.parts_ca_file = Some(ca_file.display().to_string());
    let a = partgate::Gateway::start(a_config.validate().unwrap())
        .await
        .unwrap();
    let ch = channel(a.local_addr()).await;
    motor_client(&ch)
        .set_power(set_power("b:m", 0.7))
        .await
        .expect("through A, TLS to B, auth to both");
    assert_eq!(inner.log().motor("m").map(|m| m.power), Some(0.7));
    assert_eq!(
        inner.log().names_for("Authenticate"),
        vec![inner.addr().to_string()],
        "entity defaults to the address"
    );

    // The inner part forgets its tokens (restarted behind a proxy): B re-authenticates and
    // retries, so neither A nor the client notices.
    inner.log().forget_tokens();
    motor_client(&ch)
        .set_power(set_power("b:m", 0.1))
        .await
        .expect("retried invisibly");
    assert_eq!(inner.log().motor("m").map(|m| m.power), Some(0.1));
    assert_eq!(
        inner
            .log()
            .rejected
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

#[tokio::test]
async fn wrong_part_credentials_leave_the_part_down_with_a_reason() {
    let mut secret_part = spec("locked", &["m"]);
    secret_part.secret = Some("right".into());
    let part = SimPart::start(secret_part, LOOPBACK.parse().unwrap())
        .await
        .unwrap();
    let mut r = remote("locked", part.addr(), None);
    r.secret = Some("wrong".into());
    let mut config = partgate::config::Config::default();
    config.network.bind_address = LOOPBACK.into();
    config.remotes = vec![r];
    let gateway = partgate::Gateway::start(config.validate().unwrap())
        .await
        .unwrap();
    let ch = channel(gateway.local_addr()).await;
    let err = motor_client(&ch)
        .set_power(set_power("locked:m", 0.5))
        .await
        .expect_err("part not usable");
    assert_eq!(err.code(), Code::Unavailable);
    let error = gateway.pool().parts()[0].last_error().unwrap_or_default();
    assert!(
        error.contains("Authenticate failed") && !error.contains("wrong"),
        "{error}"
    );
}

#[tokio::test]
async fn a_limited_key_resolves_bare_names_among_its_own_parts() {
    // "lift" is on sub1 and sub2: ambiguous for a full key, sub1's for a key limited to sub1.
    let specs = vec![
        (spec("main", &["motor1"]), None),
        (spec("sub1", &["lift"]), None),
        (spec("sub2", &["lift"]), None),
    ];
    let fleet = fleet(specs, Some("main"), |c| auth_config(c, None)).await;
    let ch = fleet.channel().await;
    let limited = authenticate(&ch, KEY_SUB1, "api-key", "api-key-sub1-only")
        .await
        .unwrap();
    motors(&ch, Some(&limited))
        .set_power(set_power("lift", 0.4))
        .await
        .expect("sub1's lift");
    assert_eq!(
        fleet.part("sub1").log().motor("lift").map(|m| m.power),
        Some(0.4)
    );
    let full = authenticate(&ch, KEY_ALL, "api-key", "api-key-all-parts")
        .await
        .unwrap();
    let err = motors(&ch, Some(&full))
        .set_power(set_power("lift", 0.4))
        .await
        .expect_err("ambiguous");
    assert_eq!(err.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn reload_tls_rereads_the_certificate_on_demand() {
    let first = pki("sighup");
    let fleet = secured(Some(&first), None).await;
    let port = fleet.addr().port();
    let second = pki("sighup-next");
    std::fs::copy(&second.cert, &first.cert).unwrap();
    std::fs::copy(&second.key, &first.key).unwrap();
    // What SIGHUP does, before the file watcher's next poll.
    assert!(fleet.gateway.reload_tls());
    assert!(
        tls_channel(port, &second.ca_pem).await.is_ok(),
        "new certificate served at once"
    );
    std::fs::write(&first.cert, "not a certificate").unwrap();
    assert!(!fleet.gateway.reload_tls(), "a broken file is refused");
    assert!(
        tls_channel(port, &second.ca_pem).await.is_ok(),
        "and the previous certificate stays"
    );
}

#[tokio::test]
async fn authentication_outcomes_are_counted_by_reason_never_by_secret() {
    let fleet = secured(None, None).await;
    let ch = fleet.channel().await;
    let token = authenticate(&ch, KEY_ALL, "api-key", "api-key-all-parts")
        .await
        .unwrap();
    let _ = authenticate(&ch, KEY_ALL, "api-key", "wrong-key-value").await;
    motors(&ch, Some(&token))
        .set_power(set_power("motor1", 0.1))
        .await
        .unwrap();
    let _ = motors(&ch, None).set_power(set_power("motor1", 0.1)).await;
    let url = format!("http://{}/metrics", fleet.addr());
    let req = http::Request::get(url)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let text = String::from_utf8(raw_call(fleet.addr(), false, req).await.body.to_vec()).unwrap();
    let line = |result: &str, reason: &str| {
        text.lines().any(|l| {
            l.starts_with("partgate_auth_attempts_total")
                && l.contains(&format!("result=\"{result}\""))
                && l.contains(&format!("reason=\"{reason}\""))
                && l.ends_with(" 1")
        })
    };
    assert!(line("success", "api_key"), "{text}");
    assert!(line("failure", "bad_credentials"), "{text}");
    assert!(
        line("success", "token") && line("failure", "missing"),
        "{text}"
    );
    assert!(!text.contains("wrong-key-value") && !text.contains("api-key-all-parts"));
}
