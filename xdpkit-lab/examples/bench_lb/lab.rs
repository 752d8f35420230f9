//! Mpps on one core: xdpkit's balancer against nftables DNAT load
//! balancing (kube-proxy's nftables mode: `dnat to jhash ip saddr . tcp
//! sport mod N map { ... }`), the same VIP and reals, one-armed both:
//!
//! - `gen` sends TCP ACKs to the VIP from 1,024 sources (the live-frames
//!   generator on CPU 0) into `dut`, whose veth polls in a threaded NAPI
//!   thread pinned to CPU 1 (every contender gets that core);
//! - xdpkit: `xdpkit attach balancer` on dut's veth, the VIP and reals
//!   added with `LiveBalancer`; each frame goes out encapsulated (IPIP)
//!   toward its real, back out of the veth (`XDP_TX`) to the gateway,
//!   which is `gen`;
//! - nftables: a nat prerouting chain DNATs the flow's first packet to a
//!   real chosen by jhash of source address and port, conntrack the rest;
//!   the stack forwards each packet (routes: the reals via `gen`) back out
//!   of the same veth;
//! - `gen` counts what comes back: its veth receives in a threaded NAPI
//!   thread pinned to CPU 0, where drop.c drops and counts every frame
//!   (`rx_queue_0_xdp_drops`; a veth takes its peer's `XDP_TX` frames only
//!   when it runs an XDP program). Before the rounds, tcpdump on `gen`
//!   checks that each contender's frames really leave toward the reals.

use std::{
    collections::HashSet,
    fmt::Write as _,
    io::Read as _,
    net::{IpAddr, Ipv4Addr},
    path::Path,
    process::Stdio,
    time::Duration,
};

use ipnet::{IpNet, Ipv4Net};
use xdpkit::{
    programs::balancer::{live::LiveBalancer, tables},
    trafficgen::{Generator, Limit},
    AttachRequest, Mode,
};
use xdpkit_common::balancer::PROTO_TCP;
use xdpkit_lab::benchkit::{output, run, OneCoreLab};

use super::{tcp_frame_between, BoxResult, Setup};

const GEN_IF: &str = "xkbl-g";
const DUT_IF: &str = "xkbl-d";
const SUBNET: &str = "198.18.70.0/24";
const GEN_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 70, 1);
const NFT_TABLE: &str = "xkbl";
/// The clients: the generator draws each frame's source from here.
const CLIENTS: &str = "198.18.128.0/22";
const CLIENT_PORT: u16 = 40_000;
const WARM_UP: Duration = Duration::from_millis(300);
/// Pause after a teardown (map and conntrack freeing can land on the
/// measured core).
const SETTLE: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contender {
    /// drop.c on dut's veth: what the lab delivers to one core (the
    /// anchor; counted at dut, nothing goes back).
    BareDrop,
    Xdpkit,
    Nftables,
}

impl Contender {
    pub const ALL: [Contender; 3] = [Contender::BareDrop, Contender::Xdpkit, Contender::Nftables];

    pub fn name(self) -> &'static str {
        match self {
            Contender::BareDrop => "bare drop at dut (drop.c, anchor)",
            Contender::Xdpkit => "xdpkit balancer (XDP_TX, IPIP)",
            Contender::Nftables => "nftables DNAT (jhash map, conntrack)",
        }
    }
}

/// One contender in one round.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Frames back at `gen`, per second, in millions.
    pub mpps: f64,
    /// Frames the generator sent, per second, in millions.
    pub offered: f64,
    /// Frames `dut` sent that gen's veth had no room for, per second, in
    /// millions (near 0 when the return path keeps up).
    pub lost: f64,
}

/// Builds the lab and measures every contender in `rounds` rotated rounds
/// of `trial` each; samples by contender.
pub fn measure(
    setup: &Setup,
    drop_obj: &Path,
    rounds: usize,
    trial: Duration,
    realtime: bool,
) -> BoxResult<Vec<Vec<Sample>>> {
    let bl = OneCoreLab::new("xkbl", GEN_IF, DUT_IF, SUBNET)?;
    bl.receive_back()?;
    let lab = &bl.lab;
    let gen_mac = lab.mac("gen", GEN_IF)?;
    let dut_mac = lab.mac("dut", DUT_IF)?;
    let clients: Ipv4Net = CLIENTS.parse()?;
    let frame = tcp_frame_between(
        (gen_mac, dut_mac),
        clients.network(),
        CLIENT_PORT,
        setup,
        false,
    );
    // The stack side: forward, no redirects back to the sender (the packet
    // leaves by the interface it came in on), no reverse-path check for
    // clients it has no route to, the reals via gen, gen's MAC known (its
    // drop.c drops ARP).
    for (key, value) in [
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv4.conf.all.send_redirects", "0"),
        (&format!("net.ipv4.conf.{DUT_IF}.send_redirects"), "0"),
        ("net.ipv4.conf.all.rp_filter", "0"),
        (&format!("net.ipv4.conf.{DUT_IF}.rp_filter"), "0"),
    ] {
        run(lab
            .command("dut", "sysctl")
            .args(["-q", "-w", &format!("{key}={value}")]))?;
    }
    lab.static_neighbor("dut", DUT_IF, IpAddr::V4(GEN_ADDR), gen_mac)?;
    for net in reals_routes(&setup.reals) {
        run(lab.command("dut", "ip").args([
            "route",
            "replace",
            &net.to_string(),
            "via",
            &GEN_ADDR.to_string(),
            "dev",
            DUT_IF,
        ]))?;
    }
    println!(
        "lab: {GEN_IF} (gen, CPU {gen}: generator, and the return path's NAPI with drop.c counting) \
         -> {DUT_IF} (dut, threaded NAPI on CPU {napi}, GRO on); TCP ACKs from {CLIENTS} \
         (1,024 flows) to {}:{}; {} rounds, {:.1} s each{}",
        setup.vip,
        setup.port,
        rounds,
        trial.as_secs_f64(),
        if realtime {
            "; dut's NAPI thread real-time (--realtime)"
        } else {
            ""
        },
        gen = xdpkit_lab::benchkit::GEN_CPU,
        napi = xdpkit_lab::benchkit::NAPI_CPU,
    );

    // Each contender's frames leave toward the reals: tcpdump on gen, whose
    // veth passes them to its stack (xdpkit's `pass`: a veth takes XDP_TX
    // frames only when it runs XDP) before drop.c counts them unseen.
    let gen_if = GEN_IF.to_string();
    lab.run_in("gen", move || {
        xdpkit::attach(&AttachRequest::from_list(
            &gen_if,
            "pass",
            Mode::Native,
            None,
            None,
            false,
        )?)
    })??;
    for c in [Contender::Xdpkit, Contender::Nftables] {
        setup_contender(&bl, c, setup, gen_mac, drop_obj)?;
        let checked = check_egress(&bl, c, setup, &frame, clients);
        teardown(&bl, c)?;
        println!("  checked: {}: {}", c.name(), checked?);
    }
    lab.run_in("gen", || xdpkit::detach(GEN_IF))??;
    run(lab
        .command("gen", "ip")
        .args(["-force", "link", "set", "dev", GEN_IF, "xdpdrv", "obj"])
        .arg(drop_obj)
        .args(["sec", "xdp"]))?;

    let mut samples = vec![Vec::new(); Contender::ALL.len()];
    for round in 0..rounds {
        for k in 0..Contender::ALL.len() {
            let ci = (round + k) % Contender::ALL.len();
            let c = Contender::ALL[ci];
            setup_contender(&bl, c, setup, gen_mac, drop_obj)?;
            let measured = (|| -> BoxResult<Sample> {
                bl.pin_napi()?;
                if realtime {
                    bl.realtime_napi()?;
                }
                bl.pin_return_napi()?;
                trial_once(&bl, c, &frame, clients, WARM_UP)?;
                trial_once(&bl, c, &frame, clients, trial)
            })();
            teardown(&bl, c)?;
            std::thread::sleep(SETTLE);
            let s = measured?;
            println!(
                "  lab round {} {:<40} {:5.2} Mpps counted (sent {:5.2} Mpps, \
                 lost on the way back {:4.2} Mpps)",
                round + 1,
                c.name(),
                s.mpps,
                s.offered,
                s.lost
            );
            samples[ci].push(s);
        }
    }
    drop(bl);
    Ok(samples)
}

/// The /24s holding the reals.
fn reals_routes(reals: &[Ipv4Addr]) -> Vec<Ipv4Net> {
    let mut nets: Vec<Ipv4Net> = reals
        .iter()
        .map(|r| Ipv4Net::new(*r, 24).expect("24 <= 32").trunc())
        .collect();
    nets.sort();
    nets.dedup();
    nets
}

fn setup_contender(
    bl: &OneCoreLab,
    c: Contender,
    setup: &Setup,
    gen_mac: [u8; 6],
    drop_obj: &Path,
) -> BoxResult<()> {
    let lab = &bl.lab;
    match c {
        Contender::BareDrop => run(lab
            .command("dut", "ip")
            .args(["-force", "link", "set", "dev", DUT_IF, "xdpdrv", "obj"])
            .arg(drop_obj)
            .args(["sec", "xdp"]))?,
        Contender::Xdpkit => {
            let key = tables::vip_key(IpAddr::V4(setup.vip), setup.port, PROTO_TCP);
            let reals = setup.reals.clone();
            let ring = setup.ring;
            lab.run_in("dut", move || -> Result<(), xdpkit::Error> {
                xdpkit::attach(&AttachRequest::from_list(
                    DUT_IF,
                    "balancer",
                    Mode::Native,
                    None,
                    None,
                    false,
                )?)?;
                let mut lb = LiveBalancer::open(DUT_IF)?;
                lb.configure(&xdpkit::programs::balancer::live::SettingsChange {
                    source4: Some("198.19.0.0/16".parse().expect("a prefix")),
                    gateway: Some(gen_mac),
                    ..Default::default()
                })?;
                lb.add_vip(key, ring, 0)?;
                for r in reals {
                    lb.set_real(key, IpAddr::V4(r), 1)?;
                }
                Ok(())
            })??;
        }
        Contender::Nftables => {
            let path = std::env::temp_dir().join(format!("xkbl-{}.nft", std::process::id()));
            std::fs::write(&path, nft_script(setup))?;
            let r = run(lab.command("dut", "nft").arg("-f").arg(&path));
            let _ = std::fs::remove_file(&path);
            r?;
            // Conntrack picks up flows seen mid-stream (the ACKs): accept
            // their windows as they come.
            run(lab.command("dut", "sysctl").args([
                "-q",
                "-w",
                "net.netfilter.nf_conntrack_tcp_be_liberal=1",
            ]))?;
        }
    }
    Ok(())
}

fn teardown(bl: &OneCoreLab, c: Contender) -> BoxResult<()> {
    let lab = &bl.lab;
    match c {
        Contender::BareDrop => run(lab
            .command("dut", "ip")
            .args(["link", "set", "dev", DUT_IF, "xdpdrv", "off"]))?,
        Contender::Xdpkit => {
            lab.run_in("dut", || xdpkit::detach(DUT_IF))??;
        }
        Contender::Nftables => run(lab
            .command("dut", "nft")
            .args(["delete", "table", "ip", NFT_TABLE]))?,
    }
    Ok(())
}

/// kube-proxy's nftables mode in one rule: the VIP's new flows DNATed to
/// a real chosen by a hash of the client's address and port.
pub fn nft_script(setup: &Setup) -> String {
    let mut map = String::new();
    for (i, r) in setup.reals.iter().enumerate() {
        if i > 0 {
            map.push_str(", ");
        }
        let _ = write!(map, "{i} : {r}");
    }
    format!(
        "table ip {NFT_TABLE} {{\n\
         chain prerouting {{ type nat hook prerouting priority dstnat; policy accept;\n\
         ip daddr {} tcp dport {} dnat to jhash ip saddr . tcp sport mod {} map {{ {map} }}\n\
         }}\n}}\n",
        setup.vip,
        setup.port,
        setup.reals.len()
    )
}

/// Frames back at `gen` (its drop.c's drops; for the anchor, dut's own)
/// while the generator sends for `d`.
fn trial_once(
    bl: &OneCoreLab,
    c: Contender,
    frame: &[u8],
    clients: Ipv4Net,
    d: Duration,
) -> BoxResult<Sample> {
    let at = if c == Contender::BareDrop {
        ("dut", DUT_IF)
    } else {
        ("gen", GEN_IF)
    };
    let (before, lost_before) = (xdp_drops(bl, at)?, lost(bl)?);
    let sent = bl.send_from(frame, Some(IpNet::V4(clients)), d)?;
    let (after, lost_after) = (xdp_drops(bl, at)?, lost(bl)?);
    let secs = sent.elapsed.as_secs_f64();
    Ok(Sample {
        mpps: after.saturating_sub(before) as f64 / secs / 1e6,
        offered: sent.frames as f64 / secs / 1e6,
        lost: lost_after.saturating_sub(lost_before) as f64 / secs / 1e6,
    })
}

/// Frames `dut` sent out that its peer dropped (ring full): its veth's
/// TX drops, which count `XDP_TX` errors too.
fn lost(bl: &OneCoreLab) -> BoxResult<u64> {
    let out = output(
        bl.lab
            .command("dut", "ip")
            .args(["-j", "-s", "link", "show", "dev", DUT_IF]),
    )?;
    let json: serde_json::Value = serde_json::from_str(&out)?;
    json[0]["stats64"]["tx"]["dropped"]
        .as_u64()
        .ok_or_else(|| format!("no TX drop count for {DUT_IF}").into())
}

/// The XDP drop count of a veth (`(namespace, interface)`).
fn xdp_drops(bl: &OneCoreLab, (ns, ifname): (&str, &str)) -> BoxResult<u64> {
    let out = output(bl.lab.command(ns, "ethtool").args(["-S", ifname]))?;
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("rx_queue_0_xdp_drops:"))
        .map(|v| v.trim().parse::<u64>())
        .next()
        .ok_or("ethtool -S shows no rx_queue_0_xdp_drops")?
        .map_err(Into::into)
}

/// Captures frames coming back to `gen` while the generator sends slowly:
/// every one must be addressed to a real (the outer header for xdpkit,
/// the rewritten destination for nftables), and the flows must spread.
fn check_egress(
    bl: &OneCoreLab,
    c: Contender,
    setup: &Setup,
    frame: &[u8],
    clients: Ipv4Net,
) -> BoxResult<String> {
    const WANT: usize = 40;
    let mut tcpdump = bl
        .lab
        .command("gen", "timeout")
        .args([
            "10",
            "tcpdump",
            "-nn",
            "-l",
            "-Q",
            "in",
            "-c",
            &WANT.to_string(),
            "-i",
            GEN_IF,
            "ip",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("tcpdump: {e} (run `cargo xtask bootstrap`)"))?;
    std::thread::sleep(Duration::from_millis(1500));
    let frame = frame.to_vec();
    let gen_if = GEN_IF.to_string();
    let sent = bl.lab.run_in("gen", move || {
        let mut g = Generator::with_sources(&gen_if, frame, Some(IpNet::V4(clients)))?;
        g.send_paced(Limit::Duration(Duration::from_secs(1)), Some(2_000))
    })??;
    let mut text = String::new();
    tcpdump
        .stdout
        .take()
        .ok_or("tcpdump's output")?
        .read_to_string(&mut text)?;
    let _ = tcpdump.wait();
    let reals: HashSet<Ipv4Addr> = setup.reals.iter().copied().collect();
    let mut seen = HashSet::new();
    let mut lines = 0;
    for line in text.lines() {
        // "<time> IP <src> > <dst>: ...": dst with or without ".port".
        let Some(dst) = line.split(" > ").nth(1).and_then(|r| r.split(':').next()) else {
            continue;
        };
        let addr: Vec<&str> = dst.split('.').take(4).collect();
        let Ok(addr) = addr.join(".").parse::<Ipv4Addr>() else {
            continue;
        };
        lines += 1;
        if !reals.contains(&addr) {
            return Err(
                format!("{}: a frame back at gen is not to a real: {line}", c.name()).into(),
            );
        }
        seen.insert(addr);
    }
    if lines < WANT / 2 || seen.len() < 2 {
        return Err(format!(
            "{}: {lines} frames back at gen toward {} reals (sent {}): it does not balance",
            c.name(),
            seen.len(),
            sent.frames
        )
        .into());
    }
    Ok(format!(
        "{lines} frames captured back at gen, each to a real ({} distinct)",
        seen.len()
    ))
}
