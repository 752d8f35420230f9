//! What this kernel and a device can do with XDP (`xdpkit features`).

use std::path::Path;

use serde::Serialize;

use crate::{attach::supported_modes, iface, mode::SINGLE_PAGE_MTU, netlink, pins, Result};

/// What multi-buffer support (or its lack) means for a device, in words.
pub fn multi_buffer_text(multi_buffer: bool) -> String {
    if multi_buffer {
        "yes: frames larger than a page (jumbo MTUs) reach xdpkit's programs whole, in fragments"
            .to_string()
    } else {
        format!(
            "no: in native mode frames must fit one page, so the driver refuses XDP while the MTU is above {SINGLE_PAGE_MTU} (skb mode takes any MTU)"
        )
    }
}

/// Kernel-side facts that decide whether XDP works well here.
#[derive(Clone, Debug, Serialize)]
pub struct KernelFeatures {
    /// `uname -r`.
    pub release: String,
    /// BPF JIT: `on`, `off` or `on (debug)`, from /proc/sys/net/core/bpf_jit_enable.
    pub jit: String,
    /// Kernel BTF at /sys/kernel/btf/vmlinux.
    pub btf: bool,
    /// bpffs mounted at /sys/fs/bpf.
    pub bpffs: bool,
    /// AF_XDP sockets can be created.
    pub af_xdp: bool,
}

/// A device's XDP capabilities (netdev netlink family).
#[derive(Clone, Debug, Serialize)]
pub struct DeviceFeatures {
    /// Interface.
    pub iface: String,
    /// Its index.
    pub ifindex: u32,
    /// Feature flags set (`basic`, `redirect`, `ndo-xmit`, `xsk-zerocopy`, ...).
    pub xdp_features: Vec<&'static str>,
    /// XDP_PASS/DROP/TX/ABORTED in the driver.
    pub basic: bool,
    /// XDP_REDIRECT from this device.
    pub redirect: bool,
    /// Can be the target of XDP_REDIRECT (ndo_xdp_xmit).
    pub ndo_xmit: bool,
    /// AF_XDP zero-copy.
    pub zero_copy: bool,
    /// Multi-buffer (jumbo/scatter-gather) frames.
    pub multi_buffer: bool,
    /// Most fragments per zero-copy frame.
    pub zc_max_segs: u32,
    /// Modes `xdpkit attach --mode` accepts for this device.
    pub modes: Vec<&'static str>,
    /// RX metadata the driver offers XDP programs (`timestamp`, `hash`,
    /// `vlan-tag`).
    pub rx_metadata: Vec<&'static str>,
    /// The flow hash the balancer uses on this device, and why.
    pub balancer_hash: &'static str,
}

/// What the balancer hashes new flows with on a device that offers (or
/// not) an RX hash: the driver's hash needs the RX-hash root
/// ([`crate::rx_hash`]), which attaches in driver mode only.
pub fn balancer_hash(offers_rx_hash: bool) -> &'static str {
    if offers_rx_hash {
        "the driver's RX hash (bpf_xdp_metadata_rx_hash, read by the RX-hash root) in native mode; the 5-tuple in skb mode, with flow-hash = \"tuple\", and for frames the driver has no hash for"
    } else {
        "the 5-tuple (the driver offers no RX hash)"
    }
}

/// Reads the kernel side.
pub fn kernel() -> KernelFeatures {
    let jit = match std::fs::read_to_string("/proc/sys/net/core/bpf_jit_enable")
        .map(|s| s.trim().to_string())
        .as_deref()
    {
        Ok("0") => "off".to_string(),
        Ok("1") => "on".to_string(),
        Ok("2") => "on (debug)".to_string(),
        Ok(other) => other.to_string(),
        // The knob exists only in the initial network namespace.
        Err(_) => jit_from_program(),
    };
    KernelFeatures {
        release: release(),
        jit,
        btf: Path::new("/sys/kernel/btf/vmlinux").exists(),
        bpffs: pins::bpffs_mounted(),
        af_xdp: af_xdp_available(),
    }
}

/// Reads a device's XDP features.
pub fn device(ifname: &str) -> Result<DeviceFeatures> {
    let ifindex = iface::index(ifname)?;
    let f = netlink::device_xdp_features(ifindex)?;
    Ok(DeviceFeatures {
        iface: ifname.to_string(),
        ifindex,
        xdp_features: f.names(),
        basic: f.basic(),
        redirect: f.redirect(),
        ndo_xmit: f.ndo_xmit(),
        zero_copy: f.zero_copy(),
        multi_buffer: f.multi_buffer(),
        zc_max_segs: f.zc_max_segs,
        modes: supported_modes(&f),
        rx_metadata: f.rx_metadata_names(),
        balancer_hash: balancer_hash(f.rx_hash()),
    })
}

/// Whether a freshly loaded program was JIT-compiled (needs CAP_BPF).
fn jit_from_program() -> String {
    if !crate::privilege::can_attach() {
        return "unknown (needs root to check)".to_string();
    }
    use crate::programs::Program as _;
    let pass = crate::programs::pass::Pass;
    let jitted = pass.object().load().ok().and_then(|mut ebpf| {
        let program = crate::object::program(&mut ebpf, pass.symbol(), pass.name()).ok()?;
        program.info().ok().map(|info| info.size_jitted() > 0)
    });
    match jitted {
        Some(true) => "on".to_string(),
        Some(false) => "off".to_string(),
        None => "unknown".to_string(),
    }
}

fn release() -> String {
    // SAFETY: utsname is plain data; uname fills it with NUL-terminated strings.
    unsafe {
        let mut uts: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut uts) != 0 {
            return "unknown".to_string();
        }
        std::ffi::CStr::from_ptr(uts.release.as_ptr())
            .to_string_lossy()
            .into_owned()
    }
}

fn af_xdp_available() -> bool {
    // SAFETY: socket() has no memory arguments; the fd is closed right away.
    let fd = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd >= 0 {
        // SAFETY: fd was just returned by socket() and is closed once.
        unsafe { libc::close(fd) };
        return true;
    }
    // EPERM: the family exists but this user lacks CAP_NET_RAW.
    std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_release_is_read() {
        let k = kernel();
        assert!(
            k.release.chars().next().unwrap().is_ascii_digit(),
            "{}",
            k.release
        );
    }
}
