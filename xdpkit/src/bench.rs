//! `xdpkit bench`: attach a program that gives every frame one verdict,
//! after touching it as much as asked, and read its per-action counters
//! (seed 001's memory-access-cost benchmark; xdp-bench does not run on this
//! kernel). The attachment belongs to the [`Bench`] value: it ends when the
//! value is dropped or the process exits, and nothing is pinned.

use aya::{
    maps::{Array, CpuMap, DevMap},
    Ebpf,
};
use xdpkit_common::bench::{
    BenchConfig, BENCH_CONFIG, BENCH_CPUMAP, BENCH_DEVMAP, BENCH_DROP, BENCH_MAX_CPUS, BENCH_PASS,
    BENCH_REDIRECT, BENCH_REDIRECT_CPU, BENCH_TX, TOUCH_NONE, TOUCH_PARSE_IP, TOUCH_READ,
    TOUCH_SWAP_MACS,
};

use crate::maps::map_err;
use crate::{
    attach::Mode, iface, netlink, object, privilege, stats, stats::ActionTotals, Error, Result,
};

/// The bench program's object (not a stage: it runs alone, unpinned).
pub const OBJECT: object::Object = object::embedded!("bench");
/// The balancer's floor (`xdpkit-ebpf/src/lb_floor`): the least a balancer
/// with a flow table does, for `cargo xtask bench lb` to show how much of
/// the balancer's cost is the kernel's maps and helpers.
pub const LB_FLOOR: object::Object = object::embedded!("lb_floor");
/// Its program.
pub const LB_FLOOR_SYMBOL: &str = "xdpkit_lb_floor";

const SYMBOL: &str = "xdpkit_bench";
/// Frames a CPUMAP entry queues for its CPU.
const CPU_QUEUE: u32 = 2048;

/// What the bench program does with every frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchAction {
    /// XDP_DROP.
    Drop,
    /// XDP_PASS: up the stack.
    Pass,
    /// XDP_TX: back out of the interface.
    Tx,
    /// XDP_REDIRECT to another interface (DEVMAP).
    Redirect,
    /// XDP_REDIRECT to another CPU (CPUMAP), which passes it to the stack.
    RedirectCpu,
}

impl BenchAction {
    /// The name on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            BenchAction::Drop => "drop",
            BenchAction::Pass => "pass",
            BenchAction::Tx => "tx",
            BenchAction::Redirect => "redirect",
            BenchAction::RedirectCpu => "redirect-cpu",
        }
    }

    const fn code(self) -> u32 {
        match self {
            BenchAction::Drop => BENCH_DROP,
            BenchAction::Pass => BENCH_PASS,
            BenchAction::Tx => BENCH_TX,
            BenchAction::Redirect => BENCH_REDIRECT,
            BenchAction::RedirectCpu => BENCH_REDIRECT_CPU,
        }
    }
}

/// How much of each frame the program reads or writes before its verdict.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Touch {
    /// Nothing.
    #[default]
    None,
    /// Read the Ethernet header.
    Read,
    /// Parse Ethernet and the IPv4 or IPv6 header.
    ParseIp,
    /// Swap the MAC addresses (writes the frame).
    SwapMacs,
}

impl Touch {
    /// The name on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Touch::None => "none",
            Touch::Read => "read",
            Touch::ParseIp => "parse-ip",
            Touch::SwapMacs => "swap-macs",
        }
    }

    const fn code(self) -> u32 {
        match self {
            Touch::None => TOUCH_NONE,
            Touch::Read => TOUCH_READ,
            Touch::ParseIp => TOUCH_PARSE_IP,
            Touch::SwapMacs => TOUCH_SWAP_MACS,
        }
    }
}

/// What to benchmark where.
#[derive(Clone, Debug)]
pub struct BenchRequest {
    /// Interface to attach to.
    pub iface: String,
    /// Verdict for every frame.
    pub action: BenchAction,
    /// Work before the verdict.
    pub touch: Touch,
    /// Native or skb (generic) XDP.
    pub mode: Mode,
    /// Target interface of [`BenchAction::Redirect`].
    pub to: Option<String>,
    /// Target CPU of [`BenchAction::RedirectCpu`].
    pub cpu: Option<u32>,
}

/// A running bench: the program stays attached until this is dropped.
pub struct Bench {
    ebpf: Ebpf,
}

impl Bench {
    /// Checks the request, then loads and attaches the bench program.
    ///
    /// # Errors
    ///
    /// Usage errors (exit code 2) for a missing or misplaced --to or --cpu,
    /// an unknown interface, a CPU that does not exist, or an interface that
    /// already runs an XDP program; nothing is attached then.
    pub fn start(req: &BenchRequest) -> Result<Bench> {
        iface::validate_name(&req.iface)?;
        let action = req.action.name();
        if req.action == BenchAction::Redirect && req.to.is_none() {
            return Err(usage(format!("{action} needs --to <IF>: where frames go")));
        }
        if req.action != BenchAction::Redirect && req.to.is_some() {
            return Err(usage(format!(
                "--to only applies to redirect, not {action}"
            )));
        }
        if req.action != BenchAction::RedirectCpu && req.cpu.is_some() {
            return Err(usage(format!(
                "--cpu only applies to redirect-cpu, not {action}"
            )));
        }
        if !matches!(req.mode, Mode::Native | Mode::Skb) {
            return Err(usage(format!(
                "bench runs in native or skb mode, not {}",
                req.mode.name()
            )));
        }
        let cpu = req.cpu.unwrap_or(0);
        let cpus = (crate::sys::possible_cpus()? as u32).min(BENCH_MAX_CPUS);
        if cpu >= cpus {
            return Err(usage(format!(
                "--cpu {cpu} does not exist: this machine has CPUs 0 to {}",
                cpus - 1
            )));
        }
        privilege::require("bench")?;
        let ifindex = iface::index(&req.iface)?;
        let to = req.to.as_deref().map(iface::index).transpose()?;
        if let Some(att) = netlink::xdp_attachment(ifindex)? {
            return Err(usage(format!(
                "{} already runs XDP program {} ({}): detach it first (`xdpkit detach --dev {}`)",
                req.iface,
                att.prog_id,
                crate::attach::program_name(att.prog_id),
                req.iface
            )));
        }

        let mut ebpf = OBJECT.load()?;
        set_config(
            &mut ebpf,
            BenchConfig {
                action: req.action.code(),
                touch: req.touch.code(),
                cpu,
                _pad: 0,
            },
        )?;
        if let Some(target) = to {
            let map = ebpf
                .map_mut(BENCH_DEVMAP)
                .ok_or_else(|| object::missing_map(BENCH_DEVMAP))?;
            let mut devmap = DevMap::try_from(map).map_err(map_err("open the redirect map"))?;
            devmap.set(0, target, None, 0).map_err(|e| Error::Map {
                what: "set the redirect target".to_string(),
                source: e.into(),
            })?;
        }
        if req.action == BenchAction::RedirectCpu {
            let map = ebpf
                .map_mut(BENCH_CPUMAP)
                .ok_or_else(|| object::missing_map(BENCH_CPUMAP))?;
            let mut cpumap = CpuMap::try_from(map).map_err(map_err("open the CPU map"))?;
            cpumap
                .set(cpu, CPU_QUEUE, None, 0)
                .map_err(|e| Error::Map {
                    what: format!("set CPU {cpu} in the CPU map"),
                    source: e.into(),
                })?;
        }
        let program = object::program(&mut ebpf, SYMBOL, "bench")?;
        program
            .attach_to_if_index(ifindex, req.mode.xdp_mode())
            .map_err(|source| crate::attach::attach_error(&req.iface, req.mode, source))?;
        Ok(Bench { ebpf })
    }

    /// Frames and bytes per action since the start, all CPUs summed.
    pub fn totals(&self) -> Result<ActionTotals> {
        let map = self
            .ebpf
            .map(xdpkit_common::maps::STATS_MAP)
            .ok_or_else(|| object::missing_map(xdpkit_common::maps::STATS_MAP))?;
        stats::read(map)
    }
}

fn set_config(ebpf: &mut Ebpf, cfg: BenchConfig) -> Result<()> {
    let map = ebpf
        .map_mut(BENCH_CONFIG)
        .ok_or_else(|| object::missing_map(BENCH_CONFIG))?;
    let mut array: Array<_, BenchConfig> =
        Array::try_from(map).map_err(map_err("open the bench config"))?;
    array
        .set(0, cfg, 0)
        .map_err(map_err("write the bench config"))
}

fn usage(message: String) -> Error {
    Error::InvalidArgument(message)
}
