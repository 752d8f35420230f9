//! The router lab: a client network and a server network joined by a
//! router namespace that forwards with `xdpkit route` (the kernel's
//! routes and neighbours, IPv4 and IPv6). Ping and TCP work through it,
//! the counters show the frames XDP forwarded, TTLs come out lowered, and
//! a next hop not resolved yet is left to the stack, then forwarded.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    process::Output,
    time::Duration,
};

use serde_json::Value;
use xdpkit_lab::lab::{require_root, Lab};

mod common;

use common::{ok, xdpkit_in};

const RA: &str = "rtl-ra";
const RB: &str = "rtl-rb";

fn router_lab() -> Lab {
    let lab = Lab::builder("rtl")
        .namespace("c")
        .namespace("r")
        .namespace("s")
        .veth(
            "c",
            "rtl-c0",
            Some("198.18.10.2/24"),
            "r",
            RA,
            Some("198.18.10.1/24"),
        )
        .veth(
            "r",
            RB,
            Some("198.18.20.1/24"),
            "s",
            "rtl-s0",
            Some("198.18.20.2/24"),
        )
        // XDP-redirected frames reach a veth's peer only with GRO (or XDP) there.
        .gro("c", "rtl-c0")
        .gro("s", "rtl-s0")
        .build()
        .expect("build the router lab");
    for (ns, args) in [
        (
            "c",
            vec![
                "ip",
                "addr",
                "add",
                "2001:db8:10::2/64",
                "dev",
                "rtl-c0",
                "nodad",
            ],
        ),
        (
            "r",
            vec!["ip", "addr", "add", "2001:db8:10::1/64", "dev", RA, "nodad"],
        ),
        (
            "r",
            vec!["ip", "addr", "add", "2001:db8:20::1/64", "dev", RB, "nodad"],
        ),
        (
            "s",
            vec![
                "ip",
                "addr",
                "add",
                "2001:db8:20::2/64",
                "dev",
                "rtl-s0",
                "nodad",
            ],
        ),
        (
            "c",
            vec!["ip", "route", "add", "default", "via", "198.18.10.1"],
        ),
        (
            "c",
            vec![
                "ip",
                "-6",
                "route",
                "add",
                "default",
                "via",
                "2001:db8:10::1",
            ],
        ),
        (
            "s",
            vec!["ip", "route", "add", "default", "via", "198.18.20.1"],
        ),
        (
            "s",
            vec![
                "ip",
                "-6",
                "route",
                "add",
                "default",
                "via",
                "2001:db8:20::1",
            ],
        ),
        ("r", vec!["sysctl", "-qw", "net.ipv4.ip_forward=1"]),
        ("r", vec!["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]),
    ] {
        let out = lab.command(ns, args[0]).args(&args[1..]).output().unwrap();
        assert!(out.status.success(), "{ns}: {args:?}: {out:?}");
    }
    lab
}

fn xdpkit(lab: &Lab, args: &[&str]) -> Output {
    xdpkit_in(lab, "r", args)
}

/// Frames of outcome `name` on the route stage of `dev`.
fn count(lab: &Lab, dev: &str, name: &str) -> u64 {
    let status: Value = serde_json::from_str(&ok(&xdpkit(
        lab,
        &["route", "status", "--dev", dev, "--json"],
    )))
    .unwrap();
    status["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["outcome"] == name)
        .and_then(|o| o["packets"].as_u64())
        .unwrap_or_else(|| panic!("no outcome {name} in {status}"))
}

/// `ping -c N` from the client; returns its output.
fn ping(lab: &Lab, dst: &str, n: u32) -> String {
    let out = lab
        .command("c", "ping")
        .args(["-c", &n.to_string(), "-i", "0.2", "-W", "5", dst])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "ping {dst}: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// A TCP exchange: the client sends `bytes`, the server echoes them back.
fn tcp_echo(lab: &Lab, server: SocketAddr, bytes: usize) {
    let listener = lab
        .run_in("s", move || TcpListener::bind(server))
        .unwrap()
        .expect("bind the server");
    std::thread::scope(|scope| {
        let served = scope.spawn(move || {
            let (mut conn, _) = listener.accept().expect("accept");
            conn.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut buf = vec![0u8; bytes];
            conn.read_exact(&mut buf).expect("read the request");
            conn.write_all(&buf).expect("echo");
        });
        let data: Vec<u8> = (0..bytes).map(|i| (i * 7 % 251) as u8).collect();
        let back = lab
            .run_in("c", || {
                let mut conn = TcpStream::connect_timeout(&server, Duration::from_secs(5))?;
                conn.set_read_timeout(Some(Duration::from_secs(10)))?;
                conn.write_all(&data)?;
                let mut back = vec![0u8; bytes];
                conn.read_exact(&mut back)?;
                Ok::<_, std::io::Error>(back)
            })
            .unwrap()
            .expect("the client's exchange");
        assert!(back == data, "{server}: the echo differs");
        served.join().unwrap();
    });
}

#[test]
fn the_router_lab_forwards_ping_and_tcp_in_xdp() {
    if !require_root("the_router_lab_forwards_ping_and_tcp_in_xdp") {
        return;
    }
    let lab = router_lab();
    let enabled = xdpkit(&lab, &["route", "enable", RA, RB]);
    let text = ok(&enabled);
    assert!(text.contains("forwarding between rtl-ra, rtl-rb"), "{text}");
    let notes = String::from_utf8_lossy(&enabled.stderr);
    assert!(
        notes.contains("rtl-ra is a veth"),
        "the veth advice: {notes}"
    );
    let ports = ok(&xdpkit(&lab, &["route", "ports", "list", "--dev", RA]));
    assert_eq!(ports.lines().collect::<Vec<_>>(), [RA, RB]);
    // The ports are the stage's settings: exported, and applied back as is.
    let exported = ok(&xdpkit(&lab, &["export"]));
    assert!(
        exported.contains("[interfaces.rtl-ra.route]") && exported.contains("\"rtl-rb\""),
        "{exported}"
    );
    let config = std::env::temp_dir().join(format!("rtl-{}.toml", std::process::id()));
    std::fs::write(&config, &exported).unwrap();
    let applied = ok(&xdpkit(&lab, &["apply", "-f", config.to_str().unwrap()]));
    std::fs::remove_file(&config).unwrap();
    assert!(applied.contains("no changes"), "{applied}");

    // The router knows no neighbour yet: the first request goes to the
    // stack, which resolves the server (IPv6 ND may take its 1 s
    // retransmission), then requests go by XDP.
    for (dst, what) in [("198.18.20.2", "IPv4"), ("2001:db8:20::2", "IPv6")] {
        let before = (
            count(&lab, RA, "no_neighbour"),
            count(&lab, RA, "forwarded"),
        );
        let first = ping(&lab, dst, 1);
        assert!(
            first.contains("ttl=63"),
            "{what}: TTL lowered once: {first}"
        );
        let missed = count(&lab, RA, "no_neighbour");
        assert!(
            missed > before.0,
            "{what}: the first request waited for the neighbour"
        );
        let replies = count(&lab, RB, "forwarded");
        let pinged = ping(&lab, dst, 5);
        assert!(pinged.contains("ttl=63"), "{what}: {pinged}");
        assert_eq!(count(&lab, RA, "no_neighbour"), missed, "{what}: resolved");
        let forwarded = count(&lab, RA, "forwarded") - before.1;
        assert!(
            forwarded >= 5,
            "{what}: requests forwarded in XDP: {forwarded}"
        );
        assert!(
            count(&lab, RB, "forwarded") >= replies + 5,
            "{what}: replies in XDP"
        );
    }

    // TCP both ways, both families: hundreds of segments through XDP.
    let (a, b) = (count(&lab, RA, "forwarded"), count(&lab, RB, "forwarded"));
    tcp_echo(&lab, "198.18.20.2:8080".parse().unwrap(), 1 << 20);
    tcp_echo(&lab, "[2001:db8:20::2]:8081".parse().unwrap(), 1 << 20);
    let (a2, b2) = (count(&lab, RA, "forwarded"), count(&lab, RB, "forwarded"));
    assert!(
        a2 - a > 1000 && b2 - b > 1000,
        "TCP in XDP: {a}->{a2}, {b}->{b2}"
    );

    // simulate agrees with what the traffic did.
    let sim = ok(&xdpkit(
        &lab,
        &[
            "route",
            "simulate",
            "--dev",
            RA,
            "--src",
            "198.18.10.2",
            "--dst",
            "198.18.20.2",
        ],
    ));
    assert!(
        sim.starts_with("0 forwarded via rtl-rb next-hop 198.18.20.2")
            && sim.contains("ttl 64->63"),
        "{sim}"
    );
    let sim = ok(&xdpkit(
        &lab,
        &[
            "route",
            "simulate",
            "--dev",
            RA,
            "--src",
            "198.18.10.2",
            "--dst",
            "198.18.20.2",
            "--ttl",
            "1",
        ],
    ));
    assert!(sim.starts_with("0 ttl_expired"), "{sim}");
    let sim = ok(&xdpkit(
        &lab,
        &[
            "route",
            "simulate",
            "--dev",
            RA,
            "--src",
            "2001:db8:10::2",
            "--dst",
            "2001:db8:20::9",
            "--json",
        ],
    ));
    let sim: Value = serde_json::from_str(&sim).unwrap();
    assert_eq!(sim["outcome"], "no_neighbour", "{sim}");
    assert_eq!(sim["egress"], RB, "{sim}");

    // A capture: every frame's fate, one JSON line each.
    let ra_mac = lab.mac("r", RA).unwrap();
    let mut frames = Vec::new();
    for (dst, ttl) in [
        ([198, 18, 20, 2], 64u8),
        ([198, 18, 20, 2], 1),
        ([198, 18, 10, 1], 64),
    ] {
        let mut f = Vec::new();
        etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], ra_mac)
            .ipv4([198, 18, 10, 2], dst, ttl)
            .udp(1000, 2000)
            .write(&mut f, &[0; 8])
            .unwrap();
        frames.push(f);
    }
    let pcap = std::env::temp_dir().join(format!("rtl-{}.pcap", std::process::id()));
    {
        let mut w =
            pcap_file::pcap::PcapWriter::new(std::fs::File::create(&pcap).unwrap()).unwrap();
        for (i, f) in frames.iter().enumerate() {
            w.write_packet(&pcap_file::pcap::PcapPacket::new(
                Duration::from_millis(i as u64),
                f.len() as u32,
                f,
            ))
            .unwrap();
        }
    }
    let lines = ok(&xdpkit(
        &lab,
        &[
            "route",
            "simulate",
            "--dev",
            RA,
            "--pcap",
            pcap.to_str().unwrap(),
            "--json",
        ],
    ));
    std::fs::remove_file(&pcap).unwrap();
    let outcomes: Vec<String> = lines
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["outcome"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        outcomes,
        ["forwarded", "ttl_expired", "not_forwarded"],
        "{lines}"
    );

    // `status` shows the stage's outcomes too.
    let status: Value = serde_json::from_str(&ok(&xdpkit(
        &lab,
        &["status", "--dev", RA, "--json", "--interval", "0"],
    )))
    .unwrap();
    assert!(status.to_string().contains("no_neighbour"), "{status}");

    // Ports change in place; an egress that is not a port goes to the stack
    // (which still forwards: ping works, the replies by XDP no more).
    ok(&xdpkit(&lab, &["route", "ports", "del", "--dev", RB, RA]));
    let before = count(&lab, RB, "not_port");
    ping(&lab, "198.18.20.2", 3);
    assert!(
        count(&lab, RB, "not_port") >= before + 3,
        "replies left to the stack"
    );
    ok(&xdpkit(&lab, &["route", "ports", "add", "--dev", RB, RA]));

    // Usage errors exit 2 and change nothing.
    let bad = xdpkit(&lab, &["route", "ports", "del", "--dev", RA, "lo"]);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    let bad = xdpkit(&lab, &["route", "enable", RA, "nosuch0"]);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("nosuch0"));

    // disable: the stack forwards again, the state is gone.
    ok(&xdpkit(&lab, &["route", "disable", RA, RB]));
    ping(&lab, "198.18.20.2", 2);
    let gone = xdpkit(&lab, &["route", "status", "--dev", RA]);
    assert_eq!(gone.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&gone.stderr).contains("no xdpkit route stage on 'rtl-ra'"));
}
