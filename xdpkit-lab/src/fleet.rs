//! A fleet of up to three hosts for the fleet's tests, benchmark and demo:
//! host namespaces `h1`-`h3`, each with an interface of the same name
//! ([`DEV`]) and its own xdpkit state root (`XDPKIT_PIN_ROOT`), an etcd in
//! a `store` namespace that every host reaches over its own link (plain,
//! or with client TLS: [`FleetLabBuilder::tls`]), a `src` namespace that
//! sends frames into each host's [`DEV`], and an `xdpkit agent` per host
//! (group `edge`) with its own state file and log. Agents are stopped, the
//! hosts' interfaces detached and their state roots removed when the
//! [`FleetLab`] is dropped (before the namespaces go).
//!
//! Everything runs the `xdpkit` binary the caller names (a test's
//! `CARGO_BIN_EXE_xdpkit`, the binary `cargo xtask` built for a benchmark),
//! so what is measured and tested is the CLI an operator runs.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{BufRead as _, BufReader},
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{Arc, Condvar, Mutex, PoisonError},
    time::{Duration, Instant},
};

use serde_json::Value;
use xdpkit::{fleet::status::AgentStatus, pins::PinDir, trafficgen::udp_frame};

use crate::{
    etcd::{EtcdError, EtcdServer},
    lab::{Lab, LabError},
};

/// The hosts, `h1`-`h3` (a lab of fewer has the first ones).
pub const HOSTS: [&str; 3] = ["h1", "h2", "h3"];
/// Every host's traffic interface: the same name on each, as on real hosts.
pub const DEV: &str = "fl-in";
/// The group every agent follows.
pub const GROUP: &str = "edge";
/// Seconds an agent's status outlives it unless the builder says
/// otherwise (short: a test waits for it).
const STATUS_TTL: u32 = 3;
/// Between two looks at the statuses while waiting (each an etcdctl
/// process: a shorter pause takes the cores the agents need).
const POLL: Duration = Duration::from_millis(50);
/// Where the frames [`FleetLab::send`] makes are addressed (inside the
/// lab's ranges; the hosts' [`DEV`] has no address, XDP judges them).
const FRAME_DST: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 230, 1), 2000);
/// The source MAC of the frames sent into the hosts.
const FRAME_SRC_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
/// Their size: the smallest Ethernet frame.
const FRAME_SIZE: usize = 60;

/// A failed fleet-lab step.
#[derive(Debug, thiserror::Error)]
pub enum FleetLabError {
    /// Building the namespaces, or a command in them, failed.
    #[error(transparent)]
    Lab(#[from] LabError),
    /// etcd failed.
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    /// An xdpkit command failed.
    #[error("fleet lab: `{command}` failed ({status}): {stderr}")]
    Xdpkit {
        /// The command line.
        command: String,
        /// How it exited.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// Output that does not read as expected, or a wait that ran out.
    #[error("fleet lab: {0}")]
    Other(String),
}

type Result<T> = std::result::Result<T, FleetLabError>;

/// What [`FleetLab::push`] stored.
#[derive(Clone, Debug)]
pub struct Pushed {
    /// The manifest's content id.
    pub id: String,
    /// The store's revision of the layer's new manifest.
    pub revision: i64,
    /// Bytes of the configuration text.
    pub bytes: u64,
    /// Bytes compressed (the parts together).
    pub compressed: u64,
    /// Parts it was split into.
    pub parts: u64,
}

/// What an xdpkit client shows the store. With a TLS store: the lab's CA
/// (`--cacert`) and client certificate (`--cert`, `--key`), each of which
/// can be left out to see the refusal; with a plain store these two mean
/// nothing. And a user (`--user NAME:PASSWORD`) once authentication is on.
#[derive(Clone, Debug)]
pub struct Access {
    /// Trust the lab's CA.
    pub ca: bool,
    /// Present the lab's client certificate.
    pub cert: bool,
    /// `NAME:PASSWORD`.
    pub user: Option<String>,
}

impl Access {
    /// The CA and the certificate, as `user` if one is given.
    pub fn user(user: Option<&str>) -> Access {
        Access {
            ca: true,
            cert: true,
            user: user.map(str::to_string),
        }
    }
}

impl Default for Access {
    fn default() -> Access {
        Access::user(None)
    }
}

/// Builds a [`FleetLab`]: [`FleetLab::builder`].
pub struct FleetLabBuilder {
    prefix: String,
    net: u8,
    xdpkit: PathBuf,
    hosts: usize,
    status_ttl: u32,
    tls: bool,
    quiet_source: bool,
}

impl FleetLabBuilder {
    /// Only the first `n` of [`HOSTS`] (1 to 3; 3 unless said).
    pub fn hosts(mut self, n: usize) -> Self {
        self.hosts = n;
        self
    }

    /// Seconds an agent's status outlives it (its lease; 3 unless said).
    pub fn status_ttl(mut self, secs: u32) -> Self {
        self.status_ttl = secs;
        self
    }

    /// IPv6 off in the `src` namespace: it sends nothing of its own (router
    /// solicitations, MLD reports), so every frame into a host's [`DEV`]
    /// is one the lab sent (exact counts under a firewall's default).
    pub fn quiet_source(mut self) -> Self {
        self.quiet_source = true;
        self
    }

    /// etcd with client TLS: https only, every client asked for a
    /// certificate the lab's CA signed ([`EtcdServer::start_in_tls`]). It
    /// listens on the store's address of `h1`'s link only (the address its
    /// certificate names), so a TLS lab has one host.
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Builds the namespaces (the links between the store and the hosts in
    /// 198.18.`net`.0/24, a /30 each) and starts etcd in `store`; no agent
    /// runs yet ([`FleetLab::start_agents`]).
    ///
    /// # Errors
    /// A host count out of range, TLS with more than one host, or a step
    /// that failed.
    pub fn build(self) -> Result<FleetLab> {
        if !(1..=HOSTS.len()).contains(&self.hosts) {
            return Err(FleetLabError::Other(format!(
                "{} hosts: a fleet lab has 1 to {}",
                self.hosts,
                HOSTS.len()
            )));
        }
        if self.tls && self.hosts > 1 {
            return Err(FleetLabError::Other(
                "a TLS store's certificate names one host's link: build it with one host".into(),
            ));
        }
        let hosts = &HOSTS[..self.hosts];
        let prefix = &self.prefix;
        let mut builder = Lab::builder(prefix).namespace("store").namespace("src");
        for (i, host) in hosts.iter().enumerate() {
            let (store, mine) = link_addrs(self.net, i);
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
        let lab = builder.build()?;
        if self.quiet_source {
            checked(
                lab.command("src", "sysctl")
                    .args(["-qw", "net.ipv6.conf.all.disable_ipv6=1"]),
            )?;
        }
        let macs = hosts
            .iter()
            .map(|h| lab.mac(h, DEV))
            .collect::<std::result::Result<_, _>>()?;
        let store_ns = lab.ns_name("store");
        let etcd = if self.tls {
            let (store, _) = link_addrs(self.net, 0);
            EtcdServer::start_in_tls(prefix, &store_ns, store)?
        } else {
            EtcdServer::start_in(prefix, &store_ns, Ipv4Addr::UNSPECIFIED)?
        };
        let state = tempfile::Builder::new()
            .prefix(&format!("{prefix}-agents."))
            .tempdir()
            .map_err(|source| LabError::Io {
                what: "create the agents' state directory".into(),
                source,
            })?;
        Ok(FleetLab {
            etcd,
            state,
            lab,
            xdpkit: self.xdpkit,
            net: self.net,
            hosts,
            macs,
            status_ttl: self.status_ttl,
            access: Access::default(),
            agents: hosts.iter().map(|_| None).collect(),
        })
    }
}

/// The hosts, etcd and the agents; see the module docs.
pub struct FleetLab {
    // Dropped in this order after Drop::drop stopped the agents and
    // detached the hosts: etcd, the state files, then the namespaces.
    etcd: EtcdServer,
    state: tempfile::TempDir,
    lab: Lab,
    xdpkit: PathBuf,
    net: u8,
    hosts: &'static [&'static str],
    /// Each host's [`DEV`] MAC: frames sent to it reach its stack too.
    macs: Vec<[u8; 6]>,
    status_ttl: u32,
    /// What the lab's own `xdpkit fleet` commands show the store.
    access: Access,
    agents: Vec<Option<Child>>,
}

impl FleetLab {
    /// A lab named `prefix` (its namespaces' prefix and etcd's name) with
    /// the store's links in 198.18.`net`.0/24, running `xdpkit`: three
    /// hosts, a plain etcd and 3 s status leases unless the builder's
    /// options say otherwise.
    pub fn builder(prefix: &str, net: u8, xdpkit: &Path) -> FleetLabBuilder {
        FleetLabBuilder {
            prefix: prefix.to_string(),
            net,
            xdpkit: xdpkit.to_path_buf(),
            hosts: HOSTS.len(),
            status_ttl: STATUS_TTL,
            tls: false,
            quiet_source: false,
        }
    }

    /// Three hosts and a plain etcd: `FleetLab::builder(..).build()`.
    pub fn new(prefix: &str, net: u8, xdpkit: &Path) -> Result<FleetLab> {
        Self::builder(prefix, net, xdpkit).build()
    }

    /// The namespaces.
    pub fn lab(&self) -> &Lab {
        &self.lab
    }

    /// The hosts' names, `h1`...
    pub fn hosts(&self) -> &'static [&'static str] {
        self.hosts
    }

    /// The store (to stop it, start it again, or use etcdctl on it).
    pub fn etcd(&mut self) -> &mut EtcdServer {
        &mut self.etcd
    }

    /// What the lab's own `xdpkit fleet` commands ([`FleetLab::fleet`],
    /// push, statuses) show the store from now on.
    pub fn set_access(&mut self, access: Access) {
        self.access = access;
    }

    /// Writes `text` to file `name` in the lab's directory (configurations
    /// and the rules-files they name); returns its path.
    pub fn write(&self, name: &str, text: &str) -> Result<PathBuf> {
        let path = self.state.path().join(name);
        std::fs::write(&path, text).map_err(|source| LabError::Io {
            what: format!("write {}", path.display()),
            source,
        })?;
        Ok(path)
    }

    /// Host `host`'s xdpkit state root on bpffs.
    pub fn pin_root(&self, host: &str) -> PathBuf {
        PathBuf::from(format!("/sys/fs/bpf/xdpkit-{}", self.lab.ns_name(host)))
    }

    /// `xdpkit ARGS` on `host`, with the host's own state root.
    pub fn on_host(&self, host: &str, args: &[&str]) -> Command {
        let mut cmd = self.lab.command(host, &self.xdpkit);
        cmd.env(xdpkit::pins::PIN_ROOT_ENV, self.pin_root(host))
            .args(args);
        cmd
    }

    /// `--etcd URL` and what `access` shows: for a client on host `i`'s
    /// link, or (`None`) in the store's namespace.
    pub fn etcd_args(&self, on: Option<usize>, access: &Access) -> Vec<String> {
        let url = match (self.etcd.tls(), on) {
            (Some(_), _) => self.etcd.endpoint(),
            (None, Some(i)) => format!("http://{}:2379", link_addrs(self.net, i).0),
            (None, None) => "http://127.0.0.1:2379".to_string(),
        };
        let mut args = vec!["--etcd".to_string(), url];
        if let Some(tls) = self.etcd.tls() {
            if access.ca {
                args.extend(["--cacert".into(), tls.ca.display().to_string()]);
            }
            if access.cert {
                args.extend([
                    "--cert".into(),
                    tls.client_cert.display().to_string(),
                    "--key".into(),
                    tls.client_key.display().to_string(),
                ]);
            }
        }
        if let Some(user) = &access.user {
            args.extend(["--user".into(), user.clone()]);
        }
        args
    }

    /// `xdpkit fleet ARGS` from the store's namespace, as run, showing the
    /// store what [`FleetLab::set_access`] set.
    pub fn fleet(&self, args: &[&str]) -> Result<Output> {
        self.fleet_as(&self.access, args)
    }

    /// `xdpkit fleet ARGS` from the store's namespace, showing `access`.
    pub fn fleet_as(&self, access: &Access, args: &[&str]) -> Result<Output> {
        let mut cmd = self.lab.command("store", &self.xdpkit);
        cmd.arg("fleet")
            .args(args)
            .args(self.etcd_args(None, access));
        cmd.output().map_err(|source| {
            LabError::Io {
                what: format!("run {cmd:?}"),
                source,
            }
            .into()
        })
    }

    /// Starts host `i`'s agent with [`Access::default`]; see
    /// [`FleetLab::start_agent_as`].
    pub fn start_agent(&mut self, i: usize) -> Result<()> {
        self.start_agent_as(i, &Access::default())
    }

    /// Starts host `i`'s agent (group [`GROUP`], the lab's status TTL, its
    /// own state file, kept across restarts, and its stderr appended to
    /// [`FleetLab::agent_log`]), showing the store `access`; a running one
    /// is left running.
    pub fn start_agent_as(&mut self, i: usize, access: &Access) -> Result<()> {
        if self.agents[i].is_some() {
            return Ok(());
        }
        let host = self.hosts[i];
        let state = self.state.path().join(format!("{host}.json"));
        let log_path = self.agent_log_path(i);
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|source| LabError::Io {
                what: format!("open {}", log_path.display()),
                source,
            })?;
        let ttl = self.status_ttl.to_string();
        let state = state.display().to_string();
        let mut cmd = self.on_host(
            host,
            &[
                "agent",
                "--host",
                host,
                "--group",
                GROUP,
                "--status-ttl",
                &ttl,
                "--state-file",
                &state,
            ],
        );
        cmd.args(self.etcd_args(Some(i), access));
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|source| LabError::Io {
                what: format!("start {cmd:?}"),
                source,
            })?;
        self.agents[i] = Some(child);
        Ok(())
    }

    /// Kills host `i`'s agent (what it applied keeps running).
    pub fn stop_agent(&mut self, i: usize) {
        if let Some(mut child) = self.agents[i].take() {
            // A stopped (SIGSTOP) process dies on SIGKILL as well.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends signal `sig` to host `i`'s agent (`SIGSTOP` freezes it with
    /// its session and connections held, `SIGCONT` lets it go on).
    pub fn signal_agent(&self, i: usize, sig: libc::c_int) -> Result<()> {
        let child = self.agents[i]
            .as_ref()
            .ok_or_else(|| FleetLabError::Other(format!("{}: no agent runs", self.hosts[i])))?;
        let pid = libc::pid_t::try_from(child.id())
            .map_err(|_| FleetLabError::Other(format!("pid {} out of range", child.id())))?;
        // SAFETY: kill has no memory effects; the child is not reaped yet,
        // so the pid is still ours (nsenter execs xdpkit in place).
        if unsafe { libc::kill(pid, sig) } != 0 {
            return Err(LabError::Io {
                what: format!("signal {sig} to {}'s agent", self.hosts[i]),
                source: std::io::Error::last_os_error(),
            }
            .into());
        }
        Ok(())
    }

    /// What host `i`'s agents have logged so far (empty if nothing).
    pub fn agent_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.agent_log_path(i)).unwrap_or_default()
    }

    fn agent_log_path(&self, i: usize) -> PathBuf {
        self.state
            .path()
            .join(format!("agent-{}.log", self.hosts[i]))
    }

    /// Starts every agent ([`FleetLab::start_agent`]) and waits (at most
    /// `max`) until each has written its status.
    pub fn start_agents(&mut self, max: Duration) -> Result<()> {
        for i in 0..self.hosts.len() {
            self.start_agent(i)?;
        }
        self.wait_agents(max)
    }

    /// Waits (at most `max`) until every host's agent has written its
    /// status.
    pub fn wait_agents(&self, max: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            let up = self.agent_statuses()?.len();
            if up == self.hosts.len() {
                return Ok(());
            }
            if start.elapsed() > max {
                return Err(FleetLabError::Other(format!(
                    "{up} of {} agents reported after {max:?}",
                    self.hosts.len()
                )));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Takes host `host`'s link to the store down or up.
    pub fn set_store_link(&self, host: &str, up: bool) -> Result<()> {
        let state = if up { "up" } else { "down" };
        let mut cmd = self.lab.command(host, "ip");
        cmd.args(["link", "set", "fl-mgmt", state]);
        checked(&mut cmd).map(drop)
    }

    /// `xdpkit fleet push -f FILE --group edge`: what it stored.
    pub fn push(&self, file: &Path) -> Result<Pushed> {
        let file = file.display().to_string();
        let args = ["push", "-f", &file, "--group", GROUP, "--json"];
        let out = self.fleet(&args)?;
        let v = json(&success(&format!("xdpkit fleet {}", args.join(" ")), out)?)?;
        let m = &v["manifest"];
        let field = |v: &Value, what: &str| {
            v.as_u64()
                .ok_or_else(|| FleetLabError::Other(format!("push: no {what} in {m}")))
        };
        Ok(Pushed {
            id: m["id"]
                .as_str()
                .ok_or_else(|| FleetLabError::Other(format!("push: no id in {v}")))?
                .to_string(),
            revision: v["revision"]
                .as_i64()
                .ok_or_else(|| FleetLabError::Other(format!("push: no revision in {v}")))?,
            bytes: field(&m["bytes"], "bytes")?,
            compressed: field(&m["compressed"], "compressed")?,
            parts: field(&m["parts"], "parts")?,
        })
    }

    /// `xdpkit fleet status --json`: a line per host (its status, the
    /// layers it is behind on, its lag).
    pub fn statuses(&self) -> Result<Vec<Value>> {
        let out = self.fleet(&["status", "--json"])?;
        let v = json(&success("xdpkit fleet status --json", out)?)?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }

    /// The agents' statuses as written to the store, read with etcdctl:
    /// unlike `fleet status`, nothing else is read (a waiting loop does not
    /// inflate a million-prefix layer per look).
    pub fn agent_statuses(&self) -> Result<Vec<AgentStatus>> {
        let out = self.etcd.etcdctl(&[
            "get",
            xdpkit::fleet::keys::STATUS,
            "--prefix",
            "--print-value-only",
        ])?;
        out.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).map_err(|e| {
                    FleetLabError::Other(format!("a status that does not read: {e}: {l}"))
                })
            })
            .collect()
    }

    /// Waits (at most `max`) until every agent of `hosts` has read layer
    /// content `id` and its outcome is `outcome` (`ok`: applied or
    /// unchanged, for an agent that may have read the layer again in a new
    /// session since it applied it); returns how long it took.
    pub fn wait_for(
        &self,
        hosts: &[&str],
        id: &str,
        outcome: &str,
        max: Duration,
    ) -> Result<Duration> {
        let start = Instant::now();
        loop {
            let all = self.agent_statuses()?;
            if hosts
                .iter()
                .all(|h| all.iter().any(|s| s.host == *h && runs(s, id, outcome)))
            {
                return Ok(start.elapsed());
            }
            if start.elapsed() > max {
                return Err(FleetLabError::Other(format!(
                    "hosts {hosts:?} not at {id} ({outcome}) after {max:?}: {all:#?}"
                )));
            }
            std::thread::sleep(POLL);
        }
    }

    /// A UDP frame from `src` to `dst`, for host `i`'s [`DEV`] (to its MAC:
    /// what XDP passes reaches the host's stack, and a socket there).
    pub fn frame(&self, i: usize, src: Ipv4Addr, dst: SocketAddrV4) -> Vec<u8> {
        udp_frame(
            FRAME_SRC_MAC,
            self.macs[i],
            src,
            *dst.ip(),
            (1000, dst.port()),
            FRAME_SIZE,
        )
    }

    /// Sends `frames` from `src` into host `i`'s [`DEV`]; returns how many
    /// left.
    pub fn send_frames(&self, i: usize, frames: &[Vec<u8>]) -> Result<usize> {
        Ok(self.lab.send_frames("src", &format!("fl-src{i}"), frames)? as usize)
    }

    /// Sends `n` UDP frames from `src` into host `i`'s [`DEV`] (to an
    /// address the host does not have: only XDP judges them).
    pub fn send(&self, i: usize, src: Ipv4Addr, n: usize) -> Result<()> {
        self.send_to(i, src, FRAME_DST, n)
    }

    /// Sends `n` UDP frames from `src` to `dst` into host `i`'s [`DEV`];
    /// an error unless every one left.
    pub fn send_to(&self, i: usize, src: Ipv4Addr, dst: SocketAddrV4, n: usize) -> Result<()> {
        let sent = self.send_frames(i, &vec![self.frame(i, src, dst); n])?;
        if sent != n {
            return Err(FleetLabError::Other(format!(
                "sent {sent} of {n} frames to {}",
                self.hosts[i]
            )));
        }
        Ok(())
    }

    /// Frames by action (`drop`, `pass`, ...) over host `host`'s [`DEV`]
    /// so far, from `xdpkit status`.
    pub fn counters(&self, host: &str) -> Result<BTreeMap<String, u64>> {
        // No rates: they sample for a second.
        let args = ["status", "--dev", DEV, "--json", "--interval", "0"];
        let out = self
            .on_host(host, &args)
            .output()
            .map_err(|source| LabError::Io {
                what: format!("run xdpkit status on {host}"),
                source,
            })?;
        let v = json(&success(
            &format!("xdpkit {} on {host}", args.join(" ")),
            out,
        )?)?;
        let iface = if v.is_array() { &v[0] } else { &v };
        let actions = iface["actions"]
            .as_array()
            .ok_or_else(|| FleetLabError::Other(format!("{host}: no actions in {v}")))?;
        let mut counters = BTreeMap::new();
        for a in actions {
            if let (Some(action), Some(packets)) = (a["action"].as_str(), a["packets"].as_u64()) {
                *counters.entry(action.to_string()).or_insert(0) += packets;
            }
        }
        Ok(counters)
    }

    /// Frames host `host` counted with `action` so far.
    pub fn counted(&self, host: &str, action: &str) -> Result<u64> {
        Ok(self.counters(host)?.get(action).copied().unwrap_or(0))
    }

    /// Frames host `host`'s firewall dropped so far.
    pub fn dropped(&self, host: &str) -> Result<u64> {
        self.counted(host, "drop")
    }
}

/// A status and when it arrived.
pub type Stamped = (Instant, AgentStatus);

/// The agents' statuses as etcd reports each change: an `etcdctl watch`
/// from the store's first revision (so every status written so far comes
/// first), each status stamped with when it arrived here. A benchmark
/// learns when a host applied something without looking again and again.
pub struct StatusWatch {
    child: Child,
    events: Arc<(Mutex<Vec<Stamped>>, Condvar)>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl StatusWatch {
    /// The statuses from the `from`th on, waiting at most `timeout` for
    /// one if there is none yet.
    pub fn since(&self, from: usize, timeout: Duration) -> Vec<Stamped> {
        let (events, arrived) = &*self.events;
        let guard = events.lock().unwrap_or_else(PoisonError::into_inner);
        let (guard, _) = arrived
            .wait_timeout_while(guard, timeout, |e| e.len() <= from)
            .unwrap_or_else(PoisonError::into_inner);
        guard.get(from..).map(<[_]>::to_vec).unwrap_or_default()
    }
}

impl Drop for StatusWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

impl FleetLab {
    /// Starts a [`StatusWatch`] on the store (a plain one: with TLS or
    /// authentication, etcdctl would need their options too).
    pub fn watch_statuses(&self) -> Result<StatusWatch> {
        if self.etcd.tls().is_some() {
            return Err(FleetLabError::Other(
                "watch_statuses: the store has TLS; read statuses with agent_statuses".into(),
            ));
        }
        let mut cmd = self.lab.command("store", crate::etcd::ETCDCTL);
        for (key, _) in std::env::vars_os() {
            // A developer's ETCDCTL_* settings would clash with the flags.
            if key.to_string_lossy().starts_with("ETCDCTL_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("ETCDCTL_API", "3")
            .args([
                "--endpoints=http://127.0.0.1:2379",
                "watch",
                "--prefix",
                "--rev=1",
                xdpkit::fleet::keys::STATUS,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().map_err(|source| LabError::Io {
            what: format!("start {cmd:?}"),
            source,
        })?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| FleetLabError::Other("etcdctl watch: no stdout".into()))?;
        let events: Arc<(Mutex<Vec<Stamped>>, Condvar)> = Arc::default();
        let shared = Arc::clone(&events);
        // Events come as three lines: PUT or DELETE, the key, the value.
        let reader = std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout)
                .lines()
                .map_while(std::io::Result::ok);
            while let Some(kind) = lines.next() {
                let (Some(_key), Some(value)) = (lines.next(), lines.next()) else {
                    break;
                };
                let at = Instant::now();
                if kind != "PUT" {
                    continue;
                }
                if let Ok(status) = serde_json::from_str::<AgentStatus>(&value) {
                    let (events, arrived) = &*shared;
                    events
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push((at, status));
                    arrived.notify_all();
                }
            }
        });
        Ok(StatusWatch {
            child,
            events,
            reader: Some(reader),
        })
    }
}

impl Drop for FleetLab {
    fn drop(&mut self) {
        for i in 0..self.hosts.len() {
            self.stop_agent(i);
        }
        for host in self.hosts {
            let _ = self.on_host(host, &["detach", "--dev", DEV]).output();
            // Pins of a host whose detach failed would outlive the lab.
            if let Ok(dir) = PinDir::under(&self.pin_root(host), DEV) {
                if let Err(e) = dir.remove() {
                    tracing::warn!("fleet lab cleanup: {e}");
                }
            }
        }
    }
}

/// The `xdpkit` binary for an example (the fleet's benchmark and demo):
/// `XDPKIT_BIN` (`cargo xtask` builds it and sets this), else the
/// workspace's release build if there is one.
pub fn xdpkit_bin() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("XDPKIT_BIN").filter(|b| !b.is_empty()) {
        return Ok(PathBuf::from(bin));
    }
    let release = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/xdpkit");
    if release.exists() {
        return Ok(release);
    }
    Err(FleetLabError::Other(
        "no xdpkit binary: run this through `cargo xtask`, or set XDPKIT_BIN".into(),
    ))
}

/// Whether status `s` has read layer content `id` with outcome `outcome`
/// (`ok`: applied or unchanged).
pub fn runs(s: &AgentStatus, id: &str, outcome: &str) -> bool {
    let fits = if outcome == "ok" {
        s.outcome == "applied" || s.outcome == "unchanged"
    } else {
        s.outcome == outcome
    };
    fits && s.seen.iter().any(|l| l.id == id)
}

/// The store's address on host `i`'s link, and the host's.
fn link_addrs(net: u8, i: usize) -> (Ipv4Addr, Ipv4Addr) {
    let at = |host: usize| Ipv4Addr::new(198, 18, net, (4 * i + host) as u8);
    (at(1), at(2))
}

/// A firewall layer for every host's [`DEV`] (native mode): `default`
/// (`pass` or `drop`: frames no rule matches), then `rules` (as `xdpkit
/// rule add` takes them, e.g. `deny src 198.18.1.0/24`), then `extra` lines
/// of the firewall's table (e.g. `rules-file = "block.rules"`).
pub fn firewall_layer(default: &str, rules: &[impl AsRef<str>], extra: &str) -> String {
    let rules: Vec<String> = rules
        .iter()
        .map(|r| format!("\"{}\"", r.as_ref()))
        .collect();
    format!(
        "[interfaces.{DEV}]\nmode = \"native\"\nstages = [\"firewall\"]\n[interfaces.{DEV}.firewall]\ndefault = \"{default}\"\nrules = [{}]\n{extra}",
        rules.join(", ")
    )
}

fn checked(cmd: &mut Command) -> Result<String> {
    let line = format!("{cmd:?}").replace('"', "");
    let out = cmd.output().map_err(|source| LabError::Io {
        what: format!("run {line}"),
        source,
    })?;
    success(&line, out)
}

fn success(command: &str, out: Output) -> Result<String> {
    if !out.status.success() {
        return Err(FleetLabError::Xdpkit {
            command: command.to_string(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    String::from_utf8(out.stdout)
        .map_err(|_| FleetLabError::Other(format!("{command}: output is not UTF-8")))
}

fn json(text: &str) -> Result<Value> {
    serde_json::from_str(text).map_err(|e| FleetLabError::Other(format!("not JSON ({e}): {text}")))
}
