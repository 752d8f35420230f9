//! `xdpkit attach`

use xdpkit::{attach, AttachRequest};

use crate::output::{print_json, DevArg, JsonArg, ModeArg, PolicyArgs};

/// Attach a program, or a chain of programs run in order, to an interface.
///
/// Programs: pass (count and pass every frame), drop (count and drop), tx
/// (swap MAC addresses and send the frame back out, XDP_TX), count (count
/// and hand the frame on: a tap between stages), redirect (send every
/// frame out of --to through a DEVMAP), firewall (rules managed with
/// `xdpkit rule`; policies set with --default, --fragments, --non-ip and
/// --malformed; allowed frames go on to the next stage), cpu (spread
/// flows over --cpus by a flow hash through a CPUMAP; a program on each
/// target CPU counts the frame and passes it to the stack, or drops it
/// with --then drop).
///
/// A comma-separated list makes a chain: `firewall,redirect` runs the
/// firewall, and what it allows is redirected. Each stage ends with a
/// verdict or hands the frame to the next; after the last stage, frames
/// pass to the network stack. Every stage counts packets and bytes per
/// action (and "next") in a per-CPU array; see `xdpkit status`.
///
/// The interface's bpf_link (pinned at /sys/fs/bpf/xdpkit/<IF>/link, so it
/// stays after xdpkit exits) runs a root program that tail-calls the
/// chain. Attaching again on the same interface loads the new chain aside
/// and switches to it in one map update (no moment without a program);
/// stages in both chains keep their maps, rules and counters. A program
/// attached by another tool is left alone unless --force is given.
///
/// Examples:
///   xdpkit attach drop --dev veth0
///   xdpkit attach redirect --dev veth0 --to veth1 --mode native
///   xdpkit attach firewall --dev eth0 --default deny --fragments l3
///   xdpkit attach firewall,count,redirect --dev eth0 --to eth1
///   xdpkit attach cpu --dev veth0 --cpus 0,1 --queue-size 2048
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Program, or comma-separated programs run in order as stages: pass,
    /// drop, tx, count, redirect, firewall, balancer, decap, route, cpu, xsk
    /// (each at most once).
    #[arg(value_name = "PROGRAM[,PROGRAM...]")]
    pub program: String,

    #[command(flatten)]
    pub dev: DevArg,

    /// Attach mode: auto (native if the driver can, else skb), native (in the
    /// driver), skb (generic XDP), offload (on the NIC).
    #[arg(short, long, value_enum, default_value_t = ModeArg::Auto)]
    pub mode: ModeArg,

    /// Egress interface for the redirect program.
    #[arg(long, value_name = "IF")]
    pub to: Option<String>,

    /// Replace an XDP program that another tool attached to the interface.
    #[arg(long)]
    pub force: bool,

    #[command(flatten)]
    pub policy: PolicyArgs,

    /// Firewall: rules to make room for at once (its per-rule counters and
    /// tables are sized for them; default 1023). It grows on demand anyway,
    /// by reloading its stage with bigger maps.
    #[arg(long, value_name = "N")]
    pub max_rules: Option<u64>,

    /// cpu: the CPUs to spread flows over (comma-separated, in the order
    /// the flow hash picks them), e.g. --cpus 0,1.
    #[arg(long, value_name = "CPU,...", value_delimiter = ',')]
    pub cpus: Option<Vec<u32>>,

    /// cpu: frames each CPU's CPUMAP queue holds (default 2048, at most 16384).
    #[arg(long, value_name = "N")]
    pub queue_size: Option<u32>,

    /// cpu: what the program on the target CPU does with each frame: pass
    /// (to the stack, the default) or drop (to benchmark the spreading).
    #[arg(long, value_name = "pass|drop")]
    pub then: Option<String>,

    #[command(flatten)]
    pub json: JsonArg,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let policy = args.policy.any().then(|| args.policy.policy());
    let mut request = AttachRequest::from_list(
        &args.dev.dev,
        &args.program,
        args.mode.into(),
        args.to.as_deref(),
        policy.as_ref(),
        args.force,
    )?;
    request.cpu_settings(args.cpus.as_deref(), args.queue_size, args.then.as_deref())?;
    if let Some(n) = args.max_rules {
        request.max_rules(n)?;
    }
    let report = attach(&request)?;
    if args.json.json {
        return print_json(&report);
    }
    let mode = report.mode.map(|m| m.name()).unwrap_or("unknown");
    let target = args
        .to
        .as_deref()
        .map(|t| format!(" -> {t}"))
        .unwrap_or_default();
    let replaced = match report.replaced_prog_id {
        Some(id) if report.replaced_foreign => format!(", replaced another tool's program id {id}"),
        Some(id) if report.root_replaced => format!(", replaced program id {id}"),
        _ => String::new(),
    };
    let stages: Vec<String> = report
        .stages
        .iter()
        .map(|s| {
            let state = if s.fresh { "new" } else { "state kept" };
            format!("{} (prog id {}, {state})", s.program, s.prog_id)
        })
        .collect();
    outln!(
        "attached {}{target} to {} in {mode} mode (prog id {}, link id {}{replaced}); state in {}",
        report.program,
        report.iface,
        report.prog_id,
        report.link_id,
        report.pin_dir.display()
    );
    if report.stages.len() > 1 || report.replaced_prog_id.is_some() {
        outln!("  stages: {}", stages.join(", "));
    }
    Ok(())
}
