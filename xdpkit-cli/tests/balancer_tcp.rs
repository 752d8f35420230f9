//! The balancer in front of real TCP servers (issue 11, point 9): a client
//! connects to a VIP; the balancer (two-interface mode) sends each flow
//! encapsulated through a router to one of three backends, whose `decap`
//! stage hands it to the stack where the VIP sits on `lo`; the backends
//! answer the client directly through the router (direct server return).

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader, ErrorKind, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use etherparse::PacketBuilder;
use serde_json::Value;
use xdpkit_lab::lab::{require_root, Lab};

mod common;

use common::{ip, mac, ok, sysctl, xdpkit_in};

const VIP: &str = "198.18.77.10:80/tcp";
const VIP_ADDR: &str = "198.18.77.10:80";
const LB_IN: &str = "xktcp-in";
const LB_EG: &str = "xktcp-eg";
/// Backend name, its interface, its address, the router's address on that link.
const BACKENDS: [(&str, &str, &str, &str); 3] = [
    ("b1", "xktcp-b1", "198.18.73.1", "198.18.73.254"),
    ("b2", "xktcp-b2", "198.18.74.1", "198.18.74.254"),
    ("b3", "xktcp-b3", "198.18.75.1", "198.18.75.254"),
];
/// Every socket operation of the test gives up after this long.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Turns reverse-path filtering off in `ns`: replies come back by another
/// link than the one the client sends on, and the outer sources have no route.
/// (A new namespace's interfaces inherit the host's setting.)
fn no_rp_filter(lab: &Lab, ns: &str, ifaces: &[&str]) {
    for key in ["all", "default"].iter().chain(ifaces) {
        sysctl(lab, ns, &format!("net.ipv4.conf.{key}.rp_filter=0"));
    }
}

fn lb(lab: &Lab, args: &[&str]) -> String {
    ok(&xdpkit_in(lab, "lb", args))
}

fn list(lab: &Lab) -> Value {
    serde_json::from_str(&lb(
        lab,
        &["lb", "list", "--dev", LB_IN, "--json", "--interval", "0"],
    ))
    .unwrap()
}

/// Packets sent to each real, by backend name.
fn real_packets(status: &Value) -> HashMap<&'static str, u64> {
    let mut by_name = HashMap::new();
    for real in status["vips"][0]["reals"].as_array().unwrap() {
        let address = real["address"].as_str().unwrap();
        let (name, ..) = BACKENDS.iter().find(|b| b.2 == address).unwrap();
        by_name.insert(*name, real["packets"].as_u64().unwrap());
    }
    by_name
}

fn counter(status: &Value, name: &str) -> u64 {
    status[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no {name} in {status}"))
}

/// IPIP frames the `decap` stage of backend `ns` took apart.
fn decapsulated(lab: &Lab, ns: &str, dev: &str) -> u64 {
    let status: Value = serde_json::from_str(&ok(&xdpkit_in(
        lab,
        ns,
        &["status", "--dev", dev, "--json"],
    )))
    .unwrap();
    status[0]["stages"][0]["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["outcome"] == "ipv4_in_ipv4")
        .and_then(|o| o["packets"].as_u64())
        .unwrap_or_else(|| panic!("no decap outcomes for {dev}: {status}"))
}

/// A `Tcp:` counter of `/proc/net/snmp` in `ns`.
fn tcp_counter(lab: &Lab, ns: &str, name: &str) -> u64 {
    let out = lab
        .command(ns, "cat")
        .arg("/proc/net/snmp")
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let mut rows = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (rows.next().unwrap(), rows.next().unwrap());
    let at = names.split_whitespace().position(|n| n == name).unwrap();
    values.split_whitespace().nth(at).unwrap().parse().unwrap()
}

/// A `TcpExt:` counter of `/proc/net/netstat` in `ns`.
fn tcpext_counter(lab: &Lab, ns: &str, name: &str) -> u64 {
    let out = lab
        .command(ns, "cat")
        .arg("/proc/net/netstat")
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let mut rows = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (rows.next().unwrap(), rows.next().unwrap());
    let at = names.split_whitespace().position(|n| n == name).unwrap();
    values.split_whitespace().nth(at).unwrap().parse().unwrap()
}

/// CPUs the kernel may run on (`/sys/devices/system/cpu/possible`, e.g.
/// `0-1`): the balancer splits the guard's rate over them.
fn possible_cpus() -> u64 {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap();
    text.trim()
        .split(',')
        .map(|range| match range.split_once('-') {
            Some((a, b)) => b.parse::<u64>().unwrap() - a.parse::<u64>().unwrap() + 1,
            None => 1,
        })
        .sum()
}

/// Connection requests the client's kernel sent: first SYNs and resent ones.
fn syns_sent(lab: &Lab) -> u64 {
    tcp_counter(lab, "client", "ActiveOpens") + tcpext_counter(lab, "client", "TCPSynRetrans")
}

/// What one backend's server saw.
#[derive(Default)]
struct ServerStats {
    accepted: AtomicU64,
    lines: AtomicU64,
    bytes: AtomicU64,
}

/// A TCP server on the VIP inside a backend namespace: it greets each
/// connection with its name, then echoes lines.
struct Server {
    stats: Arc<ServerStats>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(lab: &Lab, ns: &'static str) -> Server {
        let addr: SocketAddr = VIP_ADDR.parse().unwrap();
        // A socket stays in the namespace it was made in, whichever thread
        // serves it afterwards.
        let listener = lab
            .run_in(ns, move || TcpListener::bind(addr))
            .unwrap()
            .unwrap();
        listener.set_nonblocking(true).unwrap();
        let stats = Arc::new(ServerStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stats, stop) = (stats.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            stats.accepted.fetch_add(1, Ordering::Relaxed);
                            let stats = stats.clone();
                            std::thread::spawn(move || serve(ns, stream, &stats));
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(2));
                        }
                        Err(e) => panic!("{ns}: accept: {e}"),
                    }
                }
            })
        };
        Server {
            stats,
            stop,
            thread: Some(thread),
        }
    }

    fn lines(&self) -> u64 {
        self.stats.lines.load(Ordering::Relaxed)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One connection: the greeting, then every line back. Ends when the
/// client closes, or after a minute of silence (a test that failed).
fn serve(name: &str, stream: TcpStream, stats: &ServerStats) {
    stream.set_nonblocking(false).unwrap();
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let mut writer = stream.try_clone().unwrap();
    if writeln!(writer, "{name}").is_err() {
        return;
    }
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                stats.bytes.fetch_add(n as u64, Ordering::Relaxed);
                stats.lines.fetch_add(1, Ordering::Relaxed);
                if writer.write_all(line.as_bytes()).is_err() {
                    return;
                }
            }
        }
    }
}

/// A client connection to the VIP, and the backend that greeted it.
struct Conn {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
    backend: String,
}

impl Conn {
    fn open(lab: &Lab) -> Conn {
        let addr: SocketAddr = VIP_ADDR.parse().unwrap();
        let stream = lab
            .run_in("client", move || {
                TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            })
            .unwrap()
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut backend = String::new();
        reader.read_line(&mut backend).expect("greeting");
        Conn {
            writer: stream,
            reader,
            backend: backend.trim_end().to_string(),
        }
    }

    /// Sends `line` (without its newline) and returns what came back.
    fn echo(&mut self, line: &str) -> String {
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .unwrap_or_else(|e| panic!("send to {}: {e}", self.backend));
        let mut back = String::with_capacity(line.len() + 1);
        self.reader
            .read_line(&mut back)
            .unwrap_or_else(|e| panic!("echo from {}: {e}", self.backend));
        back.truncate(back.trim_end_matches('\n').len());
        back
    }
}

/// Client, balancer, router and three backends; the balancer attached and
/// configured with VIP and reals b1 (weight 1) and b2 (weight 2).
fn build_lab() -> Lab {
    let mut builder = Lab::builder("xktcp")
        .namespace("client")
        .namespace("lb")
        .namespace("router")
        // Client -> balancer: the way in.
        .veth(
            "client",
            "xktcp-cl",
            Some("198.18.70.1/24"),
            "lb",
            LB_IN,
            Some("198.18.70.2/24"),
        )
        // Router -> client: the way back (direct server return).
        .veth(
            "client",
            "xktcp-cr",
            Some("198.18.71.1/24"),
            "router",
            "xktcp-rc",
            Some("198.18.71.254/24"),
        )
        // Balancer -> router: encapsulated frames (XDP_REDIRECT).
        .veth(
            "lb",
            LB_EG,
            Some("198.18.72.2/24"),
            "router",
            "xktcp-rl",
            Some("198.18.72.254/24"),
        )
        // XDP_REDIRECT frames reach a veth peer only with GRO (or an XDP
        // program) on it.
        .gro("router", "xktcp-rl");
    for (name, dev, addr, gw) in BACKENDS {
        builder = builder.namespace(name).veth(
            "router",
            &format!("xktcp-r{}", &name[1..]),
            Some(&format!("{gw}/24")),
            name,
            dev,
            Some(&format!("{addr}/24")),
        );
    }
    let lab = builder.build().unwrap();

    ip(
        &lab,
        "client",
        &["route", "add", "198.18.77.0/24", "via", "198.18.70.2"],
    );
    no_rp_filter(&lab, "client", &["xktcp-cl", "xktcp-cr"]);
    sysctl(&lab, "router", "net.ipv4.ip_forward=1");
    no_rp_filter(&lab, "router", &["xktcp-rc", "xktcp-rl"]);
    ip(
        &lab,
        "router",
        &["route", "add", "198.18.70.0/24", "via", "198.18.71.1"],
    );
    for (name, dev, _, gw) in BACKENDS {
        no_rp_filter(&lab, name, &[dev]);
        ip(&lab, name, &["addr", "add", "198.18.77.10/32", "dev", "lo"]);
        ip(&lab, name, &["route", "add", "default", "via", gw]);
        ok(&xdpkit_in(&lab, name, &["attach", "decap", "--dev", dev]));
    }

    // The balancer's ICMP replies leave by XDP_TX. A veth peer with only
    // GRO gets such frames in its queue, but the kernel schedules its
    // poll only for a peer with an XDP program (veth_xdp_flush): they
    // would wait for other traffic to come by, and the client's TCP for
    // its retransmission timeouts.
    ok(&xdpkit_in(
        &lab,
        "client",
        &["attach", "pass", "--dev", "xktcp-cl"],
    ));
    let gateway = mac(&lab, "router", "xktcp-rl");
    lb(&lab, &["attach", "balancer", "--dev", LB_IN]);
    lb(
        &lab,
        &[
            "lb",
            "config",
            "--dev",
            LB_IN,
            "--source4",
            "198.19.0.0/16",
            "--egress",
            LB_EG,
            "--gateway",
            &gateway,
            "--mtu",
            "1500",
        ],
    );
    lb(&lab, &["lb", "vip", "add", "--dev", LB_IN, VIP]);
    for (real, weight) in [("198.18.73.1", "1"), ("198.18.74.1", "2")] {
        lb(
            &lab,
            &[
                "lb", "real", "add", "--dev", LB_IN, VIP, real, "--weight", weight,
            ],
        );
    }
    lab
}

/// Connections opened per backend name.
fn tally<'a>(conns: impl IntoIterator<Item = &'a str>) -> HashMap<String, u32> {
    let mut by_backend = HashMap::new();
    for name in conns {
        *by_backend.entry(name.to_string()).or_default() += 1;
    }
    by_backend
}

/// Opens `n` short connections (greeting, one echo, close); returns the
/// backend of each.
fn short_connections(lab: &Lab, n: u32) -> Vec<String> {
    (0..n)
        .map(|i| {
            let mut conn = Conn::open(lab);
            let line = format!("hello {i}");
            assert_eq!(conn.echo(&line), line, "from {}", conn.backend);
            conn.backend
        })
        .collect()
}

/// `n` TCP SYNs to the VIP from as many sources in 198.18.128.0/17, as
/// Ethernet frames from the client to the balancer.
fn syn_flood(lab: &Lab, n: u32) -> Vec<Vec<u8>> {
    let src_mac = lab.mac("client", "xktcp-cl").unwrap();
    let dst_mac = lab.mac("lb", LB_IN).unwrap();
    (0..n)
        .map(|i| {
            let host = (i % 32_768).to_be_bytes();
            let mut frame = Vec::with_capacity(54);
            PacketBuilder::ethernet2(src_mac, dst_mac)
                .ipv4([198, 18, 128 | host[2], host[3]], [198, 18, 77, 10], 64)
                .tcp(
                    1024 + (i % 60_000) as u16,
                    80,
                    i.wrapping_mul(2_654_435_761),
                    64_240,
                )
                .syn()
                .write(&mut frame, &[])
                .unwrap();
            frame
        })
        .collect()
}

#[test]
fn tcp_connections_through_the_balancer_reach_the_backends_by_weight() {
    if !require_root("tcp_connections_through_the_balancer_reach_the_backends_by_weight") {
        return;
    }
    let lab = build_lab();
    let servers: HashMap<&str, Server> = BACKENDS
        .iter()
        .map(|b| (b.0, Server::start(&lab, b.0)))
        .collect();

    // 1. Many connections, spread by weight (b1: 1, b2: 2).
    const N: u32 = 300;
    let syns_before = syns_sent(&lab);
    let backends = short_connections(&lab, N);
    let syns = syns_sent(&lab) - syns_before;
    let by_backend = tally(backends.iter().map(String::as_str));
    eprintln!("connections per backend: {by_backend:?}");
    let b1 = by_backend.get("b1").copied().unwrap_or(0);
    let b2 = by_backend.get("b2").copied().unwrap_or(0);
    assert_eq!(b1 + b2, N, "only b1 and b2 are reals: {by_backend:?}");
    // b1's count is binomial(300, 1/3): mean 100, sd 8.2; allow 5 sd.
    let (mean, sd) = (f64::from(N) / 3.0, (f64::from(N) * 2.0 / 9.0).sqrt());
    assert!(
        (f64::from(b1) - mean).abs() <= 5.0 * sd,
        "b1 got {b1} of {N} connections, expected {mean:.0} +- {:.0}",
        5.0 * sd
    );
    for (name, server) in &servers {
        let want = by_backend.get(*name).copied().unwrap_or(0);
        assert_eq!(
            server.stats.accepted.load(Ordering::Relaxed),
            u64::from(want),
            "{name} accepted"
        );
    }
    let status = list(&lab);
    let vip = &status["vips"][0];
    // Every SYN consults the ring (a new flow); nothing else does.
    assert_eq!(counter(vip, "new_flows"), syns, "new flows vs SYNs sent");
    assert!(syns >= u64::from(N), "{syns} SYNs for {N} connections");
    // The balancer runs natively on a veth, whose driver offers an RX hash:
    // the interface runs the RX-hash root, and every new flow was hashed
    // with the driver's hash (the spread above is that hash's).
    assert_eq!(counter(&status, "hashed_rx"), syns, "new flows by RX hash");
    assert_eq!(counter(&status, "hashed_tuple"), 0, "new flows by 5-tuple");
    let doctor = xdpkit_in(&lab, "lb", &["doctor", "--dev", LB_IN]);
    let doctor = String::from_utf8_lossy(&doctor.stdout);
    assert!(doctor.contains("the RX-hash root runs on"), "{doctor}");
    let packets = real_packets(&status);
    assert_eq!(
        packets.values().sum::<u64>(),
        counter(vip, "packets"),
        "every frame to the VIP went to a real: {packets:?}"
    );
    // Each connection sends about the same number of frames (SYN, ACKs,
    // one line, FIN): the reals' shares of frames are their shares of
    // connections.
    let total = counter(vip, "packets") as f64;
    for (name, count) in [("b1", b1), ("b2", b2)] {
        let share = packets[name] as f64 / total;
        let want = f64::from(count) / f64::from(N);
        assert!(
            (share - want).abs() < 0.03,
            "{name}: {share:.3} of the frames, {want:.3} of the connections"
        );
    }
    assert!(
        total >= 5.0 * f64::from(N),
        "{total} frames for {N} connections"
    );
    // And each real's frames reached it: its `decap` stage took them all
    // out of their IPIP header (the last ones may still be on the way).
    for (name, dev, ..) in &BACKENDS[..2] {
        let want = packets[name];
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut got = decapsulated(&lab, name, dev);
        while got != want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            got = decapsulated(&lab, name, dev);
        }
        assert_eq!(
            got, want,
            "{name}: frames decapsulated vs sent by the balancer"
        );
    }
    assert_eq!(counter(&status, "too_big"), 0);

    // 2. A large upload: full-size segments do not fit the path once
    // encapsulated; the balancer answers "fragmentation needed", the
    // client's kernel lowers its path MTU and the data arrives whole.
    let mut conn = Conn::open(&lab);
    let payload: String = (0..200 * 1024)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let bytes_before = servers[conn.backend.as_str()]
        .stats
        .bytes
        .load(Ordering::Relaxed);
    let timeouts_before = tcpext_counter(&lab, "client", "TCPTimeouts");
    let started = Instant::now();
    let back = conn.echo(&payload);
    eprintln!(
        "200 KiB upload to {} echoed in {:?}, {} retransmission timeouts",
        conn.backend,
        started.elapsed(),
        tcpext_counter(&lab, "client", "TCPTimeouts") - timeouts_before
    );
    assert!(back == payload, "the upload came back changed");
    assert_eq!(
        servers[conn.backend.as_str()]
            .stats
            .bytes
            .load(Ordering::Relaxed)
            - bytes_before,
        payload.len() as u64 + 1
    );
    let too_big = counter(&list(&lab), "too_big");
    eprintln!("ICMP fragmentation needed sent: {too_big}");
    assert!(too_big > 0, "no ICMP fragmentation needed sent");
    // The client's kernel took the balancer's word for the path MTU: the
    // largest IPv4 packet that fits 1500 bytes once IPIP adds its 20.
    let route = lab
        .command("client", "ip")
        .args(["route", "get", "198.18.77.10"])
        .output()
        .unwrap();
    let route = String::from_utf8_lossy(&route.stdout);
    assert!(
        route.contains("mtu 1480"),
        "client's route to the VIP: {route}"
    );
    drop(conn);

    // 3. Established connections keep their backend while b3 is added and
    // b1 drained; new connections avoid b1 and some reach b3.
    let mut long_lived: Vec<Conn> = (0..30).map(|_| Conn::open(&lab)).collect();
    let before = tally(long_lived.iter().map(|c| c.backend.as_str()));
    eprintln!("long-lived connections per backend: {before:?}");
    assert!(before.contains_key("b1") && before.contains_key("b2"));
    lb(
        &lab,
        &["lb", "real", "add", "--dev", LB_IN, VIP, "198.18.75.1"],
    );
    lb(
        &lab,
        &[
            "lb",
            "real",
            "add",
            "--dev",
            LB_IN,
            VIP,
            "198.18.73.1",
            "--weight",
            "0",
        ],
    );
    let echo_all = |conns: &mut Vec<Conn>, round: &str| {
        let lines: HashMap<&str, u64> = servers.iter().map(|(n, s)| (*n, s.lines())).collect();
        for (i, conn) in conns.iter_mut().enumerate() {
            let line = format!("{round} {i}");
            assert_eq!(conn.echo(&line), line, "connection {i} to {}", conn.backend);
        }
        // Each echo was answered by the backend that greeted the connection
        // (another one would have reset it): its server counted the line.
        let per_backend = tally(conns.iter().map(|c| c.backend.as_str()));
        for (name, server) in &servers {
            let want = per_backend.get(*name).copied().unwrap_or(0);
            assert_eq!(
                server.lines() - lines[name],
                u64::from(want),
                "{round}: lines echoed by {name}"
            );
        }
    };
    echo_all(&mut long_lived, "after-change");
    let fresh = tally(short_connections(&lab, 60).iter().map(String::as_str));
    eprintln!("new connections after the change: {fresh:?}");
    assert!(!fresh.contains_key("b1"), "the drained real got new flows");
    assert!(fresh.get("b3").copied().unwrap_or(0) > 0, "b3 got none");

    // 4. A SYN flood from many sources: above the guard's rate new flows
    // are balanced but not remembered, so established ones stay.
    lb(
        &lab,
        &["lb", "config", "--dev", LB_IN, "--max-new-per-sec", "100"],
    );
    let before = list(&lab);
    const FLOOD: u64 = 10_000;
    let flood = syn_flood(&lab, FLOOD as u32);
    let started = Instant::now();
    let sent = lab.send_frames("client", "xktcp-cl", &flood).unwrap();
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(u64::from(sent), FLOOD);
    let after = list(&lab);
    let grew = |name: &str| counter(&after, name) - counter(&before, name);
    let new_flows =
        counter(&after["vips"][0], "new_flows") - counter(&before["vips"][0], "new_flows");
    let guarded = grew("guarded");
    eprintln!("flood of {FLOOD} SYNs in {secs:.2} s: {new_flows} new flows, {guarded} guarded");
    assert!(
        new_flows >= FLOOD * 9 / 10,
        "{new_flows} of {FLOOD} SYNs seen"
    );
    // Each CPU remembers at most its share of 100 (rounded up) per
    // one-second window; the flood spans at most secs + 1 windows.
    let cpus = possible_cpus();
    let remembered = 100u64.div_ceil(cpus) * cpus * (secs.ceil() as u64 + 1);
    assert!(
        guarded + remembered >= new_flows,
        "{guarded} of {new_flows} new flows guarded in {secs:.2} s ({cpus} CPUs)"
    );
    assert!(guarded >= FLOOD / 2, "{guarded} of {FLOOD} SYNs guarded");
    assert!(guarded <= new_flows);
    echo_all(&mut long_lived, "after-flood");
    let fresh = short_connections(&lab, 10);
    assert!(!fresh.iter().any(|b| b == "b1"), "{fresh:?}");

    // 5. `--flow-hash tuple`: new flows are hashed by their 5-tuple, the
    // RX hash ignored; established ones keep their real. (The guard off
    // again: with it, later frames of unremembered flows consult the ring
    // too, and each is hashed.)
    lb(
        &lab,
        &[
            "lb",
            "config",
            "--dev",
            LB_IN,
            "--flow-hash",
            "tuple",
            "--max-new-per-sec",
            "0",
        ],
    );
    let before = list(&lab);
    let syns_before = syns_sent(&lab);
    let fresh = short_connections(&lab, 20);
    assert!(!fresh.iter().any(|b| b == "b1"), "{fresh:?}");
    let syns = syns_sent(&lab) - syns_before;
    let after = list(&lab);
    let grew = |name: &str| counter(&after, name) - counter(&before, name);
    let new_flows =
        counter(&after["vips"][0], "new_flows") - counter(&before["vips"][0], "new_flows");
    assert!(new_flows >= syns, "{new_flows} new flows for {syns} SYNs");
    assert_eq!(grew("hashed_tuple"), new_flows, "new flows by 5-tuple");
    assert_eq!(grew("hashed_rx"), 0, "new flows by RX hash");
    assert_eq!(after["settings"]["flow_hash"], "tuple");
    echo_all(&mut long_lived, "after-tuple-hash");
    drop(long_lived);
    drop(servers);
}
