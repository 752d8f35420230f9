//! `xdpkit lb`

use std::{net::IpAddr, path::PathBuf};

use anyhow::Context as _;
use xdpkit::programs::balancer::{
    config,
    live::{self, Encap, LiveBalancer, SettingsChange, SettingsView},
    maglev::DEFAULT_RING,
    simulate::{self, Flow, FlowResult, Simulator},
    tables::{describe, parse_vip},
    VIP_NO_FLOWS, VIP_QUIC,
};

use crate::output::{print_json, DevArg, JsonArg};

/// Manage the VIPs and reals of the load balancer attached to an interface
/// (`xdpkit attach balancer --dev IF` first; after the firewall:
/// `xdpkit attach firewall,balancer --dev IF`).
///
/// A TCP or UDP frame to a VIP (ADDRESS:PORT/tcp|udp) goes to one of the
/// VIP's reals, chosen by the VIP's Maglev ring for a new flow and kept by
/// the flow table for an established one, encapsulated toward it (IPIP,
/// IPv4 in IPv6 or ip6ip6, by the real's address family, or GUE) and sent
/// back out of the interface, or out of a second one (`lb config
/// --egress`). Packets too big for the path once encapsulated get ICMP
/// "too big" back (`lb config --mtu`). Changes take effect without
/// reloading the program: the new ring is written aside and switched in
/// with one update, and established flows keep their real. Weight 0 drains
/// a real.
///
/// Examples:
///   xdpkit lb vip add --dev eth0 198.18.1.10:80/tcp
///   xdpkit lb real add --dev eth0 198.18.1.10:80/tcp 198.18.2.1 --weight 2
///   xdpkit lb real add --dev eth0 198.18.1.10:80/tcp 2001:db8:2::1
///   xdpkit lb list --dev eth0 --json
///   xdpkit lb simulate --dev eth0 --flow '198.18.0.1:1234 -> 198.18.1.10:80/tcp'
///
/// The same VIPs, reals and settings can be declared in the `apply` file
/// (`[interfaces.IF.balancer]`: vips, reals, source4, source6, gateway,
/// encap, gue-port, mtu, egress, max-new-per-sec, quic-ids).
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
    /// Route QUIC packets by the server id in their connection id.
    #[command(subcommand)]
    Quic(QuicCommand),
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

#[derive(Debug, clap::Subcommand)]
enum QuicCommand {
    Add(QuicAddArgs),
    Del(QuicDelArgs),
}

/// Send QUIC packets whose connection id names server ID to REAL.
///
/// For UDP VIPs added with --quic. The server id is read as Katran's
/// connection-id version 1 does: the destination connection id's first two
/// bits are 01, the next 16 bits are the id. Initial and 0-RTT packets (a
/// client-chosen id) and ids without a real go through the flow table and
/// the ring as usual.
///
/// Example:
///   xdpkit lb quic add --dev eth0 1025 198.18.2.1
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
struct QuicAddArgs {
    #[command(flatten)]
    dev: DevArg,
    /// Server id, 1 to 65535.
    id: u16,
    /// A real of one of the interface's VIPs.
    real: IpAddr,
}

/// Forget QUIC server id ID.
#[derive(Debug, clap::Args)]
struct QuicDelArgs {
    #[command(flatten)]
    dev: DevArg,
    /// Server id.
    id: u16,
}

/// Set how frames are encapsulated, where they go, and the guards.
///
/// Outer IPv4 sources come from --source4 (its host bits, at most 16, from
/// the flow hash), IPv6 ones from the --source6 /64 (the flow hash in the
/// last 32 bits): one source per flow, so the reals' RSS spreads flows.
/// Frames go to --gateway, or back to the MAC they came from when none is
/// set; with --egress they leave through a second interface (two-interface
/// mode, XDP_REDIRECT; --gateway is then required). --encap gue adds a UDP
/// header to --gue-port (source port from the flow hash) between the outer
/// and the inner IP header; the reals' `decap` stage strips GUE to port
/// 6080. --mtu is the path's MTU toward the reals: a frame that would
/// exceed it encapsulated is answered with ICMP fragmentation needed
/// (IPv4 with DF; without DF it is dropped) or packet too big (IPv6).
/// --max-new-per-sec caps the flow-table entries added per second (applied
/// per CPU, rounded up to a multiple of the CPUs): above it new flows are
/// still balanced but not remembered, so a SYN flood cannot push
/// established flows out. --flow-hash says what hashes new flows onto the
/// ring: auto (the default) takes the driver's RX hash where the interface
/// runs the RX-hash root (the balancer attached in native mode on a driver
/// that offers the hash, as veth does; `xdpkit doctor --dev` says) and the
/// 5-tuple elsewhere; tuple always hashes the 5-tuple, which balancers
/// behind one ECMP router need (each host's RX hash differs, the 5-tuple
/// hash does not, so all of them pick the same real for a flow). Options
/// not given keep their value.
///
/// Examples:
///   xdpkit lb config --dev eth0 --source4 198.19.0.0/16 --source6 2001:db8:ff::/64
///   xdpkit lb config --dev eth0 --egress eth1 --gateway 02:00:00:00:00:01 --mtu 1500
///   xdpkit lb config --dev eth0 --encap gue --max-new-per-sec 100000
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
    /// Encapsulation: ip (IPIP, ip6ip6, ...) or gue (IP + UDP).
    #[arg(long, value_enum)]
    encap: Option<EncapArg>,
    /// UDP destination port of GUE (default 6080).
    #[arg(long, value_name = "PORT")]
    gue_port: Option<u16>,
    /// Path MTU toward the reals, 576 to 65535 (0: no check).
    #[arg(long, value_name = "BYTES")]
    mtu: Option<u16>,
    /// Send encapsulated frames out of IFACE (`none`: back out of --dev).
    #[arg(long, value_name = "IFACE")]
    egress: Option<String>,
    /// New flows remembered per second at most (0: no limit).
    #[arg(long, value_name = "N")]
    max_new_per_sec: Option<u64>,
    /// What hashes new flows: auto (the driver's RX hash where there is one) or tuple.
    #[arg(long, value_enum)]
    flow_hash: Option<FlowHashArg>,
    #[command(flatten)]
    json: JsonArg,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum FlowHashArg {
    Auto,
    Tuple,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum EncapArg {
    Ip,
    Gue,
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
    /// A QUIC service (UDP): packets whose connection id names a server id
    /// set with `lb quic add` go to that real.
    #[arg(long)]
    quic: bool,
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

/// List VIPs and reals: weights, ring slots, packets and bytes, new
/// connections (flow-table misses) and their rate; the flow table's hits
/// and misses, the guard, ICMP "too big" replies and the settings.
///
/// The rates are measured over --interval seconds (two reads of the
/// counters); --interval 0 shows counts only.
#[derive(Debug, clap::Args)]
struct ListArgs {
    #[command(flatten)]
    dev: DevArg,
    /// Seconds over which rates are measured (0: no rates).
    #[arg(long, default_value_t = 1.0, value_name = "SECS")]
    interval: f64,
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
            let flags =
                if a.no_flows { VIP_NO_FLOWS } else { 0 } | if a.quic { VIP_QUIC } else { 0 };
            if a.quic && key.proto != xdpkit::programs::balancer::PROTO_UDP {
                return Err(xdpkit::Error::InvalidArgument(format!(
                    "--quic is for UDP VIPs; {} is TCP",
                    describe(&key)
                ))
                .into());
            }
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
            let egress = a
                .egress
                .as_deref()
                .map(|e| (e != "none").then(|| e.to_string()));
            let change = SettingsChange {
                source4: a.source4,
                source6: a.source6,
                gateway: a.gateway.as_deref().map(parse_mac).transpose()?,
                encap: a.encap.map(|e| match e {
                    EncapArg::Ip => Encap::Ip,
                    EncapArg::Gue => Encap::Gue,
                }),
                gue_port: a.gue_port,
                mtu: a.mtu,
                egress,
                max_new_per_sec: a.max_new_per_sec,
                tuple_hash_only: a.flow_hash.map(|h| matches!(h, FlowHashArg::Tuple)),
            };
            let shown = LiveBalancer::open(&a.dev.dev)?.configure(&change)?;
            if a.json.json {
                return print_json(&shown);
            }
            outln!("{}: {}", a.dev.dev, settings_line(&shown));
        }
        LbCommand::Quic(QuicCommand::Add(a)) => {
            LiveBalancer::open(&a.dev.dev)?.set_quic_id(a.id, Some(a.real))?;
            outln!("QUIC server id {} -> real {}", a.id, a.real);
        }
        LbCommand::Quic(QuicCommand::Del(a)) => {
            LiveBalancer::open(&a.dev.dev)?.set_quic_id(a.id, None)?;
            outln!("QUIC server id {} forgotten", a.id);
        }
        LbCommand::Simulate(a) => return simulate_flows(a),
        LbCommand::List(a) => list(&a)?,
    }
    Ok(())
}

/// The settings in one line.
fn settings_line(s: &SettingsView) -> String {
    let egress = match &s.egress {
        Some(e) => format!("out of {e}"),
        None => "back out (XDP_TX)".to_string(),
    };
    let encap = if s.encap == "gue" {
        format!("gue to port {}", s.gue_port)
    } else {
        "ip".to_string()
    };
    let mtu = if s.mtu == 0 {
        "unchecked".to_string()
    } else {
        s.mtu.to_string()
    };
    let guard = if s.max_new_per_sec == 0 {
        "no limit".to_string()
    } else {
        format!("{}/s", s.max_new_per_sec)
    };
    format!(
        "outer sources {} and {}, gateway {}, encap {encap}, {egress}, path MTU {mtu}, new flows remembered {guard}, flow hash {}",
        s.source4, s.source6, s.gateway, s.flow_hash
    )
}

/// A rate per second from two counts `secs` apart.
fn rate(before: u64, after: u64, secs: f64) -> f64 {
    after.saturating_sub(before) as f64 / secs
}

/// `lb list`: the status, with rates from a second read `--interval` later.
fn list(a: &ListArgs) -> anyhow::Result<()> {
    if !(0.0..=3600.0).contains(&a.interval) {
        return Err(xdpkit::Error::InvalidArgument(format!(
            "--interval {} is not 0 to 3600 seconds",
            a.interval
        ))
        .into());
    }
    let read = || {
        live::status(&a.dev.dev).with_context(|| format!("reading the balancer of {}", a.dev.dev))
    };
    let first = read()?;
    let (status, secs) = if a.interval > 0.0 {
        let started = std::time::Instant::now();
        std::thread::sleep(std::time::Duration::from_secs_f64(a.interval));
        let second = read()?;
        (second, Some(started.elapsed().as_secs_f64()))
    } else {
        (first.clone(), None)
    };
    // Rates by VIP and real, matched by name (a VIP changed meanwhile has none).
    let vip_rates: Vec<Option<(f64, f64)>> = status
        .vips
        .iter()
        .map(|v| {
            let secs = secs?;
            let old = first.vips.iter().find(|o| o.vip == v.vip)?;
            Some((
                rate(old.packets, v.packets, secs),
                rate(old.new_flows, v.new_flows, secs),
            ))
        })
        .collect();
    if a.json.json {
        let mut value = serde_json::to_value(&status)?;
        if let Some(secs) = secs {
            value["interval_secs"] = serde_json::json!(secs);
            for (v, r) in value["vips"]
                .as_array_mut()
                .into_iter()
                .flatten()
                .zip(&vip_rates)
            {
                if let Some((pps, new)) = r {
                    v["packets_per_sec"] = serde_json::json!(pps);
                    v["new_flows_per_sec"] = serde_json::json!(new);
                }
            }
        }
        return print_json(&value);
    }
    outln!(
        "{}: flow table hits {}, misses (new flows) {} (hashed: {} by RX hash, {} by 5-tuple), not remembered (guard) {}, QUIC by id {}, too big {}, no real {}, not to a VIP {}",
        status.interface,
        status.flow_hits,
        status.flow_misses,
        status.hashed_rx,
        status.hashed_tuple,
        status.guarded,
        status.quic_routed,
        status.too_big,
        status.no_real,
        status.not_vip
    );
    outln!("settings: {}", settings_line(&status.settings));
    for (v, r) in status.vips.iter().zip(&vip_rates) {
        let flags = if v.flags.is_empty() {
            String::new()
        } else {
            format!("  [{}]", v.flags.join(","))
        };
        let rates = match r {
            Some((pps, new)) => format!("  {pps:.0} pkt/s  {new:.0} new/s"),
            None => String::new(),
        };
        outln!(
            "VIP {}{flags}  ring {}  packets {}  bytes {}  new flows {}{rates}",
            v.vip,
            v.ring,
            v.packets,
            v.bytes,
            v.new_flows
        );
        for r in &v.reals {
            let quic = if r.quic_ids.is_empty() {
                String::new()
            } else {
                let ids: Vec<String> = r.quic_ids.iter().map(u16::to_string).collect();
                format!("  quic ids {}", ids.join(","))
            };
            outln!(
                "  real {:<40} weight {:>5}  slots {:>7}  packets {:>12}  bytes {:>14}{quic}",
                r.address,
                r.weight,
                r.slots,
                r.packets,
                r.bytes
            );
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
    // The driver's RX hash of a flow is the kernel's (seeded at boot): no
    // copy of the balancer can compute it, so new flows are simulated with
    // the 5-tuple hash, which is the live one only with --flow-hash tuple.
    let rx_hash_live = xdpkit::rx_hash::running_on(dev) && sim.tables().config.tuple_hash_only == 0;
    if a.json.json {
        print_json(&serde_json::json!({
            "interface": dev,
            "source": source,
            "packets": results.len(),
            "new_flows_by_rx_hash": rx_hash_live,
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
    if rx_hash_live {
        eprintln!(
            "xdpkit: note: {dev} runs the RX-hash root: its balancer hashes new flows with the driver's RX hash, which a simulation cannot know; the reals shown for new flows are the 5-tuple hash's (the live ones with `xdpkit lb config --dev {dev} --flow-hash tuple`), those of flows in the flow table are exact"
        );
    }
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
