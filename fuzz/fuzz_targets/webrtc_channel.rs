//! gRPC over the WebRTC data channel, the answering side
//! (`partgate::ingress::webrtc::server::serve_with_cache`), fed arbitrary data-channel messages
//! from a peer, in front of an echo service standing for the call stack: `Request` decoding,
//! the per-stream state machines (headers, packets and their reassembly, eos, rst, the stream
//! limit, cardinality lookups by reflection through the service), and the way back (answers
//! deframed, packetized, trailers). Paused time, as for HTTP/2: stall and lookup limits fire in
//! virtual time. The peer goes away once the server has nothing left to do; the server must
//! then end, and every message it sent must be a `Response` for a stream.
//!
//! Input: a flag byte (bit 0: structured), then either data-channel messages, each prefixed by
//! its 16-bit length (raw), or operations (structured) that build valid `Request`s: per
//! operation a byte (bits 0-1: headers, message, end of stream, reset; bits 2-4: stream id),
//! then its fields (see `structured`).
#![no_main]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use libfuzzer_sys::fuzz_target;
use partgate::auth::Principal;
use partgate::ingress::webrtc::cardinality::MethodCache;
use partgate::ingress::webrtc::channel::ChannelIo;
use partgate::ingress::webrtc::server::serve_with_cache;
use partgate::ingress::webrtc::wire;
use partgate::metrics::WebRtcMetrics;
use partgate::proto::rpc::webrtc::v1 as pb;
use partgate_fuzz::{Frames, Input, RUN_LIMIT, collect};
use prost::Message;

const METHODS: [&str; 6] = [
    // Unary, built in: half-closed after the first message.
    "/viam.component.motor.v1.MotorService/SetPower",
    // Bidirectional, built in.
    "/viam.robot.v1.RobotService/StreamStatus",
    // A custom API: its cardinality is looked up by reflection (through the echo).
    "/acme.component.counter.v1.CounterService/Get",
    // Answered trailers-only by the echo.
    "/viam.robot.v1.RobotService/Trailers",
    // Not a method path: refused.
    "nonsense",
    "/a/b/c",
];

/// The call stack's stand-in: a trailers-only answer for `.../Trailers`; otherwise the request
/// body echoed back (its metadata as response headers) with trailers, once it ends.
async fn echo(req: Request<tonic::body::Body>) -> Result<Response<tonic::body::Body>, Infallible> {
    let trailers_only = req.uri().path().ends_with("/Trailers");
    let mut response = Response::builder().header("content-type", "application/grpc");
    for (name, value) in req.headers() {
        if name.as_str().starts_with("x-") {
            response = response.header(name, value);
        }
    }
    let mut frames = Frames::default();
    if trailers_only {
        response = response
            .header("grpc-status", "5")
            .header("grpc-message", "not here");
    } else {
        let (data, _, ok) = collect(req.into_body(), 1 << 20).await;
        frames
            .0
            .push_back(Ok(http_body::Frame::data(data.freeze())));
        let mut trailers = HeaderMap::new();
        trailers.insert(
            "grpc-status",
            HeaderValue::from_static(if ok { "0" } else { "1" }),
        );
        trailers.insert("x-trailer", HeaderValue::from_static("yes"));
        frames.0.push_back(Ok(http_body::Frame::trailers(trailers)));
    }
    Ok(response
        .body(tonic::body::Body::new(frames))
        .expect("a valid response head"))
}

/// Valid `Request`s from compact operations: headers (method, a metadata pair, a timeout),
/// a message packet (`has_message`, `eom`, `eos` bits and the data), a bare end of stream, or
/// a reset.
fn structured(mut input: Input<'_>) -> Vec<Bytes> {
    let mut frames = Vec::new();
    while !input.is_empty() {
        let op = input.byte();
        let id = u64::from(op >> 2 & 7);
        let kind = match op & 3 {
            0 => {
                let method = METHODS[usize::from(input.byte()) % METHODS.len()].to_owned();
                let key = String::from_utf8_lossy(input.field(15));
                let value = String::from_utf8_lossy(input.field(15));
                let mut md = HashMap::new();
                md.insert(
                    key.into_owned(),
                    pb::Strings {
                        values: vec![value.into_owned()],
                    },
                );
                let seconds = i64::from(input.byte() as i8);
                pb::request::Type::Headers(pb::RequestHeaders {
                    method,
                    metadata: Some(pb::Metadata { md }),
                    timeout: (seconds != 0).then_some(prost_types::Duration { seconds, nanos: 0 }),
                })
            }
            1 => {
                let bits = input.byte();
                let data = Bytes::copy_from_slice(input.field(0xff));
                pb::request::Type::Message(pb::RequestMessage {
                    has_message: bits & 1 == 0,
                    packet_message: (bits & 2 == 0).then_some(pb::PacketMessage {
                        data,
                        eom: bits & 4 == 0,
                    }),
                    eos: bits & 8 != 0,
                })
            }
            2 => pb::request::Type::Message(pb::RequestMessage {
                has_message: false,
                packet_message: None,
                eos: true,
            }),
            _ => pb::request::Type::RstStream(true),
        };
        frames.push(wire::request(id, kind));
    }
    frames
}

fn raw(mut input: Input<'_>) -> Vec<Bytes> {
    let mut frames = Vec::new();
    while let Some(chunk) = input.chunk() {
        frames.push(Bytes::copy_from_slice(chunk));
    }
    frames
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.byte();
    let frames = if flags & 1 != 0 {
        structured(input)
    } else {
        raw(input)
    };

    let rt = partgate_fuzz::runtime();
    rt.block_on(async {
        let (server_end, peer) = ChannelIo::pair();
        let ChannelIo {
            mut incoming,
            outgoing,
        } = peer;
        let server = tokio::spawn(serve_with_cache(
            server_end,
            tower::service_fn(echo),
            Principal::anonymous(),
            WebRtcMetrics::default(),
            Arc::new(MethodCache::new(8)),
        ));
        // The peer reads everything the server sends, as a browser would.
        let reader = tokio::spawn(async move {
            while let Some(frame) = incoming.recv().await {
                let response = pb::Response::decode(frame)
                    .unwrap_or_else(|e| panic!("the server sent an undecodable message: {e}"));
                assert!(response.stream.is_some(), "a message for no stream");
                assert!(response.r#type.is_some(), "a message without a type");
            }
        });
        let _ = tokio::time::timeout(RUN_LIMIT, async {
            for frame in frames {
                if outgoing.send(frame).await.is_err() {
                    break;
                }
            }
        })
        .await;
        // The peer stays while anything is left to do (answers, lookups, stalls: virtual time
        // only moves on once every task waits), then leaves.
        tokio::time::sleep(std::time::Duration::from_secs(30)).await;
        drop(outgoing);
        // The peer is gone: the server must end every stream and return (an hour of virtual
        // time is far beyond any of its limits, and costs nothing).
        match tokio::time::timeout(std::time::Duration::from_secs(3600), server).await {
            Ok(result) => result.expect("the server task panicked"),
            Err(_) => panic!("the server did not end after its peer left"),
        }
        reader.await.expect("the peer's reader panicked");
    });
});
