//! "Next": hand the frame to the stage after this one (see
//! `xdpkit_common::chain` for the layout).

use aya_ebpf::{
    bindings::xdp_action,
    macros::map,
    maps::{Array, ProgramArray},
    programs::XdpContext,
};
use xdpkit_common::{
    chain::{ChainState, CHAIN_SLOTS, MAX_STAGES, NO_NEXT},
    XdpAction,
};

use crate::stats::{count_len, count_next, frame_len, uncount_next};

/// The interface's stages; the loader pins one per interface and gives it
/// to the root and to every stage.
#[map(name = "XDPKIT_CHAIN")]
pub static CHAIN: ProgramArray = ProgramArray::with_max_entries(CHAIN_SLOTS, 0);

/// The root's state: which half of [`CHAIN`] runs.
#[map(name = "XDPKIT_ROOT")]
pub static ROOT: Array<ChainState> = Array::with_max_entries(1, 0);

/// The root's work (both roots): tail-call the first stage of the active
/// half, or pass when there is none.
#[inline(always)]
pub fn enter(ctx: &XdpContext) -> u32 {
    if let Some(state) = ROOT.get(0) {
        // One tail call per half, each with a constant slot: the verifier
        // then knows the key, and the JIT emits a direct jump (patched when
        // the slot changes) instead of an indirect one through a retpoline.
        // SAFETY (both): the slot holds a stage of this interface (or
        // nothing, and the call returns).
        if state.base == 0 {
            unsafe { CHAIN.tail_call(ctx, 0) };
            // Only if the slot is empty. Differs from the other branch, so
            // LLVM cannot merge the two calls into one with a variable slot.
            // SAFETY: a read of the map value `get` returned.
            let _ = unsafe { core::ptr::read_volatile(&state.len) };
        } else {
            unsafe { CHAIN.tail_call(ctx, MAX_STAGES) };
        }
    }
    // No stage (the chain is empty or being replaced): the stack decides.
    xdp_action::XDP_PASS
}

/// The slot of the next stage, written by the loader into .rodata before
/// the program loads (so the verifier sees a constant).
#[unsafe(no_mangle)]
static XDPKIT_NEXT: u32 = NO_NEXT;

/// Continues with the next stage, or passes the frame if this is the last.
#[inline(always)]
pub fn next(ctx: &XdpContext) -> u32 {
    next_len(ctx, frame_len(ctx))
}

/// [`next`] for a frame whose whole length ([`frame_len`]) the program
/// already has.
#[inline(always)]
pub fn next_len(ctx: &XdpContext, len: u64) -> u32 {
    // SAFETY: a plain read of a static; volatile so LLVM cannot fold the
    // compile-time value the loader overrides.
    let slot = unsafe { core::ptr::read_volatile(&XDPKIT_NEXT) };
    if slot == NO_NEXT {
        return count_len(ctx, XdpAction::Pass, len);
    }
    count_next(len);
    // SAFETY: the slot holds an XDP program of this interface's chain (or
    // nothing, and the call returns).
    unsafe { CHAIN.tail_call(ctx, slot) };
    // An empty slot: the chain is being rebuilt under us; pass rather than
    // drop, counted once.
    uncount_next(len);
    count_len(ctx, XdpAction::Pass, len)
}
