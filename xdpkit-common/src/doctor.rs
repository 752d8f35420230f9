//! The exception counter of `xdpkit doctor`, shared by kernel and loader.

/// Per-CPU array of u64 indexed by XDP verdict (0 aborted .. 4 redirect),
/// then one slot for any other value.
pub const EXCEPTIONS_MAP: &str = "XDPKIT_EXCEPTIONS";
/// Slots of [`EXCEPTIONS_MAP`].
pub const EXCEPTION_SLOTS: u32 = 6;
