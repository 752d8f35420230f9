//! A real etcd server for tests: Debian's `etcd-server` (installed by
//! `cargo xtask bootstrap`) run as a child process on 127.0.0.1, on free
//! ports, with its own data directory, removed again when dropped.
//!
//! A server can be stopped and started again on the same ports and data,
//! so a test can watch clients lose etcd and find it again with its keys
//! and revisions intact.
//!
//! etcd 3.4 defaults apply: requests up to 1.5 MiB (`--max-request-bytes`),
//! a 2 GiB backend quota, no auto-compaction.

use std::{
    fs::File,
    io::{Read as _, Seek as _, SeekFrom},
    net::{Ipv4Addr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// The server binary, from Debian's `etcd-server`.
pub const ETCD: &str = "/usr/bin/etcd";
/// The client, from Debian's `etcd-client`.
pub const ETCDCTL: &str = "/usr/bin/etcdctl";

/// How long a start may take before it counts as failed. A single member
/// elects itself in about a second; the rest is slack for a busy machine.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long etcd gets to exit on SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Between health probes while starting, and exit checks while stopping.
const POLL: Duration = Duration::from_millis(50);
/// Fresh port pairs tried when another process takes a port between
/// choosing it and etcd binding it.
const PORT_ATTEMPTS: u32 = 5;
/// Lines of etcd's log shown in an error.
const LOG_TAIL_LINES: usize = 30;
/// Raft timing in ms (defaults 100 and 1000), kept at etcd's 1:10 ratio.
const HEARTBEAT_INTERVAL: &str = "--heartbeat-interval=25";
const ELECTION_TIMEOUT: &str = "--election-timeout=250";
/// For the plain TCP check before each health probe.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// etcdctl's own bounds, so a call on a dead or stuck server returns.
const ETCDCTL_DIAL_TIMEOUT: &str = "--dial-timeout=1s";
const ETCDCTL_COMMAND_TIMEOUT: &str = "--command-timeout=5s";
const PROBE_COMMAND_TIMEOUT: &str = "--command-timeout=1s";

/// A failed etcd step.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// A name etcd would not accept in `--initial-cluster`.
    #[error("etcd: invalid server name {0:?}: use letters, digits, '-' and '_'")]
    InvalidName(String),
    /// A file, socket or process operation failed.
    #[error("etcd {name}: {what}: {source}")]
    Io {
        /// The server's name.
        name: String,
        /// What was attempted.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// etcd exited while starting.
    #[error("etcd {name}: exited while starting ({status}); {log}")]
    Exited {
        /// The server's name.
        name: String,
        /// How it exited.
        status: std::process::ExitStatus,
        /// What it logged.
        log: Box<LogTail>,
    },
    /// etcd did not become healthy in time.
    #[error(
        "etcd {name}: not healthy at {endpoint} after {waited:.1?} (last probe: {probe}); {log}"
    )]
    NotServing {
        /// The server's name.
        name: String,
        /// The client URL probed.
        endpoint: String,
        /// How long it waited.
        waited: Duration,
        /// What the last `etcdctl endpoint health` said.
        probe: String,
        /// What it logged.
        log: Box<LogTail>,
    },
    /// The server is stopped.
    #[error("etcd {0}: not running")]
    NotRunning(String),
    /// An etcdctl command failed.
    #[error("etcd {name}: `etcdctl {args}` failed: {stderr}")]
    Etcdctl {
        /// The server's name.
        name: String,
        /// Its arguments.
        args: String,
        /// What it printed on stderr (or why it did not start).
        stderr: String,
    },
    /// The lab's certificates could not be made.
    #[error("etcd {name}: cannot make TLS certificates: {why}")]
    Certificate {
        /// The server's name.
        name: String,
        /// rcgen's error.
        why: String,
    },
}

/// The PEM files of a server started with [`EtcdServer::start_in_tls`],
/// made for it by the lab (a CA of its own; rcgen's default validity) in its
/// directory.
#[derive(Clone, Debug)]
pub struct EtcdTls {
    /// The CA that signed the server's and the client's certificates.
    pub ca: PathBuf,
    /// The server's certificate (for 127.0.0.1 and the address it listens
    /// on) and its key.
    pub server_cert: PathBuf,
    /// See `server_cert`.
    pub server_key: PathBuf,
    /// A client certificate the server accepts (CN `client`) and its key.
    pub client_cert: PathBuf,
    /// See `client_cert`.
    pub client_key: PathBuf,
}

/// etcd's log file and what it wrote during one start, for errors.
#[derive(Debug)]
pub struct LogTail {
    /// The log file (kept until the server is dropped).
    pub path: PathBuf,
    /// Its last lines from this start.
    pub lines: String,
}

impl std::fmt::Display for LogTail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "log {}:\n{}", self.path.display(), self.lines)
    }
}

/// Whether a test that needs etcd may run: true if the binaries are
/// installed; otherwise under CI (`CI=true`) it panics, and on a laptop it
/// says it skips.
pub fn require_etcd(test: &str) -> bool {
    if Path::new(ETCD).exists() && Path::new(ETCDCTL).exists() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test} needs etcd under CI ({ETCD} and {ETCDCTL}): run `cargo xtask bootstrap`");
    }
    println!("{test}: skipped: needs etcd (cargo xtask bootstrap installs it)");
    false
}

/// One etcd member serving on 127.0.0.1; killed, and its data removed, on
/// drop.
pub struct EtcdServer {
    name: String,
    /// The network namespace it serves in (`None`: this process's).
    netns: Option<String>,
    /// The address it listens on.
    host: Ipv4Addr,
    client_port: u16,
    peer_port: u16,
    // Dropped after the child is killed (see Drop), which removes the data.
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Client TLS (https, client certificates required), if started so.
    tls: Option<EtcdTls>,
    /// `NAME:PASSWORD` for etcdctl once authentication is on.
    etcdctl_user: Option<String>,
}

impl std::fmt::Debug for EtcdServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdServer")
            .field("name", &self.name)
            .field("endpoint", &self.endpoint())
            .field("pid", &self.pid())
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl EtcdServer {
    /// Starts a one-member cluster named `name` on two free ports and
    /// returns once `etcdctl endpoint health` succeeds (at most 20 s).
    ///
    /// # Errors
    /// A bad name, no temporary directory, etcd failing to start or to
    /// become healthy (with the tail of its log).
    pub fn start(name: &str) -> Result<Self, EtcdError> {
        let mut server = Self::start_nowhere(name)?;
        let mut attempt = 1;
        loop {
            (server.client_port, server.peer_port) = free_port_pair(name)?;
            match server.spawn_and_wait() {
                Ok(()) => return Ok(server),
                // Someone took a port after we released it: pick others.
                Err(EtcdError::Exited { ref log, .. })
                    if attempt < PORT_ATTEMPTS && log.lines.contains("address already in use") =>
                {
                    tracing::debug!("etcd {name}: port taken, retrying");
                    attempt += 1;
                    // etcd binds before it writes data, but a half-made
                    // member directory would pin the old peer URL.
                    let data = server.dir.path().join("data");
                    if data.exists() {
                        std::fs::remove_dir_all(&data)
                            .map_err(io_error(name, format!("remove {}", data.display())))?;
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Starts a one-member cluster inside network namespace `netns` (a
    /// lab's: /var/run/netns/NETNS), listening on `host` there with etcd's
    /// own ports (2379, 2380: a fresh namespace has them free), as a store
    /// on the lab's network that agents in other namespaces reach.
    ///
    /// # Errors
    /// As [`EtcdServer::start`].
    pub fn start_in(name: &str, netns: &str, host: Ipv4Addr) -> Result<Self, EtcdError> {
        let mut server = Self::start_nowhere(name)?;
        server.netns = Some(netns.to_string());
        server.host = host;
        (server.client_port, server.peer_port) = (2379, 2380);
        server.spawn_and_wait()?;
        Ok(server)
    }

    /// A server with its name checked and its directory made, not started.
    fn start_nowhere(name: &str) -> Result<Self, EtcdError> {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(EtcdError::InvalidName(name.to_string()));
        }
        let dir = tempfile::Builder::new()
            .prefix(&format!("xdpkit-etcd-{name}-"))
            .tempdir()
            .map_err(io_error(name, "create a data directory"))?;
        Ok(Self {
            name: name.to_string(),
            netns: None,
            host: Ipv4Addr::LOCALHOST,
            client_port: 0,
            peer_port: 0,
            dir,
            child: None,
            tls: None,
            etcdctl_user: None,
        })
    }

    /// As [`EtcdServer::start_in`], with client TLS: the server speaks
    /// https only and asks every client for a certificate signed by the
    /// lab's CA (see [`EtcdServer::tls`] for the files).
    ///
    /// # Errors
    /// As [`EtcdServer::start`], and certificates that cannot be made.
    pub fn start_in_tls(name: &str, netns: &str, host: Ipv4Addr) -> Result<Self, EtcdError> {
        let mut server = Self::start_nowhere(name)?;
        server.netns = Some(netns.to_string());
        server.host = host;
        (server.client_port, server.peer_port) = (2379, 2380);
        server.tls = Some(make_certificates(name, server.dir.path(), host)?);
        server.spawn_and_wait()?;
        Ok(server)
    }

    /// The TLS files, for a server started with [`EtcdServer::start_in_tls`].
    pub fn tls(&self) -> Option<&EtcdTls> {
        self.tls.as_ref()
    }

    /// Turns etcd's authentication on: adds user `root` with
    /// `root_password` (etcd needs it before `auth enable`) and from then
    /// on runs etcdctl as root. Users and roles for clients are the
    /// caller's (`etcdctl user add`, `role grant-permission`, ...), made
    /// before or after.
    ///
    /// # Errors
    /// An etcdctl command failed.
    pub fn enable_auth(&mut self, root_password: &str) -> Result<(), EtcdError> {
        self.etcdctl(&[
            "user",
            "add",
            "root",
            &format!("--new-user-password={root_password}"),
        ])?;
        self.etcdctl(&["auth", "enable"])?;
        self.etcdctl_user = Some(format!("root:{root_password}"));
        Ok(())
    }

    /// The client URL, `http://ADDRESS:PORT` (`https` with TLS).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}:{}", self.host, self.client_port)
    }

    /// `program`, run in the server's network namespace.
    fn command(&self, program: &str) -> Command {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/var/run/netns/{ns}")).arg(program);
                c
            }
            None => Command::new(program),
        };
        clear_etcd_env(&mut cmd);
        cmd
    }

    /// The member's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id, from start until stop (also if it exited meanwhile).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The temporary directory holding the data (`data/`) and the log
    /// (`etcd.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// etcd's stdout and stderr, appended to across restarts.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    /// Whether the process is alive (it may have exited on its own).
    pub fn is_running(&self) -> bool {
        let Some(pid) = self.pid() else {
            return false;
        };
        // Not reaped until stop() or start_again(), so the pid is still
        // ours; an exited child is a zombie ('Z') until then.
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state != "Z" && state != "X")
        })
    }

    /// Stops etcd (SIGTERM, SIGKILL after 5 s) and reaps it; the data stays
    /// for [`EtcdServer::start_again`]. Stopping a stopped server does
    /// nothing.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: kill has no memory effects; the child is not reaped
            // yet, so the pid is still ours.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(POLL);
        }
        tracing::warn!(
            "etcd {}: no exit {STOP_GRACE:?} after SIGTERM, killing",
            self.name
        );
        // SIGKILL cannot be ignored, so this wait ends.
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts etcd again on the same ports and data (keys and revisions
    /// kept) and waits until it is healthy. Does nothing if it runs.
    ///
    /// # Errors
    /// As [`EtcdServer::start`]; a port that another process took meanwhile
    /// is an error here (the endpoint must not change).
    pub fn start_again(&mut self) -> Result<(), EtcdError> {
        if self.is_running() {
            return Ok(());
        }
        // Exited on its own: reap it (immediate) before starting anew.
        self.stop();
        self.spawn_and_wait()
    }

    /// Runs `etcdctl` (API v3) against this server and returns its stdout.
    ///
    /// # Errors
    /// The server is stopped, or etcdctl failed (its stderr).
    pub fn etcdctl(&self, args: &[&str]) -> Result<String, EtcdError> {
        if self.child.is_none() {
            return Err(EtcdError::NotRunning(self.name.clone()));
        }
        let out = self
            .etcdctl_command(ETCDCTL_COMMAND_TIMEOUT)
            .args(args)
            .output()
            .map_err(|e| EtcdError::Etcdctl {
                name: self.name.clone(),
                args: args.join(" "),
                stderr: format!("cannot run {ETCDCTL}: {e}"),
            })?;
        if !out.status.success() {
            return Err(EtcdError::Etcdctl {
                name: self.name.clone(),
                args: args.join(" "),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Whether the client port accepts connections and `etcdctl endpoint
    /// health` succeeds (within about 2 s).
    /// Also answers for a stopped server: its endpoint then refuses.
    pub fn healthy(&self) -> bool {
        self.probe().is_ok()
    }

    fn probe(&self) -> Result<(), String> {
        // etcdctl keeps redialling a refused port for its whole dial timeout;
        // a plain connect answers that case at once (from this namespace).
        let addr = (self.host, self.client_port).into();
        if self.netns.is_none() {
            if let Err(e) = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                return Err(format!("connect {addr}: {e}"));
            }
        }
        let out = self
            .etcdctl_command(PROBE_COMMAND_TIMEOUT)
            .args(["endpoint", "health"])
            .output()
            .map_err(|e| format!("cannot run {ETCDCTL}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let stdout = String::from_utf8_lossy(&out.stdout);
            Err(format!("{} {}", stdout.trim(), stderr.trim())
                .trim()
                .to_string())
        }
    }

    fn etcdctl_command(&self, command_timeout: &str) -> Command {
        let mut cmd = self.command(ETCDCTL);
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint()))
            .args([ETCDCTL_DIAL_TIMEOUT, command_timeout])
            .stdin(Stdio::null());
        if let Some(tls) = &self.tls {
            cmd.arg(format!("--cacert={}", tls.ca.display()))
                .arg(format!("--cert={}", tls.client_cert.display()))
                .arg(format!("--key={}", tls.client_key.display()));
        }
        if let Some(user) = &self.etcdctl_user {
            cmd.arg(format!("--user={user}"));
        }
        cmd
    }

    /// Spawns etcd with this server's ports and data and waits for health;
    /// on failure the process is stopped again.
    fn spawn_and_wait(&mut self) -> Result<(), EtcdError> {
        let name = self.name.clone();
        let log_path = self.log_path();
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io_error(&name, format!("open {}", log_path.display())))?;
        let log_start = log
            .metadata()
            .map_err(io_error(&name, format!("stat {}", log_path.display())))?
            .len();
        let log_err = log
            .try_clone()
            .map_err(io_error(&name, format!("dup {}", log_path.display())))?;
        let client = self.endpoint();
        let peer = format!("http://{}:{}", self.host, self.peer_port);
        let mut cmd = self.command(ETCD);
        cmd.arg(format!("--name={name}"))
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster={name}={peer}"))
            .arg(format!("--initial-cluster-token=xdpkit-lab-{name}"))
            .arg("--initial-cluster-state=new")
            // A lone member waits one election timeout (default 1 s) before it
            // leads and serves; a shorter one makes each start and restart
            // that much faster. Nothing can out-vote a single member.
            .args([HEARTBEAT_INTERVAL, ELECTION_TIMEOUT])
            // zap: the capnslog default prints a deprecation warning per start.
            .args(["--logger=zap", "--log-outputs=stderr"])
            .args(self.tls.iter().flat_map(|t| {
                [
                    format!("--cert-file={}", t.server_cert.display()),
                    format!("--key-file={}", t.server_key.display()),
                    format!("--trusted-ca-file={}", t.ca.display()),
                    "--client-cert-auth".to_string(),
                ]
            }))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        let child = cmd
            .spawn()
            .map_err(io_error(&name, format!("start {ETCD}")))?;
        self.child = Some(child);
        let result = self.wait_healthy(log_start);
        if result.is_err() {
            self.stop();
        }
        result
    }

    fn wait_healthy(&mut self, log_start: u64) -> Result<(), EtcdError> {
        let start = Instant::now();
        let mut probe = String::from("not probed yet");
        while start.elapsed() < START_TIMEOUT {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(EtcdError::Exited {
                    name: self.name.clone(),
                    status,
                    log: self.log_tail(log_start),
                });
            }
            match self.probe() {
                Ok(()) => {
                    tracing::debug!(
                        "etcd {}: healthy at {} after {:?}",
                        self.name,
                        self.endpoint(),
                        start.elapsed()
                    );
                    return Ok(());
                }
                Err(e) => probe = e,
            }
            std::thread::sleep(POLL);
        }
        Err(EtcdError::NotServing {
            name: self.name.clone(),
            endpoint: self.endpoint(),
            waited: start.elapsed(),
            probe,
            log: self.log_tail(log_start),
        })
    }

    /// The last lines etcd logged since `from` (this start's lines only).
    fn log_tail(&self, from: u64) -> Box<LogTail> {
        let path = self.log_path();
        let mut text = String::new();
        let read = File::open(&path).and_then(|mut f| {
            f.seek(SeekFrom::Start(from))?;
            f.read_to_string(&mut text)
        });
        let lines = match read {
            Ok(_) => {
                let all: Vec<&str> = text.lines().collect();
                all[all.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
            }
            Err(e) => format!("(cannot read it: {e})"),
        };
        Box::new(LogTail { path, lines })
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
        // `dir` (a TempDir) is removed when the fields drop, after this.
    }
}

/// A CA, a server certificate for 127.0.0.1 and `host`, and a client
/// certificate (CN `client`), written as PEM files under `dir/tls`.
fn make_certificates(name: &str, dir: &Path, host: Ipv4Addr) -> Result<EtcdTls, EtcdError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let cert_error = |e: rcgen::Error| EtcdError::Certificate {
        name: name.to_string(),
        why: e.to_string(),
    };
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls).map_err(io_error(name, format!("create {}", tls.display())))?;
    let write = |file: &str, pem: String| -> Result<PathBuf, EtcdError> {
        let path = tls.join(file);
        std::fs::write(&path, pem).map_err(io_error(name, format!("write {}", path.display())))?;
        Ok(path)
    };
    let ca_key = KeyPair::generate().map_err(cert_error)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(cert_error)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("xdpkit lab CA {name}"));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca_params.self_signed(&ca_key).map_err(cert_error)?;
    // IP strings become IP address SANs, which TLS clients check.
    let leaf = |sans: Vec<String>, cn: &str, usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().map_err(cert_error)?;
        let mut p = CertificateParams::new(sans).map_err(cert_error)?;
        p.distinguished_name.push(DnType::CommonName, cn);
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![usage];
        let cert = p.signed_by(&key, &ca, &ca_key).map_err(cert_error)?;
        Ok::<_, EtcdError>((cert.pem(), key.serialize_pem()))
    };
    let (server_cert, server_key) = leaf(
        vec!["127.0.0.1".to_string(), host.to_string()],
        "etcd",
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    let (client_cert, client_key) =
        leaf(Vec::new(), "client", ExtendedKeyUsagePurpose::ClientAuth)?;
    Ok(EtcdTls {
        ca: write("ca.pem", ca.pem())?,
        server_cert: write("server.pem", server_cert)?,
        server_key: write("server-key.pem", server_key)?,
        client_cert: write("client.pem", client_cert)?,
        client_key: write("client-key.pem", client_key)?,
    })
}

/// Settings a developer's shell may carry (ETCD_*, ETCDCTL_*) would change
/// what the test server does; etcd also refuses a flag given twice.
fn clear_etcd_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let key_str = key.to_string_lossy();
        if key_str.starts_with("ETCD_") || key_str.starts_with("ETCDCTL_") {
            cmd.env_remove(&key);
        }
    }
}

/// Two distinct ports the kernel had free a moment ago. Both listeners are
/// held together so the kernel cannot hand out the same port twice.
fn free_port_pair(name: &str) -> Result<(u16, u16), EtcdError> {
    let bind =
        || TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io_error(name, "bind a free port"));
    let (a, b) = (bind()?, bind()?);
    let port = |l: &TcpListener| {
        l.local_addr()
            .map(|addr| addr.port())
            .map_err(io_error(name, "read a bound port"))
    };
    Ok((port(&a)?, port(&b)?))
}

fn io_error(name: &str, what: impl Into<String>) -> impl FnOnce(std::io::Error) -> EtcdError {
    let (name, what) = (name.to_string(), what.into());
    move |source| EtcdError::Io { name, what, source }
}
