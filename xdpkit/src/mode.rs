//! The XDP attach mode a user asks for.

use aya::programs::XdpMode;

use crate::netlink::AttachMode;

/// The XDP mode to attach in, as the user asks for it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Native if the driver supports it, otherwise generic (the kernel decides).
    #[default]
    Auto,
    /// In the driver (XDP_FLAGS_DRV_MODE).
    Native,
    /// Generic XDP in the network stack (XDP_FLAGS_SKB_MODE).
    Skb,
    /// On the NIC (XDP_FLAGS_HW_MODE).
    Offload,
}

impl Mode {
    /// The name used on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::Native => "native",
            Mode::Skb => "skb",
            Mode::Offload => "offload",
        }
    }

    pub(crate) const fn xdp_mode(self) -> XdpMode {
        match self {
            Mode::Auto => XdpMode::Default,
            Mode::Native => XdpMode::Driver,
            Mode::Skb => XdpMode::Skb,
            Mode::Offload => XdpMode::Hardware,
        }
    }

    /// Whether a program attached in `actual` mode satisfies this request.
    pub(crate) fn accepts(self, actual: AttachMode) -> bool {
        matches!(
            (self, actual),
            (Mode::Auto, _)
                | (Mode::Native, AttachMode::Native)
                | (Mode::Skb, AttachMode::Skb)
                | (Mode::Offload, AttachMode::Offload)
        )
    }
}

/// Largest MTU native XDP takes without multi-buffer support: a frame must
/// fit one page with XDP's headroom and the skb tail.
pub const SINGLE_PAGE_MTU: u32 = 3498;
