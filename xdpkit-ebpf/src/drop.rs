use aya_ebpf::{macros::xdp, programs::XdpContext};
use xdpkit_common::XdpAction;

use crate::stats::count;

/// Counts every frame and drops it.
#[xdp]
pub fn xdpkit_drop(ctx: XdpContext) -> u32 {
    count(&ctx, XdpAction::Drop)
}
