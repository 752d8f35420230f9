//! The firewall's trie and host-map writers over the generic batch
//! operations of [`crate::maps::batch`]: keys made from [`IpNet`]s.

use std::{net::IpAddr, os::fd::BorrowedFd};

use aya::Pod;
use ipnet::IpNet;

use crate::maps::{
    batch::{clear, clear_fd, drain_hash_fd, map_fd},
    MapSource,
};
use crate::{sys, Error, Result};

/// An LPM-trie key as the kernel lays it out.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct TrieKey<const N: usize> {
    /// Prefix length.
    pub len: u32,
    /// Address bytes, network order.
    pub addr: [u8; N],
}

// SAFETY: repr(C, packed): a u32 and bytes, no padding, valid for any bytes.
unsafe impl<const N: usize> Pod for TrieKey<N> {}

impl<const N: usize> TrieKey<N> {
    /// The key of `net`; fails if its family does not have `N` bytes.
    pub fn of(net: &IpNet) -> Result<TrieKey<N>> {
        let addr: [u8; N] = match net.addr() {
            IpAddr::V4(a) => a.octets().as_slice().try_into(),
            IpAddr::V6(a) => a.octets().as_slice().try_into(),
        }
        .map_err(|_| Error::Internal(format!("{net} is not a {N}-byte address")))?;
        Ok(TrieKey {
            len: u32::from(net.prefix_len()),
            addr,
        })
    }
}

/// Replaces the contents of an LPM trie with `entries`.
pub(crate) fn write_trie<const N: usize, V: Pod>(
    maps: &impl MapSource,
    name: &str,
    entries: &[(IpNet, V)],
) -> Result<()> {
    write_trie_fd::<N, V>(map_fd(maps, name)?, entries)
}

/// [`write_trie`] on a map fd.
pub(crate) fn write_trie_fd<const N: usize, V: Pod>(
    fd: BorrowedFd<'_>,
    entries: &[(IpNet, V)],
) -> Result<()> {
    let (keys, values) = split(entries, TrieKey::<N>::of)?;
    clear_fd::<TrieKey<N>, V>(fd)?;
    sys::map_update_batch(fd, &keys, &values)
}

/// Replaces the contents of an LPM trie with `keys[i]` -> `values[i]`.
pub(crate) fn write_trie_keys<const N: usize, V: Pod>(
    maps: &impl MapSource,
    name: &str,
    keys: &[TrieKey<N>],
    values: &[V],
) -> Result<()> {
    clear::<TrieKey<N>, V>(maps, name)?;
    sys::map_update_batch(map_fd(maps, name)?, keys, values)
}

/// Replaces the contents of a hash map keyed by the address bytes.
pub(crate) fn write_hash_fd<const N: usize, V: Pod>(
    fd: BorrowedFd<'_>,
    entries: &[(IpNet, V)],
) -> Result<()> {
    let (keys, values) = split(entries, |net| TrieKey::<N>::of(net).map(|k| k.addr))?;
    drain_hash_fd::<[u8; N], V>(fd)?;
    sys::map_update_batch(fd, &keys, &values)
}

/// Keys made by `key` and the values of `entries`.
fn split<K: Copy, V: Pod>(
    entries: &[(IpNet, V)],
    key: impl Fn(&IpNet) -> Result<K>,
) -> Result<(Vec<K>, Vec<V>)> {
    let keys = entries
        .iter()
        .map(|(net, _)| key(net))
        .collect::<Result<Vec<K>>>()?;
    Ok((keys, entries.iter().map(|(_, v)| *v).collect()))
}
