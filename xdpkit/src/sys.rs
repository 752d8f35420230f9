//! bpf() commands aya 0.14 does not expose: links, pins, batch map
//! commands. Keys and values cross as [`Pod`] types whose sizes are
//! checked against the map's before any batch command.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

use std::mem::size_of;

use aya::Pod;

use crate::{Error, Result};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_LOOKUP_AND_DELETE_BATCH: libc::c_long = 25;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
const BPF_LINK_DETACH: libc::c_long = 34;

/// What the kernel says about an XDP bpf_link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XdpLinkInfo {
    /// Link id (`bpftool link`).
    pub id: u32,
    /// Id of the program the link runs.
    pub prog_id: u32,
    /// Interface the link is attached to; 0 once the device is gone.
    pub ifindex: u32,
}

/// The shape of a map to create: what [`map_create`] needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapShape {
    /// BPF_MAP_TYPE_*.
    pub map_type: u32,
    /// Key bytes.
    pub key_size: u32,
    /// Value bytes.
    pub value_size: u32,
    /// Capacity.
    pub max_entries: u32,
    /// BPF_F_* flags.
    pub flags: u32,
}

/// Creates an empty map named `name` (at most 15 bytes are kept).
pub fn map_create(name: &str, shape: MapShape) -> Result<OwnedFd> {
    // struct { map_type, key_size, value_size, max_entries, map_flags,
    //          inner_map_fd, numa_node: u32; char map_name[16]; ... }
    let mut attr = [0u8; 128];
    for (at, word) in [
        shape.map_type,
        shape.key_size,
        shape.value_size,
        shape.max_entries,
        shape.flags,
    ]
    .into_iter()
    .enumerate()
    {
        attr[at * 4..at * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
    let bytes = name.as_bytes();
    let len = bytes.len().min(15);
    attr[28..28 + len].copy_from_slice(&bytes[..len]);
    let fd = bpf(BPF_MAP_CREATE, &mut attr).map_err(|source| Error::Syscall {
        call: "BPF_MAP_CREATE",
        source,
    })?;
    // SAFETY: on success BPF_MAP_CREATE returns a new fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn c_path(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| Error::Pin {
        what: "invalid path",
        path: path.to_path_buf(),
        source: io::Error::from(io::ErrorKind::InvalidInput),
    })
}

/// The attr of BPF_OBJ_PIN and BPF_OBJ_GET with `path` filled in:
/// `struct { __aligned_u64 pathname; __u32 bpf_fd; __u32 file_flags; }`.
fn path_attr(path: &CString) -> [u8; 128] {
    let mut attr = [0u8; 128];
    attr[..8].copy_from_slice(&(path.as_ptr() as u64).to_ne_bytes());
    attr
}

/// Pins a bpf object at `path` (BPF_OBJ_PIN); the path must not exist.
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> Result<()> {
    let c_path = c_path(path)?;
    let mut attr = path_attr(&c_path);
    attr[8..12].copy_from_slice(&(fd.as_raw_fd() as u32).to_ne_bytes());
    bpf(BPF_OBJ_PIN, &mut attr)
        .map(drop)
        .map_err(|source| Error::Pin {
            what: "cannot pin at",
            path: path.to_path_buf(),
            source,
        })
}

/// Opens a pinned bpf object (BPF_OBJ_GET).
pub fn obj_get(path: &Path) -> Result<OwnedFd> {
    let c_path = c_path(path)?;
    let mut attr = path_attr(&c_path);
    let fd = bpf(BPF_OBJ_GET, &mut attr).map_err(|source| Error::Pin {
        what: "cannot open pinned object",
        path: path.to_path_buf(),
        source,
    })?;
    // SAFETY: on success BPF_OBJ_GET returns a new fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What [`prog_load`] loads.
pub struct ProgLoad<'a> {
    /// Kernel name of the program (at most 15 bytes are kept).
    pub name: &'a str,
    /// Relocated instructions.
    pub insns: &'a [aya_obj::generated::bpf_insn],
    /// The license the programs' helpers and kfuncs need.
    pub license: &'a std::ffi::CStr,
    /// Bound to this device (`prog_ifindex` with `BPF_F_XDP_DEV_BOUND_ONLY`):
    /// it may call the device's RX metadata kfuncs, attach only there in
    /// driver mode, and never sit in a PROG_ARRAY.
    pub ifindex: u32,
}

/// Loads an XDP program bound to a device (BPF_PROG_LOAD), which aya 0.14
/// cannot; on a refusal the error carries the verifier's log.
pub fn prog_load(load: &ProgLoad<'_>) -> Result<OwnedFd> {
    use aya_obj::generated::{
        bpf_attach_type::BPF_XDP, bpf_attr, bpf_cmd::BPF_PROG_LOAD,
        bpf_prog_type::BPF_PROG_TYPE_XDP, BPF_F_XDP_DEV_BOUND_ONLY, BPF_F_XDP_HAS_FRAGS,
    };
    let mut log = vec![0u8; 64 * 1024];
    // SAFETY: bpf_attr is plain data; all zero is its "unset" state.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: the BPF_PROG_LOAD member of the union, the one this command reads.
    let u = unsafe { &mut attr.__bindgen_anon_3 };
    u.prog_type = BPF_PROG_TYPE_XDP as u32;
    u.expected_attach_type = BPF_XDP as u32;
    u.insns = load.insns.as_ptr() as u64;
    u.insn_cnt = load.insns.len() as u32;
    u.license = load.license.as_ptr() as u64;
    u.prog_ifindex = load.ifindex;
    // With frags, as every stage: a PROG_ARRAY takes only programs that
    // agree on it, so a root without it could not tail-call the chain.
    u.prog_flags = BPF_F_XDP_DEV_BOUND_ONLY | BPF_F_XDP_HAS_FRAGS;
    u.log_level = 1;
    u.log_buf = log.as_mut_ptr() as u64;
    u.log_size = log.len() as u32;
    let name = load.name.as_bytes();
    for (to, from) in u.prog_name.iter_mut().zip(name.iter().take(15)) {
        *to = *from as std::ffi::c_char;
    }
    // SAFETY: attr is a bpf_attr for BPF_PROG_LOAD; the instructions,
    // license and log buffers it points to outlive the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD as libc::c_long,
            std::ptr::from_mut(&mut attr),
            size_of::<bpf_attr>() as u32,
        )
    };
    if ret < 0 {
        let source = io::Error::last_os_error();
        let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
        let log = String::from_utf8_lossy(&log[..end]);
        // The verifier's verdict is at the end of its log.
        let tail: Vec<&str> = log.lines().rev().take(4).collect();
        return Err(Error::Internal(format!(
            "the kernel refused program {}: {source}: {}",
            load.name,
            tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
        )));
    }
    // SAFETY: on success BPF_PROG_LOAD returns a new fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as i32) })
}

/// Kernel name of a program id, or "?" if it cannot be read.
pub fn program_name(prog_id: u32) -> String {
    aya::programs::loaded_programs()
        .filter_map(|p| p.ok())
        .find(|p| p.id() == prog_id)
        .and_then(|p| p.name_as_str().map(str::to_string))
        .unwrap_or_else(|| "?".to_string())
}

/// Forces an XDP link off its interface, even if another process still holds
/// the link's fd (closing our fd alone would not detach it then).
pub fn link_detach(link: BorrowedFd<'_>) -> Result<()> {
    // struct { __u32 link_fd; } link_detach;
    let mut attr = [0u8; 128];
    attr[..4].copy_from_slice(&(link.as_raw_fd() as u32).to_ne_bytes());
    bpf(BPF_LINK_DETACH, &mut attr)
        .map(drop)
        .map_err(|source| Error::Syscall {
            call: "BPF_LINK_DETACH",
            source,
        })
}

/// The first 128 bytes of the kernel's info on a bpf object
/// (BPF_OBJ_GET_INFO_BY_FD), zero-filled past what the kernel writes.
fn obj_info(fd: BorrowedFd<'_>) -> Result<[u8; 128]> {
    let mut info = [0u8; 128];
    let mut attr = [0u8; 128];
    // struct { __u32 bpf_fd; __u32 info_len; __aligned_u64 info; } info;
    attr[..4].copy_from_slice(&(fd.as_raw_fd() as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&(info.len() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(info.as_mut_ptr() as u64).to_ne_bytes());
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).map_err(|source| Error::Syscall {
        call: "BPF_OBJ_GET_INFO_BY_FD",
        source,
    })?;
    Ok(info)
}

/// Id, program id and interface of an XDP link.
pub fn xdp_link_info(link: BorrowedFd<'_>) -> Result<XdpLinkInfo> {
    // struct bpf_link_info: type, id, prog_id (u32 each), then an 8-aligned
    // union whose xdp member starts with the ifindex, at offset 16.
    let info = obj_info(link)?;
    let word = |at: usize| u32::from_ne_bytes([info[at], info[at + 1], info[at + 2], info[at + 3]]);
    Ok(XdpLinkInfo {
        id: word(4),
        prog_id: word(8),
        ifindex: word(16),
    })
}

/// What BPF_OBJ_GET_INFO_BY_FD says about a map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapInfo {
    /// The kernel's name of the map (at most 15 bytes of the object name).
    pub name: String,
    /// Type, sizes and flags.
    pub shape: MapShape,
}

impl MapInfo {
    /// Whether the map holds one value per possible CPU for each key.
    pub fn is_per_cpu(&self) -> bool {
        // BPF_MAP_TYPE_PERCPU_HASH, _PERCPU_ARRAY, _LRU_PERCPU_HASH, _PERCPU_CGROUP_STORAGE.
        matches!(self.shape.map_type, 5 | 6 | 10 | 21)
    }

    /// Bytes the kernel copies per value in batch commands: the value, or
    /// for per-CPU maps one 8-byte-aligned slot per possible CPU.
    fn value_stride(&self, cpus: usize) -> usize {
        let size = self.shape.value_size as usize;
        if self.is_per_cpu() {
            size.next_multiple_of(8) * cpus
        } else {
            size
        }
    }

    /// [`Error::MapLayout`] unless the map's `what` has `map_bytes` = `type_bytes`.
    fn expect(&self, what: &'static str, map_bytes: usize, type_bytes: usize) -> Result<()> {
        if map_bytes == type_bytes {
            return Ok(());
        }
        Err(Error::MapLayout {
            map: self.name.clone(),
            what,
            map_bytes,
            type_bytes,
        })
    }
}

/// Type, sizes and name of a map (BPF_OBJ_GET_INFO_BY_FD).
pub fn map_info(map: BorrowedFd<'_>) -> Result<MapInfo> {
    // struct bpf_map_info { type, id, key_size, value_size, max_entries,
    //                       map_flags: u32; char name[16]; ... }
    let info = obj_info(map)?;
    let word = |at: usize| u32::from_ne_bytes([info[at], info[at + 1], info[at + 2], info[at + 3]]);
    let name = &info[24..40];
    let name = &name[..name.iter().position(|b| *b == 0).unwrap_or(name.len())];
    Ok(MapInfo {
        name: String::from_utf8_lossy(name).into_owned(),
        shape: MapShape {
            map_type: word(0),
            key_size: word(8),
            value_size: word(12),
            max_entries: word(16),
            flags: word(20),
        },
    })
}

/// The map's info once keys `K` and values `V` (per-CPU maps: `cpus`
/// slots of `V` a key when `per_cpu`) are checked against its sizes.
fn checked<K: Pod, V: Pod>(map: BorrowedFd<'_>, per_cpu: Option<usize>) -> Result<MapInfo> {
    let info = map_info(map)?;
    info.expect("key", info.shape.key_size as usize, size_of::<K>())?;
    match per_cpu {
        None => info.expect("value", info.value_stride(possible_cpus()?), size_of::<V>())?,
        Some(_) if !info.is_per_cpu() => {
            info.expect("per-CPU value", 0, size_of::<V>())?;
        }
        Some(_) => info.expect("value", info.shape.value_size as usize, size_of::<V>())?,
    }
    Ok(info)
}

/// The value at `key` (BPF_MAP_LOOKUP_ELEM), or `None` if there is none;
/// for a PROG_ARRAY the value is the program's id. Fails with
/// [`Error::MapLayout`] if `K` or `V` is not the map's key or value size.
pub fn map_lookup<K: Pod, V: Pod>(map: BorrowedFd<'_>, key: &K) -> Result<Option<V>> {
    checked::<K, V>(map, None)?;
    let mut value = std::mem::MaybeUninit::<V>::zeroed();
    let mut attr = [0u8; 128];
    // struct { __u32 map_fd; __aligned_u64 key; __aligned_u64 value; __u64 flags; }
    attr[..4].copy_from_slice(&(map.as_raw_fd() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(std::ptr::from_ref(key) as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(value.as_mut_ptr() as u64).to_ne_bytes());
    match bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
        // SAFETY: the kernel wrote a whole value of the map's size, which is
        // V's (checked), and V is Pod: any bytes are a valid V.
        Ok(_) => Ok(Some(unsafe { value.assume_init() })),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(source) => Err(Error::Syscall {
            call: "BPF_MAP_LOOKUP_ELEM",
            source,
        }),
    }
}

/// Writes `values[i]` at `keys[i]` for all i in one BPF_MAP_UPDATE_BATCH
/// (one syscall instead of one per entry). Fails with [`Error::MapLayout`]
/// if `K` or `V` is not the map's key or value size.
pub fn map_update_batch<K: Pod, V: Pod>(
    map: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> Result<()> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    if keys.is_empty() {
        return Ok(());
    }
    checked::<K, V>(map, None)?;
    // SAFETY: both slices hold keys.len() elements of the map's sizes (checked).
    unsafe {
        update_batch(
            map,
            keys.as_ptr().cast(),
            values.as_ptr().cast(),
            keys.len(),
        )
    }
}

/// [`map_update_batch`] for a per-CPU map: `values` holds one `V` per
/// possible CPU for each key, key after key.
pub fn map_update_batch_per_cpu<K: Pod, V: Pod>(
    map: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let cpus = possible_cpus()?;
    assert_eq!(values.len(), keys.len() * cpus, "one value per key and CPU");
    checked::<K, V>(map, Some(cpus))?;
    let slot = size_of::<V>().next_multiple_of(8);
    let mut bytes = vec![0u8; slot * values.len()];
    for (at, v) in bytes.chunks_exact_mut(slot).zip(values) {
        // SAFETY: `at` has room for one V; V is plain data.
        unsafe { std::ptr::write_unaligned(at.as_mut_ptr().cast::<V>(), *v) };
    }
    // SAFETY: keys of the map's key size, `cpus` value slots of its value size each.
    unsafe { update_batch(map, keys.as_ptr().cast(), bytes.as_ptr(), keys.len()) }
}

/// # Safety
///
/// `keys` and `values` point to `count` keys and values of the map's sizes.
unsafe fn update_batch(
    map: BorrowedFd<'_>,
    keys: *const u8,
    values: *const u8,
    count: usize,
) -> Result<()> {
    if count == 0 {
        return Ok(());
    }
    // struct { in_batch, out_batch, keys, values: u64; count, map_fd: u32; elem_flags, flags: u64 } batch;
    let mut attr = [0u8; 128];
    attr[16..24].copy_from_slice(&(keys as u64).to_ne_bytes());
    attr[24..32].copy_from_slice(&(values as u64).to_ne_bytes());
    attr[32..36].copy_from_slice(&(count as u32).to_ne_bytes());
    attr[36..40].copy_from_slice(&(map.as_raw_fd() as u32).to_ne_bytes());
    bpf(BPF_MAP_UPDATE_BATCH, &mut attr)
        .map(drop)
        .map_err(|source| Error::Syscall {
            call: "BPF_MAP_UPDATE_BATCH",
            source,
        })
}

/// Deletes `key` (BPF_MAP_DELETE_ELEM), for maps without batch operations
/// (a CPUMAP); `Ok(false)` if it was not there.
pub fn map_delete<K: Pod>(map: BorrowedFd<'_>, key: &K) -> Result<bool> {
    // struct { map_fd: u32; pad; key: u64; ... } elem;
    let mut attr = [0u8; 128];
    attr[..4].copy_from_slice(&(map.as_raw_fd() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(key as *const K as u64).to_ne_bytes());
    match bpf(BPF_MAP_DELETE_ELEM, &mut attr) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(source) => Err(Error::Syscall {
            call: "BPF_MAP_DELETE_ELEM",
            source,
        }),
    }
}

/// Deletes `keys` in one BPF_MAP_DELETE_BATCH; every key must exist.
pub fn map_delete_batch<K: Pod>(map: BorrowedFd<'_>, keys: &[K]) -> Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let info = map_info(map)?;
    info.expect("key", info.shape.key_size as usize, size_of::<K>())?;
    let mut attr = [0u8; 128];
    attr[16..24].copy_from_slice(&(keys.as_ptr() as u64).to_ne_bytes());
    attr[32..36].copy_from_slice(&(keys.len() as u32).to_ne_bytes());
    attr[36..40].copy_from_slice(&(map.as_raw_fd() as u32).to_ne_bytes());
    bpf(BPF_MAP_DELETE_BATCH, &mut attr)
        .map(drop)
        .map_err(|source| Error::Syscall {
            call: "BPF_MAP_DELETE_BATCH",
            source,
        })
}

/// Reads every entry of a map that is not per-CPU with
/// BPF_MAP_LOOKUP_BATCH, stopping once `limit` entries are read (arrays:
/// the first `limit` indexes).
pub fn map_dump<K: Pod, V: Pod>(map: BorrowedFd<'_>, limit: usize) -> Result<Vec<(K, V)>> {
    let info = checked::<K, V>(map, None)?;
    let (keys, values) = batch_read(
        BPF_MAP_LOOKUP_BATCH,
        map,
        size_of::<K>(),
        size_of::<V>(),
        limit,
        limit.min(info.shape.max_entries as usize),
    )?;
    Ok(keys
        .chunks_exact(size_of::<K>())
        .zip(values.chunks_exact(size_of::<V>()))
        .map(|(k, v)| (read::<K>(k), read::<V>(v)))
        .collect())
}

/// [`map_dump`] of a per-CPU map: per key, one value a possible CPU.
pub fn map_dump_per_cpu<K: Pod, V: Pod>(
    map: BorrowedFd<'_>,
    limit: usize,
) -> Result<Vec<(K, Vec<V>)>> {
    let cpus = possible_cpus()?;
    let info = checked::<K, V>(map, Some(cpus))?;
    let slot = size_of::<V>().next_multiple_of(8);
    let (keys, values) = batch_read(
        BPF_MAP_LOOKUP_BATCH,
        map,
        size_of::<K>(),
        slot * cpus,
        limit,
        limit.min(info.shape.max_entries as usize),
    )?;
    Ok(keys
        .chunks_exact(size_of::<K>())
        .zip(values.chunks_exact(slot * cpus))
        .map(|(k, per_key)| {
            (
                read::<K>(k),
                per_key.chunks_exact(slot).map(read::<V>).collect(),
            )
        })
        .collect())
}

/// Empties a hash map in one pass (BPF_MAP_LOOKUP_AND_DELETE_BATCH), where
/// a dump and a delete would walk it twice. Returns how many entries it held.
pub fn hash_drain<K: Pod, V: Pod>(map: BorrowedFd<'_>) -> Result<usize> {
    let info = checked::<K, V>(map, None)?;
    let (keys, _) = batch_read(
        BPF_MAP_LOOKUP_AND_DELETE_BATCH,
        map,
        size_of::<K>(),
        info.value_stride(possible_cpus()?),
        usize::MAX,
        info.shape.max_entries as usize,
    )?;
    Ok(keys.len() / size_of::<K>().max(1))
}

/// The `T` at the start of `bytes` (which holds at least one).
fn read<T: Pod>(bytes: &[u8]) -> T {
    assert!(bytes.len() >= size_of::<T>());
    // SAFETY: `bytes` holds a T as the kernel copied it; T is plain data,
    // valid for any bytes.
    unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) }
}

fn batch_read(
    cmd: libc::c_long,
    map: BorrowedFd<'_>,
    key_size: usize,
    value_stride: usize,
    limit: usize,
    room: usize,
) -> Result<(Vec<u8>, Vec<u8>)> {
    let call = if cmd == BPF_MAP_LOOKUP_BATCH {
        "BPF_MAP_LOOKUP_BATCH"
    } else {
        "BPF_MAP_LOOKUP_AND_DELETE_BATCH"
    };
    // `room` (the entries the map or the limit allows) reserved once,
    // where growing a million-entry read copied it over and over. Pages
    // the kernel does not fill cost nothing.
    let mut keys = Vec::with_capacity(room * key_size);
    let mut values = Vec::with_capacity(room * value_stride);
    // Holds the kernel's resume token: a key for tries and arrays, a bucket for hashes.
    let mut token = vec![0u8; key_size.max(8)];
    let mut first = true;
    loop {
        let chunk = (limit - keys.len() / key_size).min(8192);
        if chunk == 0 {
            return Ok((keys, values));
        }
        let start = keys.len();
        keys.resize(start + chunk * key_size, 0);
        let vstart = values.len();
        values.resize(vstart + chunk * value_stride, 0);
        let mut attr = [0u8; 128];
        let in_batch = if first { 0 } else { token.as_ptr() as u64 };
        attr[0..8].copy_from_slice(&in_batch.to_ne_bytes());
        attr[8..16].copy_from_slice(&(token.as_mut_ptr() as u64).to_ne_bytes());
        attr[16..24].copy_from_slice(&(keys[start..].as_mut_ptr() as u64).to_ne_bytes());
        attr[24..32].copy_from_slice(&(values[vstart..].as_mut_ptr() as u64).to_ne_bytes());
        attr[32..36].copy_from_slice(&(chunk as u32).to_ne_bytes());
        attr[36..40].copy_from_slice(&(map.as_raw_fd() as u32).to_ne_bytes());
        let result = bpf(cmd, &mut attr);
        let got = u32::from_ne_bytes(attr[32..36].try_into().expect("4 bytes")) as usize;
        keys.truncate(start + got * key_size);
        values.truncate(vstart + got * value_stride);
        first = false;
        match result {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok((keys, values)),
            Err(source) => return Err(Error::Syscall { call, source }),
        }
    }
}

/// The kernel memory charged to map `map`: the `memlock` line of its fd's
/// fdinfo (what `bpftool map show` prints as bytes_memlock; the kernel's
/// `map_mem_usage` estimate since 6.4).
pub fn map_memlock(map: BorrowedFd<'_>) -> Result<u64> {
    let path = format!("/proc/self/fdinfo/{}", map.as_raw_fd());
    let text = std::fs::read_to_string(&path).map_err(|source| Error::Syscall {
        call: "read fdinfo",
        source,
    })?;
    text.lines()
        .find_map(|line| line.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| Error::Syscall {
            call: "read fdinfo",
            source: io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{path}: no memlock line"),
            ),
        })
}

/// Possible CPUs: the number of values a per-CPU map holds per key.
pub fn possible_cpus() -> Result<usize> {
    aya::util::nr_cpus().map_err(|(_, source)| Error::Syscall {
        call: "possible CPUs",
        source,
    })
}

fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> io::Result<i32> {
    // SAFETY: attr is a zeroed bpf_attr-sized buffer laid out for `cmd`; the
    // kernel reads/writes at most attr.len() bytes of it and of the buffers it
    // points to, which outlive the call.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len() as u32) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as i32)
    }
}
