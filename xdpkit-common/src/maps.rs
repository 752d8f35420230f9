//! Map names and value layouts.

/// Per-CPU array indexed by [`crate::XdpAction`]: packets and bytes per
/// verdict, and in slot [`NEXT_SLOT`] the frames a stage handed on.
pub const STATS_MAP: &str = "XDPKIT_STATS";
/// The counter slot of "next": frames a stage passed to the stage after it.
pub const NEXT_SLOT: u32 = crate::XdpAction::COUNT;
/// Slots of [`STATS_MAP`]: every verdict and "next".
pub const STATS_SLOTS: u32 = crate::XdpAction::COUNT + 1;
/// DEVMAP with one slot (index [`REDIRECT_SLOT`]): the egress interface of `redirect`.
pub const REDIRECT_MAP: &str = "XDPKIT_REDIRECT";
/// The slot of [`REDIRECT_MAP`] that `redirect` sends to.
pub const REDIRECT_SLOT: u32 = 0;

/// Packets and bytes seen for one action on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize))]
pub struct ActionCounter {
    /// Frames that got this verdict.
    pub packets: u64,
    /// Sum of their lengths, from the Ethernet header to the end of the frame.
    pub bytes: u64,
}

impl ActionCounter {
    /// Adds another CPU's (or sample's) counts to this one.
    #[must_use]
    pub const fn plus(self, other: ActionCounter) -> ActionCounter {
        ActionCounter {
            packets: self.packets.wrapping_add(other.packets),
            bytes: self.bytes.wrapping_add(other.bytes),
        }
    }
}

// SAFETY: plain old data, `#[repr(C)]`, no padding (two u64).
#[cfg(feature = "user")]
unsafe impl aya::Pod for ActionCounter {}
