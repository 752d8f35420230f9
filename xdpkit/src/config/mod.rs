//! `xdpkit apply -f host.toml`: the host configuration file, pure logic.
//!
//! - [`file`](mod@file): parsing, with `file:line: key: message` errors;
//! - [`diff`](mod@diff): what changes between a desired and a running configuration;
//! - [`export`]: printing a configuration back as TOML.
//!
//! Stage settings are normalised by the programs themselves
//! (`programs/<name>/config.rs`); [`normalise_settings`] is the one place
//! that dispatches to them by program name.

pub mod diff;
pub mod export;
pub mod file;

use std::path::Path;

pub use diff::{diff, HostDiff};
pub use file::{ConfigError, HostConfig, IfaceConfig, StageConfig};

use crate::programs;
pub(crate) use crate::settings::one_of;
pub use crate::settings::SettingsError;

/// Attach modes a configuration can ask for; the first is the default.
pub const MODES: &[&str] = &["auto", "native", "skb"];

/// Normalises the settings of one stage: defaults filled in, values in
/// canonical form, so that two configurations that mean the same compare
/// equal. `given` is `None` when the file has no table for the stage. Each
/// program checks its own settings ([`Program::normalise_settings`]).
///
/// [`Program::normalise_settings`]: crate::programs::Program::normalise_settings
pub fn normalise_settings(
    program: &str,
    given: Option<&toml::Table>,
    base_dir: &Path,
) -> Result<toml::Table, SettingsError> {
    match programs::by_name(program) {
        Ok(program) => program.normalise_settings(given, base_dir),
        Err(_) => Err(SettingsError::new("", unknown_program(program))),
    }
}

/// The message for a program name xdpkit does not know.
pub(crate) fn unknown_program(name: &str) -> String {
    format!(
        "unknown program '{name}': known programs are {}",
        programs::names().join(", ")
    )
}
