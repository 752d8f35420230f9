//! `cargo xtask bench xsk` (issue 13 point 7): AF_XDP in copy mode (veth
//! has no zero-copy) against the stack, on the one-core lab of the other
//! benchmarks (`xdpkit_lab::benchkit`), contenders interleaved in rounds.
//!
//! - **rx, AF_XDP**: the firewall with one rule `to-userspace proto udp
//!   dport 9` on the receiving veth; an `xdpkit::xsk` socket on its queue
//!   counts frames in a thread on the receive core. Also with the `xsk`
//!   stage (every frame to the socket) instead of the firewall.
//! - **rx, recvmmsg**: no XDP program; a UDP socket bound to port 9 counts
//!   datagrams with `recvmmsg` (batches of 64), the same thread and core.
//! - **echo, AF_XDP**: as rx, and each frame goes back out of the socket
//!   with MACs, addresses and ports swapped (no copy).
//! - **echo, stack**: a UDP echo server (`recvmmsg`, `sendmmsg` back to
//!   each sender).
//!
//! xdpkit's generator sends 60-byte UDP frames from `gen` (CPU 0); the
//! receiving veth's NAPI thread and the contender's thread share CPU 1.
//! Rx rates are what the receiver counted, echo rates what came back to
//! `gen` (a counting drop there). Median of the rounds, min and max.
//!
//! Writes target/bench/xsk.csv and target/bench/xsk.png.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
    path::PathBuf,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::Duration,
};

use xdpkit::{
    attach::AttachRequest,
    bench::{Bench, BenchAction, BenchRequest, Touch},
    firewall::live::LiveFirewall,
    trafficgen::udp_frame,
    xsk::{Mode as XskMode, Umem, UmemConfig, XskSocket},
    Mode,
};
use xdpkit_lab::benchkit::{self, BenchResult, OneCoreLab, ValueBar, NAPI_CPU};

const GEN_IF: &str = "xkbx-g";
const DUT_IF: &str = "xkbx-d";
const GEN_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 87, 1);
const DUT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 87, 2);
const PORT: u16 = 9;
/// Frames per receive (and send) call, for both sides.
const BATCH: usize = 64;

struct Options {
    trial: Duration,
    rounds: usize,
    out: PathBuf,
}

fn options() -> BenchResult<Options> {
    let mut o = Options {
        trial: Duration::from_secs(2),
        rounds: 5,
        out: benchkit::workspace()?.join("target/bench"),
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
                    "bench_xsk [--trial-secs S (2)] [--rounds N (5)] [--out DIR (target/bench)]"
                );
                std::process::exit(0);
            }
            _ => return Err(format!("unknown argument {a}; see --help").into()),
        }
    }
    Ok(o)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Contender {
    XskStageRx,
    XskRx,
    RecvMmsg,
    XskEcho,
    StackEcho,
}

impl Contender {
    const ALL: [Contender; 5] = [
        Contender::XskStageRx,
        Contender::XskRx,
        Contender::RecvMmsg,
        Contender::XskEcho,
        Contender::StackEcho,
    ];

    fn name(self) -> &'static str {
        match self {
            Contender::XskStageRx => "rx: AF_XDP copy, xsk stage",
            Contender::XskRx => "rx: AF_XDP copy, fw to-userspace",
            Contender::RecvMmsg => "rx: UDP socket, recvmmsg",
            Contender::XskEcho => "echo: AF_XDP copy, fw to-userspace",
            Contender::StackEcho => "echo: UDP recvmmsg + sendmmsg",
        }
    }

    fn xsk(self) -> bool {
        matches!(
            self,
            Contender::XskStageRx | Contender::XskRx | Contender::XskEcho
        )
    }

    fn echo(self) -> bool {
        matches!(self, Contender::XskEcho | Contender::StackEcho)
    }

    /// The contender it is measured against.
    fn anchor(self) -> Contender {
        if self.echo() {
            Contender::StackEcho
        } else {
            Contender::RecvMmsg
        }
    }
}

/// Swaps the frame's MACs, IPv4 addresses and UDP ports: the reply, with
/// both checksums still right.
fn swap(f: &mut [u8]) {
    if f.len() < 38 {
        return;
    }
    for (a, b, n) in [(0, 6, 6), (26, 30, 4), (34, 36, 2)] {
        for i in 0..n {
            f.swap(a + i, b + i);
        }
    }
}

/// How long a receiver that found less than a full batch sleeps, the same
/// for both kinds: it shares the core with the veth's NAPI thread, which
/// then fills the rings (or the socket buffer) undisturbed instead of
/// waking the receiver for every few frames.
const IDLE: Duration = Duration::from_micros(200);

/// Sleeps [`IDLE`], then lets the socket send what it queued (in copy
/// mode the kernel sends when asked).
fn idle(socket: &mut XskSocket) {
    std::thread::sleep(IDLE);
    let _ = socket.wait(Duration::ZERO);
}

/// Receives on the AF_XDP socket until `stop`, counting frames in `count`
/// (and sending each back when `echo`).
fn xsk_loop(socket: &mut XskSocket, echo: bool, stop: &AtomicBool, count: &AtomicU64) {
    while !stop.load(Ordering::Relaxed) {
        let n = if echo {
            socket.rx_tx_batch(BATCH as u32, |f| {
                swap(f);
                Some(f.len())
            })
        } else {
            socket.rx_batch(BATCH as u32, |_| {})
        };
        count.fetch_add(n as u64, Ordering::Relaxed);
        if n < BATCH {
            idle(socket);
        }
    }
}

/// Receives on the UDP socket with `recvmmsg` until `stop`, counting
/// datagrams in `count` (and sending each back with `sendmmsg` when `echo`).
fn udp_loop(socket: &UdpSocket, echo: bool, stop: &AtomicBool, count: &AtomicU64) {
    // SAFETY (all zeroed values): plain C structs for which zero is valid.
    let mut bufs = vec![[0u8; 2048]; BATCH];
    let mut iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    let mut addrs: Vec<libc::sockaddr_in> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    let fd = socket.as_raw_fd();
    while !stop.load(Ordering::Relaxed) {
        for (i, m) in msgs.iter_mut().enumerate() {
            iovs[i].iov_len = bufs[i].len();
            m.msg_hdr.msg_iov = &mut iovs[i];
            m.msg_hdr.msg_iovlen = 1;
            m.msg_hdr.msg_name = (&mut addrs[i] as *mut libc::sockaddr_in).cast();
            m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
        }
        // SAFETY: BATCH headers pointing at live buffers and addresses.
        // The socket's read timeout bounds the wait.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                msgs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n <= 0 {
            continue;
        }
        let n = n as usize;
        count.fetch_add(n as u64, Ordering::Relaxed);
        if n < BATCH {
            std::thread::sleep(IDLE);
        }
        if echo {
            for i in 0..n {
                iovs[i].iov_len = msgs[i].msg_len as usize;
            }
            // SAFETY: as above; each reply goes to the address it came from.
            // What the socket cannot take now is dropped, as a server would.
            unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), n as u32, libc::MSG_DONTWAIT) };
        }
    }
}

/// A UDP socket on the DUT's port with a 100 ms read timeout and a large
/// receive buffer (so the stack's figure is not a buffer's).
fn udp_socket() -> BenchResult<UdpSocket> {
    let socket = UdpSocket::bind(SocketAddr::from((DUT_IP, PORT)))?;
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    let size: libc::c_int = 8 << 20;
    // SAFETY: a valid int option of a live socket (root: the FORCE variant).
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        )
    };
    Ok(socket)
}

/// The XDP side of an AF_XDP contender: the `xsk` stage (every frame to
/// the socket), or the firewall with one `to-userspace` rule.
fn attach_xdp(c: Contender) -> BenchResult<()> {
    let stage = if c == Contender::XskStageRx {
        "xsk"
    } else {
        "firewall"
    };
    xdpkit::attach(&AttachRequest::from_list(
        DUT_IF,
        stage,
        Mode::Native,
        None,
        None,
        false,
    )?)?;
    if stage == "firewall" {
        LiveFirewall::open(DUT_IF)?.add(format!("to-userspace proto udp dport {PORT}").parse()?)?;
    }
    Ok(())
}

/// One measurement of `c`: set up in `dut`, a short warm-up, `trial` of
/// traffic, torn down. Returns Mpps.
fn measure(
    bench_lab: &OneCoreLab,
    returned: &Bench,
    frame: &[u8],
    c: Contender,
    trial: Duration,
) -> BenchResult<f64> {
    let lab = &bench_lab.lab;
    // Set up in `dut`; the sockets then work from any thread.
    let (mut socket, udp) = lab.run_in("dut", || -> BenchResult<_> {
        if c.xsk() {
            attach_xdp(c)?;
            // Rings about as deep as the UDP socket's 8 MB buffer (some
            // 8,000 small datagrams), so neither side wins on buffering
            // while the two threads share the core.
            let umem = Umem::new(UmemConfig {
                frame_size: 2048,
                frame_count: 16_384,
                ring_size: 8192,
                headroom: 0,
            })?;
            Ok((Some(XskSocket::bind(DUT_IF, 0, umem, XskMode::Copy)?), None))
        } else {
            Ok((None, Some(udp_socket()?)))
        }
    })??;
    let stop = AtomicBool::new(false);
    let count = AtomicU64::new(0);
    let rate = std::thread::scope(|s| -> BenchResult<f64> {
        let worker = s.spawn(|| {
            // Best effort: unpinned only makes figures noisier.
            let _ = benchkit::set_affinity(0, NAPI_CPU);
            match (&mut socket, &udp) {
                (Some(x), _) => xsk_loop(x, c.echo(), &stop, &count),
                (None, Some(u)) => udp_loop(u, c.echo(), &stop, &count),
                (None, None) => {}
            }
        });
        let run = || -> BenchResult<f64> {
            bench_lab.pin_napi()?;
            bench_lab.pin_return_napi()?;
            bench_lab.send_for(frame, None, Duration::from_millis(300))?;
            let got0 = count.load(Ordering::Relaxed);
            let back0 = returned.totals()?.total().packets;
            let sent = bench_lab.send_for(frame, None, trial)?;
            // Let the last frames through before counting.
            std::thread::sleep(Duration::from_millis(100));
            let got = count.load(Ordering::Relaxed) - got0;
            let back = returned.totals()?.total().packets - back0;
            let n = if c.echo() { back } else { got };
            if n == 0 {
                return Err(format!("{}: nothing counted (sent {})", c.name(), sent.frames).into());
            }
            Ok(n as f64 / sent.elapsed.as_secs_f64() / 1e6)
        };
        let rate = run();
        stop.store(true, Ordering::Relaxed);
        worker.join().map_err(|_| "receiver thread panicked")?;
        rate
    });
    if let Some(x) = &socket {
        let st = x.stats();
        println!(
            "    {}: socket received {}, kernel dropped {} (fill ring empty {}, rx ring full {}), sent {}, tx full {}",
            c.name(),
            st.rx_frames,
            st.kernel_rx_dropped,
            st.kernel_fill_ring_empty,
            st.kernel_rx_ring_full,
            st.tx_completed,
            st.tx_full
        );
    }
    drop(socket);
    if c.xsk() {
        lab.run_in("dut", || xdpkit::detach(DUT_IF))??;
    }
    // Map freeing and NAPI settling run on the measured core.
    std::thread::sleep(Duration::from_secs(1));
    rate
}

fn main() -> BenchResult<()> {
    if !xdpkit_lab::lab::is_root() {
        return Err(
            "the benchmark builds network namespaces and attaches XDP: run it as root".into(),
        );
    }
    let o = options()?;
    let bench_lab = OneCoreLab::new("xkbx", GEN_IF, DUT_IF, "198.18.87.0/24")?;
    let lab = &bench_lab.lab;
    let (gen_mac, dut_mac) = (lab.mac("gen", GEN_IF)?, lab.mac("dut", DUT_IF)?);
    let frame = udp_frame(gen_mac, dut_mac, GEN_IP, DUT_IP, (1234, PORT), 60);
    // Echoes come back to a counting drop in `gen` (which also drops ARP:
    // the DUT knows the generator's MAC beforehand).
    let returned = lab.run_in("gen", || {
        Bench::start(&BenchRequest {
            iface: GEN_IF.to_string(),
            action: BenchAction::Drop,
            touch: Touch::None,
            mode: Mode::Native,
            to: None,
            cpu: None,
        })
    })??;
    bench_lab.receive_back()?;
    lab.static_neighbor("dut", DUT_IF, GEN_IP.into(), gen_mac)?;
    println!(
        "lab: {GEN_IF} (gen, CPU {}) -> {DUT_IF} (dut: threaded NAPI and the receiver on CPU {NAPI_CPU}); 60-byte UDP to port {PORT}; {} rounds of {:.1} s, contenders interleaved",
        benchkit::GEN_CPU,
        o.rounds,
        o.trial.as_secs_f64()
    );
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); Contender::ALL.len()];
    for round in 1..=o.rounds {
        let mut line = format!("round {round}:");
        for (i, c) in Contender::ALL.iter().enumerate() {
            let r = measure(&bench_lab, &returned, &frame, *c, o.trial)?;
            let _ = write!(line, " {:.3}", r);
            rates[i].push(r);
        }
        println!("{line} Mpps");
    }
    let stats: Vec<benchkit::Trials> = rates
        .iter()
        .map(|r| {
            let mut v = r.clone();
            v.sort_by(f64::total_cmp);
            benchkit::Trials {
                median: v[v.len() / 2],
                min: v[0],
                max: v[v.len() - 1],
            }
        })
        .collect();
    let median =
        |c: Contender| stats[Contender::ALL.iter().position(|x| *x == c).unwrap_or(0)].median;
    std::fs::create_dir_all(&o.out)?;
    let mut csv = String::from("contender,mpps_median,mpps_min,mpps_max,anchor,ratio_to_anchor\n");
    println!();
    println!("| contender | Mpps (median) | min | max | x its stack anchor |");
    println!("|---|---:|---:|---:|---:|");
    let mut bars = Vec::new();
    for (c, t) in Contender::ALL.iter().zip(&stats) {
        let ratio = t.median / median(c.anchor());
        let _ = writeln!(
            csv,
            "\"{}\",{:.3},{:.3},{:.3},\"{}\",{:.3}",
            c.name(),
            t.median,
            t.min,
            t.max,
            c.anchor().name(),
            ratio
        );
        println!(
            "| {} | {:.3} | {:.3} | {:.3} | {:.2} |",
            c.name(),
            t.median,
            t.min,
            t.max,
            ratio
        );
        bars.push(ValueBar {
            label: c.name().to_string(),
            value: t.median,
            group: if c.xsk() { 1 } else { 0 },
            text: if c.xsk() {
                format!("{:.2} Mpps ({ratio:.2}x the stack)", t.median)
            } else {
                format!("{:.2} Mpps", t.median)
            },
        });
    }
    let rx = |c| median(c) / median(Contender::RecvMmsg);
    println!();
    println!(
        "AF_XDP rx / recvmmsg (target >= 2x, and >= 1 Mpps): xsk stage {:.2}x at {:.2} Mpps, firewall to-userspace {:.2}x at {:.2} Mpps",
        rx(Contender::XskStageRx),
        median(Contender::XskStageRx),
        rx(Contender::XskRx),
        median(Contender::XskRx)
    );
    println!(
        "echo AF_XDP / stack (target >= 2x): {:.2}x",
        median(Contender::XskEcho) / median(Contender::StackEcho)
    );
    let csv_path = o.out.join("xsk.csv");
    std::fs::write(&csv_path, csv)?;
    let png = o.out.join("xsk.png");
    benchkit::plot_value_bars(
        &bars,
        1.0,
        "Mpps",
        "AF_XDP (copy mode) vs the stack on one core (veth, 60-byte UDP), median of rounds",
        &png,
    )?;
    println!("wrote {} and {}", csv_path.display(), png.display());
    Ok(())
}
