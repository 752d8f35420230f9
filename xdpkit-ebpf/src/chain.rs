//! "Next": hand the frame to the stage after this one (see
//! `xdpkit_common::chain` for the layout).

use aya_ebpf::{macros::map, maps::ProgramArray, programs::XdpContext};
use xdpkit_common::{
    chain::{CHAIN_SLOTS, NO_NEXT},
    XdpAction,
};

use crate::stats::{count, count_next, uncount_next};

/// The interface's stages; the loader pins one per interface and gives it
/// to the root and to every stage.
#[map(name = "XDPKIT_CHAIN")]
pub static CHAIN: ProgramArray = ProgramArray::with_max_entries(CHAIN_SLOTS, 0);

/// The slot of the next stage, written by the loader into .rodata before
/// the program loads (so the verifier sees a constant).
#[unsafe(no_mangle)]
static XDPKIT_NEXT: u32 = NO_NEXT;

/// Continues with the next stage, or passes the frame if this is the last.
#[inline(always)]
pub fn next(ctx: &XdpContext) -> u32 {
    // SAFETY: a plain read of a static; volatile so LLVM cannot fold the
    // compile-time value the loader overrides.
    let slot = unsafe { core::ptr::read_volatile(&XDPKIT_NEXT) };
    if slot == NO_NEXT {
        return count(ctx, XdpAction::Pass);
    }
    count_next(ctx);
    // SAFETY: the slot holds an XDP program of this interface's chain (or
    // nothing, and the call returns).
    unsafe { CHAIN.tail_call(ctx, slot) };
    // An empty slot: the chain is being rebuilt under us; pass rather than
    // drop, counted once.
    uncount_next(ctx);
    count(ctx, XdpAction::Pass)
}
