//! Where maps come from: a private [`Ebpf`] (test runs, simulation) or the
//! pins of a directory (a live program). Writers work on either.

use std::{
    collections::BTreeMap,
    os::fd::{AsFd as _, OwnedFd},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::OnceLock,
};

use aya::{
    maps::{Map, MapData},
    Ebpf,
};

use super::{batch, missing_map};
use crate::{sys, Error, Result};

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

/// Prefix of the pin a map is put under by [`PinnedMaps::swap_in`] before it
/// replaces the old one; [`PinnedMaps::open`] never lists such pins.
const ASIDE: &str = "new_";

/// Maps pinned in a directory, each opened on first use: a command touches
/// a handful of them, and opening one is two syscalls.
pub struct PinnedMaps {
    maps: BTreeMap<String, Pinned>,
}

struct Pinned {
    path: PathBuf,
    // OnceLock, not OnceCell: writers on several threads share the maps.
    map: OnceLock<Option<Map>>,
}

impl PinnedMaps {
    /// Lists the pins of `dir` for which `object_name` gives the map's
    /// object name (opened when first used); pins it answers `None` for
    /// are left out.
    pub fn open(dir: &Path, object_name: impl Fn(&str) -> Option<String>) -> Result<PinnedMaps> {
        let entries = std::fs::read_dir(dir).map_err(|source| Error::Pin {
            what: "cannot list",
            path: dir.to_path_buf(),
            source,
        })?;
        let mut maps = BTreeMap::new();
        for entry in entries.filter_map(|e| e.ok()) {
            let file = entry.file_name().to_string_lossy().into_owned();
            if file.starts_with(ASIDE) {
                continue; // debris of an interrupted swap
            }
            let Some(name) = object_name(&file) else {
                continue;
            };
            maps.insert(
                name,
                Pinned {
                    path: entry.path(),
                    map: OnceLock::new(),
                },
            );
        }
        Ok(PinnedMaps { maps })
    }

    /// A new, empty map shaped like pinned map `name`, to fill aside and
    /// then [`swap_in`](Self::swap_in).
    pub fn create_like(&self, name: &str) -> Result<OwnedFd> {
        let entries = batch::map_info(self, name)?.max_entries();
        self.create_sized(name, entries)
    }

    /// Like [`create_like`](Self::create_like), with `max_entries` entries.
    pub fn create_sized(&self, name: &str, max_entries: u32) -> Result<OwnedFd> {
        let info = batch::map_info(self, name)?;
        let map_type = info.map_type().map_err(|e| Error::Map {
            what: format!("read the type of {name}"),
            source: e.into(),
        })?;
        let shape = sys::MapShape {
            map_type: map_type as u32,
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries,
            flags: info.map_flags(),
        };
        sys::map_create(name, shape)
    }

    /// Makes `map` the pinned map `name`: pinned beside it, then renamed
    /// over it, so other processes see the old map or the new one. The old
    /// map is freed by the kernel once its last user closes it.
    pub fn swap_in(&mut self, name: &str, map: OwnedFd) -> Result<()> {
        let pinned = self.maps.get_mut(name).ok_or_else(|| missing_map(name))?;
        // bpffs refuses dots in names; `open` skips the `new_` prefix.
        let file = pinned
            .path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let aside = pinned.path.with_file_name(format!("{ASIDE}{file}"));
        let _ = std::fs::remove_file(&aside); // debris of an interrupted swap
        sys::obj_pin(map.as_fd(), &aside)?;
        let pin_err = |what, source| Error::Pin {
            what,
            path: aside.clone(),
            source,
        };
        let moved = std::fs::set_permissions(&aside, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| pin_err("cannot chmod", e))
            .and_then(|()| {
                std::fs::rename(&aside, &pinned.path).map_err(|e| pin_err("cannot rename", e))
            });
        if let Err(e) = moved {
            let _ = std::fs::remove_file(&aside);
            return Err(e);
        }
        pinned.map = OnceLock::new();
        Ok(())
    }

    /// Where map `name` is pinned.
    pub fn path(&self, name: &str) -> Option<&Path> {
        self.maps.get(name).map(|p| p.path.as_path())
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
