//! Maps and values of the firewall program (see docs/firewall.md).

/// One-entry array: [`FwConfig`].
pub const FW_CONFIG: &str = "FW_CONFIG";
/// One-entry array: [`FwTrace`] of the last frame, written only when
/// [`FwConfig::trace`] is set (simulation and tests).
pub const FW_TRACE: &str = "FW_TRACE";
/// Per-CPU array of [`RuleHits`] indexed by rule id.
pub const FW_RULE_STATS: &str = "FW_RULE_STATS";
/// Array of rule id -> [`RuleRecord`] (40 bytes): the ruleset itself, so
/// any later process can list, change or rebuild it. A prefix rule's record
/// holds all of it; a general rule's says ([`REC_GENERAL`]) that its full
/// record is in [`FW_GEN_RECORDS`]. The program never reads it.
pub const FW_RULES: &str = "FW_RULES";
/// Hash of rule id -> [`GeneralRecord`] (80 bytes): the full records of
/// the general rules (at most [`FW_MAX_GENERAL`]), which a [`RuleRecord`]
/// cannot hold. Not sized by the capacity. The program never reads it.
pub const FW_GEN_RECORDS: &str = "FW_GEN_RECORDS";
/// Per-CPU array of [`crate::ActionCounter`] indexed by [`Outcome`], and
/// one entry more ([`FW_CLOCK_SLOT`]).
pub const FW_OUTCOMES: &str = "FW_OUTCOMES";
/// The entry of [`FW_OUTCOMES`] after the outcomes: not a counter but the
/// program's per-CPU cache of the coarse clock (jiffies, ns), there rather
/// than in a map of its own because a program may use at most 64 maps.
pub const FW_CLOCK_SLOT: u32 = Outcome::COUNT;
/// LRU hash of [`BucketKey`] -> [`Bucket`]: the token buckets of rate
/// limits. A pool map ([`FW_POOL_MAPS`]): [`FW_MIN_BUCKETS`] entries while
/// the ruleset has no rate-limit rule, [`FW_MAX_BUCKETS`] once it has one.
pub const FW_BUCKETS: &str = "FW_BUCKETS";
/// Entries of [`FW_BUCKETS`] with rate-limit rules (its declared size).
pub const FW_MAX_BUCKETS: u32 = 65_536;
/// Entries of [`FW_BUCKETS`] without rate-limit rules.
pub const FW_MIN_BUCKETS: u32 = 64;
/// Prefix-rule tries, `[set 0, set 1]`, key = address bytes in network order.
pub const FW_SRC4: [&str; 2] = ["FW_SRC4_0", "FW_SRC4_1"];
/// See [`FW_SRC4`].
pub const FW_DST4: [&str; 2] = ["FW_DST4_0", "FW_DST4_1"];
/// See [`FW_SRC4`].
pub const FW_SRC6: [&str; 2] = ["FW_SRC6_0", "FW_SRC6_1"];
/// See [`FW_SRC4`].
pub const FW_DST6: [&str; 2] = ["FW_DST6_0", "FW_DST6_1"];

/// Exact-match maps for full-length source prefixes (/32, /128), `[set 0,
/// set 1]`, key = address bytes: a hash lookup instead of a trie walk for
/// the usual blocklist entry. A hit is final (the value already carries the
/// best rule of the address and every prefix containing it); a miss falls
/// back to the trie.
pub const FW_HOST_SRC4: [&str; 2] = ["FW_HSRC4_0", "FW_HSRC4_1"];
/// See [`FW_HOST_SRC4`].
pub const FW_HOST_SRC6: [&str; 2] = ["FW_HSRC6_0", "FW_HSRC6_1"];
/// IPv4 source hosts in an array-backed table, `[set 0, set 1]`: array of
/// [`HostBucket`], each host in one of its two buckets ([`host_buckets`]).
/// The program looks it up before [`FW_HOST_SRC4`]: array lookups are
/// inlined by the verifier, a hash lookup is a helper call. Written only
/// while its set is inactive; a hit is final like a host-map hit. Hosts that
/// find both buckets full, and hosts added in place, use [`FW_HOST_SRC4`].
pub const FW_HOST_TABLE4: [&str; 2] = ["FW_HTAB4_0", "FW_HTAB4_1"];
/// Buckets per host table (4 hosts each).
pub const FW_HOST_BUCKETS: u32 = 1 << 17;
/// Filters of the IPv4 host tables, `[set 0, set 1]`: arrays of `u64`
/// words, as many as the set's table has buckets, with bit [`host_filter`]
/// set for the /24 of every host in the table. The program reads the table
/// only for sources whose bit is set, so a source in no listed host's /24
/// (a flood from listed networks, or from unlisted ones) costs one word
/// read instead of two bucket reads in a table of up to 16.8 MB. Written
/// with the table, only while its set is inactive.
pub const FW_HOST_FILTER4: [&str; 2] = ["FW_HBITS4_0", "FW_HBITS4_1"];

/// One host of a [`HostBucket`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostSlot {
    /// The address, its bytes in network order read as a native `u32`.
    pub addr: u32,
    /// Nonzero when the slot holds a host.
    pub used: u32,
    /// The best rule of the host and every prefix containing it.
    pub rule: RuleRef,
}

/// Four hosts: two cache lines.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostBucket {
    /// The hosts; unused slots are zero.
    pub slots: [HostSlot; 4],
}

/// Fewest and most [`FwConfig::table_bits`].
pub const TABLE_BITS: (u32, u32) = (4, FW_HOST_BUCKETS.trailing_zeros());

/// `bits` ([`FwConfig::table_bits`]) clamped to [`TABLE_BITS`], so the
/// hashes' shifts stay below 32 whatever the config holds.
#[inline(always)]
pub const fn table_bits(bits: u32) -> u32 {
    if bits < TABLE_BITS.0 {
        TABLE_BITS.0
    } else if bits > TABLE_BITS.1 {
        TABLE_BITS.1
    } else {
        bits
    }
}

/// The two buckets, among the first `1 << bits`, a host may live in (two
/// multiplicative hashes of its address, the same on both sides). Two
/// choices keep buckets even: a table three-quarters full rarely has a
/// host with both buckets full.
#[inline(always)]
pub const fn host_buckets(addr: u32, bits: u32) -> [u32; 2] {
    let shift = 32 - table_bits(bits);
    let first = addr.wrapping_mul(0x9e37_79b1) >> shift;
    let second = (addr ^ (addr >> 16)).wrapping_mul(0x85eb_ca6b) >> shift;
    [first, second]
}

/// The word and bit of [`FW_HOST_FILTER4`] for IPv4 `addr` (network
/// order) when the host table has `1 << bits` buckets: a multiplicative
/// hash of the address's /24 onto `64 << bits` bits, the same on both
/// sides. One word a bucket and a bucket for every three hosts: about 21
/// bits a host (16 when the largest table holds its 524,288 hosts), so a source
/// whose /24 holds no listed host finds its bit clear about 19 times in 20.
#[inline(always)]
pub const fn host_filter(addr: [u8; 4], bits: u32) -> (u32, u64) {
    // Table bits 4..=17: the shift stays in 9..=22.
    let net = u32::from_be_bytes(addr) >> 8;
    let h = net.wrapping_mul(0x9e37_79b1) >> (32 - (table_bits(bits) + 6));
    (h >> 6, 1 << (h & 63))
}

/// IPv4 DIR-16-8-8 tables (see docs/firewall.md), `[set 0, set 1]`: the
/// first level, an array of `2 * 65536` [`DirSlot`]s indexed by
/// `field << 16 | addr >> 16` (field 0 src, 1 dst).
pub const FW_DIR4_L1: [&str; 2] = ["FW_DIR4_L1_0", "FW_DIR4_L1_1"];
/// The chunk pool of a set, shared by both fields and both lower levels:
/// array of [`DirChunk`] (256 slots, indexed by the next 8 address bits).
pub const FW_DIR4_CHUNKS: [&str; 2] = ["FW_DIR4_CH_0", "FW_DIR4_CH_1"];
/// The rules a set's leaves name, `[set 0, set 1]`: array of [`RuleRef`]
/// by a dense number per set (a leaf holds it + 1), not by rule id, so it
/// is sized to the rules the table names ([`PoolNeeds::refs`]). A rebuild
/// numbers them 0.. ([`FwConfig::dir_refs`]); an in-place change takes the
/// next free numbers, and the ones it leaves unused stay until the next
/// rebuild of the set. Per set, because `rule load --replace` gives ids
/// (line numbers) to other rules while the old set is still judging.
pub const FW_DIR4_REFS: [&str; 2] = ["FW_DIR4_REFS_0", "FW_DIR4_REFS_1"];
/// Chunks per set in [`FW_DIR4_CHUNKS`]: one per /16 that holds a longer
/// prefix, plus one per /24 that holds a prefix longer than /24.
pub const FW_DIR4_MAX_CHUNKS: u32 = (1 << 16) + (1 << 12);
/// Chunks of a new firewall's pools: grown (powers of two, up to
/// [`FW_DIR4_MAX_CHUNKS`]) when a ruleset needs more.
pub const FW_DIR4_MIN_CHUNKS: u32 = 64;
/// Slots per first level field.
pub const DIR4_L1_SLOTS: u32 = 1 << 16;
/// A DIR slot: 0 no rule; [`DIR_CHUNK`] set: index of the chunk holding the
/// next 8 bits; otherwise index + 1 into [`FW_DIR4_REFS`] (the in-memory
/// tables of the library, `Dir4`, number rules by id: rule id + 1).
pub type DirSlot = u32;
/// [`DirSlot`] bit marking a chunk index.
pub const DIR_CHUNK: u32 = 1 << 31;
/// [`DirSlot`] of a /24 whose addresses the set's trie judges: its longer
/// prefixes found no room in the chunk pool (see `Dir4::build_within`).
pub const DIR_TRIE: u32 = 1 << 30;

/// 256 slots for the next 8 bits of the address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirChunk {
    /// Slots, by the byte of the address this level looks at.
    pub slots: [DirSlot; 256],
}

impl Default for DirChunk {
    fn default() -> DirChunk {
        DirChunk { slots: [0; 256] }
    }
}

/// IPv6 prefix tables (see docs/firewall.md), `[set 0, set 1]`: array of
/// [`V6Bucket`], each entry (a prefix or a marker of the binary search on
/// lengths) in one of its two buckets ([`v6_buckets`]), both fields in one
/// table. Sized to the rulesets ([`FW_V6_MIN_BUCKETS`] to
/// [`FW_V6_MAX_BUCKETS`]); a set uses the first [`V6Root::buckets`]. Where
/// the search of each field starts is in [`FwConfig::v6_roots`].
pub const FW_V6TAB: [&str; 2] = ["FW_V6TAB_0", "FW_V6TAB_1"];
/// The search trees of a set's IPv6 fields, `[set 0, set 1]`: array of
/// [`FW_V6_NODES`] [`V6Node`]s shared by every tree (one per distinct set
/// of lengths a search may go on with).
pub const FW_V6NODE: [&str; 2] = ["FW_V6NODE_0", "FW_V6NODE_1"];
/// Nodes per set: trees needing more leave the IPv6 prefixes in the tries.
pub const FW_V6_NODES: u32 = 1 << 16;
/// Buckets of a new firewall's IPv6 tables, grown on demand.
pub const FW_V6_MIN_BUCKETS: u32 = 16;
/// Most buckets per IPv6 table (4 entries each): beyond, the tries.
pub const FW_V6_MAX_BUCKETS: u32 = 1 << 20;
/// Most probes of a lookup: each probe at least halves the lengths left
/// (at most 128 above /0), so `floor(log2 128) + 1`.
pub const V6_MAX_PROBES: u32 = 8;
/// No node (a search that ends): in [`V6Node::left`], [`V6Root::root`],
/// and the next-node bits of [`V6Slot::key`].
pub const V6_NO_NODE: u32 = (1 << 22) - 1;
/// Next-node values from `V6_DIRECT + 1` to `V6_DIRECT + V6_DIRECT_MAX`
/// in [`V6Slot::key`]: the entry (of length L) heads a *direct block*, not
/// a tree: every listed prefix inside it is at most `stride = next -
/// V6_DIRECT` bits longer, and the block holds one leaf (rule + 1, the
/// answer of the search) for each value of the address's bits L to L +
/// stride, 16 leaves (`u32`, the bucket's first 64 bytes: a power of two,
/// so that the program's index into a bucket is a mask the verifier
/// bounds) per bucket from bucket [`V6Root::buckets`] + the entry's `rule`. A dense region (many listed /64s in one /48) is then
/// one read of a leaf that sits beside its neighbours, not one more probe
/// of a random bucket.
pub const V6_DIRECT: u32 = 1 << 21;
/// The widest stride of a direct block (2^16 leaves, 4,096 buckets).
pub const V6_DIRECT_MAX: u32 = 16;
/// Leaves per bucket of a direct block.
pub const V6_LEAVES_PER_BUCKET: u32 = 16;

/// Which leaf of a direct block at length `len` with stride `stride` holds
/// the address `(hi, lo)`: its bits `len` to `len + stride` (`len +
/// stride` at most 128, `stride` 1 to 16).
#[inline(always)]
pub const fn v6_leaf_index(hi: u64, lo: u64, len: u32, stride: u32) -> u32 {
    let end = len + stride;
    let bits = if end <= 64 {
        hi >> (64 - end)
    } else if len >= 64 {
        lo >> (128 - end)
    } else {
        (hi << (end - 64)) | (lo >> (128 - end))
    };
    (bits & ((1 << stride) - 1)) as u32
}

/// [`V6Slot::key`]: the bits of [`v6_tag`]; the node the search goes on
/// with after a hit is `key >> V6_NEXT_SHIFT`.
pub const V6_TAG_MASK: u32 = (1 << V6_NEXT_SHIFT) - 1;
/// See [`V6_TAG_MASK`].
pub const V6_NEXT_SHIFT: u32 = 10;

/// One entry of an IPv6 table: a prefix (or marker) of one field and length.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct V6Slot {
    /// The first 64 bits of the address, masked to the length, as a
    /// big-endian number.
    pub hi: u64,
    /// The last 64 bits, likewise.
    pub lo: u64,
    /// [`v6_tag`] of field and length, with the node where the search goes
    /// on after a hit here (a tree of the longer lengths of listed prefixes
    /// inside this one) above [`V6_NEXT_SHIFT`]; 0 for an unused slot.
    pub key: u32,
    /// The best rule of the longest listed prefix containing this one (the
    /// prefix itself, if listed): rule id + 1 (index + 1 into
    /// [`FW_DIR4_REFS`]), 0 for none.
    pub rule: u32,
}

/// Four entries (96 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct V6Bucket {
    /// The entries; unused slots are zero.
    pub slots: [V6Slot; 4],
}

/// A node of a search tree: the length probed here; a miss goes on with
/// `left` (shorter lengths), a hit with the entry's next node.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct V6Node {
    /// The prefix length probed here.
    pub len: u32,
    /// Node searched after a miss, [`V6_NO_NODE`] for none.
    pub left: u32,
    /// The mask of `len` bits over the first 64 bits of an address.
    pub mask_hi: u64,
    /// The same over the last 64 bits.
    pub mask_lo: u64,
}

/// Where the search of one IPv6 field of one set starts.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct V6Root {
    /// The rule of the field's /0 prefix + 1, 0 for none.
    pub zero: u32,
    /// The set's table uses its first `buckets` buckets.
    pub buckets: u32,
    /// The first node, [`V6_NO_NODE`] when the field has no length above /0.
    pub root: u32,
    /// Nonzero when the first node's length holds one entry only (every
    /// prefix of the field lies in one prefix of that length, as under an
    /// operator's /32): the search compares the address with `first`
    /// instead of probing the table for it.
    pub shared: u32,
    /// That entry, as the table holds it.
    pub first: V6Slot,
    /// A copy of node `root`, and one of the node a hit on `first` goes on
    /// with (when `shared` and that is a node): the search's first two
    /// steps then read no node from the map, two dependent loads fewer on
    /// every IPv6 frame. Nodes never change once written, so the copies
    /// only follow `root` and `first` (see `V6Root::copy_nodes`).
    pub node: V6Node,
    /// See [`V6Root::node`].
    pub next: V6Node,
}

impl V6Root {
    /// Fills [`V6Root::node`] and [`V6Root::next`] from `nodes`, the
    /// table's nodes.
    pub fn copy_nodes(&mut self, nodes: &[V6Node]) {
        let at = |n: u32| nodes.get(n as usize).copied().unwrap_or_default();
        self.node = at(self.root);
        self.next = if self.shared != 0 {
            at(self.first.key >> V6_NEXT_SHIFT)
        } else {
            V6Node::default()
        };
    }
}

impl Default for V6Root {
    fn default() -> V6Root {
        V6Root {
            zero: 0,
            buckets: 0,
            root: V6_NO_NODE,
            shared: 0,
            first: V6Slot::default(),
            node: V6Node::default(),
            next: V6Node::default(),
        }
    }
}

/// The tag of an entry of `field` (0 src, 1 dst) and length `len` (the low
/// bits of [`V6Slot::key`]).
#[inline(always)]
pub const fn v6_tag(field: u32, len: u32) -> u32 {
    (1 << 9) | ((field & 1) << 8) | (len & 0xff)
}

/// `hi`, `lo` (an address as two big-endian halves) masked to `len` bits
/// (userspace: the program uses the masks of [`V6Node`]).
#[inline(always)]
pub const fn v6_mask(hi: u64, lo: u64, len: u32) -> (u64, u64) {
    if len == 0 {
        (0, 0)
    } else if len < 64 {
        (hi & (u64::MAX << (64 - len)), 0)
    } else if len == 64 {
        (hi, 0)
    } else if len < 128 {
        (hi, lo & (u64::MAX << (128 - len)))
    } else {
        (hi, lo)
    }
}

/// The hash of an IPv6 entry (masked address halves and [`v6_tag`]) that
/// picks its first bucket ([`v6_bucket`]); [`v6_rehash`] of it picks the
/// second. No branches: the verifier would follow each.
#[inline(always)]
pub const fn v6_hash(hi: u64, lo: u64, tag: u32) -> u64 {
    (hi ^ lo.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(31) ^ (tag as u64))
        .wrapping_mul(0xbf58_476d_1ce4_e5b9)
}

/// The hash of an entry's second bucket, from [`v6_hash`]: the program
/// computes it only when the first bucket is full and does not hold the
/// entry.
#[inline(always)]
pub const fn v6_rehash(h: u64) -> u64 {
    (h ^ (h >> 31)).wrapping_mul(0x94d0_49bb_1331_11eb)
}

/// Hash `h` onto `0..count` by a multiply and a shift (any `count`, not
/// only powers of two).
#[inline(always)]
pub const fn v6_bucket(h: u64, count: u32) -> u32 {
    (((h >> 32) * count as u64) >> 32) as u32
}

/// The two buckets, among the first `count`, an IPv6 entry (masked
/// address halves and [`v6_tag`]) may live in, the same on both sides. The
/// table is built so that an entry sits in its second bucket only if its
/// first is full.
#[inline(always)]
pub const fn v6_buckets(hi: u64, lo: u64, tag: u32, count: u32) -> [u32; 2] {
    let h = v6_hash(hi, lo, tag);
    [v6_bucket(h, count), v6_bucket(v6_rehash(h), count)]
}

/// Entries per host map; beyond this, host prefixes stay in the trie.
pub const FW_MAX_HOSTS: u32 = 1 << 20;

/// [`FwConfig::present`] bit: the prefix trie of `field` (0 src4, 1 dst4,
/// 2 src6, 3 dst6) in set `set` holds entries.
pub const fn present_trie(set: usize, field: usize) -> u32 {
    1 << (set * 8 + field)
}

/// [`FwConfig::present`] bit: the host map of `field` (0 src4 or 2 src6) in
/// set `set` holds entries.
pub const fn present_host(set: usize, field: usize) -> u32 {
    1 << (set * 8 + 4 + field)
}

/// [`FwConfig::present`] bit: the IPv4 host table of set `set` holds entries.
pub const fn present_table(set: usize) -> u32 {
    1 << (set * 8 + 5)
}

/// [`FwConfig::present`] bit: the DIR table of `field` (0 src4, 1 dst4) in
/// set `set` holds entries and replaces that field's trie; for `field` 2
/// (src6) and 3 (dst6), the IPv6 table ([`FW_V6TAB`]) does.
pub const fn present_dir(set: usize, field: usize) -> u32 {
    1 << (set * 8 + 16 + field)
}

/// General rules in judging order, `[set 0, set 1]`: array of [`RuleRef`] by bit.
pub const FW_GEN_RULES: [&str; 2] = ["FW_GEN_RULES_0", "FW_GEN_RULES_1"];
/// Source-prefix vectors (LPM, value [`Bitmap`]): rules whose src covers the address.
pub const FW_GEN_SRC4: [&str; 2] = ["FW_GEN_SRC4_0", "FW_GEN_SRC4_1"];
/// See [`FW_GEN_SRC4`].
pub const FW_GEN_DST4: [&str; 2] = ["FW_GEN_DST4_0", "FW_GEN_DST4_1"];
/// See [`FW_GEN_SRC4`].
pub const FW_GEN_SRC6: [&str; 2] = ["FW_GEN_SRC6_0", "FW_GEN_SRC6_1"];
/// See [`FW_GEN_SRC4`].
pub const FW_GEN_DST6: [&str; 2] = ["FW_GEN_DST6_0", "FW_GEN_DST6_1"];
/// Vectors by IP protocol (256 entries).
pub const FW_GEN_PROTO: [&str; 2] = ["FW_GEN_PROTO_0", "FW_GEN_PROTO_1"];
/// LPM trie of port prefixes (2-byte key) -> segment index, for source ports.
pub const FW_GEN_SPORT_IDX: [&str; 2] = ["FW_GEN_SPORT_IDX_0", "FW_GEN_SPORT_IDX_1"];
/// See [`FW_GEN_SPORT_IDX`].
pub const FW_GEN_DPORT_IDX: [&str; 2] = ["FW_GEN_DPORT_IDX_0", "FW_GEN_DPORT_IDX_1"];
/// Segment index -> vector, for source ports.
pub const FW_GEN_SPORT_VEC: [&str; 2] = ["FW_GEN_SPORT_VEC_0", "FW_GEN_SPORT_VEC_1"];
/// See [`FW_GEN_SPORT_VEC`].
pub const FW_GEN_DPORT_VEC: [&str; 2] = ["FW_GEN_DPORT_VEC_0", "FW_GEN_DPORT_VEC_1"];
/// Source MAC (8-byte key, MAC then zeros) -> vector.
pub const FW_GEN_SMAC: [&str; 2] = ["FW_GEN_SMAC_0", "FW_GEN_SMAC_1"];
/// Hash of VLAN id -> vector, for the ids rules name; others (and untagged
/// frames) use [`WILD_VLAN`].
pub const FW_GEN_VLAN: [&str; 2] = ["FW_GEN_VLAN_0", "FW_GEN_VLAN_1"];
/// Vectors for misses, indexed by the `WILD_*` constants.
pub const FW_GEN_WILD: [&str; 2] = ["FW_GEN_WILD_0", "FW_GEN_WILD_1"];

/// Most general rules (bits in a [`Bitmap`]).
pub const FW_MAX_GENERAL: u32 = 1024;
/// u64 words in a [`Bitmap`].
pub const BITMAP_WORDS: usize = 16;
/// Port segments: at most two boundaries per rule and field, plus one.
pub const FW_MAX_PORT_SEGMENTS: u32 = 2 * FW_MAX_GENERAL + 1;
/// [`FW_GEN_WILD`]: rules without a src condition.
pub const WILD_SRC: u32 = 0;
/// [`FW_GEN_WILD`]: rules without a dst condition.
pub const WILD_DST: u32 = 1;
/// [`FW_GEN_WILD`]: rules without an smac condition.
pub const WILD_SMAC: u32 = 2;
/// [`FW_GEN_WILD`]: rules without ports (for frames that carry none).
pub const WILD_NO_PORTS: u32 = 3;
/// [`FW_GEN_WILD`]: every rule of the set.
pub const WILD_ALL: u32 = 4;
/// [`FW_GEN_WILD`]: rules without a vlan condition.
pub const WILD_VLAN: u32 = 5;
/// Number of [`FW_GEN_WILD`] entries.
pub const WILD_COUNT: u32 = 6;

/// One bit per general rule, bit i = the i-th rule in judging order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bitmap {
    /// Bits, little end first.
    pub words: [u64; BITMAP_WORDS],
}

impl Default for Bitmap {
    fn default() -> Bitmap {
        Bitmap {
            words: [0; BITMAP_WORDS],
        }
    }
}

impl Bitmap {
    /// Sets bit `i`.
    pub fn set(&mut self, i: usize) {
        self.words[i / 64] |= 1 << (i % 64);
    }

    /// Whether bit `i` is set.
    pub fn get(&self, i: usize) -> bool {
        self.words[i / 64] & (1 << (i % 64)) != 0
    }

    /// ORs `other` into this one.
    pub fn or(&mut self, other: &Bitmap) {
        for (a, b) in self.words.iter_mut().zip(other.words) {
            *a |= b;
        }
    }
}

/// Every map of the firewall, pinned with it.
pub const FW_MAPS: [&str; 59] = [
    FW_CONFIG,
    FW_TRACE,
    FW_RULE_STATS,
    FW_RULES,
    FW_GEN_RECORDS,
    FW_OUTCOMES,
    FW_BUCKETS,
    FW_SRC4[0],
    FW_SRC4[1],
    FW_DST4[0],
    FW_DST4[1],
    FW_SRC6[0],
    FW_SRC6[1],
    FW_DST6[0],
    FW_DST6[1],
    FW_HOST_SRC4[0],
    FW_HOST_SRC4[1],
    FW_HOST_SRC6[0],
    FW_HOST_SRC6[1],
    FW_HOST_TABLE4[0],
    FW_HOST_TABLE4[1],
    FW_HOST_FILTER4[0],
    FW_HOST_FILTER4[1],
    FW_DIR4_L1[0],
    FW_DIR4_L1[1],
    FW_DIR4_CHUNKS[0],
    FW_DIR4_CHUNKS[1],
    FW_DIR4_REFS[0],
    FW_DIR4_REFS[1],
    FW_V6TAB[0],
    FW_V6TAB[1],
    FW_V6NODE[0],
    FW_V6NODE[1],
    FW_GEN_RULES[0],
    FW_GEN_RULES[1],
    FW_GEN_SRC4[0],
    FW_GEN_SRC4[1],
    FW_GEN_DST4[0],
    FW_GEN_DST4[1],
    FW_GEN_SRC6[0],
    FW_GEN_SRC6[1],
    FW_GEN_DST6[0],
    FW_GEN_DST6[1],
    FW_GEN_PROTO[0],
    FW_GEN_PROTO[1],
    FW_GEN_SPORT_IDX[0],
    FW_GEN_SPORT_IDX[1],
    FW_GEN_DPORT_IDX[0],
    FW_GEN_DPORT_IDX[1],
    FW_GEN_SPORT_VEC[0],
    FW_GEN_SPORT_VEC[1],
    FW_GEN_DPORT_VEC[0],
    FW_GEN_DPORT_VEC[1],
    FW_GEN_SMAC[0],
    FW_GEN_SMAC[1],
    FW_GEN_VLAN[0],
    FW_GEN_VLAN[1],
    FW_GEN_WILD[0],
    FW_GEN_WILD[1],
];

/// Largest rule id + 1 (rule-file line numbers are ids): the most rule
/// ids a firewall can grow to. The object's maps are declared at this size;
/// a stage is loaded with them sized to its capacity ([`FW_SIZED_MAPS`]).
pub const FW_MAX_RULE_IDS: u32 = 1 << 21;
/// Rule ids of a new firewall unless asked for more (`--max-rules`):
/// grown on demand, by powers of two, when a change needs larger ids.
pub const FW_DEFAULT_RULE_IDS: u32 = 1024;

/// Maps sized to the firewall's capacity in rule ids, not declared size:
/// created with [`sized_entries`] entries, grown (copied into bigger maps,
/// the stage reloaded) when the capacity grows. The DIR chunk pools, host
/// maps and host tables are sized to the prefixes instead ([`FW_POOL_MAPS`]).
pub const FW_SIZED_MAPS: [&str; 2] = [FW_RULE_STATS, FW_RULES];

/// Maps sized to the ruleset's prefixes (DIR chunks, source hosts), grown
/// when a ruleset needs more: [`pool_entries`].
pub const FW_POOL_MAPS: [&str; 13] = [
    FW_BUCKETS,
    FW_DIR4_REFS[0],
    FW_DIR4_REFS[1],
    FW_DIR4_CHUNKS[0],
    FW_DIR4_CHUNKS[1],
    FW_HOST_SRC4[0],
    FW_HOST_SRC4[1],
    FW_HOST_SRC6[0],
    FW_HOST_SRC6[1],
    FW_HOST_TABLE4[0],
    FW_HOST_TABLE4[1],
    FW_HOST_FILTER4[0],
    FW_HOST_FILTER4[1],
];

/// Entries of a new host map: grown for more hosts.
pub const FW_MIN_HOSTS: u32 = 64;
/// Entries of a new [`FW_DIR4_REFS`]: grown for more rules.
pub const FW_MIN_REFS: u32 = 64;

/// Entries of sized map `map` ([`FW_SIZED_MAPS`]) for a firewall of
/// `capacity` rule ids (a power of two); `None` for other maps.
pub fn sized_entries(map: &str, capacity: u32) -> Option<u32> {
    (FW_SIZED_MAPS.contains(&map)).then_some(capacity)
}

/// What a ruleset needs of the maps sized to it, not to its ids
/// ([`FW_POOL_MAPS`], [`pool_entries`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolNeeds {
    /// Chunks of its DIR table.
    pub chunks: u32,
    /// Distinct IPv4 source hosts (/32 source prefix rules) outside the
    /// /24s dense enough for the DIR table to take theirs.
    pub hosts4: u32,
    /// Distinct IPv6 source hosts (/128 source prefix rules).
    pub hosts6: u32,
    /// Whether it has a rate-limit rule ([`FW_BUCKETS`]).
    pub rate_limits: bool,
    /// IPv4 prefix rules its DIR tables may name ([`FW_DIR4_REFS`]): all
    /// but the source hosts.
    pub refs: u32,
}

/// Entries of pool map `map` ([`FW_POOL_MAPS`]) for a ruleset that needs
/// `needs` (its DIR table's `chunks` chunks, its `hosts4` IPv4 and
/// `hosts6` IPv6 source hosts, its rate limits); `None` for other maps.
/// [`FW_BUCKETS`]: [`FW_MAX_BUCKETS`] with rate limits, else
/// [`FW_MIN_BUCKETS`]. The others are powers of two: the pools
/// hold at least [`FW_DIR4_MIN_CHUNKS`] chunks, at most
/// [`FW_DIR4_MAX_CHUNKS`]; a host map holds every host (the table takes
/// most IPv4 ones, the map the overflow, but a rebuild puts all of them in
/// the prefix table when the map could not hold them all); the host table
/// has a bucket for every three hosts, as the rebuild fills it, and its
/// filter a word for every bucket.
pub fn pool_entries(map: &str, needs: &PoolNeeds) -> Option<u32> {
    let PoolNeeds {
        chunks,
        hosts4,
        hosts6,
        rate_limits,
        refs,
    } = *needs;
    let hosts = |n: u32| n.next_power_of_two().clamp(FW_MIN_HOSTS, FW_MAX_HOSTS);
    if map == FW_BUCKETS {
        Some(if rate_limits {
            FW_MAX_BUCKETS
        } else {
            FW_MIN_BUCKETS
        })
    } else if FW_DIR4_REFS.contains(&map) {
        Some(refs.next_power_of_two().clamp(FW_MIN_REFS, FW_MAX_RULE_IDS))
    } else if FW_DIR4_CHUNKS.contains(&map) {
        Some(
            chunks
                .next_power_of_two()
                .clamp(FW_DIR4_MIN_CHUNKS, FW_DIR4_MAX_CHUNKS),
        )
    } else if FW_HOST_SRC4.contains(&map) {
        Some(hosts(hosts4))
    } else if FW_HOST_SRC6.contains(&map) {
        Some(hosts(hosts6))
    } else if FW_HOST_TABLE4.contains(&map) || FW_HOST_FILTER4.contains(&map) {
        Some(
            (hosts4 / 3)
                .max(1)
                .next_power_of_two()
                .clamp(1 << TABLE_BITS.0, FW_HOST_BUCKETS),
        )
    } else {
        None
    }
}
/// Entries per prefix trie.
pub const FW_MAX_PREFIXES: u32 = 1 << 21;

/// Policy values for [`FwConfig`] fields.
pub const POLICY_PASS: u32 = 0;
/// See [`POLICY_PASS`].
pub const POLICY_DROP: u32 = 1;
/// Later fragments judged by layer-3 rules ([`FwConfig::fragments`] only).
pub const POLICY_L3: u32 = 2;

/// Rule actions in [`RuleRef::action`].
pub const ACTION_ALLOW: u32 = 0;
/// See [`ACTION_ALLOW`].
pub const ACTION_DENY: u32 = 1;
/// See [`ACTION_ALLOW`].
pub const ACTION_RATE_LIMIT: u32 = 2;
/// Into the AF_XDP socket bound to the frame's RX queue (the interface's
/// XSKMAP, [`crate::xsk`]); a frame whose queue has no socket goes on down
/// the chain as an allowed one would ([`Outcome::NoSocket`]).
pub const ACTION_TO_USERSPACE: u32 = 3;

/// [`FwConfig::active`] bit: prefix tries of set 1 (else set 0).
pub const ACTIVE_PREFIX: u32 = 1;
/// [`FwConfig::active`] bit: general-rule maps of set 1 (else set 0).
pub const ACTIVE_GENERAL: u32 = 2;

/// Firewall settings. Only `active` changes while packets flow, and it is one
/// u32, so a reader never sees half of a switch.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FwConfig {
    /// Sets in use: [`ACTIVE_PREFIX`] and [`ACTIVE_GENERAL`] bits.
    pub active: u32,
    /// [`POLICY_PASS`] or [`POLICY_DROP`] when no rule matches.
    pub default_policy: u32,
    /// Later fragments: pass, drop or [`POLICY_L3`].
    pub fragments: u32,
    /// Non-IP frames: pass or drop.
    pub non_ip: u32,
    /// Malformed IP frames: pass or drop.
    pub malformed: u32,
    /// Nonzero: write [`FwTrace`] for every frame.
    pub trace: u32,
    /// General rules in set 0 and set 1 (0: skip the bit-vector step).
    pub general: [u32; 2],
    /// Id the next added rule gets (userspace bookkeeping, shared by processes).
    pub next_id: u32,
    /// Which prefix maps hold entries ([`present_trie`], [`present_host`]):
    /// empty ones are not looked up.
    pub present: u32,
    /// Next insertion sequence number.
    pub next_seq: u64,
    /// Highest `prio` of any prefix rule per trie (src4, dst4, src6, dst6)
    /// since the last rebuild: a new rule at or above it cannot outrank a
    /// longer prefix, so it is added in place.
    pub max_prio: [u32; 4],
    /// Per prefix set: the IPv4 host table uses its first `1 << bits`
    /// buckets ([`host_buckets`]), sized to its hosts: a small blocklist
    /// stays in a few pages (TLB entries) instead of spreading over 16 MB.
    pub table_bits: [u32; 2],
    /// Per prefix set: chunks of [`FW_DIR4_CHUNKS`] in use (the next free one).
    pub dir_chunks: [u32; 2],
    /// Per prefix set: entries of [`FW_DIR4_REFS`] in use (the next free
    /// dense number).
    pub dir_refs: [u32; 2],
    /// Per prefix set, per field (src, dst): where the search of the IPv6
    /// table starts ([`FW_V6TAB`]). Here rather than in a map of their own:
    /// a program may use at most 64 maps.
    pub v6_roots: [[V6Root; 2]; 2],
}

impl FwConfig {
    /// The prefix-trie set packets use (0 or 1).
    pub fn prefix_set(&self) -> usize {
        (self.active & ACTIVE_PREFIX) as usize
    }

    /// The general-rule set packets use (0 or 1).
    pub fn general_set(&self) -> usize {
        ((self.active & ACTIVE_GENERAL) >> 1) as usize
    }
}

/// A rule as the kernel needs it: rank, id and action.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleRef {
    /// `(prio << 32) | seq`: lower is judged first.
    pub rank: u64,
    /// Rule id.
    pub id: u32,
    /// [`ACTION_ALLOW`], [`ACTION_DENY`], [`ACTION_RATE_LIMIT`] or
    /// [`ACTION_TO_USERSPACE`].
    pub action: u32,
    /// Packets per second for rate limits.
    pub pps: u32,
    /// In a prefix trie: the length of the entry's own prefix (a lookup
    /// returns the longest match; this says which one). Zero elsewhere.
    pub prefix_len: u32,
}

/// Hits of one rule on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleHits {
    /// Frames the rule decided.
    pub packets: u64,
    /// Their bytes.
    pub bytes: u64,
    /// `bpf_ktime_get_ns()` of the last one (CLOCK_MONOTONIC), 0 if none.
    pub last_ns: u64,
    /// Of `packets`, those a rate limit dropped (the rest passed).
    pub limited: u64,
}

/// Token bucket of one (rate-limit rule, source) pair, in nanotokens (a
/// packet costs 1e9; `elapsed_ns * pps` refills up to `pps * 1e9`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// Nanotokens left after the last frame.
    pub credit: u64,
    /// `bpf_ktime_get_ns()` of the last frame that looked at the bucket.
    pub last_ns: u64,
}

/// Key of [`FW_BUCKETS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BucketKey {
    /// The rate-limit rule's id.
    pub rule: u32,
    /// 1 for an IPv6 source, 0 for IPv4.
    pub v6: u32,
    /// The source address; IPv4 in the first four bytes, the rest zero.
    pub addr: [u8; 16],
}

/// A rule as stored in [`FW_RULES`] (an array by rule id): a prefix rule
/// (one `src` or `dst` prefix and nothing else) whole, a general rule as
/// [`REC_GENERAL`] with its full record in [`FW_GEN_RECORDS`]. `flags`
/// says which prefix it holds, and [`REC_USED`] that the id holds a rule.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleRecord {
    /// Insertion order; a general rule's full record has the same.
    pub seq: u64,
    /// Priority.
    pub prio: u32,
    /// Packets per second of a rate limit.
    pub pps: u32,
    /// `REC_*` bits: [`REC_USED`], [`REC_GENERAL`], or the prefix's field
    /// and family ([`REC_SRC`], [`REC_SRC_V6`], [`REC_DST`], [`REC_DST_V6`]).
    pub flags: u32,
    /// [`ACTION_ALLOW`], [`ACTION_DENY`], [`ACTION_RATE_LIMIT`] or
    /// [`ACTION_TO_USERSPACE`].
    pub action: u8,
    /// Prefix length.
    pub len: u8,
    /// Padding, zero.
    pub _pad: u16,
    /// Prefix address bytes (IPv4 in the first 4).
    pub addr: [u8; 16],
}

/// A rule with every field, as stored in [`FW_GEN_RECORDS`] for the rules
/// a [`RuleRecord`] cannot hold; `flags` says which fields are set.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GeneralRecord {
    /// Insertion order: that of the [`RuleRecord`] that points here.
    pub seq: u64,
    /// Priority.
    pub prio: u32,
    /// [`ACTION_ALLOW`], [`ACTION_DENY`], [`ACTION_RATE_LIMIT`] or
    /// [`ACTION_TO_USERSPACE`].
    pub action: u32,
    /// Packets per second of a rate limit.
    pub pps: u32,
    /// `REC_*` bits.
    pub flags: u32,
    /// Source address bytes (IPv4 in the first 4).
    pub src: [u8; 16],
    /// Destination address bytes.
    pub dst: [u8; 16],
    /// Source prefix length.
    pub src_len: u8,
    /// Destination prefix length.
    pub dst_len: u8,
    /// IP protocol.
    pub proto: u8,
    /// Padding, zero.
    pub _pad: u8,
    /// Source ports, inclusive.
    pub sport: [u16; 2],
    /// Destination ports, inclusive.
    pub dport: [u16; 2],
    /// Source MAC.
    pub smac: [u8; 6],
    /// Outer VLAN id.
    pub vlan: u16,
    /// Padding to 8-byte alignment, zero.
    pub _pad2: u32,
}

/// [`RuleRecord::flags`] and [`GeneralRecord::flags`] bits.
pub const REC_SRC: u32 = 1;
/// See [`REC_SRC`].
pub const REC_SRC_V6: u32 = 1 << 1;
/// See [`REC_SRC`].
pub const REC_DST: u32 = 1 << 2;
/// See [`REC_SRC`].
pub const REC_DST_V6: u32 = 1 << 3;
/// See [`REC_SRC`].
pub const REC_PROTO: u32 = 1 << 4;
/// See [`REC_SRC`].
pub const REC_SPORT: u32 = 1 << 5;
/// See [`REC_SRC`].
pub const REC_DPORT: u32 = 1 << 6;
/// See [`REC_SRC`].
pub const REC_SMAC: u32 = 1 << 7;
/// See [`REC_SRC`].
pub const REC_VLAN: u32 = 1 << 8;
/// [`RuleRecord`] of a general rule: its full record is the
/// [`GeneralRecord`] of the same id and `seq` in [`FW_GEN_RECORDS`].
pub const REC_GENERAL: u32 = 1 << 30;
/// The record holds a rule: [`FW_RULES`] is an array by id, unused ids
/// are zero.
pub const REC_USED: u32 = 1 << 31;

/// Why the firewall decided; index of [`FW_OUTCOMES`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A rule matched.
    Rule = 0,
    /// A rate-limit rule matched and the bucket was empty.
    RateLimited = 1,
    /// No rule matched.
    Default = 2,
    /// Not IP.
    NonIp = 3,
    /// Later fragment under a pass/drop fragment policy.
    Fragment = 4,
    /// Truncated or inconsistent headers.
    Malformed = 5,
    /// A `to-userspace` rule matched but no AF_XDP socket is bound to the
    /// frame's RX queue: the frame went on down the chain (counted as the
    /// stage's "next", like an allowed one). Frames that found a socket
    /// are [`Outcome::Rule`] with action redirect.
    NoSocket = 6,
}

impl Outcome {
    /// Number of outcomes.
    pub const COUNT: u32 = 7;
}

/// The last decision, for simulation and tests.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FwTrace {
    /// XDP action returned.
    pub action: u32,
    /// [`Outcome`].
    pub outcome: u32,
    /// Deciding rule id, or [`NO_RULE`].
    pub rule: u32,
    /// Padding, zero.
    pub _pad: u32,
}

/// [`FwTrace::rule`] when no rule decided.
pub use crate::dump::NO_RULE;

const _: () = assert!(core::mem::size_of::<RuleRecord>() == 40);
const _: () = assert!(core::mem::size_of::<GeneralRecord>() == 80);
const _: () = assert!(core::mem::size_of::<V6Bucket>() == 96);
const _: () = assert!(core::mem::size_of::<V6Node>() == 24);
const _: () = assert!(core::mem::size_of::<V6Root>() == 88);
const _: () = assert!(FW_V6_NODES <= V6_DIRECT && V6_DIRECT + V6_DIRECT_MAX < V6_NO_NODE);
const _: () = assert!(core::mem::size_of::<FwConfig>() == 440);
const _: () = assert!(core::mem::size_of::<Bucket>() == 16);
const _: () = assert!(core::mem::size_of::<BucketKey>() == 24);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are #[repr(C)] with only integer fields and no implicit padding.
    unsafe impl aya::Pod for super::FwConfig {}
    unsafe impl aya::Pod for super::RuleRef {}
    unsafe impl aya::Pod for super::HostBucket {}
    unsafe impl aya::Pod for super::DirChunk {}
    unsafe impl aya::Pod for super::V6Bucket {}
    unsafe impl aya::Pod for super::V6Root {}
    unsafe impl aya::Pod for super::V6Node {}
    unsafe impl aya::Pod for super::FwTrace {}
    unsafe impl aya::Pod for super::Bitmap {}
    unsafe impl aya::Pod for super::RuleHits {}
    unsafe impl aya::Pod for super::RuleRecord {}
    unsafe impl aya::Pod for super::GeneralRecord {}
    unsafe impl aya::Pod for super::Bucket {}
    unsafe impl aya::Pod for super::BucketKey {}
}
