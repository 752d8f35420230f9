//! Map plumbing shared by every program: maps by object name, from a
//! private [`Ebpf`](aya::Ebpf) or from pins ([`pinned`]), and whole-map reads
//! and writes with the batch commands ([`batch`]). Nothing here knows which
//! program a map belongs to: that stays with the program (`programs/`).

pub mod batch;
pub mod pinned;

pub use pinned::{MapSource, PinnedMaps};

use std::path::Path;

use aya::maps::{Map, MapData};

use crate::{Error, Result};

/// The map pinned at `path` (its type read from the kernel), or `None` if
/// nothing is pinned there.
pub fn open_pin(path: &Path) -> Result<Option<Map>> {
    if !path.exists() {
        return Ok(None);
    }
    MapData::from_pin(path)
        .and_then(Map::from_map_data)
        .map(Some)
        .map_err(|e| Error::Map {
            what: format!("open {}", path.display()),
            source: e.into(),
        })
}

/// The error for a map that should exist (in the embedded object or among
/// the pins) but does not.
pub(crate) fn missing_map(name: &str) -> Error {
    Error::MissingMap {
        name: name.to_string(),
    }
}

/// Turns aya's map error into [`Error::Map`] saying what was being done.
pub(crate) fn map_err(what: impl Into<String>) -> impl FnOnce(aya::maps::MapError) -> Error {
    let what = what.into();
    move |e| Error::Map {
        what,
        source: e.into(),
    }
}
