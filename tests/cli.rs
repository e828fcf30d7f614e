//! The `partgate` binary as a user runs it: check-config, run, demo.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_partgate");

fn check(path: &str) -> std::process::Output {
    Command::new(BIN)
        .args(["check-config", "--config", path])
        // examples/webrtc.json reads its TURN credential from the environment, as a real
        // config should (placeholders such as "change-me" are refused).
        .env(
            "PARTGATE_TURN_CREDENTIAL",
            "turn-credential-from-the-environment",
        )
        .output()
        .expect("runs")
}

#[test]
fn every_example_config_is_valid() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let out = check(path.to_str().unwrap());
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            seen += 1;
        }
    }
    assert!(seen >= 3, "examples found: {seen}");
}

#[test]
fn bad_config_lists_every_problem_with_its_path_and_fails() {
    let dir = std::env::temp_dir().join(format!("partgate-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.json");
    std::fs::write(
        &bad,
        r#"{"remotes": [{"name": "a b", "address": "x", "insecure": true},
                        {"name": "ok", "address": "h:1", "insecure": true, "reconnect_interval": "often"}],
            "gateway": {"main_part": "zz"}}"#,
    )
    .unwrap();
    let out = check(bad.to_str().unwrap());
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for path in [
        "remotes[0].name",
        "remotes[0].address",
        "remotes[1].reconnect_interval",
        "gateway.main_part",
    ] {
        assert!(stderr.contains(path), "{path} missing in: {stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");

    std::fs::write(&bad, "{ not json").unwrap();
    let out = check(bad.to_str().unwrap());
    assert!(!out.status.success());
    let missing = check(dir.join("missing.json").to_str().unwrap());
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read"));
}

#[test]
fn run_with_a_bad_config_exits_nonzero_without_panicking() {
    let out = Command::new(BIN)
        .args(["run", "--config", "/nonexistent/partgate.json"])
        .env("NO_COLOR", "1")
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}

#[test]
fn demo_logs_listening_and_stops_cleanly_on_sigterm() {
    let mut child = Command::new(BIN)
        .args(["demo", "--bind", "127.0.0.1:0"])
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawns");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("listening line in time");
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.trim().to_owned();
        }
    };
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    std::net::TcpStream::connect(&addr).expect("accepts connections");
    // SIGTERM, by this child's own pid.
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status:?}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
