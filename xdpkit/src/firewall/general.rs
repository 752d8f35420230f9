//! Compiling general rules (anything but a lone src or dst prefix) into the
//! kernel's bit vectors (docs/firewall.md), and writing them into one set.

use std::{collections::BTreeMap, os::fd::AsFd as _};

use aya::maps::{lpm_trie::Key, HashMap, LpmTrie, Map, MapData};
use ipnet::IpNet;
use xdpkit_common::firewall::{
    Bitmap, RuleRef, FW_GEN_DPORT_IDX, FW_GEN_DPORT_VEC, FW_GEN_DST4, FW_GEN_DST6, FW_GEN_PROTO,
    FW_GEN_RULES, FW_GEN_SMAC, FW_GEN_SPORT_IDX, FW_GEN_SPORT_VEC, FW_GEN_SRC4, FW_GEN_SRC6,
    FW_GEN_VLAN, FW_GEN_WILD, FW_MAX_GENERAL, VLAN_UNTAGGED, WILD_ALL, WILD_COUNT, WILD_DST,
    WILD_NO_PORTS, WILD_SMAC, WILD_SRC,
};

use super::{maps::MapSource, rule::proto, Entry, PortRange, Rule};
use crate::{object, sys, Error, Result};

/// Bit vectors of up to [`FW_MAX_GENERAL`] rules, ready to write.
#[derive(Clone, Debug, Default)]
pub struct CompiledGeneral {
    /// Rules by bit (judging order).
    pub rules: Vec<RuleRef>,
    /// (trie index: src4, dst4, src6, dst6) -> prefix vectors.
    pub prefixes: [Vec<(IpNet, Bitmap)>; 4],
    /// 256 vectors by IP protocol.
    pub proto: Vec<Bitmap>,
    /// Port -> segment, and segment vectors, for (sport, dport).
    pub ports: [(Vec<u32>, Vec<Bitmap>); 2],
    /// MAC (8-byte key) -> vector.
    pub smac: Vec<([u8; 8], Bitmap)>,
    /// VLAN 0..=4095 and untagged -> vector.
    pub vlan: Vec<Bitmap>,
    /// Vectors for misses (`WILD_*`).
    pub wild: Vec<Bitmap>,
}

fn bits_where(rules: &[&Rule], pred: impl Fn(&Rule) -> bool) -> Bitmap {
    let mut b = Bitmap::default();
    for (i, r) in rules.iter().enumerate() {
        if pred(r) {
            b.set(i);
        }
    }
    b
}

/// Builds the vectors for `entries` (general rules, in judging order).
pub fn compile(entries: &[&Entry], refs: Vec<RuleRef>) -> Result<CompiledGeneral> {
    if entries.len() > FW_MAX_GENERAL as usize {
        return Err(Error::InvalidArgument(format!(
            "{} rules with ports, proto, smac, vlan or two prefixes: at most {FW_MAX_GENERAL} are supported (prefix-only rules have no such limit)",
            entries.len()
        )));
    }
    let rules: Vec<&Rule> = entries.iter().map(|e| &e.rule).collect();
    let mut wild = vec![Bitmap::default(); WILD_COUNT as usize];
    wild[WILD_SRC as usize] = bits_where(&rules, |r| r.src.is_none());
    wild[WILD_DST as usize] = bits_where(&rules, |r| r.dst.is_none());
    wild[WILD_SMAC as usize] = bits_where(&rules, |r| r.smac.is_none());
    wild[WILD_NO_PORTS as usize] = bits_where(&rules, |r| !r.needs_ports());
    wild[WILD_ALL as usize] = bits_where(&rules, |_| true);

    let prefix_field =
        |pick: fn(&Rule) -> Option<IpNet>, v4: bool, wild: &Bitmap| -> Vec<(IpNet, Bitmap)> {
            let mut nets: Vec<IpNet> = rules
                .iter()
                .filter_map(|r| pick(r))
                .filter(|n| n.addr().is_ipv4() == v4)
                .collect();
            nets.sort();
            nets.dedup();
            nets.into_iter()
                .map(|p| {
                    let mut v = *wild;
                    v.or(&bits_where(&rules, |r| {
                        pick(r).is_some_and(|q| {
                            q.prefix_len() <= p.prefix_len() && q.contains(&p.addr())
                        })
                    }));
                    (p, v)
                })
                .collect()
        };
    let (ws, wd) = (wild[WILD_SRC as usize], wild[WILD_DST as usize]);
    let prefixes = [
        prefix_field(|r| r.src, true, &ws),
        prefix_field(|r| r.dst, true, &wd),
        prefix_field(|r| r.src, false, &ws),
        prefix_field(|r| r.dst, false, &wd),
    ];

    let proto = (0..=255u8)
        .map(|p| {
            bits_where(&rules, |r| match r.proto {
                Some(q) => q == p,
                None => !r.needs_ports() || p == proto::TCP || p == proto::UDP,
            })
        })
        .collect();

    let ports = [
        port_segments(&rules, |r| r.sport),
        port_segments(&rules, |r| r.dport),
    ];

    let mut macs: Vec<[u8; 6]> = rules.iter().filter_map(|r| r.smac).collect();
    macs.sort();
    macs.dedup();
    let smac = macs
        .into_iter()
        .map(|m| {
            let mut v = wild[WILD_SMAC as usize];
            v.or(&bits_where(&rules, |r| r.smac == Some(m)));
            ([m[0], m[1], m[2], m[3], m[4], m[5], 0, 0], v)
        })
        .collect();

    let vlan = (0..=VLAN_UNTAGGED)
        .map(|id| {
            bits_where(&rules, |r| {
                r.vlan
                    .is_none_or(|v| u32::from(v) == id && id != VLAN_UNTAGGED)
            })
        })
        .collect();

    Ok(CompiledGeneral {
        rules: refs,
        prefixes,
        proto,
        ports,
        smac,
        vlan,
        wild,
    })
}

/// Splits 0..=65535 at every range edge; each segment's vector holds the
/// rules whose range (or absence of one) covers it.
fn port_segments(rules: &[&Rule], pick: fn(&Rule) -> Option<PortRange>) -> (Vec<u32>, Vec<Bitmap>) {
    let mut starts: BTreeMap<u32, ()> = BTreeMap::new();
    starts.insert(0, ());
    for r in rules.iter().filter_map(|r| pick(r)) {
        starts.insert(u32::from(r.lo), ());
        if r.hi < u16::MAX {
            starts.insert(u32::from(r.hi) + 1, ());
        }
    }
    let starts: Vec<u32> = starts.into_keys().collect();
    let vectors: Vec<Bitmap> = starts
        .iter()
        .map(|&s| bits_where(rules, |r| pick(r).is_none_or(|p| p.contains(s as u16))))
        .collect();
    let mut index = vec![0u32; 65536];
    for (seg, window) in starts.iter().enumerate() {
        let end = starts.get(seg + 1).copied().unwrap_or(65536);
        for slot in &mut index[*window as usize..end as usize] {
            *slot = seg as u32;
        }
    }
    (index, vectors)
}

fn map_fd<'a>(ebpf: &'a impl MapSource, name: &str) -> Result<&'a MapData> {
    match ebpf.map(name).ok_or_else(|| object::missing_map(name))? {
        Map::Array(d) | Map::HashMap(d) | Map::LpmTrie(d) | Map::PerCpuArray(d) => Ok(d),
        _ => Err(object::missing_map(name)),
    }
}

pub(crate) fn write_array<V: Copy>(ebpf: &impl MapSource, name: &str, values: &[V]) -> Result<()> {
    let keys: Vec<u32> = (0..values.len() as u32).collect();
    sys::map_update_batch(map_fd(ebpf, name)?.fd().as_fd(), &keys, values)
}

fn map_error(what: String) -> impl FnOnce(aya::maps::MapError) -> Error {
    move |e| Error::Map {
        what,
        source: e.into(),
    }
}

/// Replaces the contents of an LPM trie with `entries`.
pub(crate) fn write_trie<const N: usize, V: aya::Pod>(
    ebpf: &mut impl MapSource,
    name: &str,
    entries: &[(IpNet, V)],
) -> Result<()> {
    let map = ebpf
        .map_mut(name)
        .ok_or_else(|| object::missing_map(name))?;
    let mut trie: LpmTrie<&mut MapData, [u8; N], V> =
        LpmTrie::try_from(map).map_err(map_error(format!("open {name}")))?;
    let stale: Vec<Key<[u8; N]>> = trie.keys().filter_map(|k| k.ok()).collect();
    for key in stale {
        trie.remove(&key)
            .map_err(map_error(format!("clear {name}")))?;
    }
    for (net, v) in entries {
        let bytes: [u8; N] = match net.addr() {
            std::net::IpAddr::V4(a) => a.octets().as_slice().try_into(),
            std::net::IpAddr::V6(a) => a.octets().as_slice().try_into(),
        }
        .map_err(|_| Error::InvalidArgument(format!("{net} does not fit {name}")))?;
        trie.insert(&Key::new(u32::from(net.prefix_len()), bytes), v, 0)
            .map_err(map_error(format!("insert {net} into {name}")))?;
    }
    Ok(())
}

/// Writes `c` into set `set` (which packets must not be using).
pub fn write(ebpf: &mut impl MapSource, set: usize, c: &CompiledGeneral) -> Result<()> {
    let mut rules = c.rules.clone();
    rules.resize(FW_MAX_GENERAL as usize, RuleRef::default());
    write_array(ebpf, FW_GEN_RULES[set], &rules)?;
    write_trie::<4, _>(ebpf, FW_GEN_SRC4[set], &c.prefixes[0])?;
    write_trie::<4, _>(ebpf, FW_GEN_DST4[set], &c.prefixes[1])?;
    write_trie::<16, _>(ebpf, FW_GEN_SRC6[set], &c.prefixes[2])?;
    write_trie::<16, _>(ebpf, FW_GEN_DST6[set], &c.prefixes[3])?;
    write_array(ebpf, FW_GEN_PROTO[set], &c.proto)?;
    write_array(ebpf, FW_GEN_SPORT_IDX[set], &c.ports[0].0)?;
    write_array(ebpf, FW_GEN_SPORT_VEC[set], &c.ports[0].1)?;
    write_array(ebpf, FW_GEN_DPORT_IDX[set], &c.ports[1].0)?;
    write_array(ebpf, FW_GEN_DPORT_VEC[set], &c.ports[1].1)?;
    write_array(ebpf, FW_GEN_VLAN[set], &c.vlan)?;
    write_array(ebpf, FW_GEN_WILD[set], &c.wild)?;
    let name = FW_GEN_SMAC[set];
    let map = ebpf
        .map_mut(name)
        .ok_or_else(|| object::missing_map(name))?;
    let mut hash: HashMap<&mut MapData, [u8; 8], Bitmap> =
        HashMap::try_from(map).map_err(map_error(format!("open {name}")))?;
    let stale: Vec<[u8; 8]> = hash.keys().filter_map(|k| k.ok()).collect();
    for key in stale {
        hash.remove(&key)
            .map_err(map_error(format!("clear {name}")))?;
    }
    for (mac, v) in &c.smac {
        hash.insert(mac, v, 0)
            .map_err(map_error(format!("insert into {name}")))?;
    }
    Ok(())
}
