//! `xdpkit apply`: make what runs equal to a host configuration, and
//! `xdpkit export`: the running state as the same configuration.
//!
//! The running state is read back from bpffs (each interface's chain state
//! and each stage's own maps), so there is no second copy of the truth to
//! drift. Apply first checks everything it can without changing anything
//! (interfaces, targets, modes, other tools' programs, privileges), then
//! installs each changed interface's chain with the same code as `attach`:
//! the new stages are loaded aside and switched in at once; stages that
//! stay keep their maps, rules and counters.

use std::path::Path;

use serde::Serialize;

use crate::{
    attach::{self, AttachRequest, Mode},
    chain::{self, StageSpec},
    config::{self, HostConfig, HostDiff, IfaceConfig, StageConfig},
    iface, netlink,
    pins::PinDir,
    privilege, programs, Error, Result,
};

/// How to apply.
#[derive(Clone, Copy, Debug, Default)]
pub struct ApplyOptions {
    /// Report the difference and change nothing.
    pub dry_run: bool,
    /// Detach interfaces xdpkit manages that the file does not name.
    pub prune: bool,
    /// Replace XDP programs other tools attached to named interfaces.
    pub force: bool,
}

/// What apply found and did.
#[derive(Clone, Debug, Serialize)]
pub struct ApplyReport {
    /// The difference between the file and what ran before.
    pub diff: HostDiff,
    /// Interfaces whose chain was installed (changed, new, or loaded by
    /// another build of xdpkit: an upgrade in place).
    pub applied: Vec<String>,
    /// Interfaces whose stages were loaded by another build and were
    /// replaced although the configuration was the same.
    pub upgraded: Vec<String>,
    /// Interfaces detached because the file no longer names them (--prune).
    pub detached: Vec<String>,
    /// Interfaces xdpkit manages that the file does not name, left running.
    pub unmanaged: Vec<String>,
    /// Whether this was a dry run.
    pub dry_run: bool,
}

impl ApplyReport {
    /// Whether nothing changed (or, in a dry run, would change).
    pub fn is_noop(&self) -> bool {
        self.applied.is_empty() && self.detached.is_empty()
    }
}

/// The interfaces xdpkit runs in this network namespace, as a configuration.
pub fn running() -> Result<HostConfig> {
    let mut host = HostConfig::default();
    for dir in PinDir::all()? {
        if let Some(cfg) = running_iface(&dir)? {
            host.interfaces.insert(dir.ifname().to_string(), cfg);
        }
    }
    Ok(host)
}

/// One interface's configuration as it runs, if xdpkit's chain runs there
/// (in this namespace: another namespace's interface of the same name is
/// not ours to report).
fn running_iface(dir: &PinDir) -> Result<Option<IfaceConfig>> {
    if !dir.has_link() || !attach::runs_here(dir) {
        return Ok(None);
    }
    let Some(chain) = chain::running(dir)? else {
        return Ok(None);
    };
    let mut stages = Vec::with_capacity(chain.stages.len());
    for name in &chain.stages {
        let program = programs::by_name(name)?;
        stages.push(StageConfig {
            program: name.clone(),
            settings: program.running_settings(&dir.stage(name))?,
        });
    }
    Ok(Some(IfaceConfig {
        mode: chain.mode.to_string(),
        stages,
    }))
}

/// Makes the running state equal to `desired` (see the module docs).
///
/// # Errors
///
/// A named interface or redirect target that does not exist, a mode the
/// device lacks, another tool's program without `force`, missing
/// privileges, a program or map the kernel refuses: all found while every
/// interface is prepared, before any switches. Only a failure of the
/// switches themselves (a link the kernel will not create) can leave the
/// interfaces before it switched and those after it not.
pub fn apply(desired: &HostConfig, opts: ApplyOptions) -> Result<ApplyReport> {
    privilege::require("apply")?;
    // Phase times at debug level (RUST_LOG=xdpkit=debug): a million-rule
    // apply is seconds, and this says where they go.
    let started = std::time::Instant::now();
    let running = running()?;
    tracing::debug!("apply: running state read in {:?}", started.elapsed());
    let diff = config::diff(desired, &running);
    tracing::debug!("apply: diffed at {:?}", started.elapsed());
    let mut plan = Vec::new();
    let mut upgraded = Vec::new();
    for (name, want) in &desired.interfaces {
        let request = request(name, want, opts.force)?;
        precheck(&request)?;
        let changed = diff.interfaces.iter().any(|d| d.name == *name);
        let stale = !changed && !same_build(name)?;
        if stale {
            upgraded.push(name.clone());
        }
        if changed || stale {
            plan.push(request);
        }
    }
    let extra: Vec<String> = running
        .interfaces
        .keys()
        .filter(|name| !desired.interfaces.contains_key(*name))
        .cloned()
        .collect();
    // A million rules as strings: not held while the new ones load.
    drop(running);
    let mut report = ApplyReport {
        diff,
        applied: plan.iter().map(|r| r.iface.clone()).collect(),
        upgraded,
        detached: Vec::new(),
        unmanaged: Vec::new(),
        dry_run: opts.dry_run,
    };
    if opts.prune {
        report.detached = extra;
    } else {
        report.unmanaged = extra;
    }
    if opts.dry_run {
        return Ok(report);
    }
    // Every interface is loaded and staged before any switches: an error
    // in any of them (a program the kernel refuses, a map that cannot be
    // made) leaves all of them as they were.
    let prepared = plan
        .into_iter()
        .map(attach::prepare)
        .collect::<Result<Vec<_>>>()?;
    tracing::debug!("apply: prepared at {:?}", started.elapsed());
    for one in prepared {
        one.commit()?;
    }
    tracing::debug!("apply: switched at {:?}", started.elapsed());
    for name in &report.detached {
        attach::detach(name)?;
    }
    Ok(report)
}

/// The attach request for one interface of the file.
fn request(name: &str, cfg: &IfaceConfig, force: bool) -> Result<AttachRequest> {
    let mode = match cfg.mode.as_str() {
        "auto" => Mode::Auto,
        "native" => Mode::Native,
        "skb" => Mode::Skb,
        "offload" => Mode::Offload,
        other => {
            return Err(Error::InvalidArgument(format!(
                "{name}: mode '{other}': choose one of auto, native, skb"
            )))
        }
    };
    let stages = cfg
        .stages
        .iter()
        .map(|s| {
            Ok(StageSpec {
                program: programs::by_name(&s.program)?,
                settings: s.settings.clone(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(AttachRequest {
        iface: name.to_string(),
        stages,
        mode,
        force,
    })
}

/// What attach would refuse, found before anything changes.
fn precheck(req: &AttachRequest) -> Result<()> {
    iface::validate_name(&req.iface)?;
    let ifindex = iface::index(&req.iface)?;
    for stage in &req.stages {
        if let Some(to) = stage.settings.get("to").and_then(|v| v.as_str()) {
            iface::index(to)?;
        }
    }
    attach::check_mode(&req.iface, ifindex, req.mode)?;
    let dir = PinDir::new(&req.iface)?;
    if let Some(att) = netlink::xdp_attachment(ifindex)? {
        let ours = attach::runs_here(&dir) && dir.has_link();
        if !ours && !req.force {
            return Err(Error::ForeignProgram {
                iface: req.iface.clone(),
                prog_id: att.prog_id,
                prog_name: attach::program_name(att.prog_id),
            });
        }
    }
    Ok(())
}

/// Whether this build of xdpkit loaded the stages running on `name`.
fn same_build(name: &str) -> Result<bool> {
    let dir = PinDir::new(name)?;
    Ok(chain::running(&dir)?.is_none_or(|c| c.same_build))
}

/// Reads a configuration file (`-`: standard input).
pub fn read(path: &Path) -> Result<HostConfig> {
    HostConfig::read(path).map_err(Error::Config)
}
