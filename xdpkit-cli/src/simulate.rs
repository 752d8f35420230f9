//! `xdpkit simulate`

use std::path::PathBuf;

use anyhow::Context as _;
use xdpkit::firewall::{simulate, Ruleset};

use crate::output::{JsonArg, PolicyArgs};

/// Run every packet of a pcap or pcapng capture through the real firewall
/// program (BPF_PROG_TEST_RUN with the rules of FILE in private maps;
/// nothing is attached) and print one line per packet: index, verdict and
/// the id of the deciding rule (its line number in FILE), or `-` when a
/// policy decided. A summary goes to stderr.
///
/// Rule files hold one rule a line; `#` starts a comment:
///   <allow|deny|rate-limit PPS> [src CIDR] [dst CIDR] [proto tcp|udp|icmp|icmpv6|NUM]
///   [sport P[-Q]] [dport P[-Q]] [smac MAC] [vlan ID] [prio N]
/// Lower prio is judged first (default 100), then file order; the first
/// matching rule decides. Rate limits run on the simulation's clock, not
/// the capture's timestamps.
///
/// Examples:
///   xdpkit simulate --pcap attack.pcapng --rules blocklist.rules
///   xdpkit simulate --pcap dump.pcap --rules fw.rules --default deny --json
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Capture to replay (pcap or pcapng, Ethernet).
    #[arg(long, value_name = "FILE")]
    pub pcap: PathBuf,

    /// Rule file.
    #[arg(long, value_name = "FILE")]
    pub rules: PathBuf,

    #[command(flatten)]
    pub policy: PolicyArgs,

    /// One JSON object a line: {"index":N,"verdict":"pass"|"drop","rule":ID or null}.
    #[command(flatten)]
    pub json: JsonArg,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let rules = Ruleset::read_file(&args.rules)?;
    let frames = simulate::read_capture(&args.pcap)?;
    let results =
        simulate::simulate(&rules, args.policy.policy(), &frames).context("simulation failed")?;
    let mut dropped = 0;
    for r in &results {
        if r.verdict == "drop" {
            dropped += 1;
        }
        if args.json.json {
            println!("{}", serde_json::to_string(r)?);
        } else {
            let rule = r
                .rule
                .map(|id| id.to_string())
                .unwrap_or_else(|| "-".to_string());
            println!("{} {} {rule}", r.index, r.verdict);
        }
    }
    eprintln!(
        "{} packets: {} pass, {dropped} drop ({} rules from {})",
        results.len(),
        results.len() - dropped,
        rules.len(),
        args.rules.display()
    );
    Ok(())
}
