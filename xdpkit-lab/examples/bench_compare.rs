//! `cargo xtask bench compare`: the cost of touching a frame and of each
//! verdict, seed 001's memory-access benchmark, on the same one-core lab
//! and trials harness as the firewall benchmark (`xdpkit_lab::benchkit`).
//!
//! xdpkit's generator sends 60-byte UDP frames from `gen`; in `dut`,
//! xdpkit's bench program (`xdpkit bench`) gives each one verdict after
//! touching it: drop with no touch (the baseline), read (the Ethernet
//! header), parse-ip (Ethernet and IPv4) and swap-macs (a write); pass (up
//! the stack); tx (back out); and drop in generic (skb) mode. The rate is
//! what the bench program counted, median of several trials.
//!
//! Writes target/bench/compare.csv and target/bench/compare.png.

use std::{fmt::Write as _, net::Ipv4Addr, path::PathBuf, time::Duration};

use xdpkit::{
    bench::{Bench, BenchAction, BenchRequest, Touch},
    trafficgen::udp_frame,
    Mode,
};
use xdpkit_lab::benchkit::{self, Bar, BenchResult, OneCoreLab};

const GEN_IF: &str = "xkbc-g";
const DUT_IF: &str = "xkbc-d";

struct Options {
    trial: Duration,
    trials: usize,
    out: PathBuf,
}

fn options() -> BenchResult<Options> {
    let mut o = Options {
        trial: Duration::from_secs(2),
        trials: 5,
        out: PathBuf::from("target/bench"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--trial-secs" => o.trial = Duration::from_secs_f64(value()?.parse()?),
            "--trials" => o.trials = value()?.parse::<usize>()?.max(1),
            "--out" => o.out = PathBuf::from(value()?),
            "-h" | "--help" => {
                println!("bench_compare [--trial-secs S (2)] [--trials N (5)] [--out DIR (target/bench)]");
                std::process::exit(0);
            }
            _ => return Err(format!("unknown argument {a}; see --help").into()),
        }
    }
    Ok(o)
}

fn contenders() -> Vec<(String, BenchRequest)> {
    let req = |action, touch, mode| BenchRequest {
        iface: DUT_IF.to_string(),
        action,
        touch,
        mode,
        to: None,
        cpu: None,
    };
    [
        (BenchAction::Drop, Touch::None, Mode::Native),
        (BenchAction::Drop, Touch::Read, Mode::Native),
        (BenchAction::Drop, Touch::ParseIp, Mode::Native),
        (BenchAction::Drop, Touch::SwapMacs, Mode::Native),
        (BenchAction::Tx, Touch::SwapMacs, Mode::Native),
        (BenchAction::Pass, Touch::None, Mode::Native),
        (BenchAction::Drop, Touch::None, Mode::Skb),
    ]
    .into_iter()
    .map(|(a, t, m)| {
        (
            format!("{}, touch {}, {}", a.name(), t.name(), m.name()),
            req(a, t, m),
        )
    })
    .collect()
}

fn main() -> BenchResult<()> {
    if !xdpkit_lab::lab::is_root() {
        return Err(
            "the benchmark builds network namespaces and attaches XDP: run it as root".into(),
        );
    }
    let o = options()?;
    let bench_lab = OneCoreLab::new("xkbc", GEN_IF, DUT_IF, "198.18.74.0/24")?;
    let lab = &bench_lab.lab;
    let frame = udp_frame(
        lab.mac("gen", GEN_IF)?,
        lab.mac("dut", DUT_IF)?,
        Ipv4Addr::new(198, 18, 74, 1),
        Ipv4Addr::new(198, 18, 74, 2),
        (1234, 9),
        60,
    );
    println!(
        "lab: {GEN_IF} (gen, CPU {}) -> {DUT_IF} (dut, threaded NAPI on CPU {}); 60-byte UDP; {} trials of {:.1} s each",
        benchkit::GEN_CPU,
        benchkit::NAPI_CPU,
        o.trials,
        o.trial.as_secs_f64()
    );
    let mut rows = Vec::new();
    for (name, req) in contenders() {
        let bench = lab.run_in("dut", || Bench::start(&req))??;
        bench_lab.pin_napi()?;
        let rate = |d: Duration| -> BenchResult<f64> {
            let before = bench.totals()?.total().packets;
            let sent = bench_lab.send_for(&frame, None, d)?;
            let got = bench.totals()?.total().packets - before;
            if got == 0 {
                return Err(format!("{name}: nothing counted (sent {})", sent.frames).into());
            }
            Ok(got as f64 / sent.elapsed.as_secs_f64() / 1e6)
        };
        rate(Duration::from_millis(500))?;
        let t = benchkit::trials(o.trials, || rate(o.trial))?;
        drop(bench);
        println!(
            "  {name:<40} {:>6.2} Mpps (min {:.2}, max {:.2})",
            t.median, t.min, t.max
        );
        rows.push((name, t));
        std::thread::sleep(Duration::from_secs(1));
    }
    let base = rows[0].1.median;
    std::fs::create_dir_all(&o.out)?;
    let mut csv = String::from("contender,mpps_median,mpps_min,mpps_max,ratio_to_drop_no_touch\n");
    println!();
    println!("| contender | Mpps (median) | x drop, no touch |");
    println!("|---|---:|---:|");
    for (name, t) in &rows {
        let _ = writeln!(
            csv,
            "\"{name}\",{:.3},{:.3},{:.3},{:.3}",
            t.median,
            t.min,
            t.max,
            t.median / base
        );
        println!("| {name} | {:.2} | {:.2} |", t.median, t.median / base);
    }
    let csv_path = o.out.join("compare.csv");
    std::fs::write(&csv_path, csv)?;
    let bars: Vec<Bar> = rows
        .iter()
        .enumerate()
        .map(|(i, (name, t))| Bar {
            label: name.clone(),
            mpps: t.median,
            group: usize::from(i > 0),
        })
        .collect();
    let png = o.out.join("compare.png");
    benchkit::plot_bars(
        &bars,
        base,
        "drop, no touch",
        "xdpkit bench on one core (veth, 60-byte UDP), median of trials",
        &png,
    )?;
    println!();
    println!("wrote {} and {}", csv_path.display(), png.display());
    Ok(())
}
