//! The firewall's capacity: how many rule ids its per-rule maps hold
//! ([`FW_SIZED_MAPS`]: counters, records), and the pools sized to its
//! rules ([`FW_POOL_MAPS`]: DIR chunks and rule refs, host maps and tables,
//! rate-limit buckets). A new
//! firewall gets [`FW_DEFAULT_RULE_IDS`] (or `--max-rules`); a change that
//! needs larger ids grows it to the next power of two: bigger maps are
//! filled with the contents of the old ones, pinned in their place, and the
//! running chain is installed again so the program uses them (one switch,
//! as for any install). Rule ids and counters carry over.

use std::os::fd::{AsFd as _, BorrowedFd, OwnedFd};

use aya::Pod;
use xdpkit_common::firewall::V6Bucket;
use xdpkit_common::firewall::{
    pool_entries, sized_entries, Bucket, BucketKey, DirChunk, HostBucket, RuleHits, RuleRecord,
    RuleRef, FW_BUCKETS, FW_DEFAULT_RULE_IDS, FW_DIR4_CHUNKS, FW_DIR4_REFS, FW_HOST_FILTER4,
    FW_HOST_SRC4, FW_HOST_SRC6, FW_HOST_TABLE4, FW_MAX_RULE_IDS, FW_POOL_MAPS, FW_RULES,
    FW_RULE_STATS, FW_SIZED_MAPS, FW_V6TAB,
};

use super::{dir::PoolNeeds, kernel::read_config, maps::open_pinned, FirewallError, NAME};
use crate::{
    chain,
    maps::{batch, MapSource},
    pins::{IfaceLock, PinDir},
    programs::MemoryPart,
    sys, Error, Result,
};

/// The settings key (`[interfaces.IF.firewall] max-rules = N`) and the
/// `attach firewall --max-rules N` option: rules the firewall holds
/// without growing.
pub const MAX_RULES: &str = "max-rules";

/// The capacity for rule ids below `ids`: a power of two, at least
/// [`FW_DEFAULT_RULE_IDS`].
///
/// # Errors
///
/// [`FirewallError::IdsExhausted`] beyond [`FW_MAX_RULE_IDS`].
pub fn capacity_for(ids: u64) -> Result<u32> {
    if ids > u64::from(FW_MAX_RULE_IDS) {
        return Err(FirewallError::IdsExhausted {
            largest: FW_MAX_RULE_IDS - 1,
        }
        .into());
    }
    Ok((ids as u32).next_power_of_two().max(FW_DEFAULT_RULE_IDS))
}

/// The capacity for `max-rules = rules` (ids start at 1).
pub fn capacity_for_rules(rules: u64) -> Result<u32> {
    capacity_for(rules + 1)
}

/// The capacity of the firewall whose maps are `maps`: its counters' entries.
pub fn capacity(maps: &impl MapSource) -> Result<u32> {
    Ok(batch::map_info(maps, FW_RULE_STATS)?.max_entries())
}

/// The entries of every sized map of a firewall of `capacity` rule ids.
pub fn sizes(capacity: u32) -> Vec<(&'static str, u32)> {
    FW_SIZED_MAPS
        .iter()
        .map(|m| (*m, sized_entries(m, capacity).unwrap_or(capacity)))
        .collect()
}

/// The entries of every pool map ([`FW_POOL_MAPS`]: DIR chunk pools, host
/// maps and tables, rate-limit buckets) for a ruleset that needs `needs`.
pub fn pool_sizes(needs: PoolNeeds) -> Vec<(&'static str, u32)> {
    FW_POOL_MAPS
        .iter()
        .filter_map(|m| pool_entries(m, &needs).map(|e| (*m, e)))
        .collect()
}

/// The entries the pool maps of the firewall whose maps are `maps` hold.
pub fn pools(maps: &impl MapSource) -> Result<Vec<(&'static str, u32)>> {
    FW_POOL_MAPS
        .iter()
        .map(|m| Ok((*m, batch::map_info(maps, m)?.max_entries())))
        .collect()
}

/// Whether a pool map of `maps` is smaller than a ruleset that needs
/// `needs` asks for.
pub fn pools_short(maps: &impl MapSource, needs: PoolNeeds) -> Result<bool> {
    for (name, entries) in pool_sizes(needs) {
        if batch::map_info(maps, name)?.max_entries() < entries {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Chunks the DIR pools of the firewall whose maps are `maps` hold.
pub fn chunk_pool(maps: &impl MapSource) -> Result<u32> {
    Ok(batch::map_info(maps, FW_DIR4_CHUNKS[0])?.max_entries())
}

/// Buckets the IPv6 tables of the firewall whose maps are `maps` hold.
pub fn v6_pool(maps: &impl MapSource) -> Result<u32> {
    Ok(batch::map_info(maps, FW_V6TAB[0])?.max_entries())
}

/// The entries of both IPv6 tables for `buckets` buckets.
pub fn v6_sizes(buckets: u32) -> Vec<(&'static str, u32)> {
    FW_V6TAB.iter().map(|m| (*m, buckets)).collect()
}

/// The maps of the firewall whose maps are `maps` that must grow for rule
/// ids below `ids` and for `rules` (DIR chunk pools and refs, host maps,
/// tables and filters, rate-limit buckets, IPv6 tables), with the entries
/// they need; empty when everything fits.
pub fn wanted<'r>(
    maps: &impl MapSource,
    ids: u64,
    rules: impl IntoIterator<Item = &'r super::Rule> + Clone + Send,
) -> Result<Vec<(&'static str, u32)>> {
    let mut wanted = Vec::new();
    if ids > u64::from(capacity(maps)?) {
        wanted.extend(sizes(capacity_for(ids)?));
    }
    // The two counts are independent and each takes a few hundred ms at
    // 1M prefixes: one on another core.
    let (needs, entries) = std::thread::scope(|scope| {
        let v6_rules = rules.clone();
        let v6 = scope.spawn(move || super::v6tab::entries_needed(v6_rules));
        let needs = super::dir::pool_needs(rules);
        (needs, v6.join())
    });
    let entries = entries.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    if pools_short(maps, needs)? {
        wanted.extend(pool_sizes(needs));
    }
    if super::v6tab::buckets_for(entries) > v6_pool(maps)? {
        wanted.extend(v6_sizes(super::v6tab::pool_for(entries)));
    }
    Ok(wanted)
}

/// Grows the maps of the firewall running on `iface` (pin directory
/// `iface_dir`, whose writers' lock the caller holds) to the entries in
/// `wanted` ([`wanted`]), all in one switch: one reinstall of the chain
/// however many maps grow (a load into a fresh firewall grows the ids,
/// the pools and the IPv6 tables at once). Returns whether anything grew;
/// maps already that large stay.
pub(crate) fn grow(
    iface: &str,
    iface_dir: &PinDir,
    lock: &IfaceLock,
    wanted: &[(&'static str, u32)],
) -> Result<bool> {
    let grew = grow_maps(iface, iface_dir, lock, wanted)?;
    if grew {
        let maps: Vec<String> = wanted.iter().map(|(m, n)| format!("{m} {n}")).collect();
        tracing::info!("grew the firewall of {iface}: {}", maps.join(", "));
    }
    Ok(grew)
}

/// Grows the firewall maps named in `wanted` to their entries there:
///
/// The bigger maps get the old ones' contents, replace them in the pins,
/// and the running chain is installed again; counts the old program made
/// while that happened are added to the new counters after the switch. A
/// failed reinstall puts the old maps back in the pins.
fn grow_maps(
    iface: &str,
    iface_dir: &PinDir,
    lock: &IfaceLock,
    wanted: &[(&'static str, u32)],
) -> Result<bool> {
    let dir = iface_dir.stage(NAME);
    let mut maps = open_pinned(&dir)?;
    let used = read_config(&maps)?.next_id.max(1) as usize;
    let mut bigger: Vec<(&'static str, OwnedFd)> = Vec::new();
    let mut counted = Vec::new();
    for &(name, entries) in wanted {
        let had = batch::map_info(&maps, name)?.max_entries();
        if had >= entries {
            continue;
        }
        let new = maps.create_sized(name, entries)?;
        let old = batch::map_fd(&maps, name)?;
        if name == FW_RULE_STATS {
            counted = copy_counters(old, new.as_fd(), used.min(had as usize))?;
        } else {
            copy_contents(name, old, new.as_fd(), used)?;
        }
        bigger.push((name, new));
    }
    if bigger.is_empty() {
        return Ok(false);
    }
    // The old maps stay open: to put them back, and for the last counts.
    let mut old: Vec<(&'static str, OwnedFd)> = Vec::with_capacity(bigger.len());
    for (name, _) in &bigger {
        let fd = batch::map_fd(&maps, name)?
            .try_clone_to_owned()
            .map_err(|source| Error::Syscall {
                call: "dup of a map fd",
                source,
            })?;
        old.push((name, fd));
    }
    let switched = bigger
        .into_iter()
        .try_for_each(|(name, new)| maps.swap_in(name, new))
        .and_then(|()| chain::reinstall(iface_dir, iface, lock));
    if let Err(e) = switched {
        for (name, fd) in old {
            let _ = maps.swap_in(name, fd);
        }
        return Err(e);
    }
    if let Some((_, old_stats)) = old.iter().find(|(name, _)| *name == FW_RULE_STATS) {
        add_counts_since(
            old_stats.as_fd(),
            batch::map_fd(&maps, FW_RULE_STATS)?,
            &counted,
        )?;
    }
    Ok(true)
}

/// Per-rule counters (per CPU) by id.
type Counters = Vec<(u32, Vec<RuleHits>)>;

/// Copies the counters of ids below `used` from `old` to `new`; returns them.
fn copy_counters(old: BorrowedFd<'_>, new: BorrowedFd<'_>, used: usize) -> Result<Counters> {
    let rows = sys::map_dump_per_cpu::<u32, RuleHits>(old, used)?;
    write_counters(new, &rows)?;
    Ok(rows)
}

fn write_counters(map: BorrowedFd<'_>, rows: &Counters) -> Result<()> {
    let ids: Vec<u32> = rows.iter().map(|(id, _)| *id).collect();
    let values: Vec<RuleHits> = rows.iter().flat_map(|(_, v)| v.iter().copied()).collect();
    sys::map_update_batch_per_cpu(map, &ids, &values)
}

/// Adds to `new` what `old` counted since it read `before`.
fn add_counts_since(old: BorrowedFd<'_>, new: BorrowedFd<'_>, before: &Counters) -> Result<()> {
    let after = sys::map_dump_per_cpu::<u32, RuleHits>(old, before.len())?;
    let current = sys::map_dump_per_cpu::<u32, RuleHits>(new, before.len())?;
    let mut changed = Vec::new();
    for ((then, now), (id, cur)) in before.iter().zip(&after).zip(current) {
        if then.1 == now.1 {
            continue;
        }
        let sum = cur
            .iter()
            .zip(then.1.iter().zip(&now.1))
            .map(|(c, (t, n))| RuleHits {
                packets: c.packets + n.packets.saturating_sub(t.packets),
                bytes: c.bytes + n.bytes.saturating_sub(t.bytes),
                last_ns: c.last_ns.max(n.last_ns),
                limited: c.limited + n.limited.saturating_sub(t.limited),
            })
            .collect();
        changed.push((id, sum));
    }
    write_counters(new, &changed)
}

/// Copies every entry of sized map `name` from `old` into `new`; of the
/// rule records only ids below `used` (the config's next id): the others
/// are unused zeros, as in the new map (a million of them after a big
/// ruleset was replaced).
fn copy_contents(name: &str, old: BorrowedFd<'_>, new: BorrowedFd<'_>, used: usize) -> Result<()> {
    if name == FW_RULES {
        copy_first::<u32, RuleRecord>(old, new, used)
    } else if FW_HOST_SRC4.contains(&name) {
        copy::<[u8; 4], RuleRef>(old, new)
    } else if FW_HOST_SRC6.contains(&name) {
        copy::<[u8; 16], RuleRef>(old, new)
    } else if FW_HOST_TABLE4.contains(&name) {
        copy::<u32, HostBucket>(old, new)
    } else if FW_HOST_FILTER4.contains(&name) {
        copy::<u32, u64>(old, new)
    } else if FW_DIR4_CHUNKS.contains(&name) {
        copy::<u32, DirChunk>(old, new)
    } else if FW_V6TAB.contains(&name) {
        copy::<u32, V6Bucket>(old, new)
    } else if FW_DIR4_REFS.contains(&name) {
        copy::<u32, RuleRef>(old, new)
    } else if name == FW_BUCKETS {
        copy::<BucketKey, Bucket>(old, new)
    } else {
        Err(Error::Internal(format!("no copy for firewall map {name}")))
    }
}

fn copy<K: Pod, V: Pod>(old: BorrowedFd<'_>, new: BorrowedFd<'_>) -> Result<()> {
    copy_first::<K, V>(old, new, usize::MAX)
}

/// [`copy`] of the first `limit` entries.
fn copy_first<K: Pod, V: Pod>(
    old: BorrowedFd<'_>,
    new: BorrowedFd<'_>,
    limit: usize,
) -> Result<()> {
    let entries = sys::map_dump::<K, V>(old, limit)?;
    let (keys, values): (Vec<K>, Vec<V>) = entries.into_iter().unzip();
    sys::map_update_batch(new, &keys, &values)
}

/// Kernel memory of the firewall maps pinned in `dir` (bytes_memlock),
/// by part: the maps of prefix and general set 0, of set 1, and the
/// shared ones (config, counters, records, rate-limit buckets).
pub fn memory(dir: &PinDir) -> Result<Vec<MemoryPart>> {
    let mut parts = [
        MemoryPart {
            part: "set 0",
            maps: 0,
            bytes: 0,
        },
        MemoryPart {
            part: "set 1",
            maps: 0,
            bytes: 0,
        },
        MemoryPart {
            part: "shared",
            maps: 0,
            bytes: 0,
        },
    ];
    let entries = std::fs::read_dir(dir.path()).map_err(|source| Error::Pin {
        what: "cannot list",
        path: dir.path().to_path_buf(),
        source,
    })?;
    for entry in entries.filter_map(|e| e.ok()) {
        let file = entry.file_name().to_string_lossy().into_owned();
        if file.starts_with("new_") {
            continue; // a swap under way: not (yet) the firewall's
        }
        let Ok(fd) = sys::obj_get(&entry.path()) else {
            continue;
        };
        let Ok(bytes) = sys::map_memlock(fd.as_fd()) else {
            continue;
        };
        let part = if file.ends_with("_0") {
            &mut parts[0]
        } else if file.ends_with("_1") {
            &mut parts[1]
        } else {
            &mut parts[2]
        };
        part.maps += 1;
        part.bytes += bytes;
    }
    Ok(parts.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacities_are_powers_of_two_from_the_default() {
        assert_eq!(capacity_for(0).unwrap(), FW_DEFAULT_RULE_IDS);
        assert_eq!(capacity_for(5).unwrap(), FW_DEFAULT_RULE_IDS);
        assert_eq!(capacity_for(1025).unwrap(), 2048);
        assert_eq!(capacity_for_rules(1023).unwrap(), 1024);
        assert_eq!(capacity_for_rules(1024).unwrap(), 2048);
        assert_eq!(
            capacity_for(u64::from(FW_MAX_RULE_IDS)).unwrap(),
            FW_MAX_RULE_IDS
        );
        assert!(capacity_for(u64::from(FW_MAX_RULE_IDS) + 1).is_err());
    }

    #[test]
    fn sized_maps_follow_the_capacity() {
        let small: std::collections::HashMap<_, _> = sizes(1024).into_iter().collect();
        assert_eq!(small[FW_RULE_STATS], 1024);
        assert_eq!(small[FW_RULES], 1024);
        assert!(!small.contains_key(FW_DIR4_REFS[1]));
        assert!(!small.contains_key(FW_HOST_SRC4[0]));
    }

    #[test]
    fn pools_follow_the_prefixes() {
        use xdpkit_common::firewall::{
            FW_DIR4_MAX_CHUNKS, FW_DIR4_MIN_CHUNKS, FW_HOST_BUCKETS, FW_MAX_BUCKETS, FW_MAX_HOSTS,
            FW_MIN_BUCKETS, FW_MIN_HOSTS,
        };
        let none: std::collections::HashMap<_, _> =
            pool_sizes(PoolNeeds::default()).into_iter().collect();
        assert_eq!(none[FW_DIR4_CHUNKS[0]], FW_DIR4_MIN_CHUNKS);
        assert_eq!(none[FW_HOST_SRC4[0]], FW_MIN_HOSTS);
        assert_eq!(none[FW_HOST_SRC6[1]], FW_MIN_HOSTS);
        assert_eq!(none[FW_HOST_TABLE4[1]], 16);
        assert_eq!(none[FW_BUCKETS], FW_MIN_BUCKETS);
        assert_eq!(none[FW_DIR4_REFS[0]], 64);
        let some: std::collections::HashMap<_, _> = pool_sizes(PoolNeeds {
            chunks: 1000,
            hosts4: 131_072,
            hosts6: 100,
            rate_limits: true,
            refs: 393_000,
        })
        .into_iter()
        .collect();
        assert_eq!(some[FW_DIR4_CHUNKS[1]], 1024);
        assert_eq!(some[FW_HOST_SRC4[1]], 131_072);
        assert_eq!(some[FW_HOST_SRC6[0]], 128);
        assert_eq!(some[FW_HOST_TABLE4[0]], 65_536);
        assert_eq!(some[FW_BUCKETS], FW_MAX_BUCKETS);
        assert_eq!(some[FW_DIR4_REFS[1]], 1 << 19);
        let all: std::collections::HashMap<_, _> = pool_sizes(PoolNeeds {
            chunks: u32::MAX / 2,
            hosts4: u32::MAX / 2,
            hosts6: u32::MAX / 2,
            rate_limits: false,
            refs: u32::MAX / 2,
        })
        .into_iter()
        .collect();
        assert_eq!(all[FW_DIR4_CHUNKS[0]], FW_DIR4_MAX_CHUNKS);
        assert_eq!(all[FW_HOST_SRC6[1]], FW_MAX_HOSTS);
        assert_eq!(all[FW_HOST_TABLE4[0]], FW_HOST_BUCKETS);
        assert_eq!(all[FW_DIR4_REFS[0]], FW_MAX_RULE_IDS);
    }
}
