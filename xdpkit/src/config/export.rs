//! Printing a configuration back in the file format, e.g. to export what
//! is running into a file that `xdpkit apply -f` accepts.

use std::fmt::Write as _;

use toml::Value;

use super::file::{toml_key, HostConfig};

impl HostConfig {
    /// The configuration as TOML in the file format: interfaces sorted by
    /// name, each with `mode` and `stages`, then each stage's settings table
    /// in stage order, arrays of strings one element a line. Parsing the
    /// result gives the same configuration.
    pub fn to_toml_string(&self) -> String {
        let mut out = String::new();
        for (name, iface) in &self.interfaces {
            let path = format!("interfaces.{}", toml_key(name));
            if !out.is_empty() {
                out.push('\n');
            }
            let stages: Vec<Value> = iface
                .stages
                .iter()
                .map(|s| Value::String(s.program.clone()))
                .collect();
            // Writing to a String cannot fail; the results are ignored.
            let _ = writeln!(out, "[{path}]");
            let _ = writeln!(out, "mode = {}", Value::String(iface.mode.clone()));
            let _ = writeln!(out, "stages = {}", Value::Array(stages));
            for stage in iface.stages.iter().filter(|s| !s.settings.is_empty()) {
                let _ = writeln!(out, "\n[{path}.{}]", toml_key(&stage.program));
                // Scalars first so that a long rule list does not hide the policies.
                let (lists, scalars): (Vec<_>, Vec<_>) =
                    stage.settings.iter().partition(|(_, v)| is_string_list(v));
                for (key, value) in scalars.into_iter().chain(lists) {
                    let _ = writeln!(out, "{} = {}", toml_key(key), render_value(value));
                }
            }
        }
        out
    }
}

fn is_string_list(value: &Value) -> bool {
    matches!(value, Value::Array(items) if items.iter().all(Value::is_str))
}

/// A value, with non-empty arrays of strings one element a line (so that
/// rule lists diff and review line by line).
fn render_value(value: &Value) -> String {
    match value {
        Value::Array(items) if !items.is_empty() && is_string_list(value) => {
            let mut out = String::from("[\n");
            for item in items {
                let _ = writeln!(out, "  {item},");
            }
            out.push(']');
            out
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const TEXT: &str = r#"
[interfaces.eth0]
mode = "native"
stages = ["firewall", "redirect"]

[interfaces.eth0.firewall]
default = "drop"
fragments = "l3"
non-ip = "drop"
malformed = "pass"
rules = [
  "allow src 198.18.41.0/24 prio 10",
  "deny src 198.19.0.0/16",
  "rate-limit 1000 src 2001:db8::1 proto udp dport 53",
]

[interfaces.eth0.redirect]
to = "eth1"

[interfaces."eth1.100"]
stages = ["count", "firewall", "pass"]

[interfaces.lb0]
stages = ["balancer"]

[interfaces.lb0.balancer]
source4 = "198.19.0.0/16"
gateway = "02:00:00:00:00:01"
vips = ["[2001:db8::10]:53/udp ring 1009 no-flows", "198.18.1.10:80/tcp"]
reals = [
  "198.18.1.10:80/tcp 198.18.2.2 weight 3",
  "198.18.1.10:80/tcp 2001:db8:2::1 weight 0",
  "[2001:db8::10]:53/udp 198.18.2.1",
]
"#;

    #[test]
    fn round_trip() {
        let config = HostConfig::parse("host.toml", TEXT, Path::new(".")).unwrap();
        let text = config.to_toml_string();
        let again = HostConfig::parse("export.toml", &text, Path::new("."))
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(again, config, "{text}");
        assert_eq!(again.to_toml_string(), text, "export is stable");
    }

    #[test]
    fn prints_the_file_format() {
        let config = HostConfig::parse("host.toml", TEXT, Path::new(".")).unwrap();
        let text = config.to_toml_string();
        assert!(
            text.starts_with(
                "[interfaces.eth0]\nmode = \"native\"\nstages = [\"firewall\", \"redirect\"]\n\n[interfaces.eth0.firewall]\ndefault = \"drop\"\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("rules = [\n  \"allow src 198.18.41.0/24 prio 10\",\n  \"deny src 198.19.0.0/16 prio 100\",\n"),
            "{text}"
        );
        assert!(
            text.contains("\n[interfaces.eth0.redirect]\nto = \"eth1\"\n"),
            "{text}"
        );
        assert!(
            text.contains("\n[interfaces.\"eth1.100\"]\nmode = \"auto\"\n"),
            "{text}"
        );
        assert!(
            text.find("[interfaces.eth0.redirect]") < text.find("[interfaces.\"eth1.100\"]"),
            "interfaces sorted, stage tables under their interface"
        );
        assert_eq!(HostConfig::default().to_toml_string(), "");
    }
}
