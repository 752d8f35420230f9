//! The root: what an interface's bpf_link runs. It tail-calls the first
//! stage of the active half of the interface's chain.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::map, macros::xdp, maps::Array, programs::XdpContext};
use xdpkit_common::chain::{ChainState, MAX_STAGES};
use xdpkit_ebpf::chain::CHAIN;

xdpkit_ebpf::license!();

#[map(name = "XDPKIT_ROOT")]
static ROOT: Array<ChainState> = Array::with_max_entries(1, 0);

#[xdp]
pub fn xdpkit_root(ctx: XdpContext) -> u32 {
    if let Some(state) = ROOT.get(0) {
        // One tail call per half, each with a constant slot: the verifier
        // then knows the key, and the JIT emits a direct jump (patched when
        // the slot changes) instead of an indirect one through a retpoline.
        // SAFETY (both): the slot holds a stage of this interface (or
        // nothing, and the call returns).
        if state.base == 0 {
            unsafe { CHAIN.tail_call(&ctx, 0) };
            // Only if the slot is empty. Differs from the other branch, so
            // LLVM cannot merge the two calls into one with a variable slot.
            // SAFETY: a read of the map value `get` returned.
            let _ = unsafe { core::ptr::read_volatile(&state.len) };
        } else {
            unsafe { CHAIN.tail_call(&ctx, MAX_STAGES) };
        }
    }
    // No stage (the chain is empty or being replaced): the stack decides.
    xdp_action::XDP_PASS
}
