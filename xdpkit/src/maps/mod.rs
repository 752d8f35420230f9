//! Map plumbing shared by every program: maps by object name, from a
//! private [`Ebpf`](aya::Ebpf) or from pins ([`pinned`]), and whole-map reads
//! and writes with the batch commands ([`batch`]). Nothing here knows which
//! program a map belongs to: that stays with the program (`programs/`).

pub mod batch;
pub mod pinned;

pub use pinned::{MapSource, PinnedMaps};

use crate::Error;

/// The error for a map that should exist (in the embedded object or among
/// the pins) but does not.
pub(crate) fn missing_map(name: &str) -> Error {
    Error::MissingMap {
        name: name.to_string(),
    }
}
