//! The answering side of gRPC over a data channel (goutils' `wrtc_server_*`): one task per
//! peer demultiplexes `Request` frames into per-stream state machines, and each stream becomes
//! one standard gRPC `http::Request` sent through the call stack, exactly like a direct call.
//!
//! Receives a peer's [`ChannelIo`], the call stack and the [`Principal`] signaling
//! authenticated; hands the stack requests tagged with [`ChannelPrincipal`] and writes each
//! response back as `headers`, `message` packets and `trailers`.
//!
//! Per stream: `headers` opens it (at most [`MAX_STREAMS`] at once), message packets are
//! reassembled (32 MiB limit) and fed to the request body through a bounded queue; the body is
//! half-closed after the first message for single-request methods (see [`cardinality`]), else
//! on `eos` (honoured only on a completing packet or a `has_message=false` frame); `rst_stream`
//! drops the downstream call. When the peer goes, every stream is dropped and the task waits
//! for all of them to end.
//!
//! Cardinality is settled at `headers`: built in or cached, at once; otherwise (a custom API
//! seen for the first time) a reflection lookup starts right then, through the same call stack
//! with the peer's identity (`FileContainingSymbol` for the service, which the gateway's fleet
//! reflection sends to the part that owns it). The call is dispatched without waiting for it:
//! messages flow as for a stream, and when the answer is "single" the body is half-closed then
//! (at once if the first message is already in). A failed or slow lookup leaves the stream
//! half-closing on `eos`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, header};
use http_body::Frame;
use http_body_util::BodyExt;
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tower::{Service, ServiceExt};
use tracing::debug;

use super::cardinality::{self, LookupError, MethodCache, Requests};
use super::channel::ChannelIo;
use super::wire::{self, Deframer, Reassembly};
use crate::auth::Principal;
use crate::error::WebRtcError;
use crate::metrics::WebRtcMetrics;
use crate::proto::grpc::reflection::v1alpha as reflection;
use crate::proto::rpc::webrtc::v1 as pb;

type Body = tonic::body::Body;
type BodyTx = mpsc::Sender<Result<Frame<Bytes>, tonic::Status>>;

/// Streams a peer may have open at once (the SDKs' own cap).
pub const MAX_STREAMS: usize = 256;
/// Request messages queued per stream before the peer's reader waits for the part.
const REQUEST_QUEUE: usize = 16;
/// How long the peer's reader waits on one stream's full queue before failing that stream, so
/// one part that stops reading cannot stall every other stream of the peer for long.
const STALL_LIMIT: Duration = Duration::from_secs(10);

pub use crate::auth::ChannelPrincipal;

/// Serves one peer until its channel ends; returns once every stream task has ended. Custom
/// APIs' cardinality is cached process-wide ([`MethodCache::global`]).
pub async fn serve<S>(io: ChannelIo, stack: S, principal: Principal, metrics: WebRtcMetrics)
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    serve_with_cache(io, stack, principal, metrics, MethodCache::global()).await;
}

/// [`serve`] with the given cache of custom APIs' cardinality.
pub async fn serve_with_cache<S>(
    io: ChannelIo,
    stack: S,
    principal: Principal,
    metrics: WebRtcMetrics,
    cache: Arc<MethodCache>,
) where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let ChannelIo {
        mut incoming,
        outgoing,
    } = io;
    let _peer = metrics.peer();
    let mut peer = Peer {
        stack,
        out: outgoing,
        principal,
        metrics,
        streams: HashMap::new(),
        tasks: JoinSet::new(),
        cache,
        lookups: JoinSet::new(),
        next_lookup: 0,
    };
    loop {
        tokio::select! {
            frame = incoming.recv() => match frame {
                Some(frame) => peer.on_frame(frame).await,
                None => break,
            },
            Some(done) = peer.tasks.join_next(), if !peer.tasks.is_empty() => {
                if let Ok(id) = done {
                    peer.streams.remove(&id);
                }
            }
            Some(done) = peer.lookups.join_next(), if !peer.lookups.is_empty() => {
                if let Ok((id, lookup, requests)) = done {
                    peer.on_resolved(id, lookup, requests);
                }
            }
        }
    }
    // The peer is gone: dropping the entries drops every body sender and stop sender, so each
    // stream task drops its downstream call (the part sees a cancellation) and ends.
    peer.streams.clear();
    while peer.tasks.join_next().await.is_some() {}
    debug!("WebRTC peer ended; all its streams are closed");
}

/// One peer's streams.
struct Peer<S> {
    stack: S,
    out: mpsc::Sender<Bytes>,
    principal: Principal,
    metrics: WebRtcMetrics,
    streams: HashMap<u64, Entry>,
    tasks: JoinSet<u64>,
    cache: Arc<MethodCache>,
    /// Cardinality lookups of this peer's streams: (stream, lookup, answer).
    lookups: JoinSet<(u64, u64, Requests)>,
    next_lookup: u64,
}

/// What the reader knows of a stream's cardinality.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cardinality {
    Known(Requests),
    /// Lookup number `n` is under way: messages flow as for a stream meanwhile.
    Pending(u64),
}

/// An open stream as the reader sees it.
struct Entry {
    /// The downstream request body; `None` once half-closed.
    body: Option<BodyTx>,
    reassembly: Reassembly,
    requests: Cardinality,
    /// Whether a complete message went downstream (a "single" answer then half-closes).
    forwarded: bool,
    /// Tells the stream task to fail with a status; dropped, it makes the task end quietly.
    stop: Option<oneshot::Sender<WebRtcError>>,
}

// === impl Peer ===

impl<S> Peer<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    async fn on_frame(&mut self, frame: Bytes) {
        let req = match pb::Request::decode(frame) {
            Ok(req) => req,
            Err(e) => return debug!(error = %e, "undecodable data-channel frame; ignored"),
        };
        // `Stream{id:0}` is present-but-empty on the wire; only a missing one is "no stream".
        let Some(pb::Stream { id }) = req.stream else {
            return debug!("data-channel frame without a stream; ignored");
        };
        match req.r#type {
            Some(pb::request::Type::Headers(headers)) => self.on_headers(id, headers).await,
            Some(pb::request::Type::Message(message)) => self.on_message(id, message).await,
            Some(pb::request::Type::RstStream(true)) => {
                // Dropping the entry drops the stop sender: the task drops the call, quietly.
                if self.streams.remove(&id).is_some() {
                    debug!(stream = id, "stream reset by the client");
                }
            }
            Some(pb::request::Type::RstStream(false)) | None => {
                debug!(stream = id, "data-channel frame without a type; ignored");
            }
        }
    }

    async fn on_headers(&mut self, id: u64, headers: pb::RequestHeaders) {
        if let Some(entry) = self.streams.get_mut(&id) {
            entry.body = None;
            if let Some(stop) = entry.stop.take() {
                let _ = stop.send(WebRtcError::HeadersTwice);
            }
            return;
        }
        if self.streams.len() >= MAX_STREAMS {
            debug!(stream = id, "stream limit reached; refused");
            return refuse(&self.out, id, WebRtcError::TooManyStreams(MAX_STREAMS)).await;
        }
        let (body_tx, body_rx) = mpsc::channel(REQUEST_QUEUE);
        let body = Body::new(http_body_util::StreamBody::new(
            tokio_stream::wrappers::ReceiverStream::new(body_rx),
        ));
        let req = match self.request(&headers, body) {
            Ok(req) => req,
            Err(err) => return refuse(&self.out, id, err).await,
        };
        let requests = match self.cache.known(&headers.method) {
            Some(requests) => Cardinality::Known(requests),
            None => Cardinality::Pending(self.look_up(id, &headers.method)),
        };
        let (stop_tx, stop_rx) = oneshot::channel();
        let call = self.stack.clone().oneshot(req);
        let out = self.out.clone();
        let guard = self.metrics.stream();
        self.tasks.spawn(async move {
            let _guard = guard;
            run_stream(id, out, call, stop_rx).await;
            id
        });
        self.streams.insert(
            id,
            Entry {
                body: Some(body_tx),
                reassembly: Reassembly::default(),
                requests,
                forwarded: false,
                stop: Some(stop_tx),
            },
        );
    }

    /// Starts learning `method`'s cardinality for stream `id`; returns the lookup's number.
    fn look_up(&mut self, id: u64, method: &str) -> u64 {
        let lookup = self.next_lookup;
        self.next_lookup += 1;
        let cache = self.cache.clone();
        let stack = self.stack.clone();
        let principal = self.principal.clone();
        let method = method.to_owned();
        self.lookups.spawn(async move {
            let requests = cache
                .resolve(&method, |service| reflect(stack, principal, service))
                .await;
            (id, lookup, requests)
        });
        lookup
    }

    /// A lookup answered: a single-request stream whose message is already in is half-closed.
    fn on_resolved(&mut self, id: u64, lookup: u64, requests: Requests) {
        let Some(entry) = self.streams.get_mut(&id) else {
            return;
        };
        if entry.requests != Cardinality::Pending(lookup) {
            return;
        }
        entry.requests = Cardinality::Known(requests);
        if requests == Requests::Single && entry.forwarded {
            entry.body = None;
        }
    }

    /// The stream as a standard gRPC request, tagged with the peer's principal.
    fn request(
        &self,
        headers: &pb::RequestHeaders,
        body: Body,
    ) -> Result<http::Request<Body>, WebRtcError> {
        let method = &headers.method;
        if !method.starts_with('/') || method[1..].split('/').count() != 2 {
            return Err(WebRtcError::BadHeaders(format!(
                "method {method:?} is not /package.Service/Method"
            )));
        }
        let mut req = http::Request::post(method.as_str())
            .body(body)
            .map_err(|_| WebRtcError::BadHeaders(format!("method {method:?} is not a path")))?;
        let map = req.headers_mut();
        wire::from_metadata(headers.metadata.as_ref(), map);
        map.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        map.insert(header::TE, HeaderValue::from_static("trailers"));
        let timeout = headers
            .timeout
            .and_then(|t| Duration::try_from(t).ok())
            .filter(|t| !t.is_zero());
        if let Some(timeout) = timeout
            && let Ok(value) = HeaderValue::from_str(&wire::grpc_timeout(timeout))
        {
            map.insert("grpc-timeout", value);
        }
        req.extensions_mut()
            .insert(ChannelPrincipal(self.principal.clone()));
        Ok(req)
    }

    async fn on_message(&mut self, id: u64, message: pb::RequestMessage) {
        let Some(entry) = self.streams.get_mut(&id) else {
            return debug!(
                stream = id,
                "message for an unknown stream (expected headers first); ignored"
            );
        };
        if !message.has_message {
            if message.eos {
                entry.body = None;
            }
            return;
        }
        let Some(packet) = message.packet_message else {
            return debug!(stream = id, "message without a packet; ignored");
        };
        let whole = match entry.reassembly.push(packet) {
            Ok(Some(whole)) => whole,
            Ok(None) => return,
            Err(wire::TooLarge) => {
                return self.fail(id, WebRtcError::MessageTooLarge(wire::MAX_MESSAGE));
            }
        };
        let half_close = message.eos || entry.requests == Cardinality::Known(Requests::Single);
        let Some(body) = entry.body.clone() else {
            return debug!(stream = id, "message after half-close; ignored");
        };
        entry.forwarded = true;
        if half_close {
            entry.body = None;
        }
        match send_message(&body, whole).await {
            Ok(()) => {}
            Err(Stall::Timeout) => self.fail(id, WebRtcError::Stalled),
            // The call no longer reads its body (it ended or failed): its answer says why.
            Err(Stall::Closed) => {
                if let Some(entry) = self.streams.get_mut(&id) {
                    entry.body = None;
                }
            }
        }
    }

    /// Ends one stream with an error status (sent by its task, after headers if needed).
    fn fail(&mut self, id: u64, err: WebRtcError) {
        debug!(stream = id, error = %err, "stream failed");
        if let Some(entry) = self.streams.get_mut(&id) {
            entry.body = None;
            if let Some(stop) = entry.stop.take() {
                let _ = stop.send(err);
            }
        }
    }
}

/// Asks the fleet, through the call stack and as the peer, for the file declaring `service`.
async fn reflect<S>(
    stack: S,
    principal: Principal,
    service: String,
) -> Result<Vec<Vec<u8>>, LookupError>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    use reflection::server_reflection_request::MessageRequest;
    use reflection::server_reflection_response::MessageResponse;
    let question = reflection::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(service.clone())),
    };
    let mut req = tonic::Request::new(tokio_stream::iter([question]));
    req.set_timeout(cardinality::LOOKUP_TIMEOUT);
    req.extensions_mut().insert(ChannelPrincipal(principal));
    let call = |e: tonic::Status| LookupError::Call(format!("{:?}: {}", e.code(), e.message()));
    let mut answers = reflection::server_reflection_client::ServerReflectionClient::new(stack)
        .server_reflection_info(req)
        .await
        .map_err(call)?
        .into_inner();
    let answer = answers
        .message()
        .await
        .map_err(call)?
        .ok_or_else(|| LookupError::Call("no answer".into()))?;
    match answer.message_response {
        Some(MessageResponse::FileDescriptorResponse(files)) => Ok(files.file_descriptor_proto),
        _ => Err(LookupError::NotFound(service)),
    }
}

enum Stall {
    Timeout,
    Closed,
}

/// Queues one message (header and payload as two frames: the payload is not copied).
async fn send_message(body: &BodyTx, message: Bytes) -> Result<(), Stall> {
    let send = async {
        body.send(Ok(Frame::data(wire::frame_header(message.len()))))
            .await?;
        body.send(Ok(Frame::data(message))).await
    };
    match tokio::time::timeout(STALL_LIMIT, send).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Stall::Closed),
        Err(_) => Err(Stall::Timeout),
    }
}

/// Answers a stream that never opened: headers, then trailers with the error.
async fn refuse(out: &mpsc::Sender<Bytes>, id: u64, err: WebRtcError) {
    let headers = pb::response::Type::Headers(pb::ResponseHeaders::default());
    if out.send(wire::response(id, headers)).await.is_ok() {
        let _ = out.send(error_trailers(id, &err)).await;
    }
}

fn error_trailers(id: u64, err: &WebRtcError) -> Bytes {
    let trailers = pb::ResponseTrailers {
        status: Some(wire::rpc_status(&err.to_status())),
        metadata: None,
    };
    wire::response(id, pb::response::Type::Trailers(trailers))
}

/// Runs one stream: the call, then its answer written back, unless told to stop first.
async fn run_stream(
    id: u64,
    out: mpsc::Sender<Bytes>,
    call: impl Future<Output = Result<http::Response<Body>, Infallible>>,
    mut stop: oneshot::Receiver<WebRtcError>,
) {
    let sent_headers = std::sync::atomic::AtomicBool::new(false);
    let failure = tokio::select! {
        biased;
        stopped = &mut stop => match stopped {
            Ok(err) => err,
            // Reset, or the peer is gone: drop the call without a word.
            Err(_) => return,
        },
        () = relay(id, &out, call, &sent_headers) => return,
    };
    let headers = pb::response::Type::Headers(pb::ResponseHeaders::default());
    if !sent_headers.load(std::sync::atomic::Ordering::Relaxed)
        && out.send(wire::response(id, headers)).await.is_err()
    {
        return;
    }
    let _ = out.send(error_trailers(id, &failure)).await;
}

/// Writes the call's response as `headers`, `message` packets and `trailers`. Stops quietly
/// when the peer is gone (a send fails).
async fn relay(
    id: u64,
    out: &mpsc::Sender<Bytes>,
    call: impl Future<Output = Result<http::Response<Body>, Infallible>>,
    sent_headers: &std::sync::atomic::AtomicBool,
) {
    let resp = match call.await {
        Ok(resp) => resp,
        Err(never) => match never {},
    };
    let (parts, mut body) = resp.into_parts();
    let send = |kind| out.send(wire::response(id, kind));
    let headers = pb::ResponseHeaders {
        metadata: Some(wire::to_metadata(&parts.headers)),
    };
    if send(pb::response::Type::Headers(headers)).await.is_err() {
        return;
    }
    sent_headers.store(true, std::sync::atomic::Ordering::Relaxed);
    if parts.headers.contains_key("grpc-status") {
        // Trailers-only answer.
        let trailers = wire::to_trailers(&parts.headers);
        let _ = send(pb::response::Type::Trailers(trailers)).await;
        return;
    }
    let mut deframer = Deframer::default();
    let trailers = loop {
        let frame = match body.frame().await {
            None => break None,
            Some(Ok(frame)) => frame,
            Some(Err(status)) => {
                let trailers = pb::ResponseTrailers {
                    status: Some(wire::rpc_status(&status)),
                    metadata: None,
                };
                let _ = send(pb::response::Type::Trailers(trailers)).await;
                return;
            }
        };
        let frame = match frame.into_data() {
            Ok(data) => {
                deframer.push(&data);
                None
            }
            Err(frame) => frame.into_trailers().ok(),
        };
        while let Some(message) = deframer.next_message() {
            if message.compressed {
                let _ = out
                    .send(error_trailers(id, &WebRtcError::CompressedResponse))
                    .await;
                return;
            }
            for packet in wire::packets(message.data) {
                let kind = pb::response::Type::Message(pb::ResponseMessage {
                    packet_message: Some(packet),
                });
                if send(kind).await.is_err() {
                    return;
                }
            }
        }
        if let Some(trailers) = frame {
            break Some(trailers);
        }
    };
    let trailers = match trailers {
        Some(trailers) if deframer.is_empty() => wire::to_trailers(&trailers),
        _ => pb::ResponseTrailers {
            status: Some(wire::rpc_status(
                &WebRtcError::TruncatedResponse.to_status(),
            )),
            metadata: None,
        },
    };
    let _ = send(pb::response::Type::Trailers(trailers)).await;
}
