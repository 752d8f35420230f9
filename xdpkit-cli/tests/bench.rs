//! `xdpkit bench` with `xdpkit trafficgen` feeding it: it counts the frames
//! under the right action, reports nonzero rates, detaches when done, and
//! refuses bad requests without attaching anything.

mod common;

use std::{process::Stdio, time::Duration};

use serde_json::Value;
use xdpkit_lab::lab::{require_root, Lab};

use common::{ok, xdpkit_in, XDPKIT};

const GEN_IF: &str = "xkbn-g";
const DUT_IF: &str = "xkbn-d";

fn lab() -> Lab {
    Lab::builder("xkbn")
        .namespace("gen")
        .namespace("dut")
        .veth(
            "gen",
            GEN_IF,
            Some("198.18.66.1/24"),
            "dut",
            DUT_IF,
            Some("198.18.66.2/24"),
        )
        .build()
        .expect("build lab")
}

/// Runs `xdpkit bench ARGS` in dut while trafficgen floods it from gen
/// for about a second; returns the bench's stdout.
fn bench_under_traffic(lab: &Lab, args: &[&str]) -> String {
    let bench = lab
        .command("dut", XDPKIT)
        .arg("bench")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let mac = common::mac(lab, "dut", DUT_IF);
    common::trafficgen(
        lab,
        GEN_IF,
        &mac,
        &["--dst", "198.18.66.2", "--duration", "1"],
    );
    ok(&bench.wait_with_output().unwrap())
}

fn has_xdp(lab: &Lab) -> bool {
    let out = lab
        .command("dut", "ip")
        .args(["link", "show", "dev", DUT_IF])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
}

#[test]
fn bench_counts_frames_per_action_and_detaches() {
    if !require_root("bench_counts_frames_per_action_and_detaches") {
        return;
    }
    let lab = lab();

    let out = bench_under_traffic(
        &lab,
        &[
            "drop",
            "--dev",
            DUT_IF,
            "--touch",
            "parse-ip",
            "--duration",
            "3",
            "--json",
        ],
    );
    let report: Value = serde_json::from_str(&out).unwrap();
    let packets = report["packets"].as_u64().unwrap();
    assert!(packets > 0, "{report}");
    let per_action = report["per_action"].as_array().unwrap();
    let drops = per_action.iter().find(|a| a[0] == "drop").unwrap()[1].as_u64();
    assert_eq!(drops, Some(packets), "every frame dropped: {report}");
    assert!(report["rx_pps"].as_f64().unwrap() > 0.0);
    assert!(report["mbps"].as_f64().unwrap() > 0.0);
    let samples = report["samples"].as_array().unwrap();
    assert!(samples.len() >= 3, "a sample a second: {report}");
    assert!(samples.iter().any(|s| s["rx_pps"].as_f64().unwrap() > 0.0));
    assert!(!has_xdp(&lab), "bench left its program attached");

    // Text output, the tx verdict with a write, and redirect-cpu.
    let out = bench_under_traffic(
        &lab,
        &[
            "tx",
            "--dev",
            DUT_IF,
            "--touch",
            "swap-macs",
            "--duration",
            "2",
        ],
    );
    assert!(
        out.contains("tx on xkbn-d (native mode, touch swap-macs)"),
        "{out}"
    );
    let summary = out.lines().last().unwrap();
    assert!(
        summary.starts_with("summary: ") && summary.contains("(tx "),
        "{out}"
    );
    let out = bench_under_traffic(
        &lab,
        &[
            "redirect-cpu",
            "--dev",
            DUT_IF,
            "--cpu",
            "0",
            "--duration",
            "2",
            "--json",
        ],
    );
    let report: Value = serde_json::from_str(&out).unwrap();
    let redirected = report["per_action"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a[0] == "redirect")
        .unwrap()[1]
        .as_u64()
        .unwrap();
    assert!(redirected > 0, "{report}");
    assert!(!has_xdp(&lab));
}

#[test]
fn bench_refuses_bad_requests_and_attaches_nothing() {
    if !require_root("bench_refuses_bad_requests_and_attaches_nothing") {
        return;
    }
    let lab = Lab::builder("xkbb")
        .namespace("dut")
        .veth("dut", "xkbb-a", None, "dut", "xkbb-b", None)
        .build()
        .expect("build lab");
    for (args, says) in [
        (vec!["redirect", "--dev", "xkbb-a"], "needs --to"),
        (
            vec!["drop", "--dev", "xkbb-a", "--cpu", "0"],
            "--cpu only applies",
        ),
        (
            vec!["drop", "--dev", "xkbb-a", "--to", "xkbb-b"],
            "--to only applies",
        ),
        (
            vec!["redirect-cpu", "--dev", "xkbb-a", "--cpu", "999"],
            "does not exist",
        ),
        (vec!["drop", "--dev", "xkbb-nope"], "xkbb-nope"),
        (
            vec!["drop", "--dev", "xkbb-a", "--duration", "0"],
            "--duration",
        ),
    ] {
        let mut full = vec!["bench"];
        full.extend(args);
        let out = xdpkit_in(&lab, "dut", &full);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{full:?}: {stderr}");
        assert!(stderr.contains(says), "{full:?}: {stderr}");
    }
    // An interface that already runs XDP is left alone.
    ok(&xdpkit_in(
        &lab,
        "dut",
        &["attach", "pass", "--dev", "xkbb-a"],
    ));
    let out = xdpkit_in(
        &lab,
        "dut",
        &["bench", "drop", "--dev", "xkbb-a", "--duration", "1"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already runs XDP program"));
    let status = ok(&xdpkit_in(
        &lab,
        "dut",
        &["status", "--dev", "xkbb-a", "--interval", "0"],
    ));
    assert!(status.contains("xkbb-a: pass (attached)"), "{status}");
    ok(&xdpkit_in(&lab, "dut", &["detach", "--dev", "xkbb-a"]));
}
