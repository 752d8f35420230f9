//! `xdpkit xsk dump|echo|fwd`: frames in userspace through AF_XDP sockets.

use std::{
    path::PathBuf,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use serde::Serialize;
use xdpkit::{
    dump::{Captured, PcapngSink},
    xsk::{self, Mode, Umem, UmemConfig, XskSocket, XskStats},
    XdpAction,
};

use crate::{
    output::{print_json, si, DevArg, JsonArg},
    signals,
};

/// Receive an interface's frames in userspace through an AF_XDP socket:
/// write them to pcapng (dump), send each back to its sender (echo), or
/// send them out of another interface (fwd).
///
/// Frames reach the socket only from a stage that redirects to sockets:
/// attach the xsk stage (`xdpkit attach xsk --dev IF`: every frame of the
/// interface), or apply a configuration with it or with a firewall rule
/// whose action is to-userspace. Without one the command stops with exit
/// code 2. While the socket is bound, the frames it takes do not reach the
/// network stack (ARP included); when it exits, the stage hands them on
/// down the chain again.
///
/// One socket serves one RX queue (--queue, default 0; a veth has one).
/// Copy mode works on every driver (veth has nothing else); --xdp-mode auto
/// takes zero-copy where the driver has it and says which mode is in use.
/// Every second a line shows the rates; --json prints one object at the end.
///
/// Examples:
///   xdpkit attach xsk --dev eth0
///   xdpkit xsk dump --dev eth0 -w frames.pcapng --count 1000
///   xdpkit xsk echo --dev eth0 --duration 10
///   xdpkit xsk fwd --dev eth0 --to eth1 --json
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(subcommand)]
    command: XskCommand,
}

#[derive(Debug, clap::Subcommand)]
enum XskCommand {
    Dump(DumpArgs),
    Echo(EchoArgs),
    Fwd(FwdArgs),
}

/// What every subcommand's socket is made with, and when it stops.
#[derive(Debug, clap::Args)]
struct SocketArgs {
    #[command(flatten)]
    dev: DevArg,

    /// The RX queue to receive from.
    #[arg(long, value_name = "Q", default_value_t = 0)]
    queue: u32,

    /// auto (zero-copy where the driver has it, else copy), copy, or
    /// zero-copy (an error where the driver lacks it).
    #[arg(long = "xdp-mode", value_enum, default_value_t = ModeArg::Auto)]
    mode: ModeArg,

    /// Frames in the UMEM (half wait in the fill ring for receiving).
    #[arg(long, value_name = "N", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(2..=1 << 20))]
    frames: u32,

    /// Bytes per UMEM frame: 2048 or 4096 (frames up to 1792 or 3840 bytes).
    #[arg(long, value_name = "B", default_value_t = 4096, value_parser = parse_frame_size)]
    frame_size: u32,

    /// Stop after this many frames.
    #[arg(long, value_name = "N")]
    count: Option<u64>,

    /// Stop after this many seconds (default: --count, or Ctrl-C).
    #[arg(long, value_name = "S", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    duration: Option<u64>,

    #[command(flatten)]
    json: JsonArg,
}

fn parse_frame_size(s: &str) -> Result<u32, String> {
    match s {
        "2048" => Ok(2048),
        "4096" => Ok(4096),
        _ => Err(format!("'{s}' is not 2048 or 4096")),
    }
}

/// `--xdp-mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum ModeArg {
    /// Zero-copy if the driver supports it, else copy.
    Auto,
    /// The kernel copies frames into the UMEM.
    Copy,
    /// The driver uses the UMEM directly.
    ZeroCopy,
}

/// Write the frames an AF_XDP socket receives to a pcapng file.
///
/// Whole frames, nanosecond timestamps, each with the comment
/// `verdict=redirect`. -w - writes to stdout.
///
/// Examples:
///   xdpkit xsk dump --dev eth0 -w frames.pcapng
///   xdpkit xsk dump --dev eth0 --queue 1 --count 100 -w - | tcpdump -r -
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
struct DumpArgs {
    #[command(flatten)]
    socket: SocketArgs,

    /// Output file, or - for stdout.
    #[arg(short = 'w', value_name = "FILE")]
    write: PathBuf,
}

/// Send every frame back to its sender.
///
/// From the same socket: MAC addresses swapped, and IPv4/IPv6 addresses and UDP/TCP ports where the
/// frame has them (checksums stay valid). The reply is the received UMEM
/// frame itself, not a copy. For tests and benchmarks: a UDP datagram to
/// any port of any address behind the interface comes back as if answered.
///
/// Examples:
///   xdpkit xsk echo --dev eth0
///   xdpkit xsk echo --dev eth0 --count 1 --json
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
struct EchoArgs {
    #[command(flatten)]
    socket: SocketArgs,
}

/// Send the frames received on --dev out of --to.
///
/// Unchanged: a one-way wire between two interfaces. The sending socket on --to has its own
/// UMEM: each frame is copied once, from the receiving UMEM into it (a
/// shared UMEM would save the copy but tie both interfaces' frame pools
/// together). --to needs no stage: the socket there only sends, on the
/// same queue number as --queue.
///
/// Examples:
///   xdpkit xsk fwd --dev eth0 --to eth1
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
struct FwdArgs {
    #[command(flatten)]
    socket: SocketArgs,

    /// Interface to send the frames out of.
    #[arg(long, value_name = "IF2")]
    to: String,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        XskCommand::Dump(a) => dump(a),
        XskCommand::Echo(a) => echo(a),
        XskCommand::Fwd(a) => fwd(a),
    }
}

impl SocketArgs {
    fn umem(&self) -> UmemConfig {
        UmemConfig {
            frame_size: self.frame_size,
            frame_count: self.frames,
            headroom: 0,
            ring_size: self.frames.next_power_of_two().clamp(64, 4096),
        }
    }

    fn mode(&self) -> Mode {
        match self.mode {
            ModeArg::Auto => Mode::Auto,
            ModeArg::Copy => Mode::Copy,
            ModeArg::ZeroCopy => Mode::ZeroCopy,
        }
    }

    fn bind(&self) -> anyhow::Result<XskSocket> {
        let umem = Umem::new(self.umem())?;
        Ok(XskSocket::bind(
            &self.dev.dev,
            self.queue,
            umem,
            self.mode(),
        )?)
    }
}

/// One second of a run (or the last, shorter interval).
#[derive(Debug, Serialize)]
struct Sample {
    /// Seconds since the start, at the end of the interval.
    at: f64,
    rx_pps: f64,
    rx_mbps: f64,
    tx_pps: f64,
    /// Frames the kernel dropped for want of a fill frame or RX slot.
    dropped_pps: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    command: &'static str,
    dev: String,
    queue: u32,
    /// The AF_XDP mode in use: copy or zero-copy.
    mode: Mode,
    seconds: f64,
    rx_frames: u64,
    rx_bytes: u64,
    tx_frames: u64,
    /// Frames not sent: no TX slot or free frame.
    tx_full: u64,
    kernel_rx_dropped: u64,
    rx_pps: f64,
    samples: Vec<Sample>,
}

/// Runs `step` until the stop condition, printing a line a second, then
/// the summary (or the JSON report). `step` waits at most a few ms.
fn live(
    command: &'static str,
    args: &SocketArgs,
    socket_stats: &mut dyn FnMut(bool) -> (XskStats, u64),
    step: &mut dyn FnMut() -> anyhow::Result<()>,
    mode: Mode,
) -> anyhow::Result<()> {
    let text = !args.json.json;
    signals::stop_on_interrupt();
    let started = Instant::now();
    let end = args.duration.map(|s| started + Duration::from_secs(s));
    let rx_of = |s: &XskStats| s.rx_frames;
    let mut last = (started, socket_stats(true).0);
    let mut samples = Vec::new();
    loop {
        step()?;
        let (counted, _) = socket_stats(false);
        let now = Instant::now();
        let done = signals::stopped()
            || end.is_some_and(|e| now >= e)
            || args.count.is_some_and(|n| rx_of(&counted) >= n);
        if now - last.0 >= Duration::from_secs(1) || done {
            let (stats, tx) = socket_stats(true);
            let secs = (now - last.0).as_secs_f64().max(1e-9);
            let before = last.1;
            let sample = Sample {
                at: (now - started).as_secs_f64(),
                rx_pps: (stats.rx_frames - before.rx_frames) as f64 / secs,
                rx_mbps: (stats.rx_bytes - before.rx_bytes) as f64 * 8.0 / secs / 1e6,
                tx_pps: tx.saturating_sub(before.tx_frames) as f64 / secs,
                dropped_pps: (stats.kernel_rx_dropped + stats.kernel_rx_ring_full)
                    .saturating_sub(before.kernel_rx_dropped + before.kernel_rx_ring_full)
                    as f64
                    / secs,
            };
            if text {
                outln!(
                    "{:>6.1} s  rx {:>9} pps  {:>9.1} Mbps  tx {:>9} pps  dropped {:>9} pps",
                    sample.at,
                    si(sample.rx_pps),
                    sample.rx_mbps,
                    si(sample.tx_pps),
                    si(sample.dropped_pps)
                );
            }
            samples.push(sample);
            // Remember tx in the snapshot's tx_frames for the next rate.
            let mut snapshot = stats;
            snapshot.tx_frames = tx;
            last = (now, snapshot);
        }
        if done {
            break;
        }
    }
    let (stats, tx) = socket_stats(true);
    let seconds = started.elapsed().as_secs_f64().max(1e-9);
    let report = Report {
        command,
        dev: args.dev.dev.clone(),
        queue: args.queue,
        mode,
        seconds,
        rx_frames: stats.rx_frames,
        rx_bytes: stats.rx_bytes,
        tx_frames: tx,
        tx_full: stats.tx_full,
        kernel_rx_dropped: stats.kernel_rx_dropped + stats.kernel_rx_ring_full,
        rx_pps: stats.rx_frames as f64 / seconds,
        samples,
    };
    if !text {
        return print_json(&report);
    }
    outln!(
        "summary: {} frames received ({} bytes) in {:.1} s, {} pps; {} sent, {} not sent (TX full), {} dropped by the kernel",
        report.rx_frames,
        report.rx_bytes,
        report.seconds,
        si(report.rx_pps),
        report.tx_frames,
        report.tx_full,
        report.kernel_rx_dropped
    );
    Ok(())
}

/// The line saying the socket is ready (tests wait for it on stderr).
fn bound(command: &str, socket: &XskSocket, extra: &str) {
    eprintln!(
        "xdpkit xsk {command}: bound to {} queue {} ({} mode){extra}; Ctrl-C stops",
        socket.iface(),
        socket.queue(),
        socket.mode()
    );
}

const BATCH: u32 = 64;
const WAIT: Duration = Duration::from_millis(10);

fn dump(args: DumpArgs) -> anyhow::Result<()> {
    let a = &args.socket;
    // Bound before the file is created: a refused dump leaves nothing behind.
    let mut socket = a.bind()?;
    let to_stdout = args.write.as_os_str() == "-";
    let (out, target) = crate::dump::open_output(&args.write)?;
    let mut sink = PcapngSink::new(out, &a.dev.dev, a.frame_size)?;
    bound("dump", &socket, &format!(", writing to {target}"));
    let mode = socket.mode();
    let limit = a.count.unwrap_or(u64::MAX);
    let socket = std::cell::RefCell::new(&mut socket);
    let mut written: u64 = 0;
    let mut failed = None;
    live(
        "dump",
        a,
        &mut |kernel| (stats_of(&socket.borrow(), kernel), 0),
        &mut || {
            let mut s = socket.borrow_mut();
            s.wait(WAIT)?;
            let room = u32::try_from(limit - written)
                .unwrap_or(u32::MAX)
                .min(BATCH);
            s.rx_batch(room, |frame| {
                if failed.is_some() {
                    return;
                }
                let captured = Captured {
                    time: SystemTime::now(),
                    len: frame.len() as u32,
                    data: frame.to_vec(),
                    action: XdpAction::Redirect,
                    rule: None,
                };
                match sink.write(&captured) {
                    Ok(()) => written += 1,
                    Err(e) => failed = Some(e),
                }
            });
            if let Some(e) = failed.take() {
                return Err(e.into());
            }
            if to_stdout {
                sink.flush()?;
            }
            Ok(())
        },
        mode,
    )?;
    sink.flush()?;
    eprintln!("xdpkit xsk dump: {written} frames written to {target}");
    Ok(())
}

fn echo(args: EchoArgs) -> anyhow::Result<()> {
    let a = &args.socket;
    let mut socket = a.bind()?;
    bound("echo", &socket, "");
    let mode = socket.mode();
    let limit = a.count.unwrap_or(u64::MAX);
    let socket = std::cell::RefCell::new(&mut socket);
    live(
        "echo",
        a,
        &mut |kernel| {
            let s = stats_of(&socket.borrow(), kernel);
            (s, s.tx_frames)
        },
        &mut || {
            let mut s = socket.borrow_mut();
            s.wait(WAIT)?;
            let room = u32::try_from(limit - s.counters().rx_frames)
                .unwrap_or(u32::MAX)
                .min(BATCH);
            s.rx_tx_batch(room, |frame| {
                xsk::swap_addresses(frame).then_some(frame.len())
            });
            Ok(())
        },
        mode,
    )?;
    // Let the last replies leave before the socket closes.
    flush_all(&mut socket.borrow_mut());
    Ok(())
}

fn fwd(args: FwdArgs) -> anyhow::Result<()> {
    let a = &args.socket;
    let mut rx = a.bind()?;
    let umem = Umem::new(a.umem())?;
    let mut tx = XskSocket::bind_tx_only(&args.to, a.queue, umem, a.mode())
        .with_context(|| format!("opening the sending socket on {}", args.to))?;
    bound(
        "fwd",
        &rx,
        &format!(", sending out of {} ({} mode)", args.to, tx.mode()),
    );
    let mode = rx.mode();
    let limit = a.count.unwrap_or(u64::MAX);
    let sockets = std::cell::RefCell::new((&mut rx, &mut tx));
    live(
        "fwd",
        a,
        &mut |kernel| {
            let s = sockets.borrow();
            let mut rx = stats_of(s.0, kernel);
            let tx = s.1.counters();
            rx.tx_full = tx.tx_full;
            (rx, tx.tx_frames)
        },
        &mut || {
            let mut s = sockets.borrow_mut();
            let (rx, tx) = &mut *s;
            rx.wait(WAIT)?;
            let room = u32::try_from(limit - rx.counters().rx_frames)
                .unwrap_or(u32::MAX)
                .min(BATCH);
            rx.rx_batch(room, |frame| {
                tx.tx(frame);
            });
            tx.flush();
            Ok(())
        },
        mode,
    )?;
    flush_all(sockets.borrow_mut().1);
    Ok(())
}

fn stats_of(socket: &XskSocket, kernel: bool) -> XskStats {
    if kernel {
        socket.stats()
    } else {
        socket.counters()
    }
}

/// Sends what is still queued, for at most a second.
fn flush_all(socket: &mut XskSocket) {
    let deadline = Instant::now() + Duration::from_secs(1);
    while socket.counters().frames_in_tx > 0 && Instant::now() < deadline {
        socket.flush();
        std::thread::sleep(Duration::from_millis(1));
    }
}
