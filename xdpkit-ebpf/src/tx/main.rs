//! The `tx` program.
#![no_std]
#![no_main]

use aya_ebpf::{macros::xdp, programs::XdpContext};
use xdpkit_common::XdpAction;

use xdpkit_ebpf::{frame::swap_macs, stats::count};

xdpkit_ebpf::license!();

/// Swaps the MAC addresses and bounces the frame out of the interface it
/// came in on; a frame too short to hold an Ethernet header is dropped.
#[xdp(frags)]
pub fn xdpkit_tx(ctx: XdpContext) -> u32 {
    let action = if swap_macs(&ctx) {
        XdpAction::Tx
    } else {
        XdpAction::Drop
    };
    count(&ctx, action)
}
