//! gRPC server reflection through the gateway: listing is the fleet's union, symbol lookups go
//! to the part that knows the symbol, both protocol versions work, and dead or slow parts do not
//! stall discovery.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use partgate::Gateway;
use partgate::config::{Config, GatewaySettings, NetworkConfig};
use partgate::proto::grpc::reflection::{v1, v1alpha};
use partgate::upstream::pool::PartState;
use prost::Message;
use support::*;
use tonic::transport::Channel;

use v1::server_reflection_request::MessageRequest;
use v1::server_reflection_response::MessageResponse;

const COUNTER_SERVICE: &str = "acme.component.counter.v1.CounterService";
const MOTOR_SERVICE: &str = "viam.component.motor.v1.MotorService";

/// A gateway over simulated parts that a test can kill by name.
struct Rig {
    gateway: Gateway,
    parts: Vec<(String, Option<SimPart>)>,
}

impl Rig {
    async fn start(specs: Vec<(PartSpec, Option<&str>)>, main: &str) -> Self {
        let mut parts = Vec::new();
        let mut remotes = Vec::new();
        for (spec, prefix) in specs {
            let part = SimPart::start(spec.clone(), LOOPBACK.parse().unwrap())
                .await
                .expect("part starts");
            remotes.push(remote(&spec.name, part.addr(), prefix));
            parts.push((spec.name.clone(), Some(part)));
        }
        let config = Config {
            network: NetworkConfig {
                bind_address: LOOPBACK.into(),
                ..NetworkConfig::default()
            },
            remotes,
            gateway: GatewaySettings {
                main_part: Some(main.into()),
                ..GatewaySettings::default()
            },
            ..Config::default()
        };
        let gateway = Gateway::start(config.validate().expect("valid config"))
            .await
            .expect("gateway starts");
        wait_for("all parts connected", Duration::from_secs(10), || {
            gateway
                .pool()
                .parts()
                .iter()
                .all(|p| p.state() == PartState::Connected && p.reported().is_some())
        })
        .await;
        Self { gateway, parts }
    }

    /// The demo fleet of docs/contracts.md (main part `main`).
    async fn demo() -> Self {
        let specs = sim::demo_fleet()
            .into_iter()
            .map(|(prefix, spec)| (spec, prefix))
            .collect();
        Self::start(specs, "main").await
    }

    async fn channel(&self) -> Channel {
        channel(self.gateway.local_addr()).await
    }

    fn part(&self, name: &str) -> &SimPart {
        self.parts
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, p)| p.as_ref())
            .expect("a running part")
    }

    async fn kill(&mut self, name: &str) {
        let part = self
            .parts
            .iter_mut()
            .find(|(n, _)| n == name)
            .and_then(|(_, p)| p.take())
            .expect("a running part");
        part.kill().await;
    }
}

fn request(message: MessageRequest) -> v1::ServerReflectionRequest {
    v1::ServerReflectionRequest {
        host: "gateway.test".into(),
        message_request: Some(message),
    }
}

fn list() -> v1::ServerReflectionRequest {
    request(MessageRequest::ListServices(String::new()))
}

fn symbol(name: &str) -> v1::ServerReflectionRequest {
    request(MessageRequest::FileContainingSymbol(name.into()))
}

/// Sends every request on one v1 stream and collects the answers.
async fn ask_v1(
    ch: &Channel,
    reqs: Vec<v1::ServerReflectionRequest>,
) -> Vec<v1::ServerReflectionResponse> {
    let mut client = v1::server_reflection_client::ServerReflectionClient::new(ch.clone());
    let mut answers = client
        .server_reflection_info(futures_util::stream::iter(reqs))
        .await
        .expect("ServerReflectionInfo (v1)")
        .into_inner();
    let mut out = Vec::new();
    while let Some(answer) = answers.message().await.expect("answer") {
        out.push(answer);
    }
    out
}

/// The same over v1alpha, converted back to v1 types for the assertions.
async fn ask_v1alpha(
    ch: &Channel,
    reqs: Vec<v1::ServerReflectionRequest>,
) -> Vec<v1::ServerReflectionResponse> {
    let reqs: Vec<v1alpha::ServerReflectionRequest> = reqs
        .iter()
        .map(|r| v1alpha::ServerReflectionRequest::decode(r.encode_to_vec().as_slice()).unwrap())
        .collect();
    let mut client = v1alpha::server_reflection_client::ServerReflectionClient::new(ch.clone());
    let mut answers = client
        .server_reflection_info(futures_util::stream::iter(reqs))
        .await
        .expect("ServerReflectionInfo (v1alpha)")
        .into_inner();
    let mut out = Vec::new();
    while let Some(answer) = answers.message().await.expect("answer") {
        out.push(v1::ServerReflectionResponse::decode(answer.encode_to_vec().as_slice()).unwrap());
    }
    out
}

async fn ask_one(
    ch: &Channel,
    alpha: bool,
    req: v1::ServerReflectionRequest,
) -> v1::ServerReflectionResponse {
    let mut answers = if alpha {
        ask_v1alpha(ch, vec![req]).await
    } else {
        ask_v1(ch, vec![req]).await
    };
    assert_eq!(answers.len(), 1, "one answer per request");
    answers.remove(0)
}

fn services(resp: &v1::ServerReflectionResponse) -> Vec<String> {
    match &resp.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.iter().map(|s| s.name.clone()).collect()
        }
        other => panic!("expected a service list, got {other:?}"),
    }
}

/// Names of the files of a file-descriptor answer, requested file first.
fn files(resp: &v1::ServerReflectionResponse) -> Vec<String> {
    match &resp.message_response {
        Some(MessageResponse::FileDescriptorResponse(files)) => files
            .file_descriptor_proto
            .iter()
            .map(|raw| {
                prost_types::FileDescriptorProto::decode(raw.as_slice())
                    .expect("a FileDescriptorProto")
                    .name()
                    .to_owned()
            })
            .collect(),
        other => panic!("expected file descriptors, got {other:?}"),
    }
}

fn error_code(resp: &v1::ServerReflectionResponse) -> i32 {
    match &resp.message_response {
        Some(MessageResponse::ErrorResponse(e)) => {
            assert!(!e.error_message.is_empty());
            e.error_code
        }
        other => panic!("expected an error response, got {other:?}"),
    }
}

#[tokio::test]
async fn list_services_is_the_fleet_union_in_both_versions() {
    let fleet = Rig::demo().await;
    let ch = fleet.channel().await;
    for alpha in [true, false] {
        let resp = ask_one(&ch, alpha, list()).await;
        assert_eq!(resp.valid_host, "gateway.test");
        assert_eq!(resp.original_request, Some(list()));
        let names = services(&resp);
        for expected in [
            "viam.robot.v1.RobotService",
            MOTOR_SERVICE,
            "viam.component.sensor.v1.SensorService",
            "viam.component.generic.v1.GenericService",
            "viam.component.testecho.v1.TestEchoService",
            // Only sub1 runs the custom API.
            COUNTER_SERVICE,
            "grpc.reflection.v1alpha.ServerReflection",
            "grpc.reflection.v1.ServerReflection",
        ] {
            assert!(
                names.contains(&expected.to_owned()),
                "{expected} missing from {names:?}"
            );
        }
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(names, sorted, "sorted and deduplicated");
    }
    // Every connected part was asked.
    for part in ["main", "sub1", "sub2", "cell"] {
        assert!(
            !fleet.part(part).log().names_for("ListServices").is_empty(),
            "{part} was not asked"
        );
    }
}

#[tokio::test]
async fn custom_symbol_is_answered_by_the_part_that_knows_it() {
    let fleet = Rig::demo().await;
    let ch = fleet.channel().await;
    for alpha in [true, false] {
        for sym in [
            COUNTER_SERVICE,
            "acme.component.counter.v1.CounterService.Watch",
            "acme.component.counter.v1.AddRequest",
        ] {
            let resp = ask_one(&ch, alpha, symbol(sym)).await;
            assert_eq!(resp.original_request, Some(symbol(sym)));
            assert_eq!(resp.valid_host, "gateway.test");
            let names = files(&resp);
            assert!(
                names.first().is_some_and(|f| f.ends_with("counter.proto")),
                "{sym}: {names:?}"
            );
        }
    }
    // The main part does not know the custom API; sub1 answered.
    assert!(
        fleet
            .part("sub1")
            .log()
            .names_for("FileContainingSymbol")
            .contains(&COUNTER_SERVICE.to_owned())
    );
}

#[tokio::test]
async fn builtin_symbols_and_files_come_from_the_main_part_with_dependencies() {
    let fleet = Rig::demo().await;
    let ch = fleet.channel().await;
    let answers = ask_v1alpha(
        &ch,
        vec![
            symbol(MOTOR_SERVICE),
            request(MessageRequest::FileByFilename(
                "viam/common/v1/common.proto".into(),
            )),
            request(MessageRequest::FileByFilename(
                "partgate/test/v1/counter.proto".into(),
            )),
            request(MessageRequest::FileByFilename("no/such/file.proto".into())),
        ],
    )
    .await;
    assert_eq!(answers.len(), 4, "one answer per request, in order");
    let motor = files(&answers[0]);
    assert!(motor[0].ends_with("motor.proto"), "{motor:?}");
    assert!(
        motor.iter().any(|f| f == "viam/common/v1/common.proto"),
        "dependencies: {motor:?}"
    );
    assert_eq!(files(&answers[1])[0], "viam/common/v1/common.proto");
    assert_eq!(files(&answers[2])[0], "partgate/test/v1/counter.proto");
    assert_eq!(error_code(&answers[3]), 5);
    assert_eq!(
        fleet.part("main").log().names_for("FileContainingSymbol"),
        vec![MOTOR_SERVICE.to_owned()],
        "the main part owns the motor API and answers first"
    );
    assert!(
        fleet
            .part("sub1")
            .log()
            .names_for("FileContainingSymbol")
            .is_empty()
    );
}

#[tokio::test]
async fn unknown_symbol_is_not_found_in_both_versions() {
    let fleet = Rig::demo().await;
    let ch = fleet.channel().await;
    for alpha in [true, false] {
        let resp = ask_one(&ch, alpha, symbol("no.such.v1.Thing")).await;
        assert_eq!(resp.original_request, Some(symbol("no.such.v1.Thing")));
        assert_eq!(error_code(&resp), 5, "NOT_FOUND");
    }
    // The stream stays usable after a miss.
    let answers = ask_v1(
        &ch,
        vec![symbol("no.such.v1.Thing"), symbol(COUNTER_SERVICE)],
    )
    .await;
    assert_eq!(error_code(&answers[0]), 5);
    assert!(files(&answers[1])[0].ends_with("counter.proto"));
}

#[tokio::test]
async fn dead_part_does_not_stall_list_services() {
    let mut fleet = Rig::demo().await;
    let ch = fleet.channel().await;
    fleet.kill("sub1").await;
    let started = Instant::now();
    let resp = ask_one(&ch, true, list()).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    let names = services(&resp);
    assert!(names.contains(&MOTOR_SERVICE.to_owned()));
    assert!(
        !names.contains(&COUNTER_SERVICE.to_owned()),
        "only the dead part served the custom API: {names:?}"
    );
    // Its custom symbol is now unknown, and the answer is quick too.
    let started = Instant::now();
    assert_eq!(
        error_code(&ask_one(&ch, false, symbol(COUNTER_SERVICE)).await),
        5
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn slow_part_does_not_stall_list_services() {
    let slow = PartSpec {
        name: "slow".into(),
        counters: vec!["c1".into()],
        delay: Some(Duration::from_secs(5)),
        ..Default::default()
    };
    let fleet = Rig::start(
        vec![(spec("main", &["motor1"]), None), (slow, None)],
        "main",
    )
    .await;
    let ch = fleet.channel().await;
    let started = Instant::now();
    let names = services(&ask_one(&ch, true, list()).await);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert!(names.contains(&MOTOR_SERVICE.to_owned()));
    assert!(!names.contains(&COUNTER_SERVICE.to_owned()), "{names:?}");
}

#[tokio::test]
async fn symbol_falls_back_when_the_main_part_is_down() {
    let mut fleet = Rig::demo().await;
    let ch = fleet.channel().await;
    fleet.kill("main").await;
    let started = Instant::now();
    let resp = ask_one(&ch, false, symbol(MOTOR_SERVICE)).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert!(files(&resp)[0].ends_with("motor.proto"));
}
