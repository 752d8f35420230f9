//! The `route` program through BPF_PROG_TEST_RUN inside a router
//! namespace with real routes and neighbours (the FIB lookup of a test run
//! is the calling thread's namespace's): crafted frames forwarded (TTL or
//! hop limit lowered, IPv4 checksum right, MACs of the next hop) or handed
//! to the stack for each reason; then the kernel against the model on
//! random and malformed frames, the model's FIB describing the same table.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::PacketBuilder;
use proptest::{
    prelude::*,
    test_runner::{Config, TestRunner},
};
use xdpkit::programs::route::{
    model::{self, FibAnswer, FibQuery},
    simulate::{Simulated, Simulator},
};
use xdpkit_common::route::RouteOutcome;
use xdpkit_lab::lab::{require_root, Lab};

const CLIENT_MAC: [u8; 6] = [0x02, 0x72, 0, 0, 0, 0x0a];
const SERVER_MAC: [u8; 6] = [0x02, 0x72, 0, 0, 0, 0x0b];
const C4: Ipv4Addr = Ipv4Addr::new(198, 18, 10, 2);
const S4: Ipv4Addr = Ipv4Addr::new(198, 18, 20, 2);
const C6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x10, 0, 0, 0, 0, 2);
const S6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x20, 0, 0, 0, 0, 2);

/// The router namespace `r` with `rtt-a` (198.18.10.1/24,
/// 2001:db8:10::1/64) and `rtt-b` (198.18.20.1/24, 2001:db8:20::1/64),
/// forwarding on, permanent neighbours for .2 / ::2 on both sides, and
/// 198.18.30.0/24 and 2001:db8:30::/64 via the server.
struct Router {
    lab: Lab,
    a: u32,
    b: u32,
    a_mac: [u8; 6],
    b_mac: [u8; 6],
}

fn router(prefix: &str) -> Router {
    let lab = Lab::builder(prefix)
        .namespace("r")
        .namespace("x")
        .veth(
            "r",
            &format!("{prefix}-a"),
            Some("198.18.10.1/24"),
            "x",
            &format!("{prefix}-ca"),
            None,
        )
        .veth(
            "r",
            &format!("{prefix}-b"),
            Some("198.18.20.1/24"),
            "x",
            &format!("{prefix}-sb"),
            None,
        )
        .build()
        .expect("build lab");
    let a = format!("{prefix}-a");
    let b = format!("{prefix}-b");
    let sh = |args: &[&str]| {
        let out = lab.command("r", args[0]).args(&args[1..]).output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
    };
    sh(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    sh(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    sh(&["ip", "addr", "add", "2001:db8:10::1/64", "dev", &a, "nodad"]);
    sh(&["ip", "addr", "add", "2001:db8:20::1/64", "dev", &b, "nodad"]);
    lab.static_neighbor("r", &a, C4.into(), CLIENT_MAC).unwrap();
    lab.static_neighbor("r", &a, C6.into(), CLIENT_MAC).unwrap();
    lab.static_neighbor("r", &b, S4.into(), SERVER_MAC).unwrap();
    lab.static_neighbor("r", &b, S6.into(), SERVER_MAC).unwrap();
    sh(&["ip", "route", "add", "198.18.30.0/24", "via", "198.18.20.2"]);
    sh(&[
        "ip",
        "-6",
        "route",
        "add",
        "2001:db8:30::/64",
        "via",
        "2001:db8:20::2",
    ]);
    Router {
        a: lab.ifindex("r", &a).unwrap(),
        b: lab.ifindex("r", &b).unwrap(),
        a_mac: lab.mac("r", &a).unwrap(),
        b_mac: lab.mac("r", &b).unwrap(),
        lab,
    }
}

impl Router {
    /// Runs `frames` arriving on side a, with both sides as ports.
    fn simulate(&self, prefix: &str, frames: &[Vec<u8>]) -> Vec<Simulated> {
        let (a, b) = (format!("{prefix}-a"), format!("{prefix}-b"));
        let frames = frames.to_vec();
        self.lab
            .run_in("r", move || {
                let mut sim = Simulator::new(&a, &[a.clone(), b]).unwrap();
                frames
                    .iter()
                    .enumerate()
                    .map(|(i, f)| sim.run(i, f).unwrap())
                    .collect()
            })
            .unwrap()
    }

    /// The model's FIB: what the kernel answers in this namespace.
    fn fib(&self, q: &FibQuery) -> FibAnswer {
        const NOT_FWDED: u32 = 4;
        const NO_NEIGH: u32 = 7;
        const FRAG_NEEDED: u32 = 8;
        // (subnet, host part, routed via the server)
        let (side, host, via_server) = match q.dst {
            IpAddr::V4(d) => {
                let o = d.octets();
                if o[..2] != [198, 18] || ![10, 20, 30].contains(&o[2]) {
                    return FibAnswer::Code(NOT_FWDED);
                }
                (o[2], u64::from(o[3]), o[2] == 30)
            }
            IpAddr::V6(d) => {
                let s = d.segments();
                if s[..2] != [0x2001, 0xdb8] || ![0x10, 0x20, 0x30].contains(&s[2]) || s[3] != 0 {
                    return FibAnswer::Code(NOT_FWDED);
                }
                let host = u128::from(d) as u64;
                (s[2] as u8 / 0x10 * 10, host, s[2] == 0x30)
            }
        };
        // The router's own addresses, the IPv4 broadcasts and the IPv6
        // subnet-router anycast addresses are local.
        let local =
            host == 1 || (q.dst.is_ipv4() && host == 255) || (!q.dst.is_ipv4() && host == 0);
        if !via_server && local {
            return FibAnswer::Code(NOT_FWDED);
        }
        if q.tot_len > 1500 {
            return FibAnswer::Code(FRAG_NEEDED);
        }
        let (ifindex, smac, dmac) = match (side, host, via_server) {
            (_, _, true) => (self.b, self.b_mac, SERVER_MAC),
            (10, 2, _) => (self.a, self.a_mac, CLIENT_MAC),
            (20, 2, _) => (self.b, self.b_mac, SERVER_MAC),
            _ => return FibAnswer::Code(NO_NEIGH),
        };
        FibAnswer::Forward {
            ifindex,
            smac,
            dmac,
        }
    }
}

fn udp4(dst: Ipv4Addr, ttl: u8, to: [u8; 6]) -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, to)
        .ipv4(C4.octets(), dst.octets(), ttl)
        .udp(40000, 9)
        .write(&mut f, &[0xab; 32])
        .unwrap();
    f
}

fn tcp6(dst: Ipv6Addr, hops: u8, to: [u8; 6]) -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, to)
        .ipv6(C6.octets(), dst.octets(), hops)
        .tcp(40000, 80, 1, 65535)
        .syn()
        .write(&mut f, &[])
        .unwrap();
    f
}

#[test]
fn forwards_v4_and_v6_and_hands_the_stack_what_it_must_see() {
    if !require_root("forwards_v4_and_v6_and_hands_the_stack_what_it_must_see") {
        return;
    }
    let r = router("rtt");
    let to = r.a_mac;
    let mut frag = udp4(S4, 64, to);
    // More fragments, with the checksum made right again.
    frag[14 + 6] = 0x20;
    frag[14 + 10..14 + 12].copy_from_slice(&[0, 0]);
    let sum = frag[14..34]
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum::<u32>();
    let sum = (sum & 0xffff) + (sum >> 16);
    frag[14 + 10..14 + 12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    let mut arp = udp4(S4, 64, to);
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    let cases: Vec<(&str, Vec<u8>, RouteOutcome)> = vec![
        (
            "udp4 to the server",
            udp4(S4, 64, to),
            RouteOutcome::Forwarded,
        ),
        (
            "udp4 via the server",
            udp4(Ipv4Addr::new(198, 18, 30, 9), 2, to),
            RouteOutcome::Forwarded,
        ),
        (
            "tcp6 to the server",
            tcp6(S6, 64, to),
            RouteOutcome::Forwarded,
        ),
        (
            "tcp6 via the server",
            tcp6(Ipv6Addr::new(0x2001, 0xdb8, 0x30, 0, 0, 0, 0, 9), 2, to),
            RouteOutcome::Forwarded,
        ),
        ("ttl 1", udp4(S4, 1, to), RouteOutcome::TtlExpired),
        ("hop limit 1", tcp6(S6, 1, to), RouteOutcome::TtlExpired),
        (
            "no neighbour v4",
            udp4(Ipv4Addr::new(198, 18, 20, 3), 64, to),
            RouteOutcome::NoNeighbour,
        ),
        (
            "no neighbour v6",
            tcp6(Ipv6Addr::new(0x2001, 0xdb8, 0x20, 0, 0, 0, 0, 3), 64, to),
            RouteOutcome::NoNeighbour,
        ),
        ("fragment", frag, RouteOutcome::Fragment),
        ("not IP", arp, RouteOutcome::NotIp),
        (
            "to the router itself",
            udp4(Ipv4Addr::new(198, 18, 20, 1), 64, to),
            RouteOutcome::NotForwarded,
        ),
        (
            "no route",
            udp4(Ipv4Addr::new(198, 19, 0, 1), 64, to),
            RouteOutcome::NotForwarded,
        ),
        (
            "broadcast MAC",
            udp4(S4, 64, [0xff; 6]),
            RouteOutcome::LinkMulticast,
        ),
    ];
    let frames: Vec<Vec<u8>> = cases.iter().map(|c| c.1.clone()).collect();
    let got = r.simulate("rtt", &frames);
    let mut failures = Vec::new();
    for ((name, frame, want), sim) in cases.iter().zip(&got) {
        if sim.outcome != want.name() {
            failures.push(format!("{name}: {} want {}", sim.outcome, want.name()));
            continue;
        }
        if *want != RouteOutcome::Forwarded {
            if sim.output != *frame || sim.verdict != "pass" {
                failures.push(format!("{name}: handed on changed or not passed"));
            }
            continue;
        }
        let out = &sim.output;
        assert_eq!(sim.verdict, "redirect", "{name}");
        assert_eq!(sim.egress.as_deref(), Some("rtt-b"), "{name}");
        assert_eq!(&out[..6], &SERVER_MAC, "{name}: next hop's MAC");
        assert_eq!(&out[6..12], &r.b_mac, "{name}: egress MAC");
        let (ttl_at, v4) = if frame[12] == 0x08 {
            (22, true)
        } else {
            (21, false)
        };
        assert_eq!(out[ttl_at], frame[ttl_at] - 1, "{name}: TTL lowered");
        assert_eq!(sim.ttl, Some((frame[ttl_at], frame[ttl_at] - 1)));
        if v4 {
            assert!(model::checksum_ok(&out[14..34]), "{name}: checksum");
            let parsed = etherparse::SlicedPacket::from_ethernet(out).expect("parses");
            assert!(parsed.net.is_some());
        }
        assert_eq!(&out[12..ttl_at], &frame[12..ttl_at], "{name}");
        // Past the TTL only the IPv4 checksum changes.
        let rest = if v4 { 26 } else { ttl_at + 1 };
        assert_eq!(
            &out[rest..],
            &frame[rest..],
            "{name}: the rest of the frame"
        );
    }
    // The next hop of a routed destination is the gateway.
    assert_eq!(got[1].next_hop, Some(IpAddr::V4(S4)));
    assert_eq!(got[3].next_hop, Some(IpAddr::V6(S6)));
    assert_eq!(
        got[6].next_hop,
        Some(IpAddr::V4(Ipv4Addr::new(198, 18, 20, 3)))
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A frame for the property test: a valid one from a grid of addresses,
/// protocols, TTLs and sizes, then maybe damaged.
fn frame_strategy(to: [u8; 6]) -> impl Strategy<Value = Vec<u8>> {
    let host = prop_oneof![
        Just(1u16),
        Just(2),
        Just(3),
        Just(9),
        Just(255),
        any::<u16>()
    ];
    let net = prop_oneof![Just(10u8), Just(20), Just(30), Just(40)];
    let martian = prop::sample::select(vec![0u8, 1, 2, 3, 4, 5]);
    (
        any::<bool>(),
        net,
        host,
        prop::sample::select(vec![0u8, 1, 2, 64, 255]),
        prop::sample::select(vec![0usize, 1, 20, 600, 1440, 1470, 1500]),
        0u8..4,
        martian,
        prop::collection::vec((0usize..80, any::<u8>()), 0..3),
        prop_oneof![Just(None), (14usize..80).prop_map(Some)],
        prop::sample::select(vec![
            to,
            to,
            to,
            [0xff; 6],
            [0x33, 0x33, 0, 0, 0, 1],
            [0x02, 0, 0, 0, 0, 0x99],
        ]),
    )
        .prop_map(
            move |(v4, net, host, ttl, payload, proto, martian, damage, cut, dmac)| {
                let mut f = Vec::new();
                let eth = PacketBuilder::ethernet2(CLIENT_MAC, dmac);
                let data = vec![0x5a; payload];
                if v4 {
                    let mut src = C4.octets();
                    // Not the network address, whose route type varies by kernel.
                    let mut dst = [198, 18, net, (host as u8).max(1)];
                    match martian {
                        0 => src = [127, 0, 0, 1],
                        1 => dst = [224, 0, 0, 5],
                        2 => dst = [0, 1, 2, 3],
                        _ => {}
                    }
                    let ip = eth.ipv4(src, dst, ttl);
                    match proto {
                        0 => ip.udp(1, 2).write(&mut f, &data),
                        1 => ip.tcp(1, 2, 3, 4).write(&mut f, &data),
                        2 => ip.icmpv4_echo_request(1, 2).write(&mut f, &data),
                        _ => ip.write(&mut f, etherparse::IpNumber(200), &data),
                    }
                    .unwrap();
                } else {
                    let mut src = C6.octets();
                    let mut dst =
                        Ipv6Addr::new(0x2001, 0xdb8, u16::from(net) / 10 * 0x10, 0, 0, 0, 0, host)
                            .octets();
                    match martian {
                        0 => src = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1).octets(),
                        1 => dst = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1).octets(),
                        2 => dst = Ipv6Addr::LOCALHOST.octets(),
                        _ => {}
                    }
                    let ip = eth.ipv6(src, dst, ttl);
                    match proto {
                        0 => ip.udp(1, 2).write(&mut f, &data),
                        1 => ip.tcp(1, 2, 3, 4).write(&mut f, &data),
                        2 => ip.icmpv6_echo_request(1, 2).write(&mut f, &data),
                        _ => ip.write(&mut f, etherparse::IpNumber(59), &data),
                    }
                    .unwrap();
                    if proto == 3 {
                        // Hop-by-hop, fragment or no next header (etherparse
                        // writes extension headers only from their structs).
                        f[20] = [0u8, 44, 59][host as usize % 3];
                    }
                }
                for (at, byte) in damage {
                    if let Some(b) = f.get_mut(at) {
                        *b = byte;
                    }
                }
                if let Some(len) = cut {
                    f.truncate(len.max(14));
                }
                f
            },
        )
}

#[test]
fn kernel_matches_the_model_on_random_and_malformed_frames() {
    if !require_root("kernel_matches_the_model_on_random_and_malformed_frames") {
        return;
    }
    let r = router("rtp");
    let mut runner = TestRunner::new(Config {
        cases: 100,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = prop::collection::vec(frame_strategy(r.a_mac), 500);
    let checked = std::cell::Cell::new(0usize);
    let seen = std::cell::RefCell::new(std::collections::BTreeSet::new());
    runner
        .run(&strategy, |frames| {
            let got = r.simulate("rtp", &frames);
            for (frame, sim) in frames.iter().zip(&got) {
                let want = model::decide(frame, |q| r.fib(q), |i| i == r.a || i == r.b);
                prop_assert_eq!(
                    sim.outcome,
                    want.outcome.name(),
                    "frame {}",
                    frame.iter().map(|b| format!("{b:02x}")).collect::<String>()
                );
                prop_assert_eq!(&sim.output, &want.output, "{}", sim.outcome);
                seen.borrow_mut().insert(sim.outcome);
                checked.set(checked.get() + 1);
            }
            Ok(())
        })
        .unwrap();
    let seen = seen.into_inner();
    println!("{} frames, outcomes seen: {seen:?}", checked.get());
    for must in [
        "forwarded",
        "not_ip",
        "malformed",
        "link_multicast",
        "martian",
        "options",
        "fragment",
        "ttl_expired",
        "not_forwarded",
        "no_neighbour",
        "too_big",
    ] {
        assert!(seen.contains(must), "no frame was {must}: {seen:?}");
    }
}

#[test]
fn an_egress_that_is_not_a_port_goes_to_the_stack() {
    if !require_root("an_egress_that_is_not_a_port_goes_to_the_stack") {
        return;
    }
    let r = router("rtn");
    let frame = udp4(S4, 64, r.a_mac);
    let got = r
        .lab
        .run_in("r", move || {
            let mut sim = Simulator::new("rtn-a", &["rtn-a".to_string()]).unwrap();
            sim.run(0, &frame).unwrap()
        })
        .unwrap();
    assert_eq!(got.outcome, "not_port");
    assert_eq!(got.egress.as_deref(), Some("rtn-b"));
    assert_eq!(got.verdict, "pass");
}

/// A frame larger than a page (multi-buffer in the program) is judged by
/// its whole length: "too big" for a 1500-byte egress MTU (the FIB's MTU
/// check gets the IP header's length), forwarded whole once the egress
/// takes 9000 bytes.
#[test]
fn jumbo_frames_are_checked_against_the_egress_mtu_and_forwarded_whole() {
    if !require_root("jumbo_frames_are_checked_against_the_egress_mtu_and_forwarded_whole") {
        return;
    }
    let r = router("rtj");
    let mut frame = Vec::new();
    let payload: Vec<u8> = (0..9014 - 42).map(|i| (i % 251) as u8).collect();
    PacketBuilder::ethernet2(CLIENT_MAC, r.a_mac)
        .ipv4(C4.octets(), S4.octets(), 64)
        .udp(40000, 9)
        .write(&mut frame, &payload)
        .unwrap();
    let got = r.simulate("rtj", std::slice::from_ref(&frame));
    assert_eq!(got[0].outcome, RouteOutcome::TooBig.name(), "{:?}", got[0]);
    assert_eq!(got[0].output, frame, "handed on untouched");
    for dev in ["rtj-a", "rtj-b"] {
        let out = r
            .lab
            .command("r", "ip")
            .args(["link", "set", "dev", dev, "mtu", "9000"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let got = r.simulate("rtj", std::slice::from_ref(&frame));
    assert_eq!(
        got[0].outcome,
        RouteOutcome::Forwarded.name(),
        "{:?}",
        got[0]
    );
    let out = &got[0].output;
    assert_eq!(out.len(), frame.len(), "whole");
    assert_eq!(out[22], 63, "TTL lowered");
    assert!(model::checksum_ok(&out[14..34]));
    assert_eq!(&out[26..], &frame[26..], "the rest of the frame");
}
