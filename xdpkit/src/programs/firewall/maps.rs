//! Which maps are the firewall's and where they are pinned. Reading and
//! writing them goes through the generic [`crate::maps`].

use crate::{maps::PinnedMaps, pins::PinDir, Result};

/// Pin file name of a firewall map: its object name in lower case.
pub fn pin_name(map: &str) -> String {
    map.to_ascii_lowercase()
}

/// Whether an object map belongs to the firewall (and is pinned with it).
pub fn is_firewall_map(name: &str) -> bool {
    name.starts_with("FW_")
}

/// The firewall maps pinned in an interface's directory, each opened on
/// first use: a command touches a handful of the 44.
pub fn open_pinned(dir: &PinDir) -> Result<PinnedMaps> {
    PinnedMaps::open(dir.path(), |file| {
        let name = file.to_ascii_uppercase();
        (is_firewall_map(&name) && pin_name(&name) == file).then_some(name)
    })
}
