//! The root: what an interface's bpf_link runs. It tail-calls the first
//! stage of the active half of the interface's chain.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::map, macros::xdp, maps::Array, programs::XdpContext};
use xdpkit_common::chain::ChainState;
use xdpkit_ebpf::chain::CHAIN;

xdpkit_ebpf::license!();

#[map(name = "XDPKIT_ROOT")]
static ROOT: Array<ChainState> = Array::with_max_entries(1, 0);

#[xdp]
pub fn xdpkit_root(ctx: XdpContext) -> u32 {
    if let Some(state) = ROOT.get(0) {
        // SAFETY: the slot holds a stage of this interface (or nothing, and
        // the call returns).
        unsafe { CHAIN.tail_call(&ctx, state.base) };
    }
    // No stage (the chain is empty or being replaced): the stack decides.
    xdp_action::XDP_PASS
}
