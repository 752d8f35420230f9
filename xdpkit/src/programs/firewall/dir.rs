//! IPv4 prefix rules in DIR-16-8-8 tables (see docs/firewall.md): a first
//! level of 65,536 slots per field indexed by the top 16 address bits, and
//! 256-slot chunks for the next 8 bits and the last 8. A slot holds the best
//! rule of every address it covers (rule id + 1), or a chunk index. The
//! packet path reads at most three slots and one [`RuleRef`].
//!
//! [`Dir4`] is the table of one set; [`Dir4Index`] keeps it with the rules
//! per prefix so that adding or deleting one rule rewrites only the slots it
//! covers ([`Dir4Index::add`], [`Dir4Index::delete`]).

use foldhash::{HashMap, HashSet};

use ipnet::{IpNet, Ipv4Net};
use xdpkit_common::firewall::{
    DirChunk, DirSlot, RuleRef, DIR4_L1_SLOTS, DIR_CHUNK, DIR_TRIE, FW_DIR4_CHUNKS, FW_DIR4_L1,
    FW_DIR4_MAX_CHUNKS, FW_DIR4_REFS,
};

use std::os::fd::BorrowedFd;

use aya::maps::{Array, MapData};

use crate::maps::map_err;
use crate::maps::{batch, MapSource};
use crate::{object, sys, Result};

/// The chunk pool is full: the set keeps its prefixes in the tries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolFull;

/// The DIR-16-8-8 table of one set, both fields (0 src, 1 dst).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dir4 {
    /// First level: `field << 16 | addr >> 16`.
    pub l1: Vec<DirSlot>,
    /// Chunks in use, by index.
    pub chunks: Vec<DirChunk>,
}

/// A [`Dir4`] built within a pool ([`Dir4::build_within`]) and, per field,
/// the prefixes it leaves to the trie.
#[derive(Clone, Debug, Default)]
pub struct Dir4Spill {
    /// The table.
    pub table: Dir4,
    /// Per field (0 src, 1 dst): prefixes for the trie, with their rules.
    pub spill: [Vec<(Ipv4Net, RuleRef)>; 2],
}

impl Default for Dir4 {
    fn default() -> Dir4 {
        Dir4 {
            l1: vec![0; 2 * DIR4_L1_SLOTS as usize],
            chunks: Vec::new(),
        }
    }
}

/// The slot value of a rule in a table numbered by rule id ([`Dir4`],
/// [`Dir4Index`]); the maps' tables hold a dense number + 1 instead
/// ([`Dir4::build_within_by`], [`MapSlots`]).
pub fn leaf(rule: &RuleRef) -> DirSlot {
    rule.id + 1
}

/// A slot of a [`Dir4`]: first level or a chunk's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum At {
    L1(usize),
    Chunk(usize, usize),
}

impl Dir4 {
    /// The table of compiled prefixes (`compile()`'s inherited best rules),
    /// or [`PoolFull`] if it needs more chunks than a set has.
    pub fn build(src: &[(Ipv4Net, RuleRef)], dst: &[(Ipv4Net, RuleRef)]) -> Result<Dir4, PoolFull> {
        let built = Dir4::build_within(src, dst, FW_DIR4_MAX_CHUNKS as usize)?;
        if built.spill.iter().any(|s| !s.is_empty()) {
            return Err(PoolFull);
        }
        Ok(built.table)
    }

    /// The table of compiled prefixes in at most `pool` chunks. A /24 whose
    /// longer prefixes find no room for their chunk is left to the set's
    /// trie: its slot says [`DIR_TRIE`], and [`Dir4Spill::spill`] holds its
    /// longer prefixes and the /24 itself with the best rule of the shorter
    /// ones (a trie lookup then answers for every address in it).
    /// [`PoolFull`] when a prefix of /17-/24 finds no room for its chunk.
    pub fn build_within(
        src: &[(Ipv4Net, RuleRef)],
        dst: &[(Ipv4Net, RuleRef)],
        pool: usize,
    ) -> Result<Dir4Spill, PoolFull> {
        Dir4::build_within_by(src, dst, pool, &leaf)
    }

    /// [`Dir4::build_within`] with the slot value of each rule given by
    /// `leaf` (one value per rule id, nonzero, below [`DIR_TRIE`]): the
    /// dense numbers of [`FW_DIR4_REFS`] + 1 for the maps.
    pub fn build_within_by(
        src: &[(Ipv4Net, RuleRef)],
        dst: &[(Ipv4Net, RuleRef)],
        pool: usize,
        leaf: &impl Fn(&RuleRef) -> DirSlot,
    ) -> Result<Dir4Spill, PoolFull> {
        let mut dir = Dir4::default();
        let mut spill: [Vec<(Ipv4Net, RuleRef)>; 2] = [Vec::new(), Vec::new()];
        // Second-level chunks first, for both fields: a /16 whose only
        // longer prefix is a /28 must not find the pool taken by the
        // third-level chunks of others (that would send every IPv4 prefix
        // to the tries, where spilling its /24 suffices).
        for (field, entries) in [src, dst].into_iter().enumerate() {
            for (net, _) in entries.iter().filter(|(n, _)| n.prefix_len() > 16) {
                let l1 = At::L1((field << 16) | (u32::from(net.network()) >> 16) as usize);
                if dir.get(l1) & DIR_CHUNK == 0 {
                    if dir.chunks.len() >= pool {
                        return Err(PoolFull);
                    }
                    dir.chunk_below(l1, &mut |_| {})?;
                }
            }
        }
        // Then third-level chunks, the /24s holding the most longer
        // prefixes first: when the pool cannot hold them all, a /24 of
        // many listed hosts keeps its chunk and a lone /28's /24 goes to
        // the trie, not the other way round.
        let mut per24: HashMap<(usize, u32), u32> = HashMap::default();
        for (field, entries) in [src, dst].into_iter().enumerate() {
            for (net, _) in entries.iter().filter(|(n, _)| n.prefix_len() > 24) {
                *per24
                    .entry((field, u32::from(net.network()) >> 8))
                    .or_default() += 1;
            }
        }
        let mut busiest: Vec<((usize, u32), u32)> = per24.into_iter().collect();
        busiest.sort_unstable_by_key(|&(at, n)| (std::cmp::Reverse(n), at));
        for ((field, p24), _) in busiest {
            if dir.chunks.len() >= pool {
                break;
            }
            let c2 = dir.chunk_below(At::L1((field << 16) | (p24 >> 8) as usize), &mut |_| {})?;
            dir.chunk_below(At::Chunk(c2, (p24 & 0xff) as usize), &mut |_| {})?;
        }
        for (field, entries) in [src, dst].into_iter().enumerate() {
            let by_leaf: HashMap<DirSlot, RuleRef> =
                entries.iter().map(|(_, r)| (leaf(r), *r)).collect();
            let mut sorted: Vec<&(Ipv4Net, RuleRef)> = entries.iter().collect();
            sorted.sort_by_key(|(n, _)| n.prefix_len());
            // Shorter first: a longer prefix overwrites its part of the range.
            for (net, rule) in sorted {
                let addr = u32::from(net.network());
                let l1 = At::L1((field << 16) | (addr >> 16) as usize);
                if net.prefix_len() > 24 {
                    let c2 = dir.chunk_below(l1, &mut |_| {})?;
                    let mid = At::Chunk(c2, ((addr >> 8) & 0xff) as usize);
                    let v = dir.get(mid);
                    if v == DIR_TRIE {
                        spill[field].push((*net, *rule));
                        continue;
                    }
                    if v & DIR_CHUNK == 0 && dir.chunks.len() >= pool {
                        if let Some(r) = by_leaf.get(&v) {
                            let p24 =
                                Ipv4Net::new((addr & 0xffff_ff00).into(), 24).expect("24 <= 32");
                            spill[field].push((
                                p24,
                                RuleRef {
                                    prefix_len: 24,
                                    ..*r
                                },
                            ));
                        }
                        dir.set(mid, DIR_TRIE);
                        spill[field].push((*net, *rule));
                        continue;
                    }
                }
                dir.cover(field, *net, &mut |_, _| Some(leaf(rule)), &mut |_| {})?;
            }
        }
        Ok(Dir4Spill { table: dir, spill })
    }

    /// The slot holding `addr` of `field`, after chunks.
    pub fn lookup(&self, field: usize, addr: u32) -> DirSlot {
        let mut slot = self.l1[(field << 16) | (addr >> 16) as usize];
        for shift in [8, 0] {
            if slot & DIR_CHUNK == 0 {
                break;
            }
            slot =
                self.chunks[(slot & !DIR_CHUNK) as usize].slots[((addr >> shift) & 0xff) as usize];
        }
        slot
    }

    /// The table as runs `(field, first address, leaf)`, each run starting
    /// where the leaf changes: equal for equal lookups, whatever the chunks.
    pub fn runs(&self) -> Vec<(usize, u32, DirSlot)> {
        let mut out: Vec<(usize, u32, DirSlot)> = Vec::new();
        for field in 0..2 {
            for top in 0..DIR4_L1_SLOTS as usize {
                self.runs_of(
                    field,
                    self.l1[(field << 16) | top],
                    (top as u32) << 16,
                    16,
                    &mut out,
                );
            }
        }
        out
    }

    fn runs_of(
        &self,
        field: usize,
        v: DirSlot,
        addr: u32,
        len: u8,
        out: &mut Vec<(usize, u32, DirSlot)>,
    ) {
        if v & DIR_CHUNK != 0 {
            let chunk = &self.chunks[(v & !DIR_CHUNK) as usize];
            let shift = 32 - (len + 8);
            for (i, s) in chunk.slots.iter().enumerate() {
                self.runs_of(field, *s, addr | ((i as u32) << shift), len + 8, out);
            }
            return;
        }
        match out.last() {
            Some(&(f, _, last)) if f == field && last == v => {}
            _ => out.push((field, addr, v)),
        }
    }
}

/// Slots of a DIR table: in memory ([`Dir4`]) or in a set's maps
/// ([`MapSlots`]). The table walks are written once, here.
trait Slots {
    fn get(&mut self, at: At) -> DirSlot;
    fn set(&mut self, at: At, v: DirSlot);
    /// A new chunk with every slot `fill`.
    fn push_chunk(&mut self, fill: DirSlot) -> Result<usize, PoolFull>;

    /// The chunk below slot `at`, made (a copy of its leaf) if needed.
    fn chunk_below(&mut self, at: At, touched: &mut impl FnMut(At)) -> Result<usize, PoolFull> {
        let v = self.get(at);
        if v & DIR_CHUNK != 0 {
            return Ok((v & !DIR_CHUNK) as usize);
        }
        let c = self.push_chunk(v)?;
        touched(At::Chunk(c, 0));
        self.set(at, DIR_CHUNK | c as u32);
        touched(at);
        Ok(c)
    }

    /// Calls `f(leaf, covered prefix length)` on every leaf slot inside
    /// `net` (descending into chunks), and stores what it returns.
    /// Makes chunks where `net` is longer than a slot.
    fn cover(
        &mut self,
        field: usize,
        net: Ipv4Net,
        f: &mut impl FnMut(DirSlot, (u32, u8)) -> Option<DirSlot>,
        touched: &mut impl FnMut(At),
    ) -> Result<(), PoolFull> {
        let addr = u32::from(net.network());
        let len = net.prefix_len();
        let base = field << 16;
        let top = (addr >> 16) as usize;
        if len <= 16 {
            let n = 1usize << (16 - len);
            for i in top..top + n {
                self.cover_slot(At::L1(base + i), ((i as u32) << 16, 16), f, touched);
            }
            return Ok(());
        }
        let c2 = self.chunk_below(At::L1(base + top), touched)?;
        let mid = ((addr >> 8) & 0xff) as usize;
        if len <= 24 {
            let n = 1usize << (24 - len);
            for i in mid..mid + n {
                let a = (addr & 0xffff_0000) | ((i as u32) << 8);
                self.cover_slot(At::Chunk(c2, i), (a, 24), f, touched);
            }
            return Ok(());
        }
        let c3 = self.chunk_below(At::Chunk(c2, mid), touched)?;
        let low = (addr & 0xff) as usize;
        let n = 1usize << (32 - len);
        for i in low..low + n {
            let a = (addr & 0xffff_ff00) | i as u32;
            self.cover_slot(At::Chunk(c3, i), (a, 32), f, touched);
        }
        Ok(())
    }

    fn cover_slot(
        &mut self,
        at: At,
        range: (u32, u8),
        f: &mut impl FnMut(DirSlot, (u32, u8)) -> Option<DirSlot>,
        touched: &mut impl FnMut(At),
    ) {
        let v = self.get(at);
        if v & DIR_CHUNK == 0 {
            self.cover_leaf(at, v, range, f, touched);
            return;
        }
        let c = (v & !DIR_CHUNK) as usize;
        let (addr, len) = range;
        let shift = 32 - (len + 8);
        // The leaves of a chunk in this loop, not a call each: a /8 has
        // 65,536 of them.
        for i in 0..256usize {
            let at = At::Chunk(c, i);
            let range = (addr | ((i as u32) << shift), len + 8);
            let v = self.get(at);
            if v & DIR_CHUNK == 0 {
                self.cover_leaf(at, v, range, f, touched);
            } else {
                self.cover_slot(at, range, f, touched);
            }
        }
    }

    #[inline]
    fn cover_leaf(
        &mut self,
        at: At,
        v: DirSlot,
        range: (u32, u8),
        f: &mut impl FnMut(DirSlot, (u32, u8)) -> Option<DirSlot>,
        touched: &mut impl FnMut(At),
    ) {
        if let Some(new) = f(v, range) {
            if new != v {
                self.set(at, new);
                touched(at);
            }
        }
    }
}

impl Slots for Dir4 {
    fn get(&mut self, at: At) -> DirSlot {
        match at {
            At::L1(i) => self.l1[i],
            At::Chunk(c, i) => self.chunks[c].slots[i],
        }
    }

    fn set(&mut self, at: At, v: DirSlot) {
        match at {
            At::L1(i) => self.l1[i] = v,
            At::Chunk(c, i) => self.chunks[c].slots[i] = v,
        }
    }

    fn push_chunk(&mut self, fill: DirSlot) -> Result<usize, PoolFull> {
        if self.chunks.len() >= FW_DIR4_MAX_CHUNKS as usize {
            return Err(PoolFull);
        }
        self.chunks.push(DirChunk { slots: [fill; 256] });
        Ok(self.chunks.len() - 1)
    }
}

/// A [`Dir4`] with the rules of every prefix: adds and deletes one rule by
/// rewriting only the slots it covers, and records them for [`write_changes`].
#[derive(Clone, Debug, Default)]
pub struct Dir4Index {
    /// The table.
    pub table: Dir4,
    /// Rules by id.
    refs: HashMap<u32, RuleRef>,
    /// Every rule on every prefix, listed by [`block`]: the prefixes
    /// containing one and those inside it are in a few lists, each list of
    /// at most 511 prefixes (a /8 finds its 4,000 /24s in 256 of them).
    prefixes: HashMap<(usize, u32, u8), Vec<(Ipv4Net, RuleRef)>>,
    /// Per first-level slot, at most the best rank of the rules on the
    /// prefixes longer than /16 below it: an add better than that reads
    /// none of their lists. A delete leaves it (finding the next best
    /// would read them all); a read of them all renews it.
    lowest: Lowest,
    /// Slots changed since the last [`Dir4Index::take_changes`].
    changed: Changed,
    /// Rules added since then.
    added: Vec<RuleRef>,
}

/// The rules around a prefix ([`Dir4Index::around`]).
struct Around {
    net: Ipv4Net,
    /// The best on the prefixes containing it.
    base: Option<RuleRef>,
    /// Those on the prefixes inside it: of /16 and shorter first, then
    /// those below each first-level slot.
    inside: Vec<(Ipv4Net, RuleRef)>,
    /// Where the first end in `inside`.
    wide: usize,
    /// Where the rules below each first-level slot are in `inside`, with
    /// the slot's index in [`Around::scopes`].
    groups: Vec<(usize, std::ops::Range<usize>)>,
}

impl Around {
    fn read(&mut self, list: &[(Ipv4Net, RuleRef)]) {
        let (addr, len) = (u32::from(self.net.network()), self.net.prefix_len());
        for &(n, rule) in list {
            let (a, l) = (u32::from(n.network()), n.prefix_len());
            if l <= len && addr & mask(l) == a {
                if self.base.is_none_or(|b| rule.rank < b.rank) {
                    self.base = Some(rule);
                }
            } else if l > len && a & mask(len) == addr {
                self.inside.push((n, rule));
            }
        }
    }

    /// The first-level slots inside the prefix (itself if longer than
    /// /16), each with the best rule of the prefixes containing it.
    fn scopes(&self) -> Vec<(Ipv4Net, Option<RuleRef>)> {
        let len = self.net.prefix_len();
        if len > 16 {
            return vec![(self.net, self.base)];
        }
        let top = u32::from(self.net.network()) >> 16;
        let mut scopes: Vec<(Ipv4Net, Option<RuleRef>)> = (top..top + (1 << (16 - len)))
            .map(|t| {
                let net = Ipv4Net::new((t << 16).into(), 16).expect("16 <= 32");
                (net, self.base)
            })
            .collect();
        for &(n, rule) in &self.inside[..self.wide] {
            let first = ((u32::from(n.network()) >> 16) - top) as usize;
            let count = 1usize << (16 - n.prefix_len());
            for (_, best) in &mut scopes[first..first + count] {
                if best.is_none_or(|b| rule.rank < b.rank) {
                    *best = Some(rule);
                }
            }
        }
        scopes
    }
}

/// [`Dir4Index::lowest`]: a rank per first-level slot (`field << 16 |
/// addr >> 16`), `u64::MAX` for none.
#[derive(Clone, Debug)]
struct Lowest(Vec<u64>);

impl Default for Lowest {
    fn default() -> Lowest {
        Lowest(vec![u64::MAX; 2 * DIR4_L1_SLOTS as usize])
    }
}

/// The first-level slot of `net` (/16 or longer) of `field`.
fn l1_of(field: usize, net: Ipv4Net) -> usize {
    (field << 16) | (u32::from(net.network()) >> 16) as usize
}

/// The list of [`Dir4Index::prefixes`] holding `net`: the prefixes of
/// /0-/8 together, then those of /9-/16 per /8, /17-/24 per /16 and
/// /25-/32 per /24, as the table's levels split them.
fn block(field: usize, net: Ipv4Net) -> (usize, u32, u8) {
    let level = net.prefix_len().saturating_sub(1) / 8 * 8;
    (field, u32::from(net.network()) & mask(level), level)
}

/// The netmask of a prefix length.
fn mask(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

/// The slots an add leaves to their rules (when not all).
enum Keep {
    /// Those holding these rules (better ones, on prefixes inside).
    Rules(HashSet<DirSlot>),
    /// Those whose rule is better, looked up by id: a prefix longer than
    /// /16 covers at most 256 slots, naming few rules.
    Ranked,
}

/// The slots changed since the last [`Dir4Index::take_changes`], as the
/// map updates they need: first-level slots and whole chunks.
#[derive(Clone, Debug, Default)]
struct Changed {
    l1: HashSet<u32>,
    chunks: HashSet<u32>,
    /// The chunk noted last: a walk changes a chunk's slots one after
    /// another, and a /8 changes 65,536 of them in 256 chunks.
    last: Option<u32>,
}

impl Changed {
    fn note(&mut self, at: At) {
        match at {
            At::L1(i) => {
                self.l1.insert(i as u32);
            }
            At::Chunk(c, _) => {
                let c = c as u32;
                if self.last != Some(c) {
                    self.last = Some(c);
                    self.chunks.insert(c);
                }
            }
        }
    }

    /// First-level slots and chunks, sorted; none left.
    fn take(&mut self) -> (Vec<u32>, Vec<u32>) {
        self.last = None;
        let mut l1: Vec<u32> = self.l1.drain().collect();
        let mut chunks: Vec<u32> = self.chunks.drain().collect();
        l1.sort_unstable();
        chunks.sort_unstable();
        (l1, chunks)
    }
}

/// Slots an update changed: first-level indices and chunk indices.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// First-level slots.
    pub l1: Vec<u32>,
    /// Whole chunks.
    pub chunks: Vec<u32>,
    /// Rules for [`FW_DIR4_REFS`].
    pub refs: Vec<RuleRef>,
}

impl Dir4Index {
    /// The index of `rules`: `(field, prefix, rule)` for the prefix rules
    /// the DIR tables hold, and their compiled table.
    pub fn new(rules: &[(usize, Ipv4Net, RuleRef)], table: Dir4) -> Dir4Index {
        let mut index = Dir4Index {
            table,
            ..Dir4Index::default()
        };
        for &(field, net, rule) in rules {
            index.note(field, net.trunc(), rule);
        }
        index
    }

    fn note(&mut self, field: usize, net: Ipv4Net, rule: RuleRef) {
        let rule = RuleRef {
            prefix_len: 0,
            ..rule
        };
        self.refs.insert(rule.id, rule);
        self.prefixes
            .entry(block(field, net))
            .or_default()
            .push((net, rule));
        if net.prefix_len() > 16 {
            let lowest = &mut self.lowest.0[l1_of(field, net)];
            *lowest = (*lowest).min(rule.rank);
        }
    }

    /// Takes rule `id` off `net` of `field`; returns it.
    fn forget(&mut self, field: usize, net: Ipv4Net, id: u32) -> Option<RuleRef> {
        let key = block(field, net);
        let list = self.prefixes.get_mut(&key)?;
        let at = list.iter().position(|(n, r)| *n == net && r.id == id)?;
        let (_, rule) = list.swap_remove(at);
        if list.is_empty() {
            self.prefixes.remove(&key);
        }
        self.refs.remove(&id);
        Some(rule)
    }

    /// The list of a [`block`].
    fn list(&self, key: (usize, u32, u8)) -> &[(Ipv4Net, RuleRef)] {
        self.prefixes.get(&key).map_or(&[], |l| l)
    }

    /// The rules around `net` of `field`: the best on the prefixes
    /// containing it (itself included), and the rules on the prefixes
    /// inside it, every one ranked up to `limit` (and some others). Lists
    /// of /17 and longer exist only below chunks: the table says which to
    /// read.
    fn around(&mut self, field: usize, net: Ipv4Net, limit: u64) -> Around {
        let len = net.prefix_len();
        let addr = u32::from(net.network());
        let mut found = Around {
            net,
            base: None,
            inside: Vec::new(),
            wide: 0,
            groups: Vec::new(),
        };
        found.read(self.list((field, 0, 0)));
        let (first, count) = if len >= 8 {
            (addr & mask(8), 1)
        } else {
            (addr, 1u32 << (8 - len))
        };
        for i in 0..count {
            found.read(self.list((field, first + (i << 24), 8)));
        }
        found.wide = found.inside.len();
        let (top, tops) = (addr >> 16, 1u32 << 16u8.saturating_sub(len));
        let (mid, mids) = match len {
            0..=16 => (0, 256),
            17..=24 => ((addr >> 8) & 0xff, 1u32 << (24 - len)),
            _ => ((addr >> 8) & 0xff, 1),
        };
        // Below a first-level slot inside `net`, every list is inside it.
        let whole = len <= 16;
        for t in top..top + tops {
            let l1 = (field << 16) | t as usize;
            let v = self.table.l1[l1];
            if v & DIR_CHUNK == 0 || (whole && self.lowest.0[l1] > limit) {
                continue;
            }
            let start = found.inside.len();
            found.read(self.list((field, t << 16, 16)));
            let slots = &self.table.chunks[(v & !DIR_CHUNK) as usize].slots;
            let slots = &slots[mid as usize..(mid + mids) as usize];
            // Most chunks have none below: one pass the compiler vectorises
            // says so without a branch a slot.
            if slots.iter().fold(0, |any, s| any | s) & DIR_CHUNK != 0 {
                for (m, s) in (mid..).zip(slots) {
                    if s & DIR_CHUNK != 0 {
                        found.read(self.list((field, (t << 16) | (m << 8), 24)));
                    }
                }
            }
            if whole {
                let below = found.inside[start..].iter().map(|(_, r)| r.rank);
                self.lowest.0[l1] = below.min().unwrap_or(u64::MAX);
            }
            if found.inside.len() > start {
                let group = start..found.inside.len();
                found.groups.push(((t - top) as usize, group));
            }
        }
        found
    }

    /// Adds `rule` on `net` of `field`: every slot it covers keeps the better
    /// of its rule and this one.
    pub fn add(&mut self, field: usize, net: Ipv4Net, rule: RuleRef) -> Result<(), PoolFull> {
        let net = net.trunc();
        let keep = if net.prefix_len() > 16 {
            Some(Keep::Ranked)
        } else {
            self.kept(field, net, &rule)
        };
        self.note(field, net, rule);
        self.added.push(RuleRef {
            prefix_len: 0,
            ..rule
        });
        // Only /16 and shorter take no slot that way: they make no chunks.
        let Some(keep) = keep else {
            return Ok(());
        };
        let refs = &self.refs;
        let mut last: (DirSlot, u64) = (0, u64::MAX);
        let mut wins = |v: DirSlot| match &keep {
            Keep::Rules(keep) => v == 0 || !keep.contains(&v),
            Keep::Ranked => {
                // Neighbouring slots mostly hold one rule: one look-up a run.
                if v != 0 && v != last.0 {
                    last = (v, refs.get(&(v - 1)).map_or(u64::MAX, |r| r.rank));
                }
                v == 0 || rule.rank < last.1
            }
        };
        let new = leaf(&rule);
        let changed = &mut self.changed;
        self.table
            .cover(field, net, &mut |v, _| wins(v).then_some(new), &mut |at| {
                changed.note(at)
            })
    }

    /// Which slots an add of `rule` on `net` (/16 or shorter) leaves;
    /// `None` for all (a prefix containing `net` has a better rule). A
    /// slot inside `net` holds the best rule of the prefixes containing
    /// it: the best around `net`, or one on a prefix inside it. Knowing
    /// those, no slot's rule is looked up by id (a /8 holds thousands,
    /// each a cache miss in a table of a million).
    fn kept(&mut self, field: usize, net: Ipv4Net, rule: &RuleRef) -> Option<Keep> {
        let around = self.around(field, net, rule.rank);
        if around.base.is_some_and(|b| b.rank <= rule.rank) {
            return None;
        }
        Some(Keep::Rules(
            around
                .inside
                .iter()
                .filter(|(_, r)| r.rank <= rule.rank)
                .map(|(_, r)| leaf(r))
                .collect(),
        ))
    }

    /// Deletes rule `id` on `net` of `field`: the slots that held it get the
    /// best of the rules left on the prefixes containing them.
    pub fn delete(&mut self, field: usize, net: Ipv4Net, id: u32) -> Result<(), PoolFull> {
        let net = net.trunc();
        let Some(rule) = self.forget(field, net, id) else {
            return Ok(());
        };
        // A slot's rules are those on the prefixes containing its
        // first-level slot (or `net`, when longer than /16), the best of
        // which its scope carries, and those on the prefixes inside that
        // containing the slot. The latter fill the slots that held the
        // deleted rule first; the slots left take the scope's best.
        let around = self.around(field, net, u64::MAX);
        let scopes = around.scopes();
        for (scope, range) in &around.groups {
            let inside = &around.inside[range.clone()];
            self.fill_best_first(field, inside, &rule, scopes[*scope].1)?;
        }
        let gone = leaf(&rule);
        for (scope, best) in scopes {
            self.fill(field, scope, gone, best.map_or(0, |r| leaf(&r)))?;
        }
        Ok(())
    }

    /// Gives the slots that held `gone` the rules on the prefixes `inside`
    /// a scope, best first: each slot takes the first that reaches it.
    /// Those better than `gone` hold none of its slots; those not better
    /// than `outer`, on a prefix containing them all, take none.
    fn fill_best_first(
        &mut self,
        field: usize,
        inside: &[(Ipv4Net, RuleRef)],
        gone: &RuleRef,
        outer: Option<RuleRef>,
    ) -> Result<(), PoolFull> {
        let mut better: Vec<(Ipv4Net, RuleRef)> = inside
            .iter()
            .filter(|(_, r)| r.rank >= gone.rank && outer.is_none_or(|b| r.rank < b.rank))
            .copied()
            .collect();
        better.sort_unstable_by_key(|(n, r)| (r.rank, n.prefix_len()));
        for (n, r) in better {
            self.fill(field, n, leaf(gone), leaf(&r))?;
        }
        Ok(())
    }

    /// Sets the slots of `net` that hold `gone` to `value`.
    fn fill(
        &mut self,
        field: usize,
        net: Ipv4Net,
        gone: DirSlot,
        value: DirSlot,
    ) -> Result<(), PoolFull> {
        let changed = &mut self.changed;
        self.table.cover(
            field,
            net,
            &mut |v, _| (v == gone).then_some(value),
            &mut |at| changed.note(at),
        )
    }

    /// Every rule, for [`FW_DIR4_REFS`].
    pub fn rules(&self) -> Vec<RuleRef> {
        self.refs.values().copied().collect()
    }

    /// The rule a slot value stands for.
    pub fn rule(&self, slot: DirSlot) -> Option<RuleRef> {
        (slot != 0 && slot & DIR_CHUNK == 0)
            .then(|| self.refs.get(&(slot - 1)).copied())
            .flatten()
    }

    /// The slots changed since the last call, as map updates.
    pub fn take_changes(&mut self) -> Changes {
        let (l1, chunks) = self.changed.take();
        Changes {
            l1,
            chunks,
            refs: std::mem::take(&mut self.added),
        }
    }
}

/// The slots of one set in its maps, read as a walk reaches them and
/// written back by [`MapSlots::flush`]: an in-place change in a `rule add`
/// or `rule del` process, without reading the whole table.
pub struct MapSlots<'a, M: MapSource> {
    maps: &'a M,
    set: usize,
    l1: HashMap<usize, DirSlot>,
    chunks: HashMap<usize, DirChunk>,
    dirty: HashSet<At>,
    /// Rules by dense number (leaf - 1), as read or allocated.
    refs: HashMap<u32, RuleRef>,
    next_chunk: u32,
    /// Chunks the set's pool holds (its map's entries).
    pool: u32,
    /// The next free dense number of [`FW_DIR4_REFS`].
    next_ref: u32,
    /// Entries of the set's [`FW_DIR4_REFS`].
    ref_pool: u32,
    error: Option<crate::Error>,
}

/// One element of array `name`.
fn read_one<V: aya::Pod>(maps: &impl MapSource, name: &str, index: u32) -> Result<V> {
    let map = maps.map(name).ok_or_else(|| object::missing_map(name))?;
    let array: Array<&MapData, V> =
        Array::try_from(map).map_err(map_err(format!("open {name}")))?;
    array
        .get(&index, 0)
        .map_err(map_err(format!("read {name}")))
}

impl<'a, M: MapSource> MapSlots<'a, M> {
    /// Set `set` of `maps`, whose first `chunks` chunks and `refs` rule
    /// numbers are in use ([`FwConfig::dir_chunks`], [`FwConfig::dir_refs`]).
    ///
    /// [`FwConfig::dir_chunks`]: xdpkit_common::firewall::FwConfig::dir_chunks
    /// [`FwConfig::dir_refs`]: xdpkit_common::firewall::FwConfig::dir_refs
    pub fn new(maps: &'a M, set: usize, chunks: u32, refs: u32) -> MapSlots<'a, M> {
        MapSlots {
            maps,
            set,
            l1: HashMap::default(),
            chunks: HashMap::default(),
            dirty: HashSet::default(),
            refs: HashMap::default(),
            next_chunk: chunks,
            pool: batch::map_info(maps, FW_DIR4_CHUNKS[set]).map_or(0, |i| i.max_entries()),
            next_ref: refs,
            ref_pool: batch::map_info(maps, FW_DIR4_REFS[set]).map_or(0, |i| i.max_entries()),
            error: None,
        }
    }

    fn keep<V>(&mut self, r: Result<V>, default: V) -> V {
        match r {
            Ok(v) => v,
            Err(e) => {
                self.error.get_or_insert(e);
                default
            }
        }
    }

    fn chunk(&mut self, c: usize) -> &mut DirChunk {
        if !self.chunks.contains_key(&c) {
            let r = read_one::<DirChunk>(self.maps, FW_DIR4_CHUNKS[self.set], c as u32);
            let chunk = self.keep(r, DirChunk::default());
            self.chunks.insert(c, chunk);
        }
        self.chunks.get_mut(&c).expect("just read")
    }

    /// The rule of a leaf slot.
    fn rule(&mut self, slot: DirSlot) -> Option<RuleRef> {
        if slot == 0 || slot & DIR_CHUNK != 0 {
            return None;
        }
        if let Some(r) = self.refs.get(&(slot - 1)) {
            return Some(*r);
        }
        let r = read_one::<RuleRef>(self.maps, FW_DIR4_REFS[self.set], slot - 1);
        let r = self.keep(r, RuleRef::default());
        self.refs.insert(slot - 1, r);
        Some(r)
    }

    /// The rule the table gives `addr` of `field`.
    pub fn lookup(&mut self, field: usize, addr: u32) -> Result<Option<RuleRef>> {
        let mut slot = self.get(At::L1((field << 16) | (addr >> 16) as usize));
        for shift in [8, 0] {
            if slot & DIR_CHUNK == 0 {
                break;
            }
            let c = (slot & !DIR_CHUNK) as usize;
            slot = self.get(At::Chunk(c, ((addr >> shift) & 0xff) as usize));
        }
        let rule = self.rule(slot);
        match self.error.take() {
            Some(e) => Err(e),
            None => Ok(rule),
        }
    }

    /// A new dense number for `rule`, or `None` when the set's
    /// [`FW_DIR4_REFS`] is full.
    fn allocate(&mut self, rule: RuleRef) -> Option<DirSlot> {
        if self.next_ref >= self.ref_pool {
            return None;
        }
        let n = self.next_ref;
        self.next_ref += 1;
        self.refs.insert(n, rule);
        Some(n + 1)
    }

    /// Adds `rule` on `net` of `field` (see [`Dir4Index::add`]) under a new
    /// dense number; returns false, with nothing written, if the chunk pool
    /// or the set's [`FW_DIR4_REFS`] is full.
    pub fn add(&mut self, field: usize, net: Ipv4Net, rule: RuleRef) -> Result<bool> {
        let rule = RuleRef {
            prefix_len: 0,
            ..rule
        };
        let mut touched = HashSet::default();
        let done = self.cover(field, net.trunc(), &mut |_, _| None, &mut |at| {
            touched.insert(at);
        });
        // The walk above only made the chunks; now the better of each slot
        // and the new rule (the ranks need `self`, so a second walk).
        let _ = touched;
        if done.is_err() {
            return Ok(false);
        }
        let leaves = self.leaves_in(field, net.trunc());
        let mut won = Vec::new();
        for (at, v, _) in leaves {
            let better = match self.rule(v) {
                Some(r) => rule.rank < r.rank,
                None => true,
            };
            if better {
                won.push(at);
            }
        }
        // A number only for a rule that takes a slot.
        if won.is_empty() {
            return self.write(&[]);
        }
        let Some(new) = self.allocate(rule) else {
            return Ok(false);
        };
        for at in won {
            self.set(at, new);
        }
        self.write(&[(new - 1, rule)])
    }

    /// Deletes rule `id` on `net` of `field` (see [`Dir4Index::delete`]).
    /// `others` are the field's rules left that overlap `net`; those that
    /// take slots get new dense numbers. Returns false, with nothing
    /// written, if the set's [`FW_DIR4_REFS`] has no room for them.
    pub fn delete(
        &mut self,
        field: usize,
        net: Ipv4Net,
        id: u32,
        others: &[(Ipv4Net, RuleRef)],
    ) -> Result<bool> {
        let net = net.trunc();
        let mut named: HashMap<u32, DirSlot> = HashMap::default();
        for (at, v, (addr, len)) in self.leaves_in(field, net) {
            if self.rule(v).is_none_or(|r| r.id != id) {
                continue;
            }
            let best = others
                .iter()
                .filter(|(n, _)| {
                    n.prefix_len() <= len && n.contains(&std::net::Ipv4Addr::from(addr))
                })
                .min_by_key(|(_, r)| r.rank);
            let value = match best {
                None => 0,
                Some((_, r)) => match named.get(&r.id) {
                    Some(v) => *v,
                    None => {
                        let r = RuleRef {
                            prefix_len: 0,
                            ..*r
                        };
                        let Some(v) = self.allocate(r) else {
                            return Ok(false);
                        };
                        named.insert(r.id, v);
                        v
                    }
                },
            };
            self.set(at, value);
        }
        let mut rules: Vec<(u32, RuleRef)> = named
            .values()
            .map(|v| (v - 1, self.refs[&(v - 1)]))
            .collect();
        rules.sort_unstable_by_key(|(n, _)| *n);
        self.write(&rules)
    }

    /// Every leaf slot inside `net` (chunks below it followed), with its
    /// value and the range it covers; makes no chunk.
    fn leaves_in(&mut self, field: usize, net: Ipv4Net) -> Vec<(At, DirSlot, (u32, u8))> {
        let mut out = Vec::new();
        let mut stack: Vec<(At, (u32, u8))> = Vec::new();
        let addr = u32::from(net.network());
        let len = net.prefix_len();
        let top = (addr >> 16) as usize;
        let l1 = |i: usize| (At::L1((field << 16) | i), ((i as u32) << 16, 16u8));
        if len <= 16 {
            stack.extend((0..1usize << (16 - len)).map(|i| l1(top + i)));
        } else {
            stack.push(l1(top));
        }
        while let Some((at, (a, l))) = stack.pop() {
            let v = self.get(at);
            if v & DIR_CHUNK == 0 {
                out.push((at, v, (a, l)));
                continue;
            }
            let c = (v & !DIR_CHUNK) as usize;
            let shift = 24 - l;
            // Only the chunk slots inside `net`.
            let (first, count) = if len > l {
                let first = ((addr >> shift) & 0xff) as usize;
                let count = if len >= l + 8 {
                    1
                } else {
                    1usize << (l + 8 - len)
                };
                (first, count)
            } else {
                (0, 256)
            };
            for i in first..first + count {
                stack.push((At::Chunk(c, i), (a | ((i as u32) << shift), l + 8)));
            }
        }
        out
    }

    /// Writes what the walks changed: the rules (by dense number), chunks,
    /// then first-level slots (a frame never reaches a chunk or a rule
    /// before it is written).
    fn write(&mut self, rules: &[(u32, RuleRef)]) -> Result<bool> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        if !rules.is_empty() {
            let (numbers, values): (Vec<u32>, Vec<RuleRef>) = rules.iter().copied().unzip();
            batch::update(self.maps, FW_DIR4_REFS[self.set], &numbers, &values)?;
        }
        let mut chunks: Vec<u32> = Vec::new();
        let mut l1: Vec<u32> = Vec::new();
        for at in self.dirty.drain() {
            match at {
                At::L1(i) => l1.push(i as u32),
                At::Chunk(c, _) => chunks.push(c as u32),
            }
        }
        chunks.sort_unstable();
        chunks.dedup();
        l1.sort_unstable();
        if !chunks.is_empty() {
            let values: Vec<DirChunk> =
                chunks.iter().map(|c| self.chunks[&(*c as usize)]).collect();
            batch::update(self.maps, FW_DIR4_CHUNKS[self.set], &chunks, &values)?;
        }
        if !l1.is_empty() {
            let values: Vec<DirSlot> = l1.iter().map(|i| self.l1[&(*i as usize)]).collect();
            batch::update(self.maps, FW_DIR4_L1[self.set], &l1, &values)?;
        }
        Ok(true)
    }

    /// Chunks in use after the change.
    pub fn chunks_used(&self) -> u32 {
        self.next_chunk
    }

    /// Dense rule numbers in use after the change.
    pub fn refs_used(&self) -> u32 {
        self.next_ref
    }
}

impl<M: MapSource> Slots for MapSlots<'_, M> {
    fn get(&mut self, at: At) -> DirSlot {
        match at {
            At::L1(i) => {
                if let Some(v) = self.l1.get(&i) {
                    return *v;
                }
                let r = read_one::<DirSlot>(self.maps, FW_DIR4_L1[self.set], i as u32);
                let v = self.keep(r, 0);
                self.l1.insert(i, v);
                v
            }
            At::Chunk(c, i) => self.chunk(c).slots[i],
        }
    }

    fn set(&mut self, at: At, v: DirSlot) {
        match at {
            At::L1(i) => {
                self.l1.insert(i, v);
            }
            At::Chunk(c, i) => self.chunk(c).slots[i] = v,
        }
        self.dirty.insert(at);
    }

    fn push_chunk(&mut self, fill: DirSlot) -> Result<usize, PoolFull> {
        if self.next_chunk >= self.pool.min(FW_DIR4_MAX_CHUNKS) {
            return Err(PoolFull);
        }
        let c = self.next_chunk as usize;
        self.next_chunk += 1;
        self.chunks.insert(c, DirChunk { slots: [fill; 256] });
        self.dirty.insert(At::Chunk(c, 0));
        Ok(c)
    }
}

pub use xdpkit_common::firewall::PoolNeeds;

/// Source hosts a /24 must hold for the DIR table to take them (a chunk
/// of their own) instead of the host table: a 1 KiB chunk costs what 16
/// hosts cost in the table (32-byte slots about 60% full), and a frame
/// from one of them then reads the first level, two chunks and the rule,
/// all shared with its neighbours, instead of a random bucket of a table
/// of up to 16.8 MB.
pub const DENSE_HOSTS: usize = 16;

/// The /24s (as `addr >> 8`) holding at least [`DENSE_HOSTS`] of the
/// distinct IPv4 host addresses `hosts`.
fn dense_24s(hosts: impl IntoIterator<Item = u32>) -> HashSet<u32> {
    let mut per24: HashMap<u32, usize> = HashMap::default();
    for addr in hosts {
        *per24.entry(addr >> 8).or_default() += 1;
    }
    per24
        .into_iter()
        .filter(|&(_, n)| n >= DENSE_HOSTS)
        .map(|(p24, _)| p24)
        .collect()
}

/// Moves the IPv4 source hosts of dense /24s (at least [`DENSE_HOSTS`])
/// from `hosts` (bound for the host table) to `prefixes` (bound for the
/// DIR table, which reserves third-level chunks for the busiest /24s
/// first).
pub fn move_dense_hosts(hosts: &mut Vec<(IpNet, RuleRef)>, prefixes: &mut Vec<(IpNet, RuleRef)>) {
    let dense = dense_24s(hosts.iter().filter_map(|(n, _)| match n {
        IpNet::V4(n) => Some(u32::from(n.network())),
        IpNet::V6(_) => None,
    }));
    if dense.is_empty() {
        return;
    }
    hosts.retain(|entry| match entry.0 {
        IpNet::V4(n) if dense.contains(&(u32::from(n.network()) >> 8)) => {
            prefixes.push(*entry);
            false
        }
        _ => true,
    });
}

/// The chunks a DIR table of `rules`' IPv4 prefix rules needs (per field,
/// one per /16 holding a longer prefix and one per /24 holding a longer
/// one). Source /32s count only in /24s of at least [`DENSE_HOSTS`]: a
/// rebuild puts the others in the host table or map, and only hosts those
/// cannot hold land in the DIR table.
pub fn chunks_needed<'r>(
    rules: impl IntoIterator<Item = &'r crate::programs::firewall::Rule>,
) -> u32 {
    pool_needs(rules).chunks
}

/// The chunks ([`chunks_needed`]), source hosts, rate limits and DIR rule
/// refs of `rules`, given in rank order or in insertion order (a
/// [`Ruleset`](super::Ruleset)'s entries, a rule file, `sync`'s rules):
/// the refs are the rules a compiled DIR table names (each prefix's best
/// rule after inheriting from the prefixes containing it, as
/// [`kernel::compile`](super::kernel::compile) does), ties of `prio`
/// broken by their order here, plus half as many again for the numbers
/// in-place changes take before the next rebuild.
pub fn pool_needs<'r>(
    rules: impl IntoIterator<Item = &'r crate::programs::firewall::Rule>,
) -> PoolNeeds {
    let mut chunks: HashSet<(bool, u32)> = HashSet::default();
    let mut hosts4: HashSet<u32> = HashSet::default();
    let mut host_list: Vec<(Ipv4Net, (u32, u32))> = Vec::new();
    let mut hosts6: HashSet<u128> = HashSet::default();
    let mut rate_limits = false;
    // Per field (IPv4 src, dst, IPv6 src, dst): the prefixes whose rules
    // the DIR and IPv6 tables may name.
    let mut prefixes: [Vec<(IpNet, (u32, u32))>; 4] = Default::default();
    for (order, rule) in rules.into_iter().enumerate() {
        rate_limits |= matches!(rule.action, super::Action::RateLimit(_));
        if !super::rule::is_prefix_rule(rule) {
            continue;
        }
        let rank = (rule.prio, order as u32);
        let (field, net) = match (rule.src, rule.dst) {
            (Some(IpNet::V4(n)), None) if n.prefix_len() == 32 => {
                hosts4.insert(u32::from(n.addr()));
                host_list.push((n, rank));
                continue;
            }
            (Some(IpNet::V6(n)), None) => {
                if n.prefix_len() == 128 {
                    hosts6.insert(u128::from(n.addr()));
                }
                // Source hosts too: the IPv6 table holds them.
                prefixes[2].push((IpNet::V6(n), rank));
                continue;
            }
            (None, Some(IpNet::V6(n))) => {
                prefixes[3].push((IpNet::V6(n), rank));
                continue;
            }
            (Some(IpNet::V4(n)), None) => (false, n),
            (None, Some(IpNet::V4(n))) => (true, n),
            _ => continue,
        };
        prefixes[usize::from(field)].push((IpNet::V4(net), rank));
        let addr = u32::from(net.network());
        if net.prefix_len() > 16 {
            chunks.insert((field, addr >> 16 << 16 | 1));
        }
        if net.prefix_len() > 24 {
            chunks.insert((field, addr >> 8 << 8));
        }
    }
    // Hosts of dense /24s go to the DIR table: chunks and refs of their
    // own, no room in the host map and table.
    let dense = dense_24s(hosts4.iter().copied());
    for (net, rank) in host_list {
        let addr = u32::from(net.network());
        if dense.contains(&(addr >> 8)) {
            chunks.insert((false, addr >> 16 << 16 | 1));
            chunks.insert((false, addr >> 8 << 8));
            prefixes[0].push((IpNet::V4(net), rank));
            hosts4.remove(&addr);
        }
    }
    let mut named: HashSet<u32> = HashSet::default();
    for list in prefixes {
        named_rules(list, &mut named);
    }
    let refs = named.len() as u32;
    PoolNeeds {
        chunks: chunks.len() as u32,
        hosts4: hosts4.len() as u32,
        hosts6: hosts6.len() as u32,
        rate_limits,
        refs: refs.saturating_add(refs / 2),
    }
}

/// Adds to `named` the rules (by rank: prio, order) the compiled prefixes
/// of one field carry: the best on each prefix, or the better one it
/// inherits (`kernel::inherit`'s single pass over the sorted prefixes).
fn named_rules(mut list: Vec<(IpNet, (u32, u32))>, named: &mut HashSet<u32>) {
    list.sort_unstable_by_key(|(n, rank)| (n.network(), n.prefix_len(), *rank));
    list.dedup_by_key(|(n, _)| (n.network(), n.prefix_len()));
    let mut chain: Vec<(IpNet, (u32, u32))> = Vec::new();
    for (net, own) in list {
        while chain.last().is_some_and(|(open, _)| !open.contains(&net)) {
            chain.pop();
        }
        let best = match chain.last() {
            Some((_, parent)) if *parent < own => *parent,
            _ => own,
        };
        named.insert(best.1);
        chain.push((net, best));
    }
}

/// The IPv4 prefixes of a compiled field, for [`Dir4::build`].
pub fn v4_entries(entries: &[(IpNet, RuleRef)]) -> Vec<(Ipv4Net, RuleRef)> {
    entries
        .iter()
        .filter_map(|(net, r)| match net {
            IpNet::V4(n) => Some((*n, *r)),
            IpNet::V6(_) => None,
        })
        .collect()
}

/// Writes `dir`, a table numbered by rule id ([`Dir4Index`]), whole into
/// set `set` (while it is inactive), and the rules its leaves name into
/// the set's [`FW_DIR4_REFS`] by id: the map must have room for the ids
/// (the test harness's maps have their declared size).
pub fn write(maps: &impl MapSource, set: usize, dir: &Dir4, rules: &[RuleRef]) -> Result<()> {
    write_refs_fd(batch::map_fd(maps, FW_DIR4_REFS[set])?, rules)?;
    write_table(
        batch::map_fd(maps, FW_DIR4_L1[set])?,
        batch::map_fd(maps, FW_DIR4_CHUNKS[set])?,
        dir,
    )
}

/// Writes a table numbered densely (`Dir4::build_within_by`) on the maps'
/// fds: the rules by dense number (`rules[n]` for leaf `n + 1`), chunks,
/// first level.
pub fn write_fds(
    l1: BorrowedFd<'_>,
    chunks: BorrowedFd<'_>,
    refs: BorrowedFd<'_>,
    dir: &Dir4,
    rules: &[RuleRef],
) -> Result<()> {
    if !rules.is_empty() {
        batch::write_array_fd(refs, rules)?;
    }
    write_table(l1, chunks, dir)
}

/// Chunks, then the first level.
fn write_table(l1: BorrowedFd<'_>, chunks: BorrowedFd<'_>, dir: &Dir4) -> Result<()> {
    if !dir.chunks.is_empty() {
        batch::write_array_fd(chunks, &dir.chunks)?;
    }
    batch::write_array_fd(l1, &dir.l1)
}

/// Writes rules into [`FW_DIR4_REFS`] by id (the harness's id-numbered
/// tables).
fn write_refs_fd(fd: BorrowedFd<'_>, rules: &[RuleRef]) -> Result<()> {
    if rules.is_empty() {
        return Ok(());
    }
    let max = rules.iter().map(|r| r.id).max().unwrap_or(0) as usize;
    if rules.len() * 8 >= max {
        // Dense ids (the usual case): one batch write of the range.
        let mut dense = vec![RuleRef::default(); max + 1];
        for r in rules {
            dense[r.id as usize] = *r;
        }
        return batch::write_array_fd(fd, &dense);
    }
    let ids: Vec<u32> = rules.iter().map(|r| r.id).collect();
    sys::map_update_batch(fd, &ids, rules)
}

/// Writes the slots `changes` names from `dir` into set `set`: rules and
/// chunks first, then first-level slots, so a frame never reaches a chunk
/// or a rule before it is written.
pub fn write_changes(
    maps: &impl MapSource,
    set: usize,
    dir: &Dir4,
    changes: &Changes,
) -> Result<()> {
    if !changes.refs.is_empty() {
        let ids: Vec<u32> = changes.refs.iter().map(|r| r.id).collect();
        batch::update(maps, FW_DIR4_REFS[set], &ids, &changes.refs)?;
    }
    if !changes.chunks.is_empty() {
        let values: Vec<DirChunk> = changes
            .chunks
            .iter()
            .map(|&c| dir.chunks[c as usize])
            .collect();
        batch::update(maps, FW_DIR4_CHUNKS[set], &changes.chunks, &values)?;
    }
    if !changes.l1.is_empty() {
        let values: Vec<DirSlot> = changes.l1.iter().map(|&i| dir.l1[i as usize]).collect();
        batch::update(maps, FW_DIR4_L1[set], &changes.l1, &values)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::test_rng::Rng;

    #[test]
    fn pool_needs_count_chunks_and_distinct_source_hosts() {
        let rules: Vec<crate::programs::firewall::Rule> = [
            "deny src 198.18.0.1",
            "allow src 198.18.0.1 prio 5",
            "deny src 198.18.0.2",
            "deny dst 198.18.0.3",
            "deny src 2001:db8::1",
            "deny src 198.18.1.0/24",
            "deny src 198.18.0.9 proto tcp",
            "rate-limit 10 src 198.18.0.0/16 proto udp",
        ]
        .iter()
        .map(|l| l.parse().unwrap())
        .collect();
        let needs = pool_needs(&rules);
        // dst /32: one /16 chunk and one /24 chunk; src /24: one /16 chunk.
        assert_eq!(
            needs,
            PoolNeeds {
                chunks: 3,
                hosts4: 2,
                hosts6: 1,
                rate_limits: true,
                // The /24, the dst /32 and the IPv6 host (the IPv6 table
                // holds hosts), plus half again.
                refs: 4,
            }
        );
        assert_eq!(chunks_needed(&rules), 3);
        // Nested prefixes of one prio name the first rule only; a better
        // prio on a longer prefix names its own, and a later one on the
        // same prefix loses.
        let nested: Vec<crate::programs::firewall::Rule> = [
            "deny src 10.0.0.0/8",
            "deny src 10.1.0.0/16",
            "deny src 10.1.2.0/24",
            "allow src 10.1.3.0/24 prio 5",
            "deny src 10.1.3.0/24 prio 5",
            "deny dst 10.1.3.0/24",
        ]
        .iter()
        .map(|l| l.parse().unwrap())
        .collect();
        assert_eq!(pool_needs(&nested).refs, 3 + 1);
    }

    #[test]
    fn dense_host_24s_go_to_the_dir_table() {
        let lines: Vec<String> = (0..20)
            .map(|i| format!("deny src 10.9.9.{i}"))
            .chain((0..3).map(|i| format!("deny src 10.8.8.{i}")))
            .collect();
        let rules: Vec<crate::programs::firewall::Rule> =
            lines.iter().map(|l| l.parse().unwrap()).collect();
        let needs = pool_needs(&rules);
        // 10.9 and 10.9.9 get chunks; the three hosts of 10.8.8 do not.
        assert_eq!(needs.chunks, 2);
        assert_eq!(needs.hosts4, 3);
        assert_eq!(needs.refs, 20 + 10);
        let mut hosts: Vec<(IpNet, RuleRef)> = rules
            .iter()
            .enumerate()
            .map(|(i, rule)| (rule.src.unwrap(), r(i as u32, i as u64)))
            .collect();
        let mut prefixes = Vec::new();
        move_dense_hosts(&mut hosts, &mut prefixes);
        assert_eq!((hosts.len(), prefixes.len()), (3, 20));
        assert!(prefixes
            .iter()
            .all(|(n, _)| n.to_string().starts_with("10.9.9.")));
    }

    fn r(id: u32, rank: u64) -> RuleRef {
        RuleRef {
            rank,
            id,
            ..RuleRef::default()
        }
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn a_full_pool_leaves_a_24_to_the_trie_with_its_inherited_rule() {
        // Inherited rules, as compile() gives them.
        let src = [
            (net("10.1.0.0/16"), r(1, 5)),
            (net("10.1.2.0/24"), r(2, 7)),
            (net("10.1.2.128/25"), r(2, 7)),
            (net("10.1.3.0/24"), r(3, 9)),
            (net("10.1.3.7/32"), r(4, 1)),
            (net("10.1.3.8/31"), r(3, 9)),
        ];
        // Room for the /24 chunk of 10.1 and one /32 chunk: 10.1.3.x, which
        // holds two longer prefixes, keeps it; 10.1.2.x (one) goes to the trie.
        let built = Dir4::build_within(&src, &[], 2).unwrap();
        assert_eq!(built.table.chunks.len(), 2);
        assert_eq!(
            built.table.lookup(0, u32::from_be_bytes([10, 1, 2, 200])),
            DIR_TRIE
        );
        assert_eq!(built.table.lookup(0, u32::from_be_bytes([10, 1, 3, 7])), 5);
        assert_eq!(built.table.lookup(0, u32::from_be_bytes([10, 1, 3, 9])), 4);
        assert_eq!(built.table.lookup(0, u32::from_be_bytes([10, 1, 3, 1])), 4);
        assert_eq!(built.table.lookup(0, u32::from_be_bytes([10, 1, 4, 1])), 2);
        let spilled: Vec<(String, u32, u32)> = built.spill[0]
            .iter()
            .map(|(n, r)| (n.to_string(), r.id, r.prefix_len))
            .collect();
        assert_eq!(
            spilled,
            [
                ("10.1.2.0/24".to_string(), 2, 24),
                ("10.1.2.128/25".to_string(), 2, 0),
            ]
        );
        // A /16 whose only longer prefix is a /25 still gets its
        // second-level chunk before the third-level ones take the pool:
        // its /24 is spilled, not the whole table.
        let mut more = src.to_vec();
        more.push((net("10.2.5.0/25"), r(5, 2)));
        let built = Dir4::build_within(&more, &[], 3).unwrap();
        assert_eq!(built.table.chunks.len(), 3);
        assert_eq!(
            built.table.lookup(0, u32::from_be_bytes([10, 2, 5, 1])),
            DIR_TRIE
        );
        assert!(built.spill[0].iter().any(|(n, _)| *n == net("10.2.5.0/25")));
        // No room for the /24 chunk: every IPv4 prefix goes to the tries.
        assert_eq!(Dir4::build_within(&src, &[], 0).unwrap_err(), PoolFull);
        assert_eq!(Dir4::build(&src, &[]).unwrap().chunks.len(), 3);
    }

    #[test]
    fn longest_prefix_holds_its_inherited_rule() {
        let src = [
            (net("10.0.0.0/8"), r(1, 5)),
            (net("10.1.0.0/16"), r(1, 5)),
            (net("10.1.2.0/24"), r(3, 7)),
            (net("10.1.2.128/25"), r(4, 1)),
        ];
        let dir = Dir4::build(&src, &[]).unwrap();
        let at = |a: [u8; 4]| dir.lookup(0, u32::from_be_bytes(a));
        assert_eq!(at([10, 9, 9, 9]), 2);
        assert_eq!(at([10, 1, 2, 1]), 4);
        assert_eq!(at([10, 1, 2, 200]), 5);
        assert_eq!(at([11, 0, 0, 0]), 0);
        assert_eq!(dir.lookup(1, u32::from_be_bytes([10, 1, 2, 200])), 0);
        assert_eq!(dir.chunks.len(), 2);
    }

    /// The table a rebuild makes of `rules`: each prefix with the best rule
    /// of the prefixes containing it (as `compile()` gives them).
    fn fresh(rules: &[(usize, Ipv4Net, RuleRef)]) -> Dir4 {
        let mut fields: [Vec<(Ipv4Net, RuleRef)>; 2] = Default::default();
        for &(field, net, _) in rules {
            let best = rules
                .iter()
                .filter(|(f, n, _)| *f == field && n.contains(&net))
                .map(|(_, _, r)| *r)
                .min_by_key(|r| r.rank)
                .expect("net contains itself");
            fields[field].push((net, best));
        }
        for entries in &mut fields {
            entries.sort_by_key(|(n, _)| *n);
            entries.dedup_by_key(|(n, _)| *n);
        }
        Dir4::build(&fields[0], &fields[1]).unwrap()
    }

    /// A prefix near `base`: random lengths, /0, /8, /16, /24 and /32 often,
    /// most inside or around the others.
    fn near(rng: &mut Rng, base: u32) -> Ipv4Net {
        let lens = [0, 8, 8, 12, 16, 16, 20, 23, 24, 24, 28, 31, 32, 32];
        let len = if rng.below(3) == 0 {
            rng.below(33) as u8
        } else {
            lens[rng.below(lens.len())]
        };
        let spread = (1u64 << rng.below(33)) - 1;
        let addr = base ^ (rng.next() & spread) as u32;
        Ipv4Net::new(addr.into(), len).unwrap().trunc()
    }

    /// Addresses at the edges of `net` and just outside it.
    fn edges(net: Ipv4Net) -> [u32; 4] {
        let (first, last) = (u32::from(net.network()), u32::from(net.broadcast()));
        [first, last, first.wrapping_sub(1), last.wrapping_add(1)]
    }

    #[test]
    fn in_place_adds_and_deletes_match_a_rebuild() {
        let mut rng = Rng(0x0d1e_c7ab_1e5e_ed08);
        let mut deletes = 0;
        for round in 0..8 {
            let base = rng.next() as u32;
            let mut next = 0u32;
            let mut rule = |rng: &mut Rng| {
                next += 1;
                // Distinct ranks, in random order: rules inside others rank
                // better or worse.
                r(next, ((rng.below(1000) as u64) << 32) | u64::from(next))
            };
            // Half the rounds start from a rebuilt table of some rules.
            let mut rules: Vec<(usize, Ipv4Net, RuleRef)> = (0..(round % 2) * 40)
                .map(|_| (rng.below(2), near(&mut rng, base), rule(&mut rng)))
                .collect();
            let mut index = Dir4Index::new(&rules, fresh(&rules));
            // Fed only by the changes: what the maps hold.
            let mut maps = index.table.clone();
            for step in 0..60 {
                let changed = if !rules.is_empty() && rng.below(3) == 0 {
                    let (field, net, gone) = rules.swap_remove(rng.below(rules.len()));
                    index.delete(field, net, gone.id).unwrap();
                    deletes += 1;
                    (field, net)
                } else {
                    // Now and then a second rule on a listed prefix.
                    let (field, net) = match rules.len() {
                        n if n > 0 && rng.below(6) == 0 => {
                            let (field, net, _) = rules[rng.below(n)];
                            (field, net)
                        }
                        _ => (rng.below(2), near(&mut rng, base)),
                    };
                    let added = rule(&mut rng);
                    index.add(field, net, added).unwrap();
                    rules.push((field, net, added));
                    (field, net)
                };
                let changes = index.take_changes();
                maps.chunks
                    .resize(index.table.chunks.len(), DirChunk::default());
                for &c in &changes.chunks {
                    maps.chunks[c as usize] = index.table.chunks[c as usize];
                }
                for &i in &changes.l1 {
                    maps.l1[i as usize] = index.table.l1[i as usize];
                }
                assert_eq!(maps, index.table, "round {round} step {step}");
                let want = fresh(&rules);
                assert_eq!(index.table.runs(), want.runs(), "round {round} step {step}");
                let mut addrs: Vec<u32> = rules.iter().flat_map(|(_, n, _)| edges(*n)).collect();
                addrs.extend(edges(changed.1));
                addrs.extend((0..20).map(|_| u32::from(near(&mut rng, base).network())));
                addrs.extend((0..5).map(|_| rng.next() as u32));
                for field in 0..2 {
                    for &addr in &addrs {
                        let got = index.rule(index.table.lookup(field, addr)).map(|r| r.id);
                        let slot = want.lookup(field, addr);
                        assert_eq!(
                            got,
                            slot.checked_sub(1),
                            "round {round} step {step} field {field} addr {addr:#x}"
                        );
                    }
                }
            }
        }
        assert!(deletes > 100, "{deletes} deletes");
    }
}
