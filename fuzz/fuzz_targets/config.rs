//! Config parsing (`partgate::config`): arbitrary bytes as the config file, parsed and
//! validated as `partgate check-config` does, every problem rendered as it prints them; and
//! Go durations on their own (the input's first line).
//!
//! Validation reads the files a config names (TLS, CA, signing key, `${file:...}` secrets): a
//! document with a string naming something under `/dev`, `/proc` or `/sys` is only parsed, so
//! the fuzzer never reads `/dev/zero` or waits on `/dev/stdin` (what a config names is the
//! operator's choice).
#![no_main]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use libfuzzer_sys::fuzz_target;
use partgate::config::{Config, parse_go_duration};
use serde_json::Value;

/// Whether any string of the document (keys included, escapes decoded) names a special file.
fn names_special_files(value: &Value) -> bool {
    let special = |s: &str| ["/dev", "/proc", "/sys"].iter().any(|p| s.contains(p));
    match value {
        Value::String(s) => special(s),
        Value::Array(items) => items.iter().any(names_special_files),
        Value::Object(map) => map
            .iter()
            .any(|(k, v)| special(k) || names_special_files(v)),
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    // `Config::load` rejects a file that is not UTF-8 before parsing.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(line) = text.lines().next() {
        let _ = parse_go_duration(line);
    }
    let config = match Config::parse(text) {
        Ok(config) => config,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let _ = format!("{config:?}");
    match serde_json::from_str::<Value>(text) {
        Ok(doc) if !names_special_files(&doc) => {}
        _ => return,
    }
    match config.validate() {
        Ok(settings) => {
            let _ = format!("{settings:?}");
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
