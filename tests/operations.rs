//! Operations: metrics as calls happen, bounded labels, health and readiness, live reload, and
//! the binary's graceful shutdown, JSON logs and container healthcheck.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use http::StatusCode;
use support::*;
use tonic::Code;

const BIN: &str = env!("CARGO_BIN_EXE_partgate");
const SET_POWER: &str = "/viam.component.motor.v1.MotorService/SetPower";

fn two_parts() -> Vec<(PartSpec, Option<&'static str>)> {
    let mut a = spec("a", &["m1"]);
    a.counters = vec!["c1".into()];
    vec![(a, None), (spec("b", &["m2"]), None)]
}

// === metrics ===

#[tokio::test]
async fn metrics_count_calls_by_part_method_and_code() {
    let fleet = fleet(two_parts(), None, |_| {}).await;
    let ch = fleet.channel().await;
    let mut motors = motor_client(&ch);
    for _ in 0..3 {
        motors.set_power(set_power("a:m1", 0.5)).await.expect("ok");
    }
    let missing = motors.set_power(set_power("nope:m1", 0.5)).await;
    assert_eq!(missing.unwrap_err().code(), Code::NotFound);
    listed_names(&ch).await;

    let m = scrape(fleet.addr()).await;
    let a = [("part", "a"), ("method", SET_POWER)];
    assert_eq!(
        m.get("partgate_calls_started_total", &a),
        Some(3.0),
        "{}",
        m.text
    );
    assert_eq!(
        m.get(
            "partgate_calls_finished_total",
            &[a[0], a[1], ("code", "OK")]
        ),
        Some(3.0)
    );
    assert_eq!(m.get("partgate_call_duration_seconds_count", &a), Some(3.0));
    assert!(m.get("partgate_call_duration_seconds_sum", &a).unwrap() > 0.0);
    assert_eq!(m.get("partgate_calls_in_flight", &a), Some(0.0));
    assert!(m.get("partgate_request_bytes_total", &a).unwrap() >= 3.0 * 10.0);
    assert!(m.get("partgate_response_bytes_total", &a).unwrap() >= 3.0 * 5.0);
    // The unroutable call: no part, counted as a client-side rejection.
    let none = [
        ("part", "none"),
        ("method", SET_POWER),
        ("code", "NOT_FOUND"),
    ];
    assert_eq!(m.get("partgate_calls_finished_total", &none), Some(1.0));
    let rejected = [
        ("reason", "no_route"),
        ("source", "client"),
        ("part", "none"),
    ];
    assert_eq!(m.get("partgate_calls_rejected_total", &rejected), Some(1.0));
    // Answered by the gateway itself.
    let listed = [
        ("part", "none"),
        ("method", "/viam.robot.v1.RobotService/ResourceNames"),
    ];
    assert!(
        m.get(
            "partgate_calls_finished_total",
            &[listed[0], listed[1], ("code", "OK")]
        ) >= Some(1.0)
    );
    // Parts, process and build.
    for part in ["a", "b"] {
        assert_eq!(
            m.get("partgate_part_connected", &[("part", part)]),
            Some(1.0)
        );
        assert_eq!(
            m.get(
                "partgate_part_state",
                &[("part", part), ("state", "connected")]
            ),
            Some(1.0)
        );
        assert!(m.get("partgate_part_connects_total", &[("part", part)]) >= Some(1.0));
        assert_eq!(
            m.get("partgate_part_resources", &[("part", part)]),
            Some(1.0 + f64::from(part == "a"))
        );
        assert!(
            m.get(
                "partgate_part_resource_names_age_seconds",
                &[("part", part)]
            )
            .unwrap()
                < 60.0
        );
    }
    assert!(m.get("process_cpu_seconds_total", &[]).unwrap() > 0.0);
    assert!(m.get("process_open_fds", &[]).unwrap() > 3.0);
    assert!(m.get("process_resident_memory_bytes", &[]).unwrap() > 1e6);
    assert_eq!(
        m.get(
            "partgate_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    // No Accept header: the Prometheus text format (tests/prometheus.rs checks both formats).
    assert!(!m.text.contains("# EOF"), "{}", m.text);

    // More calls move the counters.
    motors.set_power(set_power("a:m1", 0.1)).await.expect("ok");
    let m2 = scrape(fleet.addr()).await;
    assert_eq!(m2.get("partgate_calls_started_total", &a), Some(4.0));
}

#[tokio::test]
async fn streams_are_in_flight_until_they_end_and_cancellation_is_counted() {
    let fleet = fleet(two_parts(), None, |_| {}).await;
    let ch = fleet.channel().await;
    let chat = "/acme.component.counter.v1.CounterService/Chat";
    let labels = [("part", "a"), ("method", chat)];
    let (tx, mut responses) = open_chat(&ch, "a:c1").await;
    chat_once(&tx, &mut responses, "a:c1", "hello")
        .await
        .unwrap();
    let m = scrape(fleet.addr()).await;
    assert_eq!(
        m.get("partgate_calls_in_flight", &labels),
        Some(1.0),
        "{}",
        m.text
    );
    // The client goes away mid-stream: the call ends as CANCELLED.
    drop(responses);
    drop(tx);
    wait_for_metric(
        fleet.addr(),
        "partgate_calls_finished_total",
        &[labels[0], labels[1], ("code", "CANCELLED")],
        1.0,
    )
    .await;
    let m = scrape(fleet.addr()).await;
    assert_eq!(m.get("partgate_calls_in_flight", &labels), Some(0.0));
}

#[tokio::test]
async fn cardinality_stays_bounded_under_random_method_names() {
    let fleet = fleet(two_parts(), None, |_| {}).await;
    let addr = fleet.addr();
    let before = scrape(addr).await.samples.len();
    let mut seed = 0x2545_f491_u64;
    for i in 0..200 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let path = match i % 4 {
            0 => format!("/viam.component.motor.v1.MotorService/Rnd{seed:x}"),
            1 => format!("/x{seed:x}.Svc/M{i}"),
            2 => format!("/viam.robot.v1.RobotService/Nope{seed:x}"),
            _ => SET_POWER.to_owned(),
        };
        // Random resource names too: unknown parts must not become label values.
        let body = grpc_frame(false, &encode(&set_power(&format!("p{seed:x}:m{i}"), 0.0)));
        raw_call(addr, true, grpc_request(addr, &path, body)).await;
    }
    let m = scrape(addr).await;
    for name in [
        "partgate_calls_started_total",
        "partgate_calls_finished_total",
    ] {
        let methods = m.label_values(name, "method");
        assert!(
            methods
                .iter()
                .all(|v| !v.contains("Rnd") && !v.contains("Nope") && !v.contains(".Svc")),
            "{methods:?}"
        );
        assert!(methods.contains("other"), "{methods:?}");
        let parts = m.label_values(name, "part");
        assert!(
            parts
                .iter()
                .all(|p| ["a", "b", "none"].contains(&p.as_str())),
            "{parts:?}"
        );
    }
    let after = m.samples.len();
    assert!(
        after - before < 60,
        "{before} -> {after} samples after 200 random methods"
    );
}

// === health, readiness, status ===

#[tokio::test]
async fn health_readiness_and_status_endpoints() {
    let mut fleet = fleet(two_parts(), None, |c| {
        c.gateway.admin_address = Some("127.0.0.1:0".into());
    })
    .await;
    let admin = fleet.gateway.admin_addr().expect("admin listener");
    for addr in [fleet.addr(), admin] {
        assert_eq!(
            http_get(addr, "/healthz").await,
            (StatusCode::OK, "ok\n".into())
        );
        assert_eq!(http_get(addr, "/readyz").await.0, StatusCode::OK);
        assert_eq!(
            http_get(addr, "/readyz?all_parts=1").await.0,
            StatusCode::OK
        );
        assert!(
            scrape(addr)
                .await
                .get("partgate_part_connected", &[("part", "a")])
                == Some(1.0)
        );
    }
    // Only operations on the admin port.
    assert_eq!(http_get(admin, "/nothing").await.0, StatusCode::NOT_FOUND);

    let (status, body) = http_get(admin, "/statusz").await;
    assert_eq!(status, StatusCode::OK);
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(json["phase"], "serving");
    let parts = json["parts"].as_array().unwrap();
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[0]["name"], "a");
    assert_eq!(parts[0]["state"], "connected");
    assert_eq!(parts[0]["resources"], 2);
    assert!(
        parts[0]["address"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert!(parts[0]["refresh_age_seconds"].as_f64().unwrap() < 60.0);

    // A part down: ready, but not with every part connected.
    let killed = fleet.kill("b").await;
    assert_eq!(http_get(admin, "/readyz").await.0, StatusCode::OK);
    let (status, body) = http_get(admin, "/readyz?all_parts=1").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("b"), "{body}");
    let json: serde_json::Value =
        serde_json::from_str(&http_get(admin, "/statusz").await.1).unwrap();
    assert_eq!(json["parts"][1]["state"], "disconnected");
    assert!(json["parts"][1]["last_error"].is_string());
    fleet.restart("b", killed).await;
    fleet.wait_connected().await;
    assert_eq!(
        http_get(admin, "/readyz?all_parts=1").await.0,
        StatusCode::OK
    );

    // Draining: not ready while in-flight calls finish.
    fleet
        .gateway
        .admin()
        .set_phase(partgate::ops::admin::Phase::Draining);
    let (status, body) = http_get(admin, "/readyz").await;
    assert_eq!(
        (status, body.as_str()),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: draining: shutting down\n"
        )
    );
}

#[tokio::test]
async fn statusz_reports_call_rates() {
    let fleet = fleet(two_parts(), None, |_| {}).await;
    let ch = fleet.channel().await;
    let mut motors = motor_client(&ch);
    for _ in 0..5 {
        motors.set_power(set_power("a:m1", 0.5)).await.expect("ok");
    }
    let _ = motors.set_power(set_power("a:nope", 0.5)).await;
    let json: serde_json::Value =
        serde_json::from_str(&http_get(fleet.addr(), "/statusz").await.1).unwrap();
    let a = &json["parts"][0];
    assert_eq!(a["calls_total"], 6);
    assert_eq!(a["calls_failed_total"], 1);
    assert!(a["calls_per_second"].as_f64().unwrap() > 0.0, "{a}");
}

/// GET `path` with `accept` (if any) over HTTP/1.1: status, headers and body as text.
async fn get_with(
    addr: SocketAddr,
    path: &str,
    accept: Option<&str>,
) -> (StatusCode, http::HeaderMap, String) {
    let resp = http_get_accepting(addr, path, accept).await;
    let body = String::from_utf8_lossy(&resp.body).into_owned();
    (resp.status, resp.headers, body)
}

fn header<'a>(headers: &'a http::HeaderMap, name: &str) -> &'a str {
    headers.get(name).map_or("", |v| v.to_str().unwrap_or(""))
}

async fn statusz(addr: SocketAddr) -> serde_json::Value {
    serde_json::from_str(&http_get(addr, "/statusz").await.1).unwrap()
}

#[tokio::test]
async fn statusz_puts_the_summary_first_and_counts_the_fleet() {
    let mut fleet = fleet(two_parts(), None, |_| {}).await;
    let (status, headers, body) = get_with(fleet.addr(), "/statusz", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&headers, "content-type"), "application/json");
    assert_eq!(header(&headers, "cache-control"), "no-store");
    // Summary first: a person (or `head`) reading the raw JSON sees it before the parts.
    let at = |key: &str| {
        body.find(&format!("\"{key}\":"))
            .unwrap_or_else(|| panic!("{key} missing: {body}"))
    };
    let order = [
        "version",
        "phase",
        "uptime_seconds",
        "counts",
        "last_reload",
        "parts",
    ];
    for pair in order.windows(2) {
        assert!(at(pair[0]) < at(pair[1]), "{pair:?} out of order: {body}");
    }

    // Calls in flight: an open stream holds one slot of part a.
    let ch = fleet.channel().await;
    let (tx, mut chat) = open_chat(&ch, "a:c1").await;
    chat_once(&tx, &mut chat, "a:c1", "hi").await.unwrap();
    // A client session counts once started.
    robot_client(&ch)
        .start_session(robot::StartSessionRequest::default())
        .await
        .expect("session starts");
    let json = statusz(fleet.addr()).await;
    let counts = &json["counts"];
    assert_eq!(counts["parts_total"], 2, "{json}");
    assert_eq!(counts["parts_connected"], 2, "{json}");
    assert_eq!(counts["parts_down"], 0, "{json}");
    assert_eq!(counts["calls_in_flight"], 1, "{json}");
    assert_eq!(counts["sessions"], 1, "{json}");
    assert_eq!(counts["webrtc_peers"], 0, "{json}");
    let a = &json["parts"][0];
    assert_eq!(a["transport"], "http2");
    assert_eq!(a["tls"], false);
    assert_eq!(a["calls_in_flight"], 1, "{a}");
    assert_eq!(json["parts"][1]["calls_in_flight"], 0);
    let latency = a["check_latency_ms"]
        .as_f64()
        .expect("a checked part has a latency");
    assert!(latency > 0.0 && latency < 5000.0, "{a}");
    drop((tx, chat));

    // Part b down: counted down, its session no longer held, its error shown.
    let killed = fleet.kill("b").await;
    let json = statusz(fleet.addr()).await;
    assert_eq!(json["counts"]["parts_connected"], 1, "{json}");
    assert_eq!(json["counts"]["parts_down"], 1, "{json}");
    let b = &json["parts"][1];
    assert_eq!(b["state"], "disconnected");
    assert_eq!(b["gateway_session"], false, "{b}");
    assert!(b["last_error"].is_string(), "{b}");
    drop(killed);
}

#[tokio::test]
async fn status_page_is_served_from_the_binary_with_a_strict_policy() {
    let fleet = fleet(two_parts(), None, |_| {}).await;
    let addr = fleet.addr();
    let browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
    for (path, accept, kind) in [
        ("/status", None, "text/html; charset=utf-8"),
        ("/", Some(browser), "text/html; charset=utf-8"),
        ("/status.js", None, "text/javascript; charset=utf-8"),
        ("/status.css", None, "text/css; charset=utf-8"),
        ("/status.svg", None, "image/svg+xml"),
    ] {
        let (status, headers, body) = get_with(addr, path, accept).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(header(&headers, "content-type"), kind, "{path}");
        let csp = header(&headers, "content-security-policy");
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "connect-src 'self'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe"), "{path}: {csp}");
        assert_eq!(header(&headers, "cache-control"), "no-store", "{path}");
        assert_eq!(header(&headers, "x-content-type-options"), "nosniff");
        assert!(!body.is_empty(), "{path}");
    }
    let (_, _, page) = get_with(addr, "/status", None).await;
    assert!(page.contains(r#"<script src="status.js""#), "{page}");
    // Tools asking for `/` keep the plain-text list, which names the page.
    let (status, headers, body) = get_with(addr, "/", Some("*/*")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(header(&headers, "content-type").starts_with("text/plain"));
    assert!(body.contains("/status "), "{body}");
    for missing in ["/status.html", "/status/", "/statusz.js", "/index.html"] {
        assert_eq!(
            get_with(addr, missing, Some(browser)).await.0,
            StatusCode::NOT_FOUND,
            "{missing}"
        );
    }
    let post = http::Request::post(format!("http://{addr}/status"))
        .header("host", addr.to_string())
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(
        raw_call(addr, false, post).await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
}

// === reload ===

/// Opens a bidi Chat stream to `name` (the first message goes out before the headers wait).
async fn open_chat(
    ch: &tonic::transport::Channel,
    name: &str,
) -> (
    tokio::sync::mpsc::Sender<counter::ChatRequest>,
    tonic::Streaming<counter::ChatResponse>,
) {
    let mut client = counter::counter_service_client::CounterServiceClient::new(ch.clone());
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(counter::ChatRequest {
        name: name.into(),
        text: "open".into(),
    })
    .await
    .unwrap();
    let mut responses = client
        .chat(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("chat opens")
        .into_inner();
    responses.next().await.expect("first answer").expect("ok");
    (tx, responses)
}

async fn chat_once(
    tx: &tokio::sync::mpsc::Sender<counter::ChatRequest>,
    responses: &mut tonic::Streaming<counter::ChatResponse>,
    name: &str,
    text: &str,
) -> Result<String, tonic::Status> {
    tx.send(counter::ChatRequest {
        name: name.into(),
        text: text.into(),
    })
    .await
    .map_err(|_| tonic::Status::unavailable("stream closed"))?;
    match tokio::time::timeout(Duration::from_secs(5), responses.next()).await {
        Ok(Some(Ok(resp))) => {
            assert_eq!(resp.text, text);
            Ok(resp.name)
        }
        Ok(Some(Err(status))) => Err(status),
        Ok(None) => Err(tonic::Status::unknown("stream ended")),
        Err(_) => panic!("no answer within 5 s"),
    }
}

async fn wait_for_metric(addr: SocketAddr, name: &str, labels: &[(&str, &str)], value: f64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = scrape(addr).await;
        if m.get(name, labels) == Some(value) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name}{labels:?} never reached {value}:\n{}",
            m.text
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn reload_adds_and_removes_parts_while_a_stream_to_a_kept_part_flows() {
    let fleet = fleet(two_parts(), None, |c| c.gateway.drain_timeout = "1s".into()).await;
    let ch = fleet.channel().await;
    let (tx, mut chat) = open_chat(&ch, "a:c1").await;
    let a_connects = fleet.gateway.pool().parts()[0].connects();

    let c = sim(spec("c", &["m3"])).await;
    let remotes = vec![fleet.config.remotes[0].clone(), remote("c", c.addr(), None)];
    let outcome = fleet
        .gateway
        .reload(with_remotes(&fleet.config, remotes))
        .await
        .expect("reload applies");
    assert_eq!(outcome.changes.added, ["c"]);
    assert_eq!(outcome.changes.removed, ["b"]);
    assert_eq!(outcome.changes.kept, ["a"]);
    assert!(outcome.changes.redialed.is_empty());
    assert!(outcome.needs_restart.is_empty());

    // The stream to the kept part goes on, on the same connection.
    for i in 0..3 {
        assert_eq!(
            chat_once(&tx, &mut chat, "a:c1", &format!("after {i}"))
                .await
                .unwrap(),
            "c1"
        );
    }
    assert_eq!(fleet.gateway.pool().parts()[0].connects(), a_connects);

    // The new part serves, the removed one is gone from routing, listing and metrics.
    wait_for("c listed", Duration::from_secs(5), || {
        fleet
            .gateway
            .pool()
            .table()
            .listing()
            .iter()
            .any(|(_, r)| r.name == "c:m3")
    })
    .await;
    let names = listed_names(&ch).await;
    assert!(
        names.contains(&"c:m3".to_owned()) && !names.contains(&"b:m2".to_owned()),
        "{names:?}"
    );
    let mut motors = motor_client(&ch);
    motors
        .set_power(set_power("c:m3", 0.2))
        .await
        .expect("new part serves");
    let gone = motors.set_power(set_power("b:m2", 0.2)).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    let m = scrape(fleet.addr()).await;
    assert!(
        m.label_values("partgate_part_connected", "part")
            .iter()
            .eq(["a", "c"].iter()),
        "{}",
        m.text
    );
    assert!(!m.text.contains("part=\"b\""), "{}", m.text);
    assert_eq!(
        m.get("partgate_config_reloads_total", &[("result", "success")]),
        Some(1.0)
    );

    let json: serde_json::Value =
        serde_json::from_str(&http_get(fleet.addr(), "/statusz").await.1).unwrap();
    assert_eq!(json["last_reload"]["ok"], true);
    assert_eq!(json["last_reload"]["added"][0], "c");
    assert_eq!(json["last_reload"]["removed"][0], "b");
}

#[tokio::test]
async fn a_changed_part_is_redialed_and_its_open_stream_drains_then_closes() {
    let fleet = fleet(two_parts(), None, |c| c.gateway.drain_timeout = "1s".into()).await;
    let ch = fleet.channel().await;
    let (tx, mut chat) = open_chat(&ch, "a:c1").await;
    let old = fleet.gateway.pool().parts()[0].clone();

    // Part a gets a prefix: a new connection; the open stream stays on the old one.
    let mut remotes = fleet.config.remotes.clone();
    remotes[0].prefix = Some("a-".into());
    let outcome = fleet
        .gateway
        .reload(with_remotes(&fleet.config, remotes))
        .await
        .unwrap();
    assert_eq!(outcome.changes.redialed, ["a"]);
    assert_eq!(outcome.changes.kept, ["b"]);
    assert!(!std::sync::Arc::ptr_eq(
        &old,
        &fleet.gateway.pool().parts()[0]
    ));
    assert_eq!(
        chat_once(&tx, &mut chat, "a:c1", "still here")
            .await
            .unwrap(),
        "c1"
    );
    let mut motors = motor_client(&ch);
    motors
        .set_power(set_power("a-m1", 0.3))
        .await
        .expect("new name routes");
    let names = listed_names(&ch).await;
    assert!(
        names.contains(&"a-m1".to_owned()) && !names.contains(&"a:m1".to_owned()),
        "{names:?}"
    );

    // After the drain timeout the old stream is ended by the gateway, not left hanging: the
    // client, sending nothing, is told within the drain time (the reload signal wakes the call
    // waiting on the part).
    let started = std::time::Instant::now();
    let ended = match tokio::time::timeout(Duration::from_secs(5), chat.next()).await {
        Ok(Some(Err(status))) => status,
        other => panic!("expected the stream to end with a status, got {other:?}"),
    };
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
    assert!(ended.message().contains("reload"), "{ended:?}");
    drop(tx);
}

#[tokio::test]
async fn invalid_reload_keeps_the_running_config_and_file_changes_apply() {
    let fleet = fleet(two_parts(), None, |_| {}).await;
    let dir = std::env::temp_dir().join(format!("partgate-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("fleet.json");
    std::fs::write(&path, "{ \"remotes\": [ {\"name\": \"bad name\"} ] }").unwrap();
    let err = fleet.gateway.reload_from_file(&path).await.unwrap_err();
    assert!(err.to_string().contains("remotes[0]"), "{err}");

    // Nothing changed: both parts still serve.
    let ch = fleet.channel().await;
    let mut motors = motor_client(&ch);
    motors
        .set_power(set_power("a:m1", 0.1))
        .await
        .expect("a still serves");
    motors
        .set_power(set_power("b:m2", 0.1))
        .await
        .expect("b still serves");
    let m = scrape(fleet.addr()).await;
    assert_eq!(
        m.get(
            "partgate_config_reloads_total",
            &[("result", "failure"), ("reason", "invalid")]
        ),
        Some(1.0)
    );
    assert_eq!(
        m.get("partgate_config_last_reload_successful", &[]),
        Some(0.0)
    );
    let json: serde_json::Value =
        serde_json::from_str(&http_get(fleet.addr(), "/statusz").await.1).unwrap();
    assert_eq!(json["last_reload"]["ok"], false);
    assert!(
        json["last_reload"]["error"]
            .as_str()
            .unwrap()
            .contains("remotes[0]"),
        "{json}"
    );

    // A watched file: writing a valid config with part b removed applies it.
    fleet
        .gateway
        .watch_config(path.clone(), Duration::from_millis(100));
    let a = &fleet.config.remotes[0];
    let config = serde_json::json!({
        "network": {"bind_address": "127.0.0.1:0"},
        "remotes": [{"name": "a", "address": a.address, "insecure": true,
                     "connection_check_interval": "1s", "reconnect_interval": "100ms"}],
    });
    std::fs::write(&path, config.to_string()).unwrap();
    wait_for(
        "b removed by the file watcher",
        Duration::from_secs(5),
        || fleet.gateway.pool().parts().len() == 1,
    )
    .await;
    // Unchanged part a kept its connection (same settings as at start).
    assert_eq!(fleet.gateway.pool().parts()[0].connects(), 1);
    let m = scrape(fleet.addr()).await;
    assert_eq!(
        m.get("partgate_config_last_reload_successful", &[]),
        Some(1.0)
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn restart_only_settings_are_reported_and_kept() {
    let fleet = fleet(two_parts(), None, |_| {}).await;
    let mut config = fleet.config.clone();
    config.network.bind_address = "127.0.0.1:1".into();
    config.gateway.max_concurrent_calls_per_part = 1;
    let outcome = fleet
        .gateway
        .reload(config.validate().unwrap())
        .await
        .unwrap();
    assert_eq!(outcome.needs_restart, ["network.bind_address"]);
    assert_eq!(outcome.changes.kept, ["a", "b"]);
    // The listener still answers on its address; the new per-part limit applies live.
    let ch = fleet.channel().await;
    let mut motors = motor_client(&ch);
    motors
        .set_power(set_power("a:m1", 0.1))
        .await
        .expect("serves");
    let (tx, mut chat) = open_chat(&ch, "a:c1").await;
    let shed = motors.set_power(set_power("a:m1", 0.1)).await.unwrap_err();
    assert_eq!(shed.code(), Code::ResourceExhausted, "{shed:?}");
    chat_once(&tx, &mut chat, "a:c1", "x").await.unwrap();
}

// === the binary ===

/// A `partgate run` child whose stderr lines arrive on a channel.
struct Running {
    proc: Spawned,
    seen: Vec<String>,
}

impl Running {
    fn start(config: &serde_json::Value, extra: &[&str], envs: &[(&str, &str)]) -> Self {
        Self::start_under(&[], config, extra, envs)
    }

    /// Like `start`, with the binary run by `wrapper` (a command and its arguments).
    fn start_under(
        wrapper: &[&str],
        config: &serde_json::Value,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "partgate-ops-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("partgate.json");
        std::fs::write(&path, config.to_string()).unwrap();
        let mut cmd = match wrapper {
            [] => Command::new(BIN),
            [program, args @ ..] => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(BIN);
                cmd
            }
        };
        cmd.args(["run", "--config", path.to_str().unwrap()])
            .args(extra)
            .env("NO_COLOR", "1")
            .env_remove("PARTGATE_LOG_FORMAT");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        Self {
            proc: Spawned::spawn(&mut cmd),
            seen: Vec::new(),
        }
    }

    /// Waits for a stderr line containing `needle` and returns it.
    fn wait_line(&mut self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.proc.lines.recv_timeout(left).unwrap_or_else(|_| {
                panic!("no line with {needle:?}; saw:\n{}", self.seen.join("\n"))
            });
            self.seen.push(line.clone());
            if line.contains(needle) {
                return line;
            }
        }
    }

    fn listening(&mut self) -> SocketAddr {
        let line = self.wait_line("listening on ", Duration::from_secs(30));
        let rest = line.split("listening on ").nth(1).unwrap();
        let addr: String = rest
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
            .collect();
        addr.parse().unwrap()
    }

    fn signal(&self, name: &str) {
        self.proc.signal(name);
    }

    fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        self.proc.wait_exit(limit)
    }

    fn rest_of_output(&mut self) -> Vec<String> {
        while let Ok(line) = self.proc.lines.recv_timeout(Duration::from_millis(200)) {
            self.seen.push(line);
        }
        self.seen.clone()
    }
}

fn run_config(remotes: serde_json::Value, gateway: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "network": {"bind_address": "127.0.0.1:0"},
        "remotes": remotes,
        "gateway": gateway,
    })
}

/// `gateway.idle_spin` and `gateway.answer_spin` end to end in the real binary (the park hook
/// is installed on its runtimes, not on a test's): the workers spend time polling after
/// calls, or for the part's answers, and `/metrics` counts each; both are off by default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spins_poll_around_calls_and_count_the_time() {
    let part = sim(spec("a", &["m1"])).await;
    let remotes = serde_json::json!([{"name": "a", "address": part.addr().to_string(),
                                      "insecure": true, "connection_check_interval": "30s"}]);
    let mut spun = Vec::new();
    for gateway in [
        serde_json::json!({"idle_spin": "1ms", "answer_spin": "0s"}),
        serde_json::json!({}),
        serde_json::json!({"answer_spin": "100us"}),
    ] {
        let mut gw = Running::start(&run_config(remotes.clone(), gateway), &[], &[]);
        let addr = gw.listening();
        let ch = channel(addr).await;
        let mut motors = motor_client(&ch);
        for _ in 0..20 {
            motors
                .set_power(set_power("a:m1", 0.3))
                .await
                .expect("call");
            // Idle between calls, longer than the window: each call's spin runs out.
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        let metrics = scrape(addr).await;
        let seconds = |name| metrics.get(name, &[]).expect("the series is exported");
        spun.push((
            seconds("partgate_worker_idle_spin_seconds_total"),
            seconds("partgate_worker_answer_spin_seconds_total"),
        ));
    }
    // Sanity bounds only: on a loaded machine one turn's yield can last a scheduler slice.
    // That each spin ends with its window is checked in `workers::tests`.
    let [
        (idle, answer),
        (default_idle, default_answer),
        (opt_idle, opt_answer),
    ] = spun[..]
    else {
        unreachable!()
    };
    assert!(idle > 0.0 && idle < 5.0, "idle spin after calls: {spun:?}");
    assert_eq!(answer, 0.0, "answer spin off: {spun:?}");
    assert_eq!(
        (default_idle, default_answer),
        (0.0, 0.0),
        "both off by default: {spun:?}"
    );
    assert_eq!(opt_idle, 0.0, "idle spin off: {spun:?}");
    assert!(
        opt_answer > 0.0 && opt_answer < 5.0,
        "answer spin when asked for: {spun:?}"
    );
}

/// The binary raises its open-file soft limit to the hard limit at start (a soft limit of 1,024
/// would lock clients out at ~1,000 idle sockets). Started with a soft limit of 256 (util-linux
/// `prlimit`, which leaves the hard limit as it is).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_file_limit_is_raised_to_the_hard_limit() {
    let part = sim(spec("a", &["m1"])).await;
    let remotes = serde_json::json!([{"name": "a", "address": part.addr().to_string(),
                                      "insecure": true}]);
    let config = run_config(remotes, serde_json::json!({}));
    let mut gw = Running::start_under(&["prlimit", "--nofile=256:"], &config, &[], &[]);
    gw.listening();
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", gw.proc.child.id())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files");
    let fields: Vec<&str> = line.split_whitespace().collect();
    // "Max open files <soft> <hard> files"
    assert_eq!(
        fields[3], fields[4],
        "soft limit raised to the hard one: {line}"
    );
}

// Multi-threaded: waiting for the child's log lines blocks one worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_an_in_flight_call_then_exits_zero() {
    let mut slow = spec("slow", &["m1"]);
    slow.delay = Some(Duration::from_millis(1500));
    let part = sim(slow).await;
    let config = run_config(
        serde_json::json!([{"name": "slow", "address": part.addr().to_string(), "insecure": true,
                            "connection_check_interval": "30s"}]),
        serde_json::json!({"drain_timeout": "10s"}),
    );
    let mut gw = Running::start(&config, &[], &[]);
    let addr = gw.listening();
    let ch = channel(addr).await;
    let call =
        tokio::spawn(async move { motor_client(&ch).set_power(set_power("slow:m1", 0.7)).await });
    // Let the call reach the part, then stop the gateway.
    wait_for("the call reaches the part", Duration::from_secs(10), || {
        part.log().names_for("SetPower").len() == 1
    })
    .await;
    let sent = Instant::now();
    gw.signal("TERM");
    let result = call.await.unwrap();
    assert!(result.is_ok(), "in-flight call cut: {result:?}");
    assert!(
        sent.elapsed() >= Duration::from_millis(500),
        "the call waited for the part"
    );
    let status = tokio::task::spawn_blocking(move || {
        let status = gw.wait_exit(Duration::from_secs(15));
        (status, gw.rest_of_output())
    })
    .await
    .unwrap();
    assert!(
        status.0.success(),
        "exit {:?}; log:\n{}",
        status.0,
        status.1.join("\n")
    );
    assert!(
        status.1.iter().any(|l| l.contains("stopped")),
        "{}",
        status.1.join("\n")
    );
    assert_eq!(part.log().motor("m1").map(|m| m.power), Some(0.7));
}

// Multi-threaded: waiting for the child's log lines blocks one worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_flips_once_the_config_is_loaded_and_parts_checked() {
    // A part that accepts connections and never answers: its first check takes 5 s.
    let target = sim(spec("hung", &["m1"])).await;
    let relay = Relay::start(target.addr()).await;
    relay.freeze(true);
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = run_config(
        serde_json::json!([{"name": "hung", "address": relay.addr.to_string(), "insecure": true}]),
        serde_json::json!({"admin_address": admin.to_string()}),
    );
    let mut gw = Running::start(&config, &[], &[]);
    gw.wait_line("operations endpoints on", Duration::from_secs(10));
    let (status, body) = http_get(admin, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("starting"), "{body}");
    assert_eq!(http_get(admin, "/healthz").await.0, StatusCode::OK);
    gw.listening();
    let (status, body) = http_get(admin, "/readyz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        http_get(admin, "/readyz?all_parts=1").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    relay.freeze(false);
    gw.signal("TERM");
    let status = tokio::task::spawn_blocking(move || gw.wait_exit(Duration::from_secs(15)))
        .await
        .unwrap();
    assert!(status.success());
}

// Multi-threaded: waiting for the child's log lines blocks one worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_parse_and_failed_calls_log_part_method_and_code() {
    let part = sim(spec("p1", &["m1"])).await;
    let config = run_config(
        serde_json::json!([
            {"name": "p1", "address": part.addr().to_string(), "insecure": true},
            {"name": "gone", "address": format!("127.0.0.1:{}", free_port()), "insecure": true,
             "secret": "hunter2-never-logged"},
        ]),
        serde_json::json!({}),
    );
    let mut gw = Running::start(&config, &[], &[("PARTGATE_LOG_FORMAT", "json")]);
    let addr = gw.listening();
    let ch = channel(addr).await;
    let mut motors = motor_client(&ch);
    motors.set_power(set_power("p1:m1", 0.2)).await.expect("ok");
    // A part that is down: UNAVAILABLE, logged at info with part, method and code.
    let down = motors.set_power(set_power("gone:m1", 0.2)).await;
    assert!(down.is_err());
    gw.signal("TERM");
    let lines = tokio::task::spawn_blocking(move || {
        assert!(gw.wait_exit(Duration::from_secs(15)).success());
        gw.rest_of_output()
    })
    .await
    .unwrap();
    let parsed: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        parsed
            .iter()
            .all(|v| v["level"].is_string() && v["timestamp"].is_string())
    );
    assert!(parsed.iter().any(|v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("listening on"))
    }));
    let failed = parsed
        .iter()
        .find(|v| v["message"] == "call failed" || v["message"] == "call rejected")
        .unwrap_or_else(|| panic!("no failed-call line in:\n{}", lines.join("\n")));
    assert_eq!(failed["method"], SET_POWER, "{failed}");
    assert!(failed["code"].is_string(), "{failed}");
    assert!(failed["part"].is_string(), "{failed}");
    assert!(
        !lines.iter().any(|l| l.contains("hunter2")),
        "a secret was logged"
    );
}

#[tokio::test]
async fn healthcheck_subcommand_probes_the_gateway() {
    let fleet = fleet(two_parts(), None, |_| {}).await;
    let url = format!("http://{}/healthz", fleet.addr());
    let probe = |url: String| {
        tokio::task::spawn_blocking(move || {
            Command::new(BIN)
                .args(["healthcheck", "--url", &url, "--timeout", "2"])
                .output()
                .unwrap()
        })
    };
    assert!(probe(url).await.unwrap().status.success());
    let ready = format!("http://{}/readyz?all_parts=1", fleet.addr());
    assert!(probe(ready).await.unwrap().status.success());
    let missing = format!("http://{}/missing", fleet.addr());
    assert!(!probe(missing).await.unwrap().status.success());
    let closed = format!("http://127.0.0.1:{}/healthz", free_port());
    let out = probe(closed).await.unwrap();
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}

#[test]
fn dockerfile_runtime_expectations_hold_for_the_binary() {
    // The full check (scripts/test) also runs the builder's release build; this runs the static
    // checks and the runtime stage against the debug binary.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/check-dockerfile");
    let out = Command::new("python3")
        .args([script, "--binary", BIN])
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("HEALTHCHECK passes"), "{stdout}");
}

#[tokio::test]
async fn with_auth_status_stays_on_the_admin_port() {
    let fleet = fleet(two_parts(), None, |c| {
        c.gateway.admin_address = Some("127.0.0.1:0".into());
        let handlers = serde_json::json!({
            "handlers": [{ "type": "robot-location-secret", "config": { "secret": "location-s3cret-0123" } }]
        });
        c.auth = Some(serde_json::from_value(handlers).unwrap());
    })
    .await;
    let admin = fleet.gateway.admin_addr().unwrap();
    let browser = Some("text/html,*/*;q=0.8");
    for path in [
        "/statusz",
        "/status",
        "/status.js",
        "/status.css",
        "/status.svg",
    ] {
        let (status, _, body) = get_with(fleet.addr(), path, browser).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        assert!(body.contains("admin_address"), "{body}");
        assert_eq!(
            get_with(admin, path, browser).await.0,
            StatusCode::OK,
            "{path}"
        );
    }
    // A browser at the main port's root gets the plain list, not the page.
    let (status, headers, body) = get_with(fleet.addr(), "/", browser).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        header(&headers, "content-type").starts_with("text/plain"),
        "{body}"
    );
    let (_, headers, _) = get_with(admin, "/", browser).await;
    assert!(header(&headers, "content-type").starts_with("text/html"));
    // Probes and scrapes need no credentials on either port.
    assert_eq!(http_get(fleet.addr(), "/readyz").await.0, StatusCode::OK);
    assert_eq!(http_get(fleet.addr(), "/metrics").await.0, StatusCode::OK);
}
