//! What xdpkit has attached, read back from bpffs and the kernel, so any
//! process (not only the one that attached) can report it.

use std::{
    os::fd::AsFd as _,
    path::PathBuf,
    thread,
    time::{Duration, Instant, SystemTime},
};

use serde::Serialize;
use xdpkit_common::{
    firewall::{Outcome, FW_OUTCOMES},
    ProgramKind,
};

use crate::{
    attach::program_name,
    iface, netlink,
    netlink::AttachMode,
    pins::{self, PinDir},
    privilege, stats,
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
    /// xdpkit program name (`drop`, ...), or the kernel name if unknown.
    pub program: String,
    /// Kernel program id.
    pub prog_id: u32,
    /// Kernel link id.
    pub link_id: u32,
    /// Attach mode reported by the kernel.
    pub mode: Option<AttachMode>,
    /// When the running program was loaded and attached (RFC 3339, UTC).
    pub attached_at: Option<String>,
    /// Egress interface of `redirect`.
    pub redirect_to: Option<String>,
    /// The pinned objects.
    pub pins: Vec<PathBuf>,
    /// Per-action totals and rates.
    pub actions: Vec<ActionRate>,
    /// The firewall's decisions by outcome (firewall only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub firewall: Option<Vec<OutcomeCount>>,
}

/// Frames and bytes the firewall decided one way.
#[derive(Clone, Debug, Serialize)]
pub struct OutcomeCount {
    /// `rule`, `rate_limited`, `default`, `non_ip`, `fragment` or `malformed`.
    pub outcome: &'static str,
    /// Frames.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

const OUTCOME_NAMES: [&str; Outcome::COUNT as usize] = [
    "rule",
    "rate_limited",
    "default",
    "non_ip",
    "fragment",
    "malformed",
];

fn firewall_outcomes(dir: &PinDir) -> Option<Vec<OutcomeCount>> {
    use aya::maps::{Map, MapData, PerCpuArray};
    let path = dir.file(&crate::firewall::maps::pin_name(FW_OUTCOMES));
    if !path.exists() {
        return None;
    }
    let map = Map::PerCpuArray(MapData::from_pin(&path).ok()?);
    let array: PerCpuArray<&MapData, xdpkit_common::ActionCounter> =
        PerCpuArray::try_from(&map).ok()?;
    OUTCOME_NAMES
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let per_cpu = array.get(&(i as u32), 0).ok()?;
            let (packets, bytes) = per_cpu
                .iter()
                .fold((0, 0), |(p, b), c| (p + c.packets, b + c.bytes));
            Some(OutcomeCount {
                outcome: name,
                packets,
                bytes,
            })
        })
        .collect()
}

/// Status of `iface` (or of every interface xdpkit manages), sampling the
/// counters twice `interval` apart for rates (zero: no rates).
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
    let mut first = Vec::with_capacity(dirs.len());
    for dir in &dirs {
        first.push(stats::read_pinned(&dir.file(pins::STATS)).unwrap_or_default());
    }
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

fn describe(
    dir: &PinDir,
    before: &stats::ActionTotals,
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
    let kernel_name = prog
        .as_ref()
        .and_then(|p| p.name_as_str().map(str::to_string))
        .unwrap_or_else(|| program_name(link.prog_id));
    let program = ProgramKind::from_symbol(&kernel_name)
        .map(|k| k.name().to_string())
        .unwrap_or(kernel_name);
    let attached_at = prog.as_ref().and_then(|p| p.loaded_at()).map(rfc3339);
    let mode = match ifindex {
        Some(index) if live => netlink::xdp_attachment(index)?.map(|a| a.mode),
        _ => None,
    };
    let now = stats::read_pinned(&dir.file(pins::STATS)).unwrap_or_default();
    let mut actions = now.rates_since(before, elapsed);
    if !with_rates {
        for row in &mut actions {
            row.pps = 0.0;
            row.bps = 0.0;
        }
    }
    let mut pin_files: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .map_err(|source| Error::Pin {
            what: "cannot list",
            path: dir.path().to_path_buf(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    pin_files.sort();
    Ok(IfaceStatus {
        iface: dir.ifname().to_string(),
        ifindex,
        state: if live { "attached" } else { "defunct" },
        program,
        prog_id: link.prog_id,
        link_id: link.id,
        mode,
        attached_at,
        redirect_to: redirect_target(dir),
        pins: pin_files,
        actions,
        firewall: firewall_outcomes(dir),
    })
}

fn redirect_target(dir: &PinDir) -> Option<String> {
    use aya::maps::{DevMap, Map, MapData};
    let path = dir.file(pins::REDIRECT);
    if !path.exists() {
        return None;
    }
    let map = Map::DevMap(MapData::from_pin(&path).ok()?);
    let devmap = DevMap::try_from(&map).ok()?;
    let value = devmap.get(xdpkit_common::maps::REDIRECT_SLOT, 0).ok()?;
    Some(iface::name(value.if_index).unwrap_or_else(|| format!("ifindex {}", value.if_index)))
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
