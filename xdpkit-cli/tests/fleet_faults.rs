//! The fleet's harder faults through a real etcd (issue 12): no frame is
//! judged by a mix of two configurations while pushes swap them under a
//! stream; an agent that missed revisions the store compacted away
//! resyncs; etcd with client TLS and authentication, and the agent with a
//! role limited to what it reads and its own status; a 1M-prefix blocklist
//! pushed to three agents.
//!
//! Each test builds its own lab (hosts as namespaces, each with an
//! interface `ff-in` and its own xdpkit state root; etcd in a "store"
//! namespace the hosts reach over their own links; frames sent into
//! `ff-in` from a "src" namespace). The tests run one at a time: the
//! stream test and the 1M push would each disturb the other's timing on a
//! two-core machine.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use etherparse::PacketBuilder;
use serde_json::Value;
use xdpkit_lab::{
    etcd::{require_etcd, EtcdServer},
    lab::{require_root, Lab},
};

use common::{ok, XDPKIT};

/// Every host's traffic interface.
const DEV: &str = "ff-in";
/// One test at a time (see the module docs).
static SERIAL: Mutex<()> = Mutex::new(());

/// The store's address on host `i`'s link, and the host's.
fn link_addrs(i: usize) -> (String, String) {
    (
        format!("198.18.240.{}", 4 * i + 1),
        format!("198.18.240.{}", 4 * i + 2),
    )
}

/// A lab of `n` hosts (`ff1`...), the store and the frame source; etcd
/// not started yet.
struct FleetLab {
    lab: Lab,
    hosts: Vec<String>,
    dir: tempfile::TempDir,
}

impl FleetLab {
    fn build(prefix: &str, n: usize) -> FleetLab {
        let hosts: Vec<String> = (1..=n).map(|i| format!("ff{i}")).collect();
        let mut builder = Lab::builder(prefix).namespace("store").namespace("src");
        for (i, host) in hosts.iter().enumerate() {
            let (store, mine) = link_addrs(i);
            builder = builder
                .namespace(host)
                .veth(
                    "store",
                    &format!("ff-st{i}"),
                    Some(&format!("{store}/30")),
                    host,
                    "ff-mgmt",
                    Some(&format!("{mine}/30")),
                )
                .veth("src", &format!("ff-src{i}"), None, host, DEV, None);
        }
        let lab = builder.build().unwrap();
        // Under default deny every frame into ff-in counts: the source side
        // must not send its own (IPv6 router solicitations, MLD reports).
        ok(&lab
            .command("src", "sysctl")
            .args(["-qw", "net.ipv6.conf.all.disable_ipv6=1"])
            .output()
            .unwrap());
        FleetLab {
            lab,
            hosts,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn pin_root(&self, host: &str) -> String {
        format!("/sys/fs/bpf/xdpkit-{}", self.lab.ns_name(host))
    }

    /// `xdpkit ARGS` on `host`, with the host's own state root.
    fn on_host(&self, host: &str, args: &[&str]) -> Command {
        let mut cmd = self.lab.command(host, XDPKIT);
        cmd.env("XDPKIT_PIN_ROOT", self.pin_root(host)).args(args);
        cmd
    }

    /// `xdpkit fleet ARGS ETCD_ARGS` from the store's namespace.
    fn fleet(&self, args: &[&str], etcd: &[String]) -> Output {
        self.lab
            .command("store", XDPKIT)
            .arg("fleet")
            .args(args)
            .args(etcd)
            .output()
            .expect("run xdpkit fleet")
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Host `i`'s agent following group `edge`, with `etcd` (the store's
    /// URL on the host's link first) and its stderr in `agent-<host>.log`.
    fn agent(&self, i: usize, etcd: &[String], ttl: u32) -> Agent {
        let host = &self.hosts[i];
        let log = self.dir.path().join(format!("agent-{host}.log"));
        let child = self
            .on_host(host, &["agent", "--host", host, "--group", "edge"])
            .args(["--status-ttl", &ttl.to_string()])
            .arg("--state-file")
            .arg(self.dir.path().join(format!("{host}.json")))
            .args(etcd)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start agent");
        Agent { child, log }
    }

    /// Frames from `src` into host `i`'s interface (to its MAC and
    /// `198.18.241.2:port`).
    fn send(&self, i: usize, src: [u8; 4], port: u16, n: usize) -> usize {
        let frames = vec![self.frame(i, src, port); n];
        self.lab
            .send_frames("src", &format!("ff-src{i}"), &frames)
            .unwrap() as usize
    }

    fn frame(&self, i: usize, src: [u8; 4], port: u16) -> Vec<u8> {
        let mac = self.lab.mac(&self.hosts[i], DEV).unwrap();
        let mut frame = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], mac)
            .ipv4(src, [198, 18, 241, 2], 64)
            .udp(1000, port)
            .write(&mut frame, &[0; 18])
            .unwrap();
        frame
    }

    /// Frames host `host`'s xdpkit counted with `action` so far.
    fn counted(&self, host: &str, action: &str) -> u64 {
        let out = self
            .on_host(host, &["status", "--dev", DEV, "--json"])
            .output()
            .unwrap();
        let v: Value = serde_json::from_str(&ok(&out)).unwrap();
        let iface = if v.is_array() { &v[0] } else { &v };
        iface["actions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["action"] == action)
            .map(|a| a["packets"].as_u64().unwrap())
            .sum()
    }

    /// `fleet status --json`, one entry per host.
    fn statuses(&self, etcd: &[String]) -> Vec<Value> {
        let v: Value = serde_json::from_str(&ok(&self.fleet(&["status", "--json"], etcd))).unwrap();
        v.as_array().cloned().unwrap_or_default()
    }

    /// Waits (at most `max`) until every host's agent runs layer content
    /// `id` (applied, or unchanged after a new session); returns how long
    /// it took.
    fn wait_for(&self, id: &str, etcd: &[String], max: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let all = self.statuses(etcd);
            let done = self.hosts.iter().all(|h| {
                all.iter().any(|s| {
                    s["host"] == h.as_str()
                        && (s["status"]["outcome"] == "applied"
                            || s["status"]["outcome"] == "unchanged")
                        && s["status"]["layers"]
                            .as_array()
                            .is_some_and(|l| l.iter().any(|l| l["id"] == id))
                })
            });
            if done {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < max,
                "hosts not at {id} after {max:?}: {all:#?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until every agent has written its status.
    fn wait_agents(&self, etcd: &[String]) {
        let start = Instant::now();
        while self
            .statuses(etcd)
            .iter()
            .filter(|s| !s["status"].is_null())
            .count()
            < self.hosts.len()
        {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "agents did not report"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Pushes `file` as group `edge`'s layer: its content id and revision.
    fn push(&self, file: &Path, etcd: &[String]) -> (String, i64) {
        let file = file.display().to_string();
        let out: Value = serde_json::from_str(&ok(
            &self.fleet(&["push", "-f", &file, "--group", "edge", "--json"], etcd)
        ))
        .unwrap();
        (
            out["manifest"]["id"].as_str().unwrap().to_string(),
            out["revision"].as_i64().unwrap(),
        )
    }
}

impl Drop for FleetLab {
    fn drop(&mut self) {
        for host in &self.hosts {
            let _ = self.on_host(host, &["detach", "--dev", DEV]).output();
        }
    }
}

struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill has no memory effects; the child is not reaped yet,
        // so the pid is still ours (nsenter execs xdpkit in place).
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill {sig}");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // A stopped process dies on SIGKILL as well.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `--etcd URL` for host `i`'s link (the store listens on all addresses).
fn plain(i: usize) -> Vec<String> {
    vec!["--etcd".into(), format!("http://{}:2379", link_addrs(i).0)]
}

/// A firewall configuration of `ff-in`: `default` then `rules`.
fn firewall(default: &str, rules: &[&str], extra: &str) -> String {
    let rules: Vec<String> = rules.iter().map(|r| format!("\"{r}\"")).collect();
    format!(
        "[interfaces.{DEV}]\nmode = \"native\"\nstages = [\"firewall\"]\n[interfaces.{DEV}.firewall]\ndefault = \"{default}\"\nrules = [{}]\n{extra}",
        rules.join(", ")
    )
}

fn start_etcd(fl: &FleetLab, name: &str) -> EtcdServer {
    EtcdServer::start_in(name, &fl.lab.ns_name("store"), "0.0.0.0".parse().unwrap()).expect("etcd")
}

/// Issue 12 target: 0 frames judged by a mixed configuration during a
/// change. Under default deny, A allows 198.18.241.0/25; B denies
/// 198.18.241.128/25 then allows 198.18.241.0/24. Both pass .10 and drop
/// .200; a mix does not: B's allow without its deny passes .200, A's
/// allow gone before B's came drops .10. Pushes swap A and B while both
/// sources stream; every .10 frame must arrive and every .200 frame be
/// dropped.
#[test]
fn pushes_under_a_stream_never_judge_by_a_mixed_configuration() {
    if !require_root("pushes_under_a_stream_never_judge_by_a_mixed_configuration")
        || !require_etcd("pushes_under_a_stream_never_judge_by_a_mixed_configuration")
    {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    const SWAPS: usize = 6;
    let fl = FleetLab::build("xkffa", 1);
    let _etcd = start_etcd(&fl, "ffa");
    let etcd = plain(0);
    let host = fl.hosts[0].clone();
    ok(&fl
        .lab
        .command(&host, "ip")
        .args(["addr", "add", "198.18.241.2/24", "dev", DEV])
        .output()
        .unwrap());
    let allowed = fl
        .lab
        .udp_sink(&host, "198.18.241.2:9001".parse().unwrap())
        .unwrap();
    let leaked = fl
        .lab
        .udp_sink(&host, "198.18.241.2:9002".parse().unwrap())
        .unwrap();
    let a = fl.write(
        "a.toml",
        &firewall("drop", &["allow src 198.18.241.0/25 prio 10"], ""),
    );
    let b = fl.write(
        "b.toml",
        &firewall(
            "drop",
            &[
                "deny src 198.18.241.128/25 prio 10",
                "allow src 198.18.241.0/24 prio 20",
            ],
            "",
        ),
    );
    let _agent = fl.agent(0, &etcd, 10);
    fl.wait_agents(&etcd);
    let (id_a, _) = fl.push(&a, &etcd);
    fl.wait_for(&id_a, &etcd, Duration::from_secs(30));
    // The stack answers .10 once before the stream: the path works.
    assert_eq!(fl.send(0, [198, 18, 241, 10], 9001, 1), 1);
    assert_eq!(
        allowed.count(1, Duration::from_secs(1), Duration::from_secs(5)),
        1
    );
    let dropped_before = fl.counted(&host, "drop");

    let good = fl.frame(0, [198, 18, 241, 10], 9001);
    let bad = fl.frame(0, [198, 18, 241, 200], 9002);
    let batch: Vec<Vec<u8>> = [good, bad].iter().cycle().take(64).cloned().collect();
    let stop = AtomicBool::new(false);
    let (sent, received) = std::thread::scope(|s| {
        // Read as they come: the socket's buffer holds a few hundred.
        let counter =
            s.spawn(|| allowed.count(u32::MAX, Duration::from_secs(3), Duration::from_secs(300)));
        let sender = s.spawn(|| {
            let mut sent = 0;
            let start = Instant::now();
            // Bounded: stops when told or after 240 s.
            while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(240) {
                sent += fl.lab.send_frames("src", "ff-src0", &batch).unwrap() as usize;
                std::thread::sleep(Duration::from_millis(2));
            }
            sent
        });
        // Let the stream run under A first, then swap back and forth.
        std::thread::sleep(Duration::from_millis(300));
        let mut ids = Vec::new();
        for swap in 0..SWAPS {
            let file = if swap % 2 == 0 { &b } else { &a };
            let (id, _) = fl.push(file, &etcd);
            let took = fl.wait_for(&id, &etcd, Duration::from_secs(60));
            ids.push((id, took));
        }
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        let sent = sender.join().unwrap();
        eprintln!(
            "{SWAPS} pushes applied under the stream, each after {:?}",
            ids.iter().map(|i| i.1).collect::<Vec<_>>()
        );
        (sent, counter.join().unwrap() as usize)
    });
    assert!(sent > 1000, "only {sent} frames streamed");
    let per_source = sent / 2;
    // Every .10 frame was passed (by A or B whole), every .200 frame dropped.
    assert_eq!(received, per_source, "allowed frames lost: judged by a mix");
    assert_eq!(
        leaked.count(1, Duration::from_millis(500), Duration::from_secs(1)),
        0,
        "a denied frame passed: judged by a mix"
    );
    assert_eq!(
        fl.counted(&host, "drop") - dropped_before,
        per_source as u64,
        "drops other than the denied source's"
    );
    eprintln!("{sent} frames streamed through {SWAPS} swaps: {received} passed, {per_source} dropped, none judged by a mix");
}

/// `n` puts of `bytes`-byte values at `key`, through etcd's JSON gateway
/// on one kept-alive connection from the store's namespace (an etcdctl per
/// put would take ~30 ms each).
fn put_many(lab: &Lab, key: &str, bytes: usize, n: usize) {
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};
    let body = format!(
        "{{\"key\":\"{}\",\"value\":\"{}\"}}",
        base64(key.as_bytes()),
        base64(&vec![b'x'; bytes])
    );
    lab.run_in("store", || {
        let stream = std::net::TcpStream::connect("127.0.0.1:2379").unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut writer = stream;
        for _ in 0..n {
            write!(
                writer,
                "POST /v3/kv/put HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            let mut status = String::new();
            reader.read_line(&mut status).unwrap();
            assert!(status.contains(" 200 "), "put {key}: {status}");
            let mut length = None;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line.trim().is_empty() {
                    break;
                }
                if let Some((name, value)) = line.split_once(':') {
                    if name.eq_ignore_ascii_case("content-length") {
                        length = value.trim().parse::<usize>().ok();
                    }
                }
            }
            let mut answer = vec![0; length.expect("a Content-Length")];
            reader.read_exact(&mut answer).unwrap();
        }
    })
    .unwrap();
}

fn base64(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Issue 12 point 3: a watch compacted past what the agent saw -> a full
/// resync. The agent is stopped (SIGSTOP) while its keys change hundreds
/// of times with large values: etcd can no longer hand it the events (its
/// stream's window and buffers are full) and sets its watcher aside;
/// then the store is compacted past them, the last push made and the
/// agent let go. etcd answers the watcher with "compacted"; the agent
/// must end the session, read everything again and run the latest push.
#[test]
fn an_agent_behind_a_compaction_resyncs_to_the_latest() {
    if !require_root("an_agent_behind_a_compaction_resyncs_to_the_latest")
        || !require_etcd("an_agent_behind_a_compaction_resyncs_to_the_latest")
    {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let fl = FleetLab::build("xkffb", 1);
    let etcd_server = start_etcd(&fl, "ffb");
    let etcd = plain(0);
    let host = fl.hosts[0].clone();
    // A long lease: the stopped agent keeps its session, so only the
    // watch can tell it what it missed.
    let agent = fl.agent(0, &etcd, 120);
    fl.wait_agents(&etcd);
    let v1 = fl.write(
        "v1.toml",
        &firewall("pass", &["deny src 198.18.244.0/24"], ""),
    );
    let (id1, _) = fl.push(&v1, &etcd);
    fl.wait_for(&id1, &etcd, Duration::from_secs(30));
    let sessions = |all: &[Value]| all[0]["status"]["sessions"].as_u64().unwrap();
    let before = sessions(&fl.statuses(&etcd));

    agent.signal(libc::SIGSTOP);
    // 400 revisions of 32 KiB on the host's own key (13 MB of events).
    put_many(&fl.lab, "/xdpkit/hosts/ff1", 32 << 10, 400);
    etcd_server.etcdctl(&["del", "/xdpkit/hosts/ff1"]).unwrap();
    let v2 = fl.write(
        "v2.toml",
        &firewall("pass", &["deny src 198.18.245.0/24"], ""),
    );
    let (id2, revision) = fl.push(&v2, &etcd);
    etcd_server
        .etcdctl(&["compact", &revision.to_string(), "--physical"])
        .unwrap();
    agent.signal(libc::SIGCONT);

    let took = fl.wait_for(&id2, &etcd, Duration::from_secs(60));
    eprintln!("resumed agent at the latest push after {took:?}");
    // The "compacted" answer comes once the agent drained what was
    // buffered for it; the session then ends and a new one reads all.
    let start = Instant::now();
    while !agent.log().contains("full resync") {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no resync logged: {}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("agent log: {}", agent.log().trim());
    // The new session (after a 0.5 s backoff) reports itself.
    let start = Instant::now();
    let all = loop {
        let all = fl.statuses(&etcd);
        if sessions(&all) > before {
            break all;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no new session: {all:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    fl.wait_for(&id2, &etcd, Duration::from_secs(30));
    assert_eq!(all[0]["behind"], serde_json::json!([]), "{all:#?}");
    assert!(all[0]["status"]["revision"].as_i64().unwrap() >= revision);
    // And the latest push filters: .245 dropped, .244 passes now.
    let dropped = fl.counted(&host, "drop");
    fl.send(0, [198, 18, 245, 1], 9000, 20);
    fl.send(0, [198, 18, 244, 1], 9000, 20);
    assert_eq!(fl.counted(&host, "drop"), dropped + 20);
}

/// Issue 12 point 4: etcd with client TLS (certificates required) and
/// authentication. The pusher's user may read and write the fleet's keys;
/// the agent's user only reads the layers and parts and writes its own
/// status. Both work with the right options. Refusals name the cause: a
/// wrong password, no user, or the agent's user pushing exit 2 (the
/// user's credentials or roles to fix, as for privileges); no client
/// certificate or no CA exit 1 (no connection, as for any etcd fault).
#[test]
fn tls_and_authentication_pass_through_and_refusals_are_clear() {
    if !require_root("tls_and_authentication_pass_through_and_refusals_are_clear")
        || !require_etcd("tls_and_authentication_pass_through_and_refusals_are_clear")
    {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let fl = FleetLab::build("xkffc", 1);
    let host = fl.hosts[0].clone();
    let (store_addr, _) = link_addrs(0);
    let mut etcd_server =
        EtcdServer::start_in_tls("ffc", &fl.lab.ns_name("store"), store_addr.parse().unwrap())
            .expect("etcd with TLS");
    let tls = etcd_server.tls().unwrap().clone();
    let ctl = |args: &[&str]| {
        etcd_server.etcdctl(args).unwrap();
    };
    ctl(&["role", "add", "fleet-admin"]);
    ctl(&[
        "role",
        "grant-permission",
        "fleet-admin",
        "readwrite",
        "/xdpkit/",
        "--prefix=true",
    ]);
    ctl(&["user", "add", "pusher", "--new-user-password=push-secret"]);
    ctl(&["user", "grant-role", "pusher", "fleet-admin"]);
    let agent_role = format!("agent-{host}");
    ctl(&["role", "add", &agent_role]);
    for prefix in ["/xdpkit/groups/", "/xdpkit/hosts/", "/xdpkit/blobs/"] {
        ctl(&[
            "role",
            "grant-permission",
            &agent_role,
            "read",
            prefix,
            "--prefix=true",
        ]);
    }
    let status_key = format!("/xdpkit/status/{host}");
    ctl(&[
        "role",
        "grant-permission",
        &agent_role,
        "readwrite",
        &status_key,
    ]);
    ctl(&[
        "user",
        "add",
        &agent_role,
        "--new-user-password=agent-secret",
    ]);
    ctl(&["user", "grant-role", &agent_role, &agent_role]);
    etcd_server.enable_auth("root-secret").unwrap();

    let url = etcd_server.endpoint();
    let with = |ca: bool, cert: bool, user: Option<&str>| {
        let mut args = vec!["--etcd".to_string(), url.clone()];
        if ca {
            args.extend(["--cacert".into(), tls.ca.display().to_string()]);
        }
        if cert {
            args.extend([
                "--cert".into(),
                tls.client_cert.display().to_string(),
                "--key".into(),
                tls.client_key.display().to_string(),
            ]);
        }
        if let Some(u) = user {
            args.extend(["--user".into(), u.to_string()]);
        }
        args
    };
    let pusher = with(true, true, Some("pusher:push-secret"));
    let agent_user = format!("{agent_role}:agent-secret");

    let _agent = fl.agent(0, &with(true, true, Some(&agent_user)), 10);
    fl.wait_agents(&pusher);
    let file = fl.write(
        "edge.toml",
        &firewall("pass", &["deny src 198.18.246.0/24"], ""),
    );
    let (id, _) = fl.push(&file, &pusher);
    fl.wait_for(&id, &pusher, Duration::from_secs(30));
    let dropped = fl.counted(&host, "drop");
    fl.send(0, [198, 18, 246, 1], 9000, 10);
    assert_eq!(
        fl.counted(&host, "drop"),
        dropped + 10,
        "the pushed rule filters"
    );

    // Refusals: what the store said, and the exit code.
    let file = file.display().to_string();
    let refused = |args: &[&str], etcd: Vec<String>, code: i32, cause: &[&str]| {
        let out = fl.fleet(args, &etcd);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?} {etcd:?}: {stderr}");
        assert!(stderr.starts_with("xdpkit: error: etcd at "), "{stderr}");
        assert!(
            cause.iter().any(|c| stderr.to_lowercase().contains(c)),
            "{args:?} {etcd:?}: {stderr} names none of {cause:?}"
        );
        eprintln!("refused as expected: {}", stderr.trim());
    };
    refused(
        &["status"],
        with(true, true, Some("pusher:wrong")),
        2,
        &["authentication failed"],
    );
    refused(
        &["status"],
        with(true, true, None),
        2,
        &["user name is empty", "permission denied"],
    );
    refused(
        &["status"],
        with(true, false, Some("pusher:push-secret")),
        1,
        &["--cert and --key"],
    );
    refused(
        &["status"],
        with(false, true, Some("pusher:push-secret")),
        1,
        &["certificate", "issuer", "tls"],
    );
    refused(
        &["push", "-f", &file, "--group", "edge"],
        with(true, true, Some(&agent_user)),
        2,
        &["permission denied"],
    );
}

/// Issue 12 point 6: a 1M-prefix blocklist (a rules-file next to the
/// configuration, inlined by the push) applied by three agents; the time
/// from the push to all three running it is printed. Target (release):
/// 15 s. The bound asserted is generous for a debug build on a shared
/// two-core machine, where parsing and compiling 1M rules three times at
/// once dominates.
#[test]
fn a_million_prefix_blocklist_reaches_three_agents() {
    if !require_root("a_million_prefix_blocklist_reaches_three_agents")
        || !require_etcd("a_million_prefix_blocklist_reaches_three_agents")
    {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    const PREFIXES: u32 = 1_000_000;
    const BOUND: Duration = Duration::from_secs(600);
    let fl = FleetLab::build("xkffd", 3);
    let _etcd = start_etcd(&fl, "ffd");
    // One of the hosts' links reaches the store from its namespace too.
    let etcd = plain(0);
    let agents: Vec<Agent> = (0..3).map(|i| fl.agent(i, &plain(i), 10)).collect();
    fl.wait_agents(&etcd);

    // Distinct /24s (an odd multiplier permutes the 2^24 of them), none in
    // 198.18.0.0/15, then the lab's listed one.
    let mut rules = String::with_capacity(PREFIXES as usize * 26);
    let mut n = 0u32;
    let mut i = 0u32;
    while n < PREFIXES - 1 {
        let net = (i.wrapping_mul(2_654_435_761) & 0xff_ffff) << 8;
        i += 1;
        if net >> 17 == (198 << 7 | 18 >> 1) {
            continue;
        }
        rules.push_str(&format!("deny src {}/24\n", std::net::Ipv4Addr::from(net)));
        n += 1;
    }
    rules.push_str("deny src 198.18.242.0/24\n");
    fl.write("block.rules", &rules);
    let file = fl.write(
        "edge.toml",
        &firewall("pass", &[], "rules-file = \"block.rules\"\n"),
    );

    let start = Instant::now();
    let (id, _) = fl.push(&file, &etcd);
    let pushed = start.elapsed();
    let applied = fl.wait_for(&id, &etcd, BOUND);
    eprintln!(
        "1M-prefix blocklist: pushed in {pushed:.1?}, running on 3 agents {:.1?} after the push started",
        pushed + applied
    );
    for (i, host) in fl.hosts.iter().enumerate() {
        let dropped = fl.counted(host, "drop");
        fl.send(i, [198, 18, 242, 9], 9000, 10);
        fl.send(i, [198, 18, 243, 9], 9000, 10);
        assert_eq!(fl.counted(host, "drop"), dropped + 10, "{host}");
    }
    drop(agents);
}
