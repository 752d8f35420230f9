//! `cargo xtask bench stages`: what each extra stage of a chain costs
//! (issue 9 point 3, target: at most 10 ns per extra stage), against the
//! same program attached alone.
//!
//! A program appears at most once per chain, so longer chains are built
//! from distinct stages that hand frames on: `count` (counts, then "next")
//! gives the per-extra-stage figure; the firewall (no rules, default pass)
//! is heavier and reported apart as the firewall stage cost.
//!
//! 1. test_run (BPF_PROG_TEST_RUN, one 60-byte UDP frame, `--repeat`
//!    runs): `drop`, `count` and `firewall` loaded alone (no root; "next"
//!    passes), and the chains [drop], [count,drop], [firewall,drop] and
//!    [firewall,count,drop] run through the root, as an interface runs them.
//! 2. live: the one-core lab of `xdpkit_lab::benchkit` (generator on CPU 0,
//!    the receiving veth's threaded NAPI on CPU 1): `drop` attached alone
//!    (its object, unpinned, no root), then the same chains attached with
//!    `xdpkit::attach`. Per trial: received Mpps and the live ns per frame
//!    from bpf_stats (run_time_ns / run_cnt of the program the link runs:
//!    for a chain the root, whose time covers the tail-called stages).
//!
//! Contenders are interleaved in rounds (the order rotates every round);
//! the differences (root overhead, cost per extra stage) are medians of
//! per-round paired differences, so a slow round moves both sides alike.
//!
//! Writes target/bench/stages.csv and target/bench/stages.png.

use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    path::PathBuf,
    time::{Duration, Instant},
};

use aya::programs::XdpMode;
use xdpkit::{
    programs::{count::Count, drop::Drop, firewall::Firewall, Program},
    testrun::{Alone, Harness},
    trafficgen::udp_frame,
    AttachRequest, Mode, XdpAction,
};
use xdpkit_lab::benchkit::{self, BenchResult, OneCoreLab, Trials, ValueBar};

const GEN_IF: &str = "xkbs-g";
const DUT_IF: &str = "xkbs-d";
/// Pause after each live contender's teardown (map and program freeing
/// runs in a worker that can land on the measured core).
const SETTLE: Duration = Duration::from_millis(1000);
const WARM_UP: Duration = Duration::from_millis(300);
/// What the per-stage figure is held to.
const TARGET_NS: f64 = 10.0;

struct Options {
    trial: Duration,
    trials: usize,
    repeat: u32,
    test_run: bool,
    live: bool,
    out: PathBuf,
}

fn options() -> BenchResult<Options> {
    let mut o = Options {
        trial: Duration::from_secs(2),
        trials: 5,
        repeat: 2_000_000,
        test_run: true,
        live: true,
        out: PathBuf::from("target/bench"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--trial-secs" => o.trial = Duration::from_secs_f64(value()?.parse()?),
            "--trials" => o.trials = value()?.parse::<usize>()?.max(1),
            "--repeat" => o.repeat = value()?.parse::<u32>()?.max(1),
            "--only" => match value()?.as_str() {
                "test-run" => o.live = false,
                "live" => o.test_run = false,
                other => return Err(format!("--only test-run|live, not {other}").into()),
            },
            "--out" => o.out = PathBuf::from(value()?),
            "-h" | "--help" => {
                println!(
                    "bench_stages [--trials N (5)] [--trial-secs S (2)] [--repeat R (2000000)] \
                     [--only test-run|live] [--out DIR (target/bench)]"
                );
                std::process::exit(0);
            }
            _ => return Err(format!("unknown argument {a}; see --help").into()),
        }
    }
    Ok(o)
}

/// How a contender runs.
#[derive(Clone, Copy)]
enum Setup {
    /// One program loaded by itself: no root, "next" passes.
    Alone(&'static dyn Program),
    /// A chain of stages (`count,drop`) behind the root.
    Chain(&'static str),
}

impl Setup {
    fn name(self) -> String {
        match self {
            Setup::Alone(p) => format!("{} alone", p.name()),
            Setup::Chain(list) => format!("chain [{list}]"),
        }
    }
}

/// A derived figure: `minus` subtracted from `plus`, paired per round.
struct Figure {
    name: &'static str,
    plus: &'static str,
    minus: &'static str,
    /// Held to [`TARGET_NS`].
    per_stage: bool,
}

const FIGURES: &[Figure] = &[
    Figure {
        name: "root overhead: chain [drop] - drop alone",
        plus: "chain [drop]",
        minus: "drop alone",
        per_stage: false,
    },
    Figure {
        name: "per extra stage: chain [count,drop] - chain [drop]",
        plus: "chain [count,drop]",
        minus: "chain [drop]",
        per_stage: true,
    },
    Figure {
        name: "per extra stage: chain [firewall,count,drop] - chain [firewall,drop]",
        plus: "chain [firewall,count,drop]",
        minus: "chain [firewall,drop]",
        per_stage: true,
    },
    Figure {
        name: "firewall stage cost: chain [firewall,drop] - chain [drop]",
        plus: "chain [firewall,drop]",
        minus: "chain [drop]",
        per_stage: false,
    },
    Figure {
        name: "firewall stage cost: chain [firewall,count,drop] - chain [count,drop]",
        plus: "chain [firewall,count,drop]",
        minus: "chain [count,drop]",
        per_stage: false,
    },
    Figure {
        name: "count's own work: count alone - drop alone",
        plus: "count alone",
        minus: "drop alone",
        per_stage: false,
    },
    Figure {
        name: "firewall's own work: firewall alone - drop alone",
        plus: "firewall alone",
        minus: "drop alone",
        per_stage: false,
    },
];

fn test_run_setups() -> Vec<Setup> {
    vec![
        Setup::Alone(&Drop),
        Setup::Alone(&Count),
        Setup::Alone(&Firewall),
        Setup::Chain("drop"),
        Setup::Chain("count,drop"),
        Setup::Chain("firewall,drop"),
        Setup::Chain("firewall,count,drop"),
    ]
}

fn live_setups() -> Vec<Setup> {
    vec![
        Setup::Alone(&Drop),
        Setup::Chain("drop"),
        Setup::Chain("count,drop"),
        Setup::Chain("firewall,drop"),
        Setup::Chain("firewall,count,drop"),
    ]
}

/// One contender's values, one per round (in round order).
struct Series {
    name: String,
    values: Vec<f64>,
}

fn summary(values: &[f64]) -> Trials {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    Trials {
        median: v[v.len() / 2],
        min: v[0],
        max: v[v.len() - 1],
    }
}

/// Median (and range) of the per-round differences `plus - minus`.
fn paired(series: &[Series], f: &Figure) -> Option<Trials> {
    let find = |n: &str| series.iter().find(|s| s.name == n);
    let (a, b) = (find(f.plus)?, find(f.minus)?);
    let diffs: Vec<f64> = a.values.iter().zip(&b.values).map(|(x, y)| x - y).collect();
    (!diffs.is_empty()).then(|| summary(&diffs))
}

enum Runner {
    Alone(Alone),
    Chain(Harness),
}

/// test_run: every contender loaded once, then `trials` interleaved rounds.
fn test_run(o: &Options, frame: &[u8]) -> BenchResult<Vec<Series>> {
    let setups = test_run_setups();
    let mut runners = Vec::new();
    for s in &setups {
        runners.push(match *s {
            Setup::Alone(p) => Runner::Alone(Alone::new(p)?),
            Setup::Chain(list) => Runner::Chain(Harness::new(
                &AttachRequest::from_list("bench", list, Mode::Auto, None, None, false)?.stages,
            )?),
        });
    }
    // Chains end in drop; alone, count and the firewall pass (no "next").
    let expect = |s: Setup| match s {
        Setup::Alone(p) if p.name() != Drop.name() => XdpAction::Pass,
        _ => XdpAction::Drop,
    };
    let mut series: Vec<Series> = setups
        .iter()
        .map(|s| Series {
            name: s.name(),
            values: Vec::new(),
        })
        .collect();
    // Warm-up round, not recorded; it also checks every verdict.
    for (i, r) in runners.iter_mut().enumerate() {
        let out = match r {
            Runner::Alone(a) => a.run(frame, 1000)?,
            Runner::Chain(h) => h.run(frame, 1000)?,
        };
        if out.verdict != Some(expect(setups[i])) {
            return Err(format!(
                "{}: verdict {:?}, expected {:?}",
                setups[i].name(),
                out.verdict,
                expect(setups[i])
            )
            .into());
        }
    }
    let n = runners.len();
    for round in 0..o.trials {
        for k in 0..n {
            let i = (k + round) % n;
            let out = match &mut runners[i] {
                Runner::Alone(a) => a.run(frame, o.repeat)?,
                Runner::Chain(h) => h.run(frame, o.repeat)?,
            };
            series[i].values.push(out.ns_per_run as f64);
        }
    }
    Ok(series)
}

/// A live contender, attached on the lab's receiving interface.
struct Attached {
    /// The program the link runs (the root for a chain).
    prog_id: u32,
    /// The object of a program attached alone (detached when dropped).
    alone: Option<aya::Ebpf>,
}

fn attach(bl: &OneCoreLab, s: Setup) -> BenchResult<Attached> {
    let lab = &bl.lab;
    match s {
        Setup::Alone(p) => {
            let ifindex = lab.ifindex("dut", DUT_IF)?;
            let (ebpf, prog_id) =
                lab.run_in("dut", move || -> BenchResult<(aya::Ebpf, u32)> {
                    let mut ebpf = p.object().load()?;
                    let program = xdpkit::object::program(&mut ebpf, p.symbol(), p.name())?;
                    program.attach_to_if_index(ifindex, XdpMode::Driver)?;
                    let prog_id = program.info()?.id();
                    Ok((ebpf, prog_id))
                })??;
            Ok(Attached {
                prog_id,
                alone: Some(ebpf),
            })
        }
        Setup::Chain(list) => {
            let report = lab.run_in("dut", || {
                xdpkit::attach(&AttachRequest::from_list(
                    DUT_IF,
                    list,
                    Mode::Native,
                    None,
                    None,
                    false,
                )?)
            })??;
            Ok(Attached {
                prog_id: report.prog_id,
                alone: None,
            })
        }
    }
}

fn detach(bl: &OneCoreLab, a: Attached) -> BenchResult<()> {
    match a.alone {
        Some(ebpf) => drop(ebpf),
        None => {
            bl.lab.run_in("dut", || xdpkit::detach(DUT_IF))??;
        }
    }
    Ok(())
}

/// Run time (ns) and run count of program `id` (bpf_stats).
fn prog_stats(id: u32) -> BenchResult<(u64, u64)> {
    aya::programs::loaded_programs()
        .flatten()
        .find(|p| p.id() == id)
        .map(|p| (p.run_time().as_nanos() as u64, p.run_count()))
        .ok_or_else(|| format!("program {id} is gone").into())
}

/// One live trial: (received Mpps, live ns per frame).
fn live_trial(bl: &OneCoreLab, s: Setup, frame: &[u8], d: Duration) -> BenchResult<(f64, f64)> {
    let attached = attach(bl, s)?;
    let result = (|| -> BenchResult<(f64, f64)> {
        bl.pin_napi()?;
        bl.send_for(frame, None, WARM_UP)?;
        let (t0, c0) = prog_stats(attached.prog_id)?;
        let sent = bl.send_for(frame, None, d)?;
        let (t1, c1) = prog_stats(attached.prog_id)?;
        let runs = c1 - c0;
        if runs == 0 {
            return Err(format!("{}: no runs (sent {})", s.name(), sent.frames).into());
        }
        Ok((
            runs as f64 / sent.elapsed.as_secs_f64() / 1e6,
            (t1 - t0) as f64 / runs as f64,
        ))
    })();
    detach(bl, attached)?;
    std::thread::sleep(SETTLE);
    result
}

/// Live: `trials` interleaved rounds. Returns (ns series, Mpps series).
fn live(o: &Options) -> BenchResult<(Vec<Series>, Vec<Series>)> {
    let bl = OneCoreLab::new("xkbs", GEN_IF, DUT_IF, "198.18.75.0/24")?;
    let lab = &bl.lab;
    let frame = udp_frame(
        lab.mac("gen", GEN_IF)?,
        lab.mac("dut", DUT_IF)?,
        Ipv4Addr::new(198, 18, 75, 1),
        Ipv4Addr::new(198, 18, 75, 2),
        (1234, 9),
        60,
    );
    println!(
        "live: {GEN_IF} (gen, CPU {}) -> {DUT_IF} (dut, threaded NAPI on CPU {}); 60-byte UDP; \
         {} rounds of {:.1} s trials",
        benchkit::GEN_CPU,
        benchkit::NAPI_CPU,
        o.trials,
        o.trial.as_secs_f64()
    );
    // bpf_stats for as long as this fd is open (reference-counted by the
    // kernel: it does not turn off what someone else turned on).
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)?;
    let setups = live_setups();
    let new = || -> Vec<Series> {
        setups
            .iter()
            .map(|s| Series {
                name: s.name(),
                values: Vec::new(),
            })
            .collect()
    };
    let (mut ns, mut mpps) = (new(), new());
    let n = setups.len();
    for round in 0..o.trials {
        for k in 0..n {
            let i = (k + round) % n;
            let (rate, per) = live_trial(&bl, setups[i], &frame, o.trial)?;
            println!(
                "  round {}: {:<30} {:>6.2} Mpps {:>6.1} ns/frame",
                round + 1,
                setups[i].name(),
                rate,
                per
            );
            mpps[i].values.push(rate);
            ns[i].values.push(per);
        }
    }
    Ok((ns, mpps))
}

fn main() -> BenchResult<()> {
    if !xdpkit_lab::lab::is_root() {
        return Err(
            "the benchmark loads eBPF, builds network namespaces and attaches XDP: run it as root"
                .into(),
        );
    }
    let o = options()?;
    let started = Instant::now();
    let stats_on = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
        .map(|s| s.trim() == "1")
        .unwrap_or(false);
    if stats_on {
        println!("note: kernel.bpf_stats_enabled=1 already: test_run times include the stats");
    }
    let mut tr = Vec::new();
    if o.test_run {
        let frame = udp_frame(
            [2, 0, 0, 0, 0, 1],
            [2, 0, 0, 0, 0, 2],
            Ipv4Addr::new(198, 18, 75, 1),
            Ipv4Addr::new(198, 18, 75, 2),
            (1234, 9),
            60,
        );
        println!(
            "test_run: 60-byte UDP frame, repeat {}, {} interleaved rounds",
            o.repeat, o.trials
        );
        tr = test_run(&o, &frame)?;
    }
    let (mut live_ns, mut live_mpps) = (Vec::new(), Vec::new());
    if o.live {
        (live_ns, live_mpps) = live(&o)?;
    }

    std::fs::create_dir_all(&o.out)?;
    let mut csv = String::from("section,name,metric,median,min,max\n");
    let row = |csv: &mut String, section: &str, name: &str, metric: &str, t: Trials| {
        let _ = writeln!(
            csv,
            "{section},\"{name}\",{metric},{:.3},{:.3},{:.3}",
            t.median, t.min, t.max
        );
    };
    let base_of = |series: &[Series]| {
        series
            .iter()
            .find(|s| s.name == "drop alone")
            .map(|s| summary(&s.values).median)
    };
    if !tr.is_empty() {
        let base = base_of(&tr).unwrap_or(f64::NAN);
        println!();
        println!("test_run, ns/frame (median of {} rounds):", o.trials);
        println!("| contender | ns/frame | min | max | - drop alone |");
        println!("|---|---:|---:|---:|---:|");
        for s in &tr {
            let t = summary(&s.values);
            row(&mut csv, "test_run", &s.name, "ns_per_frame", t);
            println!(
                "| {} | {:.1} | {:.1} | {:.1} | {:+.1} |",
                s.name,
                t.median,
                t.min,
                t.max,
                t.median - base
            );
        }
    }
    if !live_ns.is_empty() {
        let base = base_of(&live_ns).unwrap_or(f64::NAN);
        let base_mpps = base_of(&live_mpps).unwrap_or(f64::NAN);
        println!();
        println!(
            "live (bpf_stats of the attached program), median of {} rounds:",
            o.trials
        );
        println!("| contender | ns/frame | min | max | - drop alone | Mpps | x drop alone |");
        println!("|---|---:|---:|---:|---:|---:|---:|");
        for (s, m) in live_ns.iter().zip(&live_mpps) {
            let t = summary(&s.values);
            let r = summary(&m.values);
            row(&mut csv, "live", &s.name, "ns_per_frame", t);
            row(&mut csv, "live", &m.name, "mpps", r);
            println!(
                "| {} | {:.1} | {:.1} | {:.1} | {:+.1} | {:.2} | {:.2} |",
                s.name,
                t.median,
                t.min,
                t.max,
                t.median - base,
                r.median,
                r.median / base_mpps
            );
        }
    }
    println!();
    println!("differences (median of per-round paired differences, [min, max]), ns/frame:");
    println!("| figure | test_run | live | target |");
    println!("|---|---:|---:|---|");
    let cell = |t: Option<Trials>| {
        t.map_or("-".to_string(), |t| {
            format!("{:+.1} [{:+.1}, {:+.1}]", t.median, t.min, t.max)
        })
    };
    for f in FIGURES {
        let a = paired(&tr, f);
        let b = paired(&live_ns, f);
        if a.is_none() && b.is_none() {
            continue;
        }
        if let Some(t) = a {
            row(&mut csv, "test_run_diff", f.name, "ns_per_frame", t);
        }
        if let Some(t) = b {
            row(&mut csv, "live_diff", f.name, "ns_per_frame", t);
        }
        let target = if f.per_stage {
            let worst = [a, b]
                .iter()
                .flatten()
                .map(|t| t.median)
                .fold(0.0, f64::max);
            if worst <= TARGET_NS {
                format!("<= {TARGET_NS} ns: met")
            } else {
                format!("<= {TARGET_NS} ns: MISSED")
            }
        } else {
            String::new()
        };
        println!("| {} | {} | {} | {target} |", f.name, cell(a), cell(b));
    }
    let csv_path = o.out.join("stages.csv");
    std::fs::write(&csv_path, csv)?;

    let mut bars = Vec::new();
    for (section, series, group) in [("test_run", &tr, 1), ("live", &live_ns, 2)] {
        let base = base_of(series).unwrap_or(f64::NAN);
        for s in series.iter() {
            let t = summary(&s.values);
            let alone = s.name == "drop alone";
            bars.push(ValueBar {
                label: format!("{section}: {}", s.name),
                value: t.median,
                group: if alone { 0 } else { group },
                text: if alone {
                    format!("{:.1} ns", t.median)
                } else {
                    format!("{:.1} ns ({:+.1} vs drop alone)", t.median, t.median - base)
                },
            });
        }
    }
    let png = o.out.join("stages.png");
    benchkit::plot_value_bars(
        &bars,
        0.0,
        "ns per frame",
        "Cost of chain stages: test_run and live (bpf_stats), medians",
        &png,
    )?;
    println!();
    println!(
        "wrote {} and {} ({:.0} s in all)",
        csv_path.display(),
        png.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
