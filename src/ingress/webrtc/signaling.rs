//! `proto.rpc.webrtc.v1.SignalingService` on the gateway's own port (goutils'
//! `WebRTCSignalingServer` with the gateway as the only answerer).
//!
//! Receives signaling calls the stack has already authenticated (the [`Principal`] and the
//! [`CallStack`] ride in the request's extensions); hands the transport the caller's offer and
//! candidates, streams back the answer and our candidates, and once the peer's data channel
//! opens hands it to [`server::serve`] with the caller's identity, so every call on it goes
//! through the same stack as a direct call.
//!
//! `Call` ends its stream when the exchange is over (data channel open, or failed): the TS SDK
//! waits for that end. The peer does not depend on the `Call` stream: a caller that drops it
//! early still gets its connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use futures_util::StreamExt;
use tonic::codegen::BoxStream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};
use tower::Service;
use tracing::{debug, info, warn};

use super::server;
use super::transport::{Endpoint, PeerHandle, TransportError};
use crate::auth::Principal;
use crate::config::{IceServer, Settings};
use crate::error::WebRtcError;
use crate::metrics::WebRtcMetrics;
use crate::proto::rpc::webrtc::v1 as pb;
use crate::stack::CallStack;

use pb::signaling_service_server::{SignalingService, SignalingServiceServer};

type Body = tonic::body::Body;

impl crate::stack::LocalService for Signaling {
    fn serve(
        self: Arc<Self>,
        req: http::Request<Body>,
        principal: Principal,
        stack: CallStack,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = http::Response<Body>> + Send>> {
        Box::pin(async move { Signaling::serve(&self, req, principal, stack).await })
    }
}

/// How long a call's uuid stays valid for `CallUpdate` after its exchange ended (late `done`
/// and candidates from the caller are accepted, not answered with errors).
const CALL_GRACE: Duration = Duration::from_secs(10);
/// goutils' limit of `rpc-host` values on `OptionalWebRTCConfig`.
const MAX_HOSTS: usize = 5;

/// The signaling service and the calls in progress.
pub struct Signaling {
    endpoint: Option<Endpoint>,
    hosts: Vec<String>,
    ice_servers: Vec<IceServer>,
    connect_timeout: Duration,
    calls: Mutex<HashMap<String, ActiveCall>>,
    metrics: WebRtcMetrics,
}

/// A call whose uuid `CallUpdate` accepts.
struct ActiveCall {
    peer: PeerHandle,
    /// Only the caller that made the offer may update it.
    entity: Option<String>,
}

/// What the signaling handlers need besides the request.
#[derive(Clone)]
struct Handler {
    signaling: Arc<Signaling>,
}

/// `{"type": "offer"|"answer", "sdp": "v=0..."}`, base64'd on the wire.
#[derive(serde::Deserialize, serde::Serialize)]
struct Description {
    #[serde(rename = "type")]
    kind: String,
    sdp: String,
}

// === impl Signaling ===

impl Signaling {
    /// Signaling over `endpoint` (`None`: the transport is not running; `Call` then answers
    /// UNIMPLEMENTED so SDKs fall back to direct gRPC). `hosts` are the accepted `rpc-host`s.
    pub fn new(
        endpoint: Option<Endpoint>,
        hosts: Vec<String>,
        ice_servers: Vec<IceServer>,
        connect_timeout: Duration,
        metrics: WebRtcMetrics,
    ) -> Arc<Self> {
        Arc::new(Self {
            endpoint,
            hosts,
            ice_servers,
            connect_timeout,
            calls: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    /// The `rpc-host` values a gateway accepts: `network.fqdn`, the listen address as written
    /// and as bound, `localhost:PORT` and `127.0.0.1:PORT` for a loopback listener, and
    /// `gateway.webrtc.hosts`.
    pub fn hosts_for(settings: &Settings, local: SocketAddr) -> Vec<String> {
        let mut hosts: Vec<String> = settings
            .webrtc
            .as_ref()
            .map(|w| w.hosts.clone())
            .unwrap_or_default();
        // A configured name without a port (`robot.example.com`) is accepted as written and
        // with the gateway's port, which is what an SDK sends when dialing `name:PORT`.
        let with_port: Vec<String> = hosts
            .iter()
            .filter(|h| !has_port(h))
            .map(|h| format!("{h}:{}", local.port()))
            .collect();
        hosts.extend(with_port);
        hosts.push(settings.bind_text.clone());
        hosts.push(local.to_string());
        if local.ip().is_loopback() {
            hosts.push(format!("localhost:{}", local.port()));
            hosts.push(format!("127.0.0.1:{}", local.port()));
        }
        hosts.sort();
        hosts.dedup();
        hosts
    }

    /// The transport endpoint, if running.
    pub fn endpoint(&self) -> Option<&Endpoint> {
        self.endpoint.as_ref()
    }

    /// Serves one authenticated signaling call.
    pub async fn serve(
        self: &Arc<Self>,
        mut req: http::Request<Body>,
        principal: Principal,
        stack: CallStack,
    ) -> http::Response<Body> {
        let method = method_label(req.uri().path());
        req.extensions_mut().insert(principal);
        req.extensions_mut().insert(stack);
        let mut service = SignalingServiceServer::new(Handler {
            signaling: self.clone(),
        });
        let resp = match service.call(req).await {
            Ok(resp) => resp,
            Err(never) => match never {},
        };
        let code = crate::metrics::grpc_status(resp.headers()).unwrap_or(tonic::Code::Ok);
        self.metrics.signaling(method, code);
        resp
    }

    /// Checks `rpc-host`: between `min` and `max` values, each one of ours.
    fn check_hosts(&self, md: &MetadataMap, max: usize) -> Result<(), WebRtcError> {
        let values: Vec<_> = md.get_all("rpc-host").iter().collect();
        if values.is_empty() || values.len() > max {
            return Err(WebRtcError::MissingHost);
        }
        for value in values {
            let host = value
                .to_str()
                .map_err(|_| WebRtcError::HostNotPreconfigured)?;
            if !self.hosts.iter().any(|h| h == host) {
                debug!(host = %host, "signaling for a host that is not ours");
                return Err(WebRtcError::HostNotPreconfigured);
            }
        }
        Ok(())
    }

    fn forget_later(self: &Arc<Self>, uuid: String) {
        let signaling = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(CALL_GRACE).await;
            if let Some(signaling) = signaling.upgrade()
                && let Ok(mut calls) = signaling.calls.lock()
            {
                calls.remove(&uuid);
            }
        });
    }

    /// Waits for the peer's data channel and serves it; reports the outcome to `Call`.
    async fn open(
        self: Arc<Self>,
        accepted_peer: PeerHandle,
        opening: super::transport::Opening,
        stack: CallStack,
        principal: Principal,
        uuid: String,
    ) -> Result<(), WebRtcError> {
        let limit = self.connect_timeout + Duration::from_secs(1);
        let outcome = match tokio::time::timeout(limit, opening.wait()).await {
            Ok(Ok(io)) => {
                info!(
                    peer = accepted_peer.id(),
                    entity = principal.entity.as_deref(),
                    "WebRTC peer connected"
                );
                let metrics = self.metrics.clone();
                tokio::spawn(server::serve(io, stack, principal, metrics));
                Ok(())
            }
            Ok(Err(e)) => Err(transport_error(e)),
            Err(_) => Err(WebRtcError::ConnectTimeout(self.connect_timeout)),
        };
        if let Err(e) = &outcome {
            debug!(peer = accepted_peer.id(), error = %e, "WebRTC peer did not connect");
            accepted_peer.close();
        }
        self.forget_later(uuid);
        outcome
    }
}

fn method_label(path: &str) -> &'static str {
    match path.rsplit('/').next().unwrap_or("") {
        "Call" => "Call",
        "CallUpdate" => "CallUpdate",
        "OptionalWebRTCConfig" => "OptionalWebRTCConfig",
        "Answer" => "Answer",
        "ReportConnectionMetadata" => "ReportConnectionMetadata",
        _ => "other",
    }
}

fn transport_error(err: TransportError) -> WebRtcError {
    match err {
        TransportError::InvalidSdp(e) => WebRtcError::InvalidOffer(e),
        TransportError::InvalidCandidate(e) => WebRtcError::InvalidCandidate(e),
        TransportError::Closed => WebRtcError::PeerClosed,
        TransportError::Timeout(d) => WebRtcError::ConnectTimeout(d),
        TransportError::TooManyPeers => WebRtcError::TooManyPeers,
        TransportError::Io(e) => {
            warn!(error = %e, "WebRTC transport I/O error");
            WebRtcError::Transport(e.to_string())
        }
    }
}

/// Decodes base64(JSON({type, sdp})) and checks the type.
pub fn decode_sdp(text: &str, expected: &str) -> Result<String, WebRtcError> {
    let bad = |why: &str| {
        WebRtcError::InvalidOffer(format!(
            "sdp must be base64 of JSON {{\"type\": \"{expected}\", \"sdp\": ...}}: {why}"
        ))
    };
    let json = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| bad("not base64"))?;
    let desc: Description = serde_json::from_slice(&json).map_err(|_| bad("not that JSON"))?;
    if desc.kind != expected {
        return Err(bad("wrong type"));
    }
    if desc.sdp.is_empty() {
        return Err(bad("empty sdp"));
    }
    Ok(desc.sdp)
}

/// Encodes SDP text as base64(JSON({type, sdp})).
pub fn encode_sdp(kind: &str, sdp: &str) -> String {
    let desc = Description {
        kind: kind.to_owned(),
        sdp: sdp.to_owned(),
    };
    let json = serde_json::to_vec(&desc).unwrap_or_default();
    base64::engine::general_purpose::STANDARD.encode(json)
}

/// A local candidate (`candidate:...`) as the proto; the data channel is the only m-line.
fn candidate(text: &str) -> pb::IceCandidate {
    pb::IceCandidate {
        candidate: text.trim_start_matches("a=").to_owned(),
        sdp_mid: Some("0".to_owned()),
        sdpm_line_index: Some(0),
        username_fragment: None,
    }
}

// === impl Handler ===

#[tonic::async_trait]
impl SignalingService for Handler {
    async fn call(
        &self,
        req: Request<pb::CallRequest>,
    ) -> Result<Response<BoxStream<pb::CallResponse>>, Status> {
        let sig = &self.signaling;
        sig.check_hosts(req.metadata(), 1)?;
        let principal = req.extensions().get::<Principal>().cloned();
        let stack = req.extensions().get::<CallStack>().cloned();
        let (Some(principal), Some(stack)) = (principal, stack) else {
            return Err(WebRtcError::Transport("signaling without its context".into()).into());
        };
        let call = req.into_inner();
        let offer = decode_sdp(&call.sdp, "offer")?;
        let endpoint = sig
            .endpoint
            .as_ref()
            .ok_or(WebRtcError::Unavailable("WebRTC transport is not running"))?;
        let accepted = endpoint.accept(&offer).map_err(transport_error)?;
        let uuid = uuid::Uuid::new_v4().to_string();
        if let Ok(mut calls) = sig.calls.lock() {
            calls.insert(
                uuid.clone(),
                ActiveCall {
                    peer: accepted.peer.clone(),
                    entity: principal.entity.clone(),
                },
            );
        }
        let mut first = vec![Ok(pb::CallResponse {
            uuid: uuid.clone(),
            stage: Some(pb::call_response::Stage::Init(pb::CallResponseInitStage {
                sdp: encode_sdp("answer", &accepted.answer_sdp),
            })),
        })];
        // Without trickle the candidates are in the answer already.
        if !call.disable_trickle {
            first.extend(accepted.candidates.iter().map(|c| {
                Ok(pb::CallResponse {
                    uuid: uuid.clone(),
                    stage: Some(pb::call_response::Stage::Update(
                        pb::CallResponseUpdateStage {
                            candidate: Some(candidate(c)),
                        },
                    )),
                })
            }));
        }
        // The peer lives in its own task: the Call stream only learns how the exchange ended.
        let opened =
            tokio::spawn(
                sig.clone()
                    .open(accepted.peer, accepted.opening, stack, principal, uuid),
            );
        let end = futures_util::stream::once(async move {
            match opened.await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(Err(Status::from(e))),
                Err(_) => Some(Err(
                    WebRtcError::Transport("peer task ended".into()).to_status()
                )),
            }
        })
        .filter_map(std::future::ready);
        Ok(Response::new(Box::pin(
            futures_util::stream::iter(first).chain(end),
        )))
    }

    async fn call_update(
        &self,
        req: Request<pb::CallUpdateRequest>,
    ) -> Result<Response<pb::CallUpdateResponse>, Status> {
        let sig = &self.signaling;
        sig.check_hosts(req.metadata(), 1)?;
        let entity = req
            .extensions()
            .get::<Principal>()
            .and_then(|p| p.entity.clone());
        let update = req.into_inner();
        let peer = sig.calls.lock().ok().and_then(|calls| {
            calls
                .get(&update.uuid)
                .filter(|c| c.entity == entity)
                .map(|c| c.peer.clone())
        });
        let peer = peer.ok_or_else(|| WebRtcError::UnknownCall(update.uuid.clone()))?;
        match update.update {
            Some(pb::call_update_request::Update::Candidate(c)) if !c.candidate.is_empty() => {
                peer.add_remote_candidate(&c.candidate)
                    .map_err(transport_error)?;
            }
            Some(pb::call_update_request::Update::Error(status)) => {
                debug!(code = status.code, "caller gave up on its WebRTC call");
                peer.close();
                if let Ok(mut calls) = sig.calls.lock() {
                    calls.remove(&update.uuid);
                }
            }
            // `done`, an end-of-candidates (empty) candidate, or nothing.
            _ => {}
        }
        Ok(Response::new(pb::CallUpdateResponse {}))
    }

    async fn answer(
        &self,
        _req: Request<tonic::Streaming<pb::AnswerResponse>>,
    ) -> Result<Response<BoxStream<pb::AnswerRequest>>, Status> {
        Err(WebRtcError::AnswerUnsupported.into())
    }

    async fn optional_web_rtc_config(
        &self,
        req: Request<pb::OptionalWebRtcConfigRequest>,
    ) -> Result<Response<pb::OptionalWebRtcConfigResponse>, Status> {
        let sig = &self.signaling;
        sig.check_hosts(req.metadata(), MAX_HOSTS)?;
        let additional_ice_servers = sig
            .ice_servers
            .iter()
            .map(|s| pb::IceServer {
                urls: s.urls.clone(),
                username: s.username.clone(),
                credential: s.credential.expose().to_owned(),
            })
            .collect();
        Ok(Response::new(pb::OptionalWebRtcConfigResponse {
            config: Some(pb::WebRtcConfig {
                additional_ice_servers,
                disable_trickle: false,
            }),
        }))
    }

    async fn report_connection_metadata(
        &self,
        _req: Request<pb::ReportConnectionMetadataRequest>,
    ) -> Result<Response<pb::ReportConnectionMetadataResponse>, Status> {
        Ok(Response::new(pb::ReportConnectionMetadataResponse {}))
    }
}

/// Whether a host string ends in `:PORT` (bracketed IPv6 literals included).
fn has_port(host: &str) -> bool {
    match host.rsplit_once(':') {
        Some((name, port)) => {
            port.parse::<u16>().is_ok() && (!name.contains(':') || name.ends_with(']'))
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdp_round_trip_and_garbage() {
        let text = encode_sdp("offer", "v=0\r\n");
        assert_eq!(decode_sdp(&text, "offer").unwrap(), "v=0\r\n");
        assert!(matches!(
            decode_sdp(&text, "answer"),
            Err(WebRtcError::InvalidOffer(_))
        ));
        for garbage in ["", "!!!", "bm90IGpzb24="] {
            assert!(decode_sdp(garbage, "offer").is_err(), "{garbage}");
        }
    }

    #[test]
    fn host_port_detection() {
        for (host, want) in [
            ("robot.example.com", false),
            ("robot.example.com:8080", true),
            ("127.0.0.1:0", true),
            ("[::1]:8080", true),
            ("::1", false),
            ("name:notaport", false),
        ] {
            assert_eq!(has_port(host), want, "{host}");
        }
    }
}
