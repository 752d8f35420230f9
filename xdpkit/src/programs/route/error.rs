//! What can go wrong in the route stage's own commands: every variant is
//! for the user to fix (exit code 2).

/// The route stage's errors, folded into [`crate::Error::Route`].
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// A `route` command on an interface without the route stage.
    #[error(
        "no xdpkit route stage on '{iface}': run `xdpkit route enable {iface} <OTHER-IF>...` first"
    )]
    NotEnabled {
        /// The interface.
        iface: String,
    },
    /// `route ports del` of an interface that is not a port.
    #[error("'{port}' is not a port of the route stage on '{iface}': see `xdpkit route ports list --dev {iface}`")]
    NotAPort {
        /// The interface.
        iface: String,
        /// The port named.
        port: String,
    },
    /// More ports than the map holds.
    #[error("the route stage on '{iface}' can have at most {limit} ports")]
    TooManyPorts {
        /// The interface.
        iface: String,
        /// The limit.
        limit: u32,
    },
    /// A frame description `route simulate` cannot build.
    #[error("{0}")]
    BadFrame(String),
}
