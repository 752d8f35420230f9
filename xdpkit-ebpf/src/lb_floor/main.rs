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
    flow_hash, FlowKey4, FlowReal, LbConfig, Real, Vip, VipKey, LB_MAX_FLOWS, LB_MAX_REALS,
    LB_MAX_VIPS, LB_RING_SLOTS, PROTO_TCP,
};
use xdpkit_ebpf::unaligned::{load, store};

xdpkit_ebpf::license!();

#[map(name = "LB_VIPS")]
static VIPS: HashMap<VipKey, Vip> = HashMap::with_max_entries(LB_MAX_VIPS, 0);
#[map(name = "LB_RINGS")]
static RINGS: Array<u32> = Array::with_max_entries(LB_RING_SLOTS, 0);
#[map(name = "LB_REALS")]
static REALS: Array<Real> = Array::with_max_entries(LB_MAX_REALS, 0);
#[map(name = "LB_FLOWS4")]
static FLOWS: LruHashMap<FlowKey4, FlowReal> = LruHashMap::with_max_entries(LB_MAX_FLOWS, 0);
#[map(name = "LB_CONFIG")]
static CONFIG: Array<LbConfig> = Array::with_max_entries(1, 0);

/// Ethernet + IPv4 without options + the TCP header's first 14 bytes.
const SEEN: usize = 14 + 20 + 14;
const OUTER: usize = 20;

/// A map key on the stack, 8-aligned so it is written a word at a time.
#[repr(C, align(8))]
struct Aligned<T>(T);

#[xdp]
pub fn xdpkit_lb_floor(ctx: XdpContext) -> u32 {
    balance(&ctx).unwrap_or(xdp_action::XDP_PASS)
}

/// Word loads and stores throughout (what LLVM does byte by byte for an
/// access it cannot prove aligned), as xdpkit's balancer does.
#[inline(always)]
fn balance(ctx: &XdpContext) -> Option<u32> {
    let d = ctx.data();
    if d + SEEN > ctx.data_end() {
        return None;
    }
    let p = d as *const u8;
    let mut key = core::mem::MaybeUninit::<Aligned<FlowKey4>>::uninit();
    let mut vip_key = core::mem::MaybeUninit::<Aligned<VipKey>>::uninit();
    // SAFETY: every load lies in the SEEN bytes checked above; the stores
    // fill the two keys (16 and 20 bytes, 8-aligned) whole.
    let (w12, ip_len, src, dst, syn, macs) = unsafe {
        let w12 = load::<4>(p.add(12)) as u32;
        let proto = (load::<2>(p.add(22)) >> 8) as u8;
        if w12 & 0x00ff_ffff != u32::from_ne_bytes([0x08, 0x00, 0x45, 0]) || proto != PROTO_TCP {
            return None;
        }
        let ip_len = u16::from_be(load::<2>(p.add(16)) as u16);
        let (src, dst, ports) = (
            load::<4>(p.add(26)),
            load::<4>(p.add(30)),
            load::<4>(p.add(34)),
        );
        let syn = *p.add(47) & 0x12 == 0x02;
        let k = key.as_mut_ptr().cast::<u64>();
        k.write(src | dst << 32);
        // Source port, destination port (as in the frame), protocol, pad.
        k.add(1).write(ports | (u64::from(PROTO_TCP) << 32));
        let v = vip_key.as_mut_ptr().cast::<u64>();
        v.write(dst);
        v.add(1).write(0);
        v.add(2)
            .cast::<u32>()
            .write(((ports >> 16) as u32) | (u32::from(PROTO_TCP) << 16));
        let macs = (
            load::<4>(p),
            load::<2>(p.add(4)),
            load::<2>(p.add(6)),
            load::<4>(p.add(8)),
        );
        (w12, ip_len, src, dst, syn, macs)
    };
    // SAFETY: both keys were written whole above.
    let (key, vip_key) = unsafe { (&key.assume_init_ref().0, &vip_key.assume_init_ref().0) };
    // SAFETY: values are replaced whole, never edited in place.
    let vip = unsafe { VIPS.get(vip_key) }?;
    let cfg = CONFIG.get(0)?;
    // SAFETY: as above. A SYN looks up too (the balancer's measured choice).
    let (index, hash) = match (unsafe { FLOWS.get(key) }, syn) {
        (Some(e), false) => (e.real, e.hash),
        _ => {
            let be = |w: u64| u64::from(u32::from_be(w as u32)) << 32;
            let ports = (u32::from(key.sport) << 16) | u32::from(key.dport);
            let hash = flow_hash((be(src), 0), (be(dst), 0), ports, PROTO_TCP);
            if vip.ring_size == 0 {
                return Some(xdp_action::XDP_DROP);
            }
            let index = *RINGS.get(vip.ring_base.wrapping_add(hash % vip.ring_size))?;
            let entry = FlowReal {
                real: index,
                vip: vip.id,
                hash,
            };
            let _ = FLOWS.insert(key, &entry, 0);
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
    // SAFETY: the real's address is 16 bytes of a map value.
    let real_dst = u32::from_be(unsafe { load::<4>(real.addr.as_ptr()) } as u32);
    // SAFETY: a helper on this program's context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(OUTER as i32)) } != 0 {
        return Some(xdp_action::XDP_DROP);
    }
    let h = ctx.data();
    if h + 14 + OUTER > ctx.data_end() {
        return Some(xdp_action::XDP_DROP);
    }
    let tos = w12 >> 24;
    // The IPv4 header's 16-bit words, summed (RFC 1071).
    let mut sum = (0x4500 | tos) + u32::from(total) + 0x4004;
    sum += (outer_src >> 16) + (outer_src & 0xffff) + (real_dst >> 16) + (real_dst & 0xffff);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    let csum = !(sum as u16);
    let h = h as *mut u8;
    let (m0, m4, m6, m8) = macs;
    // SAFETY: 34 bytes at `h` lie in the frame (checked above); the
    // gateway is 6 bytes of a map value.
    unsafe {
        if cfg.gateway == [0; 6] {
            store::<2>(h, m6);
            store::<4>(h.add(2), m8);
        } else {
            store::<4>(h, load::<4>(cfg.gateway.as_ptr()));
            store::<2>(h.add(4), load::<2>(cfg.gateway.as_ptr().add(4)));
        }
        store::<4>(h.add(6), m0);
        store::<2>(h.add(10), m4);
        store::<2>(h.add(12), u64::from(u16::from_ne_bytes([0x08, 0x00])));
        let ver_tos_len = u32::from_ne_bytes([0x45, tos as u8, (total >> 8) as u8, total as u8]);
        store::<4>(h.add(14), u64::from(ver_tos_len));
        store::<4>(h.add(18), 0);
        let ttl_proto_csum = u32::from_ne_bytes([64, 4, (csum >> 8) as u8, csum as u8]);
        store::<4>(h.add(22), u64::from(ttl_proto_csum));
        store::<4>(h.add(26), u64::from(outer_src.to_be()));
        store::<4>(h.add(30), u64::from(real_dst.to_be()));
    }
    Some(xdp_action::XDP_TX)
}
