//! The data-plane programs. Each is a unit in its own module (kernel side:
//! `xdpkit-ebpf/src/<program>/`), behind [`Program`], and registered once
//! in [`REGISTRY`]: attach, the chain, status, top, the exporter, dump and
//! the reference models iterate over it.

pub mod balancer;
pub mod count;
pub mod decap;
pub mod drop;
pub mod firewall;
pub mod pass;
pub mod redirect;
pub mod route;
pub mod tx;
pub mod xsk;

use std::path::Path;

use aya::Ebpf;
use xdpkit_common::XdpAction;

use crate::{
    model::{Decision, Expected, StageOutcome},
    object::Object,
    pins::PinDir,
    settings::SettingsError,
    Error, Result,
};

/// Every program that can be a stage, in the order `--help` lists them.
pub static REGISTRY: &[&dyn Program] = &[
    &pass::Pass,
    &drop::Drop,
    &tx::Tx,
    &count::Count,
    &redirect::Redirect,
    &firewall::Firewall,
    &balancer::Balancer,
    &decap::Decap,
    &route::Route,
    &xsk::Xsk,
];

/// A data-plane program as a stage of an interface's chain.
pub trait Program: Sync {
    /// The name users type (`xdpkit attach firewall`), also the stage's
    /// directory name under the interface's pin directory.
    fn name(&self) -> &'static str;

    /// One line for `--help` and `status`.
    fn about(&self) -> &'static str;

    /// The program's ELF object.
    fn object(&self) -> Object;

    /// The function (and kernel program) name in the object; at most 15
    /// bytes, so the kernel's program name keeps all of it.
    fn symbol(&self) -> &'static str;

    /// The program's own maps, pinned in its stage directory so its state
    /// (rules, counters, targets) outlives a reload: (map, pin file).
    fn pinned_maps(&self) -> &'static [(&'static str, &'static str)] {
        &[]
    }

    /// Checks and completes the settings a configuration file gives the
    /// stage (`[interfaces.IF.<program>]`; `None`: no table), so that two
    /// configurations meaning the same compare equal. Programs without
    /// settings refuse a table.
    fn normalise_settings(
        &self,
        given: Option<&toml::Table>,
        base_dir: &Path,
    ) -> Result<toml::Table, SettingsError> {
        let _ = base_dir;
        match given {
            Some(_) => Err(SettingsError::new(
                "",
                format!("{} takes no settings: remove this table", self.name()),
            )),
            None => Ok(toml::Table::new()),
        }
    }

    /// Writes `settings` into a stage just loaded with its maps pinned in
    /// `stage.dir`, before it joins the chain. What would change a stage
    /// already running (its maps are shared with the new one) is not done
    /// here but returned as a [`Commit`], run right before the switch, so
    /// that a failure anywhere before it changes nothing.
    fn configure(
        &self,
        stage: &mut StageLoad<'_>,
        settings: &toml::Table,
    ) -> Result<Option<Commit>> {
        let _ = (stage, settings);
        Ok(None)
    }

    /// The settings of the stage running with its maps in `dir`, in the
    /// form [`Program::configure`] takes (what `xdpkit export` prints).
    fn running_settings(&self, dir: &PinDir) -> Result<toml::Table> {
        let _ = dir;
        Ok(toml::Table::new())
    }

    /// Entries of the maps this program sizes to its state rather than to
    /// their declared size (the firewall's per-rule maps), for a stage
    /// about to load with `settings` and its maps pinned in `dir`: maps
    /// created now get these sizes, and pinned ones may have any (they
    /// keep theirs; see [`Program::before_install`] for growing them).
    fn map_sizes(&self, dir: &PinDir, settings: &toml::Table) -> Result<Vec<(&'static str, u32)>> {
        let _ = (dir, settings);
        Ok(Vec::new())
    }

    /// Runs before a chain with this stage (given `settings`) is loaded on
    /// the interface whose pin directory is `iface_dir`, the writers' lock
    /// held: a running stage whose sized maps are too small for `settings`
    /// grows them here (the firewall: bigger maps with the same contents,
    /// switched in by reinstalling the running chain), so the chain then
    /// loads with them. It changes no decision.
    fn before_install(
        &self,
        iface: &str,
        iface_dir: &PinDir,
        settings: &toml::Table,
        lock: &crate::pins::IfaceLock,
    ) -> Result<()> {
        let _ = (iface, iface_dir, settings, lock);
        Ok(())
    }

    /// Settings keys that ask for at least a value: a running stage with a
    /// larger one meets them (the firewall's `max-rules`, grown on demand),
    /// and a configuration without them asks for nothing.
    fn minimum_settings(&self) -> &'static [&'static str] {
        &[]
    }

    /// For a list of strings among its settings (`key`), how many leading
    /// words name an element: a diff then shows an element whose name
    /// stays and whose other words change as changed (`~`), not as one
    /// removed and one added. `None`: the whole line is the element (the
    /// firewall's rules).
    fn list_names(&self, key: &str) -> Option<usize> {
        let _ = key;
        None
    }

    /// Kernel memory of the stage's own maps pinned in `dir`, by part
    /// (bytes_memlock); empty for programs that do not report it.
    fn memory(&self, dir: &PinDir) -> Vec<MemoryPart> {
        let _ = dir;
        Vec::new()
    }

    /// Whether the stage reads the driver's RX hash that the RX-hash root
    /// leaves in the frame's metadata area ([`crate::rx_hash`]): an
    /// interface whose chain has such a stage runs that root where the
    /// driver offers the hash.
    fn reads_rx_hash(&self) -> bool {
        false
    }

    /// Counters beyond the per-action ones (the firewall's decisions by
    /// outcome), read from the stage's pins; empty for most programs.
    fn outcomes(&self, dir: &PinDir) -> Vec<OutcomeCount> {
        let _ = dir;
        Vec::new()
    }

    /// What the program does with `frame` given its `settings` (the
    /// reference model that property tests compare the kernel program with).
    fn model(&self, frame: &[u8], settings: &toml::Table) -> StageOutcome;
}

/// Frames and bytes a stage decided one way (the firewall's outcomes).
#[derive(Clone, Debug, serde::Serialize)]
pub struct OutcomeCount {
    /// The outcome's name (the firewall's `rule`, `rate_limited`, ...).
    pub outcome: &'static str,
    /// Frames.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

/// The counts of a per-CPU array of [`xdpkit_common::ActionCounter`]
/// pinned at `pin` in `dir`, one entry per name of `names` in index order,
/// summed over CPUs (a stage's outcomes); `None` if it cannot be read.
pub fn read_outcomes(dir: &PinDir, pin: &str, names: &[&'static str]) -> Option<Vec<OutcomeCount>> {
    use aya::maps::{Map, MapData, PerCpuArray};
    let map = Map::PerCpuArray(MapData::from_pin(dir.file(pin)).ok()?);
    let array: PerCpuArray<&MapData, xdpkit_common::ActionCounter> =
        PerCpuArray::try_from(&map).ok()?;
    names
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

/// Kernel memory of a part of a stage's maps (the firewall: `set 0`,
/// `set 1`, `shared`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MemoryPart {
    /// Which maps.
    pub part: &'static str,
    /// Their number.
    pub maps: usize,
    /// The sum of their bytes_memlock.
    pub bytes: u64,
}

/// The part of a stage's configuration that takes effect at the switch.
pub type Commit = Box<dyn FnOnce() -> Result<()> + Send>;

/// A stage being loaded: its object with maps pinned in `dir`.
pub struct StageLoad<'a> {
    /// The interface.
    pub iface: &'a str,
    /// The stage's pin directory.
    pub dir: &'a PinDir,
    /// The loaded object.
    pub ebpf: &'a mut Ebpf,
    /// Whether the stage's maps were created now (not reused from pins).
    pub fresh: bool,
    /// The interface's writers' lock, held by the caller.
    pub lock: &'a crate::pins::IfaceLock,
}

/// The program named `name`.
pub fn by_name(name: &str) -> Result<&'static dyn Program> {
    REGISTRY
        .iter()
        .copied()
        .find(|p| p.name() == name)
        .ok_or_else(|| Error::UnknownProgram {
            name: name.to_string(),
            known: names().join(", "),
        })
}

/// The program whose kernel name is `symbol` (as `bpftool prog` shows it).
pub fn by_symbol(symbol: &str) -> Option<&'static dyn Program> {
    REGISTRY.iter().copied().find(|p| p.symbol() == symbol)
}

/// Every program's name.
pub fn names() -> Vec<&'static str> {
    REGISTRY.iter().map(|p| p.name()).collect()
}

/// Parses a comma-separated list of stages (`firewall,redirect`): known
/// programs, each at most once, at most [`MAX_STAGES`](xdpkit_common::chain::MAX_STAGES).
pub fn parse_stages(list: &str) -> Result<Vec<&'static dyn Program>> {
    let mut stages: Vec<&'static dyn Program> = Vec::new();
    for name in list.split(',').map(str::trim) {
        if name.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "'{list}' has an empty stage: list programs separated by commas, e.g. firewall,redirect"
            )));
        }
        let program = by_name(name)?;
        if stages.iter().any(|s| s.name() == name) {
            return Err(Error::InvalidArgument(format!(
                "'{name}' appears twice in '{list}': a program runs at most once per interface"
            )));
        }
        stages.push(program);
    }
    let max = xdpkit_common::chain::MAX_STAGES as usize;
    if stages.len() > max {
        return Err(Error::InvalidArgument(format!(
            "'{list}' has {} stages: at most {max}",
            stages.len()
        )));
    }
    Ok(stages)
}

/// What a chain of stages (each with its settings) does with `frame`: the
/// first verdict wins; "next" after the last stage passes. Also returns
/// the index of the stage that gave the verdict (`stages.len()` when every
/// stage said next).
pub fn chain_model(stages: &[(&dyn Program, &toml::Table)], frame: &[u8]) -> (Expected, usize) {
    let mut frame = frame.to_vec();
    for (i, (program, settings)) in stages.iter().enumerate() {
        let out = program.model(&frame, settings);
        frame = out.output;
        if let Decision::Verdict(verdict) = out.decision {
            return (
                Expected {
                    verdict,
                    output: frame,
                },
                i,
            );
        }
    }
    (
        Expected {
            verdict: XdpAction::Pass,
            output: frame,
        },
        stages.len(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use {count::Count, drop::Drop, pass::Pass, redirect::Redirect, tx::Tx};

    #[test]
    fn names_and_symbols_are_unique_and_fit_the_kernel() {
        for (i, p) in REGISTRY.iter().enumerate() {
            assert!(p.symbol().len() <= 15, "{} would be truncated", p.symbol());
            assert_eq!(by_name(p.name()).unwrap().name(), p.name());
            assert_eq!(by_symbol(p.symbol()).unwrap().name(), p.name());
            assert!(REGISTRY[..i].iter().all(|q| q.name() != p.name()));
        }
    }

    #[test]
    fn stage_lists_parse_and_refuse_repeats() {
        let names = |l: &str| {
            parse_stages(l)
                .map(|v| v.iter().map(|p| p.name()).collect::<Vec<_>>())
                .map_err(|e| e.to_string())
        };
        assert_eq!(
            names("firewall,redirect").unwrap(),
            ["firewall", "redirect"]
        );
        assert_eq!(names(" count , pass").unwrap(), ["count", "pass"]);
        assert!(names("firewall,firewall").unwrap_err().contains("twice"));
        assert!(names("firewall,,pass").unwrap_err().contains("empty stage"));
        assert_eq!(
            names("firewal").unwrap_err(),
            "unknown program 'firewal': choose one of pass, drop, tx, count, redirect, firewall, balancer, decap, route"
        );
    }

    #[test]
    fn tx_swaps_only_the_macs() {
        let none = toml::Table::new();
        let mut frame: Vec<u8> = (0u8..20).collect();
        let e = Tx.model(&frame, &none);
        assert_eq!(e.decision, Decision::Verdict(XdpAction::Tx));
        assert_eq!(&e.output[..12], &[6, 7, 8, 9, 10, 11, 0, 1, 2, 3, 4, 5]);
        assert_eq!(&e.output[12..], &frame[12..]);
        frame.truncate(13);
        assert_eq!(
            Tx.model(&frame, &none).decision,
            Decision::Verdict(XdpAction::Drop)
        );
    }

    #[test]
    fn redirect_falls_back_to_pass_without_target() {
        let none = toml::Table::new();
        let mut to = toml::Table::new();
        to.insert("to".into(), "veth1".into());
        assert_eq!(
            Redirect.model(&[0; 60], &none).decision,
            Decision::Verdict(XdpAction::Pass)
        );
        assert_eq!(
            Redirect.model(&[0; 60], &to).decision,
            Decision::Verdict(XdpAction::Redirect)
        );
    }

    #[test]
    fn a_chain_ends_at_the_first_verdict_and_next_after_the_last_passes() {
        let none = toml::Table::new();
        let frame = [0u8; 60];
        let (e, at) = chain_model(&[(&Count, &none), (&Drop, &none), (&Pass, &none)], &frame);
        assert_eq!((e.verdict, at), (XdpAction::Drop, 1));
        let (e, at) = chain_model(&[(&Count, &none)], &frame);
        assert_eq!((e.verdict, at), (XdpAction::Pass, 1));
    }
}
