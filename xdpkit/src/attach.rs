//! Attaching and detaching xdpkit programs with pinned bpf_links, so a
//! program stays attached after the CLI exits and a later process finds it.

use std::{os::fd::AsFd as _, path::PathBuf};

use aya::programs::{
    links::{FdLink, PinnedLink},
    xdp::XdpLink,
    ProgramError,
};
use serde::Serialize;

pub use crate::mode::Mode;

use crate::{
    chain::{self, StageReport, StageSpec},
    iface, netlink,
    netlink::{AttachMode, XdpAttachment},
    pins::{self, PinDir},
    privilege,
    programs::{self, firewall::Firewall, redirect::Redirect, Program as _},
    rx_hash, sys, Error, Result,
};

/// What to attach where: a chain of one or more stages.
#[derive(Clone, Debug)]
pub struct AttachRequest {
    /// Interface to attach to.
    pub iface: String,
    /// The stages, in order, with their settings.
    pub stages: Vec<StageSpec>,
    /// Attach mode.
    pub mode: Mode,
    /// Replace a program that xdpkit did not attach.
    pub force: bool,
}

impl AttachRequest {
    /// The request `xdpkit attach LIST --dev IF [--to IF2] [policy flags]`
    /// makes: `list` names the stages (`firewall,redirect`); `to` is the
    /// redirect stage's target, `policy` the firewall stage's policies
    /// (`None` keeps those of a firewall already running).
    pub fn from_list(
        iface: &str,
        list: &str,
        mode: Mode,
        to: Option<&str>,
        policy: Option<&crate::firewall::Policy>,
        force: bool,
    ) -> Result<AttachRequest> {
        let programs = programs::parse_stages(list)?;
        let has = |name: &str| programs.iter().any(|p| p.name() == name);
        match (has(Redirect.name()), to) {
            (true, None) => {
                return Err(Error::InvalidArgument(
                    "the redirect stage needs --to <IF>: the interface to send frames to"
                        .to_string(),
                ))
            }
            (false, Some(_)) => {
                return Err(Error::InvalidArgument(format!(
                    "--to only applies to the redirect stage, and '{list}' has none"
                )))
            }
            _ => {}
        }
        if policy.is_some() && !has(Firewall.name()) {
            return Err(Error::InvalidArgument(format!(
                "--default, --fragments, --non-ip and --malformed only apply to the firewall stage, and '{list}' has none"
            )));
        }
        let stages = programs
            .into_iter()
            .map(|program| {
                let mut settings = toml::Table::new();
                if program.name() == Redirect.name() {
                    if let Some(to) = to {
                        settings.insert("to".into(), to.into());
                    }
                }
                if program.name() == Firewall.name() {
                    if let Some(policy) = policy {
                        settings = crate::firewall::stage::policy_settings(policy);
                    }
                }
                StageSpec { program, settings }
            })
            .collect();
        Ok(AttachRequest {
            iface: iface.to_string(),
            stages,
            mode,
            force,
        })
    }

    /// Sets the cpu stage's settings (`attach cpu --cpus 0,1 [--queue-size
    /// N] [--then pass|drop]`); `None`s take the defaults. Checks them as
    /// a configuration file's `[interfaces.IF.cpu]` table is checked.
    pub fn cpu_settings(
        &mut self,
        cpus: Option<&[u32]>,
        queue_size: Option<u32>,
        then: Option<&str>,
    ) -> Result<()> {
        use crate::programs::cpu::Cpu;
        let Some(stage) = self
            .stages
            .iter_mut()
            .find(|s| s.program.name() == Cpu.name())
        else {
            if cpus.is_some() || queue_size.is_some() || then.is_some() {
                return Err(Error::InvalidArgument(
                    "--cpus, --queue-size and --then only apply to the cpu stage".to_string(),
                ));
            }
            return Ok(());
        };
        let Some(cpus) = cpus else {
            return Err(Error::InvalidArgument(
                "the cpu stage needs --cpus <CPU,...>: the CPUs to spread flows over, e.g. --cpus 0,1"
                    .to_string(),
            ));
        };
        let mut table = toml::Table::new();
        table.insert(
            "cpus".into(),
            toml::Value::Array(cpus.iter().map(|&c| i64::from(c).into()).collect()),
        );
        if let Some(q) = queue_size {
            table.insert("queue-size".into(), i64::from(q).into());
        }
        if let Some(then) = then {
            table.insert("then".into(), then.into());
        }
        let settings = crate::programs::cpu::CpuSettings::parse(&table)
            .map_err(|e| Error::InvalidArgument(format!("cpu stage: {e}")))?;
        settings.check_online()?;
        stage.settings = settings.to_table();
        Ok(())
    }

    /// Makes the firewall stage hold `rules` rules without growing
    /// (`attach firewall --max-rules N`); a running firewall with more room
    /// keeps it.
    pub fn max_rules(&mut self, rules: u64) -> Result<()> {
        use crate::programs::firewall::capacity::{capacity_for_rules, MAX_RULES};
        capacity_for_rules(rules)?;
        let Some(stage) = self
            .stages
            .iter_mut()
            .find(|s| s.program.name() == Firewall.name())
        else {
            return Err(Error::InvalidArgument(
                "--max-rules only applies to the firewall stage".to_string(),
            ));
        };
        let rules = i64::try_from(rules)
            .map_err(|_| Error::InvalidArgument(format!("--max-rules {rules} is too large")))?;
        stage.settings.insert(MAX_RULES.into(), rules.into());
        Ok(())
    }
}

/// What `attach` did.
#[derive(Clone, Debug, Serialize)]
pub struct AttachReport {
    /// Interface.
    pub iface: String,
    /// Its index.
    pub ifindex: u32,
    /// The stages' names joined by commas (`firewall,redirect`).
    pub program: String,
    /// Kernel id of the root program the link runs.
    pub prog_id: u32,
    /// Kernel id of the bpf_link.
    pub link_id: u32,
    /// Mode the kernel attached it in.
    pub mode: Option<AttachMode>,
    /// The stages as installed.
    pub stages: Vec<StageReport>,
    /// Program id the link ran before, if any.
    pub replaced_prog_id: Option<u32>,
    /// Whether the replaced program was another tool's (only with --force).
    pub replaced_foreign: bool,
    /// Whether the root program itself was replaced (another xdpkit build).
    pub root_replaced: bool,
    /// The state directory.
    pub pin_dir: PathBuf,
}

/// What `detach` did.
#[derive(Clone, Debug, Serialize)]
pub struct DetachReport {
    /// Interface.
    pub iface: String,
    /// Program id that was detached (None if the link was already gone).
    pub prog_id: Option<u32>,
    /// The state directory that was removed.
    pub pin_dir: PathBuf,
}

/// The xdpkit link pinned for an interface, if it is still attached there.
struct OwnLink {
    info: sys::XdpLinkInfo,
}

/// Installs `req.stages` as the chain of `req.iface`: a new interface gets
/// the root program on a pinned bpf_link; on an interface xdpkit already
/// runs, the new chain is switched in with one map update (no moment
/// without a program), and stages that stay keep their maps and counters.
///
/// # Errors
///
/// Bad names or options, missing privileges, an unknown interface, a mode the
/// device lacks, or another tool's program without `force`: each before
/// anything changes on the system. A kernel refusal after that rolls back
/// what this call created.
pub fn attach(req: &AttachRequest) -> Result<AttachReport> {
    prepare(req.clone())?.commit()
}

/// An attach checked and loaded but not yet switched in (see [`prepare`]).
/// Dropping it leaves the interface as it was.
pub struct PreparedAttach {
    req: AttachRequest,
    ifindex: u32,
    dir: PinDir,
    /// Set while the directory was made by this attach and not committed.
    rollback: bool,
    own: Option<OwnLink>,
    current: Option<XdpAttachment>,
    foreign: bool,
    root: Option<aya::Ebpf>,
    /// The RX-hash root, when the chain reads the driver's RX hash and the
    /// device offers it: attached instead of the root in `root` (whose
    /// maps it shares).
    rx_hash_root: Option<aya::programs::Xdp>,
    chain: Option<chain::Prepared>,
    _lock: pins::IfaceLock,
}

/// The first half of [`attach`]: every check, then the new chain loaded
/// into the half not in use with its settings staged. Nothing that packets
/// see has changed yet; [`PreparedAttach::commit`] switches. `apply`
/// prepares every interface before it commits any. Takes the request
/// (kept for the commit): a million rules' settings are not copied.
pub fn prepare(req: AttachRequest) -> Result<PreparedAttach> {
    iface::validate_name(&req.iface)?;
    privilege::require("attach")?;
    let ifindex = iface::index(&req.iface)?;
    for stage in &req.stages {
        if let Some(to) = stage.settings.get("to").and_then(|v| v.as_str()) {
            iface::validate_name(to)?;
            iface::index(to)?;
        }
    }
    check_mode(&req.iface, ifindex, req.mode)?;
    pins::ensure_bpffs()?;

    let dir = PinDir::new(&req.iface)?;
    let current = netlink::xdp_attachment(ifindex)?;
    let own = own_link(&dir, ifindex);
    let foreign = current
        .as_ref()
        .filter(|att| own.as_ref().map(|o| o.info.prog_id) != Some(att.prog_id));
    if let Some(att) = foreign {
        if !req.force {
            return Err(Error::ForeignProgram {
                iface: req.iface.clone(),
                prog_id: att.prog_id,
                prog_name: program_name(att.prog_id),
            });
        }
    }
    let foreign = foreign.is_some();
    // A pin whose link no longer serves this interface is left over from a
    // deleted device (or another namespace's interface of the same name).
    if own.is_none() && dir.path().exists() {
        dir.remove()?;
    }

    let created = dir.create()?;
    let mut prepared = PreparedAttach {
        ifindex,
        _lock: pins::IfaceLock::take(&dir)?,
        dir,
        rollback: created,
        own,
        current,
        foreign,
        root: None,
        rx_hash_root: None,
        chain: None,
        req,
    };
    let req = &prepared.req;
    let root = prepared
        .root
        .insert(chain::load_root(&prepared.dir, &req.iface)?);
    prepared.chain = Some(chain::prepare(
        root,
        &prepared.dir,
        &req.iface,
        req.mode,
        &req.stages,
        &prepared._lock,
    )?);
    let reads_rx_hash = req.stages.iter().any(|s| s.program.reads_rx_hash());
    if rx_hash::wanted(reads_rx_hash, req.mode, ifindex) {
        match rx_hash::load(&prepared.dir, ifindex) {
            Ok(program) => prepared.rx_hash_root = Some(program),
            // The hash is an optimisation: without it the balancer hashes
            // the 5-tuple, as on any device.
            Err(e) => tracing::warn!(
                "{}: the RX-hash root did not load, the balancer hashes the 5-tuple: {e}",
                req.iface
            ),
        }
    }
    Ok(prepared)
}

impl PreparedAttach {
    /// The interface.
    pub fn iface(&self) -> &str {
        &self.req.iface
    }

    /// The second half of [`attach`]: the switch (one map update), then the
    /// root on the interface's link if it is new or its code changed.
    pub fn commit(mut self) -> Result<AttachReport> {
        let req = self.req.clone();
        let ifindex = self.ifindex;
        let dir = self.dir.clone();
        let prepared = self
            .chain
            .take()
            .ok_or_else(|| Error::Internal("an attach was committed twice".to_string()))?;
        let root = self
            .root
            .as_mut()
            .ok_or_else(|| Error::Internal("an attach without its root".to_string()))?;
        let stages = chain::switch(root, &dir, prepared)?;
        let program = match self.rx_hash_root.as_mut() {
            Some(program) => program,
            None => chain::root_program(root)?,
        };
        let root_info = program.info().map_err(|source| Error::Load {
            program: "root",
            source,
        })?;
        let replace_own = match (&self.own, &self.current) {
            (Some(_), Some(att)) => req.mode.accepts(att.mode),
            _ => false,
        };
        let replaced_prog_id = self.current.as_ref().map(|c| c.prog_id);
        let mut root_replaced = false;
        if replace_own {
            let running_tag = self
                .own
                .as_ref()
                .and_then(|o| prog_info(o.info.prog_id))
                .map(|info| info.tag());
            if running_tag != Some(root_info.tag()) {
                // Same link, new root: no window without XDP on the interface.
                let pinned =
                    PinnedLink::from_pin(dir.file(pins::LINK)).map_err(|e| Error::Attach {
                        iface: req.iface.clone(),
                        source: e.into(),
                    })?;
                let link = XdpLink::try_from(FdLink::from(pinned)).map_err(|e| Error::Attach {
                    iface: req.iface.clone(),
                    source: e.into(),
                })?;
                let id = program
                    .attach_to_link(link)
                    .map_err(|source| attach_error(&req.iface, req.mode, source))?;
                // Our fd closes; the pin keeps the (updated) link alive.
                drop(program.take_link(id));
                root_replaced = true;
            }
        } else {
            if self.own.is_some() && self.current.is_some() {
                // Mode change: a link cannot switch modes, so replace it.
                detach_pinned(&dir)?;
            } else if let Some(att) = self.current.as_ref().filter(|_| self.foreign) {
                remove_foreign(&req.iface, ifindex, att)?;
            }
            let id = program
                .attach_to_if_index(ifindex, req.mode.xdp_mode())
                .map_err(|source| attach_error(&req.iface, req.mode, source))?;
            let link = program.take_link(id).map_err(|e| Error::Attach {
                iface: req.iface.clone(),
                source: e.into(),
            })?;
            let fd_link = FdLink::try_from(link).map_err(|e| Error::Attach {
                iface: req.iface.clone(),
                source: e.into(),
            })?;
            dir.unpin(pins::LINK)?;
            fd_link.pin(dir.file(pins::LINK)).map_err(|e| Error::Pin {
                what: "cannot pin link at",
                path: dir.file(pins::LINK),
                source: std::io::Error::other(e),
            })?;
            dir.restrict(pins::LINK)?;
            root_replaced = true;
        }
        self.rollback = false;

        let link_fd = sys::obj_get(&dir.file(pins::LINK))?;
        let info = sys::xdp_link_info(link_fd.as_fd())?;
        let mode = netlink::xdp_attachment(ifindex)?.map(|a| a.mode);
        Ok(AttachReport {
            iface: req.iface.clone(),
            ifindex,
            program: req
                .stages
                .iter()
                .map(|s| s.program.name())
                .collect::<Vec<_>>()
                .join(","),
            prog_id: info.prog_id,
            link_id: info.id,
            mode,
            stages,
            replaced_prog_id,
            replaced_foreign: self.foreign,
            root_replaced,
            pin_dir: dir.path().to_path_buf(),
        })
    }
}

impl Drop for PreparedAttach {
    fn drop(&mut self) {
        // The chain's own preparation cleans its stage directories first.
        drop(self.chain.take());
        if self.rollback {
            if let Err(e) = self.dir.remove() {
                tracing::warn!("rollback: {e}");
            }
        }
    }
}

/// The kernel's info on program `id`, if it still exists.
fn prog_info(id: u32) -> Option<aya::programs::ProgramInfo> {
    aya::programs::loaded_programs()
        .filter_map(|p| p.ok())
        .find(|p| p.id() == id)
}

/// Detaches xdpkit's program from `ifname` and removes its state directory.
///
/// # Errors
///
/// [`Error::NotAttached`] if xdpkit has nothing there, [`Error::UnknownInterface`]
/// if the interface does not exist and has no leftover state.
pub fn detach(ifname: &str) -> Result<DetachReport> {
    iface::validate_name(ifname)?;
    privilege::require("detach")?;
    let dir = PinDir::new(ifname)?;
    if !dir.path().exists() {
        iface::index(ifname)?;
        return Err(Error::NotAttached {
            iface: ifname.to_string(),
            action: "detach",
        });
    }
    let prog_id = detach_pinned(&dir)?;
    dir.remove()?;
    Ok(DetachReport {
        iface: ifname.to_string(),
        prog_id,
        pin_dir: dir.path().to_path_buf(),
    })
}

/// Forces the pinned link off its interface and unpins it. Returns the
/// program id it ran, or None if the link was already gone.
fn detach_pinned(dir: &PinDir) -> Result<Option<u32>> {
    let Ok(fd) = sys::obj_get(&dir.file(pins::LINK)) else {
        return Ok(None);
    };
    let info = sys::xdp_link_info(fd.as_fd())?;
    // A link whose device is gone is already detached; the kernel says ENOLINK.
    if info.ifindex != 0 {
        sys::link_detach(fd.as_fd())?;
    }
    dir.unpin(pins::LINK)?;
    Ok(Some(info.prog_id))
}

/// Whether the link pinned in `dir` runs on the interface of that name in
/// this network namespace (not on a deleted device or another namespace's).
pub fn runs_here(dir: &PinDir) -> bool {
    iface::index(dir.ifname())
        .ok()
        .is_some_and(|ifindex| own_link(dir, ifindex).is_some())
}

fn own_link(dir: &PinDir, ifindex: u32) -> Option<OwnLink> {
    let fd = sys::obj_get(&dir.file(pins::LINK)).ok()?;
    let info = sys::xdp_link_info(fd.as_fd()).ok()?;
    (info.ifindex == ifindex).then_some(OwnLink { info })
}

fn remove_foreign(ifname: &str, ifindex: u32, att: &XdpAttachment) -> Result<()> {
    tracing::warn!(
        iface = ifname,
        prog_id = att.prog_id,
        "--force: removing another tool's XDP program"
    );
    netlink::detach_netlink_program(ifindex, att.mode).map_err(|e| Error::ForeignLinkHeld {
        iface: ifname.to_string(),
        prog_id: att.prog_id,
        reason: e.to_string(),
    })?;
    // A program held by another tool's bpf_link survives the netlink request.
    if let Some(still) = netlink::xdp_attachment(ifindex)? {
        return Err(Error::ForeignLinkHeld {
            iface: ifname.to_string(),
            prog_id: still.prog_id,
            reason: "still attached after the netlink detach".to_string(),
        });
    }
    Ok(())
}

/// Refuses modes the device's XDP feature flags rule out, before loading anything.
pub(crate) fn check_mode(ifname: &str, ifindex: u32, mode: Mode) -> Result<()> {
    // Kernels before 6.3 lack the netdev family; then the attach itself decides.
    let Ok(features) = netlink::device_xdp_features(ifindex) else {
        return Ok(());
    };
    let supported = supported_modes(&features);
    let ok = match mode {
        Mode::Auto | Mode::Skb => true,
        Mode::Native => features.basic(),
        Mode::Offload => features.hw_offload(),
    };
    if ok {
        Ok(())
    } else {
        Err(Error::ModeNotSupported {
            iface: ifname.to_string(),
            mode: mode.name(),
            supported: supported.join(", "),
        })
    }
}

/// Attach modes a device with these features accepts (generic always works).
pub fn supported_modes(features: &netlink::DeviceXdpFeatures) -> Vec<&'static str> {
    let mut modes = Vec::new();
    if features.basic() {
        modes.push("native");
    }
    modes.push("skb");
    if features.hw_offload() {
        modes.push("offload");
    }
    modes
}

pub(crate) fn attach_error(ifname: &str, mode: Mode, source: ProgramError) -> Error {
    let errno = match &source {
        ProgramError::SyscallError(e) => e.io_error.raw_os_error(),
        _ => None,
    };
    if let Some(e) = mtu_error(ifname, mode, errno) {
        return e;
    }
    match errno {
        Some(libc::EOPNOTSUPP) => Error::ModeNotSupported {
            iface: ifname.to_string(),
            mode: mode.name(),
            supported: "see `xdpkit features --dev IF`".to_string(),
        },
        Some(libc::ENODEV) => Error::UnknownInterface {
            name: ifname.to_string(),
        },
        _ => Error::Attach {
            iface: ifname.to_string(),
            source: source.into(),
        },
    }
}

/// The attach failure a driver reports for an MTU too large for XDP
/// (veth: ERANGE; others EINVAL or EOPNOTSUPP), told apart from other
/// failures by the device's MTU: larger than one page holds while the
/// device lacks multi-buffer support, or ERANGE at any MTU above 1500.
/// xdpkit's programs all take multi-buffer frames (`xdp.frags`), so a
/// driver with multi-buffer support accepts jumbo MTUs.
fn mtu_error(ifname: &str, mode: Mode, errno: Option<i32>) -> Option<Error> {
    if mode == Mode::Skb {
        return None;
    }
    let errno = errno.filter(|e| [libc::ERANGE, libc::EINVAL, libc::EOPNOTSUPP].contains(e))?;
    let ifindex = crate::iface::index(ifname).ok()?;
    let mtu = netlink::link_facts(ifindex).ok()?.mtu?;
    let multi_buffer = netlink::device_xdp_features(ifindex)
        .map(|f| f.multi_buffer())
        .unwrap_or(false);
    let too_big = if multi_buffer {
        errno == libc::ERANGE && mtu > 1500
    } else {
        mtu > crate::mode::SINGLE_PAGE_MTU
    };
    too_big.then(|| Error::MtuTooLarge {
        iface: ifname.to_string(),
        mode: mode.name(),
        mtu,
        why: format!(
            "{}; the kernel said {}",
            if multi_buffer {
                "it reports multi-buffer support"
            } else {
                "it has no multi-buffer support, so a frame must fit one page"
            },
            std::io::Error::from_raw_os_error(errno)
        ),
        single_page_mtu: crate::mode::SINGLE_PAGE_MTU,
    })
}

pub use crate::sys::program_name;
