//! The live-frames generator on a veth pair: frames leave one namespace,
//! reach a socket in the other with valid checksums, from random sources
//! inside the requested prefix.

use std::{
    collections::HashSet,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    time::Duration,
};

use ipnet::Ipv4Net;
use xdpkit::{
    trafficgen::{udp_frame, Generator},
    AttachRequest, Mode,
};
use xdpkit_lab::lab::{require_root, Lab};

/// Few enough for the socket's default buffer: a datagram built from an
/// XDP frame is charged a whole page.
const FRAMES: u64 = 40;
const PORT: u16 = 9999;

#[test]
fn generated_frames_reach_a_socket_from_random_sources() {
    if !require_root("generated_frames_reach_a_socket_from_random_sources") {
        return;
    }
    let lab = Lab::builder("xktg")
        .namespace("gen")
        .namespace("dut")
        .veth(
            "gen",
            "xktg-g",
            Some("198.18.61.1/24"),
            "dut",
            "xktg-d",
            Some("198.18.61.2/24"),
        )
        .build()
        .expect("lab");
    let sources: Ipv4Net = "198.18.62.0/24".parse().unwrap();
    // Replies (none are sent) and reverse-path checks need a route back.
    let status = lab
        .command("dut", "ip")
        .args(["route", "add", "198.18.62.0/24", "dev", "xktg-d"])
        .status()
        .expect("ip route");
    assert!(status.success());
    // An XDP program on the receiving veth: without one (or GRO) a veth
    // drops frames sent to it by XDP_TX.
    lab.run_in("dut", || {
        xdpkit::attach(&AttachRequest::from_list(
            "xktg-d",
            "pass",
            Mode::Native,
            None,
            None,
            false,
        )?)
    })
    .unwrap()
    .expect("attach pass");
    let socket = lab
        .run_in("dut", || UdpSocket::bind(("0.0.0.0", PORT)))
        .unwrap()
        .expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();

    let frame = udp_frame(
        lab.mac("gen", "xktg-g").unwrap(),
        lab.mac("dut", "xktg-d").unwrap(),
        Ipv4Addr::new(198, 18, 62, 1),
        Ipv4Addr::new(198, 18, 61, 2),
        (4321, PORT),
        60,
    );
    let sent = lab
        .run_in("gen", move || {
            Generator::new("xktg-g", frame, Some(sources))?.send(FRAMES)
        })
        .unwrap()
        .expect("generator");
    assert_eq!(sent.frames, FRAMES);

    let mut got = 0;
    let mut seen = HashSet::new();
    let mut buf = [0u8; 64];
    while let Ok((n, from)) = socket.recv_from(&mut buf) {
        assert_eq!(n, 60 - 42, "payload of a 60-byte frame");
        let SocketAddr::V4(from) = from else {
            panic!("IPv6 source {from}");
        };
        assert!(sources.contains(from.ip()), "{from} outside {sources}");
        assert_eq!(from.port(), 4321);
        seen.insert(*from.ip());
        got += 1;
    }
    // The veth ring holds 256 frames, so none is lost on the way, and the
    // kernel only delivers datagrams whose IPv4 checksum is right.
    assert_eq!(got, FRAMES, "datagrams received");
    assert!(seen.len() > 10, "only {} distinct sources", seen.len());
    lab.run_in("dut", || xdpkit::detach("xktg-d"))
        .unwrap()
        .expect("detach");
}

/// IPv6: random sources in one word of the address, the UDP checksum
/// (which IPv6 requires) fixed up for each: the kernel delivers only
/// datagrams whose checksum is right.
#[test]
fn generated_ipv6_frames_reach_a_socket_from_random_sources() {
    if !require_root("generated_ipv6_frames_reach_a_socket_from_random_sources") {
        return;
    }
    let lab = Lab::builder("xktg6")
        .namespace("gen")
        .namespace("dut")
        .veth("gen", "xktg6-g", None, "dut", "xktg6-d", None)
        .build()
        .expect("lab");
    for (ns, dev, addr) in [
        ("gen", "xktg6-g", "2001:db8:61::1/64"),
        ("dut", "xktg6-d", "2001:db8:61::2/64"),
    ] {
        let status = lab
            .command(ns, "ip")
            .args(["-6", "addr", "add", addr, "dev", dev, "nodad"])
            .status()
            .expect("ip addr");
        assert!(status.success());
    }
    // 1,024 source /64s under 2001:db8:62::/48; a route back for them.
    let sources: ipnet::IpNet = "2001:db8:62::/54".parse().unwrap();
    let status = lab
        .command("dut", "ip")
        .args(["-6", "route", "add", "2001:db8:62::/48", "dev", "xktg6-d"])
        .status()
        .expect("ip route");
    assert!(status.success());
    lab.run_in("dut", || {
        xdpkit::attach(&AttachRequest::from_list(
            "xktg6-d",
            "pass",
            Mode::Native,
            None,
            None,
            false,
        )?)
    })
    .unwrap()
    .expect("attach pass");
    let socket = lab
        .run_in("dut", || UdpSocket::bind(("::", PORT)))
        .unwrap()
        .expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let frame = xdpkit::trafficgen::udp6_frame(
        lab.mac("gen", "xktg6-g").unwrap(),
        lab.mac("dut", "xktg6-d").unwrap(),
        "2001:db8:62::1".parse().unwrap(),
        "2001:db8:61::2".parse().unwrap(),
        (4321, PORT),
        80,
    );
    let sent = lab
        .run_in("gen", move || {
            Generator::with_sources("xktg6-g", frame, Some(sources))?.send(FRAMES)
        })
        .unwrap()
        .expect("generator");
    assert_eq!(sent.frames, FRAMES);
    let mut got = 0;
    let mut seen = HashSet::new();
    let mut buf = [0u8; 64];
    while let Ok((n, from)) = socket.recv_from(&mut buf) {
        assert_eq!(n, 80 - 62, "payload of an 80-byte frame");
        let SocketAddr::V6(from) = from else {
            panic!("IPv4 source {from}");
        };
        assert!(
            sources.contains(&std::net::IpAddr::V6(*from.ip())),
            "{from} outside {sources}"
        );
        seen.insert(*from.ip());
        got += 1;
    }
    assert_eq!(got, FRAMES, "datagrams received");
    assert!(seen.len() > 10, "only {} distinct sources", seen.len());
    lab.run_in("dut", || xdpkit::detach("xktg6-d"))
        .unwrap()
        .expect("detach");
}

/// A receiver that rewrites frames in place (the balancer encapsulates
/// and sends them back) hands its bytes back to the generator's recycled
/// pages: without `restore_headers` later frames leave corrupted (the
/// balancer sees them as not for its VIP), with it every frame leaves as
/// built.
#[test]
fn restored_headers_survive_a_receiver_that_rewrites_frames() {
    use xdpkit::programs::balancer::{live, tables};
    use xdpkit_common::balancer::PROTO_UDP;

    if !require_root("restored_headers_survive_a_receiver_that_rewrites_frames") {
        return;
    }
    let lab = Lab::builder("xktr")
        .namespace("gen")
        .namespace("dut")
        .veth(
            "gen",
            "xktr-g",
            Some("198.18.64.1/24"),
            "dut",
            "xktr-d",
            Some("198.18.64.2/24"),
        )
        .build()
        .expect("lab");
    let gen_mac = lab.mac("gen", "xktr-g").unwrap();
    let vip = Ipv4Addr::new(198, 18, 65, 10);
    lab.run_in("dut", move || -> xdpkit::Result<()> {
        xdpkit::attach(&AttachRequest::from_list(
            "xktr-d",
            "balancer",
            Mode::Native,
            None,
            None,
            false,
        )?)?;
        let mut lb = live::LiveBalancer::open("xktr-d")?;
        lb.configure(&xdpkit::programs::balancer::live::SettingsChange {
            gateway: Some(gen_mac),
            ..Default::default()
        })?;
        let key = tables::vip_key(vip.into(), PORT, PROTO_UDP);
        lb.add_vip(key, 251, 0)?;
        lb.set_real(key, Ipv4Addr::new(198, 18, 66, 1).into(), 1)
    })
    .unwrap()
    .expect("balancer");
    // The encapsulated frames come back to gen, whose XDP program lets its
    // veth take them (and frees their pages into the generator's pool).
    lab.run_in("gen", || {
        xdpkit::attach(&AttachRequest::from_list(
            "xktr-g",
            "pass",
            Mode::Native,
            None,
            None,
            false,
        )?)
    })
    .unwrap()
    .expect("attach pass");
    let frame = udp_frame(
        gen_mac,
        lab.mac("dut", "xktr-d").unwrap(),
        Ipv4Addr::new(198, 18, 64, 1),
        vip,
        (4321, PORT),
        60,
    );
    // Every generator restores the headers now; the receiver here (the
    // balancer) encapsulates in place, so without it most frames would come
    // back corrupted (more than 1,000 of 20,000 when it was optional).
    let before = lab
        .run_in("dut", || live::status("xktr-d"))
        .unwrap()
        .expect("status");
    lab.run_in("gen", move || -> xdpkit::Result<()> {
        Generator::new("xktr-g", frame, None)?.send(20_000)?;
        Ok(())
    })
    .unwrap()
    .expect("send");
    std::thread::sleep(Duration::from_millis(300));
    let after = lab
        .run_in("dut", || live::status("xktr-d"))
        .unwrap()
        .expect("status");
    let balanced =
        (after.flow_hits + after.flow_misses).saturating_sub(before.flow_hits + before.flow_misses);
    assert!(balanced > 0, "nothing balanced");
    let not_vip = [after.not_vip - before.not_vip];
    assert!(
        not_vip[0] < 10,
        "with restore_headers every generated frame is the VIP's: {not_vip:?}"
    );
    for (ns, ifname) in [("dut", "xktr-d"), ("gen", "xktr-g")] {
        lab.run_in(ns, || xdpkit::detach(ifname))
            .unwrap()
            .expect("detach");
    }
}

/// The generator's live-frame pages come back from a receiver that
/// rewrote them in place (a router forwarding writes the next hop's MACs
/// and the TTL into the page): every frame must still leave as built.
/// Before the generator restored each frame's head, the kernel's
/// forwarding dropped all but the first few hundred as "other host".
#[test]
fn frames_leave_as_built_after_a_forwarding_receiver_rewrote_their_pages() {
    if !require_root("frames_leave_as_built_after_a_forwarding_receiver_rewrote_their_pages") {
        return;
    }
    let lab = Lab::builder("xktgf")
        .namespace("gen")
        .namespace("rtr")
        .namespace("sink")
        .veth(
            "gen",
            "xktgf-g",
            Some("198.18.72.1/24"),
            "rtr",
            "xktgf-i",
            Some("198.18.72.2/24"),
        )
        .veth(
            "rtr",
            "xktgf-o",
            Some("198.18.73.1/24"),
            "sink",
            "xktgf-s",
            Some("198.18.73.2/24"),
        )
        .gro("rtr", "xktgf-i")
        .build()
        .expect("lab");
    let sh = |ns: &str, args: &[&str]| {
        let out = lab.command(ns, args[0]).args(&args[1..]).output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
    };
    sh("rtr", &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    let sink_mac = lab.mac("sink", "xktgf-s").unwrap();
    lab.static_neighbor("rtr", "xktgf-o", "198.18.73.2".parse().unwrap(), sink_mac)
        .unwrap();
    let frame = udp_frame(
        lab.mac("gen", "xktgf-g").unwrap(),
        lab.mac("rtr", "xktgf-i").unwrap(),
        Ipv4Addr::new(198, 18, 72, 1),
        Ipv4Addr::new(198, 18, 73, 2),
        (1234, 9),
        60,
    );
    let forwarded = || -> u64 {
        let out = lab
            .command("rtr", "nstat")
            .args(["-az", "IpForwDatagrams"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("IpForwDatagrams"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let before = forwarded();
    // Paced well under what the router forwards: no frame is lost to a
    // full ring, so every one must be forwarded.
    const SENT: u64 = 20_000;
    let sent = lab
        .run_in("gen", move || {
            Generator::with_sources("xktgf-g", frame, Some("198.18.72.128/25".parse().unwrap()))
                .and_then(|mut g| {
                    g.send_paced(xdpkit::trafficgen::Limit::Count(SENT), Some(40_000))
                })
        })
        .unwrap()
        .expect("send");
    assert_eq!(sent.frames, SENT);
    std::thread::sleep(Duration::from_millis(200));
    let got = forwarded() - before;
    assert!(
        got >= SENT * 99 / 100,
        "the router forwarded {got} of {SENT} frames: the rest arrived rewritten"
    );
}
