//! The redirect stage's settings in a host configuration file:
//!
//! ```toml
//! [interfaces.eth0.redirect]
//! to = "eth1"    # required: the interface frames leave by
//! ```

use std::path::Path;

use toml::{Table, Value};

use crate::settings::{check_keys, string_of, SettingsError};

/// Checks the redirect's settings: `to` is required and must be a valid
/// interface name. Whether the interface exists is the attach side's
/// business, since a configuration may be written before the device is up.
pub fn normalise(given: &Table, _base_dir: &Path) -> Result<Table, SettingsError> {
    check_keys(given, &["to"])?;
    let to = string_of(given, "to")?.ok_or_else(|| {
        SettingsError::new(
            "to",
            "missing: redirect needs the interface to send frames to, e.g. to = \"eth1\"",
        )
    })?;
    crate::iface::validate_name(to).map_err(|e| SettingsError::new("to", e.to_string()))?;
    let mut out = Table::new();
    out.insert("to".to_string(), Value::String(to.to_string()));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn to_is_required_and_checked() {
        let ok: Table = "to = \"eth1\"".parse().unwrap();
        assert_eq!(normalise(&ok, Path::new(".")).unwrap(), ok);
        for (text, want) in [
            ("", "missing"),
            ("to = \"a/b\"", "not a valid interface name"),
            ("to = 1", "expected a string"),
        ] {
            let err = normalise(&text.parse().unwrap(), Path::new(".")).unwrap_err();
            assert_eq!(err.key, "to");
            assert!(err.message.contains(want), "{text}: {err}");
        }
        let err = normalise(
            &"to = \"eth1\"\nfrom = \"eth0\"".parse().unwrap(),
            Path::new("."),
        )
        .unwrap_err();
        assert_eq!(err.key, "from");
    }
}
