//! Whole-map reads and writes with the batch commands: a million entries
//! in a few hundred syscalls instead of a million. Keys and values are
//! [`Pod`] types, checked against the map's sizes before each command.

use std::os::fd::{AsFd as _, BorrowedFd};

use aya::{maps::Map, Pod};

use super::{missing_map, MapSource};
use crate::{sys, Error, Result};

/// The fd of map `name`.
pub fn map_fd<'a>(maps: &'a impl MapSource, name: &str) -> Result<BorrowedFd<'a>> {
    match maps.map(name).ok_or_else(|| missing_map(name))? {
        Map::Array(d)
        | Map::HashMap(d)
        | Map::LpmTrie(d)
        | Map::PerCpuArray(d)
        | Map::PerCpuHashMap(d)
        | Map::LruHashMap(d) => Ok(d.fd().as_fd()),
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
        | Map::PerCpuHashMap(d)
        | Map::LruHashMap(d) => d.info().map_err(|e| Error::Map {
            what: format!("read the info of {name}"),
            source: e.into(),
        }),
        _ => Err(missing_map(name)),
    }
}

/// Writes `values` at indexes 0.. of array `name`.
pub fn write_array<V: Pod>(maps: &impl MapSource, name: &str, values: &[V]) -> Result<()> {
    write_array_fd(map_fd(maps, name)?, values)
}

/// [`write_array`] on a map fd.
pub fn write_array_fd<V: Pod>(fd: BorrowedFd<'_>, values: &[V]) -> Result<()> {
    let keys: Vec<u32> = (0..values.len() as u32).collect();
    sys::map_update_batch(fd, &keys, values)
}

/// Writes `values[i]` at `keys[i]` in map `name`.
pub fn update<K: Pod, V: Pod>(
    maps: &impl MapSource,
    name: &str,
    keys: &[K],
    values: &[V],
) -> Result<()> {
    sys::map_update_batch(map_fd(maps, name)?, keys, values)
}

/// Deletes `keys` (which must all exist) from map `name`.
pub fn delete<K: Pod>(maps: &impl MapSource, name: &str, keys: &[K]) -> Result<()> {
    sys::map_delete_batch(map_fd(maps, name)?, keys)
}

/// Every (key, value) of a map that is not per-CPU, up to `limit` entries.
pub fn dump<K: Pod, V: Pod>(
    maps: &impl MapSource,
    name: &str,
    limit: usize,
) -> Result<Vec<(K, V)>> {
    sys::map_dump(map_fd(maps, name)?, limit)
}

/// The first `limit` entries of a per-CPU array: per index, one value a
/// possible CPU.
pub fn dump_per_cpu<V: Pod>(
    maps: &impl MapSource,
    name: &str,
    limit: usize,
) -> Result<Vec<Vec<V>>> {
    Ok(sys::map_dump_per_cpu::<u32, V>(map_fd(maps, name)?, limit)?
        .into_iter()
        .map(|(_, per_cpu)| per_cpu)
        .collect())
}

/// Zeroes entries `ids` of a per-CPU array of `V` on every CPU.
pub fn zero_per_cpu<V: Pod>(maps: &impl MapSource, name: &str, ids: &[u32]) -> Result<()> {
    let cpus = sys::possible_cpus()?;
    // SAFETY: V is Pod: plain data, valid for any bytes, zeroes included.
    let zero: V = unsafe { std::mem::zeroed() };
    let zeros = vec![zero; cpus * ids.len()];
    sys::map_update_batch_per_cpu(map_fd(maps, name)?, ids, &zeros)
}

/// Deletes every entry of hash or trie `name` (keys `K`, values `V`).
pub fn clear<K: Pod, V: Pod>(maps: &impl MapSource, name: &str) -> Result<()> {
    clear_fd::<K, V>(map_fd(maps, name)?)
}

/// [`clear`] on a map fd.
pub fn clear_fd<K: Pod, V: Pod>(fd: BorrowedFd<'_>) -> Result<()> {
    let keys: Vec<K> = sys::map_dump::<K, V>(fd, usize::MAX)?
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    sys::map_delete_batch(fd, &keys)
}

/// Empties hash map `fd` in one pass; returns how many entries it held.
pub fn drain_hash_fd<K: Pod, V: Pod>(fd: BorrowedFd<'_>) -> Result<usize> {
    sys::hash_drain::<K, V>(fd)
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
