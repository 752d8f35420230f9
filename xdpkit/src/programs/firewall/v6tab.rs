//! IPv6 prefix tables (see docs/firewall.md, "IPv6 prefix rules"): binary
//! search on prefix lengths (Waldvogel et al.) over hash tables in array
//! maps, so the program reads at most [`V6_MAX_PROBES`] x 2 buckets, the
//! nodes, the root and the rule, with no helper call and no pointer walk.
//!
//! A search holds a sorted list of candidate lengths (at first every
//! length of the field above /0). It probes the shortest first, then
//! midpoints `lens[k / 2]` (the address masked to that length). A
//! miss goes on with the shorter half (after the shortest: nothing, the
//! address is in no listed prefix). A hit on entry E goes on with the
//! lengths of the listed prefixes inside E, among the longer half: none of
//! the others can match (Waldvogel's ropes). Each midpoint probe at least
//! halves the list, so 128 lengths take at most 1 + 7 probes. Every prefix
//! leaves a *marker* (its address masked to the probed length) where its
//! own search hits on its way; each entry, prefix or marker, carries the
//! best rule of the longest listed prefix containing it (a prefix's own
//! compiled value: the inherited best rule), so the last hit of a search
//! is the answer. The lists a search may go on with are trees of
//! [`V6Node`]s (midpoint, left = shorter half), each distinct list once;
//! an entry names the tree after it.

use foldhash::HashMap;
use ipnet::IpNet;
use xdpkit_common::firewall::{
    v6_buckets, v6_leaf_index, v6_mask, v6_tag, RuleRef, V6Bucket, V6Node, V6Root, V6Slot,
    FW_V6_MAX_BUCKETS, FW_V6_MIN_BUCKETS, FW_V6_NODES, V6_DIRECT, V6_DIRECT_MAX,
    V6_LEAVES_PER_BUCKET, V6_NEXT_SHIFT, V6_NO_NODE, V6_TAG_MASK,
};

/// A compiled prefix and its (inherited) rule.
type Prefix = (IpNet, RuleRef);

/// An IPv6 table: the buckets in use, the trees and the roots.
#[derive(Clone, Debug)]
pub struct V6Table {
    /// The buckets in use.
    pub buckets: Vec<V6Bucket>,
    /// Field 0 (src) and 1 (dst).
    pub roots: [V6Root; 2],
    /// The nodes of every tree.
    pub nodes: Vec<V6Node>,
    /// Entries (prefixes and markers) in the buckets.
    pub entries: usize,
    /// The first node of the tree of each list of lengths.
    pub(super) made: HashMap<Vec<u8>, u32>,
}

/// `addr` masked to `len` bits.
pub(super) fn trunc(addr: u128, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        addr & (u128::MAX << (128 - u32::from(len)))
    }
}

/// The address and length of an IPv6 net, masked.
fn key_of(net: &IpNet) -> Option<(u128, u8)> {
    match net {
        IpNet::V6(n) => Some((trunc(u128::from(n.addr()), n.prefix_len()), n.prefix_len())),
        IpNet::V4(_) => None,
    }
}

/// The entries of one field: `(address, length)` -> (the list of lengths
/// the search goes on with after a hit there, the rule + 1 if it is a
/// listed prefix).
type Entries = HashMap<(u128, u8), (Vec<u8>, Option<u32>)>;

/// The entries of a field whose listed prefixes are `reals` (`(address,
/// length)` -> rule + 1), and the list of lengths a search starts with.
fn field_entries(reals: &HashMap<(u128, u8), u32>) -> (Entries, Vec<u8>) {
    let mut sorted: Vec<(u128, u8)> = reals.keys().copied().collect();
    sorted.sort_unstable();
    let mut all: Vec<u8> = sorted.iter().map(|k| k.1).filter(|l| *l > 0).collect();
    all.sort_unstable();
    all.dedup();
    // The lengths of the listed prefixes strictly inside `addr/len`.
    let inside = |addr: u128, len: u8| -> Vec<u8> {
        let last = addr | !trunc(u128::MAX, len);
        let from = sorted.partition_point(|k| k.0 < addr);
        let mut lens: Vec<u8> = sorted[from..]
            .iter()
            .take_while(|k| k.0 <= last)
            .map(|k| k.1)
            .filter(|l| *l > len)
            .collect();
        lens.sort_unstable();
        lens.dedup();
        lens
    };
    let mut entries: Entries = HashMap::default();
    for &(addr, len) in &sorted {
        if len == 0 {
            continue;
        }
        // The search for the prefix itself, as the program makes it: the
        // shortest length first, then midpoints.
        let mut cands = all.clone();
        let mut first = true;
        loop {
            let mid = if first { 0 } else { midpoint(cands.len()) };
            first = false;
            let at = cands[mid];
            if at > len {
                cands.truncate(mid);
                continue;
            }
            let key = (trunc(addr, at), at);
            let next = match entries.get(&key) {
                Some((next, _)) => next.clone(),
                None => {
                    let longer = &cands[mid + 1..];
                    let next: Vec<u8> = inside(key.0, at)
                        .into_iter()
                        .filter(|l| longer.binary_search(l).is_ok())
                        .collect();
                    entries.insert(key, (next.clone(), reals.get(&key).copied()));
                    next
                }
            };
            if at == len {
                break;
            }
            cands = next;
        }
    }
    (entries, all)
}

/// Which of `k` candidate lengths (ascending) a search probes: the upper
/// middle. Either middle leaves at most `k / 2` lengths after the probe,
/// but the upper one ends a search that hits the longest of two lengths
/// (a listed /64 under a listed /48) in one probe, not two.
pub(super) fn midpoint(k: usize) -> usize {
    k / 2
}

/// The listed prefixes of both IPv6 fields of `rules` (value: rule + 1).
fn reals_of<'r>(rules: impl IntoIterator<Item = &'r super::Rule>) -> [HashMap<(u128, u8), u32>; 2] {
    let mut fields: [HashMap<(u128, u8), u32>; 2] = Default::default();
    for rule in rules {
        if let Some((field @ 2..=3, net)) = super::rule::prefix_field(rule) {
            if let Some(key) = key_of(&net) {
                fields[field - 2].insert(key, 1);
            }
        }
    }
    fields
}

/// Table entries (prefixes and markers, /0 aside) of the IPv6 prefix rules
/// among `rules`: what the table must hold.
pub fn entries_needed<'r>(rules: impl IntoIterator<Item = &'r super::Rule>) -> usize {
    reals_of(rules)
        .iter()
        .map(|reals| field_entries(reals).0.len())
        .sum()
}

/// Buckets a table of `entries` entries uses: the table 90% full, a
/// multiple of 16 (cuckoo insertion into two choices of four-entry buckets
/// places every entry up to about 97%; on a failure the build tries more
/// buckets, up to the map's).
pub fn buckets_for(entries: usize) -> u32 {
    let wanted = (entries * 10).div_ceil(36).min(FW_V6_MAX_BUCKETS as usize) as u32;
    wanted
        .next_multiple_of(16)
        .clamp(FW_V6_MIN_BUCKETS, FW_V6_MAX_BUCKETS)
}

/// Buckets a map gets when a ruleset of `entries` entries needs it to grow:
/// a quarter more than it uses, so the next adds fit without growing.
pub fn pool_for(entries: usize) -> u32 {
    buckets_for(entries + entries / 4)
}

/// The trees of the lists of lengths, each distinct list once.
#[derive(Default)]
pub(super) struct Trees {
    pub(super) nodes: Vec<V6Node>,
    pub(super) made: HashMap<Vec<u8>, u32>,
}

impl Trees {
    /// The first node of a field's search: its shortest length `lens[0]`,
    /// nothing after a miss (nothing shorter is listed).
    fn start(&mut self, lens: &[u8]) -> u32 {
        let Some(&shortest) = lens.first() else {
            return V6_NO_NODE;
        };
        let len = u32::from(shortest);
        let (mask_hi, mask_lo) = v6_mask(u64::MAX, u64::MAX, len);
        self.nodes.push(V6Node {
            len,
            left: V6_NO_NODE,
            mask_hi,
            mask_lo,
        });
        self.nodes.len() as u32 - 1
    }

    /// The first node of the tree of `lens` (ascending): its midpoint,
    /// left = the tree of the shorter half.
    pub(super) fn of(&mut self, lens: &[u8]) -> u32 {
        if lens.is_empty() {
            return V6_NO_NODE;
        }
        if let Some(&at) = self.made.get(lens) {
            return at;
        }
        let mid = midpoint(lens.len());
        let left = self.of(&lens[..mid]);
        let len = u32::from(lens[mid]);
        let (mask_hi, mask_lo) = v6_mask(u64::MAX, u64::MAX, len);
        let at = self.nodes.len() as u32;
        self.nodes.push(V6Node {
            len,
            left,
            mask_hi,
            mask_lo,
        });
        self.made.insert(lens.to_vec(), at);
        at
    }
}

/// One entry as the table holds it.
struct Placed {
    hi: u64,
    lo: u64,
    key: u32,
    rule: u32,
}

/// One field's entries with their rule + 1 and next node, and its root.
fn field_slots(
    prefixes: &[Prefix],
    field: u32,
    trees: &mut Trees,
    leaf: &dyn Fn(&RuleRef) -> u32,
) -> (Vec<Placed>, V6Root, Listed) {
    let mut reals: HashMap<(u128, u8), u32> = HashMap::default();
    for (net, rule) in prefixes {
        if let Some(key) = key_of(net) {
            reals.insert(key, leaf(rule));
        }
    }
    let (entries, all) = field_entries(&reals);
    let mut listed: Vec<((u128, u8), u32)> = reals.iter().map(|(k, v)| (*k, *v)).collect();
    listed.sort_unstable();
    let mut root = V6Root {
        zero: reals.get(&(0, 0)).copied().unwrap_or(0),
        buckets: 0,
        root: trees.start(&all),
        ..V6Root::default()
    };
    // Address order (shorter first at one address): each entry comes after
    // the prefixes containing it, and those still open form a chain whose
    // top is the longest listed prefix containing a marker.
    let mut order: Vec<(u128, u8)> = entries.keys().copied().collect();
    if let Some(&zero) = reals.get(&(0, 0)) {
        order.push((0, 0));
        let _ = zero;
    }
    order.sort_unstable();
    let mut chain: Vec<(u128, u8, u32)> = Vec::new();
    let mut out = Vec::with_capacity(entries.len());
    for (addr, len) in order {
        while chain
            .last()
            .is_some_and(|&(a, l, _)| l > len || trunc(addr, l) != a)
        {
            chain.pop();
        }
        let own = reals.get(&(addr, len)).copied();
        let rule = match own {
            Some(r) => {
                chain.push((addr, len, r));
                r
            }
            None => chain.last().map_or(0, |&(_, _, r)| r),
        };
        if len == 0 {
            continue;
        }
        let next = trees.of(&entries[&(addr, len)].0);
        out.push(Placed {
            hi: (addr >> 64) as u64,
            lo: addr as u64,
            key: v6_tag(field, u32::from(len)) | (next << V6_NEXT_SHIFT),
            rule,
        });
    }
    // One entry at the first length: the root holds a copy to compare with.
    if let Some(&shortest) = all.first() {
        let tag = v6_tag(field, u32::from(shortest));
        let mut at_first = out.iter().filter(|p| p.key & V6_TAG_MASK == tag);
        if let (Some(p), None) = (at_first.next(), at_first.next()) {
            root.shared = 1;
            root.first = V6Slot {
                hi: p.hi,
                lo: p.lo,
                key: p.key,
                rule: p.rule,
            };
        }
    }
    (out, root, listed)
}

/// A field's listed prefixes `(address, length)` with their rule + 1, in
/// address order (shorter first at one address).
type Listed = Vec<((u128, u8), u32)>;

/// Direct blocks (see [`V6_DIRECT`]) take at most one leaf per
/// `DIRECT_DENSITY` addresses of their stride for each listed prefix
/// inside: a /48 with 512 listed /64s gets its 65,536 leaves (384 KiB of
/// buckets), one with 100 does not.
const DIRECT_DENSITY: usize = 128;

/// An entry that may head a direct block: its field, address, length and
/// stride, and the listed prefixes inside it.
struct DirectCandidate {
    field: usize,
    addr: u128,
    len: u8,
    stride: u8,
    inside: usize,
}

/// The entries of `out` (one field's) that may head a direct block: the
/// search goes on after a hit there, every listed prefix inside lies at most [`V6_DIRECT_MAX`] bits deeper, and
/// they are dense enough ([`DIRECT_DENSITY`]).
fn direct_candidates(field: usize, out: &[Placed], listed: &Listed) -> Vec<DirectCandidate> {
    let mut found = Vec::new();
    // An entry where the search ends needs no block.
    for p in out.iter().filter(|p| p.key >> V6_NEXT_SHIFT != V6_NO_NODE) {
        let len = (p.key & 0xff) as u8;
        let addr = (u128::from(p.hi) << 64) | u128::from(p.lo);
        let (mut inside, mut deepest) = (0usize, len);
        for ((_, l), _) in listed_inside(listed, addr, len) {
            if u32::from(*l - len) > V6_DIRECT_MAX {
                inside = 0;
                break;
            }
            inside += 1;
            deepest = deepest.max(*l);
        }
        let stride = deepest - len;
        if inside > 0 && (1usize << stride) <= inside * DIRECT_DENSITY {
            found.push(DirectCandidate {
                field,
                addr,
                len,
                stride,
                inside,
            });
        }
    }
    found
}

/// The listed prefixes strictly inside `addr/len`, in address order.
fn listed_inside(listed: &Listed, addr: u128, len: u8) -> impl Iterator<Item = &((u128, u8), u32)> {
    let last = addr | !trunc(u128::MAX, len);
    let from = listed.partition_point(|(k, _)| k.0 < addr);
    listed[from..]
        .iter()
        .take_while(move |((a, _), _)| *a <= last)
        .filter(move |((_, l), _)| *l > len)
}

/// Buckets of a direct block of `stride` bits.
fn direct_buckets(stride: u8) -> u32 {
    (1u32 << stride).div_ceil(V6_LEAVES_PER_BUCKET)
}

/// The leaves of the direct block of `c`, whose own entry carries
/// `inherited` (the rule + 1 of the longest listed prefix containing it):
/// for each value of the stride's bits, the rule + 1 of the longest listed
/// prefix inside that contains it, else `inherited`.
fn direct_leaves(c: &DirectCandidate, inherited: u32, listed: &Listed) -> Vec<u32> {
    let mut leaves = vec![inherited; 1 << c.stride];
    let mut inside: Vec<&((u128, u8), u32)> = listed_inside(listed, c.addr, c.len).collect();
    // Shorter first, so that longer prefixes overwrite their leaves.
    inside.sort_by_key(|((_, l), _)| *l);
    let (len, stride) = (u32::from(c.len), u32::from(c.stride));
    for ((a, l), rule) in inside {
        let at = v6_leaf_index((a >> 64) as u64, *a as u64, len, stride) as usize;
        let span = 1usize << (len + stride - u32::from(*l));
        leaves[at..at + span].fill(*rule);
    }
    leaves
}

/// 16 leaves as the first bytes of one bucket (the program reads them as
/// the bucket's `u32`s in memory order; hosts and BPF are little-endian).
fn leaves_bucket(leaves: &[u32]) -> V6Bucket {
    let at = |i: usize| leaves.get(i).copied().unwrap_or(0);
    let word = |i: usize| u64::from(at(i)) | (u64::from(at(i + 1)) << 32);
    let mut bucket = V6Bucket::default();
    for (k, slot) in bucket.slots.iter_mut().enumerate() {
        let i = k * 6;
        *slot = V6Slot {
            hi: word(i),
            lo: word(i + 2),
            key: at(i + 4),
            rule: at(i + 5),
        };
    }
    bucket
}

/// Leaf `r` (below 16) of a bucket of leaves: [`leaves_bucket`] undone.
fn bucket_leaf(bucket: &V6Bucket, r: u32) -> u32 {
    let slot = &bucket.slots[r as usize / 6];
    match r % 6 {
        0 => slot.hi as u32,
        1 => (slot.hi >> 32) as u32,
        2 => slot.lo as u32,
        3 => (slot.lo >> 32) as u32,
        4 => slot.key,
        _ => slot.rule,
    }
}

/// Gives direct blocks, densest first, to the candidates of both fields
/// while they fit in `room` buckets past the `count` of the hash table (a
/// block inside another still serves the searches that reach it without
/// passing through the outer one): rewrites each head's entry (and its root's
/// copy) to name its block, and returns the blocks' buckets.
fn add_direct_blocks(
    table: &mut [V6Bucket],
    roots: &mut [V6Root; 2],
    mut candidates: Vec<DirectCandidate>,
    listed: [&Listed; 2],
    count: u32,
    room: u32,
) -> Vec<V6Bucket> {
    candidates.sort_by(|a, b| {
        (b.inside, a.field, a.addr, a.len).cmp(&(a.inside, b.field, b.addr, b.len))
    });
    let mut blocks: Vec<V6Bucket> = Vec::new();
    for c in &candidates {
        let size = direct_buckets(c.stride);
        if blocks.len() as u32 + size > room {
            continue;
        }
        let (hi, lo) = ((c.addr >> 64) as u64, c.addr as u64);
        let tag = v6_tag(c.field as u32, u32::from(c.len));
        let Some(slot) = v6_buckets(hi, lo, tag, count)
            .into_iter()
            .flat_map(|b| {
                table[b as usize]
                    .slots
                    .iter()
                    .enumerate()
                    .map(move |(i, _)| (b, i))
            })
            .find(|&(b, i)| {
                let s = &table[b as usize].slots[i];
                s.key & V6_TAG_MASK == tag && s.hi == hi && s.lo == lo
            })
        else {
            continue;
        };
        let entry = &mut table[slot.0 as usize].slots[slot.1];
        let leaves = direct_leaves(c, entry.rule, listed[c.field]);
        entry.key = tag | ((V6_DIRECT + u32::from(c.stride)) << V6_NEXT_SHIFT);
        entry.rule = blocks.len() as u32;
        let root = &mut roots[c.field];
        let first = &root.first;
        if root.shared != 0 && first.key & V6_TAG_MASK == tag && (first.hi, first.lo) == (hi, lo) {
            root.first = *entry;
        }
        blocks.extend(
            leaves
                .chunks(V6_LEAVES_PER_BUCKET as usize)
                .map(leaves_bucket),
        );
    }
    blocks
}

/// The table of the compiled IPv6 prefixes of both fields, with at most
/// `pool` buckets (the map's); `None` when they do not fit (then they stay
/// in the tries) or there are none.
pub fn build(src6: &[Prefix], dst6: &[Prefix], pool: u32) -> Option<V6Table> {
    build_by(src6, dst6, pool, &|r| r.id + 1)
}

/// [`build`] with the leaf of each rule given by `leaf` (the set's dense
/// rule numbers + 1, as `kernel::dense_refs` gives them).
pub fn build_by(
    src6: &[Prefix],
    dst6: &[Prefix],
    pool: u32,
    leaf: &dyn Fn(&RuleRef) -> u32,
) -> Option<V6Table> {
    build_roomy(src6, dst6, pool, leaf, 0, Direct::Blocks)
}

/// Whether a build adds direct blocks (see [`V6_DIRECT`]): tables that
/// [`super::v6index::V6Index`] changes in place have none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direct {
    /// Direct blocks where the pool has room past the hash table.
    Blocks,
    /// Only the hash table.
    None,
}

/// [`build_by`] into at least `min` buckets (room for adds in place).
pub fn build_roomy(
    src6: &[Prefix],
    dst6: &[Prefix],
    pool: u32,
    leaf: &dyn Fn(&RuleRef) -> u32,
    min: u32,
    direct: Direct,
) -> Option<V6Table> {
    if src6.is_empty() && dst6.is_empty() {
        return None;
    }
    let mut trees = Trees::default();
    let (src, src_root, src_listed) = field_slots(src6, 0, &mut trees, leaf);
    let (dst, dst_root, dst_listed) = field_slots(dst6, 1, &mut trees, leaf);
    if trees.nodes.len() > FW_V6_NODES as usize {
        return None;
    }
    let entries = src.len() + dst.len();
    let pool = pool.min(FW_V6_MAX_BUCKETS);
    let first = buckets_for(entries).max(min.next_multiple_of(16)).min(pool);
    let mut tries = vec![first, first + first / 8, first + first / 4, pool];
    tries.retain(|&n| n <= pool && n as usize * 4 >= entries);
    tries.dedup();
    for count in tries {
        if let Some(mut buckets) = place(&[&src, &dst], count) {
            let mut roots = [src_root, dst_root];
            for root in &mut roots {
                root.buckets = count;
            }
            if direct == Direct::Blocks {
                let mut candidates = direct_candidates(0, &src, &src_listed);
                candidates.extend(direct_candidates(1, &dst, &dst_listed));
                let listed = [&src_listed, &dst_listed];
                let blocks = add_direct_blocks(
                    &mut buckets,
                    &mut roots,
                    candidates,
                    listed,
                    count,
                    pool - count,
                );
                buckets.extend(blocks);
            }
            for root in &mut roots {
                root.copy_nodes(&trees.nodes);
            }
            return Some(V6Table {
                buckets,
                roots,
                nodes: trees.nodes,
                entries,
                made: trees.made,
            });
        }
    }
    None
}

/// Moves of one insertion before the build gives up on a table size.
const MAX_KICKS: usize = 2000;

/// The entries of both fields in `count` buckets, each in one of its
/// two, the first if it has room (cuckoo insertion: an entry that finds both full takes the place of
/// one already there, which moves to its other bucket, and so on); `None`
/// if an insertion still finds no room after [`MAX_KICKS`] moves.
fn place(fields: &[&Vec<Placed>; 2], count: u32) -> Option<Vec<V6Bucket>> {
    let mut table = vec![V6Bucket::default(); count as usize];
    let mut kick = 0usize;
    let free = |t: &[V6Bucket], i: u32| t[i as usize].slots.iter().filter(|s| s.key == 0).count();
    for entries in fields {
        for p in entries.iter() {
            let mut entry = V6Slot {
                hi: p.hi,
                lo: p.lo,
                key: p.key,
                rule: p.rule,
            };
            let [first, second] = v6_buckets(p.hi, p.lo, p.key & V6_TAG_MASK, count);
            // The first bucket while it has room: the program reads it
            // first, so a hit there costs one bucket read, not two.
            let mut at = if free(&table, first) > 0 {
                first
            } else {
                second
            };
            let mut placed = false;
            for _ in 0..MAX_KICKS {
                if let Some(slot) = table[at as usize].slots.iter_mut().find(|s| s.key == 0) {
                    *slot = entry;
                    placed = true;
                    break;
                }
                // Full: evict one (in turn) and send it to its other bucket.
                kick = kick.wrapping_add(1);
                std::mem::swap(&mut table[at as usize].slots[kick % 4], &mut entry);
                let [a, b] = v6_buckets(entry.hi, entry.lo, entry.key & V6_TAG_MASK, count);
                at = if a == at { b } else { a };
            }
            if !placed {
                return None;
            }
        }
    }
    Some(table)
}

impl V6Table {
    /// What the program finds for `addr` in `field` (0 src, 1 dst): rule
    /// id + 1 (0 for none) and the probes it took. The same search as the
    /// kernel's.
    pub fn lookup(&self, field: usize, addr: u128) -> (u32, u32) {
        let root = &self.roots[field];
        let (hi, lo) = ((addr >> 64) as u64, addr as u64);
        let mut best = root.zero;
        let mut node = root.root;
        let mut probes = 0;
        let mut via_first = false;
        // Unbounded here, to count: the tests hold it to V6_MAX_PROBES.
        // The first two nodes from the root's copies, as the program reads them.
        while let Some(n) = match probes {
            _ if node as usize >= self.nodes.len() => None,
            0 => Some(&root.node),
            1 if via_first => Some(&root.next),
            _ => self.nodes.get(node as usize),
        } {
            probes += 1;
            let (mhi, mlo) = (hi & n.mask_hi, lo & n.mask_lo);
            let tag = v6_tag(field as u32, n.len);
            let [first, second] = v6_buckets(mhi, mlo, tag, root.buckets);
            // The second bucket only when the first is full, as the
            // program reads them.
            let full = self.buckets[first as usize].slots[3].key != 0;
            let found = if probes == 1 && root.shared != 0 {
                via_first = true;
                Some(root.first).filter(|s| s.hi == mhi && s.lo == mlo)
            } else {
                std::iter::once(first)
                    .chain(full.then_some(second))
                    .flat_map(|b| self.buckets[b as usize].slots)
                    .find(|s| s.key & V6_TAG_MASK == tag && s.hi == mhi && s.lo == mlo)
            };
            match found {
                Some(slot) => {
                    best = slot.rule;
                    node = slot.key >> V6_NEXT_SHIFT;
                    if node > V6_DIRECT && node <= V6_DIRECT + V6_DIRECT_MAX {
                        let at = v6_leaf_index(hi, lo, n.len, node - V6_DIRECT);
                        let q = root.buckets + slot.rule + at / V6_LEAVES_PER_BUCKET;
                        best = bucket_leaf(&self.buckets[q as usize], at % V6_LEAVES_PER_BUCKET);
                        break;
                    }
                }
                None => node = n.left,
            }
        }
        (best, probes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::test_rng::Rng;
    use xdpkit_common::firewall::V6_MAX_PROBES;

    fn net(addr: u128, len: u8) -> IpNet {
        IpNet::V6(ipnet::Ipv6Net::new(trunc(addr, len).into(), len).unwrap())
    }

    /// The search finds the longest listed prefix of every address, at
    /// every mix of lengths: against a scan of the prefixes.
    #[test]
    fn the_search_finds_the_longest_listed_prefix() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let (mut most, mut shared) = (0, 0);
        for round in 0..400 {
            let base = (u128::from(rng.next()) << 64) | u128::from(rng.next());
            let lens: Vec<u8> = match round % 4 {
                0 => (0..=128).collect(),
                1 => (0..6).map(|_| (rng.next() % 129) as u8).collect(),
                2 => (32..=64).collect(),
                // All in one /40 (the flips below stay under it): the root
                // holds the one entry of the first length.
                _ => (40..=64).collect(),
            };
            let flip_bits = if round % 4 == 3 { 88 } else { 128 };
            let mut prefixes: Vec<Prefix> = Vec::new();
            for i in 0..40 {
                let len = lens[(rng.next() as usize) % lens.len()];
                // Near the base: nested and neighbouring prefixes.
                let flip = if i % 2 == 0 {
                    0
                } else {
                    1u128 << (rng.next() % flip_bits)
                };
                let rule = RuleRef {
                    id: i,
                    ..RuleRef::default()
                };
                prefixes.push((net(base ^ flip, len), rule));
            }
            prefixes.sort_by_key(|(n, _)| *n);
            prefixes.dedup_by_key(|(n, _)| *n);
            let table = build(&prefixes, &[], FW_V6_MAX_BUCKETS).unwrap();
            shared += table.roots[0].shared;
            let mut addrs = vec![base];
            for (n, _) in &prefixes {
                let IpNet::V6(n) = n else { unreachable!() };
                let (first, last) = (u128::from(n.network()), u128::from(n.broadcast()));
                addrs.extend([first, last, first.wrapping_sub(1), last.wrapping_add(1)]);
            }
            for bit in 0..128 {
                addrs.push(base ^ (1 << bit));
            }
            for addr in addrs {
                let want = prefixes
                    .iter()
                    .filter(|(n, _)| {
                        n.contains(&IpNet::V6(ipnet::Ipv6Net::from(std::net::Ipv6Addr::from(
                            addr,
                        ))))
                    })
                    .max_by_key(|(n, _)| n.prefix_len())
                    .map_or(0, |(_, r)| r.id + 1);
                let (found, probes) = table.lookup(0, addr);
                assert_eq!(found, want, "round {round} addr {addr:x}");
                assert!(probes <= V6_MAX_PROBES, "{probes} probes");
                most = most.max(probes);
                assert_eq!(table.lookup(1, addr).0, 0);
            }
        }
        assert!(most > 1);
        assert!(shared >= 100, "{shared} rounds with a shared first entry");
    }

    /// A /48 under a listed /32 with most of its first 1,024 /64s listed
    /// (the floods of `cargo xtask bench firewall`): the search after the
    /// /32 probes /56 markers, which then head direct blocks of 256 leaves,
    /// so it ends after two probes; every address inside and beside finds
    /// what a table without blocks finds, an unlisted /64 the /48's rule.
    /// With no room past the hash table, no block.
    #[test]
    fn dense_64s_end_in_direct_blocks() {
        let base: u128 = 0x2001_0db8_0062 << 80;
        let mut prefixes: Vec<Prefix> = Vec::new();
        let mut push = |addr: u128, len: u8| {
            let rule = RuleRef {
                id: prefixes.len() as u32,
                ..RuleRef::default()
            };
            prefixes.push((net(addr, len), rule));
        };
        push(0x2001_0db8 << 96, 32);
        push(base, 48);
        for i in (0..1024u128).filter(|i| i % 7 != 0) {
            push(base | (i << 64), 64);
        }
        // Sparse: a /56 with one /64 inside gets no block.
        push(base | (0x0700 << 64), 56);
        push(base | (0x0750 << 64), 64);
        let plain = build_roomy(&prefixes, &[], 1 << 14, &|r| r.id + 1, 0, Direct::None).unwrap();
        let table = build(&prefixes, &[], 1 << 14).unwrap();
        let count = table.roots[0].buckets;
        assert_eq!(plain.buckets.len() as u32, count);
        assert_eq!(
            table.buckets.len() as u32,
            count + 4 * 256 / V6_LEAVES_PER_BUCKET
        );
        let mut heads: Vec<(u64, u32, u32)> = table.buckets[..count as usize]
            .iter()
            .flat_map(|b| b.slots)
            .map(|s| (s.hi, s.key & 0xff, s.key >> V6_NEXT_SHIFT))
            .filter(|&(_, _, next)| next > V6_DIRECT && next != V6_NO_NODE)
            .collect();
        heads.sort_unstable();
        let want: Vec<(u64, u32, u32)> = (0..4u64)
            .map(|i| (((base >> 64) as u64) | (i << 8), 56, V6_DIRECT + 8))
            .collect();
        assert_eq!(heads, want);
        let mut rng = Rng(0x5eed);
        let mut addrs: Vec<u128> = (0..1100u128).map(|i| base | (i << 64) | 1).collect();
        addrs.extend((0..2000).map(|_| base | u128::from(rng.next())));
        addrs.extend((0..2000).map(|_| base | (u128::from(rng.next()) << 64)));
        addrs.extend([
            base - 1,
            base | (u128::MAX >> 48),
            (base | (u128::MAX >> 48)) + 1,
        ]);
        for addr in addrs {
            let (want, _) = plain.lookup(0, addr);
            let (found, probes) = table.lookup(0, addr);
            assert_eq!(found, want, "addr {addr:x}");
            if (addr >> 64) as u64 & 0xffff < 1024 && addr >> 80 == base >> 80 {
                assert!(found > 0 && probes == 2, "addr {addr:x}: {probes} probes");
            }
        }
        assert_eq!(table.lookup(0, base | (7 << 64)).0, 2, "the /48's rule");
        // Rule 8: the /32, the /48, then /64s 1 to 6 and 8.
        assert_eq!(table.lookup(0, base | (8 << 64) | 9).0, 8 + 1);
        let tight = build(&prefixes, &[], count).unwrap();
        assert_eq!(tight.buckets.len() as u32, count);
    }

    /// Every length /1../128 listed along one address and beside it: the
    /// longest searches still take at most eight probes.
    #[test]
    fn every_length_takes_at_most_eight_probes() {
        let mut rng = Rng(0x0bad_cafe_dead_beef);
        for _ in 0..20 {
            let base = (u128::from(rng.next()) << 64) | u128::from(rng.next());
            let mut prefixes: Vec<Prefix> = Vec::new();
            for len in 0..=128u8 {
                let rule = RuleRef {
                    id: u32::from(len),
                    ..RuleRef::default()
                };
                prefixes.push((net(base, len), rule));
                if len > 0 {
                    let beside = base ^ (1u128 << (128 - u32::from(len)));
                    let rule = RuleRef {
                        id: 1000 + u32::from(len),
                        ..RuleRef::default()
                    };
                    prefixes.push((net(beside, len), rule));
                }
            }
            let table = build(&prefixes, &[], FW_V6_MAX_BUCKETS).unwrap();
            for len in 0..=128u32 {
                let addr = if len == 128 {
                    base
                } else {
                    base ^ (1u128 << len)
                };
                let (_, probes) = table.lookup(0, addr);
                assert!(probes <= V6_MAX_PROBES, "{probes} probes");
            }
        }
    }

    #[test]
    fn tables_are_sized_to_their_entries() {
        assert_eq!(buckets_for(0), FW_V6_MIN_BUCKETS);
        assert_eq!(buckets_for(200), 64);
        assert_eq!(buckets_for(300_000), 83_344);
        assert_eq!(pool_for(300_000), 104_176);
        let prefixes: Vec<Prefix> = (0..100_000u128)
            .map(|i| {
                let rule = RuleRef {
                    id: i as u32,
                    ..RuleRef::default()
                };
                (net((0x2001_0db8u128 << 96) | (i << 64), 64), rule)
            })
            .collect();
        let table = build(&prefixes, &[], FW_V6_MAX_BUCKETS).unwrap();
        assert_eq!(table.entries, 100_000);
        assert_eq!(table.buckets.len() as u32, buckets_for(100_000));
        // 90% full, most entries still sit in their first bucket (a hit
        // there is one bucket read).
        let count = table.buckets.len() as u32;
        let first = table
            .buckets
            .iter()
            .enumerate()
            .flat_map(|(i, b)| b.slots.iter().map(move |s| (i as u32, s)))
            .filter(|(i, s)| {
                s.key != 0 && v6_buckets(s.hi, s.lo, s.key & V6_TAG_MASK, count)[0] == *i
            })
            .count();
        println!("{first} of 100000 entries in their first bucket");
        assert!(first >= 70_000, "{first}");
    }
}
