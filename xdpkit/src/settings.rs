//! Checking a stage's settings (a TOML table): the error type and the
//! helpers every program's `normalise_settings` uses. A leaf: it imports
//! neither the configuration file nor the programs.

/// Why a stage's settings are not acceptable. `key` is relative to the
/// stage's table (`"default"`, `"rules[2]"`, or `""` for the table itself),
/// so the file parser can turn it into a full key path and a line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct SettingsError {
    /// The key inside the stage's table; `name[i]` for an array element.
    pub key: String,
    /// What is wrong and, where possible, what would be right.
    pub message: String,
}

impl SettingsError {
    /// An error about `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> SettingsError {
        SettingsError {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Rejects keys a settings table does not know, naming the ones it does:
/// a typo must not silently fall back to a default.
pub(crate) fn check_keys(table: &toml::Table, known: &[&str]) -> Result<(), SettingsError> {
    match table.keys().find(|k| !known.contains(&k.as_str())) {
        Some(key) => Err(SettingsError::new(
            key.as_str(),
            format!("unknown key '{key}': expected {}", known.join(", ")),
        )),
        None => Ok(()),
    }
}

/// The string value of `key`, `None` if absent, an error if not a string.
pub(crate) fn string_of<'t>(
    table: &'t toml::Table,
    key: &str,
) -> Result<Option<&'t str>, SettingsError> {
    match table.get(key) {
        None => Ok(None),
        Some(toml::Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(SettingsError::new(
            key,
            format!("expected a string, found {}", other.type_str()),
        )),
    }
}

/// The value of `key`, one of `choices` (the first is the default).
pub(crate) fn choice_of(
    table: &toml::Table,
    key: &str,
    choices: &[&'static str],
) -> Result<&'static str, SettingsError> {
    let Some(given) = string_of(table, key)? else {
        return Ok(choices[0]);
    };
    choices
        .iter()
        .copied()
        .find(|c| *c == given)
        .ok_or_else(|| {
            SettingsError::new(
                key,
                format!("unknown value '{given}': expected {}", one_of(choices)),
            )
        })
}

/// `a, b or c`.
pub(crate) fn one_of(choices: &[&str]) -> String {
    match choices.split_last() {
        None => String::new(),
        Some((last, [])) => (*last).to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}
