//! The traffic generator's settings, shared by the kernel program and the loader.

/// Array map with one [`GenConfig`] at index 0.
pub const GEN_CONFIG: &str = "XDPKIT_GEN_CFG";

/// How `xdpkit_gen` rewrites each frame before sending it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GenConfig {
    /// Source base, host byte order: the IPv4 address, or for IPv6 the
    /// 32-bit word [`GenConfig::src_word`] of the address.
    pub src_base: u32,
    /// Host bits of the source drawn at random per frame; 0 keeps the
    /// frame's own source.
    pub src_random: u32,
    /// Offset in the frame of an L4 checksum that covers the source address
    /// (TCP, or UDP with a checksum), fixed up with it; 0 for none. At most
    /// [`MAX_L4_CSUM`].
    pub l4_csum: u32,
    /// IPv6 frames: which 32-bit word of the source (0-3) gets
    /// `src_base | random`; the other words stay the frame's.
    pub src_word: u32,
}

/// Largest [`GenConfig::l4_csum`]: Ethernet, a VLAN tag and a full IPv4
/// header (an IPv6 header, 40 bytes, fits too).
pub const MAX_L4_CSUM: u32 = 14 + 4 + 60 + 16;

// SAFETY: plain old data, `#[repr(C)]`, no padding (four u32).
#[cfg(feature = "user")]
unsafe impl aya::Pod for GenConfig {}
