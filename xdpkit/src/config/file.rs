//! The host configuration file: per interface, the attach mode, the
//! ordered stages and each stage's settings.
//!
//! ```toml
//! [interfaces.eth0]
//! mode = "native"                     # auto (default) | native | skb
//! stages = ["firewall", "redirect"]   # in order; at least one; a program at most once
//!
//! [interfaces.eth0.firewall]
//! default = "drop"
//! rules = ["deny src 198.19.0.0/16"]
//!
//! [interfaces.eth0.redirect]
//! to = "eth1"
//! ```
//!
//! The file is parsed into spanned values (`toml::de::DeTable`) rather than
//! deserialised into structs, so that every error can name the file, the
//! line and the dotted key path, including errors found by the programs'
//! own settings checks.

use std::{
    collections::BTreeMap,
    fmt,
    ops::Range,
    path::{Path, PathBuf},
};

use toml::{
    de::{DeTable, DeValue},
    Spanned, Table, Value,
};

use super::{normalise_settings, one_of, unknown_program, SettingsError, MODES};
use crate::programs;

/// A whole host: what each named interface should run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostConfig {
    /// Interface name to its configuration, sorted by name.
    pub interfaces: BTreeMap<String, IfaceConfig>,
}

/// One interface: how to attach and which programs, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct IfaceConfig {
    /// Attach mode: `auto`, `native` or `skb`.
    pub mode: String,
    /// The stages in chain order (the first is attached, the rest are reached by tail calls).
    pub stages: Vec<StageConfig>,
}

/// One stage of an interface's chain.
#[derive(Clone, Debug, PartialEq)]
pub struct StageConfig {
    /// The program's name, one of the registered programs ([`programs::REGISTRY`]).
    pub program: String,
    /// Normalised settings (see [`normalise_settings`]); empty for programs without settings.
    pub settings: Table,
}

/// A configuration that cannot be used, located in its file.
///
/// Displays as `file:line: key: message`; `line` is 0 when no line applies
/// (the file cannot be read) and `key` empty when no key does (a TOML
/// syntax error), and each is then left out.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}{}: {message}", location(*.line, .key))]
pub struct ConfigError {
    /// The file as given (`<stdin>` for standard input).
    pub file: String,
    /// 1-based line number, 0 for none.
    pub line: usize,
    /// Dotted TOML key path, e.g. `interfaces.eth0.firewall.rules[2]`.
    pub key: String,
    /// What is wrong and, where possible, how to fix it.
    pub message: String,
}

fn location(line: usize, key: &str) -> String {
    let mut out = String::new();
    if line > 0 {
        out.push_str(&format!(":{line}"));
    }
    if !key.is_empty() {
        out.push_str(&format!(": {key}"));
    }
    out
}

/// `name` as a TOML key: bare when it can be, quoted otherwise (`"eth0.100"`).
pub(crate) fn toml_key(name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        name.to_string()
    } else {
        Value::String(name.to_string()).to_string()
    }
}

impl HostConfig {
    /// Parses configuration text. `file` is the name errors show;
    /// `base_dir` is where relative paths in settings (`rules-file`) start.
    pub fn parse(file: &str, text: &str, base_dir: &Path) -> Result<HostConfig, ConfigError> {
        let doc = DeTable::parse(text).map_err(|e| ConfigError {
            file: file.to_string(),
            line: e.span().map_or(0, |span| line_of(text, span.start)),
            key: String::new(),
            message: format!("TOML syntax error: {}", e.message().trim()),
        })?;
        Parser {
            file,
            text,
            base_dir,
        }
        .host(doc.get_ref())
    }

    /// Reads and parses a configuration file; `-` reads standard input, with
    /// relative paths then starting at the current directory.
    pub fn read(path: &Path) -> Result<HostConfig, ConfigError> {
        let (name, text, base_dir) = if path == Path::new("-") {
            let text = std::io::read_to_string(std::io::stdin());
            ("<stdin>".to_string(), text, PathBuf::from("."))
        } else {
            let base = match path.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
                _ => PathBuf::from("."),
            };
            (
                path.display().to_string(),
                std::fs::read_to_string(path),
                base,
            )
        };
        let text = text.map_err(|e| ConfigError {
            file: name.clone(),
            line: 0,
            key: String::new(),
            message: format!("cannot read: {e}"),
        })?;
        HostConfig::parse(&name, &text, &base_dir)
    }
}

/// 1-based line of byte offset `at`.
fn line_of(text: &str, at: usize) -> usize {
    let at = at.min(text.len());
    text.as_bytes()[..at]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

type DeEntry<'t, 'i> = (
    &'t Spanned<toml::de::DeString<'i>>,
    &'t Spanned<DeValue<'i>>,
);

fn find<'t, 'i>(table: &'t DeTable<'i>, key: &str) -> Option<DeEntry<'t, 'i>> {
    table.iter().find(|(k, _)| k.get_ref() == key)
}

struct Parser<'a> {
    file: &'a str,
    text: &'a str,
    base_dir: &'a Path,
}

impl Parser<'_> {
    fn err(
        &self,
        span: Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: self.file.to_string(),
            line: line_of(self.text, span.start),
            key: key.into(),
            message: message.into(),
        }
    }

    fn host(&self, root: &DeTable<'_>) -> Result<HostConfig, ConfigError> {
        if let Some((key, _)) = root.iter().find(|(k, _)| k.get_ref() != "interfaces") {
            return Err(self.err(
                key.span(),
                toml_key(key.get_ref()),
                format!(
                    "unknown key '{}': the file holds only [interfaces.<name>] tables",
                    key.get_ref()
                ),
            ));
        }
        let mut interfaces = BTreeMap::new();
        let Some((_, value)) = find(root, "interfaces") else {
            return Ok(HostConfig { interfaces });
        };
        let DeValue::Table(table) = value.get_ref() else {
            return Err(self.err(
                value.span(),
                "interfaces",
                format!(
                    "expected tables such as [interfaces.eth0], found {}",
                    value.get_ref().type_str()
                ),
            ));
        };
        for (name, value) in table.iter() {
            let path = format!("interfaces.{}", toml_key(name.get_ref()));
            crate::iface::validate_name(name.get_ref())
                .map_err(|e| self.err(name.span(), path.as_str(), e.to_string()))?;
            let DeValue::Table(iface) = value.get_ref() else {
                return Err(self.err(
                    value.span(),
                    path.as_str(),
                    format!(
                        "expected a table ([{path}]), found {}",
                        value.get_ref().type_str()
                    ),
                ));
            };
            let config = self.iface(&path, value.span(), iface)?;
            interfaces.insert(name.get_ref().to_string(), config);
        }
        Ok(HostConfig { interfaces })
    }

    fn iface(
        &self,
        path: &str,
        span: Range<usize>,
        table: &DeTable<'_>,
    ) -> Result<IfaceConfig, ConfigError> {
        let mode = match find(table, "mode") {
            None => MODES[0].to_string(),
            Some((_, value)) => match value.get_ref() {
                DeValue::String(s) if MODES.contains(&s.as_ref()) => s.to_string(),
                other => {
                    let found = match other {
                        DeValue::String(s) => format!("'{s}'"),
                        other => other.type_str().to_string(),
                    };
                    return Err(self.err(
                        value.span(),
                        format!("{path}.mode"),
                        format!("expected {}, found {found}", one_of(MODES)),
                    ));
                }
            },
        };
        let stages = self.stages(path, span, table)?;
        for (key, _) in table.iter() {
            let key_name = key.get_ref().as_ref();
            if key_name == "mode" || key_name == "stages" {
                continue;
            }
            let message = if programs::by_name(key_name).is_err() {
                format!(
                    "unknown key '{key_name}': expected mode, stages or the settings table of a listed stage"
                )
            } else if !stages.iter().any(|(name, _)| name == key_name) {
                format!(
                    "settings for '{key_name}', which is not in stages: add it to stages or remove this table"
                )
            } else {
                continue;
            };
            return Err(self.err(
                key.span(),
                format!("{path}.{}", toml_key(key_name)),
                message,
            ));
        }
        let mut out = Vec::with_capacity(stages.len());
        for (program, item_span) in stages {
            let stage_path = format!("{path}.{program}");
            let given = match find(table, &program) {
                None => None,
                Some((_, value)) => match value.get_ref() {
                    DeValue::Table(t) => Some((t, value.span())),
                    other => {
                        return Err(self.err(
                            value.span(),
                            stage_path,
                            format!(
                                "expected a table ([{path}.{program}]), found {}",
                                other.type_str()
                            ),
                        ))
                    }
                },
            };
            let plain = match given {
                Some((t, _)) => Some(self.plain_table(&stage_path, t)?),
                None => None,
            };
            let settings = normalise_settings(&program, plain.as_ref(), self.base_dir)
                .map_err(|e| self.settings_error(&stage_path, given, item_span, e))?;
            out.push(StageConfig { program, settings });
        }
        Ok(IfaceConfig { mode, stages: out })
    }

    /// The stage names with their spans in the `stages` array.
    fn stages(
        &self,
        path: &str,
        span: Range<usize>,
        table: &DeTable<'_>,
    ) -> Result<Vec<(String, Range<usize>)>, ConfigError> {
        let key = format!("{path}.stages");
        let Some((_, value)) = find(table, "stages") else {
            return Err(self.err(
                span,
                key,
                "missing: list the programs in chain order, e.g. stages = [\"firewall\"]",
            ));
        };
        let DeValue::Array(items) = value.get_ref() else {
            return Err(self.err(
                value.span(),
                key,
                format!(
                    "expected an array of program names, found {}",
                    value.get_ref().type_str()
                ),
            ));
        };
        if items.is_empty() {
            return Err(self.err(
                value.span(),
                key,
                format!(
                    "at least one stage is needed (programs: {}); to detach, remove the interface",
                    programs::names().join(", ")
                ),
            ));
        }
        let mut stages: Vec<(String, Range<usize>)> = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let item_key = format!("{key}[{i}]");
            let DeValue::String(name) = item.get_ref() else {
                return Err(self.err(
                    item.span(),
                    item_key,
                    format!(
                        "expected a program name, found {}",
                        item.get_ref().type_str()
                    ),
                ));
            };
            if programs::by_name(name.as_ref()).is_err() {
                return Err(self.err(item.span(), item_key, unknown_program(name)));
            }
            if let Some(first) = stages.iter().position(|(n, _)| n == name) {
                return Err(self.err(
                    item.span(),
                    item_key,
                    format!(
                        "'{name}' is already stage {}: a program runs at most once per interface",
                        first + 1
                    ),
                ));
            }
            stages.push((name.to_string(), item.span()));
        }
        Ok(stages)
    }

    /// Locates a program's settings error: the key it names if the table
    /// has it, else the table, else the stage's entry in `stages`.
    fn settings_error(
        &self,
        stage_path: &str,
        given: Option<(&DeTable<'_>, Range<usize>)>,
        item_span: Range<usize>,
        e: SettingsError,
    ) -> ConfigError {
        let key = if e.key.is_empty() {
            stage_path.to_string()
        } else {
            format!("{stage_path}.{}", e.key)
        };
        let span = given
            .map(|(table, table_span)| locate(table, &e.key).unwrap_or(table_span))
            .unwrap_or(item_span);
        self.err(span, key, e.message)
    }

    /// A settings table as plain TOML values, for the programs' checks.
    fn plain_table(&self, path: &str, table: &DeTable<'_>) -> Result<Table, ConfigError> {
        let mut out = Table::new();
        for (key, value) in table.iter() {
            let key_path = format!("{path}.{}", toml_key(key.get_ref()));
            out.insert(key.get_ref().to_string(), self.plain(&key_path, value)?);
        }
        Ok(out)
    }

    fn plain(&self, path: &str, value: &Spanned<DeValue<'_>>) -> Result<Value, ConfigError> {
        Ok(match value.get_ref() {
            DeValue::String(s) => Value::String(s.to_string()),
            DeValue::Integer(i) => {
                Value::Integer(i64::from_str_radix(i.as_str(), i.radix()).map_err(|_| {
                    self.err(value.span(), path, format!("integer {i} is out of range"))
                })?)
            }
            DeValue::Float(f) => Value::Float(
                f.as_str()
                    .parse()
                    .map_err(|_| self.err(value.span(), path, format!("bad float {f}")))?,
            ),
            DeValue::Boolean(b) => Value::Boolean(*b),
            DeValue::Datetime(d) => Value::Datetime(*d),
            DeValue::Array(items) => Value::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| self.plain(&format!("{path}[{i}]"), item))
                    .collect::<Result<_, _>>()?,
            ),
            DeValue::Table(t) => Value::Table(self.plain_table(path, t)?),
        })
    }
}

/// The span of a relative key (`name` or `name[i]`) inside `table`: the
/// key itself, or the array element when an index is given.
fn locate(table: &DeTable<'_>, key: &str) -> Option<Range<usize>> {
    let (name, index) = match key.strip_suffix(']').and_then(|k| k.split_once('[')) {
        Some((name, index)) => (name, index.parse::<usize>().ok()),
        None => (key, None),
    };
    let (k, value) = find(table, name)?;
    match (index, value.get_ref()) {
        (Some(i), DeValue::Array(items)) => Some(items.get(i).map_or(k.span(), Spanned::span)),
        _ => Some(k.span()),
    }
}

impl fmt::Display for StageConfig {
    /// The program's name.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.program)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"# /etc/xdpkit/host.toml
[interfaces.eth0]
mode = "native"                     # auto (default) | native | skb
stages = ["firewall", "redirect"]   # in order; at least one; a program at most once

[interfaces.eth0.firewall]          # settings of the firewall stage
default = "drop"                    # pass (default) | drop
fragments = "allow"                 # allow (default) | deny | l3
non-ip = "pass"                     # pass (default) | drop
malformed = "drop"                  # drop (default) | pass
rules = [
  "allow src 198.18.41.0/24 prio 10",
  "deny src 198.19.0.0/16",
]

[interfaces.eth0.redirect]
to = "eth1"                          # required for redirect
"#;

    fn parse(text: &str) -> Result<HostConfig, ConfigError> {
        HostConfig::parse("host.toml", text, Path::new("."))
    }

    /// Asserts the error's line, key and a piece of its message.
    fn fails(text: &str, line: usize, key: &str, want: &str) -> ConfigError {
        let err = parse(text).expect_err(text);
        assert_eq!(
            (err.file.as_str(), err.line, err.key.as_str()),
            ("host.toml", line, key),
            "{err}"
        );
        assert!(err.message.contains(want), "{err} lacks {want:?}");
        err
    }

    #[test]
    fn parses_the_example() {
        let config = parse(EXAMPLE).unwrap();
        let eth0 = &config.interfaces["eth0"];
        assert_eq!(eth0.mode, "native");
        let names: Vec<&str> = eth0.stages.iter().map(|s| s.program.as_str()).collect();
        assert_eq!(names, ["firewall", "redirect"]);
        let fw = &eth0.stages[0].settings;
        assert_eq!(fw["default"].as_str(), Some("drop"));
        assert_eq!(fw["malformed"].as_str(), Some("drop"));
        assert_eq!(
            fw["rules"].as_array().unwrap()[1].as_str(),
            Some("deny src 198.19.0.0/16 prio 100"),
            "rules are canonical"
        );
        assert_eq!(eth0.stages[1].settings["to"].as_str(), Some("eth1"));
    }

    #[test]
    fn defaults_mode_and_settings() {
        let config =
            parse("[interfaces.eth1]\nstages = [\"count\", \"firewall\", \"pass\"]\n").unwrap();
        let eth1 = &config.interfaces["eth1"];
        assert_eq!(eth1.mode, "auto");
        assert!(eth1.stages[0].settings.is_empty());
        assert_eq!(
            crate::firewall::config::policy_of(&eth1.stages[1].settings),
            crate::firewall::Policy::default()
        );
        assert_eq!(parse("").unwrap(), HostConfig::default());
    }

    #[test]
    fn display_is_file_line_key_message() {
        let err = fails(
            "[interfaces.eth0]\nstages = [\"pass\"]\nmdoe = \"skb\"\n",
            3,
            "interfaces.eth0.mdoe",
            "unknown key 'mdoe'",
        );
        assert!(
            err.to_string()
                .starts_with("host.toml:3: interfaces.eth0.mdoe: unknown key 'mdoe'"),
            "{err}"
        );
    }

    #[test]
    fn syntax_errors_give_the_line() {
        let err = fails(
            "[interfaces.eth0]\nstages = [\"pass\"]\nmode = native\n",
            3,
            "",
            "",
        );
        assert!(err.to_string().starts_with("host.toml:3: "), "{err}");
        fails("[interfaces.eth0]\nstages = [\"pass\"\n", 2, "", "");
    }

    #[test]
    fn unknown_keys() {
        fails(
            "[interface.eth0]\nstages = [\"pass\"]\n",
            1,
            "interface",
            "unknown key 'interface'",
        );
        fails(
            "[interfaces.eth0]\nstages = [\"firewall\"]\n\n[interfaces.eth0.firewall]\ndefault = \"drop\"\npolicy = \"x\"\n",
            6,
            "interfaces.eth0.firewall.policy",
            "unknown key 'policy': expected default, fragments, non-ip, malformed, rules, rules-file",
        );
        fails(
            "[interfaces.eth0]\nmode = \"xdp\"\nstages = [\"pass\"]\n",
            2,
            "interfaces.eth0.mode",
            "expected auto, native or skb, found 'xdp'",
        );
    }

    #[test]
    fn unknown_program_lists_the_known_ones() {
        fails(
            "[interfaces.eth0]\nstages = [\n  \"firewall\",\n  \"nat\",\n]\n",
            4,
            "interfaces.eth0.stages[1]",
            "unknown program 'nat': known programs are pass, drop, tx, count, redirect, firewall, balancer, decap",
        );
    }

    #[test]
    fn settings_tables_must_belong_to_a_listed_stage_that_takes_settings() {
        fails(
            "[interfaces.eth0]\nstages = [\"pass\"]\n\n[interfaces.eth0.firewall]\ndefault = \"drop\"\n",
            4,
            "interfaces.eth0.firewall",
            "settings for 'firewall', which is not in stages",
        );
        fails(
            "[interfaces.eth0]\nstages = [\"count\"]\n\n[interfaces.eth0.count]\nevery = 1\n",
            4,
            "interfaces.eth0.count",
            "count takes no settings",
        );
    }

    #[test]
    fn bad_inline_rule_names_its_index_and_line() {
        fails(
            "[interfaces.eth0]\nstages = [\"firewall\"]\n[interfaces.eth0.firewall]\nrules = [\n  \"allow\",\n  \"deny\",\n  \"deny src 198.19.0.1/16\",\n]\n",
            7,
            "interfaces.eth0.firewall.rules[2]",
            "did you mean 198.19.0.0/16?",
        );
    }

    #[test]
    fn bad_rule_in_rules_file_names_that_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("block.rules"),
            "# blocklist\ndeny src 198.18.0.0/15\ndeny src 198.18.0.300\n",
        )
        .unwrap();
        let text = "[interfaces.eth0]\nstages = [\"firewall\"]\n[interfaces.eth0.firewall]\nrules-file = \"block.rules\"\n";
        let err = HostConfig::parse("host.toml", text, dir.path()).unwrap_err();
        assert_eq!(
            (err.line, err.key.as_str()),
            (4, "interfaces.eth0.firewall.rules-file")
        );
        let rules_file = dir.path().join("block.rules").display().to_string();
        assert!(
            err.message
                .starts_with(&format!("{rules_file}:3: bad src '198.18.0.300'")),
            "{err}"
        );

        // Read through the file's own path: relative to its directory.
        std::fs::write(dir.path().join("host.toml"), text).unwrap();
        let err = HostConfig::read(&dir.path().join("host.toml")).unwrap_err();
        assert!(err.to_string().contains(":3: bad src"), "{err}");
        let missing = HostConfig::read(&dir.path().join("none.toml")).unwrap_err();
        assert_eq!(missing.line, 0);
        assert!(
            missing.to_string().contains("none.toml: cannot read"),
            "{missing}"
        );
    }

    #[test]
    fn balancer_declaration_errors_name_their_line() {
        let text = "[interfaces.eth0]\nstages = [\"balancer\"]\n\n[interfaces.eth0.balancer]\nsource4 = \"198.19.0.0/16\"\nvips = [\n  \"198.18.1.10:80/tcp\",\n]\nreals = [\n  \"198.18.1.10:80/tcp 198.18.2.1\",\n  \"198.18.1.11:80/tcp 198.18.2.2 weight 2\",\n]\n";
        fails(
            text,
            11,
            "interfaces.eth0.balancer.reals[1]",
            "VIP 198.18.1.11:80/tcp is not in vips",
        );
        fails(
            &text.replace("198.19.0.0/16", "198.19.0.0/8"),
            5,
            "interfaces.eth0.balancer.source4",
            "a /16 to /32",
        );
        fails(
            &text.replace("80/tcp\",\n]", "80/tcp ring 1000\",\n]"),
            7,
            "interfaces.eth0.balancer.vips[0]",
            "not a prime",
        );
        let ok = parse(&text.replace("198.18.1.11", "198.18.1.10")).unwrap();
        let lb = &ok.interfaces["eth0"].stages[0].settings;
        assert_eq!(
            lb["reals"].as_array().unwrap()[1].as_str(),
            Some("198.18.1.10:80/tcp 198.18.2.2 weight 2")
        );
    }

    #[test]
    fn redirect_needs_to() {
        fails(
            "[interfaces.eth0]\nstages = [\"redirect\"]\n",
            2,
            "interfaces.eth0.redirect.to",
            "redirect needs a target",
        );
        fails(
            "[interfaces.eth0]\nstages = [\"redirect\"]\n\n[interfaces.eth0.redirect]\n",
            4,
            "interfaces.eth0.redirect.to",
            "missing",
        );
        fails(
            "[interfaces.eth0]\nstages = [\"redirect\"]\n\n[interfaces.eth0.redirect]\nto = \"eth:1\"\n",
            5,
            "interfaces.eth0.redirect.to",
            "not a valid interface name",
        );
    }

    #[test]
    fn bad_interface_names() {
        for (name, key) in [
            ("\"eth0/1\"", "interfaces.\"eth0/1\""),
            (
                "\"a-very-long-interface-name\"",
                "interfaces.a-very-long-interface-name",
            ),
            ("\"..\"", "interfaces.\"..\""),
            ("\"eth 0\"", "interfaces.\"eth 0\""),
            ("\"\"", "interfaces.\"\""),
        ] {
            let err = fails(
                &format!("\n[interfaces.{name}]\nstages = [\"pass\"]\n"),
                2,
                key,
                "not a valid interface name",
            );
            assert!(
                err.to_string().contains("host.toml:2: interfaces."),
                "{err}"
            );
        }
        parse("[interfaces.\"eth0.100\"]\nstages = [\"pass\"]\n").expect("VLAN names are fine");
    }

    #[test]
    fn stages_missing_empty_or_duplicated() {
        fails(
            "[interfaces.eth0]\nmode = \"skb\"\n",
            1,
            "interfaces.eth0.stages",
            "missing",
        );
        fails(
            "[interfaces.eth0]\nstages = []\n",
            2,
            "interfaces.eth0.stages",
            "at least one stage",
        );
        fails(
            "[interfaces.eth0]\nstages = [\"count\", \"pass\", \"count\"]\n",
            2,
            "interfaces.eth0.stages[2]",
            "'count' is already stage 1",
        );
        fails(
            "[interfaces.eth0]\nstages = \"pass\"\n",
            2,
            "interfaces.eth0.stages",
            "expected an array",
        );
        fails("interfaces = 3\n", 1, "interfaces", "expected tables");
    }
}
