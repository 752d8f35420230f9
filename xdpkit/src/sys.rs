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

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
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

/// Opens a pinned bpf object (BPF_OBJ_GET).
pub fn obj_get(path: &Path) -> Result<OwnedFd> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|_| Error::Pin {
        what: "invalid path",
        path: path.to_path_buf(),
        source: io::Error::from(io::ErrorKind::InvalidInput),
    })?;
    // union bpf_attr { struct { __aligned_u64 pathname; __u32 bpf_fd; __u32 file_flags; }; }
    let mut attr = [0u8; 128];
    attr[..8].copy_from_slice(&(c_path.as_ptr() as u64).to_ne_bytes());
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
    if keys.is_empty() {
        return Ok(());
    }
    // struct { in_batch, out_batch, keys, values: u64; count, map_fd: u32; elem_flags, flags: u64 } batch;
    let mut attr = [0u8; 128];
    attr[16..24].copy_from_slice(&(keys.as_ptr() as u64).to_ne_bytes());
    attr[24..32].copy_from_slice(&(values.as_ptr() as u64).to_ne_bytes());
    attr[32..36].copy_from_slice(&(keys.len() as u32).to_ne_bytes());
    attr[36..40].copy_from_slice(&(map.as_raw_fd() as u32).to_ne_bytes());
    bpf(BPF_MAP_UPDATE_BATCH, &mut attr)
        .map(drop)
        .map_err(|source| Error::Syscall {
            call: "BPF_MAP_UPDATE_BATCH",
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
