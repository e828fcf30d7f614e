//! A whole server connection (`partgate_http2::server::serve_connection`) with a small
//! handler, fed arbitrary bytes after the client preface over an in-memory socket, on a
//! paused-time runtime (keepalive and every wait end in virtual time; a connection is given
//! [`RUN_LIMIT`] at most). The connection must end without panicking, and everything the
//! server wrote must be valid HTTP/2 whose header blocks decode (`check_h2_output`).
//!
//! Input: two flag bytes, then the bytes the client sends after its preface.
//! flags0 bits 0-2: read pattern (7: a read per frame); bit 3: the client closes at the end
//! (else goes quiet); bit 4: the server starts its drain (GOAWAY) when the input is used up;
//! bits 5-6: bytes per write; bit 7: the client stops reading after 4 KiB.
//! flags1 bit 0: SETTINGS_MAX_CONCURRENT_STREAMS 2 (else 4096); bit 1: 1 KiB stream windows
//! (else the server defaults); bit 2: no keepalive.
#![no_main]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::convert::Infallible;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http2::server::{self, RequestBody};
use libfuzzer_sys::fuzz_target;
use partgate_fuzz::{AtEnd, Frames, Input, RUN_LIMIT, ScriptIo, check_h2_output, collect};
use tokio::sync::watch;

type CallFuture = Pin<Box<dyn Future<Output = Result<Response<Frames>, Infallible>> + Send>>;

/// Answers by the path's length: echo the body (and some request headers) with trailers;
/// answer at once without reading the body; a trailers-only answer; or read one frame and
/// fail the response body (a reset).
struct Handler;

impl server::Handler for Handler {
    type Body = Frames;
    type Future = CallFuture;

    fn call(&self, request: Request<RequestBody>, _peer: SocketAddr) -> CallFuture {
        Box::pin(async move {
            let (head, body) = request.into_parts();
            let mut frames = Frames::default();
            let mut response = Response::builder().header("content-type", "application/grpc");
            match head.uri.path().len() % 4 {
                0 => {
                    let (data, trailers, ok) = collect(body, 256 << 10).await;
                    for (name, value) in &head.headers {
                        if name.as_str().starts_with("x-") {
                            response = response.header(name, value);
                        }
                    }
                    frames
                        .0
                        .push_back(Ok(http_body::Frame::data(data.freeze())));
                    let mut t = trailers.unwrap_or_default();
                    t.insert(
                        "grpc-status",
                        HeaderValue::from_static(if ok { "0" } else { "1" }),
                    );
                    frames.0.push_back(Ok(http_body::Frame::trailers(t)));
                }
                1 => {
                    drop(body);
                    frames
                        .0
                        .push_back(Ok(http_body::Frame::data(Bytes::from_static(
                            b"\0\0\0\0\x02hi",
                        ))));
                    let mut t = HeaderMap::new();
                    t.insert("grpc-status", HeaderValue::from_static("0"));
                    frames.0.push_back(Ok(http_body::Frame::trailers(t)));
                }
                2 => {
                    response = response
                        .header("grpc-status", "12")
                        .header("grpc-message", "unimplemented");
                }
                _ => {
                    let _ = collect(body, 1).await;
                    frames
                        .0
                        .push_back(Ok(http_body::Frame::data(Bytes::from_static(b"\0"))));
                    frames.0.push_back(Err("handler failed".to_owned()));
                }
            }
            Ok(response.body(frames).expect("a valid response head"))
        })
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let (flags0, flags1) = (input.byte(), input.byte());
    let mut wire = http2::frame::PREFACE.to_vec();
    wire.extend_from_slice(input.rest());
    let at_end = if flags0 & 8 != 0 {
        AtEnd::Eof
    } else {
        AtEnd::Hang
    };
    // The sender lives to the end (a dropped sender is not a drain signal).
    let (shutdown_tx, shutdown) = watch::channel(false);
    let shutdown_tx = std::sync::Arc::new(shutdown_tx);
    let drain_tx = shutdown_tx.clone();
    let drain = flags0 & 16 != 0;
    let mut io = ScriptIo::new(partgate_fuzz::split_h2(&wire, flags0 & 7), at_end)
        .write_limit(partgate_fuzz::write_limit(flags0 >> 5))
        .on_end(move || {
            if drain {
                let _ = drain_tx.send(true);
            }
        });
    if flags0 & 128 != 0 {
        io = io.write_budget(4096);
    }
    let written = io.written();
    let max_streams = if flags1 & 1 != 0 { 2 } else { 4096 };
    let mut config = server::config();
    if flags1 & 2 != 0 {
        // Windows an input of a few KiB can use up (what we advertise; the client's own
        // SETTINGS and WINDOW_UPDATEs bound what the server sends).
        config.initial_stream_window = 1024;
        config.initial_conn_window = 65_535;
    }
    if flags1 & 4 != 0 {
        config.keepalive = None;
    }
    let peer = SocketAddr::from((Ipv4Addr::LOCALHOST, 4242));
    let rt = partgate_fuzz::runtime();
    rt.block_on(async {
        let serve = server::serve_connection(io, peer, Handler, max_streams, config, shutdown);
        let _ = tokio::time::timeout(RUN_LIMIT, serve).await;
    });
    drop(rt);
    drop(shutdown_tx);
    check_h2_output(&partgate_fuzz::take_written(&written), false);
});
