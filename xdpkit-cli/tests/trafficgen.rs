//! `xdpkit trafficgen` between two namespaces: UDP frames from random
//! sources reach a socket, TCP SYNs arrive with valid checksums, pacing
//! never sends more than asked, and bad arguments change nothing.

mod common;

use std::{net::SocketAddr, time::Duration};

use serde_json::Value;
use xdpkit_lab::lab::{require_root, Lab};

use common::{ok, xdpkit_in};

const QUIET: Duration = Duration::from_millis(300);
const MAX_WAIT: Duration = Duration::from_secs(5);
const GEN_IF: &str = "xktgc-g";
const DUT_IF: &str = "xktgc-d";

fn lab() -> Lab {
    let lab = Lab::builder("xktgc")
        .namespace("gen")
        .namespace("dut")
        .veth(
            "gen",
            GEN_IF,
            Some("198.18.64.1/24"),
            "dut",
            DUT_IF,
            Some("198.18.64.2/24"),
        )
        .build()
        .expect("build lab");
    // Replies to the random sources, and the reverse-path check, need a route.
    let status = lab
        .command("dut", "ip")
        .args(["route", "add", "198.18.65.0/24", "dev", DUT_IF])
        .status()
        .unwrap();
    assert!(status.success());
    // A veth drops XDP_TX frames unless its peer runs XDP (or GRO).
    ok(&xdpkit_in(
        &lab,
        "dut",
        &["attach", "pass", "--dev", DUT_IF],
    ));
    lab
}

fn dut_mac(lab: &Lab) -> String {
    common::mac(lab, "dut", DUT_IF)
}

/// The counters of the `Tcp:` lines of /proc/net/snmp in `ns`, by name.
fn tcp_counter(lab: &Lab, ns: &str, name: &str) -> u64 {
    let out = lab
        .command(ns, "cat")
        .arg("/proc/net/snmp")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next().unwrap(), tcp.next().unwrap());
    let at = names.split_whitespace().position(|n| n == name).unwrap();
    values.split_whitespace().nth(at).unwrap().parse().unwrap()
}

#[test]
fn trafficgen_sends_udp_and_tcp_syn_from_random_sources() {
    if !require_root("trafficgen_sends_udp_and_tcp_syn_from_random_sources") {
        return;
    }
    let lab = lab();
    let mac = dut_mac(&lab);
    let dst: SocketAddr = "198.18.64.2:9999".parse().unwrap();
    let sink = lab.udp_sink("dut", dst).unwrap();

    // UDP: every datagram reaches the socket (few enough for its buffer).
    let out = common::trafficgen(
        &lab,
        GEN_IF,
        &mac,
        &[
            "--src",
            "198.18.65.0/24",
            "--dst",
            "198.18.64.2",
            "--dport",
            "9999",
            "--count",
            "40",
            "--json",
        ],
    );
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["frames"], 40, "{report}");
    assert_eq!(report["frame_bytes"], 60);
    assert_eq!(sink.count(40, QUIET, MAX_WAIT), 40, "datagrams lost");

    // TCP SYN, two threads: the stack takes every segment (a checksum
    // error would be counted, not taken) and answers each with a RST.
    let segs = tcp_counter(&lab, "dut", "InSegs");
    let errors = tcp_counter(&lab, "dut", "InCsumErrors");
    let out = common::trafficgen(
        &lab,
        GEN_IF,
        &mac,
        &[
            "--src",
            "198.18.65.0/24",
            "--dst",
            "198.18.64.2",
            "--dport",
            "9998",
            "--proto",
            "tcp-syn",
            "--count",
            "50",
            "--threads",
            "2",
        ],
    );
    assert!(out.contains("sent 50 frames of 60 bytes"), "{out}");
    let mut taken = 0;
    for _ in 0..50 {
        taken = tcp_counter(&lab, "dut", "InSegs") - segs;
        if taken >= 50 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(taken, 50, "SYNs taken by the stack");
    assert_eq!(tcp_counter(&lab, "dut", "InCsumErrors"), errors);

    // Pacing: never more than the rate allows (200 pps for 0.5 s).
    let out = common::trafficgen(
        &lab,
        GEN_IF,
        &mac,
        &["--pps", "200", "--duration", "0.5", "--json"],
    );
    let report: Value = serde_json::from_str(&out).unwrap();
    let frames = report["frames"].as_u64().unwrap();
    let seconds = report["seconds"].as_f64().unwrap();
    assert!(frames > 0, "{report}");
    assert!(
        frames as f64 <= 200.0 * seconds + 1.0,
        "paced run sent too much: {report}"
    );
    ok(&xdpkit_in(&lab, "dut", &["detach", "--dev", DUT_IF]));
}

#[test]
fn trafficgen_refuses_bad_arguments_with_exit_code_2() {
    if !require_root("trafficgen_refuses_bad_arguments_with_exit_code_2") {
        return;
    }
    let lab = Lab::builder("xktgb")
        .namespace("gen")
        .veth("gen", "xktgb-a", None, "gen", "xktgb-b", None)
        .build()
        .expect("build lab");
    let mac = "02:00:00:00:00:02";
    for (args, says) in [
        (vec!["--dev", "xktgb-a", "--dst-mac", mac], "--count"),
        (
            vec![
                "--dev",
                "xktgb-a",
                "--dst-mac",
                mac,
                "--count",
                "1",
                "--size",
                "20",
            ],
            "--size 20 is out of range",
        ),
        (
            vec!["--dev", "xktgb-a", "--dst-mac", "02:00", "--count", "1"],
            "six hex bytes",
        ),
        (
            vec!["--dev", "xktgb-nope", "--dst-mac", mac, "--count", "1"],
            "xktgb-nope",
        ),
        (
            vec!["--dev", "xktgb-a", "--dst-mac", mac, "--duration", "0"],
            "expected seconds",
        ),
    ] {
        let mut full = vec!["trafficgen"];
        full.extend(args);
        let out = xdpkit_in(&lab, "gen", &full);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{full:?}: {stderr}");
        assert!(stderr.contains(says), "{full:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{full:?}: one line: {stderr}");
    }
}
