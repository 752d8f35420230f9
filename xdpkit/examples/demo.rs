//! `cargo xtask demo`: a two-host lab; the server's interface gets `drop`,
//! then `pass` (an atomic in-place replace), while a client sends a steady,
//! bounded UDP stream. Every second it prints what XDP counted and what the
//! server's socket received. Everything is removed at the end.

use std::{
    io::ErrorKind,
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use xdpkit::{lab::Lab, AttachRequest, Mode, ProgramKind, XdpAction};

const SERVER_IF: &str = "xkdemo-s";
const CLIENT_IF: &str = "xkdemo-c";
const SERVER: &str = "198.18.20.2:7000";
/// Datagrams per 10 ms tick: 20 k/s offered, so the server's socket buffer
/// never overflows between drains and "delivered" equals "passed".
const BURST: u32 = 200;
const PHASE: Duration = Duration::from_secs(5);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if !xdpkit::lab::is_root() {
        return Err("the demo builds network namespaces and attaches XDP: run it as root".into());
    }
    let started = Instant::now();
    println!("building lab: namespaces client and server, veth {CLIENT_IF} (198.18.20.1) <-> {SERVER_IF} (198.18.20.2)");
    let lab = Lab::builder("xkdemo")
        .namespace("client")
        .namespace("server")
        .veth(
            "client",
            CLIENT_IF,
            Some("198.18.20.1/24"),
            "server",
            SERVER_IF,
            Some("198.18.20.2/24"),
        )
        .build()?;
    let server: SocketAddr = SERVER.parse()?;
    let sink = lab.run_in("server", move || -> std::io::Result<UdpSocket> {
        let s = UdpSocket::bind(server)?;
        s.set_nonblocking(true)?;
        force_receive_buffer(&s, 8 << 20)?;
        Ok(s)
    })??;
    let source = lab.run_in("client", || -> std::io::Result<UdpSocket> {
        let s = UdpSocket::bind("198.18.20.1:0")?;
        s.set_nonblocking(true)?;
        Ok(s)
    })??;
    // With `drop` attached the server cannot answer ARP: give the client its MAC.
    let server_mac = lab.mac("server", SERVER_IF)?;
    lab.static_neighbor("client", CLIENT_IF, server.ip(), server_mac)?;

    println!();
    println!(
        "{:>4}  {:<8} {:>12} {:>12} {:>12} {:>14}",
        "sec", "program", "sent/s", "xdp drop/s", "xdp pass/s", "delivered/s"
    );
    let mut totals = Totals::default();
    for (phase, program) in [ProgramKind::Drop, ProgramKind::Pass]
        .into_iter()
        .enumerate()
    {
        let report = lab.run_in("server", || {
            xdpkit::attach(&AttachRequest {
                iface: SERVER_IF.to_string(),
                program,
                mode: Mode::Native,
                to: None,
                force: false,
                policy: None,
            })
        })??;
        println!(
            "$ xdpkit attach {} --dev {SERVER_IF} --mode native   # prog id {}, link id {}",
            program.name(),
            report.prog_id,
            report.link_id
        );
        run_phase(&lab, &source, &sink, server, program, phase, &mut totals)?;
    }
    lab.run_in("server", || xdpkit::detach(SERVER_IF))??;
    println!("$ xdpkit detach --dev {SERVER_IF}");
    drop(lab);
    println!();
    println!(
        "summary: sent {} datagrams; under drop XDP dropped {} and the socket got {}; under pass XDP passed {} and the socket got {}; lab removed after {:.1} s",
        totals.sent, totals.dropped, totals.delivered_under_drop, totals.passed, totals.delivered_under_pass,
        started.elapsed().as_secs_f64()
    );
    if totals.delivered_under_drop != 0 || totals.delivered_under_pass == 0 {
        return Err("unexpected: drop let datagrams through, or pass delivered none".into());
    }
    Ok(())
}

#[derive(Default)]
struct Totals {
    sent: u64,
    dropped: u64,
    passed: u64,
    delivered_under_drop: u64,
    delivered_under_pass: u64,
}

fn run_phase(
    lab: &Lab,
    source: &UdpSocket,
    sink: &UdpSocket,
    server: SocketAddr,
    program: ProgramKind,
    phase: usize,
    totals: &mut Totals,
) -> Result<(), Box<dyn std::error::Error>> {
    let counters = || -> Result<(u64, u64), Box<dyn std::error::Error>> {
        let s = lab.run_in("server", || xdpkit::status(Some(SERVER_IF), Duration::ZERO))??;
        let packets = |a: XdpAction| s[0].actions[a as usize].packets;
        Ok((packets(XdpAction::Drop), packets(XdpAction::Pass)))
    };
    let (mut last_drop, mut last_pass) = counters()?;
    let payload = [0x5au8; 32];
    let mut buf = [0u8; 64];
    let phase_start = Instant::now();
    for second in 1..=PHASE.as_secs() {
        let (mut sent, mut delivered) = (0u64, 0u64);
        let tick_start = Instant::now();
        while tick_start.elapsed() < Duration::from_secs(1) {
            for _ in 0..BURST {
                if source.send_to(&payload, server).is_ok() {
                    sent += 1;
                }
            }
            delivered += drain(sink, &mut buf)?;
            std::thread::sleep(Duration::from_millis(10));
        }
        let (drop_now, pass_now) = counters()?;
        let secs = tick_start.elapsed().as_secs_f64();
        let rate = |n: u64| (n as f64 / secs).round() as u64;
        println!(
            "{:>4}  {:<8} {:>12} {:>12} {:>12} {:>14}",
            phase as u64 * PHASE.as_secs() + second,
            program.name(),
            rate(sent),
            rate(drop_now - last_drop),
            rate(pass_now - last_pass),
            rate(delivered)
        );
        totals.sent += sent;
        totals.dropped += drop_now - last_drop;
        totals.passed += pass_now - last_pass;
        match program {
            ProgramKind::Drop => totals.delivered_under_drop += delivered,
            _ => totals.delivered_under_pass += delivered,
        }
        (last_drop, last_pass) = (drop_now, pass_now);
    }
    // Datagrams still in flight at the last tick belong to this phase.
    std::thread::sleep(Duration::from_millis(100));
    let late = drain(sink, &mut buf)?;
    match program {
        ProgramKind::Drop => totals.delivered_under_drop += late,
        _ => totals.delivered_under_pass += late,
    }
    let (drop_now, pass_now) = counters()?;
    totals.dropped += drop_now - last_drop;
    totals.passed += pass_now - last_pass;
    debug_assert!(phase_start.elapsed() >= PHASE);
    Ok(())
}

/// Raises the socket's receive buffer past rmem_max, so the 10 ms between
/// drains never overflows it (UdpRcvbufErrors would look like XDP loss).
fn force_receive_buffer(socket: &UdpSocket, bytes: libc::c_int) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: a valid socket fd and a pointer to an int of the given size.
    let ret = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Reads every datagram waiting on the non-blocking `sink`.
fn drain(sink: &UdpSocket, buf: &mut [u8]) -> std::io::Result<u64> {
    let mut n = 0;
    loop {
        match sink.recv_from(buf) {
            Ok(_) => n += 1,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(n),
            Err(e) => return Err(e),
        }
    }
}
