//! `cpu`: spreads flows over chosen CPUs (XDP_REDIRECT through a CPUMAP).
//! The interface's RX CPU only hashes the flow; the CPUMAP entry's program
//! runs on the target CPU, counts the frame there and passes it to the
//! stack (or drops it, for benchmarks), so the stack's work for one RX
//! queue (a veth has one) is shared by several CPUs.
//!
//! ```toml
//! [interfaces.eth0.cpu]
//! cpus = [0, 1]        # required: target CPUs, in the order the hash picks them
//! queue-size = 2048    # frames queued per CPU before the kernel drops (1 to 16384)
//! then = "pass"        # or "drop": what the entry program does on the target CPU
//! ```

use std::{os::fd::AsFd as _, path::Path, sync::OnceLock};

use aya::{
    maps::{Array, CpuMap, IterableMap, Map, MapData, PerCpuArray},
    programs::ProgramFd,
};
use toml::{Table, Value};
use xdpkit_common::{
    cpumap::{
        hash_word, pick, CpuConfig, CPU_CONFIG, CPU_ENTRY, CPU_MAP, CPU_RUN, CPU_SENT, HASH_SEED,
        MAX_CPUS, THEN_DROP, THEN_PASS,
    },
    ActionCounter, XdpAction,
};

use super::{Commit, OutcomeCount, Program, StageLoad};
use crate::{
    maps::map_err,
    model::{StageOutcome, ETH_HLEN},
    object::{self, embedded, Object},
    pins::PinDir,
    settings::{check_keys, choice_of, SettingsError},
    Error, Result,
};

/// Frames a CPUMAP entry queues for its CPU unless told otherwise.
pub const DEFAULT_QUEUE_SIZE: u32 = 2048;
/// The kernel's limit on a CPUMAP entry's queue.
pub const MAX_QUEUE_SIZE: u32 = 16384;

const CPUS: &str = "cpus";
const QUEUE_SIZE: &str = "queue-size";
const THEN: &str = "then";
const THEN_CHOICES: [&str; 2] = ["pass", "drop"];

static PINS: [(&str, &str); 4] = [
    (CPU_MAP, "cpumap"),
    (CPU_CONFIG, "cpu_config"),
    (CPU_RUN, "cpu_run"),
    (CPU_SENT, "cpu_sent"),
];

/// The `cpu` program.
pub struct Cpu;

/// The stage's settings, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuSettings {
    /// Target CPUs, in the order the hash picks them.
    pub cpus: Vec<u32>,
    /// Each CPUMAP entry's queue.
    pub queue_size: u32,
    /// `THEN_PASS` or `THEN_DROP`.
    pub then: u32,
}

impl CpuSettings {
    /// The settings table (`xdpkit attach cpu --cpus ... --queue-size ... --then ...`).
    pub fn to_table(&self) -> Table {
        let mut t = Table::new();
        let cpus = self
            .cpus
            .iter()
            .map(|&c| Value::Integer(c.into()))
            .collect();
        t.insert(CPUS.into(), Value::Array(cpus));
        t.insert(QUEUE_SIZE.into(), Value::Integer(self.queue_size.into()));
        t.insert(THEN.into(), THEN_CHOICES[self.then as usize].into());
        t
    }

    /// Parses and checks a settings table (the machine's CPUs aside: see
    /// [`CpuSettings::check_online`]).
    pub fn parse(given: &Table) -> std::result::Result<CpuSettings, SettingsError> {
        check_keys(given, &[CPUS, QUEUE_SIZE, THEN])?;
        let Some(list) = given.get(CPUS) else {
            return Err(SettingsError::new(
                CPUS,
                "missing: the cpu stage needs its target CPUs, e.g. cpus = [0, 1]",
            ));
        };
        let Value::Array(list) = list else {
            return Err(SettingsError::new(
                CPUS,
                format!("expected a list of CPU numbers, found {}", list.type_str()),
            ));
        };
        if list.is_empty() {
            return Err(SettingsError::new(
                CPUS,
                "empty: name at least one CPU, e.g. cpus = [0, 1]",
            ));
        }
        let mut cpus = Vec::with_capacity(list.len());
        for (i, v) in list.iter().enumerate() {
            let key = format!("{CPUS}[{i}]");
            let cpu = v
                .as_integer()
                .ok_or_else(|| {
                    SettingsError::new(
                        &key,
                        format!("expected a CPU number, found {}", v.type_str()),
                    )
                })
                .and_then(|n| {
                    u32::try_from(n)
                        .ok()
                        .filter(|&c| c < MAX_CPUS)
                        .ok_or_else(|| {
                            SettingsError::new(
                                &key,
                                format!(
                                    "CPU {n} is out of range: the cpu stage addresses CPUs 0 to {}",
                                    MAX_CPUS - 1
                                ),
                            )
                        })
                })?;
            if cpus.contains(&cpu) {
                return Err(SettingsError::new(
                    key,
                    format!("CPU {cpu} is listed twice"),
                ));
            }
            cpus.push(cpu);
        }
        let queue_size = match given.get(QUEUE_SIZE) {
            None => DEFAULT_QUEUE_SIZE,
            Some(v) => v
                .as_integer()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| (1..=MAX_QUEUE_SIZE).contains(n))
                .ok_or_else(|| {
                    SettingsError::new(
                        QUEUE_SIZE,
                        format!(
                            "expected a number of frames from 1 to {MAX_QUEUE_SIZE}, found {v}"
                        ),
                    )
                })?,
        };
        let then = match choice_of(given, THEN, &THEN_CHOICES)? {
            "drop" => THEN_DROP,
            _ => THEN_PASS,
        };
        Ok(CpuSettings {
            cpus,
            queue_size,
            then,
        })
    }

    /// Refuses CPUs this machine does not have online (a CPUMAP entry for
    /// an offline CPU cannot be made).
    pub fn check_online(&self) -> Result<()> {
        let online = aya::util::online_cpus().map_err(|(what, e)| {
            Error::InvalidArgument(format!("cannot read the online CPUs ({what}): {e}"))
        })?;
        match self.cpus.iter().find(|c| !online.contains(c)) {
            Some(cpu) => Err(Error::InvalidArgument(format!(
                "cpu stage: CPU {cpu} is not online; online CPUs: {}",
                online
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
            None => Ok(()),
        }
    }

    fn config(&self) -> CpuConfig {
        let mut config = CpuConfig {
            count: self.cpus.len() as u32,
            then: self.then,
            ..CpuConfig::default()
        };
        config.cpus[..self.cpus.len()].copy_from_slice(&self.cpus);
        config
    }
}

impl Program for Cpu {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn about(&self) -> &'static str {
        "spread flows over CPUs through a CPUMAP, then pass (or drop) on the target CPU (setting `cpus`, or --cpus)"
    }

    fn object(&self) -> Object {
        embedded!("cpu")
    }

    fn symbol(&self) -> &'static str {
        "xdpkit_cpu"
    }

    fn pinned_maps(&self) -> &'static [(&'static str, &'static str)] {
        &PINS
    }

    fn normalise_settings(
        &self,
        given: Option<&Table>,
        _base_dir: &Path,
    ) -> std::result::Result<Table, SettingsError> {
        match given {
            Some(table) => Ok(CpuSettings::parse(table)?.to_table()),
            None => Err(SettingsError::new(
                CPUS,
                "missing: the cpu stage needs its target CPUs; add its settings table with cpus = [0, 1]",
            )),
        }
    }

    fn configure(&self, stage: &mut StageLoad<'_>, settings: &Table) -> Result<Option<Commit>> {
        // No settings: a reinstall keeps the running state; a fresh stage
        // (test harnesses only) passes every frame.
        if settings.is_empty() {
            return Ok(None);
        }
        let wanted = CpuSettings::parse(settings)
            .map_err(|e| Error::InvalidArgument(format!("cpu stage: {e}")))?;
        wanted.check_online()?;
        let entry = object::program(stage.ebpf, CPU_ENTRY, self.name())?;
        let fd = entry
            .fd()
            .and_then(|fd| fd.try_clone().map_err(Into::into))
            .map_err(|source| Error::Load {
                program: "cpu",
                source,
            })?;
        let dir = stage.dir.clone();
        if stage.fresh {
            write(&dir, &wanted, &fd)?;
            return Ok(None);
        }
        // The maps are shared with the running stage: change them at the switch.
        Ok(Some(Box::new(move || write(&dir, &wanted, &fd))))
    }

    fn running_settings(&self, dir: &PinDir) -> Result<Table> {
        Ok(running(dir)?.map(|s| s.to_table()).unwrap_or_default())
    }

    fn outcomes(&self, dir: &PinDir) -> Vec<OutcomeCount> {
        per_cpu_run(dir)
            .map(|counts| {
                counts
                    .into_iter()
                    .enumerate()
                    .map(|(cpu, c)| OutcomeCount {
                        outcome: cpu_name(cpu),
                        packets: c.packets,
                        bytes: c.bytes,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn model(&self, frame: &[u8], settings: &Table) -> StageOutcome {
        // Without CPUs (test harnesses) the program passes every frame.
        let verdict = match target_cpu(frame, settings) {
            Some(_) => XdpAction::Redirect,
            None => XdpAction::Pass,
        };
        StageOutcome::verdict(verdict, frame)
    }
}

/// `cpu0`, `cpu1`, ...: the outcome names of the per-CPU counters.
fn cpu_name(cpu: usize) -> &'static str {
    static NAMES: OnceLock<Vec<&'static str>> = OnceLock::new();
    NAMES
        .get_or_init(|| {
            (0..MAX_CPUS.max(256))
                .map(|c| &*Box::leak(format!("cpu{c}").into_boxed_str()))
                .collect()
        })
        .get(cpu)
        .copied()
        .unwrap_or("cpu?")
}

/// The reference model: the CPU the stage sends `frame` to under
/// `settings` (`None`: no CPUs set, the frame passes).
pub fn target_cpu(frame: &[u8], settings: &Table) -> Option<u32> {
    let cpus = CpuSettings::parse(settings).ok()?.cpus;
    let index = flow_hash(frame).map_or(0, |h| pick(h, cpus.len() as u32));
    cpus.get(index as usize).copied()
}

/// The flow hash of an IPv4 or IPv6 frame as the kernel program computes
/// it (`xdpkit_common::cpumap`); `None` for a frame that is not IP or too
/// short for its IP header.
pub fn flow_hash(frame: &[u8]) -> Option<u32> {
    const TCP: u8 = 6;
    const UDP: u8 = 17;
    // Native (little-endian) words, as the program loads them.
    let word = |at: usize| {
        frame
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let ip = ETH_HLEN;
    let ethertype = u16::from_be_bytes(frame.get(12..14)?.try_into().unwrap());
    match ethertype {
        0x0800 => {
            let header = frame.get(ip..ip + 20)?;
            let proto = header[9];
            let mut h = hash_word(HASH_SEED, word(ip + 12)?);
            h = hash_word(h, word(ip + 16)?);
            h = hash_word(h, proto.into());
            let ihl = usize::from(header[0] & 0x0f) * 4;
            let fragment = u16::from_be_bytes([header[6], header[7]]) & 0x3fff != 0;
            let ports = if (proto == TCP || proto == UDP) && !fragment && ihl >= 20 {
                word(ip + ihl).unwrap_or(0)
            } else {
                0
            };
            Some(hash_word(h, ports))
        }
        0x86dd => {
            let header = frame.get(ip..ip + 40)?;
            let next = header[6];
            let mut h = HASH_SEED;
            for at in (ip + 8..ip + 40).step_by(4) {
                h = hash_word(h, word(at)?);
            }
            h = hash_word(h, next.into());
            let ports = if next == TCP || next == UDP {
                word(ip + 40).unwrap_or(0)
            } else {
                0
            };
            Some(hash_word(h, ports))
        }
        _ => None,
    }
}

fn open(dir: &PinDir, pin: &str, name: &str) -> Result<Map> {
    crate::maps::open_pin(&dir.file(pin))?.ok_or_else(|| crate::maps::missing_map(name))
}

/// Points the stage's CPUMAP at `settings.cpus` (each entry running the
/// entry program `entry`) and writes its configuration: entries first, so
/// the running program never picks a CPU without one; then the CPUs no
/// longer listed lose theirs.
fn write(dir: &PinDir, settings: &CpuSettings, entry: &ProgramFd) -> Result<()> {
    let mut cpumap = CpuMap::<MapData>::try_from(open(dir, "cpumap", CPU_MAP)?)
        .map_err(map_err("open the CPUMAP"))?;
    for &cpu in &settings.cpus {
        cpumap
            .set(cpu, settings.queue_size, Some(entry), 0)
            .map_err(|e| Error::Map {
                what: format!(
                    "set CPU {cpu} in the CPUMAP (queue {}, entry program {CPU_ENTRY})",
                    settings.queue_size
                ),
                source: e.into(),
            })?;
    }
    let mut config = Array::<MapData, CpuConfig>::try_from(open(dir, "cpu_config", CPU_CONFIG)?)
        .map_err(map_err("open the cpu stage's configuration"))?;
    config
        .set(0, settings.config(), 0)
        .map_err(map_err("write the cpu stage's configuration"))?;
    let cpumap_fd = IterableMap::map(&cpumap).fd().as_fd();
    for cpu in 0..MAX_CPUS {
        if settings.cpus.contains(&cpu) {
            continue;
        }
        crate::sys::map_delete(cpumap_fd, &cpu)?;
    }
    Ok(())
}

/// The settings of the stage running with its maps in `dir` (`None`: it
/// has none).
pub fn running(dir: &PinDir) -> Result<Option<CpuSettings>> {
    let Some(map) = crate::maps::open_pin(&dir.file("cpu_config"))? else {
        return Ok(None);
    };
    let config = Array::<MapData, CpuConfig>::try_from(map)
        .map_err(map_err("open the cpu stage's configuration"))?;
    let config = config
        .get(&0, 0)
        .map_err(map_err("read the cpu stage's configuration"))?;
    if config.count == 0 {
        return Ok(None);
    }
    let cpus = config.cpus[..(config.count.min(MAX_CPUS)) as usize].to_vec();
    let cpumap = CpuMap::<MapData>::try_from(open(dir, "cpumap", CPU_MAP)?)
        .map_err(map_err("open the CPUMAP"))?;
    let queue_size = cpumap
        .get(cpus[0], 0)
        .map_err(map_err(format!("read CPU {} of the CPUMAP", cpus[0])))?
        .queue_size;
    Ok(Some(CpuSettings {
        cpus,
        queue_size,
        then: config.then,
    }))
}

/// Frames and bytes the entry program ran on each CPU (index: CPU).
pub fn per_cpu_run(dir: &PinDir) -> Result<Vec<ActionCounter>> {
    let map = open(dir, "cpu_run", CPU_RUN)?;
    let array = PerCpuArray::<MapData, ActionCounter>::try_from(map)
        .map_err(map_err("open the cpu stage's per-CPU counters"))?;
    let values = array
        .get(&0, 0)
        .map_err(map_err("read the cpu stage's per-CPU counters"))?;
    Ok(values.iter().copied().collect())
}

/// Frames and bytes the stage sent to each CPU (index: CPU), summed over
/// the CPUs that sent them.
pub fn sent(dir: &PinDir) -> Result<Vec<ActionCounter>> {
    let map = open(dir, "cpu_sent", CPU_SENT)?;
    let array = PerCpuArray::<MapData, ActionCounter>::try_from(map)
        .map_err(map_err("open the cpu stage's sent counters"))?;
    (0..MAX_CPUS)
        .map(|cpu| {
            let values = array
                .get(&cpu, 0)
                .map_err(map_err("read the cpu stage's sent counters"))?;
            Ok(values
                .iter()
                .fold(ActionCounter::default(), |a, c| ActionCounter {
                    packets: a.packets + c.packets,
                    bytes: a.bytes + c.bytes,
                }))
        })
        .collect()
}
