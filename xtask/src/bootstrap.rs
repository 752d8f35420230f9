//! Idempotent installer for everything the build and tests need (see
//! ../shared/TOOLCHAIN.md, the checked recipe).

use std::{path::Path, process::Command, time::Instant};

use anyhow::{bail, ensure, Context as _};

use crate::util;

/// Debian packages: the eBPF compiler (rustc-web + core for bpfel), LLVM 22
/// for bpf-linker, and the network tools tests and benchmarks use.
const PACKAGES: &[&str] = &[
    "rustc-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "iproute2",
    "ethtool",
    "util-linux",
    "bpftool",
    "xdp-tools",
    "nftables",
    "tcpdump",
    "iputils-ping",
    "fonts-dejavu-core",
    // The C anchors of `cargo xtask bench firewall` (../shared/perf/anchors).
    "clang-14",
    "libbpf-dev",
    // Fleet tests run a real etcd (`xdpkit_lab::etcd`); the etcd-client
    // crate compiles its protobufs with protoc, and they import
    // google/protobuf/descriptor.proto, which only libprotobuf-dev ships
    // (a Recommends of protobuf-compiler, so not installed by default here).
    "etcd-server",
    "etcd-client",
    "protobuf-compiler",
    "libprotobuf-dev",
];

/// bpf-linker release known to build against Debian's LLVM 22.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Installs what is missing; prints one line per check.
pub fn run() -> anyhow::Result<()> {
    let start = Instant::now();
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    for p in PACKAGES.iter().filter(|p| !missing.contains(p)) {
        eprintln!("ok: {p}");
    }
    if !missing.is_empty() {
        require_root(&format!("install {}", missing.join(" ")))?;
        util::run(Command::new("apt-get").args(["update", "-q"]))?;
        // etcd-server's postinst starts a system etcd on 127.0.0.1:2379
        // (invoke-rc.d, or deb-systemd-invoke under systemd); both ask
        // policy-rc.d first, so one that says no keeps it from starting.
        let _no_services = ServiceStartsDenied::install()?;
        util::run(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&missing),
        )?;
        let still: Vec<&str> = missing.iter().copied().filter(|p| !installed(p)).collect();
        ensure!(
            still.is_empty(),
            "apt-get left these uninstalled: {}",
            still.join(" ")
        );
    }

    quiet_system_etcd()?;

    if util::succeeds(Command::new("bpf-linker").arg("--version")) {
        eprintln!("ok: bpf-linker");
    } else {
        eprintln!(
            "installing bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about 3 minutes, once)"
        );
        util::run(
            util::cargo(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
                .args(["--no-default-features", "--features", "llvm-22"])
                .env("LLVM_PREFIX", "/usr/lib/llvm-22"),
        )?;
        ensure!(
            util::succeeds(Command::new("bpf-linker").arg("--version")),
            "bpf-linker was installed but is not on PATH: add ~/.cargo/bin to PATH"
        );
    }

    if bpffs_mounted() {
        eprintln!("ok: bpffs at /sys/fs/bpf");
    } else {
        require_root("mount bpffs at /sys/fs/bpf")?;
        util::run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
    }
    eprintln!("bootstrap: ready in {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}

/// Where invoke-rc.d and deb-systemd-invoke look for a local policy.
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

/// Marks a policy-rc.d as the bootstrap's, so a run that was interrupted
/// before removing it is cleaned up by the next one.
const POLICY_MARK: &str = "# written by cargo xtask bootstrap";

/// A policy-rc.d that denies every service start while apt-get runs,
/// removed on drop. One that someone else wrote (Docker images ship one
/// that exits 101) is left alone.
struct ServiceStartsDenied {
    ours: bool,
}

impl ServiceStartsDenied {
    fn install() -> anyhow::Result<Self> {
        use std::os::unix::fs::PermissionsExt as _;
        match std::fs::read_to_string(POLICY_RC_D) {
            Ok(text) if !text.contains(POLICY_MARK) => return Ok(Self { ours: false }),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("read {POLICY_RC_D}")),
        }
        std::fs::write(POLICY_RC_D, format!("#!/bin/sh\n{POLICY_MARK}\nexit 101\n"))
            .with_context(|| format!("write {POLICY_RC_D}"))?;
        std::fs::set_permissions(POLICY_RC_D, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod {POLICY_RC_D}"))?;
        Ok(Self { ours: true })
    }
}

impl Drop for ServiceStartsDenied {
    fn drop(&mut self) {
        if self.ours {
            if let Err(e) = std::fs::remove_file(POLICY_RC_D) {
                eprintln!("warning: cannot remove {POLICY_RC_D}: {e}");
            }
        }
    }
}

/// Tests start their own etcd on free ports; a system one (enabled for boot
/// by etcd-server's postinst, or started by hand) would hold 127.0.0.1:2379
/// and its data in /var/lib/etcd. Disables it and stops it if running.
///
/// Seen on the project's VM (2026-12-02; PID 1 is not systemd, and the image
/// ships Docker's policy-rc.d, `exit 101`): installing etcd-server 3.4.23
/// printed "invoke-rc.d: policy-rc.d denied execution of start", started
/// nothing, and still enabled the service for boot (rc2-5.d/S01etcd and the
/// systemd wants symlink). Without a policy-rc.d, `/etc/init.d/etcd start`
/// runs etcd as user etcd on 127.0.0.1:2379 (tried by hand); this function
/// then stops it. `systemctl disable` works without a running systemd.
fn quiet_system_etcd() -> anyhow::Result<()> {
    if !installed("etcd-server") {
        return Ok(());
    }
    let systemd_running = Path::new("/run/systemd/system").is_dir();
    let has_systemctl = util::succeeds(Command::new("systemctl").arg("--version"));
    let enabled = sysv_start_links()
        || (has_systemctl
            && util::succeeds(Command::new("systemctl").args([
                "is-enabled",
                "--quiet",
                "etcd.service",
            ])));
    let running = if systemd_running {
        util::succeeds(Command::new("systemctl").args(["is-active", "--quiet", "etcd.service"]))
    } else {
        // init-d-script's status reads the pidfile the init script wrote.
        util::succeeds(Command::new("/etc/init.d/etcd").arg("status"))
    };
    if !enabled && !running {
        eprintln!("ok: no system etcd service (tests start their own)");
        return Ok(());
    }
    require_root("disable the system etcd service")?;
    if systemd_running {
        util::run(Command::new("systemctl").args(["disable", "--now", "etcd.service"]))?;
        return Ok(());
    }
    if enabled && has_systemctl {
        // Works without a running systemd, and runs `update-rc.d etcd
        // disable` for the SysV links as well.
        util::run(Command::new("systemctl").args(["disable", "etcd.service"]))?;
    } else if enabled {
        util::run(Command::new("update-rc.d").args(["etcd", "disable"]))?;
    }
    if running {
        // Not invoke-rc.d: a policy-rc.d that denies starts may deny stops too.
        util::run(Command::new("/etc/init.d/etcd").arg("stop"))?;
    }
    Ok(())
}

/// Whether a SysV runlevel would start etcd at boot.
fn sysv_start_links() -> bool {
    (2..=5).any(|level| {
        std::fs::read_dir(format!("/etc/rc{level}.d")).is_ok_and(|dir| {
            dir.flatten().any(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.starts_with('S') && name.ends_with("etcd")
            })
        })
    })
}

fn installed(package: &str) -> bool {
    util::stdout(Command::new("dpkg-query").args(["-W", "-f=${db:Status-Status}", package]))
        .is_some_and(|status| status.trim() == "installed")
}

fn bpffs_mounted() -> bool {
    std::fs::read_to_string("/proc/self/mounts").is_ok_and(|mounts| {
        mounts.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1) == Some(&"/sys/fs/bpf") && f.get(2) == Some(&"bpf")
        })
    }) && Path::new("/sys/fs/bpf").is_dir()
}

fn require_root(what: &str) -> anyhow::Result<()> {
    if !util::is_root() {
        bail!("bootstrap needs root to {what}: run `sudo -E cargo xtask ...`");
    }
    Ok(())
}
