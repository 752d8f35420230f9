//! Where the firewall's maps come from: a private [`Ebpf`] (test runs,
//! simulation) or the pins of an interface (a live firewall). The rule-set
//! writers work on either.

use std::collections::BTreeMap;

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

/// The firewall maps pinned in an interface's directory.
pub struct PinnedMaps {
    maps: BTreeMap<String, Map>,
}

impl PinnedMaps {
    /// Opens every `fw_*` pin in `dir`.
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
            let path = entry.path();
            let map_error = |e: aya::maps::MapError| Error::Map {
                what: format!("open pinned {}", path.display()),
                source: e.into(),
            };
            let map = Map::from_map_data(MapData::from_pin(&path).map_err(map_error)?)
                .map_err(map_error)?;
            maps.insert(file.to_ascii_uppercase(), map);
        }
        Ok(PinnedMaps { maps })
    }
}

impl MapSource for PinnedMaps {
    fn map(&self, name: &str) -> Option<&Map> {
        self.maps.get(name)
    }
    fn map_mut(&mut self, name: &str) -> Option<&mut Map> {
        self.maps.get_mut(name)
    }
}
