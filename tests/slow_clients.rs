//! Clients that connect and then send their request head slowly, or never: each gets until
//! `gateway.client_header_timeout` and is then closed, whatever it speaks; a slow HTTP/2 preface
//! is still served by the gateway's own engine (one front door).

mod support;

use std::time::Duration;

use support::{fleet, spec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The timeout the tests configure; the suite only asserts that the gateway closes the
/// connection (within a generous bound), not how fast.
const HEADER_TIMEOUT: &str = "500ms";
const CLOSED_WITHIN: Duration = Duration::from_secs(15);

async fn gateway() -> support::Fleet {
    fleet(vec![(spec("a", &["m1"]), None)], Some("a"), |c| {
        c.gateway.client_header_timeout = HEADER_TIMEOUT.into();
    })
    .await
}

/// Reads until the gateway closes the connection; returns what it sent.
async fn until_closed(tcp: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(CLOSED_WITHIN, async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the gateway kept a silent or slow client open"
    );
    got
}

#[tokio::test]
async fn a_client_that_sends_nothing_is_closed() {
    let fleet = gateway().await;
    let mut tcp = TcpStream::connect(fleet.gateway.local_addr())
        .await
        .unwrap();
    until_closed(&mut tcp).await;
}

#[tokio::test]
async fn a_partial_http2_preface_is_closed() {
    let fleet = gateway().await;
    let mut tcp = TcpStream::connect(fleet.gateway.local_addr())
        .await
        .unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let got = until_closed(&mut tcp).await;
    assert!(
        got.is_empty(),
        "nothing is served to half a preface: {got:?}"
    );
}

#[tokio::test]
async fn a_partial_http1_head_is_closed() {
    let fleet = gateway().await;
    let mut tcp = TcpStream::connect(fleet.gateway.local_addr())
        .await
        .unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n")
        .await
        .unwrap();
    until_closed(&mut tcp).await;
}

/// A preface sent a byte at a time (slower than the old one-second fallback to hyper, within
/// the header timeout) is answered as HTTP/2, by the native engine (hyper serves HTTP/1.1 only).
#[tokio::test]
async fn a_slow_preface_is_served_by_the_native_engine() {
    let fleet = fleet(vec![(spec("a", &["m1"]), None)], Some("a"), |c| {
        c.gateway.client_header_timeout = "30s".into();
    })
    .await;
    let mut tcp = TcpStream::connect(fleet.gateway.local_addr())
        .await
        .unwrap();
    for byte in http2::frame::PREFACE {
        tcp.write_all(&[*byte]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    // Our SETTINGS (empty).
    tcp.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    let mut head = [0u8; 9];
    tokio::time::timeout(CLOSED_WITHIN, tcp.read_exact(&mut head))
        .await
        .expect("an answer")
        .unwrap();
    assert_eq!(
        head[3], 0x4,
        "a SETTINGS frame, not an HTTP/1.1 answer: {head:?}"
    );
    assert_eq!(head[5..9], [0, 0, 0, 0], "on stream 0");
}

/// `gateway.max_connections`: a connection accepted beyond it is closed at once; once one of
/// the open ones ends, a new client is served again.
#[tokio::test]
async fn connections_beyond_the_limit_are_closed_at_once() {
    let fleet = fleet(vec![(spec("a", &["m1"]), None)], Some("a"), |c| {
        c.gateway.max_connections = 2;
    })
    .await;
    let addr = fleet.gateway.local_addr();
    let first = TcpStream::connect(addr).await.unwrap();
    let _second = TcpStream::connect(addr).await.unwrap();
    // Accepted in order: give the listener a moment to take the two.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = TcpStream::connect(addr).await.unwrap();
    let got = until_closed(&mut third).await;
    assert!(got.is_empty(), "nothing served beyond the limit: {got:?}");
    drop(first);
    // The first connection's task ends once the gateway sees it closed.
    let mut served = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let answer = until_closed(&mut tcp).await;
        if answer.starts_with(b"HTTP/1.1 200") {
            served = true;
            break;
        }
    }
    assert!(served, "a new client is served once a connection closed");
}

/// A plaintext first line that is neither the HTTP/2 preface nor an HTTP/1.x request line is an
/// invalid preface (RFC 9113 section 3.4): the connection is closed with nothing served.
#[tokio::test]
async fn a_first_line_that_is_no_request_is_closed_unanswered() {
    let fleet = gateway().await;
    let mut tcp = TcpStream::connect(fleet.gateway.local_addr())
        .await
        .unwrap();
    tcp.write_all(b"INVALID CONNECTION PREFACE\r\n\r\n")
        .await
        .unwrap();
    let got = until_closed(&mut tcp).await;
    assert!(
        got.is_empty(),
        "nothing served: {:?}",
        String::from_utf8_lossy(&got)
    );
    // An HTTP/1.1 request on the same port is still served.
    let mut tcp = TcpStream::connect(fleet.gateway.local_addr())
        .await
        .unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    assert!(until_closed(&mut tcp).await.starts_with(b"HTTP/1.1 200"));
}

/// `gateway.client_idle_timeout`: an HTTP/2 connection that made its calls and went quiet is
/// closed with GOAWAY(NO_ERROR) naming its last stream, and the closing is not an error to a
/// client (h2 reports a clean end).
#[tokio::test]
async fn an_idle_http2_connection_is_closed_with_goaway() {
    let fleet = fleet(vec![(spec("a", &["m1"]), None)], Some("a"), |c| {
        c.gateway.client_idle_timeout = "1s".into();
    })
    .await;
    let tcp = TcpStream::connect(fleet.gateway.local_addr())
        .await
        .unwrap();
    let (mut send, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::builder()
        .method("POST")
        .uri("http://gw/viam.robot.v1.RobotService/ResourceNames")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (resp, mut body) = send.send_request(req, false).unwrap();
    body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut resp_body = resp.into_body();
    while resp_body.data().await.is_some() {}
    let trailers = resp_body.trailers().await.unwrap().unwrap();
    assert_eq!(trailers["grpc-status"], "0");
    // Idle from here (`send` kept: h2 would close a connection nobody can use itself):
    // closed within the bound (1 to 1.5 s), cleanly, and no new call is taken.
    let ended = tokio::time::timeout(CLOSED_WITHIN, conn)
        .await
        .expect("the idle connection was never closed")
        .unwrap();
    assert!(ended.is_ok(), "{ended:?}");
    assert!(
        send.ready().await.is_err(),
        "the connection still takes calls"
    );
}
