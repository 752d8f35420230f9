//! The firewall as a stage of the chain: its maps, settings and model.

use xdpkit_common::firewall::{Outcome, FW_CONFIG, FW_MAPS, FW_OUTCOMES};

use std::path::Path;

use super::{
    config, kernel,
    live::{LiveFirewall, PreparedSync},
    maps::pin_name,
    Policy, Verdict,
};
use crate::{
    model::{Decision, StageOutcome},
    object::{embedded, Object},
    pins::PinDir,
    programs::{Commit, OutcomeCount, Program, StageLoad},
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
        let prepared = match &rules {
            Some(rules) => live.prepare_sync(rules)?,
            None => PreparedSync::nothing(),
        };
        Ok(Some(Box::new(move || {
            live.commit_sync(prepared, policy).map(drop)
        })))
    }

    fn running_settings(&self, dir: &PinDir) -> Result<toml::Table> {
        let maps = super::maps::open_pinned(dir)?;
        let cfg = kernel::read_config(&maps)?;
        let mut rules = super::live::read_rules(&maps)?.into_entries();
        // In the order they were given: that order ranks rules of equal prio.
        rules.sort_by_key(|e| e.seq);
        let rules: Vec<super::Rule> = rules.into_iter().map(|e| e.rule).collect();
        Ok(config::to_table(&kernel::policy_of(&cfg), &rules))
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
    iface_dir.stage(NAME).file(&pin_name(FW_CONFIG)).exists()
}

const OUTCOME_NAMES: [&str; Outcome::COUNT as usize] = [
    "rule",
    "rate_limited",
    "default",
    "non_ip",
    "fragment",
    "malformed",
];

/// The firewall's decisions by outcome, summed over CPUs.
fn outcomes(dir: &PinDir) -> Option<Vec<OutcomeCount>> {
    use aya::maps::{Map, MapData, PerCpuArray};
    let path = dir.file(&pin_name(FW_OUTCOMES));
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
