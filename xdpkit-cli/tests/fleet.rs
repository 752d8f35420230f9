//! The fleet through a real etcd: three hosts (network namespaces, each
//! with an interface of the same name and its own xdpkit state root), an
//! etcd in a fourth namespace they reach over their own links, an agent
//! per host, and frames sent into each host's interface. One push reaches
//! all three; etcd away leaves the last configuration filtering; a host cut
//! off during a push catches up when it is back; a bad revision is
//! reported and not applied; a restarted agent keeps the counters.

mod common;

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use xdpkit_lab::{
    etcd::require_etcd,
    fleet::{firewall_layer, FleetLab, HOSTS},
    lab::require_root,
};

use common::XDPKIT;

fn config(denied: &[&str]) -> String {
    let rules: Vec<String> = denied.iter().map(|n| format!("deny src {n}")).collect();
    firewall_layer("pass", &rules, "")
}

/// [`FleetLab::send`], checked.
fn send(lab: &FleetLab, i: usize, src: [u8; 4], n: usize) {
    lab.send(i, Ipv4Addr::from(src), n).unwrap();
}

fn dropped(lab: &FleetLab, host: &str) -> u64 {
    lab.dropped(host).unwrap()
}

fn push(lab: &FleetLab, file: &std::path::Path) -> String {
    lab.push(file).unwrap().id
}

fn wait_for(lab: &FleetLab, hosts: &[&str], id: &str, outcome: &str, max: Duration) -> Duration {
    lab.wait_for(hosts, id, outcome, max).unwrap()
}

fn statuses(lab: &FleetLab) -> Vec<serde_json::Value> {
    lab.statuses().unwrap()
}

#[test]
fn hosts_follow_pushes_through_etcd_and_survive_its_faults() {
    if !require_root("hosts_follow_pushes_through_etcd_and_survive_its_faults")
        || !require_etcd("hosts_follow_pushes_through_etcd_and_survive_its_faults")
    {
        return;
    }
    let mut lab = FleetLab::new("xkfl", 210, std::path::Path::new(XDPKIT)).expect("fleet lab");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("edge.toml");
    // Every agent up (its status written) before the first push.
    lab.start_agents(Duration::from_secs(20))
        .expect("agents did not report");

    // 1. One push reaches all three; the frames it denies are dropped.
    std::fs::write(&file, config(&["198.18.220.0/24"])).unwrap();
    let v1 = push(&lab, &file);
    // The time is reported, not asserted: the first push attaches the
    // firewall on three hosts at once, and a debug build on a loaded
    // two-core machine took 2.6 s (1.7 s in release). The 2 s / 1 s
    // targets are measured by `cargo xtask bench fleet`.
    let took = wait_for(&lab, &HOSTS, &v1, "applied", Duration::from_secs(10));
    eprintln!("push v1 applied on 3 hosts in {took:?}");
    for (i, host) in HOSTS.iter().enumerate() {
        send(&lab, i, [198, 18, 220, 5], 100);
        send(&lab, i, [198, 18, 221, 5], 50);
        assert_eq!(dropped(&lab, host), 100, "{host}");
    }

    // 2. etcd stopped: every host still filters with what it runs.
    lab.etcd().stop();
    for (i, host) in HOSTS.iter().enumerate() {
        send(&lab, i, [198, 18, 220, 5], 100);
        assert_eq!(dropped(&lab, host), 200, "{host} with etcd away");
    }
    lab.etcd().start_again().unwrap();

    // 3. h3 cut off from the store during a push: h1 and h2 apply it, h3
    // keeps v1 (still filtering) and catches up when its link is back.
    lab.set_store_link("h3", false).unwrap();
    std::fs::write(&file, config(&["198.18.220.0/24", "198.18.221.0/24"])).unwrap();
    let v2 = push(&lab, &file);
    wait_for(&lab, &["h1", "h2"], &v2, "ok", Duration::from_secs(15));
    send(&lab, 2, [198, 18, 221, 5], 10);
    assert_eq!(dropped(&lab, "h3"), 200, "h3 still runs v1");
    lab.set_store_link("h3", true).unwrap();
    wait_for(&lab, &["h3"], &v2, "ok", Duration::from_secs(30));
    send(&lab, 2, [198, 18, 221, 5], 10);
    assert_eq!(dropped(&lab, "h3"), 210, "h3 runs v2");

    // 4. A bad revision (not a manifest xdpkit wrote): reported, not
    // applied; v2 keeps running.
    lab.etcd()
        .etcdctl(&["put", "/xdpkit/groups/edge", "not a manifest"])
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
    lab.stop_agent(0);
    lab.start_agent(0).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    wait_for(&lab, &["h1"], &v2, "unchanged", Duration::from_secs(10));
    assert_eq!(
        dropped(&lab, "h1"),
        before,
        "counters kept over the restart"
    );

    // Parts no layer and no agent names are gone: only v2's remain (the
    // bad revision named none, v1 was replaced everywhere).
    let blobs = lab
        .etcd()
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
        let a = s.spawn(|| lab.push(&fa).unwrap());
        let b = s.spawn(|| lab.push(&fb).unwrap());
        (a.join().unwrap(), b.join().unwrap())
    });
    let winner = if a.revision > b.revision {
        &a.id
    } else {
        &b.id
    };
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
    lab.stop_agent(2);
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
}
