//! Unary gRPC messages on the wire: a response carrying one message, and the decoding of a
//! request's single message. For what a gateway or a simulated part answers itself, not for
//! forwarded calls (those stay bytes).

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue};
use http_body::Frame;
use http_body_util::BodyExt;
use prost::Message;
use tonic::Status;

type Body = tonic::body::Body;

/// Length of a gRPC message's frame header (compressed flag, big-endian length).
pub const FRAME_HEADER_LEN: usize = 5;

/// The frame header of an uncompressed message of `len` bytes.
pub fn frame_header(len: usize) -> [u8; FRAME_HEADER_LEN] {
    let n = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
    [0, n[0], n[1], n[2], n[3]]
}

/// A complete unary gRPC response: one message, then `grpc-status: 0`.
pub fn reply<M: Message>(msg: &M) -> http::Response<Body> {
    let len = msg.encoded_len();
    let mut buf = BytesMut::with_capacity(len + FRAME_HEADER_LEN);
    buf.put_slice(&frame_header(len));
    // Encoding into a buffer of sufficient capacity cannot fail.
    let _ = msg.encode(&mut buf);
    let mut trailers = HeaderMap::with_capacity(1);
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let frames: [Result<Frame<Bytes>, Status>; 2] =
        [Ok(Frame::data(buf.freeze())), Ok(Frame::trailers(trailers))];
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
    let mut resp = http::Response::new(Body::new(body));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    resp
}

/// Reads a whole unary request body of at most `limit` bytes and decodes its one message (an
/// empty body is the default message). Compressed or malformed messages are INVALID_ARGUMENT.
pub async fn decode<M: Message + Default>(body: Body, limit: usize) -> Result<M, Status> {
    let limited = http_body_util::Limited::new(body, limit);
    let bytes = limited
        .collect()
        .await
        .map_err(|_| Status::invalid_argument("request body too large or failed"))?
        .to_bytes();
    if bytes.is_empty() {
        return Ok(M::default());
    }
    let header = bytes
        .get(..FRAME_HEADER_LEN)
        .ok_or_else(|| Status::invalid_argument("truncated gRPC frame"))?;
    if header[0] != 0 {
        return Err(Status::invalid_argument(
            "compressed messages are not supported",
        ));
    }
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    let message = bytes
        .get(FRAME_HEADER_LEN..FRAME_HEADER_LEN.saturating_add(len))
        .ok_or_else(|| Status::invalid_argument("truncated gRPC message"))?;
    M::decode(message).map_err(|_| Status::invalid_argument("request message does not decode"))
}
