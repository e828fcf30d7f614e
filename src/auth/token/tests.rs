//! Tests of the token signer and of the signing-key file diagnosis.

use super::*;

#[test]
fn issued_tokens_verify_and_carry_viam_claims() {
    let signer = Signer::new(None, "gw", None).unwrap();
    let token = signer.issue("key-id", "api-key").unwrap();
    let claims = signer.verify(&token).unwrap();
    assert_eq!(
        (claims.sub.as_str(), claims.rpc_creds_type.as_str()),
        ("key-id", "api-key")
    );
    assert_eq!(claims.aud, vec!["gw"]);
    assert!(
        claims.exp.is_none(),
        "no expiry by default: SDKs never refresh"
    );
}

#[test]
fn foreign_and_tampered_tokens_are_rejected() {
    let a = Signer::new(None, "gw", None).unwrap();
    let b = Signer::new(None, "gw", None).unwrap();
    let token = b.issue("x", "api-key").unwrap();
    assert!(a.verify(&token).is_err(), "another gateway's key");
    let mut tampered = a.issue("x", "api-key").unwrap();
    tampered.push('A');
    assert!(a.verify(&tampered).is_err());
    assert!(a.verify("not a jwt").is_err());
}

#[test]
fn a_shared_key_file_lets_replicas_accept_each_others_tokens() {
    let pem = generate_pem().unwrap();
    let a = Signer::new(Some(pem.as_bytes()), "gw", None).unwrap();
    let b = Signer::new(Some(pem.as_bytes()), "gw", None).unwrap();
    assert!(b.verify(&a.issue("x", "api-key").unwrap()).is_ok());
    let other_audience = Signer::new(Some(pem.as_bytes()), "other", None).unwrap();
    assert!(
        other_audience
            .verify(&a.issue("x", "api-key").unwrap())
            .is_err()
    );
}

#[test]
fn expiry_applies_only_with_a_lifetime() {
    let signer = Signer::new(None, "gw", Some(Duration::from_secs(3600))).unwrap();
    let claims = signer
        .verify(&signer.issue("x", "api-key").unwrap())
        .unwrap();
    assert!(claims.exp.is_some());
    let expired = Signer::new(None, "gw", Some(Duration::ZERO)).unwrap();
    let token = expired.issue("x", "api-key").unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    assert!(expired.verify(&token).is_err());
}

/// The error text for a key file's contents.
fn why(pem: &[u8]) -> String {
    Signer::new(Some(pem), "gw", None).unwrap_err().to_string()
}

#[test]
fn bad_key_files_say_what_they_hold_instead() {
    const PREFIX: &str = "not a PEM Ed25519 private key (PKCS#8): ";
    let placeholder = "-----BEGIN PRIVATE KEY-----\n  REPLACE-ME: output of `partgate keygen`\n-----END PRIVATE KEY-----\n";
    let rsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)
        .unwrap()
        .serialize_pem();
    let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .unwrap()
        .serialize_pem();
    let good = generate_pem().unwrap();
    let body: Vec<&str> = good.lines().collect();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            placeholder.into(),
            "line 2 holds placeholder text (REPLACE-ME), not base64; make one with `partgate keygen`",
        ),
        (
            b"REPLACE-ME\n".to_vec(),
            "found placeholder text (REPLACE-ME) instead of a key; make one with `partgate keygen`",
        ),
        (
            Vec::new(),
            "the file is empty; make one with `partgate keygen`",
        ),
        (
            b" \n\n".to_vec(),
            "the file is empty; make one with `partgate keygen`",
        ),
        (
            rsa.into(),
            "found an RSA key; tokens are signed with Ed25519: make one with `partgate keygen`",
        ),
        (
            ec.into(),
            "found an EC key; tokens are signed with Ed25519: make one with `partgate keygen`",
        ),
        (
            rsa_pkcs1_framing(&good).into(),
            "found an RSA private key (PKCS#1); tokens are signed with Ed25519: make one with `partgate keygen`",
        ),
        (
            b"garbage".to_vec(),
            "no -----BEGIN PRIVATE KEY----- line; make one with `partgate keygen`",
        ),
        (
            vec![0x30, 0x82, 0xff, 0xfe],
            "the file is binary, not PEM text (a DER key? PEM is expected)",
        ),
        (
            good.replacen(body[1], &format!("{}-x", body[1]), 1).into(),
            "line 2 is not base64 (it has a '-')",
        ),
        (
            good.replacen(body[body.len() - 1], "", 1).into(),
            "the PRIVATE KEY block has no -----END PRIVATE KEY----- line",
        ),
        (
            good.replacen(body[body.len() - 2], &body[body.len() - 2][3..], 1)
                .into(),
            "the base64 text of the PRIVATE KEY block is cut short or badly padded",
        ),
        (
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into(),
            "found a CERTIFICATE, not a private key; make one with `partgate keygen`",
        ),
        (
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n"
                .into(),
            "found an encrypted private key; the gateway needs it unencrypted",
        ),
        (
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into(),
            "the PRIVATE KEY block holds no Ed25519 key (another algorithm, or damaged); tokens are signed with Ed25519: make one with `partgate keygen`",
        ),
    ];
    for (pem, want) in cases {
        assert_eq!(
            why(&pem),
            format!("{PREFIX}{want}"),
            "{}",
            String::from_utf8_lossy(&pem)
        );
    }
}

#[test]
fn key_errors_never_repeat_the_key() {
    let good = generate_pem().unwrap();
    let secret_line = good.lines().nth(1).unwrap();
    // A real key with one broken line, and an RSA key: no piece of either in the text.
    let broken = good.replacen(secret_line, &format!("{secret_line}!"), 1);
    let rsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)
        .unwrap()
        .serialize_pem();
    for pem in [broken, rsa] {
        let text = why(pem.as_bytes());
        for line in pem.lines().filter(|l| !l.starts_with("-----")) {
            for chunk in line.as_bytes().chunks(8).filter(|c| c.len() == 8) {
                let chunk = std::str::from_utf8(chunk).unwrap();
                assert!(!text.contains(chunk), "{text} repeats {chunk}");
            }
        }
    }
}

/// A PKCS#8 body under the PKCS#1 label, as a mislabelled file would be.
fn rsa_pkcs1_framing(pem: &str) -> String {
    pem.replace("PRIVATE KEY", "RSA PRIVATE KEY")
}
