//! The `cpu` program: spreads flows over CPUs through a CPUMAP (see
//! `xdpkit_common::cpumap`), and the program the CPUMAP's entries run on
//! the target CPU, which counts the frame there and passes or drops it.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, CpuMap, PerCpuArray},
    programs::XdpContext,
};
use xdpkit_common::{
    cpumap::{hash_word, pick, CpuConfig, HASH_SEED, MAX_CPUS, THEN_DROP},
    ActionCounter, XdpAction,
};
use xdpkit_ebpf::{
    frame::ETH_HLEN,
    stats::{add, count},
    unaligned::load,
};

xdpkit_ebpf::license!();

#[map(name = "XDPKIT_CPUMAP")]
static CPUS: CpuMap = CpuMap::with_max_entries(MAX_CPUS, 0);
#[map(name = "XDPKIT_CPU_CFG")]
static CONFIG: Array<CpuConfig> = Array::with_max_entries(1, 0);
#[map(name = "XDPKIT_CPU_RUN")]
static RUN: PerCpuArray<ActionCounter> = PerCpuArray::with_max_entries(1, 0);
#[map(name = "XDPKIT_CPU_SENT")]
static SENT: PerCpuArray<ActionCounter> = PerCpuArray::with_max_entries(MAX_CPUS, 0);

const IPV4_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const TCP: u8 = 6;
const UDP: u8 = 17;

/// Redirects the frame to the CPU its flow hashes to; passes it while the
/// stage has no CPUs (only in test harnesses: attach and apply need them).
#[xdp(frags)]
pub fn xdpkit_cpu(ctx: XdpContext) -> u32 {
    let Some(cfg) = CONFIG.get(0) else {
        return count(&ctx, XdpAction::Aborted);
    };
    if cfg.count == 0 {
        return count(&ctx, XdpAction::Pass);
    }
    let index = match flow_hash(&ctx) {
        Some(hash) => pick(hash, cfg.count),
        None => 0,
    };
    let Some(&cpu) = cfg.cpus.get(index as usize) else {
        return count(&ctx, XdpAction::Aborted);
    };
    let code = match CPUS.redirect(cpu, u64::from(xdp_action::XDP_PASS)) {
        Ok(code) | Err(code) => code,
    };
    let action = XdpAction::from_u32(code).unwrap_or(XdpAction::Aborted);
    if action == XdpAction::Redirect {
        add(&SENT, cpu, (ctx.data_end() - ctx.data()) as u64);
    }
    count(&ctx, action)
}

/// Runs on the target CPU for every frame the stage sent there.
#[xdp(frags, map = "cpumap")]
pub fn xdpkit_cpu_run(ctx: XdpContext) -> u32 {
    add(&RUN, 0, (ctx.data_end() - ctx.data()) as u64);
    match CONFIG.get(0) {
        Some(cfg) if cfg.then == THEN_DROP => xdp_action::XDP_DROP,
        _ => xdp_action::XDP_PASS,
    }
}

/// The flow hash of an IPv4 or IPv6 frame (`None`: not IP, or too short
/// for its IP header): addresses, protocol, and for TCP and UDP frames that
/// are not fragments the port pair (0 otherwise). Words are read in native
/// order, as the model reads them (little-endian).
#[inline(always)]
fn flow_hash(ctx: &XdpContext) -> Option<u32> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + ETH_HLEN > end {
        return None;
    }
    let ip = start + ETH_HLEN;
    // SAFETY: every load is inside a range checked against `end` before it.
    unsafe {
        let ethertype = load::<2>((start + 12) as *const u8) as u16;
        let word = |at: usize| load::<4>(at as *const u8) as u32;
        match u16::from_be(ethertype) {
            0x0800 => {
                if ip + IPV4_HLEN > end {
                    return None;
                }
                let p = ip as *const u8;
                let proto = *p.add(9);
                let mut h = hash_word(HASH_SEED, word(ip + 12));
                h = hash_word(h, word(ip + 16));
                h = hash_word(h, u32::from(proto));
                let ihl = usize::from(*p & 0x0f) * 4;
                let fragment = load::<2>(p.add(6)) as u16 & 0xff3f != 0;
                let l4 = ip + ihl;
                let ports = if (proto == TCP || proto == UDP)
                    && !fragment
                    && ihl >= IPV4_HLEN
                    && l4 + 4 <= end
                {
                    word(l4)
                } else {
                    0
                };
                Some(hash_word(h, ports))
            }
            0x86dd => {
                if ip + IPV6_HLEN > end {
                    return None;
                }
                let next = *(ip as *const u8).add(6);
                let mut h = HASH_SEED;
                let mut at = ip + 8;
                while at < ip + IPV6_HLEN {
                    h = hash_word(h, word(at));
                    at += 4;
                }
                h = hash_word(h, u32::from(next));
                let l4 = ip + IPV6_HLEN;
                let ports = if (next == TCP || next == UDP) && l4 + 4 <= end {
                    word(l4)
                } else {
                    0
                };
                Some(hash_word(h, ports))
            }
            _ => None,
        }
    }
}
