//! Stage `route`, naming: how a part's resource names appear to clients, and how a client's name
//! is taken apart again.
//!
//! Receives names (`"sub1:motor1"`, `"a:b:arm"`, `"cell-m1"`, `"motor1"`) and a part's naming
//! rule; hands back the gateway-visible name or the pieces of a client name.

/// How one part's resources are named at the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Naming {
    /// The main part: names unchanged.
    Main,
    /// `"<part>:<name>"`; the bare name is accepted too when unique.
    PartColon,
    /// `"<prefix><name>"` (viam-server's `prefix` field).
    Prefix(String),
}

/// The name clients see for resource `local` of part `part`.
pub fn gateway_name(part: &str, naming: &Naming, local: &str) -> String {
    match naming {
        Naming::Main => local.to_owned(),
        Naming::PartColon => format!("{part}:{local}"),
        Naming::Prefix(prefix) => format!("{prefix}{local}"),
    }
}

/// Splits `"first:rest"` at the first colon; `None` for a bare name.
pub fn split_first_remote(name: &str) -> Option<(&str, &str)> {
    super::split_once_ascii(name, b':')
}

/// Normalised API key `namespace:type:subtype` with `_` removed from the subtype, so that a
/// proto package (`viam.component.movementsensor.v1`) and a subtype (`movement_sensor`) agree.
pub fn api_key(namespace: &str, kind: &str, subtype: &str) -> String {
    let subtype: String = subtype
        .chars()
        .filter(|c| *c != '_')
        .collect::<String>()
        .to_ascii_lowercase();
    format!("{namespace}:{kind}:{subtype}")
}

/// The API of a built-in Viam service, derived from its package
/// (`viam.component.motor.v1.MotorService` -> `rdk:component:motor`).
pub fn builtin_api_of_service(service: &str) -> Option<String> {
    let mut parts = service.split('.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("viam"), Some(kind @ ("component" | "service")), Some(subtype)) => {
            Some(api_key("rdk", kind, subtype))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_names_follow_the_naming_rule() {
        assert_eq!(gateway_name("main", &Naming::Main, "motor1"), "motor1");
        assert_eq!(
            gateway_name("sub1", &Naming::PartColon, "motor1"),
            "sub1:motor1"
        );
        assert_eq!(
            gateway_name("sub1", &Naming::PartColon, "b:arm"),
            "sub1:b:arm"
        );
        assert_eq!(
            gateway_name("cell", &Naming::Prefix("cell-".into()), "m1"),
            "cell-m1"
        );
    }

    #[test]
    fn split_pops_only_the_first_remote() {
        assert_eq!(split_first_remote("a:b:arm"), Some(("a", "b:arm")));
        assert_eq!(split_first_remote("sub1:motor1"), Some(("sub1", "motor1")));
        assert_eq!(split_first_remote("motor1"), None);
        assert_eq!(split_first_remote(":x"), Some(("", "x")));
        assert_eq!(split_first_remote("é:ü:"), Some(("é", "ü:")));
    }

    #[test]
    fn api_keys_agree_between_packages_and_subtypes() {
        assert_eq!(
            builtin_api_of_service("viam.component.movementsensor.v1.MovementSensorService"),
            Some(api_key("rdk", "component", "movement_sensor"))
        );
        assert_eq!(
            builtin_api_of_service("viam.service.vision.v1.VisionService"),
            Some(api_key("rdk", "service", "vision"))
        );
        assert_eq!(
            builtin_api_of_service("acme.component.counter.v1.CounterService"),
            None
        );
        assert_eq!(builtin_api_of_service("viam.robot.v1.RobotService"), None);
    }
}
