//! JSON logs of the real binary (`PARTGATE_LOG_FORMAT=json`) through a session that expires and
//! a reload: every line an object, numbers as JSON numbers (never `"2000"`), lists (parts added,
//! removed, re-dialed; WebRTC candidates) as JSON arrays.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;
use tonic::metadata::MetadataValue;

const BIN: &str = env!("CARGO_BIN_EXE_partgate");

/// A `partgate run` child whose stderr JSON lines arrive on a channel.
struct Gateway {
    proc: Spawned,
    seen: Vec<Value>,
}

impl Gateway {
    fn start(config: &std::path::Path) -> Self {
        let mut cmd = Command::new(BIN);
        cmd.args(["run", "--config", config.to_str().unwrap()])
            .env("PARTGATE_LOG_FORMAT", "json")
            .env("PARTGATE_LOG", "info");
        Self {
            proc: Spawned::spawn(&mut cmd),
            seen: Vec::new(),
        }
    }

    /// The first line (already read, or waited for) whose message starts with `message`;
    /// every line read must be JSON.
    fn wait(&mut self, message: &str, limit: Duration) -> Value {
        let matches = |v: &Value| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(message))
        };
        if let Some(seen) = self.seen.iter().find(|v| matches(v)) {
            return seen.clone();
        }
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .proc
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no {message:?} line; saw:\n{:#?}", self.seen));
            let value: Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            self.seen.push(value.clone());
            if matches(&value) {
                return value;
            }
        }
    }

    /// Waits for the process to exit (15 s at most), then reads what it wrote last.
    fn wait_exit(&mut self) -> Vec<Value> {
        self.proc.wait_exit(Duration::from_secs(15));
        while let Ok(line) = self.proc.lines.recv_timeout(Duration::from_millis(200)) {
            let value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            self.seen.push(value);
        }
        std::mem::take(&mut self.seen)
    }

    fn signal(&self, name: &str) {
        self.proc.signal(name);
    }
}

fn config(remotes: &[(&str, String)]) -> String {
    let remotes: Vec<Value> = remotes
        .iter()
        .map(|(name, address)| {
            serde_json::json!({"name": name, "address": address, "insecure": true,
                               "reconnect_interval": "100ms"})
        })
        .collect();
    serde_json::json!({
        "network": {"bind_address": "127.0.0.1:0"},
        "remotes": remotes,
        "gateway": {"main_part": "p1"},
    })
    .to_string()
}

/// A value that is a number or a list written as text: what the issue saw (`"window_ms":"2000"`,
/// `"added":"[\"a\"]"`).
fn typed_as_text(value: &Value) -> bool {
    value.as_str().is_some_and(|s| {
        s.parse::<f64>().is_ok()
            || (s.starts_with('[') && s.ends_with(']'))
            || s.starts_with("Some(")
    })
}

// Multi-threaded: waiting for the child's lines blocks one worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_fields_keep_their_types_through_a_session_and_a_reload() {
    let p1 = sim(spec("p1", &["m1"])).await;
    let p2 = sim(spec("p2", &["m2"])).await;
    let dir = std::env::temp_dir().join(format!("partgate-json-logs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("partgate.json");
    let gone = format!("127.0.0.1:{}", free_port());
    std::fs::write(
        &path,
        config(&[("p1", p1.addr().to_string()), ("gone", gone)]),
    )
    .unwrap();
    let mut gw = Gateway::start(&path);
    let bound = gw.wait("WebRTC endpoint bound", Duration::from_secs(30));
    let candidates = bound["candidates"]
        .as_array()
        .expect("candidates: an array");
    assert!(candidates.iter().all(Value::is_string), "{bound}");
    let listening = gw.wait("listening on ", Duration::from_secs(30));
    let addr: SocketAddr = listening["message"].as_str().unwrap()["listening on ".len()..]
        .parse()
        .unwrap();

    // A client session drives a motor, then stops heartbeating.
    let ch = channel(addr).await;
    let id = robot_client(&ch)
        .start_session(robot::StartSessionRequest::default())
        .await
        .unwrap()
        .into_inner()
        .id;
    let mut call = tonic::Request::new(set_power("m1", 0.5));
    call.metadata_mut()
        .insert("viam-sid", MetadataValue::try_from(id.as_str()).unwrap());
    motor_client(&ch).set_power(call).await.unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        let holding = gw.wait("holding a session with part", Duration::from_secs(10));
        assert!(holding["window_ms"].is_u64(), "{holding}");
        let expired = gw.wait("session expired", Duration::from_secs(10));
        assert!(expired["late_ms"].is_u64(), "{expired}");
        assert_eq!(expired["resources"], 1, "{expired}");

        // A reload that adds p2 and removes the part that was never there.
        std::fs::write(
            &path,
            config(&[("p1", p1.addr().to_string()), ("p2", p2.addr().to_string())]),
        )
        .unwrap();
        gw.signal("HUP");
        let reloaded = gw.wait("configuration reloaded", Duration::from_secs(10));
        assert_eq!(reloaded["added"], serde_json::json!(["p2"]), "{reloaded}");
        assert_eq!(
            reloaded["removed"],
            serde_json::json!(["gone"]),
            "{reloaded}"
        );
        assert_eq!(reloaded["redialed"], serde_json::json!([]), "{reloaded}");
        assert_eq!(reloaded["kept"], 1, "{reloaded}");
        gw.signal("TERM");
        let lines = gw.wait_exit();
        std::fs::remove_dir_all(&dir).ok();
        lines
    })
    .await
    .unwrap();

    assert!(
        lines.iter().any(|l| l["message"] == "stopped"),
        "{lines:#?}"
    );
    // No line anywhere writes a number or a list as a string.
    for line in &lines {
        let object = line.as_object().expect("one object per line");
        for (key, value) in object {
            if key != "message" {
                assert!(!typed_as_text(value), "{key} is typed as text in {line}");
            }
        }
        assert!(object["level"].is_string() && object["timestamp"].is_string());
    }
}
