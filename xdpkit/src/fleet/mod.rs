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
    /// etcd refused the credentials (a wrong password, no user where
    /// authentication is on) or the user's roles do not allow the request.
    #[error("etcd at {endpoints}: {what}: {why} (check --user and the user's roles)")]
    Refused {
        /// The endpoints tried.
        endpoints: String,
        /// What was being done.
        what: String,
        /// What etcd said.
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
        // Credentials and roles are the user's to fix, like privileges.
        matches!(
            self,
            FleetError::BadName { .. } | FleetError::Refused { .. }
        )
    }
}

/// Whether etcd refused the credentials or the permission (etcd 3.4 says
/// a wrong password and a missing user with InvalidArgument).
pub(crate) fn is_refusal(e: &etcd_client::Error) -> bool {
    let etcd_client::Error::GRpcStatus(status) = e else {
        return false;
    };
    match status.code() {
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => true,
        tonic::Code::InvalidArgument => {
            let m = status.message();
            m.contains("authentication failed") || m.contains("user name is empty")
        }
        _ => false,
    }
}

/// The root cause of an etcd client error, in one phrase: gRPC wraps a
/// refused connection in three layers of transport errors.
pub(crate) fn brief(e: &etcd_client::Error) -> String {
    let etcd_client::Error::GRpcStatus(status) = e else {
        return e.to_string();
    };
    let mut cause: &dyn std::error::Error = status;
    let mut depth = 0;
    while let Some(next) = cause.source() {
        cause = next;
        depth += 1;
    }
    if status.code() == tonic::Code::Unavailable {
        return format!("unreachable ({cause})");
    }
    // A failed TLS handshake is "Unknown: transport error" on its own:
    // the root cause says which side refused what.
    let root = cause.to_string();
    if depth == 0 || root == status.message() {
        format!("{:?}: {}", status.code(), status.message())
    } else {
        format!("{:?}: {} ({root})", status.code(), status.message())
    }
}
