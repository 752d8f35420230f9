//! The root: what an interface's bpf_link runs. It tail-calls the first
//! stage of the active half of the interface's chain.
#![no_std]
#![no_main]

use aya_ebpf::{macros::xdp, programs::XdpContext};

xdpkit_ebpf::license!();

#[xdp(frags)]
pub fn xdpkit_root(ctx: XdpContext) -> u32 {
    xdpkit_ebpf::chain::enter(&ctx)
}
