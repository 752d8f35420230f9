//! A running balancer's VIPs and reals: read them (no lock) and change
//! them (under the interface's writers' lock), without reloading the
//! program. A ring change is written into the VIP's region not in force,
//! then one update of the VIP's value switches to it: a frame sees the old
//! ring or the new one, whole.

use std::{collections::BTreeMap, fs::File, net::IpAddr};

use serde::Serialize;
use xdpkit_common::{
    balancer::{
        FlowKey, FlowReal, LbConfig, LbOutcome, MemberKey, Real, Vip, VipCounters, VipKey,
        VipRecord, ENCAP_GUE, ENCAP_IP, GUE_PORT, LB_CONFIG, LB_EGRESS, LB_MAX_MEMBERS,
        LB_MAX_QUIC_IDS, LB_MAX_REALS, LB_MAX_VIPS, LB_MEMBERS, LB_NO_REAL, LB_OUTCOMES,
        LB_QUIC_IDS, LB_REALS, LB_REAL_STATS, LB_RING_SLOTS, LB_VIPS, LB_VIP_RECORDS, LB_VIP_STATS,
    },
    ActionCounter,
};

use super::{
    config::{set_source4, set_source6, Declared},
    error::BalancerError,
    maglev,
    tables::{describe, real, ring, RealSpec, Tables, TablesError, VipSpec},
    write_ring,
};
use crate::{
    iface,
    maps::{batch, PinnedMaps},
    pins::PinDir,
    privilege, Result,
};

/// Pin file of a balancer map: its object name in lower case.
fn pin_name(map: &str) -> String {
    map.to_ascii_lowercase()
}

fn open_maps(ifname: &str) -> Result<PinnedMaps> {
    iface::validate_name(ifname)?;
    let dir = PinDir::new(ifname)?.stage("balancer");
    if !dir.file(&pin_name(LB_VIPS)).exists() {
        iface::index(ifname)?;
        return Err(BalancerError::NoBalancer {
            iface: ifname.to_string(),
        }
        .into());
    }
    maps_in(&dir)
}

/// The balancer maps pinned in stage directory `dir`.
pub(super) fn maps_in(dir: &PinDir) -> Result<PinnedMaps> {
    PinnedMaps::open(dir.path(), |file| {
        let name = file.to_ascii_uppercase();
        (name.starts_with("LB_") && pin_name(&name) == file).then_some(name)
    })
}

/// One real of a VIP, with its counters.
#[derive(Clone, Debug, Serialize)]
pub struct RealStatus {
    /// Address.
    pub address: IpAddr,
    /// Weight (0: drained).
    pub weight: u32,
    /// Ring slots it holds.
    pub slots: u32,
    /// Frames sent to it (all its VIPs).
    pub packets: u64,
    /// Their bytes.
    pub bytes: u64,
    /// QUIC server ids that name it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub quic_ids: Vec<u16>,
}

/// One VIP, its reals and counters.
#[derive(Clone, Debug, Serialize)]
pub struct VipStatus {
    /// `ADDRESS:PORT/PROTO`.
    pub vip: String,
    /// Ring size.
    pub ring: u32,
    /// Flags (`no-flows`, `quic`).
    pub flags: Vec<&'static str>,
    /// Frames to it.
    pub packets: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Frames that missed the flow table: new connections (and SYNs).
    pub new_flows: u64,
    /// Its reals.
    pub reals: Vec<RealStatus>,
}

/// Everything `lb list` shows.
#[derive(Clone, Debug, Serialize)]
pub struct BalancerStatus {
    /// The interface.
    pub interface: String,
    /// Its VIPs.
    pub vips: Vec<VipStatus>,
    /// Frames sent to the real the flow table named.
    pub flow_hits: u64,
    /// Frames whose real the ring chose (new flows, SYNs, lost entries).
    pub flow_misses: u64,
    /// Frames to a VIP with no real: dropped.
    pub no_real: u64,
    /// Frames the balancer handed on (not to a VIP).
    pub not_vip: u64,
    /// New flows not remembered: above the new-connection guard.
    pub guarded: u64,
    /// Frames answered with ICMP "too big" (or dropped, IPv4 without DF).
    pub too_big: u64,
    /// QUIC packets routed by their connection id's server id.
    pub quic_routed: u64,
    /// New flows (sent to the real the ring chose) hashed with the
    /// driver's RX hash (the interface runs the RX-hash root: `xdpkit
    /// doctor --dev` says).
    pub hashed_rx: u64,
    /// New flows (as above) hashed by their 5-tuple.
    pub hashed_tuple: u64,
    /// The settings.
    pub settings: SettingsView,
}

/// The balancer's settings as `lb config` and `lb list` show them.
#[derive(Clone, Debug, Serialize)]
pub struct SettingsView {
    /// Outer IPv4 sources.
    pub source4: String,
    /// Outer IPv6 sources.
    pub source6: String,
    /// Next hop MAC (`00:00:00:00:00:00`: back to the sender).
    pub gateway: String,
    /// `ip` or `gue`.
    pub encap: &'static str,
    /// GUE's UDP port.
    pub gue_port: u16,
    /// The path MTU checked before encapsulating (0: none).
    pub mtu: u16,
    /// Two-interface mode's egress interface, if set.
    pub egress: Option<String>,
    /// New flows remembered per second at most (0: no limit); the kernel
    /// applies it per CPU, so it is a multiple of the CPUs.
    pub max_new_per_sec: u64,
    /// How new flows are hashed: `auto` (the driver's RX hash where there
    /// is one) or `tuple`.
    pub flow_hash: &'static str,
}

fn mac_text(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// How `cfg` (with `egress_ifindex` in `LB_EGRESS`) reads.
fn view(cfg: &LbConfig, egress_ifindex: Option<u32>) -> Result<SettingsView> {
    let mut six = [0u8; 16];
    six[..8].copy_from_slice(&cfg.src6);
    let cpus = crate::sys::possible_cpus()? as u64;
    Ok(SettingsView {
        source4: format!(
            "{}/{}",
            std::net::Ipv4Addr::from(cfg.src4.to_ne_bytes()),
            32 - cfg.src4_bits
        ),
        source6: format!("{}/64", std::net::Ipv6Addr::from(six)),
        gateway: mac_text(&cfg.gateway),
        encap: if cfg.encap == ENCAP_GUE { "gue" } else { "ip" },
        gue_port: cfg.gue_port,
        mtu: cfg.mtu,
        egress: (cfg.egress != 0).then(|| {
            egress_ifindex
                .and_then(iface::name)
                .unwrap_or_else(|| format!("#{}", egress_ifindex.unwrap_or(0)))
        }),
        max_new_per_sec: u64::from(cfg.new_per_cpu) * cpus,
        flow_hash: super::config::flow_hash_name(cfg),
    })
}

fn read_config(maps: &PinnedMaps) -> Result<LbConfig> {
    Ok(batch::dump::<u32, LbConfig>(maps, LB_CONFIG, 1)?
        .first()
        .map(|(_, c)| *c)
        .unwrap_or_default())
}

/// The pinned `LB_EGRESS` DEVMAP (the batch calls do not take DEVMAPs).
fn egress_map(maps: &PinnedMaps) -> Result<(aya::maps::DevMap<aya::maps::MapData>, String)> {
    let missing = || crate::maps::missing_map(LB_EGRESS);
    let path = maps.path(LB_EGRESS).ok_or_else(missing)?;
    let shown = path.display().to_string();
    let map = crate::maps::open_pin(path)?.ok_or_else(missing)?;
    let map = aya::maps::DevMap::try_from(map).map_err(|e| crate::Error::Map {
        what: format!("open {shown}"),
        source: e.into(),
    })?;
    Ok((map, shown))
}

fn read_egress(maps: &PinnedMaps) -> Result<Option<u32>> {
    let (map, shown) = egress_map(maps)?;
    match map.get(0, 0) {
        Ok(value) => Ok(Some(value.if_index).filter(|i| *i != 0)),
        Err(aya::maps::MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(crate::Error::Map {
            what: format!("read {shown}"),
            source: e.into(),
        }),
    }
}

fn read_quic_ids(maps: &PinnedMaps) -> Result<Vec<(u16, u32)>> {
    Ok(
        batch::dump::<u32, u32>(maps, LB_QUIC_IDS, LB_MAX_QUIC_IDS as usize)?
            .into_iter()
            .filter(|(_, slot)| *slot != 0)
            .map(|(id, slot)| (id as u16, slot - 1))
            .collect(),
    )
}

/// How encapsulated frames are wrapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encap {
    /// An IP header (IPIP, ip6ip6, ...).
    Ip,
    /// IP + UDP (GUE).
    Gue,
}

/// Changes to the balancer's settings; `None` keeps one.
#[derive(Clone, Debug, Default)]
pub struct SettingsChange {
    /// Outer IPv4 sources (/16 to /32).
    pub source4: Option<ipnet::Ipv4Net>,
    /// Outer IPv6 sources (a /64).
    pub source6: Option<ipnet::Ipv6Net>,
    /// Next hop MAC (all zero: back to the sender).
    pub gateway: Option<[u8; 6]>,
    /// Encapsulation.
    pub encap: Option<Encap>,
    /// GUE's UDP port.
    pub gue_port: Option<u16>,
    /// Path MTU (0: no check).
    pub mtu: Option<u16>,
    /// Egress interface (`Some(None)`: back to one interface).
    pub egress: Option<Option<String>>,
    /// New flows remembered per second (0: no limit).
    pub max_new_per_sec: Option<u64>,
    /// Hash new flows by their 5-tuple only (`Some(false)`: the driver's
    /// RX hash where there is one).
    pub tuple_hash_only: Option<bool>,
}

/// The stored VIPs and reals of a balancer.
struct Stored {
    records: Vec<VipRecord>,
    reals: Vec<Real>,
    members: BTreeMap<MemberKey, u32>,
}

fn read_stored(maps: &PinnedMaps) -> Result<Stored> {
    let records = batch::dump::<u32, VipRecord>(maps, LB_VIP_RECORDS, usize::MAX)?
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    let reals = batch::dump::<u32, Real>(maps, LB_REALS, usize::MAX)?
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    let members = batch::dump::<MemberKey, u32>(maps, LB_MEMBERS, usize::MAX)?
        .into_iter()
        .collect();
    Ok(Stored {
        records,
        reals,
        members,
    })
}

/// Whether slot `r` holds the real in use at `addr`.
fn holds(r: &Real, addr: IpAddr) -> bool {
    let want = real(addr);
    r.used != 0 && r.addr == want.addr && r.v6 == want.v6
}

fn ip_of(r: &Real) -> IpAddr {
    if r.v6 != 0 {
        IpAddr::from(r.addr)
    } else {
        IpAddr::from([r.addr[0], r.addr[1], r.addr[2], r.addr[3]])
    }
}

fn sum(per_cpu: &[ActionCounter]) -> ActionCounter {
    per_cpu
        .iter()
        .fold(ActionCounter::default(), |a, c| a.plus(*c))
}

/// The VIPs, reals and counters of the balancer on `ifname` (a reader:
/// takes no lock).
pub fn status(ifname: &str) -> Result<BalancerStatus> {
    privilege::require("reading the balancer")?;
    let maps = open_maps(ifname)?;
    let stored = read_stored(&maps)?;
    let vip_stats = batch::dump_per_cpu::<VipCounters>(&maps, LB_VIP_STATS, usize::MAX)?;
    let real_stats = batch::dump_per_cpu::<ActionCounter>(&maps, LB_REAL_STATS, usize::MAX)?;
    let outcomes = super::counters::totals(
        &batch::dump_per_cpu::<ActionCounter>(&maps, LB_OUTCOMES, usize::MAX)?,
        &vip_stats,
    );
    let outcome = |o: LbOutcome| outcomes.get(o as usize).map_or(0, |c| c.packets);
    let quic_ids = read_quic_ids(&maps)?;
    let (mut new_flows, mut by_rx_hash) = (0u64, 0u64);
    let mut vips = Vec::new();
    for (id, rec) in stored.records.iter().enumerate() {
        if rec.used == 0 {
            continue;
        }
        let ring = ring_of(&stored, id)?;
        let mut reals = Vec::new();
        for (m, weight) in stored.members.range(
            MemberKey {
                vip: id as u32,
                real: 0,
            }..=MemberKey {
                vip: id as u32,
                real: u32::MAX,
            },
        ) {
            let Some(r) = stored.reals.get(m.real as usize) else {
                continue;
            };
            let c = real_stats
                .get(m.real as usize)
                .map(|c| sum(c))
                .unwrap_or_default();
            reals.push(RealStatus {
                address: ip_of(r),
                weight: *weight,
                slots: ring.iter().filter(|&&s| s == m.real).count() as u32,
                packets: c.packets,
                bytes: c.bytes,
                quic_ids: quic_ids
                    .iter()
                    .filter(|(_, r)| *r == m.real)
                    .map(|(id, _)| *id)
                    .collect(),
            });
        }
        let c = vip_stats
            .get(id)
            .map(|c| c.iter().fold(VipCounters::default(), |a, c| a.plus(*c)))
            .unwrap_or_default();
        new_flows += c.new_flows;
        by_rx_hash += c.new_by_rx_hash;
        vips.push(VipStatus {
            vip: describe(&rec.key),
            ring: rec.ring,
            flags: super::tables::flag_names(rec.flags),
            packets: c.packets,
            bytes: c.bytes,
            new_flows: c.new_flows,
            reals,
        });
    }
    Ok(BalancerStatus {
        interface: ifname.to_string(),
        vips,
        flow_hits: outcome(LbOutcome::FlowHit),
        flow_misses: outcome(LbOutcome::FlowMiss),
        no_real: outcome(LbOutcome::NoReal),
        not_vip: outcome(LbOutcome::NotVip),
        guarded: outcome(LbOutcome::Guarded),
        too_big: outcome(LbOutcome::TooBig),
        quic_routed: outcome(LbOutcome::QuicRouted),
        hashed_rx: by_rx_hash,
        hashed_tuple: new_flows - by_rx_hash,
        settings: view(&read_config(&maps)?, read_egress(&maps)?)?,
    })
}

/// VIP `id`'s ring as its stored reals build it: real index per slot.
fn ring_of(stored: &Stored, id: usize) -> std::result::Result<Vec<u32>, BalancerError> {
    let rec = stored.records[id];
    let members: Vec<(u32, [u8; 16], u32)> = stored
        .members
        .iter()
        .filter(|(m, _)| m.vip == id as u32)
        .map(|(m, w)| {
            let addr = stored
                .reals
                .get(m.real as usize)
                .map_or([0; 16], |r| r.addr);
            (m.real, addr, *w)
        })
        .collect();
    ring(&members, rec.ring).map_err(|source| {
        BalancerError::Tables(TablesError::Ring {
            vip: describe(&rec.key),
            source,
        })
    })
}

/// A balancer being changed: holds the interface's writers' lock.
pub struct LiveBalancer {
    iface: String,
    maps: PinnedMaps,
    _lock: File,
}

impl LiveBalancer {
    /// Opens the balancer on `ifname` for changes.
    pub fn open(ifname: &str) -> Result<LiveBalancer> {
        privilege::require("changing the balancer")?;
        let maps = open_maps(ifname)?;
        let lock = crate::pins::IfaceLock::take(&PinDir::new(ifname)?)?.share()?;
        Ok(LiveBalancer {
            iface: ifname.to_string(),
            maps,
            _lock: lock,
        })
    }

    fn find(&self, stored: &Stored, key: &VipKey) -> Result<usize> {
        stored
            .records
            .iter()
            .position(|r| r.used != 0 && r.key == *key)
            .ok_or_else(|| {
                BalancerError::NoSuchVip {
                    iface: self.iface.clone(),
                    vip: describe(key),
                }
                .into()
            })
    }

    /// Changes the settings ([`LbConfig`]) as `change` says; what it
    /// leaves `None` stays. Returns the settings now in force.
    pub fn configure(&mut self, change: &SettingsChange) -> Result<SettingsView> {
        let bad = |why: String| -> crate::Error { BalancerError::BadSettings(why).into() };
        let mut cfg = read_config(&self.maps)?;
        if cfg.gue_port == 0 {
            cfg.gue_port = GUE_PORT;
        }
        if let Some(net) = change.source4 {
            set_source4(&mut cfg, net).map_err(|why| BalancerError::BadSource {
                given: net.to_string(),
                why,
            })?;
        }
        if let Some(net) = change.source6 {
            set_source6(&mut cfg, net).map_err(|why| BalancerError::BadSource {
                given: net.to_string(),
                why,
            })?;
        }
        if let Some(mac) = change.gateway {
            cfg.gateway = mac;
        }
        if let Some(encap) = change.encap {
            cfg.encap = match encap {
                Encap::Ip => ENCAP_IP,
                Encap::Gue => ENCAP_GUE,
            };
        }
        if let Some(port) = change.gue_port {
            if port == 0 {
                return Err(bad("the GUE port cannot be 0".into()));
            }
            cfg.gue_port = port;
        }
        if let Some(mtu) = change.mtu {
            if mtu != 0 && mtu < 576 {
                return Err(bad(format!(
                    "MTU {mtu} is below 576, the least every IPv4 path carries (0 turns the check off)"
                )));
            }
            cfg.mtu = mtu;
        }
        if let Some(rate) = change.max_new_per_sec {
            let cpus = crate::sys::possible_cpus()? as u64;
            let per_cpu = rate.div_ceil(cpus);
            cfg.new_per_cpu = u32::try_from(per_cpu)
                .map_err(|_| bad(format!("{rate} new flows per second is too many to count")))?;
        }
        if let Some(only) = change.tuple_hash_only {
            cfg.tuple_hash_only = u16::from(only);
        }
        let mut egress = read_egress(&self.maps)?;
        match &change.egress {
            Some(Some(name)) => {
                let index = iface::index(name)?;
                cfg.egress = 1;
                cfg.egress_mac = iface::mac(name)?;
                egress = Some(index);
            }
            Some(None) => {
                cfg.egress = 0;
                cfg.egress_mac = [0; 6];
            }
            None => {}
        }
        if cfg.egress != 0 && cfg.gateway == [0; 6] {
            return Err(bad(
                "two-interface mode sends frames to a next hop on the egress side: give its MAC with --gateway".into(),
            ));
        }
        if let (Some(Some(_)), Some(index)) = (&change.egress, egress) {
            self.set_egress(index)?;
        }
        batch::write_array(&self.maps, LB_CONFIG, &[cfg])?;
        view(&cfg, egress)
    }

    /// The index of the real in use at `addr` (a real of some VIP).
    fn real_index(&self, stored: &Stored, addr: IpAddr) -> Result<u32> {
        let index = stored.reals.iter().position(|r| holds(r, addr));
        index.map(|i| i as u32).ok_or_else(|| {
            BalancerError::UnknownReal {
                iface: self.iface.clone(),
                real: addr.to_string(),
            }
            .into()
        })
    }

    fn set_egress(&self, ifindex: u32) -> Result<()> {
        let (mut map, shown) = egress_map(&self.maps)?;
        map.set(0, ifindex, None, 0).map_err(|e| crate::Error::Map {
            what: format!("set {shown} to ifindex {ifindex}"),
            source: e.into(),
        })
    }

    /// The settings in force.
    pub fn settings(&self) -> Result<SettingsView> {
        view(&read_config(&self.maps)?, read_egress(&self.maps)?)
    }

    /// Routes QUIC packets whose connection id names server `id` to real
    /// `addr` (a real of some VIP); `None` forgets the id.
    pub fn set_quic_id(&mut self, id: u16, addr: Option<IpAddr>) -> Result<()> {
        if id == 0 {
            return Err(BalancerError::BadSettings(
                "QUIC server id 0 names no server: use 1 to 65535".into(),
            )
            .into());
        }
        let slot = match addr {
            None => 0,
            Some(addr) => self.real_index(&read_stored(&self.maps)?, addr)? + 1,
        };
        batch::update(&self.maps, LB_QUIC_IDS, &[u32::from(id)], &[slot])
    }

    /// Adds VIP `key` with a ring of `ring` slots (a prime) and no reals:
    /// its frames are dropped until a real is added.
    pub fn add_vip(&mut self, key: VipKey, ring: u32, flags: u32) -> Result<()> {
        maglev::check_size(ring).map_err(|source| {
            BalancerError::Tables(TablesError::Ring {
                vip: describe(&key),
                source,
            })
        })?;
        let stored = read_stored(&self.maps)?;
        if stored.records.iter().any(|r| r.used != 0 && r.key == key) {
            return Err(BalancerError::VipExists {
                iface: self.iface.clone(),
                vip: describe(&key),
            }
            .into());
        }
        let id = stored
            .records
            .iter()
            .position(|r| r.used == 0)
            .ok_or(BalancerError::Full {
                what: "another VIP",
                limit: LB_MAX_VIPS,
            })?;
        let base = free_region(&stored.records, 2 * ring).ok_or(BalancerError::Full {
            what: "the VIP's rings (twice its ring size)",
            limit: LB_RING_SLOTS,
        })?;
        let rec = VipRecord {
            key,
            ring,
            flags,
            used: 1,
            base,
            active: 0,
        };
        write_ring(&self.maps, base, &vec![LB_NO_REAL; ring as usize])?;
        batch::update(&self.maps, LB_VIP_RECORDS, &[id as u32], &[rec])?;
        // Its counters start at zero.
        batch::zero_per_cpu::<VipCounters>(&self.maps, LB_VIP_STATS, &[id as u32])?;
        batch::update(
            &self.maps,
            LB_VIPS,
            &[key],
            &[Vip {
                id: id as u32,
                ring_base: base,
                ring_size: ring,
                flags,
            }],
        )
    }

    /// Removes VIP `key`: its frames go on down the chain.
    pub fn del_vip(&mut self, key: VipKey) -> Result<()> {
        let stored = read_stored(&self.maps)?;
        let id = self.find(&stored, &key)?;
        batch::delete(&self.maps, LB_VIPS, &[key])?;
        let gone: Vec<MemberKey> = stored
            .members
            .keys()
            .filter(|m| m.vip == id as u32)
            .copied()
            .collect();
        if !gone.is_empty() {
            batch::delete(&self.maps, LB_MEMBERS, &gone)?;
        }
        batch::update(
            &self.maps,
            LB_VIP_RECORDS,
            &[id as u32],
            &[VipRecord::default()],
        )?;
        self.free_unused_reals()
    }

    /// Adds `addr` to VIP `key` with `weight`, or sets its weight.
    pub fn set_real(&mut self, key: VipKey, addr: IpAddr, weight: u32) -> Result<()> {
        let stored = read_stored(&self.maps)?;
        let id = self.find(&stored, &key)?;
        self.set_members(id, &[RealSpec { addr, weight }])?;
        self.rebuild(id)
    }

    /// Adds or reweights reals of VIP `id` (no ring change yet).
    fn set_members(&mut self, id: usize, reals: &[RealSpec]) -> Result<()> {
        let mut stored = read_stored(&self.maps)?;
        let mut members = Vec::with_capacity(reals.len());
        let mut weights = Vec::with_capacity(reals.len());
        for r in reals {
            let index = match stored.reals.iter().position(|s| holds(s, r.addr)) {
                Some(i) => i as u32,
                None => {
                    let i = stored.reals.iter().position(|s| s.used == 0).ok_or(
                        BalancerError::Full {
                            what: "another real",
                            limit: LB_MAX_REALS,
                        },
                    )? as u32;
                    batch::zero_per_cpu::<ActionCounter>(&self.maps, LB_REAL_STATS, &[i])?;
                    batch::update(&self.maps, LB_REALS, &[i], &[real(r.addr)])?;
                    stored.reals[i as usize] = real(r.addr);
                    i
                }
            };
            let member = MemberKey {
                vip: id as u32,
                real: index,
            };
            if stored.members.insert(member, r.weight).is_none()
                && stored.members.len() > LB_MAX_MEMBERS as usize
            {
                return Err(BalancerError::Full {
                    what: "another real of a VIP",
                    limit: LB_MAX_MEMBERS,
                }
                .into());
            }
            members.push(member);
            weights.push(r.weight);
        }
        if members.is_empty() {
            return Ok(());
        }
        batch::update(&self.maps, LB_MEMBERS, &members, &weights)
    }

    /// Removes `addr` from VIP `key`; its established flows choose again.
    pub fn del_real(&mut self, key: VipKey, addr: IpAddr) -> Result<()> {
        let stored = read_stored(&self.maps)?;
        let id = self.find(&stored, &key)?;
        self.del_members(&stored, id, &[addr])?;
        self.rebuild(id)?;
        self.free_unused_reals()
    }

    /// Removes reals of VIP `id` (no ring change yet).
    fn del_members(&mut self, stored: &Stored, id: usize, addrs: &[IpAddr]) -> Result<()> {
        let mut gone = Vec::with_capacity(addrs.len());
        for addr in addrs {
            let member = stored
                .members
                .keys()
                .find(|m| {
                    m.vip == id as u32
                        && stored
                            .reals
                            .get(m.real as usize)
                            .is_some_and(|r| holds(r, *addr))
                })
                .copied()
                .ok_or_else(|| BalancerError::NoSuchReal {
                    vip: describe(&stored.records[id].key),
                    real: addr.to_string(),
                })?;
            gone.push(member);
        }
        if gone.is_empty() {
            return Ok(());
        }
        batch::delete(&self.maps, LB_MEMBERS, &gone)
    }

    /// Builds VIP `id`'s ring from its members into its region not in
    /// force, then switches the VIP to it.
    fn rebuild(&mut self, id: usize) -> Result<()> {
        let stored = read_stored(&self.maps)?;
        let rec = stored.records[id];
        let ring = ring_of(&stored, id)?;
        let next = 1 - rec.active.min(1);
        let base = rec.base + next * rec.ring;
        write_ring(&self.maps, base, &ring)?;
        batch::update(
            &self.maps,
            LB_VIPS,
            &[rec.key],
            &[Vip {
                id: id as u32,
                ring_base: base,
                ring_size: rec.ring,
                flags: rec.flags,
            }],
        )?;
        let rec = VipRecord {
            active: next,
            ..rec
        };
        batch::update(&self.maps, LB_VIP_RECORDS, &[id as u32], &[rec])
    }

    /// Marks unused the reals no VIP names any more (after every ring that
    /// named them has switched away).
    fn free_unused_reals(&mut self) -> Result<()> {
        let stored = read_stored(&self.maps)?;
        let named: std::collections::HashSet<u32> = stored.members.keys().map(|m| m.real).collect();
        let free: Vec<u32> = (0..stored.reals.len() as u32)
            .filter(|i| stored.reals[*i as usize].used != 0 && !named.contains(i))
            .collect();
        if free.is_empty() {
            return Ok(());
        }
        // A QUIC id must not follow a real's index to the next real there.
        let stale: Vec<u32> = read_quic_ids(&self.maps)?
            .into_iter()
            .filter(|(_, r)| free.contains(r))
            .map(|(id, _)| u32::from(id))
            .collect();
        if !stale.is_empty() {
            batch::update(&self.maps, LB_QUIC_IDS, &stale, &vec![0u32; stale.len()])?;
        }
        let empty = vec![Real::default(); free.len()];
        batch::update(&self.maps, LB_REALS, &free, &empty)
    }

    /// Opens the balancer whose maps are pinned in stage directory `dir`
    /// of `iface`, for a caller that holds the interface's writers' lock
    /// (`lock`: a share of it), as a stage's configuration does.
    pub(crate) fn open_in(iface: &str, dir: &PinDir, lock: File) -> Result<LiveBalancer> {
        Ok(LiveBalancer {
            iface: iface.to_string(),
            maps: maps_in(dir)?,
            _lock: lock,
        })
    }

    /// Its settings, VIPs and reals as declared.
    pub fn declared(&self) -> Result<Declared> {
        declared_of(&self.maps)
    }

    /// What [`LiveBalancer::sync`] changes to make the balancer `want`:
    /// only what differs. Checked here, before anything changes: room for
    /// the new and resized VIPs' rings, taking the regions freed first.
    pub fn plan(&self, want: &Declared) -> Result<SyncPlan> {
        let stored = read_stored(&self.maps)?;
        let have = declared_of(&self.maps)?;
        let mut plan = SyncPlan::default();
        if want.config != have.config || want.egress != have.egress {
            let mut cfg = want.config;
            if let Some(name) = &want.egress {
                cfg.egress = 1;
                cfg.egress_mac = iface::mac(name)?;
                plan.egress = Some(iface::index(name)?);
            }
            plan.config = Some(cfg);
        }
        if want.quic_ids != have.quic_ids {
            plan.quic_ids = Some(want.quic_ids.clone());
        }
        let find = |vips: &[VipSpec], key: &VipKey| vips.iter().position(|v| v.key == *key);
        for v in &have.vips {
            match find(&want.vips, &v.key) {
                None => plan.removed.push(v.key),
                Some(i) => {
                    let w = &want.vips[i];
                    if (w.ring, w.flags) != (v.ring, v.flags) {
                        plan.reshaped.push(VipSpec {
                            reals: Vec::new(),
                            ..w.clone()
                        });
                    }
                    let dels: Vec<IpAddr> = v
                        .reals
                        .iter()
                        .filter(|r| !w.reals.iter().any(|x| x.addr == r.addr))
                        .map(|r| r.addr)
                        .collect();
                    if !dels.is_empty() {
                        plan.reals_removed.push((v.key, dels));
                    }
                    let sets: Vec<RealSpec> = w
                        .reals
                        .iter()
                        .filter(|r| !v.reals.contains(r))
                        .copied()
                        .collect();
                    if !sets.is_empty() {
                        plan.reals_set.push((v.key, sets));
                    }
                }
            }
        }
        for w in &want.vips {
            if find(&have.vips, &w.key).is_none() {
                plan.added.push(VipSpec {
                    reals: Vec::new(),
                    ..w.clone()
                });
                if !w.reals.is_empty() {
                    plan.reals_set.push((w.key, w.reals.clone()));
                }
            }
        }
        // Regions: the removed VIPs' freed, then each resized VIP's new
        // one taken while its old one is still in force, then the new VIPs'.
        let mut records: Vec<VipRecord> = stored
            .records
            .iter()
            .filter(|r| r.used != 0 && !plan.removed.contains(&r.key))
            .copied()
            .collect();
        let resized: Vec<&VipSpec> = plan
            .reshaped
            .iter()
            .filter(|v| records.iter().any(|r| r.key == v.key && r.ring != v.ring))
            .collect();
        for v in resized.into_iter().chain(&plan.added) {
            let base = free_region(&records, 2 * v.ring).ok_or(BalancerError::Full {
                what: "the VIP's rings (twice its ring size)",
                limit: LB_RING_SLOTS,
            })?;
            records.retain(|r| r.key != v.key);
            records.push(VipRecord {
                key: v.key,
                ring: v.ring,
                used: 1,
                base,
                ..VipRecord::default()
            });
        }
        if records.len() > LB_MAX_VIPS as usize {
            return Err(BalancerError::Full {
                what: "another VIP",
                limit: LB_MAX_VIPS,
            }
            .into());
        }
        Ok(plan)
    }

    /// Carries out `plan` ([`LiveBalancer::plan`]): settings; VIPs removed;
    /// reals removed (their flows choose again) and the rings rebuilt;
    /// VIPs resized or with new flags; VIPs added; reals added or
    /// reweighted and the rings rebuilt, once per VIP. Every ring change is
    /// a switch of whole rings, and flows of reals that stay keep them.
    pub fn sync(&mut self, plan: &SyncPlan) -> Result<()> {
        if let Some(ifindex) = plan.egress {
            self.set_egress(ifindex)?;
        }
        if let Some(cfg) = plan.config {
            batch::write_array(&self.maps, LB_CONFIG, &[cfg])?;
        }
        for key in &plan.removed {
            self.del_vip(*key)?;
        }
        for (key, addrs) in &plan.reals_removed {
            let stored = read_stored(&self.maps)?;
            let id = self.find(&stored, key)?;
            self.del_members(&stored, id, addrs)?;
            self.rebuild(id)?;
        }
        self.free_unused_reals()?;
        for v in &plan.reshaped {
            self.reshape(v.key, v.ring, v.flags)?;
        }
        for v in &plan.added {
            self.add_vip(v.key, v.ring, v.flags)?;
        }
        for (key, reals) in &plan.reals_set {
            let stored = read_stored(&self.maps)?;
            let id = self.find(&stored, key)?;
            self.set_members(id, reals)?;
            self.rebuild(id)?;
        }
        if let Some(ids) = &plan.quic_ids {
            // After the reals: the ids name them by index.
            let stored = read_stored(&self.maps)?;
            let mut by_id = std::collections::HashMap::new();
            for (id, addr) in ids {
                by_id.insert(*id, self.real_index(&stored, *addr)?);
            }
            super::write_quic_ids(&self.maps, &by_id)?;
        }
        Ok(())
    }

    /// Gives VIP `key` a ring of `ring` slots and `flags`, in place: its
    /// id, counters and flows stay. A new size takes a new pair of regions
    /// (the old ones are freed by the switch).
    pub fn reshape(&mut self, key: VipKey, ring: u32, flags: u32) -> Result<()> {
        maglev::check_size(ring).map_err(|source| {
            BalancerError::Tables(TablesError::Ring {
                vip: describe(&key),
                source,
            })
        })?;
        let stored = read_stored(&self.maps)?;
        let id = self.find(&stored, &key)?;
        let old = stored.records[id];
        let mut rec = VipRecord { flags, ..old };
        if ring != old.ring {
            let base = free_region(&stored.records, 2 * ring).ok_or(BalancerError::Full {
                what: "the VIP's rings (twice its ring size)",
                limit: LB_RING_SLOTS,
            })?;
            rec = VipRecord {
                ring,
                base,
                active: 0,
                ..rec
            };
            let mut resized = stored;
            resized.records[id] = rec;
            write_ring(&self.maps, base, &ring_of(&resized, id)?)?;
        }
        batch::update(
            &self.maps,
            LB_VIPS,
            &[key],
            &[Vip {
                id: id as u32,
                ring_base: rec.base + rec.active * rec.ring,
                ring_size: rec.ring,
                flags,
            }],
        )?;
        batch::update(&self.maps, LB_VIP_RECORDS, &[id as u32], &[rec])
    }
}

/// What [`LiveBalancer::sync`] changes (from [`LiveBalancer::plan`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncPlan {
    /// New settings.
    pub config: Option<LbConfig>,
    /// The egress interface to put in `LB_EGRESS` first.
    pub egress: Option<u32>,
    /// The QUIC server ids, all of them, once the reals are in.
    pub quic_ids: Option<Vec<(u16, IpAddr)>>,
    /// VIPs removed.
    pub removed: Vec<VipKey>,
    /// VIPs kept with another ring size or flags (no reals here).
    pub reshaped: Vec<VipSpec>,
    /// VIPs added (no reals here: see `reals_set`).
    pub added: Vec<VipSpec>,
    /// Reals removed, by VIP.
    pub reals_removed: Vec<(VipKey, Vec<IpAddr>)>,
    /// Reals added or reweighted, by VIP.
    pub reals_set: Vec<(VipKey, Vec<RealSpec>)>,
}

impl SyncPlan {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == SyncPlan::default()
    }
}

/// The declaration the stored records make.
fn declared_of(maps: &PinnedMaps) -> Result<Declared> {
    let stored = read_stored(maps)?;
    let mut vips: Vec<VipSpec> = stored
        .records
        .iter()
        .filter(|r| r.used != 0)
        .map(|r| VipSpec {
            key: r.key,
            ring: r.ring,
            flags: r.flags,
            reals: Vec::new(),
        })
        .collect();
    for (m, weight) in &stored.members {
        let (Some(rec), Some(r)) = (
            stored.records.get(m.vip as usize),
            stored.reals.get(m.real as usize),
        ) else {
            continue;
        };
        if let Some(v) = vips.iter_mut().find(|v| v.key == rec.key) {
            v.reals.push(RealSpec {
                addr: ip_of(r),
                weight: *weight,
            });
        }
    }
    super::config::sort(&mut vips);
    let mut config = read_config(maps)?;
    if config.gue_port == 0 {
        config.gue_port = GUE_PORT;
    }
    let egress = if config.egress != 0 {
        read_egress(maps)?.map(|i| iface::name(i).unwrap_or_else(|| format!("#{i}")))
    } else {
        None
    };
    // The egress fields follow the interface (its MAC), not the declaration.
    config.egress = 0;
    config.egress_mac = [0; 6];
    let mut quic_ids: Vec<(u16, IpAddr)> = read_quic_ids(maps)?
        .into_iter()
        .filter_map(|(id, r)| stored.reals.get(r as usize).map(|r| (id, ip_of(r))))
        .collect();
    quic_ids.sort();
    Ok(Declared {
        config,
        egress,
        quic_ids,
        vips,
    })
}

/// The declaration of the balancer whose maps are pinned in stage
/// directory `dir` (what `export` prints).
pub fn declared_in(dir: &PinDir) -> Result<Declared> {
    declared_of(&maps_in(dir)?)
}

/// A copy of what decides where the frames of the balancer on `ifname`
/// go: settings, VIPs (with their ids and ring regions), reals by index,
/// each VIP's ring in force (rebuilt from the stored reals, as `lb list`
/// does: Maglev is deterministic) and the flow table. A reader: takes no
/// lock and changes nothing.
pub fn snapshot(ifname: &str) -> Result<(Tables, Vec<(FlowKey, FlowReal)>)> {
    privilege::require("reading the balancer")?;
    let maps = open_maps(ifname)?;
    let stored = read_stored(&maps)?;
    let vips: std::collections::HashMap<VipKey, Vip> =
        batch::dump::<VipKey, Vip>(&maps, LB_VIPS, usize::MAX)?
            .into_iter()
            .collect();
    let mut rings = Vec::new();
    for vip in vips.values() {
        if stored
            .records
            .get(vip.id as usize)
            .is_some_and(|r| r.used != 0)
        {
            rings.push((vip.ring_base, ring_of(&stored, vip.id as usize)?));
        }
    }
    let flows = super::flows::dump(&maps)?;
    Ok((
        Tables {
            config: read_config(&maps)?,
            vips,
            reals: stored.reals,
            rings,
            quic_ids: read_quic_ids(&maps)?.into_iter().collect(),
            egress: read_egress(&maps)?,
        },
        flows,
    ))
}

/// The first slot of a free range of `len` ring slots, first fit among the
/// regions of the VIPs in `records`.
fn free_region(records: &[VipRecord], len: u32) -> Option<u32> {
    let mut taken: Vec<(u32, u32)> = records
        .iter()
        .filter(|r| r.used != 0)
        .map(|r| (r.base, r.base + 2 * r.ring))
        .collect();
    taken.sort_unstable();
    let mut at = 0u32;
    for (from, to) in taken {
        if from >= at && from - at >= len {
            return Some(at);
        }
        at = at.max(to);
    }
    (LB_RING_SLOTS - at.min(LB_RING_SLOTS) >= len).then_some(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_found_first_fit_around_the_taken_ones() {
        let rec = |base, ring| VipRecord {
            base,
            ring,
            used: 1,
            ..VipRecord::default()
        };
        assert_eq!(free_region(&[], 10), Some(0));
        assert_eq!(free_region(&[rec(0, 5)], 10), Some(10));
        assert_eq!(free_region(&[rec(20, 5)], 20), Some(0));
        assert_eq!(free_region(&[rec(20, 5)], 21), Some(30));
        assert_eq!(free_region(&[rec(0, LB_RING_SLOTS / 2)], 1), None);
    }
}
