//! The `route` program: IPv4 and IPv6 forwarding with the kernel's own
//! routes and neighbours (`bpf_fib_lookup`, as the kernel's xdp_fwd sample
//! and xdp-tools' xdp-forward do). A frame the FIB sends out of one of the
//! ports (`ROUTE_PORTS`) leaves there with its TTL or hop limit lowered,
//! the IPv4 checksum updated and the MACs of the FIB's answer; any frame
//! the stack must see (a neighbour to resolve, TTL expiring, fragments,
//! options, local or odd addresses, anything not IP) goes on down the
//! chain untouched, and after the last stage to the stack. Each outcome is
//! counted (`xdpkit_common::route::RouteOutcome`).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::bpf_fib_lookup as FibParams,
    helpers::generated::bpf_fib_lookup,
    macros::{map, xdp},
    maps::{Array, DevMapHash, PerCpuArray},
    programs::XdpContext,
};
use xdpkit_common::{
    route::{RouteOutcome, RouteTrace, NO_LOOKUP, ROUTE_MAX_PORTS},
    ActionCounter, XdpAction,
};
use xdpkit_ebpf::{
    chain,
    stats::{add, count_len, frame_len},
};

xdpkit_ebpf::license!();

#[map(name = "ROUTE_PORTS")]
static PORTS: DevMapHash = DevMapHash::with_max_entries(ROUTE_MAX_PORTS, 0);
#[map(name = "ROUTE_OUTCOMES")]
static OUTCOMES: PerCpuArray<ActionCounter> = PerCpuArray::with_max_entries(RouteOutcome::COUNT, 0);
#[map(name = "ROUTE_TRACE")]
static TRACE: Array<RouteTrace> = Array::with_max_entries(1, 0);

/// Set by the loader for `route simulate` only: the last decision goes to
/// `ROUTE_TRACE`. Zero in every attached stage, where the verifier drops
/// the writes as dead code.
#[unsafe(no_mangle)]
static ROUTE_TRACE_ON: u32 = 0;

const ETH_HLEN: usize = 14;
const IPV4_END: usize = ETH_HLEN + 20;
const IPV6_END: usize = ETH_HLEN + 40;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const FIB_SUCCESS: u32 = 0;
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_FRAGMENT: u8 = 44;

/// The parameters of `bpf_fib_lookup` (`struct bpf_fib_lookup`), with the
/// unions as bytes: IPv4 addresses sit in the first 4 bytes of `src` and
/// `dst`, the IPv4 TOS in the first byte of `flowinfo`.
#[repr(C)]
struct Fib {
    family: u8,
    l4_protocol: u8,
    sport: u16,
    dport: u16,
    /// In: the packet's length (the kernel checks it against the egress
    /// MTU). Out, on "too big": the MTU.
    tot_len: u16,
    /// In: the ingress interface. Out: the egress interface.
    ifindex: u32,
    flowinfo: [u8; 4],
    src: [u8; 16],
    /// In: the destination. Out: the next hop.
    dst: [u8; 16],
    tbid: u32,
    smac: [u8; 6],
    dmac: [u8; 6],
}

const _: () = assert!(core::mem::size_of::<Fib>() == core::mem::size_of::<FibParams>());

impl Fib {
    const fn new() -> Fib {
        Fib {
            family: 0,
            l4_protocol: 0,
            sport: 0,
            dport: 0,
            tot_len: 0,
            ifindex: 0,
            flowinfo: [0; 4],
            src: [0; 16],
            dst: [0; 16],
            tbid: 0,
            smac: [0; 6],
            dmac: [0; 6],
        }
    }
}

#[xdp(frags)]
pub fn xdpkit_route(ctx: XdpContext) -> u32 {
    let len = frame_len(&ctx);
    let mut fib = Fib::new();
    let mut rc = NO_LOOKUP;
    let outcome = route(&ctx, len, &mut fib, &mut rc);
    add(&OUTCOMES, outcome as u32, len);
    // SAFETY: a plain read of a static; volatile so LLVM cannot fold the
    // value the loader overrides.
    if unsafe { core::ptr::read_volatile(&ROUTE_TRACE_ON) } != 0 {
        trace(outcome, rc, &fib);
    }
    match outcome {
        RouteOutcome::Forwarded => count_len(&ctx, XdpAction::Redirect, len),
        _ => chain::next_len(&ctx, len),
    }
}

/// Decides, and for a frame it forwards, rewrites the frame and sets the
/// redirect. Every check that can send the frame to the stack comes
/// before the first write, so a frame handed on is the frame received.
#[inline(always)]
fn route(ctx: &XdpContext, len: u64, fib: &mut Fib, rc: &mut u32) -> RouteOutcome {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + ETH_HLEN > end {
        return RouteOutcome::Malformed;
    }
    // SAFETY: 14 bytes at `start` lie in the frame (checked above).
    let eth = unsafe { core::ptr::read_unaligned(start as *const [u8; ETH_HLEN]) };
    let v4 = match u16::from_be_bytes([eth[12], eth[13]]) {
        0x0800 => true,
        0x86dd => false,
        _ => return RouteOutcome::NotIp,
    };
    if eth[0] & 1 != 0 {
        return RouteOutcome::LinkMulticast;
    }
    let checked = if v4 {
        ipv4(ctx, len, fib)
    } else {
        ipv6(ctx, len, fib)
    };
    if let Err(outcome) = checked {
        return outcome;
    }
    fib.ifindex = ctx.ingress_ifindex() as u32;
    // SAFETY: `fib` is a whole `struct bpf_fib_lookup` (same size and
    // layout) on this program's stack, for the helper to read and write.
    let code = unsafe {
        bpf_fib_lookup(
            ctx.ctx.cast(),
            (fib as *mut Fib).cast::<FibParams>(),
            core::mem::size_of::<Fib>() as i32,
            0,
        )
    } as u32;
    *rc = code;
    if code != FIB_SUCCESS {
        return RouteOutcome::of_fib(code);
    }
    // The redirect is set here and carried out after the program returns,
    // so the frame can still be rewritten; an egress that is not a port
    // leaves the frame untouched and goes to the stack.
    if PORTS
        .redirect(fib.ifindex, u64::from(XdpAction::Pass as u32))
        .is_err()
    {
        return RouteOutcome::NotPort;
    }
    if rewrite(ctx, fib, v4) {
        RouteOutcome::Forwarded
    } else {
        // Cannot happen (the headers were read above); the frame is
        // untouched, so the stack may have it.
        RouteOutcome::Malformed
    }
}

/// Checks an IPv4 header against the frame's whole length `len` (a jumbo
/// frame's linear part holds only its headers) and fills the lookup; the
/// error is why the stack gets the frame.
#[inline(always)]
fn ipv4(ctx: &XdpContext, len: u64, fib: &mut Fib) -> Result<(), RouteOutcome> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + IPV4_END > end {
        return Err(RouteOutcome::Malformed);
    }
    // SAFETY: 34 bytes at `start` lie in the frame (checked above).
    let h = unsafe { core::ptr::read_unaligned((start + ETH_HLEN) as *const [u8; 20]) };
    if h[0] >> 4 != 4 || h[0] & 0x0f < 5 {
        return Err(RouteOutcome::Malformed);
    }
    let total = u16::from_be_bytes([h[2], h[3]]);
    if total < 20 || (ETH_HLEN + total as usize) as u64 > len {
        return Err(RouteOutcome::Malformed);
    }
    if h[0] & 0x0f != 5 {
        return Err(RouteOutcome::Options);
    }
    let mut sum: u32 = 0;
    let mut i = 0;
    // 10 steps, unrolled: the verifier sees no loop.
    while i < 20 {
        sum += u32::from(u16::from_be_bytes([h[i], h[i + 1]]));
        i += 2;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    if sum != 0xffff {
        return Err(RouteOutcome::Malformed);
    }
    if martian4([h[12], h[13], h[14], h[15]]) || martian4([h[16], h[17], h[18], h[19]]) {
        return Err(RouteOutcome::Martian);
    }
    if u16::from_be_bytes([h[6], h[7]]) & 0x3fff != 0 {
        return Err(RouteOutcome::Fragment);
    }
    if h[8] <= 1 {
        return Err(RouteOutcome::TtlExpired);
    }
    fib.family = AF_INET;
    fib.flowinfo[0] = h[1];
    fib.l4_protocol = h[9];
    fib.tot_len = total;
    fib.src[..4].copy_from_slice(&h[12..16]);
    fib.dst[..4].copy_from_slice(&h[16..20]);
    Ok(())
}

/// Addresses the stack never forwards: 0/8, 127/8, multicast and above.
#[inline(always)]
fn martian4(a: [u8; 4]) -> bool {
    a[0] == 0 || a[0] == 127 || a[0] >= 224
}

/// Checks an IPv6 header (against the whole length, as [`ipv4`]) and fills
/// the lookup.
#[inline(always)]
fn ipv6(ctx: &XdpContext, len: u64, fib: &mut Fib) -> Result<(), RouteOutcome> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + IPV6_END > end {
        return Err(RouteOutcome::Malformed);
    }
    // SAFETY: 54 bytes at `start` lie in the frame (checked above).
    let h = unsafe { core::ptr::read_unaligned((start + ETH_HLEN) as *const [u8; 40]) };
    if h[0] >> 4 != 6 {
        return Err(RouteOutcome::Malformed);
    }
    let payload = u16::from_be_bytes([h[4], h[5]]);
    if (IPV6_END + payload as usize) as u64 > len {
        return Err(RouteOutcome::Malformed);
    }
    let mut src = [0u8; 16];
    src.copy_from_slice(&h[8..24]);
    let mut dst = [0u8; 16];
    dst.copy_from_slice(&h[24..40]);
    if martian6(&src) || martian6(&dst) {
        return Err(RouteOutcome::Martian);
    }
    match h[6] {
        NEXTHDR_HOP => return Err(RouteOutcome::Options),
        NEXTHDR_FRAGMENT => return Err(RouteOutcome::Fragment),
        _ => {}
    }
    if h[7] <= 1 {
        return Err(RouteOutcome::TtlExpired);
    }
    fib.family = AF_INET6;
    fib.flowinfo = [h[0] & 0x0f, h[1], h[2], h[3]];
    fib.l4_protocol = h[6];
    fib.tot_len = payload.saturating_add(40);
    fib.src = src;
    fib.dst = dst;
    Ok(())
}

/// Addresses the stack never forwards: unspecified, loopback, link-local
/// (fe80::/10) and multicast.
#[inline(always)]
fn martian6(a: &[u8; 16]) -> bool {
    let high = u64::from_be_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]);
    let low = u64::from_be_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]);
    (high == 0 && low <= 1) || a[0] == 0xff || (a[0] == 0xfe && a[1] & 0xc0 == 0x80)
}

/// Lowers the TTL (updating the IPv4 checksum) or hop limit and writes
/// the MACs of the FIB's answer. `false` if the headers are not there.
#[inline(always)]
fn rewrite(ctx: &XdpContext, fib: &Fib, v4: bool) -> bool {
    let start = ctx.data();
    let end = ctx.data_end();
    let base = start as *mut u8;
    if v4 {
        if start + IPV4_END > end {
            return false;
        }
        // SAFETY: bytes 14..34 lie in the frame (checked above).
        unsafe {
            let ttl = base.add(ETH_HLEN + 8);
            let check = base.add(ETH_HLEN + 10) as *mut u16;
            // The kernel's ip_decrease_ttl: the TTL is the high byte of
            // its 16-bit word, so the checksum (in network order, read as
            // is) gains 0x0100 with the end-around carry.
            let mut sum = u32::from(core::ptr::read_unaligned(check));
            sum += u32::from(0x0100u16.to_be());
            sum += u32::from(sum >= 0xffff);
            core::ptr::write_unaligned(check, sum as u16);
            *ttl -= 1;
        }
    } else {
        if start + IPV6_END > end {
            return false;
        }
        // SAFETY: byte 21 lies in the frame (checked above).
        unsafe { *base.add(ETH_HLEN + 7) -= 1 };
    }
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&fib.dmac);
    macs[6..].copy_from_slice(&fib.smac);
    // SAFETY: 12 bytes at `start` lie in the frame (checked above).
    unsafe { core::ptr::write_unaligned(base as *mut [u8; 12], macs) };
    true
}

/// Records the decision for `route simulate`.
#[inline(always)]
fn trace(outcome: RouteOutcome, rc: u32, fib: &Fib) {
    let Some(t) = TRACE.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the map's one entry, which exists for the life of the map.
    unsafe {
        *t = RouteTrace {
            outcome: outcome as u32,
            rc,
            ifindex: fib.ifindex,
            mtu: u32::from(fib.tot_len),
            family: u32::from(fib.family),
            looked_up: u32::from(rc != NO_LOOKUP),
            next_hop: fib.dst,
            smac: fib.smac,
            dmac: fib.dmac,
            pad: [0; 4],
        };
    }
}
