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
    /// Offset in the frame of an L4 checksum that covers the source address
    /// (TCP, or UDP with a checksum), fixed up with it; 0 for none. At most
    /// [`MAX_L4_CSUM`].
    pub l4_csum: u32,
}

/// Largest [`GenConfig::l4_csum`]: Ethernet, a VLAN tag and a full IPv4 header.
pub const MAX_L4_CSUM: u32 = 14 + 4 + 60 + 16;

// SAFETY: plain old data, `#[repr(C)]`, no padding (three u32).
#[cfg(feature = "user")]
unsafe impl aya::Pod for GenConfig {}
