//! bpf() commands aya 0.14 does not expose for links.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

use crate::{Error, Result};

const BPF_MAP_CREATE: libc::c_long = 0;
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

/// Id, program id and interface of an XDP link.
pub fn xdp_link_info(link: BorrowedFd<'_>) -> Result<XdpLinkInfo> {
    // struct bpf_link_info: type, id, prog_id (u32 each), then an 8-aligned
    // union whose xdp member starts with the ifindex, at offset 16.
    let mut info = [0u8; 128];
    let mut attr = [0u8; 128];
    // struct { __u32 bpf_fd; __u32 info_len; __aligned_u64 info; } info;
    attr[..4].copy_from_slice(&(link.as_raw_fd() as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&(info.len() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(info.as_mut_ptr() as u64).to_ne_bytes());
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).map_err(|source| Error::Syscall {
        call: "BPF_OBJ_GET_INFO_BY_FD",
        source,
    })?;
    let word = |at: usize| u32::from_ne_bytes([info[at], info[at + 1], info[at + 2], info[at + 3]]);
    Ok(XdpLinkInfo {
        id: word(4),
        prog_id: word(8),
        ifindex: word(16),
    })
}

/// Writes `values[i]` at `keys[i]` for all i in one BPF_MAP_UPDATE_BATCH
/// (one syscall instead of one per entry).
pub fn map_update_batch<K: Copy, V: Copy>(
    map: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> Result<()> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    // SAFETY: both slices hold keys.len() elements of plain data.
    unsafe {
        update_batch(
            map,
            keys.as_ptr().cast(),
            values.as_ptr().cast(),
            keys.len(),
        )
    }
}

/// [`map_update_batch`] with values given as bytes, `values.len() / keys.len()`
/// each (per-CPU maps: one 8-byte-aligned slot per possible CPU).
pub fn map_update_batch_bytes<K: Copy>(
    map: BorrowedFd<'_>,
    keys: &[K],
    values: &[u8],
) -> Result<()> {
    assert!(
        keys.is_empty() || values.len().is_multiple_of(keys.len()),
        "same size for every value"
    );
    // SAFETY: keys holds keys.len() keys and values that many values.
    unsafe { update_batch(map, keys.as_ptr().cast(), values.as_ptr(), keys.len()) }
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

/// Deletes `keys` in one BPF_MAP_DELETE_BATCH; every key must exist.
pub fn map_delete_batch<K: Copy>(map: BorrowedFd<'_>, keys: &[K]) -> Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
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

/// Reads every entry of a map with BPF_MAP_LOOKUP_BATCH, `chunk` entries a
/// call. `value_stride` is the value size as the kernel copies it (per-CPU
/// maps: one 8-byte-aligned slot per possible CPU). Returns the raw keys and
/// values, `key_size` and `value_stride` bytes each. Stops once `limit`
/// entries are read (arrays: the first `limit` indexes).
pub fn map_dump(
    map: BorrowedFd<'_>,
    key_size: usize,
    value_stride: usize,
    limit: usize,
) -> Result<(Vec<u8>, Vec<u8>)> {
    batch_read(BPF_MAP_LOOKUP_BATCH, map, key_size, value_stride, limit)
}

/// Empties a hash map in one pass (BPF_MAP_LOOKUP_AND_DELETE_BATCH), where
/// a dump and a delete would walk it twice. Returns how many entries it held.
pub fn hash_drain(map: BorrowedFd<'_>, key_size: usize, value_size: usize) -> Result<usize> {
    let (keys, _) = batch_read(
        BPF_MAP_LOOKUP_AND_DELETE_BATCH,
        map,
        key_size,
        value_size,
        usize::MAX,
    )?;
    Ok(keys.len() / key_size.max(1))
}

fn batch_read(
    cmd: libc::c_long,
    map: BorrowedFd<'_>,
    key_size: usize,
    value_stride: usize,
    limit: usize,
) -> Result<(Vec<u8>, Vec<u8>)> {
    let call = if cmd == BPF_MAP_LOOKUP_BATCH {
        "BPF_MAP_LOOKUP_BATCH"
    } else {
        "BPF_MAP_LOOKUP_AND_DELETE_BATCH"
    };
    let mut keys = Vec::new();
    let mut values = Vec::new();
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
