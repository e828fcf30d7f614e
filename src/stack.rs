//! The call stack: every ingress (h2/h2c gRPC, gRPC-Web after conversion) ends up here as one
//! standard gRPC `http::Request`, and this is the one place its phases run, in order:
//!
//! ```text
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
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use http::header::{self, HeaderName, HeaderValue};
use tracing::{debug, info};

use crate::body::{
    ForwardBody, ResponseBody, StreamRewrite, parse_grpc_timeout, read_first_message,
};
use crate::config::Settings;
use crate::error::{Fault, GatewayError};
use crate::pool::{Part, Pool};
use crate::robot::FleetRobot;
use crate::route::frame;
use crate::route::method::service_of;
use crate::route::{MethodKind, classify};

type Body = tonic::body::Body;

/// Client headers never sent to a part: hop-by-hop headers of HTTP/1.1 (gRPC-Web), a length
/// the rewrite may change, and the client's session id, which only the gateway can validate.
const DROPPED_HEADERS: [HeaderName; 7] = [
    header::HOST,
    header::CONNECTION,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("viam-sid"),
];

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
    default_timeout: Duration,
    max_message_size: usize,
}

impl CallStack {
    /// Builds the stack over a started pool.
    pub fn new(pool: Arc<Pool>, settings: &Settings) -> Self {
        let robot = FleetRobot::new(pool.clone());
        Self {
            inner: Arc::new(Shared {
                pool,
                robot,
                default_timeout: settings.default_timeout,
                max_message_size: settings.max_message_size,
            }),
        }
    }

    /// The pool behind the stack.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.inner.pool
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
        let shared = self.inner.clone();
        Box::pin(async move { Ok(shared.handle(req).await) })
    }
}

impl Shared {
    async fn handle(&self, req: http::Request<Body>) -> http::Response<Body> {
        let path = req.uri().path().to_owned();
        let result = match classify(&path) {
            MethodKind::Local(method) => self.robot.answer(method, req).await,
            MethodKind::MainPart => self.forward_to_main(req).await,
            MethodKind::ByName(field) => self.forward_by_name(req, &path, field).await,
            MethodKind::Unimplemented => Err(GatewayError::Unimplemented(format!(
                "{path} is not served by this gateway"
            ))),
        };
        result.unwrap_or_else(|err| {
            let (code, fault) = err.code_and_fault();
            match fault {
                Fault::Client => debug!(method = %path, ?code, error = %err, "call rejected"),
                Fault::Gateway | Fault::Part => {
                    info!(method = %path, ?code, error = %err, "call failed")
                }
            }
            err.to_status().into_http()
        })
    }

    async fn forward_to_main(
        &self,
        req: http::Request<Body>,
    ) -> Result<http::Response<Body>, GatewayError> {
        let table = self.pool.table();
        let main = table.main().ok_or_else(|| {
            GatewayError::Unimplemented(format!(
                "{} needs a main part; none is configured",
                req.uri().path()
            ))
        })?;
        drop(table);
        let part = self.pool.parts()[main].clone();
        let permit = part.admit()?;
        self.send(&part, req, permit).await
    }

    async fn forward_by_name(
        &self,
        req: http::Request<Body>,
        path: &str,
        field: &'static [u32],
    ) -> Result<http::Response<Body>, GatewayError> {
        let (parts, mut body) = req.into_parts();
        let first = read_first_message(&mut body, self.max_message_size)
            .await?
            .ok_or_else(|| GatewayError::MissingName {
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
        let route = self.pool.table().resolve(name, service_of(path))?;
        let part = self.pool.parts()[route.part].clone();
        let permit = part.admit()?;

        let (segments, len) = frame::strip_name(&first.message, field, route.strip)
            .map_err(|e| GatewayError::MalformedFrame(frame_error_text(e)))?;
        let queued = frame::frame_segments(segments, len);
        let rewrite = (route.strip > 0).then(|| StreamRewrite::new(field, name, route.strip));
        let forward = ForwardBody::new(queued, first.rest, body, first.trailers, rewrite);
        let req = http::Request::from_parts(parts, Body::new(forward));
        self.send(&part, req, permit).await
    }

    /// Sends a request to a part and wires its response back, honouring the client's deadline.
    async fn send(
        &self,
        part: &Arc<Part>,
        mut req: http::Request<Body>,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<http::Response<Body>, GatewayError> {
        let headers = req.headers_mut();
        for name in &DROPPED_HEADERS {
            headers.remove(name);
        }
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        let client_deadline = headers.get("grpc-timeout").and_then(parse_grpc_timeout);
        part.target(&mut req);

        let wait = client_deadline.unwrap_or(self.default_timeout);
        let started = tokio::time::Instant::now();
        let resp = tokio::time::timeout(wait, part.send(req))
            .await
            .map_err(|_| GatewayError::DeadlineExceeded {
                part: part.name().to_owned(),
            })??;
        let body_deadline =
            client_deadline.map(|d| Box::pin(tokio::time::sleep_until(started + d)));
        Ok(resp.map(|incoming| {
            Body::new(ResponseBody::new(
                incoming,
                permit,
                body_deadline,
                part.name().into(),
            ))
        }))
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
