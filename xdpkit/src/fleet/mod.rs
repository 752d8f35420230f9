//! A fleet of hosts following one configuration through etcd (issue 12).
//!
//! Keys (see [`keys`]):
//!
//! - `/xdpkit/groups/<G>` and `/xdpkit/hosts/<NAME>`: a [`Manifest`], the
//!   layer of configuration for a group of hosts or one host: a host
//!   configuration file as `xdpkit apply -f` takes it, normalised (rule
//!   files inlined), compressed and split into parts;
//! - `/xdpkit/blobs/<ID>/<N>`: the parts of the configuration whose
//!   SHA-256 is `ID`, written before the manifest that names them: a
//!   manifest is one small put (one transaction), so an agent sees the old
//!   configuration or the new one whole, however many parts it has;
//! - `/xdpkit/status/<NAME>`: what the agent of host NAME last applied,
//!   under a lease, so a dead agent's status disappears.
//!
//! A host's configuration is its layers merged in order: its groups as
//! the agent names them, then its own key; a later layer's declaration of
//! an interface replaces an earlier one's whole ([`merge`]).

pub mod agent;
pub mod keys;
pub mod merge;
pub mod status;
pub mod store;

pub use store::{Manifest, Store};

/// What can go wrong with the fleet's store.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// etcd could not be reached or refused a request.
    #[error("etcd at {endpoints}: {what}: {why}")]
    Etcd {
        /// The endpoints tried.
        endpoints: String,
        /// What was being done.
        what: String,
        /// The client's error, in brief (the root cause).
        why: String,
    },
    /// A name that cannot be a key (`host`, `group`).
    #[error("{what} '{name}': use 1 to 64 of A-Z a-z 0-9 . _ -")]
    BadName {
        /// `host` or `group`.
        what: &'static str,
        /// The name given.
        name: String,
    },
    /// A stored value that does not read back as what xdpkit writes.
    #[error("{key}: {why}")]
    Damaged {
        /// The key.
        key: String,
        /// What is wrong.
        why: String,
    },
}

impl FleetError {
    /// Whether the user must fix the input (a bad name), not the store or
    /// xdpkit (see `xdpkit::Error::is_usage`).
    pub fn is_usage(&self) -> bool {
        matches!(self, FleetError::BadName { .. })
    }
}

/// The root cause of an etcd client error, in one phrase: gRPC wraps a
/// refused connection in three layers of transport errors.
pub(crate) fn brief(e: &etcd_client::Error) -> String {
    let etcd_client::Error::GRpcStatus(status) = e else {
        return e.to_string();
    };
    if status.code() != tonic::Code::Unavailable {
        return format!("{:?}: {}", status.code(), status.message());
    }
    let mut cause: &dyn std::error::Error = status;
    while let Some(next) = cause.source() {
        cause = next;
    }
    format!("unreachable ({cause})")
}
