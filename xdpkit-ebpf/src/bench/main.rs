//! The bench program (`xdpkit bench`): one verdict for every frame, after
//! touching the frame as much as asked, to measure what each step costs.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, CpuMap, DevMap},
    programs::XdpContext,
};
use xdpkit_common::{
    bench::{
        BenchConfig, BENCH_DROP, BENCH_MAX_CPUS, BENCH_PASS, BENCH_REDIRECT, BENCH_REDIRECT_CPU,
        BENCH_TX, TOUCH_PARSE_IP, TOUCH_READ, TOUCH_SWAP_MACS,
    },
    XdpAction,
};

use xdpkit_ebpf::{
    frame::{swap_macs, ETH_HLEN},
    stats::count,
};

xdpkit_ebpf::license!();

#[map(name = "XDPKIT_BENCH_CFG")]
static CFG: Array<BenchConfig> = Array::with_max_entries(1, 0);
#[map(name = "XDPKIT_BENCH_DEV")]
static DEV: DevMap = DevMap::with_max_entries(1, 0);
#[map(name = "XDPKIT_BENCH_CPU")]
static CPUS: CpuMap = CpuMap::with_max_entries(BENCH_MAX_CPUS, 0);

const IPV6_HLEN: usize = 40;

#[xdp]
pub fn xdpkit_bench(ctx: XdpContext) -> u32 {
    let Some(cfg) = CFG.get(0) else {
        return count(&ctx, XdpAction::Aborted);
    };
    let touched = match cfg.touch {
        TOUCH_READ => read_eth(&ctx).map(core::hint::black_box).is_some(),
        TOUCH_PARSE_IP => parse_ip(&ctx),
        TOUCH_SWAP_MACS => swap_macs(&ctx),
        _ => true,
    };
    if !touched {
        return count(&ctx, XdpAction::Drop);
    }
    let code = match cfg.action {
        BENCH_DROP => xdp_action::XDP_DROP,
        BENCH_PASS => xdp_action::XDP_PASS,
        BENCH_TX => xdp_action::XDP_TX,
        BENCH_REDIRECT => match DEV.redirect(0, u64::from(xdp_action::XDP_ABORTED)) {
            Ok(code) | Err(code) => code,
        },
        BENCH_REDIRECT_CPU => match CPUS.redirect(cfg.cpu, u64::from(xdp_action::XDP_ABORTED)) {
            Ok(code) | Err(code) => code,
        },
        _ => xdp_action::XDP_ABORTED,
    };
    count(
        &ctx,
        XdpAction::from_u32(code).unwrap_or(XdpAction::Aborted),
    )
}

/// The EtherType, read from the frame (None if it is too short).
#[inline(always)]
fn read_eth(ctx: &XdpContext) -> Option<u16> {
    let start = ctx.data();
    if start + ETH_HLEN > ctx.data_end() {
        return None;
    }
    // SAFETY: bytes 12 and 13 are inside the frame, checked above.
    let ethertype = unsafe {
        let base = start as *const u8;
        u16::from_be_bytes([*base.add(12), *base.add(13)])
    };
    Some(ethertype)
}

/// Reads Ethernet and the IP header's protocol and addresses, as a filter
/// would; false if the frame is too short for what its EtherType says.
#[inline(always)]
fn parse_ip(ctx: &XdpContext) -> bool {
    let Some(ethertype) = read_eth(ctx) else {
        return false;
    };
    let start = ctx.data();
    let ip = start + ETH_HLEN;
    // SAFETY: each read is inside the range checked just before it.
    unsafe {
        match ethertype {
            0x0800 => {
                if ip + 20 > ctx.data_end() {
                    return false;
                }
                let p = ip as *const u8;
                let sum = u32::from(*p.add(9))
                    ^ core::ptr::read_unaligned(p.add(12) as *const u32)
                    ^ core::ptr::read_unaligned(p.add(16) as *const u32);
                core::hint::black_box(sum);
                true
            }
            0x86dd => {
                if ip + IPV6_HLEN > ctx.data_end() {
                    return false;
                }
                let p = ip as *const u8;
                let sum = u64::from(*p.add(6))
                    ^ core::ptr::read_unaligned(p.add(8) as *const u64)
                    ^ core::ptr::read_unaligned(p.add(24) as *const u64);
                core::hint::black_box(sum);
                true
            }
            _ => true,
        }
    }
}
