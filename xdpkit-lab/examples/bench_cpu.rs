//! `cargo xtask bench cpu`: the stack's UDP throughput on a veth (one RX
//! queue) with and without the `cpu` stage (issue 13 point 4).
//!
//! A veth has one RX queue, so without steering the whole stack (IP, UDP,
//! the socket queues) runs on the one CPU that polls it. The `cpu` stage
//! hashes each flow there and hands the frame to another CPU through a
//! CPUMAP; the stack then runs on every CPU listed.
//!
//! Lab: `gen` -> `dut` veth (GRO on, threaded NAPI pinned to CPU 1 and
//! real-time there unless `--shared-napi`, as ../shared/PERF.md's one-core
//! lab: the baseline's stack then has CPU 1 to itself), UDP frames from
//! 1,022 random sources (flows) to one port, offered at a fixed rate
//! (`--pps`, default 400,000) by the live-frames generator on CPU 0, which
//! sleeps between bursts and leaves the rest of CPU 0 to the others. On a
//! 2-CPU machine the generator, the sockets' threads and the target CPUs
//! share the two cores, so the 2-CPU figure is a floor. In `dut`, one
//! SO_REUSEPORT socket per CPU, each read by its own thread with
//! `recvmmsg` (unpinned: the scheduler places them). The figure is the
//! datagrams the sockets' threads received per second: the stack's
//! throughput up to the application.
//!
//! Contenders, interleaved in rounds on the same lab:
//! - `pass`: every frame to the stack on the RX CPU (CPU 1): the baseline.
//! - `cpu --cpus 1`: through the CPUMAP to the same CPU (what the
//!   redirect costs).
//! - `cpu --cpus 0,1`: spread over both CPUs.
//!
//! Writes target/bench/cpu.csv and target/bench/cpu.png.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use ipnet::{IpNet, Ipv4Net};
use xdpkit::{
    trafficgen::{udp_frame, Generator, Limit},
    AttachRequest, Mode,
};
use xdpkit_lab::benchkit::{self, Bar, BenchResult, OneCoreLab, Trials};

const GEN_IF: &str = "xkbp-g";
const DUT_IF: &str = "xkbp-d";
const SUBNET: &str = "198.18.152.0/24";
/// The random sources: one flow each.
const SOURCES: &str = "198.18.156.0/22";
const PORT: u16 = 9999;
const WARM_UP: Duration = Duration::from_millis(500);
/// Socket receive buffer: frames built from XDP frames take a page each.
const RCVBUF: libc::c_int = 32 << 20;
const BATCH: usize = 64;

struct Options {
    trial: Duration,
    rounds: usize,
    pps: u64,
    realtime: bool,
    out: PathBuf,
}

fn options() -> BenchResult<Options> {
    let mut o = Options {
        trial: Duration::from_secs(2),
        rounds: 5,
        pps: 400_000,
        realtime: true,
        out: benchkit::workspace()?.join("target/bench"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--trial-secs" => o.trial = Duration::from_secs_f64(value()?.parse()?),
            "--rounds" => o.rounds = value()?.parse::<usize>()?.max(1),
            "--pps" => o.pps = value()?.parse::<u64>()?,
            "--shared-napi" => o.realtime = false,
            "--out" => o.out = PathBuf::from(value()?),
            "-h" | "--help" => {
                println!(
                    "bench_cpu [--rounds N (5)] [--trial-secs S (2)] [--pps OFFERED (400000; 0: full speed)] \
                     [--shared-napi] \
                     [--out DIR (target/bench)]"
                );
                std::process::exit(0);
            }
            _ => return Err(format!("unknown argument {a}; see --help").into()),
        }
    }
    Ok(o)
}

/// A contender: its name and the chain attached to `dut`.
struct Contender {
    name: &'static str,
    stage: &'static str,
    cpus: Option<&'static [u32]>,
}

const CONTENDERS: [Contender; 3] = [
    Contender {
        name: "1 CPU: pass (stack on the RX CPU)",
        stage: "pass",
        cpus: None,
    },
    Contender {
        name: "1 CPU: cpu stage, --cpus 1",
        stage: "cpu",
        cpus: Some(&[1]),
    },
    Contender {
        name: "2 CPUs: cpu stage, --cpus 0,1",
        stage: "cpu",
        cpus: Some(&[0, 1]),
    },
];

/// One SO_REUSEPORT socket per CPU, each drained by a thread with
/// `recvmmsg`; counts what the threads received.
struct Sinks {
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Sinks {
    fn new(lab: &OneCoreLab, addr: SocketAddr, n: usize) -> BenchResult<Sinks> {
        let sockets = lab.lab.run_in("dut", move || {
            (0..n)
                .map(|_| reuseport_socket(addr))
                .collect::<std::io::Result<Vec<UdpSocket>>>()
        })??;
        let received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let threads = sockets
            .into_iter()
            .map(|socket| {
                let (received, stop) = (received.clone(), stop.clone());
                std::thread::spawn(move || drain(&socket, &received, &stop))
            })
            .collect();
        Ok(Sinks {
            received,
            stop,
            threads,
        })
    }

    fn count(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

impl Drop for Sinks {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn reuseport_socket(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    // SAFETY: plain socket calls on a descriptor this function owns; each
    // setsockopt reads one c_int.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let socket = <UdpSocket as std::os::fd::FromRawFd>::from_raw_fd(fd);
        let set = |opt: libc::c_int, v: libc::c_int| {
            let rc = libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&raw const v).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            );
            if rc == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        };
        set(libc::SO_REUSEPORT, 1)?;
        set(libc::SO_RCVBUFFORCE, RCVBUF)?;
        let SocketAddr::V4(v4) = addr else {
            return Err(std::io::Error::other("IPv4 only"));
        };
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*v4.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        if libc::bind(
            fd,
            (&raw const sin).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        Ok(socket)
    }
}

/// Receives in batches of [`BATCH`] until `stop`.
fn drain(socket: &UdpSocket, received: &AtomicU64, stop: &AtomicBool) {
    let mut bufs = vec![[0u8; 256]; BATCH];
    let mut iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    // SAFETY: all-zero mmsghdrs are valid; each then points at its iovec.
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    for (m, iov) in msgs.iter_mut().zip(iovs.iter_mut()) {
        m.msg_hdr.msg_iov = iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: `msgs` holds BATCH headers whose buffers live as long as it.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n > 0 {
            received.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

fn main() -> BenchResult<()> {
    if !xdpkit_lab::lab::is_root() {
        return Err(
            "the benchmark builds network namespaces and attaches XDP: run it as root".into(),
        );
    }
    let o = options()?;
    let cpus = aya::util::online_cpus().map_err(|(what, e)| format!("{what}: {e}"))?;
    if !cpus.contains(&0) || !cpus.contains(&1) {
        return Err(format!("the benchmark needs CPUs 0 and 1 online, not {cpus:?}").into());
    }
    let bench_lab = OneCoreLab::new("xkbp", GEN_IF, DUT_IF, SUBNET)?;
    let lab = &bench_lab.lab;
    // The random sources need a route back (the reverse-path check).
    benchkit::run(lab.command("dut", "ip").args([
        "route",
        "add",
        "198.18.156.0/22",
        "dev",
        DUT_IF,
    ]))?;
    let dut_addr = Ipv4Addr::new(198, 18, 152, 2);
    let frame = udp_frame(
        lab.mac("gen", GEN_IF)?,
        lab.mac("dut", DUT_IF)?,
        Ipv4Addr::new(198, 18, 152, 1),
        dut_addr,
        (40000, PORT),
        60,
    );
    let sources: Ipv4Net = SOURCES.parse()?;
    let sinks = Sinks::new(&bench_lab, SocketAddr::from((dut_addr, PORT)), cpus.len())?;
    println!(
        "lab: {GEN_IF} (gen, CPU {}) -> {DUT_IF} (dut, threaded NAPI on CPU {}); 60-byte UDP \
         from {} sources offered at {} pps; {} sockets (SO_REUSEPORT, recvmmsg); \
         {} rounds of {:.1} s per contender; NAPI {}",
        benchkit::GEN_CPU,
        benchkit::NAPI_CPU,
        sources.hosts().count(),
        o.pps,
        cpus.len(),
        o.rounds,
        o.trial.as_secs_f64(),
        if o.realtime { "real-time" } else { "shared" }
    );
    // The dut's UDP counters (InDatagrams, NoPorts, InErrors, RcvbufErrors).
    let udp = || -> BenchResult<[u64; 4]> {
        let text = benchkit::output(lab.command("dut", "cat").arg("/proc/net/snmp"))?;
        let mut lines = text.lines().filter(|l| l.starts_with("Udp:"));
        let (names, values) = (
            lines.next().ok_or("no Udp:")?,
            lines.next().ok_or("no Udp:")?,
        );
        let names: Vec<&str> = names.split_whitespace().collect();
        let values: Vec<&str> = values.split_whitespace().collect();
        let get = |n: &str| -> u64 {
            names
                .iter()
                .position(|x| *x == n)
                .and_then(|i| values.get(i)?.parse().ok())
                .unwrap_or(0)
        };
        Ok([
            get("InDatagrams"),
            get("NoPorts"),
            get("InErrors"),
            get("RcvbufErrors"),
        ])
    };
    let attach = |c: &Contender| -> BenchResult<()> {
        let mut req = AttachRequest::from_list(DUT_IF, c.stage, Mode::Native, None, None, false)?;
        req.cpu_settings(c.cpus, None, None)?;
        lab.run_in("dut", || xdpkit::attach(&req))??;
        bench_lab.pin_napi()?;
        if o.realtime {
            bench_lab.realtime_napi()?;
        }
        Ok(())
    };
    // Received datagrams per second (in Mpps) while `d` of traffic is offered.
    let rate = |d: Duration| -> BenchResult<(f64, f64)> {
        let before = sinks.count();
        let gen_if = GEN_IF.to_string();
        let (frame, pps) = (frame.clone(), o.pps);
        let sent = lab.run_in("gen", move || {
            let _ = benchkit::set_affinity(0, benchkit::GEN_CPU);
            Generator::with_sources(&gen_if, frame, Some(IpNet::V4(sources)))?
                .send_paced(Limit::Duration(d), Some(pps).filter(|&p| p > 0))
        })??;
        // Frames still queued reach the sockets shortly after.
        std::thread::sleep(Duration::from_millis(100));
        let got = sinks.count() - before;
        // Over the sending time: nothing arrives while the generator loads.
        let secs = sent.elapsed.as_secs_f64();
        Ok((
            got as f64 / secs / 1e6,
            sent.frames as f64 / sent.elapsed.as_secs_f64() / 1e6,
        ))
    };
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); CONTENDERS.len()];
    let mut offered: Vec<f64> = Vec::new();
    for round in 0..o.rounds {
        // Rotate the order every round: no contender always runs first.
        for k in 0..CONTENDERS.len() {
            let i = (k + round) % CONTENDERS.len();
            let c = &CONTENDERS[i];
            attach(c)?;
            rate(WARM_UP)?;
            let u0 = udp()?;
            let (mpps, sent) = rate(o.trial)?;
            let u1 = udp()?;
            let d: Vec<u64> = u1.iter().zip(&u0).map(|(a, b)| a - b).collect();
            if mpps == 0.0 {
                return Err(format!("{}: no datagram reached the sockets", c.name).into());
            }
            results[i].push(mpps);
            offered.push(sent);
            println!(
                "  round {round}: {:<34} {mpps:>6.3} Mpps received (offered {sent:.3}; stack: in {} noport {} err {} rcvbuf {})",
                c.name, d[0], d[1], d[2], d[3]
            );
        }
    }
    let rows: Vec<(&str, Trials)> = CONTENDERS
        .iter()
        .zip(&results)
        .map(|(c, r)| (c.name, summary(r)))
        .collect();
    let offered = summary(&offered);
    let base = rows[0].1.median;
    std::fs::create_dir_all(&o.out)?;
    let mut csv = String::from(
        "contender,received_mpps_median,received_mpps_min,received_mpps_max,ratio_to_pass,offered_mpps\n",
    );
    println!();
    println!("offered: {:.3} Mpps (median of trials)", offered.median);
    println!("| contender | received Mpps (median) | min | max | x pass |");
    println!("|---|---:|---:|---:|---:|");
    for (name, t) in &rows {
        let _ = writeln!(
            csv,
            "\"{name}\",{:.4},{:.4},{:.4},{:.3},{:.4}",
            t.median,
            t.min,
            t.max,
            t.median / base,
            offered.median
        );
        println!(
            "| {name} | {:.3} | {:.3} | {:.3} | {:.2} |",
            t.median,
            t.min,
            t.max,
            t.median / base
        );
    }
    // The ratio paired per round (a slow round slows both alike).
    let paired: Vec<f64> = results[2]
        .iter()
        .zip(&results[0])
        .map(|(two, one)| two / one)
        .collect();
    let paired = summary(&paired);
    println!(
        "2 CPUs / 1 CPU, paired per round: median {:.2}x (min {:.2}, max {:.2})",
        paired.median, paired.min, paired.max
    );
    let csv_path = o.out.join("cpu.csv");
    std::fs::write(&csv_path, csv)?;
    let bars: Vec<Bar> = rows
        .iter()
        .enumerate()
        .map(|(i, (name, t))| Bar {
            label: (*name).to_string(),
            mpps: t.median,
            group: i,
        })
        .collect();
    let png = o.out.join("cpu.png");
    benchkit::plot_bars(
        &bars,
        base,
        "pass",
        "UDP datagrams received by sockets on a veth (one RX queue), median of rounds",
        &png,
    )?;
    println!();
    println!("wrote {} and {}", csv_path.display(), png.display());
    drop(sinks);
    Ok(())
}

/// Median, lowest and highest of `values` (not empty).
fn summary(values: &[f64]) -> Trials {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    Trials {
        median: v[v.len() / 2],
        min: v[0],
        max: v[v.len() - 1],
    }
}
