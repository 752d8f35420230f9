//! A rate limit on a live interface: a paced flood from one source above
//! the limit is split into passed and limited frames as a token bucket
//! says, a second's worth plus the rate times the flood's length.

mod common;

use serde_json::Value;
use xdpkit_lab::lab::{require_root, Lab};

use common::{ok, rule_row, xdpkit_in};

const GEN_IF: &str = "xkrl-g";
const DUT_IF: &str = "xkrl-d";
/// The limit, and the flood: five times the limit for three seconds.
const LIMIT: u64 = 1000;
const FLOOD_PPS: u64 = 5000;
const SECONDS: &str = "3";

#[test]
fn paced_flood_above_a_rate_limit_is_split_as_the_bucket_says() {
    if !require_root("paced_flood_above_a_rate_limit_is_split_as_the_bucket_says") {
        return;
    }
    let lab = Lab::builder("xkrl")
        .namespace("gen")
        .namespace("dut")
        .veth("gen", GEN_IF, None, "dut", DUT_IF, None)
        .build()
        .expect("build lab");
    ok(&xdpkit_in(
        &lab,
        "dut",
        &["attach", "firewall", "--dev", DUT_IF],
    ));
    let limit = LIMIT.to_string();
    let id = ok(&xdpkit_in(
        &lab,
        "dut",
        &[
            "rule",
            "add",
            "--dev",
            DUT_IF,
            "rate-limit",
            &limit,
            "src",
            "198.18.71.1",
        ],
    ));
    let id: u64 = id.trim().parse().unwrap();

    let mac = common::mac(&lab, "dut", DUT_IF);
    let pps = FLOOD_PPS.to_string();
    let out = common::trafficgen(
        &lab,
        GEN_IF,
        &mac,
        &[
            "--src",
            "198.18.71.1/32",
            "--dst",
            "198.18.71.2",
            "--pps",
            &pps,
            "--duration",
            SECONDS,
            "--json",
        ],
    );
    let report: Value = serde_json::from_str(&out).unwrap();
    let sent = report["frames"].as_u64().unwrap();
    let seconds = report["seconds"].as_f64().unwrap();

    let row = rule_row(&lab, "dut", DUT_IF, id);
    let field = |name: &str| {
        row[name]
            .as_u64()
            .unwrap_or_else(|| panic!("no {name}: {row}"))
    };
    let (packets, passed, limited) = (field("packets"), field("passed"), field("limited"));
    assert_eq!(passed + limited, packets, "{row}");

    // What was actually sent decides the expectation: a loaded machine
    // sends late or in bursts, which a token bucket does not mind as long
    // as the flood stays above the limit (no stall of a second or more).
    let offered = sent as f64 / seconds;
    println!(
        "sent {sent} frames in {seconds:.3} s ({offered:.0} pps); the rule saw {packets}: \
         passed {passed}, limited {limited}"
    );
    assert!(
        offered >= 2.0 * LIMIT as f64,
        "the flood ({offered:.0} pps) did not stay well above the limit: {report}"
    );
    assert!(packets <= sent, "more frames judged than sent");
    assert!(
        packets as f64 >= 0.95 * sent as f64,
        "frames lost before the firewall: {packets} of {sent}"
    );
    // The bucket starts full (a second's worth) and refills at the rate
    // while the flood lasts; everything beyond is limited.
    let want_passed = (LIMIT as f64 * (1.0 + seconds)).min(packets as f64);
    let want_limited = packets as f64 - want_passed;
    println!("expected passed {want_passed:.0}, limited {want_limited:.0} (within 10%)");
    let near = |got: u64, want: f64| (got as f64 - want).abs() <= 0.1 * want;
    assert!(
        near(passed, want_passed),
        "passed {passed}, expected {want_passed:.0} +- 10%: {row}"
    );
    assert!(
        near(limited, want_limited),
        "limited {limited}, expected {want_limited:.0} +- 10%: {row}"
    );
    ok(&xdpkit_in(&lab, "dut", &["detach", "--dev", DUT_IF]));
}
