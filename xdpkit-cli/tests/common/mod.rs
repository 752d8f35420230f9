//! Helpers shared by the CLI's integration tests.
// Each test crate uses a different subset.
#![allow(dead_code)]

use std::process::Output;

use xdpkit_lab::lab::Lab;

/// The binary under test.
pub const XDPKIT: &str = env!("CARGO_BIN_EXE_xdpkit");

/// Runs `xdpkit ARGS` inside namespace `ns` of `lab`.
pub fn xdpkit_in(lab: &Lab, ns: &str, args: &[&str]) -> Output {
    lab.command(ns, XDPKIT)
        .args(args)
        .output()
        .expect("run xdpkit")
}

/// Asserts success and returns stdout.
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "xdpkit failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// The MAC address of `ifname` in `ns`, as `aa:bb:cc:dd:ee:ff`.
pub fn mac(lab: &Lab, ns: &str, ifname: &str) -> String {
    lab.mac(ns, ifname)
        .expect("read MAC")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// `xdpkit trafficgen --dev DEV --dst-mac MAC ARGS` in namespace `gen`;
/// returns its stdout.
pub fn trafficgen(lab: &Lab, dev: &str, mac: &str, args: &[&str]) -> String {
    let mut full = vec!["trafficgen", "--dev", dev, "--dst-mac", mac];
    full.extend(args);
    ok(&xdpkit_in(lab, "gen", &full))
}

/// Namespaces `gen` and `dut` joined by a veth pair, the firewall attached
/// to `dut_if` with one rule, `deny src DENIED`; returns the lab and that
/// rule's id.
pub fn firewall_lab(prefix: &str, gen_if: &str, dut_if: &str, denied: &str) -> (Lab, String) {
    let lab = Lab::builder(prefix)
        .namespace("gen")
        .namespace("dut")
        .veth("gen", gen_if, None, "dut", dut_if, None)
        .build()
        .expect("build lab");
    ok(&xdpkit_in(
        &lab,
        "dut",
        &["attach", "firewall", "--dev", dut_if],
    ));
    let id = ok(&xdpkit_in(
        &lab,
        "dut",
        &["rule", "add", "--dev", dut_if, "deny", "src", denied],
    ));
    (lab, id.trim().to_string())
}

/// Sets `setting` (`key=value`) with sysctl inside namespace `ns`.
pub fn sysctl(lab: &Lab, ns: &str, setting: &str) {
    let status = lab
        .command(ns, "sysctl")
        .args(["-qw", setting])
        .status()
        .unwrap();
    assert!(status.success(), "sysctl {setting} in {ns}");
}

/// Runs `ip ARGS` inside namespace `ns`; it must succeed.
pub fn ip(lab: &Lab, ns: &str, args: &[&str]) {
    let status = lab.command(ns, "ip").args(args).status().unwrap();
    assert!(status.success(), "ip {args:?} in {ns}");
}

/// Rule `id`'s row of `xdpkit rule list --dev DEV --json`, run in `ns`.
pub fn rule_row(lab: &Lab, ns: &str, dev: &str, id: u64) -> serde_json::Value {
    let out = ok(&xdpkit_in(
        lab,
        ns,
        &["rule", "list", "--dev", dev, "--json"],
    ));
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"].as_u64() == Some(id))
        .cloned()
        .unwrap_or_else(|| panic!("rule {id} not listed: {rows}"))
}
