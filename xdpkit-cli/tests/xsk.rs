//! `xdpkit xsk` on a veth lab: without a stage that feeds sockets it
//! refuses (exit 2, saying what to attach); with the xsk stage, `xsk dump`
//! receives exactly the frames sent (count, bytes and contents), and `xsk
//! echo` answers a UDP datagram from another namespace, and `xsk fwd`
//! sends every frame out of the other interface unchanged.

mod common;

use std::{
    io::{BufRead, BufReader},
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    process::{Child, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use etherparse::PacketBuilder;
use pcap_file::pcapng::{Block, PcapNgReader};
use xdpkit_lab::lab::{require_root, Lab};

use common::{ok, sysctl, xdpkit_in, XDPKIT};

/// Namespaces `gen` and `dut` joined by `<prefix>-g` and `<prefix>-d`, with
/// the given addresses; IPv6 off on gen's end so that it sends nothing of
/// its own (router solicitations would reach the socket too).
fn lab(prefix: &str, gen_addr: Option<&str>, dut_addr: Option<&str>) -> Lab {
    let gen_if = format!("{prefix}-g");
    let lab = Lab::builder(prefix)
        .namespace("gen")
        .namespace("dut")
        .veth(
            "gen",
            &gen_if,
            gen_addr,
            "dut",
            &format!("{prefix}-d"),
            dut_addr,
        )
        .build()
        .expect("build lab");
    sysctl(
        &lab,
        "gen",
        &format!("net.ipv6.conf.{gen_if}.disable_ipv6=1"),
    );
    lab
}

/// Kills the command if the test fails before it ends.
struct Running(Option<Child>);

impl Running {
    /// Waits (at most `limit`) for the command to end; its stdout.
    fn finish(mut self, limit: Duration) -> String {
        let mut child = self.0.take().unwrap();
        let started = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if started.elapsed() > limit {
                let _ = child.kill();
                panic!("xdpkit xsk did not stop within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        ok(&child.wait_with_output().unwrap())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts `xdpkit ARGS` in `ns` and waits until it says its socket is bound.
fn start(lab: &Lab, ns: &str, args: &[&str]) -> Running {
    let mut child = lab
        .command(ns, XDPKIT)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let running = Running(Some(child));
    let line = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("xdpkit xsk says it is bound");
    assert!(line.contains("bound to"), "{line}");
    assert!(
        line.contains("(copy mode)"),
        "veth has copy mode only: {line}"
    );
    running
}

/// `count` UDP frames of 60 to 1059 bytes, each different.
fn frames(src: [u8; 6], dst: [u8; 6], count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            let mut frame = Vec::new();
            PacketBuilder::ethernet2(src, dst)
                .ipv4([198, 18, 78, 1], [198, 18, 78, 2], 64)
                .udp(40000 + i as u16, 9)
                .write(&mut frame, &vec![i as u8; 18 + i % 1000])
                .unwrap();
            frame
        })
        .collect()
}

/// The frames in a pcapng file (whole, as captured); removes the file.
fn read_pcapng(path: &std::path::Path) -> Vec<Vec<u8>> {
    let mut reader = PcapNgReader::new(std::fs::File::open(path).unwrap()).unwrap();
    let mut captured = Vec::new();
    while let Some(block) = reader.next_block() {
        if let Block::EnhancedPacket(p) = block.unwrap() {
            assert_eq!(p.original_len as usize, p.data.len(), "whole frames");
            captured.push(p.data.to_vec());
        }
    }
    std::fs::remove_file(path).unwrap();
    captured
}

#[test]
fn xsk_dump_receives_exactly_the_frames_sent() {
    if !require_root("xsk_dump_receives_exactly_the_frames_sent") {
        return;
    }
    const FRAMES: usize = 500;
    let lab = lab("xkxs", None, None);
    let path = std::env::temp_dir().join(format!("xkxs-{}.pcapng", std::process::id()));
    let path_arg = path.to_str().unwrap();

    // Nothing feeds sockets yet: a usage error naming the fix, no file.
    let out = xdpkit_in(
        &lab,
        "dut",
        &["xsk", "dump", "--dev", "xkxs-d", "-w", path_arg],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("xdpkit attach xsk --dev xkxs-d"),
        "{stderr}"
    );
    assert!(!path.exists(), "a refused dump creates no file");

    ok(&xdpkit_in(
        &lab,
        "dut",
        &["attach", "xsk", "--dev", "xkxs-d"],
    ));
    let count = FRAMES.to_string();
    let dump = start(
        &lab,
        "dut",
        &[
            "xsk", "dump", "--dev", "xkxs-d", "--count", &count, "--json", "-w", path_arg,
        ],
    );
    let src = lab.mac("gen", "xkxs-g").unwrap();
    let dst = lab.mac("dut", "xkxs-d").unwrap();
    let frames = frames(src, dst, FRAMES);
    let sent = lab.send_frames("gen", "xkxs-g", &frames).unwrap();
    assert_eq!(sent as usize, FRAMES);
    let report: serde_json::Value =
        serde_json::from_str(&dump.finish(Duration::from_secs(20))).unwrap();
    let bytes: usize = frames.iter().map(Vec::len).sum();
    assert_eq!(report["rx_frames"], FRAMES as u64, "{report}");
    assert_eq!(report["rx_bytes"], bytes as u64, "{report}");
    assert_eq!(report["mode"], "copy");

    let mut reader = PcapNgReader::new(std::fs::File::open(&path).unwrap()).unwrap();
    let mut captured = Vec::new();
    while let Some(block) = reader.next_block() {
        if let Block::EnhancedPacket(p) = block.unwrap() {
            assert_eq!(p.original_len as usize, p.data.len(), "whole frames");
            captured.push(p.data.to_vec());
        }
    }
    std::fs::remove_file(&path).unwrap();
    assert_eq!(captured.len(), FRAMES);
    assert!(captured == frames, "the frames sent, in order, unchanged");

    ok(&xdpkit_in(&lab, "dut", &["detach", "--dev", "xkxs-d"]));
}

#[test]
fn xsk_echo_answers_a_udp_datagram_from_another_namespace() {
    if !require_root("xsk_echo_answers_a_udp_datagram_from_another_namespace") {
        return;
    }
    const DATAGRAMS: usize = 3;
    let lab = lab("xkxe", Some("198.18.78.1/24"), Some("198.18.78.2/24"));
    // The socket takes ARP too: gen knows dut's MAC without asking.
    let dut_mac = lab.mac("dut", "xkxe-d").unwrap();
    let dut_ip = IpAddr::V4(Ipv4Addr::new(198, 18, 78, 2));
    lab.static_neighbor("gen", "xkxe-g", dut_ip, dut_mac)
        .unwrap();
    ok(&xdpkit_in(
        &lab,
        "dut",
        &["attach", "xsk", "--dev", "xkxe-d"],
    ));
    let count = DATAGRAMS.to_string();
    let echo = start(
        &lab,
        "dut",
        &[
            "xsk",
            "echo",
            "--dev",
            "xkxe-d",
            "--count",
            &count,
            "--duration",
            "30",
            "--json",
        ],
    );
    let client = lab
        .run_in("gen", || UdpSocket::bind("198.18.78.1:0"))
        .unwrap()
        .unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let server = SocketAddr::new(dut_ip, 7);
    let mut buf = [0u8; 128];
    for i in 0..DATAGRAMS {
        let payload = format!("xdpkit echo {i}");
        client.send_to(payload.as_bytes(), server).unwrap();
        let (n, from) = client.recv_from(&mut buf).expect("the echo's reply");
        assert_eq!(from, server, "the reply comes from where the datagram went");
        assert_eq!(&buf[..n], payload.as_bytes());
    }
    let report: serde_json::Value =
        serde_json::from_str(&echo.finish(Duration::from_secs(10))).unwrap();
    assert_eq!(report["rx_frames"], DATAGRAMS as u64, "{report}");
    assert_eq!(report["tx_frames"], DATAGRAMS as u64, "{report}");
    ok(&xdpkit_in(&lab, "dut", &["detach", "--dev", "xkxe-d"]));
}

#[test]
fn xsk_fwd_sends_every_frame_out_of_the_other_interface() {
    if !require_root("xsk_fwd_sends_every_frame_out_of_the_other_interface") {
        return;
    }
    const FRAMES: usize = 300;
    // gen -- (a) dut (b) -- sink: fwd from a to b, a dump on sink's end.
    let lab = Lab::builder("xkxf")
        .namespace("gen")
        .namespace("dut")
        .namespace("sink")
        .veth("gen", "xkxf-g", None, "dut", "xkxf-a", None)
        .veth("dut", "xkxf-b", None, "sink", "xkxf-s", None)
        .build()
        .expect("build lab");
    // Nothing but the forwarded frames reaches the sink.
    sysctl(&lab, "gen", "net.ipv6.conf.xkxf-g.disable_ipv6=1");
    sysctl(&lab, "dut", "net.ipv6.conf.xkxf-b.disable_ipv6=1");
    ok(&xdpkit_in(
        &lab,
        "dut",
        &["attach", "xsk", "--dev", "xkxf-a"],
    ));
    ok(&xdpkit_in(
        &lab,
        "sink",
        &["attach", "xsk", "--dev", "xkxf-s"],
    ));
    let path = std::env::temp_dir().join(format!("xkxf-{}.pcapng", std::process::id()));
    let count = FRAMES.to_string();
    let dump = start(
        &lab,
        "sink",
        &[
            "xsk",
            "dump",
            "--dev",
            "xkxf-s",
            "--count",
            &count,
            "-w",
            path.to_str().unwrap(),
        ],
    );
    let fwd = start(
        &lab,
        "dut",
        &[
            "xsk", "fwd", "--dev", "xkxf-a", "--to", "xkxf-b", "--count", &count, "--json",
        ],
    );
    let src = lab.mac("gen", "xkxf-g").unwrap();
    let dst = lab.mac("dut", "xkxf-a").unwrap();
    let frames = frames(src, dst, FRAMES);
    assert_eq!(
        lab.send_frames("gen", "xkxf-g", &frames).unwrap() as usize,
        FRAMES
    );
    let report: serde_json::Value =
        serde_json::from_str(&fwd.finish(Duration::from_secs(20))).unwrap();
    assert_eq!(report["rx_frames"], FRAMES as u64, "{report}");
    assert_eq!(report["tx_frames"], FRAMES as u64, "{report}");
    dump.finish(Duration::from_secs(20));
    assert!(
        read_pcapng(&path) == frames,
        "the frames sent, in order, unchanged"
    );
    ok(&xdpkit_in(&lab, "dut", &["detach", "--dev", "xkxf-a"]));
    ok(&xdpkit_in(&lab, "sink", &["detach", "--dev", "xkxf-s"]));
}
