//! Reading the per-action counters (a per-CPU array) and turning two
//! samples into rates.

use std::{path::Path, time::Duration};

use aya::maps::{Map, MapData, PerCpuArray};
use serde::Serialize;
use xdpkit_common::{
    maps::{NEXT_SLOT, STATS_SLOTS},
    ActionCounter, XdpAction,
};

use crate::{Error, Result};

/// The counter slots' names: every verdict in [`XdpAction`] order, then
/// "next" (frames a stage handed to the stage after it).
pub const SLOT_NAMES: [&str; STATS_SLOTS as usize] = [
    XdpAction::ALL[0].name(),
    XdpAction::ALL[1].name(),
    XdpAction::ALL[2].name(),
    XdpAction::ALL[3].name(),
    XdpAction::ALL[4].name(),
    "next",
];

/// Packets and bytes per action (and "next"), summed over CPUs, in
/// [`SLOT_NAMES`] order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ActionTotals(pub [ActionCounter; STATS_SLOTS as usize]);

impl ActionTotals {
    /// Counter of one action.
    pub fn get(&self, action: XdpAction) -> ActionCounter {
        self.0[action as usize]
    }

    /// Frames handed on to the next stage.
    pub fn next(&self) -> ActionCounter {
        self.0[NEXT_SLOT as usize]
    }

    /// Frames given a verdict (not handed on).
    pub fn verdicts(&self) -> ActionCounter {
        XdpAction::ALL
            .iter()
            .fold(ActionCounter::default(), |a, v| a.plus(self.get(*v)))
    }

    /// Every frame the program saw: its verdicts and "next".
    pub fn total(&self) -> ActionCounter {
        self.verdicts().plus(self.next())
    }

    /// Adds another stage's (or sample's) counts.
    #[must_use]
    pub fn plus(mut self, other: &ActionTotals) -> ActionTotals {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a = a.plus(b);
        }
        self
    }

    /// Per-slot rates between `earlier` and `self`, `elapsed` apart.
    pub fn rates_since(&self, earlier: &ActionTotals, elapsed: Duration) -> Vec<ActionRate> {
        let secs = elapsed.as_secs_f64();
        SLOT_NAMES
            .iter()
            .enumerate()
            .map(|(slot, &name)| {
                let (now, then) = (self.0[slot], earlier.0[slot]);
                let per_sec = |d: u64| if secs > 0.0 { d as f64 / secs } else { 0.0 };
                ActionRate {
                    action: name,
                    packets: now.packets,
                    bytes: now.bytes,
                    pps: per_sec(now.packets.saturating_sub(then.packets)),
                    bps: per_sec(now.bytes.saturating_sub(then.bytes)) * 8.0,
                }
            })
            .collect()
    }
}

/// One row of `xdpkit status`: totals and current rates of an action.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ActionRate {
    /// `drop`, `pass`, ...
    pub action: &'static str,
    /// Packets since attach.
    pub packets: u64,
    /// Bytes since attach.
    pub bytes: u64,
    /// Packets per second over the sampling interval.
    pub pps: f64,
    /// Bits per second over the sampling interval.
    pub bps: f64,
}

/// Sums a per-CPU counter array.
pub fn read(map: &Map) -> Result<ActionTotals> {
    let array: PerCpuArray<&MapData, ActionCounter> =
        PerCpuArray::try_from(map).map_err(|source| map_error("open counters", source))?;
    sum(&array)
}

/// Sums a pinned per-CPU counter array.
pub fn read_pinned(path: &Path) -> Result<ActionTotals> {
    let data =
        MapData::from_pin(path).map_err(|source| map_error("open pinned counters", source))?;
    let map = Map::PerCpuArray(data);
    read(&map)
}

fn sum(array: &PerCpuArray<&MapData, ActionCounter>) -> Result<ActionTotals> {
    Ok(per_cpu(array)?
        .iter()
        .fold(ActionTotals::default(), |sum, cpu| sum.plus(cpu)))
}

fn per_cpu(array: &PerCpuArray<&MapData, ActionCounter>) -> Result<Vec<ActionTotals>> {
    let mut cpus: Vec<ActionTotals> = Vec::new();
    for slot in 0..STATS_SLOTS {
        let values = array
            .get(&slot, 0)
            .map_err(|source| map_error("read counters", source))?;
        cpus.resize(values.len(), ActionTotals::default());
        for (cpu, value) in values.iter().enumerate() {
            cpus[cpu].0[slot as usize] = *value;
        }
    }
    Ok(cpus)
}

/// A pinned per-CPU counter array, one [`ActionTotals`] per possible CPU.
pub fn read_pinned_per_cpu(path: &Path) -> Result<Vec<ActionTotals>> {
    let data =
        MapData::from_pin(path).map_err(|source| map_error("open pinned counters", source))?;
    let map = Map::PerCpuArray(data);
    let array: PerCpuArray<&MapData, ActionCounter> =
        PerCpuArray::try_from(&map).map_err(|source| map_error("open counters", source))?;
    per_cpu(&array)
}

fn map_error(what: &str, source: aya::maps::MapError) -> Error {
    Error::Map {
        what: format!("{what} ({})", xdpkit_common::maps::STATS_MAP),
        source: source.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_deltas_over_time_and_bits() {
        let mut before = ActionTotals::default();
        let mut after = ActionTotals::default();
        before.0[XdpAction::Drop as usize] = ActionCounter {
            packets: 100,
            bytes: 6400,
        };
        after.0[XdpAction::Drop as usize] = ActionCounter {
            packets: 300,
            bytes: 19200,
        };
        let rates = after.rates_since(&before, Duration::from_secs(2));
        let drop = rates.iter().find(|r| r.action == "drop").unwrap();
        assert_eq!((drop.packets, drop.pps, drop.bps), (300, 100.0, 51200.0));
        assert_eq!(after.total().packets, 300);
    }
}
