//! General rules (ports, proto, smac, vlan, src and dst together) by bit
//! vectors: each field gives the vector of rules it satisfies, the AND of
//! all of them, scanned from bit 0, gives the first matching rule. The cost
//! does not depend on how many rules there are (docs/firewall.md).

use aya_ebpf::{
    macros::map,
    maps::{
        lpm_trie::{Key, LpmTrie},
        Array, HashMap,
    },
};
use xdpkit_common::firewall::{
    Bitmap, RuleRef, BITMAP_WORDS, FW_MAX_GENERAL, FW_MAX_PORT_SEGMENTS, WILD_ALL, WILD_COUNT,
    WILD_DST, WILD_NO_PORTS, WILD_SMAC, WILD_SRC, WILD_VLAN,
};

use super::parse::{IpFrame, NO_VLAN};

const NO_PREALLOC: u32 = 1;
const GEN_PREFIXES: u32 = 4 * FW_MAX_GENERAL;
/// A port segment is at most 30 aligned port prefixes; a few segments are that bad.
const PORT_PREFIXES: u32 = 65536;

macro_rules! set_maps {
    ($($name:literal => $ident:ident : $ty:ty = $init:expr;)*) => {
        $(
            #[map(name = $name)]
            static $ident: $ty = $init;
        )*
    };
}

set_maps! {
    "FW_GEN_RULES_0" => RULES_0: Array<RuleRef> = Array::with_max_entries(FW_MAX_GENERAL, 0);
    "FW_GEN_RULES_1" => RULES_1: Array<RuleRef> = Array::with_max_entries(FW_MAX_GENERAL, 0);
    "FW_GEN_SRC4_0" => SRC4_0: LpmTrie<[u8; 4], Bitmap> = LpmTrie::with_max_entries(GEN_PREFIXES, NO_PREALLOC);
    "FW_GEN_SRC4_1" => SRC4_1: LpmTrie<[u8; 4], Bitmap> = LpmTrie::with_max_entries(GEN_PREFIXES, NO_PREALLOC);
    "FW_GEN_DST4_0" => DST4_0: LpmTrie<[u8; 4], Bitmap> = LpmTrie::with_max_entries(GEN_PREFIXES, NO_PREALLOC);
    "FW_GEN_DST4_1" => DST4_1: LpmTrie<[u8; 4], Bitmap> = LpmTrie::with_max_entries(GEN_PREFIXES, NO_PREALLOC);
    "FW_GEN_SRC6_0" => SRC6_0: LpmTrie<[u8; 16], Bitmap> = LpmTrie::with_max_entries(GEN_PREFIXES, NO_PREALLOC);
    "FW_GEN_SRC6_1" => SRC6_1: LpmTrie<[u8; 16], Bitmap> = LpmTrie::with_max_entries(GEN_PREFIXES, NO_PREALLOC);
    "FW_GEN_DST6_0" => DST6_0: LpmTrie<[u8; 16], Bitmap> = LpmTrie::with_max_entries(GEN_PREFIXES, NO_PREALLOC);
    "FW_GEN_DST6_1" => DST6_1: LpmTrie<[u8; 16], Bitmap> = LpmTrie::with_max_entries(GEN_PREFIXES, NO_PREALLOC);
    "FW_GEN_PROTO_0" => PROTO_0: Array<Bitmap> = Array::with_max_entries(256, 0);
    "FW_GEN_PROTO_1" => PROTO_1: Array<Bitmap> = Array::with_max_entries(256, 0);
    "FW_GEN_SPORT_IDX_0" => SPORT_IDX_0: LpmTrie<[u8; 2], u32> = LpmTrie::with_max_entries(PORT_PREFIXES, NO_PREALLOC);
    "FW_GEN_SPORT_IDX_1" => SPORT_IDX_1: LpmTrie<[u8; 2], u32> = LpmTrie::with_max_entries(PORT_PREFIXES, NO_PREALLOC);
    "FW_GEN_DPORT_IDX_0" => DPORT_IDX_0: LpmTrie<[u8; 2], u32> = LpmTrie::with_max_entries(PORT_PREFIXES, NO_PREALLOC);
    "FW_GEN_DPORT_IDX_1" => DPORT_IDX_1: LpmTrie<[u8; 2], u32> = LpmTrie::with_max_entries(PORT_PREFIXES, NO_PREALLOC);
    "FW_GEN_SPORT_VEC_0" => SPORT_VEC_0: Array<Bitmap> = Array::with_max_entries(FW_MAX_PORT_SEGMENTS, 0);
    "FW_GEN_SPORT_VEC_1" => SPORT_VEC_1: Array<Bitmap> = Array::with_max_entries(FW_MAX_PORT_SEGMENTS, 0);
    "FW_GEN_DPORT_VEC_0" => DPORT_VEC_0: Array<Bitmap> = Array::with_max_entries(FW_MAX_PORT_SEGMENTS, 0);
    "FW_GEN_DPORT_VEC_1" => DPORT_VEC_1: Array<Bitmap> = Array::with_max_entries(FW_MAX_PORT_SEGMENTS, 0);
    "FW_GEN_SMAC_0" => SMAC_0: HashMap<[u8; 8], Bitmap> = HashMap::with_max_entries(FW_MAX_GENERAL, 0);
    "FW_GEN_SMAC_1" => SMAC_1: HashMap<[u8; 8], Bitmap> = HashMap::with_max_entries(FW_MAX_GENERAL, 0);
    "FW_GEN_VLAN_0" => VLAN_0: HashMap<u32, Bitmap> = HashMap::with_max_entries(FW_MAX_GENERAL, 0);
    "FW_GEN_VLAN_1" => VLAN_1: HashMap<u32, Bitmap> = HashMap::with_max_entries(FW_MAX_GENERAL, 0);
    "FW_GEN_WILD_0" => WILD_0: Array<Bitmap> = Array::with_max_entries(WILD_COUNT, 0);
    "FW_GEN_WILD_1" => WILD_1: Array<Bitmap> = Array::with_max_entries(WILD_COUNT, 0);
}

/// The maps of one set.
struct Set {
    rules: &'static Array<RuleRef>,
    src4: &'static LpmTrie<[u8; 4], Bitmap>,
    dst4: &'static LpmTrie<[u8; 4], Bitmap>,
    src6: &'static LpmTrie<[u8; 16], Bitmap>,
    dst6: &'static LpmTrie<[u8; 16], Bitmap>,
    proto: &'static Array<Bitmap>,
    sport_idx: &'static LpmTrie<[u8; 2], u32>,
    dport_idx: &'static LpmTrie<[u8; 2], u32>,
    sport_vec: &'static Array<Bitmap>,
    dport_vec: &'static Array<Bitmap>,
    smac: &'static HashMap<[u8; 8], Bitmap>,
    vlan: &'static HashMap<u32, Bitmap>,
    wild: &'static Array<Bitmap>,
}

/// The first general rule of set `set` that matches `ip`. Each set gets
/// its own inlined copy so every map reference is a constant the verifier
/// can follow.
#[inline(always)]
pub fn first_match(set: u32, ip: &IpFrame) -> Option<&'static RuleRef> {
    if set == 0 {
        first_match_in(
            &Set {
                rules: &RULES_0,
                src4: &SRC4_0,
                dst4: &DST4_0,
                src6: &SRC6_0,
                dst6: &DST6_0,
                proto: &PROTO_0,
                sport_idx: &SPORT_IDX_0,
                dport_idx: &DPORT_IDX_0,
                sport_vec: &SPORT_VEC_0,
                dport_vec: &DPORT_VEC_0,
                smac: &SMAC_0,
                vlan: &VLAN_0,
                wild: &WILD_0,
            },
            ip,
        )
    } else {
        first_match_in(
            &Set {
                rules: &RULES_1,
                src4: &SRC4_1,
                dst4: &DST4_1,
                src6: &SRC6_1,
                dst6: &DST6_1,
                proto: &PROTO_1,
                sport_idx: &SPORT_IDX_1,
                dport_idx: &DPORT_IDX_1,
                sport_vec: &SPORT_VEC_1,
                dport_vec: &DPORT_VEC_1,
                smac: &SMAC_1,
                vlan: &VLAN_1,
                wild: &WILD_1,
            },
            ip,
        )
    }
}

#[inline(always)]
fn first_match_in(s: &Set, ip: &IpFrame) -> Option<&'static RuleRef> {
    let all = s.wild.get(WILD_ALL)?;
    let src = if ip.v6 {
        s.src6.get(&Key::new(128, ip.src))
    } else {
        s.src4
            .get(&Key::new(32, [ip.src[0], ip.src[1], ip.src[2], ip.src[3]]))
    };
    let src = match src {
        Some(v) => v,
        None => s.wild.get(WILD_SRC)?,
    };
    let dst = if ip.v6 {
        s.dst6.get(&Key::new(128, ip.dst))
    } else {
        s.dst4
            .get(&Key::new(32, [ip.dst[0], ip.dst[1], ip.dst[2], ip.dst[3]]))
    };
    let dst = match dst {
        Some(v) => v,
        None => s.wild.get(WILD_DST)?,
    };
    let proto = s.proto.get(u32::from(ip.proto))?;
    let (sport, dport) = if ip.has_ports {
        let si = *s.sport_idx.get(&Key::new(16, ip.sport.to_be_bytes()))?;
        let di = *s.dport_idx.get(&Key::new(16, ip.dport.to_be_bytes()))?;
        (s.sport_vec.get(si)?, s.dport_vec.get(di)?)
    } else {
        let none = s.wild.get(WILD_NO_PORTS)?;
        (none, none)
    };
    let mac = [
        ip.smac[0], ip.smac[1], ip.smac[2], ip.smac[3], ip.smac[4], ip.smac[5], 0, 0,
    ];
    let smac = match s.smac.get_ptr(&mac) {
        // SAFETY: a value pointer valid for this program run; userspace
        // replaces sets only while they are inactive.
        Some(v) => unsafe { &*v },
        None => s.wild.get(WILD_SMAC)?,
    };
    let tagged = if ip.vlan == NO_VLAN {
        None
    } else {
        s.vlan.get_ptr(&ip.vlan)
    };
    let vlan = match tagged {
        // SAFETY: as for smac above.
        Some(v) => unsafe { &*v },
        None => s.wild.get(WILD_VLAN)?,
    };
    for w in 0..BITMAP_WORDS {
        let bits = all.words[w]
            & src.words[w]
            & dst.words[w]
            & proto.words[w]
            & sport.words[w]
            & dport.words[w]
            & smac.words[w]
            & vlan.words[w];
        if bits != 0 {
            let bit = (w as u32) * 64 + bits.trailing_zeros();
            return s.rules.get(bit);
        }
    }
    None
}
