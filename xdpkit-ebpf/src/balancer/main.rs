//! The `balancer` program: an L4 load balancer (see docs/balancer.md and
//! `xdpkit_common::balancer`). A TCP or UDP frame to a VIP goes to a real
//! chosen by the flow table or the VIP's Maglev ring, encapsulated toward
//! it (IPIP, IPv4 in IPv6, ip6ip6) and sent back out of the interface
//! (`XDP_TX`); every other frame goes on down the chain.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::bpf_xdp_adjust_head,
    macros::{map, xdp},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::XdpContext,
};
use xdpkit_common::{
    balancer::{
        flow_hash, FlowKey, FlowReal, LbConfig, LbOutcome, MemberKey, Real, Vip, VipKey, VipRecord,
        LB_MAX_FLOWS, LB_MAX_MEMBERS, LB_MAX_REALS, LB_MAX_VIPS, LB_NO_REAL, LB_RING_SLOTS,
        PROTO_TCP, PROTO_UDP, VIP_NO_FLOWS,
    },
    ActionCounter, XdpAction,
};
use xdpkit_ebpf::{
    chain,
    stats::{add, count},
};

xdpkit_ebpf::license!();

#[map(name = "LB_VIPS")]
static VIPS: HashMap<VipKey, Vip> = HashMap::with_max_entries(LB_MAX_VIPS, 0);
#[map(name = "LB_RINGS")]
static RINGS: Array<u32> = Array::with_max_entries(LB_RING_SLOTS, 0);
#[map(name = "LB_REALS")]
static REALS: Array<Real> = Array::with_max_entries(LB_MAX_REALS, 0);
/// `BPF_F_NO_COMMON_LRU`: an LRU list per CPU, no lock shared between them.
#[map(name = "LB_FLOWS")]
static FLOWS: LruHashMap<FlowKey, FlowReal> = LruHashMap::with_max_entries(LB_MAX_FLOWS, 2);
#[map(name = "LB_VIP_STATS")]
static VIP_STATS: PerCpuArray<ActionCounter> = PerCpuArray::with_max_entries(LB_MAX_VIPS, 0);
#[map(name = "LB_REAL_STATS")]
static REAL_STATS: PerCpuArray<ActionCounter> = PerCpuArray::with_max_entries(LB_MAX_REALS, 0);
#[map(name = "LB_OUTCOMES")]
static OUTCOMES: PerCpuArray<ActionCounter> = PerCpuArray::with_max_entries(LbOutcome::COUNT, 0);
#[map(name = "LB_CONFIG")]
static CONFIG: Array<LbConfig> = Array::with_max_entries(1, 0);
/// The declared VIPs and their reals (userspace only).
#[map(name = "LB_VIP_RECORDS")]
static VIP_RECORDS: Array<VipRecord> = Array::with_max_entries(LB_MAX_VIPS, 0);
#[map(name = "LB_MEMBERS")]
static MEMBERS: HashMap<MemberKey, u32> = HashMap::with_max_entries(LB_MAX_MEMBERS, 0);

const ETH_HLEN: usize = 14;
const IPV4_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const IPPROTO_IPIP: u8 = 4;
const IPPROTO_IPV6: u8 = 41;
const OUTER_TTL: u8 = 64;

/// What the balancer reads of a frame.
struct Frame {
    key: FlowKey,
    /// A TCP SYN without ACK: a new connection, which always consults the ring.
    syn: bool,
    /// The IP packet's length by its header (IPv4 total length, IPv6
    /// payload length + 40): the outer header's length field counts it.
    ip_len: u16,
    /// IPv4 TOS or IPv6 traffic class, copied to the outer header.
    tos: u8,
}

#[xdp]
pub fn xdpkit_balancer(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let Some(frame) = parse(&ctx) else {
        add(&OUTCOMES, LbOutcome::NotVip as u32, len);
        return chain::next(&ctx);
    };
    let vip_key = VipKey {
        addr: frame.key.dst,
        port: frame.key.dport,
        proto: frame.key.proto,
        v6: frame.key.v6,
    };
    // SAFETY: values are replaced whole by userspace, never edited in place.
    let Some(vip) = (unsafe { VIPS.get(&vip_key) }).copied() else {
        add(&OUTCOMES, LbOutcome::NotVip as u32, len);
        return chain::next(&ctx);
    };
    add(&VIP_STATS, vip.id, len);
    let (src, dst) = (halves(&frame.key.src), halves(&frame.key.dst));
    let ports = (u32::from(frame.key.sport) << 16) | u32::from(frame.key.dport);
    let hash = flow_hash(src, dst, ports, frame.key.proto);
    let use_flows = vip.flags & VIP_NO_FLOWS == 0;
    // A flow whose real has since been removed chooses again.
    let known = if use_flows && !frame.syn {
        // SAFETY: as above.
        match unsafe { FLOWS.get(&frame.key) } {
            Some(f) if f.vip == vip.id => real_at(f.real).map(|r| (f.real, r)),
            _ => None,
        }
    } else {
        None
    };
    let (index, real, outcome) = match known {
        Some((index, real)) => (index, real, LbOutcome::FlowHit),
        None => {
            if vip.ring_size == 0 {
                return verdict(&ctx, LbOutcome::NoReal, XdpAction::Drop, len);
            }
            let slot = vip.ring_base.wrapping_add(hash % vip.ring_size);
            let index = match RINGS.get(slot) {
                Some(i) if *i != LB_NO_REAL => *i,
                _ => return verdict(&ctx, LbOutcome::NoReal, XdpAction::Drop, len),
            };
            let Some(real) = real_at(index) else {
                return verdict(&ctx, LbOutcome::NoReal, XdpAction::Drop, len);
            };
            if use_flows {
                let entry = FlowReal {
                    real: index,
                    vip: vip.id,
                };
                // A full table evicts its least recently used entry.
                let _ = FLOWS.insert(&frame.key, &entry, 0);
            }
            (index, real, LbOutcome::FlowMiss)
        }
    };
    let Some(cfg) = CONFIG.get(0).copied() else {
        return verdict(&ctx, LbOutcome::EncapFailed, XdpAction::Drop, len);
    };
    if !encapsulate(&ctx, &frame, &real, &cfg, hash) {
        return verdict(&ctx, LbOutcome::EncapFailed, XdpAction::Drop, len);
    }
    add(&REAL_STATS, index, len);
    verdict(&ctx, outcome, XdpAction::Tx, len)
}

/// The real at `index`, if the slot holds one: read once per frame.
#[inline(always)]
fn real_at(index: u32) -> Option<Real> {
    REALS.get(index).filter(|r| r.used != 0).copied()
}

/// Counts `outcome` and the verdict.
#[inline(always)]
fn verdict(ctx: &XdpContext, outcome: LbOutcome, action: XdpAction, len: u64) -> u32 {
    add(&OUTCOMES, outcome as u32, len);
    count(ctx, action)
}

/// An address as two big-endian halves.
#[inline(always)]
fn halves(a: &[u8; 16]) -> (u64, u64) {
    let mut hi = [0u8; 8];
    let mut lo = [0u8; 8];
    hi.copy_from_slice(&a[..8]);
    lo.copy_from_slice(&a[8..]);
    (u64::from_be_bytes(hi), u64::from_be_bytes(lo))
}

/// `N` bytes of the frame at `off`, if it has them.
#[inline(always)]
fn bytes<const N: usize>(ctx: &XdpContext, off: usize) -> Option<[u8; N]> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + N > end {
        return None;
    }
    // SAFETY: `N` bytes at `start + off` lie in the frame (checked above).
    Some(unsafe { core::ptr::read_unaligned((start + off) as *const [u8; N]) })
}

/// The frame's flow, if it is TCP or UDP over IPv4 (no options, not a
/// fragment) or IPv6 (no extension header) after an untagged Ethernet
/// header. Anything else is not balanced.
#[inline(always)]
fn parse(ctx: &XdpContext) -> Option<Frame> {
    let eth = bytes::<ETH_HLEN>(ctx, 0)?;
    let mut key = FlowKey::default();
    let (l4, ip_len, tos) = match u16::from_be_bytes([eth[12], eth[13]]) {
        0x0800 => {
            let ip = bytes::<IPV4_HLEN>(ctx, ETH_HLEN)?;
            // Options, or a fragment (more fragments, or an offset).
            if ip[0] != 0x45 || (u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff) != 0 {
                return None;
            }
            key.proto = ip[9];
            key.src[..4].copy_from_slice(&ip[12..16]);
            key.dst[..4].copy_from_slice(&ip[16..20]);
            (
                ETH_HLEN + IPV4_HLEN,
                u16::from_be_bytes([ip[2], ip[3]]),
                ip[1],
            )
        }
        0x86dd => {
            let ip = bytes::<IPV6_HLEN>(ctx, ETH_HLEN)?;
            key.proto = ip[6];
            key.v6 = 1;
            key.src.copy_from_slice(&ip[8..24]);
            key.dst.copy_from_slice(&ip[24..40]);
            let payload = u16::from_be_bytes([ip[4], ip[5]]);
            (
                ETH_HLEN + IPV6_HLEN,
                payload.checked_add(IPV6_HLEN as u16)?,
                (ip[0] << 4) | (ip[1] >> 4),
            )
        }
        _ => return None,
    };
    let mut syn = false;
    match key.proto {
        PROTO_TCP => {
            let tcp = bytes::<20>(ctx, l4)?;
            key.sport = u16::from_ne_bytes([tcp[0], tcp[1]]);
            key.dport = u16::from_ne_bytes([tcp[2], tcp[3]]);
            // SYN set, ACK clear.
            syn = tcp[13] & 0x12 == 0x02;
        }
        PROTO_UDP => {
            let udp = bytes::<8>(ctx, l4)?;
            key.sport = u16::from_ne_bytes([udp[0], udp[1]]);
            key.dport = u16::from_ne_bytes([udp[2], udp[3]]);
        }
        _ => return None,
    }
    Some(Frame {
        key,
        syn,
        ip_len,
        tos,
    })
}

/// Puts an outer IP header toward `real` in front of the frame's IP
/// packet and a new Ethernet header in front of that: to the gateway (or
/// back to the frame's sender), from the interface's own address (the
/// frame's destination MAC). False if the frame cannot grow.
#[inline(always)]
fn encapsulate(ctx: &XdpContext, f: &Frame, real: &Real, cfg: &LbConfig, hash: u32) -> bool {
    let Some(eth) = bytes::<ETH_HLEN>(ctx, 0) else {
        return false;
    };
    let mut dmac = cfg.gateway;
    if dmac == [0; 6] {
        dmac.copy_from_slice(&eth[6..12]);
    }
    let mut smac = [0u8; 6];
    smac.copy_from_slice(&eth[..6]);
    let inner = if f.key.v6 != 0 {
        IPPROTO_IPV6
    } else {
        IPPROTO_IPIP
    };
    if real.v6 != 0 {
        let payload = f.ip_len;
        // SAFETY: a helper on this program's context.
        if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(IPV6_HLEN as i32)) } != 0 {
            return false;
        }
        let mut h = [0u8; ETH_HLEN + IPV6_HLEN];
        h[..6].copy_from_slice(&dmac);
        h[6..12].copy_from_slice(&smac);
        h[12] = 0x86;
        h[13] = 0xdd;
        let label = hash & 0xf_ffff;
        h[14] = 0x60 | (f.tos >> 4);
        h[15] = (f.tos << 4) | ((label >> 16) as u8 & 0x0f);
        h[16] = (label >> 8) as u8;
        h[17] = label as u8;
        h[18..20].copy_from_slice(&payload.to_be_bytes());
        h[20] = inner;
        h[21] = OUTER_TTL;
        h[22..30].copy_from_slice(&cfg.src6);
        h[34..38].copy_from_slice(&hash.to_be_bytes());
        h[38..54].copy_from_slice(&real.addr);
        write(ctx, &h)
    } else {
        let Some(total) = f.ip_len.checked_add(IPV4_HLEN as u16) else {
            return false;
        };
        // SAFETY: a helper on this program's context.
        if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(IPV4_HLEN as i32)) } != 0 {
            return false;
        }
        let mut h = [0u8; ETH_HLEN + IPV4_HLEN];
        h[..6].copy_from_slice(&dmac);
        h[6..12].copy_from_slice(&smac);
        h[12] = 0x08;
        h[14] = 0x45;
        h[15] = f.tos;
        h[16..18].copy_from_slice(&total.to_be_bytes());
        h[22] = OUTER_TTL;
        h[23] = inner;
        let bits = cfg.src4_bits.min(16);
        let host = if bits == 0 {
            0
        } else {
            hash & ((1u32 << bits) - 1)
        };
        let src = u32::from_be_bytes(cfg.src4.to_ne_bytes()) | host;
        h[26..30].copy_from_slice(&src.to_be_bytes());
        h[30..34].copy_from_slice(&real.addr[..4]);
        let sum = ipv4_checksum(&h[14..34]);
        h[24..26].copy_from_slice(&sum.to_be_bytes());
        write(ctx, &h)
    }
}

/// The IPv4 header checksum of `header` (its checksum field zero).
#[inline(always)]
fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum = 0u32;
    for i in 0..IPV4_HLEN / 2 {
        sum += u32::from(u16::from_be_bytes([header[2 * i], header[2 * i + 1]]));
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Writes `h` at the start of the frame.
#[inline(always)]
fn write<const N: usize>(ctx: &XdpContext, h: &[u8; N]) -> bool {
    let start = ctx.data();
    if start + N > ctx.data_end() {
        return false;
    }
    // SAFETY: `N` bytes at `start` lie in the frame (checked above).
    unsafe { core::ptr::write_unaligned(start as *mut [u8; N], *h) };
    true
}
