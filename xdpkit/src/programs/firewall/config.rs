//! The firewall stage's settings in a host configuration file:
//!
//! ```toml
//! [interfaces.eth0.firewall]
//! default = "drop"        # pass (default) | drop
//! fragments = "allow"     # allow (default) | deny | l3
//! non-ip = "pass"         # pass (default) | drop
//! malformed = "drop"      # drop (default) | pass
//! rules = ["allow src 198.18.41.0/24 prio 10"]
//! rules-file = "blocklist.rules"   # relative to the config file; appended after `rules`
//! max-rules = 100000      # rule ids to make room for at once (grown on demand anyway)
//! ```
//!
//! Normalised, the table has all four policies and `rules` (canonical rule
//! strings, inline rules then the file's), and no `rules-file`: the running
//! state, which knows no file, exports the same table.

use std::path::Path;

use toml::{Table, Value};

use xdpkit_common::firewall::FW_MAX_RULE_IDS;

use super::{capacity::MAX_RULES, FragmentPolicy, Policy, Rule, Ruleset, Verdict};
use crate::settings::{check_keys, choice_of, SettingsError};

const KEYS: &[&str] = &[
    "default",
    "fragments",
    "non-ip",
    "malformed",
    "rules",
    "rules-file",
    "max-rules",
];

const VERDICTS: &[&str] = &["pass", "drop"];
// `malformed` defaults to drop, so its choices start there.
const MALFORMED: &[&str] = &["drop", "pass"];
const FRAGMENTS: &[&str] = &["allow", "deny", "l3"];

/// Checks the firewall's settings and returns them normalised: every policy
/// present (defaults from [`Policy::default`]) and `rules` holding the
/// canonical form of the inline rules followed by the rules of `rules-file`
/// (read relative to `base_dir`) in file order.
pub fn normalise(given: &Table, base_dir: &Path) -> Result<Table, SettingsError> {
    check_keys(given, KEYS)?;
    let mut out = Table::new();
    for (key, choices) in [
        ("default", VERDICTS),
        ("fragments", FRAGMENTS),
        ("non-ip", VERDICTS),
        ("malformed", MALFORMED),
    ] {
        let value = choice_of(given, key, choices)?;
        out.insert(key.to_string(), Value::String(value.to_string()));
    }
    let mut rules = Vec::new();
    match given.get("rules") {
        None => {}
        Some(Value::Array(items)) => {
            rules.reserve(items.len());
            for (i, item) in items.iter().enumerate() {
                let key = format!("rules[{i}]");
                let Value::String(text) = item else {
                    return Err(SettingsError::new(
                        key,
                        format!("expected a rule string, found {}", item.type_str()),
                    ));
                };
                let rule = text
                    .parse::<Rule>()
                    .map_err(|e| SettingsError::new(key, e.to_string()))?;
                rules.push(Value::String(rule.to_string()));
            }
        }
        Some(other) => {
            return Err(SettingsError::new(
                "rules",
                format!(
                    "expected an array of rule strings, found {}",
                    other.type_str()
                ),
            ))
        }
    }
    if let Some(file) = crate::settings::string_of(given, "rules-file")? {
        let path = base_dir.join(file);
        let set = Ruleset::read_file(&path).map_err(|e| {
            // Line 0 means the file could not be read at all: no line to name.
            let message = if e.line == 0 {
                format!("{}: {}", e.file, e.source)
            } else {
                e.to_string()
            };
            SettingsError::new("rules-file", message)
        })?;
        // A Ruleset keeps judging order; the file's own order is its
        // sequence numbers, and that is what the configuration shows.
        let mut entries = set.into_entries();
        entries.sort_by_key(|e| e.seq);
        rules.extend(
            entries
                .into_iter()
                .map(|e| Value::String(e.rule.to_string())),
        );
    }
    out.insert("rules".to_string(), Value::Array(rules));
    if let Some(value) = given.get(MAX_RULES) {
        let largest = i64::from(FW_MAX_RULE_IDS) - 1;
        match value.as_integer() {
            Some(n) if (1..=largest).contains(&n) => {
                out.insert(MAX_RULES.to_string(), Value::Integer(n));
            }
            _ => {
                return Err(SettingsError::new(
                    MAX_RULES,
                    format!("expected a number of rules from 1 to {largest}, found {value}"),
                ))
            }
        }
    }
    Ok(out)
}

/// The `max-rules` of a table, if it sets one.
pub fn max_rules_of(table: &Table) -> Option<u64> {
    table
        .get(MAX_RULES)
        .and_then(Value::as_integer)
        .and_then(|n| u64::try_from(n).ok())
}

/// The policies of a normalised table; absent or unknown values (which
/// [`normalise`] never produces) fall back to [`Policy::default`].
pub fn policy_of(table: &Table) -> Policy {
    let get = |key: &str| table.get(key).and_then(Value::as_str);
    let verdict = |key: &str, default: Verdict| match get(key) {
        Some("pass") => Verdict::Pass,
        Some("drop") => Verdict::Drop,
        _ => default,
    };
    let defaults = Policy::default();
    Policy {
        default: verdict("default", defaults.default),
        fragments: match get("fragments") {
            Some("allow") => FragmentPolicy::Allow,
            Some("deny") => FragmentPolicy::Deny,
            Some("l3") => FragmentPolicy::L3,
            _ => defaults.fragments,
        },
        non_ip: verdict("non-ip", defaults.non_ip),
        malformed: verdict("malformed", defaults.malformed),
    }
}

/// The rules of a normalised table, in order; entries that do not parse
/// (which [`normalise`] never produces) are skipped.
pub fn rules_of(table: &Table) -> Vec<Rule> {
    table
        .get("rules")
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|v| v.as_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The normalised table of a running firewall, for export and diff.
pub fn to_table(policy: &Policy, rules: &[Rule]) -> Table {
    let verdict = |v: Verdict| match v {
        Verdict::Pass => "pass",
        Verdict::Drop => "drop",
    };
    let fragments = match policy.fragments {
        FragmentPolicy::Allow => "allow",
        FragmentPolicy::Deny => "deny",
        FragmentPolicy::L3 => "l3",
    };
    let mut out = Table::new();
    for (key, value) in [
        ("default", verdict(policy.default)),
        ("fragments", fragments),
        ("non-ip", verdict(policy.non_ip)),
        ("malformed", verdict(policy.malformed)),
    ] {
        out.insert(key.to_string(), Value::String(value.to_string()));
    }
    out.insert(
        "rules".to_string(),
        Value::Array(rules.iter().map(|r| Value::String(r.to_string())).collect()),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> Table {
        text.parse().expect("test TOML")
    }

    #[test]
    fn max_rules_is_a_positive_count() {
        let out = normalise(&table("max-rules = 100000"), Path::new(".")).unwrap();
        assert_eq!(max_rules_of(&out), Some(100_000));
        assert_eq!(
            max_rules_of(&normalise(&table(""), Path::new(".")).unwrap()),
            None
        );
        for bad in [
            "max-rules = 0",
            "max-rules = \"many\"",
            "max-rules = 4194304",
        ] {
            let e = normalise(&table(bad), Path::new(".")).unwrap_err();
            assert!(e.to_string().contains("max-rules"), "{bad}: {e}");
        }
    }

    #[test]
    fn fills_defaults_and_prints_rules_canonically() {
        let out = normalise(
            &table("default = \"drop\"\nrules = [\"deny src 198.19.0.0/16\"]"),
            Path::new("."),
        )
        .unwrap();
        assert_eq!(
            out,
            table(
                "default = \"drop\"\nfragments = \"allow\"\nnon-ip = \"pass\"\nmalformed = \"drop\"\nrules = [\"deny src 198.19.0.0/16 prio 100\"]"
            )
        );
        assert_eq!(
            policy_of(&out),
            Policy {
                default: Verdict::Drop,
                ..Policy::default()
            }
        );
        assert_eq!(to_table(&policy_of(&out), &rules_of(&out)), out);
    }

    #[test]
    fn empty_settings_are_the_default_policy() {
        let out = normalise(&Table::new(), Path::new(".")).unwrap();
        assert_eq!(policy_of(&out), Policy::default());
        assert!(rules_of(&out).is_empty());
        assert_eq!(to_table(&Policy::default(), &[]), out);
    }

    #[test]
    fn errors_name_the_relative_key() {
        let cases = [
            (
                "rules = [\"allow\", \"deny src 1.2.3.300\"]",
                "rules[1]",
                "bad src",
            ),
            ("rules = [\"allow\", 3]", "rules[1]", "found integer"),
            ("rules = \"allow\"", "rules", "expected an array"),
            ("default = \"reject\"", "default", "expected pass or drop"),
            (
                "fragments = \"no\"",
                "fragments",
                "expected allow, deny or l3",
            ),
            ("defualt = \"drop\"", "defualt", "unknown key 'defualt'"),
            ("rules-file = 3", "rules-file", "expected a string"),
        ];
        for (text, key, want) in cases {
            let err = normalise(&table(text), Path::new(".")).unwrap_err();
            assert_eq!(err.key, key, "{text}");
            assert!(err.message.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn rules_file_comes_after_inline_rules_in_file_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("block.rules"),
            "# blocklist\ndeny src 198.18.0.0/15 prio 200\nallow src 198.18.1.0/24 prio 10\n",
        )
        .unwrap();
        let out = normalise(
            &table("rules = [\"allow prio 1\"]\nrules-file = \"block.rules\""),
            dir.path(),
        )
        .unwrap();
        let rules: Vec<String> = rules_of(&out).iter().map(Rule::to_string).collect();
        assert_eq!(
            rules,
            [
                "allow prio 1",
                "deny src 198.18.0.0/15 prio 200",
                "allow src 198.18.1.0/24 prio 10"
            ]
        );
        assert!(!out.contains_key("rules-file"));

        let err = normalise(&table("rules-file = \"missing.rules\""), dir.path()).unwrap_err();
        assert_eq!(err.key, "rules-file");
        assert!(err.message.contains("missing.rules: cannot read"), "{err}");
    }
}
