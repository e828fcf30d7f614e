//! One client must not take from the others what they share: the gateway's memory for unfinished
//! first messages, a part's connection, a part's call slots (issue 26). Each test puts a hostile
//! client beside a well-behaved one and asserts the bound, and that the well-behaved one is
//! served.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use support::{PartSpec, echo, encode, fleet, grpc_frame};
use tonic::Code;

const MIB: usize = 1024 * 1024;
const T: Duration = Duration::from_secs(20);

fn echo_part(name: &str) -> PartSpec {
    PartSpec {
        name: name.into(),
        echoes: vec!["echo1".into()],
        ..Default::default()
    }
}

/// An h2 client connection to the gateway.
async fn h2_connect(addr: std::net::SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(8 * MIB as u32)
        .initial_connection_window_size(64 * MIB as u32)
        .handshake(tcp)
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

fn echo_head(addr: std::net::SocketAddr) -> http::Request<()> {
    http::Request::post(format!(
        "http://{addr}/viam.component.testecho.v1.TestEchoService/Echo"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())
    .unwrap()
}

/// The gRPC status of a finished response: `grpc-status` from the trailers (or the head of a
/// trailers-only answer).
async fn status_of(resp: h2::client::ResponseFuture) -> (i32, String) {
    let resp = tokio::time::timeout(T, resp)
        .await
        .expect("an answer")
        .unwrap();
    let head = resp.headers().clone();
    let mut body = resp.into_body();
    while let Some(d) = body.data().await {
        let d = d.unwrap();
        let _ = body.flow_control().release_capacity(d.len());
    }
    let trailers = body.trailers().await.unwrap().unwrap_or(head);
    let code = trailers["grpc-status"].to_str().unwrap().parse().unwrap();
    let msg = trailers
        .get("grpc-message")
        .map(|m| {
            percent_encoding::percent_decode_str(m.to_str().unwrap())
                .decode_utf8_lossy()
                .into_owned()
        })
        .unwrap_or_default();
    (code, msg)
}

/// A stream that declares a first message of `declared` bytes and sends `sent` of them, then
/// stalls (its body kept open). Returns the response future and the stream (kept alive).
fn stall(
    send: &mut h2::client::SendRequest<Bytes>,
    addr: std::net::SocketAddr,
    declared: usize,
    sent: usize,
) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
    let (resp, mut body) = send.send_request(echo_head(addr), false).unwrap();
    let mut head = vec![0u8];
    head.extend_from_slice(&(declared as u32).to_be_bytes());
    body.send_data(Bytes::from(head), false).unwrap();
    // In several DATA frames, so the gateway reads it in several reads.
    for chunk in vec![0x5a_u8; sent].chunks(64 * 1024) {
        body.send_data(Bytes::copy_from_slice(chunk), false)
            .unwrap();
    }
    (resp, body)
}

/// Unfinished first messages (declared large, sent in part, then stalled) hold gateway memory
/// only up to `gateway.max_buffered_per_connection` per connection and `max_buffered_total` in
/// all: past them a call gets RESOURCE_EXHAUSTED at once; small calls are not affected; and the
/// bytes are given back when the hostile calls end.
#[tokio::test]
async fn unfinished_first_messages_are_bounded_per_connection_and_in_all() {
    let fleet = fleet(vec![(echo_part("a"), None)], Some("a"), |c| {
        c.gateway.max_message_size = 2 * MIB;
        c.gateway.max_buffered_per_connection = 5 * MIB / 2;
        c.gateway.max_buffered_total = 4 * MIB;
    })
    .await;
    let addr = fleet.gateway.local_addr();

    // Hostile connection 1: 1 MiB held per stream; the third stream is over 2.5 MiB.
    let mut bad1 = h2_connect(addr).await;
    let (_r1, _s1) = stall(&mut bad1, addr, 2 * MIB, MIB);
    let (_r2, _s2) = stall(&mut bad1, addr, 2 * MIB, MIB);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (r3, _s3) = stall(&mut bad1, addr, 2 * MIB, MIB);
    let (code, msg) = status_of(r3).await;
    assert_eq!(code, Code::ResourceExhausted as i32, "{msg}");
    assert!(msg.contains("this connection"), "{msg}");

    // Hostile connection 2: 1 MiB more is fine (3 MiB in all), the next is over 4 MiB.
    let mut bad2 = h2_connect(addr).await;
    let (_r4, _s4) = stall(&mut bad2, addr, 2 * MIB, MIB);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (r5, _s5) = stall(&mut bad2, addr, 2 * MIB, MIB);
    let (code, msg) = status_of(r5).await;
    assert_eq!(code, Code::ResourceExhausted as i32, "{msg}");
    assert!(msg.contains("the gateway holds"), "{msg}");

    // A well-behaved client's small calls go through meanwhile.
    let ch = fleet.channel().await;
    let mut echoes = echo::test_echo_service_client::TestEchoServiceClient::new(ch.clone())
        .max_decoding_message_size(4 * MIB)
        .max_encoding_message_size(4 * MIB);
    for _ in 0..20 {
        let resp = echoes
            .echo(echo::EchoRequest {
                name: "echo1".into(),
                message: "hi".into(),
            })
            .await
            .expect("a small call is served");
        assert_eq!(resp.into_inner().message, "hi");
    }

    // The hostile clients go away: their bytes are given back, and a large message (which
    // needs 1 MiB of the budget while it arrives) is served again.
    drop((bad1, bad2, _r1, _s1, _r2, _s2, _s3, _r4, _s4, _s5));
    let big = "b".repeat(MIB);
    let mut served = false;
    for _ in 0..50 {
        match echoes
            .echo(echo::EchoRequest {
                name: "echo1".into(),
                message: big.clone(),
            })
            .await
        {
            Ok(resp) => {
                assert_eq!(resp.into_inner().message.len(), MIB);
                served = true;
                break;
            }
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert!(served, "the hostile clients' bytes were never given back");
    let _ = (encode::<echo::EchoRequest>, grpc_frame);
}

/// A client that asks for large answers and never reads them (its stream window at zero) must
/// not hold the part's connection hostage: each of its calls holds at most its own stream
/// window of the part connection, never the connection window the other calls share. One
/// worker, so every call shares one part connection; more unread answers than the part
/// connection's window (8 MiB). Meanwhile another client's calls, large and small, are served,
/// and the part stays up (its health checks pass).
#[tokio::test]
async fn a_client_that_never_reads_does_not_stall_the_part_connection() {
    let fleet = fleet(vec![(echo_part("a"), None)], Some("a"), |c| {
        c.gateway.worker_threads = Some(1);
    })
    .await;
    let addr = fleet.gateway.local_addr();

    // The hostile client: a zero stream window, so not a byte of any answer reaches it.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut hostile, conn) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(tcp)
        .await
        .unwrap();
    tokio::spawn(conn);
    let message = "x".repeat(MIB);
    let request = grpc_frame(
        false,
        &encode(&echo::EchoRequest {
            name: "echo1".into(),
            message: message.clone(),
        }),
    );
    let mut stalled = Vec::new();
    for _ in 0..12 {
        let (resp, mut body) = hostile.send_request(echo_head(addr), false).unwrap();
        body.send_data(Bytes::from(request.clone()), true).unwrap();
        stalled.push((resp, body));
    }
    // The part answers them all (12 MiB sits unread at the gateway, over 8 MiB).
    tokio::time::sleep(Duration::from_millis(500)).await;

    let ch = fleet.channel().await;
    let mut echoes = echo::test_echo_service_client::TestEchoServiceClient::new(ch.clone())
        .max_decoding_message_size(4 * MIB)
        .max_encoding_message_size(4 * MIB);
    for round in 0..6 {
        for msg in ["small".to_owned(), message.clone()] {
            let resp = tokio::time::timeout(
                T,
                echoes.echo(echo::EchoRequest {
                    name: "echo1".into(),
                    message: msg.clone(),
                }),
            )
            .await
            .unwrap_or_else(|_| panic!("round {round}: a call hung behind the unread answers"))
            .expect("served");
            assert_eq!(resp.into_inner().message.len(), msg.len());
        }
        // Past three health checks (1 s each): the part must stay up throughout.
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    // The hostile calls are still open, not failed: paused, not punished.
    for (resp, _) in &mut stalled {
        assert!(
            futures_util::FutureExt::now_or_never(resp).is_none_or(|r| r.is_ok()),
            "a stalled call failed"
        );
    }
}

/// An h2 client connection from `local` (another loopback address: another client).
async fn h2_connect_from(
    local: &str,
    addr: std::net::SocketAddr,
) -> h2::client::SendRequest<Bytes> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{local}:0").parse().unwrap()).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    send
}

/// Opens an EchoBiDi call and sends its first message, keeping the stream open (an idle bidi
/// call holds its part's call slot for as long as it lasts).
fn open_bidi(
    send: &mut h2::client::SendRequest<Bytes>,
    addr: std::net::SocketAddr,
) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
    let req = http::Request::post(format!(
        "http://{addr}/viam.component.testecho.v1.TestEchoService/EchoBiDi"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())
    .unwrap();
    let (resp, mut body) = send.send_request(req, false).unwrap();
    let first = grpc_frame(
        false,
        &encode(&echo::EchoBiDiRequest {
            name: "echo1".into(),
            message: "hold".into(),
        }),
    );
    body.send_data(Bytes::from(first), false).unwrap();
    (resp, body)
}

/// `gateway.max_calls_per_client`: one client (here, one address, over two connections) that
/// opens more idle calls than its share gets RESOURCE_EXHAUSTED for the rest, and the part's
/// other slots stay free for everyone else, whose calls all succeed; the share comes back when
/// the client's calls end.
#[tokio::test]
async fn one_client_cannot_take_every_call_slot_of_a_part() {
    const SHARE: usize = 16;
    let fleet = fleet(vec![(echo_part("a"), None)], Some("a"), |c| {
        c.gateway.max_concurrent_calls_per_part = 64;
        c.gateway.max_calls_per_client = SHARE;
    })
    .await;
    let addr = fleet.gateway.local_addr();

    // The hostile client, from 127.0.0.2: 40 idle calls on each of two connections, more than
    // the part's 64 slots (without shares it would hold them all).
    let mut conns = vec![
        h2_connect_from("127.0.0.2", addr).await,
        h2_connect_from("127.0.0.2", addr).await,
    ];
    let mut open = Vec::new();
    for conn in &mut conns {
        for _ in 0..40 {
            open.push(open_bidi(conn, addr));
        }
    }
    let mut held = Vec::new();
    let mut refused = 0;
    for (resp, body) in open {
        let resp = tokio::time::timeout(T, resp)
            .await
            .expect("an answer")
            .unwrap();
        match resp.headers().get("grpc-status") {
            // Trailers-only: refused.
            Some(code) => {
                assert_eq!(code, &(Code::ResourceExhausted as i32).to_string());
                let msg = resp.headers()["grpc-message"].to_str().unwrap().to_owned();
                assert!(msg.contains("from%20this%20client"), "{msg}");
                refused += 1;
            }
            None => held.push((resp, body)),
        }
    }
    assert_eq!(held.len(), SHARE, "calls held beyond the client's share");
    assert_eq!(refused, 80 - SHARE);

    // Another client (127.0.0.1): its whole share at once, three times, all served from the
    // 48 slots left.
    let ch = fleet.channel().await;
    let calls = (0..3 * SHARE).map(|i| {
        let mut echoes = echo::test_echo_service_client::TestEchoServiceClient::new(ch.clone());
        async move {
            echoes
                .echo(echo::EchoRequest {
                    name: "echo1".into(),
                    message: format!("m{i}"),
                })
                .await
                .map(|r| r.into_inner().message)
        }
    });
    let calls: Vec<_> = calls.collect();
    let mut calls = calls.into_iter();
    for round in 0..3 {
        let batch: Vec<_> = calls.by_ref().take(SHARE).collect();
        let answers = futures_util::future::join_all(batch).await;
        for (i, a) in answers.into_iter().enumerate() {
            assert_eq!(a.expect("served"), format!("m{}", round * SHARE + i));
        }
    }

    // The hostile client's calls end: its share is whole again.
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut again = Vec::new();
    for _ in 0..SHARE {
        again.push(open_bidi(&mut conns[0], addr));
    }
    for (resp, _body) in &mut again {
        let resp = tokio::time::timeout(T, resp)
            .await
            .expect("an answer")
            .unwrap();
        assert!(
            resp.headers().get("grpc-status").is_none(),
            "refused after its calls ended"
        );
    }
}
