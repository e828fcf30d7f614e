//! Generated protobuf and gRPC code for the Viam API subset partgate speaks, with what is
//! built only on it: the descriptor set and its reflection index ([`reflection`]), unary
//! messages on the wire ([`unary`]) and Viam's header and path names ([`wire`]).
//!
//! Sources live in `proto/` (our own files, with Viam's packages, names and field numbers) and
//! are compiled by `build.rs` with protox (no `protoc`).
#![allow(missing_docs)]

pub mod reflection;
pub mod unary;
pub mod wire;

/// Viam API packages (`viam.*`).
#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::nursery,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    unreachable_pub
)]
pub mod viam {
    pub mod common {
        pub mod v1 {
            tonic::include_proto!("viam.common.v1");
        }
    }
    pub mod robot {
        pub mod v1 {
            tonic::include_proto!("viam.robot.v1");
        }
    }
    pub mod component {
        pub mod motor {
            pub mod v1 {
                tonic::include_proto!("viam.component.motor.v1");
            }
        }
        pub mod sensor {
            pub mod v1 {
                tonic::include_proto!("viam.component.sensor.v1");
            }
        }
        pub mod generic {
            pub mod v1 {
                tonic::include_proto!("viam.component.generic.v1");
            }
        }
        pub mod testecho {
            pub mod v1 {
                tonic::include_proto!("viam.component.testecho.v1");
            }
        }
        pub mod board {
            pub mod v1 {
                tonic::include_proto!("viam.component.board.v1");
            }
        }
        pub mod audioout {
            pub mod v1 {
                tonic::include_proto!("viam.component.audioout.v1");
            }
        }
    }
}

/// partgate's own test API (`acme.component.counter.v1`), a stand-in for a
/// custom modular resource API.
#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::nursery,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    unreachable_pub
)]
pub mod acme {
    pub mod component {
        pub mod counter {
            pub mod v1 {
                tonic::include_proto!("acme.component.counter.v1");
            }
        }
    }
}

/// Standard gRPC services (`grpc.reflection.*`, `grpc.health.v1`).
#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::nursery,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    unreachable_pub
)]
pub mod grpc {
    pub mod reflection {
        pub mod v1alpha {
            tonic::include_proto!("grpc.reflection.v1alpha");
        }
        pub mod v1 {
            tonic::include_proto!("grpc.reflection.v1");
        }
    }
    pub mod health {
        pub mod v1 {
            tonic::include_proto!("grpc.health.v1");
        }
    }
}

/// Viam's RPC framework packages (`proto.rpc.v1`: authentication; `proto.rpc.webrtc.v1`).
#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::nursery,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    unreachable_pub
)]
pub mod rpc {
    pub mod v1 {
        tonic::include_proto!("proto.rpc.v1");
    }
    /// `proto.rpc.webrtc.v1`: signaling and gRPC over the data channel.
    pub mod webrtc {
        pub mod v1 {
            tonic::include_proto!("proto.rpc.webrtc.v1");
        }
    }
}

/// `google.rpc.Status`, as carried by WebRTC trailers and signaling errors.
#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::nursery,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    unreachable_pub
)]
pub mod google {
    /// `google.rpc`, written by hand: `build.rs` maps `.google.rpc` here (extern path), so
    /// prost generates no module for it; the fields mirror `proto/google/rpc/status.proto`.
    pub mod rpc {
        /// A gRPC status: code, developer message, typed details.
        #[derive(Clone, PartialEq, ::prost::Message)]
        pub struct Status {
            /// `google.rpc.Code` value.
            #[prost(int32, tag = "1")]
            pub code: i32,
            /// Developer-facing message.
            #[prost(string, tag = "2")]
            pub message: ::prost::alloc::string::String,
            /// Typed details.
            #[prost(message, repeated, tag = "3")]
            pub details: ::prost::alloc::vec::Vec<::prost_types::Any>,
        }
    }
}

/// Encoded `google.protobuf.FileDescriptorSet` of every proto above, including
/// the bundled well-known-type imports.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/partgate_descriptor.bin"));
