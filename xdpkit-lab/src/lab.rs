//! Test hosts on this machine: network namespaces joined by veth pairs,
//! removed again when the [`Lab`] is dropped (also when a test panics).
//!
//! Only addresses in 198.18.0.0/15 and 2001:db8::/32 are accepted, and only
//! inside the lab's own namespaces.

use std::{
    ffi::OsStr,
    fs::File,
    net::{IpAddr, SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use xdpkit::{iface, pins::PinDir};

/// A failed lab step.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A command failed.
    #[error("lab: `{command}` failed: {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// What it printed on stderr (or why it did not start).
        stderr: String,
    },
    /// A name or address the lab refuses.
    #[error("lab: {0}")]
    Invalid(String),
    /// Entering a namespace or using a socket failed.
    #[error("lab: {what}: {source}")]
    Io {
        /// What was attempted.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LabError {
    let what = what.into();
    move |source| LabError::Io { what, source }
}

/// True if running as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Whether a privileged test may run: true as root; otherwise under CI
/// (`CI=true`) it panics, and on a laptop it says it skips.
pub fn require_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test} needs root under CI");
    }
    println!("{test}: skipped: needs root");
    false
}

struct Veth {
    a_ns: String,
    a_if: String,
    a_addr: Option<String>,
    b_ns: String,
    b_if: String,
    b_addr: Option<String>,
}

/// Describes a lab; [`LabBuilder::build`] creates it.
pub struct LabBuilder {
    prefix: String,
    namespaces: Vec<String>,
    veths: Vec<Veth>,
    gro: Vec<(String, String)>,
}

/// Network namespaces and veth pairs that exist until this is dropped.
pub struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    ifnames: Vec<String>,
}

impl Lab {
    /// A new lab whose namespaces are named `<prefix>-<ns>`.
    pub fn builder(prefix: &str) -> LabBuilder {
        LabBuilder {
            prefix: prefix.to_string(),
            namespaces: Vec::new(),
            veths: Vec::new(),
            gro: Vec::new(),
        }
    }

    /// Full name of namespace `ns`.
    pub fn ns_name(&self, ns: &str) -> String {
        format!("{}-{ns}", self.prefix)
    }

    /// `/var/run/netns/<full name>`.
    pub fn ns_path(&self, ns: &str) -> PathBuf {
        PathBuf::from("/var/run/netns").join(self.ns_name(ns))
    }

    /// Runs `f` on a thread inside namespace `ns`; sockets it opens stay there.
    pub fn run_in<T: Send>(&self, ns: &str, f: impl FnOnce() -> T + Send) -> Result<T, LabError> {
        let path = self.ns_path(ns);
        let file = File::open(&path).map_err(io_error(format!("open {}", path.display())))?;
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    // SAFETY: a valid namespace fd; setns affects only this thread.
                    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(LabError::Io {
                            what: format!("setns into {}", path.display()),
                            source: std::io::Error::last_os_error(),
                        });
                    }
                    Ok(f())
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// `nsenter --net=<ns path> <program>`, ready for arguments. (Not
    /// `ip netns exec`, which remounts /sys and hides /sys/fs/bpf.)
    pub fn command(&self, ns: &str, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.ns_path(ns).display()))
            .arg(program);
        cmd
    }

    /// Index of `ifname` inside `ns`.
    pub fn ifindex(&self, ns: &str, ifname: &str) -> Result<u32, LabError> {
        let name = ifname.to_string();
        self.run_in(ns, move || iface::index(&name))?
            .map_err(|e| LabError::Invalid(e.to_string()))
    }

    /// MAC address of `ifname` inside `ns`.
    pub fn mac(&self, ns: &str, ifname: &str) -> Result<[u8; 6], LabError> {
        let out = run(self
            .command(ns, "ip")
            .args(["-br", "link", "show", "dev", ifname]))?;
        // "<name> <state> <mac> <flags>"
        let mac = out
            .split_whitespace()
            .nth(2)
            .ok_or_else(|| LabError::Invalid(format!("no MAC in `{out}`")))?;
        xdpkit::iface::parse_mac(mac).ok_or_else(|| LabError::Invalid(format!("bad MAC {mac}")))
    }

    /// Makes `ip` in `ns` resolve to `mac` on `ifname` without ARP/ND, so
    /// traffic reaches an interface whose XDP program drops ARP replies.
    pub fn static_neighbor(
        &self,
        ns: &str,
        ifname: &str,
        ip: IpAddr,
        mac: [u8; 6],
    ) -> Result<(), LabError> {
        check_address(&ip)?;
        let mac = mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        run(self.command(ns, "ip").args([
            "neigh",
            "replace",
            &ip.to_string(),
            "lladdr",
            &mac,
            "dev",
            ifname,
            "nud",
            "permanent",
        ]))
        .map(drop)
    }

    /// Sends `count` UDP datagrams of `payload_len` bytes from `ns` to `dst`.
    /// Returns how many the kernel accepted; stops after 10 s whatever happens.
    pub fn send_udp(
        &self,
        ns: &str,
        dst: SocketAddr,
        count: u32,
        payload_len: usize,
    ) -> Result<u32, LabError> {
        check_address(&dst.ip())?;
        let deadline = Instant::now() + Duration::from_secs(10);
        self.run_in(ns, move || {
            let bind: SocketAddr = if dst.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
                .parse()
                .expect("literal");
            let socket = UdpSocket::bind(bind).map_err(io_error("bind sender"))?;
            let payload = vec![0xa5u8; payload_len];
            let mut sent = 0;
            while sent < count && Instant::now() < deadline {
                match socket.send_to(&payload, dst) {
                    Ok(_) => sent += 1,
                    // The socket buffer is full: give the receiver a moment.
                    Err(e)
                        if e.raw_os_error() == Some(libc::ENOBUFS)
                            || e.kind() == std::io::ErrorKind::WouldBlock =>
                    {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    Err(e) => return Err(io_error(format!("send to {dst}"))(e)),
                }
                if sent % 64 == 0 {
                    // Pace a little so a veth queue never overflows silently.
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
            Ok(sent)
        })?
    }

    /// Sends whole Ethernet frames out of `ifname` in `ns` through an
    /// AF_PACKET socket, as crafted (any source, any flags): each is its own
    /// skb, so nothing downstream can alter the next one. Returns how many
    /// the kernel accepted; stops after 10 s whatever happens.
    pub fn send_frames(&self, ns: &str, ifname: &str, frames: &[Vec<u8>]) -> Result<u32, LabError> {
        let ifindex = self.ifindex(ns, ifname)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        self.run_in(ns, move || {
            // SAFETY: plain socket(2); the fd is owned below.
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
            if fd < 0 {
                return Err(io_error("AF_PACKET socket")(std::io::Error::last_os_error()));
            }
            // SAFETY: a fresh fd nobody else owns; closed on drop.
            let socket =
                unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            // SAFETY: all-zero is a valid sockaddr_ll.
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = ifindex as i32;
            addr.sll_halen = 6;
            let mut sent = 0;
            for frame in frames {
                loop {
                    if Instant::now() >= deadline {
                        return Ok(sent);
                    }
                    addr.sll_addr[..6].copy_from_slice(&frame[..6.min(frame.len())]);
                    // SAFETY: frame and addr outlive the call; lengths are theirs.
                    let n = unsafe {
                        libc::sendto(
                            socket.as_raw_fd(),
                            frame.as_ptr().cast(),
                            frame.len(),
                            0,
                            (&addr as *const libc::sockaddr_ll).cast(),
                            std::mem::size_of::<libc::sockaddr_ll>() as u32,
                        )
                    };
                    if n >= 0 {
                        sent += 1;
                        if sent % 64 == 0 {
                            // Pace a little: a veth drops what overflows its peer's queue.
                            std::thread::sleep(Duration::from_micros(50));
                        }
                        break;
                    }
                    let e = std::io::Error::last_os_error();
                    // A full queue: give the receiver a moment.
                    if e.raw_os_error() == Some(libc::ENOBUFS)
                        || e.kind() == std::io::ErrorKind::WouldBlock
                    {
                        std::thread::sleep(Duration::from_micros(200));
                        continue;
                    }
                    return Err(io_error(format!("send a frame out of {ifname}"))(e));
                }
            }
            Ok(sent)
        })?
    }

    /// A UDP socket bound to `addr` inside `ns` that counts what arrives.
    pub fn udp_sink(&self, ns: &str, addr: SocketAddr) -> Result<UdpSink, LabError> {
        check_address(&addr.ip())?;
        let socket = self
            .run_in(ns, move || UdpSocket::bind(addr))?
            .map_err(io_error(format!("bind {addr}")))?;
        Ok(UdpSink { socket })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        // Pins of a deleted interface would otherwise outlive the lab.
        for ifname in &self.ifnames {
            if let Ok(dir) = PinDir::new(ifname) {
                if let Err(e) = dir.remove() {
                    tracing::warn!("lab cleanup: {e}");
                }
            }
        }
    }
}

impl LabBuilder {
    /// Adds namespace `ns`.
    pub fn namespace(mut self, ns: &str) -> Self {
        self.namespaces.push(ns.to_string());
        self
    }

    /// Adds a veth pair: `a_if` in `a_ns`, `b_if` in `b_ns`, with optional
    /// addresses such as `198.18.0.1/24` or `2001:db8::1/64`.
    pub fn veth(
        mut self,
        a_ns: &str,
        a_if: &str,
        a_addr: Option<&str>,
        b_ns: &str,
        b_if: &str,
        b_addr: Option<&str>,
    ) -> Self {
        self.veths.push(Veth {
            a_ns: a_ns.to_string(),
            a_if: a_if.to_string(),
            a_addr: a_addr.map(str::to_string),
            b_ns: b_ns.to_string(),
            b_if: b_if.to_string(),
            b_addr: b_addr.map(str::to_string),
        });
        self
    }

    /// Turns GRO on for `ifname` (a veth only delivers XDP_TX/REDIRECT
    /// frames to a peer with GRO or an XDP program). XDP_TX frames reach a
    /// peer with GRO alone late: they wait in its queue until other traffic
    /// wakes it (seen in `balancer_tcp`); a peer that must get them at once
    /// needs an XDP program (`xdpkit attach pass`).
    pub fn gro(mut self, ns: &str, ifname: &str) -> Self {
        self.gro.push((ns.to_string(), ifname.to_string()));
        self
    }

    fn validate(&self) -> Result<(), LabError> {
        for ns in &self.namespaces {
            let full = format!("{}-{ns}", self.prefix);
            if ns.is_empty()
                || full.len() > 64
                || !full
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(LabError::Invalid(format!("bad namespace name {full:?}")));
            }
        }
        let known = |ns: &String| self.namespaces.contains(ns);
        for v in &self.veths {
            for (ns, ifname, addr) in [(&v.a_ns, &v.a_if, &v.a_addr), (&v.b_ns, &v.b_if, &v.b_addr)]
            {
                if !known(ns) {
                    return Err(LabError::Invalid(format!(
                        "veth {ifname} names undeclared namespace {ns}"
                    )));
                }
                iface::validate_name(ifname).map_err(|e| LabError::Invalid(e.to_string()))?;
                if let Some(addr) = addr {
                    let ip = addr.split('/').next().unwrap_or_default();
                    let ip: IpAddr = ip
                        .parse()
                        .map_err(|_| LabError::Invalid(format!("bad address {addr}")))?;
                    check_address(&ip)?;
                }
            }
        }
        for (ns, ifname) in &self.gro {
            if !known(ns) {
                return Err(LabError::Invalid(format!(
                    "gro on {ifname} names undeclared namespace {ns}"
                )));
            }
        }
        Ok(())
    }

    /// Creates the namespaces and links, removing stale ones of the same
    /// names first. On failure everything made so far is removed.
    pub fn build(self) -> Result<Lab, LabError> {
        self.validate()?;
        let mut lab = Lab {
            prefix: self.prefix.clone(),
            namespaces: Vec::new(),
            ifnames: Vec::new(),
        };
        for ns in &self.namespaces {
            let full = lab.ns_name(ns);
            let _ = Command::new("ip").args(["netns", "del", &full]).output();
            run(Command::new("ip").args(["netns", "add", &full]))?;
            lab.namespaces.push(full);
            run(lab.command(ns, "ip").args(["link", "set", "lo", "up"]))?;
        }
        for v in &self.veths {
            lab.ifnames.push(v.a_if.clone());
            lab.ifnames.push(v.b_if.clone());
            let b_ns = lab.ns_name(&v.b_ns);
            run(lab.command(&v.a_ns, "ip").args([
                "link", "add", &v.a_if, "type", "veth", "peer", "name", &v.b_if, "netns", &b_ns,
            ]))?;
            for (ns, ifname, addr) in [(&v.a_ns, &v.a_if, &v.a_addr), (&v.b_ns, &v.b_if, &v.b_addr)]
            {
                if let Some(addr) = addr {
                    let mut cmd = lab.command(ns, "ip");
                    cmd.args(["addr", "add", addr, "dev", ifname]);
                    if addr.contains(':') {
                        cmd.arg("nodad");
                    }
                    run(&mut cmd)?;
                }
                // Frames leave with full checksums, as on a wire: a partial
                // (offloaded) checksum is never completed on XDP_TX/REDIRECT
                // paths and the receiver would count UdpInCsumErrors.
                run(lab.command(ns, "ethtool").args(["-K", ifname, "tx", "off"]))?;
                run(lab.command(ns, "ip").args(["link", "set", ifname, "up"]))?;
            }
        }
        for (ns, ifname) in &self.gro {
            run(lab.command(ns, "ethtool").args(["-K", ifname, "gro", "on"]))?;
        }
        Ok(lab)
    }
}

/// Counts datagrams arriving on a socket inside a lab namespace.
pub struct UdpSink {
    socket: UdpSocket,
}

impl UdpSink {
    /// Receives until `want` datagrams arrived, or nothing came for
    /// `quiet`, or `max_wait` passed; returns how many arrived.
    pub fn count(&self, want: u32, quiet: Duration, max_wait: Duration) -> u32 {
        let deadline = Instant::now() + max_wait;
        let mut buf = [0u8; 2048];
        let mut got = 0;
        while got < want {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero()
                || self
                    .socket
                    .set_read_timeout(Some(quiet.min(left).max(Duration::from_millis(1))))
                    .is_err()
            {
                break;
            }
            match self.socket.recv_from(&mut buf) {
                Ok(_) => got += 1,
                Err(_) => break,
            }
        }
        got
    }

    /// Makes the socket's receive buffer `bytes` large (SO_RCVBUFFORCE,
    /// past rmem_max: the tests run as root), so a burst the receiver is
    /// late for waits in the socket instead of being dropped. Frames
    /// built from XDP frames (a CPUMAP's) take a page each of it.
    pub fn set_recv_buffer(&self, bytes: u32) -> std::io::Result<()> {
        let value = bytes as libc::c_int;
        // SAFETY: setsockopt reads one c_int from the pointer given.
        let rc = unsafe {
            libc::setsockopt(
                self.socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&raw const value).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.socket
            .local_addr()
            .expect("bound socket has an address")
    }
}

/// Refuses any address outside the benchmark/documentation ranges.
fn check_address(ip: &IpAddr) -> Result<(), LabError> {
    let ok = match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            o[0] == 198 && (o[1] == 18 || o[1] == 19)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            s[0] == 0x2001 && s[1] == 0x0db8
        }
    };
    if ok {
        Ok(())
    } else {
        Err(LabError::Invalid(format!(
            "{ip} is outside 198.18.0.0/15 and 2001:db8::/32; labs use only those"
        )))
    }
}

fn run(cmd: &mut Command) -> Result<String, LabError> {
    let line = format!("{cmd:?}").replace('"', "");
    let out = cmd.output().map_err(|e| LabError::Command {
        command: line.clone(),
        stderr: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(LabError::Command {
            command: line,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn namespaces() -> String {
        run(Command::new("ip").args(["netns", "list"])).unwrap_or_default()
    }

    #[test]
    fn refuses_addresses_outside_the_lab_ranges() {
        for bad in [
            "10.0.0.1/24",
            "192.168.1.1/24",
            "8.8.8.8/32",
            "2001:db9::1/64",
        ] {
            let err = Lab::builder("xkl-bad")
                .namespace("a")
                .namespace("b")
                .veth("a", "xklbad0", Some(bad), "b", "xklbad1", None)
                .build();
            assert!(matches!(err, Err(LabError::Invalid(_))), "{bad} accepted");
        }
        check_address(&"198.19.255.1".parse().unwrap()).unwrap();
        check_address(&"2001:db8::1".parse().unwrap()).unwrap();
    }

    #[test]
    fn parses_macs() {
        assert_eq!(
            xdpkit::iface::parse_mac("02:00:0a:ff:00:01"),
            Some([2, 0, 10, 255, 0, 1])
        );
        assert_eq!(xdpkit::iface::parse_mac("02:00:0a:ff:00"), None);
    }

    #[test]
    fn datagrams_cross_a_veth_and_everything_goes_away() {
        if !require_root("datagrams_cross_a_veth_and_everything_goes_away") {
            return;
        }
        let lab = Lab::builder("xkl-udp")
            .namespace("a")
            .namespace("b")
            .veth(
                "a",
                "xkludp-a",
                Some("198.18.30.1/24"),
                "b",
                "xkludp-b",
                Some("198.18.30.2/24"),
            )
            .build()
            .unwrap();
        let dst: SocketAddr = "198.18.30.2:5000".parse().unwrap();
        let sink = lab.udp_sink("b", dst).unwrap();
        assert_eq!(sink.local_addr(), dst);
        assert_eq!(lab.send_udp("a", dst, 50, 64).unwrap(), 50);
        assert_eq!(
            sink.count(50, Duration::from_millis(500), Duration::from_secs(5)),
            50
        );
        let ip_json = run(lab
            .command("b", "ip")
            .args(["-j", "link", "show", "dev", "xkludp-b"]))
        .unwrap();
        let index = lab.ifindex("b", "xkludp-b").unwrap();
        assert!(
            ip_json.contains(&format!("\"ifindex\":{index}")),
            "{ip_json}"
        );
        let mac = lab.mac("b", "xkludp-b").unwrap();
        let mac_text = mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        assert!(ip_json.contains(&mac_text), "{ip_json} lacks {mac_text}");
        drop(lab);
        assert!(
            !namespaces().contains("xkl-udp-"),
            "namespaces left: {}",
            namespaces()
        );
    }

    #[test]
    fn failed_build_leaves_nothing() {
        if !require_root("failed_build_leaves_nothing") {
            return;
        }
        // The second veth's name clashes with the first in namespace a: ip fails.
        let err = Lab::builder("xkl-fail")
            .namespace("a")
            .namespace("b")
            .veth("a", "xklfail0", None, "b", "xklfail1", None)
            .veth("a", "xklfail0", None, "b", "xklfail2", None)
            .build();
        assert!(
            matches!(err, Err(LabError::Command { .. })),
            "second veth must fail"
        );
        assert!(
            !namespaces().contains("xkl-fail-"),
            "namespaces left: {}",
            namespaces()
        );
    }
}
