//! The data-channel wire rules both sides share: packetizing and reassembling messages, the
//! 5-byte gRPC framing of HTTP bodies, and metadata and status translation to and from HTTP.
//!
//! Receives whole `Request`/`Response` payloads and HTTP header maps; hands back packets, whole
//! messages and header maps. Message payloads are sliced (`Bytes`), never decoded.

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};
use prost::Message;

use crate::proto::google::rpc::Status as RpcStatus;
use crate::proto::rpc::webrtc::v1 as pb;

/// Payload bytes per packet. 16373 is what the Rust and TS SDKs send: with the wrapper a frame
/// stays within 16 KiB, the data-channel message size every browser and SCTP stack accepts
/// without relying on `max-message-size` negotiation (Go's 65535 is the hard upper bound).
pub const CHUNK: usize = 16373;

/// Largest message reassembled (goutils' `MaxMessageSize`, 32 MiB).
pub const MAX_MESSAGE: usize = 1 << 25;

/// Headers that never cross the bridge in either direction: HTTP/2 pseudo headers are
/// filtered by the caller; these are hop-by-hop, length, or set by the bridge itself. Request
/// compression headers are dropped too: a data-channel message has no compressed flag.
const NOT_METADATA: [&str; 14] = [
    "authorization",
    "connection",
    "content-length",
    "content-type",
    "grpc-accept-encoding",
    "grpc-encoding",
    "grpc-message",
    "grpc-status",
    "grpc-status-details-bin",
    "host",
    "keep-alive",
    "te",
    "transfer-encoding",
    "upgrade",
];

/// Splits a serialized message into packets, `eom` on the last; an empty message is one
/// empty packet with `eom`.
pub fn packets(message: Bytes) -> impl Iterator<Item = pb::PacketMessage> {
    let count = message.len().div_ceil(CHUNK).max(1);
    (0..count).map(move |i| {
        let start = i * CHUNK;
        let end = (start + CHUNK).min(message.len());
        pb::PacketMessage {
            data: message.slice(start..end),
            eom: i + 1 == count,
        }
    })
}

/// Reassembles one message at a time from packets.
#[derive(Debug, Default)]
pub struct Reassembly {
    parts: Vec<Bytes>,
    len: usize,
}

/// A message beyond [`MAX_MESSAGE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge;

impl Reassembly {
    /// Adds a packet; the whole message once `eom` arrives. A one-packet message is handed on
    /// as it came (no copy).
    pub fn push(&mut self, packet: pb::PacketMessage) -> Result<Option<Bytes>, TooLarge> {
        self.len += packet.data.len();
        if self.len > MAX_MESSAGE {
            self.parts.clear();
            self.len = 0;
            return Err(TooLarge);
        }
        if !packet.data.is_empty() {
            self.parts.push(packet.data);
        }
        if !packet.eom {
            return Ok(None);
        }
        self.len = 0;
        Ok(Some(match self.parts.len() {
            0 => Bytes::new(),
            1 => self.parts.pop().unwrap_or_default(),
            _ => {
                let mut whole = BytesMut::with_capacity(self.parts.iter().map(Bytes::len).sum());
                self.parts
                    .drain(..)
                    .for_each(|p| whole.extend_from_slice(&p));
                whole.freeze()
            }
        }))
    }
}

/// Splits an HTTP gRPC body back into messages (5-byte header: compressed flag, length).
#[derive(Debug, Default)]
pub struct Deframer {
    buf: BytesMut,
}

/// One message out of a gRPC body.
#[derive(Debug)]
pub struct GrpcMessage {
    /// The compressed flag was set.
    pub compressed: bool,
    /// The serialized message.
    pub data: Bytes,
}

impl Deframer {
    /// Adds body bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next whole message, if buffered.
    pub fn next_message(&mut self) -> Option<GrpcMessage> {
        let header = self.buf.get(..5)?;
        let compressed = header[0] != 0;
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if self.buf.len() < 5 + len {
            return None;
        }
        self.buf.advance(5);
        Some(GrpcMessage {
            compressed,
            data: self.buf.split_to(len).freeze(),
        })
    }

    /// Whether a partial message is left over.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// The 5-byte gRPC header of an uncompressed message of `len` bytes.
pub fn frame_header(len: usize) -> Bytes {
    Bytes::copy_from_slice(&crate::route::frame::FrameHeader::encode(len))
}

/// HTTP headers as data-channel metadata (pseudo, hop-by-hop and bridge-owned headers left out).
pub fn to_metadata(headers: &HeaderMap) -> pb::Metadata {
    let mut md = std::collections::HashMap::<String, pb::Strings>::new();
    for (name, value) in headers {
        let key = name.as_str();
        if key.starts_with(':') || NOT_METADATA.contains(&key) {
            continue;
        }
        let Ok(value) = value.to_str() else {
            continue;
        };
        md.entry(key.to_owned())
            .or_default()
            .values
            .push(value.to_owned());
    }
    pb::Metadata { md }
}

/// Data-channel metadata as HTTP headers, with the same exclusions; keys and values that are
/// not valid HTTP are skipped (logged at debug).
pub fn from_metadata(metadata: Option<&pb::Metadata>, headers: &mut HeaderMap) {
    let Some(metadata) = metadata else {
        return;
    };
    for (key, strings) in &metadata.md {
        let key = key.to_ascii_lowercase();
        if key.starts_with(':') || NOT_METADATA.contains(&key.as_str()) {
            continue;
        }
        let Ok(name) = HeaderName::from_bytes(key.as_bytes()) else {
            tracing::debug!(key = %key, "metadata key is not a valid header name; dropped");
            continue;
        };
        for value in &strings.values {
            match HeaderValue::from_str(value) {
                Ok(v) => {
                    headers.append(name.clone(), v);
                }
                Err(_) => {
                    tracing::debug!(key = %key, "metadata value is not a valid header; dropped")
                }
            }
        }
    }
}

/// Trailers (or the headers of a trailers-only answer) as `ResponseTrailers`: the status from
/// `grpc-status`/`grpc-message`/`grpc-status-details-bin`, everything else as metadata.
pub fn to_trailers(headers: &HeaderMap) -> pb::ResponseTrailers {
    let status = tonic::Status::from_header_map(headers)
        .unwrap_or_else(|| tonic::Status::unknown("response ended without grpc-status"));
    pb::ResponseTrailers {
        status: Some(rpc_status(&status)),
        metadata: Some(to_metadata(headers)),
    }
}

/// A tonic status as `google.rpc.Status` (details from `grpc-status-details-bin`).
pub fn rpc_status(status: &tonic::Status) -> RpcStatus {
    let details = RpcStatus::decode(status.details())
        .map(|s| s.details)
        .unwrap_or_default();
    RpcStatus {
        code: status.code() as i32,
        message: status.message().to_owned(),
        details,
    }
}

/// `ResponseTrailers` back as HTTP trailers (`grpc-status`, `grpc-message`, details, metadata).
pub fn from_trailers(trailers: &pb::ResponseTrailers) -> HeaderMap {
    let mut headers = HeaderMap::new();
    from_metadata(trailers.metadata.as_ref(), &mut headers);
    let status = trailers.status.clone().unwrap_or_default();
    let code = tonic::Code::from_i32(status.code);
    let tonic_status = if status.details.is_empty() {
        tonic::Status::new(code, status.message)
    } else {
        let details = Bytes::from(status.encode_to_vec());
        tonic::Status::with_details(code, status.message, details)
    };
    if tonic_status.add_header(&mut headers).is_err() {
        headers.insert("grpc-status", HeaderValue::from(code as i32));
    }
    headers
}

/// A `Request` frame for a stream.
pub fn request(id: u64, kind: pb::request::Type) -> Bytes {
    let req = pb::Request {
        stream: Some(pb::Stream { id }),
        r#type: Some(kind),
    };
    Bytes::from(req.encode_to_vec())
}

/// A `Response` frame for a stream.
pub fn response(id: u64, kind: pb::response::Type) -> Bytes {
    let resp = pb::Response {
        stream: Some(pb::Stream { id }),
        r#type: Some(kind),
    };
    Bytes::from(resp.encode_to_vec())
}

/// `grpc-timeout` text for a duration (milliseconds, rounded up; seconds when too long).
pub fn grpc_timeout(d: std::time::Duration) -> String {
    let millis = d.as_nanos().div_ceil(1_000_000);
    if millis <= 99_999_999 {
        format!("{millis}m")
    } else {
        format!("{}S", d.as_secs().min(99_999_999))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_split_and_reassemble() {
        let msg = Bytes::from(vec![7u8; CHUNK * 2 + 5]);
        let parts: Vec<_> = packets(msg.clone()).collect();
        assert_eq!(parts.len(), 3);
        assert!(parts[2].eom && !parts[0].eom);
        let mut r = Reassembly::default();
        let mut out = None;
        for p in parts {
            out = r.push(p).unwrap();
        }
        assert_eq!(out.unwrap(), msg);
        let empty: Vec<_> = packets(Bytes::new()).collect();
        assert_eq!(empty.len(), 1);
        assert!(empty[0].eom && empty[0].data.is_empty());
        assert_eq!(r.push(empty[0].clone()).unwrap(), Some(Bytes::new()));
    }

    #[test]
    fn reassembly_limit() {
        let mut r = Reassembly::default();
        let big = Bytes::from(vec![0u8; MAX_MESSAGE / 2 + 1]);
        let p = |eom| pb::PacketMessage {
            data: big.clone(),
            eom,
        };
        assert_eq!(r.push(p(false)), Ok(None));
        assert_eq!(r.push(p(true)), Err(TooLarge));
    }

    #[test]
    fn stream_zero_is_present_but_empty() {
        let frame = request(0, pb::request::Type::RstStream(true));
        // field 1, length 0: present, empty.
        assert_eq!(&frame[..2], &[0x0a, 0x00]);
        let back = pb::Request::decode(frame).unwrap();
        assert_eq!(back.stream, Some(pb::Stream { id: 0 }));
    }

    #[test]
    fn deframes_split_bodies() {
        let mut d = Deframer::default();
        d.push(&[0, 0, 0, 0, 3, b'a']);
        assert!(d.next_message().is_none());
        d.push(&[b'b', b'c', 0, 0, 0, 0, 0]);
        assert_eq!(&d.next_message().unwrap().data[..], b"abc");
        assert_eq!(d.next_message().unwrap().data.len(), 0);
        assert!(d.is_empty());
    }

    #[test]
    fn trailers_round_trip_with_details() {
        let inner = RpcStatus {
            code: 5,
            message: "nope".into(),
            details: vec![prost_types::Any {
                type_url: "t".into(),
                value: vec![1],
            }],
        };
        let status = tonic::Status::with_details(
            tonic::Code::NotFound,
            "nope: ünïcode",
            Bytes::from(inner.encode_to_vec()),
        );
        let mut h = HeaderMap::new();
        status.add_header(&mut h).unwrap();
        h.insert("x-extra", HeaderValue::from_static("1"));
        let t = to_trailers(&h);
        let s = t.status.clone().unwrap();
        assert_eq!(s.code, 5);
        assert_eq!(s.message, "nope: ünïcode");
        assert_eq!(s.details.len(), 1);
        assert!(t.metadata.as_ref().unwrap().md.contains_key("x-extra"));
        let back = from_trailers(&t);
        let again = tonic::Status::from_header_map(&back).unwrap();
        assert_eq!(again.code(), tonic::Code::NotFound);
        assert_eq!(again.message(), "nope: ünïcode");
        assert_eq!(back.get("x-extra").unwrap(), "1");
    }

    #[test]
    fn metadata_drops_bridge_headers() {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer x"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("viam-sid", HeaderValue::from_static("s"));
        let md = to_metadata(&h);
        assert_eq!(md.md.len(), 1);
        let mut back = HeaderMap::new();
        from_metadata(Some(&md), &mut back);
        assert_eq!(back.get("viam-sid").unwrap(), "s");
    }

    #[test]
    fn timeouts() {
        assert_eq!(grpc_timeout(std::time::Duration::from_micros(1500)), "2m");
        assert_eq!(
            grpc_timeout(std::time::Duration::from_secs(200_000)),
            "200000S"
        );
    }
}
