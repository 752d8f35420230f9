//! The RX-hash root: the interface's root program, loaded bound to its
//! device so it can ask the driver for each frame's RX hash
//! (`bpf_xdp_metadata_rx_hash`) and leave it in the frame's metadata area
//! for the stages ([`RxHashMeta`]); the balancer hashes new flows with it.
//!
//! aya 0.14 can neither relocate a kfunc call nor load a program bound to
//! a device, so this module does both for this one small object: its maps
//! are the interface's pinned chain maps, and its one call outside the
//! program is the kfunc, which takes the kernel's BTF id of the function.

use std::{collections::HashSet, os::fd::AsFd as _, os::fd::AsRawFd as _};

use aya::{maps::MapData, programs::Xdp, Btf};
use aya_obj::{
    btf::BtfKind,
    generated::{BPF_PSEUDO_CALL, BPF_PSEUDO_KFUNC_CALL},
    programs::XdpAttachType,
};
use xdpkit_common::chain::{CHAIN_MAP, ROOT_MAP, RX_HASH_KFUNC};

pub use xdpkit_common::chain::{RxHashMeta, RX_HASH_MAGIC};

use crate::{
    mode::Mode,
    netlink,
    object::{embedded, Object},
    pins::{self, PinDir},
    sys, Error, Result,
};

/// The RX-hash root's object.
pub const ROOT_RXHASH: Object = embedded!("root_rxhash");
/// Its program (and, cut to 15 bytes, its kernel name).
pub const SYMBOL: &str = "xdpkit_root_rxhash";
/// The kernel's name of a loaded RX-hash root (names keep 15 bytes).
pub const KERNEL_NAME: &str = "xdpkit_root_rxh";

const BPF_JMP_CALL: u8 = 0x85;
/// Where the pinned program waits for aya to open it.
const PIN: &str = "root_rxhash";

/// Whether an interface should run the RX-hash root: a stage of the chain
/// reads the hash (`read`), the mode lets a device-bound program attach
/// (driver mode), and the driver offers the hash.
pub(crate) fn wanted(read: bool, mode: Mode, ifindex: u32) -> bool {
    read && matches!(mode, Mode::Auto | Mode::Native) && driver_offers(ifindex)
}

/// Whether the driver of `ifindex` gives XDP programs an RX hash.
pub fn driver_offers(ifindex: u32) -> bool {
    netlink::device_xdp_features(ifindex).is_ok_and(|f| f.rx_hash())
}

/// Whether the RX-hash root runs on `ifname` (its link's program).
pub fn running_on(ifname: &str) -> bool {
    crate::iface::index(ifname)
        .ok()
        .and_then(|ifindex| netlink::xdp_attachment(ifindex).ok().flatten())
        .is_some_and(|att| sys::program_name(att.prog_id) == KERNEL_NAME)
}

/// Loads the RX-hash root bound to `ifindex`, with the chain maps pinned in
/// `dir` (the interface's root created them).
pub(crate) fn load(dir: &PinDir, ifindex: u32) -> Result<Xdp> {
    let mut object = aya_obj::Object::parse(ROOT_RXHASH.bytes).map_err(Error::DamagedObject)?;
    let chain = pinned_map(dir, pins::CHAIN)?;
    let root = pinned_map(dir, pins::ROOT)?;
    let maps = object.maps.clone();
    let fds = [(CHAIN_MAP, &chain), (ROOT_MAP, &root)];
    let relocations = fds.iter().map(|(name, data)| {
        let def = maps.get(*name).expect("both maps are the root object's");
        (*name, data.fd().as_fd().as_raw_fd(), def)
    });
    let text: HashSet<usize> = object
        .functions
        .keys()
        .map(|(section, _)| *section)
        .collect();
    for name in [CHAIN_MAP, ROOT_MAP] {
        if !maps.contains_key(name) {
            return Err(Error::Internal(format!(
                "the RX-hash root has no map {name}"
            )));
        }
    }
    object
        .relocate_maps(relocations, &text)
        .map_err(|e| Error::Internal(format!("relocating the RX-hash root's maps: {e}")))?;
    let program = object
        .programs
        .get(SYMBOL)
        .ok_or_else(|| Error::Internal(format!("the RX-hash root object has no {SYMBOL}")))?;
    let key = program.function_key();
    let function = object.functions.get_mut(&key).ok_or_else(|| {
        Error::Internal(format!("the RX-hash root object has no code for {SYMBOL}"))
    })?;
    let kfunc = kfunc_id()?;
    // The program inlines everything: its only call to another function
    // is the external one, the kfunc.
    let mut calls = 0;
    for insn in &mut function.instructions {
        if insn.code == BPF_JMP_CALL && u32::from(insn.src_reg()) == BPF_PSEUDO_CALL {
            insn.set_src_reg(BPF_PSEUDO_KFUNC_CALL as u8);
            insn.imm = kfunc;
            insn.off = 0;
            calls += 1;
        }
    }
    if calls != 1 {
        return Err(Error::Internal(format!(
            "the RX-hash root has {calls} calls to other functions; expected one, the kfunc"
        )));
    }
    let fd = sys::prog_load(&sys::ProgLoad {
        name: SYMBOL,
        insns: &function.instructions,
        license: &object.license,
        ifindex,
    })?;
    // aya opens programs by pin; the pin goes once it has.
    let path = dir.file(PIN);
    let _ = std::fs::remove_file(&path);
    sys::obj_pin(fd.as_fd(), &path)?;
    let xdp = Xdp::from_pin(&path, XdpAttachType::Interface);
    let _ = std::fs::remove_file(&path);
    xdp.map_err(|source| Error::Load {
        program: "root_rxhash",
        source,
    })
}

fn pinned_map(dir: &PinDir, name: &str) -> Result<MapData> {
    let path = dir.file(name);
    MapData::from_pin(&path).map_err(|e| Error::Pin {
        what: "cannot open the chain map",
        path,
        source: std::io::Error::other(e),
    })
}

/// The kernel's BTF id of the RX hash kfunc.
fn kfunc_id() -> Result<i32> {
    let btf = Btf::from_sys_fs()
        .map_err(|e| Error::Internal(format!("reading the kernel's BTF: {e}")))?;
    let id = btf
        .id_by_type_name_kind(RX_HASH_KFUNC, BtfKind::Func)
        .map_err(|e| Error::Internal(format!("{RX_HASH_KFUNC} is not in the kernel's BTF: {e}")))?;
    i32::try_from(id).map_err(|_| Error::Internal(format!("BTF id {id} out of range")))
}
