//! Whole-map reads and writes with the batch commands: a million entries
//! in a few hundred syscalls instead of a million.

use std::{mem::size_of, os::fd::AsFd as _, os::fd::BorrowedFd};

use aya::maps::Map;

use super::{missing_map, MapSource};
use crate::{sys, Error, Result};

/// The fd of map `name`.
pub fn map_fd<'a>(maps: &'a impl MapSource, name: &str) -> Result<BorrowedFd<'a>> {
    match maps.map(name).ok_or_else(|| missing_map(name))? {
        Map::Array(d)
        | Map::HashMap(d)
        | Map::LpmTrie(d)
        | Map::PerCpuArray(d)
        | Map::PerCpuHashMap(d) => Ok(d.fd().as_fd()),
        _ => Err(missing_map(name)),
    }
}

/// What the kernel says about map `name`.
pub fn map_info(maps: &impl MapSource, name: &str) -> Result<aya::maps::MapInfo> {
    match maps.map(name).ok_or_else(|| missing_map(name))? {
        Map::Array(d)
        | Map::PerCpuArray(d)
        | Map::HashMap(d)
        | Map::LpmTrie(d)
        | Map::PerCpuHashMap(d) => d.info().map_err(|e| Error::Map {
            what: format!("read the info of {name}"),
            source: e.into(),
        }),
        _ => Err(missing_map(name)),
    }
}

/// Writes `values` at indexes 0.. of array `name`.
pub fn write_array<V: Copy>(maps: &impl MapSource, name: &str, values: &[V]) -> Result<()> {
    write_array_fd(map_fd(maps, name)?, values)
}

/// [`write_array`] on a map fd.
pub fn write_array_fd<V: Copy>(fd: BorrowedFd<'_>, values: &[V]) -> Result<()> {
    let keys: Vec<u32> = (0..values.len() as u32).collect();
    sys::map_update_batch(fd, &keys, values)
}

/// Writes `values[i]` at `keys[i]` in map `name`.
pub fn update<K: Copy, V: Copy>(
    maps: &impl MapSource,
    name: &str,
    keys: &[K],
    values: &[V],
) -> Result<()> {
    sys::map_update_batch(map_fd(maps, name)?, keys, values)
}

/// Deletes `keys` (which must all exist) from map `name`.
pub fn delete<K: Copy>(maps: &impl MapSource, name: &str, keys: &[K]) -> Result<()> {
    sys::map_delete_batch(map_fd(maps, name)?, keys)
}

/// Every (key, value) of a map that is not per-CPU, up to `limit` entries.
pub fn dump<K: Copy, V: Copy>(
    maps: &impl MapSource,
    name: &str,
    limit: usize,
) -> Result<Vec<(K, V)>> {
    dump_fd(map_fd(maps, name)?, limit)
}

/// [`dump`] on a map fd.
pub fn dump_fd<K: Copy, V: Copy>(fd: BorrowedFd<'_>, limit: usize) -> Result<Vec<(K, V)>> {
    let (keys, values) = sys::map_dump(fd, size_of::<K>(), size_of::<V>(), limit)?;
    Ok(keys
        .chunks_exact(size_of::<K>())
        .zip(values.chunks_exact(size_of::<V>()))
        // SAFETY: each chunk holds one K or V as the kernel copied it; both are plain data.
        .map(|(k, v)| unsafe {
            (
                std::ptr::read_unaligned(k.as_ptr().cast::<K>()),
                std::ptr::read_unaligned(v.as_ptr().cast::<V>()),
            )
        })
        .collect())
}

/// Bytes the kernel copies per key of a per-CPU map of `V`.
pub fn per_cpu_stride<V>(cpus: usize) -> usize {
    size_of::<V>().next_multiple_of(8) * cpus
}

/// The first `limit` entries of a per-CPU array: per index, one value a CPU.
pub fn dump_per_cpu<V: Copy>(
    maps: &impl MapSource,
    name: &str,
    cpus: usize,
    limit: usize,
) -> Result<Vec<Vec<V>>> {
    let slot = size_of::<V>().next_multiple_of(8);
    let (_, values) = sys::map_dump(map_fd(maps, name)?, 4, slot * cpus, limit)?;
    Ok(values
        .chunks_exact(slot * cpus)
        .map(|per_key| {
            per_key
                .chunks_exact(slot)
                // SAFETY: each slot starts with one V as the kernel copied it.
                .map(|s| unsafe { std::ptr::read_unaligned(s.as_ptr().cast::<V>()) })
                .collect()
        })
        .collect())
}

/// Zeroes entries `ids` of a per-CPU array of `V` on every CPU.
pub fn zero_per_cpu<V>(maps: &impl MapSource, name: &str, cpus: usize, ids: &[u32]) -> Result<()> {
    let zeros = vec![0u8; per_cpu_stride::<V>(cpus) * ids.len()];
    sys::map_update_batch_bytes(map_fd(maps, name)?, ids, &zeros)
}

/// Deletes every entry of hash or trie `name` (keys `K`, values `V`).
pub fn clear<K: Copy, V: Copy>(maps: &impl MapSource, name: &str) -> Result<()> {
    clear_fd::<K, V>(map_fd(maps, name)?)
}

/// [`clear`] on a map fd.
pub fn clear_fd<K: Copy, V: Copy>(fd: BorrowedFd<'_>) -> Result<()> {
    let keys: Vec<K> = dump_fd::<K, V>(fd, usize::MAX)?
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    sys::map_delete_batch(fd, &keys)
}

/// Empties hash map `fd` in one pass; returns how many entries it held.
pub fn drain_hash_fd<K: Copy, V: Copy>(fd: BorrowedFd<'_>) -> Result<usize> {
    sys::hash_drain(fd, size_of::<K>(), size_of::<V>())
}

/// A piece of work for [`in_parallel`].
pub type Job<'a> = Box<dyn FnOnce() -> Result<()> + Send + 'a>;

/// Runs `jobs` on threads of their own and returns the first error. Filling
/// big maps is kernel work done by the calling thread, so separate maps
/// filled on separate threads use every CPU.
pub fn in_parallel(jobs: Vec<Job<'_>>) -> Result<()> {
    std::thread::scope(|scope| {
        let running: Vec<_> = jobs.into_iter().map(|job| scope.spawn(job)).collect();
        running
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect::<Result<Vec<()>>>()
            .map(drop)
    })
}
