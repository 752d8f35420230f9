//! IPv6 prefix tables (see docs/firewall.md, "IPv6 prefix rules"): binary
//! search on prefix lengths (Waldvogel et al.) over hash tables in array
//! maps, so the program reads at most [`V6_MAX_PROBES`] x 2 buckets, the
//! lengths and the rule, with no helper call and no pointer walk.
//!
//! Per field, the distinct lengths above /0 are sorted; a lookup is a
//! binary search over them (`mid = (low + high - 1) / 2` on the half-open
//! range `[low, high)`): it probes the address masked to `lens[mid]`; a hit
//! sends it to longer lengths, a miss to shorter ones. So that a hit is
//! never missed, every prefix leaves a *marker* (its address masked to the
//! probed length) at each length where the search for it goes longer. Each
//! entry, prefix or marker, carries the best rule of the longest listed
//! prefix containing it (a prefix's own compiled value: the inherited best
//! rule), so the last hit of a search is the answer.

use foldhash::{HashMap, HashSet};
use ipnet::IpNet;
use xdpkit_common::firewall::{
    v6_buckets, v6_mask, v6_tag, RuleRef, V6Bucket, V6Lengths, V6Node, V6Slot, FW_V6_MAX_BUCKETS,
    FW_V6_MIN_BUCKETS, V6_BITS, V6_MAX_PROBES, V6_NO_NODE,
};

/// A compiled prefix and its (inherited) rule.
type Prefix = (IpNet, RuleRef);

/// An IPv6 table: the buckets in use and the tree of lengths of each field.
#[derive(Clone, Debug)]
pub struct V6Table {
    /// `1 << bits` buckets.
    pub buckets: Vec<V6Bucket>,
    /// log2 of the buckets.
    pub bits: u32,
    /// Field 0 (src) and 1 (dst).
    pub lens: [V6Lengths; 2],
    /// Entries (prefixes and markers) in the buckets.
    pub entries: usize,
}

/// `addr` masked to `len` bits.
fn trunc(addr: u128, len: u8) -> u128 {
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

/// The distinct lengths above /0 of `prefixes`, ascending.
fn lengths<'a>(prefixes: impl IntoIterator<Item = &'a (u128, u8)>) -> Vec<u8> {
    let mut lens: Vec<u8> = prefixes
        .into_iter()
        .map(|(_, len)| *len)
        .filter(|len| *len > 0)
        .collect();
    lens.sort_unstable();
    lens.dedup();
    lens
}

/// The tree of the binary search on `lens` (ascending, at most 128):
/// nodes in preorder, the midpoint `(low + high - 1) / 2` of each range.
fn tree(lens: &[u8]) -> V6Lengths {
    fn node(lens: &[u8], low: usize, high: usize, t: &mut V6Lengths, next: &mut u32) -> u32 {
        if low >= high {
            return V6_NO_NODE;
        }
        let mid = (low + high - 1) / 2;
        let at = *next;
        *next += 1;
        let len = u32::from(lens[mid]);
        let (mask_hi, mask_lo) = v6_mask(u64::MAX, u64::MAX, len);
        let left = node(lens, low, mid, t, next);
        let right = node(lens, mid + 1, high, t, next);
        t.nodes[at as usize] = V6Node {
            len,
            left,
            right,
            _pad: 0,
            mask_hi,
            mask_lo,
        };
        at
    }
    let mut t = V6Lengths::default();
    let mut next = 0;
    t.root = node(
        &lens[..lens.len().min(128)],
        0,
        lens.len().min(128),
        &mut t,
        &mut next,
    );
    t
}

/// Calls `marker` with the (length, masked address) of every marker the
/// search for `addr/len` needs: the lengths where it goes longer.
fn path_markers(tree: &V6Lengths, addr: u128, len: u8, mut marker: impl FnMut(u8, u128)) {
    let mut node = tree.root;
    while node != V6_NO_NODE {
        let n = &tree.nodes[node as usize];
        let at = n.len as u8;
        if at == len {
            return;
        }
        if at < len {
            marker(at, trunc(addr, at));
            node = n.right;
        } else {
            node = n.left;
        }
    }
}

/// The markers of a field's prefixes that are not prefixes themselves.
fn markers(tree: &V6Lengths, reals: &HashSet<(u128, u8)>) -> HashSet<(u128, u8)> {
    let mut out = HashSet::default();
    for &(addr, len) in reals {
        if len == 0 {
            continue;
        }
        path_markers(tree, addr, len, |l, a| {
            if !reals.contains(&(a, l)) {
                out.insert((a, l));
            }
        });
    }
    out
}

/// Table entries (prefixes and markers, /0 aside) of the IPv6 prefix rules
/// among `rules`: what the table must hold.
pub fn entries_needed<'r>(rules: impl IntoIterator<Item = &'r super::Rule>) -> usize {
    let mut fields: [HashSet<(u128, u8)>; 2] = Default::default();
    for rule in rules {
        if let Some((field @ 2..=3, net)) = super::kernel::prefix_field(rule) {
            if let Some(key) = key_of(&net) {
                fields[field - 2].insert(key);
            }
        }
    }
    fields
        .iter()
        .map(|reals| {
            let tree = tree(&lengths(reals));
            let prefixes = reals.iter().filter(|(_, len)| *len > 0).count();
            prefixes + markers(&tree, reals).len()
        })
        .sum()
}

/// Buckets a table of `entries` entries gets: at least a third as many as
/// entries (three quarters full at most, where two choices of four-entry
/// buckets place every entry), a power of two.
pub fn buckets_for(entries: usize) -> u32 {
    let wanted = (entries / 3).max(1).min(FW_V6_MAX_BUCKETS as usize) as u32;
    wanted
        .next_power_of_two()
        .clamp(FW_V6_MIN_BUCKETS, FW_V6_MAX_BUCKETS)
}

/// One field's entries, `(masked address, length, rule id + 1)`, and its
/// tree of lengths (without `bits`).
fn field_entries(prefixes: &[Prefix]) -> (Vec<(u128, u8, u32)>, V6Lengths) {
    let mut reals: HashMap<(u128, u8), u32> = HashMap::default();
    for (net, rule) in prefixes {
        if let Some(key) = key_of(net) {
            reals.insert(key, rule.id + 1);
        }
    }
    let keys: HashSet<(u128, u8)> = reals.keys().copied().collect();
    let mut tree = tree(&lengths(&keys));
    tree.zero = reals.get(&(0, 0)).copied().unwrap_or(0);
    // Address order (shorter first at one address): each entry comes after
    // the prefixes containing it, and those still open form a chain whose
    // top is the longest listed prefix containing a marker.
    let mut all: Vec<(u128, u8, Option<u32>)> = reals
        .iter()
        .map(|(&(addr, len), &rule)| (addr, len, Some(rule)))
        .collect();
    all.extend(markers(&tree, &keys).into_iter().map(|(a, l)| (a, l, None)));
    all.sort_unstable_by_key(|&(addr, len, _)| (addr, len));
    let mut chain: Vec<(u128, u8, u32)> = Vec::new();
    let mut out = Vec::with_capacity(all.len());
    for (addr, len, rule) in all {
        while chain
            .last()
            .is_some_and(|&(a, l, _)| l > len || trunc(addr, l) != a)
        {
            chain.pop();
        }
        let value = match rule {
            Some(r) => {
                chain.push((addr, len, r));
                r
            }
            None => chain.last().map_or(0, |&(_, _, r)| r),
        };
        if len > 0 {
            out.push((addr, len, value));
        }
    }
    (out, tree)
}

/// The table of the compiled IPv6 prefixes of both fields, with at most
/// `1 << max_bits` buckets; `None` when they do not fit (then they stay
/// in the tries) or there are none.
pub fn build(src6: &[Prefix], dst6: &[Prefix], max_bits: u32) -> Option<V6Table> {
    if src6.is_empty() && dst6.is_empty() {
        return None;
    }
    let (src, src_tree) = field_entries(src6);
    let (dst, dst_tree) = field_entries(dst6);
    let entries = src.len() + dst.len();
    let mut bits = buckets_for(entries).trailing_zeros();
    while bits <= max_bits.min(V6_BITS.1) {
        if let Some(buckets) = place(&[&src, &dst], bits) {
            let mut lens = [src_tree, dst_tree];
            for tree in &mut lens {
                tree.bits = bits;
            }
            return Some(V6Table {
                buckets,
                bits,
                lens,
                entries,
            });
        }
        bits += 1;
    }
    None
}

/// The entries of both fields in `1 << bits` buckets, each in the emptier
/// of its two; `None` if one finds both full.
fn place(fields: &[&Vec<(u128, u8, u32)>; 2], bits: u32) -> Option<Vec<V6Bucket>> {
    let mut table = vec![V6Bucket::default(); 1 << bits];
    for (field, entries) in fields.iter().enumerate() {
        for &(addr, len, rule) in entries.iter() {
            let (hi, lo) = ((addr >> 64) as u64, addr as u64);
            let tag = v6_tag(field as u32, u32::from(len));
            let [first, second] = v6_buckets(hi, lo, tag, bits);
            let used = |i: u32| {
                table[i as usize]
                    .slots
                    .iter()
                    .filter(|s| s.tag != 0)
                    .count()
            };
            let pick = if used(second) < used(first) {
                second
            } else {
                first
            };
            let slot = table[pick as usize].slots.iter_mut().find(|s| s.tag == 0)?;
            *slot = V6Slot { hi, lo, tag, rule };
        }
    }
    Some(table)
}

impl V6Table {
    /// What the program finds for `addr` in `field` (0 src, 1 dst): rule
    /// id + 1, 0 for none. The same search as the kernel's.
    pub fn lookup(&self, field: usize, addr: u128) -> u32 {
        let tree = &self.lens[field];
        let (hi, lo) = ((addr >> 64) as u64, addr as u64);
        let mut best = tree.zero;
        let mut node = tree.root;
        for _ in 0..V6_MAX_PROBES {
            if node >= 128 {
                break;
            }
            let n = &tree.nodes[node as usize];
            let (mhi, mlo) = (hi & n.mask_hi, lo & n.mask_lo);
            let tag = v6_tag(field as u32, n.len);
            let found = v6_buckets(mhi, mlo, tag, self.bits)
                .iter()
                .flat_map(|b| self.buckets[*b as usize].slots)
                .find(|s| s.tag == tag && s.hi == mhi && s.lo == mlo);
            match found {
                Some(slot) => {
                    best = slot.rule;
                    node = n.right;
                }
                None => node = n.left,
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift64*).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    fn net(addr: u128, len: u8) -> IpNet {
        IpNet::V6(ipnet::Ipv6Net::new(trunc(addr, len).into(), len).unwrap())
    }

    /// The search finds the longest listed prefix of every address, at
    /// every mix of lengths: against a scan of the prefixes.
    #[test]
    fn the_search_finds_the_longest_listed_prefix() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        for round in 0..300 {
            let base = (u128::from(rng.next()) << 64) | u128::from(rng.next());
            let lens: Vec<u8> = match round % 3 {
                0 => (0..=128).collect(),
                1 => (0..6).map(|_| (rng.next() % 129) as u8).collect(),
                _ => (32..=64).collect(),
            };
            let mut prefixes: Vec<Prefix> = Vec::new();
            for i in 0..40 {
                let len = lens[(rng.next() as usize) % lens.len()];
                // Near the base: nested and neighbouring prefixes.
                let flip = if i % 2 == 0 {
                    0
                } else {
                    1u128 << (rng.next() % 128)
                };
                let rule = RuleRef {
                    id: i,
                    ..RuleRef::default()
                };
                prefixes.push((net(base ^ flip, len), rule));
            }
            prefixes.sort_by_key(|(n, _)| *n);
            prefixes.dedup_by_key(|(n, _)| *n);
            let table = build(&prefixes, &[], V6_BITS.1).unwrap();
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
                assert_eq!(table.lookup(0, addr), want, "round {round} addr {addr:x}");
                assert_eq!(table.lookup(1, addr), 0);
            }
        }
    }

    #[test]
    fn the_tree_of_lengths_is_at_most_eight_deep() {
        fn depth(t: &V6Lengths, node: u32) -> u32 {
            if node == V6_NO_NODE {
                return 0;
            }
            let n = &t.nodes[node as usize];
            1 + depth(t, n.left).max(depth(t, n.right))
        }
        for count in 0..=128u8 {
            let lens: Vec<u8> = (1..=count).collect();
            let t = tree(&lens);
            assert!(depth(&t, t.root) <= V6_MAX_PROBES, "{count} lengths");
        }
    }

    #[test]
    fn tables_are_sized_to_their_entries() {
        assert_eq!(buckets_for(0), FW_V6_MIN_BUCKETS);
        assert_eq!(buckets_for(300_000), 1 << 17);
        let prefixes: Vec<Prefix> = (0..100_000u128)
            .map(|i| {
                let rule = RuleRef {
                    id: i as u32,
                    ..RuleRef::default()
                };
                (net((0x2001_0db8u128 << 96) | (i << 64), 64), rule)
            })
            .collect();
        let table = build(&prefixes, &[], V6_BITS.1).unwrap();
        assert_eq!(table.entries, 100_000);
        assert_eq!(table.bits, buckets_for(100_000).trailing_zeros());
    }
}
