//! Counts xdp:xdp_exception events for `xdpkit doctor`: a driver reports
//! one when a program returned XDP_ABORTED or an invalid verdict, or a TX or
//! redirect failed. A raw tracepoint, so no tracefs mount is needed.
#![no_std]
#![no_main]

use aya_ebpf::{
    macros::map, macros::raw_tracepoint, maps::PerCpuArray, programs::RawTracePointContext,
};
use xdpkit_common::doctor::EXCEPTION_SLOTS;

xdpkit_ebpf::license!();

#[map(name = "XDPKIT_EXCEPTIONS")]
static EXCEPTIONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(EXCEPTION_SLOTS, 0);

/// `TP_PROTO(const struct net_device *dev, const struct bpf_prog *xdp, u32 act)`:
/// counted by `act`, the last slot for any other value.
#[raw_tracepoint(tracepoint = "xdp_exception")]
pub fn xdpkit_xdp_exception(ctx: RawTracePointContext) -> i32 {
    let act: u64 = ctx.arg(2);
    let slot = act.min(u64::from(EXCEPTION_SLOTS - 1)) as u32;
    if let Some(count) = EXCEPTIONS.get_ptr_mut(slot) {
        // SAFETY: this CPU's slot of an existing entry.
        unsafe { *count += 1 };
    }
    0
}
