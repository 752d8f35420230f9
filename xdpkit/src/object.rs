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

#[cfg(test)]
mod tests {
    use aya_obj::generated::bpf_insn;

    const CALL: u8 = 0x85; // BPF_JMP | BPF_CALL
    const LD_IMM64: u8 = 0x18; // BPF_LD | BPF_DW | BPF_IMM

    /// Helper calls in `insns` whose map (loaded into r1 by a 64-bit
    /// immediate) may be another on some path: a jump lands between the
    /// load and the call. The verifier then marks the call's map unknown
    /// ("poisoned") and leaves a helper call, with an indirect call behind
    /// it, where an array lookup would have been inlined. Conservative: a
    /// jump from a path that loaded the same map counts too.
    fn shared_map_calls(insns: &[bpf_insn]) -> Vec<usize> {
        const MAP_HELPERS: [i32; 3] = [1, 2, 3]; // lookup, update, delete
        let mut targets = vec![false; insns.len() + 1];
        for (at, i) in insns.iter().enumerate() {
            let (class, op) = (i.code & 7, i.code & 0xf0);
            // JMP and JMP32 classes, except call and exit.
            if matches!(class, 5 | 6) && op != 0x80 && op != 0x90 {
                let to = at as i64 + 1 + i64::from(i.off);
                if let Some(t) = usize::try_from(to).ok().and_then(|t| targets.get_mut(t)) {
                    *t = true;
                }
            }
        }
        let mut shared = Vec::new();
        for (at, i) in insns.iter().enumerate() {
            if i.code != CALL || i.src_reg() != 0 || !MAP_HELPERS.contains(&i.imm) {
                continue;
            }
            // The last write to r1 before the call (LD, LDX, ALU, ALU64);
            // the second half of a 64-bit immediate has code 0.
            let Some(last) = insns[..at].iter().rposition(|w| {
                w.code != 0 && w.dst_reg() == 1 && matches!(w.code & 7, 0 | 1 | 4 | 7)
            }) else {
                continue;
            };
            if insns[last].code == LD_IMM64 && targets[last + 2..=at].contains(&true) {
                shared.push(at);
            }
        }
        shared
    }

    /// LLVM merges two calls that differ only in their map unless told not
    /// to (xdpkit-ebpf/.cargo/config.toml); merged array lookups cost the
    /// firewall 16 ns a frame.
    #[test]
    fn map_calls_see_one_map() {
        let objects = crate::programs::REGISTRY.iter().map(|p| p.object()).chain([
            crate::chain::ROOT,
            crate::bench::OBJECT,
            crate::trafficgen::OBJECT,
            embedded!("doctor"),
        ]);
        for object in objects {
            let parsed = aya_obj::Object::parse(object.bytes).expect("embedded object");
            for function in parsed.functions.values() {
                assert_eq!(
                    shared_map_calls(&function.instructions),
                    [] as [usize; 0],
                    "{} ({}): map calls reached with another map",
                    object.name,
                    function.name
                );
            }
        }
    }

    fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> bpf_insn {
        bpf_insn {
            code,
            _bitfield_align_1: [],
            _bitfield_1: bpf_insn::new_bitfield_1(dst, src),
            off,
            imm,
        }
    }

    /// `r1 = map A; goto +jump; r1 = map B; r2 = r10; call lookup; exit`.
    fn two_loads(jump: i16) -> Vec<bpf_insn> {
        vec![
            insn(LD_IMM64, 1, 0, 0, 0),
            insn(0, 0, 0, 0, 0),
            insn(0x05, 0, 0, jump, 0), // BPF_JMP | BPF_JA
            insn(LD_IMM64, 1, 0, 0, 0),
            insn(0, 0, 0, 0, 0),
            insn(0xbf, 2, 10, 0, 0), // r2 = r10
            insn(CALL, 0, 0, 0, 1),
            insn(0x95, 0, 0, 0, 0), // exit
        ]
    }

    #[test]
    fn a_jump_between_a_map_load_and_its_call_is_found() {
        // Onto the call, onto `r2 = r10`: both reach the call with map A.
        assert_eq!(shared_map_calls(&two_loads(3)), [6]);
        assert_eq!(shared_map_calls(&two_loads(2)), [6]);
        // Onto the second load: the call sees map B only.
        assert_eq!(shared_map_calls(&two_loads(0)), [] as [usize; 0]);
    }
}
