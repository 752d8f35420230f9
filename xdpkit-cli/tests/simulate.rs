//! `xdpkit simulate`: a crafted capture through the real firewall program.

use std::{borrow::Cow, path::Path, process::Command, time::Duration};

use etherparse::PacketBuilder;
use pcap_file::{
    pcap::{PcapPacket, PcapWriter},
    pcapng::{
        blocks::{
            enhanced_packet::EnhancedPacketBlock, interface_description::InterfaceDescriptionBlock,
        },
        PcapNgWriter,
    },
    DataLink,
};
use serde_json::Value;
use xdpkit_lab::lab::require_root;

const XDPKIT: &str = env!("CARGO_BIN_EXE_xdpkit");

const RULES: &str = "# simulate test\ndeny src 198.18.0.0/16\nallow src 198.18.7.0/24 prio 10\ndeny proto udp dport 53\nto-userspace proto udp dport 5000 prio 5\n";

fn udp(src: [u8; 4], dport: u16) -> Vec<u8> {
    udp_of(src, dport, 16)
}

fn udp_of(src: [u8; 4], dport: u16, payload: usize) -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(src, [198, 19, 9, 9], 64)
        .udp(4000, dport)
        .write(&mut f, &vec![0; payload])
        .unwrap();
    f
}

/// Frames and what the rules above must decide: (verdict, rule id).
fn frames() -> Vec<(Vec<u8>, &'static str, Option<u64>)> {
    let mut tcp = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4([198, 19, 0, 1], [198, 19, 9, 9], 64)
        .tcp(4000, 80, 1, 1000)
        .write(&mut tcp, &[])
        .unwrap();
    let mut arp = vec![0xffu8; 6];
    arp.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06]);
    arp.resize(42, 0);
    let cut = udp([198, 19, 0, 1], 9)[..14 + 12].to_vec();
    vec![
        (udp([198, 18, 1, 1], 9), "drop", Some(2)),
        (udp([198, 18, 7, 7], 9), "pass", Some(3)),
        (udp([198, 19, 0, 1], 53), "drop", Some(4)),
        (tcp, "pass", None),
        (arp, "pass", None),
        (cut, "drop", None),
        (vec![0u8; 10], "drop", None),
        // Jumbo frames (MTU 9000), larger than a page: the program gets
        // them in fragments and judges them by their headers.
        (udp_of([198, 18, 1, 1], 9, 8972), "drop", Some(2)),
        (udp_of([198, 18, 7, 7], 9, 8972), "pass", Some(3)),
        // No socket in a simulation: it would go on down the chain.
        (udp([198, 18, 1, 1], 5000), "to-userspace", Some(5)),
    ]
}

fn write_pcap(path: &Path) {
    let mut w = PcapWriter::new(std::fs::File::create(path).unwrap()).unwrap();
    for (i, (f, _, _)) in frames().iter().enumerate() {
        w.write_packet(&PcapPacket::new(
            Duration::from_millis(i as u64),
            f.len() as u32,
            f,
        ))
        .unwrap();
    }
}

fn write_pcapng(path: &Path) {
    let mut w = PcapNgWriter::new(std::fs::File::create(path).unwrap()).unwrap();
    let idb = InterfaceDescriptionBlock {
        linktype: DataLink::ETHERNET,
        snaplen: 65535,
        options: vec![],
    };
    w.write_pcapng_block(idb).unwrap();
    for (i, (f, _, _)) in frames().iter().enumerate() {
        let epb = EnhancedPacketBlock {
            interface_id: 0,
            timestamp: Duration::from_millis(i as u64),
            original_len: f.len() as u32,
            data: Cow::Borrowed(f),
            options: vec![],
        };
        w.write_pcapng_block(epb).unwrap();
    }
}

fn run(args: &[&str]) -> std::process::Output {
    Command::new(XDPKIT)
        .arg("simulate")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn simulate_reports_verdict_and_rule_per_packet() {
    if !require_root("simulate_reports_verdict_and_rule_per_packet") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("xdpkit-sim-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rules = dir.join("fw.rules");
    std::fs::write(&rules, RULES).unwrap();
    for (name, write) in [
        ("cap.pcap", write_pcap as fn(&Path)),
        ("cap.pcapng", write_pcapng),
    ] {
        let cap = dir.join(name);
        write(&cap);
        let out = run(&[
            "--pcap",
            cap.to_str().unwrap(),
            "--rules",
            rules.to_str().unwrap(),
            "--json",
        ]);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<Value> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let want = frames();
        assert_eq!(lines.len(), want.len(), "{name}");
        for (i, (line, (_, verdict, rule))) in lines.iter().zip(&want).enumerate() {
            assert_eq!(line["index"], i + 1, "{name}");
            assert_eq!(line["verdict"], *verdict, "{name} packet {}", i + 1);
            assert_eq!(line["rule"].as_u64(), *rule, "{name} packet {}", i + 1);
        }
    }
    // --default deny turns the unmatched TCP packet (4) into a drop; text output.
    let cap = dir.join("cap.pcap");
    let out = run(&[
        "--pcap",
        cap.to_str().unwrap(),
        "--rules",
        rules.to_str().unwrap(),
        "--default",
        "deny",
    ]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().nth(3), Some("4 drop -"), "{text}");
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(
        summary.contains("10 packets: 3 pass, 6 drop, 1 to-userspace (into the AF_XDP socket of their RX queue; with none bound there, on down the chain like pass)"),
        "{summary}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn simulate_refuses_bad_input_with_file_and_line() {
    let dir = std::env::temp_dir().join(format!("xdpkit-sim-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rules = dir.join("bad.rules");
    std::fs::write(&rules, "deny src 198.18.0.0/16\n\ndeny dport 99999\n").unwrap();
    let cap = dir.join("cap.pcap");
    std::fs::write(&cap, b"not a capture at all").unwrap();
    let out = run(&[
        "--pcap",
        cap.to_str().unwrap(),
        "--rules",
        rules.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("bad.rules:3: bad dport '99999'"), "{err}");
    std::fs::write(&rules, "deny src 198.18.0.0/16\n").unwrap();
    let out = run(&[
        "--pcap",
        cap.to_str().unwrap(),
        "--rules",
        rules.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("not a pcap or pcapng file"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    let out = run(&[
        "--pcap",
        "/nonexistent/x.pcap",
        "--rules",
        rules.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot open"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn simulate_dev_uses_the_live_rules_and_policies() {
    if !require_root("simulate_dev_uses_the_live_rules_and_policies") {
        return;
    }
    let lab = xdpkit_lab::lab::Lab::builder("xkt-simdev")
        .namespace("n")
        .veth("n", "xksimdev0", None, "n", "xksimdev1", None)
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("xdpkit-simdev-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rules = dir.join("fw.rules");
    std::fs::write(&rules, RULES).unwrap();
    let cap = dir.join("cap.pcap");
    write_pcap(&cap);
    let in_ns = |args: &[&str]| lab.command("n", XDPKIT).args(args).output().unwrap();
    let ok = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    ok(in_ns(&[
        "attach",
        "firewall",
        "--dev",
        "xksimdev0",
        "--default",
        "deny",
    ]));
    ok(in_ns(&[
        "rule",
        "load",
        "--dev",
        "xksimdev0",
        "--file",
        rules.to_str().unwrap(),
        "--replace",
    ]));
    let live = ok(in_ns(&[
        "simulate",
        "--pcap",
        cap.to_str().unwrap(),
        "--dev",
        "xksimdev0",
        "--json",
    ]));
    let from_file = ok(run(&[
        "--pcap",
        cap.to_str().unwrap(),
        "--rules",
        rules.to_str().unwrap(),
        "--default",
        "deny",
        "--json",
    ]));
    assert_eq!(live, from_file, "live snapshot and file disagree");
    assert!(
        live.lines().nth(3).unwrap().contains(r#""verdict":"drop""#),
        "the live default deny applies: {live}"
    );
    let out = in_ns(&[
        "simulate",
        "--pcap",
        cap.to_str().unwrap(),
        "--dev",
        "xksimdev0",
        "--default",
        "allow",
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "policy flags with --dev are refused"
    );
    ok(in_ns(&["detach", "--dev", "xksimdev0"]));
    std::fs::remove_dir_all(&dir).unwrap();
}
