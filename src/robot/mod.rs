//! The fleet-wide `viam.robot.v1.RobotService`: what the gateway answers itself so that the
//! fleet looks like one machine (listing, stop-all, operations, status, version, sessions).
//!
//! Receives a decoded-by-us request for a [`LocalMethod`]; hands back a complete gRPC response.
//! Fan-outs run concurrently, with a time bound, and report each part's failure by name.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use prost::Message;

use crate::auth::{PeerAddr, Principal};
use crate::body::read_first_message;
use crate::error::GatewayError;
use crate::proto::viam::common::v1::ResourceName;
use crate::proto::viam::robot::v1 as robot;
use crate::robot::sessions::Sessions;
use crate::route::method::LocalMethod;
use crate::route::resource_name::{api_key, gateway_name};
use crate::route::table::Resource;
use crate::upstream::pool::{PartState, Pool, Snapshot};

pub mod reflection;
pub mod sessions;

type Body = tonic::body::Body;
type Client = robot::robot_service_client::RobotServiceClient<crate::upstream::pool::PartChannel>;

/// How long a fan-out may wait for the slowest part.
const FAN_OUT_TIMEOUT: Duration = Duration::from_secs(10);
/// The TS SDK heartbeats with GetOperations every 10 s: it must never wait on a dead part.
const OPERATIONS_TIMEOUT: Duration = Duration::from_secs(1);
/// Requests to the robot service are small; anything bigger is a client error.
const MAX_ROBOT_REQUEST: usize = 4 * 1024 * 1024;

/// Answers the fleet-wide robot methods.
pub struct FleetRobot {
    pool: Arc<Pool>,
    sessions: Arc<Sessions>,
}

impl FleetRobot {
    /// Serves the robot API over a pool, with the gateway's client sessions.
    pub fn new(pool: Arc<Pool>, sessions: Arc<Sessions>) -> Self {
        Self { pool, sessions }
    }

    /// Answers one locally handled method.
    pub async fn answer(
        &self,
        method: LocalMethod,
        req: http::Request<Body>,
        principal: &Principal,
    ) -> Result<http::Response<Body>, GatewayError> {
        let (head, body) = req.into_parts();
        // One snapshot for the whole answer: part indices from its table index its parts.
        let scope = Scope {
            snapshot: self.pool.snapshot(),
            principal,
        };
        match method {
            LocalMethod::Reflection => Ok(reflection::serve(
                self.pool.clone(),
                http::Request::from_parts(head, body),
            )
            .await),
            LocalMethod::ResourceNames => Ok(reply(&self.resource_names(&scope))),
            LocalMethod::ResourceRpcSubtypes => Ok(reply(&self.subtypes())),
            LocalMethod::StopAll => self.stop_all(decode(body).await?, &scope).await.map(|r| reply(&r)),
            LocalMethod::GetOperations => Ok(reply(&self.operations(&scope).await)),
            LocalMethod::CancelOperation => {
                let req: robot::CancelOperationRequest = decode(body).await?;
                let (mut client, id) = self.operation_part(&req.id, &scope)?;
                client.cancel_operation(robot::CancelOperationRequest { id }).await.map_err(part_status)?;
                Ok(reply(&robot::CancelOperationResponse {}))
            }
            LocalMethod::BlockForOperation => {
                let req: robot::BlockForOperationRequest = decode(body).await?;
                let (mut client, id) = self.operation_part(&req.id, &scope)?;
                client.block_for_operation(robot::BlockForOperationRequest { id }).await.map_err(part_status)?;
                Ok(reply(&robot::BlockForOperationResponse {}))
            }
            LocalMethod::GetMachineStatus => Ok(reply(&self.machine_status(&scope).await)),
            LocalMethod::GetVersion => Ok(reply(&robot::GetVersionResponse {
                platform: "partgate".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                api_version: String::new(),
            })),
            LocalMethod::GetSessions => Ok(reply(&self.sessions.list(principal))),
            LocalMethod::StartSession => {
                let peer = head.extensions.get::<PeerAddr>().map(|p| p.0);
                let req: robot::StartSessionRequest = decode(body).await?;
                Ok(reply(&self.sessions.start_session(&req, principal, peer)?))
            }
            LocalMethod::SendSessionHeartbeat => {
                let req: robot::SendSessionHeartbeatRequest = decode(body).await?;
                self.sessions.heartbeat(&req.id, principal)?;
                Ok(reply(&robot::SendSessionHeartbeatResponse {}))
            }
            LocalMethod::Authenticate => {
                Err(GatewayError::Internal("Authenticate is answered by the auth stage".into()))
            }
            LocalMethod::HealthCheck => Ok(reply(&crate::proto::grpc::health::v1::HealthCheckResponse {
                status: crate::proto::grpc::health::v1::health_check_response::ServingStatus::Serving as i32,
            })),
        }
    }

    fn resource_names(&self, scope: &Scope<'_>) -> robot::ResourceNamesResponse {
        let table = scope.snapshot.table();
        let resources = table
            .listing()
            .iter()
            .filter(|(part, _)| scope.allows(*part))
            .map(|(_, r)| to_proto(r))
            .collect();
        robot::ResourceNamesResponse { resources }
    }

    fn subtypes(&self) -> robot::ResourceRpcSubtypesResponse {
        let table = self.pool.table();
        let resource_rpc_subtypes = table
            .subtypes()
            .iter()
            .map(|(api, service)| robot::ResourceRpcSubtype {
                subtype: Some(to_proto(api)),
                proto_service: service.clone(),
            })
            .collect();
        robot::ResourceRpcSubtypesResponse {
            resource_rpc_subtypes,
        }
    }

    /// Stops every part concurrently; `extra` parameters go to the part that owns each name.
    async fn stop_all(
        &self,
        req: robot::StopAllRequest,
        scope: &Scope<'_>,
    ) -> Result<robot::StopAllResponse, GatewayError> {
        let table = scope.snapshot.table();
        let mut extras: Vec<Vec<robot::StopExtraParameters>> =
            vec![Vec::new(); table.parts().len()];
        for mut extra in req.extra {
            let Some(name) = extra.name.as_mut() else {
                continue;
            };
            let api = api_key(&name.namespace, &name.r#type, &name.subtype);
            let route = table.resolve_api(&name.name, Some(&api))?;
            scope.check(route.part)?;
            name.name.drain(..route.strip);
            extras[route.part].push(extra);
        }
        // A caller limited to some parts stops only those.
        let reachable = extras
            .into_iter()
            .enumerate()
            .filter(|(i, _)| scope.allows(*i));
        let calls = reachable.map(|(i, extra)| async move {
            let part = scope
                .snapshot
                .part(i)
                .map(|p| p.name().to_owned())
                .unwrap_or_default();
            let mut client = scope
                .client(i)
                .ok_or_else(|| (part.clone(), "unknown part".to_owned()))?;
            match tokio::time::timeout(
                FAN_OUT_TIMEOUT,
                client.stop_all(robot::StopAllRequest { extra }),
            )
            .await
            {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(status)) => Err((part, status.message().to_owned())),
                Err(_) => Err((part, "timed out".to_owned())),
            }
        });
        let failed: Vec<(String, String)> = join_all(calls)
            .await
            .into_iter()
            .filter_map(Result::err)
            .collect();
        if failed.is_empty() {
            Ok(robot::StopAllResponse {})
        } else {
            Err(GatewayError::FanOut(failed))
        }
    }

    /// Every connected part's operations, ids qualified as `part:id` so they route back.
    async fn operations(&self, scope: &Scope<'_>) -> robot::GetOperationsResponse {
        let parts = scope.snapshot.parts();
        let calls = parts
            .iter()
            .enumerate()
            .filter(|(i, p)| p.state() == PartState::Connected && scope.allows(*i))
            .map(|(i, part)| async move {
                let mut client = scope.client(i)?;
                let resp = tokio::time::timeout(
                    OPERATIONS_TIMEOUT,
                    client.get_operations(robot::GetOperationsRequest {}),
                )
                .await
                .ok()?
                .ok()?;
                let ops = resp.into_inner().operations;
                Some(
                    ops.into_iter()
                        .map(|op| robot::Operation {
                            id: format!("{}:{}", part.name(), op.id),
                            ..op
                        })
                        .collect::<Vec<_>>(),
                )
            });
        let operations = join_all(calls)
            .await
            .into_iter()
            .flatten()
            .flatten()
            .collect();
        robot::GetOperationsResponse { operations }
    }

    fn operation_part(
        &self,
        id: &str,
        scope: &Scope<'_>,
    ) -> Result<(Client, String), GatewayError> {
        let not_found = || GatewayError::NotFound {
            name: id.to_owned(),
        };
        let (part, local) = id.split_once(':').ok_or_else(not_found)?;
        let index = scope
            .snapshot
            .table()
            .part_named(part)
            .ok_or_else(not_found)?;
        scope.check(index)?;
        Ok((scope.client(index).ok_or_else(not_found)?, local.to_owned()))
    }

    /// Each part as an `rdk:remote` resource with its state, plus its resources under their
    /// gateway names (from the part's own status when reachable, else last known as READY).
    async fn machine_status(&self, scope: &Scope<'_>) -> robot::GetMachineStatusResponse {
        use robot::resource_status::State;
        let table = scope.snapshot.table();
        let parts = scope.snapshot.parts();
        let visible = parts.iter().enumerate().filter(|(i, _)| scope.allows(*i));
        let calls = visible.map(|(i, part)| {
            let naming = table.parts()[i].naming.clone();
            async move {
                let mut out = Vec::new();
                let connected = part.state() == PartState::Connected;
                out.push(robot::ResourceStatus {
                    name: Some(ResourceName {
                        namespace: "rdk".into(),
                        r#type: "remote".into(),
                        subtype: String::new(),
                        name: part.name().to_owned(),
                        ..Default::default()
                    }),
                    state: if connected {
                        State::Ready
                    } else {
                        State::Unhealthy
                    } as i32,
                    error: if connected {
                        String::new()
                    } else {
                        part.last_error().unwrap_or_default()
                    },
                    ..Default::default()
                });
                let fetched = match (connected, scope.client(i)) {
                    (true, Some(mut client)) => tokio::time::timeout(
                        OPERATIONS_TIMEOUT,
                        client.get_machine_status(robot::GetMachineStatusRequest {}),
                    )
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .map(|r| r.into_inner().resources),
                    _ => None,
                };
                let rename = |mut name: ResourceName| {
                    name.name = gateway_name(part.name(), &naming, &name.name);
                    name
                };
                match fetched {
                    Some(resources) => out.extend(resources.into_iter().map(|mut s| {
                        s.name = s.name.map(rename);
                        s
                    })),
                    None => out.extend(
                        part.reported()
                            .iter()
                            .flat_map(|r| r.resources.clone())
                            .map(|r| robot::ResourceStatus {
                                name: Some(rename(to_proto(&r))),
                                state: State::Ready as i32,
                                ..Default::default()
                            }),
                    ),
                }
                out
            }
        });
        let resources = join_all(calls).await.into_iter().flatten().collect();
        let starting = self
            .pool
            .parts()
            .iter()
            .any(|p| p.state() == PartState::Connecting);
        robot::GetMachineStatusResponse {
            resources,
            state: if starting {
                robot::get_machine_status_response::State::Initializing
            } else {
                robot::get_machine_status_response::State::Running
            } as i32,
            ..Default::default()
        }
    }
}

/// What a caller may see and touch: parts its API key is limited to.
struct Scope<'a> {
    snapshot: Arc<Snapshot>,
    principal: &'a Principal,
}

impl Scope<'_> {
    fn allows(&self, part: usize) -> bool {
        self.snapshot
            .part(part)
            .is_some_and(|p| self.principal.may_reach(p.name()))
    }

    /// A robot client for part `index` of the snapshot.
    fn client(&self, index: usize) -> Option<Client> {
        self.snapshot.channel(index).map(Client::new)
    }

    fn check(&self, part: usize) -> Result<(), GatewayError> {
        if self.allows(part) {
            return Ok(());
        }
        let name = self
            .snapshot
            .part(part)
            .map(|p| p.name().to_owned())
            .unwrap_or_default();
        Err(GatewayError::PermissionDenied(format!(
            "not allowed to reach part {name}"
        )))
    }
}

fn to_proto(r: &Resource) -> ResourceName {
    ResourceName {
        namespace: r.namespace.clone(),
        r#type: r.kind.clone(),
        subtype: r.subtype.clone(),
        name: r.name.clone(),
        ..Default::default()
    }
}

/// A part's error status for a call we made on the client's behalf, passed on as is.
fn part_status(status: tonic::Status) -> GatewayError {
    match status.code() {
        tonic::Code::NotFound => GatewayError::NotFound {
            name: status.message().to_owned(),
        },
        tonic::Code::Unavailable => {
            GatewayError::FanOut(vec![("part".into(), status.message().to_owned())])
        }
        _ => GatewayError::Internal(status.message().to_owned()),
    }
}

/// Decodes the single request message of a unary call.
pub(crate) async fn decode<M: Message + Default>(mut body: Body) -> Result<M, GatewayError> {
    match read_first_message(&mut body, MAX_ROBOT_REQUEST).await? {
        None => Ok(M::default()),
        Some(first) if first.header.compressed => Err(GatewayError::Compressed),
        Some(first) => M::decode(first.message)
            .map_err(|_| GatewayError::MalformedFrame("request message does not decode")),
    }
}

pub use crate::proto::unary::reply;
