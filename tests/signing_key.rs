//! `gateway.signing_key_file` as a user meets it: `partgate check-config` says what is wrong with
//! the file (a placeholder, an empty file, an RSA key, garbage) with its path, never Rust debug
//! text and never a byte of the key.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_partgate");

/// `partgate check-config` on a config whose signing key file holds `key`: success and stderr.
fn check_with_key(dir: &Path, name: &str, key: &[u8]) -> (bool, String, String) {
    let key_path = dir.join(format!("{name}.pem"));
    std::fs::write(&key_path, key).unwrap();
    let config = serde_json::json!({
        "network": {"bind_address": "127.0.0.1:0"},
        "auth": {"handlers": [{"type": "api-key", "config": {"key-id": "a-long-random-api-key-value"}}]},
        "gateway": {"signing_key_file": key_path.to_str().unwrap()},
    });
    let config_path = dir.join(format!("{name}.json"));
    std::fs::write(&config_path, config.to_string()).unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config", config_path.to_str().unwrap()])
        .output()
        .expect("runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        key_path.display().to_string(),
    )
}

#[test]
fn check_config_says_what_is_wrong_with_the_signing_key_file() {
    let dir = std::env::temp_dir().join(format!("partgate-signing-key-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)
        .unwrap()
        .serialize_pem();
    // The Kubernetes secret template's placeholder, as `kubectl apply` would mount it.
    let placeholder = "-----BEGIN PRIVATE KEY-----\nREPLACE-ME: output of `partgate keygen`\n-----END PRIVATE KEY-----\n";
    let cases: [(&str, &[u8], &str); 4] = [
        (
            "placeholder",
            placeholder.as_bytes(),
            "line 2 holds placeholder text (REPLACE-ME), not base64; make one with `partgate keygen`",
        ),
        (
            "empty",
            b"",
            "the file is empty; make one with `partgate keygen`",
        ),
        (
            "rsa",
            rsa.as_bytes(),
            "found an RSA key; tokens are signed with Ed25519: make one with `partgate keygen`",
        ),
        (
            "garbage",
            b"\x01\x02 not a key at all",
            "no -----BEGIN PRIVATE KEY----- line; make one with `partgate keygen`",
        ),
    ];
    for (name, key, why) in cases {
        let (ok, stderr, path) = check_with_key(&dir, name, key);
        assert!(!ok, "{name}: accepted");
        let want = format!(
            "gateway.signing_key_file: {path} is not a PEM Ed25519 private key (PKCS#8): {why}"
        );
        assert!(
            stderr.contains(&want),
            "{name}: want {want:?} in:\n{stderr}"
        );
        assert!(
            !stderr.contains("InvalidCharacter") && !stderr.contains("Base64"),
            "{name}: debug text in:\n{stderr}"
        );
    }
    // Not one line of the RSA key's body comes back.
    let (_, stderr, _) = check_with_key(&dir, "rsa-again", rsa.as_bytes());
    for line in rsa.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!stderr.contains(line), "key material in:\n{stderr}");
    }
    // And a key from `partgate keygen` passes.
    let keygen = Command::new(BIN).arg("keygen").output().expect("runs");
    assert!(keygen.status.success());
    let (ok, stderr, _) = check_with_key(&dir, "good", &keygen.stdout);
    assert!(ok, "{stderr}");
    std::fs::remove_dir_all(&dir).ok();
}
