//! `cargo xtask bench firewall`: how fast the firewall drops, side by side
//! with bare `XDP_DROP`, nftables and xdp-filter, in one run on one lab.
//!
//! Two namespaces joined by a veth pair. In `gen`, xdpkit's live-frames
//! generator (pinned to CPU 0) sends 60-byte UDP frames at full speed from
//! random sources in 198.18.0.0/22. In `dut`, each contender in turn drops
//! them; the receiving veth runs threaded NAPI pinned to CPU 1, so every
//! contender gets one core. The rate is what the contender's own counter
//! saw, median of several trials. Every frame is dropped by every contender
//! after a lookup of its source, so all do the same work:
//!
//! - bare `drop`: xdpkit's `drop` program, no parsing;
//! - firewall (`--default deny`) with 0, and 1k (the 1,024 sources), 100k
//!   and 1M deny prefixes (IPv4 and IPv6; the sources are among them);
//! - nftables: a netdev ingress chain, `ip saddr @set drop`, then drop,
//!   the same prefixes in interval sets;
//! - xdp-filter (xdp-tools) with the 1,024 sources as exact IPs.
//!
//! Writes target/bench/firewall.csv and target/bench/firewall.png.

use std::{
    collections::HashSet,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    time::{Duration, Instant},
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use xdpkit::{
    firewall::{kernel::FirewallHarness, live::LiveFirewall, Policy, Ruleset, Verdict},
    trafficgen::udp_frame,
    AttachRequest, Mode, XdpAction,
};
use xdpkit_lab::{
    benchkit::{self, output, run, Bar, OneCoreLab, Trials},
    lab::Lab,
};

type BoxResult<T> = xdpkit_lab::benchkit::BenchResult<T>;

const GEN_IF: &str = "xkbf-g";
const DUT_IF: &str = "xkbf-d";
const DUT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 60, 2);
/// The sources of the traffic: 1,024 addresses, all denied by every contender.
const SOURCES: &str = "198.18.0.0/22";
const NFT_TABLE: &str = "xkbench";
/// Pause after each contender's teardown.
const SETTLE: Duration = Duration::from_secs(4);

#[derive(Clone, Copy, Debug)]
enum Contender {
    BareDrop,
    Firewall(usize),
    Nftables(usize),
    XdpFilter(usize),
}

impl Contender {
    fn name(self) -> String {
        match self {
            Contender::BareDrop => "xdp drop (bare)".to_string(),
            Contender::Firewall(n) => format!("xdpkit firewall, {} prefixes", count(n)),
            Contender::Nftables(n) => format!("nftables netdev, {} prefixes", count(n)),
            Contender::XdpFilter(n) => format!("xdp-filter, {} IPs", count(n)),
        }
    }
}

fn count(n: usize) -> String {
    match n {
        0 => "0".to_string(),
        n if n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

struct Options {
    trial: Duration,
    trials: usize,
    sizes: Vec<usize>,
    out: PathBuf,
}

fn options() -> BoxResult<Options> {
    let mut o = Options {
        trial: Duration::from_secs(2),
        trials: 5,
        sizes: vec![1_024, 100_000, 1_000_000],
        out: PathBuf::from("target/bench"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--trial-secs" => o.trial = Duration::from_secs_f64(value()?.parse()?),
            "--trials" => o.trials = value()?.parse::<usize>()?.max(1),
            "--sizes" => {
                o.sizes = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            "--out" => o.out = PathBuf::from(value()?),
            "-h" | "--help" => {
                println!(
                    "bench_firewall [--trial-secs S (2)] [--trials N (5)] \
                     [--sizes 1024,100000,1000000] [--out DIR (target/bench)]"
                );
                std::process::exit(0);
            }
            _ => return Err(format!("unknown argument {a}; see --help").into()),
        }
    }
    Ok(o)
}

struct Row {
    contender: Contender,
    mpps: f64,
    min: f64,
    max: f64,
    ns_per_packet: Option<f64>,
    setup: Duration,
}

fn main() -> BoxResult<()> {
    if !xdpkit_lab::lab::is_root() {
        return Err(
            "the benchmark builds network namespaces and attaches XDP: run it as root".into(),
        );
    }
    let o = options()?;
    let started = Instant::now();
    let bench_lab = OneCoreLab::new("xkbf", GEN_IF, DUT_IF, "198.18.60.0/24")?;
    let lab = &bench_lab.lab;
    let frame = udp_frame(
        lab.mac("gen", GEN_IF)?,
        lab.mac("dut", DUT_IF)?,
        Ipv4Addr::new(198, 18, 0, 1),
        DUT_ADDR,
        (1234, 9),
        60,
    );
    let sources: Ipv4Net = SOURCES.parse()?;
    let biggest = o.sizes.iter().copied().max().unwrap_or(0);
    let prefixes = prefixes(biggest, sources);
    println!(
        "lab: {GEN_IF} (gen, CPU {}) -> {DUT_IF} (dut, threaded NAPI on CPU {}); \
         60-byte UDP from random sources in {SOURCES}; {} trials of {:.1} s each",
        benchkit::GEN_CPU,
        benchkit::NAPI_CPU,
        o.trials,
        o.trial.as_secs_f64()
    );

    let mut contenders = vec![Contender::BareDrop, Contender::Firewall(0)];
    contenders.extend(o.sizes.iter().map(|&n| Contender::Firewall(n)));
    contenders.extend(o.sizes.iter().map(|&n| Contender::Nftables(n)));
    contenders.push(Contender::XdpFilter(sources.hosts().count() + 2));

    let mut rows = Vec::new();
    for c in contenders {
        let row = measure(&bench_lab, c, &frame, sources, &prefixes, &o)?;
        println!(
            "  {:<34} {:>6.2} Mpps (min {:.2}, max {:.2}){}   set up in {:.1} s",
            c.name(),
            row.mpps,
            row.min,
            row.max,
            row.ns_per_packet
                .map_or(String::new(), |ns| format!(", test_run {ns:.1} ns/packet")),
            row.setup.as_secs_f64()
        );
        rows.push(row);
    }
    report(&rows, &o)?;
    drop(bench_lab);
    println!(
        "lab removed; {:.0} s in all",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn measure(
    bench_lab: &OneCoreLab,
    c: Contender,
    frame: &[u8],
    sources: Ipv4Net,
    prefixes: &[IpNet],
    o: &Options,
) -> BoxResult<Row> {
    let lab = &bench_lab.lab;
    let t = Instant::now();
    setup(lab, c, sources, prefixes)?;
    let setup_time = t.elapsed();
    let result = (|| -> BoxResult<(Trials, Option<f64>)> {
        bench_lab.pin_napi()?;
        // Warm up: caches, the trie's hot path, NAPI thread placement.
        trial(bench_lab, c, frame, sources, Duration::from_millis(500))?;
        let rates = benchkit::trials(o.trials, || trial(bench_lab, c, frame, sources, o.trial))?;
        if let Contender::Firewall(n) = c {
            if n > 0 {
                rule_add_times(lab, n)?;
            }
        }
        Ok((rates, ns_per_packet(c, frame, prefixes)?))
    })();
    teardown(lab, c)?;
    // The kernel frees a detached firewall's maps (a 2M-entry per-CPU
    // array among them) in a worker that can land on the NAPI core: let it
    // finish before the next contender is measured.
    std::thread::sleep(SETTLE);
    let (rates, ns) = result?;
    Ok(Row {
        contender: c,
        mpps: rates.median,
        min: rates.min,
        max: rates.max,
        ns_per_packet: ns,
        setup: setup_time,
    })
}

/// Times `rule add` of a source host as the CLI does it (open the pinned
/// firewall, add, close), in this process: the work an add does, without
/// the cost of starting a program.
fn rule_add_times(lab: &Lab, prefixes: usize) -> BoxResult<()> {
    const ADDS: u32 = 50;
    let mut times = lab.run_in("dut", || -> Result<Vec<Duration>, xdpkit::Error> {
        (0..ADDS)
            .map(|i| {
                // Outside the sources: these rules never decide a bench frame.
                let rule = format!("deny src 198.19.255.{i}")
                    .parse()
                    .map_err(|e| xdpkit::Error::InvalidArgument(format!("bench rule: {e}")))?;
                let t = Instant::now();
                LiveFirewall::open(DUT_IF)?.add(rule)?;
                Ok(t.elapsed())
            })
            .collect()
    })??;
    times.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "  rule add at {} prefixes (in process: open, add, close): median {:.0} us, min {:.0}, max {:.0}, {ADDS} adds",
        count(prefixes),
        us(times[times.len() / 2]),
        us(times[0]),
        us(times[times.len() - 1]),
    );
    Ok(())
}

/// One trial: Mpps the contender dropped while the generator ran.
fn trial(
    bench_lab: &OneCoreLab,
    c: Contender,
    frame: &[u8],
    sources: Ipv4Net,
    d: Duration,
) -> BoxResult<f64> {
    let lab = &bench_lab.lab;
    let before = dropped(lab, c)?;
    let sent = bench_lab.send_for(frame, Some(sources), d)?;
    let after = dropped(lab, c)?;
    let got = after - before;
    if got == 0 {
        return Err(format!("{}: nothing dropped (sent {})", c.name(), sent.frames).into());
    }
    Ok(got as f64 / sent.elapsed.as_secs_f64() / 1e6)
}

fn setup(lab: &Lab, c: Contender, sources: Ipv4Net, prefixes: &[IpNet]) -> BoxResult<()> {
    match c {
        Contender::BareDrop | Contender::Firewall(_) => {
            let (program, policy) = match c {
                Contender::Firewall(_) => ("firewall", Some(fw_policy())),
                _ => ("drop", None),
            };
            let rules = match c {
                Contender::Firewall(n) if n > 0 => Some(deny_rules(&prefixes[..n])?),
                _ => None,
            };
            lab.run_in("dut", || -> Result<(), xdpkit::Error> {
                xdpkit::attach(&AttachRequest::from_list(
                    DUT_IF,
                    program,
                    Mode::Native,
                    None,
                    policy.as_ref(),
                    false,
                )?)?;
                if let Some(rules) = rules {
                    LiveFirewall::open(DUT_IF)?.load(&rules, true)?;
                }
                Ok(())
            })??;
        }
        Contender::Nftables(n) => {
            let script = nft_script(&prefixes[..n]);
            let path = std::env::temp_dir().join("xkbench.nft");
            std::fs::write(&path, script)?;
            let r = run(lab.command("dut", "nft").arg("-f").arg(&path));
            let _ = std::fs::remove_file(&path);
            r?;
        }
        Contender::XdpFilter(_) => {
            run(lab
                .command("dut", "xdp-filter")
                .args(["load", DUT_IF, "--mode", "native"]))?;
            for ip in sources
                .hosts()
                .chain([sources.network(), sources.broadcast()])
            {
                run(lab.command("dut", "xdp-filter").args([
                    "ip",
                    &ip.to_string(),
                    "--mode",
                    "src",
                ]))?;
            }
        }
    }
    Ok(())
}

/// The default drops too: a source no prefix covers (with `--sizes` below
/// 1,024) is dropped after the lookups rather than sent up the stack,
/// which would cost far more and not be counted.
fn fw_policy() -> Policy {
    Policy {
        default: Verdict::Drop,
        ..Policy::default()
    }
}

fn teardown(lab: &Lab, c: Contender) -> BoxResult<()> {
    match c {
        Contender::BareDrop | Contender::Firewall(_) => {
            lab.run_in("dut", || xdpkit::detach(DUT_IF))??;
        }
        Contender::Nftables(_) => run(lab
            .command("dut", "nft")
            .args(["delete", "table", "netdev", NFT_TABLE]))?,
        Contender::XdpFilter(_) => run(lab.command("dut", "xdp-filter").args(["unload", DUT_IF]))?,
    }
    Ok(())
}

/// Frames the contender has dropped so far.
fn dropped(lab: &Lab, c: Contender) -> BoxResult<u64> {
    match c {
        Contender::BareDrop | Contender::Firewall(_) => {
            let s = lab.run_in("dut", || xdpkit::status(Some(DUT_IF), Duration::ZERO))??;
            Ok(s[0].actions[XdpAction::Drop as usize].packets)
        }
        Contender::Nftables(_) => {
            let out = output(
                lab.command("dut", "nft")
                    .args(["-j", "list", "table", "netdev", NFT_TABLE]),
            )?;
            let json: serde_json::Value = serde_json::from_str(&out)?;
            let mut packets = 0;
            collect_counters(&json, &mut packets);
            Ok(packets)
        }
        // xdp-filter counts per address; the veth's XDP drop counter is the sum.
        Contender::XdpFilter(_) => {
            let out = output(lab.command("dut", "ethtool").args(["-S", DUT_IF]))?;
            out.lines()
                .filter_map(|l| l.trim().strip_prefix("rx_queue_0_xdp_drops:"))
                .map(|v| v.trim().parse::<u64>())
                .next()
                .ok_or("ethtool -S shows no rx_queue_0_xdp_drops")?
                .map_err(Into::into)
        }
    }
}

fn collect_counters(v: &serde_json::Value, packets: &mut u64) {
    match v {
        serde_json::Value::Object(m) => {
            if let Some(p) = m
                .get("counter")
                .and_then(|c| c.get("packets"))
                .and_then(serde_json::Value::as_u64)
            {
                *packets += p;
            }
            m.values().for_each(|v| collect_counters(v, packets));
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| collect_counters(v, packets)),
        _ => {}
    }
}

/// BPF_PROG_TEST_RUN's mean ns per frame (xdpkit's programs only).
fn ns_per_packet(c: Contender, frame: &[u8], prefixes: &[IpNet]) -> BoxResult<Option<f64>> {
    const REPEAT: u32 = 1_000_000;
    Ok(match c {
        Contender::BareDrop => {
            Some(xdpkit::test_run(&xdpkit::programs::drop::Drop, frame, REPEAT)?.ns_per_run as f64)
        }
        Contender::Firewall(n) => {
            let mut h = FirewallHarness::new(fw_policy())?;
            if n > 0 {
                h.load_rules(&deny_rules(&prefixes[..n])?)?;
            }
            Some(h.ns_per_frame(frame, REPEAT)? as f64)
        }
        _ => None,
    })
}

/// `n` distinct prefixes: first the sources' /32s, then random IPv4 (/16 to
/// /32) and IPv6 (/32 to /64, in 2001:db8::/32) prefixes, 7 to 3, none
/// covering the sources (so each source has exactly one matching rule).
fn prefixes(n: usize, sources: Ipv4Net) -> Vec<IpNet> {
    let mut out: Vec<IpNet> = sources
        .subnets(32)
        .expect("/22 splits into /32s")
        .map(IpNet::V4)
        .take(n)
        .collect();
    let mut seen: HashSet<IpNet> = out.iter().copied().collect();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    while out.len() < n {
        let r = next();
        let net = if r % 10 < 7 {
            let len = [16, 20, 24, 24, 24, 28, 32, 32, 32, 32][(r >> 8) as usize % 10];
            let addr = Ipv4Addr::from((r >> 32) as u32);
            let net = Ipv4Net::new(addr, len).expect("len <= 32").trunc();
            if net.contains(&sources.network()) || sources.contains(&net.network()) {
                continue;
            }
            IpNet::V4(net)
        } else {
            let len = [32, 48, 56, 64][(r >> 8) as usize % 4];
            let low = next();
            let addr = Ipv6Addr::from(
                (0x2001_0db8u128 << 96) | (u128::from((low >> 32) as u32) << 64) | u128::from(low),
            );
            IpNet::V6(Ipv6Net::new(addr, len).expect("len <= 128").trunc())
        };
        if seen.insert(net) {
            out.push(net);
        }
    }
    out
}

fn deny_rules(prefixes: &[IpNet]) -> BoxResult<Ruleset> {
    let mut text = String::with_capacity(prefixes.len() * 32);
    for p in prefixes {
        let _ = writeln!(text, "deny src {p}");
    }
    Ok(Ruleset::parse_file_text("bench.rules", &text)?)
}

fn nft_script(prefixes: &[IpNet]) -> String {
    let mut s = format!(
        "table netdev {NFT_TABLE} {{\n\
         set v4 {{ type ipv4_addr; flags interval; auto-merge; }}\n\
         set v6 {{ type ipv6_addr; flags interval; auto-merge; }}\n\
         chain ingress {{ type filter hook ingress device {DUT_IF} priority 0; policy accept;\n\
         ip saddr @v4 counter drop\n\
         ip6 saddr @v6 counter drop\n\
         counter drop\n}}\n}}\n"
    );
    for (set, v4) in [("v4", true), ("v6", false)] {
        let elems: Vec<String> = prefixes
            .iter()
            .filter(|p| matches!(p.addr(), IpAddr::V4(_)) == v4)
            .map(ToString::to_string)
            .collect();
        for chunk in elems.chunks(10_000) {
            let _ = writeln!(
                s,
                "add element netdev {NFT_TABLE} {set} {{ {} }}",
                chunk.join(", ")
            );
        }
    }
    s
}

fn report(rows: &[Row], o: &Options) -> BoxResult<()> {
    let bare = rows
        .iter()
        .find(|r| matches!(r.contender, Contender::BareDrop))
        .map_or(1.0, |r| r.mpps);
    let nft_of = |n: usize| {
        rows.iter()
            .find(|r| matches!(r.contender, Contender::Nftables(m) if m == n))
            .map(|r| r.mpps)
    };
    std::fs::create_dir_all(&o.out)?;
    let mut csv = String::from(
        "contender,prefixes,mpps_median,mpps_min,mpps_max,ratio_to_bare_drop,ratio_to_nftables_same_prefixes,test_run_ns_per_packet,setup_s\n",
    );
    println!();
    println!("| contender | Mpps (median) | x bare drop | x nftables, same prefixes | test_run ns/packet |");
    println!("|---|---:|---:|---:|---:|");
    for r in rows {
        let n = match r.contender {
            Contender::BareDrop => 0,
            Contender::Firewall(n) | Contender::Nftables(n) | Contender::XdpFilter(n) => n,
        };
        let vs_nft = match r.contender {
            Contender::Firewall(n) => nft_of(n).map(|m| r.mpps / m),
            _ => None,
        };
        let _ = writeln!(
            csv,
            "{},{n},{:.3},{:.3},{:.3},{:.3},{},{},{:.1}",
            r.contender.name(),
            r.mpps,
            r.min,
            r.max,
            r.mpps / bare,
            vs_nft.map_or(String::new(), |v| format!("{v:.2}")),
            r.ns_per_packet.map_or(String::new(), |v| format!("{v:.1}")),
            r.setup.as_secs_f64()
        );
        println!(
            "| {} | {:.2} | {:.2} | {} | {} |",
            r.contender.name(),
            r.mpps,
            r.mpps / bare,
            vs_nft.map_or("-".to_string(), |v| format!("{v:.1}")),
            r.ns_per_packet
                .map_or("-".to_string(), |v| format!("{v:.0}"))
        );
    }
    if let Some(big) = rows
        .iter()
        .filter(|r| matches!(r.contender, Contender::Firewall(_)))
        .max_by_key(|r| match r.contender {
            Contender::Firewall(n) => n,
            _ => 0,
        })
    {
        let n = match big.contender {
            Contender::Firewall(n) => n,
            _ => 0,
        };
        let mark = |ok: bool| if ok { "met" } else { "NOT met" };
        println!();
        println!(
            "targets: firewall with {} prefixes >= 0.9x bare drop: {:.2}x, {}",
            count(n),
            big.mpps / bare,
            mark(big.mpps / bare >= 0.9)
        );
        if let Some(nft) = nft_of(n) {
            println!(
                "         firewall with {} prefixes >= 3x nftables: {:.1}x, {}",
                count(n),
                big.mpps / nft,
                mark(big.mpps / nft >= 3.0)
            );
        }
    }
    let csv_path = o.out.join("firewall.csv");
    std::fs::write(&csv_path, csv)?;
    let png = o.out.join("firewall.png");
    let bars: Vec<Bar> = rows
        .iter()
        .map(|r| Bar {
            label: r.contender.name(),
            mpps: r.mpps,
            group: match r.contender {
                Contender::BareDrop => 0,
                Contender::Firewall(_) => 1,
                Contender::Nftables(_) => 2,
                Contender::XdpFilter(_) => 3,
            },
        })
        .collect();
    benchkit::plot_bars(
        &bars,
        bare,
        "bare drop",
        "Drop rate on one core (veth, 60-byte UDP), median of trials",
        &png,
    )?;
    println!();
    println!("wrote {} and {}", csv_path.display(), png.display());
    Ok(())
}
