//! Route stages as they run: their ports and counters (read without a
//! lock), ports changed in place (under the interface's writers' lock,
//! no reload), and `route enable|disable` across interfaces.

use std::collections::BTreeSet;

use aya::maps::{DevMapHash, MapData};
use serde::Serialize;
use xdpkit_common::route::ROUTE_MAX_PORTS;

use super::{error::RouteError, Route, PORTS_KEY, PORTS_PIN};
use crate::{
    apply,
    attach::{self, AttachRequest, Mode},
    chain::StageSpec,
    config::StageConfig,
    error::map_err,
    iface,
    maps::open_pin,
    pins::{IfaceLock, PinDir},
    privilege,
    programs::{self, OutcomeCount, Program as _},
    Error, Result,
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

/// Every route stage running in this network namespace.
pub fn list() -> Result<Vec<RouteStatus>> {
    privilege::require("reading the route stage")?;
    let mut out = Vec::new();
    for dir in PinDir::all()? {
        if !attach::runs_here(&dir) || !dir.stage(Route.name()).file(PORTS_PIN).exists() {
            continue;
        }
        out.push(status(dir.ifname())?);
    }
    Ok(out)
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

/// Forwards between `ifaces`: each gets the route stage (appended to the
/// chain it runs, or alone), and every one of them becomes a port of
/// every other's stage (ports it had stay). Interfaces new to xdpkit are
/// attached in `mode`. Every interface is loaded before any switches.
pub fn enable(ifaces: &[String], mode: Mode, force: bool) -> Result<Vec<attach::AttachReport>> {
    privilege::require("route enable")?;
    if ifaces.is_empty() {
        return Err(Error::InvalidArgument(
            "name the interfaces to forward between".to_string(),
        ));
    }
    for name in ifaces {
        iface::index(name)?;
    }
    let running = apply::running()?;
    let mut requests = Vec::new();
    for name in ifaces {
        let current = running.interfaces.get(name);
        let mut stages: Vec<StageConfig> = current.map(|c| c.stages.clone()).unwrap_or_default();
        let mut ports: BTreeSet<String> = ifaces.iter().cloned().collect();
        match stages.iter_mut().find(|s| s.program == Route.name()) {
            Some(stage) => {
                if let Some(toml::Value::Array(have)) = stage.settings.get(PORTS_KEY) {
                    ports.extend(have.iter().filter_map(|v| v.as_str()).map(String::from));
                }
                ports.retain(|p| !p.starts_with('#'));
                stage.settings = super::ports_table(&ports);
            }
            None => stages.push(StageConfig {
                program: Route.name().to_string(),
                settings: super::ports_table(&ports),
            }),
        }
        let mode = match current.map(|c| c.mode.as_str()) {
            Some("native") => Mode::Native,
            Some("skb") => Mode::Skb,
            Some("offload") => Mode::Offload,
            Some(_) => Mode::Auto,
            None => mode,
        };
        requests.push(request(name, &stages, mode, force)?);
    }
    commit_all(&requests)
}

/// Takes the route stage off `ifaces` (an interface left with no stage
/// is detached) and the interfaces out of every other route stage's ports.
pub fn disable(ifaces: &[String]) -> Result<Vec<String>> {
    privilege::require("route disable")?;
    let running = apply::running()?;
    let mut requests = Vec::new();
    let mut detach = Vec::new();
    for name in ifaces {
        iface::validate_name(name)?;
        let Some(cfg) = running
            .interfaces
            .get(name)
            .filter(|c| c.stages.iter().any(|s| s.program == Route.name()))
        else {
            iface::index(name)?;
            return Err(RouteError::NotEnabled {
                iface: name.to_string(),
            }
            .into());
        };
        let stages: Vec<StageConfig> = cfg
            .stages
            .iter()
            .filter(|s| s.program != Route.name())
            .cloned()
            .collect();
        if stages.is_empty() {
            detach.push(name.clone());
        } else {
            let mode = match cfg.mode.as_str() {
                "native" => Mode::Native,
                "skb" => Mode::Skb,
                _ => Mode::Auto,
            };
            requests.push(request(name, &stages, mode, false)?);
        }
    }
    commit_all(&requests)?;
    for name in &detach {
        attach::detach(name)?;
    }
    let gone: BTreeSet<u32> = ifaces.iter().filter_map(|n| iface::index(n).ok()).collect();
    for status in list()? {
        let dir = PinDir::new(&status.interface)?.stage(Route.name());
        let _lock = IfaceLock::take(&PinDir::new(&status.interface)?)?;
        let have = port_indexes(&dir)?;
        let keep: BTreeSet<u32> = have.difference(&gone).copied().collect();
        if keep != have {
            sync_ports(&dir, &keep)?;
        }
    }
    Ok(ifaces.to_vec())
}

fn request(name: &str, stages: &[StageConfig], mode: Mode, force: bool) -> Result<AttachRequest> {
    Ok(AttachRequest {
        iface: name.to_string(),
        stages: stages
            .iter()
            .map(|s| {
                Ok(StageSpec {
                    program: programs::by_name(&s.program)?,
                    settings: s.settings.clone(),
                })
            })
            .collect::<Result<Vec<_>>>()?,
        mode,
        force,
    })
}

fn commit_all(requests: &[AttachRequest]) -> Result<Vec<attach::AttachReport>> {
    let prepared = requests
        .iter()
        .map(attach::prepare)
        .collect::<Result<Vec<_>>>()?;
    prepared.into_iter().map(|p| p.commit()).collect()
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
