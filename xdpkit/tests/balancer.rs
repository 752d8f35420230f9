//! The `balancer` program through BPF_PROG_TEST_RUN: crafted frames with
//! the encapsulated bytes read back by an independent parser (etherparse),
//! flows keeping their real when the ring changes, and the kernel against
//! the model on random VIP sets and frames.

use std::net::IpAddr;

use etherparse::{NetSlice, PacketBuilder, SlicedPacket};
use proptest::{
    prelude::*,
    test_runner::{Config, TestRunner},
};
use xdpkit::{
    programs::{
        balancer::{
            model::{decide_with_rx_hash, Flows},
            tables::{self, RealSpec, Tables, VipSpec},
            write_tables, Balancer,
        },
        decap::Decap,
        Program as _,
    },
    testrun::Alone,
    XdpAction,
};
use xdpkit_common::{
    balancer::{LbConfig, LbOutcome, ENCAP_GUE, GUE_PORT, PROTO_TCP, PROTO_UDP, VIP_QUIC},
    chain::RX_HASH_MAGIC,
};
use xdpkit_lab::lab::require_root;

const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

fn config() -> LbConfig {
    LbConfig {
        src4: u32::from_ne_bytes([198, 19, 0, 0]),
        src4_bits: 16,
        src6: [0x20, 0x01, 0x0d, 0xb8, 0xff, 0, 0, 0],
        gue_port: GUE_PORT,
        ..LbConfig::default()
    }
}

fn vip(addr: &str, port: u16, proto: u8, reals: &[(&str, u32)]) -> VipSpec {
    VipSpec {
        key: tables::vip_key(addr.parse().unwrap(), port, proto),
        ring: 251,
        flags: 0,
        reals: reals
            .iter()
            .map(|(a, w)| RealSpec {
                addr: a.parse().unwrap(),
                weight: *w,
            })
            .collect(),
    }
}

fn udp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .ipv4(src, dst, 64)
        .udp(sport, dport)
        .write(&mut f, &[0xab; 22])
        .unwrap();
    f
}

fn tcp6(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, syn: bool) -> Vec<u8> {
    let (IpAddr::V6(s), IpAddr::V6(d)) = (src, dst) else {
        panic!("IPv6 addresses")
    };
    let mut f = Vec::new();
    let b = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .ipv6(s.octets(), d.octets(), 64)
        .tcp(sport, dport, 1, 65535);
    let b = if syn { b.syn() } else { b.ack(1) };
    b.write(&mut f, &[0x5a; 10]).unwrap();
    f
}

/// A balancer with `vips` in its maps, and the tables written.
fn balancer(vips: &[VipSpec]) -> (Alone, Tables) {
    balancer_with(config(), vips)
}

/// [`balancer`] with settings `cfg`.
fn balancer_with(cfg: LbConfig, vips: &[VipSpec]) -> (Alone, Tables) {
    let t = tables::build(cfg, vips).unwrap();
    let mut alone = Alone::new(&Balancer).unwrap();
    write_tables(alone.maps(), &t).unwrap();
    (alone, t)
}

/// Runs `frame` through the kernel and the model; they must agree.
fn check(alone: &mut Alone, t: &Tables, flows: &mut Flows, frame: &[u8]) -> (XdpAction, Vec<u8>) {
    check_meta(alone, t, flows, None, frame)
}

/// [`check`] with metadata in front of the frame: `(hash, magic)` as the
/// RX-hash root writes it (a wrong magic: someone else's metadata).
fn check_meta(
    alone: &mut Alone,
    t: &Tables,
    flows: &mut Flows,
    meta: Option<(u32, u32)>,
    frame: &[u8],
) -> (XdpAction, Vec<u8>) {
    let got = match meta {
        Some((hash, magic)) => {
            let bytes: Vec<u8> = [hash, magic].iter().flat_map(|w| w.to_ne_bytes()).collect();
            alone.run_with_meta(&bytes, frame, 1).unwrap()
        }
        None => alone.run(frame, 1).unwrap(),
    };
    let rx_hash = meta.and_then(|(hash, magic)| (magic == RX_HASH_MAGIC).then_some(hash));
    let want = decide_with_rx_hash(t, flows, &mut None, rx_hash, frame);
    let verdict = match want.outcome.decision {
        xdpkit::model::Decision::Verdict(v) => v,
        // Alone, "next" passes.
        xdpkit::model::Decision::Next => XdpAction::Pass,
    };
    assert_eq!(got.verdict, Some(verdict), "verdict of {frame:02x?}");
    assert_eq!(got.output, want.outcome.output, "output of {frame:02x?}");
    (verdict, got.output)
}

#[test]
fn frames_to_a_vip_leave_encapsulated_toward_a_real() {
    if !require_root("frames_to_a_vip_leave_encapsulated_toward_a_real") {
        return;
    }
    let (mut alone, t) = balancer(&[
        vip(
            "198.18.1.10",
            53,
            PROTO_UDP,
            &[("198.18.2.1", 1), ("198.18.2.2", 1)],
        ),
        vip("2001:db8:1::10", 443, PROTO_TCP, &[("2001:db8:2::1", 1)]),
        vip("198.18.1.11", 80, PROTO_UDP, &[("2001:db8:2::7", 1)]),
    ]);
    let mut flows = Flows::new();

    // IPIP: an outer IPv4 header toward one of the two reals.
    let frame = udp4([198, 18, 0, 5], [198, 18, 1, 10], 40000, 53);
    let (v, out) = check(&mut alone, &t, &mut flows, &frame);
    assert_eq!(v, XdpAction::Tx);
    let outer = SlicedPacket::from_ethernet(&out).unwrap();
    let eth = outer.link.as_ref().unwrap().to_header().unwrap();
    let eth = eth.ethernet2().unwrap();
    assert_eq!((eth.destination, eth.source), (CLIENT_MAC, LB_MAC));
    let Some(NetSlice::Ipv4(ip)) = &outer.net else {
        panic!("outer IPv4")
    };
    let h = ip.header().to_header();
    assert_eq!(h.protocol.0, 4, "IPIP");
    assert!(
        [[198, 18, 2, 1], [198, 18, 2, 2]].contains(&h.destination),
        "to a real: {:?}",
        h.destination
    );
    assert_eq!(&h.source[..2], &[198, 19], "from the configured /16");
    assert_eq!(h.header_checksum, h.calc_header_checksum());
    assert_eq!(usize::from(h.total_len), frame.len() - 14 + 20);
    assert_eq!(&out[34..], &frame[14..], "the inner packet whole");

    // ip6ip6.
    let frame = tcp6(
        "2001:db8::5".parse().unwrap(),
        "2001:db8:1::10".parse().unwrap(),
        40000,
        443,
        true,
    );
    let (v, out) = check(&mut alone, &t, &mut flows, &frame);
    assert_eq!(v, XdpAction::Tx);
    let Some(NetSlice::Ipv6(ip)) = SlicedPacket::from_ethernet(&out).unwrap().net else {
        panic!("outer IPv6")
    };
    let h = ip.header().to_header();
    assert_eq!(h.next_header.0, 41, "ip6ip6");
    assert_eq!(
        h.destination,
        "2001:db8:2::1"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets()
    );
    assert_eq!(usize::from(h.payload_length), frame.len() - 14);

    // IPv4 in IPv6.
    let frame = udp4([198, 18, 0, 5], [198, 18, 1, 11], 40000, 80);
    let (_, out) = check(&mut alone, &t, &mut flows, &frame);
    assert_eq!(out[14 + 6], 4, "IPv4 in IPv6");

    // Not a VIP (other port, other protocol, other address): next.
    for frame in [
        udp4([198, 18, 0, 5], [198, 18, 1, 10], 40000, 54),
        udp4([198, 18, 0, 5], [198, 18, 1, 12], 40000, 53),
        tcp6(
            "2001:db8::5".parse().unwrap(),
            "2001:db8:1::10".parse().unwrap(),
            40000,
            444,
            true,
        ),
    ] {
        assert_eq!(check(&mut alone, &t, &mut flows, &frame).0, XdpAction::Pass);
    }
}

/// What the balancer sends, the `decap` stage of a real turns back into
/// the client's packet: the same IP packet byte for byte, under an
/// Ethernet header of the right type. Kernel and model agree on both.
#[test]
fn decap_restores_what_the_balancer_encapsulated() {
    if !require_root("decap_restores_what_the_balancer_encapsulated") {
        return;
    }
    let (mut alone, t) = balancer(&[
        vip("198.18.1.10", 53, PROTO_UDP, &[("198.18.2.1", 1)]),
        vip("198.18.1.11", 53, PROTO_UDP, &[("2001:db8:2::1", 1)]),
        vip("2001:db8:1::10", 443, PROTO_TCP, &[("2001:db8:2::1", 1)]),
        vip("2001:db8:1::11", 443, PROTO_TCP, &[("198.18.2.1", 1)]),
    ]);
    let mut decap = Alone::new(&Decap).unwrap();
    let mut flows = Flows::new();
    let frames = [
        udp4([198, 18, 0, 5], [198, 18, 1, 10], 40000, 53),
        udp4([198, 18, 0, 5], [198, 18, 1, 11], 40000, 53),
        tcp6(
            "2001:db8::5".parse().unwrap(),
            "2001:db8:1::10".parse().unwrap(),
            40000,
            443,
            true,
        ),
        tcp6(
            "2001:db8::5".parse().unwrap(),
            "2001:db8:1::11".parse().unwrap(),
            40000,
            443,
            false,
        ),
    ];
    for frame in frames {
        let (v, sent) = check(&mut alone, &t, &mut flows, &frame);
        assert_eq!(v, XdpAction::Tx);
        let got = decap.run(&sent, 1).unwrap();
        let want = Decap.model(&sent, &toml::Table::new());
        assert_eq!(
            got.verdict,
            Some(XdpAction::Pass),
            "handed on (to the stack)"
        );
        assert_eq!(got.output, want.output);
        assert_eq!(&got.output[12..14], &frame[12..14], "the inner EtherType");
        assert_eq!(&got.output[14..], &frame[14..], "the client's packet");
    }
    // A plain frame goes on unchanged.
    let plain = udp4([198, 18, 0, 5], [198, 18, 1, 10], 40000, 53);
    assert_eq!(decap.run(&plain, 1).unwrap().output, plain);
}

#[test]
fn established_flows_keep_their_real_when_the_ring_changes() {
    if !require_root("established_flows_keep_their_real_when_the_ring_changes") {
        return;
    }
    let reals: Vec<String> = (1..=8).map(|i| format!("198.18.2.{i}")).collect();
    let all: Vec<(&str, u32)> = reals.iter().map(|r| (r.as_str(), 1)).collect();
    let (mut alone, t) = balancer(&[vip("198.18.1.10", 80, PROTO_TCP, &all)]);
    let mut flows = Flows::new();
    let frame = |sport: u16, syn: bool| {
        let mut f = Vec::new();
        let b = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
            .ipv4([198, 18, 0, 5], [198, 18, 1, 10], 64)
            .tcp(sport, 80, 1, 65535);
        let b = if syn { b.syn() } else { b.ack(1) };
        b.write(&mut f, &[]).unwrap();
        f
    };
    let real_of = |out: &[u8]| [out[30], out[31], out[32], out[33]];
    // 200 connections open; remember each one's real.
    let mut before = Vec::new();
    for sport in 20000..20200 {
        let (_, out) = check(&mut alone, &t, &mut flows, &frame(sport, true));
        before.push(real_of(&out));
    }
    // Real 198.18.2.1 is drained: the ring no longer names it.
    let mut drained = all.clone();
    drained[0].1 = 0;
    let t2 = tables::build(config(), &[vip("198.18.1.10", 80, PROTO_TCP, &drained)]).unwrap();
    write_tables(alone.maps(), &t2).unwrap();
    let mut moved = 0;
    for (i, sport) in (20000..20200).enumerate() {
        // Established (ACK): the flow table keeps the real, drained or not.
        let (_, out) = check(&mut alone, &t2, &mut flows, &frame(sport, false));
        assert_eq!(real_of(&out), before[i], "flow {sport} moved");
        // A new connection on the same ports (SYN) consults the ring.
        let (_, out) = check(&mut alone, &t2, &mut flows, &frame(sport, true));
        assert_ne!(
            real_of(&out),
            [198, 18, 2, 1],
            "a SYN went to the drained real"
        );
        moved += usize::from(real_of(&out) != before[i]);
    }
    // Only the drained real's flows (about one in eight) were re-chosen.
    let on_drained = before.iter().filter(|r| **r == [198, 18, 2, 1]).count();
    assert!(on_drained > 0);
    assert!(
        moved >= on_drained && moved <= on_drained + 10,
        "{moved} moved, {on_drained} on the drained real"
    );
}

#[test]
fn a_vip_whose_reals_are_all_drained_drops() {
    if !require_root("a_vip_whose_reals_are_all_drained_drops") {
        return;
    }
    let (mut alone, t) = balancer(&[vip("198.18.1.10", 53, PROTO_UDP, &[("198.18.2.1", 0)])]);
    let mut flows = Flows::new();
    let frame = udp4([198, 18, 0, 5], [198, 18, 1, 10], 40000, 53);
    assert_eq!(
        decide_with_rx_hash(&t, &mut flows.clone(), &mut None, None, &frame).how,
        LbOutcome::NoReal
    );
    assert_eq!(check(&mut alone, &t, &mut flows, &frame).0, XdpAction::Drop);
}

/// Random VIP sets (IPv4 and IPv6 VIPs and reals, weights, drained reals)
/// and random frames (at least 100,000 in all), many of them to the VIPs, some cut short or
/// malformed: the kernel and the model agree on verdict and bytes, flow
/// table included.
#[test]
fn kernel_matches_the_model_on_random_vips_and_frames() {
    if !require_root("kernel_matches_the_model_on_random_vips_and_frames") {
        return;
    }
    let addr = |v6: bool, net: u8, host: u8| -> IpAddr {
        if v6 {
            format!("2001:db8:{net:x}::{host:x}").parse().unwrap()
        } else {
            format!("198.18.{net}.{host}").parse().unwrap()
        }
    };
    let vip_set = proptest::collection::vec(
        (
            any::<bool>(),
            1u8..4,
            prop_oneof![Just(PROTO_TCP), Just(PROTO_UDP)],
            80u16..83,
            proptest::collection::vec((any::<bool>(), 1u8..20, 0u32..4), 1..6),
        ),
        1..4,
    );
    let frames = proptest::collection::vec(
        (
            any::<bool>(),
            1u8..4,
            80u16..83,
            1000u16..1040,
            any::<bool>(),
            any::<bool>(),
            0usize..80,
            // Payload: length (now and then a jumbo frame, larger than a
            // page: multi-buffer), DF, a QUIC header's first byte and server id.
            (
                prop_oneof![19 => 0usize..1500, 1 => 4000usize..9000],
                any::<bool>(),
                any::<u8>(),
                0u16..8,
            ),
            // Metadata: none, the RX-hash root's, or another program's.
            prop_oneof![
                Just(None),
                any::<u32>().prop_map(|h| Some((h, RX_HASH_MAGIC))),
                (any::<u32>(), any::<u32>()).prop_map(Some),
            ],
        ),
        150..250,
    );
    // Settings: GUE or IP, the path's MTU (0: unchecked), two-interface
    // mode, and which QUIC server ids name which real.
    let settings = (
        any::<bool>(),
        prop_oneof![Just(0u16), 600u16..1600, 8900u16..9100],
        any::<bool>(),
        any::<bool>(),
        proptest::collection::vec((1u16..8, 0u32..20), 0..6),
        any::<bool>(),
    );
    // At least 100,000 frames in all (the floor for a CI run).
    let mut runner = TestRunner::new(Config {
        cases: 520,
        ..Config::default()
    });
    let frames_run = std::cell::Cell::new(0usize);
    runner
        .run(&(vip_set, frames, settings), |(vips, frames, settings)| {
            let (gue, mtu, egress, quic, ids, tuple_only) = settings;
            let specs: Vec<VipSpec> = vips
                .iter()
                .map(|(v6, host, proto, port, reals)| VipSpec {
                    key: tables::vip_key(addr(*v6, 1, *host), *port, *proto),
                    ring: 251,
                    flags: if quic { VIP_QUIC } else { 0 },
                    reals: reals
                        .iter()
                        .map(|(rv6, h, w)| RealSpec {
                            addr: addr(*rv6, 2, *h),
                            weight: *w,
                        })
                        .collect(),
                })
                .collect();
            let mut cfg = config();
            if gue {
                cfg.encap = ENCAP_GUE;
            }
            cfg.mtu = mtu;
            cfg.tuple_hash_only = u16::from(tuple_only);
            if egress {
                cfg.egress = 1;
                cfg.egress_mac = [0x02, 0, 0, 0, 0, 0x09];
                cfg.gateway = [0x02, 0, 0, 0, 0, 0x0a];
            }
            let mut t = tables::build(cfg, &specs).unwrap();
            t.quic_ids = ids.into_iter().collect();
            // Any interface: test_run returns XDP_REDIRECT, sends nothing.
            t.egress = egress.then_some(1);
            let mut alone = Alone::new(&Balancer).unwrap();
            write_tables(alone.maps(), &t).unwrap();
            let mut flows = Flows::new();
            for (v6, host, port, sport, tcp, syn, cut, (len, df, first, id), meta) in frames {
                let dst = addr(v6, 1, host);
                let src = addr(v6, 0, 5);
                let mut f = Vec::new();
                let b = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC);
                let b = match (src, dst) {
                    (IpAddr::V4(s), IpAddr::V4(d)) => b.ipv4(s.octets(), d.octets(), 64),
                    (IpAddr::V6(s), IpAddr::V6(d)) => b.ipv6(s.octets(), d.octets(), 64),
                    _ => unreachable!(),
                };
                // A QUIC-like payload: the first byte, a version, and a
                // connection id naming server id `id` (Katran's version 1).
                let mut payload = vec![0u8; len.max(10)];
                payload[0] = first;
                let cid = [0x40 | (id >> 10) as u8, (id >> 2) as u8, (id << 6) as u8];
                if first & 0x80 != 0 {
                    payload[5] = 8;
                    payload[6..9].copy_from_slice(&cid);
                } else {
                    payload[1..4].copy_from_slice(&cid);
                }
                if tcp {
                    let b = b.tcp(sport, port, 1, 1000);
                    let b = if syn { b.syn() } else { b.ack(1) };
                    b.write(&mut f, &payload).unwrap();
                } else {
                    b.udp(sport, port).write(&mut f, &payload).unwrap();
                }
                if df && !v6 {
                    f[20] |= 0x40;
                }
                // Sometimes cut short (the kernel wants at least 14 bytes).
                if cut < 20 {
                    f.truncate((14 + cut * 3).min(f.len()));
                }
                check_meta(&mut alone, &t, &mut flows, meta, &f);
                frames_run.set(frames_run.get() + 1);
            }
            Ok(())
        })
        .unwrap();
    eprintln!("kernel and model agreed on {} frames", frames_run.get());
    assert!(frames_run.get() >= 100_000, "{} frames", frames_run.get());
}

/// GUE: an outer IP and UDP header (to the GUE port, source port from the
/// flow hash) that `decap` takes off again, giving back the client's packet.
#[test]
fn gue_encapsulation_round_trips_through_decap() {
    if !require_root("gue_encapsulation_round_trips_through_decap") {
        return;
    }
    let mut cfg = config();
    cfg.encap = ENCAP_GUE;
    let (mut alone, t) = balancer_with(
        cfg,
        &[
            vip("198.18.1.10", 53, PROTO_UDP, &[("198.18.2.1", 1)]),
            vip("2001:db8:1::10", 443, PROTO_TCP, &[("2001:db8:2::1", 1)]),
        ],
    );
    let mut decap = Alone::new(&Decap).unwrap();
    let mut flows = Flows::new();
    let frames = [
        udp4([198, 18, 0, 5], [198, 18, 1, 10], 40000, 53),
        tcp6(
            "2001:db8::5".parse().unwrap(),
            "2001:db8:1::10".parse().unwrap(),
            40000,
            443,
            true,
        ),
    ];
    for frame in frames {
        let (v, sent) = check(&mut alone, &t, &mut flows, &frame);
        assert_eq!(v, XdpAction::Tx);
        let outer = SlicedPacket::from_ethernet(&sent).unwrap();
        let Some(etherparse::TransportSlice::Udp(udp)) = outer.transport else {
            panic!("a UDP header after the outer IP header: {sent:02x?}")
        };
        assert_eq!(udp.destination_port(), GUE_PORT);
        assert!(udp.source_port() >= 0x8000, "a source port from the hash");
        assert_eq!(usize::from(udp.length()), frame.len() - 14 + 8);
        let got = decap.run(&sent, 1).unwrap();
        assert_eq!(got.verdict, Some(XdpAction::Pass));
        assert_eq!(got.output, Decap.model(&sent, &toml::Table::new()).output);
        assert_eq!(&got.output[12..], &frame[12..], "the client's packet");
    }
}

/// A frame that would exceed the path's MTU once encapsulated gets ICMP
/// "too big" back, from the VIP, saying how much fits, with valid
/// checksums (etherparse checks them); IPv4 without DF is dropped.
#[test]
fn frames_too_big_for_the_path_get_icmp_too_big() {
    if !require_root("frames_too_big_for_the_path_get_icmp_too_big") {
        return;
    }
    let mut cfg = config();
    cfg.mtu = 1500;
    let (mut alone, t) = balancer_with(
        cfg,
        &[
            vip("198.18.1.10", 80, PROTO_TCP, &[("198.18.2.1", 1)]),
            vip("2001:db8:1::10", 443, PROTO_TCP, &[("2001:db8:2::1", 1)]),
        ],
    );
    let mut flows = Flows::new();
    let big4 = |df: bool, len: usize| {
        let mut f = Vec::new();
        let mut ip = etherparse::Ipv4Header::new(
            0,
            64,
            etherparse::IpNumber::TCP,
            [198, 18, 0, 5],
            [198, 18, 1, 10],
        )
        .unwrap();
        ip.dont_fragment = df;
        PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
            .ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
            .tcp(40000, 80, 1, 65535)
            .ack(1)
            .write(&mut f, &vec![7; len])
            .unwrap();
        f
    };
    // 1480 bytes of IP packet fit with 20 of IPIP; 1481 do not.
    let (v, _) = check(&mut alone, &t, &mut flows, &big4(true, 1480 - 40));
    assert_eq!(v, XdpAction::Tx);
    let frame = big4(true, 1481 - 40);
    let (v, reply) = check(&mut alone, &t, &mut flows, &frame);
    assert_eq!(v, XdpAction::Tx);
    let p = SlicedPacket::from_ethernet(&reply).unwrap();
    let Some(NetSlice::Ipv4(ip)) = &p.net else {
        panic!("IPv4: {reply:02x?}")
    };
    assert_eq!(ip.header().source(), [198, 18, 1, 10], "from the VIP");
    assert_eq!(ip.header().destination(), [198, 18, 0, 5], "to the client");
    let h = ip.header().to_header();
    assert_eq!(h.header_checksum, h.calc_header_checksum());
    let Some(etherparse::TransportSlice::Icmpv4(icmp)) = p.transport else {
        panic!("ICMP: {reply:02x?}")
    };
    assert_eq!(
        icmp.icmp_type(),
        etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1480 }
        )
    );
    assert_eq!(
        icmp.checksum(),
        icmp.header().icmp_type.calc_checksum(icmp.payload())
    );
    assert_eq!(
        icmp.payload(),
        &frame[14..14 + 28],
        "the IP header and 8 bytes"
    );
    assert_eq!(&reply[..6], &CLIENT_MAC, "back to the sender");
    // Without DF: dropped (XDP cannot fragment).
    let (v, _) = check(&mut alone, &t, &mut flows, &big4(false, 1481 - 40));
    assert_eq!(v, XdpAction::Drop);

    // IPv6: 1460 bytes fit with 40 of ip6ip6.
    let big6 = |len: usize| {
        let mut f = Vec::new();
        PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
            .ipv6(
                "2001:db8::5"
                    .parse::<std::net::Ipv6Addr>()
                    .unwrap()
                    .octets(),
                "2001:db8:1::10"
                    .parse::<std::net::Ipv6Addr>()
                    .unwrap()
                    .octets(),
                64,
            )
            .tcp(40000, 443, 1, 65535)
            .ack(1)
            .write(&mut f, &vec![7; len])
            .unwrap();
        f
    };
    let (v, _) = check(&mut alone, &t, &mut flows, &big6(1460 - 60));
    assert_eq!(v, XdpAction::Tx);
    let frame = big6(1461 - 60);
    let (v, reply) = check(&mut alone, &t, &mut flows, &frame);
    assert_eq!(v, XdpAction::Tx);
    let p = SlicedPacket::from_ethernet(&reply).unwrap();
    let Some(NetSlice::Ipv6(ip)) = &p.net else {
        panic!("IPv6: {reply:02x?}")
    };
    let (src, dst) = (ip.header().source(), ip.header().destination());
    let Some(etherparse::TransportSlice::Icmpv6(icmp)) = p.transport else {
        panic!("ICMPv6: {reply:02x?}")
    };
    assert_eq!(
        icmp.icmp_type(),
        etherparse::Icmpv6Type::PacketTooBig { mtu: 1460 }
    );
    assert_eq!(
        icmp.checksum(),
        icmp.header()
            .icmp_type
            .calc_checksum(src, dst, icmp.payload())
            .unwrap()
    );
    assert_eq!(icmp.payload(), &frame[14..14 + 48]);
}

/// Above the new-flow guard's rate new flows are balanced by the ring but
/// not remembered: the flow table stops growing, established flows stay.
#[test]
fn the_new_flow_guard_stops_remembering_flows() {
    if !require_root("the_new_flow_guard_stops_remembering_flows") {
        return;
    }
    let mut cfg = config();
    cfg.new_per_cpu = 10;
    let (mut alone, t) = balancer_with(
        cfg,
        &[vip(
            "198.18.1.10",
            53,
            PROTO_UDP,
            &[("198.18.2.1", 1), ("198.18.2.2", 1)],
        )],
    );
    // One CPU runs all the frames: test_run stays on the calling thread's.
    let mut flows = Flows::new();
    let mut room = Some(10u64);
    let mut guarded = 0;
    for sport in 1000..1030 {
        let frame = udp4([198, 18, 0, 5], [198, 18, 1, 10], sport, 53);
        let got = alone.run(&frame, 1).unwrap();
        let want =
            xdpkit::programs::balancer::model::decide_guarded(&t, &mut flows, &mut room, &frame);
        assert_eq!(got.output, want.outcome.output);
        if want.how == LbOutcome::Guarded {
            guarded += 1;
        }
    }
    assert_eq!(guarded, 20, "10 remembered, 20 not");
    assert_eq!(flows.len(), 10);
    let remembered = xdpkit::programs::balancer::flows::dump(alone.maps()).unwrap();
    assert_eq!(remembered.len(), 10, "the kernel's table holds 10 flows");
}

/// A QUIC VIP sends a packet whose connection id names a known server id
/// to that real, whatever the ring says; Initial packets and unknown ids
/// go by the ring.
#[test]
fn quic_packets_go_to_the_real_their_connection_id_names() {
    if !require_root("quic_packets_go_to_the_real_their_connection_id_names") {
        return;
    }
    let mut spec = vip(
        "198.18.1.10",
        443,
        PROTO_UDP,
        &[("198.18.2.1", 1), ("198.18.2.2", 1), ("198.18.2.3", 1)],
    );
    spec.flags = VIP_QUIC;
    let mut t = tables::build(config(), &[spec]).unwrap();
    // Server id 1025 is the real at index 2 (198.18.2.3).
    t.quic_ids = [(1025u16, 2u32)].into_iter().collect();
    let mut alone = Alone::new(&Balancer).unwrap();
    write_tables(alone.maps(), &t).unwrap();
    let mut flows = Flows::new();
    let quic = |sport: u16, first: u8, id: u16| {
        let mut payload = vec![0u8; 40];
        payload[0] = first;
        let cid = [0x40 | (id >> 10) as u8, (id >> 2) as u8, (id << 6) as u8];
        if first & 0x80 != 0 {
            payload[5] = 8;
            payload[6..9].copy_from_slice(&cid);
        } else {
            payload[1..4].copy_from_slice(&cid);
        }
        let mut f = Vec::new();
        PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
            .ipv4([198, 18, 0, 5], [198, 18, 1, 10], 64)
            .udp(sport, 443)
            .write(&mut f, &payload)
            .unwrap();
        f
    };
    let outer_dst = |sent: &[u8]| [sent[30], sent[31], sent[32], sent[33]];
    for sport in 1000..1040 {
        // Short header naming 1025: always the third real.
        let (_, sent) = check(&mut alone, &t, &mut flows, &quic(sport, 0x40, 1025));
        assert_eq!(outer_dst(&sent), [198, 18, 2, 3]);
        // A Handshake (long header, type 2) too.
        let (_, sent) = check(&mut alone, &t, &mut flows, &quic(sport, 0xe0, 1025));
        assert_eq!(outer_dst(&sent), [198, 18, 2, 3]);
    }
    // Initial packets and an unknown id go by the ring: all three reals.
    let mut seen = std::collections::HashSet::new();
    for sport in 2000..2060 {
        let (_, sent) = check(&mut alone, &t, &mut flows, &quic(sport, 0xc0, 1025));
        seen.insert(outer_dst(&sent));
        let (_, sent) = check(&mut alone, &t, &mut flows, &quic(sport + 100, 0x40, 7));
        seen.insert(outer_dst(&sent));
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
}

/// A new flow that comes with the RX-hash root's metadata is hashed onto
/// the ring with the driver's hash, and its flow entry keeps that hash;
/// with `flow-hash = "tuple"`, or another program's metadata, the 5-tuple
/// hash decides. Each hash is chosen so that the two hashes name different
/// reals, so the test tells them apart.
#[test]
fn new_flows_hash_with_the_rx_hash_the_root_leaves() {
    if !require_root("new_flows_hash_with_the_rx_hash_the_root_leaves") {
        return;
    }
    use xdpkit::programs::balancer::model::frame_hash;
    let reals = [("198.18.2.1", 1), ("198.18.2.2", 1), ("198.18.2.3", 1)];
    let spec = vip("198.18.1.10", 53, PROTO_UDP, &reals);
    let real_of = |out: &[u8]| [out[30], out[31], out[32], out[33]];
    for (tuple_only, magic) in [(false, RX_HASH_MAGIC), (true, RX_HASH_MAGIC), (false, 7)] {
        let mut cfg = config();
        cfg.tuple_hash_only = u16::from(tuple_only);
        let (mut alone, t) = balancer_with(cfg, std::slice::from_ref(&spec));
        let vip_rec = t.vips.values().next().copied().unwrap();
        let real_for = |hash: u32| {
            let index = t.ring_slot(vip_rec.ring_base + hash % vip_rec.ring_size);
            let a = t.reals[index as usize].addr;
            [a[0], a[1], a[2], a[3]]
        };
        let mut flows = Flows::new();
        let mut by_rx = 0;
        for sport in 3000..3040u16 {
            let frame = udp4([198, 18, 0, 5], [198, 18, 1, 10], sport, 53);
            let tuple_hash = frame_hash(&frame).unwrap();
            let rx = (0u32..)
                .map(|i| i.wrapping_mul(0x9e37_79b9) ^ u32::from(sport))
                .find(|h| real_for(*h) != real_for(tuple_hash))
                .unwrap();
            let (verdict, out) = check_meta(&mut alone, &t, &mut flows, Some((rx, magic)), &frame);
            assert_eq!(verdict, XdpAction::Tx);
            let uses_rx = !tuple_only && magic == RX_HASH_MAGIC;
            let want = if uses_rx {
                real_for(rx)
            } else {
                real_for(tuple_hash)
            };
            assert_eq!(real_of(&out), want, "port {sport}, rx hash {rx:#x}");
            by_rx += usize::from(real_of(&out) == real_for(rx));
            // The next frame of the flow comes without metadata (say the
            // driver had no hash for it): the entry's hash still holds.
            let (_, again) = check(&mut alone, &t, &mut flows, &frame);
            assert_eq!(real_of(&again), want, "port {sport}: the flow moved");
        }
        let counted = xdpkit::maps::batch::dump_per_cpu::<xdpkit_common::balancer::VipCounters>(
            alone.maps(),
            "LB_VIP_STATS",
            usize::MAX,
        )
        .unwrap();
        let (new, rx_count) = counted
            .iter()
            .flatten()
            .fold((0, 0), |(n, r), c| (n + c.new_flows, r + c.new_by_rx_hash));
        let tuple_count = new - rx_count;
        if !tuple_only && magic == RX_HASH_MAGIC {
            assert_eq!((by_rx, rx_count, tuple_count), (40, 40, 0));
        } else {
            assert_eq!((by_rx, rx_count, tuple_count), (0, 0, 40));
        }
    }
}
