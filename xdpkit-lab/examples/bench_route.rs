//! `cargo xtask bench route`: IPv4 forwarding by xdpkit's `route` stage
//! against the kernel's own forwarding (plain ip_forward, no netfilter),
//! side by side in one run on the same lab (../shared/PERF.md).
//!
//! Three namespaces: `gen` -> `rtr` -> `sink`. The generator (xdpkit's
//! live-frames trafficgen, pinned to CPU 0) sends 60-byte UDP frames from
//! 128 sources to the sink's address through the router. The router's
//! ingress veth polls in a threaded NAPI thread pinned to CPU 1 (GRO on):
//! whatever forwards, XDP or the stack, gets that one core. The sink's
//! veth drops every frame in XDP (xdpkit `drop`), in the softirq the
//! router's transmit raises, on the same core: delivering a frame costs
//! each contender its own fast path there (an xdp_frame for XDP, an skb
//! for the stack), as a NIC's transmit would. (A threaded sink NAPI
//! starves, beside the generator or beside the router's thread: its ring
//! overflows and both contenders measure the sink.) The generator writes
//! each frame's headers anew: its live-frame pages come back from the
//! router with the MACs and TTL the forwarding wrote. Contenders,
//! alternating in a rotated order over the rounds:
//!
//! - Linux forwarding: nothing attached on the router; the kernel routes
//!   (one FIB lookup, neighbour output, TTL) every frame;
//! - xdpkit route: `xdpkit route enable` on both router interfaces;
//! - anchors: xdpkit's `redirect` stage to the egress (the redirect path
//!   with no lookup and no rewrite), and an XDP drop on the router's
//!   ingress (counted there: what its core can receive at all).
//!
//! Per contender: forwarded Mpps (frames the sink dropped over the send
//! time), median and spread over the rounds, the ratio to Linux forwarding
//! (target: at least 3x) and, for xdpkit, the live ns per frame of the
//! program the link runs (the root and the route stage it tail-calls),
//! from bpf_stats. Writes target/bench/route.csv and route.png.

use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use ipnet::IpNet;
use xdpkit::{trafficgen::udp_frame, AttachRequest, Mode};
use xdpkit_lab::{
    benchkit::{self, output, run, set_affinity, Bar, BenchResult, Trials},
    lab::Lab,
};

const GEN_IF: &str = "xkbr-g";
const RTR_IN: &str = "xkbr-i";
const RTR_OUT: &str = "xkbr-o";
const SINK_IF: &str = "xkbr-s";
const SINK_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 71, 2);
/// Pause after each change: freeing programs and maps runs in a worker
/// that can land on the measured core.
const SETTLE: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Contender {
    Linux,
    Route,
    /// Anchor: xdpkit's `redirect` stage to the egress, no FIB lookup and
    /// no rewrite: the redirect path's own cost.
    Redirect,
    /// Anchor: XDP drop on the router's ingress: what its core receives.
    Drop,
}

impl Contender {
    const ALL: [Contender; 4] = [
        Contender::Linux,
        Contender::Route,
        Contender::Redirect,
        Contender::Drop,
    ];

    fn name(self) -> &'static str {
        match self {
            Contender::Linux => "Linux forwarding (ip_forward)",
            Contender::Route => "xdpkit route (XDP)",
            Contender::Redirect => "XDP redirect, no lookup",
            Contender::Drop => "XDP drop at the router",
        }
    }

    /// The stages the contender attaches to the router's ingress
    /// (`route` goes through `route enable`).
    fn anchor(self) -> Option<(&'static str, Option<&'static str>)> {
        match self {
            Contender::Redirect => Some(("redirect", Some(RTR_OUT))),
            Contender::Drop => Some(("drop", None)),
            _ => None,
        }
    }
}

struct Options {
    trial: Duration,
    rounds: usize,
    out: PathBuf,
}

fn options() -> BenchResult<Options> {
    let workspace = xdpkit_lab::benchkit::workspace()?;
    let mut o = Options {
        trial: Duration::from_secs(2),
        rounds: 5,
        out: workspace.join("target/bench"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--trial-secs" => o.trial = Duration::from_secs_f64(value()?.parse()?),
            "--rounds" => o.rounds = value()?.parse::<usize>()?.max(1),
            "--out" => o.out = PathBuf::from(value()?),
            "-h" | "--help" => {
                println!(
                    "bench_route [--rounds N (5)] [--trial-secs S (2)] [--out DIR (target/bench)]"
                );
                std::process::exit(0);
            }
            _ => return Err(format!("unknown argument {a}; see --help").into()),
        }
    }
    Ok(o)
}

/// One measurement: forwarded Mpps, what the generator sent, live ns.
#[derive(Clone, Copy)]
struct Sample {
    mpps: f64,
    sent_mpps: f64,
    live_ns: Option<f64>,
}

struct RouterLab {
    lab: Lab,
}

impl RouterLab {
    fn new() -> BenchResult<RouterLab> {
        let lab = Lab::builder("xkbr")
            .namespace("gen")
            .namespace("rtr")
            .namespace("sink")
            .veth(
                "gen",
                GEN_IF,
                Some("198.18.70.1/24"),
                "rtr",
                RTR_IN,
                Some("198.18.70.2/24"),
            )
            .veth(
                "rtr",
                RTR_OUT,
                Some("198.18.71.1/24"),
                "sink",
                SINK_IF,
                Some("198.18.71.2/24"),
            )
            .gro("rtr", RTR_IN)
            .gro("sink", SINK_IF)
            .build()?;
        run(lab
            .command("rtr", "sysctl")
            .args(["-qw", "net.ipv4.ip_forward=1"]))?;
        let sink_mac = lab.mac("sink", SINK_IF)?;
        lab.static_neighbor("rtr", RTR_OUT, SINK_ADDR.into(), sink_mac)?;
        // `ip netns exec` mounts the namespace's own /sys, where the veth is.
        run(Command::new("ip").args([
            "netns",
            "exec",
            &lab.ns_name("rtr"),
            "sh",
            "-c",
            &format!("echo 1 > /sys/class/net/{RTR_IN}/threaded"),
        ]))?;
        // The sink drops every frame in XDP: the count, and little work.
        let sink = SINK_IF.to_string();
        lab.run_in("sink", move || {
            let req = AttachRequest::from_list(&sink, "drop", Mode::Native, None, None, false)?;
            xdpkit::attach(&req)
        })??;
        Ok(RouterLab { lab })
    }

    /// Pins the router's ingress NAPI thread to the measured core (again
    /// after each change, which may recreate it).
    fn pin_napi(&self) -> BenchResult<()> {
        for (ifname, cpu) in [(RTR_IN, benchkit::NAPI_CPU)] {
            let mut pinned = 0;
            for entry in std::fs::read_dir("/proc")?.flatten() {
                let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
                if comm.trim().starts_with(&format!("napi/{ifname}")) {
                    set_affinity(pid, cpu)?;
                    pinned += 1;
                }
            }
            if pinned == 0 {
                return Err(format!("no napi/{ifname}-* thread: threaded NAPI is off").into());
            }
        }
        Ok(())
    }

    fn setup(&self, c: Contender) -> BenchResult<()> {
        if let Some((list, to)) = c.anchor() {
            self.lab.run_in("rtr", move || {
                let req = AttachRequest::from_list(RTR_IN, list, Mode::Native, to, None, false)?;
                xdpkit::attach(&req)
            })??;
        }
        if c == Contender::Route {
            self.lab.run_in("rtr", || {
                xdpkit::forwarding::enable(
                    &[RTR_IN.to_string(), RTR_OUT.to_string()],
                    Mode::Native,
                    false,
                )
            })??;
        }
        Ok(())
    }

    fn teardown(&self, c: Contender) -> BenchResult<()> {
        if c.anchor().is_some() {
            self.lab.run_in("rtr", || xdpkit::detach(RTR_IN))??;
        }
        if c == Contender::Route {
            self.lab.run_in("rtr", || {
                xdpkit::forwarding::disable(&[RTR_IN.to_string(), RTR_OUT.to_string()])
            })??;
        }
        Ok(())
    }

    /// Frames the sink's XDP program dropped so far (for the drop anchor:
    /// the router's).
    fn delivered(&self, c: Contender) -> BenchResult<u64> {
        let (ns, ifname) = if c == Contender::Drop {
            ("rtr", RTR_IN)
        } else {
            ("sink", SINK_IF)
        };
        let out = output(self.lab.command(ns, "ethtool").args(["-S", ifname]))?;
        out.lines()
            .filter_map(|l| l.trim().strip_prefix("rx_queue_0_xdp_drops:"))
            .map(|v| v.trim().parse::<u64>())
            .next()
            .ok_or("ethtool -S shows no rx_queue_0_xdp_drops")?
            .map_err(Into::into)
    }

    /// The id of the XDP program on the router's ingress, if any.
    fn router_prog(&self) -> BenchResult<Option<u32>> {
        let out = output(
            self.lab
                .command("rtr", "ip")
                .args(["-j", "-d", "link", "show", "dev", RTR_IN]),
        )?;
        let json: serde_json::Value = serde_json::from_str(&out)?;
        Ok(json[0]["xdp"]["prog"]["id"].as_u64().map(|id| id as u32))
    }

    fn trial(&self, c: Contender, frame: &[u8], d: Duration) -> BenchResult<Sample> {
        let prog = self.router_prog()?;
        let before = (self.delivered(c)?, prog.map(prog_stats).transpose()?);
        let frame = frame.to_vec();
        let sources: IpNet = "198.18.70.128/25".parse()?;
        let sent = self.lab.run_in("gen", move || {
            // Best effort: an unpinned generator only makes figures noisier.
            let _ = set_affinity(0, benchkit::GEN_CPU);
            xdpkit::trafficgen::Generator::with_sources(GEN_IF, frame, Some(sources))?.send_for(d)
        })??;
        // Frames still in flight land within a moment.
        std::thread::sleep(Duration::from_millis(50));
        let after = (self.delivered(c)?, prog.map(prog_stats).transpose()?);
        let got = after.0.saturating_sub(before.0);
        if got == 0 {
            return Err(format!("nothing forwarded (sent {})", sent.frames).into());
        }
        let secs = sent.elapsed.as_secs_f64();
        let live_ns = match (before.1, after.1) {
            (Some((t0, n0)), Some((t1, n1))) if n1 > n0 => {
                Some((t1 - t0) as f64 / (n1 - n0) as f64)
            }
            _ => None,
        };
        Ok(Sample {
            mpps: got as f64 / secs / 1e6,
            sent_mpps: sent.frames as f64 / secs / 1e6,
            live_ns,
        })
    }
}

/// test_run ns per frame, cache-hot, least of 20 runs of 200 repeats
/// (a repeat sees the frame the run before left, so the TTL starts at
/// 255 and stays above 1): the route stage alone, forwarding the flood's
/// frame in the router's namespace, and the `drop` program for scale.
fn test_run_ns(lab: &Lab, frame: &[u8]) -> BenchResult<(f64, f64)> {
    let mut frame = frame.to_vec();
    frame[14 + 8] = 255;
    frame[14 + 10..14 + 12].copy_from_slice(&[0, 0]);
    let sum: u32 = frame[14..34]
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    frame[14 + 10..14 + 12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    lab.run_in("rtr", move || -> BenchResult<(f64, f64)> {
        use xdpkit::{
            programs::{drop::Drop, route::Route},
            testrun::Alone,
        };
        let mut route = Alone::new(&Route)?;
        {
            let map = route
                .maps()
                .map_mut("ROUTE_PORTS")
                .ok_or("no ROUTE_PORTS")?;
            let mut ports: aya::maps::DevMapHash<&mut aya::maps::MapData> =
                aya::maps::DevMapHash::try_from(map)?;
            for name in [RTR_IN, RTR_OUT] {
                let i = xdpkit::iface::index(name)?;
                ports.insert(i, i, None, 0)?;
            }
        }
        let mut drop = Alone::new(&Drop)?;
        let mut best = (f64::MAX, f64::MAX);
        for _ in 0..20 {
            let r = route.run(&frame, 200)?;
            if r.verdict != Some(xdpkit::XdpAction::Redirect) {
                return Err(format!("test_run: route gave {:?}, not redirect", r.verdict).into());
            }
            best.0 = best.0.min(r.ns_per_run as f64);
            best.1 = best.1.min(drop.run(&frame, 200)?.ns_per_run as f64);
        }
        Ok(best)
    })?
}

/// (run time ns, run count) of program `id` from bpf_stats.
fn prog_stats(id: u32) -> BenchResult<(u64, u64)> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .map(|p| (p.run_time().as_nanos() as u64, p.run_count()))
        .ok_or_else(|| format!("program {id} is gone").into())
}

fn main() -> BenchResult<()> {
    if !xdpkit_lab::lab::is_root() {
        return Err(
            "the benchmark builds network namespaces and attaches XDP: run it as root".into(),
        );
    }
    let o = options()?;
    let started = Instant::now();
    std::fs::create_dir_all(&o.out)?;
    let r = RouterLab::new()?;
    let frame = udp_frame(
        r.lab.mac("gen", GEN_IF)?,
        r.lab.mac("rtr", RTR_IN)?,
        Ipv4Addr::new(198, 18, 70, 128),
        SINK_ADDR,
        (1234, 9),
        60,
    );
    println!(
        "lab: {GEN_IF} (gen, CPU {}) -> {RTR_IN} | router | {RTR_OUT} -> {SINK_IF} (XDP drop); \
         router ingress NAPI (and the sink's softirq) on CPU {}; {} rounds, {:.1} s each",
        benchkit::GEN_CPU,
        benchkit::NAPI_CPU,
        o.rounds,
        o.trial.as_secs_f64()
    );
    let (route_ns, drop_ns) = test_run_ns(&r.lab, &frame)?;
    println!("test_run ns/frame (cache-hot): route forwarding {route_ns:.0}, drop {drop_ns:.0}");
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)?;
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); Contender::ALL.len()];
    for round in 0..o.rounds {
        for k in 0..Contender::ALL.len() {
            let ci = (round + k) % Contender::ALL.len();
            let c = Contender::ALL[ci];
            r.setup(c)?;
            std::thread::sleep(SETTLE);
            let measured = (|| {
                r.pin_napi()?;
                r.trial(c, &frame, Duration::from_millis(300))?;
                r.trial(c, &frame, o.trial)
            })();
            r.teardown(c)?;
            let s = measured?;
            println!(
                "  round {} {:<32} {:.2} Mpps forwarded (sent {:.2}){}",
                round + 1,
                c.name(),
                s.mpps,
                s.sent_mpps,
                s.live_ns
                    .map(|ns| format!(", {ns:.0} ns/frame live"))
                    .unwrap_or_default()
            );
            samples[ci].push(s);
        }
        std::thread::sleep(SETTLE);
    }
    report(&samples, (route_ns, drop_ns), &o)?;
    drop(r);
    println!(
        "lab removed; {:.0} s in all",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn stat(v: &[f64]) -> Trials {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    Trials {
        median: v[v.len() / 2],
        min: v[0],
        max: v[v.len() - 1],
    }
}

fn report(samples: &[Vec<Sample>], test_run: (f64, f64), o: &Options) -> BenchResult<()> {
    let mpps = |ci: usize| stat(&samples[ci].iter().map(|s| s.mpps).collect::<Vec<_>>());
    let linux = mpps(0).median;
    // The ratio in each round, from the two contenders measured side by side.
    let ratios: Vec<f64> = samples[1]
        .iter()
        .zip(&samples[0])
        .map(|(r, l)| r.mpps / l.mpps)
        .collect();
    let ratio = stat(&ratios);
    let mut csv =
        String::from("round,contender,mpps,sent_mpps,live_ns_per_frame,test_run_ns_per_frame\n");
    for (ci, c) in Contender::ALL.iter().enumerate() {
        for (round, s) in samples[ci].iter().enumerate() {
            let _ = writeln!(
                csv,
                "{},{},{:.3},{:.3},{},{}",
                round + 1,
                c.name(),
                s.mpps,
                s.sent_mpps,
                s.live_ns.map_or(String::new(), |v| format!("{v:.1}")),
                if *c == Contender::Route {
                    format!("{:.0}", test_run.0)
                } else {
                    String::new()
                }
            );
        }
    }
    println!();
    println!("| contender | Mpps (median) | min-max | x Linux forwarding | live ns/frame |");
    println!("|---|---:|---:|---:|---:|");
    let mut bars = Vec::new();
    for (ci, c) in Contender::ALL.iter().enumerate() {
        let t = mpps(ci);
        let live: Vec<f64> = samples[ci].iter().filter_map(|s| s.live_ns).collect();
        let live = (!live.is_empty()).then(|| stat(&live).median);
        println!(
            "| {} | {:.2} | {:.2}-{:.2} | {:.2} | {} |",
            c.name(),
            t.median,
            t.min,
            t.max,
            t.median / linux,
            live.map_or("-".to_string(), |v| format!("{v:.0}"))
        );
        bars.push(Bar {
            label: c.name().to_string(),
            mpps: t.median,
            group: ci,
        });
    }
    println!(
        "\ntest_run (cache-hot, one frame): route forwarding {:.0} ns, drop {:.0} ns",
        test_run.0, test_run.1
    );
    println!(
        "route / Linux forwarding per round: median {:.2}x (min {:.2}x, max {:.2}x); target 3x: {}",
        ratio.median,
        ratio.min,
        ratio.max,
        if ratio.median >= 3.0 {
            "met"
        } else {
            "NOT met"
        }
    );
    let csv_path = o.out.join("route.csv");
    std::fs::write(&csv_path, csv)?;
    let png = o.out.join("route.png");
    benchkit::plot_bars(
        &bars,
        linux,
        "Linux",
        "IPv4 forwarding on one core (veth, 60-byte UDP, median of rounds)",
        &png,
    )?;
    println!("wrote {} and {}", csv_path.display(), png.display());
    Ok(())
}
