//! In-place changes to an IPv6 prefix table ([`super::v6tab`]): a rule
//! added or deleted rewrites the entries whose search or value it changes,
//! not the table (docs/firewall.md, "IPv6 prefix rules").
//!
//! The table holds, for every listed prefix (a *target*), the keys its own
//! search hits (its path), each with the list of lengths a search goes on
//! with after it. A key's list depends only on the listed prefixes inside
//! it and on where the search stands when it gets there, which is the same
//! for every search that gets there; so a change to prefix P alters the
//! lists of ancestors on P's path only, and only those that gain or lose
//! P's length. Below the shortest such ancestor E the paths of the targets
//! may change: they are walked before and after the change. With no such
//! ancestor only P's own path changes. Each entry counts the paths through
//! it and goes when none is left; values change only under P.

use std::collections::BTreeSet;

use foldhash::HashMap;
use ipnet::Ipv6Net;
use xdpkit_common::firewall::{
    v6_buckets, v6_tag, RuleRef, V6Bucket, V6Node, V6Root, V6Slot, FW_V6_NODES, V6_NEXT_SHIFT,
    V6_NO_NODE, V6_TAG_MASK,
};

use super::v6tab::{midpoint, trunc, Trees, V6Table};
use crate::maps::{batch, MapSource};
use xdpkit_common::firewall::{FW_DIR4_REFS, FW_V6NODE, FW_V6TAB};

/// A masked address and its length.
type Key = (u128, u8);

/// A change an index cannot make in place: the caller rebuilds the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rebuild {
    /// The set of lengths a field lists changes: every search changes.
    #[error("the field's prefix lengths change")]
    Lengths,
    /// /0 changes the value of every entry.
    #[error("a /0 changes every entry")]
    Zero,
    /// The table or its nodes have no room left.
    #[error("the IPv6 table is full")]
    Full,
    /// An earlier change failed half-way: the index no longer matches.
    #[error("the index is out of step with its table")]
    Stale,
}

/// A slot that held an entry in a bucket's last place: it keeps the bucket
/// full, so entries living in their second bucket stay found. Its tag (a
/// /0) is never probed.
const TOMBSTONE: V6Slot = V6Slot {
    hi: 0,
    lo: 0,
    key: v6_tag(0, 0),
    rule: 0,
};

/// Moves of one insertion before the index gives up.
const MAX_KICKS: usize = 2000;

/// An entry: the node its list starts, its value (rule id + 1, 0 for
/// none) and the number of paths through it.
#[derive(Clone, Copy, Debug)]
struct Ent {
    node: u32,
    value: u32,
    paths: u32,
}

/// One field's listed prefixes and entries.
#[derive(Clone, Debug)]
struct Field {
    /// Rules on each listed prefix.
    own: HashMap<Key, Vec<RuleRef>>,
    /// The listed prefixes in address order.
    listed: BTreeSet<Key>,
    /// Listed addresses of each length.
    by_len: Vec<BTreeSet<u128>>,
    /// The listed lengths above /0, ascending.
    all: Vec<u8>,
    entries: HashMap<Key, Ent>,
    /// The entries' keys in address order.
    keys: BTreeSet<Key>,
}

impl Default for Field {
    fn default() -> Field {
        Field {
            own: HashMap::default(),
            listed: BTreeSet::new(),
            by_len: vec![BTreeSet::new(); 129],
            all: Vec::new(),
            entries: HashMap::default(),
            keys: BTreeSet::new(),
        }
    }
}

/// The last address of `key`'s prefix.
fn last(key: Key) -> u128 {
    match key.1 {
        0 => u128::MAX,
        128 => key.0,
        l => key.0 | (u128::MAX >> l),
    }
}

/// One hit of a walk: the key, its list, and the longer lengths the search
/// still had when it got there.
struct Hit {
    key: Key,
    list: Vec<u8>,
    longer: Vec<u8>,
}

impl Field {
    fn note(&mut self, key: Key, rule: RuleRef) {
        self.own.entry(key).or_default().push(rule);
        self.listed.insert(key);
        self.by_len[key.1 as usize].insert(key.0);
    }

    fn lengths(&mut self) {
        self.all = (1..=128u8)
            .filter(|&l| !self.by_len[l as usize].is_empty())
            .collect();
    }

    /// Of `longer`, the lengths of listed prefixes inside `key`.
    fn inside(&self, key: Key, longer: &[u8]) -> Vec<u8> {
        let end = last(key);
        longer
            .iter()
            .copied()
            .filter(|&l| self.by_len[l as usize].range(key.0..=end).next().is_some())
            .collect()
    }

    /// Listed prefixes strictly inside `key`.
    fn targets_in(&self, key: Key) -> Vec<Key> {
        if key.1 == 128 {
            return Vec::new();
        }
        self.listed
            .range((key.0, key.1 + 1)..=(last(key), 128))
            .copied()
            .collect()
    }

    /// The rule an entry at `key` carries: the best rule on the prefixes
    /// containing the longest listed prefix containing it.
    fn value(&self, key: Key) -> Option<RuleRef> {
        let lens = || std::iter::once(0).chain(self.all.iter().copied());
        let longest = lens()
            .filter(|&l| l <= key.1)
            .map(|l| (trunc(key.0, l), l))
            .rfind(|k| self.own.contains_key(k))?;
        lens()
            .filter(|&l| l <= longest.1)
            .filter_map(|l| self.own.get(&(trunc(longest.0, l), l)))
            .flatten()
            .min_by_key(|r| r.rank)
            .copied()
    }
}

/// How a change alters the values of the entries under its prefix.
#[derive(Clone, Copy)]
enum Revalue {
    /// A rule on the prefix: entries whose rule ranks after it take it.
    Better(RuleRef),
    /// The rule of this leaf left: entries that carried it take the next.
    Lost(u32),
}

/// Buckets and nodes an index changed, in the order to write them.
#[derive(Clone, Debug, Default)]
pub struct V6Changes {
    /// Rules new to the table, for `FW_DIR4_REFS`: (leaf - 1, rule).
    pub refs: Vec<(u32, RuleRef)>,
    /// New nodes (written before anything names them).
    pub nodes: Vec<(u32, V6Node)>,
    /// Changed buckets: the end of a chain of moves before its start.
    pub buckets: Vec<(u32, V6Bucket)>,
    /// The roots, when they changed (written last).
    pub roots: Option<[V6Root; 2]>,
}

/// An IPv6 table with the rules of every prefix: adds and deletes one
/// rule by rewriting the entries it changes ([`V6Index::take_changes`]).
/// An entry's value is its rule's leaf: a number + 1 in the set's refs.
#[derive(Clone, Debug)]
pub struct V6Index {
    /// The table.
    pub table: V6Table,
    fields: [Field; 2],
    /// The list of lengths each node starts.
    lists: HashMap<u32, Vec<u8>>,
    dirty: Vec<u32>,
    nodes_written: usize,
    roots_changed: bool,
    added: Vec<(u32, RuleRef)>,
    /// Leaf of each rule id.
    leaves: HashMap<u32, u32>,
    /// Rank of the rule of each leaf.
    ranks: HashMap<u32, u64>,
    next_leaf: u32,
    /// Leaves the set's refs hold.
    leaf_room: u32,
    stale: bool,
}

impl V6Index {
    /// The index of `rules` (`(field, prefix, rule)`, field 0 src, 1 dst)
    /// and `table`, their compiled table as [`super::v6tab::build_by`]
    /// makes it with the leaves `leaves` (rule id -> leaf); rules added
    /// later take leaves from `next_leaf` on.
    pub fn new(
        rules: &[(usize, Ipv6Net, RuleRef)],
        table: V6Table,
        leaves: HashMap<u32, u32>,
        next_leaf: u32,
    ) -> V6Index {
        let mut fields: [Field; 2] = Default::default();
        for &(f, net, rule) in rules {
            let net = net.trunc();
            let rule = RuleRef {
                prefix_len: 0,
                ..rule
            };
            fields[f].note((u128::from(net.network()), net.prefix_len()), rule);
        }
        for field in &mut fields {
            field.lengths();
        }
        for bucket in &table.buckets {
            for s in bucket.slots.iter().filter(|s| s.key != 0) {
                let tag = s.key & V6_TAG_MASK;
                let (f, len) = (((tag >> 8) & 1) as usize, (tag & 0xff) as u8);
                if tag == TOMBSTONE.key || len == 0 {
                    continue;
                }
                let key = ((u128::from(s.hi) << 64) | u128::from(s.lo), len);
                fields[f].keys.insert(key);
                fields[f].entries.insert(
                    key,
                    Ent {
                        node: s.key >> V6_NEXT_SHIFT,
                        value: s.rule,
                        paths: 0,
                    },
                );
            }
        }
        let lists = table.made.iter().map(|(l, &n)| (n, l.clone())).collect();
        let ranks = rules
            .iter()
            .filter_map(|(_, _, r)| Some((*leaves.get(&r.id)?, r.rank)))
            .collect();
        let mut index = V6Index {
            nodes_written: table.nodes.len(),
            table,
            fields,
            lists,
            dirty: Vec::new(),
            roots_changed: false,
            added: Vec::new(),
            leaves,
            ranks,
            next_leaf,
            leaf_room: u32::MAX,
            stale: false,
        };
        for f in 0..2 {
            let targets: Vec<Key> = index.fields[f]
                .listed
                .iter()
                .copied()
                .filter(|k| k.1 > 0)
                .collect();
            for t in targets {
                if let Ok(path) = index.path(f, t, u8::MAX) {
                    for hit in path {
                        if let Some(e) = index.fields[f].entries.get_mut(&hit.key) {
                            e.paths += 1;
                        }
                    }
                }
            }
        }
        index
    }

    /// The index with at most `room` leaves (the entries of the set's refs).
    pub fn with_leaf_room(mut self, room: u32) -> V6Index {
        self.leaf_room = room;
        self
    }

    fn list_of(&self, node: u32) -> Vec<u8> {
        self.lists.get(&node).cloned().unwrap_or_default()
    }

    /// The search for target `t`: stored lists, except for keys of length
    /// `fresh` or more and keys not in the table, whose lists come from the
    /// listed prefixes; and whether the lists lead to `t`.
    fn walk(&self, f: usize, t: Key, fresh: u8) -> (Vec<Hit>, bool) {
        let field = &self.fields[f];
        let mut cands = field.all.clone();
        let mut first = true;
        let mut out = Vec::new();
        while !cands.is_empty() {
            let mid = if first { 0 } else { midpoint(cands.len()) };
            first = false;
            let at = cands[mid];
            if at > t.1 {
                cands.truncate(mid);
                continue;
            }
            let key = (trunc(t.0, at), at);
            let longer = cands[mid + 1..].to_vec();
            let list = match field.entries.get(&key) {
                Some(e) if at < fresh => self.list_of(e.node),
                _ => field.inside(key, &longer),
            };
            cands = list.clone();
            out.push(Hit { key, list, longer });
            if at == t.1 {
                return (out, true);
            }
        }
        (out, false)
    }

    /// [`V6Index::walk`] to a target the index holds.
    fn path(&self, f: usize, t: Key, fresh: u8) -> Result<Vec<Hit>, Rebuild> {
        match self.walk(f, t, fresh) {
            (hits, true) => Ok(hits),
            (_, false) => Err(Rebuild::Stale),
        }
    }

    /// The shortest entry on target `p`'s path whose list gains (`add`) or
    /// loses `p`'s length.
    fn changed_above(&self, f: usize, p: Key, add: bool) -> Option<Key> {
        let field = &self.fields[f];
        let (path, _) = self.walk(f, p, u8::MAX);
        path.into_iter()
            .filter(|h| h.key.1 < p.1 && field.entries.contains_key(&h.key))
            .find(|h| {
                if add {
                    h.longer.contains(&p.1) && !h.list.contains(&p.1)
                } else {
                    h.list.contains(&p.1)
                        && !field.by_len[p.1 as usize]
                            .range(h.key.0..=last(h.key))
                            .any(|&a| a != p.0)
                }
            })
            .map(|h| h.key)
    }

    /// Adds `rule` on `net` of field `f` (0 src, 1 dst).
    pub fn add(&mut self, f: usize, net: Ipv6Net, rule: RuleRef) -> Result<(), Rebuild> {
        let net = net.trunc();
        let key = (u128::from(net.network()), net.prefix_len());
        let rule = RuleRef {
            prefix_len: 0,
            ..rule
        };
        let newly = !self.fields[f].own.contains_key(&key);
        self.check(
            key,
            newly && self.fields[f].by_len[key.1 as usize].is_empty(),
        )?;
        let new_leaf = !self.leaves.contains_key(&rule.id);
        if new_leaf && self.next_leaf > self.leaf_room {
            return Err(Rebuild::Full);
        }
        let above = if newly {
            self.changed_above(f, key, true)
        } else {
            None
        };
        if new_leaf {
            self.leaf_for(rule)?;
        }
        self.change(
            f,
            key,
            above,
            |field| field.note(key, rule),
            Revalue::Better(rule),
        )
    }

    /// Deletes rule `id` on `net` of field `f`.
    pub fn delete(&mut self, f: usize, net: Ipv6Net, id: u32) -> Result<(), Rebuild> {
        let net = net.trunc();
        let key = (u128::from(net.network()), net.prefix_len());
        let Some(rules) = self.fields[f].own.get(&key) else {
            return Ok(());
        };
        let gone = rules.iter().all(|r| r.id == id);
        let last_of_len = self.fields[f].by_len[key.1 as usize].len() == 1;
        self.check(key, gone && last_of_len)?;
        let above = if gone {
            self.changed_above(f, key, false)
        } else {
            None
        };
        let leaf = self.leaves.get(&id).copied().unwrap_or(0);
        self.change(
            f,
            key,
            above,
            |field| {
                let list = field.own.get_mut(&key).expect("checked above");
                list.retain(|r| r.id != id);
                if list.is_empty() {
                    field.own.remove(&key);
                    field.listed.remove(&key);
                    field.by_len[key.1 as usize].remove(&key.0);
                }
            },
            Revalue::Lost(leaf),
        )
    }

    fn check(&self, key: Key, lengths_change: bool) -> Result<(), Rebuild> {
        if self.stale {
            return Err(Rebuild::Stale);
        }
        if key.1 == 0 {
            return Err(Rebuild::Zero);
        }
        if lengths_change {
            return Err(Rebuild::Lengths);
        }
        Ok(())
    }

    /// Walks the targets whose paths `edit` of prefix `p` may change (those
    /// under `above` and itself, else `p`) before and after it, writes the
    /// entries they hit, then the entries under `p` whose value `how`
    /// changes.
    fn change(
        &mut self,
        f: usize,
        p: Key,
        above: Option<Key>,
        edit: impl FnOnce(&mut Field),
        how: Revalue,
    ) -> Result<(), Rebuild> {
        // The region's own entry too: its list may be the one that changes.
        let targets = |field: &Field| {
            let region = above.unwrap_or(p);
            let mut t = match above {
                Some(e) => field.targets_in(e),
                None => Vec::new(),
            };
            if field.own.contains_key(&region) {
                t.push(region);
            }
            t
        };
        let mut touched: Vec<Key> = Vec::new();
        for t in targets(&self.fields[f]) {
            let path = self.path(f, t, u8::MAX)?;
            for hit in path {
                if let Some(e) = self.fields[f].entries.get_mut(&hit.key) {
                    e.paths = e.paths.saturating_sub(1);
                }
                touched.push(hit.key);
            }
        }
        edit(&mut self.fields[f]);
        let fresh = above.map_or(u8::MAX, |k| k.1);
        for t in targets(&self.fields[f]) {
            let path = self.path(f, t, fresh)?;
            for hit in path {
                let node = self.node_of(&hit.list)?;
                let field = &mut self.fields[f];
                let e = field.entries.entry(hit.key).or_insert_with(|| {
                    field.keys.insert(hit.key);
                    Ent {
                        node,
                        value: 0,
                        paths: 0,
                    }
                });
                e.node = node;
                e.paths += 1;
                touched.push(hit.key);
            }
        }
        touched.sort_unstable();
        touched.dedup();
        // Deeper entries first: a search reaches a new entry only through
        // its ancestors, written after it.
        touched.sort_by_key(|k| std::cmp::Reverse(k.1));
        let walked: Vec<(Key, Option<u32>)> = touched.into_iter().map(|k| (k, None)).collect();
        self.sync_all(f, walked)?;
        // With `above`, every entry under it (so under `p`) was walked; else
        // the others under `p`, from the values just written.
        if above.is_none() {
            let revalued = self.revalued(f, p, how);
            self.sync_all(f, revalued)?;
        }
        Ok(())
    }

    fn sync_all(&mut self, f: usize, keys: Vec<(Key, Option<u32>)>) -> Result<(), Rebuild> {
        for (key, value) in keys {
            if let Err(e) = self.sync(f, key, value) {
                self.stale = true;
                return Err(e);
            }
        }
        Ok(())
    }

    /// The entries under `p` whose value `how` changes, with the new value
    /// when it is known.
    fn revalued(&self, f: usize, p: Key, how: Revalue) -> Vec<(Key, Option<u32>)> {
        let field = &self.fields[f];
        let rank = |leaf: u32| self.ranks.get(&leaf).copied().unwrap_or(u64::MAX);
        field
            .keys
            .range(p..=(last(p), 128))
            .filter(|k| k.1 >= p.1)
            .filter_map(|k| {
                let value = field.entries.get(k).map_or(0, |e| e.value);
                match how {
                    Revalue::Better(r) if r.rank < rank(value) => {
                        Some((*k, self.leaves.get(&r.id).copied()))
                    }
                    Revalue::Lost(leaf) if value == leaf => Some((*k, None)),
                    _ => None,
                }
            })
            .collect()
    }

    /// The node starting the tree of `list`, made if new.
    fn node_of(&mut self, list: &[u8]) -> Result<u32, Rebuild> {
        if list.is_empty() {
            return Ok(V6_NO_NODE);
        }
        if let Some(&n) = self.table.made.get(list) {
            return Ok(n);
        }
        let mut trees = Trees {
            nodes: std::mem::take(&mut self.table.nodes),
            made: std::mem::take(&mut self.table.made),
        };
        let n = trees.of(list);
        self.table.nodes = trees.nodes;
        self.table.made = trees.made;
        for (l, &m) in &self.table.made {
            self.lists.entry(m).or_insert_with(|| l.clone());
        }
        if self.table.nodes.len() > FW_V6_NODES as usize {
            self.stale = true;
            return Err(Rebuild::Full);
        }
        Ok(n)
    }

    /// Brings the bucket slot of entry `key` of field `f` in line with the
    /// index: written, rewritten or removed; its value is `known` or
    /// computed.
    fn sync(&mut self, f: usize, key: Key, known: Option<u32>) -> Result<(), Rebuild> {
        let keep = self.fields[f]
            .entries
            .get(&key)
            .is_some_and(|e| e.paths > 0);
        let tag = v6_tag(f as u32, u32::from(key.1));
        let (hi, lo) = ((key.0 >> 64) as u64, key.0 as u64);
        let value = match (keep, known) {
            (true, Some(v)) => v,
            (true, None) => match self.fields[f].value(key) {
                Some(rule) => self.leaf_for(rule)?,
                None => 0,
            },
            (false, _) => 0,
        };
        let field = &mut self.fields[f];
        let want = if keep {
            let e = field.entries.get_mut(&key).expect("kept");
            e.value = value;
            Some(V6Slot {
                hi,
                lo,
                key: tag | (e.node << V6_NEXT_SHIFT),
                rule: value,
            })
        } else {
            field.entries.remove(&key);
            field.keys.remove(&key);
            None
        };
        let count = self.table.roots[0].buckets;
        let at = v6_buckets(hi, lo, tag, count).into_iter().find_map(|b| {
            self.table.buckets[b as usize]
                .slots
                .iter()
                .position(|s| s.key & V6_TAG_MASK == tag && s.hi == hi && s.lo == lo)
                .map(|i| (b, i))
        });
        match (want, at) {
            (Some(slot), Some((b, i))) => {
                if self.table.buckets[b as usize].slots[i] != slot {
                    self.table.buckets[b as usize].slots[i] = slot;
                    self.dirty.push(b);
                }
            }
            (Some(slot), None) => {
                self.insert(slot)?;
                self.table.entries += 1;
            }
            (None, Some((b, i))) => {
                self.table.buckets[b as usize].slots[i] =
                    if i == 3 { TOMBSTONE } else { V6Slot::default() };
                self.dirty.push(b);
                self.table.entries -= 1;
            }
            (None, None) => {}
        }
        self.root_follows(f, key, want)
    }

    /// The leaf of `rule`, numbered now if it has none: a rule no entry
    /// carried (one that ranked below another on every prefix it is on,
    /// so the load gave it no leaf) becomes a value when that one goes.
    fn leaf_for(&mut self, rule: RuleRef) -> Result<u32, Rebuild> {
        if let Some(&leaf) = self.leaves.get(&rule.id) {
            return Ok(leaf);
        }
        if self.next_leaf > self.leaf_room {
            return Err(Rebuild::Full);
        }
        let leaf = self.next_leaf;
        self.leaves.insert(rule.id, leaf);
        self.ranks.insert(leaf, rule.rank);
        self.added.push((leaf - 1, rule));
        self.next_leaf += 1;
        Ok(leaf)
    }

    /// Keeps a root's copy of its field's one entry of the first length.
    fn root_follows(&mut self, f: usize, key: Key, want: Option<V6Slot>) -> Result<(), Rebuild> {
        let root = &mut self.table.roots[f];
        if root.shared == 0 || self.fields[f].all.first() != Some(&key.1) {
            return Ok(());
        }
        let own = (u128::from(root.first.hi) << 64) | u128::from(root.first.lo) == key.0;
        match (own, want) {
            (true, Some(slot)) if root.first != slot => root.first = slot,
            (true, None) => return Err(Rebuild::Stale),
            // A second entry of the first length: the search probes.
            (false, Some(_)) => root.shared = 0,
            _ => return Ok(()),
        }
        root.copy_nodes(&self.table.nodes);
        self.roots_changed = true;
        Ok(())
    }

    /// Places `slot` in one of its buckets, moving others (cuckoo).
    fn insert(&mut self, mut slot: V6Slot) -> Result<(), Rebuild> {
        let count = self.table.roots[0].buckets;
        let free = |b: &V6Bucket| b.slots.iter().position(|s| s.key == 0 || *s == TOMBSTONE);
        let [first, second] = v6_buckets(slot.hi, slot.lo, slot.key & V6_TAG_MASK, count);
        let mut at = if free(&self.table.buckets[first as usize]).is_some() {
            first
        } else {
            second
        };
        let mut chain = Vec::new();
        for kick in 0..MAX_KICKS {
            let bucket = &mut self.table.buckets[at as usize];
            chain.push(at);
            if let Some(i) = free(bucket) {
                bucket.slots[i] = slot;
                // The end of the chain first: a moved entry is in its new
                // bucket before it leaves its old one.
                self.dirty.extend(chain.iter().rev());
                return Ok(());
            }
            std::mem::swap(&mut bucket.slots[kick % 4], &mut slot);
            let [a, b] = v6_buckets(slot.hi, slot.lo, slot.key & V6_TAG_MASK, count);
            at = if a == at { b } else { a };
        }
        self.dirty.extend(chain.iter().rev());
        Err(Rebuild::Full)
    }

    /// What changed since the last call, to write to the maps.
    pub fn take_changes(&mut self) -> V6Changes {
        let mut seen = std::collections::HashSet::new();
        let mut order: Vec<u32> = std::mem::take(&mut self.dirty)
            .into_iter()
            .rev()
            .filter(|b| seen.insert(*b))
            .collect();
        order.reverse();
        let nodes = (self.nodes_written..self.table.nodes.len())
            .map(|n| (n as u32, self.table.nodes[n]))
            .collect();
        self.nodes_written = self.table.nodes.len();
        V6Changes {
            refs: std::mem::take(&mut self.added),
            nodes,
            buckets: order
                .into_iter()
                .map(|b| (b, self.table.buckets[b as usize]))
                .collect(),
            roots: std::mem::take(&mut self.roots_changed).then_some(self.table.roots),
        }
    }
}

/// Writes `changes` into set `set`: rules, nodes and buckets (in their
/// order); the caller writes the roots (they live in the config) last.
pub fn write_changes(maps: &impl MapSource, set: usize, changes: &V6Changes) -> crate::Result<()> {
    fn write<V: aya::Pod>(
        maps: &impl MapSource,
        name: &str,
        items: &[(u32, V)],
    ) -> crate::Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        let (keys, values): (Vec<u32>, Vec<V>) = items.iter().copied().unzip();
        batch::update(maps, name, &keys, &values)
    }
    write(maps, FW_DIR4_REFS[set], &changes.refs)?;
    write(maps, FW_V6NODE[set], &changes.nodes)?;
    write(maps, FW_V6TAB[set], &changes.buckets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::test_rng::Rng;
    use crate::firewall::v6tab::{build_roomy, Direct};
    use ipnet::IpNet;

    type Rules = Vec<(usize, Ipv6Net, RuleRef)>;

    /// Rule on the longest listed prefix's chain with the best rank: what
    /// the table must answer for `addr`.
    fn expected(rules: &Rules, f: usize, addr: u128) -> u32 {
        let on = |n: &Ipv6Net| n.contains(&std::net::Ipv6Addr::from(addr));
        let Some(longest) = rules
            .iter()
            .filter(|(g, n, _)| *g == f && on(n))
            .map(|(_, n, _)| n.prefix_len())
            .max()
        else {
            return 0;
        };
        rules
            .iter()
            .filter(|(g, n, _)| *g == f && on(n) && n.prefix_len() <= longest)
            .min_by_key(|(_, _, r)| r.rank)
            .map_or(0, |(_, _, r)| r.id + 1)
    }

    /// A fresh index of `rules`, built as a load builds the table.
    fn fresh(rules: &Rules) -> V6Index {
        let mut fields: [Vec<(IpNet, RuleRef)>; 2] = Default::default();
        for (f, compiled) in fields.iter_mut().enumerate() {
            let mut nets: Vec<Ipv6Net> = rules
                .iter()
                .filter(|(g, _, _)| *g == f)
                .map(|(_, n, _)| *n)
                .collect();
            nets.sort();
            nets.dedup();
            for net in nets {
                let best = rules
                    .iter()
                    .filter(|(g, n, _)| *g == f && n.contains(&net))
                    .min_by_key(|(_, _, r)| r.rank)
                    .map(|(_, _, r)| *r)
                    .unwrap();
                compiled.push((IpNet::V6(net), best));
            }
        }
        let table = build_roomy(
            &fields[0],
            &fields[1],
            1 << 12,
            &|r| r.id + 1,
            1 << 10,
            Direct::None,
        )
        .unwrap();
        // As a load numbers them: only the rules some prefix carries.
        let leaves = fields
            .iter()
            .flatten()
            .map(|(_, r)| (r.id, r.id + 1))
            .collect();
        V6Index::new(rules, table, leaves, 2_000_000)
    }

    /// The rule id + 1 of a leaf of `index` (0 for none).
    fn id_of(index: &V6Index, leaf: u32) -> u32 {
        index
            .leaves
            .iter()
            .find(|(_, &l)| l == leaf && leaf != 0)
            .map_or(0, |(id, _)| id + 1)
    }

    /// Entries of a field: key -> (list, rule id + 1).
    fn entries_of(index: &V6Index, f: usize) -> Vec<(Key, Vec<u8>, u32)> {
        let mut out: Vec<_> = index.fields[f]
            .entries
            .iter()
            .map(|(k, e)| (*k, index.list_of(e.node), id_of(index, e.value)))
            .collect();
        out.sort();
        out
    }

    fn net(addr: u128, len: u8) -> Ipv6Net {
        Ipv6Net::new(addr.into(), len).unwrap().trunc()
    }

    /// Adds and deletes applied one by one give the entries, lists and
    /// values of a fresh build of the same rules, and every address the
    /// answer of a scan of the rules; paths through entries stay counted.
    #[test]
    fn in_place_changes_match_a_fresh_build() {
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        let (mut changes, mut rebuilds) = (0, 0);
        for round in 0..30 {
            let base = (u128::from(rng.next()) << 64) | u128::from(rng.next());
            let lens: Vec<u8> = match round % 3 {
                0 => (32..=64).collect(),
                1 => vec![8, 16, 24, 32, 48, 56, 64, 96, 128],
                _ => (1..=128).collect(),
            };
            // One rule of every length far from the others, never deleted:
            // the lengths stay, so changes are made in place.
            let mut seeds: Rules = Vec::new();
            for &len in &lens {
                for f in 0..2 {
                    let rule = RuleRef {
                        id: 1_000_000 + seeds.len() as u32,
                        rank: seeds.len() as u64 + (1 << 40),
                        ..RuleRef::default()
                    };
                    seeds.push((f, net(!base, len), rule));
                }
            }
            let mut id = 0u32;
            let mut make = |rng: &mut Rng, rules: &Rules| {
                let f = rng.below(2);
                let len = lens[rng.below(lens.len())];
                let spread = rng.below(usize::from(len).max(1)) as u32;
                let addr = base
                    ^ ((u128::from(rng.next()) << 64 | u128::from(rng.next()))
                        & (u128::MAX >> (128 - spread.max(1)) << (128 - u32::from(len).max(1))));
                // Now and then a second rule on a listed prefix.
                let n = match rules.get(rng.below(rules.len().max(1))) {
                    Some(&(g, n, _)) if rng.below(8) == 0 => (g, n),
                    _ => (f, net(addr, len)),
                };
                id += 1;
                let rule = RuleRef {
                    id,
                    rank: (rng.below(1000) as u64) << 32 | u64::from(id),
                    ..RuleRef::default()
                };
                (n.0, n.1, rule)
            };
            let mut rules: Rules = seeds.clone();
            for _ in 0..30 {
                let r = make(&mut rng, &rules);
                rules.push(r);
            }
            // A dense region: prefixes at most 8 bits below a listed one.
            let top = lens[rng.below(lens.len())].min(119);
            for k in 0..25u32 {
                let len = if k == 0 {
                    top
                } else {
                    top + 1 + rng.below(8) as u8
                };
                let addr = base ^ ((u128::from(rng.next()) << 64 | u128::from(rng.next())) >> top);
                let rule = RuleRef {
                    id: 500_000 + k,
                    rank: (rng.below(1000) as u64) << 32 | u64::from(500_000 + k),
                    ..RuleRef::default()
                };
                rules.push((rng.below(2), net(addr, len), rule));
            }
            let mut index = fresh(&rules);
            for _ in 0..40 {
                let result = if rng.below(2) == 0 || rules.len() == seeds.len() {
                    let r = make(&mut rng, &rules);
                    rules.push(r);
                    index.add(r.0, r.1, r.2)
                } else {
                    let at = seeds.len() + rng.below(rules.len() - seeds.len());
                    let r = rules.swap_remove(at);
                    index.delete(r.0, r.1, r.2.id)
                };
                changes += 1;
                match result {
                    Ok(()) => {}
                    Err(Rebuild::Lengths | Rebuild::Zero | Rebuild::Full) => {
                        rebuilds += 1;
                        index = fresh(&rules);
                    }
                    Err(e) => panic!("round {round}: {e}"),
                }
                let want = fresh(&rules);
                for f in 0..2 {
                    assert_eq!(entries_of(&index, f), entries_of(&want, f), "round {round}");
                    for (k, e) in &want.fields[f].entries {
                        assert_eq!(index.fields[f].entries[k].paths, e.paths, "{k:?}");
                    }
                    let mut addrs = vec![base];
                    for (g, n, _) in &rules[seeds.len()..] {
                        if *g == f {
                            let (a, b) = (u128::from(n.network()), u128::from(n.broadcast()));
                            addrs.extend([a, b, a.wrapping_sub(1), b.wrapping_add(1)]);
                        }
                    }
                    for addr in addrs {
                        let (found, probes) = index.table.lookup(f, addr);
                        let found = id_of(&index, found);
                        assert_eq!(found, expected(&rules, f, addr), "round {round} {addr:x}");
                        assert!(probes <= xdpkit_common::firewall::V6_MAX_PROBES);
                    }
                }
                let _ = index.take_changes();
            }
        }
        assert!(rebuilds * 10 < changes, "{rebuilds} rebuilds of {changes}");
    }
}
