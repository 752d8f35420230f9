//! The etcd harness against a real etcd: keys survive a stop and a start
//! again, a stopped server refuses, a dropped one leaves nothing behind,
//! and two servers run side by side.

use std::{net::TcpListener, path::Path, time::Instant};

use xdpkit_lab::etcd::{require_etcd, EtcdError, EtcdServer};

/// The key's mod revision, from `etcdctl get -w json`.
fn mod_revision(server: &EtcdServer, key: &str) -> u64 {
    let out = server.etcdctl(&["get", key, "-w", "json"]).unwrap();
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    json["kvs"][0]["mod_revision"]
        .as_u64()
        .unwrap_or_else(|| panic!("no mod_revision for {key} in {out}"))
}

fn value(server: &EtcdServer, key: &str) -> String {
    server
        .etcdctl(&["get", key, "--print-value-only"])
        .unwrap()
        .trim_end()
        .to_string()
}

#[test]
fn keys_and_revisions_survive_a_restart_and_drop_leaves_nothing() {
    if !require_etcd("keys_and_revisions_survive_a_restart_and_drop_leaves_nothing") {
        return;
    }
    let t = Instant::now();
    let mut server = EtcdServer::start("harness").unwrap();
    let endpoint = server.endpoint();
    assert!(endpoint.starts_with("http://127.0.0.1:"), "{endpoint}");
    assert!(server.is_running());
    println!("started in {:?}", t.elapsed());

    server.etcdctl(&["put", "/xdpkit/probe", "one"]).unwrap();
    server.etcdctl(&["put", "/xdpkit/probe", "two"]).unwrap();
    assert_eq!(value(&server, "/xdpkit/probe"), "two");
    let revision = mod_revision(&server, "/xdpkit/probe");
    assert!(
        revision >= 3,
        "two puts on a new store: revision {revision}"
    );

    let t = Instant::now();
    server.stop();
    println!("stopped in {:?}", t.elapsed());
    assert!(!server.is_running());
    assert!(!server.healthy(), "{endpoint} still healthy after stop");
    assert!(matches!(
        server.etcdctl(&["get", "/xdpkit/probe"]),
        Err(EtcdError::NotRunning(_))
    ));
    server.stop(); // a second stop does nothing

    let t = Instant::now();
    server.start_again().unwrap();
    println!("started again in {:?}", t.elapsed());
    assert_eq!(server.endpoint(), endpoint);
    assert_eq!(value(&server, "/xdpkit/probe"), "two");
    assert_eq!(mod_revision(&server, "/xdpkit/probe"), revision);

    let pid = server.pid().unwrap();
    let dir = server.dir().to_path_buf();
    assert!(dir.join("data").is_dir());
    let t = Instant::now();
    drop(server);
    println!("dropped in {:?}", t.elapsed());
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "etcd {pid} outlived its drop"
    );
    assert!(!dir.exists(), "{} outlived the drop", dir.display());
}

#[test]
fn a_taken_port_fails_start_again_with_the_log_then_it_recovers() {
    if !require_etcd("a_taken_port_fails_start_again_with_the_log_then_it_recovers") {
        return;
    }
    let mut server = EtcdServer::start("taken").unwrap();
    server.etcdctl(&["put", "k", "v"]).unwrap();
    server.stop();
    let port: u16 = server
        .endpoint()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let squatter = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let err = server.start_again().unwrap_err().to_string();
    assert!(
        err.contains("address already in use") && err.contains("etcd.log"),
        "the error shows the log's reason: {err}"
    );
    println!("{err}");
    assert!(!server.is_running());
    drop(squatter);
    server.start_again().unwrap();
    assert_eq!(value(&server, "k"), "v");
}

#[test]
fn two_servers_run_side_by_side() {
    if !require_etcd("two_servers_run_side_by_side") {
        return;
    }
    let a = EtcdServer::start("side-a").unwrap();
    let b = EtcdServer::start("side-b").unwrap();
    assert_ne!(a.endpoint(), b.endpoint());
    a.etcdctl(&["put", "/who", "a"]).unwrap();
    b.etcdctl(&["put", "/who", "b"]).unwrap();
    assert_eq!(value(&a, "/who"), "a");
    assert_eq!(value(&b, "/who"), "b");
    assert!(a.healthy() && b.healthy());
}

#[test]
fn a_name_etcd_would_misread_is_refused() {
    for name in ["", "a=b", "a,b", "a b"] {
        assert!(
            matches!(EtcdServer::start(name), Err(EtcdError::InvalidName(_))),
            "{name:?}"
        );
    }
}
