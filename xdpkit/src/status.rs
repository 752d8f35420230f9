//! What xdpkit has attached, read back from bpffs and the kernel, so any
//! process (not only the one that attached) can report it.

use std::{
    os::fd::AsFd as _,
    path::PathBuf,
    thread,
    time::{Duration, Instant, SystemTime},
};

use serde::Serialize;

pub use crate::programs::{MemoryPart, OutcomeCount};

use crate::{
    attach::program_name,
    chain, iface, netlink,
    netlink::AttachMode,
    pins::{self, PinDir},
    privilege,
    programs::{self, firewall::Firewall, redirect::Redirect, Program as _},
    stats,
    stats::ActionRate,
    sys, Error, Result,
};

/// State of one interface that xdpkit manages.
#[derive(Clone, Debug, Serialize)]
pub struct IfaceStatus {
    /// Interface name.
    pub iface: String,
    /// Interface index, if the interface exists.
    pub ifindex: Option<u32>,
    /// `attached`, or `defunct` when the interface is gone but state is left.
    pub state: &'static str,
    /// The stages' program names joined by commas (`firewall,redirect`),
    /// or the kernel name of the program the link runs if it is not xdpkit's root.
    pub program: String,
    /// Kernel id of the program the link runs (the root).
    pub prog_id: u32,
    /// Kernel link id.
    pub link_id: u32,
    /// Attach mode reported by the kernel.
    pub mode: Option<AttachMode>,
    /// When the running root was loaded and attached (RFC 3339, UTC).
    pub attached_at: Option<String>,
    /// Egress interface of the redirect stage.
    pub redirect_to: Option<String>,
    /// How many chains the interface has had (each attach or apply that
    /// changed it switched to a new one).
    pub generation: u32,
    /// The pinned objects.
    pub pins: Vec<PathBuf>,
    /// What the interface did with frames: every stage's verdicts together.
    pub actions: Vec<ActionRate>,
    /// Each stage in order, with its own counters ("next": handed on).
    pub stages: Vec<StageStatus>,
    /// The firewall stage's decisions by outcome, if there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub firewall: Option<Vec<OutcomeCount>>,
}

/// One stage of an interface's chain.
#[derive(Clone, Debug, Serialize)]
pub struct StageStatus {
    /// Program name.
    pub stage: String,
    /// Position in the chain, from 0.
    pub index: usize,
    /// Kernel id of the stage's program (in the chain's PROG_ARRAY).
    pub prog_id: u32,
    /// Per-action (and "next") totals and rates.
    pub actions: Vec<ActionRate>,
    /// The program's own counters by outcome (the firewall's: what decided).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub outcomes: Vec<OutcomeCount>,
    /// Kernel memory of the stage's own maps by part (the firewall's:
    /// set 0, set 1, shared), bytes_memlock; empty if not reported.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub memory: Vec<MemoryPart>,
    /// Their sum, in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
}

/// Status of `iface` (or of every interface xdpkit manages), sampling the
/// counters twice `interval` apart for rates (zero: no rates). Reads pins
/// only: never waits for a writer.
///
/// # Errors
///
/// [`Error::NotAttached`] when `iface` is given and xdpkit has nothing there.
pub fn status(iface: Option<&str>, interval: Duration) -> Result<Vec<IfaceStatus>> {
    privilege::require("status")?;
    let dirs = match iface {
        Some(name) => {
            let dir = PinDir::new(name)?;
            if !dir.has_link() {
                iface::index(name)?;
                return Err(Error::NotAttached {
                    iface: name.to_string(),
                    action: "show",
                });
            }
            vec![dir]
        }
        // A directory without a link is debris of an interrupted attach.
        None => PinDir::all()?
            .into_iter()
            .filter(PinDir::has_link)
            .collect(),
    };
    let first: Vec<Vec<stats::ActionTotals>> = dirs.iter().map(stage_counters).collect();
    let started = Instant::now();
    if !interval.is_zero() && !dirs.is_empty() {
        thread::sleep(interval);
    }
    let elapsed = started.elapsed();
    dirs.iter()
        .zip(first)
        .filter_map(|(dir, before)| {
            match describe(dir, &before, elapsed, !interval.is_zero()) {
                // Listing every interface races with detaches by other processes:
                // an interface whose link went away meanwhile is simply no longer shown.
                Err(_) if iface.is_none() && !dir.has_link() => None,
                result => Some(result),
            }
        })
        .collect()
}

/// The stages running on the interface of `dir`, in order (none if the
/// state cannot be read).
pub fn stages(dir: &PinDir) -> Vec<String> {
    chain::running(dir)
        .ok()
        .flatten()
        .map(|c| c.stages)
        .unwrap_or_default()
}

/// Each stage's counters, in chain order (zeros for one that cannot be read).
pub fn stage_counters(dir: &PinDir) -> Vec<stats::ActionTotals> {
    stages(dir)
        .iter()
        .map(|stage| stats::read_pinned(&dir.stage(stage).file(pins::STATS)).unwrap_or_default())
        .collect()
}

/// What the interface did: the verdicts of all its stages ("next" is not
/// a verdict: the frame got one from a later stage).
pub fn interface_totals(per_stage: &[stats::ActionTotals]) -> stats::ActionTotals {
    let mut sum = per_stage
        .iter()
        .fold(stats::ActionTotals::default(), |sum, s| sum.plus(s));
    sum.0[xdpkit_common::maps::NEXT_SLOT as usize] = Default::default();
    sum
}

fn describe(
    dir: &PinDir,
    before: &[stats::ActionTotals],
    elapsed: Duration,
    with_rates: bool,
) -> Result<IfaceStatus> {
    let link_fd = sys::obj_get(&dir.file(pins::LINK))?;
    let link = sys::xdp_link_info(link_fd.as_fd())?;
    let ifindex = iface::index(dir.ifname()).ok();
    let live = link.ifindex != 0 && Some(link.ifindex) == ifindex;
    let prog = aya::programs::loaded_programs()
        .filter_map(|p| p.ok())
        .find(|p| p.id() == link.prog_id);
    let chain = chain::running(dir)?;
    let stage_names = chain.as_ref().map(|c| c.stages.clone()).unwrap_or_default();
    let prog_ids = chain
        .as_ref()
        .map(|c| c.prog_ids.clone())
        .unwrap_or_default();
    let program = if stage_names.is_empty() {
        program_name(link.prog_id)
    } else {
        stage_names.join(",")
    };
    let attached_at = prog.as_ref().and_then(|p| p.loaded_at()).map(rfc3339);
    let mode = match ifindex {
        Some(index) if live => netlink::xdp_attachment(index)?.map(|a| a.mode),
        _ => None,
    };
    let now = stage_counters(dir);
    let zero = stats::ActionTotals::default();
    let rates = |now: &stats::ActionTotals, then: &stats::ActionTotals| {
        let mut rows = now.rates_since(then, elapsed);
        if !with_rates {
            for row in &mut rows {
                row.pps = 0.0;
                row.bps = 0.0;
            }
        }
        rows
    };
    let stages: Vec<StageStatus> = stage_names
        .iter()
        .enumerate()
        .map(|(index, stage)| StageStatus {
            stage: stage.clone(),
            index,
            prog_id: prog_ids.get(index).copied().unwrap_or(0),
            actions: rates(
                now.get(index).unwrap_or(&zero),
                before.get(index).unwrap_or(&zero),
            ),
            outcomes: programs::by_name(stage)
                .map(|p| p.outcomes(&dir.stage(stage)))
                .unwrap_or_default(),
            memory: programs::by_name(stage)
                .map(|p| p.memory(&dir.stage(stage)))
                .unwrap_or_default(),
            memory_bytes: None,
        })
        .map(|mut s: StageStatus| {
            s.memory_bytes = (!s.memory.is_empty()).then(|| s.memory.iter().map(|p| p.bytes).sum());
            s
        })
        .collect();
    let mut actions = rates(&interface_totals(&now), &interface_totals(before));
    actions.retain(|row| row.action != "next");
    let mut pin_files: Vec<PathBuf> = Vec::new();
    list_pins(dir.path(), &mut pin_files)?;
    pin_files.sort();
    let redirect_to = stage_names
        .iter()
        .any(|s| s == Redirect.name())
        .then(|| {
            programs::redirect::running_target(&dir.stage(Redirect.name()))
                .ok()
                .flatten()
        })
        .flatten()
        .map(|index| iface::name(index).unwrap_or_else(|| format!("ifindex {index}")));
    let firewall = stages
        .iter()
        .find(|s| s.stage == Firewall.name())
        .map(|s| s.outcomes.clone());
    Ok(IfaceStatus {
        iface: dir.ifname().to_string(),
        ifindex,
        state: if live { "attached" } else { "defunct" },
        program,
        prog_id: link.prog_id,
        link_id: link.id,
        mode,
        attached_at,
        redirect_to,
        generation: chain.map(|c| c.generation).unwrap_or(0),
        pins: pin_files,
        actions,
        stages,
        firewall,
    })
}

/// Every pinned file under `dir`, one level of stage directories deep.
fn list_pins(dir: &std::path::Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|source| Error::Pin {
        what: "cannot list",
        path: dir.to_path_buf(),
        source,
    })?;
    for entry in entries.filter_map(|e| e.ok()) {
        let path = entry.path();
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            list_pins(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

/// `2026-11-25T03:04:05Z` for a wall-clock time.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_timestamps() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_575_845);
        assert_eq!(rfc3339(t), "2026-11-25T03:04:05Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00Z");
    }
}
