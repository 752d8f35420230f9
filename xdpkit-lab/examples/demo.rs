//! `cargo xtask demo`: a DDoS against a server behind xdpkit's firewall.
//!
//! A client, an attacker and a server in their own network namespaces,
//! joined by a router. The server's interface is set up with `xdpkit apply`
//! from a host configuration file: the firewall stage (three named rules
//! inline and a 100,000-prefix blocklist in a rules file next to it), then
//! the pass stage. The attacker floods from a denied range and scrapes from
//! a rate-limited source while the client keeps pinging and talking to a
//! UDP and a TCP echo service. Every second a row shows what each stage did
//! and how the client fares. Midway through the attack the file changes
//! (the scraper is denied instead of limited) and is applied again, dry run
//! first: the client keeps its answers and the counters of the rules that
//! stay keep counting. A summary ends it; an empty file applied with
//! `--prune` detaches everything, and the lab is removed.

use std::{
    collections::HashMap,
    io::{ErrorKind, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::Path,
    sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    time::{Duration, Instant},
};

use xdpkit::{
    apply::{self, ApplyOptions, ApplyReport},
    firewall::{live::FirewallView, live::RuleRow, Rule},
};
use xdpkit_lab::lab::Lab;

const SERVER_IF: &str = "xkdm-s";
const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 42, 2);
const UDP_PORT: u16 = 7000;
const TCP_PORT: u16 = 7001;
/// Flood sources: 198.19.41.1 ..= .16, inside the denied 198.19.0.0/16.
const FLOOD_SOURCES: u8 = 16;
/// The scraper sends this many datagrams a second; its rule allows 1,000.
const SCRAPE_PPS: u64 = 5_000;
const CALM: u64 = 3;
const ATTACK: u64 = 10;
const AFTER: u64 = 3;
/// The configuration changes after this many seconds of the attack.
const CHANGE_AFTER: u64 = 5;
const BLOCKLIST: u32 = 100_000;

const FLOOD_RULE: &str = "deny src 198.19.0.0/16";
const SCRAPER_LIMIT: &str = "rate-limit 1000 src 198.18.43.0/24";
const SCRAPER_DENY: &str = "deny src 198.18.43.0/24";

/// The host configuration, with `scraper` as the third rule.
fn host_toml(scraper: &str) -> String {
    let why = if scraper == SCRAPER_LIMIT {
        "a noisy scraper: 1,000 packets a second per source"
    } else {
        "the scraper, now denied"
    };
    let rule = |text: &str, why: &str| format!("    {:<38} # {why}\n", format!("\"{text}\","));
    format!(
        "\
# The demo's server: the firewall, then the pass stage (to the stack).
[interfaces.{SERVER_IF}]
mode = \"native\"
stages = [\"firewall\", \"pass\"]

[interfaces.{SERVER_IF}.firewall]
default = \"pass\"
rules = [
{}{}{}]
{:<42} # {} deny rules, one a line (not shown)
",
        rule(
            "allow src 198.18.41.0/24 prio 10",
            "the customer network always gets through"
        ),
        rule(FLOOD_RULE, "the attack range"),
        rule(scraper, why),
        "rules-file = \"ddos.rules\"",
        thousands(BLOCKLIST.into())
    )
}

#[derive(Default)]
struct Counters {
    udp_sent: AtomicU64,
    udp_ok: AtomicU64,
    tcp_sent: AtomicU64,
    tcp_ok: AtomicU64,
    ping_sent: AtomicU64,
    ping_ok: AtomicU64,
    flood_sent: AtomicU64,
    scrape_sent: AtomicU64,
    /// Datagrams the UDP echo service got from the attack range.
    flood_delivered: AtomicU64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if !xdpkit_lab::lab::is_root() {
        return Err("the demo builds network namespaces and attaches XDP: run it as root".into());
    }
    let started = Instant::now();
    let dir = tempfile::Builder::new().prefix("xkdemo.").tempdir()?;
    let host = dir.path().join("host.toml");
    std::fs::write(dir.path().join("ddos.rules"), blocklist(BLOCKLIST))?;
    std::fs::write(&host, host_toml(SCRAPER_LIMIT))?;
    let lab = build_lab()?;
    println!("lab: client 198.18.41.1, attacker 198.19.41.1-16 and 198.18.43.1, router, server {SERVER} ({SERVER_IF})");

    println!(
        "$ cat host.toml                    # in {}, next to ddos.rules",
        dir.path().display()
    );
    print!("{}", host_toml(SCRAPER_LIMIT));
    let (report, took, rules) = apply_file(&lab, &host, ApplyOptions::default())?;
    println!(
        "$ xdpkit apply -f host.toml        # {} rules (3 inline + the blocklist) in {took:.2} s",
        thousands(rules as u64)
    );
    print!("{}", show(&report));

    let counters = Counters::default();
    let stop = AtomicBool::new(false);
    let attacking = AtomicBool::new(false);
    let result = std::thread::scope(|scope| {
        let (c, s, a, lab) = (&counters, &stop, &attacking, &lab);
        scope.spawn(move || lab.run_in("server", || udp_echo(c, s)));
        scope.spawn(move || lab.run_in("server", || tcp_echo(s)));
        // Give the services a moment to bind before clients talk to them.
        std::thread::sleep(Duration::from_millis(200));
        scope.spawn(move || lab.run_in("client", || udp_client(c, s)));
        scope.spawn(move || lab.run_in("client", || tcp_client(c, s)));
        scope.spawn(move || pinger(lab, c, s));
        scope.spawn(move || lab.run_in("attacker", || flood(c, s, a)));
        scope.spawn(move || lab.run_in("attacker", || scrape(c, s, a)));
        let result = watch(lab, c, a, &host);
        stop.store(true, Relaxed);
        result
    });
    let summary = result?;

    let empty = dir.path().join("empty.toml");
    std::fs::write(&empty, "# No interfaces.\n")?;
    let (report, took, _) = apply_file(
        &lab,
        &empty,
        ApplyOptions {
            prune: true,
            ..ApplyOptions::default()
        },
    )?;
    println!("$ xdpkit apply --prune -f empty.toml   # {took:.2} s");
    print!("{}", show(&report));
    drop(lab);
    drop(dir);

    let ratio =
        |ok: &AtomicU64, sent: &AtomicU64| format!("{}/{}", ok.load(Relaxed), sent.load(Relaxed));
    println!();
    println!(
        "summary after {:.1} s (lab removed):",
        started.elapsed().as_secs_f64()
    );
    println!(
        "  attacker: flooded {} datagrams from 198.19.41.1-{FLOOD_SOURCES}; XDP dropped {} by rule {}; {} reached the service",
        counters.flood_sent.load(Relaxed),
        summary.flood_dropped,
        summary.flood_rule,
        counters.flood_delivered.load(Relaxed)
    );
    println!(
        "  scraper:  sent {} from 198.18.43.1; rule {} passed {} and limited {} until the change, then rule {} dropped {}",
        counters.scrape_sent.load(Relaxed),
        summary.limit_rule,
        summary.scrape_passed,
        summary.scrape_limited,
        summary.deny_rule,
        summary.scrape_denied
    );
    println!(
        "  chain:    the firewall stage handed {} frames on; the pass stage handed {} to the stack",
        summary.fw_next, summary.passed
    );
    println!(
        "  client:   ping {}, UDP echo {}, TCP echo {} answered",
        ratio(&counters.ping_ok, &counters.ping_sent),
        ratio(&counters.udp_ok, &counters.udp_sent),
        ratio(&counters.tcp_ok, &counters.tcp_sent)
    );
    let served = |ok: &AtomicU64, sent: &AtomicU64| {
        ok.load(Relaxed) as f64 >= 0.95 * sent.load(Relaxed) as f64 && sent.load(Relaxed) > 0
    };
    // The two stages' counters are read one after the other: a few frames
    // may be between them.
    let chained = summary.passed > 0 && summary.fw_next.abs_diff(summary.passed) <= 100;
    let mut failed = Vec::new();
    if counters.flood_delivered.load(Relaxed) != 0 || summary.flood_dropped == 0 {
        failed.push("the flood got through or nothing was dropped");
    }
    if summary.scrape_limited == 0 || summary.scrape_denied == 0 {
        failed.push("the scraper was not limited, or not denied after the change");
    }
    if !summary.counters_kept {
        failed.push("counters were reset by the change");
    }
    if !chained {
        failed.push("the pass stage did not get what the firewall handed on");
    }
    if !served(&counters.udp_ok, &counters.udp_sent)
        || !served(&counters.tcp_ok, &counters.tcp_sent)
        || !served(&counters.ping_ok, &counters.ping_sent)
    {
        failed.push("the client was not served");
    }
    if !failed.is_empty() {
        return Err(format!("unexpected: {}", failed.join("; ")).into());
    }
    Ok(())
}

/// `xdpkit apply [--dry-run] [--prune] -f path` in the server's namespace:
/// the report, the seconds it took (reading the file included) and how
/// many firewall rules the file holds.
fn apply_file(
    lab: &Lab,
    path: &Path,
    opts: ApplyOptions,
) -> Result<(ApplyReport, f64, usize), Box<dyn std::error::Error>> {
    Ok(lab.run_in("server", || -> xdpkit::Result<_> {
        let started = Instant::now();
        let desired = apply::read(path)?;
        let report = apply::apply(&desired, opts)?;
        let rules = desired
            .interfaces
            .values()
            .flat_map(|i| &i.stages)
            .filter_map(|s| s.settings.get("rules")?.as_array().map(Vec::len))
            .sum();
        Ok((report, started.elapsed().as_secs_f64(), rules))
    })??)
}

/// What `xdpkit apply` prints for `report`.
fn show(report: &ApplyReport) -> String {
    let mut out = report.diff.render();
    if report.dry_run {
        out += "dry run: nothing changed\n";
    } else if !report.is_noop() {
        let mut done = Vec::new();
        if !report.applied.is_empty() {
            done.push(format!("applied {}", report.applied.join(", ")));
        }
        if !report.detached.is_empty() {
            done.push(format!("detached {}", report.detached.join(", ")));
        }
        out += &done.join("; ");
        out.push('\n');
    }
    out
}

/// `999980` as `999,980`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn build_lab() -> Result<Lab, Box<dyn std::error::Error>> {
    let lab = Lab::builder("xkdemo")
        .namespace("client")
        .namespace("attacker")
        .namespace("router")
        .namespace("server")
        .veth(
            "client",
            "xkdm-c",
            Some("198.18.41.1/24"),
            "router",
            "xkdm-rc",
            Some("198.18.41.254/24"),
        )
        .veth(
            "attacker",
            "xkdm-a",
            Some("198.19.41.1/24"),
            "router",
            "xkdm-ra",
            Some("198.19.41.254/24"),
        )
        .veth(
            "router",
            "xkdm-rs",
            Some("198.18.42.1/24"),
            "server",
            SERVER_IF,
            Some("198.18.42.2/24"),
        )
        .build()?;
    let mut steps: Vec<(&str, Vec<String>)> = vec![
        ("router", args("sysctl -qw net.ipv4.ip_forward=1")),
        ("router", args("ip addr add 198.18.43.254/24 dev xkdm-ra")),
        ("attacker", args("ip addr add 198.18.43.1/24 dev xkdm-a")),
        ("client", args("ip route add default via 198.18.41.254")),
        ("attacker", args("ip route add default via 198.19.41.254")),
        ("server", args("ip route add default via 198.18.42.1")),
    ];
    for i in 2..=FLOOD_SOURCES {
        steps.push((
            "attacker",
            args(&format!("ip addr add 198.19.41.{i}/24 dev xkdm-a")),
        ));
    }
    for (ns, argv) in steps {
        let status = lab.command(ns, &argv[0]).args(&argv[1..]).status()?;
        if !status.success() {
            return Err(format!("in {ns}: {} failed", argv.join(" ")).into());
        }
    }
    Ok(lab)
}

fn args(line: &str) -> Vec<String> {
    line.split_whitespace().map(str::to_string).collect()
}

/// `n` deny rules: /32s in the attack range and /64s in 2001:db8::/32.
fn blocklist(n: u32) -> String {
    let mut out = String::from("# Blocklist.\n");
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if i % 2 == 0 {
            out += &format!("deny src 198.19.{}.{}\n", (x >> 8) as u8, x as u8);
        } else {
            out += &format!(
                "deny src 2001:db8:{:x}:{:x}::/64\n",
                (x >> 16) as u16,
                x as u16
            );
        }
    }
    out
}

struct Summary {
    flood_rule: u32,
    flood_dropped: u64,
    limit_rule: u32,
    scrape_passed: u64,
    scrape_limited: u64,
    deny_rule: u32,
    scrape_denied: u64,
    /// Frames the firewall stage handed on, and the pass stage passed.
    fw_next: u64,
    passed: u64,
    /// Whether the change kept every counter of what stayed.
    counters_kept: bool,
}

/// Snapshot of what the server's stages counted.
struct Sample {
    /// The firewall stage's drops, rate-limited frames and frames handed on.
    drop: u64,
    limited: u64,
    next: u64,
    /// The pass stage's passes.
    pass: u64,
    /// Every rule with its counters.
    rules: Vec<RuleRow>,
}

impl Sample {
    fn rule(&self, id: u32) -> Option<&RuleRow> {
        self.rules.iter().find(|r| r.id == id)
    }

    fn hits(&self, id: u32) -> u64 {
        self.rule(id).map_or(0, |r| r.packets)
    }

    /// The id of `rule` (in any form it parses from).
    fn id_of(&self, rule: &str) -> Result<u32, Box<dyn std::error::Error>> {
        let canonical = rule.parse::<Rule>()?.to_string();
        self.rules
            .iter()
            .find(|r| r.rule == canonical)
            .map(|r| r.id)
            .ok_or_else(|| format!("no rule '{canonical}' on {SERVER_IF}").into())
    }
}

fn sample(lab: &Lab) -> Result<Sample, Box<dyn std::error::Error>> {
    Ok(lab.run_in("server", || -> Result<Sample, xdpkit::Error> {
        // list() reads the counters last, after decoding every rule; the
        // stage counters right after it keep both in one window.
        let rules = FirewallView::open(SERVER_IF)?.list()?;
        let status = xdpkit::status(Some(SERVER_IF), Duration::ZERO)?;
        let s = &status[0];
        let count = |stage: &str, action: &str| {
            s.stages
                .iter()
                .filter(|st| st.stage == stage)
                .flat_map(|st| &st.actions)
                .find(|a| a.action == action)
                .map_or(0, |a| a.packets)
        };
        let limited = s
            .firewall
            .as_ref()
            .and_then(|o| o.iter().find(|o| o.outcome == "rate_limited"))
            .map_or(0, |o| o.packets);
        Ok(Sample {
            drop: count("firewall", "drop"),
            limited,
            next: count("firewall", "next"),
            pass: count("pass", "pass"),
            rules,
        })
    })??)
}

/// Prints one row a second through the three phases, changing the
/// configuration midway through the attack; returns the totals.
fn watch(
    lab: &Lab,
    c: &Counters,
    attacking: &AtomicBool,
    host: &Path,
) -> Result<Summary, Box<dyn std::error::Error>> {
    header();
    let first = sample(lab)?;
    let mut last = sample(lab)?;
    let flood_rule = first.id_of(FLOOD_RULE)?;
    let limit_rule = first.id_of(SCRAPER_LIMIT)?;
    let mut change = None;
    let client_now = || {
        [
            c.ping_ok.load(Relaxed),
            c.ping_sent.load(Relaxed),
            c.udp_ok.load(Relaxed),
            c.udp_sent.load(Relaxed),
            c.tcp_ok.load(Relaxed),
            c.tcp_sent.load(Relaxed),
        ]
    };
    let answered = |now: [u64; 6], then: [u64; 6]| -> Vec<String> {
        (0..3)
            .map(|i| {
                format!(
                    "{}/{}",
                    now[2 * i] - then[2 * i],
                    now[2 * i + 1] - then[2 * i + 1]
                )
            })
            .collect()
    };
    let mut client_last = client_now();
    let mut last_at = Instant::now();
    // Rows a second apart however long a sample takes (rates are over the
    // time between samples), unless a sample takes longer than that.
    let mut next_row = last_at;
    for sec in 1..=CALM + ATTACK + AFTER {
        let phase = if sec <= CALM {
            "calm"
        } else if sec <= CALM + ATTACK {
            "attack"
        } else {
            "after"
        };
        attacking.store(phase == "attack", Relaxed);
        next_row += Duration::from_secs(1);
        std::thread::sleep(next_row.saturating_duration_since(Instant::now()));
        next_row = next_row.max(Instant::now());
        let now = sample(lab)?;
        let secs = last_at.elapsed().as_secs_f64();
        last_at = Instant::now();
        let rate = |a: u64, b: u64| (a.saturating_sub(b) as f64 / secs).round() as u64;
        let client = client_now();
        let d = answered(client, client_last);
        client_last = client;
        // By id: the change removes one rule and adds another.
        let before: HashMap<u32, u64> = last.rules.iter().map(|r| (r.id, r.packets)).collect();
        let mut top: Vec<(u64, String)> = now
            .rules
            .iter()
            .filter_map(|r| {
                // A rule added since (a new id) counts from zero.
                let n = r
                    .packets
                    .saturating_sub(before.get(&r.id).copied().unwrap_or(0));
                (n > 0).then(|| (n, format!("#{} {}", r.id, r.rule)))
            })
            .collect();
        top.sort_by_key(|t| std::cmp::Reverse(t.0));
        let top: Vec<String> = top
            .iter()
            .take(2)
            .map(|(n, r)| format!("{r}: {}", si((*n as f64 / secs) as u64)))
            .collect();
        println!(
            "{sec:>3} {phase:<7} {:>10} {:>10} {:>10} {:>11} {:>6} {:>6} {:>6}  {}",
            si(rate(now.drop, last.drop)),
            si(rate(now.limited, last.limited)),
            si(rate(now.next, last.next)),
            si(rate(now.pass, last.pass)),
            d[0],
            d[1],
            d[2],
            top.join(", ")
        );
        last = now;
        if sec == CALM + CHANGE_AFTER {
            // The attack goes on; the rows pause while apply runs.
            let (before, after) = change_config(lab, host, flood_rule)?;
            let client = client_now();
            let d = answered(client, client_last);
            println!(
                "# meanwhile the client: ping {}, UDP echo {}, TCP echo {} answered",
                d[0], d[1], d[2]
            );
            client_last = client;
            change = Some((before, after));
            header();
            last = sample(lab)?;
            last_at = Instant::now();
            next_row = last_at;
        }
    }
    let (before, after) = change.ok_or("the configuration never changed")?;
    let deny_rule = after.id_of(SCRAPER_DENY)?;
    let limits = |s: &Sample| {
        s.rule(limit_rule)
            .and_then(|r| Some((r.passed?, r.limited?)))
            .unwrap_or((0, 0))
    };
    let (p1, l1) = limits(&first);
    let (p2, l2) = limits(&before);
    Ok(Summary {
        flood_rule,
        flood_dropped: last.hits(flood_rule) - first.hits(flood_rule),
        limit_rule,
        scrape_passed: p2 - p1,
        scrape_limited: l2 - l1,
        deny_rule,
        scrape_denied: last.hits(deny_rule),
        fw_next: last.next - first.next,
        passed: last.pass - first.pass,
        counters_kept: after.id_of(FLOOD_RULE)? == flood_rule
            && after.hits(flood_rule) >= before.hits(flood_rule)
            && last.hits(flood_rule) > after.hits(flood_rule)
            && after.drop >= before.drop
            && after.next >= before.next
            && after.pass >= before.pass,
    })
}

fn header() {
    println!();
    println!(
        "{:>11} {:-^32} {:>11}",
        "", " firewall stage ", "pass stage"
    );
    println!(
        "{:>3} {:<7} {:>10} {:>10} {:>10} {:>11} {:>6} {:>6} {:>6}  top rules (packets/s)",
        "sec", "phase", "drop/s", "limited/s", "next/s", "pass/s", "ping", "udp", "tcp"
    );
}

/// Rewrites host.toml: the scraper is denied instead of limited.
fn edit(host: &Path) -> std::io::Result<()> {
    let line = |rule: &str| {
        host_toml(rule)
            .lines()
            .find(|l| l.contains(rule))
            .unwrap_or_default()
            .to_string()
    };
    println!();
    println!("# edit host.toml during the attack: the scraper is denied instead of limited");
    println!("-{}", line(SCRAPER_LIMIT));
    println!("+{}", line(SCRAPER_DENY));
    std::fs::write(host, host_toml(SCRAPER_DENY))
}

/// The scraper is denied instead of limited: host.toml edited, then
/// `xdpkit apply --dry-run` and `xdpkit apply`. Returns samples from just
/// before and just after the apply.
fn change_config(
    lab: &Lab,
    host: &Path,
    flood_rule: u32,
) -> Result<(Sample, Sample), Box<dyn std::error::Error>> {
    edit(host)?;
    let dry_run = ApplyOptions {
        dry_run: true,
        ..ApplyOptions::default()
    };
    let (report, took, _) = apply_file(lab, host, dry_run)?;
    println!("$ xdpkit apply -f host.toml --dry-run   # {took:.2} s");
    print!("{}", show(&report));
    let before = sample(lab)?;
    let (report, took, _) = apply_file(lab, host, ApplyOptions::default())?;
    let after = sample(lab)?;
    println!("$ xdpkit apply -f host.toml             # {took:.2} s");
    print!("{}", show(&report));
    println!(
        "# kept, not reset: rule {flood_rule} counted {} drops before the apply, {} after; the pass stage {} then {}",
        thousands(before.hits(flood_rule)),
        thousands(after.hits(flood_rule)),
        thousands(before.pass),
        thousands(after.pass)
    );
    Ok((before, after))
}

fn si(n: u64) -> String {
    match n {
        0..=9_999 => n.to_string(),
        10_000..=9_999_999 => format!("{:.1}k", n as f64 / 1e3),
        _ => format!("{:.2}M", n as f64 / 1e6),
    }
}

fn udp_echo(c: &Counters, stop: &AtomicBool) -> std::io::Result<()> {
    let socket = UdpSocket::bind((SERVER, UDP_PORT))?;
    socket.set_read_timeout(Some(Duration::from_millis(50)))?;
    let mut buf = [0u8; 2048];
    while !stop.load(Relaxed) {
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => {
                if let SocketAddr::V4(a) = from {
                    if a.ip().octets()[..2] == [198, 19] {
                        c.flood_delivered.fetch_add(1, Relaxed);
                    }
                }
                let _ = socket.send_to(&buf[..n], from);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn tcp_echo(stop: &AtomicBool) -> std::io::Result<()> {
    let listener = TcpListener::bind((SERVER, TCP_PORT))?;
    listener.set_nonblocking(true)?;
    std::thread::scope(|scope| {
        while !stop.load(Relaxed) {
            match listener.accept() {
                Ok((mut conn, _)) => {
                    conn.set_nonblocking(false)?;
                    conn.set_read_timeout(Some(Duration::from_millis(100)))?;
                    scope.spawn(move || {
                        let mut buf = [0u8; 256];
                        while !stop.load(Relaxed) {
                            match conn.read(&mut buf) {
                                Ok(0) => return,
                                Ok(n) => {
                                    if conn.write_all(&buf[..n]).is_err() {
                                        return;
                                    }
                                }
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        ErrorKind::WouldBlock | ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => return,
                            }
                        }
                    });
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    })
}

/// Ten requests a second, each answered within 200 ms or counted lost.
fn udp_client(c: &Counters, stop: &AtomicBool) -> std::io::Result<()> {
    let socket = UdpSocket::bind("198.18.41.1:0")?;
    socket.connect((SERVER, UDP_PORT))?;
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut buf = [0u8; 64];
    let mut seq = 0u64;
    while !stop.load(Relaxed) {
        seq += 1;
        socket.send(&seq.to_be_bytes())?;
        c.udp_sent.fetch_add(1, Relaxed);
        let deadline = Instant::now() + Duration::from_millis(200);
        while Instant::now() < deadline {
            match socket.recv(&mut buf) {
                Ok(8) if buf[..8] == seq.to_be_bytes() => {
                    c.udp_ok.fetch_add(1, Relaxed);
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// One connection; ten round trips a second.
fn tcp_client(c: &Counters, stop: &AtomicBool) -> std::io::Result<()> {
    let mut conn = TcpStream::connect_timeout(&(SERVER, TCP_PORT).into(), Duration::from_secs(2))?;
    conn.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut seq = 0u64;
    while !stop.load(Relaxed) {
        seq += 1;
        c.tcp_sent.fetch_add(1, Relaxed);
        let mut back = [0u8; 8];
        if conn.write_all(&seq.to_be_bytes()).is_ok()
            && conn.read_exact(&mut back).is_ok()
            && back == seq.to_be_bytes()
        {
            c.tcp_ok.fetch_add(1, Relaxed);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// `ping -c 1 -W 1` five times a second.
fn pinger(lab: &Lab, c: &Counters, stop: &AtomicBool) {
    while !stop.load(Relaxed) {
        let ok = lab
            .command("client", "ping")
            .args(["-c", "1", "-W", "1", "-q", &SERVER.to_string()])
            .output()
            .is_ok_and(|o| o.status.success());
        c.ping_sent.fetch_add(1, Relaxed);
        if ok {
            c.ping_ok.fetch_add(1, Relaxed);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Full speed from 16 addresses of the denied range, while `attacking`.
fn flood(c: &Counters, stop: &AtomicBool, attacking: &AtomicBool) -> std::io::Result<()> {
    let sockets = (1..=FLOOD_SOURCES)
        .map(|i| UdpSocket::bind((Ipv4Addr::new(198, 19, 41, i), 0)))
        .collect::<std::io::Result<Vec<_>>>()?;
    for s in &sockets {
        s.set_nonblocking(true)?;
    }
    let payload = [0u8; 64];
    while !stop.load(Relaxed) {
        if !attacking.load(Relaxed) {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        for s in &sockets {
            for _ in 0..8 {
                if s.send_to(&payload, (SERVER, UDP_PORT)).is_ok() {
                    c.flood_sent.fetch_add(1, Relaxed);
                }
            }
        }
    }
    Ok(())
}

/// [`SCRAPE_PPS`] from 198.18.43.1, while `attacking`.
fn scrape(c: &Counters, stop: &AtomicBool, attacking: &AtomicBool) -> std::io::Result<()> {
    let socket = UdpSocket::bind("198.18.43.1:0")?;
    socket.set_nonblocking(true)?;
    let per_tick = SCRAPE_PPS / 100;
    while !stop.load(Relaxed) {
        if attacking.load(Relaxed) {
            for _ in 0..per_tick {
                if socket.send_to(b"GET /", (SERVER, UDP_PORT)).is_ok() {
                    c.scrape_sent.fetch_add(1, Relaxed);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}
