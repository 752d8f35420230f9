//! The firewall as a stage of the chain: its maps, settings and model.

use xdpkit_common::firewall::{Outcome, FW_CONFIG, FW_MAPS, FW_OUTCOMES};

use std::path::Path;

use super::{
    capacity, config, kernel,
    live::{KeptRules, LiveFirewall, PreparedSync},
    maps::pin_name,
    Policy, Verdict,
};
use crate::{
    model::{Decision, StageOutcome},
    object::{embedded, Object},
    pins::{IfaceLock, PinDir},
    programs::{Commit, MemoryPart, OutcomeCount, Program, StageLoad},
    settings::SettingsError,
    Result,
};

pub use super::NAME;

/// The `firewall` program.
pub struct Firewall;

/// The settings keys of the policies.
const POLICY_KEYS: [&str; 4] = ["default", "fragments", "non-ip", "malformed"];

/// Settings that set `policy` (and leave the rules alone), for `attach`.
pub fn policy_settings(policy: &Policy) -> toml::Table {
    let mut table = config::to_table(policy, &[]);
    table.remove("rules");
    table
}

/// Every firewall map with its pin file (`fw_*`).
static PINS: std::sync::LazyLock<Vec<(&'static str, &'static str)>> =
    std::sync::LazyLock::new(|| {
        FW_MAPS
            .iter()
            .map(|m| (*m, &*Box::leak(pin_name(m).into_boxed_str())))
            .collect()
    });

impl Program for Firewall {
    fn name(&self) -> &'static str {
        NAME
    }

    fn about(&self) -> &'static str {
        "judge frames by prefix, port and protocol rules (`xdpkit rule`); allowed frames go on"
    }

    fn object(&self) -> Object {
        embedded!("firewall")
    }

    fn symbol(&self) -> &'static str {
        "xdpkit_firewall"
    }

    fn pinned_maps(&self) -> &'static [(&'static str, &'static str)] {
        PINS.as_slice()
    }

    fn normalise_settings(
        &self,
        given: Option<&toml::Table>,
        base_dir: &Path,
    ) -> std::result::Result<toml::Table, SettingsError> {
        config::normalise(given.unwrap_or(&toml::Table::new()), base_dir)
    }

    fn map_sizes(&self, dir: &PinDir, settings: &toml::Table) -> Result<Vec<(&'static str, u32)>> {
        // Pinned maps keep their size (`before_install` grew them if
        // needed); new ones are sized for the settings' rules.
        let pinned = match super::maps::open_pinned(dir) {
            // Unreadable pins are refused later, with the reason.
            Ok(maps) if attached_in(dir) => capacity::capacity(&maps)
                .and_then(|c| Ok((c, capacity::pools(&maps)?, capacity::v6_pool(&maps)?)))
                .ok(),
            _ => None,
        };
        let wanted = capacity::capacity_for(fresh_ids(settings))?;
        let (pools, buckets) = match &pinned {
            Some((_, pools, v6)) => (pools.clone(), *v6),
            None => {
                let rules = config::rules_of(settings);
                (
                    capacity::pool_sizes(super::dir::pool_needs(rules.iter())),
                    super::v6tab::pool_for(super::v6tab::entries_needed(rules.iter())),
                )
            }
        };
        let mut sizes = capacity::sizes(pinned.as_ref().map_or(0, |p| p.0).max(wanted));
        sizes.extend(pools);
        sizes.extend(capacity::v6_sizes(buckets));
        Ok(sizes)
    }

    fn before_install(
        &self,
        iface: &str,
        iface_dir: &PinDir,
        settings: &toml::Table,
        lock: &IfaceLock,
    ) -> Result<()> {
        let dir = iface_dir.stage(NAME);
        let running = crate::chain::running(iface_dir)?
            .is_some_and(|chain| chain.stages.iter().any(|s| s == NAME));
        if !running || !attached_in(&dir) {
            return Ok(());
        }
        let maps = super::maps::open_pinned(&dir)?;
        let has = capacity::capacity(&maps)?;
        let mut ids = config::max_rules_of(settings).map_or(0, |n| n + 1);
        // Parsed once here: a million rules take a while.
        let rules = if settings.contains_key("rules") {
            config::rules_of(settings)
        } else {
            Vec::new()
        };
        let mut current = None;
        if settings.contains_key("rules") {
            let next_id = u64::from(kernel::read_config(&maps)?.next_id.max(1));
            // Only when the bound says it may not fit: counting the new
            // rules reads every stored one.
            if next_id + rules.len() as u64 > u64::from(has) {
                let stored = KeptRules::read(&maps)?;
                let added = super::live::count_new(&stored, &rules);
                ids = ids.max(next_id + added as u64);
                current = Some(stored);
            }
        }
        // Ids, pools and tables grow together: one switch.
        let wanted = capacity::wanted(&maps, ids, rules.iter())?;
        if !wanted.is_empty() {
            capacity::grow(iface, iface_dir, lock, &wanted)?;
        }
        if let Some(stored) = current {
            // `configure` syncs from them (the pins hold the grown maps).
            KeptRules::keep(lock, &super::maps::open_pinned(&dir)?, stored)?;
        }
        Ok(())
    }

    fn minimum_settings(&self) -> &'static [&'static str] {
        &[capacity::MAX_RULES]
    }

    fn memory(&self, dir: &PinDir) -> Vec<MemoryPart> {
        capacity::memory(dir).unwrap_or_default()
    }

    fn configure(
        &self,
        stage: &mut StageLoad<'_>,
        settings: &toml::Table,
    ) -> Result<Option<Commit>> {
        // `attach` gives policies only when asked to change them, and no
        // rules (those stay as `xdpkit rule` left them); `apply` gives both.
        let policy = POLICY_KEYS
            .iter()
            .any(|k| settings.contains_key(*k))
            .then(|| config::policy_of(settings));
        let rules = settings
            .contains_key("rules")
            .then(|| config::rules_of(settings));
        if stage.fresh {
            // New maps: nothing runs on them yet.
            kernel::write_config(
                stage.ebpf,
                kernel::config(&policy.unwrap_or_default(), 0, false),
            )?;
        }
        let policy = policy.filter(|_| !stage.fresh);
        if rules.is_none() && policy.is_none() {
            return Ok(None);
        }
        let mut live = LiveFirewall::open_locked(stage.iface, stage.dir, stage.lock.share()?)?;
        let prepared = match rules {
            Some(rules) => live.prepare_sync_under(rules, stage.lock)?,
            None => PreparedSync::nothing(),
        };
        Ok(Some(Box::new(move || {
            live.commit_sync(prepared, policy).map(drop)
        })))
    }

    fn running_settings(&self, dir: &PinDir) -> Result<toml::Table> {
        let maps = super::maps::open_pinned(dir)?;
        super::live::check_layout(dir.ifname(), &maps)?;
        let cfg = kernel::read_config(&maps)?;
        let mut rules = super::live::read_rules(&maps)?.into_entries();
        // In the order they were given: that order ranks rules of equal prio.
        rules.sort_by_key(|e| e.seq);
        let rules: Vec<super::Rule> = rules.into_iter().map(|e| e.rule).collect();
        let mut table = config::to_table(&kernel::policy_of(&cfg), &rules);
        // What it holds without growing (ids start at 1).
        let room = capacity::capacity(&maps)?.saturating_sub(1);
        table.insert(capacity::MAX_RULES.into(), i64::from(room).into());
        Ok(table)
    }

    fn outcomes(&self, dir: &PinDir) -> Vec<OutcomeCount> {
        outcomes(dir).unwrap_or_default()
    }

    fn model(&self, frame: &[u8], settings: &toml::Table) -> StageOutcome {
        let policy = config::policy_of(settings);
        let mut rules = super::Ruleset::new();
        for rule in config::rules_of(settings) {
            rules.add(rule);
        }
        let mut rate = super::model::RateState::default();
        match super::model::decide(&rules, &policy, frame, &mut rate, 0).verdict {
            Verdict::Pass => StageOutcome::same(Decision::Next, frame),
            Verdict::Drop => StageOutcome::verdict(xdpkit_common::XdpAction::Drop, frame),
        }
    }
}

/// Whether `dir` (an interface's pin directory) has a firewall stage.
pub fn attached(iface_dir: &PinDir) -> bool {
    attached_in(&iface_dir.stage(NAME))
}

/// Whether the firewall stage directory `dir` holds its maps.
fn attached_in(dir: &PinDir) -> bool {
    dir.file(&pin_name(FW_CONFIG)).exists()
}

/// Rule ids a new firewall with `settings` needs: its rules get ids 1 on.
fn fresh_ids(settings: &toml::Table) -> u64 {
    let rules = settings
        .get("rules")
        .and_then(toml::Value::as_array)
        .map_or(0, Vec::len) as u64;
    config::max_rules_of(settings).unwrap_or(0).max(rules) + 1
}

const OUTCOME_NAMES: [&str; Outcome::COUNT as usize] = [
    "rule",
    "rate_limited",
    "default",
    "non_ip",
    "fragment",
    "malformed",
    "no_socket",
];

/// The firewall's decisions by outcome, summed over CPUs.
fn outcomes(dir: &PinDir) -> Option<Vec<OutcomeCount>> {
    super::super::read_outcomes(dir, &pin_name(FW_OUTCOMES), &OUTCOME_NAMES)
}
