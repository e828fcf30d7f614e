//! Stage `route`, by method: which calls the gateway answers, which go to the main part, and
//! where the routing name sits in the others.
//!
//! Receives the request path (`/package.Service/Method`); hands back a [`MethodKind`].

/// What the gateway does with a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodKind {
    /// Answered by the gateway itself (fleet-wide RobotService methods, health).
    Local(LocalMethod),
    /// Forwarded untouched to the main part (single-computer methods).
    MainPart,
    /// Routed by the resource name at this field path of the first message.
    ByName(&'static [u32]),
    /// `proto.rpc.webrtc.v1.SignalingService`: answered by the gateway's WebRTC signaling.
    Signaling,
    /// A protocol the gateway does not speak on this port (yet).
    Unimplemented,
}

/// Methods the gateway answers itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalMethod {
    /// `RobotService/ResourceNames`.
    ResourceNames,
    /// `RobotService/ResourceRPCSubtypes`.
    ResourceRpcSubtypes,
    /// `RobotService/StopAll`.
    StopAll,
    /// `RobotService/GetOperations`.
    GetOperations,
    /// `RobotService/CancelOperation`.
    CancelOperation,
    /// `RobotService/BlockForOperation`.
    BlockForOperation,
    /// `RobotService/GetMachineStatus`.
    GetMachineStatus,
    /// `RobotService/GetVersion`.
    GetVersion,
    /// `RobotService/GetSessions`.
    GetSessions,
    /// `RobotService/StartSession` (sessions are owned by the gateway, see `session`).
    StartSession,
    /// `RobotService/SendSessionHeartbeat`.
    SendSessionHeartbeat,
    /// `grpc.health.v1.Health/Check`.
    HealthCheck,
    /// `proto.rpc.v1.AuthService/Authenticate`.
    Authenticate,
    /// `grpc.reflection.{v1alpha,v1}.ServerReflection/ServerReflectionInfo` (the handler tells
    /// the versions apart by path).
    Reflection,
}

const ROBOT: &str = "/viam.robot.v1.RobotService/";

/// Classifies a request path.
pub fn classify(path: &str) -> MethodKind {
    if let Some(method) = path.strip_prefix(ROBOT) {
        return match method {
            "ResourceNames" => MethodKind::Local(LocalMethod::ResourceNames),
            "ResourceRPCSubtypes" => MethodKind::Local(LocalMethod::ResourceRpcSubtypes),
            "StopAll" => MethodKind::Local(LocalMethod::StopAll),
            "GetOperations" => MethodKind::Local(LocalMethod::GetOperations),
            "CancelOperation" => MethodKind::Local(LocalMethod::CancelOperation),
            "BlockForOperation" => MethodKind::Local(LocalMethod::BlockForOperation),
            "GetMachineStatus" => MethodKind::Local(LocalMethod::GetMachineStatus),
            "GetVersion" => MethodKind::Local(LocalMethod::GetVersion),
            "GetSessions" => MethodKind::Local(LocalMethod::GetSessions),
            "StartSession" => MethodKind::Local(LocalMethod::StartSession),
            "SendSessionHeartbeat" => MethodKind::Local(LocalMethod::SendSessionHeartbeat),
            _ => MethodKind::MainPart,
        };
    }
    if path == crate::proto::wire::AUTHENTICATE_PATH {
        return MethodKind::Local(LocalMethod::Authenticate);
    }
    if path == "/grpc.health.v1.Health/Check" {
        return MethodKind::Local(LocalMethod::HealthCheck);
    }
    if path == "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
        || path == "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
    {
        return MethodKind::Local(LocalMethod::Reflection);
    }
    if path.starts_with("/proto.rpc.webrtc.v1.SignalingService/") {
        return MethodKind::Signaling;
    }
    if path.starts_with("/proto.rpc.") || path.starts_with("/grpc.health.") {
        return MethodKind::Unimplemented;
    }
    if path.starts_with("/grpc.reflection.") || path == "/proto.stream.v1.StreamService/ListStreams"
    {
        return MethodKind::MainPart;
    }
    MethodKind::ByName(name_path(path))
}

/// Where the routing name is, per protocol notes 3.3: field 1 everywhere (`name`, `board_name`,
/// `controller`), except the few methods that nest it in field 1 of a oneof message.
fn name_path(path: &str) -> &'static [u32] {
    match path {
        "/viam.component.audioout.v1.AudioOutService/PlayStream"
        | "/viam.service.shell.v1.ShellService/CopyFilesToMachine"
        | "/viam.service.shell.v1.ShellService/CopyFilesFromMachine" => &[1, 1],
        _ => &[1],
    }
}

/// The `package.Service` part of a request path.
pub fn service_of(path: &str) -> &str {
    // `service_span` is within `path`, on char boundaries.
    path.get(service_span(path)).unwrap_or_default()
}

/// Where [`service_of`] is in `path` (for tables that keep it instead of splitting again).
pub fn service_span(path: &str) -> std::ops::Range<usize> {
    let rest = path.trim_start_matches('/');
    let start = path.len() - rest.len();
    start..start + split_path(rest).0.len()
}

/// `Service/Method` split at its first `/` (the whole of `rest` and `None` without one).
pub fn split_path(rest: &str) -> (&str, Option<&str>) {
    match super::split_once_ascii(rest, b'/') {
        Some((service, method)) => (service, Some(method)),
        None => (rest, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_robot_service() {
        assert_eq!(
            classify("/viam.robot.v1.RobotService/ResourceNames"),
            MethodKind::Local(LocalMethod::ResourceNames)
        );
        assert_eq!(
            classify("/viam.robot.v1.RobotService/FrameSystemConfig"),
            MethodKind::MainPart
        );
        assert_eq!(
            classify("/viam.robot.v1.RobotService/StartSession"),
            MethodKind::Local(LocalMethod::StartSession)
        );
        assert_eq!(
            classify("/viam.robot.v1.RobotService/SendSessionHeartbeat"),
            MethodKind::Local(LocalMethod::SendSessionHeartbeat)
        );
    }

    #[test]
    fn resource_methods_route_by_name() {
        assert_eq!(
            classify("/viam.component.motor.v1.MotorService/SetPower"),
            MethodKind::ByName(&[1])
        );
        assert_eq!(
            classify("/viam.component.board.v1.BoardService/ReadAnalogReader"),
            MethodKind::ByName(&[1])
        );
        assert_eq!(
            classify("/viam.component.audioout.v1.AudioOutService/PlayStream"),
            MethodKind::ByName(&[1, 1])
        );
        assert_eq!(
            classify("/acme.component.counter.v1.CounterService/Add"),
            MethodKind::ByName(&[1])
        );
    }

    #[test]
    fn framework_services() {
        assert_eq!(
            classify("/proto.rpc.webrtc.v1.SignalingService/Call"),
            MethodKind::Signaling
        );
        assert_eq!(
            classify("/proto.rpc.v2.Other/Call"),
            MethodKind::Unimplemented
        );
        assert_eq!(
            classify("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
            MethodKind::Local(LocalMethod::Reflection)
        );
        assert_eq!(
            classify("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            MethodKind::Local(LocalMethod::Reflection)
        );
        assert_eq!(
            classify("/grpc.reflection.v1.ServerReflection/Other"),
            MethodKind::MainPart
        );
        assert_eq!(
            classify("/grpc.health.v1.Health/Check"),
            MethodKind::Local(LocalMethod::HealthCheck)
        );
    }

    #[test]
    fn service_names() {
        assert_eq!(
            service_of("/viam.component.motor.v1.MotorService/SetPower"),
            "viam.component.motor.v1.MotorService"
        );
        assert_eq!(service_of("garbage"), "garbage");
        assert_eq!(split_path("a.B/C/d"), ("a.B", Some("C/d")));
        assert_eq!(split_path("a.B/"), ("a.B", Some("")));
        assert_eq!(split_path("é/ü"), ("é", Some("ü")));
        assert_eq!(split_path(""), ("", None));
    }
}
