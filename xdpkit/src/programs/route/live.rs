//! Route stages as they run: their ports and counters (read without a
//! lock) and ports changed in place (under the interface's writers' lock,
//! no reload). `route enable|disable` across interfaces, which go through
//! attach, are in [`crate::forwarding`].

use std::collections::BTreeSet;

use aya::maps::{DevMapHash, MapData};
use serde::Serialize;
use xdpkit_common::route::ROUTE_MAX_PORTS;

use super::{error::RouteError, Route, PORTS_PIN};
use crate::{
    iface,
    maps::map_err,
    maps::open_pin,
    pins::{IfaceLock, PinDir},
    privilege,
    programs::{OutcomeCount, Program as _},
    Result,
};

fn open_ports(dir: &PinDir) -> Result<Option<DevMapHash<MapData>>> {
    let path = dir.file(PORTS_PIN);
    let Some(map) = open_pin(&path)? else {
        return Ok(None);
    };
    DevMapHash::try_from(map)
        .map(Some)
        .map_err(map_err(format!("open {}", path.display())))
}

/// The stage directory of the route stage on `ifname`, if it has one.
fn stage_dir(ifname: &str) -> Result<PinDir> {
    iface::validate_name(ifname)?;
    let dir = PinDir::new(ifname)?.stage(Route.name());
    if !dir.file(PORTS_PIN).exists() {
        iface::index(ifname)?;
        return Err(RouteError::NotEnabled {
            iface: ifname.to_string(),
        }
        .into());
    }
    Ok(dir)
}

/// The ifindexes in the ports map of the stage in `dir`.
pub fn port_indexes(dir: &PinDir) -> Result<BTreeSet<u32>> {
    let Some(map) = open_ports(dir)? else {
        return Ok(BTreeSet::new());
    };
    map.keys()
        .collect::<std::result::Result<BTreeSet<u32>, _>>()
        .map_err(map_err("read the route ports"))
}

/// The ports of the stage in `dir` by name (`#N` for an ifindex whose
/// interface is gone: the kernel removes those entries soon after).
pub fn port_names(dir: &PinDir) -> Result<Vec<String>> {
    Ok(port_indexes(dir)?
        .into_iter()
        .map(|i| iface::name(i).unwrap_or_else(|| format!("#{i}")))
        .collect())
}

/// Makes the ports map of the stage in `dir` hold exactly `wanted`: new
/// ports first, then the ones that go (the caller holds the lock).
pub(crate) fn sync_ports(dir: &PinDir, wanted: &BTreeSet<u32>) -> Result<()> {
    let mut map = open_ports(dir)?.ok_or_else(|| crate::maps::missing_map("ROUTE_PORTS"))?;
    let have: BTreeSet<u32> = map
        .keys()
        .collect::<std::result::Result<_, _>>()
        .map_err(map_err("read the route ports"))?;
    for ifindex in wanted.difference(&have) {
        super::insert_port(&mut map, *ifindex)?;
    }
    for ifindex in have.difference(wanted) {
        match map.remove(*ifindex) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(map_err(format!("remove port ifindex {ifindex}"))(e)),
        }
    }
    Ok(())
}

/// One route stage: its ports and counters by outcome.
#[derive(Clone, Debug, Serialize)]
pub struct RouteStatus {
    /// The interface the stage runs on.
    pub interface: String,
    /// Its ports.
    pub ports: Vec<String>,
    /// Frames and bytes by outcome ("forwarded", then the reasons to pass).
    pub outcomes: Vec<OutcomeCount>,
}

impl RouteStatus {
    /// Frames forwarded.
    pub fn forwarded(&self) -> u64 {
        self.count("forwarded")
    }

    /// Frames with outcome `name`.
    pub fn count(&self, name: &str) -> u64 {
        self.outcomes
            .iter()
            .find(|o| o.outcome == name)
            .map_or(0, |o| o.packets)
    }
}

/// The route stage on `ifname` (a reader: takes no lock).
pub fn status(ifname: &str) -> Result<RouteStatus> {
    privilege::require("reading the route stage")?;
    let dir = stage_dir(ifname)?;
    Ok(RouteStatus {
        interface: ifname.to_string(),
        ports: port_names(&dir)?,
        outcomes: Route.outcomes(&dir),
    })
}

/// Adds `ports` to the route stage on `ifname`, in place.
pub fn add_ports(ifname: &str, ports: &[String]) -> Result<Vec<String>> {
    change_ports(ifname, |set| {
        for p in ports {
            set.insert(iface::index(p)?);
        }
        Ok(())
    })
}

/// Removes `ports` from the route stage on `ifname`, in place.
pub fn remove_ports(ifname: &str, ports: &[String]) -> Result<Vec<String>> {
    change_ports(ifname, |set| {
        for p in ports {
            let gone = iface::index(p).is_ok_and(|i| set.remove(&i))
                || p.strip_prefix('#')
                    .and_then(|n| n.parse::<u32>().ok())
                    .is_some_and(|i| set.remove(&i));
            if !gone {
                return Err(RouteError::NotAPort {
                    iface: ifname.to_string(),
                    port: p.clone(),
                }
                .into());
            }
        }
        Ok(())
    })
}

fn change_ports(
    ifname: &str,
    change: impl FnOnce(&mut BTreeSet<u32>) -> Result<()>,
) -> Result<Vec<String>> {
    privilege::require("changing the route ports")?;
    let dir = stage_dir(ifname)?;
    let _lock = IfaceLock::take(&PinDir::new(ifname)?)?;
    let mut set = port_indexes(&dir)?;
    change(&mut set)?;
    if set.len() > ROUTE_MAX_PORTS as usize {
        return Err(RouteError::TooManyPorts {
            iface: ifname.to_string(),
            limit: ROUTE_MAX_PORTS,
        }
        .into());
    }
    sync_ports(&dir, &set)?;
    port_names(&dir)
}

/// What the user must do so frames redirected into `ifaces` arrive: a
/// veth hands XDP-redirected frames to its peer only if the peer runs an
/// XDP program or has GRO on; otherwise they vanish without an error
/// counter. One line per veth port whose peer has neither (a peer in
/// another namespace cannot be checked from here: named as such).
pub fn veth_advice(ifaces: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for name in ifaces {
        let Ok(index) = iface::index(name) else {
            continue;
        };
        let Ok(facts) = crate::netlink::link_facts(index) else {
            continue;
        };
        if !facts.veth {
            continue;
        }
        let peer_here = facts
            .peer
            .filter(|_| !facts.peer_elsewhere)
            .and_then(iface::name);
        match peer_here {
            Some(_) if crate::netlink::xdp_attachment(facts.peer.unwrap_or(0))
                .ok()
                .flatten()
                .is_some() => {}
            Some(peer) => out.push(format!(
                "{name} is a veth: frames forwarded into it reach {peer} only if {peer} runs an XDP program or has GRO on (`ethtool -K {peer} gro on`)"
            )),
            None => out.push(format!(
                "{name} is a veth: frames forwarded into it reach its peer (in another namespace) only if the peer runs an XDP program or has GRO on (`ethtool -K PEER gro on` there)"
            )),
        }
    }
    out
}
