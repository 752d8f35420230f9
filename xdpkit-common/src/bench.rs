//! The bench program's settings, shared by the kernel program and the loader.

/// Array map with one [`BenchConfig`] at index 0.
pub const BENCH_CONFIG: &str = "XDPKIT_BENCH_CFG";
/// DEVMAP with the `redirect` target at index 0.
pub const BENCH_DEVMAP: &str = "XDPKIT_BENCH_DEV";
/// CPUMAP for `redirect-cpu`, indexed by CPU.
pub const BENCH_CPUMAP: &str = "XDPKIT_BENCH_CPU";
/// CPUs the CPUMAP can address.
pub const BENCH_MAX_CPUS: u32 = 256;

/// [`BenchConfig::action`]: drop every frame.
pub const BENCH_DROP: u32 = 0;
/// Pass every frame to the stack.
pub const BENCH_PASS: u32 = 1;
/// Send every frame back out of its interface.
pub const BENCH_TX: u32 = 2;
/// Redirect every frame to the interface in [`BENCH_DEVMAP`].
pub const BENCH_REDIRECT: u32 = 3;
/// Redirect every frame to [`BenchConfig::cpu`] through [`BENCH_CPUMAP`].
pub const BENCH_REDIRECT_CPU: u32 = 4;

/// [`BenchConfig::touch`]: look at no packet byte.
pub const TOUCH_NONE: u32 = 0;
/// Read the Ethernet header.
pub const TOUCH_READ: u32 = 1;
/// Parse Ethernet and the IPv4 or IPv6 header.
pub const TOUCH_PARSE_IP: u32 = 2;
/// Swap the MAC addresses (a write).
pub const TOUCH_SWAP_MACS: u32 = 3;

/// What `xdpkit_bench` does with each frame.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BenchConfig {
    /// `BENCH_*`.
    pub action: u32,
    /// `TOUCH_*`.
    pub touch: u32,
    /// Target CPU of [`BENCH_REDIRECT_CPU`].
    pub cpu: u32,
    /// Padding, zero.
    pub _pad: u32,
}

// SAFETY: plain old data, `#[repr(C)]`, no padding (four u32).
#[cfg(feature = "user")]
unsafe impl aya::Pod for BenchConfig {}
