//! `cargo xtask demo`: a DDoS against a server behind xdpkit's firewall.
//!
//! A client, an attacker and a server in their own network namespaces,
//! joined by a router. The firewall on the server's interface holds a
//! 100,000-prefix blocklist and three named rules. The attacker floods from
//! a denied range and scrapes from a rate-limited source while the client
//! keeps pinging and talking to a UDP and a TCP echo service. Every second a
//! row shows what XDP did and how the client fares; a summary ends it, and
//! everything is removed.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    time::{Duration, Instant},
};

use xdpkit::{
    firewall::{live::LiveFirewall, Policy, Ruleset},
    AttachRequest, Mode, XdpAction,
};
use xdpkit_lab::lab::Lab;

const SERVER_IF: &str = "xkdm-s";
const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 42, 2);
const UDP_PORT: u16 = 7000;
const TCP_PORT: u16 = 7001;
/// Flood sources: 198.19.41.1 ..= .16, inside the denied 198.19.0.0/16.
const FLOOD_SOURCES: u8 = 16;
/// The scraper sends this many datagrams a second; its rule allows 1,000.
const SCRAPE_PPS: u64 = 5_000;
const CALM: u64 = 3;
const ATTACK: u64 = 10;
const AFTER: u64 = 3;

const RULES: &str = "\
# The customer network always gets through.
allow src 198.18.41.0/24 prio 10
# The attack range.
deny src 198.19.0.0/16
# A noisy scraper: 1,000 packets a second per source.
rate-limit 1000 src 198.18.43.0/24
";

#[derive(Default)]
struct Counters {
    udp_sent: AtomicU64,
    udp_ok: AtomicU64,
    tcp_sent: AtomicU64,
    tcp_ok: AtomicU64,
    ping_sent: AtomicU64,
    ping_ok: AtomicU64,
    flood_sent: AtomicU64,
    scrape_sent: AtomicU64,
    /// Datagrams the UDP echo service got from the attack range.
    flood_delivered: AtomicU64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if !xdpkit_lab::lab::is_root() {
        return Err("the demo builds network namespaces and attaches XDP: run it as root".into());
    }
    let started = Instant::now();
    let lab = build_lab()?;
    println!("lab: client 198.18.41.1, attacker 198.19.41.1-16 and 198.18.43.1, router, server {SERVER} ({SERVER_IF})");

    let report = lab.run_in("server", || {
        xdpkit::attach(&AttachRequest::from_list(
            SERVER_IF,
            "firewall",
            Mode::Native,
            None,
            Some(&Policy::default()),
            false,
        )?)
    })??;
    println!(
        "$ xdpkit attach firewall --dev {SERVER_IF}            # prog id {}",
        report.prog_id
    );
    let text = format!("{RULES}{}", blocklist(100_000));
    let rules = Ruleset::parse_file_text("ddos.rules", &text)?;
    let load_started = Instant::now();
    lab.run_in("server", || {
        LiveFirewall::open(SERVER_IF)?.load(&rules, true)
    })??;
    println!(
        "$ xdpkit rule load --dev {SERVER_IF} --file ddos.rules --replace   # {} rules (3 named + a 100,000-prefix blocklist) in {:.2} s",
        rules.entries().len(),
        load_started.elapsed().as_secs_f64()
    );
    for line in RULES.lines().filter(|l| !l.starts_with('#')) {
        println!("    {line}");
    }

    let counters = Counters::default();
    let stop = AtomicBool::new(false);
    let attacking = AtomicBool::new(false);
    let result = std::thread::scope(|scope| {
        let (c, s, a, lab) = (&counters, &stop, &attacking, &lab);
        scope.spawn(move || lab.run_in("server", || udp_echo(c, s)));
        scope.spawn(move || lab.run_in("server", || tcp_echo(s)));
        // Give the services a moment to bind before clients talk to them.
        std::thread::sleep(Duration::from_millis(200));
        scope.spawn(move || lab.run_in("client", || udp_client(c, s)));
        scope.spawn(move || lab.run_in("client", || tcp_client(c, s)));
        scope.spawn(move || pinger(lab, c, s));
        scope.spawn(move || lab.run_in("attacker", || flood(c, s, a)));
        scope.spawn(move || lab.run_in("attacker", || scrape(c, s, a)));
        let result = watch(lab, c, a);
        stop.store(true, Relaxed);
        result
    });
    let summary = result?;
    lab.run_in("server", || xdpkit::detach(SERVER_IF))??;
    println!("$ xdpkit detach --dev {SERVER_IF}");
    drop(lab);

    let ratio =
        |ok: &AtomicU64, sent: &AtomicU64| format!("{}/{}", ok.load(Relaxed), sent.load(Relaxed));
    println!();
    println!(
        "summary after {:.1} s (lab removed):",
        started.elapsed().as_secs_f64()
    );
    println!(
        "  attacker: flooded {} datagrams from 198.19.41.1-{FLOOD_SOURCES}; XDP dropped {} by rule 4; {} reached the service",
        counters.flood_sent.load(Relaxed),
        summary.flood_dropped,
        counters.flood_delivered.load(Relaxed)
    );
    println!(
        "  scraper:  sent {} from 198.18.43.1; rule 6 passed {} and limited {}",
        counters.scrape_sent.load(Relaxed),
        summary.scrape_passed,
        summary.scrape_limited
    );
    println!(
        "  client:   ping {}, UDP echo {}, TCP echo {} answered",
        ratio(&counters.ping_ok, &counters.ping_sent),
        ratio(&counters.udp_ok, &counters.udp_sent),
        ratio(&counters.tcp_ok, &counters.tcp_sent)
    );
    let served = |ok: &AtomicU64, sent: &AtomicU64| {
        ok.load(Relaxed) as f64 >= 0.95 * sent.load(Relaxed) as f64 && sent.load(Relaxed) > 0
    };
    if counters.flood_delivered.load(Relaxed) != 0
        || summary.flood_dropped == 0
        || summary.scrape_limited == 0
        || !served(&counters.udp_ok, &counters.udp_sent)
        || !served(&counters.tcp_ok, &counters.tcp_sent)
        || !served(&counters.ping_ok, &counters.ping_sent)
    {
        return Err(
            "unexpected: the flood got through, nothing was limited, or the client was not served"
                .into(),
        );
    }
    Ok(())
}

fn build_lab() -> Result<Lab, Box<dyn std::error::Error>> {
    let lab = Lab::builder("xkdemo")
        .namespace("client")
        .namespace("attacker")
        .namespace("router")
        .namespace("server")
        .veth(
            "client",
            "xkdm-c",
            Some("198.18.41.1/24"),
            "router",
            "xkdm-rc",
            Some("198.18.41.254/24"),
        )
        .veth(
            "attacker",
            "xkdm-a",
            Some("198.19.41.1/24"),
            "router",
            "xkdm-ra",
            Some("198.19.41.254/24"),
        )
        .veth(
            "router",
            "xkdm-rs",
            Some("198.18.42.1/24"),
            "server",
            SERVER_IF,
            Some("198.18.42.2/24"),
        )
        .build()?;
    let mut steps: Vec<(&str, Vec<String>)> = vec![
        ("router", args("sysctl -qw net.ipv4.ip_forward=1")),
        ("router", args("ip addr add 198.18.43.254/24 dev xkdm-ra")),
        ("attacker", args("ip addr add 198.18.43.1/24 dev xkdm-a")),
        ("client", args("ip route add default via 198.18.41.254")),
        ("attacker", args("ip route add default via 198.19.41.254")),
        ("server", args("ip route add default via 198.18.42.1")),
    ];
    for i in 2..=FLOOD_SOURCES {
        steps.push((
            "attacker",
            args(&format!("ip addr add 198.19.41.{i}/24 dev xkdm-a")),
        ));
    }
    for (ns, argv) in steps {
        let status = lab.command(ns, &argv[0]).args(&argv[1..]).status()?;
        if !status.success() {
            return Err(format!("in {ns}: {} failed", argv.join(" ")).into());
        }
    }
    Ok(lab)
}

fn args(line: &str) -> Vec<String> {
    line.split_whitespace().map(str::to_string).collect()
}

/// `n` deny rules: /32s in the attack range and /64s in 2001:db8::/32.
fn blocklist(n: u32) -> String {
    let mut out = String::from("# Blocklist.\n");
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if i % 2 == 0 {
            out += &format!("deny src 198.19.{}.{}\n", (x >> 8) as u8, x as u8);
        } else {
            out += &format!(
                "deny src 2001:db8:{:x}:{:x}::/64\n",
                (x >> 16) as u16,
                x as u16
            );
        }
    }
    out
}

struct Summary {
    flood_dropped: u64,
    scrape_passed: u64,
    scrape_limited: u64,
}

/// Snapshot of what the server's firewall counted.
struct Sample {
    pass: u64,
    drop: u64,
    limited: u64,
    /// (id, rule, packets) of the named rules and the blocklist's total.
    rules: Vec<(u32, String, u64)>,
    rule_limits: Vec<(u32, u64, u64)>,
}

fn sample(lab: &Lab) -> Result<Sample, Box<dyn std::error::Error>> {
    Ok(lab.run_in("server", || -> Result<Sample, xdpkit::Error> {
        // list() reads the counters last, after decoding every rule; the
        // action counters right after it keep both in one window.
        let rows = LiveFirewall::open(SERVER_IF)?.list()?;
        let status = xdpkit::status(Some(SERVER_IF), Duration::ZERO)?;
        let s = &status[0];
        let limited = s
            .firewall
            .as_ref()
            .and_then(|o| o.iter().find(|o| o.outcome == "rate_limited"))
            .map_or(0, |o| o.packets);
        Ok(Sample {
            pass: s.actions[XdpAction::Pass as usize].packets,
            drop: s.actions[XdpAction::Drop as usize].packets,
            limited,
            rules: rows
                .iter()
                .map(|r| (r.id, r.rule.clone(), r.packets))
                .collect(),
            rule_limits: rows
                .iter()
                .filter_map(|r| Some((r.id, r.passed?, r.limited?)))
                .collect(),
        })
    })??)
}

/// Prints one row a second through the three phases; returns the totals.
fn watch(
    lab: &Lab,
    c: &Counters,
    attacking: &AtomicBool,
) -> Result<Summary, Box<dyn std::error::Error>> {
    println!();
    println!(
        "{:>3} {:<7} {:>10} {:>10} {:>10} {:>6} {:>6} {:>6}  top rules (packets/s)",
        "sec", "phase", "pass/s", "drop/s", "limited/s", "ping", "udp", "tcp"
    );
    let first = sample(lab)?;
    let mut last = sample(lab)?;
    let mut client_last = [0u64; 6];
    for sec in 1..=CALM + ATTACK + AFTER {
        let phase = if sec <= CALM {
            "calm"
        } else if sec <= CALM + ATTACK {
            "attack"
        } else {
            "after"
        };
        attacking.store(phase == "attack", Relaxed);
        let tick = Instant::now();
        std::thread::sleep(Duration::from_secs(1));
        let now = sample(lab)?;
        let secs = tick.elapsed().as_secs_f64();
        let rate = |a: u64, b: u64| ((a - b) as f64 / secs).round() as u64;
        let client = [
            c.ping_ok.load(Relaxed),
            c.ping_sent.load(Relaxed),
            c.udp_ok.load(Relaxed),
            c.udp_sent.load(Relaxed),
            c.tcp_ok.load(Relaxed),
            c.tcp_sent.load(Relaxed),
        ];
        let d: Vec<u64> = client.iter().zip(client_last).map(|(n, l)| n - l).collect();
        client_last = client;
        let mut top: Vec<(u64, String)> = now
            .rules
            .iter()
            .zip(&last.rules)
            .filter(|((id, ..), (lid, ..))| id == lid)
            .map(|((id, rule, p), (_, _, lp))| (p - lp, format!("#{id} {rule}")))
            .filter(|(n, _)| *n > 0)
            .collect();
        top.sort_by_key(|t| std::cmp::Reverse(t.0));
        let top: Vec<String> = top
            .iter()
            .take(2)
            .map(|(n, r)| format!("{r}: {}", si((*n as f64 / secs) as u64)))
            .collect();
        println!(
            "{sec:>3} {phase:<7} {:>10} {:>10} {:>10} {:>6} {:>6} {:>6}  {}",
            si(rate(now.pass, last.pass)),
            si(rate(now.drop, last.drop)),
            si(rate(now.limited, last.limited)),
            format!("{}/{}", d[0], d[1]),
            format!("{}/{}", d[2], d[3]),
            format!("{}/{}", d[4], d[5]),
            top.join(", ")
        );
        last = now;
    }
    let hits = |s: &Sample, id: u32| s.rules.iter().find(|r| r.0 == id).map_or(0, |r| r.2);
    let limits = |s: &Sample| {
        s.rule_limits
            .iter()
            .find(|r| r.0 == 6)
            .map_or((0, 0), |r| (r.1, r.2))
    };
    let (p1, l1) = limits(&first);
    let (p2, l2) = limits(&last);
    Ok(Summary {
        flood_dropped: hits(&last, 4) - hits(&first, 4),
        scrape_passed: p2 - p1,
        scrape_limited: l2 - l1,
    })
}

fn si(n: u64) -> String {
    match n {
        0..=9_999 => n.to_string(),
        10_000..=9_999_999 => format!("{:.1}k", n as f64 / 1e3),
        _ => format!("{:.2}M", n as f64 / 1e6),
    }
}

fn udp_echo(c: &Counters, stop: &AtomicBool) -> std::io::Result<()> {
    let socket = UdpSocket::bind((SERVER, UDP_PORT))?;
    socket.set_read_timeout(Some(Duration::from_millis(50)))?;
    let mut buf = [0u8; 2048];
    while !stop.load(Relaxed) {
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => {
                if let SocketAddr::V4(a) = from {
                    if a.ip().octets()[..2] == [198, 19] {
                        c.flood_delivered.fetch_add(1, Relaxed);
                    }
                }
                let _ = socket.send_to(&buf[..n], from);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn tcp_echo(stop: &AtomicBool) -> std::io::Result<()> {
    let listener = TcpListener::bind((SERVER, TCP_PORT))?;
    listener.set_nonblocking(true)?;
    std::thread::scope(|scope| {
        while !stop.load(Relaxed) {
            match listener.accept() {
                Ok((mut conn, _)) => {
                    conn.set_nonblocking(false)?;
                    conn.set_read_timeout(Some(Duration::from_millis(100)))?;
                    scope.spawn(move || {
                        let mut buf = [0u8; 256];
                        while !stop.load(Relaxed) {
                            match conn.read(&mut buf) {
                                Ok(0) => return,
                                Ok(n) => {
                                    if conn.write_all(&buf[..n]).is_err() {
                                        return;
                                    }
                                }
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        ErrorKind::WouldBlock | ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => return,
                            }
                        }
                    });
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    })
}

/// Ten requests a second, each answered within 200 ms or counted lost.
fn udp_client(c: &Counters, stop: &AtomicBool) -> std::io::Result<()> {
    let socket = UdpSocket::bind("198.18.41.1:0")?;
    socket.connect((SERVER, UDP_PORT))?;
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut buf = [0u8; 64];
    let mut seq = 0u64;
    while !stop.load(Relaxed) {
        seq += 1;
        socket.send(&seq.to_be_bytes())?;
        c.udp_sent.fetch_add(1, Relaxed);
        let deadline = Instant::now() + Duration::from_millis(200);
        while Instant::now() < deadline {
            match socket.recv(&mut buf) {
                Ok(8) if buf[..8] == seq.to_be_bytes() => {
                    c.udp_ok.fetch_add(1, Relaxed);
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// One connection; ten round trips a second.
fn tcp_client(c: &Counters, stop: &AtomicBool) -> std::io::Result<()> {
    let mut conn = TcpStream::connect_timeout(&(SERVER, TCP_PORT).into(), Duration::from_secs(2))?;
    conn.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut seq = 0u64;
    while !stop.load(Relaxed) {
        seq += 1;
        c.tcp_sent.fetch_add(1, Relaxed);
        let mut back = [0u8; 8];
        if conn.write_all(&seq.to_be_bytes()).is_ok()
            && conn.read_exact(&mut back).is_ok()
            && back == seq.to_be_bytes()
        {
            c.tcp_ok.fetch_add(1, Relaxed);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// `ping -c 1 -W 1` five times a second.
fn pinger(lab: &Lab, c: &Counters, stop: &AtomicBool) {
    while !stop.load(Relaxed) {
        let ok = lab
            .command("client", "ping")
            .args(["-c", "1", "-W", "1", "-q", &SERVER.to_string()])
            .output()
            .is_ok_and(|o| o.status.success());
        c.ping_sent.fetch_add(1, Relaxed);
        if ok {
            c.ping_ok.fetch_add(1, Relaxed);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Full speed from 16 addresses of the denied range, while `attacking`.
fn flood(c: &Counters, stop: &AtomicBool, attacking: &AtomicBool) -> std::io::Result<()> {
    let sockets = (1..=FLOOD_SOURCES)
        .map(|i| UdpSocket::bind((Ipv4Addr::new(198, 19, 41, i), 0)))
        .collect::<std::io::Result<Vec<_>>>()?;
    for s in &sockets {
        s.set_nonblocking(true)?;
    }
    let payload = [0u8; 64];
    while !stop.load(Relaxed) {
        if !attacking.load(Relaxed) {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        for s in &sockets {
            for _ in 0..8 {
                if s.send_to(&payload, (SERVER, UDP_PORT)).is_ok() {
                    c.flood_sent.fetch_add(1, Relaxed);
                }
            }
        }
    }
    Ok(())
}

/// [`SCRAPE_PPS`] from 198.18.43.1, while `attacking`.
fn scrape(c: &Counters, stop: &AtomicBool, attacking: &AtomicBool) -> std::io::Result<()> {
    let socket = UdpSocket::bind("198.18.43.1:0")?;
    socket.set_nonblocking(true)?;
    let per_tick = SCRAPE_PPS / 100;
    while !stop.load(Relaxed) {
        if attacking.load(Relaxed) {
            for _ in 0..per_tick {
                if socket.send_to(b"GET /", (SERVER, UDP_PORT)).is_ok() {
                    c.scrape_sent.fetch_add(1, Relaxed);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}
