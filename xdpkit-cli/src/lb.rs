//! `xdpkit lb`

use std::{net::IpAddr, path::PathBuf};

use anyhow::Context as _;
use xdpkit::programs::balancer::{
    config,
    live::{self, LiveBalancer},
    maglev::DEFAULT_RING,
    simulate::{self, Flow, FlowResult, Simulator},
    tables::{describe, parse_vip},
    VIP_NO_FLOWS,
};

use crate::output::{print_json, DevArg, JsonArg};

/// Manage the VIPs and reals of the load balancer attached to an interface
/// (`xdpkit attach balancer --dev IF` first; after the firewall:
/// `xdpkit attach firewall,balancer --dev IF`).
///
/// A TCP or UDP frame to a VIP (ADDRESS:PORT/tcp|udp) goes to one of the
/// VIP's reals, chosen by the VIP's Maglev ring for a new flow and kept by
/// the flow table for an established one, encapsulated toward it (IPIP,
/// IPv4 in IPv6 or ip6ip6, by the real's address family) and sent back out
/// of the interface. Changes take effect without reloading the program:
/// the new ring is written aside and switched in with one update, and
/// established flows keep their real. Weight 0 drains a real.
///
/// Examples:
///   xdpkit lb vip add --dev eth0 198.18.1.10:80/tcp
///   xdpkit lb real add --dev eth0 198.18.1.10:80/tcp 198.18.2.1 --weight 2
///   xdpkit lb real add --dev eth0 198.18.1.10:80/tcp 2001:db8:2::1
///   xdpkit lb list --dev eth0 --json
///   xdpkit lb simulate --dev eth0 --flow '198.18.0.1:1234 -> 198.18.1.10:80/tcp'
///
/// The same VIPs, reals and settings can be declared in the `apply` file
/// (`[interfaces.IF.balancer]`: vips, reals, source4, source6, gateway).
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(subcommand)]
    command: LbCommand,
}

#[derive(Debug, clap::Subcommand)]
enum LbCommand {
    /// Add or remove VIPs.
    #[command(subcommand)]
    Vip(VipCommand),
    /// Add, reweight or remove the reals of a VIP.
    #[command(subcommand)]
    Real(RealCommand),
    List(ListArgs),
    Config(ConfigArgs),
    Simulate(SimulateArgs),
}

/// Show which real each flow goes to, by running the real balancer program
/// (BPF_PROG_TEST_RUN) on a copy of the balancer's tables: nothing is
/// attached, and the live flow table and counters are left untouched.
///
/// The tables are those of the balancer running on --dev (settings, VIPs,
/// reals, rings and its flow table: a flow established there is found,
/// `flow_hit`), or with --config FILE those the `apply` file declares for
/// --dev (an empty flow table). Frames are one per --flow (a TCP flow's
/// frame is an ACK, or a SYN with --syn: a SYN always consults the ring)
/// or those of a pcap or pcapng capture (--pcap), run in order (a flow's
/// first frame fills the copy's flow table, later ones find it) and
/// reported per flow: packets, the real, the outcome (flow_hit, flow_miss:
/// the ring chose; not_vip: on down the chain; no_real: dropped), and the
/// outer header of the encapsulated frame. Only the balancer stage runs,
/// not the stages before it. --json prints {interface, source, packets,
/// flows: [{flow, packets, reals, outcomes, verdicts, outer: {src, dst,
/// encap}, model_disagrees}]}; model_disagrees counts frames on which the
/// reference model decided otherwise (0 unless xdpkit has a bug).
///
/// Examples:
///   xdpkit lb simulate --dev eth0 --flow '198.18.0.1:1234 -> 198.18.1.10:80/tcp'
///   xdpkit lb simulate --dev eth0 --flow '[2001:db8::1]:5353 -> [2001:db8::10]:53/udp' --json
///   xdpkit lb simulate --dev eth0 --pcap clients.pcapng
///   xdpkit lb simulate --dev eth0 --config /etc/xdpkit/host.toml --pcap clients.pcap
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
struct SimulateArgs {
    #[command(flatten)]
    dev: DevArg,
    /// A flow: 'SRC:PORT -> DST:PORT/tcp|udp' (IPv6 in brackets); repeatable.
    #[arg(long, value_name = "FLOW", required_unless_present = "pcap")]
    flow: Vec<Flow>,
    /// A capture to run (pcap or pcapng, Ethernet), grouped by flow.
    #[arg(long, value_name = "FILE", conflicts_with = "flow")]
    pcap: Option<PathBuf>,
    /// --flow frames of TCP flows are SYNs (default: ACKs).
    #[arg(long, requires = "flow")]
    syn: bool,
    /// The balancer the `apply` file declares for --dev, not the running one (`-`: standard input).
    #[arg(short = 'f', long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    json: JsonArg,
}

/// Set where encapsulated frames go and the outer source addresses.
///
/// Outer IPv4 sources come from --source4 (its host bits, at most 16, from
/// the flow hash), IPv6 ones from the --source6 /64 (the flow hash in the
/// last 32 bits): one source per flow, so the reals' RSS spreads flows.
/// Frames go to --gateway, or back to the MAC they came from when none is
/// set. Options not given keep their value.
///
/// Example:
///   xdpkit lb config --dev eth0 --source4 198.19.0.0/16 --source6 2001:db8:ff::/64
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
struct ConfigArgs {
    #[command(flatten)]
    dev: DevArg,
    /// IPv4 network of outer sources (/16 to /32).
    #[arg(long, value_name = "CIDR")]
    source4: Option<ipnet::Ipv4Net>,
    /// IPv6 /64 of outer sources.
    #[arg(long, value_name = "CIDR")]
    source6: Option<ipnet::Ipv6Net>,
    /// Next hop's MAC for encapsulated frames (00:00:00:00:00:00: back to the sender).
    #[arg(long, value_name = "MAC")]
    gateway: Option<String>,
    #[command(flatten)]
    json: JsonArg,
}

#[derive(Debug, clap::Subcommand)]
enum VipCommand {
    Add(VipAddArgs),
    Del(VipDelArgs),
}

#[derive(Debug, clap::Subcommand)]
enum RealCommand {
    Add(RealAddArgs),
    Del(RealDelArgs),
}

/// Add a VIP (its frames are dropped until it has a real).
///
/// Example:
///   xdpkit lb vip add --dev eth0 [2001:db8::10]:443/tcp --ring 65537
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
struct VipAddArgs {
    #[command(flatten)]
    dev: DevArg,
    /// ADDRESS:PORT/tcp or /udp (IPv6 in brackets).
    vip: String,
    /// Slots of its Maglev ring: a prime from 7 to 4194301.
    #[arg(long, default_value_t = DEFAULT_RING)]
    ring: u32,
    /// No flow table: every frame consults the ring (stateless services).
    #[arg(long)]
    no_flows: bool,
}

/// Remove a VIP: its frames go on down the chain.
#[derive(Debug, clap::Args)]
struct VipDelArgs {
    #[command(flatten)]
    dev: DevArg,
    /// ADDRESS:PORT/tcp or /udp.
    vip: String,
}

/// Add a real to a VIP, or set its weight.
///
/// Example:
///   xdpkit lb real add --dev eth0 198.18.1.10:80/tcp 198.18.2.1 --weight 0   # drain
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
struct RealAddArgs {
    #[command(flatten)]
    dev: DevArg,
    /// ADDRESS:PORT/tcp or /udp.
    vip: String,
    /// The real's address (IPv4 or IPv6).
    real: IpAddr,
    /// Share of the VIP's new flows, relative to the other reals' (0 drains).
    #[arg(long, default_value_t = 1)]
    weight: u32,
}

/// Remove a real from a VIP; its established flows choose again.
#[derive(Debug, clap::Args)]
struct RealDelArgs {
    #[command(flatten)]
    dev: DevArg,
    /// ADDRESS:PORT/tcp or /udp.
    vip: String,
    /// The real's address.
    real: IpAddr,
}

/// List VIPs and reals: weights, ring slots, packets and bytes; the flow
/// table's hits and misses (new flows).
#[derive(Debug, clap::Args)]
struct ListArgs {
    #[command(flatten)]
    dev: DevArg,
    #[command(flatten)]
    json: JsonArg,
}

/// `aa:bb:cc:dd:ee:ff`.
fn parse_mac(text: &str) -> anyhow::Result<[u8; 6]> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .ok()
        .filter(|b: &Vec<u8>| b.len() == 6)
        .with_context(|| format!("'{text}' is not a MAC address (aa:bb:cc:dd:ee:ff)"))?;
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&bytes);
    Ok(mac)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        LbCommand::Vip(VipCommand::Add(a)) => {
            let key = parse_vip(&a.vip)?;
            let flags = if a.no_flows { VIP_NO_FLOWS } else { 0 };
            LiveBalancer::open(&a.dev.dev)?.add_vip(key, a.ring, flags)?;
            outln!("added VIP {} on {}", describe(&key), a.dev.dev);
        }
        LbCommand::Vip(VipCommand::Del(a)) => {
            let key = parse_vip(&a.vip)?;
            LiveBalancer::open(&a.dev.dev)?.del_vip(key)?;
            outln!("removed VIP {} on {}", describe(&key), a.dev.dev);
        }
        LbCommand::Real(RealCommand::Add(a)) => {
            let key = parse_vip(&a.vip)?;
            LiveBalancer::open(&a.dev.dev)?.set_real(key, a.real, a.weight)?;
            outln!(
                "VIP {}: real {} weight {}",
                describe(&key),
                a.real,
                a.weight
            );
        }
        LbCommand::Real(RealCommand::Del(a)) => {
            let key = parse_vip(&a.vip)?;
            LiveBalancer::open(&a.dev.dev)?.del_real(key, a.real)?;
            outln!("VIP {}: removed real {}", describe(&key), a.real);
        }
        LbCommand::Config(a) => {
            let gateway = a.gateway.as_deref().map(parse_mac).transpose()?;
            let cfg = LiveBalancer::open(&a.dev.dev)?.configure(a.source4, a.source6, gateway)?;
            let shown = serde_json::json!({
                "interface": a.dev.dev,
                "source4": config::source4(&cfg).to_string(),
                "source6": config::source6(&cfg).to_string(),
                "gateway": config::mac_text(&cfg.gateway),
            });
            if a.json.json {
                return print_json(&shown);
            }
            outln!(
                "{}: outer sources {} and {}, gateway {}",
                a.dev.dev,
                shown["source4"].as_str().unwrap_or(""),
                shown["source6"].as_str().unwrap_or(""),
                shown["gateway"].as_str().unwrap_or("")
            );
        }
        LbCommand::Simulate(a) => return simulate_flows(a),
        LbCommand::List(a) => {
            let status = live::status(&a.dev.dev)
                .with_context(|| format!("reading the balancer of {}", a.dev.dev))?;
            if a.json.json {
                return print_json(&status);
            }
            outln!(
                "{}: flow table hits {}, misses (new flows) {}, no real {}, not to a VIP {}",
                status.interface,
                status.flow_hits,
                status.flow_misses,
                status.no_real,
                status.not_vip
            );
            for v in &status.vips {
                outln!(
                    "VIP {}  ring {}  packets {}  bytes {}",
                    v.vip,
                    v.ring,
                    v.packets,
                    v.bytes
                );
                for r in &v.reals {
                    outln!(
                        "  real {:<40} weight {:>5}  slots {:>7}  packets {:>12}  bytes {:>14}",
                        r.address,
                        r.weight,
                        r.slots,
                        r.packets,
                        r.bytes
                    );
                }
            }
        }
    }
    Ok(())
}

/// `lb simulate`.
fn simulate_flows(a: SimulateArgs) -> anyhow::Result<()> {
    let dev = &a.dev.dev;
    let (mut sim, source) = match &a.config {
        Some(path) => {
            let host = xdpkit::apply::read(path)?;
            let iface = host
                .interfaces
                .get(dev)
                .with_context(|| format!("{} declares no interface {dev}", path.display()))?;
            let stage = iface
                .stages
                .iter()
                .find(|s| s.program == "balancer")
                .with_context(|| format!("{} declares no balancer on {dev}", path.display()))?;
            let declared = config::parse(&stage.settings)
                .map_err(|e| anyhow::anyhow!("{}: {dev}: balancer: {e}", path.display()))?;
            (
                Simulator::declared(&declared)?,
                format!("the balancer {} declares for {dev}", path.display()),
            )
        }
        None => (
            Simulator::live(dev).with_context(|| format!("copying the balancer of {dev}"))?,
            format!("the balancer running on {dev}"),
        ),
    };
    let frames: Vec<Vec<u8>> = match &a.pcap {
        Some(path) => xdpkit::firewall::simulate::read_capture(path)?,
        None => a.flow.iter().map(|f| f.frame(a.syn)).collect(),
    };
    let results = frames
        .iter()
        .map(|f| sim.run(f))
        .collect::<xdpkit::Result<Vec<_>>>()
        .context("simulation failed")?;
    let flows = simulate::by_flow(&results);
    let disagreements: u64 = flows.iter().map(|f| f.model_disagrees).sum();
    if a.json.json {
        print_json(&serde_json::json!({
            "interface": dev,
            "source": source,
            "packets": results.len(),
            "flows": flows,
        }))?;
    } else {
        for f in &flows {
            outln!("{}", flow_line(f));
        }
    }
    let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    eprintln!(
        "{} in {} through {source}",
        plural(results.len(), "packet"),
        plural(flows.len(), "flow")
    );
    if disagreements > 0 {
        // The program decided: its answer is the one shown.
        eprintln!(
            "xdpkit: warning: the reference model disagrees with the program on {disagreements} packets"
        );
    }
    Ok(())
}

/// One flow's line: `FLOW: real R (flow_miss 1, flow_hit 4), outer S -> R ipip`.
fn flow_line(f: &FlowResult) -> String {
    let flow = f
        .flow
        .map_or_else(|| "(not TCP or UDP)".to_string(), |fl| fl.to_string());
    let counts: Vec<String> = f.outcomes.iter().map(|(o, n)| format!("{o} {n}")).collect();
    let packets = if f.packets == 1 {
        String::new()
    } else {
        format!("{} packets, ", f.packets)
    };
    let what = match (f.reals.as_slice(), &f.outer) {
        ([], _) if f.outcomes.contains_key("not_vip") => "not a VIP: next stage".to_string(),
        ([], _) => "no real: dropped".to_string(),
        (reals, outer) => {
            let reals: Vec<String> = reals.iter().map(IpAddr::to_string).collect();
            let outer = outer
                .as_ref()
                .map(|o| format!(", outer {} -> {} {}", o.src, o.dst, o.encap))
                .unwrap_or_default();
            format!("real {}{outer}", reals.join(" then "))
        }
    };
    format!("{flow}: {packets}{what} ({})", counts.join(", "))
}
