//! The firewall: IPv4 prefix rules in DIR-16-8-8 tables, IPv6 ones in
//! hash tables searched by binary search on lengths (see docs/firewall.md), policies
//! for non-IP, malformed frames and fragments, rate limits, redirects into
//! AF_XDP sockets (`to-userspace`), counters.
#![no_std]
#![no_main]

mod general;
mod parse;

use aya_ebpf::{
    helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    macros::{map, xdp},
    maps::{
        lpm_trie::{Key, LpmTrie},
        Array, HashMap, LruHashMap, PerCpuArray,
    },
    programs::XdpContext,
};
use xdpkit_common::{
    firewall::{
        host_buckets, host_filter, present_dir, present_host, present_table, present_trie,
        v6_bucket, v6_hash, v6_leaf_index, v6_rehash, v6_tag, Bucket, BucketKey, DirChunk, DirSlot,
        FwConfig, FwTrace, HostBucket, Outcome, RuleHits, RuleRecord, RuleRef, V6Bucket, V6Node,
        V6Root, ACTION_ALLOW, ACTION_DENY, ACTION_TO_USERSPACE, ACTIVE_GENERAL, ACTIVE_PREFIX,
        DIR4_L1_SLOTS, DIR_CHUNK, DIR_TRIE, FW_CLOCK_SLOT, FW_DIR4_MAX_CHUNKS, FW_HOST_BUCKETS,
        FW_MAX_BUCKETS, FW_MAX_HOSTS, FW_MAX_PREFIXES, FW_MAX_RULE_IDS, FW_V6_MAX_BUCKETS,
        FW_V6_NODES, NO_RULE, POLICY_DROP, POLICY_L3, POLICY_PASS, V6_DIRECT, V6_DIRECT_MAX,
        V6_LEAVES_PER_BUCKET, V6_MAX_PROBES, V6_NEXT_SHIFT, V6_TAG_MASK,
    },
    ActionCounter, XdpAction,
};

use self::parse::{parse, read_addresses, IpFrame, Parsed};
use xdpkit_ebpf::{
    chain,
    stats::{add, count_rule_len},
    xsks::to_userspace,
};

xdpkit_ebpf::license!();

#[map(name = "FW_CONFIG")]
static CONFIG: Array<FwConfig> = Array::with_max_entries(1, 0);
#[map(name = "FW_TRACE")]
static TRACE: Array<FwTrace> = Array::with_max_entries(1, 0);
#[map(name = "FW_RULE_STATS")]
static RULE_STATS: PerCpuArray<RuleHits> = PerCpuArray::with_max_entries(FW_MAX_RULE_IDS, 0);
#[map(name = "FW_RULES")]
static RULES: Array<RuleRecord> = Array::with_max_entries(FW_MAX_RULE_IDS, 0);
/// The full records of general rules (userspace only, like `FW_RULES`).
#[map(name = "FW_GEN_RECORDS")]
static GEN_RECORDS: HashMap<u32, xdpkit_common::firewall::GeneralRecord> =
    HashMap::with_max_entries(xdpkit_common::firewall::FW_MAX_GENERAL, NO_PREALLOC);
/// Outcome counters, then this CPU's [`Clock`] in entry [`FW_CLOCK_SLOT`].
#[map(name = "FW_OUTCOMES")]
static OUTCOMES: PerCpuArray<ActionCounter> = PerCpuArray::with_max_entries(Outcome::COUNT + 1, 0);

const NO_PREALLOC: u32 = 1; // BPF_F_NO_PREALLOC, required for LPM tries

#[map(name = "FW_SRC4_0")]
static SRC4_0: LpmTrie<[u8; 4], RuleRef> = LpmTrie::with_max_entries(FW_MAX_PREFIXES, NO_PREALLOC);
#[map(name = "FW_SRC4_1")]
static SRC4_1: LpmTrie<[u8; 4], RuleRef> = LpmTrie::with_max_entries(FW_MAX_PREFIXES, NO_PREALLOC);
#[map(name = "FW_DST4_0")]
static DST4_0: LpmTrie<[u8; 4], RuleRef> = LpmTrie::with_max_entries(FW_MAX_PREFIXES, NO_PREALLOC);
#[map(name = "FW_DST4_1")]
static DST4_1: LpmTrie<[u8; 4], RuleRef> = LpmTrie::with_max_entries(FW_MAX_PREFIXES, NO_PREALLOC);
#[map(name = "FW_SRC6_0")]
static SRC6_0: LpmTrie<[u8; 16], RuleRef> = LpmTrie::with_max_entries(FW_MAX_PREFIXES, NO_PREALLOC);
#[map(name = "FW_SRC6_1")]
static SRC6_1: LpmTrie<[u8; 16], RuleRef> = LpmTrie::with_max_entries(FW_MAX_PREFIXES, NO_PREALLOC);
#[map(name = "FW_DST6_0")]
static DST6_0: LpmTrie<[u8; 16], RuleRef> = LpmTrie::with_max_entries(FW_MAX_PREFIXES, NO_PREALLOC);
#[map(name = "FW_DST6_1")]
static DST6_1: LpmTrie<[u8; 16], RuleRef> = LpmTrie::with_max_entries(FW_MAX_PREFIXES, NO_PREALLOC);

#[map(name = "FW_HSRC4_0")]
static HSRC4_0: HashMap<[u8; 4], RuleRef> = HashMap::with_max_entries(FW_MAX_HOSTS, NO_PREALLOC);
#[map(name = "FW_HSRC4_1")]
static HSRC4_1: HashMap<[u8; 4], RuleRef> = HashMap::with_max_entries(FW_MAX_HOSTS, NO_PREALLOC);
#[map(name = "FW_HSRC6_0")]
static HSRC6_0: HashMap<[u8; 16], RuleRef> = HashMap::with_max_entries(FW_MAX_HOSTS, NO_PREALLOC);
#[map(name = "FW_HSRC6_1")]
static HSRC6_1: HashMap<[u8; 16], RuleRef> = HashMap::with_max_entries(FW_MAX_HOSTS, NO_PREALLOC);

#[map(name = "FW_HTAB4_0")]
static HTAB4_0: Array<HostBucket> = Array::with_max_entries(FW_HOST_BUCKETS, 0);
#[map(name = "FW_HTAB4_1")]
static HTAB4_1: Array<HostBucket> = Array::with_max_entries(FW_HOST_BUCKETS, 0);

/// The IPv4 source host's entry in the host table of `set`, if any: two
/// inlined array lookups and eight compares, no helper call.
#[inline(always)]
fn table_lookup(set: u32, bits: u32, addr: [u8; 4]) -> Option<&'static RuleRef> {
    let key = u32::from_ne_bytes(addr);
    for index in host_buckets(key, bits) {
        let bucket = if set == 0 {
            HTAB4_0.get(index)
        } else {
            HTAB4_1.get(index)
        };
        if let Some(bucket) = bucket {
            for slot in &bucket.slots {
                if slot.used != 0 && slot.addr == key {
                    return Some(&slot.rule);
                }
            }
        }
    }
    None
}

#[map(name = "FW_HBITS4_0")]
static HBITS4_0: Array<u64> = Array::with_max_entries(FW_HOST_BUCKETS, 0);
#[map(name = "FW_HBITS4_1")]
static HBITS4_1: Array<u64> = Array::with_max_entries(FW_HOST_BUCKETS, 0);

/// Whether the host table of `set` may hold IPv4 source `addr`: its bit in
/// the table's filter (one inlined array read). Clear for most sources
/// outside the /24s of listed hosts, which then skip the table.
#[inline(always)]
fn host_filter_passes(set: u32, bits: u32, addr: [u8; 4]) -> bool {
    let (word, bit) = host_filter(addr, bits);
    let w = if set == 0 {
        HBITS4_0.get(word)
    } else {
        HBITS4_1.get(word)
    };
    match w {
        Some(w) => *w & bit != 0,
        None => false,
    }
}

#[map(name = "FW_DIR4_L1_0")]
static DIR4_L1_0: Array<DirSlot> = Array::with_max_entries(2 * DIR4_L1_SLOTS, 0);
#[map(name = "FW_DIR4_L1_1")]
static DIR4_L1_1: Array<DirSlot> = Array::with_max_entries(2 * DIR4_L1_SLOTS, 0);
#[map(name = "FW_DIR4_CH_0")]
static DIR4_CH_0: Array<DirChunk> = Array::with_max_entries(FW_DIR4_MAX_CHUNKS, 0);
#[map(name = "FW_DIR4_CH_1")]
static DIR4_CH_1: Array<DirChunk> = Array::with_max_entries(FW_DIR4_MAX_CHUNKS, 0);
#[map(name = "FW_DIR4_REFS_0")]
static DIR4_REFS_0: Array<RuleRef> = Array::with_max_entries(FW_MAX_RULE_IDS, 0);
#[map(name = "FW_DIR4_REFS_1")]
static DIR4_REFS_1: Array<RuleRef> = Array::with_max_entries(FW_MAX_RULE_IDS, 0);

/// The slot of `addr`'s next 8 bits in chunk `slot` (a chunk index).
#[inline(always)]
fn dir4_chunk(set: u32, slot: DirSlot, byte: u32) -> DirSlot {
    let index = slot & !DIR_CHUNK;
    let chunk = if set == 0 {
        DIR4_CH_0.get(index)
    } else {
        DIR4_CH_1.get(index)
    };
    match chunk {
        Some(c) => c.slots[(byte & 0xff) as usize],
        None => 0,
    }
}

/// The best prefix rule of IPv4 `addr` (host order) for `field` (0 src, 1
/// dst) in the DIR-16-8-8 table of `set`: at most three inlined array reads
/// (first level, /24 chunk, /32 chunk) and one of the rule, no helper call.
/// `Err(())`: the address sits in a /24 the set's trie judges (`DIR_TRIE`).
#[inline(always)]
fn dir4_lookup(set: u32, field: u32, addr: u32) -> Result<Option<&'static RuleRef>, ()> {
    let index = (field << 16) | (addr >> 16);
    let first = if set == 0 {
        DIR4_L1_0.get(index)
    } else {
        DIR4_L1_1.get(index)
    };
    let mut slot = match first {
        Some(s) => *s,
        None => 0,
    };
    if slot & DIR_CHUNK != 0 {
        slot = dir4_chunk(set, slot, addr >> 8);
        if slot == DIR_TRIE {
            return Err(());
        }
        if slot & DIR_CHUNK != 0 {
            slot = dir4_chunk(set, slot, addr);
        }
    }
    if slot == 0 || slot & (DIR_CHUNK | DIR_TRIE) != 0 {
        return Ok(None);
    }
    Ok(if set == 0 {
        DIR4_REFS_0.get(slot - 1)
    } else {
        DIR4_REFS_1.get(slot - 1)
    })
}

#[map(name = "FW_V6TAB_0")]
static V6TAB_0: Array<V6Bucket> = Array::with_max_entries(FW_V6_MAX_BUCKETS, 0);
#[map(name = "FW_V6TAB_1")]
static V6TAB_1: Array<V6Bucket> = Array::with_max_entries(FW_V6_MAX_BUCKETS, 0);
#[map(name = "FW_V6NODE_0")]
static V6NODE_0: Array<V6Node> = Array::with_max_entries(FW_V6_NODES, 0);
#[map(name = "FW_V6NODE_1")]
static V6NODE_1: Array<V6Node> = Array::with_max_entries(FW_V6_NODES, 0);

/// The entry of the IPv6 table of `set` with tag `tag` and masked address
/// `(hi, lo)`: its key and rule + 1 (0 for none), or `None` if absent. One
/// or two inlined bucket reads of four compares each: the second only when
/// the first is full (the table puts an entry in its second bucket only
/// then, and fills a bucket's slots in order).
#[inline(always)]
fn v6_probe<const SET: u32>(count: u32, tag: u32, hi: u64, lo: u64) -> Option<(u32, u32)> {
    let h = v6_hash(hi, lo, tag);
    match v6_scan::<SET>(v6_bucket(h, count), tag, hi, lo) {
        Ok(found) => Some(found),
        Err(true) => v6_scan::<SET>(v6_bucket(v6_rehash(h), count), tag, hi, lo).ok(),
        Err(false) => None,
    }
}

/// Leaf `index` of the direct block at bucket `count + block` (see
/// [`V6_DIRECT`]): the search's answer, rule + 1 (0 for none).
#[inline(always)]
fn v6_leaf<const SET: u32>(count: u32, block: u32, index: u32) -> u32 {
    let q = index / V6_LEAVES_PER_BUCKET;
    let r = index - q * V6_LEAVES_PER_BUCKET;
    let bucket = if SET == 0 {
        V6TAB_0.get(count + block + q)
    } else {
        V6TAB_1.get(count + block + q)
    };
    match bucket {
        // SAFETY: a leaf of a 96-byte map value read as u32s; `r` < 16.
        Some(b) if r < V6_LEAVES_PER_BUCKET => unsafe {
            *(b as *const V6Bucket as *const u32).add(r as usize)
        },
        _ => 0,
    }
}

/// The entry of bucket `index` with tag `tag` and masked address `(hi,
/// lo)`, or whether the bucket is full.
#[inline(always)]
fn v6_scan<const SET: u32>(index: u32, tag: u32, hi: u64, lo: u64) -> Result<(u32, u32), bool> {
    let bucket = if SET == 0 {
        V6TAB_0.get(index)
    } else {
        V6TAB_1.get(index)
    };
    let Some(bucket) = bucket else {
        return Err(false);
    };
    for slot in &bucket.slots {
        // The high half first: it differs for nearly every other entry.
        if slot.hi == hi && slot.lo == lo && slot.key & V6_TAG_MASK == tag {
            return Ok((slot.key, slot.rule));
        }
    }
    Err(bucket.slots[3].key != 0)
}

/// The best prefix rule of IPv6 `addr` for `field` (0 src, 1 dst) in the
/// table of `set`: binary search on the field's prefix lengths (Waldvogel),
/// where a hit goes on with the lengths of the listed prefixes inside the
/// entry found (its next node) and a miss with the shorter lengths (the
/// node's left); each probe at least halves the lengths left, so at most
/// [`V6_MAX_PROBES`] probes of two inlined bucket reads each, plus one read
/// of the root, one of each node and one of the rule; no helper call. A
/// hit (a prefix or a marker) carries the best rule of the longest listed
/// prefix it lies in. A hit on the head of a direct block ([`V6_DIRECT`])
/// ends the search with one more read: the leaf of the address's next bits.
#[inline(always)]
fn v6_lookup(cfg: &FwConfig, set: u32, field: u32, addr: (u64, u64)) -> Option<&'static RuleRef> {
    // Branches, not indexes (see `judge`); a copy of the search per set, so
    // that its loop keeps no set to test (nor spill) on every probe.
    if set == 0 {
        let root = if field == 0 {
            &cfg.v6_roots[0][0]
        } else {
            &cfg.v6_roots[0][1]
        };
        v6_search::<0>(root, field, addr)
    } else {
        let root = if field == 0 {
            &cfg.v6_roots[1][0]
        } else {
            &cfg.v6_roots[1][1]
        };
        v6_search::<1>(root, field, addr)
    }
}

/// [`v6_lookup`] in the table of set `SET`, from `root`.
#[inline(always)]
fn v6_search<const SET: u32>(
    root: &V6Root,
    field: u32,
    (hi, lo): (u64, u64),
) -> Option<&'static RuleRef> {
    let count = root.buckets;
    let mut best = root.zero;
    let mut node = root.root;
    let mut via_first = false;
    for probe in 0..V6_MAX_PROBES {
        // V6_NO_NODE is past the array: the search ends. The first two
        // nodes come from the root's copies (no dependent map read).
        let n = if node >= FW_V6_NODES {
            break;
        } else if probe == 0 {
            &root.node
        } else if probe == 1 && via_first {
            &root.next
        } else {
            let n = if SET == 0 {
                V6NODE_0.get(node)
            } else {
                V6NODE_1.get(node)
            };
            let Some(n) = n else {
                break;
            };
            n
        };
        let (mhi, mlo) = (hi & n.mask_hi, lo & n.mask_lo);
        // The first length of a field whose prefixes share one prefix of
        // it: one compare with the root's copy instead of a probe.
        let found = if probe == 0 && root.shared != 0 {
            via_first = true;
            let first = &root.first;
            if first.hi == mhi && first.lo == mlo {
                Some((first.key, first.rule))
            } else {
                None
            }
        } else {
            v6_probe::<SET>(count, v6_tag(field, n.len), mhi, mlo)
        };
        match found {
            Some((key, rule)) => {
                best = rule;
                node = key >> V6_NEXT_SHIFT;
                if node > V6_DIRECT && node <= V6_DIRECT + V6_DIRECT_MAX {
                    best =
                        v6_leaf::<SET>(count, rule, v6_leaf_index(hi, lo, n.len, node - V6_DIRECT));
                    break;
                }
            }
            None => node = n.left,
        }
    }
    if best == 0 {
        return None;
    }
    if SET == 0 {
        DIR4_REFS_0.get(best - 1)
    } else {
        DIR4_REFS_1.get(best - 1)
    }
}

#[map(name = "FW_BUCKETS")]
static BUCKETS: LruHashMap<BucketKey, Bucket> = LruHashMap::with_max_entries(FW_MAX_BUCKETS, 0);

const TOKEN: u64 = 1_000_000_000;

// Inlined into the entry point the macro writes: past some size LLVM
// otherwise keeps the body a function of its own, a BPF-to-BPF call per
// frame.
#[xdp(frags)]
#[inline(always)]
pub fn xdpkit_firewall(ctx: XdpContext) -> u32 {
    let mut slot = core::mem::MaybeUninit::uninit();
    let ip = IpFrame::zero_in(&mut slot);
    // The frame first: its header loads (a cache miss when another core
    // wrote the frame) then overlap the config loads below.
    let (parsed, len) = parse(&ctx, ip);
    // The config by reference: each field is read where a frame needs it,
    // not all of them copied to the stack up front (spills on every frame).
    let Some(cfg) = CONFIG.get(0) else {
        return chain::next(&ctx);
    };
    let (action, outcome, rule) = match parsed {
        Parsed::NonIp => (policy(cfg.non_ip), Outcome::NonIp, NO_RULE),
        Parsed::Malformed => (policy(cfg.malformed), Outcome::Malformed, NO_RULE),
        Parsed::Ip if ip.later_fragment && cfg.fragments != POLICY_L3 => {
            (policy(cfg.fragments), Outcome::Fragment, NO_RULE)
        }
        Parsed::Ip if no_rules(cfg) => (policy(cfg.default_policy), Outcome::Default, NO_RULE),
        Parsed::Ip => {
            read_addresses(&ctx, ip);
            judge(&ctx, cfg, ip)
        }
    };
    add(&OUTCOMES, outcome as u32, len);
    if rule != NO_RULE {
        if let Some(h) = RULE_STATS.get_ptr_mut(rule) {
            // SAFETY: this CPU's slot of an existing entry; helper without arguments.
            unsafe {
                (*h).packets += 1;
                (*h).bytes += len;
                (*h).last_ns = coarse_now();
                if outcome == Outcome::RateLimited {
                    (*h).limited += 1;
                }
            }
        }
    }
    if cfg.trace != 0 {
        if let Some(t) = TRACE.get_ptr_mut(0) {
            // SAFETY: the one entry of an array map, valid for the map's life.
            unsafe {
                *t = FwTrace {
                    action: action as u32,
                    outcome: outcome as u32,
                    rule,
                    _pad: 0,
                };
            }
        }
    }
    if action == XdpAction::Pass {
        // Allowed (or to-userspace without a socket): the stages after the
        // firewall decide (pass if none).
        return chain::next_len(&ctx, len);
    }
    count_rule_len(&ctx, action, rule, len)
}

/// This CPU's coarse clock as of its last tick, cached per jiffy, in
/// entry [`FW_CLOCK_SLOT`] of `FW_OUTCOMES` (the same 16 bytes as an
/// `ActionCounter`): a map of its own would be the program's 65th, one
/// more than a program may use. A cache, as good fresh after a re-attach.
#[repr(C)]
#[derive(Clone, Copy)]
struct Clock {
    jiffies: u64,
    ns: u64,
}

const _: () = assert!(core::mem::size_of::<Clock>() == core::mem::size_of::<ActionCounter>());

/// `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC at jiffy resolution, all a
/// "last hit" needs) with one helper call per tick instead of per frame:
/// the verifier inlines `bpf_jiffies64` and per-CPU array lookups, while a
/// helper call costs tens of ns on kernels with return-stack mitigations.
#[inline(always)]
fn coarse_now() -> u64 {
    // SAFETY: helpers without arguments.
    let jiffies = unsafe { bpf_jiffies64() };
    let Some(clock) = OUTCOMES.get_ptr_mut(FW_CLOCK_SLOT) else {
        // SAFETY: as above.
        return unsafe { bpf_ktime_get_coarse_ns() };
    };
    let clock = clock.cast::<Clock>();
    // SAFETY: this CPU's slot of the clock entry, as long and aligned as a Clock.
    unsafe {
        if (*clock).jiffies != jiffies {
            (*clock).jiffies = jiffies;
            (*clock).ns = bpf_ktime_get_coarse_ns();
        }
        (*clock).ns
    }
}

#[inline(always)]
fn policy(p: u32) -> XdpAction {
    if p == POLICY_DROP {
        XdpAction::Drop
    } else {
        XdpAction::Pass
    }
}

/// "No rule": ranks after every real rule. Candidates are plain values, not
/// `Option`s, because LLVM copies the undefined payload of a `None` and the
/// verifier refuses to read uninitialized registers.
const NONE: RuleRef = RuleRef {
    rank: u64::MAX,
    id: NO_RULE,
    action: 0,
    pps: 0,
    prefix_len: 0,
};

#[inline(always)]
fn keep_better(best: &mut RuleRef, candidate: Option<&RuleRef>) {
    if let Some(c) = candidate {
        if c.rank < best.rank {
            *best = *c;
        }
    }
}

/// The prefix-rule candidates of one address family: the source host table
/// (IPv4) or host map (a hit in either is final), else the source trie, then the destination trie; maps
/// that `present` marks empty are skipped. A macro rather than a function:
/// each set's maps must reach their helper call as constants, so the set is
/// chosen with a branch at every lookup.
macro_rules! prefix_lookups {
    ($best:ident, $set:ident, $has:ident, $field:literal, $src:expr, $dst:expr, $bits:literal,
     $table:expr, ($h0:ident, $h1:ident), ($s0:ident, $s1:ident), ($d0:ident, $d1:ident),
     $dir_src:expr, $dir_dst:expr) => {{
        // References: a copy of an IPv6 address is sixteen byte moves on BPF.
        let src = $src;
        let dst = $dst;
        let table: Option<&RuleRef> = $table;
        let host = if table.is_some() {
            table
        } else if !$has(present_host(0, $field)) {
            None
        } else if $set == 0 {
            // SAFETY: values are replaced whole by userspace, never edited.
            unsafe { $h0.get(src) }
        } else {
            // SAFETY: as above.
            unsafe { $h1.get(src) }
        };
        // The DIR table answers, or sends the address to the trie (`Err`).
        let dir: Result<Option<&RuleRef>, ()> = if host.is_some() {
            Ok(host)
        } else if $has(present_dir(0, $field)) {
            $dir_src
        } else {
            Err(())
        };
        match dir {
            Ok(found) => keep_better(&mut $best, found),
            Err(()) if $has(present_trie(0, $field)) => {
                let key = Key::new($bits, *src);
                keep_better(
                    &mut $best,
                    if $set == 0 {
                        $s0.get(&key)
                    } else {
                        $s1.get(&key)
                    },
                );
            }
            Err(()) => {}
        }
        let dir: Result<Option<&RuleRef>, ()> = if $has(present_dir(0, $field + 1)) {
            $dir_dst
        } else {
            Err(())
        };
        match dir {
            Ok(found) => keep_better(&mut $best, found),
            Err(()) if $has(present_trie(0, $field + 1)) => {
                let key = Key::new($bits, *dst);
                keep_better(
                    &mut $best,
                    if $set == 0 {
                        $d0.get(&key)
                    } else {
                        $d1.get(&key)
                    },
                );
            }
            Err(()) => {}
        }
    }};
}

/// The first matching rule of the active set, or the default policy. A
/// `to-userspace` rule redirects here (only frames it decides pay for the
/// helper call); without a socket on the frame's queue it hands the frame
/// on like `allow`, as [`Outcome::NoSocket`].
#[inline(always)]
fn judge(ctx: &XdpContext, cfg: &FwConfig, ip: &IpFrame) -> (XdpAction, Outcome, u32) {
    let set = cfg.active & ACTIVE_PREFIX;
    // This set's byte of `present`, so the bits below are those of set 0.
    let present = if set == 0 {
        cfg.present
    } else {
        cfg.present >> 8
    };
    let has = |bit: u32| present & bit != 0;
    let mut best = NONE;
    if ip.v6 {
        prefix_lookups!(
            best,
            set,
            has,
            2,
            &ip.src,
            &ip.dst,
            128,
            None,
            (HSRC6_0, HSRC6_1),
            (SRC6_0, SRC6_1),
            (DST6_0, DST6_1),
            v6_lookup(cfg, set, 0, ip.src_halves()).ok_or(()).map(Some),
            v6_lookup(cfg, set, 1, ip.dst_halves()).ok_or(()).map(Some)
        );
    } else {
        let s4 = ip.src4();
        let d4 = ip.dst4();
        prefix_lookups!(
            best,
            set,
            has,
            0,
            &s4,
            &d4,
            32,
            if has(present_table(0)) {
                // A branch, not `table_bits[set]` (see below).
                let bits = if set == 0 {
                    cfg.table_bits[0]
                } else {
                    cfg.table_bits[1]
                };
                if host_filter_passes(set, bits, s4) {
                    table_lookup(set, bits, s4)
                } else {
                    None
                }
            } else {
                None
            },
            (HSRC4_0, HSRC4_1),
            (SRC4_0, SRC4_1),
            (DST4_0, DST4_1),
            dir4_lookup(set, 0, u32::from_be_bytes(s4)),
            dir4_lookup(set, 1, u32::from_be_bytes(d4))
        );
    }
    // A branch, not `general[set]`: LLVM turns a variable stack index into
    // pointer arithmetic the verifier rejects.
    let gset = (cfg.active & ACTIVE_GENERAL) >> 1;
    let general = if gset == 0 {
        cfg.general[0]
    } else {
        cfg.general[1]
    };
    if general != 0 {
        keep_better(&mut best, general::first_match(gset, ip));
    }
    if best.id == NO_RULE {
        return (policy(cfg.default_policy), Outcome::Default, NO_RULE);
    }
    match best.action {
        ACTION_ALLOW => (XdpAction::Pass, Outcome::Rule, best.id),
        ACTION_DENY => (XdpAction::Drop, Outcome::Rule, best.id),
        ACTION_TO_USERSPACE if to_userspace(ctx) => (XdpAction::Redirect, Outcome::Rule, best.id),
        ACTION_TO_USERSPACE => (XdpAction::Pass, Outcome::NoSocket, best.id),
        _ if take_token(&best, ip) => (XdpAction::Pass, Outcome::Rule, best.id),
        _ => (XdpAction::Drop, Outcome::RateLimited, best.id),
    }
}

/// Whether [`judge`] can only give the default: no prefix map in use (any
/// `present` bit seen from the active set, so conservative) and no general
/// rule in the active set. Then the addresses are not even read.
#[inline(always)]
fn no_rules(cfg: &FwConfig) -> bool {
    let present = if cfg.active & ACTIVE_PREFIX == 0 {
        cfg.present
    } else {
        cfg.present >> 8
    };
    let general = if cfg.active & ACTIVE_GENERAL == 0 {
        cfg.general[0]
    } else {
        cfg.general[1]
    };
    present == 0 && general == 0
}

/// One token from the (rule, source) bucket; buckets start full.
#[inline(always)]
fn take_token(rule: &RuleRef, ip: &IpFrame) -> bool {
    let key = BucketKey {
        rule: rule.id,
        v6: u32::from(ip.v6),
        addr: ip.src,
    };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let capacity = u64::from(rule.pps) * TOKEN;
    let Some(bucket) = BUCKETS.get_ptr_mut(&key) else {
        let fresh = Bucket {
            credit: capacity - TOKEN,
            last_ns: now,
        };
        // A full LRU evicts; a failed insert still lets this first packet pass.
        let _ = BUCKETS.insert(&key, &fresh, 0);
        return true;
    };
    // SAFETY: a value pointer from the map, valid during this program run.
    // Races between CPUs can only mis-count a token, never corrupt memory.
    unsafe {
        let elapsed = now.saturating_sub((*bucket).last_ns).min(TOKEN);
        let credit = ((*bucket).credit + elapsed * u64::from(rule.pps)).min(capacity);
        (*bucket).last_ns = now;
        if credit >= TOKEN {
            (*bucket).credit = credit - TOKEN;
            true
        } else {
            (*bucket).credit = credit;
            false
        }
    }
}

// POLICY_PASS and ACTION_DENY document the encodings used above.
const _: () = assert!(POLICY_PASS == 0 && ACTION_DENY == 1);
