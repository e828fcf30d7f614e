//! The caller side of gRPC over a data channel (goutils' `wrtc_client_*`, the SDKs' client
//! channel), as a `tower::Service<http::Request<Body>>`: tonic's generated clients run over it
//! unchanged, and it can later be a pool connection to a part reached over WebRTC.
//!
//! Receives standard gRPC requests; hands the peer `headers`, message packets (16373-byte
//! chunks) and `eos`, and turns `headers`/`message`/`trailers` back into a streaming HTTP
//! response. Stream ids start at 0 like the Rust and TS SDKs. Dropping a response (or the call
//! before it answers) sends `rst_stream`. [`dial`] does the SDK signaling flow against a gateway.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::HeaderMap;
use http_body::Frame;
use http_body_util::BodyExt;
use prost::Message;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tracing::debug;

use super::channel::ChannelIo;
use super::signaling::{decode_sdp, encode_sdp};
use super::transport::{Endpoint, TransportError};
use super::wire::{self, Deframer, Reassembly};
use crate::error::WebRtcError;
use crate::proto::rpc::webrtc::v1 as pb;

type Body = tonic::body::Body;

/// Response frames queued per stream before the peer's reader waits.
const RESPONSE_QUEUE: usize = 64;

/// How the client behaves where the SDKs differ.
#[derive(Debug, Clone, Copy)]
pub struct ClientOptions {
    /// Send `eos` when a request body ends (Go, Rust and TS streams do; TS unary calls never
    /// do: set false to behave like them).
    pub send_eos: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self { send_eos: true }
    }
}

/// A caller-side data-channel connection. Cheap to clone.
#[derive(Clone)]
pub struct WebRtcClient {
    shared: Arc<Shared>,
}

type StreamMap = Arc<Mutex<HashMap<u64, mpsc::Sender<pb::response::Type>>>>;

struct Shared {
    out: mpsc::Sender<Bytes>,
    streams: StreamMap,
    next_id: AtomicU64,
    options: ClientOptions,
    reader: AbortHandle,
}

/// Failures of [`dial`].
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// A signaling call failed.
    #[error("signaling: {0}")]
    Signaling(#[from] tonic::Status),
    /// The transport failed.
    #[error("transport: {0}")]
    Transport(#[from] TransportError),
    /// The answerer broke the exchange (no init first, bad answer).
    #[error("signaling exchange: {0}")]
    Exchange(String),
}

// === impl WebRtcClient ===

impl WebRtcClient {
    /// A client over a connected data channel.
    pub fn new(io: ChannelIo, options: ClientOptions) -> Self {
        let ChannelIo { incoming, outgoing } = io;
        let streams: StreamMap = Arc::default();
        let reader = tokio::spawn(read(incoming, streams.clone()));
        Self {
            shared: Arc::new(Shared {
                out: outgoing,
                streams,
                next_id: AtomicU64::new(0),
                options,
                reader: reader.abort_handle(),
            }),
        }
    }

    /// Sends one raw data-channel message (tests: malformed frames, hand-made streams).
    pub async fn send_raw(&self, frame: Bytes) -> bool {
        self.shared.out.send(frame).await.is_ok()
    }

    /// Streams still waiting for their end.
    pub fn open_streams(&self) -> usize {
        self.shared.streams.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Sends one call and returns its response (the body streams).
    async fn exchange(shared: Arc<Shared>, req: http::Request<Body>) -> http::Response<Body> {
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::channel(RESPONSE_QUEUE);
        if let Ok(mut streams) = shared.streams.lock() {
            streams.insert(id, tx);
        }
        let mut guard = StreamGuard {
            id,
            shared: shared.clone(),
            pump: None,
            armed: true,
        };
        let (parts, body) = req.into_parts();
        let timeout = parts
            .headers
            .get("grpc-timeout")
            .and_then(crate::body::parse_grpc_timeout)
            .and_then(|d| prost_types::Duration::try_from(d).ok());
        let headers = pb::RequestHeaders {
            method: parts.uri.path().to_owned(),
            metadata: Some(wire::to_metadata(&parts.headers)),
            timeout,
        };
        let frame = wire::request(id, pb::request::Type::Headers(headers));
        if shared.out.send(frame).await.is_err() {
            return gone();
        }
        let pump = tokio::spawn(pump(id, shared.out.clone(), body, shared.options));
        guard.pump = Some(pump.abort_handle());
        let mut headers = HeaderMap::new();
        match rx.recv().await {
            Some(pb::response::Type::Headers(h)) => {
                wire::from_metadata(h.metadata.as_ref(), &mut headers);
            }
            Some(pb::response::Type::Trailers(t)) => {
                guard.armed = false;
                return trailers_only(&t);
            }
            Some(pb::response::Type::Message(_)) => {
                debug!(stream = id, "message before headers");
            }
            None => return gone(),
        }
        let body = ResponseBody {
            rx,
            reassembly: Reassembly::default(),
            pending: None,
            guard,
        };
        let mut resp = http::Response::new(Body::new(body));
        *resp.headers_mut() = headers;
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        resp
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl tower::Service<http::Request<Body>> for WebRtcClient {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let shared = self.shared.clone();
        Box::pin(async move { Ok(Self::exchange(shared, req).await) })
    }
}

fn gone() -> http::Response<Body> {
    WebRtcError::PeerGone.to_status().into_http()
}

fn trailers_only(t: &pb::ResponseTrailers) -> http::Response<Body> {
    let mut resp = http::Response::new(Body::empty());
    *resp.headers_mut() = wire::from_trailers(t);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    resp
}

/// Routes each response frame to its stream; when the peer goes, every stream ends.
async fn read(mut incoming: mpsc::Receiver<Bytes>, streams: StreamMap) {
    while let Some(frame) = incoming.recv().await {
        let Ok(resp) = pb::Response::decode(frame) else {
            debug!("undecodable response frame; ignored");
            continue;
        };
        let (Some(pb::Stream { id }), Some(kind)) = (resp.stream, resp.r#type) else {
            continue;
        };
        let end = matches!(kind, pb::response::Type::Trailers(_));
        let tx = streams.lock().ok().and_then(|m| m.get(&id).cloned());
        // Unknown ids (reset or finished streams) are dropped, like the SDKs do.
        if let Some(tx) = tx {
            let _ = tx.send(kind).await;
        }
        if end && let Ok(mut m) = streams.lock() {
            m.remove(&id);
        }
    }
    if let Ok(mut m) = streams.lock() {
        m.clear();
    }
}

/// Sends a request body as message packets, then `eos`.
async fn pump(id: u64, out: mpsc::Sender<Bytes>, mut body: Body, options: ClientOptions) {
    let mut deframer = Deframer::default();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            break;
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        deframer.push(&data);
        while let Some(message) = deframer.next_message() {
            for packet in wire::packets(message.data) {
                let msg = pb::RequestMessage {
                    has_message: true,
                    packet_message: Some(packet),
                    eos: false,
                };
                if out
                    .send(wire::request(id, pb::request::Type::Message(msg)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
    if options.send_eos {
        let msg = pb::RequestMessage {
            has_message: false,
            packet_message: None,
            eos: true,
        };
        let _ = out
            .send(wire::request(id, pb::request::Type::Message(msg)))
            .await;
    }
}

/// Resets the stream unless it ended: the call or its response was dropped early.
struct StreamGuard {
    id: u64,
    shared: Arc<Shared>,
    pump: Option<AbortHandle>,
    armed: bool,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if let Some(pump) = &self.pump {
            pump.abort();
        }
        let open = self
            .shared
            .streams
            .lock()
            .ok()
            .and_then(|mut m| m.remove(&self.id))
            .is_some();
        if self.armed && open {
            let frame = wire::request(self.id, pb::request::Type::RstStream(true));
            if self.shared.out.try_send(frame.clone()).is_err() {
                let out = self.shared.out.clone();
                tokio::spawn(async move {
                    let _ = out.send(frame).await;
                });
            }
        }
    }
}

/// A response body fed by the stream's frames.
struct ResponseBody {
    rx: mpsc::Receiver<pb::response::Type>,
    reassembly: Reassembly,
    pending: Option<Bytes>,
    guard: StreamGuard,
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        if let Some(data) = self.pending.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if !self.guard.armed {
            return Poll::Ready(None);
        }
        loop {
            let kind = match self.rx.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(kind)) => kind,
                Poll::Ready(None) => {
                    self.guard.armed = false;
                    return Poll::Ready(Some(Err(WebRtcError::PeerGone.to_status())));
                }
            };
            match kind {
                pb::response::Type::Message(m) => {
                    let Some(packet) = m.packet_message else {
                        continue;
                    };
                    match self.reassembly.push(packet) {
                        Ok(Some(message)) => {
                            let header = wire::frame_header(message.len());
                            self.pending = Some(message);
                            return Poll::Ready(Some(Ok(Frame::data(header))));
                        }
                        Ok(None) => continue,
                        Err(wire::TooLarge) => {
                            let too_large = WebRtcError::MessageTooLarge(wire::MAX_MESSAGE);
                            return Poll::Ready(Some(Err(too_large.to_status())));
                        }
                    }
                }
                pb::response::Type::Trailers(t) => {
                    self.guard.armed = false;
                    return Poll::Ready(Some(Ok(Frame::trailers(wire::from_trailers(&t)))));
                }
                pb::response::Type::Headers(_) => continue,
            }
        }
    }
}

// === dial ===

/// The SDK caller flow against a gateway's signaling (on `channel`, which carries auth):
/// `OptionalWebRTCConfig`, an offer from `endpoint`, `Call`, candidates, `CallUpdate{done}`.
/// Every call carries `rpc-host: host`.
pub async fn dial(
    endpoint: &Endpoint,
    channel: tonic::transport::Channel,
    host: &str,
    token: Option<&str>,
    timeout: Duration,
) -> Result<WebRtcClient, DialError> {
    use pb::signaling_service_client::SignalingServiceClient;
    let md = |mut req: tonic::Request<()>| {
        if let Ok(v) = host.parse() {
            req.metadata_mut().insert("rpc-host", v);
        }
        if let Some(Ok(v)) = token.map(|t| format!("Bearer {t}").parse()) {
            req.metadata_mut().insert("authorization", v);
        }
        Ok(req)
    };
    let mut client = SignalingServiceClient::with_interceptor(channel, md);
    match client
        .optional_web_rtc_config(pb::OptionalWebRtcConfigRequest {})
        .await
    {
        Ok(_) => {}
        Err(s) if s.code() == tonic::Code::Unimplemented => {}
        Err(s) => return Err(s.into()),
    }
    let offering = endpoint.offer()?;
    let peer = offering.peer.clone();
    let call = pb::CallRequest {
        sdp: encode_sdp("offer", &offering.offer_sdp),
        disable_trickle: false,
    };
    let mut answers = client.call(call).await?.into_inner();
    let first = answers
        .message()
        .await?
        .ok_or_else(|| DialError::Exchange("Call ended before init".into()))?;
    let Some(pb::call_response::Stage::Init(init)) = first.stage else {
        return Err(DialError::Exchange(
            "first Call response is not init".into(),
        ));
    };
    let answer = decode_sdp(&init.sdp, "answer").map_err(|e| DialError::Exchange(e.to_string()))?;
    let opening = offering.answered(&answer)?;
    let uuid = first.uuid;
    // Our candidates are in the offer; tell the answerer we are done gathering.
    client
        .call_update(pb::CallUpdateRequest {
            uuid: uuid.clone(),
            update: Some(pb::call_update_request::Update::Done(true)),
        })
        .await?;
    let exchange = async {
        while let Some(resp) = answers.message().await? {
            if resp.uuid != uuid {
                return Err(DialError::Exchange("uuid changed mid-call".into()));
            }
            if let Some(pb::call_response::Stage::Update(u)) = resp.stage
                && let Some(c) = u.candidate
            {
                peer.add_remote_candidate(&c.candidate)?;
            }
        }
        Ok::<(), DialError>(())
    };
    let (exchanged, opened) =
        tokio::time::timeout(timeout, async { tokio::join!(exchange, opening.wait()) })
            .await
            .map_err(|_| DialError::Transport(TransportError::Timeout(timeout)))?;
    exchanged?;
    Ok(WebRtcClient::new(opened?, ClientOptions::default()))
}
