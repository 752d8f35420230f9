//! XDP return codes, in the kernel's numbering (`enum xdp_action`).

/// The verdict an XDP program returns for a frame.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum XdpAction {
    /// The program failed; the frame is dropped and `xdp:xdp_exception` fires.
    Aborted = 0,
    /// Drop the frame.
    Drop = 1,
    /// Hand the frame to the kernel network stack.
    Pass = 2,
    /// Send the frame back out of the interface it arrived on.
    Tx = 3,
    /// Send the frame to another interface, CPU or AF_XDP socket.
    Redirect = 4,
}

impl XdpAction {
    /// Number of actions; the length of the per-action counter array.
    pub const COUNT: u32 = 5;

    /// All actions in kernel order, which is also their counter index.
    pub const ALL: [XdpAction; 5] = [
        XdpAction::Aborted,
        XdpAction::Drop,
        XdpAction::Pass,
        XdpAction::Tx,
        XdpAction::Redirect,
    ];

    /// The action for a raw return code, if it is one the kernel knows.
    pub const fn from_u32(code: u32) -> Option<XdpAction> {
        match code {
            0 => Some(XdpAction::Aborted),
            1 => Some(XdpAction::Drop),
            2 => Some(XdpAction::Pass),
            3 => Some(XdpAction::Tx),
            4 => Some(XdpAction::Redirect),
            _ => None,
        }
    }

    /// Lower-case name as xdp-tools prints it (`drop`, `pass`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            XdpAction::Aborted => "aborted",
            XdpAction::Drop => "drop",
            XdpAction::Pass => "pass",
            XdpAction::Tx => "tx",
            XdpAction::Redirect => "redirect",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_in_kernel_order() {
        for (i, action) in XdpAction::ALL.iter().enumerate() {
            assert_eq!(*action as u32, i as u32);
            assert_eq!(XdpAction::from_u32(i as u32), Some(*action));
        }
        assert_eq!(XdpAction::from_u32(XdpAction::COUNT), None);
    }
}
