//! A balancer's VIPs and reals as the program's maps hold them: VIP ids,
//! real indexes, ring regions and rings (built with [`super::maglev`]).

use std::collections::HashMap;
use std::net::IpAddr;

use xdpkit_common::balancer::{
    LbConfig, Real, Vip, VipKey, LB_MAX_REALS, LB_MAX_VIPS, LB_NO_REAL, LB_RING_SLOTS,
};

use super::maglev::{self, Member, RingError};

/// One real of a VIP, with its weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RealSpec {
    /// Its address.
    pub addr: IpAddr,
    /// Share of the VIP's new flows (0 drains it).
    pub weight: u32,
}

/// One VIP as a user declares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipSpec {
    /// Address, port, protocol.
    pub key: VipKey,
    /// Ring size (a prime, [`maglev::DEFAULT_RING`] by default).
    pub ring: u32,
    /// [`xdpkit_common::balancer::Vip::flags`].
    pub flags: u32,
    /// Its reals.
    pub reals: Vec<RealSpec>,
}

/// Why a set of VIPs does not fit the program's maps.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TablesError {
    /// A ring that cannot be built.
    #[error("VIP {vip}: {source}")]
    Ring {
        /// The VIP.
        vip: String,
        /// Why.
        source: RingError,
    },
    /// More VIPs than [`LB_MAX_VIPS`].
    #[error("{0} VIPs: at most {LB_MAX_VIPS}")]
    TooManyVips(usize),
    /// More distinct reals than [`LB_MAX_REALS`].
    #[error("{0} distinct reals: at most {LB_MAX_REALS}")]
    TooManyReals(usize),
    /// The rings (twice each: the one in force and the next) need more
    /// slots than [`LB_RING_SLOTS`].
    #[error("the VIPs' rings need {0} slots (twice their sizes): at most {LB_RING_SLOTS}")]
    RingsTooLarge(u64),
}

/// The contents of the balancer's maps for a set of VIPs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tables {
    /// Settings.
    pub config: LbConfig,
    /// `LB_VIPS`.
    pub vips: HashMap<VipKey, Vip>,
    /// `LB_REALS`, by index.
    pub reals: Vec<Real>,
    /// Rings to write: first slot and slots.
    pub rings: Vec<(u32, Vec<u32>)>,
    /// `LB_QUIC_IDS`: real index by QUIC server id.
    pub quic_ids: HashMap<u16, u32>,
    /// `LB_EGRESS`: the egress interface of two-interface mode.
    pub egress: Option<u32>,
}

impl Tables {
    /// The real index ring slot `slot` of [`Tables::rings`] holds.
    pub fn ring_slot(&self, slot: u32) -> u32 {
        for (base, ring) in &self.rings {
            if let Some(i) = slot.checked_sub(*base) {
                if let Some(r) = ring.get(i as usize) {
                    return *r;
                }
            }
        }
        0
    }
}

/// The names of VIP flags `flags` holds, as `lb list` shows them.
pub fn flag_names(flags: u32) -> Vec<&'static str> {
    use xdpkit_common::balancer::{VIP_NO_FLOWS, VIP_QUIC};
    [(VIP_NO_FLOWS, "no-flows"), (VIP_QUIC, "quic")]
        .into_iter()
        .filter(|(f, _)| flags & f != 0)
        .map(|(_, name)| name)
        .collect()
}

/// The map contents for `vips`: VIP ids in order, each VIP two ring
/// regions one after the other (the first in force), real indexes by first
/// appearance of each address.
pub fn build(config: LbConfig, vips: &[VipSpec]) -> Result<Tables, TablesError> {
    if vips.len() > LB_MAX_VIPS as usize {
        return Err(TablesError::TooManyVips(vips.len()));
    }
    let slots: u64 = vips.iter().map(|v| 2 * u64::from(v.ring)).sum();
    if slots > u64::from(LB_RING_SLOTS) {
        return Err(TablesError::RingsTooLarge(slots));
    }
    let mut index: HashMap<IpAddr, u32> = HashMap::new();
    let mut reals = Vec::new();
    let mut tables = Tables {
        config,
        ..Tables::default()
    };
    let mut base = 0u32;
    for (id, vip) in vips.iter().enumerate() {
        let mut members = Vec::with_capacity(vip.reals.len());
        for r in &vip.reals {
            let next = reals.len() as u32;
            let i = *index.entry(r.addr).or_insert_with(|| {
                reals.push(real(r.addr));
                next
            });
            members.push((i, addr_bytes(r.addr), r.weight));
        }
        let ring = ring(&members, vip.ring).map_err(|source| TablesError::Ring {
            vip: describe(&vip.key),
            source,
        })?;
        tables.vips.insert(
            vip.key,
            Vip {
                id: id as u32,
                ring_base: base,
                ring_size: vip.ring,
                flags: vip.flags,
            },
        );
        tables.rings.push((base, ring));
        base += 2 * vip.ring;
    }
    if reals.len() > LB_MAX_REALS as usize {
        return Err(TablesError::TooManyReals(reals.len()));
    }
    tables.reals = reals;
    Ok(tables)
}

/// The Maglev ring of `size` slots over `members` (real index, address as
/// the maps hold it, weight): the real index each slot names, or
/// [`LB_NO_REAL`].
pub fn ring(members: &[(u32, [u8; 16], u32)], size: u32) -> Result<Vec<u32>, RingError> {
    let weighted: Vec<Member> = members
        .iter()
        .map(|(_, addr, weight)| Member {
            identity: maglev::identity(addr),
            weight: *weight,
        })
        .collect();
    Ok(maglev::build(&weighted, size)?
        .into_iter()
        .map(|m| {
            if m == maglev::NO_REAL {
                LB_NO_REAL
            } else {
                members[m as usize].0
            }
        })
        .collect())
}

/// An address as the maps hold it: IPv4 in the first 4 bytes.
pub fn addr_bytes(addr: IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match addr {
        IpAddr::V4(a) => out[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => out = a.octets(),
    }
    out
}

/// The map value of a real at `addr`.
pub fn real(addr: IpAddr) -> Real {
    Real {
        addr: addr_bytes(addr),
        v6: u32::from(addr.is_ipv6()),
        used: 1,
    }
}

/// The key of a VIP.
pub fn vip_key(addr: IpAddr, port: u16, proto: u8) -> VipKey {
    VipKey {
        addr: addr_bytes(addr),
        port: port.to_be(),
        proto,
        v6: u8::from(addr.is_ipv6()),
    }
}

/// Text that is not a VIP.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "'{0}' is not a VIP: write ADDRESS:PORT/tcp or /udp (IPv6 in brackets: [2001:db8::1]:443/tcp)"
)]
pub struct BadVip(pub String);

/// The VIP `ADDRESS:PORT/tcp` or `/udp` (IPv6 in brackets).
pub fn parse_vip(text: &str) -> Result<VipKey, BadVip> {
    let bad = || BadVip(text.to_string());
    let (addr, proto) = text.rsplit_once('/').ok_or_else(bad)?;
    let proto = match proto.to_ascii_lowercase().as_str() {
        "tcp" => xdpkit_common::balancer::PROTO_TCP,
        "udp" => xdpkit_common::balancer::PROTO_UDP,
        _ => return Err(bad()),
    };
    let sock: std::net::SocketAddr = addr.parse().map_err(|_| bad())?;
    Ok(vip_key(sock.ip(), sock.port(), proto))
}

/// `ADDR:PORT/PROTO` of a VIP key.
pub fn describe(key: &VipKey) -> String {
    let addr = if key.v6 != 0 {
        format!("[{}]", std::net::Ipv6Addr::from(key.addr))
    } else {
        let a = key.addr;
        std::net::Ipv4Addr::new(a[0], a[1], a[2], a[3]).to_string()
    };
    let proto = match key.proto {
        xdpkit_common::balancer::PROTO_TCP => "tcp".to_string(),
        xdpkit_common::balancer::PROTO_UDP => "udp".to_string(),
        p => p.to_string(),
    };
    format!("{addr}:{}/{proto}", u16::from_be(key.port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use xdpkit_common::balancer::{PROTO_TCP, PROTO_UDP};

    fn spec(addr: &str, port: u16, reals: &[&str]) -> VipSpec {
        VipSpec {
            key: vip_key(addr.parse().unwrap(), port, PROTO_TCP),
            ring: 251,
            flags: 0,
            reals: reals
                .iter()
                .map(|r| RealSpec {
                    addr: r.parse().unwrap(),
                    weight: 1,
                })
                .collect(),
        }
    }

    #[test]
    fn vips_get_ids_regions_and_shared_reals() {
        let t = build(
            LbConfig::default(),
            &[
                spec("198.18.1.1", 80, &["198.18.2.1", "198.18.2.2"]),
                spec("2001:db8::1", 443, &["198.18.2.2", "2001:db8:2::1"]),
            ],
        )
        .unwrap();
        assert_eq!(t.reals.len(), 3, "198.18.2.2 once");
        let a = t.vips[&vip_key("198.18.1.1".parse().unwrap(), 80, PROTO_TCP)];
        let b = t.vips[&vip_key("2001:db8::1".parse().unwrap(), 443, PROTO_TCP)];
        assert_eq!((a.id, a.ring_base, a.ring_size), (0, 0, 251));
        assert_eq!((b.id, b.ring_base, b.ring_size), (1, 502, 251));
        assert!(t.rings[0].1.iter().all(|&r| r == 0 || r == 1));
        assert!(t.rings[1].1.iter().all(|&r| r == 1 || r == 2));
        assert_eq!(t.reals[2].v6, 1);
        let udp = vip_key("2001:db8::1".parse().unwrap(), 443, PROTO_UDP);
        assert_eq!(describe(&udp), "[2001:db8::1]:443/udp");
    }

    #[test]
    fn vips_parse_and_print_alike() {
        for text in ["198.18.1.10:80/tcp", "[2001:db8::1]:443/udp"] {
            assert_eq!(describe(&parse_vip(text).unwrap()), text);
        }
        assert_eq!(
            parse_vip("198.18.1.10:53/UDP").unwrap(),
            vip_key("198.18.1.10".parse().unwrap(), 53, PROTO_UDP)
        );
        for bad in [
            "198.18.1.10/tcp",
            "198.18.1.10:80",
            "198.18.1.10:80/icmp",
            "x:80/tcp",
        ] {
            let e = parse_vip(bad).unwrap_err().to_string();
            assert!(e.contains("is not a VIP"), "{bad}: {e}");
        }
    }

    #[test]
    fn limits_are_checked() {
        let mut big = spec("198.18.1.1", 80, &["198.18.2.1"]);
        big.ring = 4_194_301;
        assert!(matches!(
            build(LbConfig::default(), &[big]),
            Err(TablesError::RingsTooLarge(_))
        ));
        let mut bad = spec("198.18.1.1", 80, &["198.18.2.1"]);
        bad.ring = 100;
        assert!(matches!(
            build(LbConfig::default(), &[bad]),
            Err(TablesError::Ring { .. })
        ));
    }
}
