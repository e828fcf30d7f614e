//! The method table: every gRPC method the gateway knows by name, each with a small id. Calls
//! are classified and labelled by it (`method` in the metrics), and it keeps each method's
//! `package.Service` so the route stage does not split the path again.
//!
//! Receives request paths; hands back ids, the shared path string and the service. Known means
//! compiled into the gateway (the descriptor set) or listed in [`VIAM_API`]; anything else is
//! `other`, so a client cannot grow the label set.

use std::sync::Arc;

/// The `method` label of every method outside the known set.
pub const OTHER_METHOD: &str = "other";

/// Viam API services and their methods beyond the protos compiled into the gateway, so calls
/// to a real fleet's arms, cameras and services get their own `method` label.
#[rustfmt::skip]
pub const VIAM_API: &[(&str, &[&str])] = &[
    ("viam.component.arm.v1.ArmService", &["GetEndPosition", "MoveToPosition", "GetJointPositions", "MoveToJointPositions", "MoveThroughJointPositions", "MoveThroughJointPositionsStreamed", "Stop", "IsMoving", "DoCommand", "GetKinematics", "GetGeometries", "Get3DModels"]),
    ("viam.component.audioin.v1.AudioInService", &["GetAudio", "GetProperties", "DoCommand", "GetGeometries"]),
    ("viam.component.audioout.v1.AudioOutService", &["Play", "PlayStream", "GetProperties", "DoCommand", "GetGeometries"]),
    ("viam.component.base.v1.BaseService", &["MoveStraight", "Spin", "SetPower", "SetVelocity", "Stop", "IsMoving", "DoCommand", "GetGeometries", "GetProperties"]),
    ("viam.component.board.v1.BoardService", &["SetGPIO", "GetGPIO", "PWM", "SetPWM", "PWMFrequency", "SetPWMFrequency", "DoCommand", "ReadAnalogReader", "WriteAnalog", "GetDigitalInterruptValue", "StreamTicks", "SetPowerMode", "GetGeometries"]),
    ("viam.component.button.v1.ButtonService", &["Push", "DoCommand"]),
    ("viam.component.camera.v1.CameraService", &["GetImage", "GetImages", "RenderFrame", "GetPointCloud", "GetProperties", "DoCommand", "GetGeometries"]),
    ("viam.component.encoder.v1.EncoderService", &["GetPosition", "ResetPosition", "GetProperties", "DoCommand", "GetGeometries"]),
    ("viam.component.gantry.v1.GantryService", &["GetPosition", "MoveToPosition", "Home", "GetLengths", "Stop", "IsMoving", "DoCommand", "GetKinematics", "GetGeometries"]),
    ("viam.component.generic.v1.GenericService", &["DoCommand", "GetGeometries"]),
    ("viam.component.gripper.v1.GripperService", &["Open", "Grab", "Stop", "IsMoving", "IsHoldingSomething", "DoCommand", "GetGeometries", "GetKinematics"]),
    ("viam.component.inputcontroller.v1.InputControllerService", &["GetControls", "GetEvents", "StreamEvents", "TriggerEvent", "DoCommand", "GetGeometries"]),
    ("viam.component.motor.v1.MotorService", &["SetPower", "GoFor", "GoTo", "SetRPM", "ResetZeroPosition", "GetPosition", "GetProperties", "Stop", "IsPowered", "IsMoving", "DoCommand", "GetGeometries"]),
    ("viam.component.movementsensor.v1.MovementSensorService", &["GetLinearVelocity", "GetAngularVelocity", "GetCompassHeading", "GetOrientation", "GetPosition", "GetProperties", "GetAccuracy", "GetLinearAcceleration", "GetReadings", "DoCommand", "GetGeometries"]),
    ("viam.component.posetracker.v1.PoseTrackerService", &["GetPoses", "DoCommand", "GetGeometries"]),
    ("viam.component.powersensor.v1.PowerSensorService", &["GetVoltage", "GetCurrent", "GetPower", "GetReadings", "DoCommand"]),
    ("viam.component.sensor.v1.SensorService", &["GetReadings", "DoCommand", "GetGeometries"]),
    ("viam.component.servo.v1.ServoService", &["Move", "GetPosition", "Stop", "IsMoving", "DoCommand", "GetGeometries"]),
    ("viam.component.switch.v1.SwitchService", &["SetPosition", "GetPosition", "GetNumberOfPositions", "DoCommand"]),
    ("viam.service.datamanager.v1.DataManagerService", &["Sync", "DoCommand", "UploadBinaryDataToDatasets"]),
    ("viam.service.discovery.v1.DiscoveryService", &["DiscoverResources", "DoCommand"]),
    ("viam.service.generic.v1.GenericService", &["DoCommand"]),
    ("viam.service.mlmodel.v1.MLModelService", &["Infer", "Metadata", "DoCommand"]),
    ("viam.service.motion.v1.MotionService", &["Move", "MoveOnMap", "MoveOnGlobe", "GetPose", "StopPlan", "ListPlanStatuses", "GetPlan", "DoCommand"]),
    ("viam.service.navigation.v1.NavigationService", &["GetMode", "SetMode", "GetLocation", "GetWaypoints", "AddWaypoint", "RemoveWaypoint", "GetObstacles", "GetPaths", "GetProperties", "DoCommand"]),
    ("viam.service.sensors.v1.SensorsService", &["GetSensors", "GetReadings", "DoCommand"]),
    ("viam.service.shell.v1.ShellService", &["Shell", "CopyFilesToMachine", "CopyFilesFromMachine", "DoCommand"]),
    ("viam.service.slam.v1.SLAMService", &["GetPosition", "GetPointCloudMap", "GetInternalState", "GetProperties", "DoCommand"]),
    ("viam.service.video.v1.VideoService", &["GetVideo", "DoCommand"]),
    ("viam.service.vision.v1.VisionService", &["GetDetectionsFromCamera", "GetDetections", "GetClassificationsFromCamera", "GetClassifications", "GetObjectPointClouds", "GetProperties", "CaptureAllFromCamera", "DoCommand"]),
    ("viam.service.worldstatestore.v1.WorldStateStoreService", &["ListUUIDs", "GetTransform", "StreamTransformChanges", "DoCommand"]),
    ("viam.robot.v1.RobotService", &["GetOperations", "GetSessions", "ResourceNames", "ResourceRPCSubtypes", "CancelOperation", "BlockForOperation", "DiscoverComponents", "FrameSystemConfig", "TransformPose", "TransformPCD", "GetStatus", "StreamStatus", "StopAll", "StartSession", "SendSessionHeartbeat", "Log", "GetCloudMetadata", "RestartModule", "Shutdown", "GetMachineStatus", "GetVersion", "Tunnel", "ListTunnels", "GetPose", "GetModelsFromModules"]),
    ("proto.stream.v1.StreamService", &["ListStreams", "AddStream", "RemoveStream", "GetStreamOptions", "SetStreamOptions"]),
    ("proto.rpc.webrtc.v1.SignalingService", &["Call", "CallUpdate", "Answer", "OptionalWebRTCConfig"]),
    ("proto.rpc.v1.AuthService", &["Authenticate"]),
    ("proto.rpc.v1.ExternalAuthService", &["AuthenticateTo"]),
    ("grpc.health.v1.Health", &["Check", "Watch"]),
];

/// A method's index in the [`MethodTable`]; 0 is `other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MethodId(u16);

impl MethodId {
    /// `other`: every method outside the table.
    pub const OTHER: MethodId = MethodId(0);

    /// The id's index among the table's label values (`other` is 0).
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

/// The bounded set of `method` label values.
#[derive(Debug)]
pub struct MethodTable {
    /// Looked up once per call with a path of ~50 bytes: the fast table hasher (see there).
    index: super::hash::TableMap<Box<str>, MethodId>,
    names: Vec<Arc<str>>,
    /// Where each path's `package.Service` starts and ends: the route stage needs the service
    /// on every call, and this spares it splitting the path again.
    services: Vec<(u16, u16)>,
}

// === impl MethodTable ===

impl MethodTable {
    /// Every method of the compiled protos (`FILE_DESCRIPTOR_SET`) and of [`VIAM_API`].
    pub fn known() -> Self {
        let mut paths: Vec<String> = descriptor_methods();
        for (service, methods) in VIAM_API {
            paths.extend(methods.iter().map(|m| format!("/{service}/{m}")));
        }
        Self::from_paths(paths)
    }

    fn from_paths(paths: Vec<String>) -> Self {
        let mut table = Self {
            index: super::hash::TableMap::with_capacity_and_hasher(paths.len(), Default::default()),
            names: vec![Arc::from(OTHER_METHOD)],
            services: vec![(0, 0)],
        };
        for path in paths {
            if table.index.contains_key(path.as_str()) || table.names.len() > usize::from(u16::MAX)
            {
                continue;
            }
            let span = super::method::service_span(&path);
            let (Ok(start), Ok(end)) = (u16::try_from(span.start), u16::try_from(span.end)) else {
                continue;
            };
            let id = MethodId(table.names.len() as u16);
            table.names.push(Arc::from(path.as_str()));
            table.services.push((start, end));
            table.index.insert(path.into_boxed_str(), id);
        }
        table
    }

    /// The id of a request path (`/package.Service/Method`); unknown paths are `other`.
    pub fn id(&self, path: &str) -> MethodId {
        self.index.get(path).copied().unwrap_or(MethodId(0))
    }

    /// The path of a known method as a shared string (no allocation per call); `None` for
    /// `other`, whose calls each have their own path.
    pub fn path(&self, id: MethodId) -> Option<Arc<str>> {
        (id.0 != 0).then(|| self.names.get(usize::from(id.0)).cloned())?
    }

    /// The `package.Service` of a known method's path ([`super::method::service_of`]
    /// without splitting it again); `None` for `other`.
    pub fn service(&self, id: MethodId) -> Option<&str> {
        let path = self.names.get(usize::from(id.0)).filter(|_| id.0 != 0)?;
        let &(start, end) = self.services.get(usize::from(id.0))?;
        path.get(usize::from(start)..usize::from(end))
    }

    /// The label value of an id.
    pub fn name(&self, id: MethodId) -> &str {
        self.names
            .get(usize::from(id.0))
            .map_or(OTHER_METHOD, |n| n)
    }

    /// Every label value, `other` first, in id order.
    pub fn names(&self) -> &[Arc<str>] {
        &self.names
    }

    /// How many label values there are (including `other`).
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Always false: `other` is always there.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

fn descriptor_methods() -> Vec<String> {
    use prost::Message;
    let Ok(set) = prost_types::FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for file in set.file {
        let package = file.package.unwrap_or_default();
        for service in file.service {
            let service_name = service.name.unwrap_or_default();
            let full = if package.is_empty() {
                service_name
            } else {
                format!("{package}.{service_name}")
            };
            for method in service.method {
                out.push(format!("/{full}/{}", method.name.unwrap_or_default()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_methods_include_compiled_and_viam_api() {
        let table = MethodTable::known();
        let set_power = table.id("/viam.component.motor.v1.MotorService/SetPower");
        assert_ne!(set_power, MethodId(0));
        assert_eq!(
            table.name(set_power),
            "/viam.component.motor.v1.MotorService/SetPower"
        );
        assert_ne!(
            table.id("/viam.component.arm.v1.ArmService/MoveToPosition"),
            MethodId(0)
        );
        assert_ne!(
            table.id("/acme.component.counter.v1.CounterService/Add"),
            MethodId(0)
        );
        assert_eq!(
            table.id("/viam.component.motor.v1.MotorService/Nope"),
            MethodId(0)
        );
        assert_eq!(table.name(MethodId(0)), OTHER_METHOD);
        assert_eq!(
            table.path(set_power).as_deref(),
            Some("/viam.component.motor.v1.MotorService/SetPower")
        );
        assert_eq!(table.path(MethodId(0)), None);
        assert!(table.len() > 100 && table.len() < 2000, "{}", table.len());
    }

    #[test]
    fn a_known_method_carries_its_service() {
        let table = MethodTable::known();
        // Every known path's stored service is what splitting the path gives.
        for id in 1..table.len() {
            let id = MethodId(id as u16);
            let path = table.name(id);
            assert_eq!(
                table.service(id),
                Some(super::super::method::service_of(path)),
                "{path}"
            );
        }
        let set_power = table.id("/viam.component.motor.v1.MotorService/SetPower");
        assert_eq!(
            table.service(set_power),
            Some("viam.component.motor.v1.MotorService")
        );
        assert_eq!(table.service(MethodId(0)), None);
        let odd = MethodTable::from_paths(vec!["//a.B/C/d".into(), "nothing".into()]);
        assert_eq!(odd.service(MethodId(1)), Some("a.B"));
        assert_eq!(odd.service(MethodId(2)), Some("nothing"));
    }
}
