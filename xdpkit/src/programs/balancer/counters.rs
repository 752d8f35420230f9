//! The balancer's frames by outcome: `LB_OUTCOMES`, with the flow hits and
//! misses of frames to a VIP, which the program counts in the VIP's
//! [`VipCounters`] (the entry it already holds) rather than in a second
//! map.

use xdpkit_common::{
    balancer::{LbOutcome, VipCounters, LB_OUTCOMES, LB_VIP_STATS},
    ActionCounter,
};

use crate::{
    maps::{batch, MapSource},
    Result,
};

/// Frames and bytes by outcome ([`LbOutcome`] order), from the per-CPU
/// entries of `LB_OUTCOMES` and of `LB_VIP_STATS`.
pub fn totals(outcomes: &[Vec<ActionCounter>], vips: &[Vec<VipCounters>]) -> Vec<ActionCounter> {
    let mut t: Vec<ActionCounter> = outcomes
        .iter()
        .map(|per_cpu| {
            per_cpu
                .iter()
                .fold(ActionCounter::default(), |a, c| a.plus(*c))
        })
        .collect();
    t.resize(LbOutcome::COUNT as usize, ActionCounter::default());
    for c in vips.iter().flatten() {
        let hit = &mut t[LbOutcome::FlowHit as usize];
        hit.packets += c.flow_hits;
        hit.bytes += c.flow_hit_bytes;
        let miss = &mut t[LbOutcome::FlowMiss as usize];
        miss.packets += c.flow_misses;
        miss.bytes += c.flow_miss_bytes;
    }
    t
}

/// [`totals`] of the balancer whose maps `maps` holds.
pub fn read(maps: &impl MapSource) -> Result<Vec<ActionCounter>> {
    Ok(totals(
        &batch::dump_per_cpu::<ActionCounter>(maps, LB_OUTCOMES, usize::MAX)?,
        &batch::dump_per_cpu::<VipCounters>(maps, LB_VIP_STATS, usize::MAX)?,
    ))
}
