//! Maps and values of the `balancer` program: an L4 load balancer in the
//! manner of Katran (see docs/balancer.md). A frame to a VIP goes to one of
//! its reals, chosen by the VIP's Maglev ring (or the flow table for a
//! flow already seen), encapsulated toward the real (IPIP, IPv4 in IPv6,
//! ip6ip6) and sent back out (`XDP_TX`).

/// Hash of [`VipKey`] -> [`Vip`].
pub const LB_VIPS: &str = "LB_VIPS";
/// Most VIPs.
pub const LB_MAX_VIPS: u32 = 512;
/// Array of real indexes (into [`LB_REALS`]), the VIPs' Maglev rings one
/// after another: a VIP's active ring is `ring_size` slots from
/// `ring_base` ([`Vip`]). Each VIP owns two regions and alternates: a new
/// ring is written into the one not in use, then the VIP's value switches.
pub const LB_RINGS: &str = "LB_RINGS";
/// Slots of [`LB_RINGS`]: 32 VIPs at the default ring size, twice.
pub const LB_RING_SLOTS: u32 = 1 << 22;
/// Array of [`Real`] by real index.
pub const LB_REALS: &str = "LB_REALS";
/// Most reals (all VIPs together).
pub const LB_MAX_REALS: u32 = 4096;
/// A ring slot that names no real (a VIP whose reals are all drained).
pub const LB_NO_REAL: u32 = u32::MAX;
/// LRU hash of [`FlowKey`] -> [`FlowReal`]: the real of each IPv6 flow
/// seen, so established flows keep theirs when the ring changes. A common
/// LRU: inserts take nodes from per-CPU free lists, lookups see every CPU's.
pub const LB_FLOWS: &str = "LB_FLOWS";
/// The same for IPv4 flows, keyed by [`FlowKey4`]: a key of 16 bytes
/// rather than 40 is hashed and compared in less time, on every frame
/// (`cargo xtask bench lb`).
pub const LB_FLOWS4: &str = "LB_FLOWS4";
/// Entries of [`LB_FLOWS`] and of [`LB_FLOWS4`], each.
pub const LB_MAX_FLOWS: u32 = 1 << 16;
/// Per-CPU array of [`VipCounters`] by VIP id ([`Vip::id`]).
pub const LB_VIP_STATS: &str = "LB_VIP_STATS";
/// Per-CPU array of [`crate::ActionCounter`] by real index.
pub const LB_REAL_STATS: &str = "LB_REAL_STATS";
/// Per-CPU array of [`crate::ActionCounter`] by [`LbOutcome`], but for
/// [`LbOutcome::FlowHit`] and [`LbOutcome::FlowMiss`] of frames to a VIP,
/// which its [`VipCounters`] count.
pub const LB_OUTCOMES: &str = "LB_OUTCOMES";
/// One-entry array: [`LbConfig`].
pub const LB_CONFIG: &str = "LB_CONFIG";

/// Array of [`VipRecord`] by VIP id: the VIPs as declared, so any later
/// process can list, change or rebuild them. The program never reads it.
pub const LB_VIP_RECORDS: &str = "LB_VIP_RECORDS";
/// Hash of [`MemberKey`] -> weight: the reals of each VIP. The program
/// never reads it.
pub const LB_MEMBERS: &str = "LB_MEMBERS";
/// Entries of [`LB_MEMBERS`].
pub const LB_MAX_MEMBERS: u32 = 1 << 16;

/// A VIP as declared ([`LB_VIP_RECORDS`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipRecord {
    /// Address, port, protocol.
    pub key: VipKey,
    /// Ring size.
    pub ring: u32,
    /// [`Vip::flags`].
    pub flags: u32,
    /// Nonzero while the id holds a VIP.
    pub used: u32,
    /// First slot of its two ring regions in [`LB_RINGS`].
    pub base: u32,
    /// Which region is in force (0 or 1).
    pub active: u32,
}

/// A real of a VIP ([`LB_MEMBERS`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberKey {
    /// VIP id.
    pub vip: u32,
    /// Real index.
    pub real: u32,
}

/// [`VipKey::proto`] values.
pub const PROTO_TCP: u8 = 6;
/// See [`PROTO_TCP`].
pub const PROTO_UDP: u8 = 17;

/// A VIP: address, port and protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipKey {
    /// The address: IPv4 in the first 4 bytes (the rest zero), or IPv6.
    pub addr: [u8; 16],
    /// The port, in network byte order.
    pub port: u16,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
    /// 1 for IPv6.
    pub v6: u8,
}

/// What the program needs of a VIP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Vip {
    /// Index of its counters in [`LB_VIP_STATS`].
    pub id: u32,
    /// First slot of its active ring in [`LB_RINGS`].
    pub ring_base: u32,
    /// Slots of its ring (a prime).
    pub ring_size: u32,
    /// [`VIP_NO_FLOWS`], ...
    pub flags: u32,
}

/// [`Vip::flags`]: every frame consults the ring (no flow table): for
/// stateless services, and to measure the ring alone.
pub const VIP_NO_FLOWS: u32 = 1;

/// A real server.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Real {
    /// Its address: IPv4 in the first 4 bytes, or IPv6.
    pub addr: [u8; 16],
    /// 1 for IPv6 (ip6ip6 or IPv4 in IPv6 toward it), 0 for IPv4 (IPIP).
    pub v6: u32,
    /// Nonzero while the slot holds a real.
    pub used: u32,
}

/// A flow: the frame's addresses, ports and protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Source address (IPv4 in the first 4 bytes).
    pub src: [u8; 16],
    /// Destination address (the VIP).
    pub dst: [u8; 16],
    /// Source port, network byte order.
    pub sport: u16,
    /// Destination port, network byte order.
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
    /// 1 for IPv6.
    pub v6: u8,
    /// Zero.
    pub pad: u16,
}

/// An IPv4 flow ([`LB_FLOWS4`]): a [`FlowKey`] without the 24 bytes IPv4
/// leaves zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey4 {
    /// Source address.
    pub src: [u8; 4],
    /// Destination address (the VIP).
    pub dst: [u8; 4],
    /// Source port, network byte order.
    pub sport: u16,
    /// Destination port, network byte order.
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
    /// Zero.
    pub pad: [u8; 3],
}

impl FlowKey {
    /// The key of an IPv4 flow in [`LB_FLOWS4`], or `None` for IPv6.
    pub fn narrow(&self) -> Option<FlowKey4> {
        if self.v6 != 0 {
            return None;
        }
        let mut key = FlowKey4 {
            sport: self.sport,
            dport: self.dport,
            proto: self.proto,
            ..FlowKey4::default()
        };
        key.src.copy_from_slice(&self.src[..4]);
        key.dst.copy_from_slice(&self.dst[..4]);
        Some(key)
    }
}

impl FlowKey4 {
    /// The same flow as a [`FlowKey`] (as the model and `simulate` see it).
    pub fn widen(&self) -> FlowKey {
        let mut key = FlowKey {
            sport: self.sport,
            dport: self.dport,
            proto: self.proto,
            ..FlowKey::default()
        };
        key.src[..4].copy_from_slice(&self.src);
        key.dst[..4].copy_from_slice(&self.dst);
        key
    }
}

/// The real a flow goes to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowReal {
    /// Real index.
    pub real: u32,
    /// The VIP's id when the flow was seen (a flow table entry of a VIP
    /// since removed and re-added under another id is not used).
    pub vip: u32,
    /// The flow's hash (outer source, flow label, GUE port), kept so an
    /// established flow's frames need not compute it again.
    pub hash: u32,
}

/// The balancer's settings.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LbConfig {
    /// Destination MAC of encapsulated frames (the next hop toward the
    /// reals); all zero: the source MAC of the frame received (back to the
    /// router that delivered it).
    pub gateway: [u8; 6],
    /// Zero.
    pub pad: u16,
    /// The network outer IPv4 sources are taken from (first address, in
    /// network order read as a native u32), one per flow hash so that the
    /// reals' RSS spreads flows.
    pub src4: u32,
    /// Host bits of [`LbConfig::src4`] the flow hash fills (0 to 16).
    pub src4_bits: u32,
    /// The /64 outer IPv6 sources are taken from; the low 64 bits are the
    /// flow hash.
    pub src6: [u8; 8],
    /// How frames are encapsulated: [`ENCAP_IP`] or [`ENCAP_GUE`].
    pub encap: u32,
    /// UDP destination port of GUE ([`ENCAP_GUE`]), host order.
    pub gue_port: u16,
    /// The largest outer IP packet the path to the reals carries (its MTU);
    /// a larger one is answered with ICMP fragmentation needed / packet too
    /// big. 0: no check.
    pub mtu: u16,
    /// Non-zero: encapsulated frames leave through the interface in
    /// [`LB_EGRESS`] (two-interface mode), from [`LbConfig::egress_mac`];
    /// zero: back out of the interface they came in on (`XDP_TX`).
    pub egress: u32,
    /// Source MAC of frames sent through [`LB_EGRESS`].
    pub egress_mac: [u8; 6],
    /// Non-zero: hash new flows by their 5-tuple even where the driver's RX
    /// hash is at hand ([`crate::chain::RxHashMeta`]). Balancers behind one
    /// ECMP router need it: the RX hash differs from host to host (each
    /// kernel seeds its own), the 5-tuple hash does not, so every balancer
    /// picks the same real for a flow. 0: the RX hash where there is one.
    pub tuple_hash_only: u16,
    /// Flow-table entries one CPU may add per second; above it new flows are
    /// still balanced by the ring but not remembered (a SYN flood cannot
    /// push established flows out of the table). 0: no limit.
    pub new_per_cpu: u32,
}

/// [`LbConfig::encap`]: an IP header only (IPIP, IPv6 in IPv4, IPv4 in
/// IPv6, ip6ip6).
pub const ENCAP_IP: u32 = 0;
/// [`LbConfig::encap`]: IP + UDP to [`LbConfig::gue_port`] + the inner IP
/// packet (GUE variant 1, as Katran sends it); the UDP source port is the
/// flow hash, so the reals' RSS spreads flows by port too.
pub const ENCAP_GUE: u32 = 1;
/// The GUE port when none is set (Katran's).
pub const GUE_PORT: u16 = 6080;
/// Outer header bytes an encapsulation adds.
pub const fn encap_overhead(encap: u32, real_v6: bool) -> u16 {
    let ip = if real_v6 { 40 } else { 20 };
    if encap == ENCAP_GUE {
        ip + 8
    } else {
        ip
    }
}

/// One-entry DEVMAP: the egress interface of two-interface mode.
pub const LB_EGRESS: &str = "LB_EGRESS";

/// Per-CPU one-entry array of [`GuardWindow`]: new flow entries this
/// CPU added in the current second.
pub const LB_GUARD: &str = "LB_GUARD";

/// [`LB_GUARD`]'s entries.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuardWindow {
    /// When the window began (`bpf_ktime_get_ns`).
    pub start_ns: u64,
    /// Entries added since.
    pub added: u64,
}

/// A VIP's counters ([`LB_VIP_STATS`]): one entry, so a frame costs the
/// program one lookup for all of them; one cache line, those of every
/// frame first.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipCounters {
    /// Frames to the VIP.
    pub packets: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Frames of outcome [`LbOutcome::FlowHit`] (counted here, not in
    /// [`LB_OUTCOMES`]: the common outcomes cost no second lookup).
    pub flow_hits: u64,
    /// Their bytes.
    pub flow_hit_bytes: u64,
    /// Frames of outcome [`LbOutcome::FlowMiss`] (as above).
    pub flow_misses: u64,
    /// Their bytes.
    pub flow_miss_bytes: u64,
    /// Frames the ring chose a real for (new connections, flows the table
    /// lost): the new-connection rate.
    pub new_flows: u64,
    /// Of `new_flows`, those hashed by the driver's RX hash (the rest by
    /// [`flow_hash`] of the 5-tuple).
    pub new_by_rx_hash: u64,
}

impl VipCounters {
    /// The sum of two CPUs' counters.
    pub fn plus(self, o: VipCounters) -> VipCounters {
        VipCounters {
            packets: self.packets.wrapping_add(o.packets),
            bytes: self.bytes.wrapping_add(o.bytes),
            new_flows: self.new_flows.wrapping_add(o.new_flows),
            new_by_rx_hash: self.new_by_rx_hash.wrapping_add(o.new_by_rx_hash),
            flow_hits: self.flow_hits.wrapping_add(o.flow_hits),
            flow_hit_bytes: self.flow_hit_bytes.wrapping_add(o.flow_hit_bytes),
            flow_misses: self.flow_misses.wrapping_add(o.flow_misses),
            flow_miss_bytes: self.flow_miss_bytes.wrapping_add(o.flow_miss_bytes),
        }
    }
}

/// Array of real index + 1 by QUIC server id (0: none): a QUIC packet whose
/// connection id names a server id goes to that real.
pub const LB_QUIC_IDS: &str = "LB_QUIC_IDS";
/// Server ids [`LB_QUIC_IDS`] holds (Katran's 16-bit "v1" ids).
pub const LB_MAX_QUIC_IDS: u32 = 1 << 16;

/// What became of frames the balancer saw ([`LB_OUTCOMES`]).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LbOutcome {
    /// Not to a VIP (or not TCP/UDP, or a fragment): handed on.
    NotVip = 0,
    /// Sent to the real the flow table named.
    FlowHit = 1,
    /// Sent to the real the ring chose (a new flow, a SYN, a lost entry).
    FlowMiss = 2,
    /// To a VIP whose ring names no real: dropped.
    NoReal = 3,
    /// The frame could not be grown for the outer header: dropped.
    EncapFailed = 4,
    /// Encapsulated it would exceed [`LbConfig::mtu`]: answered with ICMP
    /// fragmentation needed / packet too big (IPv4 without DF: dropped).
    TooBig = 5,
    /// A new flow above [`LbConfig::new_per_cpu`]: balanced by the ring but
    /// not remembered.
    Guarded = 6,
    /// A QUIC packet sent to the real its connection id's server id names.
    QuicRouted = 7,
}

impl LbOutcome {
    /// Entries of [`LB_OUTCOMES`].
    pub const COUNT: u32 = 8;
}

/// [`Vip::flags`]: a UDP VIP serving QUIC: route by the server id in the
/// connection id (see [`quic_server_id`]).
pub const VIP_QUIC: u32 = 2;

/// The server id a QUIC packet's UDP payload names, if any: Katran's
/// connection-id format version 1 (the destination connection id's top two
/// bits `01`, then a 16-bit id). Long-header Initial and 0-RTT packets
/// carry a client-chosen id and name none; other long headers have the id
/// after the version and length byte, short headers right after byte 0.
#[inline(always)]
pub fn quic_server_id(payload: &[u8; 10]) -> Option<u16> {
    let first = payload[0];
    let cid = if first & 0x80 != 0 {
        // Long header: type bits 5-4; 0 = Initial, 1 = 0-RTT.
        if (first >> 4) & 0x3 < 2 || payload[5] < 3 {
            return None;
        }
        [payload[6], payload[7], payload[8]]
    } else if first & 0x40 != 0 {
        [payload[1], payload[2], payload[3]]
    } else {
        return None;
    };
    if cid[0] >> 6 != 1 {
        return None;
    }
    let id = (u16::from(cid[0] & 0x3f) << 10) | (u16::from(cid[1]) << 2) | u16::from(cid[2] >> 6);
    (id != 0).then_some(id)
}

/// Per-CPU array of [`crate::ActionCounter`] by [`DecapOutcome`]: the
/// `decap` program's counts.
pub const DECAP_OUTCOMES: &str = "DECAP_OUTCOMES";

/// What the `decap` program did with a frame.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecapOutcome {
    /// Not encapsulated: handed on unchanged.
    Plain = 0,
    /// IPIP: outer IPv4 removed.
    Ipv4InIpv4 = 1,
    /// IPv6 in IPv4.
    Ipv6InIpv4 = 2,
    /// IPv4 in IPv6.
    Ipv4InIpv6 = 3,
    /// ip6ip6.
    Ipv6InIpv6 = 4,
    /// The frame could not be shrunk: dropped.
    Failed = 5,
    /// GUE (UDP to [`GUE_PORT`]) carrying IPv4, over IPv4 or IPv6.
    GueIpv4 = 6,
    /// GUE carrying IPv6.
    GueIpv6 = 7,
}

impl DecapOutcome {
    /// Entries of [`DECAP_OUTCOMES`].
    pub const COUNT: u32 = 8;
}

/// The flow hash of a frame's addresses, ports and protocol, the same in
/// the program and the model: it picks the ring slot and the outer source.
/// The two halves of each address and the ports are mixed with
/// multiplications (no table, no loop the verifier must bound).
#[inline(always)]
pub const fn flow_hash(src: (u64, u64), dst: (u64, u64), ports: u32, proto: u8) -> u32 {
    let mut h = 0x9e37_79b9_7f4a_7c15u64 ^ (proto as u64);
    h = mix(h ^ src.0);
    h = mix(h ^ src.1);
    h = mix(h ^ dst.0);
    h = mix(h ^ dst.1);
    h = mix(h ^ ports as u64);
    (h ^ (h >> 32)) as u32
}

#[inline(always)]
const fn mix(h: u64) -> u64 {
    let h = (h ^ (h >> 31)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^ (h >> 29)
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain old data, `#[repr(C)]`, no padding (sizes checked below).
    unsafe impl aya::Pod for super::VipKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Vip {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Real {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowKey4 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowReal {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::LbConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::VipRecord {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::MemberKey {}
    unsafe impl aya::Pod for super::GuardWindow {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::VipCounters {}
}

const _: () = assert!(core::mem::size_of::<VipKey>() == 20);
const _: () = assert!(core::mem::size_of::<Vip>() == 16);
const _: () = assert!(core::mem::size_of::<Real>() == 24);
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);
const _: () = assert!(core::mem::size_of::<FlowKey4>() == 16);
const _: () = assert!(core::mem::size_of::<FlowReal>() == 12);
const _: () = assert!(core::mem::size_of::<LbConfig>() == 48);
const _: () = assert!(core::mem::size_of::<GuardWindow>() == 16);
const _: () = assert!(core::mem::size_of::<VipCounters>() == 64);
const _: () = assert!(core::mem::size_of::<VipRecord>() == 40);
const _: () = assert!(core::mem::size_of::<MemberKey>() == 8);
