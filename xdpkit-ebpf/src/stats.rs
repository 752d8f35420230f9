//! Per-CPU packet and byte counters, one slot per XDP action and one for
//! "next" (frames handed to the following stage).

pub use crate::frame::frame_len;
use aya_ebpf::{macros::map, maps::PerCpuArray, programs::XdpContext};
use xdpkit_common::{
    dump::NO_RULE,
    maps::{NEXT_SLOT, STATS_SLOTS},
    ActionCounter, XdpAction,
};

#[map(name = "XDPKIT_STATS")]
static STATS: PerCpuArray<ActionCounter> = PerCpuArray::with_max_entries(STATS_SLOTS, 0);

/// Counts the frame under `action` and returns the action, so an entry
/// point can end with `count(&ctx, verdict)`.
#[inline(always)]
pub fn count(ctx: &XdpContext, action: XdpAction) -> u32 {
    count_rule(ctx, action, NO_RULE)
}

/// [`count`] for a verdict a rule gave (dumps carry the rule id).
#[inline(always)]
pub fn count_rule(ctx: &XdpContext, action: XdpAction, rule: u32) -> u32 {
    count_rule_len(ctx, action, rule, frame_len(ctx))
}

/// [`count`] of a frame whose whole length `len` ([`frame_len`]) the
/// program already has: one helper call per frame, not two.
#[inline(always)]
pub fn count_len(ctx: &XdpContext, action: XdpAction, len: u64) -> u32 {
    count_rule_len(ctx, action, NO_RULE, len)
}

/// [`count_rule`] with the frame's whole length at hand.
#[inline(always)]
pub fn count_rule_len(ctx: &XdpContext, action: XdpAction, rule: u32, len: u64) -> u32 {
    crate::dump::maybe(ctx, action, rule);
    add(&STATS, action as u32, len);
    action as u32
}

/// Counts a frame of `len` bytes handed to the next stage (not dumped: a
/// later stage gives its verdict).
#[inline(always)]
pub fn count_next(len: u64) {
    add(&STATS, NEXT_SLOT, len);
}

/// Takes back a [`count_next`] whose tail call found no stage (the chain
/// was being rebuilt): the frame is counted once, as the pass it becomes.
#[inline(always)]
pub fn uncount_next(len: u64) {
    if let Some(slot) = STATS.get_ptr_mut(NEXT_SLOT) {
        // SAFETY: as in `add`: this CPU's slot, which `count_next` just raised.
        unsafe {
            (*slot).packets = (*slot).packets.wrapping_sub(1);
            (*slot).bytes = (*slot).bytes.wrapping_sub(len);
        }
    }
}

/// Counts one frame of `len` bytes in entry `index` of a per-CPU counter
/// array (a program's own counters: outcomes, per VIP, per real).
#[inline(always)]
pub fn add(map: &PerCpuArray<ActionCounter>, index: u32, len: u64) {
    if let Some(c) = map.get_ptr_mut(index) {
        // SAFETY: the pointer is this CPU's slot of an array entry that exists
        // for the life of the map; no other context writes it concurrently.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += len;
        }
    }
}
