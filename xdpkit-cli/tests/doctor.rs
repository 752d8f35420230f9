//! `xdpkit doctor` finds what it claims to: a veth peer without XDP or GRO,
//! generic mode where native would do, and XDP exceptions while they happen.

mod common;

use std::{process::Stdio, time::Duration};

use serde_json::Value;
use xdpkit_lab::lab::{require_root, Lab};

use common::{ok, xdpkit_in, XDPKIT};

/// The check called `name` in `doctor --json` output.
fn find<'a>(checks: &'a Value, name: &str) -> &'a Value {
    checks
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} check in {checks}"))
}

fn doctor(lab: &Lab, ns: &str, args: &[&str]) -> Value {
    let mut full = vec!["doctor", "--json"];
    full.extend(args);
    serde_json::from_str(&ok(&xdpkit_in(lab, ns, &full))).unwrap()
}

#[test]
fn doctor_reports_veth_peer_and_generic_mode() {
    if !require_root("doctor_reports_veth_peer_and_generic_mode") {
        return;
    }
    let lab = Lab::builder("xkdr")
        .namespace("dut")
        .veth("dut", "xkdr-a", None, "dut", "xkdr-b", None)
        .build()
        .expect("build lab");
    let checks = doctor(&lab, "dut", &["--watch", "0"]);
    for name in ["jit", "bpffs", "kernel", "privileges"] {
        assert_eq!(find(&checks, name)["status"], "ok", "{checks}");
    }
    assert_eq!(find(&checks, "exceptions")["status"], "skip");

    ok(&xdpkit_in(
        &lab,
        "dut",
        &["attach", "tx", "--dev", "xkdr-a"],
    ));
    let checks = doctor(&lab, "dut", &["--dev", "xkdr-a", "--watch", "0"]);
    let peer = find(&checks, "veth-peer");
    assert_eq!(peer["status"], "warn", "{checks}");
    assert!(peer["fix"]
        .as_str()
        .unwrap()
        .contains("xdpkit attach pass --dev xkdr-b"));
    assert_eq!(find(&checks, "program")["status"], "ok");
    assert_eq!(find(&checks, "mode")["status"], "ok");

    ok(&xdpkit_in(
        &lab,
        "dut",
        &["attach", "pass", "--dev", "xkdr-b"],
    ));
    ok(&xdpkit_in(
        &lab,
        "dut",
        &["attach", "tx", "--dev", "xkdr-a", "--mode", "skb"],
    ));
    let checks = doctor(&lab, "dut", &["--dev", "xkdr-a", "--watch", "0"]);
    assert_eq!(find(&checks, "veth-peer")["status"], "ok", "{checks}");
    assert_eq!(find(&checks, "mode")["status"], "warn", "{checks}");

    // Text output, and bad arguments.
    let text = ok(&xdpkit_in(
        &lab,
        "dut",
        &["doctor", "--dev", "xkdr-a", "--watch", "0"],
    ));
    assert!(text.contains("WARN  mode"), "{text}");
    assert!(text.contains("fix: reattach with --mode native"), "{text}");
    for args in [
        &["doctor", "--watch", "-1"][..],
        &["doctor", "--dev", "xkdr-nope"],
    ] {
        let out = xdpkit_in(&lab, "dut", args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
    ok(&xdpkit_in(&lab, "dut", &["detach", "--dev", "xkdr-a"]));
    ok(&xdpkit_in(&lab, "dut", &["detach", "--dev", "xkdr-b"]));
}

#[test]
fn doctor_counts_xdp_exceptions() {
    if !require_root("doctor_counts_xdp_exceptions") {
        return;
    }
    let lab = Lab::builder("xkdx")
        .namespace("gen")
        .namespace("dut")
        .veth("gen", "xkdx-g", None, "dut", "xkdx-d", None)
        .veth("dut", "xkdx-t", None, "dut", "xkdx-u", None)
        .build()
        .expect("build lab");
    // A redirect whose target interface then goes away aborts every frame.
    let bench = lab
        .command("dut", XDPKIT)
        .args([
            "bench",
            "redirect",
            "--dev",
            "xkdx-d",
            "--to",
            "xkdx-t",
            "--duration",
            "4",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let deleted = lab
        .command("dut", "ip")
        .args(["link", "del", "xkdx-t"])
        .status()
        .unwrap();
    assert!(deleted.success());
    let mut doctor = lab
        .command("dut", XDPKIT)
        .args(["doctor", "--json", "--watch", "2"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Frames keep coming while the doctor watches: on a loaded machine its
    // tracepoint may attach well after it starts.
    let mac = common::mac(&lab, "dut", "xkdx-d");
    for _ in 0..40 {
        if doctor.try_wait().unwrap().is_some() {
            break;
        }
        common::trafficgen(&lab, "xkdx-g", &mac, &["--count", "200"]);
        std::thread::sleep(Duration::from_millis(100));
    }
    let checks: Value = serde_json::from_str(&ok(&doctor.wait_with_output().unwrap())).unwrap();
    let exceptions = find(&checks, "exceptions");
    assert_eq!(exceptions["status"], "warn", "{checks}");
    assert!(
        exceptions["detail"].as_str().unwrap().contains("aborted"),
        "{checks}"
    );
    let _ = bench.wait_with_output();
}
