//! The `cpu` stage (CPUMAP): which CPU a frame goes to, shared by the
//! kernel program and the reference model so both hash alike.
//!
//! The stage hashes a frame's flow (IPv4 or IPv6 addresses, protocol, and
//! the TCP or UDP ports of a frame that is not a fragment) and redirects it
//! through [`CPU_MAP`] to `cpus[hash % count]` of its [`CpuConfig`]; a frame
//! that is not IP (or too short for its IP header) goes to `cpus[0]`. On
//! the target CPU the entry program counts it in [`CPU_RUN`] and passes it
//! to the stack or drops it ([`CpuConfig::then`]).

/// CPUMAP, indexed by CPU number.
pub const CPU_MAP: &str = "XDPKIT_CPUMAP";
/// Array with one [`CpuConfig`] at index 0.
pub const CPU_CONFIG: &str = "XDPKIT_CPU_CFG";
/// Per-CPU array of one `ActionCounter`: the frames the entry program ran
/// on each CPU (read per CPU).
pub const CPU_RUN: &str = "XDPKIT_CPU_RUN";
/// Per-CPU array of `ActionCounter`s indexed by target CPU: the frames the
/// stage sent to each (summed over CPUs).
pub const CPU_SENT: &str = "XDPKIT_CPU_SENT";
/// CPUs the stage can address: CPU numbers are below this.
pub const MAX_CPUS: u32 = 64;
/// The entry program's function (and kernel) name.
pub const CPU_ENTRY: &str = "xdpkit_cpu_run";

/// [`CpuConfig::then`]: pass the frame to the stack on the target CPU.
pub const THEN_PASS: u32 = 0;
/// Drop it on the target CPU (for benchmarks of the spreading alone).
pub const THEN_DROP: u32 = 1;

/// The stage's settings as the kernel program reads them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuConfig {
    /// CPUs in `cpus` (0: not configured, the stage passes every frame).
    pub count: u32,
    /// `THEN_*`.
    pub then: u32,
    /// The target CPUs, in the order the hash picks them.
    pub cpus: [u32; MAX_CPUS as usize],
}

impl Default for CpuConfig {
    fn default() -> CpuConfig {
        CpuConfig {
            count: 0,
            then: THEN_PASS,
            cpus: [0; MAX_CPUS as usize],
        }
    }
}

// SAFETY: plain old data, `#[repr(C)]`, no padding (u32s only).
#[cfg(feature = "user")]
unsafe impl aya::Pod for CpuConfig {}

/// Start value of [`flow_hash`].
pub const HASH_SEED: u32 = 0x2545_f491;

/// Mixes one 32-bit word into a flow hash (multiply and fold, as in
/// FxHash with a final shift: cheap in BPF, and every input bit reaches
/// the low bits that pick the CPU).
#[inline(always)]
pub const fn hash_word(hash: u32, word: u32) -> u32 {
    let h = (hash ^ word).wrapping_mul(0x9e37_79b1);
    h ^ (h >> 15)
}

/// The index into [`CpuConfig::cpus`] of a flow hash among `count` CPUs.
#[inline(always)]
pub const fn pick(hash: u32, count: u32) -> u32 {
    if count == 0 {
        0
    } else {
        hash % count
    }
}
