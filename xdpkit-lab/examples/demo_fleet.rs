//! `cargo xtask demo fleet`: three hosts following one configuration
//! through etcd.
//!
//! The fleet lab (`xdpkit_lab::fleet`, the same as the fleet test's): hosts
//! h1-h3 are network namespaces, each with an interface `fl-in` and an
//! `xdpkit agent` of its own; etcd runs in a fourth namespace that every
//! host reaches over its own link. One `xdpkit fleet push` of a file that
//! denies an attack range; a table shows each host's agent as it reads and
//! applies it (from `xdpkit fleet status`), then an attack from that range
//! is sent to all three hosts alongside ordinary traffic, and each host's
//! counters show it dropped everywhere. The agents stop, the interfaces are
//! detached and the lab is removed.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use xdpkit_lab::{
    etcd::require_etcd,
    fleet::{self, FleetLab, DEV, GROUP, HOSTS},
};

type DemoResult<T> = Result<T, Box<dyn std::error::Error>>;

const PREFIX: &str = "xkfd";
/// The links between the store and the hosts: 198.18.216.0/24.
const NET: u8 = 216;
/// The attack comes from 198.18.217.1-16, which the pushed file denies.
const ATTACK_RANGE: &str = "198.18.217.0/24";
const ATTACKERS: u8 = 16;
/// Ordinary traffic, which the firewall passes.
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 218, 1);
/// Attack frames per attacker, host and burst; bursts.
const PER_BURST: usize = 200;
const BURSTS: usize = 5;
const CLIENT_PER_BURST: usize = 20;

fn edge_toml() -> String {
    format!(
        "\
# The edge group's layer: every host's {DEV} runs the firewall.
[interfaces.{DEV}]
mode = \"native\"
stages = [\"firewall\"]

[interfaces.{DEV}.firewall]
default = \"pass\"
rules = [
    \"deny src {ATTACK_RANGE}\",    # the attack range
]
"
    )
}

/// One host's line of the convergence table, as `fleet status` reports it.
#[derive(Clone, PartialEq, Eq)]
struct Row {
    revision: String,
    layer: String,
    outcome: String,
    lag: String,
}

fn row(line: &serde_json::Value) -> Row {
    let st = &line["status"];
    if st.is_null() {
        return Row {
            revision: "-".into(),
            layer: "-".into(),
            outcome: "no agent".into(),
            lag: "-".into(),
        };
    }
    let behind = line["behind"].as_array().map_or(0, Vec::len);
    Row {
        revision: st["revision"].to_string(),
        layer: st["layers"][0]["id"]
            .as_str()
            .map_or("(none)".to_string(), |id| {
                id[..12.min(id.len())].to_string()
            }),
        outcome: st["outcome"].as_str().unwrap_or("?").to_string(),
        lag: if behind == 0 {
            "up to date".into()
        } else {
            format!("behind, {} revisions", line["lag"])
        },
    }
}

fn main() -> DemoResult<()> {
    if !xdpkit_lab::lab::is_root() {
        return Err("the demo builds network namespaces and attaches XDP: run it as root".into());
    }
    if !require_etcd("demo fleet") {
        return Err("the demo needs etcd: run `cargo xtask bootstrap`".into());
    }
    let started = Instant::now();
    let xdpkit = fleet::xdpkit_bin()?;
    let dir = tempfile::Builder::new().prefix("xkfleetdemo.").tempdir()?;
    let file = dir.path().join("edge.toml");
    std::fs::write(&file, edge_toml())?;

    let mut lab = FleetLab::new(PREFIX, NET, &xdpkit)?;
    println!(
        "lab: hosts {} (network namespaces, each with an interface {DEV}), etcd in namespace store \
         at 198.18.{NET}.1/.5/.9:2379 (one link per host)",
        HOSTS.join(", ")
    );
    for (i, host) in HOSTS.iter().enumerate() {
        println!(
            "[{host}] $ xdpkit agent --etcd http://198.18.{NET}.{}:2379 --host {host} --group {GROUP} &",
            4 * i + 1
        );
    }
    lab.start_agents(Duration::from_secs(20))?;
    println!("$ xdpkit fleet status");
    print!("{}", fleet_status(&lab)?);
    println!();
    println!("$ cat edge.toml");
    print!("{}", edge_toml());
    println!("$ xdpkit fleet push -f edge.toml --group {GROUP}");
    let push_started = Instant::now();
    let pushed = lab.push(&file)?;
    println!(
        "pushed: layer {} ({} bytes, {} compressed, {} part), revision {}, in {:.0} ms",
        &pushed.id[..12],
        pushed.bytes,
        pushed.compressed,
        pushed.parts,
        pushed.revision,
        push_started.elapsed().as_secs_f64() * 1e3
    );

    println!();
    println!(
        "the hosts converging (`xdpkit fleet status` every 100 ms; a row when a host changes):"
    );
    println!(
        "{:>8}  {:<4}  {:>8}  {:<12}  {:<9}  lag",
        "ms", "host", "revision", "layer", "outcome"
    );
    let mut shown: BTreeMap<String, Row> = BTreeMap::new();
    let deadline = push_started + Duration::from_secs(30);
    loop {
        let lines = lab.statuses()?;
        let ms = push_started.elapsed().as_secs_f64() * 1e3;
        for line in &lines {
            let host = line["host"].as_str().unwrap_or("?").to_string();
            let r = row(line);
            if shown.get(&host) != Some(&r) {
                println!(
                    "{ms:>8.0}  {host:<4}  {:>8}  {:<12}  {:<9}  {}",
                    r.revision, r.layer, r.outcome, r.lag
                );
                shown.insert(host, r);
            }
        }
        let done = HOSTS.iter().all(|h| {
            lines.iter().any(|l| {
                l["host"] == *h
                    && l["behind"].as_array().is_some_and(Vec::is_empty)
                    && (l["status"]["outcome"] == "applied"
                        || l["status"]["outcome"] == "unchanged")
                    && l["status"]["layers"][0]["id"] == pushed.id.as_str()
            })
        });
        if done {
            println!(
                "all {} hosts run layer {} {:.0} ms after the push began",
                HOSTS.len(),
                &pushed.id[..12],
                ms
            );
            break;
        }
        if Instant::now() > deadline {
            return Err("the hosts did not converge within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("$ xdpkit fleet status");
    print!("{}", fleet_status(&lab)?);

    println!();
    println!(
        "attack: {} frames a burst from 198.18.217.1-{ATTACKERS} ({ATTACK_RANGE}) into every host's {DEV}, \
         with {CLIENT_PER_BURST} from a client ({CLIENT}); {BURSTS} bursts \
         (passed also counts the link's own IPv6 neighbour discovery)",
        PER_BURST * ATTACKERS as usize
    );
    let before: Vec<BTreeMap<String, u64>> = HOSTS
        .iter()
        .map(|h| lab.counters(h))
        .collect::<Result<_, _>>()?;
    let delta = |now: &BTreeMap<String, u64>, i: usize, action: &str| {
        now.get(action).copied().unwrap_or(0) - before[i].get(action).copied().unwrap_or(0)
    };
    println!(
        "{:>5}  {}",
        "burst",
        HOSTS
            .iter()
            .map(|h| format!("{h}: dropped / attack sent, passed / client sent"))
            .collect::<Vec<_>>()
            .join("   ")
    );
    let (mut attack_sent, mut client_sent) = (0u64, 0u64);
    let mut last = Vec::new();
    for burst in 1..=BURSTS {
        for i in 0..HOSTS.len() {
            for a in 1..=ATTACKERS {
                lab.send(i, Ipv4Addr::new(198, 18, 217, a), PER_BURST)?;
            }
            lab.send(i, CLIENT, CLIENT_PER_BURST)?;
        }
        attack_sent += (PER_BURST * ATTACKERS as usize) as u64;
        client_sent += CLIENT_PER_BURST as u64;
        last = HOSTS
            .iter()
            .map(|h| lab.counters(h))
            .collect::<Result<Vec<_>, _>>()?;
        let cells: Vec<String> = (0..HOSTS.len())
            .map(|i| {
                format!(
                    "{:>6} / {:<6} {:>4} / {:<4}",
                    delta(&last[i], i, "drop"),
                    attack_sent,
                    delta(&last[i], i, "pass"),
                    client_sent
                )
            })
            .collect();
        println!("{burst:>5}  {}", cells.join("      "));
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut failed = Vec::new();
    for (i, host) in HOSTS.iter().enumerate() {
        let (dropped, passed) = (delta(&last[i], i, "drop"), delta(&last[i], i, "pass"));
        // The pass counter also counts the link's own frames (IPv6
        // neighbour discovery), so it may exceed what the client sent.
        if dropped != attack_sent || passed < client_sent {
            failed.push(format!(
                "{host}: dropped {dropped} of {attack_sent} attack frames, passed {passed} of {client_sent} client frames"
            ));
        }
    }
    drop(lab);
    drop(dir);
    println!();
    if failed.is_empty() {
        println!(
            "the attack was blocked on all {} hosts ({attack_sent} frames each, every one dropped in XDP; \
             the client's {client_sent} passed) by one push",
            HOSTS.len()
        );
    }
    println!(
        "agents stopped, interfaces detached, lab removed; {:.1} s in all",
        started.elapsed().as_secs_f64()
    );
    if !failed.is_empty() {
        return Err(failed.join("; ").into());
    }
    Ok(())
}

/// `xdpkit fleet status`, as an operator sees it.
fn fleet_status(lab: &FleetLab) -> DemoResult<String> {
    let out = lab.fleet(&["status"])?;
    if !out.status.success() {
        return Err(format!(
            "xdpkit fleet status: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(String::from_utf8(out.stdout)?)
}
