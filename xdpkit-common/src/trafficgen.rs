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

/// Array map with one [`GenHeaders`] at index 0.
pub const GEN_HEADERS: &str = "XDPKIT_GEN_HDRS";
/// Largest [`GenHeaders::len`].
pub const GEN_HEADERS_MAX: usize = 128;

/// Bytes `xdpkit_gen` writes over the start of every frame before anything
/// else. Live-frames mode recycles its pages with their contents: a
/// receiver that rewrites a frame in place (a balancer's encapsulation, a
/// NAT, a router's TTL) hands the rewritten bytes back to the generator,
/// whose next frames would carry them. With the frame's headers here, each
/// frame leaves as built.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GenHeaders {
    /// How many bytes of [`GenHeaders::bytes`] to write (0: none).
    pub len: u32,
    /// The frame's first bytes.
    pub bytes: [u8; GEN_HEADERS_MAX],
}

impl Default for GenHeaders {
    fn default() -> Self {
        GenHeaders {
            len: 0,
            bytes: [0; GEN_HEADERS_MAX],
        }
    }
}

// SAFETY: plain old data, `#[repr(C)]`, no padding (a u32 and bytes, size
// a multiple of 4).
#[cfg(feature = "user")]
unsafe impl aya::Pod for GenHeaders {}
