//! `xdpkit apply -f host.toml` and `xdpkit export` end to end: a client
//! namespace sends UDP to a server namespace whose interface runs the chain
//! the file declares.
//!
//! The client has two addresses on one veth: 198.18.42.1 (the allowed /24)
//! and 198.19.42.1 (denied). The client resolves the server statically and
//! IPv6 is off on both sides, so the only frames the server's chain sees are
//! the datagrams a test sends, and counters can be compared exactly.

use std::{
    io::Write as _,
    net::{IpAddr, SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    process::{Output, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use serde_json::Value;
use xdpkit_lab::lab::{require_root, Lab, UdpSink};

mod common;

use common::{ip, ok, sysctl, xdpkit_in, XDPKIT};

const QUIET: Duration = Duration::from_millis(300);
const MAX_WAIT: Duration = Duration::from_secs(5);
const CLIENT: &str = "198.18.42.1";
const DENIED: &str = "198.19.42.1";
const SERVER: &str = "198.18.42.2";
const ALLOW: &str = "allow src 198.18.42.0/24 prio 10";

/// One test's lab: the server's interface `srv` (pins are per interface
/// name, so each test has its own), and a directory for its files.
struct Host {
    lab: Lab,
    srv: String,
    dir: tempfile::TempDir,
}

/// Namespaces `cli` and `srv` joined by `xk<tag>-c` / `xk<tag>-s`, plus,
/// for each name in `extra`, another pair `xk<tag>-c<name>` / `xk<tag>-s<name>`
/// without addresses.
fn host_lab(tag: &str, extra: &[&str]) -> Host {
    let cli = format!("xk{tag}-c");
    let srv = format!("xk{tag}-s");
    let mut builder = Lab::builder(&format!("xkt-{tag}"))
        .namespace("cli")
        .namespace("srv")
        .veth(
            "cli",
            &cli,
            Some(&format!("{CLIENT}/24")),
            "srv",
            &srv,
            Some(&format!("{SERVER}/24")),
        );
    for name in extra {
        builder = builder.veth(
            "cli",
            &format!("{cli}{name}"),
            None,
            "srv",
            &format!("{srv}{name}"),
            None,
        );
    }
    let lab = builder.build().expect("build lab");
    for ns in ["cli", "srv"] {
        sysctl(&lab, ns, "net.ipv6.conf.all.disable_ipv6=1");
        sysctl(&lab, ns, "net.ipv6.conf.default.disable_ipv6=1");
    }
    ip(
        &lab,
        "cli",
        &["addr", "add", &format!("{DENIED}/24"), "dev", &cli],
    );
    ip(
        &lab,
        "srv",
        &["route", "add", "198.19.42.0/24", "dev", &srv],
    );
    let srv_mac = lab.mac("srv", &srv).unwrap();
    lab.static_neighbor("cli", &cli, SERVER.parse().unwrap(), srv_mac)
        .unwrap();
    let dir = tempfile::Builder::new()
        .prefix(&format!("xkt-{tag}-"))
        .tempdir()
        .unwrap();
    Host { lab, srv, dir }
}

impl Host {
    fn xdpkit(&self, args: &[&str]) -> Output {
        xdpkit_in(&self.lab, "srv", args)
    }

    /// Writes `text` to `name` in the test's directory; returns its path.
    fn file(&self, name: &str, text: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    /// `xdpkit apply -f FILE EXTRA...`, which must succeed; returns stdout.
    fn apply(&self, file: &str, extra: &[&str]) -> String {
        let mut args = vec!["apply", "-f", file];
        args.extend(extra);
        ok(&self.xdpkit(&args))
    }

    /// `xdpkit apply --json -f FILE EXTRA...`, parsed.
    fn apply_json(&self, file: &str, extra: &[&str]) -> Value {
        let mut args = vec!["apply", "--json", "-f", file];
        args.extend(extra);
        serde_json::from_str(&ok(&self.xdpkit(&args))).unwrap()
    }

    /// `xdpkit status --dev SRV --json --interval 0` as text.
    fn status_text(&self) -> String {
        ok(&self.xdpkit(&["status", "--dev", &self.srv, "--json", "--interval", "0"]))
    }

    /// The server interface's status, parsed.
    fn status(&self) -> Value {
        let all: Value = serde_json::from_str(&self.status_text()).unwrap();
        all[0].clone()
    }

    fn rules_text(&self) -> String {
        ok(&self.xdpkit(&["rule", "list", "--dev", &self.srv, "--json"]))
    }

    /// `(id, rule, packets)` of every firewall rule.
    fn rules(&self) -> Vec<(u64, String, u64)> {
        let rows: Value = serde_json::from_str(&self.rules_text()).unwrap();
        rows.as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["id"].as_u64().unwrap(),
                    r["rule"].as_str().unwrap().to_string(),
                    r["packets"].as_u64().unwrap(),
                )
            })
            .collect()
    }

    /// Sends `count` datagrams from `src` (one of the client's addresses).
    fn send_from(&self, src: &str, dst: SocketAddr, count: u32) -> u32 {
        let src: IpAddr = src.parse().unwrap();
        self.lab
            .run_in("cli", move || {
                let socket = UdpSocket::bind(SocketAddr::new(src, 0)).unwrap();
                let deadline = Instant::now() + Duration::from_secs(10);
                let payload = [0xa5u8; 32];
                let mut sent = 0;
                while sent < count && Instant::now() < deadline {
                    match socket.send_to(&payload, dst) {
                        Ok(_) => sent += 1,
                        Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                            std::thread::sleep(Duration::from_micros(200))
                        }
                        Err(e) => panic!("send from {src} to {dst}: {e}"),
                    }
                    if sent % 64 == 0 {
                        std::thread::sleep(Duration::from_micros(50));
                    }
                }
                sent
            })
            .unwrap()
    }
}

/// Sends `count` datagrams from `src` in batches small enough for the
/// sink's socket buffer, counting each batch; returns how many arrived.
fn deliver(host: &Host, sink: &UdpSink, src: &str, dst: SocketAddr, count: u32) -> u32 {
    const BATCH: u32 = 50;
    let mut arrived = 0;
    let mut left = count;
    while left > 0 {
        let n = left.min(BATCH);
        assert_eq!(host.send_from(src, dst, n), n, "send from {src}");
        arrived += sink.count(n, QUIET, MAX_WAIT);
        left -= n;
    }
    arrived
}

/// The packets of `action` in stage `stage` of a status (0 if absent).
fn stage_count(status: &Value, stage: &str, action: &str) -> u64 {
    status["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage"] == stage)
        .and_then(|s| {
            s["actions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["action"] == action)
        })
        .map(|a| a["packets"].as_u64().unwrap())
        .unwrap_or(0)
}

fn stage_names(status: &Value) -> Vec<String> {
    status["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap().to_string())
        .collect()
}

fn generation(status: &Value) -> u64 {
    status["generation"].as_u64().unwrap()
}

fn ids(rules: &[(u64, String, u64)]) -> Vec<(u64, String)> {
    rules.iter().map(|(id, r, _)| (*id, r.clone())).collect()
}

/// `[interfaces.IF]` with `stages` and the firewall table with `firewall`
/// lines (policies, `rules = [...]`).
fn config(iface: &str, mode: Option<&str>, stages: &[&str], firewall: &str) -> String {
    let list: Vec<String> = stages.iter().map(|s| format!("\"{s}\"")).collect();
    let mut text = format!("[interfaces.{iface}]\n");
    if let Some(mode) = mode {
        text.push_str(&format!("mode = \"{mode}\"\n"));
    }
    text.push_str(&format!("stages = [{}]\n", list.join(", ")));
    if stages.contains(&"firewall") {
        text.push_str(&format!("\n[interfaces.{iface}.firewall]\n{firewall}"));
    }
    text
}

/// `rules = [...]`, one a line.
fn rules_line(rules: &[&str]) -> String {
    let items: Vec<String> = rules.iter().map(|r| format!("  \"{r}\",\n")).collect();
    format!("rules = [\n{}]\n", items.concat())
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn apply_config_traffic_flows_as_declared() {
    if !require_root("apply_config_traffic_flows_as_declared") {
        return;
    }
    const N: u32 = 200;
    let host = host_lab("ap1", &[]);
    let dst: SocketAddr = format!("{SERVER}:9000").parse().unwrap();
    let sink = host.lab.udp_sink("srv", dst).unwrap();
    // The lab delivers both sources before any XDP program is there.
    host.send_from(CLIENT, dst, 1);
    host.send_from(DENIED, dst, 1);
    assert_eq!(sink.count(2, QUIET, MAX_WAIT), 2, "lab routes both sources");

    let file = host.file(
        "host.toml",
        &config(
            &host.srv,
            Some("native"),
            &["firewall", "pass"],
            &format!("default = \"drop\"\n{}", rules_line(&[ALLOW])),
        ),
    );
    let out = host.apply(&file, &[]);
    assert!(
        out.contains(&format!(
            "{}: new (native, stages: firewall, pass)",
            host.srv
        )),
        "{out}"
    );
    assert!(out.contains(&format!("applied {}", host.srv)), "{out}");

    assert_eq!(
        deliver(&host, &sink, CLIENT, dst, N),
        N,
        "allowed source lost"
    );
    assert_eq!(host.send_from(DENIED, dst, N), N);
    assert_eq!(sink.count(N, QUIET, MAX_WAIT), 0, "denied source arrived");

    let st = host.status();
    assert_eq!(stage_names(&st), ["firewall", "pass"], "{st}");
    assert_eq!(st["stages"][0]["index"], 0);
    assert_eq!(st["stages"][1]["index"], 1);
    let n = u64::from(N);
    assert_eq!(stage_count(&st, "firewall", "next"), n, "{st}");
    assert_eq!(stage_count(&st, "firewall", "drop"), n, "{st}");
    assert_eq!(stage_count(&st, "firewall", "pass"), 0, "{st}");
    assert_eq!(stage_count(&st, "pass", "pass"), n, "{st}");
    assert_eq!(stage_count(&st, "pass", "drop"), 0, "{st}");
    assert_eq!(st["mode"], "native", "{st}");
    assert_eq!(generation(&st), 1, "{st}");
    let rules = host.rules();
    assert_eq!(rules, [(1, ALLOW.to_string(), n)], "the allow rule matched");
}

#[test]
fn apply_twice_changes_nothing_and_says_so() {
    if !require_root("apply_twice_changes_nothing_and_says_so") {
        return;
    }
    let host = host_lab("ap2", &[]);
    host.file(
        "block.rules",
        "# blocklist\ndeny src 198.19.0.0/16\ndeny src 198.18.99.0/24 proto udp dport 53\n",
    );
    let file = host.file(
        "host.toml",
        &config(
            &host.srv,
            None,
            &["count", "firewall", "pass"],
            &format!(
                "default = \"drop\"\n{}rules-file = \"block.rules\"\n",
                rules_line(&[ALLOW])
            ),
        ),
    );
    host.apply(&file, &[]);
    let st = host.status();
    assert_eq!(generation(&st), 1, "{st}");
    let rules = host.rules();
    assert_eq!(rules.len(), 3, "{rules:?}");

    let again = host.apply(&file, &[]);
    assert_eq!(
        again.trim_end(),
        format!("{file}: no changes: the running state already matches"),
        "second apply"
    );
    let json = host.apply_json(&file, &[]);
    assert_eq!(json["applied"], serde_json::json!([]), "{json}");
    assert_eq!(json["diff"]["interfaces"], serde_json::json!([]), "{json}");
    assert_eq!(json["upgraded"], serde_json::json!([]), "{json}");
    assert_eq!(json["dry_run"], false, "{json}");
    let after = host.status();
    assert_eq!(generation(&after), 1, "generation moved: {after}");
    assert_eq!(after["prog_id"], st["prog_id"]);
    assert_eq!(ids(&host.rules()), ids(&rules), "rule ids changed");
}

#[test]
fn export_round_trips() {
    if !require_root("export_round_trips") {
        return;
    }
    let host = host_lab("ap3", &[]);
    host.file(
        "block.rules",
        "deny src 198.19.0.0/16\n# comment\ndeny src 198.18.77.0/24 proto tcp dport 22\n",
    );
    let file = host.file(
        "host.toml",
        &config(
            &host.srv,
            Some("native"),
            &["firewall", "count", "pass"],
            &format!(
                "default = \"drop\"\nfragments = \"l3\"\nmalformed = \"pass\"\n{}rules-file = \"block.rules\"\n",
                rules_line(&[ALLOW, "deny src 198.18.42.99 prio 5"])
            ),
        ),
    );
    host.apply(&file, &[]);

    let exported = ok(&host.xdpkit(&["export"]));
    let parsed = xdpkit::config::HostConfig::parse("export", &exported, Path::new("."))
        .unwrap_or_else(|e| panic!("export does not parse: {e}\n{exported}"));
    let names: Vec<&String> = parsed.interfaces.keys().collect();
    assert_eq!(names, [&host.srv], "{exported}");
    let iface = &parsed.interfaces[&host.srv];
    assert_eq!(iface.mode, "native", "{exported}");
    let stages: Vec<&str> = iface.stages.iter().map(|s| s.program.as_str()).collect();
    assert_eq!(stages, ["firewall", "count", "pass"], "{exported}");
    let fw = &iface.stages[0].settings;
    assert_eq!(fw["default"].as_str(), Some("drop"), "{exported}");
    assert_eq!(fw["fragments"].as_str(), Some("l3"), "{exported}");
    assert_eq!(fw["malformed"].as_str(), Some("pass"), "{exported}");
    let rules: Vec<&str> = fw["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert_eq!(
        rules,
        [
            ALLOW,
            "deny src 198.18.42.99/32 prio 5",
            "deny src 198.19.0.0/16 prio 100",
            "deny src 198.18.77.0/24 proto tcp dport 22 prio 100",
        ],
        "inline rules then the file's, canonical: {exported}"
    );
    assert!(!exported.contains("rules-file"), "{exported}");

    // export | apply --dry-run -f -
    let pipe = |extra: &[&str]| {
        let mut child = host
            .lab
            .command("srv", XDPKIT)
            .args(["apply", "--dry-run", "-f", "-"])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(exported.as_bytes())
            .unwrap();
        ok(&child.wait_with_output().unwrap())
    };
    let out = pipe(&[]);
    assert_eq!(
        out,
        "<stdin>: no changes: the running state already matches\ndry run: nothing changed\n"
    );
    let json: Value = serde_json::from_str(&pipe(&["--json"])).unwrap();
    assert_eq!(json["diff"]["interfaces"], serde_json::json!([]), "{json}");
    assert_eq!(json["applied"], serde_json::json!([]), "{json}");
    assert_eq!(json["dry_run"], true, "{json}");
    // The same through a file, and a second export is the same text.
    let file2 = host.file("exported.toml", &exported);
    let out = host.apply(&file2, &[]);
    assert!(out.contains("no changes"), "{out}");
    assert_eq!(ok(&host.xdpkit(&["export"])), exported, "export is stable");
    assert_eq!(generation(&host.status()), 1);
}

#[test]
fn bad_file_changes_nothing() {
    if !require_root("bad_file_changes_nothing") {
        return;
    }
    let host = host_lab("ap4", &[]);
    let srv = host.srv.clone();
    let good = host.file(
        "host.toml",
        &config(
            &srv,
            None,
            &["firewall", "pass"],
            &format!(
                "default = \"drop\"\n{}",
                rules_line(&[ALLOW, "deny src 198.19.0.0/16"])
            ),
        ),
    );
    host.apply(&good, &[]);
    // Some traffic, so counters are not all zero.
    let dst: SocketAddr = format!("{SERVER}:9000").parse().unwrap();
    let sink = host.lab.udp_sink("srv", dst).unwrap();
    assert_eq!(deliver(&host, &sink, CLIENT, dst, 20), 20);
    host.send_from(DENIED, dst, 20);
    assert_eq!(sink.count(20, QUIET, MAX_WAIT), 0);
    let status_before = host.status_text();
    let rules_before = host.rules_text();
    let export_before = ok(&host.xdpkit(&["export"]));

    // Each file would also change the good interface (a new stage, a new
    // rule), so a partial apply would show.
    let head = format!("[interfaces.{srv}]\nstages = [\"count\", \"firewall\", \"pass\"]\n\n[interfaces.{srv}.firewall]\n");
    host.file(
        "bad.rules",
        "# blocklist\ndeny src 198.19.0.0/16\ndeny src 198.18.0.300\n",
    );
    let bad_rules_path = host.dir.path().join("bad.rules").display().to_string();
    let cases: Vec<(&str, String, Vec<String>)> = vec![
        (
            "syntax",
            format!("{head}default = drop\nrules = [\"{ALLOW}\"]\n"),
            vec![":5: ".to_string(), "TOML syntax error".to_string()],
        ),
        (
            "unknown-key",
            format!("{head}default = \"drop\"\ndefualt = \"pass\"\n"),
            vec![
                format!(":6: interfaces.{srv}.firewall.defualt: unknown key 'defualt'"),
                "expected default, fragments".to_string(),
            ],
        ),
        (
            "bad-rule",
            format!(
                "{head}default = \"drop\"\nrules = [\n  \"{ALLOW}\",\n  \"deny src 198.19.0.1/16\",\n]\n"
            ),
            vec![
                format!(":8: interfaces.{srv}.firewall.rules[1]: "),
                "did you mean 198.19.0.0/16?".to_string(),
            ],
        ),
        (
            "bad-rules-file",
            format!(
                "{head}default = \"drop\"\nrules = [\"{ALLOW}\"]\nrules-file = \"bad.rules\"\n"
            ),
            vec![
                format!(":7: interfaces.{srv}.firewall.rules-file: "),
                format!("{bad_rules_path}:3: bad src '198.18.0.300'"),
            ],
        ),
        (
            "unknown-interface",
            // Sorts after the good interface: its checks passed first.
            format!(
                "{head}default = \"drop\"\nrules = [\"{ALLOW}\"]\n\n[interfaces.{srv}zz]\nstages = [\"pass\"]\n"
            ),
            vec![format!("interface '{srv}zz' does not exist")],
        ),
    ];
    for (name, text, wants) in &cases {
        let file = host.file(&format!("{name}.toml"), text);
        for extra in [&[][..], &["--dry-run"][..], &["--prune"][..]] {
            let mut args = vec!["apply", "-f", &file];
            args.extend(extra);
            let out = host.xdpkit(&args);
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(2), "{name} {extra:?}: {err}");
            assert!(out.stdout.is_empty(), "{name}: stdout {:?}", out.stdout);
            assert_eq!(err.trim_end().lines().count(), 1, "{name}: {err}");
            assert!(err.starts_with("xdpkit: error: "), "{name}: {err}");
            if *name != "unknown-interface" {
                assert!(
                    err.contains(&format!("{file}:")),
                    "{name}: file not named: {err}"
                );
            }
            for want in wants {
                assert!(err.contains(want.as_str()), "{name}: {want:?} not in {err}");
            }
            assert_eq!(host.status_text(), status_before, "{name} changed status");
            assert_eq!(host.rules_text(), rules_before, "{name} changed rules");
        }
    }
    assert_eq!(ok(&host.xdpkit(&["export"])), export_before);
    let st = host.status();
    assert_eq!(generation(&st), 1, "{st}");
    assert!(
        !Path::new("/sys/fs/bpf/xdpkit")
            .join(&host.srv)
            .join("count")
            .exists(),
        "a count stage was left behind"
    );
}

/// The configurations `changed_config_under_traffic_loses_no_allowed_packet`
/// cycles through: every one allows the stream's source under default drop.
fn changing_configs(iface: &str) -> Vec<String> {
    let deny = "deny src 198.19.42.0/24";
    let deny2 = "deny src 198.18.42.0/24 proto tcp dport 22 prio 1";
    let fw = |policies: &str, rules: &[&str]| {
        format!("default = \"drop\"\n{policies}{}", rules_line(rules))
    };
    vec![
        config(
            iface,
            None,
            &["count", "firewall", "pass"],
            &fw("", &[ALLOW]),
        ),
        config(
            iface,
            None,
            &["count", "firewall", "pass"],
            &fw("", &[ALLOW, deny, deny2]),
        ),
        config(
            iface,
            None,
            &["firewall", "count", "pass"],
            &fw("", &[ALLOW, deny]),
        ),
        config(
            iface,
            None,
            &["firewall", "count", "pass"],
            &fw(
                "fragments = \"deny\"\nmalformed = \"pass\"\n",
                &[deny, ALLOW],
            ),
        ),
        config(
            iface,
            None,
            &["count", "firewall"],
            &fw("fragments = \"l3\"\n", &[ALLOW, deny2]),
        ),
        config(iface, None, &["firewall", "pass"], &fw("", &[ALLOW, deny])),
    ]
}

#[test]
fn changed_config_under_traffic_loses_no_allowed_packet() {
    if !require_root("changed_config_under_traffic_loses_no_allowed_packet") {
        return;
    }
    // At least this many datagrams, over at least 2.5 s, and until the
    // applies are done (bounded: about 50 s).
    const MIN_BATCHES: u32 = 25;
    const MAX_BATCHES: u32 = 450;
    const BATCH: u32 = 100;
    let host = host_lab("ap5", &[]);
    let dst: SocketAddr = format!("{SERVER}:9100").parse().unwrap();
    let sink = host.lab.udp_sink("srv", dst).unwrap();
    let base = host.file(
        "host.toml",
        &config(
            &host.srv,
            None,
            &["firewall", "pass"],
            &format!("default = \"drop\"\n{}", rules_line(&[ALLOW])),
        ),
    );
    host.apply(&base, &[]);
    let files: Vec<String> = changing_configs(&host.srv)
        .iter()
        .enumerate()
        .map(|(i, text)| host.file(&format!("c{i}.toml"), text))
        .collect();
    let gen_before = generation(&host.status());

    let done = AtomicBool::new(false);
    let (sent, received, applies) = std::thread::scope(|scope| {
        let counter =
            scope.spawn(|| sink.count(u32::MAX, Duration::from_secs(2), Duration::from_secs(90)));
        let sender = scope.spawn(|| {
            let mut sent = 0;
            // Paced: about 1,000 datagrams a second.
            for batch in 0..MAX_BATCHES {
                if batch >= MIN_BATCHES && done.load(Ordering::Relaxed) {
                    break;
                }
                sent += host.send_from(CLIENT, dst, BATCH);
                std::thread::sleep(Duration::from_millis(100));
            }
            sent
        });
        // Two rounds through every configuration.
        let mut applies = 0;
        for file in files.iter().chain(&files) {
            if sender.is_finished() {
                break;
            }
            host.apply(file, &[]);
            applies += 1;
        }
        done.store(true, Ordering::Relaxed);
        let sent = sender.join().unwrap();
        (sent, counter.join().unwrap(), applies)
    });
    println!("{applies} applies while {sent} allowed datagrams flowed");
    assert_eq!(
        applies,
        2 * files.len(),
        "the stream ended before the applies"
    );
    assert!(sent >= MIN_BATCHES * BATCH);
    assert_eq!(received, sent, "allowed datagrams lost across apply");
    let st = host.status();
    assert_eq!(
        generation(&st),
        gen_before + 2 * files.len() as u64,
        "one switch per changed file: {st}"
    );

    // The last configuration denies 198.19.42.0/24: still dropped.
    assert_eq!(host.send_from(DENIED, dst, 100), 100);
    assert_eq!(sink.count(100, QUIET, MAX_WAIT), 0, "denied source arrived");
    let after = host.status();
    assert_eq!(
        stage_count(&after, "firewall", "drop") - stage_count(&st, "firewall", "drop"),
        100,
        "{after}"
    );
    // And the allowed source still arrives.
    assert_eq!(deliver(&host, &sink, CLIENT, dst, 100), 100);
}

#[test]
fn stage_replacement_under_traffic_keeps_counters() {
    if !require_root("stage_replacement_under_traffic_keeps_counters") {
        return;
    }
    const BATCH: u32 = 50;
    const MAX_BATCHES: u32 = 400;
    let host = host_lab("ap6", &[]);
    let dst: SocketAddr = format!("{SERVER}:9200").parse().unwrap();
    let sink = host.lab.udp_sink("srv", dst).unwrap();
    let fw = format!(
        "default = \"drop\"\n{}",
        rules_line(&[ALLOW, "deny src 198.19.42.0/24"])
    );
    let files: Vec<String> = [
        &["firewall", "pass"][..],
        &["firewall", "count"][..],
        &["count", "firewall"][..],
    ]
    .iter()
    .enumerate()
    .map(|(i, stages)| host.file(&format!("s{i}.toml"), &config(&host.srv, None, stages, &fw)))
    .collect();
    host.apply(&files[0], &[]);
    let ids_before = ids(&host.rules());
    assert_eq!(ids_before.len(), 2);

    /// What must only grow: the firewall's next, pass (its allowed frames
    /// when it is the last stage) and drop; rule 1 and 2 packets.
    fn sample(host: &Host) -> (u64, [u64; 5]) {
        let st = host.status();
        let rules = host.rules();
        let rule = |id: u64| rules.iter().find(|r| r.0 == id).map_or(0, |r| r.2);
        (
            generation(&st),
            [
                stage_count(&st, "firewall", "next"),
                stage_count(&st, "firewall", "pass"),
                stage_count(&st, "firewall", "drop"),
                rule(1),
                rule(2),
            ],
        )
    }

    let done = AtomicBool::new(false);
    let (allowed, denied, received, samples) = std::thread::scope(|scope| {
        let counter =
            scope.spawn(|| sink.count(u32::MAX, Duration::from_secs(2), Duration::from_secs(90)));
        let sender = scope.spawn(|| {
            let (mut allowed, mut denied) = (0, 0);
            for batch in 0..MAX_BATCHES {
                if batch >= 20 && done.load(Ordering::Relaxed) {
                    break;
                }
                allowed += host.send_from(CLIENT, dst, BATCH);
                denied += host.send_from(DENIED, dst, BATCH);
                std::thread::sleep(Duration::from_millis(50));
            }
            (allowed, denied)
        });
        let wait_some = || std::thread::sleep(Duration::from_millis(300));
        wait_some();
        let mut samples = vec![sample(&host)];
        for file in &files[1..] {
            host.apply(file, &[]);
            samples.push(sample(&host));
            wait_some();
            samples.push(sample(&host));
        }
        done.store(true, Ordering::Relaxed);
        let (allowed, denied) = sender.join().unwrap();
        (allowed, denied, counter.join().unwrap(), samples)
    });
    println!("samples (generation, [fw next, fw pass, fw drop, rule 1, rule 2]): {samples:?}");
    assert!(
        allowed < MAX_BATCHES * BATCH,
        "the stream ended before the applies"
    );
    for pair in samples.windows(2) {
        let ((g0, c0), (g1, c1)) = (pair[0], pair[1]);
        assert!(g1 == g0 || g1 == g0 + 1, "generation jumped: {samples:?}");
        for (a, b) in c0.iter().zip(c1) {
            assert!(b >= *a, "a counter went down: {samples:?}");
        }
    }
    let first = samples[0];
    let last = *samples.last().unwrap();
    assert_eq!(
        last.0,
        first.0 + 2,
        "one generation per change: {samples:?}"
    );
    // next while the firewall hands on, pass once it is last: each grew.
    for (a, b) in first.1.iter().zip(last.1) {
        assert!(b > *a, "a counter did not grow under traffic: {samples:?}");
    }
    assert_eq!(received, allowed, "allowed datagrams lost");
    // Nothing was ever reset: the totals are every datagram sent.
    let (_, [next, pass, drop, rule1, rule2]) = sample(&host);
    let (allowed, denied) = (u64::from(allowed), u64::from(denied));
    assert_eq!(
        [next + pass, drop, rule1, rule2],
        [allowed, denied, allowed, denied],
        "{samples:?}"
    );
    assert_eq!(ids(&host.rules()), ids_before, "rule ids changed");
    let st = host.status();
    assert_eq!(stage_names(&st), ["count", "firewall"]);
    assert!(
        !Path::new("/sys/fs/bpf/xdpkit")
            .join(&host.srv)
            .join("pass")
            .exists(),
        "the removed stage's pins are left"
    );
}

#[test]
fn dry_run_lists_the_difference() {
    if !require_root("dry_run_lists_the_difference") {
        return;
    }
    let host = host_lab("ap7", &[]);
    let srv = host.srv.clone();
    let running = host.file(
        "host.toml",
        &config(
            &srv,
            None,
            &["firewall", "pass"],
            &format!(
                "default = \"drop\"\n{}",
                rules_line(&[ALLOW, "deny src 198.19.0.0/16"])
            ),
        ),
    );
    host.apply(&running, &[]);
    let status_before = host.status_text();
    let rules_before = host.rules_text();

    let changed = host.file(
        "changed.toml",
        &config(
            &srv,
            None,
            &["count", "firewall"],
            &format!(
                "default = \"drop\"\nfragments = \"deny\"\n{}",
                rules_line(&[ALLOW, "deny src 198.19.42.0/24"])
            ),
        ),
    );
    let out = host.apply(&changed, &["--dry-run"]);
    assert_eq!(
        out,
        format!(
            "{srv}: changed
  stages: firewall, pass -> count, firewall
    + stage count
    - stage pass
    ~ stage firewall: 1 -> 2
  firewall:
    fragments: allow -> deny
    + rule: deny src 198.19.42.0/24 prio 100
    - rule: deny src 198.19.0.0/16 prio 100
dry run: nothing changed
"
        )
    );
    let json = host.apply_json(&changed, &["--dry-run"]);
    assert_eq!(json["dry_run"], true, "{json}");
    assert_eq!(json["applied"], serde_json::json!([srv]), "{json}");
    assert_eq!(json["diff"]["rules_added"], 1, "{json}");
    assert_eq!(json["diff"]["rules_removed"], 1, "{json}");
    let iface = &json["diff"]["interfaces"][0];
    assert_eq!(iface["change"], "changed", "{json}");
    assert_eq!(iface["stages_added"][0]["program"], "count", "{json}");
    assert_eq!(
        iface["stages_removed"],
        serde_json::json!(["pass"]),
        "{json}"
    );
    assert_eq!(iface["stages_moved"][0]["program"], "firewall", "{json}");

    assert_eq!(host.status_text(), status_before, "dry run changed status");
    assert_eq!(host.rules_text(), rules_before, "dry run changed rules");
    assert_eq!(generation(&host.status()), 1);

    // Applied for real, the same file then says no changes.
    let out = host.apply(&changed, &[]);
    assert!(out.contains(&format!("applied {srv}")), "{out}");
    assert_eq!(stage_names(&host.status()), ["count", "firewall"]);
    let out = host.apply(&changed, &["--dry-run"]);
    assert_eq!(
        out,
        format!(
            "{changed}: no changes: the running state already matches\ndry run: nothing changed\n"
        )
    );
}

#[test]
fn prune_detaches_unnamed_interfaces() {
    if !require_root("prune_detaches_unnamed_interfaces") {
        return;
    }
    let host = host_lab("ap8", &["2"]);
    let srv = host.srv.clone();
    let other = format!("{srv}2");
    ok(&host.xdpkit(&["attach", "count", "--dev", &other]));
    let file = host.file(
        "host.toml",
        &config(&srv, None, &["firewall", "pass"], &rules_line(&[ALLOW])),
    );
    let status_of = |dev: &str| host.xdpkit(&["status", "--dev", dev, "--json", "--interval", "0"]);

    let out = host.apply(&file, &[]);
    assert!(
        out.contains(&format!(
            "{other}: managed by xdpkit but not in {file}: left running (--prune detaches it)"
        )),
        "{out}"
    );
    assert!(out.contains(&format!("applied {srv}\n")), "{out}");
    assert!(!out.contains("detached"), "{out}");
    ok(&status_of(&other));
    let json = host.apply_json(&file, &[]);
    assert_eq!(json["unmanaged"], serde_json::json!([other]), "{json}");
    assert_eq!(json["detached"], serde_json::json!([]), "{json}");
    ok(&status_of(&other));

    // A dry run with --prune names it and leaves it.
    let json = host.apply_json(&file, &["--prune", "--dry-run"]);
    assert_eq!(json["detached"], serde_json::json!([other]), "{json}");
    let out = host.apply(&file, &["--prune", "--dry-run"]);
    assert!(
        out.contains(&format!("{other}: not in the file (running: count)")),
        "{out}"
    );
    ok(&status_of(&other));

    let out = host.apply(&file, &["--prune"]);
    assert!(out.contains(&format!("detached {other}")), "{out}");
    let gone = status_of(&other);
    assert_eq!(gone.status.code(), Some(2), "{}", stderr(&gone));
    assert!(
        !Path::new("/sys/fs/bpf/xdpkit").join(&other).exists(),
        "pins of the pruned interface are left"
    );
    let link: Value = serde_json::from_slice(
        &host
            .lab
            .command("srv", "ip")
            .args(["-j", "link", "show", "dev", &other])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(link[0]["xdp"].is_null(), "XDP still on {other}: {link}");
    // The named interface is untouched, and nothing is left to prune.
    let st = host.status();
    assert_eq!(generation(&st), 1, "{st}");
    let out = host.apply(&file, &["--prune"]);
    assert!(out.contains("no changes"), "{out}");
}

/// The program ids of the running chain's stages, from `status`.
fn stage_prog_ids(host: &Host) -> Vec<u32> {
    host.status()["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["prog_id"].as_u64().unwrap() as u32)
        .collect()
}

/// Sets the build fingerprint in the pinned chain state to another value,
/// as if another build of xdpkit had loaded the stages.
fn pretend_other_build(srv: &str) -> u64 {
    use aya::maps::{Array, Map, MapData};
    use xdpkit_common::chain::ChainState;
    let path = Path::new("/sys/fs/bpf/xdpkit").join(srv).join("root");
    let mut root =
        Array::<MapData, ChainState>::try_from(Map::Array(MapData::from_pin(&path).unwrap()))
            .unwrap();
    let mut state = root.get(&0, 0).unwrap();
    assert!(state.len > 0);
    let build = state.build;
    state.build = build ^ 0x5a5a_5a5a_5a5a_5a5a;
    root.set(0, state, 0).unwrap();
    build
}

fn read_build(srv: &str) -> u64 {
    use aya::maps::{Array, Map, MapData};
    use xdpkit_common::chain::ChainState;
    let path: PathBuf = Path::new("/sys/fs/bpf/xdpkit").join(srv).join("root");
    let root =
        Array::<MapData, ChainState>::try_from(Map::Array(MapData::from_pin(&path).unwrap()))
            .unwrap();
    root.get(&0, 0).unwrap().build
}

#[test]
fn upgrade_reloads_stages_and_counters_continue() {
    if !require_root("upgrade_reloads_stages_and_counters_continue") {
        return;
    }
    const N: u32 = 150;
    let n = u64::from(N);
    let host = host_lab("ap9", &[]);
    let srv = host.srv.clone();
    let dst: SocketAddr = format!("{SERVER}:9300").parse().unwrap();
    let sink = host.lab.udp_sink("srv", dst).unwrap();
    let file = host.file(
        "host.toml",
        &config(
            &srv,
            None,
            &["count", "firewall", "pass"],
            &format!(
                "default = \"drop\"\n{}",
                rules_line(&[ALLOW, "deny src 198.19.42.0/24"])
            ),
        ),
    );
    host.apply(&file, &[]);
    assert_eq!(deliver(&host, &sink, CLIENT, dst, N), N);
    host.send_from(DENIED, dst, N);
    assert_eq!(sink.count(N, QUIET, MAX_WAIT), 0);
    let before = host.status();
    let rules_before = host.rules();
    let progs_before = stage_prog_ids(&host);
    assert_eq!(progs_before.len(), 3);
    assert_eq!(stage_count(&before, "count", "next"), 2 * n, "{before}");
    assert_eq!(stage_count(&before, "firewall", "next"), n, "{before}");
    assert_eq!(stage_count(&before, "firewall", "drop"), n, "{before}");

    // Same file, same build: nothing to do.
    assert!(host.apply(&file, &[]).contains("no changes"));
    let ours = pretend_other_build(&srv);
    let json = host.apply_json(&file, &["--dry-run"]);
    assert_eq!(json["upgraded"], serde_json::json!([srv]), "{json}");
    assert_eq!(json["applied"], serde_json::json!([srv]), "{json}");
    let out = host.apply(&file, &["--dry-run"]);
    assert_eq!(
        out,
        format!("{srv}: stages loaded by another xdpkit build: would be replaced in place\ndry run: nothing changed\n")
    );
    assert_eq!(stage_prog_ids(&host), progs_before, "a dry run reloaded");
    assert_eq!(generation(&host.status()), generation(&before));

    let out = host.apply(&file, &[]);
    assert!(
        out.contains(&format!(
            "{srv}: stages loaded by another xdpkit build: replaced in place"
        )),
        "{out}"
    );
    assert!(out.contains(&format!("applied {srv}")), "{out}");
    assert!(!out.contains("no changes"), "an upgrade is a change: {out}");
    assert_eq!(read_build(&srv), ours, "the state names this build again");
    let after = host.status();
    assert_eq!(generation(&after), generation(&before) + 1, "{after}");
    assert_eq!(stage_names(&after), ["count", "firewall", "pass"]);
    let progs_after = stage_prog_ids(&host);
    assert_eq!(progs_after.len(), 3);
    for (old, new) in progs_before.iter().zip(&progs_after) {
        assert_ne!(
            old, new,
            "a stage was not reloaded: {progs_before:?} {progs_after:?}"
        );
    }
    // Counters and rules carried over.
    for (stage, action) in [
        ("count", "next"),
        ("firewall", "next"),
        ("firewall", "drop"),
        ("pass", "pass"),
    ] {
        assert_eq!(
            stage_count(&after, stage, action),
            stage_count(&before, stage, action),
            "{stage} {action} reset: {after}"
        );
    }
    assert_eq!(
        host.rules(),
        rules_before,
        "rules or their counters changed"
    );
    // And continue.
    assert_eq!(deliver(&host, &sink, CLIENT, dst, N), N);
    host.send_from(DENIED, dst, N);
    assert_eq!(sink.count(N, QUIET, MAX_WAIT), 0);
    let end = host.status();
    assert_eq!(stage_count(&end, "count", "next"), 4 * n, "{end}");
    assert_eq!(stage_count(&end, "firewall", "next"), 2 * n, "{end}");
    assert_eq!(stage_count(&end, "firewall", "drop"), 2 * n, "{end}");
    assert_eq!(stage_count(&end, "pass", "pass"), 2 * n, "{end}");
    let rules = host.rules();
    assert_eq!(ids(&rules), ids(&rules_before), "rule ids changed");
    assert_eq!(
        rules.iter().map(|r| r.2).collect::<Vec<_>>(),
        [2 * n, 2 * n],
        "rule counters did not continue"
    );
    // Upgraded once: the next apply is a no-op again.
    assert!(host.apply(&file, &[]).contains("no changes"));
    assert_eq!(generation(&host.status()), generation(&after));
}

/// Every interface is prepared before any switches: when the kernel side of
/// the second interface fails (here: a pinned map of another layout where
/// its firewall's config goes), the first, though its change was fine,
/// keeps running what it ran, and nothing is left of the failed stage.
#[test]
fn failure_on_one_interface_changes_no_interface() {
    if !require_root("failure_on_one_interface_changes_no_interface") {
        return;
    }
    let host = host_lab("ap9", &["2"]);
    let srv = host.srv.clone();
    let other = format!("{srv}2");
    ok(&host.xdpkit(&["attach", "pass", "--dev", &srv]));
    ok(&host.xdpkit(&["attach", "pass", "--dev", &other]));
    let before = host.status_text();
    // Another build's firewall state on the second interface: FW_CONFIG
    // with a value of another size.
    let stale = Path::new("/sys/fs/bpf/xdpkit")
        .join(&other)
        .join("firewall");
    std::fs::create_dir_all(&stale).unwrap();
    let made = std::process::Command::new("bpftool")
        .args(["map", "create"])
        .arg(stale.join("fw_config"))
        .args([
            "type",
            "array",
            "key",
            "4",
            "value",
            "8",
            "entries",
            "1",
            "name",
            "fw_config",
        ])
        .status()
        .unwrap();
    assert!(made.success(), "bpftool map create");
    let text = format!(
        "{}\n{}",
        config(&srv, None, &["count", "pass"], ""),
        config(&other, None, &["firewall", "pass"], &rules_line(&[ALLOW]))
    );
    let file = host.file("host.toml", &text);
    let out = host.xdpkit(&["apply", "-f", &file]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("made by another xdpkit version"),
        "{}",
        stderr(&out)
    );
    assert_eq!(host.status_text(), before, "the first interface changed");
    let st = host.status();
    assert_eq!(stage_names(&st), ["pass"], "{st}");
    assert_eq!(generation(&st), 1, "{st}");
    assert!(
        !Path::new("/sys/fs/bpf/xdpkit")
            .join(&srv)
            .join("count")
            .exists(),
        "the first interface's new stage left state"
    );
    // Without the stale pin the same file applies.
    std::fs::remove_dir_all(&stale).unwrap();
    let out = host.apply(&file, &[]);
    assert!(out.contains(&format!("applied {srv}, {other}")), "{out}");
    assert_eq!(stage_names(&host.status()), ["count", "pass"]);
}

/// The firewall's `max-rules` as `xdpkit export` reports it.
fn exported_max_rules(host: &Host) -> i64 {
    let text = ok(&host.xdpkit(&["export"]));
    let parsed = xdpkit::config::HostConfig::parse("export", &text, Path::new("."))
        .unwrap_or_else(|e| panic!("export does not parse: {e}\n{text}"));
    let stage = parsed.interfaces[&host.srv]
        .stages
        .iter()
        .find(|s| s.program == "firewall")
        .unwrap();
    stage.settings["max-rules"].as_integer().unwrap()
}

#[test]
fn rules_past_the_capacity_grow_the_firewall_and_apply_stays_idempotent() {
    if !require_root("rules_past_the_capacity_grow_the_firewall_and_apply_stays_idempotent") {
        return;
    }
    let host = host_lab("amx", &[]);
    let small = host.file(
        "small.toml",
        &config(
            &host.srv,
            None,
            &["firewall", "pass"],
            &format!("max-rules = 100\n{}", rules_line(&[ALLOW])),
        ),
    );
    host.apply(&small, &[]);
    assert_eq!(exported_max_rules(&host), 1023);
    let kept = host.rules();

    // 1,500 more rules: ids past 1,023, so the apply grows the firewall
    // (its own reinstall) before it installs the new chain.
    let many: String = (0..1500)
        .map(|i| format!("deny src 198.19.{}.{}\n", i / 250, 1 + i % 250))
        .collect();
    host.file("many.rules", &many);
    let big = host.file(
        "big.toml",
        &config(
            &host.srv,
            None,
            &["firewall", "pass"],
            &format!(
                "max-rules = 100\n{}rules-file = \"many.rules\"\n",
                rules_line(&[ALLOW])
            ),
        ),
    );
    host.apply(&big, &[]);
    assert_eq!(exported_max_rules(&host), 2047);
    let rules = host.rules();
    assert_eq!(rules.len(), 1501);
    assert!(rules.contains(&kept[0]), "the kept rule keeps its id");
    // The grown firewall meets the file's max-rules (and an export's).
    let again = host.apply(&big, &[]);
    assert_eq!(
        again.trim_end(),
        format!("{big}: no changes: the running state already matches")
    );
    let exported = host.file("exported.toml", &ok(&host.xdpkit(&["export"])));
    let again = host.apply(&exported, &[]);
    assert!(again.contains("no changes"), "{again}");
    // A larger max-rules is a change, and grows it.
    let larger = host.file(
        "larger.toml",
        &config(
            &host.srv,
            None,
            &["firewall", "pass"],
            &format!(
                "max-rules = 5000\n{}rules-file = \"many.rules\"\n",
                rules_line(&[ALLOW])
            ),
        ),
    );
    host.apply(&larger, &[]);
    assert_eq!(exported_max_rules(&host), 8191);
    assert_eq!(ids(&host.rules()), ids(&rules), "rule ids changed");
}
