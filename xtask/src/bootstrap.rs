//! Idempotent installer for everything the build and tests need (see
//! ../shared/TOOLCHAIN.md, the checked recipe).

use std::{path::Path, process::Command, time::Instant};

use anyhow::{bail, ensure};

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
