//! `xdpkit lb` on an attached balancer: VIPs and reals changed from the
//! command line while datagrams flow, counters read back with `lb list`.

use std::{net::SocketAddr, process::Output};

use serde_json::Value;
use xdpkit_lab::lab::{require_root, Lab};

mod common;

use common::{ok, xdpkit_in};

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
    let lab = Lab::builder("xkt-lb")
        .namespace("client")
        .namespace("lb")
        .veth(
            "client",
            client_if,
            Some("198.18.51.1/24"),
            "lb",
            lb_if,
            Some("198.18.51.2/24"),
        )
        // The encapsulated frames leave by XDP_TX: the peer needs GRO.
        .gro("client", client_if)
        .build()
        .unwrap();
    let route = lab
        .command("client", "ip")
        .args(["route", "add", "198.18.1.0/24", "via", "198.18.51.2"])
        .status()
        .unwrap();
    assert!(route.success());
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

/// Sets a sysctl inside `ns`.
fn sysctl(lab: &Lab, ns: &str, key: &str, value: &str) {
    let status = lab
        .command(ns, "sysctl")
        .args(["-qw", &format!("{key}={value}")])
        .status()
        .unwrap();
    assert!(status.success(), "sysctl {key}={value} in {ns}");
}

fn ip(lab: &Lab, ns: &str, args: &[&str]) {
    let status = lab.command(ns, "ip").args(args).status().unwrap();
    assert!(status.success(), "ip {args:?} in {ns}");
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
    sysctl(&lab, "router", "net.ipv4.ip_forward", "1");
    // The outer sources (198.19.0.0/16) have no route back: no reverse-path check.
    for key in ["all", "default", "xklbe-rl"] {
        sysctl(
            &lab,
            "router",
            &format!("net.ipv4.conf.{key}.rp_filter"),
            "0",
        );
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
