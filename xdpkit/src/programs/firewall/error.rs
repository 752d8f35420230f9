//! What can go wrong in the firewall's own commands. Every variant is for
//! the user or the system to fix (exit code 2); faults of xdpkit itself are
//! [`crate::Error`] variants.

use super::{FileError, RuleError};

/// The firewall's errors, folded into [`crate::Error::Firewall`].
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    /// Rule commands on an interface without the firewall.
    #[error("no xdpkit firewall on '{iface}': run `xdpkit attach firewall --dev {iface}` first")]
    NoFirewall {
        /// The interface.
        iface: String,
    },
    /// Pinned firewall maps whose layout differs from this build's.
    #[error("the firewall state of '{iface}' was made by another xdpkit version (map {map} differs): save the rules (`xdpkit rule list --dev {iface}`), run `xdpkit detach --dev {iface}`, then attach again")]
    IncompatibleState {
        /// The interface.
        iface: String,
        /// The first map that differs.
        map: String,
    },
    /// A rule id that does not exist.
    #[error("no rule {id} on '{iface}': see `xdpkit rule list --dev {iface}`")]
    NoSuchRule {
        /// The interface.
        iface: String,
        /// The id given.
        id: u32,
    },
    /// Every rule id is taken.
    #[error("rule ids are exhausted (the largest is {largest}): load --replace to renumber")]
    IdsExhausted {
        /// The largest id.
        largest: u32,
    },
    /// A rule file whose line numbers (ids with --replace) go past the largest id.
    #[error("rule id {id} is beyond the largest, {largest}: use load --replace to renumber")]
    IdBeyondLargest {
        /// The id it would get.
        id: u32,
        /// The largest id.
        largest: u32,
    },
    /// A stored rule that does not decode.
    #[error("rule {id} in FW_RULES is damaged: flush and reload")]
    DamagedRule {
        /// Its id.
        id: u32,
    },
    /// A rule that does not parse.
    #[error(transparent)]
    Rule(#[from] RuleError),
    /// A rule file with a bad line.
    #[error(transparent)]
    File(#[from] FileError),
}

impl FirewallError {
    /// Whether the user can fix this (exit code 2): every firewall error is.
    pub fn is_usage(&self) -> bool {
        match self {
            FirewallError::NoFirewall { .. }
            | FirewallError::IncompatibleState { .. }
            | FirewallError::NoSuchRule { .. }
            | FirewallError::IdsExhausted { .. }
            | FirewallError::IdBeyondLargest { .. }
            | FirewallError::DamagedRule { .. }
            | FirewallError::Rule(_)
            | FirewallError::File(_) => true,
        }
    }
}
