//! Stages: an interface runs an ordered chain of programs. The bpf_link
//! runs a small root program that tail-calls the first stage of the active
//! half of the interface's PROG_ARRAY (layout: `xdpkit_common::chain`).
//!
//! Installing a chain loads every stage anew into the half not in use, each
//! with its maps pinned in its own directory (so rules and counters carry
//! over), then switches with one update of the root's state map. Frames
//! already inside the old half finish there; the next install overwrites it.

use std::{os::fd::AsFd as _, path::PathBuf, sync::LazyLock};

use aya::{
    maps::{Array, MapData, ProgramArray},
    Ebpf,
};
use serde::Serialize;
use xdpkit_common::{
    chain::{ChainState, CHAIN_MAP, MAX_STAGES, NEXT_GLOBAL, NO_NEXT, ROOT_MAP, STAGE_NAME_LEN},
    dump::{DUMP_CONFIG, DUMP_RING},
    maps::STATS_MAP,
    xsk::XSKS_MAP,
};

use crate::{
    maps::map_err,
    mode::Mode,
    object::{self, embedded, Object},
    pins::{self, IfaceLock, PinDir},
    programs::{self, Commit, Program, StageLoad},
    Error, Result,
};

/// The root program's object.
pub const ROOT: Object = embedded!("root");
const ROOT_SYMBOL: &str = "xdpkit_root";

/// A fingerprint of every embedded object: stages loaded by another build
/// are replaced even when the configuration is the same (an upgrade).
pub static BUILD: LazyLock<u64> = LazyLock::new(|| {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let objects = [ROOT, crate::rx_hash::ROOT_RXHASH]
        .into_iter()
        .chain(programs::REGISTRY.iter().map(|p| p.object()));
    for object in objects {
        for byte in object.bytes {
            hash = (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
});

/// One stage to install: a program and its settings.
#[derive(Clone)]
pub struct StageSpec {
    /// The program.
    pub program: &'static dyn Program,
    /// Its settings (keys of [`Program::settings_keys`]).
    pub settings: toml::Table,
}

impl std::fmt::Debug for StageSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StageSpec")
            .field("program", &self.program.name())
            .field("settings", &self.settings)
            .finish()
    }
}

/// A stage as installed.
#[derive(Clone, Debug, Serialize)]
pub struct StageReport {
    /// Program name.
    pub program: &'static str,
    /// Kernel id of the stage's program.
    pub prog_id: u32,
    /// Its slot in the chain PROG_ARRAY.
    pub slot: u32,
    /// Whether its maps were created now (not carried over).
    pub fresh: bool,
}

/// The chain state of an interface, as the root's map holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RunningChain {
    /// Program names in order.
    pub stages: Vec<String>,
    /// First slot of the active half.
    pub base: u32,
    /// The mode asked for when it was installed.
    pub mode: &'static str,
    /// How many chains the interface has had.
    pub generation: u32,
    /// Whether this build of xdpkit loaded the stages.
    pub same_build: bool,
    /// The stages' kernel program ids, in order (0 where a slot reads empty).
    pub prog_ids: Vec<u32>,
}

/// The interface's root program and chain maps, created or reused from
/// the pins in `dir`.
pub(crate) fn load_root(dir: &PinDir, iface: &str) -> Result<Ebpf> {
    let pins = root_pins(dir);
    ROOT.check_pins(iface, &pins, &[])?;
    let mut ebpf = ROOT.load_with(&pins, &[])?;
    object::program(&mut ebpf, ROOT_SYMBOL, "root")?;
    for (_, path) in &pins {
        restrict(path)?;
    }
    Ok(ebpf)
}

/// The root program in `ebpf` (loaded by [`load_root`]).
pub(crate) fn root_program(ebpf: &mut Ebpf) -> Result<&mut aya::programs::Xdp> {
    object::program(ebpf, ROOT_SYMBOL, "root")
}

fn root_pins(dir: &PinDir) -> Vec<(&'static str, PathBuf)> {
    vec![
        (CHAIN_MAP, dir.file(pins::CHAIN)),
        (ROOT_MAP, dir.file(pins::ROOT)),
    ]
}

/// Loads `stages` into the half of the chain not in use and switches to
/// them. `root` holds the interface's chain and root maps
/// ([`load_root`]); the caller holds the interface's [`IfaceLock`].
pub(crate) fn install(
    root: &mut Ebpf,
    dir: &PinDir,
    iface: &str,
    mode: Mode,
    stages: &[StageSpec],
    lock: &IfaceLock,
) -> Result<Vec<StageReport>> {
    let prepared = prepare(root, dir, iface, mode, stages, lock)?;
    switch(root, dir, prepared)
}

/// A chain loaded into the half not in use, not yet running.
pub(crate) struct Prepared {
    reports: Vec<StageReport>,
    /// The stages' objects, kept until after the switch (the chain map
    /// holds their programs too).
    loaded: Vec<Ebpf>,
    /// What the stages' settings change in maps the running chain shares.
    commits: Vec<Commit>,
    /// The root state that switches to it.
    state: ChainState,
    /// The running chain's stages (their directories go if they leave).
    old: Vec<String>,
    /// Stage directories this preparation created, removed if it is dropped.
    created: Vec<PinDir>,
}

impl Drop for Prepared {
    fn drop(&mut self) {
        // Set only while not switched: a failed or abandoned preparation
        // leaves no state of stages that never ran.
        for dir in &self.created {
            let _ = std::fs::remove_dir_all(dir.path());
        }
    }
}

/// The first half of [`install`]: every stage loaded (maps pinned, settings
/// checked and staged) and put in its slot of the half not in use. Packets
/// still run the old chain, and dropping the result changes nothing they see.
pub(crate) fn prepare(
    root: &mut Ebpf,
    dir: &PinDir,
    iface: &str,
    mode: Mode,
    stages: &[StageSpec],
    lock: &IfaceLock,
) -> Result<Prepared> {
    if stages.is_empty() || stages.len() > MAX_STAGES as usize {
        return Err(Error::InvalidArgument(format!(
            "a chain has 1 to {MAX_STAGES} stages, not {}",
            stages.len()
        )));
    }
    // A running stage whose maps are too small for its new settings grows
    // them first (a reinstall of the running chain of its own).
    for stage in stages {
        stage
            .program
            .before_install(iface, dir, &stage.settings, lock)?;
    }
    let old = read_state(root)?;
    let base = if old.len > 0 && old.base == 0 {
        MAX_STAGES
    } else {
        0
    };
    let mut prepared = Prepared {
        reports: Vec::with_capacity(stages.len()),
        loaded: Vec::with_capacity(stages.len()),
        commits: Vec::new(),
        state: ChainState::empty(),
        old: old_names(&old),
        created: Vec::new(),
    };
    let chain = root
        .map_mut(CHAIN_MAP)
        .ok_or_else(|| object::missing_map(CHAIN_MAP))?;
    let mut chain: ProgramArray<&mut MapData> =
        ProgramArray::try_from(chain).map_err(map_err("open the chain"))?;
    for (i, stage) in stages.iter().enumerate() {
        let slot = base + i as u32;
        let next = if i + 1 < stages.len() {
            slot + 1
        } else {
            NO_NEXT
        };
        let loaded = load_stage(dir, iface, stage, next, lock, &mut prepared.created)?;
        let (mut ebpf, fresh, commit) = loaded;
        prepared.commits.extend(commit);
        let program = object::program(&mut ebpf, stage.program.symbol(), stage.program.name())?;
        let prog_id = program
            .info()
            .map(|info| info.id())
            .map_err(|source| Error::Load {
                program: stage.program.name(),
                source,
            })?;
        let fd = program.fd().map_err(|source| Error::Load {
            program: stage.program.name(),
            source,
        })?;
        chain.set(slot, fd, 0).map_err(map_err(format!(
            "put stage {} in chain slot {slot}",
            stage.program.name()
        )))?;
        prepared.reports.push(StageReport {
            program: stage.program.name(),
            prog_id,
            slot,
            fresh,
        });
        prepared.loaded.push(ebpf);
    }
    // Slots of an earlier, longer chain in this half.
    for slot in base + stages.len() as u32..base + MAX_STAGES {
        match chain.clear_index(&slot) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(map_err(format!("clear chain slot {slot}"))(e)),
        }
    }
    let state = &mut prepared.state;
    state.base = base;
    state.len = stages.len() as u32;
    state.build = *BUILD;
    state.mode = mode_code(mode);
    state.generation = old.generation.wrapping_add(1);
    for (name, stage) in state.stages.iter_mut().zip(stages) {
        let bytes = stage.program.name().as_bytes();
        name[..bytes.len().min(STAGE_NAME_LEN)]
            .copy_from_slice(&bytes[..bytes.len().min(STAGE_NAME_LEN)]);
    }
    Ok(prepared)
}

/// The second half of [`install`]: the stages' staged settings take
/// effect, then one update of the root's state switches to the new half.
pub(crate) fn switch(
    root: &mut Ebpf,
    dir: &PinDir,
    mut prepared: Prepared,
) -> Result<Vec<StageReport>> {
    // From here the new stages' state is in use: keep it whatever happens.
    prepared.created.clear();
    for commit in prepared.commits.drain(..) {
        commit()?;
    }
    write_state(root, prepared.state)?;
    // Stages no longer in the chain leave with their state; the old half
    // still holds their programs (and so their maps) until it is reused.
    for gone in &prepared.old {
        if !prepared.reports.iter().any(|s| s.program == gone) {
            let stage_dir = dir.stage(gone);
            std::fs::remove_dir_all(stage_dir.path()).map_err(|source| Error::Pin {
                what: "cannot remove",
                path: stage_dir.path().to_path_buf(),
                source,
            })?;
        }
    }
    Ok(std::mem::take(&mut prepared.reports))
}

/// Loads one stage with its maps pinned in its directory (created or
/// reused), the shared chain and dump maps pinned in the interface's, and
/// `next` as the slot its "next" tail-calls; then applies its settings.
/// Returns the object and whether its maps were created now.
fn load_stage(
    dir: &PinDir,
    iface: &str,
    stage: &StageSpec,
    next: u32,
    lock: &IfaceLock,
    created: &mut Vec<PinDir>,
) -> Result<(Ebpf, bool, Option<Commit>)> {
    let program = stage.program;
    let stage_dir = dir.stage(program.name());
    if stage_dir.create()? {
        created.push(stage_dir.clone());
    }
    let fresh = !stage_dir.file(pins::STATS).exists();
    let mut pins = vec![
        (STATS_MAP, stage_dir.file(pins::STATS)),
        (CHAIN_MAP, dir.file(pins::CHAIN)),
        (DUMP_CONFIG, dir.file(pins::DUMP_CONFIG)),
        (DUMP_RING, dir.file(pins::DUMP_RING)),
        (XSKS_MAP, dir.file(pins::XSKS)),
    ];
    pins.extend(
        program
            .pinned_maps()
            .iter()
            .map(|(map, file)| (*map, stage_dir.file(file))),
    );
    let object = program.object();
    let sizes = program.map_sizes(&stage_dir, &stage.settings)?;
    let sized: Vec<&str> = sizes.iter().map(|(map, _)| *map).collect();
    object.check_pins(iface, &pins, &sized)?;
    let mut ebpf = object.load_sized(&pins, &[(NEXT_GLOBAL, next)], &sizes)?;
    for (_, path) in &pins {
        restrict(path)?;
    }
    let mut load = StageLoad {
        iface,
        dir: &stage_dir,
        ebpf: &mut ebpf,
        fresh,
        lock,
    };
    let commit = program.configure(&mut load, &stage.settings)?;
    Ok((ebpf, fresh, commit))
}

/// Installs the running chain of the interface whose pin directory is
/// `dir` again: the same stages in the same order, each loaded anew with
/// the maps now pinned in its directory and no settings (each keeps its
/// state). What a stage needs once maps it sized were replaced in its pins
/// by bigger copies. The caller holds the interface's [`IfaceLock`].
pub(crate) fn reinstall(dir: &PinDir, iface: &str, lock: &IfaceLock) -> Result<()> {
    let mut root = load_root(dir, iface)?;
    let state = read_state(&root)?;
    let stages = old_names(&state)
        .iter()
        .map(|name| {
            Ok(StageSpec {
                program: programs::by_name(name)?,
                settings: toml::Table::new(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    install(&mut root, dir, iface, mode_of(state.mode), &stages, lock).map(drop)
}

const fn mode_of(code: u32) -> Mode {
    match code {
        1 => Mode::Native,
        2 => Mode::Skb,
        3 => Mode::Offload,
        _ => Mode::Auto,
    }
}

/// Writes the root's state: the switch.
fn write_state(root: &mut Ebpf, state: ChainState) -> Result<()> {
    let map = root
        .map_mut(ROOT_MAP)
        .ok_or_else(|| object::missing_map(ROOT_MAP))?;
    let mut array: Array<&mut MapData, ChainState> =
        Array::try_from(map).map_err(map_err("open the chain state"))?;
    array.set(0, state, 0).map_err(map_err("switch the chain"))
}

fn old_names(state: &ChainState) -> Vec<String> {
    state
        .stages
        .iter()
        .take(state.len.min(MAX_STAGES) as usize)
        .map(|name| {
            let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
            String::from_utf8_lossy(&name[..end]).into_owned()
        })
        .collect()
}

const fn mode_code(mode: Mode) -> u32 {
    match mode {
        Mode::Auto => 0,
        Mode::Native => 1,
        Mode::Skb => 2,
        Mode::Offload => 3,
    }
}

const fn mode_name(code: u32) -> &'static str {
    match code {
        1 => "native",
        2 => "skb",
        3 => "offload",
        _ => "auto",
    }
}

/// The chain running on the interface whose pin directory is `dir`, read
/// from the pinned root state (no lock: a reader).
pub fn running(dir: &PinDir) -> Result<Option<RunningChain>> {
    let path = dir.file(pins::ROOT);
    let Some(map) = crate::maps::open_pin(&path)? else {
        return Ok(None);
    };
    let array: Array<MapData, ChainState> =
        Array::try_from(map).map_err(map_err(format!("open {}", path.display())))?;
    let state = array
        .get(&0, 0)
        .map_err(map_err(format!("read {}", path.display())))?;
    if state.len == 0 {
        return Ok(None);
    }
    let chain = crate::sys::obj_get(&dir.file(pins::CHAIN))?;
    let prog_ids = (state.base..state.base + state.len.min(MAX_STAGES))
        .map(|slot| crate::sys::map_lookup::<u32, u32>(chain.as_fd(), &slot))
        .map(|id| id.map(Option::unwrap_or_default))
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(RunningChain {
        prog_ids,
        stages: old_names(&state),
        base: state.base,
        mode: mode_name(state.mode),
        generation: state.generation,
        same_build: state.build == *BUILD,
    }))
}

/// Makes a pin root's alone; a pin for a map the object lacks (the shared
/// XSKMAP of a stage without sockets) was never made.
fn restrict(path: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if !path.exists() {
        return Ok(());
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        Error::Pin {
            what: "cannot chmod",
            path: path.to_path_buf(),
            source,
        }
    })
}

/// The root's state (zeros for a root map just created).
pub(crate) fn read_state(root: &Ebpf) -> Result<ChainState> {
    let map = root
        .map(ROOT_MAP)
        .ok_or_else(|| object::missing_map(ROOT_MAP))?;
    let array: Array<&MapData, ChainState> =
        Array::try_from(map).map_err(map_err("open the chain state"))?;
    array.get(&0, 0).map_err(map_err("read the chain state"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every tail call of the root has a constant slot (`r3 = imm` before
    /// `call bpf_tail_call`): the verifier then knows the key and the JIT
    /// emits a direct jump, not an indirect one through a retpoline (about
    /// 13 ns more per frame on x86 with retpolines; `cargo xtask bench
    /// stages`). An LLVM that merged the two calls would fail this. Both
    /// roots: the plain one and the RX-hash one.
    #[test]
    fn root_tail_calls_have_constant_slots() {
        for (object, symbol) in [
            (ROOT, ROOT_SYMBOL),
            (crate::rx_hash::ROOT_RXHASH, crate::rx_hash::SYMBOL),
        ] {
            check_constant_slots(object, symbol);
        }
    }

    fn check_constant_slots(object: Object, symbol: &str) {
        const CALL: u8 = 0x85; // BPF_JMP | BPF_CALL
        const TAIL_CALL: i32 = 12; // BPF_FUNC_tail_call
        const MOV_IMM: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
        let object = aya_obj::Object::parse(object.bytes).expect("root object");
        let root = object
            .functions
            .values()
            .find(|f| f.name == symbol)
            .expect("root function");
        let insns = &root.instructions;
        let writes_r3 = |i: &aya_obj::generated::bpf_insn| {
            // LD, LDX, ALU, ALU64 classes write their destination.
            i.dst_reg() == 3 && matches!(i.code & 7, 0 | 1 | 4 | 7)
        };
        let mut slots = Vec::new();
        for (at, insn) in insns.iter().enumerate() {
            if insn.code == CALL && insn.imm == TAIL_CALL {
                let set = insns[..at]
                    .iter()
                    .rev()
                    .find(|i| writes_r3(i))
                    .expect("r3 set before the tail call");
                assert_eq!(
                    set.code, MOV_IMM,
                    "{symbol}: the tail call at instruction {at} has a variable slot"
                );
                slots.push(set.imm as u32);
            }
        }
        slots.sort_unstable();
        assert_eq!(slots, [0, MAX_STAGES]);
    }
}
