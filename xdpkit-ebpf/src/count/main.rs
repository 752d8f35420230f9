//! `count`: a tap between stages. Counts what reaches it and hands it on.
#![no_std]
#![no_main]

use aya_ebpf::{macros::xdp, programs::XdpContext};
use xdpkit_ebpf::chain::next;

xdpkit_ebpf::license!();

/// Counts the frame (as "next", or "pass" when it is the last stage) and
/// continues with the next stage.
#[xdp(frags)]
pub fn xdpkit_count(ctx: XdpContext) -> u32 {
    next(&ctx)
}
