//! The `drop` program.
#![no_std]
#![no_main]

use aya_ebpf::{macros::xdp, programs::XdpContext};
use xdpkit_common::XdpAction;

use xdpkit_ebpf::stats::count;

xdpkit_ebpf::license!();

/// Counts every frame and drops it.
#[xdp(frags)]
pub fn xdpkit_drop(ctx: XdpContext) -> u32 {
    count(&ctx, XdpAction::Drop)
}
