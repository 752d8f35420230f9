//! What changes between the configuration in the file (desired) and the
//! one running: per interface added, removed or changed, and for a changed
//! one its mode, its stages and each kept stage's settings.
//!
//! Arrays of strings (the firewall's `rules`) are compared as sets: what
//! `apply` must add and delete, not a line diff, so that a million-rule
//! set compares in linear time.

use std::{collections::BTreeSet, fmt::Write as _};

use serde::Serialize;
use toml::{Table, Value};

use super::{HostConfig, IfaceConfig};

/// Lines shown per key and direction before [`HostDiff::render`] summarises.
pub const RENDER_LIMIT: usize = 20;

/// Everything that differs, interfaces sorted by name.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct HostDiff {
    /// Interfaces that differ.
    pub interfaces: Vec<IfaceDiff>,
    /// Elements added to array settings (rules) across all interfaces.
    pub rules_added: usize,
    /// Elements removed from array settings (rules) across all interfaces.
    pub rules_removed: usize,
}

/// One interface that differs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct IfaceDiff {
    /// Interface name.
    pub name: String,
    /// How it differs.
    #[serde(flatten)]
    pub change: IfaceChange,
}

/// How an interface differs.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum IfaceChange {
    /// In the file, not running.
    Added {
        /// Attach mode.
        mode: String,
        /// Programs in order.
        stages: Vec<String>,
    },
    /// Running, no longer in the file.
    Removed {
        /// The running programs in order.
        stages: Vec<String>,
    },
    /// In both, different.
    Changed(IfaceChanges),
}

/// A value before (running) and after (desired).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Change<T> {
    /// Running.
    pub from: T,
    /// Desired.
    pub to: T,
}

/// A stage the file adds to an interface.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StageAdded {
    /// Program name.
    pub program: String,
    /// 1-based position in the desired chain.
    pub position: usize,
    /// Its normalised settings.
    pub settings: Table,
}

/// A stage in both whose position in the chain changes.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StageMove {
    /// Program name.
    pub program: String,
    /// 1-based position running.
    pub from: usize,
    /// 1-based position desired.
    pub to: usize,
}

/// The changes of an interface in both configurations.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct IfaceChanges {
    /// Attach mode change.
    pub mode: Option<Change<String>>,
    /// The program list, when it differs in content or order.
    pub stages: Option<Change<Vec<String>>>,
    /// Stages only in the file, in desired order.
    pub stages_added: Vec<StageAdded>,
    /// Stages only running, in running order.
    pub stages_removed: Vec<String>,
    /// Stages in both at another position, in desired order. Positions are
    /// reported even when only a neighbour was added or removed, because the
    /// chain is indexed by position.
    pub stages_moved: Vec<StageMove>,
    /// Settings changes of stages in both, in desired order.
    pub settings: Vec<SettingsDiff>,
}

/// Settings changes of one stage kept in both configurations.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SettingsDiff {
    /// Program name.
    pub program: String,
    /// Changed keys, sorted.
    pub keys: Vec<KeyDiff>,
    /// Elements added to this stage's array settings (rules).
    pub rules_added: usize,
    /// Elements removed from this stage's array settings (rules).
    pub rules_removed: usize,
}

/// One changed settings key.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KeyDiff {
    /// The key, e.g. `default` or `rules`.
    pub key: String,
    /// How it changed.
    #[serde(flatten)]
    pub change: KeyChange,
}

/// How a settings key changed.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum KeyChange {
    /// A value replaced; `None` is absent. Strings are shown bare, other
    /// values as TOML.
    Value {
        /// Running.
        from: Option<String>,
        /// Desired.
        to: Option<String>,
    },
    /// An array of strings compared as a set.
    Set {
        /// Only in the file, in its order.
        added: Vec<String>,
        /// Only running, in running order.
        removed: Vec<String>,
        /// Same elements in another order (or other repeats): order decides
        /// between rules of equal priority, so it is a change too.
        reordered: bool,
        /// Elements changed in place: in both under the same name (their
        /// first words, for lists whose program names them so: the
        /// balancer's VIPs and reals), other words differing. Not in
        /// `added` or `removed`.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        changed: Vec<ElementChange>,
    },
}

/// An element of a list changed in place (see [`KeyChange::Set`]).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ElementChange {
    /// What names it (a VIP; a VIP and a real).
    pub name: String,
    /// The running line.
    pub from: String,
    /// The desired line.
    pub to: String,
}

impl HostDiff {
    /// True if the configurations are the same.
    pub fn is_empty(&self) -> bool {
        self.interfaces.is_empty()
    }

    /// A readable account of the changes, `no changes` if there are none;
    /// more than [`RENDER_LIMIT`] elements added to or removed from one key
    /// are summarised (`+ 999,980 more rules`).
    pub fn render(&self) -> String {
        if self.is_empty() {
            return "no changes\n".to_string();
        }
        let mut out = String::new();
        // Writing to a String cannot fail; the results are ignored.
        for iface in &self.interfaces {
            let name = &iface.name;
            match &iface.change {
                IfaceChange::Added { mode, stages } => {
                    let _ = writeln!(out, "{name}: new ({mode}, stages: {})", stages.join(", "));
                }
                IfaceChange::Removed { stages } => {
                    let _ = writeln!(
                        out,
                        "{name}: not in the file (running: {})",
                        stages.join(", ")
                    );
                }
                IfaceChange::Changed(changes) => {
                    let _ = writeln!(out, "{name}: changed");
                    render_changes(&mut out, changes);
                }
            }
        }
        out
    }
}

fn render_changes(out: &mut String, changes: &IfaceChanges) {
    if let Some(mode) = &changes.mode {
        let _ = writeln!(out, "  mode: {} -> {}", mode.from, mode.to);
    }
    if let Some(stages) = &changes.stages {
        let _ = writeln!(
            out,
            "  stages: {} -> {}",
            stages.from.join(", "),
            stages.to.join(", ")
        );
    }
    for added in &changes.stages_added {
        let _ = writeln!(
            out,
            "    + stage {}{}",
            added.program,
            summary(&added.settings)
        );
    }
    for removed in &changes.stages_removed {
        let _ = writeln!(out, "    - stage {removed}");
    }
    for moved in &changes.stages_moved {
        let _ = writeln!(
            out,
            "    ~ stage {}: {} -> {}",
            moved.program, moved.from, moved.to
        );
    }
    for stage in &changes.settings {
        let _ = writeln!(out, "  {}:", stage.program);
        for key in &stage.keys {
            render_key(out, key);
        }
    }
}

fn render_key(out: &mut String, key: &KeyDiff) {
    let name = &key.key;
    match &key.change {
        KeyChange::Value { from, to } => {
            let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(unset)".to_string());
            let _ = writeln!(out, "    {name}: {} -> {}", show(from), show(to));
        }
        KeyChange::Set {
            added,
            removed,
            reordered,
            changed,
        } => {
            // `rules` lists one `rule` a line.
            let item = name.strip_suffix('s').unwrap_or(name);
            for c in changed.iter().take(RENDER_LIMIT) {
                // The name once: `~ real: VIP REAL: weight 1 -> weight 0`.
                let rest = |line: &str| line.get(c.name.len()..).unwrap_or("").trim().to_string();
                let _ = writeln!(
                    out,
                    "    ~ {item}: {}: {} -> {}",
                    c.name,
                    rest(&c.from),
                    rest(&c.to)
                );
            }
            if changed.len() > RENDER_LIMIT {
                let _ = writeln!(
                    out,
                    "    ~ {} more {name}",
                    thousands(changed.len() - RENDER_LIMIT)
                );
            }
            for (sign, items) in [('+', added), ('-', removed)] {
                for element in items.iter().take(RENDER_LIMIT) {
                    let _ = writeln!(out, "    {sign} {item}: {element}");
                }
                if items.len() > RENDER_LIMIT {
                    let _ = writeln!(
                        out,
                        "    {sign} {} more {name}",
                        thousands(items.len() - RENDER_LIMIT)
                    );
                }
            }
            if *reordered {
                let _ = writeln!(out, "    {name}: same elements, new order");
            }
        }
    }
}

/// ` (to = "eth1")`: a new stage's settings on one line, arrays as counts.
fn summary(settings: &Table) -> String {
    if settings.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = settings
        .iter()
        .map(|(key, value)| match value {
            Value::Array(items) => format!("{key}: {}", thousands(items.len())),
            other => format!("{key} = {other}"),
        })
        .collect();
    format!(" ({})", parts.join(", "))
}

/// `999980` as `999,980`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// What `apply` must do to turn `running` into `desired`.
pub fn diff(desired: &HostConfig, running: &HostConfig) -> HostDiff {
    let names: BTreeSet<&String> = desired
        .interfaces
        .keys()
        .chain(running.interfaces.keys())
        .collect();
    let mut out = HostDiff::default();
    for name in names {
        let change = match (desired.interfaces.get(name), running.interfaces.get(name)) {
            (Some(want), None) => IfaceChange::Added {
                mode: want.mode.clone(),
                stages: programs(want),
            },
            (None, Some(have)) => IfaceChange::Removed {
                stages: programs(have),
            },
            (Some(want), Some(have)) => {
                let changes = diff_iface(want, have);
                if changes == IfaceChanges::default() {
                    continue;
                }
                for stage in &changes.settings {
                    out.rules_added += stage.rules_added;
                    out.rules_removed += stage.rules_removed;
                }
                IfaceChange::Changed(changes)
            }
            (None, None) => continue,
        };
        out.interfaces.push(IfaceDiff {
            name: name.clone(),
            change,
        });
    }
    out
}

fn programs(iface: &IfaceConfig) -> Vec<String> {
    iface.stages.iter().map(|s| s.program.clone()).collect()
}

fn diff_iface(want: &IfaceConfig, have: &IfaceConfig) -> IfaceChanges {
    let mut out = IfaceChanges::default();
    if want.mode != have.mode {
        out.mode = Some(Change {
            from: have.mode.clone(),
            to: want.mode.clone(),
        });
    }
    let (want_names, have_names) = (programs(want), programs(have));
    if want_names != have_names {
        out.stages = Some(Change {
            from: have_names.clone(),
            to: want_names.clone(),
        });
    }
    // Chains are a handful of stages: linear searches are fine here.
    let position = |names: &[String], program: &str| names.iter().position(|n| n == program);
    for (i, stage) in want.stages.iter().enumerate() {
        match have.stages.iter().position(|s| s.program == stage.program) {
            None => out.stages_added.push(StageAdded {
                program: stage.program.clone(),
                position: i + 1,
                settings: stage.settings.clone(),
            }),
            Some(j) => {
                if i != j {
                    out.stages_moved.push(StageMove {
                        program: stage.program.clone(),
                        from: j + 1,
                        to: i + 1,
                    });
                }
                if let Some(settings) =
                    diff_settings(&stage.program, &stage.settings, &have.stages[j].settings)
                {
                    out.settings.push(settings);
                }
            }
        }
    }
    out.stages_removed = have_names
        .iter()
        .filter(|name| position(&want_names, name).is_none())
        .cloned()
        .collect();
    out
}

fn diff_settings(program: &str, want: &Table, have: &Table) -> Option<SettingsDiff> {
    let keys: BTreeSet<&String> = want.keys().chain(have.keys()).collect();
    let mut out = SettingsDiff {
        program: program.to_string(),
        keys: Vec::new(),
        rules_added: 0,
        rules_removed: 0,
    };
    let minimums = crate::programs::by_name(program)
        .map(|p| p.minimum_settings())
        .unwrap_or_default();
    for key in keys {
        let (to, from) = (want.get(key), have.get(key));
        if to == from {
            continue;
        }
        if minimums.contains(&key.as_str()) {
            // Asks for at least a value: unset asks nothing, and more is fine.
            let met = match (
                to.and_then(Value::as_integer),
                from.and_then(Value::as_integer),
            ) {
                (None, _) => true,
                (Some(to), Some(from)) => to <= from,
                (Some(_), None) => false,
            };
            if met {
                continue;
            }
        }
        let change = match (string_list(to), string_list(from)) {
            (Some(to), Some(from)) => {
                let named_by = crate::programs::by_name(program)
                    .ok()
                    .and_then(|p| p.list_names(key));
                let change = set_diff(&to, &from, named_by);
                // Other lists (the balancer's VIPs and reals) are not rules.
                if let (KeyChange::Set { added, removed, .. }, "rules") = (&change, key.as_str()) {
                    out.rules_added += added.len();
                    out.rules_removed += removed.len();
                }
                change
            }
            _ => KeyChange::Value {
                from: from.map(show),
                to: to.map(show),
            },
        };
        out.keys.push(KeyDiff {
            key: key.clone(),
            change,
        });
    }
    (!out.keys.is_empty()).then_some(out)
}

/// The strings of an array of strings; an absent key is an empty array, so
/// that adding the first rule is a set change, not a value change.
fn string_list(value: Option<&Value>) -> Option<Vec<&str>> {
    match value {
        None => Some(Vec::new()),
        Some(Value::Array(items)) => items.iter().map(Value::as_str).collect(),
        Some(_) => None,
    }
}

/// Set difference in linear time (hash sets; a million rules a side is
/// common for blocklists). With `named_by`, an element added and one
/// removed whose first `named_by` words agree are one element changed.
fn set_diff(to: &[&str], from: &[&str], named_by: Option<usize>) -> KeyChange {
    let to_set: foldhash::HashSet<&str> = to.iter().copied().collect();
    let from_set: foldhash::HashSet<&str> = from.iter().copied().collect();
    let mut seen = foldhash::HashSet::default();
    let added: Vec<String> = to
        .iter()
        .filter(|s| !from_set.contains(*s) && seen.insert(**s))
        .map(|s| s.to_string())
        .collect();
    let removed: Vec<String> = from
        .iter()
        .filter(|s| !to_set.contains(*s) && seen.insert(**s))
        .map(|s| s.to_string())
        .collect();
    let reordered = added.is_empty() && removed.is_empty() && to != from;
    let (added, removed, changed) = match named_by {
        Some(words) => pair_by_name(added, removed, words),
        None => (added, removed, Vec::new()),
    };
    KeyChange::Set {
        added,
        removed,
        reordered,
        changed,
    }
}

/// Moves the elements of `added` and `removed` that share their first
/// `words` words into changes.
fn pair_by_name(
    added: Vec<String>,
    removed: Vec<String>,
    words: usize,
) -> (Vec<String>, Vec<String>, Vec<ElementChange>) {
    let name = |s: &str| s.split(' ').take(words).collect::<Vec<_>>().join(" ");
    let mut gone: foldhash::HashMap<String, String> =
        removed.iter().map(|r| (name(r), r.clone())).collect();
    let mut changed = Vec::new();
    let mut still_added = Vec::new();
    for a in added {
        let named = name(&a);
        match gone.remove(&named) {
            Some(from) => changed.push(ElementChange {
                name: named,
                from,
                to: a,
            }),
            None => still_added.push(a),
        }
    }
    let paired: foldhash::HashSet<&str> = changed.iter().map(|c| c.from.as_str()).collect();
    let removed = removed
        .iter()
        .filter(|r| !paired.contains(r.as_str()))
        .cloned()
        .collect();
    (still_added, removed, changed)
}

fn show(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::StageConfig;

    fn config(text: &str) -> HostConfig {
        HostConfig::parse("test.toml", text, Path::new(".")).unwrap_or_else(|e| panic!("{e}"))
    }

    const RUNNING: &str = r#"
[interfaces.eth0]
stages = ["firewall", "pass"]
[interfaces.eth0.firewall]
rules = ["allow src 198.18.9.0/24", "deny src 198.18.0.0/15 prio 200"]

[interfaces.eth2]
stages = ["firewall"]
"#;

    const DESIRED: &str = r#"
[interfaces.eth0]
mode = "native"
stages = ["firewall", "redirect"]
[interfaces.eth0.firewall]
default = "drop"
rules = ["deny src 198.18.0.0/15 prio 200", "deny src 198.19.0.0/16"]
[interfaces.eth0.redirect]
to = "eth1"

[interfaces.eth1]
mode = "skb"
stages = ["drop"]
"#;

    #[test]
    fn identical_configs_have_no_changes() {
        let d = diff(&config(DESIRED), &config(DESIRED));
        assert!(d.is_empty());
        assert_eq!(d.render(), "no changes\n");
        assert!(diff(&HostConfig::default(), &HostConfig::default()).is_empty());
    }

    #[test]
    fn renders_every_kind_of_change() {
        let d = diff(&config(DESIRED), &config(RUNNING));
        assert_eq!((d.rules_added, d.rules_removed), (1, 1));
        assert_eq!(
            d.render(),
            "eth0: changed
  mode: auto -> native
  stages: firewall, pass -> firewall, redirect
    + stage redirect (to = \"eth1\")
    - stage pass
  firewall:
    default: pass -> drop
    + rule: deny src 198.19.0.0/16 prio 100
    - rule: allow src 198.18.9.0/24 prio 100
eth1: new (skb, stages: drop)
eth2: not in the file (running: firewall)
"
        );
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["interfaces"][0]["change"], "changed");
        assert_eq!(json["interfaces"][0]["mode"]["to"], "native");
        assert_eq!(json["interfaces"][1]["change"], "added");
        assert_eq!(json["interfaces"][2]["change"], "removed");
    }

    fn changes(desired: &str, running: &str) -> IfaceChanges {
        let d = diff(&config(desired), &config(running));
        match d.interfaces.as_slice() {
            [IfaceDiff {
                change: IfaceChange::Changed(c),
                ..
            }] => c.clone(),
            other => panic!("expected one changed interface, got {other:?}"),
        }
    }

    #[test]
    fn mode_change() {
        let c = changes(
            "[interfaces.eth0]\nmode = \"skb\"\nstages = [\"pass\"]",
            "[interfaces.eth0]\nstages = [\"pass\"]",
        );
        assert_eq!(
            c.mode,
            Some(Change {
                from: "auto".to_string(),
                to: "skb".to_string()
            })
        );
        assert_eq!(c.stages, None);
    }

    #[test]
    fn stages_added_removed_and_moved() {
        let c = changes(
            "[interfaces.eth0]\nstages = [\"count\", \"tx\", \"firewall\"]",
            "[interfaces.eth0]\nstages = [\"firewall\", \"count\", \"drop\"]",
        );
        assert_eq!(c.stages_added.len(), 1);
        assert_eq!(
            (
                c.stages_added[0].program.as_str(),
                c.stages_added[0].position
            ),
            ("tx", 2)
        );
        assert_eq!(c.stages_removed, ["drop"]);
        let moves: Vec<(&str, usize, usize)> = c
            .stages_moved
            .iter()
            .map(|m| (m.program.as_str(), m.from, m.to))
            .collect();
        assert_eq!(moves, [("count", 2, 1), ("firewall", 1, 3)]);
        let d = diff(
            &config("[interfaces.eth0]\nstages = [\"redirect\", \"count\"]\n[interfaces.eth0.redirect]\nto = \"eth1\""),
            &config("[interfaces.eth0]\nstages = [\"count\", \"redirect\"]\n[interfaces.eth0.redirect]\nto = \"eth1\""),
        );
        assert_eq!(
            d.render(),
            "eth0: changed\n  stages: count, redirect -> redirect, count\n    ~ stage redirect: 2 -> 1\n    ~ stage count: 1 -> 2\n"
        );
    }

    #[test]
    fn rules_added_and_removed_and_reordered() {
        let fw = |rules: &str| {
            format!("[interfaces.eth0]\nstages = [\"firewall\"]\n[interfaces.eth0.firewall]\nrules = [{rules}]")
        };
        let c = changes(&fw("\"deny\", \"allow src 10.0.0.0/8\""), &fw("\"deny\""));
        let KeyChange::Set {
            added,
            removed,
            reordered,
            ..
        } = &c.settings[0].keys[0].change
        else {
            panic!("{c:?}")
        };
        assert_eq!(
            (added.as_slice(), removed.len(), *reordered),
            (
                ["allow src 10.0.0.0/8 prio 100".to_string()].as_slice(),
                0,
                false
            )
        );
        assert_eq!(
            (c.settings[0].rules_added, c.settings[0].rules_removed),
            (1, 0)
        );

        let c = changes(&fw("\"deny\""), &fw("\"deny\", \"allow\""));
        assert_eq!(c.settings[0].rules_removed, 1);

        let d = diff(
            &config(&fw("\"allow\", \"deny\"")),
            &config(&fw("\"deny\", \"allow\"")),
        );
        assert_eq!(
            d.render(),
            "eth0: changed\n  firewall:\n    rules: same elements, new order\n"
        );
    }

    #[test]
    fn policy_change() {
        let c = changes(
            "[interfaces.eth0]\nstages = [\"firewall\"]\n[interfaces.eth0.firewall]\nfragments = \"l3\"\nmalformed = \"pass\"",
            "[interfaces.eth0]\nstages = [\"firewall\"]",
        );
        let keys: Vec<(&str, &KeyChange)> = c.settings[0]
            .keys
            .iter()
            .map(|k| (k.key.as_str(), &k.change))
            .collect();
        let value = |from: &str, to: &str| KeyChange::Value {
            from: Some(from.to_string()),
            to: Some(to.to_string()),
        };
        assert_eq!(
            keys,
            [
                ("fragments", &value("allow", "l3")),
                ("malformed", &value("drop", "pass"))
            ]
        );
    }

    #[test]
    fn max_rules_asks_for_at_least_that_many() {
        let fw = |settings: &str| {
            config(&format!(
                "[interfaces.eth0]\nstages = [\"firewall\"]\n[interfaces.eth0.firewall]\n{settings}"
            ))
        };
        // A firewall grown to 4095 rules meets 1000 and an unset max-rules.
        let running = fw("max-rules = 4095");
        assert!(diff(&fw("max-rules = 1000"), &running).is_empty());
        assert!(diff(&fw(""), &running).is_empty());
        assert!(diff(&fw("max-rules = 4095"), &running).is_empty());
        let c = changes(
            "[interfaces.eth0]\nstages = [\"firewall\"]\n[interfaces.eth0.firewall]\nmax-rules = 5000",
            "[interfaces.eth0]\nstages = [\"firewall\"]\n[interfaces.eth0.firewall]\nmax-rules = 4095",
        );
        assert_eq!(c.settings[0].keys[0].key, "max-rules");
    }

    #[test]
    fn balancer_vips_and_reals_show_line_by_line() {
        let lb = |reals: &str| {
            config(&format!(
                "[interfaces.eth0]\nstages = [\"balancer\"]\n[interfaces.eth0.balancer]\nsource4 = \"198.19.0.0/16\"\nvips = [\"198.18.1.10:80/tcp ring 1009\"]\nreals = [{reals}]"
            ))
        };
        let running = lb("\"198.18.1.10:80/tcp 198.18.2.1\", \"198.18.1.10:80/tcp 198.18.2.2\"");
        // The file's order of lines means nothing.
        assert!(diff(
            &lb("\"198.18.1.10:80/tcp 198.18.2.2\", \"198.18.1.10:80/tcp 198.18.2.1 weight 1\""),
            &running
        )
        .is_empty());
        let d = diff(
            &lb("\"198.18.1.10:80/tcp 198.18.2.1\", \"198.18.1.10:80/tcp 198.18.2.2 weight 0\""),
            &running,
        );
        assert_eq!(
            d.render(),
            "eth0: changed\n  balancer:\n    ~ real: 198.18.1.10:80/tcp 198.18.2.2: weight 1 -> weight 0\n"
        );
        assert_eq!(
            (d.rules_added, d.rules_removed),
            (0, 0),
            "reals are not rules"
        );
        let d = diff(&config("[interfaces.eth0]\nstages = [\"balancer\"]\n[interfaces.eth0.balancer]\nsource4 = \"198.19.0.0/16\"\nvips = [\"198.18.1.10:80/tcp ring 1009 no-flows\", \"198.18.1.11:80/tcp ring 7\"]"), &running);
        assert_eq!(
            d.render(),
            "eth0: changed\n  balancer:\n    - real: 198.18.1.10:80/tcp 198.18.2.1 weight 1\n    - real: 198.18.1.10:80/tcp 198.18.2.2 weight 1\n    ~ vip: 198.18.1.10:80/tcp: ring 1009 -> ring 1009 no-flows\n    + vip: 198.18.1.11:80/tcp ring 7\n"
        );
    }

    #[test]
    fn interfaces_added_and_removed() {
        let one = config("[interfaces.eth0]\nstages = [\"pass\"]");
        let d = diff(&one, &HostConfig::default());
        assert_eq!(
            d.interfaces[0].change,
            IfaceChange::Added {
                mode: "auto".to_string(),
                stages: vec!["pass".to_string()]
            }
        );
        let d = diff(&HostConfig::default(), &one);
        assert_eq!(d.render(), "eth0: not in the file (running: pass)\n");
    }

    #[test]
    fn big_rule_sets_diff_fast_and_render_summarised() {
        let n = 1_000_000;
        let rule = |i: usize| {
            format!(
                "deny src 10.{}.{}.{}/32 prio 100",
                i >> 16,
                (i >> 8) & 255,
                i & 255
            )
        };
        let table = |range: std::ops::Range<usize>| {
            let mut t = Table::new();
            t.insert(
                "rules".to_string(),
                Value::Array(range.map(|i| Value::String(rule(i))).collect()),
            );
            t
        };
        let host = |range| HostConfig {
            interfaces: [(
                "eth0".to_string(),
                IfaceConfig {
                    mode: "auto".to_string(),
                    stages: vec![StageConfig {
                        program: "firewall".to_string(),
                        settings: table(range),
                    }],
                },
            )]
            .into(),
        };
        let (desired, running) = (host(25..n + 25), host(0..n));
        let started = std::time::Instant::now();
        let d = diff(&desired, &running);
        let took = started.elapsed();
        assert_eq!((d.rules_added, d.rules_removed), (25, 25));
        // Generous for debug builds on shared cores; release is well under a second.
        assert!(took.as_secs() < 20, "diff of 1M rules took {took:?}");
        let text = d.render();
        assert!(
            text.contains("    + 5 more rules\n    - rule: deny src 10.0.0.0/32 prio 100\n"),
            "{text}"
        );
        assert_eq!(text.lines().count(), 1 + 1 + 2 * (RENDER_LIMIT + 1));
        assert_eq!(thousands(999_980), "999,980");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(999), "999");
    }
}
