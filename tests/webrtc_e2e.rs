//! End to end over the REAL WebRTC transport: the demo fleet behind a real gateway, callers that
//! signal on the gateway's port (`dial`) and carry gRPC over str0m (ICE, DTLS, SCTP) on
//! 127.0.0.1, each dial from its own caller `Endpoint` (two peers between the same two of our
//! endpoints would share a 5-tuple; see `webrtc::transport`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use partgate::ingress::webrtc::client::{DialError, WebRtcClient, dial};
use partgate::ingress::webrtc::transport::{Endpoint, TransportConfig};
use partgate::proto::rpc::v1 as rpc;
use support::*;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

const WATCH: &str = "/acme.component.counter.v1.CounterService/Watch";
const CHAT: &str = "/acme.component.counter.v1.CounterService/Chat";

type Counters = counter::counter_service_client::CounterServiceClient<WebRtcClient>;
type Echoes = echo::test_echo_service_client::TestEchoServiceClient<WebRtcClient>;
type Motors = motor::motor_service_client::MotorServiceClient<WebRtcClient>;

/// A fresh caller endpoint on loopback.
async fn caller() -> Endpoint {
    Endpoint::bind(TransportConfig {
        bind_ip: [127, 0, 0, 1].into(),
        port_range: None,
        public_ips: Vec::new(),
        connect_timeout: Duration::from_secs(20),
        max_peers: 4,
    })
    .await
    .expect("caller endpoint")
}

fn host(fleet: &Fleet) -> String {
    format!("localhost:{}", fleet.addr().port())
}

/// Dials the gateway over WebRTC from `endpoint`.
async fn dial_from(
    fleet: &Fleet,
    endpoint: &Endpoint,
    token: Option<&str>,
) -> Result<WebRtcClient, DialError> {
    dial(
        endpoint,
        fleet.channel().await,
        &host(fleet),
        token,
        Duration::from_secs(20),
    )
    .await
}

/// A fresh endpoint and a connection from it (keep the endpoint alive as long as the client).
async fn connect(fleet: &Fleet) -> (Endpoint, WebRtcClient) {
    let endpoint = caller().await;
    let c = dial_from(fleet, &endpoint, None)
        .await
        .expect("dialed over WebRTC");
    (endpoint, c)
}

fn open_streams(fleet: &Fleet) -> i64 {
    fleet.gateway.metrics().webrtc().open_streams()
}

fn open_peers(fleet: &Fleet) -> i64 {
    fleet.gateway.metrics().webrtc().open_peers()
}

fn metric(fleet: &Fleet, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    Exposition::parse(&fleet.gateway.metrics().encode()).get(name, labels)
}

fn chat_msg(name: &str, text: &str) -> counter::ChatRequest {
    counter::ChatRequest {
        name: name.into(),
        text: text.into(),
    }
}

#[tokio::test]
async fn unary_and_every_streaming_kind_over_a_real_data_channel() {
    let fleet = demo().await;
    let (_ep, c) = connect(&fleet).await;
    Motors::new(c.clone())
        .set_power(set_power("sub1:motor1", 0.5))
        .await
        .expect("unary");
    assert_eq!(
        fleet.part("sub1").log().names_for("SetPower"),
        vec!["motor1"]
    );
    let mut counters = Counters::new(c.clone());
    let adds = (1..=50).map(|v| counter::AddRequest {
        name: "sub1:c1".into(),
        value: v,
    });
    let sum = counters
        .add(tokio_stream::iter(adds))
        .await
        .expect("client streaming")
        .into_inner();
    assert_eq!((sum.total, sum.count), (1275, 50));
    let seqs: Vec<i32> = counters
        .watch(counter::WatchRequest {
            name: "sub1:c1".into(),
            count: 500,
        })
        .await
        .expect("server streaming")
        .into_inner()
        .map(|r| r.unwrap().seq)
        .collect()
        .await;
    assert_eq!(seqs, (0..500).collect::<Vec<_>>());
    // Bidi: message by message, in lock step.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(chat_msg("sub1:c1", "0")).await.unwrap();
    let mut chat = counters
        .chat(ReceiverStream::new(rx))
        .await
        .expect("bidi")
        .into_inner();
    for i in 0..20 {
        if i > 0 {
            tx.send(chat_msg("sub1:c1", &i.to_string())).await.unwrap();
        }
        assert_eq!(chat.next().await.unwrap().unwrap().text, i.to_string());
    }
    drop(tx);
    assert!(chat.next().await.is_none(), "ends after eos");
    // Server streaming on the main part (no prefix), many small messages.
    let chars: String = Echoes::new(c.clone())
        .echo_multiple(echo::EchoMultipleRequest {
            name: "echo1".into(),
            message: "hello over webrtc".into(),
        })
        .await
        .expect("echo multiple")
        .into_inner()
        .map(|r| r.unwrap().message)
        .collect()
        .await;
    assert_eq!(chars, "hello over webrtc");
    let err = Motors::new(c)
        .set_power(set_power("nowhere:motor1", 0.5))
        .await
        .expect_err("no such part");
    assert_eq!(err.code(), Code::NotFound);
    wait_for("every stream closed", Duration::from_secs(5), || {
        open_streams(&fleet) == 0
    })
    .await;
    assert_eq!(open_peers(&fleet), 1);
}

#[tokio::test]
async fn four_and_thirty_mebibyte_messages_cross_both_ways() {
    let fleet = demo().await;
    let (_ep, c) = connect(&fleet).await;
    let mut echoes = Echoes::new(c)
        .max_decoding_message_size(32 << 20)
        .max_encoding_message_size(32 << 20);
    for size in [4 << 20, 30 << 20] {
        // Not one repeated byte, so a reordered or dropped 16 KiB packet would show.
        let big: String = (0..size)
            .map(|i: usize| char::from(b'a' + (i % 23) as u8))
            .collect();
        let started = Instant::now();
        let reply = tokio::time::timeout(
            Duration::from_secs(120),
            echoes.echo(echo::EchoRequest {
                name: "sub1:echo1".into(),
                message: big.clone(),
            }),
        )
        .await
        .expect("in time")
        .expect("big echo")
        .into_inner();
        eprintln!("{} MiB echoed in {:?}", size >> 20, started.elapsed());
        assert!(reply.message == big, "{size} bytes came back intact");
    }
}

#[tokio::test]
async fn dropping_a_server_stream_mid_way_cancels_it_at_the_part() {
    let fleet = demo().await;
    let (_ep, c) = connect(&fleet).await;
    let mut watch = Counters::new(c.clone())
        .watch(counter::WatchRequest {
            name: "sub1:c1".into(),
            count: i32::MAX,
        })
        .await
        .expect("server streaming")
        .into_inner();
    for seq in 0..100 {
        assert_eq!(watch.next().await.unwrap().unwrap().seq, seq);
    }
    assert_eq!(open_streams(&fleet), 1);
    drop(watch); // rst_stream
    wait_for("the stream closed", Duration::from_secs(5), || {
        open_streams(&fleet) == 0
    })
    .await;
    wait_for("the part's call cancelled", Duration::from_secs(5), || {
        metric(
            &fleet,
            "partgate_calls_finished_total",
            &[("part", "sub1"), ("method", WATCH), ("code", "CANCELLED")],
        ) == Some(1.0)
    })
    .await;
    // The peer carries on.
    Motors::new(c)
        .set_power(set_power("sub1:motor1", 0.1))
        .await
        .expect("the peer still serves calls");
    assert_eq!(open_peers(&fleet), 1);
}

#[tokio::test]
async fn two_hundred_concurrent_streams_on_one_peer() {
    let fleet = demo().await;
    let (_ep, c) = connect(&fleet).await;
    // 200 bidi streams open at once, each answered its first message.
    let mut held = Vec::new();
    for i in 0..200 {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(chat_msg("sub1:c1", &format!("a{i}")))
            .await
            .unwrap();
        let mut chat = Counters::new(c.clone())
            .chat(ReceiverStream::new(rx))
            .await
            .expect("bidi opens")
            .into_inner();
        assert_eq!(chat.next().await.unwrap().unwrap().text, format!("a{i}"));
        held.push((tx, chat));
    }
    assert_eq!(open_streams(&fleet), 200);
    // All of them talk at the same time.
    let tasks: Vec<_> = held
        .into_iter()
        .enumerate()
        .map(|(i, (tx, mut chat))| {
            tokio::spawn(async move {
                for k in 0..5 {
                    let text = format!("b{i}-{k}");
                    tx.send(chat_msg("sub1:c1", &text)).await.unwrap();
                    assert_eq!(chat.next().await.unwrap().unwrap().text, text);
                }
                drop(tx);
                assert!(chat.next().await.is_none());
            })
        })
        .collect();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("in time")
            .unwrap();
    }
    // And 200 concurrent unary calls on the same peer.
    let calls: Vec<_> = (0..200)
        .map(|i| {
            let mut m = Motors::new(c.clone());
            tokio::spawn(async move {
                m.set_power(set_power("sub1:motor1", f64::from(i) / 200.0))
                    .await
                    .map(|_| ())
            })
        })
        .collect();
    for call in calls {
        call.await.unwrap().expect("concurrent unary");
    }
    wait_for("every stream closed", Duration::from_secs(5), || {
        open_streams(&fleet) == 0
    })
    .await;
    assert_eq!(c.open_streams(), 0);
}

#[tokio::test]
async fn a_caller_that_vanishes_mid_call_leaves_nothing_behind() {
    let fleet = demo().await;
    let addr = fleet.addr();
    let host = host(&fleet);
    // The caller lives on its own runtime, so that it can vanish without a goodbye.
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.spawn(async move {
            let endpoint = caller().await;
            let c = dial(
                &endpoint,
                channel(addr).await,
                &host,
                None,
                Duration::from_secs(20),
            )
            .await
            .expect("dialed");
            let mut counters = Counters::new(c.clone());
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tx.send(chat_msg("sub1:c1", "hi")).await.unwrap();
            let mut chat = counters
                .chat(ReceiverStream::new(rx))
                .await
                .unwrap()
                .into_inner();
            chat.next().await.unwrap().unwrap();
            let watch = counters
                .watch(counter::WatchRequest {
                    name: "sub1:c1".into(),
                    count: i32::MAX,
                })
                .await
                .unwrap();
            ready_tx.send(()).unwrap();
            // Hold everything (and read nothing more) until the runtime is torn down.
            std::future::pending::<()>().await;
            drop((endpoint, tx, chat, watch));
        });
        stop_rx.recv().unwrap();
        // Every task dropped, sockets closed: no SCTP shutdown, no close_notify goes out.
        rt.shutdown_background();
    });
    tokio::time::timeout(Duration::from_secs(30), ready_rx)
        .await
        .expect("caller ready")
        .unwrap();
    assert_eq!(open_peers(&fleet), 1);
    assert_eq!(open_streams(&fleet), 2);
    let vanished = Instant::now();
    stop_tx.send(()).unwrap();
    thread.join().unwrap();
    wait_for(
        "the gateway's peer and streams gone",
        Duration::from_secs(10),
        || open_peers(&fleet) == 0 && open_streams(&fleet) == 0,
    )
    .await;
    eprintln!("vanished caller cleaned up after {:?}", vanished.elapsed());
    wait_for("the part's calls ended", Duration::from_secs(5), || {
        [CHAT, WATCH].iter().all(|m| {
            metric(
                &fleet,
                "partgate_calls_in_flight",
                &[("part", "sub1"), ("method", m)],
            ) == Some(0.0)
        })
    })
    .await;
    assert_eq!(
        fleet
            .gateway
            .webrtc_endpoint()
            .expect("transport running")
            .peers(),
        0
    );
}

const KEY_ALL: &str = "7d4b2c3a-0000-4000-8000-0000000000a1";
const KEY_SUB1: &str = "7d4b2c3a-0000-4000-8000-0000000000a2";

async fn token(fleet: &Fleet, entity: &str, key: &str) -> String {
    rpc::auth_service_client::AuthServiceClient::new(fleet.channel().await)
        .authenticate(rpc::AuthenticateRequest {
            entity: entity.into(),
            credentials: Some(rpc::Credentials {
                r#type: "api-key".into(),
                payload: key.into(),
            }),
        })
        .await
        .expect("authenticated")
        .into_inner()
        .access_token
}

#[tokio::test]
async fn auth_gates_signaling_and_a_scoped_key_stays_in_its_parts() {
    let specs = vec![
        (spec("main", &["motor1"]), None),
        (spec("sub1", &["motor1"]), None),
        (spec("sub2", &["lift"]), None),
    ];
    let fleet = fleet(specs, Some("main"), |c| {
        c.auth = Some(
            serde_json::from_value(serde_json::json!({
                "handlers": [{ "type": "api-key", "config": { KEY_ALL: "api-key-all-parts", KEY_SUB1: "api-key-sub1-only" } }]
            }))
            .unwrap(),
        );
        c.gateway.api_key_parts =
            HashMap::from([(KEY_SUB1.to_owned(), vec!["sub1".to_owned()])]);
    })
    .await;
    let endpoint = caller().await;
    match dial_from(&fleet, &endpoint, None).await {
        Err(DialError::Signaling(s)) => assert_eq!(s.code(), Code::Unauthenticated, "{s:?}"),
        Err(e) => panic!("expected UNAUTHENTICATED, got {e:?}"),
        Ok(_) => panic!("dialed without a token"),
    }
    match dial_from(&fleet, &endpoint, Some("not-a-token")).await {
        Err(DialError::Signaling(s)) => assert_eq!(s.code(), Code::Unauthenticated, "{s:?}"),
        Err(e) => panic!("expected UNAUTHENTICATED, got {e:?}"),
        Ok(_) => panic!("dialed with a bad token"),
    }
    assert_eq!(open_peers(&fleet), 0);

    let all = token(&fleet, KEY_ALL, "api-key-all-parts").await;
    let c = dial_from(&fleet, &endpoint, Some(&all))
        .await
        .expect("dialed with a token");
    let mut motors = Motors::new(c);
    motors
        .set_power(set_power("sub2:lift", 0.5))
        .await
        .expect("the full key reaches every part");
    assert_eq!(fleet.part("sub2").log().names_for("SetPower"), vec!["lift"]);

    let scoped = token(&fleet, KEY_SUB1, "api-key-sub1-only").await;
    let other = caller().await;
    let c = dial_from(&fleet, &other, Some(&scoped))
        .await
        .expect("dialed with the scoped key");
    let mut motors = Motors::new(c.clone());
    motors
        .set_power(set_power("sub1:motor1", 0.5))
        .await
        .expect("in scope");
    let err = motors
        .set_power(set_power("sub2:lift", 0.5))
        .await
        .expect_err("out of scope");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // An unprefixed name resolves within the key's own view: never to the main part.
    let _ = motors.set_power(set_power("motor1", 0.5)).await;
    assert_eq!(fleet.part("sub2").log().names_for("SetPower"), vec!["lift"]);
    assert!(fleet.part("main").log().names_for("SetPower").is_empty());
    let names = robot::robot_service_client::RobotServiceClient::new(c)
        .resource_names(robot::ResourceNamesRequest {})
        .await
        .unwrap()
        .into_inner()
        .resources;
    assert!(!names.is_empty());
    assert!(
        names.iter().all(|r| r.name.starts_with("sub1:")),
        "{names:?}"
    );
}

#[tokio::test]
async fn ten_callers_at_once_are_all_served() {
    let fleet = demo().await;
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let addr = fleet.addr();
            let host = host(&fleet);
            tokio::spawn(async move {
                let endpoint = caller().await;
                let c = dial(
                    &endpoint,
                    channel(addr).await,
                    &host,
                    None,
                    Duration::from_secs(20),
                )
                .await
                .expect("dialed");
                let mut motors = Motors::new(c.clone());
                for k in 0..20 {
                    motors
                        .set_power(set_power("sub1:motor1", f64::from(i * 20 + k) / 1000.0))
                        .await
                        .expect("unary");
                }
                let n = Counters::new(c.clone())
                    .watch(counter::WatchRequest {
                        name: "sub1:c1".into(),
                        count: 50,
                    })
                    .await
                    .expect("watch")
                    .into_inner()
                    .collect::<Vec<_>>()
                    .await
                    .len();
                assert_eq!(n, 50);
                (endpoint, c)
            })
        })
        .collect();
    let mut held = Vec::new();
    for t in tasks {
        held.push(
            tokio::time::timeout(Duration::from_secs(90), t)
                .await
                .expect("in time")
                .unwrap(),
        );
    }
    assert_eq!(open_peers(&fleet), 10);
    assert_eq!(fleet.part("sub1").log().names_for("SetPower").len(), 200);
    // Closing the callers' endpoints ends their peers at the gateway.
    for (endpoint, _) in &held {
        endpoint.close();
    }
    wait_for("every peer closed", Duration::from_secs(10), || {
        open_peers(&fleet) == 0
    })
    .await;
}

#[tokio::test]
async fn fifty_fresh_connections_each_calling_as_soon_as_it_opens() {
    let fleet = demo().await;
    let started = Instant::now();
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let addr = fleet.addr();
            let host = host(&fleet);
            tokio::spawn(async move {
                let endpoint = caller().await;
                let c = dial(
                    &endpoint,
                    channel(addr).await,
                    &host,
                    None,
                    Duration::from_secs(30),
                )
                .await
                .expect("dialed");
                // No pause: the first call goes out right as the data channel opens.
                let reply = tokio::time::timeout(
                    Duration::from_secs(20),
                    Echoes::new(c.clone()).echo(echo::EchoRequest {
                        name: "echo1".into(),
                        message: format!("first {i}"),
                    }),
                )
                .await
                .expect("first call answered in time")
                .expect("first call")
                .into_inner();
                assert_eq!(reply.message, format!("first {i}"));
                endpoint.close();
            })
        })
        .collect();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("in time")
            .unwrap();
    }
    eprintln!("50 fresh connections answered in {:?}", started.elapsed());
    assert_eq!(fleet.part("main").log().names_for("Echo").len(), 50);
    wait_for("every peer closed", Duration::from_secs(10), || {
        open_peers(&fleet) == 0
    })
    .await;
}
