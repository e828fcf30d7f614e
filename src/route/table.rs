//! Stage `route`, by name: the immutable snapshot of which part serves which name.
//!
//! Receives the configured parts and each part's last known resource list (rebuilt whenever one
//! changes, swapped in atomically); hands [`RouteTable::resolve`] answers to the call path and
//! the fleet-wide listing to the robot service.

use std::collections::HashSet;
use std::sync::Arc;

use super::hash::TableMap;
use super::resource_name::{
    Naming, api_key, builtin_api_of_service, gateway_name, split_first_remote,
};
use crate::error::GatewayError;

/// A resource as a part lists it (`common.v1.ResourceName`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Resource {
    /// `rdk`, or a module's namespace.
    pub namespace: String,
    /// `component` or `service`.
    pub kind: String,
    /// `motor`, `sensor`, ...
    pub subtype: String,
    /// The resource's name.
    pub name: String,
}

/// What a part told us about itself at its last refresh.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartResources {
    /// `ResourceNames`.
    pub resources: Vec<Resource>,
    /// `ResourceRPCSubtypes`: the API (name empty) and its proto service.
    pub subtypes: Vec<(Resource, String)>,
}

/// One configured part as the table sees it.
#[derive(Debug, Clone)]
pub struct PartInfo {
    /// Configured name.
    pub name: String,
    /// How its resources are named at the gateway.
    pub naming: Naming,
}

/// Where a call goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// Index of the part in config order.
    pub part: usize,
    /// How many leading bytes of the client's name to remove before forwarding.
    pub strip: usize,
}

#[derive(Debug, Clone)]
struct Candidate {
    part: usize,
    api: String,
    strip: usize,
}

/// The routing snapshot.
#[derive(Debug, Default)]
pub struct RouteTable {
    parts: Vec<PartInfo>,
    part_index: TableMap<String, usize>,
    names: TableMap<String, Vec<Candidate>>,
    prefixes: Vec<(String, usize)>,
    service_api: TableMap<String, String>,
    main: Option<usize>,
    main_loaded: bool,
    listing: Vec<(usize, Resource)>,
    subtypes: Vec<(Resource, String)>,
}

// === impl RouteTable ===

impl RouteTable {
    /// Builds the table from the parts (config order) and what each last reported (`None`: never
    /// reached).
    pub fn build(parts: &[PartInfo], reported: &[Option<Arc<PartResources>>]) -> Self {
        let mut table = Self {
            parts: parts.to_vec(),
            part_index: parts
                .iter()
                .enumerate()
                .map(|(i, p)| (p.name.clone(), i))
                .collect(),
            main: parts.iter().position(|p| p.naming == Naming::Main),
            ..Self::default()
        };
        table.prefixes = parts
            .iter()
            .enumerate()
            .filter_map(|(i, p)| match &p.naming {
                Naming::Prefix(prefix) => Some((prefix.clone(), i)),
                _ => None,
            })
            .collect();
        table
            .prefixes
            .sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        let mut seen_subtypes = HashSet::new();
        for (i, part) in parts.iter().enumerate() {
            let Some(Some(report)) = reported.get(i) else {
                continue;
            };
            if Some(i) == table.main {
                table.main_loaded = true;
            }
            for res in &report.resources {
                let visible = gateway_name(&part.name, &part.naming, &res.name);
                let strip = match &part.naming {
                    Naming::Main | Naming::PartColon => 0,
                    Naming::Prefix(prefix) => prefix.len(),
                };
                let api = api_key(&res.namespace, &res.kind, &res.subtype);
                // The canonical name, plus the bare alias for unprefixed remotes.
                let key = if part.naming == Naming::PartColon {
                    res.name.clone()
                } else {
                    visible.clone()
                };
                table.names.entry(key).or_default().push(Candidate {
                    part: i,
                    api,
                    strip,
                });
                table.listing.push((
                    i,
                    Resource {
                        name: visible,
                        ..res.clone()
                    },
                ));
            }
            for (api, service) in &report.subtypes {
                table.service_api.insert(
                    service.clone(),
                    api_key(&api.namespace, &api.kind, &api.subtype),
                );
                if seen_subtypes.insert((api.clone(), service.clone())) {
                    table.subtypes.push((api.clone(), service.clone()));
                }
            }
        }
        table
    }

    /// Every resource of the fleet under its gateway name, with the index of its part.
    pub fn listing(&self) -> &[(usize, Resource)] {
        &self.listing
    }

    /// The union of the parts' resource APIs, deduplicated.
    pub fn subtypes(&self) -> &[(Resource, String)] {
        &self.subtypes
    }

    /// The configured parts.
    pub fn parts(&self) -> &[PartInfo] {
        &self.parts
    }

    /// Index of the main part, if one is configured.
    pub fn main(&self) -> Option<usize> {
        self.main
    }

    /// Index of the part with this name.
    pub fn part_named(&self, name: &str) -> Option<usize> {
        self.part_index.get(name).copied()
    }

    /// Decides which part serves `name` for a call to `service` (`package.Service`).
    pub fn resolve(&self, name: &str, service: &str) -> Result<Route, GatewayError> {
        self.resolve_within(name, service, &|_| true)
    }

    /// Like [`RouteTable::resolve`], considering for bare names only the parts `allowed`
    /// accepts (a caller limited to some parts neither reaches nor learns of the others).
    pub fn resolve_within(
        &self,
        name: &str,
        service: &str,
        allowed: &dyn Fn(usize) -> bool,
    ) -> Result<Route, GatewayError> {
        // Borrowed on the hot path: the parts report the service of every API they serve.
        let builtin;
        let api = match self.service_api.get(service) {
            Some(api) => Some(api.as_str()),
            None => {
                builtin = builtin_api_of_service(service);
                builtin.as_deref()
            }
        };
        self.resolve_in(name, api, allowed)
    }

    /// Decides which part serves `name` of the given API key (`None`: any API).
    pub fn resolve_api(&self, name: &str, api: Option<&str>) -> Result<Route, GatewayError> {
        self.resolve_in(name, api, &|_| true)
    }

    fn resolve_in(
        &self,
        name: &str,
        api: Option<&str>,
        allowed: &dyn Fn(usize) -> bool,
    ) -> Result<Route, GatewayError> {
        if let Some((first, rest)) = split_first_remote(name)
            && let Some(&part) = self.part_index.get(first)
        {
            if rest.is_empty() {
                return Err(GatewayError::NotFound {
                    name: name.to_owned(),
                });
            }
            return Ok(Route {
                part,
                strip: first.len() + 1,
            });
        }
        if let Some(found) = self.names.get(name) {
            let matching: Vec<&Candidate> = found
                .iter()
                .filter(|c| api.is_none_or(|api| c.api == api) && allowed(c.part))
                .collect();
            if let Some(main) = matching.iter().find(|c| Some(c.part) == self.main) {
                return Ok(Route {
                    part: main.part,
                    strip: main.strip,
                });
            }
            let mut parts: Vec<usize> = matching.iter().map(|c| c.part).collect();
            parts.dedup();
            match (parts.as_slice(), matching.first()) {
                ([_], Some(only)) => {
                    return Ok(Route {
                        part: only.part,
                        strip: only.strip,
                    });
                }
                ([], _) => {}
                _ => {
                    let names = parts.iter().map(|&p| self.parts[p].name.clone()).collect();
                    return Err(GatewayError::Ambiguous {
                        name: name.to_owned(),
                        parts: names,
                    });
                }
            }
        }
        // Names of parts that were never reached: route by prefix, or to a main part we have
        // not heard from yet, so the caller learns the part is down instead of "not found".
        if let Some((prefix, part)) = self
            .prefixes
            .iter()
            .find(|(p, _)| name.len() > p.len() && name.starts_with(p.as_str()))
        {
            return Ok(Route {
                part: *part,
                strip: prefix.len(),
            });
        }
        match self.main {
            Some(main) if !self.main_loaded => Ok(Route {
                part: main,
                strip: 0,
            }),
            _ => Err(GatewayError::NotFound {
                name: name.to_owned(),
            }),
        }
    }
}

#[cfg(test)]
#[path = "table/tests.rs"]
mod tests;
