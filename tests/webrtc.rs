//! gRPC over the WebRTC data channel, and signaling: the real demo fleet and gateway on
//! loopback; the data-channel server on one end of a `ChannelIo::pair()` and either our
//! caller-side client (tonic clients over it) or hand-made frames on the other end.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use partgate::auth::Principal;
use partgate::ingress::webrtc::cardinality::{MethodCache, Requests};
use partgate::ingress::webrtc::channel::ChannelIo;
use partgate::ingress::webrtc::client::{ClientOptions, WebRtcClient};
use partgate::ingress::webrtc::server;
use partgate::ingress::webrtc::wire;
use partgate::proto::rpc::webrtc::v1 as pb;
use prost::Message;
use support::*;
use tokio_stream::StreamExt;
use tonic::Code;

const SET_POWER: &str = "/viam.component.motor.v1.MotorService/SetPower";
const CHAT: &str = "/acme.component.counter.v1.CounterService/Chat";
const ECHO: &str = "/viam.component.testecho.v1.TestEchoService/Echo";
/// A custom (module) API's unary and client-streaming methods: not built in, so their
/// cardinality comes from reflection.
const GET: &str = "/acme.component.counter.v1.CounterService/Get";
const ADD: &str = "/acme.component.counter.v1.CounterService/Add";
const COUNTER: &str = "acme.component.counter.v1.CounterService";

/// The data-channel server for `principal` on one end of a pair; the other end.
fn peer(fleet: &Fleet, principal: Principal) -> (ChannelIo, tokio::task::JoinHandle<()>) {
    let (server_end, client_end) = ChannelIo::pair();
    let task = tokio::spawn(server::serve(
        server_end,
        fleet.gateway.stack(),
        principal,
        fleet.gateway.metrics().webrtc().clone(),
    ));
    (client_end, task)
}

/// Like [`peer`], with a cache of custom APIs' cardinality of the test's own.
fn peer_with_cache(
    fleet: &Fleet,
    cache: Arc<MethodCache>,
) -> (ChannelIo, tokio::task::JoinHandle<()>) {
    let (server_end, client_end) = ChannelIo::pair();
    let task = tokio::spawn(server::serve_with_cache(
        server_end,
        fleet.gateway.stack(),
        Principal::anonymous(),
        fleet.gateway.metrics().webrtc().clone(),
        cache,
    ));
    (client_end, task)
}

fn client(fleet: &Fleet, options: ClientOptions) -> (WebRtcClient, tokio::task::JoinHandle<()>) {
    let (io, task) = peer(fleet, Principal::anonymous());
    (WebRtcClient::new(io, options), task)
}

fn open_streams(fleet: &Fleet) -> i64 {
    fleet.gateway.metrics().webrtc().open_streams()
}

async fn no_streams_left(fleet: &Fleet) {
    wait_for("every stream closed", Duration::from_secs(5), || {
        open_streams(fleet) == 0
    })
    .await;
}

// === hand-made frames ===

fn headers(id: u64, method: &str) -> Bytes {
    let h = pb::RequestHeaders {
        method: method.into(),
        metadata: None,
        timeout: None,
    };
    wire::request(id, pb::request::Type::Headers(h))
}

/// Headers with a deadline, as the TS SDK sends them.
fn headers_with_timeout(id: u64, method: &str, timeout: Duration) -> Bytes {
    let h = pb::RequestHeaders {
        method: method.into(),
        metadata: None,
        timeout: Some(timeout.try_into().unwrap()),
    };
    wire::request(id, pb::request::Type::Headers(h))
}

/// `has_message=false, eos=true`: the client's half-close on its own.
fn eos(id: u64) -> Bytes {
    let m = pb::RequestMessage {
        has_message: false,
        packet_message: None,
        eos: true,
    };
    wire::request(id, pb::request::Type::Message(m))
}

/// Whether anything arrives for stream `id` within `wait`.
async fn quiet_for(io: &mut ChannelIo, id: u64, wait: Duration) -> bool {
    let until = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(until, io.incoming.recv()).await {
            Err(_) => return true,
            Ok(None) => return false,
            Ok(Some(frame)) => {
                let resp = pb::Response::decode(frame).unwrap();
                if resp.stream.map(|s| s.id) == Some(id)
                    && matches!(resp.r#type, Some(pb::response::Type::Trailers(_)))
                {
                    return false;
                }
            }
        }
    }
}

fn packet(id: u64, data: Bytes, eom: bool, eos: bool) -> Bytes {
    let m = pb::RequestMessage {
        has_message: true,
        packet_message: Some(pb::PacketMessage { data, eom }),
        eos,
    };
    wire::request(id, pb::request::Type::Message(m))
}

/// Reads responses until stream `id`'s trailers; returns (saw headers first, messages, status).
async fn finish(io: &mut ChannelIo, id: u64) -> (bool, Vec<Bytes>, pb::ResponseTrailers) {
    let mut saw_headers = false;
    let mut messages = Vec::new();
    let mut partial = Vec::new();
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), io.incoming.recv())
            .await
            .expect("answer in time")
            .expect("peer alive");
        let resp = pb::Response::decode(frame).unwrap();
        if resp.stream.map(|s| s.id) != Some(id) {
            continue;
        }
        match resp.r#type.unwrap() {
            pb::response::Type::Headers(_) => saw_headers = true,
            pb::response::Type::Message(m) => {
                assert!(saw_headers, "headers come before messages");
                let p = m.packet_message.unwrap();
                partial.extend_from_slice(&p.data);
                if p.eom {
                    messages.push(Bytes::from(std::mem::take(&mut partial)));
                }
            }
            pb::response::Type::Trailers(t) => return (saw_headers, messages, t),
        }
    }
}

fn code(t: &pb::ResponseTrailers) -> i32 {
    t.status.as_ref().map_or(0, |s| s.code)
}

// === calls over the data channel ===

#[tokio::test]
async fn unary_and_listing_route_like_direct_calls() {
    let fleet = demo().await;
    let (c, _task) = client(&fleet, ClientOptions::default());
    // The first call is stream id 0.
    let mut motors = motor::motor_service_client::MotorServiceClient::new(c.clone());
    motors
        .set_power(set_power("sub1:motor1", 0.5))
        .await
        .expect("routed by name, prefix popped");
    assert_eq!(
        fleet.part("sub1").log().names_for("SetPower"),
        vec!["motor1"]
    );
    let names = robot::robot_service_client::RobotServiceClient::new(c.clone())
        .resource_names(robot::ResourceNamesRequest {})
        .await
        .expect("answered by the gateway")
        .into_inner()
        .resources;
    assert!(names.iter().any(|r| r.name == "sub1:motor1"), "{names:?}");
    let err = motors
        .set_power(set_power("nowhere:motor1", 0.5))
        .await
        .expect_err("no such part");
    assert_eq!(err.code(), Code::NotFound);
    no_streams_left(&fleet).await;
}

#[tokio::test]
async fn ts_style_calls_without_eos_are_dispatched_on_their_first_message() {
    let fleet = demo().await;
    let (c, _task) = client(&fleet, ClientOptions { send_eos: false });
    motor::motor_service_client::MotorServiceClient::new(c.clone())
        .set_power(set_power("motor1", 0.25))
        .await
        .expect("unary without eos");
    let mut replies = echo::test_echo_service_client::TestEchoServiceClient::new(c.clone())
        .echo_multiple(echo::EchoMultipleRequest {
            name: "echo1".into(),
            message: "abc".into(),
        })
        .await
        .expect("server streaming without eos")
        .into_inner();
    let mut got = String::new();
    while let Some(r) = replies.next().await {
        got.push_str(&r.unwrap().message);
    }
    assert_eq!(got, "abc");
}

/// One TS-style unary call (headers, one message, no eos) on stream `id`; its total and how
/// long the answer took.
async fn ts_get(io: &mut ChannelIo, id: u64, deadline: Duration) -> (i64, Duration) {
    let start = std::time::Instant::now();
    let req = encode(&counter::GetRequest { name: "c1".into() });
    io.outgoing
        .send(headers_with_timeout(id, GET, deadline))
        .await
        .unwrap();
    io.outgoing
        .send(packet(id, req.into(), true, false))
        .await
        .unwrap();
    let (_, messages, trailers) = finish(io, id).await;
    let took = start.elapsed();
    assert_eq!(code(&trailers), 0, "{trailers:?}");
    assert_eq!(messages.len(), 1);
    (
        counter::GetResponse::decode(messages[0].clone())
            .unwrap()
            .total,
        took,
    )
}

#[tokio::test]
async fn ts_style_unary_call_to_a_custom_api_completes_without_eos() {
    let fleet = demo().await;
    let cache = Arc::new(MethodCache::default());
    let (mut io, _task) = peer_with_cache(&fleet, cache.clone());
    assert_eq!(cache.known(GET), None, "not built in");
    // Without its cardinality the call would wait for eos until its 5 s deadline.
    let deadline = Duration::from_secs(5);
    let (_, cold) = ts_get(&mut io, 0, deadline).await;
    assert!(cold < Duration::from_secs(1), "first call took {cold:?}");
    assert_eq!(cache.known(GET), Some(Requests::Single));
    let (_, warm) = ts_get(&mut io, 1, deadline).await;
    let (_, builtin) = {
        let start = std::time::Instant::now();
        let req = encode(&echo::EchoRequest {
            name: "echo1".into(),
            message: "x".into(),
        });
        io.outgoing.send(headers(2, ECHO)).await.unwrap();
        io.outgoing
            .send(packet(2, req.into(), true, false))
            .await
            .unwrap();
        let answer = finish(&mut io, 2).await;
        (answer, start.elapsed())
    };
    eprintln!(
        "custom unary over the data channel: first {cold:?}, cached {warm:?}; built-in unary {builtin:?}"
    );
    // Concurrent first calls on a fresh cache: one lookup, at the part that owns the service.
    let cache = Arc::new(MethodCache::default());
    let (mut io, _task) = peer_with_cache(&fleet, cache);
    let before = fleet
        .part("sub1")
        .log()
        .names_for("FileContainingSymbol")
        .len();
    let req = encode(&counter::GetRequest { name: "c1".into() });
    for id in 0..5 {
        io.outgoing
            .send(headers_with_timeout(id, GET, deadline))
            .await
            .unwrap();
        io.outgoing
            .send(packet(id, req.clone().into(), true, false))
            .await
            .unwrap();
    }
    for id in 0..5 {
        let (_, _, trailers) = finish(&mut io, id).await;
        assert_eq!(code(&trailers), 0);
    }
    let asked = fleet.part("sub1").log().names_for("FileContainingSymbol");
    assert_eq!(asked[before..], [COUNTER.to_owned()], "one shared lookup");
    no_streams_left(&fleet).await;
}

#[tokio::test]
async fn custom_client_and_bidi_streams_are_not_half_closed_early() {
    let fleet = demo().await;
    let cache = Arc::new(MethodCache::default());
    let (mut io, _task) = peer_with_cache(&fleet, cache.clone());
    // Client streaming: two messages without eos, the lookup settles, a third, then eos.
    io.outgoing.send(headers(0, ADD)).await.unwrap();
    for value in 1..=2 {
        let req = encode(&counter::AddRequest {
            name: "c1".into(),
            value,
        });
        io.outgoing
            .send(packet(0, req.into(), true, false))
            .await
            .unwrap();
    }
    wait_for("Add's cardinality learned", Duration::from_secs(3), || {
        cache.known(ADD).is_some()
    })
    .await;
    assert_eq!(cache.known(ADD), Some(Requests::Stream));
    assert!(
        quiet_for(&mut io, 0, Duration::from_millis(200)).await,
        "still open"
    );
    let req = encode(&counter::AddRequest {
        name: "c1".into(),
        value: 3,
    });
    io.outgoing
        .send(packet(0, req.into(), true, false))
        .await
        .unwrap();
    io.outgoing.send(eos(0)).await.unwrap();
    let (_, messages, trailers) = finish(&mut io, 0).await;
    assert_eq!(code(&trailers), 0, "{trailers:?}");
    let sum = counter::AddResponse::decode(messages[0].clone()).unwrap();
    assert_eq!(
        (sum.total, sum.count),
        (6, 3),
        "every message reached the part"
    );
    // Bidi on a fresh cache: each message is answered, then eos ends it.
    let cache = Arc::new(MethodCache::default());
    let (mut io, _task) = peer_with_cache(&fleet, cache.clone());
    io.outgoing.send(headers(0, CHAT)).await.unwrap();
    let mut replies = Vec::new();
    for text in ["one", "two", "three"] {
        let req = encode(&counter::ChatRequest {
            name: "c1".into(),
            text: text.into(),
        });
        io.outgoing
            .send(packet(0, req.into(), true, false))
            .await
            .unwrap();
        if text == "one" {
            wait_for("Chat's cardinality learned", Duration::from_secs(3), || {
                cache.known(CHAT).is_some()
            })
            .await;
        }
    }
    io.outgoing.send(eos(0)).await.unwrap();
    let (_, messages, trailers) = finish(&mut io, 0).await;
    assert_eq!(code(&trailers), 0, "{trailers:?}");
    for m in messages {
        replies.push(counter::ChatResponse::decode(m).unwrap().text);
    }
    assert_eq!(replies, ["one", "two", "three"]);
    assert_eq!(cache.known(CHAT), Some(Requests::Stream));
}

#[tokio::test]
async fn without_reflection_a_custom_method_half_closes_on_eos() {
    let part = PartSpec {
        counters: vec!["c1".into()],
        no_reflection: true,
        ..spec("a", &[])
    };
    let fleet = fleet(vec![(part, None)], None, |_| {}).await;
    let cache = Arc::new(MethodCache::default());
    let (mut io, _task) = peer_with_cache(&fleet, cache.clone());
    let req = encode(&counter::GetRequest { name: "c1".into() });
    io.outgoing
        .send(headers_with_timeout(0, GET, Duration::from_secs(10)))
        .await
        .unwrap();
    io.outgoing
        .send(packet(0, req.into(), true, false))
        .await
        .unwrap();
    let start = std::time::Instant::now();
    wait_for("lookup failed", Duration::from_secs(1), || {
        cache.known(GET).is_some()
    })
    .await;
    assert_eq!(cache.known(GET), Some(Requests::Stream), "fallback");
    assert!(start.elapsed() < Duration::from_secs(1));
    // Today's behaviour: the call waits for eos...
    assert!(quiet_for(&mut io, 0, Duration::from_millis(300)).await);
    // ...and answers once it comes.
    io.outgoing.send(eos(0)).await.unwrap();
    let (_, messages, trailers) = finish(&mut io, 0).await;
    assert_eq!((code(&trailers), messages.len()), (0, 1), "{trailers:?}");
}

#[tokio::test]
async fn a_custom_method_whose_part_is_down_falls_back_fast() {
    let part = PartSpec {
        counters: vec!["c1".into()],
        ..spec("a", &["m1"])
    };
    let other = spec("b", &["m2"]);
    let mut fleet = fleet(vec![(part, None), (other, None)], None, |_| {}).await;
    let _killed = fleet.kill("a").await;
    let cache = Arc::new(MethodCache::default());
    let (mut io, _task) = peer_with_cache(&fleet, cache.clone());
    let start = std::time::Instant::now();
    let req = encode(&counter::GetRequest { name: "c1".into() });
    io.outgoing.send(headers(0, GET)).await.unwrap();
    io.outgoing
        .send(packet(0, req.into(), true, false))
        .await
        .unwrap();
    wait_for("lookup failed", Duration::from_secs(1), || {
        cache.known(GET).is_some()
    })
    .await;
    assert_eq!(cache.known(GET), Some(Requests::Stream));
    let took = start.elapsed();
    assert!(took < Duration::from_millis(500), "{took:?}");
    // The call itself fails on its own (no part for the name), whatever the cardinality.
    let (_, _, trailers) = finish(&mut io, 0).await;
    assert_ne!(code(&trailers), 0);
}

#[tokio::test]
async fn client_server_and_bidi_streaming() {
    let fleet = demo().await;
    let (c, _task) = client(&fleet, ClientOptions::default());
    let mut counters = counter::counter_service_client::CounterServiceClient::new(c.clone());
    let adds = (1..=4).map(|v| counter::AddRequest {
        name: "c1".into(),
        value: v,
    });
    let sum = counters
        .add(tokio_stream::iter(adds))
        .await
        .expect("client streaming")
        .into_inner();
    assert_eq!((sum.total, sum.count), (10, 4));
    let seqs: Vec<i32> = counters
        .watch(counter::WatchRequest {
            name: "c1".into(),
            count: 5,
        })
        .await
        .expect("server streaming")
        .into_inner()
        .map(|r| r.unwrap().seq)
        .collect()
        .await;
    assert_eq!(seqs, vec![0, 1, 2, 3, 4]);
    // Like over HTTP/2, the gateway answers once the first message (the name) is in.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let say = |text: &str| counter::ChatRequest {
        name: "sub1:c1".into(),
        text: text.into(),
    };
    tx.send(say("one")).await.unwrap();
    let mut chat = counters
        .chat(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("bidi")
        .into_inner();
    assert_eq!(chat.next().await.unwrap().unwrap().text, "one");
    tx.send(say("two")).await.unwrap();
    assert_eq!(chat.next().await.unwrap().unwrap().text, "two");
    drop(tx);
    assert!(chat.next().await.is_none(), "ends after eos");
    no_streams_left(&fleet).await;
}

#[tokio::test]
async fn one_mebibyte_messages_cross_many_packets_both_ways() {
    let fleet = demo().await;
    let (c, _task) = client(&fleet, ClientOptions::default());
    let big = "x".repeat(1 << 20);
    let reply = echo::test_echo_service_client::TestEchoServiceClient::new(c)
        .echo(echo::EchoRequest {
            name: "sub1:echo1".into(),
            message: big.clone(),
        })
        .await
        .expect("1 MiB echo")
        .into_inner();
    assert_eq!(reply.message.len(), big.len());
}

#[tokio::test]
async fn oversized_message_fails_its_stream_and_the_peer_survives() {
    let fleet = demo().await;
    let (mut io, _task) = peer(&fleet, Principal::anonymous());
    io.outgoing.send(headers(0, ECHO)).await.unwrap();
    let chunk = Bytes::from(vec![0u8; 1 << 20]);
    let sender = io.outgoing.clone();
    let feed = tokio::spawn(async move {
        for _ in 0..33 {
            if sender
                .send(packet(0, chunk.clone(), false, false))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let (saw_headers, _, trailers) = finish(&mut io, 0).await;
    feed.await.unwrap();
    assert!(saw_headers);
    assert_eq!(code(&trailers), Code::ResourceExhausted as i32);
    // The same peer still serves calls.
    let req = encode(&set_power("motor1", 0.1));
    io.outgoing.send(headers(1, SET_POWER)).await.unwrap();
    io.outgoing
        .send(packet(1, req.into(), true, false))
        .await
        .unwrap();
    let (_, messages, trailers) = finish(&mut io, 1).await;
    assert_eq!((code(&trailers), messages.len()), (0, 1));
}

#[tokio::test]
async fn reset_cancels_the_call_at_the_part_and_frees_the_slot() {
    let fleet = demo().await;
    let (c, _task) = client(&fleet, ClientOptions::default());
    let mut counters = counter::counter_service_client::CounterServiceClient::new(c.clone());
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(counter::ChatRequest {
        name: "c1".into(),
        text: "hi".into(),
    })
    .await
    .unwrap();
    let mut chat = counters
        .chat(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    chat.next().await.unwrap().unwrap();
    assert_eq!(open_streams(&fleet), 1);
    drop(chat); // rst_stream
    no_streams_left(&fleet).await;
    let cancelled = || {
        let m = Exposition::parse(&fleet.gateway.metrics().encode());
        m.get(
            "partgate_calls_finished_total",
            &[("part", "sub1"), ("method", CHAT), ("code", "CANCELLED")],
        )
    };
    wait_for("the part's call cancelled", Duration::from_secs(5), || {
        cancelled() == Some(1.0)
    })
    .await;
    drop(tx);
}

#[tokio::test]
async fn at_most_256_streams_per_peer() {
    let fleet = demo().await;
    let (mut io, _task) = peer(&fleet, Principal::anonymous());
    // Bidi streams that wait for their first message hold their slot.
    for id in 0..256 {
        io.outgoing.send(headers(id, CHAT)).await.unwrap();
    }
    io.outgoing.send(headers(256, CHAT)).await.unwrap();
    let (saw_headers, _, trailers) = finish(&mut io, 256).await;
    assert!(saw_headers);
    assert_eq!(code(&trailers), Code::ResourceExhausted as i32);
    // A reset frees a slot for the next stream.
    io.outgoing
        .send(wire::request(7, pb::request::Type::RstStream(true)))
        .await
        .unwrap();
    let req = encode(&set_power("motor1", 0.1));
    io.outgoing.send(headers(257, SET_POWER)).await.unwrap();
    io.outgoing
        .send(packet(257, req.into(), true, false))
        .await
        .unwrap();
    let (_, _, trailers) = finish(&mut io, 257).await;
    assert_eq!(code(&trailers), 0);
}

/// A client whose network path can be cut: frames are relayed between two pairs, and
/// aborting the relays drops the server's ends as a vanished peer (ICE failure) would.
fn cuttable(
    fleet: &Fleet,
) -> (
    WebRtcClient,
    tokio::task::JoinHandle<()>,
    [tokio::task::JoinHandle<()>; 2],
) {
    let (server_side, task) = peer(fleet, Principal::anonymous());
    let (relay_side, client_side) = ChannelIo::pair();
    let ChannelIo {
        incoming: mut from_server,
        outgoing: to_server,
    } = server_side;
    let ChannelIo {
        incoming: mut from_client,
        outgoing: to_client,
    } = relay_side;
    let up = tokio::spawn(async move {
        while let Some(f) = from_client.recv().await {
            if to_server.send(f).await.is_err() {
                return;
            }
        }
    });
    let down = tokio::spawn(async move {
        while let Some(f) = from_server.recv().await {
            if to_client.send(f).await.is_err() {
                return;
            }
        }
    });
    (
        WebRtcClient::new(client_side, ClientOptions::default()),
        task,
        [up, down],
    )
}

#[tokio::test]
async fn a_vanished_peer_cancels_its_calls_and_leaks_nothing() {
    let fleet = demo().await;
    let (c, task, relays) = cuttable(&fleet);
    let mut counters = counter::counter_service_client::CounterServiceClient::new(c.clone());
    let mut held = Vec::new();
    for i in 0..5 {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(counter::ChatRequest {
            name: "c1".into(),
            text: format!("m{i}"),
        })
        .await
        .unwrap();
        let mut chat = counters
            .chat(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        chat.next().await.unwrap().unwrap();
        held.push((tx, chat));
    }
    assert_eq!(open_streams(&fleet), 5);
    assert_eq!(fleet.gateway.metrics().webrtc().open_peers(), 1);
    // The network path vanishes mid-call; the client side never says goodbye.
    for relay in relays {
        relay.abort();
    }
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the peer's server task ends")
        .unwrap();
    assert_eq!(open_streams(&fleet), 0);
    assert_eq!(fleet.gateway.metrics().webrtc().open_peers(), 0);
    wait_for("the part's calls ended", Duration::from_secs(5), || {
        let m = Exposition::parse(&fleet.gateway.metrics().encode());
        m.get(
            "partgate_calls_in_flight",
            &[("part", "sub1"), ("method", CHAT)],
        ) == Some(0.0)
    })
    .await;
    // The client learns its streams are gone.
    for (_, mut chat) in held {
        assert!(matches!(chat.next().await, Some(Err(_)) | None));
    }
}

#[tokio::test]
async fn the_signaling_identity_and_its_part_scope_are_enforced() {
    let fleet = demo().await;
    let scoped = Principal {
        entity: Some("key-sub1".into()),
        parts: Some(Arc::from(vec!["sub1".to_owned()])),
    };
    let (io, _task) = peer(&fleet, scoped);
    let c = WebRtcClient::new(io, ClientOptions::default());
    let mut motors = motor::motor_service_client::MotorServiceClient::new(c.clone());
    motors
        .set_power(set_power("sub1:motor1", 0.5))
        .await
        .expect("in scope");
    let err = motors
        .set_power(set_power("sub2:lift", 0.5))
        .await
        .expect_err("out of scope");
    assert!(
        matches!(err.code(), Code::PermissionDenied | Code::NotFound),
        "{err:?}"
    );
    assert!(fleet.part("sub2").log().names_for("SetPower").is_empty());
    let names = robot::robot_service_client::RobotServiceClient::new(c)
        .resource_names(robot::ResourceNamesRequest {})
        .await
        .unwrap()
        .into_inner()
        .resources;
    assert!(
        names.iter().all(|r| r.name.starts_with("sub1:")),
        "{names:?}"
    );
}

#[tokio::test]
async fn unknown_methods_are_unimplemented_and_malformed_frames_are_ignored() {
    let fleet = demo().await;
    let (mut io, task) = peer(&fleet, Principal::anonymous());
    for junk in [
        Bytes::from_static(b"\xff\xff\xff"),
        Bytes::new(),
        // no stream
        Bytes::from(
            pb::Request {
                stream: None,
                r#type: Some(pb::request::Type::RstStream(true)),
            }
            .encode_to_vec(),
        ),
        // message for a stream that never opened
        packet(99, Bytes::from_static(b"x"), true, true),
    ] {
        io.outgoing.send(junk).await.unwrap();
    }
    io.outgoing.send(headers(1, "no-slash")).await.unwrap();
    let (_, _, trailers) = finish(&mut io, 1).await;
    assert_eq!(code(&trailers), Code::InvalidArgument as i32);
    io.outgoing
        .send(headers(2, "/grpc.health.v1.Health/Watch"))
        .await
        .unwrap();
    io.outgoing
        .send(packet(2, Bytes::new(), true, true))
        .await
        .unwrap();
    let (saw_headers, _, trailers) = finish(&mut io, 2).await;
    assert!(saw_headers);
    assert_eq!(code(&trailers), Code::Unimplemented as i32);
    // A second headers frame fails that stream only.
    io.outgoing.send(headers(3, CHAT)).await.unwrap();
    io.outgoing.send(headers(3, CHAT)).await.unwrap();
    let (_, _, trailers) = finish(&mut io, 3).await;
    assert_eq!(code(&trailers), Code::InvalidArgument as i32);
    assert!(!task.is_finished());
}

// === signaling over real gRPC ===

fn signaling(
    ch: &tonic::transport::Channel,
    host: &str,
    token: Option<String>,
) -> pb::signaling_service_client::SignalingServiceClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        impl tonic::service::Interceptor + Clone,
    >,
> {
    let host = host.to_owned();
    let bearer = Bearer(token);
    pb::signaling_service_client::SignalingServiceClient::with_interceptor(
        ch.clone(),
        move |req: tonic::Request<()>| {
            let mut req = tonic::service::Interceptor::call(&mut bearer.clone(), req)?;
            req.metadata_mut().insert("rpc-host", host.parse().unwrap());
            Ok(req)
        },
    )
}

async fn webrtc_fleet(tweak: impl FnOnce(&mut partgate::config::Config)) -> Fleet {
    fleet(vec![(spec("a", &["m1"]), None)], None, tweak).await
}

#[tokio::test]
async fn signaling_accepts_only_our_hosts_and_hands_out_ice_servers() {
    let fleet = webrtc_fleet(|c| {
        c.network.fqdn = Some("robot.example.com".into());
        c.gateway.webrtc.ice_servers = vec![
            serde_json::from_value(serde_json::json!({
                "urls": ["turn:turn.example.com:3478"], "username": "u", "credential": "p"
            }))
            .unwrap(),
        ];
    })
    .await;
    let ch = fleet.channel().await;
    let port = fleet.addr().port();
    let err = signaling(&ch, "192.168.1.5:8080", None)
        .optional_web_rtc_config(pb::OptionalWebRtcConfigRequest {})
        .await
        .expect_err("not ours");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.message(), "host not preconfigured");
    for host in [
        "robot.example.com".to_owned(),
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
    ] {
        let config = signaling(&ch, &host, None)
            .optional_web_rtc_config(pb::OptionalWebRtcConfigRequest {})
            .await
            .unwrap_or_else(|e| panic!("{host}: {e:?}"))
            .into_inner()
            .config
            .unwrap();
        assert_eq!(config.additional_ice_servers.len(), 1);
        assert_eq!(config.additional_ice_servers[0].credential, "p");
    }
    let err = signaling(&ch, "evil", None)
        .call(pb::CallRequest {
            sdp: "x".into(),
            disable_trickle: false,
        })
        .await
        .expect_err("not ours");
    assert_eq!(err.message(), "host not preconfigured");
}

#[tokio::test]
async fn signaling_rejects_garbage_offers_and_unknown_calls() {
    let fleet = webrtc_fleet(|_| {}).await;
    let ch = fleet.channel().await;
    let host = format!("localhost:{}", fleet.addr().port());
    let mut s = signaling(&ch, &host, None);
    let err = s
        .call(pb::CallRequest {
            sdp: "not base64 json!".into(),
            disable_trickle: false,
        })
        .await
        .expect_err("garbage SDP");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("invalid offer"), "{err:?}");
    let err = s
        .call_update(pb::CallUpdateRequest {
            uuid: "no-such-call".into(),
            update: Some(pb::call_update_request::Update::Done(true)),
        })
        .await
        .expect_err("unknown uuid");
    assert_eq!(err.code(), Code::InvalidArgument);
    s.report_connection_metadata(pb::ReportConnectionMetadataRequest {})
        .await
        .expect("accepted");
    let answer = s
        .answer(tokio_stream::empty())
        .await
        .expect_err("we are the answerer");
    assert_eq!(answer.code(), Code::Unimplemented);
}

#[tokio::test]
async fn signaling_requires_auth_when_auth_is_on_and_is_absent_when_disabled() {
    let fleet = webrtc_fleet(|c| {
        c.auth = Some(
            serde_json::from_value(serde_json::json!({
                "handlers": [{ "type": "api-key", "config": { "k1": "secret-key-0123456789" } }]
            }))
            .unwrap(),
        );
    })
    .await;
    let ch = fleet.channel().await;
    let host = format!("localhost:{}", fleet.addr().port());
    let err = signaling(&ch, &host, None)
        .optional_web_rtc_config(pb::OptionalWebRtcConfigRequest {})
        .await
        .expect_err("no token");
    assert_eq!(err.code(), Code::Unauthenticated);

    let off = webrtc_fleet(|c| c.gateway.webrtc.enabled = false).await;
    let ch = off.channel().await;
    let host = format!("localhost:{}", off.addr().port());
    let err = signaling(&ch, &host, None)
        .optional_web_rtc_config(pb::OptionalWebRtcConfigRequest {})
        .await
        .expect_err("disabled");
    assert_eq!(err.code(), Code::Unimplemented);
}

#[tokio::test]
async fn dial_over_real_webrtc_and_call_through_the_gateway() {
    let fleet = webrtc_fleet(|_| {}).await;
    assert!(
        fleet.gateway.webrtc_endpoint().is_some(),
        "transport running"
    );
    let caller = partgate::ingress::webrtc::transport::Endpoint::bind(
        partgate::ingress::webrtc::transport::TransportConfig {
            bind_ip: [127, 0, 0, 1].into(),
            port_range: None,
            public_ips: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            max_peers: 4,
        },
    )
    .await
    .expect("caller endpoint");
    let host = format!("localhost:{}", fleet.addr().port());
    let c = partgate::ingress::webrtc::client::dial(
        &caller,
        fleet.channel().await,
        &host,
        None,
        Duration::from_secs(10),
    )
    .await
    .expect("dialed over WebRTC");
    motor::motor_service_client::MotorServiceClient::new(c)
        .set_power(set_power("m1", 0.5))
        .await
        .expect("unary over a real data channel");
    assert_eq!(fleet.part("a").log().names_for("SetPower"), vec!["m1"]);
    assert_eq!(fleet.gateway.metrics().webrtc().open_peers(), 1);
}
