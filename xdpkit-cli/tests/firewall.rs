//! The firewall attached in a lab: good (198.18.41.1) and bad (198.19.41.1)
//! reach the server (198.18.42.2) through a router, so the server's one
//! interface sees both sources.

use std::{net::SocketAddr, process::Output, time::Duration};

use serde_json::Value;
use xdpkit_lab::lab::{require_root, Lab};

mod common;

use common::{ok, xdpkit_in, XDPKIT};
const QUIET: Duration = Duration::from_millis(300);
const MAX_WAIT: Duration = Duration::from_secs(5);

/// The server's interface: pins are per interface name, so each test has its own.
struct Routed {
    lab: Lab,
    server_if: String,
}

fn xdpkit(lab: &Lab, args: &[&str]) -> Output {
    xdpkit_in(lab, "server", args)
}

fn routed_lab(tag: &str) -> Routed {
    let name = |n: &str| format!("xk{tag}-{n}");
    let server_if = name("srv");
    let lab = Lab::builder(&format!("xkt-{tag}"))
        .namespace("good")
        .namespace("bad")
        .namespace("router")
        .namespace("server")
        .veth(
            "good",
            &name("good"),
            Some("198.18.41.1/24"),
            "router",
            &name("rg"),
            Some("198.18.41.254/24"),
        )
        .veth(
            "bad",
            &name("bad"),
            Some("198.19.41.1/24"),
            "router",
            &name("rb"),
            Some("198.19.41.254/24"),
        )
        .veth(
            "router",
            &name("rs"),
            Some("198.18.42.1/24"),
            "server",
            &server_if,
            Some("198.18.42.2/24"),
        )
        .build()
        .unwrap();
    let run = |ns: &str, args: &[&str]| {
        let st = lab.command(ns, "ip").args(args).status().unwrap();
        assert!(st.success(), "ip {args:?} in {ns}");
    };
    run(
        "good",
        &["route", "add", "198.18.42.0/24", "via", "198.18.41.254"],
    );
    run(
        "bad",
        &["route", "add", "198.18.42.0/24", "via", "198.19.41.254"],
    );
    run(
        "server",
        &["route", "add", "198.18.41.0/24", "via", "198.18.42.1"],
    );
    run(
        "server",
        &["route", "add", "198.19.41.0/24", "via", "198.18.42.1"],
    );
    let st = lab
        .command("router", "sysctl")
        .args(["-qw", "net.ipv4.ip_forward=1"])
        .status()
        .unwrap();
    assert!(st.success());
    Routed { lab, server_if }
}

fn rule_packets(lab: &Lab, server_if: &str, id: u64) -> u64 {
    let rows: Value = serde_json::from_str(&ok(&xdpkit(
        lab,
        &["rule", "list", "--dev", server_if, "--json"],
    )))
    .unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .map(|r| r["packets"].as_u64().unwrap())
        .unwrap_or(0)
}

/// `xdpkit rule load --replace` of `file`.
fn load_replace(lab: &Lab, dev: &str, file: &std::path::Path) {
    let file = file.to_str().unwrap();
    ok(&xdpkit(
        lab,
        &["rule", "load", "--dev", dev, "--file", file, "--replace"],
    ));
}

/// `xdpkit rule list --json`, parsed.
fn rule_list(lab: &Lab, dev: &str) -> Value {
    serde_json::from_str(&ok(&xdpkit(lab, &["rule", "list", "--dev", dev, "--json"]))).unwrap()
}

#[test]
fn denied_range_is_dropped_allowed_one_arrives_and_rules_change_live() {
    if !require_root("denied_range_is_dropped_allowed_one_arrives_and_rules_change_live") {
        return;
    }
    const N: u32 = 100;
    let Routed { lab, server_if } = routed_lab("fwa");
    let server_if = server_if.as_str();
    let dst: SocketAddr = "198.18.42.2:9000".parse().unwrap();
    let sink = lab.udp_sink("server", dst).unwrap();
    // Warm up ARP on every hop before the firewall is there.
    lab.send_udp("good", dst, 1, 8).unwrap();
    lab.send_udp("bad", dst, 1, 8).unwrap();
    assert_eq!(sink.count(2, QUIET, MAX_WAIT), 2, "lab routes both sources");

    ok(&xdpkit(&lab, &["attach", "firewall", "--dev", server_if]));
    let dir = std::env::temp_dir().join(format!("xkfw-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rules = dir.join("block.rules");
    std::fs::write(&rules, "# the attacker's range\ndeny src 198.19.0.0/16\n").unwrap();
    load_replace(&lab, server_if, &rules);

    lab.send_udp("good", dst, N, 32).unwrap();
    assert_eq!(
        sink.count(N, QUIET, MAX_WAIT),
        N,
        "allowed source lost datagrams"
    );
    lab.send_udp("bad", dst, N, 32).unwrap();
    assert_eq!(
        sink.count(N, QUIET, MAX_WAIT),
        0,
        "denied source got through"
    );
    assert!(
        rule_packets(&lab, server_if, 2) >= u64::from(N),
        "rule 2 (line 2) counted the drops"
    );

    // Delete the rule: bad gets through; add a narrower one: it stops again.
    ok(&xdpkit(&lab, &["rule", "del", "--dev", server_if, "2"]));
    lab.send_udp("bad", dst, N, 32).unwrap();
    assert_eq!(sink.count(N, QUIET, MAX_WAIT), N, "after delete");
    let id = ok(&xdpkit(
        &lab,
        &[
            "rule",
            "add",
            "--dev",
            server_if,
            "deny",
            "src",
            "198.19.41.1",
            "dport",
            "9000",
        ],
    ));
    let id: u64 = id.trim().parse().unwrap();
    lab.send_udp("bad", dst, N, 32).unwrap();
    assert_eq!(sink.count(N, QUIET, MAX_WAIT), 0, "after add");
    assert!(rule_packets(&lab, server_if, id) >= u64::from(N));

    // Errors: unknown rule, bad rule, no firewall on an interface.
    let out = xdpkit(&lab, &["rule", "del", "--dev", server_if, "77"]);
    assert_eq!(out.status.code(), Some(2));
    let out = xdpkit(
        &lab,
        &[
            "rule",
            "add",
            "--dev",
            server_if,
            "deny",
            "src",
            "198.19.0.1/8",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("did you mean 198.0.0.0/8?"));
    let out = lab
        .command("router", XDPKIT)
        .args(["rule", "list", "--dev", "xkfwa-rs"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no xdpkit firewall on 'xkfwa-rs'"));

    // Status shows the firewall's outcomes: rule decisions include every drop above.
    let st: Value = serde_json::from_str(&ok(&xdpkit(
        &lab,
        &["status", "--dev", server_if, "--json", "--interval", "0"],
    )))
    .unwrap();
    assert_eq!(st[0]["program"], "firewall");
    let outcome = |name: &str| {
        st[0]["firewall"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["outcome"] == name)
            .unwrap()["packets"]
            .as_u64()
            .unwrap()
    };
    assert!(outcome("rule") >= 2 * u64::from(N), "{st}");
    assert!(
        outcome("default") >= 2 * u64::from(N),
        "allowed traffic fell to the default: {st}"
    );

    // --replace: exactly the file's rules remain, ids are its line numbers,
    // and a reused id starts from zero.
    let other = dir.join("other.rules");
    std::fs::write(&other, "allow src 198.18.0.0/16\ndeny src 198.19.41.0/24\n").unwrap();
    load_replace(&lab, server_if, &other);
    let listed = rule_list(&lab, server_if);
    let ids: Vec<u64> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [1, 2], "{listed}");
    assert_eq!(listed[1]["rule"], "deny src 198.19.41.0/24 prio 100");
    assert_eq!(listed[1]["packets"], 0, "reused id 2 kept old counts");
    let pins = std::path::Path::new("/sys/fs/bpf/xdpkit")
        .join(server_if)
        .join("firewall");
    let mode = std::fs::metadata(pins.join("fw_rules"))
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    assert!(!pins.join("new_fw_rules").exists(), "swap left its pin");
    lab.send_udp("bad", dst, N, 32).unwrap();
    assert_eq!(sink.count(N, QUIET, MAX_WAIT), 0, "replaced set drops bad");
    assert!(rule_packets(&lab, server_if, 2) >= u64::from(N));
    let listed = rule_list(&lab, server_if);
    let last_hit = listed[1]["last_hit"]
        .as_str()
        .expect("rule 2 has a last hit");
    let out = std::process::Command::new("date")
        .args(["-u", "-d", last_hit, "+%s"])
        .output()
        .unwrap();
    let hit: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        hit <= now && now - hit < 30,
        "last hit {last_hit} is not just now"
    );
    assert!(listed[0]["last_hit"].is_null(), "{listed}");

    // flush: no rules, everything passes; ids go on growing.
    let out = ok(&xdpkit(&lab, &["rule", "flush", "--dev", server_if]));
    assert!(out.contains("flushed 2 rules"), "{out}");
    assert_eq!(
        ok(&xdpkit(
            &lab,
            &["rule", "list", "--dev", server_if, "--json"]
        ))
        .trim(),
        "[]"
    );
    lab.send_udp("bad", dst, N, 32).unwrap();
    assert_eq!(sink.count(N, QUIET, MAX_WAIT), N, "after flush");

    ok(&xdpkit(&lab, &["detach", "--dev", server_if]));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn replace_under_traffic_loses_no_allowed_packet() {
    if !require_root("replace_under_traffic_loses_no_allowed_packet") {
        return;
    }
    const N: u32 = 3000;
    let Routed { lab, server_if } = routed_lab("fwb");
    let server_if = server_if.as_str();
    let dst: SocketAddr = "198.18.42.2:9100".parse().unwrap();
    let sink = lab.udp_sink("server", dst).unwrap();
    lab.send_udp("good", dst, 1, 8).unwrap();
    assert_eq!(sink.count(1, QUIET, MAX_WAIT), 1);
    // Default deny: a half-loaded ruleset would drop the allowed stream.
    ok(&xdpkit(
        &lab,
        &[
            "attach",
            "firewall",
            "--dev",
            server_if,
            "--default",
            "deny",
        ],
    ));
    let dir = std::env::temp_dir().join(format!("xkfwr-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let a = dir.join("a.rules");
    let b = dir.join("b.rules");
    std::fs::write(
        &a,
        "deny src 198.19.0.0/16\nallow src 198.18.41.0/24 prio 5\n",
    )
    .unwrap();
    std::fs::write(&b, "allow src 198.18.41.1 proto udp dport 9000-9200 prio 1\ndeny src 198.19.41.0/24 dport 9000-9100\nallow src 198.18.0.0/15 prio 300\n").unwrap();
    load_replace(&lab, server_if, &a);

    let received = std::thread::scope(|scope| {
        let counter =
            scope.spawn(|| sink.count(N, Duration::from_secs(2), Duration::from_secs(30)));
        let sender = scope.spawn(|| {
            let mut sent = 0;
            // Paced: about 1,000 datagrams a second for 3 s.
            for _ in 0..N / 100 {
                sent += lab.send_udp("good", dst, 100, 32).unwrap();
                std::thread::sleep(Duration::from_millis(100));
            }
            sent
        });
        let mut swaps = 0;
        while !sender.is_finished() && swaps < 40 {
            let file = if swaps % 2 == 0 { &b } else { &a };
            load_replace(&lab, server_if, file);
            swaps += 1;
        }
        assert!(swaps >= 4, "only {swaps} swaps happened during the stream");
        println!("{swaps} atomic --replace swaps while {N} allowed datagrams flowed");
        assert_eq!(sender.join().unwrap(), N);
        counter.join().unwrap()
    });
    assert_eq!(received, N, "allowed datagrams lost across --replace");
    ok(&xdpkit(&lab, &["detach", "--dev", server_if]));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The firewall stage's kernel memory (bytes_memlock of its maps) as
/// `status --json` reports it.
fn firewall_memory(lab: &Lab, dev: &str) -> u64 {
    let all: Value =
        serde_json::from_str(&ok(&xdpkit(lab, &["status", "--dev", dev, "--json"]))).unwrap();
    let stage = all[0]["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage"] == "firewall")
        .unwrap()
        .clone();
    let parts: Vec<&str> = stage["memory"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["part"].as_str().unwrap())
        .collect();
    assert_eq!(parts, ["set 0", "set 1", "shared"], "{stage}");
    stage["memory_bytes"].as_u64().unwrap()
}

/// The `max-rules` that `xdpkit export` reports for the firewall of `dev`.
fn exported_max_rules(lab: &Lab, dev: &str) -> i64 {
    let text = ok(&xdpkit(lab, &["export"]));
    let host = xdpkit::config::HostConfig::parse("export", &text, std::path::Path::new("."))
        .unwrap_or_else(|e| panic!("export does not parse: {e}\n{text}"));
    let firewall = host.interfaces[dev]
        .stages
        .iter()
        .find(|s| s.program == "firewall")
        .unwrap();
    firewall.settings["max-rules"]
        .as_integer()
        .unwrap_or_else(|| panic!("no max-rules in {text}"))
}

#[test]
fn a_small_firewall_is_small_and_grows_under_traffic_keeping_counters() {
    if !require_root("a_small_firewall_is_small_and_grows_under_traffic_keeping_counters") {
        return;
    }
    const N: u32 = 1000;
    let Routed { lab, server_if } = routed_lab("fwg");
    let server_if = server_if.as_str();
    let dst: SocketAddr = "198.18.42.2:9300".parse().unwrap();
    let sink = lab.udp_sink("server", dst).unwrap();
    lab.send_udp("good", dst, 1, 8).unwrap();
    lab.send_udp("bad", dst, 1, 8).unwrap();
    assert_eq!(sink.count(2, QUIET, MAX_WAIT), 2, "lab routes both sources");

    ok(&xdpkit(&lab, &["attach", "firewall", "--dev", server_if]));
    let add = |rule: &str| -> u64 {
        let mut args = vec!["rule", "add", "--dev", server_if];
        args.extend(rule.split_whitespace());
        ok(&xdpkit(&lab, &args)).trim().parse().unwrap()
    };
    assert_eq!(add("deny src 198.19.41.1"), 1);
    assert_eq!(add("allow src 198.18.41.1"), 2);
    assert_eq!(add("deny src 198.19.99.0/24 dport 53"), 3);
    // A handful of rules: counters and tables sized for 1,024 ids, not 2^21.
    let small = firewall_memory(&lab, server_if);
    assert!(small < 16_000_000, "{small} bytes for three rules");
    assert_eq!(exported_max_rules(&lab, server_if), 1023);

    lab.send_udp("bad", dst, 100, 32).unwrap();
    lab.send_udp("good", dst, 100, 32).unwrap();
    assert_eq!(sink.count(100, QUIET, MAX_WAIT), 100);
    let (bad0, good0) = (
        rule_packets(&lab, server_if, 1),
        rule_packets(&lab, server_if, 2),
    );
    assert!(bad0 >= 100 && good0 >= 100, "{bad0} {good0}");

    // 2,000 more rules (ids 4..2003) while the good source streams: the
    // firewall grows to 2,048 ids (a reinstall), no allowed frame is lost
    // and no count of the old rules either.
    let dir = std::env::temp_dir().join(format!("xkfwg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let many = dir.join("many.rules");
    let mut text = String::new();
    for i in 0..1999u32 {
        text.push_str(&format!(
            "deny src 198.19.{}.{}\n",
            100 + i / 250,
            1 + i % 250
        ));
    }
    text.push_str("deny src 198.19.41.0/24 prio 50\n");
    std::fs::write(&many, text).unwrap();
    let received = std::thread::scope(|scope| {
        let counter =
            scope.spawn(|| sink.count(N, Duration::from_secs(2), Duration::from_secs(30)));
        let sender = scope.spawn(|| {
            let mut sent = 0;
            for _ in 0..N / 50 {
                sent += lab.send_udp("good", dst, 50, 32).unwrap();
                std::thread::sleep(Duration::from_millis(50));
            }
            sent
        });
        std::thread::sleep(Duration::from_millis(200));
        let file = many.to_str().unwrap();
        ok(&xdpkit(
            &lab,
            &["rule", "load", "--dev", server_if, "--file", file],
        ));
        assert_eq!(sender.join().unwrap(), N);
        counter.join().unwrap()
    });
    assert_eq!(
        received, N,
        "allowed datagrams lost while the firewall grew"
    );
    assert_eq!(
        rule_packets(&lab, server_if, 1),
        bad0,
        "rule 1 kept its count"
    );
    assert_eq!(
        rule_packets(&lab, server_if, 2),
        good0 + u64::from(N),
        "rule 2 counted every allowed frame, before, during and after the growth"
    );
    assert_eq!(exported_max_rules(&lab, server_if), 2047);
    let grown = firewall_memory(&lab, server_if);
    assert!(grown > small, "{grown} <= {small}");

    // The new ids judge: the /24 at prio 50 (id 2003) now drops bad.
    lab.send_udp("bad", dst, 100, 32).unwrap();
    assert_eq!(sink.count(100, QUIET, MAX_WAIT), 0, "bad got through");
    assert_eq!(rule_packets(&lab, server_if, 2003), 100);
    assert_eq!(rule_packets(&lab, server_if, 1), bad0);
    let rows = rule_list(&lab, server_if);
    assert_eq!(rows.as_array().unwrap().len(), 2003);
    let status = ok(&xdpkit(&lab, &["status", "--dev", server_if]));
    assert!(status.contains("kernel memory"), "{status}");

    // `rule add` past the capacity grows it too (id 2048 needs 4,096 ids).
    let good = rule_packets(&lab, server_if, 2);
    let mut last = 0;
    for i in 0..45 {
        last = add(&format!(
            "deny src 198.19.200.{i} dport 53 prio {}",
            300 + i
        ));
    }
    assert_eq!(last, 2048);
    assert_eq!(exported_max_rules(&lab, server_if), 4095);
    assert_eq!(rule_packets(&lab, server_if, 2), good);
    lab.send_udp("good", dst, 100, 32).unwrap();
    assert_eq!(sink.count(100, QUIET, MAX_WAIT), 100);
    assert_eq!(rule_packets(&lab, server_if, 2), good + 100);

    ok(&xdpkit(&lab, &["detach", "--dev", server_if]));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn max_rules_sizes_a_new_firewall_and_grows_a_running_one() {
    if !require_root("max_rules_sizes_a_new_firewall_and_grows_a_running_one") {
        return;
    }
    let Routed { lab, server_if } = routed_lab("fwm");
    let dev = server_if.as_str();
    let attach = |extra: &[&str]| {
        let mut args = vec!["attach", "firewall", "--dev", dev];
        args.extend(extra);
        ok(&xdpkit(&lab, &args));
    };
    attach(&["--max-rules", "3000"]);
    assert_eq!(exported_max_rules(&lab, dev), 4095);
    let sized = firewall_memory(&lab, dev);
    let id: u64 = ok(&xdpkit(
        &lab,
        &["rule", "add", "--dev", dev, "deny", "src", "198.19.41.1"],
    ))
    .trim()
    .parse()
    .unwrap();
    // Attaching again without --max-rules keeps the room; asking for less too.
    attach(&[]);
    attach(&["--max-rules", "100"]);
    assert_eq!(exported_max_rules(&lab, dev), 4095);
    // More grows the running firewall; its rule stays.
    attach(&["--max-rules", "10000"]);
    assert_eq!(exported_max_rules(&lab, dev), 16383);
    assert!(firewall_memory(&lab, dev) > sized);
    let rows = rule_list(&lab, dev);
    assert_eq!(rows[0]["id"].as_u64(), Some(id), "{rows}");
    // Out of range.
    let out = xdpkit(
        &lab,
        &["attach", "firewall", "--dev", dev, "--max-rules", "4000000"],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = xdpkit(&lab, &["attach", "pass", "--dev", dev, "--max-rules", "10"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(exported_max_rules(&lab, dev), 16383);
    ok(&xdpkit(&lab, &["detach", "--dev", dev]));
}

/// Entries of the firewall map `file` pinned for `dev` (its chunk pool...).
fn pinned_entries(dev: &str, file: &str) -> u32 {
    let path = format!("/sys/fs/bpf/xdpkit/{dev}/firewall/{file}");
    let map = aya::maps::MapData::from_pin(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    map.info().unwrap().max_entries()
}

#[test]
fn prefix_tables_grow_with_the_prefixes_under_traffic() {
    if !require_root("prefix_tables_grow_with_the_prefixes_under_traffic") {
        return;
    }
    const N: u32 = 600;
    let Routed { lab, server_if } = routed_lab("fwp");
    let server_if = server_if.as_str();
    let dst: SocketAddr = "198.18.42.2:9301".parse().unwrap();
    let sink = lab.udp_sink("server", dst).unwrap();
    ok(&xdpkit(&lab, &["attach", "firewall", "--dev", server_if]));
    // A new firewall's DIR pools hold 64 chunks.
    assert_eq!(pinned_entries(server_if, "fw_dir4_ch_0"), 64);
    assert_eq!(pinned_entries(server_if, "fw_dir4_ch_1"), 64);
    // Its IPv6 tables 16 buckets.
    assert_eq!(pinned_entries(server_if, "fw_v6tab_0"), 16);
    lab.send_udp("bad", dst, 50, 32).unwrap();
    assert_eq!(sink.count(50, QUIET, MAX_WAIT), 50, "nothing denies yet");

    // 150 /25s in distinct /24s of 198.19.0.0/16 need 151 chunks: the
    // pools grow to 256 (a reinstall) while the good source streams.
    let dir = std::env::temp_dir().join(format!("xkfwp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("prefixes.rules");
    let mut text = String::new();
    for x in 100..250u32 {
        text.push_str(&format!("deny src 198.19.{x}.0/25\n"));
    }
    text.push_str("deny src 198.19.41.0/25\n");
    // And 200 IPv6 /48s (lines 152-351): 200 entries, 64 buckets used, 80
    // in the maps (a quarter more).
    for x in 0..200u32 {
        text.push_str(&format!("deny src 2001:db8:{x:x}::/48\n"));
    }
    std::fs::write(&file, text).unwrap();
    let received = std::thread::scope(|scope| {
        let counter =
            scope.spawn(|| sink.count(N, Duration::from_secs(2), Duration::from_secs(30)));
        let sender = scope.spawn(|| {
            let mut sent = 0;
            for _ in 0..N / 50 {
                sent += lab.send_udp("good", dst, 50, 32).unwrap();
                std::thread::sleep(Duration::from_millis(50));
            }
            sent
        });
        std::thread::sleep(Duration::from_millis(200));
        load_replace(&lab, server_if, &file);
        assert_eq!(sender.join().unwrap(), N);
        counter.join().unwrap()
    });
    assert_eq!(received, N, "allowed datagrams lost while the tables grew");
    assert_eq!(pinned_entries(server_if, "fw_dir4_ch_0"), 256);
    assert_eq!(pinned_entries(server_if, "fw_dir4_ch_1"), 256);
    assert_eq!(pinned_entries(server_if, "fw_v6tab_0"), 80);
    assert_eq!(pinned_entries(server_if, "fw_v6tab_1"), 80);

    // The last IPv4 prefix (line 151) judges bad's source from the DIR table.
    lab.send_udp("bad", dst, 100, 32).unwrap();
    assert_eq!(sink.count(100, QUIET, MAX_WAIT), 0, "bad got through");
    assert_eq!(rule_packets(&lab, server_if, 151), 100);
    // One more /25 in a new /24 goes in place, the pool has room.
    ok(&xdpkit(
        &lab,
        &[
            "rule",
            "add",
            "--dev",
            server_if,
            "deny",
            "src",
            "198.19.7.0/25",
        ],
    ));
    assert_eq!(pinned_entries(server_if, "fw_dir4_ch_0"), 256);
    // 300 more IPv6 prefixes, one by one into the set (a rebuild each
    // after the first fills it) or by a load: the tables grow again.
    let more = dir.join("more.rules");
    let text: String = (200..500u32)
        .map(|x| format!("deny dst 2001:db8:{x:x}:1::/64\n"))
        .collect();
    std::fs::write(&more, text).unwrap();
    ok(&xdpkit(
        &lab,
        &[
            "rule",
            "load",
            "--dev",
            server_if,
            "--file",
            more.to_str().unwrap(),
        ],
    ));
    assert_eq!(pinned_entries(server_if, "fw_v6tab_0"), 176);
    lab.send_udp("bad", dst, 20, 32).unwrap();
    assert_eq!(sink.count(20, QUIET, MAX_WAIT), 0, "bad got through");
    ok(&xdpkit(&lab, &["detach", "--dev", server_if]));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Entries the firewall map `file` pinned for `dev` holds (a hash map's
/// entries, not its size), counted by bpftool.
fn pinned_count(dev: &str, file: &str) -> usize {
    let path = format!("/sys/fs/bpf/xdpkit/{dev}/firewall/{file}");
    let out = std::process::Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned", &path])
        .output()
        .unwrap();
    assert!(out.status.success(), "bpftool map dump {path}");
    let dump: Value = serde_json::from_slice(&out.stdout).unwrap();
    dump.as_array().unwrap().len()
}

/// A lab of one veth pair, for tests that need an interface, not traffic.
fn pair_lab(tag: &str) -> (Lab, String) {
    let dev = format!("xk{tag}-dut");
    let lab = Lab::builder(&format!("xkt-{tag}"))
        .namespace("peer")
        .namespace("server")
        .veth("peer", &format!("xk{tag}-peer"), None, "server", &dev, None)
        .build()
        .unwrap();
    (lab, dev)
}

/// The canonical form of `rule`, as `rule list` and `export` print it.
fn canonical(rule: &str) -> String {
    rule.parse::<xdpkit::firewall::Rule>()
        .unwrap_or_else(|e| panic!("{rule}: {e}"))
        .to_string()
}

/// (id, rule) of every listed rule.
fn listed(lab: &Lab, dev: &str) -> Vec<(u64, String)> {
    rule_list(lab, dev)
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["id"].as_u64().unwrap(),
                r["rule"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Prefix rules live whole in FW_RULES' 40-byte records, general ones in
/// FW_GEN_RECORDS as well: every way of writing rules (add, del, load,
/// --replace, flush) reads back the same rules through `rule list` and
/// `export`, and FW_GEN_RECORDS holds exactly the general rules, at most
/// FW_MAX_GENERAL of them.
#[test]
fn rules_read_back_from_both_record_maps_and_general_ones_stop_at_the_limit() {
    if !require_root("rules_read_back_from_both_record_maps_and_general_ones_stop_at_the_limit") {
        return;
    }
    let (lab, dev) = pair_lab("fwc");
    let dev = dev.as_str();
    ok(&xdpkit(&lab, &["attach", "firewall", "--dev", dev]));
    let general_rules = [
        "deny src 198.18.0.0/16 dst 198.19.1.1 proto tcp sport 1-2 dport 80 smac 02:00:00:00:00:01 vlan 7 prio 3",
        "rate-limit 7 proto udp dport 53",
        "allow src 2001:db8::/32 dst 2001:db8:1::/48",
        "allow",
    ];
    let prefix_rules = [
        "deny src 198.18.0.0/15",
        "allow dst 198.19.7.1/32 prio 7",
        "rate-limit 500 src 2001:db8::/32",
        "deny dst ::/0 prio 900",
        "deny src 0.0.0.0/0 prio 1000",
        "allow src 2001:db8::1/128 prio 0",
        "rate-limit 1 dst 198.19.0.0/24",
    ];
    // Added one by one, general and prefix rules in turn.
    let mut expected = Vec::new();
    for (i, rule) in prefix_rules.iter().enumerate() {
        let mut add = |rule: &str| {
            let mut args = vec!["rule", "add", "--dev", dev];
            args.extend(rule.split_whitespace());
            let id: u64 = ok(&xdpkit(&lab, &args)).trim().parse().unwrap();
            expected.push((id, canonical(rule)));
        };
        add(rule);
        if let Some(general) = general_rules.get(i) {
            add(general);
        }
    }
    let by_id = |rules: &[(u64, String)]| {
        let mut rules = rules.to_vec();
        rules.sort();
        rules
    };
    assert_eq!(by_id(&listed(&lab, dev)), by_id(&expected));
    assert_eq!(pinned_count(dev, "fw_gen_records"), general_rules.len());

    // Deleted in place: a general rule and a prefix rule.
    for id in [2, 3] {
        ok(&xdpkit(
            &lab,
            &["rule", "del", "--dev", dev, &id.to_string()],
        ));
        expected.retain(|(i, _)| *i != id);
    }
    assert_eq!(by_id(&listed(&lab, dev)), by_id(&expected));
    assert_eq!(pinned_count(dev, "fw_gen_records"), general_rules.len() - 1);
    // Export gives the rules in the order they were given.
    let text = ok(&xdpkit(&lab, &["export"]));
    let host = xdpkit::config::HostConfig::parse("export", &text, std::path::Path::new("."))
        .unwrap_or_else(|e| panic!("export does not parse: {e}\n{text}"));
    let exported: Vec<&str> = host.interfaces[dev].stages[0].settings["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    let given: Vec<&str> = expected.iter().map(|(_, r)| r.as_str()).collect();
    assert_eq!(exported, given);

    // --replace: fresh record maps, ids the line numbers.
    let dir = std::env::temp_dir().join(format!("xkfwc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("mixed.rules");
    let lines: Vec<&str> = general_rules
        .iter()
        .rev()
        .chain(prefix_rules.iter())
        .copied()
        .collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    load_replace(&lab, dev, &file);
    let want: Vec<(u64, String)> = (1..).zip(lines.iter().map(|r| canonical(r))).collect();
    assert_eq!(by_id(&listed(&lab, dev)), by_id(&want));
    assert_eq!(pinned_count(dev, "fw_gen_records"), general_rules.len());

    // FW_MAX_GENERAL general rules (two prefixes each) and two prefix
    // rules fill FW_GEN_RECORDS; one general rule more is refused with
    // the limit, by `rule add` and by `rule load`, and nothing is stored.
    let full = dir.join("full.rules");
    let mut text: String = (0..1024u32)
        .map(|i| {
            format!(
                "deny src 198.18.{}.{} dst 198.19.0.0/16\n",
                i / 256,
                i % 256
            )
        })
        .collect();
    text.push_str("deny src 198.18.200.0/24\ndeny dst 2001:db8::/32\n");
    std::fs::write(&full, text).unwrap();
    load_replace(&lab, dev, &full);
    assert_eq!(pinned_count(dev, "fw_gen_records"), 1024);
    let refused = |out: Output| {
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("at most 1024 are supported"), "{err}");
    };
    refused(xdpkit(
        &lab,
        &["rule", "add", "--dev", dev, "deny", "proto", "udp"],
    ));
    let one = dir.join("one.rules");
    std::fs::write(&one, "deny src 198.18.201.0/24\ndeny proto udp\n").unwrap();
    refused(xdpkit(
        &lab,
        &[
            "rule",
            "load",
            "--dev",
            dev,
            "--file",
            one.to_str().unwrap(),
        ],
    ));
    assert_eq!(listed(&lab, dev).len(), 1026);
    assert_eq!(pinned_count(dev, "fw_gen_records"), 1024);
    // A prefix rule still goes in.
    ok(&xdpkit(
        &lab,
        &[
            "rule",
            "add",
            "--dev",
            dev,
            "deny",
            "src",
            "198.18.202.0/24",
        ],
    ));
    assert_eq!(listed(&lab, dev).len(), 1027);

    let out = ok(&xdpkit(&lab, &["rule", "flush", "--dev", dev]));
    assert!(out.contains("flushed 1027 rules"), "{out}");
    assert_eq!(pinned_count(dev, "fw_gen_records"), 0);
    assert!(listed(&lab, dev).is_empty());
    ok(&xdpkit(&lab, &["detach", "--dev", dev]));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A firewall whose FW_RULES holds the 80-byte records of the build before
/// FW_GEN_RECORDS is refused, not misread: by the readers and `rule`
/// (FirewallView), `export`, and a new attach (object::check_pins).
#[test]
fn pins_of_the_80_byte_records_are_refused() {
    if !require_root("pins_of_the_80_byte_records_are_refused") {
        return;
    }
    let (lab, dev) = pair_lab("fwo");
    let dev = dev.as_str();
    ok(&xdpkit(&lab, &["attach", "firewall", "--dev", dev]));
    ok(&xdpkit(
        &lab,
        &["rule", "add", "--dev", dev, "deny", "src", "198.18.0.1"],
    ));
    let pin = std::path::Path::new("/sys/fs/bpf/xdpkit")
        .join(dev)
        .join("firewall")
        .join("fw_rules");
    std::fs::remove_file(&pin).unwrap();
    let made = std::process::Command::new("bpftool")
        .args(["map", "create"])
        .arg(&pin)
        .args([
            "type", "array", "key", "4", "value", "80", "entries", "1024", "name", "fw_rules",
        ])
        .status()
        .unwrap();
    assert!(made.success(), "bpftool map create");
    for args in [
        vec!["rule", "list", "--dev", dev],
        vec!["rule", "add", "--dev", dev, "deny", "src", "198.18.0.2"],
        vec!["export"],
        vec!["attach", "firewall", "--dev", dev],
    ] {
        let out = xdpkit(&lab, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("made by another xdpkit version (map FW_RULES differs)"),
            "{args:?}: {err}"
        );
    }
    ok(&xdpkit(&lab, &["detach", "--dev", dev]));
}
