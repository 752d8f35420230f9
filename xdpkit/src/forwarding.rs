//! `route enable|disable`: the route stage put on (or taken off) several
//! interfaces at once, each a port of the others. Orchestration over
//! [`crate::attach`] and the running configuration, apart from the stage
//! itself (`programs::route`), which the attach path loads.

use std::collections::BTreeSet;

use crate::{
    apply,
    attach::{self, AttachRequest, Mode},
    chain::StageSpec,
    config::StageConfig,
    iface,
    pins::{IfaceLock, PinDir},
    privilege,
    programs::{
        self,
        route::{
            error::RouteError,
            live::{port_indexes, status, sync_ports, RouteStatus},
            ports_table, Route, PORTS_KEY, PORTS_PIN,
        },
        Program as _,
    },
    Error, Result,
};

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
                stage.settings = ports_table(&ports);
            }
            None => stages.push(StageConfig {
                program: Route.name().to_string(),
                settings: ports_table(&ports),
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
        .cloned()
        .map(attach::prepare)
        .collect::<Result<Vec<_>>>()?;
    prepared.into_iter().map(|p| p.commit()).collect()
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
