//! Project tasks: `cargo xtask <task>`. Each task first runs the bootstrap,
//! so a fresh Debian machine needs nothing but rustup's cargo.

mod bootstrap;
mod util;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// xdpkit's project tasks. Run as root: the bootstrap installs Debian
/// packages, and the tests and the demo create network namespaces and attach
/// XDP programs.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what is missing: Debian's rustc-web and core for bpfel (the
    /// eBPF compiler), LLVM 22 and bpf-linker, iproute2, ethtool, bpftool,
    /// xdp-tools, nftables, tcpdump; mount bpffs. Idempotent: seconds when
    /// everything is there.
    Bootstrap,
    /// Bootstrap, then build everything (the eBPF object is built and
    /// embedded by xdpkit/build.rs).
    Build {
        /// Optimised build.
        #[arg(long)]
        release: bool,
    },
    /// Bootstrap, then every check CI runs: rustfmt, clippy -D warnings and
    /// all tests (including real packets through network namespaces, which
    /// need root; under CI=true nothing may skip).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Bootstrap, then the demo: a DDoS on a namespace lab (client,
    /// attacker, router, server); the firewall on the server drops a flood
    /// from a denied range and rate-limits a scraper while the client keeps
    /// pinging and using UDP and TCP echo; a table per second, a summary,
    /// everything removed at the end. `cargo xtask demo fleet`: three hosts
    /// following one configuration through etcd instead.
    Demo {
        #[command(subcommand)]
        demo: Option<Demo>,
    },
    /// Bootstrap, then a benchmark, side by side in one run on a namespace
    /// lab (release build). Writes CSV and PNG to target/bench/.
    Bench {
        #[command(subcommand)]
        bench: Bench,
    },
}

#[derive(Debug, Subcommand)]
enum Demo {
    /// Three hosts (namespaces), etcd and an `xdpkit agent` per host: one
    /// `xdpkit fleet push`, a table of the hosts converging (revision,
    /// layer, outcome, lag), then an attack from the source it denies sent
    /// to all three, blocked everywhere (drop counters per host); the lab
    /// removed at the end. Under a minute.
    Fleet,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// The firewall with a million prefixes against ../shared/PERF.md's
    /// anchors, one run: bare drop (drop.c), parse + hash lookup
    /// (drop_hash.c), the firewall and nftables with the same prefixes,
    /// each on four floods (listed /32 hosts, sources inside listed /24s,
    /// IPv6 inside a listed /48, unlisted sources), rounds interleaved.
    /// Mpps (median, spread), ratios to bare drop and nftables, live ns
    /// from bpf_stats and test_run ns. About 6 minutes.
    Firewall {
        /// Extra arguments for the benchmark (`--rounds N`, `--trial-secs S`,
        /// `--prefixes N`, `--repeat R`, `--out DIR`, `--anchors DIR`;
        /// `--fixed-path`: only 0 rules and default deny, the firewall
        /// against drop.c and drop_hash.c, live ns and the ratio, 2 minutes).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// AF_XDP in copy mode against the stack (issue 13): receive (a socket
    /// fed by a firewall `to-userspace` rule vs a `recvmmsg` UDP socket) and
    /// echo (swap and send back out of the socket vs a UDP echo server),
    /// rounds interleaved on the one-core lab; Mpps medians and the ratios.
    /// About a minute.
    Xsk {
        /// Extra arguments (`--rounds N`, `--trial-secs S`, `--out DIR`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// What touching a frame and each verdict cost (seed 001's
    /// memory-access benchmark): xdpkit's bench program as drop with no
    /// touch, read, parse-ip and swap-macs; pass; tx; drop in skb mode.
    /// Mpps on one core and the ratio to drop-no-touch, with the same lab
    /// and trials harness as `firewall`. About a minute.
    Compare {
        /// Extra arguments (`--trials N`, `--trial-secs S`, `--out DIR`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The balancer against Katran's and against nftables DNAT (issue 11),
    /// one VIP (TCP) with 100 reals on a 65,537-slot ring. test_run ns per
    /// frame, one fresh frame per run, for an established flow and new flows
    /// (SYN, and no SYN): bare drop (drop.c), xdpkit's balancer and, with
    /// `--katran-obj PATH`, Katran's balancer.bpf.c as you built it (its
    /// maps filled for the same VIP; without it the Katran rows say "not
    /// given"). Then Mpps on one core, one-armed: drop.c at the receiver
    /// (anchor), xdpkit's balancer (XDP_TX, IPIP) and nftables DNAT (jhash
    /// map, conntrack) forwarding back out, counted where the frames
    /// arrive. Rounds interleaved, medians; about 2 minutes.
    Lb {
        /// Extra arguments (`--katran-obj PATH`, `--rounds N`, `--runs N`,
        /// `--trial-secs S`, `--reals N`, `--only test-run|lab`, `--out DIR`,
        /// `--anchors DIR`, `--scenarios established,syn,no-syn`;
        /// `--realtime`: the measured core's NAPI thread SCHED_FIFO, so
        /// other work on a shared machine does not take it).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// What each extra stage of a chain costs (issue 9: at most 10 ns per
    /// extra stage), against the program attached alone: `drop` alone and
    /// the chains [drop], [count,drop], [firewall,drop],
    /// [firewall,count,drop], in test_run (ns per frame) and live on the
    /// one-core lab (ns per frame from bpf_stats, Mpps); root overhead,
    /// cost per extra `count` stage, firewall stage cost. About 2 minutes.
    Stages {
        /// Extra arguments (`--trials N`, `--trial-secs S`, `--repeat R`,
        /// `--only test-run|live`, `--out DIR`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// IPv4 forwarding: xdpkit's route stage against the kernel's own
    /// forwarding (ip_forward, no netfilter) on a generator -> router ->
    /// sink lab, the router's ingress on one core; rounds interleaved.
    /// Forwarded Mpps (median, spread), the ratio per round (target 3x)
    /// and the live ns per frame from bpf_stats. About a minute.
    Route {
        /// Extra arguments (`--rounds N`, `--trial-secs S`, `--out DIR`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The stack's UDP throughput on a veth (one RX queue) with the `cpu`
    /// stage (issue 13): datagrams received by SO_REUSEPORT sockets per
    /// second with `pass` (the stack on the RX CPU), `cpu --cpus 1` and
    /// `cpu --cpus 0,1`, at a fixed offered rate from 1,022 flows; rounds
    /// interleaved, the 2-CPU / 1-CPU ratio paired per round. About a
    /// minute.
    Cpu {
        /// Extra arguments (`--rounds N`, `--trial-secs S`, `--pps OFFERED`,
        /// `--out DIR`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The fleet (issue 12) on three hosts following etcd, each with an
    /// `xdpkit agent`: (a) a one-rule change, timed from just before
    /// `xdpkit fleet push` until all three statuses show it applied and a
    /// frame from the newly denied source is dropped on each host (median,
    /// min, max of rounds; target 1 s); (b) a 1,000,000-prefix blocklist
    /// pushed and applied by all three (target 15 s), with the layer's
    /// compressed size and parts. About a minute.
    Fleet {
        /// Extra arguments (`--rounds N` (10), `--prefixes N` (1000000),
        /// `--out DIR`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Bootstrap => bootstrap::run(),
        Task::Build { release } => build(release),
        Task::Test { args } => test(&args),
        Task::Demo { demo: None } => demo("demo", false),
        Task::Demo {
            demo: Some(Demo::Fleet),
        } => demo("demo_fleet", true),
        Task::Bench {
            bench: Bench::Firewall { args },
        } => bench("bench_firewall", &args),
        Task::Bench {
            bench: Bench::Compare { args },
        } => bench("bench_compare", &args),
        Task::Bench {
            bench: Bench::Xsk { args },
        } => bench("bench_xsk", &args),
        Task::Bench {
            bench: Bench::Stages { args },
        } => bench("bench_stages", &args),
        Task::Bench {
            bench: Bench::Lb { args },
        } => bench("bench_lb", &args),
        Task::Bench {
            bench: Bench::Route { args },
        } => bench("bench_route", &args),
        Task::Bench {
            bench: Bench::Cpu { args },
        } => bench("bench_cpu", &args),
        Task::Bench {
            bench: Bench::Fleet { args },
        } => bench("bench_fleet", &args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn build(release: bool) -> anyhow::Result<()> {
    bootstrap::run()?;
    let mut cmd = util::cargo(["build"]);
    if release {
        cmd.arg("--release");
    }
    util::run(&mut cmd)
}

fn test(extra: &[String]) -> anyhow::Result<()> {
    let mut steps = util::Steps::default();
    steps.time("bootstrap", bootstrap::run)?;
    let ci = std::env::var("CI").as_deref() == Ok("true");
    if !util::is_root() {
        anyhow::ensure!(
            !ci,
            "CI=true but not root: packet tests would skip; run as root"
        );
        eprintln!("xtask: warning: not root, so tests that attach XDP or build namespaces will say 'skipped: needs root'");
    }
    steps.time("rustfmt", || {
        util::run(&mut util::cargo(["fmt", "--all", "--", "--check"]))
    })?;
    steps.time("clippy", || {
        util::run(&mut util::cargo([
            "clippy",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))
    })?;
    let mut totals = util::TestTotals::default();
    let tests = steps.time("tests", || {
        let mut cmd = util::cargo(["test", "--no-fail-fast"]);
        if !extra.is_empty() {
            cmd.arg("--").args(extra);
        }
        util::run_counting_tests(&mut cmd, &mut totals)
    });
    steps.report();
    // One closing line over every test binary, for people and CI alike.
    println!("xdpkit: {} passed, {} failed", totals.passed, totals.failed);
    tests
}

/// Runs one of xdpkit-lab's benchmark examples (release build).
fn bench(example: &str, args: &[String]) -> anyhow::Result<()> {
    bootstrap::run()?;
    anyhow::ensure!(
        util::is_root(),
        "benchmarks build network namespaces and attach XDP programs: run `sudo -E cargo xtask bench ...`"
    );
    let mut cmd = util::cargo([
        "run",
        "--quiet",
        "--release",
        "-p",
        "xdpkit-lab",
        "--example",
        example,
        "--",
    ]);
    cmd.args(args);
    if example == "bench_fleet" {
        // The fleet runs the CLI (agents, pushes) as an operator would.
        cmd.env("XDPKIT_BIN", build_cli(true)?);
    }
    util::run(&mut cmd)
}

/// Builds the `xdpkit` binary; returns its path.
fn build_cli(release: bool) -> anyhow::Result<std::path::PathBuf> {
    let mut cmd = util::cargo(["build", "--quiet", "-p", "xdpkit-cli"]);
    if release {
        cmd.arg("--release");
    }
    util::run(&mut cmd)?;
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        std::path::PathBuf::from,
    );
    Ok(target
        .join(if release { "release" } else { "debug" })
        .join("xdpkit"))
}

/// Runs one of xdpkit-lab's demo examples (`fleet`: with the `xdpkit`
/// binary it runs on each host).
fn demo(example: &str, fleet: bool) -> anyhow::Result<()> {
    bootstrap::run()?;
    anyhow::ensure!(
        util::is_root(),
        "the demo builds network namespaces and attaches XDP programs: run `sudo -E cargo xtask demo`"
    );
    let mut cmd = util::cargo(["run", "--quiet", "-p", "xdpkit-lab", "--example", example]);
    if fleet {
        cmd.env("XDPKIT_BIN", build_cli(false)?);
    }
    util::run(&mut cmd)
}
