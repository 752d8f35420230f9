//! End-to-end: the `xdpkit` binary in network namespaces with real packets,
//! and every error a user can hit (one line, exit code 2, nothing left behind).

use std::{
    net::SocketAddr,
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::{Command, Output},
    time::Duration,
};

use serde_json::Value;
use xdpkit_lab::lab::{require_root, Lab};

mod common;

use common::{ok, xdpkit_in, XDPKIT};
const QUIET: Duration = Duration::from_millis(300);
const MAX_WAIT: Duration = Duration::from_secs(5);

fn xdpkit(lab: &Lab, ns: &str, args: &[&str]) -> Output {
    xdpkit_in(lab, ns, args)
}

/// Asserts the usage-error contract: exit 2 and exactly one line on stderr
/// containing `needle`.
fn usage_error(out: &Output, needle: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "want exit 2, stderr: {stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "want one line: {stderr:?}"
    );
    assert!(stderr.contains(needle), "{needle:?} not in {stderr:?}");
    assert!(stderr.starts_with("xdpkit: error: "), "{stderr:?}");
    stderr
}

fn pin_dir(ifname: &str) -> std::path::PathBuf {
    Path::new("/sys/fs/bpf/xdpkit").join(ifname)
}

/// The XDP program id attached to `ifname` in `ns`, from iproute2's view.
fn attached_prog_id(lab: &Lab, ns: &str, ifname: &str) -> Option<u64> {
    let out = lab
        .command(ns, "ip")
        .args(["-j", "link", "show", "dev", ifname])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0]["xdp"]["prog"]["id"].as_u64()
}

fn counter(status: &Value, action: &str) -> u64 {
    status[0]["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["action"] == action)
        .map(|a| a["packets"].as_u64().unwrap())
        .unwrap()
}

/// Hosts tx (198.18.10.1) and rx (198.18.10.2) on one veth. tx knows rx's
/// MAC statically: with `drop` attached, rx could not answer ARP.
fn two_hosts(prefix: &str, tx_if: &str, rx_if: &str) -> Lab {
    let lab = Lab::builder(prefix)
        .namespace("tx")
        .namespace("rx")
        .veth(
            "tx",
            tx_if,
            Some("198.18.10.1/24"),
            "rx",
            rx_if,
            Some("198.18.10.2/24"),
        )
        .build()
        .expect("build lab");
    let rx_mac = lab.mac("rx", rx_if).unwrap();
    lab.static_neighbor("tx", tx_if, "198.18.10.2".parse().unwrap(), rx_mac)
        .unwrap();
    lab
}

#[test]
fn drop_blocks_udp_until_detach_and_status_counts_it() {
    if !require_root("drop_blocks_udp_until_detach_and_status_counts_it") {
        return;
    }
    const N: u32 = 200;
    let lab = two_hosts("xkt-drop", "xkdrop-tx", "xkdrop-rx");
    let dst: SocketAddr = "198.18.10.2:9000".parse().unwrap();
    let sink = lab.udp_sink("rx", dst).unwrap();

    let out = ok(&xdpkit(
        &lab,
        "rx",
        &["attach", "drop", "--dev", "xkdrop-rx", "--mode", "native"],
    ));
    assert!(
        out.contains("attached drop to xkdrop-rx in native mode"),
        "{out}"
    );
    for file in ["link", "root", "chain", "drop/stats"] {
        let meta = std::fs::metadata(pin_dir("xkdrop-rx").join(file)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{file} mode");
    }

    assert_eq!(lab.send_udp("tx", dst, N, 32).unwrap(), N);
    assert_eq!(
        sink.count(N, QUIET, MAX_WAIT),
        0,
        "dropped datagrams reached the socket"
    );

    // A second process reads the pinned state.
    let status: Value = serde_json::from_str(&ok(&xdpkit(
        &lab,
        "rx",
        &["status", "--dev", "xkdrop-rx", "--json", "--interval", "0"],
    )))
    .unwrap();
    assert_eq!(status[0]["program"], "drop");
    assert_eq!(status[0]["mode"], "native");
    assert_eq!(status[0]["state"], "attached");
    assert!(counter(&status, "drop") >= u64::from(N), "{status}");
    let text = ok(&xdpkit(&lab, "rx", &["status", "--interval", "0"]));
    assert!(text.contains("xkdrop-rx: drop (attached)"), "{text}");

    ok(&xdpkit(&lab, "rx", &["detach", "--dev", "xkdrop-rx"]));
    assert!(!pin_dir("xkdrop-rx").exists(), "state left after detach");
    assert_eq!(attached_prog_id(&lab, "rx", "xkdrop-rx"), None);
    assert_eq!(lab.send_udp("tx", dst, N, 32).unwrap(), N);
    assert_eq!(
        sink.count(N, QUIET, MAX_WAIT),
        N,
        "datagrams lost after detach"
    );
}

#[test]
fn attach_again_replaces_in_place_and_traffic_flows() {
    if !require_root("attach_again_replaces_in_place_and_traffic_flows") {
        return;
    }
    const N: u32 = 100;
    let lab = two_hosts("xkt-repl", "xkrepl-tx", "xkrepl-rx");
    let dst: SocketAddr = "198.18.10.2:9001".parse().unwrap();
    let sink = lab.udp_sink("rx", dst).unwrap();
    let first: Value = serde_json::from_str(&ok(&xdpkit(
        &lab,
        "rx",
        &["attach", "drop", "--dev", "xkrepl-rx", "--json"],
    )))
    .unwrap();
    let second: Value = serde_json::from_str(&ok(&xdpkit(
        &lab,
        "rx",
        &["attach", "pass", "--dev", "xkrepl-rx", "--json"],
    )))
    .unwrap();
    assert_eq!(first["link_id"], second["link_id"], "link updated in place");
    assert_eq!(second["replaced_prog_id"], first["prog_id"]);
    assert_eq!(second["replaced_foreign"], false);
    assert_eq!(lab.send_udp("tx", dst, N, 32).unwrap(), N);
    assert_eq!(sink.count(N, QUIET, MAX_WAIT), N);
    let status: Value = serde_json::from_str(&ok(&xdpkit(
        &lab,
        "rx",
        &["status", "--dev", "xkrepl-rx", "--json", "--interval", "0"],
    )))
    .unwrap();
    assert_eq!(status[0]["program"], "pass");
    assert!(counter(&status, "pass") >= u64::from(N));
    ok(&xdpkit(&lab, "rx", &["detach", "--dev", "xkrepl-rx"]));
}

#[test]
fn redirect_forwards_frames_to_a_third_namespace() {
    if !require_root("redirect_forwards_frames_to_a_third_namespace") {
        return;
    }
    const N: u32 = 100;
    // a --- (b-in | b-out) --- c; b redirects everything from b-in to b-out.
    let lab = Lab::builder("xkt-redir")
        .namespace("a")
        .namespace("b")
        .namespace("c")
        .veth(
            "a",
            "xkredir-a",
            Some("198.18.11.1/24"),
            "b",
            "xkredir-bin",
            None,
        )
        .veth(
            "b",
            "xkredir-bout",
            None,
            "c",
            "xkredir-c",
            Some("198.18.11.3/24"),
        )
        .gro("c", "xkredir-c")
        .build()
        .unwrap();
    // b forwards frames unchanged, so a addresses them to c's MAC directly.
    let c_mac = lab.mac("c", "xkredir-c").unwrap();
    lab.static_neighbor("a", "xkredir-a", "198.18.11.3".parse().unwrap(), c_mac)
        .unwrap();
    let dst: SocketAddr = "198.18.11.3:9002".parse().unwrap();
    let sink = lab.udp_sink("c", dst).unwrap();
    ok(&xdpkit(
        &lab,
        "b",
        &[
            "attach",
            "redirect",
            "--dev",
            "xkredir-bin",
            "--to",
            "xkredir-bout",
        ],
    ));
    assert_eq!(lab.send_udp("a", dst, N, 32).unwrap(), N);
    assert_eq!(
        sink.count(N, QUIET, MAX_WAIT),
        N,
        "redirected datagrams missing in c"
    );
    let status: Value = serde_json::from_str(&ok(&xdpkit(
        &lab,
        "b",
        &[
            "status",
            "--dev",
            "xkredir-bin",
            "--json",
            "--interval",
            "0",
        ],
    )))
    .unwrap();
    assert_eq!(status[0]["redirect_to"], "xkredir-bout");
    assert!(counter(&status, "redirect") >= u64::from(N), "{status}");
    ok(&xdpkit(&lab, "b", &["detach", "--dev", "xkredir-bin"]));
}

#[test]
fn error_unknown_interface() {
    if !require_root("error_unknown_interface") {
        return;
    }
    let lab = Lab::builder("xkt-e-if").namespace("n").build().unwrap();
    let err = usage_error(
        &xdpkit(&lab, "n", &["attach", "drop", "--dev", "xknosuchif0"]),
        "does not exist",
    );
    assert!(err.contains("ip link"), "names the fix: {err}");
    assert!(!pin_dir("xknosuchif0").exists());
    usage_error(
        &xdpkit(&lab, "n", &["detach", "--dev", "xknosuchif0"]),
        "does not exist",
    );
    usage_error(
        &xdpkit(&lab, "n", &["status", "--dev", "xknosuchif0"]),
        "does not exist",
    );
    usage_error(
        &xdpkit(&lab, "n", &["features", "--dev", "xknosuchif0"]),
        "does not exist",
    );
}

#[test]
fn error_not_privileged() {
    if !require_root("error_not_privileged") {
        return;
    }
    let lab = two_hosts("xkt-e-priv", "xkpriv-tx", "xkpriv-rx");
    // setpriv drops to nobody with no capabilities, inside the lab namespace.
    let out = lab
        .command("rx", "setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .args([XDPKIT, "attach", "drop", "--dev", "xkpriv-rx"])
        .output()
        .unwrap();
    let err = usage_error(&out, "needs root");
    assert!(err.contains("sudo"), "{err}");
    assert_eq!(attached_prog_id(&lab, "rx", "xkpriv-rx"), None);
    assert!(!pin_dir("xkpriv-rx").exists());
}

#[test]
fn error_mode_not_supported() {
    if !require_root("error_mode_not_supported") {
        return;
    }
    let lab = two_hosts("xkt-e-mode", "xkmode-tx", "xkmode-rx");
    let err = usage_error(
        &xdpkit(
            &lab,
            "rx",
            &["attach", "drop", "--dev", "xkmode-rx", "--mode", "offload"],
        ),
        "does not support offload XDP",
    );
    assert!(err.contains("native, skb"), "lists what works: {err}");
    assert_eq!(attached_prog_id(&lab, "rx", "xkmode-rx"), None);
    assert!(!pin_dir("xkmode-rx").exists());
    // Loopback has no native XDP either.
    usage_error(
        &xdpkit(
            &lab,
            "rx",
            &["attach", "drop", "--dev", "lo", "--mode", "native"],
        ),
        "does not support native XDP",
    );
    assert!(!pin_dir("lo").exists());
}

#[test]
fn error_foreign_program_then_force() {
    if !require_root("error_foreign_program_then_force") {
        return;
    }
    let lab = two_hosts("xkt-e-frgn", "xkfrgn-tx", "xkfrgn-rx");
    // Another tool (Debian's xdp-tools) attaches its own program.
    let loaded = lab
        .command("rx", "xdp-filter")
        .args(["load", "--mode", "skb", "xkfrgn-rx"])
        .output()
        .unwrap();
    assert!(
        loaded.status.success(),
        "xdp-filter load: {}",
        String::from_utf8_lossy(&loaded.stderr)
    );
    let theirs = attached_prog_id(&lab, "rx", "xkfrgn-rx").expect("xdp-filter attached");
    let err = usage_error(
        &xdpkit(&lab, "rx", &["attach", "drop", "--dev", "xkfrgn-rx"]),
        "not attached by xdpkit",
    );
    assert!(
        err.contains(&format!("id {theirs}")),
        "names the program id: {err}"
    );
    assert!(err.contains("--force"), "{err}");
    assert_eq!(
        attached_prog_id(&lab, "rx", "xkfrgn-rx"),
        Some(theirs),
        "their program untouched"
    );
    assert!(!pin_dir("xkfrgn-rx").exists());

    let report: Value = serde_json::from_str(&ok(&xdpkit(
        &lab,
        "rx",
        &["attach", "drop", "--dev", "xkfrgn-rx", "--force", "--json"],
    )))
    .unwrap();
    assert_eq!(report["replaced_prog_id"].as_u64(), Some(theirs));
    assert_eq!(report["replaced_foreign"], true);
    assert_eq!(
        attached_prog_id(&lab, "rx", "xkfrgn-rx"),
        report["prog_id"].as_u64()
    );
    ok(&xdpkit(&lab, "rx", &["detach", "--dev", "xkfrgn-rx"]));
    // xdp-filter and libxdp keep state directories; remove what they left
    // (libxdp's only if empty: other tools may use it).
    let _ = std::fs::remove_dir_all("/sys/fs/bpf/xdp-filter");
    let _ = std::fs::remove_dir("/sys/fs/bpf/xdp");
}

#[test]
fn error_unknown_program_and_bad_arguments() {
    if !require_root("error_unknown_program_and_bad_arguments") {
        return;
    }
    let lab = two_hosts("xkt-e-args", "xkargs-tx", "xkargs-rx");
    let err = usage_error(
        &xdpkit(&lab, "rx", &["attach", "firewal", "--dev", "xkargs-rx"]),
        "unknown program 'firewal'",
    );
    assert!(err.contains("pass, drop, tx, count, redirect"), "{err}");
    usage_error(&xdpkit(&lab, "rx", &["attach", "drop"]), "--dev");
    usage_error(
        &xdpkit(
            &lab,
            "rx",
            &["attach", "drop", "--dev", "xkargs-rx", "--mode", "fast"],
        ),
        "fast",
    );
    usage_error(
        &xdpkit(&lab, "rx", &["attach", "redirect", "--dev", "xkargs-rx"]),
        "needs --to",
    );
    usage_error(
        &xdpkit(
            &lab,
            "rx",
            &["attach", "drop", "--dev", "xkargs-rx", "--to", "xkargs-tx"],
        ),
        "--to only applies",
    );
    usage_error(
        &xdpkit(&lab, "rx", &["attach", "drop", "--dev", "../../etc"]),
        "not a valid interface name",
    );
    usage_error(
        &xdpkit(&lab, "rx", &["status", "--interval", "-1"]),
        "interval",
    );
    usage_error(&xdpkit(&lab, "rx", &["frobnicate"]), "frobnicate");
    usage_error(
        &xdpkit(&lab, "rx", &["detach", "--dev", "xkargs-rx"]),
        "nothing to detach",
    );
    assert_eq!(attached_prog_id(&lab, "rx", "xkargs-rx"), None);
    assert!(!pin_dir("xkargs-rx").exists());
}

/// Bad rule input on a live firewall: exit 2, one line, and the firewall
/// keeps exactly the rules it had.
#[test]
fn error_bad_rule_input_changes_nothing() {
    if !require_root("error_bad_rule_input_changes_nothing") {
        return;
    }
    let lab = two_hosts("xkt-e-rule", "xkrule-tx", "xkrule-rx");
    let dev = "xkrule-rx";
    ok(&xdpkit(&lab, "rx", &["attach", "firewall", "--dev", dev]));
    ok(&xdpkit(
        &lab,
        "rx",
        &["rule", "add", "--dev", dev, "deny", "src", "198.18.7.0/24"],
    ));
    let list = || {
        ok(&xdpkit(
            &lab,
            "rx",
            &["rule", "list", "--dev", dev, "--json"],
        ))
    };
    let before = list();
    usage_error(
        &xdpkit(
            &lab,
            "rx",
            &[
                "rule",
                "add",
                "--dev",
                dev,
                "deny",
                "src",
                "198.18.300.0/24",
            ],
        ),
        "bad src",
    );
    usage_error(
        &xdpkit(&lab, "rx", &["rule", "del", "--dev", dev, "999"]),
        "no rule 999",
    );
    let file = std::env::temp_dir().join("xkt-e-rule.rules");
    std::fs::write(&file, "deny src 198.18.8.0/24\npermit src 198.18.9.0/24\n").unwrap();
    let path = file.to_str().unwrap();
    usage_error(
        &xdpkit(
            &lab,
            "rx",
            &["rule", "load", "--replace", "--dev", dev, "--file", path],
        ),
        ":2: unknown action 'permit'",
    );
    usage_error(
        &xdpkit(&lab, "rx", &["rule", "load", "--dev", dev, "--file", path]),
        ":2: unknown action 'permit'",
    );
    let _ = std::fs::remove_file(&file);
    usage_error(
        &xdpkit(
            &lab,
            "tx",
            &[
                "rule",
                "add",
                "--dev",
                "xkrule-tx",
                "deny",
                "src",
                "198.18.9.0/24",
            ],
        ),
        "no xdpkit firewall on 'xkrule-tx'",
    );
    assert_eq!(list(), before, "the rules are unchanged");
    assert!(!pin_dir("xkrule-tx").exists());
}

#[test]
fn features_reports_kernel_and_veth() {
    if !require_root("features_reports_kernel_and_veth") {
        return;
    }
    let lab = two_hosts("xkt-feat", "xkfeat-tx", "xkfeat-rx");
    let v: Value = serde_json::from_str(&ok(&xdpkit(
        &lab,
        "rx",
        &["features", "--dev", "xkfeat-rx", "--json"],
    )))
    .unwrap();
    assert_eq!(v["kernel"]["btf"], true);
    assert_eq!(v["kernel"]["bpffs"], true);
    assert_eq!(v["kernel"]["af_xdp"], true);
    assert_eq!(v["kernel"]["jit"], "on", "JIT read from inside a namespace");
    assert_eq!(v["device"]["basic"], true);
    assert_eq!(v["device"]["redirect"], true);
    let modes: Vec<&str> = v["device"]["modes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert_eq!(modes, ["native", "skb"]);
    let text = ok(&xdpkit(&lab, "rx", &["features", "--dev", "xkfeat-rx"]));
    assert!(text.contains("modes        native, skb"), "{text}");
}

#[test]
fn help_documents_every_command() {
    for cmd in ["attach", "detach", "status", "features", "simulate"] {
        let out = Command::new(XDPKIT).args([cmd, "--help"]).output().unwrap();
        let help = ok(&out);
        assert!(help.contains("Example"), "{cmd} --help has examples");
        if !matches!(cmd, "features" | "simulate") {
            assert!(help.contains("--dev"), "{cmd} --help documents --dev");
        }
    }
    let top = ok(&Command::new(XDPKIT).arg("--help").output().unwrap());
    assert!(top.contains("Exit status"), "{top}");
}

/// Output into a pipe whose reader is gone (`xdpkit ... | head -c 0`):
/// exit 0, nothing on stderr, no panic.
#[test]
fn closed_pipe_ends_output_quietly() {
    let mut commands: Vec<Vec<&str>> = vec![
        vec!["--help"],
        vec!["rule", "--help"],
        vec!["features", "--help"],
    ];
    if xdpkit_lab::lab::is_root() {
        commands.push(vec!["status", "--json"]);
        commands.push(vec!["status"]);
        commands.push(vec!["exporter", "--once"]);
    } else {
        require_root("closed_pipe_ends_output_quietly (status, exporter)");
    }
    for args in commands {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(XDPKIT)
            .args(&args)
            .stdout(writer)
            .output()
            .expect("run xdpkit");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "{args:?}: {stderr}"
        );
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
}
