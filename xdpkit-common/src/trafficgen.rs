//! The traffic generator's settings, shared by the kernel program and the loader.

/// Array map with one [`GenConfig`] at index 0.
pub const GEN_CONFIG: &str = "XDPKIT_GEN_CFG";

/// How `xdpkit_gen` rewrites each frame before sending it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GenConfig {
    /// IPv4 source base, host byte order (`u32::from(Ipv4Addr)`).
    pub src_base: u32,
    /// Host bits of the source drawn at random per frame; 0 keeps the
    /// frame's own source.
    pub src_random: u32,
}

// SAFETY: plain old data, `#[repr(C)]`, no padding (two u32).
#[cfg(feature = "user")]
unsafe impl aya::Pod for GenConfig {}
