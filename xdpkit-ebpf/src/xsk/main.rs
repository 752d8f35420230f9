//! The `xsk` program: every frame to the AF_XDP socket of its RX queue.
#![no_std]
#![no_main]

use aya_ebpf::{macros::xdp, programs::XdpContext};
use xdpkit_common::XdpAction;

use xdpkit_ebpf::{chain::next, stats::count, xsks::to_userspace};

xdpkit_ebpf::license!();

/// Redirects the frame into the socket bound to its RX queue (counted as a
/// redirect); a queue without a socket hands the frame to the next stage.
#[xdp(frags)]
pub fn xdpkit_xsk(ctx: XdpContext) -> u32 {
    if to_userspace(&ctx) {
        return count(&ctx, XdpAction::Redirect);
    }
    next(&ctx)
}
