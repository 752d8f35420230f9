//! Issue 13 points 1 and 6: a firewall rule `to-userspace proto udp dport
//! 5000` on a live veth. Without a socket its frames go on to the stack
//! (outcome no_socket); with an AF_XDP socket bound to the veth's queue it
//! receives exactly those frames (count and bytes) while the rest of the
//! UDP traffic still reaches a socket of the stack.

mod common;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use serde_json::Value;
use xdpkit::xsk::{Mode, Umem, UmemConfig, XskSocket};
use xdpkit_lab::lab::{require_root, Lab};

use common::{ok, rule_row, xdpkit_in};

const GEN_IF: &str = "xkxr-g";
const DUT_IF: &str = "xkxr-d";
const DUT_IP: &str = "198.18.86.2";
/// Ethernet, IPv4 and UDP headers of the frames the sender's stack builds.
const HEADERS: u64 = 14 + 20 + 8;

/// The firewall's count of outcome `name` on `DUT_IF` (`status --json`).
fn outcome(lab: &Lab, name: &str) -> u64 {
    let status: Value = serde_json::from_str(&ok(&xdpkit_in(
        lab,
        "dut",
        &["status", "--dev", DUT_IF, "--json"],
    )))
    .unwrap();
    let status = status.as_array().and_then(|a| a.first()).unwrap_or(&status);
    status["firewall"]
        .as_array()
        .expect("status has the firewall's outcomes")
        .iter()
        .find(|o| o["outcome"] == name)
        .and_then(|o| o["packets"].as_u64())
        .unwrap_or_else(|| panic!("no outcome {name} in {status}"))
}

/// Receives from `socket` until `want` frames came (or 10 s passed), then
/// for 300 ms more to catch any extra; returns frames and bytes, and
/// checks that each is a UDP datagram to port 5000.
fn receive(socket: &mut XskSocket, want: u64) -> (u64, u64) {
    let (mut frames, mut bytes) = (0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut quiet_until = None;
    loop {
        let now = Instant::now();
        if now >= deadline || quiet_until.is_some_and(|q| now >= q) {
            break;
        }
        socket.wait(Duration::from_millis(50)).unwrap();
        socket.rx_batch(64, |frame| {
            frames += 1;
            bytes += frame.len() as u64;
            let dport = frame.get(36..38).map(|p| u16::from_be_bytes([p[0], p[1]]));
            assert_eq!(
                (frame.get(23).copied(), dport),
                (Some(17), Some(5000)),
                "a frame the rule does not select reached the socket"
            );
        });
        if frames >= want && quiet_until.is_none() {
            quiet_until = Some(Instant::now() + Duration::from_millis(300));
        }
    }
    (frames, bytes)
}

#[test]
fn a_socket_receives_exactly_the_frames_its_rule_selects() {
    if !require_root("a_socket_receives_exactly_the_frames_its_rule_selects") {
        return;
    }
    let lab = Lab::builder("xkxr")
        .namespace("gen")
        .namespace("dut")
        .veth(
            "gen",
            GEN_IF,
            Some("198.18.86.1/24"),
            "dut",
            DUT_IF,
            Some("198.18.86.2/24"),
        )
        .build()
        .expect("build lab");
    ok(&xdpkit_in(
        &lab,
        "dut",
        &["attach", "firewall", "--dev", DUT_IF],
    ));
    let id = ok(&xdpkit_in(
        &lab,
        "dut",
        &[
            "rule",
            "add",
            "--dev",
            DUT_IF,
            "to-userspace",
            "proto",
            "udp",
            "dport",
            "5000",
        ],
    ));
    let id: u64 = id.trim().parse().unwrap();
    let to = |port: u16| -> SocketAddr { format!("{DUT_IP}:{port}").parse().unwrap() };
    let selected = lab.udp_sink("dut", to(5000)).unwrap();
    let other = lab.udp_sink("dut", to(5001)).unwrap();
    let wait = |sink: &xdpkit_lab::lab::UdpSink, want| {
        sink.count(want, Duration::from_millis(500), Duration::from_secs(10))
    };

    // No socket on the queue: the rule's frames go on to the stack.
    assert_eq!(lab.send_udp("gen", to(5000), 50, 100).unwrap(), 50);
    assert_eq!(wait(&selected, 51), 50, "without a socket, to the stack");
    assert_eq!(outcome(&lab, "no_socket"), 50);

    // A socket on queue 0 (a veth has one queue): it gets them now.
    let umem = Umem::new(UmemConfig {
        frame_count: 2048,
        ring_size: 1024,
        ..UmemConfig::default()
    })
    .unwrap();
    let mut socket = lab
        .run_in("dut", || XskSocket::bind(DUT_IF, 0, umem, Mode::Copy))
        .unwrap()
        .unwrap();
    assert_eq!(socket.mode(), Mode::Copy, "veth has no zero-copy");
    // At most 150 datagrams wait in a sink at a time: its default receive
    // buffer holds about 200 (the socket's 500 frames fit its rings).
    let (small, large) = (300u32, 200u32);
    let rest = 150u32;
    assert_eq!(lab.send_udp("gen", to(5000), small, 64).unwrap(), small);
    assert_eq!(lab.send_udp("gen", to(5001), rest, 80).unwrap(), rest);
    assert_eq!(wait(&other, rest + 1), rest, "the rest reach the stack");
    assert_eq!(lab.send_udp("gen", to(5000), large, 1000).unwrap(), large);
    let want = u64::from(small + large);
    let (frames, bytes) = receive(&mut socket, want);
    let stats = socket.stats();
    assert_eq!(
        (frames, bytes),
        (
            want,
            u64::from(small) * (HEADERS + 64) + u64::from(large) * (HEADERS + 1000)
        ),
        "the socket's frames and bytes ({stats:?})"
    );
    assert_eq!((stats.rx_frames, stats.rx_bytes), (frames, bytes));
    assert_eq!(
        wait(&selected, 1),
        0,
        "none of the rule's frames reach the stack"
    );
    assert_eq!(outcome(&lab, "no_socket"), 50, "all found the socket");

    let row = rule_row(&lab, "dut", DUT_IF, id);
    assert_eq!(row["packets"].as_u64(), Some(50 + want), "{row}");
    assert!(
        row["rule"].as_str().unwrap().starts_with("to-userspace"),
        "{row}"
    );
    println!(
        "socket: {frames} frames, {bytes} bytes; stack: {rest} to port 5001, 50 before the socket"
    );
}
