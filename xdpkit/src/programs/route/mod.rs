//! `route`: IPv4 and IPv6 forwarding in XDP with the kernel's own routes
//! and neighbours (`bpf_fib_lookup`). A frame whose FIB answer leaves by
//! one of the stage's ports goes out there (XDP_REDIRECT through a
//! DEVMAP_HASH) with its TTL or hop limit lowered and the next hop's MACs;
//! everything the stack must see goes on down the chain, counted by
//! reason ([`RouteOutcome`]). Setting: `ports`, the interfaces frames may
//! leave by (`xdpkit route enable A B ...` makes every listed interface a
//! port of every other).

pub mod error;
pub mod live;
pub mod model;
pub mod simulate;

use std::collections::BTreeSet;

use aya::maps::{DevMapHash, MapData};
use xdpkit_common::route::{RouteOutcome, ROUTE_MAX_PORTS, ROUTE_OUTCOMES, ROUTE_PORTS};

use super::{Commit, OutcomeCount, Program, StageLoad};
use crate::{
    iface,
    maps::map_err,
    model::{Decision, StageOutcome},
    object::{embedded, missing_map, Object},
    pins::PinDir,
    settings::{check_keys, SettingsError},
    Result,
};

/// The settings key listing the ports.
pub const PORTS_KEY: &str = "ports";
/// Pin file of the ports map in the stage directory.
pub const PORTS_PIN: &str = "route_ports";
/// Pin file of the outcome counters.
pub const OUTCOMES_PIN: &str = "route_outcomes";

static PINS: [(&str, &str); 2] = [(ROUTE_PORTS, PORTS_PIN), (ROUTE_OUTCOMES, OUTCOMES_PIN)];

/// The `route` program.
pub struct Route;

impl Program for Route {
    fn name(&self) -> &'static str {
        "route"
    }

    fn about(&self) -> &'static str {
        "IPv4/IPv6 forwarding by the kernel's FIB out of the listed ports (setting `ports`)"
    }

    fn object(&self) -> Object {
        embedded!("route")
    }

    fn symbol(&self) -> &'static str {
        "xdpkit_route"
    }

    fn pinned_maps(&self) -> &'static [(&'static str, &'static str)] {
        &PINS
    }

    fn normalise_settings(
        &self,
        given: Option<&toml::Table>,
        _base_dir: &std::path::Path,
    ) -> std::result::Result<toml::Table, SettingsError> {
        let ports = match given {
            Some(table) => {
                check_keys(table, &[PORTS_KEY])?;
                parse_ports(table)?
            }
            None => BTreeSet::new(),
        };
        Ok(ports_table(&ports))
    }

    fn configure(
        &self,
        stage: &mut StageLoad<'_>,
        settings: &toml::Table,
    ) -> Result<Option<Commit>> {
        // No `ports` key (a plain `attach`, a reinstall): keep the ports.
        if !settings.contains_key(PORTS_KEY) {
            return Ok(None);
        }
        let names =
            parse_ports(settings).map_err(|e| crate::Error::InvalidArgument(e.to_string()))?;
        if names.len() > ROUTE_MAX_PORTS as usize {
            return Err(error::RouteError::TooManyPorts {
                iface: stage.iface.to_string(),
                limit: ROUTE_MAX_PORTS,
            }
            .into());
        }
        let wanted = names
            .iter()
            .map(|n| iface::index(n))
            .collect::<Result<BTreeSet<u32>>>()?;
        if stage.fresh {
            let map = stage
                .ebpf
                .map_mut(ROUTE_PORTS)
                .ok_or_else(|| missing_map(ROUTE_PORTS))?;
            let mut ports: DevMapHash<&mut MapData> =
                DevMapHash::try_from(map).map_err(map_err("open ROUTE_PORTS"))?;
            for ifindex in &wanted {
                insert_port(&mut ports, *ifindex)?;
            }
            return Ok(None);
        }
        // The map is shared with the running stage: change it at the switch.
        let dir = stage.dir.clone();
        Ok(Some(Box::new(move || live::sync_ports(&dir, &wanted))))
    }

    fn running_settings(&self, dir: &PinDir) -> Result<toml::Table> {
        let names = live::port_names(dir)?;
        Ok(ports_table(&names.into_iter().collect()))
    }

    fn outcomes(&self, dir: &PinDir) -> Vec<OutcomeCount> {
        super::read_outcomes(dir, OUTCOMES_PIN, &OUTCOME_NAMES).unwrap_or_default()
    }

    /// The FIB is the kernel's, which a chain model does not know: this is
    /// the program's answer when no lookup leads out of a port (no ports,
    /// no route), the frame handed on unchanged. [`model::decide`] takes
    /// the FIB's answer.
    fn model(&self, frame: &[u8], _settings: &toml::Table) -> StageOutcome {
        StageOutcome::same(Decision::Next, frame)
    }
}

/// The outcome names in index order.
pub const OUTCOME_NAMES: [&str; RouteOutcome::COUNT as usize] = {
    let mut names = [""; RouteOutcome::COUNT as usize];
    let mut i = 0;
    while i < names.len() {
        names[i] = RouteOutcome::ALL[i].name();
        i += 1;
    }
    names
};

/// Makes `ifindex` a port: its DEVMAP entry sends to itself.
pub(crate) fn insert_port<T: std::borrow::BorrowMut<MapData>>(
    map: &mut DevMapHash<T>,
    ifindex: u32,
) -> Result<()> {
    map.insert(ifindex, ifindex, None, 0)
        .map_err(|e| crate::Error::Map {
            what: format!("add port ifindex {ifindex} to ROUTE_PORTS"),
            source: e.into(),
        })
}

/// The `ports` of a settings table: interface names, sorted, once each.
fn parse_ports(table: &toml::Table) -> std::result::Result<BTreeSet<String>, SettingsError> {
    let Some(value) = table.get(PORTS_KEY) else {
        return Ok(BTreeSet::new());
    };
    let toml::Value::Array(items) = value else {
        return Err(SettingsError::new(
            PORTS_KEY,
            format!(
                "expected an array of interface names, found {}",
                value.type_str()
            ),
        ));
    };
    let mut ports = BTreeSet::new();
    for (i, item) in items.iter().enumerate() {
        let key = format!("{PORTS_KEY}[{i}]");
        let name = item.as_str().ok_or_else(|| {
            SettingsError::new(
                &key,
                format!("expected an interface name, found {}", item.type_str()),
            )
        })?;
        iface::validate_name(name).map_err(|e| SettingsError::new(&key, e.to_string()))?;
        ports.insert(name.to_string());
    }
    Ok(ports)
}

pub(crate) fn ports_table(ports: &BTreeSet<String>) -> toml::Table {
    let mut table = toml::Table::new();
    table.insert(
        PORTS_KEY.into(),
        toml::Value::Array(ports.iter().map(|p| p.clone().into()).collect()),
    );
    table
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn ports_are_names_sorted_once_and_absent_means_none() {
        let given: toml::Table = "ports = [\"veth1\", \"eth0\", \"veth1\"]".parse().unwrap();
        let out = Route
            .normalise_settings(Some(&given), Path::new("."))
            .unwrap();
        assert_eq!(out, "ports = [\"eth0\", \"veth1\"]".parse().unwrap());
        let none = Route.normalise_settings(None, Path::new(".")).unwrap();
        assert_eq!(none, "ports = []".parse().unwrap());
        for (text, key, want) in [
            ("ports = \"eth0\"", "ports", "expected an array"),
            ("ports = [1]", "ports[0]", "expected an interface name"),
            (
                "ports = [\"a/b\"]",
                "ports[0]",
                "not a valid interface name",
            ),
            ("to = \"eth0\"", "to", "unknown key"),
        ] {
            let err = Route
                .normalise_settings(Some(&text.parse().unwrap()), Path::new("."))
                .unwrap_err();
            assert_eq!(err.key, key, "{text}");
            assert!(err.message.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn outcome_names_follow_the_index() {
        assert_eq!(OUTCOME_NAMES[0], "forwarded");
        assert_eq!(
            OUTCOME_NAMES[RouteOutcome::NoNeighbour as usize],
            "no_neighbour"
        );
        for (i, o) in RouteOutcome::ALL.iter().enumerate() {
            assert_eq!(*o as usize, i);
        }
    }
}
