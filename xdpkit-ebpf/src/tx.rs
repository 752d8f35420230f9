use aya_ebpf::{macros::xdp, programs::XdpContext};
use xdpkit_common::XdpAction;

use crate::{frame::swap_macs, stats::count};

/// Swaps the MAC addresses and bounces the frame out of the interface it
/// came in on; a frame too short to hold an Ethernet header is dropped.
#[xdp]
pub fn xdpkit_tx(ctx: XdpContext) -> u32 {
    let action = if swap_macs(&ctx) {
        XdpAction::Tx
    } else {
        XdpAction::Drop
    };
    count(&ctx, action)
}
