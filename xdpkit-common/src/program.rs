//! The data-plane programs xdpkit ships, and the names they carry in the ELF object.

/// One of the XDP programs embedded in xdpkit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProgramKind {
    /// Count, then `XDP_PASS` every frame.
    Pass,
    /// Count, then `XDP_DROP` every frame.
    Drop,
    /// Swap source and destination MAC, then `XDP_TX` (frames shorter than an
    /// Ethernet header are dropped).
    Tx,
    /// `XDP_REDIRECT` every frame to the interface in the redirect DEVMAP.
    Redirect,
    /// The rule-based firewall (`xdpkit rule ...`).
    Firewall,
}

impl ProgramKind {
    /// Every program, in the order `--help` lists them.
    pub const ALL: [ProgramKind; 5] = [
        ProgramKind::Pass,
        ProgramKind::Drop,
        ProgramKind::Tx,
        ProgramKind::Redirect,
        ProgramKind::Firewall,
    ];

    /// The name users type (`xdpkit attach drop`).
    pub const fn name(self) -> &'static str {
        match self {
            ProgramKind::Pass => "pass",
            ProgramKind::Drop => "drop",
            ProgramKind::Tx => "tx",
            ProgramKind::Redirect => "redirect",
            ProgramKind::Firewall => "firewall",
        }
    }

    /// The function (and kernel program) name in the eBPF object; at most 15
    /// bytes so the kernel's program name keeps all of it.
    pub const fn symbol(self) -> &'static str {
        match self {
            ProgramKind::Pass => "xdpkit_pass",
            ProgramKind::Drop => "xdpkit_drop",
            ProgramKind::Tx => "xdpkit_tx",
            ProgramKind::Redirect => "xdpkit_redirect",
            ProgramKind::Firewall => "xdpkit_firewall",
        }
    }

    /// The program with this user-facing name.
    pub fn from_name(name: &str) -> Option<ProgramKind> {
        ProgramKind::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The program whose kernel name is `symbol` (as `bpftool prog` shows it).
    pub fn from_symbol(symbol: &str) -> Option<ProgramKind> {
        ProgramKind::ALL.into_iter().find(|p| p.symbol() == symbol)
    }

    /// Whether the program needs a target interface (`--to`).
    pub const fn needs_target(self) -> bool {
        matches!(self, ProgramKind::Redirect)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_symbols_round_trip() {
        for p in ProgramKind::ALL {
            assert_eq!(ProgramKind::from_name(p.name()), Some(p));
            assert_eq!(ProgramKind::from_symbol(p.symbol()), Some(p));
            assert!(p.symbol().len() <= 15, "{} would be truncated", p.symbol());
        }
        assert_eq!(ProgramKind::from_name("firewal"), None);
    }
}
