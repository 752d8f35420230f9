//! The firewall's kernel maps: compiling a [`Ruleset`] into them, and a
//! BPF_PROG_TEST_RUN harness that reports the deciding rule.
//!
//! Prefix rules (one `src` or `dst` prefix, nothing else) go into LPM tries;
//! all other rules into bit vectors ([`super::general`]).

use foldhash::HashMap;

use aya::{
    maps::{lpm_trie::Key, Array, LpmTrie, MapData},
    Ebpf,
};
use ipnet::IpNet;
use xdpkit_common::{
    firewall::{
        host_buckets, host_filter, present_dir, present_host, present_table, present_trie, Bucket,
        BucketKey, FwConfig, FwTrace, HostBucket, HostSlot, RuleRef, V6Root, ACTION_ALLOW,
        ACTION_DENY, ACTION_RATE_LIMIT, ACTION_TO_USERSPACE, ACTIVE_GENERAL, ACTIVE_PREFIX,
        FW_BUCKETS, FW_CONFIG, FW_DIR4_CHUNKS, FW_DIR4_L1, FW_DIR4_REFS, FW_DST4, FW_DST6,
        FW_HOST_FILTER4, FW_HOST_SRC4, FW_HOST_SRC6, FW_HOST_TABLE4, FW_SRC4, FW_SRC6, FW_TRACE,
        FW_V6NODE, FW_V6TAB, POLICY_DROP, POLICY_L3, POLICY_PASS, TABLE_BITS,
    },
    XdpAction,
};

use super::{
    bulk::{write_hash_fd, write_trie_fd},
    Action, Entry, FragmentPolicy, Policy, Ruleset, Verdict,
};
use crate::maps::map_err;
use crate::maps::{
    batch::{self, Job},
    MapSource,
};
use crate::{object, testrun::TestRunOutcome, Error, Result};

/// The firewall's function (and kernel program) name.
pub const SYMBOL: &str = "xdpkit_firewall";

pub use super::rule::{is_prefix_rule, prefix_field};

/// The kernel's view of an entry: rank, id, action.
pub fn rule_ref(entry: &Entry) -> RuleRef {
    let (action, pps) = match entry.rule.action {
        Action::Allow => (ACTION_ALLOW, 0),
        Action::Deny => (ACTION_DENY, 0),
        Action::RateLimit(pps) => (ACTION_RATE_LIMIT, pps),
        Action::ToUserspace => (ACTION_TO_USERSPACE, 0),
    };
    RuleRef {
        rank: (u64::from(entry.rule.prio) << 32) | (entry.seq & 0xffff_ffff),
        id: entry.id,
        action,
        pps,
        prefix_len: 0,
    }
}

/// Prefix-trie contents: for every prefix, the best rule among those on it
/// and on every prefix containing it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compiled {
    /// Source IPv4 trie.
    pub src4: Vec<(IpNet, RuleRef)>,
    /// Destination IPv4 trie.
    pub dst4: Vec<(IpNet, RuleRef)>,
    /// Source IPv6 trie.
    pub src6: Vec<(IpNet, RuleRef)>,
    /// Destination IPv6 trie.
    pub dst6: Vec<(IpNet, RuleRef)>,
}

/// Compiles the prefix rules of `rules` for the kernel's tries.
pub fn compile(rules: &Ruleset) -> Result<Compiled> {
    let mut fields: [HashMap<IpNet, RuleRef>; 4] = Default::default();
    for entry in rules.entries() {
        let Some((field, net)) = prefix_field(&entry.rule) else {
            continue;
        };
        let candidate = rule_ref(entry);
        fields[field]
            .entry(net)
            .and_modify(|best| {
                if candidate.rank < best.rank {
                    *best = candidate;
                }
            })
            .or_insert(candidate);
    }
    let [src4, dst4, src6, dst6] = fields.map(inherit);
    Ok(Compiled {
        src4,
        dst4,
        src6,
        dst6,
    })
}

/// Gives each prefix the best rule of itself and its ancestors in the set.
fn inherit(own: HashMap<IpNet, RuleRef>) -> Vec<(IpNet, RuleRef)> {
    let mut out: Vec<(IpNet, RuleRef)> = own.into_iter().collect();
    // Prefixes are nested or disjoint, so in address order (shorter first)
    // each comes after its ancestors, and the ancestors still open form a
    // chain: one sort and one pass, with no lookups per prefix length.
    out.sort_unstable_by_key(|(net, _)| (net.network(), net.prefix_len()));
    let mut chain: Vec<(IpNet, RuleRef)> = Vec::new();
    for (net, best) in &mut out {
        while chain.last().is_some_and(|(open, _)| !open.contains(&*net)) {
            chain.pop();
        }
        best.prefix_len = u32::from(net.prefix_len());
        if let Some((_, parent)) = chain.last() {
            if parent.rank < best.rank {
                *best = RuleRef {
                    prefix_len: best.prefix_len,
                    ..*parent
                };
            }
        }
        chain.push((*net, *best));
    }
    out.sort_unstable_by_key(|(net, _)| (net.prefix_len(), *net));
    out
}

/// A config with `policy`, no general rules and sequence 0.
pub fn config(policy: &Policy, active: u32, trace: bool) -> FwConfig {
    let verdict = |v: Verdict| {
        if v == Verdict::Drop {
            POLICY_DROP
        } else {
            POLICY_PASS
        }
    };
    FwConfig {
        active,
        default_policy: verdict(policy.default),
        fragments: match policy.fragments {
            FragmentPolicy::Allow => POLICY_PASS,
            FragmentPolicy::Deny => POLICY_DROP,
            FragmentPolicy::L3 => POLICY_L3,
        },
        non_ip: verdict(policy.non_ip),
        malformed: verdict(policy.malformed),
        trace: u32::from(trace),
        general: [0; 2],
        next_id: 1,
        present: 0,
        next_seq: 0,
        max_prio: [0; 4],
        table_bits: [0; 2],
        dir_chunks: [0; 2],
        dir_refs: [0; 2],
        v6_roots: Default::default(),
    }
}

/// The policies a config holds (the inverse of [`config`]).
pub fn policy_of(cfg: &FwConfig) -> Policy {
    let verdict = |v: u32| {
        if v == POLICY_DROP {
            Verdict::Drop
        } else {
            Verdict::Pass
        }
    };
    Policy {
        default: verdict(cfg.default_policy),
        fragments: match cfg.fragments {
            POLICY_DROP => FragmentPolicy::Deny,
            POLICY_L3 => FragmentPolicy::L3,
            _ => FragmentPolicy::Allow,
        },
        non_ip: verdict(cfg.non_ip),
        malformed: verdict(cfg.malformed),
    }
}

/// Reads the firewall's config.
pub fn read_config(maps: &impl MapSource) -> Result<FwConfig> {
    let map = maps
        .map(FW_CONFIG)
        .ok_or_else(|| object::missing_map(FW_CONFIG))?;
    let array: Array<&MapData, FwConfig> =
        Array::try_from(map).map_err(map_err("open FW_CONFIG"))?;
    array.get(&0, 0).map_err(map_err("read FW_CONFIG"))
}

/// Writes the firewall's config: one map update, so `active` flips atomically.
pub fn write_config(maps: &mut impl MapSource, cfg: FwConfig) -> Result<()> {
    let map = maps
        .map_mut(FW_CONFIG)
        .ok_or_else(|| object::missing_map(FW_CONFIG))?;
    let mut array: Array<&mut MapData, FwConfig> =
        Array::try_from(map).map_err(map_err("open FW_CONFIG"))?;
    array.set(0, cfg, 0).map_err(map_err("write FW_CONFIG"))
}

/// Sets the policies, keeping the rules and the active set.
pub fn set_policy(maps: &mut impl MapSource, policy: &Policy) -> Result<()> {
    let old = read_config(maps)?;
    let new = config(policy, old.active, old.trace != 0);
    write_config(
        maps,
        FwConfig {
            default_policy: new.default_policy,
            fragments: new.fragments,
            non_ip: new.non_ip,
            malformed: new.malformed,
            ..old
        },
    )
}

/// Writes `rules` completely into the inactive sets, then makes them the
/// active ones with a single change of [`FwConfig::active`]: packets see the
/// old rules or the new ones, never a mix.
pub fn apply(maps: &mut impl MapSource, rules: &Ruleset) -> Result<()> {
    let staged = stage(maps, rules)?;
    commit(maps, staged)
}

/// A ruleset written into the inactive sets, not yet switched in.
#[derive(Clone, Copy, Debug)]
pub struct Staged {
    /// The config describing both sets, the old ones still active.
    cfg: FwConfig,
    /// [`FwConfig::active`] that switches to the new sets.
    active: u32,
}

impl Staged {
    /// Makes the switch also set `policy`: one config update for both.
    pub fn with_policy(mut self, policy: &Policy) -> Staged {
        let new = config(policy, 0, false);
        self.cfg.default_policy = new.default_policy;
        self.cfg.fragments = new.fragments;
        self.cfg.non_ip = new.non_ip;
        self.cfg.malformed = new.malformed;
        self
    }
}

/// The first half of [`apply`]: writes `rules` into the inactive sets.
pub fn stage(maps: &impl MapSource, rules: &Ruleset) -> Result<Staged> {
    stage_planned(maps, rules, None)
}

/// The prefix set [`stage`] writes: the inactive one.
pub fn staged_prefix_set(maps: &impl MapSource) -> Result<usize> {
    Ok((read_config(maps)?.prefix_set() + 1) & 1)
}

/// [`stage`] with the prefixes' [`Plan`] made beforehand (by a writer,
/// while the maps grew) for the room it names; a plan made for other room
/// than the set has is made again.
pub fn stage_planned(
    maps: &impl MapSource,
    rules: &Ruleset,
    planned: Option<(Room, Plan)>,
) -> Result<Staged> {
    let mut cfg = read_config(maps)?;
    let prefix = (cfg.prefix_set() + 1) & 1;
    let general = (cfg.general_set() + 1) & 1;
    let room = Room::of(maps, prefix)?;
    let plan = match planned {
        Some((r, plan)) if r == room => plan,
        _ => plan(&compile(rules)?, &room),
    };
    let written = write_plan(maps, prefix, &plan)?;
    let count = write_general(maps, general, rules.entries())?;
    note_written(&mut cfg, prefix, written);
    cfg.max_prio = max_prio(rules);
    note_ids(&mut cfg, rules.entries());
    cfg.general[general] = count;
    Ok(Staged {
        cfg,
        active: (prefix as u32 * ACTIVE_PREFIX) | (general as u32 * ACTIVE_GENERAL),
    })
}

/// The second half of [`apply`]: switches to the staged sets.
pub fn commit(maps: &mut impl MapSource, staged: Staged) -> Result<()> {
    let Staged { mut cfg, active } = staged;
    write_config(maps, cfg)?;
    cfg.active = active;
    write_config(maps, cfg)
}

/// Rebuilds only the prefix tries (general rules untouched) from `rules`
/// in the inactive set, then switches to it.
pub fn rebuild_prefixes(maps: &mut impl MapSource, rules: &Ruleset) -> Result<()> {
    let mut cfg = read_config(maps)?;
    let prefix = (cfg.prefix_set() + 1) & 1;
    let written = write_prefixes(maps, prefix, &compile(rules)?)?;
    note_written(&mut cfg, prefix, written);
    cfg.max_prio = max_prio(rules);
    note_ids(&mut cfg, rules.entries());
    // First what the new set holds, then the switch: a frame that reads
    // the config while it is rewritten sees old or new, both consistent.
    write_config(maps, cfg)?;
    cfg.active = (cfg.active & !ACTIVE_PREFIX) | (prefix as u32 * ACTIVE_PREFIX);
    write_config(maps, cfg)
}

/// Rebuilds only the general rules from `entries` (prefix rules among
/// them are ignored) in the inactive set, then switches to it.
pub fn rebuild_general(maps: &mut impl MapSource, entries: &[Entry]) -> Result<()> {
    let mut cfg = read_config(maps)?;
    let general = (cfg.general_set() + 1) & 1;
    cfg.general[general] = write_general(maps, general, entries)?;
    note_ids(&mut cfg, entries);
    write_config(maps, cfg)?;
    cfg.active = (cfg.active & !ACTIVE_GENERAL) | (general as u32 * ACTIVE_GENERAL);
    write_config(maps, cfg)
}

/// Adds one prefix rule to the active tries without a rebuild, when no
/// longer prefix can hold a rule it outranks (its `prio` is at least the
/// trie's [`FwConfig::max_prio`]): then only its own entry changes. Returns
/// false, changing nothing, when a rebuild is needed.
pub fn add_prefix_in_place(maps: &mut impl MapSource, entry: &Entry) -> Result<bool> {
    let Some((field, net)) = prefix_field(&entry.rule) else {
        return Ok(false);
    };
    let mut cfg = read_config(maps)?;
    let set = cfg.prefix_set();
    if let (true, IpNet::V4(n)) = (field < 2 && dir_in(&cfg, set), net) {
        if dir_spilled(&cfg, set) {
            return Ok(false);
        }
        return add_dir_in_place(maps, cfg, set, field, n, entry);
    }
    // The IPv6 table is written only while its set is inactive: a prefix
    // added in place goes to the trie, which the program reads for the
    // addresses the table has no rule for (this one ranks after all of
    // the table's: prio >= max_prio), hosts included (a host-map entry
    // would be final, and could not know the table's rules).
    let table6 = field >= 2 && v6_table_in(&cfg, set);
    if entry.rule.prio < cfg.max_prio[field] {
        return Ok(false);
    }
    let trie = [FW_SRC4, FW_DST4, FW_SRC6, FW_DST6][field][set];
    let new = rule_ref(entry);
    let in_trie = cfg.present & present_trie(set, field) != 0;
    let host = match (field, net) {
        (0, IpNet::V4(n)) if n.prefix_len() == 32 => Some(FW_HOST_SRC4[set]),
        (2, IpNet::V6(n)) if n.prefix_len() == 128 && !table6 => Some(FW_HOST_SRC6[set]),
        _ => None,
    };
    // A host goes to the host map even when a rebuild left hosts in the
    // trie (`split_hosts`): its value there covers the trie's entries.
    // A host in the table keeps its entry: the table is not changed in place,
    // and what it holds ranks before this rule (prio >= max_prio).
    let in_table = match net {
        IpNet::V4(n) if host.is_some() && cfg.present & present_table(set) != 0 => {
            table_has(maps, set, cfg.table_bits[set], n.addr().octets())?
        }
        _ => false,
    };
    let added = match (host, net) {
        _ if in_table => true,
        (Some(name), IpNet::V4(n)) => {
            upsert_host(maps, name, trie, in_trie, n.addr().octets(), new)?
        }
        (Some(name), IpNet::V6(n)) => {
            upsert_host(maps, name, trie, in_trie, n.addr().octets(), new)?
        }
        (None, IpNet::V4(n)) => {
            upsert_prefix(maps, trie, n.addr().octets(), n.prefix_len(), new)?;
            true
        }
        (None, IpNet::V6(n)) => {
            upsert_prefix(maps, trie, n.addr().octets(), n.prefix_len(), new)?;
            true
        }
    };
    if !added {
        return Ok(false);
    }
    cfg.present |= match host {
        _ if in_table => 0,
        Some(_) => present_host(set, field),
        None => present_trie(set, field),
    };
    cfg.max_prio[field] = cfg.max_prio[field].max(entry.rule.prio);
    note_ids(&mut cfg, std::slice::from_ref(entry));
    write_config(maps, cfg)?;
    Ok(true)
}

/// Whether prefix set `set` holds its IPv4 prefixes in the DIR table.
fn dir_in(cfg: &FwConfig, set: usize) -> bool {
    cfg.present & (present_dir(set, 0) | present_dir(set, 1)) != 0
}

/// Whether prefix set `set` holds its IPv6 prefixes in the IPv6 table.
fn v6_table_in(cfg: &FwConfig, set: usize) -> bool {
    cfg.present & (present_dir(set, 2) | present_dir(set, 3)) != 0
}

/// Whether set `set` has a DIR table that left /24s to the IPv4 tries
/// (`Dir4::build_within`): the slots and the tries would have to change
/// together, so changes rebuild.
fn dir_spilled(cfg: &FwConfig, set: usize) -> bool {
    dir_in(cfg, set) && cfg.present & (present_trie(set, 0) | present_trie(set, 1)) != 0
}

/// [`add_prefix_in_place`] into the DIR table: only the slots the prefix
/// covers change, whatever its priority. Source host entries (table or
/// map) are final, so a source rule that might outrank one of them (below
/// [`FwConfig::max_prio`]) needs a rebuild; a source host that already has
/// an entry keeps it (it ranks first).
fn add_dir_in_place(
    maps: &mut impl MapSource,
    mut cfg: FwConfig,
    set: usize,
    field: usize,
    net: ipnet::Ipv4Net,
    entry: &Entry,
) -> Result<bool> {
    let hosts = cfg.present & (present_host(set, 0) | present_table(set)) != 0;
    let known_host = if field == 0 && hosts {
        if entry.rule.prio < cfg.max_prio[0] {
            return Ok(false);
        }
        net.prefix_len() == 32 && host_known(maps, &cfg, set, net.addr().octets())?
    } else {
        false
    };
    if !known_host {
        let mut slots =
            super::dir::MapSlots::new(&*maps, set, cfg.dir_chunks[set], cfg.dir_refs[set]);
        if !slots.add(field, net, rule_ref(entry))? {
            return Ok(false);
        }
        cfg.dir_chunks[set] = slots.chunks_used();
        cfg.dir_refs[set] = slots.refs_used();
        cfg.present |= present_dir(set, field);
    }
    cfg.max_prio[field] = cfg.max_prio[field].max(entry.rule.prio);
    note_ids(&mut cfg, std::slice::from_ref(entry));
    write_config(maps, cfg)?;
    Ok(true)
}

/// Deletes IPv4 prefix rule `gone` from the active DIR table in place:
/// the slots that held it get the best rule left over them. `after` is the
/// ruleset without it. Returns false, changing nothing, when a rebuild is
/// needed (no DIR table, a source host with an entry of its own, or a
/// source prefix with source hosts under it, whose entries may carry it).
pub fn delete_prefix_in_place(
    maps: &mut impl MapSource,
    gone: &Entry,
    after: &Ruleset,
) -> Result<bool> {
    let Some((field, IpNet::V4(net))) = prefix_field(&gone.rule) else {
        return Ok(false);
    };
    let mut cfg = read_config(maps)?;
    let set = cfg.prefix_set();
    if field >= 2 || !dir_in(&cfg, set) || dir_spilled(&cfg, set) {
        return Ok(false);
    }
    let net = net.trunc();
    let others: Vec<(ipnet::Ipv4Net, RuleRef)> = after
        .entries()
        .iter()
        .filter_map(|e| match prefix_field(&e.rule) {
            Some((f, IpNet::V4(m)))
                if f == field && (m.contains(&net.network()) || net.contains(&m.network())) =>
            {
                Some((m.trunc(), rule_ref(e)))
            }
            _ => None,
        })
        .collect();
    // Source host entries (table or map) are final and carry the best rule
    // of their prefixes: the rule may be in those of the hosts under it.
    let hosts = cfg.present & (present_host(set, 0) | present_table(set)) != 0;
    if field == 0 && hosts {
        let host_under = others
            .iter()
            .any(|(m, _)| m.prefix_len() == 32 && net.contains(&m.network()));
        if host_under
            || (net.prefix_len() == 32 && host_known(maps, &cfg, set, net.addr().octets())?)
        {
            return Ok(false);
        }
    }
    let mut slots = super::dir::MapSlots::new(&*maps, set, cfg.dir_chunks[set], cfg.dir_refs[set]);
    if !slots.delete(field, net, gone.id, &others)? {
        return Ok(false);
    }
    let used = slots.refs_used();
    if used != cfg.dir_refs[set] {
        cfg.dir_refs[set] = used;
        write_config(maps, cfg)?;
    }
    Ok(true)
}

/// Whether IPv4 source host `addr` has an entry of its own in set `set`
/// (host table or host map).
fn host_known(maps: &impl MapSource, cfg: &FwConfig, set: usize, addr: [u8; 4]) -> Result<bool> {
    if cfg.present & present_table(set) != 0 && table_has(maps, set, cfg.table_bits[set], addr)? {
        return Ok(true);
    }
    if cfg.present & present_host(set, 0) == 0 {
        return Ok(false);
    }
    let name = FW_HOST_SRC4[set];
    let map = maps.map(name).ok_or_else(|| object::missing_map(name))?;
    let hosts: aya::maps::HashMap<&MapData, [u8; 4], RuleRef> =
        aya::maps::HashMap::try_from(map).map_err(map_err(format!("open {name}")))?;
    Ok(found(hosts.get(&addr, 0), name)?.is_some())
}

/// Whether IPv4 host `addr` is in host table `name`.
fn table_has(maps: &impl MapSource, set: usize, bits: u32, addr: [u8; 4]) -> Result<bool> {
    let name = FW_HOST_TABLE4[set];
    let map = maps.map(name).ok_or_else(|| object::missing_map(name))?;
    let table: Array<&MapData, HostBucket> =
        Array::try_from(map).map_err(map_err(format!("open {name}")))?;
    let key = u32::from_ne_bytes(addr);
    for index in host_buckets(key, bits) {
        let bucket = table
            .get(&index, 0)
            .map_err(map_err(format!("read {name}")))?;
        if bucket.slots.iter().any(|s| s.used != 0 && s.addr == key) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A host table for `hosts`: its buckets in use, their number as bits, and
/// its filter ([`FW_HOST_FILTER4`]: a word a bucket).
struct HostTable {
    buckets: Vec<HostBucket>,
    bits: u32,
    filter: Vec<u64>,
}

/// The host table holding `hosts` (IPv4 /32s), with at least a third as
/// many buckets as hosts (up to [`FW_HOST_BUCKETS`]), and the hosts that
/// found no place.
///
/// A host goes to the emptier of its two buckets; when both are full, it
/// takes a slot and the host it displaces moves to its other bucket, and so
/// on (cuckoo hashing, at most [`CUCKOO_MOVES`] moves), so the table fills
/// to well over 90% before a host is left over. A leftover host goes to
/// the host map, which the program then has to probe (a helper call) for
/// every source the table does not hold.
fn host_table(hosts: &[Prefix], max_bits: u32) -> (HostTable, Vec<Prefix>) {
    let wanted = (hosts.len() / 3).max(1).next_power_of_two();
    let bits = wanted
        .trailing_zeros()
        .clamp(TABLE_BITS.0, TABLE_BITS.1.min(max_bits).max(TABLE_BITS.0));
    let mut table = vec![HostBucket::default(); 1 << bits];
    let mut overflow = Vec::new();
    // A fixed xorshift: the same rules give the same table.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut random = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for &(net, rule) in hosts {
        let IpNet::V4(n) = net else {
            overflow.push((net, rule));
            continue;
        };
        let mut moving = HostSlot {
            addr: u32::from_ne_bytes(n.addr().octets()),
            used: 1,
            rule,
        };
        let [first, second] = host_buckets(moving.addr, bits);
        let used =
            |t: &[HostBucket], i: u32| t[i as usize].slots.iter().filter(|s| s.used != 0).count();
        let mut bucket = if used(&table, second) < used(&table, first) {
            second
        } else {
            first
        };
        let mut placed = false;
        for _ in 0..=CUCKOO_MOVES {
            let slots = &mut table[bucket as usize].slots;
            if let Some(free) = slots.iter_mut().find(|s| s.used == 0) {
                *free = moving;
                placed = true;
                break;
            }
            // Both full: displace a random host, which tries its other bucket.
            let victim = (random() % slots.len() as u64) as usize;
            std::mem::swap(&mut slots[victim], &mut moving);
            let [a, b] = host_buckets(moving.addr, bits);
            bucket = if a == bucket { b } else { a };
        }
        if !placed {
            // The host left holding no slot after the last move.
            let addr = std::net::Ipv4Addr::from(moving.addr.to_ne_bytes());
            overflow.push((IpNet::V4(ipnet::Ipv4Net::from(addr)), moving.rule));
        }
    }
    let mut filter = vec![0u64; table.len()];
    for slot in table.iter().flat_map(|b| &b.slots).filter(|s| s.used != 0) {
        let (word, bit) = host_filter(slot.addr.to_ne_bytes(), bits);
        filter[word as usize] |= bit;
    }
    (
        HostTable {
            buckets: table,
            bits,
            filter,
        },
        overflow,
    )
}

/// Most cuckoo moves for one host in [`host_table`].
const CUCKOO_MOVES: usize = 500;

/// Gives host `addr` the better of `new` and what it has or inherits from
/// the trie. Returns false, changing nothing, if the host map is full.
fn upsert_host<const N: usize>(
    maps: &mut impl MapSource,
    name: &str,
    trie_name: &str,
    in_trie: bool,
    addr: [u8; N],
    new: RuleRef,
) -> Result<bool> {
    let full_len = (N * 8) as u32;
    let current = {
        let map = maps.map(name).ok_or_else(|| object::missing_map(name))?;
        let hosts: aya::maps::HashMap<&MapData, [u8; N], RuleRef> =
            aya::maps::HashMap::try_from(map).map_err(map_err(format!("open {name}")))?;
        found(hosts.get(&addr, 0), name)?
    };
    let current = match current {
        Some(c) => Some(c),
        None if in_trie => {
            let map = maps
                .map(trie_name)
                .ok_or_else(|| object::missing_map(trie_name))?;
            let trie: LpmTrie<&MapData, [u8; N], RuleRef> =
                LpmTrie::try_from(map).map_err(map_err(format!("open {trie_name}")))?;
            found(trie.get(&Key::new(full_len, addr), 0), trie_name)?
        }
        None => None,
    };
    let value = better(current, new, full_len);
    let map = maps
        .map_mut(name)
        .ok_or_else(|| object::missing_map(name))?;
    let mut hosts: aya::maps::HashMap<&mut MapData, [u8; N], RuleRef> =
        aya::maps::HashMap::try_from(map).map_err(map_err(format!("open {name}")))?;
    match hosts.insert(addr, value, 0) {
        Ok(()) => Ok(true),
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.raw_os_error() == Some(libc::E2BIG) =>
        {
            Ok(false)
        }
        Err(e) => Err(map_err(format!("insert into {name}"))(e)),
    }
}

/// The value of a lookup, `None` for a missing key.
fn found<T>(result: std::result::Result<T, aya::maps::MapError>, map: &str) -> Result<Option<T>> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(aya::maps::MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(map_err(format!("look up in {map}"))(e)),
    }
}

/// The entry of a `len`-bit prefix: `new`, unless what it already has or
/// inherits (`current`) ranks first.
fn better(current: Option<RuleRef>, new: RuleRef, len: u32) -> RuleRef {
    let best = match current {
        Some(c) if c.rank < new.rank => c,
        _ => new,
    };
    RuleRef {
        prefix_len: len,
        ..best
    }
}

/// Gives prefix `addr/len` the better of `new` and what it inherits.
fn upsert_prefix<const N: usize>(
    maps: &mut impl MapSource,
    name: &str,
    addr: [u8; N],
    len: u8,
    new: RuleRef,
) -> Result<()> {
    let map = maps
        .map_mut(name)
        .ok_or_else(|| object::missing_map(name))?;
    let mut trie: LpmTrie<&mut MapData, [u8; N], RuleRef> =
        LpmTrie::try_from(map).map_err(map_err(format!("open {name}")))?;
    // The longest match is the prefix itself or its nearest ancestor.
    let current = found(trie.get(&Key::new(u32::from(len), addr), 0), name)?;
    let value = better(current, new, u32::from(len));
    if current == Some(value) {
        return Ok(());
    }
    trie.insert(&Key::new(u32::from(len), addr), value, 0)
        .map_err(map_err(format!("insert into {name}")))
}

/// What [`write_prefixes`] put in a set.
#[derive(Clone, Copy, Debug, Default)]
struct Written {
    /// [`FwConfig::present`] bits, as for set 0.
    present: u32,
    /// [`FwConfig::table_bits`] of the set.
    table_bits: u32,
    /// [`FwConfig::dir_chunks`] of the set.
    dir_chunks: u32,
    /// [`FwConfig::dir_refs`] of the set.
    dir_refs: u32,
    /// [`FwConfig::v6_roots`] of the set.
    v6_roots: [V6Root; 2],
}

/// Set: IPv4 prefixes go to the LPM tries as before the DIR tables (only to
/// measure one against the other in the same run).
static IPV4_IN_TRIES: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes later rebuilds of this process put IPv4 prefixes in the LPM tries
/// (`true`) or the DIR tables (`false`, the default). For benchmarks.
#[doc(hidden)]
pub fn ipv4_in_tries(on: bool) {
    IPV4_IN_TRIES.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Set: IPv6 prefixes go to the LPM tries and host maps as before the IPv6
/// tables (only to measure one against the other in the same run).
static IPV6_IN_TRIES: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes later rebuilds of this process put IPv6 prefixes in the LPM tries
/// (`true`) or the IPv6 tables (`false`, the default). For benchmarks.
#[doc(hidden)]
pub fn ipv6_in_tries(on: bool) {
    IPV6_IN_TRIES.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// The DIR table of the IPv4 prefixes (source hosts aside), or `None`
/// when there are none or they need more chunks than a set has (then they
/// stay in the tries).
pub fn build_dir4(src4: &[Prefix], dst4: &[Prefix]) -> Option<super::dir::Dir4> {
    if src4.is_empty() && dst4.is_empty() {
        return None;
    }
    let (src, dst) = (super::dir::v4_entries(src4), super::dir::v4_entries(dst4));
    super::dir::Dir4::build(&src, &dst).ok()
}

/// The dense numbering of the rules a set's prefix tables name, for
/// [`FW_DIR4_REFS`]: each rule of `fields` once, numbered 0.. in id order;
/// returns rule id -> number and the rules by number (`refs[n]`, leaf
/// `n + 1`). Every table that names rules through the set's refs takes
/// its numbers from here.
pub fn dense_refs(fields: &[&[Prefix]]) -> (HashMap<u32, u32>, Vec<RuleRef>) {
    let mut by_id: HashMap<u32, RuleRef> = HashMap::default();
    for entries in fields {
        for (_, r) in entries.iter() {
            by_id.insert(
                r.id,
                RuleRef {
                    prefix_len: 0,
                    ..*r
                },
            );
        }
    }
    let mut refs: Vec<RuleRef> = by_id.into_values().collect();
    refs.sort_unstable_by_key(|r| r.id);
    let numbers = refs
        .iter()
        .enumerate()
        .map(|(n, r)| (r.id, n as u32))
        .collect();
    (numbers, refs)
}

/// Writes the compiled prefixes into prefix set `set`.
fn write_prefixes(maps: &impl MapSource, set: usize, c: &Compiled) -> Result<Written> {
    write_plan(maps, set, &plan(c, &Room::of(maps, set)?))
}

/// The entries of the maps of one prefix set that decide where its
/// prefixes go ([`plan`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Room {
    host_src4: usize,
    host_src6: usize,
    host_table4: usize,
    refs: usize,
    chunks: usize,
    v6tab: usize,
}

impl Room {
    /// The room of prefix set `set` in `maps`.
    pub fn of(maps: &impl MapSource, set: usize) -> Result<Room> {
        let entries = |name| batch::map_info(maps, name).map(|i| i.max_entries() as usize);
        Ok(Room {
            host_src4: entries(FW_HOST_SRC4[set])?,
            host_src6: entries(FW_HOST_SRC6[set])?,
            host_table4: entries(FW_HOST_TABLE4[set])?,
            refs: entries(FW_DIR4_REFS[set])?,
            chunks: entries(FW_DIR4_CHUNKS[set])?,
            v6tab: entries(FW_V6TAB[set])?,
        })
    }

    /// This room once the maps of `wanted` (map, entries) have grown:
    /// maps grow to their entries there, or stay if already larger
    /// (`capacity::grow`).
    pub fn grown(self, set: usize, wanted: &[(&str, u32)]) -> Room {
        let after = |name: &str, now: usize| {
            wanted
                .iter()
                .filter(|(m, _)| *m == name)
                .fold(now, |n, (_, e)| n.max(*e as usize))
        };
        Room {
            host_src4: after(FW_HOST_SRC4[set], self.host_src4),
            host_src6: after(FW_HOST_SRC6[set], self.host_src6),
            host_table4: after(FW_HOST_TABLE4[set], self.host_table4),
            refs: after(FW_DIR4_REFS[set], self.refs),
            chunks: after(FW_DIR4_CHUNKS[set], self.chunks),
            v6tab: after(FW_V6TAB[set], self.v6tab),
        }
    }
}

/// Where the prefixes of a set go and what its tables hold, decided from
/// the compiled prefixes and the room of the set's maps alone (no map is
/// read), so that a writer can build it while the maps grow.
pub struct Plan {
    trie_src4: Vec<Prefix>,
    trie_dst4: Vec<Prefix>,
    trie_src6: Vec<Prefix>,
    trie_dst6: Vec<Prefix>,
    src4_hosts: Vec<Prefix>,
    src6_hosts: Vec<Prefix>,
    table: Option<HostTable>,
    dir: Option<super::dir::Dir4>,
    dir_refs: Vec<RuleRef>,
    v6: Option<super::v6tab::V6Table>,
    written: Written,
}

/// The [`Plan`] of compiled prefixes `c` in a set with room `room`.
pub fn plan(c: &Compiled, room: &Room) -> Plan {
    // Hosts of dense /24s go to the DIR table first; the host map and
    // table are sized to the others.
    let (mut src4_trie, mut src4_hosts) = split_hosts(&c.src4, usize::MAX);
    if !IPV4_IN_TRIES.load(std::sync::atomic::Ordering::Relaxed) {
        super::dir::move_dense_hosts(&mut src4_hosts, &mut src4_trie);
    }
    if src4_hosts.len() > room.host_src4 {
        src4_trie.append(&mut src4_hosts);
    }
    // The DIR and IPv6 tables' leaves name rules by dense number, in one
    // array per set (the writers grow it first, as the pools): a set whose
    // refs cannot hold them keeps its prefixes in the tries.
    let (numbers, dir_refs) = dense_refs(&[&src4_trie, &c.dst4, &c.src6, &c.dst6]);
    let ref_room = room.refs;
    let refs_fit = dir_refs.len() <= ref_room;
    if !refs_fit {
        tracing::warn!(
            "the prefixes name {} rules, more than the {ref_room} rule refs hold: \
             they are judged by the LPM tries, slower",
            dir_refs.len()
        );
    }
    let leaf = |r: &RuleRef| numbers.get(&r.id).map_or(0, |n| n + 1);
    // IPv6 prefixes, source hosts included, go to the IPv6 table when it
    // fits the set's map (the writers grow it first), else to the tries
    // and host map.
    let v6_pool = room.v6tab as u32;
    let build_v6 = || {
        if IPV6_IN_TRIES.load(std::sync::atomic::Ordering::Relaxed) || !refs_fit {
            return None;
        }
        let table = super::v6tab::build_by(&c.src6, &c.dst6, v6_pool, &leaf);
        if table.is_none() && !(c.src6.is_empty() && c.dst6.is_empty()) {
            tracing::warn!(
                "the IPv6 prefixes do not fit the IPv6 table ({v6_pool} buckets): \
                 they are judged by the LPM tries, slower"
            );
        }
        table
    };
    let max_bits = room.host_table4.max(1).ilog2();
    // An empty table is not written: `present` keeps the program out of it.
    let (table, src4_hosts) = if src4_hosts.is_empty() {
        (None, src4_hosts)
    } else {
        let (table, overflow) = host_table(&src4_hosts, max_bits);
        (Some(table), overflow)
    };
    // IPv4 prefixes go to the DIR table, in the set's pool (the writers
    // grow it first: `LiveFirewall::ensure_room`): /24s whose longer
    // prefixes find no room stay in the tries, all of them if a shorter
    // prefix finds none.
    let pool = room.chunks;
    let build_dir = || {
        if IPV4_IN_TRIES.load(std::sync::atomic::Ordering::Relaxed)
            || (src4_trie.is_empty() && c.dst4.is_empty())
            || !refs_fit
        {
            None
        } else {
            let (src, dst) = (
                super::dir::v4_entries(&src4_trie),
                super::dir::v4_entries(&c.dst4),
            );
            let built = super::dir::Dir4::build_within_by(&src, &dst, pool, &leaf).ok();
            match &built {
                None => tracing::warn!(
                    "the IPv4 prefixes need more than the {pool} DIR chunks of the pool: \
                 they are judged by the LPM tries, slower"
                ),
                Some(b) if b.spill.iter().any(|s| !s.is_empty()) => tracing::warn!(
                    "prefixes /25-/31 in more /24s than the {pool} DIR chunks hold: \
                 {} of them are judged by the LPM tries, slower",
                    b.spill[0].len() + b.spill[1].len()
                ),
                _ => {}
            }
            built
        }
    };
    // The IPv6 table and the DIR tables are built from separate prefixes:
    // at 1M prefixes each takes a few hundred ms, so on two cores.
    let (v6, built) = std::thread::scope(|scope| {
        let v6 = scope.spawn(build_v6);
        let built = build_dir();
        (v6.join(), built)
    });
    let v6 = v6.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    let none6: Vec<Prefix> = Vec::new();
    let (src6_trie, src6_hosts) = if v6.is_some() {
        (Vec::new(), Vec::new())
    } else {
        split_hosts(&c.src6, room.host_src6)
    };
    let trie_dst6 = if v6.is_some() { &none6 } else { &c.dst6 };
    let spilled = |field: usize| -> Vec<Prefix> {
        built.as_ref().map_or_else(Vec::new, |b| {
            b.spill[field]
                .iter()
                .map(|(n, r)| (IpNet::V4(*n), *r))
                .collect()
        })
    };
    let (spill_src4, spill_dst4) = (spilled(0), spilled(1));
    let dir = built.map(|b| b.table);
    let (trie_src4, trie_dst4) = if dir.is_some() {
        (spill_src4, spill_dst4)
    } else {
        (src4_trie.clone(), c.dst4.clone())
    };
    let trie_dst6 = trie_dst6.clone();
    let mut present = 0;
    for (field, non_empty) in [
        !trie_src4.is_empty(),
        !trie_dst4.is_empty(),
        !src6_trie.is_empty(),
        !trie_dst6.is_empty(),
    ]
    .into_iter()
    .enumerate()
    {
        if non_empty {
            present |= present_trie(0, field);
        }
    }
    if dir.is_some() {
        if !src4_trie.is_empty() {
            present |= present_dir(0, 0);
        }
        if !c.dst4.is_empty() {
            present |= present_dir(0, 1);
        }
    }
    if v6.is_some() {
        if !c.src6.is_empty() {
            present |= present_dir(0, 2);
        }
        if !c.dst6.is_empty() {
            present |= present_dir(0, 3);
        }
    }
    if !src4_hosts.is_empty() {
        present |= present_host(0, 0);
    }
    if table.is_some() {
        present |= present_table(0);
    }
    if !src6_hosts.is_empty() {
        present |= present_host(0, 2);
    }
    let written = Written {
        present,
        table_bits: table.as_ref().map_or(0, |t| t.bits),
        dir_refs: if dir.is_some() || v6.is_some() {
            dir_refs.len() as u32
        } else {
            0
        },
        dir_chunks: dir.as_ref().map_or(0, |d| d.chunks.len() as u32),
        v6_roots: v6.as_ref().map_or_else(Default::default, |t| t.roots),
    };
    Plan {
        trie_src4,
        trie_dst4,
        trie_src6: src6_trie,
        trie_dst6,
        src4_hosts,
        src6_hosts,
        table,
        dir,
        dir_refs,
        v6,
        written,
    }
}

/// Writes `plan` into prefix set `set` (on parallel threads, one a map:
/// the work is in the kernel).
fn write_plan(maps: &impl MapSource, set: usize, plan: &Plan) -> Result<Written> {
    let Plan {
        trie_src4,
        trie_dst4,
        trie_src6,
        trie_dst6,
        src4_hosts,
        src6_hosts,
        table,
        dir,
        dir_refs,
        v6,
        written,
    } = plan;
    let fd = |name| batch::map_fd(maps, name);
    let (s4, d4, s6, d6) = (
        fd(FW_SRC4[set])?,
        fd(FW_DST4[set])?,
        fd(FW_SRC6[set])?,
        fd(FW_DST6[set])?,
    );
    let (h4, h6) = (fd(FW_HOST_SRC4[set])?, fd(FW_HOST_SRC6[set])?);
    let (t4, f4) = (fd(FW_HOST_TABLE4[set])?, fd(FW_HOST_FILTER4[set])?);
    let (dl1, dch, drefs) = (
        fd(FW_DIR4_L1[set])?,
        fd(FW_DIR4_CHUNKS[set])?,
        fd(FW_DIR4_REFS[set])?,
    );
    let (v6tab, v6node) = (fd(FW_V6TAB[set])?, fd(FW_V6NODE[set])?);
    let jobs: Vec<Job<'_>> = vec![
        Box::new(|| write_trie_fd::<4, _>(s4, trie_src4)),
        Box::new(|| write_trie_fd::<4, _>(d4, trie_dst4)),
        Box::new(|| write_trie_fd::<16, _>(s6, trie_src6)),
        Box::new(|| write_trie_fd::<16, _>(d6, trie_dst6)),
        Box::new(|| write_hash_fd::<4, _>(h4, src4_hosts)),
        Box::new(|| write_hash_fd::<16, _>(h6, src6_hosts)),
        Box::new(|| match table {
            Some(table) => {
                batch::write_array_fd(t4, &table.buckets)?;
                batch::write_array_fd(f4, &table.filter)
            }
            None => Ok(()),
        }),
        Box::new(|| match dir {
            Some(dir) => super::dir::write_fds(dl1, dch, drefs, dir, dir_refs),
            // The IPv6 table's leaves name rules in the same array.
            None if v6.is_some() && !dir_refs.is_empty() => batch::write_array_fd(drefs, dir_refs),
            None => Ok(()),
        }),
        Box::new(|| match v6 {
            Some(t) => {
                batch::write_array_fd(v6tab, &t.buckets)?;
                batch::write_array_fd(v6node, &t.nodes)
            }
            None => Ok(()),
        }),
    ];
    batch::in_parallel(jobs)?;
    Ok(*written)
}

/// A prefix and the rule it carries.
type Prefix = (IpNet, RuleRef);

/// Full-length prefixes for the host map, the rest for the trie; all in
/// the trie if there are more hosts than the map holds (`room`).
fn split_hosts(entries: &[Prefix], room: usize) -> (Vec<Prefix>, Vec<Prefix>) {
    let (hosts, trie): (Vec<_>, Vec<_>) = entries
        .iter()
        .partition(|(net, _)| net.prefix_len() == net.max_prefix_len());
    if hosts.len() > room {
        return (entries.to_vec(), Vec::new());
    }
    (trie, hosts)
}

/// Sets the [`FwConfig::present`] byte of prefix set `set`.
fn set_present(cfg: &mut FwConfig, set: usize, bits: u32) {
    let shift = set * 8;
    let mask = 0xff | present_dir(0, 0) | present_dir(0, 1) | present_dir(0, 2) | present_dir(0, 3);
    cfg.present = (cfg.present & !(mask << shift)) | (bits << shift);
}

/// Records in `cfg` what [`write_prefixes`] put in prefix set `set`.
fn note_written(cfg: &mut FwConfig, set: usize, w: Written) {
    set_present(cfg, set, w.present);
    cfg.table_bits[set] = w.table_bits;
    cfg.dir_chunks[set] = w.dir_chunks;
    cfg.dir_refs[set] = w.dir_refs;
    cfg.v6_roots[set] = w.v6_roots;
}

/// Writes the general rules among `entries` into general set `set`; returns how many.
fn write_general(maps: &impl MapSource, set: usize, entries: &[Entry]) -> Result<u32> {
    let mut general: Vec<&Entry> = entries
        .iter()
        .filter(|e| !is_prefix_rule(&e.rule))
        .collect();
    general.sort_by_key(|e| rule_ref(e).rank);
    let refs = general.iter().map(|e| rule_ref(e)).collect();
    let vectors = super::general::compile(&general, refs)?;
    super::general::write(maps, set, &vectors)?;
    Ok(general.len() as u32)
}

/// The highest prio of the prefix rules of each trie.
fn max_prio(rules: &Ruleset) -> [u32; 4] {
    let mut max = [0; 4];
    for e in rules.entries() {
        if let Some((field, _)) = prefix_field(&e.rule) {
            max[field] = max[field].max(e.rule.prio);
        }
    }
    max
}

/// Keeps ids and sequence numbers growing past those of `entries`.
fn note_ids(cfg: &mut FwConfig, entries: &[Entry]) {
    for e in entries {
        cfg.next_id = cfg.next_id.max(e.id + 1);
        cfg.next_seq = cfg.next_seq.max(e.seq + 1);
    }
}

/// The firewall program with private maps, for BPF_PROG_TEST_RUN.
pub struct FirewallHarness {
    ebpf: Ebpf,
}

impl FirewallHarness {
    /// Loads the firewall with `policy`, no rules, and tracing on.
    pub fn new(policy: Policy) -> Result<FirewallHarness> {
        let mut ebpf = crate::programs::Program::object(&super::Firewall).load()?;
        object::program(&mut ebpf, SYMBOL, "firewall")?;
        write_config(&mut ebpf, config(&policy, 0, true))?;
        Ok(FirewallHarness { ebpf })
    }

    /// Like [`FirewallHarness::new`], with the maps of `sizes` created with
    /// that many entries (as a stage sizes them: [`super::capacity`]).
    pub fn sized(policy: Policy, sizes: &[(&str, u32)]) -> Result<FirewallHarness> {
        let mut ebpf =
            crate::programs::Program::object(&super::Firewall).load_sized(&[], &[], sizes)?;
        object::program(&mut ebpf, SYMBOL, "firewall")?;
        write_config(&mut ebpf, config(&policy, 0, true))?;
        Ok(FirewallHarness { ebpf })
    }

    /// [`FirewallHarness::new`] with DIR chunk pools of `chunks` chunks, so
    /// that a ruleset can outgrow them.
    pub fn with_chunk_pool(policy: Policy, chunks: u32) -> Result<FirewallHarness> {
        let sizes: Vec<(&str, u32)> = FW_DIR4_CHUNKS.iter().map(|m| (*m, chunks)).collect();
        FirewallHarness::sized(policy, &sizes)
    }

    /// The config the program reads.
    pub fn config(&self) -> Result<FwConfig> {
        read_config(&self.ebpf)
    }

    /// Puts AF_XDP socket `socket` in entry `queue` of the harness's own
    /// XSKMAP (`None` empties it): `to-userspace` rules then redirect the
    /// frames a test run gives queue `queue` (test runs use queue 0). A
    /// test run only returns the verdict; nothing reaches the socket.
    pub fn set_socket(
        &mut self,
        queue: u32,
        socket: Option<std::os::fd::BorrowedFd<'_>>,
    ) -> Result<()> {
        use xdpkit_common::xsk::XSKS_MAP;
        let map = self
            .ebpf
            .map_mut(XSKS_MAP)
            .ok_or_else(|| object::missing_map(XSKS_MAP))?;
        let mut xsks: aya::maps::XskMap<&mut MapData> =
            aya::maps::XskMap::try_from(map).map_err(map_err("open XDPKIT_XSKS"))?;
        match socket {
            Some(fd) => xsks.set(queue, fd, 0),
            None => xsks.unset(queue),
        }
        .map_err(map_err("write XDPKIT_XSKS"))
    }

    /// Changes the policy (takes effect for the next frame).
    pub fn set_policy(&mut self, policy: Policy) -> Result<()> {
        set_policy(&mut self.ebpf, &policy)
    }

    /// Replaces the rules atomically (see [`apply`]).
    pub fn load_rules(&mut self, rules: &Ruleset) -> Result<()> {
        apply(&mut self.ebpf, rules)
    }

    /// Adds `entry` the way `xdpkit rule add` does: in place when it can,
    /// else by rebuilding one kind of set. `after` is the ruleset with it.
    /// Returns whether it went in place.
    pub fn add_rule(&mut self, entry: &Entry, after: &Ruleset) -> Result<bool> {
        if is_prefix_rule(&entry.rule) {
            if add_prefix_in_place(&mut self.ebpf, entry)? {
                return Ok(true);
            }
            rebuild_prefixes(&mut self.ebpf, after)?;
        } else {
            rebuild_general(&mut self.ebpf, after.entries())?;
        }
        Ok(false)
    }

    /// Deletes `entry` the way `xdpkit rule del` does. `after` is the
    /// ruleset without it.
    pub fn delete_rule(&mut self, entry: &Entry, after: &Ruleset) -> Result<()> {
        if is_prefix_rule(&entry.rule) {
            if delete_prefix_in_place(&mut self.ebpf, entry, after)? {
                return Ok(());
            }
            rebuild_prefixes(&mut self.ebpf, after)
        } else {
            rebuild_general(&mut self.ebpf, after.entries())
        }
    }

    /// Loads `rules` with every IPv4 prefix rule (source hosts too) in the
    /// DIR table of the new set, and returns its index: then
    /// [`FirewallHarness::dir_update`] applies adds and deletes made to the
    /// index to the active set, slot by slot, as an in-place update would.
    pub fn load_dir4(&mut self, rules: &Ruleset) -> Result<super::dir::Dir4Index> {
        let staged = stage(&self.ebpf, rules)?;
        let set = (staged.active & ACTIVE_PREFIX) as usize;
        let c = compile(rules)?;
        let table = build_dir4(&c.src4, &c.dst4).unwrap_or_default();
        let v4: Vec<(usize, ipnet::Ipv4Net, RuleRef)> = rules
            .entries()
            .iter()
            .filter_map(|e| match prefix_field(&e.rule) {
                Some((field, IpNet::V4(n))) => Some((field, n, rule_ref(e))),
                _ => None,
            })
            .collect();
        let index = super::dir::Dir4Index::new(&v4, table);
        super::dir::write(&self.ebpf, set, &index.table, &index.rules())?;
        let mut cfg = staged.cfg;
        let keep = !(present_trie(set, 0)
            | present_trie(set, 1)
            | present_host(set, 0)
            | present_table(set));
        cfg.present = (cfg.present & keep) | present_dir(set, 0) | present_dir(set, 1);
        cfg.dir_chunks[set] = index.table.chunks.len() as u32;
        // The index numbers rules by id: new ones added in place take
        // numbers past the largest.
        cfg.dir_refs[set] = index.rules().iter().map(|r| r.id + 1).max().unwrap_or(0);
        commit(
            &mut self.ebpf,
            Staged {
                cfg,
                active: staged.active,
            },
        )?;
        Ok(index)
    }

    /// Writes the slots `index` changed since the last call into the
    /// active set (see [`FirewallHarness::load_dir4`]).
    pub fn dir_update(&mut self, index: &mut super::dir::Dir4Index) -> Result<()> {
        let set = read_config(&self.ebpf)?.prefix_set();
        let changes = index.take_changes();
        super::dir::write_changes(&self.ebpf, set, &index.table, &changes)
    }

    /// Loads `rules` and returns the index of the new set's IPv6 table
    /// (every IPv6 prefix rule in it): [`FirewallHarness::v6_update`] then
    /// applies adds and deletes made to the index to the active set in
    /// place, as a long-lived writer would.
    pub fn load_v6(&mut self, rules: &Ruleset) -> Result<super::v6index::V6Index> {
        let staged = stage(&self.ebpf, rules)?;
        let set = (staged.active & ACTIVE_PREFIX) as usize;
        let mut cfg = staged.cfg;
        if cfg.present & (present_dir(set, 2) | present_dir(set, 3)) == 0 {
            return Err(Error::InvalidArgument(
                "the IPv6 prefixes are not in the IPv6 table".into(),
            ));
        }
        // The leaves the load gave the rules, from the set's refs.
        let numbered = cfg.dir_refs[set] as usize;
        let leaves: HashMap<u32, u32> =
            batch::dump::<u32, RuleRef>(&self.ebpf, FW_DIR4_REFS[set], numbered)?
                .into_iter()
                .filter(|(n, _)| (*n as usize) < numbered)
                .map(|(n, r)| (r.id, n + 1))
                .collect();
        let c = compile(rules)?;
        let pool = batch::map_info(&self.ebpf, FW_V6TAB[set])?.max_entries();
        let leaf = |r: &RuleRef| leaves.get(&r.id).copied().unwrap_or(0);
        let table =
            super::v6tab::build_roomy(&c.src6, &c.dst6, pool, &leaf, 0, super::v6tab::Direct::None)
                .ok_or_else(|| {
                    Error::InvalidArgument("the IPv6 prefixes do not fit the table".into())
                })?;
        batch::write_array_fd(batch::map_fd(&self.ebpf, FW_V6TAB[set])?, &table.buckets)?;
        batch::write_array_fd(batch::map_fd(&self.ebpf, FW_V6NODE[set])?, &table.nodes)?;
        cfg.v6_roots[set] = table.roots;
        let v6: Vec<(usize, ipnet::Ipv6Net, RuleRef)> = rules
            .entries()
            .iter()
            .filter_map(|e| match prefix_field(&e.rule) {
                Some((field @ 2..=3, IpNet::V6(n))) => Some((field - 2, n, rule_ref(e))),
                _ => None,
            })
            .collect();
        let ref_room = batch::map_info(&self.ebpf, FW_DIR4_REFS[set])?.max_entries();
        let index = super::v6index::V6Index::new(&v6, table, leaves, numbered as u32 + 1)
            .with_leaf_room(ref_room);
        commit(
            &mut self.ebpf,
            Staged {
                cfg,
                active: staged.active,
            },
        )?;
        Ok(index)
    }

    /// Writes what `index` changed since the last call into the active set
    /// (see [`FirewallHarness::load_v6`]): rules, nodes, buckets, then the
    /// roots.
    pub fn v6_update(&mut self, index: &mut super::v6index::V6Index) -> Result<()> {
        let mut cfg = read_config(&self.ebpf)?;
        let set = cfg.prefix_set();
        let changes = index.take_changes();
        super::v6index::write_changes(&self.ebpf, set, &changes)?;
        let numbered = changes.refs.iter().map(|(n, _)| n + 1).max().unwrap_or(0);
        if changes.roots.is_some() || numbered > cfg.dir_refs[set] {
            if let Some(roots) = changes.roots {
                cfg.v6_roots[set] = roots;
            }
            cfg.dir_refs[set] = cfg.dir_refs[set].max(numbered);
            write_config(&mut self.ebpf, cfg)?;
        }
        Ok(())
    }

    /// The id of map `name` (for `bpftool map show id N`).
    pub fn map_id(&self, name: &str) -> Result<u32> {
        Ok(batch::map_info(&self.ebpf, name)?.id())
    }

    /// The active set's IPv6 hash table (its first `V6Root::buckets`
    /// buckets), read back from its map.
    pub fn read_v6_table(&self) -> Result<Vec<xdpkit_common::firewall::V6Bucket>> {
        let cfg = read_config(&self.ebpf)?;
        let set = cfg.prefix_set();
        let count = cfg.v6_roots[set][0].buckets as usize;
        let mut buckets = batch::dump(&self.ebpf, FW_V6TAB[set], count)?;
        buckets.retain(|(i, _): &(u32, _)| (*i as usize) < count);
        buckets.sort_unstable_by_key(|(i, _)| *i);
        Ok(buckets.into_iter().map(|(_, b)| b).collect())
    }

    /// Direct blocks (`V6_DIRECT`) in the active set's IPv6 table: the
    /// entries that head one.
    pub fn v6_direct_blocks(&self) -> Result<usize> {
        use xdpkit_common::firewall::{V6_DIRECT, V6_DIRECT_MAX, V6_NEXT_SHIFT};
        let direct = V6_DIRECT + 1..=V6_DIRECT + V6_DIRECT_MAX;
        Ok(self
            .read_v6_table()?
            .iter()
            .flat_map(|b| b.slots)
            .filter(|s| direct.contains(&(s.key >> V6_NEXT_SHIFT)))
            .count())
    }

    /// The active set's DIR table, read back from its maps, its leaves
    /// numbered by rule id (rule id + 1, as [`FirewallHarness::fresh_dir4`]).
    pub fn read_dir4(&self) -> Result<super::dir::Dir4> {
        use xdpkit_common::firewall::{DirChunk, DirSlot, DIR_CHUNK, DIR_TRIE};
        let cfg = read_config(&self.ebpf)?;
        let set = cfg.prefix_set();
        let mut dir = super::dir::Dir4::default();
        for (i, v) in batch::dump::<u32, DirSlot>(&self.ebpf, FW_DIR4_L1[set], dir.l1.len())? {
            dir.l1[i as usize] = v;
        }
        let used = cfg.dir_chunks[set] as usize;
        let mut chunks = batch::dump::<u32, DirChunk>(&self.ebpf, FW_DIR4_CHUNKS[set], used)?;
        chunks.truncate(used);
        dir.chunks = chunks.into_iter().map(|(_, c)| c).collect();
        let numbered = cfg.dir_refs[set] as usize;
        let refs: HashMap<u32, RuleRef> =
            batch::dump::<u32, RuleRef>(&self.ebpf, FW_DIR4_REFS[set], numbered)?
                .into_iter()
                .filter(|(n, _)| (*n as usize) < numbered)
                .collect();
        let by_id = |v: DirSlot| {
            if v == 0 || v & (DIR_CHUNK | DIR_TRIE) != 0 {
                v
            } else {
                refs.get(&(v - 1)).map_or(DIR_TRIE - 1, |r| r.id + 1)
            }
        };
        for v in dir.l1.iter_mut() {
            *v = by_id(*v);
        }
        for c in dir.chunks.iter_mut() {
            for v in c.slots.iter_mut() {
                *v = by_id(*v);
            }
        }
        Ok(dir)
    }

    /// The DIR table a fresh compile of `rules` gives, every IPv4 prefix
    /// rule in it (as [`FirewallHarness::load_dir4`] loads it).
    pub fn fresh_dir4(rules: &Ruleset) -> Result<super::dir::Dir4> {
        let c = compile(rules)?;
        Ok(build_dir4(&c.src4, &c.dst4).unwrap_or_default())
    }

    /// Mean ns per frame over `repeat` runs of `frame`, as the kernel timed
    /// it, with tracing off (as on an interface); tracing is back on after.
    pub fn ns_per_frame(&mut self, frame: &[u8], repeat: u32) -> Result<u64> {
        use aya::programs::{TestRun as _, TestRunOptions};
        let mut cfg = read_config(&self.ebpf)?;
        cfg.trace = 0;
        write_config(&mut self.ebpf, cfg)?;
        let program = object::program(&mut self.ebpf, SYMBOL, "firewall")?;
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.repeat = repeat.max(1);
        let result = program.test_run(opts).map_err(|source| Error::TestRun {
            program: "firewall",
            source,
        });
        cfg.trace = 1;
        write_config(&mut self.ebpf, cfg)?;
        Ok(u64::try_from(result?.duration.as_nanos()).unwrap_or(u64::MAX))
    }

    /// The token bucket of rate-limit rule `rule` for source `src`, as the
    /// kernel left it (`None` before the rule's first frame from `src`).
    pub fn bucket(&self, rule: u32, src: std::net::IpAddr) -> Result<Option<Bucket>> {
        let map = self
            .ebpf
            .map(FW_BUCKETS)
            .ok_or_else(|| object::missing_map(FW_BUCKETS))?;
        let buckets: aya::maps::HashMap<&MapData, BucketKey, Bucket> =
            aya::maps::HashMap::try_from(map).map_err(map_err("open FW_BUCKETS"))?;
        let mut key = BucketKey {
            rule,
            ..BucketKey::default()
        };
        match src {
            std::net::IpAddr::V4(a) => key.addr[..4].copy_from_slice(&a.octets()),
            std::net::IpAddr::V6(a) => {
                key.v6 = 1;
                key.addr = a.octets();
            }
        }
        found(buckets.get(&key, 0), FW_BUCKETS)
    }

    /// Runs one frame; returns the test-run outcome and the kernel's trace.
    pub fn run(&mut self, frame: &[u8]) -> Result<(TestRunOutcome, FwTrace)> {
        use aya::programs::{TestRun as _, TestRunOptions};
        let program = object::program(&mut self.ebpf, SYMBOL, "firewall")?;
        let mut output = vec![0u8; frame.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut output);
        let result = program.test_run(opts).map_err(|source| Error::TestRun {
            program: "firewall",
            source,
        })?;
        output.truncate(result.data_size_out as usize);
        let map = self
            .ebpf
            .map(FW_TRACE)
            .ok_or_else(|| object::missing_map(FW_TRACE))?;
        let array: Array<&MapData, FwTrace> =
            Array::try_from(map).map_err(map_err("open FW_TRACE"))?;
        let trace = array.get(&0, 0).map_err(map_err("read FW_TRACE"))?;
        Ok((
            TestRunOutcome {
                verdict: XdpAction::from_u32(result.return_value),
                code: result.return_value,
                output,
                ns_per_run: u64::try_from(result.duration.as_nanos()).unwrap_or(u64::MAX),
            },
            trace,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The room a plan is made for while maps grow is the room they have
    /// after: a wanted map of this set grows (never shrinks), the other
    /// set's and unnamed ones stay.
    #[test]
    fn room_after_growth_follows_the_wanted_maps_of_its_set() {
        let now = Room {
            host_src4: 64,
            host_src6: 64,
            host_table4: 16,
            refs: 1024,
            chunks: 64,
            v6tab: 16,
        };
        let wanted = [
            (FW_DIR4_CHUNKS[1], 4096),
            (FW_DIR4_CHUNKS[0], 2048),
            (FW_DIR4_REFS[1], 512),
            (FW_V6TAB[0], 1 << 16),
            (FW_V6TAB[1], 1 << 17),
        ];
        assert_eq!(
            now.grown(1, &wanted),
            Room {
                chunks: 4096,
                v6tab: 1 << 17,
                ..now
            }
        );
        assert_eq!(
            now.grown(0, &wanted),
            Room {
                chunks: 2048,
                v6tab: 1 << 16,
                ..now
            }
        );
        assert_eq!(now.grown(0, &[]), now);
    }

    #[test]
    fn host_table_keeps_every_host_in_one_of_its_buckets_or_overflows() {
        // More hosts than slots: some must overflow, none may be lost.
        let slots = xdpkit_common::firewall::FW_HOST_BUCKETS as usize * 4;
        let hosts: Vec<Prefix> = (0..slots as u32 + 50_000)
            .map(|i| {
                let addr = std::net::Ipv4Addr::from(i.wrapping_mul(2_654_435_761));
                let rule = RuleRef {
                    id: i + 1,
                    ..RuleRef::default()
                };
                (IpNet::V4(ipnet::Ipv4Net::new(addr, 32).unwrap()), rule)
            })
            .collect();
        let (table, overflow) = host_table(&hosts, TABLE_BITS.1);
        assert!(overflow.len() >= 50_000, "{} overflowed", overflow.len());
        let overflowed: foldhash::HashSet<u32> = overflow.iter().map(|(_, r)| r.id).collect();
        let mut in_table = 0;
        for (net, rule) in &hosts {
            let IpNet::V4(n) = net else { unreachable!() };
            let addr = u32::from_ne_bytes(n.addr().octets());
            let found = host_buckets(addr, table.bits)
                .iter()
                .flat_map(|b| table.buckets[*b as usize].slots)
                .find(|s| s.used != 0 && s.addr == addr);
            match found {
                Some(slot) => {
                    assert_eq!(slot.rule, *rule);
                    in_table += 1;
                }
                None => assert!(overflowed.contains(&rule.id), "{net} lost"),
            }
        }
        assert_eq!(in_table + overflow.len(), hosts.len());
        // Two choices fill the table well before anything overflows.
        assert!(
            in_table * 100 >= slots * 90,
            "only {in_table} of {slots} slots used"
        );
    }

    #[test]
    fn host_table_is_sized_to_its_hosts() {
        let hosts = |n: u32| -> Vec<Prefix> {
            (0..n)
                .map(|i| {
                    let addr = std::net::Ipv4Addr::from(0xc612_0000 + i);
                    let net = IpNet::V4(ipnet::Ipv4Net::new(addr, 32).unwrap());
                    (net, RuleRef::default())
                })
                .collect()
        };
        // 450,000 hosts fill 86% of the largest table's slots: cuckoo
        // moves still find every one a place.
        for (n, bits) in [
            (1, 4),
            (1024, 9),
            (100_000, 16),
            (450_000, 17),
            (1_000_000, 17),
        ] {
            let (table, overflow) = host_table(&hosts(n), TABLE_BITS.1);
            assert_eq!(table.bits, bits, "{n} hosts");
            assert_eq!(table.buckets.len(), 1 << bits);
            if n <= 450_000 {
                assert!(
                    overflow.is_empty(),
                    "{n} hosts: {} overflowed",
                    overflow.len()
                );
            }
        }
    }

    #[test]
    fn children_inherit_a_better_ancestor() {
        let rules = Ruleset::parse_file_text(
            "t",
            "allow src 198.18.1.0/24 prio 50\ndeny src 198.18.0.0/16 prio 10\nallow src 198.19.0.0/16\ndeny src 198.19.7.0/24\n",
        )
        .unwrap();
        let c = compile(&rules).unwrap();
        let get = |net: &str| {
            c.src4
                .iter()
                .find(|(n, _)| *n == net.parse::<IpNet>().unwrap())
                .unwrap()
                .1
                .id
        };
        assert_eq!(get("198.18.1.0/24"), 2, "the /16 deny has the better prio");
        assert_eq!(get("198.18.0.0/16"), 2);
        assert_eq!(get("198.19.7.0/24"), 3, "same prio: earlier line wins");
    }

    #[test]
    fn policies_round_trip_through_the_config() {
        let p = Policy {
            default: Verdict::Drop,
            fragments: FragmentPolicy::L3,
            non_ip: Verdict::Drop,
            malformed: Verdict::Pass,
        };
        assert_eq!(policy_of(&config(&p, 1, false)), p);
        assert_eq!(
            policy_of(&config(&Policy::default(), 0, false)),
            Policy::default()
        );
    }

    #[test]
    fn general_rules_stay_out_of_the_prefix_tries() {
        let text = "deny src 198.18.0.0/16 dport 80\ndeny dst 198.18.0.0/16\n";
        let rules = Ruleset::parse_file_text("t", text).unwrap();
        let c = compile(&rules).unwrap();
        assert!(c.src4.is_empty(), "the port rule is general");
        assert_eq!(c.dst4.len(), 1);
    }
}
