//! The call stack: every ingress (h2/h2c gRPC, gRPC-Web after conversion) ends up here as one
//! standard gRPC `http::Request`, and this is the one place its phases run, in order:
//!
//! ```text
//! metrics    outermost: every call is counted, rejected ones too (ends recorded at trailers)
//! classify   path -> answered here | main part | routed by name | unimplemented
//! route      read the first message's name (wire level), resolve it to a part, pop the prefix
//! admit      the part's concurrency slot (shed with RESOURCE_EXHAUSTED when full)
//! forward    sanitize headers, send on the part's pooled connection, stream both ways
//! recover    any GatewayError becomes a trailers-only gRPC status (error.rs has the table)
//! ```
//!
//! The phases are plain async functions rather than one tower layer each: a call then costs one
//! boxed future instead of one per layer, and the order is still readable top to bottom.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use http::header::{self, HeaderName, HeaderValue};
use tracing::{debug, info};

use crate::auth::{Auth, ChannelPrincipal, PeerAddr, Principal};
use crate::body::{
    BufferBudget, CallSlot, ClientId, ForwardBody, MeteredBody, ReplayWatch, ResponseBody,
    StreamRewrite, parse_grpc_timeout, read_first_message_routed,
};
use crate::config::Settings;
use crate::error::{Fault, GatewayError};
use crate::metrics::{CallGuard, MethodId, grpc_status};
use crate::proto::wire::SESSION_HEADER;
use crate::robot::FleetRobot;
use crate::robot::sessions::Sessions;
use crate::route::frame;
use crate::route::method::LocalMethod;
use crate::route::method::service_of;
use crate::route::{MethodKind, classify};
use crate::upstream::pool::{Part, Pool};
use runtime::deadline::Deadlines;

type Body = tonic::body::Body;

/// A service the gateway answers itself from a layer above the stack (WebRTC signaling, in
/// `ingress`): handed to the stack at start-up, so the stack never imports it.
pub trait LocalService: Send + Sync + 'static {
    /// Answers one call; `stack` serves the calls it makes in turn (a WebRTC peer's streams).
    fn serve(
        self: Arc<Self>,
        req: http::Request<Body>,
        principal: Principal,
        stack: CallStack,
    ) -> Pin<Box<dyn Future<Output = http::Response<Body>> + Send>>;
}

/// Client headers never sent to a part: the client's token (the gateway presents its own), hop-by-hop
/// headers of HTTP/1.1 (gRPC-Web), and a length the rewrite may change. The client's session id
/// (`viam-sid`) is not in this list on purpose: the forward paths remove it themselves and put
/// the gateway's own session with the part in its place on monitored calls (`session`).
static DROPPED_HEADERS: [HeaderName; 7] = [
    header::AUTHORIZATION,
    header::HOST,
    header::CONNECTION,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
];

/// Whether `name` is one of [`DROPPED_HEADERS`]: one match on the name's bytes (dispatched on
/// its length) instead of seven comparisons for every header of every call.
fn is_dropped(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "authorization"
            | "host"
            | "connection"
            | "content-length"
            | "transfer-encoding"
            | "upgrade"
            | "keep-alive"
    )
}

/// `grpc-timeout`, pre-parsed (a `&str` lookup parses the name on every call).
const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// The shared call stack, cheap to clone (one per connection).
#[derive(Clone)]
pub struct CallStack {
    inner: Arc<Shared>,
}

/// What every call can reach.
pub struct Shared {
    /// The parts and their route table.
    pub pool: Arc<Pool>,
    /// Fleet-wide RobotService answers.
    pub robot: FleetRobot,
    /// Client sessions and the gateway's own sessions with the parts.
    pub sessions: Arc<Sessions>,
    /// Milliseconds; reloadable.
    default_timeout_ms: AtomicU64,
    /// The default timeout's deadlines: a coarse table, not a tokio timer per call (see
    /// `runtime::deadline`).
    deadlines: Arc<Deadlines>,
    /// Reloadable.
    max_message_size: AtomicUsize,
    /// Bytes of unfinished first messages held while their names are read (read at start).
    buffers: BufferBudget,
    auth: Option<Arc<Auth>>,
    /// WebRTC signaling; unset: signaling calls are UNIMPLEMENTED (clients fall back to direct).
    signaling: OnceLock<Arc<dyn LocalService>>,
}

impl CallStack {
    /// Builds the stack over a started pool; `auth` is `None` when clients need no credentials.
    pub fn new(pool: Arc<Pool>, settings: &Settings, auth: Option<Arc<Auth>>) -> Self {
        let sessions = Sessions::start(pool.clone());
        let robot = FleetRobot::new(pool.clone(), sessions.clone());
        let deadlines = Deadlines::new(pool.lanes(), settings.default_timeout);
        Self {
            inner: Arc::new(Shared {
                pool,
                robot,
                sessions,
                default_timeout_ms: AtomicU64::new(millis(settings.default_timeout)),
                deadlines,
                max_message_size: AtomicUsize::new(settings.max_message_size),
                buffers: BufferBudget::new(
                    settings.max_buffered_per_connection,
                    settings.max_buffered_total,
                ),
                auth,
                signaling: OnceLock::new(),
            }),
        }
    }

    /// Serves `SignalingService` with `signaling` from now on (set once, at start).
    pub fn set_signaling(&self, signaling: Arc<dyn LocalService>) {
        let _ = self.inner.signaling.set(signaling);
    }

    /// Serves one call from the client at `peer`: what `Service::call` does, without boxing
    /// the future (the front door's own future is boxed already). Not an `async fn`: the call's
    /// future is `handle`'s own, with no layer around it that would copy the request again.
    pub fn serve(
        &self,
        req: http::Request<Body>,
        peer: SocketAddr,
    ) -> impl Future<Output = http::Response<Body>> + Send + use<> {
        self.inner.clone().handle(req, Some(peer))
    }

    /// The pool behind the stack.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.inner.pool
    }

    /// Applies the reloadable call settings (default deadline, message size limit).
    pub fn apply(&self, settings: &Settings) {
        let inner = &self.inner;
        inner
            .default_timeout_ms
            .store(millis(settings.default_timeout), Ordering::Relaxed);
        inner.deadlines.set_timeout(settings.default_timeout);
        inner
            .max_message_size
            .store(settings.max_message_size, Ordering::Relaxed);
    }
}

/// Where a call comes from: the client's connection (None over WebRTC), and whose share of a
/// part's call slots it takes.
#[derive(Debug, Clone, Copy)]
struct Caller {
    peer: Option<SocketAddr>,
    client: Option<ClientId>,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// What [`Shared::dispatch`] answers with: a part's response body, metered in place (one box
/// per call), or a body the gateway made (already boxed).
#[expect(
    clippy::large_enum_variant,
    reason = "the large variant is the common one; boxing it would add the allocation this saves"
)]
enum Answer {
    Part(http::Response<ResponseBody>),
    Here(http::Response<Body>),
}

impl Answer {
    fn headers(&self) -> &http::HeaderMap {
        match self {
            Answer::Part(resp) => resp.headers(),
            Answer::Here(resp) => resp.headers(),
        }
    }
}

/// One call as the metrics see it: what was called, since when, and (once routed) its guard.
struct Call {
    method: MethodId,
    path: Arc<str>,
    started: Instant,
    guard: Option<CallGuard>,
}

impl Call {
    /// The call reached a part: counted as started there and in flight until its trailers.
    fn routed(&mut self, part: &Part) -> &CallGuard {
        let path = self.path.clone();
        self.guard
            .insert(part.metrics().start(self.method, path, self.started))
    }
}

impl tower::Service<http::Request<Body>> for CallStack {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        Box::pin(self.inner.clone().handle(req, None).map(Ok))
    }
}

impl Shared {
    /// `peer`: the client's address, when the request does not carry it already ([`PeerAddr`]
    /// is added only for the calls answered here, which are the ones that read it).
    async fn handle(
        self: Arc<Self>,
        req: http::Request<Body>,
        peer: Option<SocketAddr>,
    ) -> http::Response<Body> {
        let metrics = self.pool.metrics();
        let methods = metrics.methods();
        let method = methods.id(req.uri().path());
        let path = methods
            .path(method)
            .unwrap_or_else(|| req.uri().path().into());
        let mut call = Call {
            method,
            path: path.clone(),
            started: Instant::now(),
            guard: None,
        };
        match self.dispatch(req, &path, &mut call, peer).await {
            Ok(answer) => {
                let header_code = grpc_status(answer.headers());
                let guard = match call.guard {
                    Some(guard) => guard,
                    None => metrics.no_part().start(call.method, path, call.started),
                };
                match answer {
                    Answer::Part(resp) => {
                        resp.map(|body| Body::new(MeteredBody::new(body, guard, header_code)))
                    }
                    Answer::Here(resp) => {
                        resp.map(|body| Body::new(MeteredBody::new(body, guard, header_code)))
                    }
                }
            }
            Err(err) => self.failed(err, call),
        }
    }

    /// Logs and counts a call the gateway ended itself, and answers it trailers-only.
    fn failed(&self, err: GatewayError, call: Call) -> http::Response<Body> {
        let (code, fault) = err.code_and_fault();
        let metrics = self.pool.metrics();
        let part = match &call.guard {
            Some(guard) => guard.part(),
            None => metrics.no_part().name(),
        };
        match fault {
            Fault::Client => {
                debug!(part = %part, method = %call.path, ?code, error = %err, "call rejected")
            }
            Fault::Gateway | Fault::Part => {
                info!(part = %part, method = %call.path, ?code, error = %err, "call failed")
            }
        }
        metrics.rejected(part, &err);
        match call.guard {
            Some(guard) => guard.finish(code),
            None => metrics.no_part().record(call.method, code, call.started),
        }
        err.to_status().into_http()
    }

    /// auth, then classify: who is calling, then what the call is.
    async fn dispatch(
        self: &Arc<Self>,
        mut req: http::Request<Body>,
        path: &str,
        call: &mut Call,
        peer: Option<SocketAddr>,
    ) -> Result<Answer, GatewayError> {
        let kind = classify(path);
        if let (MethodKind::Local(_), Some(peer)) = (kind, peer) {
            req.extensions_mut().insert(PeerAddr(peer));
        }
        // A WebRTC stream carries the identity its signaling call was authenticated with (no
        // token per call, like goutils). Only the data-channel server sets this extension;
        // requests from the listener start with none but `PeerAddr`.
        let channel = req
            .extensions()
            .get::<ChannelPrincipal>()
            .map(|c| c.0.clone());
        let principal = match (&self.auth, kind, channel) {
            (_, MethodKind::Local(LocalMethod::Authenticate), _) => {
                return Box::pin(self.authenticate(req)).await.map(Answer::Here);
            }
            (auth, _, Some(principal)) => {
                if auth.is_some() {
                    self.pool.metrics().auth_result(true, "webrtc");
                }
                principal
            }
            (None, _, None) | (_, MethodKind::Local(LocalMethod::HealthCheck), None) => {
                Principal::anonymous()
            }
            (Some(auth), _, None) => {
                let verified = auth.verify(req.headers());
                let metrics = self.pool.metrics();
                match &verified {
                    Ok(_) => metrics.auth_result(true, "token"),
                    Err(err) => metrics.auth_result(false, err.auth_reason()),
                }
                verified?
            }
        };
        // Whose share of a part's call slots the call takes (`gateway.max_calls_per_client`).
        let client = match (&principal.entity, peer) {
            (Some(entity), _) => Some(ClientId::entity(entity)),
            (None, Some(peer)) => Some(ClientId::addr(peer.ip())),
            (None, None) => None,
        };
        match kind {
            MethodKind::Local(method) => Box::pin(self.robot.answer(method, req, &principal))
                .await
                .map(Answer::Here),
            MethodKind::MainPart => self
                .forward_to_main(req, &principal, call, client)
                .await
                .map(Answer::Part),
            MethodKind::ByName(field) => self
                .forward_by_name(req, path, field, &principal, call, Caller { peer, client })
                .await
                .map(Answer::Part),
            MethodKind::Signaling => match self.signaling.get() {
                Some(signaling) => {
                    let stack = CallStack {
                        inner: self.clone(),
                    };
                    let answer = signaling.clone().serve(req, principal, stack).await;
                    Ok(Answer::Here(answer))
                }
                None => Err(GatewayError::Unimplemented(
                    "WebRTC is not enabled on this gateway".into(),
                )),
            },
            MethodKind::Unimplemented => Err(GatewayError::Unimplemented(format!(
                "{path} is not served by this gateway"
            ))),
        }
    }

    /// `AuthService/Authenticate`; UNIMPLEMENTED without an `auth` block, like viam-server.
    async fn authenticate(
        &self,
        req: http::Request<Body>,
    ) -> Result<http::Response<Body>, GatewayError> {
        let Some(auth) = &self.auth else {
            return Err(GatewayError::Unimplemented(
                "authentication is not enabled on this gateway".into(),
            ));
        };
        let peer = req.extensions().get::<PeerAddr>().map(|p| p.0.ip());
        let (parts, body) = req.into_parts();
        let request: crate::proto::rpc::v1::AuthenticateRequest =
            crate::robot::decode(body).await?;
        let kind = match request.credentials.as_ref().map(|c| c.r#type.as_str()) {
            Some(crate::auth::API_KEY) => "api_key",
            Some(crate::auth::LOCATION_SECRET) => "location_secret",
            _ => "other",
        };
        let answer = auth.authenticate(&parts.headers, peer, request);
        let reason = match &answer {
            Ok(_) => kind,
            Err(err) => err.auth_reason(),
        };
        self.pool.metrics().auth_result(answer.is_ok(), reason);
        Ok(crate::robot::reply(&answer?))
    }

    async fn forward_to_main(
        &self,
        mut req: http::Request<Body>,
        principal: &Principal,
        call: &mut Call,
        client: Option<ClientId>,
    ) -> Result<http::Response<ResponseBody>, GatewayError> {
        let snapshot = self.pool.snapshot();
        let part = snapshot
            .table()
            .main()
            .and_then(|main| snapshot.part(main))
            .cloned()
            .ok_or_else(|| {
                GatewayError::Unimplemented(format!(
                    "{} needs a main part; none is configured",
                    req.uri().path()
                ))
            })?;
        drop(snapshot);
        let bytes = call.routed(&part).request_bytes();
        check_scope(principal, &part)?;
        req.headers_mut().remove(SESSION_HEADER);
        let permit = part.admit(client)?;
        let req = req.map(|body| {
            let counted = ForwardBody::new(Vec::new(), bytes::Bytes::new(), body, None, None);
            Body::new(counted.count_bytes(bytes))
        });
        self.send(&part, req, permit).await
    }

    async fn forward_by_name(
        &self,
        req: http::Request<Body>,
        path: &str,
        field: &'static [u32],
        principal: &Principal,
        call: &mut Call,
        Caller { peer, client }: Caller,
    ) -> Result<http::Response<ResponseBody>, GatewayError> {
        let (mut parts, mut body) = req.into_parts();
        let limit = self.max_message_size.load(Ordering::Relaxed);
        let mut held = self.buffers.hold(peer);
        let first =
            read_first_message_routed(&mut body, limit, field.first().copied(), Some(&mut held))
                .await?;
        // Complete: from here the part's flow control bounds what waits.
        drop(held);
        let first = first.ok_or_else(|| GatewayError::MissingName {
            method: path.to_owned(),
        })?;
        if first.header.compressed {
            return Err(GatewayError::Compressed);
        }
        let name = frame::read_name(&first.message, field)
            .map_err(|e| GatewayError::MalformedFrame(frame_error_text(e)))?
            .filter(|n| !n.is_empty())
            .ok_or_else(|| GatewayError::MissingName {
                method: path.to_owned(),
            })?;
        // Resolve and pick the part from one snapshot: a reload may renumber the parts.
        let snapshot = self.pool.snapshot();
        let table = snapshot.table();
        let allowed = |i: usize| {
            table
                .parts()
                .get(i)
                .is_some_and(|p| principal.may_reach(&p.name))
        };
        let methods = self.pool.metrics().methods();
        let service = methods
            .service(call.method)
            .unwrap_or_else(|| service_of(path));
        let route = table.resolve_within(name, service, &allowed)?;
        let part = snapshot.part(route.part).cloned().ok_or_else(|| {
            GatewayError::Internal(format!(
                "route to part #{} of a snapshot without it",
                route.part
            ))
        })?;
        drop(snapshot);
        let bytes = call.routed(&part).request_bytes();
        check_scope(principal, &part)?;
        // Validate the client's session, record what it drives, send ours instead (session.rs).
        let local = name.get(route.strip..).unwrap_or(name);
        self.sessions
            .on_call(path, &mut parts.headers, principal, &part, local)?;
        let permit = part.admit(client)?;

        // A large message's tail after the name was never copied; it follows the new head.
        let mut queued = frame::strip_framed(&first.message, field, route.strip, first.tail_len())
            .map_err(|e| GatewayError::MalformedFrame(frame_error_text(e)))?;
        queued.extend(first.tail);
        // A call whose whole body is in hand can be replayed if the part rejects our token.
        // A call to a part we hold credentials for may have to be sent again (see
        // send_replayable): keep the first message, and watch whether it is the whole request.
        let replay = (part.has_credentials() && first.rest.is_empty())
            .then(|| (queued.clone(), Arc::new(ReplayWatch::default())));
        // Later messages need rewriting only if there can be any (not for a finished unary call).
        let more = !first.rest.is_empty()
            || (first.trailers.is_none() && !http_body::Body::is_end_stream(&body));
        let rewrite = (route.strip > 0 && more).then(|| {
            // `name` borrows from the first message: a small one is kept as a slice of it (no
            // allocation); from a large one it is copied, so the stream does not pin the message.
            let original = if first.message.len() <= 4096 {
                first.message.slice_ref(name.as_bytes())
            } else {
                bytes::Bytes::copy_from_slice(name.as_bytes())
            };
            StreamRewrite::new(field, original, route.strip)
        });
        let mut forward =
            ForwardBody::new(queued, first.rest, body, first.trailers, rewrite).count_bytes(bytes);
        if let Some((_, watch)) = &replay {
            forward = forward.watch_replay(watch.clone());
        }
        let req = http::Request::from_parts(parts, Body::new(forward));
        // Boxed for parts we hold credentials for: the plain path's future stays small.
        let mut resp = if part.has_credentials() {
            Box::pin(self.send_replayable(&part, req, (permit, client), replay)).await?
        } else {
            self.send(&part, req, permit).await?
        };
        self.sessions.on_response(&part, resp.headers_mut());
        Ok(resp)
    }

    /// [`Shared::send`], retried once after re-authenticating when a part that needs our
    /// credentials answers UNAUTHENTICATED (it restarted and forgot our token), so the client
    /// never sees it. Calls that cannot be replayed still refresh the token for the next one.
    async fn send_replayable(
        &self,
        part: &Arc<Part>,
        req: http::Request<Body>,
        (permit, client): (CallSlot, Option<ClientId>),
        replay: Option<(Vec<bytes::Bytes>, Arc<ReplayWatch>)>,
    ) -> Result<http::Response<ResponseBody>, GatewayError> {
        if !part.has_credentials() {
            return self.send(part, req, permit).await;
        }
        let seen = part.token_count();
        let head = replay.map(|body| {
            (
                req.method().clone(),
                req.uri().clone(),
                req.headers().clone(),
                body,
            )
        });
        let resp = self.send(part, req, permit).await?;
        let rejected = resp
            .headers()
            .get(&crate::metrics::GRPC_STATUS)
            .is_some_and(|s| s == "16");
        if !rejected {
            return Ok(resp);
        }
        // Boxed, like the other rare branches: the future of every call is as large as its
        // largest branch, and it is moved (copied) whole when it starts.
        let refreshed = Box::pin(part.reauthenticate(seen)).await;
        // Only a request whose stream ended with nothing beyond the first message is complete.
        let (Some((method, uri, headers, (body, watch))), Ok(())) = (head, refreshed) else {
            return Ok(resp);
        };
        if !watch.replayable() {
            return Ok(resp);
        }
        tracing::debug!(part = %part.name(), "part rejected our token; re-authenticated and retrying");
        drop(resp);
        let permit = part.admit(client)?;
        let mut again = http::Request::new(Body::new(ForwardBody::new(
            body,
            bytes::Bytes::new(),
            Body::empty(),
            None,
            None,
        )));
        *again.method_mut() = method;
        *again.uri_mut() = uri;
        *again.headers_mut() = headers;
        self.send(part, again, permit).await
    }

    /// Sends a request to a part and wires its response back, honouring the client's deadline.
    async fn send(
        &self,
        part: &Arc<Part>,
        mut req: http::Request<Body>,
        permit: CallSlot,
    ) -> Result<http::Response<ResponseBody>, GatewayError> {
        let headers = req.headers_mut();
        // One pass over the few headers a call carries finds the (rarely present) ones to drop;
        // a `remove` per name would hash each of the seven every call.
        if headers.keys().any(is_dropped) {
            for name in &DROPPED_HEADERS {
                headers.remove(name);
            }
        }
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        let client_deadline = headers.get(&GRPC_TIMEOUT).and_then(parse_grpc_timeout);
        part.target(&mut req);

        let expired = || GatewayError::DeadlineExceeded {
            part: part.name().to_owned(),
        };
        // A client deadline is one timer for the whole call: it bounds the wait for the
        // response headers, then moves into the response body. Without one, the default
        // bounds only the headers.
        let (resp, body_deadline) = match client_deadline {
            Some(limit) => {
                let mut deadline = Box::pin(tokio::time::sleep(limit));
                let resp = tokio::select! {
                    biased;
                    resp = part.send(req) => resp?,
                    () = deadline.as_mut() => return Err(expired()),
                };
                (resp, Some(deadline))
            }
            None => {
                let default_timeout = self.default_timeout_ms.load(Ordering::Relaxed);
                let deadline = self.deadlines.after(Duration::from_millis(default_timeout));
                let resp = tokio::select! {
                    biased;
                    resp = part.send(req) => resp?,
                    () = deadline => return Err(expired()),
                };
                (resp, None)
            }
        };
        Ok(resp.map(|incoming| {
            ResponseBody::new(
                incoming,
                permit,
                body_deadline,
                part.metrics().name().clone(),
            )
            .close_on(part.closing())
        }))
    }
}

/// The route stage's scope check: an API key limited to some parts reaches only those.
fn check_scope(principal: &Principal, part: &Part) -> Result<(), GatewayError> {
    if principal.may_reach(part.name()) {
        Ok(())
    } else {
        Err(GatewayError::PermissionDenied(format!(
            "not allowed to reach part {}",
            part.name()
        )))
    }
}

fn frame_error_text(err: frame::FrameError) -> &'static str {
    match err {
        frame::FrameError::BadVarint => "truncated or overlong varint",
        frame::FrameError::Truncated => "field length past end of message",
        frame::FrameError::BadTag => "invalid protobuf tag",
        frame::FrameError::NotUtf8 => "resource name is not valid UTF-8",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_dropped_matches_the_dropped_list_exactly() {
        for name in &DROPPED_HEADERS {
            assert!(is_dropped(name), "{name}");
        }
        for kept in [
            header::CONTENT_TYPE,
            header::TE,
            header::USER_AGENT,
            GRPC_TIMEOUT,
            HeaderName::from_static("viam-sid"),
            HeaderName::from_static("hosts"),
        ] {
            assert!(!is_dropped(&kept), "{kept}");
        }
    }
}
