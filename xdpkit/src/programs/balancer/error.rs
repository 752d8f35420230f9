//! What can go wrong in the balancer's own commands: every variant is for
//! the user to fix (exit code 2).

use super::tables::TablesError;

/// The balancer's errors, folded into [`crate::Error::Balancer`].
#[derive(Debug, thiserror::Error)]
pub enum BalancerError {
    /// `lb` commands on an interface without the balancer.
    #[error("no xdpkit balancer on '{iface}': run `xdpkit attach balancer --dev {iface}` first")]
    NoBalancer {
        /// The interface.
        iface: String,
    },
    /// A VIP that does not parse.
    #[error(transparent)]
    BadVip(#[from] super::tables::BadVip),
    /// A VIP added twice.
    #[error("VIP {vip} exists already on '{iface}'")]
    VipExists {
        /// The interface.
        iface: String,
        /// The VIP.
        vip: String,
    },
    /// A VIP that is not there.
    #[error("no VIP {vip} on '{iface}': see `xdpkit lb list --dev {iface}`")]
    NoSuchVip {
        /// The interface.
        iface: String,
        /// The VIP.
        vip: String,
    },
    /// A real that is not a real of the VIP.
    #[error("{real} is not a real of VIP {vip}")]
    NoSuchReal {
        /// The VIP.
        vip: String,
        /// The real.
        real: String,
    },
    /// No room: VIP ids, ring slots, reals or members.
    #[error("no room for {what}: at most {limit}")]
    Full {
        /// What did not fit.
        what: &'static str,
        /// The limit.
        limit: u32,
    },
    /// An outer source network the balancer cannot use.
    #[error("{given} cannot be the outer source network: {why}")]
    BadSource {
        /// What was given.
        given: String,
        /// What it must be.
        why: &'static str,
    },
    /// Settings that cannot work (two-interface mode without a gateway,
    /// an MTU below IPv4's minimum, ...).
    #[error("{0}")]
    BadSettings(String),
    /// A real that is no VIP's real (QUIC server ids name reals).
    #[error(
        "{real} is not a real of any VIP on '{iface}': add it with `xdpkit lb real add` first"
    )]
    UnknownReal {
        /// The interface.
        iface: String,
        /// The real.
        real: String,
    },
    /// A ring that cannot be built.
    #[error(transparent)]
    Tables(#[from] TablesError),
}
