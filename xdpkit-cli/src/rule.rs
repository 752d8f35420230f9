//! `xdpkit rule`

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use xdpkit::firewall::{live::LiveFirewall, Rule, Ruleset};

use crate::output::{print_json, DevArg, JsonArg};

/// Manage the rules of the firewall attached to an interface
/// (`xdpkit attach firewall --dev IF` first).
///
/// Grammar, the same on the command line and in files (one rule a line,
/// `#` starts a comment):
///   <allow|deny|rate-limit PPS|to-userspace> [src CIDR] [dst CIDR]
///   [proto tcp|udp|icmp|icmpv6|NUM] [sport P[-Q]] [dport P[-Q]] [smac MAC] [vlan ID] [prio N]
/// allow hands the frame on down the chain, deny drops it, rate-limit PPS
/// hands on PPS packets a second per source address and drops the rest,
/// to-userspace redirects it into the AF_XDP socket bound to the RX queue it
/// arrived on (`xdpkit::xsk`); with no socket on that queue the frame goes
/// on down the chain like allow (counted as outcome no_socket in `status`).
/// A bare address is a /32 or /128; ports imply TCP or UDP; vlan matches the
/// outer tag; prio defaults to 100. Lower prio is judged first, then the
/// order of insertion; the first matching rule decides; no match gives the
/// default policy. Every change is applied atomically (packets see the old
/// rules or the new ones) without reloading the program, and other rules
/// keep their counters.
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(subcommand)]
    command: RuleCommand,
}

#[derive(Debug, clap::Subcommand)]
enum RuleCommand {
    Add(AddArgs),
    Del(DelArgs),
    List(ListArgs),
    Load(LoadArgs),
    Flush(FlushArgs),
}

/// Add one rule and print its id.
///
/// Examples:
///   xdpkit rule add --dev eth0 deny src 198.18.0.0/16 prio 10
///   xdpkit rule add --dev eth0 to-userspace proto udp dport 5000
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
struct AddArgs {
    #[command(flatten)]
    dev: DevArg,
    /// The rule, as words (see `xdpkit rule --help`).
    #[arg(required = true, num_args = 1.., trailing_var_arg = true, allow_hyphen_values = true, value_name = "RULE")]
    rule: Vec<String>,
    #[command(flatten)]
    json: JsonArg,
}

/// Delete a rule by id.
///
/// Example:
///   xdpkit rule del --dev eth0 3
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
struct DelArgs {
    #[command(flatten)]
    dev: DevArg,
    /// Rule id (see `xdpkit rule list`).
    id: u32,
}

/// List the rules in judging order: id, packets, bytes, last hit, rule.
///
/// Example:
///   xdpkit rule list --dev eth0 --json
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
struct ListArgs {
    #[command(flatten)]
    dev: DevArg,
    #[command(flatten)]
    json: JsonArg,
}

/// Load a rule file. With --replace its rules become the whole ruleset,
/// swapped in atomically, with ids = line numbers; without, they are added
/// after the existing rules with new ids. A bad line names file:line and
/// nothing is applied.
///
/// Example:
///   xdpkit rule load --dev eth0 --file blocklist.rules --replace
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
struct LoadArgs {
    #[command(flatten)]
    dev: DevArg,
    /// Rule file.
    #[arg(short, long, value_name = "FILE")]
    file: PathBuf,
    /// Replace every rule instead of adding.
    #[arg(long)]
    replace: bool,
    #[command(flatten)]
    json: JsonArg,
}

/// Delete every rule.
///
/// Example:
///   xdpkit rule flush --dev eth0
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
struct FlushArgs {
    #[command(flatten)]
    dev: DevArg,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        RuleCommand::Add(a) => {
            let rule: Rule = a.rule.join(" ").parse()?;
            let id = LiveFirewall::open(&a.dev.dev)?.add(rule)?;
            if a.json.json {
                return print_json(&json!({ "id": id }));
            }
            outln!("{id}");
        }
        RuleCommand::Del(a) => {
            LiveFirewall::open(&a.dev.dev)?.delete(a.id)?;
            outln!("deleted rule {} on {}", a.id, a.dev.dev);
        }
        RuleCommand::List(a) => {
            let rows = LiveFirewall::open(&a.dev.dev)?.list()?;
            if a.json.json {
                return print_json(&rows);
            }
            // A million rows: one buffered writer, not a flush per line.
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            writeln!(
                out,
                "{:>7} {:>12} {:>14} {:<20}  rule",
                "id", "packets", "bytes", "last hit"
            )?;
            for r in rows {
                let limits = match (r.passed, r.limited) {
                    (Some(p), Some(l)) => format!("  (passed {p}, limited {l})"),
                    _ => String::new(),
                };
                writeln!(
                    out,
                    "{:>7} {:>12} {:>14} {:<20}  {}{limits}",
                    r.id,
                    r.packets,
                    r.bytes,
                    r.last_hit.as_deref().unwrap_or("-"),
                    r.rule
                )?;
            }
            out.flush()?;
        }
        RuleCommand::Load(a) => {
            let text = std::fs::read_to_string(&a.file)
                .with_context(|| format!("cannot read {}", a.file.display()))?;
            let bar = if a.json.json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                ProgressBar::hidden()
            } else {
                ProgressBar::new(text.len() as u64)
            };
            bar.set_style(
                ProgressStyle::with_template("{msg:>8} [{bar:40}] {bytes}/{total_bytes}")
                    .expect("valid template"),
            );
            bar.set_message("parsing");
            let name = a.file.display().to_string();
            let file =
                Ruleset::parse_file_text_with(&name, &text, |done| bar.set_position(done as u64))?;
            bar.set_message("applying");
            let mut fw = LiveFirewall::open(&a.dev.dev)?;
            let ids = fw.load(&file, a.replace)?;
            bar.finish_and_clear();
            if a.json.json {
                return print_json(
                    &json!({ "loaded": ids.len(), "replace": a.replace, "ids": ids }),
                );
            }
            let how = if a.replace {
                "replaced the ruleset with"
            } else {
                "added"
            };
            outln!("{how} {} rules from {} on {}", ids.len(), name, a.dev.dev);
        }
        RuleCommand::Flush(a) => {
            let n = LiveFirewall::open(&a.dev.dev)?.flush()?;
            outln!("flushed {n} rules on {}", a.dev.dev);
        }
    }
    Ok(())
}
