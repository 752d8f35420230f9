//! `xdpkit lb` on an attached balancer: VIPs and reals changed from the
//! command line while datagrams flow, counters read back with `lb list`.

use std::{net::SocketAddr, process::Output};

use serde_json::Value;
use xdpkit_lab::lab::{require_root, Lab};

mod common;

use common::{ip, ok, sysctl, xdpkit_in};

fn xdpkit(lab: &Lab, args: &[&str]) -> Output {
    xdpkit_in(lab, "lb", args)
}

fn list(lab: &Lab, dev: &str) -> Value {
    serde_json::from_str(&ok(&xdpkit(lab, &["lb", "list", "--dev", dev, "--json"]))).unwrap()
}

/// Packets sent to each real of the first VIP, by address.
fn real_packets(status: &Value) -> Vec<(String, u64)> {
    status["vips"][0]["reals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["address"].as_str().unwrap().to_string(),
                r["packets"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Frames received by `ifname` in `ns` (`ip -s -j link`).
fn rx_packets(lab: &Lab, ns: &str, ifname: &str) -> u64 {
    let out = lab
        .command(ns, "ip")
        .args(["-s", "-j", "link", "show", "dev", ifname])
        .output()
        .unwrap();
    let links: Value = serde_json::from_slice(&out.stdout).unwrap();
    links[0]["stats64"]["rx"]["packets"].as_u64().unwrap()
}

#[test]
fn vips_and_reals_change_from_the_command_line_while_frames_flow() {
    if !require_root("vips_and_reals_change_from_the_command_line_while_frames_flow") {
        return;
    }
    let (client_if, lb_if) = ("xklb-cl", "xklb-lb");
    // The same lab as the other UDP tests: the client's veth runs `pass`,
    // so the balancer's XDP_TX frames are polled at once (CI's debug run
    // saw 1 of 50 back after 2 s with GRO alone).
    let lab = client_and_balancer("xkt-lb", client_if, lb_if, 51);
    ok(&xdpkit(&lab, &["attach", "balancer", "--dev", lb_if]));
    let vip = "198.18.1.10:53/udp";
    ok(&xdpkit(
        &lab,
        &["lb", "vip", "add", "--dev", lb_if, vip, "--ring", "1009"],
    ));
    for real in ["198.18.2.1", "198.18.2.2"] {
        ok(&xdpkit(
            &lab,
            &["lb", "real", "add", "--dev", lb_if, vip, real],
        ));
    }
    // Bad input: exit 2, nothing changed.
    for args in [
        vec!["lb", "vip", "add", "--dev", lb_if, vip],
        vec!["lb", "vip", "add", "--dev", lb_if, "198.18.1.11:53"],
        vec![
            "lb",
            "vip",
            "add",
            "--dev",
            lb_if,
            "198.18.1.11:53/udp",
            "--ring",
            "1000",
        ],
        vec!["lb", "real", "del", "--dev", lb_if, vip, "198.18.2.9"],
        vec![
            "lb",
            "real",
            "add",
            "--dev",
            lb_if,
            "198.18.1.12:53/udp",
            "198.18.2.1",
        ],
    ] {
        let out = xdpkit(&lab, &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
    }
    assert_eq!(list(&lab, lb_if)["vips"].as_array().unwrap().len(), 1);

    // One flow (one socket, one source port): one real, one ring choice,
    // the rest from the flow table; every frame comes back encapsulated.
    let dst: SocketAddr = "198.18.1.10:53".parse().unwrap();
    let rx_before = rx_packets(&lab, "client", client_if);
    assert_eq!(lab.send_udp("client", dst, 50, 32).unwrap(), 50);
    let status = list(&lab, lb_if);
    assert_eq!(status["vips"][0]["packets"], 50);
    assert_eq!(status["flow_misses"], 1);
    assert_eq!(status["flow_hits"], 49);
    let reals = real_packets(&status);
    let (chosen, other) = if reals[0].1 == 50 {
        (reals[0].0.clone(), reals[1].0.clone())
    } else {
        (reals[1].0.clone(), reals[0].0.clone())
    };
    assert_eq!(reals.iter().map(|r| r.1).sum::<u64>(), 50, "{reals:?}");
    // The peer's NAPI delivers them a moment later: wait up to 2 s.
    let mut rx = rx_packets(&lab, "client", client_if);
    for _ in 0..40 {
        if rx >= rx_before + 50 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        rx = rx_packets(&lab, "client", client_if);
    }
    assert!(
        rx >= rx_before + 50,
        "{rx_before} -> {rx} frames back at the client"
    );

    // Drain the chosen real: new flows go to the other.
    ok(&xdpkit(
        &lab,
        &[
            "lb", "real", "add", "--dev", lb_if, vip, &chosen, "--weight", "0",
        ],
    ));
    for _ in 0..5 {
        assert_eq!(lab.send_udp("client", dst, 10, 32).unwrap(), 10);
    }
    let reals: std::collections::HashMap<String, u64> =
        real_packets(&list(&lab, lb_if)).into_iter().collect();
    assert_eq!(reals[&chosen], 50, "the drained real got new flows");
    assert_eq!(reals[&other], 50);

    // Without the VIP, frames go on to the stack (nothing balanced).
    ok(&xdpkit(&lab, &["lb", "vip", "del", "--dev", lb_if, vip]));
    assert_eq!(lab.send_udp("client", dst, 10, 32).unwrap(), 10);
    let status = list(&lab, lb_if);
    assert_eq!(status["vips"].as_array().unwrap().len(), 0);
    assert!(status["not_vip"].as_u64().unwrap() >= 10);
    ok(&xdpkit(&lab, &["detach", "--dev", lb_if]));
}

/// The whole path: a client sends to a VIP through a router; the router
/// hands VIP traffic to the balancer, which sends each flow encapsulated
/// back to the router toward one of two reals; each real's `decap` stage
/// gives the client's datagram to its stack, where the VIP sits on `lo`
/// and a socket counts what arrives. Every datagram reaches one real, and
/// both reals get flows.
#[test]
fn datagrams_to_a_vip_reach_the_reals_through_the_balancer_and_decap() {
    if !require_root("datagrams_to_a_vip_reach_the_reals_through_the_balancer_and_decap") {
        return;
    }
    let lab = Lab::builder("xkt-lbe")
        .namespace("client")
        .namespace("router")
        .namespace("lb")
        .namespace("real1")
        .namespace("real2")
        .veth(
            "client",
            "xklbe-cl",
            Some("198.18.60.1/24"),
            "router",
            "xklbe-rc",
            Some("198.18.60.254/24"),
        )
        .veth(
            "router",
            "xklbe-rl",
            Some("198.18.61.254/24"),
            "lb",
            "xklbe-lb",
            Some("198.18.61.2/24"),
        )
        .veth(
            "router",
            "xklbe-r1",
            Some("198.18.62.254/24"),
            "real1",
            "xklbe-s1",
            Some("198.18.62.1/24"),
        )
        .veth(
            "router",
            "xklbe-r2",
            Some("198.18.63.254/24"),
            "real2",
            "xklbe-s2",
            Some("198.18.63.1/24"),
        )
        // The balancer answers with XDP_TX: the router's end needs GRO.
        .gro("router", "xklbe-rl")
        .build()
        .unwrap();
    ip(
        &lab,
        "client",
        &["route", "add", "default", "via", "198.18.60.254"],
    );
    sysctl(&lab, "router", "net.ipv4.ip_forward=1");
    // The outer sources (198.19.0.0/16) have no route back: no reverse-path check.
    for key in ["all", "default", "xklbe-rl"] {
        sysctl(&lab, "router", &format!("net.ipv4.conf.{key}.rp_filter=0"));
    }
    ip(
        &lab,
        "router",
        &["route", "add", "198.18.1.0/24", "via", "198.18.61.2"],
    );
    for (ns, dev, gw) in [
        ("real1", "xklbe-s1", "198.18.62.254"),
        ("real2", "xklbe-s2", "198.18.63.254"),
    ] {
        ip(&lab, ns, &["addr", "add", "198.18.1.10/32", "dev", "lo"]);
        ip(&lab, ns, &["route", "add", "default", "via", gw]);
        ok(&xdpkit_in(&lab, ns, &["attach", "decap", "--dev", dev]));
    }
    let lb = |args: &[&str]| ok(&xdpkit_in(&lab, "lb", args));
    lb(&["attach", "balancer", "--dev", "xklbe-lb"]);
    lb(&[
        "lb",
        "config",
        "--dev",
        "xklbe-lb",
        "--source4",
        "198.19.0.0/16",
    ]);
    let vip = "198.18.1.10:53/udp";
    lb(&[
        "lb", "vip", "add", "--dev", "xklbe-lb", vip, "--ring", "1009",
    ]);
    for real in ["198.18.62.1", "198.18.63.1"] {
        lb(&["lb", "real", "add", "--dev", "xklbe-lb", vip, real]);
    }
    let addr: SocketAddr = "198.18.1.10:53".parse().unwrap();
    let sinks = [
        lab.udp_sink("real1", addr).unwrap(),
        lab.udp_sink("real2", addr).unwrap(),
    ];
    // 20 flows (a socket each) of 5 datagrams.
    for _ in 0..20 {
        assert_eq!(lab.send_udp("client", addr, 5, 32).unwrap(), 5);
    }
    // Both sinks at once, each until a second passes without a datagram
    // (the router may still be resolving a real's address).
    let quiet = std::time::Duration::from_secs(1);
    let max = std::time::Duration::from_secs(10);
    let got: Vec<u32> = std::thread::scope(|scope| {
        let counts: Vec<_> = sinks
            .iter()
            .map(|s| scope.spawn(move || s.count(100, quiet, max)))
            .collect();
        counts.into_iter().map(|c| c.join().unwrap()).collect()
    });
    eprintln!("datagrams per real: {got:?}");
    assert_eq!(got.iter().sum::<u32>(), 100, "datagrams per real: {got:?}");
    assert!(got.iter().all(|&n| n > 0), "both reals get flows: {got:?}");
    // Each flow stayed on one real: datagrams per real are whole flows.
    assert!(got.iter().all(|&n| n % 5 == 0), "{got:?}");
    let status = list(&lab, "xklbe-lb");
    assert_eq!(status["vips"][0]["packets"], 100);
    assert_eq!(status["flow_misses"], 20);
}

/// Sends `count` datagrams from `src` (a fixed port: one flow) to `dst`
/// in namespace `client`.
fn send_from(lab: &Lab, src: SocketAddr, dst: SocketAddr, count: u32) {
    lab.run_in("client", move || {
        let socket = std::net::UdpSocket::bind(src).unwrap();
        for _ in 0..count {
            socket.send_to(&[0xa5; 32], dst).unwrap();
        }
    })
    .unwrap();
}

/// `lb list --json` once the VIP counted `packets` frames (the peer's
/// NAPI handles them a moment after the send).
fn list_at(lab: &Lab, dev: &str, packets: u64) -> Value {
    let mut status = list(lab, dev);
    for _ in 0..40 {
        if status["vips"][0]["packets"].as_u64() >= Some(packets) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        status = list(lab, dev);
    }
    assert_eq!(status["vips"][0]["packets"], packets, "{status}");
    status
}

/// A client namespace and a balancer namespace joined by a veth pair, the
/// client routing 198.18.1.0/24 (the VIPs) through the balancer.
fn client_and_balancer(prefix: &str, client_if: &str, lb_if: &str, net: u8) -> Lab {
    let lab = Lab::builder(prefix)
        .namespace("client")
        .namespace("lb")
        .veth(
            "client",
            client_if,
            Some(&format!("198.18.{net}.1/24")),
            "lb",
            lb_if,
            Some(&format!("198.18.{net}.2/24")),
        )
        .gro("client", client_if)
        .build()
        .unwrap();
    let gateway = format!("198.18.{net}.2");
    ip(
        &lab,
        "client",
        &["route", "add", "198.18.1.0/24", "via", &gateway],
    );
    // The balancer's frames come back by XDP_TX. A veth peer with only GRO
    // gets them in its queue, but the kernel schedules its poll at once
    // only for a peer with an XDP program (veth_xdp_flush): without one they
    // may wait for other traffic (seen in CI: 1 of 50 back after 2 s).
    ok(&xdpkit_in(
        &lab,
        "client",
        &["attach", "pass", "--dev", client_if],
    ));
    lab
}

/// The `apply` file of a balancer on `dev` with VIP 198.18.1.10:53/udp and
/// reals 198.18.2.1-3, the first at `weight`.
fn lb_file(dev: &str, weight: u32) -> String {
    format!(
        r#"[interfaces.{dev}]
stages = ["balancer"]

[interfaces.{dev}.balancer]
source4 = "198.19.0.0/16"
# The 5-tuple hash, which `lb simulate` can compute (not the driver's).
flow-hash = "tuple"
vips = ["198.18.1.10:53/udp ring 1009"]
reals = [
  "198.18.1.10:53/udp 198.18.2.1 weight {weight}",
  "198.18.1.10:53/udp 198.18.2.2",
  "198.18.1.10:53/udp 198.18.2.3",
]
"#
    )
}

/// Packets per real address of the first VIP.
fn per_real(status: &Value) -> std::collections::BTreeMap<String, u64> {
    real_packets(status).into_iter().collect()
}

#[test]
fn apply_declares_vips_and_reals_and_drains_one_without_moving_flows() {
    if !require_root("apply_declares_vips_and_reals_and_drains_one_without_moving_flows") {
        return;
    }
    let lb_if = "xklbap-lb";
    let lab = client_and_balancer("xkt-lbap", "xklbap-cl", lb_if, 52);
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let all = file("all.toml", &lb_file(lb_if, 1));
    let drained = file("drained.toml", &lb_file(lb_if, 0));
    let apply = |args: &[&str]| xdpkit_in(&lab, "lb", &[&["apply"], args].concat());

    ok(&apply(&["-f", &all]));
    let status = list(&lab, lb_if);
    let vip = &status["vips"][0];
    assert_eq!(vip["vip"], "198.18.1.10:53/udp");
    assert_eq!(vip["ring"], 1009);
    let reals: Vec<(&str, u64)> = vip["reals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["address"].as_str().unwrap(),
                r["weight"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        reals,
        [("198.18.2.1", 1), ("198.18.2.2", 1), ("198.18.2.3", 1)]
    );
    // The running state exports as a file that changes nothing.
    let exported = ok(&xdpkit(&lab, &["export"]));
    assert!(
        exported.contains("\"198.18.1.10:53/udp 198.18.2.2 weight 1\","),
        "{exported}"
    );
    let again = ok(&apply(&["-f", &file("export.toml", &exported)]));
    assert!(again.contains("no changes"), "{again}");

    // 30 flows of 2 datagrams, each from its own port.
    let dst: SocketAddr = "198.18.1.10:53".parse().unwrap();
    let flow = |port: u16| SocketAddr::from(([198, 18, 52, 1], port));
    for port in 40_000..40_030 {
        send_from(&lab, flow(port), dst, 2);
    }
    let before = list_at(&lab, lb_if, 60);
    assert_eq!(before["flow_misses"], 30);
    let before_reals = per_real(&before);
    assert!(before_reals["198.18.2.1"] > 0, "{before_reals:?}");

    // The diff names the one real that changes, and nothing else.
    let dry: Value =
        serde_json::from_str(&ok(&apply(&["-f", &drained, "--dry-run", "--json"]))).unwrap();
    let keys = &dry["diff"]["interfaces"][0]["settings"][0]["keys"];
    assert_eq!(keys.as_array().unwrap().len(), 1, "{dry}");
    assert_eq!(keys[0]["key"], "reals");
    assert_eq!(
        keys[0]["changed"],
        serde_json::json!([{
            "name": "198.18.1.10:53/udp 198.18.2.1",
            "from": "198.18.1.10:53/udp 198.18.2.1 weight 1",
            "to": "198.18.1.10:53/udp 198.18.2.1 weight 0",
        }])
    );
    assert_eq!(keys[0]["added"], serde_json::json!([]));
    assert_eq!(keys[0]["removed"], serde_json::json!([]));
    let text = ok(&apply(&["-f", &drained]));
    assert!(
        text.contains("~ real: 198.18.1.10:53/udp 198.18.2.1: weight 1 -> weight 0"),
        "{text}"
    );
    let status = list(&lab, lb_if);
    let vip = &status["vips"][0];
    assert_eq!(vip["ring"], 1009);
    assert_eq!(vip["reals"][0]["weight"], 0);
    assert_eq!(vip["reals"][0]["slots"], 0);
    assert_eq!(vip["reals"][1]["weight"], 1);
    // Counters survive the apply.
    assert_eq!(per_real(&status), before_reals);

    // The same 30 flows again: each keeps its real (the drained one too),
    // all from the flow table.
    for port in 40_000..40_030 {
        send_from(&lab, flow(port), dst, 2);
    }
    let after = list_at(&lab, lb_if, 120);
    assert_eq!(after["flow_misses"], 30, "no flow chose again");
    let doubled: std::collections::BTreeMap<String, u64> = before_reals
        .iter()
        .map(|(a, n)| (a.clone(), 2 * n))
        .collect();
    assert_eq!(per_real(&after), doubled);
    // New flows avoid the drained real.
    for port in 41_000..41_020 {
        send_from(&lab, flow(port), dst, 1);
    }
    let last = list_at(&lab, lb_if, 140);
    assert_eq!(per_real(&last)["198.18.2.1"], doubled["198.18.2.1"]);

    // A bad file: exit 2 with file:line and key, nothing changed.
    let bad = file(
        "bad.toml",
        &lb_file(lb_if, 1).replace("53/udp 198.18.2.3", "54/udp 198.18.2.3"),
    );
    let out = apply(&["-f", &bad]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{bad}:12: interfaces.{lb_if}.balancer.reals[2]: VIP 198.18.1.10:54/udp is not in vips"
        )),
        "{stderr}"
    );
    let unchanged = list(&lab, lb_if);
    assert_eq!(unchanged["vips"], last["vips"]);
    ok(&xdpkit(&lab, &["detach", "--dev", lb_if]));
}

/// A UDP frame of flow `src` -> `dst`, built by etherparse.
fn udp_frame(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (SocketAddr::V4(s), SocketAddr::V4(d)) = (src, dst) else {
        panic!("IPv4 flows")
    };
    let mut f = Vec::new();
    etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(s.ip().octets(), d.ip().octets(), 64)
        .udp(s.port(), d.port())
        .write(&mut f, &[0xa5; 32])
        .unwrap();
    f
}

/// Writes `frames` as a pcapng capture.
fn write_pcapng(path: &std::path::Path, frames: &[Vec<u8>]) {
    use pcap_file::pcapng::{
        blocks::{
            enhanced_packet::EnhancedPacketBlock, interface_description::InterfaceDescriptionBlock,
        },
        PcapNgWriter,
    };
    let mut w = PcapNgWriter::new(std::fs::File::create(path).unwrap()).unwrap();
    w.write_pcapng_block(InterfaceDescriptionBlock {
        linktype: pcap_file::DataLink::ETHERNET,
        snaplen: 65535,
        options: vec![],
    })
    .unwrap();
    for (i, f) in frames.iter().enumerate() {
        w.write_pcapng_block(EnhancedPacketBlock {
            interface_id: 0,
            timestamp: std::time::Duration::from_millis(i as u64),
            original_len: f.len() as u32,
            data: std::borrow::Cow::Borrowed(f),
            options: vec![],
        })
        .unwrap();
    }
}

/// The reals the reference model chooses for `frames` (fresh flow table)
/// from the balancer `text` (an apply file) declares for `dev`.
fn model_reals(text: &str, dev: &str, frames: &[Vec<u8>]) -> Vec<Option<String>> {
    use xdpkit::programs::balancer::{config, model, tables};
    let host =
        xdpkit::config::HostConfig::parse("lb.toml", text, std::path::Path::new(".")).unwrap();
    let settings = &host.interfaces[dev].stages[0].settings;
    let d = config::parse(settings).unwrap();
    let t = tables::build(d.config, &d.vips).unwrap();
    let mut flows = model::Flows::new();
    frames
        .iter()
        .map(|f| {
            let r = model::decide(&t, &mut flows, f).real?;
            let real = t.reals[r as usize];
            Some(
                std::net::Ipv4Addr::new(real.addr[0], real.addr[1], real.addr[2], real.addr[3])
                    .to_string(),
            )
        })
        .collect()
}

#[test]
fn lb_simulate_agrees_with_the_traffic_and_the_model() {
    if !require_root("lb_simulate_agrees_with_the_traffic_and_the_model") {
        return;
    }
    let lb_if = "xklbsm-lb";
    let lab = client_and_balancer("xkt-lbsim", "xklbsm-cl", lb_if, 53);
    let dir = tempfile::tempdir().unwrap();
    let text = lb_file(lb_if, 1);
    let path = dir.path().join("lb.toml");
    std::fs::write(&path, &text).unwrap();
    let path = path.display().to_string();
    ok(&xdpkit(&lab, &["apply", "-f", &path]));

    let dst: SocketAddr = "198.18.1.10:53".parse().unwrap();
    let srcs: Vec<SocketAddr> = (42_000..42_020)
        .map(|port| SocketAddr::from(([198, 18, 53, 1], port)))
        .collect();
    let flow_args: Vec<String> = srcs
        .iter()
        .flat_map(|s| ["--flow".to_string(), format!("{s} -> {dst}/udp")])
        .collect();
    let simulate = |extra: &[&str]| -> Value {
        let mut args = vec!["lb", "simulate", "--dev", lb_if, "--json"];
        args.extend(extra);
        serde_json::from_str(&ok(&xdpkit(&lab, &args))).unwrap()
    };
    let with_flows = |extra: &[&str]| {
        let mut args: Vec<&str> = flow_args.iter().map(String::as_str).collect();
        args.extend(extra);
        simulate(&args)
    };
    let real_of = |flow: &Value| {
        let reals = flow["reals"].as_array().unwrap();
        assert_eq!(reals.len(), 1, "{flow}");
        reals[0].as_str().unwrap().to_string()
    };

    // Before any traffic: the file's balancer, the running one and the
    // model choose alike, from the ring.
    let declared = with_flows(&["-f", &path]);
    let running = with_flows(&[]);
    let model = model_reals(
        &text,
        lb_if,
        &srcs.iter().map(|s| udp_frame(*s, dst)).collect::<Vec<_>>(),
    );
    let mut predicted = Vec::new();
    for (i, src) in srcs.iter().enumerate() {
        let (d, r) = (&declared["flows"][i], &running["flows"][i]);
        assert_eq!(d["flow"], format!("{src} -> {dst}/udp"));
        assert_eq!(real_of(d), real_of(r), "{d} {r}");
        assert_eq!(Some(real_of(d)), model[i], "{d}");
        for f in [d, r] {
            assert_eq!(f["outcomes"], serde_json::json!({"flow_miss": 1}), "{f}");
            assert_eq!(f["model_disagrees"], 0);
            assert_eq!(f["outer"]["dst"], real_of(f).as_str());
            assert_eq!(f["outer"]["encap"], "ipip");
            assert!(
                f["outer"]["src"].as_str().unwrap().starts_with("198.19."),
                "{f}"
            );
        }
        predicted.push(real_of(d));
    }
    assert!(
        predicted
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len()
            > 1,
        "20 flows over 3 reals: {predicted:?}"
    );

    // Real traffic, one flow at a time: the real whose counter moves is
    // the one simulated.
    let mut seen = per_real(&list(&lab, lb_if));
    for (i, src) in srcs.iter().enumerate() {
        send_from(&lab, *src, dst, 3);
        let now = per_real(&list_at(&lab, lb_if, 3 * (i as u64 + 1)));
        let moved: Vec<(&String, u64)> = now
            .iter()
            .filter(|&(a, n)| *n != seen[a])
            .map(|(a, n)| (a, n - seen[a]))
            .collect();
        assert_eq!(moved, [(&predicted[i], 3)], "flow {src}");
        seen = now;
    }
    let counters = list(&lab, lb_if);

    // Now the running balancer's copy finds every flow in its flow table.
    let running = with_flows(&[]);
    for (i, f) in running["flows"].as_array().unwrap().iter().enumerate() {
        assert_eq!(f["outcomes"], serde_json::json!({"flow_hit": 1}), "{f}");
        assert_eq!(real_of(f), predicted[i]);
    }

    // A capture, grouped by flow: 3 frames of each flow, interleaved, and
    // one datagram to a port that is no VIP.
    let mut frames = Vec::new();
    for _ in 0..3 {
        frames.extend(srcs.iter().map(|s| udp_frame(*s, dst)));
    }
    frames.push(udp_frame(srcs[0], "198.18.1.10:54".parse().unwrap()));
    let capture = dir.path().join("flows.pcapng");
    write_pcapng(&capture, &frames);
    let capture = capture.display().to_string();
    for (extra, outcomes) in [
        (vec![], serde_json::json!({"flow_hit": 3})),
        (
            vec!["-f", path.as_str()],
            serde_json::json!({"flow_miss": 1, "flow_hit": 2}),
        ),
    ] {
        let mut args = vec!["--pcap", capture.as_str()];
        args.extend(extra);
        let out = simulate(&args);
        assert_eq!(out["packets"], 61);
        let flows = out["flows"].as_array().unwrap();
        assert_eq!(flows.len(), 21);
        for (i, f) in flows[..20].iter().enumerate() {
            assert_eq!(f["packets"], 3);
            assert_eq!(f["outcomes"], outcomes, "{f}");
            assert_eq!(real_of(f), predicted[i]);
            assert_eq!(f["model_disagrees"], 0);
        }
        assert_eq!(flows[20]["outcomes"], serde_json::json!({"not_vip": 1}));
        assert_eq!(flows[20]["reals"], serde_json::json!([]));
    }
    let text_out = ok(&xdpkit(
        &lab,
        &["lb", "simulate", "--dev", lb_if, "--flow", &flow_args[1]],
    ));
    assert_eq!(
        text_out.trim(),
        format!(
            "{}: real {}, outer {} -> {} ipip (flow_hit 1)",
            flow_args[1],
            predicted[0],
            running["flows"][0]["outer"]["src"].as_str().unwrap(),
            predicted[0]
        )
    );

    // Simulations leave the balancer as it was: counters, and a flow
    // simulated twice is new both times (the live flow table never got it).
    let fresh = format!("198.18.53.1:43000 -> {dst}/udp");
    for _ in 0..2 {
        let f = simulate(&["--flow", &fresh]);
        assert_eq!(
            f["flows"][0]["outcomes"],
            serde_json::json!({"flow_miss": 1})
        );
    }
    let after = list(&lab, lb_if);
    for key in ["vips", "flow_hits", "flow_misses", "no_real"] {
        assert_eq!(after[key], counters[key], "{key}");
    }
    // The veth offers an RX hash and the balancer runs natively: with the
    // file's 5-tuple hash the simulation is the live choice; with `auto`
    // it says the live balancer hashes new flows otherwise.
    assert_eq!(after["hashed_tuple"], 20, "{after}");
    assert_eq!(running["new_flows_by_rx_hash"], false);
    ok(&xdpkit(
        &lab,
        &["lb", "config", "--dev", lb_if, "--flow-hash", "auto"],
    ));
    assert_eq!(simulate(&["--flow", &fresh])["new_flows_by_rx_hash"], true);

    // Bad input: exit 2.
    let other = dir.path().join("other.toml");
    std::fs::write(&other, lb_file("xklbsm-xx", 1)).unwrap();
    let other = other.display().to_string();
    for args in [
        vec![
            "lb",
            "simulate",
            "--dev",
            lb_if,
            "--flow",
            "198.18.53.1:1 -> 198.18.1.10:53",
        ],
        vec!["lb", "simulate", "--dev", lb_if],
        vec![
            "lb", "simulate", "--dev", lb_if, "-f", &other, "--flow", &fresh,
        ],
        vec!["lb", "simulate", "--dev", "xklbsm-xx", "--flow", &fresh],
        vec!["lb", "simulate", "--dev", lb_if, "--pcap", &path],
    ] {
        let out = xdpkit(&lab, &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
    }
    ok(&xdpkit(&lab, &["detach", "--dev", lb_if]));
}
