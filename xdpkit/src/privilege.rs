//! Whether this process may load and attach XDP programs.

use crate::{Error, Result};

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// The effective capability set of this process (`CapEff` in /proc/self/status).
fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// True if the process can attach XDP programs and use bpffs.
pub fn can_attach() -> bool {
    let caps = effective_caps();
    let has = |cap: u32| caps & (1u64 << cap) != 0;
    has(CAP_NET_ADMIN) && (has(CAP_BPF) || has(CAP_SYS_ADMIN))
}

/// Fails with [`Error::NotPrivileged`] unless [`can_attach`].
pub fn require(action: &'static str) -> Result<()> {
    if can_attach() {
        Ok(())
    } else {
        Err(Error::NotPrivileged { action })
    }
}
