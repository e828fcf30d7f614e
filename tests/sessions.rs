//! Sessions and safety (issue 7): client sessions owned by the gateway, stop-on-expiry of exactly
//! what a session drove, and the gateway's own sessions with its parts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use partgate::proto::rpc::v1 as rpc;
use support::*;
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// The gateway's heartbeat window.
const WINDOW: Duration = Duration::from_secs(2);
/// How late a stop may come after the window (expiry wake-up plus the Stop call over loopback).
const MARGIN: Duration = Duration::from_millis(500);

type Robot = robot::robot_service_client::RobotServiceClient<InterceptedService<Channel, Bearer>>;
type Motors = motor::motor_service_client::MotorServiceClient<InterceptedService<Channel, Bearer>>;

/// One client: its channel and token (if the gateway has auth).
struct Client {
    robot: Robot,
    motors: Motors,
}

impl Client {
    fn new(ch: &Channel, token: Option<&str>) -> Self {
        let bearer = Bearer(token.map(Into::into));
        Self {
            robot: robot::robot_service_client::RobotServiceClient::with_interceptor(
                ch.clone(),
                bearer.clone(),
            ),
            motors: motor::motor_service_client::MotorServiceClient::with_interceptor(
                ch.clone(),
                bearer,
            ),
        }
    }

    async fn start(&mut self, resume: &str) -> String {
        let resp = self
            .robot
            .start_session(robot::StartSessionRequest {
                resume: resume.into(),
            })
            .await
            .expect("StartSession")
            .into_inner();
        assert_eq!(
            resp.heartbeat_window,
            prost_types::Duration::try_from(WINDOW).ok()
        );
        assert!(
            uuid::Uuid::parse_str(&resp.id).is_ok_and(|u| u.get_version_num() == 4),
            "{}",
            resp.id
        );
        resp.id
    }

    async fn heartbeat(&mut self, id: &str) -> Result<(), tonic::Status> {
        self.robot
            .send_session_heartbeat(robot::SendSessionHeartbeatRequest { id: id.into() })
            .await
            .map(|_| ())
    }

    /// SetPower with `viam-sid` values (none, one, or several).
    async fn set_power(
        &mut self,
        name: &str,
        power: f64,
        sids: &[&str],
    ) -> Result<(), tonic::Status> {
        let mut req = tonic::Request::new(set_power(name, power));
        for sid in sids {
            req.metadata_mut()
                .append("viam-sid", MetadataValue::try_from(*sid).unwrap());
        }
        self.motors.set_power(req).await.map(|_| ())
    }

    /// Heartbeats every 400 ms for `long`; returns when the last heartbeat was answered.
    async fn keep_alive(&mut self, id: &str, long: Duration) -> Instant {
        let until = Instant::now() + long;
        let mut last = Instant::now();
        while Instant::now() < until {
            self.heartbeat(id).await.expect("heartbeat");
            last = Instant::now();
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        last
    }
}

fn assert_expired(result: Result<(), tonic::Status>, what: &str) {
    let err = result.expect_err(what);
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, "SESSION_EXPIRED"),
        "{what}"
    );
}

fn stops(fleet: &Fleet, part: &str) -> Vec<String> {
    fleet.part(part).log().names_for("Stop")
}

fn power(fleet: &Fleet, part: &str, motor: &str) -> f64 {
    fleet.part(part).log().motor(motor).unwrap().power
}

/// main (motor1, wheel) and sub1 (motor1, lift) hold sessions; sub2 (lift) has none.
async fn three_parts(tweak: impl FnOnce(&mut partgate::config::Config)) -> Fleet {
    let sub2 = PartSpec {
        no_sessions: true,
        ..spec("sub2", &["lift"])
    };
    let specs = vec![
        (spec("main", &["motor1", "wheel"]), None),
        (spec("sub1", &["motor1", "lift"]), None),
        (sub2, None),
    ];
    fleet(specs, Some("main"), tweak).await
}

#[tokio::test]
async fn expired_session_stops_exactly_what_it_drove_on_the_right_parts() {
    let fleet = three_parts(|_| {}).await;
    let ch = fleet.channel().await;
    let mut client = Client::new(&ch, None);
    let id = client.start("").await;
    for name in ["motor1", "sub1:motor1", "sub2:lift"] {
        client
            .set_power(name, 0.5, &[&id])
            .await
            .expect("monitored call with a live session");
    }
    client
        .set_power("wheel", 0.4, &[])
        .await
        .expect("calls without a session are allowed");
    client
        .set_power("sub1:lift", 0.3, &[])
        .await
        .expect("no session");

    // The part saw the gateway's session with it, never the client's.
    let seen = fleet.part("sub1").log().metadata().unwrap();
    let sid = seen
        .get("viam-sid")
        .expect("the gateway's session id")
        .to_str()
        .unwrap()
        .to_owned();
    assert_ne!(sid, id);
    assert!(fleet.part("sub1").log().session_ids().contains(&sid));
    let seen = fleet.part("sub2").log().metadata().unwrap();
    assert!(
        seen.get("viam-sid").is_none(),
        "a part without sessions gets no id"
    );

    let sessions = client
        .robot
        .get_sessions(robot::GetSessionsRequest {})
        .await
        .unwrap()
        .into_inner()
        .sessions;
    assert_eq!(
        sessions.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        vec![id.as_str()]
    );
    assert!(
        sessions[0]
            .peer_connection_info
            .as_ref()
            .and_then(|p| p.remote_address.clone())
            .is_some()
    );

    let last = client.keep_alive(&id, Duration::from_millis(1200)).await;
    assert!(
        stops(&fleet, "sub1").is_empty(),
        "nothing is stopped while heartbeats flow"
    );
    wait_for("stops", WINDOW + MARGIN + Duration::from_secs(2), || {
        stops(&fleet, "main").len() + stops(&fleet, "sub1").len() + stops(&fleet, "sub2").len() == 3
    })
    .await;
    let took = last.elapsed();
    assert!(
        took <= WINDOW + MARGIN,
        "stopped {took:?} after the last heartbeat"
    );
    assert!(
        took >= WINDOW - Duration::from_millis(100),
        "stopped early: {took:?}"
    );
    assert_eq!(stops(&fleet, "main"), vec!["motor1"]);
    assert_eq!(stops(&fleet, "sub1"), vec!["motor1"]);
    assert_eq!(stops(&fleet, "sub2"), vec!["lift"]);
    assert_eq!(
        power(&fleet, "main", "wheel"),
        0.4,
        "driven without a session: untouched"
    );
    assert_eq!(power(&fleet, "sub1", "lift"), 0.3);
    assert_eq!(power(&fleet, "sub1", "motor1"), 0.0);
    assert_no_part_expiry(&fleet);

    assert_expired(client.heartbeat(&id).await, "an expired session is gone");
    assert_expired(
        client.set_power("sub1:motor1", 0.5, &[&id]).await,
        "an expired session",
    );
    let metrics = Exposition::parse(&fleet.gateway.metrics().encode());
    assert_eq!(
        metrics.sum("partgate_session_stops_total", &[("result", "ok")]),
        3.0
    );
    assert_eq!(
        metrics.get(
            "partgate_session_stops_total",
            &[("part", "sub2"), ("result", "ok")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metrics.get("partgate_sessions_expired_total", &[]),
        Some(1.0)
    );
    assert_eq!(metrics.get("partgate_sessions", &[]), Some(0.0));
}

/// The parts' own sessions with the gateway stayed alive: every stop came from the gateway.
fn assert_no_part_expiry(fleet: &Fleet) {
    for part in ["main", "sub1", "sub2"] {
        assert!(
            fleet.part(part).log().names_for("SessionStop").is_empty(),
            "{part}"
        );
    }
}

#[tokio::test]
async fn a_resumed_session_keeps_its_resources() {
    let fleet = three_parts(|_| {}).await;
    let ch = fleet.channel().await;
    let mut client = Client::new(&ch, None);
    let id = client.start("").await;
    client.set_power("sub1:motor1", 0.5, &[&id]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // A client that reconnects resumes its session (and with it, what it drove).
    let mut again = Client::new(&fleet.channel().await, None);
    assert_eq!(again.start(&id).await, id, "resumed");
    again.set_power("sub2:lift", 0.2, &[&id]).await.unwrap();
    let unknown = uuid::Uuid::new_v4().to_string();
    assert_ne!(
        again.start(&unknown).await,
        unknown,
        "an unknown id starts a new session"
    );
    let last = again.keep_alive(&id, Duration::from_millis(1600)).await;
    assert!(
        stops(&fleet, "sub1").is_empty(),
        "resuming and heartbeating kept it alive"
    );
    wait_for("stops", WINDOW + MARGIN + Duration::from_secs(2), || {
        stops(&fleet, "sub1").len() + stops(&fleet, "sub2").len() == 2
    })
    .await;
    assert!(last.elapsed() <= WINDOW + MARGIN);
    assert_eq!(
        (stops(&fleet, "sub1"), stops(&fleet, "sub2")),
        (vec!["motor1".to_owned()], vec!["lift".to_owned()])
    );
}

#[tokio::test]
async fn two_clients_do_not_stop_each_others_resources() {
    let fleet = three_parts(|_| {}).await;
    let mut alice = Client::new(&fleet.channel().await, None);
    let mut bob = Client::new(&fleet.channel().await, None);
    let (a, b) = (alice.start("").await, bob.start("").await);
    assert_ne!(a, b);
    alice.set_power("sub1:motor1", 0.5, &[&a]).await.unwrap();
    bob.set_power("sub1:lift", 0.6, &[&b]).await.unwrap();
    // Alice goes silent; Bob keeps heartbeating through her expiry.
    let deadline = Instant::now() + WINDOW + MARGIN + Duration::from_secs(2);
    while stops(&fleet, "sub1").is_empty() {
        assert!(Instant::now() < deadline, "alice's motor was never stopped");
        bob.heartbeat(&b).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bob.keep_alive(&b, Duration::from_millis(600)).await;
    assert_eq!(stops(&fleet, "sub1"), vec!["motor1"]);
    assert_eq!(
        power(&fleet, "sub1", "lift"),
        0.6,
        "bob's motor keeps running"
    );
    wait_for(
        "bob's stop",
        WINDOW + MARGIN + Duration::from_secs(2),
        || stops(&fleet, "sub1").len() == 2,
    )
    .await;
    assert_eq!(stops(&fleet, "sub1"), vec!["motor1", "lift"]);
}

#[tokio::test]
async fn bad_session_ids_are_session_expired() {
    let fleet = three_parts(|_| {}).await;
    let ch = fleet.channel().await;
    let mut client = Client::new(&ch, None);
    let id = client.start("").await;
    let unknown = uuid::Uuid::new_v4().to_string();
    assert_expired(
        client.set_power("sub1:motor1", 0.5, &[&unknown]).await,
        "unknown id",
    );
    assert_expired(
        client.set_power("sub1:motor1", 0.5, &["not-a-uuid"]).await,
        "malformed id",
    );
    assert_expired(
        client.set_power("sub1:motor1", 0.5, &[&id, &id]).await,
        "two values",
    );
    assert_expired(
        client.heartbeat(&unknown).await,
        "heartbeat for an unknown id",
    );
    assert_expired(
        client.heartbeat("garbage").await,
        "heartbeat for a malformed id",
    );
    assert!(
        fleet.part("sub1").log().names_for("SetPower").is_empty(),
        "rejected calls never reach the part"
    );
    // Only safety-monitored methods look at the id; others ignore it (and never forward it).
    let mut req = tonic::Request::new(motor::IsPoweredRequest {
        name: "sub1:motor1".into(),
        extra: None,
    });
    req.metadata_mut()
        .insert("viam-sid", MetadataValue::from_static("not-a-uuid"));
    client.motors.is_powered(req).await.expect("not monitored");
    let seen = fleet.part("sub1").log().metadata().unwrap();
    assert!(seen.get("viam-sid").is_none());
}

#[tokio::test]
async fn sessions_belong_to_the_entity_that_started_them() {
    const KEY_A: &str = "7d4b2c3a-0000-4000-8000-00000000000a";
    const KEY_B: &str = "7d4b2c3a-0000-4000-8000-00000000000b";
    let fleet = three_parts(|c| {
        let handlers = serde_json::json!({
            "handlers": [{ "type": "api-key", "config": { KEY_A: "api-key-a-0123456789", KEY_B: "api-key-b-0123456789" } }]
        });
        c.auth = Some(serde_json::from_value(handlers).unwrap());
    })
    .await;
    let ch = fleet.channel().await;
    let mut auth = rpc::auth_service_client::AuthServiceClient::new(ch.clone());
    let mut tokens = HashMap::new();
    for (key, secret) in [
        (KEY_A, "api-key-a-0123456789"),
        (KEY_B, "api-key-b-0123456789"),
    ] {
        let creds = rpc::Credentials {
            r#type: "api-key".into(),
            payload: secret.into(),
        };
        let req = rpc::AuthenticateRequest {
            entity: key.into(),
            credentials: Some(creds),
        };
        tokens.insert(
            key,
            auth.authenticate(req)
                .await
                .unwrap()
                .into_inner()
                .access_token,
        );
    }
    let mut a = Client::new(&ch, Some(&tokens[KEY_A]));
    let mut b = Client::new(&ch, Some(&tokens[KEY_B]));
    let id = a.start("").await;
    assert_expired(
        b.set_power("sub1:motor1", 0.5, &[&id]).await,
        "another entity's session",
    );
    assert_expired(b.heartbeat(&id).await, "another entity's heartbeat");
    assert_ne!(b.start(&id).await, id, "another entity cannot resume it");
    let listed = b
        .robot
        .get_sessions(robot::GetSessionsRequest {})
        .await
        .unwrap()
        .into_inner()
        .sessions;
    assert!(
        listed.iter().all(|s| s.id != id),
        "GetSessions lists only the caller's sessions"
    );
    a.set_power("sub1:motor1", 0.5, &[&id])
        .await
        .expect("the owner's call");
    a.heartbeat(&id).await.expect("the owner's heartbeat");
}

#[tokio::test]
async fn at_most_1024_sessions() {
    let fleet = three_parts(|_| {}).await;
    let mut client = Client::new(&fleet.channel().await, None);
    // 64 at a time, so all 1024 are opened well inside one heartbeat window (2 s) even on a
    // loaded machine: one at a time, the first could expire before the last is opened.
    let opened = Instant::now();
    let opener = client.robot.clone();
    futures_util::StreamExt::for_each_concurrent(futures_util::stream::iter(0..1024), 64, |_| {
        let mut opener = opener.clone();
        async move {
            opener
                .start_session(robot::StartSessionRequest::default())
                .await
                .expect("within the limit");
        }
    })
    .await;
    assert!(
        opened.elapsed() < WINDOW,
        "opening took {:?}",
        opened.elapsed()
    );
    let err = client
        .robot
        .start_session(robot::StartSessionRequest::default())
        .await
        .expect_err("over the limit");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    let metrics = Exposition::parse(&fleet.gateway.metrics().encode());
    assert_eq!(metrics.get("partgate_sessions", &[]), Some(1024.0));
}

#[tokio::test]
async fn a_dead_gateway_leaves_the_part_to_stop_the_motor() {
    let sub1 = PartSpec {
        session_window: Some(Duration::from_millis(500)),
        ..spec("sub1", &["motor1", "lift"])
    };
    let fleet = fleet(
        vec![(spec("main", &["motor1"]), None), (sub1, None)],
        Some("main"),
        |_| {},
    )
    .await;
    let ch = fleet.channel().await;
    let mut client = Client::new(&ch, None);
    let id = client.start("").await;
    client.set_power("sub1:motor1", 0.8, &[&id]).await.unwrap();
    let log = fleet.part("sub1").log().clone();
    let seen = log.metadata().unwrap();
    let sid = seen
        .get("viam-sid")
        .expect("the gateway's session")
        .to_str()
        .unwrap()
        .to_owned();
    // The gateway heartbeats its session with the part (window / 5 = 100 ms): it outlives windows.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        log.session_ids().contains(&sid),
        "the gateway keeps its session with the part alive"
    );
    assert_eq!(log.motor("motor1").unwrap().power, 0.8);

    let Fleet { gateway, parts, .. } = fleet;
    gateway.shutdown().await;
    let died = Instant::now();
    wait_for("the part's own expiry", Duration::from_secs(3), || {
        log.names_for("SessionStop") == vec!["motor1".to_owned()]
    })
    .await;
    assert!(
        died.elapsed() <= Duration::from_millis(500) + MARGIN,
        "took {:?}",
        died.elapsed()
    );
    assert_eq!(log.motor("motor1").unwrap().power, 0.0);
    assert!(
        log.names_for("Stop").is_empty(),
        "stopped by the part itself, not by the gateway"
    );
    assert_eq!(log.motor("lift").unwrap().power, 0.0);
    drop(parts);
}

#[tokio::test]
async fn the_gateway_session_with_a_part_restarts_with_its_connection() {
    let sub1 = PartSpec {
        session_window: Some(Duration::from_millis(500)),
        ..spec("sub1", &["motor1"])
    };
    let mut fleet = fleet(
        vec![(spec("main", &["motor1"]), None), (sub1, None)],
        Some("main"),
        |_| {},
    )
    .await;
    let killed = fleet.kill("sub1").await;
    fleet.restart("sub1", killed).await;
    fleet.wait_connected().await;
    let log = fleet.part("sub1").log().clone();
    wait_for(
        "a new session with the restarted part",
        Duration::from_secs(3),
        || !log.session_ids().is_empty(),
    )
    .await;
    let mut client = Client::new(&fleet.channel().await, None);
    client.set_power("sub1:motor1", 0.5, &[]).await.unwrap();
    let seen = log.metadata().unwrap();
    let sid = seen
        .get("viam-sid")
        .expect("the gateway's new session")
        .to_str()
        .unwrap()
        .to_owned();
    assert!(log.session_ids().contains(&sid));
}

/// Right after a part restarts, no call carries the gateway's session with the old part
/// instance (the restarted part would answer SESSION_EXPIRED to a client that never used
/// sessions): until the gateway holds a new session, calls go without one. Three workers and
/// callers on each, retrying at once, so calls reach the new connection on other threads while
/// the session task (on worker 0) has yet to notice it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_right_after_a_part_restart_never_carry_the_old_session() {
    // The default window: heartbeats far enough apart that none fails while the part is
    // down, so the gateway still holds the old session when the part is back.
    let mut fleet = fleet(
        vec![
            (spec("main", &["motor1"]), None),
            (spec("sub1", &["motor1"]), None),
        ],
        Some("main"),
        |c| c.gateway.worker_threads = Some(3),
    )
    .await;
    let mut channels = Vec::new();
    for _ in 0..3 {
        channels.push(fleet.channel().await);
    }
    for round in 0..5 {
        let log = fleet.part("sub1").log().clone();
        wait_for("a session with the part", Duration::from_secs(3), || {
            !log.session_ids().is_empty()
        })
        .await;
        let killed = fleet.kill("sub1").await;
        let callers: Vec<_> = (0..12)
            .map(|i| {
                let mut client = Client::new(&channels[i % 3], None);
                tokio::spawn(async move {
                    let deadline = Instant::now() + Duration::from_secs(10);
                    let mut answered = 0;
                    while answered < 5 {
                        match client.set_power("sub1:motor1", 0.5, &[]).await {
                            Ok(()) => answered += 1,
                            Err(err) => {
                                assert_eq!(err.code(), Code::Unavailable, "round {round}: {err:?}")
                            }
                        }
                        assert!(
                            Instant::now() < deadline,
                            "round {round}: part never came back"
                        );
                    }
                })
            })
            .collect();
        fleet.restart("sub1", killed).await;
        for caller in callers {
            caller.await.expect("caller");
        }
    }
}
