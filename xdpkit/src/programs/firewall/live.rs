//! The firewall of an interface, through its pinned maps: what `xdpkit rule`
//! uses. Loads, deletes and general-rule changes are written into the
//! inactive set and switched in with one config update, so packets never see
//! a half-done change; a prefix rule that cannot outrank a longer prefix is
//! added in place (one trie entry). `FW_RULES` stores every rule for the
//! next process (general rules in full in `FW_GEN_RECORDS`, see [`record`]).

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    os::fd::{AsFd as _, BorrowedFd, OwnedFd},
    time::{Duration, SystemTime},
};

use aya::maps::{Array, MapData};
use serde::Serialize;
use xdpkit_common::firewall::{
    FwConfig, GeneralRecord, RuleHits, RuleRecord, RuleRef, FW_CONFIG, FW_GEN_RECORDS,
    FW_GEN_RULES, FW_MAX_RULE_IDS, FW_RULES, FW_RULE_STATS, REC_GENERAL, REC_USED,
};

use super::{
    capacity,
    kernel::{
        add_prefix_in_place, commit, compile, delete_prefix_in_place, is_prefix_rule, plan,
        read_config, rebuild_general, rebuild_prefixes, stage, stage_planned, staged_prefix_set,
        Plan, Room, Staged,
    },
    maps::{open_pinned, pin_name},
    record::{self, Undecoded},
    Entry, FirewallError, Rule, Ruleset,
};
use crate::maps::map_err;
use crate::maps::{batch, MapSource, PinnedMaps};
use crate::{iface, object, pins::PinDir, privilege, status::rfc3339, sys, Result};

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
    /// Rate limits: frames within the rate (passed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passed: Option<u64>,
    /// Rate limits: frames over the rate (dropped).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limited: Option<u64>,
}

/// An interface's firewall for reading (`status`, `top`, the exporter,
/// `simulate --dev`): it takes no lock, so readers never wait for a writer
/// nor make one wait. A reader may see a change half made (rules stored,
/// counters not yet reset; a general rule whose full record is not yet
/// there, or already gone, is left out): it reports, it does not decide.
pub struct FirewallView {
    iface: String,
    dir: PinDir,
    maps: PinnedMaps,
    /// A writer's view (the lock held): a general rule without its full
    /// record is damage, not a race.
    strict: bool,
}

impl FirewallView {
    /// Opens the firewall attached to `ifname` for reading.
    ///
    /// # Errors
    ///
    /// [`FirewallError::NoFirewall`] if xdpkit's firewall is not attached there.
    pub fn open(ifname: &str) -> Result<FirewallView> {
        iface::validate_name(ifname)?;
        privilege::require("reading firewall rules")?;
        let dir = PinDir::new(ifname)?.stage(super::NAME);
        FirewallView::open_in(ifname, &dir)
    }

    pub(crate) fn open_in(ifname: &str, dir: &PinDir) -> Result<FirewallView> {
        if !dir.file(&pin_name(FW_CONFIG)).exists() {
            iface::index(ifname)?;
            return Err(FirewallError::NoFirewall {
                iface: ifname.to_string(),
            }
            .into());
        }
        let maps = open_pinned(dir)?;
        check_layout(ifname, &maps)?;
        Ok(FirewallView {
            iface: ifname.to_string(),
            dir: dir.clone(),
            maps,
            strict: false,
        })
    }

    /// The stored ruleset.
    pub fn rules(&self) -> Result<Ruleset> {
        read_stored(&self.maps, self.strict)
    }

    /// The general rules (those the bit vectors judge), from the ids in the
    /// active general set: a few hundred lookups, not a read of every rule.
    fn general_entries(&self) -> Result<Vec<Entry>> {
        let cfg = read_config(&self.maps)?;
        let set = cfg.general_set();
        let refs =
            batch::dump::<u32, RuleRef>(&self.maps, FW_GEN_RULES[set], cfg.general[set] as usize)?;
        let records = self.records()?;
        let full = full_records(&self.maps)?;
        refs.into_iter()
            .map(|(_, r)| {
                let rec = records
                    .get(&r.id, 0)
                    .map_err(map_err("read a general rule from FW_RULES"))?;
                if rec.flags & REC_USED == 0 {
                    return Err(FirewallError::DamagedRule { id: r.id }.into());
                }
                entry_of(r.id, &rec, full.get(&r.id))
            })
            .collect()
    }

    /// The rule records: an array by rule id, unused ids zero (no
    /// [`REC_USED`]).
    fn records(&self) -> Result<Array<&MapData, RuleRecord>> {
        let map = self
            .maps
            .map(FW_RULES)
            .ok_or_else(|| object::missing_map(FW_RULES))?;
        Array::try_from(map).map_err(map_err("open FW_RULES"))
    }

    /// Every rule in judging order with its counters.
    pub fn list(&self) -> Result<Vec<RuleRow>> {
        let rules = self.rules()?;
        let cfg = read_config(&self.maps)?;
        let stats = batch::dump_per_cpu::<RuleHits>(
            &self.maps,
            FW_RULE_STATS,
            cfg.next_id.max(1) as usize,
        )?;
        let now_mono = monotonic_ns();
        let now = SystemTime::now();
        Ok(rules
            .entries()
            .iter()
            .map(|e| {
                let per_cpu = stats.get(e.id as usize).map(Vec::as_slice).unwrap_or(&[]);
                let sum = per_cpu.iter().fold(RuleHits::default(), |s, h| RuleHits {
                    packets: s.packets + h.packets,
                    bytes: s.bytes + h.bytes,
                    last_ns: s.last_ns.max(h.last_ns),
                    limited: s.limited + h.limited,
                });
                let last_hit = (sum.last_ns != 0).then(|| {
                    rfc3339(now - Duration::from_nanos(now_mono.saturating_sub(sum.last_ns)))
                });
                let rate_limit = matches!(e.rule.action, super::Action::RateLimit(_));
                RuleRow {
                    id: e.id,
                    rule: e.rule.to_string(),
                    packets: sum.packets,
                    bytes: sum.bytes,
                    last_hit,
                    passed: rate_limit.then_some(sum.packets - sum.limited),
                    limited: rate_limit.then_some(sum.limited),
                }
            })
            .collect())
    }

    /// The policies in force.
    pub fn policy(&self) -> Result<super::Policy> {
        Ok(super::kernel::policy_of(&read_config(&self.maps)?))
    }
}

/// Refuses the pinned maps `maps` of the firewall of `ifname` when the
/// maps every command reads have another layout than this build's.
pub(crate) fn check_layout(ifname: &str, maps: &PinnedMaps) -> Result<()> {
    // `attach` checks every map against this build (object::check_pins);
    // readers and `rule`, where a millisecond counts, check the layouts
    // every command reads, which stand for the rest. FW_RULES was a hash map of the same records
    // before it became an array by id: read as one, it would look empty;
    // then its records were 80 bytes, before general rules moved to
    // FW_GEN_RECORDS.
    for (name, size, kind) in [
        (FW_CONFIG, std::mem::size_of::<FwConfig>(), None),
        (FW_RULE_STATS, std::mem::size_of::<RuleHits>(), None),
        (
            FW_RULES,
            std::mem::size_of::<RuleRecord>(),
            Some(aya::maps::MapType::Array),
        ),
        (
            FW_GEN_RECORDS,
            std::mem::size_of::<GeneralRecord>(),
            Some(aya::maps::MapType::Hash),
        ),
    ] {
        let differs = || FirewallError::IncompatibleState {
            iface: ifname.to_string(),
            map: name.to_string(),
        };
        if maps.path(name).is_none() {
            return Err(differs().into());
        }
        let info = batch::map_info(maps, name)?;
        let same_kind = kind.is_none_or(|k| info.map_type().ok() == Some(k));
        if info.value_size() as usize != size || !same_kind {
            return Err(differs().into());
        }
    }
    Ok(())
}

/// What [`LiveFirewall::sync`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RuleChanges {
    /// Rules that stayed (ids and counters kept).
    pub kept: usize,
    /// Ids of the rules added.
    pub added: Vec<u32>,
    /// Ids of the rules removed.
    pub removed: Vec<u32>,
}

/// Rules built aside by [`LiveFirewall::prepare_sync`], not yet in force.
pub struct PreparedSync {
    changes: RuleChanges,
    /// The new record maps and the staged sets; `None` when nothing changes.
    staged: Option<(FreshRecords, Staged)>,
}

/// New, empty record maps (`FW_RULES`, `FW_GEN_RECORDS`) to fill aside and
/// pin over the old ones: the old records leave with the old maps.
struct FreshRecords {
    rules: OwnedFd,
    general: OwnedFd,
}

impl FreshRecords {
    fn create(maps: &PinnedMaps) -> Result<FreshRecords> {
        Ok(FreshRecords {
            rules: maps.create_like(FW_RULES)?,
            general: maps.create_like(FW_GEN_RECORDS)?,
        })
    }

    /// Pins the new maps over the old ones, the full records first. A
    /// reader that opens one map before the swap and the other after sees
    /// general rules whose full record has another `seq` (every record
    /// written here has a new one), and leaves them out.
    fn swap_in(self, maps: &mut PinnedMaps) -> Result<()> {
        let old = batch::map_fd(maps, FW_GEN_RECORDS)?
            .try_clone_to_owned()
            .map_err(|source| crate::Error::Syscall {
                call: "dup of a map fd",
                source,
            })?;
        maps.swap_in(FW_GEN_RECORDS, self.general)?;
        if let Err(e) = maps.swap_in(FW_RULES, self.rules) {
            let _ = maps.swap_in(FW_GEN_RECORDS, old);
            return Err(e);
        }
        Ok(())
    }
}

impl PreparedSync {
    /// No change of rules (a policy may still change at the commit).
    pub fn nothing() -> PreparedSync {
        PreparedSync {
            changes: RuleChanges::default(),
            staged: None,
        }
    }
}

/// An interface's firewall, locked for this process until dropped: what
/// `xdpkit rule` changes it through. Reads as a [`FirewallView`].
pub struct LiveFirewall {
    view: FirewallView,
    _lock: File,
}

impl std::ops::Deref for LiveFirewall {
    type Target = FirewallView;
    fn deref(&self) -> &FirewallView {
        &self.view
    }
}

impl LiveFirewall {
    /// Opens the firewall attached to `ifname`, waiting for any other
    /// writer to finish.
    ///
    /// # Errors
    ///
    /// [`FirewallError::NoFirewall`] if xdpkit's firewall is not attached there.
    pub fn open(ifname: &str) -> Result<LiveFirewall> {
        iface::validate_name(ifname)?;
        privilege::require("changing firewall rules")?;
        let iface_dir = PinDir::new(ifname)?;
        let dir = iface_dir.stage(super::NAME);
        if !dir.file(&pin_name(FW_CONFIG)).exists() {
            iface::index(ifname)?;
            return Err(FirewallError::NoFirewall {
                iface: ifname.to_string(),
            }
            .into());
        }
        let lock = crate::pins::IfaceLock::take(&iface_dir)?.share()?;
        LiveFirewall::open_locked(ifname, &dir, lock)
    }

    /// Opens the firewall stage whose maps are pinned in `dir`, for a
    /// caller that holds the interface's writers' lock (`lock`: a handle on it).
    pub fn open_locked(ifname: &str, dir: &PinDir, lock: File) -> Result<LiveFirewall> {
        // The pins are listed once locked: a swap by the last writer is seen.
        let mut view = FirewallView::open_in(ifname, dir)?;
        view.strict = true;
        Ok(LiveFirewall { view, _lock: lock })
    }

    /// Stores `entries` in the record maps with zeroed counters, before
    /// packets can hit them.
    fn store(&self, entries: &[Entry]) -> Result<()> {
        self.store_in(
            batch::map_fd(&self.maps, FW_RULES)?,
            batch::map_fd(&self.maps, FW_GEN_RECORDS)?,
            entries,
        )
    }

    /// [`store`](Self::store) into the record maps `rules` and `general`.
    fn store_in(
        &self,
        rules: BorrowedFd<'_>,
        general: BorrowedFd<'_>,
        entries: &[Entry],
    ) -> Result<()> {
        // Ids from `next_id` on were never in the maps, so the program never
        // counted for them: only reused ids need their counters reset.
        let next_id = read_config(&self.maps)?.next_id;
        let reused: Vec<u32> = entries
            .iter()
            .map(|e| e.id)
            .filter(|id| *id < next_id)
            .collect();
        self.reset_counters(&reused)?;
        write_records(rules, general, entries)
    }

    /// Forgets rules `ids` (no longer judged): records (zeroed, full
    /// records deleted after) and counters.
    fn forget(&mut self, ids: &[u32]) -> Result<()> {
        let zeros = vec![RuleRecord::default(); ids.len()];
        sys::map_update_batch(batch::map_fd(&self.maps, FW_RULES)?, ids, &zeros)?;
        let gone: HashSet<u32> = ids.iter().copied().collect();
        let full: Vec<u32> = full_records(&self.maps)?
            .into_keys()
            .filter(|id| gone.contains(id))
            .collect();
        batch::delete(&self.maps, FW_GEN_RECORDS, &full)?;
        self.reset_counters(ids)
    }

    fn reset_counters(&self, ids: &[u32]) -> Result<()> {
        batch::zero_per_cpu::<RuleHits>(&self.maps, FW_RULE_STATS, ids)
    }

    /// Makes room for rule ids below `ids`: grows the firewall (bigger
    /// maps, the chain reinstalled; see [`capacity::grow`]) if its
    /// capacity is smaller.
    fn ensure_ids(&mut self, ids: u64) -> Result<()> {
        self.ensure_room(ids, std::iter::empty())
    }

    /// Makes room in the DIR chunk pools and rule refs, the host maps and
    /// tables, the rate-limit buckets and the IPv6 tables for `rules`
    /// (see [`ensure_room`](Self::ensure_room)). A ruleset past the largest
    /// pool or table keeps those prefixes in the tries.
    fn ensure_chunks<'r>(
        &mut self,
        rules: impl IntoIterator<Item = &'r Rule> + Clone + Send,
    ) -> Result<()> {
        self.ensure_room(0, rules)
    }

    /// Makes room for rule ids below `ids` and for `rules`: grows what is
    /// too small (bigger maps, the chain reinstalled once for all of them;
    /// see [`capacity::grow`]).
    fn ensure_room<'r>(
        &mut self,
        ids: u64,
        rules: impl IntoIterator<Item = &'r Rule> + Clone + Send,
    ) -> Result<()> {
        let wanted = capacity::wanted(&self.maps, ids, rules)?;
        self.grow(&wanted)
    }

    /// [`ensure_room`](Self::ensure_room) for `rules`, which will replace
    /// the ruleset, with the plan of their prefixes made on another core
    /// while the maps grow (at 1M prefixes each takes about a second: new
    /// per-CPU counters, the program verified again; compiling the tables).
    /// Nothing to grow: no plan (staging plans while the records are
    /// stored).
    fn grow_while_planning(&mut self, ids: u64, rules: &Ruleset) -> Result<Option<(Room, Plan)>> {
        let wanted = capacity::wanted(&self.maps, ids, rules.entries().iter().map(|e| &e.rule))?;
        if wanted.is_empty() {
            return Ok(None);
        }
        let set = staged_prefix_set(&self.maps)?;
        let room = Room::of(&self.maps, set)?.grown(set, &wanted);
        std::thread::scope(|scope| {
            let planning = scope.spawn(|| compile(rules).map(|c| plan(&c, &room)));
            let grown = self.grow(&wanted);
            let planned = planning
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
            grown?;
            Ok(Some((room, planned)))
        })
    }

    /// Grows the maps of `wanted` (map, entries), in one switch.
    fn grow(&mut self, wanted: &[(&'static str, u32)]) -> Result<()> {
        if wanted.is_empty() {
            return Ok(());
        }
        let iface_dir = PinDir::new(&self.iface)?;
        let lock = self.shared_lock()?;
        capacity::grow(&self.iface, &iface_dir, &lock, wanted)?;
        // The pins now hold the bigger maps.
        self.view.maps = open_pinned(&self.view.dir)?;
        Ok(())
    }

    /// The writers' lock this handle holds, to pass on to a reinstall.
    fn shared_lock(&self) -> Result<crate::pins::IfaceLock> {
        let fd = self
            ._lock
            .try_clone()
            .map_err(|source| crate::Error::Syscall {
                call: "dup of the interface lock",
                source,
            })?;
        Ok(crate::pins::IfaceLock::from_shared(fd))
    }

    /// The next id and sequence number.
    fn next(&self) -> Result<(u32, u64)> {
        let cfg = read_config(&self.maps)?;
        Ok((cfg.next_id.max(1), cfg.next_seq))
    }

    /// Adds `rule` and returns its id. A prefix rule goes straight into the
    /// active trie when it cannot outrank a longer prefix (the usual case:
    /// microseconds at any size); otherwise the prefix tries are rebuilt
    /// aside and switched in. A general rule rebuilds the (small) general set.
    pub fn add(&mut self, rule: Rule) -> Result<u32> {
        let (id, seq) = self.next()?;
        let entry = Entry { id, seq, rule };
        let general = if is_prefix_rule(&entry.rule) {
            None
        } else {
            let mut general = self.general_entries()?;
            general.push(entry.clone());
            // Before anything grows or its full record is stored
            // (FW_GEN_RECORDS holds no more).
            super::general::check_count(general.len())?;
            Some(general)
        };
        self.ensure_ids(u64::from(id) + 1)?;
        if matches!(entry.rule.action, super::Action::RateLimit(_)) {
            // Its buckets: the in-place and general paths grow nothing else.
            self.ensure_chunks(std::iter::once(&entry.rule))?;
        }
        self.store(std::slice::from_ref(&entry))?;
        let done = if let Some(general) = general {
            rebuild_general(&mut self.view.maps, &general)
        } else {
            add_prefix_in_place(&mut self.view.maps, &entry).and_then(|fast| {
                if fast {
                    return Ok(());
                }
                let mut rules = self.rules()?;
                rules.push_entry(entry.clone());
                self.ensure_chunks(rules.entries().iter().map(|e| &e.rule))?;
                rebuild_prefixes(&mut self.view.maps, &rules)
            })
        };
        if let Err(e) = done {
            // Not judged yet: drop the record so the stored set stays the live one.
            let _ = self.forget(&[id]);
            return Err(e);
        }
        Ok(id)
    }

    /// Deletes rule `id`; other rules keep their counters.
    pub fn delete(&mut self, id: u32) -> Result<()> {
        let rec = match self.records()?.get(&id, 0) {
            Ok(rec) if rec.flags & REC_USED != 0 => rec,
            Ok(_)
            | Err(aya::maps::MapError::KeyNotFound)
            | Err(aya::maps::MapError::OutOfBounds { .. }) => {
                return Err(FirewallError::NoSuchRule {
                    iface: self.iface.clone(),
                    id,
                }
                .into())
            }
            Err(e) => return Err(map_err("read FW_RULES")(e)),
        };
        let full = if rec.flags & REC_GENERAL != 0 {
            sys::map_lookup::<u32, GeneralRecord>(batch::map_fd(&self.maps, FW_GEN_RECORDS)?, &id)?
        } else {
            None
        };
        let gone = entry_of(id, &rec, full.as_ref())?;
        if is_prefix_rule(&gone.rule) {
            let mut rules = self.rules()?;
            rules.remove(id);
            if !delete_prefix_in_place(&mut self.view.maps, &gone, &rules)? {
                // In-place adds may have used up the DIR rule refs.
                self.ensure_chunks(rules.entries().iter().map(|e| &e.rule))?;
                rebuild_prefixes(&mut self.view.maps, &rules)?;
            }
        } else {
            let mut general = self.general_entries()?;
            general.retain(|e| e.id != id);
            rebuild_general(&mut self.view.maps, &general)?;
        }
        self.forget(&[id])
    }

    /// Deletes every rule; returns how many there were.
    pub fn flush(&mut self) -> Result<usize> {
        let count = self.ids()?.len();
        // Empty record maps in place of a million writes; counters of the
        // ids are zeroed when an id is used again (`store`).
        let empty = FreshRecords::create(&self.maps)?;
        let staged = stage(&self.maps, &Ruleset::new())?;
        empty.swap_in(&mut self.view.maps)?;
        commit(&mut self.view.maps, staged)?;
        Ok(count)
    }

    fn ids(&self) -> Result<Vec<u32>> {
        Ok(
            batch::dump::<u32, RuleRecord>(&self.maps, FW_RULES, usize::MAX)?
                .into_iter()
                .filter(|(_, rec)| rec.flags & REC_USED != 0)
                .map(|(id, _)| id)
                .collect(),
        )
    }

    /// Loads the rules of a file: with `replace` they become the whole
    /// ruleset (ids = line numbers), atomically; otherwise they are added
    /// after the existing ones with new ids. Returns the ids, in file order.
    pub fn load(&mut self, file: &Ruleset, replace: bool) -> Result<Vec<u32>> {
        let (first_id, seq0) = self.next()?;
        let mut by_line: Vec<&Entry> = file.entries().iter().collect();
        by_line.sort_by_key(|e| e.seq);
        // Replace: ids are line numbers. Add: new ids after the largest.
        let new: Vec<Entry> = by_line
            .iter()
            .enumerate()
            .map(|(i, e)| Entry {
                id: if replace { e.id } else { first_id + i as u32 },
                seq: seq0 + i as u64,
                rule: e.rule.clone(),
            })
            .collect();
        if let Some(last) = new.iter().map(|e| e.id).max() {
            if last >= FW_MAX_RULE_IDS {
                return Err(FirewallError::IdBeyondLargest {
                    id: last,
                    largest: FW_MAX_RULE_IDS - 1,
                }
                .into());
            }
        }
        // Ids, pools and tables grow together: one switch, not three.
        let room = new.iter().map(|e| u64::from(e.id) + 1).max().unwrap_or(0);
        let ids: Vec<u32> = new.iter().map(|e| e.id).collect();
        if replace {
            let rules = Ruleset::from_entries(new);
            let planned = self.grow_while_planning(room, &rules)?;
            // The records go into new record maps, so the old ones leave
            // with the old maps (no dump, no deletes); the tries are filled
            // at the same time. Zeroed counters of reused ids precede the
            // switch: those old rules are on their way out.
            let fresh = FreshRecords::create(&self.maps)?;
            let staged = self.stage_planned_while(&rules, planned, || {
                self.store_in(fresh.rules.as_fd(), fresh.general.as_fd(), rules.entries())
            })?;
            fresh.swap_in(&mut self.view.maps)?;
            commit(&mut self.view.maps, staged)?;
        } else {
            let mut all = self.rules()?.into_entries();
            all.extend(new.iter().cloned());
            let rules = Ruleset::from_entries(all);
            self.ensure_room(room, rules.entries().iter().map(|e| &e.rule))?;
            match self.stage_while(&rules, || self.store(&new)) {
                Ok(staged) => commit(&mut self.view.maps, staged)?,
                Err(e) => {
                    let _ = self.forget(&ids);
                    return Err(e);
                }
            }
        }
        Ok(ids)
    }

    /// Makes the rules equal to `desired` (in order: later rules of equal
    /// `prio` rank after earlier ones), atomically: rules already there
    /// keep their ids and counters, new ones get new ids, missing ones go.
    /// Nothing changes when the rules and their order are the same.
    pub fn sync(&mut self, desired: &[Rule]) -> Result<RuleChanges> {
        let next_id = u64::from(self.next()?.0);
        // Counting the new rules reads every stored one: only when they
        // may not fit.
        let mut room = 0;
        if next_id + desired.len() as u64 > u64::from(capacity::capacity(&self.maps)?) {
            room = next_id + count_new(&self.rules()?, desired) as u64;
        }
        self.ensure_room(room, desired)?;
        let prepared = self.prepare_sync(desired)?;
        self.commit_sync(prepared, None)
    }

    /// The first half of [`sync`](Self::sync): the new rule records and
    /// judging sets are built aside (a new FW_RULES, the inactive sets);
    /// packets still see the old rules, and dropping the result changes
    /// nothing.
    pub fn prepare_sync(&mut self, desired: &[Rule]) -> Result<PreparedSync> {
        let current = self.rules()?;
        self.prepare_sync_from(current, desired.to_vec())
    }

    /// [`prepare_sync`](Self::prepare_sync) of `desired`, taken (a million
    /// rules are not copied), with the stored rules kept in
    /// `lock` by an earlier step of the same change ([`KeptRules`]), if
    /// they are still those stored; read again otherwise.
    pub(crate) fn prepare_sync_under(
        &mut self,
        desired: Vec<Rule>,
        lock: &crate::pins::IfaceLock,
    ) -> Result<PreparedSync> {
        let current = match KeptRules::take(lock, &self.maps)? {
            Some(kept) => kept,
            None => self.rules()?,
        };
        self.prepare_sync_from(current, desired)
    }

    /// [`prepare_sync`](Self::prepare_sync) from `current`, the stored rules.
    fn prepare_sync_from(&mut self, current: Ruleset, desired: Vec<Rule>) -> Result<PreparedSync> {
        let mut by_seq: Vec<&Entry> = current.entries().iter().collect();
        by_seq.sort_by_key(|e| e.seq);
        // Keyed by the rules themselves: equal rules have equal canonical
        // strings and back, and a million strings made and hashed cost
        // more than the rest of the matching.
        let mut pool: foldhash::HashMap<&Rule, Vec<&Entry>> =
            foldhash::HashMap::with_capacity_and_hasher(current.len(), Default::default());
        for entry in by_seq.iter().rev() {
            // Reversed, so pop() hands out the earliest first.
            pool.entry(&entry.rule).or_default().push(entry);
        }
        let (mut next_id, seq0) = self.next()?;
        let mut entries = Vec::with_capacity(desired.len());
        let mut added = Vec::new();
        for (i, rule) in desired.into_iter().enumerate() {
            // Sequence numbers follow the file, so rules of equal priority
            // rank in its order.
            let seq = seq0 + i as u64;
            // A kept rule keeps its id (and so its counters).
            let id = match pool.get_mut(&rule).and_then(Vec::pop) {
                Some(kept) => kept.id,
                None => {
                    let id = next_id;
                    added.push(id);
                    next_id += 1;
                    id
                }
            };
            entries.push(Entry { id, seq, rule });
        }
        let removed: Vec<u32> = pool.into_values().flatten().map(|e| e.id).collect();
        let same_order = entries.len() == by_seq.len()
            && entries
                .iter()
                .zip(&by_seq)
                .all(|(new, old)| new.id == old.id);
        let changes = RuleChanges {
            kept: entries.len() - added.len(),
            added,
            removed,
        };
        if changes.added.is_empty() && changes.removed.is_empty() && same_order {
            return Ok(PreparedSync {
                changes,
                staged: None,
            });
        }
        // A writer that needs more ids grows the firewall first (`sync`,
        // or the install's `before_install`).
        let room = capacity::capacity(&self.maps)?;
        if next_id > room {
            return Err(FirewallError::IdsExhausted { largest: room - 1 }.into());
        }
        let rules = Ruleset::from_entries(entries);
        // The records go into new record maps (kept ones under their ids,
        // so their counters stay theirs), filled while the inactive sets are
        // staged; then one switch.
        let fresh = FreshRecords::create(&self.maps)?;
        let staged = self.stage_while(&rules, || {
            write_records(fresh.rules.as_fd(), fresh.general.as_fd(), rules.entries())
        })?;
        Ok(PreparedSync {
            changes,
            staged: Some((fresh, staged)),
        })
    }

    /// The second half of [`sync`](Self::sync): the prepared rules (and
    /// `policy`, if given) switched in with one config update.
    pub fn commit_sync(
        &mut self,
        prepared: PreparedSync,
        policy: Option<super::Policy>,
    ) -> Result<RuleChanges> {
        let PreparedSync { changes, staged } = prepared;
        match (staged, policy) {
            (Some((fresh, staged)), policy) => {
                let staged = match policy {
                    Some(policy) => staged.with_policy(&policy),
                    None => staged,
                };
                fresh.swap_in(&mut self.view.maps)?;
                commit(&mut self.view.maps, staged)?;
                self.reset_counters(&changes.removed)?;
            }
            (None, Some(policy)) => super::kernel::set_policy(&mut self.view.maps, &policy)?,
            (None, None) => {}
        }
        Ok(changes)
    }

    /// Stages `rules` while `store` runs on a thread of its own: they fill
    /// different maps, and each is mostly kernel time. A staging error
    /// comes first: it says why (too many general rules, say) where the
    /// store only finds a map full.
    fn stage_while(
        &self,
        rules: &Ruleset,
        store: impl FnOnce() -> Result<()> + Send,
    ) -> Result<Staged> {
        self.stage_planned_while(rules, None, store)
    }

    /// [`stage_while`](Self::stage_while) with a plan made beforehand
    /// ([`stage_planned`]).
    fn stage_planned_while(
        &self,
        rules: &Ruleset,
        planned: Option<(Room, Plan)>,
        store: impl FnOnce() -> Result<()> + Send,
    ) -> Result<Staged> {
        std::thread::scope(|scope| {
            let stored = scope.spawn(store);
            let staged = stage_planned(&self.maps, rules, planned);
            let stored = stored
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            staged.and_then(|staged| stored.map(|()| staged))
        })
    }
}

/// How many of `desired` a sync with `current` adds (rules not already
/// there, counted with repeats): the new ids it takes.
pub fn count_new(current: &Ruleset, desired: &[Rule]) -> usize {
    let mut have: foldhash::HashMap<&Rule, usize> =
        foldhash::HashMap::with_capacity_and_hasher(current.len(), Default::default());
    for e in current.entries() {
        *have.entry(&e.rule).or_default() += 1;
    }
    desired
        .iter()
        .filter(|rule| match have.get_mut(*rule) {
            Some(n) if *n > 0 => {
                *n -= 1;
                false
            }
            _ => true,
        })
        .count()
}

/// The stored rules as a writer read them under the writers' lock, kept
/// in the lock ([`IfaceLock::keep`](crate::pins::IfaceLock::keep)) for a
/// later step of the same change: `apply` counts the new rules before the
/// stage loads (to grow first), then syncs, and a million rules take
/// about half a second to read.
pub(crate) struct KeptRules {
    /// What they were read from: the record map's id and the config's
    /// next id, next sequence number and sets in use. Other writers wait
    /// for the lock; this says whether this change itself replaced the
    /// maps or synced since (then they are read again).
    from: (u32, u32, u64, u32),
    rules: Ruleset,
}

impl KeptRules {
    fn source(maps: &impl MapSource) -> Result<(u32, u32, u64, u32)> {
        let cfg = read_config(maps)?;
        let records = batch::map_info(maps, FW_RULES)?.id();
        Ok((records, cfg.next_id, cfg.next_seq, cfg.active))
    }

    /// Reads the stored rules of `maps`, for a caller that holds the
    /// writers' lock (so strictly: damage is an error).
    pub(crate) fn read(maps: &impl MapSource) -> Result<Ruleset> {
        read_stored(maps, true)
    }

    /// Keeps `rules`, the stored rules of `maps` (read with
    /// [`read`](Self::read) under `lock`, or before a growth, which
    /// copies them), in `lock` for [`LiveFirewall::prepare_sync_under`].
    pub(crate) fn keep(
        lock: &crate::pins::IfaceLock,
        maps: &impl MapSource,
        rules: Ruleset,
    ) -> Result<()> {
        let from = KeptRules::source(maps)?;
        lock.keep(KeptRules { from, rules });
        Ok(())
    }

    /// The kept rules, if they were read from the maps as they are now.
    fn take(lock: &crate::pins::IfaceLock, maps: &impl MapSource) -> Result<Option<Ruleset>> {
        let Some(kept) = lock.take_kept::<KeptRules>() else {
            return Ok(None);
        };
        Ok((kept.from == KeptRules::source(maps)?).then_some(kept.rules))
    }
}

/// The stored ruleset of the firewall whose maps are `maps` (no lock: a
/// reader sees the records of the set in force, old or new; a general rule
/// whose full record it does not find, or finds of another `seq`, is being
/// added or removed, and is left out).
pub fn read_rules(maps: &impl MapSource) -> Result<Ruleset> {
    read_stored(maps, false)
}

/// [`read_rules`] for a writer, which holds the lock: a general rule
/// without its full record is a damaged rule.
fn read_stored(maps: &impl MapSource, strict: bool) -> Result<Ruleset> {
    // An array by id: unused ids are zero records. Read before the full
    // records, which writers store before the records that point to them.
    // Only ids below `next_id` are in use: the array is sized for growth
    // (often twice the rules), and reading it whole doubled the cost.
    // Writers count a new id in the config last; a reader that comes
    // between sees the rule as not yet there.
    let used = read_config(maps)?.next_id.max(1) as usize;
    let records = batch::dump::<u32, RuleRecord>(maps, FW_RULES, used)?;
    let general = REC_USED | REC_GENERAL;
    let full = if records
        .iter()
        .any(|(_, rec)| rec.flags & general == general)
    {
        full_records(maps)?
    } else {
        HashMap::new()
    };
    let mut entries = Vec::with_capacity(records.len());
    for (id, rec) in records {
        if rec.flags & REC_USED == 0 {
            continue;
        }
        match record::decode(&rec, full.get(&id)) {
            Ok(rule) => entries.push(Entry {
                id,
                seq: rec.seq,
                rule,
            }),
            Err(Undecoded::Incomplete) if !strict => {}
            Err(_) => return Err(FirewallError::DamagedRule { id }.into()),
        }
    }
    Ok(Ruleset::from_entries(entries))
}

/// The full records of the general rules, by id.
fn full_records(maps: &impl MapSource) -> Result<HashMap<u32, GeneralRecord>> {
    Ok(
        batch::dump::<u32, GeneralRecord>(maps, FW_GEN_RECORDS, usize::MAX)?
            .into_iter()
            .collect(),
    )
}

/// Writes the records of `entries`: the full records of general rules into
/// `general`, then every rule's record into `rules`.
fn write_records(rules: BorrowedFd<'_>, general: BorrowedFd<'_>, entries: &[Entry]) -> Result<()> {
    let mut ids = Vec::with_capacity(entries.len());
    let mut records = Vec::with_capacity(entries.len());
    let (mut full_ids, mut full) = (Vec::new(), Vec::new());
    for e in entries {
        let (rec, general) = record::encode(&e.rule, e.seq);
        ids.push(e.id);
        records.push(rec);
        if let Some(general) = general {
            full_ids.push(e.id);
            full.push(general);
        }
    }
    sys::map_update_batch(general, &full_ids, &full)?;
    sys::map_update_batch(rules, &ids, &records)
}

/// The entry of used record `rec` of rule `id` whose full record is
/// `full`, for a writer: anything missing is damage.
fn entry_of(id: u32, rec: &RuleRecord, full: Option<&GeneralRecord>) -> Result<Entry> {
    let rule = record::decode(rec, full).map_err(|_| FirewallError::DamagedRule { id })?;
    Ok(Entry {
        id,
        seq: rec.seq,
        rule,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_rules_are_counted_with_repeats() {
        let rule = |text: &str| text.parse::<Rule>().unwrap();
        let mut current = Ruleset::new();
        current.add(rule("deny src 198.19.0.1"));
        current.add(rule("deny src 198.19.0.2"));
        let desired = [
            rule("deny src 198.19.0.1"),
            rule("deny src 198.19.0.1"),
            rule("deny src 198.19.0.3"),
        ];
        assert_eq!(count_new(&current, &desired), 2);
        assert_eq!(count_new(&current, &desired[..1]), 0);
    }
}
