//! The embedded eBPF object and loading programs from it.

use aya::{maps::DevMap, programs::Xdp, Ebpf, EbpfLoader};
use xdpkit_common::{
    maps::{REDIRECT_MAP, REDIRECT_SLOT},
    ProgramKind,
};

use crate::{Error, Result};

/// The compiled kernel programs, embedded at build time by `build.rs`.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdpkit.bpf.o"));

/// Maps only the firewall uses, with sizes that matter only when it runs.
/// (The host tables are preallocated arrays: 32 MB for nothing otherwise.)
const FIREWALL_ONLY_MAPS: [&str; 5] = [
    "FW_RULE_STATS",
    "FW_BUCKETS",
    "FW_TRACE",
    "FW_HTAB4_0",
    "FW_HTAB4_1",
];

/// Parses the embedded object and creates its maps (programs load lazily).
/// The firewall's large maps are created with one entry: use
/// [`load_firewall`] to run the firewall.
pub fn load() -> Result<Ebpf> {
    let mut loader = EbpfLoader::new();
    for name in FIREWALL_ONLY_MAPS {
        loader.map_max_entries(name, 1);
    }
    Ok(loader.load(EBPF_OBJECT)?)
}

/// Like [`load`], with the firewall's maps at full size.
pub fn load_firewall() -> Result<Ebpf> {
    Ok(EbpfLoader::new().load(EBPF_OBJECT)?)
}

/// Like [`load_firewall`], with every firewall map pinned in `dir`: maps
/// already pinned there are reused (rules and counters survive a
/// re-attach), the others are created and pinned.
pub fn load_firewall_pinned(dir: &crate::pins::PinDir, iface: &str) -> Result<Ebpf> {
    check_pins(dir, iface)?;
    let mut loader = EbpfLoader::new();
    for name in xdpkit_common::firewall::FW_MAPS {
        loader.map_pin_path(name, dir.file(&crate::firewall::maps::pin_name(name)));
    }
    Ok(loader.load(EBPF_OBJECT)?)
}

/// Refuses firewall pins whose type or sizes differ from this build's maps:
/// reusing them would make the program read values of another layout.
pub fn check_pins(dir: &crate::pins::PinDir, iface: &str) -> Result<()> {
    let object = aya_obj::Object::parse(EBPF_OBJECT).map_err(Error::DamagedObject)?;
    for name in xdpkit_common::firewall::FW_MAPS {
        let path = dir.file(&crate::firewall::maps::pin_name(name));
        let Some(def) = object.maps.get(name) else {
            continue;
        };
        if !path.exists() {
            continue;
        }
        let differs = || {
            Error::from(crate::firewall::error::FirewallError::IncompatibleState {
                iface: iface.to_string(),
                map: name.to_string(),
            })
        };
        let info = aya::maps::MapInfo::from_pin(&path).map_err(|_| differs())?;
        let same = info.map_type().map(|t| t as u32).ok() == Some(def.map_type())
            && info.key_size() == def.key_size()
            && info.value_size() == def.value_size()
            && info.max_entries() == def.max_entries();
        if !same {
            return Err(differs());
        }
    }
    Ok(())
}

/// Loads `kind` into the kernel (once) and returns it.
pub fn program(ebpf: &mut Ebpf, kind: ProgramKind) -> Result<&mut Xdp> {
    program_by_symbol(ebpf, kind.symbol(), kind.name())
}

/// Loads the program whose function is `symbol` (once) and returns it.
pub fn program_by_symbol<'a>(
    ebpf: &'a mut Ebpf,
    symbol: &str,
    name: &'static str,
) -> Result<&'a mut Xdp> {
    let missing = || Error::UnknownProgram {
        name: name.to_string(),
        known: "none (the embedded object lacks it: rebuild xdpkit)".to_string(),
    };
    let program: &mut Xdp = ebpf
        .program_mut(symbol)
        .ok_or_else(missing)?
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

/// Points `redirect`'s DEVMAP slot at interface `ifindex`.
pub fn set_redirect_target(ebpf: &mut Ebpf, ifindex: u32) -> Result<()> {
    let map = ebpf
        .map_mut(REDIRECT_MAP)
        .ok_or_else(|| missing_map(REDIRECT_MAP))?;
    let mut devmap = DevMap::try_from(map).map_err(|e| Error::Map {
        what: format!("open {REDIRECT_MAP}"),
        source: e.into(),
    })?;
    devmap
        .set(REDIRECT_SLOT, ifindex, None, 0)
        .map_err(|e| Error::Map {
            what: format!("set redirect target ifindex {ifindex}"),
            source: e.into(),
        })
}

/// The error for a map the embedded object should have but lacks.
pub fn missing_map(name: &str) -> Error {
    crate::maps::missing_map(name)
}

/// Parses a program name as the user typed it.
pub fn parse_program(name: &str) -> Result<ProgramKind> {
    ProgramKind::from_name(name).ok_or_else(|| Error::UnknownProgram {
        name: name.to_string(),
        known: ProgramKind::ALL.map(ProgramKind::name).join(", "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_object_is_bpf_elf_with_every_program() {
        assert_eq!(&EBPF_OBJECT[..4], b"\x7fELF");
        let obj = aya_obj_programs(EBPF_OBJECT);
        for kind in ProgramKind::ALL {
            assert!(
                obj.contains(&kind.symbol().to_string()),
                "{} missing",
                kind.symbol()
            );
        }
    }

    fn aya_obj_programs(bytes: &[u8]) -> Vec<String> {
        // Symbol names appear verbatim in the ELF string table.
        ProgramKind::ALL
            .iter()
            .map(|k| k.symbol())
            .filter(|s| bytes.windows(s.len()).any(|w| w == s.as_bytes()))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn unknown_program_lists_the_known_ones() {
        let err = parse_program("firewal").unwrap_err().to_string();
        assert_eq!(
            err,
            "unknown program 'firewal': choose one of pass, drop, tx, redirect, firewall"
        );
    }
}
