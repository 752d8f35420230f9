//! `cargo xtask bench lb`: xdpkit's balancer against Katran's and against
//! nftables DNAT, side by side in one run (issue 11, point 10). One TCP
//! VIP (198.18.71.10:80) with `--reals` reals (default 100, equal
//! weights) on a 65,537-slot Maglev ring.
//!
//! 1. test_run ns per frame (`test_run` module): bare drop (drop.c from
//!    ../shared/perf/anchors, built with clang-14), xdpkit's balancer and,
//!    given `--katran-obj`, Katran's `balancer.bpf.c` as the user built it
//!    (loaded with aya, its maps filled for the same VIP, reals and ring),
//!    on an established flow and on new flows, one fresh frame per run,
//!    interleaved rounds. Target: xdpkit at most 0.8x Katran.
//! 2. Mpps on one core (`lab` module): xdpkit's balancer against nftables
//!    DNAT load balancing (jhash map, as kube-proxy's nftables mode), both
//!    sending each flow toward its real back out of the veth, counted
//!    where the frames arrive. Target: xdpkit at least 4x nftables.
//!
//! Writes lb_test_run.csv, lb_test_run.png, lb_lab.csv and lb_lab.png to
//! the output directory (target/bench by default).

#[path = "bench_lb/katran.rs"]
mod katran;
#[path = "bench_lb/lab.rs"]
mod lab;
#[path = "bench_lb/test_run.rs"]
mod test_run;

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    time::{Duration, Instant},
};

use etherparse::PacketBuilder;
use xdpkit::programs::balancer::tables::{self, RealSpec, Tables, VipSpec};
use xdpkit_common::balancer::{LB_MAX_FLOWS, PROTO_TCP};
use xdpkit_lab::benchkit::{self, Bar, Trials, ValueBar};

use test_run::{Prog, Scenario, TestRunNs};

type BoxResult<T> = benchkit::BenchResult<T>;

/// MACs of the test_run frames (a client, the balancer).
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
/// Targets of issue 11.
const TARGET_VS_KATRAN: f64 = 0.8;
const TARGET_VS_NFT: f64 = 4.0;

/// The VIP and its reals, the same for every contender.
pub struct Setup {
    vip: Ipv4Addr,
    port: u16,
    reals: Vec<Ipv4Addr>,
    ring: u32,
}

impl Setup {
    fn new(reals: usize) -> Setup {
        Setup {
            vip: Ipv4Addr::new(198, 18, 71, 10),
            port: 80,
            reals: (1..=reals as u8)
                .map(|i| Ipv4Addr::new(198, 18, 72, i))
                .collect(),
            ring: katran::RING_SIZE,
        }
    }

    fn vip_spec(&self) -> VipSpec {
        VipSpec {
            key: tables::vip_key(IpAddr::V4(self.vip), self.port, PROTO_TCP),
            ring: self.ring,
            flags: 0,
            reals: self
                .reals
                .iter()
                .map(|r| RealSpec {
                    addr: IpAddr::V4(*r),
                    weight: 1,
                })
                .collect(),
        }
    }

    /// What Katran is given: xdpkit's ring for the VIP (real indexes in
    /// the reals' order), each CPU a flow table of xdpkit's per-CPU share.
    fn katran(&self, t: &Tables) -> katran::KatranVip {
        // nr_cpus counts the possible CPUs, as the kernel splits a per-CPU LRU.
        let cpus = aya::util::nr_cpus().unwrap_or(1).max(1);
        katran::KatranVip {
            vip: self.vip,
            port: self.port,
            reals: self.reals.clone(),
            ring: t.rings.first().map(|(_, r)| r.clone()).unwrap_or_default(),
            gateway: CLIENT_MAC,
            flows_per_cpu: LB_MAX_FLOWS / cpus as u32,
        }
    }
}

/// A TCP frame (SYN, or ACK) from `src:sport` to the VIP, for test runs.
fn tcp_frame(src: Ipv4Addr, sport: u16, setup: &Setup, syn: bool) -> Vec<u8> {
    tcp_frame_between((CLIENT_MAC, LB_MAC), src, sport, setup, syn)
}

/// A TCP frame (SYN, or ACK) from `src:sport` to the VIP, between MACs.
fn tcp_frame_between(
    (src_mac, dst_mac): ([u8; 6], [u8; 6]),
    src: Ipv4Addr,
    sport: u16,
    setup: &Setup,
    syn: bool,
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src.octets(), setup.vip.octets(), 64)
        .tcp(sport, setup.port, 0x7864_6b31, 64_240);
    let b = if syn { b.syn() } else { b.ack(1) };
    let mut f = Vec::with_capacity(64);
    b.write(&mut f, &[]).expect("writing to a Vec cannot fail");
    f
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Only {
    Both,
    TestRun,
    Lab,
}

struct Options {
    katran_obj: Option<PathBuf>,
    rounds: usize,
    runs: usize,
    trial: Duration,
    reals: usize,
    out: PathBuf,
    anchors: PathBuf,
    only: Only,
    realtime: bool,
    /// The test_run scenarios measured (all by default; one at a time to
    /// profile it).
    scenarios: Vec<Scenario>,
}

fn options() -> BoxResult<Options> {
    let workspace = xdpkit_lab::benchkit::workspace()?;
    let mut o = Options {
        katran_obj: None,
        rounds: 7,
        runs: 2_000,
        trial: Duration::from_secs(2),
        reals: 100,
        out: workspace.join("target/bench"),
        anchors: workspace.join("../shared/perf/anchors"),
        only: Only::Both,
        realtime: false,
        scenarios: Scenario::ALL.to_vec(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--katran-obj" => o.katran_obj = Some(PathBuf::from(value()?)),
            "--rounds" => o.rounds = value()?.parse::<usize>()?.max(1),
            "--runs" => o.runs = value()?.parse::<usize>()?.max(1),
            "--trial-secs" => o.trial = Duration::from_secs_f64(value()?.parse()?),
            "--reals" => o.reals = value()?.parse::<usize>()?.clamp(1, 254),
            "--out" => o.out = PathBuf::from(value()?),
            "--anchors" => o.anchors = PathBuf::from(value()?),
            "--realtime" => o.realtime = true,
            "--scenarios" => {
                o.scenarios = value()?
                    .split(',')
                    .map(|k| {
                        Scenario::ALL
                            .into_iter()
                            .find(|s| s.key() == k)
                            .ok_or(format!("--scenarios: established, syn or no-syn, not {k}"))
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--only" => {
                o.only = match value()?.as_str() {
                    "test-run" => Only::TestRun,
                    "lab" => Only::Lab,
                    other => return Err(format!("--only test-run|lab, not {other}").into()),
                }
            }
            "-h" | "--help" => {
                println!(
                    "bench_lb [--katran-obj PATH: Katran's balancer.bpf.c as you built it] \
                     [--rounds N (7)] [--runs N (2000): test runs per scenario and round] \
                     [--trial-secs S (2)] [--reals N (100)] [--out DIR (target/bench)] \
                     [--anchors DIR (../shared/perf/anchors)] [--only test-run|lab] \
                     [--realtime: dut's NAPI thread SCHED_FIFO, for a machine others load] \
                     [--scenarios established,syn,no-syn: test_run scenarios (all)]"
                );
                std::process::exit(0);
            }
            _ => return Err(format!("unknown argument {a}; see --help").into()),
        }
    }
    if let Some(p) = &o.katran_obj {
        if !p.is_file() {
            return Err(format!("--katran-obj {}: no such file", p.display()).into());
        }
    }
    Ok(o)
}

fn main() -> BoxResult<()> {
    if !xdpkit_lab::lab::is_root() {
        return Err(
            "the benchmark loads XDP programs and builds namespaces: run it as root".into(),
        );
    }
    let o = options()?;
    let started = Instant::now();
    std::fs::create_dir_all(&o.out)?;
    let drop_obj = benchkit::build_anchor(&o.anchors.join("drop.c"), &o.out)?;
    let setup = Setup::new(o.reals);
    println!(
        "VIP {}:{}/tcp, {} reals of equal weight, Maglev ring of {} slots",
        setup.vip,
        setup.port,
        setup.reals.len(),
        setup.ring
    );
    let mut misses = Vec::new();
    let mut checked = Vec::new();
    if o.only != Only::Lab {
        println!(
            "test_run: one fresh frame per run (repeat 1, kernel-measured), {} runs per scenario, \
             {} rounds; Katran: {}",
            o.runs,
            o.rounds,
            o.katran_obj
                .as_ref()
                .map_or("not given (--katran-obj)".to_string(), |p| p
                    .display()
                    .to_string())
        );
        let ns = test_run::measure(
            &setup,
            &drop_obj,
            o.katran_obj.as_deref(),
            &o.scenarios,
            o.rounds,
            o.runs,
        )?;
        report_test_run(&ns, &o, &mut misses, &mut checked)?;
    }
    if o.only != Only::TestRun {
        let samples = lab::measure(&setup, &drop_obj, o.rounds, o.trial, o.realtime)?;
        report_lab(&samples, &o, &mut misses, &mut checked)?;
    }
    println!();
    for c in &checked {
        println!("{c}");
    }
    let unchecked = checked.iter().any(|c| c.contains("not checked"));
    if misses.is_empty() && unchecked {
        println!("targets: met where checked; against Katran not checked (no --katran-obj)");
    } else if misses.is_empty() {
        println!("targets: all met");
    } else {
        println!("targets not met:");
        for m in &misses {
            println!("  {m}");
        }
        if unchecked {
            println!("  (against Katran not checked: no --katran-obj)");
        }
    }
    println!("{:.0} s in all", started.elapsed().as_secs_f64());
    Ok(())
}

fn stats(v: &[f64]) -> Option<Trials> {
    if v.is_empty() {
        return None;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    Some(Trials {
        median: v[v.len() / 2],
        min: v[0],
        max: v[v.len() - 1],
    })
}

/// Median over the rounds of `f(a, b)`, round by round (rounds paired).
fn paired(a: &[f64], b: &[f64], f: impl Fn(f64, f64) -> f64) -> Option<f64> {
    let v: Vec<f64> = a.iter().zip(b).map(|(x, y)| f(*x, *y)).collect();
    stats(&v).map(|t| t.median)
}

fn report_test_run(
    ns: &TestRunNs,
    o: &Options,
    misses: &mut Vec<String>,
    checked: &mut Vec<String>,
) -> BoxResult<()> {
    let mut csv = String::from(
        "scenario,program,ns_median,ns_min,ns_max,ns_over_drop_median,ratio_to_katran,ratio_to_katran_over_drop\n",
    );
    let mut bars = Vec::new();
    for s in Scenario::ALL {
        if ns.of(s, Prog::Drop).is_empty() {
            continue;
        }
        println!();
        println!(
            "test_run, {} (ns per frame, median of {} rounds)",
            s.name(),
            o.rounds
        );
        println!("| program | ns (median) | min-max | ns over bare drop | x Katran | x Katran over bare drop |");
        println!("|---|---:|---:|---:|---:|---:|");
        let drop = ns.of(s, Prog::Drop);
        let katran = ns.of(s, Prog::Katran);
        for p in Prog::ALL {
            let v = ns.of(s, p);
            let Some(t) = stats(v) else {
                println!("| {} | not given | - | - | - | - |", p.name());
                let _ = writeln!(csv, "{},{},,,,,,", s.name(), p.name());
                continue;
            };
            let over = paired(v, drop, |a, b| a - b).unwrap_or(f64::NAN);
            let vs = paired(v, katran, |a, b| a / b);
            // What the programs add to the test_run floor, compared.
            let vs_over = stats(katran)
                .zip(stats(drop))
                .map(|(k, d)| (t.median - d.median) / (k.median - d.median));
            let show = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.2}"));
            println!(
                "| {} | {:.0} | {:.0}-{:.0} | {:.0} | {} | {} |",
                p.name(),
                t.median,
                t.min,
                t.max,
                over,
                show(vs),
                show(vs_over)
            );
            let _ = writeln!(
                csv,
                "{},{},{:.1},{:.1},{:.1},{:.1},{},{}",
                s.name(),
                p.name(),
                t.median,
                t.min,
                t.max,
                over,
                vs.map_or(String::new(), |x| format!("{x:.3}")),
                vs_over.map_or(String::new(), |x| format!("{x:.3}")),
            );
            bars.push(ValueBar {
                label: format!("{}: {}", short(s), p.name()),
                value: t.median,
                group: p as usize,
                text: match vs {
                    Some(r) if p == Prog::Xdpkit => format!("{:.0} ns ({r:.2}x Katran)", t.median),
                    _ => format!("{:.0} ns", t.median),
                },
            });
            if p == Prog::Xdpkit {
                match vs {
                    Some(r) => {
                        checked.push(format!(
                            "test_run {}: xdpkit {r:.2}x Katran (target at most {TARGET_VS_KATRAN}x)",
                            s.name()
                        ));
                        if r > TARGET_VS_KATRAN {
                            misses.push(format!(
                                "test_run {}: xdpkit {r:.2}x Katran (target at most {TARGET_VS_KATRAN}x)",
                                s.name()
                            ));
                        }
                    }
                    None => checked.push(format!(
                        "test_run {}: xdpkit against Katran not checked (no --katran-obj)",
                        s.name()
                    )),
                }
            }
        }
    }
    println!();
    for (p, got, inserted) in &ns.flows {
        println!(
            "flow table of the {} after the runs: {got} flows ({inserted} inserted{})",
            p.name(),
            if got == inserted {
                ", none lost"
            } else {
                ": evicted or refused"
            }
        );
    }
    let csv_path = o.out.join("lb_test_run.csv");
    std::fs::write(&csv_path, csv)?;
    let png = o.out.join("lb_test_run.png");
    benchkit::plot_value_bars(
        &bars,
        0.0,
        "ns per frame (BPF_PROG_TEST_RUN, one fresh frame per run)",
        "Balancer per-frame cost, median of interleaved rounds",
        &png,
    )?;
    println!("wrote {} and {}", csv_path.display(), png.display());
    Ok(())
}

fn short(s: Scenario) -> &'static str {
    match s {
        Scenario::Established => "established",
        Scenario::NewSyn => "new (SYN)",
        Scenario::NewNoSyn => "new (no SYN)",
    }
}

fn report_lab(
    samples: &[Vec<lab::Sample>],
    o: &Options,
    misses: &mut Vec<String>,
    checked: &mut Vec<String>,
) -> BoxResult<()> {
    let idx = |c: lab::Contender| {
        lab::Contender::ALL
            .iter()
            .position(|x| *x == c)
            .expect("listed")
    };
    let mpps = |ci: usize| -> Vec<f64> { samples[ci].iter().map(|s| s.mpps).collect() };
    let nft = stats(&mpps(idx(lab::Contender::Nftables))).ok_or("no nftables samples")?;
    let bare = stats(&mpps(idx(lab::Contender::BareDrop))).ok_or("no anchor samples")?;
    println!();
    println!(
        "lab, Mpps on one core: frames back at gen (the anchor: dropped at dut), median of {} rounds",
        o.rounds
    );
    println!("| contender | Mpps (median) | min-max | sent Mpps (median) | lost on the way back (Mpps) | x bare drop | x nftables |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let mut csv = String::from(
        "contender,mpps_median,mpps_min,mpps_max,sent_mpps_median,lost_mpps_max,ratio_to_bare_drop,ratio_to_nftables\n",
    );
    let mut bars = Vec::new();
    for (ci, c) in lab::Contender::ALL.iter().enumerate() {
        let t = stats(&mpps(ci)).ok_or("no samples")?;
        let sent = stats(&samples[ci].iter().map(|s| s.offered).collect::<Vec<_>>())
            .ok_or("no samples")?;
        let lost = samples[ci].iter().map(|s| s.lost).fold(0.0, f64::max);
        let ratio = t.median / nft.median;
        println!(
            "| {} | {:.2} | {:.2}-{:.2} | {:.2} | {:.2} (most) | {:.2} | {:.2} |",
            c.name(),
            t.median,
            t.min,
            t.max,
            sent.median,
            lost,
            t.median / bare.median,
            ratio
        );
        let _ = writeln!(
            csv,
            "{},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3}",
            c.name(),
            t.median,
            t.min,
            t.max,
            sent.median,
            lost,
            t.median / bare.median,
            ratio
        );
        bars.push(Bar {
            label: c.name().to_string(),
            mpps: t.median,
            group: match c {
                lab::Contender::Nftables => 0,
                lab::Contender::Xdpkit => 1,
                lab::Contender::BareDrop => 2,
            },
        });
        if *c == lab::Contender::Xdpkit {
            // Everything the generator sent came back: the generator, not
            // the balancer, set the rate.
            let bound = if t.median >= 0.95 * sent.median {
                ", a lower bound: it forwarded all the generator sent"
            } else {
                ""
            };
            checked.push(format!(
                "lab: xdpkit {ratio:.2}x nftables DNAT (target at least {TARGET_VS_NFT}x){bound}"
            ));
            if ratio < TARGET_VS_NFT {
                misses.push(format!(
                    "lab: xdpkit {ratio:.2}x nftables DNAT (target at least {TARGET_VS_NFT}x)"
                ));
            }
        }
    }
    let csv_path = o.out.join("lb_lab.csv");
    std::fs::write(&csv_path, csv)?;
    let png = o.out.join("lb_lab.png");
    benchkit::plot_bars(
        &bars,
        nft.median,
        "nftables",
        "Load balancing on one core (veth, median of rounds)",
        &png,
    )?;
    println!("wrote {} and {}", csv_path.display(), png.display());
    Ok(())
}
