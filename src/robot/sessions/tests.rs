use super::*;

#[test]
fn knows_the_safety_monitored_methods() {
    let motor = monitored("/viam.component.motor.v1.MotorService/SetPower").expect("monitored");
    assert_eq!(
        motor,
        Monitored {
            service: "viam.component.motor.v1.MotorService",
            stoppable: true
        }
    );
    for path in [
        "/viam.component.arm.v1.ArmService/MoveThroughJointPositionsStreamed",
        "/viam.component.base.v1.BaseService/SetVelocity",
        "/viam.component.gripper.v1.GripperService/GoToInputs",
        "/viam.component.testecho.v1.TestEchoService/EchoMultiple",
    ] {
        assert!(monitored(path).is_some_and(|m| m.stoppable), "{path}");
    }
    let switch =
        monitored("/viam.component.switch.v1.SwitchService/SetPosition").expect("monitored");
    assert!(!switch.stoppable, "switches have no Stop");
    for path in [
        "/viam.component.motor.v1.MotorService/Stop",
        "/viam.component.motor.v1.MotorService/IsPowered",
        "/viam.robot.v1.RobotService/StopAll",
        "/acme.component.motor.v1.MotorService/SetPower",
        "viam.component.motor.v1.MotorService/SetPower",
        "",
    ] {
        assert_eq!(monitored(path), None, "{path}");
    }
}

#[test]
fn session_ids_must_be_one_uuid() {
    let mut headers = HeaderMap::new();
    assert_eq!(session_id(&headers), Ok(None));
    let id = Uuid::new_v4();
    headers.insert(
        SESSION_HEADER,
        HeaderValue::from_str(&id.to_string()).expect("header"),
    );
    assert_eq!(session_id(&headers), Ok(Some(id)));
    headers.append(
        SESSION_HEADER,
        HeaderValue::from_str(&id.to_string()).expect("header"),
    );
    assert_eq!(
        session_id(&headers),
        Err(GatewayError::SessionExpired),
        "two values"
    );
    for bad in [
        "",
        "not-a-uuid",
        "1234",
        "00000000-0000-0000-0000-00000000000g",
    ] {
        headers.insert(SESSION_HEADER, HeaderValue::from_static(bad));
        assert_eq!(
            session_id(&headers),
            Err(GatewayError::SessionExpired),
            "{bad:?}"
        );
    }
}

#[test]
fn table_keeps_deadlines_in_order_and_owners_apart() {
    let mut table = Table::default();
    let now = Instant::now();
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    for (id, owner, after) in [(a, Some("alice".to_owned()), 1), (b, None, 2)] {
        let deadline = now + Duration::from_secs(after);
        let session = Session {
            owner,
            deadline,
            peer: None,
            driven: HashSet::new(),
        };
        table.sessions.insert(id, session);
        table.deadlines.insert((deadline, id));
    }
    assert!(table.live(&a, &Some("alice".to_owned()), now));
    assert!(
        !table.live(&a, &None, now),
        "anonymous callers do not own alice's session"
    );
    assert!(!table.live(&b, &Some("alice".to_owned()), now));
    assert!(
        !table.live(&a, &Some("alice".to_owned()), now + Duration::from_secs(1)),
        "expired at its deadline"
    );
    table.extend(a, now + Duration::from_secs(3));
    assert_eq!(
        table.deadlines.len(),
        2,
        "extending replaces the old deadline"
    );
    assert_eq!(table.deadlines.first().map(|(_, id)| *id), Some(b));
}
