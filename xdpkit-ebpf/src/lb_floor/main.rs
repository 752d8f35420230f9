//! An anchor for `cargo xtask bench lb`, not a stage: the least an L4
//! balancer with a flow table does for an IPv4 TCP frame to a VIP. Parse
//! (fixed offsets), the VIP, the flow table (for a new flow: the ring and
//! an insert), the real, an IPIP header toward it, `XDP_TX`. No counters,
//! no IPv6, GUE, QUIC, MTU check or guard, no chain. It uses the
//! balancer's map types and hash, so the bench fills both alike and their
//! outputs are the same bytes: what xdpkit's balancer costs above this is
//! its own design's, what this costs is the kernel's maps and helpers.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_xdp_adjust_head,
    macros::{map, xdp},
    maps::{Array, HashMap, LruHashMap},
    programs::XdpContext,
};
use xdpkit_common::balancer::{
    flow_hash, FlowKey, FlowReal, LbConfig, Real, Vip, VipKey, LB_MAX_FLOWS, LB_MAX_REALS,
    LB_MAX_VIPS, LB_RING_SLOTS, PROTO_TCP,
};

xdpkit_ebpf::license!();

#[map(name = "LB_VIPS")]
static VIPS: HashMap<VipKey, Vip> = HashMap::with_max_entries(LB_MAX_VIPS, 0);
#[map(name = "LB_RINGS")]
static RINGS: Array<u32> = Array::with_max_entries(LB_RING_SLOTS, 0);
#[map(name = "LB_REALS")]
static REALS: Array<Real> = Array::with_max_entries(LB_MAX_REALS, 0);
#[map(name = "LB_FLOWS")]
static FLOWS: LruHashMap<FlowKey, FlowReal> = LruHashMap::with_max_entries(LB_MAX_FLOWS, 0);
#[map(name = "LB_CONFIG")]
static CONFIG: Array<LbConfig> = Array::with_max_entries(1, 0);

/// Ethernet + IPv4 without options + the TCP header's first 14 bytes.
const SEEN: usize = 14 + 20 + 14;
const OUTER: usize = 20;

#[xdp]
pub fn xdpkit_lb_floor(ctx: XdpContext) -> u32 {
    balance(&ctx).unwrap_or(xdp_action::XDP_PASS)
}

#[inline(always)]
fn balance(ctx: &XdpContext) -> Option<u32> {
    if ctx.data() + SEEN > ctx.data_end() {
        return None;
    }
    // SAFETY: SEEN bytes lie in the frame (checked above).
    let f = unsafe { &*(ctx.data() as *const [u8; SEEN]) };
    if f[12] != 0x08 || f[13] != 0 || f[14] != 0x45 || f[23] != PROTO_TCP {
        return None;
    }
    let mut key = FlowKey {
        proto: PROTO_TCP,
        sport: u16::from_ne_bytes([f[34], f[35]]),
        dport: u16::from_ne_bytes([f[36], f[37]]),
        ..FlowKey::default()
    };
    key.src[..4].copy_from_slice(&f[26..30]);
    key.dst[..4].copy_from_slice(&f[30..34]);
    let syn = f[47] & 0x12 == 0x02;
    let (tos, ip_len) = (f[15], u16::from_be_bytes([f[16], f[17]]));
    let mut dmac = [0u8; 6];
    dmac.copy_from_slice(&f[6..12]);
    let mut smac = [0u8; 6];
    smac.copy_from_slice(&f[..6]);
    let vip_key = VipKey {
        addr: key.dst,
        port: key.dport,
        proto: PROTO_TCP,
        v6: 0,
    };
    // SAFETY: values are replaced whole, never edited in place.
    let vip = unsafe { VIPS.get(&vip_key) }?;
    let cfg = CONFIG.get(0)?;
    if cfg.gateway != [0; 6] {
        dmac = cfg.gateway;
    }
    // SAFETY: as above. A SYN looks up too (the balancer's measured choice).
    let (index, hash) = match (unsafe { FLOWS.get(&key) }, syn) {
        (Some(e), false) => (e.real, e.hash),
        _ => {
            let ports = (u32::from(key.sport) << 16) | u32::from(key.dport);
            let src = u64::from(u32::from_be_bytes([f[26], f[27], f[28], f[29]])) << 32;
            let dst = u64::from(u32::from_be_bytes([f[30], f[31], f[32], f[33]])) << 32;
            let hash = flow_hash((src, 0), (dst, 0), ports, PROTO_TCP);
            if vip.ring_size == 0 {
                return Some(xdp_action::XDP_DROP);
            }
            let index = *RINGS.get(vip.ring_base.wrapping_add(hash % vip.ring_size))?;
            let entry = FlowReal {
                real: index,
                vip: vip.id,
                hash,
            };
            let _ = FLOWS.insert(&key, &entry, 0);
            (index, hash)
        }
    };
    let real = REALS.get(index)?;
    let total = ip_len.checked_add(OUTER as u16)?;
    let bits = cfg.src4_bits.min(16);
    let host = if bits == 0 {
        0
    } else {
        hash & ((1u32 << bits) - 1)
    };
    let outer_src = u32::from_be_bytes(cfg.src4.to_ne_bytes()) | host;
    // SAFETY: a helper on this program's context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(OUTER as i32)) } != 0 {
        return Some(xdp_action::XDP_DROP);
    }
    if ctx.data() + 14 + OUTER > ctx.data_end() {
        return Some(xdp_action::XDP_DROP);
    }
    // SAFETY: 34 bytes lie in the frame (checked above).
    let h = unsafe { &mut *(ctx.data() as *mut [u8; 14 + OUTER]) };
    h[..6].copy_from_slice(&dmac);
    h[6..12].copy_from_slice(&smac);
    h[12] = 0x08;
    h[13] = 0;
    h[14] = 0x45;
    h[15] = tos;
    h[16..18].copy_from_slice(&total.to_be_bytes());
    h[18..22].fill(0);
    h[22] = 64;
    h[23] = 4;
    h[24..26].fill(0);
    h[26..30].copy_from_slice(&outer_src.to_be_bytes());
    h[30..34].copy_from_slice(&real.addr[..4]);
    let mut acc: u32 = 0;
    for i in 0..10 {
        acc += u32::from(u16::from_be_bytes([h[14 + 2 * i], h[15 + 2 * i]]));
    }
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    h[24..26].copy_from_slice(&(!(acc as u16)).to_be_bytes());
    Some(xdp_action::XDP_TX)
}
