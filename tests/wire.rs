//! What arrives on the wire: malformed and hostile frames, gRPC-Web over HTTP/1.1, CORS, plain
//! HTTP. Nothing a client sends may panic or hang the gateway or disturb other clients.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use http_body_util::Full;
use support::*;
use tonic::Code;

const SET_POWER: &str = "/viam.component.motor.v1.MotorService/SetPower";

async fn status_of(fleet: &Fleet, body: Vec<u8>) -> Option<i32> {
    let req = grpc_request(fleet.addr(), SET_POWER, body);
    tokio::time::timeout(Duration::from_secs(5), raw_call(fleet.addr(), true, req))
        .await
        .expect("answers")
        .grpc_status()
}

#[tokio::test]
async fn malformed_frames_are_invalid_argument() {
    let fleet = demo().await;
    let invalid = Some(Code::InvalidArgument as i32);
    // Truncated field length inside a complete frame.
    assert_eq!(
        status_of(&fleet, grpc_frame(false, &[0x0a, 50, b'a'])).await,
        invalid
    );
    // Not UTF-8.
    assert_eq!(
        status_of(&fleet, grpc_frame(false, &[0x0a, 2, 0xff, 0xfe])).await,
        invalid
    );
    // Group wire type.
    assert_eq!(
        status_of(&fleet, grpc_frame(false, &[0x0b, 0x0c])).await,
        invalid
    );
    // Body ends inside the frame header / inside the message.
    assert_eq!(status_of(&fleet, vec![0, 0, 0]).await, invalid);
    assert_eq!(
        status_of(&fleet, grpc_frame(false, b"\x0a\x06motor1")[..8].to_vec()).await,
        invalid
    );
    // No message at all, and field 1 with a non-string wire type.
    assert_eq!(status_of(&fleet, vec![]).await, invalid);
    assert_eq!(
        status_of(&fleet, grpc_frame(false, &[0x08, 0x01])).await,
        invalid
    );
}

#[tokio::test]
async fn compressed_first_message_is_refused_clearly() {
    let fleet = demo().await;
    let req = grpc_request(
        fleet.addr(),
        SET_POWER,
        grpc_frame(true, b"\x1f\x8b garbage"),
    );
    let resp = raw_call(fleet.addr(), true, req).await;
    assert_eq!(resp.grpc_status(), Some(Code::InvalidArgument as i32));
    let message = resp
        .headers
        .get("grpc-message")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    assert!(message.contains("compressed"), "{message}");
}

#[tokio::test]
async fn announced_huge_frame_is_rejected_without_waiting_for_it() {
    let fleet = demo().await;
    let mut body = vec![0u8];
    body.extend_from_slice(&u32::MAX.to_be_bytes());
    assert_eq!(
        status_of(&fleet, body).await,
        Some(Code::ResourceExhausted as i32)
    );
}

#[tokio::test]
async fn random_garbage_never_breaks_the_gateway() {
    let fleet = demo().await;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..200 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let len = (state % 40) as usize;
        let msg: Vec<u8> = (0..len).map(|i| (state >> (i % 8 * 8)) as u8).collect();
        let code = status_of(&fleet, grpc_frame(false, &msg))
            .await
            .expect("a grpc status");
        assert_ne!(
            code,
            Code::Internal as i32,
            "garbage is the client's fault, not ours"
        );
    }
    // And the gateway still serves well-formed calls.
    let ch = fleet.channel().await;
    motor_client(&ch)
        .set_power(set_power("sub1:motor1", 0.1))
        .await
        .expect("still healthy");
}

#[tokio::test]
async fn unknown_framework_service_is_unimplemented() {
    let fleet = demo().await;
    let req = grpc_request(
        fleet.addr(),
        // (SignalingService is served now: tests/webrtc.rs.)
        "/proto.rpc.v1.ExternalAuthService/AuthenticateTo",
        grpc_frame(false, b""),
    );
    assert_eq!(
        raw_call(fleet.addr(), true, req).await.grpc_status(),
        Some(Code::Unimplemented as i32)
    );
}

fn grpc_web_request(
    fleet: &Fleet,
    content_type: &str,
    body: Vec<u8>,
) -> http::Request<Full<bytes::Bytes>> {
    http::Request::post(format!("http://{}{SET_POWER}", fleet.addr()))
        .header("content-type", content_type)
        .header("x-grpc-web", "1")
        .header("origin", "http://localhost:3000")
        .body(Full::new(bytes::Bytes::from(body)))
        .unwrap()
}

#[tokio::test]
async fn grpc_web_over_http1_routes_and_returns_trailers_in_the_body() {
    let fleet = demo().await;
    let body = grpc_frame(false, &encode(&set_power("sub1:motor1", 0.25)));
    let resp = raw_call(
        fleet.addr(),
        false,
        grpc_web_request(&fleet, "application/grpc-web+proto", body),
    )
    .await;
    assert_eq!(resp.status, http::StatusCode::OK);
    assert_eq!(
        resp.headers.get("access-control-allow-origin").unwrap(),
        "http://localhost:3000"
    );
    // Body: the (empty) response message frame, then a trailer frame (flag 0x80).
    let trailer_frame = resp
        .body
        .windows(1)
        .position(|w| w[0] == 0x80)
        .expect("trailer frame");
    let trailer_text = String::from_utf8_lossy(&resp.body[trailer_frame + 5..]);
    assert!(trailer_text.contains("grpc-status:0"), "{trailer_text}");
    assert_eq!(
        fleet.part("sub1").log().motor("motor1").map(|m| m.power),
        Some(0.25)
    );
}

#[tokio::test]
async fn grpc_web_text_is_supported() {
    use base64::Engine as _;
    let fleet = demo().await;
    let body = grpc_frame(false, &encode(&set_power("cell-m1", 0.75)));
    let encoded = base64::engine::general_purpose::STANDARD
        .encode(body)
        .into_bytes();
    let mut req = grpc_web_request(&fleet, "application/grpc-web-text", encoded);
    // Text-mode clients ask for a text reply; without this tonic-web answers in binary.
    req.headers_mut().insert(
        "accept",
        http::HeaderValue::from_static("application/grpc-web-text"),
    );
    let resp = raw_call(fleet.addr(), false, req).await;
    assert_eq!(
        resp.headers.get("content-type").unwrap(),
        "application/grpc-web-text+proto"
    );
    assert_eq!(resp.status, http::StatusCode::OK);
    // The reply is a concatenation of separately padded base64 chunks (one per frame), so
    // decode it in 4-character groups as grpc-web clients do.
    let decoded: Vec<u8> = resp
        .body
        .chunks(4)
        .flat_map(|group| {
            base64::engine::general_purpose::STANDARD
                .decode(group)
                .expect("base64 reply")
        })
        .collect();
    assert!(String::from_utf8_lossy(&decoded).contains("grpc-status:0"));
    assert_eq!(
        fleet.part("cell").log().motor("m1").map(|m| m.power),
        Some(0.75)
    );
}

#[tokio::test]
async fn cors_preflight_allows_the_sdk_headers() {
    let fleet = demo().await;
    let req = http::Request::builder()
        .method("OPTIONS")
        .uri(format!("http://{}{SET_POWER}", fleet.addr()))
        .header("origin", "http://localhost:3000")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type,x-grpc-web,authorization,viam_client,grpc-timeout",
        )
        .body(Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = raw_call(fleet.addr(), false, req).await;
    assert!(resp.status.is_success(), "{:?}", resp.status);
    let allowed = resp
        .headers
        .get("access-control-allow-headers")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    for h in ["authorization", "viam_client", "x-grpc-web", "grpc-timeout"] {
        assert!(allowed.contains(h), "{h} not in {allowed}");
    }
    assert_eq!(
        resp.headers
            .get("access-control-allow-credentials")
            .unwrap(),
        "true"
    );
}

#[tokio::test]
async fn plain_http_gets_a_plain_answer() {
    let fleet = demo().await;
    let get = |path: &str| {
        http::Request::get(format!("http://{}{path}", fleet.addr()))
            .body(Full::new(bytes::Bytes::new()))
            .unwrap()
    };
    assert_eq!(
        raw_call(fleet.addr(), false, get("/healthz")).await.status,
        http::StatusCode::OK
    );
    assert_eq!(
        raw_call(fleet.addr(), false, get("/nope")).await.status,
        http::StatusCode::NOT_FOUND
    );
}
