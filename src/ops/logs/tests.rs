//! Tests of the JSON log format: field types, spans, `log` records.

use super::*;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Collects what the formatter writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The JSON lines `log` writes under the formatter.
fn lines(log: impl FnOnce()) -> Vec<serde_json::Map<String, Value>> {
    let out = Captured::default();
    let writer = out.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .event_format(JsonLines)
        .fmt_fields(JsonLines)
        .finish();
    tracing::subscriber::with_default(subscriber, log);
    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn numbers_booleans_and_lists_keep_their_json_types() {
    let window = Duration::from_millis(2000);
    let names = vec!["a".to_owned(), "b \"quoted\"".to_owned()];
    let addrs: Vec<std::net::SocketAddr> = vec!["127.0.0.1:1".parse().unwrap()];
    let lines = lines(|| {
        tracing::info!(
            window_ms = window.as_millis(),
            ratio = 0.5,
            count = 3usize,
            delta = -4i64,
            ok = true,
            parts = %List(&names),
            candidates = %List(&addrs),
            debug_list = ?names,
            none = %List::<String>(&[]),
            text = "7",
            shown = %42,
            "a message [not a list]"
        );
    });
    let line = &lines[0];
    assert_eq!(line["window_ms"], serde_json::json!(2000));
    assert_eq!(line["ratio"], serde_json::json!(0.5));
    assert_eq!(line["count"], serde_json::json!(3));
    assert_eq!(line["delta"], serde_json::json!(-4));
    assert_eq!(line["ok"], serde_json::json!(true));
    assert_eq!(line["parts"], serde_json::json!(["a", "b \"quoted\""]));
    assert_eq!(line["candidates"], serde_json::json!(["127.0.0.1:1"]));
    assert_eq!(line["debug_list"], serde_json::json!(["a", "b \"quoted\""]));
    assert_eq!(line["none"], serde_json::json!([]));
    // Strings stay strings, whatever they look like; `%` is the caller saying "text".
    assert_eq!(line["text"], serde_json::json!("7"));
    assert_eq!(line["shown"], serde_json::json!("42"));
    assert_eq!(line["message"], serde_json::json!("a message [not a list]"));
    assert_eq!(line["level"], serde_json::json!("INFO"));
    assert!(
        line["target"]
            .as_str()
            .unwrap()
            .starts_with("partgate::ops::logs")
    );
    assert!(line["timestamp"].as_str().unwrap().ends_with('Z'));
    let keys: Vec<&str> = line.keys().map(String::as_str).collect();
    assert!(keys.contains(&"timestamp") && !keys.contains(&"spans"));
}

#[test]
fn span_fields_are_typed_too() {
    let lines = lines(|| {
        let span = tracing::info_span!(
            "webrtc_peer",
            peer = 7u64,
            tags = %List(&["x"]),
            state = tracing::field::Empty
        );
        span.record("state", 2u64);
        let _entered = span.enter();
        tracing::warn!(big = u128::MAX, "inside");
    });
    let line = &lines[0];
    assert_eq!(
        line["spans"],
        serde_json::json!([{"name": "webrtc_peer", "peer": 7, "tags": ["x"], "state": 2}])
    );
    // Past 64 bits a number is kept exactly, as text.
    assert_eq!(line["big"], serde_json::json!(u128::MAX.to_string()));
}

#[test]
fn log_records_keep_their_own_target() {
    use tracing_log::log;
    let lines = lines(|| {
        // What the LogTracer that `init()` installs does with each record.
        tracing_log::format_trace(
            &log::Record::builder()
                .level(log::Level::Warn)
                .target("rustls::conn")
                .args(format_args!("from the log crate"))
                .build(),
        )
        .unwrap();
    });
    let line = lines
        .iter()
        .find(|l| l["message"] == "from the log crate")
        .expect("the record is logged");
    assert_eq!(line["target"], "rustls::conn");
    assert_eq!(line["level"], "WARN");
    assert!(line.keys().all(|k| !k.starts_with("log.")), "{line:?}");
}

#[test]
fn readable_logs_show_lists_as_json_text() {
    assert_eq!(List(&["a", "b"]).to_string(), r#"["a","b"]"#);
    assert_eq!(List::<u8>(&[]).to_string(), "[]");
}
