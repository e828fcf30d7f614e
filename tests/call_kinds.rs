//! Every gRPC call kind through the gateway, with metadata, trailers, deadlines, cancellation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use support::*;
use tonic::Code;
use tonic::metadata::MetadataValue;

#[tokio::test]
async fn server_streaming_passes_every_message() {
    let fleet = demo().await;
    let ch = fleet.channel().await;
    let mut counters = counter::counter_service_client::CounterServiceClient::new(ch.clone());
    let mut stream = counters
        .watch(counter::WatchRequest {
            name: "sub1:c1".into(),
            count: 100,
        })
        .await
        .expect("ok")
        .into_inner();
    let mut seqs = Vec::new();
    while let Some(msg) = stream.next().await {
        let msg = msg.expect("message");
        assert_eq!(msg.name, "c1");
        seqs.push(msg.seq);
    }
    assert_eq!(seqs, (0..100).collect::<Vec<_>>());
}

#[tokio::test]
async fn client_streaming_rewrites_every_message() {
    let fleet = demo().await;
    let ch = fleet.channel().await;
    let mut counters = counter::counter_service_client::CounterServiceClient::new(ch.clone());
    let requests = (1..=50).map(|v| counter::AddRequest {
        name: "sub1:c1".into(),
        value: v,
    });
    let resp = counters
        .add(futures_util::stream::iter(requests))
        .await
        .expect("ok")
        .into_inner();
    assert_eq!(
        (resp.name.as_str(), resp.total, resp.count),
        ("c1", 1275, 50)
    );
    let names = fleet.part("sub1").log().names_for("Add");
    assert_eq!(names.len(), 50);
    assert!(names.iter().all(|n| n == "c1"), "{names:?}");
}

#[tokio::test]
async fn bidi_streaming_rewrites_each_message_with_backpressure() {
    let fleet = demo().await;
    let ch = fleet.channel().await;
    let mut counters = counter::counter_service_client::CounterServiceClient::new(ch.clone());
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    // The gateway routes a stream on its first message, so it must be sent before waiting for
    // response headers (tonic's client waits for them; grpc-go, grpclib and connect-es do not).
    let text = |i: usize| format!("m{i}-{}", "x".repeat(i * 1000));
    tx.send(counter::ChatRequest {
        name: "sub1:c1".into(),
        text: text(0),
    })
    .await
    .expect("send");
    let mut responses = counters
        .chat(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("ok")
        .into_inner();
    // Strictly alternate: a response must come back before the next message is sent, so the
    // gateway cannot be buffering the whole stream.
    for i in 0..20 {
        let text = text(i);
        if i > 0 {
            tx.send(counter::ChatRequest {
                name: "sub1:c1".into(),
                text: text.clone(),
            })
            .await
            .expect("send");
        }
        let resp = responses.next().await.expect("a response").expect("ok");
        assert_eq!(
            (resp.name.as_str(), resp.text.as_str()),
            ("c1", text.as_str())
        );
    }
    drop(tx);
    assert!(
        responses.next().await.is_none(),
        "stream ends after the client half-closes"
    );
}

#[tokio::test]
async fn testecho_streams_work_through_the_main_part() {
    let fleet = demo().await;
    let ch = fleet.channel().await;
    let mut echoes = echo::test_echo_service_client::TestEchoServiceClient::new(ch.clone());
    let got: Vec<String> = echoes
        .echo_multiple(echo::EchoMultipleRequest {
            name: "echo1".into(),
            message: "hello".into(),
        })
        .await
        .expect("ok")
        .into_inner()
        .map(|m| m.expect("message").message)
        .collect()
        .await;
    assert_eq!(got.concat(), "hello");
    let requests = ["a", "b", "c"].map(|m| echo::EchoBiDiRequest {
        name: "sub1:echo1".into(),
        message: m.into(),
    });
    let got: Vec<String> = echoes
        .echo_bi_di(futures_util::stream::iter(requests))
        .await
        .expect("ok")
        .into_inner()
        .map(|m| m.expect("message").message)
        .collect()
        .await;
    assert_eq!(got, ["a", "b", "c"]);
    assert_eq!(
        fleet.part("sub1").log().names_for("EchoBiDi"),
        ["echo1", "echo1", "echo1"]
    );
}

#[tokio::test]
async fn large_messages_cross_intact() {
    let fleet = demo().await;
    let ch = fleet.channel().await;
    let mut echoes = echo::test_echo_service_client::TestEchoServiceClient::new(ch.clone())
        .max_decoding_message_size(64 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024);
    let message: String = (0..4 * 1024 * 1024)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let resp = echoes
        .echo(echo::EchoRequest {
            name: "sub1:echo1".into(),
            message: message.clone(),
        })
        .await
        .expect("ok");
    assert_eq!(resp.into_inner().message, message);
}

#[tokio::test]
async fn oversized_first_message_is_rejected() {
    let fleet = fleet(vec![(spec("a", &["m"]), None)], Some("a"), |c| {
        c.gateway.max_message_size = 64 * 1024
    })
    .await;
    let ch = fleet.channel().await;
    let mut echoes = echo::test_echo_service_client::TestEchoServiceClient::new(ch.clone());
    let err = echoes
        .echo(echo::EchoRequest {
            name: "x".into(),
            message: "y".repeat(100 * 1024),
        })
        .await
        .expect_err("too large");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
}

#[tokio::test]
async fn headers_trailers_and_error_details_pass_through() {
    let fleet = demo().await;
    let ch = fleet.channel().await;
    let mut generics = generic::generic_service_client::GenericServiceClient::new(ch.clone());
    let mut req = tonic::Request::new(do_command("sub1:gen1"));
    req.metadata_mut()
        .insert("x-client-header", MetadataValue::from_static("abc"));
    req.metadata_mut().insert(
        "viam-sid",
        MetadataValue::from_static("00000000-0000-0000-0000-000000000000"),
    );
    let resp = generics.do_command(req).await.expect("ok");
    assert_eq!(
        resp.metadata()
            .get("x-part-header")
            .map(|v| v.to_str().unwrap()),
        Some("hello")
    );
    let seen = fleet.part("sub1").log().metadata().expect("metadata");
    assert_eq!(
        seen.get("x-client-header").map(|v| v.to_str().unwrap()),
        Some("abc")
    );
    assert!(
        seen.get("viam-sid").is_none(),
        "a client's session id is never forwarded"
    );

    let mut failing = do_command("sub1:gen1");
    failing.command = Some(prost_types::Struct {
        fields: [(
            "fail".to_owned(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::BoolValue(true)),
            },
        )]
        .into(),
    });
    let err = generics.do_command(failing).await.expect_err("part fails");
    assert_eq!(err.code(), Code::Aborted);
    assert_eq!(err.message(), "asked to fail");
    assert_eq!(err.details(), b"detail-bytes");
    assert_eq!(
        err.metadata()
            .get("x-part-detail")
            .map(|v| v.to_str().unwrap()),
        Some("from-the-part")
    );
}

/// A fleet of a part that answers after 5 s (`slow:m`) and one that answers at once (`fast:f`).
async fn slow_and_fast(tweak: impl FnOnce(&mut partgate::config::Config)) -> Fleet {
    let mut slow = spec("slow", &["m"]);
    slow.delay = Some(Duration::from_secs(5));
    fleet(
        vec![(slow, None), (spec("fast", &["f"]), None)],
        None,
        tweak,
    )
    .await
}

/// A raw `SetPower` to the slow part: a client with no timer of its own, so only the gateway
/// can end it early.
fn raw_set_power_to_slow(fleet: &Fleet) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    grpc_request(
        fleet.addr(),
        "/viam.component.motor.v1.MotorService/SetPower",
        grpc_frame(false, &encode(&set_power("slow:m", 0.1))),
    )
}

#[tokio::test]
async fn client_deadline_is_enforced_against_a_slow_part() {
    let fleet = slow_and_fast(|_| {}).await;
    let ch = fleet.channel().await;
    // A raw client with no timer of its own: the gateway must enforce the header.
    let mut req = raw_set_power_to_slow(&fleet);
    req.headers_mut()
        .insert("grpc-timeout", http::HeaderValue::from_static("200m"));
    let started = Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(3), raw_call(fleet.addr(), true, req))
        .await
        .expect("the gateway answers before the part does");
    assert_eq!(
        resp.grpc_status(),
        Some(Code::DeadlineExceeded as i32),
        "{resp:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    // The slow part never delays the fast one.
    let started = Instant::now();
    motor_client(&ch)
        .set_power(set_power("fast:f", 0.1))
        .await
        .expect("fast part answers");
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn default_timeout_bounds_a_call_without_a_client_deadline() {
    let fleet = slow_and_fast(|c| c.gateway.default_timeout = "300ms".into()).await;
    let ch = fleet.channel().await;
    // Several calls at once, with no grpc-timeout: each ends by the gateway's default.
    let started = Instant::now();
    let calls = (0..8).map(|_| {
        let req = raw_set_power_to_slow(&fleet);
        tokio::time::timeout(Duration::from_secs(3), raw_call(fleet.addr(), true, req))
    });
    for resp in futures_util::future::join_all(calls).await {
        let resp = resp.expect("the gateway answers before the part does");
        assert_eq!(
            resp.grpc_status(),
            Some(Code::DeadlineExceeded as i32),
            "{resp:?}"
        );
    }
    let took = started.elapsed();
    // The deadline fires at its time or up to one tick (a sixteenth of it) later.
    assert!(took >= Duration::from_millis(300), "took {took:?}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    // A part that answers in time is not cut short.
    motor_client(&ch)
        .set_power(set_power("fast:f", 0.1))
        .await
        .expect("fast part answers");
}

#[tokio::test]
async fn per_part_limit_sheds_load_without_touching_other_parts() {
    let mut slow = spec("slow", &["m"]);
    slow.delay = Some(Duration::from_millis(800));
    let fleet = fleet(
        vec![(slow, None), (spec("fast", &["f"]), None)],
        None,
        |c| {
            c.gateway.max_concurrent_calls_per_part = 1;
        },
    )
    .await;
    let ch = fleet.channel().await;
    let first = {
        let ch = ch.clone();
        tokio::spawn(async move { motor_client(&ch).set_power(set_power("slow:m", 0.1)).await })
    };
    wait_for("first call at the part", Duration::from_secs(5), || {
        !fleet.part("slow").log().names_for("SetPower").is_empty()
    })
    .await;
    let err = motor_client(&ch)
        .set_power(set_power("slow:m", 0.2))
        .await
        .expect_err("over the limit");
    assert_eq!(err.code(), Code::ResourceExhausted);
    motor_client(&ch)
        .set_power(set_power("fast:f", 0.1))
        .await
        .expect("other part unaffected");
    first.await.unwrap().expect("first call completes");
    motor_client(&ch)
        .set_power(set_power("slow:m", 0.3))
        .await
        .expect("slot released");
}

#[tokio::test]
async fn cancelled_calls_release_their_slot_and_reach_the_part() {
    let fleet = fleet(
        vec![(
            PartSpec {
                counters: vec!["c".into()],
                ..spec("a", &[])
            },
            None,
        )],
        None,
        |c| {
            c.gateway.max_concurrent_calls_per_part = 2;
        },
    )
    .await;
    let ch = fleet.channel().await;
    for round in 0..10 {
        let mut counters = counter::counter_service_client::CounterServiceClient::new(ch.clone());
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(counter::ChatRequest {
            name: "a:c".into(),
            text: format!("r{round}"),
        })
        .await
        .expect("send");
        let mut responses = counters
            .chat(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("ok")
            .into_inner();
        responses.next().await.expect("response").expect("ok");
        // Abandon the stream mid-call without half-closing: the client resets it.
        drop(responses);
        drop(tx);
    }
    // Ten abandoned streams with a limit of two: any leaked slot would shed this call.
    let mut counters = counter::counter_service_client::CounterServiceClient::new(ch.clone());
    wait_for_ok(|| {
        let mut counters = counters.clone();
        async move {
            counters
                .get(counter::GetRequest { name: "a:c".into() })
                .await
                .is_ok()
        }
    })
    .await;
    let _ = counters
        .get(counter::GetRequest { name: "a:c".into() })
        .await
        .expect("slots were released");
}

async fn wait_for_ok<F, Fut>(mut attempt: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..100 {
        if attempt().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never succeeded");
}
