//! `xdpkit bench`

use std::time::{Duration, Instant};

use serde::Serialize;
use xdpkit::{
    bench::{Bench, BenchAction, BenchRequest, Touch},
    stats::ActionTotals,
    XdpAction,
};

use crate::{
    output::{print_json, si, DevArg, JsonArg},
    signals,
};

/// Measure how fast an interface's XDP path handles frames: attach a
/// program that gives every frame one verdict (drop, pass, tx, redirect to
/// --to, or redirect-cpu to --cpu) after touching it as asked, then print
/// each second the received frames per second, Mbps and the count per
/// action, and a summary at the end; detach when done (after --duration,
/// or on Ctrl-C). Send traffic from elsewhere, e.g. `xdpkit trafficgen`.
///
/// --touch: none (no packet byte read), read (the Ethernet header),
/// parse-ip (Ethernet and the IPv4/IPv6 header, as a filter would),
/// swap-macs (a write). Mbps counts the frames' bytes (no FCS or gaps).
/// The interface must not run another XDP program. Nothing is pinned: the
/// program goes away with this process, however it ends.
///
/// Examples:
///   xdpkit bench drop --dev veth0 --duration 10
///   xdpkit bench tx --dev veth0 --touch swap-macs --mode skb
///   xdpkit bench redirect --dev veth0 --to veth2 --json
///   xdpkit bench redirect-cpu --dev veth0 --cpu 1
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Verdict for every frame.
    #[arg(value_enum, value_name = "ACTION")]
    pub action: ActionArg,

    #[command(flatten)]
    pub dev: DevArg,

    /// Egress interface of redirect.
    #[arg(long, value_name = "IF")]
    pub to: Option<String>,

    /// Target CPU of redirect-cpu (default 0).
    #[arg(long, value_name = "N")]
    pub cpu: Option<u32>,

    /// Work done on each frame before the verdict.
    #[arg(long, value_enum, default_value_t = TouchArg::None)]
    pub touch: TouchArg,

    /// native (in the driver) or skb (generic XDP).
    #[arg(short, long, value_enum, default_value_t = BenchMode::Native)]
    pub mode: BenchMode,

    /// Seconds to run (default: until Ctrl-C).
    #[arg(long, value_name = "S", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub duration: Option<u64>,

    /// Print one JSON object at the end (per-second samples and a summary)
    /// instead of text.
    #[command(flatten)]
    pub json: JsonArg,
}

/// The bench program's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ActionArg {
    /// XDP_DROP.
    Drop,
    /// XDP_PASS.
    Pass,
    /// XDP_TX.
    Tx,
    /// XDP_REDIRECT to --to.
    Redirect,
    /// XDP_REDIRECT to --cpu.
    RedirectCpu,
}

/// `--touch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TouchArg {
    /// Read nothing.
    None,
    /// Read the Ethernet header.
    Read,
    /// Parse Ethernet and IP.
    ParseIp,
    /// Swap MAC addresses.
    SwapMacs,
}

/// `--mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchMode {
    /// In the driver.
    Native,
    /// Generic XDP.
    Skb,
}

/// One second (or the last, shorter interval).
#[derive(Debug, Serialize)]
struct Sample {
    /// Seconds since the start, at the end of the interval.
    at: f64,
    rx_pps: f64,
    mbps: f64,
    /// Frames per second per action.
    actions: Vec<(&'static str, f64)>,
}

#[derive(Debug, Serialize)]
struct Report {
    dev: String,
    action: &'static str,
    touch: &'static str,
    mode: &'static str,
    seconds: f64,
    packets: u64,
    bytes: u64,
    rx_pps: f64,
    mbps: f64,
    /// Frames per action over the whole run.
    per_action: Vec<(&'static str, u64)>,
    samples: Vec<Sample>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let req = BenchRequest {
        iface: args.dev.dev.clone(),
        action: match args.action {
            ActionArg::Drop => BenchAction::Drop,
            ActionArg::Pass => BenchAction::Pass,
            ActionArg::Tx => BenchAction::Tx,
            ActionArg::Redirect => BenchAction::Redirect,
            ActionArg::RedirectCpu => BenchAction::RedirectCpu,
        },
        touch: match args.touch {
            TouchArg::None => Touch::None,
            TouchArg::Read => Touch::Read,
            TouchArg::ParseIp => Touch::ParseIp,
            TouchArg::SwapMacs => Touch::SwapMacs,
        },
        mode: match args.mode {
            BenchMode::Native => xdpkit::Mode::Native,
            BenchMode::Skb => xdpkit::Mode::Skb,
        },
        to: args.to.clone(),
        cpu: args.cpu,
    };
    signals::stop_on_interrupt();
    let bench = Bench::start(&req)?;
    let text = !args.json.json;
    if text {
        outln!(
            "{} on {} ({} mode, touch {}): {}",
            req.action.name(),
            req.iface,
            req.mode.name(),
            req.touch.name(),
            args.duration
                .map_or("until Ctrl-C".to_string(), |s| format!("for {s} s"))
        );
    }
    let started = Instant::now();
    let end = args.duration.map(|s| started + Duration::from_secs(s));
    let first = bench.totals()?;
    let mut last = (started, first);
    let mut samples = Vec::new();
    loop {
        let tick = last.0 + Duration::from_secs(1);
        let stop_at = end.map_or(tick, |e| e.min(tick));
        while Instant::now() < stop_at && !signals::stopped() {
            std::thread::sleep(Duration::from_millis(20));
        }
        let now = Instant::now();
        let totals = bench.totals()?;
        let sample = sample(
            &last.1,
            &totals,
            now - last.0,
            (now - started).as_secs_f64(),
        );
        if text {
            print_sample(&sample);
        }
        samples.push(sample);
        last = (now, totals);
        if signals::stopped() || end.is_some_and(|e| now >= e) {
            break;
        }
    }
    drop(bench);
    let seconds = (last.0 - started).as_secs_f64().max(1e-9);
    let packets = last.1.total().packets - first.total().packets;
    let bytes = last.1.total().bytes - first.total().bytes;
    let report = Report {
        dev: req.iface.clone(),
        action: req.action.name(),
        touch: req.touch.name(),
        mode: req.mode.name(),
        seconds,
        packets,
        bytes,
        rx_pps: packets as f64 / seconds,
        mbps: bytes as f64 * 8.0 / seconds / 1e6,
        per_action: XdpAction::ALL
            .iter()
            .map(|&a| (a.name(), last.1.get(a).packets - first.get(a).packets))
            .collect(),
        samples,
    };
    if !text {
        return print_json(&report);
    }
    let actions: Vec<String> = report
        .per_action
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(name, n)| format!("{name} {n}"))
        .collect();
    outln!(
        "summary: {} frames in {:.1} s, {} pps, {:.1} Mbps average ({}); detached from {}",
        report.packets,
        report.seconds,
        si(report.rx_pps),
        report.mbps,
        if actions.is_empty() {
            "no frames".to_string()
        } else {
            actions.join(", ")
        },
        report.dev
    );
    Ok(())
}

fn sample(before: &ActionTotals, after: &ActionTotals, elapsed: Duration, at: f64) -> Sample {
    let secs = elapsed.as_secs_f64().max(1e-9);
    let total = |t: &ActionTotals| t.total();
    Sample {
        at,
        rx_pps: (total(after).packets - total(before).packets) as f64 / secs,
        mbps: (total(after).bytes - total(before).bytes) as f64 * 8.0 / secs / 1e6,
        actions: XdpAction::ALL
            .iter()
            .map(|&a| {
                let n = after.get(a).packets - before.get(a).packets;
                (a.name(), n as f64 / secs)
            })
            .collect(),
    }
}

fn print_sample(s: &Sample) {
    let actions: Vec<String> = s
        .actions
        .iter()
        .filter(|(_, pps)| *pps > 0.0)
        .map(|(name, pps)| format!("{name} {}", si(*pps)))
        .collect();
    outln!(
        "{:>6.1} s  rx {:>9} pps  {:>9.1} Mbps  {}",
        s.at,
        si(s.rx_pps),
        s.mbps,
        actions.join("  ")
    );
}
