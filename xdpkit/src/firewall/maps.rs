//! Where the firewall's maps come from: a private [`Ebpf`] (test runs,
//! simulation) or the pins of an interface (a live firewall). The rule-set
//! writers work on either.

use std::{
    cell::OnceCell,
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use aya::{
    maps::{Map, MapData},
    Ebpf,
};

use crate::{pins::PinDir, Error, Result};

/// Maps by their object name (`FW_CONFIG`, ...).
pub trait MapSource {
    /// The map, for reading.
    fn map(&self, name: &str) -> Option<&Map>;
    /// The map, for writing.
    fn map_mut(&mut self, name: &str) -> Option<&mut Map>;
}

impl MapSource for Ebpf {
    fn map(&self, name: &str) -> Option<&Map> {
        Ebpf::map(self, name)
    }
    fn map_mut(&mut self, name: &str) -> Option<&mut Map> {
        Ebpf::map_mut(self, name)
    }
}

/// Pin file name of a firewall map: its object name in lower case.
pub fn pin_name(map: &str) -> String {
    map.to_ascii_lowercase()
}

/// Whether an object map belongs to the firewall (and is pinned with it).
pub fn is_firewall_map(name: &str) -> bool {
    name.starts_with("FW_")
}

/// The firewall maps pinned in an interface's directory, each opened on
/// first use: a command touches a handful of the 44, and opening one is
/// two syscalls (most of a `rule add`, were they all opened).
pub struct PinnedMaps {
    maps: BTreeMap<String, Pinned>,
}

struct Pinned {
    path: PathBuf,
    map: OnceCell<Option<Map>>,
}

impl PinnedMaps {
    /// Lists every `fw_*` pin in `dir` (opened when first used).
    pub fn open(dir: &PinDir) -> Result<PinnedMaps> {
        let entries = std::fs::read_dir(dir.path()).map_err(|source| Error::Pin {
            what: "cannot list",
            path: dir.path().to_path_buf(),
            source,
        })?;
        let mut maps = BTreeMap::new();
        for entry in entries.filter_map(|e| e.ok()) {
            let file = entry.file_name().to_string_lossy().into_owned();
            if !file.starts_with("fw_") {
                continue;
            }
            maps.insert(
                file.to_ascii_uppercase(),
                Pinned {
                    path: entry.path(),
                    map: OnceCell::new(),
                },
            );
        }
        Ok(PinnedMaps { maps })
    }
}

/// Opens a pinned map; a pin that cannot be opened reads as missing (the
/// caller names the map), with the reason in the log.
fn open_pin(path: &Path) -> Option<Map> {
    let opened = MapData::from_pin(path).and_then(Map::from_map_data);
    match opened {
        Ok(map) => Some(map),
        Err(e) => {
            tracing::warn!("cannot open pinned map {}: {e}", path.display());
            None
        }
    }
}

impl MapSource for PinnedMaps {
    fn map(&self, name: &str) -> Option<&Map> {
        let pinned = self.maps.get(name)?;
        pinned.map.get_or_init(|| open_pin(&pinned.path)).as_ref()
    }
    fn map_mut(&mut self, name: &str) -> Option<&mut Map> {
        self.map(name)?;
        self.maps.get_mut(name)?.map.get_mut()?.as_mut()
    }
}
