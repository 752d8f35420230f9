//! Jumbo frames on veth with MTU 9000 at both ends: 8000-byte UDP
//! datagrams travel as one 8042-byte frame each (no IP fragmentation),
//! which XDP sees as a multi-buffer frame (a linear part of less than a
//! page, the rest in fragments). The firewall passes or drops them by its
//! rules, its counters count their whole length, and `dump` writes them
//! whole.

use std::{
    net::SocketAddr,
    process::Stdio,
    time::{Duration, Instant},
};

use pcap_file::pcapng::{Block, PcapNgReader};
use serde_json::Value;
use xdpkit_lab::lab::{require_root, Lab};

mod common;

use common::{ip, ok, rule_row, xdpkit_in, XDPKIT};

const CLIENT_IF: &str = "xkjb-c";
const SERVER_IF: &str = "xkjb-s";
const PAYLOAD: usize = 8000;
/// Ethernet, IPv4 and UDP headers around the payload.
const FRAME: u64 = 14 + 20 + 8 + PAYLOAD as u64;
const N: u32 = 50;
const BATCH: u32 = 5;
const QUIET: Duration = Duration::from_millis(300);
const MAX_WAIT: Duration = Duration::from_secs(5);

fn jumbo_lab() -> Lab {
    let lab = Lab::builder("xkjb")
        .namespace("client")
        .namespace("server")
        .veth(
            "client",
            CLIENT_IF,
            Some("198.18.90.1/24"),
            "server",
            SERVER_IF,
            Some("198.18.90.2/24"),
        )
        .build()
        .expect("build lab");
    ip(
        &lab,
        "client",
        &["link", "set", "dev", CLIENT_IF, "mtu", "9000"],
    );
    ip(
        &lab,
        "server",
        &["link", "set", "dev", SERVER_IF, "mtu", "9000"],
    );
    lab
}

/// Packets and bytes of rule `id` (`rule list --json`).
fn rule_counts(lab: &Lab, id: u64) -> (u64, u64) {
    let row = rule_row(lab, "server", SERVER_IF, id);
    (
        row["packets"].as_u64().unwrap(),
        row["bytes"].as_u64().unwrap(),
    )
}

#[test]
fn jumbo_datagrams_pass_or_drop_by_rule_counted_and_dumped_whole() {
    if !require_root("jumbo_datagrams_pass_or_drop_by_rule_counted_and_dumped_whole") {
        return;
    }
    let lab = jumbo_lab();
    let allowed: SocketAddr = "198.18.90.2:9000".parse().unwrap();
    let denied: SocketAddr = "198.18.90.2:9001".parse().unwrap();
    let sink = lab.udp_sink("server", allowed).unwrap();
    let denied_sink = lab.udp_sink("server", denied).unwrap();
    // ARP before the firewall is there.
    lab.send_udp("client", allowed, 1, PAYLOAD).unwrap();
    assert_eq!(
        sink.count(1, QUIET, MAX_WAIT),
        1,
        "the lab carries jumbo frames"
    );

    // veth takes multi-buffer frames: features and doctor say so, and a
    // 9000-byte MTU is fine for native XDP.
    let text = ok(&xdpkit_in(
        &lab,
        "server",
        &["features", "--dev", SERVER_IF],
    ));
    assert!(
        text.contains("multi-buffer yes: frames larger than a page"),
        "{text}"
    );
    let checks: Value = serde_json::from_str(&ok(&xdpkit_in(
        &lab,
        "server",
        &["doctor", "--json", "--watch", "0", "--dev", SERVER_IF],
    )))
    .unwrap();
    let check = |name: &str| {
        checks
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no {name} check in {checks}"))
            .clone()
    };
    assert_eq!(check("multi-buffer")["status"], "ok", "{checks}");
    assert_eq!(check("mtu")["status"], "ok", "{checks}");

    ok(&xdpkit_in(
        &lab,
        "server",
        &["attach", "firewall", "--dev", SERVER_IF],
    ));
    let add = |rule: &[&str]| -> u64 {
        let mut args = vec!["rule", "add", "--dev", SERVER_IF];
        args.extend(rule);
        ok(&xdpkit_in(&lab, "server", &args))
            .trim()
            .parse()
            .unwrap()
    };
    let allow = add(&[
        "allow",
        "src",
        "198.18.90.1",
        "proto",
        "udp",
        "dport",
        "9000",
    ]);
    let deny = add(&[
        "deny",
        "src",
        "198.18.90.1",
        "proto",
        "udp",
        "dport",
        "9001",
    ]);

    // A dump of the drops, which stops by itself after N frames.
    let path = std::env::temp_dir().join(format!("xkjb-{}.pcapng", std::process::id()));
    let count = N.to_string();
    let mut dump = lab
        .command("server", XDPKIT)
        .args([
            "dump", "--dev", SERVER_IF, "--action", "drop", "--count", &count, "-w",
        ])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !path.exists() && started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }

    // In batches the receiving socket's buffer holds (an 8000-byte
    // datagram takes about 16 KiB of it, of 208 KiB by default).
    let (mut arrived, mut leaked) = (0, 0);
    for _ in 0..N / BATCH {
        assert_eq!(
            lab.send_udp("client", allowed, BATCH, PAYLOAD).unwrap(),
            BATCH
        );
        arrived += sink.count(BATCH, QUIET, MAX_WAIT);
        assert_eq!(
            lab.send_udp("client", denied, BATCH, PAYLOAD).unwrap(),
            BATCH
        );
        leaked += denied_sink.count(BATCH, Duration::from_millis(1), Duration::from_millis(1));
    }
    assert_eq!(arrived, N, "allowed jumbo datagrams lost");
    leaked += denied_sink.count(N, QUIET, MAX_WAIT);
    assert_eq!(leaked, 0, "denied jumbo datagrams arrived");

    // Every byte of every frame counted: 8042 a frame, not a page.
    assert_eq!(
        rule_counts(&lab, allow),
        (u64::from(N), u64::from(N) * FRAME)
    );
    assert_eq!(
        rule_counts(&lab, deny),
        (u64::from(N), u64::from(N) * FRAME)
    );

    // The dump ends by itself after N drops (bounded wait, then killed).
    let deadline = Instant::now() + Duration::from_secs(10);
    while dump.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if dump.try_wait().unwrap().is_none() {
        let _ = dump.kill();
    }
    let out = dump.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut reader = PcapNgReader::new(std::fs::File::open(&path).unwrap()).unwrap();
    let mut lens = Vec::new();
    while let Some(block) = reader.next_block() {
        if let Block::EnhancedPacket(p) = block.unwrap() {
            lens.push((p.original_len, p.data.len()));
        }
    }
    let _ = std::fs::remove_file(&path);
    assert_eq!(lens.len(), N as usize, "{lens:?}");
    assert!(
        lens.iter()
            .all(|&(orig, cap)| u64::from(orig) == FRAME && cap as u64 == FRAME),
        "dumped whole: {lens:?}"
    );
}
