//! `xdpkit exporter` scraped over HTTP while traffic flows through a
//! firewall: HELP/TYPE lines, Prometheus names, and counts that rise.

mod common;

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    process::{Child, Stdio},
    time::Duration,
};

use xdpkit_lab::lab::{require_root, Lab};

use common::{ok, xdpkit_in, XDPKIT};

const GEN_IF: &str = "xkex-g";
const DUT_IF: &str = "xkex-d";
const LISTEN: &str = "127.0.0.1:19739";

/// Kills the exporter however the test ends.
struct Exporter(Child);

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `GET path` inside the dut namespace: (status line, body).
fn get(lab: &Lab, path: &str) -> (String, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let response = lab
        .run_in("dut", move || -> std::io::Result<String> {
            let mut last = None;
            for _ in 0..50 {
                match TcpStream::connect(LISTEN) {
                    Ok(mut s) => {
                        s.write_all(request.as_bytes())?;
                        let mut text = String::new();
                        s.read_to_string(&mut text)?;
                        return Ok(text);
                    }
                    // The exporter may still be starting.
                    Err(e) => last = Some(e),
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(last.unwrap())
        })
        .unwrap()
        .expect("scrape");
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// The value of the series `name{labels}` exactly as written.
fn value(body: &str, series: &str) -> u64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {series} in:\n{body}"))
}

#[test]
fn exporter_counts_rise_while_traffic_flows() {
    if !require_root("exporter_counts_rise_while_traffic_flows") {
        return;
    }
    let (lab, id) = common::firewall_lab("xkex", GEN_IF, DUT_IF, "198.18.69.0/24");
    let up = lab
        .command("dut", "ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .unwrap();
    assert!(up.success());
    let _exporter = Exporter(
        lab.command("dut", XDPKIT)
            .args(["exporter", "--listen", LISTEN])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    let drops = format!(
        "xdpkit_xdp_packets_total{{interface=\"{DUT_IF}\",program=\"firewall\",action=\"drop\"}}"
    );
    let rule = format!(
        "xdpkit_firewall_rule_packets_total{{interface=\"{DUT_IF}\",rule_id=\"{id}\",rule=\"deny src 198.18.69.0/24 prio 100\"}}"
    );
    let stage_drops = format!(
        "xdpkit_stage_packets_total{{interface=\"{DUT_IF}\",stage=\"firewall\",action=\"drop\"}}"
    );
    let (status, before) = get(&lab, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        before.contains("# HELP xdpkit_xdp_packets Frames the XDP program"),
        "{before}"
    );
    assert!(
        before.contains("# TYPE xdpkit_xdp_packets counter"),
        "{before}"
    );
    assert!(before.contains("# TYPE xdpkit_firewall_rule_packets counter"));
    assert!(before.trim_end().ends_with("# EOF"));
    let (drops_before, rule_before) = (value(&before, &drops), value(&before, &rule));
    let stage_before = value(&before, &stage_drops);

    let mac = common::mac(&lab, "dut", DUT_IF);
    common::trafficgen(
        &lab,
        GEN_IF,
        &mac,
        &[
            "--src",
            "198.18.69.0/24",
            "--dst",
            "198.18.68.2",
            "--count",
            "1000",
        ],
    );

    let (_, after) = get(&lab, "/metrics");
    assert!(value(&after, &drops) >= drops_before + 1000, "{after}");
    assert!(value(&after, &rule) >= rule_before + 1000, "{after}");
    assert!(
        value(&after, &stage_drops) >= stage_before + 1000,
        "the firewall stage's own drops: {after}"
    );
    let (status, _) = get(&lab, "/nope");
    assert_eq!(status, "HTTP/1.1 404 Not Found");

    // --once prints the same families and exits.
    let once = ok(&xdpkit_in(&lab, "dut", &["exporter", "--once"]));
    assert!(value(&once, &drops) >= drops_before + 1000);
    ok(&xdpkit_in(&lab, "dut", &["detach", "--dev", DUT_IF]));
}
