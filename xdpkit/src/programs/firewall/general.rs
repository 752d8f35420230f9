//! Compiling general rules (anything but a lone src or dst prefix) into the
//! kernel's bit vectors (docs/firewall.md), and writing them into one set.

use std::collections::BTreeMap;

use ipnet::IpNet;
use xdpkit_common::firewall::{
    Bitmap, RuleRef, FW_GEN_DPORT_IDX, FW_GEN_DPORT_VEC, FW_GEN_DST4, FW_GEN_DST6, FW_GEN_PROTO,
    FW_GEN_RULES, FW_GEN_SMAC, FW_GEN_SPORT_IDX, FW_GEN_SPORT_VEC, FW_GEN_SRC4, FW_GEN_SRC6,
    FW_GEN_VLAN, FW_GEN_WILD, FW_MAX_GENERAL, WILD_ALL, WILD_COUNT, WILD_DST, WILD_NO_PORTS,
    WILD_SMAC, WILD_SRC, WILD_VLAN,
};

use super::{
    bulk::{write_trie, write_trie_keys, TrieKey},
    rule::proto,
    Entry, PortRange, Rule,
};
use crate::maps::{
    batch::{clear, map_fd, write_array},
    MapSource,
};
use crate::{sys, Error, Result};

/// ((port, prefix length), segment) entries and the segment vectors.
pub type PortIndex = (Vec<((u16, u8), u32)>, Vec<Bitmap>);

/// Bit vectors of up to [`FW_MAX_GENERAL`] rules, ready to write.
#[derive(Clone, Debug, Default)]
pub struct CompiledGeneral {
    /// Rules by bit (judging order).
    pub rules: Vec<RuleRef>,
    /// (trie index: src4, dst4, src6, dst6) -> prefix vectors.
    pub prefixes: [Vec<(IpNet, Bitmap)>; 4],
    /// 256 vectors by IP protocol.
    pub proto: Vec<Bitmap>,
    /// Port prefixes (port, length) -> segment, and segment vectors, for
    /// (sport, dport). Segments partition the ports, so a port has exactly
    /// one matching prefix.
    pub ports: [PortIndex; 2],
    /// MAC (8-byte key) -> vector.
    pub smac: Vec<([u8; 8], Bitmap)>,
    /// VLAN ids that rules name -> vector (others: `WILD_VLAN`).
    pub vlan: Vec<(u32, Bitmap)>,
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

/// Refuses more than [`FW_MAX_GENERAL`] general rules.
pub fn check_count(rules: usize) -> Result<()> {
    if rules > FW_MAX_GENERAL as usize {
        return Err(Error::InvalidArgument(format!(
            "{rules} rules with ports, proto, smac, vlan or two prefixes: at most {FW_MAX_GENERAL} are supported (prefix-only rules have no such limit)"
        )));
    }
    Ok(())
}

/// Builds the vectors for `entries` (general rules, in judging order).
pub fn compile(entries: &[&Entry], refs: Vec<RuleRef>) -> Result<CompiledGeneral> {
    check_count(entries.len())?;
    let rules: Vec<&Rule> = entries.iter().map(|e| &e.rule).collect();
    let mut wild = vec![Bitmap::default(); WILD_COUNT as usize];
    wild[WILD_SRC as usize] = bits_where(&rules, |r| r.src.is_none());
    wild[WILD_DST as usize] = bits_where(&rules, |r| r.dst.is_none());
    wild[WILD_SMAC as usize] = bits_where(&rules, |r| r.smac.is_none());
    wild[WILD_NO_PORTS as usize] = bits_where(&rules, |r| !r.needs_ports());
    wild[WILD_VLAN as usize] = bits_where(&rules, |r| r.vlan.is_none());
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

    let mut vlans: Vec<u16> = rules.iter().filter_map(|r| r.vlan).collect();
    vlans.sort();
    vlans.dedup();
    let vlan = vlans
        .into_iter()
        .map(|id| {
            let mut v = wild[WILD_VLAN as usize];
            v.or(&bits_where(&rules, |r| r.vlan == Some(id)));
            (u32::from(id), v)
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
fn port_segments(rules: &[&Rule], pick: fn(&Rule) -> Option<PortRange>) -> PortIndex {
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
    let mut index = Vec::new();
    for (seg, start) in starts.iter().enumerate() {
        let end = starts.get(seg + 1).copied().unwrap_or(65536);
        index.extend(aligned_prefixes(*start, end).map(|p| (p, seg as u32)));
    }
    (index, vectors)
}

/// The fewest aligned (port, prefix length) blocks covering `start..end`.
fn aligned_prefixes(mut start: u32, end: u32) -> impl Iterator<Item = (u16, u8)> {
    std::iter::from_fn(move || {
        if start >= end {
            return None;
        }
        // The largest block aligned at `start` that still fits.
        let mut size = if start == 0 {
            65536
        } else {
            1 << start.trailing_zeros()
        };
        while start + size > end {
            size /= 2;
        }
        let block = (start as u16, 16 - size.trailing_zeros() as u8);
        start += size;
        Some(block)
    })
}

/// Writes `c` into set `set` (which packets must not be using).
pub fn write(ebpf: &impl MapSource, set: usize, c: &CompiledGeneral) -> Result<()> {
    let mut rules = c.rules.clone();
    rules.resize(FW_MAX_GENERAL as usize, RuleRef::default());
    write_array(ebpf, FW_GEN_RULES[set], &rules)?;
    write_trie::<4, _>(ebpf, FW_GEN_SRC4[set], &c.prefixes[0])?;
    write_trie::<4, _>(ebpf, FW_GEN_DST4[set], &c.prefixes[1])?;
    write_trie::<16, _>(ebpf, FW_GEN_SRC6[set], &c.prefixes[2])?;
    write_trie::<16, _>(ebpf, FW_GEN_DST6[set], &c.prefixes[3])?;
    write_array(ebpf, FW_GEN_PROTO[set], &c.proto)?;
    for (idx, vec, (prefixes, vectors)) in [
        (FW_GEN_SPORT_IDX[set], FW_GEN_SPORT_VEC[set], &c.ports[0]),
        (FW_GEN_DPORT_IDX[set], FW_GEN_DPORT_VEC[set], &c.ports[1]),
    ] {
        let (keys, segments): (Vec<TrieKey<2>>, Vec<u32>) = prefixes
            .iter()
            .map(|&((port, len), seg)| {
                (
                    TrieKey {
                        len: u32::from(len),
                        addr: port.to_be_bytes(),
                    },
                    seg,
                )
            })
            .unzip();
        write_trie_keys(ebpf, idx, &keys, &segments)?;
        write_array(ebpf, vec, vectors)?;
    }
    let name = FW_GEN_VLAN[set];
    clear::<u32, Bitmap>(ebpf, name)?;
    let (ids, vectors): (Vec<u32>, Vec<Bitmap>) = c.vlan.iter().copied().unzip();
    sys::map_update_batch(map_fd(ebpf, name)?, &ids, &vectors)?;
    write_array(ebpf, FW_GEN_WILD[set], &c.wild)?;
    let name = FW_GEN_SMAC[set];
    clear::<[u8; 8], Bitmap>(ebpf, name)?;
    let (macs, vectors): (Vec<[u8; 8]>, Vec<Bitmap>) = c.smac.iter().copied().unzip();
    sys::map_update_batch(map_fd(ebpf, name)?, &macs, &vectors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_prefixes_cover_exactly_the_range() {
        for (start, end) in [(0, 65536), (80, 81), (1024, 65536), (1, 65535), (443, 8081)] {
            let mut covered = 0u32;
            let mut next = start;
            for (port, len) in aligned_prefixes(start, end) {
                assert_eq!(u32::from(port), next, "blocks are contiguous");
                let size = 1u32 << (16 - len);
                assert_eq!(u32::from(port) % size, 0, "blocks are aligned");
                next += size;
                covered += size;
            }
            assert_eq!((next, covered), (end, end - start));
        }
        assert_eq!(aligned_prefixes(0, 65536).count(), 1);
        assert!(aligned_prefixes(1, 65535).count() <= 30);
    }
}
