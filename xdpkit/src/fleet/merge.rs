//! A host's configuration from its layers.

use crate::config::HostConfig;

/// The layers merged in order (groups as given, then the host's own): a
/// later layer's declaration of an interface replaces an earlier one's
/// whole (its mode and every stage), so what runs on an interface always
/// comes from one file as written; interfaces only earlier layers declare
/// stay.
pub fn merge<'a>(layers: impl IntoIterator<Item = &'a HostConfig>) -> HostConfig {
    let mut host = HostConfig::default();
    for layer in layers {
        for (name, iface) in &layer.interfaces {
            host.interfaces.insert(name.clone(), iface.clone());
        }
    }
    host
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn parse(text: &str) -> HostConfig {
        HostConfig::parse("t.toml", text, Path::new(".")).unwrap()
    }

    #[test]
    fn later_layers_replace_whole_interfaces() {
        let group = parse(
            "[interfaces.eth0]\nstages = [\"firewall\"]\n[interfaces.eth0.firewall]\ndefault = \"drop\"\n\
             [interfaces.eth1]\nstages = [\"pass\"]\n",
        );
        let host = parse("[interfaces.eth0]\nstages = [\"drop\"]\n");
        let merged = merge([&group, &host]);
        assert_eq!(merged.interfaces.len(), 2);
        assert_eq!(merged.interfaces["eth0"], host.interfaces["eth0"]);
        assert_eq!(merged.interfaces["eth1"], group.interfaces["eth1"]);
        assert_eq!(
            merge([&host, &group]).interfaces["eth0"],
            group.interfaces["eth0"]
        );
        assert_eq!(merge([]), HostConfig::default());
    }
}
