//! `xdpkit apply`

use std::path::PathBuf;

use xdpkit::apply::{self, ApplyOptions};

use crate::output::{print_json, JsonArg};

/// Make what runs equal to a host configuration file.
///
/// The file declares, per interface, the attach mode, the stages in order
/// and each stage's settings (firewall policies and rules inline or from a
/// rules file, the redirect target, the balancer's VIPs, reals and outer
/// sources). Apply compares it with what runs and changes only what
/// differs: each changed interface gets its new chain loaded aside and
/// switched in at once; stages that stay keep their maps, firewall rules
/// that stay keep their ids and counters, and balancer VIPs and reals that
/// stay keep their counters and flows (a real reweighted or drained
/// switches its VIP to a rebuilt ring). Applying the same file again
/// changes nothing and says so. A stage loaded by another build of xdpkit
/// is replaced in place (an upgrade), counters kept.
///
/// Everything is checked before anything changes: a bad file (named with
/// file:line and key), an unknown interface or redirect target, a mode the
/// device lacks, or another tool's program (without --force) exits 2 with
/// the system untouched. Interfaces xdpkit runs that the file does not name
/// are reported, or detached with --prune.
///
/// File format (see the README, "Configuration"):
///   [interfaces.eth0]
///   mode = "native"                     # auto (default) | native | skb
///   stages = ["firewall", "redirect"]
///   [interfaces.eth0.firewall]
///   default = "drop"                    # pass | drop
///   rules = ["allow src 198.18.41.0/24 prio 10"]
///   rules-file = "blocklist.rules"      # relative to the file
///   [interfaces.eth0.redirect]
///   to = "eth1"
///   [interfaces.eth1.balancer]
///   source4 = "198.19.0.0/16"           # outer IPv4 sources (/16 to /32)
///   vips = ["198.18.1.10:80/tcp"]       # ADDRESS:PORT/PROTO [ring N] [no-flows]
///   reals = ["198.18.1.10:80/tcp 198.18.2.1 weight 2"]   # VIP REAL [weight W]
///
/// Examples:
///   xdpkit apply -f /etc/xdpkit/host.toml --dry-run
///   xdpkit apply -f /etc/xdpkit/host.toml
///   xdpkit export | xdpkit apply --dry-run -f -
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The configuration file (`-`: standard input).
    #[arg(short, long, value_name = "FILE")]
    pub file: PathBuf,

    /// Print the difference from what runs (stages added, removed or moved;
    /// rules added and removed; policies changed; balancer VIPs and reals
    /// added, removed or changed) and change nothing.
    #[arg(short = 'n', long)]
    pub dry_run: bool,

    /// Detach interfaces xdpkit manages that the file does not name.
    #[arg(long)]
    pub prune: bool,

    /// Replace XDP programs that another tool attached to named interfaces.
    #[arg(long)]
    pub force: bool,

    #[command(flatten)]
    pub json: JsonArg,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let desired = apply::read(&args.file)?;
    let report = apply::apply(
        &desired,
        ApplyOptions {
            dry_run: args.dry_run,
            prune: args.prune,
            force: args.force,
        },
    )?;
    if args.json.json {
        return print_json(&report);
    }
    // Named as in error messages: `-` is standard input.
    let file = if args.file.as_os_str() == "-" {
        "<stdin>".to_string()
    } else {
        args.file.display().to_string()
    };
    if report.diff.is_empty() && report.is_noop() {
        outln!("{file}: no changes: the running state already matches");
    } else if !report.diff.is_empty() {
        // An upgrade alone has no difference to show ("no changes" would
        // contradict the "applied" line below).
        out!("{}", with_newline(&report.diff.render()));
    }
    for name in &report.upgraded {
        let done = if report.dry_run {
            "would be replaced in place"
        } else {
            "replaced in place"
        };
        outln!("{name}: stages loaded by another xdpkit build: {done}");
    }
    for name in &report.unmanaged {
        outln!("{name}: managed by xdpkit but not in {file}: left running (--prune detaches it)");
    }
    if report.dry_run {
        outln!("dry run: nothing changed");
        return Ok(());
    }
    if !report.is_noop() {
        let mut done = Vec::new();
        if !report.applied.is_empty() {
            done.push(format!("applied {}", report.applied.join(", ")));
        }
        if !report.detached.is_empty() {
            done.push(format!("detached {}", report.detached.join(", ")));
        }
        outln!("{}", done.join("; "));
    }
    Ok(())
}

fn with_newline(text: &str) -> String {
    if text.is_empty() || text.ends_with('\n') {
        text.to_string()
    } else {
        format!("{text}\n")
    }
}
