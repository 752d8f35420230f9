//! The fleet through a real etcd: three hosts (network namespaces, each
//! with an interface of the same name and its own xdpkit state root), an
//! etcd in a fourth namespace they reach over their own links, an agent
//! per host, and frames sent into each host's interface. One push reaches
//! all three; etcd away leaves the last configuration filtering; a host cut
//! off during a push catches up when it is back; a bad revision is
//! reported and not applied; a restarted agent keeps the counters.

mod common;

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use etherparse::PacketBuilder;
use serde_json::Value;
use xdpkit_lab::{
    etcd::{require_etcd, EtcdServer},
    lab::{require_root, Lab},
};

use common::{ok, XDPKIT};

const HOSTS: [&str; 3] = ["h1", "h2", "h3"];
/// Every host's traffic interface: the same name on each, as on real hosts.
const DEV: &str = "fl-in";

/// The store's address on host `i`'s link, and the host's.
fn link_addrs(i: usize) -> (String, String) {
    (
        format!("198.18.210.{}", 4 * i + 1),
        format!("198.18.210.{}", 4 * i + 2),
    )
}

fn pin_root(lab: &Lab, host: &str) -> String {
    format!("/sys/fs/bpf/xdpkit-{}", lab.ns_name(host))
}

/// `xdpkit ARGS` on `host`, with the host's own state root.
fn on_host(lab: &Lab, host: &str, args: &[&str]) -> Command {
    let mut cmd = lab.command(host, XDPKIT);
    cmd.env("XDPKIT_PIN_ROOT", pin_root(lab, host)).args(args);
    cmd
}

/// `xdpkit fleet ARGS` from the store's namespace.
fn fleet(lab: &Lab, args: &[&str]) -> std::process::Output {
    lab.command("store", XDPKIT)
        .arg("fleet")
        .args(args)
        .args(["--etcd", "http://127.0.0.1:2379"])
        .output()
        .expect("run xdpkit fleet")
}

fn statuses(lab: &Lab) -> Vec<Value> {
    let v: Value = serde_json::from_str(&ok(&fleet(lab, &["status", "--json"]))).unwrap();
    v.as_array().cloned().unwrap_or_default()
}

/// Waits (at most `max`) until every host's agent runs layer content `id`
/// with outcome `outcome` (`ok`: applied or unchanged, for an agent that
/// may have read the layer again in a new session since it applied it);
/// returns how long it took.
fn wait_for(lab: &Lab, hosts: &[&str], id: &str, outcome: &str, max: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let all = statuses(lab);
        let done = hosts.iter().all(|h| {
            all.iter().any(|s| {
                let got = &s["status"]["outcome"];
                let fits = if outcome == "ok" {
                    *got == "applied" || *got == "unchanged"
                } else {
                    *got == outcome
                };
                s["host"] == *h
                    && fits
                    && s["status"]["seen"]
                        .as_array()
                        .is_some_and(|l| l.iter().any(|l| l["id"] == id))
            })
        });
        if done {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < max,
            "hosts {hosts:?} not at {id} ({outcome}) after {max:?}: {all:#?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Agent {
    child: Child,
}

impl Agent {
    fn start(lab: &Lab, i: usize, state: &std::path::Path) -> Agent {
        let (store, _) = link_addrs(i);
        let host = HOSTS[i];
        let child = on_host(
            lab,
            host,
            &[
                "agent",
                "--etcd",
                &format!("http://{store}:2379"),
                "--host",
                host,
                "--group",
                "edge",
                "--status-ttl",
                "3",
                "--state-file",
                &state.join(format!("{host}.json")).display().to_string(),
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start agent");
        Agent { child }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn push(lab: &Lab, file: &std::path::Path) -> String {
    push_at(lab, file).0
}

/// [`push`], with the store's revision of the layer's new manifest.
fn push_at(lab: &Lab, file: &std::path::Path) -> (String, i64) {
    let out: Value = serde_json::from_str(&ok(&fleet(
        lab,
        &[
            "push",
            "-f",
            &file.display().to_string(),
            "--group",
            "edge",
            "--json",
        ],
    )))
    .unwrap();
    (
        out["manifest"]["id"].as_str().unwrap().to_string(),
        out["revision"].as_i64().unwrap(),
    )
}

fn config(denied: &[&str]) -> String {
    let rules: Vec<String> = denied.iter().map(|n| format!("\"deny src {n}\"")).collect();
    format!(
        "[interfaces.{DEV}]\nmode = \"native\"\nstages = [\"firewall\"]\n[interfaces.{DEV}.firewall]\nrules = [{}]\n",
        rules.join(", ")
    )
}

/// Frames from `src` into host `i`'s interface.
fn send(lab: &Lab, i: usize, src: [u8; 4], n: usize) {
    let mut frame = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(src, [198, 18, 230, 1], 64)
        .udp(1000, 2000)
        .write(&mut frame, &[0; 18])
        .unwrap();
    let sent = lab
        .send_frames("src", &format!("fl-src{i}"), &vec![frame; n])
        .unwrap();
    assert_eq!(sent as usize, n);
}

/// Frames host `host`'s firewall dropped so far.
fn dropped(lab: &Lab, host: &str) -> u64 {
    let out = on_host(lab, host, &["status", "--dev", DEV, "--json"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_str(&ok(&out)).unwrap();
    let iface = if v.is_array() { &v[0] } else { &v };
    iface["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["action"] == "drop")
        .map(|a| a["packets"].as_u64().unwrap())
        .sum()
}

#[test]
fn hosts_follow_pushes_through_etcd_and_survive_its_faults() {
    if !require_root("hosts_follow_pushes_through_etcd_and_survive_its_faults")
        || !require_etcd("hosts_follow_pushes_through_etcd_and_survive_its_faults")
    {
        return;
    }
    let mut builder = Lab::builder("xkfl").namespace("store").namespace("src");
    for (i, host) in HOSTS.iter().enumerate() {
        let (store, mine) = link_addrs(i);
        builder = builder
            .namespace(host)
            .veth(
                "store",
                &format!("fl-st{i}"),
                Some(&format!("{store}/30")),
                host,
                "fl-mgmt",
                Some(&format!("{mine}/30")),
            )
            .veth("src", &format!("fl-src{i}"), None, host, DEV, None);
    }
    let lab = builder.build().unwrap();
    let mut etcd = EtcdServer::start_in("fleet", &lab.ns_name("store"), "0.0.0.0".parse().unwrap())
        .expect("etcd");
    let state = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("edge.toml");

    let mut agents: Vec<Agent> = (0..3)
        .map(|i| Agent::start(&lab, i, state.path()))
        .collect();
    // Every agent up (its status written) before the first push.
    let start = Instant::now();
    while statuses(&lab)
        .iter()
        .filter(|s| !s["status"].is_null())
        .count()
        < 3
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "agents did not report"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // 1. One push reaches all three; the frames it denies are dropped.
    std::fs::write(&file, config(&["198.18.220.0/24"])).unwrap();
    let v1 = push(&lab, &file);
    let took = wait_for(&lab, &HOSTS, &v1, "applied", Duration::from_secs(10));
    eprintln!("push v1 applied on 3 hosts in {took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    for (i, host) in HOSTS.iter().enumerate() {
        send(&lab, i, [198, 18, 220, 5], 100);
        send(&lab, i, [198, 18, 221, 5], 50);
        assert_eq!(dropped(&lab, host), 100, "{host}");
    }

    // 2. etcd stopped: every host still filters with what it runs.
    etcd.stop();
    for (i, host) in HOSTS.iter().enumerate() {
        send(&lab, i, [198, 18, 220, 5], 100);
        assert_eq!(dropped(&lab, host), 200, "{host} with etcd away");
    }
    etcd.start_again().unwrap();

    // 3. h3 cut off from the store during a push: h1 and h2 apply it, h3
    // keeps v1 (still filtering) and catches up when its link is back.
    ok(&lab
        .command("h3", "ip")
        .args(["link", "set", "fl-mgmt", "down"])
        .output()
        .unwrap());
    std::fs::write(&file, config(&["198.18.220.0/24", "198.18.221.0/24"])).unwrap();
    let v2 = push(&lab, &file);
    wait_for(&lab, &["h1", "h2"], &v2, "ok", Duration::from_secs(15));
    send(&lab, 2, [198, 18, 221, 5], 10);
    assert_eq!(dropped(&lab, "h3"), 200, "h3 still runs v1");
    ok(&lab
        .command("h3", "ip")
        .args(["link", "set", "fl-mgmt", "up"])
        .output()
        .unwrap());
    wait_for(&lab, &["h3"], &v2, "ok", Duration::from_secs(30));
    send(&lab, 2, [198, 18, 221, 5], 10);
    assert_eq!(dropped(&lab, "h3"), 210, "h3 runs v2");

    // 4. A bad revision (not a manifest xdpkit wrote): reported, not
    // applied; v2 keeps running.
    etcd.etcdctl(&["put", "/xdpkit/groups/edge", "not a manifest"])
        .unwrap();
    let start = Instant::now();
    loop {
        let all = statuses(&lab);
        let errors = all
            .iter()
            .filter(|s| s["status"]["outcome"] == "error")
            .count();
        if errors == 3 {
            for s in &all {
                let e = s["status"]["error"].as_str().unwrap();
                assert!(e.contains("not a manifest"), "{e}");
            }
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{all:#?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    for (i, host) in HOSTS.iter().enumerate() {
        let before = dropped(&lab, host);
        send(&lab, i, [198, 18, 221, 5], 10);
        assert_eq!(dropped(&lab, host), before + 10, "{host} runs v2");
    }

    // 5. A restarted agent resumes: the configuration and its counters stay.
    std::fs::write(&file, config(&["198.18.220.0/24", "198.18.221.0/24"])).unwrap();
    let v3 = push(&lab, &file);
    assert_eq!(v3, v2, "the same content, the same id");
    wait_for(&lab, &HOSTS, &v2, "unchanged", Duration::from_secs(10));
    let before = dropped(&lab, "h1");
    drop(agents.remove(0));
    agents.insert(0, Agent::start(&lab, 0, state.path()));
    std::thread::sleep(Duration::from_millis(500));
    wait_for(&lab, &["h1"], &v2, "unchanged", Duration::from_secs(10));
    assert_eq!(
        dropped(&lab, "h1"),
        before,
        "counters kept over the restart"
    );

    // Parts no layer and no agent names are gone: only v2's remain (the
    // bad revision named none, v1 was replaced everywhere).
    let blobs = etcd
        .etcdctl(&["get", "/xdpkit/blobs/", "--prefix", "--keys-only"])
        .unwrap();
    let ids: std::collections::BTreeSet<&str> = blobs
        .lines()
        .filter_map(|k| k.strip_prefix("/xdpkit/blobs/"))
        .filter_map(|k| k.split('/').next())
        .collect();
    assert_eq!(
        ids.into_iter().collect::<Vec<_>>(),
        [v2.as_str()],
        "{blobs}"
    );

    // 6. Two pushes racing: the later revision wins everywhere.
    let (fa, fb) = (dir.path().join("a.toml"), dir.path().join("b.toml"));
    std::fs::write(&fa, config(&["198.18.222.0/24"])).unwrap();
    std::fs::write(&fb, config(&["198.18.223.0/24"])).unwrap();
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| push_at(&lab, &fa));
        let b = s.spawn(|| push_at(&lab, &fb));
        (a.join().unwrap(), b.join().unwrap())
    });
    let winner = if a.1 > b.1 { &a.0 } else { &b.0 };
    // An agent may read both pushes at once (the later is then all it
    // applies, and the event of the later one finds it "unchanged").
    let start = Instant::now();
    loop {
        let all = statuses(&lab);
        let done = all.len() == 3
            && all.iter().all(|s| {
                s["status"]["layers"][0]["id"] == winner.as_str()
                    && s["status"]["outcome"] != "error"
            });
        if done {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{all:#?}");
        std::thread::sleep(Duration::from_millis(50));
    }

    // 7. A dead agent's status goes with its lease (3 s).
    drop(agents.remove(2));
    let start = Instant::now();
    while statuses(&lab)
        .iter()
        .any(|s| s["host"] == "h3" && !s["status"].is_null())
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "h3's status stayed"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(agents);
    for host in HOSTS {
        let _ = on_host(&lab, host, &["detach", "--dev", DEV]).output();
    }
}
