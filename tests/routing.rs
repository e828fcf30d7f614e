//! Routing by resource name through the real gateway to in-process parts over loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use support::*;
use tonic::Code;

#[tokio::test]
async fn lists_every_part_under_gateway_names() {
    let fleet = demo().await;
    let names = listed_names(&fleet.channel().await).await;
    for expected in [
        "motor1",
        "wheel",
        "temp",
        "gen1",
        "echo1",
        "sub1:motor1",
        "sub1:lift",
        "sub1:imu",
        "sub1:gen1",
        "sub1:c1",
        "sub2:lift",
        "sub2:imu",
        "cell-m1",
        "cell-temp",
    ] {
        assert!(
            names.contains(&expected.to_owned()),
            "{expected} missing from {names:?}"
        );
    }
    assert!(!names.iter().any(|n| n == "lift" || n == "m1"), "{names:?}");
}

#[tokio::test]
async fn pops_part_prefix_before_forwarding() {
    let fleet = demo().await;
    let ch = fleet.channel().await;
    let resp = motor_client(&ch)
        .do_command(do_command("sub1:motor1"))
        .await
        .expect("ok")
        .into_inner();
    assert_eq!(field(&resp, "part"), "sub1");
    assert_eq!(field(&resp, "name"), "motor1");
    motor_client(&ch)
        .set_power(set_power("sub1:motor1", 0.5))
        .await
        .expect("ok");
    assert_eq!(
        fleet.part("sub1").log().motor("motor1").map(|m| m.power),
        Some(0.5)
    );
    assert_eq!(
        fleet.part("main").log().motor("motor1").map(|m| m.power),
        Some(0.0),
        "main's motor1 untouched"
    );
}

#[tokio::test]
async fn prefix_strings_are_stripped() {
    let fleet = demo().await;
    let ch = fleet.channel().await;
    let resp = motor_client(&ch)
        .do_command(do_command("cell-m1"))
        .await
        .expect("ok")
        .into_inner();
    assert_eq!(
        (field(&resp, "part").as_str(), field(&resp, "name").as_str()),
        ("cell", "m1")
    );
    let mut sensors = sensor::sensor_service_client::SensorServiceClient::new(ch.clone());
    let readings = sensors
        .get_readings(common::GetReadingsRequest {
            name: "cell-temp".into(),
            extra: None,
        })
        .await
        .expect("ok")
        .into_inner();
    assert!(readings.readings.contains_key("value"));
    assert_eq!(
        fleet.part("cell").log().names_for("GetReadings"),
        vec!["temp"]
    );
}

#[tokio::test]
async fn nested_names_pop_one_level() {
    let fleet = demo().await;
    let ch = fleet.channel().await;
    let err = motor_client(&ch)
        .set_power(set_power("sub1:inner:arm", 1.0))
        .await
        .expect_err("part has no such motor");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert_eq!(
        fleet.part("sub1").log().names_for("SetPower"),
        vec!["inner:arm"]
    );
}

#[tokio::test]
async fn main_part_wins_bare_names() {
    let fleet = demo().await;
    let ch = fleet.channel().await;
    let resp = motor_client(&ch)
        .do_command(do_command("motor1"))
        .await
        .expect("ok")
        .into_inner();
    assert_eq!(field(&resp, "part"), "main");
}

#[tokio::test]
async fn bare_unique_name_reaches_its_part() {
    let fleet = demo().await;
    let ch = fleet.channel().await;
    let mut counters = counter::counter_service_client::CounterServiceClient::new(ch.clone());
    let resp = counters
        .get(counter::GetRequest { name: "c1".into() })
        .await
        .expect("ok")
        .into_inner();
    assert_eq!(resp.name, "c1");
    assert_eq!(fleet.part("sub1").log().names_for("Get"), vec!["c1"]);
}

#[tokio::test]
async fn bare_ambiguous_name_fails_naming_the_parts() {
    let fleet = demo().await;
    let ch = fleet.channel().await;
    let err = motor_client(&ch)
        .set_power(set_power("lift", 0.2))
        .await
        .expect_err("ambiguous");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("sub1") && err.message().contains("sub2"),
        "{}",
        err.message()
    );
    assert!(fleet.part("sub1").log().names_for("SetPower").is_empty());
}

#[tokio::test]
async fn unknown_name_is_not_found_and_empty_name_invalid() {
    let fleet = demo().await;
    let ch = fleet.channel().await;
    let err = motor_client(&ch)
        .set_power(set_power("nope", 0.2))
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);
    let err = motor_client(&ch)
        .set_power(set_power("", 0.2))
        .await
        .expect_err("empty");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = motor_client(&ch)
        .set_power(set_power("nosuchpart:x", 0.2))
        .await
        .expect_err("unknown part");
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn custom_apis_route_like_builtin_ones() {
    let fleet = demo().await;
    let ch = fleet.channel().await;
    let mut counters = counter::counter_service_client::CounterServiceClient::new(ch.clone());
    let resp = counters
        .get(counter::GetRequest {
            name: "sub1:c1".into(),
        })
        .await
        .expect("ok")
        .into_inner();
    assert_eq!(resp.name, "c1");
}

#[tokio::test]
async fn api_type_disambiguates_a_bare_name() {
    // "x" is a motor on part a and a sensor on part b: the API of the call decides.
    let mut a = spec("a", &["x"]);
    a.sensors = vec![];
    let mut b = spec("b", &[]);
    b.sensors = vec!["x".into()];
    let fleet = fleet(vec![(a, None), (b, None)], None, |_| {}).await;
    let ch = fleet.channel().await;
    motor_client(&ch)
        .set_power(set_power("x", 0.3))
        .await
        .expect("motor x on a");
    let mut sensors = sensor::sensor_service_client::SensorServiceClient::new(ch.clone());
    sensors
        .get_readings(common::GetReadingsRequest {
            name: "x".into(),
            extra: None,
        })
        .await
        .expect("sensor x on b");
    assert_eq!(fleet.part("a").log().names_for("SetPower"), vec!["x"]);
    assert_eq!(fleet.part("b").log().names_for("GetReadings"), vec!["x"]);
}

#[tokio::test]
async fn robot_methods_for_one_computer_go_to_the_main_part() {
    let fleet = demo().await;
    let ch = fleet.channel().await;
    robot_client(&ch)
        .frame_system_config(robot::FrameSystemConfigRequest::default())
        .await
        .expect("ok");
    assert_eq!(
        fleet
            .part("main")
            .log()
            .names_for("FrameSystemConfig")
            .len(),
        1
    );
    assert!(
        fleet
            .part("sub1")
            .log()
            .names_for("FrameSystemConfig")
            .is_empty()
    );
}

#[tokio::test]
async fn without_a_main_part_single_computer_methods_are_unimplemented() {
    let fleet = fleet(vec![(spec("a", &["m"]), None)], None, |_| {}).await;
    let ch = fleet.channel().await;
    let err = robot_client(&ch)
        .frame_system_config(robot::FrameSystemConfigRequest::default())
        .await
        .expect_err("no main");
    assert_eq!(err.code(), Code::Unimplemented);
}

#[tokio::test]
async fn sessions_are_answered_by_the_gateway() {
    let fleet = demo().await;
    let ch = fleet.channel().await;
    // The gateway owns client sessions (tests/sessions.rs has the behaviour).
    let started = robot_client(&ch)
        .start_session(robot::StartSessionRequest::default())
        .await
        .expect("StartSession")
        .into_inner();
    assert_eq!(started.heartbeat_window.map(|w| w.seconds), Some(2));
    robot_client(&ch)
        .send_session_heartbeat(robot::SendSessionHeartbeatRequest { id: started.id })
        .await
        .expect("heartbeat");
}
