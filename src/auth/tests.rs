use super::*;

fn settings() -> AuthSettings {
    AuthSettings {
        location_secrets: vec![Secret::new("old".into()), Secret::new("new".into())],
        api_keys: HashMap::from([("key-1".to_owned(), Secret::new("k1".into()))]),
        api_key_parts: HashMap::from([("key-1".to_owned(), vec!["sub1".to_owned()])]),
        entities: vec!["gw.example.com".into()],
        audience: "gw.example.com".into(),
        ..AuthSettings::default()
    }
}

fn auth() -> Auth {
    Auth::new(
        settings(),
        "0.0.0.0:8080",
        "127.0.0.1:8080".parse().unwrap(),
    )
    .unwrap()
}

fn request(entity: &str, kind: &str, payload: &str) -> rpc::AuthenticateRequest {
    rpc::AuthenticateRequest {
        entity: entity.into(),
        credentials: Some(rpc::Credentials {
            r#type: kind.into(),
            payload: payload.into(),
        }),
    }
}

fn bearer(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    headers
}

#[test]
fn location_secrets_rotate_and_need_a_gateway_host_name() {
    let auth = auth();
    let none = HeaderMap::new();
    for (entity, secret) in [
        ("localhost:8080", "old"),
        ("gw.example.com", "new"),
        ("0.0.0.0:8080", "new"),
    ] {
        let token = auth
            .authenticate(&none, None, request(entity, LOCATION_SECRET, secret))
            .unwrap()
            .access_token;
        let principal = auth.verify(&bearer(&token)).unwrap();
        assert_eq!(principal.entity.as_deref(), Some(entity));
        assert!(principal.may_reach("any-part"));
    }
    let wrong_entity = auth.authenticate(
        &none,
        None,
        request("evil.example.com", LOCATION_SECRET, "new"),
    );
    assert_eq!(
        wrong_entity.unwrap_err(),
        GatewayError::Unauthenticated(AuthFailure::InvalidCredentials)
    );
    let wrong_secret = auth.authenticate(
        &none,
        None,
        request("localhost:8080", LOCATION_SECRET, "nope"),
    );
    assert_eq!(
        wrong_secret.unwrap_err(),
        GatewayError::Unauthenticated(AuthFailure::InvalidCredentials)
    );
}

#[test]
fn api_keys_use_the_key_id_as_entity_and_carry_their_scope() {
    let auth = auth();
    let none = HeaderMap::new();
    let token = auth
        .authenticate(&none, None, request("key-1", API_KEY, "k1"))
        .unwrap()
        .access_token;
    let principal = auth.verify(&bearer(&token)).unwrap();
    assert!(principal.may_reach("sub1") && !principal.may_reach("sub2"));
    for (entity, key) in [("key-1", "k2"), ("key-2", "k1")] {
        let err = auth
            .authenticate(&none, None, request(entity, API_KEY, key))
            .unwrap_err();
        assert_eq!(
            err,
            GatewayError::Unauthenticated(AuthFailure::InvalidCredentials),
            "unknown entity too"
        );
    }
}

#[test]
fn authenticate_errors_follow_goutils() {
    let auth = auth();
    let err = auth
        .authenticate(&bearer("x"), None, request("key-1", API_KEY, "k1"))
        .unwrap_err();
    assert_eq!(
        err,
        GatewayError::InvalidArgument("already authenticated; cannot re-authenticate".into())
    );
    let no_creds = rpc::AuthenticateRequest {
        entity: "x".into(),
        credentials: None,
    };
    assert_eq!(
        auth.authenticate(&HeaderMap::new(), None, no_creds)
            .unwrap_err(),
        GatewayError::InvalidArgument("credentials required".into())
    );
    let err = auth
        .authenticate(&HeaderMap::new(), None, request("x", "robot-secret", "y"))
        .unwrap_err();
    assert_eq!(
        err,
        GatewayError::InvalidArgument(
            "do not know how to handle credential type \"robot-secret\"".into()
        )
    );
}

#[test]
fn missing_malformed_and_foreign_tokens_are_unauthenticated() {
    let auth = auth();
    let err = auth.verify(&HeaderMap::new()).unwrap_err();
    assert_eq!(err, GatewayError::Unauthenticated(AuthFailure::Missing));
    let mut basic = HeaderMap::new();
    basic.insert(http::header::AUTHORIZATION, "Basic abc".parse().unwrap());
    assert_eq!(
        auth.verify(&basic).unwrap_err(),
        GatewayError::Unauthenticated(AuthFailure::Malformed)
    );
    let mut two = bearer("a");
    two.append(http::header::AUTHORIZATION, "Bearer b".parse().unwrap());
    assert!(matches!(
        auth.verify(&two),
        Err(GatewayError::Unauthenticated(_))
    ));
    let other = Auth::new(
        settings(),
        "0.0.0.0:8080",
        "127.0.0.1:8080".parse().unwrap(),
    )
    .unwrap();
    let foreign = other
        .authenticate(&HeaderMap::new(), None, request("key-1", API_KEY, "k1"))
        .unwrap()
        .access_token;
    assert!(matches!(
        auth.verify(&bearer(&foreign)),
        Err(GatewayError::Unauthenticated(_))
    ));
}

#[test]
fn repeated_failures_from_one_peer_are_slowed_down() {
    let auth = auth();
    let peer: IpAddr = [192, 0, 2, 7].into();
    let none = HeaderMap::new();
    for _ in 0..10 {
        let err = auth
            .authenticate(&none, Some(peer), request("key-1", API_KEY, "wrong"))
            .unwrap_err();
        assert!(matches!(err, GatewayError::Unauthenticated(_)));
    }
    let err = auth
        .authenticate(&none, Some(peer), request("key-1", API_KEY, "k1"))
        .unwrap_err();
    assert!(matches!(err, GatewayError::RateLimited(_)), "{err:?}");
    assert!(
        auth.authenticate(
            &none,
            Some([192, 0, 2, 8].into()),
            request("key-1", API_KEY, "k1")
        )
        .is_ok()
    );
}

#[test]
fn secrets_never_print() {
    let printed = format!("{:?}", settings());
    assert!(
        !printed.contains("old") && !printed.contains("k1"),
        "{printed}"
    );
}
