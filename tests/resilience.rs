//! Parts dying, restarting and being overloaded: the fleet keeps working around them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use partgate::upstream::pool::PartState;
use support::*;
use tonic::Code;

#[tokio::test]
async fn dead_part_fails_fast_keeps_its_names_and_recovers_without_client_action() {
    let mut fleet = demo().await;
    let ch = fleet.channel().await;
    let killed = fleet.kill("sub1").await;

    let names = listed_names(&ch).await;
    assert!(
        names.contains(&"sub1:motor1".to_owned()),
        "a dead part's names stay listed: {names:?}"
    );
    let started = Instant::now();
    let err = motor_client(&ch)
        .set_power(set_power("sub1:motor1", 0.4))
        .await
        .expect_err("part is down");
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("sub1"), "{}", err.message());
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "fails fast, took {:?}",
        started.elapsed()
    );
    motor_client(&ch)
        .set_power(set_power("cell-m1", 0.4))
        .await
        .expect("other parts unaffected");

    // Same address again: the gateway redials by itself; the client keeps its channel.
    fleet.restart("sub1", killed).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match motor_client(&ch)
            .set_power(set_power("sub1:motor1", 0.4))
            .await
        {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                assert_eq!(e.code(), Code::Unavailable, "{e:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("never recovered: {e:?}"),
        }
    }
    assert_eq!(
        fleet.part("sub1").log().motor("motor1").map(|m| m.power),
        Some(0.4)
    );
}

#[tokio::test]
async fn part_down_at_start_is_listed_once_it_comes_up() {
    // Reserve a port, then start the gateway before the part exists.
    let probe = tokio::net::TcpListener::bind(LOOPBACK).await.unwrap();
    let addr = probe.local_addr().unwrap();
    drop(probe);
    let up = SimPart::start(spec("up", &["a"]), LOOPBACK.parse().unwrap())
        .await
        .unwrap();
    let mut config = partgate::config::Config {
        remotes: vec![remote("up", up.addr(), None), remote("late", addr, None)],
        ..Default::default()
    };
    config.network.bind_address = LOOPBACK.into();
    let gateway = partgate::Gateway::start(config.validate().unwrap())
        .await
        .unwrap();
    let ch = channel(gateway.local_addr()).await;
    let err = motor_client(&ch)
        .set_power(set_power("late:b", 1.0))
        .await
        .expect_err("not up yet");
    assert_eq!(err.code(), Code::Unavailable);
    let _late = SimPart::start(spec("late", &["b"]), addr).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !listed_names(&ch).await.contains(&"late:b".to_owned()) {
        assert!(Instant::now() < deadline, "late part never listed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    motor_client(&ch)
        .set_power(set_power("late:b", 1.0))
        .await
        .expect("routes once up");
}

#[tokio::test]
async fn stop_all_reaches_every_part_and_reports_a_dead_one() {
    let mut fleet = demo().await;
    let ch = fleet.channel().await;
    for name in ["motor1", "sub1:motor1", "sub2:lift", "cell-m1"] {
        motor_client(&ch)
            .set_power(set_power(name, 0.9))
            .await
            .expect("set");
    }
    robot_client(&ch)
        .stop_all(robot::StopAllRequest::default())
        .await
        .expect("all parts stop");
    for (part, motor) in [
        ("main", "motor1"),
        ("sub1", "motor1"),
        ("sub2", "lift"),
        ("cell", "m1"),
    ] {
        assert_eq!(
            fleet.part(part).log().motor(motor).map(|m| m.power),
            Some(0.0),
            "{part}:{motor}"
        );
    }

    motor_client(&ch)
        .set_power(set_power("cell-m1", 0.9))
        .await
        .expect("set");
    let _killed = fleet.kill("sub2").await;
    let err = robot_client(&ch)
        .stop_all(robot::StopAllRequest::default())
        .await
        .expect_err("sub2 is down");
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("sub2"), "{}", err.message());
    assert_eq!(
        fleet.part("cell").log().motor("m1").map(|m| m.power),
        Some(0.0),
        "the others still stopped"
    );
}

#[tokio::test]
async fn machine_status_lists_parts_as_remotes_with_state() {
    let mut fleet = demo().await;
    let ch = fleet.channel().await;
    let _killed = fleet.kill("sub2").await;
    let status = robot_client(&ch)
        .get_machine_status(robot::GetMachineStatusRequest {})
        .await
        .expect("ok")
        .into_inner();
    let state_of = |name: &str, subtype: &str| {
        status
            .resources
            .iter()
            .find(|r| {
                r.name
                    .as_ref()
                    .is_some_and(|n| n.name == name && n.subtype == subtype)
            })
            .map(|r| (r.state, r.error.clone()))
    };
    use robot::resource_status::State;
    assert_eq!(state_of("sub1", "").map(|s| s.0), Some(State::Ready as i32));
    let (sub2_state, sub2_error) = state_of("sub2", "").expect("sub2 listed as a remote");
    assert_eq!(sub2_state, State::Unhealthy as i32);
    assert!(!sub2_error.is_empty());
    assert_eq!(
        state_of("sub1:motor1", "motor").map(|s| s.0),
        Some(State::Ready as i32)
    );
    assert_eq!(
        state_of("sub2:lift", "motor").map(|s| s.0),
        Some(State::Ready as i32),
        "last known, like RDK"
    );
    assert_eq!(
        state_of("cell-m1", "motor").map(|s| s.0),
        Some(State::Ready as i32)
    );
    assert_eq!(
        status.state,
        robot::get_machine_status_response::State::Running as i32
    );
}

#[tokio::test]
async fn operations_are_qualified_by_part_and_route_back() {
    let fleet = demo().await;
    let ch = fleet.channel().await;
    let ops = robot_client(&ch)
        .get_operations(robot::GetOperationsRequest {})
        .await
        .expect("ok")
        .into_inner()
        .operations;
    let ids: Vec<String> = ops.iter().map(|o| o.id.clone()).collect();
    for part in ["main", "sub1", "sub2", "cell"] {
        assert!(ids.contains(&format!("{part}:op-1")), "{ids:?}");
    }
    robot_client(&ch)
        .cancel_operation(robot::CancelOperationRequest {
            id: "sub2:op-1".into(),
        })
        .await
        .expect("ok");
    assert_eq!(
        fleet.part("sub2").log().names_for("CancelOperation"),
        vec!["op-1"]
    );
    let err = robot_client(&ch)
        .cancel_operation(robot::CancelOperationRequest {
            id: "nopart:op-1".into(),
        })
        .await
        .expect_err("unknown part");
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn resource_names_answer_fast_while_a_part_hangs() {
    // A part that takes 3 s for everything: listing comes from the cache.
    let mut slow = spec("slow", &["m"]);
    slow.delay = Some(Duration::from_secs(3));
    let fleet = fleet(vec![(spec("ok", &["a"]), None), (slow, None)], None, |_| {}).await;
    let ch = fleet.channel().await;
    let started = Instant::now();
    let names = listed_names(&ch).await;
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert!(names.contains(&"slow:m".to_owned()) && names.contains(&"ok:a".to_owned()));
}

#[tokio::test]
async fn thousand_concurrent_streams_across_parts() {
    let fleet = demo().await;
    let ch = fleet.channel().await;
    let targets = ["echo1", "sub1:echo1"];
    let calls = (0..1000).map(|i| {
        let ch = ch.clone();
        let name = targets[i % 2];
        async move {
            let mut echoes = echo::test_echo_service_client::TestEchoServiceClient::new(ch);
            let message = format!("s{i}");
            let got: Vec<String> = echoes
                .echo_multiple(echo::EchoMultipleRequest {
                    name: name.into(),
                    message: message.clone(),
                })
                .await
                .expect("stream opens")
                .into_inner()
                .map(|m| m.expect("message").message)
                .collect()
                .await;
            assert_eq!(got.concat(), message);
        }
    });
    tokio::time::timeout(
        Duration::from_secs(60),
        futures_util::future::join_all(calls),
    )
    .await
    .expect("all complete");
    assert_eq!(
        fleet.part("sub1").log().names_for("EchoMultiple").len(),
        500
    );
    assert_eq!(
        fleet.part("main").log().names_for("EchoMultiple").len(),
        500
    );
}

#[tokio::test]
async fn graceful_shutdown_lets_an_in_flight_call_finish() {
    let mut slow = spec("slow", &["m"]);
    slow.delay = Some(Duration::from_millis(700));
    let fleet = fleet(vec![(slow, None)], None, |_| {}).await;
    let ch = fleet.channel().await;
    let call =
        tokio::spawn(async move { motor_client(&ch).set_power(set_power("slow:m", 0.5)).await });
    wait_for("call at the part", Duration::from_secs(5), || {
        !fleet.part("slow").log().names_for("SetPower").is_empty()
    })
    .await;
    let Fleet {
        gateway,
        parts: _parts,
        ..
    } = fleet;
    gateway.shutdown().await;
    call.await
        .unwrap()
        .expect("in-flight call completed during drain");
}

#[tokio::test]
async fn silently_hung_part_is_detected_by_keepalive_and_recovers() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("partgate=debug")
        .with_test_writer()
        .try_init();
    let mut slow = spec("hung", &["m"]);
    slow.delay = Some(Duration::from_millis(1500));
    let part = SimPart::start(slow, LOOPBACK.parse().unwrap())
        .await
        .unwrap();
    let relay = Relay::start(part.addr()).await;
    let ok = SimPart::start(spec("ok", &["a"]), LOOPBACK.parse().unwrap())
        .await
        .unwrap();
    let mut config = partgate::config::Config {
        remotes: vec![
            remote("hung", relay.addr, None),
            remote("ok", ok.addr(), None),
        ],
        ..Default::default()
    };
    config.network.bind_address = LOOPBACK.into();
    config.gateway.keepalive_interval = "300ms".into();
    config.gateway.keepalive_timeout = "300ms".into();
    let gateway = partgate::Gateway::start(config.validate().unwrap())
        .await
        .unwrap();
    let ch = channel(gateway.local_addr()).await;
    let hung = || gateway.pool().parts()[0].state();

    // A call in flight when the part hangs fails with UNAVAILABLE once keepalive gives up.
    let in_flight = {
        let ch = ch.clone();
        tokio::spawn(async move { motor_client(&ch).set_power(set_power("hung:m", 0.5)).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    relay.freeze(true);
    let started = Instant::now();
    let err = in_flight.await.unwrap().expect_err("part hung mid-call");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "noticed after {:?}",
        started.elapsed()
    );
    wait_for("hung part marked down", Duration::from_secs(3), || {
        hung() == PartState::Disconnected
    })
    .await;

    // While hung: listed, failing fast; the other part is unaffected.
    assert!(listed_names(&ch).await.contains(&"hung:m".to_owned()));
    let started = Instant::now();
    let err = motor_client(&ch)
        .set_power(set_power("hung:m", 0.5))
        .await
        .expect_err("down");
    assert_eq!(err.code(), Code::Unavailable);
    assert!(started.elapsed() < Duration::from_millis(500));
    motor_client(&ch)
        .set_power(set_power("ok:a", 0.5))
        .await
        .expect("other part fine");

    relay.freeze(false);
    wait_for("hung part back", Duration::from_secs(10), || {
        hung() == PartState::Connected
    })
    .await;
    motor_client(&ch)
        .set_power(set_power("hung:m", 0.5))
        .await
        .expect("recovered");
}

const SET_POWER: &str = "/viam.component.motor.v1.MotorService/SetPower";

/// A raw HTTP/2 client connection to the gateway (h2c), so a test controls its frames.
async fn h2_connect(addr: std::net::SocketAddr) -> h2::client::SendRequest<bytes::Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    send
}

/// Opens a SetPower call on `send`, its one message sent and the request stream ended.
fn start_set_power(
    send: &mut h2::client::SendRequest<bytes::Bytes>,
    addr: std::net::SocketAddr,
    name: &str,
) -> Result<(h2::client::ResponseFuture, h2::SendStream<bytes::Bytes>), h2::Error> {
    let head = http::Request::post(format!("http://{addr}{SET_POWER}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (resp, mut tx) = send.send_request(head, false)?;
    let body = grpc_frame(false, &encode(&set_power(name, 0.5)));
    tx.send_data(body.into(), true)?;
    Ok((resp, tx))
}

/// Lines of the gateway's metrics for `name` that contain every one of `labels`.
fn metric_lines(gateway: &partgate::Gateway, name: &str, labels: &[&str]) -> Vec<String> {
    gateway
        .metrics()
        .encode()
        .lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|want| l.contains(want)))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn client_reset_before_the_answer_cancels_the_call_at_the_part() {
    let mut slow = spec("slow", &["m"]);
    slow.delay = Some(Duration::from_secs(3));
    let fleet = fleet(vec![(slow, None)], None, |_| {}).await;
    let send = h2_connect(fleet.addr()).await;
    let mut send = send.ready().await.unwrap();
    let (resp, tx) = start_set_power(&mut send, fleet.addr(), "slow:m").unwrap();
    wait_for("call at the part", Duration::from_secs(5), || {
        !fleet.part("slow").log().names_for("SetPower").is_empty()
    })
    .await;
    // Dropping both halves of an open stream makes the client send RST_STREAM(CANCEL).
    let reset_at = Instant::now();
    drop((resp, tx));
    let cancelled = ["part=\"slow\"", "code=\"CANCELLED\""];
    wait_for(
        "call cancelled at the gateway",
        Duration::from_secs(2),
        || !metric_lines(&fleet.gateway, "partgate_calls_finished_total", &cancelled).is_empty(),
    )
    .await;
    // Well before the part would have answered: the gateway dropped the part's stream too, and
    // the part's concurrency slot is free again.
    assert!(reset_at.elapsed() < Duration::from_secs(2));
    let in_flight = metric_lines(
        &fleet.gateway,
        "partgate_calls_in_flight",
        &["part=\"slow\""],
    );
    assert!(in_flight.iter().all(|l| l.ends_with(" 0")), "{in_flight:?}");
}

#[tokio::test]
async fn drain_sends_goaway_on_http2_and_finishes_open_streams() {
    let mut slow = spec("slow", &["m"]);
    slow.delay = Some(Duration::from_millis(700));
    let fleet = fleet(vec![(slow, None)], None, |_| {}).await;
    let addr = fleet.addr();
    let send = h2_connect(addr).await;
    let mut ready = send.clone().ready().await.unwrap();
    let (in_flight, _tx) = start_set_power(&mut ready, addr, "slow:m").unwrap();
    wait_for("call at the part", Duration::from_secs(5), || {
        !fleet.part("slow").log().names_for("SetPower").is_empty()
    })
    .await;
    let Fleet {
        gateway,
        parts: _parts,
        ..
    } = fleet;
    let shutdown = tokio::spawn(gateway.shutdown());
    // GOAWAY (and its ping round trip) reach the client well within this.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = match send.clone().ready().await {
        Err(_) => true,
        Ok(mut s) => match start_set_power(&mut s, addr, "slow:m") {
            Err(_) => true,
            Ok((resp, _tx)) => resp.await.is_err(),
        },
    };
    assert!(refused, "a new stream was accepted after GOAWAY");
    // The call that was open when the drain began still gets its whole answer.
    let resp = in_flight
        .await
        .expect("in-flight call answered during drain");
    assert_eq!(resp.status(), http::StatusCode::OK);
    let mut body = resp.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await.unwrap().expect("trailers");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    tokio::time::timeout(Duration::from_secs(5), shutdown)
        .await
        .expect("drain finished once the open stream ended")
        .unwrap();
}

/// Thread-per-core: every worker sends its calls on its own connection to the part (dialed on
/// its first call, which goes on the main connection meanwhile), and those connections follow
/// the part down and back up.
#[tokio::test]
async fn each_worker_gets_its_own_part_connection_which_follows_the_part() {
    let (mut fleet, channels, part_log) = three_workers_with_their_own_connections().await;
    let accepted = || part_log.accepted.load(std::sync::atomic::Ordering::Relaxed);
    let open = |fleet: &Fleet| fleet.gateway.pool().parts()[0].open_connections();
    let call_everywhere = |power: f64| {
        let channels = channels.clone();
        async move {
            let mut results = Vec::new();
            for ch in &channels {
                results.push(motor_client(ch).set_power(set_power("p:m", power)).await);
            }
            results
        }
    };
    let before = fleet.part("p").log().calls.lock().unwrap().len();
    for result in call_everywhere(0.5).await {
        result.expect("call on a worker's connection");
    }
    let log = fleet.part("p").log().calls.lock().unwrap().clone();
    assert_eq!(
        &log[before..],
        &[
            ("SetPower".to_owned(), "m".to_owned()),
            ("SetPower".to_owned(), "m".to_owned()),
            ("SetPower".to_owned(), "m".to_owned()),
        ],
        "every worker's connection rewrites the name"
    );
    assert_eq!(accepted(), 3, "calls reuse the workers' connections");

    // The part goes down: every worker fails fast, none keeps a connection.
    let killed = fleet.kill("p").await;
    for result in call_everywhere(0.5).await {
        let err = result.expect_err("part is down");
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    }
    assert_eq!(open(&fleet), 0);

    // Back up: every worker recovers and dials again, without client action.
    fleet.restart("p", killed).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let results = call_everywhere(0.75).await;
        if results.iter().all(Result::is_ok) && open(&fleet) == 3 {
            break;
        }
        for err in results.into_iter().filter_map(Result::err) {
            assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        }
        assert!(Instant::now() < deadline, "workers never reconnected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(accepted(), 6, "three connections again after the restart");
}

/// A part that sends GOAWAY on its connections (and keeps serving) costs no call: the
/// connections are replaced, the main one at once, the workers' on their next call.
#[tokio::test]
async fn part_goaway_on_every_connection_fails_no_call() {
    let (fleet, channels, part_log) = three_workers_with_their_own_connections().await;
    let accepted = || part_log.accepted.load(std::sync::atomic::Ordering::Relaxed);

    // Calls run on every client connection while the part sends GOAWAY three times.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let callers: Vec<_> = channels
        .iter()
        .map(|ch| {
            let (ch, stop) = (ch.clone(), stop.clone());
            tokio::spawn(async move {
                let mut calls = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    motor_client(&ch)
                        .set_power(set_power("p:m", 0.2))
                        .await
                        .expect("no call fails across the part's GOAWAY");
                    calls += 1;
                }
                calls
            })
        })
        .collect();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        fleet.part("p").goaway();
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for caller in callers {
        assert!(caller.await.expect("caller") > 0);
    }
    assert!(
        accepted() >= 6,
        "connections were replaced: {} accepted",
        accepted()
    );
    assert_eq!(
        fleet.gateway.pool().parts()[0].state(),
        PartState::Connected
    );
}

/// A gateway with three workers in front of part `p` (motor `m`), and a client connection on
/// each worker, called through until every worker has its own connection to the part: one
/// each, none dialed twice, and only the main one before any call.
async fn three_workers_with_their_own_connections() -> (
    Fleet,
    Vec<tonic::transport::Channel>,
    std::sync::Arc<sim::PartLog>,
) {
    let fleet = fleet(vec![(spec("p", &["m"]), None)], None, |c| {
        c.gateway.worker_threads = Some(3);
    })
    .await;
    assert_eq!(fleet.gateway.workers(), 3);
    let part_log = fleet.part("p").log().clone();
    let accepted = || part_log.accepted.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(accepted(), 1, "only the main connection before any call");
    let mut channels = Vec::new();
    for _ in 0..3 {
        channels.push(fleet.channel().await);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while fleet.gateway.pool().parts()[0].open_connections() < 3 {
        for ch in &channels {
            motor_client(ch)
                .set_power(set_power("p:m", 0.25))
                .await
                .expect("calls succeed while the workers dial");
        }
        assert!(
            Instant::now() < deadline,
            "workers never got their own connection"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        accepted(),
        3,
        "one connection per worker, none dialed twice"
    );
    (fleet, channels, part_log)
}
