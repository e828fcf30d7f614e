//! Prometheus from outside: `promtool` (Debian's `prometheus` package) checks what `/metrics`
//! serves in both formats after real traffic, the alert rules and their unit tests, and the
//! Prometheus config that loads them; the Grafana dashboard's queries name only metrics a real
//! scrape has. Without promtool these tests skip, except under CI (`CI=true`), where they fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use partgate::proto::rpc::v1 as rpc;
use partgate::proto::rpc::webrtc::v1 as signaling;
use support::*;
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

const KEY_ID: &str = "7d4b2c3a-0000-4000-8000-00000000000a";
const KEY: &str = "metrics-test-key";
/// What Prometheus v3 sends when `scrape_protocols` is left at its default.
const PROMETHEUS_V3_ACCEPT: &str = "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,\
    application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,\
    text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");

/// The `promtool` binary, or `None` (the test then skips) outside CI.
fn promtool() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("promtool"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "promtool is missing: .ci/run installs Debian's `prometheus` package"
        );
        eprintln!("skipped: no promtool (apt-get install prometheus)");
    }
    found
}

/// Runs promtool with `args`, feeding it `stdin`.
fn run(promtool: &Path, args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(promtool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text_of(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `GET /metrics` with an `Accept` header (or none): content type and body.
async fn scrape_as(addr: SocketAddr, accept: Option<&str>) -> (String, String) {
    let resp = http_get_accepting(addr, "/metrics", accept).await;
    assert_eq!(resp.status, http::StatusCode::OK);
    assert_eq!(resp.headers["vary"], "accept");
    let content_type = resp.headers["content-type"].to_str().unwrap().to_owned();
    (content_type, String::from_utf8(resp.body.to_vec()).unwrap())
}

/// Every family a text-format exposition declares, with its sample count.
fn families(text: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            out.insert(name.to_owned(), 0);
            current = Some((name.to_owned(), kind.to_owned()));
        } else if !line.starts_with('#') {
            let sample = line.split(['{', ' ']).next().unwrap();
            let (family, kind) = current.as_ref().expect("a sample before any TYPE line");
            let belongs = sample == family
                || (kind == "histogram"
                    && ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|s| sample.strip_prefix(family.as_str()) == Some(s)));
            assert!(belongs, "{sample} outside its family {family}");
            *out.get_mut(family).unwrap() += 1;
        }
    }
    out
}

/// The sample names of an exposition.
fn sample_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_owned())
        .collect()
}

/// Metric names a PromQL expression reads (the gateway's and the process's).
fn metric_names(expr: &str) -> BTreeSet<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("partgate_") || w.starts_with("process_"))
        .map(str::to_owned)
        .collect()
}

/// A client that sends its token, and a session id when it has one.
fn with_token(
    token: &str,
    session: Option<&str>,
) -> impl tonic::service::Interceptor + Clone + use<> {
    let bearer: MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
    let sid = session.map(|s| MetadataValue::try_from(s).unwrap());
    move |mut req: tonic::Request<()>| {
        req.metadata_mut().insert("authorization", bearer.clone());
        if let Some(sid) = &sid {
            req.metadata_mut().insert("viam-sid", sid.clone());
        }
        Ok(req)
    }
}

/// A TLS fleet with API keys, the parts' CA bundle and an admin port, after one of everything
/// the metrics count: calls (ok, failed, rejected), authentications (ok, failed), a signaling
/// call, a session that expired and had its motor stopped, and a reload.
async fn busy_fleet(pki: &TestPki) -> Fleet {
    let ca_file = pki.dir.join("ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    let fleet = fleet(
        vec![
            (spec("main", &["motor1"]), None),
            (spec("sub1", &["motor1"]), None),
        ],
        Some("main"),
        |c| {
            let handlers = serde_json::json!({
                "handlers": [{ "type": "api-key", "config": { KEY_ID: KEY } }]
            });
            c.auth = Some(serde_json::from_value(handlers).unwrap());
            c.network.tls_cert_file = Some(pki.cert.display().to_string());
            c.network.tls_key_file = Some(pki.key.display().to_string());
            c.gateway.parts_ca_file = Some(ca_file.display().to_string());
            c.gateway.admin_address = Some("127.0.0.1:0".into());
        },
    )
    .await;
    let port = fleet.addr().port();
    let ch: Channel = tls_channel(port, &pki.ca_pem).await.unwrap();
    let mut auth = rpc::auth_service_client::AuthServiceClient::new(ch.clone());
    let authenticate = |payload: &str| rpc::AuthenticateRequest {
        entity: KEY_ID.into(),
        credentials: Some(rpc::Credentials {
            r#type: "api-key".into(),
            payload: payload.into(),
        }),
    };
    let denied = auth.authenticate(authenticate("wrong")).await.unwrap_err();
    assert_eq!(denied.code(), Code::Unauthenticated);
    let token = auth
        .authenticate(authenticate(KEY))
        .await
        .unwrap()
        .into_inner()
        .access_token;

    // A session drives a motor, then its heartbeats stop: the gateway stops the motor.
    let mut robot = robot::robot_service_client::RobotServiceClient::with_interceptor(
        ch.clone(),
        with_token(&token, None),
    );
    let session = robot
        .start_session(robot::StartSessionRequest::default())
        .await
        .unwrap()
        .into_inner()
        .id;
    let mut motors = motor::motor_service_client::MotorServiceClient::with_interceptor(
        ch.clone(),
        with_token(&token, Some(&session)),
    );
    motors.set_power(set_power("motor1", 0.5)).await.unwrap();
    motors
        .set_power(set_power("sub1:motor1", 0.5))
        .await
        .unwrap();
    let missing = motors.set_power(set_power("nope:motor1", 0.5)).await;
    assert_eq!(missing.unwrap_err().code(), Code::NotFound);

    let mut signal = signaling::signaling_service_client::SignalingServiceClient::with_interceptor(
        ch.clone(),
        {
            let mut inner = with_token(&token, None);
            let host: MetadataValue<_> = format!("localhost:{port}").parse().unwrap();
            move |req: tonic::Request<()>| {
                let mut req = tonic::service::Interceptor::call(&mut inner, req)?;
                req.metadata_mut().insert("rpc-host", host.clone());
                Ok(req)
            }
        },
    );
    signal
        .optional_web_rtc_config(signaling::OptionalWebRtcConfigRequest {})
        .await
        .unwrap();

    let settings = fleet.config.clone().validate().unwrap();
    fleet.gateway.reload(settings).await.unwrap();
    wait_for(
        "the expired session's stops",
        Duration::from_secs(10),
        || {
            fleet.part("main").log().names_for("Stop").len() == 1
                && fleet.part("sub1").log().names_for("Stop").len() == 1
        },
    )
    .await;
    fleet
}

#[tokio::test]
async fn metrics_pass_promtool_in_both_formats_after_real_traffic() {
    let Some(promtool) = promtool() else { return };
    let pki = pki("prometheus");
    let fleet = busy_fleet(&pki).await;
    let admin = fleet.gateway.admin_addr().unwrap();

    // The Prometheus text format: for no Accept, curl's */*, and `text/plain; version=0.0.4`.
    let (content_type, text) = scrape_as(admin, Some("text/plain; version=0.0.4")).await;
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    for accept in [None, Some("*/*")] {
        let (other_type, _) = scrape_as(admin, accept).await;
        assert_eq!(other_type, content_type, "{accept:?}");
    }
    let empty: Vec<_> = families(&text)
        .into_iter()
        .filter(|(_, samples)| *samples == 0)
        .collect();
    assert!(
        empty.is_empty(),
        "families without samples: {empty:?}\n{text}"
    );
    for family in [
        "partgate_call_duration_seconds",
        "partgate_auth_attempts_total",
        "partgate_session_stops_total",
        "partgate_webrtc_signaling_calls_total",
        "partgate_config_reloads_total",
        "partgate_tls_certificate_expiry_timestamp_seconds",
        "partgate_build_info",
    ] {
        assert!(
            families(&text).contains_key(family),
            "{family} missing:\n{text}"
        );
    }
    let checked = run(&promtool, &["check", "metrics"], &text);
    assert!(checked.status.success(), "{}\n{text}", text_of(&checked));
    assert_eq!(text_of(&checked), "", "lint findings");

    // OpenMetrics, as Prometheus v3 asks for it, through promtool's OpenMetrics parser (the one
    // Prometheus scrapes with). Its backfill wants a timestamp on every sample.
    let (content_type, openmetrics) = scrape_as(admin, Some(PROMETHEUS_V3_ACCEPT)).await;
    assert_eq!(
        content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(openmetrics.ends_with("# EOF\n"));
    let stamped: String = openmetrics
        .lines()
        .map(|l| match l.starts_with('#') {
            true => format!("{l}\n"),
            false => format!("{l} 1700000000\n"),
        })
        .collect();
    let dir = pki.dir.join("openmetrics");
    let file = pki.dir.join("scrape.om");
    std::fs::write(&file, stamped).unwrap();
    let parsed = run(
        &promtool,
        &[
            "tsdb",
            "create-blocks-from",
            "openmetrics",
            file.to_str().unwrap(),
            dir.to_str().unwrap(),
        ],
        "",
    );
    assert!(
        parsed.status.success(),
        "{}\n{openmetrics}",
        text_of(&parsed)
    );
    // The issue this format split fixes: the text-format linter cannot read OpenMetrics.
    let confused = run(&promtool, &["check", "metrics"], &openmetrics);
    assert!(text_of(&confused).contains(r#"unknown metric type "info""#));
    // Both formats carry the same samples (the process series move between two scrapes).
    let stable = |s: &str| -> BTreeSet<String> {
        sample_names(s)
            .into_iter()
            .filter(|n| !n.starts_with("process_"))
            .collect()
    };
    assert_eq!(stable(&text), stable(&openmetrics));

    // The dashboard reads only what the gateway exports.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{DEPLOY}/grafana/partgate-dashboard.json")).unwrap(),
    )
    .unwrap();
    let names = sample_names(&text);
    let mut ids = HashMap::new();
    let mut read = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap();
        assert!(
            ids.insert(panel["id"].as_u64().unwrap(), title).is_none(),
            "{title}: id reused"
        );
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            let expr = target["expr"].as_str().unwrap();
            let used = metric_names(expr);
            assert!(!used.is_empty(), "{title}: {expr} reads no partgate metric");
            for name in used {
                assert!(
                    names.contains(&name),
                    "{title}: {name} is not exported\n{text}"
                );
                read.insert(name);
            }
        }
    }
    for name in [
        "partgate_sessions",
        "partgate_session_stops_total",
        "partgate_webrtc_peers",
        "partgate_webrtc_signaling_calls_total",
    ] {
        assert!(read.contains(name), "no panel shows {name}");
    }

    // So do the alerts.
    let rules = std::fs::read_to_string(format!("{DEPLOY}/prometheus/alerts.yml")).unwrap();
    let exprs = metric_names(&rules);
    assert!(exprs.len() >= 6, "{exprs:?}");
    for name in exprs {
        assert!(names.contains(&name), "alerts.yml: {name} is not exported");
    }
    std::fs::remove_dir_all(&pki.dir).ok();
}

#[test]
fn alert_rules_and_the_prometheus_config_pass_promtool() {
    let Some(promtool) = promtool() else { return };
    let rules = format!("{DEPLOY}/prometheus/alerts.yml");
    let checked = run(&promtool, &["check", "rules", &rules], "");
    assert!(checked.status.success(), "{}", text_of(&checked));
    let tests = format!("{DEPLOY}/prometheus/alerts.test.yml");
    let tested = run(&promtool, &["test", "rules", &tests], "");
    assert!(tested.status.success(), "{}", text_of(&tested));
    assert!(text_of(&tested).contains("SUCCESS"), "{}", text_of(&tested));
    // The config's rule_files resolve in the repository as in the container.
    let config = format!("{DEPLOY}/prometheus.yml");
    let checked = run(&promtool, &["check", "config", &config], "");
    assert!(checked.status.success(), "{}", text_of(&checked));
    assert!(
        text_of(&checked).contains("1 rule files found"),
        "{}",
        text_of(&checked)
    );
}
