//! Frames larger than a page (multi-buffer: BPF_PROG_TEST_RUN builds an
//! `xdp.frags` program's frame from a linear part and fragments when the
//! input exceeds a page): every program judges them by their headers,
//! counts their whole length, and hands them on whole.

use etherparse::{NetSlice, PacketBuilder, SlicedPacket};
use xdpkit::{
    firewall::{kernel::FirewallHarness, Policy, Ruleset},
    programs::{
        balancer::{
            model::{decide, Flows},
            tables::{self, RealSpec, VipSpec},
            write_tables, Balancer,
        },
        decap::Decap,
        drop::Drop,
        firewall::Firewall,
        read_outcomes,
    },
    testrun::{Alone, Harness},
    XdpAction,
};
use xdpkit_common::{
    balancer::{LbConfig, GUE_PORT, PROTO_UDP},
    firewall::{Outcome, FW_OUTCOMES, NO_RULE},
};
use xdpkit_lab::lab::require_root;

const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
/// A full frame of MTU 9000.
const JUMBO: usize = 9014;

/// A UDP/IPv4 frame of `len` bytes in all, DF set.
fn udp4(src: [u8; 4], dst: [u8; 4], dport: u16, len: usize) -> Vec<u8> {
    let mut f = Vec::new();
    // The payload counts its bytes, so a reordered or cut copy shows.
    let payload: Vec<u8> = (0..len - 42).map(|i| (i % 251) as u8).collect();
    PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .ipv4(src, dst, 64)
        .udp(40000, dport)
        .write(&mut f, &payload)
        .unwrap();
    f[20] |= 0x40;
    // The checksum again, with DF.
    f[24..26].fill(0);
    let sum = f[14..34]
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum::<u32>();
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    f[24..26].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    assert_eq!(f.len(), len);
    f
}

#[test]
fn a_jumbo_frame_passes_through_test_run_whole_and_is_counted_whole() {
    if !require_root("a_jumbo_frame_passes_through_test_run_whole_and_is_counted_whole") {
        return;
    }
    let frame = udp4([198, 18, 0, 5], [198, 18, 1, 9], 9, JUMBO);
    let mut h = Harness::single(&Drop).unwrap();
    let out = h.run(&frame, 1).unwrap();
    assert_eq!(out.verdict, Some(XdpAction::Drop));
    assert_eq!(out.output, frame, "the frame comes back whole");
    let c = h.counters("drop").unwrap().get(XdpAction::Drop);
    assert_eq!(
        (c.packets, c.bytes),
        (1, JUMBO as u64),
        "whole length counted"
    );
}

#[test]
fn the_firewall_judges_jumbo_frames_by_their_headers_and_counts_them_whole() {
    if !require_root("the_firewall_judges_jumbo_frames_by_their_headers_and_counts_them_whole") {
        return;
    }
    let mut fw = FirewallHarness::new(Policy::default()).unwrap();
    let rules = Ruleset::parse_file_text(
        "jumbo",
        "deny src 198.18.0.5/32 proto udp dport 9\nallow src 198.18.0.0/16\n",
    )
    .unwrap();
    fw.load_rules(&rules).unwrap();
    for len in [1514, 4000, JUMBO] {
        let denied = udp4([198, 18, 0, 5], [198, 18, 1, 9], 9, len);
        let (out, trace) = fw.run(&denied).unwrap();
        assert_eq!(
            (out.verdict, trace.rule),
            (Some(XdpAction::Drop), 1),
            "{len}"
        );
        let allowed = udp4([198, 18, 0, 6], [198, 18, 1, 9], 9, len);
        let (out, trace) = fw.run(&allowed).unwrap();
        assert_eq!(
            (out.verdict, trace.rule),
            (Some(XdpAction::Pass), 2),
            "{len}"
        );
        assert_eq!(out.output, allowed, "{len}: passed whole");
        let other = udp4([203, 0, 113, 7], [198, 18, 1, 9], 9, len);
        let (out, trace) = fw.run(&other).unwrap();
        assert_eq!(
            (out.verdict, trace.outcome, trace.rule),
            (Some(XdpAction::Pass), Outcome::Default as u32, NO_RULE),
            "{len}"
        );
    }

    // In a chain, with the outcome counters of a stage: default pass of
    // a 9014-byte and a 60-byte frame.
    let mut h = Harness::single(&Firewall).unwrap();
    for len in [JUMBO, 60] {
        let out = h
            .run(&udp4([198, 18, 0, 5], [198, 18, 1, 9], 9, len), 1)
            .unwrap();
        assert_eq!(out.verdict, Some(XdpAction::Pass));
    }
    let c = h.counters("firewall").unwrap().get(XdpAction::Pass);
    assert_eq!((c.packets, c.bytes), (2, JUMBO as u64 + 60));
    let names = ["rule", "rate_limited", "default"];
    let pin = FW_OUTCOMES.to_ascii_lowercase();
    let outcomes = read_outcomes(&h.stage_dir("firewall"), &pin, &names).unwrap();
    assert_eq!(
        (outcomes[2].packets, outcomes[2].bytes),
        (2, JUMBO as u64 + 60),
        "{outcomes:?}"
    );
}

fn balancer(mtu: u16) -> (Alone, tables::Tables) {
    let cfg = LbConfig {
        src4: u32::from_ne_bytes([198, 19, 0, 0]),
        src4_bits: 16,
        src6: [0x20, 0x01, 0x0d, 0xb8, 0xff, 0, 0, 0],
        gue_port: GUE_PORT,
        mtu,
        ..LbConfig::default()
    };
    let vip = VipSpec {
        key: tables::vip_key("198.18.1.10".parse().unwrap(), 53, PROTO_UDP),
        ring: 251,
        flags: 0,
        reals: vec![RealSpec {
            addr: "198.18.2.1".parse().unwrap(),
            weight: 1,
        }],
    };
    let t = tables::build(cfg, &[vip]).unwrap();
    let mut alone = Alone::new(&Balancer).unwrap();
    write_tables(alone.maps(), &t).unwrap();
    (alone, t)
}

#[test]
fn the_balancer_encapsulates_jumbo_frames_and_decap_restores_them() {
    if !require_root("the_balancer_encapsulates_jumbo_frames_and_decap_restores_them") {
        return;
    }
    // Room for 20 bytes of IPIP on a 9100-byte path.
    let (mut lb, t) = balancer(9100);
    let mut flows = Flows::new();
    let frame = udp4([198, 18, 0, 5], [198, 18, 1, 10], 53, JUMBO);
    let got = lb.run(&frame, 1).unwrap();
    let want = decide(&t, &mut flows, &frame);
    assert_eq!(got.verdict, Some(XdpAction::Tx));
    assert_eq!(got.output, want.outcome.output, "kernel and model agree");
    assert_eq!(got.output.len(), JUMBO + 20);
    let p = SlicedPacket::from_ethernet(&got.output).unwrap();
    let Some(NetSlice::Ipv4(ip)) = &p.net else {
        panic!("IPv4")
    };
    assert_eq!(ip.header().destination(), [198, 18, 2, 1], "to the real");
    assert_eq!(usize::from(ip.header().total_len()), JUMBO - 14 + 20);
    assert_eq!(
        &got.output[34..],
        &frame[14..],
        "the client's packet, whole"
    );

    let mut decap = Alone::new(&Decap).unwrap();
    let back = decap.run(&got.output, 1).unwrap();
    assert_eq!(back.verdict, Some(XdpAction::Pass));
    assert_eq!(
        &back.output[12..],
        &frame[12..],
        "decap gives the packet back whole"
    );
}

#[test]
fn a_jumbo_frame_too_big_for_the_path_gets_icmp_too_big() {
    if !require_root("a_jumbo_frame_too_big_for_the_path_gets_icmp_too_big") {
        return;
    }
    // The path takes 9000 bytes: 9000 of IP packet + 20 of IPIP do not fit.
    let (mut lb, t) = balancer(9000);
    let mut flows = Flows::new();
    let frame = udp4([198, 18, 0, 5], [198, 18, 1, 10], 53, JUMBO);
    let got = lb.run(&frame, 1).unwrap();
    let want = decide(&t, &mut flows, &frame);
    assert_eq!(got.verdict, Some(XdpAction::Tx));
    assert_eq!(got.output, want.outcome.output, "kernel and model agree");
    // Ethernet, IP, ICMP and the quoted IP header with 8 bytes.
    assert_eq!(got.output.len(), 14 + 20 + 8 + 28, "cut to the reply");
    let p = SlicedPacket::from_ethernet(&got.output).unwrap();
    let Some(etherparse::TransportSlice::Icmpv4(icmp)) = p.transport else {
        panic!("ICMP: {:02x?}", got.output)
    };
    assert_eq!(
        icmp.icmp_type(),
        etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 8980 }
        )
    );
    assert_eq!(icmp.payload(), &frame[14..14 + 28]);
    // 8980 bytes of IP packet fit.
    let fits = udp4([198, 18, 0, 5], [198, 18, 1, 10], 53, 14 + 8980);
    let got = lb.run(&fits, 1).unwrap();
    assert_eq!(got.verdict, Some(XdpAction::Tx));
    assert_eq!(got.output.len(), fits.len() + 20);
}
