//! Compiles the `.proto` files under `proto/` with protox (pure Rust, no
//! system `protoc`) and generates prost messages plus tonic clients/servers.
//! Also writes the encoded `FileDescriptorSet` to
//! `$OUT_DIR/partgate_descriptor.bin` for reflection and method tables.

use std::{env, error::Error, fs, path::PathBuf};

const PROTOS: &[&str] = &[
    "viam/common/v1/common.proto",
    "viam/robot/v1/robot.proto",
    "viam/component/motor/v1/motor.proto",
    "viam/component/sensor/v1/sensor.proto",
    "viam/component/generic/v1/generic.proto",
    "viam/component/testecho/v1/testecho.proto",
    "viam/component/board/v1/board.proto",
    "viam/component/audioout/v1/audioout.proto",
    "partgate/test/v1/counter.proto",
    "grpc/reflection/v1alpha/reflection.proto",
    "grpc/reflection/v1/reflection.proto",
    "grpc/health/v1/health.proto",
    "rpc/v1/auth.proto",
    "google/rpc/status.proto",
    "rpc/webrtc/v1/signaling.proto",
    "rpc/webrtc/v1/grpc.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=build.rs");

    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler
        .include_source_info(true)
        .include_imports(true)
        .open_files(PROTOS)?;

    // Encode through protox rather than `prost_types`: the latter drops custom
    // options such as `viam.common.v1.safety_heartbeat_monitored`.
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("partgate_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    let fds = compiler.file_descriptor_set();

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        .generate_default_stubs(true)
        // Packet payloads stay `Bytes`: decoding a data-channel frame slices, never copies.
        .bytes(".proto.rpc.webrtc.v1.PacketMessage.data")
        // `google.rpc.Status` is written by hand in src/lib.rs (see there).
        .extern_path(".google.rpc", "crate::google::rpc")
        .compile_fds(fds)?;

    Ok(())
}
