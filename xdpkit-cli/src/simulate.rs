//! `xdpkit simulate`

use std::path::PathBuf;

use anyhow::Context as _;
use xdpkit::firewall::{live::FirewallView, simulate, Ruleset};

use crate::output::{JsonArg, PolicyArgs};

/// Run every packet of a pcap or pcapng capture through the real firewall
/// program (BPF_PROG_TEST_RUN in private maps; nothing is attached) and
/// print one line per packet: index, verdict (pass, drop or to-userspace)
/// and the id of the deciding rule, or `-` when a policy decided. A summary
/// goes to stderr. `to-userspace`: a to-userspace rule decided; on an
/// interface the frame goes into the AF_XDP socket bound to its RX queue,
/// or, with no socket there, on down the chain like `pass` (the simulation
/// binds no socket, so the program handed it on).
///
/// With --rules FILE the rules are the file's (ids = line numbers) and the
/// policies come from the flags. With --dev IF they are a snapshot of the
/// rules and policies of the firewall attached to IF: the same decisions,
/// while the live counters and rate-limit buckets stay untouched.
///
/// Rule files hold one rule a line; `#` starts a comment:
///   <allow|deny|rate-limit PPS|to-userspace> [src CIDR] [dst CIDR] [proto tcp|udp|icmp|icmpv6|NUM]
///   [sport P[-Q]] [dport P[-Q]] [smac MAC] [vlan ID] [prio N]
/// Lower prio is judged first (default 100), then file order; the first
/// matching rule decides. Rate limits run on the simulation's clock, not
/// the capture's timestamps.
///
/// Examples:
///   xdpkit simulate --pcap attack.pcapng --rules blocklist.rules
///   xdpkit simulate --pcap dump.pcap --rules fw.rules --default deny --json
///   xdpkit simulate --pcap dump.pcap --dev eth0
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Capture to replay (pcap or pcapng, Ethernet).
    #[arg(long, value_name = "FILE")]
    pub pcap: PathBuf,

    /// Rule file.
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "dev",
        conflicts_with = "dev"
    )]
    pub rules: Option<PathBuf>,

    /// Use the rules and policies of the firewall attached to this interface.
    #[arg(long, value_name = "IF")]
    pub dev: Option<String>,

    #[command(flatten)]
    pub policy: PolicyArgs,

    /// One JSON object a line: {"index":N,"verdict":"pass"|"drop"|"to-userspace","rule":ID or null}.
    #[command(flatten)]
    pub json: JsonArg,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let (rules, policy, source) = match (&args.rules, &args.dev) {
        (Some(file), _) => (
            Ruleset::read_file(file)?,
            args.policy.policy(),
            file.display().to_string(),
        ),
        (None, Some(dev)) => {
            anyhow::ensure!(
                !args.policy.any(),
                "policy flags only go with --rules: with --dev the firewall's own policies apply"
            );
            let fw = FirewallView::open(dev)?;
            (fw.rules()?, fw.policy()?, format!("the firewall on {dev}"))
        }
        (None, None) => anyhow::bail!("give --rules FILE or --dev IF"),
    };
    let frames = simulate::read_capture(&args.pcap)?;
    let results = simulate::simulate(&rules, policy, &frames).context("simulation failed")?;
    let (mut dropped, mut to_user) = (0, 0);
    for r in &results {
        match r.verdict {
            "drop" => dropped += 1,
            "to-userspace" => to_user += 1,
            _ => {}
        }
        if args.json.json {
            outln!("{}", serde_json::to_string(r)?);
        } else {
            let rule = r
                .rule
                .map(|id| id.to_string())
                .unwrap_or_else(|| "-".to_string());
            outln!("{} {} {rule}", r.index, r.verdict);
        }
    }
    let passed = results.len() - dropped - to_user;
    let to_user = if to_user > 0 {
        format!(
            ", {to_user} to-userspace (into the AF_XDP socket of their RX queue; \
             with none bound there, on down the chain like pass)"
        )
    } else {
        String::new()
    };
    eprintln!(
        "{} packets: {passed} pass, {dropped} drop{to_user} ({} rules from {})",
        results.len(),
        rules.len(),
        source
    );
    Ok(())
}
