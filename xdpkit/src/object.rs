//! The embedded eBPF objects (one per program, built by `build.rs`) and
//! loading programs from them.

use std::path::PathBuf;

use aya::{maps::DevMap, programs::Xdp, Ebpf, EbpfLoader};

use crate::{Error, Result};

/// One program's compiled ELF object, embedded at build time.
#[derive(Clone, Copy, Debug)]
pub struct Object {
    /// The program's name (the `[[bin]]` of xdpkit-ebpf).
    pub name: &'static str,
    /// The ELF bytes.
    pub bytes: &'static [u8],
}

/// The embedded object of program `$name` (`OUT_DIR/$name.bpf.o`).
macro_rules! embedded {
    ($name:literal) => {
        $crate::object::Object {
            name: $name,
            bytes: aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/", $name, ".bpf.o")),
        }
    };
}
pub(crate) use embedded;

impl Object {
    /// Parses the object and creates its maps, private to the returned
    /// handle (programs load lazily).
    pub fn load(&self) -> Result<Ebpf> {
        self.load_with(&[], &[])
    }

    /// Like [`Object::load`], with maps pinned (maps already pinned at
    /// their paths are reused, the others created and pinned) and globals
    /// set in .rodata.
    pub fn load_with(&self, pins: &[(&str, PathBuf)], globals: &[(&str, u32)]) -> Result<Ebpf> {
        self.load_sized(pins, globals, &[])
    }

    /// Like [`Object::load_with`], with the maps of `sizes` created with
    /// that many entries (maps reused from pins keep theirs).
    pub fn load_sized(
        &self,
        pins: &[(&str, PathBuf)],
        globals: &[(&str, u32)],
        sizes: &[(&str, u32)],
    ) -> Result<Ebpf> {
        let mut loader = EbpfLoader::new();
        for (map, entries) in sizes {
            loader.map_max_entries(map, *entries);
        }
        for (map, path) in pins {
            loader.map_pin_path(map, path.as_path());
        }
        for (name, value) in globals {
            loader.override_global(name, value, true);
        }
        loader.load(self.bytes).map_err(|source| Error::Object {
            object: self.name,
            source,
        })
    }

    /// Refuses pinned maps whose type or sizes differ from this object's:
    /// reusing them would make the program read values of another layout.
    /// Maps named in `sized` may have any number of entries (the program
    /// sizes them to its state, [`Program::map_sizes`](crate::programs::Program::map_sizes)).
    pub fn check_pins(&self, iface: &str, pins: &[(&str, PathBuf)], sized: &[&str]) -> Result<()> {
        let object = aya_obj::Object::parse(self.bytes).map_err(Error::DamagedObject)?;
        for (name, path) in pins {
            let Some(def) = object.maps.get(*name) else {
                continue;
            };
            if !path.exists() {
                continue;
            }
            let differs = || Error::IncompatiblePin {
                iface: iface.to_string(),
                stage: self.name,
                map: name.to_string(),
            };
            let info = aya::maps::MapInfo::from_pin(path).map_err(|_| differs())?;
            let same = info.map_type().map(|t| t as u32).ok() == Some(def.map_type())
                && info.key_size() == def.key_size()
                && info.value_size() == def.value_size()
                && (info.max_entries() == def.max_entries() || sized.contains(name));
            if !same {
                return Err(differs());
            }
        }
        Ok(())
    }
}

/// Loads the XDP program whose function is `symbol` (once) and returns it.
pub fn program<'a>(ebpf: &'a mut Ebpf, symbol: &str, name: &'static str) -> Result<&'a mut Xdp> {
    let program: &mut Xdp = ebpf
        .program_mut(symbol)
        .ok_or(Error::MissingProgram { program: name })?
        .try_into()
        .map_err(|source| Error::Load {
            program: name,
            source,
        })?;
    if program.fd().is_err() {
        program.load().map_err(|source| Error::Load {
            program: name,
            source,
        })?;
    }
    Ok(program)
}

/// Points slot `slot` of DEVMAP `map` at interface `ifindex`.
pub fn set_devmap(ebpf: &mut Ebpf, map: &str, slot: u32, ifindex: u32) -> Result<()> {
    let found = ebpf.map_mut(map).ok_or_else(|| missing_map(map))?;
    let mut devmap = DevMap::try_from(found).map_err(|e| Error::Map {
        what: format!("open {map}"),
        source: e.into(),
    })?;
    devmap.set(slot, ifindex, None, 0).map_err(|e| Error::Map {
        what: format!("set {map} slot {slot} to ifindex {ifindex}"),
        source: e.into(),
    })
}

/// The error for a map an embedded object should have but lacks: a build
/// fault, not the user's.
pub fn missing_map(name: &str) -> Error {
    crate::maps::missing_map(name)
}
