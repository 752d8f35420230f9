//! `xdpkit dump` of a firewall's drops while a flood runs: tcpdump reads
//! the file, it holds the sampled count, and every packet's comment names
//! the verdict and the deciding rule.

mod common;

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use pcap_file::pcapng::{blocks::enhanced_packet::EnhancedPacketOption, Block, PcapNgReader};
use xdpkit_lab::lab::{require_root, Lab};

use common::{ok, xdpkit_in, XDPKIT};

const GEN_IF: &str = "xkdp-g";
const DUT_IF: &str = "xkdp-d";
const FLOOD: u64 = 1000;
const SAMPLE: u64 = 10;

fn send(lab: &Lab, src: &str, count: u64) {
    let mac = common::mac(lab, "dut", DUT_IF);
    let count = count.to_string();
    common::trafficgen(lab, GEN_IF, &mac, &["--src", src, "--count", &count]);
}

/// Kills the dump if the test fails before stopping it: it has no --count.
struct KillOnDrop(Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The comments of the packets in a pcapng file.
fn comments(path: &std::path::Path) -> Vec<String> {
    let file = std::fs::File::open(path).unwrap();
    let mut reader = PcapNgReader::new(file).unwrap();
    let mut out = Vec::new();
    while let Some(block) = reader.next_block() {
        if let Block::EnhancedPacket(p) = block.unwrap() {
            let comment = p.options.iter().find_map(|o| match o {
                EnhancedPacketOption::Comment(c) => Some(c.to_string()),
                _ => None,
            });
            out.push(comment.unwrap_or_default());
        }
    }
    out
}

#[test]
fn dump_writes_sampled_drops_with_verdict_comments() {
    if !require_root("dump_writes_sampled_drops_with_verdict_comments") {
        return;
    }
    let (lab, id) = common::firewall_lab("xkdp", GEN_IF, DUT_IF, "198.18.72.0/24");
    let path = std::env::temp_dir().join(format!("xkdp-{}.pcapng", std::process::id()));
    let sample = SAMPLE.to_string();
    let mut dump = KillOnDrop(Some(
        lab.command("dut", XDPKIT)
            .args([
                "dump", "--dev", DUT_IF, "--action", "drop", "--sample", &sample, "-w",
            ])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    // The file appears once the dump runs; then a second dump is refused.
    let started = Instant::now();
    while !path.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "dump did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = xdpkit_in(
        &lab,
        "dut",
        &["dump", "--dev", DUT_IF, "-w", "/tmp/xkdp-never.pcapng"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("another dump is running"));
    send(&lab, "198.18.72.0/24", FLOOD); // dropped by the rule
    send(&lab, "198.18.73.0/24", FLOOD); // passed: not captured
    std::thread::sleep(Duration::from_millis(500));
    let child = dump.0.take().unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let comments = comments(&path);
    // One in SAMPLE per CPU: each CPU may round down.
    let cpus = std::thread::available_parallelism().unwrap().get() as u64;
    let n = comments.len() as u64;
    assert!(
        n <= FLOOD / SAMPLE && n + cpus >= FLOOD / SAMPLE,
        "{n} frames for {FLOOD} drops sampled 1 in {SAMPLE}"
    );
    let want = format!("verdict=drop rule={id}");
    assert!(comments.iter().all(|c| *c == want), "{comments:?}");
    let tcpdump = std::process::Command::new("tcpdump")
        .args(["-nn", "-r"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        tcpdump.status.success(),
        "{}",
        String::from_utf8_lossy(&tcpdump.stderr)
    );
    let lines = String::from_utf8_lossy(&tcpdump.stdout).into_owned();
    assert_eq!(lines.lines().count() as u64, n, "{lines}");
    assert!(
        lines.lines().all(|l| l.contains("IP 198.18.72.")),
        "{lines}"
    );

    // Refusals leave nothing behind.
    for (args, says) in [
        (vec!["--snaplen", "0"], "--snaplen"),
        (vec!["--sample", "0"], "--sample"),
    ] {
        let mut full = vec!["dump", "--dev", DUT_IF, "-w", "/tmp/xkdp-never.pcapng"];
        full.extend(args);
        let out = xdpkit_in(&lab, "dut", &full);
        assert_eq!(out.status.code(), Some(2), "{full:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(says));
    }
    ok(&xdpkit_in(&lab, "dut", &["detach", "--dev", DUT_IF]));
    let out = xdpkit_in(
        &lab,
        "dut",
        &["dump", "--dev", DUT_IF, "-w", "/tmp/xkdp-never.pcapng"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(!std::path::Path::new("/tmp/xkdp-never.pcapng").exists());
    let _ = std::fs::remove_file(&path);
}
