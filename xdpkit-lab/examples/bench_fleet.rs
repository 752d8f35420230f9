//! `cargo xtask bench fleet`: how fast three hosts follow a push through
//! etcd (issue 12's targets), on the fleet lab of `xdpkit-cli/tests/fleet.rs`
//! (`xdpkit_lab::fleet`: three host namespaces, etcd in a fourth, an
//! `xdpkit agent` per host, frames sent into each host's interface).
//!
//! - (a) a one-rule change: each round pushes the group's layer with one
//!   deny rule more (a source no rule denied before), `--rounds` times.
//!   Timed from just before `xdpkit fleet push` starts until every host's
//!   status shows the new layer applied and a frame from the newly denied
//!   source was dropped on every host (a frame is sent to a host once its
//!   status shows the layer, again until one is dropped). Target: median
//!   at most 1 s.
//! - (b) a blocklist of `--prefixes` distinct IPv4 deny prefixes (a
//!   `rules-file`, as `xdpkit apply` takes large lists), pushed once and
//!   timed the same way (the frame from a source it lists). Target: at most
//!   15 s. Also the layer's size, compressed size and parts in etcd.
//!
//! Statuses come from a watch on etcd (`etcdctl watch`, each stamped when
//! it arrived), not from `fleet status` in a loop, which reads every layer
//! whole: looking must not slow what is measured. Writes
//! target/bench/fleet.csv and fleet.png.

use std::{
    collections::HashSet,
    fmt::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use ipnet::Ipv4Net;
use xdpkit_lab::{
    benchkit::{self, BenchResult, Trials, ValueBar},
    etcd::require_etcd,
    fleet::{self, FleetLab, StatusWatch, DEV, HOSTS},
};

const PREFIX: &str = "xkfb";
/// The links between the store and the hosts: 198.18.212.0/24.
const NET: u8 = 212;
/// Round r's newly denied source: 198.18.213.r.
const ROUND_NET: u8 = 213;
/// The blocklist's one prefix inside the lab's range, and the source of
/// the frame that checks it: every other prefix lies outside
/// 198.18.0.0/15 (the lab's frames meet no other).
const LISTED: &str = "198.18.214.0/24";
const LISTED_SRC: Ipv4Addr = Ipv4Addr::new(198, 18, 214, 7);
/// How long a push may take to converge before the run fails.
const SMALL_MAX: Duration = Duration::from_secs(20);
const BIG_MAX: Duration = Duration::from_secs(120);
/// The longest wait for a status before the deadline is checked again.
const TICK: Duration = Duration::from_millis(100);
const TARGET_SMALL_S: f64 = 1.0;
const TARGET_BIG_S: f64 = 15.0;

struct Options {
    rounds: usize,
    prefixes: usize,
    out: PathBuf,
}

fn options() -> BenchResult<Options> {
    let workspace = xdpkit_lab::benchkit::workspace()?;
    let mut o = Options {
        rounds: 10,
        prefixes: 1_000_000,
        out: workspace.join("target/bench"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--rounds" => o.rounds = value()?.parse::<usize>()?.clamp(1, 250),
            "--prefixes" => o.prefixes = value()?.parse::<usize>()?.clamp(1, 4_000_000),
            "--out" => o.out = PathBuf::from(value()?),
            "-h" | "--help" => {
                println!(
                    "bench_fleet [--rounds N (10)] [--prefixes N (1000000)] [--out DIR (target/bench)]"
                );
                std::process::exit(0);
            }
            _ => return Err(format!("unknown argument {a}; see --help").into()),
        }
    }
    Ok(o)
}

/// One push followed to the end, in seconds from just before the push.
#[derive(Clone, Debug)]
struct Convergence {
    /// `xdpkit fleet push` itself (the process, start to exit).
    push: f64,
    /// Per host: its status shows the layer applied.
    status: [f64; 3],
    /// Per host: a frame from the denied source was dropped there.
    traffic: [f64; 3],
    /// The push's manifest.
    pushed: fleet::Pushed,
}

impl Convergence {
    /// All three hosts applied it and drop the source.
    fn converged(&self) -> f64 {
        self.traffic.iter().copied().fold(0.0, f64::max)
    }
}

/// Pushes `file` and follows it until every host applied it and drops a
/// frame from `src` (counted against the drops before the push). Statuses
/// come from `watch`: stamped when etcd reported them, no polling.
fn converge(
    lab: &FleetLab,
    watch: &StatusWatch,
    file: &Path,
    src: Ipv4Addr,
    max: Duration,
) -> BenchResult<Convergence> {
    let before: Vec<u64> = HOSTS
        .iter()
        .map(|h| lab.dropped(h))
        .collect::<Result<_, _>>()?;
    // Statuses written before the push are history.
    let mut next = watch.since(0, Duration::ZERO).len();
    let start = Instant::now();
    let pushed = lab.push(file)?;
    let push = start.elapsed().as_secs_f64();
    let mut status = [None; 3];
    let mut traffic = [None; 3];
    while traffic.iter().any(Option::is_none) {
        if start.elapsed() > max {
            return Err(format!(
                "not converged after {max:?}: status {status:?}, traffic {traffic:?}: {:#?}",
                lab.agent_statuses()?
            )
            .into());
        }
        let waiting = status.iter().any(Option::is_none);
        // Waits for news only while a host has not reported; frames are
        // sent at once to hosts that have.
        let events = watch.since(next, if waiting { TICK } else { Duration::ZERO });
        next += events.len();
        for (at, s) in &events {
            let Some(i) = HOSTS.iter().position(|h| *h == s.host) else {
                continue;
            };
            if status[i].is_none() && fleet::runs(s, &pushed.id, "ok") {
                status[i] = Some(at.duration_since(start).as_secs_f64());
            } else if s.outcome == "error" && s.seen.iter().any(|l| l.id == pushed.id) {
                return Err(format!("{} did not apply it: {:?}", s.host, s.error).into());
            }
        }
        for (i, host) in HOSTS.iter().enumerate() {
            if status[i].is_some() && traffic[i].is_none() {
                lab.send(i, src, 1)?;
                if lab.dropped(host)? > before[i] {
                    traffic[i] = Some(start.elapsed().as_secs_f64());
                }
            }
        }
    }
    let done = |v: [Option<f64>; 3]| v.map(|t| t.unwrap_or(f64::NAN));
    Ok(Convergence {
        push,
        status: done(status),
        traffic: done(traffic),
        pushed,
    })
}

fn small_config(denied: &[String]) -> String {
    let rules: Vec<String> = denied.iter().map(|n| format!("deny src {n}")).collect();
    fleet::firewall_layer("pass", &rules, "")
}

fn big_config() -> String {
    fleet::firewall_layer("pass", &[] as &[&str], "rules-file = \"blocklist.rules\"\n")
}

/// `n` distinct IPv4 deny rules, one a line: [`LISTED`], then random /16
/// to /32 prefixes (as the firewall benchmark's) outside 198.18.0.0/15 (a
/// /15 holds only 262,143 distinct prefixes).
fn blocklist(n: usize) -> String {
    let lab_range: Ipv4Net = "198.18.0.0/15".parse().expect("prefix");
    let listed: Ipv4Net = LISTED.parse().expect("prefix");
    let mut seen = HashSet::with_capacity(n);
    seen.insert(listed);
    let mut text = String::with_capacity(n * 28);
    let _ = writeln!(text, "deny src {listed}");
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    while seen.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = [16, 20, 24, 24, 24, 28, 32, 32, 32, 32][(x >> 8) as usize % 10];
        let net = Ipv4Net::new(Ipv4Addr::from((x >> 32) as u32), len)
            .expect("len <= 32")
            .trunc();
        if lab_range.contains(&net.network()) || net.contains(&lab_range.network()) {
            continue;
        }
        if seen.insert(net) {
            let _ = writeln!(text, "deny src {net}");
        }
    }
    text
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

fn secs3(v: [f64; 3]) -> String {
    v.map(|t| format!("{t:.3}")).join(" ")
}

fn main() -> BenchResult<()> {
    if !xdpkit_lab::lab::is_root() {
        return Err(
            "the benchmark builds network namespaces and attaches XDP: run it as root".into(),
        );
    }
    if !require_etcd("bench_fleet") {
        return Err("the benchmark needs etcd: run `cargo xtask bootstrap`".into());
    }
    let o = options()?;
    let started = Instant::now();
    std::fs::create_dir_all(&o.out)?;
    let xdpkit = fleet::xdpkit_bin()?;
    let dir = tempfile::Builder::new().prefix("xkfleetbench.").tempdir()?;
    let file = dir.path().join("edge.toml");
    let mut lab = FleetLab::new(PREFIX, NET, &xdpkit)?;
    lab.start_agents(Duration::from_secs(20))?;
    let watch = lab.watch_statuses()?;
    println!(
        "lab: hosts {} (an agent each, group edge, {DEV} in native mode), etcd in the store namespace; \
         {} one-rule rounds, then {} prefixes",
        HOSTS.join(", "),
        o.rounds,
        o.prefixes
    );

    // The first layer: the interfaces attached, one rule (not timed).
    let mut denied = vec![format!("198.18.{ROUND_NET}.0/32")];
    std::fs::write(&file, small_config(&denied))?;
    let first = lab.push(&file)?;
    lab.wait_for(&HOSTS, &first.id, "ok", SMALL_MAX)?;

    let mut csv = String::from(
        "phase,round,push_s,status_h1_s,status_h2_s,status_h3_s,traffic_h1_s,traffic_h2_s,traffic_h3_s,converged_s,bytes,compressed,parts\n",
    );
    let mut row = |phase: &str, round: usize, c: &Convergence| {
        let _ = writeln!(
            csv,
            "{phase},{round},{:.4},{},{},{:.4},{},{},{}",
            c.push,
            c.status.map(|t| format!("{t:.4}")).join(","),
            c.traffic.map(|t| format!("{t:.4}")).join(","),
            c.converged(),
            c.pushed.bytes,
            c.pushed.compressed,
            c.pushed.parts
        );
    };

    println!("(a) one-rule change (seconds from just before the push; per host h1 h2 h3)");
    let mut small = Vec::new();
    for round in 1..=o.rounds {
        let src = Ipv4Addr::new(198, 18, ROUND_NET, round as u8);
        denied.push(format!("{src}/32"));
        std::fs::write(&file, small_config(&denied))?;
        let c = converge(&lab, &watch, &file, src, SMALL_MAX)?;
        println!(
            "  round {round:>2}: converged {:.3} s (push {:.3}; status {}; frame dropped {})",
            c.converged(),
            c.push,
            secs3(c.status),
            secs3(c.traffic)
        );
        row("one-rule", round, &c);
        small.push(c);
        // Apart from the next push: agents write their status, then idle.
        std::thread::sleep(Duration::from_millis(300));
    }

    println!("(b) blocklist of {} prefixes", o.prefixes);
    let t = Instant::now();
    std::fs::write(dir.path().join("blocklist.rules"), blocklist(o.prefixes))?;
    std::fs::write(&file, big_config())?;
    println!("  generated in {:.1} s", t.elapsed().as_secs_f64());
    let big = converge(&lab, &watch, &file, LISTED_SRC, BIG_MAX)?;
    println!(
        "  converged {:.2} s (push {:.2}; status {}; frame dropped {}); layer {} bytes, {} compressed in {} parts",
        big.converged(),
        big.push,
        secs3(big.status),
        secs3(big.traffic),
        big.pushed.bytes,
        big.pushed.compressed,
        big.pushed.parts
    );
    row("blocklist", 1, &big);
    drop(watch);
    drop(lab);

    let conv: Vec<f64> = small.iter().map(Convergence::converged).collect();
    let s = stat(&conv);
    let st = stat(
        &small
            .iter()
            .map(|c| c.status.iter().copied().fold(0.0, f64::max))
            .collect::<Vec<_>>(),
    );
    let pushes = stat(&small.iter().map(|c| c.push).collect::<Vec<_>>());
    println!();
    println!("| measure | median | min | max | target |");
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| one-rule change on 3 agents, converged (status + frame dropped), {} rounds | {:.3} s | {:.3} s | {:.3} s | {TARGET_SMALL_S} s |",
        o.rounds, s.median, s.min, s.max
    );
    println!(
        "| ... all 3 statuses applied | {:.3} s | {:.3} s | {:.3} s | |",
        st.median, st.min, st.max
    );
    println!(
        "| ... `xdpkit fleet push` itself | {:.3} s | {:.3} s | {:.3} s | |",
        pushes.median, pushes.min, pushes.max
    );
    println!(
        "| {}-prefix blocklist on 3 agents, converged | {:.2} s | | | {TARGET_BIG_S} s |",
        o.prefixes,
        big.converged()
    );
    println!(
        "| ... `xdpkit fleet push` itself | {:.2} s | | | |",
        big.push
    );
    println!(
        "blocklist layer: {} bytes, {} compressed ({:.1} MB), {} parts",
        big.pushed.bytes,
        big.pushed.compressed,
        big.pushed.compressed as f64 / 1e6,
        big.pushed.parts
    );

    let mut misses = Vec::new();
    if s.median > TARGET_SMALL_S {
        misses.push(format!(
            "one-rule change: median {:.3} s (target {TARGET_SMALL_S} s)",
            s.median
        ));
    }
    if big.converged() > TARGET_BIG_S {
        misses.push(format!(
            "{}-prefix blocklist: {:.2} s (target {TARGET_BIG_S} s)",
            o.prefixes,
            big.converged()
        ));
    }
    let bars = vec![
        ValueBar {
            label: format!("one rule, median of {}", o.rounds),
            value: s.median,
            group: 1,
            text: format!(
                "{:.3} s (min {:.3}, max {:.3}; target 1 s)",
                s.median, s.min, s.max
            ),
        },
        ValueBar {
            label: format!(
                "{} prefixes ({:.1} MB, {} parts)",
                o.prefixes,
                big.pushed.compressed as f64 / 1e6,
                big.pushed.parts
            ),
            value: big.converged(),
            group: 2,
            text: format!("{:.2} s (target 15 s)", big.converged()),
        },
    ];
    let csv_path = o.out.join("fleet.csv");
    std::fs::write(&csv_path, csv)?;
    let png = o.out.join("fleet.png");
    benchkit::plot_value_bars(
        &bars,
        TARGET_BIG_S,
        "seconds from the push until 3 agents applied it and drop the source",
        "Fleet convergence on 3 agents through etcd",
        &png,
    )?;
    println!("wrote {} and {}", csv_path.display(), png.display());
    println!(
        "lab removed; {:.0} s in all",
        started.elapsed().as_secs_f64()
    );
    if misses.is_empty() {
        println!("targets: all met");
    } else {
        println!("targets not met:");
        for m in &misses {
            println!("  {m}");
        }
    }
    Ok(())
}
