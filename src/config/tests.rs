use super::*;

fn problems(text: &str) -> Vec<ConfigProblem> {
    match Config::parse(text).and_then(|c| c.validate()) {
        Err(ConfigError::Invalid(p)) => p,
        other => panic!("expected problems, got {other:?}"),
    }
}

#[test]
fn go_durations() {
    let cases = [
        ("1s", 1000),
        ("1m30s", 90_000),
        ("250ms", 250),
        ("1.5h", 5_400_000),
        ("0", 0),
        ("100us", 0),
        ("2h45m", 9_900_000),
    ];
    for (text, ms) in cases {
        assert_eq!(
            parse_go_duration(text).map(|d| d.as_millis()),
            Ok(ms),
            "{text}"
        );
    }
    for bad in ["", "10", "s", "1x", "-1s", "1s2", "1..5s"] {
        assert!(parse_go_duration(bad).is_err(), "{bad} should be rejected");
    }
}

#[test]
fn names() {
    for good in ["a", "sub-part", "Part_2", "9lives"] {
        assert!(valid_name(good), "{good}");
    }
    for bad in ["", "-a", "_a", "a:b", "a b", "a/b", &"x".repeat(61)] {
        assert!(!valid_name(bad), "{bad}");
    }
}

#[test]
fn defaults_apply() {
    let settings =
        Config::parse(r#"{"remotes":[{"name":"a","address":"127.0.0.1:1","insecure":true}]}"#)
            .and_then(|c| c.validate())
            .expect("valid");
    assert_eq!(settings.bind.to_string(), "0.0.0.0:8080");
    assert_eq!(settings.parts[0].check_interval, Duration::from_secs(10));
    assert_eq!(settings.parts[0].reconnect_interval, Duration::from_secs(1));
    assert_eq!(settings.max_message_size, 32 * 1024 * 1024);
    assert!(!settings.parts[0].main);
    assert_eq!(settings.idle_spin, Duration::ZERO);
    assert_eq!(settings.answer_spin, Duration::ZERO);
}

#[test]
fn the_spins_take_a_duration_up_to_a_millisecond() {
    for key in ["idle_spin", "answer_spin"] {
        let parse = |spin: &str| {
            Config::parse(&format!(
                r#"{{"remotes":[{{"name":"a","address":"127.0.0.1:1","insecure":true}}],
                    "gateway":{{"{key}":"{spin}"}}}}"#
            ))
            .and_then(|c| c.validate())
        };
        let of = |s: &Settings| match key {
            "idle_spin" => s.idle_spin,
            _ => s.answer_spin,
        };
        for (text, us) in [("100us", 100), ("1ms", 1000), ("0s", 0)] {
            let settings = parse(text).unwrap_or_else(|e| panic!("{key} {text}: {e}"));
            assert_eq!(of(&settings), Duration::from_micros(us), "{key} {text}");
        }
        for bad in ["2ms", "1s", "soon"] {
            match parse(bad) {
                Err(ConfigError::Invalid(found)) => {
                    assert_eq!(found.len(), 1, "{found:?}");
                    assert_eq!(found[0].path, format!("gateway.{key}"));
                }
                other => panic!("{key} {bad}: {other:?}"),
            }
        }
    }
}

#[test]
fn every_problem_is_reported_with_its_path() {
    let found = problems(
        r#"{
        "network": {"bind_address": "nowhere"},
        "remotes": [
            {"name": "a", "address": "127.0.0.1:1", "insecure": true, "reconnect_interval": "soon"},
            {"name": "a", "address": "nohost", "insecure": true},
            {"name": "-bad", "address": "h:2", "insecure": true, "prefix": "x:"}
        ],
        "gateway": {"main_part": "zzz"}
    }"#,
    );
    let paths: Vec<&str> = found.iter().map(|p| p.path.as_str()).collect();
    for expected in [
        "network.bind_address",
        "remotes[0].reconnect_interval",
        "remotes[1].name",
        "remotes[1].address",
        "remotes[2].name",
        "remotes[2].prefix",
        "gateway.main_part",
    ] {
        assert!(paths.contains(&expected), "missing {expected} in {paths:?}");
    }
}

#[test]
fn unknown_gateway_key_is_an_error_with_path() {
    match Config::parse(r#"{"gateway": {"main_prt": "a"}}"#) {
        Err(ConfigError::Parse { path, message }) => {
            assert_eq!(path, "gateway.main_prt");
            assert!(message.contains("main_prt"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn wrong_type_reports_path() {
    match Config::parse(r#"{"remotes": [{"name": "a", "address": 5}]}"#) {
        Err(ConfigError::Parse { path, .. }) => assert_eq!(path, "remotes[0].address"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn robot_config_blocks_are_tolerated() {
    let config = Config::parse(
        r#"{"components": [], "remotes": [{"name": "a", "address": "h:1", "insecure": true,
            "frame": {"parent": "world"}, "managed_by": {}}]}"#,
    )
    .expect("parses");
    assert!(config.ignored.contains_key("components"));
    assert!(config.validate().is_ok());
}

#[test]
fn duplicate_prefix_and_prefixed_main_are_rejected() {
    let found = problems(
        r#"{"remotes": [
            {"name": "a", "address": "h:1", "insecure": true, "prefix": "p-"},
            {"name": "b", "address": "h:2", "insecure": true, "prefix": "p-"}],
            "gateway": {"main_part": "a"}}"#,
    );
    let paths: Vec<&str> = found.iter().map(|p| p.path.as_str()).collect();
    assert!(paths.contains(&"remotes[1].prefix"), "{paths:?}");
    assert!(paths.contains(&"gateway.main_part"), "{paths:?}");
}

#[test]
fn secrets_never_print() {
    let config = Config::parse(
        r#"{"remotes": [{"name": "a", "address": "h:1", "insecure": true,
            "auth": {"entity": "e", "credentials": {"type": "api-key", "payload": "hunter2"}}}]}"#,
    )
    .expect("parses");
    assert!(!format!("{config:?}").contains("hunter2"));
}

#[test]
fn webrtc_block_defaults_and_problems() {
    let settings = Config::parse(r#"{"network": {"bind_address": "127.0.0.1:0"}}"#)
        .unwrap()
        .validate()
        .unwrap();
    let w = settings.webrtc.expect("enabled by default");
    assert_eq!(w.transport.bind_ip.to_string(), "127.0.0.1");
    assert_eq!(w.transport.max_peers, 256);
    assert_eq!(w.transport.connect_timeout, Duration::from_secs(10));
    assert!(w.ice_servers.is_empty());
    let off = Config::parse(r#"{"gateway": {"webrtc": {"enabled": false}}}"#)
        .unwrap()
        .validate()
        .unwrap();
    assert!(off.webrtc.is_none());
    let p = problems(
        r#"{"gateway": {"webrtc": {"udp_port_range": "9-1", "public_ips": ["x"],
            "ice_servers": [{"urls": ["http://x"], "credential": "hunter2"}], "max_peers": 0}}}"#,
    );
    let paths: Vec<_> = p.iter().map(|p| p.path.as_str()).collect();
    for path in [
        "gateway.webrtc.udp_port_range",
        "gateway.webrtc.public_ips[0]",
        "gateway.webrtc.ice_servers[0].urls[0]",
        "gateway.webrtc.max_peers",
    ] {
        assert!(paths.contains(&path), "{path} in {paths:?}");
    }
    let server: IceServerConfig =
        serde_json::from_str(r#"{"urls": ["turn:t"], "credential": "hunter2"}"#).unwrap();
    assert!(!format!("{server:?}").contains("hunter2"));
}

#[test]
fn listen_addresses_take_the_forms_viam_server_accepts() {
    for (text, want) in [
        ("0.0.0.0:8080", "0.0.0.0:8080"),
        ("127.0.0.1:0", "127.0.0.1:0"),
        (":8080", "0.0.0.0:8080"),
        // A host name goes through the system resolver (here /etc/hosts), IPv4 first.
        ("localhost:8080", "127.0.0.1:8080"),
        ("[::1]:8080", "[::1]:8080"),
        ("[::]:8080", "[::]:8080"),
    ] {
        assert_eq!(
            parse_listen_address(text).map(|a| a.to_string()),
            Ok(want.to_owned()),
            "{text}"
        );
    }
    for bad in [
        "nowhere",
        "8080",
        ":",
        ":http",
        "localhost:99999",
        "::1:8080",
        "[::1:8080",
        "a b:80",
    ] {
        assert!(
            parse_listen_address(bad).is_err(),
            "{bad} should be rejected"
        );
    }
}

#[test]
fn bind_and_admin_addresses_use_the_same_forms() {
    let settings = Config::parse(
        r#"{"network": {"bind_address": ":8080"}, "gateway": {"admin_address": "localhost:9090"}}"#,
    )
    .and_then(|c| c.validate())
    .expect("valid");
    assert_eq!(settings.bind.to_string(), "0.0.0.0:8080");
    assert_eq!(
        settings.admin.map(|a| a.to_string()).as_deref(),
        Some("127.0.0.1:9090")
    );
    assert_eq!(
        settings.bind_text, ":8080",
        "the address as written stays an auth entity"
    );
    let found = problems(
        r#"{"network": {"bind_address": "localhost:9090"}, "gateway": {"admin_address": "127.0.0.1:9090"}}"#,
    );
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].path, "gateway.admin_address");
    assert!(found[0].message.contains("must differ"), "{found:?}");
    let found = problems(r#"{"gateway": {"admin_address": "admin"}}"#);
    assert_eq!(found[0].path, "gateway.admin_address");
}

/// A config with an `auth` block whose handlers and remote credentials are given as JSON.
fn auth_config(handlers: &str, remote_secret: &str) -> String {
    format!(
        r#"{{"auth": {{"handlers": {handlers}}},
            "remotes": [{{"name": "a", "address": "h:1", "insecure": true, "secret": {remote_secret}}}]}}"#
    )
}

const GOOD_KEY: &str = "3f1c2a9b8e7d6c5b4a39281706f5e4d3";

#[test]
fn placeholder_and_short_client_secrets_are_refused_by_path_never_by_value() {
    let cases = [
        (
            r#"[{"type": "api-key", "config": {"k1": "REPLACE-ME"}}]"#.to_owned(),
            "auth.handlers[0].config.k1",
        ),
        (
            format!(
                r#"[{{"type": "api-key", "config": {{"k1": "{GOOD_KEY}", "k2": "please-change_me-now-0123"}}}}]"#
            ),
            "auth.handlers[0].config.k2",
        ),
        (
            format!(
                r#"[{{"type": "robot-location-secret", "config": {{"secrets": ["{GOOD_KEY}", "ChangeMe-ChangeMe-ChangeMe"]}}}}]"#
            ),
            "auth.handlers[0].config.secrets[1]",
        ),
        (
            r#"[{"type": "robot-location-secret", "config": {"secret": "short-secret"}}]"#
                .to_owned(),
            "auth.handlers[0].config.secrets[0]",
        ),
        (
            format!(
                r#"[{{"type": "api-key", "config": {{"k1": "{GOOD_KEY}"}}}}, {{"type": "api-key", "config": {{"k9": "0123456789abcde"}}}}]"#
            ),
            "auth.handlers[1].config.k9",
        ),
    ];
    for (handlers, path) in cases {
        let found = problems(&auth_config(&handlers, &format!("\"{GOOD_KEY}\"")));
        assert_eq!(found.len(), 1, "{handlers}: {found:?}");
        assert_eq!(found[0].path, path, "{handlers}");
        for value in [
            "REPLACE-ME",
            "change_me",
            "ChangeMe",
            "short-secret",
            "0123456789abcde",
        ] {
            assert!(
                !found[0].message.contains(value),
                "{found:?} shows the value"
            );
        }
    }
    // 16 bytes is enough; an empty key keeps its own message (not also "shorter").
    let ok = auth_config(
        r#"[{"type": "api-key", "config": {"k1": "0123456789abcdef"}}]"#,
        &format!("\"{GOOD_KEY}\""),
    );
    Config::parse(&ok)
        .and_then(|c| c.validate())
        .expect("16 bytes is enough");
    let empty = problems(&auth_config(
        r#"[{"type": "api-key", "config": {"k1": ""}}]"#,
        &format!("\"{GOOD_KEY}\""),
    ));
    assert!(empty[0].message.contains("non-empty"), "{empty:?}");
    assert!(
        !empty.iter().any(|p| p.message.contains("shorter")),
        "{empty:?}"
    );
}

#[test]
fn part_credentials_refuse_placeholders_but_not_short_secrets() {
    let handlers = format!(r#"[{{"type": "api-key", "config": {{"k1": "{GOOD_KEY}"}}}}]"#);
    // A part's secret is chosen by the part's owner: a short one is theirs to pick.
    Config::parse(&auth_config(&handlers, r#""s3cret""#))
        .and_then(|c| c.validate())
        .expect("a short part secret is accepted");
    let found = problems(&auth_config(&handlers, r#""REPLACE_ME""#));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].path, "remotes[0].secret");
    let found = problems(
        r#"{"remotes": [{"name": "a", "address": "h:1", "insecure": true,
            "auth": {"entity": "e", "credentials": {"type": "api-key", "payload": "changeme"}}}],
            "gateway": {"webrtc": {"ice_servers": [{"urls": ["turn:t"], "username": "u", "credential": "CHANGE-ME"}]}}}"#,
    );
    let paths: Vec<_> = found.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "remotes[0].auth.credentials.payload",
            "gateway.webrtc.ice_servers[0].credential"
        ]
    );
}

#[test]
fn placeholder_secret_files_are_refused_naming_the_file() {
    let dir = std::env::temp_dir().join(format!("partgate-placeholder-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("api-key");
    std::fs::write(&key_file, "REPLACE-ME\n").unwrap();
    let pem = dir.join("signing-key.pem");
    // The placeholder kubernetes/secret.yaml used to ship.
    std::fs::write(
        &pem,
        "-----BEGIN PRIVATE KEY-----\nREPLACE-ME: output of `partgate keygen`\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let config = format!(
        r#"{{"auth": {{"handlers": [{{"type": "api-key", "config": {{"k1": "${{file:{}}}"}}}}]}},
            "gateway": {{"signing_key_file": "{}"}}}}"#,
        key_file.display(),
        pem.display()
    );
    let found = problems(&config);
    let key = found
        .iter()
        .find(|p| p.path == "auth.handlers[0].config.k1")
        .unwrap_or_else(|| panic!("{found:?}"));
    assert!(
        key.message.contains(&key_file.display().to_string()),
        "{key:?}"
    );
    let signing = found
        .iter()
        .find(|p| p.path == "gateway.signing_key_file" && p.message.contains("placeholder"))
        .unwrap_or_else(|| panic!("{found:?}"));
    assert!(signing.message.contains("partgate keygen"), "{signing:?}");
    // A real key in the file is accepted.
    std::fs::write(&key_file, format!("{GOOD_KEY}\n")).unwrap();
    std::fs::write(&pem, crate::auth::token::generate_pem().unwrap()).unwrap();
    Config::parse(&config)
        .and_then(|c| c.validate())
        .expect("real secrets are accepted");
    std::fs::remove_dir_all(&dir).unwrap();
}
