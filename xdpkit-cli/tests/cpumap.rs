//! The `cpu` stage between two namespaces: UDP frames of many flows into
//! a veth (one RX queue) are spread over CPUs 0 and 1 by the CPUMAP, the
//! per-CPU counters of its entry program show both CPUs ran it and add up
//! to the frames sent, and every frame reaches a UDP socket; with
//! `--then drop` none does; bad settings (flags or a configuration file)
//! change nothing (exit 2).

mod common;

use std::{net::SocketAddr, time::Duration};

use serde_json::Value;
use xdpkit_lab::lab::{require_root, Lab};

use common::{ok, xdpkit_in};

const QUIET: Duration = Duration::from_millis(500);
const MAX_WAIT: Duration = Duration::from_secs(10);
const GEN_IF: &str = "xkcp-g";
const DUT_IF: &str = "xkcp-d";
/// Frames of the spreading run, paced so the socket's buffer never fills.
const FRAMES: u32 = 1000;

fn lab() -> Lab {
    let lab = Lab::builder("xkcp")
        .namespace("gen")
        .namespace("dut")
        .veth(
            "gen",
            GEN_IF,
            Some("198.18.150.1/24"),
            "dut",
            DUT_IF,
            Some("198.18.150.2/24"),
        )
        .build()
        .expect("build lab");
    // The random sources need a route back (the reverse-path check).
    common::ip(
        &lab,
        "dut",
        &["route", "add", "198.18.151.0/24", "dev", DUT_IF],
    );
    // No IPv6 router or listener solicitations from `gen`: the counters
    // count only the frames the test sends. Down and up again, so reports
    // already scheduled at the first link-up are dropped too.
    common::ip(&lab, "gen", &["link", "set", GEN_IF, "down"]);
    common::sysctl(
        &lab,
        "gen",
        &format!("net.ipv6.conf.{GEN_IF}.disable_ipv6=1"),
    );
    common::ip(&lab, "gen", &["link", "set", GEN_IF, "up"]);
    lab
}

/// The `Udp:` lines of /proc/net/snmp in `dut` (for failure messages).
fn udp_counters(lab: &Lab) -> String {
    let out = lab
        .command("dut", "cat")
        .arg("/proc/net/snmp")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("Udp:"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Frames the cpu stage's entry program ran on each CPU (index: CPU).
fn per_cpu(lab: &Lab) -> Vec<u64> {
    let text = ok(&xdpkit_in(
        lab,
        "dut",
        &["status", "--dev", DUT_IF, "--json", "--interval", "0"],
    ));
    let status: Value = serde_json::from_str(&text).unwrap();
    let all = status.as_array().map_or(&status, |a| &a[0]);
    let stage = all["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage"] == "cpu")
        .unwrap_or_else(|| panic!("no cpu stage in {all}"));
    stage["outcomes"]
        .as_array()
        .unwrap_or_else(|| panic!("no per-CPU counters in {stage}"))
        .iter()
        .map(|o| o["packets"].as_u64().unwrap())
        .collect()
}

/// Sends `count` UDP frames from random sources (many flows) at `pps`
/// while `sink` receives; returns how many it received.
fn send(lab: &Lab, sink: &xdpkit_lab::lab::UdpSink, count: u32, pps: u32) -> u32 {
    let mac = common::mac(lab, "dut", DUT_IF);
    std::thread::scope(|s| {
        let received = s.spawn(|| sink.count(count, QUIET, MAX_WAIT));
        let out = common::trafficgen(
            lab,
            GEN_IF,
            &mac,
            &[
                "--src",
                "198.18.151.0/24",
                "--dst",
                "198.18.150.2",
                "--dport",
                "9999",
                "--count",
                &count.to_string(),
                "--pps",
                &pps.to_string(),
            ],
        );
        assert!(out.contains(&format!("sent {count} frames")), "{out}");
        received.join().unwrap()
    })
}

#[test]
fn cpu_stage_spreads_flows_over_two_cpus_and_frames_reach_the_stack() {
    if !require_root("cpu_stage_spreads_flows_over_two_cpus_and_frames_reach_the_stack") {
        return;
    }
    let lab = lab();
    let dst: SocketAddr = "198.18.150.2:9999".parse().unwrap();
    let sink = lab.udp_sink("dut", dst).unwrap();
    sink.set_recv_buffer(16 << 20).unwrap();

    // Bad settings: exit 2, and nothing attached.
    for (args, says) in [
        (vec!["--cpus", "63"], "not online"),
        (vec![], "needs --cpus"),
        (vec!["--cpus", "0,0"], "twice"),
        (vec!["--cpus", "0", "--then", "tx"], "pass or drop"),
        (vec!["--cpus", "0", "--queue-size", "0"], "queue-size"),
    ] {
        let mut full = vec!["attach", "cpu", "--dev", DUT_IF];
        full.extend(&args);
        let out = xdpkit_in(&lab, "dut", &full);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        let status = xdpkit_in(&lab, "dut", &["status", "--dev", DUT_IF, "--json"]);
        assert!(!status.status.success(), "{args:?} left a program attached");
    }

    // The same from a configuration file.
    let config = std::env::temp_dir().join(format!("xkcp-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        format!("[interfaces.{DUT_IF}]\nstages = [\"cpu\"]\n[interfaces.{DUT_IF}.cpu]\ncpus = [0, 63]\n"),
    )
    .unwrap();
    let out = xdpkit_in(&lab, "dut", &["apply", "-f", config.to_str().unwrap()]);
    let _ = std::fs::remove_file(&config);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "apply: {err}");
    assert!(err.contains("CPU 63 is not online"), "apply: {err}");

    ok(&xdpkit_in(
        &lab,
        "dut",
        &["attach", "cpu", "--dev", DUT_IF, "--cpus", "0,1"],
    ));
    let received = send(&lab, &sink, FRAMES, 2000);
    let counts = per_cpu(&lab);

    println!("received {received} of {FRAMES}; per CPU {counts:?}");
    assert_eq!(
        received,
        FRAMES,
        "frames that reached the socket; {}",
        udp_counters(&lab)
    );
    assert_eq!(counts.iter().sum::<u64>(), u64::from(FRAMES), "{counts:?}");
    assert!(
        counts[0] > 0 && counts[1] > 0,
        "both CPUs ran frames: {counts:?}"
    );
    let text = ok(&xdpkit_in(
        &lab,
        "dut",
        &["status", "--dev", DUT_IF, "--interval", "0"],
    ));
    assert!(text.contains("cpu0") && text.contains("cpu1"), "{text}");

    // Switched to drop on the target CPUs: counted there, none reaches the socket.
    ok(&xdpkit_in(
        &lab,
        "dut",
        &[
            "attach", "cpu", "--dev", DUT_IF, "--cpus", "1", "--then", "drop",
        ],
    ));
    let received = send(&lab, &sink, 100, 2000);
    let after = per_cpu(&lab);
    assert_eq!(received, 0, "dropped frames reached the socket");
    assert_eq!(
        after[0], counts[0],
        "CPU 0 is no longer a target: {after:?}"
    );
    assert_eq!(after[1], counts[1] + 100, "{after:?}");
    let export = ok(&xdpkit_in(&lab, "dut", &["export"]));
    assert!(
        export.contains("cpus = [1]") && export.contains("then = \"drop\""),
        "{export}"
    );
}
