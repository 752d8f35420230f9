//! The firewall of an interface, through its pinned maps: what `xdpkit rule`
//! uses. Every change writes the whole ruleset into the inactive set and
//! flips it in ([`super::kernel::apply`]), so packets never see a half-done
//! change, and stores the rules in `FW_RULES` for the next process.

use std::{
    fs::File,
    os::fd::{AsFd as _, AsRawFd as _},
    time::{Duration, SystemTime},
};

use aya::maps::{HashMap, MapData, PerCpuArray, PerCpuValues};
use serde::Serialize;
use xdpkit_common::firewall::{RuleHits, RuleRecord, FW_RULES, FW_RULE_STATS};

use super::{
    kernel::{apply, read_config, write_config},
    maps::{pin_name, MapSource, PinnedMaps},
    record, Entry, Rule, Ruleset,
};
use crate::{iface, object, pins::PinDir, privilege, status::rfc3339, sys, Error, Result};

/// One row of `xdpkit rule list`.
#[derive(Clone, Debug, Serialize)]
pub struct RuleRow {
    /// Rule id.
    pub id: u32,
    /// The rule, canonical form.
    pub rule: String,
    /// Frames it decided.
    pub packets: u64,
    /// Their bytes.
    pub bytes: u64,
    /// When it last decided a frame (RFC 3339, UTC).
    pub last_hit: Option<String>,
}

/// An interface's firewall, locked for this process until dropped.
pub struct LiveFirewall {
    iface: String,
    maps: PinnedMaps,
    _lock: File,
}

fn map_err(what: &'static str) -> impl FnOnce(aya::maps::MapError) -> Error {
    move |e| Error::Map {
        what: what.to_string(),
        source: e.into(),
    }
}

impl LiveFirewall {
    /// Opens the firewall attached to `ifname`.
    ///
    /// # Errors
    ///
    /// [`Error::NoFirewall`] if xdpkit's firewall is not attached there.
    pub fn open(ifname: &str) -> Result<LiveFirewall> {
        iface::validate_name(ifname)?;
        privilege::require("changing firewall rules")?;
        let dir = PinDir::new(ifname)?;
        if !dir
            .file(&pin_name(xdpkit_common::firewall::FW_CONFIG))
            .exists()
        {
            iface::index(ifname)?;
            return Err(Error::NoFirewall {
                iface: ifname.to_string(),
            });
        }
        let lock = File::open(dir.path()).map_err(|source| Error::Pin {
            what: "cannot open",
            path: dir.path().to_path_buf(),
            source,
        })?;
        // SAFETY: a valid fd; flock blocks until no other xdpkit holds it.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(Error::Pin {
                what: "cannot lock",
                path: dir.path().to_path_buf(),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(LiveFirewall {
            iface: ifname.to_string(),
            maps: PinnedMaps::open(&dir)?,
            _lock: lock,
        })
    }

    /// The stored ruleset.
    pub fn rules(&self) -> Result<Ruleset> {
        let map = self
            .maps
            .map(FW_RULES)
            .ok_or_else(|| object::missing_map(FW_RULES))?;
        let records: HashMap<&MapData, u32, RuleRecord> =
            HashMap::try_from(map).map_err(map_err("open FW_RULES"))?;
        let mut entries = Vec::new();
        for item in records.iter() {
            let (id, rec) = item.map_err(map_err("read FW_RULES"))?;
            let rule = record::decode(&rec).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "rule {id} in FW_RULES is damaged: flush and reload"
                ))
            })?;
            entries.push(Entry {
                id,
                seq: rec.seq,
                rule,
            });
        }
        Ok(Ruleset::from_entries(entries))
    }

    /// The policies in force.
    pub fn policy(&self) -> Result<super::Policy> {
        Ok(super::kernel::policy_of(&read_config(&self.maps)?))
    }

    /// Makes `rules` the live ruleset and stores it; `removed` ids get
    /// their records and counters cleared.
    fn commit(&mut self, rules: &Ruleset, removed: &[u32]) -> Result<()> {
        apply(&mut self.maps, rules)?;
        let map = self
            .maps
            .map_mut(FW_RULES)
            .ok_or_else(|| object::missing_map(FW_RULES))?;
        let mut records: HashMap<&mut MapData, u32, RuleRecord> =
            HashMap::try_from(map).map_err(map_err("open FW_RULES"))?;
        for id in removed {
            let _ = records.remove(id);
        }
        let (ids, values): (Vec<u32>, Vec<RuleRecord>) = rules
            .entries()
            .iter()
            .map(|e| (e.id, record::encode(&e.rule, e.seq)))
            .unzip();
        let fd = match self.maps.map(FW_RULES) {
            Some(aya::maps::Map::HashMap(d)) => d.fd().as_fd(),
            _ => return Err(object::missing_map(FW_RULES)),
        };
        sys::map_update_batch(fd, &ids, &values)?;
        self.reset_counters(removed)?;
        let mut cfg = read_config(&self.maps)?;
        cfg.next_seq = cfg.next_seq.max(rules.next_seq());
        write_config(&mut self.maps, cfg)
    }

    fn reset_counters(&mut self, ids: &[u32]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| Error::Syscall {
            call: "nr_cpus",
            source: e,
        })?;
        let map = self
            .maps
            .map_mut(FW_RULE_STATS)
            .ok_or_else(|| object::missing_map(FW_RULE_STATS))?;
        let mut stats: PerCpuArray<&mut MapData, RuleHits> =
            PerCpuArray::try_from(map).map_err(map_err("open FW_RULE_STATS"))?;
        for id in ids {
            let zeros = PerCpuValues::try_from(vec![RuleHits::default(); cpus]).map_err(|e| {
                Error::Syscall {
                    call: "per-CPU values",
                    source: e,
                }
            })?;
            stats
                .set(*id, zeros, 0)
                .map_err(map_err("reset rule counters"))?;
        }
        Ok(())
    }

    fn seeded(&self) -> Result<Ruleset> {
        let mut rules = self.rules()?;
        // Sequence numbers keep growing across deletions and processes.
        rules.reserve_seq(read_config(&self.maps)?.next_seq);
        Ok(rules)
    }

    /// Adds `rule` and returns its id.
    pub fn add(&mut self, rule: Rule) -> Result<u32> {
        let mut rules = self.seeded()?;
        let id = rules.add(rule);
        self.commit(&rules, &[])?;
        Ok(id)
    }

    /// Deletes rule `id`; other rules keep their counters.
    pub fn delete(&mut self, id: u32) -> Result<()> {
        let mut rules = self.seeded()?;
        if !rules.remove(id) {
            return Err(Error::NoSuchRule {
                iface: self.iface.clone(),
                id,
            });
        }
        self.commit(&rules, &[id])
    }

    /// Deletes every rule; returns how many there were.
    pub fn flush(&mut self) -> Result<usize> {
        let old = self.rules()?;
        let ids: Vec<u32> = old.entries().iter().map(|e| e.id).collect();
        self.commit(&Ruleset::new(), &ids)?;
        Ok(ids.len())
    }

    /// Loads the rules of a file: with `replace` they become the whole
    /// ruleset (ids = line numbers), atomically; otherwise they are added
    /// after the existing ones with new ids. Returns the ids, in file order.
    pub fn load(&mut self, file: &Ruleset, replace: bool) -> Result<Vec<u32>> {
        let current = self.seeded()?;
        let seq0 = current.next_seq();
        let mut by_line: Vec<&Entry> = file.entries().iter().collect();
        by_line.sort_by_key(|e| e.seq);
        // Replace: ids are line numbers. Add: new ids after the largest.
        let first_new_id = current.entries().iter().map(|e| e.id).max().unwrap_or(0) + 1;
        let new: Vec<Entry> = by_line
            .iter()
            .enumerate()
            .map(|(i, e)| Entry {
                id: if replace {
                    e.id
                } else {
                    first_new_id + i as u32
                },
                seq: seq0 + i as u64,
                rule: e.rule.clone(),
            })
            .collect();
        let ids = new.iter().map(|e| e.id).collect();
        // Every old rule goes on replace, also where a new one reuses its id.
        let (entries, removed) = if replace {
            (new, current.entries().iter().map(|e| e.id).collect())
        } else {
            (
                current.entries().iter().cloned().chain(new).collect(),
                Vec::new(),
            )
        };
        self.commit(&Ruleset::from_entries(entries), &removed)?;
        Ok(ids)
    }

    /// Every rule in judging order with its counters.
    pub fn list(&self) -> Result<Vec<RuleRow>> {
        let rules = self.rules()?;
        let map = self
            .maps
            .map(FW_RULE_STATS)
            .ok_or_else(|| object::missing_map(FW_RULE_STATS))?;
        let stats: PerCpuArray<&MapData, RuleHits> =
            PerCpuArray::try_from(map).map_err(map_err("open FW_RULE_STATS"))?;
        let now_mono = monotonic_ns();
        let now = SystemTime::now();
        rules
            .entries()
            .iter()
            .map(|e| {
                let per_cpu = stats.get(&e.id, 0).map_err(map_err("read rule counters"))?;
                let (packets, bytes, last) = per_cpu.iter().fold((0, 0, 0), |(p, b, l), h| {
                    (p + h.packets, b + h.bytes, l.max(h.last_ns))
                });
                let last_hit = (last != 0)
                    .then(|| rfc3339(now - Duration::from_nanos(now_mono.saturating_sub(last))));
                Ok(RuleRow {
                    id: e.id,
                    rule: e.rule.to_string(),
                    packets,
                    bytes,
                    last_hit,
                })
            })
            .collect()
    }
}

/// CLOCK_MONOTONIC in ns, the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}
