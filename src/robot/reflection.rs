//! gRPC server reflection for the fleet (`grpc.reflection.v1alpha` and `v1`), so that clients
//! that discover APIs at run time (Go's `grpcreflect`, grpcurl) can look up custom APIs that
//! only one part knows.
//!
//! Receives the client's `ServerReflectionInfo` stream; hands back one answer per request:
//! `list_services` is the union over connected parts, `file_containing_symbol` goes to the part
//! that owns the symbol (by the proto services it reported), other lookups go to the main part
//! first and then to the others. No part answering becomes an `error_response` NOT_FOUND.
//!
//! Each question to a part is a short stream of its own (one request, one answer), asked in the
//! version the client used and, if the part does not implement that one, in the other.
//!
//! [`DescriptorIndex`] answers reflection from an encoded `FileDescriptorSet`; simulated parts
//! use it to serve reflection like a viam-server does.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use futures_util::{Stream, StreamExt};
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};
use tower::Service;
use tracing::debug;

use crate::proto::grpc::reflection::{v1, v1alpha};
pub use crate::proto::reflection::{
    DescriptorIndex, INVALID_ARGUMENT, NOT_FOUND, SERVICE_NAMES, convert, error_response,
};
use crate::route::PartResources;
use crate::upstream::pool::{PartState, Pool};

use v1::server_reflection_request::MessageRequest;
use v1::server_reflection_response::MessageResponse;

type Body = tonic::body::Body;

/// How long `list_services` waits for a part: a dead or slow part must not stall discovery.
const LIST_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one part may take over one lookup before the next part is asked.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// The two wire-identical versions of the reflection protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// `grpc.reflection.v1alpha` (what viam-server and most clients speak).
    V1Alpha,
    /// `grpc.reflection.v1`.
    V1,
}

impl Version {
    fn other(self) -> Self {
        match self {
            Self::V1Alpha => Self::V1,
            Self::V1 => Self::V1Alpha,
        }
    }
}

/// Answers one `ServerReflectionInfo` call (either version, told apart by path).
pub async fn serve(pool: Arc<Pool>, req: http::Request<Body>) -> http::Response<Body> {
    let fleet = FleetReflection { pool };
    let v1alpha_path = format!("/{}/", SERVICE_NAMES[0]);
    let result: Result<_, Infallible> = if req.uri().path().starts_with(&v1alpha_path) {
        v1alpha::server_reflection_server::ServerReflectionServer::new(fleet)
            .call(req)
            .await
    } else {
        v1::server_reflection_server::ServerReflectionServer::new(fleet)
            .call(req)
            .await
    };
    let Ok(resp) = result;
    resp
}

/// Whether a part's answer is a real answer (not an error or an empty response).
fn is_answer(resp: &v1::ServerReflectionResponse) -> bool {
    matches!(
        resp.message_response,
        Some(ref m) if !matches!(m, MessageResponse::ErrorResponse(_))
    )
}

// === the gateway's reflection ===

/// The fleet-wide reflection service.
#[derive(Clone)]
pub struct FleetReflection {
    pool: Arc<Pool>,
}

/// What one client stream remembers between requests.
#[derive(Debug, Default)]
struct StreamState {
    /// The part that answered the last symbol lookup: the client's next file lookups are most
    /// likely that file's dependencies, which should come from the same part.
    last_symbol_part: Option<usize>,
}

impl FleetReflection {
    /// Reflection over a pool's parts.
    pub fn new(pool: Arc<Pool>) -> Self {
        Self { pool }
    }

    fn stream<S>(&self, incoming: S, version: Version) -> BoxStream<v1::ServerReflectionResponse>
    where
        S: Stream<Item = Result<v1::ServerReflectionRequest, Status>> + Send + Unpin + 'static,
    {
        let this = self.clone();
        let out = futures_util::stream::unfold(
            (incoming, StreamState::default(), false),
            move |(mut incoming, mut state, failed)| {
                let this = this.clone();
                async move {
                    if failed {
                        return None;
                    }
                    match incoming.next().await? {
                        Ok(req) => {
                            let resp = this.answer(req, version, &mut state).await;
                            Some((Ok(resp), (incoming, state, false)))
                        }
                        Err(status) => Some((Err(status), (incoming, state, true))),
                    }
                }
            },
        );
        Box::pin(out)
    }

    /// Answers one request of a client stream.
    async fn answer(
        &self,
        req: v1::ServerReflectionRequest,
        version: Version,
        state: &mut StreamState,
    ) -> v1::ServerReflectionResponse {
        let main = self.pool.table().main();
        let count = self.pool.parts().len();
        let message_response = match &req.message_request {
            None => error_response(INVALID_ARGUMENT, "empty reflection request".into()),
            Some(MessageRequest::ListServices(_)) => self.list_services(&req, version).await,
            Some(MessageRequest::FileContainingSymbol(symbol)) => {
                let reports: Vec<_> = self.pool.parts().iter().map(|p| p.reported()).collect();
                let order = symbol_order(&reports, main, symbol);
                match self.first_answer(&order, &req, version).await {
                    Some((part, answer)) => {
                        state.last_symbol_part = Some(part);
                        answer
                    }
                    None => error_response(
                        NOT_FOUND,
                        format!("symbol {symbol:?} was not found on any connected part"),
                    ),
                }
            }
            Some(other) => {
                let order = default_order(count, main, state.last_symbol_part);
                match self.first_answer(&order, &req, version).await {
                    Some((_, answer)) => answer,
                    None => error_response(NOT_FOUND, not_found_text(other)),
                }
            }
        };
        v1::ServerReflectionResponse {
            valid_host: req.host.clone(),
            original_request: Some(req),
            message_response: Some(message_response),
        }
    }

    /// The union of every connected part's services, sorted, plus reflection itself.
    async fn list_services(
        &self,
        req: &v1::ServerReflectionRequest,
        version: Version,
    ) -> MessageResponse {
        let parts = self.pool.parts();
        let asks = parts
            .iter()
            .enumerate()
            .filter(|(_, p)| p.state() == PartState::Connected)
            .map(|(i, _)| self.ask(i, req, version, LIST_TIMEOUT));
        let mut names: BTreeSet<String> = SERVICE_NAMES.iter().map(|s| (*s).to_owned()).collect();
        for answer in join_all(asks).await.into_iter().flatten() {
            if let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response {
                names.extend(list.service.into_iter().map(|s| s.name));
            }
        }
        MessageResponse::ListServicesResponse(v1::ListServiceResponse {
            service: names
                .into_iter()
                .map(|name| v1::ServiceResponse { name })
                .collect(),
        })
    }

    /// Asks the parts in order; the first real answer wins.
    async fn first_answer(
        &self,
        order: &[usize],
        req: &v1::ServerReflectionRequest,
        version: Version,
    ) -> Option<(usize, MessageResponse)> {
        for &i in order {
            let connected = self
                .pool
                .parts()
                .get(i)
                .is_some_and(|p| p.state() == PartState::Connected);
            if !connected {
                continue;
            }
            if let Ok(resp) = self.ask(i, req, version, LOOKUP_TIMEOUT).await
                && is_answer(&resp)
            {
                return resp.message_response.map(|m| (i, m));
            }
        }
        None
    }

    /// One question to one part: in the client's version, then in the other if the part does
    /// not implement the first.
    async fn ask(
        &self,
        index: usize,
        req: &v1::ServerReflectionRequest,
        version: Version,
        limit: Duration,
    ) -> Result<v1::ServerReflectionResponse, Status> {
        let asked = async {
            let mut last = Status::unimplemented("part does not serve reflection");
            for v in [version, version.other()] {
                match self.ask_version(index, req, v).await {
                    Err(status) if status.code() == tonic::Code::Unimplemented => last = status,
                    other => return other,
                }
            }
            Err(last)
        };
        let result = tokio::time::timeout(limit, asked)
            .await
            .unwrap_or_else(|_| Err(Status::deadline_exceeded("part did not answer in time")));
        if let Err(status) = &result {
            let part = self.pool.parts().get(index).map(|p| p.name().to_owned());
            debug!(part = part.as_deref(), code = ?status.code(), error = status.message(), "reflection question failed");
        }
        result
    }

    async fn ask_version(
        &self,
        index: usize,
        req: &v1::ServerReflectionRequest,
        version: Version,
    ) -> Result<v1::ServerReflectionResponse, Status> {
        let channel = self
            .pool
            .channel(index)
            .ok_or_else(|| Status::not_found("no such part"))?;
        let closed = || Status::unavailable("part closed the reflection stream without answering");
        match version {
            Version::V1 => {
                let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel);
                let mut answers = client
                    .server_reflection_info(futures_util::stream::iter([req.clone()]))
                    .await?
                    .into_inner();
                answers.message().await?.ok_or_else(closed)
            }
            Version::V1Alpha => {
                let req: v1alpha::ServerReflectionRequest = convert(req)?;
                let mut client =
                    v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
                let mut answers = client
                    .server_reflection_info(futures_util::stream::iter([req]))
                    .await?
                    .into_inner();
                convert(&answers.message().await?.ok_or_else(closed)?)
            }
        }
    }
}

fn not_found_text(req: &MessageRequest) -> String {
    match req {
        MessageRequest::FileByFilename(name) => {
            format!(
                "file {} was not found on any connected part",
                crate::error::Clipped(name)
            )
        }
        MessageRequest::FileContainingSymbol(symbol) => {
            format!("symbol {symbol:?} was not found on any connected part")
        }
        MessageRequest::FileContainingExtension(ext) => format!(
            "extension {} of {:?} was not found on any connected part",
            ext.extension_number, ext.containing_type
        ),
        MessageRequest::AllExtensionNumbersOfType(ty) => {
            format!("type {ty:?} was not found on any connected part")
        }
        MessageRequest::ListServices(_) => "no part lists services".into(),
    }
}

/// Whether a part that serves proto service `service` owns `symbol`: the service itself, one
/// of its methods, or anything in its package.
fn owns(service: &str, symbol: &str) -> bool {
    let below = |prefix: &str| {
        symbol
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('.'))
    };
    if symbol == service || below(service) {
        return true;
    }
    match service.rsplit_once('.') {
        Some((package, _)) => below(package),
        None => false,
    }
}

/// The parts to ask for a symbol: those that reported a service owning it (main first, then
/// config order), then every other part (main first).
fn symbol_order(
    reports: &[Option<Arc<PartResources>>],
    main: Option<usize>,
    symbol: &str,
) -> Vec<usize> {
    let symbol = symbol.trim_start_matches('.');
    let (owners, others): (Vec<usize>, Vec<usize>) = default_order(reports.len(), main, None)
        .into_iter()
        .partition(|&i| {
            reports[i]
                .as_ref()
                .is_some_and(|r| r.subtypes.iter().any(|(_, service)| owns(service, symbol)))
        });
    owners.into_iter().chain(others).collect()
}

/// `first` (if any), then the main part, then every other part in config order.
fn default_order(count: usize, main: Option<usize>, first: Option<usize>) -> Vec<usize> {
    let mut order: Vec<usize> = Vec::with_capacity(count);
    for i in first.into_iter().chain(main).chain(0..count) {
        if i < count && !order.contains(&i) {
            order.push(i);
        }
    }
    order
}

#[tonic::async_trait]
impl v1::server_reflection_server::ServerReflection for FleetReflection {
    async fn server_reflection_info(
        &self,
        request: Request<Streaming<v1::ServerReflectionRequest>>,
    ) -> Result<Response<BoxStream<v1::ServerReflectionResponse>>, Status> {
        Ok(Response::new(
            self.stream(request.into_inner(), Version::V1),
        ))
    }
}

#[tonic::async_trait]
impl v1alpha::server_reflection_server::ServerReflection for FleetReflection {
    async fn server_reflection_info(
        &self,
        request: Request<Streaming<v1alpha::ServerReflectionRequest>>,
    ) -> Result<Response<BoxStream<v1alpha::ServerReflectionResponse>>, Status> {
        let incoming = request
            .into_inner()
            .map(|req| req.and_then(|r| convert::<_, v1::ServerReflectionRequest>(&r)));
        let out = self
            .stream(incoming, Version::V1Alpha)
            .map(|resp| resp.and_then(|r| convert::<_, v1alpha::ServerReflectionResponse>(&r)));
        Ok(Response::new(Box::pin(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::table::Resource;
    use prost::Message;

    fn report(services: &[&str]) -> Option<Arc<PartResources>> {
        Some(Arc::new(PartResources {
            resources: vec![],
            subtypes: services
                .iter()
                .map(|s| {
                    (
                        Resource {
                            namespace: "rdk".into(),
                            kind: "component".into(),
                            subtype: "x".into(),
                            name: String::new(),
                        },
                        (*s).to_owned(),
                    )
                })
                .collect(),
        }))
    }

    #[test]
    fn ownership() {
        let svc = "acme.component.counter.v1.CounterService";
        assert!(owns(svc, svc));
        assert!(owns(svc, "acme.component.counter.v1.CounterService.Add"));
        assert!(owns(svc, "acme.component.counter.v1.AddRequest"));
        assert!(!owns(svc, "acme.component.counter.v2.AddRequest"));
        assert!(!owns(svc, "acme.component.counter.v1"));
        assert!(!owns(svc, "acme.component.counter.v1x.Foo"));
    }

    #[test]
    fn symbol_goes_to_owner_first() {
        let motor = "viam.component.motor.v1.MotorService";
        let counter = "acme.component.counter.v1.CounterService";
        let reports = vec![
            report(&[motor]),
            None,
            report(&[motor]),
            report(&[counter, motor]),
        ];
        // Part 2 is main: owners main first, then config order; then the rest, main first.
        assert_eq!(symbol_order(&reports, Some(2), counter), vec![3, 2, 0, 1]);
        assert_eq!(
            symbol_order(&reports, Some(2), "viam.component.motor.v1.SetPowerRequest"),
            vec![2, 0, 3, 1]
        );
        assert_eq!(
            symbol_order(&reports, None, ".unknown.Thing"),
            vec![0, 1, 2, 3]
        );
    }

    #[test]
    fn default_order_prefers_sticky_then_main() {
        assert_eq!(default_order(4, Some(2), None), vec![2, 0, 1, 3]);
        assert_eq!(default_order(4, Some(2), Some(3)), vec![3, 2, 0, 1]);
        assert_eq!(default_order(3, None, Some(7)), vec![0, 1, 2]);
    }

    #[test]
    fn versions_convert() {
        let req = v1::ServerReflectionRequest {
            host: "h".into(),
            message_request: Some(MessageRequest::FileContainingSymbol("a.B".into())),
        };
        let alpha: v1alpha::ServerReflectionRequest = convert(&req).unwrap_or_default();
        assert_eq!(alpha.host, "h");
        let back: v1::ServerReflectionRequest = convert(&alpha).unwrap_or_default();
        assert_eq!(back, req);
    }

    fn index() -> DescriptorIndex {
        DescriptorIndex::new(crate::proto::FILE_DESCRIPTOR_SET, |_| true).unwrap_or_default()
    }

    fn ask(index: &DescriptorIndex, request: MessageRequest) -> MessageResponse {
        let req = v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(request),
        };
        index
            .answer(&req, &[])
            .message_response
            .unwrap_or_else(|| error_response(0, String::new()))
    }

    fn file_names(resp: &MessageResponse) -> Vec<String> {
        match resp {
            MessageResponse::FileDescriptorResponse(files) => files
                .file_descriptor_proto
                .iter()
                .map(|raw| {
                    prost_types::FileDescriptorProto::decode(raw.as_slice())
                        .map(|f| f.name().to_owned())
                        .unwrap_or_default()
                })
                .collect(),
            _ => vec![],
        }
    }

    #[test]
    fn index_finds_symbols() {
        let index = index();
        assert!(index.file_names().any(|f| f.ends_with("counter.proto")));
        for symbol in [
            "acme.component.counter.v1.CounterService",
            "acme.component.counter.v1.CounterService.Add",
            "acme.component.counter.v1.AddRequest",
            "acme.component.counter.v1.AddRequest.value",
        ] {
            let files = file_names(&ask(
                &index,
                MessageRequest::FileContainingSymbol(symbol.into()),
            ));
            assert!(
                files.first().is_some_and(|f| f.ends_with("counter.proto")),
                "{symbol}: {files:?}"
            );
        }
        let motor = file_names(&ask(
            &index,
            MessageRequest::FileContainingSymbol("viam.component.motor.v1.MotorService".into()),
        ));
        assert!(motor.first().is_some_and(|f| f.ends_with("motor.proto")));
        // Dependencies come along.
        assert!(
            motor.iter().any(|f| f.ends_with("common.proto")),
            "{motor:?}"
        );
        assert!(matches!(
            ask(
                &index,
                MessageRequest::FileContainingSymbol("no.such.Thing".into())
            ),
            MessageResponse::ErrorResponse(v1::ErrorResponse { error_code: 5, .. })
        ));
    }
}
