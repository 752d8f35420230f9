//! `xdpkit status`

use std::time::Duration;

use anyhow::Context as _;
use xdpkit::IfaceStatus;

use crate::output::{print_json, si, JsonArg};

/// Show what xdpkit has attached: the stages, ids, mode, attach time, pinned
/// paths, per-action packets, bytes and current rates for the interface,
/// and each stage's own counters ("next": frames it handed to the next
/// stage).
///
/// Rates are measured over --interval seconds (0 skips the sampling).
///
/// Examples:
///   xdpkit status
///   xdpkit status --dev veth0 --json
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Only this interface.
    #[arg(short, long, value_name = "IF")]
    pub dev: Option<String>,

    /// Seconds between the two counter samples used for rates.
    #[arg(short, long, default_value_t = 1.0, value_name = "SECS", value_parser = parse_interval, allow_negative_numbers = true)]
    pub interval: f64,

    #[command(flatten)]
    pub json: JsonArg,
}

fn parse_interval(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if (0.0..=60.0).contains(&v) {
        Ok(v)
    } else {
        Err("interval must be between 0 and 60 seconds".to_string())
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let interval = Duration::from_secs_f64(args.interval);
    let all = xdpkit::status(args.dev.as_deref(), interval).context("cannot read status")?;
    if args.json.json {
        return print_json(&all);
    }
    if all.is_empty() {
        outln!("no xdpkit programs attached");
    }
    for s in &all {
        print_one(s);
    }
    Ok(())
}

fn print_one(s: &IfaceStatus) {
    let mode = s.mode.map(|m| m.name()).unwrap_or("-");
    outln!(
        "{}: {} ({}) prog id {} link id {} mode {} attached {} generation {}",
        s.iface,
        s.program,
        s.state,
        s.prog_id,
        s.link_id,
        mode,
        s.attached_at.as_deref().unwrap_or("?"),
        s.generation
    );
    if let Some(to) = &s.redirect_to {
        outln!("  redirect to {to}");
    }
    // Stage directories hold many maps (the firewall 46): one line each.
    // The interface's directory is the shallowest parent: stage
    // directories ("balancer/") may sort before its own pins ("chain").
    let iface_dir = s
        .pins
        .iter()
        .filter_map(|p| p.parent())
        .min_by_key(|d| d.components().count())
        .map(|d| d.to_path_buf());
    let mut per_stage: Vec<(String, usize)> = Vec::new();
    for pin in &s.pins {
        match (pin.parent(), &iface_dir) {
            (Some(parent), Some(dir)) if parent != dir.as_path() => {
                let stage = parent
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                match per_stage.iter_mut().find(|(name, _)| *name == stage) {
                    Some((_, n)) => *n += 1,
                    None => per_stage.push((stage, 1)),
                }
            }
            _ => outln!("  pinned {}", pin.display()),
        }
    }
    if let Some(dir) = &iface_dir {
        for (stage, n) in &per_stage {
            outln!(
                "  pinned {n} maps of stage {stage} in {}/{stage}/",
                dir.display()
            );
        }
    }
    outln!(
        "  {:<9} {:>14} {:>16} {:>10} {:>10}",
        "action",
        "packets",
        "bytes",
        "pps",
        "bps"
    );
    for row in &s.actions {
        outln!(
            "  {:<9} {:>14} {:>16} {:>10} {:>10}",
            row.action,
            row.packets,
            row.bytes,
            si(row.pps),
            si(row.bps)
        );
    }
    for stage in &s.stages {
        outln!(
            "  stage {} {} (prog id {}):",
            stage.index,
            stage.stage,
            stage.prog_id
        );
        if let Some(total) = stage.memory_bytes {
            let parts: Vec<String> = stage
                .memory
                .iter()
                .map(|p| format!("{} {}", p.part, megabytes(p.bytes)))
                .collect();
            outln!(
                "    kernel memory {} ({})",
                megabytes(total),
                parts.join(", ")
            );
        }
        let seen: Vec<_> = stage.actions.iter().filter(|r| r.packets > 0).collect();
        if seen.is_empty() {
            outln!("    (no frames yet)");
        }
        for row in seen {
            outln!(
                "    {:<7} {:>14} {:>16} {:>10} {:>10}",
                row.action,
                row.packets,
                row.bytes,
                si(row.pps),
                si(row.bps)
            );
        }
        // The firewall's outcomes get their own table below.
        if stage.stage != "firewall" {
            for o in stage.outcomes.iter().filter(|o| o.packets > 0) {
                outln!("    {:<13} {:>8} {:>16}", o.outcome, o.packets, o.bytes);
            }
        }
    }
    if let Some(outcomes) = &s.firewall {
        outln!("  {:<13} {:>10} {:>16}", "firewall", "packets", "bytes");
        for o in outcomes {
            outln!("  {:<13} {:>10} {:>16}", o.outcome, o.packets, o.bytes);
        }
    }
}

/// Bytes as megabytes (10^6, as bytes_memlock is usually quoted), one decimal.
fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}
