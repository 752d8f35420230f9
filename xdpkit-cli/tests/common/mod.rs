//! Helpers shared by the CLI's integration tests.
// Each test crate uses a different subset.
#![allow(dead_code)]

use std::process::Output;

use xdpkit::lab::Lab;

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
