use super::*;

fn res(subtype: &str, name: &str) -> Resource {
    Resource {
        namespace: "rdk".into(),
        kind: "component".into(),
        subtype: subtype.into(),
        name: name.into(),
    }
}

fn report(items: &[(&str, &str)]) -> Option<Arc<PartResources>> {
    Some(Arc::new(PartResources {
        resources: items.iter().map(|(s, n)| res(s, n)).collect(),
        subtypes: vec![],
    }))
}

/// The demo fleet: main, sub1, sub2, cell (prefix "cell-").
fn fleet() -> RouteTable {
    let parts = vec![
        PartInfo {
            name: "main".into(),
            naming: Naming::Main,
        },
        PartInfo {
            name: "sub1".into(),
            naming: Naming::PartColon,
        },
        PartInfo {
            name: "sub2".into(),
            naming: Naming::PartColon,
        },
        PartInfo {
            name: "cell".into(),
            naming: Naming::Prefix("cell-".into()),
        },
    ];
    let reported = vec![
        report(&[("motor", "motor1"), ("motor", "wheel"), ("sensor", "temp")]),
        report(&[
            ("motor", "motor1"),
            ("motor", "lift"),
            ("sensor", "imu"),
            ("sensor", "only1"),
        ]),
        report(&[("motor", "lift"), ("sensor", "imu"), ("motor", "temp")]),
        report(&[("motor", "m1"), ("sensor", "temp")]),
    ];
    RouteTable::build(&parts, &reported)
}

const MOTOR: &str = "viam.component.motor.v1.MotorService";
const SENSOR: &str = "viam.component.sensor.v1.SensorService";

#[test]
fn part_colon_pops_the_part() {
    assert_eq!(
        fleet().resolve("sub1:motor1", MOTOR),
        Ok(Route { part: 1, strip: 5 })
    );
}

#[test]
fn nested_names_pop_one_level() {
    // "sub1:b:arm" goes to sub1 as "b:arm", even though sub1 never listed it.
    assert_eq!(
        fleet().resolve("sub1:b:arm", "viam.component.arm.v1.ArmService"),
        Ok(Route { part: 1, strip: 5 })
    );
}

#[test]
fn prefix_strings_route_and_strip() {
    assert_eq!(
        fleet().resolve("cell-m1", MOTOR),
        Ok(Route { part: 3, strip: 5 })
    );
    assert_eq!(
        fleet().resolve("cell-temp", SENSOR),
        Ok(Route { part: 3, strip: 5 })
    );
    // Unknown to the cache but carrying the prefix: still goes to that part.
    assert_eq!(
        fleet().resolve("cell-new", MOTOR),
        Ok(Route { part: 3, strip: 5 })
    );
}

#[test]
fn main_part_wins_bare_names() {
    assert_eq!(
        fleet().resolve("motor1", MOTOR),
        Ok(Route { part: 0, strip: 0 })
    );
}

#[test]
fn bare_unique_name_goes_to_its_part() {
    assert_eq!(
        fleet().resolve("only1", SENSOR),
        Ok(Route { part: 1, strip: 0 })
    );
}

#[test]
fn bare_ambiguous_names_fail_naming_parts() {
    match fleet().resolve("lift", MOTOR) {
        Err(GatewayError::Ambiguous { parts, .. }) => assert_eq!(parts, vec!["sub1", "sub2"]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn api_disambiguates_bare_names() {
    // "temp" is main's sensor and sub2's motor: the motor API picks sub2.
    assert_eq!(
        fleet().resolve("temp", MOTOR),
        Ok(Route { part: 2, strip: 0 })
    );
    assert_eq!(
        fleet().resolve("temp", SENSOR),
        Ok(Route { part: 0, strip: 0 })
    );
}

#[test]
fn unknown_names_are_not_found() {
    assert!(matches!(
        fleet().resolve("nope", MOTOR),
        Err(GatewayError::NotFound { .. })
    ));
    assert!(matches!(
        fleet().resolve("sub1:", MOTOR),
        Err(GatewayError::NotFound { .. })
    ));
    assert!(matches!(
        fleet().resolve("", MOTOR),
        Err(GatewayError::NotFound { .. })
    ));
    assert!(matches!(
        fleet().resolve("cell-", MOTOR),
        Err(GatewayError::NotFound { .. })
    ));
}

#[test]
fn unknown_first_segment_falls_back_to_full_name() {
    // A main part running legacy RDK lists its own remotes' resources as "r:arm".
    let parts = vec![PartInfo {
        name: "main".into(),
        naming: Naming::Main,
    }];
    let table = RouteTable::build(&parts, &[report(&[("arm", "r:arm")])]);
    assert_eq!(
        table.resolve("r:arm", "viam.component.arm.v1.ArmService"),
        Ok(Route { part: 0, strip: 0 })
    );
}

#[test]
fn unreached_main_part_takes_bare_names() {
    let parts = vec![
        PartInfo {
            name: "main".into(),
            naming: Naming::Main,
        },
        PartInfo {
            name: "sub1".into(),
            naming: Naming::PartColon,
        },
    ];
    let table = RouteTable::build(&parts, &[None, report(&[("motor", "x")])]);
    assert_eq!(
        table.resolve("anything", MOTOR),
        Ok(Route { part: 0, strip: 0 })
    );
    assert_eq!(table.resolve("x", MOTOR), Ok(Route { part: 1, strip: 0 }));
}

#[test]
fn listing_uses_gateway_names() {
    let names: Vec<String> = fleet()
        .listing()
        .iter()
        .map(|(_, r)| r.name.clone())
        .collect();
    for expected in [
        "motor1",
        "wheel",
        "temp",
        "sub1:motor1",
        "sub1:lift",
        "sub2:imu",
        "cell-m1",
        "cell-temp",
    ] {
        assert!(
            names.contains(&expected.to_owned()),
            "{expected} missing from {names:?}"
        );
    }
    assert!(!names.contains(&"lift".to_owned()));
}

#[test]
fn learned_subtypes_map_custom_services() {
    let parts = vec![
        PartInfo {
            name: "a".into(),
            naming: Naming::PartColon,
        },
        PartInfo {
            name: "b".into(),
            naming: Naming::PartColon,
        },
    ];
    let counter = Resource {
        namespace: "acme".into(),
        kind: "component".into(),
        subtype: "counter".into(),
        name: String::new(),
    };
    let a = PartResources {
        resources: vec![Resource {
            name: "c1".into(),
            ..counter.clone()
        }],
        subtypes: vec![(
            counter.clone(),
            "acme.component.counter.v1.CounterService".into(),
        )],
    };
    let b = PartResources {
        resources: vec![res("motor", "c1")],
        subtypes: vec![],
    };
    let table = RouteTable::build(&parts, &[Some(Arc::new(a.clone())), Some(Arc::new(b))]);
    assert_eq!(
        table.resolve("c1", "acme.component.counter.v1.CounterService"),
        Ok(Route { part: 0, strip: 0 })
    );
    assert_eq!(table.subtypes().len(), 1);
}
