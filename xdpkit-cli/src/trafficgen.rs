//! `xdpkit trafficgen`

use std::time::Duration;

use anyhow::Context as _;
use ipnet::Ipv4Net;
use serde::Serialize;
use xdpkit::trafficgen::{tcp_syn_frame, udp_frame, Generator, Limit, Sent};

use crate::output::{print_json, DevArg, JsonArg};

/// Send generated IPv4 frames out of an interface, at full speed or paced:
/// BPF_PROG_TEST_RUN in live-frames mode runs xdpkit's generator program on
/// copies of one frame and sends each with XDP_TX, so it needs no driver
/// support for XDP transmit and works where pktgen and xdp-trafficgen do
/// not. With --src a prefix, every frame gets a source drawn at random from
/// it (checksums fixed up), as a flood from many addresses would.
///
/// Always bounded: give --count or --duration. The frames go out of IF; on
/// a veth, the peer needs an XDP program (or GRO) or it drops them.
///
/// Examples:
///   xdpkit trafficgen --dev veth0 --dst-mac 02:00:00:00:00:02 --count 1000000
///   xdpkit trafficgen --dev veth0 --dst-mac 02:00:00:00:00:02 --src 198.18.128.0/17 \
///       --dst 198.18.0.2 --proto tcp-syn --duration 10 --threads 2
///   xdpkit trafficgen --dev veth0 --dst-mac 02:00:00:00:00:02 --pps 1000 --duration 5
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(flatten)]
    pub dev: DevArg,

    /// Destination MAC address of the frames (the next hop's).
    #[arg(long, value_name = "MAC", value_parser = parse_mac)]
    pub dst_mac: [u8; 6],

    /// Source address, or a prefix to draw a random source from per frame.
    #[arg(long, value_name = "CIDR", default_value = "198.18.0.1/32")]
    pub src: Ipv4Net,

    /// Destination address.
    #[arg(long, value_name = "ADDR", default_value = "198.18.0.2")]
    pub dst: std::net::Ipv4Addr,

    /// Destination port.
    #[arg(long, value_name = "PORT", default_value_t = 9)]
    pub dport: u16,

    /// udp (datagrams to --dport) or tcp-syn (connection requests).
    #[arg(long, value_enum, default_value_t = Proto::Udp)]
    pub proto: Proto,

    /// Frame size in bytes, Ethernet header included, without FCS (at least
    /// 42 for udp, 54 for tcp-syn).
    #[arg(long, value_name = "BYTES", default_value_t = 60)]
    pub size: usize,

    /// Frames per second, all threads together (default: as fast as possible).
    #[arg(long, value_name = "N")]
    pub pps: Option<u64>,

    /// Stop after this many frames (all threads together).
    #[arg(
        long,
        value_name = "N",
        required_unless_present = "duration",
        conflicts_with = "duration"
    )]
    pub count: Option<u64>,

    /// Stop after this many seconds.
    #[arg(long, value_name = "S", value_parser = parse_seconds)]
    pub duration: Option<Duration>,

    /// Sending threads, each with its own copy of the program.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub threads: u32,

    #[command(flatten)]
    pub json: JsonArg,
}

/// The frames' transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Proto {
    /// UDP datagrams, no UDP checksum.
    Udp,
    /// TCP SYN segments.
    TcpSyn,
}

#[derive(Debug, Serialize)]
struct Report {
    dev: String,
    frames: u64,
    seconds: f64,
    pps: f64,
    mbps: f64,
    frame_bytes: usize,
    threads: u32,
}

fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    xdpkit::iface::parse_mac(text)
        .ok_or_else(|| "expected six hex bytes such as 02:00:00:00:00:02".to_string())
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    match text.parse::<f64>() {
        Ok(s) if s > 0.0 && s <= 86_400.0 => Ok(Duration::from_secs_f64(s)),
        _ => Err("expected seconds, more than 0 and at most 86400".to_string()),
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let min = match args.proto {
        Proto::Udp => 42,
        Proto::TcpSyn => 54,
    };
    if args.size < min || args.size > 4096 {
        return Err(xdpkit::Error::InvalidArgument(format!(
            "--size {} is out of range: {min} to 4096 bytes for {:?}",
            args.size, args.proto
        ))
        .into());
    }
    let src_mac = mac_of(&args.dev.dev)?;
    let frame = match args.proto {
        Proto::Udp => udp_frame(
            src_mac,
            args.dst_mac,
            args.src.addr(),
            args.dst,
            (1234, args.dport),
            args.size,
        ),
        Proto::TcpSyn => tcp_syn_frame(
            src_mac,
            args.dst_mac,
            args.src.addr(),
            args.dst,
            (40000, args.dport),
            args.size,
        ),
    };
    let random = (args.src.prefix_len() < 32).then_some(args.src.trunc());
    let threads = u64::from(args.threads);
    // Generators are made first: a bad interface or missing privilege
    // fails before anything is sent.
    let mut generators = (0..threads)
        .map(|_| Generator::new(&args.dev.dev, frame.clone(), random))
        .collect::<Result<Vec<_>, _>>()?;
    let sent: Vec<Sent> = std::thread::scope(|scope| {
        let running: Vec<_> = generators
            .iter_mut()
            .enumerate()
            .map(|(i, generator)| {
                let limit = match (args.count, args.duration) {
                    // Split the count; the first threads take the remainder.
                    (Some(n), _) => Limit::Count(n / threads + u64::from((i as u64) < n % threads)),
                    (None, Some(d)) => Limit::Duration(d),
                    (None, None) => unreachable!("clap requires --count or --duration"),
                };
                let pps = args.pps.map(|p| (p / threads).max(1));
                scope.spawn(move || generator.send_paced(limit, pps))
            })
            .collect();
        running
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect::<Result<Vec<_>, _>>()
    })
    .context("sending")?;
    let frames: u64 = sent.iter().map(|s| s.frames).sum();
    let seconds = sent
        .iter()
        .map(|s| s.elapsed.as_secs_f64())
        .fold(0.0, f64::max)
        .max(1e-9);
    let report = Report {
        dev: args.dev.dev.clone(),
        frames,
        seconds,
        pps: frames as f64 / seconds,
        // On the wire: the frame plus FCS, preamble and inter-frame gap.
        mbps: frames as f64 * (frame.len() + 24) as f64 * 8.0 / seconds / 1e6,
        frame_bytes: frame.len(),
        threads: args.threads,
    };
    if args.json.json {
        return print_json(&report);
    }
    outln!(
        "sent {} frames of {} bytes out of {} in {:.3} s: {:.0} pps, {:.1} Mbps on the wire ({} thread{})",
        report.frames,
        report.frame_bytes,
        report.dev,
        report.seconds,
        report.pps,
        report.mbps,
        report.threads,
        if report.threads == 1 { "" } else { "s" }
    );
    Ok(())
}

/// The interface's own MAC address, the frames' source.
fn mac_of(ifname: &str) -> anyhow::Result<[u8; 6]> {
    let index = xdpkit::iface::index(ifname)?;
    xdpkit::netlink::mac_address(index)
        .with_context(|| format!("cannot read the MAC address of {ifname}"))?
        .ok_or_else(|| {
            xdpkit::Error::InvalidArgument(format!("{ifname} has no Ethernet address")).into()
        })
}
