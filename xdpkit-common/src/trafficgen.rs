//! The traffic generator's settings, shared by the kernel program and the loader.

/// Array map with one [`GenConfig`] at index 0.
pub const GEN_CONFIG: &str = "XDPKIT_GEN_CFG";

/// How `xdpkit_gen` rewrites each frame before sending it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    /// Bytes of [`GenConfig::head`] written over the start of each frame
    /// before anything else (0: none).
    pub head_len: u32,
    /// The frame's first bytes as built. Live-frames test runs recycle
    /// their pages with whatever the receivers wrote into them (a router
    /// forwarding in place rewrites the MACs and the TTL), so each frame
    /// starts again from these.
    pub head: [u8; GEN_HEAD],
}

/// Bytes of a frame the generator restores each time: past every header
/// and checksum it writes ([`MAX_L4_CSUM`] + 2).
pub const GEN_HEAD: usize = 96;

impl Default for GenConfig {
    fn default() -> GenConfig {
        GenConfig {
            src_base: 0,
            src_random: 0,
            l4_csum: 0,
            src_word: 0,
            head_len: 0,
            head: [0; GEN_HEAD],
        }
    }
}

/// Largest [`GenConfig::l4_csum`]: Ethernet, a VLAN tag and a full IPv4
/// header (an IPv6 header, 40 bytes, fits too).
pub const MAX_L4_CSUM: u32 = 14 + 4 + 60 + 16;

const _: () = assert!(GEN_HEAD >= MAX_L4_CSUM as usize + 2);
const _: () = assert!(core::mem::size_of::<GenConfig>() == 20 + GEN_HEAD);

// SAFETY: plain old data, `#[repr(C)]`, no padding (five u32, then bytes).
#[cfg(feature = "user")]
unsafe impl aya::Pod for GenConfig {}
