//! `xdpkit top --once --json` while traffic flows through a firewall: rates
//! per action and CPU, outcomes, busiest rules; and refusals without a TTY.

mod common;

use std::process::Stdio;

use serde_json::Value;
use xdpkit_lab::lab::require_root;

use common::{ok, xdpkit_in, XDPKIT};

const GEN_IF: &str = "xktp-g";
const DUT_IF: &str = "xktp-d";

#[test]
fn top_once_json_shows_rates_outcomes_and_busiest_rules() {
    if !require_root("top_once_json_shows_rates_outcomes_and_busiest_rules") {
        return;
    }
    let (lab, id) = common::firewall_lab("xktp", GEN_IF, DUT_IF, "198.18.70.0/24");
    let id: u64 = id.parse().unwrap();
    let top = lab
        .command("dut", XDPKIT)
        .args([
            "top",
            "--once",
            "--json",
            "--interval",
            "2",
            "--dev",
            DUT_IF,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mac = common::mac(&lab, "dut", DUT_IF);
    common::trafficgen(
        &lab,
        GEN_IF,
        &mac,
        &[
            "--src",
            "198.18.70.0/24",
            "--pps",
            "2000",
            "--duration",
            "1",
        ],
    );
    let sample: Value = serde_json::from_str(&ok(&top.wait_with_output().unwrap())).unwrap();
    let iface = &sample[0];
    assert_eq!(iface["iface"], DUT_IF, "{sample}");
    assert_eq!(iface["program"], "firewall");
    assert!(iface["pps"].as_f64().unwrap() > 0.0, "{sample}");
    let drop = iface["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["action"] == "drop")
        .unwrap();
    assert!(drop["pps"].as_f64().unwrap() > 0.0, "{sample}");
    let stage = &iface["stages"][0];
    assert_eq!(stage["stage"], "firewall", "{sample}");
    let stage_drop = stage["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["action"] == "drop")
        .unwrap();
    assert!(stage_drop["pps"].as_f64().unwrap() > 0.0, "{sample}");
    let cpus = iface["per_cpu_pps"].as_array().unwrap();
    assert!(!cpus.is_empty());
    let busiest = &iface["top_rules"][0];
    assert_eq!(busiest["id"], id, "{sample}");
    assert!(busiest["pps"].as_f64().unwrap() > 0.0);
    assert!(iface["parse_errors_pps"].is_number());
    let rule_outcome = iface["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["outcome"] == "rule")
        .unwrap();
    assert!(rule_outcome["pps"].as_f64().unwrap() > 0.0);

    // Text once; the full screen needs a terminal; --json needs --once.
    let text = ok(&xdpkit_in(
        &lab,
        "dut",
        &["top", "--once", "--interval", "0.1"],
    ));
    assert!(text.contains("xktp-d (firewall):"), "{text}");
    for args in [&["top"][..], &["top", "--json"]] {
        let out = xdpkit_in(&lab, "dut", args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
    ok(&xdpkit_in(&lab, "dut", &["detach", "--dev", DUT_IF]));
}
