//! `xdpkit attach`

use xdpkit::{attach, object::parse_program, AttachRequest, ProgramKind};

use crate::output::{print_json, DevArg, JsonArg, ModeArg, PolicyArgs};

/// Attach an xdpkit program to an interface.
///
/// Programs: pass (count and pass every frame), drop (count and drop), tx
/// (swap MAC addresses and send the frame back out, XDP_TX), redirect (send
/// every frame out of --to through a DEVMAP), firewall (rules managed with
/// `xdpkit rule`; policies set with --default, --fragments, --non-ip and
/// --malformed). Each counts packets and bytes per action in a per-CPU
/// array; see `xdpkit status`. Attaching the firewall again keeps its rules
/// and counters and, with policy flags, changes the policies.
///
/// The program is attached through a bpf_link pinned at
/// /sys/fs/bpf/xdpkit/<IF>/link, so it stays after xdpkit exits. Attaching
/// again on the same interface replaces xdpkit's program atomically (no
/// moment without a program). A program attached by another tool is left
/// alone unless --force is given.
///
/// Examples:
///   xdpkit attach drop --dev veth0
///   xdpkit attach redirect --dev veth0 --to veth1 --mode native
///   xdpkit attach firewall --dev eth0 --default deny --fragments l3
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Program to attach: pass, drop, tx, redirect or firewall.
    #[arg(value_name = "PROGRAM")]
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

    #[command(flatten)]
    pub json: JsonArg,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let program: ProgramKind = parse_program(&args.program)?;
    let report = attach(&AttachRequest {
        iface: args.dev.dev,
        program,
        mode: args.mode.into(),
        to: args.to,
        force: args.force,
        policy: args.policy.any().then(|| args.policy.policy()),
    })?;
    if args.json.json {
        return print_json(&report);
    }
    let mode = report.mode.map(|m| m.name()).unwrap_or("unknown");
    let target = report
        .to
        .as_deref()
        .map(|t| format!(" -> {t}"))
        .unwrap_or_default();
    let replaced = match report.replaced_prog_id {
        Some(id) if report.replaced_foreign => format!(", replaced another tool's program id {id}"),
        Some(id) => format!(", replaced program id {id}"),
        None => String::new(),
    };
    outln!(
        "attached {}{target} to {} in {mode} mode (prog id {}, link id {}{replaced}); state in {}",
        report.program,
        report.iface,
        report.prog_id,
        report.link_id,
        report.pin_dir.display()
    );
    Ok(())
}
