//! Method cardinality for the data-channel bridge: whether a call takes exactly one request
//! message, so the bridge half-closes the downstream request after it (TS SDK unary calls over
//! WebRTC never send `eos`).
//!
//! Receives a method path; hands back [`Requests`]. Sources, in order: the compiled descriptor
//! set (`FILE_DESCRIPTOR_SET`: the Viam subset, reflection, auth, health, the test APIs), then
//! a built-in list of the Viam API's client- and bidi-streaming methods (every other method of
//! a `viam.*` service is unary or server-streaming), then a default for custom APIs.
//!
//! Custom APIs (not `viam.*`, not compiled in) are treated as streaming requests: the downstream
//! body is half-closed only on `eos`. Go, Python (rust-utils) and TS *streams* send `eos`, so
//! every SDK works except TS unary calls on a custom API, which would wait for their deadline.
//! Guessing "single" instead would silently truncate custom client streams, which is worse.

use std::collections::HashMap;
use std::sync::OnceLock;

use prost::Message;

/// How many request messages a method takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requests {
    /// Unary or server-streaming: half-close after the first complete message.
    Single,
    /// Client- or bidi-streaming (or unknown): half-close on `eos`.
    Stream,
}

/// Viam API methods whose requests stream (client- or bidi-streaming), from the `viam.*`
/// protos; every other `viam.*` method takes a single request.
const VIAM_STREAMING_REQUESTS: &[&str] = &[
    "/viam.robot.v1.RobotService/Tunnel",
    "/viam.service.shell.v1.ShellService/Shell",
    "/viam.service.shell.v1.ShellService/CopyFilesToMachine",
    "/viam.service.shell.v1.ShellService/CopyFilesFromMachine",
    "/viam.component.audioout.v1.AudioOutService/PlayStream",
    "/viam.app.datasync.v1.DataSyncService/StreamingDataCaptureUpload",
    "/viam.app.packages.v1.PackageService/CreatePackage",
    "/viam.app.v1.AppService/UploadModuleFile",
    "/viam.app.mltraining.v1.MLTrainingService/UploadCustomTrainingScript",
];

/// The request cardinality of a method.
pub fn requests(path: &str) -> Requests {
    if let Some(&client_streaming) = compiled().get(path) {
        return if client_streaming {
            Requests::Stream
        } else {
            Requests::Single
        };
    }
    if VIAM_STREAMING_REQUESTS.contains(&path) {
        return Requests::Stream;
    }
    if path.starts_with("/viam.") {
        return Requests::Single;
    }
    Requests::Stream
}

/// Method path -> client_streaming, from the compiled descriptor set (built once).
fn compiled() -> &'static HashMap<String, bool> {
    static TABLE: OnceLock<HashMap<String, bool>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = HashMap::new();
        let Ok(set) = prost_types::FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET)
        else {
            return table;
        };
        for file in set.file {
            let package = file.package.unwrap_or_default();
            for service in file.service {
                let name = service.name.unwrap_or_default();
                for method in service.method {
                    let path = format!("/{package}.{name}/{}", method.name.unwrap_or_default());
                    table.insert(path, method.client_streaming.unwrap_or(false));
                }
            }
        }
        table
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiled_methods_use_their_descriptor() {
        let single = [
            "/viam.component.motor.v1.MotorService/SetPower",
            "/viam.component.testecho.v1.TestEchoService/EchoMultiple",
            "/acme.component.counter.v1.CounterService/Watch",
            "/viam.robot.v1.RobotService/ResourceNames",
        ];
        for path in single {
            assert_eq!(requests(path), Requests::Single, "{path}");
        }
        let stream = [
            "/acme.component.counter.v1.CounterService/Add",
            "/acme.component.counter.v1.CounterService/Chat",
            "/viam.component.testecho.v1.TestEchoService/EchoBiDi",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ];
        for path in stream {
            assert_eq!(requests(path), Requests::Stream, "{path}");
        }
    }

    #[test]
    fn viam_api_defaults_to_single_and_custom_apis_to_stream() {
        assert_eq!(
            requests("/viam.component.arm.v1.ArmService/MoveToPosition"),
            Requests::Single
        );
        assert_eq!(
            requests("/viam.service.shell.v1.ShellService/Shell"),
            Requests::Stream
        );
        assert_eq!(
            requests("/acme.thing.v1.ThingService/Whatever"),
            Requests::Stream
        );
    }
}
