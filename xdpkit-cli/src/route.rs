//! `xdpkit route`

use std::{net::IpAddr, path::PathBuf};

use anyhow::Context as _;
use serde::Serialize;
use xdpkit::programs::route::{
    live::{self, RouteStatus},
    simulate::{self, FrameSpec, Simulated, Simulator},
};

use crate::output::{print_json, DevArg, JsonArg, ModeArg};

/// Forward IPv4 and IPv6 between interfaces in XDP, with the kernel's own
/// routes and neighbours (bpf_fib_lookup), like xdp-tools' xdp-forward.
///
/// `route enable A B ...` puts the route stage on each interface (after the
/// stages it runs, e.g. the firewall) and makes every listed interface a
/// port of every other: a frame whose route leaves by a port is sent out
/// there by XDP_REDIRECT, its TTL or hop limit lowered, the IPv4 checksum
/// updated and the next hop's MACs written. Everything the stack must see
/// goes on to it untouched, counted by reason: next hop not resolved yet
/// (the stack resolves it; later frames go by XDP), TTL 1, fragments, IP
/// options, local or martian addresses, no route, too big for the egress
/// MTU, an egress that is not a port, not IP. Netfilter (forward chain,
/// conntrack, NAT) does not see the frames XDP forwards.
///
/// Needs forwarding on (sysctl net.ipv4.ip_forward=1,
/// net.ipv6.conf.all.forwarding=1). A veth port delivers XDP-forwarded
/// frames to its peer only if the peer runs an XDP program or has GRO on
/// (`ethtool -K PEER gro on`); `enable` names the ports concerned.
///
/// Examples:
///   xdpkit route enable eth0 eth1
///   xdpkit route status --dev eth0
///   xdpkit route list --json
///   xdpkit route ports add --dev eth0 eth2
///   xdpkit route simulate --dev eth0 --src 198.18.1.2 --dst 198.18.2.2
///   xdpkit route simulate --dev eth0 --pcap capture.pcapng --json
///   xdpkit route disable eth0 eth1
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(subcommand)]
    command: RouteCommand,
}

#[derive(Debug, clap::Subcommand)]
enum RouteCommand {
    Enable(EnableArgs),
    Disable(DisableArgs),
    /// Add, remove or list the ports of a route stage.
    #[command(subcommand)]
    Ports(PortsCommand),
    List(ListArgs),
    Status(StatusArgs),
    Simulate(SimulateArgs),
}

/// Forward between interfaces
///
/// Puts the route stage on each interface (appended to its chain) and
/// makes every one a port of every other (ports it had stay).
///
/// Example:
///   xdpkit route enable eth0 eth1 --mode native
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
struct EnableArgs {
    /// The interfaces to forward between.
    #[arg(required = true, value_name = "IF")]
    ifaces: Vec<String>,
    /// Attach mode for interfaces xdpkit does not run yet (others keep theirs).
    #[arg(short, long, value_enum, default_value_t = ModeArg::Auto)]
    mode: ModeArg,
    /// Replace XDP programs other tools attached to these interfaces.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    json: JsonArg,
}

/// Stop forwarding on interfaces.
///
/// Takes the route stage off them (an interface left without stages is
/// detached) and them out of every other route stage's ports.
#[derive(Debug, clap::Args)]
struct DisableArgs {
    /// The interfaces.
    #[arg(required = true, value_name = "IF")]
    ifaces: Vec<String>,
}

#[derive(Debug, clap::Subcommand)]
enum PortsCommand {
    /// Add ports to the route stage on an interface (in place: no reload)
    Add(PortsArgs),
    /// Remove ports from the route stage on an interface (in place)
    Del(PortsArgs),
    List(PortsListArgs),
}

/// Add ports to the route stage on an interface, or remove them
///
/// In place: no reload, counters kept.
///
/// Example:
///   xdpkit route ports add --dev eth0 eth2 eth3
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
struct PortsArgs {
    #[command(flatten)]
    dev: DevArg,
    /// The ports (interfaces frames may leave by).
    #[arg(required = true, value_name = "PORT")]
    ports: Vec<String>,
}

/// The ports of the route stage on an interface.
#[derive(Debug, clap::Args)]
struct PortsListArgs {
    #[command(flatten)]
    dev: DevArg,
    #[command(flatten)]
    json: JsonArg,
}

/// Every route stage in this network namespace: ports and counters.
#[derive(Debug, clap::Args)]
struct ListArgs {
    #[command(flatten)]
    json: JsonArg,
}

/// One route stage: its ports and frames by outcome.
#[derive(Debug, clap::Args)]
struct StatusArgs {
    #[command(flatten)]
    dev: DevArg,
    #[command(flatten)]
    json: JsonArg,
}

/// Where frames arriving on an interface would go
///
/// Runs them through the real route program (BPF_PROG_TEST_RUN, loaded privately: nothing is attached or
/// counted), with the kernel's routes and neighbours of this network
/// namespace. Prints per frame: the outcome, and the egress interface,
/// next hop and its MAC (or the MTU for a frame too big).
///
/// The ports are those of the route stage running on --dev, or --ports.
/// One frame from --src/--dst (sent to --dev's MAC), or every frame of
/// --pcap.
///
/// Examples:
///   xdpkit route simulate --dev eth0 --src 198.18.1.2 --dst 198.18.2.2 --ttl 1
///   xdpkit route simulate --dev eth0 --ports eth0,eth1 --src 2001:db8:1::2 --dst 2001:db8:2::2 --proto tcp
///   xdpkit route simulate --dev eth0 --pcap capture.pcapng --json
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
struct SimulateArgs {
    /// The interface the frames arrive on.
    #[command(flatten)]
    dev: DevArg,
    /// Ports to use instead of the running stage's (comma separated).
    #[arg(long, value_name = "IF,...", value_delimiter = ',')]
    ports: Option<Vec<String>>,
    /// Capture to replay (pcap or pcapng, Ethernet).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["src", "dst"])]
    pcap: Option<PathBuf>,
    /// Source address of the one frame.
    #[arg(
        long,
        value_name = "ADDR",
        requires = "dst",
        required_unless_present = "pcap"
    )]
    src: Option<IpAddr>,
    /// Destination address of the one frame.
    #[arg(long, value_name = "ADDR", requires = "src")]
    dst: Option<IpAddr>,
    /// Its protocol: udp, tcp (a SYN) or icmp (an echo request).
    #[arg(long, default_value = "udp", value_parser = ["udp", "tcp", "icmp"])]
    proto: String,
    /// Its TTL or hop limit.
    #[arg(long, default_value_t = 64)]
    ttl: u8,
    /// Its payload bytes.
    #[arg(long, default_value_t = 18, value_name = "BYTES", value_parser = clap::value_parser!(u16).range(0..=9000))]
    size: u16,
    /// Its destination MAC (default: --dev's).
    #[arg(long, value_name = "MAC")]
    dst_mac: Option<String>,
    /// One JSON object a line.
    #[command(flatten)]
    json: JsonArg,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        RouteCommand::Enable(a) => enable(a),
        RouteCommand::Disable(a) => {
            let gone = xdpkit::forwarding::disable(&a.ifaces)?;
            outln!("route stage removed from {}", gone.join(", "));
            Ok(())
        }
        RouteCommand::Ports(PortsCommand::Add(a)) => {
            let now = live::add_ports(&a.dev.dev, &a.ports)?;
            for line in live::veth_advice(&a.ports) {
                eprintln!("xdpkit: note: {line}");
            }
            outln!("{} ports: {}", a.dev.dev, now.join(" "));
            Ok(())
        }
        RouteCommand::Ports(PortsCommand::Del(a)) => {
            let now = live::remove_ports(&a.dev.dev, &a.ports)?;
            outln!("{} ports: {}", a.dev.dev, now.join(" "));
            Ok(())
        }
        RouteCommand::Ports(PortsCommand::List(a)) => {
            let s = live::status(&a.dev.dev)?;
            if a.json.json {
                return print_json(&s.ports);
            }
            for p in &s.ports {
                outln!("{p}");
            }
            Ok(())
        }
        RouteCommand::List(a) => {
            let all = xdpkit::forwarding::list()?;
            if a.json.json {
                return print_json(&all);
            }
            if all.is_empty() {
                outln!("no route stage in this network namespace");
            }
            all.iter().for_each(print_status);
            Ok(())
        }
        RouteCommand::Status(a) => {
            let s = live::status(&a.dev.dev)?;
            if a.json.json {
                return print_json(&s);
            }
            print_status(&s);
            Ok(())
        }
        RouteCommand::Simulate(a) => simulate(a),
    }
}

#[derive(Serialize)]
struct Enabled {
    interfaces: Vec<String>,
    stages: Vec<String>,
    notes: Vec<String>,
}

fn enable(a: EnableArgs) -> anyhow::Result<()> {
    let reports = xdpkit::forwarding::enable(&a.ifaces, a.mode.into(), a.force)?;
    let notes = live::veth_advice(&a.ifaces);
    if a.json.json {
        return print_json(&Enabled {
            interfaces: reports.iter().map(|r| r.iface.clone()).collect(),
            stages: reports.iter().map(|r| r.program.clone()).collect(),
            notes,
        });
    }
    for r in &reports {
        outln!(
            "{}: {} (prog id {}, link id {})",
            r.iface,
            r.program,
            r.prog_id,
            r.link_id
        );
    }
    outln!("forwarding between {}", a.ifaces.join(", "));
    for line in notes {
        eprintln!("xdpkit: note: {line}");
    }
    Ok(())
}

fn print_status(s: &RouteStatus) {
    outln!("{}: ports {}", s.interface, s.ports.join(" "));
    for o in &s.outcomes {
        if o.packets > 0 || o.outcome == "forwarded" {
            outln!(
                "  {:<16} {:>12} pkts {:>14} bytes",
                o.outcome,
                o.packets,
                o.bytes
            );
        }
    }
}

fn simulate(a: SimulateArgs) -> anyhow::Result<()> {
    let dev = &a.dev.dev;
    let mut sim = match &a.ports {
        Some(ports) => Simulator::new(dev, ports)?,
        None => Simulator::for_running(dev)?,
    };
    let frames = match (&a.pcap, a.src, a.dst) {
        (Some(file), _, _) => xdpkit::firewall::simulate::read_capture(file)?,
        (None, Some(src), Some(dst)) => {
            let dst_mac = match &a.dst_mac {
                Some(m) => Some(
                    xdpkit::iface::parse_mac(m)
                        .with_context(|| format!("--dst-mac {m} is not a MAC address"))?,
                ),
                None => None,
            };
            let spec = FrameSpec {
                src,
                dst,
                proto: a.proto.clone(),
                ttl: a.ttl,
                payload: usize::from(a.size),
                dst_mac,
            };
            vec![simulate::build_frame(&spec, dev)?]
        }
        _ => anyhow::bail!("give --pcap FILE, or --src and --dst"),
    };
    let mut forwarded = 0;
    for (i, frame) in frames.iter().enumerate() {
        let r = sim.run(i, frame)?;
        if r.outcome == "forwarded" {
            forwarded += 1;
        }
        if a.json.json {
            outln!("{}", serde_json::to_string(&r)?);
        } else {
            outln!("{}", describe(&r));
        }
    }
    eprintln!(
        "{} frames: {forwarded} forwarded, {} to the stack",
        frames.len(),
        frames.len() - forwarded
    );
    Ok(())
}

/// `0 forwarded via eth1 next-hop 198.18.2.2 (02:..) ttl 64->63`.
fn describe(r: &Simulated) -> String {
    let mut line = format!("{} {}", r.index, r.outcome);
    if let Some(egress) = &r.egress {
        line.push_str(&format!(" via {egress}"));
    }
    if let Some(hop) = r.next_hop {
        line.push_str(&format!(" next-hop {hop}"));
    }
    if let Some(mac) = &r.next_hop_mac {
        line.push_str(&format!(" ({mac})"));
    }
    if let Some((a, b)) = r.ttl {
        line.push_str(&format!(" ttl {a}->{b}"));
    }
    if let Some(mtu) = r.mtu {
        line.push_str(&format!(" mtu {mtu}"));
    }
    line
}
