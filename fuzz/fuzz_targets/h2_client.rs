//! The client side (`partgate_http2::client::handshake`), as the gateway dials a part, fed an
//! arbitrary part: the input is everything the server sends. Three calls go out (a unary call,
//! a streaming call that sends more and ends with trailers, one dropped before its answer),
//! their answers are read to the end, and the handle is dropped so the connection closes.
//! Paused time, as for the server. Nothing may panic, and what the client wrote must be the
//! preface and then valid HTTP/2 (`check_h2_output`).
//!
//! Input: a flag byte (bits 0-2: read pattern, 7 a read per frame; bit 3: the part closes at
//! the end, else goes quiet; bits 4-5: bytes per write; bit 6: keepalive on; bit 7: 1 KiB stream
//! windows), then the part's bytes.
#![no_main]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request};
use http2::client::{self, End, SendRequest};
use libfuzzer_sys::fuzz_target;
use partgate_fuzz::{AtEnd, Input, RUN_LIMIT, ScriptIo, check_h2_output, collect};

fn head(path: &str) -> http::request::Parts {
    let (parts, ()) = Request::post(format!("http://part.local{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", "Bearer secret")
        .body(())
        .expect("a valid request head")
        .into_parts();
    parts
}

const MESSAGE: &[u8] = b"\0\0\0\0\x07\x0a\x05motor";

async fn unary(send: SendRequest) {
    let head = head("/viam.component.motor.v1.MotorService/IsPowered");
    let Ok((response, _)) = send
        .send_request(&head, [Bytes::from_static(MESSAGE)], End::Done)
        .await
    else {
        return;
    };
    if let Ok(response) = response.await {
        let _ = collect(response.into_body(), 1 << 20).await;
    }
}

async fn streaming(send: SendRequest) {
    let head = head("/acme.component.counter.v1.CounterService/Chat");
    let Ok((response, stream)) = send
        .send_request(&head, [Bytes::from_static(MESSAGE)], End::Open)
        .await
    else {
        return;
    };
    if let Some(mut stream) = stream {
        let ready = std::future::poll_fn(|cx| stream.poll_ready(cx)).await;
        if ready.is_ok() && stream.send_data(Bytes::from_static(MESSAGE), false).is_ok() {
            let mut trailers = HeaderMap::new();
            trailers.insert("x-end", HeaderValue::from_static("1"));
            let _ = stream.send_trailers(trailers);
        }
    }
    if let Ok(response) = response.await {
        let _ = collect(response.into_body(), 1 << 20).await;
    }
}

async fn abandoned(send: SendRequest) {
    let head = head("/viam.robot.v1.RobotService/ResourceNames");
    if let Ok((response, _)) = send.send_request(&head, [], End::Done).await {
        // Dropped before (or as) the answer comes: the stream is reset.
        let _ = tokio::time::timeout(Duration::from_millis(1), response).await;
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.byte();
    let at_end = if flags & 8 != 0 {
        AtEnd::Eof
    } else {
        AtEnd::Hang
    };
    let io = ScriptIo::new(partgate_fuzz::split_h2(input.rest(), flags & 7), at_end)
        .write_limit(partgate_fuzz::write_limit(flags >> 4));
    let written = io.written();
    let mut config = client::Config::default();
    if flags & 64 != 0 {
        config.keepalive = Some((Duration::from_secs(1), Duration::from_secs(1)));
    }
    if flags & 128 != 0 {
        config.initial_stream_window = 1024;
        config.initial_conn_window = 65_535;
    }
    let rt = partgate_fuzz::runtime();
    rt.block_on(async {
        let (send, connection) = client::handshake(io, config);
        let connection = tokio::spawn(connection);
        // Tasks of their own, as the gateway's calls are: they run between the connection's
        // reads (see `ScriptIo`), so the answers can find their streams open.
        let calls = [
            tokio::spawn(unary(send.clone())),
            tokio::spawn(streaming(send.clone())),
            tokio::spawn(abandoned(send)),
        ];
        let _ = tokio::time::timeout(RUN_LIMIT, async {
            for call in calls {
                call.await.expect("a call panicked");
            }
        })
        .await;
        let _ = tokio::time::timeout(RUN_LIMIT, connection).await;
    });
    drop(rt);
    check_h2_output(&partgate_fuzz::take_written(&written), true);
});
