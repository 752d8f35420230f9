//! The `decap` program, for the reals behind a `balancer`: takes the outer
//! IP header off IPIP, IPv6-in-IPv4, IPv4-in-IPv6 and ip6ip6 frames (and
//! the outer IP + UDP header off GUE frames to [`GUE_PORT`]) and hands the
//! inner packet on (to the stack, where the VIP sits on `lo`); any other
//! frame goes on unchanged.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::bpf_xdp_adjust_head,
    macros::{map, xdp},
    maps::PerCpuArray,
    programs::XdpContext,
};
use xdpkit_common::{
    balancer::{DecapOutcome, GUE_PORT},
    ActionCounter, XdpAction,
};
use xdpkit_ebpf::{
    chain,
    stats::{add, count_len, frame_len},
};

xdpkit_ebpf::license!();

#[map(name = "DECAP_OUTCOMES")]
static OUTCOMES: PerCpuArray<ActionCounter> = PerCpuArray::with_max_entries(DecapOutcome::COUNT, 0);

const ETH_HLEN: usize = 14;
const UDP_HLEN: usize = 8;

#[xdp(frags)]
pub fn xdpkit_decap(ctx: XdpContext) -> u32 {
    let len = frame_len(&ctx);
    let (outer, inner_type, outcome) = match outer_header(&ctx) {
        Some(found) => found,
        None => {
            bump(DecapOutcome::Plain, len);
            return chain::next_len(&ctx, len);
        }
    };
    let start = ctx.data();
    if start + ETH_HLEN > ctx.data_end() {
        bump(DecapOutcome::Plain, len);
        return chain::next_len(&ctx, len);
    }
    // SAFETY: 14 bytes at `start` lie in the frame (checked above).
    let mut eth = unsafe { core::ptr::read_unaligned(start as *const [u8; ETH_HLEN]) };
    eth[12..].copy_from_slice(&inner_type.to_be_bytes());
    // SAFETY: a helper on this program's context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, outer as i32) } != 0 {
        bump(DecapOutcome::Failed, len);
        return count_len(&ctx, XdpAction::Drop, len);
    }
    let start = ctx.data();
    if start + ETH_HLEN > ctx.data_end() {
        bump(DecapOutcome::Failed, len);
        return count_len(&ctx, XdpAction::Drop, len);
    }
    // SAFETY: as above, after the move.
    unsafe { core::ptr::write_unaligned(start as *mut [u8; ETH_HLEN], eth) };
    bump(outcome, len);
    // Handed on without its outer header.
    chain::next_len(&ctx, len - outer as u64)
}

/// The outer header's length, the inner packet's EtherType and the kind,
/// if the frame is IPv4 (no options, not a fragment) or IPv6 carrying IPv4
/// or IPv6 directly.
#[inline(always)]
fn outer_header(ctx: &XdpContext) -> Option<(usize, u16, DecapOutcome)> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + ETH_HLEN + 20 > end {
        return None;
    }
    // SAFETY: 34 bytes at `start` lie in the frame (checked above).
    let h = unsafe { core::ptr::read_unaligned(start as *const [u8; ETH_HLEN + 20]) };
    match u16::from_be_bytes([h[12], h[13]]) {
        0x0800 => {
            if h[14] != 0x45 || u16::from_be_bytes([h[20], h[21]]) & 0x3fff != 0 {
                return None;
            }
            match h[23] {
                4 => Some((20, 0x0800, DecapOutcome::Ipv4InIpv4)),
                41 => Some((20, 0x86dd, DecapOutcome::Ipv6InIpv4)),
                17 => gue(ctx, 20),
                _ => None,
            }
        }
        0x86dd => {
            if start + ETH_HLEN + 40 > end {
                return None;
            }
            match h[20] {
                4 => Some((40, 0x0800, DecapOutcome::Ipv4InIpv6)),
                41 => Some((40, 0x86dd, DecapOutcome::Ipv6InIpv6)),
                17 => gue(ctx, 40),
                _ => None,
            }
        }
        _ => None,
    }
}

/// GUE variant 1 after an outer IP header of `ip` bytes: UDP to
/// [`GUE_PORT`], then an IP packet whose version says which.
#[inline(always)]
fn gue(ctx: &XdpContext, ip: usize) -> Option<(usize, u16, DecapOutcome)> {
    let start = ctx.data() + ETH_HLEN + ip;
    if start + UDP_HLEN + 1 > ctx.data_end() {
        return None;
    }
    // SAFETY: 9 bytes at `start` lie in the frame (checked above).
    let u = unsafe { core::ptr::read_unaligned(start as *const [u8; UDP_HLEN + 1]) };
    if u16::from_be_bytes([u[2], u[3]]) != GUE_PORT {
        return None;
    }
    match u[UDP_HLEN] >> 4 {
        4 => Some((ip + UDP_HLEN, 0x0800, DecapOutcome::GueIpv4)),
        6 => Some((ip + UDP_HLEN, 0x86dd, DecapOutcome::GueIpv6)),
        _ => None,
    }
}

#[inline(always)]
fn bump(outcome: DecapOutcome, len: u64) {
    add(&OUTCOMES, outcome as u32, len);
}
