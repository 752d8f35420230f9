//! `xdpkit dump`: every xdpkit program copies frames it gave a selected
//! verdict into a ring buffer while a dump runs. Shared by kernel and loader.

/// Array map with one [`DumpConfig`] at index 0 (all zero: no dump).
pub const DUMP_CONFIG: &str = "XDPKIT_DUMP_CFG";
/// Ring buffer of [`DumpRecord`]s.
pub const DUMP_RING: &str = "XDPKIT_DUMP_RING";
/// Bytes of the ring buffer (a power of two, a multiple of the page size).
pub const DUMP_RING_BYTES: u32 = 1 << 22;
/// Largest snap length: a jumbo frame (MTU 9000, Ethernet header and two
/// VLAN tags: 9022 bytes) with room to spare, kept whole.
pub const DUMP_MAX_SNAP: u32 = 9216;
/// Copies of at most this many bytes (a standard frame with two VLAN tags)
/// go into a [`DumpRecord`]; longer ones into a [`DumpJumboRecord`], so
/// that the ring holds as many small frames as before jumbo frames.
pub const DUMP_SMALL_SNAP: u32 = 1536;

/// What to copy.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DumpConfig {
    /// Bit `1 << action` for each verdict to copy; 0: no dump runs.
    pub actions: u32,
    /// Copy one frame in this many (per CPU); 0 or 1: every frame.
    pub sample: u32,
    /// Bytes copied from the start of each frame, at most [`DUMP_MAX_SNAP`].
    pub snaplen: u32,
    /// Padding, zero.
    pub _pad: u32,
}

/// What the program knew about a copied frame.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DumpHeader {
    /// CLOCK_MONOTONIC when the verdict was given, ns.
    pub ts_ns: u64,
    /// The frame's length.
    pub len: u32,
    /// Bytes copied into [`DumpRecord::data`].
    pub cap: u32,
    /// The verdict, as [`crate::XdpAction`].
    pub action: u32,
    /// The deciding rule of a stage with rules (the firewall), or [`NO_RULE`].
    pub rule: u32,
}

/// [`DumpHeader::rule`] of a verdict no rule gave.
pub const NO_RULE: u32 = u32::MAX;

/// One ring-buffer record: header, then the first `cap` bytes of the frame
/// (`cap` at most [`DUMP_SMALL_SNAP`]).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DumpRecord {
    /// About the frame.
    pub head: DumpHeader,
    /// Its bytes.
    pub data: [u8; DUMP_SMALL_SNAP as usize],
}

/// A record of a copy longer than [`DUMP_SMALL_SNAP`] (a jumbo frame):
/// the same header, then up to [`DUMP_MAX_SNAP`] bytes. A reader tells the
/// two apart by `cap` (or the record's length), not by a tag.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DumpJumboRecord {
    /// About the frame.
    pub head: DumpHeader,
    /// Its bytes.
    pub data: [u8; DUMP_MAX_SNAP as usize],
}

// SAFETY: plain old data, `#[repr(C)]`, no padding (four u32).
#[cfg(feature = "user")]
unsafe impl aya::Pod for DumpConfig {}
