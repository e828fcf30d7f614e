//! gRPC-Web and grpc-web-text requests with arbitrary bodies, in two modes:
//!
//! - the gateway's own front door (`partgate::ingress::listener::Frontend`: content-type
//!   routing, CORS, `tonic_web` conversion, the call stack) over an empty fleet, for the
//!   methods the gateway answers itself or fails (RobotService, auth, a part's method);
//! - `tonic_web::GrpcWebLayer` over an echo service, which reads the whole decoded body and
//!   answers it back, so every byte is decoded (base64 included) and encoded again. A binary
//!   body must come back byte for byte, then the trailer frame.
//!
//! Input: a flag byte (bits 0-2: read pattern; bit 3: echo mode; bits 4-5: content type;
//! bit 6: `accept` asks for a grpc-web-text answer; bit 7: a CORS preflight instead), a method
//! byte (the path), then the body.
#![no_main]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response};
use libfuzzer_sys::fuzz_target;
use partgate::config::Config;
use partgate::ingress::listener::Frontend;
use partgate::metrics::Metrics;
use partgate::stack::CallStack;
use partgate::upstream::pool::Pool;
use partgate_fuzz::{Frames, Input, RUN_LIMIT, collect};
use tower::{Layer, ServiceExt};

const CONTENT_TYPES: [&str; 4] = [
    "application/grpc-web",
    "application/grpc-web+proto",
    "application/grpc-web-text",
    "application/grpc-web-text+proto",
];

const PATHS: [&str; 8] = [
    "/viam.robot.v1.RobotService/ResourceNames",
    "/viam.robot.v1.RobotService/GetVersion",
    "/viam.robot.v1.RobotService/StartSession",
    "/viam.robot.v1.RobotService/StopAll",
    "/viam.component.motor.v1.MotorService/SetPower",
    "/proto.rpc.v1.AuthService/Authenticate",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    "/no.such.Service/Method",
];

fn body(chunks: Vec<Bytes>) -> tonic::body::Body {
    let frames = chunks
        .into_iter()
        .map(|c| Ok::<_, Infallible>(http_body::Frame::data(c)));
    tonic::body::Body::new(http_body_util::StreamBody::new(futures_util::stream::iter(
        frames,
    )))
}

/// The empty fleet's front door, as `Gateway::start` builds it (no parts, no auth), on the
/// runtime its background tasks (session expiry, deadline sweeps) run on. Built once: a
/// metrics registry and a pool per input would cost more than the call. Its state (client
/// sessions) lives on from one input to the next, as in a running gateway.
struct Gateway {
    runtime: tokio::runtime::Runtime,
    frontend: Frontend,
}

thread_local! {
    static GATEWAY: Gateway = {
        let runtime = partgate_fuzz::runtime();
        let frontend = runtime.block_on(async {
            let settings = Config::parse("{}")
                .and_then(|c| c.validate())
                .expect("the empty config is valid");
            let pool = Pool::start(&settings, Metrics::new(), 1).expect("a pool of no parts");
            Frontend::new(CallStack::new(pool, &settings, None))
        });
        Gateway { runtime, frontend }
    };
}

/// Reads the whole (decoded) request and answers it back, with trailers.
async fn echo(req: Request<tonic::body::Body>) -> Result<Response<Frames>, Infallible> {
    let (data, _, ok) = collect(req.into_body(), 1 << 20).await;
    let mut frames = Frames::default();
    frames
        .0
        .push_back(Ok(http_body::Frame::data(data.freeze())));
    let mut trailers = HeaderMap::new();
    trailers.insert(
        "grpc-status",
        HeaderValue::from_static(if ok { "0" } else { "13" }),
    );
    frames.0.push_back(Ok(http_body::Frame::trailers(trailers)));
    Ok(Response::builder()
        .header("content-type", "application/grpc")
        .body(frames)
        .expect("a valid response head"))
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.byte();
    let path = PATHS[usize::from(input.byte()) % PATHS.len()];
    let echo_mode = flags & 8 != 0;
    let content_type = CONTENT_TYPES[usize::from(flags >> 4 & 3)];
    let text = content_type.contains("text");
    let preflight = flags & 128 != 0;
    let payload = input.rest();

    let mut req = Request::builder()
        .uri(path)
        .header("origin", "http://localhost:5173")
        .header("x-grpc-web", "1");
    if preflight {
        req = req
            .method(Method::OPTIONS)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type,x-grpc-web");
    } else {
        req = req
            .method(Method::POST)
            .header("content-type", content_type);
        if flags & 64 != 0 {
            req = req.header("accept", "application/grpc-web-text");
        }
    }
    let req = req
        .body(body(partgate_fuzz::split(payload, flags & 7)))
        .expect("a valid request");

    GATEWAY.with(|gateway| {
        gateway.runtime.block_on(async {
            let answer = async {
                if echo_mode {
                    let service = tonic_web::GrpcWebLayer::new().layer(tower::service_fn(echo));
                    let Ok(response) = service.oneshot(req).await;
                    let (head, body) = response.into_parts();
                    let (data, _, _) = collect(body, 4 << 20).await;
                    let binary_answer = head
                        .headers
                        .get("content-type")
                        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc-web+proto"));
                    (!preflight && !text && binary_answer).then_some(data)
                } else {
                    let peer = SocketAddr::from((Ipv4Addr::LOCALHOST, 4242));
                    let Ok(response) = gateway.frontend.clone().serve(req, peer).await;
                    let _ = collect(response.into_body(), 4 << 20).await;
                    None
                }
            };
            let Ok(Some(echoed)) = tokio::time::timeout(RUN_LIMIT, answer).await else {
                return;
            };
            // A binary body passes through undecoded both ways: it comes back as sent (the echo
            // reads up to 1 MiB), then the trailer frame (flag 0x80).
            if payload.len() < 1 << 20 {
                assert!(echoed.starts_with(payload), "the echo changed the body");
                assert_eq!(echoed.get(payload.len()), Some(&0x80), "no trailer frame");
            }
        })
    });
});
